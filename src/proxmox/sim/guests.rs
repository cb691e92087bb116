//! Guests (QEMU VMs and LXC containers) and what both kinds share:
//! loading a config, its digest, tags, property strings, MAC addresses,
//! guest volumes and guest tasks.
//!
//! Sources: pve-guest-common `src/PVE/AbstractConfig.pm` (config files,
//! `add_unused_volume`, `check_lock`), `src/PVE/GuestHelpers.pm`
//! (`get_unique_tags`); pve-cluster `src/PVE/Cluster.pm`
//! (`check_vmid_unused`); pve-common `src/PVE/JSONSchema.pm`
//! (`parse_property_string`, `print_property_string`, `format_size`),
//! `src/PVE/Tools.pm` (`random_ether_addr`, `split_list`); pve-storage
//! `src/PVE/Storage/Plugin.pm` (`get_next_vm_diskname`, `alloc_image`,
//! plugin `format` lists).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

use regex::Regex;
use serde_json::{Value, json};
use sha2::Digest;

use super::config::StorageConfig;
use super::faults::TaskFault;
use super::server::{Call, Reply};
use super::state::{State, Volume, now};

/// Which kind of guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestKind {
    Qemu,
    Lxc,
}

impl GuestKind {
    /// `qemu` or `lxc`, as `/cluster/resources` types them.
    pub fn type_name(self) -> &'static str {
        match self {
            GuestKind::Qemu => "qemu",
            GuestKind::Lxc => "lxc",
        }
    }

    /// `VM` or `CT`, as PVE's messages name them.
    pub(super) fn label(self) -> &'static str {
        match self {
            GuestKind::Qemu => "VM",
            GuestKind::Lxc => "CT",
        }
    }

    /// The pmxcfs directory of its config (`cfs_config_path`).
    fn config_dir(self) -> &'static str {
        match self {
            GuestKind::Qemu => "qemu-server",
            GuestKind::Lxc => "lxc",
        }
    }
}

/// A guest as the simulator keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guest {
    pub kind: GuestKind,
    pub node: String,
    pub vmid: u32,
    /// The config as `GET .../config` returns it, without `digest`; every
    /// value as its text.
    pub config: BTreeMap<String, String>,
    pub running: bool,
}

/// The guest `vmid` of this kind on `node`, or PVE's `load_config` error.
pub(super) fn load(state: &State, kind: GuestKind, node: &str, vmid: u32) -> Result<Guest, Reply> {
    match state.guests.get(&vmid) {
        Some(guest) if guest.kind == kind && guest.node == node => Ok(guest.clone()),
        _ => Err(Reply::error(format!(
            "Configuration file 'nodes/{node}/{}/{vmid}.conf' does not exist",
            kind.config_dir()
        ))),
    }
}

/// pve-cluster `check_vmid_unused`: "VM 100 already exists on node 'x'".
pub(super) fn check_vmid_unused(state: &State, vmid: u32) -> Result<(), String> {
    match state.guests.get(&vmid) {
        Some(guest) => Err(format!(
            "{} {vmid} already exists on node '{}'",
            guest.kind.label(),
            guest.node
        )),
        None => Ok(()),
    }
}

/// The `vmid` parameter, from the path or (create) the body; the schema
/// checked it is 100..=999999999.
pub(super) fn vmid_param(call: &Call<'_>) -> u32 {
    call.path_params
        .get("vmid")
        .or_else(|| call.params.get("vmid"))
        .and_then(|v| v.parse().ok())
        .unwrap_or_default()
}

/// The config digest. PVE's is the SHA-1 of the config file; the
/// simulator's is 40 hex digits of SHA-256 over its lines, as opaque to
/// clients as PVE's.
pub(super) fn digest(config: &BTreeMap<String, String>) -> String {
    let mut hasher = sha2::Sha256::new();
    for (key, value) in config {
        hasher.update(format!("{key}: {value}\n"));
    }
    hex(&hasher.finalize()).chars().take(40).collect()
}

