//! Guard rails for the code map (docs/architecture.md): dependency directions between the crates,
//! where the broker client and `anyhow` may appear, and no file-level import cycles inside a crate.
//! Each rule reads the sources, so a change that crosses a line fails here with what to move.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// Every crate under `crates/`: package name → (normal dependencies, dev-dependencies).
fn manifests() -> BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)> {
    let mut crates = BTreeMap::new();
    for entry in std::fs::read_dir(workspace().join("crates")).unwrap() {
        let path = entry.unwrap().path().join("Cargo.toml");
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let manifest: toml::Value = toml::from_str(&text).unwrap();
        let names = |table: &str| -> BTreeSet<String> {
            manifest
                .get(table)
                .and_then(toml::Value::as_table)
                .map(|deps| deps.keys().cloned().collect())
                .unwrap_or_default()
        };
        let name = manifest["package"]["name"].as_str().unwrap().to_owned();
        crates.insert(name, (names("dependencies"), names("dev-dependencies")));
    }
    crates
}

/// Which regrelay crates each crate may depend on (normal dependencies). A crate not listed here
/// fails the test: add it with its allowed directions.
const ALLOWED: &[(&str, &[&str])] = &[
    ("regrelay-events", &[]),
    ("regrelay-producer", &["regrelay-events"]),
    ("regrelay-history", &["regrelay-events", "regrelay-targets"]),
    (
        "regrelay-dead-letters",
        &["regrelay-events", "regrelay-producer", "regrelay-history"],
    ),
    (
        "regrelay-consumer",
        &[
            "regrelay-events",
            "regrelay-targets",
            "regrelay-producer",
            "regrelay-history",
            "regrelay-dead-letters",
        ],
    ),
    (
        "regrelay-api",
        &[
            "regrelay-events",
            "regrelay-producer",
            "regrelay-history",
            "regrelay-dead-letters",
            "regrelay-consumer",
        ],
    ),
    (
        "regrelay",
        &[
            "regrelay-events",
            "regrelay-producer",
            "regrelay-history",
            "regrelay-dead-letters",
            "regrelay-consumer",
            "regrelay-api",
        ],
    ),
    (
        "regrelay-bench",
        &[
            "regrelay-events",
            "regrelay-producer",
            "regrelay-history",
            "regrelay-consumer",
        ],
    ),
    ("regrelay-testkit", &["regrelay-producer"]),
    ("regrelay-targets", &["regrelay-events"]),
];

/// Crates that may speak AMQP themselves (everyone else goes through `producer`).
const LAPIN_ALLOWED: &[&str] = &[
    "regrelay-producer",
    "regrelay-consumer",
    "regrelay-dead-letters",
    "regrelay-testkit",
    "regrelay-bench",
];

/// `anyhow` is for a binary's edge; libraries return `thiserror` types.
const ANYHOW_ALLOWED: &[&str] = &["regrelay", "regrelay-bench"];

