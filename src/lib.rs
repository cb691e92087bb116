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
//!        ▼ plan     specs → derivations (pure data, hashed)
//!        ▼ build    scheduler: valid? skip : run the builder, register the output
//!        ▼ store    <store>/<hash>-<name>, immutable, with a validity record
//!        ▼ …        lock, deploy (later stages)
//! ```
//!
//! | module | owns |
//! |---|---|
//! | [`config`] | files, TOML spans, imports, [`config::Diagnostic`] |
//! | [`eval`] | option declarations and types, merge, interpolation, [`eval::spec`] |
//! | [`plan`] | derivations, their canonical bytes and hashes, the DAG for targets |
//! | [`store`] | store paths, Nix base32, NAR hashing, validity records, locks, verify, gc |
//! | [`build`] | the scheduler, the hermetic builder process, `--explain`, `--check` |
//! | [`builders`] | one module per builder (`overlay`, `fetch`, `debian-index`, `lxc`, `vm` with its `seed`; `source` is built in) |
//! | [`cache`] | binary cache: storage (one backend type over S3, a directory and memory, chosen by URL), signed records and keys |
//! | [`archive`] | reproducible `.tar.zst` packing of a root filesystem, safe unpacking of rootfs tarballs |
//! | [`proxmox`] | Proxmox VE's published API schema, and checking request parameters against it |
//! | [`stack`] | the typed service model of stacks, its defaults with provenance, the secret lint, pinning images from the lock |
//! | [`yaml`] | the one way kiln writes YAML (quoting what YAML 1.1 would misread) |
//! | [`ops`] | one function per command, called by the CLI |
//! | [`cli`] | clap definitions, output formatting, exit codes |
//!
//! The library never prints; `src/main.rs` is a thin shell over [`cli::main`].

pub mod archive;
pub mod build;
pub mod builders;
pub mod cache;
pub mod cli;
pub mod config;
pub mod deploy;
pub mod eval;
pub mod fetch;
pub mod fs;
pub mod lock;
pub mod ops;
pub mod plan;
pub mod profile;
pub mod proxmox;
pub mod stack;
pub mod store;
pub mod suggest;
pub mod yaml;
