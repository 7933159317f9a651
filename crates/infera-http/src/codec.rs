//! The v2 HTTP inference body: a JSON header, optionally followed by raw tensor bytes
//! (Triton's binary tensor data extension, framed by `Inference-Header-Content-Length`).

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use infera_core::request::{InferRequest, InferResponse, InputTensor, RequestedOutput};
use infera_core::{DataType, ServeError, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// Tensors in one request (inputs or outputs): more is refused before parsing them.
pub const MAX_REQUEST_TENSORS: usize = 1024;
/// Dimensions of one tensor in a request.
pub const MAX_REQUEST_RANK: usize = 32;
/// Bytes of a `parameters` object (request, input or output).
pub const MAX_PARAMETERS_BYTES: usize = 64 << 10;

/// A JSON array of at most `N` elements: parsing stops at the first one past the bound, so
/// a long list of small items cannot make a much larger list of parsed items.
struct AtMost<T, const N: usize>(Vec<T>);

impl<'de, T: Deserialize<'de>, const N: usize> Deserialize<'de> for AtMost<T, N> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T, const N: usize>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>, const N: usize> serde::de::Visitor<'de> for V<T, N> {
            type Value = AtMost<T, N>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "an array of at most {N} items")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(item) = seq.next_element()? {
                    if out.len() == N {
                        return Err(serde::de::Error::custom(format!(
                            "more than {N} items in an array"
                        )));
                    }
                    out.push(item);
                }
                Ok(AtMost(out))
            }
        }
        d.deserialize_seq(V::<T, N>(std::marker::PhantomData))
    }
}

#[derive(Deserialize)]
struct RequestJson<'a> {
    #[serde(default, borrow)]
    id: Option<&'a RawValue>,
    #[serde(default, borrow)]
    parameters: Option<&'a RawValue>,
    #[serde(borrow)]
    inputs: AtMost<InputJson<'a>, MAX_REQUEST_TENSORS>,
    #[serde(default, borrow)]
    outputs: Option<AtMost<OutputJson<'a>, MAX_REQUEST_TENSORS>>,
}

#[derive(Deserialize)]
struct InputJson<'a> {
    name: String,
    shape: AtMost<i64, MAX_REQUEST_RANK>,
    datatype: String,
    #[serde(default, borrow)]
    parameters: Option<&'a RawValue>,
    /// Kept as text: parsed into the tensor only once the shape has been checked.
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct OutputJson<'a> {
    name: String,
    #[serde(default, borrow)]
    parameters: Option<&'a RawValue>,
}

/// A `parameters` object, bounded in size before it is parsed.
fn parameters(
    raw: Option<&RawValue>,
    whose: &str,
) -> Result<Option<Map<String, Value>>, ServeError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    if raw.get().len() > MAX_PARAMETERS_BYTES {
        return Err(invalid(format!(
            "the parameters of {whose} are larger than {MAX_PARAMETERS_BYTES} bytes"
        )));
    }
    match serde_json::from_str::<Value>(raw.get()) {
        Ok(Value::Object(m)) => Ok(Some(m)),
        Ok(Value::Null) => Ok(None),
        _ => Err(invalid(format!(
            "the parameters of {whose} must be a JSON object"
        ))),
    }
}

/// The only input of a model, for raw binary requests (`Inference-Header-Content-Length: 0`).
pub struct RawInput {
    pub name: String,
    pub dtype: DataType,
    /// Full shape with the batch dim; a -1 is inferred from the body length.
    pub shape: Vec<i64>,
}

/// A parsed request plus how the response should be encoded.
pub struct Decoded {
    pub request: InferRequest,
    /// Per response output (same order as `request.outputs`, or all outputs if empty): binary?
    pub binary_outputs: Vec<(String, bool)>,
    pub binary_default: bool,
}

fn invalid(m: impl Into<String>) -> ServeError {
    ServeError::invalid(m)
}

fn param_u64(params: Option<&Map<String, Value>>, key: &str) -> Result<Option<u64>, ServeError> {
    match params.and_then(|p| p.get(key)) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            invalid(format!(
                "parameter '{key}' must be a non-negative integer, got {v}"
            ))
        }),
    }
}

