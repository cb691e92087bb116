//! The `lxc` builder: a Proxmox container template from the locked Debian
//! package set and the host's overlay.
//!
//! ```text
//! scratch/repo      flat APT repository: the fetched .debs + Packages/Release
//! scratch/rootfs    mmdebstrap --variant=V --include=… from it, network closed
//!                   → hygiene (identity and build leftovers removed)
//!                   → the overlay laid over it (accounts, files, units)
//!                   → a first-boot unit that generates SSH host keys
//! OUT/NAME_VERSION_amd64.tar.zst   packed by crate::archive (sorted, mtimes
//!                                  = SOURCE_DATE_EPOCH, numeric owners, xattrs)
//! OUT/manifest.json                what is inside and what hygiene removed
//! OUT/sbom.spdx.json               SPDX 2.3 SBOM of the installed packages
//! ```
//!
//! then the template is read back and linted as Proxmox would ([`lint`]).
//! It needs root (mmdebstrap `--mode=root`, chroot, owners and device nodes).

mod accounts;
pub(crate) mod apply;
mod bootstrap;
pub mod hygiene;
pub mod lint;
pub mod sbom;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::lock::DebianPackage;

/// The builder's name and version in derivations.
pub const BUILDER: &str = "lxc";
pub const VERSION: u32 = 1;

/// The Debian parameters of the set (from the lockfile entry).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebianParams {
    pub suite: String,
    pub architecture: String,
    pub mirror: String,
    pub components: Vec<String>,
    pub variant: String,
    pub requested: Vec<String>,
}

/// Where the root filesystem starts.
pub enum Base<'a> {
    /// Bootstrapped with mmdebstrap from the locked package set.
    Debian {
        debian: &'a DebianParams,
        packages: &'a [DebianPackage],
        /// The `debian-index` output (holds `Packages`).
        index: &'a Path,
        /// `.deb` file name → store path.
        debs: &'a BTreeMap<String, PathBuf>,
    },
    /// A pinned rootfs tarball (a `url` input), unpacked safely.
    Tarball { archive: &'a Path },
}

/// Everything one template is built from.
pub struct LxcInput<'a> {
    pub host: &'a str,
    /// `NAME_VERSION_ARCH.tar.zst`.
    pub template: &'a str,
    pub base: Base<'a>,
    /// The `overlay` output.
    pub overlay: &'a Path,
    pub epoch: u64,
    /// The derivation's hash (recorded in the manifest).
    pub derivation: &'a str,
    /// An empty directory for the rootfs and the repository.
    pub work: &'a Path,
}

#[derive(Debug, thiserror::Error)]
pub enum LxcError {
    #[error("{0}")]
    Io(String),
    #[error("`{tool}` is not installed (Debian package `{package}`): apt-get install {package}")]
    MissingTool {
        tool: &'static str,
        package: &'static str,
    },
    #[error(
        "building an LXC template needs root (mmdebstrap --mode=root, chroot, file owners and device nodes); run kiln build as root"
    )]
    NeedsRoot,
    #[error("bootstrap failed: {0}")]
    Bootstrap(String),
    #[error("base rootfs: {0}")]
    Base(String),
    #[error("overlay: {0}")]
    Overlay(String),
    #[error("{what} `{name}` has id {id}, which `{other}` in the rootfs already has: {hint}")]
    IdTaken {
        what: &'static str,
        name: String,
        id: String,
        other: String,
        hint: String,
    },
    #[error("lint: {0}")]
    Lint(String),
    #[error("packing: {0}")]
    Pack(String),
}

/// The manifest written next to the template.
#[derive(Debug, Serialize)]
pub struct TemplateManifest<'a> {
    pub version: u32,
    pub host: &'a str,
    pub derivation: &'a str,
    pub epoch: u64,
    pub template: TemplateFile<'a>,
    /// The Debian set it was bootstrapped from (absent for a tarball base).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub debian: Option<&'a DebianParams>,
    pub packages: &'a [sbom::Installed],
    pub files: u64,
    pub hygiene: &'a [hygiene::Removal],
}

#[derive(Debug, Serialize)]
pub struct TemplateFile<'a> {
    pub name: &'a str,
    pub sha256: &'a str,
    pub size: u64,
}

/// The first-boot unit that gives each clone its own SSH host keys.
const SSH_KEYS_UNIT: &str = "kiln-ssh-host-keys.service";
const SSH_KEYS_UNIT_TEXT: &str = "\
# Written by kiln: the template carries no SSH host keys (every clone would
# share them); this generates the missing ones on first boot, before sshd.
[Unit]
Description=Generate SSH host keys (kiln)
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key
Before=ssh.service

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target
";

