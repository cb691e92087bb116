//! `kiln cache …`: binary cache keys, push and pull.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use super::output::Printer;
use crate::cache::CacheBackend;
use crate::cache::record::SecretKey;
use crate::cache::transfer::{self, Outcome};
use crate::config::settings;

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Make an ed25519 signing key pair: the secret key goes to a new file
    /// (mode 0600, never printed), the public key to stdout, for every
    /// machine that pulls from the cache. Keys use Nix's format.
    Keygen {
        /// The key's name, conventionally the cache's host name and a
        /// number: `cache.home.arpa-1`.
        name: String,
        /// Where to write the secret key (refused if it exists).
        #[arg(long, value_name = "FILE")]
        secret_key_file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Upload store paths and everything they refer to, signed: each
    /// path's zstd NAR archive and its record. Paths already in the cache
    /// are skipped; pushing is safe to repeat and to run concurrently.
    Push {
        /// The cache: `s3://BUCKET/PREFIX`, `file:///PATH`.
        #[arg(long, value_name = "URL")]
        to: String,
        /// The secret signing key (`kiln cache keygen`); never on the
        /// command line itself.
        #[arg(long, value_name = "FILE", env = "KILN_CACHE_SECRET_KEY_FILE")]
        secret_key_file: PathBuf,
        /// Store paths or result links.
        #[arg(required = true)]
        paths: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Download store paths and everything they refer to into the store,
    /// verifying each record's signature against the trusted keys and each
    /// archive against its record; nothing unverified is registered.
    Pull {
        /// The cache: `s3://BUCKET/PREFIX`, `file:///PATH`.
        #[arg(long, value_name = "URL")]
        from: String,
        /// A trusted public key (`NAME:BASE64`); repeat for several. Also
        /// read from `KILN_TRUSTED_KEYS` (space-separated) and, inside a
        /// repo, from `trusted_keys` under [cache] in kiln.toml.
        #[arg(long = "trusted-key", value_name = "KEY")]
        trusted_keys: Vec<String>,
        /// Store paths (`/…/store/HASH-NAME` or `HASH-NAME`).
        #[arg(required = true)]
        paths: Vec<String>,
        #[arg(long)]
        json: bool,
    },
}

pub(super) fn cache_command(
    command: &CacheCommand,
    store_location: &std::path::Path,
    repo: Option<&std::path::Path>,
    printer: &Printer,
) -> anyhow::Result<ExitCode> {
    match command {
        CacheCommand::Push {
            to,
            secret_key_file,
            paths,
            json,
        } => push(store_location, to, secret_key_file, paths, *json, printer),
        CacheCommand::Pull {
            from,
            trusted_keys,
            paths,
            json,
        } => pull(
            store_location,
            repo,
            from,
            trusted_keys,
            paths,
            *json,
            printer,
        ),
        CacheCommand::Keygen {
            name,
            secret_key_file,
            json,
        } => {
            let key = match SecretKey::generate(name) {
                Ok(key) => key,
                Err(error) => {
                    printer.fatal(&error.to_string());
                    return Ok(ExitCode::from(1));
                }
            };
            // create_new: never overwrite a key (losing one means
            // re-signing the whole cache); 0600 from the start.
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(secret_key_file);
            let mut file = match file {
                Ok(file) => file,
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                    printer.fatal(&format!(
                        "{} exists: kiln never overwrites a key; choose another file or remove it first",
                        secret_key_file.display()
                    ));
                    return Ok(ExitCode::from(1));
                }
                Err(error) => {
                    printer.fatal(&format!(
                        "cannot create {}: {error}",
                        secret_key_file.display()
                    ));
                    return Ok(ExitCode::from(1));
                }
            };
            let written = file
                .write_all(format!("{}\n", key.to_text()).as_bytes())
                .and_then(|()| file.sync_all());
            if let Err(error) = written {
                drop(file);
                let _ = std::fs::remove_file(secret_key_file);
                printer.fatal(&format!(
                    "cannot write {}: {error}",
                    secret_key_file.display()
                ));
                return Ok(ExitCode::from(1));
            }
            let public = key.public().to_text();
            if *json {
                printer.json(&serde_json::json!({
                    "kind": "cache-key",
                    "version": 1,
                    "name": name,
                    "public_key": public,
                    "secret_key_file": secret_key_file,
                }))?;
            } else {
                printer.line(&public)?;
                printer.status(&format!(
                    "wrote the secret key to {} (mode 0600): keep it out of the repo; \
                     give the public key above to every machine that pulls from the cache",
                    secret_key_file.display()
                ));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn push(
    store_location: &std::path::Path,
    url: &str,
    secret_key_file: &std::path::Path,
    paths: &[String],
    json: bool,
    printer: &Printer,
) -> anyhow::Result<ExitCode> {
    let store = crate::store::Store::open(store_location)?;
    let key = match transfer::read_secret_key(secret_key_file) {
        Ok(key) => key,
        Err(error) => {
            printer.fatal(&error.to_string());
            return Ok(ExitCode::from(1));
        }
    };
    let mut roots = Vec::new();
    for text in paths {
        match store.parse_path(text) {
            Ok(path) => roots.push(path),
            Err(error) => {
                printer.fatal(&error.to_string());
                return Ok(ExitCode::from(1));
            }
        }
    }
    let cache = match CacheBackend::open(url) {
        Ok(cache) => cache,
        Err(error) => {
            printer.fatal(&error.to_string());
            return Ok(ExitCode::from(1));
        }
    };
    let result = transfer::push_closure(&store, &cache, &key, &roots, |path, outcome| {
        if outcome == Outcome::Transferred {
            printer.status(&format!("pushed {path}"));
        }
    });
    report(result, "pushed", "already in the cache", url, json, printer)
}

fn pull(
    store_location: &std::path::Path,
    repo: Option<&std::path::Path>,
    url: &str,
    keys: &[String],
    paths: &[String],
    json: bool,
    printer: &Printer,
) -> anyhow::Result<ExitCode> {
    let store = crate::store::Store::open(store_location)?;
    // kiln.toml's trusted keys too, when run inside a repo.
    let settings = match repo {
        Some(root) => match settings::load(root) {
            Ok(settings) => settings,
            Err(error) => {
                printer.settings_error(&error);
                return Ok(ExitCode::from(1));
            }
        },
        None => settings::Settings::default(),
    };
    let overrides = settings::CacheOverrides {
        trusted_keys: keys.to_vec(),
        env_trusted_keys: std::env::var("KILN_TRUSTED_KEYS").ok(),
        disabled: true,
        ..settings::CacheOverrides::default()
    };
    let trusted = match settings::CacheConfig::resolve(&settings.cache, &overrides) {
        Ok(config) => config.trusted_keys,
        Err(message) => {
            printer.fatal(&message);
            return Ok(ExitCode::from(1));
        }
    };
    if trusted.is_empty() {
        printer.fatal(
            "no trusted keys: pass --trusted-key NAME:BASE64 (or set KILN_TRUSTED_KEYS, or `trusted_keys` under [cache] in kiln.toml); kiln pulls nothing it cannot verify",
        );
        return Ok(ExitCode::from(1));
    }
    let cache = match CacheBackend::open(url) {
        Ok(cache) => cache,
        Err(error) => {
            printer.fatal(&error.to_string());
            return Ok(ExitCode::from(1));
        }
    };
    let mut done = Vec::new();
    for text in paths {
        let path = match store.parse_path(text) {
            Ok(path) => path,
            Err(error) => {
                printer.fatal(&error.to_string());
                return Ok(ExitCode::from(1));
            }
        };
        let mut pulled = Vec::new();
        let outcome = transfer::pull(&store, &cache, &trusted, &path, &mut |p, o| {
            printer.status(&format!("pulled {p}"));
            pulled.push((p.clone(), o));
        });
        match outcome {
            Ok(outcome) => {
                if outcome == Outcome::Transferred {
                    printer.status(&format!("pulled {path}"));
                }
                done.extend(pulled);
                done.push((path, outcome));
            }
            Err(error) => return report(Err(error), "", "", url, json, printer),
        }
    }
    report(Ok(done), "pulled", "already valid", url, json, printer)
}

fn report(
    result: Result<Vec<(crate::store::path::StorePath, Outcome)>, transfer::TransferError>,
    verb: &str,
    skipped: &str,
    url: &str,
    json: bool,
    printer: &Printer,
) -> anyhow::Result<ExitCode> {
    let done = match result {
        Ok(done) => done,
        Err(error) => {
            printer.fatal(&error.to_string());
            return Ok(ExitCode::from(1));
        }
    };
    let moved = done
        .iter()
        .filter(|(_, o)| *o == Outcome::Transferred)
        .count();
    if json {
        printer.json(&serde_json::json!({
            "kind": "cache-transfer",
            "version": 1,
            "cache": url,
            "paths": done.iter().map(|(p, o)| serde_json::json!({
                "path": p.to_string(),
                "transferred": *o == Outcome::Transferred,
            })).collect::<Vec<_>>(),
        }))?;
    } else {
        printer.status(&format!(
            "{verb} {moved} path{}, {} {skipped} ({url})",
            if moved == 1 { "" } else { "s" },
            done.len() - moved
        ));
    }
    Ok(ExitCode::SUCCESS)
}
