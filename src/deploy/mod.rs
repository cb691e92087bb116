//! `kiln deploy` and `kiln rollback`: upload a built image to Proxmox VE,
//! create the guest or replace its image while keeping its identity and
//! data, start it, wait for health, and record the generation.
//!
//! | module | owns |
//! |---|---|
//! | [`guest`] | the guest's Proxmox parameters, tags and notes |
//! | [`health`] | the host's declared health check |
//! | [`endpoint`] | the API endpoint, token and trust from the host's options |
//!
//! The API sequences follow Proxmox's own code (sources read at
//! pve-container 94f5585 and qemu-server e6352be):
//!
//! - **A VM's next generation** keeps the VM: `POST /qemu/{vmid}/config`
//!   with the boot disk's slot set to `STORAGE:0,import-from=VOLID`
//!   imports the new disk and, because the slot held a volume, qemu-server
//!   moves the old one to an `unusedN` entry (`PVE/API2/Qemu.pm`,
//!   `$create_disks` / `vmconfig_register_unused_drive`); kiln then deletes
//!   that entry, which frees the volume. The VMID, the MAC in `net0`,
//!   the EFI vars disk and the data disks (`scsi1…`) are untouched.
//! - **A container's next generation** cannot swap its root filesystem in
//!   place: `move_volume` refuses `rootfs` ("Cannot move to/from 'rootfs'",
//!   `src/PVE/API2/LXC.pm`), and re-creating over an existing container
//!   (`restore=1,force=1`) destroys every volume it owns, mount points
//!   included (`destroy_lxc_container` in `src/PVE/LXC.pm`). So kiln parks
//!   the data: it creates a stopped parking container
//!   (`kiln-parking-VMID`), reassigns each mount point volume to it with
//!   `POST /lxc/{vmid}/move_volume target-vmid=…` (which renames the
//!   volume to the new owner), destroys the old container, creates it
//!   again with the same VMID, hostname, MAC and addresses from the new
//!   template, moves the volumes back to the same `mpN` keys and destroys
//!   the parking container. An interrupted deploy leaves the parking
//!   container holding the data; the next deploy or rollback finds it and
//!   finishes the move.
//!
//! A deploy that fails after the guest was touched (a failing task, a
//! guest that does not start, a health check that times out) redeploys the
//! previous generation the same way and exits non-zero, saying so.

pub mod endpoint;
pub mod guest;
pub mod health;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::profile::{Event, Generation, GuestKind, HostProfile, Outcome, ProfileError};
use crate::proxmox::client::{ApiError, Client, Upid, Upload, UploadProgress};
use crate::store::Store;
use crate::store::path::StorePath;

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error("{0}")]
    Image(String),
    #[error("{0}")]
    Refused(String),
    #[error("{host}: {what}")]
    Unhealthy { host: String, what: String },
    #[error(
        "{host}: generation {failed} failed: {reason}\n  rolled back to generation {to}, which runs again"
    )]
    RolledBack {
        host: String,
        failed: u32,
        to: u32,
        reason: String,
    },
    #[error(
        "{host}: generation {failed} failed: {reason}\n  and rolling back to generation {to} failed too: {rollback}\n  hint: see `kiln generations {host}`; `kiln rollback {host} --to {to}` retries the rollback"
    )]
    RollbackFailed {
        host: String,
        failed: u32,
        to: u32,
        reason: String,
        rollback: String,
    },
}

/// What a deploy reports as it goes.
#[derive(Clone, Debug)]
pub enum Progress {
    /// A step, in words.
    Step(String),
    /// Bytes of an upload sent so far (in this attempt: a retry starts
    /// again from 0).
    Upload {
        name: String,
        sent: u64,
        total: u64,
        bytes_per_second: u64,
        attempt: u32,
    },
    /// `--dry-run`: a call kiln would make.
    WouldCall {
        method: String,
        path: String,
        params: BTreeMap<String, String>,
    },
}

/// A generation to make run: the image and how the guest runs it.
#[derive(Clone, Debug)]
pub struct Target {
    pub generation: Generation,
    /// The host's own tags (`proxmox.tags`).
    pub tags: Vec<String>,
    /// Storage for uploads (`proxmox.template_storage`).
    pub upload_storage: String,
}

