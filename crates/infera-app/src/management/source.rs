//! Where a registered model comes from: a folder or archive under the model store, or an
//! http(s) URL on the allow-list. Whatever the source, the model is staged in a hidden
//! folder of the repository (never seen by loads and polls), checked, then renamed into
//! place; a failure leaves nothing behind.

use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use infera_core::{ServeError, ServeResult};
use regex::Regex;

/// Files and bytes one registered model may bring, so a hostile archive or folder cannot
/// fill the disk or take the server's time.
const MAX_FILES: usize = 1_000;
const MAX_DEPTH: usize = 4;

#[derive(Debug, Clone)]
pub struct SourcePolicy {
    /// Canonical folder local `url`s resolve in and must stay in (TorchServe's model store).
    pub model_store: Option<PathBuf>,
    /// Whole-URL patterns a remote `url` must match (TorchServe's `allowed_urls`).
    pub allowed_urls: Vec<Regex>,
    /// Bytes a model may have, downloaded or unpacked.
    pub max_bytes: u64,
}

/// The model's name implied by its source: the folder or archive name without extension.
pub fn default_name(url: &str) -> String {
    let last = url
        .trim_end_matches('/')
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or_default();
    let last = last.split(['?', '#']).next().unwrap_or_default();
    for ext in [".tar.gz", ".tgz", ".onnx"] {
        if let Some(stem) = last.strip_suffix(ext) {
            return stem.to_string();
        }
    }
    last.to_string()
}

pub fn is_url(s: &str) -> bool {
    s.contains("://")
}

impl SourcePolicy {
    /// Fills `stage` (an empty folder) with the model found at `url`.
    pub async fn stage(&self, url: &str, stage: &Path) -> ServeResult<()> {
        if is_url(url) {
            let bytes = self.download(url).await?;
            let stage = stage.to_path_buf();
            let max = self.max_bytes;
            let named_onnx = default_name(url) != url && url.ends_with(".onnx");
            blocking(move || {
                if bytes.starts_with(&[0x1f, 0x8b]) {
                    unpack(&bytes, &stage, max)
                } else if named_onnx {
                    write_new(&stage.join("model.onnx"), &bytes)
                } else {
                    Err(ServeError::invalid(
                        "the download is neither a .tar.gz of a model folder nor an .onnx file",
                    ))
                }
            })
            .await
        } else {
            let src = self.local(url)?;
            let stage = stage.to_path_buf();
            let max = self.max_bytes;
            blocking(move || {
                if src.is_dir() {
                    let mut budget = Budget::new(max);
                    copy_tree(&src, &stage, 0, &mut budget)
                } else if is_archive(&src) {
                    let bytes = read_bounded(&src, max)?;
                    unpack(&bytes, &stage, max)
                } else if src.extension().is_some_and(|e| e == "onnx") {
                    let bytes = read_bounded(&src, max)?;
                    write_new(&stage.join("model.onnx"), &bytes)
                } else {
                    Err(ServeError::invalid(
                        "url must name a model folder, a .tar.gz of one, or an .onnx file",
                    ))
                }
            })
            .await
        }
    }

    /// A local source: resolved in the model store, symlinks followed, and refused unless
    /// it stays inside.
    fn local(&self, url: &str) -> ServeResult<PathBuf> {
        let Some(store) = &self.model_store else {
            return Err(ServeError::forbidden(
                "registering local models needs a model store: start the server with --model-store DIR",
            ));
        };
        let path = store.join(url.strip_prefix("file://").unwrap_or(url));
        let real = std::fs::canonicalize(&path)
            .map_err(|_| ServeError::not_found(format!("Model not found in model store: {url}")))?;
        if !real.starts_with(store) {
            return Err(ServeError::forbidden(format!(
                "url {url} is outside the model store"
            )));
        }
        Ok(real)
    }

