//! The cloud-init NoCloud seed of a VM guest: `user-data`, `meta-data` and
//! `network-config`, and the ISO 9660 volume `cidata` that carries them.
//!
//! [`render`] is a pure function of its [`SeedInput`]: the host's evaluated
//! config, the MACs the VM spec gave its interfaces, and the host's
//! `overlay` output (see [`crate::builders::overlay`]), from which it takes
//! every `files` entry's bytes as rendered there and the modes, owners and
//! account ids in `manifest.json`. [`write_iso`] packs a [`Seed`] into the
//! same bytes on every machine. Every value goes into YAML through
//! [`crate::yaml`], never through string formatting.
//!
//! The formats are cloud-init's NoCloud datasource
//! (<https://docs.cloud-init.io/en/latest/reference/datasources/nocloud.html>)
//! as Debian 12's cloud-init 22.4.2 reads them; `tests/seed.rs` checks the
//! output with that version's own `cloud-init schema` and `net-convert`.
//!
//! # `user-data` (`#cloud-config`)
//!
//! | key | from |
//! |---|---|
//! | `hostname`, `fqdn` (with `domain`), `prefer_fqdn_over_hostname: false` | `hostname` (else the host's name), `domain` |
//! | `manage_etc_hosts: true`, unless `files` writes `/etc/hosts` | |
//! | `timezone`, `locale` | `timezone`, `locale` |
//! | `users` (always present, so the distro's `default` user is never made; `{}` when there are none, as 22.4.2's schema wants a list to have an entry): `name`, `gecos`, `uid`, `primary_group`, `groups`, `homedir`, `shell`, `system`, `sudo`, `lock_passwd: true`, `ssh_authorized_keys` | `users`; uid, primary group and home as the overlay allocated them |
//! | `groups`: `name`, or `{name: [members]}` | `groups` |
//! | `write_files`: `path`, `content` (or base64 with `encoding: b64`), `owner` `user:group`, `permissions` `"0644"`, `defer: true` when not root-owned | `files`, as rendered by the overlay |
//! | `bootcmd`, `runcmd` (when not empty), `package_update`, `package_upgrade` | `cloud_init` |
//!
//! No `packages`: an image is built with its packages. A file's content is
//! written as YAML text when it is UTF-8 that a YAML reader gives back
//! exactly (no control characters but tab and newline, no CR, NEL, LS, PS
//! or BOM, which readers normalise or reject); anything else is base64.
//! `defer` makes cloud-init write the file at the end of boot, after the
//! users and groups that own it exist (`write_files` runs before
//! `users-groups`).
//!
//! **Secrets never enter the seed.** `users.NAME.password` is a reference
//! (`vault:…`, `env:…`) to a hash that the deploy sets; the seed does not
//! carry it, nor anything derived from it. Every account gets
//! `lock_passwd: true`, which cloud-init applies once per instance: the
//! deploy must set a password hash after that first boot, or cloud-init
//! locks it.
//!
//! `cloud_init.enable` is not read here: whether a guest gets a seed at
//! all is the caller's decision.
//!
//! # `meta-data`
//!
//! `instance-id` (a new id makes cloud-init run its per-instance modules
//! again) and `local-hostname`.
//!
//! # `network-config` (version 2)
//!
//! One `ethernets` entry per `network.interfaces` entry, by name: `match:
//! {macaddress}` and `set-name` when the VM spec gave it a MAC, `dhcp4` and
//! `dhcp6` for `dhcp`, `addresses`, `gateway4` / `gateway6`, `mtu`, and
//! `nameservers: {addresses, search}` from `network.nameservers` and
//! `network.search` on every interface. Default routes are written as
//! `gateway4`/`gateway6`, not as `routes: [{to: default}]`: cloud-init
//! 22.4.2 rejects `to: default` for its ifupdown and networkd renderers,
//! and turns `to: ::/0` into a `::/64` route.
//!
//! With no interfaces configured, every interface the VM spec gave a MAC
//! (it gives `eth0` one) gets DHCPv4, as cloud-init's own fallback would;
//! without any MAC, `match: {name: "e*"}` asks for DHCPv4 on the ethernet
//! devices (netplan honours the pattern; ifupdown and networkd configure
//! `eth0`).
//!
//! # The ISO
//!
//! `xorriso -as mkisofs` with Joliet and rationalised Rock Ridge (`-r`:
//! owner 0, modes `r--r--r--`), volume id `cidata`, the three files at the
//! root. `SOURCE_DATE_EPOCH`, `--modification-date` and
//! `--set_all_file_dates` fix every date; every descriptor text is set
//! (empty) so no startup file can add one; no startup file is read
//! (`-no_rc`, `HOME` and the working directory are kiln's); the
//! environment is cleared (`TZ=UTC`, `LC_ALL=C`). Permissions are
//! normalised by `-r`, so the umask does not matter either.
//! genisoimage, which Proxmox itself uses, is not reproducible.

