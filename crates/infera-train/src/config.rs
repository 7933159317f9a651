//! Run configuration: TOML files that include others, plus Hydra-style overrides from the
//! command line.
//!
//! * `include = ["base.toml", ...]` (paths relative to the including file): included files
//!   are merged in order, then the file itself on top. Tables merge key by key.
//! * `optimizer.lr=0.0005`: sets an existing key; the value is read as TOML (number, bool,
//!   array, quoted string) or else taken as a string. An integer given for a float key is
//!   taken as a float.
//! * `model=resnet_small`: when `<config dir>/model/resnet_small.toml` exists, that file
//!   becomes the `model` table (a config group, as in Hydra).
//! * `+new.key=value` adds a key that does not exist; a plain override of an unknown key is
//!   an error that lists the keys there are, so typos don't pass silently.

use std::path::{Path, PathBuf};

use toml::{Table, Value};

use crate::TrainError;

fn err(msg: impl Into<String>) -> TrainError {
    TrainError::Config(msg.into())
}

/// Loads `path` with its includes, then applies `overrides` in order.
pub fn load(path: &Path, overrides: &[String]) -> Result<Table, TrainError> {
    let mut table = load_file(path, &mut Vec::new())?;
    let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    for o in overrides {
        apply_override(&mut table, &dir, o)?;
    }
    Ok(table)
}

fn load_file(path: &Path, stack: &mut Vec<PathBuf>) -> Result<Table, TrainError> {
    let canonical =
        std::fs::canonicalize(path).map_err(|e| err(format!("config {}: {e}", path.display())))?;
    if stack.contains(&canonical) {
        let chain: Vec<String> = stack.iter().map(|p| p.display().to_string()).collect();
        return Err(err(format!(
            "config {} includes itself (through {})",
            path.display(),
            chain.join(" -> ")
        )));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| err(format!("config {}: {e}", path.display())))?;
    let mut own: Table =
        toml::from_str(&text).map_err(|e| err(format!("config {}: {e}", path.display())))?;
    let includes = match own.remove("include") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(a)) => a
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                other => Err(err(format!(
                    "config {}: include entries must be file names, found {other}",
                    path.display()
                ))),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(err(format!(
                "config {}: include must be a file name or a list of them, found {other}",
                path.display()
            )));
        }
    };
    stack.push(canonical);
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut merged = Table::new();
    for inc in includes {
        let t = load_file(&dir.join(&inc), stack)?;
        merge(&mut merged, t);
    }
    stack.pop();
    merge(&mut merged, own);
    Ok(merged)
}

/// `over` on top of `base`: tables merge recursively, anything else replaces.
pub fn merge(base: &mut Table, over: Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(Value::Table(b)), Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

fn parse_value(raw: &str) -> Value {
    toml::from_str::<Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(raw.to_string()))
}

fn apply_override(table: &mut Table, dir: &Path, spec: &str) -> Result<(), TrainError> {
    let (key, raw) = spec.split_once('=').ok_or_else(|| {
        err(format!(
            "override '{spec}' is not KEY=VALUE (e.g. optimizer.lr=0.0005)"
        ))
    })?;
    let (adding, key) = match key.strip_prefix('+') {
        Some(k) => (true, k),
        None => (false, key),
    };
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(err(format!("override '{spec}': bad key '{key}'")));
    }
    let group = dir.join(parts.join("/")).join(format!("{raw}.toml"));
    let bare_word = !raw.is_empty()
        && raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let value = if bare_word && group.is_file() {
        Value::Table(load_file(&group, &mut Vec::new())?)
    } else {
        parse_value(raw)
    };
    let (last, parents) = parts.split_last().expect("split yields one part");
    let mut node = table;
    let mut path = String::new();
    for p in parents {
        path = if path.is_empty() {
            p.to_string()
        } else {
            format!("{path}.{p}")
        };
        if !node.contains_key(*p) {
            if !adding {
                return Err(unknown(node, &path, spec));
            }
            node.insert(p.to_string(), Value::Table(Table::new()));
        }
        node = match node.get_mut(*p) {
            Some(Value::Table(t)) => t,
            _ => return Err(err(format!("override '{spec}': {path} is not a table"))),
        };
    }
    let full = if path.is_empty() {
        last.to_string()
    } else {
        format!("{path}.{last}")
    };
    match node.get(*last) {
        None if !adding => Err(unknown(node, &full, spec)),
        Some(Value::Table(_)) if !matches!(value, Value::Table(_)) => Err(err(format!(
            "override '{spec}': {full} is a section; set {full}.KEY=VALUE, or add a file {}",
            group.display()
        ))),
        Some(Value::Float(_)) => match value {
            Value::Integer(i) => {
                node.insert(last.to_string(), Value::Float(i as f64));
                Ok(())
            }
            Value::Float(_) => {
                node.insert(last.to_string(), value);
                Ok(())
            }
            other => Err(err(format!(
                "override '{spec}': {full} is a number, not {other}"
            ))),
        },
        _ => {
            node.insert(last.to_string(), value);
            Ok(())
        }
    }
}

