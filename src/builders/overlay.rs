//! The `overlay` builder: the host-specific layer that the image builders
//! lay over a Debian root filesystem.
//!
//! [`render`] is a pure function of its [`OverlayInput`]: the same spec,
//! source files and epoch give the same bytes, modes and mtimes under any
//! umask, time zone or locale, and in any output directory. Nothing is
//! iterated in hash or directory order, nothing reads the clock or the
//! environment, and every permission is set explicitly.
//!
//! # Output
//!
//! ```text
//! OUT/root/…          the tree laid over the rootfs: OUT/root/etc/motd is /etc/motd
//! OUT/passwd          name:x:uid:gid:comment:home:shell    one line per kiln user
//! OUT/group           name:x:gid:member,member             one line per kiln group
//! OUT/shadow          name:*::::::: or name:!:::::::       never a hash (see below)
//! OUT/manifest.json   what a plain directory cannot say (see below)
//! ```
//!
//! All five always exist (a fragment may be empty); lines are sorted by
//! name. An image builder merges a fragment line into the rootfs's file by
//! name: it replaces an entry of the same name and appends the others.
//!
//! # What goes into `root/`
//!
//! | path | from | mode |
//! |---|---|---|
//! | `/etc/hostname` (`NAME\n`) | `hostname`, when set | 0644 |
//! | `/etc/timezone` (`TZ\n`), `/etc/localtime` → `/usr/share/zoneinfo/TZ` | `timezone` | 0644 |
//! | `/etc/default/locale` (`LANG=LOCALE\n`) | `locale` | 0644 |
//! | `/etc/sysctl.d/90-kiln.conf`, sorted `key = value` lines | `sysctl`, when not empty | 0644 |
//! | `HOME/.ssh/authorized_keys`, one key a line | `users.NAME.ssh_authorized_keys` | 0600 (HOME and HOME/.ssh 0700), owned by the user |
//! | `/etc/sudoers.d/kiln-NAME` | `users.NAME.sudo` | 0440 |
//! | `/etc/systemd/system/UNIT` | `systemd.units` | 0644 |
//! | `/etc/systemd/system/TARGET.wants/UNIT` → `/etc/systemd/system/UNIT` (also `.requires`, `.upholds`, and `Alias=` names) | the `[Install]` section of each enabled unit | symlink |
//! | `/etc/systemd/system/UNIT` → `/dev/null` | `systemd.mask` | symlink |
//! | every `files` path, its `text` or its `source`'s bytes | `files` | its `mode` |
//!
//! HOME is `users.NAME.home`, else `/home/NAME` (`/root` for `root`). In a
//! sudoers file name, `.` becomes `_`, because sudo skips files in
//! `/etc/sudoers.d` whose names contain a dot.
//!
//! A kiln unit is enabled when its `enable` is true, when `systemd.enable`
//! names it, or when the `Also=` of an enabled unit names it; enabling reads
//! `WantedBy=`, `RequiredBy=`, `UpheldBy=`, `Alias=`, `Also=` and
//! `DefaultInstance=` (for templates) as `systemctl enable` does. A unit
//! without an `[Install]` section is `static`: nothing to link. Units shipped
//! by packages cannot be read here, so enabling them (`systemd.enable`, or an
//! `Also=` naming one) and `systemd.disable` are left to the image builder.
//! A unit that is enabled and also disabled or masked is an error.
//!
//! Every other directory is a parent of something above, 0755 root:root.
//! Every file, directory and symlink, and `OUT` itself, has its atime and
//! mtime set to [`OverlayInput::epoch`]. On disk a mode keeps only its
//! permission bits: an unprivileged build cannot set setuid or setgid
//! reliably (the kernel drops setgid for a group the builder is not in), so
//! the manifest's `mode` is the authority.
//!
//! ## Precedence and collisions
//!
//! A `files` entry wins over a generated file or symlink at the same path
//! (`files."/etc/hostname"` replaces what `hostname` writes): it is the
//! user's explicit word. Anything else that two settings write differently
//! is an error naming both options, as is a path needed as a directory
//! while something else writes a file there. Paths are checked before
//! anything is written: each must be absolute, without empty, `.` or `..`
//! components, so nothing can land outside `root/`. Names that become paths
//! or lines (users, groups, units and `[Install]` values, the time zone) must
//! be plain names, and values written as lines may not hold line breaks.
//!
//! # Users and groups
//!
//! Explicit `uid`s are kept (two users sharing one is an error). The rest
//! are allocated in sorted name order: system users from 999 downwards,
//! others from 1000 upwards, skipping ids already taken; `root` is uid 0.
//! A user without `group` gets a group of its own name (the one in `groups`
//! if declared there), with gid = uid when that gid is free. Then the
//! remaining groups without a `gid` are allocated the same way. A primary
//! `group` must be one kiln manages (in `groups`, or another user's own
//! group): its gid goes into the passwd line, and kiln never guesses the
//! gid of a group in the base image.
//!
//! Supplementary `groups` that kiln manages become members in `group`.
//! Others (`sudo`, `docker`) belong to the base system: they are listed
//! under `base_group_members` in the manifest, for the image builder to
//! apply with the rootfs's gid.
//!
//! `users.NAME.password` is a secret *reference*, resolved at deploy; it is
//! never written anywhere. The shadow line is `!` (locked until the deploy
//! sets the hash) when a password is set, `*` (no password; key login only)
//! otherwise; the manifest says `"password": "deploy"`. Aging fields are
//! empty: no aging, and no build date in the output.
//!
//! # `manifest.json`
//!
//! Keys sorted, two-space indent, trailing newline:
//!
//! - `version` (1), `host`, `epoch`;
//! - `paths`: every path under `root/`, by guest path (`/etc/motd`), with
//!   `kind` (`file`, `dir`, `symlink`), `owner` and `group` by name (builds
//!   run unprivileged, so ownership exists only here), `mode` (octal
//!   string, files and directories), `sha256` and `size` (files), `target`
//!   (symlinks), and `option`, the setting that wrote it. Directories that
//!   exist only because something lies below them are `implicit`: the image
//!   builder creates them if missing but keeps what the rootfs has there,
//!   including a symlink to a directory (`/bin` → `usr/bin` on merged-/usr
//!   Debian), and the rootfs's modes (`/root` is 0700);
//! - `users` and `groups` with their ids, and `uid_allocated` /
//!   `gid_allocated`: true unless the spec fixed the id (a gid that took its
//!   user's uid counts as allocated). Allocated ids may collide with
//!   accounts that packages created in the rootfs, which only the image
//!   builder can see and must check;
//! - `base_group_members`: base-system group → kiln users to add;
//! - `systemd`: package units to `enable`, `disable` and `mask`, and each
//!   kiln unit's state as `systemctl is-enabled` words it (`enabled`,
//!   `disabled`, or `static` for a unit without `[Install]`).
//!
//! Symlinks in `root/` point into the guest (`/dev/null`,
//! `/etc/systemd/system/…`): an image builder copies them as links and never
//! follows them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs::{self, FileTimes, Permissions};
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::{AtFlags, CWD, Timespec, Timestamps, utimensat};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::eval::spec::{Sudo, SystemConfig, Unit, User};

