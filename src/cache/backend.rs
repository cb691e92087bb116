//! One storage type over S3, a directory and memory, chosen by URL.
//!
//! [`CacheBackend`] wraps an [`object_store`] store and gives the cache the
//! few operations it needs, with a blocking API (kiln's build pipeline is
//! synchronous): each backend owns a small tokio runtime, so call it from
//! plain threads, never from inside an async runtime (tokio panics on a
//! nested `block_on`). It is `Sync`: many threads may share one.
//!
//! Uploads are "put if absent" ([`CacheBackend::put_if_absent`]). Where the
//! backend supports conditional writes (memory, directories, S3 servers that
//! honour `If-None-Match: *`) the object is created only if no object has the
//! key, atomically. On an S3 server that refuses conditional writes (or with
//! `AWS_CONDITIONAL_PUT=disabled`), and for uploads large enough to go up in
//! parts, it checks with HEAD and then writes: two pushers may both write,
//! which is harmless because cache objects are content-addressed — both
//! write the same bytes, and S3 replaces an object atomically.
//!
//! Large objects stream: [`CacheBackend::put_if_absent_from`] reads its
//! input in parts of [`PART_SIZE`] and uploads them as a multipart upload,
//! and [`CacheBackend::get_to`] writes the object out as it arrives, so a
//! 1 GiB NAR is never in memory whole.
//!
//! Opening an `s3://` cache makes one LIST request, so a wrong bucket,
//! rejected credentials or an unreachable endpoint fail at once, with a
//! hint, rather than on the first push. Its settings come from the
//! `AWS_*` environment variables and the AWS profile (see
//! [`super::aws_profile`]); the hints name whichever was used.

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::client::{HttpError, HttpErrorKind};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;
use object_store::{
    ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig, WriteMultipart,
};

use super::aws_profile::{self, ProfileError, Sources};
use super::key::{BadKey, CacheKey};

/// Parts of a streamed upload, and the threshold above which an upload
/// goes up in parts (S3 needs at least 5 MiB per part but the last).
pub const PART_SIZE: usize = 8 * 1024 * 1024;

/// Parts uploaded at once; a streamed upload holds at most this many parts
/// plus the one being read in memory.
const PARTS_IN_FLIGHT: usize = 4;

/// Retries of a failed request (connection refused, 5xx, timeouts). Few,
/// so an unreachable endpoint is reported in seconds, not minutes.
const MAX_RETRIES: usize = 4;

/// Attempts of a conditional write that S3 answers with 409 (another
/// conditional write of the key was in flight).
const CONFLICT_ATTEMPTS: usize = 3;

/// What [`CacheBackend::put_if_absent`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// The object was written.
    Created,
    /// An object with the key was already there; nothing was written.
    AlreadyPresent,
}

/// A failed cache operation. Every variant names the cache URL (which never
/// holds credentials: they come from the environment or an AWS profile),
/// and none shows a secret.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(
        "{url}: not a cache URL: {reason}\n  \
         hint: use s3://BUCKET/PREFIX, file:///ABSOLUTE/PATH or memory://"
    )]
    BadUrl { url: String, reason: String },
    #[error(transparent)]
    BadKey(#[from] BadKey),
    #[error("{url}: cannot create the cache directory {}: {source}", path.display())]
    CreateDirectory {
        url: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{url}: cannot set up the cache: {source}")]
    Setup {
        url: String,
        source: Box<object_store::Error>,
    },
    #[error("{url}: {source}")]
    Profile { url: String, source: ProfileError },
    #[error("cannot start the cache's async runtime: {0}")]
    Runtime(io::Error),
    #[error(
        "{url}: bucket {bucket:?} not found\n  \
         hint: create it, or check the bucket name and the endpoint ({endpoint_from})"
    )]
    BucketNotFound {
        url: String,
        bucket: String,
        /// Where the endpoint was set, e.g. `AWS_ENDPOINT_URL`.
        endpoint_from: String,
    },
    #[error(
        "{url}: the credentials were rejected ({detail})\n  \
         hint: check {credentials_from}"
    )]
    CredentialsRejected {
        url: String,
        detail: String,
        /// Where the credentials came from: the variables or a profile.
        credentials_from: String,
    },
    #[error(
        "{url}: access denied to {key:?} ({detail})\n  \
         hint: the credentials are valid but lack permission on this bucket or prefix"
    )]
    AccessDenied {
        url: String,
        key: String,
        detail: String,
    },
    #[error(
        "{url}: the endpoint is unreachable ({detail})\n  \
         hint: check {endpoint_from}, that the server runs, and the network"
    )]
    Unreachable {
        url: String,
        detail: String,
        /// Where the endpoint was set, e.g. `AWS_ENDPOINT_URL`.
        endpoint_from: String,
    },
    #[error("{url}: {operation} {key:?}: {source}")]
    Storage {
        url: String,
        operation: &'static str,
        key: String,
        source: Box<object_store::Error>,
    },
    #[error("{url}: {operation} {key:?}: {source}")]
    Io {
        url: String,
        operation: &'static str,
        key: String,
        source: io::Error,
    },
}

