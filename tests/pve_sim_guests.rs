//! The simulator's guests answer as PVE 9.1 does: QEMU and LXC create,
//! config, disks, power, destroy; cluster endpoints and the task list;
//! faults on guest tasks; and a token limited to the documented
//! `KilnDeploy` role can make every call kiln makes, one privilege less
//! cannot.

mod common;

use kiln::proxmox::sim::{Fault, GuestKind, Outcome, SimConfig, Simulator};
use regex::Regex;
use serde_json::{Value, json};

struct Pve {
    sim: Simulator,
    client: reqwest::Client,
}

type Answer = (u16, Value);

impl Pve {
    async fn start() -> Pve {
        Pve::with(SimConfig::default()).await
    }

    async fn with(config: SimConfig) -> Pve {
        Pve {
            sim: Simulator::start(config).await.unwrap(),
            client: reqwest::Client::new(),
        }
    }

    async fn send(&self, method: reqwest::Method, path: &str, form: &[(&str, &str)]) -> Answer {
        let url = format!("{}{path}", self.sim.url());
        let mut request = self
            .client
            .request(method.clone(), url)
            .header("Authorization", self.sim.authorization());
        request = if method == reqwest::Method::GET || method == reqwest::Method::DELETE {
            request.query(form)
        } else {
            request.form(form)
        };
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str, query: &[(&str, &str)]) -> Answer {
        self.send(reqwest::Method::GET, path, query).await
    }

    async fn post(&self, path: &str, form: &[(&str, &str)]) -> Answer {
        self.send(reqwest::Method::POST, path, form).await
    }

    async fn put(&self, path: &str, form: &[(&str, &str)]) -> Answer {
        self.send(reqwest::Method::PUT, path, form).await
    }

    async fn delete(&self, path: &str, query: &[(&str, &str)]) -> Answer {
        self.send(reqwest::Method::DELETE, path, query).await
    }

    /// The task's `exitstatus` (tasks end at once unless a fault hangs
    /// them: then `None`).
    async fn exit(&self, upid: &Value) -> Option<String> {
        let upid = upid.as_str().expect("a UPID");
        let encoded: String = url_encode(upid);
        let (status, body) = self
            .get(&format!("/nodes/pve1/tasks/{encoded}/status"), &[])
            .await;
        assert_eq!(status, 200, "{body}");
        body["data"]["exitstatus"].as_str().map(str::to_owned)
    }

    /// Runs a call that answers a UPID and returns the task's exit.
    async fn task(&self, (status, body): Answer) -> Result<(), String> {
        if status != 200 {
            return Err(format!("{status} {}", body["message"]));
        }
        match self.exit(&body["data"]).await.as_deref() {
            Some("OK") => Ok(()),
            other => Err(format!("task: {other:?}")),
        }
    }

    async fn upload(&self, content: &str, name: &str, bytes: &[u8]) -> Result<(), String> {
        let boundary = "b0undary-guests";
        let mut body = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"content\"\r\n\r\n{content}\r\n"
        )
        .into_bytes();
        body.extend(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"filename\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n").bytes());
        body.extend_from_slice(bytes);
        body.extend(format!("\r\n--{boundary}--\r\n").bytes());
        let response = self
            .client
            .post(format!(
                "{}/nodes/pve1/storage/local/upload",
                self.sim.url()
            ))
            .header("Authorization", self.sim.authorization())
            .header(
                "Content-Type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap_or_default();
        self.task((status, body)).await
    }

    /// The three uploads a deploy starts with.
    async fn seed(&self) -> Result<(), String> {
        self.upload("import", "disk.qcow2", &qcow2(2 << 30)).await?;
        self.upload("iso", "seed.iso", &[7; 4096]).await?;
        self.upload("vztmpl", "debian-13-kiln_1_amd64.tar.zst", b"tar")
            .await
    }

    async fn config(&self, kind: &str, vmid: u32) -> Value {
        let (status, body) = self
            .get(&format!("/nodes/pve1/{kind}/{vmid}/config"), &[])
            .await;
        assert_eq!(status, 200, "{body}");
        body["data"].clone()
    }
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A qcow2 header of this virtual size, and nothing else.
fn qcow2(virtual_size: u64) -> Vec<u8> {
    let mut bytes = b"QFI\xfb\x00\x00\x00\x03".to_vec();
    bytes.resize(24, 0);
    bytes.extend(virtual_size.to_be_bytes());
    bytes.resize(512, 0);
    bytes
}