    async fn download(&self, url: &str) -> ServeResult<Vec<u8>> {
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| ServeError::invalid(format!("url {url}: not a URL ({e})")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(ServeError::invalid(format!(
                "url {url}: only http and https URLs are downloaded"
            )));
        }
        if !self.allows(parsed.as_str()) {
            return Err(ServeError::forbidden(format!(
                "Given URL {url} does not match any allowed URL(s); start the server with --allowed-urls REGEX to allow it"
            )));
        }
        // reqwest is built without a TLS crypto provider; ring is ours. An error only
        // means one is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let patterns = self.allowed_urls.clone();
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 5 {
                attempt.error("more than 5 redirects")
            } else if patterns.iter().any(|p| p.is_match(attempt.url().as_str())) {
                attempt.follow()
            } else {
                let to = attempt.url().to_string();
                attempt.error(format!("redirected to {to}, which is not allowed"))
            }
        });
        let client = reqwest::Client::builder()
            .redirect(redirects)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(300))
            .user_agent(concat!("infera/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ServeError::internal(format!("cannot build the HTTP client: {e}")))?;
        let fail = |e: reqwest::Error| {
            ServeError::invalid(format!("cannot download {url}: {}", error_chain(&e)))
        };
        let mut resp = client.get(parsed).send().await.map_err(fail)?;
        if !resp.status().is_success() {
            return Err(ServeError::not_found(format!(
                "cannot download {url}: HTTP {}",
                resp.status()
            )));
        }
        let too_big = || {
            ServeError::too_large(format!(
                "{url} is larger than the limit of {} bytes (--max-model-bytes)",
                self.max_bytes
            ))
        };
        if resp.content_length().is_some_and(|n| n > self.max_bytes) {
            return Err(too_big());
        }
        let mut out = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(fail)? {
            if (out.len() + chunk.len()) as u64 > self.max_bytes {
                return Err(too_big());
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    fn allows(&self, url: &str) -> bool {
        self.allowed_urls.iter().any(|p| p.is_match(url))
    }
}

/// Compiles `--allowed-urls` patterns; each must match a whole URL, as TorchServe's do.
pub fn allowed_urls(patterns: &[String]) -> Result<Vec<Regex>, String> {
    patterns
        .iter()
        .map(|p| {
            Regex::new(&format!("^(?:{p})$"))
                .map_err(|e| format!("--allowed-urls {p}: not a regular expression: {e}"))
        })
        .collect()
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> ServeResult<T> + Send + 'static,
) -> ServeResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ServeError::internal(format!("model staging task failed: {e}")))?
}

fn is_archive(p: &Path) -> bool {
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    name.ends_with(".tar.gz") || name.ends_with(".tgz")
}

fn read_bounded(p: &Path, max: u64) -> ServeResult<Vec<u8>> {
    let f = std::fs::File::open(p)
        .map_err(|e| ServeError::invalid(format!("cannot read {}: {e}", p.display())))?;
    let mut out = Vec::new();
    f.take(max + 1)
        .read_to_end(&mut out)
        .map_err(|e| ServeError::invalid(format!("cannot read {}: {e}", p.display())))?;
    if out.len() as u64 > max {
        return Err(ServeError::too_large(format!(
            "{} is larger than the limit of {max} bytes (--max-model-bytes)",
            p.display()
        )));
    }
    Ok(out)
}

fn write_new(path: &Path, bytes: &[u8]) -> ServeResult<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    std::fs::write(path, bytes).map_err(io)
}

fn io(e: std::io::Error) -> ServeError {
    ServeError::internal(format!("cannot write the model into the repository: {e}"))
}

struct Budget {
    files: usize,
    bytes: u64,
    max: u64,
}

impl Budget {
    fn new(max: u64) -> Budget {
        Budget {
            files: 0,
            bytes: 0,
            max,
        }
    }

    fn take(&mut self, bytes: u64) -> ServeResult<()> {
        self.files += 1;
        self.bytes = self.bytes.saturating_add(bytes);
        if self.files > MAX_FILES {
            return Err(ServeError::invalid(format!(
                "the model has more than {MAX_FILES} files"
            )));
        }
        if self.bytes > self.max {
            return Err(ServeError::too_large(format!(
                "the model is larger than the limit of {} bytes (--max-model-bytes)",
                self.max
            )));
        }
        Ok(())
    }
}

