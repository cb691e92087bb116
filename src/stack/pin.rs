//! Images: the tag is in the stack, the digest in `lockfile.toml`. This
//! module only looks pins up; `kiln lock` resolves them (the stack box
//! pins nothing itself and never touches the network).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::diagnostic::Diagnostic;
use crate::lock::Lockfile;

use super::model::Stack;
use super::read::join;

/// A stack whose every image is pinned by digest: what a renderer needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PinnedStack {
    /// With every `image_ref` filled in.
    pub stack: Stack,
    /// By service name.
    pub images: BTreeMap<String, PinnedImage>,
    /// The compose volume backup companion (`settings.compose.backup_image`),
    /// pinned when any volume is backed up.
    pub backup_image: Option<PinnedImage>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinnedImage {
    /// As written in the stack (the lockfile id).
    pub image: String,
    /// `sha256:…`, of the index or manifest the tag pointed to.
    pub digest: String,
    /// `REGISTRY/REPOSITORY:TAG@sha256:…`.
    pub image_ref: String,
}

/// The digest-pinned reference of an image, if the lockfile pins it.
pub fn image_ref(image: &str, lock: &Lockfile) -> Option<PinnedImage> {
    let entry = lock.oci.get(image)?;
    Some(PinnedImage {
        image: image.to_owned(),
        digest: entry.digest.clone(),
        image_ref: format!("{}@{}", entry.reference, entry.digest),
    })
}

/// Fill in `image_ref` where the lockfile has a pin; leave the rest unset.
/// (`kiln eval` shows what is pinned without failing on what is not.)
pub fn annotate(stack: &mut Stack, lock: &Lockfile) {
    for service in stack.services.values_mut() {
        service.image_ref = image_ref(&service.image, lock).map(|p| p.image_ref);
    }
}

/// Every image pinned, or one error per unpinned image, at the image.
pub fn pin(stack: &Stack, lock: &Lockfile) -> Result<PinnedStack, Vec<Diagnostic>> {
    let mut pinned = stack.clone();
    let mut images = BTreeMap::new();
    let mut diagnostics = Vec::new();
    for (name, service) in &mut pinned.services {
        match image_ref(&service.image, lock) {
            Some(image) => {
                service.image_ref = Some(image.image_ref.clone());
                images.insert(name.clone(), image);
            }
            None => {
                let mut diagnostic = Diagnostic::error(
                    "unpinned-image",
                    format!(
                        "image `{}` of `{name}` is not pinned in lockfile.toml",
                        service.image
                    ),
                )
                .help("run `kiln lock` to pin its digest, and commit lockfile.toml");
                if let Some(span) = stack
                    .spans
                    .get(&format!("{}.image", join("services", name)))
                {
                    diagnostic = diagnostic.at(*span, "rendering needs its digest");
                }
                diagnostics.push(diagnostic);
            }
        }
    }
    let backed_up = stack
        .services
        .values()
        .any(|s| s.volumes.values().any(|v| v.backup.is_some()));
    let mut backup_image = None;
    if backed_up {
        let wanted = &stack.settings.compose.backup_image;
        match image_ref(wanted, lock) {
            Some(image) => backup_image = Some(image),
            None => diagnostics.push(
                Diagnostic::error(
                    "unpinned-image",
                    format!(
                        "image `{wanted}` of the volume backup companion is not pinned in lockfile.toml"
                    ),
                )
                .help("run `kiln lock` to pin its digest, and commit lockfile.toml")
                .note("every backed-up volume is copied by this image on compose (`[stack.compose] backup_image`)"),
            ),
        }
    }
    if diagnostics.is_empty() {
        Ok(PinnedStack {
            stack: pinned,
            images,
            backup_image,
        })
    } else {
        Err(diagnostics)
    }
}
