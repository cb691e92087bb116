//! The simulated cluster's state: volumes, tasks, the request log, faults.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::config::SimConfig;
use super::faults::Faults;
use super::guests::Guest;
use super::tasks::Upid;
use crate::proxmox::Violation;

/// One request as the simulator received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedRequest {
    pub method: String,
    /// The API path, without `/api2/json`, percent-decoded.
    pub path: String,
    /// Query, body and upload fields merged as pveproxy merges them.
    pub params: BTreeMap<String, String>,
    /// The token id (never its secret), once authenticated.
    pub token: Option<String>,
    pub status: u16,
    pub outcome: Outcome,
}

/// How far a request got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Refused before the schema was consulted (transfer encoding, auth,
    /// body limits, a malformed upload, a connection dropped by a fault).
    Refused(String),
    /// No such method: 501.
    NotImplemented,
    /// The token lacks a privilege the method's schema `permissions.check`
    /// requires: 403, before validation (checks made inside a handler
    /// answer 403 too but are logged as `Validated`).
    Forbidden,
    /// The schema refused the parameters: 400.
    Invalid(Vec<Violation>),
    /// The parameters passed validation (the handler may still fail).
    Validated,
    /// An armed fault answered instead of the API.
    Fault(String),
}

impl LoggedRequest {
    /// Whether the request's parameters passed schema validation.
    pub fn validated(&self) -> bool {
        self.outcome == Outcome::Validated
    }
}

/// A volume on a storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub volid: String,
    /// `iso`, `vztmpl`, `import`, ...
    pub content: String,
    /// As pve-storage lists it: `iso`, `tzst`, `qcow2`, ...
    pub format: String,
    pub size: u64,
    pub ctime: u64,
    /// The guest that owns it (from its name, `vm-100-disk-0`), if any.
    pub vmid: Option<u32>,
}

/// A task's state as the simulator keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskState {
    pub upid: String,
    pub node: String,
    pub kind: String,
    pub id: String,
    pub user: String,
    pub log: Vec<String>,
    /// `None` while running; then `"OK"` or the error message.
    pub exit: Option<String>,
    /// When it ended (seconds since the epoch).
    pub endtime: Option<u64>,
}

/// What [`State::snapshot`] keeps.
pub(super) struct Snapshot {
    guests: BTreeMap<u32, Guest>,
    volumes: BTreeMap<String, BTreeMap<String, Volume>>,
}

pub(super) struct State {
    pub(super) log: Vec<LoggedRequest>,
    pub(super) faults: Faults,
    /// storage id → volid → volume
    volumes: BTreeMap<String, BTreeMap<String, Volume>>,
    tasks: BTreeMap<String, TaskState>,
    /// vmid → guest, QEMU and LXC alike (one VMID namespace, as PVE's
    /// cluster-wide `vmlist`).
    pub(super) guests: BTreeMap<u32, Guest>,
    root: PathBuf,
    next_pid: u32,
    pstart: u32,
}