/// `assert_if_modified` / qemu-server's own digest check.
pub(super) fn digest_matches(call: &Call<'_>, config: &BTreeMap<String, String>) -> bool {
    call.params
        .get("digest")
        .is_none_or(|d| d.is_empty() || *d == digest(config))
}

/// The config as JSON, values typed by the create method's schema
/// (integers and booleans are numbers, as PVE's config parser leaves them),
/// with `digest`.
pub(super) fn config_json(call: &Call<'_>, guest: &Guest) -> Value {
    let create = format!("/nodes/{}/{}", guest.node, guest.kind.type_name());
    let schema = call.shared.schema.method("POST", &create);
    let mut object = serde_json::Map::new();
    for (key, value) in &guest.config {
        let kind = schema.as_ref().and_then(|s| s.parameter_type(key));
        object.insert(key.clone(), typed(kind, value));
    }
    object.insert("digest".into(), json!(digest(&guest.config)));
    Value::Object(object)
}

fn typed(kind: Option<&str>, value: &str) -> Value {
    match kind {
        Some("integer" | "boolean") => value
            .parse::<i64>()
            .map_or_else(|_| json!(value), |n| json!(n)),
        Some("number") => value
            .parse::<f64>()
            .map_or_else(|_| json!(value), |n| json!(n)),
        _ => json!(value),
    }
}

/// `get_unique_tags` with the default tag style: split on `;`, `,` and
/// white space, lower-cased, sorted, de-duplicated, `;`-joined.
pub(super) fn normalize_tags(tags: &str) -> String {
    let mut list: Vec<String> = tags
        .split([';', ',', ' ', '\t', '\n', '\r'])
        .filter(|t| !t.is_empty())
        .map(str::to_lowercase)
        .collect();
    list.sort();
    list.dedup();
    list.join(";")
}

/// A property string as `key → value`; a part without `=` is the default
/// key's value.
pub(super) fn parse_property_string(
    text: &str,
    default_key: Option<&str>,
) -> Result<BTreeMap<String, String>, String> {
    let mut map = BTreeMap::new();
    for part in text.split(',').filter(|p| !p.is_empty()) {
        let (key, value) = match part.split_once('=') {
            Some((key, value)) => (key.to_owned(), value.to_owned()),
            None => match default_key {
                Some(key) if !map.contains_key(key) => (key.to_owned(), part.to_owned()),
                _ => {
                    return Err(
                        "value without key, but schema does not define a default key".to_owned(),
                    );
                }
            },
        };
        if map.insert(key.clone(), value).is_some() {
            return Err(format!(
                "duplicate key in comma-separated list property: {key}"
            ));
        }
    }
    Ok(map)
}

/// `print_property_string`: the default key's bare value first, then the
/// required keys, then the rest sorted.
pub(super) fn print_property_string(
    map: &BTreeMap<String, String>,
    default_key: Option<&str>,
    required: &[&str],
) -> String {
    let mut parts = Vec::new();
    if let Some(value) = default_key.and_then(|k| map.get(k)) {
        parts.push(value.clone());
    }
    for key in required {
        if let Some(value) = map.get(*key) {
            parts.push(format!("{key}={value}"));
        }
    }
    for (key, value) in map {
        if Some(key.as_str()) != default_key && !required.contains(&key.as_str()) {
            parts.push(format!("{key}={value}"));
        }
    }
    parts.join(",")
}

/// `format_size`: bytes as `32G`, `512M`, `4K` where exact.
pub(super) fn format_size(bytes: u64) -> String {
    let mut value = bytes;
    for unit in ["", "K", "M", "G", "T"] {
        if !value.is_multiple_of(1024) || value == 0 || unit == "T" {
            return format!("{value}{unit}");
        }
        value /= 1024;
    }
    format!("{value}T")
}

/// 32 bytes that differ on every call (no `rand` dependency; nothing here
/// needs to be unpredictable).
fn entropy(salt: &str) -> [u8; 32] {
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let sequence = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    sha2::Sha256::digest(format!("{salt}/{sequence}/{nanos}/{}", std::process::id())).into()
}

