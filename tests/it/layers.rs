//! The layers hold: every module of `src/` imports only from the rows below its own in the
//! layers table of docs/architecture.md. Read from the source text, outside test code.

use std::collections::BTreeMap;
use std::path::Path;

/// `module -> row` from the `## Layers` table of docs/architecture.md.
fn rows(doc: &str) -> BTreeMap<String, usize> {
    let section = doc.split("\n## Layers").nth(1).expect("docs/architecture.md has a `## Layers` section");
    let mut rows = BTreeMap::new();
    for line in section.lines().take_while(|l| !l.starts_with("## ")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (Some(row), Some(modules)) = (cells.get(1).and_then(|c| c.parse::<usize>().ok()), cells.get(2)) else {
            continue;
        };
        for m in modules.split(',').map(str::trim).filter(|m| !m.is_empty()) {
            assert!(rows.insert(m.to_string(), row).is_none(), "{m} placed twice in the layers table");
        }
    }
    assert!(rows.len() > 10, "the layers table has too few modules: {rows:?}");
    rows
}

/// The source without `#[cfg(test)]` items and comments.
fn without_tests(src: &str) -> String {
    let mut code = String::new();
    for line in src.lines() {
        let line = match line.find("//") {
            Some(i) if !line[..i].contains('"') => &line[..i],
            _ => line,
        };
        code.push_str(line);
        code.push('\n');
    }
    let mut out = String::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        let (brace, semi) = (after.find('{'), after.find(';'));
        let end = match (brace, semi) {
            (_, Some(s)) if brace.is_none_or(|b| s < b) => s + 1,
            (Some(b), _) => {
                let (mut depth, mut in_str, mut escaped) = (0, false, false);
                let mut end = after.len();
                for (k, c) in after[b..].char_indices() {
                    if in_str {
                        (in_str, escaped) = (escaped || c != '"', !escaped && c == '\\');
                        continue;
                    }
                    match c {
                        '"' => in_str = true,
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = b + k + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                end
            }
            _ => after.len(),
        };
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

fn ident(s: &str) -> &str {
    let end = s.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(s.len());
    &s[..end]
}

/// The top-level modules a source text names through `prefix` (`crate::` or `runner::`),
/// `use crate::{a, b::c}` groups included.
fn imports(code: &str, prefix: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (i, _) in code.match_indices(prefix) {
        if code[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
            continue; // `my_crate::`, not `crate::`
        }
        let rest = &code[i + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut start = true;
            for (k, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 1 => start = true,
                    c if c.is_whitespace() => {}
                    _ if depth == 1 && start => {
                        start = false;
                        let name = ident(&group[k..]);
                        if !name.is_empty() && name != "self" {
                            found.push(name.to_string());
                        }
                    }
                    _ => {}
                }
                if depth == 0 {
                    break;
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                found.push(name.to_string());
            }
        }
    }
    found
}

/// The module a file of `src/` belongs to: its first path component (`bin` for binaries).
fn module_of(rel: &Path) -> String {
    let first = rel.components().next().expect("a path in src/").as_os_str().to_string_lossy().to_string();
    first.strip_suffix(".rs").unwrap_or(&first).to_string()
}

/// Every import against the table, as `file: module (row a) imports target (row b)`.
fn violations(rows: &BTreeMap<String, usize>, files: &[(String, String)]) -> Vec<String> {
    let mut bad = Vec::new();
    for (rel, src) in files {
        let module = module_of(Path::new(rel));
        if module == "lib" {
            continue;
        }
        let Some(&row) = rows.get(&module) else {
            bad.push(format!("{rel}: module `{module}` is not in the layers table of docs/architecture.md"));
            continue;
        };
        let code = without_tests(src);
        let mut targets = imports(&code, "crate::");
        if module == "bin" {
            targets.extend(imports(&code, "runner::"));
        }
        targets.sort();
        targets.dedup();
        for t in targets.into_iter().filter(|t| *t != module) {
            match rows.get(&t) {
                Some(&r) if r > row => {}
                Some(&r) => bad.push(format!("{rel}: `{module}` (row {row}) imports `{t}` (row {r})")),
                None => bad.push(format!("{rel}: imports `{t}`, which the layers table does not place")),
            }
        }
    }
    bad
}

fn sources(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, root, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path.strip_prefix(root).unwrap().to_string_lossy().to_string();
            out.push((rel, std::fs::read_to_string(&path).unwrap()));
        }
    }
}

#[test]
fn every_module_imports_only_from_the_rows_below_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let rows = rows(&std::fs::read_to_string(root.join("docs/architecture.md")).unwrap());
    let mut files = Vec::new();
    sources(&root.join("src"), &root.join("src"), &mut files);
    assert!(files.len() > 50, "read {} files of src/", files.len());
    let bad = violations(&rows, &files);
    assert!(bad.is_empty(), "imports against the layers of docs/architecture.md:\n{}", bad.join("\n"));
}

/// Each place outside `src/task/` that names a task's variant (`Task::Detect`,
/// `TaskConfig::Segment`, `Stats::Classify`, ...), as `file: line`. `src/config/task.rs`
/// is the config's own (its defaults and the metrics each task logs); the binaries make a
/// task directly to measure it.
fn task_branches(files: &[(String, String)]) -> Vec<String> {
    let mut found = Vec::new();
    for (rel, src) in files {
        if rel.starts_with("task/") || rel == "config/task.rs" || rel.starts_with("bin/") {
            continue;
        }
        for line in without_tests(src).lines() {
            let named = ["Task::", "TaskConfig::", "Stats::"].iter().any(|t| {
                line.match_indices(t).any(|(i, _)| {
                    let before = line[..i].chars().last();
                    let variant = ident(&line[i + t.len()..]);
                    before.is_none_or(|c| !(c.is_alphanumeric() || c == '_'))
                        && ["Classify", "Detect", "Segment", "Localize"].contains(&variant)
                })
            });
            if named {
                found.push(format!("{rel}: {}", line.trim()));
            }
        }
    }
    found
}