/// The version of `manifest.json`.
pub const MANIFEST_VERSION: u32 = 1;

/// Everything the overlay is a function of.
pub struct OverlayInput<'a> {
    /// The host's name (recorded in the manifest).
    pub host: &'a str,
    pub config: &'a SystemConfig,
    /// `files.*.source` (repo-relative path as in the spec) → the readable
    /// file to copy (a store path at build time).
    pub sources: &'a BTreeMap<String, PathBuf>,
    /// Every mtime in the output is set to this (SOURCE_DATE_EPOCH).
    pub epoch: i64,
}

/// What [`render`] wrote: entries under `root/` by kind, and the accounts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OverlaySummary {
    pub files: usize,
    pub directories: usize,
    pub symlinks: usize,
    pub users: usize,
    pub groups: usize,
}

/// Why an overlay could not be rendered. Options are named as in the spec
/// (`files."/etc/motd"`), guest paths as absolute paths.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error("{option}: `{path}` {reason}; paths must stay inside the overlay's root")]
    Escape {
        option: String,
        path: String,
        reason: &'static str,
    },
    #[error("{option} writes {path}, which {other} also writes")]
    Collision {
        option: String,
        path: String,
        other: String,
    },
    #[error(
        "{path} must be a directory for {needed_by}, but {written_by} writes a non-directory there"
    )]
    NotADirectory {
        path: String,
        needed_by: String,
        written_by: String,
    },
    #[error("{option}: {message}")]
    Invalid { option: String, message: String },
    #[error("{option} and {other} both use {kind} {id}")]
    DuplicateId {
        option: String,
        other: String,
        kind: &'static str,
        id: u32,
    },
    #[error("{option}: no free {kind} left in {first}..={last}")]
    IdsExhausted {
        option: String,
        kind: &'static str,
        first: u32,
        last: u32,
    },
    #[error("{option}: no file was given for source `{file}`")]
    MissingSource { option: String, file: String },
    #[error("cannot read {path} (the source of {option}): {source}")]
    ReadSource {
        option: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot create {path}: it already exists")]
    OutputExists { path: PathBuf },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

type Result<T, E = OverlayError> = std::result::Result<T, E>;

/// Render the overlay of `input` into `out`, which must not exist yet.
///
/// Every problem with the spec is found before `out` is created; if
/// writing fails halfway, `out` is removed again.
pub fn render(input: &OverlayInput<'_>, out: &Path) -> Result<OverlaySummary> {
    let times = file_times(input.epoch)?;
    let plan = plan(input)?;
    fs::create_dir(out).map_err(|source| match source.kind() {
        io::ErrorKind::AlreadyExists => OverlayError::OutputExists {
            path: out.to_path_buf(),
        },
        _ => OverlayError::Write {
            path: out.to_path_buf(),
            source,
        },
    })?;
    let written = write_output(&plan, input, out, times);
    if written.is_err() {
        // `out` did not exist before this call, so all of it is ours.
        let _ = fs::remove_dir_all(out);
    }
    written
}

// ── option names ───────────────────────────────────────────────────────────

/// A map key as it appears in an option path: quoted unless it is a plain
/// identifier (`users.ops`, `files."/etc/motd"`).
fn key(name: &str) -> String {
    let plain = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if plain {
        name.to_owned()
    } else {
        format!("{name:?}")
    }
}

fn invalid(option: &str, message: impl Into<String>) -> OverlayError {
    OverlayError::Invalid {
        option: option.to_owned(),
        message: message.into(),
    }
}

// ── the planned tree ───────────────────────────────────────────────────────

#[derive(Clone, Debug, PartialEq)]
enum Content {
    Bytes(Vec<u8>),
    /// A file to copy, from [`OverlayInput::sources`].
    Source(PathBuf),
}

#[derive(Clone, Debug, PartialEq)]
enum Node {
    Dir {
        mode: u32,
        owner: String,
        group: String,
        implicit: bool,
    },
    File {
        content: Content,
        mode: u32,
        owner: String,
        group: String,
    },
    Symlink {
        target: String,
    },
}

impl Node {
    fn dir(mode: u32, owner: &str, group: &str) -> Node {
        Node::Dir {
            mode,
            owner: owner.to_owned(),
            group: group.to_owned(),
            implicit: false,
        }
    }

    /// A root-owned file with generated contents.
    fn text(text: impl Into<String>, mode: u32) -> Node {
        Node::File {
            content: Content::Bytes(text.into().into_bytes()),
            mode,
            owner: "root".into(),
            group: "root".into(),
        }
    }

    fn link(target: impl Into<String>) -> Node {
        Node::Symlink {
            target: target.into(),
        }
    }
}

#[derive(Debug)]
struct Entry {
    node: Node,
    /// The option that wrote it (for implicit directories, the first that
    /// needed it; used in errors only).
    option: String,
    /// Written by a `files` entry, which wins over generated files.
    user: bool,
}

/// Everything under `root/`, by path relative to it (`etc/motd`). Sorted
/// order puts every directory before its contents.
#[derive(Default)]
struct Tree {
    entries: BTreeMap<String, Entry>,
}

/// `path` relative to the overlay's root, if it is absolute and clean.
/// Every path in the tree goes through here, so nothing escapes `root/`.
fn relative(path: &str, option: &str) -> Result<String> {
    let escape = |reason| OverlayError::Escape {
        option: option.to_owned(),
        path: path.to_owned(),
        reason,
    };
    let Some(rest) = path.strip_prefix('/') else {
        return Err(escape("is not absolute"));
    };
    if rest.is_empty() {
        return Err(escape("is the root directory itself"));
    }
    for component in rest.split('/') {
        match component {
            "" => return Err(escape("has an empty component")),
            "." | ".." => return Err(escape("has a `.` or `..` component")),
            _ if component.contains('\0') => return Err(escape("contains a NUL byte")),
            _ => {}
        }
    }
    Ok(rest.to_owned())
}

impl Tree {
    /// Add `node` at the guest path `path`, creating implicit parents.
    fn put(&mut self, path: &str, node: Node, option: &str) -> Result<()> {
        self.insert(path, node, option, false)
    }

    fn insert(&mut self, path: &str, node: Node, option: &str, user: bool) -> Result<()> {
        let rel = relative(path, option)?;
        for (end, _) in rel.match_indices('/') {
            self.parent(&rel[..end], option)?;
        }
        let new = Entry {
            node,
            option: option.to_owned(),
            user,
        };
        let place = match self.entries.get(&rel) {
            None => true,
            Some(old) => replaces(old, &new, &rel)?,
        };
        if place {
            self.entries.insert(rel, new);
        }
        Ok(())
    }

    /// Make sure `rel` is a directory, for `option`.
    fn parent(&mut self, rel: &str, option: &str) -> Result<()> {
        match self.entries.get(rel) {
            Some(Entry {
                node: Node::Dir { .. },
                ..
            }) => Ok(()),
            Some(other) => Err(OverlayError::NotADirectory {
                path: format!("/{rel}"),
                needed_by: option.to_owned(),
                written_by: other.option.clone(),
            }),
            None => {
                let node = Node::Dir {
                    mode: 0o755,
                    owner: "root".into(),
                    group: "root".into(),
                    implicit: true,
                };
                let option = option.to_owned();
                let entry = Entry {
                    node,
                    option,
                    user: false,
                };
                self.entries.insert(rel.to_owned(), entry);
                Ok(())
            }
        }
    }

    fn count(&self, wanted: fn(&Node) -> bool) -> usize {
        self.entries.values().filter(|e| wanted(&e.node)).count()
    }
}

/// Whether `new` replaces `old` at `rel`; an error if they cannot share it.
fn replaces(old: &Entry, new: &Entry, rel: &str) -> Result<bool> {
    let path = format!("/{rel}");
    let collision = || OverlayError::Collision {
        option: new.option.clone(),
        path: path.clone(),
        other: old.option.clone(),
    };
    let not_a_dir = |dir: &Entry, other: &Entry| OverlayError::NotADirectory {
        path: path.clone(),
        needed_by: dir.option.clone(),
        written_by: other.option.clone(),
    };
    match (&old.node, &new.node) {
        // An explicit directory states what an implicit one only assumed.
        (Node::Dir { implicit: true, .. }, Node::Dir { .. }) => Ok(true),
        (Node::Dir { .. }, Node::Dir { implicit: true, .. }) => Ok(false),
        (Node::Dir { .. }, Node::Dir { .. }) if old.node == new.node => Ok(false),
        (Node::Dir { .. }, Node::Dir { .. }) => Err(collision()),
        (Node::Dir { .. }, _) => Err(not_a_dir(old, new)),
        (_, Node::Dir { .. }) => Err(not_a_dir(new, old)),
        _ if old.node == new.node => Ok(false),
        // The user's explicit `files` entry wins over a generated file.
        _ if new.user && !old.user => Ok(true),
        _ if old.user && !new.user => Ok(false),
        _ => Err(collision()),
    }
}

// ── the plan: a pure function of the input ────────────────────────────────

struct Plan<'a> {
    tree: Tree,
    accounts: Accounts<'a>,
    systemd: SystemdRecord,
}

