//! Resolve OCI image references (`traefik:v3.1`) to the manifest digest they
//! point to right now, so `lockfile.toml` can pin `name@sha256:…`.
//!
//! # Protocol
//!
//! This is the pull side of the [OCI distribution spec], which Docker Hub,
//! ghcr.io and the reference registry (`distribution`) all speak:
//!
//! 1. `HEAD /v2/<repository>/manifests/<tag>` with an `Accept` header that
//!    names the four manifest types we understand ([`ACCEPT_MANIFESTS`]). The
//!    registry answers with the manifest's digest in `Docker-Content-Digest`
//!    ([pulling manifests]). HEAD comes first because Docker Hub counts
//!    manifest GETs, not HEADs, against its pull rate limit. Without the full
//!    `Accept` list, `distribution` 2.8 answers 404 for an OCI index and tries
//!    a schema-1 down-conversion for Docker manifests.
//! 2. `GET /v2/<repository>/manifests/<digest>` for the body. GETting by the
//!    digest HEAD reported, not by the tag again, means a tag that moves
//!    between the two requests cannot mix two manifests. The body's media
//!    type says whether it is an index ([image index], or a Docker manifest
//!    list) or a single [image manifest]. For an index we record each
//!    platform's manifest digest. For a single manifest we read its config
//!    blob (`GET /v2/<repository>/blobs/<digest>`) for `os` and
//!    `architecture`. Every body is hashed and must match the digest it was
//!    fetched by: the spec leaves verification to the client.
//! 3. On `401` the registry names a token service in
//!    `WWW-Authenticate: Bearer realm="…",service="…",scope="…"`
//!    ([token authentication]). We GET a token from the realm, anonymously or
//!    with HTTP Basic credentials read from the environment variables named
//!    in [`ResolverOptions::credentials`], and retry with
//!    `Authorization: Bearer <token>`.
//!
//! The top-level digest (the index, when there is one) is what gets pinned:
//! it is what `docker pull name@sha256:…` expects, and it covers every
//! platform. Per-platform digests are metadata.
//!
//! Reference parsing follows Docker's normalisation ([distribution/reference]):
//! a first path component containing `.` or `:`, or equal to `localhost`, is
//! a registry host; anything else is on Docker Hub, whose API lives at
//! `registry-1.docker.io` and whose single-name repositories live under
//! `library/`.
//!
//! [OCI distribution spec]: https://github.com/opencontainers/distribution-spec/blob/main/spec.md
//! [pulling manifests]: https://github.com/opencontainers/distribution-spec/blob/main/spec.md#pulling-manifests
//! [image index]: https://github.com/opencontainers/image-spec/blob/main/image-index.md
//! [image manifest]: https://github.com/opencontainers/image-spec/blob/main/manifest.md
//! [token authentication]: https://github.com/distribution/distribution/blob/main/docs/content/spec/auth/token.md
//! [distribution/reference]: https://github.com/distribution/reference/blob/main/normalize.go

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use reqwest::header::{
    ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, WWW_AUTHENTICATE,
};
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

/// The name Docker Hub goes by in references (`docker.io/library/redis`).
pub const DOCKER_HUB: &str = "docker.io";
/// The host that serves Docker Hub's registry API.
pub const DOCKER_HUB_REGISTRY: &str = "registry-1.docker.io";
/// Every spelling of Docker Hub that Docker itself accepts in a reference.
const DOCKER_HUB_ALIASES: [&str; 3] = [DOCKER_HUB, "index.docker.io", DOCKER_HUB_REGISTRY];

/// An [OCI image index](https://github.com/opencontainers/image-spec/blob/main/image-index.md).
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker's manifest list, the pre-OCI multi-platform index.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// An [OCI image manifest](https://github.com/opencontainers/image-spec/blob/main/manifest.md).
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker's image manifest, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// The `Accept` header sent for manifests: exactly the four types above, one
/// comma-separated header (registries accept this and the repeated-header form
/// alike). Leaving one out changes what `distribution` 2.8 answers, see the
/// module docs.
pub const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// Image config media types whose `os`/`architecture` we read.
const CONFIG_TYPES: [&str; 2] = [
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];

/// `distribution` refuses manifests over 4 MiB, so anything larger is not a
/// manifest, and stopping there keeps a hostile server from filling memory.
const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// Image configs carry the build history and can outgrow manifests.
const MAX_CONFIG_BYTES: usize = 16 << 20;
/// Token responses and error bodies are small JSON documents.
const MAX_SMALL_BYTES: usize = 1 << 20;

/// Something went wrong resolving an image reference. Every variant names the
/// reference, and those about a request also name its URL.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// The reference does not parse.
    #[error("invalid image reference `{reference}`: {reason}")]
    InvalidReference { reference: String, reason: String },

    /// The registry has no such tag (or digest, or repository).
    #[error("{reference}: {what} not found ({url} answered 404 Not Found)")]
    NotFound {
        reference: String,
        /// What was looked up, e.g. "tag `1.0`".
        what: String,
        url: String,
    },

    /// The registry (or its token service) refused us.
    #[error("{reference}: unauthorized at {url}: {detail}")]
    Unauthorized {
        reference: String,
        url: String,
        detail: String,
    },

    /// The content does not hash to the digest it was fetched by.
    #[error(
        "{reference}: digest mismatch at {url}: expected {expected}, the content hashes to {actual}"
    )]
    DigestMismatch {
        reference: String,
        url: String,
        expected: String,
        actual: String,
    },

    /// The manifest is of a type we cannot pin (schema 1, an artifact type…).
    #[error("{reference}: unsupported manifest media type `{media_type}` at {url}")]
    UnsupportedMediaType {
        reference: String,
        url: String,
        media_type: String,
    },

    /// The manifest (or config) is not what the spec says it should be.
    #[error("{reference}: invalid manifest at {url}: {reason}")]
    InvalidManifest {
        reference: String,
        url: String,
        reason: String,
    },

    /// The answer was larger than any manifest, config or token response
    /// should be; reading stopped there.
    #[error("{reference}: {url} sent more than {limit} bytes; stopped reading")]
    TooLarge {
        reference: String,
        url: String,
        limit: usize,
    },

    /// Any other HTTP error status, e.g. "429 Too Many Requests".
    #[error("{reference}: {url} answered {status}{detail}")]
    Status {
        reference: String,
        url: String,
        status: String,
        /// The registry's own error code and message, when it sent one.
        detail: String,
    },

    /// The request failed without an answer: refused, timed out, TLS…
    #[error("{reference}: request to {url} failed: {reason}")]
    Request {
        reference: String,
        url: String,
        reason: String,
    },

    /// The HTTP client could not be set up (e.g. no usable TLS roots).
    #[error("cannot set up the HTTP client for image resolution: {0}")]
    Client(#[source] reqwest::Error),

    /// The async runtime behind the blocking API could not be started.
    #[error("cannot start the image resolver's runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// A parsed image reference.
///
/// `traefik:v3.1` is registry `registry-1.docker.io`, repository
/// `library/traefik`, tag `v3.1`; `127.0.0.1:5000/demo/hello:1.0` is
/// registry `127.0.0.1:5000`, repository `demo/hello`; `name@sha256:…` is
/// already pinned. With neither tag nor digest the tag is `latest`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    /// The API host, with port if any (`registry-1.docker.io` for Docker Hub).
    pub registry: String,
    /// The repository path inside the registry (`library/traefik`).
    pub repository: String,
    /// The tag, `None` only when the reference is pinned by digest alone.
    pub tag: Option<String>,
    /// `sha256:<64 hex>`, when pinned.
    pub digest: Option<String>,
}