/// Which kind of store a URL chose.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Memory,
    Directory,
    S3 { bucket: String, sources: Sources },
}

/// A binary cache's object storage. See the module documentation.
#[derive(Debug)]
pub struct CacheBackend {
    url: String,
    kind: Kind,
    store: Arc<dyn ObjectStore>,
    runtime: tokio::runtime::Runtime,
    /// Cleared when the server refuses conditional writes; from then on
    /// [`CacheBackend::put_if_absent`] checks with HEAD, then writes.
    conditional_put: AtomicBool,
}

impl CacheBackend {
    /// Open the cache at `url`, reading S3 settings from the process
    /// environment (see [`CacheBackend::open_with_env`]).
    pub fn open(url: &str) -> Result<CacheBackend, CacheError> {
        Self::open_with_env(url, std::env::vars())
    }

    /// Open the cache at `url`: `s3://BUCKET/PREFIX`, `file:///PATH` (the
    /// directory is created if missing) or `memory://`.
    ///
    /// For `s3://`, every `AWS_*` variable in `env` that object_store knows
    /// configures the client: `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_S3`,
    /// `AWS_REGION` / `AWS_DEFAULT_REGION`, `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_ALLOW_HTTP`,
    /// `AWS_CONDITIONAL_PUT`, …. The AWS profile (`AWS_PROFILE`, default
    /// `default`, from `AWS_SHARED_CREDENTIALS_FILE` and `AWS_CONFIG_FILE`,
    /// default under `$HOME/.aws`) supplies the credentials, region and
    /// endpoint the variables do not; `HOME` is `env`'s too. Plain
    /// `http://` is allowed by itself for a loopback endpoint.
    pub fn open_with_env(
        url: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<CacheBackend, CacheError> {
        let bad = |reason: &str| CacheError::BadUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let parsed = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        if !parsed.username().is_empty() || parsed.password().is_some() {
            // Never echo credentials back: the error names the scheme only.
            return Err(CacheError::BadUrl {
                url: format!("{}://…", parsed.scheme()),
                reason: "credentials do not belong in the URL; set AWS_ACCESS_KEY_ID and \
                         AWS_SECRET_ACCESS_KEY in the environment, or use an AWS profile"
                    .to_owned(),
            });
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(bad("it has a query or fragment"));
        }
        // The parser resolves `a/../b` to `b`; refuse it instead, as keys do.
        let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
        if after_scheme.split('/').any(|segment| {
            matches!(
                segment.to_ascii_lowercase().replace("%2e", ".").as_str(),
                "." | ".."
            )
        }) {
            return Err(bad("it has a `.` or `..` segment"));
        }
        let (kind, store): (Kind, Arc<dyn ObjectStore>) = match parsed.scheme() {
            "memory" => {
                if parsed.host_str().is_some_and(|h| !h.is_empty())
                    || !matches!(parsed.path(), "" | "/")
                {
                    return Err(bad("memory:// takes no host or path"));
                }
                (Kind::Memory, Arc::new(InMemory::new()))
            }
            "file" => {
                if parsed
                    .host_str()
                    .is_some_and(|h| !h.is_empty() && h != "localhost")
                {
                    return Err(bad("file:// takes no host (write file:///ABSOLUTE/PATH)"));
                }
                let path = parsed
                    .to_file_path()
                    .map_err(|()| bad("not an absolute path"))?;
                std::fs::create_dir_all(&path).map_err(|source| CacheError::CreateDirectory {
                    url: url.to_owned(),
                    path: path.clone(),
                    source,
                })?;
                let local = LocalFileSystem::new_with_prefix(&path)
                    .map_err(|source| CacheError::Setup {
                        url: url.to_owned(),
                        source: Box::new(source),
                    })?
                    .with_fsync(true);
                (Kind::Directory, Arc::new(local))
            }
            "s3" => {
                let bucket = parsed
                    .host_str()
                    .filter(|h| !h.is_empty())
                    .ok_or_else(|| bad("no bucket (write s3://BUCKET/PREFIX)"))?
                    .to_owned();
                let prefix = parsed.path().trim_matches('/');
                let settings =
                    aws_profile::resolve(env.into_iter().collect()).map_err(|source| {
                        CacheError::Profile {
                            url: url.to_owned(),
                            source,
                        }
                    })?;
                let s3 = s3_builder(&bucket, settings.vars)
                    .build()
                    .map_err(|source| CacheError::Setup {
                        url: url.to_owned(),
                        source: Box::new(source),
                    })?;
                let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
                    Arc::new(s3)
                } else {
                    // Checked like a key, so the prefix cannot be `..`.
                    let prefix = CacheKey::new(prefix)
                        .map_err(|e| bad(&format!("bad prefix: {}", e.reason)))?;
                    Arc::new(PrefixStore::new(s3, prefix.as_str()))
                };
                let sources = settings.sources;
                (Kind::S3 { bucket, sources }, store)
            }
            other => return Err(bad(&format!("unknown scheme {other:?}"))),
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("kiln-cache")
            .enable_all()
            .build()
            .map_err(CacheError::Runtime)?;
        let backend = CacheBackend {
            url: url.to_owned(),
            kind,
            store,
            runtime,
            conditional_put: AtomicBool::new(true),
        };
        if matches!(backend.kind, Kind::S3 { .. }) {
            backend.probe()?;
        }
        Ok(backend)
    }

    /// The URL the cache was opened with.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The object at `key`; `None` when there is none.
    pub fn get(&self, key: &CacheKey) -> Result<Option<Bytes>, CacheError> {
        let path = object_path(key);
        self.runtime
            .block_on(async {
                match self.store.get(&path).await {
                    Ok(result) => result.bytes().await.map(Some),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(e),
                }
            })
            .map_err(|e| self.error("get", key, e))
    }

    /// Write the object at `key` to `writer` as it arrives; its size, or
    /// `None` (and nothing written) when there is none.
    pub fn get_to(
        &self,
        key: &CacheKey,
        writer: &mut dyn Write,
    ) -> Result<Option<u64>, CacheError> {
        let path = object_path(key);
        self.runtime.block_on(async {
            let result = match self.store.get(&path).await {
                Ok(result) => result,
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(self.error("get", key, e)),
            };
            let mut stream = result.into_stream();
            let mut size = 0;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| self.error("get", key, e))?;
                writer
                    .write_all(&chunk)
                    .map_err(|source| self.io_error("get", key, source))?;
                size += chunk.len() as u64;
            }
            Ok(Some(size))
        })
    }

    /// The size of the object at `key`; `None` when there is none.
    pub fn size(&self, key: &CacheKey) -> Result<Option<u64>, CacheError> {
        let path = object_path(key);
        self.runtime
            .block_on(self.head(&path))
            .map_err(|e| self.error("head", key, e))
    }

    /// Whether there is an object at `key`.
    pub fn exists(&self, key: &CacheKey) -> Result<bool, CacheError> {
        Ok(self.size(key)?.is_some())
    }

    /// Write `bytes` at `key` unless an object is already there (which is
    /// then left as it is). Safe to call from many threads and machines at
    /// once for the same key and the same bytes: all succeed, one object.
    pub fn put_if_absent(
        &self,
        key: &CacheKey,
        bytes: impl Into<Bytes>,
    ) -> Result<Stored, CacheError> {
        let path = object_path(key);
        let payload = PutPayload::from(bytes.into());
        self.runtime
            .block_on(self.put_if_absent_async(&path, payload))
            .map_err(|e| self.error("put", key, e))
    }

    /// [`CacheBackend::put_if_absent`] for an object read from `reader`,
    /// which is uploaded in parts when it is larger than [`PART_SIZE`] (and
    /// not read at all past the first part if the object is already there).
    pub fn put_if_absent_from(
        &self,
        key: &CacheKey,
        reader: &mut dyn Read,
    ) -> Result<Stored, CacheError> {
        let first = read_part(reader).map_err(|e| self.io_error("put", key, e))?;
        if first.len() < PART_SIZE {
            return self.put_if_absent(key, first);
        }
        let path = object_path(key);
        self.runtime.block_on(async {
            let present = self
                .head(&path)
                .await
                .map_err(|e| self.error("head", key, e))?;
            if present.is_some() {
                return Ok(Stored::AlreadyPresent);
            }
            let upload = self
                .store
                .put_multipart(&path)
                .await
                .map_err(|e| self.error("put", key, e))?;
            let mut upload = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
            upload.put(first);
            loop {
                let waited = upload.wait_for_capacity(PARTS_IN_FLIGHT).await;
                // The part is read on this (the caller's) thread while
                // the runtime's workers upload the parts before it.
                let part = match waited {
                    Ok(()) => read_part(reader).map_err(|e| self.io_error("put", key, e)),
                    Err(e) => Err(self.error("put", key, e)),
                };
                match part {
                    Ok(part) if part.is_empty() => break,
                    Ok(part) => upload.put(part),
                    Err(error) => {
                        // Best effort: the error that stopped us is the one to report.
                        let _ = upload.abort().await;
                        return Err(error);
                    }
                }
            }
            upload
                .finish()
                .await
                .map_err(|e| self.error("put", key, e))?;
            Ok(Stored::Created)
        })
    }

    /// Write `bytes` at `key`, replacing any object there (for mutable
    /// objects; store paths go through [`CacheBackend::put_if_absent`]).
    pub fn put(&self, key: &CacheKey, bytes: impl Into<Bytes>) -> Result<(), CacheError> {
        let path = object_path(key);
        let payload = PutPayload::from(bytes.into());
        self.runtime
            .block_on(self.store.put(&path, payload))
            .map(drop)
            .map_err(|e| self.error("put", key, e))
    }

    /// Every key under the directory `prefix` (segment-wise: `nar` holds
    /// `nar/x` but not `narinfo`), or every key, sorted. Objects whose
    /// names are not valid keys (not written by kiln) are left out.
    pub fn list(&self, prefix: Option<&CacheKey>) -> Result<Vec<CacheKey>, CacheError> {
        let path = prefix.map(object_path);
        let mut keys = self
            .runtime
            .block_on(async {
                let mut keys = Vec::new();
                let mut stream = self.store.list(path.as_ref());
                while let Some(meta) = stream.next().await {
                    if let Ok(key) = CacheKey::new(meta?.location.as_ref()) {
                        keys.push(key);
                    }
                }
                Ok(keys)
            })
            .map_err(|e| {
                let key = prefix.map_or("", CacheKey::as_str);
                self.error_at("list", key, e)
            })?;
        keys.sort();
        Ok(keys)
    }

    /// Remove the object at `key`; removing an absent key succeeds.
    pub fn delete(&self, key: &CacheKey) -> Result<(), CacheError> {
        let path = object_path(key);
        self.runtime
            .block_on(async {
                match self.store.delete(&path).await {
                    Err(object_store::Error::NotFound { .. }) => Ok(()),
                    other => other,
                }
            })
            .map_err(|e| self.error("delete", key, e))
    }

    /// HEAD: the size, or `None` when absent.
    async fn head(&self, path: &ObjectPath) -> object_store::Result<Option<u64>> {
        match self.store.head(path).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn put_if_absent_async(
        &self,
        path: &ObjectPath,
        payload: PutPayload,
    ) -> object_store::Result<Stored> {
        for _ in 0..CONFLICT_ATTEMPTS {
            if !self.conditional_put.load(Ordering::Relaxed) {
                break;
            }
            let options = PutOptions::from(PutMode::Create);
            match self.store.put_opts(path, payload.clone(), options).await {
                Ok(_) => return Ok(Stored::Created),
                // 412: S3 found an object; AlreadyExists: memory and
                // directories found one, or S3 said 409 (a conditional
                // write in flight), which HEAD tells apart.
                Err(object_store::Error::Precondition { .. }) => {
                    return Ok(Stored::AlreadyPresent);
                }
                Err(object_store::Error::AlreadyExists { .. }) => {
                    if self.head(path).await?.is_some() {
                        return Ok(Stored::AlreadyPresent);
                    }
                }
                Err(e) if refuses_conditional_put(&e) => {
                    self.conditional_put.store(false, Ordering::Relaxed);
                }
                Err(e) => return Err(e),
            }
        }
        // HEAD, then PUT: a race only writes the same bytes twice.
        if self.head(path).await?.is_some() {
            return Ok(Stored::AlreadyPresent);
        }
        self.store.put(path, payload).await?;
        Ok(Stored::Created)
    }

    /// One LIST of the prefix, so S3 problems show when the cache is opened.
    fn probe(&self) -> Result<(), CacheError> {
        self.runtime
            .block_on(async {
                match self.store.list(None).next().await {
                    Some(Err(e)) => Err(e),
                    _ => Ok(()),
                }
            })
            .map_err(|e| self.error_at("list", "", e))
    }

    fn error(
        &self,
        operation: &'static str,
        key: &CacheKey,
        error: object_store::Error,
    ) -> CacheError {
        self.error_at(operation, key.as_str(), error)
    }

    /// Turn an object_store error into the [`CacheError`] that says what
    /// to fix, from S3's error code where there is one.
    fn error_at(
        &self,
        operation: &'static str,
        key: &str,
        error: object_store::Error,
    ) -> CacheError {
        let url = self.url.clone();
        let text = error_chain(&error);
        let code = s3_error_code(&text);
        let mut credentials_from = aws_profile::ENV_CREDENTIALS.to_owned();
        if let Kind::S3 { bucket, sources } = &self.kind {
            if code.as_deref() == Some("NoSuchBucket") {
                return CacheError::BucketNotFound {
                    url,
                    bucket: bucket.clone(),
                    endpoint_from: sources.endpoint.clone(),
                };
            }
            if let Some(detail) = connection_failure(&error) {
                return CacheError::Unreachable {
                    url,
                    detail,
                    endpoint_from: sources.endpoint.clone(),
                };
            }
            credentials_from.clone_from(&sources.credentials);
        }
        let rejected = [
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "ExpiredToken",
            "InvalidToken",
        ];
        match (&error, code) {
            (_, Some(code)) if rejected.contains(&code.as_str()) => {
                CacheError::CredentialsRejected {
                    url,
                    detail: code,
                    credentials_from,
                }
            }
            (object_store::Error::Unauthenticated { .. }, code) => {
                CacheError::CredentialsRejected {
                    url,
                    detail: code.unwrap_or_else(|| "401 Unauthorized".to_owned()),
                    credentials_from,
                }
            }
            (object_store::Error::PermissionDenied { .. }, code) => CacheError::AccessDenied {
                url,
                key: key.to_owned(),
                detail: code.unwrap_or_else(|| "403 Forbidden".to_owned()),
            },
            _ => CacheError::Storage {
                url,
                operation,
                key: key.to_owned(),
                source: Box::new(error),
            },
        }
    }

    fn io_error(&self, operation: &'static str, key: &CacheKey, source: io::Error) -> CacheError {
        CacheError::Io {
            url: self.url.clone(),
            operation,
            key: key.as_str().to_owned(),
            source,
        }
    }
}

