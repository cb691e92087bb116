//! The scheduler: realise a plan's derivations in dependency order, up to
//! `jobs` at a time, each in a sandboxed child process ([`sandbox`]).
//!
//! For each derivation: already valid? skip. Otherwise take its output's
//! lock (another process may be building it: wait, then find it valid),
//! run its builder into scratch, and register the output
//! ([`Store::register`]). `--check` rebuilds a valid output and compares the
//! bytes; `--explain` says what changed since the last build of the same
//! name.

mod explain;
mod run;
pub mod sandbox;
pub mod substitute;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Condvar, Mutex};
use std::time::Instant;

use serde::Serialize;

pub use explain::explain;
pub use run::{BuilderError, run_builder};
pub use substitute::{Decision, Substituters, decide};

use crate::builders::fetch::BUILDER as FETCH;
use crate::fetch::{FetchOptions, FetchProgress, Fetcher, NoProgress};
use crate::plan::{Derivation, DrvHash, Output, Plan};
use crate::store::path::StorePath;
use crate::store::{Store, StoreError};

#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// Builders run at once.
    pub jobs: usize,
    /// Rebuild the requested (already valid) outputs and compare.
    pub check: bool,
    /// Keep the scratch directory of a failed build.
    pub keep_failed: bool,
    /// The repo (the `source` builder copies from it).
    pub repo: PathBuf,
    /// The kiln executable that runs builders.
    pub kiln: PathBuf,
    /// How downloads (fetch derivations) are made; `parallel` bounds how
    /// many run at once, independently of `jobs`.
    pub fetch: FetchOptions,
    /// The binary caches to substitute from before building (none: build
    /// everything).
    pub substituters: Option<std::sync::Arc<Substituters>>,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("building {name} failed: {reason}{}", kept.as_ref().map(|k| format!("\n  (scratch kept in {})", k.display())).unwrap_or_default())]
    Failed {
        name: String,
        reason: String,
        kept: Option<PathBuf>,
    },
    #[error("{} download{} failed:\n{}", failures.len(), if failures.len() == 1 { "" } else { "s" }, failures.iter().map(|(name, reason)| format!("  {name}: {reason}")).collect::<Vec<_>>().join("\n"))]
    Fetch {
        /// `(name, reason)` for each failed download.
        failures: Vec<(String, String)>,
    },
    #[error("substituting {name}: {source}")]
    Substitute {
        name: String,
        #[source]
        source: Box<crate::cache::transfer::TransferError>,
    },
    #[error("asking the binary caches: {0}")]
    Query(#[source] Box<crate::cache::transfer::TransferError>),
    #[error("cannot start the builder for {name}: {source}")]
    Spawn {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

/// What happened to one derivation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Already valid; nothing done.
    Valid,
    /// Built (or waited for another process that built it).
    Built,
    /// Fetched from a binary cache and verified instead of built.
    Substituted { from: String },
    /// Rebuilt with --check: identical.
    CheckedSame,
    /// Rebuilt with --check: differs.
    CheckedDifferent { differences: Vec<String> },
}

#[derive(Clone, Debug, Serialize)]
pub struct Realised {
    pub name: String,
    /// The derivation's builder (`fetch`, `overlay`, …).
    pub builder: String,
    pub drv: DrvHash,
    pub path: StorePath,
    pub status: Status,
    pub seconds: f64,
}

/// Progress reports; the CLI draws them.
pub trait Progress: Sync {
    /// How many derivations this run will build.
    fn planned(&self, total: usize);
    fn started(&self, derivation: &Derivation);
    /// A derivation's output is being fetched from the cache `from`.
    fn substituting(&self, derivation: &Derivation, from: &str) {
        let _ = (derivation, from);
    }
    fn finished(&self, realised: &Realised);
    /// Something the user should see that does not stop the build.
    fn warning(&self, message: &str) {
        let _ = message;
    }
    /// Where download progress goes (bytes, rates) while fetch derivations
    /// run.
    fn downloads(&self) -> &dyn FetchProgress {
        &NoProgress
    }
}

/// What needs doing: the closure of the roots, minus valid outputs (plus
/// the roots themselves with `check`).
pub fn needed(store: &Store, plan: &Plan, check: bool) -> Vec<DrvHash> {
    let roots: BTreeSet<&DrvHash> = plan.roots.iter().map(|(_, d)| d).collect();
    let mut wanted = BTreeSet::new();
    let mut stack: Vec<&DrvHash> = roots.iter().copied().collect();
    while let Some(hash) = stack.pop() {
        if !wanted.insert(hash.clone()) {
            continue;
        }
        let Some(derivation) = plan.derivations.get(hash) else {
            continue;
        };
        if store.is_valid(plan.output(hash)) && !(check && roots.contains(hash)) {
            continue;
        }
        stack.extend(derivation.inputs.values().map(|i| i.drv()));
    }
    plan.topological()
        .into_iter()
        .filter(|h| wanted.contains(*h))
        .filter(|h| !store.is_valid(plan.output(h)) || (check && roots.contains(h)))
        .cloned()
        .collect()
}

struct Queue {
    /// Derivations still to run, with how many of their inputs are pending.
    waiting: BTreeMap<DrvHash, usize>,
    ready: VecDeque<DrvHash>,
    running: usize,
    done: Vec<Realised>,
    failed: Option<BuildError>,
}

/// Realise the plan: substitute what the caches have, build the rest.
/// Returns one entry per derivation substituted or built, plus the roots
/// that were already valid, in completion order.
pub fn build(
    store: &Store,
    plan: &Plan,
    options: &BuildOptions,
    progress: &dyn Progress,
) -> Result<Vec<Realised>, BuildError> {
    let decision = decide(
        store,
        plan,
        options.check,
        options.substituters.as_deref(),
        &|message| progress.warning(message),
    )
    .map_err(|e| BuildError::Query(Box::new(e)))?;
    build_decided(store, plan, &decision, options, progress)
}

/// Realise the plan as `decision` (from [`decide`]) says.
pub fn build_decided(
    store: &Store,
    plan: &Plan,
    decision: &Decision,
    options: &BuildOptions,
    progress: &dyn Progress,
) -> Result<Vec<Realised>, BuildError> {
    let _gc = store.gc_lock(false)?;
    progress.planned(decision.build.len() + decision.substitute.len());
    let substituted = substitute_all(store, plan, decision, options, progress)?;
    let mut todo: BTreeSet<DrvHash> = decision.build.iter().cloned().collect();
    // Downloads first, all of them (several at once), then the builders.
    let fetches: Vec<DrvHash> = todo
        .iter()
        .filter(|h| plan.derivations[*h].builder == FETCH)
        .cloned()
        .collect();
    let mut fetched = fetch_all(store, plan, &fetches, options, progress)?;
    fetched.splice(0..0, substituted);
    let needed: BTreeSet<DrvHash> = todo
        .iter()
        .cloned()
        .chain(decision.substitute.iter().map(|(h, _)| h.clone()))
        .collect();
    for hash in &fetches {
        todo.remove(hash);
    }
    let mut waiting = BTreeMap::new();
    let mut ready = VecDeque::new();
    for hash in &todo {
        let pending = plan.derivations[hash]
            .inputs
            .values()
            .filter(|i| todo.contains(i.drv()))
            .count();
        if pending == 0 {
            ready.push_back(hash.clone());
        } else {
            waiting.insert(hash.clone(), pending);
        }
    }
    let queue = Mutex::new(Queue {
        waiting,
        ready,
        running: 0,
        done: fetched,
        failed: None,
    });
    let wake = Condvar::new();
    let workers = options.jobs.max(1).min(todo.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| worker(store, plan, options, progress, &todo, &queue, &wake));
        }
    });
    let queue = queue
        .into_inner()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(error) = queue.failed {
        return Err(error);
    }
    let mut results = queue.done;
    // Roots that were already valid are reported too.
    for (_, hash) in &plan.roots {
        if !needed.contains(hash) {
            let derivation = &plan.derivations[hash];
            results.push(Realised {
                name: derivation.name.clone(),
                builder: derivation.builder.clone(),
                drv: hash.clone(),
                path: plan.output(hash).clone(),
                status: Status::Valid,
                seconds: 0.0,
            });
        }
    }
    Ok(results)
}

