//! `lockfile.toml`: every external input pinned by hash.

pub mod debian;
pub mod file;
pub mod inputs;
pub mod oci;

pub use file::{DebianEntry, DebianPackage, Lockfile, LockfileError, OciEntry, UrlEntry};
