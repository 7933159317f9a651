//! Reading a finished job's files back as JSON pages, in the same shape for CSV and JSONL.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use infera_batch::Format;
use infera_seal::{Keyring, MAGIC, SealReader};
use serde_json::{Map, Value, json};

/// A job file's plaintext as a reader: decrypted (and authenticated record by record) when
/// the server encrypts at rest. A `.partial` file may stop after any whole record; a
/// finished one must carry its end mark.
pub fn open(path: &Path, seal: Option<&Keyring>) -> Result<Box<dyn Read + Send>, String> {
    let mut file = BufReader::new(
        std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?,
    );
    let sealed = file
        .fill_buf()
        .map(|b| b.starts_with(MAGIC))
        .unwrap_or(false);
    match (sealed, seal) {
        (false, _) => Ok(Box::new(file)),
        (true, None) => Err(format!(
            "{} is encrypted: start the server with the --encryption-key-file it was written with",
            path.display()
        )),
        (true, Some(k)) => {
            let finished = path.extension().is_none_or(|e| e != "partial");
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            Ok(Box::new(
                SealReader::new(file, k, &name, finished).map_err(|e| e.to_string())?,
            ))
        }
    }
}

/// Rows `offset..offset+limit` of a results file.
pub fn results_page(
    path: &Path,
    format: Format,
    offset: usize,
    limit: usize,
    seal: Option<&Keyring>,
) -> Result<Vec<Value>, String> {
    let file = open(path, seal).map_err(|e| format!("cannot read the results: {e}"))?;
    match format {
        Format::Jsonl => BufReader::new(file)
            .lines()
            .skip(offset)
            .take(limit)
            .map(|l| {
                let l = l.map_err(|e| format!("cannot read the results: {e}"))?;
                serde_json::from_str(&l).map_err(|e| format!("damaged results line: {e}"))
            })
            .collect(),
        Format::Csv => {
            let mut r = csv::Reader::from_reader(file);
            let header = r
                .headers()
                .map_err(|e| format!("cannot read the results: {e}"))?
                .clone();
            r.records()
                .skip(offset)
                .take(limit)
                .map(|rec| {
                    let rec = rec.map_err(|e| format!("damaged results row: {e}"))?;
                    Ok(csv_row(&header, &rec))
                })
                .collect()
        }
    }
}

fn csv_row(header: &csv::StringRecord, rec: &csv::StringRecord) -> Value {
    let mut row = Map::new();
    let mut probs = Map::new();
    for (col, val) in header.iter().zip(rec.iter()) {
        let number = || val.parse::<f64>().map_or(json!(val), |v| json!(v));
        if let Some(label) = col.strip_prefix("prob_") {
            probs.insert(label.to_string(), number());
        } else if col == "predicted_class" {
            let class = val.parse::<i64>().map_or(json!(val), |v| json!(v));
            row.insert(col.to_string(), class);
        } else if col == "confidence" {
            row.insert(col.to_string(), number());
        } else {
            row.insert(col.to_string(), json!(val));
        }
    }
    row.insert("probabilities".into(), Value::Object(probs));
    Value::Object(row)
}

/// The first `limit` error rows (`{filename, error}`) of an errors CSV, if any.
pub fn errors_page(path: &Path, limit: usize, seal: Option<&Keyring>) -> Vec<Value> {
    let Ok(file) = open(path, seal) else {
        return Vec::new();
    };
    csv::Reader::from_reader(file)
        .records()
        .map_while(Result::ok)
        .take(limit)
        .map(|r| json!({"filename": r.get(0), "error": r.get(1)}))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_and_jsonl_pages_have_the_same_shape() {
        let d = tempfile::tempdir().unwrap();
        let csv_path = d.path().join("p.csv");
        std::fs::write(
            &csv_path,
            "filename,predicted_class,predicted_label,confidence,prob_A,prob_B\n\
             a.png,1,B,0.75,0.25,0.75\nb.png,0,A,0.5,0.5,0.5\nc.png,0,A,1,1,0\n",
        )
        .unwrap();
        let page = results_page(&csv_path, Format::Csv, 1, 5, None).unwrap();
        assert_eq!(page.len(), 2);
        assert_eq!(
            page[0],
            json!({"filename": "b.png", "predicted_class": 0, "predicted_label": "A",
                   "confidence": 0.5, "probabilities": {"A": 0.5, "B": 0.5}})
        );
        let jl = d.path().join("p.jsonl");
        std::fs::write(&jl, "{\"filename\":\"a\"}\n{\"filename\":\"b\"}\n").unwrap();
        assert_eq!(
            results_page(&jl, Format::Jsonl, 1, 1, None).unwrap(),
            vec![json!({"filename": "b"})]
        );
        let e = d.path().join("e.csv");
        std::fs::write(&e, "filename,error\nx.png,\"cannot decode, truncated\"\n").unwrap();
        assert_eq!(
            errors_page(&e, 10, None),
            vec![json!({"filename": "x.png", "error": "cannot decode, truncated"})]
        );
        assert!(errors_page(&d.path().join("none.csv"), 10, None).is_empty());
    }
}
