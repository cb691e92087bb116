//! The HTTP side: accept loop and pveproxy's request pipeline.
//!
//! Order of checks, from pve-http-server `src/PVE/APIServer/AnyEvent.pm`
//! (`unshift_read_header`, then `authenticate_user` / `handle_request`,
//! `extract_params`, `handle_api2_request`) and pve-manager
//! `PVE/HTTPServer.pm` (`rest_handler`): transfer encoding, authentication,
//! the upload parser or the body, route, parameters, the API handler.
//!
//! Connections are served with hyper directly rather than `axum::serve`,
//! because a fault must be able to drop a connection mid-request: each
//! connection's future is raced against a per-connection [`Notify`].

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::Notify;

use super::auth;
use super::config::SimConfig;
use super::state::{LoggedRequest, Outcome, State};
use super::{cluster, lxc, qemu, storage, tasks};
use crate::proxmox::ApiSchema;

/// `$limit_max_post` in AnyEvent.pm.
const LIMIT_MAX_POST: u64 = 512 * 1024;

pub(super) struct Shared {
    pub(super) schema: ApiSchema,
    pub(super) config: SimConfig,
    pub(super) upload_dir: std::path::PathBuf,
    pub(super) state: Mutex<State>,
}

impl Shared {
    pub(super) fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Accepts connections until aborted; with `tls`, each one does the TLS
/// handshake first (a failed handshake just closes that connection).
pub(super) async fn accept_loop(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        serve_connection(stream, shared).await;
                    }
                }
                None => serve_connection(stream, shared).await,
            }
        });
    }
}

async fn serve_connection<S>(stream: S, shared: Arc<Shared>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let kill = Arc::new(Notify::new());
    let connection_kill = kill.clone();
    let service = hyper::service::service_fn(move |request: Request<_>| {
        let shared = shared.clone();
        let kill = connection_kill.clone();
        async move {
            let request = request.map(Body::new);
            Ok::<_, Infallible>(handle(&shared, &kill, request).await)
        }
    });
    let connection =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        _ = connection => {}
        () = kill.notified() => {}
    }
}

/// What an API handler answers.
pub(super) enum Reply {
    Data(Value),
    DataWithTotal(Value, usize),
    /// 400 "Parameter verification failed." with `errors`.
    Invalid(BTreeMap<String, String>),
    /// A `die` in the handler: status, and the message (a trailing newline
    /// is added as Perl's `die "...\n"` leaves it).
    Error(StatusCode, String),
}

impl Reply {
    pub(super) fn param_error(parameter: &str, message: &str) -> Reply {
        Reply::Invalid(BTreeMap::from([(parameter.to_owned(), message.to_owned())]))
    }

    pub(super) fn error(message: impl Into<String>) -> Reply {
        Reply::Error(StatusCode::INTERNAL_SERVER_ERROR, message.into())
    }

    fn into_response(self) -> Response<Body> {
        match self {
            Reply::Data(data) => json_response(StatusCode::OK, None, &json!({ "data": data })),
            Reply::DataWithTotal(data, total) => json_response(
                StatusCode::OK,
                None,
                &json!({ "data": data, "total": total }),
            ),
            Reply::Invalid(errors) => json_response(
                StatusCode::BAD_REQUEST,
                Some("Parameter verification failed."),
                &json!({
                    "data": null,
                    "message": "Parameter verification failed.\n",
                    "errors": errors,
                }),
            ),
            Reply::Error(status, message) => {
                let message = if message.ends_with('\n') {
                    message
                } else {
                    format!("{message}\n")
                };
                let reason = message.lines().next().unwrap_or_default().to_owned();
                json_response(
                    status,
                    Some(&reason),
                    &json!({ "data": null, "message": message }),
                )
            }
        }
    }
}

/// pve-http-server `Formatter/Standard.pm`: JSON, UTF-8, the first line of
/// the message as the reason phrase.
fn json_response(status: StatusCode, reason: Option<&str>, body: &Value) -> Response<Body> {
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json;charset=UTF-8"),
    );
    set_reason(&mut response, reason);
    response
}

/// `$self->error(...)` in AnyEvent.pm: the message as a plain-text body.
pub(super) fn plain_error(status: StatusCode, message: &str) -> Response<Body> {
    let mut response = Response::new(Body::from(message.to_owned()));
    *response.status_mut() = status;
    set_reason(&mut response, message.lines().next());
    response
}

fn set_reason(response: &mut Response<Body>, reason: Option<&str>) {
    if let Some(reason) = reason
        && let Ok(phrase) = hyper::ext::ReasonPhrase::try_from(reason.as_bytes().to_vec())
    {
        response.extensions_mut().insert(phrase);
    }
}