/// How a deploy ended.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    pub host: String,
    /// The generation that runs now.
    pub generation: u32,
    pub store_path: String,
    /// `deployed`, `unchanged`, `rolled-back`, `dry-run`.
    pub action: String,
    /// Volumes uploaded (not those already on the storage).
    pub uploaded: Vec<String>,
    pub uploaded_bytes: u64,
}

/// Talks to one Proxmox endpoint for one host.
pub struct Deployer<'a> {
    pub client: Client,
    pub dry_run: bool,
    pub task_timeout: Duration,
    pub progress: &'a (dyn Fn(Progress) + Send + Sync),
}

/// A guest as `kiln status` reports it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Observed {
    pub running: bool,
    pub node: String,
    /// The generation in its `kiln-gN` tag.
    pub generation: Option<u32>,
}

/// A guest as `/cluster/resources` lists it.
#[derive(Clone, Debug)]
struct Found {
    kind: &'static str,
    node: String,
    running: bool,
    tags: Vec<String>,
}

fn kind_path(kind: GuestKind) -> &'static str {
    match kind {
        GuestKind::Lxc => "lxc",
        GuestKind::Vm => "qemu",
    }
}

/// The name of the parking container for `vmid`'s data volumes.
pub fn parking_name(vmid: u32) -> String {
    format!("kiln-parking-{vmid}")
}

/// `local-lvm:vm-100-disk-1,size=8G` → `local-lvm:vm-100-disk-1`.
fn volume_of(value: &str) -> &str {
    let first = value.split(',').next().unwrap_or_default();
    first
        .strip_prefix("file=")
        .or_else(|| first.strip_prefix("volume="))
        .unwrap_or(first)
}

