//! Fetching inputs over HTTP(S) (and `file://`): retries, resume, hash
//! verification, progress.
//!
//! This module decides nothing about *what* to fetch: the lockfile and the
//! planner say which URLs and which hash; the fetcher makes the bytes at
//! `dest` be exactly those bytes, or fails saying why.
//!
//! For each [`FetchRequest`] the mirrors are tried in order. On one mirror:
//!
//! - the body streams to `<dest>.part` and is hashed on the way (on a
//!   thread of its own, beside the writes), so a 1 GiB input costs about
//!   10 MiB of buffers, not 1 GiB;
//! - connection errors, timeouts (no byte for [`FetchOptions::read_timeout`]),
//!   408, 429 and 5xx are retried up to [`FetchOptions::retries`] times with
//!   exponential backoff and full jitter (`Retry-After` seconds honoured,
//!   every wait capped at 30 s); other 4xx go straight to the next mirror;
//! - an attempt that breaks mid-body is resumed with `Range: bytes=N-`; the
//!   hash state is kept, and a 200 answer restarts from zero;
//! - size and sha256 are checked before `.part` is renamed to `dest`; on a
//!   mismatch the `.part` is deleted and `dest` is not created.
//!
//! A mirror that fails hands over to the next one, starting from zero: a
//! splice of two mirrors' bytes would only be caught by the final hash.
//!
//! A body that ends early is detected from `Content-Length`, the
//! `Content-Range` total or [`FetchRequest::size`]; with none of those and
//! no hash (a server that just closes the connection), a short body cannot
//! be told from a whole one, which is why requests should carry a hash.
//!
//! The API is blocking. A [`Fetcher`] owns a small tokio runtime and one
//! reqwest client (rustls with the platform's certificate verifier, proxies
//! from `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY`, `User-Agent: kiln/<version>`),
//! so connections are pooled across fetches. Its methods must not be called
//! from inside a tokio runtime.

mod backoff;
mod error;
mod file;
mod hasher;
mod http;
mod part;

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

pub use error::FetchError;

const USER_AGENT: &str = concat!("kiln/", env!("CARGO_PKG_VERSION"));

/// Tuning; [`FetchOptions::default`] suits fetching from the internet.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// How many requests [`Fetcher::fetch_all`] runs at once (0 means 1).
    pub parallel: usize,
    /// Retries per mirror after the first attempt, for failures that may
    /// pass (see the module doc); a mirror gets at most `retries + 1`
    /// attempts.
    pub retries: u32,
    /// Limit on establishing a connection (TCP and TLS).
    pub connect_timeout: Duration,
    /// Limit on silence: an attempt fails if no byte arrives for this long.
    /// Not a limit on the whole download, which may take hours.
    pub read_timeout: Duration,
    /// The first retry waits up to this long; each further one up to twice
    /// as long as the previous, capped at 30 s.
    pub backoff_base: Duration,
}

impl Default for FetchOptions {
    fn default() -> FetchOptions {
        FetchOptions {
            parallel: 4,
            retries: 5,
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
            backoff_base: Duration::from_millis(500),
        }
    }
}

/// One file to fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchRequest {
    /// Mirrors, tried in order: `http://`, `https://` or `file://`.
    pub urls: Vec<String>,
    /// The expected sha256 of the bytes, in hex. `None` only to learn the
    /// hash of something new (e.g. when locking); then any bytes are
    /// accepted and [`Fetched::sha256`] says what they were.
    pub sha256: Option<String>,
    /// The expected size in bytes, if known: a wrong size is refused before
    /// (or while) downloading rather than after.
    pub size: Option<u64>,
    /// Where the file goes. Its directory must exist; the download is
    /// written to `<dest>.part` next to it and renamed only once verified.
    /// An existing `dest` is replaced.
    pub dest: PathBuf,
}

