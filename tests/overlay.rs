//! The overlay builder: golden output for the example fleet, byte-for-byte
//! determinism, the rules for users, groups, sudo and systemd, that secrets
//! never reach the output, and the errors for escaping or colliding paths.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use kiln::builders::overlay::{OverlayError, OverlayInput, OverlaySummary, render};
use kiln::config::{DocKind, Repo};
use kiln::eval::Evaluator;
use kiln::eval::spec::SystemConfig;
use proptest::prelude::*;
use sha2::{Digest as _, Sha256};

const EPOCH: i64 = 1_700_000_000;

// ── inputs ─────────────────────────────────────────────────────────────────

/// A host of the example fleet, and its `files.*.source` mapped to the
/// repo's files (the scheduler maps them to store paths).
fn fleet_host(name: &str) -> (SystemConfig, BTreeMap<String, PathBuf>) {
    let root = common::root();
    let evaluator = kiln::ops::open(Some(&root), &root).expect("open the example fleet");
    let id = evaluator
        .repo
        .find(DocKind::Host, name)
        .expect("host exists");
    let spec = evaluator.host(id).expect("example host evaluates");
    let sources = spec
        .config
        .files
        .values()
        .filter_map(|file| file.source.clone())
        .map(|source| (source.clone(), root.join(&source)))
        .collect();
    (spec.config, sources)
}

/// Evaluate a one-host repo whose host file ends with `config` (TOML).
fn host(config: &str) -> SystemConfig {
    let image = "[image]\nformats = [\"lxc\"]\nbase.debian = { suite = \"bookworm\" }\n";
    let host =
        format!("[host]\nkind = \"lxc\"\nimage = \"base\"\nnode = \"pve\"\nvmid = 100\n\n{config}");
    let files = vec![
        ("images/base.toml".to_owned(), image.as_bytes().to_vec()),
        ("hosts/h.toml".to_owned(), host.into_bytes()),
    ];
    let evaluator = Evaluator::new(Repo::from_files(PathBuf::from("/repo"), files));
    let id = evaluator.repo.find(DocKind::Host, "h").expect("host h");
    let rendered = |diagnostics: &[kiln::config::diagnostic::Diagnostic]| -> String {
        diagnostics
            .iter()
            .map(|d| kiln::config::diagnostic::render(d, &evaluator.repo.sources, false))
            .collect()
    };
    assert!(
        evaluator.diagnostics.is_empty(),
        "{}",
        rendered(&evaluator.diagnostics)
    );
    match evaluator.host(id) {
        Ok(spec) => spec.config,
        Err(diagnostics) => panic!("{}", rendered(&diagnostics)),
    }
}

fn no_sources() -> BTreeMap<String, PathBuf> {
    BTreeMap::new()
}

fn try_render(
    config: &SystemConfig,
    sources: &BTreeMap<String, PathBuf>,
    out: &Path,
) -> Result<OverlaySummary, OverlayError> {
    let input = OverlayInput {
        host: "h",
        config,
        sources,
        epoch: EPOCH,
    };
    render(&input, out)
}

/// Render into a fresh temporary directory; the guard keeps it alive.
fn rendered(config: &SystemConfig) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    try_render(config, &no_sources(), &out).expect("render");
    (dir, out)
}

/// The error for `config`, after checking that nothing was left behind.
fn render_error(config: &SystemConfig) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let error = try_render(config, &no_sources(), &out).expect_err("render should fail");
    assert!(!out.exists(), "a failed render leaves no output");
    error.to_string()
}

// ── reading the output ─────────────────────────────────────────────────────

