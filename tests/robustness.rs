//! Bad input never panics: arbitrary bytes, and random edits of the real
//! example files, always evaluate to specs or diagnostics.

mod common;

use std::path::PathBuf;

use kiln::config::Repo;
use kiln::eval::Evaluator;
use proptest::prelude::*;

fn example_files() -> Vec<(String, Vec<u8>)> {
    let root = common::root();
    let mut files = Vec::new();
    for directory in ["hosts", "images", "modules", "stacks"] {
        for entry in std::fs::read_dir(root.join(directory)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let name = format!(
                    "{directory}/{}",
                    path.file_name().unwrap().to_string_lossy()
                );
                files.push((name, std::fs::read(&path).unwrap()));
            }
        }
    }
    files.sort();
    files
}

/// Evaluate and render everything; the point is that it returns.
fn check_all(files: Vec<(String, Vec<u8>)>) {
    let evaluator = Evaluator::new(Repo::from_files(PathBuf::from("/repo"), files));
    let report = kiln::ops::check(&evaluator);
    for diagnostic in &report.diagnostics {
        let _ = kiln::config::diagnostic::render(diagnostic, &evaluator.repo.sources, false);
        let _ = serde_json::to_string(&kiln::config::diagnostic::to_json(
            diagnostic,
            &evaluator.repo.sources,
        ))
        .unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn arbitrary_bytes_as_a_host(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let mut files = example_files();
        files.push(("hosts/fuzz.toml".into(), bytes));
        check_all(files);
    }

    #[test]
    fn edited_example_files(file in 0usize..14, edits in proptest::collection::vec((any::<u16>(), 0u8..4, "[\\[\\]{}=\".$a-z0-9 \n#/-]{0,6}"), 1..6)) {
        let mut files = example_files();
        let index = file % files.len();
        let mut text = String::from_utf8(files[index].1.clone()).unwrap();
        for (at, kind, insert) in edits {
            // Work on char boundaries so the edit stays UTF-8.
            let boundaries: Vec<usize> = text.char_indices().map(|(i, _)| i).chain([text.len()]).collect();
            let start = boundaries[at as usize % boundaries.len()];
            let end = boundaries[(at as usize % boundaries.len() + (kind as usize)).min(boundaries.len() - 1)];
            text.replace_range(start..end.max(start), &insert);
        }
        files[index].1 = text.into_bytes();
        check_all(files);
    }
}
