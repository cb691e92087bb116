//! One library operation per command. Each returns data; the CLI prints it.

pub mod build;
pub mod lock;
pub mod options_doc;
pub mod render;

use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::config::diagnostic::Diagnostic;
use crate::config::{DocId, DocKind, LoadError, Repo, discover_root};
use crate::eval::Evaluator;
use crate::eval::spec::Spec;
use crate::suggest::did_you_mean;

/// Find and read the repo: `explicit` if given, else the nearest ancestor
/// of `cwd` holding `lockfile.toml` or `hosts/`.
pub fn open(explicit: Option<&Path>, cwd: &Path) -> Result<Evaluator, LoadError> {
    let root: PathBuf = match explicit {
        Some(dir) => dir.to_path_buf(),
        None => discover_root(cwd)?,
    };
    Ok(Evaluator::new(Repo::load(&root)?))
}

/// A command-line target: `HOST`, `host:NAME`, `image:NAME` or
/// `stack:NAME`, optionally with `#PART` to build only one stage of it
/// (`monitoring#overlay`, `monitoring#packages`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub kind: DocKind,
    pub name: String,
    pub part: Option<String>,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.kind != DocKind::Host {
            write!(f, "{}:", self.kind)?;
        }
        f.write_str(&self.name)?;
        if let Some(part) = &self.part {
            write!(f, "#{part}")?;
        }
        Ok(())
    }
}

impl FromStr for Target {
    type Err = String;

    fn from_str(whole: &str) -> Result<Target, String> {
        let (text, part) = match whole.split_once('#') {
            Some((text, part)) if !part.is_empty() => (text, Some(part.to_owned())),
            Some(_) => {
                return Err(format!(
                    "`{whole}`: nothing after `#` (parts: overlay, packages)"
                ));
            }
            None => (whole, None),
        };
        let (kind, name) = match text.split_once(':') {
            None => (DocKind::Host, text),
            Some(("host", name)) => (DocKind::Host, name),
            Some(("image", name)) => (DocKind::Image, name),
            Some(("stack", name)) => (DocKind::Stack, name),
            Some((prefix, _)) => {
                return Err(format!(
                    "unknown target kind `{prefix}:`; targets are HOST, image:NAME or stack:NAME"
                ));
            }
        };
        if name.is_empty() {
            return Err(format!("`{text}` names no {kind}"));
        }
        Ok(Target {
            kind,
            name: name.to_owned(),
            part,
        })
    }
}

/// Why `kiln eval` produced no spec.
#[derive(Debug)]
pub enum EvalFailure {
    UnknownTarget {
        target: Target,
        hint: Option<String>,
    },
    Invalid(Vec<Diagnostic>),
}

/// Evaluate one target.
pub fn eval(evaluator: &Evaluator, target: &Target) -> Result<Spec, EvalFailure> {
    eval_in(evaluator, target, None)
}

/// Evaluate one target; a stack with the `env` overlay applied (`--env`),
/// and with each image's digest-pinned reference where `lockfile.toml`
/// pins it (an unpinned image is not an error until something renders it).
pub fn eval_in(
    evaluator: &Evaluator,
    target: &Target,
    env: Option<&str>,
) -> Result<Spec, EvalFailure> {
    let Some(id) = evaluator.repo.find(target.kind, &target.name) else {
        return Err(EvalFailure::UnknownTarget {
            target: target.clone(),
            hint: did_you_mean(&target.name, evaluator.repo.names(target.kind)),
        });
    };
    let mut diagnostics = relevant_load_errors(evaluator, id);
    let evaluated = if target.kind == DocKind::Stack {
        evaluator.stack_in(id, env).map(|mut stack| {
            // A lockfile that cannot be read leaves the images unpinned
            // here; `kiln lock` and `kiln build` report it.
            if let Ok(lock) = lock::read(&evaluator.repo.root.join("lockfile.toml")) {
                crate::stack::pin::annotate(&mut stack, &lock);
            }
            Some(Spec::Stack(Box::new(stack)))
        })
    } else {
        evaluator.evaluate(id)
    };
    match evaluated {
        Ok(Some(spec)) if diagnostics.is_empty() => Ok(spec),
        Ok(_) => Err(EvalFailure::Invalid(diagnostics)),
        Err(found) => {
            diagnostics.extend(found);
            Err(EvalFailure::Invalid(diagnostics))
        }
    }
}