use std::collections::BTreeMap;
use std::fs::{self, FileTimes, Permissions};
use std::io;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::time::{Duration, UNIX_EPOCH};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::builders::overlay::MANIFEST_VERSION;
use crate::eval::spec::{Interface, Sudo, SystemConfig};
use crate::yaml::{self, YamlError};

/// Everything a seed is a function of.
pub struct SeedInput<'a> {
    /// The host's name: its hostname unless `hostname` says otherwise.
    pub host: &'a str,
    pub config: &'a SystemConfig,
    /// cloud-init's `instance-id`: a plain file name (cloud-init keeps its
    /// per-instance state under `/var/lib/cloud/instances/ID`).
    pub instance_id: &'a str,
    /// Interface name in the guest → the MAC the VM spec gave it.
    pub macs: &'a BTreeMap<String, String>,
    /// The host's `overlay` build output.
    pub overlay: &'a Path,
}

/// The three files of a NoCloud seed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seed {
    pub user_data: String,
    pub meta_data: String,
    pub network_config: String,
}

impl Seed {
    /// The files by their name on the volume, sorted.
    pub fn files(&self) -> [(&'static str, &str); 3] {
        [
            ("meta-data", &self.meta_data),
            ("network-config", &self.network_config),
            ("user-data", &self.user_data),
        ]
    }
}

/// Why a seed could not be rendered or written.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("{option}: {message}")]
    Invalid { option: String, message: String },
    #[error("cannot read {path} from the overlay output: {source}")]
    ReadOverlay {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {message} (rebuild the host's overlay with this kiln)")]
    Manifest { path: PathBuf, message: String },
    #[error(transparent)]
    Yaml(#[from] YamlError),
    #[error("`xorriso` is not installed (Debian package `xorriso`): apt-get install xorriso")]
    MissingXorriso,
    #[error("xorriso failed ({status}) writing {path}:\n{stderr}")]
    Xorriso {
        path: PathBuf,
        status: String,
        stderr: String,
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

type Result<T, E = SeedError> = std::result::Result<T, E>;

fn invalid(option: impl Into<String>, message: impl Into<String>) -> SeedError {
    SeedError::Invalid {
        option: option.into(),
        message: message.into(),
    }
}

/// Render the seed of `input`.
pub fn render(input: &SeedInput<'_>) -> Result<Seed> {
    let config = input.config;
    let hostname = config.hostname.as_deref().unwrap_or(input.host);
    check_hostname(hostname)?;
    check_instance_id(input.instance_id)?;
    let manifest = Manifest::read(input.overlay)?;
    let user_data = user_data(config, hostname, &manifest, input.overlay)?;
    let meta_data = yaml::to_string(&MetaData {
        instance_id: input.instance_id,
        local_hostname: hostname,
    })?;
    let network_config = yaml::to_string(&network_config(config, input.macs)?)?;
    Ok(Seed {
        user_data: format!("#cloud-config\n{}", yaml::to_string(&user_data)?),
        meta_data,
        network_config,
    })
}

fn check_hostname(hostname: &str) -> Result<()> {
    let valid = (1..=63).contains(&hostname.len())
        && hostname
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !hostname.starts_with('-')
        && !hostname.ends_with('-');
    if valid {
        Ok(())
    } else {
        Err(invalid(
            "hostname",
            format!("`{hostname}` is not a host name (letters, digits and `-`, at most 63)"),
        ))
    }
}

fn check_instance_id(id: &str) -> Result<()> {
    let valid = (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && id != "."
        && id != "..";
    if valid {
        Ok(())
    } else {
        Err(invalid(
            "instance-id",
            format!("`{id}` must be a plain name of letters, digits, `-`, `_` and `.`"),
        ))
    }
}

// ── the overlay's manifest ─────────────────────────────────────────────────

/// The parts of the overlay's `manifest.json` the seed needs.
#[derive(Deserialize)]
struct Manifest {
    version: u32,
    paths: BTreeMap<String, ManifestPath>,
    users: BTreeMap<String, ManifestUser>,
}

#[derive(Deserialize)]
struct ManifestPath {
    kind: String,
    mode: Option<String>,
    owner: String,
    group: String,
}

#[derive(Deserialize)]
struct ManifestUser {
    uid: u32,
    group: String,
    home: String,
}

impl Manifest {
    fn read(overlay: &Path) -> Result<Manifest> {
        let path = overlay.join("manifest.json");
        let bytes = fs::read(&path).map_err(|source| SeedError::ReadOverlay {
            path: path.clone(),
            source,
        })?;
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|e| SeedError::Manifest {
                path: path.clone(),
                message: e.to_string(),
            })?;
        if manifest.version != MANIFEST_VERSION {
            return Err(SeedError::Manifest {
                path,
                message: format!(
                    "version {} is not the supported {MANIFEST_VERSION}",
                    manifest.version
                ),
            });
        }
        Ok(manifest)
    }
}

// ── user-data ──────────────────────────────────────────────────────────────

/// Fields in the order they are written.
#[derive(Serialize)]
struct UserData<'a> {
    hostname: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    fqdn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prefer_fqdn_over_hostname: Option<bool>,
    manage_etc_hosts: bool,
    timezone: &'a str,
    locale: &'a str,
    users: Users<'a>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    groups: Vec<CloudGroup<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    write_files: Vec<WriteFile<'a>>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    bootcmd: &'a [String],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    runcmd: &'a [String],
    package_update: bool,
    package_upgrade: bool,
}

/// `users`, never absent: without it cloud-init makes the distro's
/// `default` user. cloud-init 22.4.2's schema rejects an empty list, so no
/// users is an empty mapping (which cloud-init reads as no users, logging
/// that the mapping form is deprecated).
#[derive(Serialize)]
#[serde(untagged)]
enum Users<'a> {
    List(Vec<CloudUser<'a>>),
    Empty(BTreeMap<&'a str, ()>),
}

#[derive(Serialize)]
struct CloudUser<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    gecos: Option<&'a str>,
    uid: u32,
    primary_group: &'a str,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    groups: &'a [String],
    homedir: &'a str,
    shell: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    system: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    sudo: Option<&'static str>,
    lock_passwd: bool,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    ssh_authorized_keys: &'a [String],
}

/// cloud-init's `groups` item: a bare name, or a name with its members.
#[derive(Serialize)]
#[serde(untagged)]
enum CloudGroup<'a> {
    Name(&'a str),
    WithMembers(BTreeMap<&'a str, &'a [String]>),
}

#[derive(Serialize)]
struct WriteFile<'a> {
    path: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    encoding: Option<&'static str>,
    content: String,
    owner: String,
    permissions: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    defer: bool,
}

fn user_data<'a>(
    config: &'a SystemConfig,
    hostname: &'a str,
    manifest: &'a Manifest,
    overlay: &Path,
) -> Result<UserData<'a>> {
    let users = config
        .users
        .iter()
        .map(|(name, user)| {
            let account = manifest
                .users
                .get(name)
                .ok_or_else(|| SeedError::Manifest {
                    path: overlay.join("manifest.json"),
                    message: format!("has no account for `users.{name}`"),
                })?;
            Ok(CloudUser {
                name,
                gecos: user.comment.as_deref(),
                uid: account.uid,
                primary_group: &account.group,
                groups: &user.groups,
                homedir: &account.home,
                shell: &user.shell,
                system: user.system,
                // The same rules as the overlay's /etc/sudoers.d/kiln-NAME.
                sudo: match user.sudo {
                    Sudo::None => None,
                    Sudo::Password => Some("ALL=(ALL:ALL) ALL"),
                    Sudo::Nopasswd => Some("ALL=(ALL:ALL) NOPASSWD: ALL"),
                },
                // `user.password` is a secret reference and stays out.
                lock_passwd: true,
                ssh_authorized_keys: &user.ssh_authorized_keys,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let groups = config
        .groups
        .iter()
        .map(|(name, group)| {
            if group.members.is_empty() {
                CloudGroup::Name(name)
            } else {
                CloudGroup::WithMembers(BTreeMap::from([(name.as_str(), &group.members[..])]))
            }
        })
        .collect();
    let write_files = config
        .files
        .keys()
        .map(|path| write_file(path, manifest, overlay))
        .collect::<Result<Vec<_>>>()?;
    Ok(UserData {
        hostname,
        fqdn: config
            .domain
            .as_ref()
            .map(|domain| format!("{hostname}.{domain}")),
        prefer_fqdn_over_hostname: config.domain.as_ref().map(|_| false),
        manage_etc_hosts: !config.files.contains_key("/etc/hosts"),
        timezone: &config.timezone,
        locale: &config.locale,
        users: if users.is_empty() {
            Users::Empty(BTreeMap::new())
        } else {
            Users::List(users)
        },
        groups,
        write_files,
        bootcmd: &config.cloud_init.bootcmd,
        runcmd: &config.cloud_init.runcmd,
        package_update: config.cloud_init.package_update,
        package_upgrade: config.cloud_init.package_upgrade,
    })
}

fn write_file<'a>(path: &'a str, manifest: &Manifest, overlay: &Path) -> Result<WriteFile<'a>> {
    let option = format!("files.{path:?}");
    let relative = guest_path(path).ok_or_else(|| {
        invalid(
            &option,
            "not an absolute path without `.`, `..` or empty components",
        )
    })?;
    let manifest_path = overlay.join("manifest.json");
    let entry = manifest
        .paths
        .get(path)
        .filter(|entry| entry.kind == "file")
        .ok_or_else(|| SeedError::Manifest {
            path: manifest_path.clone(),
            message: format!("has no file {path} for {option}"),
        })?;
    let mode = entry
        .mode
        .as_deref()
        .and_then(|mode| u32::from_str_radix(mode, 8).ok())
        .filter(|mode| *mode <= 0o7777)
        .ok_or_else(|| SeedError::Manifest {
            path: manifest_path,
            message: format!("the mode of {path} is not an octal mode"),
        })?;
    let file = overlay.join("root").join(relative);
    // Never follow a link out of the overlay: a `files` entry is a file.
    let bytes = match fs::symlink_metadata(&file) {
        Ok(meta) if meta.is_file() => fs::read(&file),
        Ok(_) => Err(io::Error::other("not a regular file")),
        Err(e) => Err(e),
    }
    .map_err(|source| SeedError::ReadOverlay {
        path: file.clone(),
        source,
    })?;
    let (encoding, content) = match yaml_text(&bytes) {
        Some(text) => (None, text.to_owned()),
        None => (
            Some("b64"),
            base64::engine::general_purpose::STANDARD.encode(&bytes),
        ),
    };
    Ok(WriteFile {
        path,
        encoding,
        content,
        owner: format!("{}:{}", entry.owner, entry.group),
        permissions: format!("{mode:04o}"),
        defer: entry.owner != "root" || entry.group != "root",
    })
}

/// `/etc/motd` → `etc/motd`; `None` for anything that could leave the root.
fn guest_path(path: &str) -> Option<PathBuf> {
    let rest = path.strip_prefix('/')?;
    if rest.is_empty() || rest.split('/').any(|part| matches!(part, "" | "." | "..")) {
        return None;
    }
    let relative = PathBuf::from(rest);
    relative
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
        .then_some(relative)
}

/// The bytes as text that a YAML reader gives back exactly, else `None`.
///
/// PyYAML rejects C0 and C1 controls (but tab and newline), DEL, U+FFFE and
/// U+FFFF in a stream, and turns CR, NEL (U+0085), LS and PS (U+2028/9)
/// into newlines; a BOM is stripped at the start of a stream.
fn yaml_text(bytes: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(bytes).ok()?;
    text.chars()
        .all(|c| {
            matches!(c,
                '\t' | '\n' | ' '..='~' | '\u{a0}'..='\u{2027}' | '\u{202a}'..='\u{d7ff}'
                | '\u{e000}'..='\u{fefe}' | '\u{ff00}'..='\u{fffd}' | '\u{10000}'..)
        })
        .then_some(text)
}

// ── meta-data ──────────────────────────────────────────────────────────────

#[derive(Serialize)]
struct MetaData<'a> {
    #[serde(rename = "instance-id")]
    instance_id: &'a str,
    #[serde(rename = "local-hostname")]
    local_hostname: &'a str,
}

// ── network-config ─────────────────────────────────────────────────────────

#[derive(Serialize)]
struct NetworkConfig<'a> {
    version: u32,
    ethernets: BTreeMap<&'a str, Ethernet<'a>>,
}

#[derive(Default, Serialize)]
struct Ethernet<'a> {
    #[serde(rename = "match", skip_serializing_if = "Option::is_none")]
    matcher: Option<Match<'a>>,
    #[serde(rename = "set-name", skip_serializing_if = "Option::is_none")]
    set_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dhcp4: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dhcp6: Option<bool>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    addresses: Vec<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gateway4: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gateway6: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mtu: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nameservers: Option<Nameservers<'a>>,
}

