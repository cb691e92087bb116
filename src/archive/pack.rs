//! [`pack`]: a directory tree → a reproducible `.tar.zst`.
//!
//! Two threads and zstd's workers form a pipeline. A reader thread walks
//! the tree one directory at a time (each directory's names sorted by their
//! bytes, depth first, like `tar --sort=name`), encodes headers and reads
//! file contents straight into fixed-size chunks, and hands full chunks
//! over a bounded channel. The calling thread feeds them to zstd, whose
//! workers compress, and hashes and writes what comes out. Memory is the
//! few chunks in flight plus zstd's job buffers, whatever the size of the
//! tree or of its files; only the names of files with several hard links are
//! remembered.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::thread;

use rustix::fs::{CWD, FileType, Mode, OFlags};
use sha2::{Digest, Sha256};
use zstd::stream::raw::Encoder as RawEncoder;
use zstd::stream::write::Encoder;
use zstd::stream::zio;
use zstd::zstd_safe::CParameter;

use super::format;
use super::walk::Walker;
use super::{ArchiveError, hex};

/// Bytes of tar stream per chunk handed from the reader to the compressor:
/// large enough that a big file is read in few system calls.
const CHUNK_SIZE: usize = 2 << 20;

/// Chunks that may exist at once (filling, queued, being compressed).
const CHUNKS: usize = 4;

/// What zstd's output is gathered into before it is hashed and written.
const OUTPUT_BUFFER: usize = 1 << 20;

/// The most zstd workers zstd accepts (`ZSTDMT_NBWORKERS_MAX` on 64-bit).
const MAX_THREADS: u32 = 200;

/// How to pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackOptions {
    /// `SOURCE_DATE_EPOCH`: the mtime of every entry.
    pub epoch: u64,
    /// The zstd level (3 is zstd's default). Changing it changes the bytes.
    pub level: i32,
    /// zstd workers, at least 1. Any number gives the same bytes; the
    /// default is one per available core.
    pub threads: u32,
}

impl PackOptions {
    /// Level 3, one zstd worker per available core.
    pub fn new(epoch: u64) -> Self {
        let cores = thread::available_parallelism().map_or(1, |n| n.get());
        PackOptions {
            epoch,
            level: 3,
            threads: u32::try_from(cores).unwrap_or(MAX_THREADS).min(MAX_THREADS),
        }
    }

    fn check(&self) -> Result<(), ArchiveError> {
        let levels = zstd::compression_level_range();
        let detail = if !levels.contains(&self.level) {
            format!(
                "zstd level {} is outside {}..={}",
                self.level,
                levels.start(),
                levels.end()
            )
        } else if !(1..=MAX_THREADS).contains(&self.threads) {
            format!(
                "threads must be 1 to {MAX_THREADS}, not {} (zstd always runs multithreaded so that the bytes do not depend on it)",
                self.threads
            )
        } else {
            return Ok(());
        };
        Err(ArchiveError::Options { detail })
    }
}

/// What [`pack`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackReport {
    /// Archive entries (pax extended headers not counted).
    pub entries: u64,
    /// Sockets found in the tree and left out: tar cannot hold them.
    pub sockets_skipped: u64,
    /// Length of the uncompressed tar stream.
    pub tar_bytes: u64,
    /// SHA-256 of the compressed file, lower-case hex.
    pub sha256: String,
    /// Length of the compressed file.
    pub size: u64,
}

/// Pack the directory `root` into the zstd-compressed tarball `out`
/// (created or truncated, and fsynced). Entries are named `./`, `./etc/`,
/// `./etc/passwd`… like `tar -C root -cf - .` names them. On error `out` is
/// removed.
pub fn pack(root: &Path, out: &Path, options: &PackOptions) -> Result<PackReport, ArchiveError> {
    options.check()?;
    let root_dir = open_root(root)?;
    let file = File::create(out).map_err(|source| ArchiveError::Write {
        path: out.to_path_buf(),
        source,
    })?;
    let output = rustix::fs::fstat(&file)
        .map(|stat| (stat.st_dev, stat.st_ino))
        .map_err(|errno| ArchiveError::Write {
            path: out.to_path_buf(),
            source: errno.into(),
        });
    let result = output.and_then(|output| run(root, root_dir, file, output, out, options));
    if result.is_err() {
        // Best effort: the error being returned matters more than this one.
        let _ = std::fs::remove_file(out);
    }
    result
}

fn open_root(root: &Path) -> Result<OwnedFd, ArchiveError> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    rustix::fs::openat(CWD, root, flags, Mode::empty()).map_err(|errno| {
        let reason = match rustix::fs::lstat(root) {
            Ok(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::Symlink => {
                "it is a symlink; pass the directory it points to".to_owned()
            }
            Ok(stat) if FileType::from_raw_mode(stat.st_mode) != FileType::Directory => {
                "it is not a directory".to_owned()
            }
            _ => io::Error::from(errno).to_string(),
        };
        ArchiveError::Root {
            root: root.to_path_buf(),
            reason,
        }
    })
}

