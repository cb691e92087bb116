//! The content-addressed store: paths, NAR hashing, validity records,
//! atomic registration, locks, verify and gc.

pub mod nar;
pub mod nixbase32;
pub mod path;
