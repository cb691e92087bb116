//! NAR ("Nix ARchive"): the canonical serialisation of a file system tree
//! that store paths are hashed over.
//!
//! Unlike tar, a NAR has exactly one encoding per tree: no timestamps,
//! owners, permissions other than "executable", or directory order. kiln
//! produces byte for byte what Nix's `dumpPath` does (see
//! [`src/libutil/archive.cc`](https://github.com/NixOS/nix/blob/master/src/libutil/archive.cc)
//! and Eelco Dolstra's PhD thesis, *The Purely Functional Software
//! Deployment Model*), so `nix-store --dump` and `nix-hash` agree with kiln
//! on every tree (checked by `tests/nix_crosscheck.rs`).
//!
//! # Format
//!
//! Everything is a sequence of *strings*: a `u64` little-endian byte length,
//! the bytes, then zero bytes up to a multiple of 8. Written as a grammar
//! over strings (`<…>` is a string holding raw bytes from the tree):
//!
//! ```text
//! nar       = "nix-archive-1" node
//! node      = "(" "type" kind ")"
//! kind      = "regular" ["executable" ""] "contents" <file bytes>
//!           | "symlink" "target" <link target bytes>
//!           | "directory" entry*
//! entry     = "entry" "(" "name" <name bytes> "node" node ")"
//! ```
//!
//! - A regular file is executable iff its owner-execute bit (`0o100`) is set;
//!   no other mode bits are recorded.
//! - Directory entries are sorted by the raw bytes of their names (not by
//!   locale), so `B` < `_x` < `a` < `é`.
//! - Symlinks are stored, never followed — including when the root itself is
//!   one. The target is stored as written.
//! - Fifos, sockets and device nodes cannot be represented; archiving them is
//!   an error ([`NarError::Unsupported`]), as in Nix.
//!
//! # Hashing and reference scanning
//!
//! [`hash`] streams the NAR into SHA-256 without materialising it, reading
//! files in 1 MiB chunks; files over 2 MiB are read on a helper thread so
//! that reading overlaps hashing. [`hash_and_scan`] additionally finds, in
//! the same pass, which of a set of store-path hash parts occur anywhere in
//! the NAR (file contents, names, symlink targets): how Nix discovers a
//! store path's runtime references.

use std::collections::{BTreeSet, HashSet};
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use rustix::fs::{Mode, OFlags};
use sha2::{Digest, Sha256};

use super::nixbase32;

/// The string every NAR starts with.
pub const MAGIC: &str = "nix-archive-1";

/// How much of a file is read at a time. Large enough that the per-read
/// system call cost vanishes next to hashing, small enough to stay in cache
/// between the read and the hash.
const CHUNK_SIZE: usize = 1 << 20;

/// What the output writer of [`dump`] batches small tokens into. File
/// contents bigger than this bypass it (see [`BufWriter`]).
const WRITE_BUFFER: usize = 64 << 10;

/// Files bigger than this many chunks are read on a second thread (see
/// `Archiver::contents_pipelined`); for smaller ones the thread costs more
/// than the overlap saves.
const PIPELINE_MIN_CHUNKS: u64 = 2;

/// Chunks the reader thread may get ahead of the hasher by.
const READ_AHEAD: usize = 2;

/// Length of a store-path hash part in characters (20 bytes in Nix base-32).
const HASH_PART_LEN: usize = 32;

/// Problems archiving a tree. Every variant names the path involved.
#[derive(Debug, thiserror::Error)]
pub enum NarError {
    /// Reading the tree failed.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A file type a NAR cannot represent.
    #[error(
        "cannot archive {path}: it is a {kind}; a NAR holds only regular files, directories and symlinks"
    )]
    Unsupported { path: PathBuf, kind: &'static str },
    /// The tree changed under us, so the archive would describe a state that
    /// never existed.
    #[error("{path} changed while it was being archived: {detail}")]
    Changed { path: PathBuf, detail: String },
    /// The output of [`dump`] refused bytes. `path` is the root being
    /// archived.
    #[error("cannot write the NAR of {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A reference candidate passed to [`hash_and_scan`] that could never
    /// match, which is a caller bug rather than a tree without references.
    #[error(
        "cannot scan {path} for `{candidate}`: a store-path hash part is 32 Nix base-32 characters"
    )]
    BadCandidate { path: PathBuf, candidate: String },
}

/// The SHA-256 and length of a NAR: what Nix records as `narHash` and
/// `narSize`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NarHash {
    pub sha256: [u8; 32],
    pub size: u64,
}

