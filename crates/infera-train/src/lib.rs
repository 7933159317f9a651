//! The training side of infera, kept out of the server's build: Fashion-MNIST data (IDX
//! reader, verified downloader, reproducible validation split), run configuration (includes
//! and overrides) and the metrics reported for a model.
//!
//! Issue #3 in progress: the training loop (burn), evaluation plots and the ONNX exporter
//! build on these pieces.

pub mod config;
pub mod data;
pub mod download;
pub mod idx;
pub mod metrics;
pub mod plots;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{0}")]
    Data(String),
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Download(String),
    #[error("cannot draw the plot: {0}")]
    Plot(String),
}
