//! Classification postprocessing as a model (`backend: "classify_postprocess"`), so the last
//! step of an image ensemble (scores → probabilities → top classes with names) runs natively
//! instead of in a Python model or client code.
//!
//! Input: class scores, FP32 `[N, C]` (name `LOGITS`, or parameter `input_name`).
//! Outputs, by name (declare in config.pbtxt the ones you want; all are computed):
//! * `PROBABILITIES` FP32 `[N, C]`: softmax of the scores (or the scores, with `softmax: "false"`)
//! * `TOP_SCORES` FP32 `[N, k]`, `TOP_CLASSES` INT64 `[N, k]`, `TOP_LABELS` BYTES `[N, k]`:
//!   the k best classes, best first
//! * `CLASS` INT64 `[N, 1]`, `LABEL` BYTES `[N, 1]`: the argmax and its label
//!
//! Parameters: `top_k` (default 5, capped at C), `softmax` (true | false), `temperature`
//! (divides the scores before softmax), `labels` (a file in the model's folder, one label per
//! line; without it labels are the class indices).

use std::path::Path;
use std::sync::Arc;

use infera_core::backend::{
    Backend, BackendError, InlineRuns, IoSpec, LoadOptions, Session, Signature,
};
use infera_core::{DataType, Tensor};

pub struct ClassifyBackend;

/// The largest `top_k` a config may ask for (k is also capped at the number of classes).
pub const MAX_TOP_K: usize = 1 << 16;

pub const OUTPUTS: [&str; 6] = [
    "PROBABILITIES",
    "TOP_SCORES",
    "TOP_CLASSES",
    "TOP_LABELS",
    "CLASS",
    "LABEL",
];

#[derive(Debug, Clone)]
pub struct Postprocess {
    pub softmax: bool,
    pub temperature: f32,
    pub top_k: usize,
    pub labels: Option<Arc<Vec<String>>>,
}

/// What one row of scores turns into.
#[derive(Debug, Clone, PartialEq)]
pub struct Classified {
    pub probabilities: Vec<f32>,
    /// (class index, probability), best first, at most k.
    pub top: Vec<(usize, f32)>,
}

/// Numerically stable softmax (subtracts the max), in place.
pub fn softmax(v: &mut [f32]) {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return;
    }
    let mut total = 0.0;
    for x in v.iter_mut() {
        *x = (*x - max).exp();
        total += *x;
    }
    for x in v.iter_mut() {
        *x /= total;
    }
}

/// The k largest (index, value) pairs, largest first; ties keep the lower index first.
pub fn top_k(v: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    let k = k.min(v.len());
    let cmp = |a: &usize, b: &usize| v[*b].total_cmp(&v[*a]).then(a.cmp(b));
    if k < order.len() && k > 0 {
        order.select_nth_unstable_by(k - 1, cmp);
        order.truncate(k);
    }
    order.sort_by(cmp);
    order.truncate(k);
    order.into_iter().map(|i| (i, v[i])).collect()
}

impl Postprocess {
    pub fn from_options(o: &LoadOptions) -> Result<Postprocess, String> {
        let p = &o.parameters;
        let get = |k: &str| p.get(k).map(|v| v.trim().to_string());
        let softmax = match get("softmax").as_deref() {
            None | Some("true") | Some("1") | Some("yes") => true,
            Some("false") | Some("0") | Some("no") => false,
            Some(v) => return Err(format!("parameter 'softmax': '{v}' is not true or false")),
        };
        let temperature: f32 = match get("temperature") {
            None => 1.0,
            Some(v) => v
                .parse()
                .ok()
                .filter(|t: &f32| t.is_finite() && *t > 0.0)
                .ok_or_else(|| format!("parameter 'temperature': '{v}' is not a number > 0"))?,
        };
        let top_k: usize = match get("top_k") {
            None => 5,
            Some(v) => v
                .parse()
                .ok()
                .filter(|k| *k > 0 && *k <= MAX_TOP_K)
                .ok_or_else(|| {
                    format!("parameter 'top_k': '{v}' is not a whole number in 1..={MAX_TOP_K}")
                })?,
        };
        let labels = match get("labels") {
            None => None,
            Some(file) => {
                let bytes = o
                    .side_file(&file)
                    .map_err(|e| format!("parameter 'labels': {e}"))?;
                let text = String::from_utf8(bytes)
                    .map_err(|_| "parameter 'labels': the file is not UTF-8 text".to_string())?;
                Some(Arc::new(
                    text.lines()
                        .map(str::trim_end)
                        .filter(|l| !l.is_empty())
                        .map(String::from)
                        .collect(),
                ))
            }
        };
        Ok(Postprocess {
            softmax,
            temperature,
            top_k,
            labels,
        })
    }