/// `random_ether_addr` with datacenter.cfg's default `mac_prefix`
/// `BC:24:11` (pve-cluster `src/PVE/DataCenterConfig.pm`).
pub(super) fn random_mac() -> String {
    let bytes = entropy("mac");
    format!(
        "BC:24:11:{:02X}:{:02X}:{:02X}",
        bytes[0], bytes[1], bytes[2]
    )
}

/// A random (version 4) UUID, for `smbios1` and `vmgenid`.
pub(super) fn random_uuid() -> String {
    let mut bytes = entropy("uuid");
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let h = hex(&bytes[..16]);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A storage's image formats, default first (the plugins' `format` in
/// pve-storage `src/PVE/Storage/*Plugin.pm` plugindata; `raw` only where a
/// plugin declares none).
pub(super) fn storage_formats(storage: &StorageConfig) -> &'static [&'static str] {
    match storage.kind.as_str() {
        "dir" | "nfs" | "cifs" | "glusterfs" => &["raw", "qcow2", "vmdk", "subvol"],
        "btrfs" | "zfspool" => &["raw", "subvol"],
        _ => &["raw"],
    }
}

/// `resolve_format_hint`: the hint if the storage supports it, else its
/// default.
pub(super) fn resolve_format(storage: &StorageConfig, hint: Option<&str>) -> &'static str {
    let formats = storage_formats(storage);
    hint.and_then(|h| formats.iter().copied().find(|f| *f == h))
        .unwrap_or(formats[0])
}

static OWNED_NAME: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(r"^(?:\d+/)?(?:vm|base|subvol)-(\d+)-(?:disk-(\d+)|cloudinit)").ok()
});

/// The owner VMID encoded in a volume name (`parse_volname`'s `$vmid`).
pub(super) fn owner(volid: &str) -> Option<u32> {
    let (_, volname) = volid.split_once(':')?;
    OWNED_NAME
        .as_ref()?
        .captures(volname)?
        .get(1)?
        .as_str()
        .parse()
        .ok()
}

/// `get_next_vm_diskname`: the first `disk-N` not used on the storage by
/// `vmid`, named `[VMID/](vm|subvol)-VMID-disk-N[.fmt]` (the directory and
/// suffix on file storages, `alloc_image`).
pub(super) fn next_volname(
    state: &State,
    storage: &StorageConfig,
    vmid: u32,
    format: &str,
) -> String {
    let used: Vec<u32> = state
        .volids(&storage.id)
        .iter()
        .filter_map(|volid| {
            let (_, volname) = volid.split_once(':')?;
            let captures = OWNED_NAME.as_ref()?.captures(volname)?;
            (captures.get(1)?.as_str().parse::<u32>().ok()? == vmid)
                .then(|| captures.get(2)?.as_str().parse().ok())?
        })
        .collect();
    let number = (0..).find(|n| !used.contains(n)).unwrap_or(0);
    let prefix = if format == "subvol" { "subvol" } else { "vm" };
    if storage.has_path() {
        format!("{vmid}/{prefix}-{vmid}-disk-{number}.{format}")
    } else {
        format!("{prefix}-{vmid}-disk-{number}")
    }
}

/// A new guest volume: `size` bytes, a sparse file (a directory for
/// `subvol`), or a copy of `source`'s bytes. Returns the volid.
pub(super) fn alloc_volume(
    state: &mut State,
    storage: &StorageConfig,
    vmid: u32,
    format: &str,
    size: u64,
    content: &str,
    source: Option<PathBuf>,
) -> Result<String, String> {
    let volname = next_volname(state, storage, vmid, format);
    let volid = format!("{}:{volname}", storage.id);
    let path = state.file_for(&storage.id, &volname);
    let created = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| match (&source, format) {
            (_, "subvol") => std::fs::create_dir(&path),
            (Some(source), _) => std::fs::copy(source, &path).map(|_| ()),
            (None, _) => std::fs::File::create(&path).and_then(|f| f.set_len(size)),
        });
    created.map_err(|e| format!("error allocating '{volid}': {e}"))?;
    state.add_volume(
        &storage.id,
        Volume {
            volid: volid.clone(),
            content: content.to_owned(),
            format: format.to_owned(),
            size,
            ctime: now(),
            vmid: Some(vmid),
        },
    );
    Ok(volid)
}

