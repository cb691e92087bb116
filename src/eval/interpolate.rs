//! `${option.path}` interpolation inside string values.
//!
//! After merging, every string that contains `${` is a template. A
//! reference names another option by its dotted path (quote a segment that
//! contains dots: `${sysctl."net.ipv4.ip_forward"}`); its value must be a
//! string, number or boolean, and may itself be a template. `$${` writes a
//! literal `${`. Cycles are reported with the whole chain.

use std::collections::HashMap;

use super::merge::from_string;
use super::value::{Value, ValueKind};
use crate::config::Span;
use crate::config::diagnostic::Diagnostic;
use crate::suggest::did_you_mean;

#[derive(Clone, Debug, PartialEq)]
enum Part {
    Text(String),
    Reference(Vec<String>),
}

/// Split a template into text and references.
fn parse(raw: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut rest = raw;
    while let Some(at) = rest.find('$') {
        text.push_str(&rest[..at]);
        rest = &rest[at..];
        if let Some(after) = rest.strip_prefix("$${") {
            text.push_str("${");
            rest = after;
        } else if let Some(after) = rest.strip_prefix("${") {
            let end = after
                .find('}')
                .ok_or_else(|| "unterminated `${`: expected `}`".to_owned())?;
            let path = parse_reference(&after[..end])?;
            if !text.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut text)));
            }
            parts.push(Part::Reference(path));
            rest = &after[end + 1..];
        } else {
            text.push('$');
            rest = &rest[1..];
        }
    }
    text.push_str(rest);
    if !text.is_empty() {
        parts.push(Part::Text(text));
    }
    Ok(parts)
}

fn parse_reference(text: &str) -> Result<Vec<String>, String> {
    let mut segments = Vec::new();
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err("empty reference `${}`: write an option path such as `${hostname}`".to_owned());
    }
    loop {
        let (segment, after) = if let Some(quoted) = rest.strip_prefix('"') {
            let end = quoted
                .find('"')
                .ok_or_else(|| format!("unterminated quote in `${{{text}}}`"))?;
            (quoted[..end].to_owned(), &quoted[end + 1..])
        } else {
            let end = rest.find('.').unwrap_or(rest.len());
            (rest[..end].to_owned(), &rest[end..])
        };
        let bare_ok = segment
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if segment.is_empty() || (!bare_ok && !rest.starts_with('"')) {
            return Err(format!("invalid option path `{text}` in `${{…}}`"));
        }
        segments.push(segment);
        match after.strip_prefix('.') {
            Some(next) => rest = next,
            None if after.is_empty() => return Ok(segments),
            None => return Err(format!("invalid option path `{text}` in `${{…}}`")),
        }
    }
}

fn display_path(path: &[String]) -> String {
    path.iter()
        .map(|s| crate::config::node::quote_key(s))
        .collect::<Vec<_>>()
        .join(".")
}

/// A position in the value tree: map keys and list indices.
#[derive(Clone, Debug)]
enum Step {
    Key(String),
    Index(usize),
}

struct Resolver<'a> {
    root: &'a Value,
    memo: HashMap<Vec<String>, Option<String>>,
    stack: Vec<(Vec<String>, Span)>,
    diagnostics: &'a mut Vec<Diagnostic>,
}

