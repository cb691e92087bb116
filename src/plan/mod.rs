//! From evaluated specs to a DAG of [`Derivation`]s. Pure: the caller
//! supplies anything read from disk (the hashes of repo files).
//!
//! For a host today the DAG is:
//!
//! ```text
//! source-<file>   (fixed-output: one per `files.*.source`, addressed by its bytes)
//!      │
//!      ▼
//! <host>-overlay  (the host's files, users, units… as a directory tree)
//! ```
//!
//! For an image with a Debian base, pinned in the lockfile:
//!
//! ```text
//! <file>.deb      (fixed-output, flat: one fetch per package, addressed by
//!      │           the package's sha256 from the lockfile)
//!      ▼
//! <image>-debian-packages  (an APT index, `Packages`, over those files)
//! ```
//!
//! and for an image with a `url` base, the one fetch. Later stages add the
//! rootfs and the images built on it.

pub mod derivation;
pub mod shard;

use std::collections::BTreeMap;

pub use derivation::{Derivation, DrvHash, Input, Output, SYSTEM};

use crate::eval::spec::{HostSpec, SystemConfig};
use crate::lock::{DebianEntry, UrlEntry};
use crate::store::path::StorePath;

/// SOURCE_DATE_EPOCH for every build: 1980-01-01T00:00:00Z, the earliest
/// time every archive format kiln writes (tar, zip-style, ISO 9660, ext4)
/// can represent.
pub const SOURCE_DATE_EPOCH: &str = "315532800";

/// The overlay builder's version (part of every overlay derivation).
pub const OVERLAY_VERSION: u32 = 1;
/// The source builder's version.
pub const SOURCE_VERSION: u32 = 1;
/// The fetch builder's version.
pub const FETCH_VERSION: u32 = 1;
/// The stack-bundle builder's version.
pub const STACK_BUNDLE_VERSION: u32 = 1;
/// The debian-index builder's version.
pub const DEBIAN_INDEX_VERSION: u32 = 1;

/// What can go wrong turning specs into derivations.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("`{file}` is used by host `{host}` but was not hashed")]
    MissingSourceHash { host: String, file: String },
    #[error("cannot name a store path after `{name}`: {reason}")]
    BadName { name: String, reason: String },
    #[error("cannot serialise the builder arguments for `{target}`: {reason}")]
    Serialise { target: String, reason: String },
}

/// The derivations for a set of targets, and which of them were asked for.
#[derive(Debug, Default)]
pub struct Plan {
    pub derivations: BTreeMap<DrvHash, Derivation>,
    /// `(target, derivation)`: what the user asked to build.
    pub roots: Vec<(String, DrvHash)>,
    /// Each derivation's output path (computed once: it hashes the
    /// derivation's canonical bytes).
    outputs: BTreeMap<DrvHash, StorePath>,
}

impl Plan {
    fn add(&mut self, derivation: Derivation) -> Result<(DrvHash, StorePath), PlanError> {
        let hash = derivation.hash();
        let path = match &derivation.output {
            Output::Input => StorePath::for_derivation(hash.as_str(), &derivation.name),
            Output::Fixed { nar_sha256 } => StorePath::for_content(nar_sha256, &derivation.name),
            Output::FixedFlat { sha256, .. } => StorePath::for_flat_file(sha256, &derivation.name),
        }
        .map_err(|error| PlanError::BadName {
            name: derivation.name.clone(),
            reason: error.to_string(),
        })?;
        self.derivations.insert(hash.clone(), derivation);
        self.outputs.insert(hash.clone(), path.clone());
        Ok((hash, path))
    }

    /// The output path of a derivation in the plan.
    pub fn output(&self, hash: &DrvHash) -> &StorePath {
        &self.outputs[hash]
    }

    /// Add a host's overlay and the repo files it copies (not as a root).
    /// `source_hashes` maps repo-relative paths to the hex sha256 of their
    /// NAR serialisation.
    pub fn add_host(
        &mut self,
        spec: &HostSpec,
        source_hashes: &BTreeMap<String, String>,
    ) -> Result<DrvHash, PlanError> {
        self.add_overlay(&spec.name, &spec.config, source_hashes)
    }

