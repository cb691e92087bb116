//! `kiln.toml`: the repo's settings that belong to no host — today the
//! binary caches it substitutes from and the keys it trusts.
//!
//! ```toml
//! [cache]
//! # Caches to substitute from before building, tried in order.
//! substituters = ["s3://kiln-cache/fleet", "file:///srv/kiln-cache"]
//! # Public keys (`kiln cache keygen` prints one) whose signatures are
//! # trusted. Public keys are not secrets: they belong in the repo.
//! trusted_keys = ["cache.home.arpa-1:Xx5t…="]
//! ```
//!
//! The file is optional. Secrets never go here: the cache's S3 credentials
//! come from the `AWS_*` environment (or a profile), the signing key from a
//! file named by `--secret-key-file` / `KILN_CACHE_SECRET_KEY_FILE`.
//! The environment and the command line add to (trusted keys) or replace
//! (substituters) what the file says: see [`CacheConfig::resolve`].

use std::path::Path;

use super::diagnostic::Diagnostic;
use super::node::{Node, parse_document};
use super::source::{Sources, Span};
use crate::cache::record::PublicKey;

/// The settings file's name, at the repo root.
pub const FILE: &str = "kiln.toml";

/// The repo's settings (all defaults when there is no `kiln.toml`).
#[derive(Clone, Debug, Default)]
pub struct Settings {
    pub cache: CacheSettings,
}

#[derive(Clone, Debug, Default)]
pub struct CacheSettings {
    /// Cache URLs, in order.
    pub substituters: Vec<String>,
    pub trusted_keys: Vec<PublicKey>,
}

/// Why `kiln.toml` was refused: every problem, with the sources to render
/// them against.
#[derive(Debug)]
pub struct SettingsError {
    pub sources: Sources,
    pub diagnostics: Vec<Diagnostic>,
}

/// The URL schemes a cache may have.
pub const CACHE_SCHEMES: [&str; 3] = ["s3", "file", "memory"];

/// Read `ROOT/kiln.toml`; defaults when it does not exist.
pub fn load(root: &Path) -> Result<Settings, SettingsError> {
    let path = root.join(FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Settings::default());
        }
        Err(error) => {
            return Err(SettingsError {
                sources: Sources::default(),
                diagnostics: vec![
                    Diagnostic::error(
                        "settings",
                        format!("cannot read {}: {error}", path.display()),
                    )
                    .help("check the file's permissions"),
                ],
            });
        }
    };
    parse(FILE, &text)
}

/// Parse the text of a settings file called `name` (as it is shown).
pub fn parse(name: &str, text: &str) -> Result<Settings, SettingsError> {
    let mut sources = Sources::default();
    let source = sources.add(name, text);
    let document = match parse_document(source, text) {
        Ok(document) => document,
        Err(diagnostic) => {
            return Err(SettingsError {
                sources,
                diagnostics: vec![*diagnostic],
            });
        }
    };
    let mut diagnostics = Vec::new();
    let mut settings = Settings::default();
    let table = document.as_table().expect("a document is a table");
    for entry in &table.entries {
        match entry.key.as_str() {
            "cache" => read_cache(&entry.value, &mut settings.cache, &mut diagnostics),
            other => diagnostics.push(unknown_key(other, entry.key_span, &["cache"], "")),
        }
    }
    diagnostics.sort_by_key(|d| d.primary_span().map(|s| s.range().start));
    if diagnostics.is_empty() {
        Ok(settings)
    } else {
        Err(SettingsError {
            sources,
            diagnostics,
        })
    }
}

