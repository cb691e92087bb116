//! kiln's Proxmox client against the simulator: a streamed upload whose
//! checksum the node verifies, PVE's error shapes as clear errors, task
//! polling (failure with its log, timeout), and no request kiln sends that
//! the schema would refuse — while the simulator does refuse invalid ones,
//! so that check cannot pass vacuously. Retries: 503s and refused
//! connections are retried, a bounded number of times; 4xx and 500 are
//! not; an upload whose connection drops is sent again from the start and
//! lands whole; a checksum mismatch is not retried. TLS: the simulator's
//! self-signed certificate is trusted by its pinned fingerprint or as a CA
//! file, and refused otherwise with a clear error. The token's secret
//! appears in no error.

use std::collections::BTreeMap;

/// kiln's allocator, so what `bench_upload_one_file` measures (peak RSS
/// too) is what kiln does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln::proxmox::client::{
    ApiError, Client, ClientEvent, Endpoint, RetryPolicy, Token, Trust, Upid, Upload,
    UploadProgress,
};
use kiln::proxmox::sim::{Fault, Outcome, SimConfig, Simulator};
use regex::Regex;
use sha2::Digest;

async fn start() -> (Simulator, Client, String) {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let (client, secret) = client_for(&sim, Trust::System);
    (sim, client, secret)
}

/// A client of `sim` with its token, trusting its certificate as `trust`
/// says; and the token's secret.
fn client_for(sim: &Simulator, trust: Trust) -> (Client, String) {
    let header = sim.authorization();
    let (id, secret) = header
        .strip_prefix("PVEAPIToken=")
        .and_then(|rest| rest.rsplit_once('='))
        .unwrap();
    let endpoint = Endpoint {
        url: sim.url().trim_end_matches("/api2/json").to_owned(),
        token: Token::new(id, secret).unwrap(),
        trust,
        timeout: Duration::from_secs(10),
    };
    (Client::new(&endpoint).unwrap(), secret.to_owned())
}

/// Retries without the default's waits, so the tests stay fast.
fn quick(attempts: u32) -> RetryPolicy {
    RetryPolicy {
        attempts,
        first_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(40),
    }
}

/// A client that records its events.
fn recording(client: Client) -> (Client, Arc<Mutex<Vec<ClientEvent>>>) {
    let events: Arc<Mutex<Vec<ClientEvent>>> = Arc::default();
    let sink = Arc::clone(&events);
    let client = client.with_events(move |event| sink.lock().unwrap().push(event.clone()));
    (client, events)
}