    /// Add the overlay of a host or image called `name` with `config`.
    pub fn add_overlay(
        &mut self,
        name: &str,
        config: &SystemConfig,
        source_hashes: &BTreeMap<String, String>,
    ) -> Result<DrvHash, PlanError> {
        let mut inputs = BTreeMap::new();
        for file in config.files.values() {
            let Some(source) = &file.source else { continue };
            let nar_sha256 =
                source_hashes
                    .get(source)
                    .ok_or_else(|| PlanError::MissingSourceHash {
                        host: name.to_owned(),
                        file: source.clone(),
                    })?;
            let (drv, path) = self.add(source_derivation(source, nar_sha256))?;
            inputs.insert(format!("source:{source}"), Input::Fixed { drv, path });
        }
        let config =
            serde_json::to_string(&config.for_build()).map_err(|error| PlanError::Serialise {
                target: name.to_owned(),
                reason: error.to_string(),
            })?;
        let overlay = Derivation {
            name: format!("{name}-overlay"),
            builder: "overlay".into(),
            builder_version: OVERLAY_VERSION,
            system: SYSTEM.into(),
            output: Output::Input,
            args: BTreeMap::from([
                ("config".to_owned(), config),
                ("host".to_owned(), name.to_owned()),
            ]),
            inputs,
            env: BTreeMap::from([("SOURCE_DATE_EPOCH".to_owned(), SOURCE_DATE_EPOCH.to_owned())]),
        };
        let (hash, _) = self.add(overlay)?;
        Ok(hash)
    }

    /// Add a download: one file, from `urls` tried in order, that must have
    /// `sha256` and `size`. Its output path depends only on the hash and the
    /// name, so two images that fetch the same file share it.
    pub fn add_fetch(
        &mut self,
        file_name: &str,
        urls: &[String],
        sha256: &str,
        size: u64,
    ) -> Result<(DrvHash, StorePath), PlanError> {
        let urls = serde_json::to_string(urls).map_err(|error| PlanError::Serialise {
            target: file_name.to_owned(),
            reason: error.to_string(),
        })?;
        self.add(Derivation {
            name: store_name(file_name),
            builder: "fetch".into(),
            builder_version: FETCH_VERSION,
            system: SYSTEM.into(),
            output: Output::FixedFlat {
                sha256: sha256.to_owned(),
                size,
            },
            args: BTreeMap::from([("urls".to_owned(), urls)]),
            inputs: BTreeMap::new(),
            env: BTreeMap::new(),
        })
    }

    /// Add an image's Debian package set, as pinned: one fetch per `.deb`
    /// and an APT index over them. Returns the index derivation.
    pub fn add_debian_packages(
        &mut self,
        image: &str,
        entry: &DebianEntry,
    ) -> Result<DrvHash, PlanError> {
        let mirror = entry.mirror.trim_end_matches('/');
        let mut inputs = BTreeMap::new();
        for package in &entry.packages {
            let base = deb_file_name(&package.filename);
            let url = format!("{mirror}/{}", package.filename);
            let (drv, path) = self.add_fetch(base, &[url], &package.sha256, package.size)?;
            inputs.insert(format!("deb:{base}"), Input::Fixed { drv, path });
        }
        let packages =
            serde_json::to_string(&entry.packages).map_err(|error| PlanError::Serialise {
                target: image.to_owned(),
                reason: error.to_string(),
            })?;
        let (hash, _) = self.add(Derivation {
            name: format!("{image}-debian-packages"),
            builder: "debian-index".into(),
            builder_version: DEBIAN_INDEX_VERSION,
            system: SYSTEM.into(),
            output: Output::Input,
            args: BTreeMap::from([("packages".to_owned(), packages)]),
            inputs,
            env: BTreeMap::from([("SOURCE_DATE_EPOCH".to_owned(), SOURCE_DATE_EPOCH.to_owned())]),
        })?;
        Ok(hash)
    }

    /// Add a `url` input, as pinned: the one fetch.
    pub fn add_url_input(&mut self, entry: &UrlEntry) -> Result<DrvHash, PlanError> {
        let first = entry.urls.first().map_or("download", String::as_str);
        let file_name = first
            .split(['?', '#'])
            .next()
            .unwrap_or(first)
            .rsplit('/')
            .find(|part| !part.is_empty())
            .unwrap_or("download");
        let (hash, _) = self.add_fetch(file_name, &entry.urls, &entry.sha256, entry.size)?;
        Ok(hash)
    }

