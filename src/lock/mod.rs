//! `lockfile.toml`: every external input pinned by hash.

pub mod debian;
pub mod oci;
