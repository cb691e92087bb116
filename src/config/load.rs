//! Finding the repo and reading its files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::diagnostic::Diagnostic;
use super::imports::ImportGraph;
use super::node::{NodeKind, parse_document};
use super::source::{Sources, Span};
use super::{DocId, DocKind, Document, ImportRef, Repo};
use crate::suggest::did_you_mean;

/// Problems that stop kiln before it can read any document.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "no kiln repo found in {start} or any parent directory (looked for `lockfile.toml` or a `hosts/`, `images/` or `stacks/` directory)"
    )]
    NotFound { start: PathBuf },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The nearest ancestor of `start` holding `lockfile.toml`, `hosts/`,
/// `images/` or `stacks/`.
pub fn discover_root(start: &Path) -> Result<PathBuf, LoadError> {
    start
        .ancestors()
        .find(|dir| {
            dir.join("lockfile.toml").is_file()
                || ["hosts", "images", "stacks"]
                    .iter()
                    .any(|kind| dir.join(kind).is_dir())
        })
        .map(Path::to_path_buf)
        .ok_or_else(|| LoadError::NotFound {
            start: start.to_path_buf(),
        })
}

impl Repo {
    /// Read every kiln file under `root`: `hosts/*.toml`, `images/*.toml`,
    /// `stacks/*.toml` and `modules/**/*.toml`.
    pub fn load(root: &Path) -> Result<Repo, LoadError> {
        let mut files = Vec::new();
        for kind in DocKind::ALL {
            let directory = root.join(kind.directory());
            if !directory.is_dir() {
                continue;
            }
            collect_toml(root, &directory, kind == DocKind::Module, &mut files)?;
        }
        Ok(Repo::from_files(root.to_path_buf(), files))
    }

    /// Build a repo from `(repo-relative path, contents)` pairs. The result
    /// does not depend on the order of `files`.
    pub fn from_files(root: PathBuf, mut files: Vec<(String, Vec<u8>)>) -> Repo {
        files.sort_by(|a, b| a.0.cmp(&b.0));
        let mut sources = Sources::default();
        let mut diagnostics = Vec::new();
        let mut documents = Vec::new();
        for (path, bytes) in files {
            let Some((kind, name)) = classify(&path) else {
                continue;
            };
            let text = match String::from_utf8(bytes) {
                Ok(text) => text,
                Err(error) => {
                    let valid = error.utf8_error().valid_up_to();
                    let bytes = error.into_bytes();
                    let text = String::from_utf8_lossy(&bytes).into_owned();
                    let id = sources.add(path, text);
                    diagnostics.push(
                        Diagnostic::error("not-utf8", "file is not valid UTF-8")
                            .at(Span::new(id, valid..valid), "invalid byte sequence here")
                            .help("kiln files are TOML, which must be UTF-8"),
                    );
                    continue;
                }
            };
            let id = sources.add(path, text);
            let file = sources.get(id);
            if let Some(problem) = check_name(kind, &name) {
                diagnostics.push(
                    Diagnostic::error("bad-file-name", format!("invalid {kind} name `{name}`"))
                        .at(Span::new(id, 0..0), problem)
                        .help("rename the file"),
                );
                continue;
            }
            let root = match parse_document(id, &file.text) {
                Ok(node) => match node.kind {
                    NodeKind::Table(table) => table,
                    _ => unreachable!("a TOML document is a table"),
                },
                Err(diagnostic) => {
                    diagnostics.push(*diagnostic);
                    documents.push(Document {
                        kind,
                        name,
                        source: id,
                        root: super::Table::default(),
                        header: None,
                        imports: Vec::new(),
                        broken: true,
                    });
                    continue;
                }
            };
            let document = read_document(kind, name, id, root, &mut diagnostics);
            documents.push(document);
        }
        let mut index = BTreeMap::new();
        for (i, document) in documents.iter().enumerate() {
            index.insert((document.kind, document.name.clone()), DocId(i));
        }
        let mut repo = Repo {
            root,
            sources,
            documents,
            index,
            imports: ImportGraph::default(),
            diagnostics,
        };
        let (graph, import_diagnostics) = ImportGraph::resolve(&repo);
        repo.imports = graph;
        repo.diagnostics.extend(import_diagnostics);
        repo
    }
}

fn collect_toml(
    root: &Path,
    directory: &Path,
    recursive: bool,
    files: &mut Vec<(String, Vec<u8>)>,
) -> Result<(), LoadError> {
    let read_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| LoadError::Read { path, source }
    };
    let entries = std::fs::read_dir(directory).map_err(read_error(directory))?;
    for entry in entries {
        let entry = entry.map_err(read_error(directory))?;
        let path = entry.path();
        let file_type = entry.file_type().map_err(read_error(&path))?;
        if file_type.is_dir() {
            if recursive {
                collect_toml(root, &path, recursive, files)?;
            }
        } else if path.extension().is_some_and(|e| e == "toml") {
            let bytes = std::fs::read(&path).map_err(read_error(&path))?;
            let relative = path.strip_prefix(root).unwrap_or(&path);
            let relative: Vec<String> = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            files.push((relative.join("/"), bytes));
        }
    }
    Ok(())
}

/// Which kind of document a repo-relative path holds, and its name.
pub(crate) fn classify(path: &str) -> Option<(DocKind, String)> {
    let (directory, rest) = path.split_once('/')?;
    let kind = DocKind::from_directory(directory)?;
    let name = rest.strip_suffix(".toml")?;
    if kind != DocKind::Module && name.contains('/') {
        return None;
    }
    Some((kind, name.to_owned()))
}

