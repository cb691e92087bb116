//! A TOML document as a tree of nodes that remember where they came from.
//!
//! `toml::de::DeTable` gives spans for every key and value; we convert it
//! once into owned [`Node`]s tagged with a [`Span`] so that evaluation can
//! point back at any value it rejects.

use std::borrow::Cow;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::diagnostic::Diagnostic;
use super::source::{SourceId, Span};

#[derive(Clone, Debug, PartialEq)]
pub enum NodeKind {
    String(String),
    Integer(i64),
    Float(f64),
    Bool(bool),
    Datetime(String),
    Array(Vec<Node>),
    Table(Table),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub kind: NodeKind,
    pub span: Span,
}

/// A table's entries, sorted by key (TOML tables are unordered; sorting
/// makes every later step independent of how the file was written).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Table {
    pub entries: Vec<Entry>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub key: String,
    pub key_span: Span,
    pub value: Node,
}

impl Table {
    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.entries
            .binary_search_by(|e| e.key.as_str().cmp(key))
            .ok()
            .map(|i| &self.entries[i])
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| e.key.as_str())
    }
}

impl Node {
    /// What a user would call this kind of value, for "expected X, found Y".
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            NodeKind::String(_) => "a string",
            NodeKind::Integer(_) => "an integer",
            NodeKind::Float(_) => "a float",
            NodeKind::Bool(_) => "a boolean",
            NodeKind::Datetime(_) => "a datetime",
            NodeKind::Array(_) => "an array",
            NodeKind::Table(_) => "a table",
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_table(&self) -> Option<&Table> {
        match &self.kind {
            NodeKind::Table(t) => Some(t),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Node]> {
        match &self.kind {
            NodeKind::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The value as inline TOML, for docs and messages.
    pub fn to_inline_toml(&self) -> String {
        match &self.kind {
            NodeKind::String(s) => quote(s),
            NodeKind::Integer(i) => i.to_string(),
            NodeKind::Float(f) => f.to_string(),
            NodeKind::Bool(b) => b.to_string(),
            NodeKind::Datetime(d) => d.clone(),
            NodeKind::Array(items) => {
                let items: Vec<String> = items.iter().map(Node::to_inline_toml).collect();
                format!("[{}]", items.join(", "))
            }
            NodeKind::Table(table) => {
                if table.entries.is_empty() {
                    return "{}".to_owned();
                }
                let items: Vec<String> = table
                    .entries
                    .iter()
                    .map(|e| format!("{} = {}", quote_key(&e.key), e.value.to_inline_toml()))
                    .collect();
                format!("{{ {} }}", items.join(", "))
            }
        }
    }
}

impl Node {
    /// The value as JSON (datetimes as their TOML text).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.kind {
            NodeKind::String(s) | NodeKind::Datetime(s) => J::String(s.clone()),
            NodeKind::Integer(i) => J::from(*i),
            NodeKind::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            NodeKind::Bool(b) => J::Bool(*b),
            NodeKind::Array(items) => J::Array(items.iter().map(Node::to_json).collect()),
            NodeKind::Table(table) => J::Object(
                table
                    .entries
                    .iter()
                    .map(|e| (e.key.clone(), e.value.to_json()))
                    .collect(),
            ),
        }
    }
}

/// A TOML basic string literal.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A TOML key, bare when it can be.
pub fn quote_key(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if bare { key.to_owned() } else { quote(key) }
}

/// Parse a TOML document into a [`Table`] of spanned nodes.
pub fn parse_document(source: SourceId, text: &str) -> Result<Node, Box<Diagnostic>> {
    let document = DeTable::parse(text).map_err(|error| {
        let span = error.span().unwrap_or(0..0);
        let message = error.message().trim_end().to_owned();
        Box::new(
            Diagnostic::error("toml-syntax", "invalid TOML")
                .at(Span::new(source, span), message)
                .help("see https://toml.io/en/v1.0.0 for the syntax"),
        )
    })?;
    let span = Span::new(source, 0..text.len());
    convert_table(source, document.into_inner(), span)
}

fn convert_table(
    source: SourceId,
    table: DeTable<'_>,
    span: Span,
) -> Result<Node, Box<Diagnostic>> {
    let mut entries = Vec::with_capacity(table.len());
    for (key, value) in table {
        let key_span = Span::new(source, key.span());
        let value = convert(source, value)?;
        entries.push(Entry {
            key: key.into_inner().into_owned(),
            key_span,
            value,
        });
    }
    entries.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(Node {
        kind: NodeKind::Table(Table { entries }),
        span,
    })
}

fn convert(source: SourceId, value: Spanned<DeValue<'_>>) -> Result<Node, Box<Diagnostic>> {
    let span = Span::new(source, value.span());
    let kind = match value.into_inner() {
        DeValue::String(s) => NodeKind::String(Cow::into_owned(s)),
        DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
            // `as_str` is already in `from_str_radix` form (no prefix or `_`).
            Ok(v) => NodeKind::Integer(v),
            Err(_) => {
                return Err(Box::new(
                    Diagnostic::error("toml-syntax", "integer out of range")
                        .at(span, "does not fit in a 64-bit signed integer"),
                ));
            }
        },
        DeValue::Float(f) => {
            NodeKind::Float(f.as_str().replace('_', "").parse().unwrap_or(f64::NAN))
        }
        DeValue::Boolean(b) => NodeKind::Bool(b),
        DeValue::Datetime(d) => NodeKind::Datetime(d.to_string()),
        DeValue::Array(array) => {
            let mut items = Vec::new();
            for item in array {
                items.push(convert(source, item)?);
            }
            NodeKind::Array(items)
        }
        DeValue::Table(table) => return convert_table(source, table, span),
    };
    Ok(Node { kind, span })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::source::Sources;

