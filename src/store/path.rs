//! Store paths: `<hash part>-<name>`, the names of the immutable entries in
//! a kiln store.
//!
//! A [`StorePath`] is a *base name*, relative to the store directory (for
//! example `0c5a2kqy5gf4vrsqd48b0aj55ij5zw5v-hello-2.12`). kiln stores are
//! relocatable and shared through binary caches, so the store directory is
//! never part of a store path, nor of the hash that names it.
//!
//! # Syntax
//!
//! As in Nix
//! ([`src/libstore/path.cc`](https://github.com/NixOS/nix/blob/master/src/libstore/path.cc)):
//!
//! - the hash part is a 160-bit digest in Nix base-32 ([`super::nixbase32`]),
//!   always 32 characters;
//! - then `-`;
//! - then the name: 1–211 characters from `A–Z a–z 0–9 + - . _ ? =`, not
//!   starting with `.` (so it can never be `.`, `..` or a hidden file).
//!
//! # Fingerprints: how kiln computes the digest
//!
//! The digest is the **first 20 bytes of the SHA-256 of a fingerprint
//! string** ([`StorePath::from_fingerprint`]). This is kiln's own rule: Nix
//! instead XOR-folds the 32 bytes down to 20 and puts the store directory
//! in its fingerprint, so kiln paths are deliberately *not* Nix paths. The
//! fingerprints are:
//!
//! | kind | fingerprint |
//! |---|---|
//! | output of a derivation (input-addressed) | `kiln-store-path-v1:output:out:sha256:<drv sha256 hex>:<name>` |
//! | fixed output (content-addressed) | `kiln-store-path-v1:fixed:sha256:<NAR sha256 hex>:<name>` |
//! | fixed output, one flat file (a download) | `kiln-store-path-v1:fixed:flat:sha256:<file sha256 hex>:<name>` |
//!
//! `<hex>` is 64 lower-case hex digits (anything else is rejected, so one
//! hash cannot spell two paths). The fixed-output fingerprint depends only
//! on the content hash and the name, so the same bytes fetched from two URLs
//! share one path. The `v1` tag lets a future scheme coexist without
//! collisions.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

use super::nixbase32::{self, DecodeError};

/// Bytes in a store-path digest.
pub const DIGEST_LEN: usize = 20;
/// Characters in a store path's hash part: [`DIGEST_LEN`] bytes in Nix
/// base-32.
pub const HASH_PART_LEN: usize = nixbase32::encoded_len(DIGEST_LEN);
/// Longest allowed name, as in Nix (so that a base name fits in 255 bytes
/// with room for suffixes such as `.drv` and `.lock`).
pub const MAX_NAME_LEN: usize = 211;

/// Why a store path, a name or a fingerprint input is invalid. Each variant
/// carries the text involved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("invalid store path name `{name}`: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("invalid store path `{path}`: {reason}")]
    Malformed { path: String, reason: &'static str },
    #[error("invalid store path `{path}`: bad hash part")]
    InvalidHash {
        path: String,
        #[source]
        source: DecodeError,
    },
    #[error("invalid {what} `{hex}`: expected 64 lower-case hex digits")]
    InvalidHex { what: &'static str, hex: String },
}

/// A store path's base name: a 160-bit digest and a name.
///
/// `Ord` orders store paths exactly as their [`Display`](fmt::Display)
/// strings sort, so sorted collections print in sorted order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StorePath {
    digest: [u8; DIGEST_LEN],
    name: String,
}

impl StorePath {
    /// A store path from its parts, checking the name.
    pub fn new(digest: [u8; DIGEST_LEN], name: &str) -> Result<Self, PathError> {
        check_name(name)?;
        Ok(StorePath {
            digest,
            name: name.to_owned(),
        })
    }

