//! QEMU drives and NICs: parsing, the checks PVE makes before it forks a
//! worker, and allocating disks in the worker.
//!
//! qemu-server `src/PVE/API2/Qemu.pm`: `$check_drive_param`,
//! `$check_storage_access`, `$check_vm_modify_config_perm` and
//! `create_disks`; `src/PVE/QemuServer/Drive.pm` (`print_drive`,
//! `drive_is_cdrom`, `valid_drive_names`); `src/PVE/QemuServer/Network.pm`
//! (`parse_net`, `print_net`, `add_random_macs`); `src/PVE/QemuServer.pm`
//! (`vmconfig_register_unused_drive`, `get_default_bootdevices`).

use std::collections::BTreeMap;
use std::sync::LazyLock;

use regex::Regex;

use super::guests::{self, add_unused, format_size, parse_property_string, print_property_string};
use super::server::{Call, Reply};
use super::state::State;
use super::volumes::{self, new_disk};

static DRIVE_KEY: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(
        r"^(ide[0-3]|scsi([0-9]|[12][0-9]|30)|virtio([0-9]|1[0-5])|sata[0-5]|efidisk0|tpmstate0)$",
    )
    .ok()
});

/// `is_valid_drivename`.
pub(super) fn is_drive(key: &str) -> bool {
    DRIVE_KEY.as_ref().is_some_and(|re| re.is_match(key))
}

