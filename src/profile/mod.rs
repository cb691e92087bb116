//! Generations: what was deployed to each host, kept so a host can be
//! rolled back and so its history outlives the machine that deployed it.
//!
//! Layout under the state directory (`$XDG_STATE_HOME/kiln`, else
//! `~/.local/state/kiln`):
//!
//! ```text
//! hosts/<host>/generations/<N>.json   one record per generation (atomic writes)
//! hosts/<host>/current                the generation the guest runs ("3\n")
//! hosts/<host>/gen-<N>                symlink to the generation's store path,
//!                                     registered as a gc root of the store
//! hosts/<host>/lock                   held while deploying the host
//! ```
//!
//! Every write goes to a temporary file in the same directory, is synced,
//! then renamed over the old one and the directory synced: an interrupted
//! deploy leaves the old record or the new one, never half of one.
//!
//! A generation is an image deployed to a guest. Deploying a build that
//! differs from the current generation's adds generation N+1; rolling back
//! moves `current` to an older generation without adding one (as Nix's
//! profiles do); every deploy, rollback and failure is kept in the
//! record's `events`.

pub mod diff;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::store::Store;
use crate::store::path::StorePath;

/// The record format's version.
pub const RECORD_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a kiln generation record: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("host `{host}` has no generation {number} (it has {have})")]
    NoSuchGeneration {
        host: String,
        number: u32,
        have: String,
    },
    #[error(
        "another kiln is deploying `{host}` (lock {path} is held); wait for it, or remove the lock if no kiln runs"
    )]
    Busy { host: String, path: PathBuf },
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ProfileError + '_ {
    move |source| ProfileError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What kind of guest a generation runs as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GuestKind {
    Lxc,
    Vm,
}

/// How a generation's first deploy ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "status")]
pub enum Outcome {
    /// The deploy is running (or was interrupted: a record left in this
    /// state by a killed kiln says so).
    InProgress,
    /// Deployed, started and healthy.
    Succeeded,
    /// The deploy failed; `rolled_back_to` says where the guest went back to.
    Failed {
        reason: String,
        rolled_back_to: Option<u32>,
    },
}

/// Something that happened to a generation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// RFC 3339, UTC.
    pub at: String,
    /// `deployed`, `rolled-back-to`, `failed`, `rollback-failed`.
    pub what: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// One generation of one host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Generation {
    pub version: u32,
    pub host: String,
    pub number: u32,
    pub kind: GuestKind,
    /// The image's store path (absolute).
    pub store_path: String,
    /// The derivation hash it was built from.
    pub derivation: String,
    /// The host's overlay store path (the files kiln manages), for `diff`.
    #[serde(default)]
    pub overlay: Option<String>,
    /// The evaluated configuration it was built from (as builders see it:
    /// secret references, never secrets), for `diff`.
    #[serde(default)]
    pub config: serde_json::Value,
    pub node: String,
    pub vmid: u32,
    /// Storage volumes uploaded for it, by role (`template`, `disk`, `seed`).
    pub volumes: BTreeMap<String, String>,
    /// The guest configuration it was deployed with (Proxmox parameters,
    /// without the volumes), so a rollback needs no evaluation.
    pub guest: BTreeMap<String, String>,
    /// The disk grown after import (`scsi0`, `64G`), for VMs.
    #[serde(default)]
    pub resize: Option<Resize>,
    /// The health check the deploy waited for.
    #[serde(default)]
    pub health: crate::eval::spec::Health,
    /// The Proxmox API endpoint it was deployed through.
    pub endpoint: String,
    /// RFC 3339, UTC.
    pub created: String,
    /// The repo's git revision (`+dirty` when the tree had changes), if a
    /// git repo.
    pub revision: Option<String>,
    pub outcome: Outcome,
    #[serde(default)]
    pub events: Vec<Event>,
}

/// A disk to grow after it is imported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resize {
    pub disk: String,
    /// Proxmox size: `64G`.
    pub size: String,
}

impl Generation {
    /// The store path's hash part (the 32 base32 characters).
    pub fn store_hash(&self) -> &str {
        Path::new(&self.store_path)
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.get(..32))
            .unwrap_or("")
    }
}

