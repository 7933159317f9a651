//! `infera models list|load|unload|reload|route`: the model repository and the traffic routes
//! of a running server, over its HTTP API, so operators need not hand-write curl.

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

#[derive(Args, Debug)]
pub struct ModelsArgs {
    #[command(subcommand)]
    command: ModelsCommand,
    /// The server's HTTP address.
    #[arg(
        long,
        env = "INFERA_URL",
        default_value = "http://127.0.0.1:8000",
        global = true
    )]
    url: String,
    /// An API key or token with the operator role (sent as `Authorization: Bearer`).
    #[arg(long, env = "INFERA_API_KEY", hide_env_values = true, global = true)]
    key: Option<String>,
    /// The CA certificate (PEM) that signed an https server's certificate.
    #[arg(long, value_name = "FILE", global = true)]
    ca_cert: Option<std::path::PathBuf>,
}

#[derive(Subcommand, Debug)]
enum ModelsCommand {
    /// Every model of the repository with its versions, state and reason.
    List {
        /// Print the server's JSON as it is.
        #[arg(long)]
        json: bool,
    },
    /// Load a model (or load it again from its files); the old version serves until the new
    /// one is ready.
    Load {
        name: String,
        /// A config to load the model with instead of its config.pbtxt (JSON, or @FILE).
        #[arg(long, value_name = "JSON|@FILE")]
        config: Option<String>,
    },
    /// Unload a model; requests in flight finish first.
    Unload {
        name: String,
        /// Also unload the models only this one's ensemble used.
        #[arg(long)]
        unload_dependents: bool,
    },
    /// Load a model again from its files (after you changed them).
    Reload { name: String },
    /// Show or change how traffic for a name is split (A/B), trialled (canary) or mirrored
    /// (shadow). With only NAME it shows the route; with no NAME, every route.
    ///
    /// Example: infera models route fashion_mnist --variant stable=1:90 --variant candidate=2:10
    Route(RouteArgs),
}

#[derive(Args, Debug)]
struct RouteArgs {
    /// The name clients call.
    name: Option<String>,
    /// A variant, `NAME=[MODEL:]VERSION:WEIGHT` (repeatable; VERSION `latest` for the newest).
    /// Replaces the route with these variants.
    #[arg(long, value_name = "NAME=[MODEL:]VERSION:WEIGHT")]
    variant: Vec<String>,
    /// Mirror PERCENT of the requests (default 100) to this model version, `[MODEL:]VERSION[:PERCENT]`.
    #[arg(long, value_name = "[MODEL:]VERSION[:PERCENT]", requires = "variant")]
    shadow: Option<String>,
    /// Run the variant named here as a canary against the other one (default schedule:
    /// 5% then +10 every 60 s while healthy; rolled back when its error ratio over 60 s
    /// exceeds 5% or its p95 twice the stable one's). Set a finer schedule with --set.
    #[arg(long, value_name = "VARIANT", requires = "variant")]
    canary: Option<String>,
    /// The whole route as JSON (or @FILE holding it): variants, shadow, canary (docs/routing.md).
    #[arg(long, value_name = "JSON|@FILE", conflicts_with_all = ["variant", "delete", "promote", "rollback"])]
    set: Option<String>,
    /// Give the canary's candidate all traffic now.
    #[arg(long, conflicts_with_all = ["variant", "delete", "rollback"])]
    promote: bool,
    /// Give the canary's candidate no traffic now.
    #[arg(long, conflicts_with_all = ["variant", "delete"])]
    rollback: bool,
    /// Remove the route: the name serves its model directly again.
    #[arg(long, conflicts_with = "variant")]
    delete: bool,
    /// Print the server's JSON as it is.
    #[arg(long)]
    json: bool,
}

const MAX_ANSWER: u64 = 64 << 20;

struct Client {
    http: reqwest::blocking::Client,
    url: String,
    key: Option<String>,
}

