//! Keys: the names of objects in a binary cache.
//!
//! A key is relative to the cache URL's prefix and is checked where it is
//! made, so no backend ever sees a key that could leave the prefix (`..`),
//! be absolute, or mean different objects on different backends:
//!
//! - 1 to 1024 bytes (S3's limit), `/`-separated segments;
//! - no leading or trailing `/`, no empty segment (`a//b`);
//! - no `.` or `..` segment;
//! - only ASCII letters, digits and `-._+=` (what store paths, hashes and
//!   file extensions need; nothing a backend would escape differently).

use std::fmt;
use std::str::FromStr;

/// The longest key S3 accepts, in bytes.
const MAX_LENGTH: usize = 1024;

/// A validated object key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CacheKey(String);

/// Why a text is not a [`CacheKey`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad cache key {key:?}: {reason}")]
pub struct BadKey {
    pub key: String,
    pub reason: &'static str,
}

impl CacheKey {
    /// Check `text` against the rules in the module documentation.
    pub fn new(text: &str) -> Result<CacheKey, BadKey> {
        let bad = |reason| {
            Err(BadKey {
                key: text.to_owned(),
                reason,
            })
        };
        if text.is_empty() {
            return bad("it is empty");
        }
        if text.len() > MAX_LENGTH {
            return bad("it is longer than 1024 bytes");
        }
        if text.starts_with('/') {
            return bad("it starts with `/` (keys are relative to the cache URL)");
        }
        if text.ends_with('/') {
            return bad("it ends with `/`");
        }
        for segment in text.split('/') {
            match segment {
                "" => return bad("it has an empty segment (`//`)"),
                "." | ".." => return bad("it has a `.` or `..` segment"),
                _ => {}
            }
        }
        if !text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-._+=".contains(&b))
        {
            return bad("only ASCII letters, digits, `/` and `-._+=` are allowed");
        }
        Ok(CacheKey(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for CacheKey {
    type Err = BadKey;

    fn from_str(text: &str) -> Result<CacheKey, BadKey> {
        CacheKey::new(text)
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_keys() {
        for text in [
            "nix-cache-info",
            "0c8xmnbkmpsqgqxfmkbjv2z1l4hgpqgr.narinfo",
            "nar/1w1fff338fvdw53sqgamddn1b2xgds473pv6y13gizdbqjv4i5p3.nar.zst",
            "records/a=b+c_d",
        ] {
            assert_eq!(CacheKey::new(text).unwrap().as_str(), text);
        }
    }

    #[test]
    fn bad_keys() {
        for (text, reason) in [
            ("", "empty"),
            ("/nar/x", "starts with `/`"),
            ("nar/", "ends with `/`"),
            ("nar//x", "empty segment"),
            ("../x", "`..`"),
            ("nar/../../etc/passwd", "`..`"),
            ("nar/./x", "`..`"),
            ("..", "`..`"),
            ("nar\\x", "only ASCII"),
            ("nar x", "only ASCII"),
            ("nar/x#1", "only ASCII"),
            ("nar/é", "only ASCII"),
        ] {
            let error = CacheKey::new(text).unwrap_err();
            assert!(
                error.reason.contains(reason),
                "{text:?}: {} does not mention {reason:?}",
                error.reason
            );
        }
        assert!(CacheKey::new(&"a".repeat(1025)).is_err());
        assert!(CacheKey::new(&"a".repeat(1024)).is_ok());
    }
}
