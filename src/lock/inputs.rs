//! Which external inputs the configuration asks for, and whether the
//! lockfile pins each of them as asked.
//!
//! | input id | kind | from |
//! |---|---|---|
//! | `image:NAME` | `debian` | an image with `base.debian`: its suite, mirror, components, variant and `packages` |
//! | `image:NAME` | `url` | an image with `base.url` |
//! | `host:NAME` | `debian` | a host whose `packages` add to its (Debian-based) image's: the image's parameters and packages plus the host's |
//! | the reference as written (`traefik:v3.1`) | `oci` | every `services.*.image` of every stack |

use std::collections::{BTreeMap, BTreeSet};

use super::file::Lockfile;
use crate::eval::spec::{HostSpec, ImageBase, ImageSpec, StackSpec};

/// A Debian input is exactly what the resolver is asked for.
pub use super::debian::DebianRequest as DebianSet;

// Lock bookkeeping for a Debian input (the resolver's request type).
impl DebianSet {
    /// Whether a lock entry was resolved from exactly these parameters.
    pub fn matches(&self, entry: &super::DebianEntry) -> bool {
        entry.suite == self.suite
            && entry.architecture == self.architecture
            && entry.mirror == self.mirror
            && entry.components == self.components
            && entry.variant == self.variant
            && entry.requested == self.packages
    }

    /// A lock entry for this set and its resolved closure.
    pub fn entry(
        &self,
        release_date: Option<String>,
        packages: Vec<super::DebianPackage>,
    ) -> super::DebianEntry {
        super::DebianEntry {
            suite: self.suite.clone(),
            architecture: self.architecture.clone(),
            mirror: self.mirror.clone(),
            components: self.components.clone(),
            variant: self.variant.clone(),
            requested: self.packages.clone(),
            release_date,
            packages,
        }
    }
}

/// One input the configuration needs pinned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wanted {
    Debian(DebianSet),
    Oci { reference: String },
    Url { urls: Vec<String> },
}

impl Wanted {
    pub fn kind(&self) -> &'static str {
        match self {
            Wanted::Debian(_) => "debian",
            Wanted::Oci { .. } => "oci",
            Wanted::Url { .. } => "url",
        }
    }
}

/// `(kind, id)` → what is wanted, from the evaluated hosts, images and
/// stacks. A host's image must be among `images` (with the images it
/// extends) for the host's own input to be found.
pub fn wanted(
    hosts: &[HostSpec],
    images: &[ImageSpec],
    stacks: &[StackSpec],
) -> BTreeMap<(&'static str, String), Wanted> {
    let mut inputs = BTreeMap::new();
    for image in images {
        let id = format!("image:{}", image.name);
        let wanted = match &image.base {
            ImageBase::Debian { .. } => match debian_set(image, images, &[]) {
                Some(set) => Wanted::Debian(set),
                None => continue,
            },
            ImageBase::Url { url, .. } => Wanted::Url {
                urls: vec![url.clone()],
            },
            // Extending another image adds an input only when it adds
            // packages to a Debian set.
            ImageBase::Image(parent) => {
                let parent = images.iter().find(|i| &i.name == parent);
                match (
                    debian_set(image, images, &[]),
                    parent.and_then(|p| debian_set(p, images, &[])),
                ) {
                    (Some(set), Some(inherited)) if set != inherited => Wanted::Debian(set),
                    _ => continue,
                }
            }
        };
        inputs.insert((wanted.kind(), id), wanted);
    }
    for host in hosts {
        let Some(image) = images.iter().find(|i| i.name == host.image) else {
            continue;
        };
        let Some(own) = debian_set(image, images, &[]) else {
            continue;
        };
        let Some(set) = debian_set(image, images, &host.config.packages) else {
            continue;
        };
        // A host that adds no package is built from its image's set.
        if set != own {
            inputs.insert(
                ("debian", format!("host:{}", host.name)),
                Wanted::Debian(set),
            );
        }
    }
    for stack in stacks {
        for service in stack.services.values() {
            let wanted = Wanted::Oci {
                reference: service.image.clone(),
            };
            inputs.insert((wanted.kind(), service.image.clone()), wanted);
        }
        // The compose volume backup companion copies every backed-up
        // volume; its image is pinned like a service's.
        let backed_up = stack
            .services
            .values()
            .any(|s| s.volumes.values().any(|v| v.backup.is_some()));
        if backed_up {
            let image = stack.settings.compose.backup_image.clone();
            let wanted = Wanted::Oci {
                reference: image.clone(),
            };
            inputs.insert((wanted.kind(), image), wanted);
        }
    }
    inputs
}

/// The Debian set an image (or a host on it, adding `extra` packages) is
/// bootstrapped from: the parameters of the Debian base at the root of the
/// image's `base.image` chain, and the packages of every image along the
/// chain plus `extra`, sorted and without duplicates. `None` when the
/// chain does not end in a Debian base (or is broken or cyclic).
pub fn debian_set(image: &ImageSpec, images: &[ImageSpec], extra: &[String]) -> Option<DebianSet> {
    let mut packages: BTreeSet<String> = extra.iter().cloned().collect();
    let mut current = image;
    for _ in 0..=images.len() {
        packages.extend(current.config.packages.iter().cloned());
        match &current.base {
            ImageBase::Debian {
                suite,
                mirror,
                components,
                variant,
            } => {
                return Some(DebianSet {
                    suite: suite.clone(),
                    architecture: current.arch.clone(),
                    mirror: mirror.clone(),
                    components: components.clone(),
                    variant: variant.clone(),
                    packages: packages.into_iter().collect(),
                });
            }
            ImageBase::Image(parent) => current = images.iter().find(|i| &i.name == parent)?,
            ImageBase::Url { .. } => return None,
        }
    }
    None
}

/// How the lockfile stands against what is wanted.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LockStatus {
    /// Wanted, not in the lockfile.
    pub missing: Vec<(&'static str, String)>,
    /// In the lockfile, but pinned for other parameters (a package added, a mirror changed).
    pub changed: Vec<(&'static str, String)>,
    /// In the lockfile, no longer wanted.
    pub stale: Vec<(&'static str, String)>,
}

impl LockStatus {
    pub fn up_to_date(&self) -> bool {
        self.missing.is_empty() && self.changed.is_empty() && self.stale.is_empty()
    }
}

/// Compare the lockfile with what is wanted.
pub fn status(lock: &Lockfile, wanted: &BTreeMap<(&'static str, String), Wanted>) -> LockStatus {
    let mut status = LockStatus::default();
    for ((kind, id), want) in wanted {
        let pinned_as_wanted = match want {
            Wanted::Debian(set) => lock.debian.get(id).map(|e| set.matches(e)),
            Wanted::Oci { .. } => lock.oci.get(id).map(|_| true),
            Wanted::Url { urls } => lock.url.get(id).map(|e| e.urls == *urls),
        };
        match pinned_as_wanted {
            None => status.missing.push((kind, id.clone())),
            Some(false) => status.changed.push((kind, id.clone())),
            Some(true) => {}
        }
    }
    let locked = lock
        .debian
        .keys()
        .map(|id| ("debian", id))
        .chain(lock.oci.keys().map(|id| ("oci", id)))
        .chain(lock.url.keys().map(|id| ("url", id)));
    for (kind, id) in locked {
        if !wanted.contains_key(&(kind, id.clone())) {
            status.stale.push((kind, id.clone()));
        }
    }
    status
}
