//! Checks across the fields and services of a stack: what the option
//! types alone cannot see (a dependency on an unknown service, a cycle, a
//! stateful volume without a size, a cron job without a schedule, …).

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use crate::config::Span;
use crate::config::diagnostic::Diagnostic;
use crate::lock::oci::Reference;
use crate::suggest::did_you_mean;

use super::read::{Draft, Kind, Spanned};

/// Every problem in the drafts of one stack (base or one environment).
pub fn check(drafts: &[Draft], diagnostics: &mut Vec<Diagnostic>) {
    let names: BTreeMap<&str, &Draft> = drafts.iter().map(|d| (d.name.as_str(), d)).collect();
    for draft in drafts {
        check_service(draft, diagnostics);
        check_dependencies(draft, &names, diagnostics);
    }
    check_cycles(drafts, &names, diagnostics);
    check_unique(drafts, diagnostics);
}

fn check_service(draft: &Draft, diagnostics: &mut Vec<Diagnostic>) {
    let name = &draft.name;
    if !is_dns_label(name) {
        diagnostics.push(
            Diagnostic::error("invalid-value", format!("invalid service name `{name}`"))
                .at(draft.span, "service names become DNS names and label values")
                .help("use lowercase letters, digits and `-`, at most 63 characters, starting and ending with a letter or digit"),
        );
    }
    check_image(draft, diagnostics);
    let (kind, kind_span) = draft.kind;
    match (&draft.schedule, kind) {
        (None, Kind::Cronjob) => diagnostics.push(
            Diagnostic::error(
                "missing-field",
                format!("cron job `{name}` has no schedule"),
            )
            .at(kind_span, "a `cronjob` runs on a schedule")
            .help("add `schedule = \"0 3 * * *\"` (minute hour day-of-month month day-of-week)"),
        ),
        (Some((_, span)), Kind::Service | Kind::Stateful) => diagnostics.push(
            Diagnostic::error(
                "invalid-value",
                format!("`services.{name}.schedule` is set, but `{name}` is not a cron job"),
            )
            .at(*span, "only a `cronjob` has a schedule")
            .help("add `kind = \"cronjob\"`, or remove the schedule"),
        ),
        (Some((schedule, span)), Kind::Cronjob) => check_cron(schedule, *span, diagnostics),
        (None, _) => {}
    }
    for (volume_name, volume) in &draft.volumes {
        if kind == Kind::Stateful && volume.size.is_none() {
            diagnostics.push(
                Diagnostic::error(
                    "missing-field",
                    format!("volume `{volume_name}` of stateful service `{name}` has no size"),
                )
                .at(
                    volume.span,
                    "a stateful service claims a volume of a fixed size per replica",
                )
                .help("add `size = \"10GiB\"` to the volume"),
            );
        }
        if let Some((schedule, span)) = &volume.schedule {
            if volume.backup == Some(false) || draft.backup.is_some_and(|(b, _)| !b) {
                diagnostics.push(
                    Diagnostic::error(
                        "invalid-value",
                        format!(
                            "volume `{volume_name}` of `{name}` has a backup schedule but no backup"
                        ),
                    )
                    .at(*span, "a schedule for a backup that is switched off")
                    .help("remove `backup_schedule`, or `backup = false`"),
                );
            } else {
                check_cron(schedule, *span, diagnostics);
            }
        }
    }
    let mut port_reference = |what: &str, reference: &Option<Spanned<String>>| {
        if let Some((port, span)) = reference
            && !draft.ports.contains_key(port)
        {
            diagnostics.push(
                Diagnostic::error(
                    "unknown-port",
                    format!("`{name}` has no port named `{port}`"),
                )
                .at(*span, format!("the {what} names a port of the service"))
                .help_opt(did_you_mean(port, draft.ports.keys().map(String::as_str)))
                .note(if draft.ports.is_empty() {
                    format!("`{name}` declares no ports: add `[services.{name}.ports.{port}]` with `port = …`")
                } else {
                    format!("ports: {}", draft.ports.keys().cloned().collect::<Vec<_>>().join(", "))
                }),
            );
        }
    };
    if let Some(metrics) = &draft.metrics {
        port_reference("metrics", &Some(metrics.port.clone()));
    }
    if let Some(expose) = &draft.expose {
        port_reference("exposure", &expose.port);
    }
    if let Some(health) = &draft.health {
        port_reference("health check", &health.port);
    }
    if let Some(expose) = &draft.expose {
        if kind == Kind::Cronjob {
            diagnostics.push(
                Diagnostic::error(
                    "invalid-value",
                    format!("cron job `{name}` cannot be exposed"),
                )
                .at(expose.span, "a cron job serves no traffic")
                .help("remove `expose`, or make it a `service`"),
            );
        } else if expose.port.is_none() && draft.ports.len() != 1 {
            diagnostics.push(
                Diagnostic::error(
                    "missing-field",
                    format!("which port of `{name}` does the proxy route to?"),
                )
                .at(
                    expose.span,
                    if draft.ports.is_empty() {
                        "the service declares no ports".to_owned()
                    } else {
                        format!("it has {} ports", draft.ports.len())
                    },
                )
                .help(if draft.ports.is_empty() {
                    format!("declare the port: `[services.{name}.ports.http]` with `port = …`")
                } else {
                    "name one: `port = \"http\"`".to_owned()
                }),
            );
        }
    }
    if let Some(health) = &draft.health {
        match health.kind.as_str() {
            "http" if health.path.is_none() => diagnostics.push(
                Diagnostic::error(
                    "missing-field",
                    format!("the HTTP health check of `{name}` has no path"),
                )
                .at(health.span, "an `http` check GETs a path")
                .help("add `path = \"/healthz\"` (or use `type = \"tcp\"`)"),
            ),
            "exec" if health.command.is_empty() => diagnostics.push(
                Diagnostic::error(
                    "missing-field",
                    format!("the exec health check of `{name}` has no command"),
                )
                .at(health.span, "an `exec` check runs a command")
                .help("add `command = [\"pg_isready\", \"-U\", \"postgres\"]`"),
            ),
            "http" | "tcp" if health.port.is_none() && draft.ports.is_empty() => diagnostics.push(
                Diagnostic::error(
                    "missing-field",
                    format!("the health check of `{name}` has no port to probe"),
                )
                .at(health.span, "the service declares no ports")
                .help("declare a port, or use `type = \"exec\"`"),
            ),
            _ => {}
        }
    }
    if let Some((true, span)) = draft.monitoring
        && draft.metrics.is_none()
    {
        diagnostics.push(
            Diagnostic::error(
                "missing-field",
                format!("`{name}` is monitored but has no metrics endpoint"),
            )
            .at(span, "monitoring scrapes `metrics`")
            .help(format!(
                "add `[services.{name}.metrics]` with `port = \"…\"` (a port name)"
            )),
        );
    }
    check_strategy(draft, diagnostics);
    let resources = &draft.resources;
    for (what, request, limit) in [
        (
            "CPU",
            resources.cpu.map(u64::from),
            resources.cpu_limit.map(u64::from),
        ),
        ("memory", resources.memory, resources.memory_limit),
    ] {
        if let (Some(request), Some(limit)) = (request, limit)
            && limit < request
        {
            diagnostics.push(
                Diagnostic::error(
                    "invalid-value",
                    format!("the {what} limit of `{name}` is below its request"),
                )
                .at(
                    draft.span,
                    format!("{what}: request {request}, limit {limit}"),
                )
                .help("a limit is at least the request"),
            );
        }
    }
}

