//! Evaluating a stack file: the `[stack]` header, the `[services]` values
//! against the stack schema, and each `[env.NAME]` overlay merged over
//! them at a higher priority (so an overlay wins leaf by leaf, and its
//! lists replace the base's). The typed model and its defaults are
//! [`crate::stack`]'s.

use std::collections::HashMap;

use super::merge::{Def, OptionPath, merge};
use super::options::OptNode;
use super::spec::StackSpec;
use super::value::{Priority, Value, ValueKind};
use super::{Evaluation, Evaluator, field_str, field_strings};
use crate::config::diagnostic::Diagnostic;
use crate::config::{DocId, DocKind, Node, NodeKind, Span};
use crate::stack::checks::is_dns_label;
use crate::suggest::did_you_mean;

/// What an `[env.NAME]` table may hold.
const ENV_KEYS: [&str; 1] = ["services"];

impl Evaluator {
    /// The stack's base model; every environment overlay is checked too.
    pub fn stack(&self, id: DocId) -> Evaluation<StackSpec> {
        self.stack_in(id, None)
    }

    /// The stack's model with the `env` overlay applied (`None`: the base).
    /// Every overlay is evaluated and checked whichever is asked for, so a
    /// mistake in `[env.prod]` is found while working on `dev`.
    pub fn stack_in(&self, id: DocId, env: Option<&str>) -> Evaluation<StackSpec> {
        let document = self.repo.document(id);
        if document.broken {
            return Err(Vec::new());
        }
        let mut diagnostics = Vec::new();
        let header = self.header(id, &["imports"], &mut diagnostics);
        let Some(header) = header else {
            return Err(diagnostics);
        };
        let host = field_str(&header, "host").map(str::to_owned);
        if let Some(host) = &host
            && self.repo.find(DocKind::Host, host).is_none()
        {
            diagnostics.push(
                Diagnostic::error("missing-host", format!("no host named `{host}`"))
                    .at(
                        self.header_field_span(id, "host"),
                        format!("there is no hosts/{host}.toml"),
                    )
                    .help_opt(did_you_mean(host, self.repo.names(DocKind::Host))),
            );
        }
        let overlays = self.overlays(id, &mut diagnostics);
        let environments: Vec<String> = overlays.iter().map(|(name, _)| name.clone()).collect();
        if let Some(env) = env
            && !environments.iter().any(|e| e == env)
        {
            diagnostics.push(
                Diagnostic::error(
                    "unknown-env",
                    format!("stack `{}` has no environment `{env}`", document.name),
                )
                .at(
                    document.header_span(),
                    if environments.is_empty() {
                        "this stack defines no [env.NAME] overlays".to_owned()
                    } else {
                        format!("environments: {}", environments.join(", "))
                    },
                )
                .help_opt(did_you_mean(env, environments.iter().map(String::as_str)))
                .note("an environment is an `[env.NAME]` table in the stack file"),
            );
            return Err(diagnostics);
        }
        let base = document.section("services").map(|e| &e.value);
        let make = |env_name: Option<&str>, diagnostics: &mut Vec<Diagnostic>| {
            let overlay = env_name.and_then(|name| {
                overlays
                    .iter()
                    .find(|(n, _)| n == name)
                    .and_then(|(_, node)| *node)
            });
            let services = self.merge_services(id, base, overlay, diagnostics);
            let mut spans = HashMap::new();
            if let (Some(name), Some(node)) = (env_name, overlay) {
                collect_spans(node, name, &mut spans);
            }
            crate::stack::build(
                crate::stack::Header {
                    name: document.name.clone(),
                    file: self.repo.sources.path(document.source).to_owned(),
                    description: field_str(&header, "description").map(str::to_owned),
                    host: host.clone(),
                    targets: field_strings(&header, "targets"),
                    settings: settings(&header, &document.name),
                    modules: self.names(&self.repo.imports.closure(id)),
                    env: env_name.map(str::to_owned),
                    environments: environments.clone(),
                },
                &services,
                &self.repo.sources,
                spans,
                diagnostics,
            )
        };
        let mut found = Vec::new();
        let mut wanted = make(None, &mut found);
        for name in &environments {
            let mut in_env = Vec::new();
            let stack = make(Some(name), &mut in_env);
            if env == Some(name.as_str()) {
                wanted = stack;
            }
            found.extend(in_env);
        }
        for diagnostic in found {
            if !diagnostics.contains(&diagnostic) {
                diagnostics.push(diagnostic);
            }
        }
        if diagnostics.is_empty() {
            Ok(wanted)
        } else {
            Err(diagnostics)
        }
    }

