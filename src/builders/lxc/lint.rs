//! Pre-upload lint: the checks Proxmox VE runs on a container template
//! before it creates a container from it, so a bad template fails here and
//! not on the node.
//!
//! Mirrors `check_tar_archive` and `tar_compression_option` in
//! pve-container's `src/PVE/LXC/Create.pm` (read at commit 94f5585): the
//! file name must end in `.tar` or `.tar.{gz,bz2,xz,lzo,zst}`; the archive
//! must list a `sbin` directory, symlink or hard link (`./sbin/`,
//! `./sbin -> …`); it must have at least 10 members; and no member may be
//! a multi-volume continuation. On top, `/etc/os-release` (a file, or a
//! symlink to one in the archive) must be present: `PVE::LXC::Setup` reads
//! it to pick the distribution's setup code and otherwise falls back to
//! "unmanaged".

use std::collections::BTreeMap;
use std::path::Path;

use super::LxcError;

/// What the lint saw.
#[derive(Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct LintReport {
    pub members: u64,
}

pub(super) fn check_name(name: &str) -> Result<(), LxcError> {
    let ok = [
        ".tar", ".tar.gz", ".tar.bz2", ".tar.xz", ".tar.lzo", ".tar.zst",
    ]
    .iter()
    .any(|suffix| name.ends_with(suffix));
    if ok {
        Ok(())
    } else {
        Err(LxcError::Lint(format!(
            "`{name}` does not end in .tar or .tar.{{gz,bz2,xz,lzo,zst}}: Proxmox would refuse it"
        )))
    }
}

/// Read the packed template and check it as Proxmox would.
pub(super) fn check_archive(path: &Path) -> Result<LintReport, LxcError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    check_name(&name)?;
    let io = |e: std::io::Error| LxcError::Lint(format!("{name}: cannot be read back: {e}"));
    let file = std::fs::File::open(path).map_err(io)?;
    let decoder = zstd::stream::read::Decoder::new(file).map_err(io)?;
    let mut archive = tar::Archive::new(decoder);
    let mut members = 0u64;
    let mut found_sbin = false;
    // path → symlink target (None for other kinds), for /etc/os-release.
    let mut seen: BTreeMap<String, Option<String>> = BTreeMap::new();
    for entry in archive.entries().map_err(io)? {
        let entry = entry.map_err(io)?;
        members += 1;
        let kind = entry.header().entry_type();
        if kind == tar::EntryType::GNUSparse || kind.as_byte() == b'M' {
            return Err(LxcError::Lint(format!("{name}: has a multi-volume member")));
        }
        let member = entry.path().map_err(io)?.to_string_lossy().into_owned();
        let bare = member
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_owned();
        if bare == "sbin" && (kind.is_dir() || kind.is_symlink() || kind.is_hard_link()) {
            found_sbin = true;
        }
        let target = if kind.is_symlink() {
            entry
                .link_name()
                .map_err(io)?
                .map(|t| t.to_string_lossy().into_owned())
        } else {
            None
        };
        seen.insert(bare, target);
    }
    if !found_sbin {
        return Err(LxcError::Lint(format!(
            "{name}: no `sbin` directory (or link): Proxmox refuses such a template"
        )));
    }
    if members < 10 {
        return Err(LxcError::Lint(format!(
            "{name}: {members} members, fewer than the 10 Proxmox requires"
        )));
    }
    if !os_release_present(&seen) {
        return Err(LxcError::Lint(format!(
            "{name}: no /etc/os-release: Proxmox could not tell the distribution and would set the container up as `unmanaged`"
        )));
    }
    Ok(LintReport { members })
}

/// `/etc/os-release` is a member, following symlinks inside the archive.
fn os_release_present(seen: &BTreeMap<String, Option<String>>) -> bool {
    let mut path = "etc/os-release".to_owned();
    for _ in 0..10 {
        match seen.get(&path) {
            None => return false,
            Some(None) => return true,
            Some(Some(target)) => {
                path = if let Some(absolute) = target.strip_prefix('/') {
                    absolute.to_owned()
                } else {
                    let parent = Path::new(&path).parent().unwrap_or(Path::new(""));
                    normalise(&parent.join(target))
                };
            }
        }
    }
    false
}

fn normalise(path: &Path) -> String {
    let mut parts: Vec<String> = Vec::new();
    for part in path.to_string_lossy().split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other.to_owned()),
        }
    }
    parts.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_proxmox() {
        assert!(check_name("monitoring_12.8_amd64.tar.zst").is_ok());
        assert!(check_name("x.tar").is_ok());
        assert!(check_name("x.tar.zstd").is_err());
        assert!(check_name("x.tgz").is_err());
    }

    #[test]
    fn os_release_through_a_relative_symlink() {
        let mut seen = BTreeMap::new();
        seen.insert(
            "etc/os-release".to_owned(),
            Some("../usr/lib/os-release".to_owned()),
        );
        assert!(!os_release_present(&seen));
        seen.insert("usr/lib/os-release".to_owned(), None);
        assert!(os_release_present(&seen));
    }
}