fn check_image(draft: &Draft, diagnostics: &mut Vec<Diagnostic>) {
    let (image, span) = &draft.image;
    match Reference::from_str(image) {
        Err(error) => diagnostics.push(
            Diagnostic::error(
                "invalid-value",
                format!("invalid image reference `{image}`"),
            )
            .at(*span, error.to_string())
            .help("write `NAME:TAG` (`traefik:v3.1`, `ghcr.io/org/app:1.2.3`)"),
        ),
        Ok(reference) if reference.digest.is_some() => diagnostics.push(
            Diagnostic::error(
                "image-digest",
                format!("`{image}` pins a digest in the stack"),
            )
            .at(*span, "the digest belongs in lockfile.toml")
            .help("write the tag only (`NAME:TAG`); `kiln lock` pins its digest"),
        ),
        Ok(_) if !image.rsplit('/').next().unwrap_or("").contains(':') => diagnostics.push(
            Diagnostic::error("invalid-value", format!("image `{image}` has no tag"))
                .at(*span, "an image without a tag means `latest`, which moves")
                .help(format!("name a release: `{image}:1.2.3`")),
        ),
        Ok(_) => {}
    }
}

fn check_strategy(draft: &Draft, diagnostics: &mut Vec<Diagnostic>) {
    let Some(strategy) = &draft.strategy else {
        return;
    };
    let name = &draft.name;
    let (kind, _) = draft.kind;
    if kind == Kind::Cronjob {
        diagnostics.push(
            Diagnostic::error(
                "invalid-value",
                format!("cron job `{name}` has a deployment strategy"),
            )
            .at(strategy.span, "a cron job is not rolled out")
            .help("remove `strategy`"),
        );
        return;
    }
    if kind == Kind::Stateful && strategy.kind != "rolling" {
        diagnostics.push(
            Diagnostic::error(
                "invalid-value",
                format!(
                    "stateful service `{name}` cannot use a {} strategy",
                    strategy.kind
                ),
            )
            .at(strategy.span, "two versions would share the same volumes")
            .help("stateful services roll: remove `strategy` or set `type = \"rolling\"`"),
        );
    }
    let (steps, steps_span) = &strategy.steps;
    if strategy.kind != "canary" && !steps.is_empty() {
        diagnostics.push(
            Diagnostic::error(
                "invalid-value",
                format!(
                    "`steps` only applies to a canary (`{name}` uses {})",
                    strategy.kind
                ),
            )
            .at(*steps_span, "canary traffic weights")
            .help("remove `steps`, or set `type = \"canary\"`"),
        );
    }
    if strategy.kind == "canary"
        && !steps.is_empty()
        && (steps.windows(2).any(|w| w[0] >= w[1]) || steps.last() != Some(&100))
    {
        diagnostics.push(
            Diagnostic::error(
                "invalid-value",
                format!("invalid canary steps for `{name}`"),
            )
            .at(*steps_span, "weights must increase and end at 100")
            .help("for example: steps = [10, 50, 100]"),
        );
    }
}

