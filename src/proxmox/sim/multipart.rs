//! pveproxy's streaming multipart parser, ported from pve-http-server
//! `src/PVE/APIServer/AnyEvent.pm` `file_upload_multipart`.
//!
//! Phase 0 drops everything before the first delimiter. Phase 1 runs, on
//! the buffered bytes, anchored extractions for `content`, then
//! `checksum-algorithm`, then `checksum` (a field sent out of that order is
//! swallowed by the lazy `.*?`, as on a real node), then expects the file
//! part, named `filename`, with a non-empty `filename="..."`. Phase 2
//! streams the rest to the temporary file, holding back `boundary + 8`
//! bytes until the closing delimiter is seen.

use std::collections::BTreeMap;
use std::path::Path;

use axum::body::Body;
use http_body_util::BodyExt;
use regex::bytes::Regex;
use tokio::io::AsyncWriteExt;

pub(super) enum UploadError {
    /// A fault: the connection is to be dropped.
    Dropped,
    /// pveproxy answers 500 with this text.
    Failed(String),
}

struct Parser {
    delim: String,
    close_delim: Vec<u8>,
    phase: u8,
    buffer: Vec<u8>,
    fields: BTreeMap<String, String>,
}

fn compile(pattern: &str) -> Result<Regex, UploadError> {
    Regex::new(pattern).map_err(|e| UploadError::Failed(format!("simulator regex: {e}")))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim().to_owned()
}

impl Parser {
    /// Phases 0 and 1 on the current buffer.
    fn parse_head(&mut self) -> Result<(), UploadError> {
        let delim = &self.delim;
        if self.phase == 0 {
            let re = compile(&format!(r"(?s)^.*?({delim})"))?;
            if let Some(start) = re
                .captures(&self.buffer)
                .and_then(|c| c.get(1))
                .map(|m| m.start())
            {
                self.buffer.drain(..start);
                self.phase = 1;
            }
        }
        if self.phase != 1 {
            return Ok(());
        }
        for name in ["content", "checksum-algorithm", "checksum"] {
            let re = compile(&format!(
                r#"(?s)^{delim}.*?Content-Disposition: (.*?); name="{}"(.*?{delim})"#,
                regex::escape(name)
            ))?;
            let Some((disposition, rest_start)) = re
                .captures(&self.buffer)
                .and_then(|c| Some((text(c.get(1)?.as_bytes()), c.get(2)?.start())))
            else {
                continue;
            };
            assert_form_disposition(&disposition)?;
            self.buffer.drain(..rest_start);
            remove_until_data(&mut self.buffer)?;
            let value_re = compile(&format!(r"(?s)^(.*?)({delim})"))?;
            if let Some((value, end)) = value_re
                .captures(&self.buffer)
                .and_then(|c| Some((text(c.get(1)?.as_bytes()), c.get(2)?.start())))
            {
                self.buffer.drain(..end);
                self.fields.insert(name.to_owned(), value);
            }
        }
        let file_re = compile(&format!(
            r#"(?s)^{delim}Content-Disposition: (.*?); name="(.*?)"; filename="([^"]+)""#
        ))?;
        let Some((disposition, name, filename, end)) =
            file_re.captures(&self.buffer).and_then(|c| {
                Some((
                    text(c.get(1)?.as_bytes()),
                    text(c.get(2)?.as_bytes()),
                    text(c.get(3)?.as_bytes()),
                    c.get(0)?.end(),
                ))
            })
        else {
            return Ok(());
        };
        // Wait for the part's headers to end before committing to it.
        if !self.buffer[end..].windows(2).any(|w| w == b"\n\n")
            && !self.buffer[end..].windows(4).any(|w| w == b"\r\n\r\n")
        {
            return Ok(());
        }
        assert_form_disposition(&disposition)?;
        if name != "filename" {
            return Err(UploadError::Failed(format!(
                "wrong field name '{name}' for file upload, expected 'filename'"
            )));
        }
        self.buffer.drain(..end);
        remove_until_data(&mut self.buffer)?;
        self.fields.insert("filename".to_owned(), filename);
        self.phase = 2;
        Ok(())
    }

    /// Phase 2: the bytes that can be written now; sets phase 100 at the
    /// closing delimiter.
    fn take_data(&mut self) -> Vec<u8> {
        if let Some(at) = find(&self.buffer, &self.close_delim) {
            let mut data: Vec<u8> = self.buffer.drain(..at).collect();
            if data.ends_with(b"\n") {
                data.pop();
            }
            if data.ends_with(b"\r") {
                data.pop();
            }
            self.buffer.clear();
            self.phase = 100;
            return data;
        }
        let keep = self.close_delim.len() + 6;
        let writable = self.buffer.len().saturating_sub(keep);
        self.buffer.drain(..writable).collect()
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn assert_form_disposition(disposition: &str) -> Result<(), UploadError> {
    if disposition == "form-data" {
        Ok(())
    } else {
        Err(UploadError::Failed(format!(
            "wrong Content-Disposition '{disposition}' in multipart, expected 'form-data'\n"
        )))
    }
}

fn remove_until_data(buffer: &mut Vec<u8>) -> Result<(), UploadError> {
    let re = compile(r"(?s)^.*?(?:\r?\n){2}")?;
    if let Some(end) = re.find(buffer).map(|m| m.end()) {
        buffer.drain(..end);
    }
    Ok(())
}

/// Reads an upload body into `out`; the form fields found, or why not.
/// With `drop_after`, gives up with [`UploadError::Dropped`] once that many
/// body bytes have been read.
pub(super) async fn receive(
    body: Body,
    boundary: &str,
    out: &Path,
    drop_after: Option<u64>,
) -> Result<BTreeMap<String, String>, UploadError> {
    let escaped = regex::escape(boundary);
    let mut parser = Parser {
        delim: format!(r"--{escaped}\r?\n"),
        close_delim: format!("--{boundary}--").into_bytes(),
        phase: 0,
        buffer: Vec::new(),
        fields: BTreeMap::new(),
    };
    let failed =
        |e: std::io::Error| UploadError::Failed(format!("write to temporary file failed - {e}\n"));
    let mut file = tokio::fs::File::create(out).await.map_err(failed)?;
    let mut body = body;
    let mut read: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| UploadError::Failed(format!("upload failed - {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        read += data.len() as u64;
        if drop_after.is_some_and(|limit| read >= limit) {
            return Err(UploadError::Dropped);
        }
        parser.buffer.extend_from_slice(&data);
        if parser.phase < 2 {
            parser.parse_head()?;
        }
        if parser.phase == 2 {
            let chunk = parser.take_data();
            file.write_all(&chunk).await.map_err(failed)?;
        }
        if parser.phase == 100 {
            break;
        }
    }
    file.flush().await.map_err(failed)?;
    if parser.phase != 100 {
        return Err(UploadError::Failed("upload failed".to_owned()));
    }
    Ok(parser.fields)
}
