//! The IDX format of (Fashion-)MNIST: `00 00 <type> <ndims>`, one big-endian u32 per
//! dimension, then the data. Files may be gzip-compressed (detected by their magic bytes).

use std::io::Read;
use std::path::Path;

use crate::TrainError;

/// An IDX array of unsigned bytes (type 0x08), the only type the datasets use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idx {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Decompresses if `bytes` starts with the gzip magic.
pub fn maybe_gunzip(bytes: Vec<u8>, what: &str) -> Result<Vec<u8>, TrainError> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| TrainError::Data(format!("{what}: not a valid gzip file ({e})")))?;
        Ok(out)
    } else {
        Ok(bytes)
    }
}

impl Idx {
    pub fn read(path: &Path) -> Result<Idx, TrainError> {
        let raw = std::fs::read(path)
            .map_err(|e| TrainError::Data(format!("cannot read {}: {e}", path.display())))?;
        let what = path.display().to_string();
        Idx::parse(&maybe_gunzip(raw, &what)?, &what)
    }

    /// Parses uncompressed IDX bytes; `what` names the source in errors.
    pub fn parse(b: &[u8], what: &str) -> Result<Idx, TrainError> {
        let bad = |why: String| TrainError::Data(format!("{what}: {why}"));
        if b.len() < 4 {
            return Err(bad(format!(
                "only {} bytes: not an IDX file (truncated?)",
                b.len()
            )));
        }
        if b[0] != 0 || b[1] != 0 {
            return Err(bad(format!(
                "bad magic {:02x} {:02x}: not an IDX file",
                b[0], b[1]
            )));
        }
        if b[2] != 0x08 {
            return Err(bad(format!(
                "element type 0x{:02x} is not supported (only unsigned bytes, 0x08)",
                b[2]
            )));
        }
        let ndims = b[3] as usize;
        if ndims == 0 || ndims > 4 {
            return Err(bad(format!("{ndims} dimensions: expected 1 to 4")));
        }
        let header = 4 + 4 * ndims;
        if b.len() < header {
            return Err(bad("truncated in the header".into()));
        }
        let dims: Vec<usize> = b[4..header]
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
            .collect();
        let expected = dims
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| bad(format!("dimensions {dims:?} overflow")))?;
        let actual = b.len() - header;
        if actual != expected {
            return Err(bad(format!(
                "dimensions {dims:?} need {expected} bytes of data but the file has {actual}{}",
                if actual < expected {
                    " (truncated)"
                } else {
                    ""
                }
            )));
        }
        Ok(Idx {
            dims,
            data: b[header..].to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut b = vec![0, 0, 8, dims.len() as u8];
        for d in dims {
            b.extend(d.to_be_bytes());
        }
        b.extend(data);
        b
    }

    #[test]
    fn parses_plain_and_gzipped_files() {
        let raw = idx(&[2, 2, 3], &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        let i = Idx::parse(&raw, "t").unwrap();
        assert_eq!(i.dims, vec![2, 2, 3]);
        assert_eq!(i.data[11], 12);
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.gz");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&raw).unwrap();
        std::fs::write(&p, gz.finish().unwrap()).unwrap();
        assert_eq!(Idx::read(&p).unwrap(), i);
    }

    #[test]
    fn corrupt_and_truncated_files_say_what_is_wrong() {
        let ok = idx(&[3], &[1, 2, 3]);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![0, 0], "truncated"),
            (vec![1, 2, 8, 1, 0, 0, 0, 1, 5], "bad magic"),
            (
                idx(&[1], &[1])
                    .into_iter()
                    .enumerate()
                    .map(|(i, b)| if i == 2 { 0x0d } else { b })
                    .collect(),
                "not supported",
            ),
            (vec![0, 0, 8, 0], "dimensions"),
            (ok[..6].to_vec(), "header"),
            (ok[..ok.len() - 1].to_vec(), "(truncated)"),
            ([ok.clone(), vec![9]].concat(), "has 4"),
            (idx(&[u32::MAX, u32::MAX, u32::MAX], &[]), "overflow"),
        ];
        for (bytes, want) in cases {
            let e = Idx::parse(&bytes, "f.idx").unwrap_err().to_string();
            assert!(e.starts_with("f.idx: ") && e.contains(want), "{want}: {e}");
        }
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("bad.gz");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&ok).unwrap();
        let bytes = gz.finish().unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 10]).unwrap();
        assert!(Idx::read(&p).unwrap_err().to_string().contains("gzip"));
        assert!(
            Idx::read(&d.path().join("missing"))
                .unwrap_err()
                .to_string()
                .contains("cannot read")
        );
    }
}
