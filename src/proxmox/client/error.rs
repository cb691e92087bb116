//! Proxmox VE's error shapes, turned into errors a user can act on.
//!
//! From pve-http-server `Formatter/Standard.pm` and pve-manager
//! `PVE/HTTPServer.pm` (see `shared/research/proxmox-api.md` §1):
//! - 400 `{"data":null,"message":"Parameter verification failed.\n","errors":{PARAM: MSG}}`
//! - 401 no body (reason phrase `No ticket` / `Authentication failed!`)
//! - 403 `{"message":"Permission check failed (/path, Priv.Name)\n"}`
//! - 500 `{"message":"<what died>\n"}`; 501 unknown path or method.

use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{method} {path}: Proxmox refused the parameters:{}", list(errors))]
    Parameters {
        method: String,
        path: String,
        errors: BTreeMap<String, String>,
    },
    #[error(
        "{method} {path}: authentication failed (401 {reason})\n  hint: check the API token id (USER@REALM!TOKENID) and its secret; kiln reads the secret from the environment variable or file named in the host's proxmox options, never from the command line"
    )]
    Unauthorized {
        method: String,
        path: String,
        reason: String,
    },
    #[error(
        "{method} {path}: permission denied: {message}\n  hint: give the token's role the missing privilege (docs: least-privilege token); with privilege separation the token needs its own ACL"
    )]
    Forbidden {
        method: String,
        path: String,
        message: String,
    },
    #[error("{method} {path}: Proxmox answered {status}: {message}")]
    Server {
        method: String,
        path: String,
        status: u16,
        message: String,
    },
    /// No answer: the connection failed or was lost. `detail` is the
    /// whole chain of causes (reqwest's own message alone says little).
    #[error("{method} {path}: {detail}")]
    Transport {
        method: String,
        path: String,
        detail: String,
        #[source]
        source: reqwest::Error,
    },
    /// The TLS handshake failed: most often the node's certificate is not
    /// the one kiln was told to trust.
    #[error("{method} {path}: TLS with the node failed: {detail}\n  hint: {hint}")]
    Tls {
        method: String,
        path: String,
        detail: String,
        hint: String,
    },
    /// A request failed in a way worth retrying on every attempt.
    #[error("{last}\n  gave up after {attempts} attempts over {:.1} s", elapsed.as_secs_f64())]
    GaveUp {
        attempts: u32,
        elapsed: std::time::Duration,
        #[source]
        last: Box<ApiError>,
    },
    /// An upload's task succeeded but the storage does not list the volume
    /// with the file's size.
    #[error(
        "{volid} is not on storage {storage} of node {node} with {size} bytes after its upload task succeeded (listed: {listed})"
    )]
    NotListed {
        node: String,
        storage: String,
        volid: String,
        size: u64,
        listed: String,
    },
    #[error("{method} {path}: unexpected answer: {reason}")]
    Decode {
        method: String,
        path: String,
        reason: String,
    },
    #[error("task {upid} failed: {status}{}", log_tail(log))]
    Task {
        upid: String,
        status: String,
        /// The end of the task log.
        log: Vec<String>,
    },
    #[error("task {upid} did not finish within {seconds} s{}", log_tail(log))]
    TaskTimeout {
        upid: String,
        seconds: u64,
        log: Vec<String>,
    },
    #[error("{0}")]
    Config(String),
}

fn list(errors: &BTreeMap<String, String>) -> String {
    errors
        .iter()
        .map(|(param, message)| format!("\n  {param}: {}", message.trim_end()))
        .collect()
}

fn log_tail(log: &[String]) -> String {
    if log.is_empty() {
        return String::new();
    }
    let start = log.len().saturating_sub(20);
    format!(
        "\n  task log (last lines):\n    {}",
        log[start..].join("\n    ")
    )
}

/// The error for a non-success answer with `body`.
pub(super) fn from_response(
    method: &str,
    path: &str,
    status: u16,
    reason: &str,
    body: &[u8],
) -> ApiError {
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let message = json
        .as_ref()
        .and_then(|j| j.get("message"))
        .and_then(serde_json::Value::as_str)
        .map(|m| m.trim_end().to_owned())
        .unwrap_or_else(|| reason.to_owned());
    let (method, path) = (method.to_owned(), path.to_owned());
    match status {
        400 => {
            let errors: BTreeMap<String, String> = json
                .as_ref()
                .and_then(|j| j.get("errors"))
                .and_then(serde_json::Value::as_object)
                .map(|o| {
                    o.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                        .collect()
                })
                .unwrap_or_default();
            if errors.is_empty() {
                ApiError::Server {
                    method,
                    path,
                    status,
                    message,
                }
            } else {
                ApiError::Parameters {
                    method,
                    path,
                    errors,
                }
            }
        }
        401 => ApiError::Unauthorized {
            method,
            path,
            reason: reason.to_owned(),
        },
        403 => ApiError::Forbidden {
            method,
            path,
            message,
        },
        _ => ApiError::Server {
            method,
            path,
            status,
            message,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_errors_name_each_parameter() {
        let body = br#"{"data":null,"message":"Parameter verification failed.\n","errors":{"vmid":"value does not look like a valid VM ID","net0":"invalid format - bad MAC\n"}}"#;
        let error = from_response(
            "POST",
            "/nodes/pve/qemu",
            400,
            "Parameter verification failed.",
            body,
        );
        let text = error.to_string();
        assert!(
            text.contains("vmid: value does not look like a valid VM ID"),
            "{text}"
        );
        assert!(text.contains("net0: invalid format - bad MAC"), "{text}");
    }

    #[test]
    fn permission_and_auth_errors_carry_hints() {
        let body = br#"{"data":null,"message":"Permission check failed (/storage/local, Datastore.AllocateTemplate)\n"}"#;
        let text = from_response("POST", "/x", 403, "Forbidden", body).to_string();
        assert!(
            text.contains("Datastore.AllocateTemplate") && text.contains("hint"),
            "{text}"
        );
        let text = from_response("GET", "/x", 401, "No ticket", b"").to_string();
        assert!(
            text.contains("401 No ticket") && text.contains("API token"),
            "{text}"
        );
        let text = from_response(
            "POST",
            "/x",
            500,
            "x",
            br#"{"data":null,"message":"VM 100 already exists\n"}"#,
        )
        .to_string();
        assert!(text.ends_with("500: VM 100 already exists"), "{text}");
    }
}
