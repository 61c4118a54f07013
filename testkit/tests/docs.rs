//! The docs against the code: what can be checked may not drift.
//!
//! Source-reading only (no servers, no build of anything else), so it runs in milliseconds:
//! - every setting (`env = "NAME"` in the clap structs of `api/src`, `worker/src`, `shared/src`,
//!   `ledger/src`) is a row of `docs/configuration.md`, and every setting there is in the code;
//! - every metric (a `"flashsale_..."` string literal in `api/src`, `worker/src`, `shared/src`)
//!   is a row of the metrics reference in `docs/operations.md`, and every row there is in the code;
//! - every script `lua/*.lua` is listed in `docs/architecture.md`, and every `lua/*.lua` any doc
//!   names exists;
//! - every route of the gateway (`#[utoipa::path(method, path = "...")]` and
//!   `.route("...", method(...))` anywhere in `api/src`) is listed in `docs/api.md` as
//!   `` `METHOD /path` ``, and every route `docs/api.md` or the README names exists;
//! - every file of `scripts/` is named in `docs/architecture.md`, every `scripts/...` path and
//!   every `` `make TARGET` `` any doc names exists.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root").to_path_buf()
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("listing {}: {e}", dir.display())) {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The text of every `.rs` file under these crate source directories, with its path.
fn sources(dirs: &[&str]) -> Vec<(String, String)> {
    let root = root();
    dirs.iter()
        .flat_map(|dir| rust_files(&root.join(dir)))
        .map(|path| {
            let text = read(&path);
            (path.strip_prefix(&root).unwrap().display().to_string(), text)
        })
        .collect()
}

/// The README and every page of `docs/`, as (path, text).
fn all_docs() -> Vec<(String, String)> {
    let root = root();
    let mut docs = vec![("README.md".to_owned(), read(&root.join("README.md")))];
    let mut pages: Vec<PathBuf> = fs::read_dir(root.join("docs"))
        .expect("docs/")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|ext| ext == "md"))
        .collect();
    pages.sort();
    for page in pages {
        docs.push((page.strip_prefix(&root).unwrap().display().to_string(), read(&page)));
    }
    docs
}

fn doc(name: &str) -> String {
    read(&root().join("docs").join(name))
}

/// The contents of every `` `code span` `` of `text` (single backticks; fenced blocks are
/// split the same way, which only ever adds spans that match nothing).
fn code_spans(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

/// The string literals that directly follow `prefix` in `text` (`prefix` ends just before the
/// opening quote).
fn literals_after<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(prefix) {
        rest = &rest[at + prefix.len()..];
        if let Some(body) = rest.strip_prefix('"')
            && let Some(end) = body.find('"')
        {
            found.push(&body[..end]);
        }
    }
    found
}

/// The first cell of every table row in `text`.
fn first_cells(text: &str) -> Vec<&str> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix('|'))
        .filter_map(|row| row.split('|').next())
        .collect()
}

/// The lines of `text` from the heading `heading` to the next heading of the same or a higher
/// level.
fn section<'a>(text: &'a str, heading: &str) -> &'a str {
    let level = heading.chars().take_while(|c| *c == '#').count();
    let start = text.find(&format!("\n{heading}\n")).unwrap_or_else(|| panic!("no heading {heading:?}")) + 1;
    let body = &text[start + heading.len()..];
    let end = body
        .match_indices("\n#")
        .find(|(at, _)| {
            let hashes = body[at + 1..].chars().take_while(|c| *c == '#').count();
            hashes <= level && body[at + 1 + hashes..].starts_with(' ')
        })
        .map_or(body.len(), |(at, _)| at);
    &body[..end]
}

