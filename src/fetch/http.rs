//! One `http://` or `https://` mirror: attempts, retries, resume.
//!
//! Each attempt is a GET. If an earlier attempt left bytes in the `.part`,
//! the attempt asks for the rest with `Range: bytes=N-` (and `If-Range`, so
//! a file that changed on the server comes back whole instead of spliced).
//! The server may answer 206 (append, after checking `Content-Range` starts
//! at N) or 200 (start again from zero). Failures that a later attempt may
//! not meet (connection trouble, timeouts, 408, 429, 5xx) are retried with
//! backoff; the others end this mirror at once.

use std::error::Error as _;
use std::io;
use std::time::Duration;

use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Client, StatusCode};

use super::backoff;
use super::part::PartFile;
use super::{FetchError, FetchOptions, FetchProgress, FetchRequest, Fetched};

/// Fetch `url` into `request.dest`, retrying up to `options.retries` times.
pub(crate) async fn fetch(
    client: &Client,
    options: &FetchOptions,
    url: &str,
    request: &FetchRequest,
    progress: &dyn FetchProgress,
) -> Result<Fetched, FetchError> {
    let mut download = Download {
        part: PartFile::create(&request.dest)?,
        validator: None,
    };
    let mut attempt = 1;
    loop {
        match attempt_once(client, options, url, request, progress, &mut download).await {
            Ok(()) => {
                return download
                    .part
                    .finish(url, request.sha256.as_deref(), request.size);
            }
            Err(Outcome::Fatal(error)) => return Err(error),
            Err(Outcome::Retry(failure)) => {
                if attempt > options.retries {
                    return Err(failure.into_error(url, attempt));
                }
                let wait = match failure.retry_after() {
                    Some(requested) => backoff::server_delay(requested),
                    None => backoff::delay(options.backoff_base, attempt),
                };
                attempt += 1;
                progress.retrying(url, attempt, &failure.to_string());
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// What survives between attempts on one mirror.
struct Download {
    part: PartFile,
    /// The strong `ETag` (or `Last-Modified`) of the response the `.part`
    /// started with, sent as `If-Range` when resuming.
    validator: Option<HeaderValue>,
}

/// Why an attempt ended without the whole body.
enum Outcome {
    /// Worth another attempt on the same URL.
    Retry(Failure),
    /// Not worth another attempt on this URL.
    Fatal(FetchError),
}

impl From<FetchError> for Outcome {
    fn from(error: FetchError) -> Outcome {
        Outcome::Fatal(error)
    }
}

/// A retryable failure; becomes a [`FetchError`] when retries run out.
enum Failure {
    Status {
        code: u16,
        status: String,
        retry_after: Option<Duration>,
    },
    TimedOut(String),
    Transfer(String),
}

impl Failure {
    fn retry_after(&self) -> Option<Duration> {
        match self {
            Failure::Status { retry_after, .. } => *retry_after,
            Failure::TimedOut(_) | Failure::Transfer(_) => None,
        }
    }

    fn into_error(self, url: &str, attempts: u32) -> FetchError {
        let url = url.to_string();
        match self {
            Failure::Status { code, status, .. } => FetchError::Status {
                url,
                status,
                code,
                attempts,
            },
            Failure::TimedOut(what) => FetchError::TimedOut {
                url,
                what,
                attempts,
            },
            Failure::Transfer(reason) => FetchError::Transfer {
                url,
                reason,
                attempts,
            },
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Status { status, .. } => f.write_str(status),
            Failure::TimedOut(what) => write!(f, "timed out {what}"),
            Failure::Transfer(reason) => f.write_str(reason),
        }
    }
}

async fn attempt_once(
    client: &Client,
    options: &FetchOptions,
    url: &str,
    request: &FetchRequest,
    progress: &dyn FetchProgress,
    download: &mut Download,
) -> Result<(), Outcome> {
    let offset = download.part.len();
    // No compression: the hash is of the bytes as served, and byte ranges
    // of a compressed representation are not ranges of the file.
    let mut builder = client.get(url).header(header::ACCEPT_ENCODING, "identity");
    if offset > 0 {
        builder = builder.header(header::RANGE, format!("bytes={offset}-"));
        if let Some(validator) = &download.validator {
            builder = builder.header(header::IF_RANGE, validator.clone());
        }
    }
    // reqwest bounds the connect; this bounds the whole wait for headers.
    let answer_timeout = options.connect_timeout + options.read_timeout;
    let mut response = match tokio::time::timeout(answer_timeout, builder.send()).await {
        Err(_) => {
            return Err(Outcome::Retry(Failure::TimedOut(format!(
                "waiting for an answer (none for {})",
                seconds(answer_timeout)
            ))));
        }
        Ok(Err(error)) => return Err(classify(url, &error)),
        Ok(Ok(response)) => response,
    };

    let status = response.status();
    let total = match status {
        StatusCode::PARTIAL_CONTENT => {
            let range = response
                .headers()
                .get(header::CONTENT_RANGE)
                .and_then(|value| value.to_str().ok())
                .and_then(parse_content_range);
            match range {
                Some(ContentRange::Bytes { start, total, .. }) if start == offset => total,
                _ => {
                    // Appending at the wrong offset would corrupt the file
                    // silently until the hash check; start over instead.
                    download.part.restart()?;
                    return Err(Outcome::Retry(Failure::Transfer(format!(
                        "the server sent an unusable Content-Range {:?} for bytes={offset}-",
                        header_text(response.headers(), header::CONTENT_RANGE)
                    ))));
                }
            }
        }
        StatusCode::OK => {
            if offset > 0 {
                // Range ignored (or If-Range failed): the body is the whole file.
                download.part.restart()?;
            }
            download.validator = validator(response.headers());
            response.content_length()
        }
        StatusCode::RANGE_NOT_SATISFIABLE if offset > 0 => {
            let complete = matches!(
                response
                    .headers()
                    .get(header::CONTENT_RANGE)
                    .and_then(|value| value.to_str().ok())
                    .and_then(parse_content_range),
                Some(ContentRange::Unsatisfied { total }) if total == offset
            );
            if complete {
                // The previous attempt got every byte; only its end was lost.
                return Ok(());
            }
            download.part.restart()?;
            return Err(Outcome::Retry(Failure::Transfer(format!(
                "the server refused to resume at byte {offset} (416 Range Not Satisfiable)"
            ))));
        }
        _ => {
            let failure = Failure::Status {
                code: status.as_u16(),
                status: status_text(status),
                retry_after: retry_after(response.headers()),
            };
            return Err(if retryable_status(status) {
                Outcome::Retry(failure)
            } else {
                // 404, 403, 410…: asking this mirror again will not help.
                Outcome::Fatal(failure.into_error(url, 1))
            });
        }
    };

    if let (Some(expected), Some(total)) = (request.size, total)
        && expected != total
    {
        return Err(Outcome::Fatal(FetchError::SizeMismatch {
            url: url.to_string(),
            expected,
            actual: total,
        }));
    }
    progress.started(url, total.or(request.size));

    loop {
        let chunk = match tokio::time::timeout(options.read_timeout, response.chunk()).await {
            Err(_) => {
                return Err(Outcome::Retry(Failure::TimedOut(format!(
                    "waiting for data (none for {}, at byte {})",
                    seconds(options.read_timeout),
                    download.part.len()
                ))));
            }
            Ok(Err(error)) => {
                return Err(Outcome::Retry(Failure::Transfer(format!(
                    "{} (at byte {})",
                    describe(&error),
                    download.part.len()
                ))));
            }
            Ok(Ok(None)) => break,
            Ok(Ok(Some(chunk))) => chunk,
        };
        if let Some(expected) = request.size
            && download.part.len() + chunk.len() as u64 > expected
        {
            return Err(Outcome::Fatal(FetchError::TooLarge {
                url: url.to_string(),
                expected,
            }));
        }
        download.part.append(&chunk)?;
        progress.advanced(url, download.part.len());
    }

    // Without a Content-Length (or with a server that closes cleanly early)
    // the body can end short; what is there is kept and resumed.
    if let Some(total) = total.or(request.size)
        && download.part.len() < total
    {
        return Err(Outcome::Retry(Failure::Transfer(format!(
            "the connection closed after {} of {total} bytes",
            download.part.len()
        ))));
    }
    Ok(())
}

/// 408 Request Timeout, 429 Too Many Requests and 5xx may pass.
fn retryable_status(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
}

/// "503 Service Unavailable".
fn status_text(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => format!("{} {reason}", status.as_u16()),
        None => format!("HTTP status {}", status.as_u16()),
    }
}

/// `Retry-After` in seconds. The HTTP-date form is ignored (the backoff
/// schedule applies): it depends on clocks agreeing, and mirrors use it rarely.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// What `If-Range` can carry: a strong ETag, else `Last-Modified`.
fn validator(headers: &HeaderMap) -> Option<HeaderValue> {
    if let Some(etag) = headers.get(header::ETAG)
        && !etag.as_bytes().starts_with(b"W/")
    {
        return Some(etag.clone());
    }
    headers.get(header::LAST_MODIFIED).cloned()
}

fn header_text(headers: &HeaderMap, name: header::HeaderName) -> String {
    headers
        .get(name)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
        .unwrap_or_default()
}

#[derive(Debug, PartialEq, Eq)]
enum ContentRange {
    /// `bytes start-end/total` (`total` is `None` for `*`).
    Bytes {
        start: u64,
        end: u64,
        total: Option<u64>,
    },
    /// `bytes */total`, sent with 416.
    Unsatisfied { total: u64 },
}

fn parse_content_range(value: &str) -> Option<ContentRange> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    if range == "*" {
        return Some(ContentRange::Unsatisfied {
            total: total.parse().ok()?,
        });
    }
    let (start, end) = range.split_once('-')?;
    let (start, end): (u64, u64) = (start.parse().ok()?, end.parse().ok()?);
    let total = match total {
        "*" => None,
        total => Some(total.parse().ok()?),
    };
    let consistent = start <= end && total.is_none_or(|total| end < total);
    consistent.then_some(ContentRange::Bytes { start, end, total })
}

/// A failure of `send()`: retry unless no later attempt can succeed.
fn classify(url: &str, error: &reqwest::Error) -> Outcome {
    let reason = describe(error);
    if error.is_timeout() {
        return Outcome::Retry(Failure::TimedOut(if error.is_connect() {
            "connecting".to_string()
        } else {
            format!("({reason})")
        }));
    }
    // A bad URL, a redirect loop, or a TLS peer that failed verification
    // (tokio-rustls reports those as InvalidData): the same next time.
    let invalid_data = io_kind(error) == Some(io::ErrorKind::InvalidData);
    if error.is_builder() || error.is_redirect() || invalid_data {
        return Outcome::Fatal(FetchError::Transfer {
            url: url.to_string(),
            reason,
            attempts: 1,
        });
    }
    Outcome::Retry(Failure::Transfer(reason))
}

/// The innermost cause of a reqwest error, in plain words: reqwest's own
/// message ("error sending request for url (…)") repeats the URL and hides
/// the reason.
fn describe(error: &reqwest::Error) -> String {
    match io_kind(error) {
        Some(io::ErrorKind::ConnectionRefused) => return "connection refused".to_string(),
        Some(io::ErrorKind::ConnectionReset) => return "connection reset by the server".into(),
        Some(io::ErrorKind::ConnectionAborted) => return "connection aborted".into(),
        Some(io::ErrorKind::UnexpectedEof) => {
            return "the connection closed before the end of the body".into();
        }
        _ => {}
    }
    let mut deepest: &dyn std::error::Error = error;
    while let Some(source) = deepest.source() {
        deepest = source;
    }
    let text = deepest.to_string();
    // "… (os error 111)" means nothing to a user.
    let text = match text.find(" (os error") {
        Some(at) => text[..at].to_string(),
        None => text,
    };
    if error.is_connect() && !text.contains("connect") {
        format!("cannot connect: {text}")
    } else {
        text
    }
}

/// The kind of the innermost I/O error behind `error`, if there is one.
fn io_kind(error: &reqwest::Error) -> Option<io::ErrorKind> {
    let mut kind = None;
    let mut current = error.source();
    while let Some(source) = current {
        // An io::Error wrapping another (reqwest wraps the TLS layer's
        // InvalidData in an Other) hides it from `source()`: unwrap by hand.
        let mut io = source.downcast_ref::<io::Error>();
        while let Some(error) = io {
            kind = Some(error.kind());
            io = error.get_ref().and_then(|inner| inner.downcast_ref());
        }
        current = source.source();
    }
    kind
}

/// "60s", "0.2s".
fn seconds(duration: Duration) -> String {
    format!("{}s", duration.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_forms() {
        assert_eq!(
            parse_content_range("bytes 100-999/1000"),
            Some(ContentRange::Bytes {
                start: 100,
                end: 999,
                total: Some(1000)
            })
        );
        assert_eq!(
            parse_content_range("bytes 0-9/*"),
            Some(ContentRange::Bytes {
                start: 0,
                end: 9,
                total: None
            })
        );
        assert_eq!(
            parse_content_range("bytes */1000"),
            Some(ContentRange::Unsatisfied { total: 1000 })
        );
    }

    #[test]
    fn content_range_rejects_nonsense() {
        for value in [
            "",
            "bytes",
            "items 0-9/10",
            "bytes 9-0/10",
            "bytes 0-10/10",
            "bytes 0-9",
            "bytes a-9/10",
            "bytes -1-9/10",
            "bytes */*",
        ] {
            assert_eq!(parse_content_range(value), None, "{value:?}");
        }
    }

    #[test]
    fn retry_after_seconds_only() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(
            header::RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn which_statuses_are_retried() {
        for code in [408, 429, 500, 502, 503, 504] {
            assert!(
                retryable_status(StatusCode::from_u16(code).unwrap()),
                "{code}"
            );
        }
        for code in [400, 401, 403, 404, 410, 416] {
            assert!(
                !retryable_status(StatusCode::from_u16(code).unwrap()),
                "{code}"
            );
        }
        assert_eq!(
            status_text(StatusCode::SERVICE_UNAVAILABLE),
            "503 Service Unavailable"
        );
    }

    #[test]
    fn weak_etags_are_not_validators() {
        let mut headers = HeaderMap::new();
        headers.insert(header::ETAG, HeaderValue::from_static("W/\"x\""));
        assert_eq!(validator(&headers), None);
        headers.insert(
            header::LAST_MODIFIED,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(
            validator(&headers),
            Some(HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"))
        );
        headers.insert(header::ETAG, HeaderValue::from_static("\"x\""));
        assert_eq!(validator(&headers), Some(HeaderValue::from_static("\"x\"")));
    }
}
