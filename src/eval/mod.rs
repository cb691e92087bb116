//! The module system: option declarations, typed values, priorities,
//! merge and interpolation, producing [`spec`] structs. No I/O.
//!
//! Evaluating a host:
//! 1. its import closure (dependencies first, then the host itself) gives
//!    the modules whose options it can see and whose values it merges;
//! 2. every value in `[defaults]`, `[config]`, `[force]` (and the `[host]`
//!    shorthands `node`, `vmid`, `resources`, `network`) becomes a
//!    definition of a declared option ([`collect`]);
//! 3. definitions merge by type and priority ([`merge`]);
//! 4. `${…}` references are filled in ([`interpolate`]);
//! 5. cross-checks (the image exists and builds this guest kind, files are
//!    text xor source, …) and conversion into a typed [`spec::HostSpec`].

mod checks;
pub mod collect;
pub mod interpolate;
pub mod merge;
pub mod options;
pub mod scalar;
pub mod spec;
mod stack;
pub mod types;
pub mod value;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::config::diagnostic::Diagnostic;
use crate::config::node::parse_document;
use crate::config::{DocId, DocKind, Node, NodeKind, Repo, Span, Table};
pub use checks::{SourceRef, Validated, duplicate_vmids};
use collect::{Collector, Scope};
use merge::{Def, empty_value, merge};
use options::{Decl, DeclaredIn, Group, OptNode};
use spec::Spec;
use value::{Priority, Value, ValueKind};

/// kiln's built-in options (hostname, users, files, proxmox, …).
pub const CORE_OPTIONS: &str = include_str!("core.toml");
/// The header tables ([host], [image], [module], [stack]) as records.
pub const HEADER_SCHEMAS: &str = include_str!("headers.toml");

/// A repo with every option declared, ready to evaluate targets.
pub struct Evaluator {
    pub repo: Repo,
    options: Group,
    all_options: Vec<Arc<Decl>>,
    headers: Group,
    /// The service model of stack files (`crate::stack::SCHEMA`).
    stack_options: Group,
    poisoned: BTreeSet<String>,
    /// Problems found while reading files and declarations.
    pub diagnostics: Vec<Diagnostic>,
}

/// The result of evaluating one target: the spec if there were no errors.
pub type Evaluation<T> = Result<T, Vec<Diagnostic>>;

impl Evaluator {
    pub fn new(mut repo: Repo) -> Evaluator {
        let mut diagnostics = std::mem::take(&mut repo.diagnostics);
        let mut poisoned = BTreeSet::new();
        let mut options = Group::default();
        let mut headers = Group::default();
        let mut stack_options = Group::default();
        for (path, text, group) in [
            ("<built-in>/core.toml", CORE_OPTIONS, &mut options),
            ("<built-in>/headers.toml", HEADER_SCHEMAS, &mut headers),
            (
                "<built-in>/stack.toml",
                crate::stack::SCHEMA,
                &mut stack_options,
            ),
        ] {
            let id = repo.sources.add(path, text);
            match parse_document(id, text) {
                Ok(node) => {
                    if let Some(table) = node
                        .as_table()
                        .and_then(|t| t.get("options"))
                        .and_then(|e| e.value.as_table())
                    {
                        group.declare(
                            table,
                            "",
                            DeclaredIn::Builtin,
                            &mut poisoned,
                            &mut diagnostics,
                        );
                    }
                }
                Err(diagnostic) => diagnostics.push(*diagnostic),
            }
        }
        for id in repo.of_kind(DocKind::Module).collect::<Vec<_>>() {
            let document = repo.document(id);
            if let Some(entry) = document.section("options") {
                match entry.value.as_table() {
                    Some(table) => options.declare(
                        table,
                        "",
                        DeclaredIn::Module(id),
                        &mut poisoned,
                        &mut diagnostics,
                    ),
                    None => diagnostics.push(
                        Diagnostic::error(
                            "type-mismatch",
                            "`options` must be a table of declarations",
                        )
                        .at(
                            entry.value.span,
                            format!("expected a table, found {}", entry.value.type_name()),
                        )
                        .help("declare each option as `[options.NAME]`"),
                    ),
                }
            }
        }
        let all_options = options.options().into_iter().cloned().collect();
        Evaluator {
            repo,
            options,
            all_options,
            headers,
            stack_options,
            poisoned,
            diagnostics,
        }
    }