    /// `[env.NAME]` tables in file order of names: each name with its
    /// `services` overlay (if any). Reports misshapen tables.
    fn overlays<'a>(
        &'a self,
        id: DocId,
        diagnostics: &mut Vec<Diagnostic>,
    ) -> Vec<(String, Option<&'a Node>)> {
        let Some(entry) = self.repo.document(id).section("env") else {
            return Vec::new();
        };
        let Some(table) = entry.value.as_table() else {
            diagnostics.push(
                Diagnostic::error("type-mismatch", "`env` must be a table of environments")
                    .at(
                        entry.value.span,
                        format!("expected a table, found {}", entry.value.type_name()),
                    )
                    .help("write each environment as `[env.NAME.services.SERVICE]`"),
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for environment in &table.entries {
            let name = &environment.key;
            if !is_dns_label(name) {
                diagnostics.push(
                    Diagnostic::error(
                        "invalid-value",
                        format!("invalid environment name `{name}`"),
                    )
                    .at(environment.key_span, "environment names are DNS labels")
                    .help("use lowercase letters, digits and `-` (dev, staging, prod)"),
                );
                continue;
            }
            let Some(inner) = environment.value.as_table() else {
                diagnostics.push(
                    Diagnostic::error("type-mismatch", format!("`env.{name}` must be a table"))
                        .at(
                            environment.value.span,
                            format!("expected a table, found {}", environment.value.type_name()),
                        )
                        .help(format!("write `[env.{name}.services.SERVICE]` tables")),
                );
                continue;
            };
            for key in &inner.entries {
                if !ENV_KEYS.contains(&key.key.as_str()) {
                    diagnostics.push(
                        Diagnostic::error(
                            "unknown-option",
                            format!("unknown key `{}` in `env.{name}`", key.key),
                        )
                        .at(key.key_span, "an environment overlays services only")
                        .help_opt(did_you_mean(&key.key, ENV_KEYS))
                        .note(format!(
                            "write `[env.{name}.services.SERVICE]` with the fields that differ"
                        )),
                    );
                }
            }
            out.push((name.clone(), inner.get("services").map(|e| &e.value)));
        }
        out
    }

    /// The `services` option merged from the base and an overlay.
    fn merge_services(
        &self,
        id: DocId,
        base: Option<&Node>,
        overlay: Option<&Node>,
        diagnostics: &mut Vec<Diagnostic>,
    ) -> Value {
        let origin = self.repo.document(id).header_span();
        let empty = Value::new(ValueKind::Map(Default::default()), origin);
        let Some(OptNode::Option(decl)) = self.stack_options.lookup("services") else {
            return empty;
        };
        let mut defs: Vec<Def<'_>> = decl
            .default
            .iter()
            .map(|node| Def {
                priority: Priority::Declared,
                node,
            })
            .collect();
        defs.extend(base.map(|node| Def {
            priority: Priority::Config,
            node,
        }));
        defs.extend(overlay.map(|node| Def {
            priority: Priority::Force,
            node,
        }));
        let merged = merge(
            &decl.ty,
            &OptionPath::Root("services"),
            &defs,
            origin,
            diagnostics,
        );
        let mut root = Value::new(ValueKind::Map(Default::default()), origin);
        root.insert_path("services", merged.unwrap_or(empty));
        super::interpolate::interpolate(&mut root, diagnostics);
        root.get_path(&["services"])
            .cloned()
            .unwrap_or_else(|| Value::new(ValueKind::Map(Default::default()), origin))
    }
}

/// The `[stack]` table's render settings, each defaulted when unset.
fn settings(header: &Value, name: &str) -> crate::stack::model::Settings {
    use crate::stack::model::{
        BackupOperator, ComposeSettings, IngressKind, K8sSettings, Settings,
    };
    let text = |path: &[&str], default: &str| -> String {
        match header.get_path(path).map(|v| &v.kind) {
            Some(ValueKind::Str(s)) => s.clone(),
            _ => default.to_owned(),
        }
    };
    Settings {
        namespace: text(&["namespace"], name),
        k8s: K8sSettings {
            backup: if text(&["k8s", "backup"], "k8up") == "velero" {
                BackupOperator::Velero
            } else {
                BackupOperator::K8up
            },
            ingress: if text(&["k8s", "ingress"], "ingressroute") == "ingress" {
                IngressKind::Ingress
            } else {
                IngressKind::Ingressroute
            },
            ingress_class: text(&["k8s", "ingress_class"], "traefik"),
            secret_store: text(&["k8s", "secret_store"], "vault"),
            proxy_namespace: text(&["k8s", "proxy_namespace"], "traefik"),
            monitoring_namespace: text(&["k8s", "monitoring_namespace"], "monitoring"),
            forward_auth: text(&["k8s", "forward_auth"], crate::stack::model::FORWARD_AUTH),
        },
        compose: ComposeSettings {
            proxy_network: text(&["compose", "proxy_network"], "kiln-proxy"),
            monitoring_network: text(&["compose", "monitoring_network"], "kiln-monitoring"),
            backup_image: text(
                &["compose", "backup_image"],
                crate::stack::model::BACKUP_IMAGE,
            ),
        },
    }
}

/// The span of every node under an overlay, for provenance.
fn collect_spans(node: &Node, env: &str, spans: &mut HashMap<Span, String>) {
    spans.insert(node.span, env.to_owned());
    match &node.kind {
        NodeKind::Table(table) => {
            for entry in &table.entries {
                collect_spans(&entry.value, env, spans);
            }
        }
        NodeKind::Array(items) => {
            for item in items {
                collect_spans(item, env, spans);
            }
        }
        _ => {}
    }
}
