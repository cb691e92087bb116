//! `kiln::archive`: reproducible `.tar.zst` packing of a root filesystem and
//! safe unpacking, checked against GNU tar and the zstd CLI.
//!
//! These tests run as root (CI does): they make device nodes, give files
//! other owners and set `security.capability`.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln::archive::{ArchiveError, Compression, PackOptions, Refusal, pack, unpack};
use rustix::fs::{AtFlags, CWD, FileType, Mode, Timespec, Timestamps, XattrFlags};
use sha2::{Digest as _, Sha256};

const EPOCH: u64 = 1_700_000_000;

/// What `setcap cap_net_raw+ep` writes: revision 2, effective, permitted
/// bit 13.
const CAP_NET_RAW: &[u8] =
    b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00";

// ── building trees ─────────────────────────────────────────────────────────

/// One thing in a test tree. Paths are relative to the tree's root.
enum Item {
    Dir(&'static str, u32, (u32, u32)),
    File(&'static str, Vec<u8>, u32, (u32, u32)),
    Symlink(&'static str, &'static str),
    HardLink(&'static str, &'static str),
    CharDevice(&'static str, (u32, u32), u32),
    BlockDevice(&'static str, (u32, u32), u32),
    Fifo(&'static str, u32),
    Socket(&'static str),
    Xattr(&'static str, &'static str, &'static [u8]),
}

const LONG_NAME: &str = "usr/share/doc/a-package-with-a-rather-long-name/changelog.Debian.with-an-even-longer-suffix-that-takes-the-name-over-one-hundred-bytes.gz";
const LONG_TARGET: &str = "../../share/a/symlink/target/that/is/longer/than/the/one/hundred/bytes/of/the/ustar/linkname/field/of/a/header";

/// A small root filesystem with one of everything a rootfs holds.
/// `several_xattrs` adds a file with two extended attributes (GNU tar
/// writes those in the file system's order, kiln sorts them).
fn rootfs(several_xattrs: bool) -> Vec<Item> {
    use Item::*;
    let mut items = vec![
        Dir("", 0o755, (0, 0)),
        Symlink("bin", "usr/bin"),
        Dir("dev", 0o755, (0, 0)),
        CharDevice("dev/null", (1, 3), 0o666),
        BlockDevice("dev/loop0", (7, 0), 0o660),
        Dir("etc", 0o755, (0, 0)),
        File("etc/hostname", b"".to_vec(), 0o644, (0, 0)),
        File(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\n".to_vec(),
            0o644,
            (0, 0),
        ),
        File(
            "etc/shadow",
            b"root:*:19000:0:99999:7:::\n".to_vec(),
            0o640,
            (0, 42),
        ),
        Dir("etc/alternatives", 0o755, (0, 0)),
        Symlink("etc/alternatives/editor", "/usr/bin/vim.tiny"),
        Dir("home", 0o755, (0, 0)),
        Dir("home/user", 0o700, (1000, 1000)),
        File(
            "home/user/.profile",
            b"umask 022\n".to_vec(),
            0o644,
            (1000, 1000),
        ),
        File(
            "home/user/big-uid",
            b"x".to_vec(),
            0o600,
            (3_000_000, 3_000_001),
        ),
        Dir("run", 0o755, (0, 0)),
        Fifo("run/initctl", 0o600),
        Socket("run/socket"),
        Dir("tmp", 0o1777, (0, 0)),
        Dir("usr", 0o755, (0, 0)),
        Dir("usr/bin", 0o755, (0, 0)),
        File("usr/bin/ping", b"\x7fELF ping".to_vec(), 0o755, (0, 0)),
        Xattr("usr/bin/ping", "security.capability", CAP_NET_RAW),
        File("usr/bin/su", b"\x7fELF su".to_vec(), 0o4755, (0, 0)),
        File("usr/bin/wall", b"\x7fELF wall".to_vec(), 0o2755, (0, 5)),
        // Bigger than the chunks pack hands from its reader to zstd.
        File("usr/bin/perl", repetitive(3 << 20), 0o755, (0, 0)),
        HardLink("usr/bin/perl5.36.0", "usr/bin/perl"),
        HardLink("usr/bin/perl-copy", "usr/bin/perl"),
        Symlink("usr/bin/vim", LONG_TARGET),
        File("usr/bin/vim.tiny", b"\x7fELF vim".to_vec(), 0o755, (0, 0)),
        Dir("usr/share", 0o755, (0, 0)),
        Dir("usr/share/doc", 0o755, (0, 0)),
        Dir(
            "usr/share/doc/a-package-with-a-rather-long-name",
            0o755,
            (0, 0),
        ),
        File(LONG_NAME, b"changes".to_vec(), 0o644, (0, 0)),
        File(
            "usr/share/odd name=with%signs",
            b"odd".to_vec(),
            0o644,
            (0, 0),
        ),
        Xattr(
            "usr/share/odd name=with%signs",
            "user.kiln=odd%name",
            b"binary\n\0value",
        ),
        Dir("var", 0o755, (0, 0)),
        Dir("var/mail", 0o2775, (0, 8)),
    ];
    if several_xattrs {
        items.push(File("etc/xattrs", b"x".to_vec(), 0o644, (0, 0)));
        items.push(Xattr("etc/xattrs", "user.b", b"2"));
        items.push(Xattr("etc/xattrs", "user.a", b"1"));
    }
    items
}

/// Create `items` under `root` (which must not exist), in the given order
/// or reversed (so that inode numbers and directory order differ), with
/// mtimes derived from `mtime`.
fn build(root: &Path, items: &[Item], reverse: bool, mtime: i64) {
    fs::create_dir(root).unwrap();
    let mut order: Vec<&Item> = items.iter().collect();
    if reverse {
        // Directories first (their contents need them), then the rest
        // backwards; hard links keep their targets first.
        let (dirs, rest): (Vec<&Item>, Vec<&Item>) = order
            .into_iter()
            .partition(|item| matches!(item, Item::Dir(..)));
        let (links, mut others): (Vec<&Item>, Vec<&Item>) = rest
            .into_iter()
            .partition(|item| matches!(item, Item::HardLink(..) | Item::Xattr(..)));
        others.reverse();
        order = dirs
            .into_iter()
            .chain(others)
            .chain(links.into_iter().rev())
            .collect();
    }
    for item in &order {
        let at = |path: &str| root.join(path);
        match item {
            Item::Dir(path, _, _) => {
                if !path.is_empty() {
                    fs::create_dir(at(path)).unwrap();
                }
            }
            Item::File(path, contents, _, _) => fs::write(at(path), contents).unwrap(),
            Item::Symlink(path, target) => std::os::unix::fs::symlink(target, at(path)).unwrap(),
            Item::HardLink(path, target) => fs::hard_link(at(target), at(path)).unwrap(),
            Item::CharDevice(path, (major, minor), _) => {
                mknod(&at(path), FileType::CharacterDevice, *major, *minor)
            }
            Item::BlockDevice(path, (major, minor), _) => {
                mknod(&at(path), FileType::BlockDevice, *major, *minor)
            }
            Item::Fifo(path, _) => mknod(&at(path), FileType::Fifo, 0, 0),
            Item::Socket(path) => {
                // The listener closes; the socket file stays.
                std::os::unix::net::UnixListener::bind(at(path)).unwrap();
            }
            Item::Xattr(..) => {}
        }
    }
    // Owners, then modes (a chown clears setuid), then attributes (a chown
    // clears security.capability), then times, children before parents.
    for item in &order {
        let at = |path: &str| root.join(path);
        match item {
            Item::Dir(path, mode, owner) | Item::File(path, _, mode, owner) => {
                std::os::unix::fs::lchown(at(path), Some(owner.0), Some(owner.1)).unwrap();
                fs::set_permissions(at(path), fs::Permissions::from_mode(*mode)).unwrap();
            }
            Item::CharDevice(path, _, mode) | Item::BlockDevice(path, _, mode) => {
                fs::set_permissions(at(path), fs::Permissions::from_mode(*mode)).unwrap();
            }
            Item::Fifo(path, mode) => {
                fs::set_permissions(at(path), fs::Permissions::from_mode(*mode)).unwrap();
            }
            _ => {}
        }
    }
    for item in &order {
        if let Item::Xattr(path, name, value) = item {
            rustix::fs::lsetxattr(root.join(path), *name, value, XattrFlags::empty()).unwrap();
        }
    }
    for (index, item) in order.iter().enumerate().rev() {
        let path = match item {
            Item::Dir(path, ..)
            | Item::File(path, ..)
            | Item::Symlink(path, _)
            | Item::HardLink(path, _)
            | Item::CharDevice(path, ..)
            | Item::BlockDevice(path, ..)
            | Item::Fifo(path, _)
            | Item::Socket(path) => path,
            Item::Xattr(..) => continue,
        };
        set_mtime(&root.join(path), mtime + index as i64 * 7919);
    }
}

fn mknod(path: &Path, file_type: FileType, major: u32, minor: u32) {
    let device = rustix::fs::makedev(major, minor);
    rustix::fs::mknodat(CWD, path, file_type, Mode::from_raw_mode(0o600), device).unwrap();
}

fn set_mtime(path: &Path, seconds: i64) {
    let time = Timespec {
        tv_sec: seconds,
        tv_nsec: 123_456_789,
    };
    let times = Timestamps {
        last_access: time,
        last_modification: time,
    };
    rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW).unwrap();
}

/// `len` bytes of text-like pseudo-random data: compressible, as real
/// files are, but not trivially.
fn pseudo_text(len: usize, seed: u64) -> Vec<u8> {
    const WORDS: &[&[u8]] = &[
        b"the ",
        b"kernel ",
        b"package ",
        b"root ",
        b"/usr/lib ",
        b"config ",
        b"0x7f ",
        b"systemd ",
        b"unit ",
        b"= ",
        b"\n",
        b"debian ",
        b"bookworm ",
        b"zstd ",
        b"static ",
        b"void ",
        b"{ ",
        b"} ",
        b"return ",
        b"int ",
    ];
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(WORDS[(state % WORDS.len() as u64) as usize]);
        if state & 0x30 == 0 {
            out.extend_from_slice(&state.to_le_bytes()[5..]);
        }
    }
    out.truncate(len);
    out
}

/// `len` bytes that repeat a short pseudo-random text: a big file that
/// is quick to compress in a debug build.
fn repetitive(len: usize) -> Vec<u8> {
    pseudo_text(64 << 10, 1)
        .into_iter()
        .cycle()
        .take(len)
        .collect()
}

// ── describing trees ───────────────────────────────────────────────────────

/// Everything about a tree that an archive must carry, except mtimes:
/// relative path → type, mode, owner, contents or target or device,
/// extended attributes, and which earlier path it is a hard link of.
fn describe(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut inodes = BTreeMap::new();
    describe_into(root, root, &mut out, &mut inodes);
    out
}

fn describe_into(
    root: &Path,
    path: &Path,
    out: &mut BTreeMap<String, String>,
    inodes: &mut BTreeMap<u64, String>,
) {
    let metadata = fs::symlink_metadata(path).unwrap();
    let relative = path
        .strip_prefix(root)
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let file_type = metadata.file_type();
    let what = if file_type.is_dir() {
        "dir".to_owned()
    } else if file_type.is_symlink() {
        format!("symlink -> {}", fs::read_link(path).unwrap().display())
    } else if file_type.is_file() {
        let digest = sha256_hex(&fs::read(path).unwrap());
        format!("file {} bytes sha256 {digest}", metadata.len())
    } else {
        let rdev = metadata.rdev();
        format!(
            "{:o} device {},{}",
            metadata.mode() & 0o170000,
            rustix::fs::major(rdev),
            rustix::fs::minor(rdev)
        )
    };
    let mut line = format!(
        "{what} mode {:o} owner {}:{}",
        metadata.mode() & 0o7777,
        metadata.uid(),
        metadata.gid()
    );
    for (name, value) in xattrs(path) {
        line.push_str(&format!(" xattr {name}={value:?}"));
    }
    if !file_type.is_dir() && metadata.nlink() > 1 {
        match inodes.get(&metadata.ino()) {
            Some(first) => line.push_str(&format!(" link of {first}")),
            None => {
                inodes.insert(metadata.ino(), relative.clone());
            }
        }
    }
    out.insert(relative, line);
    if file_type.is_dir() {
        let mut children: Vec<PathBuf> = fs::read_dir(path)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .collect();
        children.sort();
        for child in children {
            describe_into(root, &child, out, inodes);
        }
    }
}

fn xattrs(path: &Path) -> Vec<(String, Vec<u8>)> {
    let mut names = vec![0u8; 65536];
    let len = rustix::fs::llistxattr(path, &mut names[..]).unwrap();
    let mut out = Vec::new();
    for name in names[..len]
        .split(|&b| b == 0)
        .filter(|name| !name.is_empty())
    {
        let mut value = vec![0u8; 65536];
        let value_len = rustix::fs::lgetxattr(path, name, &mut value[..]).unwrap();
        value.truncate(value_len);
        out.push((String::from_utf8_lossy(name).into_owned(), value));
    }
    out.sort();
    out
}

/// Every mtime under `root`, by relative path.
fn mtimes(root: &Path) -> BTreeMap<String, i64> {
    describe(root)
        .into_keys()
        .map(|relative| {
            let metadata = fs::symlink_metadata(root.join(&relative)).unwrap();
            (relative, metadata.mtime())
        })
        .collect()
}

// ── helpers ────────────────────────────────────────────────────────────────

fn options(threads: u32) -> PackOptions {
    PackOptions {
        epoch: EPOCH,
        level: 3,
        threads,
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The tar stream inside a `.tar.zst`.
fn decompress(path: &Path) -> Vec<u8> {
    zstd::decode_all(fs::File::open(path).unwrap()).unwrap()
}

/// Run a shell pipeline with `TZ=UTC LC_ALL=C`; its stdout, or a panic with
/// its stderr.
fn shell(script: &str) -> String {
    let output = Command::new("sh")
        .args(["-c", script])
        .env("TZ", "UTC")
        .env("LC_ALL", "C")
        .output()
        .expect("run sh");
    assert!(
        output.status.success(),
        "`{script}` failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

// ── packing ────────────────────────────────────────────────────────────────

#[test]
fn same_content_gives_the_same_bytes() {
    let work = tempfile::tempdir().unwrap();
    let (a, b) = (work.path().join("a"), work.path().join("b"));
    build(&a, &rootfs(true), false, 1_000_000_000);
    build(&b, &rootfs(true), true, 1_600_000_000);
    assert_eq!(
        describe(&a),
        describe(&b),
        "the two trees hold the same content"
    );
    assert_ne!(mtimes(&a), mtimes(&b));

    let out_a = work.path().join("a.tar.zst");
    let out_b = work.path().join("b.tar.zst");
    let report_a = pack(&a, &out_a, &options(1)).unwrap();
    let report_b = pack(&b, &out_b, &options(4)).unwrap();
    let bytes_a = fs::read(&out_a).unwrap();
    assert_eq!(
        bytes_a,
        fs::read(&out_b).unwrap(),
        "different bytes for the same content"
    );
    assert_eq!(report_a, report_b);

    // The report describes the file written.
    assert_eq!(report_a.sha256, sha256_hex(&bytes_a));
    assert_eq!(report_a.size, bytes_a.len() as u64);
    assert_eq!(report_a.tar_bytes, decompress(&out_a).len() as u64);
    assert_eq!(report_a.tar_bytes % 10240, 0);
    assert_eq!(report_a.sockets_skipped, 1);
    // Every item but the socket and the attributes is an entry.
    let items = rootfs(true);
    let entries = items
        .iter()
        .filter(|item| !matches!(item, Item::Socket(_) | Item::Xattr(..)))
        .count();
    assert_eq!(report_a.entries, entries as u64);

    // The epoch is content.
    let out_c = work.path().join("c.tar.zst");
    let other_epoch = PackOptions {
        epoch: EPOCH + 1,
        ..options(2)
    };
    let report_c = pack(&a, &out_c, &other_epoch).unwrap();
    assert_ne!(report_c.sha256, report_a.sha256);
}

#[test]
fn thread_count_does_not_change_the_bytes() {
    // Enough input for several zstd jobs (their size depends on the
    // level's window: 2 MiB at level 1, 8 MiB at level 3), so that the
    // workers really split it.
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    fs::create_dir(&root).unwrap();
    fs::write(root.join("big"), pseudo_text(20 << 20, 7)).unwrap();
    fs::write(root.join("small"), b"small").unwrap();
    for level in [1, 3] {
        let mut digests = Vec::new();
        for threads in [1, 2, 4] {
            let out = work.path().join(format!("{level}-{threads}.tar.zst"));
            let report = pack(
                &root,
                &out,
                &PackOptions {
                    level,
                    ..options(threads)
                },
            )
            .unwrap();
            digests.push((threads, report.sha256));
        }
        assert!(
            digests.iter().all(|(_, digest)| *digest == digests[0].1),
            "level {level}: {digests:?}"
        );
    }
    // The frame says nothing of the content size and carries a checksum:
    // frame header descriptor = single segment 0, checksum 1, no size.
    let frame = fs::read(work.path().join("3-1.tar.zst")).unwrap();
    assert_eq!(&frame[..4], &[0x28, 0xb5, 0x2f, 0xfd]);
    assert_eq!(
        frame[4] & 0b1110_0100,
        0b0000_0100,
        "descriptor {:08b}",
        frame[4]
    );
}

#[test]
fn tar_bytes_are_gnu_tars() {
    // GNU tar writes extended attributes in the file system's order; with
    // at most one per file, its archive must be kiln's byte for byte.
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    let mut items = rootfs(false);
    items.retain(|item| !matches!(item, Item::Socket(_)));
    build(&root, &items, false, 1_234_567_890);
    let out = work.path().join("kiln.tar.zst");
    pack(&root, &out, &options(2)).unwrap();

    let gnu = work.path().join("gnu.tar");
    shell(&format!(
        "tar --format=posix --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
         --sort=name --mtime=@{EPOCH} --numeric-owner --xattrs --xattrs-include='*' \
         -C {} -cf {} .",
        quote(&root),
        quote(&gnu)
    ));
    let ours = decompress(&out);
    let theirs = fs::read(&gnu).unwrap();
    if ours != theirs {
        let at = ours.iter().zip(&theirs).position(|(a, b)| a != b);
        panic!(
            "kiln's tar differs from GNU tar's: {} vs {} bytes, first difference at {at:?}",
            ours.len(),
            theirs.len()
        );
    }
}

#[test]
fn gnu_tar_and_zstd_read_it() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    build(&root, &rootfs(true), false, 1_000_000_000);
    let out = work.path().join("rootfs.tar.zst");
    pack(&root, &out, &options(2)).unwrap();

    // What `pct create` runs first, through the zstd CLI.
    let listing = shell(&format!(
        "zstd -dc {} | tar -tv --numeric-owner",
        quote(&out)
    ));
    let lines: BTreeMap<String, Vec<String>> = listing
        .lines()
        .map(|line| {
            let fields: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
            (fields[5].clone(), fields)
        })
        .collect();
    let line = |name: &str| -> String {
        let fields = lines
            .get(name)
            .unwrap_or_else(|| panic!("{name} not listed:\n{listing}"));
        // The date and time fields are checked below.
        let mut kept: Vec<&str> = fields[..3].iter().map(String::as_str).collect();
        kept.extend(fields[5..].iter().map(String::as_str));
        kept.join(" ")
    };
    assert_eq!(line("./"), "drwxr-xr-x 0/0 0 ./");
    assert_eq!(line("./bin"), "lrwxrwxrwx 0/0 0 ./bin -> usr/bin");
    assert_eq!(line("./dev/null"), "crw-rw-rw- 0/0 1,3 ./dev/null");
    assert_eq!(line("./dev/loop0"), "brw-rw---- 0/0 7,0 ./dev/loop0");
    assert_eq!(line("./etc/shadow"), "-rw-r----- 0/42 26 ./etc/shadow");
    assert_eq!(
        line("./etc/alternatives/editor"),
        "lrwxrwxrwx 0/0 0 ./etc/alternatives/editor -> /usr/bin/vim.tiny"
    );
    assert_eq!(line("./home/user/"), "drwx------ 1000/1000 0 ./home/user/");
    assert_eq!(
        line("./home/user/big-uid"),
        "-rw------- 3000000/3000001 1 ./home/user/big-uid"
    );
    assert_eq!(line("./run/initctl"), "prw------- 0/0 0 ./run/initctl");
    assert!(!lines.contains_key("./run/socket"), "sockets are left out");
    assert_eq!(line("./tmp/"), "drwxrwxrwt 0/0 0 ./tmp/");
    assert_eq!(line("./usr/bin/su"), "-rwsr-xr-x 0/0 7 ./usr/bin/su");
    assert_eq!(line("./usr/bin/wall"), "-rwxr-sr-x 0/5 9 ./usr/bin/wall");
    assert_eq!(
        line("./usr/bin/perl"),
        "-rwxr-xr-x 0/0 3145728 ./usr/bin/perl"
    );
    assert_eq!(
        line("./usr/bin/perl-copy"),
        "hrwxr-xr-x 0/0 0 ./usr/bin/perl-copy link to ./usr/bin/perl"
    );
    assert_eq!(
        line("./usr/bin/perl5.36.0"),
        "hrwxr-xr-x 0/0 0 ./usr/bin/perl5.36.0 link to ./usr/bin/perl"
    );
    assert_eq!(
        line("./usr/bin/vim"),
        format!("lrwxrwxrwx 0/0 0 ./usr/bin/vim -> {LONG_TARGET}")
    );
    assert_eq!(
        line(&format!("./{LONG_NAME}")),
        format!("-rw-r--r-- 0/0 7 ./{LONG_NAME}")
    );
    assert_eq!(line("./var/mail/"), "drwxrwsr-x 0/8 0 ./var/mail/");
    for fields in lines.values() {
        assert_eq!(fields[3..5], ["2023-11-14", "22:13"], "{fields:?}");
    }
    // Sorted by name, each directory followed by its contents.
    let names: Vec<&str> = listing
        .lines()
        .map(|line| line.split_whitespace().nth(5).unwrap())
        .collect();
    let position = |name: &str| names.iter().position(|n| *n == name).unwrap();
    assert_eq!(names[0], "./");
    assert!(position("./bin") < position("./dev/"));
    assert!(position("./dev/loop0") < position("./dev/null"));
    assert!(position("./usr/bin/vim.tiny") < position("./usr/share/"));

    // Extended attributes, as GNU tar lists them.
    let verbose = shell(&format!(
        "zstd -dc {} | tar --xattrs --xattrs-include='*' -tvvf -",
        quote(&out)
    ));
    let after = |name: &str| -> Vec<&str> {
        let lines: Vec<&str> = verbose.lines().collect();
        let at = lines.iter().position(|line| line.ends_with(name)).unwrap();
        lines[at + 1..]
            .iter()
            .take_while(|line| line.starts_with("  x:"))
            .copied()
            .collect()
    };
    assert_eq!(after("./usr/bin/ping"), ["  x: 20 security.capability"]);
    assert_eq!(after("./etc/xattrs"), ["  x: 1 user.a", "  x: 1 user.b"]);
    assert_eq!(
        after("./usr/share/odd name=with%signs"),
        ["  x: 13 user.kiln=odd%name"]
    );

    // And GNU tar extracts the same tree, with every mtime at the epoch.
    let extracted = work.path().join("extracted");
    fs::create_dir(&extracted).unwrap();
    shell(&format!(
        "zstd -dc {} | tar --xattrs --xattrs-include='*' --numeric-owner -xpf - -C {}",
        quote(&out),
        quote(&extracted)
    ));
    let mut expected = describe(&root);
    expected.remove("run/socket");
    assert_eq!(describe(&extracted), expected);
    assert!(
        mtimes(&extracted)
            .values()
            .all(|&mtime| mtime == EPOCH as i64)
    );
}

#[test]
fn pack_errors_name_the_path() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out.tar.zst");

    let missing = work.path().join("missing");
    let error = pack(&missing, &out, &options(1)).unwrap_err();
    assert!(matches!(error, ArchiveError::Root { .. }), "{error:?}");
    assert!(error.to_string().contains("missing"), "{error}");

    let file = work.path().join("file");
    fs::write(&file, b"").unwrap();
    let error = pack(&file, &out, &options(1)).unwrap_err().to_string();
    assert!(error.contains("not a directory"), "{error}");

    let link = work.path().join("link");
    std::os::unix::fs::symlink(work.path(), &link).unwrap();
    let error = pack(&link, &out, &options(1)).unwrap_err().to_string();
    assert!(error.contains("is a symlink"), "{error}");

    let root = work.path().join("root");
    fs::create_dir(&root).unwrap();
    let error = pack(
        &root,
        &work.path().join("no/such/dir/out.tar.zst"),
        &options(1),
    )
    .unwrap_err();
    assert!(matches!(error, ArchiveError::Write { .. }), "{error:?}");
    assert!(
        error.to_string().contains("no/such/dir/out.tar.zst"),
        "{error}"
    );

    fs::write(root.join("file"), b"x").unwrap();
    let inside = root.join("out.tar.zst");
    let error = pack(&root, &inside, &options(1)).unwrap_err().to_string();
    assert!(error.contains("archive being written"), "{error}");
    assert!(!inside.exists());

    let error = pack(
        &root,
        &out,
        &PackOptions {
            threads: 0,
            ..options(1)
        },
    )
    .unwrap_err();
    assert!(error.to_string().contains("threads must be 1"), "{error}");
    assert!(!out.exists());
}

#[test]
fn unreadable_files_are_errors_naming_them() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::write(root.join("etc/secret"), b"secret").unwrap();
    fs::set_permissions(root.join("etc/secret"), fs::Permissions::from_mode(0o000)).unwrap();
    let out = work.path().join("out.tar.zst");
    // Root reads anything: give up the capabilities that let it, on this
    // thread only (the reader thread pack starts inherits them).
    let saved = rustix::thread::capabilities(None).unwrap();
    let mut reduced = saved;
    reduced.effective -= rustix::thread::CapabilitySet::DAC_OVERRIDE
        | rustix::thread::CapabilitySet::DAC_READ_SEARCH;
    rustix::thread::set_capabilities(None, reduced).unwrap();
    let result = pack(&root, &out, &options(1));
    rustix::thread::set_capabilities(None, saved).unwrap();
    let error = result.unwrap_err();
    assert!(matches!(error, ArchiveError::Read { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("root/etc/secret"), "{message}");
    assert!(message.contains("ermission denied"), "{message}");
    assert!(!out.exists(), "a failed pack leaves no output");
}

// ── unpacking ──────────────────────────────────────────────────────────────

#[test]
fn pack_unpack_pack_is_the_identity() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    build(&root, &rootfs(true), false, 1_000_000_000);
    let first = work.path().join("first.tar.zst");
    pack(&root, &first, &options(2)).unwrap();

    let unpacked = work.path().join("unpacked");
    fs::create_dir(&unpacked).unwrap();
    let report = unpack(&first, &unpacked).unwrap();
    assert_eq!(report.compression, Compression::Zstd);
    assert_eq!(report.hard_links, 2);
    assert_eq!(report.devices, 2);
    assert_eq!(report.fifos, 1);
    assert_eq!(report.symlinks, 3);
    assert!(report.owners_preserved);
    let mut expected = describe(&root);
    expected.remove("run/socket");
    assert_eq!(describe(&unpacked), expected);
    assert!(
        mtimes(&unpacked)
            .values()
            .all(|&mtime| mtime == EPOCH as i64)
    );

    let second = work.path().join("second.tar.zst");
    pack(&unpacked, &second, &options(1)).unwrap();
    assert_eq!(fs::read(&first).unwrap(), fs::read(&second).unwrap());
}

#[test]
fn unpacks_plain_gzip_xz_and_zstd() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    build(&root, &rootfs(false), false, 1_000_000_000);
    let packed = work.path().join("rootfs.tar.zst");
    pack(&root, &packed, &options(2)).unwrap();
    let tar = decompress(&packed);

    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gzip.write_all(&tar).unwrap();
    let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 1);
    xz.write_all(&tar).unwrap();
    let variants = [
        ("rootfs.tar", tar.clone(), Compression::None),
        ("rootfs.tar.gz", gzip.finish().unwrap(), Compression::Gzip),
        ("rootfs.tar.xz", xz.finish().unwrap(), Compression::Xz),
        (
            "rootfs.tar.zst",
            fs::read(&packed).unwrap(),
            Compression::Zstd,
        ),
    ];
    let mut expected = describe(&root);
    expected.remove("run/socket");
    for (name, bytes, compression) in variants {
        let archive = work.path().join(format!("in-{name}"));
        fs::write(&archive, bytes).unwrap();
        let dest = work.path().join(format!("out-{name}"));
        fs::create_dir(&dest).unwrap();
        let report = unpack(&archive, &dest).unwrap();
        assert_eq!(report.compression, compression, "{name}");
        assert_eq!(describe(&dest), expected, "{name}");
    }
}

#[test]
fn unpacks_what_gnu_tar_writes() {
    // GNU tar's own format (GNU long names, base-256 numbers), not only
    // pax: a rootfs tarball from elsewhere.
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    let mut items = rootfs(false);
    items.retain(|item| !matches!(item, Item::Socket(_)));
    build(&root, &items, false, 1_000_000_000);
    let archive = work.path().join("gnu.tar.gz");
    shell(&format!(
        "tar --format=gnu --xattrs --xattrs-include='*' --numeric-owner -C {} -czf {} .",
        quote(&root),
        quote(&archive)
    ));
    let dest = work.path().join("dest");
    fs::create_dir(&dest).unwrap();
    unpack(&archive, &dest).unwrap();
    // GNU format carries no extended attributes.
    let without_xattrs = |tree: BTreeMap<String, String>| -> BTreeMap<String, String> {
        tree.into_iter()
            .map(|(path, line)| (path, line.split(" xattr ").next().unwrap().to_owned()))
            .collect()
    };
    assert_eq!(
        without_xattrs(describe(&dest)),
        without_xattrs(describe(&root))
    );
}

#[test]
fn unpack_checks_its_input_and_destination() {
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("dest");
    fs::create_dir(&dest).unwrap();

    let garbage = work.path().join("garbage.tar");
    fs::write(&garbage, vec![b'x'; 2048]).unwrap();
    let error = unpack(&garbage, &dest).unwrap_err().to_string();
    assert!(error.contains("garbage.tar"), "{error}");
    assert!(error.contains("not a tar archive"), "{error}");

    let not_tar = work.path().join("not-a-tar.gz");
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gzip.write_all(&[b'x'; 2048]).unwrap();
    fs::write(&not_tar, gzip.finish().unwrap()).unwrap();
    let error = unpack(&not_tar, &dest).unwrap_err().to_string();
    assert!(
        error.contains("gzip-compressed, but what it holds is not a tar"),
        "{error}"
    );

    let bzip2 = work.path().join("rootfs.tar.bz2");
    fs::write(&bzip2, b"BZh91AY&SY").unwrap();
    let error = unpack(&bzip2, &dest).unwrap_err().to_string();
    assert!(error.contains("bzip2"), "{error}");

    let truncated = work.path().join("truncated.tar");
    let mut tar = malicious(&[Raw::File("./a", b"contents")]);
    tar.truncate(512 + 4);
    fs::write(&truncated, &tar).unwrap();
    let error = unpack(&truncated, &dest).unwrap_err().to_string();
    assert!(error.contains("ends in the middle of an entry"), "{error}");

    let good = work.path().join("good.tar");
    fs::write(&good, malicious(&[Raw::File("./a", b"contents")])).unwrap();
    let error = unpack(&good, &dest).unwrap_err();
    assert!(
        matches!(error, ArchiveError::Destination { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("not empty"), "{error}");
    let error = unpack(&good, &work.path().join("missing")).unwrap_err();
    assert!(
        matches!(error, ArchiveError::Destination { .. }),
        "{error:?}"
    );
}

// ── hostile archives ───────────────────────────────────────────────────────

/// An entry of a hand-made archive, with its name exactly as given.
enum Raw<'a> {
    File(&'a str, &'a [u8]),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    HardLink(&'a str, &'a str),
}

/// A tar archive of `entries`, written with raw headers: the `tar`
/// crate's path setters refuse the names these tests need.
fn malicious(entries: &[Raw<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_ustar();
        let (name, data, entry_type, mode): (&str, &[u8], tar::EntryType, u32) = match entry {
            Raw::File(name, data) => (name, data, tar::EntryType::Regular, 0o644),
            Raw::Dir(name) => (name, b"", tar::EntryType::Directory, 0o755),
            Raw::Symlink(name, target) | Raw::HardLink(name, target) => {
                header.set_link_name_literal(target.as_bytes()).unwrap();
                let entry_type = if matches!(entry, Raw::Symlink(..)) {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                };
                (name, b"", entry_type, 0o777)
            }
        };
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_entry_type(entry_type);
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_size(data.len() as u64);
        header.set_mtime(EPOCH);
        header.set_cksum();
        builder.append(&header, data).unwrap();
    }
    builder.into_inner().unwrap()
}

/// A work directory with `dest/` (empty) and `outside/` (a file `secret`
/// that no archive may change), and the state of everything but `dest`.
struct Arena {
    work: tempfile::TempDir,
}

impl Arena {
    fn new() -> Self {
        let work = tempfile::tempdir().unwrap();
        fs::create_dir(work.path().join("dest")).unwrap();
        fs::create_dir(work.path().join("outside")).unwrap();
        fs::write(work.path().join("outside/secret"), b"secret").unwrap();
        Arena { work }
    }

    fn dest(&self) -> PathBuf {
        self.work.path().join("dest")
    }

    fn outside(&self) -> PathBuf {
        self.work.path().join("outside")
    }

    /// Everything under the work directory except `dest/`.
    fn around_dest(&self) -> BTreeMap<String, String> {
        let mut tree = describe(self.work.path());
        tree.retain(|path, _| path != "dest" && !path.starts_with("dest/"));
        tree
    }

    /// Unpack an archive of `entries` into `dest/`: the error, after
    /// checking that nothing outside `dest/` changed.
    fn unpack(&self, entries: &[Raw<'_>]) -> Result<kiln::archive::UnpackReport, ArchiveError> {
        let before = self.around_dest();
        let archive = self.work.path().join("hostile.tar");
        fs::write(&archive, malicious(entries)).unwrap();
        let result = unpack(&archive, &self.dest());
        fs::remove_file(&archive).unwrap();
        assert_eq!(self.around_dest(), before, "something outside dest changed");
        result
    }
}

/// Assert the refusal, and that its message names the archive, the entry
/// and the reason.
fn assert_refused(
    result: Result<kiln::archive::UnpackReport, ArchiveError>,
    entry: &str,
    reason: &Refusal,
    says: &str,
) {
    let error = result.expect_err("the archive must be refused");
    let message = error.to_string();
    match &error {
        ArchiveError::Refused {
            entry: refused,
            reason: why,
            ..
        } => {
            assert_eq!(refused, entry, "{message}");
            assert_eq!(why, reason, "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(message.contains("hostile.tar"), "{message}");
    assert!(message.contains(&format!("`{entry}`")), "{message}");
    assert!(message.contains(says), "{message}");
}

#[test]
fn refuses_parent_components() {
    let arena = Arena::new();
    assert_refused(
        arena.unpack(&[Raw::File("../outside/evil", b"pwned")]),
        "../outside/evil",
        &Refusal::ParentComponent,
        "`..`",
    );
    assert_refused(
        arena.unpack(&[
            Raw::Dir("./a/"),
            Raw::File("./a/../../outside/evil", b"pwned"),
        ]),
        "./a/../../outside/evil",
        &Refusal::ParentComponent,
        "`..`",
    );
}

#[test]
fn refuses_absolute_paths() {
    let arena = Arena::new();
    let absolute = arena.outside().join("evil").display().to_string();
    assert_refused(
        arena.unpack(&[Raw::File(&absolute, b"pwned")]),
        &absolute,
        &Refusal::Absolute,
        "absolute",
    );
}

#[test]
fn refuses_paths_through_symlinks() {
    let arena = Arena::new();
    let outside = arena.outside().display().to_string();
    let through = Refusal::ThroughSymlink {
        symlink: "evil".to_owned(),
    };
    assert_refused(
        arena.unpack(&[
            Raw::Symlink("./evil", &outside),
            Raw::File("./evil/passwd", b"pwned"),
        ]),
        "./evil/passwd",
        &through,
        "symlink `evil`",
    );
    // The symlink itself was fine: absolute targets are normal, and stored
    // as they are.
    assert_eq!(
        fs::read_link(arena.dest().join("evil")).unwrap(),
        arena.outside()
    );

    let arena = Arena::new();
    assert_refused(
        arena.unpack(&[Raw::Symlink("evil", "../.."), Raw::Dir("evil/x/")]),
        "evil/x/",
        &through,
        "never follows symlinks",
    );

    let arena = Arena::new();
    assert_refused(
        arena.unpack(&[
            Raw::Dir("a/"),
            Raw::Symlink("a/b", "../../outside"),
            Raw::File("a/b/secret", b"pwned"),
        ]),
        "a/b/secret",
        &Refusal::ThroughSymlink {
            symlink: "a/b".to_owned(),
        },
        "symlink `a/b`",
    );
}

#[test]
fn replaces_a_symlink_instead_of_writing_through_it() {
    // A later entry with the name of a symlink replaces the symlink; it
    // never writes to what the symlink points at.
    let arena = Arena::new();
    let secret = arena.outside().join("secret").display().to_string();
    arena
        .unpack(&[Raw::Symlink("x", &secret), Raw::File("x", b"pwned")])
        .unwrap();
    let x = arena.dest().join("x");
    assert!(fs::symlink_metadata(&x).unwrap().is_file());
    assert_eq!(fs::read(&x).unwrap(), b"pwned");
}

#[test]
fn refuses_hard_links_that_escape() {
    let arena = Arena::new();
    assert_refused(
        arena.unpack(&[Raw::HardLink("link", "../outside/secret")]),
        "link",
        &Refusal::LinkEscapes {
            target: "../outside/secret".to_owned(),
        },
        "outside the destination",
    );
    let secret = arena.outside().join("secret").display().to_string();
    assert_refused(
        arena.unpack(&[Raw::HardLink("link", &secret)]),
        "link",
        &Refusal::LinkEscapes {
            target: secret.clone(),
        },
        "outside the destination",
    );

    let arena = Arena::new();
    let outside = arena.outside().display().to_string();
    assert_refused(
        arena.unpack(&[
            Raw::Symlink("evil", &outside),
            Raw::HardLink("link", "evil/secret"),
        ]),
        "link",
        &Refusal::LinkThroughSymlink {
            target: "evil/secret".to_owned(),
            symlink: "evil".to_owned(),
        },
        "goes through the symlink `evil`",
    );

    let arena = Arena::new();
    assert_refused(
        arena.unpack(&[Raw::HardLink("link", "./not/yet")]),
        "link",
        &Refusal::LinkTargetMissing {
            target: "./not/yet".to_owned(),
        },
        "no earlier entry",
    );

    // A hard link inside the destination is fine.
    let arena = Arena::new();
    let report = arena
        .unpack(&[Raw::File("./a", b"data"), Raw::HardLink("./b", "./a")])
        .unwrap();
    assert_eq!(report.hard_links, 1);
    let (a, b) = (arena.dest().join("a"), arena.dest().join("b"));
    assert_eq!(
        fs::metadata(a).unwrap().ino(),
        fs::metadata(b).unwrap().ino()
    );
}

#[test]
fn refuses_to_replace_the_destination() {
    let arena = Arena::new();
    assert_refused(
        arena.unpack(&[Raw::Symlink("./", "/")]),
        "./",
        &Refusal::RootNotDirectory,
        "destination directory itself",
    );
}

#[test]
fn a_capability_survives_the_round_trip() {
    // Checked on its own because a chown after setting it would drop it.
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    build(
        &root,
        &[
            Item::Dir("", 0o755, (0, 0)),
            Item::File("ping", b"ping".to_vec(), 0o4755, (0, 1)),
            Item::Xattr("ping", "security.capability", CAP_NET_RAW),
        ],
        false,
        1,
    );
    let out = work.path().join("out.tar.zst");
    pack(&root, &out, &options(1)).unwrap();
    let dest = work.path().join("dest");
    fs::create_dir(&dest).unwrap();
    unpack(&out, &dest).unwrap();
    let ping = dest.join("ping");
    assert_eq!(
        xattrs(&ping),
        [("security.capability".to_owned(), CAP_NET_RAW.to_vec())]
    );
    assert_eq!(fs::metadata(&ping).unwrap().mode() & 0o7777, 0o4755);
    assert_eq!(fs::metadata(&ping).unwrap().gid(), 1);
    let mut contents = String::new();
    fs::File::open(&ping)
        .unwrap()
        .read_to_string(&mut contents)
        .unwrap();
    assert_eq!(contents, "ping");
}

// ── benchmark ──────────────────────────────────────────────────────────────

/// Pack `KILN_BENCH_ROOT` into `KILN_BENCH_OUT` with the default options
/// (one zstd worker per core) at `KILN_BENCH_EPOCH` (default 1). Run by
/// `benches/pack.sh`, which times it.
#[test]
#[ignore = "benchmark entry point; run by benches/pack.sh"]
fn bench_pack_tree() {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set (see benches/pack.sh)"))
    };
    let epoch = std::env::var("KILN_BENCH_EPOCH").map_or(1, |text| text.parse().unwrap());
    let root = PathBuf::from(var("KILN_BENCH_ROOT"));
    let out = PathBuf::from(var("KILN_BENCH_OUT"));
    if let Err(error) = pack(&root, &out, &PackOptions::new(epoch)) {
        panic!("{error}");
    }
}
