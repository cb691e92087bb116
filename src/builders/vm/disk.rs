//! A UEFI-bootable GPT disk from a root filesystem tree, without loop
//! devices, mounts or a VM, byte-identical on every build.
//!
//! ```text
//! sector 0..2048         protective MBR + GPT (sfdisk, fixed disk and partition GUIDs)
//! partition 1  ESP       FAT32 (mkfs.vfat --invariant, files placed with mtools):
//!                        EFI/BOOT/BOOTX64.EFI   systemd-boot, from the image's packages
//!                        loader/loader.conf, loader/entries/kiln.conf
//!                        kiln/vmlinuz, kiln/initrd.img
//! partition 2  root      ext4 (mke2fs -d with a fixed UUID, hash seed and time;
//!                        then every inode's ctime and atime set by debugfs)
//! backup GPT
//! ```
//!
//! Determinism, tool by tool (see docs/src/vm.md and the measurements in
//! ARCHITECTURE's reproducibility rules):
//! - mke2fs reads its defaults from `/etc/mke2fs.conf`, which differs
//!   between machines; kiln hands it its own (`MKE2FS_CONFIG`). It takes
//!   the file system's times from `E2FSPROGS_FAKE_TIME`, but copies each
//!   inode's mtime, ctime and atime from the source tree, where files made
//!   during the build carry the time of the build: debugfs then sets all
//!   three to the epoch (as the LXC template's archive does for mtimes).
//!   It adds directory entries in `alphasort` order, which `LC_ALL=C`
//!   makes bytewise.
//! - mtools stamps FAT entries in *local* time from `SOURCE_DATE_EPOCH`:
//!   every tool runs with `TZ=UTC` and `LC_ALL=C`.
//! - The raw disk is assembled here, copying only the data extents of each
//!   partition image (the rest stays a hole), and converted with
//!   `qemu-img convert -O qcow2` (never `-W`, which reorders writes).

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use super::VmError;

/// Sector size of the disk.
const SECTOR: u64 = 512;
/// Where the first partition starts and the alignment of every partition.
const ALIGN: u64 = 1 << 20;
/// Size of the EFI system partition.
pub const ESP_SIZE: u64 = 256 << 20;
/// Room the backup GPT needs at the end of the disk.
const GPT_TAIL: u64 = 1 << 20;

/// GPT partition type: EFI system partition.
const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
/// GPT partition type: Linux root (x86-64), from the Discoverable
/// Partitions Specification, so systemd finds it without an fstab entry.
const ROOT_TYPE: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";

/// The identifiers a disk is built with, derived from a seed string so the
/// same host always gets the same ones (and fstab can name them before the
/// disk exists).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub disk_guid: String,
    pub esp_partuuid: String,
    pub root_partuuid: String,
    /// The ext4 file system's UUID (also its directory hash seed).
    pub root_fs_uuid: String,
    /// The FAT volume id, 8 hex digits.
    pub esp_volume_id: String,
}

impl Identity {
    pub fn derive(seed: &str) -> Identity {
        let uuid = |role: &str| {
            let digest = Sha256::digest(format!("kiln-vm-disk-v1:{seed}:{role}"));
            let mut bytes = [0u8; 16];
            bytes.copy_from_slice(&digest[..16]);
            // RFC 4122 version 5-style layout (name-based), variant 1.
            bytes[6] = (bytes[6] & 0x0f) | 0x50;
            bytes[8] = (bytes[8] & 0x3f) | 0x80;
            let hex = crate::plan::derivation::hex(&bytes);
            format!(
                "{}-{}-{}-{}-{}",
                &hex[..8],
                &hex[8..12],
                &hex[12..16],
                &hex[16..20],
                &hex[20..]
            )
        };
        let volume = Sha256::digest(format!("kiln-vm-disk-v1:{seed}:esp-volume"));
        Identity {
            disk_guid: uuid("disk"),
            esp_partuuid: uuid("esp"),
            root_partuuid: uuid("root"),
            root_fs_uuid: uuid("root-fs"),
            esp_volume_id: crate::plan::derivation::hex(&volume[..4]),
        }
    }
}

/// What goes on the ESP besides the boot loader.
pub struct Boot<'a> {
    /// systemd-boot's EFI binary (from the rootfs).
    pub loader: &'a Path,
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    /// The kernel command line.
    pub cmdline: &'a str,
    /// The boot menu entry's title.
    pub title: &'a str,
}