pub(super) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl State {
    pub(super) fn new(config: &SimConfig, root: &Path) -> std::io::Result<State> {
        let mut volumes = BTreeMap::new();
        for storage in &config.storages {
            std::fs::create_dir_all(root.join("storage").join(&storage.id))?;
            volumes.insert(storage.id.clone(), BTreeMap::new());
        }
        Ok(State {
            log: Vec::new(),
            faults: Faults::default(),
            volumes,
            tasks: BTreeMap::new(),
            guests: BTreeMap::new(),
            root: root.to_owned(),
            next_pid: 0x0000_3558,
            pstart: 0x071F_1869,
        })
    }

    /// Where a volume's file lives: `<root>/storage/<storage>/<volname>`,
    /// the volname's `iso/`, `vztmpl/` or `import/` as the directory.
    pub(super) fn file_for(&self, storage: &str, volname: &str) -> PathBuf {
        self.root.join("storage").join(storage).join(volname)
    }

    pub(super) fn volumes(&self, storage: &str) -> BTreeMap<String, Volume> {
        self.volumes.get(storage).cloned().unwrap_or_default()
    }

    pub(super) fn volume_path(&self, volid: &str) -> Option<PathBuf> {
        let (storage, volname) = volid.split_once(':')?;
        self.volumes.get(storage)?.get(volid)?;
        Some(self.file_for(storage, volname))
    }

    pub(super) fn add_volume(&mut self, storage: &str, volume: Volume) {
        self.volumes
            .entry(storage.to_owned())
            .or_default()
            .insert(volume.volid.clone(), volume);
    }

    pub(super) fn remove_volume(&mut self, storage: &str, volid: &str) -> Option<Volume> {
        self.volumes.get_mut(storage)?.remove(volid)
    }

    /// The volume with this volid, on whichever storage.
    pub(super) fn volume(&self, volid: &str) -> Option<&Volume> {
        let (storage, _) = volid.split_once(':')?;
        self.volumes.get(storage)?.get(volid)
    }

    /// A volume grows to `size` bytes (its file too, sparsely).
    pub(super) fn resize_volume(&mut self, volid: &str, size: u64) {
        let path = self.volume_path(volid);
        let Some((storage, _)) = volid.split_once(':') else {
            return;
        };
        if let Some(volume) = self.volumes.get_mut(storage).and_then(|v| v.get_mut(volid)) {
            volume.size = size;
            // Only a raw image's file is its content; an imported qcow2
            // keeps its bytes.
            if volume.format == "raw"
                && let Some(path) = path
                && let Ok(file) = std::fs::OpenOptions::new().write(true).open(path)
            {
                let _ = file.set_len(size);
            }
        }
    }

    /// Every volid on a storage.
    pub(super) fn volids(&self, storage: &str) -> Vec<String> {
        self.volumes
            .get(storage)
            .map(|v| v.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The guests and volumes, to undo a failed task's changes.
    pub(super) fn snapshot(&self) -> Snapshot {
        Snapshot {
            guests: self.guests.clone(),
            volumes: self.volumes.clone(),
        }
    }

    /// Back to `snapshot`; files of volumes created since are removed.
    pub(super) fn restore(&mut self, snapshot: Snapshot) {
        for (storage, volumes) in &self.volumes {
            for volid in volumes.keys() {
                let existed = snapshot
                    .volumes
                    .get(storage)
                    .is_some_and(|v| v.contains_key(volid));
                if !existed && let Some((_, volname)) = volid.split_once(':') {
                    let path = self.file_for(storage, volname);
                    let _ = std::fs::remove_file(&path).or_else(|_| std::fs::remove_dir_all(&path));
                }
            }
        }
        self.guests = snapshot.guests;
        self.volumes = snapshot.volumes;
    }

    pub(super) fn tasks(&self) -> BTreeMap<String, TaskState> {
        self.tasks.clone()
    }

    pub(super) fn task(&self, upid: &str) -> Option<&TaskState> {
        self.tasks.get(upid)
    }

    /// Starts a task; its UPID is in pve-common `src/PVE/UPID.pm` format.
    pub(super) fn start_task(&mut self, node: &str, kind: &str, id: &str, user: &str) -> String {
        self.next_pid = self.next_pid.wrapping_add(1);
        let upid = Upid {
            node: node.to_owned(),
            pid: self.next_pid,
            pstart: self.pstart,
            starttime: now(),
            kind: kind.to_owned(),
            id: id.to_owned(),
            user: user.to_owned(),
        }
        .to_string();
        self.tasks.insert(
            upid.clone(),
            TaskState {
                upid: upid.clone(),
                node: node.to_owned(),
                kind: kind.to_owned(),
                id: id.to_owned(),
                user: user.to_owned(),
                log: Vec::new(),
                exit: None,
                endtime: None,
            },
        );
        upid
    }

    pub(super) fn task_log(&mut self, upid: &str, line: impl Into<String>) {
        if let Some(task) = self.tasks.get_mut(upid) {
            task.log.push(line.into());
        }
    }

    /// Ends a task: the last log line is `TASK OK` or `TASK ERROR: msg`
    /// (pve-common `src/PVE/RESTEnvironment.pm` `fork_worker`).
    pub(super) fn finish_task(&mut self, upid: &str, exit: &str) -> bool {
        let Some(task) = self.tasks.get_mut(upid) else {
            return false;
        };
        if task.exit.is_some() {
            return false;
        }
        task.log.push(if exit == "OK" {
            "TASK OK".to_owned()
        } else {
            format!("TASK ERROR: {exit}")
        });
        task.exit = Some(exit.to_owned());
        task.endtime = Some(now());
        true
    }
}