/// The longest routing key: it is hashed, never stored, but a key is an id, not a payload.
pub const MAX_ROUTING_KEY: usize = 256;

/// A client's routing key (a string, or a number as many ids are).
fn param_key(params: Option<&Map<String, Value>>) -> Result<Option<String>, ServeError> {
    let key = match params.and_then(|p| p.get("routing_key")) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(v) => {
            return Err(invalid(format!(
                "parameter 'routing_key' must be a string, got {v}"
            )));
        }
    };
    if key.len() > MAX_ROUTING_KEY {
        return Err(invalid(format!(
            "parameter 'routing_key' is longer than {MAX_ROUTING_KEY} bytes"
        )));
    }
    Ok(Some(key))
}

fn param_bool(params: Option<&Map<String, Value>>, key: &str) -> Result<Option<bool>, ServeError> {
    match params.and_then(|p| p.get(key)) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(invalid(format!(
            "parameter '{key}' must be true or false, got {v}"
        ))),
    }
}

/// Checks an input's name, type and shape against the model before its data is read.
pub type InputGuard<'g> = &'g dyn Fn(&str, DataType, &[usize]) -> Result<(), ServeError>;

/// Parses an infer body. Never panics, whatever the bytes; an input's data is parsed only
/// after `guard` has accepted its name, type and shape.
pub fn decode_request(
    model: &str,
    version: Option<i64>,
    header_len: Option<usize>,
    body: Bytes,
    raw_input: impl FnOnce() -> Result<RawInput, ServeError>,
    guard: InputGuard<'_>,
) -> Result<Decoded, ServeError> {
    if header_len == Some(0) {
        return decode_raw(model, version, body, raw_input()?);
    }
    let (head, mut binary) = match header_len {
        Some(n) if n > body.len() => {
            return Err(invalid(format!(
                "Inference-Header-Content-Length is {n} but the body has only {} bytes",
                body.len()
            )));
        }
        Some(n) => (body.slice(..n), body.slice(n..)),
        None => (body, Bytes::new()),
    };
    let req: RequestJson<'_> = serde_json::from_slice(&head).map_err(|e| {
        invalid(format!(
            "failed to parse the request JSON: {e}{}",
            if header_len.is_none() && head.first() == Some(&b'{') && e.is_syntax() {
                " (binary tensor data needs the Inference-Header-Content-Length header)"
            } else {
                ""
            }
        ))
    })?;
    let params = parameters(req.parameters, "the request")?;
    let params = params.as_ref();
    if params.is_some_and(|p| p.contains_key("sequence_id")) {
        return Err(ServeError::unsupported(
            "sequence batching (sequence_id) is not supported",
        ));
    }
    let mut inputs = Vec::with_capacity(req.inputs.0.len());
    for i in req.inputs.0 {
        let dtype = DataType::parse(&i.datatype).ok_or_else(|| {
            invalid(format!(
                "input '{}' has unknown datatype '{}'",
                i.name, i.datatype
            ))
        })?;
        let shape = i
            .shape
            .0
            .iter()
            .map(|&d| usize::try_from(d))
            .collect::<Result<Vec<usize>, _>>()
            .map_err(|_| {
                invalid(format!(
                    "input '{}' has a negative dimension in shape {:?}",
                    i.name, i.shape.0
                ))
            })?;
        let ip = parameters(i.parameters, &format!("input '{}'", i.name))?;
        let ip = ip.as_ref();
        if ip.is_some_and(|p| p.contains_key("shared_memory_region")) {
            return Err(ServeError::unsupported(format!(
                "input '{}': shared memory is not supported; send the data in the request",
                i.name
            )));
        }
        guard(&i.name, dtype, &shape)?;
        let tensor = match param_u64(ip, "binary_data_size")? {
            Some(size) => {
                let size = usize::try_from(size).unwrap_or(usize::MAX);
                if size > binary.len() {
                    return Err(invalid(format!(
                        "input '{}' declares binary_data_size {size} but only {} bytes of binary data remain",
                        i.name,
                        binary.len()
                    )));
                }
                let raw = binary.split_to(size);
                Tensor::from_raw(dtype, shape, raw)
            }
            None => {
                let data = i.data.ok_or_else(|| {
                    invalid(format!("input '{}' has neither data nor binary_data_size", i.name))
                })?;
                Tensor::from_json_str(dtype, shape, data.get())
            }
        }
        .map_err(|e| invalid(format!("input '{}': {e}", i.name)))?;
        inputs.push(InputTensor {
            name: i.name,
            tensor,
        });
    }
    if !binary.is_empty() {
        return Err(invalid(format!(
            "{} bytes of binary data are not claimed by any input's binary_data_size",
            binary.len()
        )));
    }
    let binary_default = param_bool(params, "binary_data_output")?.unwrap_or(false);
    let mut outputs = Vec::new();
    let mut binary_outputs = Vec::new();
    for o in req.outputs.map(|o| o.0).unwrap_or_default() {
        let op = parameters(o.parameters, &format!("output '{}'", o.name))?;
        let op = op.as_ref();
        if op.is_some_and(|p| p.contains_key("shared_memory_region")) {
            return Err(ServeError::unsupported(format!(
                "output '{}': shared memory is not supported",
                o.name
            )));
        }
        let classification = param_u64(op, "classification")?.map(|k| k as usize);
        let binary = param_bool(op, "binary_data")?.unwrap_or(binary_default);
        binary_outputs.push((o.name.clone(), binary));
        outputs.push(RequestedOutput {
            name: o.name,
            classification,
        });
    }
    let id = match req.id.map(RawValue::get) {
        None | Some("null") => String::new(),
        Some(raw) => match serde_json::from_str::<String>(raw) {
            Ok(s) => s,
            Err(_) => raw.to_string(),
        },
    };
    Ok(Decoded {
        request: InferRequest {
            model: model.to_string(),
            version,
            id,
            inputs,
            outputs,
            // Clients never reach the scheduler's background lane (usize::MAX).
            priority: param_u64(params, "priority")?
                .unwrap_or(0)
                .min(u64::from(u32::MAX)) as usize,
            timeout: param_u64(params, "timeout")?
                .filter(|&t| t > 0)
                .map(Duration::from_micros),
            routing_key: param_key(params)?,
        },
        binary_outputs,
        binary_default,
    })
}

