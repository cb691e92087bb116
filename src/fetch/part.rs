//! The `.part` file a download is written to before it is verified.
//!
//! The bytes are hashed as they are written, so verification costs no
//! second read of a large file, and the hash state lives as long as the
//! `.part` does: a resumed attempt appends to both. `dest` only ever appears
//! by a rename of a complete, verified, fsynced `.part`, so a reader never
//! sees a partial or wrong file at `dest`, even after a crash.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{FetchError, Fetched};

/// Writes are gathered to this size: chunks from the network can be a few
/// KiB, and a syscall per chunk is measurable at loopback speeds. Larger
/// chunks bypass the buffer.
const WRITE_BUFFER: usize = 256 * 1024;

/// A download in progress; removed on drop unless it was renamed to `dest`.
pub(crate) struct PartFile {
    path: PathBuf,
    dest: PathBuf,
    writer: Option<BufWriter<File>>,
    hasher: Sha256,
    len: u64,
}

impl PartFile {
    /// Create (or truncate) `<dest>.part`. A `.part` left by an earlier,
    /// interrupted run is not resumed: nothing says it came from the same
    /// URL or even the same request, and a wrong prefix would only show up
    /// as a hash mismatch after the whole download.
    pub(crate) fn create(dest: &Path) -> Result<PartFile, FetchError> {
        let path = part_path(dest)?;
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io_error("create", &path))?;
        Ok(PartFile {
            writer: Some(BufWriter::with_capacity(WRITE_BUFFER, file)),
            path,
            dest: dest.to_path_buf(),
            hasher: Sha256::new(),
            len: 0,
        })
    }

    /// Bytes written (and hashed) so far.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    pub(crate) fn append(&mut self, bytes: &[u8]) -> Result<(), FetchError> {
        self.writer()
            .write_all(bytes)
            .map_err(io_error("write", &self.path))?;
        self.hasher.update(bytes);
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Throw away what was written, e.g. when a server ignores `Range` and
    /// sends the whole file again.
    pub(crate) fn restart(&mut self) -> Result<(), FetchError> {
        let path = self.path.clone();
        let writer = self.writer();
        writer.flush().map_err(io_error("write", &path))?;
        let file = writer.get_mut();
        file.set_len(0).map_err(io_error("truncate", &path))?;
        file.seek(SeekFrom::Start(0))
            .map_err(io_error("truncate", &path))?;
        self.hasher = Sha256::new();
        self.len = 0;
        Ok(())
    }

    /// Check size and hash, then move the `.part` to `dest`. On a mismatch
    /// the `.part` is removed (by drop) and `dest` is left alone.
    pub(crate) fn finish(
        mut self,
        url: &str,
        expected_sha256: Option<&str>,
        expected_size: Option<u64>,
    ) -> Result<Fetched, FetchError> {
        if let Some(expected) = expected_size
            && expected != self.len
        {
            return Err(FetchError::SizeMismatch {
                url: url.to_string(),
                expected,
                actual: self.len,
            });
        }
        let actual = hex(&std::mem::take(&mut self.hasher).finalize().into());
        if let Some(expected) = expected_sha256
            && !expected.eq_ignore_ascii_case(&actual)
        {
            return Err(FetchError::HashMismatch {
                url: url.to_string(),
                expected: expected.to_ascii_lowercase(),
                actual,
            });
        }
        let writer = self.writer.take().expect("finish is called once");
        let file = writer
            .into_inner()
            .map_err(|e| io_error("write", &self.path)(e.into_error()))?;
        // Durable before it is visible: the store trusts what is at `dest`.
        file.sync_all().map_err(io_error("sync", &self.path))?;
        drop(file);
        fs::rename(&self.path, &self.dest).map_err(io_error("rename to dest", &self.path))?;
        // Renamed: nothing left for drop to remove.
        self.path = PathBuf::new();
        if let Some(parent) = self.dest.parent() {
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            crate::fs::sync_directory(parent).map_err(io_error("sync", parent))?;
        }
        Ok(Fetched {
            url: url.to_string(),
            sha256: actual,
            size: self.len,
        })
    }

    fn writer(&mut self) -> &mut BufWriter<File> {
        self.writer.as_mut().expect("used after finish")
    }
}

impl Drop for PartFile {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            // Close first; the buffered tail is garbage now.
            if let Some(writer) = self.writer.take() {
                let (file, _) = writer.into_parts();
                drop(file);
            }
            // Best effort: the fetch has already failed with a better error.
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// `<dest>.part`, next to `dest` so the final rename stays on one file system.
pub(crate) fn part_path(dest: &Path) -> Result<PathBuf, FetchError> {
    let Some(name) = dest.file_name() else {
        return Err(FetchError::Io {
            action: "download to",
            path: dest.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "not a file name"),
        });
    };
    let mut name = name.to_os_string();
    name.push(".part");
    Ok(dest.with_file_name(name))
}

pub(crate) fn hex(bytes: &[u8; 32]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(64);
    for byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)] as char);
        out.push(DIGITS[usize::from(byte & 0xf)] as char);
    }
    out
}

fn io_error<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FetchError + 'a {
    move |source| FetchError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha256_hex(bytes: &[u8]) -> String {
        hex(&Sha256::digest(bytes).into())
    }

    #[test]
    fn part_path_is_next_to_dest() {
        assert_eq!(
            part_path(Path::new("/a/b/file.tar.gz")).unwrap(),
            Path::new("/a/b/file.tar.gz.part")
        );
        assert!(part_path(Path::new("/")).is_err());
    }

    #[test]
    fn hex_of_empty_input() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn restart_forgets_bytes_and_hash() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out");
        let mut part = PartFile::create(&dest).unwrap();
        part.append(b"wrong prefix").unwrap();
        part.restart().unwrap();
        part.append(b"hello").unwrap();
        let fetched = part
            .finish("u", Some(&sha256_hex(b"hello").to_uppercase()), Some(5))
            .unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"hello");
        assert_eq!(fetched.sha256, sha256_hex(b"hello"));
        assert!(!dir.path().join("out.part").exists());
    }

    #[test]
    fn mismatch_removes_part_and_leaves_no_dest() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out");
        let mut part = PartFile::create(&dest).unwrap();
        part.append(b"hello").unwrap();
        let error = part.finish("u", Some(&sha256_hex(b"other")), None);
        assert!(matches!(error, Err(FetchError::HashMismatch { .. })));
        assert!(!dest.exists());
        assert!(!dir.path().join("out.part").exists());
    }
}
