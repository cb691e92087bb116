//! Pushing store paths to a cache and pulling them back.
//!
//! Layout in the cache (relative to its URL):
//!
//! | key | what |
//! |---|---|
//! | `HASHPART.narinfo` | the signed [`CacheRecord`] of the store path `HASHPART-NAME` |
//! | `nar/FILEHASH.nar.zst` | the zstd archive of its NAR, named by its own sha256 |
//!
//! **Push** writes the archive first (put-if-absent: content-addressed, so
//! a second pusher changes nothing) and the record last, so a record never
//! names a missing archive. The NAR is hashed as it is archived and must
//! match the store's validity record: a corrupt local path is never pushed.
//!
//! **Pull** reads the record, verifies its signature against the trusted
//! keys, pulls its references first, downloads the archive to a scratch
//! file checking `FileHash` and `FileSize`, then unpacks it into a scratch
//! directory while hashing the NAR, and registers the path only when the
//! NAR hash and size equal the signed ones and the references found equal
//! the signed references. Any failure leaves nothing registered.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, Write};

use sha2::{Digest, Sha256};

use super::backend::{CacheBackend, CacheError, Stored};
use super::key::CacheKey;
use super::record::{CacheRecord, PublicKey, RecordError, SecretKey};
use crate::plan::derivation::hex;
use crate::store::path::StorePath;
use crate::store::{Store, StoreError, nar, unnar};

/// The zstd level of archives: fixed, so an archive is reproducible.
pub const ZSTD_LEVEL: i32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{url}: {source}")]
    Record {
        url: String,
        #[source]
        source: RecordError,
    },
    #[error("{path} is not valid in the store: build it before pushing")]
    NotValid { path: StorePath },
    #[error(
        "{path}: its NAR hashes to {actual}, but the store recorded {expected}: the store path is corrupt (`kiln store verify`); not pushed"
    )]
    Corrupt {
        path: StorePath,
        expected: String,
        actual: String,
    },
    #[error("{url}: {path} is not in the cache")]
    Missing { url: String, path: StorePath },
    #[error("{url}: the record {key} describes {found}, not {wanted}")]
    WrongPath {
        url: String,
        key: String,
        wanted: String,
        found: String,
    },
    #[error(
        "{url}: the archive {key} of {path} {what}: the cache was tampered with or damaged; nothing was registered"
    )]
    Tampered {
        url: String,
        key: String,
        path: String,
        what: String,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> TransferError {
    let context = context.into();
    move |source| TransferError::Io { context, source }
}

/// The key of a store path's record.
pub fn record_key(path: &StorePath) -> CacheKey {
    CacheKey::new(&format!("{}.narinfo", path.hash_part())).expect("a hash part is a valid key")
}

fn archive_key(file_sha256: &str) -> CacheKey {
    CacheKey::new(&format!("nar/{file_sha256}.nar.zst")).expect("a hex digest is a valid key")
}

/// What happened to one path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Uploaded (push) or fetched and registered (pull).
    Transferred,
    /// Already in the cache (push) or valid in the store (pull).
    AlreadyThere,
}

/// A writer that hashes and counts what passes through.
struct Tee<W> {
    inner: W,
    hasher: Sha256,
    size: u64,
}

