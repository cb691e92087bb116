//! The VM disk assembly (`kiln::builders::vm::disk`) on a small synthetic
//! tree, in seconds: the same bytes from two copies of the tree that differ
//! in every timestamp and in creation order, built under a different umask; a GPT with the fixed identifiers; an ESP and an ext4
//! root that independent tools (sfdisk, mtools, e2fsck, debugfs) read back.
//!
//! Needs sfdisk, mkfs.vfat, mtools, e2fsprogs and qemu-img (scripts/setup.sh
//! installs them); without them it says so and passes.

mod common;

use std::path::Path;
use std::process::Command;

use common::{have, notice, text};
use kiln::builders::vm::disk;

const EPOCH: u64 = 1_700_000_000;

/// A tree with a kernel, an initrd, a boot loader, files, a symlink, a
/// hard link, a name with a quote and a space, and an empty directory,
/// created in `order` (forwards or backwards).
fn tree(root: &Path, reverse: bool) {
    let mut files: Vec<(&str, &[u8])> = vec![
        ("boot/vmlinuz-6.1.0-test", b"kernel"),
        ("boot/initrd.img-6.1.0-test", b"initrd"),
        ("usr/lib/systemd/boot/efi/systemd-bootx64.efi", b"loader"),
        ("etc/hostname", b"test\n"),
        ("etc/odd \"name\" here", b"quoted"),
        ("usr/share/doc/big", &[7u8; 300_000]),
    ];
    if reverse {
        files.reverse();
    }
    for (path, bytes) in files {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes).unwrap();
    }
    std::fs::create_dir_all(root.join("srv/empty")).unwrap();
    std::os::unix::fs::symlink("boot/vmlinuz-6.1.0-test", root.join("vmlinuz")).unwrap();
    std::fs::hard_link(root.join("etc/hostname"), root.join("etc/hostname.link")).unwrap();
}

fn build(rootfs: &Path, work: &Path, umask: u32) -> std::path::PathBuf {
    // The tools inherit the process's umask; the bytes must not depend on
    // it. (TZ and locale are set for every tool by kiln itself; the VM
    // end-to-end test builds under different ones.)
    let previous = rustix::process::umask(rustix::fs::Mode::from_raw_mode(umask));
    let out = work.join("disk.raw");
    std::fs::create_dir_all(work).unwrap();
    let identity = disk::Identity::derive("disk-test");
    let boot = disk::Boot {
        loader: &rootfs.join("usr/lib/systemd/boot/efi/systemd-bootx64.efi"),
        kernel: &rootfs.join("boot/vmlinuz-6.1.0-test"),
        initrd: &rootfs.join("boot/initrd.img-6.1.0-test"),
        cmdline: "root=PARTUUID=x ro",
        title: "test",
    };
    let layout = disk::layout(disk::tree_size(rootfs).unwrap());
    disk::build_raw(rootfs, &boot, &identity, layout, EPOCH, work, &out).unwrap();
    let qcow2 = work.join("disk.qcow2");
    disk::convert(&out, "raw", &qcow2, "qcow2", EPOCH).unwrap();
    rustix::process::umask(previous);
    qcow2
}

