//! The bad-input corpus: every directory under `tests/bad-input/` (except
//! `_base`) is laid over the minimal repo in `_base/`; `kiln check` must
//! exit 1 without panicking, point at `file:line:col`, and print exactly
//! the case's `expected.snap`.
//!
//! To add a case: make a directory with the files that break the base repo,
//! run `cargo insta test --accept --test bad_input`, and read the snapshot.

mod common;

use std::path::Path;

use common::{copy_tree, kiln, root, text};

fn cases() -> Vec<std::path::PathBuf> {
    let mut cases: Vec<_> = std::fs::read_dir(root().join("tests/bad-input"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir() && !p.file_name().unwrap().to_string_lossy().starts_with('_'))
        .collect();
    cases.sort();
    cases
}

/// Copy the base repo and the case (minus its snapshot) into a temp dir.
fn materialise(case: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&root().join("tests/bad-input/_base"), dir.path());
    copy_tree(case, dir.path());
    let _ = std::fs::remove_file(dir.path().join("expected.snap"));
    dir
}

#[test]
fn corpus_has_at_least_thirty_cases() {
    assert!(
        cases().len() >= 30,
        "only {} bad-input cases",
        cases().len()
    );
}

#[test]
fn every_bad_input_fails_cleanly_with_a_location() {
    let location = regex::Regex::new(r"--> [^\s:]+\.toml:\d+:\d+").unwrap();
    let mut failures = Vec::new();
    for case in cases() {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let dir = materialise(&case);

        let output = kiln(dir.path(), &["check"]);
        let stderr = text(&output.stderr);
        if output.status.code() != Some(1) {
            failures.push(format!(
                "{name}: exit {:?}, expected 1\n{stderr}",
                output.status.code()
            ));
        }
        if stderr.contains("panicked") {
            failures.push(format!("{name}: panicked\n{stderr}"));
        }
        if !location.is_match(&stderr) {
            failures.push(format!("{name}: no file:line:col in\n{stderr}"));
        }

        // The same problems as JSON: one object per line, each located.
        let json = kiln(dir.path(), &["--message-format", "json", "check"]);
        for line in text(&json.stderr).lines() {
            let value: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{name}: not JSON ({e}): {line}"));
            for key in ["file", "line", "column"] {
                if value[key].is_null() {
                    failures.push(format!("{name}: JSON diagnostic without {key}: {line}"));
                }
            }
        }
        let summary: serde_json::Value = serde_json::from_str(text(&json.stdout).trim()).unwrap();
        assert_eq!(summary["ok"], false, "{name}");

        let mut settings = insta::Settings::clone_current();
        settings.set_snapshot_path(&case);
        settings.set_prepend_module_to_snapshot(false);
        settings.set_omit_expression(true);
        settings.set_description(format!("kiln check on tests/bad-input/{name}"));
        settings.bind(|| insta::assert_snapshot!("expected", stderr));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
