//! From the merged option tree of a stack to service drafts: every value
//! as written (or as its declared default), with its span, recording where
//! each came from. The defaults pass completes a draft into a
//! [`Service`](super::model::Service).

use std::collections::{BTreeMap, HashMap};

use crate::config::node::quote_key;
use crate::config::{Sources, Span};
use crate::eval::value::{Value, ValueKind};

use super::model::{Auth, Mount, Port, Protocol, Role};

/// A value and where it was written.
pub type Spanned<T> = (T, Span);

/// Records where each value of the model came from.
pub struct Provenance<'a> {
    pub sources: &'a Sources,
    /// The span of every value written under `[env.NAME]`, with the
    /// environment's name, to tell overlay values from base values.
    pub overlays: HashMap<Span, String>,
    pub entries: BTreeMap<String, String>,
    pub spans: BTreeMap<String, Span>,
}

impl Provenance<'_> {
    /// A value written in a file (or a declared default, in kiln's schema).
    pub fn written(&mut self, path: &str, span: Span) {
        let text = if self.sources.path(span.source).starts_with("<built-in>") {
            format!(
                "default: the option's declared default ({})",
                schema_path(path)
            )
        } else {
            let mut location = self.sources.location(span);
            if let Some(env) = self.overlays.get(&span) {
                location.push_str(&format!(" (env {env})"));
            }
            location
        };
        self.entries.insert(path.to_owned(), text);
        self.spans.insert(path.to_owned(), span);
    }

    /// Forget what was recorded at and under `path` (a value that an
    /// opt-out replaces as a whole).
    pub fn remove_under(&mut self, path: &str) {
        let nested = format!("{path}.");
        self.entries
            .retain(|key, _| key != path && !key.starts_with(&nested));
        self.spans
            .retain(|key, _| key != path && !key.starts_with(&nested));
    }

    /// A value the defaults pass chose, and why.
    pub fn defaulted(&mut self, path: &str, reason: &str) {
        self.entries.insert(
            path.to_owned(),
            format!("default: kiln stack defaults ({reason})"),
        );
    }
}

/// `services.web.ports.http.protocol` → `services.<name>.ports.<name>.protocol`.
fn schema_path(path: &str) -> String {
    let parts: Vec<&str> = path.split('.').collect();
    let mut out = Vec::new();
    let mut index = 0;
    while index < parts.len() {
        out.push(parts[index]);
        let part = parts[index];
        if matches!(part, "services" | "ports" | "volumes") && index + 1 < parts.len() {
            out.push("<name>");
            index += 1;
        }
        index += 1;
    }
    out.join(".")
}

/// A path in the model, with keys quoted where they need it.
pub fn join(prefix: &str, key: &str) -> String {
    format!("{prefix}.{}", quote_key(key))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Service,
    Stateful,
    Cronjob,
}

/// A service as written, before defaults.
pub struct Draft {
    pub name: String,
    /// The service's table.
    pub span: Span,
    pub image: Spanned<String>,
    pub kind: Spanned<Kind>,
    pub role: Role,
    pub schedule: Option<Spanned<String>>,
    pub component: Option<Spanned<String>>,
    pub command: Vec<String>,
    pub env: BTreeMap<String, Spanned<String>>,
    pub secrets: BTreeMap<String, String>,
    pub ports: BTreeMap<String, Spanned<Port>>,
    pub volumes: BTreeMap<String, VolumeDraft>,
    pub mounts: BTreeMap<String, Mount>,
    pub backup: Option<Spanned<bool>>,
    pub health: Option<HealthDraft>,
    pub resources: ResourcesDraft,
    pub replicas: Spanned<u32>,
    pub depends_on: Vec<Spanned<String>>,
    pub expose: Option<ExposeDraft>,
    pub metrics: Option<MetricsDraft>,
    pub monitoring: Option<Spanned<bool>>,
    pub network_policy: Option<bool>,
    pub internet: bool,
    pub labels: BTreeMap<String, String>,
    pub strategy: Option<StrategyDraft>,
}

pub struct VolumeDraft {
    pub span: Span,
    pub path: String,
    pub size: Option<u64>,
    pub backup: Option<bool>,
    pub schedule: Option<Spanned<String>>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
}

pub struct HealthDraft {
    pub span: Span,
    pub kind: String,
    /// Where `type` is written (an opt-out's provenance).
    pub span_of_type: Option<Span>,
    pub port: Option<Spanned<String>>,
    pub path: Option<String>,
    pub command: Vec<String>,
    pub interval: u64,
    pub timeout: u64,
    pub retries: u32,
    pub start_period: u64,
}