fn plan<'a>(input: &OverlayInput<'a>) -> Result<Plan<'a>> {
    let config = input.config;
    let mut tree = Tree::default();
    system_files(config, &mut tree)?;
    let accounts = accounts(config)?;
    user_files(&accounts, &mut tree)?;
    let systemd = systemd(config, &mut tree)?;
    // Last, so that the user's entries find the generated ones they win over.
    spec_files(input, &mut tree)?;
    Ok(Plan {
        tree,
        accounts,
        systemd,
    })
}

/// A value written as one line of a text file.
fn single_line(value: &str, option: &str) -> Result<()> {
    if value.is_empty() || value.contains(['\n', '\r', '\0']) {
        return Err(invalid(
            option,
            format!("{value:?} must be a single, non-empty line"),
        ));
    }
    Ok(())
}

/// hostname, timezone, locale and sysctl: one small file each.
fn system_files(config: &SystemConfig, tree: &mut Tree) -> Result<()> {
    if let Some(hostname) = &config.hostname {
        single_line(hostname, "hostname")?;
        tree.put(
            "/etc/hostname",
            Node::text(format!("{hostname}\n"), 0o644),
            "hostname",
        )?;
    }
    let tz = &config.timezone;
    single_line(tz, "timezone")?;
    // The zone names a file below /usr/share/zoneinfo: no `..`, not absolute.
    relative(&format!("/{tz}"), "timezone")?;
    tree.put(
        "/etc/timezone",
        Node::text(format!("{tz}\n"), 0o644),
        "timezone",
    )?;
    tree.put(
        "/etc/localtime",
        Node::link(format!("/usr/share/zoneinfo/{tz}")),
        "timezone",
    )?;
    single_line(&config.locale, "locale")?;
    tree.put(
        "/etc/default/locale",
        Node::text(format!("LANG={}\n", config.locale), 0o644),
        "locale",
    )?;
    sysctl(&config.sysctl, tree)
}

/// `sysctl` as sorted `key = value` lines, when there are any.
fn sysctl(sysctl: &BTreeMap<String, String>, tree: &mut Tree) -> Result<()> {
    if sysctl.is_empty() {
        return Ok(());
    }
    let mut text = String::new();
    for (name, value) in sysctl {
        let option = format!("sysctl.{}", key(name));
        single_line(value, &option)?;
        if name.is_empty() || name.contains(|c: char| c == '=' || c.is_whitespace()) {
            return Err(invalid(
                &option,
                "a kernel parameter name has no `=` or spaces",
            ));
        }
        let _ = writeln!(text, "{name} = {value}");
    }
    let path = "/etc/sysctl.d/90-kiln.conf";
    tree.put(path, Node::text(text, 0o644), "sysctl")
}

