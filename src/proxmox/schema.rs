//! Validation of request parameters against Proxmox VE's published API
//! schema, the way `pveproxy` validates them.
//!
//! The schema is `api-viewer/apidata.js` from proxmox/pve-docs (a tree of
//! `{path, children, info: {METHOD: {parameters, returns, ...}}}`) plus the
//! named formats it leaves undefined, from proxmox/proxmox-rs
//! `pve-api-types/pve-api.json` (see `tests/fixtures/proxmox/PROVENANCE.md`).
//! Everything is compiled once by [`ApiSchema::from_json`]: every pattern is
//! translated to Rust's `regex` there, so a schema that loads can validate
//! any request.
//!
//! [`MethodSchema::validate`] follows pve-common `PVE::JSONSchema` (commit
//! f665029e, 9.2.1): `check_object`, `check_prop`, `check_type`,
//! `check_format` and `parse_property_string`, with their checks in their
//! order, stopping where they stop, and with their messages. The parts that
//! surprise:
//!
//! - Form values arrive as strings. A top-level `boolean` must be exactly `1`
//!   or `0`; inside a property string, `yes/no/on/off/true/false` (any case)
//!   are turned into `1`/`0` first (`parse_boolean`).
//! - `pattern` is applied as `m/^$pattern$/`: textually, not as
//!   `^(?:pattern)$`, so an unbracketed alternation is only half anchored
//!   (`/dev/parport\d+|/dev/usb/lp\d+` accepts `/dev/parport0junk`). Perl's
//!   `$` also matches before a final newline; both are kept.
//! - Indexed parameters are collapsed in apidata (`scsi0`..`scsi30` appear
//!   once as `scsi[n]`, by `PVE::RESTHandler::api_clone_schema`) and the
//!   range is dropped; [`INDEXED_PARAMETERS`] puts it back.
//! - Named formats implemented in Perl code (`{"$perl_code": true}` in the
//!   formats file) are ported (`CODE_FORMATS`) where kiln's endpoints use
//!   them; the rest are accepted unchecked and listed by
//!   [`MethodSchema::unchecked_formats`]. Validators that Perl attaches to
//!   hash formats (e.g. qemu-server's check that a `cpu` type exists) depend
//!   on the node and are not modelled.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

use regex::Regex;
use serde_json::Value as Json;

/// How many of each indexed parameter exist (`scsi[n]` → `scsi0`..`scsi30`).
///
/// apidata keeps one `NAME[n]` entry and drops the range; only some
/// descriptions mention it ("n is 0 to 30"). These counts are those of the
/// uncollapsed dump, proxmox/proxmox-rs `pve-api-types/pve-api.json` at
/// commit 984a933c (PVE 9), where `scsi0`..`scsi30` are all listed; they
/// match qemu-server's `$MAX_*` constants and pve-container's
/// `$MAX_MOUNT_POINTS`/`$MAX_LXC_NETWORKS`. The names are unique across the
/// API (qemu and lxc `net`/`unused` have the same ranges), so one table
/// serves every method.
pub const INDEXED_PARAMETERS: &[(&str, u32)] = &[
    ("acmedomain", 6),
    ("dev", 256),
    ("hostpci", 16),
    ("ide", 4),
    ("ipconfig", 32),
    ("link", 8),
    ("mp", 256),
    ("net", 32),
    ("numa", 8),
    ("parallel", 3),
    ("sata", 6),
    ("scsi", 31),
    ("serial", 4),
    ("unused", 256),
    ("usb", 14),
    ("virtio", 16),
    ("virtiofs", 10),
];

/// Subtrees where the rest of the URL is one path parameter: pve-storage
/// registers `{storage}/content` with `fragmentDelimiter => ''`, because a
/// volume ID may contain `/` (`local:iso/seed.iso`).
const WHOLE_REST_SUBTREES: &[&str] = &["/nodes/{node}/storage/{storage}/content"];

const NOT_IN_SCHEMA: &str =
    "property is not defined in schema and the schema does not allow additional properties";

/// A schema that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("the {what} is not valid JSON: {source}")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("{location}: {problem}")]
    Structure { location: String, problem: String },
    #[error("{location}: pattern `{pattern}` cannot be translated to a Rust regex: {source}")]
    Pattern {
        location: String,
        pattern: String,
        #[source]
        source: Box<regex::Error>,
    },
    #[error(
        "{location}: `{name}` is an indexed parameter whose range kiln does not know; \
         add its count to INDEXED_PARAMETERS in src/proxmox/schema.rs"
    )]
    UnknownIndexRange { location: String, name: String },
}

/// One problem with a request, as Proxmox reports it in the `errors` object
/// of its 400 "Parameter verification failed." answer: the parameter's name
/// and PVE's message, byte for byte (messages that come from a Perl `die`
/// keep their trailing newline).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub parameter: String,
    pub message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.parameter, self.message.trim_end())
    }
}

/// The whole API: every method of an apidata dump, compiled.
#[derive(Debug)]
pub struct ApiSchema {
    methods: Vec<MethodEntry>,
    formats: BTreeMap<String, NamedFormat>,
}

/// One method of the API; from [`ApiSchema::method`], it carries the path
/// parameters of the concrete path it was looked up with.
#[derive(Debug, Clone)]
pub struct MethodSchema<'a> {
    api: &'a ApiSchema,
    entry: &'a MethodEntry,
    path_parameters: BTreeMap<String, String>,
}

#[derive(Debug)]
struct MethodEntry {
    http_method: String,
    template: String,
    parameters: ObjectSchema,
}

/// The parameters of a method: an object schema whose indexed properties
/// (`net[n]`) stand for `net0`..`net31`.
#[derive(Debug)]
struct ObjectSchema {
    plain: BTreeMap<String, Property>,
    indexed: BTreeMap<String, (u32, Property)>,
    /// `None` is Perl's undef: unknown properties are then allowed.
    additional_properties: Option<bool>,
}

/// One property schema, reduced to what `check_prop` reads.
#[derive(Debug, Default)]
struct Property {
    kind: Option<String>,
    optional: bool,
    enumeration: Option<Vec<String>>,
    pattern: Option<Regex>,
    min_length: Option<usize>,
    max_length: Option<usize>,
    minimum: Option<Bound>,
    maximum: Option<Bound>,
    format: Option<Format>,
    requires: Option<String>,
    alias: Option<String>,
    key_alias: Option<String>,
    default_key: bool,
    items: Option<Box<Property>>,
    instance_types: Option<Vec<String>>,
    type_property: Option<String>,
    one_of: Option<Vec<Property>>,
}

/// A numeric bound, with its text as the schema wrote it (for messages).
#[derive(Debug)]
struct Bound {
    value: f64,
    text: String,
}

#[derive(Debug)]
enum Format {
    /// A property string (`key=value,...`) defined inline.
    Inline(BTreeMap<String, Property>),
    /// A named format: `base`, or `base-list` / `base-opt`.
    Named {
        name: String,
        base: String,
        variant: Variant,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    Single,
    List,
    Opt,
}

#[derive(Debug)]
enum NamedFormat {
    PropertyString(BTreeMap<String, Property>),
    Code(CodeValidator),
    /// Perl code kiln has not ported: accepted unchecked.
    NotPorted,
}

/// A named format implemented in Perl; the error is the text of its `die`.
type CodeValidator = fn(&str) -> Result<(), String>;

impl ApiSchema {
    /// Compiles an apidata dump (`apidata.js` as JSON) and the named-format
    /// definitions (`pve-api-formats.json`).
    pub fn from_json(apidata: &str, formats: &str) -> Result<ApiSchema, SchemaError> {
        let tree: Json = serde_json::from_str(apidata).map_err(|source| SchemaError::Json {
            what: "API schema",
            source,
        })?;
        let format_defs: Json =
            serde_json::from_str(formats).map_err(|source| SchemaError::Json {
                what: "formats file",
                source,
            })?;
        let mut compiler = Compiler::default();

        let mut named = BTreeMap::new();
        for (name, validator) in CODE_FORMATS {
            named.insert((*name).to_owned(), NamedFormat::Code(*validator));
        }
        let Json::Object(defs) = &format_defs else {
            return Err(structure("formats file", "expected an object of formats"));
        };
        for (name, def) in defs {
            let location = format!("format {name}");
            match def {
                Json::Null => {}
                Json::Object(map) if map.contains_key("$perl_code") => {
                    named.entry(name.clone()).or_insert(NamedFormat::NotPorted);
                }
                Json::Object(_) => {
                    let keys = compiler.property_string(def, &location)?;
                    named.insert(name.clone(), NamedFormat::PropertyString(keys));
                }
                _ => return Err(structure(&location, "expected an object or null")),
            }
        }

        let mut methods = Vec::new();
        let Json::Array(roots) = &tree else {
            return Err(structure("API schema", "expected an array of path nodes"));
        };
        for node in roots {
            compiler.walk(node, &mut methods)?;
        }
        Ok(ApiSchema {
            methods,
            formats: named,
        })
    }

