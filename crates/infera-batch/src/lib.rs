//! Batch prediction that survives crashes: a folder of images in, one row per image out
//! (CSV or JSON lines), in a documented order (sorted by relative path), with progress
//! recorded durably as it goes so a killed run resumes where it stopped and ends with the
//! same bytes as an uninterrupted one.
//!
//! Used by `infera predict` (in-process) and by the server's batch jobs (`infera-jobs`).

pub mod checkpoint;
mod inputs;
mod output;
mod run;
mod sink;

pub use checkpoint::Checkpoint;
pub use inputs::{IMAGE_EXTENSIONS, InputFile, Inputs, Source, list_images};
pub use output::Format;
pub use run::{BatchOptions, Fetch, Progress, Summary, run_batch};

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("{0}")]
    Input(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Model(String),
    #[error("{0}")]
    Resume(String),
}

impl BatchError {
    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> BatchError {
        let path = path.into();
        move |source| BatchError::Io { what, path, source }
    }
}
