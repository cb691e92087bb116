//! The Docker Compose target: a pinned stack as a directory that `docker
//! compose` runs (layout and choices in `docs/src/stacks-compose.md`).
//!
//! | file | what |
//! |---|---|
//! | `compose.yaml` | the services, digest-pinned, with health checks, resources, Traefik labels, secrets as files, one internal network per dependency edge, named volumes, the backup companion |
//! | `.env` | the project name; comments naming the variables secrets read, never a value |
//! | `secrets/README.md` | every secret: where its value comes from, where it is mounted |
//! | `backup/conf.d/NN-keep-Dd-Ww.env` | one docker-volume-backup schedule per distinct backup policy |
//! | `prometheus/targets.json`, `prometheus/scrape.yml` | file_sd targets with the labels the Kubernetes ServiceMonitor gives |
//! | `systemd/kiln-NS-JOB.{service,timer}` | a timer per cron job |
//! | `README.md` | what is where, how to run it |
//!
//! Pure: the same [`PinnedStack`] gives the same bytes.

pub mod convert;
mod files;
pub mod networks;

use std::collections::BTreeMap;

use serde::Serialize;

use super::{Bundle, RenderError, Target};
use crate::stack::model::{
    Auth, HealthCheck, Probe, Protocol, SecretRef, Service, Stack, Workload,
};
use crate::stack::pin::PinnedStack;

use networks::{Attachment, NetworkDefinition};

/// Where the systemd units expect the bundle on the Docker host.
pub const INSTALL_ROOT: &str = "/etc/kiln/stacks";
/// Where the backup companion writes its archives on the host.
pub const ARCHIVE_ROOT: &str = "/var/backups/kiln";
/// The name of the backup companion service.
pub const BACKUP_SERVICE: &str = "backup";
/// The Traefik certificate resolver of a `tls` route.
pub const CERT_RESOLVER: &str = "letsencrypt";
/// The forward-auth middleware of `auth = "authentik"`, declared by the
/// edge stack's Authentik service through its own labels.
pub const AUTHENTIK_MIDDLEWARE: &str = "authentik@docker";
/// The label docker-volume-backup stops containers by.
pub const STOP_LABEL: &str = "docker-volume-backup.stop-during-backup";

/// The compose bundle of a pinned stack.
pub fn render(pinned: &PinnedStack) -> Result<Bundle, RenderError> {
    let stack = &pinned.stack;
    let plan = networks::plan(stack).map_err(|c| error(&c.service, c.reason))?;
    let backups = files::backup_policies(stack);
    let mut document = ComposeFile {
        services: BTreeMap::new(),
        networks: plan.definitions.clone(),
        volumes: BTreeMap::new(),
        secrets: BTreeMap::new(),
    };
    for (name, service) in &stack.services {
        let rendered = render_service(stack, name, service, &plan, !backups.is_empty())?;
        for volume in service.volumes.keys() {
            document
                .volumes
                .insert(volume_name(name, volume), VolumeDefinition {});
        }
        for (variable, reference) in &service.secrets {
            document.secrets.insert(
                secret_name(name, variable),
                secret_definition(name, variable, reference),
            );
        }
        document.services.insert(name.clone(), rendered);
    }
    if !backups.is_empty() {
        if stack.services.contains_key(BACKUP_SERVICE) {
            return Err(error(
                BACKUP_SERVICE,
                "the volume backup companion is called `backup` on compose: rename this service"
                    .to_owned(),
            ));
        }
        let Some(image) = &pinned.backup_image else {
            return Err(error(
                BACKUP_SERVICE,
                "volumes are backed up but the backup companion's image is not pinned".to_owned(),
            ));
        };
        document.services.insert(
            BACKUP_SERVICE.to_owned(),
            files::backup_service(stack, &backups, &image.image_ref),
        );
    }

    let mut bundle = Bundle::default();
    bundle.add("compose.yaml", crate::yaml::to_string(&document)?);
    bundle.add(".env", files::dot_env(stack));
    bundle.add("secrets/README.md", files::secrets_readme(stack));
    for (index, policy) in backups.iter().enumerate() {
        bundle.add(
            format!("backup/conf.d/{}.env", policy.file_stem(index)),
            files::backup_conf(stack, policy, index),
        );
    }
    if stack.services.values().any(networks::monitored) {
        bundle.add(
            "prometheus/targets.json",
            files::prometheus_targets(stack, &plan)?,
        );
        bundle.add("prometheus/scrape.yml", files::prometheus_scrape(stack)?);
    }
    for (name, service) in &stack.services {
        if let Workload::Cronjob { schedule } = &service.workload {
            let calendar =
                convert::on_calendar(schedule).map_err(|e| error(name, e.to_string()))?;
            let unit = files::unit_name(stack, name);
            bundle.add(
                format!("systemd/{unit}.service"),
                files::job_service(stack, name),
            );
            bundle.add(
                format!("systemd/{unit}.timer"),
                files::job_timer(stack, name, schedule, &calendar),
            );
        }
    }
    bundle.add("README.md", files::readme(stack, &bundle));
    Ok(bundle)
}