#[test]
fn disk_is_reproducible_and_readable() {
    for tool in [
        "sfdisk",
        "mkfs.vfat",
        "mcopy",
        "mke2fs",
        "debugfs",
        "qemu-img",
    ] {
        if !have(tool) {
            notice(&format!(
                "NOTICE: skipping the disk test: {tool} is not installed (scripts/setup.sh installs it)"
            ));
            return;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let (tree_a, tree_b) = (dir.path().join("tree-a"), dir.path().join("tree-b"));
    tree(&tree_a, false);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    tree(&tree_b, true);
    let a = build(&tree_a, &dir.path().join("work-a"), 0o022);
    let b = build(&tree_b, &dir.path().join("work-b"), 0o077);
    assert!(
        std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
        "the two disks differ"
    );

    // The partition table, as sfdisk reads it.
    let raw = dir.path().join("work-a/disk.raw");
    let dump = Command::new("sfdisk")
        .arg("--dump")
        .arg(&raw)
        .output()
        .unwrap();
    assert!(dump.status.success(), "{}", text(&dump.stderr));
    let dump = text(&dump.stdout);
    let identity = disk::Identity::derive("disk-test");
    assert!(dump.contains("label: gpt"), "{dump}");
    assert!(
        dump.contains(&format!("label-id: {}", identity.disk_guid.to_uppercase())),
        "{dump}"
    );
    assert!(
        dump.contains(&identity.root_partuuid.to_uppercase()),
        "{dump}"
    );
    assert!(
        dump.contains("C12A7328-F81F-11D2-BA4B-00A0C93EC93B"),
        "{dump}"
    );

    // The ESP, read by mtools from the assembled disk (1 MiB in).
    let esp = format!("{}@@1M", raw.display());
    let listing = Command::new("mdir")
        .args(["-i", &esp, "-/", "::/"])
        .env("TZ", "UTC")
        .output()
        .unwrap();
    assert!(listing.status.success(), "{}", text(&listing.stderr));
    let listing = text(&listing.stdout);
    for name in ["BOOTX64", "loader", "kiln.conf", "vmlinuz", "initrd"] {
        assert!(listing.contains(name), "{name} not on the ESP:\n{listing}");
    }
    let entry = Command::new("mtype")
        .args(["-i", &esp, "::/loader/entries/kiln.conf"])
        .output()
        .unwrap();
    assert!(
        text(&entry.stdout).contains("linux /kiln/vmlinuz"),
        "{}",
        text(&entry.stdout)
    );

    // The root file system: clean, with every file and the fixed times.
    let root = dir.path().join("work-a/root.img");
    let fsck = Command::new("e2fsck")
        .args(["-fn"])
        .arg(&root)
        .output()
        .unwrap();
    assert!(fsck.status.success(), "{}", text(&fsck.stdout));
    let stat = Command::new("debugfs")
        .args(["-R", "stat \"/etc/odd \"\"name\"\" here\""])
        .arg(&root)
        .output()
        .unwrap();
    let stat = text(&stat.stdout);
    assert!(stat.contains("Size: 6"), "{stat}");
    for field in [
        " ctime: 0x6553f100",
        " atime: 0x6553f100",
        " mtime: 0x6553f100",
    ] {
        assert!(stat.contains(field), "{field} in\n{stat}");
    }
    let link = Command::new("debugfs")
        .args(["-R", "stat /etc/hostname.link"])
        .arg(&root)
        .output()
        .unwrap();
    assert!(
        text(&link.stdout).contains("Links: 2"),
        "{}",
        text(&link.stdout)
    );
}

/// A VM host on a vendor's disk image (a pinned `url` input, qcow2): the
/// disk is passed through as qcow2 with the same contents, the seed and
/// vm.json are rendered from the host; an image that refers to a backing
/// file is refused.
#[test]
fn vendor_disk_image_is_passed_through() {
    if !have("qemu-img") || !have("xorriso") {
        notice(
            "NOTICE: skipping the vendor disk test: qemu-img or xorriso is not installed (scripts/setup.sh installs them)",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let served = dir.path().join("served");
    std::fs::create_dir_all(&served).unwrap();
    // A "vendor image": 4 MiB of recognisable bytes, as qcow2.
    let raw = served.join("vendor.raw");
    let bytes: Vec<u8> = (0..4u32 << 20).map(|i| (i % 253) as u8).collect();
    std::fs::write(&raw, &bytes).unwrap();
    let qcow2 = served.join("vendor.qcow2");
    let converted = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow2)
        .output()
        .unwrap();
    assert!(converted.status.success(), "{}", text(&converted.stderr));

    let repo = dir.path().join("repo");
    let write = |relative: &str, contents: &str| {
        let path = repo.join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
    };
    write(
        "images/cloud.toml",
        &format!(
            "[image]\nformats = [\"vm\"]\n\n[image.base.url]\nurl = \"file://{}\"\n",
            qcow2.display()
        ),
    );
    write(
        "hosts/web.toml",
        "[host]\nkind = \"vm\"\nimage = \"cloud\"\nnode = \"pve1\"\nvmid = 130\n\n\
         [host.network.interfaces.eth0]\ndhcp = true\n\n\
         [config]\ncloud_init.runcmd = [\"echo vendor-marker\"]\n",
    );
    let store = dir.path().join("store");
    let kiln = |args: &[&str]| {
        let mut all = vec!["--store", store.to_str().unwrap()];
        all.extend_from_slice(args);
        common::kiln(&repo, &all)
    };
    let locked = kiln(&["lock"]);
    assert_eq!(locked.status.code(), Some(0), "{}", text(&locked.stderr));
    let built = kiln(&["build", "web"]);
    assert_eq!(built.status.code(), Some(0), "{}", text(&built.stderr));
    let result = repo.join("result");
    // The same disk contents (qemu-img compares guest-visible bytes).
    let compare = Command::new("qemu-img")
        .args(["compare", "-f", "qcow2", "-F", "raw"])
        .arg(result.join("disk.qcow2"))
        .arg(&raw)
        .output()
        .unwrap();
    assert!(compare.status.success(), "{}", text(&compare.stdout));
    let user_data = std::fs::read_to_string(result.join("seed/user-data")).unwrap();
    assert!(user_data.contains("vendor-marker"), "{user_data}");
    assert!(result.join("seed.iso").is_file());
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(result.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["base"]["name"], "vendor.qcow2", "{manifest}");
    assert_eq!(manifest["virtual_size"], 4u64 << 20, "{manifest}");
    let spec: kiln::builders::vm::spec::VmSpec =
        serde_json::from_slice(&std::fs::read(result.join("vm.json")).unwrap()).unwrap();
    assert_eq!(spec.vmid, Some(130));

    // `HOST#raw` also keeps the disk as raw: the vendor's bytes.
    let raw_build = kiln(&["build", "web#raw", "-o", "raw-result"]);
    assert_eq!(
        raw_build.status.code(),
        Some(0),
        "{}",
        text(&raw_build.stderr)
    );
    assert!(
        std::fs::read(repo.join("raw-result/disk.raw")).unwrap() == bytes,
        "disk.raw is not the vendor image's contents"
    );

    // A qcow2 that points at a backing file elsewhere on the machine.
    let overlay = served.join("vendor.qcow2");
    std::fs::remove_file(&overlay).unwrap();
    let created = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&raw)
        .arg(&overlay)
        .output()
        .unwrap();
    assert!(created.status.success(), "{}", text(&created.stderr));
    let relocked = kiln(&["lock", "--update"]);
    assert_eq!(
        relocked.status.code(),
        Some(0),
        "{}",
        text(&relocked.stderr)
    );
    let refused = kiln(&["build", "web"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        text(&refused.stderr).contains("refers to another file"),
        "{}",
        text(&refused.stderr)
    );
}
