//! Classification metrics the business asks for: accuracy, per-class precision / recall /
//! F1, macro F1 and the confusion matrix (rows = true class, columns = predicted).

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassMetrics {
    pub label: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Examples of this class.
    pub support: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metrics {
    pub examples: u64,
    pub accuracy: f64,
    pub macro_precision: f64,
    pub macro_recall: f64,
    pub macro_f1: f64,
    pub per_class: Vec<ClassMetrics>,
    pub confusion: Vec<Vec<u64>>,
}

fn ratio(num: u64, den: u64) -> f64 {
    // scikit-learn's zero_division=0: an undefined precision or recall counts as 0.
    if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}

impl Metrics {
    /// From (true, predicted) class pairs; `labels` names the classes.
    pub fn compute(truth: &[usize], predicted: &[usize], labels: &[&str]) -> Metrics {
        let k = labels.len();
        let mut confusion = vec![vec![0u64; k]; k];
        for (&t, &p) in truth.iter().zip(predicted) {
            if t < k && p < k {
                confusion[t][p] += 1;
            }
        }
        Metrics::from_confusion(confusion, labels)
    }

    pub fn from_confusion(confusion: Vec<Vec<u64>>, labels: &[&str]) -> Metrics {
        let k = confusion.len();
        let examples: u64 = confusion.iter().flatten().sum();
        let correct: u64 = (0..k).map(|i| confusion[i][i]).sum();
        let per_class: Vec<ClassMetrics> = (0..k)
            .map(|c| {
                let tp = confusion[c][c];
                let predicted: u64 = (0..k).map(|r| confusion[r][c]).sum();
                let support: u64 = confusion[c].iter().sum();
                let precision = ratio(tp, predicted);
                let recall = ratio(tp, support);
                let f1 = if precision + recall == 0.0 {
                    0.0
                } else {
                    2.0 * precision * recall / (precision + recall)
                };
                ClassMetrics {
                    label: labels
                        .get(c)
                        .map_or_else(|| c.to_string(), |l| l.to_string()),
                    precision,
                    recall,
                    f1,
                    support,
                }
            })
            .collect();
        let mean = |f: fn(&ClassMetrics) -> f64| {
            if k == 0 {
                0.0
            } else {
                per_class.iter().map(f).sum::<f64>() / k as f64
            }
        };
        Metrics {
            examples,
            accuracy: ratio(correct, examples),
            macro_precision: mean(|c| c.precision),
            macro_recall: mean(|c| c.recall),
            macro_f1: mean(|c| c.f1),
            per_class,
            confusion,
        }
    }

    /// A table for the terminal.
    pub fn table(&self) -> String {
        let width = self
            .per_class
            .iter()
            .map(|c| c.label.len())
            .max()
            .unwrap_or(5)
            .max(5);
        let mut s = format!("{:<width$}  precision  recall     f1  support\n", "class");
        for c in &self.per_class {
            s += &format!(
                "{:<width$}  {:>9.4}  {:>6.4}  {:>5.4}  {:>7}\n",
                c.label, c.precision, c.recall, c.f1, c.support
            );
        }
        s += &format!(
            "{:<width$}  {:>9.4}  {:>6.4}  {:>5.4}  {:>7}\n",
            "macro avg", self.macro_precision, self.macro_recall, self.macro_f1, self.examples
        );
        s += &format!(
            "accuracy {:.4} on {} examples\n",
            self.accuracy, self.examples
        );
        s
    }
}

/// The index of the largest score (the first one on ties; NaN never wins).
pub fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 { (i, v) } else { best }
        })
        .0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn matches_hand_computed_values() {
        // Truth and predictions over 3 classes (worked out by hand):
        //   confusion = [[2, 1, 0], [0, 1, 1], [1, 0, 2]]
        let truth = [0, 0, 0, 1, 1, 2, 2, 2];
        let pred = [0, 0, 1, 1, 2, 2, 2, 0];
        let m = Metrics::compute(&truth, &pred, &["a", "b", "c"]);
        assert_eq!(
            m.confusion,
            vec![vec![2, 1, 0], vec![0, 1, 1], vec![1, 0, 2]]
        );
        assert!(close(m.accuracy, 5.0 / 8.0));
        // a: precision 2/3, recall 2/3; b: 1/2, 1/2; c: 2/3, 2/3.
        let p = [2.0 / 3.0, 0.5, 2.0 / 3.0];
        for (c, &want) in m.per_class.iter().zip(&p) {
            assert!(
                close(c.precision, want) && close(c.recall, want) && close(c.f1, want),
                "{c:?}"
            );
        }
        assert_eq!(m.per_class[2].support, 3);
        assert!(close(m.macro_f1, (2.0 / 3.0 + 0.5 + 2.0 / 3.0) / 3.0));
        assert!(m.table().contains("accuracy 0.6250 on 8 examples"));
    }

    #[test]
    fn never_predicted_and_absent_classes_count_as_zero() {
        // Class 1 is never predicted (precision 0/0), class 2 never occurs (recall 0/0).
        let m = Metrics::compute(&[0, 1, 1], &[0, 0, 0], &["x", "y", "z"]);
        assert!(close(m.per_class[0].precision, 1.0 / 3.0) && close(m.per_class[0].recall, 1.0));
        assert!(close(m.per_class[0].f1, 0.5));
        assert_eq!((m.per_class[1].precision, m.per_class[1].f1), (0.0, 0.0));
        assert_eq!((m.per_class[2].recall, m.per_class[2].support), (0.0, 0));
        assert!(close(m.macro_f1, 0.5 / 3.0));
        let empty = Metrics::compute(&[], &[], &["x"]);
        assert_eq!((empty.accuracy, empty.examples), (0.0, 0));
    }
}