    /// Parse a base name `<32 base-32 characters>-<name>`. A full path (with
    /// the store directory) is rejected: strip the store directory first.
    pub fn parse(base_name: &str) -> Result<Self, PathError> {
        let malformed = |reason| PathError::Malformed {
            path: base_name.to_owned(),
            reason,
        };
        if base_name.contains('/') {
            return Err(malformed(
                "a store path here is a base name without the store directory, so it cannot contain `/`",
            ));
        }
        let (hash_part, name) = match base_name.split_at_checked(HASH_PART_LEN) {
            Some((hash_part, rest)) => match rest.strip_prefix('-') {
                Some(name) => (hash_part, name),
                None => return Err(malformed("expected `-` after the 32-character hash part")),
            },
            None => {
                return Err(malformed(
                    "expected a 32-character hash part, `-` and a name",
                ));
            }
        };
        let digest = nixbase32::decode(hash_part).map_err(|source| PathError::InvalidHash {
            path: base_name.to_owned(),
            source,
        })?;
        let digest = digest
            .try_into()
            .expect("32 base-32 characters always decode to 20 bytes");
        StorePath::new(digest, name)
    }

    /// The store path whose digest is the first 20 bytes of
    /// `sha256(fingerprint)`. Callers should build fingerprints with
    /// [`StorePath::for_derivation`] or [`StorePath::for_content`] rather
    /// than by hand, so that every kind of path has one documented rule.
    pub fn from_fingerprint(fingerprint: &str, name: &str) -> Result<Self, PathError> {
        check_name(name)?;
        let sha256: [u8; 32] = Sha256::digest(fingerprint.as_bytes()).into();
        let mut digest = [0u8; DIGEST_LEN];
        digest.copy_from_slice(&sha256[..DIGEST_LEN]);
        StorePath::new(digest, name)
    }

    /// The `out` output of the derivation whose SHA-256 is `drv_sha256_hex`
    /// (input-addressed): fingerprint
    /// `kiln-store-path-v1:output:out:sha256:<hex>:<name>`.
    pub fn for_derivation(drv_sha256_hex: &str, name: &str) -> Result<Self, PathError> {
        check_hex("derivation sha256", drv_sha256_hex)?;
        StorePath::from_fingerprint(
            &format!("kiln-store-path-v1:output:out:sha256:{drv_sha256_hex}:{name}"),
            name,
        )
    }

    /// A fixed output whose NAR SHA-256 is `content_sha256_hex`
    /// (content-addressed): fingerprint
    /// `kiln-store-path-v1:fixed:sha256:<hex>:<name>`.
    pub fn for_content(content_sha256_hex: &str, name: &str) -> Result<Self, PathError> {
        check_hex("content sha256", content_sha256_hex)?;
        StorePath::from_fingerprint(
            &format!("kiln-store-path-v1:fixed:sha256:{content_sha256_hex}:{name}"),
            name,
        )
    }

    /// A fixed output that is one regular file whose bytes have the SHA-256
    /// `file_sha256_hex` (a download, addressed by the hash the lockfile
    /// records): fingerprint `kiln-store-path-v1:fixed:flat:sha256:<hex>:<name>`.
    /// A distinct kind from [`StorePath::for_content`], so a file whose
    /// bytes happen to be a NAR never shares a path with the tree it encodes.
    pub fn for_flat_file(file_sha256_hex: &str, name: &str) -> Result<Self, PathError> {
        check_hex("file sha256", file_sha256_hex)?;
        StorePath::from_fingerprint(
            &format!("kiln-store-path-v1:fixed:flat:sha256:{file_sha256_hex}:{name}"),
            name,
        )
    }

    /// The 32-character Nix base-32 hash part, as it appears in the path
    /// (and as [`super::nar::hash_and_scan`] looks for references).
    #[must_use]
    pub fn hash_part(&self) -> String {
        nixbase32::encode(&self.digest)
    }

    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    #[must_use]
    pub fn digest(&self) -> &[u8; DIGEST_LEN] {
        &self.digest
    }
}

/// Nix's name rules; see the module documentation.
fn check_name(name: &str) -> Result<(), PathError> {
    let invalid = |reason: String| PathError::InvalidName {
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("the name is empty".to_owned()));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(invalid(format!(
            "{} characters is longer than the limit of {MAX_NAME_LEN}",
            name.chars().count()
        )));
    }
    if name.starts_with('.') {
        return Err(invalid("the name starts with `.`".to_owned()));
    }
    if let Some(bad) = name
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || "+-._?=".contains(c)))
    {
        return Err(invalid(format!(
            "`{}` is not allowed (only letters, digits and `+ - . _ ? =`)",
            bad.escape_debug()
        )));
    }
    Ok(())
}

