//! Evaluating each kind of target, and the checks that span options:
//! the host's image exists and builds its guest kind, files have one
//! source, and so on.

use super::scalar::normalise_path;
use super::spec::{GuestKind, HostSpec, ImageBase, ImageSpec, SPEC_VERSION, SystemConfig};
use super::value::{Priority, Value, ValueKind};
use super::{Evaluation, Evaluator, field_str, field_strings};
use crate::config::diagnostic::Diagnostic;
use crate::config::{DocId, DocKind, Node, NodeKind, Span};
use crate::suggest::did_you_mean;

/// `[host]` keys that are shorthands for options.
const HOST_SHORTHANDS: [(&str, &str); 2] = [("node", "proxmox.node"), ("vmid", "proxmox.vmid")];
const RESOURCES: [&str; 4] = ["cores", "memory", "swap", "disk"];

impl Evaluator {
    /// The typed spec of a host.
    pub fn host(&self, id: DocId) -> Evaluation<HostSpec> {
        let Checked {
            header,
            config,
            closure,
        } = self.host_checked(id)?;
        let document = self.repo.document(id);
        let guest = guest_kind(&header);
        let image = field_str(&header, "image").unwrap_or_default().to_owned();
        let config = self.typed(config, id)?;
        Ok(HostSpec {
            kind: "host".into(),
            version: SPEC_VERSION,
            name: document.name.clone(),
            file: self.repo.sources.path(document.source).to_owned(),
            description: field_str(&header, "description").map(str::to_owned),
            guest,
            image,
            modules: self.names(&closure),
            config,
        })
    }

    /// Evaluate and check a host without building its typed spec.
    fn host_checked(&self, id: DocId) -> Evaluation<Checked> {
        let document = self.repo.document(id);
        let mut diagnostics = Vec::new();
        let header = self.header(
            id,
            &["imports", "node", "vmid", "resources", "network"],
            &mut diagnostics,
        );
        let hostname = [(
            "hostname",
            Node {
                kind: NodeKind::String(document.name.clone()),
                span: document.header_span(),
            },
        )];
        let header_table = document.header_table();
        let evaluated = self.system(id, &hostname, |collector| {
            let Some(table) = header_table else { return };
            for (key, path) in HOST_SHORTHANDS {
                if let Some(entry) = table.get(key) {
                    collector.single(path, &entry.value, Priority::Config);
                }
            }
            if let Some(entry) = table.get("resources") {
                match entry.value.as_table() {
                    Some(resources) => {
                        for resource in &resources.entries {
                            if RESOURCES.contains(&resource.key.as_str()) {
                                collector.single(&format!("proxmox.{}", resource.key), &resource.value, Priority::Config);
                            } else {
                                collector.diagnostics.push(
                                    Diagnostic::error("unknown-option", format!("unknown resource `{}`", resource.key))
                                        .at(resource.key_span, "not a [host.resources] key")
                                        .help_opt(did_you_mean(&resource.key, RESOURCES))
                                        .note("resources: cores, memory, swap, disk (shorthands for proxmox.cores, …)"),
                                );
                            }
                        }
                    }
                    None => collector.diagnostics.push(not_a_table("resources", &entry.value)),
                }
            }
            if let Some(entry) = table.get("network") {
                match (entry.value.as_table(), collector.options.lookup("network")) {
                    (Some(network), Some(super::OptNode::Group(group))) => {
                        collector.section(network, group, "network", Priority::Config);
                    }
                    _ => collector.diagnostics.push(not_a_table("network", &entry.value)),
                }
            }
        });
        let Some((config, closure, found)) = evaluated else {
            return Err(diagnostics);
        };
        diagnostics.extend(found);
        let Some(header) = header else {
            return Err(diagnostics);
        };
        let guest = guest_kind(&header);
        let image = field_str(&header, "image").unwrap_or_default().to_owned();
        if !image.is_empty() {
            self.check_host_image(id, &image, guest, &mut diagnostics);
        }
        for (key, path) in HOST_SHORTHANDS {
            if config
                .get_path(&path.split('.').collect::<Vec<_>>())
                .is_none_or(|v| v.kind == ValueKind::Null)
            {
                diagnostics.push(
                    Diagnostic::error(
                        "missing-field",
                        format!("host `{}` has no Proxmox {key}", document.name),
                    )
                    .at(document.header_span(), format!("[host] needs `{key}`"))
                    .help(format!("add `{key} = …` to [host] (or set `{path}`)")),
                );
            }
        }
        check_system(&config, Some(guest), &mut diagnostics);
        if !diagnostics.is_empty() {
            return Err(diagnostics);
        }
        Ok(Checked {
            header,
            config,
            closure,
        })
    }