/// The S3 client for `bucket`, configured from the `AWS_*` variables.
fn s3_builder(bucket: &str, env: Vec<(String, String)>) -> AmazonS3Builder {
    let mut builder = AmazonS3Builder::new();
    for (name, value) in env {
        if let Some(rest) = name.strip_prefix("AWS_")
            && let Ok(key) = format!("aws_{}", rest.to_ascii_lowercase()).parse()
        {
            builder = builder.with_config(key, value);
        }
    }
    let endpoint = builder
        .get_config_value(&AmazonS3ConfigKey::S3Endpoint)
        .or_else(|| builder.get_config_value(&AmazonS3ConfigKey::Endpoint));
    if endpoint.as_deref().is_some_and(is_loopback_http) {
        builder = builder.with_allow_http(true);
    }
    let retry = RetryConfig {
        max_retries: MAX_RETRIES,
        retry_timeout: Duration::from_secs(60),
        ..RetryConfig::default()
    };
    builder.with_bucket_name(bucket).with_retry(retry)
}

/// Whether `endpoint` is `http://` on this machine (where TLS buys
/// nothing, and test servers live).
fn is_loopback_http(endpoint: &str) -> bool {
    let Ok(url) = url::Url::parse(endpoint) else {
        return false;
    };
    url.scheme() == "http"
        && match url.host() {
            Some(url::Host::Domain(domain)) => domain == "localhost",
            Some(url::Host::Ipv4(address)) => address.is_loopback(),
            Some(url::Host::Ipv6(address)) => address.is_loopback(),
            None => false,
        }
}

