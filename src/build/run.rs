//! Running one builder: the parent side (spawn the sandboxed child, collect
//! its log) and the child side ([`run_builder`], behind `kiln
//! internal-build`).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::{BuildError, BuildOptions, sandbox};
use crate::plan::Derivation;
use crate::store::path::StorePath;
use crate::store::{Store, StoreError, nar};

/// Run `derivation`'s builder in a child process, writing `out`.
pub(super) fn spawn(
    store: &Store,
    derivation: &Derivation,
    scratch: &Path,
    out: &Path,
    options: &BuildOptions,
) -> Result<(), BuildError> {
    let failed = |reason: String| BuildError::Failed {
        name: derivation.name.clone(),
        reason,
        kept: None,
    };
    let drv_file = scratch.join("drv.json");
    let json = serde_json::to_vec(derivation).map_err(|e| failed(e.to_string()))?;
    fs::write(&drv_file, json).map_err(|e| failed(format!("{}: {e}", drv_file.display())))?;
    let home = scratch.join("home");
    fs::create_dir_all(&home).map_err(|e| failed(format!("{}: {e}", home.display())))?;
    let log_file = scratch.join("log");
    let log =
        fs::File::create(&log_file).map_err(|e| failed(format!("{}: {e}", log_file.display())))?;
    let log_err = log.try_clone().map_err(|e| failed(e.to_string()))?;
    let network = derivation.is_fixed_output();
    let mut command = sandbox::command(&options.kiln, network, &derivation.env, &home);
    command
        .arg("internal-build")
        .arg("--drv")
        .arg(&drv_file)
        .arg("--out")
        .arg(out)
        .arg("--store")
        .arg(store.root())
        .arg("--repo")
        .arg(&options.repo)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    let status = command.status().map_err(|source| BuildError::Spawn {
        name: derivation.name.clone(),
        source,
    })?;
    if status.success() {
        return Ok(());
    }
    let log = fs::read_to_string(&log_file).unwrap_or_default();
    let tail: Vec<&str> = log
        .lines()
        .rev()
        .take(20)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    Err(failed(format!(
        "builder `{}` exited with {status}\n{}",
        derivation.builder,
        tail.join("\n")
    )))
}

/// Files that differ between a valid output and a rebuild (for --check).
pub(super) fn compare(
    store: &Store,
    path: &StorePath,
    rebuilt: &Path,
) -> Result<Vec<String>, BuildError> {
    // Compare with the bytes in the store, not with the record: --check
    // must also notice a store path that changed after registration.
    let original = store.real_path(path);
    let hash_of = |p: &Path| {
        nar::hash(p).map_err(|e| StoreError::Hash {
            path: p.to_path_buf(),
            reason: e.to_string(),
        })
    };
    if hash_of(&original)?.to_hex() == hash_of(rebuilt)?.to_hex() {
        return Ok(Vec::new());
    }
    let mut left = BTreeMap::new();
    let mut right = BTreeMap::new();
    listing(&original, &original, &mut left);
    listing(rebuilt, rebuilt, &mut right);
    let mut differences = Vec::new();
    for name in left
        .keys()
        .chain(right.keys())
        .collect::<std::collections::BTreeSet<_>>()
    {
        match (left.get(name), right.get(name)) {
            (Some(a), Some(b)) if a == b => {}
            (Some(_), Some(_)) => differences.push(format!("{name}: contents or mode differ")),
            (Some(_), None) => differences.push(format!("{name}: only in the first build")),
            (None, _) => differences.push(format!("{name}: only in the rebuild")),
        }
    }
    if differences.is_empty() {
        differences.push("the NAR serialisations differ".into());
    }
    Ok(differences)
}

/// `relative path → (kind, executable, sha256 or symlink target)`.
fn listing(root: &Path, path: &Path, out: &mut BTreeMap<String, String>) {
    use std::os::unix::fs::PermissionsExt;
    let name = path
        .strip_prefix(root)
        .map_or(String::new(), |p| p.to_string_lossy().into_owned());
    let Ok(metadata) = fs::symlink_metadata(path) else {
        return;
    };
    if metadata.file_type().is_symlink() {
        out.insert(
            name,
            format!(
                "symlink {}",
                fs::read_link(path).unwrap_or_default().display()
            ),
        );
    } else if metadata.is_dir() {
        out.insert(name, "directory".into());
        if let Ok(entries) = fs::read_dir(path) {
            for entry in entries.filter_map(Result::ok) {
                listing(root, &entry.path(), out);
            }
        }
    } else {
        let hash = nar::hash(path).map(|h| h.to_hex()).unwrap_or_default();
        out.insert(
            name,
            format!("file {:o} {hash}", metadata.permissions().mode() & 0o111),
        );
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BuilderError {
    #[error("cannot read the derivation {path}: {reason}")]
    Derivation { path: PathBuf, reason: String },
    #[error(
        "unknown builder `{0}` (this kiln knows: source, overlay, debian-index, lxc, vm, fetch)"
    )]
    Unknown(String),
    #[error("{0}")]
    Failed(String),
}