    /// The method at a concrete path: `/nodes/pve1/qemu/100/config` matches
    /// `/nodes/{node}/qemu/{vmid}/config`, and its path parameters (`node`,
    /// `vmid`) are validated with the others. `None` where Proxmox answers
    /// 501 "Method ... not implemented".
    pub fn method(&self, method: &str, path: &str) -> Option<MethodSchema<'_>> {
        let concrete: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        self.methods
            .iter()
            .filter(|entry| entry.http_method == method)
            .find_map(|entry| {
                let path_parameters = match_path(&entry.template, &concrete)?;
                Some(MethodSchema {
                    api: self,
                    entry,
                    path_parameters,
                })
            })
    }

    /// Every method, without path parameters.
    pub fn methods(&self) -> impl Iterator<Item = MethodSchema<'_>> {
        self.methods.iter().map(|entry| MethodSchema {
            api: self,
            entry,
            path_parameters: BTreeMap::new(),
        })
    }
}

/// The path parameters, if `concrete` (split on `/`) matches `template`.
/// A parameter segment matches `\S+`, like `PVE::RESTHandler`'s default.
fn match_path(template: &str, concrete: &[&str]) -> Option<BTreeMap<String, String>> {
    let segments: Vec<&str> = template.split('/').filter(|s| !s.is_empty()).collect();
    let joined;
    let mut concrete = Cow::Borrowed(concrete);
    for subtree in WHOLE_REST_SUBTREES {
        let depth = subtree.split('/').filter(|s| !s.is_empty()).count();
        if template.starts_with(&format!("{subtree}/")) && concrete.len() > depth + 1 {
            joined = concrete[depth..].join("/");
            let mut whole = concrete[..depth].to_vec();
            whole.push(&joined);
            concrete = Cow::Owned(whole);
            break;
        }
    }
    if segments.len() != concrete.len() {
        return None;
    }
    let mut parameters = BTreeMap::new();
    for (segment, actual) in segments.iter().zip(concrete.iter()) {
        match segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            Some(name) => {
                if actual.chars().any(char::is_whitespace) {
                    return None;
                }
                parameters.insert(name.to_owned(), (*actual).to_owned());
            }
            None if segment == actual => {}
            None => return None,
        }
    }
    Some(parameters)
}

impl MethodSchema<'_> {
    /// `GET`, `POST`, `PUT` or `DELETE`.
    pub fn http_method(&self) -> &str {
        &self.entry.http_method
    }

    /// The templated path, e.g. `/nodes/{node}/qemu/{vmid}/config`.
    pub fn path_template(&self) -> &str {
        &self.entry.template
    }

    /// The path parameters taken from the concrete path.
    pub fn path_parameters(&self) -> &BTreeMap<String, String> {
        &self.path_parameters
    }

    /// Whether the method takes a parameter of this name (`scsi5` is taken
    /// where the schema has `scsi[n]`).
    pub fn has_parameter(&self, name: &str) -> bool {
        self.entry.parameters.lookup(name).is_some()
    }

    /// The JSON type of a parameter (`string`, `integer`, `boolean`,
    /// `number`, ...), if the method takes it and the schema names one.
    pub fn parameter_type(&self, name: &str) -> Option<&str> {
        self.entry
            .parameters
            .lookup(name)
            .and_then(|p| p.kind.as_deref())
    }

    /// Every problem with these parameters (path parameters included) as
    /// Proxmox's API would report them, sorted by parameter name; empty if
    /// Proxmox would accept them. Values are form values: all strings.
    pub fn validate(&self, params: &BTreeMap<String, String>) -> Vec<Violation> {
        // pve-manager PVE/HTTPServer.pm rest_handler, before validation.
        for (name, value) in params {
            if self.path_parameters.get(name).is_some_and(|v| v != value) {
                return vec![Violation {
                    parameter: name.clone(),
                    message:
                        "duplicate parameter (already defined in URI) with conflicting values!"
                            .to_owned(),
                }];
            }
        }
        let schema = &self.entry.parameters;
        let mut values: BTreeMap<String, Value> = self
            .path_parameters
            .iter()
            .chain(params)
            .map(|(name, value)| {
                // RESTHandler's normalize_legacy_param_formats: a form value
                // for an array parameter is a one-element array.
                let is_array = schema
                    .lookup(name)
                    .is_some_and(|p| p.kind.as_deref() == Some("array"));
                let value = if is_array && perl_true(value) {
                    Value::List(vec![value.clone()])
                } else {
                    Value::Str(value.clone())
                };
                (name.clone(), value)
            })
            .collect();
        let mut errors = Errors::default();
        let checker = Checker {
            formats: &self.api.formats,
        };
        checker.check_object(
            "",
            schema,
            &mut values,
            schema.additional_properties,
            &mut errors,
        );
        errors
            .0
            .into_iter()
            .map(|(parameter, message)| Violation { parameter, message })
            .collect()
    }

    /// Named formats this method's parameters use (at any depth) that are
    /// accepted without a check: Perl code kiln has not ported, or names
    /// the formats file does not define.
    pub fn unchecked_formats(&self) -> BTreeSet<String> {
        let mut found = BTreeSet::new();
        let mut seen = BTreeSet::new();
        let schema = &self.entry.parameters;
        let properties = schema
            .plain
            .values()
            .chain(schema.indexed.values().map(|(_, p)| p));
        for property in properties {
            self.collect_unchecked(property, &mut found, &mut seen);
        }
        found
    }

    fn collect_unchecked<'s>(
        &'s self,
        property: &'s Property,
        found: &mut BTreeSet<String>,
        seen: &mut BTreeSet<&'s str>,
    ) {
        let nested = property.items.iter().map(|p| &**p);
        for inner in nested.chain(property.one_of.iter().flatten()) {
            self.collect_unchecked(inner, found, seen);
        }
        match &property.format {
            Some(Format::Inline(keys)) => {
                for inner in keys.values() {
                    self.collect_unchecked(inner, found, seen);
                }
            }
            Some(Format::Named { name, base, .. }) if name != "regex" => {
                match self.api.formats.get(base) {
                    Some(NamedFormat::Code(_)) => {}
                    Some(NamedFormat::PropertyString(keys)) => {
                        if seen.insert(base) {
                            for inner in keys.values() {
                                self.collect_unchecked(inner, found, seen);
                            }
                        }
                    }
                    Some(NamedFormat::NotPorted) | None => {
                        found.insert(base.clone());
                    }
                }
            }
            _ => {}
        }
    }
}

impl ObjectSchema {
    fn lookup(&self, key: &str) -> Option<&Property> {
        if let Some(property) = self.plain.get(key) {
            return Some(property);
        }
        let (prefix, index) = split_index(key)?;
        let (count, property) = self.indexed.get(prefix)?;
        (index < *count).then_some(property)
    }
}

/// `net12` → (`net`, 12); only canonical indices (`net012` is no `net[n]`).
fn split_index(key: &str) -> Option<(&str, u32)> {
    let digits_at = key.find(|c: char| c.is_ascii_digit())?;
    let (prefix, digits) = key.split_at(digits_at);
    let canonical = !digits.starts_with('0') || digits == "0";
    let all_lower = !prefix.is_empty() && prefix.bytes().all(|b| b.is_ascii_lowercase());
    if !canonical || !all_lower || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((prefix, digits.parse().ok()?))
}

