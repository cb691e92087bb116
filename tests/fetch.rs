//! The fetcher against a real HTTP server with injected faults.
//!
//! Each test starts an axum server on 127.0.0.1:0 (its own tokio runtime on
//! a background thread) and scripts, per route, what each successive request
//! gets: the file (honouring `Range`), a status, a connection closed after N
//! body bytes, a stall after N body bytes, and so on. Faults on the wire are
//! injected below hyper, in the listener's socket wrapper, so the client sees
//! exactly what a real broken connection looks like: the wrapper reads an
//! `x-fault` header from the response head and then cuts or stalls the
//! socket at the given body offset. Every response says `Connection: close`,
//! so each connection carries exactly one response and one head to read.
//!
//! Nothing here sleeps to synchronise: the server reports its address over a
//! channel, and timeouts are the fetcher's own.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::Response;
use kiln::fetch::{
    FetchError, FetchOptions, FetchProgress, FetchRequest, Fetched, Fetcher, NoProgress,
};
use proptest::prelude::*;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// The `kiln` binary's allocator (src/main.rs), so that what the benchmark
/// (`bench_fetch_one_file`) measures, speed and peak RSS, is what kiln does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

// ---------------------------------------------------------------------------
// The server

/// What one request to a route gets.
#[derive(Debug, Clone)]
enum Step {
    /// The file; 206 for `Range: bytes=N-`, 416 past the end.
    Serve,
    /// Always 200 and the whole file, whatever `Range` says.
    IgnoreRange,
    /// The whole file with chunked encoding: no `Content-Length`.
    Chunked,
    /// Like `Chunked`, but the connection is closed after N bytes of the
    /// chunked encoding (framing included).
    ChunkedDropAfter(u64),
    /// This status, empty body.
    Status(u16),
    /// This status with `Retry-After: <seconds>`.
    RetryAfter(u16, u64),
    /// Like `Serve`, but the connection is closed after N body bytes.
    DropAfter(u64),
    /// Like `Serve`, but after N body bytes the server sends nothing more.
    StallAfter(u64),
    /// Never answers (no headers).
    Hang,
    /// 206 with a `Content-Range` that does not start where asked.
    WrongContentRange,
}

struct Route {
    body: Arc<Vec<u8>>,
    /// Request i gets `steps[i]`; the last step repeats.
    steps: Vec<Step>,
}

/// What the server saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    range: Option<String>,
    user_agent: Option<String>,
}

#[derive(Default)]
struct Shared {
    routes: Mutex<HashMap<String, Route>>,
    seen: Mutex<HashMap<String, Vec<Seen>>>,
}

struct Server {
    base: String,
    shared: Arc<Shared>,
}

impl Server {
    fn start() -> Server {
        let shared = Arc::new(Shared::default());
        let state = Arc::clone(&shared);
        let (address_tx, address_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                address_tx.send(listener.local_addr().unwrap()).unwrap();
                let app = Router::new().fallback(handle).with_state(state);
                axum::serve(FaultyListener(listener), app).await.unwrap();
            });
        });
        let address: SocketAddr = address_rx.recv().unwrap();
        Server {
            base: format!("http://{address}"),
            shared,
        }
    }

    /// Serve `body` at `path` following `steps`; returns the URL.
    fn route(&self, path: &str, body: &[u8], steps: Vec<Step>) -> String {
        assert!(!steps.is_empty());
        self.shared.routes.lock().unwrap().insert(
            path.to_string(),
            Route {
                body: Arc::new(body.to_vec()),
                steps,
            },
        );
        self.url(path)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The requests made to `path` so far, in order.
    fn seen(&self, path: &str) -> Vec<Seen> {
        let seen = self.shared.seen.lock().unwrap();
        seen.get(path).cloned().unwrap_or_default()
    }

    fn ranges(&self, path: &str) -> Vec<Option<String>> {
        self.seen(path).into_iter().map(|s| s.range).collect()
    }
}

