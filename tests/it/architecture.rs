//! The dependency rules of ARCHITECTURE.md ("Which crate may depend on
//! which"), read from `cargo metadata`: a new `use` of the wrong crate fails
//! here, not in review.
//!
//! Only normal dependencies count (dev-dependencies may reach anything: the
//! test kit, the chat example). The transitive check walks the resolved
//! graph, whose features are unified over the workspace, so it names crates
//! that do I/O of a kind (an HTTP stack, a database or broker client, CLI
//! and settings parsers) rather than features of shared crates.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::Value;

/// Workspace crates each library may depend on directly (normal edges).
const ALLOWED: &[(&str, &[&str])] = &[
    // Its `macros` feature (on by default): #[channel], #[action].
    ("cable-core", &["cable-macros"]),
    // Proc macros: syn and quote only; the expansions name cable-core.
    ("cable-macros", &[]),
    ("cable-server", &["cable-core"]),
    ("cable-redis", &["cable-core", "cable-adapter-kit"]),
    ("cable-postgres", &["cable-core", "cable-adapter-kit"]),
    ("cable-nats", &["cable-core", "cable-adapter-kit"]),
    ("cable-rails", &["cable-core"]),
    ("cable-anycable", &["cable-core"]),
    // The adapter skeleton. Its `conformance` feature (the suite, for the
    // adapters' tests) adds cable-test and cable-server: see FEATURE_ONLY.
    ("cable-adapter-kit", &["cable-core"]),
    // The test kit drives the transport, like any application.
    ("cable-test", &["cable-core", "cable-server"]),
    (
        "cable-standalone",
        &[
            "cable-core",
            "cable-server",
            "cable-redis",
            "cable-postgres",
            "cable-nats",
            "cable-rails",
            "cable-anycable",
        ],
    ),
];

/// Crates that must not be anywhere in a library's normal dependency tree.
const FORBIDDEN: &[(&str, &[&str])] = &[
    // Protocol, state machine, hub: no sockets, no HTTP, no backend.
    (
        "cable-core",
        &[
            "axum",
            "hyper",
            "tungstenite",
            "tokio-tungstenite",
            "redis",
            "tokio-postgres",
            "async-nats",
        ],
    ),
    // The transport: what an axum app gets when it mounts the router.
    (
        "cable-server",
        &[
            "redis",
            "tokio-postgres",
            "async-nats",
            "aes-gcm",
            "pbkdf2",
            "clap",
            "toml",
            "tracing-subscriber",
            "cable-redis",
            "cable-postgres",
            "cable-nats",
            "cable-rails",
            "cable-anycable",
            "cable-standalone",
        ],
    ),
    // Adapters and integrations sit behind core's traits, beside the
    // transport, never on top of it.
    (
        "cable-redis",
        &["axum", "hyper", "tungstenite", "cable-server"],
    ),
    (
        "cable-postgres",
        &["axum", "hyper", "tungstenite", "cable-server"],
    ),
    (
        "cable-nats",
        &["axum", "hyper", "tungstenite", "cable-server"],
    ),
    (
        "cable-rails",
        &["axum", "hyper", "tungstenite", "cable-server"],
    ),
    (
        "cable-anycable",
        &["axum", "hyper", "tungstenite", "cable-server"],
    ),
    (
        "cable-adapter-kit",
        &[
            "axum",
            "hyper",
            "tungstenite",
            "cable-server",
            "redis",
            "tokio-postgres",
            "async-nats",
        ],
    ),
];

/// Features of a library that only tests may enable: their optional
/// dependencies are not part of the library's tree (`cargo metadata`
/// unifies features over the workspace, dev-dependencies included), and
/// `features_for_tests_stay_in_dev_dependencies` checks that no library
/// enables them through a normal dependency.
const FEATURE_ONLY: &[(&str, &str)] = &[("cable-adapter-kit", "conformance")];

struct Graph {
    /// Package id -> name.
    names: BTreeMap<String, String>,
    /// Package id -> ids of its normal dependencies.
    normal: BTreeMap<String, Vec<String>>,
    /// Names of the workspace members.
    members: BTreeSet<String>,
    /// The metadata itself, for the manifests' own declarations.
    meta: Value,
}

