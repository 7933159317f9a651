//! Shadow traffic's comparison: does the candidate pick the same top-1 class as the model
//! that answered the client?

use std::sync::atomic::{AtomicU64, Ordering};

use crate::datatype::DataType;
use crate::request::OutputTensor;
use crate::tensor::{Tensor, TensorData};

/// What happened to the requests mirrored through one route.
#[derive(Debug, Default)]
pub struct ShadowCounters {
    pub agreed: AtomicU64,
    pub disagreed: AtomicU64,
    /// The shadow model answered with an error.
    pub failed: AtomicU64,
    /// Not mirrored: the shadow queue was full.
    pub dropped: AtomicU64,
}

impl ShadowCounters {
    pub fn json(&self) -> serde_json::Value {
        let agreed = self.agreed.load(Ordering::Relaxed);
        let disagreed = self.disagreed.load(Ordering::Relaxed);
        let compared = agreed + disagreed;
        serde_json::json!({
            "compared": compared,
            "agreed": agreed,
            "disagreed": disagreed,
            "failed": self.failed.load(Ordering::Relaxed),
            "dropped": self.dropped.load(Ordering::Relaxed),
            "agreement": if compared == 0 { serde_json::Value::Null } else { (agreed as f64 / compared as f64).into() },
        })
    }
}

/// Top-1 agreement of two answers: the serving model's first output and the shadow's output
/// of the same name (or its first) have the same arg-max in every row (the last dimension
/// holds the classes). Classification strings (`score:index[:label]`) compare by index.
pub fn agree(serving: &[OutputTensor], shadow: &[OutputTensor]) -> bool {
    let Some(a) = serving.first() else {
        return false;
    };
    let Some(b) = shadow
        .iter()
        .find(|o| o.name == a.name)
        .or_else(|| shadow.first())
    else {
        return false;
    };
    match (top1(&a.tensor), top1(&b.tensor)) {
        (Some(x), Some(y)) => x == y,
        _ => a.tensor == b.tensor,
    }
}

/// The arg-max of every row, or `None` for a type without an order.
fn top1(t: &Tensor) -> Option<Vec<usize>> {
    if let TensorData::Strings(items) = &t.data {
        return Some(
            items
                .iter()
                .map(|s| {
                    let s = String::from_utf8_lossy(s);
                    let mut parts = s.split(':');
                    parts.next();
                    parts
                        .next()
                        .and_then(|i| i.parse().ok())
                        .unwrap_or(usize::MAX)
                })
                .collect(),
        );
    }
    let values: Vec<f64> = match t.dtype {
        DataType::F32 => t.to_vec::<f32>()?.into_iter().map(f64::from).collect(),
        DataType::F64 => t.to_vec::<f64>()?,
        DataType::I32 => t.to_vec::<i32>()?.into_iter().map(f64::from).collect(),
        DataType::I64 => t.to_vec::<i64>()?.into_iter().map(|v| v as f64).collect(),
        DataType::U8 => t.to_vec::<u8>()?.into_iter().map(f64::from).collect(),
        _ => return None,
    };
    let classes = t.shape.last().copied().unwrap_or(1).max(1);
    Some(
        values
            .chunks(classes)
            .map(|row| {
                row.iter()
                    .enumerate()
                    .fold(
                        (0, f64::NEG_INFINITY),
                        |b, (i, &v)| if v > b.1 { (i, v) } else { b },
                    )
                    .0
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn out(name: &str, shape: Vec<usize>, v: &[f32]) -> Vec<OutputTensor> {
        vec![OutputTensor {
            name: name.into(),
            tensor: Tensor::from_slice(shape, v).unwrap(),
        }]
    }

    #[test]
    fn compares_top1_per_row() {
        let a = out("y", vec![2, 3], &[0.1, 0.7, 0.2, 0.5, 0.4, 0.1]);
        let same = out("y", vec![2, 3], &[0.0, 9.0, 1.0, 3.0, 2.0, 1.0]);
        let other = out("y", vec![2, 3], &[0.0, 9.0, 1.0, 1.0, 2.0, 1.0]);
        assert!(agree(&a, &same));
        assert!(!agree(&a, &other));
        assert!(!agree(&a, &[]));
        let label = |s: &str| {
            vec![OutputTensor {
                name: "y".into(),
                tensor: Tensor::from_strings(vec![1], vec![Bytes::from(s.to_string())]).unwrap(),
            }]
        };
        assert!(agree(&label("0.9:3:Dress"), &label("0.6:3:Dress")));
        assert!(!agree(&label("0.9:3:Dress"), &label("0.6:4:Coat")));
    }
}
