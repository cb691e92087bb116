//! Option declarations and the tree of every declared option.
//!
//! A declaration is a table with a `type` key, under `[options]` in a module
//! (or in kiln's built-in `core.toml`):
//!
//! ```toml
//! [options.ssh.port]
//! type = "port"
//! default = 22
//! description = "TCP port sshd listens on."
//! example = 2222
//! ```
//!
//! Tables without `type` are groups (`ssh` above). Each evaluation sees the
//! built-in options plus those declared by the modules it imports.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::merge::check_value;
use super::types::{OptionType, Pattern, RecordType, TypeExpr};
use crate::config::diagnostic::Diagnostic;
use crate::config::{DocId, Entry, Node, NodeKind, Span, Table};
use crate::suggest::did_you_mean;

/// Who declared an option.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeclaredIn {
    Builtin,
    Module(DocId),
}

#[derive(Debug)]
pub struct Decl {
    /// Dotted path (`ssh.port`; `users.<name>.uid` for record fields).
    pub path: String,
    pub ty: OptionType,
    pub description: String,
    pub default: Option<Node>,
    pub example: Option<Node>,
    /// Must be set (only meaningful for record fields and options without
    /// a default).
    pub required: bool,
    pub declared_in: DeclaredIn,
    /// The declaration's key.
    pub span: Span,
}

#[derive(Debug)]
pub enum OptNode {
    Option(Arc<Decl>),
    Group(Group),
}

#[derive(Debug, Default)]
pub struct Group {
    pub children: BTreeMap<String, OptNode>,
    /// Where the group was first named (for "declared here" labels).
    pub span: Option<Span>,
}

impl Group {
    /// Every option under this group, in path order.
    pub fn options(&self) -> Vec<&Arc<Decl>> {
        let mut out = Vec::new();
        self.walk(&mut out);
        out
    }

    fn walk<'a>(&'a self, out: &mut Vec<&'a Arc<Decl>>) {
        for child in self.children.values() {
            match child {
                OptNode::Option(decl) => out.push(decl),
                OptNode::Group(group) => group.walk(out),
            }
        }
    }

    /// The node at a dotted path.
    pub fn lookup(&self, path: &str) -> Option<&OptNode> {
        let mut segments = path.split('.');
        let mut node = self.children.get(segments.next()?)?;
        for segment in segments {
            match node {
                OptNode::Group(group) => node = group.children.get(segment)?,
                OptNode::Option(_) => return None,
            }
        }
        Some(node)
    }

    /// Add the declarations in an `[options]` table.
    pub fn declare(
        &mut self,
        table: &Table,
        prefix: &str,
        declared_in: DeclaredIn,
        poisoned: &mut std::collections::BTreeSet<String>,
        diagnostics: &mut Vec<Diagnostic>,
    ) {
        for entry in &table.entries {
            let path = join(prefix, &entry.key);
            let Some(inner) = entry.value.as_table() else {
                diagnostics.push(
                    Diagnostic::error("bad-declaration", format!("`{path}` is not an option declaration"))
                        .at(entry.value.span, format!("expected a table, found {}", entry.value.type_name()))
                        .help(format!("declare it as `[options.{path}]` with `type`, `description` and usually `default`")),
                );
                continue;
            };
            if is_declaration(inner) {
                let Some(decl) = parse_decl(&path, entry, declared_in, diagnostics) else {
                    poisoned.insert(path);
                    continue;
                };
                match self.children.get(&entry.key) {
                    None => {
                        self.children
                            .insert(entry.key.clone(), OptNode::Option(Arc::new(decl)));
                    }
                    Some(existing) => diagnostics.push(clash(&path, existing, entry.key_span)),
                }
            } else {
                let child = self.children.entry(entry.key.clone()).or_insert_with(|| {
                    OptNode::Group(Group {
                        children: BTreeMap::new(),
                        span: Some(entry.key_span),
                    })
                });
                match child {
                    OptNode::Group(group) => {
                        group.declare(inner, &path, declared_in, poisoned, diagnostics)
                    }
                    existing @ OptNode::Option(_) => {
                        diagnostics.push(clash(&path, existing, entry.key_span))
                    }
                }
            }
        }
    }
}

fn clash(path: &str, existing: &OptNode, span: Span) -> Diagnostic {
    match existing {
        OptNode::Option(decl) => Diagnostic::error("duplicate-declaration", format!("option `{path}` is declared twice"))
            .at(span, "declared again here")
            .also(decl.span, "first declared here")
            .help("each option is declared once; import the module that declares it instead of declaring it again"),
        OptNode::Group(group) => {
            let mut diagnostic = Diagnostic::error(
                "duplicate-declaration",
                format!("`{path}` is declared as an option, but it is already a group of options"),
            )
            .at(span, "declared as an option here");
            if let Some(group_span) = group.span {
                diagnostic = diagnostic.also(group_span, format!("options under `{path}.` are declared here"));
            }
            diagnostic.help("rename one of them")
        }
    }
}

