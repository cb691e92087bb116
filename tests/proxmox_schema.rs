//! kiln's Proxmox requests against Proxmox VE's published API schema
//! (`tests/fixtures/proxmox/`, see PROVENANCE.md there): realistic requests
//! pass, and each kind of bad one fails naming the parameter, with PVE's
//! message.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::PathBuf;
use std::sync::LazyLock;

use kiln::proxmox::schema::INDEXED_PARAMETERS;
use kiln::proxmox::{ApiSchema, Violation};

fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/proxmox")
        .join(name)
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(fixture_path(name)).unwrap()
}

fn gunzip(name: &str) -> String {
    let file = std::fs::File::open(fixture_path(name)).unwrap();
    let mut text = String::new();
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut text)
        .unwrap();
    text
}

/// kiln's methods, PVE 9.1, verbatim.
static PVE91: LazyLock<ApiSchema> = LazyLock::new(|| {
    ApiSchema::from_json(
        &fixture("pve-apidata-9.1.methods.json"),
        &fixture("pve-api-formats.json"),
    )
    .unwrap()
});

/// Every method of PVE 8.4, parameters only.
static PVE84: LazyLock<ApiSchema> = LazyLock::new(|| {
    ApiSchema::from_json(
        &gunzip("pve-apidata-8.4.params.json.gz"),
        &fixture("pve-api-formats.json"),
    )
    .unwrap()
});

type Pairs<'a> = &'a [(&'a str, &'a str)];

/// (method, path, parameters, the parameter refused, PVE's message)
type Refusal<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, &'a str, &'a str);

fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn check(api: &ApiSchema, method: &str, path: &str, pairs: &[(&str, &str)]) -> Vec<Violation> {
    let schema = api
        .method(method, path)
        .unwrap_or_else(|| panic!("no method {method} {path}"));
    schema.validate(&params(pairs))
}

fn assert_accepted(api: &ApiSchema, method: &str, path: &str, pairs: &[(&str, &str)]) {
    let violations = check(api, method, path, pairs);
    assert!(
        violations.is_empty(),
        "{method} {path} refused: {violations:#?}"
    );
}

/// The one violation, as (parameter, message).
fn refusal(method: &str, path: &str, pairs: &[(&str, &str)]) -> (String, String) {
    let violations = check(&PVE91, method, path, pairs);
    assert_eq!(
        violations.len(),
        1,
        "{method} {path} {pairs:?}: {violations:#?}"
    );
    let Violation { parameter, message } = violations.into_iter().next().unwrap();
    (parameter, message)
}

const VM_CREATE: &[(&str, &str)] = &[
    ("vmid", "9000"),
    ("name", "noble-tpl"),
    ("cores", "2"),
    ("sockets", "1"),
    ("memory", "2048"),
    ("machine", "q35"),
    ("bios", "ovmf"),
    ("efidisk0", "local-lvm:1,efitype=4m,pre-enrolled-keys=0"),
    ("scsihw", "virtio-scsi-single"),
    (
        "scsi0",
        "local-lvm:0,import-from=local:import/noble-20250101.qcow2,discard=on,ssd=on,iothread=1",
    ),
    ("ide2", "local:iso/seed.iso,media=cdrom"),
    ("net0", "virtio=BC:24:11:00:00:01,bridge=vmbr0,firewall=1"),
    ("agent", "enabled=1,fstrim_cloned_disks=1"),
    ("tags", "kiln;img-noble;v20250101"),
    ("serial0", "socket"),
    ("vga", "serial0"),
    ("ostype", "l26"),
    ("boot", "order=scsi0;ide2;net0"),
    ("onboot", "1"),
    ("description", "built by kiln"),
];

#[test]
fn both_schemas_load_with_every_method() {
    let pve91 = ApiSchema::from_json(
        &gunzip("pve-apidata-9.1.params.json.gz"),
        &fixture("pve-api-formats.json"),
    )
    .unwrap();
    assert_eq!(pve91.methods().count(), 649);
    assert_eq!(PVE84.methods().count(), 605);
    assert_eq!(PVE91.methods().count(), 23);
}

