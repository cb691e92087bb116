//! The signed record a binary cache keeps beside each store path's archive,
//! and the ed25519 keys that sign it.
//!
//! A record is a small text file, one `Key: value` per line, in the spirit
//! of Nix's `.narinfo`:
//!
//! ```text
//! StorePath: 0b1k…-docker-host
//! URL: nar/1x4c….nar.zst
//! Compression: zstd
//! FileHash: sha256:<hex of the archive>
//! FileSize: 123456
//! NarHash: sha256:<hex of the NAR serialisation>
//! NarSize: 456789
//! References: 0a9z…-debian-12-debs 7fq2…-overlay
//! Deriver: <hex sha256 of the derivation>
//! Sig: cache.example.org-1:<base64 ed25519 signature>
//! ```
//!
//! The signature covers the **fingerprint**
//! `kiln-cache-1;STOREPATH;sha256:NARHASH;NARSIZE;REF,REF,…;DERIVER`: what
//! the path *is* (its NAR hash and size), what it depends on, and what built
//! it. The archive (`URL`, `FileHash`, `FileSize`) is not signed: a consumer
//! checks the archive's hash against `FileHash` and then, after unpacking,
//! the NAR hash against the signed `NarHash`, so a swapped archive is caught
//! either way.
//!
//! Keys use Nix's text format, so a key made by `nix key generate-secret`
//! works here and the other way round: `NAME:BASE64`, the secret key being
//! the 32-byte seed followed by the 32-byte public key, the public key its 32
//! bytes.

use std::collections::BTreeSet;
use std::fmt;

use aws_lc_rs::rand::SecureRandom;
use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::plan::DrvHash;
use crate::store::path::StorePath;

/// The version of the fingerprint (and record) format.
pub const FINGERPRINT_VERSION: &str = "kiln-cache-1";

const SEED_LEN: usize = 32;
const PUBLIC_LEN: usize = 32;
const SIGNATURE_LEN: usize = 64;

/// A key or record that cannot be read, or a record that fails verification.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("line {line}: {reason}")]
    Syntax { line: usize, reason: String },
    #[error("the key is not NAME:BASE64 ({reason})")]
    Key { reason: String },
    #[error("{path}: the record is not signed")]
    Unsigned { path: String },
    #[error(
        "{path}: signed only by keys that are not trusted ({names}); trust a key by giving its public key (NAME:BASE64) to the machine that pulls"
    )]
    Untrusted { path: String, names: String },
    #[error(
        "{path}: the signature by `{name}` does not match the record: it was changed after signing, or signed with another key of that name"
    )]
    BadSignature { path: String, name: String },
}

/// A secret signing key: a name and an ed25519 seed.
pub struct SecretKey {
    name: String,
    seed: [u8; SEED_LEN],
    pair: Ed25519KeyPair,
}

impl fmt::Debug for SecretKey {
    /// Never the seed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A public key: a name and 32 bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    pub name: String,
    bytes: [u8; PUBLIC_LEN],
}

fn check_key_name(name: &str) -> Result<(), RecordError> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(RecordError::Key {
            reason: format!(
                "the name `{name}` must be letters, digits, `-`, `_` and `.`, like `cache.example.org-1`"
            ),
        });
    }
    Ok(())
}

fn split_key(text: &str) -> Result<(&str, Vec<u8>), RecordError> {
    let text = text.trim();
    let (name, data) = text.split_once(':').ok_or_else(|| RecordError::Key {
        reason: "no `:` between the name and the key".to_owned(),
    })?;
    check_key_name(name)?;
    let bytes = STANDARD.decode(data).map_err(|e| RecordError::Key {
        reason: format!("the key is not base64: {e}"),
    })?;
    Ok((name, bytes))
}

impl SecretKey {
    /// A new key from the system's secure random source.
    pub fn generate(name: &str) -> Result<SecretKey, RecordError> {
        check_key_name(name)?;
        let mut seed = [0u8; SEED_LEN];
        aws_lc_rs::rand::SystemRandom::new()
            .fill(&mut seed)
            .map_err(|_| RecordError::Key {
                reason: "the system's random source failed".to_owned(),
            })?;
        SecretKey::from_seed(name, seed)
    }

