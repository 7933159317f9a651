//! `infera models list|load|unload|reload`: the model repository of a running server, over
//! its HTTP API (Triton's repository extension), so operators need not hand-write curl.

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
        let mut req = self
            .http
            .post(format!("{}{path}", self.url))
            .header("content-type", "application/json")
            .body(body.to_string());
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
    }
    Ok(())
}
