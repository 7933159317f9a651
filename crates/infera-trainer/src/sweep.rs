//! `infera sweep`: a grid search. Every combination of the `--grid` axes trains once, on the
//! same validation split, and the table ranks them by validation accuracy (never by test).

use std::fmt::Write as _;

use anyhow::bail;

use crate::{Common, load_recipe, options, run};

/// `lr=0.1,0.01` → ("lr", ["0.1", "0.01"]).
fn parse_axis(spec: &str) -> anyhow::Result<(String, Vec<String>)> {
    let Some((key, values)) = spec.split_once('=') else {
        bail!("--grid {spec:?}: expected key=value1,value2,...");
    };
    let values: Vec<String> = values
        .split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(String::from)
        .collect();
    if key.trim().is_empty() || values.is_empty() {
        bail!("--grid {spec:?}: expected key=value1,value2,...");
    }
    Ok((key.trim().to_string(), values))
}

/// Every combination, first axis slowest.
fn combinations(axes: &[(String, Vec<String>)]) -> Vec<Vec<(String, String)>> {
    let mut out: Vec<Vec<(String, String)>> = vec![Vec::new()];
    for (key, values) in axes {
        out = out
            .into_iter()
            .flat_map(|prefix| {
                values.iter().map(move |v| {
                    let mut c = prefix.clone();
                    c.push((key.clone(), v.clone()));
                    c
                })
            })
            .collect();
    }
    out
}

struct Trial {
    name: String,
    settings: Vec<(String, String)>,
    result: Result<(f64, usize, f64), String>,
}

pub fn run(common: &Common, grid: &[String]) -> anyhow::Result<()> {
    let axes = grid
        .iter()
        .map(|g| parse_axis(g))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let combos = combinations(&axes);
    // Check every combination's config before spending hours on the first ones.
    let mut prepared = Vec::new();
    for combo in &combos {
        let mut c = Common {
            overrides: common.overrides.clone(),
            ..common.clone()
        };
        c.overrides
            .extend(combo.iter().map(|(k, v)| format!("{k}={v}")));
        let (recipe, table) = load_recipe(&c)?;
        prepared.push((combo.clone(), recipe, table));
    }
    let sweep_id = format!("sweep-{}", chrono::Local::now().format("%Y%m%d-%H%M%S"));
    let sweep_dir = common.runs_dir.join(&sweep_id);
    println!("sweep {}: {} trials", sweep_dir.display(), prepared.len());
    let mut trials = Vec::new();
    for (i, (combo, recipe, table)) in prepared.into_iter().enumerate() {
        let name = format!("trial-{:02}", i + 1);
        let label: Vec<String> = combo.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("\n== {name}/{}: {}", combos.len(), label.join(" "));
        let result = run::run(
            &recipe,
            &table,
            options(common, sweep_dir.join(&name), false),
        )
        .map(|r| (r.best_val_accuracy, r.best_epoch, r.seconds_per_epoch))
        .map_err(|e| format!("{e:#}"));
        if let Err(e) = &result {
            eprintln!("{name} failed: {e}");
        }
        trials.push(Trial {
            name,
            settings: combo,
            result,
        });
    }
    trials.sort_by(|a, b| {
        let key = |t: &Trial| t.result.as_ref().map(|r| r.0).unwrap_or(f64::NEG_INFINITY);
        key(b).total_cmp(&key(a))
    });
    let keys: Vec<&str> = axes.iter().map(|(k, _)| k.as_str()).collect();
    let mut md = format!(
        "| rank | trial | {} | val accuracy | best epoch | s/epoch |\n",
        keys.join(" | ")
    );
    let _ = writeln!(md, "|---|---|{}---|---|---|", "---|".repeat(keys.len()));
    let mut csv = format!(
        "rank,trial,{},val_accuracy,best_epoch,seconds_per_epoch\n",
        keys.join(",")
    );
    for (rank, t) in trials.iter().enumerate() {
        let values: Vec<&str> = t.settings.iter().map(|(_, v)| v.as_str()).collect();
        match &t.result {
            Ok((acc, epoch, secs)) => {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {:.2}% | {epoch} | {secs:.1} |",
                    rank + 1,
                    t.name,
                    values.join(" | "),
                    100.0 * acc
                );
                let _ = writeln!(
                    csv,
                    "{},{},{},{acc:.6},{epoch},{secs:.2}",
                    rank + 1,
                    t.name,
                    values.join(",")
                );
            }
            Err(e) => {
                let _ = writeln!(
                    md,
                    "| - | {} | {} | failed: {e} | | |",
                    t.name,
                    values.join(" | ")
                );
                let _ = writeln!(csv, "-,{},{},,,", t.name, values.join(","));
            }
        }
    }
    std::fs::create_dir_all(&sweep_dir)?;
    std::fs::write(sweep_dir.join("results.md"), &md)?;
    std::fs::write(sweep_dir.join("results.csv"), &csv)?;
    println!(
        "\n{md}\nresults: {}",
        sweep_dir.join("results.md").display()
    );
    if trials.iter().all(|t| t.result.is_err()) {
        bail!("every trial failed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_axes_multiply_out_in_order() {
        let axes = vec![
            parse_axis("optimizer.lr=0.1,0.01").unwrap(),
            parse_axis("train.batch_size=32,64,128").unwrap(),
        ];
        let c = combinations(&axes);
        assert_eq!(c.len(), 6);
        assert_eq!(
            c[0],
            vec![
                ("optimizer.lr".into(), "0.1".into()),
                ("train.batch_size".into(), "32".into())
            ]
        );
        assert_eq!(
            c[5],
            vec![
                ("optimizer.lr".into(), "0.01".into()),
                ("train.batch_size".into(), "128".into())
            ]
        );
        assert!(parse_axis("lr").is_err());
        assert!(parse_axis("lr=").is_err());
    }
}
