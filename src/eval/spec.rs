//! Specs: the fully evaluated, typed result for a host, an image or a
//! stack. Plain serde structs; `kiln eval TARGET --json` prints them.
//!
//! JSON shape (versioned by `version`, documented in
//! `docs/src/reference/json.md`): sizes are bytes, durations seconds, secret
//! options hold their reference (`env:NAME`), never a value. Map keys are
//! sorted, so the same repo always prints the same bytes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const SPEC_VERSION: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GuestKind {
    Lxc,
    Vm,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostSpec {
    /// Always `"host"`.
    pub kind: String,
    pub version: u32,
    pub name: String,
    /// The host file, relative to the repo.
    pub file: String,
    pub description: Option<String>,
    pub guest: GuestKind,
    pub image: String,
    /// The import closure, dependencies first.
    pub modules: Vec<String>,
    pub config: SystemConfig,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageSpec {
    /// Always `"image"`.
    pub kind: String,
    pub version: u32,
    pub name: String,
    pub file: String,
    pub description: Option<String>,
    pub formats: Vec<GuestKind>,
    pub image_version: String,
    pub arch: String,
    pub base: ImageBase,
    pub modules: Vec<String>,
    pub config: SystemConfig,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageBase {
    Debian {
        suite: String,
        mirror: String,
        components: Vec<String>,
        variant: String,
    },
    Url {
        url: String,
        format: Option<String>,
    },
    Image(String),
}

/// A stack's evaluated service model (see [`crate::stack::model`]).
pub use crate::stack::model::Stack as StackSpec;

/// kiln's built-in options, typed, plus every module-declared option.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SystemConfig {
    pub hostname: Option<String>,
    pub domain: Option<String>,
    pub timezone: String,
    pub locale: String,
    pub packages: Vec<String>,
    pub users: BTreeMap<String, User>,
    pub groups: BTreeMap<String, Group>,
    pub files: BTreeMap<String, File>,
    pub systemd: Systemd,
    pub sysctl: BTreeMap<String, String>,
    pub network: Network,
    pub cloud_init: CloudInit,
    pub proxmox: Proxmox,
    /// How `kiln deploy` decides the guest is healthy (not a build input).
    #[serde(default, skip_serializing_if = "Health::is_unset")]
    pub health: Health,
    /// Options declared by modules, by their top-level group.
    #[serde(flatten)]
    pub options: BTreeMap<String, serde_json::Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub uid: Option<u32>,
    pub group: Option<String>,
    pub groups: Vec<String>,
    pub home: Option<String>,
    pub shell: String,
    pub comment: Option<String>,
    pub system: bool,
    pub sudo: Sudo,
    pub ssh_authorized_keys: Vec<String>,
    /// A secret reference to the password hash.
    pub password: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sudo {
    None,
    Password,
    Nopasswd,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Group {
    pub gid: Option<u32>,
    pub members: Vec<String>,
    pub system: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct File {
    pub text: Option<String>,
    /// Repo-relative path of the file to copy.
    pub source: Option<String>,
    pub mode: String,
    pub owner: String,
    pub group: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Systemd {
    pub units: BTreeMap<String, Unit>,
    pub enable: Vec<String>,
    pub disable: Vec<String>,
    pub mask: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Unit {
    pub text: String,
    pub enable: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Network {
    pub interfaces: BTreeMap<String, Interface>,
    pub nameservers: Vec<String>,
    pub search: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Interface {
    pub bridge: String,
    pub vlan: Option<u16>,
    pub dhcp: bool,
    pub address: Vec<String>,
    pub gateway: Option<String>,
    pub gateway6: Option<String>,
    pub mtu: Option<u32>,
    pub firewall: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CloudInit {
    pub enable: bool,
    pub package_update: bool,
    pub package_upgrade: bool,
    pub bootcmd: Vec<String>,
    pub runcmd: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Proxmox {
    pub node: Option<String>,
    pub vmid: Option<u32>,
    pub cores: u32,
    /// Bytes.
    pub memory: u64,
    /// Bytes.
    pub swap: u64,
    /// Bytes.
    pub disk: u64,
    pub storage: String,
    pub bridge: String,
    pub template_storage: String,
    pub disks: BTreeMap<String, Disk>,
    pub tags: Vec<String>,
    pub onboot: bool,
    pub startup_order: Option<u32>,
    pub unprivileged: bool,
    pub features: Vec<String>,
    pub machine: String,
    pub bios: String,
    pub cpu: String,
    pub scsihw: String,
    pub agent: bool,
    /// Where and how `kiln deploy` reaches Proxmox (not a build input).
    #[serde(default, skip_serializing_if = "Api::is_unset")]
    pub api: Api,
}

/// `proxmox.api`: the endpoint, token and trust `kiln deploy` uses. Unset
/// values take the defaults documented in `core.toml` at deploy time, so
/// an unset block serialises to nothing and derivations do not change.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Api {
    pub url: Option<String>,
    pub token: Option<String>,
    pub secret_env: Option<String>,
    pub secret_file: Option<String>,
    pub fingerprint: Option<String>,
    pub ca_file: Option<String>,
    /// Seconds.
    pub timeout: Option<u32>,
    /// Seconds.
    pub task_timeout: Option<u32>,
}

impl Api {
    pub fn is_unset(&self) -> bool {
        *self == Api::default()
    }
}

/// `health`: what `kiln deploy` waits for after starting a guest.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Health {
    /// `HOST:PORT` that must accept a TCP connection.
    pub tcp: Option<String>,
    /// A URL that must answer 2xx/3xx.
    pub http: Option<String>,
    /// Seconds.
    pub timeout: Option<u32>,
}

impl Health {
    pub fn is_unset(&self) -> bool {
        *self == Health::default()
    }
}

impl SystemConfig {
    /// The configuration as a builder sees it: without what only deploying
    /// uses (`proxmox.api`, `health`), so changing an endpoint, a token or
    /// a health check rebuilds nothing.
    pub fn for_build(&self) -> SystemConfig {
        let mut config = self.clone();
        config.proxmox.api = Api::default();
        config.health = Health::default();
        config
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Disk {
    /// Bytes.
    pub size: u64,
    pub storage: Option<String>,
    pub mountpoint: Option<String>,
    pub backup: bool,
}

/// Any evaluated target.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Spec {
    Host(Box<HostSpec>),
    Image(Box<ImageSpec>),
    Stack(Box<StackSpec>),
}
