//! Restoring a NAR (see [`super::nar`] for the format) into a directory:
//! what pulling a store path from a binary cache ends with.
//!
//! The reader is strict, because a NAR from a cache is untrusted until its
//! hash has been checked, and the restore happens while it is hashed:
//!
//! - every token must be where the grammar puts it; padding must be zero;
//! - directory entries must be in strictly increasing byte order (so no
//!   duplicates), and a name must not be empty, `.`, `..`, or hold `/` or
//!   NUL: nothing can be written outside the destination;
//! - strings are bounded (names 255 bytes, symlink targets 4096), and file
//!   contents are streamed, never held in memory;
//! - nothing may follow the root node.
//!
//! The SHA-256 and size of the bytes read are returned, so the caller
//! compares them with the signed record before registering the path; on any
//! error the caller deletes the partial tree.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, symlink};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::nar::{MAGIC, NarHash};

const MAX_NAME: u64 = 255;
const MAX_TARGET: u64 = 4096;
/// Tokens of the grammar are short; this bounds them.
const MAX_TOKEN: u64 = 64;
/// Directory nesting, against a NAR built to exhaust the stack.
const MAX_DEPTH: usize = 256;

/// Why a NAR could not be restored.
#[derive(Debug, thiserror::Error)]
pub enum UnnarError {
    #[error("the NAR is malformed at byte {offset}: {reason}")]
    Malformed { offset: u64, reason: String },
    #[error("the NAR ends early at byte {offset}")]
    Truncated { offset: u64 },
    #[error("cannot read the NAR: {0}")]
    Read(#[source] io::Error),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Restore the NAR read from `input` at `destination`, which must not
/// exist. Returns the hash and size of the NAR read.
pub fn restore(input: impl Read, destination: &Path) -> Result<NarHash, UnnarError> {
    let mut reader = Reader {
        input,
        hasher: Sha256::new(),
        offset: 0,
    };
    reader.expect(MAGIC)?;
    reader.node(destination, 0)?;
    // Nothing may follow the root node.
    let mut probe = [0u8; 1];
    match reader.input.read(&mut probe) {
        Ok(0) => {}
        Ok(_) => {
            return Err(UnnarError::Malformed {
                offset: reader.offset,
                reason: "bytes after the end of the archive".to_owned(),
            });
        }
        Err(error) => return Err(UnnarError::Read(error)),
    }
    Ok(NarHash {
        sha256: reader.hasher.finalize().into(),
        size: reader.offset,
    })
}

struct Reader<R> {
    input: R,
    hasher: Sha256,
    offset: u64,
}

impl<R: Read> Reader<R> {
    fn malformed(&self, reason: impl Into<String>) -> UnnarError {
        UnnarError::Malformed {
            offset: self.offset,
            reason: reason.into(),
        }
    }

    fn read_exact(&mut self, buffer: &mut [u8]) -> Result<(), UnnarError> {
        match self.input.read_exact(buffer) {
            Ok(()) => {
                self.hasher.update(&*buffer);
                self.offset += buffer.len() as u64;
                Ok(())
            }
            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => {
                Err(UnnarError::Truncated {
                    offset: self.offset,
                })
            }
            Err(error) => Err(UnnarError::Read(error)),
        }
    }

    fn length(&mut self) -> Result<u64, UnnarError> {
        let mut bytes = [0u8; 8];
        self.read_exact(&mut bytes)?;
        Ok(u64::from_le_bytes(bytes))
    }

    fn padding(&mut self, length: u64) -> Result<(), UnnarError> {
        let pad = (8 - length % 8) % 8;
        let mut bytes = [0u8; 8];
        let pad = usize::try_from(pad).unwrap_or(0);
        self.read_exact(&mut bytes[..pad])?;
        if bytes[..pad].iter().any(|b| *b != 0) {
            return Err(self.malformed("non-zero padding"));
        }
        Ok(())
    }

    /// A string of at most `max` bytes.
    fn string(&mut self, max: u64, what: &str) -> Result<Vec<u8>, UnnarError> {
        let length = self.length()?;
        if length > max {
            return Err(self.malformed(format!("{what} of {length} bytes (at most {max})")));
        }
        let mut bytes = vec![0u8; usize::try_from(length).unwrap_or(0)];
        self.read_exact(&mut bytes)?;
        self.padding(length)?;
        Ok(bytes)
    }

    fn token(&mut self) -> Result<Vec<u8>, UnnarError> {
        self.string(MAX_TOKEN, "a token")
    }

    fn expect(&mut self, token: &str) -> Result<(), UnnarError> {
        let found = self.token()?;
        if found != token.as_bytes() {
            return Err(self.malformed(format!(
                "expected `{token}`, found `{}`",
                String::from_utf8_lossy(&found)
            )));
        }
        Ok(())
    }

    fn write_error(path: &Path) -> impl FnOnce(io::Error) -> UnnarError + '_ {
        move |source| UnnarError::Write {
            path: path.to_path_buf(),
            source,
        }
    }

    fn node(&mut self, path: &Path, depth: usize) -> Result<(), UnnarError> {
        if depth > MAX_DEPTH {
            return Err(self.malformed(format!("directories nested deeper than {MAX_DEPTH}")));
        }
        self.expect("(")?;
        self.expect("type")?;
        let kind = self.token()?;
        match kind.as_slice() {
            b"regular" => {
                let mut token = self.token()?;
                let executable = token == b"executable";
                if executable {
                    self.expect("")?;
                    token = self.token()?;
                }
                if token != b"contents" {
                    return Err(self.malformed("expected `contents`"));
                }
                self.contents(path, executable)?;
            }
            b"symlink" => {
                self.expect("target")?;
                let target = self.string(MAX_TARGET, "a symlink target")?;
                if target.is_empty() || target.contains(&0) {
                    return Err(self.malformed("an empty symlink target, or one holding NUL"));
                }
                let target = PathBuf::from(
                    <std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(target),
                );
                symlink(&target, path).map_err(Self::write_error(path))?;
            }
            b"directory" => {
                fs::create_dir(path).map_err(Self::write_error(path))?;
                let mut previous: Option<Vec<u8>> = None;
                loop {
                    let token = self.token()?;
                    match token.as_slice() {
                        b")" => return Ok(()),
                        b"entry" => {}
                        _ => return Err(self.malformed("expected `entry` or `)`")),
                    }
                    self.expect("(")?;
                    self.expect("name")?;
                    let name = self.string(MAX_NAME, "a name")?;
                    if name.is_empty()
                        || name == b"."
                        || name == b".."
                        || name.contains(&b'/')
                        || name.contains(&0)
                    {
                        return Err(self.malformed(format!(
                            "the entry name `{}` is not a file name",
                            String::from_utf8_lossy(&name)
                        )));
                    }
                    if previous.as_ref().is_some_and(|p| *p >= name) {
                        return Err(self.malformed(format!(
                            "entry `{}` is out of order or repeated",
                            String::from_utf8_lossy(&name)
                        )));
                    }
                    self.expect("node")?;
                    let child = path
                        .join(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&name));
                    self.node(&child, depth + 1)?;
                    self.expect(")")?;
                    previous = Some(name);
                }
            }
            other => {
                return Err(self.malformed(format!(
                    "unknown node type `{}`",
                    String::from_utf8_lossy(other)
                )));
            }
        }
        self.expect(")")
    }