fn is_setting_name(s: &str) -> bool {
    s.len() > 2
        && s.starts_with(|c: char| c.is_ascii_uppercase())
        && s.contains('_')
        && s.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// Both directions of a comparison, as problem lines: what `code` has that `docs` lacks and
/// the other way round.
fn compare(
    problems: &mut Vec<String>,
    what: &str,
    code: &BTreeSet<String>,
    code_where: &str,
    docs: &BTreeSet<String>,
    docs_where: &str,
) {
    for missing in code.difference(docs) {
        problems.push(format!("{what} `{missing}` is in {code_where} but missing from {docs_where}"));
    }
    for stale in docs.difference(code) {
        problems.push(format!("{what} `{stale}` is documented in {docs_where} but not in {code_where}"));
    }
}

fn report(mut problems: Vec<String>) {
    problems.dedup();
    assert!(
        problems.is_empty(),
        "the docs and the code disagree ({} problem(s)):\n  - {}\n",
        problems.len(),
        problems.join("\n  - ")
    );
}

#[test]
fn every_setting_is_documented_and_every_documented_setting_exists() {
    let code: BTreeSet<String> = sources(&["api/src", "worker/src", "shared/src", "ledger/src"])
        .iter()
        .flat_map(|(_, text)| literals_after(text, "env = "))
        .map(str::to_owned)
        .collect();
    assert!(
        code.len() > 20,
        "found only {} settings in the code: has the clap `env = \"...\"` form changed?",
        code.len()
    );
    let configuration = doc("configuration.md");
    let documented: BTreeSet<String> = first_cells(&configuration)
        .into_iter()
        .flat_map(code_spans)
        .filter(|span| is_setting_name(span))
        .map(str::to_owned)
        .collect();
    let mut problems = Vec::new();
    compare(
        &mut problems,
        "setting",
        &code,
        "the code (`env = \"...\"` in api/src, worker/src, shared/src, ledger/src)",
        &documented,
        "docs/configuration.md (first column of its settings table)",
    );
    report(problems);
}

#[test]
fn every_metric_is_in_the_metrics_reference_and_back() {
    let code: BTreeSet<String> = sources(&["api/src", "worker/src", "shared/src"])
        .iter()
        .flat_map(|(_, text)| {
            text.split('"')
                .skip(1)
                .step_by(2)
                .filter(|lit| {
                    lit.starts_with("flashsale_")
                        && lit.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                })
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(code.len() > 20, "found only {} metric names in the code", code.len());
    let operations = doc("operations.md");
    let reference = section(&operations, "## Metrics reference");
    let documented: BTreeSet<String> = first_cells(reference)
        .into_iter()
        .flat_map(code_spans)
        .filter(|span| span.starts_with("flashsale_"))
        .map(|span| span.split('{').next().unwrap_or(span).to_owned())
        .collect();
    let mut problems = Vec::new();
    compare(
        &mut problems,
        "metric",
        &code,
        "the code (\"flashsale_...\" literals in api/src, worker/src, shared/src)",
        &documented,
        "docs/operations.md, section \"Metrics reference\" (first column)",
    );
    report(problems);
}

#[test]
fn every_script_is_listed_and_every_listed_script_exists() {
    let root = root();
    let on_disk: BTreeSet<String> = fs::read_dir(root.join("lua"))
        .expect("lua/")
        .map(|e| e.expect("a directory entry").file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".lua"))
        .map(|name| format!("lua/{name}"))
        .collect();
    let lua_paths = |text: &str| -> BTreeSet<String> {
        code_spans(text)
            .into_iter()
            .filter(|span| span.starts_with("lua/") && span.ends_with(".lua") && !span.contains(' '))
            .map(str::to_owned)
            .collect()
    };
    let architecture = doc("architecture.md");
    let listed = lua_paths(section(&architecture, "## Scripts"));
    let mut problems = Vec::new();
    compare(&mut problems, "script", &on_disk, "lua/", &listed, "docs/architecture.md, section \"Scripts\"");
    for (path, text) in all_docs() {
        for named in lua_paths(&text).difference(&on_disk) {
            problems.push(format!("script `{named}` is named in {path} but lua/ has no such file"));
        }
    }
    report(problems);
}

const METHODS: [&str; 6] = ["get", "post", "put", "delete", "patch", "head"];

/// Every (METHOD, path) the gateway's router serves, read from `api/src`: utoipa's
/// `#[utoipa::path(method, ..., path = "...")]` and axum's `.route("/path", method(...))`.
fn code_routes() -> BTreeSet<String> {
    let mut routes = BTreeSet::new();
    for (file, text) in sources(&["api/src"]) {
        for (at, _) in text.match_indices("utoipa::path(") {
            let line = &text[text[..at].rfind('\n').map_or(0, |i| i + 1)..at];
            if line.trim_start().starts_with("//") {
                continue; // a doc comment naming the attribute
            }
            let args = &text[at + "utoipa::path(".len()..];
            let method: String = args.trim_start().chars().take_while(char::is_ascii_alphabetic).collect();
            assert!(
                METHODS.contains(&method.as_str()),
                "{file}: a utoipa::path without a method first: {method:?}"
            );
            let path = literals_after(args, "path = ")
                .into_iter()
                .next()
                .unwrap_or_else(|| panic!("{file}: a utoipa::path without path"));
            routes.insert(format!("{} {path}", method.to_ascii_uppercase()));
        }
        for (at, _) in text.match_indices(".route(") {
            let args = &text[at + ".route(".len()..];
            // The call's arguments: up to the parenthesis that closes `.route(`.
            let mut depth = 1;
            let end = args
                .char_indices()
                .find(|(_, c)| {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                })
                .map_or(args.len(), |(i, _)| i);
            let args = &args[..end];
            let Some(path) = args.trim_start().strip_prefix('"').and_then(|s| s.split('"').next()) else {
                continue; // not a literal path (a test helper's argument, say)
            };
            let mut found = false;
            for method in METHODS {
                let call = format!("{method}(");
                for (i, _) in args.match_indices(&call) {
                    let before = args[..i].chars().next_back();
                    if before.is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_')) {
                        routes.insert(format!("{} {path}", method.to_ascii_uppercase()));
                        found = true;
                    }
                }
            }
            assert!(found, "{file}: .route({path:?}, ...) with no method router this test knows");
        }
    }
    routes
}

/// Every `` `METHOD /path` `` of `text`, its query string dropped.
fn doc_routes(text: &str) -> BTreeSet<String> {
    code_spans(text)
        .into_iter()
        .filter_map(|span| {
            let (method, path) = span.split_once(' ')?;
            let upper = method.to_ascii_lowercase();
            (METHODS.contains(&upper.as_str())
                && method == method.to_ascii_uppercase()
                && path.starts_with('/'))
            .then(|| format!("{method} {}", path.split('?').next().unwrap_or(path)))
        })
        .collect()
}

/// Whether `named` (`METHOD /path`, any segment possibly a `{placeholder}` or an example
/// value) is an instance of the router's `route`.
fn route_matches(route: &str, named: &str) -> bool {
    let placeholder = |segment: &str| segment.starts_with('{') && segment.ends_with('}');
    let (route_method, route_path) = route.split_once(' ').unwrap_or((route, ""));
    let (named_method, named_path) = named.split_once(' ').unwrap_or((named, ""));
    let route_segments: Vec<&str> = route_path.split('/').collect();
    let named_segments: Vec<&str> = named_path.split('/').collect();
    route_method == named_method
        && route_segments.len() == named_segments.len()
        && route_segments
            .iter()
            .zip(&named_segments)
            .all(|(r, n)| r == n || placeholder(r) && (placeholder(n) || !n.is_empty()))
}

#[test]
fn every_route_is_in_the_api_reference_and_back() {
    let code = code_routes();
    assert!(code.len() > 10, "found only {} routes in api/src: {code:?}", code.len());
    let mut problems = Vec::new();
    compare(
        &mut problems,
        "route",
        &code,
        "the gateway's router (api/src)",
        &doc_routes(&doc("api.md")),
        "docs/api.md",
    );
    for (path, text) in all_docs() {
        if path == "docs/api.md" {
            continue;
        }
        // Elsewhere a route may be named with other placeholders or an example value
        // (`POST /v1/events/E/pause`): it only has to match one of the router's.
        for named in doc_routes(&text) {
            if !code.iter().any(|route| route_matches(route, &named)) {
                problems.push(format!(
                    "route `{named}` is named in {path} but the gateway's router has no such route"
                ));
            }
        }
    }
    report(problems);
}

#[test]
fn every_helper_script_and_make_target_named_exists() {
    let root = root();
    let on_disk: BTreeSet<String> = fs::read_dir(root.join("scripts"))
        .expect("scripts/")
        .map(|e| e.expect("a directory entry").file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with('.') && !name.starts_with("__"))
        .collect();
    let makefile = read(&root.join("Makefile"));
    let targets: BTreeSet<&str> = makefile
        .lines()
        .filter_map(|line| line.split_once(':').map(|(target, _)| target))
        .filter(|t| {
            !t.is_empty() && t.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        })
        .collect();
    let architecture = doc("architecture.md");
    let layout = section(&architecture, "## Code layout");
    let mut problems = Vec::new();
    for name in &on_disk {
        if !layout.contains(name.as_str()) {
            problems.push(format!(
                "scripts/{name} is missing from docs/architecture.md, section \"Code layout\""
            ));
        }
    }
    for (path, text) in all_docs() {
        for (at, _) in text.match_indices("scripts/") {
            // Only a path of the repository's scripts/ (not bench/scripts/, say).
            if text[..at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '/' || c == '_' || c == '-')
            {
                continue;
            }
            let name: String = text[at + "scripts/".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
                .collect();
            let name = name.trim_end_matches('.');
            if !name.is_empty() && !on_disk.contains(name) {
                problems.push(format!("scripts/{name} is named in {path} but scripts/ has no such file"));
            }
        }
        for span in code_spans(&text) {
            if let Some(target) = span.strip_prefix("make ") {
                let target = target.split_whitespace().next().unwrap_or("");
                if !targets.contains(target) {
                    problems.push(format!(
                        "`make {target}` is named in {path} but the Makefile has no such target"
                    ));
                }
            }
        }
    }
    report(problems);
}
