//! Storage endpoints: list, status, content, upload, volume delete.
//!
//! Behaviour from pve-storage `src/PVE/API2/Storage/Status.pm` (upload,
//! list, status), `src/PVE/API2/Storage/Content.pm` (content list,
//! delete), `src/PVE/Storage.pm` (`normalize_content_filename`, the
//! extension regexes) and `src/PVE/Storage/Plugin.pm` (volume names).

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use axum::body::Body;
use axum::http::{HeaderMap, Response, StatusCode, header};
use regex::Regex;
use serde_json::json;
use sha2::Digest;
use tokio::sync::Notify;

use super::faults::TaskFault;
use super::multipart::{self, UploadError};
use super::server::{Call, Entry, Reply, Shared, plain_error, run_api};
use super::state::{Outcome, Volume, now};

/// Only POSTs to exactly this path are uploads (pve-manager
/// `PVE/HTTPServer.pm` `auth_handler`, `$isUpload`).
pub(super) fn is_upload_path(api_path: &str) -> bool {
    static UPLOAD: LazyLock<Option<Regex>> =
        LazyLock::new(|| Regex::new(r"^/nodes/[^/]+/storage/[^/]+/upload$").ok());
    UPLOAD.as_ref().is_some_and(|re| re.is_match(api_path))
}

/// The upload request, up to the API handler (AnyEvent.pm
/// `unshift_read_header`): without `Content-Length` the body is ignored and
/// the request is an ordinary one.
pub(super) async fn upload(
    shared: &Shared,
    kill: &Notify,
    mut entry: Entry,
    headers: &HeaderMap,
    body: Body,
) -> Response<Body> {
    let has_length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.parse::<u64>().is_ok_and(|n| n > 0));
    if !has_length {
        return run_api(shared, entry);
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let mut pieces = content_type.split([';', ',']).map(str::trim);
    let kind = pieces.next().unwrap_or_default();
    let boundary = pieces
        .find_map(|p| {
            p.strip_prefix("boundary")
                .map(|b| b.trim_start().trim_start_matches('=').trim())
        })
        .filter(|b| !b.is_empty());
    let refuse = |entry: Entry, message: String| {
        let response = plain_error(StatusCode::INTERNAL_SERVER_ERROR, &message);
        entry.log(shared, response.status(), Outcome::Refused(message));
        response
    };
    let Some(boundary) = boundary.filter(|_| kind == "multipart/form-data") else {
        return refuse(
            entry,
            format!("upload 'Content-Type '{content_type}' not implemented\n"),
        );
    };
    if entry.params.contains_key("tmpfilename") {
        return refuse(
            entry,
            "'tmpfilename' query parameter is not allowed for file uploads\n".into(),
        );
    }
    let name = temporary_name();
    let temporary = shared.upload_dir.join(&name);
    let drop_after = shared.state().faults.take_drop_upload();
    match multipart::receive(body, boundary, &temporary, drop_after).await {
        Ok(fields) => {
            entry.params.extend(fields);
            entry
                .params
                .insert("tmpfilename".into(), format!("/var/tmp/{name}"));
            let response = run_api(shared, entry);
            // The handler moved the file if it kept it.
            let _ = std::fs::remove_file(&temporary);
            response
        }
        Err(UploadError::Failed(message)) => {
            let _ = std::fs::remove_file(&temporary);
            refuse(entry, message)
        }
        Err(UploadError::Dropped) => {
            let _ = std::fs::remove_file(&temporary);
            entry.log(
                shared,
                StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
                Outcome::Fault("connection dropped".into()),
            );
            kill.notify_one();
            std::future::pending().await
        }
    }
}

/// `get_upload_filename` in AnyEvent.pm: `pveupload-` and 32 hex digits.
fn temporary_name() -> String {
    static SEQUENCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let sequence = SEQUENCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let digest = sha2::Sha256::digest(format!("{sequence}{nanos}{}", std::process::id()));
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("pveupload-{hex}")
}

pub(super) fn dispatch(call: &Call<'_>, template: &str) -> Option<Reply> {
    Some(match template {
        "/nodes/{node}/storage" => list(call),
        "/nodes/{node}/storage/{storage}/status" => with_storage(call, status),
        "/nodes/{node}/storage/{storage}/content" => with_storage(call, content),
        "/nodes/{node}/storage/{storage}/upload" => with_storage(call, store_upload),
        "/nodes/{node}/storage/{storage}/content/{volume}" if call.method == "DELETE" => {
            with_storage(call, delete)
        }
        _ => return None,
    })
}

