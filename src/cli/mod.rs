//! Command-line definitions, output formatting and exit codes.
//!
//! Exit codes: 0 success; 1 the input or environment is wrong (every
//! problem is printed); 2 usage errors (from clap). A panic is a bug.

mod build_cmd;
mod cache_cmd;
mod deploy_cmd;
mod output;
mod plan_cmd;
mod render_cmd;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::ops::{self, Target};
use output::Printer;

#[derive(Debug, Parser)]
#[command(
    name = "kiln",
    version,
    about = "Reproducible host images and service stacks for Proxmox VE",
    long_about = "kiln turns declarative TOML host definitions into bit-for-bit reproducible images, \
                  deploys them to Proxmox VE with generations you can roll back to, and renders \
                  service stacks into digest-pinned Docker Compose and Kubernetes bundles."
)]
pub struct Cli {
    /// The kiln repo (default: the nearest ancestor of the current directory
    /// holding `lockfile.toml` or `hosts/`).
    #[arg(long, global = true, value_name = "DIR")]
    pub repo: Option<PathBuf>,

    /// How to print diagnostics: `human` (source snippets) or `json` (one
    /// object per line on stderr).
    #[arg(long, global = true, value_enum, default_value_t = MessageFormat::Human)]
    pub message_format: MessageFormat,

    /// When to use colour (`auto`: on a terminal, unless NO_COLOR is set).
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,

    /// The store (default: $KILN_STORE, else $XDG_DATA_HOME/kiln/store,
    /// else ~/.local/share/kiln/store).
    #[arg(long, global = true, value_name = "DIR", env = "KILN_STORE")]
    pub store: Option<PathBuf>,

    /// Print only errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MessageFormat {
    Human,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Evaluate every host, image, stack and module; report every error.
    Check,
    /// Print the evaluated spec of a target (HOST, image:NAME or stack:NAME).
    Eval {
        /// HOST, image:NAME or stack:NAME.
        target: Target,
        /// Print JSON (the documented, versioned spec shape).
        #[arg(long)]
        json: bool,
        /// For a stack: apply this environment overlay (`[env.ENV]`).
        #[arg(long, value_name = "ENV")]
        env: Option<String>,
    },
    /// List every declared option: type, default, description, where declared.
    Options {
        /// Print JSON.
        #[arg(long, conflicts_with = "markdown")]
        json: bool,
        /// Print the Markdown option reference (docs/src/reference/options.md).
        #[arg(long)]
        markdown: bool,
    },
    /// Pin every external input in lockfile.toml (Debian package sets,
    /// container image digests, downloaded files).
    Lock {
        /// Re-resolve these inputs (ids as in lockfile.toml); all of them
        /// when none are named.
        #[arg(long, value_name = "INPUT", num_args = 0..)]
        update: Option<Vec<String>>,
        /// Fail if lockfile.toml does not match the configuration (for CI;
        /// touches no network).
        #[arg(long, conflicts_with = "update")]
        locked: bool,
        /// Say what is missing, changed or stale, and change nothing.
        #[arg(long, conflicts_with_all = ["update", "locked"])]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Build targets into the store (hosts: their overlay).
    Build(build_cmd::BuildArgs),
    /// Show the derivation graph of targets (what `kiln build` would
    /// realise), optionally one CI shard's share (`--shard I/N`).
    Plan(plan_cmd::PlanArgs),
    /// Print the derivation of a target: the exact bytes that are hashed.
    ShowDerivation {
        /// HOST
        target: Target,
        /// Print JSON, with the derivation's hash and output path.
        #[arg(long)]
        json: bool,
    },
    /// Render a stack's bundle (built into the store) to a directory:
    /// a Docker Compose bundle or a kustomize directory.
    Render(render_cmd::RenderArgs),
    /// Inspect and maintain the store.
    #[command(subcommand)]
    Store(build_cmd::StoreCommand),
    /// The binary cache: keys, push, pull.
    #[command(subcommand)]
    Cache(cache_cmd::CacheCommand),
    /// Build hosts if needed, upload their images to Proxmox VE, create or
    /// replace their guests, wait for health and record a generation.
    Deploy(deploy_cmd::DeployArgs),
    /// Make a host run an earlier generation again (no rebuild).
    Rollback(deploy_cmd::RollbackArgs),
    /// List a host's generations (`*` marks the one it runs).
    Generations(deploy_cmd::GenerationsArgs),
    /// What changed between two generations: packages, files, config.
    Diff(deploy_cmd::DiffArgs),
    /// Each host's deployed generation against what the repo builds now.
    Status(deploy_cmd::StatusArgs),
    /// Forget old generations: drop their gc roots and, with --remote,
    /// delete the volumes they uploaded that no kept generation uses.
    Gc(deploy_cmd::GcArgs),
    /// Run one builder (used by `kiln build`; not for people).
    #[command(hide = true)]
    InternalBuild {
        #[arg(long)]
        drv: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        store: PathBuf,
        #[arg(long)]
        repo: PathBuf,
    },
}

/// Parse arguments, run one command, and turn its outcome into an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let color = match cli.color {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => {
            std::io::stderr().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        }
    };
    let mut printer = Printer::new(cli.message_format, color, cli.quiet);
    match run(&cli, &mut printer) {
        Ok(code) => code,
        Err(error) => {
            printer.fatal(&format!("{error:#}"));
            ExitCode::from(1)
        }
    }
}

