//! `kiln deploy`, `kiln rollback`, `kiln generations`, `kiln diff`,
//! `kiln status` and `kiln gc --remote`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use super::output::Printer;
use crate::config::DocKind;
use crate::deploy::{self, Deployer, Progress, Target as DeployTarget, guest};
use crate::eval::Evaluator;
use crate::eval::spec::{HostSpec, Spec};
use crate::ops::{self, EvalFailure, Target};
use crate::profile::{self, Generation, GuestKind, Outcome, Profiles, RECORD_VERSION};
use crate::store::Store;

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// Hosts to deploy.
    #[arg(required = true)]
    pub hosts: Vec<String>,
    /// Build and upload nothing to change: print the Proxmox API calls the
    /// deploy would make (it still builds the image and reads the cluster).
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    pub host: String,
    /// The generation to go back to (default: the one before the current).
    #[arg(long, value_name = "N")]
    pub to: Option<u32>,
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct GenerationsArgs {
    pub host: String,
    /// Read the history from the guest's notes on Proxmox instead of this
    /// machine's records (after losing them).
    #[arg(long)]
    pub remote: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    pub host: String,
    /// Two generation numbers (default: the previous successful and the current).
    #[arg(num_args = 0..=2, value_name = "GENERATION")]
    pub generations: Vec<u32>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Hosts (default: every host of the repo).
    pub hosts: Vec<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct GcArgs {
    /// Delete volumes kiln uploaded to Proxmox that no kept generation uses.
    #[arg(long)]
    pub remote: bool,
    /// Generations to keep per host (the newest N, and always the current).
    #[arg(long, value_name = "N")]
    pub keep: u32,
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long)]
    pub json: bool,
}

/// Where generations live: `$XDG_STATE_HOME/kiln`, else `~/.local/state/kiln`.
pub(super) fn profiles() -> Profiles {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    Profiles::open(&profile::default_location(
        var("XDG_STATE_HOME"),
        var("HOME"),
    ))
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// Evaluate host `name`; `None` after printing why not.
fn host_spec(evaluator: &Evaluator, name: &str, printer: &Printer) -> Option<HostSpec> {
    let target = Target {
        kind: DocKind::Host,
        name: name.to_owned(),
        part: None,
    };
    match ops::eval(evaluator, &target) {
        Ok(Spec::Host(spec)) => Some(*spec),
        Ok(_) => None,
        Err(failure) => {
            report_eval_failure(evaluator, failure, printer);
            None
        }
    }
}

pub(super) fn report_eval_failure(evaluator: &Evaluator, failure: EvalFailure, printer: &Printer) {
    let sources = &evaluator.repo.sources;
    match failure {
        EvalFailure::UnknownTarget { target, hint } => {
            let mut message = format!(
                "no {} named `{}` in {}",
                target.kind,
                target.name,
                evaluator.repo.root.display()
            );
            if let Some(hint) = hint {
                message.push_str(&format!("; {hint}"));
            }
            printer.fatal(&message);
        }
        EvalFailure::Invalid(diagnostics) => {
            let diagnostics = {
                let mut all = crate::config::Diagnostics::default();
                all.extend(diagnostics);
                all.finish(sources)
            };
            for diagnostic in &diagnostics {
                printer.diagnostic(diagnostic, sources);
            }
            printer.error_count(diagnostics.len(), sources, &diagnostics);
        }
    }
}

/// The repo's git revision, `+dirty` when the work tree has changes.
fn revision(repo: &Path) -> Option<String> {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(repo)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let head = git(&["rev-parse", "--short=12", "HEAD"])?;
    let dirty = git(&["status", "--porcelain"]).is_some_and(|s| !s.is_empty());
    Some(if dirty { format!("{head}+dirty") } else { head })
}

/// Progress lines from a deploy, on stderr (or nothing with --quiet): an
/// upload says how far it is at most every two seconds, with bytes/s.
fn reporter(printer: &Printer) -> impl Fn(Progress) + Send + Sync + '_ {
    let last = std::sync::Mutex::new(std::time::Instant::now());
    move |progress| match progress {
        Progress::Step(text) => printer.status(&format!("  {text}")),
        Progress::Upload {
            name,
            sent,
            total,
            bytes_per_second,
            attempt,
        } => {
            let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
            if sent < total && last.elapsed() < std::time::Duration::from_secs(2) {
                return;
            }
            *last = std::time::Instant::now();
            printer.status(&format!(
                "  {name}: {}% ({} of {}, {}/s){}",
                (sent * 100).checked_div(total).unwrap_or(100),
                deploy::human_bytes(sent),
                deploy::human_bytes(total),
                deploy::human_bytes(bytes_per_second),
                if attempt > 1 {
                    format!(", attempt {attempt}")
                } else {
                    String::new()
                }
            ));
        }
        Progress::WouldCall {
            method,
            path,
            params,
        } => {
            let mut line = format!("  would call {method} {path}");
            for (key, value) in &params {
                let value = if value.len() > 120 {
                    let head: String = value.chars().take(100).collect();
                    format!("{head}… ({} bytes)", value.len())
                } else {
                    value.clone()
                };
                line.push_str(&format!("\n      {key}={value}"));
            }
            printer.status(&line);
        }
    }
}

