//! Import resolution: module names and relative paths, cycles, closures.
//!
//! An import is either a module name (`ssh-hardened`, `backup/restic`: the
//! file `modules/NAME.toml`) or a path relative to the importing file
//! (`./local.toml`, `../modules/base.toml`) that must land inside
//! `modules/`. A document's *closure* is every module it brings in,
//! each once, imported modules before the modules importing them, in the
//! order the `imports` lists give. List options concatenate in that order.

use std::collections::BTreeSet;

use super::diagnostic::Diagnostic;
use super::load::classify;
use super::source::Span;
use super::{DocId, DocKind, Repo};
use crate::suggest::did_you_mean;

#[derive(Debug, Default)]
pub struct ImportGraph {
    /// Per document: the imports that resolved, in the order written.
    direct: Vec<Vec<(DocId, Span)>>,
}

impl ImportGraph {
    pub(crate) fn resolve(repo: &Repo) -> (ImportGraph, Vec<Diagnostic>) {
        let mut diagnostics = Vec::new();
        let mut direct = Vec::with_capacity(repo.documents.len());
        for document in &repo.documents {
            let from_path = repo.sources.path(document.source);
            let mut resolved = Vec::new();
            for import in &document.imports {
                match resolve_one(repo, from_path, &import.text, import.span) {
                    Ok(id) => resolved.push((id, import.span)),
                    Err(diagnostic) => diagnostics.push(*diagnostic),
                }
            }
            direct.push(resolved);
        }
        let graph = ImportGraph { direct };
        diagnostics.extend(graph.cycles(repo));
        (graph, diagnostics)
    }

    /// The resolved direct imports of a document.
    pub fn direct(&self, id: DocId) -> &[(DocId, Span)] {
        self.direct.get(id.0).map_or(&[], Vec::as_slice)
    }

    /// Every module `id` brings in, each once, dependencies first. Does not
    /// include `id` itself. Cycles are cut (and reported by [`resolve`]).
    ///
    /// [`resolve`]: ImportGraph::resolve
    pub fn closure(&self, id: DocId) -> Vec<DocId> {
        let mut order = Vec::new();
        let mut seen = BTreeSet::from([id]);
        self.visit(id, &mut seen, &mut order);
        order
    }

    fn visit(&self, id: DocId, seen: &mut BTreeSet<DocId>, order: &mut Vec<DocId>) {
        for &(child, _) in self.direct(id) {
            if seen.insert(child) {
                self.visit(child, seen, order);
                order.push(child);
            }
        }
    }

    /// One diagnostic per distinct import cycle.
    fn cycles(&self, repo: &Repo) -> Vec<Diagnostic> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            New,
            OnStack,
            Done,
        }
        struct Search<'g> {
            graph: &'g ImportGraph,
            marks: Vec<Mark>,
            stack: Vec<(DocId, Span)>,
            found: BTreeSet<Vec<DocId>>,
            cycles: Vec<Vec<(DocId, Span)>>,
        }
        impl Search<'_> {
            fn visit(&mut self, id: DocId) {
                self.marks[id.0] = Mark::OnStack;
                for &(child, span) in self.graph.direct(id) {
                    match self.marks[child.0] {
                        Mark::New => {
                            self.stack.push((id, span));
                            self.visit(child);
                            self.stack.pop();
                        }
                        Mark::OnStack => {
                            // The cycle is the stack from `child` on, plus this edge.
                            let start = self.stack.iter().position(|(d, _)| *d == child);
                            let mut cycle: Vec<(DocId, Span)> =
                                start.map_or(Vec::new(), |s| self.stack[s..].to_vec());
                            cycle.push((id, span));
                            let mut members: Vec<DocId> = cycle.iter().map(|(d, _)| *d).collect();
                            members.sort();
                            if self.found.insert(members) {
                                self.cycles.push(cycle);
                            }
                        }
                        Mark::Done => {}
                    }
                }
                self.marks[id.0] = Mark::Done;
            }
        }
        let mut search = Search {
            graph: self,
            marks: vec![Mark::New; repo.documents.len()],
            stack: Vec::new(),
            found: BTreeSet::new(),
            cycles: Vec::new(),
        };
        for id in (0..repo.documents.len()).map(DocId) {
            if search.marks[id.0] == Mark::New {
                search.visit(id);
            }
        }
        search
            .cycles
            .into_iter()
            .map(|cycle| cycle_diagnostic(repo, &cycle))
            .collect()
    }
}

