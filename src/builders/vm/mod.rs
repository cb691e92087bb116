//! The `vm` builder: a cloud-init VM image for Proxmox from the locked
//! Debian package set and the host's overlay.
//!
//! ```text
//! scratch/rootfs    the LXC pipeline's root filesystem (bootstrap, hygiene,
//!                   overlay, first-boot SSH keys), then for a VM:
//!                   /etc/fstab by PARTUUID, cloud-init limited to NoCloud
//! scratch/*.img     ESP (systemd-boot, kernel, initrd) and ext4 root → disk.raw
//! OUT/disk.qcow2    qemu-img convert of the raw GPT disk (disk::build_raw)
//! OUT/disk.raw      only when asked for (`kiln build HOST#raw`)
//! OUT/seed.iso      the NoCloud seed (volume `cidata`), and its three files
//!                   in OUT/seed/ to read
//! OUT/vm.json       the Proxmox VM to create (spec::VmSpec)
//! OUT/manifest.json what is inside; OUT/sbom.spdx.json SPDX 2.3
//! ```
//!
//! The kernel and boot loader come from the image's own packages
//! (`linux-image-amd64`, `systemd-boot-efi`; `modules/vm.toml`), and the
//! build fails with advice when the kernel lacks a driver the VM needs to
//! read its disk and its seed on the machine type the VM spec names.
//! The seed's `instance-id` is this derivation's hash: a new generation is
//! a new instance, so cloud-init runs again on it.

pub mod disk;
pub mod qemu;
pub mod spec;

use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::builders::lxc::{self, LxcError, sbom};
use crate::eval::spec::SystemConfig;

pub const BUILDER: &str = "vm";
pub const VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(transparent)]
    Rootfs(#[from] LxcError),
    #[error("{0}")]
    Io(String),
    #[error("`{tool}` is not installed (Debian package `{package}`): apt-get install {package}")]
    MissingTool {
        tool: &'static str,
        package: &'static str,
    },
    #[error("{tool} failed: {message}")]
    Tool { tool: &'static str, message: String },
    #[error("disk: {0}")]
    Disk(String),
    #[error("boot: {problem}\n  hint: {hint}")]
    Boot { problem: String, hint: String },
    #[error("seed: {0}")]
    Seed(String),
}

/// Everything one VM image is built from.
pub struct VmInput<'a> {
    pub host: &'a str,
    /// The `overlay` output (the seed takes the files' bytes from it).
    pub overlay: &'a Path,
    pub epoch: u64,
    /// The derivation's hash: the seed's instance id, and in the manifest.
    pub derivation: &'a str,
    /// An empty scratch directory.
    pub work: &'a Path,
    pub source: Source<'a>,
    /// The host's evaluated configuration (for the seed and vm.json).
    pub config: &'a SystemConfig,
    /// Also write `disk.raw`.
    pub raw: bool,
}

/// Where the disk comes from.
pub enum Source<'a> {
    /// Built by kiln from a root filesystem made as for an LXC template
    /// (whose `template` name is not used).
    Rootfs(lxc::LxcInput<'a>),
    /// A vendor's cloud image (a pinned `url` input), passed through as
    /// qcow2; the seed configures it.
    Disk { image: &'a Path, format: &'a str },
}

#[derive(Debug, Serialize)]
struct Manifest<'a> {
    version: u32,
    host: &'a str,
    derivation: &'a str,
    epoch: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    kernel: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cmdline: Option<&'a str>,
    /// The vendor image the disk was converted from.
    #[serde(skip_serializing_if = "Option::is_none")]
    base: Option<FileEntry<'a>>,
    disk: FileEntry<'a>,
    virtual_size: u64,
    seed: FileEntry<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    debian: Option<&'a lxc::DebianParams>,
    packages: &'a [sbom::Installed],
    hygiene: &'a [lxc::hygiene::Removal],
}

#[derive(Debug, Serialize)]
struct FileEntry<'a> {
    name: &'a str,
    sha256: String,
    size: u64,
}