    fn from_seed(name: &str, seed: [u8; SEED_LEN]) -> Result<SecretKey, RecordError> {
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed).map_err(|e| RecordError::Key {
            reason: e.to_string(),
        })?;
        Ok(SecretKey {
            name: name.to_owned(),
            seed,
            pair,
        })
    }

    /// Read `NAME:BASE64(seed ‖ public key)`; the public half must match
    /// the seed.
    pub fn parse(text: &str) -> Result<SecretKey, RecordError> {
        let (name, bytes) = split_key(text)?;
        if bytes.len() != SEED_LEN + PUBLIC_LEN {
            return Err(RecordError::Key {
                reason: format!(
                    "a secret key is {} bytes, this is {}{}",
                    SEED_LEN + PUBLIC_LEN,
                    bytes.len(),
                    if bytes.len() == PUBLIC_LEN {
                        " (is it the public key?)"
                    } else {
                        ""
                    }
                ),
            });
        }
        let mut seed = [0u8; SEED_LEN];
        seed.copy_from_slice(&bytes[..SEED_LEN]);
        let key = SecretKey::from_seed(name, seed)?;
        if key.pair.public_key().as_ref() != &bytes[SEED_LEN..] {
            return Err(RecordError::Key {
                reason: "its public half does not belong to its seed".to_owned(),
            });
        }
        Ok(key)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `NAME:BASE64(seed ‖ public key)`: keep it out of the repo and the store.
    pub fn to_text(&self) -> String {
        let mut bytes = self.seed.to_vec();
        bytes.extend_from_slice(self.pair.public_key().as_ref());
        format!("{}:{}", self.name, STANDARD.encode(bytes))
    }

    pub fn public(&self) -> PublicKey {
        let mut bytes = [0u8; PUBLIC_LEN];
        bytes.copy_from_slice(self.pair.public_key().as_ref());
        PublicKey {
            name: self.name.clone(),
            bytes,
        }
    }

    fn sign(&self, message: &[u8]) -> String {
        STANDARD.encode(self.pair.sign(message).as_ref())
    }
}

impl PublicKey {
    /// Read `NAME:BASE64(32 bytes)`.
    pub fn parse(text: &str) -> Result<PublicKey, RecordError> {
        let (name, data) = split_key(text)?;
        let bytes: [u8; PUBLIC_LEN] = data.as_slice().try_into().map_err(|_| RecordError::Key {
            reason: format!(
                "a public key is {PUBLIC_LEN} bytes, this is {}{}",
                data.len(),
                if data.len() == SEED_LEN + PUBLIC_LEN {
                    " (a secret key: never hand it out; `kiln cache keygen` prints the public one)"
                } else {
                    ""
                }
            ),
        })?;
        Ok(PublicKey {
            name: name.to_owned(),
            bytes,
        })
    }

    pub fn to_text(&self) -> String {
        format!("{}:{}", self.name, STANDARD.encode(self.bytes))
    }

    fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.bytes)
            .verify(message, signature)
            .is_ok()
    }
}

/// One signature on a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    pub key: String,
    /// Base64 of the 64 signature bytes.
    pub value: String,
}

/// What a cache knows about one store path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheRecord {
    pub path: StorePath,
    /// The archive's key in the cache, relative to the cache's root.
    pub url: String,
    /// Always `zstd` for now.
    pub compression: String,
    /// Hex sha256 of the archive.
    pub file_sha256: String,
    pub file_size: u64,
    /// Hex sha256 of the NAR serialisation.
    pub nar_sha256: String,
    pub nar_size: u64,
    pub references: BTreeSet<StorePath>,
    pub deriver: Option<DrvHash>,
    pub signatures: Vec<Signature>,
}

const FIELDS: [&str; 10] = [
    "StorePath",
    "URL",
    "Compression",
    "FileHash",
    "FileSize",
    "NarHash",
    "NarSize",
    "References",
    "Deriver",
    "Sig",
];