/// Property names of every method, by "METHOD /path".
fn parameter_names(tree: &serde_json::Value) -> BTreeMap<String, BTreeSet<String>> {
    let mut names = BTreeMap::new();
    let mut stack = tree.as_array().unwrap().clone();
    while let Some(node) = stack.pop() {
        stack.extend(node["children"].as_array().cloned().unwrap_or_default());
        for (method, info) in node["info"].as_object().into_iter().flatten() {
            let properties = info["parameters"]["properties"].as_object();
            let keys = properties
                .into_iter()
                .flat_map(|p| p.keys().cloned())
                .collect();
            names.insert(format!("{method} {}", node["path"].as_str().unwrap()), keys);
        }
    }
    names
}

/// The stripped all-methods fixture lost no parameter of the verbatim one.
#[test]
fn stripping_documentation_keeps_every_parameter() {
    let verbatim =
        parameter_names(&serde_json::from_str(&fixture("pve-apidata-9.1.methods.json")).unwrap());
    let stripped =
        parameter_names(&serde_json::from_str(&gunzip("pve-apidata-9.1.params.json.gz")).unwrap());
    assert_eq!(verbatim.len(), 23);
    for (method, names) in verbatim {
        assert_eq!(stripped[&method], names, "{method}");
    }
}

#[test]
fn kiln_methods_check_every_format_they_use() {
    // Time zones come from the node's zone.tab: not knowable offline.
    let knowable_only_on_a_node = BTreeSet::from(["pve-ct-timezone".to_owned()]);
    for api in [&*PVE91, &*PVE84] {
        for method in PVE91.methods() {
            let method = api
                .methods()
                .find(|m| {
                    m.http_method() == method.http_method()
                        && m.path_template() == method.path_template()
                })
                .unwrap();
            let unchecked = method.unchecked_formats();
            assert!(
                unchecked.is_subset(&knowable_only_on_a_node),
                "{} {}: {unchecked:?}",
                method.http_method(),
                method.path_template()
            );
        }
    }
}

/// Where a description states an index range ("n is 0 to 30"), it agrees
/// with INDEXED_PARAMETERS (which comes from the uncollapsed dump).
#[test]
fn stated_index_ranges_agree_with_the_table() {
    let tree: serde_json::Value =
        serde_json::from_str(&fixture("pve-apidata-9.1.methods.json")).unwrap();
    let stated = regex::Regex::new(r"\(n is 0 to (\d+)\)").unwrap();
    let mut compared = 0;
    let mut stack = tree.as_array().unwrap().clone();
    while let Some(node) = stack.pop() {
        stack.extend(node["children"].as_array().cloned().unwrap_or_default());
        for method in node["info"]
            .as_object()
            .into_iter()
            .flat_map(|m| m.values())
        {
            let Some(properties) = method["parameters"]["properties"].as_object() else {
                continue;
            };
            for (name, property) in properties {
                let Some(prefix) = name.strip_suffix("[n]") else {
                    continue;
                };
                let description = property["description"].as_str().unwrap_or_default();
                let Some(max) = stated.captures(description) else {
                    continue;
                };
                let count = INDEXED_PARAMETERS
                    .iter()
                    .find(|(p, _)| *p == prefix)
                    .unwrap()
                    .1;
                assert_eq!(max[1].parse::<u32>().unwrap() + 1, count, "{name}");
                compared += 1;
            }
        }
    }
    assert!(compared >= 6, "{compared}");
}