/// Build the VM image into `out` (a new directory).
pub fn build(input: &VmInput<'_>, out: &Path) -> Result<(), VmError> {
    let host = input.host;
    let epoch = input.epoch;
    fs::create_dir(out).map_err(io(out))?;
    let spec = spec::VmSpec::from_config(host, input.config, "disk.qcow2", "seed.iso");
    let seed_iso = write_seed(input, &spec, out)?;
    let qcow2 = out.join("disk.qcow2");
    let mut built = None;
    let mut virtual_size = 0;
    match &input.source {
        Source::Rootfs(rootfs_input) => {
            let b = build_disk(rootfs_input, input, &qcow2, out)?;
            virtual_size = b.virtual_size;
            built = Some(b);
        }
        Source::Disk { image, format } => {
            disk::ensure_standalone(image, format, epoch)?;
            disk::convert(image, format, &qcow2, "qcow2", epoch)?;
            if input.raw {
                disk::convert(image, format, &out.join("disk.raw"), "raw", epoch)?;
            }
        }
    }
    if virtual_size == 0 {
        virtual_size = disk::virtual_size(&qcow2, epoch)?;
    }

    let disk_sha256 = sha256_file(&qcow2)?;
    let (packages, removed, debian): (&[sbom::Installed], &[lxc::hygiene::Removal], _) =
        match (&built, &input.source) {
            (Some(b), Source::Rootfs(rootfs_input)) => (
                &b.prepared.packages,
                &b.prepared.removed,
                match &rootfs_input.base {
                    lxc::Base::Debian { debian, .. } => Some(*debian),
                    lxc::Base::Tarball { .. } => None,
                },
            ),
            _ => (&[], &[], None),
        };
    let base = match &input.source {
        Source::Disk { image, .. } => Some(FileEntry {
            // The store path's name, without its hash.
            name: image
                .file_name()
                .and_then(|n| n.to_str())
                .map_or("base", |n| n.split_once('-').map_or(n, |(_, name)| name)),
            sha256: sha256_file(image)?,
            size: file_size(image)?,
        }),
        Source::Rootfs(_) => None,
    };
    let manifest = Manifest {
        version: 1,
        host,
        derivation: input.derivation,
        epoch,
        kernel: built.as_ref().map(|b| b.kernel.as_str()),
        cmdline: built.as_ref().map(|b| b.cmdline.as_str()),
        base,
        disk: FileEntry {
            name: "disk.qcow2",
            sha256: disk_sha256.clone(),
            size: file_size(&qcow2)?,
        },
        virtual_size,
        seed: FileEntry {
            name: "seed.iso",
            sha256: sha256_file(&seed_iso)?,
            size: file_size(&seed_iso)?,
        },
        debian,
        packages,
        hygiene: removed,
    };
    write_json(&out.join("vm.json"), &spec)?;
    write_json(&out.join("manifest.json"), &manifest)?;
    let spdx = sbom::spdx("disk.qcow2", &disk_sha256, packages, debian, epoch);
    write_json(&out.join("sbom.spdx.json"), &spdx)?;
    Ok(())
}

/// The seed: its three files in `out/seed/` and `out/seed.iso`.
fn write_seed(input: &VmInput<'_>, spec: &spec::VmSpec, out: &Path) -> Result<PathBuf, VmError> {
    let instance_id = format!("kiln-{}", input.derivation);
    let seed = crate::builders::seed::render(&crate::builders::seed::SeedInput {
        host: input.host,
        config: input.config,
        instance_id: &instance_id,
        macs: &spec.macs,
        overlay: input.overlay,
    })
    .map_err(|e| VmError::Seed(e.to_string()))?;
    let seed_dir = out.join("seed");
    fs::create_dir(&seed_dir).map_err(io(&seed_dir))?;
    for (name, text) in [
        ("user-data", &seed.user_data),
        ("meta-data", &seed.meta_data),
        ("network-config", &seed.network_config),
    ] {
        fs::write(seed_dir.join(name), text).map_err(io(&seed_dir))?;
    }
    let seed_iso = out.join("seed.iso");
    let seed_work = input.work.join("seed");
    fs::create_dir_all(&seed_work).map_err(io(&seed_work))?;
    crate::builders::seed::write_iso(&seed, &seed_work, &seed_iso, input.epoch)
        .map_err(|e| VmError::Seed(e.to_string()))?;
    Ok(seed_iso)
}