/// What travels from the reader thread to the compressor.
enum Piece {
    /// A chunk buffer and how many of its bytes are tar stream.
    Data(Vec<u8>, usize),
    /// The tar stream is complete.
    End,
}

fn run(
    root: &Path,
    root_dir: OwnedFd,
    file: File,
    output: (u64, u64),
    out: &Path,
    options: &PackOptions,
) -> Result<PackReport, ArchiveError> {
    let (full_sender, full_receiver) = mpsc::sync_channel(CHUNKS - 2);
    let (empty_sender, empty_receiver) = mpsc::channel();
    thread::scope(|scope| {
        let reader = thread::Builder::new()
            .name("kiln-pack-read".to_owned())
            .spawn_scoped(scope, move || {
                let mut sink = ChunkSink::new(full_sender, empty_receiver);
                let walked = Walker::new(root, options.epoch, output, &mut sink).run(root_dir)?;
                let tar_bytes = sink.finish().map_err(|source| ArchiveError::Write {
                    path: out.to_path_buf(),
                    source,
                })?;
                Ok((walked, tar_bytes))
            })
            .map_err(|source| ArchiveError::Write {
                path: out.to_path_buf(),
                source,
            })?;
        let compressed = compress(full_receiver, empty_sender, file, out, options);
        let walked = reader
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        match (walked, compressed) {
            // The reader only fails to hand a chunk over once the
            // compressor has stopped, so the compressor's error is the cause.
            (_, Err(error)) | (Err(error), Ok(_)) => Err(error),
            (Ok((walked, tar_bytes)), Ok(Some(compressed))) => Ok(PackReport {
                entries: walked.entries,
                sockets_skipped: walked.sockets,
                tar_bytes,
                sha256: compressed.sha256,
                size: compressed.size,
            }),
            (Ok(_), Ok(None)) => Err(ArchiveError::Write {
                path: out.to_path_buf(),
                source: io::Error::other("the tar stream ended without its end marker"),
            }),
        }
    })
}

struct Compressed {
    sha256: String,
    size: u64,
}

/// Compress the chunks into `file` until [`Piece::End`]; `Ok(None)` if the
/// reader stopped before it (its error says why).
fn compress(
    chunks: Receiver<Piece>,
    empties: Sender<Vec<u8>>,
    file: File,
    out: &Path,
    options: &PackOptions,
) -> Result<Option<Compressed>, ArchiveError> {
    let write_error = |source| ArchiveError::Write {
        path: out.to_path_buf(),
        source,
    };
    let mut encoder = encoder(HashingWriter::new(file), options).map_err(write_error)?;
    loop {
        match chunks.recv() {
            Ok(Piece::Data(chunk, len)) => {
                encoder.write_all(&chunk[..len]).map_err(write_error)?;
                // The reader may have finished and gone; then the chunk is
                // simply dropped.
                let _ = empties.send(chunk);
            }
            Ok(Piece::End) => break,
            Err(mpsc::RecvError) => return Ok(None),
        }
    }
    let writer = encoder.finish().map_err(write_error)?;
    writer.file.sync_all().map_err(write_error)?;
    Ok(Some(Compressed {
        sha256: hex(&writer.hasher.finalize()),
        size: writer.written,
    }))
}

/// A zstd stream encoder with every parameter that shapes the output set
/// explicitly.
fn encoder(
    sink: HashingWriter,
    options: &PackOptions,
) -> io::Result<Encoder<'static, HashingWriter>> {
    let mut raw = RawEncoder::new(options.level)?;
    // Multithreaded mode even for one worker: its frames are the same for
    // any worker count, single-threaded mode's are not.
    raw.set_parameter(CParameter::NbWorkers(options.threads))
        .map_err(|error| {
            io::Error::other(format!(
                "zstd refused {} workers ({error}); it must be built with multithreading",
                options.threads
            ))
        })?;
    raw.set_parameter(CParameter::ChecksumFlag(true))?;
    // The input size is not known up front; say so the same way every time.
    raw.set_parameter(CParameter::ContentSizeFlag(false))?;
    raw.set_parameter(CParameter::DictIdFlag(false))?;
    Ok(Encoder::with_writer(zio::Writer::new_with_capacity(
        sink,
        raw,
        OUTPUT_BUFFER,
    )))
}

/// Writes to the output file, hashing and counting what it writes.
struct HashingWriter {
    file: File,
    hasher: Sha256,
    written: u64,
}

impl HashingWriter {
    fn new(file: File) -> Self {
        HashingWriter {
            file,
            hasher: Sha256::new(),
            written: 0,
        }
    }
}