/// The outcome of each request to a path matching `pattern`, in order.
fn outcomes(sim: &Simulator, pattern: &str) -> Vec<(u16, Outcome)> {
    let pattern = Regex::new(pattern).unwrap();
    sim.requests()
        .into_iter()
        .filter(|r| pattern.is_match(&r.path))
        .map(|r| (r.status, r.outcome))
        .collect()
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

#[tokio::test]
async fn service_unavailable_is_retried_and_then_succeeds() {
    let (sim, client, secret) = start().await;
    let (client, events) = recording(client.with_retry(quick(6)));
    sim.arm(Fault::ServiceUnavailable {
        path: Regex::new("^/version$").unwrap(),
        count: 2,
    });
    let version = client.get("/version", &BTreeMap::new()).await.unwrap();
    assert_eq!(version["version"], "9.1.1");
    // The simulator saw the two 503s, then the request that went through.
    assert_eq!(
        outcomes(&sim, "^/version$"),
        [
            (503, Outcome::Fault("503".into())),
            (503, Outcome::Fault("503".into())),
            (200, Outcome::Validated),
        ]
    );
    let events = events.lock().unwrap().clone();
    assert_eq!(events.len(), 2, "{events:?}");
    let ClientEvent::Retrying {
        attempt, reason, ..
    } = &events[0]
    else {
        panic!("{events:?}")
    };
    assert_eq!((*attempt, reason.as_str()), (1, "503 Service Unavailable"));
    for event in &events {
        assert!(!event.to_string().contains(&secret), "{event}");
    }
    assert!(sim.armed().is_empty());
}

#[tokio::test]
async fn permanent_service_unavailable_gives_up_after_bounded_attempts() {
    let (sim, client, secret) = start().await;
    let (client, events) = recording(client.with_retry(quick(4)));
    sim.arm(Fault::ServiceUnavailable {
        path: Regex::new("^/version$").unwrap(),
        count: 1000,
    });
    let error = client.get("/version", &BTreeMap::new()).await.unwrap_err();
    let text = error.to_string();
    assert!(
        matches!(&error, ApiError::GaveUp { attempts: 4, last, .. }
            if matches!(**last, ApiError::Server { status: 503, .. })),
        "{text}"
    );
    assert!(text.contains("Proxmox answered 503"), "{text}");
    assert!(text.contains("gave up after 4 attempts"), "{text}");
    assert!(!text.contains(&secret), "{text}");
    assert_eq!(outcomes(&sim, "^/version$").len(), 4);
    assert_eq!(events.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn client_and_server_errors_are_not_retried() {
    let (sim, client, _) = start().await;
    let (client, events) = recording(client.with_retry(quick(6)));
    // 400: the schema refuses the parameters.
    let error = client
        .post("/nodes/pve1/qemu", &params(&[("vmid", "abc")]))
        .await
        .unwrap_err();
    assert!(matches!(error, ApiError::Parameters { .. }), "{error}");
    // 500: the handler dies.
    let error = client
        .get("/nodes/pve1/storage/nowhere/content", &BTreeMap::new())
        .await
        .unwrap_err();
    assert!(
        matches!(error, ApiError::Server { status: 500, .. }),
        "{error}"
    );
    assert_eq!(outcomes(&sim, "^/nodes/pve1/qemu$").len(), 1);
    assert_eq!(outcomes(&sim, "nowhere").len(), 1);
    assert!(events.lock().unwrap().is_empty());
}

#[tokio::test]
async fn refused_connections_are_retried_until_the_node_is_up() {
    // A port nothing listens on (yet).
    let address = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let endpoint = Endpoint {
        url: format!("http://{address}"),
        token: Token::new("kiln@pve!ci", "0b0e6a2c-5d1f-4e0a-9a57-2f3c4d5e6f70").unwrap(),
        trust: Trust::System,
        timeout: Duration::from_secs(10),
    };
    // The first retry starts the node: the client then gets through on a
    // later attempt, however long the start takes within the budget.
    let (started, mut first_retry) = tokio::sync::mpsc::unbounded_channel();
    let client = Client::new(&endpoint)
        .unwrap()
        .with_retry(RetryPolicy {
            attempts: 20,
            first_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
        })
        .with_events(move |event| {
            let _ = started.send(event.clone());
        });
    let request = tokio::spawn(async move { client.get("/version", &BTreeMap::new()).await });
    let event = first_retry.recv().await.unwrap();
    let ClientEvent::Retrying { reason, .. } = &event else {
        panic!("{event:?}")
    };
    assert!(reason.to_lowercase().contains("refused"), "{event}");
    let sim = Simulator::start(SimConfig {
        listen: address,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let version = request.await.unwrap().unwrap();
    assert_eq!(version["version"], "9.1.1");
    assert_eq!(outcomes(&sim, "^/version$").len(), 1);

    // With nothing listening and few attempts: a clear error.
    drop(sim);
    let client = Client::new(&endpoint).unwrap().with_retry(quick(2));
    let text = client
        .get("/version", &BTreeMap::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(text.contains("GET /version"), "{text}");
    assert!(text.to_lowercase().contains("refused"), "{text}");
    assert!(text.contains("gave up after 2 attempts"), "{text}");
}

fn big_file(length: usize) -> (tempfile::NamedTempFile, String, Vec<u8>) {
    let bytes: Vec<u8> = (0..length as u64)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let (file, sha) = file(&bytes);
    (file, sha, bytes)
}

#[tokio::test]
async fn an_upload_dropped_midway_is_sent_again_and_lands_whole() {
    let (sim, client, _) = start().await;
    let (client, events) = recording(client.with_retry(quick(4)));
    let (source, sha, bytes) = big_file(8 << 20);
    sim.arm(Fault::DropUpload {
        after_bytes: 4 << 20,
    });
    let reports: Mutex<Vec<UploadProgress>> = Mutex::default();
    let upload = Upload {
        node: "pve1",
        storage: "local",
        content: "vztmpl",
        name: "debian-13-kiln_1.0_amd64.tar.zst",
        file: source.path(),
        sha256: &sha,
    };
    let volid = client
        .upload_verified(&upload, &|p| reports.lock().unwrap().push(p))
        .await
        .unwrap();
    assert_eq!(volid, "local:vztmpl/debian-13-kiln_1.0_amd64.tar.zst");
    // The first attempt was dropped, the second went through.
    let uploads = outcomes(&sim, "/upload$");
    assert_eq!(
        uploads,
        [
            (499, Outcome::Fault("connection dropped".into())),
            (200, Outcome::Validated)
        ]
    );
    assert_eq!(events.lock().unwrap().len(), 1);
    // The volume holds exactly the file's bytes.
    let stored = std::fs::read(sim.volume_path(&volid).unwrap()).unwrap();
    assert_eq!(stored.len(), bytes.len());
    assert_eq!(
        kiln::plan::derivation::hex(&sha2::Sha256::digest(&stored)),
        sha
    );
    // Progress: both attempts reported, the last one complete, with a rate.
    let reports = reports.into_inner().unwrap();
    assert!(reports.iter().any(|p| p.attempt == 1));
    let last = reports.last().unwrap();
    assert_eq!((last.attempt, last.sent, last.total), (2, 8 << 20, 8 << 20));
    assert!(last.bytes_per_second > 0, "{last:?}");
    // Present now, with its size; not with another size, nor another name.
    let size = bytes.len() as u64;
    assert!(
        client
            .volume_present("pve1", "local", "vztmpl", &volid, size)
            .await
            .unwrap()
    );
    assert!(
        !client
            .volume_present("pve1", "local", "vztmpl", &volid, size - 1)
            .await
            .unwrap()
    );
    assert!(
        !client
            .volume_present(
                "pve1",
                "local",
                "vztmpl",
                "local:vztmpl/other.tar.zst",
                size
            )
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn a_checksum_mismatch_is_not_retried_and_fails_with_the_task_log() {
    let (sim, client, _) = start().await;
    let (client, events) = recording(client.with_retry(quick(4)));
    let (source, _, _) = big_file(1 << 20);
    let wrong = "0".repeat(64);
    let upload = Upload {
        node: "pve1",
        storage: "local",
        content: "iso",
        name: "seed.iso",
        file: source.path(),
        sha256: &wrong,
    };
    let error = client.upload_verified(&upload, &|_| {}).await.unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, ApiError::Task { .. }), "{text}");
    assert!(text.contains("checksum mismatch"), "{text}");
    assert!(text.contains("task log"), "{text}");
    assert_eq!(outcomes(&sim, "/upload$").len(), 1);
    assert!(events.lock().unwrap().is_empty());
    assert!(sim.volumes("local").is_empty());
}

#[tokio::test]
async fn a_name_proxmox_would_change_is_refused_before_uploading() {
    let (sim, client, _) = start().await;
    let (source, sha) = file(b"bytes");
    let error = client
        .upload("pve1", "local", "iso", "my seed.iso", source.path(), &sha)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("my_seed.iso"), "{error}");
    assert!(sim.requests().is_empty());
}

async fn start_tls() -> Simulator {
    Simulator::start(SimConfig {
        tls: true,
        ..SimConfig::default()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn tls_with_the_pinned_fingerprint_connects() {
    let sim = start_tls().await;
    assert!(sim.url().starts_with("https://127.0.0.1:"), "{}", sim.url());
    let fingerprint = sim.fingerprint().unwrap();
    assert!(
        Regex::new("^[0-9A-F]{2}(:[0-9A-F]{2}){31}$")
            .unwrap()
            .is_match(fingerprint),
        "{fingerprint}"
    );
    let (client, _) = client_for(&sim, Trust::fingerprint(fingerprint).unwrap());
    let version = client.get("/version", &BTreeMap::new()).await.unwrap();
    assert_eq!(version["version"], "9.1.1");
    // Uploads too.
    let (source, sha) = file(b"iso bytes");
    let upload = Upload {
        node: "pve1",
        storage: "local",
        content: "iso",
        name: "seed.iso",
        file: source.path(),
        sha256: &sha,
    };
    client.upload_verified(&upload, &|_| {}).await.unwrap();
}

#[tokio::test]
async fn tls_with_another_fingerprint_fails_naming_both() {
    let sim = start_tls().await;
    let wrong = "AB:".repeat(31) + "CD";
    let (client, secret) = client_for(&sim, Trust::fingerprint(&wrong).unwrap());
    let (client, events) = recording(client);
    let error = client.get("/version", &BTreeMap::new()).await.unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, ApiError::Tls { .. }), "{text}");
    assert!(text.contains(&wrong), "the expected fingerprint: {text}");
    assert!(
        text.contains(sim.fingerprint().unwrap()),
        "the presented fingerprint: {text}"
    );
    assert!(text.contains("pvenode cert info"), "{text}");
    for shown in [text, format!("{error:?}")] {
        assert!(!shown.contains(&secret), "the secret leaked: {shown}");
    }
    // A certificate that is not trusted now will not be in a second.
    assert!(events.lock().unwrap().is_empty());
    // The request never reached the API.
    assert!(sim.requests().is_empty());
}

#[tokio::test]
async fn tls_with_the_certificate_as_ca_file_connects() {
    let sim = start_tls().await;
    let ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca.path(), sim.certificate_pem().unwrap()).unwrap();
    let (client, _) = client_for(&sim, Trust::CaFile(ca.path().to_owned()));
    let version = client.get("/version", &BTreeMap::new()).await.unwrap();
    assert_eq!(version["version"], "9.1.1");
}

#[tokio::test]
async fn tls_with_system_roots_refuses_the_self_signed_certificate() {
    let sim = start_tls().await;
    let (client, secret) = client_for(&sim, Trust::System);
    let error = client.get("/version", &BTreeMap::new()).await.unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, ApiError::Tls { .. }), "{text}");
    assert!(text.contains("certificate"), "{text}");
    assert!(text.contains("pve-root-ca.pem"), "{text}");
    assert!(!text.contains(&secret), "{text}");
}

/// One upload as `kiln deploy` makes it, for benches/upload.sh: the file
/// streamed with its sha256, the task awaited, the listing checked.
#[test]
#[ignore = "a benchmark step, run by benches/upload.sh"]
fn bench_upload_one_file() {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set (see benches/upload.sh)"))
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let endpoint = Endpoint {
        url: var("KILN_BENCH_API"),
        token: Token::from_env(&var("KILN_BENCH_TOKEN"), "KILN_PROXMOX_SECRET").unwrap(),
        trust: Trust::System,
        timeout: Duration::from_secs(60),
    };
    let client = Client::new(&endpoint).unwrap();
    let file = std::path::PathBuf::from(var("KILN_BENCH_FILE"));
    let (sha256, name) = (var("KILN_BENCH_SHA256"), var("KILN_BENCH_NAME"));
    let upload = Upload {
        node: "pve1",
        storage: "local",
        content: "vztmpl",
        name: &name,
        file: &file,
        sha256: &sha256,
    };
    runtime
        .block_on(client.upload_verified(&upload, &|_| {}))
        .unwrap_or_else(|e| panic!("{e}"));
}
