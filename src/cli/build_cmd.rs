//! `kiln build`, `kiln show-derivation`, `kiln store …` and the hidden
//! `kiln internal-build` that runs one builder in its sandbox.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use clap::{Args, Subcommand};

use super::output::Printer;
use crate::build::{self, BuildOptions, Progress, Realised, Status, Substituters};
use crate::config::settings::{self, CacheConfig, CacheOverrides};
use crate::eval::Evaluator;
use crate::fetch::FetchProgress;
use crate::ops::{self, Target};
use crate::store::Store;

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// HOST (its LXC template or VM image), image:NAME, or stack:NAME
    /// (its bundles), optionally `#PART`: `HOST#overlay`, `HOST#packages`,
    /// `image:NAME#packages`, `stack:NAME#compose`, `stack:NAME#k8s@prod`.
    pub targets: Vec<Target>,
    /// Build every host.
    #[arg(long)]
    pub all: bool,
    /// For stack targets: render this environment (`[env.ENV]`) instead
    /// of the base model (same as `stack:NAME#@ENV`).
    #[arg(long, value_name = "ENV")]
    pub env: Option<String>,
    /// Build only this part of each target that names none (`overlay`:
    /// a host's overlay; `packages`: the pinned Debian set and its index).
    #[arg(long, value_name = "PART")]
    pub part: Option<String>,
    /// Builders to run at once (default: the number of cores).
    #[arg(short, long, value_name = "N")]
    pub jobs: Option<usize>,
    /// List what would be built, and exit.
    #[arg(long)]
    pub dry_run: bool,
    /// For each derivation to build, say what changed since its last build.
    #[arg(long)]
    pub explain: bool,
    /// Rebuild the targets (already built) and compare byte for byte.
    #[arg(long)]
    pub check: bool,
    /// Keep the scratch directory of a failed build.
    #[arg(long)]
    pub keep_failed: bool,
    /// Result link to create (default `result`, `result-HOST` for several targets).
    #[arg(short = 'o', long = "out-link", value_name = "LINK")]
    pub out_link: Option<PathBuf>,
    /// Create no result links (and so no gc roots).
    #[arg(long, conflicts_with = "out_link")]
    pub no_link: bool,
    /// Fail unless lockfile.toml pins every input of the configuration
    /// exactly as configured, as `kiln lock --locked` checks (for CI).
    #[arg(long)]
    pub locked: bool,
    /// Use no network: fail, naming each one, if an input is not already
    /// in the store.
    #[arg(long)]
    pub offline: bool,
    /// Downloads to run at once.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub max_downloads: usize,
    /// Substitute from this binary cache (`s3://BUCKET/PREFIX`,
    /// `file:///PATH`) instead of those in kiln.toml or
    /// `KILN_SUBSTITUTERS`; repeat for several, tried in order.
    #[arg(long = "substituter", value_name = "URL")]
    pub substituters: Vec<String>,
    /// Trust signatures by this public key (`NAME:BASE64`), besides those
    /// in kiln.toml and `KILN_TRUSTED_KEYS`; repeat for several.
    #[arg(long = "trusted-key", value_name = "KEY")]
    pub trusted_keys: Vec<String>,
    /// Build everything here: ask no binary cache.
    #[arg(long, conflicts_with = "substituters")]
    pub no_substitute: bool,
    /// Build only shard I of N (`2/4`): the targets are dealt out
    /// between N runners the same way on each (see `kiln plan --shard`).
    #[arg(long, value_name = "I/N")]
    pub shard: Option<crate::plan::shard::ShardSpec>,
    /// Print what was built as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Re-hash every valid path; exit 1 if any does not match its record.
    Verify {
        #[arg(long)]
        json: bool,
    },
    /// Delete every path that no root (result link, kept generation) reaches.
    Gc {
        /// Only list what would be deleted.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Show a valid path's record: hashes, size, references, deriver.
    PathInfo {
        /// A store path, or a result link.
        path: String,
        #[arg(long)]
        json: bool,
    },
    /// List valid paths.
    Ls {
        #[arg(long)]
        json: bool,
    },
}

