//! A job's inputs, as given, become the list of files the run reads, in order: each input
//! in request order, a folder's images sorted by relative path. Anything unusable becomes
//! an error row with its reason, so every input is accounted for exactly once.

use std::path::Path;

use infera_batch::{InputFile, list_images};

use crate::policy::{InputPolicy, is_url};

/// Local paths: folders walked, every file (links included) checked against the roots.
fn resolve_path(policy: &InputPolicy, input: &str, recursive: bool) -> Vec<InputFile> {
    if let Err(r) = policy.check(input) {
        return vec![InputFile::invalid(input, r.reason)];
    }
    let given = Path::new(input);
    let real = match std::fs::canonicalize(given) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return vec![InputFile::invalid(input, "does not exist")];
        }
        Err(e) => return vec![InputFile::invalid(input, format!("cannot open: {e}"))],
    };
    if !real.is_dir() {
        return vec![InputFile::path(input, real)];
    }
    let files = match list_images(&real, recursive) {
        Ok(f) => f,
        Err(e) => return vec![InputFile::invalid(input, e.to_string())],
    };
    if files.is_empty() {
        return vec![InputFile::invalid(
            input,
            format!(
                "no images ({}) in this folder{}",
                infera_batch::IMAGE_EXTENSIONS.join(", "),
                if recursive {
                    ""
                } else {
                    " (sub-folders are read with \"recursive\": true)"
                }
            ),
        )];
    }
    files
        .into_iter()
        .map(|rel| {
            let name = given.join(&rel).to_string_lossy().into_owned();
            match std::fs::canonicalize(real.join(&rel)) {
                Ok(file) if policy.contains(&file) => InputFile::path(name, file),
                Ok(_) => InputFile::invalid(
                    name,
                    "is a symbolic link that leads outside the allowed input roots",
                ),
                Err(e) => InputFile::invalid(name, format!("cannot open: {e}")),
            }
        })
        .collect()
}

/// Resolves every input: folders are listed, URLs are checked and left to be fetched when
/// the run reaches them. More than `max_files` files in all is an error.
pub async fn resolve(
    inputs: &[String],
    recursive: bool,
    policy: &InputPolicy,
    max_files: usize,
) -> Result<Vec<InputFile>, String> {
    let mut out = Vec::new();
    for input in inputs {
        let part = if is_url(input) {
            vec![match policy.check_url(input) {
                Ok(u) => InputFile::url(input.clone(), u.to_string()),
                Err((reason, _)) => InputFile::invalid(input.clone(), reason),
            }]
        } else {
            let policy = policy.clone();
            let owned = input.clone();
            tokio::task::spawn_blocking(move || resolve_path(&policy, &owned, recursive))
                .await
                .unwrap_or_else(|e| {
                    vec![InputFile::invalid(
                        input.clone(),
                        format!("cannot read: {e}"),
                    )]
                })
        };
        out.extend(part);
        if out.len() > max_files {
            return Err(format!(
                "the inputs hold more than {max_files} files (the per-job limit, --job-max-inputs); split the job"
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use infera_batch::Source;

    #[test]
    fn folders_expand_in_order_and_escaping_links_become_errors() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("in");
        std::fs::create_dir_all(root.join("a/sub")).unwrap();
        std::fs::create_dir_all(root.join("empty")).unwrap();
        std::fs::write(root.join("a/2.png"), b"x").unwrap();
        std::fs::write(root.join("a/1.png"), b"x").unwrap();
        std::fs::write(root.join("a/sub/3.png"), b"x").unwrap();
        std::fs::write(d.path().join("secret.png"), b"x").unwrap();
        std::os::unix::fs::symlink(d.path().join("secret.png"), root.join("a/4.png")).unwrap();
        let policy = InputPolicy::new(std::slice::from_ref(&root), &[]).unwrap();
        let a = format!("{}/a", root.display());
        let files = resolve_path(&policy, &a, true);
        let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                format!("{a}/1.png"),
                format!("{a}/2.png"),
                format!("{a}/4.png"),
                format!("{a}/sub/3.png")
            ]
        );
        assert!(
            matches!(&files[2].source, Source::Invalid(r) if r.contains("outside")),
            "{:?}",
            files[2]
        );
        assert_eq!(resolve_path(&policy, &a, false).len(), 3);
        let missing = resolve_path(&policy, &format!("{}/nope", root.display()), true);
        assert_eq!(missing[0].source, Source::Invalid("does not exist".into()));
        let empty = resolve_path(&policy, &format!("{}/empty", root.display()), true);
        assert!(matches!(&empty[0].source, Source::Invalid(r) if r.contains("no images")));
        let out = resolve_path(
            &policy,
            &d.path().join("secret.png").to_string_lossy(),
            true,
        );
        assert!(matches!(&out[0].source, Source::Invalid(r) if r.contains("outside")));
    }
}
