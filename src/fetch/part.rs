//! The `.part` file a download is written to before it is verified.
//!
//! The bytes are hashed as they are written, so verification costs no
//! second read of a large file, and the hash state lives as long as the
//! `.part` does: a resumed attempt appends to both. `dest` only ever appears
//! by a rename of a complete, verified, fsynced `.part`, so a reader never
//! sees a partial or wrong file at `dest`, even after a crash.
//!
//! Incoming bytes are gathered into buffers of [`BUFFER_SIZE`]; each full
//! buffer is written, then hashed by the [`Hasher`] thread while the next
//! one fills.
//!
//! Getting the bytes onto disk: the first [`DIRECT_AFTER`] bytes are written
//! through the page cache, and every [`WRITEBACK_WINDOW`] bytes the kernel
//! is asked to start writing them out, so the fsync at the end waits for the
//! last few MiB rather than for the whole file. A file that grows past
//! [`DIRECT_AFTER`] (a disk image, a rootfs tarball) is switched to
//! `O_DIRECT`: its full, page-aligned buffers go from the buffer to the
//! device without a copy into the page cache or a pass of the kernel's
//! writeback, which on a two-core machine is CPU the hash thread needs (a
//! 1 GiB download measured about 10% faster; `benches/fetch.sh`). Small
//! files (most `.deb`s) stay cached for the store's read that follows. A
//! file system that refuses `O_DIRECT` (tmpfs, some FUSE) is written
//! through the cache, as before; the last, partial buffer always is.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::hasher::{BUFFER_ALIGN, BUFFER_SIZE, Buffer, Hasher};
use super::{FetchError, Fetched};

/// Written data is handed to the kernel for writeback in steps of this size.
const WRITEBACK_WINDOW: u64 = 8 << 20;

/// Full buffers at or past this offset are written with `O_DIRECT`.
const DIRECT_AFTER: u64 = 16 << 20;

/// How the file is being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Through the page cache; `O_DIRECT` may still be tried.
    Cached,
    /// `O_DIRECT` is set on the file.
    Direct,
    /// Through the page cache for good: the file system refused `O_DIRECT`.
    CachedOnly,
}

