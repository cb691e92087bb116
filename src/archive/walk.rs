//! The reader side of [`super::pack`]: walks the tree one directory at a
//! time (each directory's names sorted by their bytes, depth first, like
//! `tar --sort=name`) and writes its tar stream into the chunk sink.

use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

use super::ArchiveError;
use super::format::{self, Kind, Member};
use super::pack::ChunkSink;

/// Linux caps an extended attribute's value, and a file's list of names,
/// at 64 KiB (`XATTR_SIZE_MAX`, `XATTR_LIST_MAX`).
const XATTR_MAX: usize = 64 << 10;

/// Labels the build machine's SELinux policy puts on every file it creates:
/// identity of the machine, not content of the tree.
const SKIPPED_XATTRS: &[&[u8]] = &[b"security.selinux"];

/// Counts from the walk.
pub(super) struct Walked {
    pub(super) entries: u64,
    pub(super) sockets: u64,
}

/// One directory being walked: its handle and its sorted entries.
struct Frame {
    directory: OwnedFd,
    entries: Vec<(CString, FileType)>,
    next: usize,
    /// Length of the archive name of the directory, with its final `/`.
    name_len: usize,
}

/// Walks the tree and writes the tar stream into the sink.
pub(super) struct Walker<'a> {
    root: &'a Path,
    epoch: u64,
    sink: &'a mut ChunkSink,
    /// The archive name of the entry being visited (`./etc/passwd`).
    name: Vec<u8>,
    /// Header bytes of the entry being written.
    header: Vec<u8>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    xattr_names: Vec<u8>,
    xattr_value: Vec<u8>,
    /// `(device, inode)` of every file with several links → the archive
    /// name it was first written under.
    links: HashMap<(u64, u64), Vec<u8>>,
    /// `(device, inode)` of the archive being written, which must not be
    /// packed into itself.
    output: (u64, u64),
    walked: Walked,
}