fn error(service: &str, reason: String) -> RenderError {
    RenderError::Service {
        service: service.to_owned(),
        target: Target::Compose,
        reason,
    }
}

/// The named volume of a service's volume.
pub fn volume_name(service: &str, volume: &str) -> String {
    format!("{service}-{volume}")
}

/// The top-level secret of a service's secret variable.
pub fn secret_name(service: &str, variable: &str) -> String {
    format!("{service}.{variable}")
}

/// Where the deployer puts the value of a Vault secret, relative to the
/// bundle.
pub fn vault_file(service: &str, variable: &str) -> String {
    format!("./secrets/{}", secret_name(service, variable))
}

fn secret_definition(service: &str, variable: &str, reference: &SecretRef) -> SecretDefinition {
    match reference {
        SecretRef::Env { name } => SecretDefinition {
            environment: Some(name.clone()),
            file: None,
        },
        SecretRef::File { path } => SecretDefinition {
            environment: None,
            file: Some(path.clone()),
        },
        SecretRef::Vault { .. } => SecretDefinition {
            environment: None,
            file: Some(vault_file(service, variable)),
        },
    }
}

fn render_service(
    stack: &Stack,
    name: &str,
    service: &Service,
    plan: &networks::Plan,
    backups: bool,
) -> Result<ComposeService, RenderError> {
    let cronjob = matches!(service.workload, Workload::Cronjob { .. });
    let image = service
        .image_ref
        .clone()
        .ok_or_else(|| error(name, format!("image `{}` is not pinned", service.image)))?;

    let mut environment: BTreeMap<String, String> = service
        .env
        .iter()
        .map(|(k, v)| (k.clone(), convert::literal(v)))
        .collect();
    let mut secrets = Vec::new();
    for variable in service.secrets.keys() {
        let file_variable = format!("{variable}_FILE");
        if service.env.contains_key(variable) || service.env.contains_key(&file_variable) {
            return Err(error(
                name,
                format!(
                    "`{variable}` is a secret, so `{file_variable}` points at its file: remove `{variable}`/`{file_variable}` from `env`"
                ),
            ));
        }
        environment.insert(file_variable, format!("/run/secrets/{variable}"));
        secrets.push(ServiceSecret {
            source: secret_name(name, variable),
            target: variable.clone(),
        });
    }

    let mut labels: BTreeMap<String, String> = service
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), convert::literal(v)))
        .collect();
    if service.expose.is_some() {
        labels.extend(traefik_labels(stack, name, service, plan)?);
    }
    if backups && service.volumes.values().any(|v| v.backup.is_some()) {
        labels.insert(STOP_LABEL.to_owned(), stack.settings.namespace.clone());
    }

    let mut ports = Vec::new();
    let mut expose = Vec::new();
    for port in service.ports.values() {
        let protocol = match port.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        };
        match port.published {
            Some(published) => ports.push(PortMapping {
                target: port.port,
                published: published.to_string(),
                protocol: protocol.to_owned(),
            }),
            None => expose.push(match port.protocol {
                Protocol::Tcp => port.port.to_string(),
                Protocol::Udp => format!("{}/udp", port.port),
            }),
        }
    }
    expose.sort_by_key(|p| {
        let (number, rest) = p.split_once('/').unwrap_or((p, ""));
        (number.parse::<u32>().unwrap_or(0), rest.to_owned())
    });

    let mut volumes: Vec<Mount> = service
        .volumes
        .iter()
        .map(|(volume_key, volume)| Mount {
            kind: "volume",
            source: volume_name(name, volume_key),
            target: volume.path.clone(),
            read_only: false,
        })
        .collect();
    volumes.extend(service.mounts.values().map(|mount| Mount {
        kind: "bind",
        source: mount.host.clone(),
        target: mount.path.clone(),
        read_only: mount.read_only,
    }));

    let depends_on = service
        .depends_on
        .iter()
        .filter_map(|dependency| {
            let other = stack.services.get(dependency)?;
            let other_cronjob = matches!(other.workload, Workload::Cronjob { .. });
            Some((
                dependency.clone(),
                Dependency {
                    condition: if other.health.is_some() {
                        "service_healthy"
                    } else {
                        "service_started"
                    },
                    // A cron job only runs when asked: not a hard dependency.
                    required: if other_cronjob { Some(false) } else { None },
                },
            ))
        })
        .collect();

    let members = plan.members.get(name).cloned().unwrap_or_default();
    let network_mode = members.is_empty().then(|| "none".to_owned());

    let resources = &service.resources;
    let deploy = Deploy {
        replicas: (!cronjob).then_some(service.replicas),
        resources: DeployResources {
            limits: ResourceSpec {
                cpus: resources.cpu_limit.map(convert::cpus),
                memory: convert::memory(resources.memory_limit),
            },
            reservations: ResourceSpec {
                cpus: Some(convert::cpus(resources.cpu)),
                memory: convert::memory(resources.memory),
            },
        },
    };

    Ok(ComposeService {
        image,
        command: service
            .command
            .iter()
            .map(|c| convert::literal(c))
            .collect(),
        profiles: if cronjob {
            vec!["cronjob".to_owned()]
        } else {
            Vec::new()
        },
        restart: if cronjob { "no" } else { "unless-stopped" }.to_owned(),
        environment,
        secrets,
        labels,
        ports,
        expose,
        volumes,
        healthcheck: service
            .health
            .as_ref()
            .map(|h| healthcheck(name, service, h))
            .transpose()?,
        depends_on,
        networks: members,
        network_mode,
        deploy: Some(deploy),
        stop_grace_period: matches!(service.workload, Workload::Stateful)
            .then(|| convert::duration(STATEFUL_STOP_GRACE)),
    })
}

