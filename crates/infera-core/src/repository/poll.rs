//! Poll mode: what changed in the repository's folders since the last look. A model's
//! fingerprint covers the names, sizes and modification times of the files under its folder
//! (config.pbtxt, labels, every version folder and its files), so new, removed and changed
//! versions, config edits, new models and removed models are all seen.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;
use std::time::UNIX_EPOCH;

use super::ModelRepository;

/// Folders deeper than this and entries past this count are not looked at: a repository is
/// shallow, and a hostile one must not make every poll walk forever.
const MAX_DEPTH: usize = 4;
const MAX_ENTRIES: usize = 10_000;

fn walk(dir: &Path, rel: &Path, depth: usize, seen: &mut usize, h: &mut DefaultHasher) {
    walk_skipping(dir, rel, depth, seen, h, None);
}

fn walk_skipping(
    dir: &Path,
    rel: &Path,
    depth: usize,
    seen: &mut usize,
    h: &mut DefaultHasher,
    skip: Option<&str>,
) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = rd.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        *seen += 1;
        if *seen > MAX_ENTRIES {
            return;
        }
        let name = e.file_name();
        if skip.is_some_and(|s| name == s) {
            continue;
        }
        let path = rel.join(&name);
        let Ok(meta) = e.metadata() else { continue };
        path.hash(h);
        meta.len().hash(h);
        meta.is_dir().hash(h);
        if let Ok(m) = meta.modified() {
            m.duration_since(UNIX_EPOCH).unwrap_or_default().hash(h);
        }
        if meta.is_dir() && depth < MAX_DEPTH {
            walk(&e.path(), &path, depth + 1, seen, h);
        }
    }
}

/// The fingerprint of a model's files other than its config.pbtxt.
pub(super) fn files_fingerprint(dir: &Path) -> u64 {
    let mut h = DefaultHasher::new();
    let mut seen = 0;
    walk_skipping(
        dir,
        Path::new(""),
        1,
        &mut seen,
        &mut h,
        Some("config.pbtxt"),
    );
    h.finish()
}

fn fingerprint(dir: &Path) -> u64 {
    let mut h = DefaultHasher::new();
    let mut seen = 0;
    walk(dir, Path::new(""), 1, &mut seen, &mut h);
    h.finish()
}

/// Models to load (new or changed) and to unload (their folder is gone).
#[derive(Debug, Default, PartialEq)]
pub struct Changes {
    pub load: Vec<String>,
    pub unload: Vec<String>,
}

/// The repository as last seen.
pub struct Poller {
    last: BTreeMap<String, u64>,
}

impl Poller {
    /// Remembers the repository as it is now (after the initial load).
    pub fn new(repo: &ModelRepository) -> Poller {
        let mut p = Poller {
            last: BTreeMap::new(),
        };
        p.changes(repo);
        p
    }

    /// What changed since the last call. Blocking (reads the file system).
    pub fn changes(&mut self, repo: &ModelRepository) -> Changes {
        let Ok(names) = repo.model_names() else {
            // An unreadable repository is not an empty one: change nothing.
            return Changes::default();
        };
        let now: BTreeMap<String, u64> = names
            .into_iter()
            .map(|n| {
                let f = fingerprint(&repo.root().join(&n));
                (n, f)
            })
            .collect();
        let mut c = Changes::default();
        for (name, f) in &now {
            if self.last.get(name) != Some(f) {
                c.load.push(name.clone());
            }
        }
        let present: BTreeSet<&String> = now.keys().collect();
        for name in self.last.keys() {
            if !present.contains(name) {
                c.unload.push(name.clone());
            }
        }
        self.last = now;
        c
    }
}
