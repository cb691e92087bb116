//! The bytes of a pax tar stream: ustar header blocks, pax extended header
//! records, and the end-of-archive padding (see the module doc of
//! [`super`] for the specifications).
//!
//! The writer reproduces what GNU tar 1.34 writes with `--format=posix
//! --numeric-owner` and `exthdr.name=%d/PaxHeaders/%f`, field by field:
//! octal numbers zero-padded and NUL-terminated, empty user and group
//! names, `0000000` device numbers on entries that are not devices, a name
//! or link name too long for its 100-byte field truncated there and given in
//! full as a pax record, and an id, size or time too big for its octal field
//! written as 0 and given in full as a pax record.
//!
//! A ustar header block:
//!
//! ```text
//! offset  size  field
//!      0   100  name         NUL-padded
//!    100     8  mode         7 octal digits + NUL (permission bits, 07777)
//!    108     8  uid          7 octal digits + NUL
//!    116     8  gid          7 octal digits + NUL
//!    124    12  size         11 octal digits + NUL
//!    136    12  mtime        11 octal digits + NUL
//!    148     8  checksum     6 octal digits + NUL + space: the sum of the
//!                            block's bytes with this field as 8 spaces
//!    156     1  typeflag     0 file, 1 hard link, 2 symlink, 3 char device,
//!                            4 block device, 5 directory, 6 FIFO, x pax
//!    157   100  linkname
//!    257     8  magic        "ustar\0" "00"
//!    265    32  uname, 297 32 gname (empty)
//!    329     8  devmajor, 337 8 devminor
//!    345   155  prefix       (unused: long names go into pax records)
//! ```

/// The size of a tar block: headers, and data padded up to it.
pub(crate) const BLOCK: usize = 512;

/// GNU tar's default record size (a blocking factor of 20): the archive is
/// padded with zero bytes to a multiple of it.
pub(crate) const RECORD: u64 = 20 * BLOCK as u64;

/// The largest value of a 7-digit octal field (mode, ids, device numbers).
const MAX_OCTAL_7: u64 = 0o7777777;

/// The largest value of an 11-digit octal field (size, mtime).
const MAX_OCTAL_11: u64 = 0o77777777777;

/// The longest name or link name a ustar header holds without the prefix
/// field.
const NAME_FIELD: usize = 100;

/// Mode of the pax extended header entries themselves (GNU tar's).
const PAX_HEADER_MODE: u64 = 0o644;

/// The prefix of a pax record that holds an extended attribute.
pub(crate) const XATTR_PREFIX: &[u8] = b"SCHILY.xattr.";

/// What an entry is, with what its type needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind<'a> {
    File {
        size: u64,
    },
    Directory,
    Symlink {
        target: &'a [u8],
    },
    /// `target` is the archive name of the entry written first.
    HardLink {
        target: &'a [u8],
    },
    CharDevice {
        major: u32,
        minor: u32,
    },
    BlockDevice {
        major: u32,
        minor: u32,
    },
    Fifo,
}

impl Kind<'_> {
    fn typeflag(self) -> u8 {
        match self {
            Kind::File { .. } => b'0',
            Kind::HardLink { .. } => b'1',
            Kind::Symlink { .. } => b'2',
            Kind::CharDevice { .. } => b'3',
            Kind::BlockDevice { .. } => b'4',
            Kind::Directory => b'5',
            Kind::Fifo => b'6',
        }
    }
}

/// One archive entry's header: everything but its contents.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Member<'a> {
    /// The archive name: `./`, `./etc/`, `./etc/passwd` (directories end
    /// in `/`).
    pub(crate) name: &'a [u8],
    pub(crate) kind: Kind<'a>,
    /// Permission bits, including setuid, setgid and sticky (`07777`).
    pub(crate) mode: u32,
    pub(crate) uid: u64,
    pub(crate) gid: u64,
    pub(crate) mtime: u64,
    /// Extended attributes `(name, value)`, sorted by name.
    pub(crate) xattrs: &'a [(Vec<u8>, Vec<u8>)],
}

