//! A thin async client for the Proxmox VE API: token auth, verified TLS
//! (system roots, a CA file, or a pinned fingerprint), Proxmox's error
//! shapes as [`ApiError`]s, task polling, and streamed uploads.
//!
//! Parameters are sent as Proxmox's own forms are: form-encoded bodies for
//! POST and PUT, the query string for GET and DELETE, booleans as `1`/`0`
//! (pve-common `JSONSchema.pm` rejects `true` at the top level).

mod auth;
mod error;
mod tls;
mod upid;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

pub use auth::{Token, Trust, fingerprint_of};
pub use error::ApiError;
pub use upid::{Upid, status_is_ok};

const USER_AGENT: &str = concat!("kiln/", env!("CARGO_PKG_VERSION"));

/// Where a Proxmox node's API is and how to talk to it.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// `https://HOST:8006` (the `/api2/json` prefix is added).
    pub url: String,
    pub token: Token,
    pub trust: Trust,
    /// For requests other than uploads.
    pub timeout: Duration,
}

/// A connection to one Proxmox VE endpoint.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Token,
    timeout: Duration,
}

/// A task's state from `GET /nodes/{node}/tasks/{upid}/status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskState {
    Running,
    /// Stopped, with its `exitstatus` (`OK`, `WARNINGS: n` or the error).
    Stopped(String),
}