#[derive(Default)]
pub struct ResourcesDraft {
    pub cpu: Option<u32>,
    pub memory: Option<u64>,
    pub cpu_limit: Option<u32>,
    pub memory_limit: Option<u64>,
}

pub struct ExposeDraft {
    pub span: Span,
    pub hostname: Spanned<String>,
    pub port: Option<Spanned<String>>,
    pub tls: bool,
    pub auth: Auth,
}

pub struct MetricsDraft {
    pub port: Spanned<String>,
    pub path: String,
    pub interval: u64,
}

pub struct StrategyDraft {
    pub span: Span,
    pub kind: String,
    pub steps: Spanned<Vec<u8>>,
}

/// The value at `key`, if set (unset and already-reported invalid values
/// are `None`).
fn get<'v>(value: &'v Value, key: &str) -> Option<&'v Value> {
    match &value.get_path(&[key])?.kind {
        ValueKind::Null | ValueKind::Invalid => None,
        _ => value.get_path(&[key]),
    }
}

fn as_str(value: &Value) -> Option<&str> {
    match &value.kind {
        ValueKind::Str(s) | ValueKind::Secret(s) | ValueKind::Template { raw: s, .. } => Some(s),
        _ => None,
    }
}

fn as_int(value: &Value) -> Option<i64> {
    match value.kind {
        ValueKind::Int(i) => Some(i),
        _ => None,
    }
}

fn as_bool(value: &Value) -> Option<bool> {
    match value.kind {
        ValueKind::Bool(b) => Some(b),
        _ => None,
    }
}

fn entries(value: Option<&Value>) -> impl Iterator<Item = (&String, &Value)> {
    let map = match value.map(|v| &v.kind) {
        Some(ValueKind::Map(map)) => Some(map),
        _ => None,
    };
    map.into_iter().flat_map(|m| m.iter())
}

fn items(value: Option<&Value>) -> &[Value] {
    match value.map(|v| &v.kind) {
        Some(ValueKind::List(items)) => items,
        _ => &[],
    }
}

/// Reads the fields of one record value, recording provenance.
struct Fields<'v, 'p, 's> {
    value: &'v Value,
    path: String,
    provenance: &'p mut Provenance<'s>,
}

impl<'v, 's> Fields<'v, '_, 's> {
    fn at(&mut self, key: &str) -> Option<&'v Value> {
        let found = get(self.value, key)?;
        self.provenance
            .written(&join(&self.path, key), found.origin);
        Some(found)
    }

    /// Like [`at`](Self::at), recorded under the model's name for it.
    fn at_as(&mut self, key: &str, recorded: &str) -> Option<&'v Value> {
        let found = get(self.value, key)?;
        self.provenance
            .written(&format!("{}.{recorded}", self.path), found.origin);
        Some(found)
    }

    fn string(&mut self, key: &str) -> Option<Spanned<String>> {
        let found = self.at(key)?;
        Some((as_str(found)?.to_owned(), found.origin))
    }

    fn int(&mut self, key: &str) -> Option<Spanned<i64>> {
        let found = self.at(key)?;
        Some((as_int(found)?, found.origin))
    }

    fn uint<T: TryFrom<i64>>(&mut self, key: &str) -> Option<T> {
        self.int(key).and_then(|(i, _)| T::try_from(i).ok())
    }

    fn bool(&mut self, key: &str) -> Option<Spanned<bool>> {
        let found = self.at(key)?;
        Some((as_bool(found)?, found.origin))
    }

    /// A list of strings, recorded as one value.
    fn strings(&mut self, key: &str) -> Vec<Spanned<String>> {
        let list = get(self.value, key);
        if list.is_some_and(|l| !items(Some(l)).is_empty()) {
            self.at(key);
        }
        items(list)
            .iter()
            .filter_map(|v| Some((as_str(v)?.to_owned(), v.origin)))
            .collect()
    }

    /// A map of strings, each entry recorded.
    fn string_map(&mut self, key: &str) -> BTreeMap<String, Spanned<String>> {
        let path = join(&self.path, key);
        let mut out = BTreeMap::new();
        for (name, value) in entries(get(self.value, key)) {
            if let Some(text) = as_str(value) {
                self.provenance.written(&join(&path, name), value.origin);
                out.insert(name.clone(), (text.to_owned(), value.origin));
            }
        }
        out
    }

    fn sub(&mut self, key: &str) -> Option<Fields<'v, '_, 's>> {
        let value = get(self.value, key)?;
        Some(Fields {
            value,
            path: join(&self.path, key),
            provenance: &mut *self.provenance,
        })
    }
}

