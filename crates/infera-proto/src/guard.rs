//! gRPC messages are checked before prost decodes them: their wire bytes are walked against
//! the schema to estimate the memory the decoded message would take. A message of many tiny
//! elements (a million empty `inputs`, strings or map entries) decodes to hundreds of times its
//! size; past [`AMPLIFICATION`] × its size it is refused with RESOURCE_EXHAUSTED instead.

use std::marker::PhantomData;

use prost::bytes::Buf;
use prost_reflect::{Cardinality, Kind, MessageDescriptor};
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;

/// Decoded bytes allowed per byte of message (plus [`SLACK`]).
pub const AMPLIFICATION: u64 = 8;
/// Decoded bytes every message may take whatever its size.
pub const SLACK: u64 = 1 << 20;
/// What one decoded message element (a struct in a `Vec` or a map) is counted as.
const MESSAGE_COST: u64 = 512;
/// What one string or bytes element costs beside its bytes.
const BYTES_COST: u64 = 32;
/// Nesting of messages in a message (the schema has no recursion; unknown data is skipped).
const MAX_DEPTH: usize = 32;

/// Estimated heap bytes of decoding `data` as `desc`, or why it is refused.
pub fn check(desc: &MessageDescriptor, data: &[u8]) -> Result<u64, String> {
    let budget = (data.len() as u64).saturating_mul(AMPLIFICATION) + SLACK;
    let mut cost = 0u64;
    walk(desc, data, 0, &mut cost, budget)?;
    Ok(cost)
}

fn varint(data: &mut &[u8]) -> Result<u64, String> {
    prost::encoding::decode_varint(data).map_err(|e| e.to_string())
}

fn walk(
    desc: &MessageDescriptor,
    mut data: &[u8],
    depth: usize,
    cost: &mut u64,
    budget: u64,
) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err("messages nested too deep".into());
    }
    while data.has_remaining() {
        let key = varint(&mut data)?;
        let (number, wire) = ((key >> 3) as u32, key & 7);
        let field = desc.get_field(number);
        match wire {
            0 => {
                varint(&mut data)?;
                *cost += 8;
            }
            1 | 5 => {
                let n = if wire == 1 { 8 } else { 4 };
                if data.len() < n {
                    return Err("a fixed-size field is cut short".into());
                }
                data.advance(n);
                *cost += 8;
            }
            2 => {
                let len = varint(&mut data)?;
                if len > data.len() as u64 {
                    return Err("a length-delimited field runs past the message".into());
                }
                let (inner, rest) = data.split_at(len as usize);
                data = rest;
                match field.as_ref().map(|f| (f.kind(), f.cardinality())) {
                    Some((Kind::Message(m), _)) => {
                        *cost += MESSAGE_COST;
                        walk(&m, inner, depth + 1, cost, budget)?;
                    }
                    Some((Kind::String | Kind::Bytes, _)) => *cost += BYTES_COST + len,
                    // A packed list of scalars: each element becomes up to 8 bytes.
                    Some((_, Cardinality::Repeated)) => {
                        let elements = if field.as_ref().is_some_and(|f| {
                            matches!(f.kind(), Kind::Fixed32 | Kind::Sfixed32 | Kind::Float)
                        }) {
                            len / 4
                        } else if field.as_ref().is_some_and(|f| {
                            matches!(f.kind(), Kind::Fixed64 | Kind::Sfixed64 | Kind::Double)
                        }) {
                            len / 8
                        } else {
                            inner.iter().filter(|b| **b < 0x80).count() as u64
                        };
                        *cost += elements * 8;
                    }
                    // Unknown fields are skipped by prost without keeping them.
                    _ => {}
                }
            }
            _ => {
                return Err(format!(
                    "unsupported wire type {wire} (groups are not used)"
                ));
            }
        }
        if *cost > budget {
            return Err(format!(
                "it would take more than {budget} bytes decoded ({AMPLIFICATION} × its size + 1 MiB): too many small elements"
            ));
        }
    }
    Ok(())
}

/// tonic's prost codec with the check above before every decode.
#[derive(Debug, Clone)]
pub struct GuardedCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for GuardedCodec<T, U> {
    fn default() -> Self {
        GuardedCodec(PhantomData)
    }
}

impl<T, U> Codec for GuardedCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + prost::Name + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = GuardedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        GuardedDecoder(PhantomData)
    }
}

#[derive(Debug, Clone)]
pub struct GuardedDecoder<U>(PhantomData<U>);

impl<U: prost::Message + prost::Name + Default> Decoder for GuardedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        if let Some(desc) = crate::descriptor_pool().get_message_by_name(&U::full_name()) {
            check(&desc, buf.chunk())
                .map_err(|why| Status::resource_exhausted(format!("{} refused: {why}", U::NAME)))?;
        }
        U::decode(buf)
            .map(Some)
            .map_err(|e| Status::internal(format!("cannot decode {}: {e}", U::NAME)))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inference::model_infer_request::InferInputTensor;
    use crate::inference::{InferTensorContents, ModelInferRequest};
    use prost::Message;

    fn desc() -> MessageDescriptor {
        crate::descriptor_pool()
            .get_message_by_name("inference.ModelInferRequest")
            .unwrap()
    }

    #[test]
    fn ordinary_requests_pass_and_swarms_of_tiny_elements_do_not() {
        let raw = ModelInferRequest {
            model_name: "m".into(),
            inputs: vec![InferInputTensor {
                name: "x".into(),
                datatype: "FP32".into(),
                shape: vec![64, 1, 28, 28],
                ..Default::default()
            }],
            raw_input_contents: vec![vec![0u8; 64 * 784 * 4].into()],
            ..Default::default()
        };
        assert!(check(&desc(), &raw.encode_to_vec()).is_ok());
        let typed = ModelInferRequest {
            inputs: vec![InferInputTensor {
                contents: Some(InferTensorContents {
                    int64_contents: vec![1; 100_000],
                    fp32_contents: vec![0.5; 100_000],
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(check(&desc(), &typed.encode_to_vec()).is_ok());
        let swarm = ModelInferRequest {
            inputs: vec![InferInputTensor::default(); 1_000_000],
            ..Default::default()
        };
        let e = check(&desc(), &swarm.encode_to_vec()).unwrap_err();
        assert!(e.contains("too many small elements"), "{e}");
        let strings = ModelInferRequest {
            inputs: vec![InferInputTensor {
                contents: Some(InferTensorContents {
                    bytes_contents: vec![Default::default(); 2_000_000],
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(check(&desc(), &strings.encode_to_vec()).is_err());
        assert!(
            check(&desc(), &[0x2a, 0xff, 0xff, 0xff, 0x0f]).is_err(),
            "a length past the end"
        );
    }
}
