//! Per-identity limits: a token bucket (requests per second/minute/hour with a burst), a
//! bound on requests in progress, and a quota per day or month that survives restarts.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::keys::KeyEntry;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Day,
    Month,
}

/// The limits a key's settings describe.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    /// Requests per `period` (the bucket's refill), and the bucket's size.
    pub rate: Option<(u32, Duration, u32)>,
    pub quota: Option<(u64, Period)>,
    pub concurrency: Option<u32>,
}

fn number<T: std::str::FromStr>(s: &str, what: &str) -> Result<T, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("{what}: '{s}' is not a whole number"))
}

impl Limits {
    pub fn from_entry(k: &KeyEntry) -> Result<Limits, String> {
        let rate = match &k.rate {
            None => None,
            Some(r) => {
                let (n, per) = r
                    .split_once('/')
                    .ok_or_else(|| format!("rate '{r}': write it as N/s, N/m or N/h"))?;
                let n: u32 = number(n, "rate")?;
                let period = match per.trim() {
                    "s" | "sec" | "second" => Duration::from_secs(1),
                    "m" | "min" | "minute" => Duration::from_secs(60),
                    "h" | "hour" => Duration::from_secs(3600),
                    other => return Err(format!("rate '{r}': '{other}' is not s, m or h")),
                };
                if n == 0 {
                    return Err(format!("rate '{r}' must allow at least one request"));
                }
                let burst = k.burst.unwrap_or(n).max(1);
                Some((n, period, burst))
            }
        };
        if k.burst.is_some() && rate.is_none() {
            return Err("burst needs a rate".into());
        }
        let quota = match &k.quota {
            None => None,
            Some(q) => {
                let (n, per) = q
                    .split_once('/')
                    .ok_or_else(|| format!("quota '{q}': write it as N/day or N/month"))?;
                let period = match per.trim() {
                    "day" | "d" => Period::Day,
                    "month" | "mo" => Period::Month,
                    other => return Err(format!("quota '{q}': '{other}' is not day or month")),
                };
                Some((number(n, "quota")?, period))
            }
        };
        if k.concurrency == Some(0) {
            return Err("concurrency must be at least 1".into());
        }
        Ok(Limits {
            rate,
            quota,
            concurrency: k.concurrency,
        })
    }
}

/// The live state of one identity's limits.
pub struct Limiter {
    pub limits: Limits,
    bucket: Option<DefaultDirectRateLimiter>,
    in_progress: Option<Arc<Semaphore>>,
}

/// Why a request is held back, with what the client should wait.
#[derive(Debug, Clone, PartialEq)]
pub struct Limited {
    pub message: String,
    pub retry_after: Duration,
    pub limit: u64,
    pub reset: Duration,
}

/// What an admitted request carries: its concurrency slot, and the numbers for the
/// `RateLimit-*` headers.
#[derive(Debug, Default)]
pub struct Admission {
    pub _slot: Option<OwnedSemaphorePermit>,
    pub limit: Option<u64>,
    pub remaining: Option<u64>,
}

impl Limiter {
    pub fn new(limits: Limits) -> Limiter {
        let bucket = limits.rate.map(|(n, period, burst)| {
            let per_one = period / n;
            let q = Quota::with_period(per_one.max(Duration::from_nanos(1)))
                .expect("a non-zero period")
                .allow_burst(NonZeroU32::new(burst).expect("burst >= 1"));
            DefaultDirectRateLimiter::direct(q)
        });
        let in_progress = limits
            .concurrency
            .map(|c| Arc::new(Semaphore::new(c as usize)));
        Limiter {
            limits,
            bucket,
            in_progress,
        }
    }

