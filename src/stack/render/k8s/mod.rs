//! The Kubernetes target: a kustomize directory (`kubectl apply -k DIR`).
//!
//! Layout (documented in `docs/src/stacks-k8s.md`):
//!
//! ```text
//! kustomization.yaml          every file below, sorted
//! namespace.yaml              the stack's Namespace
//! middleware-authentik.yaml   Traefik forward-auth, when an exposure asks for it
//! backup/schedule*.yaml       k8up or Velero Schedules, when a volume is backed up
//! SERVICE/deployment.yaml     or statefulset.yaml, cronjob.yaml
//! SERVICE/service.yaml        (service-preview.yaml for blue-green)
//! SERVICE/pvc-VOLUME.yaml     a `service`'s volumes (a stateful one has claim templates)
//! SERVICE/networkpolicy.yaml  unless opted out
//! SERVICE/servicemonitor.yaml when monitored
//! SERVICE/externalsecret.yaml when it has `vault:` secrets
//! SERVICE/ingressroute.yaml   or ingress.yaml, when exposed
//! SERVICE/poddisruptionbudget.yaml  when replicas > 1
//! SERVICE/rollout.yaml        for canary and blue-green
//! ```
//!
//! Core objects are k8s-openapi's typed structs; the custom resources are
//! the structs of [`crds`]. Every namespaced object names its namespace
//! itself (the kustomization sets none: a Velero Schedule lives in
//! `velero`, and kustomize's `namespace:` would move it).

mod crds;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, StatefulSet, StatefulSetSpec};
use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, JobSpec, JobTemplateSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, EnvVarSource, ExecAction, HTTPGetAction,
    HostPathVolumeSource, Namespace, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, SecretKeySelector, SecurityContext, Service, ServicePort,
    ServiceSpec, TCPSocketAction, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, IPBlock, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, NetworkPolicy, NetworkPolicyEgressRule,
    NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
    ServiceBackendPort,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;

use self::crds::Resource;
use super::{Bundle, RenderError, Target};
use crate::stack::model::{
    self, Auth, BackupOperator, BackupPolicy, IngressKind, Peer, Probe as ModelProbe, Protocol,
    Role, SecretRef, Stack, Strategy, Workload,
};
use crate::stack::pin::PinnedStack;

/// The Secret an ExternalSecret fills with a service's `vault:` secrets.
pub fn vault_secret_name(service: &str) -> String {
    format!("{service}-secrets")
}

/// The Secret the operator creates with a service's `env:` and `file:`
/// secrets (one key per environment variable): Vault cannot supply them.
pub fn local_secret_name(service: &str) -> String {
    format!("{service}-local-secrets")
}

/// The Secret holding the backup repository's password (key `password`).
pub const BACKUP_REPO_SECRET: &str = "backup-repo";
/// The Secret holding the S3 credentials of the backup repository (keys
/// `access-key-id`, `secret-access-key`).
pub const BACKUP_S3_SECRET: &str = "backup-s3";
/// Traefik's certificate resolver for `tls = true` exposures.
pub const CERT_RESOLVER: &str = "letsencrypt";
/// The Traefik Middleware doing Authentik forward-auth.
pub const AUTH_MIDDLEWARE: &str = "authentik";
/// A PVC's size when the volume gives none.
pub const DEFAULT_VOLUME_SIZE: &str = "1Gi";
/// Marks a blue-green preview Service, so the ServiceMonitor skips it.
pub const PREVIEW_LABEL: &str = "kiln.dev/preview";

const NAME_LABEL: &str = "app.kubernetes.io/name";
const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";
const VERSION_LABEL: &str = "app.kubernetes.io/version";
const PART_OF_LABEL: &str = "app.kubernetes.io/part-of";
const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// The private ranges `internet = true` still may not reach.
pub const PRIVATE_RANGES: [&str; 3] = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"];

/// Authentik's response headers Traefik passes on to the application.
const AUTH_RESPONSE_HEADERS: [&str; 11] = [
    "X-authentik-username",
    "X-authentik-groups",
    "X-authentik-entitlements",
    "X-authentik-email",
    "X-authentik-name",
    "X-authentik-uid",
    "X-authentik-jwt",
    "X-authentik-meta-jwks",
    "X-authentik-meta-outpost",
    "X-authentik-meta-provider",
    "X-authentik-meta-app",
];

