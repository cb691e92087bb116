//! Rendering a pinned stack into a bundle: a directory of text files, for
//! one target (Docker Compose or Kubernetes).
//!
//! A renderer is a pure function of the [`PinnedStack`]: no clock, no
//! environment, no filesystem, no network. The same stack and lockfile
//! give the same bytes, whatever the machine (the bundle is a store path,
//! see `kiln build stack:NAME`). Every YAML document goes through
//! [`crate::yaml`], which quotes what a YAML 1.1 reader would misread.
//!
//! Secrets never enter a bundle: a renderer writes where a value comes
//! from (a compose secret's file or variable, an ExternalSecret's Vault
//! path), never the value; kiln does not have it.

pub mod compose;
pub mod k8s;

use std::collections::BTreeMap;
use std::fmt;

use super::pin::PinnedStack;

/// The two things a stack renders to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    Compose,
    K8s,
}

impl Target {
    pub const ALL: [Target; 2] = [Target::Compose, Target::K8s];

    pub fn name(self) -> &'static str {
        match self {
            Target::Compose => "compose",
            Target::K8s => "k8s",
        }
    }

    pub fn parse(text: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|t| t.name() == text)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A rendered bundle: file contents by relative path (`/`-separated, no
/// `..`), in path order. Every file is UTF-8 text ending in a newline.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bundle {
    pub files: BTreeMap<String, String>,
}

impl Bundle {
    /// Add a file; a second file at the same path is a renderer bug.
    pub fn add(&mut self, path: impl Into<String>, text: impl Into<String>) {
        let path = path.into();
        let mut text = text.into();
        if !text.ends_with('\n') {
            text.push('\n');
        }
        let previous = self.files.insert(path.clone(), text);
        debug_assert!(previous.is_none(), "two files at {path}");
    }

    /// Total size in bytes.
    pub fn size(&self) -> usize {
        self.files.values().map(String::len).sum()
    }
}

/// Why a stack could not be rendered (a renderer bug or a model the
/// checks should have refused: the message says which).
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error(transparent)]
    Yaml(#[from] crate::yaml::YamlError),
    #[error("cannot write JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("cannot render `{service}` for {target}: {reason}")]
    Service {
        service: String,
        target: Target,
        reason: String,
    },
}

/// Render `stack` for `target`.
pub fn render(stack: &PinnedStack, target: Target) -> Result<Bundle, RenderError> {
    match target {
        Target::Compose => compose::render(stack),
        Target::K8s => k8s::render(stack),
    }
}