const VM: &[(&str, &str)] = &[
    ("vmid", "100"),
    ("name", "web"),
    ("memory", "2048"),
    ("cores", "2"),
    ("scsihw", "virtio-scsi-single"),
    (
        "scsi0",
        "local-lvm:0,import-from=local:import/disk.qcow2,discard=on",
    ),
    ("ide2", "local:iso/seed.iso,media=cdrom"),
    ("net0", "virtio,bridge=vmbr0"),
    ("tags", "Web;kiln,web"),
    ("description", "built by kiln\nline two"),
];

#[tokio::test]
async fn qemu_create_imports_the_disk_and_stores_the_config_as_pve_writes_it() {
    let pve = Pve::start().await;
    pve.seed().await.unwrap();
    let (_, next) = pve.get("/cluster/nextid", &[]).await;
    assert_eq!(next["data"], "100", "a JSON string, as PVE's");
    pve.task(pve.post("/nodes/pve1/qemu", VM).await)
        .await
        .unwrap();

    let config = pve.config("qemu", 100).await;
    assert_eq!(
        config["scsi0"],
        "local-lvm:vm-100-disk-0,discard=on,size=2G"
    );
    assert_eq!(config["ide2"], "local:iso/seed.iso,media=cdrom,size=4K");
    let net = config["net0"].as_str().unwrap();
    assert!(
        Regex::new(r"^virtio=BC:24:11(:[0-9A-F]{2}){3},bridge=vmbr0$")
            .unwrap()
            .is_match(net),
        "{net}"
    );
    assert_eq!(config["tags"], "kiln;web");
    assert_eq!(config["description"], "built by kiln\nline two");
    assert_eq!(config["boot"], "order=scsi0;ide2;net0");
    assert_eq!(config["cores"], 2, "integers are JSON numbers");
    assert_eq!(config["memory"], "2048", "a property string in 9.x");
    assert!(config["digest"].as_str().is_some_and(|d| d.len() == 40));
    assert!(config["smbios1"].as_str().unwrap().starts_with("uuid="));

    let volumes = pve.sim.volumes("local-lvm");
    let disk = &volumes["local-lvm:vm-100-disk-0"];
    assert_eq!(
        (disk.content.as_str(), disk.vmid, disk.size),
        ("images", Some(100), 2 << 30)
    );
    let guest = pve.sim.guest(100).unwrap();
    assert_eq!((guest.kind, guest.running), (GuestKind::Qemu, false));
    assert!(!guest.config.contains_key("digest"));

    // A MAC given is kept.
    let (status, _) = pve
        .put(
            "/nodes/pve1/qemu/100/config",
            &[("net1", "virtio=BC:24:11:00:00:01,bridge=vmbr0")],
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        pve.config("qemu", 100).await["net1"],
        "virtio=BC:24:11:00:00:01,bridge=vmbr0"
    );

    let (status, body) = pve.get("/cluster/nextid", &[("vmid", "100")]).await;
    assert_eq!(
        (status, &body["errors"]),
        (400, &json!({"vmid": "VM 100 already exists"}))
    );
    assert_eq!(pve.get("/cluster/nextid", &[]).await.1["data"], "101");
    let (status, body) = pve.post("/nodes/pve1/qemu", VM).await;
    assert_eq!(status, 500);
    assert_eq!(
        body["message"],
        "unable to create VM 100 - VM 100 already exists on node 'pve1'\n"
    );

    let (_, resources) = pve.get("/cluster/resources", &[("type", "vm")]).await;
    let item = &resources["data"][0];
    assert_eq!(
        (
            &item["id"],
            &item["type"],
            &item["vmid"],
            &item["name"],
            &item["status"]
        ),
        (
            &json!("qemu/100"),
            &json!("qemu"),
            &json!(100),
            &json!("web"),
            &json!("stopped")
        )
    );
    assert_eq!(
        (&item["tags"], &item["maxdisk"], &item["template"]),
        (&json!("kiln;web"), &json!(2u64 << 30), &json!(0))
    );
}