/// Why a name is not acceptable for its kind, if it is not.
fn check_name(kind: DocKind, name: &str) -> Option<String> {
    let segment_ok = |s: &str, extra: &[char]| {
        let mut chars = s.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            && chars.all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || extra.contains(&c)
            })
    };
    match kind {
        DocKind::Host => {
            let ok = segment_ok(name, &[]) && name.len() <= 63 && !name.ends_with('-');
            (!ok).then(|| {
                "a host name is its hostname: lowercase letters, digits and `-`, at most 63 characters".to_owned()
            })
        }
        DocKind::Image => (!segment_ok(name, &['.'])).then(|| {
            "image names use lowercase letters, digits, `-` and `.` (no `_`: Proxmox template names use it as a separator)".to_owned()
        }),
        DocKind::Stack => (!segment_ok(name, &[]))
            .then(|| "stack names use lowercase letters, digits and `-`".to_owned()),
        DocKind::Module => (!name.split('/').all(|s| segment_ok(s, &['_'])))
            .then(|| "module names use lowercase letters, digits, `-` and `_`".to_owned()),
    }
}

/// Split a parsed file into header, imports and sections, reporting unknown
/// top-level tables.
fn read_document(
    kind: DocKind,
    name: String,
    source: super::SourceId,
    root: super::Table,
    diagnostics: &mut Vec<Diagnostic>,
) -> Document {
    let header_name = kind.header();
    let header = root.get(header_name).cloned();
    let mut imports = Vec::new();
    match &header {
        None => diagnostics.push(
            Diagnostic::error("missing-header", format!("missing [{header_name}] table"))
                .at(
                    Span::new(source, 0..0),
                    format!(
                        "a file in {}/ starts with a [{header_name}] table",
                        kind.directory()
                    ),
                )
                .help(format!("add `[{header_name}]` at the top of the file")),
        ),
        Some(entry) => match &entry.value.kind {
            NodeKind::Table(table) => {
                if let Some(list) = table.get("imports") {
                    read_imports(list, &mut imports, diagnostics);
                }
            }
            _ => diagnostics.push(
                Diagnostic::error("type-mismatch", format!("`{header_name}` must be a table"))
                    .at(
                        entry.value.span,
                        format!("expected a table, found {}", entry.value.type_name()),
                    )
                    .help(format!("write it as a `[{header_name}]` section")),
            ),
        },
    }
    let allowed = kind.sections();
    {
        for entry in &root.entries {
            if entry.key != header_name && !allowed.contains(&entry.key.as_str()) {
                let mut known: Vec<&str> = vec![header_name];
                known.extend(allowed);
                let mut diagnostic = Diagnostic::error(
                    "unknown-table",
                    format!("unknown top-level key `{}` in a {kind} file", entry.key),
                )
                .at(entry.key_span, "not allowed here")
                .note(format!(
                    "a {kind} file may contain {}",
                    known
                        .iter()
                        .map(|k| format!("[{k}]"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                if kind != DocKind::Module && entry.key == "options" {
                    diagnostic = diagnostic.help("options can only be declared in modules/; move the declarations into a module and import it");
                } else if let Some(hint) = did_you_mean(&entry.key, known.iter().copied()) {
                    diagnostic = diagnostic.help(hint);
                } else if kind == DocKind::Stack {
                    diagnostic = diagnostic.help(
                        "services go under [services.NAME], environment overlays under [env.NAME.services.NAME]",
                    );
                } else {
                    diagnostic = diagnostic
                        .help("option values go under [config] (or [defaults] / [force])");
                }
                diagnostics.push(diagnostic);
            }
        }
    }
    Document {
        kind,
        name,
        source,
        root,
        header,
        imports,
        broken: false,
    }
}

fn read_imports(
    list: &super::Entry,
    imports: &mut Vec<ImportRef>,
    diagnostics: &mut Vec<Diagnostic>,
) {
    let Some(items) = list.value.as_array() else {
        diagnostics.push(
            Diagnostic::error(
                "type-mismatch",
                "`imports` must be a list of module names or paths",
            )
            .at(
                list.value.span,
                format!(
                    "expected an array of strings, found {}",
                    list.value.type_name()
                ),
            )
            .help("for example: imports = [\"base\", \"./local.toml\"]"),
        );
        return;
    };
    for item in items {
        match item.as_str() {
            Some(text) => imports.push(ImportRef {
                text: text.to_owned(),
                span: item.span,
            }),
            None => diagnostics.push(
                Diagnostic::error("type-mismatch", "an import must be a string").at(
                    item.span,
                    format!("expected a module name or path, found {}", item.type_name()),
                ),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_paths() {
        assert_eq!(
            classify("hosts/db.toml"),
            Some((DocKind::Host, "db".into()))
        );
        assert_eq!(
            classify("modules/ssh/hardened.toml"),
            Some((DocKind::Module, "ssh/hardened".into()))
        );
        assert_eq!(classify("hosts/old/db.toml"), None);
        assert_eq!(classify("README.md"), None);
    }

    #[test]
    fn names() {
        assert!(check_name(DocKind::Host, "docker-host").is_none());
        assert!(check_name(DocKind::Host, "Docker").is_some());
        assert!(check_name(DocKind::Image, "debian-12").is_none());
        assert!(check_name(DocKind::Image, "debian_12").is_some());
        assert!(check_name(DocKind::Module, "ssh/hardened").is_none());
    }
}
