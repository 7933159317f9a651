//! Fetching the data set from a mirror. Each file is written under a temporary name,
//! checked (SHA-256 of its decompressed content), and only then renamed into place: a failed
//! or mismatching download leaves nothing behind.

use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::TrainError;
use crate::data::FileSpec;
use crate::idx::maybe_gunzip;

/// The official Fashion-MNIST mirror.
pub const OFFICIAL_MIRROR: &str = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com";

/// Largest file accepted (the biggest, train images, is 26 MB compressed).
const MAX_BYTES: u64 = 128 << 20;

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// Whether `path` holds the file `spec` describes.
pub fn verify(path: &Path, spec: &FileSpec) -> Result<(), TrainError> {
    let raw = std::fs::read(path)
        .map_err(|e| TrainError::Download(format!("cannot read {}: {e}", path.display())))?;
    let content = maybe_gunzip(raw, &path.display().to_string())?;
    let got = sha256_hex(&content);
    if got != spec.sha256 {
        return Err(TrainError::Download(format!(
            "checksum mismatch for {}: expected SHA-256 {} of the decompressed file, got {got}",
            spec.name, spec.sha256
        )));
    }
    Ok(())
}

/// Downloads `<base_url>/<name>.gz` for every spec into `dir`, skipping files already there
/// and valid. `progress(name, bytes_so_far, total)` is called as data arrives.
pub async fn download(
    base_url: &str,
    dir: &Path,
    specs: &[FileSpec],
    mut progress: impl FnMut(&str, u64, Option<u64>),
) -> Result<(), TrainError> {
    // reqwest is built without a TLS crypto provider; ring is ours (an error means one is
    // installed already).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(15))
        .timeout(Duration::from_secs(600))
        .build()
        .map_err(|e| TrainError::Download(format!("cannot build the HTTP client: {e}")))?;
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| TrainError::Download(format!("cannot create {}: {e}", dir.display())))?;
    for spec in specs {
        let dest = dir.join(format!("{}.gz", spec.name));
        if dest.is_file() && verify(&dest, spec).is_ok() {
            continue;
        }
        let part = dir.join(format!(".{}.gz.part", spec.name));
        let url = format!("{}/{}.gz", base_url.trim_end_matches('/'), spec.name);
        let result = fetch(&client, &url, &part, spec, &mut progress).await;
        let result = match result {
            Ok(()) => verify(&part, spec)
                .map_err(|e| TrainError::Download(format!("{url}: {e}; the download was deleted"))),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => tokio::fs::rename(&part, &dest).await.map_err(|e| {
                TrainError::Download(format!("cannot move {} into place: {e}", dest.display()))
            })?,
            Err(e) => {
                let _ = tokio::fs::remove_file(&part).await;
                return Err(e);
            }
        }
    }
    Ok(())
}

async fn fetch(
    client: &reqwest::Client,
    url: &str,
    part: &Path,
    spec: &FileSpec,
    progress: &mut impl FnMut(&str, u64, Option<u64>),
) -> Result<(), TrainError> {
    let fail = |why: String| TrainError::Download(format!("{url}: {why}"));
    let mut resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| fail(format!("download failed ({e})")))?;
    if !resp.status().is_success() {
        return Err(fail(format!("HTTP {}", resp.status())));
    }
    let total = resp.content_length();
    let mut file = tokio::fs::File::create(part)
        .await
        .map_err(|e| fail(format!("cannot write {}: {e}", part.display())))?;
    let mut got = 0u64;
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| fail(format!("download interrupted ({e})")))?
    {
        got += chunk.len() as u64;
        if got > MAX_BYTES {
            return Err(fail(format!(
                "more than {MAX_BYTES} bytes: not {}",
                spec.name
            )));
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| fail(format!("cannot write {}: {e}", part.display())))?;
        progress(spec.name, got, total);
    }
    file.sync_all()
        .await
        .map_err(|e| fail(format!("cannot write {}: {e}", part.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::Write;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    /// A minimal HTTP/1.1 server on 127.0.0.1 serving fixed bodies by path (404 otherwise).
    async fn serve(files: HashMap<String, Vec<u8>>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let files = Arc::new(files);
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let files = files.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let req = String::from_utf8_lossy(&buf[..n]);
                    let path = req.split_whitespace().nth(1).unwrap_or("/").to_string();
                    let (status, body) = match files.get(&path) {
                        Some(b) => ("200 OK", b.clone()),
                        None => ("404 Not Found", b"no".to_vec()),
                    };
                    let head = format!(
                        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = s.write_all(head.as_bytes()).await;
                    let _ = s.write_all(&body).await;
                });
            }
        });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn downloads_verify_and_a_mismatch_leaves_no_file() {
        let good = b"the real content".to_vec();
        let sha: &'static str = Box::leak(sha256_hex(&good).into_boxed_str());
        let spec = FileSpec {
            name: "labels",
            sha256: sha,
            bytes: good.len() as u64,
        };
        let other = FileSpec {
            name: "images",
            sha256: sha,
            bytes: 0,
        };
        let missing = FileSpec {
            name: "nothere",
            sha256: sha,
            bytes: 0,
        };
        let base = serve(HashMap::from([
            ("/labels.gz".to_string(), gz(&good)),
            ("/images.gz".to_string(), gz(b"tampered content")),
        ]))
        .await;
        let d = tempfile::tempdir().unwrap();

        let mut seen = 0;
        download(&base, d.path(), &[spec], |_, n, _| seen = n)
            .await
            .unwrap();
        assert!(seen > 0);
        verify(&d.path().join("labels.gz"), &spec).unwrap();

        let e = download(&base, d.path(), &[other], |_, _, _| {})
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("checksum mismatch") && e.contains("deleted"),
            "{e}"
        );
        let e = download(&base, d.path(), &[missing], |_, _, _| {})
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("404"), "{e}");
        let mut left: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["labels.gz"], "no partial or bad file is kept");

        // Already there and valid: not fetched again (the server would now 404).
        let gone = serve(HashMap::new()).await;
        download(&gone, d.path(), &[spec], |_, _, _| panic!("refetched"))
            .await
            .unwrap();
        let e = download("http://127.0.0.1:9", d.path(), &[other], |_, _, _| {})
            .await
            .unwrap_err();
        assert!(e.to_string().contains("download failed"), "{e}");
    }
}