/// Build progress on stderr. On a terminal (indicatif): finished builds
/// scroll by above a status line (`[3/36] building a, b`) and one bar per
/// running download with bytes, bytes/s and ETA. Otherwise one line per
/// start and finish (and per download retry). Nothing with -q.
struct BuildProgress<'a> {
    printer: &'a Printer,
    store: &'a Path,
    live: Option<Live>,
    state: Mutex<LiveState>,
}

/// The terminal side: the bars.
struct Live {
    bars: indicatif::MultiProgress,
    status: indicatif::ProgressBar,
    downloads: Mutex<std::collections::BTreeMap<String, indicatif::ProgressBar>>,
}

#[derive(Default)]
struct LiveState {
    total: usize,
    done: usize,
    running: Vec<String>,
}

impl<'a> BuildProgress<'a> {
    fn new(printer: &'a Printer, store: &'a Path) -> BuildProgress<'a> {
        let live = printer.interactive().then(|| {
            let bars =
                indicatif::MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::stderr());
            let status = bars.add(indicatif::ProgressBar::new_spinner());
            status.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {wide_msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            status.enable_steady_tick(std::time::Duration::from_millis(120));
            Live {
                bars,
                status,
                downloads: Mutex::new(Default::default()),
            }
        });
        BuildProgress {
            printer,
            store,
            live,
            state: Mutex::new(LiveState::default()),
        }
    }

    fn redraw(&self, state: &LiveState) {
        let Some(live) = &self.live else { return };
        // `wide_msg` cuts it to the terminal's width.
        let line = format!(
            "[{}/{}] {}",
            state.done,
            state.total,
            if state.running.is_empty() {
                String::new()
            } else {
                format!("running {}", state.running.join(", "))
            }
        );
        live.status.set_message(line);
    }

    /// A line that stays (above the bars on a terminal).
    fn say(&self, line: &str) {
        match &self.live {
            Some(live) => {
                let _ = live.bars.println(line);
            }
            None => self.printer.status(line),
        }
    }

    /// Remove the bars (before the final output).
    fn clear(&self) {
        if let Some(live) = &self.live {
            live.status.finish_and_clear();
            let _ = live.bars.clear();
        }
    }
}

impl Progress for BuildProgress<'_> {
    fn planned(&self, total: usize) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.total = total;
        self.redraw(&state);
    }

    fn started(&self, derivation: &crate::plan::Derivation) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.running.push(derivation.name.clone());
        if self.live.is_some() {
            self.redraw(&state);
        } else if derivation.builder == crate::builders::fetch::BUILDER {
            let from = crate::builders::fetch::first_url(derivation).unwrap_or_default();
            self.printer.status(&format!("fetching {from}"));
        } else {
            self.printer
                .status(&format!("building {}", derivation.name));
        }
    }

    fn substituting(&self, derivation: &crate::plan::Derivation, from: &str) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.running.push(derivation.name.clone());
        if self.live.is_some() {
            self.redraw(&state);
        } else {
            self.printer
                .status(&format!("substituting {} from {from}", derivation.name));
        }
    }

    fn warning(&self, message: &str) {
        self.say(message);
    }

    fn finished(&self, realised: &Realised) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.running.retain(|n| *n != realised.name);
        state.done += 1;
        let path = self.store.join(realised.path.to_string());
        let line = match &realised.status {
            Status::Valid => format!("{} is valid (built by another process)", realised.name),
            Status::Built => format!(
                "{} {} in {:.2}s: {}",
                if realised.builder == crate::builders::fetch::BUILDER {
                    "fetched"
                } else {
                    "built"
                },
                realised.name,
                realised.seconds,
                path.display()
            ),
            Status::Substituted { from } => format!(
                "substituted {} from {from} in {:.2}s: {}",
                realised.name,
                realised.seconds,
                path.display()
            ),
            Status::CheckedSame => {
                format!("checked {}: identical to the first build", realised.name)
            }
            Status::CheckedDifferent { differences } => format!(
                "checked {}: NOT reproducible ({} difference{})",
                realised.name,
                differences.len(),
                if differences.len() == 1 { "" } else { "s" }
            ),
        };
        self.say(&line);
        self.redraw(&state);
    }

    fn downloads(&self) -> &dyn FetchProgress {
        self
    }
}