fn decode_raw(
    model: &str,
    version: Option<i64>,
    body: Bytes,
    input: RawInput,
) -> Result<Decoded, ServeError> {
    let shape: Vec<usize> = match input.dtype.size() {
        Some(size) => {
            let known: i64 = input.shape.iter().filter(|&&d| d > 0).product();
            let free = input.shape.iter().filter(|&&d| d < 0).count();
            let elems = body.len() / size;
            if free > 1 || known == 0 || (free == 1 && !elems.is_multiple_of(known as usize)) {
                return Err(invalid(format!(
                    "raw binary request: cannot infer the shape of input '{}' ({:?}) from {} bytes",
                    input.name,
                    input.shape,
                    body.len()
                )));
            }
            input
                .shape
                .iter()
                .map(|&d| {
                    if d < 0 {
                        elems / known as usize
                    } else {
                        d as usize
                    }
                })
                .collect()
        }
        None => input.shape.iter().map(|&d| d.max(1) as usize).collect(),
    };
    let tensor = Tensor::from_raw(input.dtype, shape, body)
        .map_err(|e| invalid(format!("raw binary input '{}': {e}", input.name)))?;
    Ok(Decoded {
        request: InferRequest {
            model: model.to_string(),
            version,
            id: String::new(),
            inputs: vec![InputTensor {
                name: input.name,
                tensor,
            }],
            outputs: vec![],
            priority: 0,
            timeout: None,
            routing_key: None,
        },
        binary_outputs: vec![],
        binary_default: true,
    })
}

