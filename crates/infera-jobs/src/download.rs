//! Fetching URL inputs: only from the allow-list (redirects included), with a size cap,
//! written under a temporary name and renamed, so a file that exists is complete.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;
use tokio::io::AsyncWriteExt;

use crate::JobError;
use crate::policy::InputPolicy;

pub struct Downloader {
    client: reqwest::Client,
    max_bytes: u64,
}

impl Downloader {
    pub fn new(policy: Arc<InputPolicy>, max_bytes: u64) -> Result<Downloader, JobError> {
        // reqwest is built without a TLS crypto provider; ring is ours. An error only
        // means one is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 5 {
                attempt.error("more than 5 redirects")
            } else if policy.allows_url(attempt.url()) {
                attempt.follow()
            } else {
                let to = attempt.url().to_string();
                attempt.error(format!(
                    "redirected to {to}, which is not on the allow-list"
                ))
            }
        });
        let client = reqwest::Client::builder()
            .redirect(redirects)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .user_agent(concat!("infera/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| JobError::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(Downloader { client, max_bytes })
    }

    /// Downloads `url` to `dest`; the error is the reason reported for this input.
    pub async fn fetch(&self, url: &Url, dest: &Path) -> Result<(), String> {
        let tmp = dest.with_extension("download");
        let result = self.fetch_to(url, &tmp).await;
        match result {
            Ok(()) => tokio::fs::rename(&tmp, dest)
                .await
                .map_err(|e| format!("cannot store the download: {e}")),
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                Err(e)
            }
        }
    }

    async fn fetch_to(&self, url: &Url, tmp: &Path) -> Result<(), String> {
        let mut resp = self
            .client
            .get(url.clone())
            .send()
            .await
            .map_err(|e| format!("download failed: {}", chain(&e)))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(format!("download failed: HTTP {status}"));
        }
        if resp.content_length().is_some_and(|n| n > self.max_bytes) {
            return Err(format!(
                "download is larger than the limit of {} bytes",
                self.max_bytes
            ));
        }
        let mut file = tokio::fs::File::create(tmp)
            .await
            .map_err(|e| format!("cannot store the download: {e}"))?;
        let mut written = 0u64;
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("download failed: {}", chain(&e)))?
        {
            written += chunk.len() as u64;
            if written > self.max_bytes {
                return Err(format!(
                    "download is larger than the limit of {} bytes",
                    self.max_bytes
                ));
            }
            file.write_all(&chunk)
                .await
                .map_err(|e| format!("cannot store the download: {e}"))?;
        }
        file.sync_all()
            .await
            .map_err(|e| format!("cannot store the download: {e}"))
    }
}

/// reqwest's Display hides the cause ("error sending request"); users need the cause.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(c) = source {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        source = c.source();
    }
    s
}