#[cfg(test)]
impl Generation {
    /// A record for tests: generation `number` of LXC host `host`.
    pub(crate) fn example(host: &str, number: u32) -> Generation {
        Generation {
            version: RECORD_VERSION,
            host: host.to_owned(),
            number,
            kind: GuestKind::Lxc,
            store_path: format!("/s/{number:0>32}-{host}-lxc"),
            derivation: "drv".to_owned(),
            overlay: None,
            config: serde_json::Value::Null,
            node: "pve1".to_owned(),
            vmid: 120,
            volumes: BTreeMap::new(),
            guest: BTreeMap::new(),
            resize: None,
            health: crate::eval::spec::Health::default(),
            endpoint: "https://pve1:8006".to_owned(),
            created: "2026-11-22T10:00:00Z".to_owned(),
            revision: Some("abc".to_owned()),
            outcome: Outcome::Succeeded,
            events: Vec::new(),
        }
    }
}

/// The state directory: `$XDG_STATE_HOME/kiln`, else `~/.local/state/kiln`.
pub fn default_location(xdg_state_home: Option<PathBuf>, home: Option<PathBuf>) -> PathBuf {
    match (xdg_state_home, home) {
        (Some(state), _) => state.join("kiln"),
        (None, Some(home)) => home.join(".local/state/kiln"),
        (None, None) => PathBuf::from(".kiln-state"),
    }
}

/// All hosts' generations.
#[derive(Clone, Debug)]
pub struct Profiles {
    root: PathBuf,
}

impl Profiles {
    pub fn open(root: &Path) -> Profiles {
        Profiles {
            root: root.to_owned(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn host(&self, host: &str) -> HostProfile {
        HostProfile {
            host: host.to_owned(),
            dir: self.root.join("hosts").join(host),
        }
    }

    /// Hosts with at least one generation.
    pub fn hosts(&self) -> Result<Vec<String>, ProfileError> {
        let dir = self.root.join("hosts");
        let mut hosts = Vec::new();
        match fs::read_dir(&dir) {
            Ok(entries) => {
                for entry in entries {
                    let entry = entry.map_err(io(&dir))?;
                    if let Some(name) = entry.file_name().to_str()
                        && entry.path().join("generations").is_dir()
                    {
                        hosts.push(name.to_owned());
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&dir)(e)),
        }
        hosts.sort();
        Ok(hosts)
    }
}

/// One host's generations.
#[derive(Clone, Debug)]
pub struct HostProfile {
    host: String,
    dir: PathBuf,
}

/// The per-host deploy lock; released on drop.
pub struct DeployLock {
    _file: fs::File,
}

impl HostProfile {
    pub fn name(&self) -> &str {
        &self.host
    }

    fn generations_dir(&self) -> PathBuf {
        self.dir.join("generations")
    }

    fn record_path(&self, number: u32) -> PathBuf {
        self.generations_dir().join(format!("{number}.json"))
    }

    /// The gc-root link of generation `number`.
    pub fn link(&self, number: u32) -> PathBuf {
        self.dir.join(format!("gen-{number}"))
    }

    /// Take the host's deploy lock, failing at once if another kiln holds it.
    pub fn lock(&self) -> Result<DeployLock, ProfileError> {
        fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let path = self.dir.join("lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(DeployLock { _file: file }),
            Err(rustix::io::Errno::WOULDBLOCK) => Err(ProfileError::Busy {
                host: self.host.clone(),
                path,
            }),
            Err(e) => Err(io(&path)(e.into())),
        }
    }

    /// Every generation, oldest first.
    pub fn generations(&self) -> Result<Vec<Generation>, ProfileError> {
        let dir = self.generations_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&dir)(e)),
        };
        let mut numbers = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io(&dir))?;
            let name = entry.file_name();
            let Some(number) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue; // temporary files of an interrupted write
            };
            numbers.push(number);
        }
        numbers.sort_unstable();
        numbers.into_iter().map(|n| self.get(n)).collect()
    }

    /// Generation `number`.
    pub fn get(&self, number: u32) -> Result<Generation, ProfileError> {
        let path = self.record_path(number);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let have = self
                    .generations()?
                    .iter()
                    .map(|g| g.number.to_string())
                    .collect::<Vec<_>>();
                return Err(ProfileError::NoSuchGeneration {
                    host: self.host.clone(),
                    number,
                    have: if have.is_empty() {
                        "none".to_owned()
                    } else {
                        have.join(", ")
                    },
                });
            }
            Err(e) => return Err(io(&path)(e)),
        };
        let generation: Generation =
            serde_json::from_slice(&bytes).map_err(|e| ProfileError::Corrupt {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        if generation.number != number || generation.host != self.host {
            return Err(ProfileError::Corrupt {
                path,
                reason: format!(
                    "it records generation {} of `{}`",
                    generation.number, generation.host
                ),
            });
        }
        Ok(generation)
    }

    /// The number the next generation gets.
    pub fn next_number(&self) -> Result<u32, ProfileError> {
        Ok(self
            .generations()?
            .last()
            .map_or(1, |g| g.number.saturating_add(1)))
    }

    /// The generation the guest runs, if any.
    pub fn current(&self) -> Result<Option<u32>, ProfileError> {
        let path = self.dir.join("current");
        match fs::read_to_string(&path) {
            Ok(text) => text
                .trim()
                .parse::<u32>()
                .map(Some)
                .map_err(|_| ProfileError::Corrupt {
                    path,
                    reason: format!("expected a generation number, found {:?}", text.trim()),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Write (or replace) a generation's record atomically.
    pub fn save(&self, generation: &Generation) -> Result<(), ProfileError> {
        let dir = self.generations_dir();
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let mut bytes =
            serde_json::to_vec_pretty(generation).map_err(|e| ProfileError::Corrupt {
                path: self.record_path(generation.number),
                reason: e.to_string(),
            })?;
        bytes.push(b'\n');
        write_atomically(&self.record_path(generation.number), &bytes)
    }

    /// Record that the guest runs generation `number`.
    pub fn set_current(&self, number: u32) -> Result<(), ProfileError> {
        fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        write_atomically(&self.dir.join("current"), format!("{number}\n").as_bytes())
    }

    /// Keep generation `number`'s store path alive: a link in the profile,
    /// registered as a gc root of `store`.
    pub fn add_root(
        &self,
        store: &Store,
        number: u32,
        path: &StorePath,
    ) -> Result<(), ProfileError> {
        fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        store.add_result_link(&self.link(number), path)?;
        Ok(())
    }

    /// Stop keeping generation `number`'s store path alive (its record stays).
    pub fn remove_root(&self, number: u32) -> Result<(), ProfileError> {
        let link = self.link(number);
        match fs::remove_file(&link) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&link)(e)),
        }
    }
}

/// Write `bytes` to `path` via a synced temporary file and a rename, then
/// sync the directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), ProfileError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut temp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(io(dir))?;
    temp.write_all(bytes).map_err(io(temp.path()))?;
    temp.as_file().sync_all().map_err(io(path))?;
    temp.persist(path).map_err(|e| io(path)(e.error))?;
    if let Ok(directory) = fs::File::open(dir) {
        let _ = directory.sync_all();
    }
    Ok(())
}

