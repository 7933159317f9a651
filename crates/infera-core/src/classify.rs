//! One photo in, class probabilities with labels out: the shared path of the app API
//! (`/predict`), batch prediction and batch jobs, on any model that takes one encoded image
//! (BYTES) and returns class scores (e.g. the `fashion_mnist_image` ensemble).

use std::sync::Arc;

use bytes::Bytes;

use crate::repository::{IoDesc, Model};
use crate::request::InferRequest;
use crate::{DataType, InferenceServer, ServeError, ServeResult, Tensor};

/// Class probabilities of one image, with a label per class.
#[derive(Debug, Clone)]
pub struct Prediction {
    pub probabilities: Vec<f32>,
    pub labels: Arc<Vec<String>>,
}

impl Prediction {
    /// The most likely class and its probability.
    pub fn best(&self) -> (usize, f32) {
        self.probabilities
            .iter()
            .copied()
            .enumerate()
            .fold((0, f32::MIN), |b, (i, p)| if p > b.1 { (i, p) } else { b })
    }

    pub fn best_label(&self) -> &str {
        self.labels.get(self.best().0).map_or("", String::as_str)
    }
}

/// The image input and score output of a model that classifies photos, or why it doesn't.
pub fn image_classifier(m: &Model) -> Result<(&IoDesc, &IoDesc), String> {
    let [input] = m.inputs.as_slice() else {
        return Err(format!("takes {} inputs", m.inputs.len()));
    };
    if input.dtype != DataType::Bytes {
        return Err(format!("takes {} tensors, not encoded images", input.dtype));
    }
    let output = m.outputs.first().ok_or("has no outputs")?;
    let dims = output.reshape.as_ref().unwrap_or(&output.dims);
    if output.dtype != DataType::F32 || dims.iter().filter(|&&d| d != 1).count() > 1 {
        return Err(format!(
            "returns {} {:?} as its first output, not a vector of FP32 class scores",
            output.dtype, dims
        ));
    }
    Ok((input, output))
}

/// Scores that are not already probabilities (logits) go through a softmax.
pub fn softmax_if_needed(v: &mut [f32]) {
    let sum: f32 = v.iter().sum();
    let is_probs = v.iter().all(|&x| (0.0..=1.0).contains(&x)) && (sum - 1.0).abs() < 1e-3;
    if !is_probs {
        let max = v.iter().copied().fold(f32::MIN, f32::max);
        let exp: Vec<f32> = v.iter().map(|&x| (x - max).exp()).collect();
        let total: f32 = exp.iter().sum();
        for (o, e) in v.iter_mut().zip(exp) {
            *o = e / total;
        }
    }
}

/// The model's class labels (from its output's label file), or the class indices.
pub fn labels_of(output: &IoDesc, classes: usize) -> Arc<Vec<String>> {
    match &output.labels {
        Some(l) if l.len() >= classes => l.clone(),
        l => Arc::new(
            (0..classes)
                .map(|i| {
                    l.as_ref()
                        .and_then(|l| l.get(i).cloned())
                        .unwrap_or_else(|| i.to_string())
                })
                .collect(),
        ),
    }
}

impl InferenceServer {
    /// Classifies one encoded image. `priority` 0 is the model's default level.
    pub async fn classify_image(
        &self,
        model: &str,
        version: Option<i64>,
        image: Bytes,
        priority: usize,
    ) -> ServeResult<Prediction> {
        let mut out = self
            .classify_images(model, version, vec![image], priority)
            .await?;
        out.pop()
            .ok_or_else(|| ServeError::internal("no prediction for the image"))
    }

    /// Classifies several encoded images in one request (the model's batch dimension), so
    /// each step of an ensemble runs once for all of them. One unusable image fails the
    /// whole call; callers that need per-image errors retry those one by one.
    pub async fn classify_images(
        &self,
        model: &str,
        version: Option<i64>,
        images: Vec<Bytes>,
        priority: usize,
    ) -> ServeResult<Vec<Prediction>> {
        if images.iter().any(Bytes::is_empty) {
            return Err(ServeError::invalid(
                "the image is empty: send the file's bytes",
            ));
        }
        let n = images.len();
        let m = self.model(model)?;
        let (input, output) = image_classifier(&m).map_err(|why| {
            ServeError::invalid(format!(
                "model '{model}' {why}; classifying photos needs one image (BYTES) input and class scores out, like the fashion_mnist_image ensemble"
            ))
        })?;
        let max = m.max_batch_size();
        if n == 0 {
            return Ok(Vec::new());
        }
        if n > 1 && n > max {
            return Err(ServeError::invalid(format!(
                "{n} images in one request, but model '{model}' takes at most {max}"
            )));
        }
        let shape = if max > 0 { vec![n, 1] } else { vec![1] };
        let tensor =
            Tensor::from_strings(shape, images).map_err(|e| ServeError::internal(e.to_string()))?;
        let response = self
            .infer(InferRequest::single(
                model,
                version,
                &input.name,
                tensor,
                &output.name,
                priority,
            ))
            .await?;
        let scores = response
            .outputs
            .first()
            .and_then(|o| o.tensor.to_vec::<f32>())
            .ok_or_else(|| {
                ServeError::invalid(format!("model '{model}' does not return FP32 class scores"))
            })?;
        if scores.is_empty() || scores.len() % n != 0 {
            return Err(ServeError::internal(format!(
                "model '{model}' returned {} scores for {n} images",
                scores.len()
            )));
        }
        let classes = scores.len() / n;
        let labels = labels_of(output, classes);
        Ok(scores
            .chunks(classes)
            .map(|row| {
                let mut probabilities = row.to_vec();
                softmax_if_needed(&mut probabilities);
                let p = Prediction {
                    probabilities,
                    labels: labels.clone(),
                };
                let (class, confidence) = p.best();
                self.metrics
                    .record_prediction(model, class, p.best_label(), confidence);
                p
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logits_become_probabilities_and_probabilities_stay() {
        let mut v = [1.0f32, 2.0, 3.0];
        softmax_if_needed(&mut v);
        assert!((v[2] - 0.665_240_9).abs() < 1e-6);
        let mut p = [0.25f32, 0.75];
        softmax_if_needed(&mut p);
        assert_eq!(p, [0.25, 0.75]);
    }

    #[test]
    fn best_picks_the_first_maximum() {
        let p = Prediction {
            probabilities: vec![0.1, 0.45, 0.45],
            labels: Arc::new(vec!["a".into(), "b".into(), "c".into()]),
        };
        assert_eq!(p.best(), (1, 0.45));
        assert_eq!(p.best_label(), "b");
    }
}