/// `files`: the user's own entries.
fn spec_files(input: &OverlayInput<'_>, tree: &mut Tree) -> Result<()> {
    for (path, file) in &input.config.files {
        let option = format!("files.{}", key(path));
        let content = match (&file.text, &file.source) {
            (Some(text), None) => Content::Bytes(text.clone().into_bytes()),
            (None, Some(source)) => match input.sources.get(source) {
                Some(found) => Content::Source(found.clone()),
                None => {
                    return Err(OverlayError::MissingSource {
                        option: format!("{option}.source"),
                        file: source.clone(),
                    });
                }
            },
            _ => return Err(invalid(&option, "needs exactly one of `text` or `source`")),
        };
        let node = Node::File {
            content,
            mode: parse_mode(&file.mode, &format!("{option}.mode"))?,
            owner: file.owner.clone(),
            group: file.group.clone(),
        };
        tree.insert(path, node, &option, true)?;
    }
    Ok(())
}

/// An octal mode as in the spec: `"644"`, `"0600"`, `"4755"`.
fn parse_mode(text: &str, option: &str) -> Result<u32> {
    let octal =
        !text.is_empty() && text.len() <= 5 && text.bytes().all(|b| (b'0'..=b'7').contains(&b));
    match u32::from_str_radix(text, 8) {
        Ok(mode) if octal && mode <= 0o7777 => Ok(mode),
        _ => Err(invalid(
            option,
            format!("{text:?} is not an octal mode like \"0644\""),
        )),
    }
}

// ── users and groups ───────────────────────────────────────────────────────

/// The range system ids are handed out from (downwards from the top), and
/// the one for everyone else (upwards), as Debian's adduser.conf has them.
const SYSTEM_IDS: (u32, u32) = (100, 999);
const NORMAL_IDS: (u32, u32) = (1000, 59999);

/// Ids in use, each with the option that took it.
struct Ids {
    kind: &'static str,
    taken: BTreeMap<u32, String>,
}

impl Ids {
    fn new(kind: &'static str) -> Ids {
        Ids {
            kind,
            taken: BTreeMap::new(),
        }
    }

    /// Take an id the spec fixed; two owners of one id are an error.
    fn claim(&mut self, id: u32, option: &str) -> Result<()> {
        if let Some(other) = self.taken.get(&id) {
            return Err(OverlayError::DuplicateId {
                option: option.to_owned(),
                other: other.clone(),
                kind: self.kind,
                id,
            });
        }
        self.taken.insert(id, option.to_owned());
        Ok(())
    }

    fn allocate(&mut self, system: bool, option: &str) -> Result<u32> {
        let (first, last) = if system { SYSTEM_IDS } else { NORMAL_IDS };
        let free = |id: &u32| !self.taken.contains_key(id);
        let found = if system {
            (first..=last).rev().find(free)
        } else {
            (first..=last).find(free)
        };
        let id = found.ok_or_else(|| OverlayError::IdsExhausted {
            option: option.to_owned(),
            kind: self.kind,
            first,
            last,
        })?;
        self.taken.insert(id, option.to_owned());
        Ok(id)
    }
}

/// A user or group name that is safe in passwd and group lines, sudoers
/// and file names: a letter or `_`, then letters, digits, `_`, `.`, `-`.
fn account_name(name: &str, option: &str) -> Result<()> {
    let mut chars = name.chars();
    let first = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    let rest = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if first && rest && name.len() <= 32 {
        Ok(())
    } else {
        Err(invalid(
            option,
            format!(
                "{name:?} is not a valid account name (a letter or `_`, then letters, digits, `_`, `.` or `-`; at most 32)"
            ),
        ))
    }
}

/// A passwd field: no separator, no line break.
fn passwd_field(value: &str, option: &str) -> Result<()> {
    if value.contains([':', '\n', '\r', '\0']) {
        return Err(invalid(
            option,
            format!("{value:?} may not contain `:` or a line break"),
        ));
    }
    Ok(())
}

struct Account<'a> {
    spec: &'a User,
    uid: u32,
    uid_allocated: bool,
    group: String,
    gid: u32,
    home: String,
}

struct GroupAccount {
    gid: u32,
    gid_allocated: bool,
    system: bool,
    members: BTreeSet<String>,
    /// The user whose own group this is.
    user: Option<String>,
}

struct Accounts<'a> {
    users: BTreeMap<&'a str, Account<'a>>,
    groups: BTreeMap<String, GroupAccount>,
    /// Base-system group → kiln users to add to it.
    base_members: BTreeMap<String, BTreeSet<String>>,
}

fn accounts(config: &SystemConfig) -> Result<Accounts<'_>> {
    for (name, user) in &config.users {
        check_user(name, user)?;
    }
    let uids = allocate_uids(&config.users)?;
    let mut groups = group_accounts(config, &uids)?;
    let mut users = BTreeMap::new();
    let mut base_members: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, user) in &config.users {
        let group = user.group.clone().unwrap_or_else(|| name.clone());
        let gid = primary_gid(name, &group, &groups)?;
        for extra in &user.groups {
            match groups.get_mut(extra) {
                Some(managed) => managed.members.insert(name.clone()),
                None => base_members
                    .entry(extra.clone())
                    .or_default()
                    .insert(name.clone()),
            };
        }
        let (uid, uid_allocated) = uids[name.as_str()];
        let home = user.home.clone().unwrap_or_else(|| default_home(name));
        users.insert(
            name.as_str(),
            Account {
                spec: user,
                uid,
                uid_allocated,
                group,
                gid,
                home,
            },
        );
    }
    Ok(Accounts {
        users,
        groups,
        base_members,
    })
}

/// The gid of a user's primary group, which kiln must manage: a passwd
/// line needs the number, and kiln never guesses a base-image gid.
fn primary_gid(user: &str, group: &str, groups: &BTreeMap<String, GroupAccount>) -> Result<u32> {
    match groups.get(group) {
        Some(account) => Ok(account.gid),
        None => Err(invalid(
            &format!("users.{}.group", key(user)),
            format!(
                "`{group}` is neither in `groups` nor a kiln user's own group; its gid lives in the base image, which the overlay cannot see (declare it: `groups.{}.gid = …`)",
                key(group)
            ),
        )),
    }
}

fn default_home(name: &str) -> String {
    if name == "root" {
        "/root".into()
    } else {
        format!("/home/{name}")
    }
}

/// Everything about a user that ends up in a line or a path.
fn check_user(name: &str, user: &User) -> Result<()> {
    let option = format!("users.{}", key(name));
    account_name(name, &option)?;
    if let Some(group) = &user.group {
        account_name(group, &format!("{option}.group"))?;
    }
    for group in &user.groups {
        account_name(group, &format!("{option}.groups"))?;
    }
    if let Some(comment) = &user.comment {
        passwd_field(comment, &format!("{option}.comment"))?;
    }
    passwd_field(&user.shell, &format!("{option}.shell"))?;
    if let Some(home) = &user.home {
        passwd_field(home, &format!("{option}.home"))?;
        if home != "/" {
            relative(home, &format!("{option}.home"))?;
        }
    }
    for ssh_key in &user.ssh_authorized_keys {
        single_line(ssh_key, &format!("{option}.ssh_authorized_keys"))?;
    }
    Ok(())
}