#[test]
fn dependencies_point_only_in_the_allowed_directions() {
    let crates = manifests();
    let mut problems = Vec::new();
    for (name, (deps, dev_deps)) in &crates {
        let Some((_, allowed)) = ALLOWED.iter().find(|(crate_name, _)| crate_name == name) else {
            problems.push(format!(
                "{name}: not in ALLOWED (crates/regrelay/tests/architecture.rs); add its directions"
            ));
            continue;
        };
        for dep in deps.iter().filter(|dep| dep.starts_with("regrelay")) {
            if !allowed.contains(&dep.as_str()) {
                problems.push(format!("{name} depends on {dep}, which is not allowed"));
            }
        }
        if deps.contains("lapin") && !LAPIN_ALLOWED.contains(&name.as_str()) {
            problems.push(format!(
                "{name} depends on lapin: publish through regrelay-producer instead"
            ));
        }
        if deps.contains("anyhow") && !ANYHOW_ALLOWED.contains(&name.as_str()) {
            problems.push(format!(
                "{name} depends on anyhow: a library returns a thiserror type"
            ));
        }
        if deps.contains("regrelay-testkit") {
            problems.push(format!(
                "{name} has regrelay-testkit as a normal dependency; it is dev-only"
            ));
        }
        // Nothing links the binaries.
        for binary in ["regrelay", "regrelay-bench"] {
            if deps.contains(binary) || dev_deps.contains(binary) {
                problems.push(format!("{name} depends on the binary crate {binary}"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn events_depends_on_no_other_regrelay_crate() {
    let crates = manifests();
    let (deps, _) = &crates["regrelay-events"];
    let ours: Vec<_> = deps.iter().filter(|d| d.starts_with("regrelay")).collect();
    assert!(ours.is_empty(), "regrelay-events depends on {ours:?}");
}

/// `crate::<module>` edges between a crate's top-level modules, outside comments and `#[cfg(test)]`
/// blocks (which start a file's test module, by convention its last item).
fn module_edges(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut files = vec![src.to_path_buf()];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                files.push(entry.unwrap().path());
            }
            continue;
        }
        if path.extension().is_none_or(|ext| ext != "rs") {
            continue;
        }
        let relative = path.strip_prefix(src).unwrap();
        let module = relative
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        if module == "lib" || module == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        for line in code.lines() {
            let line = line.trim_start();
            if line.starts_with("//") {
                continue;
            }
            let mut rest = line;
            while let Some(at) = rest.find("crate::") {
                let after = &rest[at + "crate::".len()..];
                let name: String = after
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                // `crate::{a, b}` lists are written one per `use` here; a name is a module when
                // it starts lowercase.
                if !name.is_empty()
                    && name != module
                    && name.starts_with(|c: char| c.is_lowercase())
                {
                    edges.entry(module.clone()).or_default().insert(name);
                }
                rest = after;
            }
        }
    }
    edges
}

fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for node in edges.keys() {
        if let Some(cycle) = visit(node, edges, &mut Vec::new(), &mut done) {
            return Some(cycle);
        }
    }
    None
}

#[test]
fn no_crate_has_an_import_cycle_between_its_modules() {
    let mut problems = Vec::new();
    for entry in std::fs::read_dir(workspace().join("crates")).unwrap() {
        let src = entry.unwrap().path().join("src");
        if !src.is_dir() {
            continue;
        }
        if let Some(cycle) = find_cycle(&module_edges(&src)) {
            problems.push(format!("{}: {}", src.display(), cycle.join(" -> ")));
        }
    }
    assert!(
        problems.is_empty(),
        "import cycles:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_cycle_finder_finds_a_cycle() {
    let edges: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec!["a"]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.into_iter().map(str::to_owned).collect()))
    .collect();
    let cycle = find_cycle(&edges).unwrap();
    assert_eq!(cycle.first(), cycle.last());
    assert_eq!(cycle.len(), 4);
    let acyclic: BTreeMap<String, BTreeSet<String>> = [("a", vec!["b"]), ("b", vec![])]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.into_iter().map(str::to_owned).collect()))
        .collect();
    assert!(find_cycle(&acyclic).is_none());
}

/// The product binary carries no load-tool weight (plotting, image codecs, fonts, progress bars):
/// the closure of `regrelay`'s dependencies in Cargo.lock (dev-dependencies included, so this is
/// stricter than `cargo tree -p regrelay -e normal`) holds none of them.
#[test]
fn the_product_binary_pulls_in_no_bench_only_crate() {
    let lock: toml::Value =
        toml::from_str(&std::fs::read_to_string(workspace().join("Cargo.lock")).unwrap()).unwrap();
    let packages = lock["package"].as_array().unwrap();
    let deps_of = |name: &str| -> Vec<String> {
        packages
            .iter()
            .filter(|p| p["name"].as_str() == Some(name))
            .flat_map(|p| {
                p.get("dependencies")
                    .and_then(toml::Value::as_array)
                    .cloned()
                    .unwrap_or_default()
            })
            // "name" or "name version" when several versions are locked.
            .filter_map(|d| {
                d.as_str()
                    .map(|d| d.split(' ').next().unwrap_or(d).to_owned())
            })
            .collect()
    };
    let mut seen = BTreeSet::new();
    let mut todo = vec!["regrelay".to_owned()];
    while let Some(name) = todo.pop() {
        if seen.insert(name.clone()) {
            todo.extend(deps_of(&name));
        }
    }
    assert!(
        seen.contains("regrelay-consumer"),
        "the walk found the product's crates"
    );
    let heavy: Vec<_> = [
        "plotters",
        "image",
        "ab_glyph",
        "hdrhistogram",
        "indicatif",
        "dejavu",
    ]
    .into_iter()
    .filter(|name| seen.contains(*name))
    .collect();
    assert!(heavy.is_empty(), "regrelay depends on {heavy:?}");
}
