//! End to end: the example fleet's `monitoring` host as a Proxmox LXC
//! template, built from Debian packages (fetched through the real mirror,
//! bootstrapped by mmdebstrap), twice into two stores under different umask,
//! TZ and locale — identical bytes — then `kiln build --check`, and the
//! template booted under Debian's `lxc`.
//!
//! Needs root, mmdebstrap and lxc (scripts/setup.sh installs them) and
//! `deb.debian.org`. If the mirror cannot be reached, or the machine
//! cannot run the tools, the test prints a `NOTICE:` saying why and passes;
//! any other failure fails it. It is slow (minutes): one test, so CI runs
//! it once.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{copy_tree, have, kiln_under as kiln, mirror_reachable, notice, ok, root, text};

fn sha256(path: &Path) -> String {
    use sha2::Digest;
    let bytes = std::fs::read(path).unwrap();
    kiln::plan::derivation::hex(&sha2::Sha256::digest(bytes))
}

/// The one `.tar.zst` in a template output directory.
fn template_in(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".tar.zst"))
        .expect("a .tar.zst in the output")
}

/// `tar -tv` lines of the template (GNU tar, numeric owners).
fn listing(template: &Path) -> String {
    let output = Command::new("tar")
        .args(["--zstd", "--numeric-owner", "-tvf"])
        .arg(template)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    text(&output.stdout)
}

#[test]
fn monitoring_template_is_reproducible_checks_and_boots() {
    if !rustix::process::geteuid().is_root() {
        notice("NOTICE: skipping the LXC template test: building templates needs root");
        return;
    }
    if !have("mmdebstrap") {
        notice(
            "NOTICE: skipping the LXC template test: mmdebstrap is not installed (scripts/setup.sh installs it)",
        );
        return;
    }
    if !mirror_reachable() {
        notice("NOTICE: skipping the LXC template test: deb.debian.org is unreachable");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    for part in ["hosts", "images", "modules", "stacks"] {
        copy_tree(&root().join(part), &repo.join(part));
    }
    std::fs::copy(root().join("lockfile.toml"), repo.join("lockfile.toml")).unwrap();
    let (store_a, store_b) = (dir.path().join("store-a"), dir.path().join("store-b"));

    let started = Instant::now();
    ok(
        kiln(
            &repo,
            &store_a,
            "022",
            "UTC",
            "C.UTF-8",
            &["build", "monitoring", "-o", "a"],
        ),
        "first build",
    );
    let first = started.elapsed();
    ok(
        kiln(
            &repo,
            &store_b,
            "077",
            "Pacific/Chatham",
            "de_DE.UTF-8",
            &["build", "monitoring", "-o", "b"],
        ),
        "second build (other store, umask, TZ, locale)",
    );
    notice(&format!(
        "monitoring template: first build {first:.0?}, both {:.0?}",
        started.elapsed()
    ));
    let (out_a, out_b) = (repo.join("a"), repo.join("b"));
    let (template_a, template_b) = (template_in(&out_a), template_in(&out_b));
    assert_eq!(
        template_a.file_name().unwrap(),
        "monitoring_12.8_amd64.tar.zst"
    );
    assert_eq!(sha256(&template_a), sha256(&template_b), "templates differ");
    for file in ["manifest.json", "sbom.spdx.json"] {
        assert_eq!(
            std::fs::read(out_a.join(file)).unwrap(),
            std::fs::read(out_b.join(file)).unwrap(),
            "{file} differs"
        );
    }

    // Clean of identity.
    let list = listing(&template_a);
    assert!(!list.contains("ssh_host_"), "SSH host keys in the template");
    let machine_id = list
        .lines()
        .find(|l| l.ends_with(" ./etc/machine-id"))
        .expect("/etc/machine-id present");
    assert!(
        machine_id.split_whitespace().nth(2) == Some("0"),
        "machine-id not empty: {machine_id}"
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_a.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["template"]["sha256"], sha256(&template_a));
    let removed: Vec<&str> = manifest["hygiene"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["path"].as_str().unwrap())
        .collect();
    assert!(
        removed.iter().any(|p| p.starts_with("/etc/ssh/ssh_host_")),
        "{removed:?}"
    );
    let packages: Vec<&str> = manifest["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(packages.contains(&"prometheus"), "{packages:?}");
    let sbom: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_a.join("sbom.spdx.json")).unwrap()).unwrap();
    assert_eq!(sbom["spdxVersion"], "SPDX-2.3");
    assert_eq!(
        sbom["packages"].as_array().unwrap().len(),
        packages.len() + 1
    );

    // Rebuilt and compared byte for byte.
    let check = ok(
        kiln(
            &repo,
            &store_a,
            "022",
            "UTC",
            "C.UTF-8",
            &["build", "monitoring", "--check"],
        ),
        "kiln build --check monitoring",
    );
    assert!(
        text(&check.stderr).contains("identical to the first build"),
        "{}",
        text(&check.stderr)
    );

    boot(&template_a);
}

