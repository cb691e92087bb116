//! Substitution: before building, ask the configured binary caches for
//! each output the plan needs, and fetch and verify instead of building.
//!
//! [`decide`] walks the plan from its roots down, one level at a time,
//! asking every cache for the outputs of a level at once (a few requests
//! in flight, so a remote cache costs round trips per level, not per
//! derivation). An output a cache has, signed by a trusted key, is
//! substituted, and nothing below it is looked at: pulling it brings its
//! runtime references, and its build inputs are not needed at all (the
//! way Nix substitutes). Everything else is built, after the
//! substitutions.
//!
//! A cache that cannot be reached (or refuses the credentials) is reported
//! once and left out for the rest of the run: kiln builds instead. A record
//! that does not verify — unsigned, signed by no trusted key, changed after
//! signing — and an archive that does not match its record are errors,
//! never a reason to build quietly: someone has tampered with the cache
//! (or it is misconfigured), and that must be seen. Nothing unverified is
//! registered ([`crate::cache::transfer::pull`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::cache::record::{CacheRecord, PublicKey};
use crate::cache::transfer::{self, Outcome, TransferError};
use crate::cache::{CacheBackend, CacheError};
use crate::plan::{DrvHash, Plan};
use crate::store::Store;
use crate::store::path::StorePath;

/// Requests in flight at once while asking caches.
const QUERIES: usize = 16;

/// The caches to substitute from, in order, and the keys to trust.
#[derive(Debug)]
pub struct Substituters {
    pub caches: Vec<CacheBackend>,
    pub trusted: Vec<PublicKey>,
    /// Caches found unusable during this run (by index).
    disabled: Vec<AtomicBool>,
}

impl Substituters {
    pub fn new(caches: Vec<CacheBackend>, trusted: Vec<PublicKey>) -> Substituters {
        let disabled = caches.iter().map(|_| AtomicBool::new(false)).collect();
        Substituters {
            caches,
            trusted,
            disabled,
        }
    }

    /// Ask the caches, in order, for `path`'s record: `(cache, record)` of
    /// the first that has one.
    fn query(
        &self,
        path: &StorePath,
        warn: &(dyn Fn(&str) + Sync),
    ) -> Result<Option<(usize, CacheRecord)>, TransferError> {
        for (index, cache) in self.caches.iter().enumerate() {
            if self.disabled[index].load(Ordering::Relaxed) {
                continue;
            }
            match transfer::fetch_record(cache, &self.trusted, path) {
                Ok(Some(record)) => return Ok(Some((index, record))),
                Ok(None) => {}
                Err(TransferError::Cache(error)) if unusable(&error) => {
                    if !self.disabled[index].swap(true, Ordering::Relaxed) {
                        warn(&format!(
                            "warning: not substituting from {}: {error}\n  (building instead what it would have given)",
                            cache.url()
                        ));
                    }
                }
                Err(error) => return Err(error),
            }
        }
        Ok(None)
    }
}

/// Failures that say the cache as a whole cannot be used (as opposed to a
/// record or archive in it being wrong).
fn unusable(error: &CacheError) -> bool {
    matches!(
        error,
        CacheError::Unreachable { .. }
            | CacheError::CredentialsRejected { .. }
            | CacheError::AccessDenied { .. }
            | CacheError::BucketNotFound { .. }
            | CacheError::Runtime(_)
            | CacheError::Setup { .. }
            | CacheError::Profile { .. }
    )
}

/// What a build will do for the roots' closure.
#[derive(Debug, Default)]
pub struct Decision {
    /// Outputs to pull, with the index of the cache that has each, in
    /// dependency order.
    pub substitute: Vec<(DrvHash, usize)>,
    /// Derivations to build (with `check`, the roots again), in dependency
    /// order.
    pub build: Vec<DrvHash>,
}

impl Decision {
    pub fn is_empty(&self) -> bool {
        self.substitute.is_empty() && self.build.is_empty()
    }
}