/// The kustomize directory of a pinned stack.
pub fn render(pinned: &PinnedStack) -> Result<Bundle, RenderError> {
    let stack = &pinned.stack;
    let mut out = Out::default();
    let ns = stack.settings.namespace.clone();

    out.add(
        "namespace.yaml",
        &Namespace {
            metadata: ObjectMeta {
                name: Some(ns.clone()),
                labels: Some(stack_labels(stack)),
                ..Default::default()
            },
            ..Default::default()
        },
    )?;

    for (name, service) in &stack.services {
        ServiceRenderer {
            stack,
            ns: &ns,
            name,
            service,
        }
        .render(&mut out)?;
    }

    let needs_auth = stack
        .services
        .values()
        .any(|s| s.expose.as_ref().is_some_and(|e| e.auth == Auth::Authentik));
    if needs_auth {
        out.add(
            "middleware-authentik.yaml",
            &Resource {
                api_version: "traefik.io/v1alpha1",
                kind: "Middleware",
                metadata: meta(AUTH_MIDDLEWARE, &ns, stack_labels(stack)),
                spec: crds::MiddlewareSpec {
                    forward_auth: crds::ForwardAuth {
                        address: stack.settings.k8s.forward_auth.clone(),
                        trust_forward_header: true,
                        auth_response_headers: AUTH_RESPONSE_HEADERS
                            .iter()
                            .map(|h| (*h).to_owned())
                            .collect(),
                    },
                },
            },
        )?;
    }

    backups(stack, &ns, &mut out)?;

    let kustomization = Kustomization {
        api_version: "kustomize.config.k8s.io/v1beta1",
        kind: "Kustomization",
        resources: out.bundle.files.keys().cloned().collect(),
    };
    out.add("kustomization.yaml", &kustomization)?;
    Ok(out.bundle)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Kustomization {
    api_version: &'static str,
    kind: &'static str,
    resources: Vec<String>,
}

#[derive(Default)]
struct Out {
    bundle: Bundle,
}

impl Out {
    fn add<T: Serialize>(&mut self, path: &str, value: &T) -> Result<(), RenderError> {
        self.bundle.add(path, crate::yaml::to_string(value)?);
        Ok(())
    }
}

/// Labels of the stack-wide objects (namespace, middleware, schedules).
fn stack_labels(stack: &Stack) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY_LABEL.to_owned(), "kiln".to_owned()),
        (PART_OF_LABEL.to_owned(), stack.name.clone()),
    ])
}

fn meta(name: &str, ns: &str, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(ns.to_owned()),
        labels: Some(labels),
        ..Default::default()
    }
}

fn match_labels(labels: BTreeMap<String, String>) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels),
        ..Default::default()
    }
}

/// `Nm` for whole mebibytes, else plain bytes.
pub fn memory_quantity(bytes: u64) -> String {
    const MI: u64 = 1024 * 1024;
    const GI: u64 = 1024 * MI;
    if bytes > 0 && bytes.is_multiple_of(GI) {
        format!("{}Gi", bytes / GI)
    } else if bytes > 0 && bytes.is_multiple_of(MI) {
        format!("{}Mi", bytes / MI)
    } else {
        bytes.to_string()
    }
}

/// Millicores as `250m`, whole cores as `2`.
pub fn cpu_quantity(millicores: u32) -> String {
    if millicores > 0 && millicores.is_multiple_of(1000) {
        (millicores / 1000).to_string()
    } else {
        format!("{millicores}m")
    }
}

/// A DNS label (RFC 1123): what names of objects, volumes and Service
/// ports must be.
fn is_dns_label(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 63
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !text.starts_with('-')
        && !text.ends_with('-')
}

/// Traefik's Docker-provider configuration, read from container labels:
/// rendered on compose only.
fn is_docker_provider_label(key: &str) -> bool {
    key.starts_with("traefik.")
}

/// A label value: empty, or at most 63 of `[A-Za-z0-9._-]` starting and
/// ending with an alphanumeric.
fn is_label_value(text: &str) -> bool {
    text.is_empty() || is_label_name(text)
}

fn is_label_name(text: &str) -> bool {
    let bytes = text.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
}

/// A label key: `[PREFIX/]NAME`, the prefix a DNS subdomain (at most 253
/// characters of dot-separated DNS labels).
fn is_label_key(key: &str) -> bool {
    match key.rsplit_once('/') {
        Some((prefix, name)) => {
            prefix.len() <= 253 && prefix.split('.').all(is_dns_label) && is_label_name(name)
        }
        None => is_label_name(key),
    }
}

/// A container port name (IANA service name): at most 15 characters, a
/// letter among them, no `--`.
fn is_port_name(text: &str) -> bool {
    is_dns_label(text)
        && text.len() <= 15
        && text.bytes().any(|b| b.is_ascii_lowercase())
        && !text.contains("--")
}

fn clamp_i32(value: u64) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

struct ServiceRenderer<'a> {
    stack: &'a Stack,
    ns: &'a str,
    name: &'a str,
    service: &'a model::Service,
}

