//! Files a config names (labels, model files, warm-up data, backend parameters): resolved
//! inside the model's folder after symlinks, and read with a size bound.
//!
//! A config may come from a client, so the answer must not tell whether a file outside the
//! folder exists: every way out gets the same message.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use crate::config::limits::MAX_SIDE_FILE_BYTES;

/// Why a named file cannot be used; the message names only what the config said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRefusal(pub String);

fn outside(name: &str) -> FileRefusal {
    FileRefusal(format!(
        "'{}' must name a file inside the model's folder",
        name.escape_debug()
    ))
}

/// Resolves `name` (relative to `dir`, the model's folder) to a regular file inside `dir`.
pub fn confined(dir: &Path, name: &str) -> Result<PathBuf, FileRefusal> {
    if name.is_empty() || name.contains('\0') {
        return Err(FileRefusal("names no file".into()));
    }
    let rel = Path::new(name);
    if rel
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(outside(name));
    }
    let base = dir
        .canonicalize()
        .map_err(|_| FileRefusal("the model's folder cannot be read".into()))?;
    let joined = base.join(rel);
    match joined.canonicalize() {
        Ok(real) if real.starts_with(&base) => match std::fs::metadata(&real) {
            Ok(m) if m.is_file() => Ok(real),
            _ => Err(FileRefusal(format!(
                "'{}' is not a regular file",
                name.escape_debug()
            ))),
        },
        Ok(_) => Err(outside(name)),
        // A dangling link could point anywhere: say only what is true inside the folder.
        Err(_) if crosses_link(&base, rel) => Err(outside(name)),
        Err(_) => Err(FileRefusal(format!(
            "'{}' does not exist in the model's folder",
            name.escape_debug()
        ))),
    }
}

/// Whether any prefix of `rel` under `base` is a symbolic link.
fn crosses_link(base: &Path, rel: &Path) -> bool {
    let mut p = base.to_path_buf();
    for c in rel.components() {
        p.push(c);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
    false
}

/// Reads a side file, refusing one larger than `MAX_SIDE_FILE_BYTES`.
pub fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
    read_limited(path, MAX_SIDE_FILE_BYTES)
}

/// Reads at most `limit` bytes; a longer file is an error, not a truncation.
pub fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot open it: {}", e.kind()))?;
    let mut out = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("cannot read it: {}", e.kind()))?;
    if out.len() as u64 > limit {
        return Err(format!("it is larger than the limit of {limit} bytes"));
    }
    Ok(out)
}

/// A labels file: one label per line, inside the model's folder.
pub fn read_labels(dir: &Path, name: &str) -> Result<Vec<String>, String> {
    let path = confined(dir, name).map_err(|r| r.0)?;
    let bytes = read_bounded(&path).map_err(|e| format!("'{}': {e}", name.escape_debug()))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| format!("'{}' is not UTF-8 text", name.escape_debug()))?;
    Ok(text.lines().map(str::to_string).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_files_inside_the_folder_resolve_and_outside_ones_are_not_told_apart() {
        let d = tempfile::tempdir().unwrap();
        let model = d.path().join("m");
        std::fs::create_dir_all(model.join("sub")).unwrap();
        std::fs::write(model.join("labels.txt"), "a\nb\n").unwrap();
        std::fs::write(model.join("sub/l.txt"), "c\n").unwrap();
        std::fs::write(d.path().join("secret.txt"), "s\n").unwrap();
        std::os::unix::fs::symlink(d.path().join("secret.txt"), model.join("leak.txt")).unwrap();
        std::os::unix::fs::symlink(d.path().join("missing.txt"), model.join("dangling.txt"))
            .unwrap();
        std::os::unix::fs::symlink(d.path(), model.join("up")).unwrap();
        std::os::unix::fs::symlink(model.join("labels.txt"), model.join("inner.txt")).unwrap();

        assert!(confined(&model, "labels.txt").is_ok());
        assert!(confined(&model, "./sub/l.txt").is_ok());
        assert!(
            confined(&model, "inner.txt").is_ok(),
            "links inside are fine"
        );
        let secret = d.path().join("secret.txt").display().to_string();
        let missing = d.path().join("missing.txt").display().to_string();
        let refusals: Vec<FileRefusal> = [
            "../secret.txt",
            "../missing.txt",
            secret.as_str(),
            missing.as_str(),
            "leak.txt",
            "dangling.txt",
            "up/secret.txt",
            "up/missing.txt",
        ]
        .iter()
        .map(|n| confined(&model, n).unwrap_err())
        .collect();
        for r in &refusals {
            assert!(r.0.contains("must name a file inside"), "{r:?}");
        }
        assert!(
            confined(&model, "nope.txt")
                .unwrap_err()
                .0
                .contains("does not exist")
        );
        assert!(
            confined(&model, "sub")
                .unwrap_err()
                .0
                .contains("not a regular file")
        );
        assert_eq!(read_labels(&model, "labels.txt").unwrap(), ["a", "b"]);
    }

    #[test]
    fn large_files_are_refused_not_read_whole() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("big");
        std::fs::write(&p, vec![b'x'; 100]).unwrap();
        assert!(read_limited(&p, 10).unwrap_err().contains("larger than"));
        assert_eq!(read_limited(&p, 100).unwrap().len(), 100);
    }
}