    /// Evaluate and check any document without building a typed spec:
    /// what `kiln check` needs, at a fraction of the cost of a spec.
    pub fn validate(&self, id: DocId) -> Evaluation<Validated> {
        let document = self.repo.document(id);
        match document.kind {
            DocKind::Host => {
                let Checked { mut config, .. } = self.host_checked(id)?;
                let vmid = match config.get_path(&["proxmox", "vmid"]).map(|v| &v.kind) {
                    Some(ValueKind::Int(vmid)) => u32::try_from(*vmid).ok(),
                    _ => None,
                };
                Ok(Validated {
                    vmid,
                    sources: self.resolve_sources(&mut config),
                })
            }
            DocKind::Image => {
                let (Checked { mut config, .. }, _) = self.image_checked(id)?;
                Ok(Validated {
                    vmid: None,
                    sources: self.resolve_sources(&mut config),
                })
            }
            DocKind::Stack => self.stack(id).map(|_| Validated::default()),
            DocKind::Module => {
                let diagnostics = self.check_module(id);
                if diagnostics.is_empty() {
                    Ok(Validated::default())
                } else {
                    Err(diagnostics)
                }
            }
        }
    }

    fn check_host_image(
        &self,
        id: DocId,
        image: &str,
        guest: GuestKind,
        diagnostics: &mut Vec<Diagnostic>,
    ) {
        let span = self.header_field_span(id, "image");
        let Some(image_id) = self.repo.find(DocKind::Image, image) else {
            diagnostics.push(
                Diagnostic::error("missing-image", format!("no image named `{image}`"))
                    .at(span, format!("there is no images/{image}.toml"))
                    .help_opt(did_you_mean(image, self.repo.names(DocKind::Image))),
            );
            return;
        };
        let formats = self
            .repo
            .document(image_id)
            .header_table()
            .and_then(|t| t.get("formats"));
        if let Some(formats) = formats
            && let Some(items) = formats.value.as_array()
        {
            let wanted = match guest {
                GuestKind::Lxc => "lxc",
                GuestKind::Vm => "vm",
            };
            if !items.iter().any(|i| i.as_str() == Some(wanted)) {
                diagnostics.push(
                    Diagnostic::error(
                        "image-format",
                        format!("image `{image}` does not build a `{wanted}` format"),
                    )
                    .at(span, format!("this {wanted} host boots `{image}`"))
                    .also(formats.value.span, "the image's formats")
                    .help(format!(
                        "add \"{wanted}\" to the image's formats, or pick another image"
                    )),
                );
            }
        }
    }

    /// The typed spec of an image.
    pub fn image(&self, id: DocId) -> Evaluation<ImageSpec> {
        let (
            Checked {
                header,
                config,
                closure,
            },
            base,
        ) = self.image_checked(id)?;
        let document = self.repo.document(id);
        let formats = field_strings(&header, "formats")
            .iter()
            .map(|f| {
                if f == "vm" {
                    GuestKind::Vm
                } else {
                    GuestKind::Lxc
                }
            })
            .collect();
        let config = self.typed(config, id)?;
        Ok(ImageSpec {
            kind: "image".into(),
            version: SPEC_VERSION,
            name: document.name.clone(),
            file: self.repo.sources.path(document.source).to_owned(),
            description: field_str(&header, "description").map(str::to_owned),
            formats,
            image_version: field_str(&header, "version").unwrap_or("1").to_owned(),
            arch: field_str(&header, "arch").unwrap_or("amd64").to_owned(),
            base,
            modules: self.names(&closure),
            config,
        })
    }

