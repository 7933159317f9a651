//! Tensors as the protocol carries them: little-endian row-major bytes, or length-prefixed
//! byte strings for BYTES. Keeping the wire layout means binary requests are never re-encoded.

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::Value;
use thiserror::Error;

use crate::datatype::DataType;

#[derive(Debug, Error, PartialEq)]
pub enum TensorError {
    #[error("shape {shape:?} has too many elements")]
    ShapeOverflow { shape: Vec<usize> },
    #[error("expected {expected} bytes of {dtype} data for shape {shape:?}, got {got}")]
    ByteSize {
        dtype: DataType,
        shape: Vec<usize>,
        expected: usize,
        got: usize,
    },
    #[error("BYTES data is truncated: element {index} declares {declared} bytes but {left} remain")]
    TruncatedString {
        index: usize,
        declared: usize,
        left: usize,
    },
    #[error("expected {expected} BYTES elements for shape {shape:?}, got {got}")]
    StringCount {
        shape: Vec<usize>,
        expected: usize,
        got: usize,
    },
    #[error("expected {expected} values for shape {shape:?}, got {got}")]
    ValueCount {
        shape: Vec<usize>,
        expected: usize,
        got: usize,
    },
    #[error("value {value} at index {index} is not a valid {dtype}")]
    BadValue {
        dtype: DataType,
        index: usize,
        value: String,
    },
    #[error("cannot join tensors of different types or shapes")]
    Mismatch,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    /// Fixed-size elements, little-endian, row-major.
    Raw(Bytes),
    /// One entry per BYTES element.
    Strings(Vec<Bytes>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub dtype: DataType,
    pub shape: Vec<usize>,
    pub data: TensorData,
}

pub fn element_count(shape: &[usize]) -> Result<usize, TensorError> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| TensorError::ShapeOverflow {
            shape: shape.to_vec(),
        })
}

/// A fixed-size element type that can be read from and written to little-endian bytes.
pub trait Element: Copy + Send + 'static {
    const DTYPE: DataType;
    const SIZE: usize;
    fn read_le(b: &[u8]) -> Self;
    fn write_le(self, out: &mut BytesMut);
}

macro_rules! element {
    ($t:ty, $dt:expr) => {
        impl Element for $t {
            const DTYPE: DataType = $dt;
            const SIZE: usize = std::mem::size_of::<$t>();
            fn read_le(b: &[u8]) -> Self {
                let mut a = [0u8; std::mem::size_of::<$t>()];
                a.copy_from_slice(&b[..Self::SIZE]);
                <$t>::from_le_bytes(a)
            }
            fn write_le(self, out: &mut BytesMut) {
                out.put_slice(&self.to_le_bytes());
            }
        }
    };
}
element!(u8, DataType::U8);
element!(u16, DataType::U16);
element!(u32, DataType::U32);
element!(u64, DataType::U64);
element!(i8, DataType::I8);
element!(i16, DataType::I16);
element!(i32, DataType::I32);
element!(i64, DataType::I64);
element!(f32, DataType::F32);
element!(f64, DataType::F64);
element!(half::f16, DataType::F16);
element!(half::bf16, DataType::Bf16);

impl Tensor {
    /// Builds a tensor from wire bytes, checking that they fit the shape exactly.
    pub fn from_raw(dtype: DataType, shape: Vec<usize>, raw: Bytes) -> Result<Tensor, TensorError> {
        let n = element_count(&shape)?;
        match dtype.size() {
            Some(size) => {
                let expected = n
                    .checked_mul(size)
                    .ok_or_else(|| TensorError::ShapeOverflow {
                        shape: shape.clone(),
                    })?;
                if raw.len() != expected {
                    return Err(TensorError::ByteSize {
                        dtype,
                        shape,
                        expected,
                        got: raw.len(),
                    });
                }
                Ok(Tensor {
                    dtype,
                    shape,
                    data: TensorData::Raw(raw),
                })
            }
            None => {
                let strings = parse_length_prefixed(&raw)?;
                if strings.len() != n {
                    return Err(TensorError::StringCount {
                        shape,
                        expected: n,
                        got: strings.len(),
                    });
                }
                Ok(Tensor {
                    dtype,
                    shape,
                    data: TensorData::Strings(strings),
                })
            }
        }
    }

    pub fn from_strings(shape: Vec<usize>, strings: Vec<Bytes>) -> Result<Tensor, TensorError> {
        let n = element_count(&shape)?;
        if strings.len() != n {
            return Err(TensorError::StringCount {
                shape,
                expected: n,
                got: strings.len(),
            });
        }
        Ok(Tensor {
            dtype: DataType::Bytes,
            shape,
            data: TensorData::Strings(strings),
        })
    }

    pub fn from_slice<T: Element>(shape: Vec<usize>, values: &[T]) -> Result<Tensor, TensorError> {
        let mut out = BytesMut::with_capacity(values.len() * T::SIZE);
        for v in values {
            v.write_le(&mut out);
        }
        Tensor::from_raw(T::DTYPE, shape, out.freeze())
    }