/// Copies regular files and folders; symbolic links are refused (they could lead out).
fn copy_tree(src: &Path, dst: &Path, depth: usize, budget: &mut Budget) -> ServeResult<()> {
    if depth > MAX_DEPTH {
        return Err(ServeError::invalid(format!(
            "the model folder is nested deeper than {MAX_DEPTH} levels"
        )));
    }
    std::fs::create_dir_all(dst).map_err(io)?;
    let read =
        |e: std::io::Error| ServeError::invalid(format!("cannot read {}: {e}", src.display()));
    for entry in std::fs::read_dir(src).map_err(read)? {
        let entry = entry.map_err(read)?;
        let kind = entry.file_type().map_err(read)?;
        let to = dst.join(entry.file_name());
        if kind.is_dir() {
            copy_tree(&entry.path(), &to, depth + 1, budget)?;
        } else if kind.is_file() {
            budget.take(entry.metadata().map_err(read)?.len())?;
            std::fs::copy(entry.path(), &to).map_err(io)?;
        } else {
            return Err(ServeError::invalid(format!(
                "{} is a link or special file; a model folder holds only folders and files",
                entry.path().display()
            )));
        }
    }
    Ok(())
}

/// Unpacks a .tar.gz: only folders and regular files with plain relative paths; sizes are
/// counted as they stream, whatever the headers claim.
fn unpack(gz: &[u8], dst: &Path, max: u64) -> ServeResult<()> {
    let bad = |e: std::io::Error| ServeError::invalid(format!("not a readable .tar.gz: {e}"));
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(gz));
    let mut budget = Budget::new(max);
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let path = entry.path().map_err(bad)?.into_owned();
        let plain = path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
        if !plain || path.components().count() > MAX_DEPTH + 1 {
            return Err(ServeError::invalid(format!(
                "the archive holds the path {}, which is absolute, climbs out with '..', or is too deep",
                path.display()
            )));
        }
        let to = dst.join(&path);
        match entry.header().entry_type() {
            tar::EntryType::Directory => std::fs::create_dir_all(&to).map_err(io)?,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                budget.take(0)?;
                if let Some(dir) = to.parent() {
                    std::fs::create_dir_all(dir).map_err(io)?;
                }
                let mut out = std::fs::File::create(&to).map_err(io)?;
                let left = budget.max - budget.bytes;
                let n = std::io::copy(&mut (&mut entry).take(left + 1), &mut out).map_err(bad)?;
                budget.files -= 1;
                budget.take(n)?;
            }
            // PAX and GNU long-name records describe the entries around them.
            tar::EntryType::XHeader
            | tar::EntryType::XGlobalHeader
            | tar::EntryType::GNULongName => {}
            other => {
                return Err(ServeError::invalid(format!(
                    "the archive holds {} as a {other:?}; a model archive holds only folders and files",
                    path.display()
                )));
            }
        }
    }
    Ok(())
}

/// Brings a staged source into Triton's layout: one top folder is descended into, and a
/// bare `model.onnx` becomes version 1.
pub fn normalise(stage: &Path) -> ServeResult<PathBuf> {
    let mut root = stage.to_path_buf();
    loop {
        let entries: Vec<_> = std::fs::read_dir(&root)
            .map_err(io)?
            .filter_map(Result::ok)
            .collect();
        match entries.as_slice() {
            [] => return Err(ServeError::invalid("the model source is empty")),
            [only]
                if only.path().is_dir()
                    && only.file_name().to_string_lossy().parse::<u64>().is_err() =>
            {
                root = only.path();
            }
            _ => break,
        }
    }
    let bare = root.join("model.onnx");
    if bare.is_file() {
        let v1 = root.join("1");
        std::fs::create_dir_all(&v1).map_err(io)?;
        std::fs::rename(&bare, v1.join("model.onnx")).map_err(io)?;
    }
    Ok(root)
}