#[test]
fn a_vm_template_create_passes_on_9_1_and_8_4() {
    for api in [&*PVE91, &*PVE84] {
        assert_accepted(api, "POST", "/nodes/pve1/qemu", VM_CREATE);
    }
    // The cloud-init flavour: a PVE cloud-init drive and ipconfig.
    assert_accepted(
        &PVE91,
        "POST",
        "/nodes/pve1/qemu",
        &[
            ("vmid", "9001"),
            ("ide2", "local-lvm:cloudinit"),
            ("ciuser", "ubuntu"),
            ("sshkeys", "ssh-ed25519%20AAAAC3Nza%20me%40host"),
            ("ipconfig0", "ip=10.0.0.5/24,gw=10.0.0.1,ip6=auto"),
            ("nameserver", "10.0.0.1 fd00::1"),
            ("cpu", "x86-64-v2-AES"),
            ("numa", "0"),
            ("hotplug", "network,disk,usb"),
            ("startup", "order=2,up=30"),
            ("net31", "e1000,bridge=vmbr1,tag=20,link_down=yes"),
            ("scsi30", "local-lvm:8,backup=no"),
        ],
    );
}

#[test]
fn an_lxc_create_from_a_template_passes() {
    let create = [
        ("vmid", "200"),
        ("ostemplate", "local:vztmpl/myimg-1.4.0_amd64.tar.zst"),
        ("hostname", "app1"),
        ("rootfs", "local-lvm:8"),
        ("mp0", "tank:100,mp=/srv,backup=1"),
        (
            "net0",
            "name=eth0,bridge=vmbr0,ip=dhcp,ip6=auto,hwaddr=BC:24:11:00:00:02,firewall=1",
        ),
        ("features", "nesting=1,keyctl=1"),
        ("unprivileged", "1"),
        ("tags", "kiln img-myimg,v1.4.0"),
        (
            "ssh-public-keys",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5 me@host\n",
        ),
        ("cores", "2"),
        ("memory", "1024"),
        ("swap", "0"),
        ("onboot", "1"),
        ("timezone", "Europe/Vienna"),
    ];
    for api in [&*PVE91, &*PVE84] {
        assert_accepted(api, "POST", "/nodes/pve1/lxc", &create);
    }
}

#[test]
fn uploads_with_a_checksum_pass() {
    for (content, filename) in [
        ("vztmpl", "myimg-1.4.0_amd64.tar.zst"),
        ("iso", "web1-seed.iso"),
        ("import", "noble-20250101.qcow2"),
    ] {
        assert_accepted(
            &PVE91,
            "POST",
            "/nodes/pve1/storage/local/upload",
            &[
                ("content", content),
                ("filename", filename),
                (
                    "checksum",
                    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                ),
                ("checksum-algorithm", "sha256"),
            ],
        );
    }
}

