//! `infera train | sweep | export` run the trainer, a separate program (`infera-trainer`), so
//! the server's binary never links the training framework.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::Context;

const TRAINER: &str = "infera-trainer";

/// The trainer: $INFERA_TRAINER, else beside this binary, else on PATH.
fn locate() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("INFERA_TRAINER") {
        return Some(PathBuf::from(p));
    }
    if let Some(beside) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(TRAINER)))
        .filter(|p| p.is_file())
    {
        return Some(beside);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(TRAINER))
            .find(|p| p.is_file())
    })
}

/// Hands `subcommand args...` to the trainer; returns only if it cannot be started.
pub fn run(subcommand: &str, args: Vec<OsString>) -> anyhow::Result<()> {
    let trainer = locate().with_context(|| {
        format!(
            "`infera {subcommand}` needs the {TRAINER} program (training is a separate binary so the server never links it): \
             build it with `cargo build --release -p infera-trainer`, or set INFERA_TRAINER to its path"
        )
    })?;
    let mut cmd = std::process::Command::new(&trainer);
    cmd.arg(subcommand).args(args);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        let err = cmd.exec();
        Err(err).with_context(|| format!("cannot start {}", trainer.display()))
    }
    #[cfg(not(unix))]
    {
        let status = cmd
            .status()
            .with_context(|| format!("cannot start {}", trainer.display()))?;
        std::process::exit(status.code().unwrap_or(1));
    }
}
