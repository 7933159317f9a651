//! Opening sealed files: record by record as a `Read`, whole, or just checking them.

use std::io::{self, Read};
use std::sync::Arc;

use ring::aead::{Aad, LessSafeKey, NONCE_LEN, Nonce};

use crate::{HEADER_LEN, Keyring, MAGIC, MAX_RECORD, SealError, TAG_LEN, aad};

/// What a check of a sealed file found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    pub key_id: u32,
    pub file_id: [u8; 16],
    /// Whole, authentic records.
    pub records: u64,
    /// The last record carries the end mark.
    pub ended: bool,
    /// Plaintext bytes in all records.
    pub plaintext: u64,
}

/// Reads a sealed stream and yields its plaintext; any damage is an `InvalidData` error.
pub struct SealReader<R: Read> {
    inner: R,
    name: String,
    key: Arc<LessSafeKey>,
    key_id: u32,
    file_id: [u8; 16],
    seq: u64,
    /// Whether the stream must end with the end mark (a finished file) or may stop after
    /// any whole record (a file still being appended to).
    require_end: bool,
    ended: bool,
    buf: Vec<u8>,
    pos: usize,
    plain_len: usize,
}

fn damaged(name: &str, why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        SealError::Damaged(format!("{name} ({why})")),
    )
}

/// Reads exactly `buf.len()` bytes, or reports a clean end (Ok(false)) when none are left.
fn read_full_or_end(r: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "cut short")),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

impl<R: Read> SealReader<R> {
    pub fn new(
        mut inner: R,
        keyring: &Keyring,
        name: &str,
        require_end: bool,
    ) -> Result<SealReader<R>, SealError> {
        let mut header = [0u8; HEADER_LEN];
        match read_full_or_end(&mut inner, &mut header) {
            Ok(true) if header.starts_with(MAGIC) => {}
            Ok(_) => return Err(SealError::NotSealed(name.into())),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(SealError::NotSealed(name.into()));
            }
            Err(e) => return Err(SealError::Io(name.into(), e)),
        }
        let key_id = u32::from_le_bytes(header[8..12].try_into().unwrap_or_default());
        let file_id: [u8; 16] = header[12..28].try_into().unwrap_or_default();
        Ok(SealReader {
            inner,
            name: name.into(),
            key: keyring.opening(key_id, name)?,
            key_id,
            file_id,
            seq: 0,
            require_end,
            ended: false,
            buf: Vec::new(),
            pos: 0,
            plain_len: 0,
        })
    }

    /// Opens the next record into `buf`; Ok(false) at the (proper) end.
    fn next_record(&mut self) -> io::Result<bool> {
        let mut len = [0u8; 4];
        if !read_full_or_end(&mut self.inner, &mut len)
            .map_err(|_| damaged(&self.name, "a record is cut short"))?
        {
            if self.ended || !self.require_end {
                return Ok(false);
            }
            return Err(damaged(&self.name, "it ends before its last record"));
        }
        if self.ended {
            return Err(damaged(&self.name, "data after the last record"));
        }
        let n = u32::from_le_bytes(len) as usize;
        if !(TAG_LEN..=MAX_RECORD).contains(&n) {
            return Err(damaged(&self.name, "a record length is impossible"));
        }
        let mut head = [0u8; 1 + NONCE_LEN];
        self.buf.resize(n, 0);
        let whole = read_full_or_end(&mut self.inner, &mut head)
            .and_then(|ok| Ok(ok && read_full_or_end(&mut self.inner, &mut self.buf)?))
            .map_err(|_| damaged(&self.name, "a record is cut short"))?;
        if !whole {
            return Err(damaged(&self.name, "a record is cut short"));
        }
        let last = match head[0] {
            0 => false,
            1 => true,
            _ => return Err(damaged(&self.name, "a record's end mark is impossible")),
        };
        let nonce: [u8; NONCE_LEN] = head[1..].try_into().unwrap_or_default();
        let plain_len = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(&self.file_id, self.key_id, self.seq, last)),
                &mut self.buf,
            )
            .map_err(|_| {
                damaged(
                    &self.name,
                    &format!("record {} fails authentication", self.seq),
                )
            })?
            .len();
        self.plain_len = plain_len;
        self.pos = 0;
        self.seq += 1;
        self.ended = last;
        Ok(true)
    }

    /// Reads to the end, checking every record; what was found.
    pub fn check(mut self) -> io::Result<Scan> {
        let mut plaintext = 0u64;
        while self.next_record()? {
            plaintext += self.plain_len as u64;
        }
        Ok(Scan {
            key_id: self.key_id,
            file_id: self.file_id,
            records: self.seq,
            ended: self.ended,
            plaintext,
        })
    }
}

impl<R: Read> Read for SealReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos >= self.plain_len {
            if !self.next_record()? {
                return Ok(0);
            }
        }
        let n = out.len().min(self.plain_len - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Checks a sealed stream (ended or not) and counts its records.
pub fn scan(keyring: &Keyring, reader: impl Read, name: &str) -> Result<Scan, SealError> {
    SealReader::new(reader, keyring, name, false)?
        .check()
        .map_err(|e| unwrap_io(name, e))
}

/// The plaintext of a whole sealed file (which must carry its end mark).
pub fn open_all(keyring: &Keyring, bytes: &[u8], name: &str) -> Result<Vec<u8>, SealError> {
    let mut r = SealReader::new(bytes, keyring, name, true)?;
    let mut out = Vec::with_capacity(bytes.len());
    r.read_to_end(&mut out).map_err(|e| unwrap_io(name, e))?;
    Ok(out)
}

/// The SealError inside an io::Error made by this module, or the io::Error itself.
fn unwrap_io(name: &str, e: io::Error) -> SealError {
    if e.get_ref().is_some_and(|i| i.is::<SealError>()) {
        match e.into_inner().map(|i| i.downcast::<SealError>()) {
            Some(Ok(s)) => *s,
            _ => SealError::Damaged(name.into()),
        }
    } else {
        SealError::Io(name.into(), e)
    }
}
