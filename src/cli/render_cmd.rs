//! `kiln render STACK --target compose|k8s [--env ENV] -o DIR`: build the
//! stack's bundle into the store (as `kiln build stack:NAME#TARGET@ENV`
//! does) and copy it out to a directory.
//!
//! The directory is written whole or not at all: the files go to a
//! temporary sibling first, which is then renamed into place. An existing
//! directory is replaced only with `--force`, or when it is empty.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use sha2::{Digest, Sha256};

use super::build_cmd::build_for;
use super::output::Printer;
use crate::config::DocKind;
use crate::eval::Evaluator;
use crate::ops::Target;
use crate::plan::derivation::hex;
use crate::store::Store;

#[derive(Debug, Args)]
pub struct RenderArgs {
    /// The stack (stacks/NAME.toml).
    pub stack: String,
    /// What to render: a Docker Compose bundle or a kustomize directory.
    #[arg(long, value_name = "TARGET", value_parser = ["compose", "k8s"])]
    pub target: String,
    /// Apply this environment overlay (`[env.ENV]`).
    #[arg(long, value_name = "ENV")]
    pub env: Option<String>,
    /// The directory to write the bundle to.
    #[arg(short = 'o', long = "out", value_name = "DIR")]
    pub out: PathBuf,
    /// Replace DIR if it exists and is not empty.
    #[arg(long)]
    pub force: bool,
    /// Print what was written as JSON.
    #[arg(long)]
    pub json: bool,
}

pub(super) fn render(
    evaluator: &Evaluator,
    store: &Store,
    args: &RenderArgs,
    printer: &Printer,
) -> anyhow::Result<ExitCode> {
    if evaluator.repo.find(DocKind::Stack, &args.stack).is_none() {
        let names: Vec<&str> = evaluator.repo.names(DocKind::Stack).collect();
        let hint =
            crate::suggest::did_you_mean(&args.stack, names.iter().copied()).unwrap_or_else(|| {
                let list: Vec<String> = names.into_iter().map(|n| format!("`{n}`")).collect();
                if list.is_empty() {
                    "the repo has no stacks (files in stacks/)".to_owned()
                } else {
                    format!("the stacks are {}", list.join(", "))
                }
            });
        printer.fatal(&format!("no stack named `{}`; {hint}", args.stack));
        return Ok(ExitCode::from(1));
    }
    if args.out.exists() && !args.force && !is_empty_dir(&args.out) {
        printer.fatal(&format!(
            "{} exists and is not empty: pass --force to replace it",
            args.out.display()
        ));
        return Ok(ExitCode::from(1));
    }
    let part = match &args.env {
        Some(env) => format!("{}@{env}", args.target),
        None => args.target.clone(),
    };
    let target = Target {
        kind: DocKind::Stack,
        name: args.stack.clone(),
        part: Some(part),
    };
    let Some(plan) = build_for(evaluator, store, std::slice::from_ref(&target), printer)? else {
        return Ok(ExitCode::from(1));
    };
    let Some((_, hash)) = plan.roots.first() else {
        printer.fatal("nothing was rendered");
        return Ok(ExitCode::from(1));
    };
    let from = store.real_path(plan.output(hash));
    let files = match copy_out(&from, &args.out) {
        Ok(files) => files,
        Err(error) => {
            printer.fatal(&format!("cannot write {}: {error:#}", args.out.display()));
            return Ok(ExitCode::from(1));
        }
    };
    let bytes: u64 = files.iter().map(|f| f.size).sum();
    if args.json {
        let list: Vec<serde_json::Value> = files
            .iter()
            .map(|f| serde_json::json!({ "path": f.path, "size": f.size, "sha256": f.sha256 }))
            .collect();
        printer.json(&serde_json::json!({
            "kind": "render", "version": 1, "stack": args.stack, "target": args.target,
            "env": args.env, "store_path": from, "out": args.out, "files": list, "bytes": bytes,
        }))?;
    } else {
        printer.status(&format!(
            "rendered stack:{} for {}{} → {} ({} file{}, {})",
            args.stack,
            args.target,
            args.env
                .as_ref()
                .map(|e| format!(" (env {e})"))
                .unwrap_or_default(),
            args.out.display(),
            files.len(),
            if files.len() == 1 { "" } else { "s" },
            crate::deploy::human_bytes(bytes),
        ));
        printer.line(&from.display().to_string())?;
    }
    Ok(ExitCode::SUCCESS)
}

fn is_empty_dir(path: &Path) -> bool {
    std::fs::read_dir(path).is_ok_and(|mut entries| entries.next().is_none())
}

struct Written {
    path: String,
    size: u64,
    sha256: String,
}

/// Copy the bundle at `from` to `out` through a temporary sibling, so a
/// failure leaves `out` as it was.
fn copy_out(from: &Path, out: &Path) -> anyhow::Result<Vec<Written>> {
    use anyhow::Context;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let staging = tempfile::Builder::new()
        .prefix(".kiln-render-")
        .tempdir_in(&parent)
        .with_context(|| format!("creating a directory in {}", parent.display()))?;
    let mut files = Vec::new();
    copy_tree(from, staging.path(), "", &mut files)?;
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let staged = staging.keep();
    if out.exists() {
        let old = parent.join(format!(
            ".kiln-render-old-{}",
            out.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        ));
        let _ = std::fs::remove_dir_all(&old);
        std::fs::rename(out, &old).with_context(|| format!("moving {} aside", out.display()))?;
        if let Err(error) = std::fs::rename(&staged, out) {
            let _ = std::fs::rename(&old, out);
            let _ = std::fs::remove_dir_all(&staged);
            return Err(error).with_context(|| format!("renaming into {}", out.display()));
        }
        std::fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
    } else if let Err(error) = std::fs::rename(&staged, out) {
        let _ = std::fs::remove_dir_all(&staged);
        return Err(error).with_context(|| format!("renaming into {}", out.display()));
    }
    Ok(files)
}

fn copy_tree(from: &Path, to: &Path, prefix: &str, files: &mut Vec<Written>) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::os::unix::fs::PermissionsExt;
    let mut entries: Vec<_> = std::fs::read_dir(from)
        .with_context(|| format!("reading {}", from.display()))?
        .collect::<Result<_, _>>()?;
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        let source = entry.path();
        let target = to.join(&name);
        let relative = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        if entry.file_type()?.is_dir() {
            std::fs::create_dir(&target)?;
            copy_tree(&source, &target, &relative, files)?;
        } else {
            let bytes =
                std::fs::read(&source).with_context(|| format!("reading {}", source.display()))?;
            std::fs::write(&target, &bytes)
                .with_context(|| format!("writing {}", target.display()))?;
            // The store's copy is read-only; the rendered copy is the user's.
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644))?;
            files.push(Written {
                path: relative,
                size: bytes.len() as u64,
                sha256: hex(&Sha256::digest(&bytes)),
            });
        }
    }
    Ok(())
}