/// Millicores from `250m`, `0.5` or `2` (already checked by the pattern).
pub fn millicores(text: &str) -> Option<u32> {
    if let Some(millis) = text.strip_suffix('m') {
        return millis.parse().ok();
    }
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let whole: u32 = whole.parse().ok()?;
    let fraction: u32 = if fraction.is_empty() {
        0
    } else {
        format!("{fraction:0<3}").parse().ok()?
    };
    whole.checked_mul(1000)?.checked_add(fraction)
}

/// Read every service of the merged `services` value.
pub fn drafts(services: &Value, provenance: &mut Provenance<'_>) -> Vec<Draft> {
    let mut out = Vec::new();
    for (name, value) in entries(Some(services)) {
        let mut fields = Fields {
            value,
            path: join("services", name),
            provenance,
        };
        let Some(image) = fields.string("image") else {
            // Missing or invalid: already reported by the type check.
            continue;
        };
        let kind = match fields.string("kind") {
            Some((k, span)) if k == "stateful" => (Kind::Stateful, span),
            Some((k, span)) if k == "cronjob" => (Kind::Cronjob, span),
            Some((_, span)) => (Kind::Service, span),
            None => (Kind::Service, value.origin),
        };
        let role = match fields.string("role") {
            Some((r, _)) if r == "proxy" => Role::Proxy,
            Some((r, _)) if r == "monitoring" => Role::Monitoring,
            _ => Role::App,
        };
        let schedule = fields.string("schedule");
        // Recorded as the `app.kubernetes.io/component` label it sets.
        let component =
            get(value, "component").and_then(|c| Some((as_str(c)?.to_owned(), c.origin)));
        let command = fields
            .strings("command")
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        let env = fields.string_map("env");
        let secrets = fields
            .string_map("secrets")
            .into_iter()
            .map(|(k, (v, _))| (k, v))
            .collect();
        let ports = read_ports(&mut fields);
        let volumes = read_volumes(&mut fields);
        let mounts = read_mounts(&mut fields);
        // An opt-out switch, not a model field: the defaults pass records
        // it against each volume's `backup`.
        let backup = get(value, "backup").and_then(|b| Some((as_bool(b)?, b.origin)));
        let health = fields.sub("health").map(|mut h| {
            let kind = h.string("type");
            HealthDraft {
                span: h.value.origin,
                span_of_type: kind.as_ref().map(|(_, span)| *span),
                kind: kind.map_or_else(|| "tcp".to_owned(), |(t, _)| t),
                port: h.string("port"),
                path: h.string("path").map(|(p, _)| p),
                command: h.strings("command").into_iter().map(|(s, _)| s).collect(),
                interval: h.uint("interval").unwrap_or(30),
                timeout: h.uint("timeout").unwrap_or(5),
                retries: h.uint("retries").unwrap_or(3),
                start_period: h.uint("start_period").unwrap_or(0),
            }
        });
        let resources = fields
            .sub("resources")
            .map_or_else(ResourcesDraft::default, |mut r| ResourcesDraft {
                cpu: r.string("cpu").and_then(|(c, _)| millicores(&c)),
                memory: r.uint("memory"),
                cpu_limit: r.string("cpu_limit").and_then(|(c, _)| millicores(&c)),
                memory_limit: r.uint("memory_limit"),
            });
        let replicas = fields
            .int("replicas")
            .and_then(|(r, span)| Some((u32::try_from(r).ok()?, span)))
            .unwrap_or((1, value.origin));
        let depends_on = fields.strings("depends_on");
        let expose = fields.sub("expose").and_then(|mut e| {
            Some(ExposeDraft {
                span: e.value.origin,
                hostname: e.string("hostname")?,
                port: e.string("port"),
                tls: e.bool("tls").is_none_or(|(t, _)| t),
                auth: match e.string("auth") {
                    Some((a, _)) if a == "authentik" => Auth::Authentik,
                    _ => Auth::None,
                },
            })
        });
        let metrics = fields.sub("metrics").and_then(|mut m| {
            Some(MetricsDraft {
                port: m.string("port")?,
                path: m
                    .string("path")
                    .map_or_else(|| "/metrics".to_owned(), |(p, _)| p),
                interval: m.uint("interval").unwrap_or(30),
            })
        });
        let monitoring = fields.bool("monitoring");
        let network_policy = fields.bool("network_policy").map(|(b, _)| b);
        let internet = fields.bool("internet").is_some_and(|(b, _)| b);
        let labels = fields
            .string_map("labels")
            .into_iter()
            .map(|(k, (v, _))| (k, v))
            .collect();
        let strategy = fields.sub("strategy").map(|mut s| {
            let span = s.value.origin;
            let kind = s
                .string("type")
                .map_or_else(|| "rolling".to_owned(), |(t, _)| t);
            let steps_value = get(s.value, "steps");
            let steps: Vec<u8> = items(steps_value)
                .iter()
                .filter_map(|v| u8::try_from(as_int(v)?).ok())
                .collect();
            if !steps.is_empty() {
                s.at("steps");
            }
            StrategyDraft {
                span,
                kind,
                steps: (steps, steps_value.map_or(span, |v| v.origin)),
            }
        });
        out.push(Draft {
            name: name.clone(),
            span: value.origin,
            image,
            kind,
            role,
            schedule,
            component,
            command,
            env,
            secrets,
            ports,
            volumes,
            mounts,
            backup,
            health,
            resources,
            replicas,
            depends_on,
            expose,
            metrics,
            monitoring,
            network_policy,
            internet,
            labels,
            strategy,
        });
    }
    out
}