/// `unusedN`.
pub(super) fn is_unused(key: &str) -> bool {
    key.strip_prefix("unused")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

pub(super) type Drive = BTreeMap<String, String>;

pub(super) fn parse_drive(value: &str) -> Result<Drive, String> {
    parse_property_string(value, Some("file"))
}

pub(super) fn print_drive(drive: &Drive) -> String {
    print_property_string(drive, Some("file"), &[])
}

pub(super) fn is_cdrom(drive: &Drive) -> bool {
    drive.get("media").is_some_and(|m| m == "cdrom")
}

fn is_cloudinit(drive: &Drive) -> bool {
    drive
        .get("file")
        .is_some_and(|f| f == "cloudinit" || f.ends_with(":cloudinit"))
}

/// The keys of PVE's `net` format other than the model aliases.
const NET_KEYS: &[&str] = &[
    "bridge",
    "firewall",
    "link_down",
    "macaddr",
    "model",
    "mtu",
    "queues",
    "rate",
    "tag",
    "trunks",
];

/// `parse_net`: `virtio=MAC` is `model=virtio,macaddr=MAC`.
pub(super) fn parse_net(value: &str) -> Result<BTreeMap<String, String>, String> {
    let mut net = BTreeMap::new();
    for (key, item) in parse_property_string(value, Some("model"))? {
        if NET_KEYS.contains(&key.as_str()) {
            net.insert(key, item);
        } else {
            net.insert("model".to_owned(), key);
            net.insert("macaddr".to_owned(), item);
        }
    }
    Ok(net)
}

/// `print_net`: `MODEL=MAC` first, the rest sorted.
fn print_net(net: &BTreeMap<String, String>) -> String {
    let mut rest = net.clone();
    let model = rest.remove("model").unwrap_or_default();
    let first = match rest.remove("macaddr") {
        Some(mac) => format!("{model}={mac}"),
        None => model,
    };
    let tail = print_property_string(&rest, None, &[]);
    if tail.is_empty() {
        first
    } else {
        format!("{first},{tail}")
    }
}

/// `add_random_macs` for one value: a generated MAC unless one is given.
pub(super) fn with_mac(value: &str) -> Result<String, String> {
    let mut net = parse_net(value)?;
    net.entry("macaddr".to_owned())
        .or_insert_with(guests::random_mac);
    Ok(print_net(&net))
}

/// `$check_drive_param`: the `import-from` syntax, `media=cdrom` for ISOs;
/// each drive is reprinted as PVE normalises it.
pub(super) fn check_drive_params(
    call: &Call<'_>,
    params: &mut BTreeMap<String, String>,
) -> Result<(), Reply> {
    let keys: Vec<String> = params.keys().filter(|k| is_drive(k)).cloned().collect();
    for key in keys {
        let value = params.get(&key).cloned().unwrap_or_default();
        let drive = parse_drive(&value)
            .map_err(|_| Reply::param_error(&key, "unable to parse drive options"))?;
        let file = drive.get("file").cloned().unwrap_or_default();
        if drive.contains_key("import-from") {
            let zero = new_disk(&file).is_some_and(|(_, size)| size.parse::<f64>() == Ok(0.0));
            if !zero {
                return Err(Reply::param_error(
                    &key,
                    "'import-from' requires special syntax - use <storage ID>:0,import-from=<source>",
                ));
            }
            let required: &[&str] = match key.as_str() {
                "efidisk0" => &["efitype", "pre-enrolled-keys"],
                "tpmstate0" => &["version"],
                _ => &[],
            };
            if let Some(missing) = required.iter().find(|r| !drive.contains_key(**r)) {
                return Err(Reply::param_error(
                    &key,
                    &format!("need to specify '{missing}' when using 'import-from'"),
                ));
            }
        }
        let is_volume = file.contains(':') && new_disk(&file).is_none() && !is_cloudinit(&drive);
        if is_volume && volumes::parse(call, &file)?.vtype == "iso" && !is_cdrom(&drive) {
            return Err(Reply::param_error(
                &key,
                "explicit 'media=cdrom' is required for iso images",
            ));
        }
        params.insert(key, print_drive(&drive));
    }
    Ok(())
}

/// `$check_storage_access` for one drive.
pub(super) fn check_drive_access(
    call: &Call<'_>,
    vmid: u32,
    key: &str,
    value: &str,
    default_storage: Option<&str>,
) -> Result<(), Reply> {
    let drive = parse_drive(value).map_err(|e| Reply::param_error(key, &e))?;
    let file = drive.get("file").cloned().unwrap_or_default();
    let cdrom = is_cdrom(&drive);
    if file.is_empty() || file == "none" || is_cloudinit(&drive) {
        // nothing to check
    } else if cdrom && file == "cdrom" {
        call.check("/", &["Sys.Console"])?;
    } else if let Some((storage, _)) = new_disk(&file).filter(|_| !cdrom) {
        let Some(storage) = storage.as_deref().or(default_storage) else {
            return Err(Reply::error(
                "no storage ID specified (and no default storage)",
            ));
        };
        call.check(&format!("/storage/{storage}"), &["Datastore.AllocateSpace"])?;
        let Some(config) = call.shared.config.storage(storage) else {
            return Err(Reply::error(format!("storage '{storage}' does not exist")));
        };
        if !config.content.iter().any(|c| c == "images") {
            return Err(Reply::param_error(
                "storage",
                &format!("storage '{storage}' does not support vm images"),
            ));
        }
    } else {
        let name = volumes::check_access(call, vmid, &file, None)?;
        if name.vtype != "images" && name.vtype != "iso" {
            return Err(Reply::param_error(
                key,
                "content type needs to be 'images' or 'iso'",
            ));
        }
    }
    if let Some(source) = drive.get("import-from") {
        if source.contains(':') {
            let name = volumes::parse(call, source)?;
            if name.vtype != "images" && name.vtype != "import" {
                return Err(Reply::param_error(
                    key,
                    &format!(
                        "{source} has wrong type '{}' - needs to be 'images' or 'import'",
                        name.vtype
                    ),
                ));
            }
            match name.owner {
                Some(owner) => call.check_vm(owner, &["VM.Clone"])?,
                None => {
                    volumes::check_access(call, vmid, source, None)?;
                }
            }
        } else {
            volumes::check_access(call, vmid, source, None)?;
        }
    }
    Ok(())
}

/// `$check_vm_modify_config_perm` for one option: what `/vms/{vmid}`
/// must grant (`any`: one of them), or root-only.
pub(super) fn check_option(call: &Call<'_>, vmid: u32, option: &str) -> Result<(), Reply> {
    const CPU: &[&str] = &[
        "cores",
        "cpu",
        "runningcpu",
        "cpulimit",
        "cpuunits",
        "numa",
        "smp",
        "sockets",
        "vcpus",
    ];
    const MEMORY: &[&str] = &["memory", "balloon", "shares", "allow-ksm"];
    const HWTYPE: &[&str] = &[
        "acpi",
        "hotplug",
        "kvm",
        "machine",
        "runningmachine",
        "scsihw",
        "smbios1",
        "tablet",
        "vga",
        "watchdog",
        "audio0",
        "rng0",
    ];
    const GENERAL: &[&str] = &[
        "agent",
        "autostart",
        "bios",
        "description",
        "keyboard",
        "localtime",
        "migrate_downtime",
        "migrate_speed",
        "name",
        "onboot",
        "ostype",
        "protection",
        "reboot",
        "startdate",
        "startup",
        "tdf",
        "template",
    ];
    const DISK: &[&str] = &["boot", "bootdisk", "vmstatestorage"];
    const CLOUDINIT: &[&str] = &[
        "cicustom",
        "cipassword",
        "citype",
        "ciuser",
        "ciupgrade",
        "nameserver",
        "searchdomain",
        "sshkeys",
    ];
    let indexed = |prefix: &str| {
        option
            .strip_prefix(prefix)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    let skipped = is_drive(option)
        || option == "cdrom"
        || option == "tags"
        || ["unused", "serial", "usb", "hostpci", "virtiofs"]
            .iter()
            .any(|p| indexed(p));
    if skipped {
        return Ok(());
    }
    let vm = format!("/vms/{vmid}");
    if CPU.contains(&option) || indexed("numa") {
        call.check(&vm, &["VM.Config.CPU"])
    } else if MEMORY.contains(&option) {
        call.check(&vm, &["VM.Config.Memory"])
    } else if HWTYPE.contains(&option) {
        call.check(&vm, &["VM.Config.HWType"])
    } else if GENERAL.contains(&option) {
        call.check(&vm, &["VM.Config.Options"])?;
        if option == "startup" {
            call.check("/", &["Sys.Modify"])?;
        }
        Ok(())
    } else if option == "freeze" {
        call.check(&vm, &["VM.PowerMgmt"])
    } else if DISK.contains(&option) {
        call.check(&vm, &["VM.Config.Disk"])
    } else if indexed("net") || option == "running-nets-host-mtu" {
        call.check(&vm, &["VM.Config.Network"])
    } else if CLOUDINIT.contains(&option) || indexed("ipconfig") {
        call.check_any(&vm, &["VM.Config.Cloudinit", "VM.Config.Network"])
    } else if option == "vmstate" {
        call.check(&vm, &["VM.Config.Disk", "VM.PowerMgmt"])
    } else {
        Err(Reply::error(format!("only root can set '{option}' config")))
    }
}

/// The checks for serial ports, USB, PCI and virtiofs devices on create:
/// a socket serial port needs VM.Config.HWType; host devices are
/// root-only (`$check_vm_create_serial_perm` and friends).
pub(super) fn check_devices(
    call: &Call<'_>,
    vmid: u32,
    key: &str,
    value: &str,
) -> Result<(), Reply> {
    if key.starts_with("serial") && value == "socket" {
        return call.check_vm(vmid, &["VM.Config.HWType"]);
    }
    if ["serial", "usb", "hostpci", "virtiofs"]
        .iter()
        .any(|p| key.starts_with(p))
    {
        return Err(Reply::error(format!(
            "only root can set '{key}' config for real devices"
        )));
    }
    Ok(())
}

/// The check of `$check_drive_perms` in `$update_vm_api`: CD-ROMs need
/// VM.Config.CDROM, cloud-init drives Cloudinit and CDROM, disks Disk.
pub(super) fn check_drive_perms(call: &Call<'_>, vmid: u32, value: &str) -> Result<(), Reply> {
    let drive = parse_drive(value).unwrap_or_default();
    if is_cloudinit(&drive) {
        call.check_vm(vmid, &["VM.Config.Cloudinit", "VM.Config.CDROM"])
    } else if is_cdrom(&drive) {
        call.check_vm(vmid, &["VM.Config.CDROM"])
    } else {
        call.check_vm(vmid, &["VM.Config.Disk"])
    }
}

/// `vmconfig_register_unused_drive`: a replaced or detached disk owned by
/// the VM becomes the lowest free `unusedN`.
pub(super) fn register_unused(config: &mut BTreeMap<String, String>, vmid: u32, value: &str) {
    let drive = parse_drive(value).unwrap_or_default();
    if is_cdrom(&drive) {
        return;
    }
    if let Some(file) = drive.get("file")
        && guests::owner(file) == Some(vmid)
    {
        add_unused(config, file);
    }
}

/// `create_disks` for one drive, in the worker: `STORAGE:SIZE` allocates
/// `vm-VMID-disk-N`, `STORAGE:0,import-from=VOLID` copies the source into
/// one, an existing volume gets its `size=`. Returns the drive as PVE
/// writes it.
pub(super) fn create_disk(
    call: &Call<'_>,
    state: &mut State,
    vmid: u32,
    key: &str,
    value: &str,
    default_storage: Option<&str>,
) -> Result<String, String> {
    let mut drive = parse_drive(value)?;
    let file = drive.get("file").cloned().unwrap_or_default();
    if file.is_empty() || file == "none" || file == "cdrom" {
        drive.remove("size");
        return Ok(print_drive(&drive));
    }
    if is_cloudinit(&drive) {
        return Err("kiln-pve-sim: cloud-init drives are not simulated".to_owned());
    }
    if let Some((storage, gib)) = new_disk(&file) {
        let storage_id = storage
            .as_deref()
            .or(default_storage)
            .ok_or("no storage ID specified (and no default storage)")?;
        let storage = call
            .shared
            .config
            .storage(storage_id)
            .ok_or_else(|| format!("storage '{storage_id}' does not exist"))?;
        let hint = drive.remove("format");
        let (volid, size) = if let Some(source) = drive.remove("import-from") {
            let missing =
                || format!("cannot import from '{source}' - volume '{source}' does not exist");
            let volume = state.volume(&source).cloned().ok_or_else(missing)?;
            let path = state.volume_path(&source).ok_or_else(missing)?;
            if volume.format == "ova" {
                return Err("kiln-pve-sim: importing from OVA archives is not simulated".into());
            }
            let size = volumes::virtual_size(&path, volume.size);
            let format = guests::resolve_format(storage, hint.as_deref().or(Some(&volume.format)));
            let volid =
                guests::alloc_volume(state, storage, vmid, format, size, "images", Some(path))?;
            (volid, size)
        } else {
            let size = match key {
                // OVMF::create_efidisk: the size of the OVMF vars template.
                "efidisk0" if drive.get("efitype").is_some_and(|t| t == "4m") => 540_672,
                "efidisk0" => 131_072,
                // Drive.pm TPMSTATE_DISK_SIZE
                "tpmstate0" => 4 << 20,
                _ => volumes::gib_to_bytes(&gib),
            };
            let format = guests::resolve_format(storage, hint.as_deref());
            let volid = guests::alloc_volume(state, storage, vmid, format, size, "images", None)?;
            (volid, size)
        };
        drive.insert("file".into(), volid);
        drive.insert("size".into(), format_size(size));
    } else {
        let volume = state
            .volume(&file)
            .cloned()
            .ok_or_else(|| format!("volume {file} does not exist"))?;
        if let Some(format) = drive.get("format")
            && *format != volume.format
            && volume.content != "iso"
        {
            return Err(format!(
                "drive '{key}' - volume '{file}' - 'format={format}' option different from storage format '{}'",
                volume.format
            ));
        }
        drive.insert("size".into(), format_size(volume.size));
    }
    Ok(print_drive(&drive))
}

/// `get_default_bootdevices`: the first disk, the first CD-ROM, the first
/// NIC, as `order=a;b;c`.
pub(super) fn default_boot(config: &BTreeMap<String, String>) -> String {
    let order: Vec<String> = [false, true]
        .into_iter()
        .filter_map(|cdrom| {
            drive_names().into_iter().find(|name| {
                config
                    .get(name)
                    .and_then(|v| parse_drive(v).ok())
                    .is_some_and(|d| is_cdrom(&d) == cdrom)
            })
        })
        .chain(
            (0..32)
                .map(|n| format!("net{n}"))
                .find(|n| config.contains_key(n)),
        )
        .collect();
    format!("order={}", order.join(";"))
}

/// `valid_drive_names_for_boot`, in PVE's order.
fn drive_names() -> Vec<String> {
    (0..4)
        .map(|n| format!("ide{n}"))
        .chain((0..31).map(|n| format!("scsi{n}")))
        .chain((0..16).map(|n| format!("virtio{n}")))
        .chain((0..6).map(|n| format!("sata{n}")))
        .collect()
}

/// The devices of `boot: order=...`.
pub(super) fn boot_order(config: &BTreeMap<String, String>) -> Vec<String> {
    config
        .get("boot")
        .and_then(|b| parse_property_string(b, Some("legacy")).ok())
        .and_then(|b| b.get("order").cloned())
        .map(|o| {
            o.split([';', ',', ' '])
                .filter(|d| !d.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// The boot disk's size in bytes (`bootdisk_size`), 0 without one.
pub(super) fn boot_disk_size(state: &State, config: &BTreeMap<String, String>) -> u64 {
    let order = boot_order(config);
    let candidates = if order.is_empty() {
        drive_names()
    } else {
        order
    };
    candidates
        .iter()
        .filter_map(|name| config.get(name).and_then(|v| parse_drive(v).ok()))
        .find(|d| !is_cdrom(d))
        .and_then(|d| d.get("file").and_then(|f| state.volume(f)).map(|v| v.size))
        .unwrap_or(0)
}
