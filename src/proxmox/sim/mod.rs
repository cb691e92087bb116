//! A Proxmox VE API simulator: an HTTP server that answers kiln's requests
//! the way a PVE 9.1 node does, for tests and for trying kiln by hand
//! (`kiln-pve-sim`).
//!
//! Every request goes through what `pveproxy` does before an API handler
//! runs: transfer-encoding check, API-token authentication, the streaming
//! upload parser, route lookup and parameter validation against Proxmox's
//! published schema ([`crate::proxmox::ApiSchema`], the 9.1 dump embedded in
//! the binary), then the token's privileges as PVE checks them. Then a
//! small model answers: nodes, storages and the volumes on them, QEMU and
//! LXC guests, and tasks with real-format UPIDs. Where behaviour is not in
//! the schema, the code names the Proxmox source file it follows.
//!
//! | module | owns |
//! |---|---|
//! | [`config`] | what the simulated cluster holds at start |
//! | `server` | the accept loop, `pveproxy`'s request pipeline, the request log |
//! | `auth` | `PVEAPIToken` header parsing |
//! | `acl` | token privileges, PVE's ACL checks, [`PERMISSIONS`] |
//! | `multipart` | `pveproxy`'s order-sensitive streaming upload parser |
//! | `storage` | storage endpoints, upload, volume delete |
//! | `tasks` | UPIDs, task status and log, the node's task list |
//! | `cluster` | `/cluster/nextid`, `/cluster/resources` |
//! | `guests` | what VMs and CTs share: config, digest, tags, MACs, guest volumes, guest tasks |
//! | `volumes` | volume ids in configs: type, owner, access checks, bridges |
//! | `qemu`, `qemu_disks` | QEMU endpoints; drives and NICs |
//! | `lxc`, `lxc_volumes` | LXC endpoints; mount points |
//! | `faults` | faults armed by tests |
//! | `tls` | HTTPS with a self-signed certificate (`SimConfig::tls`) |
//!
//! Plain HTTP by default; with `tls` it serves HTTPS as PVE does on port
//! 8006, with a certificate made at start.

mod acl;
mod auth;
mod cluster;
pub mod config;
mod faults;
mod guests;
mod lxc;
mod lxc_volumes;
mod multipart;
mod qemu;
mod qemu_disks;
mod server;
mod state;
mod storage;
mod tasks;
mod tls;
mod volumes;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

pub use acl::{EndpointPermission, PERMISSIONS};
pub use config::{SimConfig, StorageConfig, TokenConfig};
pub use faults::Fault;
pub use guests::{Guest, GuestKind};
pub use state::{LoggedRequest, Outcome, TaskState, Volume};

use crate::proxmox::{ApiSchema, SchemaError};

/// Why the simulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("the embedded Proxmox API schema does not load: {0}")]
    Schema(#[from] SchemaError),
    #[error("the embedded Proxmox API schema does not decompress: {0}")]
    SchemaGzip(std::io::Error),
    #[error("cannot create the simulator's storage directory: {0}")]
    TempDir(std::io::Error),
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid simulator configuration: {0}")]
    Config(String),
    #[error("cannot make the simulator's TLS certificate: {0}")]
    Tls(String),
}

/// PVE 9.1's schema, every method, parameters only (see
/// `tests/fixtures/proxmox/PROVENANCE.md`): 30 KB compressed, and it routes
/// all 649 methods, so a request kiln should not make is still validated.
const APIDATA_GZ: &[u8] =
    include_bytes!("../../../tests/fixtures/proxmox/pve-apidata-9.1.params.json.gz");
const FORMATS: &str = include_str!("../../../tests/fixtures/proxmox/pve-api-formats.json");

/// Compiles the embedded PVE 9.1 schema.
pub fn embedded_schema() -> Result<ApiSchema, SimError> {
    use std::io::Read;
    let mut apidata = String::new();
    flate2::read::GzDecoder::new(APIDATA_GZ)
        .read_to_string(&mut apidata)
        .map_err(SimError::SchemaGzip)?;
    Ok(ApiSchema::from_json(&apidata, FORMATS)?)
}

