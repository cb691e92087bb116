//! Which failed requests kiln sends again, and why doing so cannot apply a
//! change twice.
//!
//! A request is retried only when the node cannot have acted on it, or
//! when acting on it twice changes nothing:
//!
//! - **503 Service Unavailable**, any method. pveproxy itself never
//!   answers 503 (no such status in pve-http-server `AnyEvent.pm` or
//!   pve-manager `PVE/HTTPServer.pm`); it comes from what stands in front
//!   of pveproxy — a reverse proxy or load balancer whose upstream is down,
//!   restarting or overloaded — which answers it *instead of* forwarding
//!   the request (RFC 9110 §15.6.4: the server "is currently unable to
//!   handle the request"), so no API handler ran. The simulator's
//!   `Fault::ServiceUnavailable` answers it before the API in the same way.
//! - **595**, any method. pveproxy hands `protected` calls (the upload
//!   among them) to pvedaemon on localhost, and calls for another node to
//!   that node, with AnyEvent::HTTP, and passes its status on
//!   (`proxy_request` in `AnyEvent.pm`). AnyEvent::HTTP's pseudo-status
//!   595 means "errors during connection establishment": the request never
//!   reached a handler (seen while pvedaemon restarts, or when the other
//!   node is down).
//! - **No connection**, any method: the TCP connection could not be made
//!   (refused, reset or unreachable while connecting), so nothing was
//!   sent. A TLS failure is not retried: a certificate that is not trusted
//!   now will not be trusted in a second.
//! - **A connection lost after the request was sent, before an answer**:
//!   only for GET, which changes nothing. A POST, PUT or DELETE may have
//!   run (created a VM, started a task) before the connection went, so
//!   sending it again could do it twice: the error is returned instead.
//!   Uploads are the exception, see `upload.rs`.
//!
//! Everything else — 4xx, 500, 501, timeouts — is returned at once: the
//! node answered, and asking again gets the same answer.

use std::error::Error;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// How often and how patiently a failed request is sent again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1: never retry).
    pub attempts: u32,
    /// The wait before the first retry; doubled before each next one.
    pub first_delay: Duration,
    /// The longest wait between two attempts.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// 6 attempts, waiting 0.5, 1, 2, 4 and 8 s between them (15.5 s in
    /// all): long enough for pveproxy or pvedaemon to restart.
    fn default() -> RetryPolicy {
        RetryPolicy {
            attempts: 6,
            first_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(8),
        }
    }
}

impl RetryPolicy {
    /// Never retry.
    pub fn never() -> RetryPolicy {
        RetryPolicy {
            attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// The wait after failed attempt number `attempt` (1 for the first).
    pub fn delay(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        self.first_delay
            .saturating_mul(1 << doublings)
            .min(self.max_delay)
    }
}

/// Something the client reports while it works, for the CLI to show. A
/// report never contains the token's secret.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// Attempt `attempt` of `attempts` of `method path` failed for
    /// `reason`; the next one follows after `delay`.
    Retrying {
        method: String,
        path: String,
        attempt: u32,
        attempts: u32,
        delay: Duration,
        reason: String,
    },
}

impl fmt::Display for ClientEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientEvent::Retrying {
                method,
                path,
                attempt,
                attempts,
                delay,
                reason,
            } => write!(
                f,
                "{method} {path}: {reason}; retrying in {:.1} s (attempt {} of {attempts})",
                delay.as_secs_f64(),
                attempt + 1
            ),
        }
    }
}

type Receiver = dyn Fn(&ClientEvent) + Send + Sync;

/// Where [`ClientEvent`]s go.
#[derive(Clone, Default)]
pub(super) struct Events(Option<Arc<Receiver>>);

impl Events {
    pub(super) fn new(receiver: impl Fn(&ClientEvent) + Send + Sync + 'static) -> Events {
        Events(Some(Arc::new(receiver)))
    }

    pub(super) fn emit(&self, event: &ClientEvent) {
        if let Some(receiver) = &self.0 {
            receiver(event);
        }
    }
}

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Events(receiver)"
        } else {
            "Events(none)"
        })
    }
}