/// What building a disk from a rootfs leaves for the manifest.
struct BuiltDisk {
    prepared: lxc::Prepared,
    kernel: String,
    cmdline: String,
    virtual_size: u64,
}

/// The rootfs, made bootable, as a GPT disk in `qcow2` (and `out/disk.raw`
/// when asked for).
fn build_disk(
    rootfs_input: &lxc::LxcInput<'_>,
    input: &VmInput<'_>,
    qcow2: &Path,
    out: &Path,
) -> Result<BuiltDisk, VmError> {
    let prepared = lxc::prepare(rootfs_input)?;
    let rootfs = &prepared.rootfs;
    let identity = disk::Identity::derive(input.host);
    let kernel = Kernel::find(rootfs)?;
    kernel.check_drivers(&input.config.proxmox.machine, &input.config.proxmox.scsihw)?;
    let loader = rootfs.join("usr/lib/systemd/boot/efi/systemd-bootx64.efi");
    if !loader.is_file() {
        return Err(VmError::Boot {
            problem: "the image has no UEFI boot loader (/usr/lib/systemd/boot/efi/systemd-bootx64.efi)".into(),
            hint: "add `systemd-boot-efi` to the host's packages (the example fleet's modules/vm.toml does)".into(),
        });
    }
    configure_guest(rootfs, &identity)?;
    let cmdline = format!(
        "root=PARTUUID={} ro console=tty0 console=ttyS0,115200n8",
        identity.root_partuuid
    );
    let layout = disk::layout(disk::tree_size(rootfs)?);
    let raw = if input.raw {
        out.join("disk.raw")
    } else {
        input.work.join("disk.raw")
    };
    let title = format!("{} (kiln)", input.host);
    let boot = disk::Boot {
        loader: &loader,
        kernel: &kernel.image,
        initrd: &kernel.initrd,
        cmdline: &cmdline,
        title: &title,
    };
    disk::build_raw(
        rootfs,
        &boot,
        &identity,
        layout,
        input.epoch,
        input.work,
        &raw,
    )?;
    disk::convert(&raw, "raw", qcow2, "qcow2", input.epoch)?;
    if !input.raw {
        fs::remove_file(&raw).map_err(io(&raw))?;
    }
    Ok(BuiltDisk {
        kernel: kernel.version.clone(),
        cmdline,
        virtual_size: layout.disk_size,
        prepared,
    })
}

/// The image's one kernel and its initramfs.
struct Kernel {
    version: String,
    image: PathBuf,
    initrd: PathBuf,
    modules: PathBuf,
}

