//! Volume ids in guest configs: their type and owner, access checks,
//! `STORAGE:SIZE` allocations, and bridge access for `netN`.
//!
//! pve-storage `src/PVE/Storage.pm` (`parse_volume_id`,
//! `check_volume_access`), `src/PVE/Storage/Plugin.pm` and the LVM/ZFS
//! plugins (`parse_volname`); qemu-server `src/PVE/QemuServer/Drive.pm`
//! (`NEW_DISK_RE`); pve-guest-common `src/PVE/GuestHelpers.pm`
//! (`check_vnet_access`).

use std::path::Path;
use std::sync::LazyLock;

use regex::Regex;

use super::config::StorageConfig;
use super::server::{Call, Reply};

/// `NEW_DISK_RE`: `[STORAGE:]SIZE_GiB`.
pub(super) static NEW_DISK: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"^(([^/:\s]+):)?(\d+(\.\d+)?)$").ok());

/// A `STORAGE:SIZE` allocation: (storage id if given, size in GiB text).
pub(super) fn new_disk(value: &str) -> Option<(Option<String>, String)> {
    let captures = NEW_DISK.as_ref()?.captures(value)?;
    Some((
        captures.get(2).map(|m| m.as_str().to_owned()),
        captures.get(3)?.as_str().to_owned(),
    ))
}

/// GiB (possibly fractional) in bytes, whole KiB as `convert_size` to
/// `kb` leaves it.
pub(super) fn gib_to_bytes(gib: &str) -> u64 {
    let value: f64 = gib.parse().unwrap_or(0.0);
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "the schema bounds disk sizes far below u64::MAX"
    )]
    let kib = (value * 1024.0 * 1024.0).ceil() as u64;
    kib * 1024
}

/// What `parse_volname` says about a volume.
#[derive(Debug, Clone)]
pub(super) struct VolumeName {
    pub(super) storage: StorageConfig,
    pub(super) vtype: &'static str,
    pub(super) owner: Option<u32>,
}

static IMAGE_DIR: LazyLock<Option<Regex>> = LazyLock::new(|| Regex::new(r"^(\d+)/\S+$").ok());
static IMAGE_NAME: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"^(?:vm|base|subvol)-(\d+)-\S+$").ok());

/// `parse_volume_id` then `parse_volname`. A volid without a storage is
/// an absolute path: only root@pam may pass those.
pub(super) fn parse(call: &Call<'_>, volid: &str) -> Result<VolumeName, Reply> {
    let Some((storage_id, volname)) = volid.split_once(':') else {
        return Err(Reply::error(
            "Only root can pass arbitrary filesystem paths.",
        ));
    };
    let Some(storage) = call.shared.config.storage(storage_id) else {
        return Err(Reply::error(format!(
            "storage '{storage_id}' does not exist"
        )));
    };
    let owner_of = |re: &LazyLock<Option<Regex>>| {
        re.as_ref()
            .and_then(|re| re.captures(volname))
            .and_then(|c| c.get(1)?.as_str().parse::<u32>().ok())
    };
    let prefixed = ["iso", "vztmpl", "backup", "snippets", "import"]
        .into_iter()
        .find(|t| volname.starts_with(&format!("{t}/")));
    let (vtype, owner) = if let Some(vtype) = prefixed {
        (vtype, None)
    } else if let Some(owner) = owner_of(&IMAGE_DIR).or_else(|| owner_of(&IMAGE_NAME)) {
        ("images", Some(owner))
    } else {
        return Err(Reply::error(format!(
            "unable to parse volume name '{volname}'"
        )));
    };
    Ok(VolumeName {
        storage: storage.clone(),
        vtype,
        owner,
    })
}

/// `check_volume_access`: `Datastore.Allocate` on the storage suffices;
/// otherwise templates, ISOs and imports need AllocateSpace or Audit,
/// the guest's own images nothing, another guest's images Audit and that
/// guest's VM.Config.Disk. `wanted` is the content type the caller needs
/// (`rootdir` accepts `images`).
pub(super) fn check_access(
    call: &Call<'_>,
    vmid: u32,
    volid: &str,
    wanted: Option<&str>,
) -> Result<VolumeName, Reply> {
    let name = parse(call, volid)?;
    if let Some(wanted) = wanted
        && name.vtype != wanted
        && !(wanted == "rootdir" && name.vtype == "images")
    {
        return Err(Reply::error(format!(
            "unable to use volume {volid} - content type needs to be '{wanted}'"
        )));
    }
    let storage_path = format!("/storage/{}", name.storage.id);
    if call.has(&storage_path, &["Datastore.Allocate"]) {
        return Ok(name);
    }
    match (name.vtype, name.owner) {
        ("iso" | "vztmpl" | "import", _) => {
            call.check_any(
                &storage_path,
                &["Datastore.AllocateSpace", "Datastore.Audit"],
            )?;
        }
        (_, Some(owner)) if owner == vmid => {}
        ("images", Some(owner)) => {
            call.check(&storage_path, &["Datastore.Audit"])?;
            call.check_vm(owner, &["VM.Config.Disk"])?;
        }
        _ => {
            return Err(Reply::error(format!(
                "missing privileges to access {volid}"
            )));
        }
    }
    Ok(name)
}

/// `check_vnet_access` for a `netN` value's `bridge` and `tag`: `SDN.Use`
/// on `/sdn/zones/localnetwork/BRIDGE[/TAG]` (no SDN zones simulated).
pub(super) fn check_bridge(
    call: &Call<'_>,
    bridge: Option<&String>,
    tag: Option<&String>,
) -> Result<(), Reply> {
    let Some(bridge) = bridge else {
        return Ok(());
    };
    let path = match tag {
        Some(tag) => format!("/sdn/zones/localnetwork/{bridge}/{tag}"),
        None => format!("/sdn/zones/localnetwork/{bridge}"),
    };
    call.check(&path, &["SDN.Use"])
}

/// A disk image's virtual size: a qcow2 header's (bytes 24..32, big
/// endian), else the file's length.
pub(super) fn virtual_size(path: &Path, file_size: u64) -> u64 {
    use std::io::Read;
    let mut header = [0u8; 32];
    let read = std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut header));
    if read.is_ok() && header.starts_with(b"QFI\xfb") {
        let mut size = [0u8; 8];
        size.copy_from_slice(&header[24..32]);
        return u64::from_be_bytes(size);
    }
    file_size
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_disks_and_sizes() {
        assert_eq!(
            new_disk("local-lvm:32"),
            Some((Some("local-lvm".into()), "32".into()))
        );
        assert_eq!(new_disk("0.5"), Some((None, "0.5".into())));
        assert_eq!(new_disk("local:iso/x.iso"), None);
        assert_eq!(gib_to_bytes("2"), 2 << 30);
        assert_eq!(gib_to_bytes("0.5"), 512 << 20);
    }
}
