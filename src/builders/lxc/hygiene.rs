//! Hygiene: remove what makes clones of one template share an identity, or
//! two builds of it differ, and record every removal.
//!
//! | what | why |
//! |---|---|
//! | `/etc/ssh/ssh_host_*` | every clone would share the host keys (generated at first boot instead) |
//! | `/etc/machine-id` (emptied), `/var/lib/dbus/machine-id` | systemd generates a fresh id at first boot when the file is empty |
//! | `/etc/hostname`, `/etc/resolv.conf` (emptied) | mmdebstrap copies the build machine's; Proxmox writes both at start |
//! | `/var/lib/systemd/random-seed`, `/var/lib/urandom/random-seed`, `/var/lib/systemd/credential.secret` | secrets shared by every clone |
//! | files under `/var/log` (directories stay: packages own them) | logs of the build, with its times |
//! | `/var/lib/apt/lists/*`, `/var/cache/apt/*.bin`, `/var/cache/apt/archives/{*.deb,partial}` | indexes and packages of the build's local repository (apt recreates the `partial` directories; their owner varied between builds) |
//! | `/var/cache/debconf/*-old`, `/var/lib/dpkg/*-old`, `/etc/{passwd,group,shadow,gshadow,subuid,subgid}-` | backups with the build's state |
//! | `/var/cache/ldconfig/aux-cache`, `/var/cache/man/…` | caches that record times and inode numbers |
//! | `__pycache__` directories | bytecode is not byte-stable across builds; Python recreates it |
//! | `/tmp/*`, `/var/tmp/*` | scratch |
//!
//! For a Debian bootstrap, `/etc/apt/sources.list` is rewritten to the
//! lockfile's mirror, since the one mmdebstrap wrote points at the build's
//! scratch repository.

use std::fs;
use std::path::Path;

use serde::Serialize;

use super::{DebianParams, LxcError};

/// One thing hygiene did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Removal {
    /// Guest path.
    pub path: String,
    /// `removed`, `emptied` or `rewritten`.
    pub action: &'static str,
}

