//! `routes.toml`: the traffic routes (A/B splits, canaries, shadows) a server starts with.
//! Each table is a route, named as clients call it:
//!
//! ```toml
//! [fashion_mnist]
//! variants = [
//!   { name = "stable", version = 1, weight = 90 },
//!   { name = "candidate", version = 2, weight = 10 },
//! ]
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use infera_core::InferenceServer;
use infera_core::routing::{MAX_ROUTES, RouteSpec};
use tracing::{info, warn};

/// A routes file is configuration: a megabyte is far more than 64 routes take.
const MAX_ROUTES_FILE: u64 = 1 << 20;

/// `--routes`, else `routes.toml` in the repository when there is one.
pub fn file(flag: Option<&Path>, repository: &Path) -> Option<PathBuf> {
    match flag {
        Some(p) => Some(p.to_path_buf()),
        None => Some(repository.join("routes.toml")).filter(|p| p.is_file()),
    }
}

/// Parses the file; a broken file stops the start with its reason.
pub fn read(path: &Path) -> anyhow::Result<BTreeMap<String, RouteSpec>> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read routes file {}", path.display()))?;
    anyhow::ensure!(
        meta.len() <= MAX_ROUTES_FILE,
        "routes file {} is larger than {MAX_ROUTES_FILE} bytes",
        path.display()
    );
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read routes file {}", path.display()))?;
    let routes: BTreeMap<String, RouteSpec> = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("routes file {}: {}", path.display(), e.message()))?;
    anyhow::ensure!(
        routes.len() <= MAX_ROUTES,
        "routes file {} has {} routes; at most {MAX_ROUTES}",
        path.display(),
        routes.len()
    );
    for (name, spec) in &routes {
        spec.validate(name)
            .map_err(|e| anyhow::anyhow!("routes file {}: route '{name}': {e}", path.display()))?;
    }
    Ok(routes)
}

/// Sets every route whose models serve; a route over a model that failed to load is
/// skipped with a warning, as that model is.
pub fn apply(server: &InferenceServer, routes: BTreeMap<String, RouteSpec>) {
    for (name, spec) in routes {
        match server.set_route(&name, spec) {
            Ok(()) => info!(route = %name, "route set from the routes file"),
            Err(e) => warn!(route = %name, error = %e, "route not set"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_tables_and_refuses_mistakes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("routes.toml");
        std::fs::write(
            &p,
            r#"
[fashion_mnist]
variants = [
  { name = "stable", version = 1, weight = 90 },
  { name = "candidate", version = 2, weight = 10 },
]
[fashion_mnist.canary]
candidate = "candidate"
step_secs = 30
"#,
        )
        .unwrap();
        let routes = read(&p).unwrap();
        let r = &routes["fashion_mnist"];
        assert_eq!(r.variants[1].version, Some(2));
        assert_eq!(r.canary.as_ref().unwrap().step_secs, 30);
        for (text, want) in [
            ("[m]\nvariants = []", "1 to 16 variants"),
            (
                "[m]\nvariants = [{ name = \"a\", weight = 1, colour = 2 }]",
                "colour",
            ),
            ("[m", "routes file"),
        ] {
            std::fs::write(&p, text).unwrap();
            let err = read(&p).unwrap_err().to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
        assert_eq!(file(None, dir.path()), Some(p.clone()));
        std::fs::remove_file(&p).unwrap();
        assert_eq!(file(None, dir.path()), None);
    }
}