impl FetchProgress for BuildProgress<'_> {
    fn started(&self, url: &str, total: Option<u64>) {
        let Some(live) = &self.live else { return };
        let mut downloads = live.downloads.lock().unwrap_or_else(|p| p.into_inner());
        let bar = downloads.entry(url.to_owned()).or_insert_with(|| {
            let bar = live.bars.add(indicatif::ProgressBar::no_length());
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "  {prefix:32!} [{bar:24}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} ETA {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_prefix(url.rsplit('/').next().unwrap_or(url).to_owned());
            bar
        });
        if let Some(total) = total {
            bar.set_length(total);
        }
    }

    fn advanced(&self, url: &str, bytes: u64) {
        let Some(live) = &self.live else { return };
        let downloads = live.downloads.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(bar) = downloads.get(url) {
            bar.set_position(bytes);
        }
    }

    fn retrying(&self, url: &str, attempt: u32, reason: &str) {
        self.say(&format!("retrying {url} (attempt {attempt}): {reason}"));
    }

    fn finished(&self, url: &str) {
        let Some(live) = &self.live else { return };
        let mut downloads = live.downloads.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(bar) = downloads.remove(url) {
            bar.finish_and_clear();
            live.bars.remove(&bar);
        }
    }
}

/// A target as part of a result link's name: `image:debian-12` →
/// `image-debian-12`, `db#overlay` → `db-overlay`.
fn link_suffix(target: &str) -> String {
    target.replace([':', '#', '/', '@'], "-")
}

/// Read lockfile.toml; with `locked`, also require it to pin every input
/// of the configuration as configured. `None` after printing why not.
fn read_lock(
    evaluator: &Evaluator,
    locked: bool,
    printer: &Printer,
) -> anyhow::Result<Option<crate::lock::Lockfile>> {
    let path = evaluator.repo.root.join("lockfile.toml");
    let lock = match ops::lock::read(&path) {
        Ok(lock) => lock,
        Err(error) => {
            printer.fatal(&error.to_string());
            return Ok(None);
        }
    };
    if locked {
        let wanted = match ops::lock::wanted_inputs(evaluator) {
            Ok(wanted) => wanted,
            Err(ops::lock::LockError::Invalid(diagnostics)) => {
                let sources = &evaluator.repo.sources;
                for diagnostic in &diagnostics {
                    printer.diagnostic(diagnostic, sources);
                }
                printer.error_count(diagnostics.len(), sources, &diagnostics);
                return Ok(None);
            }
            Err(error) => return Err(error.into()),
        };
        let status = crate::lock::inputs::status(&lock, &wanted);
        if !status.up_to_date() {
            printer.fatal(&ops::lock::LockError::Locked(ops::lock::describe(&status)).to_string());
            return Ok(None);
        }
    }
    Ok(Some(lock))
}

