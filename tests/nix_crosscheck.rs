//! Cross-checks `kiln::store` against the real Nix on this machine: NAR
//! serialisation (`nix-store --dump`), NAR hashes (`nix-hash`, `nix hash
//! path`), Nix base-32 (`nix-hash --to-base32`) and the ed25519 key format
//! (`nix key generate-secret`, `nix key convert-secret-to-public`), and
//! restoring NARs (`nix-store --restore`).
//!
//! Nix comes from Debian's `nix-bin` (installed by `scripts/setup.sh`); the
//! commands used need neither a daemon nor a store, so they run as any user.
//! A missing binary fails the test rather than skipping it: a cross-check
//! that silently does not run proves nothing.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kiln::store::{nar, nixbase32};
use sha2::{Digest, Sha256};

/// Run a Nix command, failing the test with instructions if it is missing.
fn run_nix(program: &str, args: &[&OsStr]) -> Output {
    match Command::new(program).args(args).output() {
        Ok(output) => output,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => panic!(
            "`{program}` is not installed; run scripts/setup.sh (it installs Debian's nix-bin) \
             so that these tests can compare kiln with the real Nix"
        ),
        Err(error) => panic!("cannot run `{program}`: {error}"),
    }
}

/// Run a Nix command that must succeed and return its stdout.
fn nix(program: &str, args: &[&OsStr]) -> Vec<u8> {
    let output = run_nix(program, args);
    assert!(
        output.status.success(),
        "`{program} {}` failed ({}): {}",
        args.iter()
            .map(|arg| arg.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

fn nix_text(program: &str, args: &[&OsStr]) -> String {
    String::from_utf8(nix(program, args))
        .expect("Nix prints hashes as UTF-8")
        .trim_end()
        .to_owned()
}

fn os(text: &str) -> &OsStr {
    OsStr::new(text)
}

/// Deterministic pseudo-random bytes (xorshift64*), so failures reproduce.
fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed | 1;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        bytes.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn write(path: &Path, contents: &[u8], mode: u32) {
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A tree exercising every NAR feature: regular, executable, empty and
/// large files (the large one spans several 1 MiB read chunks and does not
/// end on one), symlinks (relative, dangling, to a directory), empty and
/// nested directories, and names whose byte order differs from locale order
/// (`B` < `_x` < `a` < `é` < `\xff`).
fn sample_tree(root: &Path) {
    std::fs::create_dir_all(root.join("nested/deeper/deepest")).unwrap();
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir(root.join("empty-dir")).unwrap();
    write(&root.join("B"), b"upper case sorts first\n", 0o644);
    write(&root.join("a"), b"lower case\n", 0o644);
    write(&root.join("_x"), b"underscore sorts between\n", 0o644);
    write(&root.join("\u{e9}t\u{e9}"), b"non-ASCII name\n", 0o644);
    write(
        &root.join(OsStr::from_bytes(b"raw-\xff-name")),
        b"not UTF-8\n",
        0o644,
    );
    write(&root.join("empty"), b"", 0o644);
    write(&root.join("bin/run"), b"#!/bin/sh\necho hi\n", 0o755);
    // Only the owner-execute bit counts: group/other execute is not
    // "executable" in a NAR, and owner-execute alone is.
    write(&root.join("bin/group-exec"), b"#!/bin/sh\n", 0o654);
    write(&root.join("bin/owner-exec-only"), b"#!/bin/sh\n", 0o700);
    symlink("run", root.join("bin/sh")).unwrap();
    symlink("../nowhere/at/all", root.join("dangling")).unwrap();
    symlink("nested", root.join("nested-link")).unwrap();
    write(
        &root.join("nested/deeper/deepest/leaf"),
        b"eight b\n",
        0o444,
    );
    write(
        &root.join("nested/big"),
        &pseudo_random(1, 3 * 1024 * 1024 + 12_345),
        0o600,
    );
}

/// The roots to compare: the whole tree, and single-node archives of a
/// large file, an empty file, a symlink and an empty directory.
fn roots(dir: &Path) -> Vec<PathBuf> {
    let tree = dir.join("tree");
    sample_tree(&tree);
    vec![
        tree.clone(),
        tree.join("nested/big"),
        tree.join("empty"),
        tree.join("bin/sh"),
        tree.join("empty-dir"),
    ]
}

/// Assert two NARs are equal, reporting the first difference rather than
/// printing megabytes.
fn assert_same_nar(kiln: &[u8], nix: &[u8], root: &Path) {
    if kiln == nix {
        return;
    }
    let first = kiln
        .iter()
        .zip(nix)
        .position(|(a, b)| a != b)
        .unwrap_or(kiln.len().min(nix.len()));
    let window = |bytes: &[u8]| {
        let start = first.saturating_sub(16);
        let end = (first + 48).min(bytes.len());
        String::from_utf8_lossy(&bytes[start..end])
            .escape_debug()
            .to_string()
    };
    panic!(
        "NAR of {} differs from `nix-store --dump` at byte {first} (kiln {} bytes, Nix {} bytes)\n kiln: {}\n  nix: {}",
        root.display(),
        kiln.len(),
        nix.len(),
        window(kiln),
        window(nix)
    );
}

#[test]
fn dump_is_byte_identical_to_nix_store_dump() {
    let dir = tempfile::tempdir().unwrap();
    for root in roots(dir.path()) {
        let expected = nix("nix-store", &[os("--dump"), root.as_os_str()]);

        let mut ours = Vec::new();
        let written = nar::dump(&root, &mut ours).unwrap();
        assert_eq!(written, ours.len() as u64, "{}", root.display());
        assert_same_nar(&ours, &expected, &root);

        // `nix-store --dump | sha256sum`, and the size Nix records as narSize.
        let hashed = nar::hash(&root).unwrap();
        let digest: [u8; 32] = Sha256::digest(&expected).into();
        assert_eq!(hashed.sha256, digest, "{}", root.display());
        assert_eq!(hashed.size, expected.len() as u64, "{}", root.display());
    }
}

#[test]
fn nar_hash_matches_nix_hash() {
    let dir = tempfile::tempdir().unwrap();
    let roots = roots(dir.path());
    for root in &roots {
        let hashed = nar::hash(root).unwrap();
        let base32 = nix_text(
            "nix-hash",
            &[os("--type"), os("sha256"), os("--base32"), root.as_os_str()],
        );
        assert_eq!(
            nixbase32::encode(&hashed.sha256),
            base32,
            "{}",
            root.display()
        );
        assert_eq!(hashed.to_nix32(), format!("sha256:{base32}"));
        let base16 = nix_text("nix-hash", &[os("--type"), os("sha256"), root.as_os_str()]);
        assert_eq!(hashed.to_hex(), base16, "{}", root.display());

        // Scanning for references must not change the hash.
        let (scanned, found) =
            nar::hash_and_scan(root, &["0123456789abcdfghijklmnpqrsvwxyz"]).unwrap();
        assert_eq!(scanned, hashed);
        assert!(found.is_empty());
    }
    // The newer CLI agrees too (as printed for `narHash` by `nix path-info`).
    let tree = &roots[0];
    let cli = nix_text(
        "nix",
        &[
            os("--extra-experimental-features"),
            os("nix-command"),
            os("hash"),
            os("path"),
            os("--type"),
            os("sha256"),
            os("--base32"),
            tree.as_os_str(),
        ],
    );
    assert_eq!(cli, nixbase32::encode(&nar::hash(tree).unwrap().sha256));
}

#[test]
fn unsupported_files_are_rejected_like_nix() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("socket");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let output = run_nix("nix-store", &[os("--dump"), socket.as_os_str()]);
    assert!(!output.status.success(), "Nix archived a socket");
    assert!(String::from_utf8_lossy(&output.stderr).contains("unsupported type"));
    assert!(matches!(
        nar::hash(&socket),
        Err(nar::NarError::Unsupported { kind: "socket", .. })
    ));
}

#[test]
fn base32_matches_nix_hash_to_base32() {
    // Every digest length Nix knows: md5 16, sha1 20 (a store-path digest's
    // length), sha256 32, sha512 64 bytes. Each length leaves a different
    // number of padding bits in the first character.
    for (algorithm, len) in [("md5", 16), ("sha1", 20), ("sha256", 32), ("sha512", 64)] {
        let inputs: Vec<Vec<u8>> = (0..6)
            .map(|seed| pseudo_random(seed * 7 + len as u64, len))
            .chain([vec![0; len], vec![0xff; len]])
            .collect();
        let hexes: Vec<String> = inputs.iter().map(|bytes| hex(bytes)).collect();
        let mut args = vec![os("--type"), os(algorithm), os("--to-base32")];
        args.extend(hexes.iter().map(|hex| os(hex)));
        let printed = nix_text("nix-hash", &args);
        let lines: Vec<&str> = printed.lines().collect();
        assert_eq!(lines.len(), inputs.len(), "{algorithm}: {printed}");
        for ((bytes, hex), line) in inputs.iter().zip(&hexes).zip(lines) {
            assert_eq!(nixbase32::encode(bytes), line, "{algorithm} {hex}");
            assert_eq!(nixbase32::encoded_len(len), line.len());
            assert_eq!(
                nixbase32::decode(line).unwrap(),
                *bytes,
                "{algorithm} {line}"
            );
        }
    }
}

/// `nix key …` with the secret key on stdin (never in argv).
fn nix_key(args: &[&str], stdin: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("nix")
        .args(["--extra-experimental-features", "nix-command", "key"])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `nix key` ({e}); run scripts/setup.sh (nix-bin)"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "nix key {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// Cache signing keys use Nix's format: a key made by `nix key
/// generate-secret` is read by kiln, which derives the public key Nix does,
/// and Nix derives from kiln's secret key the public key kiln prints.
#[test]
fn cache_keys_are_interchangeable_with_nix_keys() {
    use kiln::cache::record::{PublicKey, SecretKey};
    let from_nix = nix_key(&["generate-secret", "--key-name", "nix-made-1"], "");
    let parsed = SecretKey::parse(&from_nix).expect("kiln reads a Nix secret key");
    assert_eq!(parsed.to_text(), from_nix, "and writes it back unchanged");
    let public = nix_key(&["convert-secret-to-public"], &from_nix);
    assert_eq!(parsed.public().to_text(), public);
    assert_eq!(PublicKey::parse(&public).unwrap(), parsed.public());

    let from_kiln = SecretKey::generate("kiln-made-1").unwrap();
    assert_eq!(
        nix_key(&["convert-secret-to-public"], &from_kiln.to_text()),
        from_kiln.public().to_text()
    );
}

/// `kiln cache keygen`: the secret key goes to a new 0600 file and nowhere
/// else; the public key printed is the one Nix derives from that file; an
/// existing file is never overwritten.
#[test]
fn cache_keygen_writes_a_private_nix_compatible_key() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cache.sec");
    let run = |name: &str| {
        Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["cache", "keygen", name, "--secret-key-file"])
            .arg(&file)
            .output()
            .unwrap()
    };
    let output = run("cache.home.arpa-1");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let public = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    let secret = std::fs::read_to_string(&file).unwrap();
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(nix_key(&["convert-secret-to-public"], &secret), public);
    let secret_part = secret.trim().split_once(':').unwrap().1;
    assert!(!String::from_utf8_lossy(&output.stderr).contains(secret_part));
    assert!(public.starts_with("cache.home.arpa-1:"));

    let again = run("cache.home.arpa-1");
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("never overwrites"));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), secret, "unchanged");

    let bad = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["cache", "keygen", "bad name", "--secret-key-file"])
        .arg(dir.path().join("other.sec"))
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(!dir.path().join("other.sec").exists());
}