impl Reference {
    /// Check the fields; they are public, so a hand-built reference could put
    /// `..` or `?` into the URL path.
    fn validate(&self) -> Result<(), OciError> {
        let invalid = |reason: String| OciError::InvalidReference {
            reference: self.to_string(),
            reason,
        };
        check_registry(&self.registry).map_err(invalid)?;
        check_repository(&self.repository).map_err(invalid)?;
        if let Some(tag) = &self.tag {
            check_tag(tag).map_err(invalid)?;
        }
        if let Some(digest) = &self.digest {
            check_digest(digest).map_err(invalid)?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = OciError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: String| OciError::InvalidReference {
            reference: s.to_owned(),
            reason,
        };
        if s.is_empty() {
            return Err(invalid("empty reference".into()));
        }
        if s.chars().any(char::is_whitespace) {
            return Err(invalid("contains whitespace".into()));
        }

        let (name_and_tag, digest) = match s.split_once('@') {
            Some((name, digest)) => {
                check_digest(digest).map_err(invalid)?;
                (name, Some(digest.to_owned()))
            }
            None => (s, None),
        };
        // The tag is after a `:` in the last path component; an earlier `:`
        // is a registry port (`127.0.0.1:5000/demo/hello`).
        let last = name_and_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_and_tag[last..].rfind(':') {
            Some(i) => (
                &name_and_tag[..last + i],
                Some(&name_and_tag[last + i + 1..]),
            ),
            None => (name_and_tag, None),
        };
        if let Some(tag) = tag {
            check_tag(tag).map_err(invalid)?;
        }

        // Docker's rule for "is the first component a host": it has a `.` or
        // a `:`, is `localhost`, or has upper case (never valid in a path).
        let (registry, path) = match name.split_once('/') {
            Some((first, rest))
                if first.contains(['.', ':'])
                    || first == "localhost"
                    || first.chars().any(|c| c.is_ascii_uppercase()) =>
            {
                (first.to_ascii_lowercase(), rest)
            }
            _ => (DOCKER_HUB.to_owned(), name),
        };
        check_registry(&registry).map_err(invalid)?;
        let registry = api_host(&registry).to_owned();
        let repository = if registry == DOCKER_HUB_REGISTRY && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_owned()
        };
        check_repository(&repository).map_err(invalid)?;

        let tag = match (tag, &digest) {
            (Some(tag), _) => Some(tag.to_owned()),
            (None, None) => Some("latest".to_owned()),
            (None, Some(_)) => None,
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }
}

impl fmt::Display for Reference {
    /// The canonical form, `docker.io/library/traefik:v3.1`: always with the
    /// registry, Docker Hub under the name users know.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let registry = if is_docker_hub(&self.registry) {
            DOCKER_HUB
        } else {
            &self.registry
        };
        write!(f, "{registry}/{}", self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

fn is_docker_hub(registry: &str) -> bool {
    DOCKER_HUB_ALIASES.contains(&registry)
}

/// `host[:port]`, the host a DNS name, an IPv4 address or a bracketed IPv6
/// address.
fn check_registry(registry: &str) -> Result<(), String> {
    let bad = || format!("invalid registry host `{registry}`");
    let (host_ok, port) = match registry.strip_prefix('[') {
        Some(rest) => {
            let (v6, after) = rest.split_once(']').ok_or_else(bad)?;
            let port = match after {
                "" => None,
                _ => Some(after.strip_prefix(':').ok_or_else(bad)?),
            };
            (v6.parse::<std::net::Ipv6Addr>().is_ok(), port)
        }
        None => {
            let (host, port) = match registry.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (registry, None),
            };
            let label_ok = |label: &str| {
                !label.is_empty()
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            };
            (host.split('.').all(label_ok), port)
        }
    };
    let port_ok =
        port.is_none_or(|p| p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok());
    if host_ok && port_ok {
        Ok(())
    } else {
        Err(bad())
    }
}

/// The spec's name grammar: `/`-separated components of lowercase letters and
/// digits, joined inside a component by `.`, `_`, `__` or runs of `-`.
fn check_repository(repository: &str) -> Result<(), String> {
    fn component_ok(c: &str) -> bool {
        let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        let bytes = c.as_bytes();
        if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
            return false;
        }
        let mut i = 0;
        while i < bytes.len() {
            if alnum(bytes[i]) {
                i += 1;
                continue;
            }
            let start = i;
            while i < bytes.len() && !alnum(bytes[i]) {
                i += 1;
            }
            let sep = &c[start..i];
            if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-')) {
                return false;
            }
        }
        true
    }
    if repository.is_empty() {
        return Err("empty repository name".into());
    }
    // Docker caps the whole name (registry included) at 255 characters, so
    // a longer repository alone would be refused by the registry anyway.
    if repository.len() > 255 {
        return Err(format!(
            "repository name is longer than 255 characters ({})",
            repository.len()
        ));
    }
    if !repository.split('/').all(component_ok) {
        return Err(format!(
            "invalid repository name `{repository}` (lowercase letters, digits and `.`, `_`, `-` separators)"
        ));
    }
    Ok(())
}

/// The spec's tag grammar, `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
fn check_tag(tag: &str) -> Result<(), String> {
    let ok = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-';
    let bytes = tag.as_bytes();
    let valid = !bytes.is_empty()
        && bytes.len() <= 128
        && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
        && bytes.iter().all(|&b| ok(b));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid tag `{tag}` (letters, digits, `_`, `.`, `-`; at most 128)"
        ))
    }
}

/// Only sha256: it is what every registry uses, and what we can verify.
fn check_digest(digest: &str) -> Result<(), String> {
    match digest.split_once(':') {
        Some(("sha256", hex)) if is_sha256_hex(hex) => Ok(()),
        Some(("sha256", _)) => Err(format!(
            "invalid digest `{digest}` (sha256 needs 64 lowercase hex digits)"
        )),
        Some((algorithm, _)) => Err(format!(
            "unsupported digest algorithm `{algorithm}` (only sha256)"
        )),
        None => Err(format!(
            "invalid digest `{digest}` (expected `sha256:<hex>`)"
        )),
    }
}

fn is_sha256_hex(hex: &str) -> bool {
    hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn sha256_digest(bytes: &[u8]) -> String {
    let hash: [u8; 32] = Sha256::digest(bytes).into();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in hash {
        out.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
        out.push(char::from_digit(u32::from(b & 0xf), 16).unwrap_or('0'));
    }
    out
}

/// What a tag (or digest) points to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Resolved {
    /// The canonical reference that was resolved, `docker.io/library/traefik:v3.1`.
    pub reference: String,
    /// `sha256:…` of the manifest (or index) the reference points to: the pin.
    pub digest: String,
    /// The media type of that manifest.
    pub media_type: String,
    /// `os/architecture[/variant]` → that platform's manifest digest. For a
    /// single manifest, its own platform when its config says, else empty.
    pub platforms: BTreeMap<String, String>,
}

/// Names of environment variables holding credentials for one registry.
///
/// The credentials are sent (as HTTP Basic) only to the token service that
/// registry names, or to the registry itself if it asks for Basic auth, and
/// only over https unless the registry is listed as insecure. If either
/// variable is unset or empty the registry is accessed anonymously, so a
/// build without secrets can still resolve public images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialsEnv {
    /// The registry as written in references (`ghcr.io`, `docker.io`, `host:port`).
    pub registry: String,
    pub username_var: String,
    pub password_var: String,
}

/// How a [`Resolver`] talks to registries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolverOptions {
    /// `host:port` of registries served over plain http, e.g. `127.0.0.1:5000`.
    /// Everything else is https.
    pub insecure_registries: Vec<String>,
    /// Limit for each request, from connecting to the last byte of the body.
    pub timeout: Duration,
    /// Where to find credentials, per registry.
    pub credentials: Vec<CredentialsEnv>,
}

