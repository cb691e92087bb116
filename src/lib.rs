//! kiln: a Nix-style, reproducible build system for Proxmox host images
//! and service stacks.
//!
//! The pipeline (see `docs/src/architecture.md`):
//!
//! ```text
//! hosts/ images/ modules/ stacks/   the user's repo (TOML)
//!        │
//!        ▼ config   read files with spans, resolve imports, diagnostics
//!        ▼ eval     option types, priorities, merge, interpolation → specs
//!        ▼ …        lock, plan, build, store, deploy (later stages)
//! ```
//!
//! | module | owns |
//! |---|---|
//! | [`config`] | files, TOML spans, imports, [`config::Diagnostic`] |
//! | [`eval`] | option declarations and types, merge, interpolation, [`eval::spec`] |
//! | [`ops`] | one function per command (`check`, `eval`, `options`), called by the CLI |
//! | [`cli`] | clap definitions, output formatting, exit codes |
//!
//! The library never prints; `src/main.rs` is a thin shell over [`cli::main`].

pub mod builders;
pub mod cli;
pub mod config;
pub mod eval;
pub mod ops;
pub mod store;
pub mod suggest;
