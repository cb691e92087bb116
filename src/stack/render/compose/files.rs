//! The bundle's files beside `compose.yaml`: `.env`, the secrets list,
//! the backup companion and its schedules, the Prometheus targets, the
//! systemd timers of cron jobs and the README.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::{
    ARCHIVE_ROOT, BACKUP_SERVICE, Bundle, ComposeService, Deploy, DeployResources, INSTALL_ROOT,
    Mount, RenderError, ResourceSpec, STOP_LABEL, convert, networks, secret_name, vault_file,
    volume_name,
};
use crate::stack::defaults::MANAGED_BY;
use crate::stack::model::{SecretRef, Stack, Strategy, Workload};

/// Volumes backed up on one schedule with one retention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PolicyGroup {
    pub(super) schedule: String,
    pub(super) keep_daily: u32,
    pub(super) keep_weekly: u32,
    /// (service, volume), in name order.
    pub(super) volumes: Vec<(String, String)>,
}

impl PolicyGroup {
    /// `01-keep-7d-4w`: numbered in order of first use, so two policies
    /// with the same retention and different schedules stay apart.
    pub(super) fn file_stem(&self, index: usize) -> String {
        format!(
            "{:02}-keep-{}d-{}w",
            index + 1,
            self.keep_daily,
            self.keep_weekly
        )
    }

    /// docker-volume-backup keeps archives by age only: enough days to
    /// cover both the daily and the weekly promise (more than asked,
    /// never less).
    pub(super) fn retention_days(&self) -> u64 {
        u64::from(self.keep_daily).max(7 * u64::from(self.keep_weekly))
    }
}

/// The distinct backup policies of the stack, in order of first use
/// (services and volumes by name).
pub(super) fn backup_policies(stack: &Stack) -> Vec<PolicyGroup> {
    let mut groups: Vec<PolicyGroup> = Vec::new();
    for (service_name, service) in &stack.services {
        for (volume_name, volume) in &service.volumes {
            let Some(policy) = &volume.backup else {
                continue;
            };
            let entry = (service_name.clone(), volume_name.clone());
            match groups.iter_mut().find(|g| {
                g.schedule == policy.schedule
                    && g.keep_daily == policy.keep_daily
                    && g.keep_weekly == policy.keep_weekly
            }) {
                Some(group) => group.volumes.push(entry),
                None => groups.push(PolicyGroup {
                    schedule: policy.schedule.clone(),
                    keep_daily: policy.keep_daily,
                    keep_weekly: policy.keep_weekly,
                    volumes: vec![entry],
                }),
            }
        }
    }
    groups
}