fn with_storage(
    call: &Call<'_>,
    f: fn(&Call<'_>, &super::config::StorageConfig) -> Reply,
) -> Reply {
    let id = call.path_param("storage");
    match call.shared.config.storage(id) {
        Some(storage) => f(call, storage),
        // pve-storage src/PVE/Storage.pm storage_config
        None => Reply::error(format!("storage '{id}' does not exist")),
    }
}

fn storage_json(call: &Call<'_>, storage: &super::config::StorageConfig) -> serde_json::Value {
    let used: u64 = call
        .state()
        .volumes(&storage.id)
        .values()
        .map(|v| v.size)
        .sum();
    json!({
        "storage": storage.id, "type": storage.kind, "content": storage.content.join(","),
        "active": 1, "enabled": 1, "shared": 0,
        "total": storage.total, "used": used, "avail": storage.total.saturating_sub(used),
    })
}

fn list(call: &Call<'_>) -> Reply {
    let wanted: Vec<&str> = call
        .params
        .get("content")
        .map(|c| c.split(',').collect())
        .unwrap_or_default();
    // Status.pm index: only storages the token may see.
    let storages = call.shared.config.storages.iter().filter(|s| {
        wanted.iter().all(|w| s.content.iter().any(|c| c == w))
            && call.params.get("storage").is_none_or(|id| *id == s.id)
            && call
                .check_any(
                    &format!("/storage/{}", s.id),
                    &["Datastore.Audit", "Datastore.AllocateSpace"],
                )
                .is_ok()
    });
    Reply::Data(json!(
        storages.map(|s| storage_json(call, s)).collect::<Vec<_>>()
    ))
}

fn status(call: &Call<'_>, storage: &super::config::StorageConfig) -> Reply {
    Reply::Data(storage_json(call, storage))
}

fn content(call: &Call<'_>, storage: &super::config::StorageConfig) -> Reply {
    let filter = call.params.get("content");
    let items: Vec<_> = call
        .state()
        .volumes(&storage.id)
        .into_values()
        .filter(|v| filter.is_none_or(|f| *f == v.content))
        .map(|v| {
            let mut item = json!({"volid": v.volid, "format": v.format, "size": v.size, "content": v.content, "ctime": v.ctime});
            if let (Some(vmid), Some(object)) = (v.vmid, item.as_object_mut()) {
                object.insert("vmid".into(), json!(vmid));
            }
            item
        })
        .collect();
    Reply::Data(json!(items))
}

/// `normalize_content_filename` (pve-storage `src/PVE/Storage.pm`).
fn normalize_filename(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or_default();
    base.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The listing `format` if the name is uploadable as this content type:
/// `ISO_EXT_RE_0`, `VZTMPL_EXT_RE_1` (9.x: plain `.tar` too),
/// `UPLOAD_IMPORT_EXT_RE_1` in pve-storage `src/PVE/Storage.pm`.
fn upload_format(content: &str, name: &str) -> Result<String, Reply> {
    let lower = name.to_ascii_lowercase();
    let wrong = |message: &str| Err(Reply::param_error("filename", message));
    match content {
        "iso" if lower.ends_with(".iso") || lower.ends_with(".img") => Ok("iso".into()),
        "iso" => wrong("wrong file extension"),
        "vztmpl" => ["tar.gz", "tar.xz", "tar.zst", "tar.bz2", "tar"]
            .iter()
            .find(|ext| lower.ends_with(&format!(".{ext}")))
            .map(|ext| {
                if *ext == "tar" {
                    "tar".to_owned()
                } else {
                    format!("t{}", ext.trim_start_matches("tar."))
                }
            })
            .ok_or(())
            .or_else(|()| wrong("wrong file extension")),
        "import" => {
            static IMPORT: LazyLock<Option<Regex>> =
                LazyLock::new(|| Regex::new(r"^[a-zA-Z0-9\-\.\+=_]+\.(ova|qcow2|raw|vmdk)$").ok());
            match IMPORT
                .as_ref()
                .and_then(|re| re.captures(name))
                .and_then(|c| c.get(1))
            {
                Some(ext) => Ok(ext.as_str().to_owned()),
                None => wrong("invalid filename or wrong extension"),
            }
        }
        _ => wrong("wrong file extension"),
    }
}

fn store_upload(call: &Call<'_>, storage: &super::config::StorageConfig) -> Reply {
    let content = call.params.get("content").cloned().unwrap_or_default();
    if !storage.has_path() {
        return Reply::error(format!("can't upload to storage type '{}'", storage.kind));
    }
    if !storage.content.contains(&content) {
        return Reply::error(format!(
            "storage '{}' does not support '{content}' content",
            storage.id
        ));
    }
    let name = normalize_filename(call.params.get("filename").map_or("", String::as_str));
    let format = match upload_format(&content, &name) {
        Ok(format) => format,
        Err(reply) => return reply,
    };
    let temporary = call
        .params
        .get("tmpfilename")
        .and_then(|t| t.strip_prefix("/var/tmp/"))
        .map(|t| call.shared.upload_dir.join(t));
    let Some(temporary) = temporary else {
        // An upload without a body (no Content-Length) gets here only if
        // the client put every field in the query.
        return Reply::error("missing temporary upload file");
    };
    let volid = format!("{}:{content}/{name}", storage.id);
    let node = call.path_param("node").to_owned();
    let mut state = call.state();
    let upid = state.start_task(&node, "imgcopy", "", &call.user);
    let fault = state.faults.take_task("imgcopy");
    state.task_log(
        &upid,
        format!(
            "starting file import from: {}",
            call.params.get("tmpfilename").map_or("", String::as_str)
        ),
    );
    state.task_log(&upid, format!("target node: {node}"));
    match fault {
        Some(TaskFault::Hang) => return Reply::Data(json!(upid)),
        Some(TaskFault::Fail(message)) => {
            state.finish_task(&upid, &message);
            return Reply::Data(json!(upid));
        }
        None => {}
    }
    if let (Some(algorithm), Some(expected)) = (
        call.params.get("checksum-algorithm"),
        call.params.get("checksum"),
    ) {
        match checksum(algorithm, &temporary) {
            Ok(got) if got.eq_ignore_ascii_case(expected) => {
                state.task_log(&upid, format!("calculated checksum: {got}"));
            }
            Ok(got) => {
                state.finish_task(
                    &upid,
                    &format!("checksum mismatch: got '{got}' != expect '{expected}'"),
                );
                return Reply::Data(json!(upid));
            }
            Err(message) => {
                state.finish_task(&upid, &message);
                return Reply::Data(json!(upid));
            }
        }
    }
    let target = state.file_for(&storage.id, &format!("{content}/{name}"));
    let moved = target
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::rename(&temporary, &target))
        .and_then(|()| std::fs::metadata(&target));
    match moved {
        Ok(metadata) => {
            state.task_log(&upid, format!("target file: {}", target.display()));
            state.task_log(&upid, format!("file size is: {}", metadata.len()));
            state.task_log(&upid, "finished file import successfully");
            // The destination is overwritten if it exists (Status.pm).
            state.add_volume(
                &storage.id,
                Volume {
                    volid,
                    content,
                    format,
                    size: metadata.len(),
                    ctime: now(),
                    vmid: None,
                },
            );
            state.finish_task(&upid, "OK");
        }
        Err(e) => {
            state.finish_task(&upid, &format!("import failed - {e}"));
        }
    }
    Reply::Data(json!(upid))
}

fn checksum(algorithm: &str, path: &Path) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("unable to read upload: {e}"))?;
    let hex = |digest: &[u8]| {
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    Ok(match algorithm {
        "sha224" => hex(&sha2::Sha224::digest(&bytes)),
        "sha256" => hex(&sha2::Sha256::digest(&bytes)),
        "sha384" => hex(&sha2::Sha384::digest(&bytes)),
        "sha512" => hex(&sha2::Sha512::digest(&bytes)),
        other => {
            return Err(format!(
                "kiln-pve-sim: checksum algorithm '{other}' is not simulated"
            ));
        }
    })
}