fn params<const N: usize>(pairs: [(&str, &str); N]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

impl Deployer<'_> {
    fn step(&self, text: impl Into<String>) {
        (self.progress)(Progress::Step(text.into()));
    }

    async fn get(&self, path: &str, query: BTreeMap<String, String>) -> Result<Value, ApiError> {
        self.client.get(path, &query).await
    }

    /// A call that changes something: made and its task awaited, or with
    /// `--dry-run` only reported.
    async fn change(
        &self,
        method: &str,
        path: &str,
        params: BTreeMap<String, String>,
    ) -> Result<(), ApiError> {
        if self.dry_run {
            (self.progress)(Progress::WouldCall {
                method: method.to_owned(),
                path: path.to_owned(),
                params,
            });
            return Ok(());
        }
        let data = match method {
            "POST" => self.client.post(path, &params).await?,
            "PUT" => self.client.put(path, &params).await?,
            "DELETE" => self.client.delete(path, &params).await?,
            other => {
                return Err(ApiError::Config(format!("kiln bug: no method {other}")));
            }
        };
        // Calls that start a worker answer its UPID; synchronous ones null.
        if let Some(upid) = data.as_str().and_then(Upid::parse) {
            self.client.wait_task(&upid, self.task_timeout).await?;
        }
        Ok(())
    }

    async fn find(&self, vmid: u32) -> Result<Option<Found>, ApiError> {
        Ok(self.list_guests().await?.0.remove(&vmid))
    }

    /// Every guest by VMID, and the parking containers by the VMID whose
    /// volumes they hold.
    async fn list_guests(&self) -> Result<(BTreeMap<u32, Found>, BTreeMap<u32, u32>), ApiError> {
        let list = self
            .get("/cluster/resources", params([("type", "vm")]))
            .await?;
        let mut guests = BTreeMap::new();
        let mut parking = BTreeMap::new();
        for item in list.as_array().into_iter().flatten() {
            // `vmid` may come back as a string (see proxmox-api.md §3).
            let vmid = item["vmid"]
                .as_u64()
                .or_else(|| item["vmid"].as_str().and_then(|s| s.parse().ok()));
            let Some(vmid) = vmid.and_then(|v| u32::try_from(v).ok()) else {
                continue;
            };
            let kind = match item["type"].as_str() {
                Some("qemu") => "qemu",
                Some("lxc") => "lxc",
                _ => continue,
            };
            if let Some(name) = item["name"].as_str()
                && let Some(parked) = name.strip_prefix("kiln-parking-")
                && let Ok(parked) = parked.parse::<u32>()
            {
                parking.insert(parked, vmid);
            }
            guests.insert(
                vmid,
                Found {
                    kind,
                    node: item["node"].as_str().unwrap_or_default().to_owned(),
                    running: item["status"].as_str() == Some("running"),
                    tags: item["tags"]
                        .as_str()
                        .unwrap_or_default()
                        .split([';', ',', ' '])
                        .filter(|t| !t.is_empty())
                        .map(str::to_owned)
                        .collect(),
                },
            );
        }
        Ok((guests, parking))
    }

    /// What Proxmox says about guest `vmid`: whether it runs and which
    /// kiln generation its tags name; `None` if there is no such guest.
    pub async fn observe(&self, vmid: u32) -> Result<Option<Observed>, ApiError> {
        Ok(self.find(vmid).await?.map(|found| Observed {
            running: found.running,
            node: found.node,
            generation: found
                .tags
                .iter()
                .find_map(|t| t.strip_prefix("kiln-g").and_then(|n| n.parse().ok())),
        }))
    }

    /// The parking container holding `vmid`'s volumes, if one exists.
    async fn parking(&self, vmid: u32) -> Result<Option<u32>, ApiError> {
        Ok(self.list_guests().await?.1.get(&vmid).copied())
    }

    async fn config(
        &self,
        node: &str,
        kind: &str,
        vmid: u32,
    ) -> Result<BTreeMap<String, String>, ApiError> {
        let data = self
            .get(
                &format!("/nodes/{node}/{kind}/{vmid}/config"),
                BTreeMap::new(),
            )
            .await?;
        Ok(data
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| {
                        let text = match v {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        (k.clone(), text)
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Upload the image's files that are not on the storage yet; returns
    /// the volume ids by role and what was sent.
    async fn upload(
        &self,
        target: &Target,
        image: &Path,
        report: &mut Report,
    ) -> Result<BTreeMap<String, String>, DeployError> {
        let g = &target.generation;
        let storage = &target.upload_storage;
        let mut volumes = BTreeMap::new();
        for artifact in artifacts(g, image)? {
            let volid = format!("{storage}:{}/{}", artifact.dir, artifact.name);
            let present = self
                .client
                .volume_present(&g.node, storage, artifact.content, &volid, artifact.size)
                .await?;
            if present {
                self.step(format!("{volid} is already on {storage} (not sent again)"));
            } else if self.dry_run {
                (self.progress)(Progress::WouldCall {
                    method: "POST".into(),
                    path: format!("/nodes/{}/storage/{storage}/upload", g.node),
                    params: params([
                        ("content", artifact.content),
                        ("filename", &artifact.name),
                        ("checksum-algorithm", "sha256"),
                        ("checksum", &artifact.sha256),
                    ]),
                });
            } else {
                self.step(format!(
                    "uploading {} ({}) to {storage} on {}",
                    artifact.name,
                    human_bytes(artifact.size),
                    g.node
                ));
                let started = Instant::now();
                let upload = Upload {
                    node: &g.node,
                    storage,
                    content: artifact.content,
                    name: &artifact.name,
                    file: &artifact.file,
                    sha256: &artifact.sha256,
                };
                let name = artifact.name.clone();
                let progress = |p: UploadProgress| {
                    (self.progress)(Progress::Upload {
                        name: name.clone(),
                        sent: p.sent,
                        total: p.total,
                        bytes_per_second: p.bytes_per_second,
                        attempt: p.attempt,
                    });
                };
                self.client.upload_verified(&upload, &progress).await?;
                let seconds = started.elapsed().as_secs_f64().max(0.001);
                self.step(format!(
                    "uploaded {volid}: {} in {seconds:.1} s ({}/s), sha256 verified by the node",
                    human_bytes(artifact.size),
                    human_bytes((artifact.size as f64 / seconds) as u64)
                ));
                report.uploaded.push(volid.clone());
                report.uploaded_bytes += artifact.size;
            }
            volumes.insert(artifact.role.to_owned(), volid);
        }
        Ok(volumes)
    }

    /// Make the guest run `target`'s image: create it, or replace the image
    /// of the one there. `touched` turns true once the guest was changed.
    async fn apply(
        &self,
        target: &Target,
        history: &[Generation],
        touched: &mut bool,
    ) -> Result<(), DeployError> {
        let g = &target.generation;
        let kind = kind_path(g.kind);
        let base = format!("/nodes/{}/{kind}/{}", g.node, g.vmid);
        let mut wanted = guest::substitute(&g.guest, &g.volumes);
        wanted.insert("tags".into(), guest::tags(&target.tags, g));
        wanted.insert("description".into(), guest::description(g, history));
        let found = self.find(g.vmid).await?;
        if let Some(found) = &found {
            self.check_ownership(g, found)?;
            if found.running {
                self.step(format!("shutting down {kind} {} on {}", g.vmid, g.node));
                *touched = true;
                self.change(
                    "POST",
                    &format!("{base}/status/shutdown"),
                    params([("forceStop", "1"), ("timeout", "120")]),
                )
                .await?;
            }
        }
        match g.kind {
            GuestKind::Vm => {
                self.apply_vm(g, &base, wanted, found.is_some(), history, touched)
                    .await?
            }
            GuestKind::Lxc => {
                self.apply_lxc(g, &base, wanted, found.is_some(), touched)
                    .await?
            }
        }
        self.step(format!("starting {kind} {} on {}", g.vmid, g.node));
        *touched = true;
        self.change("POST", &format!("{base}/status/start"), BTreeMap::new())
            .await?;
        if self.dry_run {
            return Ok(());
        }
        let deadline = health::deadline(&g.health);
        loop {
            let status = self
                .get(&format!("{base}/status/current"), BTreeMap::new())
                .await?;
            if status["status"].as_str() == Some("running") {
                break;
            }
            if Instant::now() >= deadline {
                return Err(DeployError::Unhealthy {
                    host: g.host.clone(),
                    what: format!(
                        "{kind} {} is {} after start, not running",
                        g.vmid,
                        status["status"].as_str().unwrap_or("in an unknown state")
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        if let Some(check) = health::describe(&g.health) {
            self.step(format!(
                "waiting for {check} (up to {} s)",
                deadline.saturating_duration_since(Instant::now()).as_secs()
            ));
            health::wait(&g.health, deadline)
                .await
                .map_err(|last| DeployError::Unhealthy {
                    host: g.host.clone(),
                    what: format!("health check did not pass in time: {last}"),
                })?;
            self.step(format!("healthy: {check}"));
        }
        Ok(())
    }

    /// Refuse to touch a guest kiln did not create, or one of another kind
    /// or on another node.
    fn check_ownership(&self, g: &Generation, found: &Found) -> Result<(), DeployError> {
        let kind = kind_path(g.kind);
        if found.kind != kind {
            return Err(DeployError::Refused(format!(
                "{}: VMID {} is a {} guest, but the host is {}; choose another vmid",
                g.host, g.vmid, found.kind, kind
            )));
        }
        if found.node != g.node {
            return Err(DeployError::Refused(format!(
                "{}: guest {} runs on node `{}`, not on `{}` as configured; migrate it back or set `node = \"{}\"`",
                g.host, g.vmid, found.node, g.node, found.node
            )));
        }
        if !found.tags.iter().any(|t| t == "kiln") {
            return Err(DeployError::Refused(format!(
                "{}: VMID {} exists but kiln did not create it (it has no `kiln` tag); kiln will not replace a guest it does not manage\n  hint: choose a free vmid, or remove guest {} yourself",
                g.host, g.vmid, g.vmid
            )));
        }
        Ok(())
    }

    async fn apply_vm(
        &self,
        g: &Generation,
        base: &str,
        mut wanted: BTreeMap<String, String>,
        exists: bool,
        history: &[Generation],
        touched: &mut bool,
    ) -> Result<(), DeployError> {
        let boot = g
            .resize
            .as_ref()
            .map_or("scsi0", |r| r.disk.as_str())
            .to_owned();
        if !exists {
            wanted.insert("vmid".into(), g.vmid.to_string());
            self.step(format!("creating VM {} on {}", g.vmid, g.node));
            *touched = true;
            self.change("POST", &format!("/nodes/{}/qemu", g.node), wanted)
                .await?;
        } else {
            let current = if self.dry_run {
                BTreeMap::new()
            } else {
                self.config(&g.node, "qemu", g.vmid).await?
            };
            let old_boot = current.get(&boot).map(|v| volume_of(v).to_owned());
            // Keep what belongs to the VM, not to the image: the EFI vars
            // and the data disks already there. The drives that carry the
            // image (boot disk, seed) are always set.
            let image_drives: Vec<&String> = g
                .guest
                .iter()
                .filter(|(_, v)| v.contains(guest::DISK) || v.contains(guest::SEED))
                .map(|(k, _)| k)
                .collect();
            wanted.remove("efidisk0");
            wanted.retain(|key, _| {
                !(is_drive(key) && current.contains_key(key) && !image_drives.contains(&key))
            });
            // Options an earlier generation set that this one no longer has.
            let managed: Vec<String> = history
                .iter()
                .flat_map(|h| h.guest.keys().cloned())
                .filter(|k| !wanted.contains_key(k) && current.contains_key(k) && !is_drive(k))
                .collect();
            if !managed.is_empty() {
                wanted.insert("delete".into(), managed.join(","));
            }
            self.step(format!(
                "importing the new boot disk into VM {} ({boot}); the VMID, MACs and data disks stay",
                g.vmid
            ));
            *touched = true;
            self.change("POST", &format!("{base}/config"), wanted)
                .await?;
            if let Some(old) = old_boot
                && !self.dry_run
            {
                let after = self.config(&g.node, "qemu", g.vmid).await?;
                let unused: Vec<String> = after
                    .iter()
                    .filter(|(k, v)| k.starts_with("unused") && volume_of(v) == old)
                    .map(|(k, _)| k.clone())
                    .collect();
                if !unused.is_empty() {
                    self.step(format!("freeing the previous boot disk {old}"));
                    self.change(
                        "PUT",
                        &format!("{base}/config"),
                        params([("delete", &unused.join(","))]),
                    )
                    .await?;
                }
            }
        }
        if let Some(resize) = &g.resize {
            self.change(
                "PUT",
                &format!("{base}/resize"),
                params([("disk", &resize.disk), ("size", &resize.size)]),
            )
            .await?;
        }
        Ok(())
    }

    async fn apply_lxc(
        &self,
        g: &Generation,
        base: &str,
        mut wanted: BTreeMap<String, String>,
        exists: bool,
        touched: &mut bool,
    ) -> Result<(), DeployError> {
        let node = &g.node;
        let mut parked = self.parking(g.vmid).await?;
        if exists {
            let current = if self.dry_run {
                BTreeMap::new()
            } else {
                self.config(node, "lxc", g.vmid).await?
            };
            let mounts: Vec<&String> = current.keys().filter(|k| is_mount(k)).collect();
            if !mounts.is_empty() || self.dry_run {
                let parking = match parked {
                    Some(p) => p,
                    None => {
                        let p = self.next_id().await?;
                        self.step(format!(
                            "creating parking container {p} to hold {}'s data volumes",
                            g.vmid
                        ));
                        *touched = true;
                        let mut create = params([
                            ("hostname", &parking_name(g.vmid)),
                            ("tags", "kiln;kiln-parking"),
                            (
                                "description",
                                &format!(
                                    "kiln: holds the data volumes of CT {} while it gets a new image. Do not delete: kiln moves them back.",
                                    g.vmid
                                ),
                            ),
                        ]);
                        create.insert("vmid".into(), p.to_string());
                        for key in ["ostemplate", "rootfs", "unprivileged", "arch"] {
                            if let Some(value) = wanted.get(key) {
                                create.insert(key.into(), value.clone());
                            }
                        }
                        self.change("POST", &format!("/nodes/{node}/lxc"), create)
                            .await?;
                        p
                    }
                };
                for key in &mounts {
                    self.step(format!(
                        "moving {key} of CT {} to the parking container {parking}",
                        g.vmid
                    ));
                    *touched = true;
                    self.change(
                        "POST",
                        &format!("{base}/move_volume"),
                        params([
                            ("volume", key.as_str()),
                            ("target-vmid", &parking.to_string()),
                            ("target-volume", key.as_str()),
                        ]),
                    )
                    .await?;
                }
                parked = Some(parking);
            }
            self.step(format!("destroying CT {}'s old root filesystem", g.vmid));
            *touched = true;
            self.change("DELETE", base, BTreeMap::new()).await?;
        }
        // Volumes in the parking container come back under their keys;
        // only new data volumes are created.
        let held = match parked {
            Some(p) if !self.dry_run => self.config(node, "lxc", p).await?,
            _ => BTreeMap::new(),
        };
        wanted.retain(|key, _| !(is_mount(key) && held.contains_key(key)));
        wanted.insert("vmid".into(), g.vmid.to_string());
        self.step(format!("creating CT {} on {node}", g.vmid));
        *touched = true;
        self.change("POST", &format!("/nodes/{node}/lxc"), wanted)
            .await?;
        if let Some(parking) = parked {
            for key in held.keys().filter(|k| is_mount(k)) {
                self.step(format!("moving {key} back to CT {}", g.vmid));
                self.change(
                    "POST",
                    &format!("/nodes/{node}/lxc/{parking}/move_volume"),
                    params([
                        ("volume", key.as_str()),
                        ("target-vmid", &g.vmid.to_string()),
                        ("target-volume", key.as_str()),
                    ]),
                )
                .await?;
            }
            self.step(format!("removing the parking container {parking}"));
            self.change(
                "DELETE",
                &format!("/nodes/{node}/lxc/{parking}"),
                BTreeMap::new(),
            )
            .await?;
        }
        Ok(())
    }

    async fn next_id(&self) -> Result<u32, ApiError> {
        let data = self.get("/cluster/nextid", BTreeMap::new()).await?;
        data.as_u64()
            .or_else(|| data.as_str().and_then(|s| s.parse().ok()))
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| ApiError::Decode {
                method: "GET".into(),
                path: "/cluster/nextid".into(),
                reason: format!("expected a VMID, got {data}"),
            })
    }

    /// Deploy `target` (a new generation, not yet saved) to its guest.
    pub async fn deploy(
        &self,
        profile: &HostProfile,
        store: &Store,
        mut target: Target,
        store_path: &StorePath,
    ) -> Result<Report, DeployError> {
        let _lock = profile.lock()?;
        let image = PathBuf::from(&target.generation.store_path);
        let history = profile.generations()?;
        let current = match profile.current()? {
            Some(n) => Some(profile.get(n)?),
            None => None,
        };
        let host = target.generation.host.clone();
        let mut report = Report {
            host: host.clone(),
            generation: 0,
            store_path: target.generation.store_path.clone(),
            action: if self.dry_run { "dry-run" } else { "deployed" }.to_owned(),
            uploaded: Vec::new(),
            uploaded_bytes: 0,
        };
        // An unchanged host: nothing to upload, nothing to change, as long
        // as the guest runs this generation.
        if let Some(current) = &current
            && current.store_path == target.generation.store_path
            && current.vmid == target.generation.vmid
            && current.node == target.generation.node
        {
            let found = self.find(current.vmid).await?;
            let tag = guest::generation_tag(current.number);
            if let Some(found) = found
                && found.running
                && found.tags.contains(&tag)
            {
                self.step(format!(
                    "{host}: generation {} ({}) is deployed and running; nothing to do",
                    current.number,
                    current.store_hash()
                ));
                report.generation = current.number;
                report.action = "unchanged".to_owned();
                return Ok(report);
            }
            self.step(format!(
                "{host}: generation {} is current but its guest is not running it; deploying it again",
                current.number
            ));
        }
        // The same image as the current generation (its guest is gone or
        // stopped): deploy that generation again rather than a copy of it.
        let redeploy = current
            .as_ref()
            .filter(|c| c.store_path == target.generation.store_path)
            .cloned();
        let current = if redeploy.is_some() { None } else { current };
        let number = match &redeploy {
            Some(generation) => {
                let mut generation = generation.clone();
                generation.vmid = target.generation.vmid;
                generation.node = target.generation.node.clone();
                target.generation = generation;
                target.generation.number
            }
            None => profile.next_number()?,
        };
        target.generation.number = number;
        report.generation = number;
        let volumes = self.upload(&target, &image, &mut report).await?;
        target.generation.volumes = volumes;
        if !self.dry_run {
            profile.add_root(store, number, store_path)?;
            profile.save(&target.generation)?;
        }
        let mut with_new = history.clone();
        if redeploy.is_none() {
            with_new.push(target.generation.clone());
        }
        let mut touched = false;
        let result = self.apply(&target, &with_new, &mut touched).await;
        if self.dry_run {
            return result.map(|()| report);
        }
        let now = crate::profile::now_rfc3339();
        match result {
            Ok(()) => {
                target.generation.outcome = Outcome::Succeeded;
                target.generation.events.push(Event {
                    at: now,
                    what: if redeploy.is_some() {
                        "redeployed"
                    } else {
                        "deployed"
                    }
                    .into(),
                    detail: None,
                });
                profile.save(&target.generation)?;
                profile.set_current(number)?;
                Ok(report)
            }
            Err(error) => {
                let reason = error_chain(&error);
                let previous = current.filter(|_| touched);
                let Some(mut previous) = previous else {
                    target.generation.outcome = Outcome::Failed {
                        reason: reason.clone(),
                        rolled_back_to: None,
                    };
                    target.generation.events.push(Event {
                        at: now,
                        what: "failed".into(),
                        detail: Some(reason),
                    });
                    profile.save(&target.generation)?;
                    return Err(error);
                };
                self.step(format!(
                    "{host}: generation {number} failed ({reason}); rolling back to generation {}",
                    previous.number
                ));
                let back = Target {
                    generation: previous.clone(),
                    tags: target.tags.clone(),
                    upload_storage: target.upload_storage.clone(),
                };
                let mut ignored = Report {
                    uploaded: Vec::new(),
                    ..report.clone()
                };
                let rolled = async {
                    let volumes = self
                        .upload(&back, Path::new(&previous.store_path), &mut ignored)
                        .await?;
                    let mut back = back.clone();
                    back.generation.volumes = volumes;
                    let mut touched_again = true;
                    self.apply(&back, &with_new, &mut touched_again).await
                }
                .await;
                match rolled {
                    Ok(()) => {
                        target.generation.outcome = Outcome::Failed {
                            reason: reason.clone(),
                            rolled_back_to: Some(previous.number),
                        };
                        target.generation.events.push(Event {
                            at: now.clone(),
                            what: "failed".into(),
                            detail: Some(reason.clone()),
                        });
                        profile.save(&target.generation)?;
                        previous.events.push(Event {
                            at: now,
                            what: "rolled-back-to".into(),
                            detail: Some(format!("after generation {number} failed")),
                        });
                        profile.save(&previous)?;
                        Err(DeployError::RolledBack {
                            host,
                            failed: number,
                            to: previous.number,
                            reason,
                        })
                    }
                    Err(rollback) => {
                        target.generation.outcome = Outcome::Failed {
                            reason: reason.clone(),
                            rolled_back_to: None,
                        };
                        target.generation.events.push(Event {
                            at: now,
                            what: "rollback-failed".into(),
                            detail: Some(error_chain(&rollback)),
                        });
                        profile.save(&target.generation)?;
                        Err(DeployError::RollbackFailed {
                            host,
                            failed: number,
                            to: previous.number,
                            reason,
                            rollback: error_chain(&rollback),
                        })
                    }
                }
            }
        }
    }

    /// Make generation `to` of the host run again, from its image in the
    /// store (uploaded again only if it is no longer on the storage).
    pub async fn rollback(
        &self,
        profile: &HostProfile,
        store: &Store,
        to: u32,
        tags: Vec<String>,
        upload_storage: String,
    ) -> Result<Report, DeployError> {
        let _lock = profile.lock()?;
        let mut generation = profile.get(to)?;
        let path = store
            .parse_path(&generation.store_path)
            .map_err(|e| DeployError::Image(e.to_string()))?;
        if !store.is_valid(&path) {
            return Err(DeployError::Image(format!(
                "generation {to} of `{}` ran {}, which is no longer in the store {} (was its root removed and the store collected?)\n  hint: rebuild that revision ({}) and deploy it",
                generation.host,
                generation.store_path,
                store.root().display(),
                generation.revision.as_deref().unwrap_or("unknown revision")
            )));
        }
        let history = profile.generations()?;
        let mut report = Report {
            host: generation.host.clone(),
            generation: to,
            store_path: generation.store_path.clone(),
            action: if self.dry_run {
                "dry-run"
            } else {
                "rolled-back"
            }
            .to_owned(),
            uploaded: Vec::new(),
            uploaded_bytes: 0,
        };
        let target = Target {
            generation: generation.clone(),
            tags,
            upload_storage,
        };
        let volumes = self
            .upload(&target, Path::new(&generation.store_path), &mut report)
            .await?;
        let mut target = target;
        target.generation.volumes = volumes.clone();
        let mut touched = false;
        self.apply(&target, &history, &mut touched).await?;
        if !self.dry_run {
            generation.volumes = volumes;
            generation.events.push(Event {
                at: crate::profile::now_rfc3339(),
                what: "rolled-back-to".into(),
                detail: None,
            });
            profile.save(&generation)?;
            profile.set_current(to)?;
        }
        Ok(report)
    }
}

fn is_mount(key: &str) -> bool {
    key.strip_prefix("mp")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// QEMU drive keys (`scsi1`, `virtio0`, `sata2`, `ide0`, `efidisk0`, `tpmstate0`, `unused3`).
fn is_drive(key: &str) -> bool {
    [
        "scsi", "virtio", "sata", "ide", "efidisk", "tpmstate", "unused",
    ]
    .iter()
    .any(|prefix| {
        key.strip_prefix(prefix)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// A file of the image to upload.
struct Artifact {
    role: &'static str,
    content: &'static str,
    dir: &'static str,
    name: String,
    file: PathBuf,
    sha256: String,
    size: u64,
}

/// The files of `image` a guest needs, named after the store hash so a
/// volume name never stands for other bytes.
fn artifacts(g: &Generation, image: &Path) -> Result<Vec<Artifact>, DeployError> {
    let manifest_path = image.join("manifest.json");
    let manifest: Value = std::fs::read(&manifest_path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        .map_err(|e| {
            DeployError::Image(format!(
                "{}: {e} (is {} a kiln image?)",
                manifest_path.display(),
                image.display()
            ))
        })?;
    let entry = |key: &str| -> Result<(String, String, u64), DeployError> {
        let e = &manifest[key];
        match (e["name"].as_str(), e["sha256"].as_str(), e["size"].as_u64()) {
            (Some(name), Some(sha), Some(size)) => Ok((name.to_owned(), sha.to_owned(), size)),
            _ => Err(DeployError::Image(format!(
                "{}: no `{key}` file entry (name, sha256, size)",
                manifest_path.display()
            ))),
        }
    };
    let stem = format!("kiln-{}-{}", g.host, g.store_hash());
    // (role, manifest entry, Proxmox content type = volume directory, name suffix)
    let wanted: &[(&'static str, &str, &'static str, Option<&str>)] = match g.kind {
        GuestKind::Lxc => &[("template", "template", "vztmpl", None)],
        GuestKind::Vm => &[
            ("disk", "disk", "import", Some(".qcow2")),
            ("seed", "seed", "iso", Some("-seed.iso")),
        ],
    };
    let mut out = Vec::new();
    for (role, key, content, suffix) in wanted {
        let (name, sha256, size) = entry(key)?;
        // A template keeps its compression suffix (`.tar.zst`).
        let suffix = suffix.unwrap_or_else(|| name.find(".tar").map_or(".tar.zst", |i| &name[i..]));
        out.push(Artifact {
            role,
            content,
            dir: content,
            name: format!("{stem}{suffix}"),
            file: image.join(&name),
            sha256,
            size,
        });
    }
    Ok(out)
}

/// An error and its causes on one line (reqwest's "error sending request"
/// says why only in its sources).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let next = cause.to_string();
        if !text.contains(&next) {
            text.push_str(&format!(": {next}"));
        }
        source = cause.source();
    }
    text
}

/// `1.5 GiB`, `320 MiB`, `12 KiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert!(is_mount("mp0") && is_mount("mp12") && !is_mount("mp") && !is_mount("mpx"));
        assert!(is_drive("scsi1") && is_drive("efidisk0") && is_drive("unused3"));
        assert!(!is_drive("net0") && !is_drive("scsihw"));
        assert_eq!(
            volume_of("local-lvm:vm-100-disk-1,discard=on,size=64G"),
            "local-lvm:vm-100-disk-1"
        );
        assert_eq!(
            volume_of("file=local:100/vm-100-disk-0.qcow2,size=4M"),
            "local:100/vm-100-disk-0.qcow2"
        );
        assert_eq!(human_bytes(1536 << 20), "1.5 GiB");
    }
}