fn graph() -> Graph {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
    // As `cargo tree` does: only what builds for this host, so that a
    // dependency behind `cfg(loom)` or another platform does not count.
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let vv = Command::new(rustc)
        .arg("-vV")
        .output()
        .expect("run rustc -vV");
    let host = String::from_utf8_lossy(&vv.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .expect("rustc -vV names the host");
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--manifest-path",
            manifest,
        ])
        .args(["--filter-platform", &host])
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata is JSON");
    let names = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| {
            (
                p["id"].as_str().expect("id").to_owned(),
                p["name"].as_str().expect("name").to_owned(),
            )
        })
        .collect::<BTreeMap<_, _>>();
    let members = meta["workspace_members"]
        .as_array()
        .expect("workspace_members")
        .iter()
        .map(|id| names[id.as_str().expect("member id")].clone())
        .collect();
    // (package id, dependency name) edges that exist only through FEATURE_ONLY.
    let mut feature_only = BTreeSet::new();
    for p in meta["packages"].as_array().expect("packages") {
        for (krate, feature) in FEATURE_ONLY {
            if p["name"] == *krate {
                for dep in p["features"][feature].as_array().into_iter().flatten() {
                    if let Some(name) = dep.as_str().and_then(|d| d.strip_prefix("dep:")) {
                        feature_only
                            .insert((p["id"].as_str().expect("id").to_owned(), name.to_owned()));
                    }
                }
            }
        }
    }
    let mut normal = BTreeMap::new();
    for node in meta["resolve"]["nodes"].as_array().expect("resolve.nodes") {
        let node_id = node["id"].as_str().expect("node id");
        let deps = node["deps"]
            .as_array()
            .expect("deps")
            .iter()
            .filter(|d| {
                d["dep_kinds"]
                    .as_array()
                    .is_some_and(|ks| ks.iter().any(|k| k["kind"].is_null()))
            })
            .map(|d| d["pkg"].as_str().expect("pkg").to_owned())
            .filter(|pkg| !feature_only.contains(&(node_id.to_owned(), names[pkg].clone())))
            .collect::<Vec<_>>();
        normal.insert(node["id"].as_str().expect("node id").to_owned(), deps);
    }
    Graph {
        names,
        normal,
        members,
        meta,
    }
}

impl Graph {
    fn id(&self, name: &str) -> &str {
        self.names
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(id, _)| id.as_str())
            .unwrap_or_else(|| panic!("{name} is not in the workspace's dependency graph"))
    }

    fn direct(&self, name: &str) -> BTreeSet<&str> {
        self.normal[self.id(name)]
            .iter()
            .map(|id| self.names[id].as_str())
            .collect()
    }

    /// Every crate in `name`'s normal tree, with the path to it.
    fn closure<'a>(&'a self, name: &'a str) -> BTreeMap<&'a str, Vec<&'a str>> {
        let mut seen = BTreeMap::new();
        let mut todo = vec![(self.id(name), vec![name])];
        while let Some((id, path)) = todo.pop() {
            for dep in &self.normal[id] {
                let dep_name = self.names[dep].as_str();
                if seen.contains_key(dep_name) {
                    continue;
                }
                let mut p = path.clone();
                p.push(dep_name);
                seen.insert(dep_name, p.clone());
                todo.push((dep.as_str(), p));
            }
        }
        seen
    }
}