fn unknown(node: &Table, key: &str, spec: &str) -> TrainError {
    let mut keys: Vec<&str> = node.keys().map(String::as_str).collect();
    keys.sort_unstable();
    err(format!(
        "override '{spec}': no key {key} in the config (there: {}); prefix with + to add one",
        keys.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    fn files() -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "base.toml",
            "seed = 1\nepochs = 10\n[optimizer]\nname = \"adam\"\nlr = 0.001\nbetas = [0.9, 0.999]\n",
        );
        write(d.path(), "aug.toml", "[augment]\nflip = true\n");
        write(
            d.path(),
            "model/cnn.toml",
            "kind = \"cnn\"\ndropout = 0.3\n",
        );
        write(
            d.path(),
            "model/resnet_small.toml",
            "include = \"../blocks.toml\"\nkind = \"resnet\"\n",
        );
        write(d.path(), "blocks.toml", "blocks = [2, 2]\n");
        let main = write(
            d.path(),
            "run.toml",
            "include = [\"base.toml\", \"aug.toml\"]\nepochs = 20\n[optimizer]\nlr = 0.002\n[model]\nkind = \"cnn\"\ndropout = 0.5\n",
        );
        (d, main)
    }

    #[test]
    fn includes_merge_in_order_and_the_file_wins() {
        let (_d, main) = files();
        let t = load(&main, &[]).unwrap();
        assert_eq!(t["epochs"].as_integer(), Some(20));
        assert_eq!(t["seed"].as_integer(), Some(1));
        assert_eq!(
            t["optimizer"]["name"].as_str(),
            Some("adam"),
            "kept from base"
        );
        assert_eq!(t["optimizer"]["lr"].as_float(), Some(0.002));
        assert_eq!(t["augment"]["flip"].as_bool(), Some(true));
        assert!(t.get("include").is_none());
    }

    #[test]
    fn overrides_set_values_groups_and_refuse_typos() {
        let (d, main) = files();
        let o = |v: &[&str]| load(&main, &v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let t = o(&[
            "optimizer.lr=1",
            "epochs=3",
            "optimizer.name=sgd",
            "model=resnet_small",
            "+optimizer.momentum=0.9",
        ])
        .unwrap();
        assert_eq!(
            t["optimizer"]["lr"].as_float(),
            Some(1.0),
            "integer for a float key"
        );
        assert_eq!(t["epochs"].as_integer(), Some(3));
        assert_eq!(t["optimizer"]["name"].as_str(), Some("sgd"));
        assert_eq!(t["model"]["kind"].as_str(), Some("resnet"));
        assert_eq!(
            t["model"]["blocks"].as_array().map(Vec::len),
            Some(2),
            "group file includes"
        );
        assert!(
            t["model"].get("dropout").is_none(),
            "a group replaces the section"
        );
        assert_eq!(t["optimizer"]["momentum"].as_float(), Some(0.9));
        let t = o(&["optimizer.betas=[0.8, 0.99]", "augment.flip=false"]).unwrap();
        assert_eq!(t["optimizer"]["betas"][0].as_float(), Some(0.8));

        for (bad, want) in [
            (vec!["optimizer.lrr=0.1"], "no key optimizer.lrr"),
            (vec!["optimiser.lr=0.1"], "no key optimiser"),
            (vec!["epochs"], "KEY=VALUE"),
            (vec!["optimizer.lr=fast"], "is a number"),
            (vec!["model=unknown_net"], "is a section"),
            (vec!["a..b=1"], "bad key"),
        ] {
            let e = o(&bad).unwrap_err().to_string();
            assert!(e.contains(want), "{bad:?}: {e}");
        }
        let e = o(&["optimizer.lrr=0.1"]).unwrap_err().to_string();
        assert!(
            e.contains("betas, lr, name"),
            "lists the keys there are: {e}"
        );

        write(d.path(), "loop.toml", "include = \"loop2.toml\"\n");
        write(d.path(), "loop2.toml", "include = \"loop.toml\"\n");
        let e = load(&d.path().join("loop.toml"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("includes itself"), "{e}");
        write(d.path(), "broken.toml", "epochs = \n");
        assert!(
            load(&d.path().join("broken.toml"), &[])
                .unwrap_err()
                .to_string()
                .contains("broken.toml")
        );
    }
}
