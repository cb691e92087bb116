//! Proxmox VE: what kiln sends to its API.
//!
//! | module | owns |
//! |---|---|
//! | [`schema`] | Proxmox's published API schema, compiled; validation of request parameters as `pveproxy` does it |
//! | [`sim`] | a Proxmox VE API simulator (axum/hyper) for tests and `kiln-pve-sim` |
//!
//! The schema is data, not code: load `pve-apidata-*.json` (pve-docs
//! `api-viewer/apidata.js`) and `pve-api-formats.json` with
//! [`ApiSchema::from_json`], look a request up with [`ApiSchema::method`]
//! and [`MethodSchema::validate`] its parameters. kiln uses it to check the
//! guest specs it emits, and its Proxmox simulator uses it to refuse what a
//! real node would refuse.

pub mod client;
pub mod schema;
pub mod sim;

pub use schema::{ApiSchema, MethodSchema, SchemaError, Violation};