fn object_path(key: &CacheKey) -> ObjectPath {
    // A valid key has no characters object_store would escape.
    ObjectPath::from(key.as_str())
}

/// Up to [`PART_SIZE`] bytes from `reader`; fewer only at its end.
fn read_part(reader: &mut dyn Read) -> io::Result<Bytes> {
    let mut part = Vec::with_capacity(PART_SIZE);
    reader.take(PART_SIZE as u64).read_to_end(&mut part)?;
    Ok(Bytes::from(part))
}

/// Whether `error` says the server does not do conditional writes
/// (`AWS_CONDITIONAL_PUT=disabled`, or an S3 server answering 501).
fn refuses_conditional_put(error: &object_store::Error) -> bool {
    matches!(error, object_store::Error::NotImplemented { .. })
        || error_chain(error).contains("501 Not Implemented")
        || s3_error_code(&error_chain(error)).as_deref() == Some("NotImplemented")
}

/// The error and its sources, joined.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// The `<Code>` of an S3 error response quoted in `text`.
fn s3_error_code(text: &str) -> Option<String> {
    let start = text.find("<Code>")? + "<Code>".len();
    let end = start + text[start..].find("</Code>")?;
    Some(text[start..end].to_owned())
}

/// A short description when `error` is a failure to reach the server.
fn connection_failure(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(inner) = source {
        if let Some(http) = inner.downcast_ref::<HttpError>()
            && matches!(http.kind(), HttpErrorKind::Connect | HttpErrorKind::Timeout)
        {
            let mut detail = http.to_string();
            let mut cause = std::error::Error::source(http);
            while let Some(next) = cause {
                detail = next.to_string();
                cause = next.source();
            }
            return Some(detail);
        }
        source = inner.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let open = |url: &str| CacheBackend::open_with_env(url, []);
        assert!(open("memory://").is_ok());
        for (url, reason) in [
            ("memory://host", "no host or path"),
            ("memory:///path", "no host or path"),
            ("ftp://host/x", "unknown scheme"),
            ("file://host/x", "no host"),
            ("s3:///prefix", "no bucket"),
            ("s3://bucket/a/../b", "`..` segment"),
            ("file:///tmp/%2E%2e/x", "`..` segment"),
            ("s3://bucket/a%20b", "bad prefix"),
            ("s3://bucket/x?y=1", "query"),
            ("not a url", "relative URL"),
        ] {
            let error = open(url).unwrap_err().to_string();
            assert!(error.contains(reason), "{url}: {error}");
        }
    }

    #[test]
    fn credentials_in_the_url_are_refused_and_not_echoed() {
        let error = CacheBackend::open_with_env("s3://AKIA:secret@bucket/x", [])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("credentials do not belong in the URL"),
            "{error}"
        );
        assert!(
            !error.contains("secret") && !error.contains("AKIA"),
            "{error}"
        );
    }

    #[test]
    fn loopback_endpoints() {
        assert!(is_loopback_http("http://127.0.0.1:9000"));
        assert!(is_loopback_http("http://localhost:9000/"));
        assert!(is_loopback_http("http://[::1]:9000"));
        assert!(!is_loopback_http("https://127.0.0.1:9000"));
        assert!(!is_loopback_http("http://s3.example.com"));
    }

    #[test]
    fn s3_error_codes() {
        let text = "Server returned non-2xx status code: 404 Not Found: \
                    <?xml version=\"1.0\"?><Error><Code>NoSuchBucket</Code></Error>";
        assert_eq!(s3_error_code(text).as_deref(), Some("NoSuchBucket"));
        assert_eq!(s3_error_code("no code here"), None);
    }

    #[test]
    fn file_urls_create_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("a/b");
        let url = format!("file://{}", root.display());
        let backend = CacheBackend::open_with_env(&url, []).unwrap();
        assert!(root.is_dir());
        assert_eq!(backend.url(), url);
    }
}
