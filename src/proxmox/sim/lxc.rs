//! LXC containers: create, config, move_volume, start/stop/shutdown,
//! status, destroy.
//!
//! pve-container `src/PVE/API2/LXC.pm` (`create_vm`, `destroy_vm`,
//! `move_volume`), `src/PVE/API2/LXC/Config.pm` (`vm_config`,
//! `update_vm`), `src/PVE/API2/LXC/Status.pm`, `src/PVE/LXC.pm`
//! (`check_ct_modify_config_perm`, `alloc_disk`, `create_disks`,
//! `destroy_lxc_container`, `vmstatus`) and `src/PVE/LXC/Config.pm`
//! (`update_pct_config`, `vmconfig_apply_pending`, `parse_lxc_network`).
//! Changes to a running container apply at once: the pending section
//! (non-hotpluggable changes wait for the next start) is not modelled.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use serde_json::{Value, json};

use super::acl::denied;
use super::guests::{
    self, Guest, GuestKind, add_unused, digest_matches, is_true, parse_property_string,
    print_property_string, vmid_param,
};
use super::lxc_volumes::{
    alloc_mountpoints, check_modify, is_mountpoint, mountpoint_volume, rename_volume,
};
use super::qemu::{message, split_list};
use super::server::{Call, Reply};
use super::state::State;
use super::volumes;

pub(super) fn dispatch(call: &Call<'_>, method: &str, template: &str) -> Option<Reply> {
    let reply = match (method, template) {
        ("POST", "/nodes/{node}/lxc") => create(call),
        ("GET", "/nodes/{node}/lxc/{vmid}/config") => get_config(call),
        ("PUT", "/nodes/{node}/lxc/{vmid}/config") => update(call),
        ("POST", "/nodes/{node}/lxc/{vmid}/move_volume") => move_volume(call),
        ("POST", "/nodes/{node}/lxc/{vmid}/status/start") => power(call, "vzstart"),
        ("POST", "/nodes/{node}/lxc/{vmid}/status/stop") => power(call, "vzstop"),
        ("POST", "/nodes/{node}/lxc/{vmid}/status/shutdown") => power(call, "vzshutdown"),
        ("GET", "/nodes/{node}/lxc/{vmid}/status/current") => status(call),
        ("DELETE", "/nodes/{node}/lxc/{vmid}") => destroy(call),
        _ => return None,
    };
    Some(reply.unwrap_or_else(|reply| reply))
}

/// `parse_lxc_network` then `print_lxc_network`: `type=veth`, a generated
/// `hwaddr` unless given; `name` first, the rest sorted.
fn network(value: &str) -> Result<String, String> {
    let mut net = parse_property_string(value, None)?;
    net.insert("type".into(), "veth".into());
    net.entry("hwaddr".into())
        .or_insert_with(guests::random_mac);
    Ok(print_property_string(&net, None, &["name"]))
}