/// Where to read a file's extended attributes from.
enum XattrSource<'a> {
    Fd(BorrowedFd<'a>),
    /// Symlinks, devices and FIFOs, which are not opened.
    Path(&'a Path),
}

impl<'a> Walker<'a> {
    pub(super) fn new(
        root: &'a Path,
        epoch: u64,
        output: (u64, u64),
        sink: &'a mut ChunkSink,
    ) -> Self {
        Walker {
            output,
            root,
            epoch,
            sink,
            name: Vec::new(),
            header: Vec::new(),
            xattrs: Vec::new(),
            xattr_names: vec![0; XATTR_MAX],
            xattr_value: vec![0; XATTR_MAX],
            links: HashMap::new(),
            walked: Walked {
                entries: 0,
                sockets: 0,
            },
        }
    }

    pub(super) fn run(mut self, root_dir: OwnedFd) -> Result<Walked, ArchiveError> {
        self.name.extend_from_slice(b"./");
        let stat = rustix::fs::fstat(&root_dir).map_err(|e| self.read_error(e))?;
        self.directory(&root_dir, &stat)?;
        let mut stack = vec![self.frame(root_dir)?];
        while let Some(frame) = stack.last_mut() {
            let Some((child, file_type)) = frame.entries.get(frame.next) else {
                stack.pop();
                continue;
            };
            frame.next += 1;
            self.name.truncate(frame.name_len);
            self.name.extend_from_slice(child.to_bytes());
            if let Some(directory) = self.visit(frame.directory.as_fd(), child, *file_type)? {
                stack.push(self.frame(directory)?);
            }
        }
        Ok(self.walked)
    }

    /// Read and sort the entries of the directory just written as
    /// `self.name`.
    fn frame(&self, directory: OwnedFd) -> Result<Frame, ArchiveError> {
        let mut entries = Vec::new();
        let mut reader = Dir::read_from(&directory).map_err(|e| self.read_error(e))?;
        while let Some(entry) = reader.read() {
            let entry = entry.map_err(|e| self.read_error(e))?;
            let name = entry.file_name();
            if name != c"." && name != c".." {
                entries.push((name.to_owned(), entry.file_type()));
            }
        }
        entries.sort_unstable_by(|a, b| a.0.to_bytes().cmp(b.0.to_bytes()));
        Ok(Frame {
            directory,
            entries,
            next: 0,
            name_len: self.name.len(),
        })
    }

    /// Write the entry `name` of `parent`; a directory's handle is returned
    /// for its entries to be walked next.
    fn visit(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &CStr,
        file_type: FileType,
    ) -> Result<Option<OwnedFd>, ArchiveError> {
        match file_type {
            FileType::RegularFile => self.regular_file(parent, name).map(|()| None),
            FileType::Directory => {
                let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                let directory = rustix::fs::openat(parent, name, flags, Mode::empty())
                    .map_err(|e| self.open_error(e))?;
                let stat = rustix::fs::fstat(&directory).map_err(|e| self.read_error(e))?;
                self.name.push(b'/');
                self.directory(&directory, &stat)?;
                Ok(Some(directory))
            }
            // The directory entry did not say (some file systems do not),
            // or it is something that is not opened: look.
            _ => {
                let stat = rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| self.read_error(e))?;
                match FileType::from_raw_mode(stat.st_mode) {
                    FileType::RegularFile | FileType::Directory => {
                        self.visit(parent, name, FileType::from_raw_mode(stat.st_mode))
                    }
                    _ => self.special(parent, name, &stat).map(|()| None),
                }
            }
        }
    }

    fn directory(&mut self, directory: &OwnedFd, stat: &Stat) -> Result<(), ArchiveError> {
        self.read_xattrs(XattrSource::Fd(directory.as_fd()))?;
        self.emit(Kind::Directory, stat)
    }

    fn regular_file(&mut self, parent: BorrowedFd<'_>, name: &CStr) -> Result<(), ArchiveError> {
        // NONBLOCK: should it have become a FIFO since the directory was
        // read, opening it must not hang.
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
        let fd = rustix::fs::openat(parent, name, flags, Mode::empty())
            .map_err(|e| self.open_error(e))?;
        let stat = rustix::fs::fstat(&fd).map_err(|e| self.read_error(e))?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
            return Err(self.changed("it is no longer a regular file".to_owned()));
        }
        if (stat.st_dev, stat.st_ino) == self.output {
            return Err(ArchiveError::Root {
                root: self.root.to_path_buf(),
                reason: format!(
                    "the archive being written, {}, is inside it",
                    self.disk_path().display()
                ),
            });
        }
        if self.written_before(&stat)? {
            return Ok(());
        }
        self.read_xattrs(XattrSource::Fd(fd.as_fd()))?;
        let size = u64::try_from(stat.st_size).unwrap_or(0);
        self.emit(Kind::File { size }, &stat)?;
        let mut file = File::from(fd);
        let mut remaining = size;
        while remaining > 0 {
            let read = self
                .sink
                .read_from(&mut file, remaining)
                .map_err(|source| self.io_error(source))?;
            if read == 0 {
                return Err(self.changed(format!(
                    "it was {size} bytes long when opened and {} bytes shorter when read",
                    remaining
                )));
            }
            remaining -= read as u64;
        }
        self.sink
            .write_zeros(format::padding(size) as u64)
            .map_err(|source| self.io_error(source))
    }

    /// Symlinks, devices, FIFOs and sockets.
    fn special(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &CStr,
        stat: &Stat,
    ) -> Result<(), ArchiveError> {
        let file_type = FileType::from_raw_mode(stat.st_mode);
        if file_type == FileType::Socket {
            self.walked.sockets += 1;
            return Ok(());
        }
        if self.written_before(stat)? {
            return Ok(());
        }
        let path = self.disk_path();
        self.read_xattrs(XattrSource::Path(&path))?;
        let major = rustix::fs::major(stat.st_rdev);
        let minor = rustix::fs::minor(stat.st_rdev);
        match file_type {
            FileType::Symlink => {
                let target = rustix::fs::readlinkat(parent, name, Vec::new())
                    .map_err(|e| self.read_error(e))?;
                self.emit(
                    Kind::Symlink {
                        target: target.as_bytes(),
                    },
                    stat,
                )
            }
            FileType::CharacterDevice => self.emit(Kind::CharDevice { major, minor }, stat),
            FileType::BlockDevice => self.emit(Kind::BlockDevice { major, minor }, stat),
            FileType::Fifo => self.emit(Kind::Fifo, stat),
            other => Err(ArchiveError::Read {
                path,
                source: io::Error::other(format!("cannot archive a file of type {other:?}")),
            }),
        }
    }

    /// If the file has several links and one was written already, write
    /// this name as a hard link to it (and return true); the first name in
    /// walk order carries the contents, so which one does is deterministic.
    fn written_before(&mut self, stat: &Stat) -> Result<bool, ArchiveError> {
        if stat.st_nlink < 2 {
            return Ok(false);
        }
        let key = (stat.st_dev, stat.st_ino);
        let Some(first) = self.links.get(&key) else {
            self.links.insert(key, self.name.clone());
            return Ok(false);
        };
        let first = first.clone();
        self.xattrs.clear();
        self.emit(Kind::HardLink { target: &first }, stat)?;
        Ok(true)
    }

    /// Write the header of the entry `self.name`, with `self.xattrs`.
    fn emit(&mut self, kind: Kind<'_>, stat: &Stat) -> Result<(), ArchiveError> {
        self.header.clear();
        format::encode_header(
            &Member {
                name: &self.name,
                kind,
                mode: stat.st_mode & 0o7777,
                uid: u64::from(stat.st_uid),
                gid: u64::from(stat.st_gid),
                mtime: self.epoch,
                xattrs: &self.xattrs,
            },
            &mut self.header,
        );
        self.walked.entries += 1;
        self.sink
            .write(&self.header)
            .map_err(|source| ArchiveError::Write {
                path: self.disk_path(),
                source,
            })
    }

    /// Fill `self.xattrs` with the file's extended attributes, sorted by
    /// name.
    fn read_xattrs(&mut self, source: XattrSource<'_>) -> Result<(), ArchiveError> {
        self.xattrs.clear();
        let listed = match &source {
            XattrSource::Fd(fd) => rustix::fs::flistxattr(fd, &mut self.xattr_names[..]),
            XattrSource::Path(path) => rustix::fs::llistxattr(*path, &mut self.xattr_names[..]),
        };
        let len = match listed {
            Ok(len) => len,
            // A file system without extended attributes has none to keep.
            Err(Errno::OPNOTSUPP) => 0,
            Err(errno) => return Err(self.read_error(errno)),
        };
        for name in self.xattr_names[..len].split(|&b| b == 0) {
            if name.is_empty() || SKIPPED_XATTRS.contains(&name) {
                continue;
            }
            let value = match &source {
                XattrSource::Fd(fd) => rustix::fs::fgetxattr(fd, name, &mut self.xattr_value[..]),
                XattrSource::Path(path) => {
                    rustix::fs::lgetxattr(*path, name, &mut self.xattr_value[..])
                }
            };
            let value_len = value.map_err(|errno| ArchiveError::Read {
                path: self.disk_path(),
                source: io::Error::other(format!(
                    "extended attribute {}: {}",
                    String::from_utf8_lossy(name),
                    io::Error::from(errno)
                )),
            })?;
            self.xattrs
                .push((name.to_vec(), self.xattr_value[..value_len].to_vec()));
        }
        self.xattrs.sort_unstable();
        Ok(())
    }

    /// The path on disk of the entry being visited.
    fn disk_path(&self) -> PathBuf {
        let relative = self.name.strip_prefix(b"./").unwrap_or(&self.name);
        self.root.join(OsStr::from_bytes(relative))
    }

    fn read_error(&self, errno: Errno) -> ArchiveError {
        self.io_error(errno.into())
    }

    fn io_error(&self, source: io::Error) -> ArchiveError {
        ArchiveError::Read {
            path: self.disk_path(),
            source,
        }
    }

    fn open_error(&self, errno: Errno) -> ArchiveError {
        if errno == Errno::LOOP {
            // O_NOFOLLOW met a symlink where the directory listing had
            // something else.
            self.changed("it was replaced by a symlink".to_owned())
        } else {
            self.read_error(errno)
        }
    }

    fn changed(&self, detail: String) -> ArchiveError {
        ArchiveError::Changed {
            path: self.disk_path(),
            detail,
        }
    }
}
