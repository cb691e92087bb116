//! The `debian-index` builder: an APT `Packages` index over the `.deb`
//! files of a pinned Debian package set (each one a fetched store path).
//!
//! Output: a directory with one file, `Packages`, sorted by package name,
//! one stanza per package: its control fields exactly as `dpkg-deb
//! --field` prints them, then `Filename: pool/<file>.deb`, `Size` and
//! `SHA256` from the lockfile. A flat repository made of this file and the
//! `.deb` files under `pool/` is what the image builders bootstrap from
//! with the network closed.
//!
//! Each package's `Package`, `Version` and `Architecture` fields are
//! checked against the lockfile: a lock entry edited to name one package
//! while pinning another's bytes fails here.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::lock::DebianPackage;
use crate::plan::deb_file_name;

/// Write `out/Packages` for `packages`; `debs` maps each package's file
/// name (`adduser_3.134_all.deb`) to its store path.
pub fn render(
    packages: &[DebianPackage],
    debs: &BTreeMap<String, PathBuf>,
    out: &Path,
) -> Result<(), String> {
    let mut sorted: Vec<&DebianPackage> = packages.iter().collect();
    sorted.sort_by(|a, b| {
        (&a.name, &a.architecture, &a.version).cmp(&(&b.name, &b.architecture, &b.version))
    });
    let mut index = String::new();
    for package in sorted {
        let file = deb_file_name(&package.filename);
        let path = debs
            .get(file)
            .ok_or_else(|| format!("{file} is not among the builder's inputs"))?;
        let control = control_fields(path)?;
        for (field, expected) in [
            ("Package", &package.name),
            ("Version", &package.version),
            ("Architecture", &package.architecture),
        ] {
            let found = field_value(&control, field);
            if found != Some(expected.as_str()) {
                return Err(format!(
                    "{file}: the lockfile says {field} `{expected}`, the package says `{}`",
                    found.unwrap_or("(none)")
                ));
            }
        }
        index.push_str(control.trim_end_matches('\n'));
        index.push_str(&format!(
            "\nFilename: pool/{file}\nSize: {}\nSHA256: {}\n\n",
            package.size, package.sha256
        ));
    }
    fs::create_dir(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let target = out.join("Packages");
    let mut file = fs::File::create(&target).map_err(|e| format!("{}: {e}", target.display()))?;
    file.write_all(index.as_bytes())
        .map_err(|e| format!("{}: {e}", target.display()))?;
    Ok(())
}

/// The control stanza of a `.deb` (`dpkg-deb --field FILE`).
fn control_fields(deb: &Path) -> Result<String, String> {
    let output = Command::new("dpkg-deb")
        .arg("--field")
        .arg(deb)
        .output()
        .map_err(|e| {
            format!(
                "cannot run dpkg-deb (Debian package `dpkg`) to read {}: {e}",
                deb.display()
            )
        })?;
    if !output.status.success() {
        return Err(format!(
            "dpkg-deb --field {} failed: {}",
            deb.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    String::from_utf8(output.stdout)
        .map_err(|_| format!("{}: the control file is not UTF-8", deb.display()))
}

/// The value of a single-line field of a control stanza.
fn field_value<'a>(stanza: &'a str, field: &str) -> Option<&'a str> {
    stanza.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        (name == field).then(|| value.trim())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields() {
        let stanza = "Package: hello\nVersion: 2.10-3\nDescription: x\n y\nArchitecture: amd64\n";
        assert_eq!(field_value(stanza, "Package"), Some("hello"));
        assert_eq!(field_value(stanza, "Architecture"), Some("amd64"));
        assert_eq!(field_value(stanza, "Depends"), None);
    }
}
