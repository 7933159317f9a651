//! `infera keys create|list|revoke`: the API key file `infera serve --auth-keys` reads.
//! A new key is printed once; the file keeps only its SHA-256 with the key's settings.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use infera_auth::Role;
use infera_auth::keys::{KeyEntry, KeyFile};

#[derive(Args, Debug)]
pub struct KeysArgs {
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(Subcommand, Debug)]
enum KeysCommand {
    /// Make a key: prints it once (store it now), keeps only its hash in FILE.
    Create(CreateArgs),
    /// The keys in FILE with their roles and limits (never the keys themselves).
    List(FileArg),
    /// Remove a key; a running server stops accepting it within seconds.
    Revoke(RevokeArgs),
}

#[derive(Args, Debug)]
struct FileArg {
    /// The key file (TOML), as given to `infera serve --auth-keys`.
    #[arg(long, value_name = "FILE")]
    file: PathBuf,
}

#[derive(Args, Debug)]
struct CreateArgs {
    #[command(flatten)]
    file: FileArg,
    /// A name for the key, shown in logs, the audit log and usage (never the key itself).
    #[arg(long)]
    id: String,
    /// reader (metadata, configs, statistics), infer (also inference and its own batch jobs),
    /// operator (also load/unload and every job), admin (also usage and keys).
    #[arg(long, value_parser = parse_role)]
    role: Role,
    /// Only these models (comma-separated); default: every model.
    #[arg(long, value_delimiter = ',')]
    models: Vec<String>,
    /// Requests per second, minute or hour: 50/s, 600/m, 10000/h.
    #[arg(long)]
    rate: Option<String>,
    /// Requests the key may send at once above its rate (default: one second's worth).
    #[arg(long)]
    burst: Option<u32>,
    /// Requests per day or month, kept across restarts in --data-dir: 100000/day, 1000000/month.
    #[arg(long)]
    quota: Option<String>,
    /// Requests in progress at once.
    #[arg(long)]
    concurrency: Option<u32>,
    /// A client certificate name (subject CN or SAN) that stands for this key when the server
    /// verifies client certificates (--tls-client-ca): no API key needed on such connections.
    #[arg(long, value_name = "NAME")]
    certificate: Option<String>,
}

#[derive(Args, Debug)]
struct RevokeArgs {
    #[command(flatten)]
    file: FileArg,
    #[arg(long)]
    id: String,
}

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s).ok_or_else(|| format!("'{s}' is not reader, infer, operator or admin"))
}

pub fn run(args: KeysArgs) -> anyhow::Result<()> {
    match args.command {
        KeysCommand::Create(a) => {
            let mut f = KeyFile::load(&a.file.file, true)?;
            let key = f.create(KeyEntry {
                id: a.id.clone(),
                sha256: String::new(),
                role: a.role,
                models: (!a.models.is_empty()).then_some(a.models),
                rate: a.rate,
                burst: a.burst,
                quota: a.quota,
                concurrency: a.concurrency,
                certificate: a.certificate,
                created: humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                    .to_string(),
            })?;
            f.save(&a.file.file)?;
            eprintln!(
                "key '{}' ({}) added to {}; it is shown only now:",
                a.id,
                a.role.as_str(),
                a.file.file.display()
            );
            println!("{key}");
        }
        KeysCommand::List(a) => {
            let f = KeyFile::load(&a.file, false)?;
            println!(
                "{:<24} {:<9} {:<28} {:<10} {:<6} {:<14} created",
                "id", "role", "models", "rate", "burst", "quota"
            );
            for k in &f.keys {
                let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
                println!(
                    "{:<24} {:<9} {:<28} {:<10} {:<6} {:<14} {}",
                    k.id,
                    k.role.as_str(),
                    k.models.as_ref().map_or("all".into(), |m| m.join(",")),
                    opt(&k.rate),
                    k.burst.map_or("-".into(), |b| b.to_string()),
                    opt(&k.quota),
                    k.created
                );
            }
        }
        KeysCommand::Revoke(a) => {
            let mut f = KeyFile::load(&a.file.file, false)?;
            f.revoke(&a.id)?;
            f.save(&a.file.file)?;
            eprintln!("key '{}' revoked", a.id);
        }
    }
    Ok(())
}