#[tokio::test]
async fn qemu_create_refuses_bad_disks_as_pve_does() {
    let pve = Pve::start().await;
    pve.seed().await.unwrap();
    let create = |key: &'static str, value: &'static str| {
        let pve = &pve;
        async move {
            pve.post("/nodes/pve1/qemu", &[("vmid", "100"), (key, value)])
                .await
        }
    };
    let (status, body) = create("ide2", "local:iso/seed.iso").await;
    assert_eq!(status, 400);
    assert_eq!(
        body["errors"]["ide2"],
        "explicit 'media=cdrom' is required for iso images"
    );
    let (_, body) = create("scsi0", "local-lvm:2,import-from=local:import/disk.qcow2").await;
    assert_eq!(
        body["errors"]["scsi0"],
        "'import-from' requires special syntax - use <storage ID>:0,import-from=<source>"
    );
    let (_, body) = create("scsi0", "local:4").await;
    assert_eq!(
        body["errors"]["storage"],
        "storage 'local' does not support vm images"
    );
    let (_, body) = create("scsi0", "local-lvm:0,import-from=local:iso/seed.iso").await;
    assert_eq!(
        body["errors"]["scsi0"],
        "local:iso/seed.iso has wrong type 'iso' - needs to be 'images' or 'import'"
    );
    // A missing source fails the task, which leaves nothing behind.
    let answer = create("scsi0", "local-lvm:0,import-from=local:import/gone.qcow2").await;
    let failed = pve.task(answer).await.unwrap_err();
    assert!(
        failed.contains("cannot import from 'local:import/gone.qcow2'"),
        "{failed}"
    );
    assert!(pve.sim.guests().is_empty());
    assert!(pve.sim.volumes("local-lvm").is_empty());
}

#[tokio::test]
async fn a_replaced_disk_becomes_unused0_and_deleting_it_frees_the_volume() {
    let pve = Pve::start().await;
    let create = [
        ("vmid", "100"),
        ("scsi0", "local-lvm:1"),
        ("net0", "virtio,bridge=vmbr0"),
    ];
    pve.task(pve.post("/nodes/pve1/qemu", &create).await)
        .await
        .unwrap();
    let digest = pve.config("qemu", 100).await["digest"]
        .as_str()
        .unwrap()
        .to_owned();

    let (status, body) = pve
        .put(
            "/nodes/pve1/qemu/100/config",
            &[("scsi0", "local-lvm:2"), ("digest", &digest)],
        )
        .await;
    assert_eq!(
        (status, &body["data"]),
        (200, &Value::Null),
        "PUT is synchronous"
    );
    let config = pve.config("qemu", 100).await;
    assert_eq!(config["scsi0"], "local-lvm:vm-100-disk-1,size=2G");
    assert_eq!(config["unused0"], "local-lvm:vm-100-disk-0");

    let (status, body) = pve
        .put(
            "/nodes/pve1/qemu/100/config",
            &[("name", "x"), ("digest", &digest)],
        )
        .await;
    assert_eq!(status, 500);
    assert_eq!(
        body["message"],
        "checksum mismatch (file change by other user?)\n"
    );

    let answer = pve
        .post("/nodes/pve1/qemu/100/config", &[("delete", "unused0")])
        .await;
    pve.task(answer).await.unwrap();
    assert!(pve.config("qemu", 100).await.get("unused0").is_none());
    let volids: Vec<String> = pve.sim.volumes("local-lvm").into_keys().collect();
    assert_eq!(volids, ["local-lvm:vm-100-disk-1"]);

    let resize = |size: &'static str| {
        let pve = &pve;
        async move {
            pve.put(
                "/nodes/pve1/qemu/100/resize",
                &[("disk", "scsi0"), ("size", size)],
            )
            .await
        }
    };
    pve.task(resize("+1G").await).await.unwrap();
    assert_eq!(
        pve.config("qemu", 100).await["scsi0"],
        "local-lvm:vm-100-disk-1,size=3G"
    );
    let failed = pve.task(resize("1G").await).await.unwrap_err();
    assert_eq!(failed, "task: Some(\"shrinking disks is not supported\")");
}