/// Whether a status means the request reached no handler (see the module
/// documentation).
pub(super) fn status_is_transient(status: u16) -> bool {
    matches!(status, 503 | 595)
}

/// How far a request that got no answer went.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Lost {
    /// No connection was made: nothing was sent.
    BeforeSending(String),
    /// The connection went away after (some of) the request was sent.
    AfterSending(String),
    /// Not a lost connection: TLS, a timeout, a bad body, ...
    Other,
}

/// Reads reqwest's error chain.
pub(super) fn lost_connection(error: &reqwest::Error) -> Lost {
    if error.is_timeout() || tls_failure(error).is_some() {
        return Lost::Other;
    }
    let reason = innermost(error);
    if error.is_connect() {
        return Lost::BeforeSending(reason);
    }
    for cause in causes(error) {
        if let Some(io) = cause.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::NotConnected
            )
        {
            return Lost::AfterSending(reason);
        }
        if let Some(hyper) = cause.downcast_ref::<hyper::Error>()
            && (hyper.is_incomplete_message() || hyper.is_closed() || hyper.is_canceled())
        {
            return Lost::AfterSending(reason);
        }
    }
    Lost::Other
}

/// The TLS error in the chain, if the handshake failed.
pub(super) fn tls_failure(error: &(dyn Error + 'static)) -> Option<String> {
    causes(error).find_map(|cause| {
        let tls = cause.downcast_ref::<rustls::Error>().or_else(|| {
            cause
                .downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::get_ref)
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        })?;
        // A verifier's own error (the pinned fingerprint's mismatch) says
        // more than rustls's "other error" around it.
        Some(match tls {
            rustls::Error::Other(other)
            | rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => {
                other.0.to_string()
            }
            tls => tls.to_string(),
        })
    })
}

/// The messages of the error and its causes, joined with `: `, each said
/// once (reqwest's own message alone is "error sending request").
pub(super) fn chain(error: &(dyn Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in causes(error) {
        let text = cause.to_string();
        if !parts.iter().any(|part| part.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

fn innermost(error: &(dyn Error + 'static)) -> String {
    causes(error)
        .last()
        .map(ToString::to_string)
        .unwrap_or_default()
}

/// The error and its sources. An `io::Error` that wraps another error
/// returns that error's *source* as its own, so the wrapped error itself
/// is visited too.
fn causes<'a>(error: &'a (dyn Error + 'static)) -> impl Iterator<Item = &'a (dyn Error + 'static)> {
    let mut next = Some(error);
    std::iter::from_fn(move || {
        let current = next?;
        next = match current
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            Some(inner) => Some(inner as &(dyn Error + 'static)),
            None => current.source(),
        };
        Some(current)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap() {
        let policy = RetryPolicy::default();
        let delays: Vec<u64> = (1..7).map(|n| policy.delay(n).as_millis() as u64).collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 8000, 8000]);
        assert_eq!(policy.delay(u32::MAX), Duration::from_secs(8));
        assert_eq!(RetryPolicy::never().attempts, 1);
    }

    #[test]
    fn only_service_unavailable_and_595_are_transient() {
        for status in [503, 595] {
            assert!(status_is_transient(status));
        }
        for status in [400, 401, 403, 404, 500, 501, 502, 504, 596] {
            assert!(!status_is_transient(status), "{status}");
        }
    }

    #[test]
    fn chains_name_each_cause_once_and_see_through_io_errors() {
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, tls);
        assert_eq!(
            tls_failure(&io).as_deref(),
            Some("invalid peer certificate: UnknownIssuer")
        );
        assert_eq!(chain(&io), "invalid peer certificate: UnknownIssuer");
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(tls_failure(&refused), None);
    }

    #[test]
    fn events_read_well() {
        let event = ClientEvent::Retrying {
            method: "GET".into(),
            path: "/version".into(),
            attempt: 1,
            attempts: 6,
            delay: Duration::from_millis(500),
            reason: "503 Service Unavailable".into(),
        };
        assert_eq!(
            event.to_string(),
            "GET /version: 503 Service Unavailable; retrying in 0.5 s (attempt 2 of 6)"
        );
    }
}
