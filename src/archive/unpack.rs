//! [`unpack`]: a rootfs tarball → a directory, refusing anything that would
//! write outside it.
//!
//! The tar stream is read by [`super::reader`].
//!
//! Every entry is created relative to a handle on its parent directory,
//! which was opened component by component with `O_NOFOLLOW` from the
//! destination: a symlink in the way is refused, never followed, and nothing
//! is resolved through a path string that a later entry could redirect.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::XattrFlags;
use rustix::fs::{AtFlags, CWD, Dir, FileType, Gid, Mode, OFlags, Timespec, Timestamps, Uid};
use rustix::io::Errno;

use super::reader::{Entry, EntryKind, ReadError, TarReader};
use super::{ArchiveError, Refusal};

/// Read buffer for the compressed input and for file contents.
const BUFFER: usize = 1 << 20;

/// How the archive was compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Xz,
    Zstd,
}

impl std::fmt::Display for Compression {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(match self {
            Compression::None => "uncompressed",
            Compression::Gzip => "gzip",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
        })
    }
}

/// What [`unpack`] created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackReport {
    pub compression: Compression,
    /// Entries created (pax extended headers not counted).
    pub entries: u64,
    pub files: u64,
    pub directories: u64,
    pub symlinks: u64,
    pub hard_links: u64,
    pub devices: u64,
    pub fifos: u64,
    /// Bytes of file contents written.
    pub file_bytes: u64,
    /// Whether owners were set from the archive: only when running as root,
    /// as GNU tar does (otherwise every file belongs to the caller).
    pub owners_preserved: bool,
}

/// Unpack the tarball `archive` (plain, gzip, xz or zstd) into `dest`, an
/// existing empty directory. Numeric owners (when running as root), modes
/// including setuid, mtimes, extended attributes, hard links, device nodes
/// and FIFOs are restored. On error `dest` may hold part of the archive;
/// nothing outside it has been created or changed.
pub fn unpack(archive: &Path, dest: &Path) -> Result<UnpackReport, ArchiveError> {
    let read_error = |source| ArchiveError::ReadArchive {
        archive: archive.to_path_buf(),
        source,
    };
    let file = File::open(archive).map_err(read_error)?;
    let (compression, stream) =
        decompressor(BufReader::with_capacity(BUFFER, file)).map_err(|error| match error {
            Detect::Io(source) => read_error(source),
            Detect::Bzip2 => ArchiveError::Malformed {
                archive: archive.to_path_buf(),
                detail: "it is bzip2-compressed, which kiln does not read; recompress it with zstd, xz or gzip".to_owned(),
            },
        })?;
    let root = open_destination(dest)?;
    let mut extractor = Extractor::new(archive, dest, root, compression);
    let mut reader = TarReader::new(stream);
    loop {
        let entry = match reader.next_entry() {
            Ok(Some(entry)) => entry,
            Ok(None) => break,
            Err(error) => return Err(reader_error(archive, compression, error)),
        };
        extractor.extract(entry, &mut reader)?;
    }
    extractor.finish()
}

enum Detect {
    Io(io::Error),
    Bzip2,
}

/// Tell the compression from the magic bytes and wrap the matching
/// decoder around the input.
fn decompressor(mut input: BufReader<File>) -> Result<(Compression, Box<dyn Read + Send>), Detect> {
    let head = input.fill_buf().map_err(Detect::Io)?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        (
            Compression::Gzip,
            Box::new(flate2::bufread::MultiGzDecoder::new(input)),
        )
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        (
            Compression::Xz,
            Box::new(liblzma::bufread::XzDecoder::new_multi_decoder(input)),
        )
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let decoder = zstd::stream::read::Decoder::with_buffer(input).map_err(Detect::Io)?;
        (Compression::Zstd, Box::new(decoder))
    } else if head.starts_with(b"BZh") {
        return Err(Detect::Bzip2);
    } else {
        (Compression::None, Box::new(input))
    })
}