#[test]
fn workspace_crates_depend_only_as_architecture_md_says() {
    let g = graph();
    let libs: BTreeSet<&str> = ALLOWED.iter().map(|(n, _)| *n).collect();
    let mut wrong = Vec::new();
    for (krate, allowed) in ALLOWED {
        for dep in g.direct(krate) {
            if g.members.contains(dep) && !allowed.contains(&dep) {
                wrong.push(format!("{krate} -> {dep}"));
            }
        }
    }
    // A member that is not a library above (examples, tests, the harness)
    // is a leaf: no library may depend on it.
    for krate in &libs {
        for dep in g.direct(krate) {
            if g.members.contains(dep) && !libs.contains(dep) {
                wrong.push(format!("{krate} -> {dep} (not a library crate)"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "dependencies ARCHITECTURE.md does not allow: {wrong:?}"
    );
}

#[test]
fn libraries_keep_forbidden_crates_out_of_their_trees() {
    let g = graph();
    let mut wrong = Vec::new();
    for (krate, forbidden) in FORBIDDEN {
        let tree = g.closure(krate);
        for f in *forbidden {
            if let Some(path) = tree.get(f) {
                wrong.push(path.join(" -> "));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "crates that must not be in these trees: {wrong:#?}"
    );
}

#[test]
fn every_library_crate_is_covered_by_the_rules() {
    let g = graph();
    let known: BTreeSet<&str> = ALLOWED.iter().map(|(n, _)| *n).collect();
    // Members that are not libraries users build on: nothing depends on them.
    let leaves = [
        "chat-example",
        "notes-example",
        "cable-tests",
        "cable-loadgen",
    ];
    let unknown: Vec<&String> = g
        .members
        .iter()
        .filter(|m| !known.contains(m.as_str()) && !leaves.contains(&m.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "workspace members without a rule in ARCHITECTURE.md and tests/it/architecture.rs: {unknown:?}"
    );
}

#[test]
fn features_for_tests_stay_in_dev_dependencies() {
    let g = graph();
    let mut wrong = Vec::new();
    for p in g.meta["packages"].as_array().expect("packages") {
        for dep in p["dependencies"].as_array().into_iter().flatten() {
            for (krate, feature) in FEATURE_ONLY {
                let enables = dep["features"]
                    .as_array()
                    .is_some_and(|fs| fs.iter().any(|f| f == feature));
                if dep["name"] == *krate && dep["kind"].is_null() && enables {
                    wrong.push(format!("{} enables {krate}/{feature}", p["name"]));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "test-only features enabled by a normal dependency: {wrong:?}"
    );
}

/// The workspace root (this crate is `tests/`).
fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// Issue 18: the README's embedding example is `cable-server/examples/embed.rs`
/// as it is (the file is compiled with the crate's examples), so what a
/// newcomer copies builds.
#[test]
fn the_readmes_embedding_example_is_the_compiled_one() {
    let read = |p: &str| std::fs::read_to_string(root().join(p)).expect(p);
    let example = read("cable-server/examples/embed.rs");
    let body: Vec<&str> = example.lines().filter(|l| !l.starts_with("//!")).collect();
    let block = format!("```rust\n{}\n```", body.join("\n").trim_matches('\n'));
    let readme = read("README.md");
    assert!(
        readme.contains(&block),
        "README.md must show cable-server/examples/embed.rs as it is:\n{block}"
    );
    // On the first screen, after the two commands.
    let at = readme.find(&block).unwrap_or(usize::MAX);
    assert!(
        readme[..at].lines().count() < 40,
        "the example starts too far down"
    );
    for dep in ["cable-core = \"0.1\"", "cable-server = \"0.1\""] {
        assert!(readme[..at].contains(dep), "README lacks {dep}");
    }
}

/// Issue 18: every crate that can be published says what it is, under
/// which license, with a README and docs link, and no placeholder
/// repository; no crate depends on itself through another (dev-dependencies
/// with a version count: `cargo publish` keeps them).
#[test]
fn publishable_crates_have_complete_metadata_and_no_cycles() {
    let g = graph();
    let packages = g.meta["packages"].as_array().expect("packages");
    let members: BTreeSet<&str> = g.members.iter().map(String::as_str).collect();
    let publishable: Vec<&Value> = packages
        .iter()
        .filter(|p| members.contains(p["name"].as_str().unwrap_or("")))
        .filter(|p| p["publish"] != serde_json::json!([]))
        .collect();
    assert!(publishable.len() >= 10, "{}", publishable.len());
    let mut problems = Vec::new();
    let mut edges: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for p in &publishable {
        let name = p["name"].as_str().unwrap_or("?");
        for field in ["description", "license", "readme", "documentation"] {
            if p[field].as_str().is_none_or(str::is_empty) {
                problems.push(format!("{name}: no {field}"));
            }
        }
        for field in ["keywords", "categories"] {
            if p[field].as_array().is_none_or(Vec::is_empty) {
                problems.push(format!("{name}: no {field}"));
            }
        }
        if let Some(repo) = p["repository"].as_str() {
            if repo.contains("example.invalid") {
                problems.push(format!("{name}: placeholder repository {repo}"));
            }
        }
        let manifest = std::path::Path::new(p["manifest_path"].as_str().unwrap_or(""));
        if let (Some(dir), Some(readme)) = (manifest.parent(), p["readme"].as_str()) {
            if !dir.join(readme).exists() {
                problems.push(format!("{name}: readme {readme} missing"));
            }
        }
        for dep in p["dependencies"].as_array().into_iter().flatten() {
            let dn = dep["name"].as_str().unwrap_or("");
            // A path dev-dependency without a version is dropped on publish.
            if members.contains(dn) && dep["req"] != "*" {
                edges.entry(name).or_default().push(dn);
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
    // Depth-first search for a cycle.
    fn visit<'a>(
        n: &'a str,
        edges: &BTreeMap<&'a str, Vec<&'a str>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<&'a str>> {
        if let Some(i) = path.iter().position(|p| *p == n) {
            let mut cycle = path[i..].to_vec();
            cycle.push(n);
            return Some(cycle);
        }
        if !done.insert(n) {
            return None;
        }
        path.push(n);
        for m in edges.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, edges, path, done) {
                return Some(c);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for n in edges.keys() {
        let cycle = visit(n, &edges, &mut Vec::new(), &mut done);
        assert!(cycle.is_none(), "dependency cycle: {cycle:?}");
    }
}
