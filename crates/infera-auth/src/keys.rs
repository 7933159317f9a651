//! API keys: a TOML file of entries that hold only the SHA-256 of each key with its
//! settings. `infera keys create` makes a random key, prints it once and stores its hash.
//!
//! ```toml
//! [[keys]]
//! id = "shop-frontend"
//! sha256 = "9f86d0…"
//! role = "infer"
//! models = ["fashion_mnist_image"]   # optional: only these models
//! rate = "50/s"                      # optional: token bucket refill
//! burst = 100                        # optional: bucket size (default: one second of rate)
//! quota = "100000/day"               # optional: per day or month, survives restarts
//! concurrency = 16                   # optional: requests in progress at once
//! certificate = "edge.factory.local" # optional: a client certificate name standing for it
//! created = "2026-12-01T10:00:00Z"
//! ```

use std::path::Path;

use base64::Engine;
use ring::rand::SecureRandom;
use serde::{Deserialize, Serialize};

use crate::{AuthError, Role};

/// Keys are this prefix and 32 random bytes, base64url: 256 bits, so a plain SHA-256 of
/// the key is a safe thing to store and look up (no salt or slow hash is needed).
pub const KEY_PREFIX: &str = "inf_";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    pub id: String,
    pub sha256: String,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// A client certificate name (subject CN or SAN) that stands for this key, with mTLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub created: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    #[serde(default)]
    pub keys: Vec<KeyEntry>,
}

/// The SHA-256 of a presented key, as stored (lower-case hex).
pub fn hash(key: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A new random key.
pub fn generate() -> Result<String, AuthError> {
    let mut raw = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut raw)
        .map_err(|_| AuthError::Config("the system's random source failed".into()))?;
    Ok(format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    ))
}

impl KeyFile {
    /// Reads and checks a key file; a missing file is an empty one (for `keys create`).
    pub fn load(path: &Path, missing_ok: bool) -> Result<KeyFile, AuthError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if missing_ok && e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(KeyFile::default());
            }
            Err(e) => {
                return Err(AuthError::Config(format!(
                    "cannot read the key file {}: {e}",
                    path.display()
                )));
            }
        };
        let file: KeyFile = toml::from_str(&text).map_err(|e| {
            AuthError::Config(format!("key file {}: {}", path.display(), e.message()))
        })?;
        file.check()
            .map_err(|e| AuthError::Config(format!("key file {}: {e}", path.display())))?;
        Ok(file)
    }

    fn check(&self) -> Result<(), String> {
        let mut ids = std::collections::HashSet::new();
        for k in &self.keys {
            if k.id.is_empty() || k.id.len() > 100 || k.id.chars().any(char::is_control) {
                return Err(format!(
                    "key id '{}' must be 1 to 100 printable characters",
                    k.id.escape_debug()
                ));
            }
            if !ids.insert(&k.id) {
                return Err(format!("key id '{}' appears twice", k.id));
            }
            if k.sha256.len() != 64 || !k.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("key '{}': sha256 must be 64 hex digits", k.id));
            }
            crate::limits::Limits::from_entry(k).map_err(|e| format!("key '{}': {e}", k.id))?;
        }
        Ok(())
    }

    /// Writes the file atomically, readable by its owner only.
    pub fn save(&self, path: &Path) -> Result<(), AuthError> {
        self.check().map_err(AuthError::Config)?;
        let text = format!(
            "# infera API keys: SHA-256 hashes only. Manage with `infera keys create|list|revoke`.\n{}",
            toml::to_string_pretty(self)
                .map_err(|e| AuthError::Config(format!("cannot write the key file: {e}")))?
        );
        let tmp = path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts.open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| {
            AuthError::Config(format!("cannot write the key file {}: {e}", path.display()))
        })
    }

    /// Adds a key with these settings; returns the key itself (shown once, never stored).
    pub fn create(&mut self, mut entry: KeyEntry) -> Result<String, AuthError> {
        if self.keys.iter().any(|k| k.id == entry.id) {
            return Err(AuthError::Config(format!(
                "a key with id '{}' exists; revoke it first or pick another id",
                entry.id
            )));
        }
        let key = generate()?;
        entry.sha256 = hash(&key);
        self.keys.push(entry);
        self.check().map_err(AuthError::Config)?;
        Ok(key)
    }

    pub fn revoke(&mut self, id: &str) -> Result<(), AuthError> {
        let before = self.keys.len();
        self.keys.retain(|k| k.id != id);
        if self.keys.len() == before {
            return Err(AuthError::Config(format!("no key with id '{id}'")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str) -> KeyEntry {
        KeyEntry {
            id: id.into(),
            sha256: String::new(),
            role: Role::Infer,
            models: Some(vec!["m".into()]),
            rate: Some("20/s".into()),
            burst: Some(5),
            quota: Some("1000/day".into()),
            concurrency: None,
            certificate: None,
            created: "now".into(),
        }
    }

    #[test]
    fn keys_are_random_stored_as_hashes_and_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("keys.toml");
        let mut f = KeyFile::load(&path, true).unwrap();
        let a = f.create(entry("a")).unwrap();
        let b = f.create(entry("b")).unwrap();
        assert!(a.starts_with(KEY_PREFIX) && a.len() > 40 && a != b);
        assert!(f.create(entry("a")).is_err(), "ids are unique");
        f.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains(&a) && text.contains(&hash(&a)),
            "only the hash is stored"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let mut back = KeyFile::load(&path, false).unwrap();
        assert_eq!(back, f);
        back.revoke("a").unwrap();
        assert!(back.revoke("a").is_err());
        assert_eq!(back.keys.len(), 1);
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("keys.toml");
        for (text, needle) in [
            (
                "[[keys]]\nid = \"a\"\nsha256 = \"xx\"\nrole = \"infer\"\n",
                "64 hex",
            ),
            ("[[keys]]\nid = \"a\"\nsha256 = \"", "key file"),
            (
                &format!(
                    "[[keys]]\nid = \"a\"\nsha256 = \"{}\"\nrole = \"boss\"\n",
                    "0".repeat(64)
                ),
                "boss",
            ),
            (
                &format!(
                    "[[keys]]\nid = \"a\"\nsha256 = \"{}\"\nrole = \"infer\"\nrate = \"fast\"\n",
                    "0".repeat(64)
                ),
                "rate",
            ),
            (
                &format!(
                    "[[keys]]\nid = \"a\"\nsha256 = \"{}\"\nrole = \"infer\"\nextra = 1\n",
                    "0".repeat(64)
                ),
                "extra",
            ),
        ] {
            std::fs::write(&path, text).unwrap();
            let e = KeyFile::load(&path, false).unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
        assert!(KeyFile::load(&d.path().join("missing.toml"), false).is_err());
    }
}