/// Decide, for every derivation in the roots' closure that is not valid,
/// whether to substitute or build it. With `check`, the roots are built
/// again even when valid (substituted first when they are not, so the
/// rebuild is compared with what the cache holds). Without substituters
/// this is [`super::needed`].
pub fn decide(
    store: &Store,
    plan: &Plan,
    check: bool,
    substituters: Option<&Substituters>,
    warn: &(dyn Fn(&str) + Sync),
) -> Result<Decision, TransferError> {
    let roots: BTreeSet<&DrvHash> = plan.roots.iter().map(|(_, d)| d).collect();
    let mut substitute = BTreeMap::new();
    let mut build = BTreeSet::new();
    let mut seen = BTreeSet::new();
    let mut level: Vec<&DrvHash> = roots.iter().copied().collect();
    while !level.is_empty() {
        level.retain(|hash| seen.insert(*hash) && plan.derivations.contains_key(*hash));
        let missing: Vec<&DrvHash> = level
            .iter()
            .copied()
            .filter(|hash| !store.is_valid(plan.output(hash)))
            .collect();
        let found = match substituters {
            Some(substituters) if !substituters.caches.is_empty() => {
                query_all(plan, &missing, substituters, warn)?
            }
            _ => BTreeMap::new(),
        };
        let mut next = Vec::new();
        for hash in level {
            let rebuild = check && roots.contains(hash);
            let valid = store.is_valid(plan.output(hash));
            if valid && !rebuild {
                continue;
            }
            if let Some(cache) = found.get(hash) {
                substitute.insert(hash.clone(), *cache);
                if !rebuild {
                    continue;
                }
            }
            build.insert(hash.clone());
            next.extend(plan.derivations[hash].inputs.values().map(|i| i.drv()));
        }
        level = next;
    }
    let order = plan.topological();
    Ok(Decision {
        substitute: order
            .iter()
            .filter_map(|h| substitute.get(*h).map(|c| ((*h).clone(), *c)))
            .collect(),
        build: order
            .into_iter()
            .filter(|h| build.contains(*h))
            .cloned()
            .collect(),
    })
}

/// Ask the caches for the outputs of `hashes`, [`QUERIES`] at a time.
fn query_all(
    plan: &Plan,
    hashes: &[&DrvHash],
    substituters: &Substituters,
    warn: &(dyn Fn(&str) + Sync),
) -> Result<BTreeMap<DrvHash, usize>, TransferError> {
    let next = AtomicUsize::new(0);
    let found = Mutex::new(BTreeMap::new());
    let failed: Mutex<Option<TransferError>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..QUERIES.min(hashes.len()) {
            scope.spawn(|| {
                while let Some(hash) = hashes.get(next.fetch_add(1, Ordering::Relaxed)) {
                    if failed.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
                        return;
                    }
                    match substituters.query(plan.output(hash), warn) {
                        Ok(Some((cache, _))) => {
                            found
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .insert((*hash).clone(), cache);
                        }
                        Ok(None) => {}
                        Err(error) => {
                            failed
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .get_or_insert(error);
                        }
                    }
                }
            });
        }
    });
    if let Some(error) = failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(error);
    }
    Ok(found.into_inner().unwrap_or_else(|p| p.into_inner()))
}

/// Pull `path` (and its references) from cache `index`; every path
/// fetched is reported to `fetched`.
pub fn pull(
    store: &Store,
    substituters: &Substituters,
    index: usize,
    path: &StorePath,
    fetched: &mut dyn FnMut(&StorePath),
) -> Result<Outcome, TransferError> {
    let cache = &substituters.caches[index];
    transfer::pull(
        store,
        cache,
        &substituters.trusted,
        path,
        &mut |reference, outcome| {
            if outcome == Outcome::Transferred {
                fetched(reference);
            }
        },
    )
}
