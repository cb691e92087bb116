//! The lockfile model and its canonical writer.
//!
//! ```toml
//! version = 1
//!
//! [debian."image:debian-12"]
//! suite = "bookworm"
//! architecture = "amd64"
//! mirror = "http://deb.debian.org/debian"
//! components = ["main"]
//! variant = "important"
//! requested = ["cloud-init", "openssh-server"]
//! packages = [
//!   { name = "adduser", version = "3.134", architecture = "all", filename = "pool/main/a/adduser/adduser_3.134_all.deb", sha256 = "…", size = 1234 },
//! ]
//!
//! [oci."traefik:v3.1"]
//! reference = "docker.io/library/traefik:v3.1"
//! digest = "sha256:…"
//! media_type = "application/vnd.oci.image.index.v1+json"
//! platforms = { "linux/amd64" = "sha256:…" }
//!
//! [url."image:alpine"]
//! urls = ["https://…/rootfs.tar.zst"]
//! sha256 = "…"
//! size = 3145728
//! ```
//!
//! Entries are sorted by kind and id, fields are written in a fixed order
//! and every package takes one line, so re-locking one input changes only
//! its lines. The writer is hand-written (not a TOML serializer) so the
//! bytes never depend on a library's formatting choices.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::{Deserialize, Serialize};

use crate::config::node::{quote, quote_key};

pub const LOCK_VERSION: u32 = 1;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lockfile {
    pub version: u32,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub debian: BTreeMap<String, DebianEntry>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub oci: BTreeMap<String, OciEntry>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub url: BTreeMap<String, UrlEntry>,
    /// Comment lines written directly above an entry's table header
    /// (`(kind, id)` → the lines, without `# `): where a pin came from, for
    /// instance. They are kept as long as the entry keeps exactly the same
    /// pin, and dropped when `kiln lock` changes or removes it.
    #[serde(skip)]
    pub notes: BTreeMap<(String, String), Vec<String>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebianEntry {
    pub suite: String,
    pub architecture: String,
    pub mirror: String,
    pub components: Vec<String>,
    pub variant: String,
    /// The packages the config asks for (sorted); the closure is `packages`.
    pub requested: Vec<String>,
    #[serde(default)]
    pub release_date: Option<String>,
    pub packages: Vec<DebianPackage>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebianPackage {
    pub name: String,
    pub version: String,
    pub architecture: String,
    /// Path under the mirror (`pool/main/…/NAME_VERSION_ARCH.deb`).
    pub filename: String,
    pub sha256: String,
    pub size: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OciEntry {
    /// The canonical reference (`docker.io/library/traefik:v3.1`).
    pub reference: String,
    /// Digest of what the tag points to (an index or a manifest).
    pub digest: String,
    /// The manifest's media type (OCI index, Docker manifest list, …).
    /// `kiln lock` always records it; a digest pinned by hand from a
    /// published source that does not state it leaves it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default)]
    pub platforms: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UrlEntry {
    /// Mirrors, tried in order.
    pub urls: Vec<String>,
    pub sha256: String,
    pub size: u64,
}

/// The comment lines directly above each `[kind.id]` header of `text`.
fn notes(text: &str) -> BTreeMap<(String, String), Vec<String>> {
    let mut notes = BTreeMap::new();
    let mut pending: Vec<String> = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if let Some(comment) = trimmed.strip_prefix('#') {
            pending.push(comment.strip_prefix(' ').unwrap_or(comment).to_owned());
            continue;
        }
        if let Some(header) = trimmed
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .filter(|h| !h.starts_with('['))
            && let Some((kind, key)) = header.split_once('.')
            && ["debian", "oci", "url"].contains(&kind.trim())
            && !pending.is_empty()
        {
            // Let the TOML parser read the key (quoted or bare).
            let parsed: Result<BTreeMap<String, i64>, _> = toml::from_str(&format!("{key} = 0"));
            if let Ok(map) = parsed
                && let Some(id) = map.into_keys().next()
            {
                notes.insert((kind.trim().to_owned(), id), std::mem::take(&mut pending));
            }
        }
        pending.clear();
    }
    notes
}

/// Why a lockfile could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LockfileError {
    #[error("lockfile.toml: {0}")]
    Syntax(String),
    #[error(
        "lockfile.toml has version {found}; this kiln reads version {LOCK_VERSION} (upgrade kiln, or delete the file and run `kiln lock`)"
    )]
    UnsupportedVersion { found: u32 },
    #[error("lockfile.toml: {entry}: {problem}")]
    Invalid { entry: String, problem: String },
}

