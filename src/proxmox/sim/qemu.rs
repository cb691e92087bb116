//! QEMU guests: create, config, resize, start/stop/shutdown, status,
//! destroy.
//!
//! qemu-server `src/PVE/API2/Qemu.pm` (`create_vm`, `vm_config`,
//! `$update_vm_api`, `resize_vm`, `vm_start`, `vm_stop`, `vm_shutdown`,
//! `vm_status`, `destroy_vm`) and `src/PVE/QemuServer.pm` (`vm_start`,
//! `_do_vm_stop`, `vmstatus`, `destroy_vm`). Changes to a running VM apply
//! at once: PVE's pending section and hotplug rules are not modelled.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use serde_json::{Value, json};

use super::guests::{self, Guest, GuestKind, digest_matches, vmid_param};
use super::qemu_disks::{
    boot_disk_size, boot_order, check_devices, check_drive_access, check_drive_params,
    check_drive_perms, check_option, create_disk, default_boot, is_cdrom, is_drive, is_unused,
    parse_drive, parse_net, print_drive, register_unused, with_mac,
};
use super::server::{Call, Reply};
use super::state::{State, now};
use super::volumes;

pub(super) fn dispatch(call: &Call<'_>, method: &str, template: &str) -> Option<Reply> {
    let reply = match (method, template) {
        ("POST", "/nodes/{node}/qemu") => create(call),
        ("GET", "/nodes/{node}/qemu/{vmid}/config") => get_config(call),
        ("POST", "/nodes/{node}/qemu/{vmid}/config") => update(call, false),
        ("PUT", "/nodes/{node}/qemu/{vmid}/config") => update(call, true),
        ("PUT", "/nodes/{node}/qemu/{vmid}/resize") => resize(call),
        ("POST", "/nodes/{node}/qemu/{vmid}/status/start") => power(call, "qmstart"),
        ("POST", "/nodes/{node}/qemu/{vmid}/status/stop") => power(call, "qmstop"),
        ("POST", "/nodes/{node}/qemu/{vmid}/status/shutdown") => power(call, "qmshutdown"),
        ("GET", "/nodes/{node}/qemu/{vmid}/status/current") => status(call),
        ("DELETE", "/nodes/{node}/qemu/{vmid}") => destroy(call),
        _ => return None,
    };
    Some(reply.unwrap_or_else(|reply| reply))
}

/// Parameters `create_vm` extracts before the rest become the config.
const CREATE_ONLY: &[&str] = &[
    "node",
    "vmid",
    "archive",
    "bwlimit",
    "force",
    "pool",
    "start",
    "ha-managed",
    "storage",
    "unique",
    "live-restore",
    "import-working-storage",
];

/// `$resolve_cdrom_alias`: `cdrom=X` is `ide2=X,media=cdrom`.
fn resolve_cdrom_alias(params: &mut BTreeMap<String, String>) {
    if let Some(mut value) = params.remove("cdrom") {
        if !value.contains("media=") {
            value.push_str(",media=cdrom");
        }
        params.insert("ide2".into(), value);
    }
}

/// The checks `create_vm` and `$update_vm_api` make on the options before
/// anything changes: storage access, option privileges, devices, bridges,
/// drive syntax; NICs get their MAC.
fn check_options(
    call: &Call<'_>,
    vmid: u32,
    params: &mut BTreeMap<String, String>,
    default_storage: Option<&str>,
    create: bool,
) -> Result<(), Reply> {
    for (key, value) in params.iter() {
        if is_drive(key) {
            check_drive_access(call, vmid, key, value, default_storage)?;
        }
    }
    for key in params.keys() {
        check_option(call, vmid, key)?;
    }
    for (key, value) in params.iter() {
        if create {
            check_devices(call, vmid, key, value)?;
        }
        if key.starts_with("net") && key[3..].bytes().all(|b| b.is_ascii_digit()) {
            let net = parse_net(value).map_err(|e| Reply::param_error(key, &e))?;
            volumes::check_bridge(call, net.get("bridge"), net.get("tag"))?;
        }
    }
    check_drive_params(call, params)?;
    let nets: Vec<String> = params
        .keys()
        .filter(|k| k.starts_with("net") && k[3..].bytes().all(|b| b.is_ascii_digit()))
        .cloned()
        .collect();
    for key in nets {
        let value = params.get(&key).cloned().unwrap_or_default();
        let printed = with_mac(&value).map_err(|e| Reply::param_error(&key, &e))?;
        params.insert(key, printed);
    }
    Ok(())
}