/// The sizes chosen for a disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub root_size: u64,
    pub disk_size: u64,
}

/// The root partition's size for a tree of `used` bytes: the tree plus a
/// quarter, plus 512 MiB, in whole 64 MiB. Proxmox grows the disk to the
/// host's `proxmox.disk` on deploy and cloud-init grows the partition and
/// file system on first boot, so the image itself stays small.
pub fn layout(used: u64) -> Layout {
    let step = 64 << 20;
    let root_size = (used + used / 4 + (512 << 20)).div_ceil(step) * step;
    Layout {
        root_size,
        disk_size: ALIGN + ESP_SIZE + root_size + GPT_TAIL,
    }
}

/// Bytes a tree needs on ext4, from what is in it and not from how the
/// build machine's file system stored it: each regular file's size in
/// whole 4 KiB blocks (hard links once), and a block for every other inode.
pub fn tree_size(root: &Path) -> Result<u64, VmError> {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    let mut total = 0u64;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).map_err(io(&dir))? {
            let entry = entry.map_err(io(&dir))?;
            let meta = entry.metadata().map_err(io(&entry.path()))?;
            if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
                continue;
            }
            total += if meta.is_file() {
                meta.len().div_ceil(4096) * 4096
            } else {
                4096
            };
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    Ok(total)
}

/// Build `out` (a raw disk image) from `rootfs` and `boot` in `work`.
pub fn build_raw(
    rootfs: &Path,
    boot: &Boot<'_>,
    identity: &Identity,
    layout: Layout,
    epoch: u64,
    work: &Path,
    out: &Path,
) -> Result<(), VmError> {
    let esp = work.join("esp.img");
    make_esp(&esp, boot, identity, epoch, work)?;
    let root = work.join("root.img");
    make_root(&root, rootfs, identity, layout.root_size, epoch, work)?;

    let file = File::create(out).map_err(io(out))?;
    file.set_len(layout.disk_size).map_err(io(out))?;
    drop(file);
    partition(out, identity, layout, epoch)?;
    let mut disk = fs::OpenOptions::new()
        .write(true)
        .open(out)
        .map_err(io(out))?;
    copy_extents(&esp, &mut disk, ALIGN)?;
    copy_extents(&root, &mut disk, ALIGN + ESP_SIZE)?;
    disk.sync_all().map_err(io(out))?;
    Ok(())
}

/// `qemu-img convert -f FROM_FORMAT -O TO_FORMAT`: deterministic as long
/// as writes stay in order (no `-W`).
pub fn convert(
    from: &Path,
    from_format: &str,
    to: &Path,
    to_format: &str,
    epoch: u64,
) -> Result<(), VmError> {
    let mut command = tool("qemu-img", epoch);
    command.args(["convert", "-f", from_format, "-O", to_format]);
    if to_format == "qcow2" {
        command.args(["-o", "compat=1.1"]);
    }
    command.arg(from).arg(to);
    run(command, "qemu-img")
}

/// Refuse a vendor image that is not what its pin says, or that refers to
/// other files: qemu-img would follow a qcow2's backing file or external
/// data file anywhere on the build machine.
pub fn ensure_standalone(image: &Path, format: &str, epoch: u64) -> Result<(), VmError> {
    let mut command = tool("qemu-img", epoch);
    command
        .args(["info", "--output=json", "-f", format])
        .arg(image);
    let output = output(command, "qemu-img")?;
    let info: serde_json::Value = serde_json::from_slice(&output.stdout)
        .map_err(|e| VmError::Disk(format!("qemu-img info: {e}")))?;
    if info.get("backing-filename").is_some()
        || info["format-specific"]["data"]["data-file"].is_string()
    {
        return Err(VmError::Disk(format!(
            "{}: the image refers to another file (a backing or data file); kiln takes self-contained images only",
            image.display()
        )));
    }
    Ok(())
}

/// The size of the disk an image describes (`qemu-img info`).
pub fn virtual_size(image: &Path, epoch: u64) -> Result<u64, VmError> {
    let mut command = tool("qemu-img", epoch);
    command.args(["info", "--output=json"]).arg(image);
    let output = output(command, "qemu-img")?;
    let info: serde_json::Value = serde_json::from_slice(&output.stdout)
        .map_err(|e| VmError::Disk(format!("qemu-img info: {e}")))?;
    info["virtual-size"]
        .as_u64()
        .ok_or_else(|| VmError::Disk("qemu-img info: no virtual-size".into()))
}

