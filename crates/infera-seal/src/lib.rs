//! Encryption at rest with AES-256-GCM, in records that can be appended to and checked one
//! by one, so a crash-safe writer (batch results, fsync'd chunk by chunk) stays crash-safe.
//!
//! A sealed file is a header and records:
//!
//! ```text
//! header  "INFSEAL1" | key id (u32 LE) | file id (16 random bytes)          28 bytes
//! record  length n (u32 LE) | last (u8) | nonce (12 random bytes) | ciphertext + tag (n bytes)
//! ```
//!
//! Each record is authenticated with the file id, its position (sequence number) and whether
//! it is the last one, so a flipped byte, records swapped, moved between files or cut off the
//! end are all errors, never wrong data. Every write uses a fresh random 96-bit nonce.
//! A key file holds one key (32 raw bytes or 64 hex digits: key id 0) or several lines
//! `ID HEX` for rotation: the first line's key seals new files, every listed key opens old ones.

mod keyring;
mod read;

use std::io::Write;

use ring::aead::{Aad, LessSafeKey, NONCE_LEN, Nonce};
use ring::rand::{SecureRandom, SystemRandom};

pub use keyring::Keyring;
pub use read::{Scan, SealReader, open_all, scan};

pub const MAGIC: &[u8; 8] = b"INFSEAL1";
pub const HEADER_LEN: usize = 8 + 4 + 16;
const TAG_LEN: usize = 16;
/// Plaintext per record when sealing a whole file (records may be smaller; appends are).
pub const RECORD_PLAINTEXT: usize = 1 << 20;
/// A record claiming more than this is damage, not data (bounds the reader's allocation).
pub const MAX_RECORD: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("{0}")]
    Key(String),
    #[error("{0} is damaged or was tampered with (authentication failed); it cannot be trusted")]
    Damaged(String),
    #[error("{0} is sealed with key id {1}, which the key file does not hold")]
    UnknownKey(String, u32),
    #[error("{0} is not an infera-encrypted file")]
    NotSealed(String),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

/// Whether `bytes` start like a sealed file.
pub fn is_sealed(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

/// The authenticated data of record `seq` of a file.
fn aad(file_id: &[u8; 16], key_id: u32, seq: u64, last: bool) -> [u8; 29] {
    let mut a = [0u8; 29];
    a[..16].copy_from_slice(file_id);
    a[16..20].copy_from_slice(&key_id.to_le_bytes());
    a[20..28].copy_from_slice(&seq.to_le_bytes());
    a[28] = u8::from(last);
    a
}

/// Seals records of one file; keeps the file id and the next record's position.
pub struct SealWriter {
    key: std::sync::Arc<LessSafeKey>,
    key_id: u32,
    file_id: [u8; 16],
    seq: u64,
    rng: SystemRandom,
}

impl SealWriter {
    /// A new file: the writer and the header to write first.
    pub fn create(keyring: &Keyring) -> Result<(SealWriter, Vec<u8>), SealError> {
        let rng = SystemRandom::new();
        let mut file_id = [0u8; 16];
        rng.fill(&mut file_id)
            .map_err(|_| SealError::Key("the system's random source failed".into()))?;
        let (key_id, key) = keyring.sealing();
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&key_id.to_le_bytes());
        header.extend_from_slice(&file_id);
        Ok((
            SealWriter {
                key,
                key_id,
                file_id,
                seq: 0,
                rng,
            },
            header,
        ))
    }

    /// Continues a file of whole records (cut back to what a checkpoint vouches for):
    /// reads its header and counts (and checks) its records.
    pub fn resume(keyring: &Keyring, path: &std::path::Path) -> Result<SealWriter, SealError> {
        let name = path.display().to_string();
        let file = std::fs::File::open(path).map_err(|e| SealError::Io(name.clone(), e))?;
        let s = scan(keyring, std::io::BufReader::new(file), &name)?;
        if s.ended {
            return Err(SealError::Damaged(format!(
                "{name} (already ended, nothing may follow)"
            )));
        }
        Ok(SealWriter {
            key: keyring.opening(s.key_id, &name)?,
            key_id: s.key_id,
            file_id: s.file_id,
            seq: s.records,
            rng: SystemRandom::new(),
        })
    }

    /// One record of `plaintext`; `last` marks the end of the file.
    pub fn record(&mut self, plaintext: &[u8], last: bool) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| SealError::Key("the system's random source failed".into()))?;
        if plaintext.len() > MAX_RECORD - TAG_LEN {
            return Err(SealError::Key(
                "a record over 16 MiB; seal it in parts".into(),
            ));
        }
        let mut out = Vec::with_capacity(5 + NONCE_LEN + plaintext.len() + TAG_LEN);
        out.extend_from_slice(&((plaintext.len() + TAG_LEN) as u32).to_le_bytes());
        out.push(u8::from(last));
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(&self.file_id, self.key_id, self.seq, last)),
                &mut out[5 + NONCE_LEN..],
            )
            .map_err(|_| SealError::Key("encryption failed".into()))?;
        out.extend_from_slice(tag.as_ref());
        self.seq += 1;
        Ok(out)
    }
}

/// A whole file sealed: header, 1 MiB records, the last one marked.
pub fn seal_all(keyring: &Keyring, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
    let (mut w, mut out) = SealWriter::create(keyring)?;
    out.reserve(plaintext.len() + plaintext.len() / RECORD_PLAINTEXT * 32 + 64);
    let mut chunks = plaintext.chunks(RECORD_PLAINTEXT).peekable();
    if chunks.peek().is_none() {
        out.extend(w.record(&[], true)?);
    }
    while let Some(c) = chunks.next() {
        out.extend(w.record(c, chunks.peek().is_none())?);
    }
    Ok(out)
}

/// Ends an appendable sealed file (adds the last-record mark) unless it already ends;
/// safe to repeat after a crash.
pub fn finalize(keyring: &Keyring, path: &std::path::Path) -> Result<(), SealError> {
    let name = path.display().to_string();
    let io = |e| SealError::Io(name.clone(), e);
    let file = std::fs::File::open(path).map_err(io)?;
    if scan(keyring, std::io::BufReader::new(file), &name)?.ended {
        return Ok(());
    }
    let mut w = SealWriter::resume(keyring, path)?;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(io)?;
    f.write_all(&w.record(&[], true)?)
        .and_then(|_| f.sync_all())
        .map_err(io)
}

#[cfg(test)]
mod tests;
