//! The layout rules of the supervisor's source, kept true by a test: no file under `src/` over
//! 700 lines (test files aside), no import cycle between the top-level modules (`core`, `daemon`,
//! `sys`, ...; read from the `crate::` paths outside comments and test modules), and the core
//! imports neither the wire (`control`) nor the shell (`daemon`, `sys`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn is_test_file(p: &Path) -> bool {
    let name = p.file_name().unwrap().to_string_lossy();
    name.ends_with("tests.rs") || name == "test_support.rs"
}

/// Each top-level module's `crate::` dependencies, with one file that has each.
fn graph(src: &Path) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut files = Vec::new();
    sources(src, &mut files);
    let mut edges: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for f in files.iter().filter(|f| !is_test_file(f)) {
        let rel = f.strip_prefix(src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if top == "lib" || top == "main" {
            continue;
        }
        let text = std::fs::read_to_string(f).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap();
        for line in code.lines().map(str::trim).filter(|l| !l.starts_with("//")) {
            for part in line.split("crate::").skip(1) {
                let module: String = part
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if !module.is_empty() && module != top {
                    edges
                        .entry(top.clone())
                        .or_default()
                        .entry(module)
                        .or_insert_with(|| rel.display().to_string());
                }
            }
        }
    }
    edges
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn no_source_file_is_over_700_lines() {
    let mut files = Vec::new();
    sources(&src(), &mut files);
    let long: Vec<String> = files
        .iter()
        .filter(|f| !is_test_file(f))
        .filter_map(|f| {
            let n = std::fs::read_to_string(f).unwrap().lines().count();
            (n > 700).then(|| format!("{} ({n} lines)", f.display()))
        })
        .collect();
    assert!(long.is_empty(), "split these by concern: {long:?}");
}

#[test]
fn top_level_modules_import_each_other_without_cycles() {
    let edges = graph(&src());
    // Depth-first search for a path back to where it started.
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeMap<String, String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == node) {
            let mut cycle = path[i..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if !done.insert(node.to_string()) {
            return None;
        }
        path.push(node.to_string());
        for next in edges.get(node).into_iter().flat_map(|m| m.keys()) {
            if let Some(c) = visit(next, edges, path, done) {
                return Some(c);
            }
        }
        path.pop();
        None
    }
    for start in edges.keys() {
        let cycle = visit(start, &edges, &mut Vec::new(), &mut BTreeSet::new());
        if let Some(cycle) = cycle {
            let because: Vec<String> = cycle
                .windows(2)
                .map(|w| format!("{} -> {} ({})", w[0], w[1], edges[&w[0]][&w[1]]))
                .collect();
            panic!("import cycle: {}", because.join(", "));
        }
    }
}

#[test]
fn the_core_knows_neither_the_wire_nor_the_shell() {
    let edges = graph(&src());
    let core: Vec<&String> = edges
        .get("core")
        .map(|m| m.keys().collect())
        .unwrap_or_default();
    for banned in ["control", "daemon", "sys", "cli", "upgrade"] {
        assert!(
            !core.iter().any(|m| *m == banned),
            "core imports {banned} ({}): decisions stay pure",
            edges["core"][banned]
        );
    }
}