/// Each user's uid, and whether it was allocated.
fn allocate_uids(users: &BTreeMap<String, User>) -> Result<BTreeMap<&str, (u32, bool)>> {
    let mut ids = Ids::new("uid");
    let mut uids = BTreeMap::new();
    for (name, user) in users {
        let option = format!("users.{}.uid", key(name));
        let uid = match (name.as_str(), user.uid) {
            ("root", None | Some(0)) => 0,
            ("root", Some(_)) => return Err(invalid(&option, "root's uid is 0")),
            (_, Some(uid)) => uid,
            (_, None) => continue,
        };
        ids.claim(uid, &option)?;
        uids.insert(name.as_str(), (uid, false));
    }
    // Sorted name order, after every fixed id is known.
    for (name, user) in users {
        if !uids.contains_key(name.as_str()) {
            let uid = ids.allocate(user.system, &format!("users.{}.uid", key(name)))?;
            uids.insert(name.as_str(), (uid, true));
        }
    }
    Ok(uids)
}

/// The groups kiln manages (declared ones and users' own), with gids.
fn group_accounts(
    config: &SystemConfig,
    uids: &BTreeMap<&str, (u32, bool)>,
) -> Result<BTreeMap<String, GroupAccount>> {
    let mut wanted: BTreeMap<String, (Option<u32>, GroupAccount)> = BTreeMap::new();
    for (name, group) in &config.groups {
        let option = format!("groups.{}", key(name));
        account_name(name, &option)?;
        for member in &group.members {
            account_name(member, &format!("{option}.members"))?;
        }
        let account = GroupAccount {
            gid: 0,
            gid_allocated: false,
            system: group.system,
            members: group.members.iter().cloned().collect(),
            user: None,
        };
        wanted.insert(name.clone(), (group.gid, account));
    }
    for (name, user) in &config.users {
        if user.group.is_none() {
            let (_, account) = wanted.entry(name.clone()).or_insert_with(|| {
                let account = GroupAccount {
                    gid: 0,
                    gid_allocated: false,
                    system: user.system,
                    members: BTreeSet::new(),
                    user: None,
                };
                (None, account)
            });
            account.user = Some(name.clone());
        }
    }
    assign_gids(wanted, uids)
}

/// Explicit gids first, then each user's own group takes its uid if free,
/// then the rest are allocated in sorted name order.
fn assign_gids(
    mut wanted: BTreeMap<String, (Option<u32>, GroupAccount)>,
    uids: &BTreeMap<&str, (u32, bool)>,
) -> Result<BTreeMap<String, GroupAccount>> {
    let mut ids = Ids::new("gid");
    for (name, (gid, account)) in &mut wanted {
        if let Some(gid) = *gid {
            ids.claim(gid, &format!("groups.{}.gid", key(name)))?;
            account.gid = gid;
        }
    }
    for (name, (gid, account)) in &mut wanted {
        let Some(user) = &account.user else { continue };
        let uid = uids[user.as_str()].0;
        if gid.is_none() && !ids.taken.contains_key(&uid) {
            ids.claim(uid, &format!("users.{}", key(name)))?;
            (*gid, account.gid, account.gid_allocated) = (Some(uid), uid, true);
        }
    }
    for (name, (gid, account)) in &mut wanted {
        if gid.is_none() {
            let option = match &account.user {
                Some(user) => format!("users.{}", key(user)),
                None => format!("groups.{}.gid", key(name)),
            };
            account.gid = ids.allocate(account.system, &option)?;
            account.gid_allocated = true;
        }
    }
    Ok(wanted
        .into_iter()
        .map(|(name, (_, account))| (name, account))
        .collect())
}

/// `~/.ssh/authorized_keys` and sudoers files.
fn user_files(accounts: &Accounts<'_>, tree: &mut Tree) -> Result<()> {
    for (name, account) in &accounts.users {
        if !account.spec.ssh_authorized_keys.is_empty() {
            authorized_keys(name, account, tree)?;
        }
        sudoers(name, account.spec.sudo, tree)?;
    }
    Ok(())
}

/// HOME/.ssh/authorized_keys, with HOME and HOME/.ssh, all the user's own.
fn authorized_keys(name: &str, account: &Account<'_>, tree: &mut Tree) -> Result<()> {
    let option = format!("users.{}.ssh_authorized_keys", key(name));
    let private = |mode| Node::dir(mode, name, &account.group);
    // A home of `/` is the root itself, which the overlay does not own.
    let home = account.home.trim_end_matches('/');
    if !home.is_empty() {
        tree.put(home, private(0o700), &option)?;
    }
    tree.put(&format!("{home}/.ssh"), private(0o700), &option)?;
    let mut seen = BTreeSet::new();
    let mut text = String::new();
    // Modules' lists concatenate, so one key may come twice.
    let keys = account.spec.ssh_authorized_keys.iter();
    for ssh_key in keys.filter(|k| seen.insert(*k)) {
        let _ = writeln!(text, "{ssh_key}");
    }
    let file = Node::File {
        content: Content::Bytes(text.into_bytes()),
        mode: 0o600,
        owner: name.to_owned(),
        group: account.group.clone(),
    };
    tree.put(&format!("{home}/.ssh/authorized_keys"), file, &option)
}

/// /etc/sudoers.d/kiln-NAME. sudo skips files whose names contain a dot.
fn sudoers(name: &str, sudo: Sudo, tree: &mut Tree) -> Result<()> {
    let rule = match sudo {
        Sudo::None => return Ok(()),
        Sudo::Password => "ALL",
        Sudo::Nopasswd => "NOPASSWD: ALL",
    };
    let path = format!("/etc/sudoers.d/kiln-{}", name.replace('.', "_"));
    let text = format!("{name} ALL=(ALL:ALL) {rule}\n");
    let option = format!("users.{}.sudo", key(name));
    tree.put(&path, Node::text(text, 0o440), &option)
}

// ── systemd ────────────────────────────────────────────────────────────────

