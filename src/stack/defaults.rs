//! The defaults pass: what a service gets unless it opts out, each choice
//! recorded with its reason in the stack's provenance.
//!
//! | default | opt out |
//! |---|---|
//! | monitoring when `metrics` is set | `monitoring = false` |
//! | a backup policy for every persistent volume | `backup = false` (service or volume) |
//! | a TCP health check on the service's port | `health.type = "none"` |
//! | resource requests and a memory limit | set `resources.*` |
//! | the `app.kubernetes.io/*` labels | set the label in `labels` |
//! | a network policy from `depends_on` (deny, DNS, one allow per edge) | `network_policy = false` |
//! | a rolling update | set `strategy` |

use std::collections::BTreeMap;

use super::model::{
    BackupPolicy, Exposure, HealthCheck, Metrics, NetworkPolicy, Peer, Probe, Resources, Service,
    Strategy, Volume, Workload,
};
use super::read::{Draft, Kind, Provenance, join};

pub const BACKUP_SCHEDULE: &str = "0 3 * * *";
pub const BACKUP_KEEP_DAILY: u32 = 7;
pub const BACKUP_KEEP_WEEKLY: u32 = 4;
pub const CPU_REQUEST: u32 = 100;
pub const MEMORY_REQUEST: u64 = 128 << 20;
pub const CANARY_STEPS: [u8; 3] = [10, 50, 100];
/// The value of `app.kubernetes.io/managed-by`.
pub const MANAGED_BY: &str = "kiln";

/// Complete every draft into a service.
pub fn complete(
    stack: &str,
    drafts: &[Draft],
    provenance: &mut Provenance<'_>,
) -> BTreeMap<String, Service> {
    let policies = network_policies(drafts);
    drafts
        .iter()
        .map(|draft| {
            let service = complete_one(stack, draft, &policies, provenance);
            (draft.name.clone(), service)
        })
        .collect()
}