/// The store location: --store / $KILN_STORE, else the XDG default. The
/// environment is read here and nowhere else.
fn store_location(cli: &Cli) -> PathBuf {
    crate::store::default_location(
        cli.store.clone(),
        std::env::var_os("XDG_DATA_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from),
        std::env::var_os("HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from),
    )
}

fn run(cli: &Cli, printer: &mut Printer) -> anyhow::Result<ExitCode> {
    // Commands that need no repo.
    match &cli.command {
        Command::InternalBuild {
            drv,
            out,
            store,
            repo,
        } => {
            return match crate::build::run_builder(drv, out, store, repo) {
                Ok(()) => Ok(ExitCode::SUCCESS),
                Err(error) => {
                    printer.fatal(&error.to_string());
                    Ok(ExitCode::from(1))
                }
            };
        }
        Command::Store(command) => {
            let store = crate::store::Store::open(&store_location(cli))?;
            return build_cmd::store_command(&store, command, printer);
        }
        Command::Cache(command) => {
            // Inside a repo, kiln.toml's [cache] settings apply.
            let repo = match &cli.repo {
                Some(dir) => Some(dir.clone()),
                None => std::env::current_dir()
                    .ok()
                    .and_then(|cwd| crate::config::discover_root(&cwd).ok()),
            };
            return cache_cmd::cache_command(
                command,
                &store_location(cli),
                repo.as_deref(),
                printer,
            );
        }
        _ => {}
    }
    let cwd = std::env::current_dir()?;
    let evaluator = ops::open(cli.repo.as_deref(), &cwd)?;
    let sources = &evaluator.repo.sources;
    match &cli.command {
        Command::Check => {
            // kiln.toml first: its problems would stop any build.
            let settings = crate::config::settings::load(&evaluator.repo.root);
            if let Err(error) = &settings {
                for diagnostic in &error.diagnostics {
                    printer.diagnostic(diagnostic, &error.sources);
                }
            }
            let report = ops::check(&evaluator);
            for diagnostic in &report.diagnostics {
                printer.diagnostic(diagnostic, sources);
            }
            if let Err(error) = &settings {
                printer.error_count(error.diagnostics.len(), &error.sources, &error.diagnostics);
            }
            let settings_errors = settings
                .as_ref()
                .map_or_else(|e| e.diagnostics.len(), |_| 0);
            printer.check_summary(&report, sources, settings_errors);
            Ok(exit(report.ok() && settings.is_ok()))
        }
        Command::Eval { target, env, .. }
            if env.is_some() && target.kind != crate::config::DocKind::Stack =>
        {
            printer.fatal(&format!(
                "`--env` applies to stacks (stack:NAME), not to `{target}`"
            ));
            Ok(ExitCode::from(2))
        }
        Command::Eval { target, json, env } => {
            match ops::eval_in(&evaluator, target, env.as_deref()) {
                Ok(spec) => {
                    if *json {
                        printer.json(&spec)?;
                    } else {
                        printer.toml(&spec)?;
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(failure) => {
                    deploy_cmd::report_eval_failure(&evaluator, failure, printer);
                    Ok(ExitCode::from(1))
                }
            }
        }
        Command::Options { json, markdown } => {
            let docs = ops::options_doc::option_docs(&evaluator);
            if *json {
                printer.json(
                    &serde_json::json!({ "kind": "options", "version": 1, "options": docs }),
                )?;
            } else if *markdown {
                printer.stdout(&ops::options_doc::to_markdown(&docs))?;
            } else {
                printer.stdout(&ops::options_doc::to_text(&docs))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Lock {
            update,
            locked,
            dry_run,
            json,
        } => lock_command(
            &evaluator,
            update.as_ref(),
            *locked,
            *dry_run,
            *json,
            printer,
        ),
        Command::Build(args) => {
            let store = crate::store::Store::open(&store_location(cli))?;
            build_cmd::build(&evaluator, &store, args, printer)
        }
        Command::Plan(args) => {
            let store = crate::store::Store::open(&store_location(cli))?;
            plan_cmd::plan(&evaluator, &store, args, printer)
        }
        Command::ShowDerivation { target, json } => {
            build_cmd::show_derivation(&evaluator, target, *json, printer)
        }
        Command::Deploy(args) => {
            let store = crate::store::Store::open(&store_location(cli))?;
            deploy_cmd::deploy(&evaluator, &store, args, printer)
        }
        Command::Rollback(args) => {
            let store = crate::store::Store::open(&store_location(cli))?;
            deploy_cmd::rollback(&evaluator, &store, args, printer)
        }
        Command::Generations(args) => deploy_cmd::generations(&evaluator, args, printer),
        Command::Diff(args) => deploy_cmd::diff(args, printer),
        Command::Status(args) => {
            let store = crate::store::Store::open(&store_location(cli))?;
            deploy_cmd::status(&evaluator, &store, args, printer)
        }
        Command::Gc(args) => deploy_cmd::gc(&evaluator, args, printer),
        Command::Render(args) => {
            let store = crate::store::Store::open(&store_location(cli))?;
            render_cmd::render(&evaluator, &store, args, printer)
        }
        Command::Store(_) | Command::Cache(_) | Command::InternalBuild { .. } => {
            unreachable!("handled above")
        }
    }
}

fn lock_command(
    evaluator: &crate::eval::Evaluator,
    update: Option<&Vec<String>>,
    locked: bool,
    dry_run: bool,
    json: bool,
    printer: &Printer,
) -> anyhow::Result<ExitCode> {
    use crate::ops::lock::{LockError, NetworkResolvers, Update};
    let sources = &evaluator.repo.sources;
    let path = evaluator.repo.root.join("lockfile.toml");
    let wanted = match crate::ops::lock::wanted_inputs(evaluator) {
        Ok(wanted) => wanted,
        Err(LockError::Invalid(diagnostics)) => {
            for diagnostic in &diagnostics {
                printer.diagnostic(diagnostic, sources);
            }
            printer.error_count(diagnostics.len(), sources, &diagnostics);
            return Ok(ExitCode::from(1));
        }
        Err(error) => return Err(error.into()),
    };
    if dry_run {
        let lock = crate::ops::lock::read(&path)?;
        let status = crate::lock::inputs::status(&lock, &wanted);
        if json {
            let ids = |items: &[(&str, String)]| {
                items
                    .iter()
                    .map(|(k, i)| format!("{k}:{i}"))
                    .collect::<Vec<_>>()
            };
            printer.json(&serde_json::json!({
                "kind": "lock-status", "version": 1, "up_to_date": status.up_to_date(),
                "missing": ids(&status.missing), "changed": ids(&status.changed), "stale": ids(&status.stale),
            }))?;
        } else if status.up_to_date() {
            printer.status("lockfile.toml pins every input as configured");
        } else {
            printer.line(&crate::ops::lock::describe(&status))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let update = match update {
        None => Update::Missing,
        Some(ids) if ids.is_empty() => Update::All,
        Some(ids) => Update::Some(ids.clone()),
    };
    let insecure = std::env::var("KILN_INSECURE_REGISTRIES").unwrap_or_default();
    let resolvers = NetworkResolvers::new(
        crate::lock::oci::ResolverOptions {
            insecure_registries: insecure
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            ..crate::lock::oci::ResolverOptions::default()
        },
        crate::fetch::FetchOptions::default(),
    );
    match crate::ops::lock::lock(&wanted, &path, &update, locked, &resolvers) {
        Ok(report) => {
            if json {
                printer
                    .json(&serde_json::json!({ "kind": "lock", "version": 1, "report": report }))?;
            } else {
                for change in &report.changes {
                    printer.status(&format!(
                        "{} {} `{}`",
                        change.action, change.kind, change.id
                    ));
                    for detail in &change.details {
                        printer.status(&format!("    {detail}"));
                    }
                }
                for failure in &report.failures {
                    printer.fatal(&format!(
                        "cannot resolve {} `{}`: {}",
                        failure.kind, failure.id, failure.reason
                    ));
                }
                if report.changes.is_empty() && report.failures.is_empty() {
                    printer.status("lockfile.toml is up to date");
                }
            }
            Ok(exit(report.failures.is_empty()))
        }
        Err(error) => {
            printer.fatal(&error.to_string());
            Ok(ExitCode::from(1))
        }
    }
}

fn exit(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