async fn handle(State(shared): State<Arc<Shared>>, uri: Uri, headers: HeaderMap) -> Response {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .map(str::to_string)
    };
    let range = text(header::RANGE);
    let count = {
        let mut seen = shared.seen.lock().unwrap();
        let list = seen.entry(uri.path().to_string()).or_default();
        list.push(Seen {
            range: range.clone(),
            user_agent: text(header::USER_AGENT),
        });
        list.len() - 1
    };
    let (body, step) = {
        let routes = shared.routes.lock().unwrap();
        let Some(route) = routes.get(uri.path()) else {
            return respond(StatusCode::NOT_FOUND, Body::empty());
        };
        let step = route.steps[count.min(route.steps.len() - 1)].clone();
        (Arc::clone(&route.body), step)
    };
    let start = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok());
    match step {
        Step::Serve => ranged(&body, start, None),
        Step::DropAfter(n) => ranged(&body, start, Some(format!("drop {n}"))),
        Step::StallAfter(n) => ranged(&body, start, Some(format!("stall {n}"))),
        Step::IgnoreRange => ranged(&body, None, None),
        Step::Chunked => chunked(&body, None),
        Step::ChunkedDropAfter(n) => chunked(&body, Some(format!("drop {n}"))),
        Step::Status(code) => respond(StatusCode::from_u16(code).unwrap(), Body::empty()),
        Step::RetryAfter(code, seconds) => {
            let mut response = respond(StatusCode::from_u16(code).unwrap(), Body::empty());
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, seconds.into());
            response
        }
        Step::Hang => std::future::pending().await,
        Step::WrongContentRange => {
            let mut response = respond(StatusCode::PARTIAL_CONTENT, Body::from(body.to_vec()));
            let value = format!("bytes 0-{}/{}", body.len() - 1, body.len());
            response
                .headers_mut()
                .insert(header::CONTENT_RANGE, value.parse().unwrap());
            response
        }
    }
}

/// The file from `start` (206) or whole (200), with an optional fault.
fn ranged(body: &[u8], start: Option<usize>, fault: Option<String>) -> Response {
    let mut response = match start {
        None => respond(StatusCode::OK, Body::from(body.to_vec())),
        Some(start) if start >= body.len() => {
            let mut response = respond(StatusCode::RANGE_NOT_SATISFIABLE, Body::empty());
            let value = format!("bytes */{}", body.len());
            response
                .headers_mut()
                .insert(header::CONTENT_RANGE, value.parse().unwrap());
            response
        }
        Some(start) => {
            let mut response = respond(
                StatusCode::PARTIAL_CONTENT,
                Body::from(body[start..].to_vec()),
            );
            let value = format!("bytes {start}-{}/{}", body.len() - 1, body.len());
            response
                .headers_mut()
                .insert(header::CONTENT_RANGE, value.parse().unwrap());
            response
        }
    };
    if let Some(fault) = fault {
        response
            .headers_mut()
            .insert("x-fault", fault.parse().unwrap());
    }
    response
}

/// The whole file, 200, without `Content-Length`.
fn chunked(body: &[u8], fault: Option<String>) -> Response {
    // A stream body has no known length, so hyper sends it chunked.
    let stream = Body::from(body.to_vec()).into_data_stream();
    let mut response = respond(StatusCode::OK, Body::from_stream(stream));
    if let Some(fault) = fault {
        response
            .headers_mut()
            .insert("x-fault", fault.parse().unwrap());
    }
    response
}

fn respond(status: StatusCode, body: Body) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// A TCP listener whose connections obey the `x-fault` response header.
struct FaultyListener(TcpListener);

impl axum::serve::Listener for FaultyListener {
    type Io = FaultyStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (FaultyStream, SocketAddr) {
        loop {
            if let Ok((stream, address)) = self.0.accept().await {
                return (FaultyStream::new(stream), address);
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

enum Fault {
    Drop(u64),
    Stall(u64),
}

struct FaultyStream {
    inner: TcpStream,
    /// The response head written so far, until its blank line.
    head: Vec<u8>,
    /// Set once the head is complete: the fault, if any, and the body
    /// bytes written since.
    body: Option<(Option<Fault>, u64)>,
}

impl FaultyStream {
    fn new(inner: TcpStream) -> FaultyStream {
        FaultyStream {
            inner,
            head: Vec::new(),
            body: None,
        }
    }
}

fn parse_fault(head: &[u8]) -> Option<Fault> {
    let head = String::from_utf8_lossy(head);
    let line = head
        .lines()
        .find_map(|line| line.strip_prefix("x-fault: "))?;
    let (kind, n) = line.trim().split_once(' ')?;
    let n = n.parse().ok()?;
    match kind {
        "drop" => Some(Fault::Drop(n)),
        "stall" => Some(Fault::Stall(n)),
        _ => None,
    }
}

impl AsyncWrite for FaultyStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match &mut this.body {
            None => {
                // Write no further than the end of the head, so the body
                // offset is counted from its first byte.
                let tail = &this.head[this.head.len().saturating_sub(3)..];
                let mut joined = tail.to_vec();
                joined.extend_from_slice(buf);
                let limit = joined
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .map_or(buf.len(), |at| at + 4 - tail.len());
                let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &buf[..limit]))?;
                this.head.extend_from_slice(&buf[..n]);
                if this.head.ends_with(b"\r\n\r\n") {
                    this.body = Some((parse_fault(&this.head), 0));
                }
                Poll::Ready(Ok(n))
            }
            Some((None, _)) => Pin::new(&mut this.inner).poll_write(cx, buf),
            Some((Some(fault), sent)) => {
                let (Fault::Drop(limit) | Fault::Stall(limit)) = *fault;
                let allowed = limit.saturating_sub(*sent).min(buf.len() as u64) as usize;
                if allowed == 0 {
                    return match fault {
                        Fault::Drop(_) => Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::ConnectionAborted,
                            "injected fault: connection dropped",
                        ))),
                        // Never woken: the connection just goes quiet.
                        Fault::Stall(_) => Poll::Pending,
                    };
                }
                let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &buf[..allowed]))?;
                *sent += n as u64;
                Poll::Ready(Ok(n))
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl AsyncRead for FaultyStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