impl NarHash {
    /// `sha256:<nix base-32>`, the way Nix prints a NAR hash outside SRI
    /// form (e.g. `nix-store --query --hash`).
    #[must_use]
    pub fn to_nix32(&self) -> String {
        format!("sha256:{}", nixbase32::encode(&self.sha256))
    }

    /// The digest as 64 lower-case hex digits, without an algorithm prefix
    /// (as `sha256sum` prints it).
    #[must_use]
    pub fn to_hex(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut text = String::with_capacity(64);
        for byte in self.sha256 {
            text.push(char::from(HEX[usize::from(byte >> 4)]));
            text.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
        text
    }
}

/// Write the NAR of `path` to `out`, returning the number of bytes written.
///
/// Streams: file contents pass through a reusable chunk buffer, so memory
/// use does not depend on file sizes. Small tokens are batched, so `out`
/// need not be buffered.
pub fn dump(path: &Path, out: &mut impl Write) -> Result<u64, NarError> {
    let mut writer = BufWriter::with_capacity(WRITE_BUFFER, out);
    let size = archive(path, &mut writer, CHUNK_SIZE)?;
    writer.flush().map_err(|source| NarError::Write {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(size)
}

/// SHA-256 and size of the NAR of `path`, without building the NAR.
pub fn hash(path: &Path) -> Result<NarHash, NarError> {
    hash_and_scan(path, &[]).map(|(hash, _)| hash)
}

/// [`hash`], and which of `candidates` occur in the NAR, in one pass.
///
/// `candidates` are store-path hash parts (32 Nix base-32 characters); the
/// result holds those that appear anywhere in the NAR byte stream. With no
/// candidates this costs the same as [`hash`].
pub fn hash_and_scan(
    path: &Path,
    candidates: &[&str],
) -> Result<(NarHash, BTreeSet<String>), NarError> {
    let scanner = if candidates.is_empty() {
        None
    } else {
        let scanner = RefScanner::new(candidates).map_err(|candidate| NarError::BadCandidate {
            path: path.to_path_buf(),
            candidate: candidate.to_owned(),
        })?;
        Some(scanner)
    };
    let mut sink = HashSink {
        sha256: Sha256::new(),
        scanner,
    };
    let size = archive(path, &mut sink, CHUNK_SIZE)?;
    let found = sink.scanner.map(RefScanner::finish).unwrap_or_default();
    Ok((
        NarHash {
            sha256: sink.sha256.finalize().into(),
            size,
        },
        found,
    ))
}

/// Feeds the NAR to SHA-256 and, optionally, the reference scanner. Never
/// fails, and needs no buffer of its own: `Sha256` keeps its partial block,
/// and chunks are handed over without copying.
struct HashSink {
    sha256: Sha256,
    scanner: Option<RefScanner>,
}

impl Write for HashSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.sha256.update(data);
        if let Some(scanner) = &mut self.scanner {
            scanner.feed(data);
        }
        Ok(data.len())
    }

    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        self.write(data).map(drop)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Write the NAR of `root` to `out` with `chunk_size`-byte file reads;
/// returns the NAR's length. The chunk size is a parameter so that tests can
/// make chunk boundaries fall where they want.
fn archive(root: &Path, out: &mut impl Write, chunk_size: usize) -> Result<u64, NarError> {
    let mut archiver = Archiver {
        out,
        root,
        written: 0,
        buffer: Vec::new(),
        pool: Vec::new(),
        chunk_size,
    };
    archiver.archive()?;
    Ok(archiver.written)
}

/// A directory being archived: its entries not yet written, in NAR order.
struct Frame {
    path: PathBuf,
    entries: std::vec::IntoIter<OsString>,
}

struct Archiver<'a, W: Write> {
    out: &'a mut W,
    root: &'a Path,
    written: u64,
    /// File chunks are read here; grown on demand up to `chunk_size` so that
    /// hashing a tree of small files does not touch a whole chunk.
    buffer: Vec<u8>,
    /// Full-size buffers kept between large files for the reader thread.
    pool: Vec<Vec<u8>>,
    chunk_size: usize,
}

impl<W: Write> Archiver<'_, W> {
    /// The traversal keeps its own stack rather than recursing, so that a
    /// pathologically deep tree cannot overflow the thread's stack.
    fn archive(&mut self) -> Result<(), NarError> {
        self.string(MAGIC.as_bytes())?;
        let mut stack = Vec::new();
        if let Some(frame) = self.node(self.root.to_path_buf())? {
            stack.push(frame);
        }
        while let Some(frame) = stack.last_mut() {
            if let Some(name) = frame.entries.next() {
                let child = frame.path.join(&name);
                self.strings(&[b"entry", b"(", b"name"])?;
                self.string(name.as_bytes())?;
                self.string(b"node")?;
                match self.node(child)? {
                    Some(directory) => stack.push(directory),
                    // Close the entry; a directory's entry is closed when
                    // its frame is popped.
                    None => self.string(b")")?,
                }
            } else {
                stack.pop();
                // Close the directory node, then the entry holding it.
                self.string(b")")?;
                if !stack.is_empty() {
                    self.string(b")")?;
                }
            }
        }
        Ok(())
    }

