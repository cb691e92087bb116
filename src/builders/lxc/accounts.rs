//! Merging the overlay's users and groups into the rootfs's `/etc/passwd`,
//! `/etc/group`, `/etc/shadow` and `/etc/gshadow`.
//!
//! A fragment line replaces the rootfs's line of the same name, in place;
//! other lines are appended in the fragment's (sorted) order, so the result
//! depends only on the two inputs. Ids the overlay *allocated* must not be
//! taken by another account the packages created (the overlay could not
//! see those): that is an error naming both and saying how to fix it.
//! Users are added to base-system groups (`sudo`) by name.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use super::LxcError;
use super::apply::Manifest;

/// Name → numeric id (uid or gid).
pub(super) type Ids = BTreeMap<String, u32>;

/// `name:field:field…` lines of one database, in file order.
struct Database {
    lines: Vec<Vec<String>>,
}

impl Database {
    fn read(path: &Path) -> Result<Database, LxcError> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(LxcError::Io(format!("{}: {e}", path.display()))),
        };
        Ok(Database {
            lines: text
                .lines()
                .filter(|l| !l.is_empty())
                .map(|l| l.split(':').map(str::to_owned).collect())
                .collect(),
        })
    }

    fn parse(text: &str) -> Database {
        Database {
            lines: text
                .lines()
                .filter(|l| !l.is_empty())
                .map(|l| l.split(':').map(str::to_owned).collect())
                .collect(),
        }
    }

    fn find(&self, name: &str) -> Option<&Vec<String>> {
        self.lines.iter().find(|l| l[0] == name)
    }

    fn find_mut(&mut self, name: &str) -> Option<&mut Vec<String>> {
        self.lines.iter_mut().find(|l| l[0] == name)
    }

    /// Replace the line of the same name, or append.
    fn upsert(&mut self, line: Vec<String>) {
        match self.find_mut(&line[0]) {
            Some(existing) => *existing = line,
            None => self.lines.push(line),
        }
    }

    fn write(&self, path: &Path, mode: u32) -> Result<(), LxcError> {
        let mut text = String::new();
        for line in &self.lines {
            text.push_str(&line.join(":"));
            text.push('\n');
        }
        write_keeping_owner(path, text.as_bytes(), mode)
    }
}

/// Overwrite `path`, keeping its owner and group (`/etc/shadow` is
/// root:shadow 0640 on Debian), or root-owned `mode` for a new file.
fn write_keeping_owner(path: &Path, bytes: &[u8], mode: u32) -> Result<(), LxcError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let io = |e: std::io::Error| LxcError::Io(format!("{}: {e}", path.display()));
    let (uid, gid, mode) = match fs::metadata(path) {
        Ok(m) => (m.uid(), m.gid(), m.mode() & 0o7777),
        Err(_) => (0, 0, mode),
    };
    fs::write(path, bytes).map_err(io)?;
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(io)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io)?;
    Ok(())
}

/// Merge the overlay's fragments into `rootfs/etc`. Returns name → id maps
/// (users, groups) of the merged databases, for chown by name.
pub(super) fn merge(
    rootfs: &Path,
    overlay: &Path,
    manifest: &Manifest,
) -> Result<(Ids, Ids), LxcError> {
    let etc = rootfs.join("etc");
    let fragment = |name: &str| -> Result<Database, LxcError> {
        let path = overlay.join(name);
        let text = fs::read_to_string(&path)
            .map_err(|e| LxcError::Io(format!("{}: {e}", path.display())))?;
        Ok(Database::parse(&text))
    };
    let mut passwd = Database::read(&etc.join("passwd"))?;
    let mut group = Database::read(&etc.join("group"))?;
    let mut shadow = Database::read(&etc.join("shadow"))?;
    let mut gshadow = Database::read(&etc.join("gshadow"))?;

    for line in fragment("passwd")?.lines {
        let name = &line[0];
        let uid = &line[2];
        let allocated = manifest.users.get(name).is_none_or(|u| u.uid_allocated);
        if let Some(other) = passwd.lines.iter().find(|l| &l[2] == uid && &l[0] != name) {
            return Err(LxcError::IdTaken {
                what: "user",
                name: name.clone(),
                id: uid.clone(),
                other: other[0].clone(),
                hint: if allocated {
                    format!("set `users.{name}.uid` to a free id")
                } else {
                    format!("`users.{name}.uid` is set to an id a package uses; choose another")
                },
            });
        }
        passwd.upsert(line);
    }
    for line in fragment("group")?.lines {
        let name = line[0].clone();
        let gid = &line[2];
        if let Some(other) = group.lines.iter().find(|l| &l[2] == gid && l[0] != name) {
            return Err(LxcError::IdTaken {
                what: "group",
                name: name.clone(),
                id: gid.clone(),
                other: other[0].clone(),
                hint: format!("set `groups.{name}.gid` (or the user's `uid`) to a free id"),
            });
        }
        let members = line.get(3).cloned().unwrap_or_default();
        group.upsert(line);
        if gshadow.find(&name).is_none() {
            gshadow.upsert(vec![name, "!".into(), String::new(), members]);
        } else if let Some(existing) = gshadow.find_mut(&name) {
            existing.resize(4, String::new());
            existing[3] = members;
        }
    }
    for line in fragment("shadow")?.lines {
        shadow.upsert(line);
    }
    for (base_group, users) in &manifest.base_group_members {
        for database in [&mut group, &mut gshadow] {
            let Some(line) = database.find_mut(base_group) else {
                return Err(LxcError::Overlay(format!(
                    "users are added to group `{base_group}`, which this rootfs does not have (install the package that creates it, or declare it in `groups`)"
                )));
            };
            line.resize(4, String::new());
            let mut members: Vec<String> = line[3]
                .split(',')
                .filter(|m| !m.is_empty())
                .map(str::to_owned)
                .collect();
            for user in users {
                if !members.contains(user) {
                    members.push(user.clone());
                }
            }
            line[3] = members.join(",");
        }
    }
    passwd.write(&etc.join("passwd"), 0o644)?;
    group.write(&etc.join("group"), 0o644)?;
    shadow.write(&etc.join("shadow"), 0o640)?;
    gshadow.write(&etc.join("gshadow"), 0o640)?;

    let ids = |database: &Database| -> BTreeMap<String, u32> {
        database
            .lines
            .iter()
            .filter_map(|l| Some((l[0].clone(), l.get(2)?.parse().ok()?)))
            .collect()
    };
    Ok((ids(&passwd), ids(&group)))
}