/// The properties `check_object` walks: a method's parameters or the keys
/// of a property string.
trait Properties {
    fn property(&self, key: &str) -> Option<&Property>;
    /// The schema's keys `check_object` must visit for this value: every
    /// plain key, and the expanded names of an indexed property where a
    /// value is present (absent optional ones cannot fail).
    fn keys_for<'s>(&'s self, value: &BTreeMap<String, Value>)
    -> Vec<(Cow<'s, str>, &'s Property)>;
}

impl Properties for ObjectSchema {
    fn property(&self, key: &str) -> Option<&Property> {
        self.lookup(key)
    }

    fn keys_for<'s>(
        &'s self,
        value: &BTreeMap<String, Value>,
    ) -> Vec<(Cow<'s, str>, &'s Property)> {
        let mut keys: Vec<(Cow<'s, str>, &'s Property)> = self
            .plain
            .iter()
            .map(|(k, p)| (Cow::Borrowed(k.as_str()), p))
            .collect();
        for (prefix, (count, property)) in &self.indexed {
            for index in 0..*count {
                let name = format!("{prefix}{index}");
                if !property.optional || value.contains_key(&name) {
                    keys.push((Cow::Owned(name), property));
                }
            }
        }
        keys
    }
}

impl Properties for BTreeMap<String, Property> {
    fn property(&self, key: &str) -> Option<&Property> {
        self.get(key)
    }

    fn keys_for<'s>(&'s self, _: &BTreeMap<String, Value>) -> Vec<(Cow<'s, str>, &'s Property)> {
        self.iter()
            .map(|(k, p)| (Cow::Borrowed(k.as_str()), p))
            .collect()
    }
}

// ---------------------------------------------------------------------------
// Loading

#[derive(Default)]
struct Compiler {
    /// Compiled patterns by source: the same few dozen recur hundreds of times.
    patterns: BTreeMap<String, Regex>,
}

fn structure(location: &str, problem: &str) -> SchemaError {
    SchemaError::Structure {
        location: location.to_owned(),
        problem: problem.to_owned(),
    }
}

impl Compiler {
    fn walk(&mut self, node: &Json, methods: &mut Vec<MethodEntry>) -> Result<(), SchemaError> {
        let path = node
            .get("path")
            .and_then(Json::as_str)
            .ok_or_else(|| structure("API schema", "a node has no `path`"))?;
        if let Some(info) = node.get("info") {
            let info = info
                .as_object()
                .ok_or_else(|| structure(path, "`info` is not an object"))?;
            for (http_method, method) in info {
                let location = format!("{http_method} {path}");
                let parameters = method
                    .get("parameters")
                    .ok_or_else(|| structure(&location, "no `parameters`"))?;
                methods.push(MethodEntry {
                    http_method: http_method.clone(),
                    template: path.to_owned(),
                    parameters: self.object(parameters, &location)?,
                });
            }
        }
        if let Some(children) = node.get("children") {
            let children = children
                .as_array()
                .ok_or_else(|| structure(path, "`children` is not an array"))?;
            for child in children {
                self.walk(child, methods)?;
            }
        }
        Ok(())
    }

    fn object(&mut self, schema: &Json, location: &str) -> Result<ObjectSchema, SchemaError> {
        let mut object = ObjectSchema {
            plain: BTreeMap::new(),
            indexed: BTreeMap::new(),
            additional_properties: match schema.get("additionalProperties") {
                None | Some(Json::Null) => None,
                Some(Json::Object(_)) => {
                    return Err(structure(
                        location,
                        "additionalProperties as a schema is not supported",
                    ));
                }
                Some(v) => Some(json_true(v)),
            },
        };
        let Some(properties) = schema.get("properties") else {
            return Ok(object);
        };
        let properties = properties
            .as_object()
            .ok_or_else(|| structure(location, "`properties` is not an object"))?;
        for (name, property) in properties {
            let here = format!("{location}: {name}");
            let compiled = self.property(property, &here)?;
            match name.strip_suffix("[n]") {
                Some(prefix) => {
                    let count = INDEXED_PARAMETERS
                        .iter()
                        .find(|(p, _)| *p == prefix)
                        .map(|(_, count)| *count)
                        .ok_or_else(|| SchemaError::UnknownIndexRange {
                            location: location.to_owned(),
                            name: name.clone(),
                        })?;
                    object.indexed.insert(prefix.to_owned(), (count, compiled));
                }
                None => {
                    object.plain.insert(name.clone(), compiled);
                }
            }
        }
        Ok(object)
    }

    fn property_string(
        &mut self,
        keys: &Json,
        location: &str,
    ) -> Result<BTreeMap<String, Property>, SchemaError> {
        let keys = keys
            .as_object()
            .ok_or_else(|| structure(location, "a property-string format is not an object"))?;
        keys.iter()
            .map(|(key, schema)| {
                Ok((
                    key.clone(),
                    self.property(schema, &format!("{location}.{key}"))?,
                ))
            })
            .collect()
    }

    fn property(&mut self, schema: &Json, location: &str) -> Result<Property, SchemaError> {
        let Json::Object(map) = schema else {
            return Err(structure(location, "a property schema is not an object"));
        };
        let string = |key: &str| -> Result<Option<String>, SchemaError> {
            match map.get(key) {
                None | Some(Json::Null) => Ok(None),
                Some(Json::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(structure(location, &format!("`{key}` is not a string"))),
            }
        };
        let strings = |key: &str| -> Result<Option<Vec<String>>, SchemaError> {
            match map.get(key) {
                None | Some(Json::Null) => Ok(None),
                Some(Json::Array(values)) => values
                    .iter()
                    .map(|v| {
                        perl_string(v).ok_or_else(|| {
                            structure(location, &format!("`{key}` holds a non-scalar"))
                        })
                    })
                    .collect::<Result<_, _>>()
                    .map(Some),
                Some(_) => Err(structure(location, &format!("`{key}` is not an array"))),
            }
        };
        let length = |key: &str| -> Result<Option<usize>, SchemaError> {
            match map.get(key) {
                None | Some(Json::Null) => Ok(None),
                Some(v) => perl_string(v)
                    .and_then(|s| s.parse().ok())
                    .map(Some)
                    .ok_or_else(|| structure(location, &format!("`{key}` is not a length"))),
            }
        };
        let bound = |key: &str| -> Result<Option<Bound>, SchemaError> {
            match map.get(key) {
                None | Some(Json::Null) => Ok(None),
                Some(v) => {
                    let text = perl_string(v)
                        .filter(|s| is_number(s))
                        .ok_or_else(|| structure(location, &format!("`{key}` is not a number")))?;
                    Ok(Some(Bound {
                        value: perl_numify(&text),
                        text,
                    }))
                }
            }
        };
        let flag = |key: &str| map.get(key).is_some_and(json_true);

        let pattern = match string("pattern")? {
            Some(source) => Some(self.pattern(&source, location)?),
            None => None,
        };
        let format = match map.get("format") {
            None | Some(Json::Null) => None,
            Some(Json::String(name)) => {
                let (base, variant) = match (name.strip_suffix("-list"), name.strip_suffix("-opt"))
                {
                    (Some(base), _) => (base, Variant::List),
                    (_, Some(base)) => (base, Variant::Opt),
                    _ => (name.as_str(), Variant::Single),
                };
                Some(Format::Named {
                    name: name.clone(),
                    base: base.to_owned(),
                    variant,
                })
            }
            Some(inline @ Json::Object(_)) => Some(Format::Inline(
                self.property_string(inline, &format!("{location} format"))?,
            )),
            Some(_) => {
                return Err(structure(
                    location,
                    "`format` is neither a name nor an object",
                ));
            }
        };
        let items = match map.get("items") {
            None | Some(Json::Null) => None,
            Some(items) => Some(Box::new(self.property(items, &format!("{location}[]"))?)),
        };
        let one_of = match map.get("oneOf") {
            None | Some(Json::Null) => None,
            Some(Json::Array(alternatives)) => Some(
                alternatives
                    .iter()
                    .enumerate()
                    .map(|(i, alt)| self.property(alt, &format!("{location}.oneOf[{i}]")))
                    .collect::<Result<_, _>>()?,
            ),
            Some(_) => return Err(structure(location, "`oneOf` is not an array")),
        };
        if map.contains_key("allOf") || map.contains_key("type-property-schema") {
            return Err(structure(
                location,
                "allOf and type-property-schema are not supported",
            ));
        }
        Ok(Property {
            kind: string("type")?,
            optional: flag("optional"),
            enumeration: strings("enum")?,
            pattern,
            min_length: length("minLength")?,
            max_length: length("maxLength")?,
            minimum: bound("minimum")?,
            maximum: bound("maximum")?,
            format,
            requires: string("requires")?,
            alias: string("alias")?,
            key_alias: string("keyAlias")?,
            default_key: flag("default_key"),
            items,
            instance_types: strings("instance-types")?,
            type_property: string("type-property")?,
            one_of,
        })
    }

    /// `m/^$pattern$/`, translated and compiled once per distinct pattern.
    fn pattern(&mut self, source: &str, location: &str) -> Result<Regex, SchemaError> {
        if let Some(regex) = self.patterns.get(source) {
            return Ok(regex.clone());
        }
        let regex = perl_regex(&format!("^{source}$")).map_err(|err| SchemaError::Pattern {
            location: location.to_owned(),
            pattern: source.to_owned(),
            source: Box::new(err),
        })?;
        self.patterns.insert(source.to_owned(), regex.clone());
        Ok(regex)
    }
}

// ---------------------------------------------------------------------------
// Validation

/// A form value, or the one-element array a form value for an `array`
/// parameter becomes.
#[derive(Debug, Clone)]
enum Value {
    Str(String),
    List(Vec<String>),
}

impl Value {
    fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            Value::List(_) => None,
        }
    }
}