fn is_hex64(text: &str) -> bool {
    text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Lockfile {
    pub fn empty() -> Lockfile {
        Lockfile {
            version: LOCK_VERSION,
            ..Lockfile::default()
        }
    }

    /// Parse and validate (hash shapes, version).
    pub fn parse(text: &str) -> Result<Lockfile, LockfileError> {
        let lock: Lockfile =
            toml::from_str(text).map_err(|e| LockfileError::Syntax(e.to_string()))?;
        if lock.version != LOCK_VERSION {
            return Err(LockfileError::UnsupportedVersion {
                found: lock.version,
            });
        }
        let invalid = |entry: String, problem: &str| LockfileError::Invalid {
            entry,
            problem: problem.to_owned(),
        };
        for (id, entry) in &lock.debian {
            for package in &entry.packages {
                if !is_hex64(&package.sha256) {
                    return Err(invalid(
                        format!("debian.\"{id}\" package {}", package.name),
                        "sha256 is not 64 lowercase hex digits",
                    ));
                }
            }
        }
        for (id, entry) in &lock.url {
            if !is_hex64(&entry.sha256) {
                return Err(invalid(
                    format!("url.\"{id}\""),
                    "sha256 is not 64 lowercase hex digits",
                ));
            }
            if entry.urls.is_empty() {
                return Err(invalid(format!("url.\"{id}\""), "no urls"));
            }
        }
        let mut lock = lock;
        lock.notes = notes(text)
            .into_iter()
            .filter(|((kind, id), _)| lock.has(kind, id))
            .collect();
        for (id, entry) in &lock.oci {
            let hex = entry.digest.strip_prefix("sha256:").unwrap_or("");
            if !is_hex64(hex) {
                return Err(invalid(
                    format!("oci.\"{id}\""),
                    "digest is not sha256:<64 hex digits>",
                ));
            }
            for (platform, digest) in &entry.platforms {
                if !is_hex64(digest.strip_prefix("sha256:").unwrap_or("")) {
                    return Err(invalid(
                        format!("oci.\"{id}\" platform {platform}"),
                        "digest is not sha256:<64 hex digits>",
                    ));
                }
            }
        }
        Ok(lock)
    }

    /// Whether there is an entry `id` of `kind` (`debian`, `oci`, `url`).
    pub fn has(&self, kind: &str, id: &str) -> bool {
        match kind {
            "debian" => self.debian.contains_key(id),
            "oci" => self.oci.contains_key(id),
            "url" => self.url.contains_key(id),
            _ => false,
        }
    }

    /// Whether entry `id` of `kind` is the same pin in both lockfiles.
    pub fn same_entry(&self, other: &Lockfile, kind: &str, id: &str) -> bool {
        match kind {
            "debian" => self
                .debian
                .get(id)
                .is_some_and(|e| other.debian.get(id) == Some(e)),
            "oci" => self
                .oci
                .get(id)
                .is_some_and(|e| other.oci.get(id) == Some(e)),
            "url" => self
                .url
                .get(id)
                .is_some_and(|e| other.url.get(id) == Some(e)),
            _ => false,
        }
    }

    fn header(&self, out: &mut String, kind: &str, id: &str) {
        out.push('\n');
        if let Some(lines) = self.notes.get(&(kind.to_owned(), id.to_owned())) {
            for line in lines {
                if line.is_empty() {
                    out.push_str("#\n");
                } else {
                    let _ = writeln!(out, "# {line}");
                }
            }
        }
        let _ = writeln!(out, "[{kind}.{}]", quote_key(id));
    }

    /// The canonical text (see the module docs).
    pub fn to_text(&self) -> String {
        let mut out = String::from(
            "# kiln lockfile: every external input, pinned by hash.\n\
             # Written by `kiln lock`. Do not edit by hand; to re-resolve an input, run\n\
             # `kiln lock --update INPUT`.\n",
        );
        let _ = writeln!(out, "version = {}", self.version);
        let list = |items: &[String]| {
            format!(
                "[{}]",
                items
                    .iter()
                    .map(|i| quote(i))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        for (id, entry) in &self.debian {
            self.header(&mut out, "debian", id);
            let _ = writeln!(out, "suite = {}", quote(&entry.suite));
            let _ = writeln!(out, "architecture = {}", quote(&entry.architecture));
            let _ = writeln!(out, "mirror = {}", quote(&entry.mirror));
            let _ = writeln!(out, "components = {}", list(&entry.components));
            let _ = writeln!(out, "variant = {}", quote(&entry.variant));
            let _ = writeln!(out, "requested = {}", list(&entry.requested));
            if let Some(date) = &entry.release_date {
                let _ = writeln!(out, "release_date = {}", quote(date));
            }
            out.push_str("packages = [\n");
            for p in &entry.packages {
                let _ = writeln!(
                    out,
                    "  {{ name = {}, version = {}, architecture = {}, filename = {}, sha256 = {}, size = {} }},",
                    quote(&p.name),
                    quote(&p.version),
                    quote(&p.architecture),
                    quote(&p.filename),
                    quote(&p.sha256),
                    p.size
                );
            }
            out.push_str("]\n");
        }
        for (id, entry) in &self.oci {
            self.header(&mut out, "oci", id);
            let _ = writeln!(out, "reference = {}", quote(&entry.reference));
            let _ = writeln!(out, "digest = {}", quote(&entry.digest));
            if let Some(media_type) = &entry.media_type {
                let _ = writeln!(out, "media_type = {}", quote(media_type));
            }
            if !entry.platforms.is_empty() {
                let platforms: Vec<String> = entry
                    .platforms
                    .iter()
                    .map(|(k, v)| format!("{} = {}", quote_key(k), quote(v)))
                    .collect();
                let _ = writeln!(out, "platforms = {{ {} }}", platforms.join(", "));
            }
        }
        for (id, entry) in &self.url {
            self.header(&mut out, "url", id);
            let _ = writeln!(out, "urls = {}", list(&entry.urls));
            let _ = writeln!(out, "sha256 = {}", quote(&entry.sha256));
            let _ = writeln!(out, "size = {}", entry.size);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Lockfile {
        let mut lock = Lockfile::empty();
        lock.debian.insert(
            "image:debian-12".into(),
            DebianEntry {
                suite: "bookworm".into(),
                architecture: "amd64".into(),
                mirror: "http://deb.debian.org/debian".into(),
                components: vec!["main".into()],
                variant: "important".into(),
                requested: vec!["hello".into()],
                release_date: Some("Sat, 09 Nov 2026 10:00:00 UTC".into()),
                packages: vec![DebianPackage {
                    name: "hello".into(),
                    version: "2.10-3".into(),
                    architecture: "amd64".into(),
                    filename: "pool/main/h/hello/hello_2.10-3_amd64.deb".into(),
                    sha256: "a".repeat(64),
                    size: 53000,
                }],
            },
        );
        lock.oci.insert(
            "traefik:v3.1".into(),
            OciEntry {
                reference: "docker.io/library/traefik:v3.1".into(),
                digest: format!("sha256:{}", "b".repeat(64)),
                media_type: Some("application/vnd.oci.image.index.v1+json".into()),
                platforms: BTreeMap::from([(
                    "linux/amd64".into(),
                    format!("sha256:{}", "c".repeat(64)),
                )]),
            },
        );
        lock.url.insert(
            "image:alpine".into(),
            UrlEntry {
                urls: vec!["file:///srv/rootfs.tar.zst".into()],
                sha256: "d".repeat(64),
                size: 10,
            },
        );
        lock
    }

    #[test]
    fn round_trips_through_its_canonical_text() {
        let lock = sample();
        let text = lock.to_text();
        assert_eq!(Lockfile::parse(&text).unwrap(), lock);
        assert_eq!(Lockfile::parse(&text).unwrap().to_text(), text);
        assert!(text.contains("\n  { name = \"hello\", version = \"2.10-3\""));
    }

    #[test]
    fn rejects_bad_versions_hashes_and_unknown_fields() {
        assert!(matches!(
            Lockfile::parse("version = 2\n"),
            Err(LockfileError::UnsupportedVersion { found: 2 })
        ));
        let tampered = sample().to_text().replace(&"d".repeat(64), "not-a-hash");
        assert!(matches!(
            Lockfile::parse(&tampered),
            Err(LockfileError::Invalid { .. })
        ));
        assert!(matches!(
            Lockfile::parse("version = 1\nextra = 1\n"),
            Err(LockfileError::Syntax(_))
        ));
    }
}