#[derive(Serialize)]
struct Match<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    macaddress: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
}

#[derive(Clone, Serialize)]
struct Nameservers<'a> {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    addresses: Vec<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    search: Vec<&'a str>,
}

fn network_config<'a>(
    config: &'a SystemConfig,
    macs: &'a BTreeMap<String, String>,
) -> Result<NetworkConfig<'a>> {
    let network = &config.network;
    for (index, server) in network.nameservers.iter().enumerate() {
        if server.parse::<IpAddr>().is_err() {
            return Err(invalid(
                format!("network.nameservers[{index}]"),
                format!("`{server}` is not an IP address"),
            ));
        }
    }
    for (index, domain) in network.search.iter().enumerate() {
        if domain.is_empty() || domain.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid(
                format!("network.search[{index}]"),
                format!("`{domain}` is not a domain name"),
            ));
        }
    }
    let nameservers =
        (!network.nameservers.is_empty() || !network.search.is_empty()).then(|| Nameservers {
            addresses: network.nameservers.iter().map(String::as_str).collect(),
            search: network.search.iter().map(String::as_str).collect(),
        });
    for name in macs.keys() {
        check_interface_name(name, "the VM spec's MACs")?;
        if !network.interfaces.is_empty() && !network.interfaces.contains_key(name) {
            return Err(invalid(
                "network.interfaces",
                format!("the VM spec gives a MAC to `{name}`, which is not configured"),
            ));
        }
    }
    let mut ethernets = BTreeMap::new();
    if network.interfaces.is_empty() {
        for (name, mac) in macs {
            let option = format!("the MAC of {name}");
            ethernets.insert(
                name.as_str(),
                Ethernet {
                    matcher: Some(Match {
                        macaddress: Some(mac_address(mac, &option)?),
                        name: None,
                    }),
                    set_name: Some(name),
                    dhcp4: Some(true),
                    nameservers: nameservers.clone(),
                    ..Ethernet::default()
                },
            );
        }
        if macs.is_empty() {
            ethernets.insert(
                "eth0",
                Ethernet {
                    matcher: Some(Match {
                        macaddress: None,
                        name: Some("e*"),
                    }),
                    dhcp4: Some(true),
                    nameservers: nameservers.clone(),
                    ..Ethernet::default()
                },
            );
        }
    }
    for (name, interface) in &network.interfaces {
        let option = format!("network.interfaces.{name}");
        check_interface_name(name, &option)?;
        let mut ethernet = ethernet(interface, &option)?;
        if let Some(mac) = macs.get(name) {
            ethernet.matcher = Some(Match {
                macaddress: Some(mac_address(mac, &format!("the MAC of {name}"))?),
                name: None,
            });
            ethernet.set_name = Some(name);
        }
        ethernet.nameservers = nameservers.clone();
        ethernets.insert(name.as_str(), ethernet);
    }
    Ok(NetworkConfig {
        version: 2,
        ethernets,
    })
}