/// The GPT, written by sfdisk from a script with every identifier fixed.
fn partition(disk: &Path, identity: &Identity, layout: Layout, epoch: u64) -> Result<(), VmError> {
    let mut script = String::new();
    let _ = writeln!(script, "label: gpt");
    let _ = writeln!(script, "label-id: {}", identity.disk_guid.to_uppercase());
    let _ = writeln!(script, "unit: sectors");
    let _ = writeln!(script, "first-lba: {}", ALIGN / SECTOR);
    let _ = writeln!(
        script,
        "start={}, size={}, type={ESP_TYPE}, uuid={}, name=\"esp\"",
        ALIGN / SECTOR,
        ESP_SIZE / SECTOR,
        identity.esp_partuuid.to_uppercase()
    );
    let _ = writeln!(
        script,
        "start={}, size={}, type={ROOT_TYPE}, uuid={}, name=\"root\"",
        (ALIGN + ESP_SIZE) / SECTOR,
        layout.root_size / SECTOR,
        identity.root_partuuid.to_uppercase()
    );
    let mut command = tool("sfdisk", epoch);
    command
        .args([
            "--quiet",
            "--no-reread",
            "--no-tell-kernel",
            "--wipe",
            "always",
        ])
        .arg(disk)
        .stdin(std::process::Stdio::piped());
    run_with_input(command, "sfdisk", script.as_bytes())
}

/// The EFI system partition image.
fn make_esp(
    esp: &Path,
    boot: &Boot<'_>,
    identity: &Identity,
    epoch: u64,
    work: &Path,
) -> Result<(), VmError> {
    let file = File::create(esp).map_err(io(esp))?;
    file.set_len(ESP_SIZE).map_err(io(esp))?;
    drop(file);
    let mut mkfs = tool("mkfs.vfat", epoch);
    mkfs.args(["-F", "32", "-n", "ESP", "--invariant", "-i"])
        .arg(&identity.esp_volume_id)
        .arg(esp);
    run(mkfs, "mkfs.vfat")?;

    // Files to place, made in scratch with fixed mtimes (`mcopy -m` keeps them).
    let staging = work.join("esp");
    let loader_conf = "default kiln.conf\ntimeout 0\nconsole-mode keep\neditor no\n";
    let entry = format!(
        "title {}\nlinux /kiln/vmlinuz\ninitrd /kiln/initrd.img\noptions {}\n",
        boot.title, boot.cmdline
    );
    let files: [(&str, Source<'_>); 5] = [
        ("EFI/BOOT/BOOTX64.EFI", Source::Copy(boot.loader)),
        ("loader/loader.conf", Source::Text(loader_conf)),
        ("loader/entries/kiln.conf", Source::Text(&entry)),
        ("kiln/vmlinuz", Source::Copy(boot.kernel)),
        ("kiln/initrd.img", Source::Copy(boot.initrd)),
    ];
    let mut dirs = std::collections::BTreeSet::new();
    for (name, source) in &files {
        let path = staging.join(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io(parent))?;
        }
        match source {
            Source::Copy(from) => {
                fs::copy(from, &path).map_err(io(from))?;
            }
            Source::Text(text) => fs::write(&path, text).map_err(io(&path))?,
        }
        set_mtime(&path, epoch)?;
        let mut dir = Path::new(name).parent();
        while let Some(d) = dir.filter(|d| !d.as_os_str().is_empty()) {
            dirs.insert(d.to_path_buf());
            dir = d.parent();
        }
    }
    // Parents first (BTreeSet order puts `a` before `a/b`).
    let mut mmd = tool("mmd", epoch);
    mmd.arg("-i").arg(esp);
    for dir in &dirs {
        mmd.arg(format!("::/{}", dir.display()));
    }
    run(mmd, "mmd")?;
    for (name, _) in &files {
        let mut mcopy = tool("mcopy", epoch);
        mcopy
            .args(["-m", "-i"])
            .arg(esp)
            .arg(staging.join(name))
            .arg(format!("::/{name}"));
        run(mcopy, "mcopy")?;
    }
    Ok(())
}