impl Default for ResolverOptions {
    fn default() -> Self {
        ResolverOptions {
            insecure_registries: Vec::new(),
            timeout: Duration::from_secs(30),
            credentials: Vec::new(),
        }
    }
}

/// A username and password. `Debug` leaves the password out so that neither
/// can end up in a log by way of `{:?}`.
#[derive(Clone)]
struct Credentials {
    username: String,
    password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Resolves references against registries. Blocking: it runs its own small
/// async runtime, so call it from plain threads, not from inside an async
/// runtime (tokio panics on a nested `block_on`).
#[derive(Debug)]
pub struct Resolver {
    runtime: tokio::runtime::Runtime,
    /// Honours the system proxy settings.
    client: reqwest::Client,
    /// For loopback hosts, which a proxy could not reach anyway (its
    /// 127.0.0.1 is not ours).
    direct: reqwest::Client,
    timeout: Duration,
    insecure: BTreeSet<String>,
    /// By API host.
    credentials: BTreeMap<String, Credentials>,
}

impl Resolver {
    /// Set up the HTTP clients and read credentials from the environment.
    pub fn new(options: ResolverOptions) -> Result<Resolver, OciError> {
        Self::with_env(options, |name| std::env::var(name).ok())
    }

    /// [`Resolver::new`] with the environment lookup passed in, so tests need
    /// not change the process environment.
    fn with_env(
        options: ResolverOptions,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Resolver, OciError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(OciError::Runtime)?;
        let builder = || {
            // The default redirect policy drops `Authorization` when a
            // redirect leaves the host, as the spec requires.
            reqwest::Client::builder()
                .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
                .connect_timeout(options.timeout)
                .timeout(options.timeout)
        };
        let client = builder().build().map_err(OciError::Client)?;
        let direct = builder().no_proxy().build().map_err(OciError::Client)?;
        let insecure = options
            .insecure_registries
            .iter()
            .map(|r| api_host(&r.to_ascii_lowercase()).to_owned())
            .collect();
        let mut credentials = BTreeMap::new();
        for entry in &options.credentials {
            let username = env(&entry.username_var).unwrap_or_default();
            let password = env(&entry.password_var).unwrap_or_default();
            if !username.is_empty() && !password.is_empty() {
                let host = api_host(&entry.registry.to_ascii_lowercase()).to_owned();
                credentials.insert(host, Credentials { username, password });
            }
        }
        Ok(Resolver {
            runtime,
            client,
            direct,
            timeout: options.timeout,
            insecure,
            credentials,
        })
    }

    /// Find the digest `reference` points to, and its platforms.
    pub fn resolve(&self, reference: &Reference) -> Result<Resolved, OciError> {
        reference.validate()?;
        self.runtime.block_on(self.resolve_async(reference))
    }

    async fn resolve_async(&self, reference: &Reference) -> Result<Resolved, OciError> {
        let host = api_host(&reference.registry);
        let scheme = if self.insecure.contains(host) {
            "http"
        } else {
            "https"
        };
        let mut session = Session {
            resolver: self,
            reference: reference.to_string(),
            base: format!("{scheme}://{host}/v2/{}", reference.repository),
            host: host.to_owned(),
            repository: reference.repository.clone(),
            authorization: None,
            authenticated: false,
        };

        // A digest wins over a tag, as in `docker pull name:tag@digest`.
        let (target, what) = match (&reference.digest, &reference.tag) {
            (Some(digest), _) => (digest.as_str(), format!("digest `{digest}`")),
            (None, Some(tag)) => (tag.as_str(), format!("tag `{tag}`")),
            (None, None) => {
                return Err(OciError::InvalidReference {
                    reference: session.reference,
                    reason: "neither a tag nor a digest".into(),
                });
            }
        };

        let head_url = session.url(&format!("manifests/{target}"))?;
        let head = session
            .send(Method::HEAD, &head_url, Some(ACCEPT_MANIFESTS))
            .await?;
        let head_digest = if head.status().is_success() {
            // Older registries may leave the header out (the spec's
            // implementer note); the GET below then computes it.
            header_digest(head.headers())
        } else if head.status() == StatusCode::METHOD_NOT_ALLOWED {
            // A proxy or registry without HEAD support: GET does the work.
            None
        } else {
            return Err(session.status_error(head, &head_url, &what).await);
        };
        if let (Some(pinned), Some(seen)) = (&reference.digest, &head_digest)
            && pinned != seen
        {
            return Err(OciError::DigestMismatch {
                reference: session.reference,
                url: head_url.to_string(),
                expected: pinned.clone(),
                actual: seen.clone(),
            });
        }

        let get_target = head_digest.as_deref().unwrap_or(target);
        let get_url = session.url(&format!("manifests/{get_target}"))?;
        let response = session
            .send(Method::GET, &get_url, Some(ACCEPT_MANIFESTS))
            .await?;
        if !response.status().is_success() {
            return Err(session.status_error(response, &get_url, &what).await);
        }
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or("").trim().to_owned());
        let get_digest = header_digest(response.headers());
        let body = session
            .read_body(response, &get_url, MAX_MANIFEST_BYTES)
            .await?;
        let digest = sha256_digest(&body);
        // Whichever digest we were told (HEAD, the pin, the GET's header)
        // must be the one the bytes have.
        for expected in [&head_digest, &reference.digest, &get_digest]
            .into_iter()
            .flatten()
        {
            if *expected != digest {
                return Err(OciError::DigestMismatch {
                    reference: session.reference,
                    url: get_url.to_string(),
                    expected: expected.clone(),
                    actual: digest,
                });
            }
        }

        let manifest: Manifest =
            serde_json::from_slice(&body).map_err(|e| OciError::InvalidManifest {
                reference: session.reference.clone(),
                url: get_url.to_string(),
                reason: format!("not a JSON manifest: {e}"),
            })?;
        // The body's own `mediaType` is covered by the digest; the header is
        // not, so it only fills in when the body is silent.
        let media_type = manifest
            .media_type
            .clone()
            .or(content_type)
            .unwrap_or_default();
        let platforms = match media_type.as_str() {
            OCI_INDEX | DOCKER_MANIFEST_LIST => index_platforms(&manifest),
            OCI_MANIFEST | DOCKER_MANIFEST => {
                session
                    .config_platform(&manifest, &digest, &get_url)
                    .await?
            }
            _ => {
                return Err(OciError::UnsupportedMediaType {
                    reference: session.reference,
                    url: get_url.to_string(),
                    media_type: if media_type.is_empty() {
                        "(none)".into()
                    } else {
                        media_type
                    },
                });
            }
        };

        Ok(Resolved {
            reference: session.reference,
            digest,
            media_type,
            platforms,
        })
    }

    /// Proxies are for reaching the outside; skip them for loopback.
    fn client_for(&self, url: &Url) -> &reqwest::Client {
        let host = url.host_str().unwrap_or("");
        let loopback = host == "localhost"
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if loopback { &self.direct } else { &self.client }
    }
}

/// The `docker.io` aliases all mean `registry-1.docker.io`.
fn api_host(registry: &str) -> &str {
    if is_docker_hub(registry) {
        DOCKER_HUB_REGISTRY
    } else {
        registry
    }
}

/// A `Docker-Content-Digest` we can verify against, if there is one.
fn header_digest(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("docker-content-digest")?.to_str().ok()?.trim();
    check_digest(value).is_ok().then(|| value.to_owned())
}

/// The parts of an index or manifest we read.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    media_type: Option<String>,
    #[serde(default)]
    manifests: Vec<Descriptor>,
    config: Option<Descriptor>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: Option<String>,
    digest: String,
    platform: Option<Platform>,
}