#[tokio::test]
async fn qemu_power_status_and_destroy() {
    let pve = Pve::start().await;
    pve.task(
        pve.post(
            "/nodes/pve1/qemu",
            &[("vmid", "100"), ("scsi0", "local-lvm:1")],
        )
        .await,
    )
    .await
    .unwrap();
    pve.task(pve.post("/nodes/pve1/qemu/100/status/start", &[]).await)
        .await
        .unwrap();
    let (_, status) = pve.get("/nodes/pve1/qemu/100/status/current", &[]).await;
    assert_eq!(
        (
            &status["data"]["status"],
            &status["data"]["qmpstatus"],
            &status["data"]["name"]
        ),
        (&json!("running"), &json!("running"), &json!("VM 100"))
    );
    let again = pve
        .task(pve.post("/nodes/pve1/qemu/100/status/start", &[]).await)
        .await;
    assert_eq!(again.unwrap_err(), "task: Some(\"VM 100 already running\")");
    let (status, body) = pve.delete("/nodes/pve1/qemu/100", &[]).await;
    assert_eq!(
        (status, body["message"].as_str()),
        (500, Some("VM 100 is running - destroy failed\n"))
    );
    pve.task(pve.post("/nodes/pve1/qemu/100/status/shutdown", &[]).await)
        .await
        .unwrap();
    assert!(!pve.sim.guest(100).unwrap().running);
    pve.task(pve.delete("/nodes/pve1/qemu/100", &[("purge", "1")]).await)
        .await
        .unwrap();
    assert!(pve.sim.guest(100).is_none());
    assert!(pve.sim.volumes("local-lvm").is_empty());
    let (status, body) = pve.get("/nodes/pve1/qemu/100/config", &[]).await;
    assert_eq!(status, 500);
    assert_eq!(
        body["message"],
        "Configuration file 'nodes/pve1/qemu-server/100.conf' does not exist\n"
    );
}

const CT: &[(&str, &str)] = &[
    ("vmid", "120"),
    ("ostemplate", "local:vztmpl/debian-13-kiln_1_amd64.tar.zst"),
    ("hostname", "db"),
    ("rootfs", "local-lvm:4"),
    ("mp0", "local-lvm:1,mp=/data,backup=1"),
    ("net0", "name=eth0,bridge=vmbr0,ip=dhcp"),
    ("features", "nesting=1"),
    ("tags", "B;a"),
];

