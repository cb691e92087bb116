//! The API token and how kiln trusts the node's certificate.
//!
//! The secret comes from an environment variable or a file, never from the
//! command line, the repo, the store or a log: [`Token`]'s `Debug` and
//! `Display` print only the token id.

use std::fmt;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::ApiError;

/// `USER@REALM!TOKENID` and its secret.
#[derive(Clone)]
pub struct Token {
    id: String,
    secret: String,
}

impl Token {
    /// A token id as pve-access-control accepts it (`user@realm!name`, the
    /// name matching `[A-Za-z][A-Za-z0-9.\-_]+`), with its secret.
    pub fn new(id: &str, secret: &str) -> Result<Token, ApiError> {
        let valid = id.split_once('!').is_some_and(|(user, name)| {
            user.contains('@')
                && !user.starts_with('@')
                && !user.ends_with('@')
                && name.len() >= 2
                && name.starts_with(|c: char| c.is_ascii_alphabetic())
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        });
        if !valid {
            return Err(ApiError::Config(format!(
                "`{id}` is not an API token id: expected USER@REALM!TOKENID, e.g. kiln@pve!deploy"
            )));
        }
        let secret = secret.trim();
        if secret.is_empty() || secret.contains(['\n', '\r', ';']) {
            return Err(ApiError::Config(format!(
                "the secret of token `{id}` is empty or not a single line"
            )));
        }
        Ok(Token {
            id: id.to_owned(),
            secret: secret.to_owned(),
        })
    }

    /// The secret from environment variable `variable`.
    pub fn from_env(id: &str, variable: &str) -> Result<Token, ApiError> {
        let secret = std::env::var(variable).map_err(|_| {
            ApiError::Config(format!(
                "the secret of token `{id}` is read from the environment variable {variable}, which is not set"
            ))
        })?;
        Token::new(id, &secret)
    }

    /// The secret from the first line of `file` (which should be readable
    /// only by its owner).
    pub fn from_file(id: &str, file: &Path) -> Result<Token, ApiError> {
        let text = std::fs::read_to_string(file).map_err(|e| {
            ApiError::Config(format!(
                "the secret of token `{id}` is read from {}: {e}",
                file.display()
            ))
        })?;
        Token::new(id, text.lines().next().unwrap_or_default())
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The `Authorization` header value. Only the client calls this.
    pub(super) fn header(&self) -> String {
        format!("PVEAPIToken={}={}", self.id, self.secret)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({} = <secret>)", self.id)
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

/// How to trust the node's TLS certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trust {
    /// The platform's roots (a certificate from a real CA or ACME).
    System,
    /// A CA certificate file in PEM (e.g. the cluster's `pve-root-ca.pem`).
    CaFile(std::path::PathBuf),
    /// The SHA-256 fingerprint of the node's certificate, as `pvenode cert
    /// info` and the web UI show it (`AB:CD:…`), for the usual self-signed
    /// node certificate.
    Fingerprint([u8; 32]),
}

impl Trust {
    /// Parse `AB:CD:…` (32 bytes, colons optional, any case).
    pub fn fingerprint(text: &str) -> Result<Trust, ApiError> {
        let hex: String = text.chars().filter(|c| *c != ':').collect();
        let bad = || {
            ApiError::Config(format!(
                "`{text}` is not a SHA-256 certificate fingerprint (64 hex digits, colons allowed)"
            ))
        };
        if hex.len() != 64 {
            return Err(bad());
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Trust::Fingerprint(bytes))
    }
}

/// The fingerprint of a DER certificate, `AB:CD:…`.
pub fn fingerprint_of(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_ids_are_checked_and_secrets_never_printed() {
        let token =
            Token::new("kiln@pve!deploy", "0f0e6d6c-aaaa-bbbb-cccc-1234567890ab\n").unwrap();
        assert_eq!(
            token.header(),
            "PVEAPIToken=kiln@pve!deploy=0f0e6d6c-aaaa-bbbb-cccc-1234567890ab"
        );
        for shown in [format!("{token:?}"), format!("{token}")] {
            assert!(!shown.contains("0f0e6d6c"), "{shown}");
        }
        for bad in [
            "kiln@pve",
            "kiln!deploy",
            "kiln@pve!1x",
            "kiln@pve!d",
            "@pve!deploy",
        ] {
            assert!(Token::new(bad, "s").is_err(), "{bad}");
        }
        assert!(Token::new("kiln@pve!deploy", "  ").is_err());
        assert!(Token::new("kiln@pve!deploy", "a\nb").is_err());
    }

    #[test]
    fn fingerprints_parse() {
        let text = "AB:".repeat(31) + "CD";
        assert!(
            matches!(Trust::fingerprint(&text), Ok(Trust::Fingerprint(b)) if b[0] == 0xAB && b[31] == 0xCD)
        );
        assert!(Trust::fingerprint("AB:CD").is_err());
        assert!(Trust::fingerprint(&"ZZ".repeat(32)).is_err());
        assert_eq!(fingerprint_of(b"x").len(), 32 * 3 - 1);
    }
}