/// The binary caches a build substitutes from: kiln.toml's `[cache]`,
/// replaced or added to by the environment and the command line
/// ([`CacheConfig::resolve`]). With `offline`, only caches on this machine
/// (`file://`). A cache that cannot be opened is reported and skipped, as
/// one that cannot be reached is. `Err(exit code)` after printing why the
/// configuration is wrong.
pub(super) fn open_substituters(
    repo: &Path,
    overrides: &CacheOverrides,
    offline: bool,
    printer: &Printer,
) -> Result<Option<Arc<Substituters>>, ExitCode> {
    let settings = match settings::load(repo) {
        Ok(settings) => settings,
        Err(error) => {
            printer.settings_error(&error);
            return Err(ExitCode::from(1));
        }
    };
    let config = match CacheConfig::resolve(&settings.cache, overrides) {
        Ok(config) => config,
        Err(message) => {
            printer.fatal(&message);
            return Err(ExitCode::from(1));
        }
    };
    if !config.substituters.is_empty() && config.trusted_keys.is_empty() {
        printer.fatal(&format!(
            "substituters are configured ({}) but no key is trusted, so nothing from them could be used\n  \
             hint: add the cache's public key to `trusted_keys` under [cache] in kiln.toml (or KILN_TRUSTED_KEYS, \
             or --trusted-key), or build without caches with --no-substitute",
            config.substituters.join(", ")
        ));
        return Err(ExitCode::from(1));
    }
    let mut caches = Vec::new();
    for url in &config.substituters {
        if offline && !url.starts_with("file://") {
            printer.status(&format!("--offline: not substituting from {url}"));
            continue;
        }
        match crate::cache::CacheBackend::open(url) {
            Ok(cache) => caches.push(cache),
            Err(error) => printer.status(&format!(
                "warning: not substituting from {url}: {error}\n  (building instead what it would have given)"
            )),
        }
    }
    if caches.is_empty() {
        return Ok(None);
    }
    Ok(Some(Arc::new(Substituters::new(
        caches,
        config.trusted_keys,
    ))))
}

/// The plan, or `None` after printing why there is none.
fn report_failure(
    evaluator: &Evaluator,
    printer: &Printer,
    plan: Result<crate::plan::Plan, ops::build::PlanFailure>,
) -> Option<crate::plan::Plan> {
    match plan {
        Ok(plan) => Some(plan),
        Err(failure) => {
            for diagnostic in failure.diagnostics() {
                printer.diagnostic(diagnostic, &evaluator.repo.sources);
            }
            printer.fatal(&failure.to_string());
            None
        }
    }
}

/// The targets named on the command line, plus every host with `all`,
/// each given `part` when it names none, and stack targets `env`.
pub(super) fn expand_targets(
    evaluator: &Evaluator,
    named: &[Target],
    all: bool,
    part: Option<&str>,
    env: Option<&str>,
) -> Vec<Target> {
    let mut targets = named.to_vec();
    if all {
        for name in evaluator.repo.names(crate::config::DocKind::Host) {
            targets.push(Target {
                kind: crate::config::DocKind::Host,
                name: name.to_owned(),
                part: None,
            });
        }
    }
    for target in &mut targets {
        if target.part.is_none() {
            target.part = part.map(str::to_owned);
        }
        if let Some(env) = env
            && target.kind == crate::config::DocKind::Stack
            && !target.part.as_deref().is_some_and(|p| p.contains('@'))
        {
            target.part = Some(format!("{}@{env}", target.part.as_deref().unwrap_or("")));
        }
    }
    targets
}

