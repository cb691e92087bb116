//! Crash safety and concurrency of `kiln build` on one store.
//!
//! - 50 times, `kiln build --all` is killed with SIGKILL (with its
//!   builders) at a random moment; after each, `kiln store verify` must find
//!   every valid path complete and correct. Then a build must complete.
//! - 4 `kiln build --all` processes on one empty store at once: all succeed
//!   and each derivation is built exactly once.

mod common;

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{copy_tree, root, text};

/// The example fleet plus `extra` clones of `netbox`, so a build takes
/// long enough to be interrupted at many different points.
fn fleet(dir: &Path, extra: usize) -> PathBuf {
    let repo = dir.join("repo");
    for part in ["hosts", "images", "modules", "stacks"] {
        copy_tree(&root().join(part), &repo.join(part));
    }
    std::fs::copy(root().join("lockfile.toml"), repo.join("lockfile.toml")).unwrap();
    let netbox = std::fs::read_to_string(repo.join("hosts/netbox.toml")).unwrap();
    for i in 0..extra {
        let host = netbox
            .replace("vmid = 130", &format!("vmid = {}", 1000 + i))
            .replace("192.168.10.23/24", &format!("192.168.11.{}/24", i + 1));
        std::fs::write(repo.join(format!("hosts/clone{i:02}.toml")), host).unwrap();
    }
    repo
}

fn kiln(repo: &Path, store: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kiln"));
    command
        .args(["--color", "never", "--store"])
        .arg(store)
        .args(args)
        .current_dir(repo);
    command
}

/// A small deterministic generator, so a failing trial can be replayed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

#[test]
fn sigkill_at_random_moments_never_leaves_a_bad_valid_path() {
    let dir = tempfile::tempdir().unwrap();
    let repo = fleet(dir.path(), 30);
    let store = dir.path().join("store");

    // How long a full build takes here, to spread the kills over it.
    let started = std::time::Instant::now();
    let full = kiln(
        &repo,
        &store,
        &[
            "build",
            "--all",
            "--part",
            "overlay",
            "--no-link",
            "-j",
            "2",
        ],
    )
    .output()
    .unwrap();
    assert!(full.status.success(), "{}", text(&full.stderr));
    let duration = started.elapsed().as_millis().max(50) as u64;
    std::fs::remove_dir_all(&store).unwrap_or_else(|_| {
        // Outputs are read-only; gc everything instead.
        let gc = kiln(&repo, &store, &["store", "gc"]).output().unwrap();
        assert!(gc.status.success());
    });

    let mut rng = Lcg(0x6b696c6e);
    for trial in 0..50 {
        let delay = rng.next() % (duration + duration / 2);
        let mut child = kiln(
            &repo,
            &store,
            &[
                "build",
                "--all",
                "--part",
                "overlay",
                "--no-link",
                "-j",
                "2",
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        // Kill kiln and every builder it started, as a crash would.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", child.id())])
            .status();
        let _ = child.wait();
        let verify = kiln(&repo, &store, &["store", "verify"]).output().unwrap();
        assert!(
            verify.status.success(),
            "trial {trial} (killed after {delay} ms): verify failed\n{}",
            text(&verify.stderr)
        );
    }
    // The next build completes, and everything it registered verifies.
    let finish = kiln(
        &repo,
        &store,
        &["build", "--all", "--part", "overlay", "--json", "--no-link"],
    )
    .output()
    .unwrap();
    assert!(finish.status.success(), "{}", text(&finish.stderr));
    let verify = kiln(&repo, &store, &["store", "verify", "--json"])
        .output()
        .unwrap();
    assert!(verify.status.success(), "{}", text(&verify.stderr));
    let report: serde_json::Value = serde_json::from_slice(&verify.stdout).unwrap();
    // 35 overlays and the one source file.
    assert_eq!(report["report"]["checked"], 36);
}

#[test]
fn four_builds_at_once_build_each_derivation_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let repo = fleet(dir.path(), 10);
    let store = dir.path().join("store");
    let children: Vec<_> = (0..4)
        .map(|_| {
            kiln(
                &repo,
                &store,
                &[
                    "build",
                    "--all",
                    "--part",
                    "overlay",
                    "--json",
                    "--no-link",
                    "-j",
                    "2",
                ],
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    let mut built: BTreeMap<String, usize> = BTreeMap::new();
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "{}", text(&output.stderr));
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        for result in json["results"].as_array().unwrap() {
            let count = built
                .entry(result["name"].as_str().unwrap().to_owned())
                .or_default();
            if result["status"] == "built" {
                *count += 1;
            }
        }
    }
    // 15 overlays and one source file, each built by exactly one process.
    assert_eq!(built.len(), 16, "{built:?}");
    for (name, count) in &built {
        assert_eq!(*count, 1, "{name} was built {count} times");
    }
    let verify = kiln(&repo, &store, &["store", "verify"]).output().unwrap();
    assert!(verify.status.success(), "{}", text(&verify.stderr));
}
