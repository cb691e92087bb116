//! A host that runs stacks: the immutable Docker host.
//!
//! Every stack whose `[stack] host` names a host, and whose targets include
//! `compose`, is carried by that host's image: its compose bundle (the base
//! model, exactly the files of `kiln build stack:NAME#compose`) under
//! `/etc/kiln/stacks/NAMESPACE/`, and a systemd unit that brings it up at
//! boot, `kiln-stack-NAMESPACE.service`. Any unit files the bundle carries
//! under `systemd/` (a cron job's `.service` and `.timer`) are installed
//! too, the timers enabled. A small wrapper, `/usr/libexec/kiln/compose`,
//! runs Compose v2 (`docker compose`) where the host has it, else
//! `docker-compose`.

use std::collections::BTreeMap;

use crate::eval::spec::{File, SystemConfig, Unit};

use super::render::Bundle;

/// Where a stack's bundle is installed on its host.
pub fn install_dir(namespace: &str) -> String {
    format!("/etc/kiln/stacks/{namespace}")
}

/// The unit that runs a stack.
pub fn unit_name(namespace: &str) -> String {
    format!("kiln-stack-{namespace}.service")
}

/// The compose wrapper's path and text.
pub const COMPOSE_WRAPPER: &str = "/usr/libexec/kiln/compose";
const COMPOSE_WRAPPER_TEXT: &str = "#!/bin/sh
# kiln: run Docker Compose v2 when the host has it, else docker-compose.
if docker compose version >/dev/null 2>&1; then
  exec docker compose \"$@\"
fi
exec docker-compose \"$@\"
";

/// What a stack adds to its host, or why it cannot.
#[derive(Debug, thiserror::Error)]
#[error("stack `{stack}` cannot be installed on its host: {reason}")]
pub struct HostStackError {
    pub stack: String,
    pub reason: String,
}

/// One stack to carry: its name, namespace, external networks and bundle.
pub struct Carried<'a> {
    pub stack: &'a str,
    pub namespace: &'a str,
    pub networks: Vec<String>,
    pub bundle: &'a Bundle,
}

/// Add `stacks` to `config` (files and units). A path or unit the host
/// already defines is an error, never silently replaced.
pub fn carry(config: &mut SystemConfig, stacks: &[Carried<'_>]) -> Result<(), HostStackError> {
    if stacks.is_empty() {
        return Ok(());
    }
    let fail = |stack: &str, reason: String| HostStackError {
        stack: stack.to_owned(),
        reason,
    };
    let mut files: BTreeMap<String, File> = BTreeMap::new();
    let mut units: BTreeMap<String, Unit> = BTreeMap::new();
    files.insert(
        COMPOSE_WRAPPER.to_owned(),
        file(COMPOSE_WRAPPER_TEXT.to_owned(), "0755"),
    );
    for carried in stacks {
        let dir = install_dir(carried.namespace);
        for (relative, text) in &carried.bundle.files {
            if let Some(unit) = relative.strip_prefix("systemd/") {
                let enable = unit.ends_with(".timer");
                units.insert(
                    unit.to_owned(),
                    Unit {
                        text: text.clone(),
                        enable,
                    },
                );
            } else {
                files.insert(format!("{dir}/{relative}"), file(text.clone(), "0644"));
            }
        }
        let mut networks = String::new();
        for network in &carried.networks {
            // Shared with other stacks: created by whichever starts first.
            networks.push_str(&format!(
                "ExecStartPre=/bin/sh -c 'docker network inspect {network} >/dev/null 2>&1 || docker network create {network}'\n"
            ));
        }
        let name = unit_name(carried.namespace);
        let text = format!(
            "[Unit]
Description=kiln stack {stack} (Docker Compose project {ns})
Requires=docker.service
After=docker.service network-online.target
Wants=network-online.target

[Service]
Type=oneshot
RemainAfterExit=yes
WorkingDirectory={dir}
{networks}ExecStart={wrapper} --project-name {ns} --file compose.yaml up --detach --remove-orphans
ExecStop={wrapper} --project-name {ns} --file compose.yaml down
TimeoutStartSec=15min

[Install]
WantedBy=multi-user.target
",
            stack = carried.stack,
            ns = carried.namespace,
            wrapper = COMPOSE_WRAPPER,
        );
        if units
            .insert(name.clone(), Unit { text, enable: true })
            .is_some()
        {
            return Err(fail(carried.stack, format!("two stacks install `{name}`")));
        }
    }
    for (path, new) in files {
        if config.files.contains_key(&path) {
            return Err(fail(
                stacks[0].stack,
                format!("the host already has a file at `{path}`"),
            ));
        }
        config.files.insert(path, new);
    }
    for (name, unit) in units {
        if config.systemd.units.contains_key(&name) {
            return Err(fail(
                stacks[0].stack,
                format!("the host already defines the unit `{name}`"),
            ));
        }
        config.systemd.units.insert(name, unit);
    }
    Ok(())
}

fn file(text: String, mode: &str) -> File {
    File {
        text: Some(text),
        source: None,
        mode: mode.to_owned(),
        owner: "root".to_owned(),
        group: "root".to_owned(),
    }
}