/// One request on its way through the pipeline, for the log.
pub(super) struct Entry {
    pub(super) method: String,
    pub(super) path: String,
    pub(super) params: BTreeMap<String, String>,
    pub(super) token: Option<String>,
}

impl Entry {
    pub(super) fn log(self, shared: &Shared, status: StatusCode, outcome: Outcome) {
        shared.state().log.push(LoggedRequest {
            method: self.method,
            path: self.path,
            params: self.params,
            token: self.token,
            status: status.as_u16(),
            outcome,
        });
    }
}

async fn handle(shared: &Shared, kill: &Notify, request: Request<Body>) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let raw_path = parts.uri.path();
    let decoded = percent_encoding::percent_decode_str(raw_path).decode_utf8_lossy();
    let api_path = decoded.strip_prefix("/api2/json").unwrap_or(&decoded);
    let api_path = if api_path.is_empty() { "/" } else { api_path };
    let query = query_params(parts.uri.query());
    let mut entry = Entry {
        method: parts.method.to_string(),
        path: api_path.to_owned(),
        params: query.clone(),
        token: None,
    };

    if let Some(encoding) = parts.headers.get(header::TRANSFER_ENCODING) {
        let encoding = encoding.to_str().unwrap_or_default();
        let message = if encoding.eq_ignore_ascii_case("chunked") {
            "chunked transfer encoding not supported".to_owned()
        } else {
            format!("Unknown transfer encoding '{encoding}'")
        };
        // Read (a bounded amount of) the body before answering: answering
        // while the client still sends makes hyper close the connection,
        // and the client sees a reset instead of the 501.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
            let mut body = body;
            let mut read = 0usize;
            while read < (1 << 20) {
                match body.frame().await {
                    Some(Ok(frame)) => read += frame.data_ref().map_or(0, |d| d.len()),
                    _ => break,
                }
            }
        })
        .await;
        let response = plain_error(StatusCode::NOT_IMPLEMENTED, &message);
        entry.log(shared, response.status(), Outcome::Refused(message));
        return response;
    }

    let authorization = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let token = match auth::authenticate(authorization, &shared.config.tokens) {
        Ok(token) => token,
        Err(failure) => {
            // No JSON body: pve-manager PVE/HTTPServer.pm registers the
            // login formatter for HTML only. (pveproxy also waits 3 s.)
            let mut response = Response::new(Body::empty());
            *response.status_mut() = StatusCode::UNAUTHORIZED;
            set_reason(&mut response, Some(failure.reason()));
            entry.log(
                shared,
                response.status(),
                Outcome::Refused(failure.reason().into()),
            );
            return response;
        }
    };
    entry.token = Some(token);

    if shared.state().faults.take_unavailable(api_path) {
        let response = plain_error(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable");
        entry.log(shared, response.status(), Outcome::Fault("503".into()));
        return response;
    }

    if parts.method == Method::POST && storage::is_upload_path(api_path) {
        return storage::upload(shared, kill, entry, &parts.headers, body).await;
    }

    let params = match read_params(&parts.method, &parts.headers, body).await {
        Ok(mut params) => {
            // extract_params: query parameters win over body parameters.
            params.extend(query);
            params
        }
        Err(response) => {
            let message = format!("body refused ({})", response.status());
            entry.log(shared, response.status(), Outcome::Refused(message));
            return response;
        }
    };
    entry.params = params;
    run_api(shared, entry)
}

/// Route, validate, run the handler, log. Also the end of an upload.
pub(super) fn run_api(shared: &Shared, entry: Entry) -> Response<Body> {
    let Some(method) = shared.schema.method(&entry.method, &entry.path) else {
        let message = format!("Method '{} {}' not implemented", entry.method, entry.path);
        let response = Reply::Error(StatusCode::NOT_IMPLEMENTED, message).into_response();
        entry.log(shared, response.status(), Outcome::NotImplemented);
        return response;
    };
    let call = Call {
        shared,
        method: entry.method.clone(),
        template: method.path_template().to_owned(),
        path_params: method.path_parameters().clone(),
        params: entry.params.clone(),
        user: entry.token.clone().unwrap_or_default(),
    };
    // pve-manager PVE/HTTPServer.pm rest_handler: the schema's
    // `permissions.check` (RPCEnvironment.pm exec_api2_perm_check) comes
    // before the node proxy and the handler's parameter validation.
    if let Err(reply) = call.check_schema_permissions(&call.method) {
        let response = reply.into_response();
        entry.log(shared, response.status(), Outcome::Forbidden);
        return response;
    }
    let violations = method.validate(&entry.params);
    if !violations.is_empty() {
        let errors = violations
            .iter()
            .map(|v| (v.parameter.clone(), v.message.clone()))
            .collect();
        let response = Reply::Invalid(errors).into_response();
        entry.log(shared, response.status(), Outcome::Invalid(violations));
        return response;
    }
    let response = dispatch(&call).into_response();
    entry.log(shared, response.status(), Outcome::Validated);
    response
}