/// Clean `rootfs`; the list is sorted by path.
pub(super) fn clean(
    rootfs: &Path,
    debian: Option<&DebianParams>,
) -> Result<Vec<Removal>, LxcError> {
    let mut done = Vec::new();
    let io = |path: &Path, e: std::io::Error| LxcError::Io(format!("{}: {e}", path.display()));
    let guest = |path: &Path| {
        format!(
            "/{}",
            path.strip_prefix(rootfs).unwrap_or(path).to_string_lossy()
        )
    };
    let remove = |path: &Path, done: &mut Vec<Removal>| -> Result<(), LxcError> {
        let Ok(metadata) = fs::symlink_metadata(path) else {
            return Ok(());
        };
        if metadata.is_dir() {
            fs::remove_dir_all(path).map_err(|e| io(path, e))?;
        } else {
            fs::remove_file(path).map_err(|e| io(path, e))?;
        }
        done.push(Removal {
            path: guest(path),
            action: "removed",
        });
        Ok(())
    };
    let children = |dir: &Path| -> Vec<std::path::PathBuf> {
        let mut entries: Vec<_> = fs::read_dir(dir)
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        entries.sort();
        entries
    };

    for entry in children(&rootfs.join("etc/ssh")) {
        let name = entry
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with("ssh_host_") {
            remove(&entry, &mut done)?;
        }
    }
    for file in ["etc/machine-id", "etc/hostname", "etc/resolv.conf"] {
        let path = rootfs.join(file);
        if let Ok(metadata) = fs::symlink_metadata(&path) {
            if metadata.file_type().is_symlink() {
                fs::remove_file(&path).map_err(|e| io(&path, e))?;
            } else if metadata.len() == 0 {
                continue;
            }
            fs::write(&path, b"").map_err(|e| io(&path, e))?;
            // mmdebstrap copies the build machine's file, mode included.
            fs::set_permissions(
                &path,
                <fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o644),
            )
            .map_err(|e| io(&path, e))?;
            done.push(Removal {
                path: guest(&path),
                action: "emptied",
            });
        }
    }
    let dbus = rootfs.join("var/lib/dbus/machine-id");
    if fs::symlink_metadata(&dbus).is_ok_and(|m| !m.file_type().is_symlink()) {
        remove(&dbus, &mut done)?;
    }
    for file in [
        "var/lib/systemd/random-seed",
        "var/lib/urandom/random-seed",
        "var/lib/systemd/credential.secret",
        "var/cache/ldconfig/aux-cache",
    ] {
        remove(&rootfs.join(file), &mut done)?;
    }
    for base in ["passwd", "group", "shadow", "gshadow", "subuid", "subgid"] {
        remove(&rootfs.join(format!("etc/{base}-")), &mut done)?;
    }
    for dir in ["var/cache/debconf", "var/lib/dpkg"] {
        for entry in children(&rootfs.join(dir)) {
            if entry.to_string_lossy().ends_with("-old") {
                remove(&entry, &mut done)?;
            }
        }
    }
    // `partial/` directories too: apt recreates them, and their owner
    // (`_apt` or root) varied between otherwise identical builds.
    for entry in children(&rootfs.join("var/lib/apt/lists")) {
        if entry.file_name().is_some_and(|n| n != "lock") {
            remove(&entry, &mut done)?;
        }
    }
    remove(&rootfs.join("var/cache/apt/archives/partial"), &mut done)?;
    for entry in children(&rootfs.join("var/cache/apt")) {
        if entry.extension().is_some_and(|e| e == "bin") {
            remove(&entry, &mut done)?;
        }
    }
    for entry in children(&rootfs.join("var/cache/apt/archives")) {
        if entry.extension().is_some_and(|e| e == "deb") {
            remove(&entry, &mut done)?;
        }
    }
    for dir in ["var/cache/man", "tmp", "var/tmp"] {
        for entry in children(&rootfs.join(dir)) {
            remove(&entry, &mut done)?;
        }
    }
    remove_files_below(rootfs, &rootfs.join("var/log"), &mut done)?;
    remove_named_dirs(rootfs, rootfs, "__pycache__", &mut done)?;

    if let Some(debian) = debian {
        let sources = rootfs.join("etc/apt/sources.list");
        let line = format!(
            "deb {} {} {}\n",
            debian.mirror,
            debian.suite,
            debian.components.join(" ")
        );
        fs::write(&sources, line).map_err(|e| io(&sources, e))?;
        done.push(Removal {
            path: "/etc/apt/sources.list".into(),
            action: "rewritten",
        });
    }
    done.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(done)
}

/// Remove every non-directory below `dir`, keeping the directories.
fn remove_files_below(rootfs: &Path, dir: &Path, done: &mut Vec<Removal>) -> Result<(), LxcError> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    let mut entries: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        let metadata = fs::symlink_metadata(&path)
            .map_err(|e| LxcError::Io(format!("{}: {e}", path.display())))?;
        if metadata.is_dir() {
            remove_files_below(rootfs, &path, done)?;
        } else {
            fs::remove_file(&path).map_err(|e| LxcError::Io(format!("{}: {e}", path.display())))?;
            done.push(Removal {
                path: format!(
                    "/{}",
                    path.strip_prefix(rootfs).unwrap_or(&path).to_string_lossy()
                ),
                action: "removed",
            });
        }
    }
    Ok(())
}

/// Remove every directory called `name` below `dir` (not following symlinks).
fn remove_named_dirs(
    rootfs: &Path,
    dir: &Path,
    name: &str,
    done: &mut Vec<Removal>,
) -> Result<(), LxcError> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if !kind.is_dir() {
            continue;
        }
        let path = entry.path();
        // Virtual file systems are not part of the image.
        if dir == rootfs
            && ["proc", "sys", "dev"]
                .iter()
                .any(|v| entry.file_name() == *v)
        {
            continue;
        }
        if entry.file_name() == name {
            fs::remove_dir_all(&path)
                .map_err(|e| LxcError::Io(format!("{}: {e}", path.display())))?;
            done.push(Removal {
                path: format!(
                    "/{}",
                    path.strip_prefix(rootfs).unwrap_or(&path).to_string_lossy()
                ),
                action: "removed",
            });
        } else {
            remove_named_dirs(rootfs, &path, name, done)?;
        }
    }
    Ok(())
}
