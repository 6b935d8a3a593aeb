//! The dependency direction of ARCHITECTURE.md ("Dependency direction"), checked on the source:
//! an edge `a → b` is a `crate::b` path in the product code of top-level module `a` (`src/a.rs`
//! and `src/a/`), test code left out (files named `tests*`, and every item under
//! `#[cfg(test)]`). A text scan rather than a cargo tool: it needs nothing installed and reads
//! about 150 files in milliseconds, so it runs with every `cargo test --lib`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The leaves: they use no other falgate module.
const LEAVES: [&str; 7] = ["body", "budget", "clock", "fal", "lifecycle", "schema", "telemetry"];

/// ARCHITECTURE.md's layers table, top down, each layer's modules in its order: a module uses
/// only modules after it.
const LAYERS: [(&str, &[&str]); 7] = [
    ("entry", &["cli", "dev", "process"]),
    ("serving", &["app", "layers", "routes", "pipeline", "playground"]),
    ("snapshot", &["state"]),
    ("settings", &["config"]),
    ("edge", &["error"]),
    (
        "domains",
        &[
            "upstream",
            "events",
            "ownership",
            "cors",
            "input",
            "policy",
            "auth",
            "webhooks",
            "limits",
            "redis",
            "server",
        ],
    ),
    (
        "leaves",
        &[
            "emulator",
            "telemetry",
            "schema",
            "fal",
            "clock",
            "lifecycle",
            "body",
            "budget",
        ],
    ),
];

/// The domains: each owns its settings type, which `config` fills; none reads `config`.
fn domains() -> &'static [&'static str] {
    LAYERS[5].1
}

type Graph = BTreeMap<String, BTreeSet<String>>;

/// Every top-level module's `crate::` uses of the others, in product code.
fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules: BTreeSet<String> = std::fs::read_dir(&src)
        .expect("src/ is readable")
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let stem = path.file_stem()?.to_str()?.to_owned();
            let module = path.is_dir() || path.extension().is_some_and(|ext| ext == "rs");
            (module && !matches!(stem.as_str(), "lib" | "main")).then_some(stem)
        })
        .collect();
    let mut graph = Graph::new();
    let mut files = Vec::new();
    collect_rs(&src, &mut files);
    let mut test_only = BTreeSet::new();
    // Declarations first, so `#[cfg(test)] mod chaos;` excludes `chaos.rs` wherever it is read.
    let texts: Vec<_> = files
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path).expect("a source file is readable");
            // `mod name;` in `a.rs` is `a/name.rs`; in `lib.rs` or `mod.rs`, a sibling.
            let root = path.file_name().is_some_and(|f| f == "mod.rs" || f == "lib.rs");
            let own = if root {
                path.parent().expect("a file has a folder").to_path_buf()
            } else {
                path.with_extension("")
            };
            let product = product_code(&text, |name| {
                test_only.insert(own.join(format!("{name}.rs")));
            });
            (path.clone(), product)
        })
        .collect();
    for (path, product) in texts {
        let relative = path.strip_prefix(&src).expect("under src/");
        let name = relative.file_name().and_then(|f| f.to_str()).unwrap_or_default();
        if test_only.contains(&path) || name.starts_with("tests") {
            continue;
        }
        let first = relative.components().next().expect("a path has a first part");
        let from = Path::new(first.as_os_str()).with_extension("");
        let from = from.to_str().unwrap_or_default();
        if !modules.contains(from) {
            continue;
        }
        for to in crate_paths(&product) {
            if to != from && modules.contains(&to) {
                graph.entry(from.to_owned()).or_default().insert(to);
            }
        }
    }
    graph
}

fn collect_rs(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("a source folder is readable").flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_rs(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

/// The text without comments and without the items under `#[cfg(test)]` (a braced item is
/// skipped to its closing brace; `mod name;` is reported to `test_module`).
fn product_code(text: &str, mut test_module: impl FnMut(&str)) -> String {
    let mut out = String::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let code = line.split("//").next().unwrap_or_default();
        if code.trim() != "#[cfg(test)]" {
            out.push_str(code);
            out.push('\n');
            continue;
        }
        let Some(item) = lines.next() else { break };
        let item = item.split("//").next().unwrap_or_default();
        if item.trim_end().ends_with(';') {
            if let Some(name) = item.trim().trim_end_matches(';').strip_prefix("mod ").or_else(|| {
                item.trim()
                    .trim_end_matches(';')
                    .split_once(" mod ")
                    .map(|(_, name)| name)
            }) {
                test_module(name.trim());
            }
            continue;
        }
        let mut depth = braces(item);
        let mut opened = item.contains('{');
        while !opened || depth > 0 {
            let Some(next) = lines.next() else { break };
            let next = next.split("//").next().unwrap_or_default();
            depth += braces(next);
            opened |= next.contains('{');
        }
    }
    out
}

fn braces(line: &str) -> i64 {
    line.chars().fold(0, |depth, c| match c {
        '{' => depth + 1,
        '}' => depth - 1,
        _ => depth,
    })
}

/// The first segment of every `crate::` path, `crate::{a, b::c}` groups included.
fn crate_paths(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        // A preceding identifier character means another path (`foo_crate::`), not this crate.
        if code[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_')
        {
            continue;
        }
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = group.split('}').next().unwrap_or_default();
            found.extend(group.split(',').map(|part| ident(part.trim())));
        } else {
            found.insert(ident(rest));
        }
    }
    found.retain(|name| !name.is_empty());
    found
}

