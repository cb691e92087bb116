//! What can go wrong while fetching, in words a user can act on.
//!
//! Every variant names the URL (or, for local file-system trouble, the
//! path) so that a message read alone in a build log still says which
//! input failed. Network failures that were retried say how many attempts
//! were made, so "after 6 attempts" tells the user retrying again by hand is
//! unlikely to help.

use std::io;
use std::path::PathBuf;

/// A fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The request had no URL at all.
    #[error("nothing to fetch for {dest}: the request lists no URLs")]
    NoUrls { dest: PathBuf },

    /// The expected sha256 is not 64 hex digits.
    #[error("invalid expected sha256 {hash:?} for {dest}: expected 64 hex digits")]
    InvalidHash { dest: PathBuf, hash: String },

    /// The URL does not parse, or its scheme is not one kiln fetches.
    #[error("{url}: {reason}")]
    UnsupportedUrl { url: String, reason: String },

    /// The server answered with an HTTP error status (after `attempts`
    /// tries, when the status was worth retrying).
    #[error("{url}: {status}{}", after(*attempts))]
    Status {
        url: String,
        /// The status code and its reason phrase, e.g. "503 Service Unavailable".
        status: String,
        code: u16,
        attempts: u32,
    },

    /// The server accepted no connection, or sent nothing, in time.
    #[error("{url}: timed out {what}{}", after(*attempts))]
    TimedOut {
        url: String,
        /// What was being waited for, e.g. "waiting for data (none for 60s, at byte 0)".
        what: String,
        attempts: u32,
    },

    /// The connection failed or broke: refused, reset, closed mid-body, a
    /// TLS or DNS failure, or a malformed answer.
    #[error("{url}: {reason}{}", after(*attempts))]
    Transfer {
        url: String,
        reason: String,
        attempts: u32,
    },

    /// The bytes arrived but are not the expected ones.
    #[error("{url}: hash mismatch: expected sha256 {expected}, got {actual}")]
    HashMismatch {
        url: String,
        expected: String,
        actual: String,
    },

    /// The download (or the length the server announced) has the wrong size.
    #[error("{url}: size mismatch: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        url: String,
        expected: u64,
        actual: u64,
    },

    /// The server kept sending past the expected size; the download was
    /// stopped there rather than filling the disk.
    #[error("{url}: size mismatch: expected {expected} bytes, but the server sent more; stopped")]
    TooLarge { url: String, expected: u64 },

    /// A `file://` URL could not be read.
    #[error("{url}: cannot read {path}: {source}")]
    Local {
        url: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// Writing the download to disk failed (the `.part` file or `dest`).
    /// Not a problem of the mirror, so other mirrors are not tried.
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// Every mirror failed; one entry per URL, in the order tried.
    #[error("all {} mirrors failed: {}", failures.len(), join(failures))]
    AllMirrorsFailed { failures: Vec<FetchError> },

    /// The HTTP client could not be set up (e.g. no usable TLS roots).
    #[error("cannot set up the HTTP client: {0}")]
    Client(#[source] reqwest::Error),

    /// The async runtime behind the blocking API could not be started.
    #[error("cannot start the fetcher's runtime: {0}")]
    Runtime(#[source] io::Error),
}

impl FetchError {
    /// The URL this error is about, if it is about a single one.
    pub fn url(&self) -> Option<&str> {
        match self {
            FetchError::UnsupportedUrl { url, .. }
            | FetchError::Status { url, .. }
            | FetchError::TimedOut { url, .. }
            | FetchError::Transfer { url, .. }
            | FetchError::HashMismatch { url, .. }
            | FetchError::SizeMismatch { url, .. }
            | FetchError::TooLarge { url, .. }
            | FetchError::Local { url, .. } => Some(url),
            FetchError::NoUrls { .. }
            | FetchError::InvalidHash { .. }
            | FetchError::Io { .. }
            | FetchError::AllMirrorsFailed { .. }
            | FetchError::Client(_)
            | FetchError::Runtime(_) => None,
        }
    }

    /// Whether trying another mirror could help. Local disk trouble and a
    /// bad request are the same whichever mirror is asked.
    pub(crate) fn is_mirror_specific(&self) -> bool {
        !matches!(
            self,
            FetchError::Io { .. }
                | FetchError::NoUrls { .. }
                | FetchError::InvalidHash { .. }
                | FetchError::Client(_)
                | FetchError::Runtime(_)
        )
    }
}

/// " after N attempts", only when there was more than one: a single failed
/// attempt (a 404, say) reads better without it.
fn after(attempts: u32) -> String {
    if attempts > 1 {
        format!(" after {attempts} attempts")
    } else {
        String::new()
    }
}

fn join(failures: &[FetchError]) -> String {
    failures
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_message_lists_each_url_and_what_happened() {
        let error = FetchError::AllMirrorsFailed {
            failures: vec![
                FetchError::Status {
                    url: "https://a/x".into(),
                    status: "503 Service Unavailable".into(),
                    code: 503,
                    attempts: 5,
                },
                FetchError::Transfer {
                    url: "https://b/x".into(),
                    reason: "connection refused".into(),
                    attempts: 1,
                },
            ],
        };
        assert_eq!(
            error.to_string(),
            "all 2 mirrors failed: https://a/x: 503 Service Unavailable after 5 attempts; \
             https://b/x: connection refused"
        );
        assert_eq!(error.url(), None);
    }

    #[test]
    fn hash_mismatch_names_url_and_both_hashes() {
        let error = FetchError::HashMismatch {
            url: "http://h/f".into(),
            expected: "aa".into(),
            actual: "bb".into(),
        };
        assert_eq!(
            error.to_string(),
            "http://h/f: hash mismatch: expected sha256 aa, got bb"
        );
        assert_eq!(error.url(), Some("http://h/f"));
    }

    #[test]
    fn timeout_says_timed_out() {
        let error = FetchError::TimedOut {
            url: "http://h/f".into(),
            what: "waiting for data (none for 60s, at byte 0)".into(),
            attempts: 2,
        };
        assert_eq!(
            error.to_string(),
            "http://h/f: timed out waiting for data (none for 60s, at byte 0) after 2 attempts"
        );
    }
}
