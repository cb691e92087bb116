//! The typed stack model: what `kiln eval stack:NAME --json` prints and
//! what the compose and Kubernetes renderers read.
//!
//! JSON shape (versioned by [`STACK_MODEL_VERSION`], documented in
//! `docs/src/reference/json.md`): sizes are bytes, durations seconds, CPU
//! millicores; maps are sorted; secrets are references, never values.
//! Every field a service did not set itself says where its value came
//! from in [`Stack::provenance`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::Span;

/// The version of the stack JSON shape (1 was the raw, untyped model; 3
/// added `settings`, `role` and `mounts`).
pub const STACK_MODEL_VERSION: u32 = 3;

/// The default forward-auth address of the Authentik outpost on Kubernetes:
/// the edge stack's `authentik` service, in the `edge` namespace.
pub const FORWARD_AUTH: &str =
    "http://authentik.edge.svc.cluster.local:9000/outpost.goauthentik.io/auth/traefik";

/// The default image of the compose volume backup companion.
pub const BACKUP_IMAGE: &str = "offen/docker-volume-backup:v2.44.0";

/// A stack, evaluated, checked and completed by the defaults pass.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stack {
    /// Always `"stack"`.
    pub kind: String,
    pub version: u32,
    pub name: String,
    /// The stack file, relative to the repo.
    pub file: String,
    pub description: Option<String>,
    /// The host the compose bundle is deployed to.
    pub host: Option<String>,
    pub targets: Vec<String>,
    /// The import closure, dependencies first.
    pub modules: Vec<String>,
    /// The environment overlay applied (`--env`), if any.
    pub env: Option<String>,
    /// Every environment the file defines (`[env.NAME]`).
    pub environments: Vec<String>,
    /// How the stack is rendered (the `[stack]` table's target settings).
    pub settings: Settings,
    pub services: BTreeMap<String, Service>,
    /// Where each value came from, by path (`services.web.replicas`):
    /// `FILE:LINE:COL` for a value written in the stack (with
    /// ` (env NAME)` when an overlay set it), `default: …` for one kiln
    /// chose.
    pub provenance: BTreeMap<String, String>,
    /// The span of each value, by the same paths (for later diagnostics).
    #[serde(skip)]
    pub spans: BTreeMap<String, Span>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Service {
    /// The image as written (`traefik:v3.1`); also its lockfile id.
    pub image: String,
    /// `REGISTRY/REPOSITORY:TAG@sha256:…` once pinned by the lockfile.
    pub image_ref: Option<String>,
    /// What the service is to the others.
    pub role: Role,
    /// `kind` (and a cron job's `schedule`), flattened into the service.
    #[serde(flatten)]
    pub workload: Workload,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub secrets: BTreeMap<String, SecretRef>,
    pub ports: BTreeMap<String, Port>,
    pub volumes: BTreeMap<String, Volume>,
    /// Host bind mounts, by name (never backed up).
    pub mounts: BTreeMap<String, Mount>,
    /// `None` when opted out (`type = "none"`) or nothing can be probed.
    pub health: Option<HealthCheck>,
    pub resources: Resources,
    pub replicas: u32,
    pub depends_on: Vec<String>,
    pub expose: Option<Exposure>,
    pub metrics: Option<Metrics>,
    /// Scrape `metrics` (a ServiceMonitor, a Prometheus target).
    pub monitoring: bool,
    /// `None` for a cron job.
    pub strategy: Option<Strategy>,
    pub labels: BTreeMap<String, String>,
    /// `None` when opted out (`network_policy = false`).
    pub network_policy: Option<NetworkPolicy>,
}

/// What a service is to the rest of the fleet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// An application.
    #[default]
    App,
    /// The reverse proxy every `expose` goes through (Traefik): on compose
    /// it joins the shared proxy network and reads the router labels.
    Proxy,
    /// The monitoring system (Prometheus): on compose it joins the shared
    /// monitoring network and reads the file_sd targets.
    Monitoring,
}

/// A host path bind-mounted into the container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// Path on the host.
    pub host: String,
    /// Path in the container.
    pub path: String,
    pub read_only: bool,
}