    /// Takes `cost` tokens and a slot, or says how long to wait.
    pub fn admit(&self, cost: u32) -> Result<Admission, Limited> {
        let mut admission = Admission::default();
        if let (Some(bucket), Some((_, _, burst))) = (&self.bucket, self.limits.rate) {
            let cost = NonZeroU32::new(cost.clamp(1, burst)).expect("at least 1");
            match bucket.check_n(cost) {
                Ok(Ok(())) => {}
                Ok(Err(not_until)) => {
                    let wait = not_until.wait_time_from(DefaultClock::default().now());
                    return Err(Limited {
                        message: format!(
                            "rate limit of {} per {}s with a burst of {burst} reached; retry in {:.1}s",
                            self.limits.rate.map_or(0, |r| r.0),
                            self.limits.rate.map_or(0, |r| r.1.as_secs()),
                            wait.as_secs_f64()
                        ),
                        retry_after: wait,
                        limit: u64::from(burst),
                        reset: wait,
                    });
                }
                Err(_) => unreachable!("cost is clamped to the burst"),
            }
            admission.limit = Some(u64::from(burst));
            // governor keeps no count; what is left is at most the burst minus this request.
            admission.remaining = Some(u64::from(burst.saturating_sub(cost.get())));
        }
        if let Some(sem) = &self.in_progress {
            match sem.clone().try_acquire_owned() {
                Ok(p) => admission._slot = Some(p),
                Err(_) => {
                    return Err(Limited {
                        message: format!(
                            "{} requests of this identity are in progress, its limit; retry when one is done",
                            self.limits.concurrency.unwrap_or(0)
                        ),
                        retry_after: Duration::from_secs(1),
                        limit: u64::from(self.limits.concurrency.unwrap_or(0)),
                        reset: Duration::from_secs(1),
                    });
                }
            }
        }
        Ok(admission)
    }
}