#[tokio::test]
async fn lxc_create_config_move_volume_and_destroy() {
    let pve = Pve::start().await;
    pve.seed().await.unwrap();
    pve.task(pve.post("/nodes/pve1/lxc", CT).await)
        .await
        .unwrap();
    let config = pve.config("lxc", 120).await;
    assert_eq!(config["rootfs"], "local-lvm:vm-120-disk-0,size=4G");
    assert_eq!(
        config["mp0"],
        "local-lvm:vm-120-disk-1,mp=/data,backup=1,size=1G"
    );
    assert_eq!(config["unprivileged"], 1);
    assert_eq!(
        (&config["ostype"], &config["arch"], &config["tags"]),
        (&json!("debian"), &json!("amd64"), &json!("a;b"))
    );
    let net = config["net0"].as_str().unwrap();
    assert!(
        Regex::new(r"^name=eth0,bridge=vmbr0,hwaddr=BC:24:11(:[0-9A-F]{2}){3},ip=dhcp,type=veth$")
            .unwrap()
            .is_match(net),
        "{net}"
    );
    assert_eq!(
        pve.sim.volumes("local-lvm")["local-lvm:vm-120-disk-0"].content,
        "rootdir"
    );

    let (status, body) = pve.post("/nodes/pve1/lxc", CT).await;
    assert_eq!(
        (status, body["message"].as_str()),
        (500, Some("CT 120 already exists on node 'pve1'\n"))
    );

    let second = [
        ("vmid", "121"),
        ("ostemplate", CT[1].1),
        ("rootfs", "local-lvm:2"),
    ];
    pve.task(pve.post("/nodes/pve1/lxc", &second).await)
        .await
        .unwrap();
    let (status, body) = pve
        .post(
            "/nodes/pve1/lxc/120/move_volume",
            &[
                ("volume", "rootfs"),
                ("target-vmid", "121"),
                ("target-volume", "rootfs"),
            ],
        )
        .await;
    assert_eq!(
        (status, body["message"].as_str()),
        (500, Some("Cannot move to/from 'rootfs'\n"))
    );
    let moved = pve
        .post(
            "/nodes/pve1/lxc/120/move_volume",
            &[
                ("volume", "mp0"),
                ("target-vmid", "121"),
                ("target-volume", "mp1"),
            ],
        )
        .await;
    pve.task(moved).await.unwrap();
    assert!(pve.config("lxc", 120).await.get("mp0").is_none());
    assert_eq!(
        pve.config("lxc", 121).await["mp1"],
        "local-lvm:vm-121-disk-1,mp=/data,backup=1,size=1G"
    );
    let volume = &pve.sim.volumes("local-lvm")["local-lvm:vm-121-disk-1"];
    assert_eq!(volume.vmid, Some(121));

    // A replaced mount point's volume becomes unused0; deleting it frees it.
    let (status, _) = pve
        .put(
            "/nodes/pve1/lxc/121/config",
            &[("mp1", "local-lvm:1,mp=/data")],
        )
        .await;
    assert_eq!(status, 200);
    let config = pve.config("lxc", 121).await;
    assert_eq!(config["unused0"], "local-lvm:vm-121-disk-1");
    let (status, _) = pve
        .put("/nodes/pve1/lxc/121/config", &[("delete", "unused0")])
        .await;
    assert_eq!(status, 200);
    assert!(
        !pve.sim
            .volumes("local-lvm")
            .contains_key("local-lvm:vm-121-disk-1")
    );

    pve.task(pve.post("/nodes/pve1/lxc/120/status/start", &[]).await)
        .await
        .unwrap();
    let (status, body) = pve.post("/nodes/pve1/lxc/120/status/start", &[]).await;
    assert_eq!(
        (status, body["message"].as_str()),
        (500, Some("CT 120 already running\n"))
    );
    let (_, current) = pve.get("/nodes/pve1/lxc/120/status/current", &[]).await;
    assert_eq!(
        (&current["data"]["status"], &current["data"]["name"]),
        (&json!("running"), &json!("db"))
    );
    let (status, body) = pve.delete("/nodes/pve1/lxc/120", &[]).await;
    assert_eq!(
        (status, body["message"].as_str()),
        (
            500,
            Some("unable to destroy CT 120 - container is running\n")
        )
    );
    pve.task(
        pve.delete("/nodes/pve1/lxc/120", &[("force", "1"), ("purge", "1")])
            .await,
    )
    .await
    .unwrap();
    assert!(pve.sim.guest(120).is_none());
    assert!(
        !pve.sim
            .volumes("local-lvm")
            .contains_key("local-lvm:vm-120-disk-0")
    );
    let (status, body) = pve.post("/nodes/pve1/lxc/121/status/stop", &[]).await;
    assert_eq!(
        (status, body["message"].as_str()),
        (500, Some("CT 121 not running\n"))
    );
}