    /// The declared option tree (built-ins and every module).
    pub fn options(&self) -> &Group {
        &self.options
    }

    /// Evaluate any document: hosts, images and stacks give a spec;
    /// modules are checked on their own and give none.
    pub fn evaluate(&self, id: DocId) -> Evaluation<Option<Spec>> {
        match self.repo.document(id).kind {
            DocKind::Host => self.host(id).map(|s| Some(Spec::Host(Box::new(s)))),
            DocKind::Image => self.image(id).map(|s| Some(Spec::Image(Box::new(s)))),
            DocKind::Stack => self.stack(id).map(|s| Some(Spec::Stack(Box::new(s)))),
            DocKind::Module => {
                let diagnostics = self.check_module(id);
                if diagnostics.is_empty() {
                    Ok(None)
                } else {
                    Err(diagnostics)
                }
            }
        }
    }

    /// The header table as a typed record value, leaving out the keys the
    /// caller handles itself.
    fn header(&self, id: DocId, skip: &[&str], diagnostics: &mut Vec<Diagnostic>) -> Option<Value> {
        let document = self.repo.document(id);
        let entry = document.header.as_ref()?;
        let table = entry.value.as_table()?;
        let kept = Table {
            entries: table
                .entries
                .iter()
                .filter(|e| !skip.contains(&e.key.as_str()))
                .cloned()
                .collect(),
        };
        let node = Node {
            kind: NodeKind::Table(kept),
            span: entry.key_span,
        };
        let Some(OptNode::Option(decl)) = self.headers.lookup(document.kind.header()) else {
            return None;
        };
        merge(
            &decl.ty,
            &merge::OptionPath::Root(&format!("[{}]", document.kind.header())),
            &[Def {
                priority: Priority::Config,
                node: &node,
            }],
            entry.key_span,
            diagnostics,
        )
    }

    /// Steps 1–4 for a host or an image. `None` if the document or one of
    /// its imports could not be read (that error is already reported).
    fn system<'a>(
        &'a self,
        id: DocId,
        synthetic: &'a [(&'static str, Node)],
        extra: impl FnOnce(&mut Collector<'a>),
    ) -> Option<(Value, Vec<DocId>, Vec<Diagnostic>)> {
        let document = self.repo.document(id);
        let closure = self.repo.imports.closure(id);
        if document.broken || closure.iter().any(|m| self.repo.document(*m).broken) {
            return None;
        }
        let scope = Scope::closure(&self.repo, &closure);
        let mut collector = Collector {
            repo: &self.repo,
            options: &self.options,
            scope,
            poisoned: &self.poisoned,
            target: &document.name,
            defs: BTreeMap::new(),
            diagnostics: Vec::new(),
        };
        for &module in closure.iter().chain([&id]) {
            self.sections(module, &mut collector);
        }
        extra(&mut collector);
        for (path, node) in synthetic {
            collector.single(path, node, Priority::Declared);
        }
        let Collector {
            mut defs,
            mut diagnostics,
            scope,
            ..
        } = collector;
        let origin = document.header_span();
        let mut root = Value::new(ValueKind::Map(BTreeMap::new()), origin);
        for decl in &self.all_options {
            if !scope.sees(decl.declared_in) {
                continue;
            }
            let mut all: Vec<Def<'_>> = decl
                .default
                .iter()
                .map(|node| Def {
                    priority: Priority::Declared,
                    node,
                })
                .collect();
            all.extend(defs.remove(decl.path.as_str()).unwrap_or_default());
            let value = if all.is_empty() {
                empty_value(&decl.ty, decl.span)
            } else {
                merge(
                    &decl.ty,
                    &merge::OptionPath::Root(&decl.path),
                    &all,
                    decl.span,
                    &mut diagnostics,
                )
                .unwrap_or_else(|| empty_value(&decl.ty, decl.span))
            };
            root.insert_path(&decl.path, value);
        }
        interpolate::interpolate(&mut root, &mut diagnostics);
        Some((root, closure, diagnostics))
    }

    /// Feed a document's `[defaults]`, `[config]` and `[force]` tables to the collector.
    fn sections<'a>(&'a self, id: DocId, collector: &mut Collector<'a>) {
        for (name, priority) in Priority::SECTIONS {
            let Some(entry) = self.repo.document(id).section(name) else {
                continue;
            };
            match entry.value.as_table() {
                Some(table) => collector.section(table, &self.options, "", priority),
                None => collector.diagnostics.push(
                    Diagnostic::error("type-mismatch", format!("`{name}` must be a table"))
                        .at(
                            entry.value.span,
                            format!(
                                "expected a table of option values, found {}",
                                entry.value.type_name()
                            ),
                        )
                        .help(format!("write option values under a `[{name}]` section")),
                ),
            }
        }
    }

    /// Check a module on its own: its header, and every value it sets
    /// against every option declared anywhere (so a typo in a module that
    /// no host imports is still found).
    pub fn check_module(&self, id: DocId) -> Vec<Diagnostic> {
        let document = self.repo.document(id);
        if document.broken {
            return Vec::new();
        }
        let mut diagnostics = Vec::new();
        self.header(id, &["imports"], &mut diagnostics);
        let mut collector = Collector {
            repo: &self.repo,
            options: &self.options,
            scope: Scope::Everything,
            poisoned: &self.poisoned,
            target: &document.name,
            defs: BTreeMap::new(),
            diagnostics: Vec::new(),
        };
        self.sections(id, &mut collector);
        let Collector {
            defs,
            diagnostics: found,
            ..
        } = collector;
        diagnostics.extend(found);
        for (path, path_defs) in &defs {
            if let Some(OptNode::Option(decl)) = self.options.lookup(path) {
                merge(
                    &decl.ty,
                    &merge::OptionPath::Root(path),
                    path_defs,
                    decl.span,
                    &mut diagnostics,
                );
            }
        }
        diagnostics
    }

    /// Every option a target can see, for `kiln options`.
    pub fn all_options(&self) -> &[Arc<Decl>] {
        &self.all_options
    }

    /// The span of a header field, or the header itself.
    fn header_field_span(&self, id: DocId, key: &str) -> Span {
        let document = self.repo.document(id);
        document
            .header_table()
            .and_then(|t| t.get(key))
            .map_or(document.header_span(), |e| e.value.span)
    }
}

