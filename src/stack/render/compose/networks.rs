//! Network policy on compose: which networks each service joins.
//!
//! Docker lets two containers talk exactly when they share a network, so
//! the stack's policy becomes a set of networks (see
//! `docs/src/stacks-compose.md`):
//!
//! - one `internal` network per dependency edge, `A--B` for `A` depending
//!   on `B`;
//! - one `internal` network per route from the reverse proxy or the
//!   monitoring system *of this stack* to a service it reaches
//!   (`traefik--portainer`), reusing the edge's network when the two are
//!   already joined;
//! - the external `proxy` network (`settings.compose.proxy_network`) for
//!   the proxy itself and for exposed services when the proxy lives in
//!   another stack, and likewise the external `monitoring` network;
//! - `egress.S`, a network of its own and not internal, for a service that
//!   may reach the internet (`internet = true`) or publishes a host port
//!   (Docker publishes no port of a container on internal networks only);
//! - `default`, not internal, for the services that opted out of network
//!   policy.
//!
//! A service on no network at all runs with `network_mode: none`.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::stack::model::{Role, Service, Stack};

/// The key of the external proxy network in `networks:`.
pub const PROXY: &str = "proxy";
/// The key of the external monitoring network in `networks:`.
pub const MONITORING: &str = "monitoring";
/// The key of the network of the services without network policy.
pub const DEFAULT: &str = "default";

/// A top-level `networks:` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NetworkDefinition {
    /// The Docker network's name.
    pub name: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub internal: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub external: bool,
}

/// A service's attachment to one network.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Attachment {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

/// Every network of the stack and who joins which.
#[derive(Debug, Default)]
pub struct Plan {
    pub definitions: BTreeMap<String, NetworkDefinition>,
    /// By service, its networks by key (empty: `network_mode: none`).
    pub members: BTreeMap<String, BTreeMap<String, Attachment>>,
    /// By exposed service, the Docker network the proxy reaches it on
    /// (`traefik.docker.network`).
    pub proxy_network: BTreeMap<String, String>,
    /// By monitored service, the host name Prometheus scrapes it at.
    pub scrape_host: BTreeMap<String, String>,
}

/// Why the networks cannot be planned.
#[derive(Debug)]
pub struct Collision {
    pub service: String,
    pub reason: String,
}

impl Plan {
    fn define(&mut self, namespace: &str, key: &str, internal: bool) {
        self.definitions
            .entry(key.to_owned())
            .or_insert_with(|| NetworkDefinition {
                name: format!("{namespace}_{key}"),
                internal,
                external: false,
            });
    }

    fn join(&mut self, service: &str, key: &str) -> &mut Attachment {
        self.members
            .entry(service.to_owned())
            .or_default()
            .entry(key.to_owned())
            .or_default()
    }
}

/// Whether `service` is exposed through the reverse proxy.
pub fn exposed(service: &Service) -> bool {
    service.expose.is_some()
}

/// Whether `service` is scraped by the monitoring system.
pub fn monitored(service: &Service) -> bool {
    service.monitoring && service.metrics.is_some()
}