    /// Evaluate and check an image without building its typed spec.
    fn image_checked(&self, id: DocId) -> Evaluation<(Checked, ImageBase)> {
        let mut diagnostics = Vec::new();
        let header = self.header(id, &["imports"], &mut diagnostics);
        let Some((config, closure, found)) = self.system(id, &[], |_| {}) else {
            return Err(diagnostics);
        };
        diagnostics.extend(found);
        let Some(header) = header else {
            return Err(diagnostics);
        };
        let base = self.image_base(id, &header, &mut diagnostics);
        check_system(&config, None, &mut diagnostics);
        if !diagnostics.is_empty() {
            return Err(diagnostics);
        }
        let base = base.ok_or_else(Vec::new)?;
        Ok((
            Checked {
                header,
                config,
                closure,
            },
            base,
        ))
    }

    /// `[image.base]`: exactly one of `debian`, `url`, `image`; image bases
    /// exist and do not loop.
    fn image_base(
        &self,
        id: DocId,
        header: &Value,
        diagnostics: &mut Vec<Diagnostic>,
    ) -> Option<ImageBase> {
        let base = header.get_path(&["base"])?;
        let set: Vec<&str> = ["debian", "url", "image"]
            .into_iter()
            .filter(|k| {
                base.get_path(&[*k])
                    .is_some_and(|v| v.kind != ValueKind::Null)
            })
            .collect();
        if set.len() != 1 {
            diagnostics.push(
                Diagnostic::error("invalid-value", "an image needs exactly one base")
                    .at(base.origin, if set.is_empty() { "no base given".to_owned() } else { format!("both {} given", set.join(" and ")) })
                    .help("set one of `base.debian = { suite = \"bookworm\" }`, `base.url = { url = \"…\" }` or `base.image = \"NAME\"`"),
            );
            return None;
        }
        match set[0] {
            "debian" => {
                let debian = base.get_path(&["debian"])?;
                Some(ImageBase::Debian {
                    suite: field_str(debian, "suite")?.to_owned(),
                    mirror: field_str(debian, "mirror")?.to_owned(),
                    components: field_strings(debian, "components"),
                    variant: field_str(debian, "variant")?.to_owned(),
                })
            }
            "url" => {
                let url = base.get_path(&["url"])?;
                Some(ImageBase::Url {
                    url: field_str(url, "url")?.to_owned(),
                    format: field_str(url, "format").map(str::to_owned),
                })
            }
            _ => {
                let name = field_str(base, "image")?;
                let span = base.get_path(&["image"])?.origin;
                // Follow the chain of image bases looking for a loop.
                let mut chain = vec![self.repo.document(id).name.clone()];
                let mut next = name.to_owned();
                loop {
                    let Some(next_id) = self.repo.find(DocKind::Image, &next) else {
                        diagnostics.push(
                            Diagnostic::error("missing-image", format!("no image named `{next}`"))
                                .at(
                                    span,
                                    format!(
                                        "`{}` extends `{next}`, which does not exist",
                                        chain[chain.len() - 1]
                                    ),
                                )
                                .help_opt(did_you_mean(&next, self.repo.names(DocKind::Image))),
                        );
                        return None;
                    };
                    if let Some(start) = chain.iter().position(|c| *c == next) {
                        chain.push(next);
                        // Report a loop once, from its alphabetically first
                        // member; images that merely lead into it fail there.
                        let members = &chain[start..chain.len() - 1];
                        if members.iter().min() != Some(&self.repo.document(id).name) {
                            return None;
                        }
                        diagnostics.push(
                            Diagnostic::error(
                                "image-cycle",
                                format!(
                                    "image base cycle: {}",
                                    chain
                                        .iter()
                                        .map(|c| format!("`{c}`"))
                                        .collect::<Vec<_>>()
                                        .join(" → ")
                                ),
                            )
                            .at(
                                span,
                                "an image cannot extend itself, directly or through others",
                            )
                            .help(
                                "one of these images must start from `base.debian` or `base.url`",
                            ),
                        );
                        return None;
                    }
                    chain.push(next.clone());
                    let parent = self
                        .repo
                        .document(next_id)
                        .header_table()
                        .and_then(|t| t.get("base"))
                        .and_then(|e| e.value.as_table())
                        .and_then(|t| t.get("image"))
                        .and_then(|e| e.value.as_str());
                    match parent {
                        Some(parent) => next = parent.to_owned(),
                        None => break,
                    }
                }
                Some(ImageBase::Image(name.to_owned()))
            }
        }
    }