fn ethernet<'a>(interface: &'a Interface, option: &str) -> Result<Ethernet<'a>> {
    if interface.dhcp && !interface.address.is_empty() {
        return Err(invalid(
            option,
            "has both `dhcp = true` and static addresses",
        ));
    }
    let mut families = (false, false);
    for (index, address) in interface.address.iter().enumerate() {
        match cidr(address) {
            Some(IpAddr::V4(_)) => families.0 = true,
            Some(IpAddr::V6(_)) => families.1 = true,
            None => {
                return Err(invalid(
                    format!("{option}.address[{index}]"),
                    format!("`{address}` is not an address with a prefix length (`192.0.2.5/24`)"),
                ));
            }
        }
    }
    let gateway = |value: &'a Option<String>, key: &str, v6: bool, have: bool| match value {
        None => Ok(None),
        Some(text) => match text.parse::<IpAddr>() {
            Ok(ip) if ip.is_ipv6() == v6 && have => Ok(Some(text.as_str())),
            Ok(ip) if ip.is_ipv6() == v6 => Err(invalid(
                format!("{option}.{key}"),
                format!(
                    "a gateway needs a static IPv{} address on the interface",
                    if v6 { 6 } else { 4 }
                ),
            )),
            _ => Err(invalid(
                format!("{option}.{key}"),
                format!("`{text}` is not an IPv{} address", if v6 { 6 } else { 4 }),
            )),
        },
    };
    Ok(Ethernet {
        dhcp4: interface.dhcp.then_some(true),
        dhcp6: interface.dhcp.then_some(true),
        addresses: interface.address.iter().map(String::as_str).collect(),
        gateway4: gateway(&interface.gateway, "gateway", false, families.0)?,
        gateway6: gateway(&interface.gateway6, "gateway6", true, families.1)?,
        mtu: interface.mtu,
        ..Ethernet::default()
    })
}