impl Kernel {
    fn find(rootfs: &Path) -> Result<Kernel, VmError> {
        let boot = rootfs.join("boot");
        let mut versions: Vec<String> = fs::read_dir(&boot)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter_map(|e| {
                        e.file_name()
                            .to_str()
                            .and_then(|n| n.strip_prefix("vmlinuz-"))
                            .map(str::to_owned)
                    })
                    .collect()
            })
            .unwrap_or_default();
        versions.sort();
        let version = match versions.as_slice() {
            [one] => one.clone(),
            [] => {
                return Err(VmError::Boot {
                    problem: "the image has no kernel (/boot/vmlinuz-*)".into(),
                    hint: "add `linux-image-amd64` to the host's packages (the example fleet's modules/vm.toml does)".into(),
                });
            }
            many => {
                return Err(VmError::Boot {
                    problem: format!("the image has several kernels: {}", many.join(", ")),
                    hint: "install one kernel package".into(),
                });
            }
        };
        let initrd = boot.join(format!("initrd.img-{version}"));
        if !initrd.is_file() {
            return Err(VmError::Boot {
                problem: format!("no initramfs for kernel {version} (/boot/initrd.img-{version})"),
                hint: "the kernel package's hooks make it; make sure `initramfs-tools` is installed (linux-image-amd64 recommends it)".into(),
            });
        }
        Ok(Kernel {
            image: boot.join(format!("vmlinuz-{version}")),
            initrd,
            modules: rootfs.join("usr/lib/modules").join(&version),
            version,
        })
    }

    /// Fail unless the kernel can drive the disk controller and the seed's
    /// CD-ROM on this machine type (built in, or a module udev will load).
    fn check_drivers(&self, machine: &str, scsihw: &str) -> Result<(), VmError> {
        let builtin = fs::read_to_string(self.modules.join("modules.builtin")).unwrap_or_default();
        let modules = fs::read_to_string(self.modules.join("modules.dep")).unwrap_or_default();
        let has = |name: &str| {
            let file = format!("/{name}.ko");
            builtin
                .lines()
                .chain(modules.lines().filter_map(|l| l.split(':').next()))
                .any(|path| path.ends_with(&file) || path.contains(&format!("{file}.")))
        };
        let ide = if machine == "q35" { "ahci" } else { "ata_piix" };
        let disk = match scsihw {
            "virtio-scsi-single" | "virtio-scsi-pci" => "virtio_scsi",
            "lsi" => "mptspi",
            "pvscsi" => "vmw_pvscsi",
            _ => "virtio_scsi",
        };
        let needed = [
            (
                ide,
                format!("the seed's CD-ROM (Proxmox attaches it as ide2, on {machine})"),
            ),
            ("sr_mod", "the seed's CD-ROM".to_owned()),
            ("isofs", "the seed's ISO 9660 file system".to_owned()),
            (disk, format!("the boot disk (scsihw {scsihw})")),
            ("ext4", "the root file system".to_owned()),
        ];
        let missing: Vec<String> = needed
            .iter()
            .filter(|(module, _)| !has(module))
            .map(|(module, why)| format!("`{module}` (for {why})"))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(VmError::Boot {
            problem: format!(
                "kernel {} has no driver {}",
                self.version,
                missing.join(", ")
            ),
            hint: "use `linux-image-amd64` (linux-image-cloud-amd64 lacks AHCI, which q35's CD-ROM needs), or set `proxmox.machine`/`proxmox.scsihw` to hardware the kernel supports".into(),
        })
    }
}

/// What a VM guest needs in its rootfs that a container does not.
fn configure_guest(rootfs: &Path, identity: &disk::Identity) -> Result<(), VmError> {
    let fstab = lxc::apply::resolve(rootfs, "/etc/fstab")?;
    fs::write(
        &fstab,
        format!(
            "# Written by kiln: the disk's partitions, by their fixed PARTUUIDs.\n\
             PARTUUID={} / ext4 defaults,errors=remount-ro 0 1\n\
             PARTUUID={} /boot/efi vfat umask=0077,nofail 0 2\n",
            identity.root_partuuid, identity.esp_partuuid
        ),
    )
    .map_err(io(&fstab))?;
    fs::set_permissions(&fstab, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .map_err(io(&fstab))?;
    let efi = lxc::apply::resolve(rootfs, "/boot/efi")?;
    fs::create_dir_all(&efi).map_err(io(&efi))?;
    // cloud-init: only the NoCloud seed kiln attaches (no probing of cloud
    // metadata services on a LAN).
    let cloud = lxc::apply::resolve(rootfs, "/etc/cloud/cloud.cfg.d")?;
    if cloud.is_dir() {
        let file = cloud.join("90-kiln-datasource.cfg");
        fs::write(
            &file,
            "# Written by kiln: the seed is a NoCloud CD-ROM (volume cidata).\n\
             datasource_list: [ NoCloud, None ]\n",
        )
        .map_err(io(&file))?;
    }
    Ok(())
}

fn sha256_file(path: &Path) -> Result<String, VmError> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut file = fs::File::open(path).map_err(io(path))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer).map_err(io(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(crate::plan::derivation::hex(&hasher.finalize()))
}

fn file_size(path: &Path) -> Result<u64, VmError> {
    Ok(fs::metadata(path).map_err(io(path))?.len())
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), VmError> {
    let mut text = serde_json::to_string_pretty(value).map_err(|e| VmError::Io(e.to_string()))?;
    text.push('\n');
    fs::write(path, text).map_err(io(path))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> VmError + '_ {
    move |e| VmError::Io(format!("{}: {e}", path.display()))
}