impl Resolver<'_> {
    fn template(&mut self, raw: &str, origin: Span, at: &str) -> Option<String> {
        let parts = match parse(raw) {
            Ok(parts) => parts,
            Err(message) => {
                self.diagnostics.push(
                    Diagnostic::error(
                        "bad-interpolation",
                        format!("invalid interpolation in `{at}`"),
                    )
                    .at(origin, message)
                    .help("write `${option.path}`, or `$${` for a literal `${`"),
                );
                return None;
            }
        };
        let mut out = String::new();
        let mut ok = true;
        for part in parts {
            match part {
                Part::Text(text) => out.push_str(&text),
                Part::Reference(path) => match self.reference(&path, origin, at) {
                    Some(text) => out.push_str(&text),
                    None => ok = false,
                },
            }
        }
        ok.then_some(out)
    }

    fn reference(&mut self, path: &[String], from: Span, at: &str) -> Option<String> {
        if let Some(done) = self.memo.get(path) {
            return done.clone();
        }
        let shown = display_path(path);
        if let Some(start) = self.stack.iter().position(|(p, _)| p == path) {
            let chain: Vec<(Vec<String>, Span)> = self.stack[start..].to_vec();
            let mut names: Vec<String> = chain
                .iter()
                .map(|(p, _)| format!("`{}`", display_path(p)))
                .collect();
            names.push(format!("`{shown}`"));
            let mut diagnostic = Diagnostic::error(
                "interpolation-cycle",
                format!("interpolation cycle: {}", names.join(" → ")),
            )
            .at(
                from,
                format!("`{at}` refers to `{shown}`, closing the cycle"),
            );
            for (i, (p, span)) in chain.iter().enumerate().take(chain.len() - 1) {
                diagnostic = diagnostic.also(
                    *span,
                    format!(
                        "`{}` refers to `{}`",
                        display_path(p),
                        display_path(&chain[i + 1].0)
                    ),
                );
            }
            self.diagnostics.push(
                diagnostic.help("break the loop: at least one of these must be a plain value"),
            );
            return None;
        }
        let Some(target) = self.root.get_path(path) else {
            let candidates = leaf_paths(self.root);
            self.diagnostics.push(
                Diagnostic::error(
                    "bad-interpolation",
                    format!("`${{{shown}}}` refers to an unknown option"),
                )
                .at(from, format!("in `{at}`: there is no option `{shown}`"))
                .help_opt(did_you_mean(&shown, candidates.iter().map(String::as_str))),
            );
            return None;
        };
        let problem = |what: &str| {
            Diagnostic::error(
                "bad-interpolation",
                format!("`${{{shown}}}` cannot be interpolated"),
            )
            .at(from, format!("in `{at}`: `{shown}` {what}"))
            .also(target.origin, "defined here")
        };
        let result = match &target.kind {
            ValueKind::Str(s) => Some(s.clone()),
            ValueKind::Int(i) => Some(i.to_string()),
            ValueKind::Bool(b) => Some(b.to_string()),
            // Already reported where it was defined.
            ValueKind::Invalid => None,
            ValueKind::Null => {
                self.diagnostics.push(
                    Diagnostic::error("bad-interpolation", format!("`${{{shown}}}` has no value"))
                        .at(
                            from,
                            format!("in `{at}`: `{shown}` is not set and has no default"),
                        )
                        .help(format!("set `{shown}`, or stop referring to it")),
                );
                None
            }
            ValueKind::Secret(_) => {
                self.diagnostics.push(problem("is a secret reference").help(
                    "secrets are resolved only at deploy time and never copied into other values",
                ));
                None
            }
            ValueKind::List(_) => {
                self.diagnostics.push(problem(
                    "is a list; only strings, numbers and booleans can be interpolated",
                ));
                None
            }
            ValueKind::Map(_) => {
                self.diagnostics.push(problem(
                    "is a table; only strings, numbers and booleans can be interpolated",
                ));
                None
            }
            ValueKind::Template { raw, ty } => {
                self.stack.push((path.to_vec(), target.origin));
                let resolved = self.template(raw, target.origin, &shown);
                self.stack.pop();
                // Report the referenced option's own type error once, at its definition.
                resolved.and_then(|text| match from_string(ty, &text) {
                    Ok(ValueKind::Secret(_)) | Err(_) => None,
                    Ok(kind) => match kind {
                        ValueKind::Str(s) => Some(s),
                        ValueKind::Int(i) => Some(i.to_string()),
                        _ => Some(text),
                    },
                })
            }
        };
        self.memo.insert(path.to_vec(), result.clone());
        result
    }
}

/// Every option path that holds a scalar, for suggestions.
fn leaf_paths(root: &Value) -> Vec<String> {
    fn walk(value: &Value, prefix: &mut Vec<String>, out: &mut Vec<String>) {
        match &value.kind {
            ValueKind::Map(map) => {
                for (key, child) in map {
                    prefix.push(key.clone());
                    walk(child, prefix, out);
                    prefix.pop();
                }
            }
            ValueKind::List(_) => {}
            _ => out.push(display_path(prefix)),
        }
    }
    let mut out = Vec::new();
    walk(root, &mut Vec::new(), &mut out);
    out
}

