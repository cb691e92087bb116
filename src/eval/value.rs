//! Evaluated values, each remembering the text it came from.

use std::collections::BTreeMap;

use super::types::OptionType;
use crate::config::Span;

/// How strongly a definition holds.
///
/// The strongest priority present wins. `FieldDefault` is a record
/// field's own `default`; `Declared` is an option's `default` (which may set
/// fields of a record, overriding their defaults); the others are the
/// `[defaults]`, `[config]` and `[force]` sections (like NixOS's option
/// default, `mkDefault`, plain, `mkForce`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    FieldDefault,
    Declared,
    Defaults,
    Config,
    Force,
}

impl Priority {
    pub const SECTIONS: [(&'static str, Priority); 3] = [
        ("defaults", Priority::Defaults),
        ("config", Priority::Config),
        ("force", Priority::Force),
    ];

    pub fn describe(self) -> &'static str {
        match self {
            Priority::FieldDefault => "the field's default",
            Priority::Declared => "the option's default",
            Priority::Defaults => "[defaults]",
            Priority::Config => "[config]",
            Priority::Force => "[force]",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Value {
    pub kind: ValueKind,
    /// The definition this value came from.
    pub origin: Span,
}

#[derive(Clone, Debug)]
pub enum ValueKind {
    /// Not set, and no default.
    Null,
    /// Set, but every definition was invalid (already reported). Later
    /// checks treat it as set so one mistake is reported once.
    Invalid,
    Bool(bool),
    /// Integers, ports, sizes (bytes) and durations (seconds).
    Int(i64),
    /// Strings, paths (normalised) and enum values.
    Str(String),
    /// A secret reference (`env:…`, `file:…`, `vault:…`), never a secret.
    Secret(String),
    /// A string with `${…}` still to be interpolated, and the type it must
    /// satisfy once it is.
    Template {
        raw: String,
        ty: OptionType,
    },
    List(Vec<Value>),
    Map(BTreeMap<String, Value>),
}

impl PartialEq for ValueKind {
    fn eq(&self, other: &Self) -> bool {
        use ValueKind::*;
        match (self, other) {
            (Null, Null) | (Invalid, Invalid) => true,
            (Bool(a), Bool(b)) => a == b,
            (Int(a), Int(b)) => a == b,
            (Str(a), Str(b)) | (Secret(a), Secret(b)) => a == b,
            (Template { raw: a, .. }, Template { raw: b, .. }) => a == b,
            (List(a), List(b)) => a.iter().map(|v| &v.kind).eq(b.iter().map(|v| &v.kind)),
            (Map(a), Map(b)) => {
                a.len() == b.len()
                    && a.iter()
                        .zip(b)
                        .all(|((ka, va), (kb, vb))| ka == kb && va.kind == vb.kind)
            }
            _ => false,
        }
    }
}

impl Value {
    pub fn new(kind: ValueKind, origin: Span) -> Value {
        Value { kind, origin }
    }

    /// The value at a path of map keys.
    pub fn get_path<S: AsRef<str>>(&self, path: &[S]) -> Option<&Value> {
        let mut value = self;
        for key in path {
            match &value.kind {
                ValueKind::Map(map) => value = map.get(key.as_ref())?,
                _ => return None,
            }
        }
        Some(value)
    }

    pub fn get_path_mut(&mut self, path: &[String]) -> Option<&mut Value> {
        let mut value = self;
        for key in path {
            match &mut value.kind {
                ValueKind::Map(map) => value = map.get_mut(key)?,
                _ => return None,
            }
        }
        Some(value)
    }

    /// Insert at a dotted path, creating maps on the way.
    pub fn insert_path(&mut self, path: &str, inserted: Value) {
        let mut value = self;
        let mut segments = path.split('.').peekable();
        while let Some(segment) = segments.next() {
            let origin = value.origin;
            let ValueKind::Map(map) = &mut value.kind else {
                return;
            };
            if segments.peek().is_none() {
                map.insert(segment.to_owned(), inserted);
                return;
            }
            value = map
                .entry(segment.to_owned())
                .or_insert_with(|| Value::new(ValueKind::Map(BTreeMap::new()), origin));
        }
    }

    /// As JSON: sizes in bytes, durations in seconds, secrets as their
    /// reference strings. Map keys come out sorted.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.kind {
            ValueKind::Null | ValueKind::Invalid => J::Null,
            ValueKind::Bool(b) => J::Bool(*b),
            ValueKind::Int(i) => J::from(*i),
            ValueKind::Str(s) | ValueKind::Secret(s) | ValueKind::Template { raw: s, .. } => {
                J::String(s.clone())
            }
            ValueKind::List(items) => J::Array(items.iter().map(Value::to_json).collect()),
            ValueKind::Map(map) => {
                J::Object(map.iter().map(|(k, v)| (k.clone(), v.to_json())).collect())
            }
        }
    }

    /// [`to_json`](Value::to_json), consuming the tree (no string copies).
    pub fn into_json(self) -> serde_json::Value {
        use serde_json::Value as J;
        match self.kind {
            ValueKind::Null | ValueKind::Invalid => J::Null,
            ValueKind::Bool(b) => J::Bool(b),
            ValueKind::Int(i) => J::from(i),
            ValueKind::Str(s) | ValueKind::Secret(s) | ValueKind::Template { raw: s, .. } => {
                J::String(s)
            }
            ValueKind::List(items) => J::Array(items.into_iter().map(Value::into_json).collect()),
            ValueKind::Map(map) => {
                J::Object(map.into_iter().map(|(k, v)| (k, v.into_json())).collect())
            }
        }
    }

    /// A short rendering for messages (`22`, `"no"`).
    pub fn short(&self) -> String {
        match &self.kind {
            ValueKind::Null => "nothing".into(),
            ValueKind::Invalid => "an invalid value".into(),
            ValueKind::Bool(b) => b.to_string(),
            ValueKind::Int(i) => i.to_string(),
            ValueKind::Str(s) | ValueKind::Template { raw: s, .. } => crate::config::node::quote(s),
            ValueKind::Secret(_) => "a secret reference".into(),
            ValueKind::List(_) => "a list".into(),
            ValueKind::Map(_) => "a table".into(),
        }
    }
}