/// Seconds a stateful service gets to shut down (Docker's default is 10).
pub const STATEFUL_STOP_GRACE: u64 = 60;

/// The port number of a named port.
fn port_number(name: &str, service: &Service, port: &str) -> Result<u16, RenderError> {
    service
        .ports
        .get(port)
        .map(|p| p.port)
        .ok_or_else(|| error(name, format!("no port named `{port}`")))
}

/// A compose health check from the model's probe.
fn healthcheck(
    name: &str,
    service: &Service,
    check: &HealthCheck,
) -> Result<Healthcheck, RenderError> {
    let test = match &check.probe {
        Probe::Http { port, path } => {
            let url = convert::shell_word(&format!(
                "http://127.0.0.1:{}{path}",
                port_number(name, service, port)?
            ));
            vec![
                "CMD-SHELL".to_owned(),
                convert::literal(&format!(
                    "wget -q --spider {url} || curl -fsS -o /dev/null {url} || exit 1"
                )),
            ]
        }
        Probe::Tcp { port } => {
            let port = port_number(name, service, port)?;
            vec![
                "CMD-SHELL".to_owned(),
                format!(
                    "nc -z 127.0.0.1 {port} || bash -c ': > /dev/tcp/127.0.0.1/{port}' || exit 1"
                ),
            ]
        }
        Probe::Exec { command } => std::iter::once("CMD".to_owned())
            .chain(command.iter().map(|c| convert::literal(c)))
            .collect(),
    };
    Ok(Healthcheck {
        test,
        interval: convert::duration(check.interval),
        timeout: convert::duration(check.timeout),
        retries: check.retries,
        start_period: convert::duration(check.start_period),
    })
}

