//! Laying the overlay (see [`crate::builders::overlay`]) over a rootfs:
//! accounts first (so owners can be resolved by name), then every path of
//! the overlay's manifest in sorted order, then the package units it asks
//! to enable, disable or mask.
//!
//! Paths are resolved the way the guest will see them: a symlink met on
//! the way (`/lib` → `usr/lib` on merged-/usr Debian) is followed *inside*
//! the rootfs, an absolute target re-rooted there, so nothing is ever
//! written outside it. The last component is never followed: an overlay
//! file replaces whatever is there.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

use super::LxcError;

/// The parts of the overlay's `manifest.json` the image builder needs.
#[derive(Debug, Deserialize)]
pub(super) struct Manifest {
    pub paths: BTreeMap<String, PathEntry>,
    #[serde(default)]
    pub users: BTreeMap<String, UserEntry>,
    #[serde(default)]
    pub base_group_members: BTreeMap<String, Vec<String>>,
    pub systemd: Systemd,
}

#[derive(Debug, Deserialize)]
pub(super) struct PathEntry {
    pub kind: String,
    pub owner: String,
    pub group: String,
    pub mode: Option<String>,
    #[serde(default)]
    pub implicit: bool,
    pub target: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct UserEntry {
    #[serde(default)]
    pub uid_allocated: bool,
}

#[derive(Debug, Deserialize)]
pub(super) struct Systemd {
    #[serde(default)]
    pub enable: Vec<String>,
    #[serde(default)]
    pub disable: Vec<String>,
    #[serde(default)]
    pub mask: Vec<String>,
}

pub(super) fn read_manifest(overlay: &Path) -> Result<Manifest, LxcError> {
    let path = overlay.join("manifest.json");
    let bytes = fs::read(&path).map_err(|e| LxcError::Io(format!("{}: {e}", path.display())))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| LxcError::Overlay(format!("{}: {e}", path.display())))
}

/// Apply the overlay at `overlay` to `rootfs`.
pub(super) fn apply(rootfs: &Path, overlay: &Path, manifest: &Manifest) -> Result<(), LxcError> {
    let (users, groups) = super::accounts::merge(rootfs, overlay, manifest)?;
    for (guest, entry) in &manifest.paths {
        let target = resolve(rootfs, guest)?;
        let source = overlay.join("root").join(guest.trim_start_matches('/'));
        let uid = *users.get(&entry.owner).ok_or_else(|| {
            LxcError::Overlay(format!(
                "{guest}: owner `{}` is not a user of this rootfs",
                entry.owner
            ))
        })?;
        let gid = *groups.get(&entry.group).ok_or_else(|| {
            LxcError::Overlay(format!(
                "{guest}: group `{}` is not a group of this rootfs",
                entry.group
            ))
        })?;
        let io = |e: std::io::Error| LxcError::Io(format!("{guest} ({}): {e}", target.display()));
        let mode = entry
            .mode
            .as_deref()
            .map(|m| u32::from_str_radix(m, 8))
            .transpose()
            .map_err(|e| LxcError::Overlay(format!("{guest}: mode: {e}")))?;
        match entry.kind.as_str() {
            "dir" => {
                let existing = fs::metadata(&target).ok();
                if entry.implicit && existing.as_ref().is_some_and(|m| m.is_dir()) {
                    continue;
                }
                if existing.is_some_and(|m| !m.is_dir()) || is_symlink(&target) {
                    remove(&target).map_err(io)?;
                }
                if !target.is_dir() {
                    fs::create_dir(&target).map_err(io)?;
                }
                std::os::unix::fs::chown(&target, Some(uid), Some(gid)).map_err(io)?;
                fs::set_permissions(&target, fs::Permissions::from_mode(mode.unwrap_or(0o755)))
                    .map_err(io)?;
            }
            "file" => {
                if fs::symlink_metadata(&target).is_ok() {
                    remove(&target).map_err(io)?;
                }
                fs::copy(&source, &target).map_err(io)?;
                std::os::unix::fs::chown(&target, Some(uid), Some(gid)).map_err(io)?;
                // After chown: chown clears setuid/setgid.
                fs::set_permissions(&target, fs::Permissions::from_mode(mode.unwrap_or(0o644)))
                    .map_err(io)?;
            }
            "symlink" => {
                let link_target = entry.target.as_ref().ok_or_else(|| {
                    LxcError::Overlay(format!("{guest}: symlink without a target"))
                })?;
                if fs::symlink_metadata(&target).is_ok() {
                    remove(&target).map_err(io)?;
                }
                std::os::unix::fs::symlink(link_target, &target).map_err(io)?;
                std::os::unix::fs::lchown(&target, Some(uid), Some(gid)).map_err(io)?;
            }
            other => {
                return Err(LxcError::Overlay(format!(
                    "{guest}: unknown kind `{other}`"
                )));
            }
        }
    }
    for (verb, units) in [
        ("enable", &manifest.systemd.enable),
        ("disable", &manifest.systemd.disable),
        ("mask", &manifest.systemd.mask),
    ] {
        if !units.is_empty() {
            systemctl(rootfs, verb, units)?;
        }
    }
    Ok(())
}

