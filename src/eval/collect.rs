//! Matching the values written in `[defaults]`, `[config]` and `[force]`
//! against the declared options.

use std::collections::{BTreeMap, BTreeSet};

use super::merge::Def;
use super::options::{DeclaredIn, Group, OptNode, join};
use super::value::Priority;
use crate::config::diagnostic::Diagnostic;
use crate::config::{DocId, Repo, Table};

/// Which module-declared options an evaluation can see.
pub enum Scope {
    /// Everything declared anywhere (checking a module on its own).
    Everything,
    /// Built-ins plus the modules in an import closure (indexed by DocId).
    Modules(Vec<bool>),
}

impl Scope {
    pub fn closure(repo: &Repo, modules: &[DocId]) -> Scope {
        let mut seen = vec![false; repo.documents.len()];
        for id in modules {
            seen[id.0] = true;
        }
        Scope::Modules(seen)
    }

    pub fn sees(&self, declared_in: DeclaredIn) -> bool {
        match (self, declared_in) {
            (_, DeclaredIn::Builtin) | (Scope::Everything, _) => true,
            (Scope::Modules(seen), DeclaredIn::Module(id)) => seen[id.0],
        }
    }
}

/// Everything needed to turn section tables into definitions.
pub struct Collector<'a> {
    pub repo: &'a Repo,
    pub options: &'a Group,
    pub scope: Scope,
    /// Paths whose declaration was rejected; settings under them are not
    /// reported again as unknown.
    pub poisoned: &'a BTreeSet<String>,
    /// The document being evaluated (named in "does not import" hints).
    pub target: &'a str,
    pub defs: BTreeMap<&'a str, Vec<Def<'a>>>,
    pub diagnostics: Vec<Diagnostic>,
}

impl<'a> Collector<'a> {
    /// Add every value in a section table, relative to `group` at `prefix`.
    pub fn section(
        &mut self,
        table: &'a Table,
        group: &'a Group,
        prefix: &str,
        priority: Priority,
    ) {
        for entry in &table.entries {
            // Built only where needed: this loop runs for every value of every module.
            let path = || join(prefix, &entry.key);
            match group.children.get(&entry.key) {
                Some(OptNode::Option(decl)) if self.scope.sees(decl.declared_in) => {
                    self.defs.entry(decl.path.as_str()).or_default().push(Def {
                        priority,
                        node: &entry.value,
                    });
                }
                Some(OptNode::Group(child)) => match entry.value.as_table() {
                    Some(inner) => self.section(inner, child, &path(), priority),
                    None => {
                        let path = path();
                        let examples: Vec<String> = child
                            .children
                            .keys()
                            .take(3)
                            .map(|k| format!("`{path}.{k}`"))
                            .collect();
                        self.diagnostics.push(
                            Diagnostic::error(
                                "type-mismatch",
                                format!("`{path}` is a group of options, not an option"),
                            )
                            .at(
                                entry.value.span,
                                format!(
                                    "expected a table of `{path}.*` options, found {}",
                                    entry.value.type_name()
                                ),
                            )
                            .help(format!(
                                "set one of its options, such as {}",
                                examples.join(", ")
                            )),
                        );
                    }
                },
                Some(OptNode::Option(decl)) => {
                    let path = path();
                    let DeclaredIn::Module(module) = decl.declared_in else {
                        unreachable!("built-in options are always visible")
                    };
                    let module = &self.repo.document(module).name;
                    self.diagnostics.push(
                        Diagnostic::error("unknown-option", format!("unknown option `{path}`"))
                            .at(entry.key_span, format!("`{path}` is declared by module `{module}`, which `{}` does not import", self.target))
                            .help(format!("add \"{module}\" to the imports of `{}`", self.target)),
                    );
                }
                None => {
                    let path = path();
                    if self
                        .poisoned
                        .iter()
                        .any(|p| path == *p || path.starts_with(&format!("{p}.")))
                    {
                        continue;
                    }
                    self.diagnostics.push(self.unknown(
                        &path,
                        &entry.key,
                        entry.key_span,
                        group,
                        prefix,
                    ));
                }
            }
        }
    }

    /// Add a value for one known option path (used for header shorthands).
    pub fn single(&mut self, path: &str, node: &'a crate::config::Node, priority: Priority) {
        if let Some(OptNode::Option(decl)) = self.options.lookup(path) {
            self.defs
                .entry(decl.path.as_str())
                .or_default()
                .push(Def { priority, node });
        }
    }

    fn unknown(
        &self,
        path: &str,
        key: &str,
        span: crate::config::Span,
        group: &Group,
        prefix: &str,
    ) -> Diagnostic {
        let visible = |node: &OptNode| match node {
            OptNode::Option(decl) => self.scope.sees(decl.declared_in),
            OptNode::Group(_) => true,
        };
        let siblings: Vec<&str> = group
            .children
            .iter()
            .filter(|(_, node)| visible(node))
            .map(|(k, _)| k.as_str())
            .collect();
        let mut hint = crate::suggest::closest(key, siblings.iter().copied())
            .map(|sibling| format!("did you mean `{}`?", join(prefix, sibling)));
        if hint.is_none() {
            // `port = 22` at the top when `ssh.port` was meant.
            let same_leaf: Vec<&str> = self
                .options
                .options()
                .into_iter()
                .filter(|d| {
                    self.scope.sees(d.declared_in) && d.path.rsplit('.').next() == Some(key)
                })
                .map(|d| d.path.as_str())
                .collect();
            if let [only] = same_leaf.as_slice() {
                hint = Some(format!("did you mean `{only}`?"));
            }
        }
        let where_ = if prefix.is_empty() {
            "no such option".to_owned()
        } else {
            format!("`{prefix}` has no option `{key}`")
        };
        Diagnostic::error("unknown-option", format!("unknown option `{path}`"))
            .at(span, where_)
            .help_opt(hint.or_else(|| Some("`kiln options` lists every option; options from a module are visible once it is imported".to_owned())))
    }
}