    pub fn element_count(&self) -> usize {
        element_count(&self.shape).unwrap_or(0)
    }

    /// The wire form: the raw bytes, or BYTES elements each behind a 4-byte length.
    pub fn to_raw(&self) -> Bytes {
        match &self.data {
            TensorData::Raw(b) => b.clone(),
            TensorData::Strings(s) => {
                let mut out = BytesMut::with_capacity(s.iter().map(|e| e.len() + 4).sum());
                for e in s {
                    out.put_u32_le(e.len() as u32);
                    out.put_slice(e);
                }
                out.freeze()
            }
        }
    }

    /// Copies the elements out as `T`; `None` when `T` is not this tensor's type.
    pub fn to_vec<T: Element>(&self) -> Option<Vec<T>> {
        match &self.data {
            TensorData::Raw(b) if T::DTYPE == self.dtype => {
                Some(b.chunks_exact(T::SIZE).map(T::read_le).collect())
            }
            _ => None,
        }
    }

    /// Parses protocol JSON data (nested or flat arrays) for this type and shape.
    pub fn from_json(
        dtype: DataType,
        shape: Vec<usize>,
        data: &Value,
    ) -> Result<Tensor, TensorError> {
        let n = element_count(&shape)?;
        let mut flat = Vec::with_capacity(n.min(1 << 20));
        flatten(data, &mut flat);
        if flat.len() != n {
            return Err(TensorError::ValueCount {
                shape,
                expected: n,
                got: flat.len(),
            });
        }
        if dtype == DataType::Bytes {
            let mut strings = Vec::with_capacity(n);
            for (index, v) in flat.iter().enumerate() {
                match v {
                    Value::String(s) => strings.push(Bytes::copy_from_slice(s.as_bytes())),
                    other => return Err(bad(dtype, index, other)),
                }
            }
            return Tensor::from_strings(shape, strings);
        }
        let size = dtype.size().unwrap_or(1);
        let mut out = BytesMut::with_capacity(n * size);
        for (index, v) in flat.iter().enumerate() {
            write_json_value(dtype, v, &mut out).ok_or_else(|| bad(dtype, index, v))?;
        }
        Tensor::from_raw(dtype, shape, out.freeze())
    }

    /// The elements as a flat JSON array, as the protocol's JSON responses carry them.
    pub fn to_json(&self) -> Value {
        let raw = match &self.data {
            TensorData::Strings(s) => {
                return Value::Array(
                    s.iter()
                        .map(|e| Value::String(String::from_utf8_lossy(e).into_owned()))
                        .collect(),
                );
            }
            TensorData::Raw(b) => b,
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

    /// Joins tensors along the first (batch) dimension.
    pub fn concat(parts: &[&Tensor]) -> Result<Tensor, TensorError> {
        let first = parts.first().ok_or(TensorError::Mismatch)?;
        if parts.len() == 1 {
            return Ok((*first).clone());
        }
        let tail = first.shape.get(1..).ok_or(TensorError::Mismatch)?;
        let mut batch = 0usize;
        for p in parts {
            if p.dtype != first.dtype || p.shape.is_empty() || &p.shape[1..] != tail {
                return Err(TensorError::Mismatch);
            }
            batch += p.shape[0];
        }
        let mut shape = first.shape.clone();
        shape[0] = batch;
        let data = match &first.data {
            TensorData::Raw(_) => {
                let mut out = BytesMut::with_capacity(parts.iter().map(|p| p.byte_len()).sum());
                for p in parts {
                    match &p.data {
                        TensorData::Raw(b) => out.put_slice(b),
                        TensorData::Strings(_) => return Err(TensorError::Mismatch),
                    }
                }
                TensorData::Raw(out.freeze())
            }
            TensorData::Strings(_) => {
                let mut out = Vec::new();
                for p in parts {
                    match &p.data {
                        TensorData::Strings(s) => out.extend(s.iter().cloned()),
                        TensorData::Raw(_) => return Err(TensorError::Mismatch),
                    }
                }
                TensorData::Strings(out)
            }
        };
        Ok(Tensor {
            dtype: first.dtype,
            shape,
            data,
        })
    }

    /// Splits along the first dimension into pieces of the given batch sizes (zero-copy for raw data).
    pub fn split(&self, sizes: &[usize]) -> Result<Vec<Tensor>, TensorError> {
        if sizes.len() == 1 {
            return Ok(vec![self.clone()]);
        }
        let total: usize = sizes.iter().sum();
        if self.shape.first() != Some(&total) {
            return Err(TensorError::Mismatch);
        }
        let row_elems = element_count(&self.shape[1..])?;
        let mut out = Vec::with_capacity(sizes.len());
        let mut start = 0usize;
        for &n in sizes {
            let mut shape = self.shape.clone();
            shape[0] = n;
            let data = match &self.data {
                TensorData::Raw(b) => {
                    let row = row_elems * self.dtype.size().unwrap_or(1);
                    TensorData::Raw(b.slice(start * row..(start + n) * row))
                }
                TensorData::Strings(s) => {
                    TensorData::Strings(s[start * row_elems..(start + n) * row_elems].to_vec())
                }
            };
            out.push(Tensor {
                dtype: self.dtype,
                shape,
                data,
            });
            start += n;
        }
        Ok(out)
    }

    /// Size on the wire (BYTES elements include their 4-byte length prefixes).
    pub fn byte_len(&self) -> usize {
        match &self.data {
            TensorData::Raw(b) => b.len(),
            TensorData::Strings(s) => s.iter().map(|e| e.len() + 4).sum(),
        }
    }
}

fn bad(dtype: DataType, index: usize, v: &Value) -> TensorError {
    let mut value = v.to_string();
    value.truncate(64);
    TensorError::BadValue {
        dtype,
        index,
        value,
    }
}

fn flatten<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| flatten(i, out)),
        other => out.push(other),
    }
}