/// `192.0.2.5/24` → the address, when the prefix fits it.
fn cidr(text: &str) -> Option<IpAddr> {
    let (address, prefix) = text.split_once('/')?;
    let address: IpAddr = address.parse().ok()?;
    let prefix: u8 = prefix.parse().ok()?;
    let bits = if address.is_ipv4() { 32 } else { 128 };
    (prefix <= bits).then_some(address)
}

/// A Linux interface name: 1 to 15 bytes of letters, digits, `_`, `.`, `-`.
fn check_interface_name(name: &str, option: &str) -> Result<()> {
    let valid = (1..=15).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && name != "."
        && name != "..";
    if valid {
        Ok(())
    } else {
        Err(invalid(
            option,
            format!("`{name}` is not an interface name (at most 15 letters, digits, `_.-`)"),
        ))
    }
}

/// `BC:24:11:0A:0B:0C` → `bc:24:11:0a:0b:0c`.
fn mac_address(text: &str, option: &str) -> Result<String> {
    let parts: Vec<&str> = text.split(':').collect();
    let valid = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
    if valid {
        Ok(text.to_ascii_lowercase())
    } else {
        Err(invalid(
            option,
            format!("`{text}` is not a MAC address (`bc:24:11:00:00:01`)"),
        ))
    }
}