/// A verified download, now at [`FetchRequest::dest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The mirror the bytes came from, as given in the request (not the
    /// URL any redirects led to).
    pub url: String,
    /// The sha256 of the bytes, lower-case hex.
    pub sha256: String,
    pub size: u64,
}

/// Receives progress reports; must be shareable because
/// [`Fetcher::fetch_all`] reports from several threads at once.
pub trait FetchProgress: Sync {
    /// A response (or local file) started to deliver the body; `total` is
    /// the full size when known. Called again for each resumed attempt.
    fn started(&self, url: &str, total: Option<u64>);
    /// `bytes` of the file are now downloaded (a running total, including
    /// resumed bytes; it goes back to 0 if the download restarts).
    fn advanced(&self, url: &str, bytes: u64);
    /// An attempt failed for `reason` and attempt number `attempt` (2 for
    /// the first retry) follows after a backoff.
    fn retrying(&self, url: &str, attempt: u32, reason: &str);
    /// The file from `url` is verified and at `dest`. Failures are not
    /// reported here but by the returned error.
    fn finished(&self, url: &str);
}

/// Progress reports go nowhere.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl FetchProgress for NoProgress {
    fn started(&self, _url: &str, _total: Option<u64>) {}
    fn advanced(&self, _url: &str, _bytes: u64) {}
    fn retrying(&self, _url: &str, _attempt: u32, _reason: &str) {}
    fn finished(&self, _url: &str) {}
}

/// Fetches files; create one and reuse it, so connections are reused.
pub struct Fetcher {
    options: FetchOptions,
    client: reqwest::Client,
    runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Fetcher {
    pub fn new(options: FetchOptions) -> Result<Fetcher, FetchError> {
        // Two workers drive the sockets; writing runs on the calling threads
        // (see `fetch_all`) and hashing on a thread per download, so more
        // would only idle.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("kiln-fetch")
            .enable_all()
            .build()
            .map_err(FetchError::Runtime)?;
        // reqwest's defaults already give verified TLS and the proxies from
        // the environment; redirects are followed (up to 10).
        let client = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(options.connect_timeout)
            .build()
            .map_err(FetchError::Client)?;
        Ok(Fetcher {
            options,
            client,
            runtime,
        })
    }

    pub fn options(&self) -> &FetchOptions {
        &self.options
    }

    /// Fetch one file (see the module doc), blocking until it is at
    /// `request.dest` or every mirror failed.
    ///
    /// The error for a single URL is that URL's error; for several, a
    /// [`FetchError::AllMirrorsFailed`] listing each. Local I/O errors end
    /// the fetch at once, since another mirror would meet them too.
    ///
    /// # Panics
    ///
    /// If called from inside a tokio runtime.
    pub fn fetch(
        &self,
        request: &FetchRequest,
        progress: &dyn FetchProgress,
    ) -> Result<Fetched, FetchError> {
        // block_on polls on this thread, so the blocking file writes below
        // happen here and never stall the runtime's workers.
        self.runtime.block_on(self.fetch_async(request, progress))
    }

    /// Fetch several files, `options.parallel` at a time; the results are
    /// in the order of `requests`. Two requests must not share a `dest`.
    ///
    /// # Panics
    ///
    /// If called from inside a tokio runtime.
    pub fn fetch_all(
        &self,
        requests: &[FetchRequest],
        progress: &dyn FetchProgress,
    ) -> Vec<Result<Fetched, FetchError>> {
        // One thread per concurrent fetch: each writes its file (blocking
        // work, kept off the runtime's workers) and feeds its own hash thread.
        let workers = self.options.parallel.max(1).min(requests.len());
        let next = AtomicUsize::new(0);
        let results: Vec<Mutex<Option<Result<Fetched, FetchError>>>> =
            requests.iter().map(|_| Mutex::new(None)).collect();
        std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| {
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        let Some(request) = requests.get(index) else {
                            break;
                        };
                        let result = self.fetch(request, progress);
                        *results[index].lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
                    }
                });
            }
        });
        results
            .into_iter()
            .map(|slot| {
                slot.into_inner()
                    .unwrap_or_else(|e| e.into_inner())
                    .expect("every request was fetched")
            })
            .collect()
    }

    async fn fetch_async(
        &self,
        request: &FetchRequest,
        progress: &dyn FetchProgress,
    ) -> Result<Fetched, FetchError> {
        if request.urls.is_empty() {
            return Err(FetchError::NoUrls {
                dest: request.dest.clone(),
            });
        }
        if let Some(hash) = &request.sha256
            && !(hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(FetchError::InvalidHash {
                dest: request.dest.clone(),
                hash: hash.clone(),
            });
        }
        let mut failures = Vec::new();
        for url in &request.urls {
            let result = match Source::of(url) {
                Ok(Source::Http) => {
                    http::fetch(&self.client, &self.options, url, request, progress).await
                }
                Ok(Source::File(path)) => file::fetch(url, &path, request, progress),
                Err(error) => Err(error),
            };
            match result {
                Ok(fetched) => {
                    progress.finished(url);
                    return Ok(fetched);
                }
                Err(error) if !error.is_mirror_specific() => return Err(error),
                Err(error) => failures.push(error),
            }
        }
        Err(if failures.len() == 1 {
            failures.remove(0)
        } else {
            FetchError::AllMirrorsFailed { failures }
        })
    }
}