/// Every template in the tree, with its position.
fn templates(value: &Value, at: &mut Vec<Step>, out: &mut Vec<(Vec<Step>, String, Span)>) {
    match &value.kind {
        ValueKind::Map(map) => {
            for (key, child) in map {
                at.push(Step::Key(key.clone()));
                templates(child, at, out);
                at.pop();
            }
        }
        ValueKind::List(items) => {
            for (index, child) in items.iter().enumerate() {
                at.push(Step::Index(index));
                templates(child, at, out);
                at.pop();
            }
        }
        ValueKind::Template { raw, .. } => out.push((at.clone(), raw.clone(), value.origin)),
        _ => {}
    }
}

fn step_path(steps: &[Step]) -> String {
    let mut out = String::new();
    for step in steps {
        match step {
            Step::Key(key) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&crate::config::node::quote_key(key));
            }
            Step::Index(index) => out.push_str(&format!("[{index}]")),
        }
    }
    out
}

fn get_mut<'v>(root: &'v mut Value, steps: &[Step]) -> Option<&'v mut Value> {
    let mut value = root;
    for step in steps {
        value = match (step, &mut value.kind) {
            (Step::Key(key), ValueKind::Map(map)) => map.get_mut(key)?,
            (Step::Index(index), ValueKind::List(items)) => items.get_mut(*index)?,
            _ => return None,
        };
    }
    Some(value)
}

/// Replace every template in `root` by its interpolated, validated value.
pub fn interpolate(root: &mut Value, diagnostics: &mut Vec<Diagnostic>) {
    let mut found = Vec::new();
    templates(root, &mut Vec::new(), &mut found);
    if found.is_empty() {
        return;
    }
    let mut results = Vec::with_capacity(found.len());
    {
        let mut resolver = Resolver {
            root,
            memo: HashMap::new(),
            stack: Vec::new(),
            diagnostics,
        };
        for (steps, raw, origin) in &found {
            let shown = step_path(steps);
            // A template reachable by key path may already be resolved (and
            // cycle-checked) through a reference to it.
            let key_path: Option<Vec<String>> = steps
                .iter()
                .map(|s| match s {
                    Step::Key(k) => Some(k.clone()),
                    Step::Index(_) => None,
                })
                .collect();
            let resolved = match key_path {
                Some(path) => {
                    if let Some(done) = resolver.memo.get(&path) {
                        done.clone()
                    } else {
                        resolver.stack.push((path.clone(), *origin));
                        let r = resolver.template(raw, *origin, &shown);
                        resolver.stack.pop();
                        resolver.memo.insert(path, r.clone());
                        r
                    }
                }
                None => resolver.template(raw, *origin, &shown),
            };
            results.push(resolved);
        }
    }
    for ((steps, _, origin), resolved) in found.into_iter().zip(results) {
        let shown = step_path(&steps);
        let Some(value) = get_mut(root, &steps) else {
            continue;
        };
        let ValueKind::Template { ty, raw } = &value.kind else {
            continue;
        };
        // A failed template keeps its text, so later checks do not report
        // the same problem again as a missing value.
        let kind = match resolved {
            None => ValueKind::Str(raw.clone()),
            Some(text) => match from_string(ty, &text) {
                Ok(kind) => kind,
                Err(problem) => {
                    diagnostics.push(problem.into_diagnostic(&shown, origin).note(format!(
                        "after interpolation the value is {}",
                        crate::config::node::quote(&text)
                    )));
                    ValueKind::Str(raw.clone())
                }
            },
        };
        value.kind = kind;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_templates() {
        assert_eq!(
            parse("a ${x.y} b $${z}").unwrap(),
            vec![
                Part::Text("a ".into()),
                Part::Reference(vec!["x".into(), "y".into()]),
                Part::Text(" b ${z}".into())
            ]
        );
        assert_eq!(
            parse("${sysctl.\"net.ipv4.ip_forward\"}").unwrap(),
            vec![Part::Reference(vec![
                "sysctl".into(),
                "net.ipv4.ip_forward".into()
            ])]
        );
        assert!(parse("${x").is_err());
        assert!(parse("${}").is_err());
        assert!(parse("${a..b}").is_err());
        assert_eq!(
            parse("cost: $5").unwrap(),
            vec![Part::Text("cost: $5".into())]
        );
    }
}