fn read_ports(fields: &mut Fields<'_, '_, '_>) -> BTreeMap<String, Spanned<Port>> {
    let mut out = BTreeMap::new();
    let Some(mut ports) = fields.sub("ports") else {
        return out;
    };
    let value = ports.value;
    for (name, _) in entries(Some(value)) {
        let Some(mut port) = ports.sub(name) else {
            continue;
        };
        let span = port.value.origin;
        let Some(number) = port.uint("port") else {
            continue;
        };
        let published = port.uint("published");
        let protocol = match port.string("protocol") {
            Some((p, _)) if p == "udp" => Protocol::Udp,
            _ => Protocol::Tcp,
        };
        out.insert(
            name.clone(),
            (
                Port {
                    port: number,
                    published,
                    protocol,
                },
                span,
            ),
        );
    }
    out
}

fn read_mounts(fields: &mut Fields<'_, '_, '_>) -> BTreeMap<String, Mount> {
    let mut out = BTreeMap::new();
    let Some(mut mounts) = fields.sub("mounts") else {
        return out;
    };
    let value = mounts.value;
    for (name, _) in entries(Some(value)) {
        let Some(mut mount) = mounts.sub(name) else {
            continue;
        };
        let (Some((host, _)), Some((path, _))) = (mount.string("host"), mount.string("path"))
        else {
            continue;
        };
        let read_only = mount.bool("read_only").is_none_or(|(r, _)| r);
        out.insert(
            name.clone(),
            Mount {
                host,
                path,
                read_only,
            },
        );
    }
    out
}

fn read_volumes(fields: &mut Fields<'_, '_, '_>) -> BTreeMap<String, VolumeDraft> {
    let mut out = BTreeMap::new();
    let Some(mut volumes) = fields.sub("volumes") else {
        return out;
    };
    let value = volumes.value;
    for (name, _) in entries(Some(value)) {
        let Some(mut volume) = volumes.sub(name) else {
            continue;
        };
        let span = volume.value.origin;
        let Some((path, _)) = volume.string("path") else {
            continue;
        };
        out.insert(
            name.clone(),
            VolumeDraft {
                span,
                path,
                size: volume.uint("size"),
                backup: volume.bool("backup").map(|(b, _)| b),
                schedule: volume
                    .at_as("backup_schedule", "backup.schedule")
                    .and_then(|v| Some((as_str(v)?.to_owned(), v.origin))),
                keep_daily: volume
                    .at_as("backup_keep_daily", "backup.keep_daily")
                    .and_then(as_int)
                    .and_then(|i| u32::try_from(i).ok()),
                keep_weekly: volume
                    .at_as("backup_keep_weekly", "backup.keep_weekly")
                    .and_then(as_int)
                    .and_then(|i| u32::try_from(i).ok()),
            },
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_amounts() {
        assert_eq!(millicores("250m"), Some(250));
        assert_eq!(millicores("0.5"), Some(500));
        assert_eq!(millicores("2"), Some(2000));
        assert_eq!(millicores("1.25"), Some(1250));
    }

    #[test]
    fn schema_paths_name_map_entries() {
        assert_eq!(
            schema_path("services.web.ports.http.protocol"),
            "services.<name>.ports.<name>.protocol"
        );
        assert_eq!(
            schema_path("services.web.replicas"),
            "services.<name>.replicas"
        );
    }
}