/// Both a descriptor's `platform` and an image config use these names.
#[derive(Debug, Deserialize)]
struct Platform {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    variant: Option<String>,
}

impl Platform {
    /// `linux/arm64`, `linux/arm/v7`. BuildKit lists its attestations as
    /// `unknown/unknown`; they are not platforms anyone runs.
    fn key(&self) -> Option<String> {
        let known = |s: &str| !s.is_empty() && s != "unknown";
        if !known(&self.os) || !known(&self.architecture) {
            return None;
        }
        Some(match self.variant.as_deref() {
            Some(variant) if !variant.is_empty() => {
                format!("{}/{}/{variant}", self.os, self.architecture)
            }
            _ => format!("{}/{}", self.os, self.architecture),
        })
    }
}

fn index_platforms(index: &Manifest) -> BTreeMap<String, String> {
    let mut platforms = BTreeMap::new();
    for entry in &index.manifests {
        if let Some(key) = entry.platform.as_ref().and_then(Platform::key) {
            // Clients pick the first matching entry of an index, so the
            // first one is the one that runs; later duplicates (Windows
            // images listing several `os.version`s) are shadowed.
            platforms.entry(key).or_insert_with(|| entry.digest.clone());
        }
    }
    platforms
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, PartialEq, Eq)]
struct Challenge {
    /// Lowercase: `bearer`, `basic`.
    scheme: String,
    params: BTreeMap<String, String>,
}

/// Parse one `WWW-Authenticate` value, `Bearer realm="…",service="…"`.
/// Values may be quoted (with `\` escapes) and the quoted scope contains
/// commas (`repository:x:pull,push`), so this is not a `split(',')`.
fn parse_challenge(value: &str) -> Option<Challenge> {
    let value = value.trim();
    let (scheme, mut rest) = match value.split_once(char::is_whitespace) {
        Some((scheme, rest)) => (scheme, rest.trim_start()),
        None => (value, ""),
    };
    if scheme.is_empty() {
        return None;
    }
    let mut params = BTreeMap::new();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let key = key.trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (val, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            let mut val = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => val.extend(chars.next().map(|(_, c)| c)),
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => val.push(c),
                }
            }
            (val, &quoted[end?..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_owned(), &after[end..])
        };
        params.insert(key, val);
        rest = remaining.trim_start().trim_start_matches(',').trim_start();
    }
    Some(Challenge {
        scheme: scheme.to_ascii_lowercase(),
        params,
    })
}

/// The token service's answer; `access_token` is the OAuth2 spelling.
#[derive(Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
}

/// What to send the registry once it has asked for authentication.
enum Authorization<'a> {
    /// A token from the registry's token service.
    Bearer(HeaderValue),
    /// The registry asked for HTTP Basic itself.
    Basic(&'a Credentials),
}

/// One resolution: the reference, its base URL and the authorization
/// obtained so far (shared by the HEAD, GET and config requests, which all
/// need the same `pull` scope).
struct Session<'a> {
    resolver: &'a Resolver,
    reference: String,
    /// `scheme://host/v2/repository`.
    base: String,
    host: String,
    repository: String,
    authorization: Option<Authorization<'a>>,
    /// We answered a 401 once already; a second one is final.
    authenticated: bool,
}

impl<'a> Session<'a> {
    fn url(&self, path: &str) -> Result<Url, OciError> {
        let url = format!("{}/{path}", self.base);
        Url::parse(&url).map_err(|e| OciError::InvalidReference {
            reference: self.reference.clone(),
            reason: format!("cannot form the URL {url}: {e}"),
        })
    }

    fn request_error(&self, url: &Url, error: &reqwest::Error) -> OciError {
        let reason = if error.is_timeout() {
            format!("timed out after {:?}", self.resolver.timeout)
        } else {
            // reqwest's own message is "error sending request for url …";
            // the innermost cause ("Connection refused", a TLS alert) is the
            // part worth reading.
            let mut cause: &dyn std::error::Error = error;
            while let Some(next) = cause.source() {
                cause = next;
            }
            cause.to_string()
        };
        OciError::Request {
            reference: self.reference.clone(),
            url: url.to_string(),
            reason,
        }
    }

    async fn send_once(
        &self,
        method: &Method,
        url: &Url,
        accept: Option<&str>,
    ) -> Result<reqwest::Response, OciError> {
        let mut request = self
            .resolver
            .client_for(url)
            .request(method.clone(), url.clone());
        if let Some(accept) = accept {
            request = request.header(ACCEPT, accept);
        }
        match &self.authorization {
            Some(Authorization::Bearer(token)) => {
                request = request.header(AUTHORIZATION, token.clone())
            }
            Some(Authorization::Basic(credentials)) => {
                request = request.basic_auth(&credentials.username, Some(&credentials.password));
            }
            None => {}
        }
        request
            .send()
            .await
            .map_err(|e| self.request_error(url, &e))
    }

    /// Send, and on the first 401 authenticate as the challenge says and
    /// send again. Any other status is the caller's to judge.
    async fn send(
        &mut self,
        method: Method,
        url: &Url,
        accept: Option<&str>,
    ) -> Result<reqwest::Response, OciError> {
        let response = self.send_once(&method, url, accept).await?;
        if response.status() != StatusCode::UNAUTHORIZED || self.authenticated {
            return Ok(response);
        }
        self.authenticated = true;
        let challenges: Vec<Challenge> = response
            .headers()
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(parse_challenge)
            .collect();
        self.authorization = Some(self.authenticate(&challenges, url).await?);
        self.send_once(&method, url, accept).await
    }

    fn unauthorized(&self, url: &Url, detail: String) -> OciError {
        OciError::Unauthorized {
            reference: self.reference.clone(),
            url: url.to_string(),
            detail,
        }
    }