fn worker(
    store: &Store,
    plan: &Plan,
    options: &BuildOptions,
    progress: &dyn Progress,
    todo: &BTreeSet<DrvHash>,
    queue: &Mutex<Queue>,
    wake: &Condvar,
) {
    let lock = || {
        queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    };
    loop {
        let hash = {
            let mut state = lock();
            loop {
                if state.failed.is_some() || (state.ready.is_empty() && state.running == 0) {
                    wake.notify_all();
                    return;
                }
                if let Some(hash) = state.ready.pop_front() {
                    state.running += 1;
                    break hash;
                }
                state = wake
                    .wait(state)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
        };
        let derivation = &plan.derivations[&hash];
        let is_root = plan.roots.iter().any(|(_, h)| *h == hash);
        let result = realise(
            store,
            &hash,
            derivation,
            plan.output(&hash),
            options,
            options.check && is_root,
            progress,
        );
        let mut state = lock();
        state.running -= 1;
        match result {
            Ok(realised) => {
                progress.finished(&realised);
                state.done.push(realised);
                for (other, other_derivation) in &plan.derivations {
                    if todo.contains(other)
                        && other_derivation.inputs.values().any(|i| *i.drv() == hash)
                    {
                        let left = state.waiting.get_mut(other).map(|n| {
                            *n -= 1;
                            *n
                        });
                        if left == Some(0) {
                            state.waiting.remove(other);
                            state.ready.push_back(other.clone());
                        }
                    }
                }
            }
            Err(error) => {
                if state.failed.is_none() {
                    state.failed = Some(error);
                }
            }
        }
        wake.notify_all();
    }
}

/// Pull the outputs `decision` substitutes, `options.fetch.parallel` at
/// a time; the first failure stops the rest (nothing unverified is
/// registered).
fn substitute_all(
    store: &Store,
    plan: &Plan,
    decision: &Decision,
    options: &BuildOptions,
    progress: &dyn Progress,
) -> Result<Vec<Realised>, BuildError> {
    let Some(substituters) = options.substituters.as_deref() else {
        return Ok(Vec::new());
    };
    if decision.substitute.is_empty() {
        return Ok(Vec::new());
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = Mutex::new((Vec::new(), None));
    let workers = options.fetch.parallel.clamp(1, decision.substitute.len());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                while let Some((hash, cache)) = decision
                    .substitute
                    .get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
                {
                    if results
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .1
                        .is_some()
                    {
                        return;
                    }
                    let derivation = &plan.derivations[hash];
                    let from = substituters.caches[*cache].url().to_owned();
                    progress.substituting(derivation, &from);
                    let started = Instant::now();
                    let path = plan.output(hash);
                    let outcome = substitute::pull(store, substituters, *cache, path, &mut |_| {});
                    let mut results = results.lock().unwrap_or_else(|p| p.into_inner());
                    match outcome {
                        Ok(_) => {
                            let realised = Realised {
                                name: derivation.name.clone(),
                                builder: derivation.builder.clone(),
                                drv: hash.clone(),
                                path: path.clone(),
                                status: Status::Substituted { from },
                                seconds: started.elapsed().as_secs_f64(),
                            };
                            progress.finished(&realised);
                            results.0.push(realised);
                        }
                        Err(error) => {
                            results.1.get_or_insert(BuildError::Substitute {
                                name: derivation.name.clone(),
                                source: Box::new(error),
                            });
                        }
                    }
                }
            });
        }
    });
    let (done, failed) = results.into_inner().unwrap_or_else(|p| p.into_inner());
    match failed {
        Some(error) => Err(error),
        None => Ok(done),
    }
}

