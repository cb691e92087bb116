//! End to end: the example fleet's `docker-host` as a cloud-init VM image,
//! built from Debian packages (fetched through the real mirror), twice into
//! two stores under different umask, TZ and locale — identical disk, seed
//! and spec — then booted under `qemu-system-x86_64` with OVMF, the seed on
//! an IDE CD-ROM of the machine type the VM spec names, as Proxmox attaches
//! it, until cloud-init finishes and prints the marker the host asked for.
//!
//! Needs root, mmdebstrap, the disk tools, xorriso, QEMU and OVMF
//! (scripts/setup.sh installs them) and `deb.debian.org`. If the mirror
//! cannot be reached, or the machine cannot run the tools, the test prints a
//! `NOTICE:` saying why and passes; any other failure fails it. It is slow
//! (minutes): one test, so CI runs it once.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{copy_tree, have, kiln_under as kiln, mirror_reachable, notice, ok, root, text};

fn run(command: &mut Command) -> String {
    let output = command.output().expect("run");
    assert!(
        output.status.success(),
        "{command:?}\n{}",
        text(&output.stderr)
    );
    text(&output.stdout)
}

/// The marker the test's host configuration prints from `runcmd`.
const MARKER: &str = "kiln-vm-test-marker";

#[test]
fn docker_host_image_is_reproducible_and_boots() {
    if !rustix::process::geteuid().is_root() {
        notice("NOTICE: skipping the VM image test: building images needs root");
        return;
    }
    for tool in [
        "mmdebstrap",
        "xorriso",
        "mkfs.vfat",
        "mcopy",
        "sfdisk",
        "qemu-img",
    ] {
        if !have(tool) {
            notice(&format!(
                "NOTICE: skipping the VM image test: {tool} is not installed (scripts/setup.sh installs it)"
            ));
            return;
        }
    }
    if !mirror_reachable() {
        notice("NOTICE: skipping the VM image test: deb.debian.org is unreachable");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    for part in ["hosts", "images", "modules", "stacks"] {
        copy_tree(&root().join(part), &repo.join(part));
    }
    std::fs::copy(root().join("lockfile.toml"), repo.join("lockfile.toml")).unwrap();
    // The host asks cloud-init for a marker on the serial console.
    let host = repo.join("hosts/docker-host.toml");
    let config = std::fs::read_to_string(&host).unwrap();
    let config = config.replace(
        "cloud_init.runcmd = [\"systemctl restart docker\"]",
        &format!(
            "cloud_init.runcmd = [\"systemctl restart docker\", \"echo {MARKER} > /dev/ttyS0\"]"
        ),
    );
    assert!(
        config.contains(MARKER),
        "the test's edit of docker-host.toml"
    );
    std::fs::write(&host, config).unwrap();
    let (store_a, store_b) = (dir.path().join("store-a"), dir.path().join("store-b"));

    let started = Instant::now();
    ok(
        kiln(
            &repo,
            &store_a,
            "022",
            "UTC",
            "C.UTF-8",
            &["build", "docker-host", "-o", "a"],
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
            &["build", "docker-host", "-o", "b"],
        ),
        "second build (other store, umask, TZ, locale)",
    );
    notice(&format!(
        "docker-host VM image: first build {first:.0?}, both {:.0?}",
        started.elapsed()
    ));
    let (out_a, out_b) = (repo.join("a"), repo.join("b"));
    let differing: Vec<&str> = [
        "disk.qcow2",
        "seed.iso",
        "vm.json",
        "manifest.json",
        "sbom.spdx.json",
        "seed/user-data",
        "seed/meta-data",
        "seed/network-config",
    ]
    .into_iter()
    .filter(|file| {
        std::fs::read(out_a.join(file)).unwrap() != std::fs::read(out_b.join(file)).unwrap()
    })
    .collect();
    if !differing.is_empty() {
        // Keep both outputs for whoever investigates.
        let kept = dir.keep();
        panic!(
            "{differing:?} differ between the two builds; both outputs are kept in {}",
            kept.display()
        );
    }

    // An independent reader of the seed.
    let iso = out_a.join("seed.iso");
    let info = run(Command::new("xorriso")
        .args(["-indev"])
        .arg(&iso)
        .arg("-pvd_info"));
    let files = run(Command::new("xorriso")
        .args(["-indev"])
        .arg(&iso)
        .args(["-find", "/", "-type", "f"]));
    let stderr_and_out = format!("{info}{files}");
    assert!(stderr_and_out.contains("cidata"), "{stderr_and_out}");
    for name in ["user-data", "meta-data", "network-config"] {
        assert!(files.contains(&format!("'/{name}'")), "{files}");
    }

    let spec: kiln::builders::vm::spec::VmSpec =
        serde_json::from_slice(&std::fs::read(out_a.join("vm.json")).unwrap()).unwrap();
    assert_eq!(spec.create["machine"], "q35");
    assert_eq!(spec.volumes.seed.slot, "ide2");

    boot(dir.path(), &out_a, &spec);
}

/// Boot the image with its seed and wait for cloud-init and the marker.
fn boot(dir: &Path, out: &Path, spec: &kiln::builders::vm::spec::VmSpec) {
    use kiln::builders::vm::qemu;
    if !have("qemu-system-x86_64") || !Path::new(qemu::OVMF_CODE).exists() {
        notice(
            "NOTICE: skipping the VM boot: qemu-system-x86 or ovmf is not installed (scripts/setup.sh installs them)",
        );
        return;
    }
    // The guest writes to its disk: boot an overlay, never the store's file.
    let disk = dir.join("boot.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(out.join("disk.qcow2"))
        .arg(&disk));
    let vars = dir.join("OVMF_VARS.fd");
    std::fs::copy(qemu::OVMF_VARS, &vars).unwrap();
    let log = dir.join("serial.log");
    let args = qemu::args(
        spec,
        &qemu::Boot {
            disk: &disk,
            disk_format: "qcow2",
            seed: &out.join("seed.iso"),
            vars: &vars,
            serial_log: &log,
            accel: qemu::accelerator(),
            memory_mib: 2048,
            cpus: 2,
        },
    );
    let mut child = Command::new("qemu-system-x86_64")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start qemu");
    let started = Instant::now();
    let limit = Duration::from_secs(900);
    let finished = regex::Regex::new(r"Cloud-init v\. \S+ finished at").unwrap();
    let outcome = loop {
        std::thread::sleep(Duration::from_secs(2));
        let console = std::fs::read_to_string(&log).unwrap_or_default();
        if finished.is_match(&console) && console.contains(MARKER) {
            break Ok(console);
        }
        if let Ok(Some(status)) = child.try_wait() {
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                let _ = pipe.read_to_string(&mut stderr);
            }
            break Err(format!("qemu exited ({status}): {stderr}"));
        }
        if started.elapsed() > limit {
            break Err(format!("no cloud-init finish and marker within {limit:?}"));
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    match outcome {
        Ok(console) => {
            notice(&format!(
                "docker-host VM booted: cloud-init finished and the marker appeared after {:.0?}",
                started.elapsed()
            ));
            assert!(
                console.contains("DataSourceNoCloud"),
                "cloud-init did not use the NoCloud seed"
            );
        }
        Err(why) => {
            // Keep the console for whoever reads the failure.
            let kept =
                std::env::temp_dir().join(format!("kiln-vm-serial-{}.log", std::process::id()));
            let _ = std::fs::copy(&log, &kept);
            let console = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = console.lines().rev().take(60).collect();
            panic!(
                "{why}\nserial console kept at {}; its last lines:\n{}",
                kept.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}