// ---------------------------------------------------------------------------
// Helpers

/// Deterministic pseudo-random bytes (xorshift), different per seed.
fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    let digest: [u8; 32] = Sha256::digest(bytes).into();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Small timeouts and backoff, so failures fail fast.
fn options() -> FetchOptions {
    FetchOptions {
        parallel: 4,
        retries: 5,
        connect_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_secs(5),
        backoff_base: Duration::from_millis(10),
    }
}

fn fetcher() -> Fetcher {
    Fetcher::new(options()).unwrap()
}

fn request(urls: &[&str], body: &[u8], dest: &Path) -> FetchRequest {
    FetchRequest {
        urls: urls.iter().map(|u| u.to_string()).collect(),
        sha256: Some(sha256_hex(body)),
        size: Some(body.len() as u64),
        dest: dest.to_path_buf(),
    }
}

fn part_of(dest: &Path) -> std::path::PathBuf {
    let mut name = dest.file_name().unwrap().to_os_string();
    name.push(".part");
    dest.with_file_name(name)
}

/// Checks a successful fetch: the result, the file, no `.part`.
fn assert_fetched(result: Result<Fetched, FetchError>, url: &str, body: &[u8], dest: &Path) {
    let fetched = result.unwrap_or_else(|e| panic!("fetch failed: {e}"));
    assert_eq!(
        fetched,
        Fetched {
            url: url.to_string(),
            sha256: sha256_hex(body),
            size: body.len() as u64,
        }
    );
    assert!(std::fs::read(dest).unwrap() == body, "wrong bytes at dest");
    assert!(!part_of(dest).exists(), ".part left behind");
}

fn assert_nothing_written(dest: &Path) {
    assert!(!dest.exists(), "dest was created");
    assert!(!part_of(dest).exists(), ".part left behind");
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Started(Option<u64>),
    Advanced(u64),
    Retrying(u32, String),
    Finished(String),
}

/// Records progress reports.
#[derive(Default)]
struct Recorder(Mutex<Vec<Event>>);

impl Recorder {
    fn events(&self) -> Vec<Event> {
        self.0.lock().unwrap().clone()
    }

    fn retries(&self) -> Vec<(u32, String)> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Retrying(attempt, reason) => Some((attempt, reason)),
                _ => None,
            })
            .collect()
    }
}

impl FetchProgress for Recorder {
    fn started(&self, _url: &str, total: Option<u64>) {
        self.0.lock().unwrap().push(Event::Started(total));
    }
    fn advanced(&self, _url: &str, bytes: u64) {
        self.0.lock().unwrap().push(Event::Advanced(bytes));
    }
    fn retrying(&self, _url: &str, attempt: u32, reason: &str) {
        let event = Event::Retrying(attempt, reason.to_string());
        self.0.lock().unwrap().push(event);
    }
    fn finished(&self, url: &str) {
        self.0
            .lock()
            .unwrap()
            .push(Event::Finished(url.to_string()));
    }
}

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

// ---------------------------------------------------------------------------
// Tests

