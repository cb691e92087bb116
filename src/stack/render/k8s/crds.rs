//! The custom resources the Kubernetes bundle holds, as plain serde
//! structs: only the fields kiln writes, camelCase, `None` left out. Each
//! is checked against its CRD's published JSON schema in
//! `tests/render_k8s.rs`.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::Serialize;

/// A custom resource: `apiVersion`, `kind`, `metadata`, `spec`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Resource<S> {
    pub(crate) api_version: &'static str,
    pub(crate) kind: &'static str,
    pub(crate) metadata: ObjectMeta,
    pub(crate) spec: S,
}

// ── Prometheus Operator ───────────────────────────────────────────────────

/// `monitoring.coreos.com/v1` ServiceMonitor.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ServiceMonitorSpec {
    pub(crate) selector: LabelSelector,
    pub(crate) namespace_selector: NamespaceSelector,
    pub(crate) endpoints: Vec<Endpoint>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct NamespaceSelector {
    pub(crate) match_names: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Endpoint {
    pub(crate) port: String,
    pub(crate) path: String,
    pub(crate) interval: String,
}

// ── External Secrets Operator ─────────────────────────────────────────────

/// `external-secrets.io/v1` ExternalSecret.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ExternalSecretSpec {
    pub(crate) refresh_interval: String,
    pub(crate) secret_store_ref: SecretStoreRef,
    pub(crate) target: ExternalSecretTarget,
    pub(crate) data: Vec<ExternalSecretData>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SecretStoreRef {
    pub(crate) kind: &'static str,
    pub(crate) name: String,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ExternalSecretTarget {
    pub(crate) name: String,
    pub(crate) creation_policy: &'static str,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ExternalSecretData {
    pub(crate) secret_key: String,
    pub(crate) remote_ref: RemoteRef,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RemoteRef {
    pub(crate) key: String,
    pub(crate) property: String,
}

// ── Traefik ───────────────────────────────────────────────────────────────

/// `traefik.io/v1alpha1` IngressRoute.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct IngressRouteSpec {
    pub(crate) entry_points: Vec<String>,
    pub(crate) routes: Vec<Route>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tls: Option<RouteTls>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Route {
    pub(crate) kind: &'static str,
    #[serde(rename = "match")]
    pub(crate) match_: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) middlewares: Vec<MiddlewareRef>,
    pub(crate) services: Vec<RouteService>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MiddlewareRef {
    pub(crate) name: String,
    pub(crate) namespace: String,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RouteService {
    pub(crate) kind: &'static str,
    pub(crate) name: String,
    /// The Service port's name.
    pub(crate) port: String,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RouteTls {
    pub(crate) cert_resolver: String,
}

/// `traefik.io/v1alpha1` Middleware (only forward-auth).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MiddlewareSpec {
    pub(crate) forward_auth: ForwardAuth,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ForwardAuth {
    pub(crate) address: String,
    pub(crate) trust_forward_header: bool,
    pub(crate) auth_response_headers: Vec<String>,
}

// ── Backups ───────────────────────────────────────────────────────────────

/// `k8up.io/v1` Schedule.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct K8upScheduleSpec {
    pub(crate) backend: K8upBackend,
    pub(crate) backup: K8upBackup,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) prune: Option<K8upPrune>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct K8upBackend {
    pub(crate) repo_password_secret_ref: SecretKeyRef,
    pub(crate) s3: K8upS3,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct K8upS3 {
    #[serde(rename = "accessKeyIDSecretRef")]
    pub(crate) access_key_id_secret_ref: SecretKeyRef,
    pub(crate) secret_access_key_secret_ref: SecretKeyRef,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SecretKeyRef {
    pub(crate) name: String,
    pub(crate) key: String,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct K8upBackup {
    pub(crate) schedule: String,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct K8upPrune {
    pub(crate) schedule: String,
    pub(crate) retention: K8upRetention,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct K8upRetention {
    pub(crate) keep_daily: u32,
    pub(crate) keep_weekly: u32,
}

/// `velero.io/v1` Schedule.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct VeleroScheduleSpec {
    pub(crate) schedule: String,
    pub(crate) template: VeleroBackupTemplate,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct VeleroBackupTemplate {
    pub(crate) included_namespaces: Vec<String>,
    pub(crate) label_selector: LabelSelector,
    pub(crate) default_volumes_to_fs_backup: bool,
    pub(crate) ttl: String,
}

// ── Argo Rollouts ─────────────────────────────────────────────────────────

/// `argoproj.io/v1alpha1` Rollout, running the pods of a Deployment
/// (`workloadRef`).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RolloutSpec {
    pub(crate) replicas: i32,
    pub(crate) selector: LabelSelector,
    pub(crate) workload_ref: WorkloadRef,
    pub(crate) strategy: RolloutStrategy,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct WorkloadRef {
    pub(crate) api_version: &'static str,
    pub(crate) kind: &'static str,
    pub(crate) name: String,
    pub(crate) scale_down: &'static str,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RolloutStrategy {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) canary: Option<Canary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) blue_green: Option<BlueGreen>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Canary {
    pub(crate) steps: Vec<CanaryStep>,
}

/// One step: exactly one field set.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CanaryStep {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) set_weight: Option<u8>,
    /// An empty pause waits for `kubectl argo rollouts promote`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) pause: Option<BTreeMap<String, String>>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct BlueGreen {
    pub(crate) active_service: String,
    pub(crate) preview_service: String,
    pub(crate) auto_promotion_enabled: bool,
}
