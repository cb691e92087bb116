//! Derivations: one build step as pure data, and its canonical bytes.
//!
//! The canonical form is a small line format in which every string is
//! length-prefixed (`<byte length>:<bytes>`), so no value can be confused
//! with syntax whatever it contains, and every map is written in key order:
//!
//! ```text
//! kiln-derivation 1
//! name 18:monitoring-overlay
//! builder 7:overlay 1:1
//! system 12:x86_64-linux
//! output 5:input
//! arg 4:host 10:monitoring
//! input 20:source:files/motd.sh 5:fixed 40:<store path>
//! env 17:SOURCE_DATE_EPOCH 9:315532800
//! ```
//!
//! A fixed output is written `output 5:fixed 64:<NAR sha256>`, or for a
//! download `output 10:fixed-flat 64:<file sha256> <size>`.
//!
//! The derivation hash is the sha256 of exactly these bytes; `kiln
//! show-derivation` prints them. Inputs that are themselves derivations are
//! written as their derivation hash and output path — except fixed-output
//! derivations (fetches, sources), which are written as their output path
//! only: their recipe (a URL, a file name) does not matter, only the bytes
//! they produce, which the path pins.

use std::collections::BTreeMap;
use std::fmt::{self, Write};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::store::path::StorePath;

/// The only system kiln builds for (for now).
pub const SYSTEM: &str = "x86_64-linux";

/// Hex sha256 of a derivation's canonical bytes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DrvHash(String);

impl DrvHash {
    pub fn of(bytes: &[u8]) -> DrvHash {
        let digest: [u8; 32] = Sha256::digest(bytes).into();
        DrvHash(hex(&digest))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Parse a 64-character lowercase hex string.
    pub fn parse(text: &str) -> Option<DrvHash> {
        (text.len() == 64
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| DrvHash(text.to_owned()))
    }
}

impl fmt::Display for DrvHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// What a derivation's output is addressed by.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Output {
    /// By the derivation's hash (everything that went into it).
    Input,
    /// By the expected sha256 of the output's NAR serialisation: a fetch or
    /// a source file. The output is checked against it after building.
    Fixed { nar_sha256: String },
    /// By the expected sha256 of one regular file's bytes (a download: the
    /// hash the lockfile records), and its size. The output must be that
    /// file, not executable.
    FixedFlat { sha256: String, size: u64 },
}

/// A named input.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Input {
    /// The output of another derivation (input-addressed).
    Derivation { drv: DrvHash, path: StorePath },
    /// The output of a fixed-output derivation: only the path matters.
    Fixed { drv: DrvHash, path: StorePath },
}

impl Input {
    pub fn path(&self) -> &StorePath {
        match self {
            Input::Derivation { path, .. } | Input::Fixed { path, .. } => path,
        }
    }

    pub fn drv(&self) -> &DrvHash {
        match self {
            Input::Derivation { drv, .. } | Input::Fixed { drv, .. } => drv,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Derivation {
    /// Store path name of the output (`monitoring-overlay`).
    pub name: String,
    /// Which builder runs it, and its version: a builder change that can
    /// change output bytes bumps the version, and so every hash.
    pub builder: String,
    pub builder_version: u32,
    pub system: String,
    pub output: Output,
    /// Builder arguments, canonical strings (JSON for structured data).
    pub args: BTreeMap<String, String>,
    pub inputs: BTreeMap<String, Input>,
    /// Extra environment for the builder (SOURCE_DATE_EPOCH, …).
    pub env: BTreeMap<String, String>,
}

fn netstring(out: &mut String, text: &str) {
    let _ = write!(out, "{}:{text}", text.len());
}

impl Derivation {
    /// The canonical bytes (see the module docs).
    pub fn canonical(&self) -> String {
        let mut out = String::from("kiln-derivation 1\nname ");
        netstring(&mut out, &self.name);
        out.push_str("\nbuilder ");
        netstring(&mut out, &self.builder);
        out.push(' ');
        netstring(&mut out, &self.builder_version.to_string());
        out.push_str("\nsystem ");
        netstring(&mut out, &self.system);
        out.push_str("\noutput ");
        match &self.output {
            Output::Input => netstring(&mut out, "input"),
            Output::Fixed { nar_sha256 } => {
                netstring(&mut out, "fixed");
                out.push(' ');
                netstring(&mut out, nar_sha256);
            }
            Output::FixedFlat { sha256, size } => {
                netstring(&mut out, "fixed-flat");
                out.push(' ');
                netstring(&mut out, sha256);
                out.push(' ');
                netstring(&mut out, &size.to_string());
            }
        }
        out.push('\n');
        for (key, value) in &self.args {
            out.push_str("arg ");
            netstring(&mut out, key);
            out.push(' ');
            netstring(&mut out, value);
            out.push('\n');
        }
        for (key, input) in &self.inputs {
            out.push_str("input ");
            netstring(&mut out, key);
            out.push(' ');
            match input {
                Input::Derivation { drv, path } => {
                    netstring(&mut out, "derivation");
                    out.push(' ');
                    netstring(&mut out, drv.as_str());
                    out.push(' ');
                    netstring(&mut out, &path.to_string());
                }
                Input::Fixed { path, .. } => {
                    netstring(&mut out, "fixed");
                    out.push(' ');
                    netstring(&mut out, &path.to_string());
                }
            }
            out.push('\n');
        }
        for (key, value) in &self.env {
            out.push_str("env ");
            netstring(&mut out, key);
            out.push(' ');
            netstring(&mut out, value);
            out.push('\n');
        }
        out
    }

    pub fn hash(&self) -> DrvHash {
        DrvHash::of(self.canonical().as_bytes())
    }

    pub fn is_fixed_output(&self) -> bool {
        matches!(self.output, Output::Fixed { .. } | Output::FixedFlat { .. })
    }
}
