//! Uploads to a storage: streamed from the file with its length known
//! (Proxmox takes no chunked uploads), sent again from the start when the
//! connection is lost, checked by the node against the file's sha256, then
//! found in the storage's listing.
//!
//! Sending an upload again is safe, unlike other POSTs (see `retry`):
//! until pveproxy has read the whole body it has not called the upload
//! handler (pve-http-server `AnyEvent.pm` `file_upload_multipart` hands
//! the request on only after the closing delimiter), and if the
//! connection went after it had, the second upload writes the same bytes
//! under the same name, which the handler overwrites ("we simply
//! overwrite the destination file if it already exists", pve-storage
//! `API2/Storage/Status.pm`). A checksum mismatch is not retried: it is
//! the upload task's failure, and the same bytes would fail the same way.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use super::{ApiError, Client, Failed, Upid, encode, upid_of};

/// Bytes read from the file per chunk handed to the connection.
const CHUNK: usize = 1 << 20;

/// How long an upload's import task may take after the bytes arrived (it
/// checks the sha256 and copies the file: minutes for large images on
/// slow storage).
const TASK_LIMIT: Duration = Duration::from_secs(3600);

/// A file to put on a storage, as `POST
/// /nodes/{node}/storage/{storage}/upload` takes it.
#[derive(Clone, Copy, Debug)]
pub struct Upload<'a> {
    pub node: &'a str,
    pub storage: &'a str,
    /// `iso`, `vztmpl` or `import`.
    pub content: &'a str,
    /// The file's name on the storage, which Proxmox must keep as it is:
    /// letters, digits, `_`, `.` and `-`, with the extension the content
    /// type needs.
    pub name: &'a str,
    pub file: &'a Path,
    /// The file's sha256 in hex; the node checks it in the upload task.
    pub sha256: &'a str,
}

impl Upload<'_> {
    /// The volume id the file gets: `STORAGE:CONTENT/NAME`.
    pub fn volid(&self) -> String {
        format!("{}:{}/{}", self.storage, self.content, self.name)
    }
}

/// How far an upload is, reported a few times a second.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UploadProgress {
    /// Bytes of the file handed to the connection in this attempt.
    pub sent: u64,
    /// The file's size.
    pub total: u64,
    /// `sent` over the time since this attempt started.
    pub bytes_per_second: u64,
    /// 1 for the first attempt; a retry starts again from 0 bytes.
    pub attempt: u32,
}

impl Client {
    /// Upload `file` to `storage` on `node` as `content` named `name`,
    /// with its sha256; returns the upload task's id (the checksum is
    /// checked in the task: wait for it). See [`Client::upload_verified`].
    pub async fn upload(
        &self,
        node: &str,
        storage: &str,
        content: &str,
        name: &str,
        file: &Path,
        sha256: &str,
    ) -> Result<Upid, ApiError> {
        let upload = Upload {
            node,
            storage,
            content,
            name,
            file,
            sha256,
        };
        self.upload_with_progress(&upload, &|_| {}).await
    }

    /// Upload, reporting progress; sent again from the start (as
    /// [`Client::with_retry`] allows) when the connection is lost or the
    /// node answers 503. Returns the upload task's id.
    pub async fn upload_with_progress(
        &self,
        upload: &Upload<'_>,
        progress: &(dyn Fn(UploadProgress) + Send + Sync),
    ) -> Result<Upid, ApiError> {
        check_name(upload.name)?;
        let path = format!("/nodes/{}/storage/{}/upload", upload.node, upload.storage);
        let data = self
            .with_retries("POST", &path, |attempt| {
                self.upload_once(&path, upload, attempt, progress)
            })
            .await?;
        upid_of("POST", &path, &data)
    }

    /// Upload, wait for the node to check the sha256 and import the file,
    /// then confirm the storage lists the volume with the file's size.
    /// Returns the volume id (`STORAGE:CONTENT/NAME`). A checksum mismatch
    /// fails the task and comes back as [`ApiError::Task`] with its log.
    pub async fn upload_verified(
        &self,
        upload: &Upload<'_>,
        progress: &(dyn Fn(UploadProgress) + Send + Sync),
    ) -> Result<String, ApiError> {
        let size = file_size(upload.file).await?;
        let upid = self.upload_with_progress(upload, progress).await?;
        self.wait_task(&upid, TASK_LIMIT).await?;
        let volid = upload.volid();
        let listed = self
            .listed_size(upload.node, upload.storage, upload.content, &volid)
            .await?;
        if listed != Some(size) {
            return Err(ApiError::NotListed {
                node: upload.node.to_owned(),
                storage: upload.storage.to_owned(),
                volid,
                size,
                listed: listed.map_or("not listed".to_owned(), |n| format!("{n} bytes")),
            });
        }
        Ok(volid)
    }

    /// Whether `storage` on `node` lists `volid` (of type `content`) with
    /// `size` bytes: one listing request, to skip an upload that is done.
    pub async fn volume_present(
        &self,
        node: &str,
        storage: &str,
        content: &str,
        volid: &str,
        size: u64,
    ) -> Result<bool, ApiError> {
        Ok(self.listed_size(node, storage, content, volid).await? == Some(size))
    }