/// Where a URL's bytes come from.
enum Source {
    Http,
    File(PathBuf),
}

impl Source {
    fn of(url: &str) -> Result<Source, FetchError> {
        let unsupported = |reason: String| FetchError::UnsupportedUrl {
            url: url.to_string(),
            reason,
        };
        let parsed =
            reqwest::Url::parse(url).map_err(|e| unsupported(format!("not a valid URL: {e}")))?;
        match parsed.scheme() {
            "http" | "https" => Ok(Source::Http),
            "file" => parsed
                .to_file_path()
                .map(Source::File)
                .map_err(|()| unsupported("not a local file path".to_string())),
            scheme => Err(unsupported(format!(
                "unsupported scheme {scheme} (kiln fetches http://, https:// and file:// URLs)"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources() {
        assert!(matches!(
            Source::of("https://example.org/x"),
            Ok(Source::Http)
        ));
        assert!(matches!(
            Source::of("http://127.0.0.1:1/x"),
            Ok(Source::Http)
        ));
        match Source::of("file:///tmp/a%20b") {
            Ok(Source::File(path)) => assert_eq!(path, PathBuf::from("/tmp/a b")),
            _ => panic!("file URL not recognised"),
        }
        let error = Source::of("ftp://example.org/x").err().unwrap();
        assert!(
            error.to_string().contains("unsupported scheme ftp"),
            "{error}"
        );
        let error = Source::of("not a url").err().unwrap();
        assert!(
            error.to_string().starts_with("not a url: not a valid URL"),
            "{error}"
        );
    }

    #[test]
    fn bad_requests_fail_before_any_io() {
        let fetcher = Fetcher::new(FetchOptions::default()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut request = FetchRequest {
            urls: vec![],
            sha256: None,
            size: None,
            dest: dir.path().join("x"),
        };
        let error = fetcher.fetch(&request, &NoProgress).unwrap_err();
        assert!(matches!(error, FetchError::NoUrls { .. }), "{error}");
        request.urls = vec!["http://127.0.0.1:1/x".into()];
        request.sha256 = Some("abc".into());
        let error = fetcher.fetch(&request, &NoProgress).unwrap_err();
        assert!(matches!(error, FetchError::InvalidHash { .. }), "{error}");
        assert!(!dir.path().join("x.part").exists());
    }

    #[test]
    fn user_agent_names_kiln_and_version() {
        assert_eq!(USER_AGENT, format!("kiln/{}", env!("CARGO_PKG_VERSION")));
    }
}
