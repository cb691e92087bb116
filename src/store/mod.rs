//! The content-addressed store: paths, NAR hashing, validity records,
//! atomic registration, locks, roots, verify and gc.
//!
//! ```text
//! <store>/<hash>-<name>            an output (file or directory), read-only
//! <store>/.kiln/version            "kiln-store 1": the layout version
//! <store>/.kiln/meta/<hash>.json   validity record: a path is valid iff this exists
//! <store>/.kiln/drv/<drv>.drv      derivations built here (canonical bytes)
//! <store>/.kiln/last/<name>        the last derivation built under a name (for --explain)
//! <store>/.kiln/tmp/               build scratch, on the store's file system
//! <store>/.kiln/locks/<hash>       per-output build locks
//! <store>/.kiln/gc.lock            builds hold it shared, gc exclusive
//! <store>/.kiln/roots/<id>         gc roots: symlinks to result links (or to store paths)
//! ```
//!
//! Registration ([`Store::register`]): the builder writes into scratch; the
//! output is made read-only, hashed (NAR sha256, the same bytes `nix hash
//! path` hashes) while scanning for references, fsynced, renamed into
//! place, and only then is its record written (temp file, fsync, rename,
//! fsync the directory). A crash at any point leaves either no record — the
//! path is garbage, removed by the next build of it or by gc — or a
//! complete, verifiable path.

pub mod nar;
pub mod nixbase32;
pub mod path;
pub mod unnar;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fs::{make_read_only, remove_tree, sync_directory, sync_tree, write_atomic};
use crate::plan::{Derivation, DrvHash};
use path::StorePath;

/// The on-disk layout version this kiln reads and writes.
pub const STORE_VERSION: u32 = 1;
const VERSION_FILE: &str = "kiln-store 1\n";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "cannot make the result link {}: something that is not a symlink is there; move it, or name another link with -o/--out-link",
        link.display()
    )]
    LinkOccupied { link: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path} is a kiln store of an unsupported version ({found:?}); this kiln reads version {STORE_VERSION}"
    )]
    UnsupportedVersion { path: PathBuf, found: String },
    #[error("{path} exists and is not a kiln store (it has files but no .kiln/version)")]
    NotAStore { path: PathBuf },
    #[error("cannot hash {path}: {reason}")]
    Hash { path: PathBuf, reason: String },
    #[error("hash mismatch for fixed-output {path}: expected sha256 {expected}, got {actual}")]
    HashMismatch {
        path: StorePath,
        expected: String,
        actual: String,
    },
    #[error("the validity record {path} is corrupt: {reason}")]
    BadRecord { path: PathBuf, reason: String },
    #[error("{path} is not a store path")]
    NotAStorePath { path: String },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A validity record: what the store knows about a valid path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub version: u32,
    pub path: StorePath,
    /// Hex sha256 of the path's NAR serialisation.
    pub nar_sha256: String,
    pub nar_size: u64,
    /// Store paths whose hash part occurs in the output.
    pub references: BTreeSet<StorePath>,
    pub deriver: Option<DrvHash>,
    /// Seconds since the epoch (metadata only; never hashed).
    pub registered_at: u64,
    pub kiln_version: String,
}

impl Record {
    /// The NAR hash as Nix prints it (`sha256:<nix base32>`).
    pub fn nar_hash_nix(&self) -> String {
        let bytes: Vec<u8> = (0..self.nar_sha256.len() / 2)
            .filter_map(|i| u8::from_str_radix(&self.nar_sha256[2 * i..2 * i + 2], 16).ok())
            .collect();
        format!("sha256:{}", nixbase32::encode(&bytes))
    }
}

/// Parse a validity record, refusing versions this kiln does not know.
fn read_record(file: &Path, bytes: &[u8]) -> Result<Record, StoreError> {
    let record: Record = serde_json::from_slice(bytes).map_err(|e| StoreError::BadRecord {
        path: file.to_path_buf(),
        reason: e.to_string(),
    })?;
    if record.version != 1 {
        return Err(StoreError::BadRecord {
            path: file.to_path_buf(),
            reason: format!("unsupported record version {}", record.version),
        });
    }
    Ok(record)
}

