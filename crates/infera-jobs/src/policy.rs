//! What a job may read: files under the server's input roots, and http(s) URLs on its
//! allow-list. Paths are judged by where they really lead (symlinks resolved), URLs after
//! normalisation (so `..`, `%2e%2e`, user-info and look-alike hosts cannot slip through).

use std::path::{Component, Path, PathBuf};

use reqwest::Url;

use crate::JobError;

#[derive(Debug, Clone, Default)]
pub struct InputPolicy {
    /// Canonical (symlinks resolved) folders.
    roots: Vec<PathBuf>,
    urls: Vec<Url>,
}

/// Why one input was refused.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Refusal {
    pub input: String,
    pub reason: String,
    /// Refused by policy (403) rather than malformed (400).
    #[serde(skip)]
    pub forbidden: bool,
}

pub fn is_url(input: &str) -> bool {
    let lower = input.get(..8).unwrap_or(input).to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://") || input.contains("://")
}

impl InputPolicy {
    /// `roots` must exist; `urls` are prefixes such as `https://images.example.com/catalog/`.
    pub fn new(roots: &[PathBuf], urls: &[String]) -> Result<InputPolicy, JobError> {
        let mut canonical = Vec::new();
        for r in roots {
            let c = std::fs::canonicalize(r)
                .map_err(|e| JobError::Config(format!("batch input root {}: {e}", r.display())))?;
            if !c.is_dir() {
                return Err(JobError::Config(format!(
                    "batch input root {} is not a directory",
                    r.display()
                )));
            }
            canonical.push(c);
        }
        let mut parsed = Vec::new();
        for u in urls {
            let p = Url::parse(u)
                .map_err(|e| JobError::Config(format!("--batch-allow-url {u}: not a URL ({e})")))?;
            if !matches!(p.scheme(), "http" | "https") || p.host_str().is_none() {
                return Err(JobError::Config(format!(
                    "--batch-allow-url {u}: give an http(s) URL prefix with a host"
                )));
            }
            parsed.push(p);
        }
        Ok(InputPolicy {
            roots: canonical,
            urls: parsed,
        })
    }