pub fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

/// A table is a declaration when it has a string `type`.
fn is_declaration(table: &Table) -> bool {
    table
        .get("type")
        .is_some_and(|e| matches!(e.value.kind, NodeKind::String(_)))
}

const DECL_KEYS: [&str; 10] = [
    "type",
    "description",
    "default",
    "example",
    "required",
    "min",
    "max",
    "pattern",
    "values",
    "fields",
];

/// Parse one declaration table. Reports every problem it finds.
pub fn parse_decl(
    path: &str,
    entry: &Entry,
    declared_in: DeclaredIn,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<Decl> {
    let table = entry.value.as_table()?;
    let before = diagnostics.len();
    for e in &table.entries {
        if !DECL_KEYS.contains(&e.key.as_str()) {
            diagnostics.push(
                Diagnostic::error(
                    "bad-declaration",
                    format!("unknown key `{}` in the declaration of `{path}`", e.key),
                )
                .at(e.key_span, "not a declaration key")
                .help_opt(did_you_mean(&e.key, DECL_KEYS))
                .note(format!(
                    "a declaration may contain {}",
                    DECL_KEYS.join(", ")
                )),
            );
        }
    }
    let type_entry = table.get("type")?;
    let expr = match TypeExpr::parse(type_entry.value.as_str().unwrap_or_default()) {
        Ok(expr) => expr,
        Err(message) => {
            diagnostics.push(
                Diagnostic::error("bad-declaration", format!("invalid type for `{path}`"))
                    .at(type_entry.value.span, message)
                    .note("types: bool, int, string, port, path, size, duration, enum, secret, record, list<T>, map<T>"),
            );
            return None;
        }
    };
    let scalar = scalar_type(path, &expr, table, declared_in, diagnostics)?;
    let ty = expr.wrap(scalar);
    let description = match table.get("description") {
        Some(Entry {
            value:
                Node {
                    kind: NodeKind::String(s),
                    ..
                },
            ..
        }) => s.trim().to_owned(),
        Some(e) => {
            diagnostics.push(
                Diagnostic::error(
                    "bad-declaration",
                    format!("the description of `{path}` must be a string"),
                )
                .at(e.value.span, format!("found {}", e.value.type_name())),
            );
            String::new()
        }
        None => {
            diagnostics.push(
                Diagnostic::error(
                    "bad-declaration",
                    format!("option `{path}` has no description"),
                )
                .at(entry.key_span, "declared here")
                .help("add `description = \"…\"`: every option is documented in `kiln options`"),
            );
            String::new()
        }
    };
    let required = match table.get("required") {
        None => false,
        Some(Entry {
            value: Node {
                kind: NodeKind::Bool(b),
                ..
            },
            ..
        }) => *b,
        Some(e) => {
            diagnostics.push(
                Diagnostic::error("bad-declaration", "`required` must be true or false")
                    .at(e.value.span, format!("found {}", e.value.type_name())),
            );
            false
        }
    };
    let default = table.get("default").map(|e| e.value.clone());
    let example = table.get("example").map(|e| e.value.clone());
    let decl = Decl {
        path: path.to_owned(),
        ty,
        description,
        default,
        example,
        required,
        declared_in,
        span: entry.key_span,
    };
    // The default and the example must themselves be valid values.
    for (what, value) in [("default", &decl.default), ("example", &decl.example)] {
        if let Some(value) = value {
            let mut problems = Vec::new();
            let root = format!("{path} ({what})");
            check_value(
                &decl.ty,
                value,
                &super::merge::OptionPath::Root(&root),
                &mut problems,
            );
            diagnostics.extend(problems);
        }
    }
    (diagnostics.len() == before).then_some(decl)
}

/// The innermost type with its constraints, reporting constraints that do
/// not apply.
fn scalar_type(
    path: &str,
    expr: &TypeExpr,
    table: &Table,
    declared_in: DeclaredIn,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<OptionType> {
    let name = expr.innermost();
    let applies: &[&str] = match name {
        "int" => &["min", "max"],
        "string" => &["pattern"],
        "enum" => &["values"],
        "record" => &["fields"],
        _ => &[],
    };
    for key in ["min", "max", "pattern", "values", "fields"] {
        if let Some(e) = table.get(key)
            && !applies.contains(&key)
        {
            diagnostics.push(
                Diagnostic::error(
                    "bad-declaration",
                    format!("`{key}` does not apply to `{name}` options"),
                )
                .at(e.key_span, format!("`{path}` has type `{name}`")),
            );
        }
    }
    let int_of = |key: &str, diagnostics: &mut Vec<Diagnostic>| -> Option<i64> {
        let e = table.get(key)?;
        match e.value.kind {
            NodeKind::Integer(i) => Some(i),
            _ => {
                diagnostics.push(
                    Diagnostic::error("bad-declaration", format!("`{key}` must be an integer"))
                        .at(e.value.span, format!("found {}", e.value.type_name())),
                );
                None
            }
        }
    };
    Some(match name {
        "bool" => OptionType::Bool,
        "int" => {
            let min = int_of("min", diagnostics);
            let max = int_of("max", diagnostics);
            if let (Some(a), Some(b)) = (min, max)
                && a > b
            {
                let span = table.get("min").map(|e| e.value.span)?;
                diagnostics.push(
                    Diagnostic::error(
                        "bad-declaration",
                        format!("`min` is greater than `max` for `{path}`"),
                    )
                    .at(span, format!("{a} > {b}")),
                );
            }
            OptionType::Int { min, max }
        }
        "string" => match table.get("pattern") {
            None => OptionType::String { pattern: None },
            Some(e) => match e.value.as_str().map(Pattern::new) {
                Some(Ok(pattern)) => OptionType::String {
                    pattern: Some(pattern),
                },
                Some(Err(message)) => {
                    diagnostics.push(
                        Diagnostic::error(
                            "bad-declaration",
                            format!("invalid pattern for `{path}`"),
                        )
                        .at(e.value.span, message),
                    );
                    return None;
                }
                None => {
                    diagnostics.push(
                        Diagnostic::error("bad-declaration", "`pattern` must be a string")
                            .at(e.value.span, format!("found {}", e.value.type_name())),
                    );
                    return None;
                }
            },
        },
        "port" => OptionType::Port,
        "path" => OptionType::Path,
        "size" => OptionType::Size,
        "duration" => OptionType::Duration,
        "secret" => OptionType::Secret,
        "enum" => {
            let values: Option<Vec<String>> = table
                .get("values")
                .and_then(|e| e.value.as_array())
                .and_then(|items| {
                    items
                        .iter()
                        .map(|i| i.as_str().map(str::to_owned))
                        .collect()
                });
            match values {
                Some(values) if !values.is_empty() => OptionType::Enum(values.into()),
                _ => {
                    let span = table
                        .get("values")
                        .map_or(table.get("type")?.value.span, |e| e.value.span);
                    diagnostics.push(
                        Diagnostic::error(
                            "bad-declaration",
                            format!("enum option `{path}` needs `values`"),
                        )
                        .at(span, "expected a non-empty list of strings")
                        .help("for example: values = [\"no\", \"prohibit-password\"]"),
                    );
                    return None;
                }
            }
        }
        "record" => {
            let Some(fields_entry) = table.get("fields") else {
                let span = table.get("type")?.value.span;
                diagnostics.push(
                    Diagnostic::error(
                        "bad-declaration",
                        format!("record option `{path}` needs `fields`"),
                    )
                    .at(span, "a record declares its fields")
                    .help(format!(
                        "add `[options.{path}.fields.NAME]` tables, each a declaration"
                    )),
                );
                return None;
            };
            let Some(fields_table) = fields_entry.value.as_table() else {
                diagnostics.push(
                    Diagnostic::error(
                        "bad-declaration",
                        "`fields` must be a table of declarations",
                    )
                    .at(
                        fields_entry.value.span,
                        format!("found {}", fields_entry.value.type_name()),
                    ),
                );
                return None;
            };
            let element = match expr {
                TypeExpr::Scalar(_) => path.to_owned(),
                _ => format!("{path}.<name>"),
            };
            let mut fields = BTreeMap::new();
            for field in &fields_table.entries {
                let field_path = join(&element, &field.key);
                if field.value.as_table().is_some_and(is_declaration) {
                    if let Some(decl) = parse_decl(&field_path, field, declared_in, diagnostics) {
                        fields.insert(field.key.clone(), Arc::new(decl));
                    }
                } else {
                    diagnostics.push(
                        Diagnostic::error(
                            "bad-declaration",
                            format!("field `{field_path}` is not a declaration"),
                        )
                        .at(
                            field.value.span,
                            "expected a table with `type` and `description`",
                        ),
                    );
                }
            }
            OptionType::Record(Arc::new(RecordType { fields }))
        }
        _ => unreachable!("TypeExpr::parse only accepts known names"),
    })
}
