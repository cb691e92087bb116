//! Container mount points (`rootfs`, `mpN`): privilege checks, allocation
//! and reassignment.
//!
//! pve-container `src/PVE/LXC.pm` (`check_ct_modify_config_perm`,
//! `alloc_disk`, `create_disks`, `$NEW_DISK_RE`), `src/PVE/LXC/Config.pm`
//! (`print_ct_mountpoint`, `classify_mountpoint`); pve-storage
//! `src/PVE/Storage/Plugin.pm` (`rename_volume`).

use std::collections::BTreeMap;

use super::acl::denied;
use super::guests::{self, format_size, parse_property_string, print_property_string};
use super::server::{Call, Reply};
use super::state::{State, Volume, now};
use super::volumes::{self, gib_to_bytes};

/// `rootfs` or `mpN`.
pub(super) fn is_mountpoint(key: &str) -> bool {
    key == "rootfs"
        || key
            .strip_prefix("mp")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// A mount point's `volume` (its default key).
pub(super) fn mountpoint_volume(value: &str) -> Option<String> {
    parse_property_string(value, Some("volume"))
        .ok()?
        .remove("volume")
}

/// LXC's `$NEW_DISK_RE`: `STORAGE:SIZE_GiB` (the storage is required).
fn new_disk(volume: &str) -> Option<(String, String)> {
    let (storage, size) = volume.split_once(':')?;
    let numeric = !size.is_empty()
        && size.split('.').count() <= 2
        && size
            .split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    (numeric && !storage.is_empty() && !storage.contains(char::is_whitespace))
        .then(|| (storage.to_owned(), size.to_owned()))
}

/// `check_ct_modify_config_perm`: what each set or deleted option needs on
/// `/vms/{vmid}`; mount points, devices, features other than `nesting`
/// and hookscripts have root-only parts a token never passes.
pub(super) fn check_modify(
    call: &Call<'_>,
    vmid: u32,
    old: Option<&BTreeMap<String, String>>,
    new: &BTreeMap<String, String>,
    delete: &[String],
    unprivileged: bool,
) -> Result<(), Reply> {
    let options = new
        .keys()
        .map(|k| (k.as_str(), false))
        .chain(delete.iter().map(|k| (k.as_str(), true)));
    let old_value = |key: &str| old.and_then(|o| o.get(key));
    for (option, deleting) in options {
        match option {
            "cores" | "cpuunits" | "cpulimit" => call.check_vm(vmid, &["VM.Config.CPU"])?,
            "memory" | "swap" => call.check_vm(vmid, &["VM.Config.Memory"])?,
            "nameserver" | "searchdomain" | "hostname" => {
                call.check_vm(vmid, &["VM.Config.Network"])?;
            }
            "hookscript" => {
                return Err(denied(
                    "changing the hookscript is only allowed for root@pam",
                ));
            }
            "tags" => {
                // assert_tag_permissions: only when the tags change.
                let before = old_value("tags").map(|t| guests::normalize_tags(t));
                let after = if deleting {
                    None
                } else {
                    new.get("tags").map(|t| guests::normalize_tags(t))
                };
                if before != after {
                    call.check_vm(vmid, &["VM.Config.Options"])?;
                }
            }
            "features" => check_features(
                call,
                vmid,
                old_value("features"),
                new.get("features").filter(|_| !deleting),
                unprivileged,
            )?,
            key if is_mountpoint(key) => {
                call.check_vm(vmid, &["VM.Config.Disk"])?;
                if deleting {
                    continue;
                }
                let volume = new
                    .get(key)
                    .and_then(|v| mountpoint_volume(v))
                    .unwrap_or_default();
                if volume.starts_with('/') {
                    let kind = if volume.starts_with("/dev/") {
                        "device"
                    } else {
                        "bind"
                    };
                    return Err(denied(&format!(
                        "mount point type {kind} is only allowed for root@pam"
                    )));
                }
                match new_disk(&volume) {
                    Some((storage, _)) => {
                        call.check(&format!("/storage/{storage}"), &["Datastore.AllocateSpace"])?;
                    }
                    None => {
                        volumes::check_access(call, vmid, &volume, Some("rootdir"))?;
                    }
                }
            }
            key if key.starts_with("net") => {
                call.check_vm(vmid, &["VM.Config.Network"])?;
                for value in [old_value(key), new.get(key)].into_iter().flatten() {
                    let net = parse_property_string(value, None).unwrap_or_default();
                    volumes::check_bridge(call, net.get("bridge"), net.get("tag"))?;
                }
            }
            key if key.starts_with("dev") => {
                return Err(denied(
                    "configuring device passthrough is only allowed for root@pam",
                ));
            }
            _ => call.check_vm(vmid, &["VM.Config.Options"])?,
        }
    }
    Ok(())
}

/// The `features` branch: privileged containers' features are root-only;
/// a change of `nesting` alone needs VM.Allocate, any other feature
/// root@pam.
fn check_features(
    call: &Call<'_>,
    vmid: u32,
    old: Option<&String>,
    new: Option<&String>,
    unprivileged: bool,
) -> Result<(), Reply> {
    if !unprivileged {
        return Err(denied(
            "changing feature flags for privileged container is only allowed for root@pam",
        ));
    }
    let parse = |v: Option<&String>| {
        v.and_then(|v| parse_property_string(v, None).ok())
            .unwrap_or_default()
    };
    let (before, after) = (parse(old), parse(new));
    let changed: Vec<&String> = before
        .keys()
        .chain(after.keys())
        .filter(|k| before.get(*k) != after.get(*k))
        .collect();
    let whole = if new.is_some() && old.is_some() {
        changed
    } else if new.is_some() {
        after.keys().collect()
    } else {
        before.keys().collect()
    };
    if whole.iter().any(|k| *k != "nesting") {
        return Err(denied(
            "changing feature flags (except nesting) is only allowed for root@pam",
        ));
    }
    if !whole.is_empty() {
        call.check_vm(vmid, &["VM.Allocate"])?;
    }
    Ok(())
}

/// `create_disks`: each `STORAGE:SIZE` mount point gets a new volume
/// (`alloc_disk`: raw `vm-VMID-disk-N`, on a file storage
/// `VMID/vm-VMID-disk-N.raw`, and `subvol-VMID-disk-N` on ZFS or for size
/// 0 on file storages) and its `size=`; an existing volume is used as
/// given. Returns the mount points as PVE prints them.
pub(super) fn alloc_mountpoints(
    call: &Call<'_>,
    state: &mut State,
    vmid: u32,
    mountpoints: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, String> {
    // foreach_volume: rootfs first, then mp0, mp1, ... by number.
    let mut ordered: Vec<(&String, &String)> = mountpoints.iter().collect();
    ordered.sort_by_key(|(key, _)| {
        key.strip_prefix("mp")
            .and_then(|n| n.parse::<u32>().ok())
            .map_or(0, |n| u64::from(n) + 1)
    });
    let mut printed = BTreeMap::new();
    for (key, value) in ordered {
        let mut mountpoint = parse_property_string(value, Some("volume"))?;
        let volume = mountpoint.get("volume").cloned().unwrap_or_default();
        if let Some((storage_id, gib)) = new_disk(&volume) {
            let storage = call
                .shared
                .config
                .storage(&storage_id)
                .ok_or_else(|| format!("storage '{storage_id}' does not exist"))?;
            let size = gib_to_bytes(&gib);
            let subvol = storage.kind == "zfspool" || (storage.has_path() && size == 0);
            if !storage.content.iter().any(|c| c == "rootdir") {
                return Err(format!(
                    "content type 'rootdir' is not available or configured on storage '{storage_id}'"
                ));
            }
            let format = if subvol { "subvol" } else { "raw" };
            let volid = guests::alloc_volume(state, storage, vmid, format, size, "rootdir", None)?;
            mountpoint.insert("volume".into(), volid);
            mountpoint.insert("size".into(), format_size(size));
        } else if !volume.starts_with('/') && state.volume(&volume).is_none() {
            return Err(format!("volume '{volume}' does not exist"));
        }
        let required: &[&str] = if key == "rootfs" { &[] } else { &["mp"] };
        if key == "rootfs" {
            mountpoint.remove("mp");
        }
        printed.insert(
            key.clone(),
            print_property_string(&mountpoint, Some("volume"), required),
        );
    }
    Ok(printed)
}

/// `rename_volume`: the volume takes the target's next free name on the
/// same storage, keeping its format; its bytes move along.
pub(super) fn rename_volume(
    call: &Call<'_>,
    state: &mut State,
    volid: &str,
    target: u32,
) -> Result<String, String> {
    let volume = state
        .volume(volid)
        .cloned()
        .ok_or_else(|| format!("volume '{volid}' does not exist"))?;
    let (storage_id, volname) = volid.split_once(':').unwrap_or_default();
    let storage = call
        .shared
        .config
        .storage(storage_id)
        .ok_or_else(|| format!("storage '{storage_id}' does not exist"))?;
    let new_name = guests::next_volname(state, storage, target, &volume.format);
    let new_volid = format!("{storage_id}:{new_name}");
    let from = state.file_for(storage_id, volname);
    let to = state.file_for(storage_id, &new_name);
    to.parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::rename(&from, &to))
        .map_err(|e| format!("rename '{volid}' to '{new_volid}' failed - {e}"))?;
    state.remove_volume(storage_id, volid);
    state.add_volume(
        storage_id,
        Volume {
            volid: new_volid.clone(),
            vmid: Some(target),
            ctime: now(),
            ..volume
        },
    );
    Ok(new_volid)
}
