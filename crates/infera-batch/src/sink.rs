//! A partial results file as the run appends to it: plain, or sealed (encrypted at rest)
//! one record per commit, so what a checkpoint vouches for is always whole records.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use infera_seal::{Keyring, SealWriter};

use crate::BatchError;
use crate::checkpoint::{reopen_truncated, write_atomic};

fn sealing(e: infera_seal::SealError) -> BatchError {
    BatchError::Resume(e.to_string())
}

pub(crate) struct Sink {
    file: File,
    path: PathBuf,
    sealer: Option<SealWriter>,
    pending: Vec<u8>,
}

impl Sink {
    /// Writes a new partial file holding `first` (the header row); returns its length.
    pub(crate) fn create(
        path: &Path,
        first: &[u8],
        seal: Option<&Arc<Keyring>>,
    ) -> Result<u64, BatchError> {
        let bytes = match seal {
            Some(k) => {
                let (mut w, mut head) = SealWriter::create(k).map_err(sealing)?;
                head.extend(w.record(first, false).map_err(sealing)?);
                head
            }
            None => first.to_vec(),
        };
        write_atomic(path, &bytes)?;
        Ok(bytes.len() as u64)
    }

    /// Opens a partial file for appending after cutting it back to `len` bytes.
    pub(crate) fn open(
        path: &Path,
        len: u64,
        seal: Option<&Arc<Keyring>>,
    ) -> Result<Sink, BatchError> {
        let file = reopen_truncated(path, len)?;
        let sealer = seal
            .map(|k| SealWriter::resume(k, path))
            .transpose()
            .map_err(sealing)?;
        Ok(Sink {
            file,
            path: path.to_path_buf(),
            sealer,
            pending: Vec::new(),
        })
    }

    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
    }

    /// Writes what was pushed (one sealed record) and syncs; returns the bytes written.
    pub(crate) fn commit(&mut self) -> Result<u64, BatchError> {
        if self.pending.is_empty() {
            return Ok(0);
        }
        let bytes = match &mut self.sealer {
            Some(w) => w.record(&self.pending, false).map_err(sealing)?,
            None => std::mem::take(&mut self.pending),
        };
        self.pending.clear();
        self.file
            .write_all(&bytes)
            .and_then(|_| self.file.sync_data())
            .map_err(BatchError::io("cannot write", &self.path))?;
        Ok(bytes.len() as u64)
    }
}