impl Client {
    fn new(a: &ModelsArgs) -> anyhow::Result<Client> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut b = reqwest::blocking::Client::builder().timeout(Duration::from_secs(600));
        if let Some(ca) = &a.ca_cert {
            let pem = std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
            b = b.add_root_certificate(
                reqwest::Certificate::from_pem(&pem)
                    .with_context(|| format!("{} is not a PEM certificate", ca.display()))?,
            );
        }
        Ok(Client {
            http: b.build()?,
            url: a.url.trim_end_matches('/').to_string(),
            key: a.key.clone(),
        })
    }

    fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.call(reqwest::Method::POST, path, Some(body))
    }

    fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(body) = body {
            req = req
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        if let Some(k) = &self.key {
            req = req.bearer_auth(k);
        }
        let resp = req.send().with_context(|| {
            format!(
                "cannot reach infera at {}: is it running? (--url)",
                self.url
            )
        })?;
        let status = resp.status();
        // Bounded: an index of thousands of models is a few MB; anything past this is not one.
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::Read::take(resp, MAX_ANSWER), &mut text)
            .context("the server's answer is not UTF-8 text")?;
        let parsed: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(parsed);
        }
        let message = parsed["error"].as_str().unwrap_or(text.trim()).to_string();
        let hint = match status.as_u16() {
            401 => " (give an operator key with --key or INFERA_API_KEY)",
            403 => " (the key's role does not allow this: model management needs operator)",
            _ => "",
        };
        anyhow::bail!("{message}{hint} [HTTP {}]", status.as_u16())
    }
}

fn path_segment(name: &str) -> String {
    percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC).to_string()
}

pub fn run(a: ModelsArgs) -> anyhow::Result<()> {
    let c = Client::new(&a)?;
    match &a.command {
        ModelsCommand::List { json } => {
            let index = c.post("/v2/repository/index", json!({}))?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&index)?);
                return Ok(());
            }
            let rows = index.as_array().cloned().unwrap_or_default();
            let width = rows
                .iter()
                .filter_map(|m| m["name"].as_str())
                .map(str::len)
                .max()
                .unwrap_or(4)
                .max(4);
            println!("{:width$}  {:7}  {:11}  REASON", "NAME", "VERSION", "STATE");
            for m in rows {
                println!(
                    "{:width$}  {:7}  {:11}  {}",
                    m["name"].as_str().unwrap_or(""),
                    m["version"].as_str().unwrap_or(""),
                    m["state"].as_str().unwrap_or(""),
                    m["reason"].as_str().unwrap_or("")
                );
            }
        }
        ModelsCommand::Load { name, config } => {
            let body = match config {
                None => json!({}),
                Some(c) => {
                    let text = match c.strip_prefix('@') {
                        Some(file) => std::fs::read_to_string(file)
                            .with_context(|| format!("cannot read {file}"))?,
                        None => c.clone(),
                    };
                    serde_json::from_str::<Value>(&text)
                        .context("--config must be a JSON model config (or @FILE holding one)")?;
                    json!({"parameters": {"config": text}})
                }
            };
            c.post(
                &format!("/v2/repository/models/{}/load", path_segment(name)),
                body,
            )?;
            println!("loaded {name}");
        }
        ModelsCommand::Reload { name } => {
            c.post(
                &format!("/v2/repository/models/{}/load", path_segment(name)),
                json!({}),
            )?;
            println!("reloaded {name}");
        }
        ModelsCommand::Unload {
            name,
            unload_dependents,
        } => {
            let body = if *unload_dependents {
                json!({"parameters": {"unload_dependents": true}})
            } else {
                json!({})
            };
            c.post(
                &format!("/v2/repository/models/{}/unload", path_segment(name)),
                body,
            )?;
            println!("unloaded {name}");
        }
        ModelsCommand::Route(r) => route(&c, r)?,
    }
    Ok(())
}

/// `NAME=[MODEL:]VERSION:WEIGHT` as a variant of the route's JSON.
fn parse_variant(v: &str) -> anyhow::Result<Value> {
    let usage = || format!("--variant '{v}': use NAME=[MODEL:]VERSION:WEIGHT, e.g. stable=1:90");
    let (name, rest) = v.split_once('=').ok_or_else(|| anyhow::anyhow!(usage()))?;
    let parts: Vec<&str> = rest.split(':').collect();
    let (model, version, weight) = match parts.as_slice() {
        [version, weight] => (None, *version, *weight),
        [model, version, weight] => (Some(*model), *version, *weight),
        _ => anyhow::bail!(usage()),
    };
    let weight: u32 = weight.parse().map_err(|_| anyhow::anyhow!(usage()))?;
    let mut out = json!({"name": name, "weight": weight});
    if let Some(m) = model {
        out["model"] = m.into();
    }
    if version != "latest" {
        out["version"] = version
            .parse::<i64>()
            .map_err(|_| anyhow::anyhow!(usage()))?
            .into();
    }
    Ok(out)
}

