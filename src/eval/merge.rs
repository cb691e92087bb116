//! Type-checking definitions and merging them by priority.
//!
//! Priority is resolved per leaf ("pushed down", as NixOS does for
//! submodules): a `[defaults]` entry for `users.root.shell` and a
//! `[config]` entry for `users.alice` never compete. At a leaf the strongest
//! priority present wins; at equal priority lists concatenate (in import
//! order), tables merge key by key, equal scalars agree, and different
//! scalars are a conflict reported with both locations.

use std::collections::BTreeMap;
use std::fmt;

use super::scalar::{
    SecretError, check_secret_reference, looks_like_private_key, normalise_path, parse_duration,
    parse_size,
};
use super::types::{OptionType, quoted_list};
use super::value::{Priority, Value, ValueKind};
use crate::config::diagnostic::Diagnostic;
use crate::config::{Node, NodeKind, Span};
use crate::suggest::did_you_mean;

/// One definition of an option: a TOML value at a priority.
#[derive(Clone, Copy, Debug)]
pub struct Def<'a> {
    pub priority: Priority,
    pub node: &'a Node,
}

/// Type-check a single value (a declaration's default or example).
pub fn check_value(
    ty: &OptionType,
    node: &Node,
    path: &OptionPath<'_>,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<Value> {
    merge(
        ty,
        path,
        &[Def {
            priority: Priority::Declared,
            node,
        }],
        node.span,
        diagnostics,
    )
}

