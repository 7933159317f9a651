//! Triton's response cache: a model with `response_cache { enable: true }` in its config,
//! on a server started with `--cache-config local,size=BYTES`, answers a request it has
//! answered before from memory. Entries are keyed by a SHA-256 of the model, its version, the
//! inputs (name, type, shape, bytes) and the requested outputs, and evicted least recently
//! used once their outputs pass the size. Only successful answers are stored.

use std::sync::Arc;

use parking_lot::Mutex;
use ring::digest;

use crate::request::{InferRequest, OutputTensor};

pub type CacheKey = [u8; 32];

pub struct ResponseCache {
    capacity: usize,
    inner: Mutex<Inner>,
}

struct Inner {
    entries: lru::LruCache<CacheKey, Arc<Vec<OutputTensor>>>,
    bytes: usize,
}

fn size_of(outputs: &[OutputTensor]) -> usize {
    outputs
        .iter()
        .map(|o| o.name.len() + o.tensor.byte_len() + 8 * o.tensor.shape.len() + 64)
        .sum()
}

impl ResponseCache {
    /// A cache holding at most `capacity` bytes of outputs.
    pub fn new(capacity: usize) -> ResponseCache {
        ResponseCache {
            capacity,
            inner: Mutex::new(Inner {
                entries: lru::LruCache::unbounded(),
                bytes: 0,
            }),
        }
    }