/// Realise the fetch derivations `hashes`, `options.fetch.parallel` at a
/// time, through one [`Fetcher`]. Every download is attempted even when
/// some fail (so a re-run only has the failures left); the error lists
/// each failure.
fn fetch_all(
    store: &Store,
    plan: &Plan,
    hashes: &[DrvHash],
    options: &BuildOptions,
    progress: &dyn Progress,
) -> Result<Vec<Realised>, BuildError> {
    if hashes.is_empty() {
        return Ok(Vec::new());
    }
    let fetcher = Fetcher::new(options.fetch.clone()).map_err(|e| BuildError::Fetch {
        failures: vec![("(fetcher)".into(), e.to_string())],
    })?;
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = Mutex::new((Vec::new(), Vec::new()));
    let roots: BTreeSet<&DrvHash> = plan.roots.iter().map(|(_, h)| h).collect();
    let workers = options.fetch.parallel.clamp(1, hashes.len());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                while let Some(hash) =
                    hashes.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
                {
                    let derivation = &plan.derivations[hash];
                    let check = options.check && roots.contains(hash);
                    let result = realise_fetch(
                        store,
                        hash,
                        derivation,
                        plan.output(hash),
                        check,
                        &fetcher,
                        progress,
                    );
                    let mut results = results.lock().unwrap_or_else(|p| p.into_inner());
                    match result {
                        Ok(realised) => {
                            progress.finished(&realised);
                            results.0.push(realised);
                        }
                        Err(BuildError::Failed { name, reason, .. }) => {
                            results.1.push((name, reason))
                        }
                        Err(other) => results.1.push((derivation.name.clone(), other.to_string())),
                    }
                }
            });
        }
    });
    let (done, mut failures) = results.into_inner().unwrap_or_else(|p| p.into_inner());
    if failures.is_empty() {
        Ok(done)
    } else {
        failures.sort();
        Err(BuildError::Fetch { failures })
    }
}

