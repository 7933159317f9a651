//! Who may call what, for every front-end alike.
//!
//! A request's credential (an API key from `Authorization: Bearer …`, `X-API-Key`, or gRPC
//! `authorization` metadata) becomes an [`Identity`] with a [`Role`]; each endpoint belongs to a
//! [`Group`], and a role allows some groups. A key may be limited to some models, and carries
//! rate, concurrency and quota limits. The front-ends translate: they find the credential, the
//! group and the model, ask [`Auth::check`], and turn a [`Denied`] into 401 / 403 / 429 (or
//! UNAUTHENTICATED / PERMISSION_DENIED / RESOURCE_EXHAUSTED).
//!
//! JWT bearer tokens from an identity provider ([`jwt`]) are identities too: their subject,
//! and the role (and optionally models) their claims give.
//!
//! Without keys or tokens the server is open (every caller is `anonymous` with every role): that is
//! for loopback development; `infera serve` refuses it on other addresses unless told.

pub mod api;
pub mod audit;
mod identity;
pub mod jwt;
pub mod keys;
pub mod limits;
pub mod metrics;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use parking_lot::RwLock;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use tracing::{info, warn};

pub use api::{Api, ApiSet, Restrictions};
pub use audit::Audit;
pub use identity::{Denied, Group, Identity, Peer, Role};
pub use limits::{Admission, Limited};

use crate::keys::{KeyEntry, KeyFile};
use crate::limits::{Limiter, Limits, QuotaBook};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{0}")]
    Config(String),
}

/// One key's settings and live limits.
pub(crate) struct KeyState {
    pub(crate) entry: KeyEntry,
    /// Shared with every request's Identity (built once, not per request).
    pub(crate) id: Arc<str>,
    pub(crate) models: Option<Arc<HashSet<String>>>,
    digest: [u8; 32],
    pub(crate) limiter: Limiter,
    allowed: AtomicU64,
    refused: AtomicU64,
}

#[derive(Default)]
struct KeyIndex {
    by_digest: HashMap<[u8; 32], Arc<KeyState>>,
}