/// Usage per identity and period, persisted so a restart does not reset quotas.
pub struct QuotaBook {
    path: Option<PathBuf>,
    state: Mutex<Book>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Book {
    /// identity → (period key such as "2026-12-01" or "2026-12", requests counted in it)
    used: HashMap<String, (String, u64)>,
    #[serde(skip)]
    dirty: bool,
}

/// "2026-12-01" (day) or "2026-12" (month), UTC.
pub fn period_key(now: SystemTime, period: Period) -> String {
    let day = humantime::format_rfc3339(now).to_string();
    match period {
        Period::Day => day[..10].to_string(),
        Period::Month => day[..7].to_string(),
    }
}

/// Time from `now` to the start of the next day or month (UTC).
pub fn until_next(now: SystemTime, period: Period) -> Duration {
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let next = match period {
        Period::Day => (secs / 86_400 + 1) * 86_400,
        Period::Month => {
            let (y, m) = {
                let k = period_key(now, Period::Month);
                (
                    k[..4].parse::<i64>().unwrap_or(1970),
                    k[5..7].parse::<i64>().unwrap_or(1),
                )
            };
            let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            days_from_civil(ny, nm, 1) as u64 * 86_400
        }
    };
    Duration::from_secs(next.saturating_sub(secs))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl QuotaBook {
    /// `dir`: where `quotas.json` lives (the data directory); without it usage is kept in
    /// memory only.
    pub fn open(dir: Option<&Path>) -> QuotaBook {
        let path = dir.map(|d| d.join("quotas.json"));
        let book = path
            .as_deref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        QuotaBook {
            path,
            state: Mutex::new(book),
        }
    }

    /// Counts `cost` against `id`'s quota, or refuses when it would pass it.
    pub fn charge(&self, id: &str, quota: (u64, Period), cost: u64) -> Result<u64, Limited> {
        let now = SystemTime::now();
        let key = period_key(now, quota.1);
        let mut book = self.state.lock();
        let entry = book
            .used
            .entry(id.to_string())
            .or_insert_with(|| (key.clone(), 0));
        if entry.0 != key {
            *entry = (key, 0);
        }
        if entry.1 + cost > quota.0 {
            let reset = until_next(now, quota.1);
            return Err(Limited {
                message: format!(
                    "quota of {} requests per {} used up; it renews in {}s",
                    quota.0,
                    match quota.1 {
                        Period::Day => "day",
                        Period::Month => "month",
                    },
                    reset.as_secs()
                ),
                retry_after: reset,
                limit: quota.0,
                reset,
            });
        }
        entry.1 += cost;
        let left = quota.0 - entry.1;
        book.dirty = true;
        Ok(left)
    }

    pub fn used(&self, id: &str) -> Option<(String, u64)> {
        self.state.lock().used.get(id).cloned()
    }

    /// Writes the book if it changed (atomically). Blocking.
    pub fn flush(&self) -> std::io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let bytes = {
            let mut book = self.state.lock();
            if !book.dirty {
                return Ok(());
            }
            book.dirty = false;
            serde_json::to_vec(&*book).unwrap_or_default()
        };
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, bytes)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Role;

    fn entry(rate: Option<&str>, burst: Option<u32>, quota: Option<&str>) -> KeyEntry {
        KeyEntry {
            id: "k".into(),
            sha256: "0".repeat(64),
            role: Role::Infer,
            models: None,
            rate: rate.map(String::from),
            burst,
            quota: quota.map(String::from),
            concurrency: Some(2),
            certificate: None,
            created: String::new(),
        }
    }

    #[test]
    fn settings_parse_or_say_why_not() {
        let l = Limits::from_entry(&entry(Some("50/s"), Some(100), Some("1000/day"))).unwrap();
        assert_eq!(l.rate, Some((50, Duration::from_secs(1), 100)));
        assert_eq!(l.quota, Some((1000, Period::Day)));
        assert_eq!(
            Limits::from_entry(&entry(Some("6/m"), None, None))
                .unwrap()
                .rate,
            Some((6, Duration::from_secs(60), 6))
        );
        for (r, b, q) in [
            (Some("fast"), None, None),
            (Some("5/week"), None, None),
            (Some("0/s"), None, None),
            (None, Some(3), None),
            (None, None, Some("5/year")),
        ] {
            assert!(
                Limits::from_entry(&entry(r, b, q)).is_err(),
                "{r:?} {b:?} {q:?}"
            );
        }
    }

    #[test]
    fn the_bucket_allows_its_burst_then_says_when_to_retry() {
        let l = Limiter::new(Limits::from_entry(&entry(Some("10/s"), Some(3), None)).unwrap());
        let held: Vec<Admission> = (0..2).map(|_| l.admit(1).unwrap()).collect();
        // The third fits the bucket but not the concurrency limit of 2.
        let e = l.admit(1).unwrap_err();
        assert!(e.message.contains("in progress"), "{e:?}");
        drop(held);
        let e = l.admit(1).unwrap_err();
        assert!(e.message.contains("rate limit"), "{e:?}");
        assert!(e.retry_after > Duration::ZERO && e.retry_after <= Duration::from_millis(100));
        std::thread::sleep(e.retry_after + Duration::from_millis(5));
        l.admit(1).unwrap();
    }

    #[test]
    fn quotas_count_per_period_and_survive_a_restart() {
        let d = tempfile::tempdir().unwrap();
        let book = QuotaBook::open(Some(d.path()));
        assert_eq!(book.charge("a", (3, Period::Day), 1).unwrap(), 2);
        assert_eq!(book.charge("a", (3, Period::Day), 2).unwrap(), 0);
        let e = book.charge("a", (3, Period::Day), 1).unwrap_err();
        assert!(e.message.contains("used up") && e.retry_after <= Duration::from_secs(86_400));
        book.flush().unwrap();
        let again = QuotaBook::open(Some(d.path()));
        assert!(
            again.charge("a", (3, Period::Day), 1).is_err(),
            "the count came back"
        );
        assert_eq!(again.charge("b", (3, Period::Month), 1).unwrap(), 2);
    }

    #[test]
    fn calendar_arithmetic() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        let t =
            UNIX_EPOCH + Duration::from_secs(days_from_civil(2026, 12, 31) as u64 * 86_400 + 3600);
        assert_eq!(period_key(t, Period::Day), "2026-12-31");
        assert_eq!(period_key(t, Period::Month), "2026-12");
        assert_eq!(
            until_next(t, Period::Day),
            Duration::from_secs(86_400 - 3600)
        );
        assert_eq!(
            until_next(t, Period::Month),
            Duration::from_secs(86_400 - 3600)
        );
    }
}