/// The inputs whose key starts with `prefix` (`deb:`, `source:`), by the
/// rest of the key, with their paths in the store.
fn prefixed_inputs(
    derivation: &Derivation,
    store_root: &Path,
    prefix: &str,
) -> BTreeMap<String, PathBuf> {
    derivation
        .inputs
        .iter()
        .filter_map(|(key, input)| {
            key.strip_prefix(prefix)
                .map(|rest| (rest.to_owned(), store_root.join(input.path().to_string())))
        })
        .collect()
}

/// The store path of the derivation's input `key`.
fn input_path(
    derivation: &Derivation,
    store_root: &Path,
    key: &str,
) -> Result<PathBuf, BuilderError> {
    derivation
        .inputs
        .get(key)
        .map(|input| store_root.join(input.path().to_string()))
        .ok_or_else(|| BuilderError::Failed(format!("no `{key}` input")))
}

/// The derivation's `SOURCE_DATE_EPOCH` (0 if it has none), as the
/// builder wants it (`u64`, or `i64` for the overlay).
fn source_date_epoch<T: std::str::FromStr + Default>(derivation: &Derivation) -> T {
    derivation
        .env
        .get("SOURCE_DATE_EPOCH")
        .and_then(|e| e.parse().ok())
        .unwrap_or_default()
}

/// Scratch space next to `out`, removed with the build's scratch.
fn scratch(out: &Path) -> Result<PathBuf, BuilderError> {
    let work = out.with_file_name("work");
    fs::create_dir_all(&work)
        .map_err(|e| BuilderError::Failed(format!("{}: {e}", work.display())))?;
    Ok(work)
}

