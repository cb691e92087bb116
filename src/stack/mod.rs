//! Service stacks: the typed service model, its defaults, and (in later
//! increments) compose and Kubernetes rendering. This box pins nothing
//! itself: image digests come from `lockfile.toml` ([`pin`]).
//!
//! A stack file is read by the module system like a host: the
//! `[services.NAME]` tables are values of the options declared in
//! [`SCHEMA`] (so typos, wrong types and missing fields get the usual
//! `file:line:col` diagnostics), and each `[env.NAME.services…]` overlay is
//! merged over them at a higher priority. Then, in [`build`]:
//!
//! 1. [`read`]: the merged tree becomes one draft per service, recording
//!    where every value was written;
//! 2. [`secrets`] and [`checks`]: the secret lint and the checks across
//!    fields and services (dependencies, cycles, ports, schedules, …);
//! 3. [`defaults`]: what each service gets unless it opts out, each choice
//!    recorded with its reason;
//!
//! giving a [`model::Stack`], printed by `kiln eval stack:NAME [--env ENV]`.

pub mod checks;
pub mod defaults;
pub mod host;
pub mod model;
pub mod pin;
pub mod read;
pub mod render;
pub mod secrets;

use std::collections::{BTreeMap, HashMap};

use crate::config::diagnostic::Diagnostic;
use crate::config::{Sources, Span};
use crate::eval::value::Value;

pub use model::{STACK_MODEL_VERSION, Stack};
pub use pin::{PinnedStack, pin};

/// The options of a stack file (`services.*`), declared like a module's.
pub const SCHEMA: &str = include_str!("schema.toml");

/// Everything about one stack evaluation that is not the services.
pub struct Header {
    pub name: String,
    pub file: String,
    pub description: Option<String>,
    pub host: Option<String>,
    pub targets: Vec<String>,
    pub settings: model::Settings,
    pub modules: Vec<String>,
    pub env: Option<String>,
    pub environments: Vec<String>,
}

/// From the merged `services` value to the completed model. Problems go to
/// `diagnostics`; the model is only meaningful when none were found.
pub fn build(
    header: Header,
    services: &Value,
    sources: &Sources,
    overlays: HashMap<Span, String>,
    diagnostics: &mut Vec<Diagnostic>,
) -> Stack {
    let mut provenance = read::Provenance {
        sources,
        overlays,
        entries: BTreeMap::new(),
        spans: BTreeMap::new(),
    };
    let drafts = read::drafts(services, &mut provenance);
    for draft in &drafts {
        secrets::lint(draft, diagnostics);
    }
    checks::check(&drafts, diagnostics);
    let services = defaults::complete(&header.name, &drafts, &mut provenance);
    Stack {
        kind: "stack".into(),
        version: STACK_MODEL_VERSION,
        name: header.name,
        file: header.file,
        description: header.description,
        host: header.host,
        targets: header.targets,
        settings: header.settings,
        modules: header.modules,
        env: header.env,
        environments: header.environments,
        services,
        provenance: provenance.entries,
        spans: provenance.spans,
    }
}

#[cfg(test)]
mod tests;