    /// Write the node for `path`. A directory's node is left open (with its
    /// entries returned as a frame); any other node is written completely.
    fn node(&mut self, path: PathBuf) -> Result<Option<Frame>, NarError> {
        // `lstat`: symlinks are archived as links, never followed.
        let metadata = std::fs::symlink_metadata(&path).map_err(|source| NarError::Io {
            path: path.clone(),
            source,
        })?;
        let file_type = metadata.file_type();
        if file_type.is_file() {
            self.regular(&path)?;
            Ok(None)
        } else if file_type.is_dir() {
            let entries = sorted_entries(&path)?;
            self.strings(&[b"(", b"type", b"directory"])?;
            Ok(Some(Frame {
                path,
                entries: entries.into_iter(),
            }))
        } else if file_type.is_symlink() {
            let target = std::fs::read_link(&path).map_err(|source| NarError::Io {
                path: path.clone(),
                source,
            })?;
            self.strings(&[b"(", b"type", b"symlink", b"target"])?;
            self.string(target.as_os_str().as_bytes())?;
            self.string(b")")?;
            Ok(None)
        } else {
            let kind = if file_type.is_fifo() {
                "fifo"
            } else if file_type.is_socket() {
                "socket"
            } else if file_type.is_block_device() {
                "block device"
            } else if file_type.is_char_device() {
                "character device"
            } else {
                "file of unknown type"
            };
            Err(NarError::Unsupported { path, kind })
        }
    }

    /// A regular file's node, contents streamed in chunks.
    fn regular(&mut self, path: &Path) -> Result<(), NarError> {
        let io_error = |source| NarError::Io {
            path: path.to_path_buf(),
            source,
        };
        // The file may have been replaced since `lstat`: `NOFOLLOW` refuses
        // a symlink and `NONBLOCK` keeps a fifo from hanging the open. The
        // size and mode come from the opened file, so they describe the
        // bytes actually read.
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|errno| io_error(errno.into()))?;
        let file = File::from(fd);
        let metadata = file.metadata().map_err(io_error)?;
        if !metadata.is_file() {
            return Err(NarError::Changed {
                path: path.to_path_buf(),
                detail: "it is no longer a regular file".to_owned(),
            });
        }
        let size = metadata.len();
        let executable = metadata.permissions().mode() & 0o100 != 0;

        self.strings(&[b"(", b"type", b"regular"])?;
        if executable {
            self.strings(&[b"executable", b""])?;
        }
        self.string(b"contents")?;
        self.emit(&size.to_le_bytes())?;

