//! Reading the user's repo: files, TOML with spans, imports, diagnostics.
//!
//! This box knows the *shape* of kiln files — which directory holds which
//! kind of document, the header table each starts with, the `imports` list —
//! but not what any option means (that is [`crate::eval`]).
//!
//! ```text
//! hosts/NAME.toml     [host]    + [defaults] [config] [force]
//! images/NAME.toml    [image]   + [defaults] [config] [force]
//! modules/PATH.toml   [module]  + [options.…] [defaults] [config] [force]
//! stacks/NAME.toml    [stack]   + [services.NAME…] [env.NAME.services…]
//! ```

pub mod diagnostic;
pub mod imports;
mod load;
pub mod node;
pub mod settings;
pub mod source;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

pub use diagnostic::{Diagnostic, Diagnostics};
pub use load::{LoadError, discover_root};
pub use node::{Entry, Node, NodeKind, Table};
pub use source::{SourceId, Sources, Span};

/// The four kinds of document, by the directory they live in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DocKind {
    Host,
    Image,
    Module,
    Stack,
}

impl DocKind {
    pub const ALL: [DocKind; 4] = [
        DocKind::Host,
        DocKind::Image,
        DocKind::Module,
        DocKind::Stack,
    ];

    /// The directory (under the repo root) documents of this kind live in.
    pub fn directory(self) -> &'static str {
        match self {
            DocKind::Host => "hosts",
            DocKind::Image => "images",
            DocKind::Module => "modules",
            DocKind::Stack => "stacks",
        }
    }

    /// The header table every document of this kind starts with.
    pub fn header(self) -> &'static str {
        match self {
            DocKind::Host => "host",
            DocKind::Image => "image",
            DocKind::Module => "module",
            DocKind::Stack => "stack",
        }
    }

    /// Top-level tables allowed besides the header.
    fn sections(self) -> &'static [&'static str] {
        match self {
            DocKind::Module => &["options", "defaults", "config", "force"],
            DocKind::Host | DocKind::Image => &["defaults", "config", "force"],
            DocKind::Stack => &["services", "env"],
        }
    }

    fn from_directory(directory: &str) -> Option<DocKind> {
        DocKind::ALL
            .into_iter()
            .find(|k| k.directory() == directory)
    }
}

impl fmt::Display for DocKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.header())
    }
}

/// Index of a document in [`Repo::documents`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DocId(pub usize);

/// One parsed kiln file.
#[derive(Debug)]
pub struct Document {
    pub kind: DocKind,
    /// Host, image and stack names are file stems; module names are the
    /// path under `modules/` without `.toml` (`ssh/hardened`).
    pub name: String,
    pub source: SourceId,
    /// The whole file.
    pub root: Table,
    /// The header table (`[host]`, …), if present.
    pub header: Option<Entry>,
    /// The `imports` list of the header, as written.
    pub imports: Vec<ImportRef>,
    /// The file could not be parsed. It is kept so that importers do not
    /// report a second, misleading "no such module"; targets that import
    /// it are not evaluated (its own error says what to fix).
    pub broken: bool,
}

/// One entry of an `imports` list.
#[derive(Clone, Debug)]
pub struct ImportRef {
    pub text: String,
    pub span: Span,
}

impl Document {
    pub fn section(&self, name: &str) -> Option<&Entry> {
        self.root.get(name)
    }

    pub fn header_table(&self) -> Option<&Table> {
        self.header.as_ref().and_then(|e| e.value.as_table())
    }

    /// Where to point when the problem is the document as a whole.
    pub fn header_span(&self) -> Span {
        match &self.header {
            Some(entry) => entry.key_span,
            None => Span::new(self.source, 0..0),
        }
    }
}

/// Everything read from one repo: sources, documents, the import graph, and
/// the problems found while reading.
#[derive(Debug)]
pub struct Repo {
    pub root: PathBuf,
    pub sources: Sources,
    pub documents: Vec<Document>,
    index: BTreeMap<(DocKind, String), DocId>,
    pub imports: imports::ImportGraph,
    /// Problems found while reading and resolving imports.
    pub diagnostics: Vec<Diagnostic>,
}

impl Repo {
    pub fn document(&self, id: DocId) -> &Document {
        &self.documents[id.0]
    }

    pub fn find(&self, kind: DocKind, name: &str) -> Option<DocId> {
        self.index.get(&(kind, name.to_owned())).copied()
    }

    /// Documents of one kind, in name order.
    pub fn of_kind(&self, kind: DocKind) -> impl Iterator<Item = DocId> + '_ {
        self.index
            .range((kind, String::new())..)
            .take_while(move |((k, _), _)| *k == kind)
            .map(|(_, id)| *id)
    }

    pub fn names(&self, kind: DocKind) -> impl Iterator<Item = &str> + '_ {
        self.of_kind(kind).map(|id| self.document(id).name.as_str())
    }
}
