//! kiln's Proxmox client against the simulator: a streamed upload whose
//! checksum the node verifies, PVE's error shapes as clear errors, task
//! polling (failure with its log, timeout), and no request kiln sends that
//! the schema would refuse — while the simulator does refuse invalid ones,
//! so that check cannot pass vacuously. The token's secret appears in no
//! error.

use std::collections::BTreeMap;
use std::time::Duration;

use kiln::proxmox::client::{ApiError, Client, Endpoint, Token, Trust, Upid};
use kiln::proxmox::sim::{Fault, Outcome, SimConfig, Simulator};
use sha2::Digest;

async fn start() -> (Simulator, Client, String) {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let header = sim.authorization();
    let (id, secret) = header
        .strip_prefix("PVEAPIToken=")
        .and_then(|rest| rest.rsplit_once('='))
        .unwrap();
    let endpoint = Endpoint {
        url: sim.url().trim_end_matches("/api2/json").to_owned(),
        token: Token::new(id, secret).unwrap(),
        trust: Trust::System,
        timeout: Duration::from_secs(10),
    };
    let client = Client::new(&endpoint).unwrap();
    (sim, client, secret.to_owned())
}

fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn file(bytes: &[u8]) -> (tempfile::NamedTempFile, String) {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), bytes).unwrap();
    let sha = kiln::plan::derivation::hex(&sha2::Sha256::digest(bytes));
    (file, sha)
}

#[tokio::test]
async fn upload_is_verified_by_the_node_and_listed() {
    let (sim, client, _) = start().await;
    let bytes: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let (source, sha) = file(&bytes);
    let upid = client
        .upload("pve1", "local", "iso", "seed.iso", source.path(), &sha)
        .await
        .unwrap();
    assert_eq!(upid.kind, "imgcopy");
    client
        .wait_task(&upid, Duration::from_secs(30))
        .await
        .unwrap();
    let volumes = sim.volumes("local");
    let volume = volumes.get("local:iso/seed.iso").expect("listed");
    assert_eq!(volume.size, bytes.len() as u64);
    let stored = sim.volume_path("local:iso/seed.iso").unwrap();
    assert!(std::fs::read(stored).unwrap() == bytes);
    // The listing through the API says the same.
    let listed = client
        .get(
            "/nodes/pve1/storage/local/content",
            &params(&[("content", "iso")]),
        )
        .await
        .unwrap();
    assert!(
        listed.to_string().contains("local:iso/seed.iso"),
        "{listed}"
    );
    // Every request kiln sent passed the schema.
    for request in sim.requests() {
        assert_eq!(request.outcome, Outcome::Validated, "{request:?}");
    }
}

#[tokio::test]
async fn wrong_checksum_fails_the_task_with_its_log() {
    let (sim, client, _) = start().await;
    let (source, _) = file(b"the real bytes");
    let wrong = "0".repeat(64);
    let upid = client
        .upload(
            "pve1",
            "local",
            "vztmpl",
            "t_1_amd64.tar.zst",
            source.path(),
            &wrong,
        )
        .await
        .unwrap();
    let error = client
        .wait_task(&upid, Duration::from_secs(30))
        .await
        .unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, ApiError::Task { .. }), "{text}");
    assert!(text.contains("checksum mismatch"), "{text}");
    assert!(text.contains("task log"), "{text}");
    assert!(sim.volumes("local").is_empty());
}

#[tokio::test]
async fn invalid_parameters_and_bad_tokens_are_clear_errors() {
    let (sim, client, secret) = start().await;
    let error = client
        .post(
            "/nodes/pve1/qemu",
            &params(&[("vmid", "abc"), ("cores", "0")]),
        )
        .await
        .unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, ApiError::Parameters { .. }), "{text}");
    assert!(text.contains("vmid:"), "{text}");
    assert!(text.contains("cores:"), "{text}");
    // The simulator refused it: the "every request validated" checks elsewhere can fail.
    assert!(
        sim.requests()
            .iter()
            .any(|r| matches!(r.outcome, Outcome::Invalid(_)))
    );

    let endpoint = Endpoint {
        url: sim.url().trim_end_matches("/api2/json").to_owned(),
        token: Token::new("kiln@pve!deploy", "not-the-secret").unwrap(),
        trust: Trust::System,
        timeout: Duration::from_secs(10),
    };
    let stranger = Client::new(&endpoint).unwrap();
    let error = stranger
        .get("/version", &BTreeMap::new())
        .await
        .unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, ApiError::Unauthorized { .. }), "{text}");
    for shown in [text, format!("{error:?}"), format!("{client:?}")] {
        assert!(!shown.contains(&secret), "the secret leaked: {shown}");
        assert!(
            !shown.contains("not-the-secret"),
            "a secret leaked: {shown}"
        );
    }
}

#[tokio::test]
async fn failing_and_endless_tasks() {
    let (sim, client, _) = start().await;
    let (source, sha) = file(b"bytes");
    sim.arm(Fault::FailTask {
        kind: "imgcopy".into(),
        message: "storage 'local' is full".into(),
    });
    let upid = client
        .upload("pve1", "local", "iso", "a.iso", source.path(), &sha)
        .await
        .unwrap();
    let text = client
        .wait_task(&upid, Duration::from_secs(30))
        .await
        .unwrap_err()
        .to_string();
    assert!(text.contains("storage 'local' is full"), "{text}");

    sim.arm(Fault::TaskNeverEnds {
        kind: "imgcopy".into(),
    });
    let upid = client
        .upload("pve1", "local", "iso", "b.iso", source.path(), &sha)
        .await
        .unwrap();
    let error = client
        .wait_task(&upid, Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(matches!(error, ApiError::TaskTimeout { .. }), "{error}");
}

#[test]
fn upids_from_the_simulator_parse() {
    assert!(
        Upid::parse("UPID:pve1:00001234:00ABCDEF:6857C4E4:imgcopy::kiln@pve!deploy:").is_some()
    );
}
