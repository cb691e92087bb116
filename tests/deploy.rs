//! `kiln deploy`, `rollback`, `generations`, `diff`, `status` and
//! `gc --remote` end to end: the real `kiln` binary builds small images
//! (an LXC host on a rootfs tarball, a VM host on a vendor qcow2) and
//! deploys them to the Proxmox VE simulator, which validates every request
//! against PVE's published schema.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{have, notice, text};
use kiln::proxmox::sim::{Fault, Outcome, Simulator};

const SECRET_VAR: &str = "KILN_PROXMOX_SECRET";

/// The simulator on its own runtime (kiln runs as a child process), with
/// a token limited to docs/src/proxmox-token.md's role.
struct Cluster {
    runtime: tokio::runtime::Runtime,
    sim: Simulator,
}

impl Cluster {
    fn start() -> Cluster {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        // The token holds exactly the documented least-privilege role.
        let config = common::limited(&common::documented_role());
        let sim = runtime.block_on(Simulator::start(config)).unwrap();
        Cluster { runtime, sim }
    }

    fn secret(&self) -> String {
        let header = self.sim.authorization();
        header.rsplit_once('=').unwrap().1.to_owned()
    }

    fn token(&self) -> String {
        let header = self.sim.authorization();
        let id = header.strip_prefix("PVEAPIToken=").unwrap();
        id.rsplit_once('=').unwrap().0.to_owned()
    }

    /// The API URL without `/api2/json`.
    fn endpoint(&self) -> String {
        self.sim.url().trim_end_matches("/api2/json").to_owned()
    }

    /// Requests logged so far.
    fn mark(&self) -> usize {
        self.sim.requests().len()
    }
}

/// A repo with one LXC host on a rootfs tarball and one VM host on a
/// vendor qcow2, both deploying to `cluster`.
struct Repo {
    dir: tempfile::TempDir,
    root: PathBuf,
}

impl Repo {
    fn write(&self, relative: &str, contents: &str) {
        let path = self.root.join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
    }

    fn new(cluster: &Cluster, health_port: u16) -> Repo {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        let repo = Repo { dir, root };
        let served = repo.dir.path().join("served");
        std::fs::create_dir_all(&served).unwrap();
        let tarball = common::rootfs_tarball(&served);
        repo.write(
            "images/mini.toml",
            &format!(
                "[image]\nformats = [\"lxc\"]\nversion = \"1.0\"\n\n[image.base.url]\nurl = \"file://{}\"\n",
                tarball.display()
            ),
        );
        repo.write(
            "modules/site.toml",
            &format!(
                "[module]\ndescription = \"where to deploy\"\n\n[config]\nproxmox.api.url = \"{}\"\nproxmox.api.token = \"{}\"\n",
                cluster.endpoint(),
                cluster.token()
            ),
        );
        repo.write(
            "hosts/db.toml",
            &format!(
                "[host]\nkind = \"lxc\"\nimage = \"mini\"\nnode = \"pve1\"\nvmid = 120\nimports = [\"site\"]\n\n\
                 [host.network.interfaces.eth0]\naddress = [\"192.168.10.22/24\"]\ngateway = \"192.168.10.1\"\n\n\
                 [config]\nproxmox.tags = [\"db\"]\nproxmox.features = [\"nesting\"]\n\
                 proxmox.disks.pgdata = {{ size = \"20GiB\", mountpoint = \"/var/lib/postgresql\" }}\n\
                 health.tcp = \"127.0.0.1:{health_port}\"\nhealth.timeout = 20\n\n\
                 [config.files.\"/etc/motd\"]\ntext = \"generation one\\n\"\n"
            ),
        );
        repo
    }

    fn kiln(&self, cluster: &Cluster, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["--color", "never", "--store"])
            .arg(self.dir.path().join("store"))
            .args(args)
            .current_dir(&self.root)
            .env(SECRET_VAR, cluster.secret())
            .env("XDG_STATE_HOME", self.dir.path().join("state"))
            .env_remove("NO_COLOR")
            .output()
            .expect("run kiln")
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state/kiln")
    }
}

fn write_marker(path: &Path, marker: &[u8]) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all(marker).unwrap();
}

fn read_marker(path: &Path, length: usize) -> Vec<u8> {
    use std::io::Read;
    let mut buffer = vec![0; length];
    std::fs::File::open(path)
        .unwrap()
        .read_exact(&mut buffer)
        .unwrap();
    buffer
}

