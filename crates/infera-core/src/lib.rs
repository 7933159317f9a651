//! infera's serving core: tensors, model configs, the model repository, the dynamic-batching
//! scheduler and the backend trait. It knows no wire protocol; front-ends translate to it.

pub mod backend;
pub mod cache;
pub mod classify;
pub mod config;
pub mod datatype;
pub mod durable;
pub mod error;
pub mod metrics;
pub mod repository;
pub mod request;
pub mod request_id;
pub mod routing;
pub mod scheduler;
pub mod server;
pub mod stats;
pub mod telemetry;
pub mod tensor;

pub use datatype::DataType;
pub use error::{ErrorKind, ServeError, ServeResult};
pub use server::InferenceServer;
pub use tensor::{Tensor, TensorData};

/// Inference responses up to this many bytes are sent uncompressed by every front-end, whatever
/// the client accepts: such a response fits one TCP segment either way, and setting up a
/// compressor (tens of KiB of zeroed tables) costs more CPU than the rest of a small request.
pub const MIN_COMPRESSED_BYTES: u16 = 1024;
