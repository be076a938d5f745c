//! Every metric a crate registers has its row in docs/metrics.md, and every row there names a
//! metric some crate registers. SREs build dashboards and alerts from that page; a metric missing
//! from it is one nobody finds, a row for a metric that no longer exists is an alert that never
//! fires. The names are read from the sources (the first argument of an `Opts::new`,
//! `HistogramOpts::new`, `IntGauge::new`, ... call), so a vector nobody has touched yet counts too
//! (a scrape would leave it out).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn rust_files(dir: &Path, into: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, into);
        } else if path.extension().is_some_and(|e| e == "rs") {
            into.push(path);
        }
    }
}

/// The names passed as the first argument of a `...::new(` call, starting with `regrelay_`.
fn registered_in(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("\"regrelay_") {
        let before = rest[..at].trim_end();
        let name: String = rest[at + 1..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        if before.ends_with("::new(") && rest[at + 1 + name.len()..].starts_with('"') {
            names.push(name.clone());
        }
        rest = &rest[at + 1 + name.len()..];
    }
    names
}

fn registered() -> BTreeSet<String> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(workspace().join("crates")).unwrap() {
        let src = entry.unwrap().path().join("src");
        if src.is_dir() {
            rust_files(&src, &mut files);
        }
    }
    files
        .iter()
        .flat_map(|file| registered_in(&std::fs::read_to_string(file).unwrap()))
        .collect()
}

/// The metric names of the table rows (`| \`regrelay_...\` | type | ...`).
fn documented() -> BTreeSet<String> {
    let page = std::fs::read_to_string(workspace().join("docs/metrics.md")).unwrap();
    page.lines()
        .filter_map(|line| line.strip_prefix("| `regrelay_"))
        .filter_map(|rest| Some(format!("regrelay_{}", rest.split_once('`')?.0)))
        .collect()
}

#[test]
fn the_reader_finds_a_registration_and_nothing_else() {
    let text = r#"
        let a = IntCounterVec::new(
            Opts::new(
                "regrelay_deliveries_total",
                "Delivery attempts.",
            ),
            &["outcome"],
        )?;
        let b = IntGauge::new("regrelay_targets_open", "Open targets.")?;
        let not_a_metric = "regrelay_schema_migrations";
        let series = format!("{}", "regrelay_deliveries_total_sum");
    "#;
    assert_eq!(
        registered_in(text),
        ["regrelay_deliveries_total", "regrelay_targets_open"]
    );
}

#[test]
fn every_registered_metric_has_a_row_in_docs_metrics_md_and_every_row_a_metric() {
    let registered = registered();
    let documented = documented();
    assert!(registered.len() > 40, "{registered:?}");
    let undocumented: Vec<_> = registered.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "registered but without a row in docs/metrics.md: {undocumented:?}"
    );
    let stale: Vec<_> = documented.difference(&registered).collect();
    assert!(
        stale.is_empty(),
        "rows in docs/metrics.md for metrics nothing registers: {stale:?}"
    );
}