    /// What a root filesystem bootstrapped from the Debian set `entry` is
    /// built from: the `index` (which adds the set's fetches), every `deb:`
    /// input, the `overlay`, and the set's parameters for the builder.
    fn debian_rootfs_inputs(
        &mut self,
        name: &str,
        entry: &DebianEntry,
        overlay: &DrvHash,
    ) -> Result<(BTreeMap<String, Input>, crate::builders::lxc::DebianParams), PlanError> {
        let index = self.add_debian_packages(name, entry)?;
        let mut inputs = BTreeMap::new();
        inputs.insert(
            "index".to_owned(),
            Input::Derivation {
                drv: index.clone(),
                path: self.output(&index).clone(),
            },
        );
        inputs.insert(
            "overlay".to_owned(),
            Input::Derivation {
                drv: overlay.clone(),
                path: self.output(overlay).clone(),
            },
        );
        for (key, input) in &self.derivations[&index].inputs {
            inputs.insert(key.clone(), input.clone());
        }
        let debian = crate::builders::lxc::DebianParams {
            suite: entry.suite.clone(),
            architecture: entry.architecture.clone(),
            mirror: entry.mirror.clone(),
            components: entry.components.clone(),
            variant: entry.variant.clone(),
            requested: entry.requested.clone(),
        };
        Ok((inputs, debian))
    }

    /// Add an LXC host's template: the host's pinned Debian set (its
    /// fetches and index), its overlay (already added: `overlay`), and the
    /// `lxc` derivation over them. `version` names the template file
    /// (`HOST_VERSION_amd64.tar.zst`).
    pub fn add_lxc_template(
        &mut self,
        name: &str,
        overlay: &DrvHash,
        entry: &DebianEntry,
        version: &str,
    ) -> Result<DrvHash, PlanError> {
        let (inputs, debian) = self.debian_rootfs_inputs(name, entry, overlay)?;
        let json = |value: &dyn erased::Json| {
            value.to_json().map_err(|reason| PlanError::Serialise {
                target: name.to_owned(),
                reason,
            })
        };
        let (hash, _) = self.add(Derivation {
            name: format!("{name}-lxc"),
            builder: crate::builders::lxc::BUILDER.into(),
            builder_version: crate::builders::lxc::VERSION,
            system: SYSTEM.into(),
            output: Output::Input,
            args: BTreeMap::from([
                ("debian".to_owned(), json(&debian)?),
                ("host".to_owned(), name.to_owned()),
                ("packages".to_owned(), json(&entry.packages)?),
                (
                    "template".to_owned(),
                    format!("{name}_{version}_{}.tar.zst", entry.architecture),
                ),
            ]),
            inputs,
            env: BTreeMap::from([("SOURCE_DATE_EPOCH".to_owned(), SOURCE_DATE_EPOCH.to_owned())]),
        })?;
        Ok(hash)
    }

    /// Add the VM image of host `name` (a `vm` derivation): its disk from
    /// the Debian set `entry` and the overlay, its seed and its VM spec
    /// from `config`. With `raw`, the output also holds `disk.raw`.
    pub fn add_vm_image(
        &mut self,
        name: &str,
        overlay: &DrvHash,
        entry: &DebianEntry,
        config: &SystemConfig,
        raw: bool,
    ) -> Result<DrvHash, PlanError> {
        let (inputs, debian) = self.debian_rootfs_inputs(name, entry, overlay)?;
        let json = |value: &dyn erased::Json| {
            value.to_json().map_err(|reason| PlanError::Serialise {
                target: name.to_owned(),
                reason,
            })
        };
        let mut args = BTreeMap::from([
            ("config".to_owned(), json(&config.for_build())?),
            ("debian".to_owned(), json(&debian)?),
            ("host".to_owned(), name.to_owned()),
            ("packages".to_owned(), json(&entry.packages)?),
        ]);
        if raw {
            args.insert("raw".to_owned(), "true".to_owned());
        }
        let (hash, _) = self.add(Derivation {
            name: format!("{name}-vm{}", if raw { "-raw" } else { "" }),
            builder: crate::builders::vm::BUILDER.into(),
            builder_version: crate::builders::vm::VERSION,
            system: SYSTEM.into(),
            output: Output::Input,
            args,
            inputs,
            env: BTreeMap::from([("SOURCE_DATE_EPOCH".to_owned(), SOURCE_DATE_EPOCH.to_owned())]),
        })?;
        Ok(hash)
    }