/// Restoring: what `nix-store --dump` writes, kiln restores to a tree whose
/// NAR is the same bytes; what kiln dumps, `nix-store --restore` restores to
/// a tree Nix dumps to the same bytes.
#[test]
fn restore_agrees_with_nix_store_restore_both_ways() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    for (index, root) in roots(dir.path()).into_iter().enumerate() {
        let from_nix = nix("nix-store", &[OsStr::new("--dump"), root.as_os_str()]);
        let ours = dir.path().join(format!("kiln-restored-{index}"));
        let hash = kiln::store::unnar::restore(from_nix.as_slice(), &ours)
            .unwrap_or_else(|e| panic!("{}: {e}", root.display()));
        assert_eq!(hash.size, from_nix.len() as u64);
        assert_eq!(hash, nar::hash(&root).unwrap(), "{}", root.display());
        let mut again = Vec::new();
        nar::dump(&ours, &mut again).unwrap();
        assert_eq!(again, from_nix, "{}", root.display());

        let theirs = dir.path().join(format!("nix-restored-{index}"));
        let mut child = Command::new("nix-store")
            .arg("--restore")
            .arg(&theirs)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("run nix-store --restore");
        child.stdin.take().unwrap().write_all(&again).unwrap();
        assert!(child.wait().unwrap().success());
        let redumped = nix("nix-store", &[OsStr::new("--dump"), theirs.as_os_str()]);
        assert_eq!(redumped, from_nix, "{}", root.display());
    }
}
