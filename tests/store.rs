//! `kiln build` and the store, driven through the real binary on a copy of
//! the example fleet: no-op rebuilds, exactly-what-changed rebuilds,
//! --explain, --check, gc roots, verify, and Nix agreeing on NAR hashes.

mod common;

use std::path::Path;
use std::process::Output;

use common::{copy_tree, root, text};

/// A copy of the example fleet and an empty store next to it.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        for part in ["hosts", "images", "modules", "stacks"] {
            copy_tree(&root().join(part), &dir.path().join("repo").join(part));
        }
        std::fs::copy(
            root().join("lockfile.toml"),
            dir.path().join("repo/lockfile.toml"),
        )
        .unwrap();
        Fixture { dir }
    }

    fn repo(&self) -> std::path::PathBuf {
        self.dir.path().join("repo")
    }

    fn store(&self) -> std::path::PathBuf {
        self.dir.path().join("store")
    }

    fn kiln(&self, args: &[&str]) -> Output {
        let store = self.store();
        let mut all = vec!["--store", store.to_str().unwrap()];
        all.extend_from_slice(args);
        common::kiln(&self.repo(), &all)
    }

    fn ok(&self, args: &[&str]) -> Output {
        let output = self.kiln(args);
        assert_eq!(
            output.status.code(),
            Some(0),
            "kiln {args:?}\nstdout:\n{}\nstderr:\n{}",
            text(&output.stdout),
            text(&output.stderr)
        );
        output
    }
}