/// A running simulator. Dropping it stops the server and removes its files.
pub struct Simulator {
    address: SocketAddr,
    shared: Arc<server::Shared>,
    accept: tokio::task::JoinHandle<()>,
    certificate: Option<tls::Certificate>,
    _root: tempfile::TempDir,
}

impl Simulator {
    /// Starts a simulator on `config.listen` (port 0: any free port). Must be
    /// called inside a tokio runtime.
    pub async fn start(config: SimConfig) -> Result<Simulator, SimError> {
        config.check().map_err(SimError::Config)?;
        let schema = embedded_schema()?;
        let root = tempfile::Builder::new()
            .prefix("kiln-pve-sim-")
            .tempdir()
            .map_err(SimError::TempDir)?;
        let state = state::State::new(&config, root.path()).map_err(SimError::TempDir)?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| SimError::Listen {
                address: config.listen,
                source,
            })?;
        let address = listener.local_addr().map_err(|source| SimError::Listen {
            address: config.listen,
            source,
        })?;
        let (certificate, acceptor) = if config.tls {
            let (certificate, acceptor) = tls::self_signed(address)?;
            (Some(certificate), Some(acceptor))
        } else {
            (None, None)
        };
        let shared = Arc::new(server::Shared {
            schema,
            config,
            upload_dir: root.path().join("var-tmp"),
            state: Mutex::new(state),
        });
        std::fs::create_dir_all(&shared.upload_dir).map_err(SimError::TempDir)?;
        let accept = tokio::spawn(server::accept_loop(listener, shared.clone(), acceptor));
        Ok(Simulator {
            address,
            shared,
            accept,
            certificate,
            _root: root,
        })
    }

    /// The API base URL, `http://127.0.0.1:PORT/api2/json`, or `https://`
    /// with [`SimConfig::tls`].
    pub fn url(&self) -> String {
        let scheme = if self.certificate.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}/api2/json", self.address)
    }

    /// With [`SimConfig::tls`]: the self-signed certificate served, in PEM
    /// (a client can trust it as its CA file).
    pub fn certificate_pem(&self) -> Option<&str> {
        self.certificate.as_ref().map(|c| c.pem.as_str())
    }

    /// With [`SimConfig::tls`]: the SHA-256 fingerprint of the certificate
    /// served, `AB:CD:…` (upper-case hex, colons) as PVE shows it.
    pub fn fingerprint(&self) -> Option<&str> {
        self.certificate.as_ref().map(|c| c.fingerprint.as_str())
    }

    /// The `Authorization` header value for the first configured token.
    pub fn authorization(&self) -> String {
        self.shared
            .config
            .tokens
            .first()
            .map(TokenConfig::authorization)
            .unwrap_or_default()
    }

    fn state(&self) -> MutexGuard<'_, state::State> {
        // A poisoned lock means a handler panicked: a bug, but the state
        // is still the best picture of what happened.
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Every request received so far, oldest first (never a token secret).
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.state().log.clone()
    }

    /// The volumes on a storage, by volid.
    pub fn volumes(&self, storage: &str) -> BTreeMap<String, Volume> {
        self.state().volumes(storage)
    }

    /// Every guest (VM or container), by VMID.
    pub fn guests(&self) -> BTreeMap<u32, Guest> {
        self.state().guests.clone()
    }

    /// The guest with this VMID, if it exists.
    pub fn guest(&self, vmid: u32) -> Option<Guest> {
        self.state().guests.get(&vmid).cloned()
    }

    /// Where a volume's bytes are, if it exists.
    pub fn volume_path(&self, volid: &str) -> Option<PathBuf> {
        self.state().volume_path(volid)
    }

    /// Every task, by UPID.
    pub fn tasks(&self) -> BTreeMap<String, TaskState> {
        self.state().tasks()
    }

    /// Arms a fault; see [`Fault`].
    pub fn arm(&self, fault: Fault) {
        self.state().faults.arm(fault);
    }

    /// Faults armed but not yet (fully) sprung.
    pub fn armed(&self) -> Vec<Fault> {
        self.state().faults.armed()
    }

    /// Ends a task left running by [`Fault::TaskNeverEnds`], with `exit`
    /// (`"OK"` or an error message) as its last log line would give.
    pub fn finish_task(&self, upid: &str, exit: &str) -> bool {
        let mut state = self.state();
        state.finish_task(upid, exit)
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
