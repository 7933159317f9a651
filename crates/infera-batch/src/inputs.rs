//! Which files a run reads, in which order.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::BatchError;

/// What a run reads.
#[derive(Debug, Clone)]
pub enum Inputs {
    /// The images in a folder, rows named by their path relative to it.
    Folder { dir: PathBuf, recursive: bool },
    /// An explicit list, rows in list order (the server's jobs: resolved paths and downloads).
    List(Vec<InputFile>),
}

/// One row of a run: the name written in the output, and where its bytes are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputFile {
    pub name: String,
    pub source: Source,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Relative paths are read from the folder of an [`Inputs::Folder`] run.
    Path(PathBuf),
    /// Known to be unusable before the run (missing, refused, failed download): becomes an
    /// error row with this reason, so every input is accounted for exactly once.
    Invalid(String),
    /// Fetched when the run reaches it (through [`crate::Fetch`]), never all up front.
    Url(String),
}

impl InputFile {
    pub fn path(name: impl Into<String>, path: impl Into<PathBuf>) -> InputFile {
        InputFile {
            name: name.into(),
            source: Source::Path(path.into()),
        }
    }

    pub fn url(name: impl Into<String>, url: impl Into<String>) -> InputFile {
        InputFile {
            name: name.into(),
            source: Source::Url(url.into()),
        }
    }

    pub fn invalid(name: impl Into<String>, reason: impl Into<String>) -> InputFile {
        InputFile {
            name: name.into(),
            source: Source::Invalid(reason.into()),
        }
    }
}

/// File extensions taken as images (case-insensitive); other files are skipped.
pub const IMAGE_EXTENSIONS: [&str; 6] = ["png", "jpg", "jpeg", "bmp", "webp", "gif"];

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// The images under `dir` as paths relative to it, sorted byte-wise: the order rows are
/// written in. Without `recursive` only the folder itself is read. Symlinks are followed
/// only for files (a link to a folder is not entered, so a run cannot loop).
pub fn list_images(dir: &Path, recursive: bool) -> Result<Vec<PathBuf>, BatchError> {
    if !dir.is_dir() {
        return Err(BatchError::Input(format!(
            "input {} is not a directory",
            dir.display()
        )));
    }
    let walker = walkdir::WalkDir::new(dir)
        .min_depth(1)
        .max_depth(if recursive { usize::MAX } else { 1 })
        .follow_links(false);
    let mut out = Vec::new();
    for entry in walker {
        let entry = entry.map_err(|e| {
            BatchError::Input(format!("cannot read input folder {}: {e}", dir.display()))
        })?;
        let path = entry.path();
        let is_file =
            entry.file_type().is_file() || (entry.file_type().is_symlink() && path.is_file());
        if is_file
            && is_image(path)
            && let Ok(rel) = path.strip_prefix(dir)
        {
            out.push(rel.to_path_buf());
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_images_sorted_and_respects_recursive() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("sub")).unwrap();
        for f in ["b.PNG", "a.jpg", "notes.txt", "sub/c.webp", "sub/z.bmp"] {
            std::fs::write(d.path().join(f), b"x").unwrap();
        }
        let flat = list_images(d.path(), false).unwrap();
        assert_eq!(flat, vec![PathBuf::from("a.jpg"), PathBuf::from("b.PNG")]);
        let all = list_images(d.path(), true).unwrap();
        assert_eq!(all.len(), 4);
        assert_eq!(all[2], PathBuf::from("sub/c.webp"));
        let e = list_images(&d.path().join("missing"), false).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
    }
}