/// Encodes a response; returns the body and, when binary data follows, the JSON length.
pub fn encode_response(
    resp: &InferResponse,
    decoded_binary: &[(String, bool)],
    binary_default: bool,
) -> (Bytes, Option<usize>) {
    // Written straight from the response (a `serde_json::Value` tree cost a map per object
    // and a value per output element); the keys keep the order they always had.
    #[derive(Serialize)]
    struct Head<'a> {
        model_name: &'a str,
        model_version: &'a str,
        outputs: Vec<Entry<'a>>,
        #[serde(skip_serializing_if = "str::is_empty")]
        id: &'a str,
    }
    #[derive(Serialize)]
    struct Entry<'a> {
        name: &'a str,
        datatype: &'static str,
        shape: &'a [usize],
        #[serde(skip_serializing_if = "Option::is_none")]
        parameters: Option<BinarySize>,
        #[serde(skip_serializing_if = "Option::is_none")]
        data: Option<infera_core::tensor::JsonData<'a>>,
    }
    #[derive(Serialize)]
    struct BinarySize {
        binary_data_size: usize,
    }
    let mut binary = BytesMut::new();
    let mut outputs = Vec::with_capacity(resp.outputs.len());
    for o in &resp.outputs {
        let as_binary = decoded_binary
            .iter()
            .find(|(n, _)| *n == o.name)
            .map_or(binary_default, |(_, b)| *b);
        let (parameters, data) = if as_binary {
            let raw = o.tensor.to_raw();
            binary.put_slice(&raw);
            (
                Some(BinarySize {
                    binary_data_size: raw.len(),
                }),
                None,
            )
        } else {
            (None, Some(o.tensor.json_data()))
        };
        outputs.push(Entry {
            name: &o.name,
            datatype: o.tensor.dtype.as_str(),
            shape: &o.tensor.shape,
            parameters,
            data,
        });
    }
    let head = Head {
        model_name: &resp.model_name,
        model_version: &resp.model_version,
        outputs,
        id: &resp.id,
    };
    // Strings, numbers and sequences only: writing them to a Vec cannot fail.
    let head = serde_json::to_vec(&head).unwrap_or_default();
    if binary.is_empty() && !decoded_binary.iter().any(|(_, b)| *b) && !binary_default {
        return (Bytes::from(head), None);
    }
    let len = head.len();
    let mut body = BytesMut::with_capacity(len + binary.len());
    body.put_slice(&head);
    body.put_slice(&binary);
    (body.freeze(), Some(len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use infera_core::request::OutputTensor;
    use serde_json::json;

    fn no_raw() -> Result<RawInput, ServeError> {
        Err(invalid("no raw"))
    }

    fn any(_: &str, _: DataType, _: &[usize]) -> Result<(), ServeError> {
        Ok(())
    }

    #[test]
    fn json_and_binary_inputs_mix() {
        let head = br#"{"id":"7","inputs":[{"name":"a","shape":[1,2],"datatype":"INT32","parameters":{"binary_data_size":8}},{"name":"b","shape":[2],"datatype":"FP32","data":[1.5,2]}],"outputs":[{"name":"y","parameters":{"binary_data":true,"classification":2}}],"parameters":{"priority":1,"timeout":500}}"#;
        let mut body = head.to_vec();
        body.extend_from_slice(&[1, 0, 0, 0, 2, 0, 0, 0]);
        let d = decode_request(
            "m",
            Some(1),
            Some(head.len()),
            Bytes::from(body),
            no_raw,
            &any,
        )
        .unwrap();
        let r = &d.request;
        assert_eq!(r.id, "7");
        assert_eq!(r.inputs[0].tensor.to_vec::<i32>().unwrap(), vec![1, 2]);
        assert_eq!(r.inputs[1].tensor.to_vec::<f32>().unwrap(), vec![1.5, 2.0]);
        assert_eq!(r.outputs[0].classification, Some(2));
        assert_eq!(r.priority, 1);
        assert_eq!(r.timeout, Some(Duration::from_micros(500)));
        assert_eq!(d.binary_outputs, vec![("y".to_string(), true)]);
    }

    #[test]
    fn framing_errors_are_reported() {
        let e = |h: Option<usize>, b: &[u8]| {
            decode_request("m", None, h, Bytes::copy_from_slice(b), no_raw, &any)
                .err()
                .unwrap()
                .message
        };
        assert!(e(Some(100), b"{}").contains("only 2 bytes"));
        let head = br#"{"inputs":[{"name":"a","shape":[2],"datatype":"INT32","parameters":{"binary_data_size":8}}]}"#;
        let mut short = head.to_vec();
        short.extend_from_slice(&[0; 4]);
        assert!(e(Some(head.len()), &short).contains("only 4 bytes"));
        let mut long = head.to_vec();
        long.extend_from_slice(&[0; 12]);
        assert!(e(Some(head.len()), &long).contains("not claimed"));
        assert!(e(None, b"{not json").contains("failed to parse"));
        assert!(
            e(
                None,
                br#"{"inputs":[{"name":"a","shape":[-1],"datatype":"INT32","data":[]}]}"#
            )
            .contains("negative")
        );
        assert!(
            e(
                None,
                br#"{"inputs":[{"name":"a","shape":[1],"datatype":"FLOAT","data":[1]}]}"#
            )
            .contains("unknown datatype")
        );
        assert!(
            e(
                None,
                br#"{"inputs":[{"name":"a","shape":[2],"datatype":"INT32","data":[1]}]}"#
            )
            .contains("expected 2 values")
        );
    }

    #[test]
    fn raw_binary_request_infers_the_batch() {
        let raw = || {
            Ok(RawInput {
                name: "x".into(),
                dtype: DataType::F32,
                shape: vec![-1, 2],
            })
        };
        let d = decode_request("m", None, Some(0), Bytes::from(vec![0u8; 16]), raw, &any).unwrap();
        assert_eq!(d.request.inputs[0].tensor.shape, vec![2, 2]);
        assert!(d.binary_default);
    }

    #[test]
    fn response_binary_framing() {
        let resp = InferResponse {
            model_name: "m".into(),
            model_version: "1".into(),
            id: "x".into(),
            outputs: vec![
                OutputTensor {
                    name: "a".into(),
                    tensor: Tensor::from_slice(vec![2], &[1i32, 2]).unwrap(),
                },
                OutputTensor {
                    name: "b".into(),
                    tensor: Tensor::from_slice(vec![1], &[0.5f32]).unwrap(),
                },
            ],
        };
        let (body, len) = encode_response(&resp, &[("a".into(), true), ("b".into(), false)], false);
        let len = len.unwrap();
        let head: Value = serde_json::from_slice(&body[..len]).unwrap();
        assert_eq!(head["outputs"][0]["parameters"]["binary_data_size"], 8);
        assert_eq!(head["outputs"][1]["data"], json!([0.5]));
        assert_eq!(head["id"], "x");
        assert_eq!(&body[len..], &[1, 0, 0, 0, 2, 0, 0, 0]);
        let (body, len) = encode_response(&resp, &[], false);
        assert!(len.is_none());
        let all: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(all["outputs"][0]["data"], json!([1, 2]));
        // The exact bytes, key order included, as clients that diff responses have seen them.
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            r#"{"model_name":"m","model_version":"1","outputs":[{"name":"a","datatype":"INT32","shape":[2],"data":[1,2]},{"name":"b","datatype":"FP32","shape":[1],"data":[0.5]}],"id":"x"}"#
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        #[test]
        fn decoding_arbitrary_bytes_never_panics(body: Vec<u8>, header in proptest::option::of(0usize..300)) {
            let _ = decode_request("m", None, header, Bytes::from(body), no_raw, &any);
        }

        #[test]
        fn decoding_mutated_valid_requests_never_panics(
            size in 0u64..64, shape in proptest::collection::vec(0i64..5, 0..4),
            dt in proptest::sample::select(vec!["BOOL","UINT8","INT32","FP16","FP32","BYTES","INT64"]),
            tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
        ) {
            let head = format!(r#"{{"inputs":[{{"name":"a","shape":{shape:?},"datatype":"{dt}","parameters":{{"binary_data_size":{size}}}}}]}}"#);
            let mut body = head.clone().into_bytes();
            body.extend_from_slice(&tail);
            let _ = decode_request("m", None, Some(head.len()), Bytes::from(body), no_raw, &any);
        }
    }
}
