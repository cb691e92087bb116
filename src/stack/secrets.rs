//! The secret lint: a stack holds references to secrets, never secrets.
//!
//! `secrets` values are `secret` options, so a literal there is already
//! refused by the type (with the value masked). This lint covers `env`,
//! which takes literals: a value is reported when its name says it is a
//! secret (`*PASSWORD*`, `*SECRET*`, `*TOKEN*`, `*_KEY`, …) or when the
//! value itself looks like one (a known token prefix, or a long
//! high-entropy string). A secret reference written in `env` is reported
//! too: `env` is passed to the container as is, so it belongs in `secrets`.

use crate::config::diagnostic::Diagnostic;
use crate::eval::scalar::check_secret_reference;

use super::read::Draft;

/// Name fragments that mark a secret.
const SECRET_NAMES: [&str; 6] = [
    "PASSWORD",
    "PASSWD",
    "SECRET",
    "TOKEN",
    "CREDENTIAL",
    "PRIVATE",
];

/// Prefixes of well-known credentials.
const SECRET_PREFIXES: [(&str, &str); 9] = [
    ("ghp_", "a GitHub token"),
    ("gho_", "a GitHub token"),
    ("ghs_", "a GitHub token"),
    ("github_pat_", "a GitHub token"),
    ("glpat-", "a GitLab token"),
    ("sk-", "an API secret key"),
    ("xoxb-", "a Slack token"),
    ("xoxp-", "a Slack token"),
    ("-----BEGIN", "a PEM key or certificate"),
];

pub fn lint(draft: &Draft, diagnostics: &mut Vec<Diagnostic>) {
    for (key, (value, span)) in &draft.env {
        let reason = if check_secret_reference(value).is_ok() {
            Some("a secret reference in `env`, which is passed to the container as is".to_owned())
        } else {
            why_secret(key, value)
        };
        let Some(reason) = reason else {
            continue;
        };
        diagnostics.push(
            Diagnostic::error(
                "secret-value",
                format!("`services.{}.env.{key}` looks like a secret", draft.name),
            )
            .at(*span, reason)
            .help(format!(
                "move it to `secrets` as a reference: `secrets.{key} = \"vault:MOUNT/PATH#KEY\"` (or \"env:NAME\", \"file:PATH\") — and rotate the secret if it was ever committed"
            ))
            .redacting(*span),
        );
    }
}

/// Why a literal environment value is taken for a secret, if it is.
pub fn why_secret(key: &str, value: &str) -> Option<String> {
    if value.is_empty() {
        return None;
    }
    let upper = key.to_ascii_uppercase();
    // `*_FILE` names a file holding the secret (the `_FILE` convention of
    // official images); a number or a boolean is a setting (`TOKEN_TTL`).
    let is_setting = upper.ends_with("_FILE")
        || value.parse::<f64>().is_ok()
        || matches!(
            value.to_ascii_lowercase().as_str(),
            "true" | "false" | "yes" | "no" | "on" | "off"
        );
    if !is_setting {
        if let Some(fragment) = SECRET_NAMES.iter().find(|f| upper.contains(*f)) {
            return Some(format!("the name contains `{fragment}`"));
        }
        if upper.ends_with("_KEY") || upper == "KEY" {
            return Some("the name ends in `_KEY`".to_owned());
        }
    }
    if let Some((_, what)) = SECRET_PREFIXES.iter().find(|(p, _)| value.starts_with(p)) {
        return Some(format!("the value looks like {what}"));
    }
    if is_aws_access_key(value) {
        return Some("the value looks like an AWS access key id".to_owned());
    }
    if looks_random(value) {
        return Some("the value is a long random-looking string".to_owned());
    }
    None
}

fn is_aws_access_key(value: &str) -> bool {
    ["AKIA", "ASIA"].iter().any(|p| value.starts_with(p))
        && value.len() == 20
        && value
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

/// At least 24 characters from a token alphabet, with letters and digits,
/// and more than 3.5 bits of entropy per character (identifiers and words
/// stay below; random hex reaches about 3.9, base64 about 5).
fn looks_random(value: &str) -> bool {
    if value.len() < 24
        || !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'_' | b'-'))
        || !value.bytes().any(|b| b.is_ascii_digit())
        || !value.bytes().any(|b| b.is_ascii_alphabetic())
    {
        return false;
    }
    let mut counts = [0u32; 256];
    for b in value.bytes() {
        counts[usize::from(b)] += 1;
    }
    #[expect(
        clippy::cast_precision_loss,
        reason = "lengths of environment values are far below 2^52"
    )]
    let length = value.len() as f64;
    let entropy: f64 = counts
        .iter()
        .filter(|c| **c > 0)
        .map(|c| {
            let p = f64::from(*c) / length;
            -p * p.log2()
        })
        .sum();
    entropy > 3.5
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_mark_secrets() {
        assert!(why_secret("DB_PASSWORD", "hunter2").is_some());
        assert!(why_secret("AUTHENTIK_SECRET_KEY", "x").is_some());
        assert!(why_secret("GITHUB_TOKEN", "abc").is_some());
        assert!(why_secret("STRIPE_API_KEY", "abc").is_some());
        // Settings with secret-looking names.
        assert!(why_secret("POSTGRES_PASSWORD_FILE", "/run/secrets/db").is_none());
        assert!(why_secret("TOKEN_TTL", "3600").is_none());
        assert!(why_secret("SECRET_ROTATION", "false").is_none());
        assert!(why_secret("DB_PASSWORD", "").is_none());
    }

    #[test]
    fn values_that_look_like_secrets() {
        assert!(why_secret("X", "ghp_16C7e42F292c6912E7710c838347Ae178B4a").is_some());
        assert!(why_secret("X", "sk-proj-abc").is_some());
        assert!(why_secret("X", "AKIAIOSFODNN7EXAMPLE").is_some());
        assert!(why_secret("X", "8f3b2a9c1d7e4f60a5b8c2d9e1f4a7b3c6d0e2f5").is_some());
        assert!(why_secret("X", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY").is_some());
    }

    #[test]
    fn ordinary_values_pass() {
        for (key, value) in [
            ("TZ", "Europe/Berlin"),
            ("OLLAMA_BASE_URL", "http://ollama:11434"),
            ("AUTHENTIK_POSTGRESQL__HOST", "postgres"),
            ("LOG_LEVEL", "info"),
            ("WEBUI_NAME", "Open WebUI on the homelab"),
            ("PUBLIC_PATH", "/var/lib/open-webui/static-assets"),
            ("FEATURES", "metrics,tracing,experimental-ui"),
        ] {
            assert_eq!(why_secret(key, value), None, "{key}={value}");
        }
    }
}