#[test]
fn plain_fetch_reports_progress_and_sends_user_agent() {
    let server = Server::start();
    let body = bytes(300 * KIB, 1);
    let url = server.route("/file", &body, vec![Step::Serve]);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("file");
    let progress = Recorder::default();

    let result = fetcher().fetch(&request(&[&url], &body, &dest), &progress);
    assert_fetched(result, &url, &body, &dest);

    let events = progress.events();
    assert_eq!(
        events.first(),
        Some(&Event::Started(Some(body.len() as u64)))
    );
    assert_eq!(events.last(), Some(&Event::Finished(url.clone())));
    assert_eq!(events[events.len() - 2], Event::Advanced(body.len() as u64));
    let seen = server.seen("/file");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].range, None);
    let agent = seen[0].user_agent.as_deref().unwrap_or("");
    assert_eq!(agent, format!("kiln/{}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn dropped_connection_resumes_with_range() {
    let server = Server::start();
    let body = bytes(400 * KIB, 2);
    let cut = 123_457;
    let url = server.route("/drop", &body, vec![Step::DropAfter(cut), Step::Serve]);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("drop");
    let progress = Recorder::default();

    let result = fetcher().fetch(&request(&[&url], &body, &dest), &progress);
    assert_fetched(result, &url, &body, &dest);

    assert_eq!(
        server.ranges("/drop"),
        vec![None, Some(format!("bytes={cut}-"))]
    );
    let retries = progress.retries();
    assert_eq!(retries.len(), 1, "{retries:?}");
    assert_eq!(retries[0].0, 2);
    assert!(
        retries[0].1.contains(&format!("(at byte {cut})")),
        "{retries:?}"
    );
    // The resumed attempt starts counting from where the first stopped.
    let events = progress.events();
    let resumed = events
        .iter()
        .skip_while(|e| !matches!(e, Event::Retrying(..)))
        .find(|e| matches!(e, Event::Advanced(_)));
    assert!(
        matches!(resumed, Some(Event::Advanced(n)) if *n > cut),
        "{events:?}"
    );
}

#[test]
fn server_ignoring_range_restarts_from_zero() {
    let server = Server::start();
    let body = bytes(200 * KIB, 3);
    let url = server.route(
        "/ignore",
        &body,
        vec![Step::DropAfter(50_000), Step::IgnoreRange],
    );
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("ignore");

    let result = fetcher().fetch(&request(&[&url], &body, &dest), &NoProgress);
    assert_fetched(result, &url, &body, &dest);
    assert_eq!(
        server.ranges("/ignore"),
        vec![None, Some("bytes=50000-".to_string())]
    );
}

#[test]
fn wrong_content_range_is_not_appended() {
    let server = Server::start();
    let body = bytes(200 * KIB, 4);
    let url = server.route(
        "/badrange",
        &body,
        vec![
            Step::DropAfter(70_000),
            Step::WrongContentRange,
            Step::Serve,
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("badrange");
    let progress = Recorder::default();

    let result = fetcher().fetch(&request(&[&url], &body, &dest), &progress);
    assert_fetched(result, &url, &body, &dest);
    // After the bad answer the download started over, without Range.
    assert_eq!(
        server.ranges("/badrange"),
        vec![None, Some("bytes=70000-".to_string()), None]
    );
    assert!(progress.retries()[1].1.contains("Content-Range"));
}

#[test]
fn chunked_body_dropped_is_resumed() {
    // No Content-Length: the total is known only from the request.
    let server = Server::start();
    let body = bytes(150 * KIB, 5);
    let url = server.route(
        "/chunked",
        &body,
        vec![Step::ChunkedDropAfter(60_000), Step::Serve],
    );
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("chunked");
    let result = fetcher().fetch(&request(&[&url], &body, &dest), &NoProgress);
    assert_fetched(result, &url, &body, &dest);
    let ranges = server.ranges("/chunked");
    assert_eq!(ranges.len(), 2, "{ranges:?}");
    let resumed_at: u64 = ranges[1]
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok())
        .unwrap_or_else(|| panic!("no Range on the retry: {ranges:?}"));
    // The framing is part of the 60 000 bytes, so somewhat less arrived.
    assert!(resumed_at > 50_000 && resumed_at < 60_000, "{resumed_at}");
}

#[test]
fn service_unavailable_twice_then_ok() {
    let server = Server::start();
    let body = bytes(100 * KIB, 6);
    let url = server.route(
        "/flaky",
        &body,
        vec![Step::Status(503), Step::Status(503), Step::Serve],
    );
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("flaky");
    let progress = Recorder::default();

    let result = fetcher().fetch(&request(&[&url], &body, &dest), &progress);
    assert_fetched(result, &url, &body, &dest);
    assert_eq!(server.seen("/flaky").len(), 3);
    assert_eq!(
        progress.retries(),
        vec![
            (2, "503 Service Unavailable".to_string()),
            (3, "503 Service Unavailable".to_string())
        ]
    );
}

#[test]
fn retry_after_overrides_backoff() {
    let server = Server::start();
    let body = bytes(10 * KIB, 7);
    let url = server.route("/busy", &body, vec![Step::RetryAfter(429, 0), Step::Serve]);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("busy");
    // A backoff this long would wait up to 30 s; `Retry-After: 0` must win.
    let fetcher = Fetcher::new(FetchOptions {
        backoff_base: Duration::from_secs(3600),
        ..options()
    })
    .unwrap();

    let start = Instant::now();
    let result = fetcher.fetch(&request(&[&url], &body, &dest), &NoProgress);
    assert_fetched(result, &url, &body, &dest);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(server.seen("/busy").len(), 2);
}

#[test]
fn retries_run_out_with_a_clear_message() {
    let server = Server::start();
    let url = server.route("/down", b"", vec![Step::Status(502)]);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("down");
    let fetcher = Fetcher::new(FetchOptions {
        retries: 2,
        ..options()
    })
    .unwrap();

    let error = fetcher
        .fetch(&request(&[&url], b"x", &dest), &NoProgress)
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("{url}: 502 Bad Gateway after 3 attempts")
    );
    assert!(matches!(
        error,
        FetchError::Status {
            code: 502,
            attempts: 3,
            ..
        }
    ));
    assert_eq!(server.seen("/down").len(), 3);
    assert_nothing_written(&dest);
}

#[test]
fn client_errors_are_not_retried() {
    let server = Server::start();
    let url = server.route("/forbidden", b"", vec![Step::Status(403)]);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("forbidden");

    let error = fetcher()
        .fetch(&request(&[&url], b"x", &dest), &NoProgress)
        .unwrap_err();
    assert_eq!(error.to_string(), format!("{url}: 403 Forbidden"));
    assert_eq!(server.seen("/forbidden").len(), 1);
    assert_nothing_written(&dest);
}

#[test]
fn wrong_bytes_fail_with_both_hashes() {
    let server = Server::start();
    let served = bytes(100 * KIB, 8);
    let expected = bytes(100 * KIB, 9);
    let url = server.route("/wrong", &served, vec![Step::Serve]);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("wrong");

    let error = fetcher()
        .fetch(&request(&[&url], &expected, &dest), &NoProgress)
        .unwrap_err();
    match &error {
        FetchError::HashMismatch {
            url: u,
            expected: e,
            actual: a,
        } => {
            assert_eq!(u, &url);
            assert_eq!(e, &sha256_hex(&expected));
            assert_eq!(a, &sha256_hex(&served));
        }
        other => panic!("expected a hash mismatch, got {other}"),
    }
    let message = error.to_string();
    for part in [&url, &sha256_hex(&expected), &sha256_hex(&served)] {
        assert!(message.contains(part.as_str()), "{message} lacks {part}");
    }
    assert_nothing_written(&dest);
    // A hash mismatch is not a transient failure: one request only.
    assert_eq!(server.seen("/wrong").len(), 1);
}

#[test]
fn wrong_hash_does_not_replace_an_existing_dest() {
    let server = Server::start();
    let served = bytes(10 * KIB, 10);
    let url = server.route("/keep", &served, vec![Step::Serve]);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("keep");
    std::fs::write(&dest, b"previous").unwrap();

    let mut request = request(&[&url], b"other", &dest);
    request.size = None;
    let result = fetcher().fetch(&request, &NoProgress);
    assert!(
        matches!(result, Err(FetchError::HashMismatch { .. })),
        "{result:?}"
    );
    assert_eq!(std::fs::read(&dest).unwrap(), b"previous");
    assert!(!part_of(&dest).exists());
}

#[test]
fn announced_size_mismatch_is_refused() {
    let server = Server::start();
    let body = bytes(50 * KIB, 11);
    let url = server.route("/size", &body, vec![Step::Serve]);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("size");
    let mut request = request(&[&url], &body, &dest);
    request.size = Some(body.len() as u64 + 1);

    let error = fetcher().fetch(&request, &NoProgress).unwrap_err();
    assert!(matches!(error, FetchError::SizeMismatch { .. }), "{error}");
    assert_eq!(
        error.to_string(),
        format!(
            "{url}: size mismatch: expected {} bytes, got {}",
            body.len() + 1,
            body.len()
        )
    );
    assert_nothing_written(&dest);
}

#[test]
fn body_longer_than_expected_is_cut_short() {
    // Chunked, so the excess shows only while streaming.
    let server = Server::start();
    let body = bytes(400 * KIB, 12);
    let url = server.route("/long", &body, vec![Step::Chunked]);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("long");
    let expected = 100 * KIB as u64;
    let request = FetchRequest {
        urls: vec![url.clone()],
        sha256: None,
        size: Some(expected),
        dest: dest.clone(),
    };
    let progress = Recorder::default();

    let error = fetcher().fetch(&request, &progress).unwrap_err();
    assert!(matches!(error, FetchError::TooLarge { .. }), "{error}");
    assert!(error.to_string().contains(&url), "{error}");
    assert_nothing_written(&dest);
    let most = progress
        .events()
        .iter()
        .filter_map(|e| match e {
            Event::Advanced(n) => Some(*n),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    assert!(most <= expected, "kept {most} bytes");
}

#[test]
fn stalled_body_times_out() {
    let server = Server::start();
    let body = bytes(100 * KIB, 13);
    let url = server.route("/slow", &body, vec![Step::StallAfter(1000)]);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("slow");
    let fetcher = Fetcher::new(FetchOptions {
        retries: 1,
        read_timeout: Duration::from_millis(200),
        ..options()
    })
    .unwrap();

    let error = fetcher
        .fetch(&request(&[&url], &body, &dest), &NoProgress)
        .unwrap_err();
    assert!(
        matches!(error, FetchError::TimedOut { attempts: 2, .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains("timed out"), "{message}");
    assert!(message.contains(&url), "{message}");
    assert_eq!(
        message,
        format!("{url}: timed out waiting for data (none for 0.2s, at byte 2000) after 2 attempts")
    );
    // The second attempt resumed after the bytes the first one got.
    assert_eq!(
        server.ranges("/slow"),
        vec![None, Some("bytes=1000-".to_string())]
    );
    assert_nothing_written(&dest);
}

#[test]
fn silent_server_times_out_before_headers() {
    let server = Server::start();
    let url = server.route("/hang", b"", vec![Step::Hang]);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("hang");
    let fetcher = Fetcher::new(FetchOptions {
        retries: 0,
        // Generous for a loopback connect, so it is the answer that times out.
        connect_timeout: Duration::from_millis(500),
        read_timeout: Duration::from_millis(100),
        ..options()
    })
    .unwrap();

    let error = fetcher
        .fetch(&request(&[&url], b"x", &dest), &NoProgress)
        .unwrap_err();
    let message = error.to_string();
    assert_eq!(
        message,
        format!("{url}: timed out waiting for an answer (none for 0.6s)")
    );
    assert_nothing_written(&dest);
}

#[test]
fn second_mirror_used_when_first_is_missing() {
    let server = Server::start();
    let body = bytes(100 * KIB, 14);
    let missing = server.url("/missing");
    let url = server.route("/mirror", &body, vec![Step::Serve]);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("mirror");

    let result = fetcher().fetch(&request(&[&missing, &url], &body, &dest), &NoProgress);
    assert_fetched(result, &url, &body, &dest);
    assert_eq!(server.seen("/missing").len(), 1, "a 404 is not retried");
}

#[test]
fn second_mirror_used_when_first_has_wrong_bytes() {
    let server = Server::start();
    let body = bytes(100 * KIB, 15);
    let stale = server.route("/stale", &bytes(100 * KIB, 16), vec![Step::Serve]);
    let url = server.route("/good", &body, vec![Step::Serve]);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("good");

    let result = fetcher().fetch(&request(&[&stale, &url], &body, &dest), &NoProgress);
    assert_fetched(result, &url, &body, &dest);
}

#[test]
fn all_mirrors_failing_lists_each() {
    let server = Server::start();
    let first = server.route("/unavailable", b"", vec![Step::Status(503)]);
    // A port nobody listens on: bind, note it, close.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/x", listener.local_addr().unwrap())
    };
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("all");
    let fetcher = Fetcher::new(FetchOptions {
        retries: 1,
        ..options()
    })
    .unwrap();

    let error = fetcher
        .fetch(&request(&[&first, &closed], b"x", &dest), &NoProgress)
        .unwrap_err();
    assert!(matches!(&error, FetchError::AllMirrorsFailed { failures } if failures.len() == 2));
    assert_eq!(
        error.to_string(),
        format!(
            "all 2 mirrors failed: {first}: 503 Service Unavailable after 2 attempts; \
             {closed}: connection refused after 2 attempts"
        )
    );
    assert_nothing_written(&dest);
}

#[test]
fn tls_failure_is_not_retried() {
    // TLS to a plain-HTTP port: the handshake fails the same way every time.
    let server = Server::start();
    let url = server.url("/tls").replace("http://", "https://");
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("tls");

    let error = fetcher()
        .fetch(&request(&[&url], b"x", &dest), &NoProgress)
        .unwrap_err();
    assert!(
        matches!(&error, FetchError::Transfer { attempts: 1, .. }),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .starts_with(&format!("{url}: cannot connect: ")),
        "{error}"
    );
    assert_nothing_written(&dest);
}

#[test]
fn file_urls_are_read_locally() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source file");
    let body = bytes(300 * KIB, 17);
    std::fs::write(&source, &body).unwrap();
    let url = reqwest::Url::from_file_path(&source).unwrap().to_string();
    assert!(url.contains("%20"), "{url}");
    let dest = dir.path().join("copy");

    let result = fetcher().fetch(&request(&[&url], &body, &dest), &NoProgress);
    assert_fetched(result, &url, &body, &dest);

    // Wrong hash from a file is refused like from a server.
    let other = dir.path().join("other");
    let error = fetcher()
        .fetch(&request(&[&url], b"nope", &other), &NoProgress)
        .unwrap_err();
    assert!(matches!(error, FetchError::SizeMismatch { .. }), "{error}");
    assert_nothing_written(&other);

    // A missing file names the path.
    let missing = reqwest::Url::from_file_path(dir.path().join("missing"))
        .unwrap()
        .to_string();
    let error = fetcher()
        .fetch(&request(&[&missing], b"x", &other), &NoProgress)
        .unwrap_err();
    assert!(matches!(error, FetchError::Local { .. }), "{error}");
    assert!(error.to_string().contains("missing"), "{error}");
}

#[test]
fn unknown_hash_is_learned() {
    let server = Server::start();
    let body = bytes(64 * KIB, 18);
    let url = server.route("/learn", &body, vec![Step::Serve]);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("learn");
    let request = FetchRequest {
        urls: vec![url.clone()],
        sha256: None,
        size: None,
        dest: dest.clone(),
    };
    let result = fetcher().fetch(&request, &NoProgress);
    assert_fetched(result, &url, &body, &dest);
}

#[test]
fn fetch_all_keeps_input_order() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let mut requests = Vec::new();
    let mut bodies = Vec::new();
    for i in 0..8u64 {
        let body = bytes(100 * KIB + i as usize * 1000, 100 + i);
        // Some need a retry or a resume, so they finish out of order.
        let steps = match i % 3 {
            0 => vec![Step::Serve],
            1 => vec![Step::Status(500), Step::Serve],
            _ => vec![Step::DropAfter(10_000), Step::Serve],
        };
        let url = server.route(&format!("/many/{i}"), &body, steps);
        requests.push(request(
            &[&url],
            &body,
            &dir.path().join(format!("many-{i}")),
        ));
        bodies.push(body);
    }
    // One request that fails, in the middle.
    requests.insert(
        4,
        request(&[&server.url("/many/none")], b"x", &dir.path().join("none")),
    );
    let fetcher = Fetcher::new(FetchOptions {
        parallel: 3,
        ..options()
    })
    .unwrap();

    let progress = Recorder::default();
    let results = fetcher.fetch_all(&requests, &progress);
    assert_eq!(results.len(), 9);
    let mut bodies = bodies.into_iter();
    for (request, result) in requests.iter().zip(results) {
        if request.dest.ends_with("none") {
            let error = result.unwrap_err();
            assert!(
                error.to_string().contains("/many/none: 404 Not Found"),
                "{error}"
            );
        } else {
            let body = bodies.next().unwrap();
            assert_fetched(result, &request.urls[0], &body, &request.dest);
        }
    }
    let finished = progress
        .events()
        .iter()
        .filter(|e| matches!(e, Event::Finished(_)))
        .count();
    assert_eq!(finished, 8);
}

/// Bodies larger than the fetcher's buffers (the hash queue, the writeback
/// step, the switch to O_DIRECT at 16 MiB, a `file://` read): resumes keep
/// the hash state and a restart resets it, however much is queued for
/// hashing at the time, and whether the file is being written through the
/// page cache or directly.
#[test]
fn large_bodies_resume_restart_and_copy() {
    let server = Server::start();
    let body = bytes(24 * MIB + 12_345, 8);
    // Not on a buffer boundary, so that a partial buffer is carried over;
    // the second resume and the restart happen in the direct-write region.
    let (cut, late_cut) = (9 * MIB as u64 + 3, 20 * MIB as u64 + 7);
    let dir = tempfile::tempdir().unwrap();
    // Hashing in a debug build is slow: the expected hash once.
    let base = request(&[], &body, &dir.path().join("unused"));
    let fetch = |url: &str, name: &str| {
        let dest = dir.path().join(name);
        let request = FetchRequest {
            urls: vec![url.to_string()],
            dest: dest.clone(),
            ..base.clone()
        };
        (fetcher().fetch(&request, &NoProgress), dest)
    };

    let url = server.route(
        "/resumed",
        &body,
        vec![Step::DropAfter(cut), Step::DropAfter(cut), Step::Serve],
    );
    let (result, dest) = fetch(&url, "resumed");
    assert_fetched(result, &url, &body, &dest);
    assert_eq!(
        server.ranges("/resumed"),
        vec![
            None,
            Some(format!("bytes={cut}-")),
            Some(format!("bytes={}-", 2 * cut)),
        ]
    );

    let url = server.route(
        "/restarted",
        &body,
        vec![Step::DropAfter(late_cut), Step::IgnoreRange],
    );
    let (result, dest) = fetch(&url, "restarted");
    assert_fetched(result, &url, &body, &dest);

    let body = &body[..2 * MIB + 12_345];
    let source = dir.path().join("source");
    std::fs::write(&source, body).unwrap();
    let url = reqwest::Url::from_file_path(&source).unwrap().to_string();
    let dest = dir.path().join("copied");
    let result = fetcher().fetch(&request(&[&url], body, &dest), &NoProgress);
    assert_fetched(result, &url, body, &dest);
}

#[test]
fn missing_destination_directory_is_a_local_error() {
    let server = Server::start();
    let url = server.route("/nodir", b"abc", vec![Step::Serve]);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("no/such/dir/file");
    let second = server.route("/nodir2", b"abc", vec![Step::Serve]);
    let error = fetcher()
        .fetch(&request(&[&url, &second], b"abc", &dest), &NoProgress)
        .unwrap_err();
    assert!(matches!(error, FetchError::Io { .. }), "{error}");
    assert!(
        error.to_string().contains("no/such/dir/file.part"),
        "{error}"
    );
    // Not the mirror's fault, so the second one is not asked.
    assert_eq!(server.seen("/nodir2").len(), 0);
}

// ---------------------------------------------------------------------------
// Resume at random points

fn shared_server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(Server::start)
}

fn shared_fetcher() -> &'static Fetcher {
    static FETCHER: OnceLock<Fetcher> = OnceLock::new();
    FETCHER.get_or_init(|| {
        Fetcher::new(FetchOptions {
            backoff_base: Duration::from_millis(1),
            ..options()
        })
        .unwrap()
    })
}

