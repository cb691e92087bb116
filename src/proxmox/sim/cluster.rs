//! Cluster endpoints: `GET /cluster/nextid` and `GET /cluster/resources`.
//!
//! pve-manager `PVE/API2/Cluster.pm` (`nextid`, `resources`) and
//! `PVE/API2Tools.pm` (`extract_vm_stats`, `extract_storage_stats`).

use serde_json::{Value, json};

use super::guests::{Guest, GuestKind};
use super::qemu_disks::boot_disk_size;
use super::server::{Call, Reply};
use super::state::State;

pub(super) fn dispatch(call: &Call<'_>, method: &str, template: &str) -> Option<Reply> {
    match (method, template) {
        ("GET", "/cluster/nextid") => Some(nextid(call)),
        ("GET", "/cluster/resources") => Some(resources(call)),
        _ => None,
    }
}

/// The first free VMID from 100 (datacenter.cfg `next-id` defaults), or
/// the asked-for one if free. Both come back as a JSON *string*: the
/// asked-for one is the parameter as given, and the loop variable became
/// a string when Perl used it as a hash key (`$idlist->{$i}`), which is
/// how JSON::XS then encodes it.
fn nextid(call: &Call<'_>) -> Reply {
    let state = call.state();
    if let Some(vmid) = call.params.get("vmid") {
        let taken = vmid
            .parse::<u32>()
            .is_ok_and(|v| state.guests.contains_key(&v));
        if taken {
            return Reply::param_error("vmid", &format!("VM {vmid} already exists"));
        }
        return Reply::Data(json!(vmid));
    }
    match (100..1_000_000).find(|id| !state.guests.contains_key(id)) {
        Some(id) => Reply::Data(json!(id.to_string())),
        None => Reply::error("unable to get any free VMID in range [100, 1000000]"),
    }
}

/// Guests (with VM.Audit on them), storages (with Datastore.Audit or
/// AllocateSpace) and nodes; `type` filters to `vm`, `storage`, `node` or
/// `sdn` (none simulated). Guest stats are there at once (PVE fills them
/// from pvestatd's RRD data, up to 10 s after a change).
fn resources(call: &Call<'_>) -> Reply {
    let wanted = call.params.get("type").map(String::as_str);
    let state = call.state();
    let mut items = Vec::new();
    if wanted.is_none_or(|t| t == "vm") {
        for guest in state.guests.values() {
            if call.has(&format!("/vms/{}", guest.vmid), &["VM.Audit"]) {
                items.push(guest_entry(&state, guest));
            }
        }
    }
    if wanted.is_none_or(|t| t == "node") {
        for node in &call.shared.config.nodes {
            items.push(json!({
                "id": format!("node/{node}"), "type": "node", "node": node,
                "status": "online", "level": "", "cgroup-mode": 2,
            }));
        }
    }
    if wanted.is_none_or(|t| t == "storage") {
        for node in &call.shared.config.nodes {
            for storage in &call.shared.config.storages {
                let path = format!("/storage/{}", storage.id);
                if call
                    .check_any(&path, &["Datastore.Audit", "Datastore.AllocateSpace"])
                    .is_err()
                {
                    continue;
                }
                let used: u64 = state.volumes(&storage.id).values().map(|v| v.size).sum();
                items.push(json!({
                    "id": format!("storage/{node}/{}", storage.id), "type": "storage",
                    "node": node, "storage": storage.id, "status": "available",
                    "plugintype": storage.kind, "content": storage.content.join(","),
                    "shared": 0, "disk": used, "maxdisk": storage.total,
                }));
            }
        }
    }
    Reply::Data(Value::Array(items))
}

/// `extract_vm_stats` plus the `tags` and `lock` config properties.
fn guest_entry(state: &State, guest: &Guest) -> Value {
    let config = &guest.config;
    let (name, maxdisk, maxmem, maxcpu) = match guest.kind {
        GuestKind::Qemu => (
            config
                .get("name")
                .cloned()
                .unwrap_or_else(|| format!("VM {}", guest.vmid)),
            boot_disk_size(state, config),
            leading_number(config.get("memory"), 2048) * 1024 * 1024,
            leading_number(config.get("sockets"), 1) * leading_number(config.get("cores"), 1),
        ),
        GuestKind::Lxc => (
            config
                .get("hostname")
                .cloned()
                .unwrap_or_else(|| format!("CT{}", guest.vmid)),
            super::lxc::rootfs_size(state, config),
            leading_number(config.get("memory"), 512) * 1024 * 1024,
            leading_number(config.get("cores"), 1),
        ),
    };
    let mut entry = json!({
        "id": format!("{}/{}", guest.kind.type_name(), guest.vmid),
        "type": guest.kind.type_name(),
        "vmid": guest.vmid,
        "node": guest.node,
        "name": name,
        "status": if guest.running { "running" } else { "stopped" },
        "template": u8::from(super::guests::is_true(config.get("template"))),
        "maxdisk": maxdisk, "disk": 0, "maxmem": maxmem, "mem": 0,
        "maxcpu": maxcpu, "cpu": 0, "uptime": 0,
        "netin": 0, "netout": 0, "diskread": 0, "diskwrite": 0,
    });
    if let Some(object) = entry.as_object_mut() {
        for key in ["tags", "lock"] {
            if let Some(value) = config.get(key) {
                object.insert(key.into(), json!(value));
            }
        }
    }
    entry
}

/// The first number in a value (`memory: 2048` or `current=2048`).
fn leading_number(value: Option<&String>, default: u64) -> u64 {
    value
        .and_then(|v| v.split([',', '=']).find_map(|p| p.parse::<u64>().ok()))
        .unwrap_or(default)
}