enum Source<'a> {
    Copy(&'a Path),
    Text(&'a str),
}

/// The ext4 root file system image.
fn make_root(
    image: &Path,
    rootfs: &Path,
    identity: &Identity,
    size: u64,
    epoch: u64,
    work: &Path,
) -> Result<(), VmError> {
    // kiln's own mke2fs.conf: the build machine's /etc/mke2fs.conf must not
    // change the bytes.
    let config = work.join("mke2fs.conf");
    fs::write(
        &config,
        "[defaults]\n\tbase_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr\n\
         \tdefault_mntopts = acl,user_xattr\n\tenable_periodic_fsck = 0\n\tblocksize = 4096\n\
         \tinode_size = 256\n\tinode_ratio = 16384\n\n[fs_types]\n\text4 = {\n\t\t\
         features = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize\n\t}\n",
    )
    .map_err(io(&config))?;
    let file = File::create(image).map_err(io(image))?;
    file.set_len(size).map_err(io(image))?;
    drop(file);
    let mut mke2fs = tool("mke2fs", epoch);
    mke2fs
        .env("MKE2FS_CONFIG", &config)
        .args(["-q", "-F", "-t", "ext4", "-L", "root", "-U"])
        .arg(&identity.root_fs_uuid)
        .arg("-E")
        .arg(format!("hash_seed={}", identity.root_fs_uuid))
        .arg("-d")
        .arg(rootfs)
        .arg(image);
    run(mke2fs, "mke2fs")?;

    // mke2fs copied each inode's times from the tree, where files made
    // during the build have the build's time: set them all to the epoch,
    // as the LXC template's archive does.
    let mut commands = String::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(relative) = stack.pop() {
        let path = rootfs.join(&relative);
        let name = relative.to_str().ok_or_else(|| {
            VmError::Disk(format!(
                "{}: a file name that is not UTF-8 cannot be placed on the disk",
                path.display()
            ))
        })?;
        if name.contains(['\n', '\r']) {
            return Err(VmError::Disk(format!(
                "{}: a file name with a line break cannot be placed on the disk",
                path.display()
            )));
        }
        let quoted = format!("\"/{}\"", name.replace('"', "\"\""));
        for field in ["mtime", "ctime", "atime"] {
            let _ = writeln!(commands, "sif {quoted} {field} @{epoch}");
        }
        let meta = fs::symlink_metadata(&path).map_err(io(&path))?;
        if meta.is_dir() {
            let mut names: Vec<_> = fs::read_dir(&path)
                .map_err(io(&path))?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<Result<_, _>>()
                .map_err(io(&path))?;
            names.sort();
            for child in names.into_iter().rev() {
                stack.push(relative.join(child));
            }
        }
    }
    let commands_file = work.join("debugfs.cmds");
    fs::write(&commands_file, commands).map_err(io(&commands_file))?;
    let mut debugfs = tool("debugfs", epoch);
    debugfs.arg("-w").arg("-f").arg(&commands_file).arg(image);
    let output = output(debugfs, "debugfs")?;
    // debugfs reports a failed command on stderr and still exits 0.
    let errors: Vec<&str> = std::str::from_utf8(&output.stderr)
        .unwrap_or("")
        .lines()
        .filter(|line| !line.starts_with("debugfs ") && !line.trim().is_empty())
        .collect();
    if !errors.is_empty() {
        return Err(VmError::Disk(format!(
            "debugfs could not set inode times: {}",
            errors
                .iter()
                .take(5)
                .copied()
                .collect::<Vec<_>>()
                .join("; ")
        )));
    }
    let mut fsck = tool("e2fsck", epoch);
    fsck.args(["-f", "-n"]).arg(image);
    run(fsck, "e2fsck")
}

/// Copy the data extents of `from` into `to` at `offset`; holes stay holes.
fn copy_extents(from: &Path, to: &mut File, offset: u64) -> Result<(), VmError> {
    let mut source = File::open(from).map_err(io(from))?;
    let len = source.metadata().map_err(io(from))?.len();
    let mut position = 0u64;
    let mut buffer = vec![0u8; 1 << 20];
    while position < len {
        let data = match rustix::fs::seek(&source, rustix::fs::SeekFrom::Data(position)) {
            Ok(data) => data,
            // ENXIO: no data after `position`.
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(io(from)(e.into())),
        };
        let hole = rustix::fs::seek(&source, rustix::fs::SeekFrom::Hole(data))
            .map_err(|e| io(from)(e.into()))?
            .min(len);
        source.seek(SeekFrom::Start(data)).map_err(io(from))?;
        to.seek(SeekFrom::Start(offset + data))
            .map_err(|e| VmError::Disk(format!("disk image: {e}")))?;
        let mut left = hole - data;
        while left > 0 {
            let n = buffer
                .len()
                .min(usize::try_from(left).unwrap_or(usize::MAX));
            source.read_exact(&mut buffer[..n]).map_err(io(from))?;
            to.write_all(&buffer[..n])
                .map_err(|e| VmError::Disk(format!("disk image: {e}")))?;
            left -= n as u64;
        }
        position = hole;
    }
    Ok(())
}

fn set_mtime(path: &Path, epoch: u64) -> Result<(), VmError> {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(epoch);
    File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_times(fs::FileTimes::new().set_modified(time).set_accessed(time)))
        .map_err(io(path))
}