fn complete_one(
    stack: &str,
    draft: &Draft,
    policies: &BTreeMap<String, NetworkPolicy>,
    provenance: &mut Provenance<'_>,
) -> Service {
    let path = join("services", &draft.name);
    let at = |field: &str| format!("{path}.{field}");
    let workload = match (draft.kind.0, &draft.schedule) {
        (Kind::Stateful, _) => Workload::Stateful,
        (Kind::Cronjob, Some((schedule, _))) => Workload::Cronjob {
            schedule: schedule.clone(),
        },
        _ => Workload::Service,
    };
    // The port a check or a route uses when none is named: the exposed
    // one, else the only one, else the first by name.
    let default_port = draft
        .expose
        .as_ref()
        .and_then(|e| e.port.as_ref().map(|(p, _)| p.clone()))
        .or_else(|| draft.ports.keys().next().cloned());

    let expose = draft.expose.as_ref().map(|expose| {
        let port = match &expose.port {
            Some((port, _)) => port.clone(),
            None => {
                provenance.defaulted(&at("expose.port"), "the service's only port");
                draft.ports.keys().next().cloned().unwrap_or_default()
            }
        };
        Exposure {
            hostname: expose.hostname.0.clone(),
            port,
            tls: expose.tls,
            auth: expose.auth,
        }
    });

    let health = match (&draft.health, draft.kind.0, &default_port) {
        (Some(health), _, _) if health.kind == "none" => {
            provenance.remove_under(&at("health"));
            if let Some(span) = health.span_of_type {
                provenance.written(&at("health"), span);
            }
            None
        }
        (Some(health), _, _) => {
            let mut port = || match &health.port {
                Some((port, _)) => port.clone(),
                None => {
                    provenance.defaulted(&at("health.port"), "the service's exposed or first port");
                    default_port.clone().unwrap_or_default()
                }
            };
            let probe = match health.kind.as_str() {
                "http" => Probe::Http {
                    port: port(),
                    path: health.path.clone().unwrap_or_else(|| "/".to_owned()),
                },
                "exec" => Probe::Exec {
                    command: health.command.clone(),
                },
                _ => Probe::Tcp { port: port() },
            };
            Some(HealthCheck {
                probe,
                interval: health.interval,
                timeout: health.timeout,
                retries: health.retries,
                start_period: health.start_period,
            })
        }
        (None, Kind::Cronjob, _) => {
            provenance.defaulted(&at("health"), "a cron job has no health check");
            None
        }
        (None, _, None) => {
            provenance.defaulted(&at("health"), "no port to probe: set `health` to check it");
            None
        }
        (None, _, Some(port)) => {
            provenance.defaulted(
                &at("health"),
                &format!("a health check for every service: TCP connect to port `{port}`"),
            );
            Some(HealthCheck {
                probe: Probe::Tcp { port: port.clone() },
                interval: 30,
                timeout: 5,
                retries: 3,
                start_period: 0,
            })
        }
    };

    let resources = resources(draft, &at, provenance);

    let volumes = draft
        .volumes
        .iter()
        .map(|(name, volume)| {
            let volume_path = join(&at("volumes"), name);
            let service_opt_out = draft.backup.filter(|(b, _)| !b);
            let backup = if let Some((_, span)) = service_opt_out {
                provenance.remove_under(&format!("{volume_path}.backup"));
                provenance.written(&format!("{volume_path}.backup"), span);
                None
            } else if volume.backup == Some(false) {
                None
            } else {
                if volume.backup.is_none() {
                    provenance.defaulted(
                        &format!("{volume_path}.backup"),
                        "backup for every persistent volume",
                    );
                }
                let mut pick = |field: &str, value: Option<u32>, default: u32| {
                    value.unwrap_or_else(|| {
                        provenance.defaulted(
                            &format!("{volume_path}.backup.{field}"),
                            &format!("backup retention: {default}"),
                        );
                        default
                    })
                };
                let keep_daily = pick("keep_daily", volume.keep_daily, BACKUP_KEEP_DAILY);
                let keep_weekly = pick("keep_weekly", volume.keep_weekly, BACKUP_KEEP_WEEKLY);
                let schedule = match &volume.schedule {
                    Some((schedule, _)) => schedule.clone(),
                    None => {
                        provenance.defaulted(
                            &format!("{volume_path}.backup.schedule"),
                            "backup daily at 03:00",
                        );
                        BACKUP_SCHEDULE.to_owned()
                    }
                };
                Some(BackupPolicy {
                    schedule,
                    keep_daily,
                    keep_weekly,
                })
            };
            (
                name.clone(),
                Volume {
                    path: volume.path.clone(),
                    size: volume.size,
                    backup,
                },
            )
        })
        .collect();

    let metrics = draft.metrics.as_ref().map(|m| Metrics {
        port: m.port.0.clone(),
        path: m.path.clone(),
        interval: m.interval,
    });
    let monitoring = match draft.monitoring {
        Some((monitoring, _)) => monitoring,
        None if metrics.is_some() => {
            provenance.defaulted(&at("monitoring"), "monitoring for every metrics endpoint");
            true
        }
        None => {
            provenance.defaulted(&at("monitoring"), "no metrics endpoint to scrape");
            false
        }
    };

    let strategy = match (&draft.strategy, draft.kind.0) {
        (_, Kind::Cronjob) => None,
        (None, _) => {
            provenance.defaulted(&at("strategy"), "rolling update");
            Some(Strategy::Rolling)
        }
        (Some(strategy), _) => Some(match strategy.kind.as_str() {
            "canary" => {
                let steps = if strategy.steps.0.is_empty() {
                    provenance.defaulted(&at("strategy.steps"), "canary at 10%, 50%, 100%");
                    CANARY_STEPS.to_vec()
                } else {
                    strategy.steps.0.clone()
                };
                Strategy::Canary { steps }
            }
            "blue-green" => Strategy::BlueGreen,
            _ => Strategy::Rolling,
        }),
    };

    let labels = labels(stack, draft, &at, provenance);

    let network_policy = if draft.network_policy == Some(false) {
        None
    } else {
        provenance.defaulted(
            &at("network_policy"),
            "network policy from depends_on: default deny, DNS, one allow per dependency edge",
        );
        policies.get(&draft.name).cloned()
    };

    Service {
        image: draft.image.0.clone(),
        image_ref: None,
        role: draft.role,
        workload,
        command: draft.command.clone(),
        env: draft
            .env
            .iter()
            .map(|(k, (v, _))| (k.clone(), v.clone()))
            .collect(),
        secrets: draft
            .secrets
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), super::model::SecretRef::parse(v)?)))
            .collect(),
        ports: draft
            .ports
            .iter()
            .map(|(k, (p, _))| (k.clone(), p.clone()))
            .collect(),
        volumes,
        mounts: draft.mounts.clone(),
        health,
        resources,
        replicas: if draft.kind.0 == Kind::Cronjob {
            1
        } else {
            draft.replicas.0
        },
        depends_on: draft.depends_on.iter().map(|(d, _)| d.clone()).collect(),
        expose,
        metrics,
        monitoring,
        strategy,
        labels,
        network_policy,
    }
}

fn resources(
    draft: &Draft,
    at: &dyn Fn(&str) -> String,
    provenance: &mut Provenance<'_>,
) -> Resources {
    let written = &draft.resources;
    let cpu = written.cpu.unwrap_or_else(|| {
        provenance.defaulted(&at("resources.cpu"), "CPU request 100m");
        CPU_REQUEST
    });
    let memory = written.memory.unwrap_or_else(|| {
        provenance.defaulted(&at("resources.memory"), "memory request 128MiB");
        MEMORY_REQUEST
    });
    let memory_limit = written.memory_limit.unwrap_or_else(|| {
        provenance.defaulted(
            &at("resources.memory_limit"),
            "memory limit = the memory request",
        );
        memory
    });
    if written.cpu_limit.is_none() {
        provenance.defaulted(
            &at("resources.cpu_limit"),
            "no CPU limit: a limit throttles, the request already reserves",
        );
    }
    Resources {
        cpu,
        memory,
        cpu_limit: written.cpu_limit,
        memory_limit,
    }
}