/// Merge the definitions of one option (or record field, or map entry).
/// `defs` are in import order. Returns `None` only when nothing valid
/// remains.
pub fn merge(
    ty: &OptionType,
    path: &OptionPath<'_>,
    defs: &[Def<'_>],
    origin: Span,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<Value> {
    let top = defs.iter().map(|d| d.priority).max()?;
    let top_origin = defs
        .iter()
        .rev()
        .find(|d| d.priority == top)
        .map_or(origin, |d| d.node.span);
    match ty {
        OptionType::List(inner) => {
            let mut items = Vec::new();
            for def in defs {
                let Some(array) = def.node.as_array() else {
                    diagnostics.push(type_mismatch(path, ty, def.node));
                    continue;
                };
                for (index, node) in array.iter().enumerate() {
                    let item_path = OptionPath::Index(path, index);
                    let item = merge(
                        inner,
                        &item_path,
                        &[Def {
                            priority: def.priority,
                            node,
                        }],
                        node.span,
                        diagnostics,
                    );
                    if def.priority == top
                        && let Some(item) = item
                    {
                        items.push(item);
                    }
                }
            }
            Some(Value::new(ValueKind::List(items), top_origin))
        }
        OptionType::Map(inner) => {
            let per_key = split_tables(ty, path, defs, diagnostics);
            let mut map = BTreeMap::new();
            for (key, key_defs) in per_key {
                if let Some(value) = merge(
                    inner,
                    &OptionPath::Key(path, key),
                    &key_defs,
                    top_origin,
                    diagnostics,
                ) {
                    map.insert(key.to_owned(), value);
                }
            }
            Some(Value::new(ValueKind::Map(map), top_origin))
        }
        OptionType::Record(record) => {
            let per_field = split_tables(ty, path, defs, diagnostics);
            let mut map = BTreeMap::new();
            for (key, field_defs) in &per_field {
                if !record.fields.contains_key(*key) {
                    let span = field_defs[0].node.span;
                    let key_span = defs
                        .iter()
                        .filter_map(|d| d.node.as_table()?.get(key))
                        .map(|e| e.key_span)
                        .next()
                        .unwrap_or(span);
                    diagnostics.push(
                        Diagnostic::error(
                            "unknown-option",
                            format!("unknown field `{key}` in `{path}`"),
                        )
                        .at(key_span, format!("`{path}` has no field `{key}`"))
                        .help_opt(did_you_mean(key, record.fields.keys().map(String::as_str)))
                        .note(format!(
                            "fields: {}",
                            record.fields.keys().cloned().collect::<Vec<_>>().join(", ")
                        )),
                    );
                }
            }
            for (name, field) in &record.fields {
                let mut field_defs: Vec<Def<'_>> = Vec::new();
                if let Some(default) = &field.default {
                    field_defs.push(Def {
                        priority: Priority::FieldDefault,
                        node: default,
                    });
                }
                if let Some(defined) = per_field.get(name.as_str()) {
                    field_defs.extend(defined.iter().copied());
                }
                let field_path = OptionPath::Key(path, name);
                let value = if field_defs.is_empty() {
                    if field.required {
                        diagnostics.push(
                            Diagnostic::error(
                                "missing-field",
                                format!("`{field_path}` must be set"),
                            )
                            .at(top_origin, format!("`{path}` has no `{name}`"))
                            .help(format!("add `{name} = …` ({})", field.ty.expectation())),
                        );
                    }
                    Some(empty_value(&field.ty, top_origin))
                } else {
                    merge(&field.ty, &field_path, &field_defs, top_origin, diagnostics)
                };
                if let Some(value) = value {
                    map.insert(name.clone(), value);
                }
            }
            Some(Value::new(ValueKind::Map(map), top_origin))
        }
        scalar => {
            let mut winner: Option<(Value, Def<'_>)> = None;
            for def in defs {
                let Some(value) = check_scalar(scalar, path, def.node, diagnostics) else {
                    continue;
                };
                if def.priority != top {
                    continue;
                }
                match &winner {
                    None => winner = Some((value, *def)),
                    Some((first, first_def)) if first.kind != value.kind => {
                        diagnostics.push(conflict(path, first, first_def, &value, def));
                    }
                    Some(_) => {}
                }
            }
            // Definitions existed but none was valid: a placeholder, so the
            // option does not also look unset.
            Some(winner.map_or_else(
                || Value::new(ValueKind::Invalid, top_origin),
                |(value, _)| value,
            ))
        }
    }
}

/// Where a value sits (`files."/etc/motd".mode`, `packages[2]`), for
/// messages. Built on the stack as merging descends and rendered only when
/// a diagnostic needs it, so the common, error-free path allocates nothing.
#[derive(Clone, Copy, Debug)]
pub enum OptionPath<'a> {
    Root(&'a str),
    Key(&'a OptionPath<'a>, &'a str),
    Index(&'a OptionPath<'a>, usize),
}

impl fmt::Display for OptionPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OptionPath::Root(root) => f.write_str(root),
            // A header field reads `[host] kind`.
            OptionPath::Key(OptionPath::Root(root), key) if root.starts_with('[') => {
                write!(f, "{root} {key}")
            }
            OptionPath::Key(parent, key) => {
                write!(f, "{parent}.{}", crate::config::node::quote_key(key))
            }
            OptionPath::Index(parent, index) => write!(f, "{parent}[{index}]"),
        }
    }
}

/// The value of an option nobody set and that has no default.
pub fn empty_value(ty: &OptionType, origin: Span) -> Value {
    let kind = match ty {
        OptionType::List(_) => ValueKind::List(Vec::new()),
        OptionType::Map(_) => ValueKind::Map(BTreeMap::new()),
        _ => ValueKind::Null,
    };
    Value::new(kind, origin)
}

/// Group the entries of table-valued definitions by key, keeping each
/// definition's priority.
fn split_tables<'a>(
    ty: &OptionType,
    path: &OptionPath<'_>,
    defs: &[Def<'a>],
    diagnostics: &mut Vec<Diagnostic>,
) -> BTreeMap<&'a str, Vec<Def<'a>>> {
    let mut per_key: BTreeMap<&str, Vec<Def<'_>>> = BTreeMap::new();
    for def in defs {
        match def.node.as_table() {
            Some(table) => {
                for entry in &table.entries {
                    per_key.entry(entry.key.as_str()).or_default().push(Def {
                        priority: def.priority,
                        node: &entry.value,
                    });
                }
            }
            None => diagnostics.push(type_mismatch(path, ty, def.node)),
        }
    }
    per_key
}

fn conflict(
    path: &OptionPath<'_>,
    first: &Value,
    first_def: &Def<'_>,
    second: &Value,
    second_def: &Def<'_>,
) -> Diagnostic {
    Diagnostic::error("conflict", format!("conflicting definitions of `{path}`"))
        .at(second_def.node.span, format!("defined as {} here", second.short()))
        .also(first_def.node.span, format!("but defined as {} here", first.short()))
        .note(format!(
            "both are {} definitions; at equal priority, values must agree",
            second_def.priority.describe()
        ))
        .help("set it in one place; or make the one that should win [force], or the one that should yield [defaults]")
}

pub fn type_mismatch(path: &dyn fmt::Display, ty: &OptionType, node: &Node) -> Diagnostic {
    let mut diagnostic = Diagnostic::error("type-mismatch", format!("wrong type for `{path}`")).at(
        node.span,
        format!("expected {}, found {}", ty.expectation(), node.type_name()),
    );
    // The most common slip: a quoted number, or an unquoted size.
    match (&node.kind, ty) {
        (NodeKind::String(s), OptionType::Int { .. } | OptionType::Port)
            if s.trim().parse::<i64>().is_ok() =>
        {
            diagnostic = diagnostic.help(format!("remove the quotes: {}", s.trim()));
        }
        (NodeKind::String(s), OptionType::Bool) if s == "true" || s == "false" => {
            diagnostic = diagnostic.help(format!("remove the quotes: {s}"));
        }
        (
            NodeKind::Integer(_) | NodeKind::Bool(_),
            OptionType::String { .. } | OptionType::Enum(_),
        ) => {
            diagnostic = diagnostic.help(format!("quote it: \"{}\"", node.to_inline_toml()));
        }
        (NodeKind::String(_), OptionType::List(_)) => {
            diagnostic = diagnostic.help(format!("wrap it in a list: [{}]", node.to_inline_toml()));
        }
        _ => {}
    }
    diagnostic
}

/// Check one scalar definition and normalise it.
fn check_scalar(
    ty: &OptionType,
    path: &OptionPath<'_>,
    node: &Node,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<Value> {
    let value = |kind| Some(Value::new(kind, node.span));
    let kind = match (&node.kind, ty) {
        (NodeKind::Bool(b), OptionType::Bool) => return value(ValueKind::Bool(*b)),
        (NodeKind::Integer(i), OptionType::Int { min, max }) => {
            if min.is_some_and(|m| *i < m) || max.is_some_and(|m| *i > m) {
                diagnostics.push(invalid(
                    path,
                    node,
                    format!("{i} is out of range: expected {}", ty.expectation()),
                    None,
                ));
                return None;
            }
            return value(ValueKind::Int(*i));
        }
        (NodeKind::Integer(i), OptionType::Port) => {
            if !(1..=65535).contains(i) {
                diagnostics.push(invalid(
                    path,
                    node,
                    format!("{i} is not a valid port: expected 1 to 65535"),
                    None,
                ));
                return None;
            }
            return value(ValueKind::Int(*i));
        }
        (NodeKind::Integer(i), OptionType::Size | OptionType::Duration) => {
            if *i < 0 {
                diagnostics.push(invalid(path, node, format!("{i} is negative"), None));
                return None;
            }
            return value(ValueKind::Int(*i));
        }
        (NodeKind::String(s), ty) if ty.is_string_like() => s,
        _ => {
            diagnostics.push(type_mismatch(path, ty, node));
            return None;
        }
    };
    if kind.contains("${") {
        return value(ValueKind::Template {
            raw: kind.clone(),
            ty: ty.clone(),
        });
    }
    match from_string(ty, kind) {
        Ok(kind) => value(kind),
        Err(problem) => {
            diagnostics.push(problem.into_diagnostic(path, node.span));
            None
        }
    }
}

/// Why a string is not a valid value of its type.
pub struct Invalid {
    code: &'static str,
    label: String,
    help: Option<String>,
    /// The text is (or may be) a secret: do not show it.
    secret: bool,
}

impl Invalid {
    fn new(label: impl Into<String>) -> Invalid {
        Invalid {
            code: "invalid-value",
            label: label.into(),
            help: None,
            secret: false,
        }
    }

    pub fn into_diagnostic(self, path: &dyn fmt::Display, span: Span) -> Diagnostic {
        let message = match self.code {
            "secret-value" => format!("`{path}` takes a secret reference, not a secret"),
            "private-key" => format!("a private key in `{path}`"),
            _ => format!("invalid value for `{path}`"),
        };
        let mut diagnostic = Diagnostic::error(self.code, message)
            .at(span, self.label)
            .help_opt(self.help);
        if self.secret {
            diagnostic = diagnostic.redacting(span);
        }
        diagnostic
    }
}

fn invalid(
    path: &dyn fmt::Display,
    node: &Node,
    label: String,
    help: Option<String>,
) -> Diagnostic {
    Diagnostic::error("invalid-value", format!("invalid value for `{path}`"))
        .at(node.span, label)
        .help_opt(help)
}

/// Validate and normalise a string for a string-like type. Used for values
/// as written and again after interpolation.
pub fn from_string(ty: &OptionType, text: &str) -> Result<ValueKind, Invalid> {
    let text_owned = || text.to_owned();
    match ty {
        OptionType::String { pattern } => {
            if looks_like_private_key(text) {
                return Err(Invalid {
                    code: "private-key",
                    label: "this looks like a private key".into(),
                    help: Some("secrets never go in kiln files (they would land in the store and the lockfile): keep the key outside the repo and refer to it from a `secret` option (`file:PATH`, `env:NAME` or `vault:…`)".into()),
                    secret: true,
                });
            }
            if let Some(pattern) = pattern
                && !pattern.regex.is_match(text)
            {
                return Err(Invalid::new(format!("{} does not match the pattern `{}`", crate::config::node::quote(text), pattern.source)));
            }
            Ok(ValueKind::Str(text_owned()))
        }
        OptionType::Path => normalise_path(text).map(ValueKind::Str).map_err(Invalid::new),
        OptionType::Size => parse_size(text)
            .map_err(Invalid::new)
            .and_then(|bytes| i64::try_from(bytes).map_err(|_| Invalid::new("size too large")))
            .map(ValueKind::Int),
        OptionType::Duration => parse_duration(text)
            .map_err(Invalid::new)
            .and_then(|s| i64::try_from(s).map_err(|_| Invalid::new("duration too large")))
            .map(ValueKind::Int),
        OptionType::Enum(values) => {
            if values.iter().any(|v| v == text) {
                Ok(ValueKind::Str(text_owned()))
            } else {
                let mut problem = Invalid::new(format!("expected one of {}", quoted_list(values)));
                problem.help = did_you_mean(text, values.iter().map(String::as_str));
                Err(problem)
            }
        }
        OptionType::Secret => match check_secret_reference(text) {
            Ok(()) => Ok(ValueKind::Secret(text_owned())),
            Err(SecretError::NotAReference) => Err(Invalid {
                code: "secret-value",
                label: "this looks like a secret value; kiln stores only references".into(),
                help: Some("write where the secret lives instead: \"env:NAME\", \"file:/path/to/file\" or \"vault:MOUNT/PATH#KEY\" — and rotate this secret if it was ever committed".into()),
                secret: true,
            }),
            Err(SecretError::Malformed(message)) => Err(Invalid::new(message)),
        },
        other => Err(Invalid::new(format!("expected {}", other.expectation()))),
    }
}