pub(super) fn build(
    evaluator: &Evaluator,
    store: &Store,
    args: &BuildArgs,
    printer: &Printer,
) -> anyhow::Result<ExitCode> {
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let Some(lock) = read_lock(evaluator, args.locked, printer)? else {
        return Ok(ExitCode::from(1));
    };
    let targets = expand_targets(
        evaluator,
        &args.targets,
        args.all,
        args.part.as_deref(),
        args.env.as_deref(),
    );
    let Some(mut plan) = report_failure(
        evaluator,
        printer,
        ops::build::plan(evaluator, &targets, false, jobs, &lock),
    ) else {
        return Ok(ExitCode::from(1));
    };
    if let Some(shard) = args.shard {
        let mine = plan.shards(shard.count).swap_remove(shard.index - 1);
        printer.status(&format!(
            "shard {shard}: {} of {} target{}{}",
            mine.roots.len(),
            plan.roots.len(),
            if plan.roots.len() == 1 { "" } else { "s" },
            if mine.roots.is_empty() {
                " (nothing to build: more shards than targets)"
            } else {
                ""
            }
        ));
        if mine.roots.is_empty() {
            return Ok(ExitCode::SUCCESS);
        }
        plan.keep_roots(&mine.roots);
    }
    let overrides = CacheOverrides {
        substituters: args.substituters.clone(),
        env_substituters: std::env::var("KILN_SUBSTITUTERS").ok(),
        trusted_keys: args.trusted_keys.clone(),
        env_trusted_keys: std::env::var("KILN_TRUSTED_KEYS").ok(),
        disabled: args.no_substitute,
    };
    let substituters =
        match open_substituters(&evaluator.repo.root, &overrides, args.offline, printer) {
            Ok(substituters) => substituters,
            Err(code) => return Ok(code),
        };
    let decision = match build::decide(
        store,
        &plan,
        args.check,
        substituters.as_deref(),
        &|message| printer.status(message),
    ) {
        Ok(decision) => decision,
        Err(error) => {
            printer.fatal(&format!(
                "asking the binary caches: {error}\n  (nothing was fetched or built; `--no-substitute` builds without caches)"
            ));
            return Ok(ExitCode::from(1));
        }
    };
    if args.check {
        // --check compares a rebuild with what is in the store: a target
        // that is neither built nor in a cache has nothing to compare with.
        let unchecked: Vec<String> = plan
            .roots
            .iter()
            .filter(|(_, hash)| {
                !store.is_valid(plan.output(hash))
                    && !decision.substitute.iter().any(|(h, _)| h == hash)
            })
            .map(|(target, _)| format!("  {target}"))
            .collect();
        if !unchecked.is_empty() {
            printer.fatal(&format!(
                "--check rebuilds a target and compares it with the one already built, but {} {} not in the store {} and no binary cache has {}:\n{}\nbuild {} first (`kiln build` without --check), or configure the cache that has {}",
                if unchecked.len() == 1 { "this target" } else { "these targets" },
                if unchecked.len() == 1 { "is" } else { "are" },
                store.root().display(),
                if unchecked.len() == 1 { "it" } else { "them" },
                unchecked.join("\n"),
                if unchecked.len() == 1 { "it" } else { "them" },
                if unchecked.len() == 1 { "it" } else { "them" },
            ));
            return Ok(ExitCode::from(1));
        }
    }
    let needed = &decision.build;
    if args.offline {
        let mut missing: Vec<String> = needed
            .iter()
            .map(|hash| &plan.derivations[hash])
            .filter(|d| d.builder == crate::builders::fetch::BUILDER)
            .map(|d| {
                let url = crate::builders::fetch::first_url(d).unwrap_or_default();
                let output = plan.output(&d.hash());
                if store.is_valid(output) {
                    format!(
                        "  {} (from {url}; in the store, but --check downloads it again)",
                        d.name
                    )
                } else {
                    format!("  {} (from {url})", d.name)
                }
            })
            .collect();
        missing.sort();
        if !missing.is_empty() {
            printer.fatal(&format!(
                "--offline: {} input{} would need the network (not in the store {}):\n{}\nbuild once without --offline (or copy a store that has them) to fetch them",
                missing.len(),
                if missing.len() == 1 { "" } else { "s" },
                store.root().display(),
                missing.join("\n")
            ));
            return Ok(ExitCode::from(1));
        }
    }
    if args.dry_run || args.explain {
        let from = |cache: usize| {
            substituters
                .as_ref()
                .map_or(String::new(), |s| s.caches[cache].url().to_owned())
        };
        let mut actions = Vec::new();
        for (hash, cache) in &decision.substitute {
            let path = store.real_path(plan.output(hash));
            if !args.json {
                printer.line(&format!(
                    "would substitute {} from {}",
                    path.display(),
                    from(*cache)
                ))?;
            }
            let derivation = &plan.derivations[hash];
            actions.push(serde_json::json!({
                "name": derivation.name, "builder": derivation.builder, "drv": hash,
                "path": path, "action": "substitute", "from": from(*cache),
            }));
        }
        for hash in needed {
            let derivation = &plan.derivations[hash];
            let path = store.real_path(plan.output(hash));
            let (action, line) = if derivation.builder == crate::builders::fetch::BUILDER {
                let url = crate::builders::fetch::first_url(derivation).unwrap_or_default();
                (
                    "fetch",
                    format!("would fetch {} from {url}", path.display()),
                )
            } else if derivation.is_fixed_output() {
                ("copy", format!("would copy {}", path.display()))
            } else if args.check && plan.roots.iter().any(|(_, h)| h == hash) {
                (
                    "check",
                    format!("would rebuild and compare {}", path.display()),
                )
            } else {
                ("build", format!("would build {}", path.display()))
            };
            actions.push(serde_json::json!({
                "name": derivation.name, "builder": derivation.builder, "drv": hash,
                "path": path, "action": action,
            }));
            if args.json {
                continue;
            }
            printer.line(&line)?;
            if args.explain {
                for reason in build::explain(store, derivation) {
                    printer.line(&format!("    because {reason}"))?;
                }
            }
        }
        if decision.is_empty() {
            printer.status("nothing to build: every output is valid");
        }
        if args.dry_run {
            if args.json {
                let targets: Vec<serde_json::Value> = plan
                    .roots
                    .iter()
                    .map(|(target, hash)| {
                        let action = if decision.build.contains(hash) {
                            if args.check { "check" } else { "build" }
                        } else if decision.substitute.iter().any(|(h, _)| h == hash) {
                            "substitute"
                        } else {
                            "valid"
                        };
                        serde_json::json!({
                            "target": target.to_string(), "drv": hash,
                            "path": store.real_path(plan.output(hash)), "action": action,
                        })
                    })
                    .collect();
                printer.json(&serde_json::json!({
                    "kind": "build-dry-run", "version": 1,
                    "substituters": substituters.as_ref().map_or(Vec::new(), |s| s.caches.iter().map(|c| c.url().to_owned()).collect()),
                    "targets": targets, "derivations": actions,
                }))?;
            }
            return Ok(ExitCode::SUCCESS);
        }
    }
    let options = BuildOptions {
        jobs: args
            .jobs
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        check: args.check,
        keep_failed: args.keep_failed,
        repo: evaluator.repo.root.clone(),
        kiln: std::env::current_exe()?,
        fetch: crate::fetch::FetchOptions {
            parallel: args.max_downloads.max(1),
            ..crate::fetch::FetchOptions::default()
        },
        substituters,
    };
    let Some(results) = realise(store, &plan, &decision, &options, printer) else {
        return Ok(ExitCode::from(1));
    };
    let built = results.iter().filter(|r| r.status == Status::Built).count();
    let substituted = results
        .iter()
        .filter(|r| matches!(r.status, Status::Substituted { .. }))
        .count();
    if substituted > 0 {
        printer.status(&format!(
            "substituted {substituted} output{} from binary caches; built {built}",
            if substituted == 1 { "" } else { "s" },
        ));
    } else if built == 0 && !args.check {
        printer.status(&format!(
            "nothing to build: {} target{} already built",
            plan.roots.len(),
            if plan.roots.len() == 1 { "" } else { "s" }
        ));
    }
    // Result links: gc roots for what was asked for.
    if !args.no_link && !args.check {
        let several = plan.roots.len() > 1;
        for (target, hash) in &plan.roots {
            let link = match (&args.out_link, several) {
                (Some(link), false) => link.clone(),
                (Some(link), true) => {
                    PathBuf::from(format!("{}-{}", link.display(), link_suffix(target)))
                }
                (None, false) => PathBuf::from("result"),
                (None, true) => PathBuf::from(format!("result-{}", link_suffix(target))),
            };
            store.add_result_link(&link, plan.output(hash))?;
        }
    }
    let mut failed_check = false;
    for result in &results {
        if let Status::CheckedDifferent { differences } = &result.status {
            failed_check = true;
            for difference in differences {
                printer.status(&format!("  {}: {difference}", result.name));
            }
        }
    }
    if args.json {
        let results: Vec<serde_json::Value> = results
            .iter()
            .map(|r| {
                serde_json::json!({
                    "name": r.name, "builder": r.builder, "drv": r.drv, "path": store.real_path(&r.path),
                    "status": r.status, "seconds": r.seconds,
                })
            })
            .collect();
        printer.json(&serde_json::json!({ "kind": "build", "version": 1, "results": results }))?;
    } else {
        for (_, hash) in &plan.roots {
            printer.line(&store.real_path(plan.output(hash)).display().to_string())?;
        }
    }
    Ok(if failed_check {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Build what `plan` needs, with progress; `None` after printing why it
/// failed.
fn realise(
    store: &Store,
    plan: &crate::plan::Plan,
    decision: &build::Decision,
    options: &BuildOptions,
    printer: &Printer,
) -> Option<Vec<Realised>> {
    if let build::sandbox::Isolation::Unavailable(reason) = build::sandbox::Isolation::detect() {
        printer.status(&format!(
            "warning: builders run WITHOUT network isolation: {reason}"
        ));
    }
    let progress = BuildProgress::new(printer, store.root());
    let results = build::build_decided(store, plan, decision, options, &progress);
    progress.clear();
    match results {
        Ok(results) => Some(results),
        Err(error) => {
            printer.fatal(&error.to_string());
            if let build::BuildError::Fetch { failures } = &error
                && failures
                    .iter()
                    .any(|(_, reason)| reason.contains("hash mismatch"))
            {
                printer.status(
                    "hint: lockfile.toml pins other bytes than the server sent: if the file changed upstream on purpose, re-pin it with `kiln lock --update INPUT` and review the diff",
                );
            }
            None
        }
    }
}

/// Plan and build `targets` (as `kiln build` would, without result
/// links) for a command that needs their images, e.g. `kiln deploy`.
/// `None` after printing why not.
pub(super) fn build_for(
    evaluator: &Evaluator,
    store: &Store,
    targets: &[Target],
    printer: &Printer,
) -> anyhow::Result<Option<crate::plan::Plan>> {
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let Some(lock) = read_lock(evaluator, false, printer)? else {
        return Ok(None);
    };
    let Some(plan) = report_failure(
        evaluator,
        printer,
        ops::build::plan(evaluator, targets, false, jobs, &lock),
    ) else {
        return Ok(None);
    };
    let options = BuildOptions {
        jobs,
        check: false,
        keep_failed: false,
        repo: evaluator.repo.root.clone(),
        kiln: std::env::current_exe()?,
        fetch: crate::fetch::FetchOptions::default(),
        substituters: None,
    };
    if build::needed(store, &plan, false).is_empty() {
        return Ok(Some(plan));
    }
    let overrides = CacheOverrides {
        env_substituters: std::env::var("KILN_SUBSTITUTERS").ok(),
        env_trusted_keys: std::env::var("KILN_TRUSTED_KEYS").ok(),
        ..CacheOverrides::default()
    };
    let options = match open_substituters(&evaluator.repo.root, &overrides, false, printer) {
        Ok(substituters) => BuildOptions {
            substituters,
            ..options
        },
        Err(_) => return Ok(None),
    };
    let decision = match build::decide(store, &plan, false, options.substituters.as_deref(), &|m| {
        printer.status(m)
    }) {
        Ok(decision) => decision,
        Err(error) => {
            printer.fatal(&format!("asking the binary caches: {error}"));
            return Ok(None);
        }
    };
    Ok(realise(store, &plan, &decision, &options, printer).map(|_| plan))
}

/// Plan `targets` without building: the store paths the repo builds now.
pub(super) fn plan_for(
    evaluator: &Evaluator,
    targets: &[Target],
    printer: &Printer,
) -> anyhow::Result<Option<crate::plan::Plan>> {
    let Some(lock) = read_lock(evaluator, false, printer)? else {
        return Ok(None);
    };
    Ok(report_failure(
        evaluator,
        printer,
        ops::build::plan(evaluator, targets, false, 1, &lock),
    ))
}

pub(super) fn show_derivation(
    evaluator: &Evaluator,
    target: &Target,
    json: bool,
    printer: &Printer,
) -> anyhow::Result<ExitCode> {
    let Some(lock) = read_lock(evaluator, false, printer)? else {
        return Ok(ExitCode::from(1));
    };
    let plan = ops::build::plan(evaluator, std::slice::from_ref(target), false, 1, &lock);
    let Some(plan) = report_failure(evaluator, printer, plan) else {
        return Ok(ExitCode::from(1));
    };
    let (_, hash) = &plan.roots[0];
    let derivation = &plan.derivations[hash];
    if json {
        printer.json(&serde_json::json!({
            "kind": "derivation", "version": 1, "hash": hash,
            "output": plan.output(hash), "derivation": derivation,
        }))?;
    } else {
        printer.stdout(&derivation.canonical())?;
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn store_command(
    store: &Store,
    command: &StoreCommand,
    printer: &Printer,
) -> anyhow::Result<ExitCode> {
    match command {
        StoreCommand::Verify { json } => {
            let started = std::time::Instant::now();
            let report = store.verify(|_| {})?;
            let seconds = started.elapsed().as_secs_f64();
            if *json {
                printer.json(&serde_json::json!({ "kind": "store-verify", "version": 1, "report": report, "seconds": seconds }))?;
            } else {
                for corruption in &report.corrupt {
                    printer.status(&format!(
                        "CORRUPT {}: {}",
                        store.real_path(&corruption.path).display(),
                        corruption.problem
                    ));
                }
                printer.status(&format!(
                    "verified {} path{} ({} bytes) in {seconds:.2}s: {} corrupt, {} unregistered (removed by gc)",
                    report.checked,
                    if report.checked == 1 { "" } else { "s" },
                    report.bytes,
                    report.corrupt.len(),
                    report.unregistered.len()
                ));
            }
            Ok(if report.corrupt.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        StoreCommand::Gc { dry_run, json } => {
            let report = store.gc(*dry_run)?;
            if *json {
                printer.json(
                    &serde_json::json!({ "kind": "store-gc", "version": 1, "report": report }),
                )?;
            } else {
                let verb = if *dry_run { "would delete" } else { "deleted" };
                for path in &report.deleted {
                    printer.line(&format!("{verb} {}", store.real_path(path).display()))?;
                }
                printer.status(&format!(
                    "{verb} {} path{} and {} leftover{}, {} bytes; {} root{} keep {} path{} alive",
                    report.deleted.len(),
                    if report.deleted.len() == 1 { "" } else { "s" },
                    report.garbage.len(),
                    if report.garbage.len() == 1 { "" } else { "s" },
                    report.bytes_freed,
                    report.roots,
                    if report.roots == 1 { "" } else { "s" },
                    report.live,
                    if report.live == 1 { "" } else { "s" },
                ));
            }
            Ok(ExitCode::SUCCESS)
        }
        StoreCommand::PathInfo { path, json } => {
            let parsed = store.parse_path(path)?;
            let Some(record) = store.record(&parsed)? else {
                printer.fatal(&format!(
                    "{} is not valid in {}",
                    store.real_path(&parsed).display(),
                    store.root().display()
                ));
                return Ok(ExitCode::from(1));
            };
            if *json {
                printer.json(&serde_json::json!({ "kind": "path-info", "version": 1, "record": record, "nar_hash": record.nar_hash_nix() }))?;
            } else {
                printer.line(&format!(
                    "path:       {}",
                    store.real_path(&record.path).display()
                ))?;
                printer.line(&format!("nar hash:   {}", record.nar_hash_nix()))?;
                printer.line(&format!("nar size:   {}", record.nar_size))?;
                printer.line(&format!(
                    "deriver:    {}",
                    record
                        .deriver
                        .as_ref()
                        .map_or("-".into(), |d| d.to_string())
                ))?;
                for reference in &record.references {
                    printer.line(&format!(
                        "references: {}",
                        store.real_path(reference).display()
                    ))?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        StoreCommand::Ls { json } => {
            let records = store.records()?;
            if *json {
                let paths: Vec<serde_json::Value> = records
                    .iter()
                    .map(|r| serde_json::json!({ "path": store.real_path(&r.path), "nar_size": r.nar_size }))
                    .collect();
                printer.json(
                    &serde_json::json!({ "kind": "store-ls", "version": 1, "paths": paths }),
                )?;
            } else {
                for record in &records {
                    printer.line(&format!(
                        "{:>12}  {}",
                        record.nar_size,
                        store.real_path(&record.path).display()
                    ))?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