/// PVE's `errors` hash: path → message.
#[derive(Default)]
struct Errors(BTreeMap<String, String>);

impl Errors {
    /// `add_error`: a second message for the same path is appended after a
    /// literal backslash-n (Perl's single-quoted `'\n'`).
    fn add(&mut self, path: &str, message: impl Into<String>) {
        let path = if path.is_empty() { "_root" } else { path };
        let message = message.into();
        self.0
            .entry(path.to_owned())
            .and_modify(|old| {
                old.push_str("\\n");
                old.push_str(&message);
            })
            .or_insert(message);
    }
}

fn join_path(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

struct Checker<'a> {
    formats: &'a BTreeMap<String, NamedFormat>,
}

impl Checker<'_> {
    /// `check_object`.
    fn check_object(
        &self,
        path: &str,
        schema: &dyn Properties,
        value: &mut BTreeMap<String, Value>,
        additional_properties: Option<bool>,
        errors: &mut Errors,
    ) {
        // Aliased keys are renamed to their target before anything else.
        let keys: Vec<String> = value.keys().cloned().collect();
        for key in keys {
            let Some(alias) = schema.property(&key).and_then(|p| p.alias.as_deref()) else {
                continue;
            };
            if value.contains_key(alias) {
                errors.add(
                    &join_path(path, &key),
                    format!("cannot set both '{key}' and its alias target '{alias}'"),
                );
            } else if let Some(moved) = value.remove(&key) {
                value.insert(alias.to_owned(), moved);
            }
        }

        for (key, property) in schema.keys_for(value) {
            let instance_type = instance_type(property, value);
            self.check_prop(
                value.get(&*key),
                property,
                &join_path(path, &key),
                errors,
                instance_type,
            );
        }

        for key in value.keys() {
            let key_path = join_path(path, key);
            if let Some(property) = schema.property(key) {
                if let Some(required) = &property.requires
                    && !value.contains_key(required)
                {
                    errors.add(
                        &join_path(path, required),
                        format!("missing property required by '{key_path}'"),
                    );
                }
                let matched = match &property.one_of {
                    None => true,
                    Some(alternatives) => {
                        let instance_type = instance_type(property, value);
                        alternatives.iter().any(|alt| match &alt.instance_types {
                            None => true,
                            Some(types) => {
                                instance_type.is_some_and(|t| types.iter().any(|x| x == t))
                            }
                        })
                    }
                };
                if matched {
                    continue;
                }
            }
            if additional_properties == Some(false) {
                errors.add(&key_path, NOT_IN_SCHEMA);
            }
        }
    }

    /// `check_prop`: the first failing check of a value, in PVE's order.
    fn check_prop(
        &self,
        value: Option<&Value>,
        schema: &Property,
        path: &str,
        errors: &mut Errors,
        instance_type: Option<&str>,
    ) {
        let mut optional_for_type = false;
        if let Some(alternatives) = &schema.one_of {
            if schema.type_property.is_some() {
                optional_for_type = true;
                for inner in alternatives {
                    let Some(instance_type) = instance_type else {
                        break;
                    };
                    let Some(types) = &inner.instance_types else {
                        errors.add(path, "missing 'instance-types' in oneOf alternative");
                        return;
                    };
                    if !types.iter().any(|t| t == instance_type) {
                        continue;
                    }
                    optional_for_type = inner.optional;
                    self.check_prop(value, inner, path, errors, None);
                }
            } else {
                let mut collected = Errors::default();
                let mut valid = false;
                for (i, inner) in alternatives.iter().enumerate() {
                    let mut inner_errors = Errors::default();
                    self.check_prop(
                        value,
                        inner,
                        &format!("{path}.oneOf[{i}]"),
                        &mut inner_errors,
                        None,
                    );
                    if inner_errors.0.is_empty() {
                        valid = true;
                        break;
                    }
                    for (p, m) in inner_errors.0 {
                        collected.add(&p, m);
                    }
                }
                if !valid {
                    for (p, m) in collected.0 {
                        errors.add(&p, m);
                    }
                }
            }
        } else if let Some(instance_type) = instance_type {
            let Some(types) = &schema.instance_types else {
                errors.add(path, "missing 'instance-types'");
                return;
            };
            if !types.iter().any(|t| t == instance_type) {
                optional_for_type = true;
            }
        }

        if schema.alias.is_some() {
            return;
        }
        let Some(value) = value else {
            if schema.kind.as_deref() != Some("null") && !schema.optional && !optional_for_type {
                errors.add(path, "property is missing and it is not optional");
            }
            return;
        };
        if !check_type(path, schema.kind.as_deref(), value, errors) {
            return;
        }
        let value = match value {
            Value::List(elements) => {
                if let Some(items) = &schema.items {
                    for (i, element) in elements.iter().enumerate() {
                        let element = Value::Str(element.clone());
                        self.check_prop(
                            Some(&element),
                            items,
                            &format!("{path}[{i}]"),
                            errors,
                            None,
                        );
                    }
                }
                return;
            }
            Value::Str(value) => value.as_str(),
        };

        if let Some(format) = &schema.format
            && let Err(message) = self.check_format(format, value, path)
        {
            errors.add(path, format!("invalid format - {message}"));
            return;
        }
        if let Some(pattern) = &schema.pattern
            && !pattern.is_match(value)
        {
            errors.add(path, "value does not match the regex pattern");
            return;
        }
        let length = value.chars().count();
        if let Some(max) = schema.max_length
            && length > max
        {
            errors.add(path, format!("value may only be {max} characters long"));
            return;
        }
        if let Some(min) = schema.min_length
            && length < min
        {
            errors.add(
                path,
                format!("value must be at least {min} characters long"),
            );
            return;
        }
        if is_number(value) {
            let number = perl_numify(value);
            if let Some(max) = &schema.maximum
                && number > max.value
            {
                errors.add(
                    path,
                    format!("value must have a maximum value of {}", max.text),
                );
                return;
            }
            if let Some(min) = &schema.minimum
                && number < min.value
            {
                errors.add(
                    path,
                    format!("value must have a minimum value of {}", min.text),
                );
                return;
            }
        }
        if let Some(allowed) = &schema.enumeration
            && !allowed.iter().any(|a| a == value)
        {
            errors.add(
                path,
                format!(
                    "value '{value}' does not have a value in the enumeration '{}'",
                    allowed.join(", ")
                ),
            );
        }
    }

    /// `check_format`; the error is the message Perl dies with.
    fn check_format(&self, format: &Format, value: &str, path: &str) -> Result<(), String> {
        let (name, base, variant) = match format {
            Format::Inline(keys) => return self.parse_property_string(keys, value, path),
            Format::Named {
                name,
                base,
                variant,
            } => (name, base, *variant),
        };
        if name == "regex" {
            return Ok(());
        }
        let Some(registered) = self.formats.get(base) else {
            // Not in the formats file: registered by a PVE version the file
            // does not describe. Accepted; see unchecked_formats().
            return Ok(());
        };
        match (registered, variant) {
            (NamedFormat::NotPorted, _) => Ok(()),
            (NamedFormat::PropertyString(_), Variant::List) => {
                Err("'-list' format must have code ref, not hash\n".to_owned())
            }
            (NamedFormat::PropertyString(_), Variant::Opt) => {
                Err("'-opt' format must have code ref, not hash\n".to_owned())
            }
            (NamedFormat::PropertyString(keys), Variant::Single) => {
                self.parse_property_string(keys, value, path)
            }
            (NamedFormat::Code(validate), Variant::Single) => validate(value),
            (NamedFormat::Code(validate), Variant::Opt) => {
                if perl_true(value) {
                    validate(value)
                } else {
                    Ok(())
                }
            }
            (NamedFormat::Code(validate), Variant::List) => {
                split_list(value).into_iter().try_for_each(validate)
            }
        }
    }

    /// `parse_property_string`: `key=value,...`, a bare value for the
    /// `default_key`, aliases, then `check_object` on the result.
    fn parse_property_string(
        &self,
        format: &BTreeMap<String, Property>,
        data: &str,
        path: &str,
    ) -> Result<(), String> {
        static KEY_VALUE: LazyLock<Regex> = LazyLock::new(|| builtin(r"^([^=]+)=(.+)$"));
        let mut result: BTreeMap<String, Value> = BTreeMap::new();
        let mut default_key: Option<&str> = None;
        for part in data.split(',') {
            if part.chars().all(char::is_whitespace) {
                continue;
            }
            if let Some(captures) = KEY_VALUE.captures(part) {
                let mut key = captures[1].to_owned();
                let mut value = captures[2].to_owned();
                if result.contains_key(&key) {
                    return Err(format!(
                        "duplicate key in comma-separated list property: {key}\n"
                    ));
                }
                let mut schema = format.get(&key);
                if let Some(alias) = schema.and_then(|s| s.alias.as_deref()) {
                    if let Some(key_alias) = schema.and_then(|s| s.key_alias.as_deref()) {
                        if result.contains_key(key_alias) {
                            return Err(format!("key alias '{key_alias}' is already defined\n"));
                        }
                        result.insert(key_alias.to_owned(), Value::Str(key.clone()));
                    }
                    key = alias.to_owned();
                    schema = format.get(&key);
                    if result.contains_key(&key) {
                        return Err(format!("key '{key}' is already defined (via alias)\n"));
                    }
                    if schema.is_none() {
                        return Err(format!(
                            "invalid key in comma-separated list property: {key}\n"
                        ));
                    }
                }
                // An unknown key is kept: Perl's `$schema->{alias}` has
                // autovivified `$schema`, so the "invalid key" check above
                // passes and check_object reports the key instead.
                if schema.is_some_and(|s| s.kind.as_deref() == Some("boolean"))
                    && let Some(parsed) = parse_boolean(&value)
                {
                    value = parsed.to_owned();
                }
                result.insert(key, Value::Str(value));
            } else if !part.contains('=') {
                if let Some(key) = default_key {
                    return Err(format!(
                        "duplicate key in comma-separated list property: {key}\n"
                    ));
                }
                let Some((key, schema)) = format.iter().find(|(_, s)| s.default_key) else {
                    return Err(
                        "value without key, but schema does not define a default key\n".to_owned(),
                    );
                };
                default_key = Some(key.as_str());
                if result
                    .get(key)
                    .and_then(Value::as_str)
                    .is_some_and(perl_true)
                {
                    return Err(format!(
                        "duplicate key in comma-separated list property: {key}\n"
                    ));
                }
                let mut value = part.to_owned();
                if schema.kind.as_deref() == Some("boolean")
                    && let Some(parsed) = parse_boolean(&value)
                {
                    value = parsed.to_owned();
                }
                result.insert(key.clone(), Value::Str(value));
            } else {
                return Err("missing key in comma-separated list property\n".to_owned());
            }
        }

        let mut errors = Errors::default();
        self.check_object(path, format, &mut result, Some(false), &mut errors);
        if errors.0.is_empty() {
            return Ok(());
        }
        // A PVE::Exception stringified: its message, then "key: error" lines.
        let mut message = "format error\n".to_owned();
        for (key, error) in errors.0 {
            message.push_str(&format!("{key}: {error}\n"));
        }
        Err(message)
    }
}