/// A command for one of the disk tools, with an environment that makes its
/// output depend on nothing but its arguments.
fn tool(name: &str, epoch: u64) -> Command {
    let mut command = Command::new(name);
    command
        .env("TZ", "UTC")
        .env("LC_ALL", "C")
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .env("E2FSPROGS_FAKE_TIME", epoch.to_string())
        .stdin(std::process::Stdio::null());
    command
}

/// The Debian package each disk tool comes from.
pub(crate) fn package_of(tool: &str) -> &'static str {
    match tool {
        "mkfs.vfat" => "dosfstools",
        "mmd" | "mcopy" => "mtools",
        "mke2fs" | "debugfs" | "e2fsck" => "e2fsprogs",
        "sfdisk" => "fdisk",
        "qemu-img" => "qemu-utils",
        "xorriso" => "xorriso",
        _ => "?",
    }
}

fn output(mut command: Command, name: &'static str) -> Result<std::process::Output, VmError> {
    command.stdout(std::process::Stdio::piped());
    command.stderr(std::process::Stdio::piped());
    let output = command.output().map_err(|e| spawn_error(name, &e))?;
    if !output.status.success() {
        return Err(VmError::Tool {
            tool: name,
            message: format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    Ok(output)
}

fn run(command: Command, name: &'static str) -> Result<(), VmError> {
    output(command, name).map(drop)
}

fn run_with_input(mut command: Command, name: &'static str, input: &[u8]) -> Result<(), VmError> {
    command.stdout(std::process::Stdio::piped());
    command.stderr(std::process::Stdio::piped());
    let mut child = command.spawn().map_err(|e| spawn_error(name, &e))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input).map_err(|e| VmError::Tool {
            tool: name,
            message: format!("writing its input: {e}"),
        })?;
    }
    let output = child.wait_with_output().map_err(|e| VmError::Tool {
        tool: name,
        message: e.to_string(),
    })?;
    if !output.status.success() {
        return Err(VmError::Tool {
            tool: name,
            message: format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    Ok(())
}

fn spawn_error(name: &'static str, error: &std::io::Error) -> VmError {
    if error.kind() == std::io::ErrorKind::NotFound {
        VmError::MissingTool {
            tool: name,
            package: package_of(name),
        }
    } else {
        VmError::Tool {
            tool: name,
            message: error.to_string(),
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> VmError + '_ {
    move |e| VmError::Io(format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_stable_and_well_formed() {
        let a = Identity::derive("docker-host");
        assert_eq!(a, Identity::derive("docker-host"));
        assert_ne!(a.root_partuuid, Identity::derive("db").root_partuuid);
        let uuid = regex::Regex::new(
            "^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$",
        )
        .unwrap();
        for id in [
            &a.disk_guid,
            &a.esp_partuuid,
            &a.root_partuuid,
            &a.root_fs_uuid,
        ] {
            assert!(uuid.is_match(id), "{id}");
        }
        assert_eq!(a.esp_volume_id.len(), 8);
    }

    #[test]
    fn layout_rounds_and_leaves_room() {
        let l = layout(1 << 30);
        assert_eq!(l.root_size % (64 << 20), 0);
        assert!(l.root_size >= (1 << 30) + (1 << 28) + (512 << 20));
        assert_eq!(l.disk_size, ALIGN + ESP_SIZE + l.root_size + GPT_TAIL);
    }
}
