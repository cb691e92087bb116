//! `kiln lock`: resolve every input the configuration needs and pin it in
//! `lockfile.toml`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::config::DocKind;
use crate::config::diagnostic::Diagnostic;
use crate::eval::Evaluator;
use crate::eval::spec::{HostSpec, ImageSpec, StackSpec};
use crate::lock::inputs::{LockStatus, Wanted, status, wanted};
use crate::lock::{DebianEntry, DebianPackage, Lockfile, LockfileError, OciEntry, UrlEntry};

/// How `kiln lock` should treat inputs that are already pinned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Update {
    /// Resolve only what is missing or changed.
    Missing,
    /// Re-resolve these inputs (ids as in the lockfile), and what is missing.
    Some(Vec<String>),
    /// Re-resolve everything.
    All,
}

/// What `kiln lock` did to one input.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Change {
    pub kind: &'static str,
    pub id: String,
    /// `added`, `updated`, `unchanged` (re-resolved to the same pin) or `removed`.
    pub action: &'static str,
    /// What moved, in words (`openssl 3.0.14-1 → 3.0.15-1`, `sha256:ab… → sha256:cd…`).
    pub details: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("the configuration has errors")]
    Invalid(Vec<Diagnostic>),
    #[error(transparent)]
    Lockfile(#[from] LockfileError),
    #[error("cannot read {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "lockfile.toml is out of date and --locked forbids changing it:\n{0}\nrun `kiln lock` and commit lockfile.toml"
    )]
    Locked(String),
    #[error("`{0}` is not an input of this configuration (see `kiln lock --dry-run`)")]
    UnknownInput(String),
}

/// What the configuration wants, evaluated from every host, image and stack.
pub fn wanted_inputs(
    evaluator: &Evaluator,
) -> Result<BTreeMap<(&'static str, String), Wanted>, LockError> {
    let repo = &evaluator.repo;
    let mut hosts: Vec<HostSpec> = Vec::new();
    let mut images: Vec<ImageSpec> = Vec::new();
    let mut stacks: Vec<StackSpec> = Vec::new();
    let mut problems = Vec::new();
    for id in repo.of_kind(DocKind::Host) {
        match super::evaluate_checked(evaluator, id, Evaluator::host) {
            Ok(spec) => hosts.push(spec),
            Err(d) => problems.extend(d),
        }
    }
    for id in repo.of_kind(DocKind::Image) {
        match super::evaluate_checked(evaluator, id, Evaluator::image) {
            Ok(spec) => images.push(spec),
            Err(d) => problems.extend(d),
        }
    }
    for id in repo.of_kind(DocKind::Stack) {
        match super::evaluate_checked(evaluator, id, Evaluator::stack) {
            Ok(spec) => stacks.push(spec),
            Err(d) => problems.extend(d),
        }
    }
    if !problems.is_empty() {
        let mut all = crate::config::Diagnostics::default();
        all.extend(problems);
        return Err(LockError::Invalid(all.finish(&repo.sources)));
    }
    Ok(wanted(&hosts, &images, &stacks))
}