    /// Parses Triton's `--cache-config local,size=BYTES`.
    pub fn from_config(spec: &str) -> Result<ResponseCache, String> {
        let mut parts = spec.split(',');
        let kind = parts.next().unwrap_or_default().trim();
        if kind != "local" {
            return Err(format!(
                "'{spec}': the cache kind must be 'local' (Triton's in-memory cache), e.g. local,size=104857600"
            ));
        }
        let mut size = None;
        for p in parts {
            match p.trim().split_once('=') {
                Some(("size", v)) => {
                    size = Some(v.trim().parse::<usize>().map_err(|_| {
                        format!("'{spec}': size must be a number of bytes, e.g. size=104857600")
                    })?)
                }
                _ => {
                    return Err(format!(
                        "'{spec}': unknown setting '{p}'; the local cache takes size=BYTES"
                    ));
                }
            }
        }
        match size {
            Some(s) if s > 0 => Ok(ResponseCache::new(s)),
            _ => Err(format!(
                "'{spec}': give the cache a size, e.g. local,size=104857600"
            )),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes of outputs held now.
    pub fn used(&self) -> usize {
        self.inner.lock().bytes
    }

    pub fn get(&self, key: &CacheKey) -> Option<Arc<Vec<OutputTensor>>> {
        self.inner.lock().entries.get(key).cloned()
    }

    /// Stores an answer, evicting the least recently used ones to make room. An answer
    /// larger than the whole cache is not stored.
    pub fn insert(&self, key: CacheKey, outputs: Vec<OutputTensor>) {
        let size = size_of(&outputs);
        if size > self.capacity {
            return;
        }
        // A request's outputs may be views into its whole batch's buffers: stored as they
        // are, they would keep every batch alive and the size above would be a lie.
        let outputs: Vec<OutputTensor> = outputs
            .into_iter()
            .map(|o| OutputTensor {
                name: o.name,
                tensor: crate::Tensor {
                    data: match o.tensor.data {
                        crate::TensorData::Raw(b) => {
                            crate::TensorData::Raw(bytes::Bytes::copy_from_slice(&b))
                        }
                        crate::TensorData::Strings(v) => crate::TensorData::Strings(
                            v.iter().map(|e| bytes::Bytes::copy_from_slice(e)).collect(),
                        ),
                    },
                    ..o.tensor
                },
            })
            .collect();
        let mut inner = self.inner.lock();
        if let Some(old) = inner.entries.put(key, Arc::new(outputs)) {
            inner.bytes -= size_of(&old);
        }
        inner.bytes += size;
        while inner.bytes > self.capacity {
            match inner.entries.pop_lru() {
                Some((_, old)) => inner.bytes -= size_of(&old),
                None => break,
            }
        }
    }

    pub fn len(&self) -> usize {
        self.inner.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The key of a request to one model version. Inputs are taken in name order, so the same
/// tensors sent in another order hit the same entry; each field is length-prefixed, so no
/// two different requests share a byte stream.
pub fn key(model: &str, version: i64, req: &InferRequest) -> CacheKey {
    let mut h = digest::Context::new(&digest::SHA256);
    let mut field = |b: &[u8]| {
        h.update(&(b.len() as u64).to_le_bytes());
        h.update(b);
    };
    field(model.as_bytes());
    field(&version.to_le_bytes());
    let mut inputs: Vec<_> = req.inputs.iter().collect();
    inputs.sort_by(|a, b| a.name.cmp(&b.name));
    for i in inputs {
        field(i.name.as_bytes());
        field(i.tensor.dtype.to_string().as_bytes());
        for d in &i.tensor.shape {
            field(&(*d as u64).to_le_bytes());
        }
        match &i.tensor.data {
            crate::TensorData::Raw(b) => field(b),
            crate::TensorData::Strings(s) => {
                field(&(s.len() as u64).to_le_bytes());
                for e in s {
                    field(e);
                }
            }
        }
    }
    for o in &req.outputs {
        field(o.name.as_bytes());
        field(&(o.classification.unwrap_or(0) as u64).to_le_bytes());
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(h.finish().as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Tensor;
    use crate::request::{InputTensor, RequestedOutput};

    fn request(values: &[f32], outputs: &[&str]) -> InferRequest {
        InferRequest {
            model: "m".into(),
            version: None,
            id: String::new(),
            inputs: vec![InputTensor {
                name: "x".into(),
                tensor: Tensor::from_slice(vec![1, values.len()], values).unwrap(),
            }],
            outputs: outputs
                .iter()
                .map(|n| RequestedOutput {
                    name: n.to_string(),
                    classification: None,
                })
                .collect(),
            priority: 0,
            timeout: None,
            routing_key: None,
        }
    }

    fn answer(n: usize) -> Vec<OutputTensor> {
        vec![OutputTensor {
            name: "y".into(),
            tensor: Tensor::from_slice(vec![1, n], &vec![0.5f32; n]).unwrap(),
        }]
    }

    #[test]
    fn keys_differ_by_model_version_inputs_and_outputs() {
        let k = key("m", 1, &request(&[1.0, 2.0], &[]));
        assert_eq!(k, key("m", 1, &request(&[1.0, 2.0], &[])));
        assert_ne!(k, key("n", 1, &request(&[1.0, 2.0], &[])));
        assert_ne!(k, key("m", 2, &request(&[1.0, 2.0], &[])));
        assert_ne!(k, key("m", 1, &request(&[1.0, 2.5], &[])));
        assert_ne!(k, key("m", 1, &request(&[1.0, 2.0], &["y"])));
    }

    #[test]
    fn the_least_recently_used_answers_go_first_when_full() {
        let one = size_of(&answer(100));
        let c = ResponseCache::new(one * 2);
        c.insert([1; 32], answer(100));
        c.insert([2; 32], answer(100));
        assert!(c.get(&[1; 32]).is_some()); // 1 is now the most recently used
        c.insert([3; 32], answer(100));
        assert!(c.get(&[2; 32]).is_none());
        assert!(c.get(&[1; 32]).is_some() && c.get(&[3; 32]).is_some());
        assert_eq!(c.used(), one * 2);
        // Larger than the whole cache: not stored, nothing evicted for it.
        c.insert([4; 32], answer(1000));
        assert!(c.get(&[4; 32]).is_none() && c.len() == 2);
    }

    #[test]
    fn config_follows_tritons_syntax() {
        assert_eq!(
            ResponseCache::from_config("local,size=1048576")
                .unwrap()
                .capacity(),
            1 << 20
        );
        for bad in [
            "redis,size=10",
            "local",
            "local,size=big",
            "local,size=0",
            "local,ttl=5",
        ] {
            assert!(ResponseCache::from_config(bad).is_err(), "{bad}");
        }
    }
}