/// Append `member`'s header blocks to `out`: a pax extended header if the
/// ustar fields cannot hold everything, then the ustar header.
pub(crate) fn encode_header(member: &Member<'_>, out: &mut Vec<u8>) {
    let link_target: &[u8] = match member.kind {
        Kind::Symlink { target } | Kind::HardLink { target } => target,
        _ => b"",
    };
    let size = match member.kind {
        Kind::File { size } => size,
        _ => 0,
    };
    let devices = match member.kind {
        Kind::CharDevice { major, minor } | Kind::BlockDevice { major, minor } => {
            (u64::from(major), u64::from(minor))
        }
        _ => (0, 0),
    };

    // Records in GNU tar's order: names, then numbers, then attributes.
    let mut records = Vec::new();
    if member.name.len() > NAME_FIELD {
        pax_record(&mut records, b"path", member.name);
    }
    if link_target.len() > NAME_FIELD {
        pax_record(&mut records, b"linkpath", link_target);
    }
    let uid = fit_or_record(&mut records, b"uid", member.uid, MAX_OCTAL_7);
    let gid = fit_or_record(&mut records, b"gid", member.gid, MAX_OCTAL_7);
    let size_field = fit_or_record(&mut records, b"size", size, MAX_OCTAL_11);
    let mtime = fit_or_record(&mut records, b"mtime", member.mtime, MAX_OCTAL_11);
    let major = fit_or_record(&mut records, b"SCHILY.devmajor", devices.0, MAX_OCTAL_7);
    let minor = fit_or_record(&mut records, b"SCHILY.devminor", devices.1, MAX_OCTAL_7);
    let mut key = Vec::new();
    for (name, value) in member.xattrs {
        key.clear();
        key.extend_from_slice(XATTR_PREFIX);
        encode_xattr_name(name, &mut key);
        pax_record(&mut records, &key, value);
    }

    if !records.is_empty() {
        let header = Ustar {
            name: &pax_header_name(member.name),
            mode: PAX_HEADER_MODE,
            uid: 0,
            gid: 0,
            size: records.len() as u64,
            mtime,
            typeflag: b'x',
            link: b"",
            devices: None,
        };
        out.extend_from_slice(&header.block());
        out.extend_from_slice(&records);
        pad_to_block(out, records.len() as u64);
    }
    let header = Ustar {
        name: member.name,
        mode: u64::from(member.mode & 0o7777),
        uid,
        gid,
        size: size_field,
        mtime,
        typeflag: member.kind.typeflag(),
        link: link_target,
        devices: Some((major, minor)),
    };
    out.extend_from_slice(&header.block());
}

/// `value` if it fits a field of `max`, else 0 and a pax record.
fn fit_or_record(records: &mut Vec<u8>, key: &[u8], value: u64, max: u64) -> u64 {
    if value <= max {
        value
    } else {
        pax_record(records, key, value.to_string().as_bytes());
        0
    }
}

/// Zero bytes that pad `len` bytes of data up to a whole block.
pub(crate) fn padding(len: u64) -> usize {
    let rest = (len % BLOCK as u64) as usize;
    if rest == 0 { 0 } else { BLOCK - rest }
}

fn pad_to_block(out: &mut Vec<u8>, len: u64) {
    out.resize(out.len() + padding(len), 0);
}

/// How many zero bytes end an archive whose entries took `len` bytes: two
/// zero blocks, then up to the next whole record.
pub(crate) fn end_of_archive(len: u64) -> u64 {
    let with_marker = len + 2 * BLOCK as u64;
    with_marker.div_ceil(RECORD) * RECORD - len
}

/// The name of the pax header describing `name`: GNU tar's
/// `%d/PaxHeaders/%f` (directory part, `PaxHeaders`, last component), cut
/// to the name field. Readers ignore it; it only has to be deterministic.
fn pax_header_name(name: &[u8]) -> Vec<u8> {
    let trimmed = match name.strip_suffix(b"/") {
        Some(rest) if !rest.is_empty() => rest,
        _ => name,
    };
    let (directory, base): (&[u8], &[u8]) = match trimmed.iter().rposition(|&b| b == b'/') {
        Some(slash) => (&trimmed[..slash], &trimmed[slash + 1..]),
        None => (b".", trimmed),
    };
    let mut header_name = Vec::with_capacity(directory.len() + base.len() + 12);
    header_name.extend_from_slice(directory);
    header_name.extend_from_slice(b"/PaxHeaders/");
    header_name.extend_from_slice(base);
    header_name.truncate(NAME_FIELD);
    header_name
}

