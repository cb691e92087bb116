//! A sequential reader of tar streams: headers with their pax records and
//! GNU long names applied, then contents.
//!
//! Written here rather than taken from the `tar` crate's `Archive`: that
//! reader finds pax records by splitting at newlines, so an extended
//! attribute holding a newline (a binary `security.capability` may) can
//! hide or forge `path` and `size` records, and what it reads would differ
//! from what GNU tar reads. The `tar` crate still decodes each header's
//! fields.

use std::io::{self, Read};

use rustix::fs::Timespec;

use super::format::{self, BLOCK, XATTR_PREFIX};

/// The largest pax extended header or GNU long name accepted: far above
/// any real one, low enough that a hostile archive cannot exhaust memory.
const MAX_EXTENSION: u64 = 16 << 20;

/// What the tar reader reports.
pub(super) enum ReadError {
    Io(io::Error),
    /// The first header's checksum is wrong: not a tar stream at all.
    NotTar,
    Malformed {
        offset: u64,
        detail: String,
    },
    Unsupported {
        entry: String,
        detail: String,
    },
}

impl From<io::Error> for ReadError {
    fn from(error: io::Error) -> Self {
        ReadError::Io(error)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EntryKind {
    File,
    Directory,
    Symlink,
    HardLink,
    CharDevice,
    BlockDevice,
    Fifo,
}

/// One entry's header, with its pax records and GNU long names applied.
pub(super) struct Entry {
    /// The name as the archive spells it.
    pub(super) path: Vec<u8>,
    pub(super) kind: EntryKind,
    /// Symlink target or hard link target.
    pub(super) link: Vec<u8>,
    pub(super) mode: u32,
    pub(super) uid: u64,
    pub(super) gid: u64,
    pub(super) mtime: Timespec,
    pub(super) device: (u32, u32),
    pub(super) xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// What extension headers said about the next entry.
#[derive(Default)]
struct Extensions {
    seen: bool,
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u64>,
    gid: Option<u64>,
    mtime: Option<Timespec>,
    major: Option<u32>,
    minor: Option<u32>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// A sequential reader of tar headers and contents.
pub(super) struct TarReader<R> {
    inner: R,
    /// Bytes of the tar stream consumed.
    offset: u64,
    /// Contents of the current entry not read yet, then its padding.
    remaining: u64,
    padding: u64,
}

impl<R: Read> TarReader<R> {
    pub(super) fn new(inner: R) -> Self {
        TarReader {
            inner,
            offset: 0,
            remaining: 0,
            padding: 0,
        }
    }

    /// The next entry, or `None` at the end-of-archive marker (or at the
    /// end of the stream, which some writers leave it at).
    pub(super) fn next_entry(&mut self) -> Result<Option<Entry>, ReadError> {
        self.discard(self.remaining + self.padding)?;
        (self.remaining, self.padding) = (0, 0);
        let mut extensions = Extensions::default();
        loop {
            let start = self.offset;
            let mut block = [0u8; BLOCK];
            if !self.read_block(&mut block)? || block.iter().all(|&b| b == 0) {
                if extensions.seen {
                    return Err(self.malformed(
                        start,
                        "the archive ends after an extended header, before the entry it describes",
                    ));
                }
                return Ok(None);
            }
            let header = tar::Header::from_byte_slice(&block);
            if let Err(detail) = check_checksum(&block) {
                return Err(if start == 0 {
                    ReadError::NotTar
                } else {
                    self.malformed(start, &detail)
                });
            }
            // Some writers leave a numeric field blank for 0, as readers
            // from GNU tar to Python's tarfile accept.
            let field = |result: io::Result<u64>, what: &str, range: std::ops::Range<usize>| {
                if block[range].iter().all(|&b| b == 0 || b == b' ') {
                    return Ok(0);
                }
                result.map_err(|error| ReadError::Malformed {
                    offset: start,
                    detail: format!("bad {what} field: {error}"),
                })
            };
            let header_size = field(header.entry_size(), "size", 124..136)?;
            let typeflag = block[156];
            match typeflag {
                b'x' => {
                    let data = self.read_extension(header_size, start)?;
                    extensions.seen = true;
                    apply_pax(&mut extensions, &data).map_err(|detail| ReadError::Unsupported {
                        entry: String::from_utf8_lossy(&header.path_bytes()).into_owned(),
                        detail,
                    })?;
                    continue;
                }
                b'L' | b'K' => {
                    let mut data = self.read_extension(header_size, start)?;
                    while data.last() == Some(&0) {
                        data.pop();
                    }
                    extensions.seen = true;
                    if typeflag == b'L' {
                        extensions.path = Some(data);
                    } else {
                        extensions.link = Some(data);
                    }
                    continue;
                }
                // Global pax headers and volume labels describe no entry.
                b'g' | b'V' => {
                    self.discard(header_size + format::padding(header_size) as u64)?;
                    continue;
                }
                _ => {}
            }
            let path = extensions
                .path
                .take()
                .unwrap_or_else(|| header.path_bytes().into_owned());
            let name = String::from_utf8_lossy(&path).into_owned();
            let kind = match typeflag {
                // Old tars mark a directory by a trailing slash alone.
                b'0' | 0 | b'7' if path.ends_with(b"/") => EntryKind::Directory,
                b'0' | 0 | b'7' => EntryKind::File,
                b'1' => EntryKind::HardLink,
                b'2' => EntryKind::Symlink,
                b'3' => EntryKind::CharDevice,
                b'4' => EntryKind::BlockDevice,
                b'5' => EntryKind::Directory,
                b'6' => EntryKind::Fifo,
                b'S' => {
                    return Err(ReadError::Unsupported {
                        entry: name,
                        detail: "GNU sparse files are not supported; repack without --sparse"
                            .to_owned(),
                    });
                }
                other => {
                    return Err(ReadError::Unsupported {
                        entry: name,
                        detail: format!("unknown entry type {:?}", char::from(other)),
                    });
                }
            };
            let size = extensions.size.unwrap_or(header_size);
            let device = match (header.device_major(), header.device_minor()) {
                (Ok(major), Ok(minor)) => (major.unwrap_or(0), minor.unwrap_or(0)),
                _ if !matches!(kind, EntryKind::CharDevice | EntryKind::BlockDevice) => (0, 0),
                (Err(error), _) | (_, Err(error)) => {
                    return Err(self.malformed(start, &format!("bad device number: {error}")));
                }
            };
            let mtime = match extensions.mtime {
                Some(mtime) => mtime,
                None => Timespec {
                    tv_sec: i64::try_from(field(header.mtime(), "mtime", 136..148)?)
                        .unwrap_or(i64::MAX),
                    tv_nsec: 0,
                },
            };
            let entry = Entry {
                link: extensions
                    .link
                    .take()
                    .or_else(|| header.link_name_bytes().map(|link| link.into_owned()))
                    .unwrap_or_default(),
                mode: u32::try_from(field(header.mode().map(u64::from), "mode", 100..108)?)
                    .unwrap_or(0)
                    & 0o7777,
                uid: match extensions.uid {
                    Some(uid) => uid,
                    None => field(header.uid(), "uid", 108..116)?,
                },
                gid: match extensions.gid {
                    Some(gid) => gid,
                    None => field(header.gid(), "gid", 116..124)?,
                },
                mtime,
                device: (
                    extensions.major.unwrap_or(device.0),
                    extensions.minor.unwrap_or(device.1),
                ),
                xattrs: std::mem::take(&mut extensions.xattrs),
                path,
                kind,
            };
            self.remaining = size;
            self.padding = format::padding(size) as u64;
            return Ok(Some(entry));
        }
    }

    /// Read the current entry's contents; 0 once they are all read.
    pub(super) fn read_data(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let want = usize::try_from(self.remaining)
            .unwrap_or(usize::MAX)
            .min(buffer.len());
        if want == 0 {
            return Ok(0);
        }
        let read = self.inner.read(&mut buffer[..want])?;
        if read == 0 {
            return Err(truncated());
        }
        self.remaining -= read as u64;
        self.offset += read as u64;
        Ok(read)
    }

    /// Fill `block`; false at a clean end of the stream.
    fn read_block(&mut self, block: &mut [u8; BLOCK]) -> io::Result<bool> {
        let mut filled = 0;
        while filled < BLOCK {
            match self.inner.read(&mut block[filled..]) {
                Ok(0) if filled == 0 => return Ok(false),
                Ok(0) => return Err(truncated()),
                Ok(read) => filled += read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        self.offset += BLOCK as u64;
        Ok(true)
    }

    fn read_extension(&mut self, size: u64, start: u64) -> Result<Vec<u8>, ReadError> {
        if size > MAX_EXTENSION {
            return Err(self.malformed(
                start,
                &format!("an extended header of {size} bytes is larger than the {MAX_EXTENSION} bytes accepted"),
            ));
        }
        let mut data = Vec::with_capacity(size as usize);
        (&mut self.inner).take(size).read_to_end(&mut data)?;
        if (data.len() as u64) < size {
            return Err(truncated().into());
        }
        self.offset += size;
        self.discard(format::padding(size) as u64)?;
        Ok(data)
    }

    fn discard(&mut self, len: u64) -> io::Result<()> {
        let copied = io::copy(&mut (&mut self.inner).take(len), &mut io::sink())?;
        self.offset += copied;
        if copied < len {
            return Err(truncated());
        }
        Ok(())
    }

    fn malformed(&self, offset: u64, detail: &str) -> ReadError {
        ReadError::Malformed {
            offset,
            detail: detail.to_owned(),
        }
    }
}

fn truncated() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the tar stream ends in the middle of an entry",
    )
}

/// Accept the unsigned sum POSIX specifies, and the signed one some old
/// tars wrote.
fn check_checksum(block: &[u8; BLOCK]) -> Result<(), String> {
    let stored = std::str::from_utf8(&block[148..156])
        .ok()
        .map(|text| text.trim_matches(|c| c == ' ' || c == '\0'))
        .and_then(|digits| u32::from_str_radix(digits, 8).ok())
        .ok_or_else(|| "a header has no valid checksum".to_owned())?;
    let spaces = 8 * u32::from(b' ');
    let outside = |b: &[u8]| b.iter().map(|&x| u32::from(x)).sum::<u32>();
    let unsigned = outside(&block[..148]) + outside(&block[156..]) + spaces;
    let signed_part = |b: &[u8]| b.iter().map(|&x| i64::from(x as i8)).sum::<i64>();
    let signed = signed_part(&block[..148]) + signed_part(&block[156..]) + i64::from(spaces);
    if stored == unsigned || i64::from(stored) == signed {
        Ok(())
    } else {
        Err("header checksum mismatch".to_owned())
    }
}

/// Apply the records of a pax extended header to the next entry.
fn apply_pax(extensions: &mut Extensions, data: &[u8]) -> Result<(), String> {
    let number = |key: &[u8], value: &[u8]| {
        std::str::from_utf8(value)
            .ok()
            .and_then(|text| text.parse::<u64>().ok())
            .ok_or_else(|| {
                format!(
                    "the pax record {} has the non-numeric value {:?}",
                    String::from_utf8_lossy(key),
                    String::from_utf8_lossy(value)
                )
            })
    };
    for (key, value) in format::parse_pax(data)? {
        match key {
            b"path" => extensions.path = Some(value.to_vec()),
            b"linkpath" => extensions.link = Some(value.to_vec()),
            b"size" => extensions.size = Some(number(key, value)?),
            b"uid" => extensions.uid = Some(number(key, value)?),
            b"gid" => extensions.gid = Some(number(key, value)?),
            b"mtime" => extensions.mtime = Some(parse_time(value)?),
            b"SCHILY.devmajor" | b"SCHILY.devminor" => {
                let device = u32::try_from(number(key, value)?)
                    .map_err(|_| "a device number does not fit 32 bits".to_owned())?;
                if key == b"SCHILY.devmajor" {
                    extensions.major = Some(device);
                } else {
                    extensions.minor = Some(device);
                }
            }
            _ if key.starts_with(b"GNU.sparse.") => {
                return Err(
                    "GNU sparse files are not supported; repack without --sparse".to_owned(),
                );
            }
            _ => {
                if let Some(name) = key.strip_prefix(XATTR_PREFIX) {
                    let name = format::decode_xattr_name(name);
                    // A later record for the same attribute wins, as
                    // later pax records do.
                    extensions.xattrs.retain(|(existing, _)| *existing != name);
                    extensions.xattrs.push((name, value.to_vec()));
                }
                // Everything else (atime, ctime, uname, gname, comments,
                // charsets, SCHILY.acl.*) says nothing kiln restores.
            }
        }
    }
    Ok(())
}

/// A pax time: decimal seconds, possibly negative, with an optional
/// fraction.
fn parse_time(value: &[u8]) -> Result<Timespec, String> {
    let bad = || {
        format!(
            "the pax mtime {:?} is not a time",
            String::from_utf8_lossy(value)
        )
    };
    let text = std::str::from_utf8(value).map_err(|_| bad())?;
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let seconds: i64 = whole.parse().map_err(|_| bad())?;
    if !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let mut nanos: i64 = 0;
    for digit in fraction.bytes().chain(std::iter::repeat(b'0')).take(9) {
        nanos = nanos * 10 + i64::from(digit - b'0');
    }
    Ok(match (negative, nanos) {
        (false, _) => Timespec {
            tv_sec: seconds,
            tv_nsec: nanos,
        },
        (true, 0) => Timespec {
            tv_sec: -seconds,
            tv_nsec: 0,
        },
        (true, _) => Timespec {
            tv_sec: -seconds - 1,
            tv_nsec: 1_000_000_000 - nanos,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times_parse() {
        let time = |text: &str| parse_time(text.as_bytes()).map(|t| (t.tv_sec, t.tv_nsec));
        assert_eq!(time("1700000000"), Ok((1_700_000_000, 0)));
        assert_eq!(time("1.5"), Ok((1, 500_000_000)));
        assert_eq!(time("1.0000000019"), Ok((1, 1)));
        assert_eq!(time("-1.25"), Ok((-2, 750_000_000)));
        assert_eq!(time("-3"), Ok((-3, 0)));
        assert!(time("x").is_err());
        assert!(time("1.x").is_err());
    }

    #[test]
    fn checksums_signed_and_unsigned() {
        let mut block = [0u8; BLOCK];
        block[..4].copy_from_slice(b"\xff\xfeab");
        block[148..156].fill(b' ');
        let unsigned: u32 = block.iter().map(|&b| u32::from(b)).sum();
        block[148..155].copy_from_slice(format!("{unsigned:06o}\0").as_bytes());
        assert!(check_checksum(&block).is_ok());
        let signed: i64 = 0xff_u8 as i8 as i64 + 0xfe_u8 as i8 as i64 + 97 + 98 + 8 * 32;
        block[148..155].copy_from_slice(format!("{signed:06o}\0").as_bytes());
        assert!(check_checksum(&block).is_ok());
        block[148..155].copy_from_slice(b"000001\0");
        assert!(check_checksum(&block).is_err());
    }
}
