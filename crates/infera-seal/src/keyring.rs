//! Encryption keys: one key, or several with ids so old files stay readable after rotation.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use ring::aead::{AES_256_GCM, LessSafeKey, UnboundKey};

use crate::SealError;

pub struct Keyring {
    sealing: u32,
    keys: HashMap<u32, Arc<LessSafeKey>>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys themselves.
        let mut ids: Vec<_> = self.keys.keys().collect();
        ids.sort();
        f.debug_struct("Keyring")
            .field("sealing", &self.sealing)
            .field("ids", &ids)
            .finish()
    }
}

fn hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn aes_key(raw: &[u8; 32]) -> Arc<LessSafeKey> {
    // 32 bytes is always a valid AES-256 key.
    Arc::new(LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, raw).expect("AES-256 takes any 32-byte key"),
    ))
}

impl Keyring {
    /// One key (id 0).
    pub fn from_key(raw: &[u8; 32]) -> Keyring {
        Keyring {
            sealing: 0,
            keys: HashMap::from([(0, aes_key(raw))]),
        }
    }

    /// Reads a key file: 32 raw bytes (`openssl rand 32`), 64 hex digits
    /// (`openssl rand -hex 32`), or lines `ID HEX` (first line seals; `#` comments).
    pub fn load(path: &Path) -> Result<Keyring, SealError> {
        let bad = |why: &str| {
            SealError::Key(format!(
                "{}: {why}; write 32 random bytes (`openssl rand 32 > FILE`), 64 hex digits, or lines `ID HEX` for rotation",
                path.display()
            ))
        };
        let bytes = std::fs::read(path).map_err(|e| {
            SealError::Key(format!("cannot read the key file {}: {e}", path.display()))
        })?;
        if bytes.len() > 64 << 10 {
            return Err(bad("it is too large for a key file"));
        }
        if let Ok(raw) = <[u8; 32]>::try_from(bytes.as_slice())
            && hex32(std::str::from_utf8(&bytes).unwrap_or("")).is_none()
        {
            return Ok(Keyring::from_key(&raw));
        }
        let text =
            std::str::from_utf8(&bytes).map_err(|_| bad("it is neither 32 bytes nor text"))?;
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        if let [one] = lines.as_slice()
            && let Some(raw) = hex32(one)
        {
            return Ok(Keyring::from_key(&raw));
        }
        let mut keys = HashMap::new();
        let mut sealing = None;
        for line in lines {
            let (id, hex) = line
                .split_once(char::is_whitespace)
                .ok_or_else(|| bad("a line is not `ID HEX`"))?;
            let id: u32 = id.parse().map_err(|_| bad("a key id is not a number"))?;
            let raw = hex32(hex).ok_or_else(|| bad("a key is not 64 hex digits"))?;
            if keys.insert(id, aes_key(&raw)).is_some() {
                return Err(bad(&format!("key id {id} appears twice")));
            }
            sealing.get_or_insert(id);
        }
        let sealing = sealing.ok_or_else(|| bad("it holds no key"))?;
        Ok(Keyring { sealing, keys })
    }

    /// The key new files are sealed with.
    pub(crate) fn sealing(&self) -> (u32, Arc<LessSafeKey>) {
        (self.sealing, self.keys[&self.sealing].clone())
    }

    pub(crate) fn opening(&self, id: u32, name: &str) -> Result<Arc<LessSafeKey>, SealError> {
        self.keys
            .get(&id)
            .cloned()
            .ok_or_else(|| SealError::UnknownKey(name.into(), id))
    }
}