/// Append one pax record, `"<length> <key>=<value>\n"`, where `<length>`
/// counts the whole record including its own digits.
pub(crate) fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let rest = 1 + key.len() + 1 + value.len() + 1; // " " key "=" value "\n"
    let mut length = rest + decimal_digits(rest);
    if decimal_digits(length) != decimal_digits(rest) {
        length = rest + decimal_digits(length);
    }
    out.extend_from_slice(length.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

fn decimal_digits(value: usize) -> usize {
    value.checked_ilog10().unwrap_or(0) as usize + 1
}

/// One pax record: `(key, value)`.
pub(crate) type PaxRecord<'a> = (&'a [u8], &'a [u8]);

/// Split pax extended header data into `(key, value)` records. Values are
/// binary (an extended attribute may hold any byte, newlines included), so
/// records are delimited by their length, never by searching for `\n`.
pub(crate) fn parse_pax(mut data: &[u8]) -> Result<Vec<PaxRecord<'_>>, String> {
    let mut records = Vec::new();
    while !data.is_empty() {
        let space = data
            .iter()
            .position(|&b| b == b' ')
            .ok_or("a pax record has no length")?;
        let length: usize = std::str::from_utf8(&data[..space])
            .ok()
            .and_then(|digits| digits.parse().ok())
            .ok_or("a pax record's length is not a number")?;
        if length <= space + 1 || length > data.len() || data[length - 1] != b'\n' {
            return Err(format!(
                "a pax record's length ({length}) does not match its contents"
            ));
        }
        let record = &data[space + 1..length - 1];
        let equals = record
            .iter()
            .position(|&b| b == b'=')
            .ok_or("a pax record has no `=`")?;
        records.push((&record[..equals], &record[equals + 1..]));
        data = &data[length..];
    }
    Ok(records)
}

/// Append an extended attribute's name as GNU tar spells it in a pax
/// keyword: `%` and `=` (which would end the keyword) percent-encoded.
pub(crate) fn encode_xattr_name(name: &[u8], out: &mut Vec<u8>) {
    for &byte in name {
        match byte {
            b'%' => out.extend_from_slice(b"%25"),
            b'=' => out.extend_from_slice(b"%3D"),
            _ => out.push(byte),
        }
    }
}

/// The inverse of [`encode_xattr_name`].
pub(crate) fn decode_xattr_name(keyword: &[u8]) -> Vec<u8> {
    let mut name = Vec::with_capacity(keyword.len());
    let mut rest = keyword;
    while let Some((&byte, tail)) = rest.split_first() {
        if tail.starts_with(b"25") && byte == b'%' {
            name.push(b'%');
            rest = &tail[2..];
        } else if tail.starts_with(b"3D") && byte == b'%' {
            name.push(b'=');
            rest = &tail[2..];
        } else {
            name.push(byte);
            rest = tail;
        }
    }
    name
}

/// The fields of one ustar header block.
struct Ustar<'a> {
    name: &'a [u8],
    mode: u64,
    uid: u64,
    gid: u64,
    size: u64,
    mtime: u64,
    typeflag: u8,
    link: &'a [u8],
    /// `None` leaves the device fields all NUL (GNU tar's pax headers).
    devices: Option<(u64, u64)>,
}

impl Ustar<'_> {
    fn block(&self) -> [u8; BLOCK] {
        let mut block = [0u8; BLOCK];
        copy_truncated(&mut block[0..100], self.name);
        octal(&mut block[100..108], self.mode);
        octal(&mut block[108..116], self.uid);
        octal(&mut block[116..124], self.gid);
        octal(&mut block[124..136], self.size);
        octal(&mut block[136..148], self.mtime);
        block[156] = self.typeflag;
        copy_truncated(&mut block[157..257], self.link);
        block[257..265].copy_from_slice(b"ustar\x0000");
        if let Some((major, minor)) = self.devices {
            octal(&mut block[329..337], major);
            octal(&mut block[337..345], minor);
        }
        block[148..156].fill(b' ');
        let sum: u32 = block.iter().map(|&b| u32::from(b)).sum();
        // Six digits, NUL, and the last of the spaces the sum was taken with.
        block[148..154].copy_from_slice(format!("{sum:06o}").as_bytes());
        block[154] = 0;
        block
    }
}

fn copy_truncated(field: &mut [u8], bytes: &[u8]) {
    let len = bytes.len().min(field.len());
    field[..len].copy_from_slice(&bytes[..len]);
}