/// A root filesystem made ready for packing: bootstrapped (or unpacked),
/// cleaned and overlaid. The VM builder makes its disk from the same.
pub struct Prepared {
    pub rootfs: PathBuf,
    /// What is installed, for the manifest and the SBOM.
    pub packages: Vec<sbom::Installed>,
    /// What hygiene removed.
    pub removed: Vec<hygiene::Removal>,
}

/// Make `input.work/rootfs`: the base, hygiene, the overlay, and the
/// first-boot SSH host key unit.
pub fn prepare(input: &LxcInput<'_>) -> Result<Prepared, LxcError> {
    let rootfs = input.work.join("rootfs");
    let (packages, removed) = match &input.base {
        Base::Debian {
            debian,
            packages,
            index,
            debs,
        } => {
            let repo = input.work.join("repo");
            bootstrap::local_repository(&repo, index, debs, debian)?;
            bootstrap::mmdebstrap(
                &rootfs,
                &repo,
                debian,
                input.epoch,
                &input.work.join("mmdebstrap.log"),
            )?;
            let installed = sbom::installed(&rootfs, packages)?;
            (installed, hygiene::clean(&rootfs, Some(debian))?)
        }
        Base::Tarball { archive } => {
            if !rustix::process::geteuid().is_root() {
                return Err(LxcError::NeedsRoot);
            }
            fs::create_dir(&rootfs)
                .map_err(|e| LxcError::Io(format!("{}: {e}", rootfs.display())))?;
            crate::archive::unpack(archive, &rootfs).map_err(|e| LxcError::Base(e.to_string()))?;
            let installed = sbom::installed_unpinned(&rootfs)?;
            (installed, hygiene::clean(&rootfs, None)?)
        }
    };
    let manifest = apply::read_manifest(input.overlay)?;
    apply::apply(&rootfs, input.overlay, &manifest)?;
    if rootfs.join("usr/sbin/sshd").exists() {
        let unit = apply::resolve(&rootfs, &format!("/etc/systemd/system/{SSH_KEYS_UNIT}"))?;
        fs::write(&unit, SSH_KEYS_UNIT_TEXT)
            .map_err(|e| LxcError::Io(format!("{}: {e}", unit.display())))?;
        apply::systemctl(&rootfs, "enable", &[SSH_KEYS_UNIT.to_owned()])?;
    }
    Ok(Prepared {
        rootfs,
        packages,
        removed,
    })
}

/// Build the template into `out` (a new directory).
pub fn build(input: &LxcInput<'_>, out: &Path) -> Result<(), LxcError> {
    lint::check_name(input.template)?;
    let Prepared {
        rootfs,
        packages,
        removed,
    } = prepare(input)?;

    fs::create_dir(out).map_err(|e| LxcError::Io(format!("{}: {e}", out.display())))?;
    let template = out.join(input.template);
    // Level 3, one zstd worker per core: the bytes do not depend on the count.
    let packed = crate::archive::pack(
        &rootfs,
        &template,
        &crate::archive::PackOptions::new(input.epoch),
    )
    .map_err(|e| LxcError::Pack(e.to_string()))?;
    let lint = lint::check_archive(&template)?;
    let document = TemplateManifest {
        version: 1,
        host: input.host,
        derivation: input.derivation,
        epoch: input.epoch,
        template: TemplateFile {
            name: input.template,
            sha256: &packed.sha256,
            size: packed.size,
        },
        debian: match &input.base {
            Base::Debian { debian, .. } => Some(debian),
            Base::Tarball { .. } => None,
        },
        packages: &packages,
        files: lint.members,
        hygiene: &removed,
    };
    write_json(
        &out.join("manifest.json"),
        &serde_json::to_value(&document).map_err(|e| LxcError::Io(e.to_string()))?,
    )?;
    let debian = match &input.base {
        Base::Debian { debian, .. } => Some(*debian),
        Base::Tarball { .. } => None,
    };
    let spdx = sbom::spdx(
        input.template,
        &packed.sha256,
        &packages,
        debian,
        input.epoch,
    );
    write_json(&out.join("sbom.spdx.json"), &spdx)?;
    Ok(())
}

/// Two-space indented JSON with keys in a fixed order and a final newline.
fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), LxcError> {
    let mut text = serde_json::to_string_pretty(value).map_err(|e| LxcError::Io(e.to_string()))?;
    text.push('\n');
    fs::write(path, text).map_err(|e| LxcError::Io(format!("{}: {e}", path.display())))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    crate::plan::derivation::hex(bytes)
}

/// `1980-01-01T00:00:00Z` for an epoch in seconds (UTC, proleptic Gregorian).
pub(crate) fn iso8601(epoch: u64) -> String {
    let days = epoch / 86_400;
    let rest = epoch % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn iso8601_dates() {
        assert_eq!(super::iso8601(315_532_800), "1980-01-01T00:00:00Z");
        assert_eq!(super::iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::iso8601(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