fn is_hex64(text: &str) -> bool {
    text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl CacheRecord {
    /// What the signatures cover.
    pub fn fingerprint(&self) -> String {
        let references: Vec<String> = self.references.iter().map(ToString::to_string).collect();
        format!(
            "{FINGERPRINT_VERSION};{};sha256:{};{};{};{}",
            self.path,
            self.nar_sha256,
            self.nar_size,
            references.join(","),
            self.deriver.as_ref().map(DrvHash::as_str).unwrap_or("")
        )
    }

    /// Add (or replace) `key`'s signature.
    pub fn sign(&mut self, key: &SecretKey) {
        let value = key.sign(self.fingerprint().as_bytes());
        self.signatures.retain(|s| s.key != key.name);
        self.signatures.push(Signature {
            key: key.name.clone(),
            value,
        });
        self.signatures.sort_by(|a, b| a.key.cmp(&b.key));
    }

    /// The name of the first trusted key with a valid signature. Refuses
    /// a record with no signature, with signatures by untrusted keys only,
    /// or with a signature by a trusted key's name that does not verify.
    pub fn verify(&self, trusted: &[PublicKey]) -> Result<&str, RecordError> {
        let path = self.path.to_string();
        if self.signatures.is_empty() {
            return Err(RecordError::Unsigned { path });
        }
        let message = self.fingerprint();
        let mut valid = None;
        for signature in &self.signatures {
            let Some(key) = trusted.iter().find(|k| k.name == signature.key) else {
                continue;
            };
            let bytes = STANDARD.decode(&signature.value).unwrap_or_default();
            if bytes.len() != SIGNATURE_LEN || !key.verifies(message.as_bytes(), &bytes) {
                return Err(RecordError::BadSignature {
                    path,
                    name: signature.key.clone(),
                });
            }
            valid.get_or_insert(signature.key.as_str());
        }
        valid.ok_or_else(|| RecordError::Untrusted {
            path,
            names: self
                .signatures
                .iter()
                .map(|s| format!("`{}`", s.key))
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    /// The record's text: one `Key: value` per line, in a fixed order.
    pub fn to_text(&self) -> String {
        let references: Vec<String> = self.references.iter().map(ToString::to_string).collect();
        let mut out = format!(
            "StorePath: {}\nURL: {}\nCompression: {}\nFileHash: sha256:{}\nFileSize: {}\nNarHash: sha256:{}\nNarSize: {}\nReferences: {}\n",
            self.path,
            self.url,
            self.compression,
            self.file_sha256,
            self.file_size,
            self.nar_sha256,
            self.nar_size,
            references.join(" ")
        );
        if let Some(deriver) = &self.deriver {
            out.push_str(&format!("Deriver: {deriver}\n"));
        }
        for signature in &self.signatures {
            out.push_str(&format!("Sig: {}:{}\n", signature.key, signature.value));
        }
        out
    }

    /// Read a record. Every field but `Deriver` and `Sig` is required, once;
    /// an unknown field or a malformed value is an error naming its line.
    /// Parsing does not verify: call [`CacheRecord::verify`].
    pub fn parse(text: &str) -> Result<CacheRecord, RecordError> {
        let mut values: [Option<(usize, &str)>; 9] = Default::default();
        let mut signatures = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            let syntax = |reason: String| RecordError::Syntax {
                line: number,
                reason,
            };
            if line.is_empty() {
                continue;
            }
            let (key, value) = line
                .split_once(": ")
                .ok_or_else(|| syntax(format!("expected `Key: value`, found `{line}`")))?;
            let Some(slot) = FIELDS.iter().position(|f| *f == key) else {
                return Err(syntax(format!(
                    "unknown field `{key}` (known: {})",
                    FIELDS.join(", ")
                )));
            };
            if key == "Sig" {
                let (name, value) = value
                    .split_once(':')
                    .ok_or_else(|| syntax("a signature is `KEYNAME:BASE64`".to_owned()))?;
                signatures.push(Signature {
                    key: name.to_owned(),
                    value: value.to_owned(),
                });
                continue;
            }
            if values[slot].replace((number, value)).is_some() {
                return Err(syntax(format!("`{key}` appears twice")));
            }
        }
        let field = |slot: usize| -> Result<(usize, &str), RecordError> {
            values[slot].ok_or_else(|| RecordError::Syntax {
                line: text.lines().count() + 1,
                reason: format!("the record has no `{}`", FIELDS[slot]),
            })
        };
        let path_of = |line: usize, text: &str| {
            StorePath::parse(text).map_err(|e| RecordError::Syntax {
                line,
                reason: format!("`{text}` is not a store path: {e}"),
            })
        };
        let sha256 = |line: usize, text: &str| {
            text.strip_prefix("sha256:")
                .filter(|hex| is_hex64(hex))
                .map(str::to_owned)
                .ok_or_else(|| RecordError::Syntax {
                    line,
                    reason: format!(
                        "expected `sha256:` and 64 lowercase hex digits, found `{text}`"
                    ),
                })
        };
        let number = |line: usize, text: &str| {
            text.parse::<u64>().map_err(|_| RecordError::Syntax {
                line,
                reason: format!("expected a size in bytes, found `{text}`"),
            })
        };
        let (line, path) = field(0)?;
        let path = path_of(line, path)?;
        let (line, url) = field(1)?;
        if url.is_empty() || url.starts_with('/') || url.split('/').any(|p| p == "..") {
            return Err(RecordError::Syntax {
                line,
                reason: format!("`{url}` is not a key inside the cache"),
            });
        }
        let (line, compression) = field(2)?;
        if compression != "zstd" {
            return Err(RecordError::Syntax {
                line,
                reason: format!("compression `{compression}` is not supported (only zstd)"),
            });
        }
        let (line, file_hash) = field(3)?;
        let file_sha256 = sha256(line, file_hash)?;
        let (line, file_size) = field(4)?;
        let file_size = number(line, file_size)?;
        let (line, nar_hash) = field(5)?;
        let nar_sha256 = sha256(line, nar_hash)?;
        let (line, nar_size) = field(6)?;
        let nar_size = number(line, nar_size)?;
        let (line, references) = field(7)?;
        let references = references
            .split(' ')
            .filter(|r| !r.is_empty())
            .map(|r| path_of(line, r))
            .collect::<Result<BTreeSet<_>, _>>()?;
        let deriver = match values[8] {
            None => None,
            Some((line, text)) => {
                Some(DrvHash::parse(text).ok_or_else(|| RecordError::Syntax {
                    line,
                    reason: format!("`{text}` is not a derivation hash (64 lowercase hex digits)"),
                })?)
            }
        };
        signatures.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(CacheRecord {
            path,
            url: url.to_owned(),
            compression: compression.to_owned(),
            file_sha256,
            file_size,
            nar_sha256,
            nar_size,
            references,
            deriver,
            signatures,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(name: &str, byte: u8) -> StorePath {
        StorePath::new([byte; 20], name).unwrap()
    }

    fn record() -> CacheRecord {
        CacheRecord {
            path: path("docker-host", 1),
            url: "nar/abc.nar.zst".to_owned(),
            compression: "zstd".to_owned(),
            file_sha256: "a".repeat(64),
            file_size: 10,
            nar_sha256: "b".repeat(64),
            nar_size: 20,
            references: BTreeSet::from([path("overlay", 2), path("debs", 3)]),
            deriver: DrvHash::parse(&"c".repeat(64)),
            signatures: Vec::new(),
        }
    }

    #[test]
    fn keys_round_trip_and_the_public_half_is_checked() {
        let key = SecretKey::generate("cache.home.arpa-1").unwrap();
        let text = key.to_text();
        let again = SecretKey::parse(&text).unwrap();
        assert_eq!(again.public(), key.public());
        assert_eq!(
            PublicKey::parse(&key.public().to_text()).unwrap(),
            key.public()
        );
        assert!(!format!("{key:?}").contains(text.split_once(':').unwrap().1));

        let other = SecretKey::generate("cache.home.arpa-1").unwrap();
        let mut bytes = STANDARD.decode(text.split_once(':').unwrap().1).unwrap();
        bytes[SEED_LEN..].copy_from_slice(other.public().bytes.as_slice());
        let mixed = format!("cache.home.arpa-1:{}", STANDARD.encode(bytes));
        assert!(SecretKey::parse(&mixed).is_err());
        let err = PublicKey::parse(&text).unwrap_err().to_string();
        assert!(err.contains("secret key"), "{err}");
        let err = SecretKey::parse(&key.public().to_text())
            .unwrap_err()
            .to_string();
        assert!(err.contains("public key"), "{err}");
        assert!(SecretKey::generate("bad name").is_err());
        assert!(PublicKey::parse("nocolon").is_err());
        assert!(PublicKey::parse("k:!!!").is_err());
    }

    #[test]
    fn a_signed_record_round_trips_and_verifies() {
        let key = SecretKey::generate("k1").unwrap();
        let mut record = record();
        record.sign(&key);
        let text = record.to_text();
        let parsed = CacheRecord::parse(&text).unwrap();
        assert_eq!(parsed, record);
        assert_eq!(parsed.verify(&[key.public()]).unwrap(), "k1");
        // Signing twice keeps one signature per key.
        record.sign(&key);
        assert_eq!(record.signatures.len(), 1);
    }

    #[test]
    fn verification_refuses_unsigned_untrusted_and_changed_records() {
        let key = SecretKey::generate("k1").unwrap();
        let stranger = SecretKey::generate("k2").unwrap();
        let unsigned = record();
        assert!(matches!(
            unsigned.verify(&[key.public()]),
            Err(RecordError::Unsigned { .. })
        ));

        let mut by_stranger = record();
        by_stranger.sign(&stranger);
        let err = by_stranger.verify(&[key.public()]).unwrap_err();
        assert!(matches!(err, RecordError::Untrusted { .. }), "{err}");
        assert!(err.to_string().contains("`k2`"));

        // Every signed field matters.
        let mut signed = record();
        signed.sign(&key);
        let changes: [fn(&mut CacheRecord); 5] = [
            |r| r.nar_sha256 = "d".repeat(64),
            |r| r.nar_size += 1,
            |r| {
                r.references.pop_first();
            },
            |r| r.deriver = None,
            |r| r.path = path("docker-host", 9),
        ];
        for change in changes {
            let mut changed = signed.clone();
            change(&mut changed);
            let err = changed.verify(&[key.public()]).unwrap_err();
            assert!(matches!(err, RecordError::BadSignature { .. }), "{err}");
        }
        // A key of the same name but other bytes does not verify it.
        let impostor = SecretKey::generate("k1").unwrap();
        assert!(matches!(
            signed.verify(&[impostor.public()]),
            Err(RecordError::BadSignature { .. })
        ));
        // A signature that is not base64 is a bad signature, not a panic.
        let mut garbled = signed.clone();
        garbled.signatures[0].value = "%%%".to_owned();
        assert!(garbled.verify(&[key.public()]).is_err());
    }

    #[test]
    fn malformed_records_name_their_line() {
        let mut signed = record();
        signed.sign(&SecretKey::generate("k1").unwrap());
        let text = signed.to_text();
        let cases = [
            (text.replace("NarSize: 20", "NarSize: twenty"), 7, "size"),
            (
                text.replace("Compression: zstd", "Compression: xz"),
                3,
                "xz",
            ),
            (
                text.replace("URL: nar/abc.nar.zst", "URL: ../x"),
                2,
                "inside",
            ),
            (
                text.replace("FileHash: sha256:", "FileHash: md5:"),
                4,
                "sha256",
            ),
            (format!("{text}Extra: 1\n"), 11, "unknown field"),
            (format!("{text}NarSize: 3\n"), 11, "twice"),
            (text.replace("StorePath: ", "StorePath "), 1, "Key: value"),
        ];
        for (bad, line, words) in cases {
            match CacheRecord::parse(&bad) {
                Err(RecordError::Syntax { line: at, reason }) => {
                    assert_eq!(at, line, "{reason}");
                    assert!(reason.contains(words), "{reason}");
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        let missing = text.replace("NarHash: sha256:", "Nope: ");
        assert!(CacheRecord::parse(&missing).is_err());
    }
}
