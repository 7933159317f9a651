//! Tensors in the protocol's JSON: `data` as nested or flat arrays in, flat arrays out.
//!
//! Parsing streams the values straight into the tensor's buffer (no JSON tree), stops as
//! soon as there are more values than the shape holds, and never reserves more than the
//! text could fill: a request's JSON cannot allocate much more than its own size.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use serde::de::{DeserializeSeed, SeqAccess, Visitor};
use serde_json::Value;

use super::{Element, Tensor, TensorError, element_count};
use crate::datatype::DataType;

/// One JSON scalar as it arrives.
enum Scalar<'a> {
    I64(i64),
    U64(u64),
    F64(f64),
    Bool(bool),
    Str(&'a str),
    Other(&'static str),
}

impl fmt::Display for Scalar<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scalar::I64(v) => write!(f, "{v}"),
            Scalar::U64(v) => write!(f, "{v}"),
            Scalar::F64(v) => write!(f, "{v}"),
            Scalar::Bool(v) => write!(f, "{v}"),
            Scalar::Str(s) => {
                let s: String = s.chars().take(60).collect();
                write!(f, "{s:?}")
            }
            Scalar::Other(what) => f.write_str(what),
        }
    }
}

/// Where values go, in order, with the count the shape allows.
struct Sink {
    dtype: DataType,
    expected: usize,
    count: usize,
    raw: BytesMut,
    strings: Vec<Bytes>,
    error: Option<TensorError>,
}

impl Sink {
    fn new(dtype: DataType, expected: usize, text_len: usize) -> Sink {
        // A value takes at least two characters of text ("0,"), so the text bounds the count.
        let values = expected.min(text_len / 2 + 1);
        Sink {
            dtype,
            expected,
            count: 0,
            raw: BytesMut::with_capacity(values * dtype.size().unwrap_or(0)),
            strings: Vec::with_capacity(if dtype == DataType::Bytes { values } else { 0 }),
            error: None,
        }
    }

    /// Stores one value; false (with the error kept) when parsing must stop.
    fn push(&mut self, v: Scalar<'_>) -> bool {
        if self.count == self.expected {
            self.error = Some(TensorError::TooManyValues {
                expected: self.expected,
            });
            return false;
        }
        if write_scalar(self.dtype, &v, &mut self.raw, &mut self.strings).is_none() {
            let mut value = v.to_string();
            value.truncate(64);
            self.error = Some(TensorError::BadValue {
                dtype: self.dtype,
                index: self.count,
                value,
            });
            return false;
        }
        self.count += 1;
        true
    }

    fn finish(self, shape: Vec<usize>) -> Result<Tensor, TensorError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if self.count != self.expected {
            return Err(TensorError::ValueCount {
                shape,
                expected: self.expected,
                got: self.count,
            });
        }
        if self.dtype == DataType::Bytes {
            Tensor::from_strings(shape, self.strings)
        } else {
            Tensor::from_raw(self.dtype, shape, self.raw.freeze())
        }
    }
}

fn write_scalar(
    dtype: DataType,
    v: &Scalar<'_>,
    out: &mut BytesMut,
    strings: &mut Vec<Bytes>,
) -> Option<()> {
    fn int<T: TryFrom<i64> + TryFrom<u64> + Element>(
        v: &Scalar<'_>,
        out: &mut BytesMut,
    ) -> Option<()> {
        let x: T = match *v {
            Scalar::I64(i) => T::try_from(i).ok()?,
            Scalar::U64(u) => T::try_from(u).ok()?,
            Scalar::Bool(b) => T::try_from(i64::from(b)).ok()?,
            _ => return None,
        };
        x.write_le(out);
        Some(())
    }
    let float = |v: &Scalar<'_>| match *v {
        Scalar::I64(i) => Some(i as f64),
        Scalar::U64(u) => Some(u as f64),
        Scalar::F64(f) => Some(f),
        _ => None,
    };
    match dtype {
        DataType::Bool => out.put_u8(match *v {
            Scalar::Bool(b) => u8::from(b),
            Scalar::I64(n @ 0..=1) => n as u8,
            Scalar::U64(n @ 0..=1) => n as u8,
            _ => return None,
        }),
        DataType::U8 => int::<u8>(v, out)?,
        DataType::U16 => int::<u16>(v, out)?,
        DataType::U32 => int::<u32>(v, out)?,
        DataType::U64 => int::<u64>(v, out)?,
        DataType::I8 => int::<i8>(v, out)?,
        DataType::I16 => int::<i16>(v, out)?,
        DataType::I32 => int::<i32>(v, out)?,
        DataType::I64 => int::<i64>(v, out)?,
        DataType::F16 => half::f16::from_f64(float(v)?).write_le(out),
        DataType::Bf16 => half::bf16::from_f64(float(v)?).write_le(out),
        DataType::F32 => (float(v)? as f32).write_le(out),
        DataType::F64 => float(v)?.write_le(out),
        DataType::Bytes => match v {
            Scalar::Str(s) => strings.push(Bytes::copy_from_slice(s.as_bytes())),
            _ => return None,
        },
    }
    Some(())
}