/// `DELETE .../content/{volume}`: a volid or a volname; an `imgdel` task.
fn delete(call: &Call<'_>, storage: &super::config::StorageConfig) -> Reply {
    let volume = call.path_param("volume");
    let volid = match volume.split_once(':') {
        Some((other, _)) if other != storage.id => {
            return Reply::param_error(
                "volume",
                &format!("storage ID mismatch ({other} != {})", storage.id),
            );
        }
        Some(_) => volume.to_owned(),
        None => format!("{}:{volume}", storage.id),
    };
    // Content.pm delete: Datastore.Allocate (backups are not simulated).
    if let Err(reply) = call.check(&format!("/storage/{}", storage.id), &["Datastore.Allocate"]) {
        return reply;
    }
    let owner = super::guests::owner(&volid);
    let id = match owner {
        Some(vmid) => format!("{vmid}@{}", storage.id),
        None => storage.id.clone(),
    };
    let node = call.path_param("node").to_owned();
    let mut state = call.state();
    let upid = state.start_task(&node, "imgdel", &id, &call.user);
    match state.faults.take_task("imgdel") {
        Some(TaskFault::Hang) => return Reply::Data(json!(upid)),
        Some(TaskFault::Fail(message)) => {
            state.finish_task(&upid, &message);
            return Reply::Data(json!(upid));
        }
        None => {}
    }
    let path: Option<PathBuf> = state.volume_path(&volid);
    match (state.remove_volume(&storage.id, &volid), path) {
        (Some(_), Some(path)) => {
            let _ = std::fs::remove_file(path);
            state.task_log(&upid, format!("Removed volume '{volid}'"));
            state.finish_task(&upid, "OK");
        }
        _ => {
            state.finish_task(&upid, &format!("volume '{volid}' does not exist"));
        }
    }
    Reply::Data(json!(upid))
}
