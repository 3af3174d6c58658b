//! The core's YAML reader (`config::yaml`, on yaml-rust2's event parser) reads every YAML text in
//! this repository to the same value as the parser it replaced (serde_yaml 0.9, kept only as a
//! dev-dependency for this comparison), so every configuration loads as before.

use std::path::{Path, PathBuf};

use envoy_smc_core::config::yaml;
use serde_json::Value as Json;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every `*.yaml`/`*.yml` and `*.sh` file under `dir`, skipping build outputs and hidden dirs.
fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with('.') || name == "target" || name.starts_with("bazel-") {
            continue;
        }
        if path.is_dir() {
            files(&path, out);
        } else if [".yaml", ".yml", ".sh"].iter().any(|e| name.ends_with(e)) {
            out.push(path);
        }
    }
}

/// The YAML texts in a file: its documents, or for a shell script the bodies of here-documents
/// written to `*.yaml` files (configurations the VM tests and benchmarks hand to the loaders).
fn texts(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    if path.extension().is_some_and(|e| e == "sh") {
        let mut out = Vec::new();
        let mut lines = text.lines();
        while let Some(line) = lines.next() {
            let Some((head, word)) = line.split_once("<<") else {
                continue;
            };
            if !(head.contains(".yaml") || head.contains(".yml")) {
                continue;
            }
            let end = word
                .trim()
                .trim_start_matches('-')
                .trim_matches(['\'', '"']);
            let body: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != end).collect();
            out.push(body.join("\n"));
        }
        return out;
    }
    let mut docs = vec![String::new()];
    for line in text.lines() {
        if line.starts_with("---") {
            docs.push(String::new());
        }
        let doc = docs.last_mut().unwrap();
        doc.push_str(line);
        doc.push('\n');
    }
    docs
}

#[test]
fn every_yaml_text_in_the_repository_reads_as_before() {
    let mut paths = Vec::new();
    files(&repo_root(), &mut paths);
    let (mut compared, mut wrong) = (0, Vec::new());
    for path in &paths {
        for (i, text) in texts(path).iter().enumerate() {
            let Ok(before) = serde_yaml::from_str::<Json>(text) else {
                continue; // Not YAML the old loader accepted either.
            };
            compared += 1;
            match yaml::to_json(text) {
                Ok(now) if now == before => {}
                other => wrong.push(format!("{} text {i}: {other:?}", path.display())),
            }
        }
    }
    assert!(wrong.is_empty(), "read differently:\n{}", wrong.join("\n"));
    // envoy-config/, examples/, bench/, monitoring/, tests/vm here-documents, bazel tests.
    assert!(compared >= 40, "only {compared} YAML texts found");
    eprintln!("{compared} YAML texts read the same");
}

#[test]
fn scalars_are_typed_as_before() {
    let cases = [
        "0",
        "-0",
        "+1",
        "42",
        "-17",
        "0x1F",
        "-0x10",
        "0o17",
        "0b101",
        "007",
        "-007",
        "0755.5",
        "1.5",
        "-2.25",
        "1e3",
        "1E-2",
        ".5",
        "5.",
        "+.5",
        "1_000",
        "true",
        "True",
        "TRUE",
        "false",
        "False",
        "yes",
        "no",
        "on",
        "off",
        "y",
        "null",
        "Null",
        "NULL",
        "~",
        "",
        "nan",
        "inf",
        "infinity",
        "18446744073709551615",
        "-9223372036854775808",
        "10.0.0.0/8",
        "fd00::/8",
        "'quoted'",
        "\"1\"",
        "'true'",
        "\"~\"",
        "\"\"",
        "MODE_AUTO",
        "1.2.3",
        "0x",
        "+-1",
        "[1, two, 3.0]",
        "{a: 1, 'b': \"2\"}",
        "|\n  line\n",
        ">-\n  folded\n  text\n",
        "\"tab\\there \\u00e9\"",
        "'it''s'",
        "value # comment",
    ];
    let mut wrong = Vec::new();
    for text in cases {
        let doc = format!("v: {text}\n");
        let before: Json = serde_yaml::from_str(&doc).unwrap();
        match yaml::to_json(&doc) {
            Ok(now) if now == before => {}
            other => wrong.push(format!("{text:?}: before {before:?}, now {other:?}")),
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
