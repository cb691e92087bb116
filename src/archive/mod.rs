//! Root filesystem tarballs: packing a directory into a bit-for-bit
//! reproducible `.tar.zst` (a Proxmox LXC template), and unpacking a rootfs
//! tarball without letting it write outside its destination.
//!
//! # Formats
//!
//! - **tar**, in the POSIX *pax* interchange format
//!   ([POSIX.1-2024 `pax`, "pax Interchange Format"](https://pubs.opengroup.org/onlinepubs/9799919799/utilities/pax.html#tag_20_94_13)):
//!   512-byte *ustar* header blocks, each optionally preceded by a pax
//!   extended header (type `x`) of `"<length> <key>=<value>\n"` records for
//!   what does not fit the ustar fields: long names (`path`, `linkpath`),
//!   big ids and sizes (`uid`, `gid`, `size`), and extended attributes as
//!   `SCHILY.xattr.<name>` records, the keyword GNU tar and libarchive use
//!   ([GNU tar manual, "Extended attributes"](https://www.gnu.org/software/tar/manual/html_node/Extensions.html),
//!   [GNU tar's header formats](https://www.gnu.org/software/tar/manual/html_node/Standard.html)).
//!   The archive ends with two zero blocks and is padded to a 10240-byte
//!   record, as GNU tar pads it.
//! - **zstd** ([RFC 8878](https://www.rfc-editor.org/rfc/rfc8878), the
//!   [frame format](https://github.com/facebook/zstd/blob/dev/doc/zstd_compression_format.md)):
//!   one frame with a content checksum and no content size.
//!
//! # Packing ([`pack`])
//!
//! What [`pack`] writes depends only on the tree's names, contents, modes,
//! numeric owners, symlink targets, hard-link structure, device numbers and
//! extended attributes, and on [`PackOptions::epoch`] and
//! [`PackOptions::level`]: not on mtimes, inode or creation order, the
//! machine, the time zone, the locale or the number of threads. Its tar
//! bytes are those of GNU tar 1.34's
//!
//! ```text
//! tar --format=posix --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
//!     --sort=name --mtime=@EPOCH --numeric-owner --xattrs --xattrs-include='*' -C ROOT -cf - .
//! ```
//!
//! except that extended attributes are sorted by name (GNU tar writes them
//! in the file system's order) and `security.selinux` is left out (the
//! build machine's policy labels every file it creates; Proxmox does not
//! restore it). The encoder is written by hand in `format.rs` rather than
//! taken from the `tar` crate so that no dependency update can change the
//! bytes.
//!
//! zstd is always run in its multithreaded mode: its output is then the
//! same for any number of workers (it cuts the input into jobs whose size
//! depends only on the level), whereas single-threaded mode writes other
//! bytes. The compressed bytes do depend on the zstd library version, which
//! `Cargo.lock` pins (`zstd-sys`).
//!
//! # Unpacking ([`unpack`])
//!
//! [`unpack`] reads plain, gzip, xz or zstd tarballs (told apart by their
//! magic bytes) with its own tar reader, and creates every entry relative to
//! directory handles opened without following symlinks. An entry whose path
//! is absolute, has a `..` component or goes through a symlink, a hard link
//! to outside the destination or through a symlink, or a device node when
//! not running as root is refused with [`ArchiveError::Refused`]. Symlinks
//! themselves are created as they are (an absolute target like
//! `/etc/alternatives/editor` is normal in a root filesystem); they are
//! never followed.

mod format;
mod pack;
mod reader;
mod unpack;
mod walk;

use std::io;
use std::path::PathBuf;

pub use pack::{PackOptions, PackReport, pack};
pub use unpack::{Compression, UnpackReport, unpack};

/// Problems packing or unpacking. Every variant names the file or the
/// archive entry involved.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// [`PackOptions`] that cannot be used.
    #[error("invalid pack options: {detail}")]
    Options { detail: String },
    /// The tree to pack is not a directory.
    #[error("cannot pack {root}: {reason}")]
    Root { root: PathBuf, reason: String },
    /// Reading the tree being packed failed.
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The tree changed while it was being packed, so the archive would
    /// describe a state that never existed.
    #[error("{path} changed while it was being packed: {detail}")]
    Changed { path: PathBuf, detail: String },
    /// Writing the archive failed.
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Reading or decompressing an archive being unpacked failed.
    #[error("cannot read {archive}: {source}")]
    ReadArchive {
        archive: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The archive is not a tar stream this reader understands.
    #[error("cannot unpack {archive}: {detail}")]
    Malformed { archive: PathBuf, detail: String },
    /// An entry that would write outside the destination, or that kiln
    /// cannot create safely. Nothing outside the destination was touched.
    #[error("refusing to unpack {archive}: entry `{entry}` {reason}")]
    Refused {
        archive: PathBuf,
        entry: String,
        reason: Refusal,
    },
    /// An entry kiln does not know how to create.
    #[error("cannot unpack `{entry}` from {archive}: {detail}")]
    Unsupported {
        archive: PathBuf,
        entry: String,
        detail: String,
    },
    /// The destination is not an empty directory.
    #[error("cannot unpack into {dest}: {reason}")]
    Destination { dest: PathBuf, reason: String },
    /// Creating an entry in the destination failed.
    #[error("cannot unpack `{entry}` from {archive}: {source}")]
    Extract {
        archive: PathBuf,
        entry: String,
        #[source]
        source: io::Error,
    },
}

/// Why [`unpack`] refused an entry. Displayed after the entry's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("has a `..` component, which could reach outside the destination")]
    ParentComponent,
    #[error("is an absolute path; a rootfs tarball names its entries relative to its root")]
    Absolute,
    #[error("goes through the symlink `{symlink}`; kiln never follows symlinks while unpacking")]
    ThroughSymlink { symlink: String },
    #[error("replaces the destination directory itself with something that is not a directory")]
    RootNotDirectory,
    #[error("is a hard link to `{target}`, which is outside the destination")]
    LinkEscapes { target: String },
    #[error(
        "is a hard link to `{target}`, which goes through the symlink `{symlink}`; kiln never follows symlinks while unpacking"
    )]
    LinkThroughSymlink { target: String, symlink: String },
    #[error("is a hard link to `{target}`, which no earlier entry of the archive created")]
    LinkTargetMissing { target: String },
    #[error("is a hard link to `{target}`, which is a directory")]
    LinkToDirectory { target: String },
    #[error(
        "is a device node; creating device nodes needs root, and kiln runs as uid {uid} (unpack as root, or build the image where it can run as root)"
    )]
    DeviceNeedsRoot { uid: u32 },
}

/// Lower-case hex, for digests.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
    text
}
