//! `kiln cache …`: binary cache keys (push and pull come next).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use super::output::Printer;
use crate::cache::record::SecretKey;

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
}

pub(super) fn cache_command(command: &CacheCommand, printer: &Printer) -> anyhow::Result<ExitCode> {
    match command {
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