fn node_and_vmid(spec: &HostSpec) -> Result<(String, u32), String> {
    match (&spec.config.proxmox.node, spec.config.proxmox.vmid) {
        (Some(node), Some(vmid)) => Ok((node.clone(), vmid)),
        _ => Err(format!(
            "host `{}` needs `node` and `vmid` in [host] to be deployed",
            spec.name
        )),
    }
}

/// A deployer for `spec`'s Proxmox endpoint, or why there is none.
fn try_deployer<'a>(
    spec: &HostSpec,
    repo: &Path,
    dry_run: bool,
    progress: &'a (dyn Fn(Progress) + Send + Sync),
    quiet: bool,
) -> Result<Deployer<'a>, String> {
    let api = &spec.config.proxmox.api;
    let endpoint =
        deploy::endpoint::endpoint(&spec.name, api, repo, &env).map_err(|e| e.to_string())?;
    // Retries are worth a line (the client never puts the secret in one).
    let client = crate::proxmox::client::Client::new(&endpoint)
        .map_err(|e| e.to_string())?
        .with_events(move |event| {
            if !quiet {
                use std::io::Write;
                let _ = writeln!(std::io::stderr(), "  {event}");
            }
        });
    Ok(Deployer {
        client,
        dry_run,
        task_timeout: deploy::endpoint::task_timeout(api),
        progress,
    })
}

/// [`try_deployer`], printing why not.
fn deployer<'a>(
    spec: &HostSpec,
    repo: &Path,
    dry_run: bool,
    progress: &'a (dyn Fn(Progress) + Send + Sync),
    printer: &Printer,
) -> Option<Deployer<'a>> {
    try_deployer(spec, repo, dry_run, progress, printer.quiet())
        .map_err(|message| printer.fatal(&message))
        .ok()
}