fn digest_of(hex: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// How a server authenticates; [`Auth::new`] reads the keys.
#[derive(Default)]
pub struct AuthOptions {
    /// API keys (`infera keys create`); reloaded when the file changes.
    pub keys_file: Option<PathBuf>,
    /// JWT bearer tokens.
    pub jwt: Option<Arc<jwt::Jwt>>,
    /// Where quota usage is kept (the data directory).
    pub quota_dir: Option<PathBuf>,
    pub audit: Option<Audit>,
    /// APIs open without a credential (default: health and the page).
    pub public: Option<ApiSet>,
}

pub struct Auth {
    keys_file: Option<PathBuf>,
    jwt: Option<Arc<jwt::Jwt>>,
    public: ApiSet,
    index: RwLock<Arc<KeyIndex>>,
    quotas: QuotaBook,
    audit: Option<Audit>,
}

/// How the file looked when it was last read, to notice changes.
type Stamp = Option<(SystemTime, u64)>;

pub(crate) fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl Auth {
    /// No authentication: everyone is `anonymous` with every role.
    pub fn open(audit: Option<Audit>) -> Arc<Auth> {
        Arc::new(Auth {
            keys_file: None,
            jwt: None,
            public: ApiSet::default_public(),
            index: RwLock::new(Arc::default()),
            quotas: QuotaBook::open(None),
            audit,
        })
    }

    /// API keys from `keys_file`; quotas kept in `quota_dir` (the data directory) if given.
    pub fn with_keys(
        keys_file: &Path,
        quota_dir: Option<&Path>,
        audit: Option<Audit>,
    ) -> Result<Arc<Auth>, AuthError> {
        Auth::new(AuthOptions {
            keys_file: Some(keys_file.to_path_buf()),
            quota_dir: quota_dir.map(Path::to_path_buf),
            audit,
            ..Default::default()
        })
    }

    /// API keys and/or JWT bearer tokens (neither: an open server), public APIs and
    /// Triton-style restrictions.
    pub fn new(o: AuthOptions) -> Result<Arc<Auth>, AuthError> {
        let auth = Auth {
            keys_file: o.keys_file,
            jwt: o.jwt,
            public: o.public.unwrap_or_else(ApiSet::default_public),
            index: RwLock::new(Arc::default()),
            quotas: QuotaBook::open(o.quota_dir.as_deref()),
            audit: o.audit,
        };
        auth.reload()?;
        Ok(Arc::new(auth))
    }

    /// Whether callers must present a credential.
    pub fn required(&self) -> bool {
        self.keys_file.is_some() || self.jwt.is_some()
    }

    /// Reads the key file again; keys whose settings did not change keep their limits' state.
    pub fn reload(&self) -> Result<usize, AuthError> {
        let Some(path) = &self.keys_file else {
            return Ok(0);
        };
        let file = KeyFile::load(path, false)?;
        let old = self.index.read().clone();
        let mut by_digest = HashMap::new();
        for entry in file.keys {
            let digest = digest_of(&entry.sha256)
                .ok_or_else(|| AuthError::Config(format!("key '{}': bad sha256", entry.id)))?;
            let state = match old.by_digest.get(&digest) {
                Some(s) if s.entry == entry => s.clone(),
                _ => {
                    let limits = Limits::from_entry(&entry).map_err(AuthError::Config)?;
                    Arc::new(KeyState {
                        id: Arc::from(entry.id.as_str()),
                        models: entry
                            .models
                            .as_ref()
                            .map(|m| Arc::new(m.iter().cloned().collect())),
                        entry,
                        digest,
                        limiter: Limiter::new(limits),
                        allowed: AtomicU64::new(0),
                        refused: AtomicU64::new(0),
                    })
                }
            };
            by_digest.insert(digest, state);
        }
        let n = by_digest.len();
        let changes = key_changes(&old, &by_digest);
        *self.index.write() = Arc::new(KeyIndex { by_digest });
        if !changes.is_empty() && !old.by_digest.is_empty() {
            self.audit(
                "-",
                "keys reloaded",
                &path.display().to_string(),
                &changes,
                "",
            );
        }
        Ok(n)
    }

    /// Polls the key file and reloads it when it changes; a broken file keeps the keys that
    /// were loaded (and says why in the log). Also flushes quota usage.
    pub async fn watch(self: Arc<Self>, every: Duration) {
        let mut seen = self.keys_file.as_deref().and_then(stamp);
        loop {
            tokio::time::sleep(every).await;
            let me = self.clone();
            let _ = tokio::task::spawn_blocking(move || {
                if let Err(e) = me.quotas.flush() {
                    warn!(error = %e, "cannot save quota usage");
                }
            })
            .await;
            let Some(path) = self.keys_file.as_deref() else {
                continue;
            };
            let now = stamp(path);
            if now != seen {
                seen = now;
                match self.reload() {
                    Ok(n) => info!(keys = n, file = %path.display(), "API keys reloaded"),
                    Err(e) => {
                        warn!(error = %e, "the key file changed but cannot be used; the keys loaded before stay")
                    }
                }
            }
        }
    }

    /// Saves quota usage now (at shutdown). Blocking.
    pub fn flush(&self) {
        if let Err(e) = self.quotas.flush() {
            warn!(error = %e, "cannot save quota usage");
        }
    }

    /// The identity behind a credential, or else behind a verified client certificate.
    pub fn authenticate_peer(
        &self,
        credential: Option<&str>,
        peer: &Peer,
    ) -> Result<Identity, Denied> {
        if credential.is_none() && self.required() && !peer.cert_names.is_empty() {
            let index = self.index.read().clone();
            let by_cert = index.by_digest.values().find(|s| {
                s.entry
                    .certificate
                    .as_ref()
                    .is_some_and(|c| peer.cert_names.iter().any(|n| n == c))
            });
            if let Some(s) = by_cert {
                return Ok(Identity::of(s));
            }
            return Err(Denied::Unauthenticated(format!(
                "the client certificate ({}) stands for no key, and no API key was sent",
                peer.cert_names.join(", ")
            )));
        }
        self.authenticate(credential)
    }

    /// The identity behind a credential.
    pub fn authenticate(&self, credential: Option<&str>) -> Result<Identity, Denied> {
        if !self.required() {
            return Ok(Identity::anonymous());
        }
        let Some(key) = credential.map(str::trim).filter(|k| !k.is_empty()) else {
            return Err(Denied::Unauthenticated(
                "a credential is required: send an API key or token as 'Authorization: Bearer …' (or X-API-Key)"
                    .into(),
            ));
        };
        if let Some(jwt) = &self.jwt
            && jwt::looks_like_jwt(key)
        {
            return jwt.verify(key);
        }
        if self.keys_file.is_none() {
            return Err(Denied::Unauthenticated(
                "the bearer token is not valid: this server accepts JWTs from its identity provider".into(),
            ));
        }
        let presented = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
        let index = self.index.read().clone();
        let found = presented
            .as_ref()
            .try_into()
            .ok()
            .and_then(|d: [u8; 32]| index.by_digest.get(&d))
            .filter(|s| bool::from(s.digest.ct_eq(presented.as_ref())));
        match found {
            Some(s) => Ok(Identity::of(s)),
            None => Err(Denied::Unauthenticated("the API key is not valid".into())),
        }
    }

    /// Whether `who` may call an endpoint of `group` (for `model`, when it names one).
    pub fn authorize(
        &self,
        who: &Identity,
        group: Group,
        model: Option<&str>,
    ) -> Result<(), Denied> {
        if !who.role.allows(group) {
            return Err(Denied::Forbidden(format!(
                "the key '{}' has the role {}, which may not call {} endpoints",
                who.id,
                who.role.as_str(),
                group.as_str()
            )));
        }
        if let Some(m) = model
            && !who.may_use(m)
        {
            return Err(Denied::Forbidden(format!(
                "the key '{}' may not use model '{m}'",
                who.id
            )));
        }
        Ok(())
    }

    /// Counts a request of `cost` (images for batch requests) against `who`'s limits.
    pub fn admit(&self, who: &Identity, cost: u32) -> Result<Admission, Denied> {
        let Some(state) = &who.state else {
            return Ok(Admission::default());
        };
        let admitted = state.limiter.admit(cost).and_then(|a| {
            if let Some(q) = state.limiter.limits.quota {
                self.quotas.charge(&state.entry.id, q, u64::from(cost))?;
            }
            Ok(a)
        });
        match admitted {
            Ok(a) => {
                state.allowed.fetch_add(1, Ordering::Relaxed);
                Ok(a)
            }
            Err(l) => {
                state.refused.fetch_add(1, Ordering::Relaxed);
                Err(Denied::Limited(l))
            }
        }
    }

    /// The group a request to `api` is checked as: public when `--public-endpoints` opens
    /// the API, else its own (an endpoint public by default is read-only when closed).
    pub fn group_of(&self, api: Api, group: Group) -> Group {
        if self.public.contains(api) {
            Group::Public
        } else if group == Group::Public {
            Group::Read
        } else {
            group
        }
    }

    /// Authenticates, authorizes and (for inference) admits a request. A refusal is for
    /// the caller to answer and to record ([`Auth::audit_denial`]).
    pub fn check(
        &self,
        credential: Option<&str>,
        peer: &Peer,
        group: Group,
        model: Option<&str>,
        cost: Option<u32>,
    ) -> Result<(Identity, Admission), Denied> {
        if group == Group::Public {
            return Ok((Identity::public(), Admission::default()));
        }
        let who = self.authenticate_peer(credential, peer)?;
        self.authorize(&who, group, model)?;
        let admission = match cost {
            Some(c) => self.admit(&who, c)?,
            None => Admission::default(),
        };
        Ok((who, admission))
    }

    /// Records a refusal of [`Auth::check`] in the audit log (when there is one).
    pub fn audit_denial(
        &self,
        credential: Option<&str>,
        peer: &Peer,
        denied: &Denied,
        what: &str,
        model: Option<&str>,
    ) {
        if self.audit.is_none() {
            return;
        }
        let who = match denied {
            Denied::Unauthenticated(_) => "-".to_string(),
            _ => self
                .authenticate_peer(credential, peer)
                .map_or_else(|_| "-".into(), |w| w.id.to_string()),
        };
        let outcome = match denied {
            Denied::Unauthenticated(m) => format!("401 {m}"),
            Denied::Forbidden(m) => format!("403 {m}"),
            Denied::Limited(l) => format!("429 {}", l.message),
        };
        self.audit(&who, what, model.unwrap_or(""), &outcome, &peer.from());
    }

    /// Records a management action or a refusal in the audit log, if there is one.
    pub fn audit(&self, who: &str, action: &str, target: &str, outcome: &str, from: &str) {
        if let Some(a) = &self.audit {
            a.record(who, action, target, outcome, from);
        }
    }

    /// Per-key usage for admins: requests allowed and refused since start, quota used.
    pub fn usage(&self) -> Value {
        let index = self.index.read().clone();
        let mut keys: Vec<Value> = index
            .by_digest
            .values()
            .map(|s| {
                let quota = self.quotas.used(&s.entry.id);
                json!({
                    "id": s.entry.id,
                    "role": s.entry.role,
                    "models": s.entry.models,
                    "allowed": s.allowed.load(Ordering::Relaxed),
                    "refused": s.refused.load(Ordering::Relaxed),
                    "rate": s.entry.rate,
                    "burst": s.entry.burst,
                    "quota": s.entry.quota,
                    "quota_period": quota.as_ref().map(|q| q.0.clone()),
                    "quota_used": quota.map(|q| q.1),
                })
            })
            .collect();
        keys.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
        json!({
            "keys": keys,
            "audit_lines_dropped": self.audit.as_ref().map_or(0, Audit::dropped),
        })
    }
}

/// What changed between two key sets, for the audit log: "added a; revoked b; changed c".
fn key_changes(old: &KeyIndex, new: &HashMap<[u8; 32], Arc<KeyState>>) -> String {
    let ids = |m: &HashMap<[u8; 32], Arc<KeyState>>| -> HashMap<String, KeyEntry> {
        m.values()
            .map(|s| (s.entry.id.clone(), s.entry.clone()))
            .collect()
    };
    let (before, after) = (ids(&old.by_digest), ids(new));
    let mut added: Vec<&str> = after
        .keys()
        .filter(|k| !before.contains_key(*k))
        .map(String::as_str)
        .collect();
    let mut revoked: Vec<&str> = before
        .keys()
        .filter(|k| !after.contains_key(*k))
        .map(String::as_str)
        .collect();
    let mut changed: Vec<&str> = after
        .iter()
        .filter(|(k, e)| before.get(*k).is_some_and(|b| b != *e))
        .map(|(k, _)| k.as_str())
        .collect();
    let mut parts = Vec::new();
    for (what, list) in [
        ("added", &mut added),
        ("revoked", &mut revoked),
        ("changed", &mut changed),
    ] {
        if !list.is_empty() {
            list.sort_unstable();
            parts.push(format!("{what} {}", list.join(", ")));
        }
    }
    parts.join("; ")
}

/// The credential in `Authorization: Bearer KEY` or `X-API-Key: KEY` header values.
pub fn credential<'a>(authorization: Option<&'a str>, api_key: Option<&'a str>) -> Option<&'a str> {
    authorization
        .and_then(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(rest.trim())
        })
        .or(api_key.map(str::trim))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_file(dir: &Path, entries: Vec<KeyEntry>) -> (PathBuf, Vec<String>) {
        let path = dir.join("keys.toml");
        let mut f = KeyFile::default();
        let keys = entries.into_iter().map(|e| f.create(e).unwrap()).collect();
        f.save(&path).unwrap();
        (path, keys)
    }

    fn entry(id: &str, role: Role, models: Option<&[&str]>) -> KeyEntry {
        KeyEntry {
            id: id.into(),
            sha256: String::new(),
            role,
            models: models.map(|m| m.iter().map(|s| s.to_string()).collect()),
            rate: None,
            burst: None,
            quota: None,
            concurrency: None,
            certificate: None,
            created: String::new(),
        }
    }

    #[test]
    fn client_certificates_stand_for_the_key_that_names_them() {
        let d = tempfile::tempdir().unwrap();
        let mut e = entry("edge", Role::Infer, None);
        e.certificate = Some("edge.factory.local".into());
        let (path, _) = key_file(d.path(), vec![e]);
        let auth = Auth::with_keys(&path, None, None).unwrap();
        let peer = |names: &[&str]| Peer {
            addr: None,
            cert_names: names.iter().map(|s| s.to_string()).collect(),
        };
        let who = auth
            .authenticate_peer(None, &peer(&["x", "edge.factory.local"]))
            .unwrap();
        assert_eq!(&*who.id, "edge");
        assert!(matches!(
            auth.authenticate_peer(None, &peer(&["someone.else"])),
            Err(Denied::Unauthenticated(m)) if m.contains("stands for no key")
        ));
        assert!(auth.authenticate_peer(None, &peer(&[])).is_err());
    }

    #[test]
    fn roles_allow_their_groups_and_keys_their_models() {
        assert!(Role::Reader.allows(Group::Read) && !Role::Reader.allows(Group::Infer));
        assert!(Role::Infer.allows(Group::Infer) && !Role::Infer.allows(Group::Operate));
        assert!(Role::Operator.allows(Group::Operate) && !Role::Operator.allows(Group::Admin));
        assert!(Role::Admin.allows(Group::Admin) && Role::Reader.allows(Group::Public));
        let d = tempfile::tempdir().unwrap();
        let (path, keys) = key_file(
            d.path(),
            vec![
                entry("shop", Role::Infer, Some(&["fashion_mnist_image"])),
                entry("ops", Role::Operator, None),
            ],
        );
        let auth = Auth::with_keys(&path, None, None).unwrap();
        let shop = auth.authenticate(Some(&keys[0])).unwrap();
        assert_eq!(&*shop.id, "shop");
        auth.authorize(&shop, Group::Infer, Some("fashion_mnist_image"))
            .unwrap();
        assert!(matches!(
            auth.authorize(&shop, Group::Infer, Some("iris")),
            Err(Denied::Forbidden(m)) if m.contains("iris")
        ));
        assert!(matches!(
            auth.authorize(&shop, Group::Operate, None),
            Err(Denied::Forbidden(_))
        ));
        let ops = auth.authenticate(Some(&keys[1])).unwrap();
        auth.authorize(&ops, Group::Operate, Some("iris")).unwrap();
        assert!(matches!(
            auth.authenticate(None),
            Err(Denied::Unauthenticated(_))
        ));
        assert!(matches!(
            auth.authenticate(Some("inf_forged")),
            Err(Denied::Unauthenticated(m)) if m.contains("not valid")
        ));
        assert!(matches!(
            auth.authenticate(Some(&keys[1][..20])),
            Err(Denied::Unauthenticated(_))
        ));
    }

    #[test]
    fn an_open_server_lets_everyone_do_everything() {
        let auth = Auth::open(None);
        let who = auth.authenticate(None).unwrap();
        auth.authorize(&who, Group::Admin, Some("any")).unwrap();
        assert!(!auth.required());
    }

    #[test]
    fn credentials_come_from_bearer_or_x_api_key() {
        assert_eq!(credential(Some("Bearer abc"), None), Some("abc"));
        assert_eq!(credential(Some("bearer  abc "), None), Some("abc"));
        assert_eq!(credential(Some("Basic xyz"), Some("k")), Some("k"));
        assert_eq!(credential(None, Some(" k ")), Some("k"));
        assert_eq!(credential(None, None), None);
    }

    #[test]
    fn edits_to_the_key_file_take_effect_and_keep_limits_of_unchanged_keys() {
        let d = tempfile::tempdir().unwrap();
        let mut limited = entry("slow", Role::Infer, None);
        limited.rate = Some("1/h".into());
        let (path, keys) = key_file(d.path(), vec![limited, entry("b", Role::Reader, None)]);
        let auth = Auth::with_keys(&path, None, None).unwrap();
        let slow = auth.authenticate(Some(&keys[0])).unwrap();
        auth.admit(&slow, 1).unwrap();
        assert!(matches!(auth.admit(&slow, 1), Err(Denied::Limited(_))));
        // Revoke b; slow's bucket stays empty across the reload.
        let mut f = KeyFile::load(&path, false).unwrap();
        f.revoke("b").unwrap();
        f.save(&path).unwrap();
        auth.reload().unwrap();
        assert!(auth.authenticate(Some(&keys[1])).is_err());
        let slow = auth.authenticate(Some(&keys[0])).unwrap();
        assert!(matches!(auth.admit(&slow, 1), Err(Denied::Limited(_))));
        // A broken edit keeps the keys that were loaded.
        std::fs::write(&path, "not toml [").unwrap();
        assert!(auth.reload().is_err());
        assert!(auth.authenticate(Some(&keys[0])).is_ok());
    }
}