    pub fn classify(&self, scores: &[f32]) -> Classified {
        let mut probabilities = scores.to_vec();
        if self.softmax {
            if self.temperature != 1.0 {
                probabilities
                    .iter_mut()
                    .for_each(|x| *x /= self.temperature);
            }
            softmax(&mut probabilities);
        }
        let top = top_k(&probabilities, self.top_k);
        Classified { probabilities, top }
    }

    pub fn label(&self, class: usize) -> String {
        self.labels
            .as_ref()
            .and_then(|l| l.get(class).cloned())
            .unwrap_or_else(|| class.to_string())
    }
}

impl Backend for ClassifyBackend {
    fn name(&self) -> &'static str {
        "classify_postprocess"
    }

    fn needs_model_file(&self) -> bool {
        false
    }

    fn inline_runs(&self) -> InlineRuns {
        InlineRuns::WhenSmall
    }

    fn load(&self, _: &Path, o: &LoadOptions) -> Result<Box<dyn Session>, BackendError> {
        let post = Postprocess::from_options(o).map_err(|reason| BackendError::Load {
            path: "classify_postprocess parameters".into(),
            reason,
        })?;
        let classes = post.labels.as_ref().map_or(-1, |l| l.len() as i64);
        let k = post.top_k as i64;
        let k = if classes > 0 { k.min(classes) } else { k };
        let io = |name: &str, dtype, width| IoSpec {
            name: name.into(),
            dtype,
            shape: vec![-1, width],
        };
        let signature = Signature {
            inputs: vec![io(
                o.parameters
                    .get("input_name")
                    .map_or("LOGITS", String::as_str),
                DataType::F32,
                classes,
            )],
            outputs: vec![
                io(OUTPUTS[0], DataType::F32, classes),
                io(OUTPUTS[1], DataType::F32, k),
                io(OUTPUTS[2], DataType::I64, k),
                io(OUTPUTS[3], DataType::Bytes, k),
                io(OUTPUTS[4], DataType::I64, 1),
                io(OUTPUTS[5], DataType::Bytes, 1),
            ],
        };
        Ok(Box::new(ClassifySession { post, signature }))
    }
}

struct ClassifySession {
    post: Postprocess,
    signature: Signature,
}

impl Session for ClassifySession {
    fn signature(&self) -> &Signature {
        &self.signature
    }

    /// A softmax and top-k over up to 64k scores takes tens of microseconds.
    fn fits_inline(&self, inputs: &[Tensor]) -> bool {
        inputs.iter().map(Tensor::element_count).sum::<usize>() <= 1 << 16
    }

    fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, BackendError> {
        let input = inputs
            .first()
            .ok_or_else(|| BackendError::Input("no scores input".into()))?;
        let scores = input.to_vec::<f32>().ok_or_else(|| {
            BackendError::Input(format!("scores must be FP32, not {}", input.dtype))
        })?;
        let (rows, classes) = match input.shape.as_slice() {
            [n, c] => (*n, *c),
            [c] => (1, *c),
            s => {
                return Err(BackendError::Input(format!(
                    "scores must have shape [batch, classes], not {s:?}"
                )));
            }
        };
        if classes == 0 {
            return Err(BackendError::Input("scores have no classes".into()));
        }
        let k = self.post.top_k.min(classes);
        let mut probs = Vec::with_capacity(rows * classes);
        let (mut top_scores, mut top_classes, mut top_labels) = (
            Vec::with_capacity(rows * k),
            Vec::with_capacity(rows * k),
            Vec::with_capacity(rows * k),
        );
        let (mut class, mut label) = (Vec::with_capacity(rows), Vec::with_capacity(rows));
        for row in scores.chunks_exact(classes) {
            let c = self.post.classify(row);
            probs.extend_from_slice(&c.probabilities);
            for &(i, p) in &c.top {
                top_scores.push(p);
                top_classes.push(i as i64);
                top_labels.push(self.post.label(i).into());
            }
            let best = c.top.first().map_or(0, |t| t.0);
            class.push(best as i64);
            label.push(self.post.label(best).into());
        }
        let run = |r: Result<Tensor, _>| {
            r.map_err(|e: infera_core::tensor::TensorError| BackendError::Run(e.to_string()))
        };
        Ok(vec![
            run(Tensor::from_slice(vec![rows, classes], &probs))?,
            run(Tensor::from_slice(vec![rows, k], &top_scores))?,
            run(Tensor::from_slice(vec![rows, k], &top_classes))?,
            run(Tensor::from_strings(vec![rows, k], top_labels))?,
            run(Tensor::from_slice(vec![rows, 1], &class))?,
            run(Tensor::from_strings(vec![rows, 1], label))?,
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn options(kv: &[(&str, &str)]) -> LoadOptions {
        LoadOptions {
            parameters: kv
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            ..Default::default()
        }
    }

    #[test]
    fn softmax_matches_hand_computed_values() {
        let mut v = [1.0f32, 2.0, 3.0];
        softmax(&mut v);
        // e^-2, e^-1, 1 over their sum 1.503214724
        let want = [0.090_030_57, 0.244_728_48, 0.665_240_94];
        for (a, b) in v.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{v:?}");
        }
        let mut big = [1000.0f32, 1000.0];
        softmax(&mut big);
        assert_eq!(big, [0.5, 0.5], "no overflow on large logits");
    }

    #[test]
    fn top_k_is_sorted_and_stable_on_ties() {
        let v = [0.1, 0.4, 0.4, 0.05, 0.05];
        assert_eq!(top_k(&v, 3), vec![(1, 0.4), (2, 0.4), (0, 0.1)]);
        assert_eq!(top_k(&v, 10).len(), 5);
        assert_eq!(top_k(&v, 1), vec![(1, 0.4)]);
    }

    #[test]
    fn session_computes_every_output() {
        let dir = std::env::temp_dir().join(format!("infera-post-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("labels.txt"), "cat\ndog\nbird\n").unwrap();
        let mut o = options(&[("top_k", "2"), ("labels", "labels.txt")]);
        o.model_dir = dir.clone();
        let mut s = ClassifyBackend.load(Path::new(""), &o).unwrap();
        assert_eq!(s.signature().outputs[1].shape, vec![-1, 2]);
        let x = Tensor::from_slice(vec![2, 3], &[0.0f32, 5.0, 1.0, 3.0, 0.0, 0.0]).unwrap();
        let out = s.run(&[x]).unwrap();
        let p = out[0].to_vec::<f32>().unwrap();
        assert!((p[..3].iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(out[2].to_vec::<i64>().unwrap(), vec![1, 2, 0, 1]);
        assert_eq!(out[4].to_vec::<i64>().unwrap(), vec![1, 0]);
        let infera_core::TensorData::Strings(labels) = &out[5].data else {
            panic!("LABEL is not BYTES")
        };
        let labels: Vec<&[u8]> = labels.iter().map(|b| b.as_ref()).collect();
        assert_eq!(labels, [b"dog".as_slice(), b"cat"]);
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn bad_parameters_and_inputs_are_refused() {
        assert!(
            ClassifyBackend
                .load(Path::new(""), &options(&[("top_k", "0")]))
                .is_err()
        );
        assert!(
            ClassifyBackend
                .load(Path::new(""), &options(&[("softmax", "maybe")]))
                .is_err()
        );
        assert!(
            ClassifyBackend
                .load(Path::new(""), &options(&[("top_k", "100000000")]))
                .is_err()
        );
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m");
        std::fs::create_dir_all(&model).unwrap();
        std::fs::write(dir.path().join("secret.txt"), "root\n").unwrap();
        let mut o = options(&[("labels", "nope.txt")]);
        o.model_dir = model.clone();
        let e = ClassifyBackend.load(Path::new(""), &o).err().unwrap();
        assert!(e.to_string().contains("nope.txt"), "{e}");
        for outside in ["../secret.txt", "../missing.txt", "/etc/passwd"] {
            let mut o = options(&[("labels", outside)]);
            o.model_dir = model.clone();
            let e = ClassifyBackend.load(Path::new(""), &o).err().unwrap();
            assert!(e.to_string().contains("inside the model's folder"), "{e}");
        }
        let mut s = ClassifyBackend.load(Path::new(""), &options(&[])).unwrap();
        let ints = Tensor::from_slice(vec![1, 2], &[1i32, 2]).unwrap();
        assert!(matches!(s.run(&[ints]), Err(BackendError::Input(_))));
    }
}