pub(super) fn deploy(
    evaluator: &Evaluator,
    store: &Store,
    args: &DeployArgs,
    printer: &Printer,
) -> anyhow::Result<ExitCode> {
    let mut specs = Vec::new();
    for name in &args.hosts {
        let Some(spec) = host_spec(evaluator, name, printer) else {
            return Ok(ExitCode::from(1));
        };
        if let Err(message) = node_and_vmid(&spec) {
            printer.fatal(&message);
            return Ok(ExitCode::from(1));
        }
        specs.push(spec);
    }
    let targets: Vec<Target> = specs
        .iter()
        .map(|s| Target {
            kind: DocKind::Host,
            name: s.name.clone(),
            part: None,
        })
        .collect();
    let Some(plan) = super::build_cmd::build_for(evaluator, store, &targets, printer)? else {
        return Ok(ExitCode::from(1));
    };
    let runtime = runtime()?;
    let profiles = profiles();
    let progress = reporter(printer);
    let revision = revision(&evaluator.repo.root);
    let mut reports = Vec::new();
    let mut failed = false;
    for spec in &specs {
        let Some((_, hash)) = plan.roots.iter().find(|(t, _)| *t == spec.name) else {
            printer.fatal(&format!("kiln bug: no build planned for `{}`", spec.name));
            return Ok(ExitCode::from(1));
        };
        let store_path = plan.output(hash).clone();
        let image = store.real_path(&store_path);
        let derivation = &plan.derivations[hash];
        let overlay = derivation
            .inputs
            .get("overlay")
            .map(|i| store.real_path(i.path()).display().to_string());
        let generation = match generation_for(spec, &image, hash.as_str(), overlay, &revision) {
            Ok(g) => g,
            Err(message) => {
                printer.fatal(&message);
                failed = true;
                continue;
            }
        };
        printer.status(&format!(
            "{}: deploying {} to {} {} on {}{}",
            spec.name,
            image.display(),
            if spec.guest == crate::eval::spec::GuestKind::Vm {
                "VM"
            } else {
                "CT"
            },
            generation.vmid,
            generation.node,
            if args.dry_run { " (dry run)" } else { "" }
        ));
        let Some(deployer) = deployer(spec, &evaluator.repo.root, args.dry_run, &progress, printer)
        else {
            failed = true;
            continue;
        };
        let target = DeployTarget {
            generation,
            tags: spec.config.proxmox.tags.clone(),
            upload_storage: spec.config.proxmox.template_storage.clone(),
        };
        let host = profiles.host(&spec.name);
        match runtime.block_on(deployer.deploy(&host, store, target, &store_path)) {
            Ok(report) => {
                if report.action == "deployed" {
                    printer.status(&format!(
                        "{}: generation {} deployed and healthy",
                        spec.name, report.generation
                    ));
                }
                reports.push(serde_json::to_value(&report)?);
            }
            Err(error) => {
                let message = deploy::error_chain(&error);
                printer.fatal(&message);
                failed = true;
                reports.push(serde_json::json!({
                    "host": spec.name, "action": "failed", "error": message,
                }));
            }
        }
    }
    if args.json {
        printer.json(&serde_json::json!({ "kind": "deploy", "version": 1, "hosts": reports }))?;
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// The generation record for deploying `spec`'s built `image` (its number
/// and volumes are filled in by the deploy).
fn generation_for(
    spec: &HostSpec,
    image: &Path,
    derivation: &str,
    overlay: Option<String>,
    revision: &Option<String>,
) -> Result<Generation, String> {
    let (node, vmid) = node_and_vmid(spec)?;
    let (kind, guest, resize) = match spec.guest {
        crate::eval::spec::GuestKind::Lxc => (
            GuestKind::Lxc,
            guest::lxc_params(&spec.name, &spec.config),
            None,
        ),
        crate::eval::spec::GuestKind::Vm => {
            let path = image.join("vm.json");
            let vm: crate::builders::vm::spec::VmSpec = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
                .map_err(|e| format!("{}: {e}", path.display()))?;
            let (params, (disk, size)) = guest::vm_params(&vm);
            (GuestKind::Vm, params, Some(profile::Resize { disk, size }))
        }
    };
    Ok(Generation {
        version: RECORD_VERSION,
        host: spec.name.clone(),
        number: 0,
        kind,
        store_path: image.display().to_string(),
        derivation: derivation.to_owned(),
        overlay,
        config: serde_json::to_value(spec.config.for_build()).map_err(|e| e.to_string())?,
        node,
        vmid,
        volumes: BTreeMap::new(),
        guest,
        resize,
        health: spec.config.health.clone(),
        endpoint: spec.config.proxmox.api.url.clone().unwrap_or_default(),
        created: profile::now_rfc3339(),
        revision: revision.clone(),
        outcome: Outcome::InProgress,
        events: Vec::new(),
    })
}

pub(super) fn rollback(
    evaluator: &Evaluator,
    store: &Store,
    args: &RollbackArgs,
    printer: &Printer,
) -> anyhow::Result<ExitCode> {
    let Some(spec) = host_spec(evaluator, &args.host, printer) else {
        return Ok(ExitCode::from(1));
    };
    let profile = profiles().host(&args.host);
    let generations = profile.generations()?;
    let current = profile.current()?;
    let to = match args.to {
        Some(n) => n,
        None => {
            let Some(previous) = generations
                .iter()
                .rev()
                .filter(|g| current.is_none_or(|c| g.number < c))
                .find(|g| g.outcome == Outcome::Succeeded)
            else {
                printer.fatal(&format!(
                    "{}: no successful generation before the current one ({}) to roll back to; `kiln generations {}` lists them",
                    args.host,
                    current.map_or("none".to_owned(), |c| c.to_string()),
                    args.host
                ));
                return Ok(ExitCode::from(1));
            };
            previous.number
        }
    };
    let progress = reporter(printer);
    let Some(deployer) = deployer(
        &spec,
        &evaluator.repo.root,
        args.dry_run,
        &progress,
        printer,
    ) else {
        return Ok(ExitCode::from(1));
    };
    printer.status(&format!(
        "{}: rolling back to generation {to}{}",
        args.host,
        if args.dry_run { " (dry run)" } else { "" }
    ));
    let result = runtime()?.block_on(deployer.rollback(
        &profile,
        store,
        to,
        spec.config.proxmox.tags.clone(),
        spec.config.proxmox.template_storage.clone(),
    ));
    match result {
        Ok(report) => {
            if !args.dry_run {
                printer.status(&format!("{}: generation {to} runs again", args.host));
            }
            if args.json {
                printer.json(
                    &serde_json::json!({ "kind": "rollback", "version": 1, "report": report }),
                )?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            printer.fatal(&deploy::error_chain(&error));
            Ok(ExitCode::from(1))
        }
    }
}

fn outcome_text(generation: &Generation) -> String {
    match &generation.outcome {
        Outcome::Succeeded => "ok".to_owned(),
        Outcome::InProgress => "interrupted".to_owned(),
        Outcome::Failed {
            rolled_back_to: Some(n),
            ..
        } => format!("failed, rolled back to {n}"),
        Outcome::Failed { .. } => "failed".to_owned(),
    }
}

pub(super) fn generations(
    evaluator: &Evaluator,
    args: &GenerationsArgs,
    printer: &Printer,
) -> anyhow::Result<ExitCode> {
    if args.remote {
        let Some(spec) = host_spec(evaluator, &args.host, printer) else {
            return Ok(ExitCode::from(1));
        };
        let (node, vmid) = match node_and_vmid(&spec) {
            Ok(v) => v,
            Err(message) => {
                printer.fatal(&message);
                return Ok(ExitCode::from(1));
            }
        };
        let progress = reporter(printer);
        let Some(deployer) = deployer(&spec, &evaluator.repo.root, true, &progress, printer) else {
            return Ok(ExitCode::from(1));
        };
        let kind = if spec.guest == crate::eval::spec::GuestKind::Vm {
            "qemu"
        } else {
            "lxc"
        };
        let config = runtime()?.block_on(deployer.client.get(
            &format!("/nodes/{node}/{kind}/{vmid}/config"),
            &BTreeMap::new(),
        ));
        let config = match config {
            Ok(c) => c,
            Err(error) => {
                printer.fatal(&deploy::error_chain(&error));
                return Ok(ExitCode::from(1));
            }
        };
        let history = guest::history_from_description(config["description"].as_str().unwrap_or(""));
        if args.json {
            let list: Vec<_> = history
                .iter()
                .map(|(n, hash, at)| serde_json::json!({"number": n, "store_hash": hash, "created": at}))
                .collect();
            printer.json(&serde_json::json!({"kind": "generations", "version": 1, "host": args.host, "source": "guest-notes", "generations": list}))?;
        } else {
            for (number, hash, at) in &history {
                printer.line(&format!("{number:>4}  {at}  {hash}"))?;
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let profile = profiles().host(&args.host);
    let list = profile.generations()?;
    let current = profile.current()?;
    if args.json {
        printer.json(&serde_json::json!({
            "kind": "generations", "version": 1, "host": args.host, "current": current,
            "generations": list,
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    if list.is_empty() {
        printer.status(&format!(
            "{}: never deployed from this machine (try --remote)",
            args.host
        ));
        return Ok(ExitCode::SUCCESS);
    }
    for g in &list {
        let mark = if current == Some(g.number) { "*" } else { " " };
        printer.line(&format!(
            "{mark}{:>4}  {}  {}  {} {}  {:<12}  {}",
            g.number,
            g.created,
            g.store_hash(),
            g.node,
            g.vmid,
            g.revision.as_deref().unwrap_or("-"),
            outcome_text(g)
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn diff(args: &DiffArgs, printer: &Printer) -> anyhow::Result<ExitCode> {
    let profile = profiles().host(&args.host);
    let (a, b) = match args.generations.as_slice() {
        [a, b] => (*a, *b),
        [b] => {
            let Some(current) = profile.current()? else {
                printer.fatal(&format!("{}: nothing deployed to compare with", args.host));
                return Ok(ExitCode::from(1));
            };
            (current, *b)
        }
        _ => {
            let list = profile.generations()?;
            let Some(current) = profile.current()? else {
                printer.fatal(&format!("{}: nothing deployed yet", args.host));
                return Ok(ExitCode::from(1));
            };
            let Some(previous) = list
                .iter()
                .rev()
                .find(|g| g.number < current && g.outcome == Outcome::Succeeded)
            else {
                printer.fatal(&format!(
                    "{}: generation {current} is the first; name two generations to compare",
                    args.host
                ));
                return Ok(ExitCode::from(1));
            };
            (previous.number, current)
        }
    };
    let (first, second) = match (profile.get(a), profile.get(b)) {
        (Ok(x), Ok(y)) => (x, y),
        (Err(e), _) | (_, Err(e)) => {
            printer.fatal(&e.to_string());
            return Ok(ExitCode::from(1));
        }
    };
    let changes = profile::diff::diff(&first, &second);
    if args.json {
        printer.json(&serde_json::json!({
            "kind": "diff", "version": 1, "host": args.host, "from": a, "to": b, "diff": changes,
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    printer.line(&format!("{}: generation {a} → {b}", args.host))?;
    for (title, list) in [
        ("packages", &changes.packages),
        ("files", &changes.files),
        ("config", &changes.config),
        ("proxmox", &changes.guest),
    ] {
        if list.is_empty() {
            continue;
        }
        printer.line(&format!("{title}:"))?;
        for change in list {
            let line = match (&change.before, &change.after) {
                (None, Some(after)) => format!("  + {} {after}", change.key),
                (Some(before), None) => format!("  - {} {before}", change.key),
                (Some(before), Some(after)) => format!("  ~ {} {before} → {after}", change.key),
                (None, None) => continue,
            };
            printer.line(&line)?;
        }
    }
    if changes.is_empty() {
        printer.line("no differences")?;
    }
    for note in &changes.notes {
        printer.status(&format!("note: {note}"));
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn status(
    evaluator: &Evaluator,
    store: &Store,
    args: &StatusArgs,
    printer: &Printer,
) -> anyhow::Result<ExitCode> {
    let names: Vec<String> = if args.hosts.is_empty() {
        evaluator
            .repo
            .names(DocKind::Host)
            .map(str::to_owned)
            .collect()
    } else {
        args.hosts.clone()
    };
    let targets: Vec<Target> = names
        .iter()
        .map(|n| Target {
            kind: DocKind::Host,
            name: n.clone(),
            part: None,
        })
        .collect();
    let Some(plan) = super::build_cmd::plan_for(evaluator, &targets, printer)? else {
        return Ok(ExitCode::from(1));
    };
    let profiles = profiles();
    let mut rows = Vec::new();
    let runtime = runtime()?;
    let quiet = |_: Progress| {};
    for name in &names {
        let Some((_, hash)) = plan.roots.iter().find(|(t, _)| t == name) else {
            continue;
        };
        let wanted = store.real_path(plan.output(hash)).display().to_string();
        let profile = profiles.host(name);
        let current = match profile.current()? {
            Some(n) => Some(profile.get(n)?),
            None => None,
        };
        let state = match &current {
            None => "not deployed",
            Some(g) if g.store_path == wanted => "up to date",
            Some(_) => "out of date",
        };
        // What Proxmox runs, when the host's endpoint can be reached.
        let guest = match host_spec(evaluator, name, printer) {
            Some(spec) => match (
                node_and_vmid(&spec),
                try_deployer(&spec, &evaluator.repo.root, true, &quiet, printer.quiet()),
            ) {
                (Ok((_, vmid)), Ok(deployer)) => match runtime.block_on(deployer.observe(vmid)) {
                    Ok(Some(observed)) => serde_json::json!(observed),
                    Ok(None) => serde_json::json!("missing"),
                    Err(e) => serde_json::json!({"unknown": deploy::error_chain(&e)}),
                },
                (Err(e), _) | (_, Err(e)) => serde_json::json!({"unknown": e}),
            },
            None => serde_json::Value::Null,
        };
        rows.push(serde_json::json!({
            "guest": guest,
            "host": name,
            "generation": current.as_ref().map(|g| g.number),
            "deployed": current.as_ref().map(|g| g.store_path.clone()),
            "repo": wanted,
            "built": store.is_valid(plan.output(hash)),
            "state": state,
        }));
    }
    if args.json {
        printer.json(&serde_json::json!({ "kind": "status", "version": 1, "hosts": rows }))?;
        return Ok(ExitCode::SUCCESS);
    }
    for row in &rows {
        let short = |v: &serde_json::Value| {
            v.as_str()
                .and_then(|p| Path::new(p).file_name())
                .map_or("-".to_owned(), |n| {
                    n.to_string_lossy().chars().take(12).collect()
                })
        };
        let guest = &row["guest"];
        let runs = if guest == "missing" {
            "guest missing".to_owned()
        } else if let Some(running) = guest["running"].as_bool() {
            format!(
                "guest {} g{}",
                if running { "running" } else { "stopped" },
                guest["generation"]
                    .as_u64()
                    .map_or("?".to_owned(), |n| n.to_string())
            )
        } else {
            "guest not checked".to_owned()
        };
        printer.line(&format!(
            "{:<16} {:<13} {runs:<20} deployed: {} {:<12}  repo: {}{}",
            row["host"].as_str().unwrap_or_default(),
            row["state"].as_str().unwrap_or_default(),
            row["generation"]
                .as_u64()
                .map_or("-".to_owned(), |n| format!("g{n}")),
            short(&row["deployed"]),
            short(&row["repo"]),
            if row["built"].as_bool() == Some(true) {
                ""
            } else {
                " (not built)"
            }
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn gc(
    evaluator: &Evaluator,
    args: &GcArgs,
    printer: &Printer,
) -> anyhow::Result<ExitCode> {
    if args.keep == 0 {
        printer.fatal("--keep must be at least 1 (the current generation is always kept)");
        return Ok(ExitCode::from(1));
    }
    let profiles = profiles();
    let runtime = runtime()?;
    let progress = reporter(printer);
    let mut deleted = Vec::new();
    let mut failed = false;
    for host in profiles.hosts()? {
        let profile = profiles.host(&host);
        let list = profile.generations()?;
        let current = profile.current()?;
        let keep: Vec<&Generation> = list
            .iter()
            .filter(|g| {
                current == Some(g.number)
                    || list.len() <= args.keep as usize
                    || g.number >= list[list.len() - args.keep as usize].number
            })
            .collect();
        let kept_volumes: std::collections::BTreeSet<&String> =
            keep.iter().flat_map(|g| g.volumes.values()).collect();
        if !args.dry_run {
            for g in &list {
                if !keep.iter().any(|k| k.number == g.number) {
                    profile.remove_root(g.number)?;
                }
            }
        }
        if !args.remote {
            continue;
        }
        let Some(spec) = host_spec(evaluator, &host, printer) else {
            printer.status(&format!(
                "{host}: not in the repo any more; its volumes are left alone"
            ));
            continue;
        };
        let Some(deployer) = deployer(
            &spec,
            &evaluator.repo.root,
            args.dry_run,
            &progress,
            printer,
        ) else {
            failed = true;
            continue;
        };
        // Every (node, storage) this host's generations uploaded to.
        let mut places = std::collections::BTreeSet::new();
        for g in &list {
            for volid in g.volumes.values() {
                if let Some((storage, _)) = volid.split_once(':') {
                    places.insert((g.node.clone(), storage.to_owned()));
                }
            }
        }
        let prefix = format!("kiln-{host}-");
        for (node, storage) in places {
            let listed = runtime.block_on(deployer.client.get(
                &format!("/nodes/{node}/storage/{storage}/content"),
                &BTreeMap::new(),
            ));
            let listed = match listed {
                Ok(l) => l,
                Err(e) => {
                    printer.fatal(&deploy::error_chain(&e));
                    failed = true;
                    continue;
                }
            };
            for volume in listed.as_array().into_iter().flatten() {
                let Some(volid) = volume["volid"].as_str() else {
                    continue;
                };
                let name = volid.rsplit('/').next().unwrap_or(volid);
                if !name.starts_with(&prefix) || kept_volumes.contains(&volid.to_owned()) {
                    continue;
                }
                if args.dry_run {
                    printer.status(&format!("  would delete {volid}"));
                    deleted.push(volid.to_owned());
                    continue;
                }
                let path = format!("/nodes/{node}/storage/{storage}/content/{volid}");
                let result = runtime.block_on(async {
                    let data = deployer.client.delete(&path, &BTreeMap::new()).await?;
                    if let Some(upid) = data.as_str().and_then(crate::proxmox::client::Upid::parse)
                    {
                        deployer
                            .client
                            .wait_task(&upid, deployer.task_timeout)
                            .await?;
                    }
                    Ok::<_, crate::proxmox::client::ApiError>(())
                });
                match result {
                    Ok(()) => {
                        printer.status(&format!("  deleted {volid}"));
                        deleted.push(volid.to_owned());
                    }
                    Err(e) => {
                        printer.fatal(&deploy::error_chain(&e));
                        failed = true;
                    }
                }
            }
        }
    }
    if args.json {
        printer.json(&serde_json::json!({ "kind": "gc", "version": 1, "dry_run": args.dry_run, "deleted": deleted }))?;
    } else {
        printer.status(&format!(
            "{} {} volume{}",
            if args.dry_run {
                "would delete"
            } else {
                "deleted"
            },
            deleted.len(),
            if deleted.len() == 1 { "" } else { "s" }
        ));
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