/// The docker-volume-backup companion: every backed-up volume read-only
/// under `/backup/<policy>/<service>-<volume>`, the Docker socket to stop
/// the volumes' users, archives to the host, one schedule per policy.
pub(super) fn backup_service(
    stack: &Stack,
    policies: &[PolicyGroup],
    image_ref: &str,
) -> ComposeService {
    let mut volumes = Vec::new();
    for (index, policy) in policies.iter().enumerate() {
        for (service, volume) in &policy.volumes {
            let name = volume_name(service, volume);
            volumes.push(Mount {
                kind: "volume",
                target: format!("/backup/{}/{name}", policy.file_stem(index)),
                source: name,
                read_only: true,
            });
        }
    }
    let bind = |source: String, target: &str| Mount {
        kind: "bind",
        source,
        target: target.to_owned(),
        read_only: target != "/archive",
    };
    volumes.push(bind(
        "/var/run/docker.sock".to_owned(),
        "/var/run/docker.sock",
    ));
    volumes.push(bind(
        format!("{ARCHIVE_ROOT}/{}", stack.settings.namespace),
        "/archive",
    ));
    volumes.push(bind(
        "./backup/conf.d".to_owned(),
        "/etc/dockervolumebackup/conf.d",
    ));
    let labels = [
        ("name", BACKUP_SERVICE.to_owned()),
        ("instance", format!("{}-{BACKUP_SERVICE}", stack.name)),
        ("component", "backup".to_owned()),
        ("part-of", stack.name.clone()),
        ("managed-by", MANAGED_BY.to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (format!("app.kubernetes.io/{k}"), v))
    .collect();
    ComposeService {
        image: image_ref.to_owned(),
        command: Vec::new(),
        profiles: Vec::new(),
        restart: "unless-stopped".to_owned(),
        environment: BTreeMap::new(),
        secrets: Vec::new(),
        labels,
        ports: Vec::new(),
        expose: Vec::new(),
        volumes,
        healthcheck: None,
        depends_on: BTreeMap::new(),
        networks: BTreeMap::new(),
        // It reads volumes and talks to the Docker socket: no network.
        network_mode: Some("none".to_owned()),
        deploy: Some(Deploy {
            replicas: Some(1),
            resources: DeployResources {
                limits: ResourceSpec {
                    cpus: None,
                    memory: convert::memory(512 << 20),
                },
                reservations: ResourceSpec {
                    cpus: Some(convert::cpus(100)),
                    memory: convert::memory(64 << 20),
                },
            },
        }),
        stop_grace_period: None,
    }
}

/// A `.env` value in double quotes (the form docker-volume-backup's
/// examples use).
fn quoted(value: &str) -> String {
    format!("\"{}\"", value.replace('\\', r"\\").replace('"', "\\\""))
}

/// `backup/conf.d/NN-….env`: one schedule of the companion.
pub(super) fn backup_conf(stack: &Stack, policy: &PolicyGroup, index: usize) -> String {
    let stem = policy.file_stem(index);
    let namespace = &stack.settings.namespace;
    let mut text = format!(
        "# Backup policy {stem} of stack `{}`, rendered by kiln.\n\
         # Schedule `{}`, keep {} daily and {} weekly: docker-volume-backup\n\
         # prunes by age only, so every archive is kept max(daily, 7 x weekly) days.\n\
         # Volumes:\n",
        stack.name, policy.schedule, policy.keep_daily, policy.keep_weekly
    );
    for (service, volume) in &policy.volumes {
        let _ = writeln!(text, "#   {} ({service})", volume_name(service, volume));
    }
    let entries = [
        ("BACKUP_CRON_EXPRESSION", policy.schedule.clone()),
        ("BACKUP_SOURCES", format!("/backup/{stem}")),
        (
            "BACKUP_FILENAME",
            format!("{namespace}-{stem}-%Y-%m-%dT%H-%M-%S.{{{{ .Extension }}}}"),
        ),
        ("BACKUP_PRUNING_PREFIX", format!("{namespace}-{stem}-")),
        ("BACKUP_RETENTION_DAYS", policy.retention_days().to_string()),
        ("BACKUP_STOP_DURING_BACKUP_LABEL", namespace.clone()),
    ];
    for (key, value) in entries {
        let _ = writeln!(text, "{key}={}", quoted(&value));
    }
    text
}

/// `.env`: the project name, and the variables secrets read, by name only.
pub(super) fn dot_env(stack: &Stack) -> String {
    let mut text = format!(
        "# The compose project of stack `{}` ({}), rendered by kiln.\n\
         # Non-secret settings only: never write a secret value here.\n\
         COMPOSE_PROJECT_NAME={}\n",
        stack.name, stack.file, stack.settings.namespace
    );
    let mut from_environment: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (service, definition) in &stack.services {
        for (variable, reference) in &definition.secrets {
            if let SecretRef::Env { name } = reference {
                from_environment
                    .entry(name)
                    .or_default()
                    .push(format!("{service}.{variable}"));
            }
        }
    }
    if !from_environment.is_empty() {
        text.push_str(
            "\n# Secrets read from the environment of whoever runs `docker compose up`\n\
             # (export them there; kiln never writes their values):\n",
        );
        for (name, users) in from_environment {
            let _ = writeln!(text, "#   {name}  (for {})", users.join(", "));
        }
    }
    if stack.services.values().any(|s| {
        s.secrets
            .values()
            .any(|r| !matches!(r, SecretRef::Env { .. }))
    }) {
        text.push_str("\n# Secrets read from files: see secrets/README.md.\n");
    }
    text
}

/// `secrets/README.md`: every secret's reference, never a value.
pub(super) fn secrets_readme(stack: &Stack) -> String {
    let mut text = format!(
        "# Secrets of stack `{}`\n\n\
         kiln never holds a secret value: this lists where each one comes from.\n\
         Each is a compose secret mounted at `/run/secrets/VARIABLE` in its\n\
         service, whose environment has `VARIABLE_FILE` pointing at it.\n",
        stack.name
    );
    let mut rows = Vec::new();
    for (service, definition) in &stack.services {
        for (variable, reference) in &definition.secrets {
            let source = match reference {
                SecretRef::Env { name } => {
                    format!("environment variable `{name}` of whoever runs `docker compose up`")
                }
                SecretRef::File { path } => format!("file `{path}` on the Docker host"),
                SecretRef::Vault { path, key } => format!(
                    "Vault `{path}`, key `{key}`: the deployer writes it to `{}`",
                    vault_file(service, variable).trim_start_matches("./")
                ),
            };
            rows.push(format!(
                "| `{service}` | `{variable}` | `{}` | {source} | `/run/secrets/{variable}` (`{variable}_FILE`) |",
                secret_name(service, variable)
            ));
        }
    }
    if rows.is_empty() {
        text.push_str("\nThis stack has no secrets.\n");
    } else {
        text.push_str(
            "\n| service | variable | compose secret | value from | in the container |\n\
             |---|---|---|---|---|\n",
        );
        for row in rows {
            text.push_str(&row);
            text.push('\n');
        }
        text.push_str(
            "\n`docker compose up` fails while a secret's file or variable is missing.\n\
             Files written here must stay out of version control and be readable only\n\
             by root.\n",
        );
    }
    text
}

/// Where a monitored service's metrics are: `[{targets, labels}]`.
#[derive(Serialize)]
struct TargetGroup {
    targets: Vec<String>,
    labels: BTreeMap<String, String>,
}

/// A Prometheus-safe label name: every character outside
/// `[a-zA-Z0-9_]` becomes `_` (as Prometheus does for Kubernetes labels).
pub(super) fn prometheus_label(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// `prometheus/targets.json` in file_sd format: one group per monitored
/// service, with the `job` and `namespace` labels the Prometheus Operator
/// gives the same service on Kubernetes.
pub(super) fn prometheus_targets(
    stack: &Stack,
    plan: &networks::Plan,
) -> Result<String, RenderError> {
    let mut groups = Vec::new();
    for (name, service) in &stack.services {
        let Some(metrics) = service
            .metrics
            .as_ref()
            .filter(|_| networks::monitored(service))
        else {
            continue;
        };
        let port = super::port_number(name, service, &metrics.port)?;
        let host = plan
            .scrape_host
            .get(name)
            .cloned()
            .unwrap_or_else(|| name.clone());
        let mut labels = BTreeMap::from([
            ("job".to_owned(), name.clone()),
            ("namespace".to_owned(), stack.settings.namespace.clone()),
            ("service".to_owned(), name.clone()),
            ("__metrics_path__".to_owned(), metrics.path.clone()),
            (
                "__scrape_interval__".to_owned(),
                convert::duration(metrics.interval),
            ),
            (
                "__scrape_timeout__".to_owned(),
                convert::duration(metrics.interval.min(10)),
            ),
        ]);
        for key in ["app.kubernetes.io/name", "app.kubernetes.io/instance"] {
            if let Some(value) = service.labels.get(key) {
                labels.insert(prometheus_label(key), value.clone());
            }
        }
        groups.push(TargetGroup {
            targets: vec![format!("{host}:{port}")],
            labels,
        });
    }
    let mut text = serde_json::to_string_pretty(&groups)?;
    text.push('\n');
    Ok(text)
}

#[derive(Serialize)]
struct ScrapeFile {
    scrape_configs: Vec<ScrapeConfig>,
}

#[derive(Serialize)]
struct ScrapeConfig {
    job_name: String,
    file_sd_configs: Vec<FileSd>,
}

#[derive(Serialize)]
struct FileSd {
    files: Vec<String>,
}

/// Where the targets file is, on the Docker host and (mounted at the same
/// path) in the Prometheus container.
pub(super) fn targets_path(stack: &Stack) -> String {
    format!(
        "{INSTALL_ROOT}/{}/prometheus/targets.json",
        stack.settings.namespace
    )
}

/// `prometheus/scrape.yml`: the scrape config reading the targets file.
pub(super) fn prometheus_scrape(stack: &Stack) -> Result<String, RenderError> {
    let file = ScrapeFile {
        scrape_configs: vec![ScrapeConfig {
            job_name: format!("kiln-{}", stack.settings.namespace),
            file_sd_configs: vec![FileSd {
                files: vec![targets_path(stack)],
            }],
        }],
    };
    Ok(format!(
        "# Add to prometheus.yml's scrape_configs; mount {INSTALL_ROOT} read-only\n\
         # into the Prometheus container at the same path. Each target's `job`\n\
         # label (the service) replaces this job name.\n{}",
        crate::yaml::to_string(&file)?
    ))
}

/// `kiln-NS-JOB`: the systemd unit of a cron job.
pub(super) fn unit_name(stack: &Stack, job: &str) -> String {
    format!("kiln-{}-{job}", stack.settings.namespace)
}

/// Where the bundle is installed on the Docker host.
pub(super) fn install_dir(stack: &Stack) -> String {
    format!("{INSTALL_ROOT}/{}", stack.settings.namespace)
}

/// The oneshot service a cron job's timer starts.
pub(super) fn job_service(stack: &Stack, job: &str) -> String {
    let dir = install_dir(stack);
    format!(
        "# Rendered by kiln: cron job `{job}` of stack `{}`.\n\
         [Unit]\n\
         Description=kiln cron job {job} of stack {}\n\
         Requires=docker.service\n\
         After=docker.service\n\
         \n\
         [Service]\n\
         Type=oneshot\n\
         WorkingDirectory={dir}\n\
         ExecStart=/usr/bin/docker compose --project-name {} --file {dir}/compose.yaml run --rm --no-TTY {job}\n",
        stack.name, stack.name, stack.settings.namespace
    )
}

/// The timer of a cron job: its schedule as `OnCalendar=`.
pub(super) fn job_timer(stack: &Stack, job: &str, schedule: &str, calendar: &str) -> String {
    format!(
        "# Rendered by kiln: cron job `{job}` of stack `{}`, schedule `{schedule}`\n\
         # (both in the host's local time).\n\
         [Unit]\n\
         Description=Run kiln cron job {job} of stack {}\n\
         \n\
         [Timer]\n\
         OnCalendar={calendar}\n\
         Persistent=true\n\
         Unit={}.service\n\
         \n\
         [Install]\n\
         WantedBy=timers.target\n",
        stack.name,
        stack.name,
        unit_name(stack, job)
    )
}

/// The bundle's README: what is where, how to run it.
pub(super) fn readme(stack: &Stack, bundle: &Bundle) -> String {
    let namespace = &stack.settings.namespace;
    let dir = install_dir(stack);
    let compose = &stack.settings.compose;
    let mut text = format!(
        "# Stack `{}` for Docker Compose\n\n\
         Rendered by kiln from `{}`{}. Every image is pinned by digest.\n\n\
         ## Files\n\n",
        stack.name,
        stack.file,
        stack
            .env
            .as_ref()
            .map(|e| format!(" (environment `{e}`)"))
            .unwrap_or_default()
    );
    let mut paths: Vec<&str> = bundle.files.keys().map(String::as_str).collect();
    paths.push("README.md");
    paths.sort_unstable();
    for path in paths {
        let _ = writeln!(text, "- `{path}`");
    }
    let _ = write!(
        text,
        "\n## Running it\n\n\
         1. Copy this directory to `{dir}` on the Docker host.\n\
         2. Create the shared networks once per host, if missing:\n   \
         `docker network create {}` and `docker network create {}`.\n\
         3. Provide the secrets listed in `secrets/README.md`.\n\
         4. `docker compose --project-name {namespace} --file {dir}/compose.yaml up -d`\n",
        compose.proxy_network, compose.monitoring_network
    );
    let jobs: Vec<&String> = stack
        .services
        .iter()
        .filter(|(_, s)| matches!(s.workload, Workload::Cronjob { .. }))
        .map(|(n, _)| n)
        .collect();
    if !jobs.is_empty() {
        let _ = write!(
            text,
            "5. Install the timers of the cron jobs: copy `systemd/*` to\n   \
             `/etc/systemd/system/`, then `systemctl daemon-reload` and\n   \
             `systemctl enable --now {}`.\n",
            jobs.iter()
                .map(|j| format!("{}.timer", unit_name(stack, j)))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    let progressive: Vec<String> = stack
        .services
        .iter()
        .filter_map(|(name, s)| match &s.strategy {
            Some(Strategy::Canary { steps }) => Some(format!(
                "`{name}` (canary, steps {})",
                steps
                    .iter()
                    .map(|s| format!("{s}%"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            Some(Strategy::BlueGreen) => Some(format!("`{name}` (blue-green)")),
            _ => None,
        })
        .collect();
    if !progressive.is_empty() {
        let _ = write!(
            text,
            "\n## Rollout strategies\n\n\
             Compose has no progressive rollout: {} run as one service, replaced\n\
             in place by `docker compose up`. The strategy applies on Kubernetes\n\
             (Argo Rollouts).\n",
            progressive.join(", ")
        );
    }
    if bundle.files.keys().any(|p| p.starts_with("backup/")) {
        let _ = write!(
            text,
            "\n## Backups\n\n\
             The `{BACKUP_SERVICE}` service archives every backed-up volume to\n\
             `{ARCHIVE_ROOT}/{namespace}` on the host, one schedule per file in\n\
             `backup/conf.d/`. It stops the containers labelled\n\
             `{STOP_LABEL}={namespace}` while it copies.\n",
        );
    }
    text
}
