//! One batch run: list (or reload) the inputs, classify them in ordered chunks, append each
//! chunk's rows durably, checkpoint, and at the end move the finished files into place.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use infera_core::classify::{image_classifier, labels_of};
use infera_core::{ErrorKind, InferenceServer};

use crate::BatchError;
use crate::checkpoint::{Checkpoint, RunPaths, sync_dir, write_atomic};
use crate::inputs::{InputFile, Inputs, Source, list_images};
use crate::output::{Format, error_row, errors_header};
use crate::sink::Sink;

#[derive(Debug, Clone)]
pub struct BatchOptions {
    pub model: String,
    /// On `resume` the frozen list of the interrupted run is used, not this.
    pub inputs: Inputs,
    pub output: PathBuf,
    /// Default: `<output stem>.errors.csv` beside the output.
    pub errors: Option<PathBuf>,
    pub format: Format,
    /// Inputs per chunk: the unit of checkpointing. Their requests run concurrently and
    /// the model's dynamic batcher batches them.
    pub batch_size: usize,
    /// Chunks in flight at once.
    pub workers: usize,
    pub resume: bool,
    pub overwrite: bool,
    /// Scheduler priority level of the requests (0 = the model's default,
    /// `infera_core::scheduler::BACKGROUND` behind all online requests).
    pub priority: usize,
    /// Reads URL inputs; without it they become error rows.
    pub fetch: Option<Arc<dyn Fetch>>,
    /// An input larger than this (file or download) becomes an error row unread.
    pub max_file_bytes: u64,
    /// Encrypts the results, errors and input list at rest (AES-256-GCM records).
    pub seal: Option<Arc<infera_seal::Keyring>>,
}

/// Fetches a URL input when the run reaches it; the error is the input's error row.
pub trait Fetch: Send + Sync {
    fn fetch<'a>(&'a self, url: &'a str) -> futures::future::BoxFuture<'a, Result<Bytes, String>>;
}

impl std::fmt::Debug for dyn Fetch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Fetch")
    }
}

/// Bytes of images a group holds at once: past it the group is sent in parts, so a chunk
/// of large files (or downloads) cannot hold much more than this in memory.
const GROUP_BYTES: usize = 64 << 20;
/// Inputs read (or downloaded) at once within a group.
const READ_AHEAD: usize = 4;
/// Local files read by one blocking task, at most, and the bytes after which it stops.
const READ_SLICE: usize = 16;
const READ_SLICE_BYTES: usize = 8 << 20;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    pub total: usize,
    pub done: usize,
    pub succeeded: usize,
    pub failed: usize,
}