/// Download one fetch derivation's file and register it once verified.
fn realise_fetch(
    store: &Store,
    hash: &DrvHash,
    derivation: &Derivation,
    path: &StorePath,
    check: bool,
    fetcher: &Fetcher,
    progress: &dyn Progress,
) -> Result<Realised, BuildError> {
    let started = Instant::now();
    let finish = |status| Realised {
        name: derivation.name.clone(),
        builder: derivation.builder.clone(),
        drv: hash.clone(),
        path: path.clone(),
        status,
        seconds: started.elapsed().as_secs_f64(),
    };
    let failed = |reason: String| BuildError::Failed {
        name: derivation.name.clone(),
        reason,
        kept: None,
    };
    let _lock = store.lock(path)?;
    if !check && store.is_valid(path) {
        return Ok(finish(Status::Valid));
    }
    progress.started(derivation);
    store.write_derivation(derivation)?;
    let scratch = store.scratch()?;
    let out = scratch.path().join("out");
    let request = crate::builders::fetch::request(derivation, out.clone()).map_err(failed)?;
    // The fetcher checks size and sha256 while streaming and leaves
    // nothing at `out` unless both match.
    fetcher
        .fetch(&request, progress.downloads())
        .map_err(|e| failed(e.to_string()))?;
    if check {
        let differences = run::compare(store, path, &out)?;
        return Ok(finish(if differences.is_empty() {
            Status::CheckedSame
        } else {
            Status::CheckedDifferent { differences }
        }));
    }
    store.register(path, &out, Some(hash), None, &BTreeSet::new())?;
    store.set_last(&derivation.name, derivation)?;
    Ok(finish(Status::Built))
}

/// Build one derivation (or find it built by another process).
fn realise(
    store: &Store,
    hash: &DrvHash,
    derivation: &Derivation,
    path: &StorePath,
    options: &BuildOptions,
    check: bool,
    progress: &dyn Progress,
) -> Result<Realised, BuildError> {
    let started = Instant::now();
    let finish = |status| Realised {
        name: derivation.name.clone(),
        builder: derivation.builder.clone(),
        drv: hash.clone(),
        path: path.clone(),
        status,
        seconds: started.elapsed().as_secs_f64(),
    };
    let _lock = store.lock(path)?;
    if !check && store.is_valid(path) {
        // Another process built it while we waited for the lock.
        return Ok(finish(Status::Valid));
    }
    progress.started(derivation);
    store.write_derivation(derivation)?;
    let scratch = store.scratch()?;
    let out = scratch.path().join("out");
    if let Err(error) = run::spawn(store, derivation, scratch.path(), &out, options) {
        let kept = options.keep_failed.then(|| scratch.keep());
        return Err(match error {
            BuildError::Failed { name, reason, .. } => BuildError::Failed { name, reason, kept },
            other => other,
        });
    }
    if check {
        let differences = run::compare(store, path, &out)?;
        let status = if differences.is_empty() {
            Status::CheckedSame
        } else {
            Status::CheckedDifferent { differences }
        };
        return Ok(finish(status));
    }
    let expected = match &derivation.output {
        Output::Fixed { nar_sha256 } => Some(nar_sha256.as_str()),
        Output::Input => None,
        // Only the fetch builder makes these, and it verifies them itself.
        Output::FixedFlat { .. } => {
            return Err(BuildError::Failed {
                name: derivation.name.clone(),
                reason: format!(
                    "builder `{}` cannot produce a flat fixed output",
                    derivation.builder
                ),
                kept: None,
            });
        }
    };
    let candidates = store.closure(derivation.inputs.values().map(|i| i.path().clone()))?;
    store.register(path, &out, Some(hash), expected, &candidates)?;
    store.set_last(&derivation.name, derivation)?;
    Ok(finish(Status::Built))
}
