//! `kiln build`, `kiln show-derivation` and `kiln store …`.

use std::collections::BTreeMap;

use super::{EvalFailure, Target};
use crate::config::diagnostic::Diagnostic;
use crate::config::{DocId, DocKind};
use crate::eval::Evaluator;
use crate::eval::spec::{GuestKind, HostSpec, ImageBase, ImageSpec};
use crate::lock::Lockfile;
use crate::lock::inputs::{LockStatus, status, wanted};
use crate::plan::{Plan, PlanError};
use crate::stack::render;
use crate::store::nar;
use crate::suggest::did_you_mean;

/// Why no plan could be made.
#[derive(Debug)]
pub enum PlanFailure {
    /// A target does not exist or does not evaluate.
    Eval(EvalFailure),
    /// A target exists but kiln cannot build that kind yet.
    NotBuildable(Target),
    /// A repo file the build copies cannot be read.
    Source {
        file: String,
        reason: String,
    },
    Plan(PlanError),
    /// Nothing was asked for.
    NoTargets,
    /// The lockfile does not pin an input of the targets as configured.
    Lock(LockStatus),
    /// `TARGET#PART` names no part of that target.
    UnknownPart {
        target: String,
        part: String,
    },
    /// A stack that cannot be rendered.
    Stack {
        target: String,
        reason: String,
    },
    /// A host to be built from packages whose image has no Debian base.
    NoDebianBase {
        target: String,
        image: String,
    },
}

impl std::fmt::Display for PlanFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PlanFailure::Eval(EvalFailure::UnknownTarget { target, hint }) => {
                write!(f, "no {} named `{}`", target.kind, target.name)?;
                if let Some(hint) = hint {
                    write!(f, "; {hint}")?;
                }
                Ok(())
            }
            PlanFailure::Eval(EvalFailure::Invalid(_)) => {
                f.write_str("the configuration has errors")
            }
            PlanFailure::NotBuildable(target) => write!(
                f,
                "`{}:{}` has nothing to build yet: kiln builds hosts, images and stacks",
                target.kind, target.name
            ),
            PlanFailure::UnknownPart { target, part } => write!(
                f,
                "`{target}`: no part `{part}` (a host has `overlay` and `packages`, a VM host also `raw`; an image has `packages`; a stack has `compose` and `k8s`, each optionally `@ENV`, or `@ENV` alone)"
            ),
            PlanFailure::NoDebianBase { target, image } => write!(
                f,
                "`{target}`: its image `{image}` is not built from a Debian package set, so its `packages` cannot be installed (a `url` base is used as it is: leave `packages` empty, or bootstrap from `base.debian`)"
            ),
            PlanFailure::Lock(status) => write!(
                f,
                "lockfile.toml does not pin the inputs of these targets as configured:\n{}\nrun `kiln lock` to pin them (and commit lockfile.toml)",
                crate::ops::lock::describe(status)
            ),
            PlanFailure::Stack { target, reason } => write!(f, "`{target}`: {reason}"),
            PlanFailure::Source { file, reason } => write!(f, "cannot read {file}: {reason}"),
            PlanFailure::Plan(error) => write!(f, "{error}"),
            PlanFailure::NoTargets => f.write_str(
                "nothing to build: name targets (HOST, image:NAME, stack:NAME) or pass --all",
            ),
        }
    }
}

/// The diagnostics behind a failure, if it has any.
impl PlanFailure {
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            PlanFailure::Eval(EvalFailure::Invalid(diagnostics)) => diagnostics,
            _ => &[],
        }
    }
}

/// What a host or image target builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    /// The whole thing: a host's template or VM image; an image's pinned
    /// inputs.
    Whole,
    /// A VM host's image with `disk.raw` beside `disk.qcow2`.
    Raw,
    /// A host's overlay only (needs no input).
    Overlay,
    /// The pinned Debian set (its fetches and index) only.
    Packages,
}