/// The Traefik Docker-provider labels routing an exposed service.
fn traefik_labels(
    stack: &Stack,
    name: &str,
    service: &Service,
    plan: &networks::Plan,
) -> Result<BTreeMap<String, String>, RenderError> {
    let Some(expose) = &service.expose else {
        return Ok(BTreeMap::new());
    };
    let router = format!("{}-{name}", stack.settings.namespace);
    let network = plan
        .proxy_network
        .get(name)
        .cloned()
        .unwrap_or_else(|| stack.settings.compose.proxy_network.clone());
    let port = port_number(name, service, &expose.port)?;
    let r = |key: &str| format!("traefik.http.routers.{router}.{key}");
    let mut labels = BTreeMap::from([
        ("traefik.enable".to_owned(), "true".to_owned()),
        ("traefik.docker.network".to_owned(), network),
        (r("rule"), format!("Host(`{}`)", expose.hostname)),
        (r("service"), router.clone()),
        (
            format!("traefik.http.services.{router}.loadbalancer.server.port"),
            port.to_string(),
        ),
    ]);
    if expose.tls {
        labels.insert(r("entrypoints"), "websecure".to_owned());
        labels.insert(r("tls"), "true".to_owned());
        labels.insert(r("tls.certresolver"), CERT_RESOLVER.to_owned());
    } else {
        labels.insert(r("entrypoints"), "web".to_owned());
    }
    if expose.auth == Auth::Authentik {
        labels.insert(r("middlewares"), AUTHENTIK_MIDDLEWARE.to_owned());
    }
    Ok(labels)
}

// ── The compose document ────────────────────────────────────────────────
// Fields in the order a reader looks for them; empty ones left out.

#[derive(Serialize)]
/// No top-level `name`: Compose v1 (Debian 12's `docker-compose` 1.29)
/// refuses it. The project name is `COMPOSE_PROJECT_NAME` in `.env`, which
/// v1 and v2 both read from the project directory, and `--project-name` in
/// the host's unit.
struct ComposeFile {
    services: BTreeMap<String, ComposeService>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    networks: BTreeMap<String, NetworkDefinition>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    volumes: BTreeMap<String, VolumeDefinition>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    secrets: BTreeMap<String, SecretDefinition>,
}

#[derive(Serialize)]
struct ComposeService {
    image: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    command: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    profiles: Vec<String>,
    restart: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    environment: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    secrets: Vec<ServiceSecret>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ports: Vec<PortMapping>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    expose: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    volumes: Vec<Mount>,
    #[serde(skip_serializing_if = "Option::is_none")]
    healthcheck: Option<Healthcheck>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    depends_on: BTreeMap<String, Dependency>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    networks: BTreeMap<String, Attachment>,
    #[serde(skip_serializing_if = "Option::is_none")]
    network_mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deploy: Option<Deploy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_grace_period: Option<String>,
}

#[derive(Serialize)]
struct ServiceSecret {
    source: String,
    target: String,
}

#[derive(Serialize)]
struct PortMapping {
    target: u16,
    published: String,
    protocol: String,
}

#[derive(Serialize)]
struct Mount {
    #[serde(rename = "type")]
    kind: &'static str,
    source: String,
    target: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    read_only: bool,
}

#[derive(Serialize)]
struct Healthcheck {
    test: Vec<String>,
    interval: String,
    timeout: String,
    retries: u32,
    start_period: String,
}

#[derive(Serialize)]
struct Dependency {
    condition: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    required: Option<bool>,
}

#[derive(Serialize)]
struct Deploy {
    #[serde(skip_serializing_if = "Option::is_none")]
    replicas: Option<u32>,
    resources: DeployResources,
}

#[derive(Serialize)]
struct DeployResources {
    limits: ResourceSpec,
    reservations: ResourceSpec,
}

#[derive(Serialize)]
struct ResourceSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    cpus: Option<String>,
    memory: String,
}

#[derive(Serialize)]
struct VolumeDefinition {}

#[derive(Serialize)]
struct SecretDefinition {
    #[serde(skip_serializing_if = "Option::is_none")]
    environment: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<String>,
}
