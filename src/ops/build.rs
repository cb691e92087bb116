//! `kiln build`, `kiln show-derivation` and `kiln store …`.

use std::collections::BTreeMap;

use super::{EvalFailure, Target};
use crate::config::DocKind;
use crate::config::diagnostic::Diagnostic;
use crate::eval::Evaluator;
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
                "`{}:{}` has nothing to build yet: this kiln builds hosts (their overlay); image and stack builders come next",
                target.kind, target.name
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

/// Evaluate the targets (every host with `all`) and plan their derivations.
pub fn plan(evaluator: &Evaluator, targets: &[Target], all: bool) -> Result<Plan, PlanFailure> {
    let repo = &evaluator.repo;
    let mut hosts = Vec::new();
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
        if target.kind != DocKind::Host {
            return Err(PlanFailure::NotBuildable(target.clone()));
        }
        if !hosts.contains(&id) {
            hosts.push(id);
        }
    }
    if hosts.is_empty() {
        return Err(PlanFailure::NoTargets);
    }
    let mut plan = Plan::default();
    let mut hashes: BTreeMap<String, String> = BTreeMap::new();
    for id in hosts {
        let spec = evaluator
            .host(id)
            .map_err(|d| PlanFailure::Eval(EvalFailure::Invalid(d)))?;
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
    Ok(plan)
}
