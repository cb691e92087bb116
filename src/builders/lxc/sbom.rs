//! What is inside: the installed Debian packages (from the rootfs's dpkg
//! status, matched to the lockfile's pins), and an SPDX 2.3 JSON SBOM of
//! them.
//!
//! The SBOM is a pure function of the template and its packages: its
//! `created` time is SOURCE_DATE_EPOCH and its namespace is derived from the
//! template's sha256, so two builds of one template write the same bytes.
//! Spec: <https://spdx.github.io/spdx-spec/v2.3/>; package URLs per
//! <https://github.com/package-url/purl-spec> (`pkg:deb/debian/…`).

use std::fs;
use std::path::Path;

use serde::Serialize;
use serde_json::json;

use super::{DebianParams, LxcError};
use crate::lock::DebianPackage;

/// One installed package.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Installed {
    pub name: String,
    pub version: String,
    pub architecture: String,
    /// The `.deb`'s sha256 and pool path, from the lockfile (absent for a
    /// package that came with a tarball base).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
}

/// `(name, version, architecture)` of each installed package in the
/// rootfs's dpkg status (none if there is no dpkg database).
fn status(rootfs: &Path) -> Result<Vec<(String, String, String)>, LxcError> {
    let path = rootfs.join("var/lib/dpkg/status");
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(LxcError::Io(format!("{}: {e}", path.display()))),
    };
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix(':'))
                    .map(|v| v.trim().to_owned())
            })
        };
        let (Some(name), Some(version), Some(architecture), Some(status)) = (
            field("Package"),
            field("Version"),
            field("Architecture"),
            field("Status"),
        ) else {
            continue;
        };
        if status == "install ok installed" {
            out.push((name, version, architecture));
        }
    }
    out.sort();
    Ok(out)
}

/// The installed packages, sorted by name and architecture. Each must be
/// one the lockfile pins (nothing else could have been installed).
pub(super) fn installed(
    rootfs: &Path,
    locked: &[DebianPackage],
) -> Result<Vec<Installed>, LxcError> {
    status(rootfs)?
        .into_iter()
        .map(|(name, version, architecture)| {
            let pin = locked
                .iter()
                .find(|p| p.name == name && p.version == version && p.architecture == architecture)
                .ok_or_else(|| {
                    LxcError::Bootstrap(format!(
                        "{name} {version} ({architecture}) is installed but not pinned in the lockfile"
                    ))
                })?;
            Ok(Installed {
                name,
                version,
                architecture,
                sha256: Some(pin.sha256.clone()),
                filename: Some(pin.filename.clone()),
            })
        })
        .collect()
}

/// The packages a tarball base came with: pinned as part of the tarball,
/// not one by one.
pub(super) fn installed_unpinned(rootfs: &Path) -> Result<Vec<Installed>, LxcError> {
    Ok(status(rootfs)?
        .into_iter()
        .map(|(name, version, architecture)| Installed {
            name,
            version,
            architecture,
            sha256: None,
            filename: None,
        })
        .collect())
}

fn spdx_id(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// Percent-encode a purl version (`1:2.38.1-5+deb12u3` → `1%3A2.38.1-5%2Bdeb12u3`).
fn purl_encode(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b".-_~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The SPDX document for `template` (its file name and sha256).
pub(crate) fn spdx(
    template: &str,
    template_sha256: &str,
    packages: &[Installed],
    debian: Option<&DebianParams>,
    epoch: u64,
) -> serde_json::Value {
    let created = super::iso8601(epoch);
    let mut spdx_packages = vec![json!({
        "SPDXID": "SPDXRef-Template",
        "name": template,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "checksums": [{"algorithm": "SHA256", "checksumValue": template_sha256}],
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
        "primaryPackagePurpose": "CONTAINER",
    })];
    let mut relationships = vec![json!({
        "spdxElementId": "SPDXRef-DOCUMENT",
        "relationshipType": "DESCRIBES",
        "relatedSpdxElement": "SPDXRef-Template",
    })];
    for package in packages {
        let id = format!(
            "SPDXRef-Package-deb-{}-{}",
            spdx_id(&package.name),
            spdx_id(&package.architecture)
        );
        let location = match (debian, &package.filename) {
            (Some(debian), Some(filename)) => {
                format!("{}/{filename}", debian.mirror.trim_end_matches('/'))
            }
            _ => "NOASSERTION".to_owned(),
        };
        let checksums: Vec<serde_json::Value> = package
            .sha256
            .iter()
            .map(|sha| json!({"algorithm": "SHA256", "checksumValue": sha}))
            .collect();
        let distro = debian.map_or(String::new(), |d| format!("&distro=debian-{}", d.suite));
        spdx_packages.push(json!({
            "SPDXID": id,
            "name": package.name,
            "versionInfo": package.version,
            "supplier": "NOASSERTION",
            "downloadLocation": location,
            "filesAnalyzed": false,
            "checksums": checksums,
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": "NOASSERTION",
            "copyrightText": "NOASSERTION",
            "externalRefs": [{
                "referenceCategory": "PACKAGE-MANAGER",
                "referenceType": "purl",
                "referenceLocator": format!(
                    "pkg:deb/debian/{}@{}?arch={}{distro}",
                    package.name,
                    purl_encode(&package.version),
                    package.architecture,
                ),
            }],
        }));
        relationships.push(json!({
            "spdxElementId": "SPDXRef-Template",
            "relationshipType": "CONTAINS",
            "relatedSpdxElement": id,
        }));
    }
    json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": template,
        "documentNamespace": format!("https://kiln.invalid/spdx/{template}-{template_sha256}"),
        "creationInfo": {
            "created": created,
            "creators": [format!("Tool: kiln-{}", env!("CARGO_PKG_VERSION"))],
        },
        "packages": spdx_packages,
        "relationships": relationships,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purl_versions_are_encoded() {
        assert_eq!(purl_encode("1:2.38.1-5+deb12u3"), "1%3A2.38.1-5%2Bdeb12u3");
        assert_eq!(spdx_id("libstdc++6"), "libstdc--6");
    }
}