/// The instance type `check_object` passes for a property with a
/// `type-property`: the value of that other property.
fn instance_type<'v>(property: &Property, value: &'v BTreeMap<String, Value>) -> Option<&'v str> {
    let type_property = property.type_property.as_deref()?;
    value.get(type_property).and_then(Value::as_str)
}

/// `check_type` for form values.
fn check_type(path: &str, kind: Option<&str>, value: &Value, errors: &mut Errors) -> bool {
    let Some(kind) = kind else { return true };
    let failed = match (kind, value) {
        ("any", _) => None,
        ("null", _) => Some(format!("type check ('{kind}') failed - value is not null")),
        ("array", Value::List(_)) => None,
        ("array" | "object" | "coderef", _) => Some(format!("type check ('{kind}') failed")),
        (_, Value::List(_)) => Some(format!("type check ('{kind}') failed - got ARRAY")),
        ("boolean", Value::Str(v)) if v != "1" && v != "0" => {
            Some(format!("type check ('{kind}') failed - got '{v}'"))
        }
        ("integer", Value::Str(v)) if !is_integer(v) => {
            Some(format!("type check ('{kind}') failed - got '{v}'"))
        }
        ("number", Value::Str(v)) if !is_number(v) => {
            Some(format!("type check ('{kind}') failed - got '{v}'"))
        }
        _ => None,
    };
    match failed {
        Some(message) => {
            errors.add(path, message);
            false
        }
        None => true,
    }
}

// ---------------------------------------------------------------------------
// Perl's semantics

/// Translates a Perl regex to Rust's `regex` syntax and compiles it:
/// stringified `qr//` groups `(?^flags:` become `(?flags:`, `{,n}` becomes
/// `{0,n}`, `\0` becomes `\x00`, an atomic group `(?>` becomes `(?:` (the
/// one in the schema cannot backtrack into a different match), `[` inside a
/// class is escaped, and `$` (end, or before a final newline) becomes
/// `\n?\z`.
fn perl_regex(perl: &str) -> Result<Regex, regex::Error> {
    let mut out = String::with_capacity(perl.len() + 16);
    let chars: Vec<char> = perl.chars().collect();
    let mut i = 0;
    let mut in_class = false;
    let mut class_start = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\\' if i + 1 < chars.len() => {
                let next = chars[i + 1];
                if next == '0' && !chars.get(i + 2).is_some_and(char::is_ascii_digit) {
                    out.push_str(r"\x00");
                } else {
                    out.push('\\');
                    out.push(next);
                }
                i += 2;
                continue;
            }
            _ if in_class => {
                let first = i == class_start || (i == class_start + 1 && chars[class_start] == '^');
                match c {
                    ']' if !first => in_class = false,
                    '[' if chars.get(i + 1) == Some(&':') => {}
                    '[' => {
                        out.push_str(r"\[");
                        i += 1;
                        continue;
                    }
                    '&' | '-' | '~' if chars.get(i + 1) == Some(&c) => {
                        out.push(c);
                        out.push('\\');
                        out.push(c);
                        i += 2;
                        continue;
                    }
                    _ => {}
                }
                out.push(c);
            }
            '[' => {
                in_class = true;
                class_start = i + 1;
                out.push(c);
            }
            '(' if chars.get(i + 1) == Some(&'?') && chars.get(i + 2) == Some(&'^') => {
                out.push_str("(?");
                i += 3;
                continue;
            }
            '(' if chars.get(i + 1) == Some(&'?') && chars.get(i + 2) == Some(&'>') => {
                out.push_str("(?:");
                i += 3;
                continue;
            }
            '{' if chars.get(i + 1) == Some(&',') => {
                out.push_str("{0");
            }
            '$' => out.push_str(r"\n?\z"),
            _ => out.push(c),
        }
        i += 1;
    }
    // A bounded repeat of a Unicode class (`[\w\d\s]{0,256}`, an SDN
    // alias) outgrows the default 10 MiB limit.
    regex::RegexBuilder::new(&out).size_limit(64 << 20).build()
}