/// Boot the template under LXC and look inside.
fn boot(template: &Path) {
    if !have("lxc-start") {
        notice(
            "NOTICE: skipping the LXC boot: lxc is not installed (scripts/setup.sh installs it)",
        );
        return;
    }
    let name = format!("kiln-test-{}", std::process::id());
    let lxc_path = tempfile::tempdir().unwrap();
    let container = lxc_path.path().join(&name);
    let rootfs = container.join("rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    let unpacked = Command::new("tar")
        .args([
            "--zstd",
            "--numeric-owner",
            "--xattrs",
            "--xattrs-include=*",
            "-xpf",
        ])
        .arg(template)
        .arg("-C")
        .arg(&rootfs)
        .output()
        .unwrap();
    assert!(unpacked.status.success(), "{}", text(&unpacked.stderr));
    std::fs::write(
        container.join("config"),
        format!(
            "lxc.include = /usr/share/lxc/config/common.conf\n\
             lxc.arch = x86_64\n\
             lxc.uts.name = monitoring\n\
             lxc.rootfs.path = dir:{}\n\
             lxc.net.0.type = empty\n\
             lxc.apparmor.profile = unconfined\n",
            rootfs.display()
        ),
    )
    .unwrap();
    let lxc = |args: &[&str]| {
        Command::new(args[0])
            .args(["-P"])
            .arg(lxc_path.path())
            .args(["-n", &name])
            .args(&args[1..])
            .output()
            .unwrap()
    };
    let start = lxc(&["lxc-start", "-d"]);
    if !start.status.success() {
        let stderr = text(&start.stderr);
        // A machine where containers cannot run at all (no cgroups, nested
        // without privileges) says so; that is not kiln's failure.
        if stderr.contains("cgroup") || stderr.contains("Operation not permitted") {
            notice(&format!(
                "NOTICE: skipping the LXC boot: lxc-start cannot run here: {stderr}"
            ));
            return;
        }
        panic!("lxc-start failed: {stderr}");
    }
    let attach =
        |command: &str| lxc(&["lxc-attach", "--clear-env", "--", "/bin/sh", "-c", command]);
    // systemd reaches running, or degraded with the failed units named.
    let deadline = Instant::now() + Duration::from_secs(180);
    let state = loop {
        let output = attach("systemctl is-system-running --wait");
        let state = text(&output.stdout).trim().to_owned();
        if state == "running" || state == "degraded" || Instant::now() > deadline {
            break state;
        }
        std::thread::sleep(Duration::from_secs(2));
    };
    let failed = text(&attach("systemctl --failed --no-legend --plain").stdout);
    let checks = [
        ("id ops", "uid=1000(ops)"),
        ("getent group sudo", "ops"),
        ("cat /etc/hostname", "monitoring"),
        ("systemctl is-enabled prometheus.service", "enabled"),
        ("systemctl is-enabled kiln-backup.timer", "enabled"),
        (
            "cat /etc/prometheus/file_sd/nodes.yml",
            "monitoring.home.arpa:9100",
        ),
        ("test -s /etc/ssh/ssh_host_ed25519_key && echo keys", "keys"),
        ("test -s /etc/machine-id && echo id", "id"),
        ("cat /home/ops/.ssh/authorized_keys", "ops@homelab"),
    ];
    let mut results = Vec::new();
    for (command, expected) in checks {
        let output = attach(command);
        results.push((command, expected, text(&output.stdout)));
    }
    let _ = lxc(&["lxc-stop", "-k"]);
    notice(&format!(
        "LXC boot: systemd {state}; failed units: {failed:?}"
    ));
    assert!(
        state == "running" || state == "degraded",
        "systemd did not come up: `{state}`; failed units:\n{failed}"
    );
    for (command, expected, stdout) in results {
        assert!(
            stdout.contains(expected),
            "`{command}` printed {stdout:?}, expected {expected:?}"
        );
    }
}

/// A small rootfs tarball (made with GNU tar), its `file://` URL.
fn rootfs_tarball(dir: &Path, name: &str) -> String {
    let tree = dir.join(format!("{name}-tree"));
    for sub in [
        "sbin", "bin", "usr/lib", "var/log", "tmp", "root", "etc/ssh", "dev",
    ] {
        std::fs::create_dir_all(tree.join(sub)).unwrap();
    }
    let files = [
        ("usr/lib/os-release", "ID=mini\nNAME=\"A tiny rootfs\"\n"),
        ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
        ("etc/group", "root:x:0:\n"),
        ("etc/shadow", "root:*:::::::\n"),
        ("etc/gshadow", "root:*::\n"),
        ("etc/machine-id", "0123456789abcdef0123456789abcdef\n"),
        (
            "etc/ssh/ssh_host_ed25519_key",
            "a key every clone would share\n",
        ),
        ("var/log/build.log", "built somewhere\n"),
    ];
    for (path, text) in files {
        std::fs::write(tree.join(path), text).unwrap();
    }
    std::os::unix::fs::symlink("../usr/lib/os-release", tree.join("etc/os-release")).unwrap();
    let served = dir.join(format!("{name}.tar.gz"));
    let status = Command::new("tar")
        .arg("-czf")
        .arg(&served)
        .arg("-C")
        .arg(&tree)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    format!("file://{}", served.display())
}

fn tarball_repo(dir: &Path, url: &str) -> PathBuf {
    let repo = dir.join("repo");
    std::fs::create_dir_all(repo.join("images")).unwrap();
    std::fs::write(
        repo.join("images/mini.toml"),
        format!(
            "[image]\nformats = [\"lxc\"]\nversion = \"1.0\"\n\n[image.base.url]\nurl = \"{url}\"\n\n[config]\nhostname = \"mini\"\n"
        ),
    )
    .unwrap();
    repo
}

#[test]
fn tarball_base_template_is_reproducible_and_clean() {
    if !rustix::process::geteuid().is_root() {
        notice("NOTICE: skipping the tarball template test: building templates needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let url = rootfs_tarball(dir.path(), "mini");
    let repo = tarball_repo(dir.path(), &url);
    let (store_a, store_b) = (dir.path().join("store-a"), dir.path().join("store-b"));
    ok(
        kiln(&repo, &store_a, "022", "UTC", "C.UTF-8", &["lock"]),
        "lock",
    );
    ok(
        kiln(
            &repo,
            &store_a,
            "022",
            "UTC",
            "C.UTF-8",
            &["build", "image:mini", "-o", "a"],
        ),
        "first build",
    );
    ok(
        kiln(
            &repo,
            &store_b,
            "077",
            "Asia/Kolkata",
            "C",
            &["build", "image:mini", "-o", "b"],
        ),
        "second build",
    );
    let (a, b) = (template_in(&repo.join("a")), template_in(&repo.join("b")));
    assert_eq!(a.file_name().unwrap(), "mini_1.0_amd64.tar.zst");
    assert_eq!(sha256(&a), sha256(&b));
    let list = listing(&a);
    assert!(!list.contains("ssh_host_"), "{list}");
    assert!(!list.contains("build.log"), "{list}");
    assert!(list.contains(" ./sbin/\n"), "{list}");
    assert!(list.contains(" ./etc/hostname\n"), "{list}");
    let machine_id = list
        .lines()
        .find(|l| l.ends_with(" ./etc/machine-id"))
        .unwrap();
    assert_eq!(
        machine_id.split_whitespace().nth(2),
        Some("0"),
        "{machine_id}"
    );

    // An image extending it is built on its template.
    std::fs::write(
        repo.join("images/child.toml"),
        "[image]\nformats = [\"lxc\"]\nversion = \"2.0\"\n\n[image.base]\nimage = \"mini\"\n\n[config.files.\"/etc/child\"]\ntext = \"from the child\\n\"\n",
    )
    .unwrap();
    ok(
        kiln(
            &repo,
            &store_a,
            "022",
            "UTC",
            "C.UTF-8",
            &["build", "image:child", "-o", "c"],
        ),
        "child image",
    );
    let child = template_in(&repo.join("c"));
    assert_eq!(child.file_name().unwrap(), "child_2.0_amd64.tar.zst");
    let list = listing(&child);
    assert!(
        list.contains(" ./etc/child\n") && list.contains(" ./sbin/\n"),
        "{list}"
    );
}

#[test]
fn tarball_that_escapes_its_root_is_refused() {
    if !rustix::process::geteuid().is_root() {
        notice("NOTICE: skipping the tarball escape test: building templates needs root");
        return;
    }
    // (entry kind, path, link target) lists, crafted with Python's tarfile.
    let cases: [(&str, &str); 3] = [
        ("dotdot", "add('../evil', 'file')"),
        (
            "through-symlink",
            "add('link', 'symlink', '/tmp'); add('link/evil', 'file')",
        ),
        ("hardlink", "add('hard', 'hardlink', '../../etc/passwd')"),
    ];
    for (name, entries) in cases {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join(format!("{name}.tar"));
        let script = format!(
            r#"
import io, tarfile
t = tarfile.open({archive:?}, 'w', format=tarfile.PAX_FORMAT)
def add(path, kind, target=''):
    info = tarfile.TarInfo(path)
    if kind == 'file':
        data = b'owned\n'
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
        return
    info.type = tarfile.SYMTYPE if kind == 'symlink' else tarfile.LNKTYPE
    info.linkname = target
    t.addfile(info)
for d in ['sbin', 'etc', 'usr', 'var', 'tmp', 'root', 'bin', 'dev', 'run', 'srv']:
    info = tarfile.TarInfo(d); info.type = tarfile.DIRTYPE; info.mode = 0o755; t.addfile(info)
{entries}
t.close()
"#,
            archive = archive.to_str().unwrap(),
            entries = entries.replace("; ", "\n")
        );
        let made = Command::new("python3")
            .arg("-c")
            .arg(&script)
            .output()
            .unwrap();
        assert!(made.status.success(), "{}", text(&made.stderr));
        let repo = tarball_repo(dir.path(), &format!("file://{}", archive.display()));
        let store = dir.path().join("store");
        ok(
            kiln(&repo, &store, "022", "UTC", "C.UTF-8", &["lock"]),
            "lock",
        );
        let failed = kiln(
            &repo,
            &store,
            "022",
            "UTC",
            "C.UTF-8",
            &["build", "image:mini"],
        );
        let stderr = text(&failed.stderr);
        assert_eq!(failed.status.code(), Some(1), "{name}: {stderr}");
        assert!(
            stderr.contains("base rootfs") && stderr.contains(&format!("{name}.tar")),
            "{name}: the error names the archive: {stderr}"
        );
        assert!(!Path::new("/evil").exists() && !Path::new("/tmp/evil").exists());
        assert!(!repo.join("result").exists(), "{name}");
        notice(&format!(
            "{name}: {}",
            stderr
                .lines()
                .find(|l| l.contains("base rootfs"))
                .unwrap_or("")
        ));
    }
}