/// A JSON value that may be an array of arrays of scalars, flattened into the sink.
struct Node<'s>(&'s mut Sink);

fn stop<E: serde::de::Error>() -> E {
    E::custom("tensor data rejected")
}

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of tensor values")
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<(), E> {
        self.0.push(Scalar::Bool(v)).then_some(()).ok_or_else(stop)
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        self.0.push(Scalar::I64(v)).then_some(()).ok_or_else(stop)
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        self.0.push(Scalar::U64(v)).then_some(()).ok_or_else(stop)
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        self.0.push(Scalar::F64(v)).then_some(()).ok_or_else(stop)
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        self.0.push(Scalar::Str(v)).then_some(()).ok_or_else(stop)
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.0
            .push(Scalar::Other("null"))
            .then_some(())
            .ok_or_else(stop)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        self.0.push(Scalar::Other("an object"));
        Err(stop())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Node(&mut *self.0))?.is_some() {}
        Ok(())
    }
}

fn walk(v: &Value, sink: &mut Sink) -> bool {
    match v {
        Value::Array(items) => items.iter().all(|i| walk(i, sink)),
        Value::Bool(b) => sink.push(Scalar::Bool(*b)),
        Value::Number(n) => sink.push(match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Scalar::I64(i),
            (None, Some(u)) => Scalar::U64(u),
            _ => Scalar::F64(n.as_f64().unwrap_or(f64::NAN)),
        }),
        Value::String(s) => sink.push(Scalar::Str(s)),
        Value::Null => sink.push(Scalar::Other("null")),
        Value::Object(_) => sink.push(Scalar::Other("an object")),
    }
}

impl Tensor {
    /// Parses protocol JSON data (nested or flat arrays) for this type and shape.
    pub fn from_json(
        dtype: DataType,
        shape: Vec<usize>,
        data: &Value,
    ) -> Result<Tensor, TensorError> {
        let n = element_count(&shape)?;
        let mut sink = Sink::new(dtype, n, n.min(1 << 20) * 2);
        walk(data, &mut sink);
        sink.finish(shape)
    }

    /// Parses the JSON text of a `data` field without building a JSON tree: values go
    /// straight into the buffer, and more values than the shape holds stop the parse.
    pub fn from_json_str(
        dtype: DataType,
        shape: Vec<usize>,
        text: &str,
    ) -> Result<Tensor, TensorError> {
        let n = element_count(&shape)?;
        let mut sink = Sink::new(dtype, n, text.len());
        let mut de = serde_json::Deserializer::from_str(text);
        let parsed = Node(&mut sink).deserialize(&mut de).and_then(|()| de.end());
        match parsed {
            Err(_) if sink.error.is_some() => sink.finish(shape),
            Err(e) => Err(TensorError::Json(format!("data is not valid JSON: {e}"))),
            Ok(()) => sink.finish(shape),
        }
    }

    /// The elements as a flat JSON array, as the protocol's JSON responses carry them.
    pub fn to_json(&self) -> Value {
        let raw = match &self.data {
            super::TensorData::Strings(s) => {
                return Value::Array(
                    s.iter()
                        .map(|e| Value::String(String::from_utf8_lossy(e).into_owned()))
                        .collect(),
                );
            }
            super::TensorData::Raw(b) => b,
        };
        fn nums<T: Element>(b: &[u8], f: impl Fn(T) -> Value) -> Value {
            Value::Array(b.chunks_exact(T::SIZE).map(|c| f(T::read_le(c))).collect())
        }
        let float = |x: f64| serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number);
        match self.dtype {
            DataType::Bool => Value::Array(raw.iter().map(|&b| Value::Bool(b != 0)).collect()),
            DataType::U8 => nums::<u8>(raw, |x| x.into()),
            DataType::U16 => nums::<u16>(raw, |x| x.into()),
            DataType::U32 => nums::<u32>(raw, |x| x.into()),
            DataType::U64 => nums::<u64>(raw, |x| x.into()),
            DataType::I8 => nums::<i8>(raw, |x| x.into()),
            DataType::I16 => nums::<i16>(raw, |x| x.into()),
            DataType::I32 => nums::<i32>(raw, |x| x.into()),
            DataType::I64 => nums::<i64>(raw, |x| x.into()),
            DataType::F16 => nums::<half::f16>(raw, |x| float(x.to_f64())),
            DataType::Bf16 => nums::<half::bf16>(raw, |x| float(x.to_f64())),
            DataType::F32 => nums::<f32>(raw, |x| float(f64::from(x))),
            DataType::F64 => nums::<f64>(raw, float),
            DataType::Bytes => Value::Array(vec![]),
        }
    }
}

