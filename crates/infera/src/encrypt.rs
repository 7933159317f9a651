//! `infera encrypt` / `infera decrypt`: model files and job results at rest.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use infera_seal::Keyring;

/// Encrypt a file (e.g. a model) with AES-256-GCM, or decrypt one infera wrote.
///
/// Encrypted models: put `model.onnx.enc` where `model.onnx` would be and start
/// `infera serve --encryption-key-file K`; it is decrypted in memory at load. Batch-job
/// results of a server with --encryption-key-file are encrypted the same way; `infera decrypt`
/// reads them (and checks every record: a flipped byte is an error, never wrong data).
#[derive(clap::Args)]
pub struct CryptArgs {
    /// The key: 32 random bytes (`openssl rand 32 > K`), 64 hex digits, or lines
    /// `ID HEX` (the first one encrypts; all of them decrypt, for rotation).
    #[arg(long, env = "INFERA_ENCRYPTION_KEY_FILE", value_name = "FILE")]
    key_file: PathBuf,

    #[arg(long, value_name = "FILE")]
    input: PathBuf,

    #[arg(long, value_name = "FILE")]
    output: PathBuf,

    /// Replace the output if it exists.
    #[arg(long)]
    overwrite: bool,
}

pub fn keyring(path: &Path) -> anyhow::Result<std::sync::Arc<Keyring>> {
    Ok(std::sync::Arc::new(Keyring::load(path)?))
}

pub fn run(args: CryptArgs, encrypt: bool) -> anyhow::Result<()> {
    let k = keyring(&args.key_file)?;
    if args.output.exists() && !args.overwrite {
        bail!(
            "{} exists; add --overwrite to replace it",
            args.output.display()
        );
    }
    if args.input.canonicalize().ok() == args.output.canonicalize().ok() {
        bail!("--output must differ from --input");
    }
    let bytes = std::fs::read(&args.input)
        .with_context(|| format!("cannot read {}", args.input.display()))?;
    let out = if encrypt {
        if infera_seal::is_sealed(&bytes) {
            bail!("{} is already encrypted", args.input.display());
        }
        infera_seal::seal_all(&k, &bytes)?
    } else {
        infera_seal::open_all(&k, &bytes, &args.input.display().to_string())?
    };
    infera_batch::checkpoint::write_atomic(&args.output, &out)?;
    eprintln!(
        "{} {} ({} bytes) -> {} ({} bytes)",
        if encrypt { "encrypted" } else { "decrypted" },
        args.input.display(),
        bytes.len(),
        args.output.display(),
        out.len()
    );
    Ok(())
}
