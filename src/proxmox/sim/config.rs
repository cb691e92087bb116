//! What the simulated cluster holds when it starts: nodes, storages and API
//! tokens. Readable from a small TOML file (`kiln-pve-sim --config`).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::Deserialize;

/// The simulated cluster.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    /// Where to listen; port 0 picks a free port.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Node names; every storage is on every node (a storage that is not
    /// shared still has separate contents per node in PVE, which the
    /// simulator does not model yet: it keeps one content list).
    #[serde(default = "default_nodes")]
    pub nodes: Vec<String>,
    #[serde(default = "default_storages")]
    pub storages: Vec<StorageConfig>,
    #[serde(default = "default_tokens")]
    pub tokens: Vec<TokenConfig>,
    /// The pve-manager version `/version` reports.
    #[serde(default = "default_version")]
    pub version: String,
    /// Serve HTTPS with a self-signed certificate made at start.
    #[serde(default)]
    pub tls: bool,
}

/// One storage, as in `/etc/pve/storage.cfg`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    pub id: String,
    /// The plugin type: `dir`, `nfs`, `lvmthin`, `zfspool`, `rbd`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// Enabled content types: `iso`, `vztmpl`, `import`, `images`, ...
    pub content: Vec<String>,
    /// Size in bytes reported as `total`.
    #[serde(default = "default_total")]
    pub total: u64,
}

/// An API token: `USER@REALM!TOKENID` and its secret.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub id: String,
    pub secret: String,
    /// What the (privilege-separated) token may do: ACL path (`/`,
    /// `/vms`, `/vms/100`, `/storage/local`, `/sdn/zones/localnetwork/vmbr0`)
    /// → privileges. A path's privileges apply below it unless a deeper
    /// path is listed, as PVE's propagating ACLs do. `None`: everything.
    #[serde(default)]
    pub privileges: Option<BTreeMap<String, Vec<String>>>,
}

impl TokenConfig {
    /// The `Authorization` header value a client sends.
    pub fn authorization(&self) -> String {
        format!("PVEAPIToken={}={}", self.id, self.secret)
    }
}

impl StorageConfig {
    /// Whether the storage is file-based (has a `path`), which upload
    /// needs. pve-storage `src/PVE/Storage/*Plugin.pm`: these plugins
    /// declare a `path` property.
    pub fn has_path(&self) -> bool {
        matches!(
            self.kind.as_str(),
            "dir" | "nfs" | "cifs" | "cephfs" | "btrfs" | "glusterfs"
        )
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn default_nodes() -> Vec<String> {
    vec!["pve1".to_owned()]
}

fn default_total() -> u64 {
    100 * 1024 * 1024 * 1024
}

fn default_version() -> String {
    "9.1.1".to_owned()
}

fn default_storages() -> Vec<StorageConfig> {
    let storage = |id: &str, kind: &str, content: &[&str]| StorageConfig {
        id: id.to_owned(),
        kind: kind.to_owned(),
        content: content.iter().map(|c| (*c).to_owned()).collect(),
        total: default_total(),
    };
    vec![
        storage(
            "local",
            "dir",
            &["iso", "vztmpl", "import", "backup", "snippets"],
        ),
        storage("local-lvm", "lvmthin", &["images", "rootdir"]),
    ]
}

fn default_tokens() -> Vec<TokenConfig> {
    vec![TokenConfig {
        id: "kiln@pve!ci".to_owned(),
        secret: "0b0e6a2c-5d1f-4e0a-9a57-2f3c4d5e6f70".to_owned(),
        privileges: None,
    }]
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            listen: default_listen(),
            nodes: default_nodes(),
            storages: default_storages(),
            tokens: default_tokens(),
            version: default_version(),
            tls: false,
        }
    }
}

impl SimConfig {
    /// Reads a TOML configuration; missing keys take the defaults.
    pub fn from_toml(text: &str) -> Result<SimConfig, toml::de::Error> {
        toml::from_str(text)
    }

    /// The storage with this id.
    pub fn storage(&self, id: &str) -> Option<&StorageConfig> {
        self.storages.iter().find(|s| s.id == id)
    }

    pub(super) fn check(&self) -> Result<(), String> {
        if self.nodes.is_empty() {
            return Err("at least one node is needed".to_owned());
        }
        for token in &self.tokens {
            if super::auth::split_token_id(&token.id).is_none() {
                return Err(format!(
                    "token id '{}' is not USER@REALM!TOKENNAME",
                    token.id
                ));
            }
        }
        Ok(())
    }
}