/// A download in progress; removed on drop unless it was renamed to `dest`.
pub(crate) struct PartFile {
    path: PathBuf,
    dest: PathBuf,
    /// `None` once finished.
    file: Option<File>,
    hasher: Option<Hasher>,
    /// Bytes not yet written or hashed, fewer than [`BUFFER_SIZE`]; no
    /// capacity until the first byte arrives.
    buffer: Buffer,
    /// Bytes appended: written, or in `buffer`.
    len: u64,
    /// Bytes of the file before this offset were handed to the kernel for
    /// writeback.
    writeback_from: u64,
    mode: Mode,
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
        let mut part = PartFile {
            file: Some(file),
            hasher: None,
            buffer: Buffer::new(BUFFER_ALIGN),
            path,
            dest: dest.to_path_buf(),
            len: 0,
            writeback_from: 0,
            mode: Mode::Cached,
        };
        // Spawned once `part` exists, so that a failure removes the `.part`.
        part.hasher = Some(Hasher::spawn().map_err(io_error("start hashing for", &part.path))?);
        Ok(part)
    }

    /// Bytes appended so far.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    pub(crate) fn append(&mut self, mut bytes: &[u8]) -> Result<(), FetchError> {
        while !bytes.is_empty() {
            if self.buffer.capacity() == 0 {
                self.buffer = self.hasher_mut().buffer();
            }
            let n = (BUFFER_SIZE - self.buffer.len()).min(bytes.len());
            self.buffer.extend_from_slice(&bytes[..n]);
            self.len += n as u64;
            bytes = &bytes[n..];
            if self.buffer.len() == BUFFER_SIZE {
                self.write_buffer()?;
            }
        }
        Ok(())
    }

    /// Write `buffer` to the file and pass it to the hasher.
    fn write_buffer(&mut self) -> Result<(), FetchError> {
        let buffer = std::mem::replace(&mut self.buffer, Buffer::new(BUFFER_ALIGN));
        if buffer.is_empty() {
            return Ok(());
        }
        let offset = self.len - buffer.len() as u64;
        // O_DIRECT needs the memory, the offset and the length aligned; the
        // memory always is (the pool's buffers are page-aligned).
        let aligned =
            offset.is_multiple_of(BUFFER_ALIGN as u64) && buffer.len().is_multiple_of(BUFFER_ALIGN);
        let direct = aligned && offset >= DIRECT_AFTER;
        self.set_direct(direct);
        let mut written = 0;
        while written < buffer.len() {
            let file = self.file.as_mut().expect("used after finish");
            match file.write(&buffer[written..]) {
                Ok(0) => {
                    return Err(io_error("write", &self.path)(io::Error::from(
                        io::ErrorKind::WriteZero,
                    )));
                }
                Ok(n) => written += n,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                // EINVAL from a direct write: the file system does not
                // support it after all (or a short write left the rest
                // unaligned); the rest goes through the cache.
                Err(error)
                    if self.mode == Mode::Direct
                        && error.raw_os_error()
                            == Some(rustix::io::Errno::INVAL.raw_os_error()) =>
                {
                    self.set_direct(false);
                    if self.mode == Mode::Direct {
                        return Err(io_error("write", &self.path)(error));
                    }
                    if written == 0 {
                        self.mode = Mode::CachedOnly;
                    }
                }
                Err(error) => return Err(io_error("write", &self.path)(error)),
            }
        }
        self.hasher().update(buffer);
        if self.mode != Mode::Direct {
            self.start_writeback();
        }
        Ok(())
    }

    /// Set or clear `O_DIRECT` on the file, as far as the file system lets.
    fn set_direct(&mut self, direct: bool) {
        let wanted = match (direct, self.mode) {
            (true, Mode::Cached) => Mode::Direct,
            (false, Mode::Direct) => Mode::Cached,
            _ => return,
        };
        let file = self.file.as_ref().expect("used after finish");
        let switched = rustix::fs::fcntl_getfl(file).and_then(|flags| {
            let flags = if direct {
                flags | rustix::fs::OFlags::DIRECT
            } else {
                flags - rustix::fs::OFlags::DIRECT
            };
            rustix::fs::fcntl_setfl(file, flags)
        });
        self.mode = match switched {
            Ok(()) => wanted,
            // Refused (tmpfs says EINVAL here): stay cached. Failing to clear
            // it would leave later unaligned writes to the EINVAL fallback.
            Err(_) if direct => Mode::CachedOnly,
            Err(_) => self.mode,
        };
    }

    /// Once [`WRITEBACK_WINDOW`] bytes reached the file since the last call,
    /// ask the kernel to start writing them to disk.
    fn start_writeback(&mut self) {
        let in_file = self.len - self.buffer.len() as u64;
        if in_file - self.writeback_from < WRITEBACK_WINDOW {
            return;
        }
        // On Linux, POSIX_FADV_DONTNEED starts writeback of the range's dirty
        // pages without waiting for it, then drops the pages that are already
        // clean; pages still dirty or being written stay cached, so most of
        // the file does. Only a hint: errors are ignored, and the fsync in
        // `finish` is what makes the file durable.
        #[cfg(target_os = "linux")]
        let _ = rustix::fs::fadvise(
            self.file.as_ref().expect("used after finish"),
            self.writeback_from,
            std::num::NonZeroU64::new(in_file - self.writeback_from),
            rustix::fs::Advice::DontNeed,
        );
        self.writeback_from = in_file;
    }

    /// Throw away what was written, e.g. when a server ignores `Range` and
    /// sends the whole file again.
    pub(crate) fn restart(&mut self) -> Result<(), FetchError> {
        self.buffer.clear();
        self.set_direct(false);
        let file = self.file.as_mut().expect("used after finish");
        file.set_len(0).map_err(io_error("truncate", &self.path))?;
        file.seek(SeekFrom::Start(0))
            .map_err(io_error("truncate", &self.path))?;
        self.hasher().reset();
        self.len = 0;
        self.writeback_from = 0;
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
        self.write_buffer()?;
        let file = self.file.take().expect("finish is called once");
        // Durable before it is visible: the store trusts what is at `dest`.
        // The hash thread finishes its last buffers meanwhile.
        file.sync_all().map_err(io_error("sync", &self.path))?;
        drop(file);
        let hasher = self.hasher.take().expect("finish is called once");
        let actual = hex(&hasher.finish());
        if let Some(expected) = expected_sha256
            && !expected.eq_ignore_ascii_case(&actual)
        {
            return Err(FetchError::HashMismatch {
                url: url.to_string(),
                expected: expected.to_ascii_lowercase(),
                actual,
            });
        }
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

    fn hasher(&self) -> &Hasher {
        self.hasher.as_ref().expect("used after finish")
    }

    fn hasher_mut(&mut self) -> &mut Hasher {
        self.hasher.as_mut().expect("used after finish")
    }
}

impl Drop for PartFile {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            // Close first.
            drop(self.file.take());
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
    use sha2::{Digest, Sha256};

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

    /// Past `DIRECT_AFTER` the file is written with O_DIRECT (where the
    /// file system takes it); pieces of every size, a restart from the
    /// direct region and the cached tail all land where they belong.
    #[test]
    #[allow(clippy::print_stderr, reason = "the notice is for the test's reader")]
    fn large_file_switches_to_direct_writes() {
        let size = DIRECT_AFTER as usize + 3 * BUFFER_SIZE + 4_321;
        let data: Vec<u8> = (0..size).map(|i| (i * 7 % 253) as u8).collect();
        for base in [std::env::temp_dir(), PathBuf::from("/dev/shm")] {
            if !base.is_dir() {
                continue;
            }
            let dir = tempfile::tempdir_in(&base).unwrap();
            let dest = dir.path().join("out");
            let mut part = PartFile::create(&dest).unwrap();
            // A restart once direct writes have begun.
            part.append(&data[..DIRECT_AFTER as usize + 2 * BUFFER_SIZE])
                .unwrap();
            assert_ne!(part.mode, Mode::Cached, "{}", base.display());
            if part.mode == Mode::CachedOnly {
                eprintln!(
                    "NOTICE: {} refused O_DIRECT; written through the cache",
                    base.display()
                );
            }
            part.restart().unwrap();
            assert_ne!(part.mode, Mode::Direct);
            let mut rest = &data[..];
            let mut step = 1;
            while !rest.is_empty() {
                let n = step.min(rest.len());
                part.append(&rest[..n]).unwrap();
                rest = &rest[n..];
                step = step * 3 + 1;
            }
            let fetched = part
                .finish("u", Some(&sha256_hex(&data)), Some(size as u64))
                .unwrap();
            assert_eq!(fetched.size, size as u64);
            assert!(fs::read(&dest).unwrap() == data, "{}", base.display());
        }
    }
}