    pub(super) fn names(&self, ids: &[DocId]) -> Vec<String> {
        ids.iter()
            .map(|id| self.repo.document(*id).name.clone())
            .collect()
    }

    /// The merged tree as the typed [`SystemConfig`]. The tree was checked
    /// against the declarations that the struct mirrors, so a failure here
    /// is a kiln bug, reported as such rather than with a panic.
    fn typed(&self, mut config: Value, id: DocId) -> Evaluation<SystemConfig> {
        self.resolve_sources(&mut config);
        let typed = serde_json::from_value(config.into_json()).map_err(|error| {
            vec![
                Diagnostic::error(
                    "internal",
                    format!("internal error: the evaluated options do not fit the spec: {error}"),
                )
                .at(
                    self.repo.document(id).header_span(),
                    "while evaluating this",
                )
                .help("this is a kiln bug; please report it with this file"),
            ]
        })?;
        Ok(typed)
    }

    /// `files.<path>.source` is written relative to the module that sets
    /// it; the spec holds it relative to the repo.
    fn resolve_sources(&self, config: &mut Value) -> Vec<SourceRef> {
        let mut found = Vec::new();
        let Some(Value {
            kind: ValueKind::Map(files),
            ..
        }) = config.get_path_mut(&["files".to_owned()])
        else {
            return found;
        };
        for file in files.values_mut() {
            let Some(source) = file.get_path_mut(&["source".to_owned()]) else {
                continue;
            };
            if let ValueKind::Str(relative) = &source.kind {
                let from = self.repo.sources.path(source.origin.source);
                let directory = from.rsplit_once('/').map_or("", |(d, _)| d);
                let joined = if directory.is_empty() {
                    relative.clone()
                } else {
                    format!("{directory}/{relative}")
                };
                let path = normalise_relative(&joined);
                found.push(SourceRef {
                    path: path.clone(),
                    span: source.origin,
                });
                source.kind = ValueKind::Str(path);
            }
        }
        found
    }
}

/// A host or image evaluated and checked, before its typed spec is built.
struct Checked {
    header: Value,
    config: Value,
    closure: Vec<DocId>,
}

/// What `kiln check` keeps of a valid document.
#[derive(Clone, Debug, Default)]
pub struct Validated {
    /// A host's Proxmox VMID.
    pub vmid: Option<u32>,
    /// Repo files it copies (`files.*.source`).
    pub sources: Vec<SourceRef>,
}

fn guest_kind(header: &Value) -> GuestKind {
    match field_str(header, "kind") {
        Some("vm") => GuestKind::Vm,
        _ => GuestKind::Lxc,
    }
}

/// A repo file that a spec copies (`files.*.source`), and where it is named.
#[derive(Clone, Debug)]
pub struct SourceRef {
    /// Relative to the repo root.
    pub path: String,
    pub span: Span,
}

/// `a/./b/../c` → `a/c` (a leading `..` is kept, and caught by the existence check).
fn normalise_relative(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." if parts.last().is_some_and(|p| *p != "..") => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    parts.join("/")
}

fn not_a_table(key: &str, node: &Node) -> Diagnostic {
    Diagnostic::error(
        "type-mismatch",
        format!("`{key}` in [host] must be a table"),
    )
    .at(
        node.span,
        format!("expected a table, found {}", node.type_name()),
    )
}