// ── the ISO ────────────────────────────────────────────────────────────────

/// Write `seed` as the ISO 9660 volume `cidata` to `out_iso`, which must
/// not exist yet. `work_dir` is scratch space (its `cidata/` is replaced);
/// every date in the image is `epoch` (seconds since 1970, UTC, before
/// the year 3000).
pub fn write_iso(seed: &Seed, work_dir: &Path, out_iso: &Path, epoch: u64) -> Result<()> {
    let write_error = |path: &Path| {
        let path = path.to_owned();
        move |source| SeedError::Write { path, source }
    };
    let modification_date = iso_date(epoch)?;
    if fs::symlink_metadata(out_iso).is_ok() {
        return Err(SeedError::OutputExists {
            path: out_iso.to_owned(),
        });
    }
    let out_iso = std::path::absolute(out_iso).map_err(write_error(out_iso))?;
    let files = work_dir.join("cidata");
    if fs::symlink_metadata(&files).is_ok() {
        fs::remove_dir_all(&files).map_err(write_error(&files))?;
    }
    fs::create_dir_all(&files).map_err(write_error(&files))?;
    fs::set_permissions(&files, Permissions::from_mode(0o755)).map_err(write_error(&files))?;
    let times = FileTimes::new()
        .set_accessed(UNIX_EPOCH + Duration::from_secs(epoch))
        .set_modified(UNIX_EPOCH + Duration::from_secs(epoch));
    for (name, text) in seed.files() {
        let path = files.join(name);
        let file = fs::File::create_new(&path).map_err(write_error(&path))?;
        io::Write::write_all(&mut &file, text.as_bytes()).map_err(write_error(&path))?;
        file.set_permissions(Permissions::from_mode(0o644))
            .map_err(write_error(&path))?;
        file.set_times(times).map_err(write_error(&path))?;
    }
    let epoch_text = epoch.to_string();
    let mut command = Command::new("xorriso");
    command
        .current_dir(&files)
        .env_clear()
        .env("PATH", crate::build::sandbox::PATH)
        .env("HOME", &files)
        .env("TZ", "UTC")
        .env("LC_ALL", "C")
        .env("SOURCE_DATE_EPOCH", &epoch_text)
        // No startup file: they could add any option.
        .args(["-no_rc", "-as", "mkisofs", "-quiet"])
        .arg("-o")
        .arg(&out_iso)
        .args(["-V", "cidata", "-J", "-r", "-iso-level", "3"])
        // Every descriptor text, so no .mkisofsrc or xorriso version shows.
        .args([
            "-volset",
            "",
            "-A",
            "",
            "-p",
            "",
            "-publisher",
            "",
            "-sysid",
            "",
        ])
        .args(["-copyright", "", "-abstract", "", "-biblio", ""])
        .arg(format!("--modification-date={modification_date}"))
        .args(["--set_all_file_dates", &format!("={epoch_text}")])
        .args(seed.files().map(|(name, _)| name));
    let output = command.output().map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => SeedError::MissingXorriso,
        _ => SeedError::Write {
            path: out_iso.clone(),
            source,
        },
    })?;
    if !output.status.success() {
        return Err(SeedError::Xorriso {
            path: out_iso,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    let iso = fs::File::open(&out_iso).map_err(write_error(&out_iso))?;
    iso.set_permissions(Permissions::from_mode(0o644))
        .map_err(write_error(&out_iso))?;
    iso.set_times(times).map_err(write_error(&out_iso))
}

/// Seconds since 1970 → `YYYYMMDDhhmmss00` in UTC, as xorriso's
/// `--modification-date` takes it (years 1970 to 2999).
fn iso_date(epoch: u64) -> Result<String> {
    const YEAR_3000: u64 = 32_503_680_000;
    if epoch >= YEAR_3000 {
        return Err(invalid(
            "SOURCE_DATE_EPOCH",
            format!("{epoch} is after the last date ISO 9660 images take (2999)"),
        ));
    }
    let (days, seconds) = (epoch / 86_400, epoch % 86_400);
    // Howard Hinnant's civil_from_days, for days since 1970-01-01 ≥ 0.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    Ok(format!(
        "{year:04}{month:02}{day:02}{:02}{:02}{:02}00",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_xorriso_names_its_package() {
        let message = SeedError::MissingXorriso.to_string();
        assert!(message.contains("apt-get install xorriso"), "{message}");
    }

    #[test]
    fn iso_dates_are_utc() {
        assert_eq!(iso_date(0).unwrap(), "1970010100000000");
        assert_eq!(iso_date(1_700_000_000).unwrap(), "2023111422132000");
        assert_eq!(iso_date(951_782_400).unwrap(), "2000022900000000");
        assert_eq!(iso_date(32_503_679_999).unwrap(), "2999123123595900");
        assert!(iso_date(32_503_680_000).is_err());
    }

    #[test]
    fn text_that_yaml_cannot_carry_exactly_is_base64() {
        assert_eq!(yaml_text(b"plain\n\ttabbed\n"), Some("plain\n\ttabbed\n"));
        assert_eq!(yaml_text("Grüße 😀\n".as_bytes()), Some("Grüße 😀\n"));
        for bytes in [
            &b"crlf\r\n"[..],
            b"\x00binary",
            b"bell\x07",
            b"del\x7f",
            b"\xff\xfe not utf-8",
            "nel\u{85}".as_bytes(),
            "line separator\u{2028}".as_bytes(),
            "\u{feff}bom".as_bytes(),
            "\u{fffe}".as_bytes(),
        ] {
            assert_eq!(yaml_text(bytes), None, "{bytes:?}");
        }
    }

    #[test]
    fn guest_paths_stay_inside() {
        assert_eq!(guest_path("/etc/motd"), Some(PathBuf::from("etc/motd")));
        for path in ["etc/motd", "/", "/etc/../x", "/etc//x", "/./x", "/etc/"] {
            assert_eq!(guest_path(path), None, "{path}");
        }
    }

    #[test]
    fn macs_and_addresses_are_checked() {
        assert_eq!(
            mac_address("BC:24:11:0A:0B:0C", "m").unwrap(),
            "bc:24:11:0a:0b:0c"
        );
        for bad in [
            "bc:24:11:0a:0b",
            "bc-24-11-0a-0b-0c",
            "bc:24:11:0a:0b:0g",
            "",
        ] {
            assert!(mac_address(bad, "m").is_err(), "{bad}");
        }
        assert!(cidr("192.0.2.5/24").is_some());
        assert!(cidr("fd00::5/64").is_some());
        for bad in [
            "192.0.2.5",
            "192.0.2.5/33",
            "fd00::5/129",
            "x/24",
            "192.0.2.5/",
        ] {
            assert!(cidr(bad).is_none(), "{bad}");
        }
        assert!(check_interface_name("eth0", "i").is_ok());
        for bad in ["", "..", "a/b", "a b", "sixteen-chars-xx"] {
            assert!(check_interface_name(bad, "i").is_err(), "{bad}");
        }
    }

    #[test]
    fn instance_ids_and_hostnames_are_plain_names() {
        assert!(check_instance_id("kiln-0123abc").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", "a\nb"] {
            assert!(check_instance_id(bad).is_err(), "{bad:?}");
        }
        assert!(check_hostname("web-1").is_ok());
        for bad in ["", "-web", "web-", "web.example", "web_1"] {
            assert!(check_hostname(bad).is_err(), "{bad}");
        }
    }
}