    fn roots_text(&self) -> String {
        self.roots
            .iter()
            .map(|r| r.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Whether a canonical path lies inside a root.
    pub fn contains(&self, canonical: &Path) -> bool {
        self.roots.iter().any(|r| canonical.starts_with(r))
    }

    /// Checks one input as given in a request. A path that does not exist yet passes when
    /// it would lie under a root; the job reports it missing.
    pub fn check(&self, input: &str) -> Result<(), Refusal> {
        let refuse = |reason: String, forbidden: bool| Refusal {
            input: input.to_string(),
            reason,
            forbidden,
        };
        if is_url(input) {
            return self
                .check_url(input)
                .map(|_| ())
                .map_err(|(r, f)| refuse(r, f));
        }
        if self.roots.is_empty() {
            return Err(refuse(
                "this server reads no local paths: start it with --batch-input-root DIR".into(),
                true,
            ));
        }
        let path = Path::new(input);
        if !path.is_absolute() {
            return Err(refuse(
                "give an absolute path (or an http(s) URL)".into(),
                false,
            ));
        }
        if path.components().any(|c| c == Component::ParentDir) {
            return Err(refuse(
                "'..' is not allowed in input paths (path traversal)".into(),
                true,
            ));
        }
        let lexically_inside = self.roots.iter().any(|r| path.starts_with(r))
            || path.parent().is_some_and(|p| self.resolves_inside(p));
        match std::fs::canonicalize(path) {
            Ok(real) if self.contains(&real) => Ok(()),
            Ok(_) if lexically_inside => Err(refuse(
                format!(
                    "is a symbolic link that leads outside the allowed input roots ({})",
                    self.roots_text()
                ),
                true,
            )),
            Err(_) if self.resolves_inside(path) => Ok(()),
            _ => Err(refuse(
                format!("is outside the allowed input roots ({})", self.roots_text()),
                true,
            )),
        }
    }

    /// Whether the deepest part of `path` that exists resolves inside a root (for paths
    /// that do not exist yet, or whose last part is a link).
    fn resolves_inside(&self, path: &Path) -> bool {
        path.ancestors()
            .find(|a| a.exists())
            .and_then(|a| std::fs::canonicalize(a).ok())
            .is_some_and(|real| self.contains(&real))
    }

    /// Parses and checks a URL; the error says why and whether it is a policy refusal.
    pub fn check_url(&self, input: &str) -> Result<Url, (String, bool)> {
        let url = Url::parse(input).map_err(|e| (format!("not a valid URL: {e}"), false))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err((
                format!(
                    "scheme '{}' is not fetched: use http or https",
                    url.scheme()
                ),
                true,
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(("URLs with user names or passwords are refused".into(), true));
        }
        if self.urls.is_empty() {
            return Err((
                "this server fetches no URLs: start it with --batch-allow-url PREFIX".into(),
                true,
            ));
        }
        if !self.allows_url(&url) {
            return Err((
                "is not on the server's URL allow-list (--batch-allow-url)".into(),
                true,
            ));
        }
        Ok(url)
    }

    /// Same scheme, host and port as an allowed prefix, and a path inside its path.
    pub fn allows_url(&self, url: &Url) -> bool {
        if !url.username().is_empty() || url.password().is_some() {
            return false;
        }
        self.urls.iter().any(|p| {
            p.scheme() == url.scheme()
                && p.host_str() == url.host_str()
                && p.port_or_known_default() == url.port_or_known_default()
                && path_within(p.path(), url.path())
        })
    }
}

fn path_within(prefix: &str, path: &str) -> bool {
    if prefix.ends_with('/') {
        path.starts_with(prefix)
    } else {
        path == prefix
            || path
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('/'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(root: &Path) -> InputPolicy {
        InputPolicy::new(
            &[root.to_path_buf()],
            &[
                "http://127.0.0.1:9000/images/".into(),
                "https://cdn.example.com/catalog".into(),
            ],
        )
        .unwrap()
    }

    #[test]
    fn paths_must_stay_under_the_roots() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("in");
        let outside = d.path().join("secret");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("x.png"), b"x").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("escape")).unwrap();
        std::os::unix::fs::symlink(outside.join("x.png"), root.join("link.png")).unwrap();
        let p = policy(&root);
        let s = |p: &Path| p.to_str().unwrap().to_string();

        assert!(p.check(&s(&root)).is_ok());
        assert!(p.check(&s(&root.join("sub"))).is_ok());
        assert!(
            p.check(&s(&root.join("not-yet"))).is_ok(),
            "missing but inside: the job reports it"
        );

        let trav = format!("{}/../secret", s(&root));
        let e = p.check(&trav).unwrap_err();
        assert!(e.forbidden && e.reason.contains("traversal"), "{e:?}");
        let e = p.check(&s(&outside)).unwrap_err();
        assert!(e.forbidden && e.reason.contains("outside"), "{e:?}");
        let e = p.check(&s(&root.join("escape"))).unwrap_err();
        assert!(e.reason.contains("symbolic link"), "{e:?}");
        let e = p.check(&s(&root.join("link.png"))).unwrap_err();
        assert!(e.reason.contains("symbolic link"), "{e:?}");
        assert!(
            p.check(&s(&root.join("escape/missing.png"))).is_err(),
            "a missing file behind an escaping link"
        );
        let e = p.check("relative/dir").unwrap_err();
        assert!(!e.forbidden && e.reason.contains("absolute"), "{e:?}");
        assert!(p.check("/etc/passwd").unwrap_err().forbidden);
        let none = InputPolicy::new(&[], &[]).unwrap();
        assert!(
            none.check(&s(&root))
                .unwrap_err()
                .reason
                .contains("--batch-input-root")
        );
    }

    #[test]
    fn urls_must_match_an_allowed_prefix() {
        let d = tempfile::tempdir().unwrap();
        let p = policy(d.path());
        for ok in [
            "http://127.0.0.1:9000/images/a.png",
            "http://127.0.0.1:9000/images/x/y.png?size=2",
            "https://cdn.example.com/catalog",
            "https://cdn.example.com/catalog/shoe.jpg",
            "HTTPS://CDN.EXAMPLE.COM:443/catalog/shoe.jpg",
        ] {
            assert!(p.check(ok).is_ok(), "{ok} should pass");
        }
        for bad in [
            "http://127.0.0.1:9000/other/a.png",
            "http://127.0.0.1:9001/images/a.png",
            "https://127.0.0.1:9000/images/a.png",
            "http://127.0.0.1:9000/images/../secret.png",
            "http://127.0.0.1:9000/images/%2e%2e/secret.png",
            "http://127.0.0.1:9000@evil.com/images/a.png",
            "http://user:pw@127.0.0.1:9000/images/a.png",
            "https://cdn.example.com/catalogue/x.png",
            "https://cdn.example.com.evil.com/catalog/x.png",
            "file:///etc/passwd",
            "ftp://127.0.0.1:9000/images/a.png",
        ] {
            let e = p.check(bad).unwrap_err();
            assert!(e.forbidden, "{bad}: {e:?}");
        }
        assert!(!p.check("http://[::1").unwrap_err().forbidden);
    }
}
