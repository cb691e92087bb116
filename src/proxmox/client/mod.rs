//! A thin async client for the Proxmox VE API: token auth, verified TLS
//! (system roots, a CA file, or a pinned fingerprint), Proxmox's error
//! shapes as [`ApiError`]s, retries where they cannot apply a change twice
//! (`retry`), task polling, and streamed, resumable-by-restart uploads
//! (`upload`).
//!
//! Parameters are sent as Proxmox's own forms are: form-encoded bodies for
//! POST and PUT, the query string for GET and DELETE, booleans as `1`/`0`
//! (pve-common `JSONSchema.pm` rejects `true` at the top level).

mod auth;
mod error;
mod retry;
mod tls;
mod upid;
mod upload;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

pub use auth::{Token, Trust, fingerprint_of};
pub use error::ApiError;
pub use retry::{ClientEvent, RetryPolicy};
pub use upid::{Upid, status_is_ok};
pub use upload::{Upload, UploadProgress};

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
    trust: Trust,
    timeout: Duration,
    retry: RetryPolicy,
    events: retry::Events,
}

/// One failed attempt, and why it is worth another if it is.
struct Failed {
    error: ApiError,
    retry: Option<String>,
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
            trust: endpoint.trust.clone(),
            timeout: endpoint.timeout,
            retry: RetryPolicy::default(),
            events: retry::Events::default(),
        })
    }

    /// Retry with `policy` instead of [`RetryPolicy::default`].
    #[must_use]
    pub fn with_retry(mut self, policy: RetryPolicy) -> Client {
        self.retry = policy;
        self
    }

    /// Report retries and other events to `receiver`.
    #[must_use]
    pub fn with_events(
        mut self,
        receiver: impl Fn(&ClientEvent) + Send + Sync + 'static,
    ) -> Client {
        self.events = retry::Events::new(receiver);
        self
    }

    pub async fn get(
        &self,
        path: &str,
        params: &BTreeMap<String, String>,
    ) -> Result<serde_json::Value, ApiError> {
        let url = self.url(path);
        self.send("GET", path, || self.http.get(&url).query(params))
            .await
    }

    pub async fn post(
        &self,
        path: &str,
        params: &BTreeMap<String, String>,
    ) -> Result<serde_json::Value, ApiError> {
        let url = self.url(path);
        self.send("POST", path, || self.http.post(&url).form(params))
            .await
    }

    pub async fn put(
        &self,
        path: &str,
        params: &BTreeMap<String, String>,
    ) -> Result<serde_json::Value, ApiError> {
        let url = self.url(path);
        self.send("PUT", path, || self.http.put(&url).form(params))
            .await
    }

    pub async fn delete(
        &self,
        path: &str,
        params: &BTreeMap<String, String>,
    ) -> Result<serde_json::Value, ApiError> {
        let url = self.url(path);
        self.send("DELETE", path, || self.http.delete(&url).query(params))
            .await
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

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Send a request built by `build`, again as [`retry`] allows.
    async fn send(
        &self,
        method: &str,
        path: &str,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<serde_json::Value, ApiError> {
        // Only a GET is sent again after the connection was lost mid-way.
        let may_resend = method == "GET";
        self.with_retries(method, path, |_| {
            let request = build().timeout(self.timeout);
            self.exchange(method, path, request, may_resend, None)
        })
        .await
    }

    /// Run `attempt` (given its number, from 1) until it succeeds, fails
    /// for good, or the policy's attempts are used up.
    async fn with_retries<T, F>(
        &self,
        method: &str,
        path: &str,
        mut attempt: impl FnMut(u32) -> F,
    ) -> Result<T, ApiError>
    where
        F: std::future::Future<Output = Result<T, Failed>>,
    {
        let started = Instant::now();
        let attempts = self.retry.attempts.max(1);
        let mut number = 1;
        loop {
            let failed = match attempt(number).await {
                Ok(value) => return Ok(value),
                Err(failed) => failed,
            };
            match failed.retry {
                Some(reason) if number < attempts => {
                    let delay = self.retry.delay(number);
                    self.events.emit(&ClientEvent::Retrying {
                        method: method.to_owned(),
                        path: path.to_owned(),
                        attempt: number,
                        attempts,
                        delay,
                        reason,
                    });
                    tokio::time::sleep(delay).await;
                    number += 1;
                }
                Some(_) if attempts > 1 => {
                    return Err(ApiError::GaveUp {
                        attempts,
                        elapsed: started.elapsed(),
                        last: Box::new(failed.error),
                    });
                }
                _ => return Err(failed.error),
            }
        }
    }

    /// One attempt: send, read the answer, turn a failure into an error
    /// and say whether it is worth another attempt. `may_resend`: whether
    /// the request may be sent again after the connection was lost once it
    /// was (partly) sent. `tick`, if any, is called every 250 ms until the
    /// answer comes (an upload reports its progress with it).
    async fn exchange(
        &self,
        method: &str,
        path: &str,
        request: reqwest::RequestBuilder,
        may_resend: bool,
        tick: Option<&(dyn Fn() + Send + Sync)>,
    ) -> Result<serde_json::Value, Failed> {
        let request = request.header(reqwest::header::AUTHORIZATION, self.token.header());
        let sending = request.send();
        tokio::pin!(sending);
        let mut ticks = tokio::time::interval(Duration::from_millis(250));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let response = loop {
            tokio::select! {
                response = &mut sending => break response,
                _ = ticks.tick(), if tick.is_some() => {
                    if let Some(tick) = tick {
                        tick();
                    }
                }
            }
        };
        let lost = |error: reqwest::Error| self.lost(method, path, error, may_resend);
        let response = response.map_err(lost)?;
        let status = response.status();
        let reason = status.canonical_reason().unwrap_or("").to_owned();
        let body = response.bytes().await.map_err(lost)?;
        if !status.is_success() {
            return Err(Failed {
                error: error::from_response(method, path, status.as_u16(), &reason, &body),
                retry: retry::status_is_transient(status.as_u16()).then(|| {
                    format!("{} {reason}", status.as_u16())
                        .trim_end()
                        .to_owned()
                }),
            });
        }
        let json: serde_json::Value = serde_json::from_slice(&body).map_err(|e| Failed {
            error: ApiError::Decode {
                method: method.to_owned(),
                path: path.to_owned(),
                reason: e.to_string(),
            },
            retry: None,
        })?;
        Ok(json.get("data").cloned().unwrap_or(serde_json::Value::Null))
    }

    /// The error for a request that got no answer, and whether to retry.
    fn lost(&self, method: &str, path: &str, error: reqwest::Error, may_resend: bool) -> Failed {
        let (method, path) = (method.to_owned(), path.to_owned());
        if let Some(detail) = retry::tls_failure(&error) {
            return Failed {
                error: ApiError::Tls {
                    method,
                    path,
                    detail,
                    hint: self.trust_hint(),
                },
                retry: None,
            };
        }
        let retry = match retry::lost_connection(&error) {
            retry::Lost::BeforeSending(reason) => Some(reason),
            retry::Lost::AfterSending(reason) if may_resend => Some(reason),
            retry::Lost::AfterSending(_) | retry::Lost::Other => None,
        };
        // Never the URL with its query (it could carry parameters a user
        // considers private); reqwest errors do not include headers.
        let source = error.without_url();
        Failed {
            error: ApiError::Transport {
                method,
                path,
                detail: retry::chain(&source),
                source,
            },
            retry,
        }
    }

    fn trust_hint(&self) -> String {
        match &self.trust {
            Trust::System => "the node's certificate is not signed by a CA this system trusts: \
                 pin its fingerprint (`pvenode cert info` on the node) or give the cluster's CA \
                 file (/etc/pve/pve-root-ca.pem)"
                .to_owned(),
            Trust::CaFile(path) => format!(
                "the node's certificate is not signed by the CA in {}, or does not name the host \
                 in the URL",
                path.display()
            ),
            Trust::Fingerprint(_) => "if the node's certificate was renewed, check the new \
                 fingerprint on the node (`pvenode cert info`) and pin that one"
                .to_owned(),
        }
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
