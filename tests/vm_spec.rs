//! `vm.json` for the example fleet's VM host: what kiln will ask Proxmox to
//! create, checked against Proxmox VE's published API schema (8.4 and 9.1:
//! `POST /nodes/{node}/qemu`), and shown as a snapshot.

mod common;

use std::io::Read;
use std::path::PathBuf;

use common::{kiln, root, text};
use kiln::builders::vm::spec::VmSpec;
use kiln::proxmox::ApiSchema;

fn fixture(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/proxmox")
        .join(name);
    let file = std::fs::File::open(&path).unwrap();
    let mut out = String::new();
    if name.ends_with(".gz") {
        flate2::read::GzDecoder::new(file)
            .read_to_string(&mut out)
            .unwrap();
    } else {
        std::io::BufReader::new(file)
            .read_to_string(&mut out)
            .unwrap();
    }
    out
}

fn docker_host() -> VmSpec {
    let output = kiln(&root(), &["eval", "docker-host", "--json"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let host: kiln::eval::spec::HostSpec = serde_json::from_slice(&output.stdout).unwrap();
    VmSpec::from_config(&host.name, &host.config, "disk.qcow2", "seed.iso")
}

#[test]
fn docker_host_vm_spec_is_what_proxmox_accepts() {
    let spec = docker_host();
    insta::assert_json_snapshot!("vm-json-docker-host", spec);
    let params = spec.create_params(
        "local:import/docker-host-0123abcd.qcow2",
        "local:iso/docker-host-0123abcd-cidata.iso",
    );
    let formats = fixture("pve-api-formats.json");
    for (version, apidata) in [
        ("9.1", fixture("pve-apidata-9.1.methods.json")),
        ("8.4", fixture("pve-apidata-8.4.params.json.gz")),
    ] {
        let schema = ApiSchema::from_json(&apidata, &formats).unwrap();
        let method = schema
            .method("POST", "/nodes/t440/qemu")
            .expect("POST /nodes/{node}/qemu");
        let violations = method.validate(&params);
        assert!(
            violations.is_empty(),
            "PVE {version} would refuse vm.json's parameters: {violations:?}\n{params:#?}"
        );
        // The check can fail: a broken MAC is refused.
        let mut broken = params.clone();
        broken.insert(
            "net0".into(),
            "virtio=02:XX:00:00:00:01,bridge=vmbr0".into(),
        );
        assert!(!method.validate(&broken).is_empty(), "PVE {version}");
    }
    // The seed rides on ide2 as a CD-ROM, the disk is imported as scsi0.
    assert!(params["ide2"].ends_with(",media=cdrom"));
    assert!(params["scsi0"].contains("import-from=local:import/"));
    assert_eq!(
        params["efidisk0"],
        "local-lvm:1,efitype=4m,pre-enrolled-keys=0"
    );
    assert_eq!(params["scsi1"], "tank:500");
}