#[test]
fn the_task_is_decided_in_one_place() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    sources(&root.join("src"), &root.join("src"), &mut files);
    let branches = task_branches(&files);
    assert!(branches.is_empty(), "outside src/task/, code that names a task's variant:\n{}", branches.join("\n"));
    // The plan resolves `[task]` into a task, once.
    let resolves: Vec<&String> = files
        .iter()
        .filter(|(rel, src)| !rel.starts_with("task/") && src.contains("Task::resolve("))
        .map(|(r, _)| r)
        .collect();
    assert_eq!(resolves, ["plan/mod.rs"]);
    // The check sees a branch where there is one.
    let probe = [("train/x.rs".to_string(), "fn f(t: &Task) { if matches!(t, Task::Detect(_)) {} }\n".to_string())];
    assert_eq!(task_branches(&probe), ["train/x.rs: fn f(t: &Task) { if matches!(t, Task::Detect(_)) {} }"]);
}

#[test]
fn the_run_folders_file_names_live_in_runlog() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    sources(&root.join("src"), &root.join("src"), &mut files);
    let names = [
        "\"config.toml\"",
        "\"run.parquet\"",
        "\"params.parquet\"",
        "\"metrics.parquet\"",
        "\"model.safetensors\"",
        "\"checkpoints\"",
        "\"predictions.parquet\"",
        "\"detections.parquet\"",
        "\"segmentation.parquet\"",
        "\"localizations.parquet\"",
    ];
    let mut found = Vec::new();
    for (rel, src) in files.iter().filter(|(rel, _)| !rel.starts_with("runlog/")) {
        for line in without_tests(src).lines() {
            if names.iter().any(|n| line.contains(n)) {
                found.push(format!("{rel}: {}", line.trim()));
            }
        }
    }
    assert!(found.is_empty(), "run-folder file names outside runlog::files:\n{}", found.join("\n"));
}

#[test]
fn the_layer_check_finds_what_goes_up() {
    let rows: BTreeMap<String, usize> =
        [("cli", 1), ("sweep", 2), ("ops", 14), ("bin", 1)].map(|(m, r)| (m.to_string(), r)).into_iter().collect();
    let file = |p: &str, s: &str| (p.to_string(), s.to_string());
    let files = [
        // A leaf that reaches up: in a `use` group, a path, a nested group.
        file("ops/mod.rs", "use crate::{sweep::run, cli};\nfn f() { crate::cli::main(); }\n"),
        // Downward, in comments, in tests: allowed.
        file("cli.rs", "use crate::sweep::{self, Request};\n// crate::nothing\n"),
        file("sweep.rs", "use crate::ops;\n#[cfg(test)]\nmod tests {\n    use crate::cli::Cli;\n    fn g() { let s = \"{ \\\" {\"; }\n}\n"),
        // A module the table does not place, and a binary's `runner::` path upward.
        file("newmod.rs", "fn f() {}\n"),
        file("bin/tool.rs", "use runner::sweep;\nuse runner::unknown;\n"),
    ];
    let bad = violations(&rows, &files);
    assert_eq!(
        bad,
        [
            "ops/mod.rs: `ops` (row 14) imports `cli` (row 1)",
            "ops/mod.rs: `ops` (row 14) imports `sweep` (row 2)",
            "newmod.rs: module `newmod` is not in the layers table of docs/architecture.md",
            "bin/tool.rs: imports `unknown`, which the layers table does not place",
        ],
        "{bad:#?}"
    );
}

/// Each `crate::` path outside a `use` statement (test code, comments and macros' `$crate`
/// aside), as `file: line`: a dependency a reader of the `use` lines would not see.
fn inline_paths(files: &[(String, String)]) -> Vec<String> {
    let mut found = Vec::new();
    for (rel, src) in files {
        let mut in_use = false;
        for line in without_tests(src).lines() {
            let t = line.trim_start();
            let t = t.strip_prefix("pub(crate) ").or_else(|| t.strip_prefix("pub ")).unwrap_or(t);
            if t.starts_with("use ") {
                in_use = true;
            }
            let inline = line
                .match_indices("crate::")
                .any(|(i, _)| line[..i].chars().last().is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == '$')));
            if inline && !in_use {
                found.push(format!("{rel}: {}", line.trim()));
            }
            if in_use && line.contains(';') {
                in_use = false;
            }
        }
    }
    found
}

#[test]
fn dependencies_are_named_in_use_lines() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    sources(&root.join("src"), &root.join("src"), &mut files);
    let found = inline_paths(&files);
    assert!(found.is_empty(), "`crate::` paths outside `use` lines:\n{}", found.join("\n"));
    let probe = [(
        "x.rs".to_string(),
        "use crate::{\n    a::B,\n};\nfn f() { crate::a::g(); $crate::m!(); my_crate::h(); }\n// crate::c\n"
            .to_string(),
    )];
    assert_eq!(inline_paths(&probe), ["x.rs: fn f() { crate::a::g(); $crate::m!(); my_crate::h(); }"]);
}