/// `vdisk_free`: the volume and its bytes go.
pub(super) fn free_volume(state: &mut State, volid: &str) {
    let path = state.volume_path(volid);
    let Some((storage, _)) = volid.split_once(':') else {
        return;
    };
    if state.remove_volume(storage, volid).is_some()
        && let Some(path) = path
    {
        let _ = std::fs::remove_file(&path).or_else(|_| std::fs::remove_dir_all(&path));
    }
}

/// `destroy-unreferenced-disks`: every volume named for `vmid`, on every
/// storage, goes.
pub(super) fn free_unreferenced(state: &mut State, call: &Call<'_>, vmid: u32) {
    for storage in &call.shared.config.storages {
        for volid in state.volids(&storage.id) {
            if owner(&volid) == Some(vmid) {
                free_volume(state, &volid);
            }
        }
    }
}

/// `add_unused_volume`: the lowest free `unusedN`, unless already listed.
pub(super) fn add_unused(config: &mut BTreeMap<String, String>, volid: &str) {
    if config
        .iter()
        .any(|(k, v)| k.starts_with("unused") && v == volid)
    {
        return;
    }
    if let Some(key) = (0..256)
        .map(|n| format!("unused{n}"))
        .find(|k| !config.contains_key(k))
    {
        config.insert(key, volid.to_owned());
    }
}

/// Runs a guest task (`fork_worker`): a UPID at once, the work done
/// before the answer (tasks end immediately, as the storage tasks do).
/// An armed fault wins: `Fail` ends the task with its message and
/// `Hang` leaves it running, both having changed nothing. If `work`
/// fails, every guest and volume change it made is undone, as PVE's
/// workers clean up after themselves, and the task ends with its message.
pub(super) fn task(
    call: &Call<'_>,
    kind: &str,
    id: &str,
    work: impl FnOnce(&mut State, &str) -> Result<(), String>,
) -> Reply {
    let node = call.path_param("node").to_owned();
    let mut state = call.state();
    let upid = state.start_task(&node, kind, id, &call.user);
    match state.faults.take_task(kind) {
        Some(TaskFault::Hang) => return Reply::Data(json!(upid)),
        Some(TaskFault::Fail(message)) => {
            state.finish_task(&upid, &message);
            return Reply::Data(json!(upid));
        }
        None => {}
    }
    let before = state.snapshot();
    match work(&mut state, &upid) {
        Ok(()) => {
            state.finish_task(&upid, "OK");
        }
        Err(message) => {
            state.restore(before);
            state.finish_task(&upid, &message);
        }
    }
    Reply::Data(json!(upid))
}

/// A parameter or config value as a boolean (`1`/`0`, as JSONSchema.pm
/// normalises them).
pub(super) fn is_true(value: Option<&String>) -> bool {
    value.is_some_and(|v| matches!(v.as_str(), "1" | "on" | "yes" | "true"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_normalized_as_get_unique_tags() {
        assert_eq!(normalize_tags("Web; kiln,web  B"), "b;kiln;web");
        assert_eq!(normalize_tags(""), "");
    }

    #[test]
    fn sizes_print_as_format_size() {
        assert_eq!(format_size(32 * 1024 * 1024 * 1024), "32G");
        assert_eq!(format_size(4 * 1024 * 1024), "4M");
        assert_eq!(format_size(1536), "1536");
        assert_eq!(format_size(3 * 1024), "3K");
    }

    #[test]
    fn property_strings_round_trip_in_pve_order() {
        let map = parse_property_string("local-lvm:8,mp=/data,backup=1", Some("volume"));
        let map = map.unwrap_or_default();
        assert_eq!(
            print_property_string(&map, Some("volume"), &["mp"]),
            "local-lvm:8,mp=/data,backup=1"
        );
        assert_eq!(owner("local:100/vm-100-disk-0.qcow2"), Some(100));
        assert_eq!(owner("local-lvm:subvol-7-disk-2"), Some(7));
        assert_eq!(owner("local:iso/x.iso"), None);
    }
}