        let result = if size > PIPELINE_MIN_CHUNKS * self.chunk_size as u64 {
            self.contents_pipelined(file, size)
        } else {
            self.contents_serial(file, size)
        };
        result.map_err(|failure| failure.into_error(path, size))?;
        self.padding(size)?;
        self.string(b")")
    }

    /// Stream `size` bytes of `file` through one reusable buffer.
    fn contents_serial(&mut self, mut file: File, size: u64) -> Result<(), ContentsError> {
        let first = usize::try_from(size)
            .unwrap_or(usize::MAX)
            .min(self.chunk_size);
        if self.buffer.len() < first {
            self.buffer.resize(first, 0);
        }
        let mut remaining = size;
        while remaining > 0 {
            let want = usize::try_from(remaining)
                .unwrap_or(usize::MAX)
                .min(self.buffer.len());
            let read =
                read_full(&mut file, &mut self.buffer[..want]).map_err(ContentsError::Read)?;
            if read == 0 {
                return Err(ContentsError::Shrank);
            }
            // `emit` borrows `self` mutably while the chunk lives in
            // `self.buffer`; moving the buffer out avoids copying it.
            let buffer = std::mem::take(&mut self.buffer);
            let emitted = self.emit(&buffer[..read]);
            self.buffer = buffer;
            emitted.map_err(ContentsError::Emit)?;
            remaining -= read as u64;
        }
        check_at_end(&mut file)
    }

    /// Stream `size` bytes of `file` with a reader thread, so that reading
    /// chunk `n + 1` (a copy out of the page cache, or disk I/O) overlaps
    /// hashing chunk `n`. For large files this is the difference between
    /// `read + hash` and `max(read, hash)` per chunk.
    ///
    /// Buffers circulate between the threads through two channels, so no
    /// chunk is copied and at most `READ_AHEAD + 1` are allocated; they are
    /// kept in `self.pool` for the next large file.
    fn contents_pipelined(&mut self, mut file: File, size: u64) -> Result<(), ContentsError> {
        enum Message {
            Chunk(Vec<u8>, usize),
            End(Result<(), ContentsError>),
        }
        let chunk_size = self.chunk_size;
        std::thread::scope(|scope| {
            // Declared inside the scope so that an early return drops them
            // before the scope joins the reader, which then stops blocking.
            let (full_tx, full_rx) = mpsc::sync_channel::<Message>(READ_AHEAD);
            let (empty_tx, empty_rx) = mpsc::channel::<Vec<u8>>();
            self.pool
                .resize_with(READ_AHEAD + 1, || vec![0; chunk_size]);
            for buffer in self.pool.drain(..) {
                // Cannot fail: `empty_rx` is alive until the reader starts.
                let _ = empty_tx.send(buffer);
            }
            let reader = move || {
                let mut remaining = size;
                while remaining > 0 {
                    let Ok(mut buffer) = empty_rx.recv() else {
                        return empty_rx; // The consumer gave up.
                    };
                    let want = usize::try_from(remaining)
                        .unwrap_or(usize::MAX)
                        .min(buffer.len());
                    match read_full(&mut file, &mut buffer[..want]) {
                        Ok(0) => {
                            let _ = full_tx.send(Message::End(Err(ContentsError::Shrank)));
                            return empty_rx;
                        }
                        Ok(read) => {
                            if full_tx.send(Message::Chunk(buffer, read)).is_err() {
                                return empty_rx;
                            }
                            remaining -= read as u64;
                        }
                        Err(error) => {
                            let _ = full_tx.send(Message::End(Err(ContentsError::Read(error))));
                            return empty_rx;
                        }
                    }
                }
                let _ = full_tx.send(Message::End(check_at_end(&mut file)));
                empty_rx
            };
            let handle = std::thread::Builder::new()
                .name("kiln-nar-read".to_owned())
                .spawn_scoped(scope, reader)
                .map_err(ContentsError::Read)?;
            loop {
                match full_rx.recv() {
                    Ok(Message::Chunk(buffer, read)) => {
                        self.emit(&buffer[..read]).map_err(ContentsError::Emit)?;
                        let _ = empty_tx.send(buffer);
                    }
                    Ok(Message::End(result)) => {
                        result?;
                        break;
                    }
                    // The reader always ends with `End` unless it panicked;
                    // joining re-raises that panic.
                    Err(mpsc::RecvError) => break,
                }
            }
            drop(empty_tx);
            match handle.join() {
                Ok(empty_rx) => self.pool.extend(empty_rx.try_iter()),
                Err(panic) => std::panic::resume_unwind(panic),
            }
            Ok(())
        })
    }

    /// One NAR string: length, bytes, padding.
    fn string(&mut self, bytes: &[u8]) -> Result<(), NarError> {
        let len = bytes.len() as u64;
        self.emit(&len.to_le_bytes())?;
        self.emit(bytes)?;
        self.padding(len)
    }

    fn strings(&mut self, strings: &[&[u8]]) -> Result<(), NarError> {
        strings.iter().try_for_each(|bytes| self.string(bytes))
    }

    /// Zeros after `len` bytes of string data, up to a multiple of 8.
    fn padding(&mut self, len: u64) -> Result<(), NarError> {
        // `len % 8` is below 8, so the cast cannot truncate.
        let pad = (8 - (len % 8) as usize) % 8;
        self.emit(&[0u8; 8][..pad])
    }

    fn emit(&mut self, bytes: &[u8]) -> Result<(), NarError> {
        self.out
            .write_all(bytes)
            .map_err(|source| NarError::Write {
                path: self.root.to_path_buf(),
                source,
            })?;
        self.written += bytes.len() as u64;
        Ok(())
    }
}