/// A string field of a record value.
fn field_str<'v>(value: &'v Value, key: &str) -> Option<&'v str> {
    match &value.get_path(&[key])?.kind {
        ValueKind::Str(s) => Some(s),
        _ => None,
    }
}

fn field_strings(value: &Value, key: &str) -> Vec<String> {
    match value.get_path(&[key]).map(|v| &v.kind) {
        Some(ValueKind::List(items)) => items
            .iter()
            .filter_map(|v| match &v.kind {
                ValueKind::Str(s) => Some(s.clone()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn evaluator(files: &[(&str, &str)]) -> Evaluator {
        let files = files
            .iter()
            .map(|(p, t)| (p.to_string(), t.as_bytes().to_vec()))
            .collect();
        Evaluator::new(Repo::from_files("/repo".into(), files))
    }

    #[test]
    fn built_in_declarations_are_valid() {
        let evaluator = evaluator(&[]);
        let rendered: Vec<String> = evaluator
            .diagnostics
            .iter()
            .map(|d| crate::config::diagnostic::render(d, &evaluator.repo.sources, false))
            .collect();
        assert!(rendered.is_empty(), "{}", rendered.join("\n"));
    }

    #[test]
    fn an_option_default_overrides_its_record_fields_defaults() {
        let evaluator = evaluator(&[
            (
                "modules/m.toml",
                "[module]\n[options.keep]\ntype = \"record\"\ndefault = { daily = 3 }\ndescription = \"d\"\n\
                 [options.keep.fields.daily]\ntype = \"int\"\ndefault = 7\ndescription = \"d\"\n\
                 [options.keep.fields.weekly]\ntype = \"int\"\ndefault = 4\ndescription = \"w\"\n",
            ),
            (
                "images/i.toml",
                "[image]\nformats = [\"lxc\"]\nbase.debian = { suite = \"bookworm\" }\n",
            ),
            (
                "hosts/h.toml",
                "[host]\nkind = \"lxc\"\nimage = \"i\"\nnode = \"n\"\nvmid = 100\nimports = [\"m\"]\n",
            ),
        ]);
        assert!(evaluator.diagnostics.is_empty());
        let id = evaluator.repo.find(DocKind::Host, "h").unwrap();
        let spec = evaluator.host(id).unwrap();
        assert_eq!(
            spec.config.options["keep"],
            serde_json::json!({ "daily": 3, "weekly": 4 })
        );
    }
}