/// The networks of `stack`.
pub fn plan(stack: &Stack) -> Result<Plan, Collision> {
    let namespace = &stack.settings.namespace;
    let compose = &stack.settings.compose;
    let mut plan = Plan::default();
    for name in stack.services.keys() {
        plan.members.entry(name.clone()).or_default();
    }
    // The unordered pairs already joined, and by which network.
    let mut pairs: BTreeMap<(String, String), String> = BTreeMap::new();
    let mut pair_network = |plan: &mut Plan, a: &str, b: &str| -> Result<String, Collision> {
        let pair = if a < b {
            (a.to_owned(), b.to_owned())
        } else {
            (b.to_owned(), a.to_owned())
        };
        if let Some(key) = pairs.get(&pair) {
            return Ok(key.clone());
        }
        let key = format!("{a}--{b}");
        if pairs.values().any(|k| *k == key) {
            return Err(Collision {
                service: a.to_owned(),
                reason: format!(
                    "the network `{key}` would join two different pairs of services (rename a service so its name does not contain `--`)"
                ),
            });
        }
        plan.define(namespace, &key, true);
        plan.join(a, &key);
        plan.join(b, &key);
        pairs.insert(pair, key.clone());
        Ok(key)
    };

    // One internal network per dependency edge.
    for (name, service) in &stack.services {
        for dependency in &service.depends_on {
            if dependency != name && stack.services.contains_key(dependency) {
                pair_network(&mut plan, name, dependency)?;
            }
        }
    }

    // The hubs: the proxy and the monitoring system.
    let proxies: Vec<&String> = role_members(stack, Role::Proxy);
    let monitors: Vec<&String> = role_members(stack, Role::Monitoring);
    let external = |plan: &mut Plan, key: &str, name: &str| {
        plan.definitions
            .entry(key.to_owned())
            .or_insert_with(|| NetworkDefinition {
                name: name.to_owned(),
                internal: false,
                external: true,
            });
    };
    // One external network when both settings name the same one.
    let monitoring_key = if compose.monitoring_network == compose.proxy_network {
        PROXY
    } else {
        MONITORING
    };
    for hub in &proxies {
        external(&mut plan, PROXY, &compose.proxy_network);
        plan.join(hub, PROXY);
    }
    for hub in &monitors {
        external(&mut plan, monitoring_key, &compose.monitoring_network);
        plan.join(hub, monitoring_key);
    }
    for (name, service) in &stack.services {
        if exposed(service) && service.role != Role::Proxy {
            if proxies.is_empty() {
                external(&mut plan, PROXY, &compose.proxy_network);
                plan.join(name, PROXY);
                plan.proxy_network
                    .insert(name.clone(), compose.proxy_network.clone());
            } else {
                let mut first = None;
                for hub in &proxies {
                    let key = pair_network(&mut plan, hub, name)?;
                    first.get_or_insert(key);
                }
                if let Some(key) = first {
                    let docker_name = plan.definitions[&key].name.clone();
                    plan.proxy_network.insert(name.clone(), docker_name);
                }
            }
        }
        if monitored(service) {
            // A name unique on a network shared by several stacks.
            let alias = format!("{namespace}-{name}");
            let keys = if monitors.is_empty() {
                external(&mut plan, monitoring_key, &compose.monitoring_network);
                vec![monitoring_key.to_owned()]
            } else {
                let mut keys = Vec::new();
                for hub in monitors.iter().filter(|hub| **hub != name) {
                    keys.push(pair_network(&mut plan, hub, name)?);
                }
                if monitors.contains(&name) {
                    // The monitoring system scrapes itself on its own network.
                    keys.push(monitoring_key.to_owned());
                }
                keys
            };
            for key in keys {
                let attachment = plan.join(name, &key);
                if !attachment.aliases.contains(&alias) {
                    attachment.aliases.push(alias.clone());
                }
            }
            plan.scrape_host.insert(name.clone(), alias);
        }
    }

    // The way out, and the services without network policy.
    for (name, service) in &stack.services {
        let publishes = service.ports.values().any(|p| p.published.is_some());
        match &service.network_policy {
            None => {
                plan.define(namespace, DEFAULT, false);
                plan.join(name, DEFAULT);
            }
            Some(policy) if policy.internet || publishes => {
                let key = format!("egress.{name}");
                plan.define(namespace, &key, false);
                plan.join(name, &key);
            }
            Some(_) => {}
        }
    }
    Ok(plan)
}

/// The services of `role`, by name.
fn role_members(stack: &Stack, role: Role) -> Vec<&String> {
    stack
        .services
        .iter()
        .filter(|(_, s)| s.role == role)
        .map(|(name, _)| name)
        .collect()
}
