//! Bootstrapping a Debian root filesystem from the locked package set,
//! with the network closed: a flat APT repository is made in scratch from
//! the fetched `.deb` store paths and the `debian-index` output, and
//! mmdebstrap installs from it.
//!
//! The repository's `Release` names the lock's suite as `Suite` and
//! `Codename`: mmdebstrap picks the essential set and the variant's
//! priorities with apt patterns like `?archive(^bookworm$)`, which match
//! those fields. It is served as `copy://` (mmdebstrap copies each `.deb`
//! into the chroot, so the store paths need not be visible from inside it)
//! and marked `[trusted=yes]`: every file in it was verified against the
//! lockfile's sha256 when it entered the store.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use super::{DebianParams, LxcError};

/// Make `repo/` (Packages, Release, pool/) from the index and the debs.
pub(super) fn local_repository(
    repo: &Path,
    index: &Path,
    debs: &BTreeMap<String, PathBuf>,
    debian: &DebianParams,
) -> Result<(), LxcError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |e: std::io::Error| LxcError::Io(format!("{}: {e}", path.display()))
    };
    let pool = repo.join("pool");
    fs::create_dir_all(&pool).map_err(io(&pool))?;
    for (file, path) in debs {
        let link = pool.join(file);
        std::os::unix::fs::symlink(path, &link).map_err(io(&link))?;
    }
    let packages = fs::read(index.join("Packages")).map_err(io(index))?;
    fs::write(repo.join("Packages"), &packages).map_err(io(repo))?;
    let mut release = String::new();
    let _ = write!(
        release,
        "Origin: kiln\nLabel: kiln\nSuite: {suite}\nCodename: {suite}\n\
         Date: Tue, 01 Jan 1980 00:00:00 UTC\nArchitectures: {arch} all\nSHA256:\n {} {} Packages\n",
        super::hex(&Sha256::digest(&packages)),
        packages.len(),
        suite = debian.suite,
        arch = debian.architecture,
    );
    fs::write(repo.join("Release"), release).map_err(io(repo))?;
    Ok(())
}

/// Run mmdebstrap into `rootfs` (which must not exist) from `repo`.
pub(super) fn mmdebstrap(
    rootfs: &Path,
    repo: &Path,
    debian: &DebianParams,
    epoch: u64,
    log: &Path,
) -> Result<(), LxcError> {
    let mode = if rustix::process::geteuid().is_root() {
        "root"
    } else {
        return Err(LxcError::NeedsRoot);
    };
    let log_file =
        fs::File::create(log).map_err(|e| LxcError::Io(format!("{}: {e}", log.display())))?;
    let log_err = log_file
        .try_clone()
        .map_err(|e| LxcError::Io(format!("{}: {e}", log.display())))?;
    let mut command = Command::new("mmdebstrap");
    command
        .arg(format!("--mode={mode}"))
        .arg("--format=directory")
        .arg(format!("--variant={}", debian.variant))
        .arg(format!("--architectures={}", debian.architecture))
        // The lock pins exact versions, not their age.
        .arg("--aptopt=Acquire::Check-Valid-Until \"false\"")
        .arg("--aptopt=Acquire::Languages \"none\"");
    if !debian.requested.is_empty() {
        command.arg(format!("--include={}", debian.requested.join(",")));
    }
    command
        .arg(&debian.suite)
        .arg(rootfs)
        .arg(format!("deb [trusted=yes] copy://{} ./", repo.display()))
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(log_file)
        .stderr(log_err);
    let status = command.status().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            LxcError::MissingTool {
                tool: "mmdebstrap",
                package: "mmdebstrap",
            }
        } else {
            LxcError::Io(format!("cannot run mmdebstrap: {e}"))
        }
    })?;
    if status.success() {
        return Ok(());
    }
    let text = fs::read_to_string(log).unwrap_or_default();
    let tail: Vec<&str> = text
        .lines()
        .rev()
        .take(25)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    Err(LxcError::Bootstrap(format!(
        "mmdebstrap exited with {status}:\n{}",
        tail.join("\n")
    )))
}
