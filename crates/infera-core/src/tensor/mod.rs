//! Tensors as the protocol carries them: little-endian row-major bytes, or length-prefixed
//! byte strings for BYTES. Keeping the wire layout means binary requests are never re-encoded.

mod json;

pub use json::JsonData;

use bytes::{BufMut, Bytes, BytesMut};
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
    #[error("more than the {expected} values the shape holds")]
    TooManyValues { expected: usize },
    #[error("{0}")]
    Json(String),
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
                let strings = parse_length_prefixed_at_most(&raw, n)?;
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

/// Splits a BYTES wire buffer (4-byte little-endian length, then the bytes) into elements.
pub fn parse_length_prefixed(raw: &Bytes) -> Result<Vec<Bytes>, TensorError> {
    parse_length_prefixed_at_most(raw, usize::MAX)
}

/// As [`parse_length_prefixed`], failing as soon as there are more than `max` elements, so
/// a buffer of empty strings cannot make a list much larger than the shape it claims.
pub fn parse_length_prefixed_at_most(raw: &Bytes, max: usize) -> Result<Vec<Bytes>, TensorError> {
    let mut out = Vec::with_capacity(max.min(raw.len() / 4));
    let mut pos = 0usize;
    while pos < raw.len() {
        if out.len() == max {
            return Err(TensorError::TooManyValues { expected: max });
        }
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
    fn bytes_wire_format() {
        let t = Tensor::from_json(DataType::Bytes, vec![2], &json!(["ab", ""])).unwrap();
        let raw = t.to_raw();
        assert_eq!(&raw[..], &[2, 0, 0, 0, b'a', b'b', 0, 0, 0, 0]);
        assert_eq!(Tensor::from_raw(DataType::Bytes, vec![2], raw).unwrap(), t);
        let three = Bytes::from_static(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert!(matches!(
            Tensor::from_raw(DataType::Bytes, vec![2], three),
            Err(TensorError::TooManyValues { expected: 2 })
        ));
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