fn unknown_key(key: &str, span: Span, known: &[&str], within: &str) -> Diagnostic {
    let suggestion = crate::suggest::did_you_mean(key, known.iter().copied());
    Diagnostic::error("settings", format!("unknown setting `{within}{key}`"))
        .at(span, "not a setting kiln knows")
        .help(match suggestion {
            Some(suggestion) => suggestion,
            None => format!(
                "the settings{} are: {}",
                if within.is_empty() {
                    String::new()
                } else {
                    format!(" of [{}]", within.trim_end_matches('.'))
                },
                known
                    .iter()
                    .map(|k| format!("`{within}{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })
}

fn wrong_type(node: &Node, what: &str, expected: &str) -> Diagnostic {
    Diagnostic::error("settings", format!("`{what}` must be {expected}"))
        .at(node.span, format!("this is a {}", node.type_name()))
}

/// The strings of an array of strings (each with its node).
fn strings<'a>(node: &'a Node, what: &str, diagnostics: &mut Vec<Diagnostic>) -> Vec<&'a Node> {
    let Some(items) = node.as_array() else {
        diagnostics.push(wrong_type(node, what, "an array of strings"));
        return Vec::new();
    };
    items
        .iter()
        .filter(|item| {
            let ok = item.as_str().is_some();
            if !ok {
                diagnostics.push(wrong_type(item, what, "an array of strings"));
            }
            ok
        })
        .collect()
}

fn read_cache(node: &Node, cache: &mut CacheSettings, diagnostics: &mut Vec<Diagnostic>) {
    let Some(table) = node.as_table() else {
        diagnostics.push(wrong_type(node, "cache", "a table (`[cache]`)"));
        return;
    };
    for entry in &table.entries {
        match entry.key.as_str() {
            "substituters" => {
                for item in strings(&entry.value, "cache.substituters", diagnostics) {
                    let url = item.as_str().expect("filtered to strings");
                    match check_cache_url(url) {
                        Ok(()) => cache.substituters.push(url.to_owned()),
                        Err((problem, hint)) => diagnostics.push(
                            Diagnostic::error("settings", "not a cache URL")
                                .at(item.span, problem)
                                .help(hint),
                        ),
                    }
                }
            }
            "trusted_keys" => {
                for item in strings(&entry.value, "cache.trusted_keys", diagnostics) {
                    let text = item.as_str().expect("filtered to strings");
                    match PublicKey::parse(text) {
                        Ok(key) => cache.trusted_keys.push(key),
                        Err(error) => diagnostics.push(
                            Diagnostic::error("settings", "not a public key")
                                .at(item.span, error.to_string())
                                .help(
                                    "a public key is `NAME:BASE64`, as `kiln cache keygen` prints \
                                     it (never the secret key: that stays in a file outside the repo)",
                                ),
                        ),
                    }
                }
            }
            other => diagnostics.push(unknown_key(
                other,
                entry.key_span,
                &["substituters", "trusted_keys"],
                "cache.",
            )),
        }
    }
}

/// Whether `url` names a cache kiln can open (without opening it).
pub fn check_cache_url(url: &str) -> Result<(), (String, String)> {
    let hint = "a cache is `s3://BUCKET/PREFIX`, `file:///ABSOLUTE/PATH` or `memory://`".to_owned();
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err((format!("`{url}` has no scheme"), hint));
    };
    if !CACHE_SCHEMES.contains(&scheme) {
        return Err((format!("`{scheme}://` is not a cache kiln can use"), hint));
    }
    if scheme == "s3" && (rest.is_empty() || rest.starts_with('/')) {
        return Err(("an s3:// URL names a bucket".to_owned(), hint));
    }
    if scheme == "s3" && rest.contains('@') {
        return Err((
            "credentials do not belong in a cache URL".to_owned(),
            "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment (or use a profile)"
                .to_owned(),
        ));
    }
    if scheme == "file" && !rest.starts_with('/') {
        return Err(("a file:// URL needs an absolute path".to_owned(), hint));
    }
    Ok(())
}

/// The caches and keys one command uses, from `kiln.toml`, the environment
/// and the command line.
#[derive(Clone, Debug, Default)]
pub struct CacheConfig {
    /// Where each substituter came from is not kept: the URL says enough.
    pub substituters: Vec<String>,
    pub trusted_keys: Vec<PublicKey>,
}

/// Where substituters and trusted keys come from besides `kiln.toml`.
#[derive(Clone, Debug, Default)]
pub struct CacheOverrides {
    /// `--substituter URL…`: replaces every other list when given.
    pub substituters: Vec<String>,
    /// `KILN_SUBSTITUTERS` (space-separated): replaces `kiln.toml`'s list.
    pub env_substituters: Option<String>,
    /// `--trusted-key KEY…`: added.
    pub trusted_keys: Vec<String>,
    /// `KILN_TRUSTED_KEYS` (space-separated): added.
    pub env_trusted_keys: Option<String>,
    /// `--no-substitute`: no substituters at all.
    pub disabled: bool,
}

impl CacheConfig {
    /// Combine: substituters from the command line, else
    /// `KILN_SUBSTITUTERS`, else `kiln.toml`; trusted keys from all three.
    /// An error names the bad value and where it came from.
    pub fn resolve(
        settings: &CacheSettings,
        overrides: &CacheOverrides,
    ) -> Result<CacheConfig, String> {
        let substituters: Vec<(String, &str)> = if overrides.disabled {
            Vec::new()
        } else if !overrides.substituters.is_empty() {
            overrides
                .substituters
                .iter()
                .map(|u| (u.clone(), "--substituter"))
                .collect()
        } else if let Some(list) = &overrides.env_substituters {
            list.split_whitespace()
                .map(|u| (u.to_owned(), "KILN_SUBSTITUTERS"))
                .collect()
        } else {
            settings
                .substituters
                .iter()
                .map(|u| (u.clone(), FILE))
                .collect()
        };
        for (url, from) in &substituters {
            check_cache_url(url)
                .map_err(|(problem, hint)| format!("{from}: {problem}\n  hint: {hint}"))?;
        }
        let mut trusted_keys = settings.trusted_keys.clone();
        let from_env = overrides
            .env_trusted_keys
            .as_deref()
            .unwrap_or_default()
            .split_whitespace()
            .map(|k| (k, "KILN_TRUSTED_KEYS"));
        let from_cli = overrides
            .trusted_keys
            .iter()
            .map(|k| (k.as_str(), "--trusted-key"));
        for (text, from) in from_env.chain(from_cli) {
            let key = PublicKey::parse(text).map_err(|e| {
                format!("{from}: {e}\n  hint: a public key is `NAME:BASE64`, as `kiln cache keygen` prints it")
            })?;
            if !trusted_keys.contains(&key) {
                trusted_keys.push(key);
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        Ok(CacheConfig {
            substituters: substituters
                .into_iter()
                .map(|(u, _)| u)
                .filter(|u| seen.insert(u.clone()))
                .collect(),
            trusted_keys,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::record::SecretKey;

    fn public() -> String {
        SecretKey::generate("test-1").unwrap().public().to_text()
    }

    fn messages(error: SettingsError) -> Vec<String> {
        error
            .diagnostics
            .iter()
            .map(|d| {
                let span = d.primary_span().expect("a located problem");
                format!("{} at {}", d.message, error.sources.location(span))
            })
            .collect()
    }

    #[test]
    fn reads_caches_and_keys() {
        let key = public();
        let text = format!(
            "[cache]\nsubstituters = [\"s3://bucket/fleet\", \"file:///srv/cache\"]\ntrusted_keys = [\"{key}\"]\n"
        );
        let settings = parse("kiln.toml", &text).unwrap();
        assert_eq!(
            settings.cache.substituters,
            ["s3://bucket/fleet", "file:///srv/cache"]
        );
        assert_eq!(settings.cache.trusted_keys[0].to_text(), key);
        assert!(
            parse("kiln.toml", "")
                .unwrap()
                .cache
                .substituters
                .is_empty()
        );
    }

    #[test]
    fn bad_settings_are_located() {
        let got = messages(
            parse(
                "kiln.toml",
                "[cache]\nsubstituter = []\ntrusted_keys = [\"nope\", 3]\nsubstituters = [\"http://x\", \"s3://a:b@bucket\"]\n[deploy]\n",
            )
            .unwrap_err(),
        );
        assert_eq!(
            got,
            [
                "unknown setting `cache.substituter` at kiln.toml:2:1",
                "not a public key at kiln.toml:3:17",
                "`cache.trusted_keys` must be an array of strings at kiln.toml:3:25",
                "not a cache URL at kiln.toml:4:17",
                "not a cache URL at kiln.toml:4:29",
                "unknown setting `deploy` at kiln.toml:5:2",
            ]
        );
        let syntax = messages(parse("kiln.toml", "[cache\n").unwrap_err());
        assert_eq!(syntax, ["invalid TOML at kiln.toml:1:7"]);
    }

    #[test]
    fn overrides_replace_caches_and_add_keys() {
        let file_key = public();
        let env_key = public();
        let cli_key = public();
        let settings = parse(
            "kiln.toml",
            &format!("[cache]\nsubstituters = [\"file:///a\"]\ntrusted_keys = [\"{file_key}\"]\n"),
        )
        .unwrap()
        .cache;
        let resolve = |overrides: CacheOverrides| CacheConfig::resolve(&settings, &overrides);
        let plain = resolve(CacheOverrides::default()).unwrap();
        assert_eq!(plain.substituters, ["file:///a"]);
        let env = resolve(CacheOverrides {
            env_substituters: Some(" file:///b  memory:// ".into()),
            env_trusted_keys: Some(env_key.clone()),
            ..CacheOverrides::default()
        })
        .unwrap();
        assert_eq!(env.substituters, ["file:///b", "memory://"]);
        assert_eq!(env.trusted_keys.len(), 2);
        let cli = resolve(CacheOverrides {
            substituters: vec!["file:///c".into(), "file:///c".into()],
            env_substituters: Some("file:///b".into()),
            trusted_keys: vec![cli_key.clone(), file_key.clone()],
            env_trusted_keys: Some(env_key),
            disabled: false,
        })
        .unwrap();
        assert_eq!(cli.substituters, ["file:///c"]);
        assert_eq!(cli.trusted_keys.len(), 3);
        let off = resolve(CacheOverrides {
            substituters: vec!["file:///c".into()],
            disabled: true,
            ..CacheOverrides::default()
        })
        .unwrap();
        assert!(off.substituters.is_empty());
        let bad = resolve(CacheOverrides {
            env_substituters: Some("https://cache".into()),
            ..CacheOverrides::default()
        })
        .unwrap_err();
        assert!(
            bad.starts_with("KILN_SUBSTITUTERS: `https://` is not a cache"),
            "{bad}"
        );
        let bad_key = resolve(CacheOverrides {
            trusted_keys: vec!["x".into()],
            ..CacheOverrides::default()
        })
        .unwrap_err();
        assert!(bad_key.starts_with("--trusted-key: "), "{bad_key}");
    }
}