    /// Add the VM image of host `name` from a pinned vendor disk image (a
    /// `url` input in `format` `qcow2` or `raw`): the disk is passed
    /// through (converted to qcow2), and the seed carries the host's
    /// configuration.
    pub fn add_vm_image_from_disk(
        &mut self,
        name: &str,
        overlay: &DrvHash,
        entry: &UrlEntry,
        format: &str,
        config: &SystemConfig,
        raw: bool,
    ) -> Result<DrvHash, PlanError> {
        let base = self.add_url_input(entry)?;
        let inputs = BTreeMap::from([
            (
                "base".to_owned(),
                Input::Fixed {
                    drv: base.clone(),
                    path: self.output(&base).clone(),
                },
            ),
            (
                "overlay".to_owned(),
                Input::Derivation {
                    drv: overlay.clone(),
                    path: self.output(overlay).clone(),
                },
            ),
        ]);
        let config =
            serde_json::to_string(&config.for_build()).map_err(|error| PlanError::Serialise {
                target: name.to_owned(),
                reason: error.to_string(),
            })?;
        let mut args = BTreeMap::from([
            ("config".to_owned(), config),
            ("disk_format".to_owned(), format.to_owned()),
            ("host".to_owned(), name.to_owned()),
        ]);
        if raw {
            args.insert("raw".to_owned(), "true".to_owned());
        }
        let (hash, _) = self.add(Derivation {
            name: format!("{name}-vm{}", if raw { "-raw" } else { "" }),
            builder: crate::builders::vm::BUILDER.into(),
            builder_version: crate::builders::vm::VERSION,
            system: SYSTEM.into(),
            output: Output::Input,
            args,
            inputs,
            env: BTreeMap::from([("SOURCE_DATE_EPOCH".to_owned(), SOURCE_DATE_EPOCH.to_owned())]),
        })?;
        Ok(hash)
    }

    /// Add a template built from a pinned rootfs tarball (a `url` input)
    /// and the overlay `overlay`.
    pub fn add_lxc_template_from_tarball(
        &mut self,
        name: &str,
        overlay: &DrvHash,
        entry: &UrlEntry,
        version: &str,
        architecture: &str,
    ) -> Result<DrvHash, PlanError> {
        let base = self.add_url_input(entry)?;
        let input = Input::Fixed {
            drv: base.clone(),
            path: self.output(&base).clone(),
        };
        self.add_lxc_over(name, input, overlay, version, architecture)
    }

    /// Add a template built on another image's template (`base.image`):
    /// `base` is that image's `lxc` derivation.
    pub fn add_lxc_template_from_image(
        &mut self,
        name: &str,
        overlay: &DrvHash,
        base: &DrvHash,
        version: &str,
        architecture: &str,
    ) -> Result<DrvHash, PlanError> {
        let input = Input::Derivation {
            drv: base.clone(),
            path: self.output(base).clone(),
        };
        self.add_lxc_over(name, input, overlay, version, architecture)
    }

    fn add_lxc_over(
        &mut self,
        name: &str,
        base: Input,
        overlay: &DrvHash,
        version: &str,
        architecture: &str,
    ) -> Result<DrvHash, PlanError> {
        let inputs = BTreeMap::from([
            ("base".to_owned(), base),
            (
                "overlay".to_owned(),
                Input::Derivation {
                    drv: overlay.clone(),
                    path: self.output(overlay).clone(),
                },
            ),
        ]);
        let (hash, _) = self.add(Derivation {
            name: format!("{name}-lxc"),
            builder: crate::builders::lxc::BUILDER.into(),
            builder_version: crate::builders::lxc::VERSION,
            system: SYSTEM.into(),
            output: Output::Input,
            args: BTreeMap::from([
                ("host".to_owned(), name.to_owned()),
                (
                    "template".to_owned(),
                    format!("{name}_{version}_{architecture}.tar.zst"),
                ),
            ]),
            inputs,
            env: BTreeMap::from([("SOURCE_DATE_EPOCH".to_owned(), SOURCE_DATE_EPOCH.to_owned())]),
        })?;
        Ok(hash)
    }

