//! How rows are written: CSV (`filename, predicted_class, predicted_label, confidence,
//! prob_<label>...`, one column per class) or JSON lines. Errors go to a CSV of their own.

use infera_core::classify::Prediction;
use serde_json::{Map, Value, json};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Csv,
    Jsonl,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Format, String> {
        match s.to_ascii_lowercase().as_str() {
            "csv" => Ok(Format::Csv),
            "jsonl" | "ndjson" => Ok(Format::Jsonl),
            other => Err(format!("unknown format '{other}': use csv or jsonl")),
        }
    }
}

/// A cell built from a file name or URL, made inert for spreadsheets: one starting with
/// `=`, `+`, `-`, `@`, a tab or a carriage return would run as a formula (CSV injection),
/// so it gets a leading `'` (OWASP's advice).
pub fn inert_cell(text: &str) -> String {
    match text.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{text}"),
        _ => text.to_string(),
    }
}

fn csv_record(fields: &[String]) -> Vec<u8> {
    let mut w = csv::WriterBuilder::new().from_writer(Vec::new());
    // Writing to a Vec cannot fail; an empty line would still keep the file parseable.
    let _ = w.write_record(fields);
    w.into_inner().unwrap_or_default()
}

impl Format {
    pub fn header(self, labels: &[String]) -> Vec<u8> {
        match self {
            Format::Csv => {
                let mut cols: Vec<String> = [
                    "filename",
                    "predicted_class",
                    "predicted_label",
                    "confidence",
                ]
                .map(String::from)
                .into();
                cols.extend(labels.iter().map(|l| format!("prob_{l}")));
                csv_record(&cols)
            }
            Format::Jsonl => Vec::new(),
        }
    }

    pub fn row(self, filename: &str, p: &Prediction) -> Vec<u8> {
        let (idx, conf) = p.best();
        match self {
            Format::Csv => {
                let mut f = vec![
                    inert_cell(filename),
                    idx.to_string(),
                    p.best_label().to_string(),
                    conf.to_string(),
                ];
                f.extend(p.probabilities.iter().map(f32::to_string));
                csv_record(&f)
            }
            Format::Jsonl => {
                let mut probs = Map::new();
                for (l, v) in p.labels.iter().zip(&p.probabilities) {
                    probs.insert(l.clone(), json!(v));
                }
                let v: Value = json!({
                    "filename": filename,
                    "predicted_class": idx,
                    "predicted_label": p.best_label(),
                    "confidence": conf,
                    "probabilities": probs,
                });
                let mut line = v.to_string().into_bytes();
                line.push(b'\n');
                line
            }
        }
    }
}

pub fn errors_header() -> Vec<u8> {
    csv_record(&["filename".into(), "error".into()])
}

pub fn error_row(filename: &str, reason: &str) -> Vec<u8> {
    // The reason can quote the name (or a URL's answer), so it is made inert too.
    csv_record(&[inert_cell(filename), inert_cell(reason)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn csv_rows_quote_what_needs_quoting() {
        let p = Prediction {
            probabilities: vec![0.25, 0.75],
            labels: Arc::new(vec!["T-shirt/top".into(), "Bag".into()]),
        };
        assert_eq!(
            Format::Csv.header(&p.labels),
            b"filename,predicted_class,predicted_label,confidence,prob_T-shirt/top,prob_Bag\n"
        );
        assert_eq!(
            Format::Csv.row("a, b.png", &p),
            b"\"a, b.png\",1,Bag,0.75,0.25,0.75\n"
        );
        let line = Format::Jsonl.row("x.png", &p);
        let v: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["predicted_label"], "Bag");
        assert_eq!(
            error_row("bad.png", "cannot decode"),
            b"bad.png,cannot decode\n"
        );
    }

    #[test]
    fn cells_from_names_cannot_start_a_formula() {
        let p = Prediction {
            probabilities: vec![1.0],
            labels: Arc::new(vec!["x".into()]),
        };
        for evil in [
            "=HYPERLINK(\"http://x\")",
            "+1",
            "-1+2",
            "@SUM(A1)",
            "\tx",
            "\rx",
        ] {
            let row = Format::Csv.row(evil, &p);
            let mut r = csv::ReaderBuilder::new()
                .has_headers(false)
                .from_reader(row.as_slice());
            let rec = r.records().next().unwrap().unwrap();
            assert!(rec[0].starts_with('\''), "{evil:?} -> {:?}", &rec[0]);
            let e = error_row(evil, evil);
            let mut r = csv::ReaderBuilder::new()
                .has_headers(false)
                .from_reader(e.as_slice());
            let rec = r.records().next().unwrap().unwrap();
            assert!(
                rec[0].starts_with('\'') && rec[1].starts_with('\''),
                "{rec:?}"
            );
        }
        assert_eq!(inert_cell("photo.png"), "photo.png");
    }
}
