//! The binary cache: where machines share what they built.
//!
//! A CI runner pushes each store path it built to object storage; another
//! machine substitutes it instead of building it again. This module owns the
//! storage side: [`backend::CacheBackend`] is one type over three backends,
//! chosen by URL:
//!
//! | URL | backend |
//! |---|---|
//! | `s3://BUCKET/PREFIX` | any S3-compatible server; endpoint, region and credentials from the `AWS_*` environment variables or an AWS profile |
//! | `file:///ABSOLUTE/PATH` | a directory on this machine (or a mounted share) |
//! | `memory://` | in process, for tests |
//!
//! Objects are named by [`key::CacheKey`]s: relative, `/`-separated, no
//! `.` or `..`. Cache contents are content-addressed, so uploads are
//! "put if absent": pushing what is already there succeeds and changes
//! nothing, and concurrent pushers of the same object are harmless.
//!
//! All three backends pass the same conformance suite
//! (`tests/cache_conformance.rs`; S3 against a `moto` server on loopback).
//! [`record`] is what each store path's archive is published with: a
//! small signed record, and the ed25519 keys that sign it. Push, pull and
//! substitution are built on these (not yet).

mod aws_profile;
pub mod backend;
pub mod key;
pub mod record;
pub mod transfer;

pub use aws_profile::{FileKind, ProfileError};
pub use backend::{CacheBackend, CacheError, Stored};
pub use key::{BadKey, CacheKey};