impl Client {
    pub fn new(endpoint: &Endpoint) -> Result<Client, ApiError> {
        let config_error =
            |e: &dyn std::fmt::Display| ApiError::Config(format!("{}: {e}", endpoint.url));
        let mut builder = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(Duration::from_secs(15));
        match &endpoint.trust {
            Trust::System => {}
            Trust::CaFile(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| ApiError::Config(format!("CA file {}: {e}", path.display())))?;
                let certificates = reqwest::Certificate::from_pem_bundle(&pem)
                    .map_err(|e| ApiError::Config(format!("CA file {}: {e}", path.display())))?;
                builder = builder.tls_certs_only(certificates);
            }
            Trust::Fingerprint(fingerprint) => {
                let config = tls::pinned(*fingerprint).map_err(|e| config_error(&e))?;
                builder = builder.tls_backend_preconfigured(config);
            }
        }
        let http = builder.build().map_err(|e| config_error(&e))?;
        let url = endpoint.url.trim_end_matches('/');
        if !url.starts_with("https://") && !url.starts_with("http://") {
            return Err(ApiError::Config(format!(
                "`{}` is not an http(s) URL (e.g. https://pve1.home.arpa:8006)",
                endpoint.url
            )));
        }
        Ok(Client {
            http,
            base: format!("{url}/api2/json"),
            token: endpoint.token.clone(),
            timeout: endpoint.timeout,
        })
    }

    pub async fn get(
        &self,
        path: &str,
        params: &BTreeMap<String, String>,
    ) -> Result<serde_json::Value, ApiError> {
        let request = self.http.get(self.url(path)).query(params);
        self.send("GET", path, request).await
    }

    pub async fn post(
        &self,
        path: &str,
        params: &BTreeMap<String, String>,
    ) -> Result<serde_json::Value, ApiError> {
        let request = self.http.post(self.url(path)).form(params);
        self.send("POST", path, request).await
    }

    pub async fn put(
        &self,
        path: &str,
        params: &BTreeMap<String, String>,
    ) -> Result<serde_json::Value, ApiError> {
        let request = self.http.put(self.url(path)).form(params);
        self.send("PUT", path, request).await
    }

    pub async fn delete(
        &self,
        path: &str,
        params: &BTreeMap<String, String>,
    ) -> Result<serde_json::Value, ApiError> {
        let request = self.http.delete(self.url(path)).query(params);
        self.send("DELETE", path, request).await
    }

    /// A task's state.
    pub async fn task_state(&self, upid: &Upid) -> Result<TaskState, ApiError> {
        let path = format!(
            "/nodes/{}/tasks/{}/status",
            upid.node,
            encode(upid.as_str())
        );
        let data = self.get(&path, &BTreeMap::new()).await?;
        match data.get("status").and_then(serde_json::Value::as_str) {
            Some("running") => Ok(TaskState::Running),
            Some("stopped") => Ok(TaskState::Stopped(
                data.get("exitstatus")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or("unexpected status")
                    .to_owned(),
            )),
            _ => Err(ApiError::Decode {
                method: "GET".into(),
                path,
                reason: format!("no task status in {data}"),
            }),
        }
    }

    /// The task's log lines (up to the last 500).
    pub async fn task_log(&self, upid: &Upid) -> Result<Vec<String>, ApiError> {
        let path = format!("/nodes/{}/tasks/{}/log", upid.node, encode(upid.as_str()));
        let params = BTreeMap::from([("limit".to_owned(), "500".to_owned())]);
        let data = self.get(&path, &params).await?;
        Ok(data
            .as_array()
            .map(|lines| {
                lines
                    .iter()
                    .filter_map(|l| l.get("t").and_then(serde_json::Value::as_str))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Poll the task until it stops (with backoff from 250 ms to 5 s) or
    /// `limit` passes; a failed or timed-out task comes back with its log.
    pub async fn wait_task(&self, upid: &Upid, limit: Duration) -> Result<(), ApiError> {
        let started = Instant::now();
        let mut delay = Duration::from_millis(250);
        loop {
            match self.task_state(upid).await? {
                TaskState::Stopped(status) if status_is_ok(&status) => return Ok(()),
                TaskState::Stopped(status) => {
                    let log = self.task_log(upid).await.unwrap_or_default();
                    return Err(ApiError::Task {
                        upid: upid.to_string(),
                        status,
                        log,
                    });
                }
                TaskState::Running if started.elapsed() >= limit => {
                    let log = self.task_log(upid).await.unwrap_or_default();
                    return Err(ApiError::TaskTimeout {
                        upid: upid.to_string(),
                        seconds: limit.as_secs(),
                        log,
                    });
                }
                TaskState::Running => {
                    tokio::time::sleep(delay.min(limit.saturating_sub(started.elapsed()))).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Upload a file to `storage` on `node` as `content` (`vztmpl`, `iso`
    /// or `import`) named `name`, streamed with its length known (Proxmox
    /// does not take chunked uploads) and with its sha256, which the node
    /// checks in the upload task. The fields go in the order pveproxy's
    /// parser reads them (content, checksum-algorithm, checksum, then the
    /// file; pve-http-server `AnyEvent.pm` `file_upload_multipart`), and
    /// are repeated in the query string, which it also reads. Returns the
    /// upload task's id.
    pub async fn upload(
        &self,
        node: &str,
        storage: &str,
        content: &str,
        name: &str,
        file: &std::path::Path,
        sha256: &str,
    ) -> Result<Upid, ApiError> {
        let path = format!("/nodes/{node}/storage/{storage}/upload");
        let opened = tokio::fs::File::open(file)
            .await
            .map_err(|e| ApiError::Config(format!("{}: {e}", file.display())))?;
        let length = opened
            .metadata()
            .await
            .map_err(|e| ApiError::Config(format!("{}: {e}", file.display())))?
            .len();
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(
            opened,
            1 << 20,
        ));
        let part = reqwest::multipart::Part::stream_with_length(body, length)
            .file_name(name.to_owned())
            .mime_str("application/octet-stream")
            .map_err(|e| ApiError::Config(e.to_string()))?;
        let form = reqwest::multipart::Form::new()
            .text("content", content.to_owned())
            .text("checksum-algorithm", "sha256")
            .text("checksum", sha256.to_owned())
            .part("filename", part);
        let query = [
            ("content", content),
            ("checksum-algorithm", "sha256"),
            ("checksum", sha256),
        ];
        let request = self
            .http
            .post(self.url(&path))
            .query(&query)
            .multipart(form)
            // An upload takes as long as it takes; the connect timeout and
            // the task's own checks bound it.
            .timeout(Duration::from_secs(24 * 3600));
        let data = self.send_with("POST", &path, request, false).await?;
        upid_of("POST", &path, &data)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<serde_json::Value, ApiError> {
        self.send_with(method, path, request, true).await
    }

    async fn send_with(
        &self,
        method: &str,
        path: &str,
        request: reqwest::RequestBuilder,
        timeout: bool,
    ) -> Result<serde_json::Value, ApiError> {
        let mut request = request.header(reqwest::header::AUTHORIZATION, self.token.header());
        if timeout {
            request = request.timeout(self.timeout);
        }
        let transport = |source: reqwest::Error| ApiError::Transport {
            method: method.to_owned(),
            path: path.to_owned(),
            // Never the URL with its query (it could carry parameters a
            // user considers private); reqwest errors do not include headers.
            source: source.without_url(),
        };
        let response = request.send().await.map_err(transport)?;
        let status = response.status();
        let reason = status.canonical_reason().unwrap_or("").to_owned();
        let body = response.bytes().await.map_err(transport)?;
        if !status.is_success() {
            return Err(error::from_response(
                method,
                path,
                status.as_u16(),
                &reason,
                &body,
            ));
        }
        let json: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| ApiError::Decode {
                method: method.to_owned(),
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
        Ok(json.get("data").cloned().unwrap_or(serde_json::Value::Null))
    }
}

/// The UPID a task-starting call returned.
pub fn upid_of(method: &str, path: &str, data: &serde_json::Value) -> Result<Upid, ApiError> {
    data.as_str()
        .and_then(Upid::parse)
        .ok_or_else(|| ApiError::Decode {
            method: method.to_owned(),
            path: path.to_owned(),
            reason: format!("expected a task id (UPID), got {data}"),
        })
}

/// Percent-encode a path segment (a UPID has `:` and `!`).
fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