fn open_destination(dest: &Path) -> Result<OwnedFd, ArchiveError> {
    let error = |reason: String| ArchiveError::Destination {
        dest: dest.to_path_buf(),
        reason,
    };
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let root = rustix::fs::openat(CWD, dest, flags, Mode::empty()).map_err(|errno| {
        error(match errno {
            Errno::NOTDIR | Errno::LOOP => "it is not a directory".to_owned(),
            other => io::Error::from(other).to_string(),
        })
    })?;
    let mut listing = Dir::read_from(&root).map_err(|e| error(io::Error::from(e).to_string()))?;
    while let Some(entry) = listing.read() {
        let entry = entry.map_err(|e| error(io::Error::from(e).to_string()))?;
        if entry.file_name() != c"." && entry.file_name() != c".." {
            return Err(error("it is not empty".to_owned()));
        }
    }
    Ok(root)
}

fn reader_error(archive: &Path, compression: Compression, error: ReadError) -> ArchiveError {
    let archive = archive.to_path_buf();
    match error {
        ReadError::Io(source) => ArchiveError::ReadArchive { archive, source },
        ReadError::NotTar => ArchiveError::Malformed {
            archive,
            detail: if compression == Compression::None {
                "it is not a tar archive (its first header's checksum is wrong), nor gzip-, xz- or zstd-compressed".to_owned()
            } else {
                format!(
                    "it is {compression}-compressed, but what it holds is not a tar archive (its first header's checksum is wrong)"
                )
            },
        },
        ReadError::Malformed { offset, detail } => ArchiveError::Malformed {
            archive,
            detail: format!("{detail} (at byte {offset} of the tar stream)"),
        },
        ReadError::Unsupported { entry, detail } => ArchiveError::Unsupported {
            archive,
            entry,
            detail,
        },
    }
}

/// Why a directory path could not be opened.
enum Walk {
    /// The path up to and including this component is a symlink.
    Symlink(Vec<u8>),
    /// This prefix does not exist (only when not creating).
    Missing,
    Io(io::Error),
}

/// A directory whose mode and mtime are set at the end, once nothing more
/// is created in it (a read-only mode would stop that, and every creation
/// changes the mtime).
struct Deferred {
    path: Vec<u8>,
    mode: u32,
    mtime: Timespec,
}

/// Creates entries under the destination.
struct Extractor<'a> {
    archive: &'a Path,
    dest: &'a Path,
    root: OwnedFd,
    /// Owners and device nodes need root.
    privileged: bool,
    uid: u32,
    /// The parent directory of the last entry, kept open for the next one
    /// (entries come sorted, so most share it).
    parent: Option<(Vec<u8>, OwnedFd)>,
    directories: Vec<Deferred>,
    report: UnpackReport,
    buffer: Vec<u8>,
}

impl<'a> Extractor<'a> {
    fn new(archive: &'a Path, dest: &'a Path, root: OwnedFd, compression: Compression) -> Self {
        let uid = rustix::process::geteuid();
        Extractor {
            archive,
            dest,
            root,
            privileged: uid.is_root(),
            uid: uid.as_raw(),
            parent: None,
            directories: Vec::new(),
            report: UnpackReport {
                compression,
                entries: 0,
                files: 0,
                directories: 0,
                symlinks: 0,
                hard_links: 0,
                devices: 0,
                fifos: 0,
                file_bytes: 0,
                owners_preserved: uid.is_root(),
            },
            buffer: Vec::new(),
        }
    }

    fn extract<R: Read>(
        &mut self,
        entry: Entry,
        reader: &mut TarReader<R>,
    ) -> Result<(), ArchiveError> {
        let name = String::from_utf8_lossy(&entry.path).into_owned();
        let archive = self.archive;
        let refuse = |reason| refused(archive, &name, reason);
        let path = normalize(&entry.path).map_err(refuse)?;
        if matches!(entry.kind, EntryKind::CharDevice | EntryKind::BlockDevice) && !self.privileged
        {
            return Err(refuse(Refusal::DeviceNeedsRoot { uid: self.uid }));
        }
        self.report.entries += 1;
        if path.is_empty() {
            // `./`: the destination itself.
            if entry.kind != EntryKind::Directory {
                return Err(refuse(Refusal::RootNotDirectory));
            }
            let root = self
                .root
                .try_clone()
                .map_err(|e| self.extract_error(&name, e))?;
            return self.directory_metadata(&root, Vec::new(), &entry, &name);
        }
        let (parent_path, file_name) = split_parent(&path);
        let parent = self.open_parent(parent_path, &name)?;
        let result = self.create(&parent, file_name, &path, &entry, &name, reader);
        self.parent = Some((parent_path.to_vec(), parent));
        result
    }