    fn contents(&mut self, path: &Path, executable: bool) -> Result<(), UnnarError> {
        let length = self.length()?;
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(if executable { 0o755 } else { 0o644 })
            .open(path)
            .map_err(Self::write_error(path))?;
        let mut left = length;
        let mut buffer = vec![0u8; 1 << 20];
        while left > 0 {
            let take = usize::try_from(left.min(buffer.len() as u64)).unwrap_or(buffer.len());
            self.read_exact(&mut buffer[..take])?;
            file.write_all(&buffer[..take])
                .map_err(Self::write_error(path))?;
            left -= take as u64;
        }
        finish(file, path)?;
        self.padding(length)
    }
}

fn finish(file: File, path: &Path) -> Result<(), UnnarError> {
    file.sync_all().map_err(|source| UnnarError::Write {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::nar;

    fn tree(root: &Path) {
        fs::create_dir_all(root.join("bin")).unwrap();
        fs::write(root.join("bin/run"), b"#!/bin/sh\necho hi\n").unwrap();
        fs::set_permissions(
            root.join("bin/run"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        fs::write(root.join("a.txt"), b"seven b").unwrap();
        fs::write(root.join("empty"), b"").unwrap();
        fs::write(root.join("big"), vec![7u8; 3 << 20]).unwrap();
        symlink("bin/run", root.join("link")).unwrap();
        fs::create_dir(root.join("d")).unwrap();
    }

    fn dump(path: &Path) -> Vec<u8> {
        let mut out = Vec::new();
        nar::dump(path, &mut out).unwrap();
        out
    }

    #[test]
    fn a_dump_restores_to_a_tree_with_the_same_nar() {
        let dir = tempfile::tempdir().unwrap();
        tree(&dir.path().join("src"));
        let bytes = dump(&dir.path().join("src"));
        let hash = restore(bytes.as_slice(), &dir.path().join("out")).unwrap();
        assert_eq!(hash, nar::hash(&dir.path().join("src")).unwrap());
        assert_eq!(dump(&dir.path().join("out")), bytes);
        // A lone file and a lone symlink as the root.
        for root in ["a.txt", "link"] {
            let bytes = dump(&dir.path().join("src").join(root));
            let out = dir.path().join(format!("out-{root}"));
            restore(bytes.as_slice(), &out).unwrap();
            assert_eq!(dump(&out), bytes);
        }
    }

    /// NAR strings, for hand-built archives.
    fn nar_of(tokens: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for token in tokens {
            out.extend_from_slice(&(token.len() as u64).to_le_bytes());
            out.extend_from_slice(token);
            out.resize(out.len().div_ceil(8) * 8, 0);
        }
        out
    }

    fn entry<'a>(name: &'a [u8], node: &[&'a [u8]]) -> Vec<&'a [u8]> {
        let mut tokens: Vec<&[u8]> = vec![b"entry", b"(", b"name", name, b"node"];
        tokens.extend_from_slice(node);
        tokens.push(b")");
        tokens
    }

    const FILE: [&[u8]; 6] = [b"(", b"type", b"regular", b"contents", b"x", b")"];

    fn directory(entries: &[Vec<&'static [u8]>]) -> Vec<u8> {
        let mut tokens: Vec<&[u8]> = vec![b"nix-archive-1", b"(", b"type", b"directory"];
        for e in entries {
            tokens.extend_from_slice(e);
        }
        tokens.push(b")");
        nar_of(&tokens)
    }

    #[test]
    fn hostile_archives_are_refused_and_write_nothing_outside() {
        let dir = tempfile::tempdir().unwrap();
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "dotdot",
                directory(&[entry(b"..", &FILE)]),
                "not a file name",
            ),
            (
                "slash",
                directory(&[entry(b"a/b", &FILE)]),
                "not a file name",
            ),
            ("empty", directory(&[entry(b"", &FILE)]), "not a file name"),
            (
                "repeat",
                directory(&[entry(b"a", &FILE), entry(b"a", &FILE)]),
                "out of order",
            ),
            (
                "order",
                directory(&[entry(b"b", &FILE), entry(b"a", &FILE)]),
                "out of order",
            ),
            (
                "type",
                nar_of(&[b"nix-archive-1", b"(", b"type", b"fifo", b")"]),
                "unknown node type",
            ),
            (
                "magic",
                nar_of(&[b"nix-archive-2"]),
                "expected `nix-archive-1`",
            ),
        ];
        for (name, bytes, words) in cases {
            let out = dir.path().join(name);
            let err = restore(bytes.as_slice(), &out).unwrap_err().to_string();
            assert!(err.contains(words), "{name}: {err}");
        }
        assert!(!dir.path().join("a").exists() && !dir.path().join("b").exists());

        // Truncated anywhere: an error, never a panic.
        let src = dir.path().join("src");
        tree(&src);
        let bytes = dump(&src);
        for cut in [0, 7, 8, 100, bytes.len() / 2, bytes.len() - 1] {
            let out = dir.path().join(format!("cut-{cut}"));
            assert!(restore(&bytes[..cut], &out).is_err(), "cut at {cut}");
        }
        // Trailing bytes and non-zero padding.
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(
            restore(trailing.as_slice(), &dir.path().join("t"))
                .unwrap_err()
                .to_string()
                .contains("after the end")
        );
        let mut padded = nar_of(&[
            b"nix-archive-1",
            b"(",
            b"type",
            b"regular",
            b"contents",
            b"x",
            b")",
        ]);
        let x = padded.len() - 16 - 1 - 7 + 1; // the first padding byte after "x"
        padded[x] = 1;
        assert!(restore(padded.as_slice(), &dir.path().join("p")).is_err());
        // An existing destination is never written into.
        fs::create_dir(dir.path().join("exists")).unwrap();
        assert!(restore(bytes.as_slice(), &dir.path().join("exists")).is_err());
    }
}