impl<W: Write> Write for Tee<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Push one valid store path (not its references: see [`push_closure`]).
pub fn push(
    store: &Store,
    cache: &CacheBackend,
    key: &SecretKey,
    path: &StorePath,
) -> Result<Outcome, TransferError> {
    let Some(local) = store.record(path)? else {
        return Err(TransferError::NotValid { path: path.clone() });
    };
    let record_key = record_key(path);
    if cache.exists(&record_key)? {
        return Ok(Outcome::AlreadyThere);
    }
    let scratch = store.scratch()?;
    let file_path = scratch.path().join("archive.nar.zst");
    let file = File::create(&file_path).map_err(io(file_path.display().to_string()))?;
    // file ← tee(file hash) ← zstd ← tee(NAR hash) ← dump
    let file_tee = Tee {
        inner: io::BufWriter::new(file),
        hasher: Sha256::new(),
        size: 0,
    };
    let encoder = zstd::Encoder::new(file_tee, ZSTD_LEVEL).map_err(io("zstd"))?;
    let mut nar_tee = Tee {
        inner: encoder,
        hasher: Sha256::new(),
        size: 0,
    };
    let real = store.real_path(path);
    nar::dump(&real, &mut nar_tee).map_err(|e| TransferError::Io {
        context: format!("archiving {}", real.display()),
        source: io::Error::other(e.to_string()),
    })?;
    let nar_sha256 = hex(&nar_tee.hasher.finalize());
    let nar_size = nar_tee.size;
    let mut file_tee = nar_tee.inner.finish().map_err(io("zstd"))?;
    file_tee.flush().map_err(io("archive"))?;
    let file_sha256 = hex(&file_tee.hasher.finalize());
    let file_size = file_tee.size;
    if nar_sha256 != local.nar_sha256 || nar_size != local.nar_size {
        return Err(TransferError::Corrupt {
            path: path.clone(),
            expected: local.nar_sha256,
            actual: nar_sha256,
        });
    }
    let archive = archive_key(&file_sha256);
    let mut reader = BufReader::new(File::open(&file_path).map_err(io("archive"))?);
    let _: Stored = cache.put_if_absent_from(&archive, &mut reader)?;
    let mut record = CacheRecord {
        path: path.clone(),
        url: archive.as_str().to_owned(),
        compression: "zstd".to_owned(),
        file_sha256,
        file_size,
        nar_sha256,
        nar_size,
        references: local.references.clone(),
        deriver: local.deriver.clone(),
        signatures: Vec::new(),
    };
    record.sign(key);
    cache.put(&record_key, record.to_text())?;
    Ok(Outcome::Transferred)
}

/// Push `roots` and everything they refer to, references first.
pub fn push_closure(
    store: &Store,
    cache: &CacheBackend,
    key: &SecretKey,
    roots: &[StorePath],
    mut progress: impl FnMut(&StorePath, Outcome),
) -> Result<Vec<(StorePath, Outcome)>, TransferError> {
    let order = closure_order(store, roots)?;
    let mut done = Vec::new();
    for path in order {
        let outcome = push(store, cache, key, &path)?;
        progress(&path, outcome);
        done.push((path, outcome));
    }
    Ok(done)
}

/// The closure of `roots` in the store, references before referrers.
fn closure_order(store: &Store, roots: &[StorePath]) -> Result<Vec<StorePath>, TransferError> {
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    for root in roots {
        visit(store, root, &mut seen, &mut order)?;
    }
    Ok(order)
}

fn visit(
    store: &Store,
    path: &StorePath,
    seen: &mut BTreeSet<StorePath>,
    order: &mut Vec<StorePath>,
) -> Result<(), TransferError> {
    if !seen.insert(path.clone()) {
        return Ok(());
    }
    let Some(record) = store.record(path)? else {
        return Err(TransferError::NotValid { path: path.clone() });
    };
    for reference in &record.references {
        if reference != path {
            visit(store, reference, seen, order)?;
        }
    }
    order.push(path.clone());
    Ok(())
}

/// Fetch and verify the record of `path`, or `None` when the cache does not
/// have it.
pub fn fetch_record(
    cache: &CacheBackend,
    trusted: &[PublicKey],
    path: &StorePath,
) -> Result<Option<CacheRecord>, TransferError> {
    let key = record_key(path);
    let Some(bytes) = cache.get(&key)? else {
        return Ok(None);
    };
    let url = cache.url().to_owned();
    let text = String::from_utf8(bytes.to_vec()).map_err(|_| TransferError::Record {
        url: url.clone(),
        source: RecordError::Syntax {
            line: 1,
            reason: format!("{key} is not UTF-8 text"),
        },
    })?;
    let record = CacheRecord::parse(&text).map_err(|source| TransferError::Record {
        url: url.clone(),
        source,
    })?;
    if record.path != *path {
        return Err(TransferError::WrongPath {
            url,
            key: key.to_string(),
            wanted: path.to_string(),
            found: record.path.to_string(),
        });
    }
    record
        .verify(trusted)
        .map_err(|source| TransferError::Record {
            url: url.clone(),
            source,
        })?;
    Ok(Some(record))
}

