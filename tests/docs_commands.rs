//! The commands the CI and cache pages tell people to run are commands
//! kiln accepts: every `kiln …` invocation in their `sh`, `yaml` and
//! `console` blocks is parsed with kiln's own command-line definition, so
//! a renamed or removed flag fails here instead of in someone's pipeline.

mod common;

use clap::Parser;

/// Shell words of `line` (quotes removed; no expansion).
fn words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (None, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// Every `kiln …` command in the page's shell-like code blocks, with shell
/// expansions replaced by a plausible value.
fn commands(page: &str) -> Vec<(usize, String, Vec<String>)> {
    let text = std::fs::read_to_string(common::root().join(page)).unwrap();
    let substitution = regex::Regex::new(r"\$\([^)]*\)").unwrap();
    let start = regex::Regex::new(r"(^|[\s;(|&])kiln\s").unwrap();
    let mut found = Vec::new();
    let mut in_block = false;
    let mut continued = String::new();
    for (number, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if let Some(info) = trimmed.strip_prefix("```") {
            in_block = !in_block && ["sh", "yaml", "console"].contains(&info.trim());
            continue;
        }
        if !in_block || trimmed.starts_with('#') {
            continue;
        }
        // Join continuation lines.
        if let Some(head) = line.strip_suffix('\\') {
            continued.push_str(head);
            continue;
        }
        let full = std::mem::take(&mut continued) + line;
        let full = full.trim_start().trim_start_matches("$ ").to_owned();
        let outer = substitution.replace_all(&full, "X").into_owned();
        // Commands inside $(…) too.
        let mut sources = vec![outer];
        sources.extend(
            substitution
                .find_iter(&full)
                .map(|m| m.as_str()[2..m.as_str().len() - 1].to_owned()),
        );
        for source in sources {
            for m in start.find_iter(&source) {
                let rest = &source[m.end()..];
                let end = rest
                    .find(['|', ';', '>', ')'])
                    .into_iter()
                    .chain(rest.find("&&"))
                    .min()
                    .unwrap_or(rest.len());
                let mut args = vec!["kiln".to_owned()];
                let mut previous = String::new();
                for word in words(&rest[..end]) {
                    let value = if word.contains('$') {
                        if previous == "--shard" { "1/3" } else { "X" }.to_owned()
                    } else {
                        word
                    };
                    previous = value.clone();
                    args.push(value);
                }
                // The pages export KILN_CACHE_SECRET_KEY_FILE, which clap
                // reads for push; stand in for it.
                if args.windows(2).any(|w| w == ["cache", "push"])
                    && !args.iter().any(|a| a == "--secret-key-file")
                {
                    args.extend(["--secret-key-file".into(), "ENV".into()]);
                }
                found.push((number + 1, full.clone(), args));
            }
        }
    }
    found
}

#[test]
fn every_kiln_command_in_the_ci_and_cache_pages_parses() {
    let mut checked = 0;
    let mut failures = Vec::new();
    for page in ["docs/src/ci.md", "docs/src/cache.md"] {
        for (line, text, args) in commands(page) {
            checked += 1;
            if let Err(error) = kiln::cli::Cli::try_parse_from(&args) {
                failures.push(format!(
                    "{page}:{line}: {text}\n  parsed as {args:?}\n  {}",
                    error
                        .render()
                        .to_string()
                        .lines()
                        .next()
                        .unwrap_or_default()
                ));
            }
        }
    }
    assert!(checked >= 20, "only {checked} commands found");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn the_extractor_sees_flags_kiln_does_not_have() {
    // A negative control: a made-up flag is refused by the same parser.
    let args = ["kiln", "build", "--all", "--push-everything"];
    assert!(kiln::cli::Cli::try_parse_from(args).is_err());
    assert_eq!(
        words(r#"kiln build --shard "$I/$N" 'a b'"#),
        ["kiln", "build", "--shard", "$I/$N", "a b"]
    );
}