/// The child side: set umask 022, read the derivation, run its builder.
pub fn run_builder(
    drv_file: &Path,
    out: &Path,
    store_root: &Path,
    repo: &Path,
) -> Result<(), BuilderError> {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
    let bytes = fs::read(drv_file).map_err(|e| BuilderError::Derivation {
        path: drv_file.to_path_buf(),
        reason: e.to_string(),
    })?;
    let derivation: Derivation =
        serde_json::from_slice(&bytes).map_err(|e| BuilderError::Derivation {
            path: drv_file.to_path_buf(),
            reason: e.to_string(),
        })?;
    let arg = |key: &str| {
        derivation.args.get(key).ok_or_else(|| {
            BuilderError::Failed(format!(
                "derivation {} has no `{key}` argument",
                derivation.name
            ))
        })
    };
    match derivation.builder.as_str() {
        "source" => {
            let relative = arg("path")?;
            let from = repo.join(relative);
            // A copy keeps the bytes and the execute bit, which is all a NAR records.
            fs::copy(&from, out)
                .map_err(|e| BuilderError::Failed(format!("copying {}: {e}", from.display())))?;
            Ok(())
        }
        "overlay" => {
            let config = serde_json::from_str(arg("config")?)
                .map_err(|e| BuilderError::Failed(format!("config: {e}")))?;
            let host = arg("host")?;
            let sources = prefixed_inputs(&derivation, store_root, "source:");
            let epoch = source_date_epoch(&derivation);
            let input = crate::builders::overlay::OverlayInput {
                host,
                config: &config,
                sources: &sources,
                epoch,
            };
            crate::builders::overlay::render(&input, out)
                .map_err(|e| BuilderError::Failed(e.to_string()))?;
            Ok(())
        }
        crate::builders::stack::BUILDER => {
            let stack = serde_json::from_str(arg("stack")?)
                .map_err(|e| BuilderError::Failed(format!("stack: {e}")))?;
            let target = crate::stack::render::Target::parse(arg("target")?).ok_or_else(|| {
                BuilderError::Failed(format!(
                    "unknown render target `{}`",
                    arg("target").unwrap_or(&String::new())
                ))
            })?;
            crate::builders::stack::build(&stack, target, out)
                .map_err(|e| BuilderError::Failed(e.to_string()))
        }
        "debian-index" => {
            let packages: Vec<crate::lock::DebianPackage> = serde_json::from_str(arg("packages")?)
                .map_err(|e| BuilderError::Failed(format!("packages: {e}")))?;
            let debs = prefixed_inputs(&derivation, store_root, "deb:");
            crate::builders::debian_index::render(&packages, &debs, out)
                .map_err(BuilderError::Failed)
        }
        crate::builders::vm::BUILDER if derivation.args.contains_key("disk_format") => {
            // A VM from a vendor's disk image: no rootfs to make.
            let path = |key: &str| input_path(&derivation, store_root, key);
            let epoch = source_date_epoch(&derivation);
            let work = scratch(out)?;
            let config: crate::eval::spec::SystemConfig = serde_json::from_str(arg("config")?)
                .map_err(|e| BuilderError::Failed(format!("config: {e}")))?;
            let hash = derivation.hash();
            let (image, overlay) = (path("base")?, path("overlay")?);
            let vm = crate::builders::vm::VmInput {
                host: arg("host")?,
                overlay: &overlay,
                epoch,
                derivation: hash.as_str(),
                work: &work,
                source: crate::builders::vm::Source::Disk {
                    image: &image,
                    format: arg("disk_format")?,
                },
                config: &config,
                raw: derivation.args.get("raw").is_some_and(|v| v == "true"),
            };
            crate::builders::vm::build(&vm, out).map_err(|e| BuilderError::Failed(e.to_string()))
        }
        builder @ (crate::builders::lxc::BUILDER | crate::builders::vm::BUILDER) => {
            let input_path = |key: &str| input_path(&derivation, store_root, key);
            let debs = prefixed_inputs(&derivation, store_root, "deb:");
            let epoch = source_date_epoch(&derivation);
            // Scratch space next to `out`, removed with the build's scratch.
            let work = scratch(out)?;
            let hash = derivation.hash();
            let debian: Option<crate::builders::lxc::DebianParams> = derivation
                .args
                .get("debian")
                .map(|text| serde_json::from_str(text))
                .transpose()
                .map_err(|e| BuilderError::Failed(format!("debian: {e}")))?;
            let packages: Vec<crate::lock::DebianPackage> = match derivation.args.get("packages") {
                Some(text) => serde_json::from_str(text)
                    .map_err(|e| BuilderError::Failed(format!("packages: {e}")))?,
                None => Vec::new(),
            };
            let index = input_path("index");
            // A `base` is a rootfs tarball, or another image's template
            // output (a directory holding one `.tar.zst`).
            let tarball = input_path("base").and_then(|path| {
                if !path.is_dir() {
                    return Ok(path);
                }
                fs::read_dir(&path)
                    .ok()
                    .into_iter()
                    .flatten()
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .find(|p| p.to_string_lossy().ends_with(".tar.zst"))
                    .ok_or_else(|| {
                        BuilderError::Failed(format!("no template in {}", path.display()))
                    })
            });
            let base = match (&debian, &index, &tarball) {
                (Some(debian), Ok(index), _) => crate::builders::lxc::Base::Debian {
                    debian,
                    packages: &packages,
                    index,
                    debs: &debs,
                },
                (None, _, Ok(archive)) => crate::builders::lxc::Base::Tarball { archive },
                _ => {
                    return Err(BuilderError::Failed(
                        "an lxc derivation needs a Debian set (`debian`, `index`) or a `base` tarball".into(),
                    ));
                }
            };
            let overlay = input_path("overlay")?;
            let input = crate::builders::lxc::LxcInput {
                host: arg("host")?,
                template: if builder == crate::builders::vm::BUILDER {
                    ""
                } else {
                    arg("template")?
                },
                base,
                overlay: &overlay,
                epoch,
                derivation: hash.as_str(),
                work: &work,
            };
            if builder == crate::builders::lxc::BUILDER {
                return crate::builders::lxc::build(&input, out)
                    .map_err(|e| BuilderError::Failed(e.to_string()));
            }
            let config: crate::eval::spec::SystemConfig = serde_json::from_str(arg("config")?)
                .map_err(|e| BuilderError::Failed(format!("config: {e}")))?;
            let vm = crate::builders::vm::VmInput {
                host: input.host,
                overlay: &overlay,
                epoch,
                derivation: hash.as_str(),
                work: &work,
                source: crate::builders::vm::Source::Rootfs(input),
                config: &config,
                raw: derivation.args.get("raw").is_some_and(|v| v == "true"),
            };
            crate::builders::vm::build(&vm, out).map_err(|e| BuilderError::Failed(e.to_string()))
        }
        crate::builders::fetch::BUILDER => Err(BuilderError::Failed(
            "the fetch builder runs in the kiln process that schedules the build, not in a sandbox"
                .into(),
        )),
        other => Err(BuilderError::Unknown(other.to_owned())),
    }
}