#[tokio::test]
async fn lxc_features_other_than_nesting_are_root_only() {
    let pve = Pve::start().await;
    pve.seed().await.unwrap();
    let mut create: Vec<(&str, &str)> = CT.to_vec();
    create.retain(|(k, _)| *k != "features");
    create.push(("features", "nesting=1,keyctl=1"));
    let (status, body) = pve.post("/nodes/pve1/lxc", &create).await;
    assert_eq!(status, 403);
    assert_eq!(
        body["message"],
        "Permission check failed (changing feature flags (except nesting) is only allowed for root@pam)\n"
    );
    let privileged = [
        ("vmid", "130"),
        ("ostemplate", CT[1].1),
        ("storage", "local-lvm"),
        ("unprivileged", "0"),
    ];
    let (status, _) = pve.post("/nodes/pve1/lxc", &privileged).await;
    assert_eq!(status, 200, "the default token holds Sys.Modify on /");
}

#[tokio::test]
async fn guest_task_faults_change_nothing() {
    let pve = Pve::start().await;
    pve.seed().await.unwrap();
    pve.task(
        pve.post(
            "/nodes/pve1/qemu",
            &[("vmid", "100"), ("scsi0", "local-lvm:1")],
        )
        .await,
    )
    .await
    .unwrap();
    pve.sim.arm(Fault::FailTask {
        kind: "qmstart".into(),
        message: "KVM missing".into(),
    });
    let failed = pve
        .task(pve.post("/nodes/pve1/qemu/100/status/start", &[]).await)
        .await;
    assert_eq!(failed.unwrap_err(), "task: Some(\"KVM missing\")");
    assert!(!pve.sim.guest(100).unwrap().running);

    pve.sim.arm(Fault::FailTask {
        kind: "vzcreate".into(),
        message: "tar failed".into(),
    });
    let failed = pve.task(pve.post("/nodes/pve1/lxc", CT).await).await;
    assert_eq!(failed.unwrap_err(), "task: Some(\"tar failed\")");
    assert!(pve.sim.guest(120).is_none());
    assert_eq!(pve.sim.volumes("local-lvm").len(), 1, "only VM 100's disk");

    pve.sim.arm(Fault::TaskNeverEnds {
        kind: "qmcreate".into(),
    });
    let (_, body) = pve
        .post(
            "/nodes/pve1/qemu",
            &[("vmid", "101"), ("scsi0", "local-lvm:1")],
        )
        .await;
    assert_eq!(pve.exit(&body["data"]).await, None, "still running");
    assert!(pve.sim.guest(101).is_none());

    let (_, tasks) = pve
        .get("/nodes/pve1/tasks", &[("source", "all"), ("vmid", "101")])
        .await;
    assert_eq!(tasks["data"][0]["status"], "RUNNING");
    let (_, tasks) = pve
        .get("/nodes/pve1/tasks", &[("typefilter", "qmstart")])
        .await;
    let item = &tasks["data"][0];
    assert_eq!(
        (
            &item["type"],
            &item["id"],
            &item["user"],
            &item["tokenid"],
            &item["status"]
        ),
        (
            &json!("qmstart"),
            &json!("100"),
            &json!("kiln@pve"),
            &json!("ci"),
            &json!("KVM missing")
        )
    );
    assert_eq!(tasks["total"], 1);
    let (_, tasks) = pve.get("/nodes/pve1/tasks", &[("errors", "1")]).await;
    assert_eq!(tasks["total"], 2, "the failed qmstart and vzcreate");
}