fn read(out: &Path, rel: &str) -> String {
    fs::read_to_string(out.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn manifest(out: &Path) -> serde_json::Value {
    serde_json::from_str(&read(out, "manifest.json")).unwrap()
}

fn mode(out: &Path, rel: &str) -> u32 {
    fs::symlink_metadata(out.join(rel)).unwrap().mode() & 0o7777
}

fn link(out: &Path, rel: &str) -> String {
    let target = fs::read_link(out.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    target.to_string_lossy().into_owned()
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Every path under `out` (itself as `.`), in sorted order: kind, mode,
/// mtime, and the content hash or link target.
fn listing(out: &Path) -> String {
    let mut lines = Vec::new();
    walk(out, ".", &mut lines);
    lines.join("\n") + "\n"
}

fn walk(path: &Path, rel: &str, lines: &mut Vec<String>) {
    let meta = fs::symlink_metadata(path).unwrap();
    let head = |kind: &str| format!("{rel} {kind} {:04o} {}", meta.mode() & 0o7777, meta.mtime());
    if meta.file_type().is_symlink() {
        let target = fs::read_link(path).unwrap();
        lines.push(format!("{} -> {}", head("symlink"), target.display()));
    } else if meta.is_file() {
        let hash = sha256(&fs::read(path).unwrap());
        lines.push(format!("{} {} {hash}", head("file"), meta.len()));
    } else {
        lines.push(head("dir"));
        let mut names: Vec<_> = fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        for name in names {
            let child = if rel == "." {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            walk(&path.join(&name), &child, lines);
        }
    }
}

/// The listing, then every fragment and the manifest in full.
fn everything(out: &Path) -> String {
    let mut text = listing(out);
    for name in ["passwd", "group", "shadow", "manifest.json"] {
        text.push_str(&format!("\n── {name}\n{}", read(out, name)));
    }
    text
}

/// Every byte of the output under `out`, with file names (relative to
/// `out`, so the temporary directory's random name cannot match) and link
/// targets.
fn all_bytes(out: &Path, path: &Path, bytes: &mut Vec<u8>) {
    let rel = path.strip_prefix(out).unwrap();
    bytes.extend(rel.as_os_str().as_encoded_bytes());
    let meta = fs::symlink_metadata(path).unwrap();
    if meta.file_type().is_symlink() {
        bytes.extend(fs::read_link(path).unwrap().as_os_str().as_encoded_bytes());
    } else if meta.is_file() {
        bytes.extend(fs::read(path).unwrap());
    } else {
        for entry in fs::read_dir(path).unwrap() {
            all_bytes(out, &entry.unwrap().path(), bytes);
        }
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

// ── the example fleet ──────────────────────────────────────────────────────

fn golden(name: &str) {
    let (config, sources) = fleet_host(name);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let input = OverlayInput {
        host: name,
        config: &config,
        sources: &sources,
        epoch: EPOCH,
    };
    let summary = render(&input, &out).unwrap();
    let text = everything(&out);
    // The summary counts what is under root/.
    let count = |kind: &str| {
        listing(&out)
            .lines()
            .filter(|l| l.starts_with("root/") && l.split(' ').nth(1) == Some(kind))
            .count()
    };
    assert_eq!(summary.files, count("file"));
    assert_eq!(summary.directories, count("dir"));
    assert_eq!(summary.symlinks, count("symlink"));
    insta::assert_snapshot!(name, text);
}

#[test]
fn golden_overlay_of_monitoring() {
    golden("monitoring");
}

#[test]
fn golden_overlay_of_db() {
    golden("db");
}

#[test]
fn sources_are_copied_byte_for_byte() {
    let (config, sources) = fleet_host("db");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let input = OverlayInput {
        host: "db",
        config: &config,
        sources: &sources,
        epoch: EPOCH,
    };
    render(&input, &out).unwrap();
    let original = fs::read(common::root().join("modules/files/kiln-backup.sh")).unwrap();
    assert_eq!(
        fs::read(out.join("root/usr/local/sbin/kiln-backup")).unwrap(),
        original
    );
    assert_eq!(mode(&out, "root/usr/local/sbin/kiln-backup"), 0o755);
    let record = &manifest(&out)["paths"]["/usr/local/sbin/kiln-backup"];
    assert_eq!(record["sha256"], sha256(&original));
    assert_eq!(record["size"], original.len());
}

#[test]
fn the_manifest_is_canonical_json() {
    let (config, sources) = fleet_host("monitoring");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let input = OverlayInput {
        host: "monitoring",
        config: &config,
        sources: &sources,
        epoch: EPOCH,
    };
    render(&input, &out).unwrap();
    let text = read(&out, "manifest.json");
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    // Re-serialising with sorted maps gives the same bytes: keys are sorted.
    let sorted: BTreeMap<String, serde_json::Value> =
        serde_json::from_value(value.clone()).unwrap();
    assert_eq!(serde_json::to_string_pretty(&sorted).unwrap() + "\n", text);
    assert_eq!(value["version"], 1);
    assert_eq!(value["host"], "monitoring");
    assert_eq!(value["epoch"], EPOCH);
}

// ── determinism ────────────────────────────────────────────────────────────

/// Render `monitoring` with `umask` set for the duration of the call.
fn render_under_umask(umask: u32, out: &Path) {
    let (config, sources) = fleet_host("monitoring");
    let input = OverlayInput {
        host: "monitoring",
        config: &config,
        sources: &sources,
        epoch: EPOCH,
    };
    let mask = rustix::fs::Mode::from_raw_mode(umask);
    let previous = rustix::process::umask(mask);
    let result = render(&input, out);
    rustix::process::umask(previous);
    result.unwrap();
}

#[test]
fn identical_under_any_umask_and_in_any_directory() {
    let first = tempfile::tempdir().unwrap();
    let second = tempfile::tempdir().unwrap();
    let a = first.path().join("out");
    let b = second.path().join("deeper/and/named/differently");
    fs::create_dir_all(b.parent().unwrap()).unwrap();
    render_under_umask(0o000, &a);
    render_under_umask(0o077, &b);
    assert_eq!(everything(&a), everything(&b));
    // And the modes are the spec's, not the umask's.
    assert_eq!(mode(&a, "root/etc/motd"), 0o644);
    assert_eq!(mode(&b, "root/etc/motd"), 0o644);
    assert_eq!(mode(&b, "root/etc/ssh/sshd_config.d/50-kiln.conf"), 0o600);
    assert_eq!(mode(&a, "root/etc/ssh"), 0o755);
    assert_eq!(mode(&b, "root/etc/ssh"), 0o755);
    assert_eq!(mode(&b, "."), 0o755);
}

#[test]
fn every_mtime_and_atime_is_the_epoch() {
    let (_dir, out) = rendered(&host("[config]\ntimezone = \"Europe/Berlin\"\n"));
    // Atimes first: reading a file for its hash below may update its atime.
    for rel in [
        ".",
        "root",
        "root/etc",
        "root/etc/timezone",
        "root/etc/localtime",
    ] {
        // Symlinks themselves, not their targets.
        let meta = fs::symlink_metadata(out.join(rel)).unwrap();
        assert_eq!((meta.mtime(), meta.atime()), (EPOCH, EPOCH), "{rel}");
    }
    for line in listing(&out).lines() {
        assert_eq!(line.split(' ').nth(3), Some("1700000000"), "{line}");
    }
}

#[test]
fn another_epoch_changes_only_times_and_the_manifest() {
    let config = host("");
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    try_render(&config, &no_sources(), &a).unwrap();
    let input = OverlayInput {
        host: "h",
        config: &config,
        sources: &no_sources(),
        epoch: 0,
    };
    render(&input, &b).unwrap();
    let meta = fs::symlink_metadata(b.join("root/etc/hostname")).unwrap();
    assert_eq!(meta.mtime(), 0);
    assert_eq!(read(&a, "root/etc/hostname"), read(&b, "root/etc/hostname"));
    assert_eq!(manifest(&b)["epoch"], 0);
}

/// A host whose lists have no meaningful order.
const UNORDERED: &str = r#"
[config]
systemd.enable = ["ssh.service", "cron.service", "zz.timer", "a.socket"]
systemd.disable = ["apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_reap.service"]
systemd.mask = ["systemd-timesyncd.service", "getty@tty1.service", "b.mount"]
groups.media = { members = ["zed", "amy", "bob"] }
groups.ops = { system = true, members = ["carl", "amy"] }
users.amy = { groups = ["media", "sudo", "docker", "ops"] }
users.bob = { groups = ["docker", "media"], system = true }
users.carl = { groups = ["ops", "adm", "sudo"] }
"#;

fn shuffled(list: &mut [String], seed: u64) {
    let mut state = seed | 1;
    for i in (1..list.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        list.swap(i, (state % (i as u64 + 1)) as usize);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn list_order_in_the_spec_does_not_matter(seed in any::<u64>()) {
        let config = host(UNORDERED);
        let mut other = config.clone();
        shuffled(&mut other.systemd.enable, seed);
        shuffled(&mut other.systemd.disable, seed.rotate_left(8));
        shuffled(&mut other.systemd.mask, seed.rotate_left(16));
        for (n, user) in other.users.values_mut().enumerate() {
            shuffled(&mut user.groups, seed.rotate_left(24 + n as u32));
        }
        for (n, group) in other.groups.values_mut().enumerate() {
            shuffled(&mut group.members, seed.rotate_left(40 + n as u32));
        }
        let (_a, a) = rendered(&config);
        let (_b, b) = rendered(&other);
        prop_assert_eq!(everything(&a), everything(&b));
    }
}

// ── users and groups ───────────────────────────────────────────────────────

const ACCOUNTS: &str = r#"
[config]
groups.media = { gid = 1002 }
groups.shared = { members = ["alice"] }
groups.sysgrp = { system = true }
users.alice = {}
users.bob = { uid = 1000 }
users.carol = {}
users.daemon1 = { uid = 999, system = true }
users.dave = { group = "media", groups = ["shared", "sudo", "docker"], comment = "Dave D" }
users.sysa = { system = true, home = "/var/lib/sysa", shell = "/usr/sbin/nologin" }
users.sysb = { system = true }
"#;

#[test]
fn uids_are_allocated_in_name_order_around_explicit_ones() {
    let (_dir, out) = rendered(&host(ACCOUNTS));
    assert_eq!(
        read(&out, "passwd"),
        "alice:x:1001:1001::/home/alice:/bin/bash\n\
         bob:x:1000:1000::/home/bob:/bin/bash\n\
         carol:x:1002:1003::/home/carol:/bin/bash\n\
         daemon1:x:999:999::/home/daemon1:/bin/bash\n\
         dave:x:1003:1002:Dave D:/home/dave:/bin/bash\n\
         sysa:x:998:998::/var/lib/sysa:/usr/sbin/nologin\n\
         sysb:x:997:997::/home/sysb:/bin/bash\n"
    );
    let users = &manifest(&out)["users"];
    assert_eq!(users["bob"]["uid_allocated"], false);
    assert_eq!(users["alice"]["uid_allocated"], true);
    assert_eq!(users["daemon1"]["uid_allocated"], false);
    assert_eq!(users["sysa"]["uid_allocated"], true);
}

#[test]
fn own_groups_take_the_uid_when_free_and_other_groups_are_allocated() {
    let (_dir, out) = rendered(&host(ACCOUNTS));
    // carol's uid 1002 is media's explicit gid, so carol's group is
    // allocated (1003), after the claims and before `shared` (sorted).
    assert_eq!(
        read(&out, "group"),
        "alice:x:1001:\n\
         bob:x:1000:\n\
         carol:x:1003:\n\
         daemon1:x:999:\n\
         media:x:1002:\n\
         shared:x:1004:alice,dave\n\
         sysa:x:998:\n\
         sysb:x:997:\n\
         sysgrp:x:996:\n"
    );
    let manifest = manifest(&out);
    assert_eq!(manifest["groups"]["carol"]["user"], "carol");
    assert_eq!(manifest["groups"]["media"]["gid_allocated"], false);
    assert_eq!(manifest["groups"]["shared"]["gid_allocated"], true);
    assert_eq!(manifest["users"]["dave"]["group"], "media");
    assert_eq!(manifest["users"]["dave"]["gid"], 1002);
}

#[test]
fn base_system_groups_get_members_in_the_manifest_not_gids() {
    let (_dir, out) = rendered(&host(ACCOUNTS));
    let manifest = manifest(&out);
    assert_eq!(
        manifest["base_group_members"],
        serde_json::json!({ "docker": ["dave"], "sudo": ["dave"] })
    );
    let group = read(&out, "group");
    assert!(
        !group.contains("sudo") && !group.contains("docker"),
        "{group}"
    );
}

#[test]
fn summary_counts_accounts() {
    let dir = tempfile::tempdir().unwrap();
    let summary = try_render(&host(ACCOUNTS), &no_sources(), &dir.path().join("o")).unwrap();
    assert_eq!((summary.users, summary.groups), (7, 9));
}

#[test]
fn a_declared_group_named_after_a_user_is_its_primary_group() {
    let (_dir, out) = rendered(&host(
        "[config]\ngroups.ops = { gid = 2000 }\nusers.ops = { uid = 1000 }\n",
    ));
    assert_eq!(
        read(&out, "passwd"),
        "ops:x:1000:2000::/home/ops:/bin/bash\n"
    );
    assert_eq!(read(&out, "group"), "ops:x:2000:\n");
}

#[test]
fn root_is_uid_0_with_its_keys_in_slash_root() {
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample admin@laptop";
    let (_dir, out) = rendered(&host(&format!(
        "[config]\nusers.root = {{ ssh_authorized_keys = [\"{key}\"] }}\n"
    )));
    assert_eq!(read(&out, "passwd"), "root:x:0:0::/root:/bin/bash\n");
    assert_eq!(read(&out, "group"), "root:x:0:\n");
    assert_eq!(
        read(&out, "root/root/.ssh/authorized_keys"),
        format!("{key}\n")
    );
    assert_eq!(mode(&out, "root/root"), 0o700);
}

#[test]
fn authorized_keys_are_private_and_owned_by_the_user() {
    let a = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExampleA a@laptop";
    let b = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABExampleB b@desk";
    let (_dir, out) = rendered(&host(&format!(
        "[config]\nusers.ops = {{ group = \"staff\", ssh_authorized_keys = [\"{a}\", \"{b}\", \"{a}\"] }}\ngroups.staff = {{ gid = 50 }}\n"
    )));
    // One key a line, in the spec's order, each once, with a final newline.
    assert_eq!(
        read(&out, "root/home/ops/.ssh/authorized_keys"),
        format!("{a}\n{b}\n")
    );
    assert_eq!(mode(&out, "root/home/ops/.ssh/authorized_keys"), 0o600);
    assert_eq!(mode(&out, "root/home/ops/.ssh"), 0o700);
    assert_eq!(mode(&out, "root/home/ops"), 0o700);
    assert_eq!(mode(&out, "root/home"), 0o755);
    let paths = &manifest(&out)["paths"];
    for path in [
        "/home/ops",
        "/home/ops/.ssh",
        "/home/ops/.ssh/authorized_keys",
    ] {
        assert_eq!(paths[path]["owner"], "ops", "{path}");
        assert_eq!(paths[path]["group"], "staff", "{path}");
    }
    assert_eq!(paths["/home"]["owner"], "root");
    assert_eq!(paths["/home"]["implicit"], true);
}

#[test]
fn explicit_ids_shared_by_two_accounts_are_an_error() {
    let error = render_error(&host(
        "[config]\nusers.a = { uid = 1500 }\nusers.b = { uid = 1500 }\n",
    ));
    assert_eq!(error, "users.b.uid and users.a.uid both use uid 1500");
    let error = render_error(&host(
        "[config]\ngroups.x = { gid = 7000 }\ngroups.y = { gid = 7000 }\n",
    ));
    assert_eq!(error, "groups.y.gid and groups.x.gid both use gid 7000");
}

#[test]
fn a_primary_group_from_the_base_image_must_be_declared() {
    let error = render_error(&host("[config]\nusers.ops = { group = \"users\" }\n"));
    assert!(
        error.starts_with("users.ops.group: `users` is neither in `groups`"),
        "{error}"
    );
    assert!(error.contains("groups.users.gid"), "{error}");
}

// ── sudo ───────────────────────────────────────────────────────────────────

#[test]
fn sudo_rules_go_to_sudoers_d() {
    let (_dir, out) = rendered(&host(
        r#"[config]
users.alice = { sudo = "password" }
users.bob = { sudo = "nopasswd" }
users.carol = {}
users."first.last" = { sudo = "password" }
"#,
    ));
    assert_eq!(
        read(&out, "root/etc/sudoers.d/kiln-alice"),
        "alice ALL=(ALL:ALL) ALL\n"
    );
    assert_eq!(
        read(&out, "root/etc/sudoers.d/kiln-bob"),
        "bob ALL=(ALL:ALL) NOPASSWD: ALL\n"
    );
    // sudo skips file names with a dot.
    assert_eq!(
        read(&out, "root/etc/sudoers.d/kiln-first_last"),
        "first.last ALL=(ALL:ALL) ALL\n"
    );
    assert!(!out.join("root/etc/sudoers.d/kiln-carol").exists());
    assert_eq!(mode(&out, "root/etc/sudoers.d/kiln-bob"), 0o440);
    let record = &manifest(&out)["paths"]["/etc/sudoers.d/kiln-bob"];
    assert_eq!(record["mode"], "0440");
    assert_eq!(record["owner"], "root");
    assert_eq!(record["option"], "users.bob.sudo");
}

// ── systemd ────────────────────────────────────────────────────────────────

#[test]
fn masked_units_link_to_dev_null() {
    let (_dir, out) = rendered(&host(
        "[config]\nsystemd.mask = [\"systemd-timesyncd.service\", \"apt-daily.timer\", \"apt-daily.timer\"]\n",
    ));
    assert_eq!(
        link(&out, "root/etc/systemd/system/systemd-timesyncd.service"),
        "/dev/null"
    );
    assert_eq!(
        link(&out, "root/etc/systemd/system/apt-daily.timer"),
        "/dev/null"
    );
    assert_eq!(
        manifest(&out)["systemd"]["mask"],
        serde_json::json!(["apt-daily.timer", "systemd-timesyncd.service"])
    );
}

const UNITS: &str = r#"
[config]
systemd.enable = ["ssh.service", "ssh.service"]
systemd.disable = ["apt-daily.timer"]

[config.systemd.units."app.service"]
text = """
[Unit]
Description=App
# WantedBy=ignored.target (a comment, and in [Unit])
[Service]
ExecStart=/usr/bin/app
[Install]
WantedBy=multi-user.target
RequiredBy=foo.target
Alias=application.service
Also=helper.socket other.service
"""

[config.systemd.units."helper.socket"]
text = "[Socket]\nListenStream=8080\n[Install]\nWantedBy=sockets.target\n"
enable = false

[config.systemd.units."off.service"]
text = "[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n"
enable = false

[config.systemd.units."oneshot.service"]
text = "[Service]\nType=oneshot\nExecStart=/bin/true\n"

[config.systemd.units."tmpl@.service"]
text = "[Service]\nExecStart=/bin/echo %i\n[Install]\nWantedBy=multi-user.target\nDefaultInstance=main\n"

[config.systemd.units."reset.service"]
text = "[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=a.target\nWantedBy=\nWantedBy = b.target \\\n  c.target\n"
"#;

#[test]
fn enabled_units_are_linked_as_their_install_section_says() {
    let (_dir, out) = rendered(&host(UNITS));
    let system = "root/etc/systemd/system";
    let links = [
        ("multi-user.target.wants/app.service", "app.service"),
        ("foo.target.requires/app.service", "app.service"),
        ("application.service", "app.service"),
        // Enabled through app's Also=, despite its own `enable = false`.
        ("sockets.target.wants/helper.socket", "helper.socket"),
        ("multi-user.target.wants/tmpl@main.service", "tmpl@.service"),
        // An empty `WantedBy=` resets the list; a backslash continues a line.
        ("b.target.wants/reset.service", "reset.service"),
        ("c.target.wants/reset.service", "reset.service"),
    ];
    for (path, unit) in links {
        assert_eq!(
            link(&out, &format!("{system}/{path}")),
            format!("/etc/systemd/system/{unit}"),
            "{path}"
        );
    }
    assert!(!out.join(format!("{system}/a.target.wants")).exists());
    assert!(!out.join(format!("{system}/ignored.target.wants")).exists());
    assert!(
        !out.join(format!("{system}/multi-user.target.wants/off.service"))
            .exists()
    );
    assert_eq!(mode(&out, &format!("{system}/app.service")), 0o644);
    assert_eq!(
        read(&out, &format!("{system}/oneshot.service")),
        "[Service]\nType=oneshot\nExecStart=/bin/true\n"
    );
    let systemd = &manifest(&out)["systemd"];
    assert_eq!(
        systemd["units"],
        serde_json::json!({
            "app.service": "enabled",
            "helper.socket": "enabled",
            "off.service": "disabled",
            "oneshot.service": "static",
            "reset.service": "enabled",
            "tmpl@.service": "enabled",
        })
    );
    // Package units are the image builder's to enable.
    assert_eq!(
        systemd["enable"],
        serde_json::json!(["other.service", "ssh.service"])
    );
    assert_eq!(systemd["disable"], serde_json::json!(["apt-daily.timer"]));
}

#[test]
fn a_template_without_default_instance_cannot_be_enabled() {
    let error = render_error(&host(
        "[config.systemd.units.\"t@.service\"]\ntext = \"[Install]\\nWantedBy=multi-user.target\\n\"\n",
    ));
    assert_eq!(
        error,
        "systemd.units.\"t@.service\".text: a template unit needs `DefaultInstance=` in [Install] to be enabled"
    );
}

#[test]
fn enabled_units_cannot_also_be_masked_or_disabled() {
    let error = render_error(&host(
        "[config]\nsystemd.enable = [\"ssh.service\"]\nsystemd.mask = [\"ssh.service\"]\n",
    ));
    assert!(
        error.starts_with("systemd.mask: `ssh.service` is also enabled"),
        "{error}"
    );
    let error = render_error(&host(
        "[config]\nsystemd.disable = [\"x.service\"]\n[config.systemd.units.\"x.service\"]\ntext = \"[Service]\\n\"\n",
    ));
    assert!(
        error.starts_with("systemd.disable: `x.service` is also enabled"),
        "{error}"
    );
}

// ── timezone, locale, hostname, sysctl ─────────────────────────────────────

#[test]
fn timezone_locale_hostname_and_sysctl() {
    let (_dir, out) = rendered(&host(
        r#"[config]
timezone = "America/Argentina/Buenos_Aires"
locale = "en_GB.UTF-8"
sysctl."vm.swappiness" = "10"
sysctl."net.ipv4.ip_forward" = "1"
"#,
    ));
    assert_eq!(
        read(&out, "root/etc/timezone"),
        "America/Argentina/Buenos_Aires\n"
    );
    assert_eq!(
        link(&out, "root/etc/localtime"),
        "/usr/share/zoneinfo/America/Argentina/Buenos_Aires"
    );
    assert_eq!(read(&out, "root/etc/default/locale"), "LANG=en_GB.UTF-8\n");
    assert_eq!(read(&out, "root/etc/hostname"), "h\n");
    assert_eq!(
        read(&out, "root/etc/sysctl.d/90-kiln.conf"),
        "net.ipv4.ip_forward = 1\nvm.swappiness = 10\n"
    );
}

#[test]
fn no_sysctl_file_and_no_hostname_when_unset() {
    let mut config = host("");
    config.hostname = None;
    let (_dir, out) = rendered(&config);
    assert!(!out.join("root/etc/sysctl.d").exists());
    assert!(!out.join("root/etc/hostname").exists());
    // Defaults still give a time zone and a locale.
    assert_eq!(read(&out, "root/etc/timezone"), "Etc/UTC\n");
    assert_eq!(read(&out, "root/etc/default/locale"), "LANG=C.UTF-8\n");
    for fragment in ["passwd", "group", "shadow"] {
        assert_eq!(read(&out, fragment), "", "{fragment}");
    }
}

#[test]
fn a_line_break_in_a_value_is_refused() {
    let mut config = host("");
    config
        .sysctl
        .insert("vm.swappiness".into(), "10\nkernel.x = 1".into());
    let error = render_error(&config);
    assert!(error.starts_with("sysctl.\"vm.swappiness\": "), "{error}");
    let mut config = host("[config]\nusers.ops = {}\n");
    config.users.get_mut("ops").unwrap().comment = Some("a:b".into());
    let error = render_error(&config);
    assert!(error.starts_with("users.ops.comment: "), "{error}");
}

// ── secrets ────────────────────────────────────────────────────────────────

#[test]
fn password_references_never_reach_the_output() {
    let config = host(
        r#"[config]
users.x = { password = "vault:kv/x#hash", sudo = "password", ssh_authorized_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample x@laptop"] }
users.y = {}
"#,
    );
    assert_eq!(
        config.users["x"].password.as_deref(),
        Some("vault:kv/x#hash")
    );
    let (_dir, out) = rendered(&config);
    let mut bytes = Vec::new();
    all_bytes(&out, &out, &mut bytes);
    for needle in ["vault:", "kv/x", "#hash"] {
        assert!(!contains(&bytes, needle), "{needle} in the output");
    }
    // Locked until the deploy sets the hash; no password at all for y.
    assert_eq!(read(&out, "shadow"), "x:!:::::::\ny:*:::::::\n");
    let users = &manifest(&out)["users"];
    assert_eq!(users["x"]["password"], "deploy");
    assert_eq!(users["y"]["password"], serde_json::Value::Null);
}

#[test]
fn module_secrets_of_the_example_fleet_never_reach_the_output() {
    let (config, sources) = fleet_host("monitoring");
    assert!(serde_json::to_string(&config).unwrap().contains("vault:"));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let input = OverlayInput {
        host: "monitoring",
        config: &config,
        sources: &sources,
        epoch: EPOCH,
    };
    render(&input, &out).unwrap();
    let mut bytes = Vec::new();
    all_bytes(&out, &out, &mut bytes);
    assert!(!contains(&bytes, "vault:"));
}

// ── escapes and collisions ─────────────────────────────────────────────────

fn with_file(config: &mut SystemConfig, path: &str, text: &str) {
    let mut file = host("[config.files.\"/x\"]\ntext = \"\"\n").files["/x"].clone();
    file.text = Some(text.to_owned());
    config.files.insert(path.to_owned(), file);
}

#[test]
fn paths_outside_the_root_are_refused() {
    for (path, reason) in [
        ("etc/motd", "is not absolute"),
        ("/etc/../../outside", "has a `.` or `..` component"),
        ("/etc/./motd", "has a `.` or `..` component"),
        ("/etc//motd", "has an empty component"),
        ("/", "is the root directory itself"),
    ] {
        let mut config = host("");
        with_file(&mut config, path, "x");
        assert_eq!(
            render_error(&config),
            format!("files.{path:?}: `{path}` {reason}; paths must stay inside the overlay's root")
        );
    }
}

#[test]
fn names_that_become_paths_are_checked() {
    let mut config = host("[config]\nusers.ops = { sudo = \"password\" }\n");
    let user = config.users.remove("ops").unwrap();
    config.users.insert("../../etc/evil".into(), user.clone());
    let error = render_error(&config);
    assert!(error.starts_with("users.\"../../etc/evil\": "), "{error}");

    let mut config =
        host("[config]\nusers.ops = { ssh_authorized_keys = [\"ssh-ed25519 AAAA k\"] }\n");
    config.users.get_mut("ops").unwrap().home = Some("/home/../../outside".into());
    let error = render_error(&config);
    assert!(error.starts_with("users.ops.home: "), "{error}");

    let mut config = host(UNITS);
    let unit = config.systemd.units["oneshot.service"].clone();
    config
        .systemd
        .units
        .insert("../../../etc/shadow.service".into(), unit);
    let error = render_error(&config);
    assert!(
        error.starts_with("systemd.units.\"../../../etc/shadow.service\": "),
        "{error}"
    );

    let mut config = host("");
    config.systemd.mask.push("../x.service".into());
    let error = render_error(&config);
    assert!(error.starts_with("systemd.mask: "), "{error}");

    let mut config = host("");
    config.timezone = "../../etc/shadow".into();
    let error = render_error(&config);
    assert!(error.starts_with("timezone: "), "{error}");
}

#[test]
fn a_files_entry_wins_over_a_generated_file() {
    let (_dir, out) = rendered(&host(
        r#"[config.files."/etc/hostname"]
text = "other\n"
[config.files."/etc/localtime"]
text = "TZif"
mode = "600"
"#,
    ));
    assert_eq!(read(&out, "root/etc/hostname"), "other\n");
    assert_eq!(read(&out, "root/etc/localtime"), "TZif");
    assert_eq!(mode(&out, "root/etc/localtime"), 0o600);
    let paths = &manifest(&out)["paths"];
    assert_eq!(paths["/etc/hostname"]["option"], "files.\"/etc/hostname\"");
    assert_eq!(paths["/etc/localtime"]["kind"], "file");
    assert_eq!(paths["/etc/localtime"]["mode"], "0600");
}

#[test]
fn a_file_where_a_directory_is_needed_is_an_error() {
    let mut config = host("");
    with_file(&mut config, "/etc/motd", "hi\n");
    with_file(&mut config, "/etc/motd/part", "x\n");
    assert_eq!(
        render_error(&config),
        "/etc/motd must be a directory for files.\"/etc/motd/part\", but files.\"/etc/motd\" writes a non-directory there"
    );
    // A user file cannot replace a generated directory either.
    let mut config = host(UNITS);
    with_file(
        &mut config,
        "/etc/systemd/system/multi-user.target.wants",
        "",
    );
    let error = render_error(&config);
    assert!(
        error.starts_with(
            "/etc/systemd/system/multi-user.target.wants must be a directory for systemd.units"
        ),
        "{error}"
    );
    assert!(
        error.ends_with(
            "but files.\"/etc/systemd/system/multi-user.target.wants\" writes a non-directory there"
        ),
        "{error}"
    );
}

#[test]
fn two_generated_writers_of_one_path_are_an_error() {
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample k";
    let error = render_error(&host(&format!(
        "[config]\nusers.a = {{ home = \"/srv/shared\", ssh_authorized_keys = [\"{key}\"] }}\nusers.b = {{ home = \"/srv/shared\", ssh_authorized_keys = [\"{key}\"] }}\n"
    )));
    assert_eq!(
        error,
        "users.b.ssh_authorized_keys writes /srv/shared, which users.a.ssh_authorized_keys also writes"
    );
    // Two units claiming one alias.
    let error = render_error(&host(
        "[config.systemd.units.\"a.service\"]\ntext = \"[Install]\\nAlias=x.service\\n\"\n[config.systemd.units.\"b.service\"]\ntext = \"[Install]\\nAlias=x.service\\n\"\n",
    ));
    assert_eq!(
        error,
        "systemd.units.\"b.service\" writes /etc/systemd/system/x.service, which systemd.units.\"a.service\" also writes"
    );
}

#[test]
fn sources_must_be_provided_and_readable() {
    let mut config = host("");
    let mut file = host("[config.files.\"/x\"]\ntext = \"\"\n").files["/x"].clone();
    (file.text, file.source) = (None, Some("files/app.conf".into()));
    config.files.insert("/etc/app.conf".into(), file);
    assert_eq!(
        render_error(&config),
        "files.\"/etc/app.conf\".source: no file was given for source `files/app.conf`"
    );
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let sources = BTreeMap::from([("files/app.conf".to_owned(), missing.clone())]);
    let out = dir.path().join("out");
    let error = try_render(&config, &sources, &out).unwrap_err();
    assert!(matches!(error, OverlayError::ReadSource { ref path, .. } if *path == missing));
    assert!(!out.exists(), "a failed write removes the output");
}

#[test]
fn an_existing_output_is_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let error = try_render(&host(""), &no_sources(), dir.path()).unwrap_err();
    assert!(
        matches!(error, OverlayError::OutputExists { .. }),
        "{error}"
    );
    assert!(dir.path().exists());
}