/// A unit or target name that is safe as a file name: systemd's own
/// characters, no `/`, and no `%` specifiers (which only systemd expands).
fn unit_name(name: &str, option: &str) -> Result<()> {
    let chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '-' | '_' | '.' | '\\' | '@'));
    let suffix = name
        .rsplit_once('.')
        .is_some_and(|(stem, suffix)| !stem.is_empty() && !suffix.is_empty());
    if chars && suffix && !name.starts_with('.') && name.len() <= 255 {
        Ok(())
    } else {
        Err(invalid(
            option,
            format!("{name:?} is not a unit name like `foo.service`"),
        ))
    }
}

/// The `[Install]` section of a unit file.
#[derive(Default)]
struct Install {
    wanted_by: Vec<String>,
    required_by: Vec<String>,
    upheld_by: Vec<String>,
    alias: Vec<String>,
    also: Vec<String>,
    default_instance: Option<String>,
}

impl Install {
    fn parse(text: &str) -> Install {
        let mut install = Install::default();
        let mut section = String::new();
        let mut logical = String::new();
        for line in text.lines() {
            // A trailing backslash continues the line, as in systemd.
            if let Some(start) = line.strip_suffix('\\') {
                logical.push_str(start);
                logical.push(' ');
                continue;
            }
            logical.push_str(line);
            install.line(logical.trim(), &mut section);
            logical.clear();
        }
        install.line(logical.trim(), &mut section);
        install
    }

    fn line(&mut self, line: &str, section: &mut String) {
        if line.is_empty() || line.starts_with(['#', ';']) {
            return;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            *section = name.to_owned();
            return;
        }
        let Some((name, value)) = line.split_once('=') else {
            return;
        };
        if section != "Install" {
            return;
        }
        let value = value.trim();
        let list = match name.trim() {
            "WantedBy" => &mut self.wanted_by,
            "RequiredBy" => &mut self.required_by,
            "UpheldBy" => &mut self.upheld_by,
            "Alias" => &mut self.alias,
            "Also" => &mut self.also,
            "DefaultInstance" => {
                self.default_instance = Some(value.to_owned()).filter(|v| !v.is_empty());
                return;
            }
            _ => return,
        };
        // An empty assignment resets the list.
        if value.is_empty() {
            list.clear();
        }
        list.extend(value.split_whitespace().map(str::to_owned));
    }

    fn is_empty(&self) -> bool {
        self.wanted_by.is_empty()
            && self.required_by.is_empty()
            && self.upheld_by.is_empty()
            && self.alias.is_empty()
            && self.also.is_empty()
    }
}

#[derive(Serialize)]
struct SystemdRecord {
    disable: BTreeSet<String>,
    enable: BTreeSet<String>,
    mask: BTreeSet<String>,
    units: BTreeMap<String, &'static str>,
}

fn unit_set(list: &[String], option: &str) -> Result<BTreeSet<String>> {
    list.iter()
        .map(|unit| unit_name(unit, option).map(|()| unit.clone()))
        .collect()
}

/// Unit files, their enablement links and masks.
fn systemd(config: &SystemConfig, tree: &mut Tree) -> Result<SystemdRecord> {
    let systemd = &config.systemd;
    let disable = unit_set(&systemd.disable, "systemd.disable")?;
    let mask = unit_set(&systemd.mask, "systemd.mask")?;
    let mut queue = unit_set(&systemd.enable, "systemd.enable")?;
    for (name, unit) in &systemd.units {
        let option = format!("systemd.units.{}", key(name));
        unit_name(name, &option)?;
        let path = format!("/etc/systemd/system/{name}");
        tree.put(&path, Node::text(unit.text.clone(), 0o644), &option)?;
        if unit.enable {
            queue.insert(name.clone());
        }
    }
    let (enabled, enable) = enable_units(&systemd.units, queue, tree)?;
    conflicts(&enable, &enabled, &disable, &mask)?;
    for unit in &mask {
        let path = format!("/etc/systemd/system/{unit}");
        tree.put(&path, Node::link("/dev/null"), "systemd.mask")?;
    }
    // The words of `systemctl is-enabled`.
    let units = systemd
        .units
        .iter()
        .map(|(name, unit)| {
            let state = match () {
                () if Install::parse(&unit.text).is_empty() => "static",
                () if enabled.contains(name) => "enabled",
                () => "disabled",
            };
            (name.clone(), state)
        })
        .collect();
    Ok(SystemdRecord {
        disable,
        enable,
        mask,
        units,
    })
}

/// Enable `queue` and, through `Also=`, what it names: kiln units are
/// linked here; the rest, units of packages, are returned (second) for the
/// image builder. The first set is the kiln units enabled.
fn enable_units(
    units: &BTreeMap<String, Unit>,
    mut queue: BTreeSet<String>,
    tree: &mut Tree,
) -> Result<(BTreeSet<String>, BTreeSet<String>)> {
    let (mut enabled, mut packaged) = (BTreeSet::new(), BTreeSet::new());
    // A set, so the walk (and its first error) never depends on list order.
    while let Some(name) = queue.pop_first() {
        let Some(unit) = units.get(&name) else {
            packaged.insert(name);
            continue;
        };
        let install = Install::parse(&unit.text);
        link_unit(&name, &install, tree)?;
        let option = format!("systemd.units.{}.text", key(&name));
        for also in &install.also {
            unit_name(also, &option)?;
            if !enabled.contains(also) && *also != name {
                queue.insert(also.clone());
            }
        }
        enabled.insert(name);
    }
    Ok((enabled, packaged))
}

