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
    /// Resolved templates, by the address of their value in `root` (which
    /// is not modified while resolving): cheaper than keying by path.
    memo: HashMap<*const Value, Option<String>>,
    /// Templates being resolved: their value, display name and origin.
    stack: Vec<(*const Value, String, Span)>,
    diagnostics: &'a mut Vec<Diagnostic>,
}

impl<'a> Resolver<'a> {
    /// Resolve the template `value` (named `name` in messages), once.
    fn resolve(
        &mut self,
        value: &Value,
        name: impl FnOnce() -> String,
        from: Option<Span>,
    ) -> Option<String> {
        let key = value as *const Value;
        if let Some(done) = self.memo.get(&key) {
            return done.clone();
        }
        let ValueKind::Template { raw, .. } = &value.kind else {
            return None;
        };
        if let Some(start) = self.stack.iter().position(|(k, _, _)| *k == key) {
            self.report_cycle(start, from.unwrap_or(value.origin));
            return None;
        }
        self.stack.push((key, name(), value.origin));
        let resolved = self.template(raw, value.origin);
        self.stack.pop();
        self.memo.insert(key, resolved.clone());
        resolved
    }

    fn report_cycle(&mut self, start: usize, closing: Span) {
        let chain = &self.stack[start..];
        let mut names: Vec<String> = chain.iter().map(|(_, n, _)| format!("`{n}`")).collect();
        names.push(format!("`{}`", chain[0].1));
        let last = &chain[chain.len() - 1].1;
        let mut diagnostic = Diagnostic::error(
            "interpolation-cycle",
            format!("interpolation cycle: {}", names.join(" → ")),
        )
        .at(
            closing,
            format!("`{last}` refers to `{}`, closing the cycle", chain[0].1),
        );
        for (i, (_, name, span)) in chain.iter().enumerate().take(chain.len() - 1) {
            diagnostic = diagnostic.also(*span, format!("`{name}` refers to `{}`", chain[i + 1].1));
        }
        self.diagnostics
            .push(diagnostic.help("break the loop: at least one of these must be a plain value"));
    }

    /// The name of the template being resolved, for messages.
    fn current(&self) -> String {
        self.stack
            .last()
            .map(|(_, n, _)| n.clone())
            .unwrap_or_default()
    }

    fn template(&mut self, raw: &str, origin: Span) -> Option<String> {
        let parts = match parse(raw) {
            Ok(parts) => parts,
            Err(message) => {
                self.diagnostics.push(
                    Diagnostic::error(
                        "bad-interpolation",
                        format!("invalid interpolation in `{}`", self.current()),
                    )
                    .at(origin, message)
                    .help("write `${option.path}`, or `$${` for a literal `${`"),
                );
                return None;
            }
        };
        let mut out = String::with_capacity(raw.len());
        let mut ok = true;
        for part in parts {
            match part {
                Part::Text(text) => out.push_str(&text),
                Part::Reference(path) => match self.reference(&path, origin) {
                    Some(text) => out.push_str(&text),
                    None => ok = false,
                },
            }
        }
        ok.then_some(out)
    }

    fn reference(&mut self, path: &[String], from: Span) -> Option<String> {
        let root: &'a Value = self.root;
        let Some(target) = root.get_path(path) else {
            let shown = display_path(path);
            let candidates = leaf_paths(self.root);
            self.diagnostics.push(
                Diagnostic::error(
                    "bad-interpolation",
                    format!("`${{{shown}}}` refers to an unknown option"),
                )
                .at(
                    from,
                    format!("in `{}`: there is no option `{shown}`", self.current()),
                )
                .help_opt(did_you_mean(&shown, candidates.iter().map(String::as_str))),
            );
            return None;
        };
        let problem = |at: String, what: &str| {
            let shown = display_path(path);
            Diagnostic::error(
                "bad-interpolation",
                format!("`${{{shown}}}` cannot be interpolated"),
            )
            .at(from, format!("in `{at}`: `{shown}` {what}"))
            .also(target.origin, "defined here")
        };
        match &target.kind {
            ValueKind::Str(s) => Some(s.clone()),
            ValueKind::Int(i) => Some(i.to_string()),
            ValueKind::Bool(b) => Some(b.to_string()),
            // Already reported where it was defined.
            ValueKind::Invalid => None,
            ValueKind::Null => {
                let shown = display_path(path);
                self.diagnostics.push(
                    Diagnostic::error("bad-interpolation", format!("`${{{shown}}}` has no value"))
                        .at(
                            from,
                            format!(
                                "in `{}`: `{shown}` is not set and has no default",
                                self.current()
                            ),
                        )
                        .help(format!("set `{shown}`, or stop referring to it")),
                );
                None
            }
            ValueKind::Secret(_) => {
                let diagnostic = problem(self.current(), "is a secret reference").help(
                    "secrets are resolved only at deploy time and never copied into other values",
                );
                self.diagnostics.push(diagnostic);
                None
            }
            ValueKind::List(_) => {
                let diagnostic = problem(
                    self.current(),
                    "is a list; only strings, numbers and booleans can be interpolated",
                );
                self.diagnostics.push(diagnostic);
                None
            }
            ValueKind::Map(_) => {
                let diagnostic = problem(
                    self.current(),
                    "is a table; only strings, numbers and booleans can be interpolated",
                );
                self.diagnostics.push(diagnostic);
                None
            }
            ValueKind::Template { ty, .. } => {
                let text = self.resolve(target, || display_path(path), Some(from))?;
                // The referenced value must itself be valid for its type; if
                // not, that is reported once, where it is defined.
                match from_string(ty, &text) {
                    Ok(ValueKind::Str(s)) => Some(s),
                    Ok(ValueKind::Int(i)) => Some(i.to_string()),
                    _ => None,
                }
            }
        }
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
fn templates<'v>(value: &'v Value, at: &mut Vec<Step>, out: &mut Vec<(Vec<Step>, &'v Value)>) {
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
        ValueKind::Template { .. } => out.push((at.clone(), value)),
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
    let results: Vec<(Vec<Step>, Option<String>)> = {
        let shared: &Value = root;
        let mut found = Vec::new();
        templates(shared, &mut Vec::new(), &mut found);
        if found.is_empty() {
            return;
        }
        let mut resolver = Resolver {
            root: shared,
            memo: HashMap::new(),
            stack: Vec::new(),
            diagnostics: &mut *diagnostics,
        };
        found
            .into_iter()
            .map(|(steps, value)| {
                // A template already resolved through a reference to it is
                // not resolved (or reported) again.
                let resolved = resolver.resolve(value, || step_path(&steps), None);
                (steps, resolved)
            })
            .collect()
    };
    for (steps, resolved) in results {
        let Some(value) = get_mut(root, &steps) else {
            continue;
        };
        let origin = value.origin;
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
                    diagnostics.push(problem.into_diagnostic(&step_path(&steps), origin).note(
                        format!(
                            "after interpolation the value is {}",
                            crate::config::node::quote(&text)
                        ),
                    ));
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
