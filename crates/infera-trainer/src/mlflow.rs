//! Logging a run to an MLflow tracking server over its REST API (no Python on the path):
//! params, per-epoch metrics, the final test metrics, and artifacts through the server's
//! artifact proxy (`mlflow server`'s default `mlflow-artifacts:` store).

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use serde_json::{Value, json};

pub struct Mlflow {
    base: String,
    client: reqwest::blocking::Client,
    pub experiment_id: String,
    pub run_id: String,
    artifact_uri: String,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Mlflow {
    /// Finds or creates `experiment` and starts a run named `run_name` in it.
    pub fn start(uri: &str, experiment: &str, run_name: &str) -> anyhow::Result<Mlflow> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .context("cannot build the HTTP client for MLflow")?;
        let base = uri.trim_end_matches('/').to_string();
        let mut m = Mlflow {
            base,
            client,
            experiment_id: String::new(),
            run_id: String::new(),
            artifact_uri: String::new(),
        };
        let found = m.call(
            reqwest::Method::GET,
            &format!(
                "experiments/get-by-name?experiment_name={}",
                url_escape(experiment)
            ),
            None,
        );
        m.experiment_id = match found {
            Ok(v) => v["experiment"]["experiment_id"]
                .as_str()
                .context("MLflow answered get-by-name without an experiment id")?
                .to_string(),
            Err(e) if e.to_string().contains("RESOURCE_DOES_NOT_EXIST") => {
                let v = m.call(
                    reqwest::Method::POST,
                    "experiments/create",
                    Some(json!({"name": experiment})),
                )?;
                v["experiment_id"]
                    .as_str()
                    .context("MLflow created an experiment without an id")?
                    .to_string()
            }
            Err(e) => return Err(e),
        };
        let v = m.call(
            reqwest::Method::POST,
            "runs/create",
            Some(json!({
                "experiment_id": m.experiment_id,
                "run_name": run_name,
                "start_time": now_ms(),
                "tags": [{"key": "mlflow.source.name", "value": "infera train"},
                         {"key": "mlflow.runName", "value": run_name}],
            })),
        )?;
        m.run_id = v["run"]["info"]["run_id"]
            .as_str()
            .context("MLflow created a run without an id")?
            .to_string();
        m.artifact_uri = v["run"]["info"]["artifact_uri"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        Ok(m)
    }

    fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}/api/2.0/mlflow/{path}", self.base);
        let mut req = self.client.request(method, &url);
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req
            .send()
            .with_context(|| format!("cannot reach MLflow at {}", self.base))?;
        let status = resp.status();
        let text = resp.text().unwrap_or_default();
        if !status.is_success() {
            bail!("MLflow {url} answered {status}: {}", text.trim());
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).with_context(|| format!("MLflow {url} answered non-JSON"))
    }

    /// Logs params (strings, at most 100 per call as MLflow allows).
    pub fn log_params(&self, params: &[(String, String)]) -> anyhow::Result<()> {
        for chunk in params.chunks(100) {
            let params: Vec<Value> = chunk
                .iter()
                .map(|(k, v)| json!({"key": k, "value": v.chars().take(6000).collect::<String>()}))
                .collect();
            self.call(
                reqwest::Method::POST,
                "runs/log-batch",
                Some(json!({"run_id": self.run_id, "params": params})),
            )?;
        }
        Ok(())
    }

    pub fn log_metrics(&self, step: i64, metrics: &[(&str, f64)]) -> anyhow::Result<()> {
        let ts = now_ms();
        let metrics: Vec<Value> = metrics
            .iter()
            .filter(|(_, v)| v.is_finite())
            .map(|(k, v)| json!({"key": k, "value": v, "timestamp": ts, "step": step}))
            .collect();
        self.call(
            reqwest::Method::POST,
            "runs/log-batch",
            Some(json!({"run_id": self.run_id, "metrics": metrics})),
        )?;
        Ok(())
    }

    /// Uploads `file` as artifact `name` (may contain `/`).
    pub fn log_artifact(&self, file: &Path, name: &str) -> anyhow::Result<()> {
        let bytes =
            std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
        if let Some(rest) = self.artifact_uri.strip_prefix("mlflow-artifacts:") {
            // mlflow-artifacts:/<exp>/<run>/artifacts or mlflow-artifacts://host/<exp>/...
            let path = match rest.strip_prefix("//") {
                Some(r) => r.split_once('/').map(|x| x.1).unwrap_or_default(),
                None => rest.trim_start_matches('/'),
            };
            let url = format!(
                "{}/api/2.0/mlflow-artifacts/artifacts/{path}/{name}",
                self.base
            );
            let resp = self
                .client
                .put(&url)
                .body(bytes)
                .send()
                .with_context(|| format!("cannot upload {name} to MLflow"))?;
            if !resp.status().is_success() {
                bail!("MLflow artifact upload {url} answered {}", resp.status());
            }
            return Ok(());
        }
        let local = self
            .artifact_uri
            .strip_prefix("file://")
            .unwrap_or(&self.artifact_uri);
        if local.starts_with('/') {
            let dest = Path::new(local).join(name);
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&dest, bytes)?;
            return Ok(());
        }
        bail!(
            "MLflow's artifact store {} is not reachable from here (start the server with --serve-artifacts)",
            self.artifact_uri
        )
    }

    pub fn finish(&self, ok: bool) -> anyhow::Result<()> {
        self.call(
            reqwest::Method::POST,
            "runs/update",
            Some(json!({
                "run_id": self.run_id,
                "status": if ok { "FINISHED" } else { "FAILED" },
                "end_time": now_ms(),
            })),
        )?;
        Ok(())
    }
}

fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Flattens a config table into MLflow params: `optimizer.lr = "0.001"`.
pub fn flatten_params(prefix: &str, table: &toml::Table, out: &mut Vec<(String, String)>) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) => flatten_params(&key, t, out),
            toml::Value::String(s) => out.push((key, s.clone())),
            other => out.push((key, other.to_string())),
        }
    }
}