impl Part {
    fn of(target: &Target) -> Result<Part, PlanFailure> {
        match (target.kind, target.part.as_deref()) {
            (_, None) => Ok(Part::Whole),
            (DocKind::Host, Some("overlay")) => Ok(Part::Overlay),
            (DocKind::Host, Some("raw")) => Ok(Part::Raw),
            (DocKind::Host | DocKind::Image, Some("packages")) => Ok(Part::Packages),
            (_, Some(other)) => Err(PlanFailure::UnknownPart {
                target: target.to_string(),
                part: other.to_owned(),
            }),
        }
    }
}

/// The `[stack] host` of a stack document, if set (without evaluating
/// the services).
fn field_host(evaluator: &Evaluator, id: DocId) -> Option<String> {
    let header = evaluator.repo.document(id).header.as_ref()?;
    let table = header.value.as_table()?;
    let entry = table.get("host")?;
    entry.value.as_str().map(str::to_owned)
}

/// A stack target's part: `TARGET`, `TARGET@ENV` or `@ENV` (`compose`,
/// `k8s@prod`); no part builds every target the stack renders, base model.
fn stack_part(target: &Target) -> Result<(Option<render::Target>, Option<String>), PlanFailure> {
    let Some(part) = target.part.as_deref() else {
        return Ok((None, None));
    };
    let (which, env) = match part.split_once('@') {
        Some((which, env)) if !env.is_empty() => (which, Some(env.to_owned())),
        Some(_) => {
            return Err(PlanFailure::UnknownPart {
                target: target.to_string(),
                part: part.to_owned(),
            });
        }
        None => (part, None),
    };
    if which.is_empty() {
        return Ok((None, env));
    }
    match render::Target::parse(which) {
        Some(one) => Ok((Some(one), env)),
        None => Err(PlanFailure::UnknownPart {
            target: target.to_string(),
            part: part.to_owned(),
        }),
    }
}

/// The disk format of an image whose base is a pinned disk image (`url`
/// with `format = "qcow2"` or `"raw"`, or a URL ending in `.qcow2` or
/// `.raw`), else `None` (a rootfs tarball, or not a `url` base).
fn disk_format(image: &ImageSpec) -> Option<&'static str> {
    let ImageBase::Url { url, format } = &image.base else {
        return None;
    };
    match format.as_deref() {
        Some("qcow2") => Some("qcow2"),
        Some("raw") => Some("raw"),
        Some(_) => None,
        None if url.ends_with(".qcow2") => Some("qcow2"),
        None if url.ends_with(".raw") => Some("raw"),
        None => None,
    }
}

/// A stack that does not evaluate or pin, as a planning failure.
fn stack_failure(target: &str, failure: super::render::RenderFailure) -> PlanFailure {
    match failure {
        super::render::RenderFailure::Eval(failure) => PlanFailure::Eval(failure),
        super::render::RenderFailure::Unpinned(diagnostics) => {
            PlanFailure::Eval(EvalFailure::Invalid(diagnostics))
        }
        other => PlanFailure::Stack {
            target: target.to_owned(),
            reason: other.to_string(),
        },
    }
}

