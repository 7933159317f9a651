//! Fetching URL inputs when a job reaches them: only from the allow-list (redirects
//! included), each download capped in size while it streams, and the job's downloads
//! capped in total. Nothing is written to disk, so a cancelled job leaves no downloads.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use reqwest::Url;

use crate::JobError;
use crate::policy::InputPolicy;

pub struct Downloader {
    client: reqwest::Client,
}

impl Downloader {
    pub fn new(policy: Arc<InputPolicy>) -> Result<Downloader, JobError> {
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
        Ok(Downloader { client })
    }

    /// Downloads `url` into memory, failing as soon as it passes `max` bytes (or
    /// `Content-Length` says it will); the error is the reason reported for this input.
    pub async fn fetch_bytes(&self, url: &Url, max: u64) -> Result<Bytes, String> {
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
        let too_big = || format!("download is larger than the limit of {max} bytes");
        if resp.content_length().is_some_and(|n| n > max) {
            return Err(too_big());
        }
        let mut out = BytesMut::with_capacity(resp.content_length().unwrap_or(0).min(max) as usize);
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("download failed: {}", chain(&e)))?
        {
            if (out.len() + chunk.len()) as u64 > max {
                return Err(too_big());
            }
            out.extend_from_slice(&chunk);
        }
        if out.is_empty() {
            return Err("the download is empty".into());
        }
        Ok(out.freeze())
    }
}

/// One job's fetcher: the allow-list is checked again (a resumed job's list comes from
/// disk), each file is capped at `per_file` bytes and the job's downloads at `per_job`.
pub struct JobFetch {
    pub downloader: Arc<Downloader>,
    pub policy: Arc<InputPolicy>,
    pub per_file: u64,
    pub per_job: u64,
    pub used: AtomicU64,
}

impl infera_batch::Fetch for JobFetch {
    fn fetch<'a>(&'a self, url: &'a str) -> futures::future::BoxFuture<'a, Result<Bytes, String>> {
        Box::pin(async move {
            let url = self.policy.check_url(url).map_err(|(reason, _)| reason)?;
            let over = || {
                format!(
                    "not downloaded: the job's downloads reached their limit of {} bytes (--job-max-download-bytes)",
                    self.per_job
                )
            };
            let left = self
                .per_job
                .saturating_sub(self.used.load(Ordering::Relaxed));
            if left == 0 {
                return Err(over());
            }
            let data = match self
                .downloader
                .fetch_bytes(&url, self.per_file.min(left))
                .await
            {
                Err(e) if left < self.per_file && e.contains("larger than the limit") => {
                    return Err(over());
                }
                other => other?,
            };
            // Downloads run a few at a time: only count one in if the total stays in bounds.
            let n = data.len() as u64;
            self.used
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                    (used + n <= self.per_job).then_some(used + n)
                })
                .map_err(|_| over())?;
            Ok(data)
        })
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
