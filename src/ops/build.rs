//! `kiln build`, `kiln show-derivation` and `kiln store …`.

use std::collections::BTreeMap;

use super::{EvalFailure, Target};
use crate::config::diagnostic::Diagnostic;
use crate::config::{DocId, DocKind};
use crate::eval::Evaluator;
use crate::eval::spec::{HostSpec, ImageBase, ImageSpec};
use crate::lock::Lockfile;
use crate::lock::inputs::{LockStatus, status, wanted};
use crate::plan::{Plan, PlanError};
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
                "`{}:{}` has nothing to build yet: this kiln builds hosts (their overlay) and the pinned inputs of images with a `debian` or `url` base; stack builders come next",
                target.kind, target.name
            ),
            PlanFailure::Lock(status) => write!(
                f,
                "lockfile.toml does not pin the inputs of these targets as configured:\n{}\nrun `kiln lock` to pin them (and commit lockfile.toml)",
                crate::ops::lock::describe(status)
            ),
            PlanFailure::Source { file, reason } => write!(f, "cannot read {file}: {reason}"),
            PlanFailure::Plan(error) => write!(f, "{error}"),
            PlanFailure::NoTargets => {
                f.write_str("nothing to build: name targets (HOST, image:NAME) or pass --all")
            }
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

/// Evaluate the targets (every host with `all`) and plan their derivations,
/// evaluating up to `jobs` hosts at once.
///
/// Every input the targets are built from (for a host, its image's; for an
/// image, its own) must be pinned in `lock` as configured: a target is
/// never built from an input the lockfile does not vouch for.
pub fn plan(
    evaluator: &Evaluator,
    targets: &[Target],
    all: bool,
    jobs: usize,
    lock: &Lockfile,
) -> Result<Plan, PlanFailure> {
    let repo = &evaluator.repo;
    let mut hosts = Vec::new();
    let mut images = Vec::new();
    if all {
        hosts.extend(repo.of_kind(DocKind::Host));
    }
    for target in targets {
        let Some(id) = repo.find(target.kind, &target.name) else {
            return Err(PlanFailure::Eval(EvalFailure::UnknownTarget {
                target: target.clone(),
                hint: did_you_mean(&target.name, repo.names(target.kind)),
            }));
        };
        let list = match target.kind {
            DocKind::Host => &mut hosts,
            DocKind::Image => &mut images,
            _ => return Err(PlanFailure::NotBuildable(target.clone())),
        };
        if !list.contains(&id) {
            list.push(id);
        }
    }
    if hosts.is_empty() && images.is_empty() {
        return Err(PlanFailure::NoTargets);
    }
    let mut specs = Vec::with_capacity(hosts.len());
    let mut problems = Vec::new();
    for result in evaluate_hosts(evaluator, &hosts, jobs) {
        match result {
            Ok(spec) => specs.push(spec),
            Err(diagnostics) => problems.extend(diagnostics),
        }
    }
    // The images the targets are built from: those asked for, each host's,
    // and the images those extend.
    let mut image_specs: BTreeMap<String, ImageSpec> = BTreeMap::new();
    let mut pending: Vec<DocId> = images.clone();
    pending.extend(
        specs
            .iter()
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
    let image_list: Vec<ImageSpec> = image_specs.values().cloned().collect();
    let all_wanted = wanted(&specs, &image_list, &[]);
    // The input each target is built from: an image's own, else the one of
    // the image it extends; a host's own, else its image's.
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
    let mut used = std::collections::BTreeSet::new();
    for spec in &specs {
        let own = ("debian", format!("host:{}", spec.name));
        if all_wanted.contains_key(&own) {
            used.insert(own);
        } else if let Some(key) = image_input(&spec.image) {
            used.insert(key);
        }
    }
    for id in &images {
        if let Some(key) = image_input(&repo.document(*id).name) {
            used.insert(key);
        }
    }
    let used_wanted = all_wanted
        .into_iter()
        .filter(|(key, _)| used.contains(key))
        .collect();
    let mut lock_status = status(lock, &used_wanted);
    // Pins of other targets are not this build's business.
    lock_status.stale.clear();
    if !lock_status.up_to_date() {
        return Err(PlanFailure::Lock(lock_status));
    }
    let mut plan = Plan::default();
    let mut hashes: BTreeMap<String, String> = BTreeMap::new();
    for spec in specs {
        for file in spec.config.files.values() {
            let Some(source) = &file.source else { continue };
            if hashes.contains_key(source) {
                continue;
            }
            let hash = nar::hash(&repo.root.join(source)).map_err(|e| PlanFailure::Source {
                file: source.clone(),
                reason: e.to_string(),
            })?;
            hashes.insert(source.clone(), hash.to_hex());
        }
        plan.add_host(&spec, &hashes).map_err(PlanFailure::Plan)?;
    }
    for id in images {
        let name = &repo.document(id).name;
        let spec = &image_specs[name];
        let key = format!("image:{name}");
        // The lock check above guarantees the entries exist.
        let root = match &spec.base {
            ImageBase::Debian { .. } => lock
                .debian
                .get(&key)
                .map(|entry| plan.add_debian_packages(name, entry)),
            ImageBase::Url { .. } => lock.url.get(&key).map(|entry| plan.add_url_input(entry)),
            ImageBase::Image(_) => None,
        };
        match root {
            Some(hash) => plan.add_root(&key, hash.map_err(PlanFailure::Plan)?),
            None => {
                return Err(PlanFailure::NotBuildable(Target {
                    kind: DocKind::Image,
                    name: name.clone(),
                }));
            }
        }
    }
    Ok(plan)
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