/// How a stack is rendered: the `[stack]` table's settings, each with a
/// default, so a renderer never guesses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// Kubernetes namespace (default: the stack's name); also the compose
    /// project name.
    pub namespace: String,
    pub k8s: K8sSettings,
    pub compose: ComposeSettings,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct K8sSettings {
    /// Which backup operator's schedule to render.
    pub backup: BackupOperator,
    /// How an exposed service is routed.
    pub ingress: IngressKind,
    /// The `ingressClassName` of an Ingress.
    pub ingress_class: String,
    /// The ClusterSecretStore every ExternalSecret reads from (Vault).
    pub secret_store: String,
    /// The namespace the reverse proxy (Traefik) runs in: network policies
    /// let it in to exposed ports.
    pub proxy_namespace: String,
    /// The namespace Prometheus runs in: network policies let it in to
    /// metrics ports.
    pub monitoring_namespace: String,
    /// The Authentik outpost's forward-auth address, called by Traefik
    /// for every `auth = "authentik"` exposure.
    pub forward_auth: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupOperator {
    K8up,
    Velero,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IngressKind {
    /// Traefik's IngressRoute (forward-auth middlewares, weighted services).
    Ingressroute,
    /// The portable networking.k8s.io/v1 Ingress.
    Ingress,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComposeSettings {
    /// The external network the reverse proxy and every exposed service
    /// join (created once on the Docker host).
    pub proxy_network: String,
    /// The external network Prometheus and every monitored service join.
    pub monitoring_network: String,
    /// The image of the volume backup companion (pinned in lockfile.toml
    /// like any service's).
    pub backup_image: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Workload {
    Service,
    Stateful,
    Cronjob { schedule: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Strategy {
    Rolling,
    /// Traffic weights in percent, increasing, ending at 100.
    Canary {
        steps: Vec<u8>,
    },
    BlueGreen,
}

/// Where a secret lives. kiln never holds the value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "kebab-case")]
pub enum SecretRef {
    /// An environment variable of whoever deploys.
    Env { name: String },
    /// A file on the deploying machine.
    File { path: String },
    /// A Vault KV secret: `vault:MOUNT/PATH#KEY`.
    Vault { path: String, key: String },
}

impl SecretRef {
    /// From a reference already checked by the `secret` option type.
    pub fn parse(text: &str) -> Option<SecretRef> {
        if let Some(name) = text.strip_prefix("env:") {
            return Some(SecretRef::Env {
                name: name.to_owned(),
            });
        }
        if let Some(path) = text.strip_prefix("file:") {
            return Some(SecretRef::File {
                path: path.to_owned(),
            });
        }
        let (path, key) = text.strip_prefix("vault:")?.split_once('#')?;
        Some(SecretRef::Vault {
            path: path.to_owned(),
            key: key.to_owned(),
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Port {
    pub port: u16,
    pub published: Option<u16>,
    pub protocol: Protocol,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub path: String,
    /// Bytes.
    pub size: Option<u64>,
    /// `None` when opted out.
    pub backup: Option<BackupPolicy>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupPolicy {
    /// Cron schedule.
    pub schedule: String,
    pub keep_daily: u32,
    pub keep_weekly: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// `type` and its fields, flattened into the check.
    #[serde(flatten)]
    pub probe: Probe,
    /// Seconds.
    pub interval: u64,
    /// Seconds.
    pub timeout: u64,
    pub retries: u32,
    /// Seconds.
    pub start_period: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Probe {
    /// An HTTP GET on a named port.
    Http { port: String, path: String },
    /// A TCP connect to a named port.
    Tcp { port: String },
    /// A command in the container; exit 0 is healthy.
    Exec { command: Vec<String> },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// CPU request, millicores.
    pub cpu: u32,
    /// Memory request, bytes.
    pub memory: u64,
    /// CPU limit, millicores; `None` is unlimited.
    pub cpu_limit: Option<u32>,
    /// Memory limit, bytes.
    pub memory_limit: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exposure {
    pub hostname: String,
    /// The name of the port routed to.
    pub port: String,
    pub tls: bool,
    pub auth: Auth,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Auth {
    None,
    Authentik,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metrics {
    /// The name of the port serving metrics.
    pub port: String,
    pub path: String,
    /// Seconds.
    pub interval: u64,
}

/// Default deny, DNS allowed, and one allow per dependency edge (plus the
/// reverse proxy for an exposed service and the monitoring system for a
/// monitored one).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkPolicy {
    /// Always true: what is not allowed below is denied.
    pub default_deny: bool,
    /// Egress to the cluster DNS on 53/udp and 53/tcp.
    pub dns: bool,
    /// Who may connect to this service.
    pub ingress: Vec<Peer>,
    /// What this service may connect to.
    pub egress: Vec<Peer>,
    /// It may also connect to the internet (`internet = true`): any
    /// address outside the private ranges.
    pub internet: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Peer {
    /// Another service of the stack, on these of its ports (by name; empty
    /// when it declares none, meaning any).
    Service { name: String, ports: Vec<String> },
    /// The reverse proxy, to the exposed port.
    Proxy { ports: Vec<String> },
    /// The monitoring system, to the metrics port.
    Monitoring { ports: Vec<String> },
}