/// Enabled units may be neither disabled nor masked.
fn conflicts(
    enable: &BTreeSet<String>,
    enabled: &BTreeSet<String>,
    disable: &BTreeSet<String>,
    mask: &BTreeSet<String>,
) -> Result<()> {
    let on = enable.iter().chain(enabled);
    for unit in on {
        for (list, option) in [(disable, "systemd.disable"), (mask, "systemd.mask")] {
            if list.contains(unit) {
                return Err(invalid(
                    option,
                    format!(
                        "`{unit}` is also enabled (by `systemd.enable`, its `systemd.units` entry or another unit's `Also=`)"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The name a unit is linked under: a template (`foo@.service`) as its
/// `DefaultInstance=` (`foo@main.service`), any other unit as itself.
fn linked_name(name: &str, install: &Install, option: &str) -> Result<String> {
    let Some((stem, suffix)) = name.split_once('@').filter(|(_, s)| s.starts_with('.')) else {
        return Ok(name.to_owned());
    };
    let linked_by = [&install.wanted_by, &install.required_by, &install.upheld_by];
    match &install.default_instance {
        Some(instance) => Ok(format!("{stem}@{instance}{suffix}")),
        // Only aliases or `Also=`: nothing is linked under an instance name.
        None if linked_by.iter().all(|l| l.is_empty()) => Ok(name.to_owned()),
        None => Err(invalid(
            option,
            "a template unit needs `DefaultInstance=` in [Install] to be enabled",
        )),
    }
}

/// The symlinks `systemctl enable` would create for a kiln unit.
fn link_unit(name: &str, install: &Install, tree: &mut Tree) -> Result<()> {
    let option = format!("systemd.units.{}.text", key(name));
    let target = format!("/etc/systemd/system/{name}");
    let linked = linked_name(name, install, &option)?;
    unit_name(&linked, &option)?;
    let mut links = BTreeSet::new();
    for (targets, dir) in [
        (&install.wanted_by, "wants"),
        (&install.required_by, "requires"),
        (&install.upheld_by, "upholds"),
    ] {
        for by in targets {
            unit_name(by, &option)?;
            links.insert(format!("/etc/systemd/system/{by}.{dir}/{linked}"));
        }
    }
    let suffix = name.rsplit_once('.').map(|(_, s)| s);
    for alias in &install.alias {
        unit_name(alias, &option)?;
        if alias.rsplit_once('.').map(|(_, s)| s) != suffix {
            return Err(invalid(
                &option,
                format!("alias `{alias}` must have the same suffix as `{name}`"),
            ));
        }
        links.insert(format!("/etc/systemd/system/{alias}"));
    }
    for link in links {
        tree.put(
            &link,
            Node::link(target.clone()),
            &format!("systemd.units.{}", key(name)),
        )?;
    }
    Ok(())
}

// ── writing ────────────────────────────────────────────────────────────────

/// The epoch as atime and mtime, for `std` (files, directories) and for
/// `utimensat` (symlinks themselves, which `std` cannot set).
#[derive(Clone, Copy)]
struct Times {
    std: FileTimes,
    link: Timespec,
}

fn file_times(epoch: i64) -> Result<Times> {
    let seconds = Duration::from_secs(epoch.unsigned_abs());
    let time = if epoch >= 0 {
        UNIX_EPOCH.checked_add(seconds)
    } else {
        UNIX_EPOCH.checked_sub(seconds)
    };
    let time: SystemTime =
        time.ok_or_else(|| invalid("epoch", format!("{epoch} is out of range")))?;
    Ok(Times {
        std: FileTimes::new().set_accessed(time).set_modified(time),
        link: Timespec {
            tv_sec: epoch,
            tv_nsec: 0,
        },
    })
}

fn write_error(path: &Path) -> impl FnOnce(io::Error) -> OverlayError + '_ {
    move |source| OverlayError::Write {
        path: path.to_path_buf(),
        source,
    }
}

/// What went into one file.
struct Written {
    sha256: String,
    size: u64,
}

fn write_output(
    plan: &Plan<'_>,
    input: &OverlayInput<'_>,
    out: &Path,
    times: Times,
) -> Result<OverlaySummary> {
    let root = out.join("root");
    fs::create_dir(&root).map_err(write_error(&root))?;
    let written = write_tree(&plan.tree, &root, times)?;
    let (passwd, group, shadow) = fragments(&plan.accounts);
    let manifest = manifest(plan, input, &written);
    for (name, bytes) in [
        ("passwd", passwd.into_bytes()),
        ("group", group.into_bytes()),
        ("shadow", shadow.into_bytes()),
        ("manifest.json", manifest),
    ] {
        write_file(&out.join(name), &Content::Bytes(bytes), 0o644, name, times)?;
    }
    // Directories last and deepest first: adding an entry changes a
    // directory's mtime. Reverse sorted order visits children first.
    for (rel, entry) in plan.tree.entries.iter().rev() {
        if let Node::Dir { mode, .. } = entry.node {
            finish_dir(&root.join(rel), mode, times)?;
        }
    }
    finish_dir(&root, 0o755, times)?;
    finish_dir(out, 0o755, times)?;
    Ok(summary(plan))
}

/// Create every entry of `tree` under `root`, parents first (sorted order);
/// what went into each file, by relative path.
fn write_tree<'t>(tree: &'t Tree, root: &Path, times: Times) -> Result<BTreeMap<&'t str, Written>> {
    let mut written = BTreeMap::new();
    for (rel, entry) in &tree.entries {
        let path = root.join(rel);
        match &entry.node {
            // Mode and times once the contents are in: see write_output.
            Node::Dir { .. } => fs::create_dir(&path).map_err(write_error(&path))?,
            Node::File { content, mode, .. } => {
                let file = write_file(&path, content, *mode, &entry.option, times)?;
                written.insert(rel.as_str(), file);
            }
            Node::Symlink { target } => {
                std::os::unix::fs::symlink(target, &path).map_err(write_error(&path))?;
                let stamps = Timestamps {
                    last_access: times.link,
                    last_modification: times.link,
                };
                utimensat(CWD, &path, &stamps, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|errno| write_error(&path)(errno.into()))?;
            }
        }
    }
    Ok(written)
}

fn summary(plan: &Plan<'_>) -> OverlaySummary {
    let tree = &plan.tree;
    OverlaySummary {
        files: tree.count(|n| matches!(n, Node::File { .. })),
        directories: tree.count(|n| matches!(n, Node::Dir { .. })),
        symlinks: tree.count(|n| matches!(n, Node::Symlink { .. })),
        users: plan.accounts.users.len(),
        groups: plan.accounts.groups.len(),
    }
}

fn finish_dir(path: &Path, mode: u32, times: Times) -> Result<()> {
    fs::set_permissions(path, Permissions::from_mode(mode)).map_err(write_error(path))?;
    fs::File::open(path)
        .and_then(|dir| dir.set_times(times.std))
        .map_err(write_error(path))
}

/// Create `path` (never overwriting), fill it, and fix its mode and times.
/// `option` names the setting in an error reading a source.
fn write_file(
    path: &Path,
    content: &Content,
    mode: u32,
    option: &str,
    times: Times,
) -> Result<Written> {
    let mut file = fs::File::create_new(path).map_err(write_error(path))?;
    let mut hasher = Sha256::new();
    let size = match content {
        Content::Bytes(bytes) => {
            hasher.update(bytes);
            file.write_all(bytes).map_err(write_error(path))?;
            bytes.len() as u64
        }
        Content::Source(source) => copy_source(source, option, &mut file, path, &mut hasher)?,
    };
    // Only permission bits: see the module doc on setuid and setgid.
    file.set_permissions(Permissions::from_mode(mode & 0o777))
        .and_then(|()| file.set_times(times.std))
        .map_err(write_error(path))?;
    let mut sha256 = String::with_capacity(64);
    for byte in hasher.finalize().iter() {
        let _ = write!(sha256, "{byte:02x}");
    }
    Ok(Written { sha256, size })
}

/// Copy `source` into `file` (at `path`), hashing on the way; the size.
fn copy_source(
    source: &Path,
    option: &str,
    file: &mut fs::File,
    path: &Path,
    hasher: &mut Sha256,
) -> Result<u64> {
    let read_error = |error| OverlayError::ReadSource {
        option: option.to_owned(),
        path: source.to_path_buf(),
        source: error,
    };
    let mut reader = fs::File::open(source).map_err(read_error)?;
    let mut buffer = vec![0; 64 * 1024];
    let mut size = 0;
    loop {
        let read = match reader.read(&mut buffer) {
            Ok(0) => return Ok(size),
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(read_error(error)),
        };
        hasher.update(&buffer[..read]);
        file.write_all(&buffer[..read]).map_err(write_error(path))?;
        size += read as u64;
    }
}

/// The passwd, group and shadow fragments.
fn fragments(accounts: &Accounts<'_>) -> (String, String, String) {
    let (mut passwd, mut group, mut shadow) = (String::new(), String::new(), String::new());
    for (name, account) in &accounts.users {
        let user = account.spec;
        let comment = user.comment.as_deref().unwrap_or("");
        let _ = writeln!(
            passwd,
            "{name}:x:{}:{}:{comment}:{}:{}",
            account.uid, account.gid, account.home, user.shell
        );
        // Never the reference: the deploy resolves it and sets the hash.
        let locked = if user.password.is_some() { '!' } else { '*' };
        let _ = writeln!(shadow, "{name}:{locked}:::::::");
    }
    for (name, account) in &accounts.groups {
        let members: Vec<&str> = account.members.iter().map(String::as_str).collect();
        let _ = writeln!(group, "{name}:x:{}:{}", account.gid, members.join(","));
    }
    (passwd, group, shadow)
}

// ── manifest.json ──────────────────────────────────────────────────────────

/// Fields in sorted order, so the manifest is canonical as serialised.
#[derive(Serialize)]
struct Manifest<'a> {
    base_group_members: &'a BTreeMap<String, BTreeSet<String>>,
    epoch: i64,
    groups: BTreeMap<&'a str, GroupRecord<'a>>,
    host: &'a str,
    paths: BTreeMap<String, PathRecord<'a>>,
    systemd: &'a SystemdRecord,
    users: BTreeMap<&'a str, UserRecord<'a>>,
    version: u32,
}

#[derive(Serialize)]
struct PathRecord<'a> {
    group: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    implicit: bool,
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    option: Option<&'a str>,
    owner: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    sha256: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<&'a str>,
}

#[derive(Serialize)]
struct UserRecord<'a> {
    comment: Option<&'a str>,
    gid: u32,
    group: &'a str,
    groups: BTreeSet<&'a str>,
    home: &'a str,
    /// `"deploy"` when a password hash is set at deploy; never the reference.
    password: Option<&'static str>,
    shell: &'a str,
    sudo: Sudo,
    system: bool,
    uid: u32,
    uid_allocated: bool,
}

#[derive(Serialize)]
struct GroupRecord<'a> {
    gid: u32,
    gid_allocated: bool,
    members: &'a BTreeSet<String>,
    system: bool,
    /// The user whose own group this is.
    user: Option<&'a str>,
}

