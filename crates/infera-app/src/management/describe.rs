//! `GET /models/{name}[/{version}|/all]` in TorchServe's shape: a list with one entry per
//! version, each with its batching settings and one worker per instance.

use infera_core::repository::{Model, ModelVersion, Runner};
use infera_core::{InferenceServer, ServeResult};
use serde_json::{Value, json};

pub enum Which {
    /// The version served when a request names none.
    Default,
    All,
    One(i64),
}

pub fn describe(server: &InferenceServer, name: &str, which: Which) -> ServeResult<Value> {
    let model = server.repository.get(name)?;
    let default = server
        .routes
        .get(name)
        .filter(|r| r.spec.variants.len() == 1)
        .and_then(|r| r.spec.variants[0].version)
        .filter(|v| model.versions.contains_key(v))
        .or_else(|| model.versions.keys().next_back().copied());
    let versions: Vec<&std::sync::Arc<ModelVersion>> = match which {
        Which::All => model.versions.values().collect(),
        Which::Default => vec![model.version(default)?],
        Which::One(v) => vec![model.version(Some(v))?],
    };
    Ok(Value::Array(
        versions
            .into_iter()
            .map(|v| entry(&model, v, default == Some(v.version)))
            .collect(),
    ))
}

fn entry(model: &Model, v: &ModelVersion, is_default: bool) -> Value {
    let instances = match &v.runner {
        Runner::Scheduler(s) => s.instances(),
        Runner::Ensemble(_) => 0,
    };
    let delay_ms = match &model.config.scheduling_choice {
        Some(infera_proto::inference::model_config::SchedulingChoice::DynamicBatching(d)) => {
            d.max_queue_delay_microseconds / 1000
        }
        _ => 0,
    };
    let pid = std::process::id();
    let workers: Vec<Value> = (0..instances)
        .map(|i| {
            json!({
                "id": format!("{}", 9000 + i),
                "status": "READY",
                "memoryUsage": 0,
                "pid": pid,
                "gpu": false,
                "gpuUsage": "N/A",
            })
        })
        .collect();
    json!({
        "modelName": model.name,
        "modelVersion": v.version.to_string(),
        "modelUrl": model.name,
        "runtime": model.backend,
        "minWorkers": instances,
        "maxWorkers": instances,
        "batchSize": model.max_batch_size().max(1),
        "maxBatchDelay": delay_ms,
        "loadedAtStartup": false,
        "isDefault": is_default,
        "workers": workers,
    })
}