fn is_net(key: &str) -> bool {
    key.strip_prefix("net")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// `update_pct_config`'s value checks for one option being set.
fn check_value(call: &Call<'_>, key: &str, value: &str) -> Result<String, Reply> {
    if key == "unprivileged" {
        return Err(Reply::error(
            "unable to modify read-only option: 'unprivileged'",
        ));
    }
    if key == "tags" {
        return Ok(guests::normalize_tags(value));
    }
    if is_net(key) {
        return network(value).map_err(|e| Reply::param_error(key, &e));
    }
    if is_mountpoint(key)
        && let Some(volume) = mountpoint_volume(value)
        && !volume.starts_with('/')
        && let Some((storage, _)) = volume.split_once(':')
        && call
            .shared
            .config
            .storage(storage)
            .is_some_and(|s| !s.content.iter().any(|c| c == "rootdir"))
    {
        return Err(Reply::error(format!(
            "storage '{storage}' does not allow content type 'rootdir' (Container)"
        )));
    }
    Ok(value.to_owned())
}

/// The OS type `PVE::LXC::Setup` would detect, guessed from the
/// template's file name (the simulator does not unpack it).
fn detect_ostype(template: &str) -> String {
    let name = template.rsplit('/').next().unwrap_or_default();
    [
        "debian",
        "ubuntu",
        "alpine",
        "centos",
        "fedora",
        "archlinux",
        "opensuse",
        "gentoo",
        "devuan",
        "nixos",
    ]
    .into_iter()
    .find(|os| name.starts_with(os))
    .unwrap_or("unmanaged")
    .to_owned()
}

/// `POST /nodes/{node}/lxc`: a `vzcreate` task; on error PVE frees the
/// volumes and destroys the config, so nothing is left.
fn create(call: &Call<'_>) -> Result<Reply, Reply> {
    let vmid = vmid_param(call);
    let node = call.path_param("node").to_owned();
    let mut params = call.params.clone();
    for name in [
        "node",
        "vmid",
        "ignore-unpack-errors",
        "bwlimit",
        "unique",
        "force",
    ] {
        params.remove(name);
    }
    let start = is_true(params.remove("start").as_ref());
    let ha_managed = is_true(params.remove("ha-managed").as_ref());
    if is_true(params.remove("restore").as_ref()) {
        return Err(Reply::Error(
            StatusCode::NOT_IMPLEMENTED,
            "kiln-pve-sim: restore is not simulated".into(),
        ));
    }
    let unprivileged = params
        .remove("unprivileged")
        .is_none_or(|v| is_true(Some(&v)));
    if !unprivileged {
        call.check("/", &["Sys.Modify"])?;
    }
    if ha_managed {
        call.check("/", &["Sys.Console"])?;
    }
    guests::check_vmid_unused(&call.state(), vmid).map_err(Reply::error)?;
    params.remove("password");
    params.remove("ssh-public-keys");
    if let Some(pool) = params.remove("pool") {
        return Err(Reply::error(format!("pool '{pool}' does not exist")));
    }
    if !call.has(&format!("/vms/{vmid}"), &["VM.Allocate"]) {
        return Err(denied(""));
    }
    let ostemplate = params.remove("ostemplate").unwrap_or_default();
    let storage = params.remove("storage").unwrap_or_else(|| "local".into());
    check_modify(call, vmid, None, &params, &[], unprivileged)?;
    volumes::check_access(call, vmid, &ostemplate, Some("vztmpl"))?;
    let mut mountpoints = BTreeMap::new();
    let mut options = BTreeMap::new();
    for (key, value) in &params {
        if is_mountpoint(key) {
            let all_digits = value
                .split('.')
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
            let value = if all_digits {
                format!("{storage}:{value}")
            } else {
                value.clone()
            };
            mountpoints.insert(key.clone(), value);
        } else if !key.starts_with("unused") {
            options.insert(key.clone(), value.clone());
        }
    }
    if !mountpoints.is_empty() && !mountpoints.contains_key("rootfs") {
        return Err(Reply::error(
            "mount points configured, but 'rootfs' not set - aborting",
        ));
    }
    let mut storages: Vec<String> = Vec::new();
    for value in mountpoints.values() {
        let volume = mountpoint_volume(value).unwrap_or_default();
        if volume.starts_with('/') {
            return Err(Reply::error(
                "Only root can pass arbitrary filesystem paths.",
            ));
        }
        storages.push(volume.split(':').next().unwrap_or_default().to_owned());
    }
    if !mountpoints.contains_key("rootfs") {
        storages.push(storage.clone());
    }
    for id in &storages {
        let supports = call
            .shared
            .config
            .storage(id)
            .is_some_and(|s| s.content.iter().any(|c| c == "rootdir"));
        if !supports {
            return Err(Reply::param_error(
                "storage",
                &format!("storage '{id}' does not support container directories"),
            ));
        }
        call.check(&format!("/storage/{id}"), &["Datastore.AllocateSpace"])?;
    }
    let mut config = BTreeMap::new();
    for (key, value) in &options {
        config.insert(key.clone(), check_value(call, key, value)?);
    }
    if unprivileged {
        config.insert("unprivileged".into(), "1".into());
    }
    let emsg = format!("unable to create CT {vmid} -");
    Ok(guests::task(
        call,
        "vzcreate",
        &vmid.to_string(),
        |state, upid| {
            guests::check_vmid_unused(state, vmid).map_err(|e| format!("{emsg} {e}"))?;
            if mountpoints.is_empty() {
                mountpoints.insert("rootfs".into(), format!("{storage}:4"));
            }
            let created = alloc_mountpoints(call, state, vmid, &mountpoints)
                .map_err(|e| format!("{emsg} {e}"))?;
            config.extend(created);
            if state.volume(&ostemplate).is_none() {
                return Err(format!("{emsg} volume '{ostemplate}' does not exist"));
            }
            state.task_log(upid, format!("extracting archive '{ostemplate}'"));
            config
                .entry("arch".into())
                .or_insert_with(|| "amd64".into());
            let ostype = detect_ostype(&ostemplate);
            config.entry("ostype".into()).or_insert(ostype);
            config
                .entry("hostname".into())
                .or_insert_with(|| format!("CT{vmid}"));
            config
                .entry("memory".into())
                .or_insert_with(|| "512".into());
            config.entry("swap".into()).or_insert_with(|| "512".into());
            let running = start;
            state.guests.insert(
                vmid,
                Guest {
                    kind: GuestKind::Lxc,
                    node: node.clone(),
                    vmid,
                    config: config.clone(),
                    running,
                },
            );
            Ok(())
        },
    ))
}

fn get_config(call: &Call<'_>) -> Result<Reply, Reply> {
    let guest = guests::load(
        &call.state(),
        GuestKind::Lxc,
        call.path_param("node"),
        vmid_param(call),
    )?;
    Ok(Reply::Data(guests::config_json(call, &guest)))
}

/// `PUT .../config` (synchronous): `update_pct_config` applied at once. A
/// replaced or deleted mount point's volume becomes `unusedN`; deleting
/// `unusedN` frees a volume the CT owns.
fn update(call: &Call<'_>) -> Result<Reply, Reply> {
    let vmid = vmid_param(call);
    let mut params = call.params.clone();
    for name in ["node", "vmid", "digest"] {
        params.remove(name);
    }
    if params.is_empty() {
        return Err(Reply::error("no options specified"));
    }
    let delete = split_list(&params.remove("delete").unwrap_or_default());
    let revert = split_list(&params.remove("revert").unwrap_or_default());
    let mut state = call.state();
    let mut guest = guests::load(&state, GuestKind::Lxc, call.path_param("node"), vmid)?;
    if let Some(lock) = guest.config.get("lock") {
        return Err(Reply::error(format!("CT is locked ({lock})")));
    }
    if !digest_matches(call, &guest.config) {
        return Err(Reply::error(
            "detected modified configuration - file changed by other user? Try again.",
        ));
    }
    let unprivileged = is_true(guest.config.get("unprivileged"));
    let config = &guest.config;
    check_modify(
        call,
        vmid,
        Some(config),
        &BTreeMap::new(),
        &delete,
        unprivileged,
    )?;
    check_modify(
        call,
        vmid,
        Some(config),
        &BTreeMap::new(),
        &revert,
        unprivileged,
    )?;
    let create = format!("/nodes/{}/lxc", call.path_param("node"));
    let schema = call.shared.schema.method("POST", &create);
    let exists = |opt: &str| schema.as_ref().is_some_and(|s| s.has_parameter(opt));
    for opt in &revert {
        if !exists(opt) {
            return Err(Reply::param_error(
                "revert",
                &format!("unknown option '{opt}'"),
            ));
        }
    }
    for opt in &delete {
        if !exists(opt) {
            return Err(Reply::param_error(
                "delete",
                &format!("unknown option '{opt}'"),
            ));
        }
        if params.contains_key(opt) {
            return Err(Reply::param_error(
                "delete",
                &format!("you can't use '-{opt}' and -delete {opt}' at the same time"),
            ));
        }
    }
    check_modify(call, vmid, Some(config), &params, &[], unprivileged)?;
    let before = state.snapshot();
    let result = apply_update(call, &mut state, &mut guest, &params, &delete);
    match result {
        Ok(()) => {
            state.guests.insert(vmid, guest);
            Ok(Reply::Data(Value::Null))
        }
        Err(reply) => {
            state.restore(before);
            Err(reply)
        }
    }
}

fn apply_update(
    call: &Call<'_>,
    state: &mut State,
    guest: &mut Guest,
    params: &BTreeMap<String, String>,
    delete: &[String],
) -> Result<(), Reply> {
    let vmid = guest.vmid;
    let protected = is_true(guest.config.get("protection"));
    for opt in delete {
        let Some(value) = guest.config.get(opt).cloned() else {
            continue; // "cannot delete '$opt' - not set in current configuration!"
        };
        match opt.as_str() {
            "memory" | "rootfs" | "ostype" => {
                return Err(Reply::error(format!(
                    "unable to delete required option '{opt}'"
                )));
            }
            "unprivileged" => {
                return Err(Reply::error(
                    "unable to delete read-only option: 'unprivileged'",
                ));
            }
            _ => {}
        }
        let is_unused = opt.starts_with("unused");
        if (is_unused || opt.starts_with("mp")) && protected {
            return Err(Reply::error(format!(
                "can't remove CT {vmid} drive '{opt}' - protection mode enabled"
            )));
        }
        if is_unused {
            // delete_mountpoint_volume: only a volume the CT owns.
            if guests::owner(&value) == Some(vmid) {
                guests::free_volume(state, &value);
            }
        } else if let Some(volume) = mountpoint_volume(&value).filter(|v| !v.starts_with('/')) {
            guest.config.remove(opt);
            if !in_use(&guest.config, &volume) {
                add_unused(&mut guest.config, &volume);
            }
        }
        guest.config.remove(opt);
    }
    for (opt, value) in params {
        if is_mountpoint(opt) && protected {
            return Err(Reply::error(format!(
                "can't update CT {vmid} drive '{opt}' - protection mode enabled"
            )));
        }
        let mut value = check_value(call, opt, value)?;
        if is_mountpoint(opt) {
            let one = BTreeMap::from([(opt.clone(), value.clone())]);
            let created = alloc_mountpoints(call, state, vmid, &one).map_err(Reply::error)?;
            value = created.get(opt).cloned().unwrap_or(value);
            if let Some(old) = guest.config.remove(opt)
                && let Some(volume) = mountpoint_volume(&old).filter(|v| !v.starts_with('/'))
                && !in_use(&guest.config, &volume)
                && mountpoint_volume(&value).as_deref() != Some(volume.as_str())
            {
                add_unused(&mut guest.config, &volume);
            }
        }
        guest.config.insert(opt.clone(), value);
    }
    Ok(())
}

/// `is_volume_in_use`: another mount point or `unusedN` holds it.
fn in_use(config: &BTreeMap<String, String>, volume: &str) -> bool {
    config.iter().any(|(key, value)| {
        (is_mountpoint(key) && mountpoint_volume(value).as_deref() == Some(volume))
            || (key.starts_with("unused") && value == volume)
    })
}

/// `POST .../move_volume` with `target-vmid`: the volume is renamed for
/// the target (`vm-TARGET-disk-N`), leaves the source config and joins
/// the target's as `target-volume` (default: the same key). A `move_volume`
/// task. Moving to another storage is not simulated.
fn move_volume(call: &Call<'_>) -> Result<Reply, Reply> {
    let vmid = vmid_param(call);
    let node = call.path_param("node").to_owned();
    let target = call.params.get("target-vmid").cloned();
    let storage = call.params.get("storage").cloned();
    let (target, storage) = match (target, storage) {
        (Some(_), Some(_)) => {
            let message = "either set 'storage' or 'target-vmid', but not both";
            return Err(Reply::Invalid(BTreeMap::from([
                ("target-vmid".to_owned(), message.to_owned()),
                ("storage".to_owned(), message.to_owned()),
            ])));
        }
        (None, None) => {
            let message = "both 'storage' and 'target-vmid' missing, either needs to be set";
            return Err(Reply::Invalid(BTreeMap::from([
                ("target-vmid".to_owned(), message.to_owned()),
                ("storage".to_owned(), message.to_owned()),
            ])));
        }
        (target, storage) => (target, storage),
    };
    if storage.is_some() {
        return Err(Reply::Error(
            StatusCode::NOT_IMPLEMENTED,
            "kiln-pve-sim: moving a volume to another storage is not simulated".into(),
        ));
    }
    let target: u32 = target.and_then(|t| t.parse().ok()).unwrap_or_default();
    call.check_vm(target, &["VM.Config.Disk"])?;
    let key = call.params.get("volume").cloned().unwrap_or_default();
    let target_key = call
        .params
        .get("target-volume")
        .cloned()
        .unwrap_or_else(|| key.clone());
    let checks = |state: &State| -> Result<(Guest, Guest, String), String> {
        if key == "rootfs" || target_key == "rootfs" {
            return Err("Cannot move to/from 'rootfs'".into());
        }
        if key.starts_with("unused") && !target_key.starts_with("unused") {
            return Err("Moving an unused volume to a used one is not possible".into());
        }
        for id in [vmid, target] {
            if !state.guests.contains_key(&id) {
                return Err(format!("could not find CT {id}"));
            }
        }
        let source = guests::load(state, GuestKind::Lxc, &node, vmid).map_err(|r| message(&r))?;
        let destination =
            guests::load(state, GuestKind::Lxc, &node, target).map_err(|r| message(&r))?;
        for guest in [&source, &destination] {
            if let Some(lock) = guest.config.get("lock") {
                return Err(format!("CT is locked ({lock})"));
            }
        }
        if is_true(source.config.get("template")) || is_true(destination.config.get("template")) {
            return Err("Can't move volumes from or to template CT".into());
        }
        let modified = "detected modified configuration - file changed by other user? Try again.";
        if !digest_matches(call, &source.config) {
            return Err(format!("Container {vmid}: {modified}"));
        }
        if let Some(digest) = call.params.get("target-digest")
            && !digest.is_empty()
            && *digest != guests::digest(&destination.config)
        {
            return Err(format!("Container {target}: {modified}"));
        }
        let value = source
            .config
            .get(&key)
            .cloned()
            .ok_or_else(|| format!("volume '{key}' for container '{vmid}' does not exist"))?;
        if destination.config.contains_key(&target_key) {
            return Err(format!(
                "Target volume key '{target_key}' is already in use for container '{target}'"
            ));
        }
        let volume = mountpoint_volume(&value)
            .ok_or_else(|| format!("Volume '{key}' has no associated image"))?;
        if volume.starts_with('/') {
            return Err("Cannot move a bindmount or device mount to another container".into());
        }
        if source.running && !key.starts_with("unused") {
            return Err(
                "Cannot move in-use volume while the source CT is running - detach or shutdown first"
                    .into(),
            );
        }
        Ok((source, destination, volume))
    };
    let (_, _, volume) = checks(&call.state()).map_err(Reply::error)?;
    let (storage_id, _) = volume.split_once(':').unwrap_or_default();
    call.check(
        &format!("/storage/{storage_id}"),
        &["Datastore.AllocateSpace"],
    )?;
    let id = format!("{vmid}-{key}>{target}-{target_key}");
    Ok(guests::task(call, "move_volume", &id, |state, upid| {
        let (mut source, mut destination, volume) = checks(state)?;
        state.task_log(
            upid,
            format!("moving volume '{key}' from container '{vmid}' to '{target}'"),
        );
        let new_volid = rename_volume(call, state, &volume, target)?;
        let value = source.config.remove(&key).unwrap_or_default();
        state.task_log(
            upid,
            format!("removing volume '{key}' from container '{vmid}' config"),
        );
        let moved = if target_key.starts_with("unused") {
            new_volid
        } else {
            let mut mountpoint = parse_property_string(&value, Some("volume")).unwrap_or_default();
            mountpoint.insert("volume".into(), new_volid);
            print_property_string(&mountpoint, Some("volume"), &["mp"])
        };
        destination.config.insert(target_key.clone(), moved);
        state.task_log(
            upid,
            format!("target container '{target}' updated with '{target_key}'"),
        );
        state.guests.insert(vmid, source);
        state.guests.insert(target, destination);
        Ok(())
    }))
}

/// `status/start|stop|shutdown`. A running CT's start and a stopped CT's
/// stop or shutdown are refused before the task (Status.pm).
fn power(call: &Call<'_>, kind: &str) -> Result<Reply, Reply> {
    let vmid = vmid_param(call);
    let node = call.path_param("node").to_owned();
    if is_true(call.params.get("skiplock")) {
        return Err(Reply::param_error(
            "skiplock",
            "Only root may use this option.",
        ));
    }
    let running = call
        .state()
        .guests
        .get(&vmid)
        .is_some_and(|g| g.running && g.kind == GuestKind::Lxc);
    if kind == "vzstart" && running {
        return Err(Reply::error(format!("CT {vmid} already running")));
    }
    if kind != "vzstart" && !running {
        return Err(Reply::error(format!("CT {vmid} not running")));
    }
    Ok(guests::task(
        call,
        kind,
        &vmid.to_string(),
        |state, upid| {
            let guest =
                guests::load(state, GuestKind::Lxc, &node, vmid).map_err(|r| message(&r))?;
            if kind == "vzstart" {
                if is_true(guest.config.get("template")) {
                    return Err("you can't start a CT if it's a template".into());
                }
                if let Some(lock) = guest.config.get("lock") {
                    return Err(format!("CT is locked ({lock})"));
                }
                state.task_log(upid, format!("starting CT {vmid}: {upid}"));
            }
            if let Some(guest) = state.guests.get_mut(&vmid) {
                guest.running = kind == "vzstart";
            }
            Ok(())
        },
    ))
}

/// The root volume's size in bytes (4 GiB when unknown, as `vmstatus`).
pub(super) fn rootfs_size(state: &State, config: &BTreeMap<String, String>) -> u64 {
    config
        .get("rootfs")
        .and_then(|r| mountpoint_volume(r))
        .and_then(|v| state.volume(&v).map(|v| v.size))
        .unwrap_or(4 << 30)
}

/// `GET .../status/current`: `vmstatus` for one CT.
fn status(call: &Call<'_>) -> Result<Reply, Reply> {
    let vmid = vmid_param(call);
    let state = call.state();
    let guest = guests::load(&state, GuestKind::Lxc, call.path_param("node"), vmid)?;
    let config = &guest.config;
    let number = |key: &str, default: u64| {
        config
            .get(key)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(default)
    };
    let name: String = config
        .get("hostname")
        .cloned()
        .unwrap_or_else(|| format!("CT{vmid}"))
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let mut data = json!({
        "vmid": vmid, "type": "lxc",
        "status": if guest.running { "running" } else { "stopped" },
        "name": name,
        "cpus": number("cores", 1),
        "maxmem": number("memory", 512) * 1024 * 1024,
        "maxswap": number("swap", 0) * 1024 * 1024,
        "maxdisk": rootfs_size(&state, config),
        "disk": 0, "uptime": 0, "cpu": 0, "mem": 0, "swap": 0, "netin": 0, "netout": 0,
        "diskread": 0, "diskwrite": 0, "ha": {"managed": 0},
    });
    if let Some(object) = data.as_object_mut() {
        for key in ["tags", "lock"] {
            if let Some(value) = config.get(key) {
                object.insert(key.into(), json!(value));
            }
        }
        if is_true(config.get("template")) {
            object.insert("template".into(), json!(1));
        }
    }
    Ok(Reply::Data(data))
}

/// `DELETE /nodes/{node}/lxc/{vmid}`: a `vzdestroy` task. A running CT is
/// refused unless `force` (then stopped first). `destroy_lxc_container`
/// frees the rootfs, mount point and unused volumes the CT owns.
fn destroy(call: &Call<'_>) -> Result<Reply, Reply> {
    let vmid = vmid_param(call);
    let node = call.path_param("node").to_owned();
    let force = is_true(call.params.get("force"));
    let early = |state: &State| -> Result<Guest, Reply> {
        let guest = guests::load(state, GuestKind::Lxc, &node, vmid)?;
        if is_true(guest.config.get("protection")) {
            return Err(Reply::error(format!(
                "can't remove CT {vmid} - protection mode enabled"
            )));
        }
        if let Some(lock) = guest.config.get("lock") {
            return Err(Reply::error(format!("CT is locked ({lock})")));
        }
        if guest.running && !force {
            return Err(Reply::error(format!(
                "unable to destroy CT {vmid} - container is running"
            )));
        }
        Ok(guest)
    };
    early(&call.state())?;
    let unreferenced = is_true(call.params.get("destroy-unreferenced-disks"));
    Ok(guests::task(
        call,
        "vzdestroy",
        &vmid.to_string(),
        |state, upid| {
            let guest = early(state).map_err(|r| message(&r))?;
            if guest.running {
                state.task_log(upid, format!("forced to stop CT {vmid} before destroying!"));
            }
            for (key, value) in &guest.config {
                let volume = if key.starts_with("unused") {
                    Some(value.clone())
                } else if is_mountpoint(key) {
                    mountpoint_volume(value)
                } else {
                    None
                };
                let Some(volume) = volume.filter(|v| !v.starts_with('/')) else {
                    continue;
                };
                if guests::owner(&volume) == Some(vmid) {
                    guests::free_volume(state, &volume);
                } else {
                    state.task_log(
                        upid,
                        format!("ignore deletion of '{volume}', CT {vmid} isn't the owner!"),
                    );
                }
            }
            if unreferenced {
                guests::free_unreferenced(state, call, vmid);
            }
            state.guests.remove(&vmid);
            Ok(())
        },
    ))
}