    /// Credentials for this registry, if configured and if they would not
    /// cross the network in clear text (`url` is where they would go).
    fn credentials_for(&self, url: &Url) -> Option<&'a Credentials> {
        let credentials = self.resolver.credentials.get(&self.host)?;
        (url.scheme() == "https" || self.resolver.insecure.contains(&self.host))
            .then_some(credentials)
    }

    async fn authenticate(
        &self,
        challenges: &[Challenge],
        url: &Url,
    ) -> Result<Authorization<'a>, OciError> {
        if let Some(bearer) = challenges.iter().find(|c| c.scheme == "bearer") {
            return self
                .bearer_token(bearer, url)
                .await
                .map(Authorization::Bearer);
        }
        if challenges.iter().any(|c| c.scheme == "basic") {
            let Some(credentials) = self.credentials_for(url) else {
                return Err(self.unauthorized(
                    url,
                    format!(
                        "the registry wants a username and password; none are configured for {}",
                        self.host
                    ),
                ));
            };
            return Ok(Authorization::Basic(credentials));
        }
        Err(self.unauthorized(
            url,
            "401 Unauthorized without a Bearer or Basic `WWW-Authenticate` challenge".into(),
        ))
    }

    /// Step 2 of the token flow: GET `realm?service=…&scope=…`.
    async fn bearer_token(
        &self,
        challenge: &Challenge,
        url: &Url,
    ) -> Result<HeaderValue, OciError> {
        let Some(realm) = challenge.params.get("realm") else {
            return Err(self.unauthorized(url, "the Bearer challenge names no realm".into()));
        };
        let mut token_url = match Url::parse(realm) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => u,
            _ => {
                return Err(self.unauthorized(
                    url,
                    format!("the Bearer challenge's realm `{realm}` is not an http(s) URL"),
                ));
            }
        };
        // The scope a registry names is the one it will check; build the
        // standard pull scope only if it names none.
        let scope = challenge
            .params
            .get("scope")
            .cloned()
            .unwrap_or_else(|| format!("repository:{}:pull", self.repository));
        {
            let mut query = token_url.query_pairs_mut();
            if let Some(service) = challenge.params.get("service") {
                query.append_pair("service", service);
            }
            query.append_pair("scope", &scope);
        }

        let mut request = self.resolver.client_for(&token_url).get(token_url.clone());
        if let Some(credentials) = self.credentials_for(&token_url) {
            // reqwest marks the header sensitive, keeping it out of its logs.
            request = request.basic_auth(&credentials.username, Some(&credentials.password));
        }
        let response = request
            .send()
            .await
            .map_err(|e| self.request_error(&token_url, &e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(self.unauthorized(
                url,
                format!(
                    "the token service at {token_url} answered {}",
                    status_text(status)
                ),
            ));
        }
        let body = self
            .read_body(response, &token_url, MAX_SMALL_BYTES)
            .await?;
        let parsed: Option<TokenResponse> = serde_json::from_slice(&body).ok();
        let token = parsed
            .and_then(|t| t.token.filter(|t| !t.is_empty()).or(t.access_token))
            .filter(|t| !t.is_empty());
        let Some(token) = token else {
            return Err(self.unauthorized(
                url,
                format!("the token service at {token_url} sent no token"),
            ));
        };
        let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            self.unauthorized(
                url,
                format!("the token service at {token_url} sent an unusable token"),
            )
        })?;
        value.set_sensitive(true);
        Ok(value)
    }

    /// Read a body, refusing more than `limit` bytes.
    async fn read_body(
        &self,
        mut response: reqwest::Response,
        url: &Url,
        limit: usize,
    ) -> Result<Vec<u8>, OciError> {
        let too_large = || OciError::TooLarge {
            reference: self.reference.clone(),
            url: url.to_string(),
            limit,
        };
        if response.content_length().is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.request_error(url, &e))?
        {
            if body.len() + chunk.len() > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// The error for a response that is not a success. `what` is what was
    /// looked up (e.g. "tag `1.0`"), for a 404.
    async fn status_error(&self, response: reqwest::Response, url: &Url, what: &str) -> OciError {
        let status = response.status();
        match status {
            StatusCode::NOT_FOUND => OciError::NotFound {
                reference: self.reference.clone(),
                what: what.to_owned(),
                url: url.to_string(),
            },
            StatusCode::UNAUTHORIZED => {
                self.unauthorized(url, "the registry refused the credentials or token".into())
            }
            StatusCode::FORBIDDEN => self.unauthorized(url, "access denied (403 Forbidden)".into()),
            _ => {
                // Registries explain errors as `{"errors":[{"code","message"}]}`
                // (the spec's error codes); HEAD answers have no body.
                let detail = match self.read_body(response, url, MAX_SMALL_BYTES).await {
                    Ok(body) => registry_error_detail(&body),
                    Err(_) => String::new(),
                };
                OciError::Status {
                    reference: self.reference.clone(),
                    url: url.to_string(),
                    status: status_text(status),
                    detail,
                }
            }
        }
    }

    /// The platform of a single manifest, from its config blob.
    async fn config_platform(
        &mut self,
        manifest: &Manifest,
        manifest_digest: &str,
        manifest_url: &Url,
    ) -> Result<BTreeMap<String, String>, OciError> {
        let mut platforms = BTreeMap::new();
        let Some(config) = &manifest.config else {
            return Err(OciError::InvalidManifest {
                reference: self.reference.clone(),
                url: manifest_url.to_string(),
                reason: "an image manifest without a config".into(),
            });
        };
        // Artifacts (Helm charts, signatures…) use other config types, which
        // say nothing about platforms. A config we could not verify (not
        // sha256) is not read either.
        let is_image_config = config
            .media_type
            .as_deref()
            .is_some_and(|t| CONFIG_TYPES.contains(&t));
        if !is_image_config || check_digest(&config.digest).is_err() {
            return Ok(platforms);
        }
        let url = self.url(&format!("blobs/{}", config.digest))?;
        let response = self.send(Method::GET, &url, None).await?;
        if !response.status().is_success() {
            let what = format!("config blob `{}`", config.digest);
            return Err(self.status_error(response, &url, &what).await);
        }
        let body = self.read_body(response, &url, MAX_CONFIG_BYTES).await?;
        let actual = sha256_digest(&body);
        if actual != config.digest {
            return Err(OciError::DigestMismatch {
                reference: self.reference.clone(),
                url: url.to_string(),
                expected: config.digest.clone(),
                actual,
            });
        }
        // A config that does not say is "not determinable", not an error.
        if let Some(key) = serde_json::from_slice::<Platform>(&body)
            .ok()
            .as_ref()
            .and_then(Platform::key)
        {
            platforms.insert(key, manifest_digest.to_owned());
        }
        Ok(platforms)
    }
}

fn status_text(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => format!("{} {reason}", status.as_u16()),
        None => status.as_u16().to_string(),
    }
}