/// `cycle` lists edges `(importer, span of its import)`; each importer
/// imports the next one, and the last imports the first.
fn cycle_diagnostic(repo: &Repo, cycle: &[(DocId, Span)]) -> Diagnostic {
    let name = |id: DocId| repo.document(id).name.clone();
    let mut chain: Vec<String> = cycle
        .iter()
        .map(|(id, _)| format!("`{}`", name(*id)))
        .collect();
    chain.push(format!("`{}`", name(cycle[0].0)));
    let (_, closing_span) = cycle[cycle.len() - 1];
    let mut diagnostic = Diagnostic::error(
        "import-cycle",
        format!("import cycle: {}", chain.join(" → ")),
    );
    let last = cycle.len() - 1;
    diagnostic = diagnostic.at(
        closing_span,
        format!(
            "`{}` imports `{}`, closing the cycle",
            name(cycle[last].0),
            name(cycle[0].0)
        ),
    );
    for (i, (id, span)) in cycle.iter().enumerate().take(last) {
        diagnostic = diagnostic.also(
            *span,
            format!("`{}` imports `{}`", name(*id), name(cycle[i + 1].0)),
        );
    }
    diagnostic.help("modules cannot import each other in a loop; move what both need into a third module that both import")
}

/// Resolve one import written in the file at `from_path`.
fn resolve_one(
    repo: &Repo,
    from_path: &str,
    text: &str,
    span: Span,
) -> Result<DocId, Box<Diagnostic>> {
    let is_path = text.starts_with("./") || text.starts_with("../") || text.ends_with(".toml");
    if text.starts_with('/') {
        return Err(Box::new(
            Diagnostic::error("bad-import", format!("absolute import path `{text}`"))
                .at(span, "imports are module names or paths relative to this file")
                .help("write a module name such as \"base\", or a relative path such as \"../modules/base.toml\""),
        ));
    }
    if !is_path {
        if let Some(id) = repo.find(DocKind::Module, text) {
            return Ok(id);
        }
        return Err(Box::new(
            Diagnostic::error("missing-import", format!("no module named `{text}`"))
                .at(span, format!("there is no modules/{text}.toml"))
                .help_opt(did_you_mean(text, repo.names(DocKind::Module)))
                .note("a module name is its path under modules/ without `.toml`"),
        ));
    }
    let directory = from_path.rsplit_once('/').map_or("", |(d, _)| d);
    let Some(target) = join_relative(directory, text) else {
        return Err(Box::new(
            Diagnostic::error("bad-import", format!("import `{text}` leaves the repo"))
                .at(span, "this path climbs above the repo root")
                .help("imports must point at files under modules/"),
        ));
    };
    match classify(&target) {
        Some((DocKind::Module, name)) => repo.find(DocKind::Module, &name).ok_or_else(|| {
            Box::new(
                Diagnostic::error("missing-import", format!("no module file at `{target}`"))
                    .at(
                        span,
                        format!("`{text}` resolves to {target}, which does not exist"),
                    )
                    .help_opt(did_you_mean(&name, repo.names(DocKind::Module)).map(|h| {
                        format!(
                            "{h} (relative paths are resolved from the importing file's directory)"
                        )
                    })),
            )
        }),
        _ => Err(Box::new(
            Diagnostic::error("bad-import", format!("`{target}` is not a module"))
                .at(span, format!("`{text}` resolves to {target}"))
                .help("only files under modules/ can be imported; hosts, images and stacks cannot"),
        )),
    }
}

/// `directory/relative`, normalised; `None` if it climbs above the root.
fn join_relative(directory: &str, relative: &str) -> Option<String> {
    let mut parts: Vec<&str> = directory.split('/').filter(|p| !p.is_empty()).collect();
    for part in relative.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            other => parts.push(other),
        }
    }
    Some(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        assert_eq!(
            join_relative("hosts", "../modules/a.toml").as_deref(),
            Some("modules/a.toml")
        );
        assert_eq!(
            join_relative("modules/ssh", "./b.toml").as_deref(),
            Some("modules/ssh/b.toml")
        );
        assert_eq!(join_relative("hosts", "../../etc/passwd"), None);
    }
}