/// A regex ported from PVE's Perl source.
fn builtin(perl: &str) -> Regex {
    perl_regex(perl).expect("a regex ported from PVE compiles")
}

/// A static regex ported from PVE's Perl source, compiled on first use.
macro_rules! perl_re {
    ($perl:expr) => {{
        static RE: LazyLock<Regex> = LazyLock::new(|| builtin(&$perl));
        &*RE
    }};
}

/// Perl truthiness of a string: all but `""` and `"0"`.
fn perl_true(value: &str) -> bool {
    !value.is_empty() && value != "0"
}

/// Perl truthiness of a JSON scalar in the schema (`"optional": "1"` occurs).
fn json_true(value: &Json) -> bool {
    match value {
        Json::Null => false,
        Json::Bool(b) => *b,
        Json::Number(n) => n.as_f64().is_some_and(|n| n != 0.0),
        Json::String(s) => perl_true(s),
        Json::Array(_) | Json::Object(_) => true,
    }
}

/// A JSON scalar as Perl would print it.
fn perl_string(value: &Json) -> Option<String> {
    match value {
        Json::String(s) => Some(s.clone()),
        Json::Number(n) => Some(n.to_string()),
        Json::Bool(b) => Some(if *b { "1" } else { "" }.to_owned()),
        _ => None,
    }
}

/// `PVE::JSONSchema::is_number`.
fn is_number(value: &str) -> bool {
    perl_re!(r"^[+-]?(\d+\.\d+|\d+\.|\.\d+|\d+)([eE][+-]?\d+)?$").is_match(value)
}

/// `PVE::JSONSchema::is_integer`.
fn is_integer(value: &str) -> bool {
    perl_re!(r"^[+-]?\d+$").is_match(value)
}

/// The number Perl reads from a string that passed [`is_number`] (a non-ASCII
/// digit reads as 0, as in Perl).
fn perl_numify(value: &str) -> f64 {
    value.trim_end_matches('\n').parse().unwrap_or(0.0)
}

/// `PVE::JSONSchema::parse_boolean`.
fn parse_boolean(value: &str) -> Option<&'static str> {
    if perl_re!(r"(?i)^(1|on|yes|true)$").is_match(value) {
        Some("1")
    } else if perl_re!(r"(?i)^(0|off|no|false)$").is_match(value) {
        Some("0")
    } else {
        None
    }
}

