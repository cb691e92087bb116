//! Option types: what values an option accepts, and how a value written in
//! TOML becomes a normalised [`Value`](super::value::Value).
//!
//! A declaration names its type with a small grammar:
//!
//! ```text
//! type   := scalar | "list<" type ">" | "map<" type ">"
//! scalar := bool | int | string | port | path | size | duration
//!         | enum | secret | record
//! ```
//!
//! Constraints (`min`/`max`, `pattern`, `values`, `fields`) apply to the
//! innermost type: `type = "list<enum>"` with `values = ["a", "b"]` is a list
//! whose items are `a` or `b`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use super::options::Decl;

#[derive(Clone, Debug)]
pub enum OptionType {
    Bool,
    Int { min: Option<i64>, max: Option<i64> },
    String { pattern: Option<Pattern> },
    Port,
    Path,
    Size,
    Duration,
    Enum(Arc<[String]>),
    Secret,
    List(Box<OptionType>),
    Map(Box<OptionType>),
    Record(Arc<RecordType>),
}

/// A regular expression that must match a whole string.
#[derive(Clone, Debug)]
pub struct Pattern {
    pub source: String,
    pub regex: regex::Regex,
}

impl Pattern {
    pub fn new(source: &str) -> Result<Pattern, String> {
        regex::Regex::new(&format!("^(?:{source})$"))
            .map(|regex| Pattern {
                source: source.to_owned(),
                regex,
            })
            .map_err(|e| {
                // regex's message is a multi-line drawing; keep its last line.
                let text = e.to_string();
                let reason = text
                    .lines()
                    .last()
                    .unwrap_or("")
                    .trim_start_matches("error: ")
                    .to_owned();
                format!("invalid regular expression: {reason}")
            })
    }
}

/// A table with declared fields (like a NixOS submodule).
#[derive(Debug)]
pub struct RecordType {
    pub fields: BTreeMap<String, Arc<Decl>>,
}

/// The shape of a type expression before constraints are attached.
#[derive(Debug, PartialEq)]
pub enum TypeExpr {
    Scalar(String),
    List(Box<TypeExpr>),
    Map(Box<TypeExpr>),
}

pub const SCALAR_NAMES: [&str; 10] = [
    "bool", "int", "string", "port", "path", "size", "duration", "enum", "secret", "record",
];

impl TypeExpr {
    pub fn parse(text: &str) -> Result<TypeExpr, String> {
        let text = text.trim();
        for (prefix, wrap) in [
            ("list<", TypeExpr::List as fn(Box<TypeExpr>) -> TypeExpr),
            ("map<", TypeExpr::Map),
        ] {
            if let Some(rest) = text.strip_prefix(prefix) {
                let inner = rest
                    .strip_suffix('>')
                    .ok_or_else(|| format!("`{text}` is missing its closing `>`"))?;
                return Ok(wrap(Box::new(TypeExpr::parse(inner)?)));
            }
        }
        if SCALAR_NAMES.contains(&text) {
            Ok(TypeExpr::Scalar(text.to_owned()))
        } else {
            let mut message = format!("unknown type `{text}`");
            if let Some(hint) = crate::suggest::did_you_mean(text, SCALAR_NAMES) {
                message.push_str(&format!("; {hint}"));
            }
            Err(message)
        }
    }

    /// The innermost scalar name.
    pub fn innermost(&self) -> &str {
        match self {
            TypeExpr::Scalar(name) => name,
            TypeExpr::List(inner) | TypeExpr::Map(inner) => inner.innermost(),
        }
    }

    pub fn wrap(&self, scalar: OptionType) -> OptionType {
        match self {
            TypeExpr::Scalar(_) => scalar,
            TypeExpr::List(inner) => OptionType::List(Box::new(inner.wrap(scalar))),
            TypeExpr::Map(inner) => OptionType::Map(Box::new(inner.wrap(scalar))),
        }
    }
}

impl OptionType {
    /// The type's name as a user writes it (`list<string>`).
    pub fn name(&self) -> String {
        match self {
            OptionType::Bool => "bool".into(),
            OptionType::Int { .. } => "int".into(),
            OptionType::String { .. } => "string".into(),
            OptionType::Port => "port".into(),
            OptionType::Path => "path".into(),
            OptionType::Size => "size".into(),
            OptionType::Duration => "duration".into(),
            OptionType::Enum(_) => "enum".into(),
            OptionType::Secret => "secret".into(),
            OptionType::List(inner) => format!("list<{}>", inner.name()),
            OptionType::Map(inner) => format!("map<{}>", inner.name()),
            OptionType::Record(_) => "record".into(),
        }
    }

    /// What a value of this type looks like, for "expected …" messages.
    pub fn expectation(&self) -> String {
        match self {
            OptionType::Bool => "`true` or `false`".into(),
            OptionType::Int { min, max } => match (min, max) {
                (Some(a), Some(b)) => format!("an integer from {a} to {b}"),
                (Some(a), None) => format!("an integer ≥ {a}"),
                (None, Some(b)) => format!("an integer ≤ {b}"),
                (None, None) => "an integer".into(),
            },
            OptionType::String { pattern: Some(p) } => format!("a string matching `{}`", p.source),
            OptionType::String { pattern: None } => "a string".into(),
            OptionType::Port => "a port number from 1 to 65535".into(),
            OptionType::Path => "an absolute path".into(),
            OptionType::Size => "a size such as \"512MiB\" or \"4G\"".into(),
            OptionType::Duration => "a duration such as \"30s\" or \"1h30m\"".into(),
            OptionType::Enum(values) => format!("one of {}", quoted_list(values)),
            OptionType::Secret => {
                "a secret reference (\"env:NAME\", \"file:PATH\" or \"vault:MOUNT/PATH#KEY\")"
                    .into()
            }
            OptionType::List(inner) => format!("a list of {}", plural(inner)),
            OptionType::Map(inner) => format!("a table of {}", plural(inner)),
            OptionType::Record(record) => {
                let fields: Vec<&str> = record.fields.keys().map(String::as_str).collect();
                format!("a table with fields {}", fields.join(", "))
            }
        }
    }

    /// Whether values of this type are written as TOML strings (and so may
    /// use `${…}` interpolation).
    pub fn is_string_like(&self) -> bool {
        matches!(
            self,
            OptionType::String { .. }
                | OptionType::Path
                | OptionType::Size
                | OptionType::Duration
                | OptionType::Enum(_)
                | OptionType::Secret
        )
    }
}

fn plural(inner: &OptionType) -> String {
    match inner {
        OptionType::Record(_) => "records".into(),
        other => format!("{}s", other.name()),
    }
}

pub fn quoted_list(values: &[String]) -> String {
    values
        .iter()
        .map(|v| format!("\"{v}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for OptionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_expressions() {
        assert_eq!(TypeExpr::parse("bool"), Ok(TypeExpr::Scalar("bool".into())));
        assert_eq!(
            TypeExpr::parse("list<map<port>>"),
            Ok(TypeExpr::List(Box::new(TypeExpr::Map(Box::new(
                TypeExpr::Scalar("port".into())
            )))))
        );
        assert!(TypeExpr::parse("list<int").unwrap_err().contains("closing"));
        assert!(
            TypeExpr::parse("strng")
                .unwrap_err()
                .contains("did you mean `string`")
        );
    }
}