    fn create<R: Read>(
        &mut self,
        parent: &OwnedFd,
        file_name: &[u8],
        path: &[u8],
        entry: &Entry,
        name: &str,
        reader: &mut TarReader<R>,
    ) -> Result<(), ArchiveError> {
        let archive = self.archive;
        let error = |e: io::Error| extract_error(archive, name, e);
        match entry.kind {
            EntryKind::File => {
                let flags = OFlags::WRONLY
                    | OFlags::CREATE
                    | OFlags::EXCL
                    | OFlags::NOFOLLOW
                    | OFlags::CLOEXEC;
                let fd = self
                    .replacing(parent, file_name, || {
                        rustix::fs::openat(parent, file_name, flags, Mode::from_raw_mode(0o600))
                    })
                    .map_err(error)?;
                let mut file = File::from(fd);
                self.buffer.resize(BUFFER, 0);
                loop {
                    let read = reader.read_data(&mut self.buffer).map_err(|source| {
                        ArchiveError::ReadArchive {
                            archive: archive.to_path_buf(),
                            source,
                        }
                    })?;
                    if read == 0 {
                        break;
                    }
                    file.write_all(&self.buffer[..read]).map_err(error)?;
                    self.report.file_bytes += read as u64;
                }
                self.owner_mode_xattrs(file.as_fd(), entry).map_err(error)?;
                rustix::fs::futimens(&file, &times(entry.mtime)).map_err(|e| error(e.into()))?;
                self.report.files += 1;
            }
            EntryKind::Directory => {
                let made = rustix::fs::mkdirat(parent, file_name, Mode::from_raw_mode(0o700));
                match made {
                    Ok(()) => {}
                    Err(Errno::EXIST) => {
                        let stat = rustix::fs::statat(parent, file_name, AtFlags::SYMLINK_NOFOLLOW)
                            .map_err(|e| error(e.into()))?;
                        if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
                            self.remove(parent, file_name).map_err(error)?;
                            rustix::fs::mkdirat(parent, file_name, Mode::from_raw_mode(0o700))
                                .map_err(|e| error(e.into()))?;
                        }
                    }
                    Err(errno) => return Err(error(errno.into())),
                }
                let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                let directory = rustix::fs::openat(parent, file_name, flags, Mode::empty())
                    .map_err(|e| error(e.into()))?;
                self.directory_metadata(&directory, path.to_vec(), entry, name)?;
            }
            EntryKind::Symlink => {
                self.replacing(parent, file_name, || {
                    rustix::fs::symlinkat(entry.link.as_slice(), parent, file_name)
                })
                .map_err(error)?;
                self.special_metadata(parent, file_name, path, entry, false)
                    .map_err(error)?;
                self.report.symlinks += 1;
            }
            EntryKind::HardLink => {
                let target = self.link_target(&entry.link, name)?;
                self.replacing(parent, file_name, || {
                    rustix::fs::linkat(&target.0, &target.1, parent, file_name, AtFlags::empty())
                })
                .map_err(error)?;
                self.report.hard_links += 1;
            }
            EntryKind::CharDevice | EntryKind::BlockDevice | EntryKind::Fifo => {
                let (file_type, device) = match entry.kind {
                    EntryKind::CharDevice => (FileType::CharacterDevice, entry.device),
                    EntryKind::BlockDevice => (FileType::BlockDevice, entry.device),
                    _ => (FileType::Fifo, (0, 0)),
                };
                let device = rustix::fs::makedev(device.0, device.1);
                self.replacing(parent, file_name, || {
                    rustix::fs::mknodat(
                        parent,
                        file_name,
                        file_type,
                        Mode::from_raw_mode(0o600),
                        device,
                    )
                })
                .map_err(error)?;
                self.special_metadata(parent, file_name, path, entry, true)
                    .map_err(error)?;
                if entry.kind == EntryKind::Fifo {
                    self.report.fifos += 1;
                } else {
                    self.report.devices += 1;
                }
            }
        }
        Ok(())
    }

    /// Run `make`; if the name exists already (an archive may list a path
    /// twice; the later entry wins, as with tar), remove what is there
    /// without following it and try once more.
    fn replacing<T>(
        &mut self,
        parent: &OwnedFd,
        file_name: &[u8],
        mut make: impl FnMut() -> rustix::io::Result<T>,
    ) -> io::Result<T> {
        match make() {
            Err(Errno::EXIST) => {
                self.remove(parent, file_name)?;
                Ok(make()?)
            }
            result => Ok(result?),
        }
    }

    /// Remove a non-directory, or an empty directory.
    fn remove(&mut self, parent: &OwnedFd, file_name: &[u8]) -> io::Result<()> {
        let stat = rustix::fs::statat(parent, file_name, AtFlags::SYMLINK_NOFOLLOW)?;
        let flags = if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
            AtFlags::REMOVEDIR
        } else {
            AtFlags::empty()
        };
        // The cached parent could be the directory removed.
        self.parent = None;
        Ok(rustix::fs::unlinkat(parent, file_name, flags)?)
    }

    /// Owner, then mode (a chown clears setuid and setgid), then extended
    /// attributes (a chown also drops `security.capability`).
    fn owner_mode_xattrs(&self, fd: std::os::fd::BorrowedFd<'_>, entry: &Entry) -> io::Result<()> {
        if let Some((uid, gid)) = self.owner(entry)? {
            rustix::fs::fchown(fd, Some(uid), Some(gid))?;
        }
        rustix::fs::fchmod(fd, Mode::from_raw_mode(entry.mode))?;
        for (name, value) in &entry.xattrs {
            rustix::fs::fsetxattr(fd, name.as_slice(), value, XattrFlags::empty())
                .map_err(|errno| xattr_error(name, errno))?;
        }
        Ok(())
    }

    /// Metadata of a symlink, device or FIFO, which are not opened.
    fn special_metadata(
        &self,
        parent: &OwnedFd,
        file_name: &[u8],
        path: &[u8],
        entry: &Entry,
        has_mode: bool,
    ) -> io::Result<()> {
        if let Some((uid, gid)) = self.owner(entry)? {
            rustix::fs::chownat(
                parent,
                file_name,
                Some(uid),
                Some(gid),
                AtFlags::SYMLINK_NOFOLLOW,
            )?;
        }
        if has_mode {
            // Just created by mknodat, so not a symlink.
            rustix::fs::chmodat(
                parent,
                file_name,
                Mode::from_raw_mode(entry.mode),
                AtFlags::empty(),
            )?;
        }
        if !entry.xattrs.is_empty() {
            // No *at form of setxattr before Linux 6.13; the path's
            // directories were all opened without following symlinks.
            let full = self.dest.join(OsStr::from_bytes(path));
            for (name, value) in &entry.xattrs {
                rustix::fs::lsetxattr(&full, name.as_slice(), value, XattrFlags::empty())
                    .map_err(|errno| xattr_error(name, errno))?;
            }
        }
        rustix::fs::utimensat(
            parent,
            file_name,
            &times(entry.mtime),
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
        Ok(())
    }

    fn directory_metadata(
        &mut self,
        directory: &OwnedFd,
        path: Vec<u8>,
        entry: &Entry,
        name: &str,
    ) -> Result<(), ArchiveError> {
        let result = (|| {
            if let Some((uid, gid)) = self.owner(entry)? {
                rustix::fs::fchown(directory, Some(uid), Some(gid))?;
            }
            for (xattr, value) in &entry.xattrs {
                rustix::fs::fsetxattr(directory, xattr.as_slice(), value, XattrFlags::empty())
                    .map_err(|errno| xattr_error(xattr, errno))?;
            }
            Ok(())
        })();
        result.map_err(|e| self.extract_error(name, e))?;
        self.directories.push(Deferred {
            path,
            mode: entry.mode,
            mtime: entry.mtime,
        });
        self.report.directories += 1;
        Ok(())
    }

    fn owner(&self, entry: &Entry) -> io::Result<Option<(Uid, Gid)>> {
        if !self.privileged {
            return Ok(None);
        }
        let id = |value: u64| {
            u32::try_from(value)
                .map_err(|_| io::Error::other(format!("owner id {value} does not fit 32 bits")))
        };
        Ok(Some((
            Uid::from_raw(id(entry.uid)?),
            Gid::from_raw(id(entry.gid)?),
        )))
    }

    /// The parent directory and name of a hard link's target, checked to
    /// be inside the destination, reached without symlinks, and existing.
    fn link_target(&mut self, link: &[u8], name: &str) -> Result<(OwnedFd, Vec<u8>), ArchiveError> {
        let target = String::from_utf8_lossy(link).into_owned();
        let path = normalize(link).map_err(|_| {
            self.refused(
                name,
                Refusal::LinkEscapes {
                    target: target.clone(),
                },
            )
        })?;
        if path.is_empty() {
            return Err(self.refused(name, Refusal::LinkToDirectory { target }));
        }
        let (directory, file_name) = split_parent(&path);
        let missing = || Refusal::LinkTargetMissing {
            target: target.clone(),
        };
        let parent = match self.open_directory(directory, false) {
            Ok(fd) => fd,
            Err(Walk::Symlink(symlink)) => {
                return Err(self.refused(
                    name,
                    Refusal::LinkThroughSymlink {
                        target: target.clone(),
                        symlink: String::from_utf8_lossy(&symlink).into_owned(),
                    },
                ));
            }
            Err(Walk::Missing) => return Err(self.refused(name, missing())),
            Err(Walk::Io(error)) => return Err(self.extract_error(name, error)),
        };
        match rustix::fs::statat(&parent, file_name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::Directory => {
                Err(self.refused(name, Refusal::LinkToDirectory { target }))
            }
            Ok(_) => Ok((parent, file_name.to_vec())),
            Err(Errno::NOENT) => Err(self.refused(name, missing())),
            Err(errno) => Err(self.extract_error(name, errno.into())),
        }
    }

    /// The directory `path` (normalised, relative to the destination),
    /// creating missing directories as GNU tar does.
    fn open_parent(&mut self, path: &[u8], name: &str) -> Result<OwnedFd, ArchiveError> {
        if let Some((cached, _)) = &self.parent
            && cached == path
            && let Some((_, fd)) = self.parent.take()
        {
            return Ok(fd);
        }
        self.open_directory(path, true)
            .map_err(|failure| match failure {
                Walk::Symlink(symlink) => self.refused(
                    name,
                    Refusal::ThroughSymlink {
                        symlink: String::from_utf8_lossy(&symlink).into_owned(),
                    },
                ),
                Walk::Missing => self.extract_error(name, Errno::NOENT.into()),
                Walk::Io(error) => self.extract_error(name, error),
            })
    }

    /// Open `path` below the destination one component at a time, never
    /// following a symlink.
    fn open_directory(&self, path: &[u8], create: bool) -> Result<OwnedFd, Walk> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mut current = self.root.try_clone().map_err(Walk::Io)?;
        if path.is_empty() {
            return Ok(current);
        }
        let mut end = 0;
        for component in path.split(|&b| b == b'/') {
            end += component.len();
            let opened = match rustix::fs::openat(&current, component, flags, Mode::empty()) {
                Err(Errno::NOENT) if create => {
                    match rustix::fs::mkdirat(&current, component, Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(errno) => return Err(Walk::Io(errno.into())),
                    }
                    rustix::fs::openat(&current, component, flags, Mode::empty())
                }
                other => other,
            };
            current = match opened {
                Ok(fd) => fd,
                Err(Errno::NOENT) => return Err(Walk::Missing),
                Err(errno @ (Errno::LOOP | Errno::NOTDIR)) => {
                    let stat = rustix::fs::statat(&current, component, AtFlags::SYMLINK_NOFOLLOW);
                    return Err(match stat {
                        Ok(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::Symlink => {
                            Walk::Symlink(path[..end].to_vec())
                        }
                        _ => Walk::Io(io::Error::new(
                            io::Error::from(errno).kind(),
                            format!(
                                "`{}` is not a directory",
                                String::from_utf8_lossy(&path[..end])
                            ),
                        )),
                    });
                }
                Err(errno) => return Err(Walk::Io(errno.into())),
            };
            end += 1;
        }
        Ok(current)
    }

    /// Set the deferred directory modes and mtimes, deepest first, and
    /// return the report.
    fn finish(mut self) -> Result<UnpackReport, ArchiveError> {
        self.parent = None;
        for directory in std::mem::take(&mut self.directories).iter().rev() {
            let name = String::from_utf8_lossy(&directory.path).into_owned();
            let result = match self.open_directory(&directory.path, false) {
                Ok(fd) => rustix::fs::fchmod(&fd, Mode::from_raw_mode(directory.mode))
                    .and_then(|()| rustix::fs::futimens(&fd, &times(directory.mtime)))
                    .map_err(io::Error::from),
                Err(Walk::Io(error)) => Err(error),
                // Replaced by a later entry: that entry's metadata stands.
                Err(Walk::Missing | Walk::Symlink(_)) => Ok(()),
            };
            result.map_err(|error| self.extract_error(&name, error))?;
        }
        Ok(self.report)
    }

    fn refused(&self, entry: &str, reason: Refusal) -> ArchiveError {
        refused(self.archive, entry, reason)
    }

    fn extract_error(&self, entry: &str, source: io::Error) -> ArchiveError {
        extract_error(self.archive, entry, source)
    }
}

