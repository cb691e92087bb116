//! `kiln plan`: the derivation graph of the targets, for people and for CI
//! (`--json`, `--shard I/N`).

use std::collections::BTreeMap;
use std::process::ExitCode;

use clap::Args;

use super::output::Printer;
use crate::eval::Evaluator;
use crate::ops::Target;
use crate::plan::shard::{ShardSpec, cost};
use crate::store::Store;

/// The version of `kiln plan --json`'s shape.
pub(super) const PLAN_JSON_VERSION: u32 = 1;

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// HOST, image:NAME or stack:NAME, optionally `#PART` (as `kiln build`).
    pub targets: Vec<Target>,
    /// Every host.
    #[arg(long)]
    pub all: bool,
    /// For stack targets: this environment.
    #[arg(long, value_name = "ENV")]
    pub env: Option<String>,
    /// Only this part of each target that names none (as `kiln build`).
    #[arg(long, value_name = "PART")]
    pub part: Option<String>,
    /// Only shard I of N (`2/4`): its targets and their closures, each
    /// derivation marked with whether this shard owns it.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<ShardSpec>,
    /// Print the graph as JSON (shape: docs/src/reference/json.md).
    #[arg(long)]
    pub json: bool,
}

pub(super) fn plan(
    evaluator: &Evaluator,
    store: &Store,
    args: &PlanArgs,
    printer: &Printer,
) -> anyhow::Result<ExitCode> {
    let targets = super::build_cmd::expand_targets(
        evaluator,
        &args.targets,
        args.all,
        args.part.as_deref(),
        args.env.as_deref(),
    );
    let Some(mut plan) = super::build_cmd::plan_for(evaluator, &targets, printer)? else {
        return Ok(ExitCode::from(1));
    };
    let shards = plan.shards(args.shard.map_or(1, |s| s.count));
    let owner: BTreeMap<_, _> = shards
        .iter()
        .flat_map(|s| s.owned.iter().map(move |h| (h.clone(), s.index)))
        .collect();
    let all_roots = plan.roots.clone();
    if let Some(spec) = args.shard {
        plan.keep_roots(&shards[spec.index - 1].roots);
    }
    let order = plan.topological();
    let root_of = |hash: &crate::plan::DrvHash| {
        plan.roots
            .iter()
            .filter(|(_, h)| h == hash)
            .map(|(t, _)| t.as_str())
            .collect::<Vec<_>>()
    };
    if args.json {
        let derivations: Vec<serde_json::Value> = order
            .iter()
            .map(|hash| {
                let derivation = &plan.derivations[*hash];
                let output = plan.output(hash);
                let mut inputs: Vec<&str> = derivation
                    .inputs
                    .values()
                    .map(|i| i.drv().as_str())
                    .collect();
                inputs.sort_unstable();
                inputs.dedup();
                serde_json::json!({
                    "hash": hash.as_str(),
                    "name": derivation.name,
                    "builder": derivation.builder,
                    "path": store.real_path(output),
                    "inputs": inputs,
                    "roots": root_of(hash),
                    "valid": store.is_valid(output),
                    "cost": cost(derivation),
                    "shard": owner.get(*hash),
                })
            })
            .collect();
        let shard_list: Vec<serde_json::Value> = shards
            .iter()
            .map(|s| {
                serde_json::json!({
                    "index": s.index,
                    "targets": s.roots.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>(),
                    "derivations": s.owned.len(),
                    "cost": s.cost,
                })
            })
            .collect();
        printer.json(&serde_json::json!({
            "kind": "plan",
            "version": PLAN_JSON_VERSION,
            "shard": args.shard.map(|s| serde_json::json!({"index": s.index, "count": s.count})),
            "roots": plan.roots.iter().map(|(target, hash)| serde_json::json!({
                "target": target,
                "hash": hash.as_str(),
                "path": store.real_path(plan.output(hash)),
            })).collect::<Vec<_>>(),
            "derivations": derivations,
            "shards": shard_list,
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    let valid = order
        .iter()
        .filter(|h| store.is_valid(plan.output(h)))
        .count();
    let heading = match args.shard {
        Some(spec) => format!(
            "shard {spec}: {} of {} target{}, {} derivation{} ({} owned by this shard), {} valid",
            plan.roots.len(),
            all_roots.len(),
            if all_roots.len() == 1 { "" } else { "s" },
            order.len(),
            if order.len() == 1 { "" } else { "s" },
            shards[spec.index - 1].owned.len(),
            valid
        ),
        None => format!(
            "{} target{}, {} derivation{}, {} valid",
            plan.roots.len(),
            if plan.roots.len() == 1 { "" } else { "s" },
            order.len(),
            if order.len() == 1 { "" } else { "s" },
            valid
        ),
    };
    printer.line(&heading)?;
    for hash in order {
        let output = plan.output(hash);
        let state = if store.is_valid(output) {
            "valid"
        } else {
            "build"
        };
        let mut line = format!("  {state:5} {}", store.real_path(output).display());
        let roots = root_of(hash);
        if !roots.is_empty() {
            line.push_str(&format!("  ← {}", roots.join(", ")));
        }
        if let Some(spec) = args.shard
            && owner.get(hash) != Some(&spec.index)
        {
            line.push_str(&format!(
                "  (owned by shard {}/{})",
                owner.get(hash).copied().unwrap_or(1),
                spec.count
            ));
        }
        printer.line(&line)?;
    }
    Ok(ExitCode::SUCCESS)
}
