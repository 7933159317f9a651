//! From config to scheduling: which versions to serve, how many instances, and the
//! dynamic batcher's and queues' policies.

use std::path::Path;
use std::time::Duration;

use infera_proto::inference::{
    ModelConfig, ModelQueuePolicy, model_config::SchedulingChoice, model_instance_group::Kind,
    model_queue_policy::TimeoutAction as PbTimeoutAction, model_version_policy::PolicyChoice,
};
use tracing::warn;

use crate::backend::Signature;
use crate::config::ConfigError;
use crate::config::limits::MAX_VERSIONS;
use crate::scheduler::{BatchPolicy, DynamicBatching, QueuePolicy, TimeoutAction};

/// Instances per version (sessions, each on its own thread); bounded by config validation.
pub fn instance_count(cfg: &ModelConfig) -> usize {
    let mut n = 0usize;
    for g in &cfg.instance_group {
        if g.kind == Kind::Gpu as i32 {
            warn!(model = %cfg.name, "KIND_GPU instance group: this server has no GPU support, running on CPU");
        }
        n += if g.count == 0 { 1 } else { g.count as usize };
    }
    n.max(1)
}

/// A thread-count parameter (validated as a bounded whole number), or the default.
pub fn thread_param(cfg: &ModelConfig, key: &str, default: usize) -> usize {
    cfg.parameters
        .get(key)
        .and_then(|p| p.string_value.trim().parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or(default)
}

/// The version folders to serve, per the version policy (default: the newest one).
pub fn select_versions(dir: &Path, cfg: &ModelConfig) -> Result<Vec<i64>, ConfigError> {
    let mut found: Vec<i64> = std::fs::read_dir(dir)
        .map_err(|e| ConfigError::new("versions", e.kind().to_string()))?
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str()?.parse::<i64>().ok())
        .filter(|&v| v > 0)
        .collect();
    found.sort_unstable();
    if found.is_empty() {
        return Err(ConfigError::new(
            "versions",
            "no version folders (e.g. 1/model.onnx) in the model directory",
        ));
    }
    let chosen: Vec<i64> = match cfg
        .version_policy
        .as_ref()
        .and_then(|p| p.policy_choice.as_ref())
    {
        Some(PolicyChoice::All(_)) => found,
        Some(PolicyChoice::Specific(s)) => {
            if let Some(missing) = s.versions.iter().find(|v| !found.contains(v)) {
                return Err(ConfigError::new(
                    "version_policy.specific.versions",
                    format!("version {missing} has no folder"),
                ));
            }
            let mut v = s.versions.clone();
            v.sort_unstable();
            v.dedup();
            v
        }
        Some(PolicyChoice::Latest(l)) => {
            let n = (l.num_versions.max(1) as usize).min(found.len());
            found[found.len() - n..].to_vec()
        }
        None => vec![found[found.len() - 1]],
    };
    if chosen.len() > MAX_VERSIONS {
        return Err(ConfigError::new(
            "version_policy",
            format!(
                "selects {} versions, over the limit of {MAX_VERSIONS} served at once",
                chosen.len()
            ),
        ));
    }
    Ok(chosen)
}

fn queue_policy(p: Option<&ModelQueuePolicy>) -> QueuePolicy {
    let Some(p) = p else {
        return QueuePolicy::default();
    };
    QueuePolicy {
        timeout_action: if p.timeout_action == PbTimeoutAction::Delay as i32 {
            TimeoutAction::Delay
        } else {
            TimeoutAction::Reject
        },
        default_timeout: (p.default_timeout_microseconds > 0)
            .then(|| Duration::from_micros(p.default_timeout_microseconds)),
        allow_timeout_override: p.allow_timeout_override,
        max_queue_size: p.max_queue_size as usize,
    }
}

/// The scheduler's policy; the numbers were bounded by config validation.
/// `sig`: the model file's inputs and outputs (whether a request's rows can be run apart).
pub fn batch_policy(cfg: &ModelConfig, sig: &Signature, max_queue: usize) -> BatchPolicy {
    let dynamic = match &cfg.scheduling_choice {
        Some(SchedulingChoice::DynamicBatching(db)) if cfg.max_batch_size > 0 => {
            let default = queue_policy(db.default_queue_policy.as_ref());
            let levels = db.priority_levels as usize;
            let level_policies = (1..=levels.max(1))
                .map(|l| {
                    db.priority_queue_policy
                        .get(&(l as u64))
                        .map_or_else(|| default.clone(), |p| queue_policy(Some(p)))
                })
                .collect();
            let mut preferred: Vec<usize> = db
                .preferred_batch_size
                .iter()
                .map(|&p| p as usize)
                .collect();
            preferred.sort_unstable();
            preferred.dedup();
            Some(DynamicBatching {
                preferred,
                max_delay: Duration::from_micros(db.max_queue_delay_microseconds),
                priority_levels: levels,
                default_level: db.default_priority_level as usize,
                level_policies,
            })
        }
        _ => None,
    };
    // Rows can be run apart and joined back only when no output's row size depends on the
    // batch (a symbolic non-batch dim could differ between the parts).
    let fixed_rows = sig
        .outputs
        .iter()
        .all(|o| !o.shape.is_empty() && o.shape[1..].iter().all(|&d| d >= 0));
    BatchPolicy {
        max_batch_size: cfg.max_batch_size.max(0) as usize,
        split: dynamic.is_some() && fixed_rows,
        dynamic,
        max_queue,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    #[test]
    fn version_policies() {
        let dir = tempfile::tempdir().unwrap();
        for v in ["1", "2", "3", "notes"] {
            std::fs::create_dir_all(dir.path().join(v)).unwrap();
        }
        let pick = |text: &str| select_versions(dir.path(), &config::parse_pbtxt(text).unwrap());
        assert_eq!(pick("").unwrap(), vec![3]);
        assert_eq!(
            pick("version_policy { latest { num_versions: 2 } }").unwrap(),
            vec![2, 3]
        );
        assert_eq!(pick("version_policy { all { } }").unwrap(), vec![1, 2, 3]);
        assert_eq!(
            pick("version_policy { specific { versions: [1] } }").unwrap(),
            vec![1]
        );
        assert!(pick("version_policy { specific { versions: [7] } }").is_err());
    }

    #[test]
    fn too_many_versions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for v in 1..=40 {
            std::fs::create_dir_all(dir.path().join(v.to_string())).unwrap();
        }
        let cfg = config::parse_pbtxt("version_policy { all { } }").unwrap();
        let e = select_versions(dir.path(), &cfg).unwrap_err();
        assert!(e.reason.contains("over the limit"), "{e}");
    }
}