/// Now, as RFC 3339 UTC (seconds).
pub fn now_rfc3339() -> String {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    rfc3339(seconds)
}

/// Seconds since the epoch as RFC 3339 UTC.
pub fn rfc3339(seconds: u64) -> String {
    crate::builders::lxc::iso8601(seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generation(host: &str, number: u32) -> Generation {
        Generation::example(host, number)
    }

    #[test]
    fn records_round_trip_and_number_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let profile = Profiles::open(dir.path()).host("db");
        assert_eq!(profile.next_number().unwrap(), 1);
        assert_eq!(profile.current().unwrap(), None);
        for n in [1, 2, 10] {
            profile.save(&generation("db", n)).unwrap();
        }
        // A leftover temporary file is not a generation.
        fs::write(dir.path().join("hosts/db/generations/.tmp-x"), "{").unwrap();
        let numbers: Vec<u32> = profile
            .generations()
            .unwrap()
            .iter()
            .map(|g| g.number)
            .collect();
        assert_eq!(numbers, [1, 2, 10]);
        assert_eq!(profile.next_number().unwrap(), 11);
        profile.set_current(2).unwrap();
        assert_eq!(profile.current().unwrap(), Some(2));
        assert_eq!(profile.get(2).unwrap().store_hash(), format!("{:0>32}", 2));
        let missing = profile.get(3).unwrap_err().to_string();
        assert!(
            missing.contains("no generation 3 (it has 1, 2, 10)"),
            "{missing}"
        );
        assert_eq!(Profiles::open(dir.path()).hosts().unwrap(), ["db"]);
    }

    #[test]
    fn a_record_in_the_wrong_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let profile = Profiles::open(dir.path()).host("db");
        profile.save(&generation("db", 1)).unwrap();
        fs::copy(
            dir.path().join("hosts/db/generations/1.json"),
            dir.path().join("hosts/db/generations/2.json"),
        )
        .unwrap();
        let error = profile.get(2).unwrap_err().to_string();
        assert!(error.contains("records generation 1"), "{error}");
    }

    #[test]
    fn the_lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let profile = Profiles::open(dir.path()).host("db");
        let held = profile.lock().unwrap();
        let error = profile.lock().err().unwrap().to_string();
        assert!(error.contains("another kiln is deploying `db`"), "{error}");
        drop(held);
        profile.lock().unwrap();
    }

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_000_000), "2026-11-18T11:06:40Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
