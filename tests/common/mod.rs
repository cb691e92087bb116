//! Helpers shared by the integration tests.
#![allow(dead_code, reason = "each test binary uses some of these")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A moto S3 server for the binary-cache tests.
pub(crate) mod moto;

/// The repo root (where Cargo.toml is).
pub(crate) fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Copy a directory tree (files and directories only).
pub(crate) fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Run the real `kiln` binary with colour off, in `dir`.
pub(crate) fn kiln(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["--color", "never"])
        .args(args)
        .current_dir(dir)
        .env_remove("NO_COLOR")
        .output()
        .expect("run kiln")
}

pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Print a notice (a skipped test must say so loudly).
#[allow(clippy::print_stderr, reason = "a skipped test must say so loudly")]
pub(crate) fn notice(message: &str) {
    eprintln!("{message}");
}

/// Whether Debian's mirror answers on port 80 (tests that need it skip
/// with a notice when it does not, and fail on any other problem).
pub(crate) fn mirror_reachable() -> bool {
    use std::net::ToSocketAddrs;
    let Ok(addresses) = ("deb.debian.org", 80).to_socket_addrs() else {
        return false;
    };
    addresses.into_iter().any(|a| {
        std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_secs(5)).is_ok()
    })
}

/// Whether `tool` is on PATH.
pub(crate) fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Run kiln on `repo` with `store`, under a given umask, TZ and locale.
pub(crate) fn kiln_under(
    repo: &Path,
    store: &Path,
    umask: &str,
    tz: &str,
    locale: &str,
    args: &[&str],
) -> Output {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(format!("umask {umask} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_kiln"))
        .args(["--color", "never", "--store"])
        .arg(store)
        .args(args)
        .current_dir(repo)
        .env("TZ", tz)
        .env("LANG", locale)
        .env("LC_ALL", locale);
    command.output().expect("run kiln")
}

/// `output`, after asserting it exited 0 (showing both streams if not).
pub(crate) fn ok(output: Output, what: &str) -> Output {
    assert_eq!(
        output.status.code(),
        Some(0),
        "{what}\nstdout:\n{}\nstderr:\n{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    output
}

/// The privileges of the `KilnDeploy` role, read from the `pveum role add`
/// line of docs/src/proxmox-token.md (so the docs are what is tested).
pub(crate) fn documented_role() -> Vec<String> {
    let docs = std::fs::read_to_string(root().join("docs/src/proxmox-token.md")).unwrap();
    let line = docs
        .lines()
        .find(|l| l.starts_with("pveum role add KilnDeploy"))
        .expect("the role line");
    let privs = line.split('"').nth(1).expect("quoted privileges");
    privs
        .split([' ', ','])
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The ACL paths docs/src/proxmox-token.md grants the role on.
pub(crate) const ROLE_ACL_PATHS: &[&str] = &["/vms", "/storage", "/sdn/zones/localnetwork/vmbr0"];

/// A simulator whose only token holds exactly `privileges` on the
/// documented paths.
pub(crate) fn limited(privileges: &[String]) -> kiln::proxmox::sim::SimConfig {
    use kiln::proxmox::sim::{SimConfig, TokenConfig};
    let map = ROLE_ACL_PATHS
        .iter()
        .map(|p| ((*p).to_owned(), privileges.to_vec()))
        .collect();
    SimConfig {
        tokens: vec![TokenConfig {
            id: "kiln@pve!deploy".into(),
            secret: "5e1f0c2a-0000-4000-8000-000000000001".into(),
            privileges: Some(map),
        }],
        ..SimConfig::default()
    }
}

/// A minimal Debian-like root filesystem as `DIR/mini.tar.gz` (an LXC
/// image base for tests that build hosts without the Debian mirror).
pub(crate) fn rootfs_tarball(dir: &Path) -> PathBuf {
    let tree = dir.join("tree");
    for sub in ["sbin", "bin", "usr/lib", "etc", "tmp", "root", "dev", "var"] {
        std::fs::create_dir_all(tree.join(sub)).unwrap();
    }
    for (path, contents) in [
        ("usr/lib/os-release", "ID=debian\nVERSION_ID=\"12\"\n"),
        ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
        ("etc/group", "root:x:0:\n"),
        ("etc/shadow", "root:*:::::::\n"),
        ("etc/gshadow", "root:*::\n"),
    ] {
        std::fs::write(tree.join(path), contents).unwrap();
    }
    std::os::unix::fs::symlink("../usr/lib/os-release", tree.join("etc/os-release")).unwrap();
    let out = dir.join("mini.tar.gz");
    let status = Command::new("tar")
        .arg("-czf")
        .arg(&out)
        .arg("-C")
        .arg(&tree)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    out
}
