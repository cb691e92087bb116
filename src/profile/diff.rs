//! What changed between two generations of a host: packages (from the
//! images' `manifest.json`), the files kiln manages (the overlays), the
//! evaluated configuration and the Proxmox guest configuration.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::Generation;

/// One changed item: absent on one side means added or removed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    pub key: String,
    pub before: Option<String>,
    pub after: Option<String>,
}

/// The differences, by kind; empty lists mean nothing changed there.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Diff {
    pub packages: Vec<Change>,
    pub files: Vec<Change>,
    pub config: Vec<Change>,
    pub guest: Vec<Change>,
    /// What could not be compared (a store path that was garbage-collected).
    pub notes: Vec<String>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.packages.is_empty()
            && self.files.is_empty()
            && self.config.is_empty()
            && self.guest.is_empty()
    }
}

/// Compare generation `a` with generation `b`.
pub fn diff(a: &Generation, b: &Generation) -> Diff {
    let mut out = Diff::default();
    let packages =
        |g: &Generation, notes: &mut Vec<String>| match packages_of(Path::new(&g.store_path)) {
            Ok(map) => Some(map),
            Err(reason) => {
                notes.push(format!(
                    "packages of generation {}: {reason} (was it garbage-collected?)",
                    g.number
                ));
                None
            }
        };
    if let (Some(before), Some(after)) = (packages(a, &mut out.notes), packages(b, &mut out.notes))
    {
        out.packages = changes(&before, &after);
    }
    let files = |g: &Generation, notes: &mut Vec<String>| match &g.overlay {
        Some(overlay) => match tree(Path::new(overlay)) {
            Ok(map) => Some(map),
            Err(reason) => {
                notes.push(format!("files of generation {}: {reason}", g.number));
                None
            }
        },
        None => None,
    };
    if let (Some(before), Some(after)) = (files(a, &mut out.notes), files(b, &mut out.notes)) {
        out.files = changes(&before, &after);
    }
    out.config = changes(&flatten(&a.config), &flatten(&b.config));
    out.guest = changes(&a.guest, &b.guest);
    out
}

fn changes(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) -> Vec<Change> {
    let mut keys: Vec<&String> = before.keys().chain(after.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| before.get(*k) != after.get(*k))
        .map(|k| Change {
            key: k.clone(),
            before: before.get(k).cloned(),
            after: after.get(k).cloned(),
        })
        .collect()
}

/// Package name → version, from an image's `manifest.json`.
fn packages_of(image: &Path) -> Result<BTreeMap<String, String>, String> {
    let path = image.join("manifest.json");
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let manifest: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = BTreeMap::new();
    for package in manifest["packages"].as_array().into_iter().flatten() {
        if let (Some(name), Some(version)) = (package["name"].as_str(), package["version"].as_str())
        {
            out.insert(name.to_owned(), version.to_owned());
        }
    }
    Ok(out)
}

/// Path → a short description of each entry of a tree: `file 0644
/// sha256:…`, `link → target`, `dir 0755`.
fn tree(root: &Path) -> Result<BTreeMap<String, String>, String> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = BTreeMap::new();
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
            let path = entry.path();
            let relative = path.strip_prefix(root).map_or_else(
                |_| path.display().to_string(),
                |p| format!("/{}", p.display()),
            );
            let meta =
                std::fs::symlink_metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let mode = meta.permissions().mode() & 0o7777;
            let value = if meta.file_type().is_symlink() {
                let target =
                    std::fs::read_link(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                format!("link -> {}", target.display())
            } else if meta.is_dir() {
                pending.push(path.clone());
                format!("dir {mode:04o}")
            } else {
                let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                let digest = Sha256::digest(&bytes);
                format!(
                    "file {mode:04o} sha256:{}",
                    &crate::plan::derivation::hex(&digest)[..16]
                )
            };
            out.insert(relative, value);
        }
    }
    Ok(out)
}

/// A JSON value as dotted paths → scalar text.
fn flatten(value: &serde_json::Value) -> BTreeMap<String, String> {
    fn walk(prefix: &str, value: &serde_json::Value, out: &mut BTreeMap<String, String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    let path = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    walk(&path, value, out);
                }
            }
            serde_json::Value::Null => {}
            other => {
                out.insert(prefix.to_owned(), other.to_string());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk("", value, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generation(number: u32, image: &Path, overlay: &Path, cores: u32) -> Generation {
        Generation {
            store_path: image.display().to_string(),
            overlay: Some(overlay.display().to_string()),
            config: serde_json::json!({"proxmox": {"cores": cores}, "packages": ["a"]}),
            guest: BTreeMap::from([("cores".to_owned(), cores.to_string())]),
            ..Generation::example("db", number)
        }
    }

    #[test]
    fn packages_files_and_config() {
        let dir = tempfile::tempdir().unwrap();
        let make = |name: &str, version: &str, motd: &str| {
            let image = dir.path().join(format!("{name}-image"));
            let overlay = dir.path().join(format!("{name}-overlay"));
            std::fs::create_dir_all(overlay.join("etc")).unwrap();
            std::fs::create_dir_all(&image).unwrap();
            std::fs::write(overlay.join("etc/motd"), motd).unwrap();
            std::fs::write(
                image.join("manifest.json"),
                serde_json::json!({"packages": [
                    {"name": "curl", "version": version},
                    {"name": "less", "version": "590-2"},
                ]})
                .to_string(),
            )
            .unwrap();
            (image, overlay)
        };
        let (image_a, overlay_a) = make("a", "7.88.1-10", "one\n");
        let (image_b, overlay_b) = make("b", "7.88.1-10+deb12u5", "two\n");
        let a = generation(1, &image_a, &overlay_a, 2);
        let b = generation(2, &image_b, &overlay_b, 4);
        let d = diff(&a, &b);
        assert_eq!(
            d.packages,
            [Change {
                key: "curl".into(),
                before: Some("7.88.1-10".into()),
                after: Some("7.88.1-10+deb12u5".into())
            }]
        );
        assert_eq!(d.files.len(), 1, "{:?}", d.files);
        assert_eq!(d.files[0].key, "/etc/motd");
        assert_eq!(d.config[0].key, "proxmox.cores");
        assert_eq!(d.guest[0].after.as_deref(), Some("4"));
        assert!(diff(&a, &a).is_empty());
        // A collected store path is a note, not a failure.
        let mut gone = a.clone();
        gone.store_path = dir.path().join("missing").display().to_string();
        assert!(!diff(&gone, &b).notes.is_empty());
    }
}