/// Evaluate one document with `evaluate` (`Evaluator::host`, `image`, …),
/// failing also on the reading and declaration errors that concern it: a
/// target that imports a broken module is not silently evaluated without it.
pub(crate) fn evaluate_checked<T>(
    evaluator: &Evaluator,
    id: DocId,
    evaluate: impl Fn(&Evaluator, DocId) -> crate::eval::Evaluation<T>,
) -> Result<T, Vec<Diagnostic>> {
    let mut diagnostics = relevant_load_errors(evaluator, id);
    match evaluate(evaluator, id) {
        Ok(spec) if diagnostics.is_empty() => Ok(spec),
        Ok(_) => Err(diagnostics),
        Err(found) => {
            diagnostics.extend(found);
            Err(diagnostics)
        }
    }
}

/// Reading and declaration errors that matter to one target: those in its
/// own file or in the modules it imports (plus built-in problems).
fn relevant_load_errors(evaluator: &Evaluator, id: DocId) -> Vec<Diagnostic> {
    let repo = &evaluator.repo;
    let mut sources: Vec<_> = repo
        .imports
        .closure(id)
        .into_iter()
        .map(|m| repo.document(m).source)
        .collect();
    sources.push(repo.document(id).source);
    evaluator
        .diagnostics
        .iter()
        .filter(|d| {
            d.labels.iter().any(|l| {
                sources.contains(&l.span.source)
                    || repo.sources.path(l.span.source).starts_with("<built-in>")
            })
        })
        .cloned()
        .collect()
}

/// What `kiln check` found.
#[derive(Debug)]
pub struct CheckReport {
    pub hosts: usize,
    pub images: usize,
    pub stacks: usize,
    pub modules: usize,
    /// Sorted by file and position, without duplicates.
    pub diagnostics: Vec<Diagnostic>,
}

impl CheckReport {
    pub fn ok(&self) -> bool {
        self.diagnostics.is_empty()
    }
}

/// Evaluate every host, image, stack and module; collect every problem.
pub fn check(evaluator: &Evaluator) -> CheckReport {
    let repo = &evaluator.repo;
    let mut diagnostics = crate::config::Diagnostics::default();
    diagnostics.extend(evaluator.diagnostics.iter().cloned());
    let mut vmids: Vec<(&str, u32, crate::config::Span)> = Vec::new();
    let mut sources = Vec::new();
    for (index, document) in repo.documents.iter().enumerate() {
        match evaluator.validate(DocId(index)) {
            Ok(validated) => {
                if let Some(vmid) = validated.vmid {
                    let span = document
                        .header_table()
                        .and_then(|t| t.get("vmid"))
                        .map_or(document.header_span(), |e| e.value.span);
                    vmids.push((&document.name, vmid, span));
                }
                sources.extend(validated.sources);
            }
            Err(found) => diagnostics.extend(found),
        }
    }
    diagnostics.extend(crate::eval::duplicate_vmids(&vmids));
    // `files.*.source` must name a file in the repo: check's one look at
    // the disk beyond reading the kiln files.
    for source in sources {
        if !repo.root.join(&source.path).is_file() {
            diagnostics.push(
                Diagnostic::error(
                    "missing-file",
                    format!("no file `{}` in the repo", source.path),
                )
                .at(
                    source.span,
                    format!("`source` names {}, which does not exist", source.path),
                )
                .help("`source` is relative to the file that sets it"),
            );
        }
    }
    CheckReport {
        hosts: repo.of_kind(DocKind::Host).count(),
        images: repo.of_kind(DocKind::Image).count(),
        stacks: repo.of_kind(DocKind::Stack).count(),
        modules: repo.of_kind(DocKind::Module).count(),
        diagnostics: diagnostics.finish(&repo.sources),
    }
}
