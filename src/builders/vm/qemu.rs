//! Booting a built VM image locally under QEMU, attached the way Proxmox
//! attaches it: the machine type from `vm.json`, OVMF (4 MiB, Secure Boot
//! off, as the spec's `efidisk0` asks), the disk as `scsi0` on a
//! `virtio-scsi-pci` controller, and the seed as an IDE CD-ROM in slot
//! `ide2` (on q35: `ide-cd,bus=ide.1,unit=0`, an AHCI port; on i440fx the
//! PIIX controller's secondary master). The argument shapes follow
//! qemu-server's `PVE/QemuServer/DriveDevice.pm` (commit e6352be).

use std::ffi::OsString;
use std::path::Path;

use super::spec::VmSpec;

/// Where Debian's `ovmf` package puts the 4 MiB firmware.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
/// The matching variable store template (no keys enrolled).
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// `kvm` when this machine's CPU has hardware virtualisation and `/dev/kvm`
/// can be opened, else `tcg` (software emulation: slower, but it runs
/// anywhere). A `/dev/kvm` without `vmx`/`svm` in `/proc/cpuinfo` is not
/// trusted: some nested setups have the device and then fail on the first
/// instruction they cannot emulate.
pub fn accelerator() -> &'static str {
    let cpu_has = std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|info| {
        info.lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
    });
    let device = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if cpu_has && device { "kvm" } else { "tcg" }
}

/// What a local boot needs besides the spec.
pub struct Boot<'a> {
    /// The disk to boot: a copy or an overlay, since the guest writes to it
    /// (never the store's file).
    pub disk: &'a Path,
    pub disk_format: &'a str,
    pub seed: &'a Path,
    /// A writable copy of [`OVMF_VARS`].
    pub vars: &'a Path,
    /// Where the serial console goes.
    pub serial_log: &'a Path,
    /// `kvm` or `tcg` (see [`accelerator`]).
    pub accel: &'a str,
    /// Memory in MiB (the spec's is often more than a test machine has).
    pub memory_mib: u64,
    pub cpus: u32,
}

/// `qemu-system-x86_64` arguments for `boot` of the VM `spec`.
pub fn args(spec: &VmSpec, boot: &Boot<'_>) -> Vec<OsString> {
    let machine = spec.create.get("machine").map_or("q35", String::as_str);
    let mut args: Vec<OsString> = Vec::new();
    let mut push = |parts: &[&str]| args.extend(parts.iter().map(OsString::from));
    push(&["-machine", &format!("type={machine}"), "-accel", boot.accel]);
    push(&["-cpu", "max", "-smp", &boot.cpus.to_string()]);
    push(&["-m", &boot.memory_mib.to_string()]);
    push(&["-nodefaults", "-display", "none", "-no-reboot"]);
    let with_path = |prefix: String, path: &Path| {
        let mut arg = OsString::from(prefix);
        arg.push(path.as_os_str());
        arg
    };
    let flag = OsString::from;
    args.extend([
        flag("-drive"),
        with_path(
            "if=pflash,unit=0,format=raw,readonly=on,file=".into(),
            Path::new(OVMF_CODE),
        ),
        flag("-drive"),
        with_path("if=pflash,unit=1,format=raw,file=".into(), boot.vars),
        // scsi0 under virtio-scsi: a scsi-hd on a virtio-scsi-pci.
        flag("-device"),
        flag("virtio-scsi-pci,id=virtioscsi0"),
        flag("-drive"),
        with_path(
            format!("if=none,id=drive-scsi0,format={},file=", boot.disk_format),
            boot.disk,
        ),
        flag("-device"),
        flag("scsi-hd,bus=virtioscsi0.0,channel=0,scsi-id=0,lun=0,drive=drive-scsi0,id=scsi0,bootindex=100"),
        // ide2: controller 2/2 = 1, unit 0, on both machine types.
        flag("-drive"),
        with_path(
            "if=none,id=drive-ide2,media=cdrom,format=raw,readonly=on,file=".into(),
            boot.seed,
        ),
        flag("-device"),
        flag("ide-cd,bus=ide.1,unit=0,drive=drive-ide2,id=ide2"),
        flag("-chardev"),
        with_path("file,id=serial0,path=".into(), boot.serial_log),
        flag("-serial"),
        flag("chardev:serial0"),
    ]);
    args.extend(["-nic", "user,model=virtio-net-pci"].map(OsString::from));
    args
}