fn write_json_value(dtype: DataType, v: &Value, out: &mut BytesMut) -> Option<()> {
    fn int<T: TryFrom<i64> + TryFrom<u64> + Element>(v: &Value, out: &mut BytesMut) -> Option<()> {
        let x: T = match v {
            Value::Number(n) => match (n.as_i64(), n.as_u64()) {
                (Some(i), _) => T::try_from(i).ok()?,
                (None, Some(u)) => T::try_from(u).ok()?,
                _ => return None,
            },
            Value::Bool(b) => T::try_from(i64::from(*b)).ok()?,
            _ => return None,
        };
        x.write_le(out);
        Some(())
    }
    let float = |v: &Value| v.as_f64();
    match dtype {
        DataType::Bool => out.put_u8(match v {
            Value::Bool(b) => u8::from(*b),
            Value::Number(n) if n.as_u64() == Some(0) || n.as_u64() == Some(1) => n.as_u64()? as u8,
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
        DataType::Bytes => return None,
    }
    Some(())
}

/// Splits a BYTES wire buffer (4-byte little-endian length, then the bytes) into elements.
pub fn parse_length_prefixed(raw: &Bytes) -> Result<Vec<Bytes>, TensorError> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos < raw.len() {
        let left = raw.len() - pos;
        if left < 4 {
            return Err(TensorError::TruncatedString {
                index: out.len(),
                declared: 4,
                left,
            });
        }
        let len = u32::from_le_bytes([raw[pos], raw[pos + 1], raw[pos + 2], raw[pos + 3]]) as usize;
        pos += 4;
        if raw.len() - pos < len {
            return Err(TensorError::TruncatedString {
                index: out.len(),
                declared: len,
                left: raw.len() - pos,
            });
        }
        out.push(raw.slice(pos..pos + len));
        pos += len;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn raw_size_is_checked() {
        let t = Tensor::from_raw(DataType::F32, vec![2, 2], Bytes::from(vec![0u8; 16])).unwrap();
        assert_eq!(t.element_count(), 4);
        let e =
            Tensor::from_raw(DataType::F32, vec![2, 2], Bytes::from(vec![0u8; 15])).unwrap_err();
        assert!(matches!(
            e,
            TensorError::ByteSize {
                expected: 16,
                got: 15,
                ..
            }
        ));
        assert!(matches!(
            Tensor::from_raw(DataType::U8, vec![usize::MAX, 3], Bytes::new()),
            Err(TensorError::ShapeOverflow { .. })
        ));
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
    fn bytes_wire_format() {
        let t = Tensor::from_json(DataType::Bytes, vec![2], &json!(["ab", ""])).unwrap();
        let raw = t.to_raw();
        assert_eq!(&raw[..], &[2, 0, 0, 0, b'a', b'b', 0, 0, 0, 0]);
        assert_eq!(Tensor::from_raw(DataType::Bytes, vec![2], raw).unwrap(), t);
        let truncated = Bytes::from_static(&[5, 0, 0, 0, b'a']);
        assert!(matches!(
            Tensor::from_raw(DataType::Bytes, vec![1], truncated),
            Err(TensorError::TruncatedString {
                declared: 5,
                left: 1,
                ..
            })
        ));
    }

    #[test]
    fn concat_then_split_restores_parts() {
        let a = Tensor::from_slice(vec![1, 2], &[1.0f32, 2.0]).unwrap();
        let b = Tensor::from_slice(vec![2, 2], &[3.0f32, 4.0, 5.0, 6.0]).unwrap();
        let joined = Tensor::concat(&[&a, &b]).unwrap();
        assert_eq!(joined.shape, vec![3, 2]);
        assert_eq!(joined.split(&[1, 2]).unwrap(), vec![a.clone(), b]);
        let c = Tensor::from_slice(vec![1, 3], &[1.0f32, 2.0, 3.0]).unwrap();
        assert_eq!(Tensor::concat(&[&a, &c]), Err(TensorError::Mismatch));
    }

    proptest::proptest! {
        #[test]
        fn length_prefixed_parser_never_panics(data: Vec<u8>) {
            let _ = parse_length_prefixed(&Bytes::from(data));
        }
    }
}