/// Read `lockfile.toml` (an absent file is an empty lock).
pub fn read(path: &Path) -> Result<Lockfile, LockError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Lockfile::parse(&text)?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Lockfile::empty()),
        Err(source) => Err(LockError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Describe a status for humans, one line per input.
pub fn describe(status: &LockStatus) -> String {
    let mut lines = Vec::new();
    for (kind, id) in &status.missing {
        lines.push(format!("  {kind} `{id}`: not pinned"));
    }
    for (kind, id) in &status.changed {
        lines.push(format!(
            "  {kind} `{id}`: pinned for a different configuration"
        ));
    }
    for (kind, id) in &status.stale {
        lines.push(format!("  {kind} `{id}`: pinned but no longer used"));
    }
    lines.join("\n")
}

/// Something that resolves inputs (the network, or a test double).
pub trait Resolvers {
    fn debian(&self, id: &str, wanted: &Wanted) -> Result<DebianEntry, String>;
    fn oci(&self, id: &str, reference: &str) -> Result<OciEntry, String>;
    fn url(&self, id: &str, urls: &[String]) -> Result<UrlEntry, String>;
}

/// The result of `kiln lock`.
#[derive(Debug, serde::Serialize)]
pub struct LockReport {
    pub changes: Vec<Change>,
    /// Inputs that could not be resolved (their old pin, if any, is kept).
    pub failures: Vec<Failure>,
    /// Whether lockfile.toml was rewritten.
    pub written: bool,
}

#[derive(Debug, serde::Serialize)]
pub struct Failure {
    pub kind: &'static str,
    pub id: String,
    pub reason: String,
}

/// Bring the lockfile in line with the configuration.
pub fn lock(
    wanted: &BTreeMap<(&'static str, String), Wanted>,
    path: &Path,
    update: &Update,
    locked: bool,
    resolvers: &dyn Resolvers,
) -> Result<LockReport, LockError> {
    let old = read(path)?;
    let current = status(&old, wanted);
    if let Update::Some(ids) = update {
        for id in ids {
            if !wanted.keys().any(|(_, i)| i == id) {
                return Err(LockError::UnknownInput(id.clone()));
            }
        }
    }
    if locked {
        if !current.up_to_date() {
            return Err(LockError::Locked(describe(&current)));
        }
        return Ok(LockReport {
            changes: Vec::new(),
            failures: Vec::new(),
            written: false,
        });
    }
    let needs: BTreeSet<(&'static str, String)> = current
        .missing
        .iter()
        .chain(&current.changed)
        .cloned()
        .collect();
    let mut new = Lockfile::empty();
    let mut changes = Vec::new();
    let mut failures = Vec::new();
    for ((kind, id), want) in wanted {
        let requested = match update {
            Update::All => true,
            Update::Some(ids) => ids.contains(id),
            Update::Missing => false,
        };
        let key = (*kind, id.clone());
        if !requested && !needs.contains(&key) {
            // Keep the pin as it is.
            match want {
                Wanted::Debian(_) => {
                    new.debian.insert(id.clone(), old.debian[id].clone());
                }
                Wanted::Oci { .. } => {
                    new.oci.insert(id.clone(), old.oci[id].clone());
                }
                Wanted::Url { .. } => {
                    new.url.insert(id.clone(), old.url[id].clone());
                }
            }
            continue;
        }
        // A failure keeps the old pin (if any) and does not stop the others:
        // what could be resolved is written, what could not is reported.
        let outcome = match want {
            Wanted::Debian(_) => resolvers.debian(id, want).map(|entry| {
                let change = debian_change(id, old.debian.get(id), &entry);
                new.debian.insert(id.clone(), entry);
                change
            }),
            Wanted::Oci { reference } => resolvers.oci(id, reference).map(|entry| {
                let change = pin_change(
                    "oci",
                    id,
                    old.oci.get(id).map(|e| e.digest.as_str()),
                    &entry.digest,
                );
                new.oci.insert(id.clone(), entry);
                change
            }),
            Wanted::Url { urls } => resolvers.url(id, urls).map(|entry| {
                let change = pin_change(
                    "url",
                    id,
                    old.url.get(id).map(|e| e.sha256.as_str()),
                    &entry.sha256,
                );
                new.url.insert(id.clone(), entry);
                change
            }),
        };
        match outcome {
            Ok(change) => changes.push(change),
            Err(reason) => {
                if let Some(entry) = old.debian.get(id).filter(|_| kind == &"debian") {
                    new.debian.insert(id.clone(), entry.clone());
                }
                if let Some(entry) = old.oci.get(id).filter(|_| kind == &"oci") {
                    new.oci.insert(id.clone(), entry.clone());
                }
                if let Some(entry) = old.url.get(id).filter(|_| kind == &"url") {
                    new.url.insert(id.clone(), entry.clone());
                }
                failures.push(Failure {
                    kind,
                    id: id.clone(),
                    reason,
                });
            }
        }
    }
    // A note (where a pin came from) stays with exactly that pin.
    new.notes = old
        .notes
        .iter()
        .filter(|((kind, id), _)| old.same_entry(&new, kind, id))
        .map(|(key, lines)| (key.clone(), lines.clone()))
        .collect();
    for (kind, id) in &current.stale {
        changes.push(Change {
            kind,
            id: id.clone(),
            action: "removed",
            details: Vec::new(),
        });
    }
    let written = new != old || !path.exists();
    if written {
        crate::fs::write_atomic(path, new.to_text().as_bytes()).map_err(|source| {
            LockError::Write {
                path: path.to_path_buf(),
                source,
            }
        })?;
    }
    Ok(LockReport {
        changes,
        failures,
        written,
    })
}

fn pin_change(kind: &'static str, id: &str, old: Option<&str>, new: &str) -> Change {
    let (action, details) = match old {
        None => ("added", vec![new.to_owned()]),
        Some(old) if old == new => ("unchanged", Vec::new()),
        Some(old) => ("updated", vec![format!("{old} → {new}")]),
    };
    Change {
        kind,
        id: id.to_owned(),
        action,
        details,
    }
}

/// Package-level differences between two resolutions of one Debian set.
fn debian_change(id: &str, old: Option<&DebianEntry>, new: &DebianEntry) -> Change {
    let Some(old) = old else {
        return Change {
            kind: "debian",
            id: id.to_owned(),
            action: "added",
            details: vec![format!("{} packages", new.packages.len())],
        };
    };
    let by_name = |packages: &[DebianPackage]| -> BTreeMap<String, String> {
        packages
            .iter()
            .map(|p| (p.name.clone(), p.version.clone()))
            .collect()
    };
    let (before, after) = (by_name(&old.packages), by_name(&new.packages));
    let mut details = Vec::new();
    for (name, version) in &after {
        match before.get(name) {
            None => details.push(format!("+ {name} {version}")),
            Some(old_version) if old_version != version => {
                details.push(format!("{name} {old_version} → {version}"))
            }
            Some(_) => {}
        }
    }
    for (name, version) in &before {
        if !after.contains_key(name) {
            details.push(format!("- {name} {version}"));
        }
    }
    let same_hashes = old.packages == new.packages;
    Change {
        kind: "debian",
        id: id.to_owned(),
        action: if details.is_empty() && same_hashes {
            "unchanged"
        } else {
            "updated"
        },
        details,
    }
}

/// The resolvers that talk to the outside: apt against the Debian mirror,
/// the OCI distribution API, and HTTP downloads for `url` inputs.
pub struct NetworkResolvers {
    oci: crate::lock::oci::ResolverOptions,
    fetch: crate::fetch::FetchOptions,
    /// Made on first use and reused: each sets up a runtime and TLS roots
    /// (~0.1 s), and reusing the fetcher reuses connections.
    resolver: std::sync::OnceLock<Result<crate::lock::oci::Resolver, String>>,
    fetcher: std::sync::OnceLock<Result<crate::fetch::Fetcher, String>>,
}

impl NetworkResolvers {
    pub fn new(
        oci: crate::lock::oci::ResolverOptions,
        fetch: crate::fetch::FetchOptions,
    ) -> NetworkResolvers {
        NetworkResolvers {
            oci,
            fetch,
            resolver: std::sync::OnceLock::new(),
            fetcher: std::sync::OnceLock::new(),
        }
    }
}

impl Resolvers for NetworkResolvers {
    fn debian(&self, _id: &str, wanted: &Wanted) -> Result<DebianEntry, String> {
        let Wanted::Debian(set) = wanted else {
            return Err("not a Debian input".into());
        };
        let resolution = crate::lock::debian::resolve(set).map_err(|e| e.to_string())?;
        let packages = resolution
            .packages
            .into_iter()
            .map(|p| DebianPackage {
                name: p.name,
                version: p.version,
                architecture: p.architecture,
                filename: p.filename,
                sha256: p.sha256,
                size: p.size,
            })
            .collect();
        Ok(set.entry(resolution.release_date, packages))
    }

    fn oci(&self, _id: &str, reference: &str) -> Result<OciEntry, String> {
        let parsed: crate::lock::oci::Reference = reference
            .parse()
            .map_err(|e: crate::lock::oci::OciError| e.to_string())?;
        let resolver = self
            .resolver
            .get_or_init(|| {
                crate::lock::oci::Resolver::new(self.oci.clone()).map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(Clone::clone)?;
        let resolved = resolver.resolve(&parsed).map_err(|e| e.to_string())?;
        Ok(OciEntry {
            reference: resolved.reference,
            digest: resolved.digest,
            media_type: Some(resolved.media_type),
            platforms: resolved.platforms,
        })
    }

    fn url(&self, _id: &str, urls: &[String]) -> Result<UrlEntry, String> {
        // Download once to learn the hash; the bytes are fetched again (and
        // checked against it) when a build needs them.
        let scratch = tempfile::tempdir().map_err(|e| e.to_string())?;
        let fetcher = self
            .fetcher
            .get_or_init(|| {
                crate::fetch::Fetcher::new(self.fetch.clone()).map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(Clone::clone)?;
        let request = crate::fetch::FetchRequest {
            urls: urls.to_vec(),
            sha256: None,
            size: None,
            dest: scratch.path().join("download"),
        };
        let fetched = fetcher
            .fetch(&request, &crate::fetch::NoProgress)
            .map_err(|e| e.to_string())?;
        Ok(UrlEntry {
            urls: urls.to_vec(),
            sha256: fetched.sha256,
            size: fetched.size,
        })
    }
}