    /// The size `GET /nodes/{node}/storage/{storage}/content` lists for
    /// `volid`, if it lists it.
    async fn listed_size(
        &self,
        node: &str,
        storage: &str,
        content: &str,
        volid: &str,
    ) -> Result<Option<u64>, ApiError> {
        let path = format!("/nodes/{node}/storage/{}/content", encode(storage));
        let params = [("content".to_owned(), content.to_owned())].into();
        let data = self.get(&path, &params).await?;
        let volumes = data.as_array().ok_or_else(|| ApiError::Decode {
            method: "GET".into(),
            path: path.clone(),
            reason: format!("expected a list of volumes, got {data}"),
        })?;
        Ok(volumes
            .iter()
            .find(|v| v.get("volid").and_then(serde_json::Value::as_str) == Some(volid))
            .and_then(|v| v.get("size"))
            .and_then(serde_json::Value::as_u64))
    }

    /// One attempt: the file is opened anew and streamed from its start.
    /// The fields go in the order pveproxy's parser reads them (content,
    /// checksum-algorithm, checksum, then the file; `AnyEvent.pm`
    /// `file_upload_multipart`), and are repeated in the query string,
    /// which it also reads.
    async fn upload_once(
        &self,
        path: &str,
        upload: &Upload<'_>,
        attempt: u32,
        progress: &(dyn Fn(UploadProgress) + Send + Sync),
    ) -> Result<serde_json::Value, Failed> {
        let local = |error: ApiError| Failed { error, retry: None };
        let file = tokio::fs::File::open(upload.file)
            .await
            .map_err(|e| local(file_error(upload.file, &e)))?;
        let total = file
            .metadata()
            .await
            .map_err(|e| local(file_error(upload.file, &e)))?
            .len();
        let sent = Arc::new(AtomicU64::new(0));
        // A read error is the file's fault, not the connection's: it ends
        // the upload without a retry.
        let read_error: Arc<OnceLock<String>> = Arc::default();
        let stream = {
            let (sent, read_error) = (Arc::clone(&sent), Arc::clone(&read_error));
            tokio_util::io::ReaderStream::with_capacity(file, CHUNK).map(move |chunk| {
                match &chunk {
                    Ok(bytes) => {
                        sent.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    }
                    Err(e) => {
                        let _ = read_error.set(e.to_string());
                    }
                }
                chunk
            })
        };
        let part =
            reqwest::multipart::Part::stream_with_length(reqwest::Body::wrap_stream(stream), total)
                .file_name(upload.name.to_owned())
                .mime_str("application/octet-stream")
                .map_err(|e| local(ApiError::Config(e.to_string())))?;
        let form = reqwest::multipart::Form::new()
            .text("content", upload.content.to_owned())
            .text("checksum-algorithm", "sha256")
            .text("checksum", upload.sha256.to_owned())
            .part("filename", part);
        let query = [
            ("content", upload.content),
            ("checksum-algorithm", "sha256"),
            ("checksum", upload.sha256),
        ];
        let request = self
            .http
            .post(self.url(path))
            .query(&query)
            .multipart(form)
            // An upload takes as long as it takes; the connect timeout and
            // the task's own checks bound it.
            .timeout(Duration::from_secs(24 * 3600));
        let started = Instant::now();
        let report = || {
            let sent = sent.load(Ordering::Relaxed);
            let seconds = started.elapsed().as_secs_f64();
            progress(UploadProgress {
                sent,
                total,
                bytes_per_second: if seconds > 0.0 {
                    (sent as f64 / seconds) as u64
                } else {
                    0
                },
                attempt,
            });
        };
        let result = self
            .exchange("POST", path, request, true, Some(&report))
            .await;
        report();
        match (result, read_error.get()) {
            (Err(_), Some(message)) => Err(local(ApiError::Config(format!(
                "reading {} for its upload: {message}",
                upload.file.display()
            )))),
            (result, _) => result,
        }
    }
}

async fn file_size(file: &Path) -> Result<u64, ApiError> {
    tokio::fs::metadata(file)
        .await
        .map(|m| m.len())
        .map_err(|e| file_error(file, &e))
}

fn file_error(file: &Path, error: &std::io::Error) -> ApiError {
    ApiError::Config(format!("{}: {error}", file.display()))
}

/// Refuse a name Proxmox would change: pve-storage `Storage.pm`
/// `normalize_content_filename` keeps what follows the last `/` or `\` and
/// turns every other character than `[A-Za-z0-9_.-]` into `_`, and kiln
/// must know the volume id it gets.
fn check_name(name: &str) -> Result<(), ApiError> {
    let normal: String = name
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if normal == name && !name.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Config(format!(
            "`{name}` is not a file name Proxmox keeps as it is (it would store `{normal}`): use letters, digits, `_`, `.` and `-`"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_proxmox_would_change_are_refused() {
        assert!(check_name("debian-13_1.0_amd64.tar.zst").is_ok());
        for bad in ["", "a b.iso", "dir/a.iso", "a\\b.iso", "ä.iso"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