/// `POST /nodes/{node}/qemu`: a `qmcreate` task.
fn create(call: &Call<'_>) -> Result<Reply, Reply> {
    let vmid = vmid_param(call);
    let node = call.path_param("node").to_owned();
    let mut params = call.params.clone();
    let get = |name: &str| call.params.get(name).cloned();
    if get("archive").is_some() {
        return Err(Reply::Error(
            StatusCode::NOT_IMPLEMENTED,
            "kiln-pve-sim: restore ('archive') is not simulated".into(),
        ));
    }
    if let Some(pool) = get("pool") {
        // No pools are simulated: `check_pool_exist`.
        return Err(Reply::error(format!("pool '{pool}' does not exist")));
    }
    let storage = get("storage");
    if let Some(storage) = &storage {
        call.check(&format!("/storage/{storage}"), &["Datastore.AllocateSpace"])?;
    }
    if guests::is_true(call.params.get("ha-managed")) {
        call.check("/", &["Sys.Console"])?;
    }
    let start = guests::is_true(call.params.get("start"));
    if start {
        call.check_vm(vmid, &["VM.PowerMgmt"])?;
    }
    if !call.has(&format!("/vms/{vmid}"), &["VM.Allocate"]) {
        // raise_perm_exc() without an argument.
        return Err(super::acl::denied(""));
    }
    for name in CREATE_ONLY {
        params.remove(*name);
    }
    if !params.is_empty() {
        resolve_cdrom_alias(&mut params);
        check_options(call, vmid, &mut params, storage.as_deref(), true)?;
    }
    if let Err(message) = guests::check_vmid_unused(&call.state(), vmid) {
        return Err(Reply::error(format!(
            "unable to create VM {vmid} - {message}"
        )));
    }
    let emsg = format!("unable to create VM {vmid} -");
    Ok(guests::task(
        call,
        "qmcreate",
        &vmid.to_string(),
        |state, upid| {
            let mut config = BTreeMap::new();
            for (key, value) in &params {
                if is_drive(key) {
                    let printed = create_disk(call, state, vmid, key, value, storage.as_deref())
                        .map_err(|e| format!("{emsg} {e}"))?;
                    state.task_log(
                        upid,
                        format!("{key}: successfully created disk '{printed}'"),
                    );
                    config.insert(key.clone(), printed);
                } else {
                    config.insert(key.clone(), value.clone());
                }
            }
            if !config.contains_key("boot") {
                let boot = default_boot(&config);
                config.insert("boot".into(), boot);
            }
            config
                .entry("smbios1".into())
                .or_insert_with(|| format!("uuid={}", guests::random_uuid()));
            if config.get("vmgenid").is_none_or(|v| v == "1") {
                config.insert("vmgenid".into(), guests::random_uuid());
            }
            // MetaInfo.pm new_meta_info_string: the QEMU version 9.1 ships.
            config.insert(
                "meta".into(),
                format!("creation-qemu=10.1.2,ctime={}", now()),
            );
            if let Some(tags) = config.get("tags").cloned() {
                // assert_tag_permissions, in the worker.
                call.check_vm(vmid, &["VM.Config.Options"])
                    .map_err(|r| format!("{emsg} {}", message(&r)))?;
                config.insert("tags".into(), guests::normalize_tags(&tags));
            }
            state.guests.insert(
                vmid,
                Guest {
                    kind: GuestKind::Qemu,
                    node: node.clone(),
                    vmid,
                    config,
                    running: false,
                },
            );
            if start {
                state.task_log(upid, "Execute autostart");
                start_vm(state, vmid)?;
            }
            Ok(())
        },
    ))
}

/// `GET .../config`: the config with `digest`.
fn get_config(call: &Call<'_>) -> Result<Reply, Reply> {
    let guest = guests::load(
        &call.state(),
        GuestKind::Qemu,
        call.path_param("node"),
        vmid_param(call),
    )?;
    let mut data = guests::config_json(call, &guest);
    if let Some(object) = data.as_object_mut()
        && object.contains_key("cipassword")
    {
        object.insert("cipassword".into(), json!("**********"));
    }
    Ok(Reply::Data(data))
}