impl From<&Checkpoint> for Progress {
    fn from(ck: &Checkpoint) -> Progress {
        Progress {
            total: ck.total,
            done: ck.done,
            succeeded: ck.succeeded,
            failed: ck.failed,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Summary {
    pub progress: Progress,
    /// Inputs already done by an earlier, interrupted run.
    pub resumed_from: usize,
    pub output: PathBuf,
    pub errors: PathBuf,
}

enum Outcome {
    Row(Vec<u8>),
    Failed(Vec<u8>),
}

/// The model's class labels, checked once before any work.
fn model_labels(server: &InferenceServer, model: &str) -> Result<Arc<Vec<String>>, BatchError> {
    let m = server
        .model(model)
        .map_err(|e| BatchError::Model(e.message))?;
    let (_, output) = image_classifier(&m).map_err(|why| {
        BatchError::Model(format!(
            "model '{model}' {why}; batch prediction needs one image (BYTES) input and class scores out"
        ))
    })?;
    let dims = output.reshape.as_ref().unwrap_or(&output.dims);
    if dims.iter().any(|&d| d < 0) {
        return Err(BatchError::Model(format!(
            "model '{model}': output '{}' has a free dimension {dims:?}; the CSV needs a fixed number of classes",
            output.name
        )));
    }
    let classes = dims.iter().product::<i64>().max(1) as usize;
    Ok(labels_of(output, classes))
}

/// Classifies one input's bytes; a problem of the image becomes its error row, problems
/// of the model or server (unloaded, failing) stop the run so it can be resumed later.
async fn classify_one(
    server: &InferenceServer,
    opts: &BatchOptions,
    input: &InputFile,
    data: Bytes,
) -> Result<Outcome, BatchError> {
    let name = &input.name;
    let mut backoff = Duration::from_millis(5);
    loop {
        match server
            .classify_image(&opts.model, None, data.clone(), opts.priority)
            .await
        {
            Ok(p) => return Ok(Outcome::Row(opts.format.row(name, &p))),
            Err(e) if e.kind == ErrorKind::InvalidArgument || e.kind == ErrorKind::TooLarge => {
                return Ok(Outcome::Failed(error_row(name, &e.message)));
            }
            Err(e) if e.kind == ErrorKind::QueueFull && backoff < Duration::from_secs(5) => {
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
            Err(e) => {
                return Err(BatchError::Model(format!(
                    "stopped at {name}: {}; the progress so far is saved, rerun with --resume",
                    e.message
                )));
            }
        }
    }
}

/// The bytes of one input: a file (at most `max_file_bytes`, checked before reading) or a
/// URL fetched now. The error is the input's error row.
async fn read_input(opts: &BatchOptions, root: &Path, input: &InputFile) -> Result<Bytes, String> {
    match &input.source {
        Source::Invalid(reason) => Err(reason.clone()),
        Source::Url(url) => match &opts.fetch {
            Some(f) => f.fetch(url).await,
            None => Err("URL inputs are not read here".into()),
        },
        Source::Path(rel) => {
            let (path, limit) = (root.join(rel), opts.max_file_bytes);
            // One hop to the blocking pool per file (open, size check and read together).
            tokio::task::spawn_blocking(move || read_file(&path, limit))
                .await
                .map_err(|e| format!("cannot read: {e}"))?
        }
    }
}

/// Reads a regular file of at most `limit` bytes. The size is checked on the open handle, so
/// the file checked is the file read.
fn read_file(path: &Path, limit: u64) -> Result<Bytes, String> {
    use std::io::Read;
    let not_regular = || Err("is not a regular file".into());
    // A pipe or device would block the open or the read forever (or never end): checked on
    // the path before opening, then again on the handle.
    if !std::fs::metadata(path)
        .map_err(|e| format!("cannot read: {e}"))?
        .is_file()
    {
        return not_regular();
    }
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let meta = file.metadata().map_err(|e| format!("cannot read: {e}"))?;
    if !meta.is_file() {
        return not_regular();
    }
    if meta.len() > limit {
        return Err(format!(
            "is {} bytes, over the limit of {limit} bytes per input",
            meta.len()
        ));
    }
    let mut data = Vec::with_capacity(meta.len().min(limit) as usize);
    // A file that grew since the check is still read only up to the limit.
    file.take(limit)
        .read_to_end(&mut data)
        .map_err(|e| format!("cannot read: {e}"))?;
    if data.is_empty() {
        return Err("the image is empty: send the file's bytes".into());
    }
    Ok(Bytes::from(data))
}

/// The files of an all-local group, read in order by the blocking pool a slice at a time (up to
/// [`READ_SLICE`] files or [`READ_SLICE_BYTES`]): one hop per slice instead of one per file.
fn local_reads(
    root: &Path,
    group: &[InputFile],
    limit: u64,
) -> impl futures::Stream<Item = (usize, Result<Bytes, String>)> + Send + 'static {
    let files: std::collections::VecDeque<(usize, PathBuf)> = group
        .iter()
        .enumerate()
        .filter_map(|(i, f)| match &f.source {
            Source::Path(rel) => Some((i, root.join(rel))),
            _ => None,
        })
        .collect();
    futures::stream::unfold(files, move |mut files| async move {
        if files.is_empty() {
            return None;
        }
        let (slice, rest) = tokio::task::spawn_blocking(move || {
            let (mut slice, mut bytes) = (Vec::new(), 0usize);
            while slice.len() < READ_SLICE && bytes < READ_SLICE_BYTES {
                let Some((i, path)) = files.pop_front() else {
                    break;
                };
                let read = read_file(&path, limit);
                bytes += read.as_ref().map_or(0, Bytes::len);
                slice.push((i, read));
            }
            (slice, files)
        })
        .await
        .ok()?;
        Some((futures::stream::iter(slice), rest))
    })
    .flatten()
}

/// A stream closure taking a borrowed item makes the whole run's future fail the `Send`
/// check of `tokio::spawn` (rust-lang/rust#102211), so callers map over indices.
/// A chunk goes to the model in requests of up to `max_batch` images, so each ensemble
/// step runs once per group instead of once per image.
fn run_chunk<'a>(
    server: &'a InferenceServer,
    opts: &'a BatchOptions,
    root: &'a Path,
    part: &'a [InputFile],
    max_batch: usize,
) -> futures::future::BoxFuture<'a, Result<Vec<Outcome>, BatchError>> {
    Box::pin(async move {
        let groups = part
            .chunks(max_batch.max(1))
            .map(|g| run_group(server, opts, root, g));
        let results = futures::future::join_all(groups).await;
        let mut out = Vec::with_capacity(part.len());
        for r in results {
            out.extend(r?);
        }
        Ok(out)
    })
}

/// The readable images of `group` go to the model in as few requests as its batch size
/// and [`GROUP_BYTES`] allow; if the model refuses one (a bad image among them), each of
/// its images is retried alone so only the bad ones become error rows.
async fn run_group(
    server: &InferenceServer,
    opts: &BatchOptions,
    root: &Path,
    group: &[InputFile],
) -> Result<Vec<Outcome>, BatchError> {
    let mut outcomes: Vec<Option<Outcome>> = (0..group.len()).map(|_| None).collect();
    let mut reads = if group.iter().all(|f| matches!(f.source, Source::Path(_))) {
        local_reads(root, group, opts.max_file_bytes).boxed()
    } else {
        futures::stream::iter(0..group.len())
            .map(|i| async move { (i, read_input(opts, root, &group[i]).await) })
            .buffered(READ_AHEAD)
            .boxed()
    };
    let (mut images, mut at, mut held) = (Vec::new(), Vec::new(), 0usize);
    loop {
        let next = reads.next().await;
        let last = next.is_none();
        match next {
            Some((i, Ok(data))) => {
                held += data.len();
                images.push(data);
                at.push(i);
                if held < GROUP_BYTES {
                    continue;
                }
            }
            Some((i, Err(reason))) => {
                outcomes[i] = Some(Outcome::Failed(error_row(&group[i].name, &reason)));
                continue;
            }
            None => {}
        }
        let sent = std::mem::take(&mut images);
        let idx = std::mem::take(&mut at);
        held = 0;
        classify_part(server, opts, group, &sent, &idx, &mut outcomes).await?;
        if last {
            break;
        }
    }
    outcomes
        .into_iter()
        .map(|o| o.ok_or_else(|| BatchError::Model("lost a result".into())))
        .collect()
}

/// One request for `images` (inputs `at` of `group`), then each one left alone.
async fn classify_part(
    server: &InferenceServer,
    opts: &BatchOptions,
    group: &[InputFile],
    images: &[Bytes],
    at: &[usize],
    outcomes: &mut [Option<Outcome>],
) -> Result<(), BatchError> {
    if images.len() > 1 {
        let mut backoff = Duration::from_millis(5);
        loop {
            match server
                .classify_images(&opts.model, None, images.to_vec(), opts.priority)
                .await
            {
                Ok(preds) => {
                    for (&i, p) in at.iter().zip(&preds) {
                        outcomes[i] = Some(Outcome::Row(opts.format.row(&group[i].name, p)));
                    }
                    break;
                }
                Err(e) if e.kind == ErrorKind::QueueFull && backoff < Duration::from_secs(5) => {
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
                // A bad image, or anything else: the per-image path below sorts it out
                // (and stops the run on model failures, as it always did).
                Err(_) => break,
            }
        }
    }
    // Concurrently, so the dynamic batcher still batches them.
    let singles =
        at.iter()
            .zip(images)
            .filter(|(i, _)| outcomes[**i].is_none())
            .map(|(&i, data)| async move {
                (i, classify_one(server, opts, &group[i], data.clone()).await)
            });
    for (i, r) in futures::future::join_all(singles).await {
        outcomes[i] = Some(r?);
    }
    Ok(())
}

/// Moves the finished files into place, then removes the checkpoint. Safe to repeat: a
/// crash anywhere in here is finished by the next `--resume`.
fn finish(paths: &RunPaths, seal: Option<&Arc<infera_seal::Keyring>>) -> Result<(), BatchError> {
    for (partial, done) in [
        (&paths.output_partial, &paths.output),
        (&paths.errors_partial, &paths.errors),
    ] {
        if partial.exists() {
            if let Some(k) = seal {
                infera_seal::finalize(k, partial).map_err(|e| BatchError::Resume(e.to_string()))?;
            }
            std::fs::rename(partial, done)
                .map_err(BatchError::io("cannot move into place", done))?;
            sync_dir(done)?;
        }
    }
    for f in [&paths.files, &paths.checkpoint] {
        if f.exists() {
            std::fs::remove_file(f).map_err(BatchError::io("cannot remove", f))?;
        }
    }
    sync_dir(&paths.checkpoint)
}

/// Runs (or resumes) a batch. `on_progress` is called after every durable checkpoint;
/// setting `cancel` stops the run after the current chunk, leaving it resumable.
pub async fn run_batch(
    server: Arc<InferenceServer>,
    opts: &BatchOptions,
    mut on_progress: impl FnMut(&Progress),
    cancel: Option<&AtomicBool>,
) -> Result<Summary, BatchError> {
    let labels = model_labels(&server, &opts.model)?;
    let paths = RunPaths::new(&opts.output, opts.errors.as_deref());
    // The folder rows are relative to; empty for lists, whose paths stand alone.
    let input = match &opts.inputs {
        Inputs::Folder { dir, .. } => {
            if !dir.is_dir() {
                return Err(BatchError::Input(format!(
                    "input {} is not a directory",
                    dir.display()
                )));
            }
            std::fs::canonicalize(dir)
                .map_err(|e| BatchError::Input(format!("input {}: {e}", dir.display())))?
        }
        Inputs::List(_) => PathBuf::new(),
    };
    let recursive = matches!(
        opts.inputs,
        Inputs::Folder {
            recursive: true,
            ..
        }
    );

    let (ck, files, out, err) = if opts.resume {
        if !paths.checkpoint.exists() {
            return Err(BatchError::Resume(format!(
                "nothing to resume: no checkpoint {} (the run finished, or never started)",
                paths.checkpoint.display()
            )));
        }
        let ck = Checkpoint::load(&paths.checkpoint)?;
        if ck.model != opts.model || ck.input != input || ck.format != opts.format {
            return Err(BatchError::Resume(format!(
                "the interrupted run used model '{}', input {} and format {:?}; resume it with the same",
                ck.model,
                ck.input.display(),
                ck.format
            )));
        }
        let mut list =
            std::fs::read(&paths.files).map_err(BatchError::io("cannot read", &paths.files))?;
        if infera_seal::is_sealed(&list) {
            let k = opts.seal.as_ref().ok_or_else(|| {
                BatchError::Resume(format!(
                    "{} is encrypted: resume with the encryption key file",
                    paths.files.display()
                ))
            })?;
            list = infera_seal::open_all(k, &list, &paths.files.display().to_string())
                .map_err(|e| BatchError::Resume(e.to_string()))?;
        }
        let files: Vec<InputFile> = serde_json::from_slice(&list).map_err(|e| {
            BatchError::Resume(format!("{} is damaged: {e}", paths.files.display()))
        })?;
        if files.len() != ck.total {
            return Err(BatchError::Resume(format!(
                "{} lists {} files but the checkpoint says {}",
                paths.files.display(),
                files.len(),
                ck.total
            )));
        }
        if ck.done == ck.total && !paths.output_partial.exists() {
            // Killed while moving the finished files into place.
            finish(&paths, opts.seal.as_ref())?;
            let p = Progress::from(&ck);
            on_progress(&p);
            return Ok(Summary {
                progress: p,
                resumed_from: ck.done,
                output: paths.output,
                errors: paths.errors,
            });
        }
        let out = Sink::open(&paths.output_partial, ck.output_bytes, opts.seal.as_ref())?;
        let err = Sink::open(&paths.errors_partial, ck.errors_bytes, opts.seal.as_ref())?;
        (ck, files, out, err)
    } else {
        if paths.checkpoint.exists() {
            return Err(BatchError::Resume(format!(
                "an interrupted run left {}: add --resume to continue it, or delete it to start over",
                paths.checkpoint.display()
            )));
        }
        if paths.output.exists() && !opts.overwrite {
            return Err(BatchError::Input(format!(
                "{} exists; add --overwrite to replace it",
                paths.output.display()
            )));
        }
        let files: Vec<InputFile> = match &opts.inputs {
            Inputs::Folder { .. } => list_images(&input, recursive)?
                .into_iter()
                .map(|rel| InputFile::path(rel.to_string_lossy().into_owned(), rel))
                .collect(),
            Inputs::List(list) => list.clone(),
        };
        let list = serde_json::to_vec(&files)
            .map_err(|e| BatchError::Input(format!("file names: {e}")))?;
        let list = match &opts.seal {
            Some(k) => {
                infera_seal::seal_all(k, &list).map_err(|e| BatchError::Input(e.to_string()))?
            }
            None => list,
        };
        write_atomic(&paths.files, &list)?;
        let output_bytes = Sink::create(
            &paths.output_partial,
            &opts.format.header(&labels),
            opts.seal.as_ref(),
        )?;
        let errors_bytes =
            Sink::create(&paths.errors_partial, &errors_header(), opts.seal.as_ref())?;
        let ck = Checkpoint {
            version: 1,
            model: opts.model.clone(),
            input: input.clone(),
            recursive,
            format: opts.format,
            total: files.len(),
            done: 0,
            succeeded: 0,
            failed: 0,
            output_bytes,
            errors_bytes,
        };
        ck.save(&paths.checkpoint)?;
        let out = Sink::open(&paths.output_partial, ck.output_bytes, opts.seal.as_ref())?;
        let err = Sink::open(&paths.errors_partial, ck.errors_bytes, opts.seal.as_ref())?;
        (ck, files, out, err)
    };

    let resumed_from = ck.done;
    on_progress(&Progress::from(&ck));
    let chunk = opts.batch_size.max(1);
    let max_batch = server
        .model(&opts.model)
        .map_or(1, |m| m.max_batch_size().max(1));
    let (server_ref, input_ref, files_ref) = (&*server, input.as_path(), files.as_slice());
    // Owned items (chunk starts), not borrowed slices: see `run_chunk`.
    let mut chunks = futures::stream::iter((ck.done..files.len()).step_by(chunk))
        .map(|start| {
            let part = &files_ref[start..(start + chunk).min(files_ref.len())];
            run_chunk(server_ref, opts, input_ref, part, max_batch)
        })
        .buffered(opts.workers.max(1));
    // The durable writes (append, fsync, checkpoint) run on their own thread, so the next
    // chunks keep the model busy meanwhile; the stream is only polled from this task.
    // Room for many chunks: while one fsync runs, later chunks queue up and are committed
    // together by the next (group commit), so slow fsyncs don't throttle the model.
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<Outcome>>(opts.workers.max(1) * 16);
    let (ptx, mut prx) = tokio::sync::mpsc::unbounded_channel::<Result<Progress, BatchError>>();
    let writer_paths = paths.clone();
    let writer = std::thread::Builder::new()
        .name("batch-writer".into())
        .spawn(move || write_chunks(rx, ptx, ck, out, err, &writer_paths))
        .map_err(|e| BatchError::Model(format!("cannot start the writer thread: {e}")))?;
    let mut tx = Some(tx);
    let mut failure: Option<BatchError> = None;
    loop {
        tokio::select! {
            next = chunks.next(), if tx.is_some() => match next {
                Some(Ok(results)) => {
                    if let Some(t) = &tx
                        && t.send(results).await.is_err()
                    {
                        tx = None; // the writer stopped; its error comes through prx
                    }
                }
                Some(Err(e)) => {
                    failure = Some(e);
                    tx = None;
                }
                None => tx = None,
            },
            p = prx.recv() => match p {
                Some(Ok(p)) => {
                    on_progress(&p);
                    let cancelled = cancel.is_some_and(|c| c.load(Ordering::Relaxed));
                    if cancelled && p.done < p.total && failure.is_none() {
                        failure = Some(BatchError::Resume(format!(
                            "cancelled after {} of {} files; rerun with --resume to continue",
                            p.done, p.total
                        )));
                        tx = None;
                    }
                }
                Some(Err(e)) => {
                    failure.get_or_insert(e);
                    tx = None;
                }
                None => break,
            },
        }
    }
    drop(chunks);
    let ck = writer
        .join()
        .map_err(|_| BatchError::Model("the writer thread failed".into()))?;
    if let Some(e) = failure {
        return Err(e);
    }
    let ck = ck?;
    finish(&paths, opts.seal.as_ref())?;
    Ok(Summary {
        progress: Progress::from(&ck),
        resumed_from,
        output: paths.output,
        errors: paths.errors,
    })
}

/// Appends the rows of every chunk that has arrived, fsyncs once, checkpoints, reports
/// progress; returns the final checkpoint when the channel closes.
fn write_chunks(
    mut rx: tokio::sync::mpsc::Receiver<Vec<Outcome>>,
    progress: tokio::sync::mpsc::UnboundedSender<Result<Progress, BatchError>>,
    mut ck: Checkpoint,
    mut out: Sink,
    mut err: Sink,
    paths: &RunPaths,
) -> Result<Checkpoint, BatchError> {
    let mut write = |chunks: Vec<Vec<Outcome>>| -> Result<Progress, BatchError> {
        for r in chunks.iter().flatten() {
            match r {
                Outcome::Row(b) => {
                    out.push(b);
                    ck.succeeded += 1;
                }
                Outcome::Failed(b) => {
                    err.push(b);
                    ck.failed += 1;
                }
            }
        }
        ck.output_bytes += out.commit()?;
        ck.errors_bytes += err.commit()?;
        ck.done += chunks.iter().map(Vec::len).sum::<usize>();
        ck.save(&paths.checkpoint)?;
        Ok(Progress::from(&ck))
    };
    while let Some(first) = rx.blocking_recv() {
        let mut chunks = vec![first];
        while let Ok(more) = rx.try_recv() {
            chunks.push(more);
        }
        match write(chunks) {
            Ok(p) => {
                let _ = progress.send(Ok(p));
            }
            Err(e) => {
                let _ = progress.send(Err(BatchError::Resume(e.to_string())));
                return Err(e);
            }
        }
    }
    Ok(ck)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file of a group comes back once, in order, across slices; a folder, an
    /// oversized file and a missing one become errors in their places.
    #[test]
    fn local_reads_keep_order_across_slices_and_report_bad_files_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let mut group = Vec::new();
        for i in 0..READ_SLICE * 2 + 3 {
            let name = format!("{i:03}.png");
            let body: Vec<u8> = if i == 5 {
                vec![7; 200]
            } else {
                vec![i as u8 + 1; 4]
            };
            std::fs::write(dir.path().join(&name), body).unwrap();
            group.push(InputFile {
                name: name.clone(),
                source: Source::Path(name.into()),
            });
        }
        std::fs::create_dir(dir.path().join("folder")).unwrap();
        for name in ["folder", "missing.png"] {
            group.push(InputFile {
                name: name.into(),
                source: Source::Path(name.into()),
            });
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let reads: Vec<(usize, Result<Bytes, String>)> =
            rt.block_on(local_reads(dir.path(), &group, 100).collect());
        assert_eq!(
            reads.iter().map(|r| r.0).collect::<Vec<_>>(),
            (0..group.len()).collect::<Vec<_>>()
        );
        let n = READ_SLICE * 2 + 3;
        for (i, r) in &reads[..n] {
            match i {
                5 => assert!(r.as_ref().unwrap_err().contains("over the limit"), "{r:?}"),
                _ => assert_eq!(r.as_ref().unwrap().as_ref(), [*i as u8 + 1; 4]),
            }
        }
        assert!(
            reads[n]
                .1
                .as_ref()
                .unwrap_err()
                .contains("not a regular file")
        );
        assert!(reads[n + 1].1.as_ref().unwrap_err().contains("cannot read"));
    }
}
