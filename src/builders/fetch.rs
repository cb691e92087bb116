//! The `fetch` builder: one file by URL, addressed by the sha256 and size
//! the lockfile pins (an [`Output::FixedFlat`] derivation).
//!
//! Unlike the other builders it runs inside the kiln process that
//! schedules the build, not in a sandboxed child: it is the one builder
//! that needs the network, and running every download through one
//! [`crate::fetch::Fetcher`] pools connections, bounds how many run at once
//! and lets the CLI draw a progress bar per download. Nothing it produces
//! is trusted: the fetcher checks size and sha256 while streaming and
//! nothing is registered unless both match.

use std::path::PathBuf;

use crate::fetch::FetchRequest;
use crate::plan::{Derivation, Output};

/// The builder's name in derivations.
pub const BUILDER: &str = "fetch";

/// The download a fetch derivation stands for, written to `dest`.
pub fn request(derivation: &Derivation, dest: PathBuf) -> Result<FetchRequest, String> {
    let Output::FixedFlat { sha256, size } = &derivation.output else {
        return Err(format!(
            "derivation {} uses the fetch builder but is not a flat fixed output",
            derivation.name
        ));
    };
    let urls = derivation
        .args
        .get("urls")
        .ok_or_else(|| format!("derivation {} has no `urls` argument", derivation.name))?;
    let urls: Vec<String> = serde_json::from_str(urls)
        .map_err(|e| format!("derivation {}: `urls` is not a list: {e}", derivation.name))?;
    Ok(FetchRequest {
        urls,
        sha256: Some(sha256.clone()),
        size: Some(*size),
        dest,
    })
}

/// The first URL of a fetch derivation (for messages).
pub fn first_url(derivation: &Derivation) -> Option<String> {
    let urls: Vec<String> = serde_json::from_str(derivation.args.get("urls")?).ok()?;
    urls.into_iter().next()
}