#[test]
fn the_rest_of_the_deploy_flow_passes() {
    let upid = "UPID:pve1:00003558:071F1869:6857C4E4:qmcreate:9000:deploy@pve!ci:";
    let cases: &[(&str, String, Pairs)] = &[
        (
            "POST",
            "/nodes/pve1/storage/local/download-url".into(),
            &[
                ("content", "iso"),
                ("filename", "debian.iso"),
                ("url", "https://example.org/debian.iso"),
                ("checksum", "abc"),
                ("checksum-algorithm", "sha512"),
                ("verify-certificates", "1"),
            ],
        ),
        (
            "GET",
            "/nodes/pve1/storage/local/content".into(),
            &[("content", "iso")],
        ),
        (
            "DELETE",
            "/nodes/pve1/storage/local/content/local:iso/web1-seed.iso".into(),
            &[],
        ),
        (
            "PUT",
            "/nodes/pve1/qemu/9000/config".into(),
            &[("delete", "ide2,unused0"), ("ipconfig0", "ip=dhcp")],
        ),
        (
            "POST",
            "/nodes/pve1/qemu/9000/template".into(),
            &[("disk", "scsi0")],
        ),
        (
            "POST",
            "/nodes/pve1/qemu/9000/clone".into(),
            &[("newid", "123"), ("name", "web1"), ("full", "0")],
        ),
        ("POST", "/nodes/pve1/qemu/123/status/start".into(), &[]),
        (
            "PUT",
            "/nodes/pve1/lxc/200/config".into(),
            &[("tags", "kiln"), ("delete", "mp0")],
        ),
        ("POST", "/nodes/pve1/lxc/200/template".into(), &[]),
        ("POST", "/nodes/pve1/lxc/200/status/start".into(), &[]),
        ("GET", format!("/nodes/pve1/tasks/{upid}/status"), &[]),
        (
            "GET",
            format!("/nodes/pve1/tasks/{upid}/log"),
            &[("start", "0"), ("limit", "500")],
        ),
        (
            "GET",
            "/nodes/pve1/tasks".into(),
            &[
                ("vmid", "200"),
                ("typefilter", "vztemplate"),
                ("source", "all"),
            ],
        ),
        (
            "DELETE",
            "/nodes/pve1/qemu/123".into(),
            &[("purge", "1"), ("destroy-unreferenced-disks", "1")],
        ),
        (
            "DELETE",
            "/nodes/pve1/lxc/200".into(),
            &[("purge", "1"), ("force", "1")],
        ),
        ("GET", "/cluster/nextid".into(), &[]),
        ("GET", "/cluster/resources".into(), &[("type", "vm")]),
    ];
    for (method, path, pairs) in cases {
        assert_accepted(&PVE91, method, path, pairs);
    }
    let delete = PVE91
        .method(
            "DELETE",
            "/nodes/pve1/storage/local/content/local:iso/web1-seed.iso",
        )
        .unwrap();
    assert_eq!(
        delete.path_parameters()["volume"],
        "local:iso/web1-seed.iso"
    );
    assert!(
        PVE91
            .method("GET", "/nodes/pve1/qemu/9000/nonsense")
            .is_none()
    );
}