    /// Mark a derivation as asked for under `target`.
    /// Add the bundle of a pinned stack for one render target: a
    /// directory of text files, rendered by the `stack-bundle` builder from
    /// the pinned model alone (no inputs: the lockfile's digests are in
    /// the model). Provenance is left out of the argument: where a value
    /// was written changes nothing in the bundle.
    pub fn add_stack_bundle(
        &mut self,
        stack: &crate::stack::PinnedStack,
        target: crate::stack::render::Target,
    ) -> Result<DrvHash, PlanError> {
        let name = match &stack.stack.env {
            Some(env) => format!("{}-{env}-{target}", stack.stack.name),
            None => format!("{}-{target}", stack.stack.name),
        };
        let mut model = stack.clone();
        model.stack.provenance.clear();
        let json = serde_json::to_string(&model).map_err(|error| PlanError::Serialise {
            target: name.clone(),
            reason: error.to_string(),
        })?;
        let (hash, _) = self.add(Derivation {
            name: store_name(&name),
            builder: crate::builders::stack::BUILDER.into(),
            builder_version: STACK_BUNDLE_VERSION,
            system: SYSTEM.into(),
            output: Output::Input,
            args: BTreeMap::from([
                ("stack".to_owned(), json),
                ("target".to_owned(), target.name().to_owned()),
            ]),
            inputs: BTreeMap::new(),
            env: BTreeMap::new(),
        })?;
        Ok(hash)
    }

    pub fn add_root(&mut self, target: &str, hash: DrvHash) {
        if !self.roots.iter().any(|(t, h)| t == target && *h == hash) {
            self.roots.push((target.to_owned(), hash));
        }
    }

    /// Derivations in dependency order (inputs first), ties by hash: the
    /// same plan always lists in the same order.
    pub fn topological(&self) -> Vec<&DrvHash> {
        let mut order = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for hash in self.derivations.keys() {
            self.visit(hash, &mut seen, &mut order);
        }
        order
    }

    fn visit<'a>(
        &'a self,
        hash: &'a DrvHash,
        seen: &mut std::collections::BTreeSet<&'a DrvHash>,
        order: &mut Vec<&'a DrvHash>,
    ) {
        if !seen.insert(hash) {
            return;
        }
        if let Some(derivation) = self.derivations.get(hash) {
            for input in derivation.inputs.values() {
                self.visit(input.drv(), seen, order);
            }
        }
        order.push(hash);
    }
}

/// A repo file copied into the store, addressed by its contents.
fn source_derivation(repo_path: &str, nar_sha256: &str) -> Derivation {
    let base = repo_path.rsplit('/').next().unwrap_or(repo_path);
    Derivation {
        name: format!("source-{}", store_name(base)),
        builder: "source".into(),
        builder_version: SOURCE_VERSION,
        system: SYSTEM.into(),
        output: Output::Fixed {
            nar_sha256: nar_sha256.to_owned(),
        },
        args: BTreeMap::from([("path".to_owned(), repo_path.to_owned())]),
        inputs: BTreeMap::new(),
        env: BTreeMap::new(),
    }
}

/// Serialising builder arguments to canonical JSON.
mod erased {
    pub(super) trait Json {
        fn to_json(&self) -> Result<String, String>;
    }

    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> Result<String, String> {
            serde_json::to_string(self).map_err(|e| e.to_string())
        }
    }
}

/// `pool/main/a/adduser/adduser_3.134_all.deb` → `adduser_3.134_all.deb`.
pub fn deb_file_name(filename: &str) -> &str {
    filename.rsplit('/').next().unwrap_or(filename)
}

/// A file name made acceptable as a store path name: characters Nix does
/// not allow become `_`.
fn store_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "+-._?=".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.starts_with('.') {
        out.replace_range(0..1, "_");
    }
    out.truncate(180);
    out
}