/// Pull `path` and its references into the store.
pub fn pull(
    store: &Store,
    cache: &CacheBackend,
    trusted: &[PublicKey],
    path: &StorePath,
    progress: &mut dyn FnMut(&StorePath, Outcome),
) -> Result<Outcome, TransferError> {
    if store.is_valid(path) {
        return Ok(Outcome::AlreadyThere);
    }
    let Some(record) = fetch_record(cache, trusted, path)? else {
        return Err(TransferError::Missing {
            url: cache.url().to_owned(),
            path: path.clone(),
        });
    };
    for reference in &record.references {
        if reference != path {
            let outcome = pull(store, cache, trusted, reference, progress)?;
            if outcome == Outcome::Transferred {
                progress(reference, outcome);
            }
        }
    }
    let _lock = store.lock(path)?;
    if store.is_valid(path) {
        return Ok(Outcome::AlreadyThere);
    }
    install(store, cache, &record)?;
    Ok(Outcome::Transferred)
}

/// Download, check and register one path whose references are valid.
fn install(store: &Store, cache: &CacheBackend, record: &CacheRecord) -> Result<(), TransferError> {
    let url = cache.url().to_owned();
    let tampered = |what: String| TransferError::Tampered {
        url: url.clone(),
        key: record.url.clone(),
        path: record.path.to_string(),
        what,
    };
    let archive = CacheKey::new(&record.url)
        .map_err(|e| tampered(format!("has a key that is not one ({e})")))?;
    let scratch = store.scratch()?;
    let file_path = scratch.path().join("archive.nar.zst");
    let file = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&file_path)
        .map_err(io(file_path.display().to_string()))?;
    let mut tee = Tee {
        inner: io::BufWriter::new(file),
        hasher: Sha256::new(),
        size: 0,
    };
    let Some(_) = cache.get_to(&archive, &mut tee)? else {
        return Err(tampered("is missing".to_owned()));
    };
    tee.flush().map_err(io("archive"))?;
    let file_sha256 = hex(&tee.hasher.finalize());
    if tee.size != record.file_size || file_sha256 != record.file_sha256 {
        return Err(tampered(format!(
            "has sha256 {file_sha256} and {} bytes, not the recorded {} and {} bytes",
            tee.size, record.file_sha256, record.file_size
        )));
    }
    let mut file = tee.inner.into_inner().map_err(|e| TransferError::Io {
        context: "archive".to_owned(),
        source: e.into_error(),
    })?;
    file.rewind().map_err(io("archive"))?;
    let decoder = zstd::Decoder::new(file).map_err(io("zstd"))?;
    let unpacked = scratch.path().join("out");
    let nar = unnar::restore(decoder, &unpacked)
        .map_err(|e| tampered(format!("does not unpack ({e})")))?;
    if nar.size != record.nar_size || hex(&nar.sha256) != record.nar_sha256 {
        return Err(tampered(format!(
            "unpacks to a NAR with sha256 {} and {} bytes, not the signed {} and {} bytes",
            hex(&nar.sha256),
            nar.size,
            record.nar_sha256,
            record.nar_size
        )));
    }
    // The candidates are the signed references, so the references the
    // store finds are those the signer's store found (the same scan over
    // the same bytes).
    store.register(
        &record.path,
        &unpacked,
        record.deriver.as_ref(),
        Some(&record.nar_sha256),
        &record.references,
    )?;
    Ok(())
}

/// Read a secret key file (the key never passes through argv).
pub fn read_secret_key(file: &std::path::Path) -> Result<SecretKey, TransferError> {
    let mut text = String::new();
    File::open(file)
        .and_then(|mut f| f.read_to_string(&mut text))
        .map_err(io(format!("cannot read the secret key {}", file.display())))?;
    SecretKey::parse(&text).map_err(|source| TransferError::Record {
        url: file.display().to_string(),
        source,
    })
}