const RESUME_LEN: u64 = 256 * 1024;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// The connection drops at 1–4 random offsets (possibly the same one
    /// twice, possibly 0); every retry asks for exactly the bytes it lacks,
    /// and the result is the whole file.
    #[test]
    fn resume_after_random_drops(
        cuts in proptest::collection::vec(0..RESUME_LEN, 1..=4),
        seed in any::<u64>(),
    ) {
        let mut cuts = cuts;
        cuts.sort_unstable();
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = format!("/resume/{id}");
        let server = shared_server();
        let body = bytes(RESUME_LEN as usize, seed);
        let mut steps: Vec<Step> = Vec::new();
        let mut at = 0;
        for &cut in &cuts {
            steps.push(Step::DropAfter(cut - at));
            at = cut;
        }
        steps.push(Step::Serve);
        let url = server.route(&path, &body, steps);
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("resumed");

        let result = shared_fetcher().fetch(&request(&[&url], &body, &dest), &NoProgress);
        assert_fetched(result, &url, &body, &dest);

        let mut expected = vec![None];
        expected.extend(cuts.iter().map(|&cut| (cut > 0).then(|| format!("bytes={cut}-"))));
        prop_assert_eq!(server.ranges(&path), expected);
    }
}

// ---------------------------------------------------------------------------
// Benchmark entry point (benches/fetch.sh)

/// Fetch `KILN_BENCH_URL` to `KILN_BENCH_DEST`, checking `KILN_BENCH_SHA256`,
/// with the default options. Run by `benches/fetch.sh`, which times it.
#[test]
#[ignore = "benchmark entry point; run by benches/fetch.sh"]
fn bench_fetch_one_file() {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set (see benches/fetch.sh)"))
    };
    let request = FetchRequest {
        urls: vec![var("KILN_BENCH_URL")],
        sha256: Some(var("KILN_BENCH_SHA256")),
        size: None,
        dest: var("KILN_BENCH_DEST").into(),
    };
    let fetcher = Fetcher::new(FetchOptions::default()).unwrap();
    if let Err(error) = fetcher.fetch(&request, &NoProgress) {
        panic!("{error}");
    }
}