/// Zero-padded octal filling all but the last byte of `field`, which stays
/// NUL. Callers keep `value` in range (see [`fit_or_record`]).
fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    debug_assert_eq!(
        text.len(),
        digits,
        "{value} does not fit {digits} octal digits"
    );
    field[..digits].copy_from_slice(&text.as_bytes()[text.len() - digits..]);
    field[digits] = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member<'a>(name: &'a [u8], kind: Kind<'a>) -> Member<'a> {
        Member {
            name,
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 1_700_000_000,
            xattrs: &[],
        }
    }

    #[test]
    fn pax_record_length_counts_its_own_digits() {
        // 8 bytes besides the length + 1 digit = 9.
        let mut out = Vec::new();
        pax_record(&mut out, b"ab", b"cde");
        assert_eq!(out, b"9 ab=cde\n");
        // 9 bytes + 1 digit = 10, which takes 2 digits: 11.
        out.clear();
        pax_record(&mut out, b"ab", b"cdef");
        assert_eq!(out, b"11 ab=cdef\n");
        for value_len in 0..300 {
            let mut out = Vec::new();
            pax_record(&mut out, b"path", &vec![b'x'; value_len]);
            let digits = out.iter().position(|&b| b == b' ').unwrap();
            let length: usize = std::str::from_utf8(&out[..digits])
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(length, out.len(), "value of {value_len} bytes");
        }
    }

    #[test]
    fn pax_records_round_trip_with_binary_values() {
        let mut out = Vec::new();
        pax_record(&mut out, b"SCHILY.xattr.user.a", b"line\n21 path=../evil\n");
        pax_record(&mut out, b"path", b"./x");
        let records = parse_pax(&out).unwrap();
        assert_eq!(
            records,
            vec![
                (&b"SCHILY.xattr.user.a"[..], &b"line\n21 path=../evil\n"[..]),
                (&b"path"[..], &b"./x"[..]),
            ]
        );
        assert!(parse_pax(b"99 path=x\n").is_err());
        assert!(parse_pax(b"9 pathx\n").is_err());
        assert!(parse_pax(b"x").is_err());
    }

    #[test]
    fn xattr_names_escape_percent_and_equals() {
        let mut out = Vec::new();
        encode_xattr_name(b"user.a=b%c", &mut out);
        assert_eq!(out, b"user.a%3Db%25c");
        assert_eq!(decode_xattr_name(&out), b"user.a=b%c");
        assert_eq!(decode_xattr_name(b"user.%41"), b"user.%41");
    }

    #[test]
    fn pax_header_names_follow_gnu_tar() {
        assert_eq!(pax_header_name(b"./"), b"./PaxHeaders/.");
        assert_eq!(pax_header_name(b"./sl"), b"./PaxHeaders/sl");
        assert_eq!(pax_header_name(b"./etc/passwd"), b"./etc/PaxHeaders/passwd");
        assert_eq!(pax_header_name(b"./a/b/"), b"./a/PaxHeaders/b");
        assert_eq!(pax_header_name(&[b'x'; 200]).len(), NAME_FIELD);
    }

    #[test]
    fn header_checksum_and_fields() {
        let mut out = Vec::new();
        encode_header(&member(b"./etc/hard", Kind::File { size: 3 }), &mut out);
        assert_eq!(out.len(), BLOCK);
        assert_eq!(&out[100..108], b"0000644\0");
        assert_eq!(&out[124..136], b"00000000003\0");
        assert_eq!(&out[136..148], b"14524770400\0");
        // The value GNU tar 1.34 writes for this header.
        assert_eq!(&out[148..156], b"011011\0 ");
        assert_eq!(&out[329..345], b"0000000\x000000000\0");
    }

    #[test]
    fn big_values_move_to_pax_records() {
        let mut out = Vec::new();
        let name = [b'n'; 150];
        let entry = Member {
            uid: 3_000_000,
            ..member(&name, Kind::File { size: 1 << 40 })
        };
        encode_header(&entry, &mut out);
        assert_eq!(out[156], b'x');
        let size = usize::from_str_radix(std::str::from_utf8(&out[124..135]).unwrap(), 8).unwrap();
        let records = parse_pax(&out[BLOCK..BLOCK + size]).unwrap();
        let keys: Vec<&[u8]> = records.iter().map(|(key, _)| *key).collect();
        assert_eq!(keys, vec![&b"path"[..], b"uid", b"size"]);
        let ustar = &out[out.len() - BLOCK..];
        assert_eq!(&ustar[108..116], b"0000000\0");
        assert_eq!(&ustar[124..136], b"00000000000\0");
        assert_eq!(&ustar[..100], &name[..100]);
    }

    #[test]
    fn archives_end_on_a_record() {
        assert_eq!(end_of_archive(0), RECORD);
        assert_eq!(end_of_archive(512), RECORD - 512);
        assert_eq!(end_of_archive(RECORD - 1024), 1024);
        assert_eq!(end_of_archive(RECORD - 512), RECORD + 512);
    }
}