fn manifest(
    plan: &Plan<'_>,
    input: &OverlayInput<'_>,
    written: &BTreeMap<&str, Written>,
) -> Vec<u8> {
    let accounts = &plan.accounts;
    let manifest = Manifest {
        base_group_members: &accounts.base_members,
        epoch: input.epoch,
        groups: accounts
            .groups
            .iter()
            .map(|(name, g)| (name.as_str(), group_record(g)))
            .collect(),
        host: input.host,
        paths: plan
            .tree
            .entries
            .iter()
            .map(|(rel, entry)| {
                (
                    format!("/{rel}"),
                    path_record(entry, written.get(rel.as_str())),
                )
            })
            .collect(),
        systemd: &plan.systemd,
        users: accounts
            .users
            .iter()
            .map(|(name, a)| (*name, user_record(a)))
            .collect(),
        version: MANIFEST_VERSION,
    };
    let mut bytes = serde_json::to_vec_pretty(&manifest).expect("the manifest is plain data");
    bytes.push(b'\n');
    bytes
}

fn path_record<'a>(entry: &'a Entry, written: Option<&'a Written>) -> PathRecord<'a> {
    let mut record = PathRecord {
        group: "root",
        implicit: false,
        kind: "symlink",
        mode: None,
        option: Some(&entry.option),
        owner: "root",
        sha256: None,
        size: None,
        target: None,
    };
    match &entry.node {
        Node::Dir {
            mode,
            owner,
            group,
            implicit,
        } => {
            (record.kind, record.mode) = ("dir", Some(format!("{mode:04o}")));
            (record.owner, record.group, record.implicit) = (owner, group, *implicit);
            // An implicit directory is nobody's setting.
            if *implicit {
                record.option = None;
            }
        }
        Node::File {
            mode, owner, group, ..
        } => {
            (record.kind, record.mode) = ("file", Some(format!("{mode:04o}")));
            (record.owner, record.group) = (owner, group);
            record.sha256 = written.map(|w| w.sha256.as_str());
            record.size = written.map(|w| w.size);
        }
        Node::Symlink { target } => record.target = Some(target),
    }
    record
}

fn user_record<'a>(account: &'a Account<'a>) -> UserRecord<'a> {
    let user = account.spec;
    UserRecord {
        comment: user.comment.as_deref(),
        gid: account.gid,
        group: &account.group,
        groups: user.groups.iter().map(String::as_str).collect(),
        home: &account.home,
        password: user.password.as_ref().map(|_| "deploy"),
        shell: &user.shell,
        sudo: user.sudo,
        system: user.system,
        uid: account.uid,
        uid_allocated: account.uid_allocated,
    }
}

fn group_record(group: &GroupAccount) -> GroupRecord<'_> {
    GroupRecord {
        gid: group.gid,
        gid_allocated: group.gid_allocated,
        members: &group.members,
        system: group.system,
        user: group.user.as_deref(),
    }
}