/// Every call `kiln deploy` makes, in order; the first failure.
async fn deploy(pve: &Pve) -> Result<(), String> {
    let ok = |(status, body): Answer| {
        if status == 200 {
            Ok(body)
        } else {
            Err(format!("{status} {}", body["message"]))
        }
    };
    pve.seed().await?;
    ok(pve
        .get(
            "/nodes/pve1/storage/local/content",
            &[("content", "import")],
        )
        .await)?;
    ok(pve.get("/cluster/nextid", &[("vmid", "100")]).await)?;
    pve.task(pve.post("/nodes/pve1/qemu", VM).await).await?;
    ok(pve.get("/nodes/pve1/qemu/100/config", &[]).await)?;
    ok(pve
        .put(
            "/nodes/pve1/qemu/100/config",
            &[("ide2", "none,media=cdrom")],
        )
        .await)?;
    pve.task(
        pve.put(
            "/nodes/pve1/qemu/100/resize",
            &[("disk", "scsi0"), ("size", "+1G")],
        )
        .await,
    )
    .await?;
    pve.task(pve.post("/nodes/pve1/qemu/100/status/start", &[]).await)
        .await?;
    ok(pve.get("/nodes/pve1/qemu/100/status/current", &[]).await)?;
    let resources = ok(pve.get("/cluster/resources", &[("type", "vm")]).await)?;
    if resources["data"].as_array().is_none_or(Vec::is_empty) {
        return Err("cluster/resources lists no VM".into());
    }
    pve.task(pve.post("/nodes/pve1/qemu/100/status/shutdown", &[]).await)
        .await?;
    pve.task(pve.post("/nodes/pve1/lxc", CT).await).await?;
    let second = [
        ("vmid", "121"),
        ("ostemplate", CT[1].1),
        ("rootfs", "local-lvm:2"),
    ];
    pve.task(pve.post("/nodes/pve1/lxc", &second).await).await?;
    ok(pve
        .put(
            "/nodes/pve1/lxc/121/config",
            &[("memory", "1024"), ("hostname", "db2")],
        )
        .await)?;
    let moved = [
        ("volume", "mp0"),
        ("target-vmid", "121"),
        ("target-volume", "mp0"),
    ];
    pve.task(pve.post("/nodes/pve1/lxc/120/move_volume", &moved).await)
        .await?;
    pve.task(pve.post("/nodes/pve1/lxc/121/status/start", &[]).await)
        .await?;
    ok(pve.get("/nodes/pve1/lxc/121/status/current", &[]).await)?;
    pve.task(pve.post("/nodes/pve1/lxc/121/status/stop", &[]).await)
        .await?;
    ok(pve
        .get("/nodes/pve1/tasks", &[("typefilter", "vzcreate")])
        .await)?;
    pve.task(pve.delete("/nodes/pve1/lxc/120", &[("purge", "1")]).await)
        .await?;
    pve.task(pve.delete("/nodes/pve1/lxc/121", &[]).await)
        .await?;
    pve.task(
        pve.delete(
            "/nodes/pve1/qemu/100",
            &[("purge", "1"), ("destroy-unreferenced-disks", "1")],
        )
        .await,
    )
    .await?;
    pve.task(
        pve.delete(
            "/nodes/pve1/storage/local/content/local:import/disk.qcow2",
            &[],
        )
        .await,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kiln_deploy_role_suffices_and_every_privilege_in_it_is_needed() {
    let role = common::documented_role();
    assert!(role.len() > 5, "{role:?}");
    let pve = Pve::with(common::limited(&role)).await;
    deploy(&pve).await.unwrap();
    assert!(pve.sim.guests().is_empty());

    let mut runs = tokio::task::JoinSet::new();
    for missing in role.clone() {
        let fewer: Vec<String> = role.iter().filter(|p| **p != missing).cloned().collect();
        runs.spawn(async move {
            let pve = Pve::with(common::limited(&fewer)).await;
            (missing, deploy(&pve).await)
        });
    }
    while let Some(run) = runs.join_next().await {
        let (missing, result) = run.unwrap();
        let failure = result.expect_err(&missing);
        assert!(
            failure.contains("Permission check failed"),
            "without {missing}: {failure}"
        );
    }

    // The 403 names the path and privilege, as raise_perm_exc does.
    let fewer: Vec<String> = role
        .iter()
        .filter(|p| *p != "VM.PowerMgmt")
        .cloned()
        .collect();
    let pve = Pve::with(common::limited(&fewer)).await;
    pve.task(pve.post("/nodes/pve1/qemu", &[("vmid", "100")]).await)
        .await
        .unwrap();
    let (status, body) = pve.post("/nodes/pve1/qemu/100/status/start", &[]).await;
    assert_eq!(
        (status, body),
        (
            403,
            json!({"data": null, "message": "Permission check failed (/vms/100, VM.PowerMgmt)\n"})
        )
    );
    let logged = pve.sim.requests().pop().unwrap();
    assert_eq!((logged.status, logged.outcome), (403, Outcome::Forbidden));
}