    #[test]
    fn keeps_spans_and_sorts_keys() {
        let mut sources = Sources::default();
        let text = "b = 0x1F\na = [\"x\", -3]\n[t]\nk = true\n";
        let id = sources.add("x.toml", text);
        let root = parse_document(id, text).unwrap();
        let table = root.as_table().unwrap();
        assert_eq!(table.keys().collect::<Vec<_>>(), ["a", "b", "t"]);
        let b = table.get("b").unwrap();
        assert_eq!(b.value.kind, NodeKind::Integer(31));
        assert_eq!(sources.snippet(b.value.span), "0x1F");
        let a = table.get("a").unwrap().value.as_array().unwrap();
        assert_eq!(a[1].kind, NodeKind::Integer(-3));
        assert_eq!(sources.snippet(a[0].span), "\"x\"");
    }

    #[test]
    fn integers_in_every_radix() {
        let mut sources = Sources::default();
        let text =
            "a = -1_000\nb = 0o17\nc = 0b101\nd = 9223372036854775807\ne = 9223372036854775808\n";
        let id = sources.add("x.toml", text);
        let error = parse_document(id, text).unwrap_err();
        assert_eq!(
            sources.snippet(error.primary_span().unwrap()),
            "9223372036854775808"
        );
        let text = "a = -1_000\nb = 0o17\nc = 0b101\n";
        let id = sources.add("y.toml", text);
        let root = parse_document(id, text).unwrap();
        let table = root.as_table().unwrap();
        let value = |k: &str| table.get(k).unwrap().value.kind.clone();
        assert_eq!(value("a"), NodeKind::Integer(-1000));
        assert_eq!(value("b"), NodeKind::Integer(15));
        assert_eq!(value("c"), NodeKind::Integer(5));
    }

    #[test]
    fn syntax_errors_carry_a_span() {
        let mut sources = Sources::default();
        let text = "a = \n";
        let id = sources.add("x.toml", text);
        let error = parse_document(id, text).unwrap_err();
        assert_eq!(error.code, "toml-syntax");
        assert!(error.primary_span().is_some());
    }
}