fn check_hex(what: &'static str, hex: &str) -> Result<(), PathError> {
    if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(PathError::InvalidHex {
            what,
            hex: hex.to_owned(),
        })
    }
}

impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.hash_part(), self.name)
    }
}

impl FromStr for StorePath {
    type Err = PathError;

    fn from_str(base_name: &str) -> Result<Self, Self::Err> {
        StorePath::parse(base_name)
    }
}

impl Ord for StorePath {
    fn cmp(&self, other: &Self) -> Ordering {
        // Hash parts all have 32 characters and the alphabet is in ASCII
        // order, so they sort like the little-endian integers they encode:
        // compare digests from the last byte. Then `-name` sorts by name.
        self.digest
            .iter()
            .rev()
            .cmp(other.digest.iter().rev())
            .then_with(|| self.name.cmp(&other.name))
    }
}

impl PartialOrd for StorePath {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl serde::Serialize for StorePath {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for StorePath {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;

        impl serde::de::Visitor<'_> for Visitor {
            type Value = StorePath;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a store path base name `<32-character hash>-<name>`")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<StorePath, E> {
                StorePath::parse(text).map_err(E::custom)
            }
        }

        deserializer.deserialize_str(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HELLO: &str = "0c5a2kqy5gf4vrsqd48b0aj55ij5zw5v-hello-2.12";

    /// The sha256 of the empty string, as a stand-in derivation/content hash.
    const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parse_and_display() {
        let path: StorePath = HELLO.parse().unwrap();
        assert_eq!(path.name(), "hello-2.12");
        assert_eq!(path.hash_part(), "0c5a2kqy5gf4vrsqd48b0aj55ij5zw5v");
        assert_eq!(path.to_string(), HELLO);
        assert_eq!(StorePath::new(*path.digest(), "hello-2.12").unwrap(), path);
    }

    #[test]
    fn malformed_paths_are_rejected() {
        for (text, expected) in [
            ("", "expected a 32-character hash part"),
            ("0c5a2kqy5gf4vrsqd48b0aj55ij5zw5v", "expected `-`"),
            ("0c5a2kqy5gf4vrsqd48b0aj55ij5zw5vhello", "expected `-`"),
            (
                "/kiln/store/0c5a2kqy5gf4vrsqd48b0aj55ij5zw5v-hello",
                "cannot contain `/`",
            ),
            ("0c5a2kqy5gf4vrsqd48b0aj55ij5zw5e-hello", "bad hash part"),
            ("0c5a2kqy5gf4vrsqd48b0aj55ij5zw5v-", "the name is empty"),
            (
                "0c5a2kqy5gf4vrsqd48b0aj55ij5zw5v-.hidden",
                "starts with `.`",
            ),
            ("\u{e9}c5a2kqy5gf4vrsqd48b0aj55ij5zw5v-x", "expected"),
        ] {
            let error = StorePath::parse(text).unwrap_err().to_string();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }

    #[test]
    fn name_rules() {
        let digest = [0u8; DIGEST_LEN];
        for good in ["a", "hello-2.12", "A+B_c?d=e", "x..", "-", &"n".repeat(211)] {
            assert!(StorePath::new(digest, good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".a",
            "a b",
            "a/b",
            "caf\u{e9}",
            "a:b",
            "a\0",
            &"n".repeat(212),
        ] {
            assert!(
                matches!(
                    StorePath::new(digest, bad),
                    Err(PathError::InvalidName { .. })
                ),
                "{bad:?}"
            );
        }
        let error = StorePath::new(digest, "a b").unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid store path name `a b`: ` ` is not allowed (only letters, digits and `+ - . _ ? =`)"
        );
    }

    /// Computed once from the documented fingerprints and pinned: if these
    /// change, every kiln store path changes. Reproducible without kiln:
    /// `printf %s "$fingerprint" | sha256sum | cut -c1-40` gives the digest
    /// in hex, and `nix-hash --type sha1 --to-base32 <hex>` its hash part
    /// (any 20-byte hex will do for that command).
    #[test]
    fn pinned_fingerprints() {
        let fingerprint = format!("kiln-store-path-v1:output:out:sha256:{EMPTY_SHA256}:hello-2.12");
        let path = StorePath::for_derivation(EMPTY_SHA256, "hello-2.12").unwrap();
        assert_eq!(
            path,
            StorePath::from_fingerprint(&fingerprint, "hello-2.12").unwrap()
        );
        let sha256: [u8; 32] = Sha256::digest(fingerprint.as_bytes()).into();
        assert_eq!(path.digest()[..], sha256[..DIGEST_LEN]);
        assert_eq!(
            path.to_string(),
            "0h5p3ra4gk4a0np0b75f3pcz344r4lmj-hello-2.12"
        );

        let fixed = StorePath::for_content(EMPTY_SHA256, "source.tar.gz").unwrap();
        assert_eq!(
            fixed.to_string(),
            "lcaqvk4kbf7hx9b6kw0q15v74wl27ag9-source.tar.gz"
        );
        let flat = StorePath::for_flat_file(EMPTY_SHA256, "source.tar.gz").unwrap();
        assert_eq!(
            flat,
            StorePath::from_fingerprint(
                &format!("kiln-store-path-v1:fixed:flat:sha256:{EMPTY_SHA256}:source.tar.gz"),
                "source.tar.gz"
            )
            .unwrap()
        );
        assert_ne!(flat, fixed);
        // Same hash, different kind: different path.
        assert_ne!(
            StorePath::for_content(EMPTY_SHA256, "hello-2.12").unwrap(),
            path
        );
    }

    #[test]
    fn fingerprint_inputs_are_checked() {
        let upper = EMPTY_SHA256.to_uppercase();
        for bad in [&upper[..], "e3b0", "", &format!("{EMPTY_SHA256}0")] {
            assert!(matches!(
                StorePath::for_content(bad, "x"),
                Err(PathError::InvalidHex { .. })
            ));
            assert!(matches!(
                StorePath::for_derivation(bad, "x"),
                Err(PathError::InvalidHex { .. })
            ));
        }
        assert!(matches!(
            StorePath::for_content(EMPTY_SHA256, ".x"),
            Err(PathError::InvalidName { .. })
        ));
    }

    #[test]
    fn serde_as_base_name() {
        let path: StorePath = HELLO.parse().unwrap();
        let json = serde_json::to_string(&path).unwrap();
        assert_eq!(json, format!("\"{HELLO}\""));
        assert_eq!(serde_json::from_str::<StorePath>(&json).unwrap(), path);
        let error = serde_json::from_str::<StorePath>("\"nope\"").unwrap_err();
        assert!(
            error.to_string().contains("invalid store path `nope`"),
            "{error}"
        );
        assert!(serde_json::from_str::<StorePath>("42").is_err());
    }

    fn store_path() -> impl Strategy<Value = StorePath> {
        (
            any::<[u8; DIGEST_LEN]>(),
            "[A-Za-z0-9+_?=-][A-Za-z0-9+._?=-]{0,210}",
        )
            .prop_map(|(digest, name)| StorePath::new(digest, &name).unwrap())
    }

    proptest! {
        #[test]
        fn round_trip(path in store_path()) {
            let text = path.to_string();
            prop_assert_eq!(text.len(), HASH_PART_LEN + 1 + path.name().len());
            prop_assert_eq!(StorePath::parse(&text).unwrap(), path.clone());
            prop_assert_eq!(text.parse::<StorePath>().unwrap(), path);
        }

        #[test]
        fn order_matches_display(a in store_path(), b in store_path()) {
            prop_assert_eq!(a.cmp(&b), a.to_string().cmp(&b.to_string()));
        }

        #[test]
        fn order_matches_display_for_equal_digests(
            digest in any::<[u8; DIGEST_LEN]>(),
            a in "[a-z0-9+-][a-z0-9.+-]{0,4}",
            b in "[a-z0-9+-][a-z0-9.+-]{0,4}",
        ) {
            let (a, b) = (StorePath::new(digest, &a).unwrap(), StorePath::new(digest, &b).unwrap());
            prop_assert_eq!(a.cmp(&b), a.to_string().cmp(&b.to_string()));
        }
    }
}