/// What `$update_vm_api` was asked to do, after its synchronous checks.
struct Update {
    vmid: u32,
    params: BTreeMap<String, String>,
    delete: Vec<String>,
    force: bool,
}

/// `POST` (a `qmconfig` task, or null) and `PUT` (synchronous) config.
fn update(call: &Call<'_>, sync: bool) -> Result<Reply, Reply> {
    let vmid = vmid_param(call);
    let mut params = call.params.clone();
    let background_delay = params.remove("background_delay");
    let force = guests::is_true(params.get("force"));
    for name in [
        "node",
        "vmid",
        "digest",
        "skip_cloud_init",
        "import-working-storage",
        "force",
    ] {
        params.remove(name);
    }
    if params.remove("skiplock").is_some() {
        return Err(Reply::param_error(
            "skiplock",
            "Only root may use this option.",
        ));
    }
    let delete_text = params.remove("delete").unwrap_or_default();
    let revert_text = params.remove("revert").unwrap_or_default();
    if delete_text.is_empty() && revert_text.is_empty() && params.is_empty() {
        return Err(Reply::error("no options specified"));
    }
    resolve_cdrom_alias(&mut params);
    let create = format!("/nodes/{}/qemu", call.path_param("node"));
    let schema = call.shared.schema.method("POST", &create);
    let exists = |opt: &str| {
        !CREATE_ONLY.contains(&opt) && schema.as_ref().is_some_and(|s| s.has_parameter(opt))
    };
    for opt in split_list(&revert_text) {
        if !exists(&opt) {
            return Err(Reply::param_error(
                "revert",
                &format!("unknown option '{opt}'"),
            ));
        }
    }
    let mut delete = Vec::new();
    for opt in split_list(&delete_text) {
        let opt = if opt == "cdrom" {
            "ide2".to_owned()
        } else {
            opt
        };
        if params.contains_key(&opt) {
            return Err(Reply::param_error(
                "delete",
                &format!("you can't use '-{opt}' and -delete {opt}' at the same time"),
            ));
        }
        if !exists(&opt) {
            return Err(Reply::param_error(
                "delete",
                &format!("unknown option '{opt}'"),
            ));
        }
        delete.push(opt);
    }
    if params.get("vmgenid").is_some_and(|v| v == "1") {
        params.insert("vmgenid".into(), guests::random_uuid());
    }
    for key in &delete {
        check_option(call, vmid, key)?;
    }
    check_options(call, vmid, &mut params, None, false)?;
    let guest = guests::load(
        &call.state(),
        GuestKind::Qemu,
        call.path_param("node"),
        vmid,
    )?;
    if !digest_matches(call, &guest.config) {
        return Err(Reply::error(
            "checksum mismatch (file change by other user?)",
        ));
    }
    let update = Update {
        vmid,
        params,
        delete,
        force,
    };
    if sync {
        let mut state = call.state();
        let before = state.snapshot();
        if let Err(reply) = apply_update(call, &mut state, &update) {
            state.restore(before);
            return Err(reply);
        }
        return Ok(Reply::Data(Value::Null));
    }
    let reply = guests::task(call, "qmconfig", &vmid.to_string(), |state, upid| {
        state.task_log(upid, format!("update VM {vmid}: {}", log_params(call)));
        apply_update(call, state, &update).map_err(|reply| message(&reply))
    });
    // background_delay: wait for the worker; null once it ended well.
    if background_delay.is_some()
        && let Reply::Data(Value::String(upid)) = &reply
        && let Some(task) = call.state().task(upid).cloned()
        && let Some(exit) = task.exit
    {
        if exit == "OK" {
            return Ok(Reply::Data(Value::Null));
        }
        return Err(Reply::error(format!("failed to update VM {vmid}: {exit}")));
    }
    Ok(reply)
}