/// The recommended Kubernetes labels (also used as compose labels), unless
/// the service sets them itself.
fn labels(
    stack: &str,
    draft: &Draft,
    at: &dyn Fn(&str) -> String,
    provenance: &mut Provenance<'_>,
) -> BTreeMap<String, String> {
    let component = match &draft.component {
        Some((component, span)) => {
            provenance.written(&join(&at("labels"), "app.kubernetes.io/component"), *span);
            component.clone()
        }
        None => match draft.kind.0 {
            Kind::Cronjob => "job",
            Kind::Service | Kind::Stateful => "server",
        }
        .to_owned(),
    };
    let recommended = [
        ("name", draft.name.clone(), "the service name"),
        (
            "instance",
            format!("{stack}-{}", draft.name),
            "STACK-SERVICE",
        ),
        (
            "version",
            label_value(image_tag(&draft.image.0)),
            "the image tag",
        ),
        (
            "component",
            component,
            "from the kind (set `component` to choose)",
        ),
        ("part-of", stack.to_owned(), "the stack name"),
        ("managed-by", MANAGED_BY.to_owned(), "kiln"),
    ];
    let mut labels = draft.labels.clone();
    for (key, value, why) in recommended {
        let key = format!("app.kubernetes.io/{key}");
        if !labels.contains_key(&key) {
            if key.ends_with("/component") && draft.component.is_some() {
                labels.insert(key, value);
                continue;
            }
            provenance.defaulted(
                &join(&at("labels"), &key),
                &format!("recommended label: {why}"),
            );
            labels.insert(key, value);
        }
    }
    labels
}

/// The tag of `name:tag` (empty if none).
fn image_tag(image: &str) -> &str {
    let last = image.rsplit('/').next().unwrap_or(image);
    last.split_once(':').map_or("", |(_, tag)| tag)
}

/// A valid label value: at most 63 characters of `[A-Za-z0-9._-]`,
/// starting and ending alphanumeric.
fn label_value(text: &str) -> String {
    let cleaned: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(63)
        .collect();
    cleaned
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_owned()
}

/// Each service's policy: default deny, DNS, egress to what it depends
/// on, ingress from what depends on it, the proxy when exposed and the
/// monitoring system when it has metrics.
fn network_policies(drafts: &[Draft]) -> BTreeMap<String, NetworkPolicy> {
    let ports_of = |name: &str| -> Vec<String> {
        drafts
            .iter()
            .find(|d| d.name == name)
            .map(|d| d.ports.keys().cloned().collect())
            .unwrap_or_default()
    };
    let mut policies = BTreeMap::new();
    for draft in drafts {
        let mut ingress: Vec<Peer> = drafts
            .iter()
            .filter(|other| other.depends_on.iter().any(|(d, _)| *d == draft.name))
            .filter(|other| other.name != draft.name)
            .map(|other| Peer::Service {
                name: other.name.clone(),
                ports: ports_of(&draft.name),
            })
            .collect();
        if let Some(expose) = &draft.expose {
            let port = expose
                .port
                .as_ref()
                .map(|(p, _)| p.clone())
                .or_else(|| draft.ports.keys().next().cloned());
            ingress.push(Peer::Proxy {
                ports: port.into_iter().collect(),
            });
        }
        if let Some(metrics) = &draft.metrics
            && draft.monitoring.is_none_or(|(m, _)| m)
        {
            ingress.push(Peer::Monitoring {
                ports: vec![metrics.port.0.clone()],
            });
        }
        let mut egress: Vec<Peer> = Vec::new();
        for (dependency, _) in &draft.depends_on {
            if *dependency != draft.name
                && drafts.iter().any(|d| d.name == *dependency)
                && !egress
                    .iter()
                    .any(|p| matches!(p, Peer::Service { name, .. } if name == dependency))
            {
                egress.push(Peer::Service {
                    name: dependency.clone(),
                    ports: ports_of(dependency),
                });
            }
        }
        policies.insert(
            draft.name.clone(),
            NetworkPolicy {
                default_deny: true,
                dns: true,
                ingress,
                egress,
                internet: draft.internet,
            },
        );
    }
    policies
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_valid() {
        assert_eq!(label_value("v3.1"), "v3.1");
        assert_eq!(label_value("2024.8.6"), "2024.8.6");
        assert_eq!(label_value("1.0+build"), "1.0_build");
        assert_eq!(label_value(&"a".repeat(80)).len(), 63);
        assert_eq!(image_tag("127.0.0.1:5000/demo/hello:1.0"), "1.0");
        assert_eq!(image_tag("traefik"), "");
    }
}
