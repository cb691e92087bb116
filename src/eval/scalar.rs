//! Parsers for the scalar option types written as strings: sizes,
//! durations, absolute paths and secret references.
//!
//! Each returns the normalised value or a message saying what was expected;
//! the caller attaches the span.

/// A size in bytes from `512MiB`, `4G`, `1.5TiB`, `100MB` or `1024`.
///
/// `K`, `M`, `G`, `T` and `P` are binary (×1024), as in Proxmox (`32G` is
/// 32 GiB); `KiB` … `PiB` are the same, spelt out; `KB` … `PB` are decimal
/// (×1000). A bare number is bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    const EXPECTED: &str = "expected a size such as `512MiB`, `4G` or `100GB`";
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "T" | "TiB" => 1 << 40,
        "P" | "PiB" => 1 << 50,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        "PB" => 1_000_000_000_000_000,
        other => {
            return Err(format!(
                "{EXPECTED}; unknown unit `{other}` (use B, K/KiB, M/MiB, G/GiB, T/TiB, or KB/MB/GB/TB)"
            ));
        }
    };
    if number.is_empty() {
        return Err(EXPECTED.to_owned());
    }
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || fraction.contains('.') || (number.contains('.') && fraction.is_empty()) {
        return Err(EXPECTED.to_owned());
    }
    let too_big = || "size too large (more than 2^64 bytes)".to_owned();
    let whole: u64 = whole.parse().map_err(|_| too_big())?;
    let mut bytes = whole.checked_mul(multiplier).ok_or_else(too_big)?;
    if !fraction.is_empty() {
        // Exact decimal arithmetic: fraction × multiplier / 10^digits.
        let digits = u32::try_from(fraction.len()).map_err(|_| EXPECTED.to_owned())?;
        let scale = 10u128
            .checked_pow(digits)
            .ok_or_else(|| EXPECTED.to_owned())?;
        let numerator: u128 =
            fraction.parse::<u128>().map_err(|_| EXPECTED.to_owned())? * u128::from(multiplier);
        if !numerator.is_multiple_of(scale) {
            return Err(format!("`{text}` is not a whole number of bytes"));
        }
        let extra = u64::try_from(numerator / scale).map_err(|_| too_big())?;
        bytes = bytes.checked_add(extra).ok_or_else(too_big)?;
    }
    Ok(bytes)
}

/// A duration in seconds from `30s`, `5m`, `1h30m`, `2d` or `1w`.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    const EXPECTED: &str =
        "expected a duration such as `30s`, `5m`, `1h30m` or `7d` (units: s, m, h, d, w)";
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(EXPECTED.to_owned());
    }
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(EXPECTED.to_owned());
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| "duration too large".to_owned())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let seconds: u64 = match &rest[..unit_len] {
            "s" => 1,
            "m" => 60,
            "h" => 3_600,
            "d" => 86_400,
            "w" => 604_800,
            "" => return Err(format!("{EXPECTED}; `{number}` has no unit")),
            other => return Err(format!("{EXPECTED}; unknown unit `{other}`")),
        };
        rest = &rest[unit_len..];
        total = number
            .checked_mul(seconds)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(|| "duration too large".to_owned())?;
    }
    Ok(total)
}

/// An absolute path, normalised: no empty or `.` components, no trailing
/// slash. `..` is refused rather than resolved, because a path that climbs
/// is almost always a mistake in an image definition.
pub fn normalise_path(text: &str) -> Result<String, String> {
    if !text.starts_with('/') {
        return Err("expected an absolute path (starting with `/`)".to_owned());
    }
    if text.contains('\0') {
        return Err("a path cannot contain a NUL byte".to_owned());
    }
    let mut parts = Vec::new();
    for part in text.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                return Err("`..` is not allowed in paths; write the path it leads to".to_owned());
            }
            other => parts.push(other),
        }
    }
    Ok(format!("/{}", parts.join("/")))
}

/// Why a string is not a secret reference, if it is not. Secret options
/// hold *where* a secret lives, never the secret:
/// `env:NAME`, `file:PATH` or `vault:MOUNT/PATH#KEY`.
pub fn check_secret_reference(text: &str) -> Result<(), SecretError> {
    if let Some(name) = text.strip_prefix("env:") {
        let mut chars = name.chars();
        let ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        return if ok {
            Ok(())
        } else {
            Err(SecretError::Malformed(
                "`env:` must be followed by an environment variable name such as `DB_PASSWORD`"
                    .to_owned(),
            ))
        };
    }
    if let Some(path) = text.strip_prefix("file:") {
        return if path.is_empty() {
            Err(SecretError::Malformed(
                "`file:` must be followed by a path".to_owned(),
            ))
        } else {
            Ok(())
        };
    }
    if let Some(rest) = text.strip_prefix("vault:") {
        let ok = rest
            .split_once('#')
            .and_then(|(location, key)| {
                let (mount, path) = location.split_once('/')?;
                Some(!mount.is_empty() && !path.is_empty() && !key.is_empty() && !key.contains('#'))
            })
            .unwrap_or(false);
        return if ok {
            Ok(())
        } else {
            Err(SecretError::Malformed(
                "a vault reference is `vault:MOUNT/PATH#KEY`, e.g. `vault:kv/db/postgres#password`"
                    .to_owned(),
            ))
        };
    }
    Err(SecretError::NotAReference)
}

#[derive(Debug, PartialEq)]
pub enum SecretError {
    /// Looks like a value: no known scheme.
    NotAReference,
    /// A known scheme, written wrong.
    Malformed(String),
}

/// Does this string look like a private key? Such text must never be
/// typed into a kiln file: it would end up in the store and the lockfile.
pub fn looks_like_private_key(text: &str) -> bool {
    text.contains("-----BEGIN") && text.contains("PRIVATE KEY-----")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("4G"), Ok(4 << 30));
        assert_eq!(parse_size("1.5TiB"), Ok(3 << 39));
        assert_eq!(parse_size("100GB"), Ok(100_000_000_000));
        assert_eq!(parse_size("1024"), Ok(1024));
        assert!(parse_size("4 gigs").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("1.").is_err());
        assert!(parse_size("0.1K").is_err());
        assert!(parse_size("99999999999P").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(30));
        assert_eq!(parse_duration("1h30m"), Ok(5400));
        assert_eq!(parse_duration("1w"), Ok(604_800));
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("5 minutes").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn paths() {
        assert_eq!(
            normalise_path("/etc//ssh/./sshd_config/").as_deref(),
            Ok("/etc/ssh/sshd_config")
        );
        assert_eq!(normalise_path("/").as_deref(), Ok("/"));
        assert!(normalise_path("etc/motd").is_err());
        assert!(normalise_path("/etc/../root").is_err());
    }

    #[test]
    fn secrets() {
        assert_eq!(check_secret_reference("env:DB_PASSWORD"), Ok(()));
        assert_eq!(check_secret_reference("file:/run/secrets/db"), Ok(()));
        assert_eq!(
            check_secret_reference("vault:kv/db/postgres#password"),
            Ok(())
        );
        assert_eq!(
            check_secret_reference("hunter2"),
            Err(SecretError::NotAReference)
        );
        assert!(matches!(
            check_secret_reference("env:1X"),
            Err(SecretError::Malformed(_))
        ));
        assert!(matches!(
            check_secret_reference("vault:kv#x"),
            Err(SecretError::Malformed(_))
        ));
    }
}
