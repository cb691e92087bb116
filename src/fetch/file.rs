//! `file://` URLs: a local copy, checked exactly like a download.
//!
//! A local mirror (an NFS share, a USB stick with the inputs) goes through
//! the same `.part`, size and hash checks as a network one, so a caller
//! cannot tell, and need not care, where the bytes came from. No retries:
//! a local read that fails will fail again.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use super::part::PartFile;
use super::{FetchError, FetchProgress, FetchRequest, Fetched};

const READ_BUFFER: usize = 1024 * 1024;

pub(crate) fn fetch(
    url: &str,
    path: &Path,
    request: &FetchRequest,
    progress: &dyn FetchProgress,
) -> Result<Fetched, FetchError> {
    let local = |source: io::Error| FetchError::Local {
        url: url.to_string(),
        path: path.to_path_buf(),
        source,
    };
    let mut source = File::open(path).map_err(local)?;
    let metadata = source.metadata().map_err(local)?;
    if metadata.is_dir() {
        return Err(local(io::Error::new(
            io::ErrorKind::IsADirectory,
            "is a directory",
        )));
    }
    let total = metadata.len();
    if let Some(expected) = request.size
        && expected != total
    {
        return Err(FetchError::SizeMismatch {
            url: url.to_string(),
            expected,
            actual: total,
        });
    }
    progress.started(url, Some(total));

    let mut part = PartFile::create(&request.dest)?;
    let mut buffer = vec![0; READ_BUFFER];
    loop {
        let n = match source.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(local(error)),
        };
        // The file may grow while it is read.
        if let Some(expected) = request.size
            && part.len() + n as u64 > expected
        {
            return Err(FetchError::TooLarge {
                url: url.to_string(),
                expected,
            });
        }
        part.append(&buffer[..n])?;
        progress.advanced(url, part.len());
    }
    part.finish(url, request.sha256.as_deref(), request.size)
}