fn ok(output: &Output, what: &str) -> String {
    assert_eq!(
        output.status.code(),
        Some(0),
        "{what} failed:\n{}\n{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    format!("{}{}", text(&output.stdout), text(&output.stderr))
}

/// Whether every request since `from` changed nothing (GETs only).
fn only_reads(cluster: &Cluster, from: usize) -> Vec<String> {
    cluster.sim.requests()[from..]
        .iter()
        .filter(|r| r.method != "GET")
        .map(|r| format!("{} {}", r.method, r.path))
        .collect()
}

/// Scan every process's argv for `needle` while `running` holds.
fn watch_argv(needle: String, running: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        while running.load(Ordering::Relaxed) {
            if let Ok(entries) = std::fs::read_dir("/proc") {
                for entry in entries.flatten() {
                    if let Ok(argv) = std::fs::read(entry.path().join("cmdline"))
                        && String::from_utf8_lossy(&argv).contains(&needle)
                    {
                        seen.push(String::from_utf8_lossy(&argv).replace('\0', " "));
                    }
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        seen
    })
}

fn grep_tree(root: &Path, needle: &str) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                pending.push(path);
            } else if meta.is_file()
                && std::fs::read(&path).is_ok_and(|b| String::from_utf8_lossy(&b).contains(needle))
            {
                hits.push(path);
            }
        }
    }
    hits
}