impl Write for HashingWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let written = self.file.write(bytes)?;
        self.hasher.update(&bytes[..written]);
        self.written += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// The reader thread's end of the pipeline: fills fixed-size chunks with
/// tar stream and hands them to the compressor, reusing the buffers it gets
/// back.
pub(super) struct ChunkSink {
    full: SyncSender<Piece>,
    empty: Receiver<Vec<u8>>,
    /// Always `CHUNK_SIZE` long; the first `filled` bytes are stream.
    current: Vec<u8>,
    filled: usize,
    allocated: usize,
    total: u64,
}

impl ChunkSink {
    fn new(full: SyncSender<Piece>, empty: Receiver<Vec<u8>>) -> Self {
        ChunkSink {
            full,
            empty,
            current: vec![0; CHUNK_SIZE],
            filled: 0,
            allocated: 1,
            total: 0,
        }
    }

    pub(super) fn write(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let take = bytes.len().min(CHUNK_SIZE - self.filled);
            self.current[self.filled..self.filled + take].copy_from_slice(&bytes[..take]);
            self.advance(take)?;
            bytes = &bytes[take..];
        }
        Ok(())
    }

    pub(super) fn write_zeros(&mut self, mut len: u64) -> io::Result<()> {
        while len > 0 {
            let take = usize::try_from(len)
                .unwrap_or(usize::MAX)
                .min(CHUNK_SIZE - self.filled);
            self.current[self.filled..self.filled + take].fill(0);
            self.advance(take)?;
            len -= take as u64;
        }
        Ok(())
    }

    /// One `read` from `file` of at most `limit` bytes straight into the
    /// chunk; 0 at end of file.
    pub(super) fn read_from(&mut self, file: &mut File, limit: u64) -> io::Result<usize> {
        let room = usize::try_from(limit)
            .unwrap_or(usize::MAX)
            .min(CHUNK_SIZE - self.filled);
        let read = loop {
            match file.read(&mut self.current[self.filled..self.filled + room]) {
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                result => break result?,
            }
        };
        self.advance(read)?;
        Ok(read)
    }

    fn advance(&mut self, len: usize) -> io::Result<()> {
        self.filled += len;
        self.total += len as u64;
        if self.filled == CHUNK_SIZE {
            self.hand_over()?;
        }
        Ok(())
    }

    fn hand_over(&mut self) -> io::Result<()> {
        let next = match self.empty.try_recv() {
            Ok(buffer) => buffer,
            Err(_) if self.allocated < CHUNKS => {
                self.allocated += 1;
                vec![0; CHUNK_SIZE]
            }
            Err(_) => self.empty.recv().map_err(|_| compressor_gone())?,
        };
        let full = std::mem::replace(&mut self.current, next);
        let piece = Piece::Data(full, std::mem::take(&mut self.filled));
        self.full.send(piece).map_err(|_| compressor_gone())
    }

    /// End the archive (zero blocks up to a whole record), hand over the
    /// rest, and return the length of the tar stream.
    fn finish(mut self) -> io::Result<u64> {
        self.write_zeros(format::end_of_archive(self.total))?;
        if self.filled > 0 {
            self.hand_over()?;
        }
        self.full.send(Piece::End).map_err(|_| compressor_gone())?;
        Ok(self.total)
    }
}

fn compressor_gone() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the compressor stopped")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_checked() {
        let mut options = PackOptions::new(0);
        assert!(options.threads >= 1);
        assert!(options.check().is_ok());
        options.threads = 0;
        let error = options.check().unwrap_err().to_string();
        assert!(error.contains("threads must be 1"), "{error}");
        options.threads = 1;
        options.level = 99;
        let error = options.check().unwrap_err().to_string();
        assert!(error.contains("zstd level 99"), "{error}");
    }

    #[test]
    fn sink_hands_over_whole_chunks_and_ends_on_a_record() {
        let (full_sender, full_receiver) = mpsc::sync_channel(CHUNKS);
        let (empty_sender, empty_receiver) = mpsc::channel();
        let collector = thread::spawn(move || {
            let mut lengths = Vec::new();
            while let Ok(Piece::Data(chunk, len)) = full_receiver.recv() {
                lengths.push(len);
                let _ = empty_sender.send(chunk);
            }
            lengths
        });
        let mut sink = ChunkSink::new(full_sender, empty_receiver);
        sink.write(&vec![7; CHUNK_SIZE + 100]).unwrap();
        let total = sink.finish().unwrap();
        assert_eq!(total % format::RECORD, 0);
        let lengths = collector.join().unwrap();
        assert_eq!(lengths.iter().sum::<usize>() as u64, total);
        assert_eq!(lengths[0], CHUNK_SIZE);
    }
}