fn ident(text: &str) -> String {
    text.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()
}

/// The modules that are part of some cycle (Tarjan's strongly connected components of two or
/// more modules).
fn cyclic(graph: &Graph) -> BTreeSet<String> {
    struct Walk<'g> {
        graph: &'g Graph,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        cyclic: BTreeSet<String>,
    }
    impl<'g> Walk<'g> {
        fn visit(&mut self, v: &'g str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            for w in self.graph.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.stack.contains(&w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let at = self.stack.iter().rposition(|m| *m == v).expect("v is on the stack");
                let component = self.stack.split_off(at);
                if component.len() > 1 {
                    self.cyclic.extend(component.iter().map(|m| (*m).to_owned()));
                }
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        cyclic: BTreeSet::new(),
    };
    for v in graph.keys() {
        if !walk.index.contains_key(v.as_str()) {
            walk.visit(v);
        }
    }
    walk.cyclic
}

fn uses(graph: &Graph, module: &str) -> BTreeSet<String> {
    graph.get(module).cloned().unwrap_or_default()
}

#[test]
fn the_scan_sees_the_imports_it_should() {
    let graph = graph();
    // Known edges, so a scanner that reads nothing cannot pass the tests below.
    assert!(uses(&graph, "state").contains("limits"), "{graph:?}");
    assert!(uses(&graph, "app").contains("layers"), "{graph:?}");
    assert!(uses(&graph, "upstream").contains("limits"), "{graph:?}");
}

#[test]
fn the_leaves_use_no_other_falgate_module() {
    let graph = graph();
    for leaf in LEAVES {
        assert_eq!(
            uses(&graph, leaf),
            BTreeSet::new(),
            "`{leaf}` is a leaf (ARCHITECTURE.md)"
        );
    }
}

/// `limits` gets the snapshot it reads and fal's answers as arguments and through its own trait
/// (`reconcile::tick`, `reconcile::JobStatus`), never by reaching up.
#[test]
fn limits_reaches_neither_the_snapshot_nor_upstream() {
    let used = uses(&graph(), "limits");
    for above in ["app", "layers", "pipeline", "routes", "state", "upstream"] {
        assert!(!used.contains(above), "limits uses `{above}`: {used:?}");
    }
}

/// Issue 21: each domain owns its settings (`Tier`, `Cors`, `Auth`, `upstream::Settings`, …);
/// `config` parses and assembles them, above every domain, and no domain reads it.
#[test]
fn no_domain_uses_config() {
    let graph = graph();
    for domain in domains().iter().chain(LEAVES.iter()) {
        assert!(
            !uses(&graph, domain).contains("config"),
            "`{domain}` uses `config`: a domain owns its settings type and `config` fills it (ARCHITECTURE.md, \"Dependency direction\")"
        );
    }
}

/// Issue 21: the domains refuse with their own typed errors (`PolicyError`, `LimitError`,
/// `UpstreamError`, …) and know nothing of HTTP; `error`, above them, is the one place a
/// refusal becomes a status, a code and headers.
#[test]
fn no_domain_uses_error() {
    let graph = graph();
    for domain in domains().iter().chain(LEAVES.iter()) {
        assert!(
            !uses(&graph, domain).contains("error"),
            "`{domain}` uses `error`: a domain refuses with its own typed error, which `error` maps (ARCHITECTURE.md, \"Dependency direction\")"
        );
    }
}

/// Every top-level module has its place in the layers table, and uses only modules after it.
#[test]
fn every_module_uses_only_modules_below_it() {
    let graph = graph();
    let order: Vec<&str> = LAYERS.iter().flat_map(|(_, modules)| modules.iter().copied()).collect();
    for module in graph.keys() {
        assert!(
            order.contains(&module.as_str()),
            "`{module}` has no place in ARCHITECTURE.md's layers table (and in `LAYERS` here)"
        );
    }
    for (at, module) in order.iter().enumerate() {
        for used in uses(&graph, module) {
            let below = order.iter().position(|m| *m == used).is_some_and(|to| to > at);
            assert!(
                below,
                "`{module}` uses `{used}`, which is not below it in ARCHITECTURE.md's layers table"
            );
        }
    }
}

/// Issue 21: no two top-level modules use each other, directly or through others.
#[test]
fn no_import_cycle_between_top_level_modules() {
    let graph = graph();
    let cyclic = cyclic(&graph);
    let edges: Vec<_> = cyclic
        .iter()
        .flat_map(|from| {
            uses(&graph, from)
                .into_iter()
                .filter(|to| cyclic.contains(to))
                .map(move |to| format!("{from} → {to}"))
        })
        .collect();
    assert!(
        cyclic.is_empty(),
        "modules in an import cycle: {cyclic:?}, through {edges:?} (ARCHITECTURE.md, \"Dependency direction\")"
    );
}
