//! Changing a loaded model's instance count in place: the versions keep their queues and
//! sessions; new workers open beside them, surplus ones stop after the batch they run. A
//! reload would build and warm every session again for a change that needs none of that.

use std::sync::Arc;

use infera_proto::inference::{ModelConfig, ModelInstanceGroup, model_instance_group::Kind};
use tracing::info;

use super::model::{Model, Resizable, Runner};
use super::{ModelRepository, policy};
use crate::config;
use crate::error::{ServeError, ServeResult};

impl ModelRepository {
    /// Sets a loaded model's instances (per version) to `instances` without reloading it
    /// (TorchServe's scale workers). The config the server reports follows.
    pub fn resize(&self, name: &str, instances: usize) -> ServeResult<()> {
        let _change = self.begin_change()?;
        let old = self.get(name)?;
        let groups = vec![ModelInstanceGroup {
            name: name.to_string(),
            count: i32::try_from(instances).unwrap_or(i32::MAX),
            kind: Kind::Cpu as i32,
            ..Default::default()
        }];
        let resized = self.resized(&old, groups)?;
        self.swap_in(name, resized);
        Ok(())
    }

    /// The model resized to the config just read, when that config differs from the one it
    /// was built from only in `instance_group` and no other file changed; `None` when a
    /// reload is needed.
    pub(super) fn try_resize(&self, name: &str, new: &ModelConfig) -> ServeResult<Option<Model>> {
        let Some(old) = self.get(name).ok() else {
            return Ok(None);
        };
        let Some(r) = &old.resizable else {
            return Ok(None);
        };
        if !only_instances_differ(&r.read_config, new)
            || r.files != super::poll::files_fingerprint(&self.root.join(name))
        {
            return Ok(None);
        }
        let mut read_config = new.clone();
        read_config.name = name.to_string();
        let mut model = self.resized(&old, new.instance_group.clone())?;
        if let Some(r) = &mut model.resizable {
            r.read_config = read_config;
        }
        Ok(Some(model))
    }

    fn resized(&self, old: &Model, groups: Vec<ModelInstanceGroup>) -> ServeResult<Model> {
        let name = &old.name;
        let Some(r) = &old.resizable else {
            return Err(ServeError::invalid(format!(
                "model '{name}' cannot change its instances in place (an ensemble or an encrypted model); reload it with a new instance_group"
            )));
        };
        let mut cfg = old.config.clone();
        cfg.instance_group = groups;
        if cfg.instance_group.is_empty() {
            cfg.instance_group = vec![ModelInstanceGroup {
                name: name.clone(),
                count: 1,
                kind: Kind::Cpu as i32,
                ..Default::default()
            }];
        }
        config::validate(&cfg, name)
            .map_err(|e| ServeError::invalid(format!("model '{name}': {e}")))?;
        let instances = policy::instance_count(&cfg);
        if instances * old.versions.len() > self.options.max_sessions {
            return Err(ServeError::invalid(format!(
                "model '{name}': {instances} instances × {} versions is over this server's limit of {} sessions per model (--max-model-sessions)",
                old.versions.len(),
                self.options.max_sessions
            )));
        }
        for (v, version) in &old.versions {
            if let (Runner::Scheduler(s), Some(open)) = (&version.runner, r.open.get(v)) {
                s.resize(instances, || open())?;
            }
        }
        info!(model = %name, instances, "instances changed in place");
        Ok(Model {
            name: name.clone(),
            config_json: config::to_json(&cfg),
            config: cfg,
            backend: old.backend,
            inputs: old.inputs.clone(),
            outputs: old.outputs.clone(),
            model_input_count: old.model_input_count,
            versions: old.versions.clone(),
            resizable: Some(Resizable {
                read_config: r.read_config.clone(),
                files: r.files,
                open: r.open.clone(),
            }),
        })
    }

    fn swap_in(&self, name: &str, model: Model) {
        if let Some(slot) = self.models.write().get_mut(name) {
            slot.model = Some(Arc::new(model));
        }
    }
}

fn only_instances_differ(old: &ModelConfig, new: &ModelConfig) -> bool {
    let (mut a, mut b) = (old.clone(), new.clone());
    if a.instance_group == b.instance_group {
        return false;
    }
    a.instance_group.clear();
    b.instance_group.clear();
    b.name = a.name.clone();
    a == b
}