#[test]
fn lxc_host_deploys_keeps_its_data_rolls_back_and_never_leaks_the_secret() {
    if !rustix::process::geteuid().is_root() {
        notice("NOTICE: skipping the LXC deploy test: building templates needs root");
        return;
    }
    let cluster = Cluster::start();
    let health = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = health.local_addr().unwrap().port();
    let repo = Repo::new(&cluster, port);
    let secret = cluster.secret();
    let running = Arc::new(AtomicBool::new(true));
    let argv = watch_argv(secret.clone(), running.clone());
    let mut outputs = String::new();

    outputs += &ok(&repo.kiln(&cluster, &["lock"]), "lock");

    // Generation 1: the container is created from the uploaded template.
    let first = repo.kiln(&cluster, &["deploy", "db", "--json"]);
    outputs += &ok(&first, "first deploy");
    let guest = cluster.sim.guest(120).expect("CT 120 exists");
    assert!(guest.running, "{guest:?}");
    let net0 = guest.config["net0"].clone();
    assert!(net0.contains("ip=192.168.10.22/24"), "{net0}");
    let tags = &guest.config["tags"];
    assert!(tags.contains("kiln-g1") && tags.contains("db"), "{tags}");
    assert!(guest.config["description"].contains("kiln-generation: 1"));
    let mp0 = guest.config["mp0"].clone();
    assert!(mp0.contains("mp=/var/lib/postgresql"), "{mp0}");
    // Data written to the mount point's volume must survive new images.
    let data = cluster
        .sim
        .volume_path(mp0.split(',').next().unwrap())
        .expect("the mount point's volume");
    write_marker(&data, b"postgres data, generation 1");
    let templates: Vec<String> = cluster.sim.volumes("local").into_keys().collect();
    assert_eq!(templates.len(), 1, "{templates:?}");
    assert!(
        templates[0].starts_with("local:vztmpl/kiln-db-"),
        "{templates:?}"
    );

    // Unchanged: nothing uploaded, nothing changed.
    let mark = cluster.mark();
    let again = repo.kiln(&cluster, &["deploy", "db"]);
    let said = ok(&again, "unchanged deploy");
    outputs += &said;
    assert!(said.contains("nothing to do"), "{said}");
    assert_eq!(only_reads(&cluster, mark), Vec::<String>::new());

    // Generation 2: a new image; same VMID, MAC, address, data volume.
    repo.write(
        "hosts/db.toml",
        &std::fs::read_to_string(repo.root.join("hosts/db.toml"))
            .unwrap()
            .replace("generation one", "generation two"),
    );
    outputs += &ok(&repo.kiln(&cluster, &["deploy", "db"]), "second deploy");
    let second = cluster.sim.guest(120).expect("CT 120 exists");
    assert!(second.running);
    assert_eq!(second.config["net0"], net0, "MAC and address are kept");
    let kept = second.config["mp0"].clone();
    assert!(kept.contains("mp=/var/lib/postgresql"), "{kept}");
    let moved = cluster
        .sim
        .volume_path(kept.split(',').next().unwrap())
        .expect("the mount point's volume");
    assert_eq!(read_marker(&moved, 27), b"postgres data, generation 1");
    assert!(second.config["tags"].contains("kiln-g2"));
    assert_eq!(
        cluster.sim.guests().len(),
        1,
        "the parking container is gone"
    );

    let listed = ok(&repo.kiln(&cluster, &["generations", "db"]), "generations");
    outputs += &listed;
    assert!(listed.contains("*   2"), "{listed}");
    let diff = ok(&repo.kiln(&cluster, &["diff", "db", "1", "2"]), "diff");
    outputs += &diff;
    assert!(diff.contains("/etc/motd"), "{diff}");

    // Rollback: generation 1 runs again without a rebuild.
    outputs += &ok(&repo.kiln(&cluster, &["rollback", "db"]), "rollback");
    let back = cluster.sim.guest(120).unwrap();
    assert!(back.config["tags"].contains("kiln-g1"), "{:?}", back.config);
    assert!(back.running);
    let status = repo.kiln(&cluster, &["status", "db", "--json"]);
    outputs += &ok(&status, "status");
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["hosts"][0]["state"], "out of date", "{status}");
    assert_eq!(status["hosts"][0]["guest"]["generation"], 1, "{status}");
    assert_eq!(status["hosts"][0]["guest"]["running"], true, "{status}");

    // A failing start: generation 3 fails and the host goes back to 1.
    repo.write(
        "hosts/db.toml",
        &std::fs::read_to_string(repo.root.join("hosts/db.toml"))
            .unwrap()
            .replace("generation two", "generation three"),
    );
    cluster.sim.arm(Fault::FailTask {
        kind: "vzstart".into(),
        message: "startup for container '120' failed".into(),
    });
    let failed = repo.kiln(&cluster, &["deploy", "db"]);
    assert_eq!(failed.status.code(), Some(1), "{}", text(&failed.stderr));
    let said = text(&failed.stderr);
    outputs += &said;
    assert!(said.contains("rolled back to generation 1"), "{said}");
    let after = cluster.sim.guest(120).unwrap();
    assert!(after.running && after.config["tags"].contains("kiln-g1"));

    // A generation whose health check never passes (it checks a port
    // nothing listens on): rolled back to generation 1, whose check passes.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    repo.write(
        "hosts/db.toml",
        &std::fs::read_to_string(repo.root.join("hosts/db.toml"))
            .unwrap()
            .replace(&format!("127.0.0.1:{port}"), &format!("127.0.0.1:{closed}"))
            .replace("health.timeout = 20", "health.timeout = 3"),
    );
    let unhealthy = repo.kiln(&cluster, &["deploy", "db", "--json"]);
    assert_eq!(unhealthy.status.code(), Some(1));
    let said = format!("{}{}", text(&unhealthy.stdout), text(&unhealthy.stderr));
    outputs += &said;
    assert!(
        said.contains("health check") && said.contains("rolled back"),
        "{said}"
    );

    // Every request kiln sent passed the schema (the simulator refuses
    // invalid ones, see below), and none was refused.
    let invalid: Vec<String> = cluster
        .sim
        .requests()
        .iter()
        .filter(|r| !matches!(r.outcome, Outcome::Validated | Outcome::Fault(_)))
        .map(|r| format!("{} {} {:?}", r.method, r.path, r.outcome))
        .collect();
    assert!(invalid.is_empty(), "{invalid:#?}");
    let refused = cluster.runtime.block_on(async {
        reqwest::Client::new()
            .post(format!("{}/nodes/pve1/lxc", cluster.sim.url()))
            .header("Authorization", cluster.sim.authorization())
            .form(&[("vmid", "12"), ("ostemplate", "x")])
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(refused.as_u16(), 400);
    assert!(matches!(
        cluster.sim.requests().last().unwrap().outcome,
        Outcome::Invalid(_)
    ));

    // The secret: not in any output, record, store file or argv.
    running.store(false, Ordering::Relaxed);
    let in_argv = argv.join().unwrap();
    assert!(in_argv.is_empty(), "{in_argv:?}");
    assert!(!outputs.contains(&secret));
    assert_eq!(grep_tree(&repo.state(), &secret), Vec::<PathBuf>::new());
    assert_eq!(
        grep_tree(&repo.dir.path().join("store"), &secret),
        Vec::<PathBuf>::new()
    );
    assert_eq!(grep_tree(&repo.root, &secret), Vec::<PathBuf>::new());
}

#[test]
fn vm_host_keeps_identity_and_data_disks_across_generations_and_gc_frees_volumes() {
    if !have("qemu-img") || !have("xorriso") {
        notice(
            "NOTICE: skipping the VM deploy test: qemu-img or xorriso is not installed (scripts/setup.sh installs them)",
        );
        return;
    }
    let cluster = Cluster::start();
    let repo = Repo::new(&cluster, 9);
    // A "vendor image": 8 MiB of recognisable bytes, as qcow2.
    let served = repo.dir.path().join("served");
    let raw = served.join("vendor.raw");
    let bytes: Vec<u8> = (0..8u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(&raw, &bytes).unwrap();
    let qcow2 = served.join("vendor.qcow2");
    let converted = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow2)
        .output()
        .unwrap();
    assert!(converted.status.success(), "{}", text(&converted.stderr));
    repo.write(
        "images/cloud.toml",
        &format!(
            "[image]\nformats = [\"vm\"]\n\n[image.base.url]\nurl = \"file://{}\"\n",
            qcow2.display()
        ),
    );
    let host = |marker: &str| {
        format!(
            "[host]\nkind = \"vm\"\nimage = \"cloud\"\nnode = \"pve1\"\nvmid = 130\nimports = [\"site\"]\n\n\
             [host.resources]\ncores = 2\nmemory = \"2GiB\"\ndisk = \"16GiB\"\n\n\
             [host.network.interfaces.eth0]\naddress = [\"192.168.10.30/24\"]\ngateway = \"192.168.10.1\"\n\n\
             [config]\nproxmox.disks.data = {{ size = \"50GiB\" }}\ncloud_init.runcmd = [\"echo {marker}\"]\n"
        )
    };
    repo.write("hosts/web.toml", &host("one"));
    ok(&repo.kiln(&cluster, &["lock"]), "lock");
    ok(&repo.kiln(&cluster, &["deploy", "web"]), "first deploy");
    let first = cluster.sim.guest(130).expect("VM 130 exists");
    assert!(first.running);
    let spec: kiln::builders::vm::spec::VmSpec = serde_json::from_slice(
        &std::fs::read(
            std::fs::read_dir(repo.dir.path().join("store"))
                .unwrap()
                .flatten()
                .find(|e| e.file_name().to_string_lossy().ends_with("-web-vm"))
                .unwrap()
                .path()
                .join("vm.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let mac = &spec.macs["eth0"];
    assert!(
        first.config["net0"].contains(mac.as_str()),
        "{:?}",
        first.config
    );
    assert!(
        first.config["ide2"].contains("media=cdrom"),
        "{:?}",
        first.config
    );
    assert!(
        first.config["ide2"].contains("kiln-web-"),
        "{:?}",
        first.config
    );
    assert!(
        first.config["scsi0"].contains("size=16G"),
        "{:?}",
        first.config
    );
    let data = first.config["scsi1"].clone();
    let data_file = cluster
        .sim
        .volume_path(data.split(',').next().unwrap())
        .expect("the data disk's volume");
    write_marker(&data_file, b"docker volumes");
    let efi = first.config["efidisk0"].clone();

    // Generation 2, its disk upload cut off midway: retried and verified.
    repo.write("hosts/web.toml", &host("two"));
    cluster.sim.arm(Fault::DropUpload {
        after_bytes: 256 << 10,
    });
    ok(&repo.kiln(&cluster, &["deploy", "web"]), "second deploy");
    assert!(cluster.sim.armed().is_empty(), "the drop was sprung");
    let second = cluster.sim.guest(130).unwrap();
    assert!(second.running);
    assert_eq!(second.config["net0"], first.config["net0"]);
    assert_eq!(second.config["scsi1"], data, "the data disk is kept");
    assert_eq!(read_marker(&data_file, 14), b"docker volumes");
    assert_eq!(second.config["efidisk0"], efi, "the EFI vars are kept");
    assert_ne!(second.config["scsi0"], first.config["scsi0"]);
    assert!(second.config["ide2"] != first.config["ide2"]);
    assert!(
        !second.config.keys().any(|k| k.starts_with("unused")),
        "{:?}",
        second.config
    );
    // The uploaded disk is the built one, byte for byte.
    let disk_volid = second.config["ide2"]
        .split(',')
        .next()
        .unwrap()
        .replace("-seed.iso", ".qcow2")
        .replace(":iso/", ":import/");
    let uploaded = cluster.sim.volume_path(&disk_volid).expect("disk volume");
    let compare = Command::new("qemu-img")
        .args(["compare", "-f", "qcow2", "-F", "raw"])
        .arg(&uploaded)
        .arg(&raw)
        .output()
        .unwrap();
    assert!(compare.status.success(), "{}", text(&compare.stdout));

    let status = ok(&repo.kiln(&cluster, &["status", "web", "--json"]), "status");
    assert!(status.contains("\"up to date\""), "{status}");

    // gc: generation 1's uploads go, generation 2's stay.
    let before: Vec<String> = cluster.sim.volumes("local").into_keys().collect();
    assert_eq!(before.len(), 4, "{before:?}");
    let gc = ok(
        &repo.kiln(&cluster, &["gc", "--remote", "--keep", "1"]),
        "gc",
    );
    assert!(gc.contains("deleted 2 volumes"), "{gc}");
    let after: Vec<String> = cluster.sim.volumes("local").into_keys().collect();
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(
        after
            .iter()
            .any(|v| second.config["ide2"].starts_with(v.as_str())),
        "{after:?}"
    );
}