/// Checks across the options of a host or image.
fn check_system(config: &Value, guest: Option<GuestKind>, diagnostics: &mut Vec<Diagnostic>) {
    if let Some(ValueKind::Map(files)) = config.get_path(&["files"]).map(|v| &v.kind) {
        for (path, file) in files {
            match normalise_path(path) {
                Ok(normal) if normal == *path => {}
                Ok(normal) => diagnostics.push(
                    Diagnostic::error(
                        "invalid-value",
                        format!("file path `{path}` is not normalised"),
                    )
                    .at(file.origin, "defined here")
                    .help(format!("write it as `{normal}`")),
                ),
                Err(message) => diagnostics.push(
                    Diagnostic::error("invalid-value", format!("invalid file path `{path}`"))
                        .at(file.origin, message),
                ),
            }
            let has = |k: &str| {
                file.get_path(&[k])
                    .is_some_and(|v| v.kind != ValueKind::Null)
            };
            if has("text") == has("source") {
                diagnostics.push(
                    Diagnostic::error(
                        "invalid-value",
                        format!("`files.\"{path}\"` needs exactly one of `text` or `source`"),
                    )
                    .at(
                        file.origin,
                        if has("text") {
                            "both `text` and `source` are set"
                        } else {
                            "neither `text` nor `source` is set"
                        },
                    )
                    .help("`text` gives the contents inline; `source` names a file in the repo"),
                );
            }
        }
    }
    if let Some(ValueKind::Map(interfaces)) =
        config.get_path(&["network", "interfaces"]).map(|v| &v.kind)
    {
        for (name, interface) in interfaces {
            let dhcp = matches!(
                interface.get_path(&["dhcp"]).map(|v| &v.kind),
                Some(ValueKind::Bool(true))
            );
            let static_addresses = matches!(interface.get_path(&["address"]).map(|v| &v.kind), Some(ValueKind::List(a)) if !a.is_empty());
            if dhcp && static_addresses {
                diagnostics.push(
                    Diagnostic::error(
                        "invalid-value",
                        format!("interface `{name}` has both `dhcp = true` and static addresses"),
                    )
                    .at(interface.origin, "defined here")
                    .help("use DHCP or static addresses, not both"),
                );
            }
        }
    }
    if guest == Some(GuestKind::Lxc)
        && let Some(ValueKind::Map(disks)) = config.get_path(&["proxmox", "disks"]).map(|v| &v.kind)
    {
        for (name, disk) in disks {
            if disk
                .get_path(&["mountpoint"])
                .is_none_or(|v| v.kind == ValueKind::Null)
            {
                diagnostics.push(
                    Diagnostic::error(
                        "missing-field",
                        format!("LXC volume `proxmox.disks.{name}` has no mountpoint"),
                    )
                    .at(disk.origin, "defined here")
                    .help(
                        "add `mountpoint = \"/path\"`: LXC volumes are mounted into the container",
                    ),
                );
            }
        }
    }
}

/// Hosts sharing a VMID (kiln manages one cluster per repo), from
/// `(host name, vmid, where the vmid is set)` in name order.
pub fn duplicate_vmids(hosts: &[(&str, u32, Span)]) -> Vec<Diagnostic> {
    let mut first: std::collections::BTreeMap<u32, (&str, Span)> =
        std::collections::BTreeMap::new();
    let mut out = Vec::new();
    for &(name, vmid, span) in hosts {
        match first.get(&vmid) {
            None => {
                first.insert(vmid, (name, span));
            }
            Some(&(other, other_span)) => out.push(
                Diagnostic::error(
                    "duplicate-vmid",
                    format!("VMID {vmid} is used by both `{other}` and `{name}`"),
                )
                .at(span, format!("`{name}` uses {vmid}"))
                .also(other_span, format!("`{other}` uses {vmid}"))
                .help("VMIDs are unique in a Proxmox cluster; give one of them another"),
            ),
        }
    }
    out
}