fn check_cron(schedule: &str, span: Span, diagnostics: &mut Vec<Diagnostic>) {
    const MACROS: [&str; 7] = [
        "@yearly",
        "@annually",
        "@monthly",
        "@weekly",
        "@daily",
        "@midnight",
        "@hourly",
    ];
    let fields: Vec<&str> = schedule.split_whitespace().collect();
    let field_ok = |f: &str| {
        f.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '*' | ',' | '-' | '/'))
    };
    let ok = MACROS.contains(&schedule.trim())
        || (fields.len() == 5 && fields.iter().all(|f| field_ok(f)));
    if !ok {
        diagnostics.push(
            Diagnostic::error(
                "invalid-value",
                format!("invalid cron schedule `{schedule}`"),
            )
            .at(
                span,
                "expected five fields: minute hour day-of-month month day-of-week",
            )
            .help("for example \"0 3 * * *\" (daily at 03:00), or a macro such as \"@daily\""),
        );
    }
}

fn check_dependencies(
    draft: &Draft,
    names: &BTreeMap<&str, &Draft>,
    diagnostics: &mut Vec<Diagnostic>,
) {
    for (dependency, span) in &draft.depends_on {
        if *dependency == draft.name {
            diagnostics.push(
                Diagnostic::error(
                    "dependency-cycle",
                    format!("`{}` depends on itself", draft.name),
                )
                .at(*span, "a service cannot depend on itself")
                .help("remove it from `depends_on`"),
            );
        } else if !names.contains_key(dependency.as_str()) {
            diagnostics.push(
                Diagnostic::error(
                    "unknown-service",
                    format!("`{}` depends on unknown service `{dependency}`", draft.name),
                )
                .at(*span, "no such service in this stack")
                .help_opt(did_you_mean(dependency, names.keys().copied()))
                .note(format!(
                    "services: {}",
                    names.keys().copied().collect::<Vec<_>>().join(", ")
                )),
            );
        }
    }
}