/// Fill `buffer` from `file`, stopping early only at end of file; returns
/// the bytes read. Retries on `EINTR`.
fn read_full(file: &mut File, buffer: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

/// After the expected bytes, one more read must hit end of file; otherwise
/// the file grew and the archive would hold a prefix that never existed on
/// its own.
fn check_at_end(file: &mut File) -> Result<(), ContentsError> {
    let mut probe = [0u8; 1];
    match read_full(file, &mut probe) {
        Ok(0) => Ok(()),
        Ok(_) => Err(ContentsError::Grew),
        Err(error) => Err(ContentsError::Read(error)),
    }
}

/// Failures while streaming one file's contents, turned into a
/// [`NarError`] (which needs the path) by [`ContentsError::into_error`].
/// Separate so that the reader thread need not own the path.
enum ContentsError {
    Read(io::Error),
    Shrank,
    Grew,
    /// Already a [`NarError::Write`].
    Emit(NarError),
}

impl ContentsError {
    fn into_error(self, path: &Path, size: u64) -> NarError {
        let changed = |detail| NarError::Changed {
            path: path.to_path_buf(),
            detail,
        };
        match self {
            ContentsError::Read(source) => NarError::Io {
                path: path.to_path_buf(),
                source,
            },
            ContentsError::Shrank => changed(format!("it shrank below {size} bytes")),
            ContentsError::Grew => changed(format!("it grew beyond {size} bytes")),
            ContentsError::Emit(error) => error,
        }
    }
}

/// The names in directory `path`, sorted by their bytes.
fn sorted_entries(path: &Path) -> Result<Vec<OsString>, NarError> {
    let io_error = |source| NarError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut names = std::fs::read_dir(path)
        .map_err(io_error)?
        .map(|entry| entry.map(|entry| entry.file_name()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(io_error)?;
    // `OsStr`'s own order is not documented to be bytewise; NAR order is.
    names.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

/// Finds which store-path hash parts occur in a byte stream fed in
/// arbitrary pieces, like Nix's `RefScanSink`
/// ([`src/libstore/references.cc`](https://github.com/NixOS/nix/blob/master/src/libstore/references.cc)).
///
/// Only windows of 32 consecutive base-32 characters can match, so the
/// search jumps past any non-base-32 byte (in binary data most windows are
/// rejected after one look). A window that passes is checked against a
/// bitmap of candidates' last three digits before the set lookup, keeping
/// long base-32 runs (hex dumps, other hashes) cheap.
struct RefScanner {
    /// Candidates not yet seen; scanning stops when it is empty.
    wanted: HashSet<[u8; HASH_PART_LEN]>,
    found: BTreeSet<String>,
    /// Bit `d29 << 10 | d30 << 5 | d31` is set iff some candidate ends
    /// with the digits `d29 d30 d31`.
    suffixes: Box<[u64; 512]>,
    /// The last `HASH_PART_LEN - 1` bytes fed, for matches that straddle
    /// two pieces.
    tail: Vec<u8>,
}

impl RefScanner {
    /// Fails with the first candidate that is not a hash part.
    fn new<'c>(candidates: &[&'c str]) -> Result<Self, &'c str> {
        let mut wanted = HashSet::with_capacity(candidates.len());
        let mut suffixes = Box::new([0u64; 512]);
        for &candidate in candidates {
            let window: [u8; HASH_PART_LEN] =
                candidate.as_bytes().try_into().map_err(|_| candidate)?;
            if !window.iter().all(|&byte| is_digit(byte)) {
                return Err(candidate);
            }
            let bit = suffix_bit(&window);
            suffixes[bit / 64] |= 1 << (bit % 64);
            wanted.insert(window);
        }
        Ok(RefScanner {
            wanted,
            found: BTreeSet::new(),
            suffixes,
            tail: Vec::with_capacity(2 * HASH_PART_LEN),
        })
    }

    fn feed(&mut self, data: &[u8]) {
        if self.wanted.is_empty() || data.is_empty() {
            return;
        }
        // Windows that start in the tail and end in `data`. The tail is
        // shorter than a window, so nothing already searched is searched
        // again.
        if !self.tail.is_empty() {
            let mut joined = [0u8; 2 * HASH_PART_LEN];
            let head = data.len().min(HASH_PART_LEN - 1);
            let len = self.tail.len() + head;
            joined[..self.tail.len()].copy_from_slice(&self.tail);
            joined[self.tail.len()..len].copy_from_slice(&data[..head]);
            self.search(&joined[..len]);
        }
        self.search(data);
        // Keep the last `HASH_PART_LEN - 1` bytes of tail + data.
        let keep = HASH_PART_LEN - 1;
        if data.len() >= keep {
            self.tail.clear();
            self.tail.extend_from_slice(&data[data.len() - keep..]);
        } else {
            self.tail.extend_from_slice(data);
            let excess = self.tail.len().saturating_sub(keep);
            self.tail.drain(..excess);
        }
    }

    fn search(&mut self, data: &[u8]) {
        let len = data.len();
        let mut start = 0;
        'windows: while start + HASH_PART_LEN <= len {
            // Look for a window of 32 digits, checking from its end: a
            // non-digit at `i` rules out every window containing it, so
            // the next candidate starts at `i + 1`.
            let mut i = start + HASH_PART_LEN;
            while i > start {
                i -= 1;
                if !is_digit(data[i]) {
                    start = i + 1;
                    continue 'windows;
                }
            }
            // Slide along the run of digits one byte at a time; each step
            // needs only the new last byte checked.
            let mut end = start + HASH_PART_LEN;
            loop {
                let window: &[u8; HASH_PART_LEN] = data[end - HASH_PART_LEN..end]
                    .try_into()
                    .expect("the window is HASH_PART_LEN bytes");
                let bit = suffix_bit(window);
                if self.suffixes[bit / 64] & (1 << (bit % 64)) != 0 && self.wanted.remove(window) {
                    self.found
                        .insert(String::from_utf8_lossy(window).into_owned());
                    if self.wanted.is_empty() {
                        return;
                    }
                }
                if end == len || !is_digit(data[end]) {
                    break;
                }
                end += 1;
            }
            // `data[end]` is not a digit (or is past the end).
            start = end + 1;
        }
    }

    fn finish(self) -> BTreeSet<String> {
        self.found
    }
}