/// `[MODEL:]VERSION[:PERCENT]` as the route's shadow.
fn parse_shadow(v: &str) -> anyhow::Result<Value> {
    let usage = || format!("--shadow '{v}': use [MODEL:]VERSION[:PERCENT], e.g. 3:50");
    let parts: Vec<&str> = v.split(':').collect();
    let version_at = |i: usize| -> anyhow::Result<Value> {
        match parts[i] {
            "latest" => Ok(Value::Null),
            p => Ok(p
                .parse::<i64>()
                .map_err(|_| anyhow::anyhow!(usage()))?
                .into()),
        }
    };
    let (model, version, percent) = match parts.len() {
        1 => (Value::Null, version_at(0)?, None),
        2 if parts[0].parse::<i64>().is_ok() || parts[0] == "latest" => {
            (Value::Null, version_at(0)?, Some(parts[1]))
        }
        2 => (parts[0].into(), version_at(1)?, None),
        3 => (parts[0].into(), version_at(1)?, Some(parts[2])),
        _ => anyhow::bail!(usage()),
    };
    let mut out = json!({});
    if !model.is_null() {
        out["model"] = model;
    }
    if !version.is_null() {
        out["version"] = version;
    }
    if let Some(p) = percent {
        out["percent"] = p
            .parse::<f64>()
            .map_err(|_| anyhow::anyhow!(usage()))?
            .into();
    }
    Ok(out)
}

fn route(c: &Client, r: &RouteArgs) -> anyhow::Result<()> {
    let Some(name) = &r.name else {
        let all = c.call(reqwest::Method::GET, "/v2/routes", None)?;
        if r.json {
            println!("{}", serde_json::to_string_pretty(&all)?);
        } else if all.as_array().is_none_or(Vec::is_empty) {
            println!("no routes: every name serves its model directly");
        }
        for route in all.as_array().into_iter().flatten() {
            if !r.json {
                print_route(route);
            }
        }
        return Ok(());
    };
    let path = format!("/v2/routes/{}", path_segment(name));
    let shown = if r.delete {
        c.call(reqwest::Method::DELETE, &path, None)?;
        println!("route {name} deleted: '{name}' serves its model directly");
        return Ok(());
    } else if r.promote {
        c.post(&format!("{path}/promote"), json!({}))?
    } else if r.rollback {
        c.post(&format!("{path}/rollback"), json!({}))?
    } else if let Some(set) = &r.set {
        let text = match set.strip_prefix('@') {
            Some(file) => {
                std::fs::read_to_string(file).with_context(|| format!("cannot read {file}"))?
            }
            None => set.clone(),
        };
        let spec: Value =
            serde_json::from_str(&text).context("--set must be a route as JSON (or @FILE)")?;
        c.call(reqwest::Method::PUT, &path, Some(spec))?
    } else if !r.variant.is_empty() {
        let variants = r
            .variant
            .iter()
            .map(|v| parse_variant(v))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut spec = json!({"variants": variants});
        if let Some(s) = &r.shadow {
            spec["shadow"] = parse_shadow(s)?;
        }
        if let Some(candidate) = &r.canary {
            spec["canary"] = json!({"candidate": candidate});
        }
        c.call(reqwest::Method::PUT, &path, Some(spec))?
    } else {
        c.call(reqwest::Method::GET, &path, None)?
    };
    if r.json {
        println!("{}", serde_json::to_string_pretty(&shown)?);
    } else {
        print_route(&shown);
    }
    Ok(())
}

fn print_route(r: &Value) {
    let s = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "latest".into(),
        v => v.to_string(),
    };
    println!("route {}", s(&r["name"]));
    println!(
        "  {:12} {:24} {:8} {:>6} {:>10} {:>10}",
        "VARIANT", "MODEL", "VERSION", "WEIGHT", "SUCCESS", "FAILURE"
    );
    for v in r["variants"].as_array().into_iter().flatten() {
        println!(
            "  {:12} {:24} {:8} {:>6} {:>10} {:>10}",
            s(&v["name"]),
            s(&v["model"]),
            s(&v["version"]),
            s(&v["weight"]),
            s(&v["success"]),
            s(&v["failure"])
        );
    }
    let c = &r["canary"];
    if c.is_object() {
        println!(
            "  canary: {} is {}{}",
            s(&c["candidate"]),
            s(&c["phase"]).replace('_', " "),
            c["reason"]
                .as_str()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        );
    }
    let sh = &r["shadow"];
    if sh.is_object() {
        let agreement = sh["agreement"]
            .as_f64()
            .map_or("-".into(), |a| format!("{:.1}%", a * 100.0));
        println!(
            "  shadow: {} version {} gets {}% of requests; top-1 agreement {agreement} of {} compared ({} failed, {} dropped)",
            s(&sh["model"]),
            s(&sh["version"]),
            s(&sh["percent"]),
            s(&sh["compared"]),
            s(&sh["failed"]),
            s(&sh["dropped"])
        );
    }
}
