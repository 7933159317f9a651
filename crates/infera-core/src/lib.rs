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