/// Report each dependency cycle once, at the edge that closes it. A
/// depth-first search that never re-enters a finished service: linear in
/// the number of edges, whatever the graph.
fn check_cycles(
    drafts: &[Draft],
    names: &BTreeMap<&str, &Draft>,
    diagnostics: &mut Vec<Diagnostic>,
) {
    let mut reported: BTreeSet<Vec<String>> = BTreeSet::new();
    let mut done: BTreeSet<&str> = BTreeSet::new();
    for draft in drafts {
        if !done.contains(draft.name.as_str()) {
            let mut path = vec![draft.name.as_str()];
            find_cycles(&mut path, names, &mut done, &mut reported, diagnostics);
        }
    }
}

fn find_cycles<'a>(
    path: &mut Vec<&'a str>,
    names: &BTreeMap<&str, &'a Draft>,
    done: &mut BTreeSet<&'a str>,
    reported: &mut BTreeSet<Vec<String>>,
    diagnostics: &mut Vec<Diagnostic>,
) {
    let Some(&current) = path.last() else {
        return;
    };
    let Some(draft) = names.get(current) else {
        return;
    };
    for (dependency, span) in &draft.depends_on {
        let Some(next) = names.get(dependency.as_str()) else {
            continue; // reported as unknown
        };
        let next = next.name.as_str();
        if next == current || done.contains(next) {
            continue; // a self-dependency is reported on its own
        }
        if let Some(start) = path.iter().position(|n| *n == next) {
            let chain = path[start..]
                .iter()
                .chain(std::iter::once(&next))
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(" → ");
            let mut members: Vec<String> = path[start..].iter().map(|n| (*n).to_owned()).collect();
            members.sort();
            if reported.insert(members) {
                diagnostics.push(
                    Diagnostic::error("dependency-cycle", format!("dependency cycle: {chain}"))
                        .at(*span, "this dependency closes the cycle")
                        .help("services start in dependency order; one of these must not depend on the next"),
                );
            }
            continue;
        }
        path.push(next);
        find_cycles(path, names, done, reported, diagnostics);
        path.pop();
    }
    done.insert(current);
}

/// Published host ports and exposed host names are shared resources.
fn check_unique(drafts: &[Draft], diagnostics: &mut Vec<Diagnostic>) {
    let mut published: BTreeMap<(u16, &str), (&str, Span)> = BTreeMap::new();
    let mut hostnames: BTreeMap<&str, (&str, Span)> = BTreeMap::new();
    for draft in drafts {
        for (port, span) in draft.ports.values() {
            let Some(host_port) = port.published else {
                continue;
            };
            let protocol = match port.protocol {
                super::model::Protocol::Tcp => "tcp",
                super::model::Protocol::Udp => "udp",
            };
            if let Some((other, other_span)) = published.get(&(host_port, protocol)) {
                diagnostics.push(
                    Diagnostic::error("duplicate-port", format!("host port {host_port}/{protocol} is published by both `{other}` and `{}`", draft.name))
                        .at(*span, format!("`{}` publishes {host_port}", draft.name))
                        .also(*other_span, format!("`{other}` publishes {host_port}"))
                        .help("publish one of them on another host port, or route it through the proxy with `expose`"),
                );
            } else {
                published.insert((host_port, protocol), (&draft.name, *span));
            }
        }
        if let Some(expose) = &draft.expose {
            let (hostname, span) = &expose.hostname;
            if let Some((other, other_span)) = hostnames.get(hostname.as_str()) {
                diagnostics.push(
                    Diagnostic::error(
                        "duplicate-hostname",
                        format!(
                            "`{hostname}` is exposed by both `{other}` and `{}`",
                            draft.name
                        ),
                    )
                    .at(*span, format!("`{}` routes it", draft.name))
                    .also(*other_span, format!("`{other}` routes it"))
                    .help("give each exposed service its own host name"),
                );
            } else {
                hostnames.insert(hostname, (&draft.name, *span));
            }
        }
    }
}

/// A DNS label (RFC 1123): what Kubernetes and compose accept as a name.
pub fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first() != Some(&b'-')
        && bytes.last() != Some(&b'-')
}