/// `PVE::ParseUtils::split_list`: on NUL if there is one, else on `,`, `;`
/// and whitespace; Perl's `split` drops trailing empty fields.
fn split_list(list: &str) -> Vec<&str> {
    if list.contains('\0') {
        return perl_split(list, '\0');
    }
    list.split(|c: char| c == ',' || c == ';' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Perl's `split(/,/, $text)`: trailing empty fields are dropped (so `""`
/// gives no field at all).
fn perl_split(text: &str, separator: char) -> Vec<&str> {
    let mut fields: Vec<&str> = text.split(separator).collect();
    while fields.last() == Some(&"") {
        fields.pop();
    }
    fields
}

// ---------------------------------------------------------------------------
// Named formats implemented in Perl, ported. Each names its source (pve-common
// f665029e, qemu-server e6352be6, pve-container 94f55852, pve-storage
// 0c56bad8, pve-access-control 5ccd07d9) and dies with the same message.

const IPV4_OCTET: &str = r"(?:25[0-5]|(?:2[0-4]|1[0-9]|[1-9])?[0-9])";
static IPV4_RE: LazyLock<String> =
    LazyLock::new(|| format!(r"(?:(?:{IPV4_OCTET}\.){{3}}{IPV4_OCTET})"));
/// pve-common `PVE::ParseUtils::$IPV6RE`.
static IPV6_RE: LazyLock<String> = LazyLock::new(|| {
    let h16 = "(?:[0-9a-fA-F]{1,4})";
    let ls32 = format!("(?:(?:{}|{h16}:{h16}))", *IPV4_RE);
    let alternatives = [
        format!("(?:(?:(?:{h16}:){{6}}){ls32})"),
        format!("(?:(?:::(?:{h16}:){{5}}){ls32})"),
        format!("(?:(?:(?:{h16})?::(?:{h16}:){{4}}){ls32})"),
        format!("(?:(?:(?:(?:{h16}:){{0,1}}{h16})?::(?:{h16}:){{3}}){ls32})"),
        format!("(?:(?:(?:(?:{h16}:){{0,2}}{h16})?::(?:{h16}:){{2}}){ls32})"),
        format!("(?:(?:(?:(?:{h16}:){{0,3}}{h16})?::(?:{h16}:){{1}}){ls32})"),
        format!("(?:(?:(?:(?:{h16}:){{0,4}}{h16})?::){ls32})"),
        format!("(?:(?:(?:(?:{h16}:){{0,5}}{h16})?::){h16})"),
        format!("(?:(?:(?:(?:{h16}:){{0,6}}{h16})?::))"),
    ];
    format!("(?:{})", alternatives.join("|"))
});

fn die(message: String) -> Result<(), String> {
    Err(message + "\n")
}

fn check(ok: bool, message: impl FnOnce() -> String) -> Result<(), String> {
    if ok { Ok(()) } else { die(message()) }
}

/// The named formats implemented in Perl that kiln ports, with their
/// validators; each names its source and dies with the same message.
const CODE_FORMATS: &[(&str, CodeValidator)] = &[
    ("string", |_| Ok(())),
    ("urlencoded", |v| {
        check(perl_re!(r"^[-%a-zA-Z0-9_.!~*'()]*$").is_match(v), || {
            format!("invalid urlencoded string: {v}")
        })
    }),
    ("pve-configid", |v| {
        check(perl_re!(r"(?i)^[a-z][a-z0-9_-]+$").is_match(v), || {
            format!("invalid configuration ID '{v}'")
        })
    }),
    ("pve-storage-id", storage_id),
    ("pve-bridge-id", |v| {
        check(perl_re!(r"^[-_.\w\d]+$").is_match(v), || {
            format!("invalid bridge ID '{v}'")
        })
    }),
    ("pve-vmid", |v| {
        check(perl_re!(r"^[1-9][0-9]{2,8}$").is_match(v), || {
            "value does not look like a valid VM ID".to_owned()
        })
    }),
    ("pve-node", |v| {
        check(
            perl_re!(r"^([a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?)$").is_match(v),
            || "value does not look like a valid node name".to_owned(),
        )
    }),
    ("storage-pair", |v| id_pair(v, storage_id)),
    ("bridge-pair", |v| {
        id_pair(v, |id| {
            check(perl_re!(r"^[-_.\w\d]+$").is_match(id), || {
                format!("invalid bridge ID '{id}'")
            })
        })
    }),
    ("mac-addr", |v| {
        check(
            perl_re!(r"(?i)^[a-f0-9][02468ace](?::[a-f0-9]{2}){5}$").is_match(v),
            || "value does not look like a valid unicast MAC address".to_owned(),
        )
    }),
    ("ipv4", |v| {
        check(is_ipv4(v), || {
            "value does not look like a valid IPv4 address".to_owned()
        })
    }),
    ("ipv6", |v| {
        check(is_ipv6(v), || {
            "value does not look like a valid IPv6 address".to_owned()
        })
    }),
    ("ip", |v| {
        check(is_ip(v), || {
            "value does not look like a valid IP address".to_owned()
        })
    }),
    ("ldap-simple-attr", |v| {
        check(perl_re!(r"^[a-zA-Z0-9]+$").is_match(v), || {
            format!("value '{v}' does not look like a simple ldap attribute name")
        })
    }),
    ("ipv4mask", |v| {
        check(is_ipv4_mask(v), || {
            "value does not look like a valid IP netmask".to_owned()
        })
    }),
    ("CIDRv6", |v| {
        check(is_cidr_v6(v), || {
            "value does not look like a valid IPv6 CIDR network".to_owned()
        })
    }),
    ("CIDRv4", |v| {
        check(is_cidr_v4(v), || {
            "value does not look like a valid IPv4 CIDR network".to_owned()
        })
    }),
    ("CIDR", |v| {
        check(is_cidr_v4(v) || is_cidr_v6(v), || {
            "value does not look like a valid CIDR network".to_owned()
        })
    }),
    ("pve-ipv4-config", |v| {
        check(
            perl_re!(r"^(?:dhcp|manual)$").is_match(v) || is_cidr_v4(v),
            || "value does not look like a valid ipv4 network configuration".to_owned(),
        )
    }),
    ("pve-ipv6-config", |v| {
        check(
            perl_re!(r"^(?:auto|dhcp|manual)$").is_match(v) || is_cidr_v6(v),
            || "value does not look like a valid ipv6 network configuration".to_owned(),
        )
    }),
    ("email", |v| {
        check(is_email(v), || {
            "value does not look like a valid email address".to_owned()
        })
    }),
    ("email-or-username", |v| {
        let user = perl_re!(r"^[\w\+\-\~]+(\.[\w\+\-\~]+)*$");
        check(is_email(v) || user.is_match(v), || {
            "value does not look like a valid email address or user name".to_owned()
        })
    }),
    ("dns-name", |v| {
        check(is_dns_name(v), || {
            "value does not look like a valid DNS name".to_owned()
        })
    }),
    ("pve-iface", |v| {
        check(is_iface(v), || {
            format!("invalid network interface name '{v}'")
        })
    }),
    ("pve-vlan-id-or-range", vlan_id_or_range),
    ("address", |v| {
        check(is_ip(v) || is_dns_name(v), || {
            format!("value does not look like a valid address: {v}")
        })
    }),
    ("disk-size", |v| {
        check(
            perl_re!(r"^(\d+(\.\d+)?)([KMGT](?:iB)?)?$").is_match(v),
            || format!("value does not look like a valid disk size: {v}"),
        )
    }),
    ("pve-startup-order", startup_order),
    ("pve-tag", |v| {
        check(
            perl_re!(r"(?i)^[a-z0-9_][a-z0-9_\-\+\.]*$").is_match(v),
            || "invalid characters in tag".to_owned(),
        )
    }),
    ("pve-task-status-type", |v| {
        check(
            perl_re!(r"(?i)^(ok|error|warning|unknown)$").is_match(v),
            || format!("invalid status '{v}'"),
        )
    }),
    // pve-storage Plugin.pm verify_content: 'import', or a content type of
    // the dir plugin ("dir includes all other types").
    ("pve-storage-content", |v| {
        const DIR: &[&str] = &[
            "images", "rootdir", "vztmpl", "iso", "backup", "snippets", "none", "import",
        ];
        check(DIR.contains(&v), || format!("invalid content type '{v}'"))
    }),
    ("pve-storage-options", |v| {
        check(perl_re!(r"^\S+$").is_match(v), || {
            format!("invalid options '{v}'")
        })
    }),
    ("pve-volume-id", volume_id),
    // qemu-server QemuServer.pm verify_volume_id_or_absolute_path.
    ("pve-volume-id-or-absolute-path", volume_id_or_absolute_path),
    ("pve-volume-id-or-qm-path", |v| {
        if v == "none" || v == "cdrom" {
            Ok(())
        } else {
            volume_id_or_absolute_path(v)
        }
    }),
    // qemu-server Drive.pm verify_bootdisk / is_valid_drivename.
    ("pve-qm-bootdisk", |v| {
        check(is_qemu_drive(v), || format!("invalid boot disk '{v}'"))
    }),
    // qemu-server QemuServer.pm verify_bootdev.
    ("pve-qm-bootdev", |v| {
        let special = v.starts_with("efidisk") || v.starts_with("tpmstate");
        let ok = (is_qemu_drive(v) && !special)
            || ["net", "usb", "hostpci"].iter().any(|p| is_indexed(v, p));
        check(ok, || format!("invalid boot device '{v}'"))
    }),
    // qemu-server QemuServer.pm parse_hotplug_features.
    ("pve-hotplug-features", |v| {
        if v == "0" || v == "1" {
            return Ok(());
        }
        for feature in split_list(v) {
            let ok = perl_re!(r"^(network|disk|cpu|memory|usb|cloudinit)$").is_match(feature);
            check(ok, || format!("invalid hotplug feature '{feature}'"))?;
        }
        Ok(())
    }),
    // qemu-server QemuServer.pm pve_verify_cpuset over pve-common CpuSet.pm.
    ("pve-cpuset", |v| {
        let range = perl_re!(r"^\s*(\d+)(?:-(\d+))?\s*$");
        let ok = perl_split(v, ',')
            .into_iter()
            .all(|part| match range.captures(part) {
                None => false,
                Some(c) => c
                    .get(2)
                    .is_none_or(|to| perl_numify(to.as_str()) >= perl_numify(&c[1])),
            });
        check(ok, || "unable to parse cpuset option".to_owned())
    }),
    // qemu-server CPUConfig.pm parse_phys_bits.
    ("pve-phys-bits", |v| {
        let ok = perl_re!(r"^(host|\d{1,2})$").is_match(v)
            && (v.starts_with('h') || (8.0..=64.0).contains(&perl_numify(v)));
        check(ok, || {
            "value must be an integer between 8 and 64 or 'host'".to_owned()
        })
    }),
    // pve-access-control AccessControl.pm verify_poolname.
    ("pve-poolid", |v| {
        check(perl_split(v, '/').len() <= 3, || {
            format!("pool name '{v}' nested too deeply (max levels = 3)")
        })?;
        check(
            perl_re!(r"^[A-Za-z0-9\.\-_]+(?:/[A-Za-z0-9\.\-_]+){0,2}$").is_match(v),
            || format!("pool name '{v}' contains invalid characters"),
        )
    }),
    // pve-container LXC/Config.pm verify_lxc_mp_string.
    ("pve-lxc-mp-string", |v| {
        let bad = perl_re!(r"/\.\.?/").is_match(v)
            || perl_re!(r"/\.\.?$").is_match(v)
            || perl_re!(r"^\.\./").is_match(v);
        check(!bad, || format!("{v} contains illegal character sequences"))
    }),
    // pve-container LXC/Config.pm verify_lxc_dev_string.
    ("pve-lxc-dev-string", |v| {
        let bad = perl_re!(r"/\.\.?(?:/|$)").is_match(v) || !v.starts_with("/dev/");
        check(!bad, || format!("{v} is not a valid device path"))
    }),
    // pve-container LXC/Config.pm verify_ip_with_ll_iface.
    ("lxc-ip-with-ll-iface", |v| {
        if let Some(c) = perl_re!(r"^(fe80:[^%]+)%(.*)$").captures(v)
            && is_ip(&c[1])
            && is_iface(&c[2])
        {
            return Ok(());
        }
        check(is_ip(v), || {
            "value does not look like a valid IP address".to_owned()
        })
    }),
];

fn storage_id(id: &str) -> Result<(), String> {
    // pve-common JSONSchema.pm parse_id.
    check(id.chars().count() >= 2, || {
        format!("storage ID '{id}' cannot be shorter than 2 characters")
    })?;
    check(
        perl_re!(r"(?i)^[a-z][a-z0-9\-\_\.]*[a-z0-9]$").is_match(id),
        || format!("storage ID '{id}' contains illegal characters"),
    )
}

/// pve-common JSONSchema.pm `$verify_idpair` over `parse_idmap`, for one
/// list entry: `1`, `SOURCE:TARGET` or a default `TARGET`.
fn id_pair(entry: &str, id: CodeValidator) -> Result<(), String> {
    if !perl_true(entry) || entry == "1" {
        return Ok(());
    }
    let result = match perl_re!(r"^([^:]+):([^:]+)$").captures(entry) {
        Some(c) => id(&c[1]).and_then(|()| id(&c[2])),
        None => id(entry),
    };
    result.map_err(|inner| format!("entry '{entry}' contains invalid ID - {inner}\n\n"))
}

fn is_ipv4(v: &str) -> bool {
    perl_re!(format!("^(?:{})$", *IPV4_RE)).is_match(v)
}

fn is_ipv6(v: &str) -> bool {
    perl_re!(format!("^(?:{})$", *IPV6_RE)).is_match(v)
}

fn is_ip(v: &str) -> bool {
    is_ipv4(v) || is_ipv6(v)
}

fn is_ipv4_mask(v: &str) -> bool {
    let Some(octets) = v
        .split('.')
        .map(|o| o.parse::<u8>().ok().filter(|_| !o.starts_with('+')))
        .collect::<Option<Vec<u8>>>()
    else {
        return false;
    };
    let [a, b, c, d] = octets[..] else {
        return false;
    };
    let mask = u32::from_be_bytes([a, b, c, d]);
    // The table in JSONSchema.pm lists exactly the 33 prefix masks, each
    // written without leading zeros.
    mask.leading_ones() + mask.trailing_zeros() == 32
        && v == std::net::Ipv4Addr::from(mask).to_string()
}

fn cidr_prefix(v: &str, address: &Regex) -> Option<u64> {
    let (addr, prefix) = v.rsplit_once('/')?;
    let prefix = prefix.strip_suffix('\n').unwrap_or(prefix);
    if !address.is_match(addr) || prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(prefix.parse().unwrap_or(u64::MAX))
}

fn is_cidr_v4(v: &str) -> bool {
    let address = perl_re!(format!(r"^(?:{})\z", *IPV4_RE));
    cidr_prefix(v, address).is_some_and(|p| p > 7 && p <= 32)
}

fn is_cidr_v6(v: &str) -> bool {
    let address = perl_re!(format!(r"^(?:{})\z", *IPV6_RE));
    cidr_prefix(v, address).is_some_and(|p| p > 7 && p <= 128)
}

fn is_email(v: &str) -> bool {
    const USER: &str = r"[\w\+\-\~]+(\.[\w\+\-\~]+)*";
    perl_re!(format!(r"^{USER}@[a-zA-Z0-9\-]+(\.[a-zA-Z0-9\-]+)*$")).is_match(v)
}

fn is_dns_name(v: &str) -> bool {
    const LABEL: &str = r"([a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?)";
    perl_re!(format!(r"^({LABEL}\.)*{LABEL}$")).is_match(v)
}

fn is_iface(v: &str) -> bool {
    perl_re!(r"(?i)^[a-z][a-z0-9_]{1,20}([:\.]\d+)?$").is_match(v)
}

/// `name` is `prefix` plus an index the API defines (`net0`..`net31`).
fn is_indexed(name: &str, prefix: &str) -> bool {
    let count = INDEXED_PARAMETERS
        .iter()
        .find(|(p, _)| *p == prefix)
        .map(|(_, c)| *c);
    matches!((split_index(name), count), (Some((p, i)), Some(c)) if p == prefix && i < c)
}

/// qemu-server Drive.pm `is_valid_drivename`: a disk slot, not `unusedN`.
fn is_qemu_drive(v: &str) -> bool {
    v == "efidisk0"
        || v == "tpmstate0"
        || ["ide", "sata", "scsi", "virtio"]
            .iter()
            .any(|p| is_indexed(v, p))
}

fn vlan_id_or_range(v: &str) -> Result<(), String> {
    let Some(c) = perl_re!(r"^(\d+)(?:-(\d+))?$").captures(v) else {
        return die(format!("invalid VLAN configuration '{v}'"));
    };
    let valid_tag = |tag: &str| {
        let number = perl_numify(tag);
        check((2.0..=4094.0).contains(&number), || {
            format!("invalid VLAN tag '{tag}'")
        })
    };
    valid_tag(&c[1])?;
    if let Some(end) = c.get(2).map(|m| m.as_str()).filter(|e| perl_true(e)) {
        valid_tag(end)?;
        check(perl_numify(&c[1]) < perl_numify(end), || {
            format!("VLAN range must go from lower to higher tag '{v}'")
        })?;
    }
    Ok(())
}

fn startup_order(v: &str) -> Result<(), String> {
    // pve-common JSONSchema.pm pve_parse_startup_order.
    let part_ok = |p: &str| {
        p.chars().all(char::is_whitespace)
            || perl_re!(r"^(order=)?(\d+)$").is_match(p)
            || perl_re!(r"^up=(\d+)$").is_match(p)
            || perl_re!(r"^down=(\d+)$").is_match(p)
    };
    check(
        perl_true(v) && perl_split(v, ',').into_iter().all(part_ok),
        || "unable to parse startup options".to_owned(),
    )
}

fn volume_id(v: &str) -> Result<(), String> {
    check(
        perl_re!(r"(?i)^([a-z][a-z0-9\-\_\.]*[a-z0-9]):(.+)$").is_match(v),
        || format!("unable to parse volume ID '{v}'"),
    )
}

fn volume_id_or_absolute_path(v: &str) -> Result<(), String> {
    if v.starts_with('/') {
        Ok(())
    } else {
        volume_id(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perl_regexes_translate() {
        let cases = [
            (r"(?^i:[a-z]+)", "ABC", true),
            (r"[A-Za-z0-9\-_\s]{,8}", "abc def", true),
            (r"[A-Za-z0-9\-_\s]{,8}", "abcdefghi", false),
            (r"(?^:^((?>[+-]?[\w\-\._=]+,?)+)$)", "+a,-b=c", true),
            (
                r"(?^:(?:\w+=[^\x00-\x08\x10-\x1F\x7F]*)(?:\0\w+=[^\x00-\x08\x10-\x1F\x7F]*)*)",
                "a=b\0c=d",
                true,
            ),
            (r"/dev/parport\d+|/dev/usb/lp\d+", "/dev/parport0junk", true),
            (r"[1-9][0-9]{2,8}", "100\n", true),
            (r"[1-9][0-9]{2,8}", "100\n\n", false),
            (r"[[]x", "[x", true),
        ];
        for (pattern, value, expected) in cases {
            let regex = perl_regex(&format!("^{pattern}$")).unwrap();
            assert_eq!(regex.is_match(value), expected, "{pattern} on {value:?}");
        }
    }

    #[test]
    fn every_ported_format_compiles_and_rejects_garbage() {
        for (name, validate) in CODE_FORMATS {
            let accepted = validate("\u{1}bad value\u{1}").is_ok();
            assert_eq!(
                accepted,
                matches!(*name, "string" | "pve-lxc-mp-string"),
                "{name}"
            );
        }
    }

    #[test]
    fn split_list_is_perls() {
        assert_eq!(split_list(" a,b;c  d,"), ["a", "b", "c", "d"]);
        assert_eq!(split_list("a\0\0b\0"), ["a", "", "b"]);
        assert!(split_list("").is_empty());
    }

    #[test]
    fn indexed_names_are_canonical() {
        assert_eq!(split_index("scsi30"), Some(("scsi", 30)));
        assert_eq!(split_index("scsi0"), Some(("scsi", 0)));
        assert_eq!(split_index("scsi01"), None);
        assert_eq!(split_index("efidisk0"), Some(("efidisk", 0)));
        assert!(is_qemu_drive("scsi30") && !is_qemu_drive("scsi31") && !is_qemu_drive("unused0"));
    }

    #[test]
    fn network_formats() {
        assert!(
            is_ipv6("fe80::1")
                && is_ipv6("::")
                && is_ipv6("2001:db8::10.0.0.1")
                && !is_ipv6("1::2::3")
        );
        assert!(
            is_cidr_v4("10.0.0.5/24") && !is_cidr_v4("10.0.0.5/7") && !is_cidr_v4("10.0.0.256/24")
        );
        assert!(is_cidr_v6("fd00::1/64") && !is_cidr_v6("fd00::1/129"));
        assert!(
            is_ipv4_mask("255.255.255.0")
                && is_ipv4_mask("0.0.0.0")
                && !is_ipv4_mask("255.0.255.0")
        );
        assert!(!is_ipv4_mask("255.255.255.00"));
    }
}