fn is_digit(byte: u8) -> bool {
    nixbase32::DIGIT_VALUES[usize::from(byte)] < 32
}

/// The 15-bit number formed by a window's last three digits (the last,
/// not the first, because those bytes were just checked and are in cache).
fn suffix_bit(window: &[u8; HASH_PART_LEN]) -> usize {
    let digit = |i: usize| usize::from(nixbase32::DIGIT_VALUES[usize::from(window[i])]);
    digit(HASH_PART_LEN - 3) << 10 | digit(HASH_PART_LEN - 2) << 5 | digit(HASH_PART_LEN - 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::os::unix::fs::symlink;

    /// Builds expected NARs by hand, independently of the archiver.
    #[derive(Default)]
    struct Nar(Vec<u8>);

    impl Nar {
        fn new() -> Self {
            Nar::default().s(MAGIC.as_bytes())
        }

        fn s(mut self, bytes: &[u8]) -> Self {
            self.0
                .extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            self.0.extend_from_slice(bytes);
            self.0.resize(self.0.len().next_multiple_of(8), 0);
            self
        }

        fn all(self, strings: &[&str]) -> Self {
            strings.iter().fold(self, |nar, s| nar.s(s.as_bytes()))
        }
    }

    fn dumped(path: &Path) -> Vec<u8> {
        let mut out = Vec::new();
        let size = dump(path, &mut out).unwrap();
        assert_eq!(size, out.len() as u64);
        let hashed = hash(path).unwrap();
        assert_eq!(hashed.size, size);
        let digest: [u8; 32] = Sha256::digest(&out).into();
        assert_eq!(hashed.sha256, digest);
        out
    }

    fn write(path: &Path, contents: &[u8], mode: u32) {
        std::fs::write(path, contents).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn empty_directory() {
        let dir = tempfile::tempdir().unwrap();
        let expected = Nar::new().all(&["(", "type", "directory", ")"]);
        assert_eq!(dumped(dir.path()), expected.0);
        // Pinned from `nix-hash --type sha256 --base32` (Nix 2.8).
        assert_eq!(
            hash(dir.path()).unwrap().to_nix32(),
            "sha256:0sjjj9z1dhilhpc8pq4154czrb79z9cm044jvn75kxcjv6v5l2m5"
        );
    }

    #[test]
    fn regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hello");
        write(&file, b"hello\n", 0o644);
        let expected = Nar::new()
            .all(&["(", "type", "regular", "contents"])
            .s(b"hello\n")
            .s(b")");
        assert_eq!(dumped(&file), expected.0);
        let hashed = hash(&file).unwrap();
        assert_eq!(hashed.size, 120);
        assert_eq!(
            hashed.to_nix32(),
            "sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw"
        );
        assert_eq!(hashed.to_hex().len(), 64);
    }

    #[test]
    fn executable_is_owner_execute_bit_only() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("run");
        let executable = Nar::new()
            .all(&["(", "type", "regular", "executable", "", "contents"])
            .s(b"#!/bin/sh\n")
            .s(b")");
        let plain = Nar::new()
            .all(&["(", "type", "regular", "contents"])
            .s(b"#!/bin/sh\n")
            .s(b")");
        for (mode, expected) in [
            (0o755, &executable),
            (0o700, &executable),
            (0o100, &executable),
            (0o655, &plain),
            (0o011, &plain),
        ] {
            write(&file, b"#!/bin/sh\n", mode);
            assert_eq!(dumped(&file), expected.0, "mode {mode:o}");
        }
    }

    #[test]
    fn empty_file_and_exact_multiple_of_eight() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        for contents in [&b""[..], b"12345678", b"123456789"] {
            write(&file, contents, 0o644);
            let expected = Nar::new()
                .all(&["(", "type", "regular", "contents"])
                .s(contents)
                .s(b")");
            assert_eq!(dumped(&file), expected.0);
        }
    }

    #[test]
    fn symlinks_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("link");
        symlink("../does/not/exist", &link).unwrap();
        let expected =
            Nar::new().all(&["(", "type", "symlink", "target", "../does/not/exist", ")"]);
        assert_eq!(dumped(&link), expected.0);
    }

    #[test]
    fn nested_directories_sorted_by_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for name in ["a", "B", "_x", "\u{e9}"] {
            std::fs::create_dir(root.join(name)).unwrap();
        }
        write(&root.join("a/file"), b"x", 0o644);
        std::fs::create_dir(root.join("a/inner")).unwrap();
        symlink("file", root.join("a/inner/l")).unwrap();
        // Bytes: `B` 0x42 < `_` 0x5f < `a` 0x61 < `é` 0xc3 0xa9 (a locale
        // would put `a` before `B` and `_x` first or last).
        let empty_dir = |nar: Nar, name: &str| {
            nar.all(&[
                "entry",
                "(",
                "name",
                name,
                "node",
                "(",
                "type",
                "directory",
                ")",
                ")",
            ])
        };
        let mut expected = Nar::new().all(&["(", "type", "directory"]);
        expected = empty_dir(expected, "B");
        expected = empty_dir(expected, "_x");
        expected = expected
            .all(&["entry", "(", "name", "a", "node", "(", "type", "directory"])
            .all(&[
                "entry", "(", "name", "file", "node", "(", "type", "regular", "contents",
            ])
            .s(b"x")
            .all(&[")", ")"])
            .all(&[
                "entry",
                "(",
                "name",
                "inner",
                "node",
                "(",
                "type",
                "directory",
            ])
            .all(&["entry", "(", "name", "l", "node"])
            .all(&["(", "type", "symlink", "target", "file", ")"])
            .all(&[")", ")", ")", ")", ")"]);
        expected = empty_dir(expected, "\u{e9}");
        expected = expected.s(b")");
        assert_eq!(dumped(root), expected.0);
    }

    #[test]
    fn unsupported_file_types() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let error = hash(dir.path()).unwrap_err();
        assert!(
            matches!(&error, NarError::Unsupported { path, kind: "fifo" } if *path == fifo),
            "{error}"
        );
        assert!(error.to_string().contains("it is a fifo"), "{error}");
        std::fs::remove_file(&fifo).unwrap();

        let socket = dir.path().join("socket");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let error = hash(&socket).unwrap_err();
        assert!(
            matches!(&error, NarError::Unsupported { path, kind: "socket" } if *path == socket),
            "{error}"
        );
    }

    #[test]
    fn missing_path_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let error = hash(&missing).unwrap_err();
        assert!(matches!(&error, NarError::Io { path, .. } if *path == missing));
        assert!(error.to_string().contains("missing"), "{error}");
    }

    #[test]
    fn write_errors_name_the_root() {
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let error = dump(dir.path(), &mut Full).unwrap_err();
        assert!(matches!(&error, NarError::Write { path, .. } if path == dir.path()));
    }

    /// Two hash parts that differ from each other in their last character.
    const REF_A: &str = "0123456789abcdfghijklmnpqrsvwxyz";
    const REF_B: &str = "0123456789abcdfghijklmnpqrsvwxy0";
    const ABSENT: &str = "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz";

    #[test]
    fn scan_finds_references_in_contents_names_and_targets() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(
            &root.join("bin"),
            format!("/kiln/store/{REF_A}-foo/bin/sh").as_bytes(),
            0o755,
        );
        symlink(format!("../{REF_B}-bar"), root.join("link")).unwrap();
        let (hashed, found) = hash_and_scan(root, &[REF_A, REF_B, ABSENT]).unwrap();
        assert_eq!(hashed, hash(root).unwrap());
        assert_eq!(found, BTreeSet::from([REF_A.to_owned(), REF_B.to_owned()]));

        let named = tempfile::tempdir().unwrap();
        std::fs::create_dir(named.path().join(format!("{ABSENT}-x"))).unwrap();
        let (_, found) = hash_and_scan(named.path(), &[REF_A, ABSENT]).unwrap();
        assert_eq!(found, BTreeSet::from([ABSENT.to_owned()]));

        let (_, found) = hash_and_scan(named.path(), &[]).unwrap();
        assert!(found.is_empty());
    }

    #[test]
    fn scan_across_chunk_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("data");
        // The reference starts 10 bytes before offset 64 of the contents
        // and is surrounded by base-32 digits that do not form it.
        let mut contents = vec![b'a'; 54];
        contents.extend_from_slice(REF_A.as_bytes());
        contents.extend_from_slice(&[b'a'; 100]);
        write(&file, &contents, 0o644);
        let whole = hash(&file).unwrap();
        // Up to 92 the file is more than two chunks and read on a second
        // thread; above, on this one.
        for chunk_size in (1..=120).chain([4096]) {
            let mut sink = HashSink {
                sha256: Sha256::new(),
                scanner: Some(RefScanner::new(&[REF_A, REF_B]).unwrap()),
            };
            let size = archive(&file, &mut sink, chunk_size).unwrap();
            assert_eq!(size, whole.size);
            let digest: [u8; 32] = sink.sha256.finalize().into();
            assert_eq!(digest, whole.sha256, "chunk size {chunk_size}");
            let found = sink.scanner.unwrap().finish();
            assert_eq!(
                found,
                BTreeSet::from([REF_A.to_owned()]),
                "chunk size {chunk_size}"
            );
        }
    }

    #[test]
    fn scan_across_the_real_chunk_size() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("big");
        let mut contents = vec![0u8; CHUNK_SIZE + 100];
        contents[CHUNK_SIZE - 7..CHUNK_SIZE + 25].copy_from_slice(REF_B.as_bytes());
        write(&file, &contents, 0o644);
        let (hashed, found) = hash_and_scan(&file, &[REF_A, REF_B]).unwrap();
        assert_eq!(found, BTreeSet::from([REF_B.to_owned()]));
        // Magic (24 bytes), five one-word strings (16 each), the length (8),
        // then the contents padded to a multiple of 8.
        assert_eq!(hashed.size, (24 + 5 * 16 + 8 + CHUNK_SIZE + 104) as u64);
    }

    #[test]
    fn chunk_size_and_read_thread_do_not_change_the_nar() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for (name, len) in [
            ("a", 0),
            ("b", 5),
            ("c", 17),
            ("d", 64),
            ("e", 1000),
            ("f", 4099),
        ] {
            let contents: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            write(&root.join(name), &contents, 0o644);
        }
        let expected = dumped(root);
        // Small chunks send most files through the reader thread, reusing
        // its buffers from one file to the next.
        for chunk_size in [1, 3, 8, 64, 1000, CHUNK_SIZE] {
            let mut out = Vec::new();
            let size = archive(root, &mut out, chunk_size).unwrap();
            assert_eq!(size, out.len() as u64);
            assert!(out == expected, "chunk size {chunk_size}");
        }
    }

    #[test]
    fn bad_candidates_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        for bad in [
            "short",
            "0123456789abcdfghijklmnpqrsvwxye",
            &format!("{REF_A}0"),
        ] {
            let error = hash_and_scan(dir.path(), &[REF_A, bad]).unwrap_err();
            assert!(
                matches!(&error, NarError::BadCandidate { candidate, .. } if candidate == bad),
                "{error}"
            );
        }
    }

    fn naive_find(stream: &[u8], candidates: &[&str]) -> BTreeSet<String> {
        candidates
            .iter()
            .filter(|c| stream.windows(HASH_PART_LEN).any(|w| w == c.as_bytes()))
            .map(|c| (*c).to_owned())
            .collect()
    }

    proptest! {
        /// However a stream is cut into pieces, the scanner finds what a
        /// naive search of the whole stream finds.
        #[test]
        fn scanner_is_independent_of_pieces(
            filler in proptest::collection::vec(
                prop_oneof![Just(b'a'), Just(b'z'), Just(b'0'), Just(b'-'), any::<u8>()],
                0..300,
            ),
            inserts in proptest::collection::vec((0usize..300, 0usize..3), 0..4),
            cuts in proptest::collection::vec(0usize..400, 0..10),
        ) {
            let candidates = [REF_A, REF_B, ABSENT];
            let mut stream = filler;
            for (at, which) in inserts {
                let at = at.min(stream.len());
                let text = candidates[which].as_bytes();
                stream.splice(at..at, text.iter().copied());
            }
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(stream.len())).collect();
            cuts.push(0);
            cuts.push(stream.len());
            cuts.sort_unstable();
            let mut scanner = RefScanner::new(&candidates).unwrap();
            for piece in cuts.windows(2) {
                scanner.feed(&stream[piece[0]..piece[1]]);
            }
            prop_assert_eq!(scanner.finish(), naive_find(&stream, &candidates));
        }
    }
}