/// Evaluate the targets (every host with `all`) and plan their derivations,
/// evaluating up to `jobs` hosts at once.
///
/// Every input the targets are built from (for a host, its own Debian set
/// or its image's; for an image, its own) must be pinned in `lock` as
/// configured: a target is never built from an input the lockfile does not
/// vouch for.
pub fn plan(
    evaluator: &Evaluator,
    targets: &[Target],
    all: bool,
    jobs: usize,
    lock: &Lockfile,
) -> Result<Plan, PlanFailure> {
    let repo = &evaluator.repo;
    let mut hosts: Vec<(DocId, Part, String)> = Vec::new();
    let mut images: Vec<(DocId, Part, String)> = Vec::new();
    if all {
        for id in repo.of_kind(DocKind::Host) {
            hosts.push((id, Part::Whole, repo.document(id).name.clone()));
        }
    }
    let mut stacks: Vec<(String, Option<render::Target>, Option<String>, String)> = Vec::new();
    for target in targets {
        let Some(id) = repo.find(target.kind, &target.name) else {
            return Err(PlanFailure::Eval(EvalFailure::UnknownTarget {
                target: target.clone(),
                hint: did_you_mean(&target.name, repo.names(target.kind)),
            }));
        };
        if target.kind == DocKind::Stack {
            let (render_target, env) = stack_part(target)?;
            stacks.push((target.name.clone(), render_target, env, target.to_string()));
            continue;
        }
        let part = Part::of(target)?;
        let list = match target.kind {
            DocKind::Host => &mut hosts,
            DocKind::Image => &mut images,
            _ => return Err(PlanFailure::NotBuildable(target.clone())),
        };
        if !list.iter().any(|(i, p, _)| *i == id && *p == part) {
            list.push((id, part, target.to_string()));
        }
    }
    if hosts.is_empty() && images.is_empty() && stacks.is_empty() {
        return Err(PlanFailure::NoTargets);
    }
    let mut unique_hosts: Vec<DocId> = Vec::new();
    for (id, _, _) in &hosts {
        if !unique_hosts.contains(id) {
            unique_hosts.push(*id);
        }
    }
    let mut specs: BTreeMap<String, HostSpec> = BTreeMap::new();
    let mut problems = Vec::new();
    for result in evaluate_hosts(evaluator, &unique_hosts, jobs) {
        match result {
            Ok(spec) => {
                specs.insert(spec.name.clone(), spec);
            }
            Err(diagnostics) => problems.extend(diagnostics),
        }
    }
    // The images the targets are built from: those asked for, each host's,
    // and the images those extend.
    let mut image_specs: BTreeMap<String, ImageSpec> = BTreeMap::new();
    let mut pending: Vec<DocId> = images.iter().map(|(id, _, _)| *id).collect();
    pending.extend(
        specs
            .values()
            .filter_map(|spec| repo.find(DocKind::Image, &spec.image)),
    );
    while let Some(id) = pending.pop() {
        if image_specs.contains_key(&repo.document(id).name) {
            continue;
        }
        match super::evaluate_checked(evaluator, id, Evaluator::image) {
            Ok(spec) => {
                if let ImageBase::Image(parent) = &spec.base
                    && let Some(parent) = repo.find(DocKind::Image, parent)
                {
                    pending.push(parent);
                }
                image_specs.insert(spec.name.clone(), spec);
            }
            Err(diagnostics) => problems.extend(diagnostics),
        }
    }
    if !problems.is_empty() {
        let mut all = crate::config::Diagnostics::default();
        all.extend(problems);
        return Err(PlanFailure::Eval(EvalFailure::Invalid(
            all.finish(&repo.sources),
        )));
    }

    // Which pinned input each target is built from.
    let host_list: Vec<HostSpec> = specs.values().cloned().collect();
    let image_list: Vec<ImageSpec> = image_specs.values().cloned().collect();
    let all_wanted = wanted(&host_list, &image_list, &[]);
    let image_input = |name: &str| {
        let mut name = name.to_owned();
        for _ in 0..=image_list.len() {
            for kind in ["debian", "url"] {
                let key = (kind, format!("image:{name}"));
                if all_wanted.contains_key(&key) {
                    return Some(key);
                }
            }
            match image_specs.get(&name).map(|i| &i.base) {
                Some(ImageBase::Image(parent)) => name = parent.clone(),
                _ => return None,
            }
        }
        None
    };
    let host_input = |spec: &HostSpec| {
        let own = ("debian", format!("host:{}", spec.name));
        if all_wanted.contains_key(&own) {
            Some(own)
        } else {
            image_input(&spec.image)
        }
    };
    let mut used = std::collections::BTreeSet::new();
    for (id, part, _) in &hosts {
        if *part != Part::Overlay
            && let Some(key) = host_input(&specs[&repo.document(*id).name])
        {
            used.insert(key);
        }
    }
    for (id, _, _) in &images {
        if let Some(key) = image_input(&repo.document(*id).name) {
            used.insert(key);
        }
    }
    let used_wanted = all_wanted
        .iter()
        .filter(|(key, _)| used.contains(*key))
        .map(|(key, want)| (key.clone(), want.clone()))
        .collect();
    let mut lock_status = status(lock, &used_wanted);
    // Pins of other targets are not this build's business.
    lock_status.stale.clear();
    if !lock_status.up_to_date() {
        return Err(PlanFailure::Lock(lock_status));
    }

    let mut plan = Plan::default();
    for (name, render_target, env, target) in &stacks {
        let stack = super::render::pinned_stack(evaluator, name, env.as_deref())
            .map_err(|failure| stack_failure(target, failure))?;
        let wanted: Vec<render::Target> = match render_target {
            Some(one) => vec![*one],
            None => stack
                .stack
                .targets
                .iter()
                .filter_map(|t| render::Target::parse(t))
                .collect(),
        };
        for one in wanted {
            let hash = plan
                .add_stack_bundle(&stack, one)
                .map_err(PlanFailure::Plan)?;
            let root = match (render_target, env) {
                (Some(_), _) => target.clone(),
                (None, Some(env)) => format!("stack:{name}#{one}@{env}"),
                (None, None) => format!("stack:{name}#{one}"),
            };
            plan.add_root(&root, hash);
        }
    }
    let mut hashes: BTreeMap<String, String> = BTreeMap::new();
    // Stacks a host carries (`[stack] host`), rendered for compose once.
    let mut carried: BTreeMap<String, Vec<(crate::stack::PinnedStack, render::Bundle)>> =
        BTreeMap::new();
    if !hosts.is_empty() {
        for name in repo.names(DocKind::Stack) {
            let id = repo.find(DocKind::Stack, name);
            let Some(host) = id.and_then(|id| field_host(evaluator, id)) else {
                continue;
            };
            if !specs.contains_key(&host) {
                continue;
            }
            let target = format!("stack:{name}");
            let stack = super::render::pinned_stack(evaluator, name, None)
                .map_err(|failure| stack_failure(&target, failure))?;
            if !stack.stack.targets.iter().any(|t| t == "compose") {
                continue;
            }
            let bundle = render::render(&stack, render::Target::Compose).map_err(|error| {
                PlanFailure::Stack {
                    target: target.clone(),
                    reason: error.to_string(),
                }
            })?;
            carried.entry(host).or_default().push((stack, bundle));
        }
    }
    for (id, part, target) in &hosts {
        let mut spec = specs[&repo.document(*id).name].clone();
        if let Some(stacks) = carried.get(&spec.name) {
            let list: Vec<crate::stack::host::Carried<'_>> = stacks
                .iter()
                .map(|(stack, bundle)| {
                    let compose = &stack.stack.settings.compose;
                    crate::stack::host::Carried {
                        stack: &stack.stack.name,
                        namespace: &stack.stack.settings.namespace,
                        networks: vec![
                            compose.proxy_network.clone(),
                            compose.monitoring_network.clone(),
                        ],
                        bundle,
                    }
                })
                .collect();
            crate::stack::host::carry(&mut spec.config, &list).map_err(|error| {
                PlanFailure::Stack {
                    target: target.clone(),
                    reason: error.to_string(),
                }
            })?;
        }
        let spec = &spec;
        hash_sources(&repo.root, &spec.config, &mut hashes)?;
        let overlay = plan.add_host(spec, &hashes).map_err(PlanFailure::Plan)?;
        // The lock check above guarantees the entries exist.
        let input = host_input(spec);
        let debian = input
            .as_ref()
            .filter(|(kind, _)| *kind == "debian")
            .and_then(|(_, id)| lock.debian.get(id).map(|entry| (id.clone(), entry)));
        let tarball = input
            .as_ref()
            .filter(|(kind, _)| *kind == "url")
            .and_then(|(_, id)| lock.url.get(id));
        let image = image_specs.get(&spec.image);
        let version = image.map_or("0", |i| i.image_version.as_str());
        let root = match (part, spec.guest, debian) {
            (Part::Overlay, _, _) => overlay,
            (Part::Whole | Part::Raw, GuestKind::Vm, Some((_, entry))) => plan
                .add_vm_image(
                    &spec.name,
                    &overlay,
                    entry,
                    &spec.config,
                    *part == Part::Raw,
                )
                .map_err(PlanFailure::Plan)?,
            (Part::Whole | Part::Raw, GuestKind::Vm, None)
                if spec.config.packages.is_empty()
                    && let Some(entry) = tarball
                    && let Some(format) = image.and_then(disk_format) =>
            {
                plan.add_vm_image_from_disk(
                    &spec.name,
                    &overlay,
                    entry,
                    format,
                    &spec.config,
                    *part == Part::Raw,
                )
                .map_err(PlanFailure::Plan)?
            }
            (Part::Raw, GuestKind::Lxc, _) => {
                return Err(PlanFailure::UnknownPart {
                    target: target.clone(),
                    part: "raw".to_owned(),
                });
            }
            (Part::Whole, GuestKind::Lxc, None)
                if spec.config.packages.is_empty()
                    && let Some(entry) = tarball =>
            {
                let arch = image.map_or("amd64", |i| i.arch.as_str());
                plan.add_lxc_template_from_tarball(&spec.name, &overlay, entry, version, arch)
                    .map_err(PlanFailure::Plan)?
            }
            (Part::Packages, _, Some((id, entry))) => plan
                .add_debian_packages(id.split_once(':').map_or(&id[..], |(_, n)| n), entry)
                .map_err(PlanFailure::Plan)?,
            (Part::Whole, GuestKind::Lxc, Some((_, entry))) => plan
                .add_lxc_template(&spec.name, &overlay, entry, version)
                .map_err(PlanFailure::Plan)?,
            (_, _, None) => {
                return Err(PlanFailure::NoDebianBase {
                    target: target.clone(),
                    image: spec.image.clone(),
                });
            }
        };
        plan.add_root(target, root);
    }
    for (id, part, target) in &images {
        let name = &repo.document(*id).name;
        let spec = &image_specs[name];
        // An image that extends another without adding packages is built
        // on the other's template: the chain down from the first image
        // that owns its base.
        if *part == Part::Whole
            && spec.formats.contains(&GuestKind::Lxc)
            && let ImageBase::Image(_) = spec.base
            && spec.config.packages.is_empty()
        {
            let mut chain = vec![name.clone()];
            while let Some(ImageBase::Image(parent)) = image_specs
                .get(chain.last().unwrap_or(name))
                .map(|i| &i.base)
            {
                if chain.contains(parent) || chain.len() > image_specs.len() {
                    break;
                }
                chain.push(parent.clone());
                if image_specs.get(parent).is_some_and(|p| {
                    !matches!(p.base, ImageBase::Image(_)) || !p.config.packages.is_empty()
                }) {
                    break;
                }
            }
            let owner = chain.pop().unwrap_or_else(|| name.clone());
            let Some(owner_spec) = image_specs.get(&owner) else {
                return Err(PlanFailure::NotBuildable(Target {
                    kind: DocKind::Image,
                    name: name.clone(),
                    part: None,
                }));
            };
            let mut template = match image_input(&owner) {
                Some(("debian", input)) => {
                    hash_sources(&repo.root, &owner_spec.config, &mut hashes)?;
                    let overlay = plan
                        .add_overlay(&owner, &owner_spec.config, &hashes)
                        .map_err(PlanFailure::Plan)?;
                    plan.add_lxc_template(
                        &owner,
                        &overlay,
                        &lock.debian[&input],
                        &owner_spec.image_version,
                    )
                    .map_err(PlanFailure::Plan)?
                }
                Some(("url", input)) => {
                    hash_sources(&repo.root, &owner_spec.config, &mut hashes)?;
                    let overlay = plan
                        .add_overlay(&owner, &owner_spec.config, &hashes)
                        .map_err(PlanFailure::Plan)?;
                    plan.add_lxc_template_from_tarball(
                        &owner,
                        &overlay,
                        &lock.url[&input],
                        &owner_spec.image_version,
                        &owner_spec.arch,
                    )
                    .map_err(PlanFailure::Plan)?
                }
                _ => {
                    return Err(PlanFailure::NotBuildable(Target {
                        kind: DocKind::Image,
                        name: name.clone(),
                        part: None,
                    }));
                }
            };
            for child in chain.iter().rev() {
                let child_spec = &image_specs[child];
                hash_sources(&repo.root, &child_spec.config, &mut hashes)?;
                let overlay = plan
                    .add_overlay(child, &child_spec.config, &hashes)
                    .map_err(PlanFailure::Plan)?;
                template = plan
                    .add_lxc_template_from_image(
                        child,
                        &overlay,
                        &template,
                        &child_spec.image_version,
                        &child_spec.arch,
                    )
                    .map_err(PlanFailure::Plan)?;
            }
            plan.add_root(target, template);
            continue;
        }
        let root = match image_input(name) {
            Some(("debian", input)) => {
                let entry = &lock.debian[&input];
                if *part == Part::Whole && spec.formats.contains(&GuestKind::Lxc) {
                    hash_sources(&repo.root, &spec.config, &mut hashes)?;
                    let overlay = plan
                        .add_overlay(name, &spec.config, &hashes)
                        .map_err(PlanFailure::Plan)?;
                    Some(plan.add_lxc_template(name, &overlay, entry, &spec.image_version))
                } else {
                    let set = input.split_once(':').map_or(&input[..], |(_, n)| n);
                    Some(plan.add_debian_packages(set, entry))
                }
            }
            Some(("url", input)) => {
                let entry = &lock.url[&input];
                if *part == Part::Whole
                    && spec.formats.contains(&GuestKind::Lxc)
                    && spec.config.packages.is_empty()
                {
                    hash_sources(&repo.root, &spec.config, &mut hashes)?;
                    let overlay = plan
                        .add_overlay(name, &spec.config, &hashes)
                        .map_err(PlanFailure::Plan)?;
                    Some(plan.add_lxc_template_from_tarball(
                        name,
                        &overlay,
                        entry,
                        &spec.image_version,
                        &spec.arch,
                    ))
                } else {
                    Some(plan.add_url_input(entry))
                }
            }
            _ => None,
        };
        match root {
            Some(hash) => plan.add_root(target, hash.map_err(PlanFailure::Plan)?),
            None => {
                return Err(PlanFailure::NotBuildable(Target {
                    kind: DocKind::Image,
                    name: name.clone(),
                    part: None,
                }));
            }
        }
    }
    Ok(plan)
}

