//! `--explain`: why does this derivation need building? Compare it with
//! the derivation last built under the same name and name what changed —
//! down to the option path when an argument is JSON (a host's config).

use std::collections::BTreeSet;

use crate::plan::Derivation;
use crate::store::Store;

/// Reasons, most specific first; at most a handful per kind of change.
pub fn explain(store: &Store, derivation: &Derivation) -> Vec<String> {
    let Some(last) = store.last(&derivation.name) else {
        return vec![format!(
            "`{}` has never been built in this store",
            derivation.name
        )];
    };
    if last == *derivation {
        return vec![
            "its output is missing or invalid (it was built before: run `kiln store verify`)"
                .into(),
        ];
    }
    let mut reasons = Vec::new();
    if (&last.builder, last.builder_version) != (&derivation.builder, derivation.builder_version) {
        reasons.push(format!(
            "builder changed: {} v{} → {} v{}",
            last.builder, last.builder_version, derivation.builder, derivation.builder_version
        ));
    }
    if last.output != derivation.output {
        reasons.push("expected output hash changed".into());
    }
    for key in keys(&last.inputs, &derivation.inputs) {
        match (last.inputs.get(key), derivation.inputs.get(key)) {
            (Some(a), Some(b)) if a != b => reasons.push(format!(
                "input `{key}` changed: {} → {}",
                a.path(),
                b.path()
            )),
            (None, Some(b)) => reasons.push(format!("input `{key}` added: {}", b.path())),
            (Some(a), None) => reasons.push(format!("input `{key}` removed (was {})", a.path())),
            _ => {}
        }
    }
    for key in keys(&last.args, &derivation.args) {
        match (last.args.get(key), derivation.args.get(key)) {
            (Some(a), Some(b)) if a != b => {
                let changed = json_changes(a, b);
                if changed.is_empty() {
                    reasons.push(format!("argument `{key}` changed"));
                } else {
                    let shown: Vec<String> =
                        changed.iter().take(5).map(|p| format!("`{p}`")).collect();
                    let more = changed.len().saturating_sub(5);
                    let more = if more > 0 {
                        format!(" and {more} more")
                    } else {
                        String::new()
                    };
                    reasons.push(format!(
                        "argument `{key}` changed at {}{more}",
                        shown.join(", ")
                    ));
                }
            }
            (None, Some(_)) => reasons.push(format!("argument `{key}` added")),
            (Some(_), None) => reasons.push(format!("argument `{key}` removed")),
            _ => {}
        }
    }
    for key in keys(&last.env, &derivation.env) {
        if last.env.get(key) != derivation.env.get(key) {
            reasons.push(format!("environment variable `{key}` changed"));
        }
    }
    reasons
}

fn keys<'a, V>(
    a: &'a std::collections::BTreeMap<String, V>,
    b: &'a std::collections::BTreeMap<String, V>,
) -> BTreeSet<&'a String> {
    a.keys().chain(b.keys()).collect()
}

/// The paths at which two JSON documents differ (empty if either is not JSON).
fn json_changes(a: &str, b: &str) -> Vec<String> {
    let (Ok(a), Ok(b)) = (
        serde_json::from_str::<serde_json::Value>(a),
        serde_json::from_str::<serde_json::Value>(b),
    ) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    diff(&a, &b, &mut String::new(), &mut out);
    out
}

fn diff(a: &serde_json::Value, b: &serde_json::Value, path: &mut String, out: &mut Vec<String>) {
    use serde_json::Value as J;
    match (a, b) {
        (J::Object(x), J::Object(y)) => {
            for key in x.keys().chain(y.keys()).collect::<BTreeSet<_>>() {
                let before = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(&crate::config::node::quote_key(key));
                match (x.get(key), y.get(key)) {
                    (Some(p), Some(q)) => diff(p, q, path, out),
                    _ => out.push(path.clone()),
                }
                path.truncate(before);
            }
        }
        _ if a != b => out.push(if path.is_empty() {
            "(whole value)".into()
        } else {
            path.clone()
        }),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_changed_json_paths() {
        let a = r#"{"ssh":{"port":22},"files":{"/etc/motd":{"text":"a"}},"x":[1]}"#;
        let b = r#"{"ssh":{"port":2222},"files":{"/etc/motd":{"text":"a"}},"x":[1,2]}"#;
        assert_eq!(json_changes(a, b), ["ssh.port", "x"]);
    }
}