fn log_params(call: &Call<'_>) -> String {
    call.params
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "node" | "vmid"))
        .map(|(k, v)| {
            let v = if k == "cipassword" { "<hidden>" } else { v };
            format!("-{k} {v}")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A reply's message, as a task's `TASK ERROR:` line carries it.
pub(super) fn message(reply: &Reply) -> String {
    match reply {
        Reply::Error(_, message) => message.trim_end().to_owned(),
        Reply::Invalid(errors) => errors
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join("\n"),
        Reply::Data(_) | Reply::DataWithTotal(..) => String::new(),
    }
}

/// `split_list`.
pub(super) fn split_list(text: &str) -> Vec<String> {
    text.split([',', ';', ' ', '\t', '\n', '\0'])
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The `updatefn` of `$update_vm_api`, under the config lock. Deleted
/// disks owned by the VM and replaced ones become `unusedN`; deleting an
/// `unusedN` frees its volume.
fn apply_update(call: &Call<'_>, state: &mut State, update: &Update) -> Result<(), Reply> {
    let vmid = update.vmid;
    let mut guest = guests::load(state, GuestKind::Qemu, call.path_param("node"), vmid)?;
    let config = &mut guest.config;
    let mut order = boot_order(config);
    let order_before = order.clone();
    for opt in &update.delete {
        let Some(value) = config.get(opt).cloned() else {
            continue; // "cannot delete '$opt' - not set in current configuration!"
        };
        order.retain(|d| d != opt);
        if is_unused(opt) {
            call.check_vm(vmid, &["VM.Config.Disk"])?;
            deallocate(call, state, vmid, &value)?;
        } else if is_drive(opt) {
            check_drive_perms(call, vmid, &value)?;
            let drive = parse_drive(&value).unwrap_or_default();
            if update.force && !is_cdrom(&drive) {
                call.check_vm(vmid, &["VM.Config.Disk"])?;
                deallocate(
                    call,
                    state,
                    vmid,
                    drive.get("file").map_or("", String::as_str),
                )?;
            } else {
                register_unused(config, vmid, &value);
            }
        } else if opt == "tags" {
            call.check_vm(vmid, &["VM.Config.Options"])?;
        } else if opt.starts_with("net") {
            let net = parse_net(&value).unwrap_or_default();
            volumes::check_bridge(call, net.get("bridge"), net.get("tag"))?;
        }
        config.remove(opt);
    }
    for (opt, value) in &update.params {
        let mut value = value.clone();
        if is_drive(opt) {
            let old = config.get(opt).cloned();
            if let Some(old) = &old {
                check_drive_perms(call, vmid, old)?;
            }
            check_drive_perms(call, vmid, &value)?;
            value = create_disk(call, state, vmid, opt, &value, None).map_err(Reply::error)?;
            if let Some(old) = &old {
                // vmconfig_apply_pending: the old drive is registered unused.
                register_unused(config, vmid, old);
            }
            let drive = parse_drive(&value).unwrap_or_default();
            if !order.is_empty() && is_cdrom(&drive) && !order.contains(opt) {
                order.push(opt.clone());
            }
        } else if opt == "tags" {
            call.check_vm(vmid, &["VM.Config.Options"])?;
            value = guests::normalize_tags(&value);
        } else if opt.starts_with("net")
            && let Some(old) = config.get(opt)
        {
            let net = parse_net(old).unwrap_or_default();
            volumes::check_bridge(call, net.get("bridge"), net.get("tag"))?;
        } else if opt == "boot" {
            order = boot_devices(&value, config, update)?;
        }
        config.insert(opt.clone(), value);
    }
    if order != order_before && !update.params.contains_key("boot") {
        config.insert("boot".into(), format!("order={}", order.join(";")));
    }
    state.guests.insert(vmid, guest);
    Ok(())
}

/// A new `boot` value's devices must exist and not be deleted now.
fn boot_devices(
    value: &str,
    config: &BTreeMap<String, String>,
    update: &Update,
) -> Result<Vec<String>, Reply> {
    let probe = BTreeMap::from([("boot".to_owned(), value.to_owned())]);
    let devices = boot_order(&probe);
    for device in &devices {
        let exists = config.contains_key(device) || update.params.contains_key(device);
        if !exists || update.delete.contains(device) {
            return Err(Reply::error(format!(
                "invalid bootorder: device '{device}' does not exist'"
            )));
        }
    }
    Ok(devices)
}

/// `try_deallocate_drive`: a volume the VM owns is freed (with
/// Datastore.AllocateSpace on its storage); another's is only dropped.
fn deallocate(call: &Call<'_>, state: &mut State, vmid: u32, volid: &str) -> Result<(), Reply> {
    if guests::owner(volid) == Some(vmid)
        && let Some((storage, _)) = volid.split_once(':')
    {
        call.check(&format!("/storage/{storage}"), &["Datastore.AllocateSpace"])?;
        guests::free_volume(state, volid);
    }
    Ok(())
}

/// `PUT .../resize`: a `resize` task (9.x returns its UPID); every check
/// but the schema's is in the worker.
fn resize(call: &Call<'_>) -> Result<Reply, Reply> {
    let vmid = vmid_param(call);
    if call.params.contains_key("skiplock") {
        return Err(Reply::param_error(
            "skiplock",
            "Only root may use this option.",
        ));
    }
    let disk = call.params.get("disk").cloned().unwrap_or_default();
    let size_text = call.params.get("size").cloned().unwrap_or_default();
    let node = call.path_param("node").to_owned();
    Ok(guests::task(
        call,
        "resize",
        &vmid.to_string(),
        |state, upid| {
            let mut guest =
                guests::load(state, GuestKind::Qemu, &node, vmid).map_err(|r| message(&r))?;
            if !digest_matches(call, &guest.config) {
                return Err("checksum mismatch (file change by other user?)".into());
            }
            let value = guest
                .config
                .get(&disk)
                .cloned()
                .ok_or_else(|| format!("disk '{disk}' does not exist"))?;
            let mut drive = parse_drive(&value)?;
            let volid = drive
                .get("file")
                .cloned()
                .ok_or_else(|| format!("disk '{disk}' has no associated volume"))?;
            if is_cdrom(&drive) {
                return Err("you can't resize a cdrom".into());
            }
            let (storage, _) = volid.split_once(':').unwrap_or_default();
            call.check(&format!("/storage/{storage}"), &["Datastore.AllocateSpace"])
                .map_err(|r| message(&r))?;
            let size = state
                .volume(&volid)
                .map(|v| v.size)
                .ok_or_else(|| format!("Could not determine current size of volume '{volid}'"))?;
            let new_size = parse_resize(&size_text, size)?;
            if new_size < size {
                return Err("shrinking disks is not supported".into());
            }
            if new_size == size {
                return Ok(());
            }
            state.task_log(upid, format!("resize --disk {disk} --size {size_text}"));
            state.resize_volume(&volid, new_size);
            drive.insert("size".into(), guests::format_size(new_size));
            guest.config.insert(disk.clone(), print_drive(&drive));
            state.guests.insert(vmid, guest);
            Ok(())
        },
    ))
}

/// `+?N(.N)?[KMGT]?` as bytes, relative to `current` with `+`.
fn parse_resize(text: &str, current: u64) -> Result<u64, String> {
    let (relative, rest) = match text.strip_prefix('+') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (number, unit) = match rest.chars().last() {
        Some(c @ ('K' | 'M' | 'G' | 'T')) => (&rest[..rest.len() - 1], Some(c)),
        _ => (rest, None),
    };
    let value: f64 = number.parse().map_err(|_| "internal error".to_owned())?;
    let factor = match unit {
        Some('K') => 1024.0,
        Some('M') => 1024.0 * 1024.0,
        Some('G') => 1024.0 * 1024.0 * 1024.0,
        Some('T') => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => 1.0,
    };
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "the schema's pattern allows only non-negative sizes"
    )]
    let bytes = (value * factor) as u64;
    Ok(if relative { current + bytes } else { bytes })
}

/// `vm_start`'s checks, then running.
fn start_vm(state: &mut State, vmid: u32) -> Result<(), String> {
    let guest = state.guests.get_mut(&vmid).ok_or("no such VM")?;
    if guests::is_true(guest.config.get("template")) {
        return Err("you can't start a vm if it's a template".into());
    }
    if let Some(lock) = guest.config.get("lock") {
        return Err(format!("VM is locked ({lock})"));
    }
    if guest.running {
        return Err(format!("VM {vmid} already running"));
    }
    guest.running = true;
    Ok(())
}

/// `status/start|stop|shutdown`: a task; the VM's existence, a running
/// VM's start and a stopped VM's stop (which succeeds) are decided in it.
fn power(call: &Call<'_>, kind: &str) -> Result<Reply, Reply> {
    let vmid = vmid_param(call);
    let node = call.path_param("node").to_owned();
    for root_only in [
        "skiplock",
        "stateuri",
        "migratedfrom",
        "keepActive",
        "targetstorage",
    ] {
        if guests::is_true(call.params.get(root_only)) {
            return Err(Reply::param_error(
                root_only,
                "Only root may use this option.",
            ));
        }
    }
    Ok(guests::task(
        call,
        kind,
        &vmid.to_string(),
        |state, upid| {
            let guest =
                guests::load(state, GuestKind::Qemu, &node, vmid).map_err(|r| message(&r))?;
            match kind {
                "qmstart" => {
                    state.task_log(upid, format!("start VM {vmid}: {upid}"));
                    start_vm(state, vmid)
                }
                _ => {
                    if let Some(lock) = guest.config.get("lock") {
                        return Err(format!("VM is locked ({lock})"));
                    }
                    if let Some(guest) = state.guests.get_mut(&vmid) {
                        guest.running = false;
                    }
                    Ok(())
                }
            }
        },
    ))
}

/// `GET .../status/current`: `vmstatus` for one VM.
fn status(call: &Call<'_>) -> Result<Reply, Reply> {
    let vmid = vmid_param(call);
    let state = call.state();
    let guest = guests::load(&state, GuestKind::Qemu, call.path_param("node"), vmid)?;
    let config = &guest.config;
    let number = |key: &str, default: u64| {
        config
            .get(key)
            .and_then(|v| v.split([',', '=']).find_map(|p| p.parse::<u64>().ok()))
            .unwrap_or(default)
    };
    let status = if guest.running { "running" } else { "stopped" };
    let mut data = json!({
        "vmid": vmid,
        "status": status,
        "qmpstatus": status,
        "name": config.get("name").cloned().unwrap_or_else(|| format!("VM {vmid}")),
        "cpus": number("sockets", 1) * number("cores", 1),
        "maxmem": number("memory", 2048) * 1024 * 1024,
        "maxdisk": boot_disk_size(&state, config),
        "disk": 0, "uptime": 0, "cpu": 0, "mem": 0, "memhost": 0, "netin": 0, "netout": 0,
        "ha": {"managed": 0},
    });
    if let Some(object) = data.as_object_mut() {
        for key in ["tags", "lock"] {
            if let Some(value) = config.get(key) {
                object.insert(key.into(), json!(value));
            }
        }
        if guests::is_true(config.get("template")) {
            object.insert("template".into(), json!(1));
        }
        if config.get("agent").is_some_and(|a| {
            a.split(',')
                .next()
                .is_some_and(|e| matches!(e, "1" | "enabled=1"))
        }) {
            object.insert("agent".into(), json!(1));
        }
    }
    Ok(Reply::Data(data))
}

/// `DELETE /nodes/{node}/qemu/{vmid}`: a `qmdestroy` task; a running or
/// protected VM is refused first. Frees every volume the VM owns among
/// its disks and `unusedN` (and, with `destroy-unreferenced-disks`, every
/// volume named for it).
fn destroy(call: &Call<'_>) -> Result<Reply, Reply> {
    let vmid = vmid_param(call);
    let node = call.path_param("node").to_owned();
    if call.params.contains_key("skiplock") {
        return Err(Reply::param_error(
            "skiplock",
            "Only root may use this option.",
        ));
    }
    let early = |state: &State| -> Result<Guest, Reply> {
        let guest = guests::load(state, GuestKind::Qemu, &node, vmid)?;
        if guests::is_true(guest.config.get("protection")) {
            return Err(Reply::error(format!(
                "can't remove VM {vmid} - protection mode enabled"
            )));
        }
        if guest.running {
            return Err(Reply::error(format!(
                "VM {vmid} is running - destroy failed"
            )));
        }
        Ok(guest)
    };
    early(&call.state())?;
    let unreferenced = guests::is_true(call.params.get("destroy-unreferenced-disks"));
    Ok(guests::task(
        call,
        "qmdestroy",
        &vmid.to_string(),
        |state, upid| {
            let guest = early(state).map_err(|r| message(&r))?;
            state.task_log(upid, format!("destroy VM {vmid}: {upid}"));
            for (key, value) in &guest.config {
                if !(is_drive(key) || is_unused(key)) {
                    continue;
                }
                let drive = parse_drive(value).unwrap_or_default();
                if is_cdrom(&drive) {
                    continue;
                }
                if let Some(file) = drive.get("file")
                    && guests::owner(file) == Some(vmid)
                {
                    guests::free_volume(state, file);
                    state.task_log(upid, format!("Removed volume '{file}'"));
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