#[test]
fn bad_requests_name_the_parameter_with_pves_message() {
    let vm = "/nodes/pve1/qemu";
    let with = |extra: &[(&'static str, &'static str)]| -> Vec<(&'static str, &'static str)> {
        let mut pairs = vec![("vmid", "9000")];
        pairs.extend_from_slice(extra);
        pairs
    };
    let cases: Vec<Refusal> = vec![
        (
            "POST",
            vm,
            with(&[("speed", "fast")]),
            "speed",
            "property is not defined in schema and the schema does not allow additional properties",
        ),
        (
            "POST",
            vm,
            with(&[("scsi31", "local-lvm:8")]),
            "scsi31",
            "property is not defined in schema and the schema does not allow additional properties",
        ),
        (
            "POST",
            vm,
            with(&[("scsihw", "virtio")]),
            "scsihw",
            "value 'virtio' does not have a value in the enumeration \
             'lsi, lsi53c810, virtio-scsi-pci, virtio-scsi-single, megasas, pvscsi'",
        ),
        (
            "POST",
            vm,
            with(&[("cores", "0")]),
            "cores",
            "value must have a minimum value of 1",
        ),
        (
            "POST",
            vm,
            with(&[("cpulimit", "129")]),
            "cpulimit",
            "value must have a maximum value of 128",
        ),
        (
            "POST",
            vm,
            with(&[("cores", "two")]),
            "cores",
            "type check ('integer') failed - got 'two'",
        ),
        // Top-level booleans are 0 or 1, nothing else.
        (
            "POST",
            vm,
            with(&[("onboot", "true")]),
            "onboot",
            "type check ('boolean') failed - got 'true'",
        ),
        (
            "POST",
            vm,
            with(&[("net0", "virtio=BC:24:11:00:00:0G,bridge=vmbr0")]),
            "net0",
            "invalid format - format error\n\
             net0.macaddr: invalid format - value does not look like a valid unicast MAC address\n\n",
        ),
        // A multicast MAC (I/G bit set) is refused too.
        (
            "POST",
            vm,
            with(&[("net0", "virtio=01:24:11:00:00:01,bridge=vmbr0")]),
            "net0",
            "invalid format - format error\n\
             net0.macaddr: invalid format - value does not look like a valid unicast MAC address\n\n",
        ),
        (
            "POST",
            vm,
            with(&[("net0", "virtio,bridge=vmbr0,speed=10")]),
            "net0",
            // Not parse_property_string's "invalid key" message: Perl has
            // autovivified the key's schema by then, so check_object reports it.
            "invalid format - format error\n\
             net0.speed: property is not defined in schema and the schema does not allow \
             additional properties\n",
        ),
        (
            "POST",
            vm,
            with(&[("net0", "virtio,bridge=vmbr0,bridge=vmbr1")]),
            "net0",
            "invalid format - duplicate key in comma-separated list property: bridge\n",
        ),
        (
            "POST",
            vm,
            with(&[("net0", "bridge=vmbr0")]),
            "net0",
            "invalid format - format error\nnet0.model: property is missing and it is not optional\n",
        ),
        (
            "POST",
            vm,
            with(&[("net0", "virtio,bridge=vmbr0,firewall=maybe")]),
            "net0",
            "invalid format - format error\nnet0.firewall: type check ('boolean') failed - got 'maybe'\n",
        ),
        (
            "POST",
            vm,
            vec![("name", "x")],
            "vmid",
            "property is missing and it is not optional",
        ),
        (
            "POST",
            vm,
            vec![("vmid", "99")],
            "vmid",
            "invalid format - value does not look like a valid VM ID\n",
        ),
        (
            "POST",
            vm,
            with(&[("tags", "prod;web server!")]),
            "tags",
            "invalid format - invalid characters in tag\n",
        ),
        (
            "POST",
            vm,
            with(&[("memory", "8")]),
            "memory",
            "invalid format - format error\nmemory.current: value must have a minimum value of 16\n",
        ),
        (
            "POST",
            vm,
            with(&[("efidisk0", "local-lvm:1,efitype=8m")]),
            "efidisk0",
            "invalid format - format error\n\
             efidisk0.efitype: value '8m' does not have a value in the enumeration '2m, 4m'\n",
        ),
        (
            "POST",
            vm,
            with(&[("boot", "order=scsi0;floppy0")]),
            "boot",
            "invalid format - format error\nboot.order: invalid format - invalid boot device 'floppy0'\n\n",
        ),
        (
            "POST",
            vm,
            with(&[("ipconfig0", "gw=10.0.0.1")]),
            "ipconfig0",
            "invalid format - format error\nipconfig0.ip: missing property required by 'ipconfig0.gw'\n",
        ),
        (
            "POST",
            vm,
            with(&[("sshkeys", "ssh-ed25519 AAAA me@host")]),
            "sshkeys",
            "invalid format - invalid urlencoded string: ssh-ed25519 AAAA me@host\n",
        ),
        (
            "POST",
            vm,
            with(&[("serial0", "tty0")]),
            "serial0",
            "value does not match the regex pattern",
        ),
        (
            "POST",
            vm,
            with(&[("machine", "q36")]),
            "machine",
            "invalid format - format error\nmachine.type: value does not match the regex pattern\n",
        ),
        (
            "POST",
            vm,
            with(&[("scsi0", "local-lvm:0,import-from=import/x.qcow2")]),
            "scsi0",
            "invalid format - format error\n\
             scsi0.import-from: invalid format - unable to parse volume ID 'import/x.qcow2'\n\n",
        ),
        (
            "POST",
            "/nodes/pve1/lxc",
            vec![
                ("vmid", "200"),
                ("ostemplate", "local:vztmpl/x.tar.zst"),
                ("mp0", "tank:100"),
            ],
            "mp0",
            "invalid format - format error\nmp0.mp: property is missing and it is not optional\n",
        ),
        (
            "POST",
            "/nodes/pve1/lxc",
            vec![
                ("vmid", "200"),
                ("ostemplate", "local:vztmpl/x.tar.zst"),
                ("mp0", "tank:100,mp=/srv/../etc"),
            ],
            "mp0",
            "invalid format - format error\nmp0.mp: invalid format - /srv/../etc contains illegal character sequences\n\n",
        ),
        (
            "POST",
            "/nodes/pve1/lxc",
            vec![
                ("vmid", "200"),
                ("ostemplate", "local:vztmpl/x.tar.zst"),
                ("unprivileged", "yes"),
            ],
            "unprivileged",
            "type check ('boolean') failed - got 'yes'",
        ),
        (
            "POST",
            "/nodes/pve1/storage/local/upload",
            vec![
                ("content", "iso"),
                ("filename", "x.iso"),
                ("checksum", "abc"),
            ],
            "checksum-algorithm",
            "missing property required by 'checksum'",
        ),
        (
            "POST",
            "/nodes/pve1/storage/local/upload",
            vec![("content", "snippets"), ("filename", "user-data")],
            "content",
            "value 'snippets' does not have a value in the enumeration 'iso, vztmpl, import'",
        ),
        (
            "POST",
            "/nodes/pve1/storage/local/upload",
            vec![("filename", "x.iso")],
            "content",
            "property is missing and it is not optional",
        ),
        (
            "POST",
            "/nodes/pve1/qemu/9000/config",
            vec![("node", "pve2")],
            "node",
            "duplicate parameter (already defined in URI) with conflicting values!",
        ),
        (
            "POST",
            "/nodes/pve_1/qemu/9000/status/start",
            vec![],
            "node",
            "invalid format - value does not look like a valid node name\n",
        ),
    ];
    for (method, path, pairs, parameter, message) in cases {
        let got = refusal(method, path, &pairs);
        assert_eq!(
            got,
            (parameter.to_owned(), message.to_owned()),
            "{method} {path} {pairs:?}"
        );
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let violations = check(
        &PVE91,
        "POST",
        "/nodes/pve1/qemu",
        &[("cores", "0"), ("bogus", "1"), ("ostype", "linux")],
    );
    let names: Vec<&str> = violations.iter().map(|v| v.parameter.as_str()).collect();
    assert_eq!(names, ["bogus", "cores", "ostype", "vmid"]);
    assert_eq!(
        violations[1].to_string(),
        "cores: value must have a minimum value of 1"
    );
}

/// Property strings parse booleans loosely; aliases and key aliases work.
#[test]
fn property_strings_follow_parse_property_string() {
    for net0 in [
        "virtio,bridge=vmbr0,firewall=yes",
        "virtio,bridge=vmbr0,firewall=OFF",
        "model=virtio,macaddr=BC:24:11:00:00:01,bridge=vmbr0",
        "e1000=BC:24:11:00:00:01,bridge=vmbr0",
    ] {
        assert_accepted(
            &PVE91,
            "POST",
            "/nodes/pve1/qemu",
            &[("vmid", "100"), ("net0", net0)],
        );
    }
    // `virtio=` sets the model through its key alias; a second model clashes.
    let (parameter, message) = refusal(
        "POST",
        "/nodes/pve1/qemu",
        &[
            ("vmid", "100"),
            ("net0", "virtio=BC:24:11:00:00:01,e1000=BC:24:11:00:00:02"),
        ],
    );
    assert_eq!(parameter, "net0");
    assert_eq!(
        message,
        "invalid format - key alias 'model' is already defined\n"
    );
}

/// PVE applies `m/^$pattern$/` textually: an alternation without brackets
/// is anchored on one side only. The validator must accept what PVE accepts.
#[test]
fn patterns_are_anchored_the_way_perl_does() {
    assert_accepted(
        &PVE91,
        "POST",
        "/nodes/pve1/qemu",
        &[("vmid", "100"), ("parallel0", "/dev/parport0junk")],
    );
    // A trailing newline passes Perl's `$`.
    assert_accepted(&PVE91, "POST", "/nodes/pve1/qemu", &[("vmid", "100\n")]);
}
