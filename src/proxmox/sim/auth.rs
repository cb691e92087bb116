//! API-token authentication as `pveproxy` does it.
//!
//! pve-http-server `src/PVE/APIServer/Formatter.pm` `extract_auth_value`:
//! the value after `PVEAPIToken=` (or a space) up to `;`, URI-unescaped.
//! pve-access-control `src/PVE/AccessControl.pm` `verify_token`: split on
//! the *last* `=` into token id and secret; the token id is
//! `USER@REALM!TOKENNAME` with TOKENNAME `[A-Za-z][A-Za-z0-9.\-_]+`
//! (`src/PVE/Auth/Plugin.pm`).

use std::sync::LazyLock;

use regex::Regex;

use super::config::TokenConfig;

static TOKEN_VALUE: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"(?:^|\s)PVEAPIToken(?:=| )([^;]*)").ok());
static TOKEN_ID: LazyLock<Option<Regex>> = LazyLock::new(|| {
    // pve-access-control Auth/Plugin.pm: realm `[A-Za-z][A-Za-z0-9\.\-_]+`,
    // user name without `:` or `/` or whitespace.
    Regex::new(r"^([^\s:/@!]+@[A-Za-z][A-Za-z0-9.\-_]+)!([A-Za-z][A-Za-z0-9.\-_]+)$").ok()
});

/// Why authentication failed; the text is pveproxy's reason phrase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AuthFailure {
    NoTicket,
    Failed,
}

impl AuthFailure {
    pub(super) fn reason(self) -> &'static str {
        match self {
            AuthFailure::NoTicket => "No ticket",
            AuthFailure::Failed => "Authentication failed!",
        }
    }
}

/// `(user@realm, tokenname)` if `id` is a well-formed token id.
pub(super) fn split_token_id(id: &str) -> Option<(&str, &str)> {
    let captures = TOKEN_ID.as_ref()?.captures(id)?;
    Some((captures.get(1)?.as_str(), captures.get(2)?.as_str()))
}

/// The token id the request authenticates as.
pub(super) fn authenticate(
    header: Option<&str>,
    tokens: &[TokenConfig],
) -> Result<String, AuthFailure> {
    let header = header.ok_or(AuthFailure::NoTicket)?;
    let raw = TOKEN_VALUE
        .as_ref()
        .and_then(|re| re.captures(header))
        .and_then(|c| c.get(1))
        .ok_or(AuthFailure::NoTicket)?
        .as_str();
    let value = percent_encoding::percent_decode_str(raw).decode_utf8_lossy();
    let (id, secret) = value.rsplit_once('=').ok_or(AuthFailure::Failed)?;
    split_token_id(id).ok_or(AuthFailure::Failed)?;
    tokens
        .iter()
        .find(|t| t.id == id && t.secret == secret)
        .map(|t| t.id.clone())
        .ok_or(AuthFailure::Failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Vec<TokenConfig> {
        vec![TokenConfig {
            id: "kiln@pve!ci".to_owned(),
            secret: "s=cret".to_owned(),
            privileges: None,
        }]
    }

    #[test]
    fn splits_on_the_last_equals_sign() {
        assert_eq!(
            authenticate(Some("PVEAPIToken=kiln@pve!ci=s=cret"), &tokens()),
            Err(AuthFailure::Failed),
            "the secret ends at the last '=', so 's' is the token id's tail"
        );
        let ok = [TokenConfig {
            id: "kiln@pve!ci".to_owned(),
            secret: "secret".to_owned(),
            privileges: None,
        }];
        assert_eq!(
            authenticate(Some("PVEAPIToken kiln%40pve!ci=secret; x"), &ok).as_deref(),
            Ok("kiln@pve!ci")
        );
        assert_eq!(authenticate(None, &ok), Err(AuthFailure::NoTicket));
        assert_eq!(
            authenticate(Some("Bearer x"), &ok),
            Err(AuthFailure::NoTicket)
        );
    }
}