/// Hash the repo files `config` copies (`files.*.source`) that are not
/// hashed yet.
fn hash_sources(
    root: &std::path::Path,
    config: &crate::eval::spec::SystemConfig,
    hashes: &mut BTreeMap<String, String>,
) -> Result<(), PlanFailure> {
    for file in config.files.values() {
        let Some(source) = &file.source else { continue };
        if hashes.contains_key(source) {
            continue;
        }
        let hash = nar::hash(&root.join(source)).map_err(|e| PlanFailure::Source {
            file: source.clone(),
            reason: e.to_string(),
        })?;
        hashes.insert(source.clone(), hash.to_hex());
    }
    Ok(())
}

/// Evaluate hosts on up to `jobs` threads; results in the order given.
fn evaluate_hosts(
    evaluator: &Evaluator,
    hosts: &[DocId],
    jobs: usize,
) -> Vec<crate::eval::Evaluation<HostSpec>> {
    let jobs = jobs.clamp(1, hosts.len().max(1));
    let host = |id: &DocId| super::evaluate_checked(evaluator, *id, Evaluator::host);
    if jobs == 1 {
        return hosts.iter().map(host).collect();
    }
    let chunk = hosts.len().div_ceil(jobs);
    std::thread::scope(|scope| {
        let workers: Vec<_> = hosts
            .chunks(chunk)
            .map(|ids| scope.spawn(move || ids.iter().map(host).collect::<Vec<_>>()))
            .collect();
        workers
            .into_iter()
            .flat_map(|worker| match worker.join() {
                Ok(results) => results,
                // A panic is a bug: let it surface as one, not as a wrong result.
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    })
}