/// A tensor's `data` serialized straight from its buffer, byte for byte what serializing
/// [`Tensor::to_json`] gives, without a `Value` per element (the HTTP response encoder's path).
pub struct JsonData<'a>(&'a Tensor);

impl Tensor {
    pub fn json_data(&self) -> JsonData<'_> {
        JsonData(self)
    }
}

impl serde::Serialize for JsonData<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        fn nums<T: Element, V: serde::Serialize, S: serde::Serializer>(
            s: S,
            b: &[u8],
            f: impl Fn(T) -> V,
        ) -> Result<S::Ok, S::Error> {
            let mut seq = s.serialize_seq(Some(b.len() / T::SIZE))?;
            for c in b.chunks_exact(T::SIZE) {
                seq.serialize_element(&f(T::read_le(c)))?;
            }
            seq.end()
        }
        let raw = match &self.0.data {
            super::TensorData::Strings(v) => {
                let mut seq = s.serialize_seq(Some(v.len()))?;
                for e in v {
                    seq.serialize_element(&String::from_utf8_lossy(e))?;
                }
                return seq.end();
            }
            super::TensorData::Raw(b) => b,
        };
        // Floats go out as f64, as `to_json` writes them (serde_json writes a non-finite one
        // as null, as `to_json`'s `Value::Null`).
        match self.0.dtype {
            DataType::Bool => nums::<u8, _, _>(s, raw, |b| b != 0),
            DataType::U8 => nums::<u8, _, _>(s, raw, |x| x),
            DataType::U16 => nums::<u16, _, _>(s, raw, |x| x),
            DataType::U32 => nums::<u32, _, _>(s, raw, |x| x),
            DataType::U64 => nums::<u64, _, _>(s, raw, |x| x),
            DataType::I8 => nums::<i8, _, _>(s, raw, |x| x),
            DataType::I16 => nums::<i16, _, _>(s, raw, |x| x),
            DataType::I32 => nums::<i32, _, _>(s, raw, |x| x),
            DataType::I64 => nums::<i64, _, _>(s, raw, |x| x),
            DataType::F16 => nums::<half::f16, _, _>(s, raw, |x| x.to_f64()),
            DataType::Bf16 => nums::<half::bf16, _, _>(s, raw, |x| x.to_f64()),
            DataType::F32 => nums::<f32, _, _>(s, raw, f64::from),
            DataType::F64 => nums::<f64, _, _>(s, raw, |x| x),
            DataType::Bytes => s.serialize_seq(Some(0))?.end(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_data_writes_what_to_json_writes() {
        let cases = [
            (DataType::Bool, json!([true, false, true])),
            (DataType::U8, json!([0, 7, 255])),
            (DataType::U16, json!([0, 65535, 3])),
            (DataType::U32, json!([0, 4294967295u32, 3])),
            (DataType::U64, json!([0, u64::MAX, 3])),
            (DataType::I8, json!([-128, 0, 127])),
            (DataType::I16, json!([-32768, 0, 32767])),
            (DataType::I32, json!([i32::MIN, 0, i32::MAX])),
            (DataType::I64, json!([i64::MIN, 0, i64::MAX])),
            (DataType::F16, json!([0.5, -2.25, 65504.0])),
            (DataType::Bf16, json!([0.5, -2.25, 1e30])),
            (DataType::F32, json!([0.1, -2.25, 3.4e38])),
            (DataType::F64, json!([0.1, -2.25, 1e300])),
            (DataType::Bytes, json!(["a", "héllo", ""])),
        ];
        for (dtype, data) in cases {
            let t = Tensor::from_json(dtype, vec![3], &data).unwrap();
            assert_eq!(
                serde_json::to_string(&t.json_data()).unwrap(),
                t.to_json().to_string(),
                "{dtype:?}"
            );
        }
        let mut nan = BytesMut::new();
        for x in [f32::NAN, f32::INFINITY, 1.5] {
            nan.put_f32_le(x);
        }
        let t = Tensor::from_raw(DataType::F32, vec![3], nan.freeze()).unwrap();
        assert_eq!(
            serde_json::to_string(&t.json_data()).unwrap(),
            "[null,null,1.5]"
        );
        assert_eq!(t.to_json().to_string(), "[null,null,1.5]");
    }

    #[test]
    fn json_round_trip_nested_and_flat() {
        let t = Tensor::from_json(DataType::I32, vec![2, 2], &json!([[1, -2], [3, 4]])).unwrap();
        assert_eq!(t.to_vec::<i32>().unwrap(), vec![1, -2, 3, 4]);
        assert_eq!(t.to_json(), json!([1, -2, 3, 4]));
        let f = Tensor::from_json(DataType::F32, vec![3], &json!([0.5, 1, -2.25])).unwrap();
        assert_eq!(f.to_vec::<f32>().unwrap(), vec![0.5, 1.0, -2.25]);
        let b = Tensor::from_json(DataType::Bool, vec![2], &json!([true, false])).unwrap();
        assert_eq!(b.to_json(), json!([true, false]));
    }

    #[test]
    fn json_rejects_out_of_range_and_wrong_counts() {
        assert!(matches!(
            Tensor::from_json(DataType::U8, vec![1], &json!([256])),
            Err(TensorError::BadValue { index: 0, .. })
        ));
        assert!(matches!(
            Tensor::from_json(DataType::I32, vec![1], &json!(["x"])),
            Err(TensorError::BadValue { .. })
        ));
        assert!(matches!(
            Tensor::from_json(DataType::F32, vec![3], &json!([1, 2])),
            Err(TensorError::ValueCount {
                expected: 3,
                got: 2,
                ..
            })
        ));
    }

    #[test]
    fn streaming_parse_equals_tree_parse() {
        let cases: &[(DataType, Vec<usize>, Value)] = &[
            (DataType::I32, vec![2, 2], json!([[1, -2], [3, 4]])),
            (DataType::F32, vec![3], json!([0.5, 1, -2.25])),
            (DataType::F16, vec![2], json!([0.5, 3])),
            (DataType::Bool, vec![3], json!([true, 0, 1])),
            (DataType::U64, vec![1], json!([u64::MAX])),
            (DataType::I8, vec![2], json!([[-128], [127]])),
            (DataType::Bytes, vec![2], json!(["ab", "\u{e9}\n"])),
        ];
        for (dt, shape, v) in cases {
            let tree = Tensor::from_json(*dt, shape.clone(), v).unwrap();
            let stream = Tensor::from_json_str(*dt, shape.clone(), &v.to_string()).unwrap();
            assert_eq!(tree, stream, "{dt} {v}");
        }
    }

    #[test]
    fn streaming_parse_stops_at_the_shape() {
        let many = format!("[{}0]", "0,".repeat(100_000));
        assert_eq!(
            Tensor::from_json_str(DataType::I64, vec![16], &many),
            Err(TensorError::TooManyValues { expected: 16 })
        );
        let strings = format!("[{}\"\"]", "\"\",".repeat(100_000));
        assert_eq!(
            Tensor::from_json_str(DataType::Bytes, vec![1], &strings),
            Err(TensorError::TooManyValues { expected: 1 })
        );
        assert!(matches!(
            Tensor::from_json_str(DataType::F32, vec![2], "[1, {\"a\": 2}]"),
            Err(TensorError::BadValue { index: 1, .. })
        ));
        assert!(matches!(
            Tensor::from_json_str(DataType::F32, vec![2], "[1, null]"),
            Err(TensorError::BadValue { index: 1, .. })
        ));
        assert!(matches!(
            Tensor::from_json_str(DataType::F32, vec![2], "[1, 2"),
            Err(TensorError::Json(_))
        ));
        let deep = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(Tensor::from_json_str(DataType::F32, vec![1], &deep).is_err());
        // A huge declared shape reserves only what the text could hold.
        let t = Tensor::from_json_str(DataType::F32, vec![usize::MAX / 8], "[1]");
        assert!(matches!(t, Err(TensorError::ValueCount { got: 1, .. })));
    }

    proptest::proptest! {
        #[test]
        fn streaming_parser_never_panics(text in ".{0,200}", n in 0usize..64) {
            for dt in [DataType::F32, DataType::I8, DataType::Bool, DataType::Bytes, DataType::U64] {
                let _ = Tensor::from_json_str(dt, vec![n], &text);
            }
        }
    }
}