/// `chroot ROOTFS systemctl VERB UNIT…`: the rootfs's own systemctl, which
/// works offline in a chroot and knows how the packages' units install.
pub(crate) fn systemctl(rootfs: &Path, verb: &str, units: &[String]) -> Result<(), LxcError> {
    let output = Command::new("chroot")
        .arg(rootfs)
        .arg("systemctl")
        .arg(verb)
        .args(units)
        .env("SYSTEMD_OFFLINE", "1")
        .output()
        .map_err(|e| LxcError::Io(format!("cannot run chroot systemctl: {e}")))?;
    if output.status.success() {
        return Ok(());
    }
    Err(LxcError::Overlay(format!(
        "systemctl {verb} {} failed in the rootfs: {}",
        units.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    )))
}

fn is_symlink(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

fn remove(path: &Path) -> std::io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(_) => Ok(()),
    }
}

/// The host path of guest path `guest` in `rootfs`, following symlinks in
/// every component but the last inside the rootfs.
pub(crate) fn resolve(rootfs: &Path, guest: &str) -> Result<PathBuf, LxcError> {
    let escape = || LxcError::Overlay(format!("{guest}: not a plain absolute path"));
    let mut components: Vec<String> = Vec::new();
    for component in Path::new(guest).components() {
        match component {
            Component::RootDir => {}
            Component::Normal(name) => components.push(name.to_string_lossy().into_owned()),
            _ => return Err(escape()),
        }
    }
    let Some(last) = components.pop() else {
        return Ok(rootfs.to_path_buf());
    };
    let mut resolved: Vec<String> = Vec::new();
    let mut pending: Vec<String> = components.into_iter().rev().collect();
    let mut hops = 0;
    while let Some(name) = pending.pop() {
        match name.as_str() {
            "." | "" => continue,
            ".." => {
                resolved.pop();
                continue;
            }
            _ => {}
        }
        let here = rootfs.join(resolved.join("/")).join(&name);
        match fs::read_link(&here) {
            Ok(link) => {
                hops += 1;
                if hops > 40 {
                    return Err(LxcError::Overlay(format!("{guest}: too many symlinks")));
                }
                if link.is_absolute() {
                    resolved.clear();
                }
                for part in link.to_string_lossy().split('/').rev() {
                    pending.push(part.to_owned());
                }
            }
            Err(_) => resolved.push(name),
        }
    }
    Ok(rootfs.join(resolved.join("/")).join(last))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("usr/lib/systemd")).unwrap();
        std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
        std::os::unix::fs::symlink("/../../../../etc", root.join("escape")).unwrap();
        assert_eq!(
            resolve(root, "/lib/systemd/x").unwrap(),
            root.join("usr/lib/systemd/x")
        );
        // An absolute target, even with `..`, stays inside.
        assert_eq!(
            resolve(root, "/escape/passwd").unwrap(),
            root.join("etc/passwd")
        );
        assert!(resolve(root, "/a/../b").is_err());
    }
}