/// A validated API call.
pub(super) struct Call<'a> {
    pub(super) shared: &'a Shared,
    /// `GET`, `POST`, `PUT` or `DELETE`.
    pub(super) method: String,
    pub(super) template: String,
    pub(super) path_params: BTreeMap<String, String>,
    pub(super) params: BTreeMap<String, String>,
    /// The authenticated token id: tasks run as it.
    pub(super) user: String,
}

impl Call<'_> {
    pub(super) fn state(&self) -> MutexGuard<'_, State> {
        self.shared.state()
    }

    pub(super) fn path_param(&self, name: &str) -> &str {
        self.path_params
            .get(name)
            .map(String::as_str)
            .unwrap_or_default()
    }
}

fn dispatch(call: &Call<'_>) -> Reply {
    if let Some(node) = call.path_params.get("node")
        && !call.shared.config.nodes.contains(node)
    {
        // pve-manager PVE/HTTPServer.pm proxies to the node, whose name
        // does not resolve: pve-cluster's `remote_node_ip`.
        return Reply::error(format!(
            "hostname lookup '{node}' failed - failed to get address info for: {node}: Name or service not known"
        ));
    }
    match call.template.as_str() {
        "/version" => Reply::Data(json!({
            "version": call.shared.config.version,
            "release": call.shared.config.version.rsplit_once('.').map_or("", |(r, _)| r),
            "repoid": "d7aa5d4f",
        })),
        "/nodes" => Reply::Data(json!(
            call.shared
                .config
                .nodes
                .iter()
                .map(|n| json!({"node": n, "status": "online", "type": "node", "id": format!("node/{n}")}))
                .collect::<Vec<_>>()
        )),
        "/nodes/{node}/tasks/{upid}/status" => tasks::status(call),
        "/nodes/{node}/tasks/{upid}/log" => tasks::log(call),
        "/nodes/{node}/tasks" => tasks::list(call),
        template => storage::dispatch(call, template)
            .or_else(|| qemu::dispatch(call, &call.method, template))
            .or_else(|| lxc::dispatch(call, &call.method, template))
            .or_else(|| cluster::dispatch(call, &call.method, template))
            .unwrap_or_else(|| {
            Reply::Error(
                StatusCode::NOT_IMPLEMENTED,
                format!("kiln-pve-sim: '{template}' is in the schema but not simulated"),
            )
        }),
    }
}

fn query_params(query: Option<&str>) -> BTreeMap<String, String> {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

/// The body of a non-upload request, as pveproxy reads it.
async fn read_params(
    method: &Method,
    headers: &HeaderMap,
    body: Body,
) -> Result<BTreeMap<String, String>, Response<Body>> {
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    if length == 0 {
        return Ok(BTreeMap::new());
    }
    if !(method == Method::PUT || method == Method::POST) {
        let message = format!("Unexpected content for method '{method}'");
        return Err(plain_error(StatusCode::NOT_IMPLEMENTED, &message));
    }
    if length > LIMIT_MAX_POST {
        return Err(plain_error(
            StatusCode::NOT_IMPLEMENTED,
            "for data too large",
        ));
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let kind = content_type
        .split([';', ','])
        .next()
        .unwrap_or_default()
        .trim();
    let bytes = body
        .collect()
        .await
        .map_err(|_| plain_error(StatusCode::BAD_REQUEST, "unable to read body"))?
        .to_bytes();
    match kind {
        "" | "application/x-www-form-urlencoded" => {
            Ok(form_urlencoded::parse(&bytes).into_owned().collect())
        }
        "application/json" => json_params(&bytes)
            .ok_or_else(|| plain_error(StatusCode::BAD_REQUEST, "malformed JSON body")),
        _ => Err(plain_error(
            StatusCode::from_u16(506).unwrap_or(StatusCode::NOT_IMPLEMENTED),
            &format!("upload 'Content-Type '{content_type}' not implemented"),
        )),
    }
}

/// A JSON object body as form values: booleans as `1`/`0` (what
/// JSONSchema.pm's `check_type` accepts for JSON booleans).
fn json_params(bytes: &[u8]) -> Option<BTreeMap<String, String>> {
    let Value::Object(object) = serde_json::from_slice::<Value>(bytes).ok()? else {
        return None;
    };
    Some(
        object
            .into_iter()
            .map(|(key, value)| {
                let text = match value {
                    Value::String(s) => s,
                    Value::Bool(b) => if b { "1" } else { "0" }.to_owned(),
                    other => other.to_string(),
                };
                (key, text)
            })
            .collect(),
    )
}
