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

use common::text;
use kiln::builders::vm::disk;

const EPOCH: u64 = 1_700_000_000;

#[allow(clippy::print_stderr, reason = "a skipped test must say so loudly")]
fn notice(message: &str) {
    eprintln!("{message}");
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

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