fn refused(archive: &Path, entry: &str, reason: Refusal) -> ArchiveError {
    ArchiveError::Refused {
        archive: archive.to_path_buf(),
        entry: entry.to_owned(),
        reason,
    }
}

fn extract_error(archive: &Path, entry: &str, source: io::Error) -> ArchiveError {
    ArchiveError::Extract {
        archive: archive.to_path_buf(),
        entry: entry.to_owned(),
        source,
    }
}

fn xattr_error(name: &[u8], errno: Errno) -> io::Error {
    io::Error::new(
        io::Error::from(errno).kind(),
        format!(
            "cannot set the extended attribute {}: {}",
            String::from_utf8_lossy(name),
            io::Error::from(errno)
        ),
    )
}

fn times(mtime: Timespec) -> Timestamps {
    Timestamps {
        last_access: mtime,
        last_modification: mtime,
    }
}

/// A normalised path's parent directory and last component.
fn split_parent(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(slash) => (&path[..slash], &path[slash + 1..]),
        None => (&path[..0], path),
    }
}

/// An entry's path relative to the destination, without `.` components or
/// empty ones (`./etc//passwd/` → `etc/passwd`); empty for the destination
/// itself.
fn normalize(path: &[u8]) -> Result<Vec<u8>, Refusal> {
    if path.starts_with(b"/") {
        return Err(Refusal::Absolute);
    }
    let mut normal = Vec::with_capacity(path.len());
    for component in path.split(|&b| b == b'/') {
        match component {
            b"" | b"." => {}
            b".." => return Err(Refusal::ParentComponent),
            _ => {
                if !normal.is_empty() {
                    normal.push(b'/');
                }
                normal.extend_from_slice(component);
            }
        }
    }
    Ok(normal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalised_or_refused() {
        assert_eq!(normalize(b"./").unwrap(), b"");
        assert_eq!(normalize(b".").unwrap(), b"");
        assert_eq!(normalize(b"./etc//passwd/").unwrap(), b"etc/passwd");
        assert_eq!(normalize(b"usr/./bin").unwrap(), b"usr/bin");
        assert_eq!(normalize(b"/etc/passwd"), Err(Refusal::Absolute));
        assert_eq!(normalize(b"../x"), Err(Refusal::ParentComponent));
        assert_eq!(normalize(b"./a/../../x"), Err(Refusal::ParentComponent));
        assert_eq!(normalize(b"a/.."), Err(Refusal::ParentComponent));
        // A name that merely starts with dots is a name.
        assert_eq!(normalize(b"./..foo").unwrap(), b"..foo");
    }

    #[test]
    fn device_nodes_need_root() {
        let dest = tempfile::tempdir().unwrap();
        let root = open_destination(dest.path()).unwrap();
        let archive = Path::new("/archives/rootfs.tar");
        let mut extractor = Extractor::new(archive, dest.path(), root, Compression::None);
        extractor.privileged = false;
        extractor.uid = 1000;
        let entry = Entry {
            path: b"./dev/null".to_vec(),
            kind: EntryKind::CharDevice,
            link: Vec::new(),
            mode: 0o666,
            uid: 0,
            gid: 0,
            mtime: Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            device: (1, 3),
            xattrs: Vec::new(),
        };
        let mut reader = TarReader::new(io::empty());
        let error = extractor.extract(entry, &mut reader).unwrap_err();
        assert!(
            matches!(
                &error,
                ArchiveError::Refused {
                    reason: Refusal::DeviceNeedsRoot { uid: 1000 },
                    ..
                }
            ),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(message.contains("/archives/rootfs.tar"), "{message}");
        assert!(message.contains("`./dev/null`"), "{message}");
        assert!(message.contains("needs root"), "{message}");
        // Refused before anything was created.
        assert!(!dest.path().join("dev").exists());
    }
}