impl ServiceRenderer<'_> {
    fn error(&self, reason: impl Into<String>) -> RenderError {
        RenderError::Service {
            service: self.name.to_owned(),
            target: Target::K8s,
            reason: reason.into(),
        }
    }

    fn path(&self, file: &str) -> String {
        format!("{}/{file}", self.name)
    }

    /// The service's labels, without Traefik's Docker-provider ones
    /// (`traefik.*`: configuration the compose target's Traefik reads from
    /// containers; on Kubernetes, routers and middlewares are CRDs).
    fn labels(&self) -> BTreeMap<String, String> {
        self.service
            .labels
            .iter()
            .filter(|(key, _)| !is_docker_provider_label(key))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect()
    }

    /// `name` + `instance`: what selectors use (never the version).
    fn selector_labels(&self) -> Result<BTreeMap<String, String>, RenderError> {
        selector_labels(self.service).ok_or_else(|| {
            self.error(format!(
                "the service has no `{NAME_LABEL}` or `{INSTANCE_LABEL}` label to select its pods"
            ))
        })
    }

    fn meta(&self, name: &str) -> ObjectMeta {
        meta(name, self.ns, self.labels())
    }

    fn rollout(&self) -> bool {
        matches!(
            self.service.strategy,
            Some(Strategy::Canary { .. } | Strategy::BlueGreen)
        ) && matches!(self.service.workload, Workload::Service)
    }

    fn check_names(&self) -> Result<(), RenderError> {
        for port in self.service.ports.keys() {
            if !is_port_name(port) {
                return Err(self.error(format!(
                    "port name `{port}` is not a Kubernetes port name (at most 15 lowercase letters, digits and `-`, with a letter)"
                )));
            }
        }
        for volume in self.service.volumes.keys() {
            if !is_dns_label(volume) || volume.starts_with("host-") {
                return Err(self.error(format!(
                    "volume name `{volume}` is not a DNS label (or starts with `host-`, kept for mounts)"
                )));
            }
        }
        for mount in self.service.mounts.keys() {
            if !is_dns_label(&format!("host-{mount}")) {
                return Err(self.error(format!("mount name `{mount}` is not a DNS label")));
            }
        }
        for (key, value) in self.labels() {
            if !is_label_key(&key) {
                return Err(self.error(format!(
                    "label `{key}` is not a Kubernetes label key (an optional DNS-subdomain prefix and `/`, then at most 63 letters, digits, `-`, `_` and `.`, starting and ending with a letter or digit)"
                )));
            }
            if !is_label_value(&value) {
                return Err(self.error(format!(
                    "label `{key}`: value `{value}` is not a Kubernetes label value (at most 63 letters, digits, `-`, `_` and `.`, starting and ending with a letter or digit)"
                )));
            }
        }
        Ok(())
    }

    fn render(&self, out: &mut Out) -> Result<(), RenderError> {
        self.check_names()?;
        let service = self.service;
        let template = self.pod_template()?;
        let selector = match_labels(self.selector_labels()?);
        let replicas = i32::try_from(service.replicas).unwrap_or(i32::MAX);
        match &service.workload {
            Workload::Service => {
                let deployment = Deployment {
                    metadata: self.meta(self.name),
                    spec: Some(DeploymentSpec {
                        // A Rollout owns the replica count of the Deployment
                        // it references: it scales it down once healthy, and
                        // a re-apply must not scale it up again.
                        replicas: (!self.rollout()).then_some(replicas),
                        selector: selector.clone(),
                        template,
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                out.add(&self.path("deployment.yaml"), &deployment)?;
                for (volume, spec) in &service.volumes {
                    let claim = PersistentVolumeClaim {
                        metadata: ObjectMeta {
                            annotations: backup_annotations(spec),
                            ..self.meta(&format!("{}-{volume}", self.name))
                        },
                        spec: Some(self.claim_spec(spec)),
                        ..Default::default()
                    };
                    out.add(&self.path(&format!("pvc-{volume}.yaml")), &claim)?;
                }
            }
            Workload::Stateful => {
                let mut claim_labels = self.labels();
                // Claim templates are immutable: a label that changes with
                // the image would block every upgrade.
                claim_labels.remove(VERSION_LABEL);
                let claims = service
                    .volumes
                    .iter()
                    .map(|(volume, spec)| PersistentVolumeClaim {
                        metadata: ObjectMeta {
                            name: Some(volume.clone()),
                            labels: Some(claim_labels.clone()),
                            annotations: backup_annotations(spec),
                            ..Default::default()
                        },
                        spec: Some(self.claim_spec(spec)),
                        ..Default::default()
                    })
                    .collect::<Vec<_>>();
                let set = StatefulSet {
                    metadata: self.meta(self.name),
                    spec: Some(StatefulSetSpec {
                        replicas: Some(replicas),
                        selector: selector.clone(),
                        service_name: Some(self.name.to_owned()),
                        template,
                        volume_claim_templates: (!claims.is_empty()).then_some(claims),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                out.add(&self.path("statefulset.yaml"), &set)?;
            }
            Workload::Cronjob { schedule } => {
                let mut template = template;
                if let Some(spec) = template.spec.as_mut() {
                    spec.restart_policy = Some("OnFailure".into());
                }
                let job = CronJob {
                    metadata: self.meta(self.name),
                    spec: Some(CronJobSpec {
                        schedule: schedule.clone(),
                        concurrency_policy: Some("Forbid".into()),
                        job_template: JobTemplateSpec {
                            metadata: Some(ObjectMeta {
                                labels: Some(self.labels()),
                                ..Default::default()
                            }),
                            spec: Some(JobSpec {
                                template,
                                ..Default::default()
                            }),
                        },
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                out.add(&self.path("cronjob.yaml"), &job)?;
                for (volume, spec) in &service.volumes {
                    let claim = PersistentVolumeClaim {
                        metadata: ObjectMeta {
                            annotations: backup_annotations(spec),
                            ..self.meta(&format!("{}-{volume}", self.name))
                        },
                        spec: Some(self.claim_spec(spec)),
                        ..Default::default()
                    };
                    out.add(&self.path(&format!("pvc-{volume}.yaml")), &claim)?;
                }
            }
        }

        let has_service =
            !service.ports.is_empty() && !matches!(service.workload, Workload::Cronjob { .. });
        if has_service {
            out.add(
                &self.path("service.yaml"),
                &self.service_object(self.name, false)?,
            )?;
        }
        if let Some(policy) = &service.network_policy {
            out.add(
                &self.path("networkpolicy.yaml"),
                &self.network_policy(policy)?,
            )?;
        }
        if has_service
            && service.monitoring
            && let Some(metrics) = &service.metrics
        {
            self.service_monitor(metrics, out)?;
        }
        self.external_secret(out)?;
        if let Some(expose) = &service.expose {
            self.exposure(expose, out)?;
        }
        if service.replicas > 1 && !matches!(service.workload, Workload::Cronjob { .. }) {
            let pdb = PodDisruptionBudget {
                metadata: self.meta(self.name),
                spec: Some(PodDisruptionBudgetSpec {
                    max_unavailable: Some(IntOrString::Int(1)),
                    selector: Some(selector.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            };
            out.add(&self.path("poddisruptionbudget.yaml"), &pdb)?;
        }
        if self.rollout() {
            self.rollout_object(selector, replicas, out)?;
        }
        Ok(())
    }

    fn claim_spec(&self, volume: &model::Volume) -> PersistentVolumeClaimSpec {
        let size = volume
            .size
            .map(memory_quantity)
            .unwrap_or_else(|| DEFAULT_VOLUME_SIZE.to_owned());
        PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_owned(), Quantity(size))])),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn pod_template(&self) -> Result<PodTemplateSpec, RenderError> {
        let service = self.service;
        let image = service
            .image_ref
            .clone()
            .ok_or_else(|| self.error("the image is not pinned (no `image_ref`)"))?;

        let mut env: Vec<EnvVar> = Vec::new();
        for (key, value) in &service.env {
            env.push(EnvVar {
                name: key.clone(),
                value: Some(value.clone()),
                ..Default::default()
            });
        }
        for (key, secret) in &service.secrets {
            let secret_name = match secret {
                SecretRef::Vault { .. } => vault_secret_name(self.name),
                SecretRef::Env { .. } | SecretRef::File { .. } => local_secret_name(self.name),
            };
            env.push(EnvVar {
                name: key.clone(),
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: secret_name,
                        key: key.clone(),
                        optional: None,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        env.sort_by(|a, b| a.name.cmp(&b.name));

        let ports = service
            .ports
            .iter()
            .map(|(name, port)| ContainerPort {
                name: Some(name.clone()),
                container_port: i32::from(port.port),
                protocol: Some(protocol(port.protocol).to_owned()),
                ..Default::default()
            })
            .collect::<Vec<_>>();

        let mut volumes = Vec::new();
        let mut mounts = Vec::new();
        for (volume, spec) in &service.volumes {
            mounts.push(VolumeMount {
                name: volume.clone(),
                mount_path: spec.path.clone(),
                ..Default::default()
            });
            if !matches!(service.workload, Workload::Stateful) {
                volumes.push(Volume {
                    name: volume.clone(),
                    persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                        claim_name: format!("{}-{volume}", self.name),
                        read_only: None,
                    }),
                    ..Default::default()
                });
            }
        }
        for (mount, spec) in &service.mounts {
            let name = format!("host-{mount}");
            mounts.push(VolumeMount {
                name: name.clone(),
                mount_path: spec.path.clone(),
                read_only: spec.read_only.then_some(true),
                ..Default::default()
            });
            volumes.push(Volume {
                name,
                host_path: Some(HostPathVolumeSource {
                    path: spec.host.clone(),
                    type_: None,
                }),
                ..Default::default()
            });
        }

        let (readiness, liveness, startup) = match &service.health {
            Some(check) => {
                let probe = probe(check);
                let startup = (check.start_period > 0).then(|| {
                    let interval = check.interval.max(1);
                    let mut startup = probe.clone();
                    startup.failure_threshold = Some(clamp_i32(
                        check.start_period.div_ceil(interval) + u64::from(check.retries.max(1)),
                    ));
                    startup
                });
                (Some(probe.clone()), Some(probe), startup)
            }
            None => (None, None, None),
        };

        let resources = &service.resources;
        let mut requests = BTreeMap::from([
            ("cpu".to_owned(), Quantity(cpu_quantity(resources.cpu))),
            (
                "memory".to_owned(),
                Quantity(memory_quantity(resources.memory)),
            ),
        ]);
        requests.retain(|_, q| q.0 != "0m" && q.0 != "0");
        let mut limits = BTreeMap::from([(
            "memory".to_owned(),
            Quantity(memory_quantity(resources.memory_limit)),
        )]);
        if let Some(cpu) = resources.cpu_limit {
            limits.insert("cpu".to_owned(), Quantity(cpu_quantity(cpu)));
        }
        limits.retain(|_, q| q.0 != "0m" && q.0 != "0");

        let container = Container {
            name: self.name.to_owned(),
            image: Some(image),
            // The model's `command` is compose's `command`: it replaces
            // the image's CMD and keeps its ENTRYPOINT, which is
            // Kubernetes' `args`.
            args: (!service.command.is_empty()).then(|| service.command.clone()),
            env: (!env.is_empty()).then_some(env),
            ports: (!ports.is_empty()).then_some(ports),
            readiness_probe: readiness,
            liveness_probe: liveness,
            startup_probe: startup,
            resources: Some(ResourceRequirements {
                requests: (!requests.is_empty()).then_some(requests),
                limits: (!limits.is_empty()).then_some(limits),
                ..Default::default()
            }),
            security_context: Some(SecurityContext {
                allow_privilege_escalation: Some(false),
                ..Default::default()
            }),
            volume_mounts: (!mounts.is_empty()).then_some(mounts),
            ..Default::default()
        };

        let mut annotations = BTreeMap::new();
        if self.stack.settings.k8s.backup == BackupOperator::Velero {
            let excluded = service
                .volumes
                .iter()
                .filter(|(_, v)| v.backup.is_none())
                .map(|(name, _)| name.as_str())
                .collect::<Vec<_>>();
            if !excluded.is_empty() {
                annotations.insert(
                    "backup.velero.io/backup-volumes-excludes".to_owned(),
                    excluded.join(","),
                );
            }
        }

        Ok(PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(self.labels()),
                annotations: (!annotations.is_empty()).then_some(annotations),
                ..Default::default()
            }),
            spec: Some(PodSpec {
                containers: vec![container],
                // Applications do not talk to the Kubernetes API; the proxy
                // and the monitoring system discover through it.
                automount_service_account_token: (service.role == Role::App).then_some(false),
                // No `<SERVICE>_PORT=tcp://…` variables: compose has none,
                // and some images read them as their own settings.
                enable_service_links: Some(false),
                security_context: Some(PodSecurityContext {
                    seccomp_profile: Some(SeccompProfile {
                        type_: "RuntimeDefault".into(),
                        localhost_profile: None,
                    }),
                    ..Default::default()
                }),
                volumes: (!volumes.is_empty()).then_some(volumes),
                ..Default::default()
            }),
        })
    }

    fn service_object(&self, name: &str, preview: bool) -> Result<Service, RenderError> {
        let service = self.service;
        let ports = service
            .ports
            .iter()
            .map(|(port_name, port)| ServicePort {
                name: Some(port_name.clone()),
                port: i32::from(port.port),
                target_port: Some(IntOrString::String(port_name.clone())),
                protocol: Some(protocol(port.protocol).to_owned()),
                ..Default::default()
            })
            .collect();
        let mut labels = self.labels();
        if preview {
            labels.insert(PREVIEW_LABEL.to_owned(), "true".to_owned());
        }
        Ok(Service {
            metadata: meta(name, self.ns, labels),
            spec: Some(ServiceSpec {
                // A stateful service's Service is headless: its pods get
                // stable names (`postgres-0.postgres`).
                cluster_ip: matches!(service.workload, Workload::Stateful)
                    .then(|| "None".to_owned()),
                ports: Some(ports),
                selector: Some(self.selector_labels()?),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    fn network_policy(&self, policy: &model::NetworkPolicy) -> Result<NetworkPolicy, RenderError> {
        let mut ingress = Vec::new();
        for peer in &policy.ingress {
            let (from, ports) = match peer {
                Peer::Service { name, ports } => {
                    (vec![self.service_peer(name)?], self.own_ports(ports)?)
                }
                Peer::Proxy { ports } => (
                    self.role_peers(Role::Proxy, &self.stack.settings.k8s.proxy_namespace)?,
                    self.own_ports(ports)?,
                ),
                Peer::Monitoring { ports } => (
                    self.role_peers(
                        Role::Monitoring,
                        &self.stack.settings.k8s.monitoring_namespace,
                    )?,
                    self.own_ports(ports)?,
                ),
            };
            ingress.push(NetworkPolicyIngressRule {
                from: Some(from),
                ports,
            });
        }
        let mut egress = Vec::new();
        if policy.dns {
            egress.push(NetworkPolicyEgressRule {
                to: Some(vec![NetworkPolicyPeer {
                    namespace_selector: Some(match_labels(BTreeMap::from([(
                        NAMESPACE_NAME_LABEL.to_owned(),
                        "kube-system".to_owned(),
                    )]))),
                    pod_selector: Some(match_labels(BTreeMap::from([(
                        "k8s-app".to_owned(),
                        "kube-dns".to_owned(),
                    )]))),
                    ..Default::default()
                }]),
                ports: Some(
                    ["UDP", "TCP"]
                        .into_iter()
                        .map(|p| NetworkPolicyPort {
                            port: Some(IntOrString::Int(53)),
                            protocol: Some(p.to_owned()),
                            ..Default::default()
                        })
                        .collect(),
                ),
            });
        }
        for peer in &policy.egress {
            match peer {
                Peer::Service { name, ports } => {
                    let target = self.stack.services.get(name).ok_or_else(|| {
                        self.error(format!("the network policy names unknown service `{name}`"))
                    })?;
                    egress.push(NetworkPolicyEgressRule {
                        to: Some(vec![self.service_peer(name)?]),
                        ports: self.ports_of(target, name, ports)?,
                    });
                }
                Peer::Proxy { .. } | Peer::Monitoring { .. } => {
                    return Err(self.error(
                        "an egress rule to the proxy or monitoring namespace is not rendered",
                    ));
                }
            }
        }
        if policy.internet {
            egress.push(NetworkPolicyEgressRule {
                to: Some(vec![NetworkPolicyPeer {
                    ip_block: Some(IPBlock {
                        cidr: "0.0.0.0/0".into(),
                        except: Some(PRIVATE_RANGES.iter().map(|r| (*r).to_owned()).collect()),
                    }),
                    ..Default::default()
                }]),
                ports: None,
            });
        }
        Ok(NetworkPolicy {
            metadata: self.meta(self.name),
            spec: Some(NetworkPolicySpec {
                pod_selector: Some(match_labels(self.selector_labels()?)),
                policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
                ingress: Some(ingress),
                egress: Some(egress),
            }),
        })
    }

    /// The proxy or the monitoring system: its namespace, and the pods of
    /// the stack's own services of that role (the edge stack runs
    /// Traefik itself). When the stack lives in that very namespace and
    /// runs the role itself, only those pods: the namespace would let in
    /// the whole stack.
    fn role_peers(&self, role: Role, ns: &str) -> Result<Vec<NetworkPolicyPeer>, RenderError> {
        let mut peers = Vec::new();
        let own: Vec<&String> = self
            .stack
            .services
            .iter()
            .filter(|(_, s)| s.role == role)
            .map(|(name, _)| name)
            .collect();
        if ns != self.ns || own.is_empty() {
            peers.push(namespace_peer(ns));
        }
        for name in own {
            peers.push(self.service_peer(name)?);
        }
        Ok(peers)
    }

    /// Pods of another service of the stack (same namespace).
    fn service_peer(&self, name: &str) -> Result<NetworkPolicyPeer, RenderError> {
        let other = self.stack.services.get(name).ok_or_else(|| {
            self.error(format!("the network policy names unknown service `{name}`"))
        })?;
        let labels = selector_labels(other)
            .ok_or_else(|| self.error(format!("`{name}` has no name and instance labels")))?;
        Ok(NetworkPolicyPeer {
            pod_selector: Some(match_labels(labels)),
            ..Default::default()
        })
    }

    fn own_ports(&self, names: &[String]) -> Result<Option<Vec<NetworkPolicyPort>>, RenderError> {
        self.ports_of(self.service, self.name, names)
    }

    /// The numbered ports of `service` named in `names` (`None`: any
    /// port, when the list is empty). Numbers, not names: every CNI
    /// resolves those, for ingress and egress alike.
    fn ports_of(
        &self,
        service: &model::Service,
        service_name: &str,
        names: &[String],
    ) -> Result<Option<Vec<NetworkPolicyPort>>, RenderError> {
        if names.is_empty() {
            return Ok(None);
        }
        names
            .iter()
            .map(|name| {
                let port = service.ports.get(name).ok_or_else(|| {
                    self.error(format!(
                        "the network policy names port `{name}`, which `{service_name}` does not have"
                    ))
                })?;
                Ok(NetworkPolicyPort {
                    port: Some(IntOrString::Int(i32::from(port.port))),
                    protocol: Some(protocol(port.protocol).to_owned()),
                    ..Default::default()
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    fn service_monitor(&self, metrics: &model::Metrics, out: &mut Out) -> Result<(), RenderError> {
        let mut selector = match_labels(self.selector_labels()?);
        if matches!(self.service.strategy, Some(Strategy::BlueGreen)) && self.rollout() {
            selector.match_expressions = Some(vec![LabelSelectorRequirement {
                key: PREVIEW_LABEL.to_owned(),
                operator: "DoesNotExist".to_owned(),
                values: None,
            }]);
        }
        // The Service is named after the service, so Prometheus' `job`
        // label is the service name and `namespace` the stack's namespace:
        // the compose target's file_sd targets carry the same two.
        let monitor = Resource {
            api_version: "monitoring.coreos.com/v1",
            kind: "ServiceMonitor",
            metadata: self.meta(self.name),
            spec: crds::ServiceMonitorSpec {
                selector,
                namespace_selector: crds::NamespaceSelector {
                    match_names: vec![self.ns.to_owned()],
                },
                endpoints: vec![crds::Endpoint {
                    port: metrics.port.clone(),
                    path: metrics.path.clone(),
                    interval: format!("{}s", metrics.interval.max(1)),
                }],
            },
        };
        out.add(&self.path("servicemonitor.yaml"), &monitor)
    }

    fn external_secret(&self, out: &mut Out) -> Result<(), RenderError> {
        let data = self
            .service
            .secrets
            .iter()
            .filter_map(|(env, secret)| match secret {
                SecretRef::Vault { path, key } => Some(crds::ExternalSecretData {
                    secret_key: env.clone(),
                    remote_ref: crds::RemoteRef {
                        key: path.clone(),
                        property: key.clone(),
                    },
                }),
                SecretRef::Env { .. } | SecretRef::File { .. } => None,
            })
            .collect::<Vec<_>>();
        if data.is_empty() {
            return Ok(());
        }
        let secret = Resource {
            api_version: "external-secrets.io/v1",
            kind: "ExternalSecret",
            metadata: self.meta(self.name),
            spec: crds::ExternalSecretSpec {
                refresh_interval: "1h".into(),
                secret_store_ref: crds::SecretStoreRef {
                    kind: "ClusterSecretStore",
                    name: self.stack.settings.k8s.secret_store.clone(),
                },
                target: crds::ExternalSecretTarget {
                    name: vault_secret_name(self.name),
                    creation_policy: "Owner",
                },
                data,
            },
        };
        out.add(&self.path("externalsecret.yaml"), &secret)
    }

    fn exposure(&self, expose: &model::Exposure, out: &mut Out) -> Result<(), RenderError> {
        if !self.service.ports.contains_key(&expose.port) {
            return Err(self.error(format!(
                "`expose.port` names port `{}`, which the service does not have",
                expose.port
            )));
        }
        let auth = expose.auth == Auth::Authentik;
        let entry_point = if expose.tls { "websecure" } else { "web" };
        match self.stack.settings.k8s.ingress {
            IngressKind::Ingressroute => {
                let route = Resource {
                    api_version: "traefik.io/v1alpha1",
                    kind: "IngressRoute",
                    metadata: self.meta(self.name),
                    spec: crds::IngressRouteSpec {
                        entry_points: vec![entry_point.to_owned()],
                        routes: vec![crds::Route {
                            kind: "Rule",
                            match_: format!("Host(`{}`)", expose.hostname),
                            middlewares: if auth {
                                vec![crds::MiddlewareRef {
                                    name: AUTH_MIDDLEWARE.to_owned(),
                                    namespace: self.ns.to_owned(),
                                }]
                            } else {
                                Vec::new()
                            },
                            services: vec![crds::RouteService {
                                kind: "Service",
                                name: self.name.to_owned(),
                                port: expose.port.clone(),
                            }],
                        }],
                        tls: expose.tls.then(|| crds::RouteTls {
                            cert_resolver: CERT_RESOLVER.to_owned(),
                        }),
                    },
                };
                out.add(&self.path("ingressroute.yaml"), &route)
            }
            IngressKind::Ingress => {
                let mut annotations = BTreeMap::from([(
                    "traefik.ingress.kubernetes.io/router.entrypoints".to_owned(),
                    entry_point.to_owned(),
                )]);
                if expose.tls {
                    annotations.insert(
                        "traefik.ingress.kubernetes.io/router.tls".to_owned(),
                        "true".to_owned(),
                    );
                    annotations.insert(
                        "traefik.ingress.kubernetes.io/router.tls.certresolver".to_owned(),
                        CERT_RESOLVER.to_owned(),
                    );
                }
                if auth {
                    annotations.insert(
                        "traefik.ingress.kubernetes.io/router.middlewares".to_owned(),
                        format!("{}-{AUTH_MIDDLEWARE}@kubernetescrd", self.ns),
                    );
                }
                let ingress = Ingress {
                    metadata: ObjectMeta {
                        annotations: Some(annotations),
                        ..self.meta(self.name)
                    },
                    spec: Some(IngressSpec {
                        ingress_class_name: Some(self.stack.settings.k8s.ingress_class.clone()),
                        rules: Some(vec![IngressRule {
                            host: Some(expose.hostname.clone()),
                            http: Some(HTTPIngressRuleValue {
                                paths: vec![HTTPIngressPath {
                                    path: Some("/".into()),
                                    path_type: "Prefix".into(),
                                    backend: IngressBackend {
                                        service: Some(IngressServiceBackend {
                                            name: self.name.to_owned(),
                                            port: Some(ServiceBackendPort {
                                                name: Some(expose.port.clone()),
                                                number: None,
                                            }),
                                        }),
                                        ..Default::default()
                                    },
                                }],
                            }),
                        }]),
                        tls: expose.tls.then(|| {
                            vec![IngressTLS {
                                hosts: Some(vec![expose.hostname.clone()]),
                                secret_name: None,
                            }]
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                out.add(&self.path("ingress.yaml"), &ingress)
            }
        }
    }

    fn rollout_object(
        &self,
        selector: LabelSelector,
        replicas: i32,
        out: &mut Out,
    ) -> Result<(), RenderError> {
        let strategy = match &self.service.strategy {
            Some(Strategy::Canary { steps }) => {
                let mut list = Vec::new();
                for weight in steps.iter().filter(|w| **w < 100) {
                    list.push(crds::CanaryStep {
                        set_weight: Some(*weight),
                        ..Default::default()
                    });
                    list.push(crds::CanaryStep {
                        pause: Some(BTreeMap::new()),
                        ..Default::default()
                    });
                }
                crds::RolloutStrategy {
                    canary: Some(crds::Canary { steps: list }),
                    blue_green: None,
                }
            }
            Some(Strategy::BlueGreen) => {
                let preview = format!("{}-preview", self.name);
                if self.service.ports.is_empty() {
                    return Err(self.error("a blue-green rollout needs a Service: declare a port"));
                }
                out.add(
                    &self.path("service-preview.yaml"),
                    &self.service_object(&preview, true)?,
                )?;
                crds::RolloutStrategy {
                    canary: None,
                    blue_green: Some(crds::BlueGreen {
                        active_service: self.name.to_owned(),
                        preview_service: preview,
                        auto_promotion_enabled: false,
                    }),
                }
            }
            Some(Strategy::Rolling) | None => return Ok(()),
        };
        let rollout = Resource {
            api_version: "argoproj.io/v1alpha1",
            kind: "Rollout",
            metadata: self.meta(self.name),
            spec: crds::RolloutSpec {
                replicas,
                selector,
                workload_ref: crds::WorkloadRef {
                    api_version: "apps/v1",
                    kind: "Deployment",
                    name: self.name.to_owned(),
                    scale_down: "onsuccess",
                },
                strategy,
            },
        };
        out.add(&self.path("rollout.yaml"), &rollout)
    }
}

fn selector_labels(service: &model::Service) -> Option<BTreeMap<String, String>> {
    let name = service.labels.get(NAME_LABEL)?;
    let instance = service.labels.get(INSTANCE_LABEL)?;
    Some(BTreeMap::from([
        (NAME_LABEL.to_owned(), name.clone()),
        (INSTANCE_LABEL.to_owned(), instance.clone()),
    ]))
}

fn namespace_peer(ns: &str) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: Some(match_labels(BTreeMap::from([(
            NAMESPACE_NAME_LABEL.to_owned(),
            ns.to_owned(),
        )]))),
        ..Default::default()
    }
}

fn protocol(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
    }
}

/// `k8up.io/backup: "false"` on a volume that opted out of backups.
fn backup_annotations(volume: &model::Volume) -> Option<BTreeMap<String, String>> {
    volume
        .backup
        .is_none()
        .then(|| BTreeMap::from([("k8up.io/backup".to_owned(), "false".to_owned())]))
}

fn probe(check: &model::HealthCheck) -> Probe {
    let mut probe = Probe {
        period_seconds: Some(clamp_i32(check.interval.max(1))),
        timeout_seconds: Some(clamp_i32(check.timeout.max(1))),
        failure_threshold: Some(clamp_i32(u64::from(check.retries.max(1)))),
        ..Default::default()
    };
    match &check.probe {
        ModelProbe::Http { port, path } => {
            probe.http_get = Some(HTTPGetAction {
                path: Some(path.clone()),
                port: IntOrString::String(port.clone()),
                ..Default::default()
            });
        }
        ModelProbe::Tcp { port } => {
            probe.tcp_socket = Some(TCPSocketAction {
                port: IntOrString::String(port.clone()),
                host: None,
            });
        }
        ModelProbe::Exec { command } => {
            probe.exec = Some(ExecAction {
                command: Some(command.clone()),
            });
        }
    }
    probe
}

/// The backup Schedules: one per distinct backup schedule of the stack's
/// volumes (usually one), the retention the longest any volume asks for.
fn backups(stack: &Stack, ns: &str, out: &mut Out) -> Result<(), RenderError> {
    let policies: Vec<&BackupPolicy> = stack
        .services
        .values()
        .flat_map(|s| s.volumes.values())
        .filter_map(|v| v.backup.as_ref())
        .collect();
    if policies.is_empty() {
        return Ok(());
    }
    let mut schedules: Vec<&str> = policies.iter().map(|p| p.schedule.as_str()).collect();
    schedules.sort_unstable();
    schedules.dedup();
    let keep_daily = policies.iter().map(|p| p.keep_daily).max().unwrap_or(0);
    let keep_weekly = policies.iter().map(|p| p.keep_weekly).max().unwrap_or(0);
    let mut labels = stack_labels(stack);
    labels.insert(
        "app.kubernetes.io/component".to_owned(),
        "backup".to_owned(),
    );
    for (index, schedule) in schedules.iter().enumerate() {
        let suffix = if schedules.len() == 1 {
            String::new()
        } else {
            format!("-{}", index + 1)
        };
        match stack.settings.k8s.backup {
            BackupOperator::K8up => {
                let schedule = Resource {
                    api_version: "k8up.io/v1",
                    kind: "Schedule",
                    metadata: meta(&format!("backup{suffix}"), ns, labels.clone()),
                    spec: crds::K8upScheduleSpec {
                        backend: crds::K8upBackend {
                            repo_password_secret_ref: crds::SecretKeyRef {
                                name: BACKUP_REPO_SECRET.to_owned(),
                                key: "password".to_owned(),
                            },
                            s3: crds::K8upS3 {
                                access_key_id_secret_ref: crds::SecretKeyRef {
                                    name: BACKUP_S3_SECRET.to_owned(),
                                    key: "access-key-id".to_owned(),
                                },
                                secret_access_key_secret_ref: crds::SecretKeyRef {
                                    name: BACKUP_S3_SECRET.to_owned(),
                                    key: "secret-access-key".to_owned(),
                                },
                            },
                        },
                        backup: crds::K8upBackup {
                            schedule: (*schedule).to_owned(),
                        },
                        // One prune for the repository, in the first
                        // Schedule: two at once would contend for its lock.
                        prune: (index == 0).then(|| crds::K8upPrune {
                            schedule: "@weekly-random".to_owned(),
                            retention: crds::K8upRetention {
                                keep_daily,
                                keep_weekly,
                            },
                        }),
                    },
                };
                out.add(&format!("backup/schedule{suffix}.yaml"), &schedule)?;
            }
            BackupOperator::Velero => {
                // Velero keeps each backup for a time, not by count: as
                // long as the longest of the daily and weekly retentions.
                let days = u64::from(keep_daily).max(7 * u64::from(keep_weekly)).max(1);
                let schedule = Resource {
                    api_version: "velero.io/v1",
                    kind: "Schedule",
                    metadata: meta(&format!("{ns}{suffix}"), "velero", labels.clone()),
                    spec: crds::VeleroScheduleSpec {
                        schedule: (*schedule).to_owned(),
                        template: crds::VeleroBackupTemplate {
                            included_namespaces: vec![ns.to_owned()],
                            label_selector: match_labels(BTreeMap::from([(
                                PART_OF_LABEL.to_owned(),
                                stack.name.clone(),
                            )])),
                            default_volumes_to_fs_backup: true,
                            ttl: format!("{}h0m0s", days * 24),
                        },
                    },
                };
                out.add(&format!("backup/schedule{suffix}.yaml"), &schedule)?;
            }
        }
    }
    Ok(())
}