/// An open store.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

/// A held lock; released on drop.
pub struct Lock {
    _file: File,
}

impl Store {
    /// Open the store at `root`, creating it if it does not exist.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        let meta = root.join(".kiln");
        let version = meta.join("version");
        match fs::read_to_string(&version) {
            Ok(found) if found == VERSION_FILE => {}
            Ok(found) => {
                return Err(StoreError::UnsupportedVersion {
                    path: root.to_path_buf(),
                    found: found.trim().to_owned(),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(root).map_err(io_error(root))?;
                let has_files = fs::read_dir(root)
                    .map_err(io_error(root))?
                    .any(|e| e.is_ok_and(|e| e.file_name() != ".kiln"));
                if has_files {
                    return Err(StoreError::NotAStore {
                        path: root.to_path_buf(),
                    });
                }
                fs::create_dir_all(&meta).map_err(io_error(&meta))?;
                write_atomic(&version, VERSION_FILE.as_bytes()).map_err(io_error(&version))?;
            }
            Err(e) => {
                return Err(StoreError::Io {
                    path: version,
                    source: e,
                });
            }
        }
        for sub in ["meta", "drv", "last", "tmp", "locks", "roots"] {
            let dir = meta.join(sub);
            fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        }
        let root = fs::canonicalize(root).map_err(io_error(root))?;
        Ok(Store { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn meta(&self, sub: &str) -> PathBuf {
        self.root.join(".kiln").join(sub)
    }

    /// The absolute location of a store path.
    pub fn real_path(&self, path: &StorePath) -> PathBuf {
        self.root.join(path.to_string())
    }

    fn record_file(&self, path: &StorePath) -> PathBuf {
        self.meta("meta").join(format!("{}.json", path.hash_part()))
    }

    /// A store path from an absolute path inside the store (or a result
    /// link pointing there).
    pub fn parse_path(&self, text: &str) -> Result<StorePath, StoreError> {
        let resolved = fs::canonicalize(text).unwrap_or_else(|_| PathBuf::from(text));
        let relative = resolved.strip_prefix(&self.root).unwrap_or(&resolved);
        let first = relative
            .components()
            .next()
            .map(|c| c.as_os_str().to_string_lossy().into_owned());
        first
            .and_then(|base| base.parse::<StorePath>().ok())
            .ok_or_else(|| StoreError::NotAStorePath {
                path: text.to_owned(),
            })
    }

    pub fn is_valid(&self, path: &StorePath) -> bool {
        self.record_file(path).is_file()
    }

    pub fn record(&self, path: &StorePath) -> Result<Option<Record>, StoreError> {
        let file = self.record_file(path);
        match fs::read(&file) {
            Ok(bytes) => read_record(&file, &bytes).map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Io {
                path: file,
                source: e,
            }),
        }
    }

    /// Every valid path's record, in path order.
    pub fn records(&self) -> Result<Vec<Record>, StoreError> {
        let dir = self.meta("meta");
        let mut records = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_error(&dir))? {
            let entry = entry.map_err(io_error(&dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            // Skip write_atomic's temp files.
            if !name.ends_with(".json") || name.starts_with('.') {
                continue;
            }
            let bytes = fs::read(entry.path()).map_err(io_error(&entry.path()))?;
            records.push(read_record(&entry.path(), &bytes)?);
        }
        records.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(records)
    }

    /// Take the build lock of an output (blocks while another process holds it).
    pub fn lock(&self, path: &StorePath) -> Result<Lock, StoreError> {
        let file = self.meta("locks").join(path.hash_part());
        let handle = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&file)
            .map_err(io_error(&file))?;
        handle.lock().map_err(io_error(&file))?;
        Ok(Lock { _file: handle })
    }

    /// Builds hold this shared; gc holds it exclusively, so gc never
    /// deletes what a build is producing or about to root.
    pub fn gc_lock(&self, exclusive: bool) -> Result<Lock, StoreError> {
        let file = self.root.join(".kiln").join("gc.lock");
        let handle = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&file)
            .map_err(io_error(&file))?;
        if exclusive {
            handle.lock()
        } else {
            handle.lock_shared()
        }
        .map_err(io_error(&file))?;
        Ok(Lock { _file: handle })
    }

    /// A fresh scratch directory for one build, on the store's file system
    /// (so the finished output can be renamed into place).
    pub fn scratch(&self) -> Result<tempfile::TempDir, StoreError> {
        let dir = self.meta("tmp");
        tempfile::Builder::new()
            .prefix("build-")
            .tempdir_in(&dir)
            .map_err(io_error(&dir))
    }

    /// Register a finished output: see the module docs for the protocol.
    /// `candidates` are the store paths the output may refer to.
    pub fn register(
        &self,
        path: &StorePath,
        built: &Path,
        deriver: Option<&DrvHash>,
        expected_nar_sha256: Option<&str>,
        candidates: &BTreeSet<StorePath>,
    ) -> Result<Record, StoreError> {
        make_read_only(built).map_err(io_error(built))?;
        let hash_parts: Vec<String> = candidates.iter().map(StorePath::hash_part).collect();
        let refs: Vec<&str> = hash_parts.iter().map(String::as_str).collect();
        let (nar, found) = nar::hash_and_scan(built, &refs).map_err(|e| StoreError::Hash {
            path: built.to_path_buf(),
            reason: e.to_string(),
        })?;
        let nar_sha256 = nar.to_hex();
        if let Some(expected) = expected_nar_sha256
            && expected != nar_sha256
        {
            return Err(StoreError::HashMismatch {
                path: path.clone(),
                expected: expected.to_owned(),
                actual: nar_sha256,
            });
        }
        sync_tree(built).map_err(io_error(built))?;
        let destination = self.real_path(path);
        // An unregistered leftover (a crash after rename, before the record).
        remove_tree(&destination).map_err(io_error(&destination))?;
        fs::rename(built, &destination).map_err(io_error(&destination))?;
        sync_directory(&self.root).map_err(io_error(&self.root))?;
        let references = candidates
            .iter()
            .filter(|c| found.contains(&c.hash_part()))
            .cloned()
            .collect();
        let record = Record {
            version: 1,
            path: path.clone(),
            nar_sha256,
            nar_size: nar.size,
            references,
            deriver: deriver.cloned(),
            registered_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            kiln_version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        let file = self.record_file(path);
        let bytes = serde_json::to_vec_pretty(&record).map_err(|e| StoreError::BadRecord {
            path: file.clone(),
            reason: e.to_string(),
        })?;
        write_atomic(&file, &bytes).map_err(io_error(&file))?;
        Ok(record)
    }

    /// Save a derivation's canonical bytes (for show-derivation and --explain).
    pub fn write_derivation(&self, derivation: &Derivation) -> Result<DrvHash, StoreError> {
        let hash = derivation.hash();
        let file = self.meta("drv").join(format!("{hash}.drv"));
        if !file.exists() {
            write_atomic(&file, derivation.canonical().as_bytes()).map_err(io_error(&file))?;
        }
        Ok(hash)
    }

    /// Record that `name` was last built from `drv` (for `--explain`).
    pub fn set_last(&self, name: &str, derivation: &Derivation) -> Result<(), StoreError> {
        let file = self.meta("last").join(name);
        let json = serde_json::to_vec_pretty(derivation).map_err(|e| StoreError::BadRecord {
            path: file.clone(),
            reason: e.to_string(),
        })?;
        write_atomic(&file, &json).map_err(io_error(&file))
    }

    /// The derivation last built under `name`, if any.
    pub fn last(&self, name: &str) -> Option<Derivation> {
        let bytes = fs::read(self.meta("last").join(name)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Make `link` a symlink to `path` and a gc root.
    pub fn add_result_link(&self, link: &Path, path: &StorePath) -> Result<(), StoreError> {
        let target = self.real_path(path);
        // Replace only a symlink (an earlier result): never a file or a
        // directory someone put there.
        if fs::symlink_metadata(link).is_ok_and(|m| !m.file_type().is_symlink()) {
            return Err(StoreError::LinkOccupied {
                link: link.to_path_buf(),
            });
        }
        let temp = link.with_file_name(format!(
            ".{}.tmp",
            link.file_name()
                .map_or("result".into(), |n| n.to_string_lossy())
        ));
        let _ = fs::remove_file(&temp);
        std::os::unix::fs::symlink(&target, &temp).map_err(io_error(&temp))?;
        fs::rename(&temp, link).map_err(io_error(link))?;
        let absolute = std::path::absolute(link).map_err(io_error(link))?;
        let id = DrvHash::of(absolute.as_os_str().as_encoded_bytes());
        let root = self.meta("roots").join(&id.as_str()[..32]);
        let temp_root = root.with_extension("tmp");
        let _ = fs::remove_file(&temp_root);
        std::os::unix::fs::symlink(&absolute, &temp_root).map_err(io_error(&temp_root))?;
        fs::rename(&temp_root, &root).map_err(io_error(&root))
    }

    /// The store paths that roots keep alive, and stale roots removed.
    pub fn roots(&self) -> Result<BTreeMap<StorePath, Vec<PathBuf>>, StoreError> {
        let dir = self.meta("roots");
        let mut roots: BTreeMap<StorePath, Vec<PathBuf>> = BTreeMap::new();
        for entry in fs::read_dir(&dir).map_err(io_error(&dir))? {
            let entry = entry.map_err(io_error(&dir))?;
            let Ok(target) = fs::read_link(entry.path()) else {
                continue;
            };
            // A root names a result link (indirect) or a store path (direct).
            let store_target = if target.starts_with(&self.root) {
                Some(target.clone())
            } else {
                fs::read_link(&target)
                    .ok()
                    .filter(|t| t.starts_with(&self.root))
            };
            match store_target.and_then(|t| self.parse_path(&t.to_string_lossy()).ok()) {
                Some(path) => roots.entry(path).or_default().push(target),
                // The result link is gone or points elsewhere: the root is stale.
                None => {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        Ok(roots)
    }

    /// Everything reachable from `paths` through references.
    pub fn closure(
        &self,
        paths: impl IntoIterator<Item = StorePath>,
    ) -> Result<BTreeSet<StorePath>, StoreError> {
        let mut live = BTreeSet::new();
        let mut queue: Vec<StorePath> = paths.into_iter().collect();
        while let Some(path) = queue.pop() {
            if !live.insert(path.clone()) {
                continue;
            }
            if let Some(record) = self.record(&path)? {
                queue.extend(record.references.into_iter().filter(|r| !live.contains(r)));
            }
        }
        Ok(live)
    }
}

/// The result of `kiln store verify`.
#[derive(Debug, Default, Serialize)]
pub struct VerifyReport {
    pub checked: usize,
    pub bytes: u64,
    /// Valid paths whose contents do not match their record.
    pub corrupt: Vec<Corruption>,
    /// Paths in the store without a record (leftovers; gc removes them).
    pub unregistered: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Corruption {
    pub path: StorePath,
    pub problem: String,
}

impl Store {
    /// Re-hash every valid path and compare with its record.
    pub fn verify(&self, mut progress: impl FnMut(&StorePath)) -> Result<VerifyReport, StoreError> {
        let mut report = VerifyReport::default();
        let records = self.records()?;
        let registered: BTreeSet<String> = records.iter().map(|r| r.path.to_string()).collect();
        for record in &records {
            progress(&record.path);
            report.checked += 1;
            let real = self.real_path(&record.path);
            if fs::symlink_metadata(&real).is_err() {
                report.corrupt.push(Corruption {
                    path: record.path.clone(),
                    problem: "missing from the store".into(),
                });
                continue;
            }
            match nar::hash(&real) {
                Ok(nar) => {
                    report.bytes += nar.size;
                    if nar.to_hex() != record.nar_sha256 || nar.size != record.nar_size {
                        report.corrupt.push(Corruption {
                            path: record.path.clone(),
                            problem: format!(
                                "contents changed: recorded sha256 {} ({} bytes), found {} ({} bytes)",
                                record.nar_sha256,
                                record.nar_size,
                                nar.to_hex(),
                                nar.size
                            ),
                        });
                    }
                }
                Err(error) => report.corrupt.push(Corruption {
                    path: record.path.clone(),
                    problem: error.to_string(),
                }),
            }
        }
        for entry in fs::read_dir(&self.root).map_err(io_error(&self.root))? {
            let name = entry
                .map_err(io_error(&self.root))?
                .file_name()
                .to_string_lossy()
                .into_owned();
            if name != ".kiln" && !registered.contains(&name) {
                report.unregistered.push(name);
            }
        }
        report.unregistered.sort();
        Ok(report)
    }
}

/// The result of `kiln store gc`.
#[derive(Debug, Default, Serialize)]
pub struct GcReport {
    pub roots: usize,
    pub live: usize,
    /// Valid paths deleted (or that would be, with --dry-run).
    pub deleted: Vec<StorePath>,
    /// Unregistered leftovers and stale scratch directories removed.
    pub garbage: Vec<String>,
    pub bytes_freed: u64,
    pub dry_run: bool,
}

fn tree_size(path: &Path) -> u64 {
    let Ok(metadata) = fs::symlink_metadata(path) else {
        return 0;
    };
    if metadata.is_dir() {
        fs::read_dir(path)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| tree_size(&e.path()))
                    .sum()
            })
            .unwrap_or(0)
    } else {
        metadata.len()
    }
}

impl Store {
    /// Delete every path no root reaches. Waits for running builds.
    pub fn gc(&self, dry_run: bool) -> Result<GcReport, StoreError> {
        let _lock = self.gc_lock(true)?;
        let roots = self.roots()?;
        let live = self.closure(roots.keys().cloned())?;
        let mut report = GcReport {
            roots: roots.len(),
            live: live.len(),
            dry_run,
            ..GcReport::default()
        };
        let records = self.records()?;
        let mut kept = BTreeSet::new();
        for record in records {
            if live.contains(&record.path) {
                kept.insert(record.path.to_string());
                continue;
            }
            let real = self.real_path(&record.path);
            report.bytes_freed += tree_size(&real);
            if !dry_run {
                // Invalidate first: a crash mid-delete leaves garbage, never
                // a valid path with missing files.
                let file = self.record_file(&record.path);
                fs::remove_file(&file).map_err(io_error(&file))?;
                sync_directory(file.parent().unwrap_or(&self.root)).map_err(io_error(&file))?;
                remove_tree(&real).map_err(io_error(&real))?;
            }
            report.deleted.push(record.path);
        }
        // Everything else in the store is an unregistered leftover (the
        // paths just deleted are handled, so are skipped in a dry run).
        let deleted: BTreeSet<String> = report.deleted.iter().map(StorePath::to_string).collect();
        for entry in fs::read_dir(&self.root).map_err(io_error(&self.root))? {
            let entry = entry.map_err(io_error(&self.root))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == ".kiln" || kept.contains(&name) || deleted.contains(&name) {
                continue;
            }
            report.bytes_freed += tree_size(&entry.path());
            if !dry_run {
                remove_tree(&entry.path()).map_err(io_error(&entry.path()))?;
            }
            report.garbage.push(name);
        }
        // No build runs while we hold the lock exclusively: all scratch is stale.
        let tmp = self.meta("tmp");
        for entry in fs::read_dir(&tmp).map_err(io_error(&tmp))? {
            let entry = entry.map_err(io_error(&tmp))?;
            report.bytes_freed += tree_size(&entry.path());
            if !dry_run {
                remove_tree(&entry.path()).map_err(io_error(&entry.path()))?;
            }
            report
                .garbage
                .push(format!(".kiln/tmp/{}", entry.file_name().to_string_lossy()));
        }
        report.garbage.sort();
        Ok(report)
    }
}

/// The default store location: `$KILN_STORE`, else
/// `$XDG_DATA_HOME/kiln/store`, else `~/.local/share/kiln/store`.
pub fn default_location(
    kiln_store: Option<PathBuf>,
    xdg_data_home: Option<PathBuf>,
    home: Option<PathBuf>,
) -> PathBuf {
    kiln_store
        .or_else(|| xdg_data_home.map(|d| d.join("kiln/store")))
        .or_else(|| home.map(|h| h.join(".local/share/kiln/store")))
        .unwrap_or_else(|| PathBuf::from(".kiln-store"))
}
