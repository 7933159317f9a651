//! Ensembles: their steps in dataflow order, the dependency graph between models (no
//! cycles), and the check that a step's tensors exist in the model it calls.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use infera_proto::inference::{ModelConfig, model_config::SchedulingChoice};

use super::autocomplete::read_labels;
use super::model::{EnsembleStep, IoDesc, Model, ModelVersion, Runner};
use crate::config::{self, ConfigError};
use crate::datatype::DataType;
use crate::metrics::Metrics;
use crate::stats::ModelStats;

/// An ensemble has no runtime of its own: its inputs and outputs come from the config and
/// its steps run on the composing models' schedulers. Composing models may load after it;
/// when they are loaded, [`check_calls`] holds the two together.
pub fn build(
    name: &str,
    mut cfg: ModelConfig,
    dir: &Path,
    metrics: &Metrics,
) -> Result<Model, ConfigError> {
    let Some(SchedulingChoice::EnsembleScheduling(sched)) = &cfg.scheduling_choice else {
        return Err(ConfigError::new(
            "ensemble_scheduling",
            "an ensemble needs ensemble_scheduling { step [ ... ] }",
        ));
    };
    if sched.step.is_empty() {
        return Err(ConfigError::new(
            "ensemble_scheduling.step",
            "lists no steps",
        ));
    }
    let mut available: Vec<&str> = cfg.input.iter().map(|i| i.name.as_str()).collect();
    let mut pending: Vec<usize> = (0..sched.step.len()).collect();
    let mut order = Vec::new();
    // Order the steps so each runs after the steps producing its inputs.
    while !pending.is_empty() {
        let ready = pending.iter().position(|&i| {
            sched.step[i]
                .input_map
                .values()
                .all(|t| available.contains(&t.as_str()))
        });
        let Some(pos) = ready else {
            let i = pending[0];
            let missing: Vec<&String> = sched.step[i]
                .input_map
                .values()
                .filter(|t| !available.contains(&t.as_str()))
                .collect();
            return Err(ConfigError::new(
                format!("ensemble_scheduling.step[{i}].input_map"),
                format!("no ensemble input or step output provides {missing:?}"),
            ));
        };
        let i = pending.remove(pos);
        available.extend(sched.step[i].output_map.values().map(String::as_str));
        order.push(i);
    }
    let mut steps = Vec::new();
    for i in order {
        let st = &sched.step[i];
        if st.model_name.is_empty() || st.model_name == name {
            return Err(ConfigError::new(
                format!("ensemble_scheduling.step[{i}].model_name"),
                "must name another model",
            ));
        }
        steps.push(EnsembleStep {
            model_name: st.model_name.clone(),
            model_version: (st.model_version > 0).then_some(st.model_version),
            inputs: st
                .input_map
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            outputs: st
                .output_map
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        });
    }
    if let Some(o) = cfg
        .output
        .iter()
        .find(|o| !available.contains(&o.name.as_str()))
    {
        return Err(ConfigError::new(
            "output",
            format!("no step produces ensemble output '{}'", o.name),
        ));
    }
    let io = |kind: &str,
              i: usize,
              n: &str,
              dt: i32,
              dims: &[i64],
              labels: &str|
     -> Result<IoDesc, ConfigError> {
        let dtype = infera_proto::inference::DataType::try_from(dt)
            .ok()
            .and_then(DataType::from_config)
            .ok_or_else(|| {
                ConfigError::new(format!("{kind}[{i}].data_type"), "unknown data type")
            })?;
        let labels = read_labels(dir, &format!("{kind}[{i}]"), labels)?;
        Ok(IoDesc {
            name: n.to_string(),
            dtype,
            dims: dims.to_vec(),
            reshape: None,
            index: i,
            labels,
        })
    };
    let inputs = cfg
        .input
        .iter()
        .enumerate()
        .map(|(i, c)| io("input", i, &c.name, c.data_type, &c.dims, ""))
        .collect::<Result<Vec<_>, _>>()?;
    let outputs = cfg
        .output
        .iter()
        .enumerate()
        .map(|(i, c)| {
            io(
                "output",
                i,
                &c.name,
                c.data_type,
                &c.dims,
                &c.label_filename,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    cfg.backend.clear();
    let version = Arc::new(ModelVersion {
        version: 1,
        runner: Runner::Ensemble(steps),
        stats: Arc::new(ModelStats::default()),
        metrics: metrics.for_version(name, 1),
    });
    Ok(Model {
        name: name.to_string(),
        config_json: config::to_json(&cfg),
        model_input_count: inputs.len(),
        config: cfg,
        backend: "ensemble",
        inputs,
        outputs,
        versions: BTreeMap::from([(1, version)]),
        resizable: None,
    })
}

/// A cycle through `start` in the graph "model → the models it calls", spelled out
/// (`a → b → a`), or `None`.
pub fn find_cycle(graph: &BTreeMap<String, Vec<String>>, start: &str) -> Option<Vec<String>> {
    fn visit(
        graph: &BTreeMap<String, Vec<String>>,
        node: &str,
        start: &str,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        for next in graph.get(node).into_iter().flatten() {
            if next == start {
                path.push(next.clone());
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if visit(graph, next, start, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start.to_string()];
    let mut seen = BTreeSet::new();
    visit(graph, start, start, &mut path, &mut seen).then_some(path)
}

/// Every step of `ensemble` that calls `callee` names tensors `callee` has.
pub fn check_calls(ensemble: &Model, callee: &Model) -> Result<(), String> {
    let steps = ensemble.ensemble_steps().unwrap_or_default();
    for (i, step) in steps.iter().enumerate() {
        if step.model_name != callee.name {
            continue;
        }
        if let Some(v) = step.model_version
            && !callee.versions.contains_key(&v)
        {
            return Err(format!(
                "ensemble '{}' step {i} calls version {v} of '{}', which would not be served",
                ensemble.name, callee.name
            ));
        }
        for (name, _) in &step.inputs {
            if !callee.inputs.iter().any(|io| &io.name == name) {
                return Err(format!(
                    "ensemble '{}' step {i} feeds input '{name}' of '{}', which it does not have",
                    ensemble.name, callee.name
                ));
            }
        }
        for (name, _) in &step.outputs {
            if !callee.outputs.iter().any(|io| &io.name == name) {
                return Err(format!(
                    "ensemble '{}' step {i} reads output '{name}' of '{}', which it does not have",
                    ensemble.name, callee.name
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(edges: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        edges
            .iter()
            .map(|(a, bs)| (a.to_string(), bs.iter().map(|b| b.to_string()).collect()))
            .collect()
    }

    #[test]
    fn cycles_are_found_and_spelled_out() {
        let g = graph(&[("a", &["b", "x"]), ("b", &["c"]), ("c", &["a"]), ("x", &[])]);
        assert_eq!(find_cycle(&g, "a").unwrap(), ["a", "b", "c", "a"]);
        assert_eq!(find_cycle(&g, "x"), None);
        let dag = graph(&[("a", &["b", "c"]), ("b", &["c"]), ("c", &[])]);
        assert_eq!(find_cycle(&dag, "a"), None);
        // A cycle not through the start is someone else's (found when they load).
        let g = graph(&[("a", &["b"]), ("b", &["c"]), ("c", &["b"])]);
        assert_eq!(find_cycle(&g, "a"), None);
        assert_eq!(find_cycle(&g, "b").unwrap(), ["b", "c", "b"]);
    }
}
