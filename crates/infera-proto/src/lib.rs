//! The Triton / KServe v2 wire types: `inference.GRPCInferenceService` and `ModelConfig`; and
//! ONNX's model schema (`onnx`).
//!
//! The `.proto` files under `proto/` carry the exact package, message names and field
//! numbers of the published protocol, so Triton's own clients interoperate unchanged.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod inference {
    tonic::include_proto!("inference");
}

/// ONNX's protobuf schema (`ModelProto`, `GraphProto`, `NodeProto`, ...), as prost types.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod onnx {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

pub mod guard;

use std::sync::LazyLock;

use prost_reflect::DescriptorPool;

/// Encoded `FileDescriptorSet` of both protos, for reflection (text format, proto-JSON).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/inference_descriptor.bin"));

/// The descriptor pool for reflection-based (de)serialisation of `inference.*` messages.
pub fn descriptor_pool() -> &'static DescriptorPool {
    static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
        DescriptorPool::decode(FILE_DESCRIPTOR_SET)
            .expect("descriptor set built by build.rs is valid")
    });
    &POOL
}