/// `: CODE: message` from a registry error body, or nothing.
fn registry_error_detail(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Errors {
        errors: Vec<RegistryError>,
    }
    #[derive(Deserialize)]
    struct RegistryError {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    let Ok(parsed) = serde_json::from_slice::<Errors>(body) else {
        return String::new();
    };
    let Some(first) = parsed.errors.first() else {
        return String::new();
    };
    let mut message: String = first.message.chars().take(200).collect();
    if message.len() < first.message.len() {
        message.push('…');
    }
    format!(": {}: {message}", first.code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    const SHA_A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    fn parse(s: &str) -> Reference {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_references_like_docker() {
        // One case per line: input, registry, repository, tag, digest
        // (`-`: none), canonical form. `{A}` stands for a sha256 digest.
        // `foo:5000` without a `/` is a tag, not a port; only Docker Hub
        // gets `library/`.
        let cases = "
            traefik:v3.1                         registry-1.docker.io library/traefik   v3.1     -   docker.io/library/traefik:v3.1
            traefik                              registry-1.docker.io library/traefik   latest   -   docker.io/library/traefik:latest
            docker.io/traefik:v3.1               registry-1.docker.io library/traefik   v3.1     -   docker.io/library/traefik:v3.1
            index.docker.io/library/traefik      registry-1.docker.io library/traefik   latest   -   docker.io/library/traefik:latest
            registry-1.docker.io/bitnami/redis:7 registry-1.docker.io bitnami/redis     7        -   docker.io/bitnami/redis:7
            bitnami/redis                        registry-1.docker.io bitnami/redis     latest   -   docker.io/bitnami/redis:latest
            foo:5000                             registry-1.docker.io library/foo       5000     -   docker.io/library/foo:5000
            ghcr.io/org/app:1.2                  ghcr.io              org/app           1.2      -   ghcr.io/org/app:1.2
            quay.io/a/b-c/d__e.f:1.0-rc_1        quay.io              a/b-c/d__e.f      1.0-rc_1 -   quay.io/a/b-c/d__e.f:1.0-rc_1
            127.0.0.1:5000/demo/hello:1.0        127.0.0.1:5000       demo/hello        1.0      -   127.0.0.1:5000/demo/hello:1.0
            127.0.0.1:5000/demo/hello            127.0.0.1:5000       demo/hello        latest   -   127.0.0.1:5000/demo/hello:latest
            localhost:5000/hello                 localhost:5000       hello             latest   -   localhost:5000/hello:latest
            localhost/hello:1                    localhost            hello             1        -   localhost/hello:1
            [::1]:5000/demo/hello:1.0            [::1]:5000           demo/hello        1.0      -   [::1]:5000/demo/hello:1.0
            Registry.Example.COM/app             registry.example.com app               latest   -   registry.example.com/app:latest
            redis@{A}                            registry-1.docker.io library/redis     -        {A} docker.io/library/redis@{A}
            redis:7@{A}                          registry-1.docker.io library/redis     7        {A} docker.io/library/redis:7@{A}
            127.0.0.1:5000/demo/hello@{A}        127.0.0.1:5000       demo/hello        -        {A} 127.0.0.1:5000/demo/hello@{A}
        ";
        for line in cases
            .replace("{A}", SHA_A)
            .lines()
            .filter(|l| !l.trim().is_empty())
        {
            let [input, registry, repository, tag, digest, canonical] =
                <[&str; 6]>::try_from(line.split_whitespace().collect::<Vec<_>>()).unwrap();
            let optional = |s: &str| (s != "-").then(|| s.to_owned());
            let expected = Reference {
                registry: registry.into(),
                repository: repository.into(),
                tag: optional(tag),
                digest: optional(digest),
            };
            let r = parse(input);
            assert_eq!(r, expected, "{input}");
            assert_eq!(r.to_string(), canonical, "{input}");
            // The canonical form means the same thing.
            assert_eq!(parse(canonical), r, "{input}");
        }
    }

    #[test]
    fn rejects_bad_references_naming_them() {
        let long_tag = format!("app:{}", "t".repeat(129));
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("a b", "whitespace"),
            ("Traefik", "invalid repository name"),
            ("-bad/x", "invalid repository name"),
            ("ghcr.io/org//app", "invalid repository name"),
            ("ghcr.io/", "empty repository"),
            ("ghcr.io/Org/app", "invalid repository name"),
            ("redis:", "invalid tag"),
            ("redis:-x", "invalid tag"),
            (&long_tag, "invalid tag"),
            ("redis@sha256:abc", "64 lowercase hex"),
            ("redis@sha256:", "64 lowercase hex"),
            (
                &format!("redis@sha256:{}", "A".repeat(64)),
                "64 lowercase hex",
            ),
            (
                &format!("redis@sha512:{}", "a".repeat(128)),
                "unsupported digest algorithm `sha512`",
            ),
            ("redis@latest", "expected `sha256:<hex>`"),
            ("ghcr.io:99999/x", "invalid registry host"),
            ("ghcr.io:/x", "invalid registry host"),
            ("gh_cr.io/x", "invalid registry host"),
            ("[::1/x", "invalid registry host"),
        ];
        for &(input, reason) in cases {
            let err = input.parse::<Reference>().expect_err(input);
            let message = err.to_string();
            assert!(
                matches!(err, OciError::InvalidReference { .. }),
                "{input}: {err:?}"
            );
            assert!(
                message.contains(&format!("`{input}`")),
                "{input}: {message}"
            );
            assert!(message.contains(reason), "{input}: {message}");
        }
    }

    #[test]
    fn hand_built_references_are_checked_before_use() {
        let resolver = Resolver::new(ResolverOptions::default()).unwrap();
        let reference = Reference {
            registry: "ghcr.io".into(),
            repository: "org/../app".into(),
            tag: Some("1".into()),
            digest: None,
        };
        let err = resolver.resolve(&reference).unwrap_err();
        assert!(matches!(err, OciError::InvalidReference { .. }), "{err:?}");

        let reference = Reference {
            repository: "org/app".into(),
            tag: None,
            ..reference
        };
        let err = resolver.resolve(&reference).unwrap_err();
        assert!(
            err.to_string().contains("neither a tag nor a digest"),
            "{err}"
        );
    }

    #[test]
    fn accept_header_lists_exactly_the_four_manifest_types() {
        let types: Vec<&str> = ACCEPT_MANIFESTS.split(", ").collect();
        assert_eq!(
            types,
            [
                OCI_INDEX,
                DOCKER_MANIFEST_LIST,
                OCI_MANIFEST,
                DOCKER_MANIFEST
            ]
        );
    }

    #[test]
    fn parses_www_authenticate_challenges() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/traefik:pull""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.params["realm"], "https://auth.docker.io/token");
        assert_eq!(c.params["service"], "registry.docker.io");
        assert_eq!(c.params["scope"], "repository:library/traefik:pull");

        // Commas and escaped quotes inside quoted values; spaces around separators.
        let c = parse_challenge(
            r#"Bearer realm="http://h/t", scope="repository:a:pull,push" , error="say \"hi\"""#,
        )
        .unwrap();
        assert_eq!(c.params["scope"], "repository:a:pull,push");
        assert_eq!(c.params["error"], r#"say "hi""#);

        let c = parse_challenge("Bearer realm=http://h/t,service=svc").unwrap();
        assert_eq!(c.params["realm"], "http://h/t");
        assert_eq!(c.params["service"], "svc");

        let c = parse_challenge(r#"Basic realm="Registry Realm""#).unwrap();
        assert_eq!(c.scheme, "basic");
        assert_eq!(
            parse_challenge("Bearer"),
            Some(Challenge {
                scheme: "bearer".into(),
                params: BTreeMap::new()
            })
        );

        assert_eq!(parse_challenge(""), None);
        assert_eq!(parse_challenge("Bearer realm"), None);
        assert_eq!(parse_challenge(r#"Bearer realm="unterminated"#), None);
    }

    #[test]
    fn platform_keys() {
        let p = |os: &str, arch: &str, variant: Option<&str>| Platform {
            os: os.into(),
            architecture: arch.into(),
            variant: variant.map(Into::into),
        };
        assert_eq!(
            p("linux", "amd64", None).key().as_deref(),
            Some("linux/amd64")
        );
        assert_eq!(
            p("linux", "arm", Some("v7")).key().as_deref(),
            Some("linux/arm/v7")
        );
        assert_eq!(
            p("linux", "arm64", Some("")).key().as_deref(),
            Some("linux/arm64")
        );
        assert_eq!(p("unknown", "unknown", None).key(), None);
        assert_eq!(p("", "amd64", None).key(), None);
    }

    #[test]
    fn debug_output_hides_passwords() {
        let options = ResolverOptions {
            credentials: vec![CredentialsEnv {
                registry: "docker.io".into(),
                username_var: "U".into(),
                password_var: "P".into(),
            }],
            ..ResolverOptions::default()
        };
        let resolver = Resolver::with_env(options, |name| {
            Some(if name == "U" { "alice" } else { "s3cret" }.into())
        })
        .unwrap();
        // Stored under the API host, so `docker.io` credentials reach Docker Hub.
        assert!(resolver.credentials.contains_key(DOCKER_HUB_REGISTRY));
        let debug = format!("{resolver:?}");
        assert!(debug.contains("alice"), "{debug}");
        assert!(!debug.contains("s3cret"), "{debug}");
    }

    // ---- against a scripted registry on loopback ----

    /// One request as the mock saw it.
    #[derive(Debug, Clone)]
    struct Seen {
        method: String,
        /// Path and query.
        target: String,
        host: String,
        authorization: Option<String>,
        accept: Option<String>,
    }

    /// Status, headers, body.
    type Reply = (u16, Vec<(&'static str, String)>, Vec<u8>);

    /// An HTTP server on 127.0.0.1 answering every request with `handler`,
    /// on its own thread and runtime (the resolver blocks on its own).
    struct Mock {
        addr: String,
        seen: Arc<Mutex<Vec<Seen>>>,
        shutdown: Option<tokio::sync::oneshot::Sender<()>>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl Mock {
        fn start(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Mock {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.set_nonblocking(true).unwrap();
            let addr = listener.local_addr().unwrap().to_string();
            let seen = Arc::new(Mutex::new(Vec::new()));
            let log = Arc::clone(&seen);
            let handler = Arc::new(handler);
            let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
            let thread = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    let app = axum::Router::new().fallback(
                        move |method: axum::http::Method,
                              uri: axum::http::Uri,
                              headers: axum::http::HeaderMap| {
                            let header = |name: &str| {
                                headers
                                    .get(name)
                                    .and_then(|v| v.to_str().ok())
                                    .map(str::to_owned)
                            };
                            let request = Seen {
                                method: method.to_string(),
                                target: uri
                                    .path_and_query()
                                    .map(ToString::to_string)
                                    .unwrap_or_default(),
                                host: header("host").unwrap_or_default(),
                                authorization: header("authorization"),
                                accept: header("accept"),
                            };
                            log.lock().unwrap().push(request.clone());
                            let (status, reply_headers, body) = handler(&request);
                            async move {
                                let mut response =
                                    axum::response::Response::new(axum::body::Body::from(body));
                                *response.status_mut() = StatusCode::from_u16(status).unwrap();
                                for (name, value) in reply_headers {
                                    response.headers_mut().append(name, value.parse().unwrap());
                                }
                                response
                            }
                        },
                    );
                    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                    axum::serve(listener, app)
                        .with_graceful_shutdown(async {
                            let _ = stop.await;
                        })
                        .await
                        .unwrap();
                });
            });
            Mock {
                addr,
                seen,
                shutdown: Some(shutdown),
                thread: Some(thread),
            }
        }

        fn seen(&self) -> Vec<Seen> {
            self.seen.lock().unwrap().clone()
        }

        fn reference(&self, suffix: &str) -> Reference {
            parse(&format!("{}/demo/app{suffix}", self.addr))
        }

        /// A resolver that treats the mock as an insecure registry, with
        /// `credentials` looked up in `env`.
        fn resolver(&self, credentials: Vec<CredentialsEnv>, env: &[(&str, &str)]) -> Resolver {
            let env: BTreeMap<String, String> = env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            let options = ResolverOptions {
                insecure_registries: vec![self.addr.clone()],
                timeout: Duration::from_secs(10),
                credentials,
            };
            Resolver::with_env(options, move |name| env.get(name).cloned()).unwrap()
        }
    }

    impl Drop for Mock {
        fn drop(&mut self) {
            if let Some(shutdown) = self.shutdown.take() {
                let _ = shutdown.send(());
            }
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }

    fn ok(content_type: &str, digest: Option<&str>, body: &[u8]) -> Reply {
        let mut headers = vec![("content-type", content_type.to_owned())];
        if let Some(digest) = digest {
            headers.push(("docker-content-digest", digest.to_owned()));
        }
        (200, headers, body.to_vec())
    }

    /// A Docker manifest list with a variant, a BuildKit attestation and a
    /// duplicate platform.
    fn manifest_list() -> Vec<u8> {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        serde_json::json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST_LIST,
            "manifests": [
                {"mediaType": DOCKER_MANIFEST, "digest": d('1'), "size": 1, "platform": {"os": "linux", "architecture": "amd64"}},
                {"mediaType": DOCKER_MANIFEST, "digest": d('2'), "size": 1, "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
                {"mediaType": OCI_MANIFEST, "digest": d('3'), "size": 1, "platform": {"os": "unknown", "architecture": "unknown"},
                 "annotations": {"vnd.docker.reference.type": "attestation-manifest"}},
                {"mediaType": DOCKER_MANIFEST, "digest": d('4'), "size": 1, "platform": {"os": "linux", "architecture": "amd64"}},
            ]
        })
        .to_string()
        .into_bytes()
    }

    /// A registry behind Bearer auth whose token service is `/token` on the
    /// same server and always hands out `tok-123`.
    fn bearer_registry(body: Vec<u8>) -> Mock {
        let digest = sha256_digest(&body);
        Mock::start(move |req| {
            if req.target.starts_with("/token") {
                return ok(
                    "application/json",
                    None,
                    br#"{"access_token":"tok-123","expires_in":60}"#,
                );
            }
            if req.authorization.as_deref() != Some("Bearer tok-123") {
                let challenge = format!(
                    r#"Bearer realm="http://{}/token",service="mock",scope="repository:demo/app:pull""#,
                    req.host
                );
                return (401, vec![("www-authenticate", challenge)], Vec::new());
            }
            match (req.method.as_str(), req.target.as_str()) {
                ("HEAD", "/v2/demo/app/manifests/1.0") => {
                    ok(DOCKER_MANIFEST_LIST, Some(&digest), b"")
                }
                ("GET", t) if t == format!("/v2/demo/app/manifests/{digest}") => {
                    ok(DOCKER_MANIFEST_LIST, Some(&digest), &body)
                }
                _ => (404, Vec::new(), Vec::new()),
            }
        })
    }

    fn alice(registry: &str) -> Vec<CredentialsEnv> {
        vec![CredentialsEnv {
            registry: registry.into(),
            username_var: "KILN_TEST_USER".into(),
            password_var: "KILN_TEST_PASSWORD".into(),
        }]
    }

    const ALICE_ENV: &[(&str, &str)] = &[
        ("KILN_TEST_USER", "alice"),
        ("KILN_TEST_PASSWORD", "s3cret"),
    ];

    #[test]
    fn bearer_flow_with_credentials_resolves_an_index() {
        let body = manifest_list();
        let mock = bearer_registry(body.clone());
        let resolver = mock.resolver(alice(&mock.addr), ALICE_ENV);
        let resolved = resolver.resolve(&mock.reference(":1.0")).unwrap();

        assert_eq!(resolved.reference, format!("{}/demo/app:1.0", mock.addr));
        assert_eq!(resolved.digest, sha256_digest(&body));
        assert_eq!(resolved.media_type, DOCKER_MANIFEST_LIST);
        let expected: BTreeMap<String, String> = [
            ("linux/amd64", format!("sha256:{}", "1".repeat(64))),
            ("linux/arm/v7", format!("sha256:{}", "2".repeat(64))),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        assert_eq!(resolved.platforms, expected);

        let seen = mock.seen();
        let summary: Vec<String> = seen
            .iter()
            .map(|s| format!("{} {}", s.method, s.target))
            .collect();
        assert_eq!(
            summary,
            [
                "HEAD /v2/demo/app/manifests/1.0".to_owned(),
                "GET /token?service=mock&scope=repository%3Ademo%2Fapp%3Apull".to_owned(),
                "HEAD /v2/demo/app/manifests/1.0".to_owned(),
                format!("GET /v2/demo/app/manifests/{}", resolved.digest),
            ]
        );
        // The password goes to the token service, and only there.
        assert_eq!(
            seen[1].authorization.as_deref(),
            Some("Basic YWxpY2U6czNjcmV0")
        );
        for s in seen.iter().filter(|s| s.target.starts_with("/v2/")) {
            assert!(
                !s.authorization
                    .as_deref()
                    .unwrap_or("")
                    .starts_with("Basic"),
                "{s:?}"
            );
            assert_eq!(s.accept.as_deref(), Some(ACCEPT_MANIFESTS), "{s:?}");
        }
    }

    #[test]
    fn credentials_for_another_registry_are_not_sent() {
        let mock = bearer_registry(manifest_list());
        let resolver = mock.resolver(alice("ghcr.io"), ALICE_ENV);
        resolver.resolve(&mock.reference(":1.0")).unwrap();
        let token_request = mock
            .seen()
            .into_iter()
            .find(|s| s.target.starts_with("/token"))
            .unwrap();
        assert_eq!(token_request.authorization, None);

        // Unset variables mean anonymous, not an error.
        let resolver = mock.resolver(alice(&mock.addr), &[("KILN_TEST_USER", "alice")]);
        assert!(resolver.credentials.is_empty());
    }

    #[test]
    fn token_service_refusal_is_unauthorized() {
        let mock = Mock::start(|req| {
            if req.target.starts_with("/token") {
                return (403, Vec::new(), Vec::new());
            }
            let challenge = format!(r#"Bearer realm="http://{}/token",service="mock""#, req.host);
            (401, vec![("www-authenticate", challenge)], Vec::new())
        });
        let reference = mock.reference(":1.0");
        let err = mock
            .resolver(Vec::new(), &[])
            .resolve(&reference)
            .unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, OciError::Unauthorized { .. }), "{err:?}");
        assert!(message.starts_with(&reference.to_string()), "{message}");
        assert!(
            message.contains("token service") && message.contains("403 Forbidden"),
            "{message}"
        );
        // Without a scope in the challenge, the standard pull scope is asked for.
        assert!(
            mock.seen()
                .iter()
                .any(|s| s.target.ends_with("scope=repository%3Ademo%2Fapp%3Apull"))
        );
    }

    #[test]
    fn a_second_401_is_unauthorized() {
        let mock = Mock::start(|req| {
            if req.target.starts_with("/token") {
                return ok("application/json", None, br#"{"token":"useless"}"#);
            }
            let challenge = format!(r#"Bearer realm="http://{}/token""#, req.host);
            (401, vec![("www-authenticate", challenge)], Vec::new())
        });
        let err = mock
            .resolver(Vec::new(), &[])
            .resolve(&mock.reference(":1.0"))
            .unwrap_err();
        assert!(matches!(err, OciError::Unauthorized { .. }), "{err:?}");
        // One token request, not a loop.
        assert_eq!(
            mock.seen()
                .iter()
                .filter(|s| s.target.starts_with("/token"))
                .count(),
            1
        );
    }

    #[test]
    fn body_not_matching_the_head_digest_is_a_mismatch() {
        let mock = Mock::start(|req| {
            match req.method.as_str() {
            "HEAD" => ok(OCI_INDEX, Some(SHA_A), b""),
            _ => ok(OCI_INDEX, None, br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#),
        }
        });
        let reference = mock.reference(":1.0");
        let err = mock
            .resolver(Vec::new(), &[])
            .resolve(&reference)
            .unwrap_err();
        let message = err.to_string();
        assert!(
            matches!(&err, OciError::DigestMismatch { expected, .. } if expected == SHA_A),
            "{err:?}"
        );
        assert!(
            message.starts_with(&reference.to_string()) && message.contains(SHA_A),
            "{message}"
        );
    }

    #[test]
    fn pinned_digest_must_match_what_the_registry_has() {
        let other = format!("sha256:{}", "b".repeat(64));
        let mock = Mock::start(move |_| ok(OCI_INDEX, Some(&other), b""));
        let err = mock
            .resolver(Vec::new(), &[])
            .resolve(&mock.reference(&format!("@{SHA_A}")))
            .unwrap_err();
        assert!(
            matches!(&err, OciError::DigestMismatch { expected, .. } if expected == SHA_A),
            "{err:?}"
        );
        assert_eq!(
            mock.seen()[0].target,
            format!("/v2/demo/app/manifests/{SHA_A}")
        );
    }

    #[test]
    fn schema1_manifests_are_unsupported() {
        let body = br#"{"schemaVersion":1,"name":"demo/app","tag":"1.0","fsLayers":[]}"#;
        let digest = sha256_digest(body);
        let media_type = "application/vnd.docker.distribution.manifest.v1+prettyjws";
        let mock = Mock::start(move |_| ok(media_type, Some(&digest), body));
        let reference = mock.reference(":1.0");
        let err = mock
            .resolver(Vec::new(), &[])
            .resolve(&reference)
            .unwrap_err();
        let message = err.to_string();
        assert!(
            matches!(&err, OciError::UnsupportedMediaType { media_type: m, .. } if m == media_type),
            "{err:?}"
        );
        assert!(message.starts_with(&reference.to_string()), "{message}");
    }

    #[test]
    fn single_manifest_without_head_digest_reads_platform_from_config() {
        let config = br#"{"architecture":"arm64","os":"linux","variant":"v8","rootfs":{"type":"layers","diff_ids":[]}}"#;
        let config_digest = sha256_digest(config);
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
            "layers": []
        })
        .to_string()
        .into_bytes();
        let digest = sha256_digest(&manifest);
        let blob_path = format!("/v2/demo/app/blobs/{config_digest}");
        let body = manifest.clone();
        let mock = Mock::start(
            move |req| match (req.method.as_str(), req.target.as_str()) {
                // No `Docker-Content-Digest`: the spec's note on older registries.
                ("HEAD", _) => ok(OCI_MANIFEST, None, b""),
                ("GET", "/v2/demo/app/manifests/1.0") => ok(OCI_MANIFEST, None, &body),
                ("GET", t) if t == blob_path => ok("application/octet-stream", None, config),
                _ => (404, Vec::new(), Vec::new()),
            },
        );
        let resolved = mock
            .resolver(Vec::new(), &[])
            .resolve(&mock.reference(":1.0"))
            .unwrap();
        assert_eq!(resolved.digest, digest);
        assert_eq!(resolved.media_type, OCI_MANIFEST);
        assert_eq!(
            resolved.platforms,
            BTreeMap::from([("linux/arm64/v8".to_owned(), digest)])
        );
    }

    #[test]
    fn registry_errors_are_quoted() {
        let mock = Mock::start(|req| match req.method.as_str() {
            "HEAD" => (429, Vec::new(), Vec::new()),
            _ => (404, Vec::new(), Vec::new()),
        });
        let err = mock
            .resolver(Vec::new(), &[])
            .resolve(&mock.reference(":1.0"))
            .unwrap_err();
        assert!(
            err.to_string().ends_with("answered 429 Too Many Requests"),
            "{err}"
        );

        let body = manifest_list();
        let digest = sha256_digest(&body);
        let mock = Mock::start(move |req| match req.method.as_str() {
            "HEAD" => ok(DOCKER_MANIFEST_LIST, Some(&digest), b""),
            _ => (
                429,
                vec![("content-type", "application/json".into())],
                br#"{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}"#.to_vec(),
            ),
        });
        let err = mock
            .resolver(Vec::new(), &[])
            .resolve(&mock.reference(":1.0"))
            .unwrap_err();
        assert!(
            err.to_string()
                .ends_with("answered 429 Too Many Requests: TOOMANYREQUESTS: slow down"),
            "{err}"
        );
    }

    #[test]
    fn oversized_manifests_are_refused() {
        let mock = Mock::start(|req| match req.method.as_str() {
            "HEAD" => ok(OCI_INDEX, None, b""),
            _ => ok(OCI_INDEX, None, &vec![b' '; MAX_MANIFEST_BYTES + 1]),
        });
        let err = mock
            .resolver(Vec::new(), &[])
            .resolve(&mock.reference(":1.0"))
            .unwrap_err();
        assert!(
            matches!(
                err,
                OciError::TooLarge {
                    limit: MAX_MANIFEST_BYTES,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn missing_tag_is_not_found_naming_it() {
        let mock = Mock::start(|_| (404, Vec::new(), Vec::new()));
        let reference = mock.reference(":nope");
        let err = mock
            .resolver(Vec::new(), &[])
            .resolve(&reference)
            .unwrap_err();
        assert!(matches!(err, OciError::NotFound { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!(
                "{reference}: tag `nope` not found (http://{}/v2/demo/app/manifests/nope answered 404 Not Found)",
                mock.addr
            )
        );
    }
}