fn built_names(output: &Output) -> Vec<String> {
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let mut names: Vec<String> = json["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["status"] == "built")
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn second_build_builds_nothing_and_says_so() {
    let fixture = Fixture::new();
    let first = fixture.ok(&["build", "--all", "--part", "overlay", "--json", "--no-link"]);
    assert_eq!(
        built_names(&first),
        [
            "db-overlay",
            "docker-host-overlay",
            "monitoring-overlay",
            "netbox-overlay",
            "source-kiln-backup.sh",
            "vault-overlay"
        ]
    );
    let second = fixture.ok(&["build", "--all", "--part", "overlay", "--json", "--no-link"]);
    assert!(built_names(&second).is_empty());
    let third = fixture.ok(&["build", "--all", "--part", "overlay", "--no-link"]);
    assert!(
        text(&third.stderr).contains("nothing to build: 5 targets already built"),
        "{}",
        text(&third.stderr)
    );
    let verify = fixture.ok(&["store", "verify"]);
    assert!(
        text(&verify.stderr).contains("verified 6 paths"),
        "{}",
        text(&verify.stderr)
    );
}

#[test]
fn changing_a_module_rebuilds_exactly_its_dependents_and_explains_why() {
    let fixture = Fixture::new();
    fixture.ok(&["build", "--all", "--part", "overlay", "--no-link"]);
    // Only `db` imports postgresql.
    let module = fixture.repo().join("modules/postgresql.toml");
    let changed = std::fs::read_to_string(&module)
        .unwrap()
        .replace("default = 5432", "default = 5433");
    std::fs::write(&module, changed).unwrap();
    let dry = fixture.ok(&["build", "--all", "--part", "overlay", "--dry-run"]);
    let would: Vec<&str> = text(&dry.stdout)
        .leak()
        .lines()
        .filter(|l| l.starts_with("would "))
        .collect();
    assert_eq!(would.len(), 1, "{would:?}");
    assert!(would[0].ends_with("-db-overlay"), "{would:?}");
    let explain = fixture.ok(&["build", "db#overlay", "--explain", "--no-link"]);
    let out = text(&explain.stdout);
    // The port, and the config file that interpolates it.
    assert!(
        out.contains("because argument `config` changed at "),
        "{out}"
    );
    assert!(out.contains("`postgresql.port`"), "{out}");
    assert!(
        out.contains("`files.\"/etc/postgresql/15/main/conf.d/kiln.conf\".text`"),
        "{out}"
    );
    // A module every host imports changes every host, and nothing else.
    let base = fixture.repo().join("modules/base.toml");
    let original = std::fs::read_to_string(&base).unwrap();
    // A package is an input of every host's Debian set (base is imported
    // by them all): the lock no longer pins them as configured, and build
    // refuses.
    std::fs::write(&base, original.replace("\"htop\"", "\"htop\", \"tmux\"")).unwrap();
    let refused = fixture.kiln(&["build", "--all", "--no-link"]);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = text(&refused.stderr);
    assert!(
        stderr.contains("debian `host:monitoring`: pinned for a different configuration")
            && stderr.contains("run `kiln lock`"),
        "{stderr}"
    );
    std::fs::write(
        &base,
        original.replace(
            "\"kernel.dmesg_restrict\" = \"1\"",
            "\"kernel.dmesg_restrict\" = \"0\"",
        ),
    )
    .unwrap();
    let rebuilt = fixture.ok(&["build", "--all", "--part", "overlay", "--json", "--no-link"]);
    assert_eq!(
        built_names(&rebuilt),
        [
            "db-overlay",
            "docker-host-overlay",
            "monitoring-overlay",
            "netbox-overlay",
            "vault-overlay"
        ]
    );
}

#[test]
fn gc_keeps_rooted_paths_and_deletes_the_rest() {
    let fixture = Fixture::new();
    let link = fixture.dir.path().join("keep");
    fixture.ok(&["build", "vault#overlay", "-o", link.to_str().unwrap()]);
    fixture.ok(&["build", "db#overlay", "--no-link"]);
    let vault_path = std::fs::read_link(&link).unwrap();
    let dry = fixture.ok(&["store", "gc", "--dry-run", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&dry.stdout).unwrap();
    let deleted: Vec<&str> = report["report"]["deleted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        deleted.iter().any(|p| p.ends_with("-db-overlay")),
        "{deleted:?}"
    );
    assert!(
        !deleted.iter().any(|p| p.ends_with("-vault-overlay")),
        "{deleted:?}"
    );
    assert!(vault_path.exists(), "dry run deleted nothing");
    fixture.ok(&["store", "gc"]);
    assert!(vault_path.exists(), "a rooted path was deleted");
    let ls = fixture.ok(&["store", "ls", "--json"]);
    let listing = text(&ls.stdout);
    assert!(
        listing.contains("-vault-overlay") && !listing.contains("-db-overlay"),
        "{listing}"
    );
    // Remove the link: the root goes stale and the next gc collects the path.
    std::fs::remove_file(&link).unwrap();
    fixture.ok(&["store", "gc"]);
    assert!(!vault_path.exists());
    let ls = fixture.ok(&["store", "ls", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&ls.stdout).unwrap();
    assert_eq!(json["paths"].as_array().unwrap().len(), 0);
}

#[test]
fn verify_finds_corruption_and_nix_agrees_on_hashes() {
    let fixture = Fixture::new();
    let link = fixture.dir.path().join("result");
    fixture.ok(&["build", "monitoring#overlay", "-o", link.to_str().unwrap()]);
    let info = fixture.ok(&["store", "path-info", link.to_str().unwrap(), "--json"]);
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    let path = std::fs::read_link(&link).unwrap();
    // Nix computes the same NAR hash over the same tree.
    let nix = std::process::Command::new("nix-hash")
        .args(["--type", "sha256", "--base32"])
        .arg(&path)
        .output()
        .expect("nix-hash from Debian's nix-bin: run scripts/setup.sh");
    assert!(nix.status.success(), "{}", text(&nix.stderr));
    assert_eq!(
        info["nar_hash"],
        format!("sha256:{}", text(&nix.stdout).trim())
    );

    // Corrupt one file: verify reports it and exits 1.
    let motd = path.join("root/etc/motd");
    set_writable(&motd);
    std::fs::write(&motd, "tampered\n").unwrap();
    let verify = fixture.kiln(&["store", "verify"]);
    assert_eq!(verify.status.code(), Some(1));
    assert!(
        text(&verify.stderr).contains("CORRUPT"),
        "{}",
        text(&verify.stderr)
    );
    // --check notices too.
    let check = fixture.kiln(&["build", "monitoring#overlay", "--check"]);
    assert_eq!(check.status.code(), Some(1), "{}", text(&check.stderr));
    assert!(
        text(&check.stderr).contains("root/etc/motd"),
        "{}",
        text(&check.stderr)
    );
}

#[test]
fn check_of_an_intact_build_is_identical() {
    let fixture = Fixture::new();
    fixture.ok(&["build", "netbox#overlay", "--no-link"]);
    let check = fixture.ok(&["build", "netbox#overlay", "--check"]);
    assert!(
        text(&check.stderr).contains("identical to the first build"),
        "{}",
        text(&check.stderr)
    );
}

fn set_writable(file: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for dir in file.ancestors().skip(1).take(3) {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644)).unwrap();
}

#[test]
#[expect(clippy::print_stderr, reason = "a skipped check must say so loudly")]
fn builders_get_a_cleared_environment_and_no_network() {
    use kiln::build::sandbox::{Isolation, command};
    let home = tempfile::tempdir().unwrap();
    let env = std::collections::BTreeMap::from([(
        "SOURCE_DATE_EPOCH".to_owned(),
        "315532800".to_owned(),
    )]);
    // The test process's own environment (CARGO_*, …) must not reach the builder.
    assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
    let output = command(Path::new("/bin/sh"), false, &env, home.path())
        .args(["-c", "env | sort; echo ---; cat /proc/net/dev"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    let out = text(&output.stdout);
    let (env_part, net_part) = out.split_once("---").unwrap();
    let names: Vec<&str> = env_part
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .collect();
    for expected in ["HOME", "LC_ALL", "PATH", "SOURCE_DATE_EPOCH", "TZ"] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    // Only what the sandbox sets (the shell adds PWD/SHLVL/_ itself).
    for name in &names {
        assert!(
            [
                "HOME",
                "LC_ALL",
                "PATH",
                "SOURCE_DATE_EPOCH",
                "TZ",
                "PWD",
                "SHLVL",
                "_"
            ]
            .contains(name),
            "unexpected variable {name}"
        );
    }
    match Isolation::detect() {
        Isolation::Unavailable(reason) => {
            eprintln!(
                "NOTICE: no network isolation on this machine ({reason}); only the environment was checked"
            );
        }
        _ => {
            let interfaces: Vec<&str> = net_part
                .trim_start()
                .lines()
                .skip(2)
                .filter_map(|l| l.split(':').next())
                .map(str::trim)
                .collect();
            assert_eq!(
                interfaces,
                ["lo"],
                "a builder sees network interfaces: {net_part}"
            );
        }
    }
}

#[test]
fn a_result_link_never_replaces_a_file_or_directory() {
    let fixture = Fixture::new();
    let occupied = fixture.dir.path().join("occupied");
    std::fs::create_dir(&occupied).unwrap();
    std::fs::write(occupied.join("keep"), "mine\n").unwrap();
    let output = fixture.kiln(&[
        "build",
        "monitoring#overlay",
        "-o",
        occupied.to_str().unwrap(),
    ]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("something that is not a symlink is there"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(occupied.join("keep")).unwrap(),
        "mine\n"
    );
    // A link from an earlier build is replaced as before.
    let link = fixture.dir.path().join("result");
    fixture.ok(&["build", "monitoring#overlay", "-o", link.to_str().unwrap()]);
    fixture.ok(&["build", "monitoring#overlay", "-o", link.to_str().unwrap()]);
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

#[test]
fn check_of_a_target_never_built_says_to_build_it_first() {
    let fixture = Fixture::new();
    let output = fixture.kiln(&["build", "--check", "monitoring#overlay"]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("this target is not in the store")
            && stderr.contains("monitoring#overlay")
            && stderr.contains("build it first"),
        "{stderr}"
    );
    assert!(!stderr.contains("cannot hash"), "{stderr}");
    // Once built, --check rebuilds and compares.
    fixture.ok(&["build", "monitoring#overlay", "--no-link"]);
    fixture.ok(&["build", "--check", "monitoring#overlay"]);
}
