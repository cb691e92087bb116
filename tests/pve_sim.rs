//! The Proxmox VE API simulator answers as a PVE 9.1 node: token auth,
//! schema validation with PVE's 400 shape, the order-sensitive upload,
//! tasks with real UPIDs, and faults exactly as armed.

use kiln::proxmox::sim::{Fault, Outcome, SimConfig, Simulator};
use regex::Regex;
use serde_json::Value;
use sha2::Digest;

async fn start() -> Simulator {
    Simulator::start(SimConfig::default()).await.unwrap()
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn get(sim: &Simulator, path: &str) -> (u16, Value) {
    let response = client()
        .get(format!("{}{path}", sim.url()))
        .header("Authorization", sim.authorization())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, json(response).await)
}

/// A multipart body as reqwest would write it, fields in this order, the
/// file last: (Content-Type, body).
type Form = (String, Vec<u8>);

fn multipart(fields: &[(&str, &str)], name: &str, bytes: &[u8]) -> Form {
    let boundary = "b0undary-1f2e3d";
    let mut body = Vec::new();
    for (field, value) in fields {
        body.extend(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"\r\n\r\n{value}\r\n").bytes());
    }
    body.extend(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"filename\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n").bytes());
    body.extend_from_slice(bytes);
    body.extend(format!("\r\n--{boundary}--\r\n").bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

fn upload_form(content: &str, checksum: Option<&str>, name: &str, bytes: &[u8]) -> Form {
    match checksum {
        Some(checksum) => multipart(
            &[
                ("content", content),
                ("checksum-algorithm", "sha256"),
                ("checksum", checksum),
            ],
            name,
            bytes,
        ),
        None => multipart(&[("content", content)], name, bytes),
    }
}

async fn json(response: reqwest::Response) -> Value {
    serde_json::from_str(&response.text().await.unwrap()).unwrap_or(Value::Null)
}

async fn upload<B: Into<reqwest::Body>>(
    sim: &Simulator,
    (content_type, body): (String, B),
) -> reqwest::Result<reqwest::Response> {
    client()
        .post(format!("{}/nodes/pve1/storage/local/upload", sim.url()))
        .header("Authorization", sim.authorization())
        .header("Content-Type", content_type)
        .body(body)
        .send()
        .await
}

async fn task_status(sim: &Simulator, upid: &str) -> Value {
    let encoded: String = url_encode(upid);
    let (status, body) = get(sim, &format!("/nodes/pve1/tasks/{encoded}/status")).await;
    assert_eq!(status, 200, "{body}");
    body["data"].clone()
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn sha256(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

const UPID: &str = r"^UPID:pve1:[0-9A-F]{8}:[0-9A-F]{8}:[0-9A-F]{8}:imgcopy::kiln@pve!ci:$";

#[tokio::test]
async fn invalid_request_gets_pves_400_naming_the_parameter() {
    let sim = start().await;
    let (status, body) = get(&sim, "/nodes/pve1/storage/local/content?content=bogus").await;
    assert_eq!(status, 400);
    assert_eq!(body["data"], Value::Null);
    assert_eq!(body["message"], "Parameter verification failed.\n");
    assert!(body["errors"]["content"].is_string(), "{body}");
    let log = sim.requests();
    assert!(matches!(&log[0].outcome, Outcome::Invalid(v) if v[0].parameter == "content"));
    assert!(!log[0].validated());

    let (status, body) = get(&sim, "/nodes/pve1/no-such-thing").await;
    assert_eq!(status, 501);
    assert_eq!(
        body["message"],
        "Method 'GET /nodes/pve1/no-such-thing' not implemented\n"
    );

    let (status, body) = get(&sim, "/version").await;
    assert_eq!(
        (status, body["data"]["release"].as_str()),
        (200, Some("9.1"))
    );
    assert!(sim.requests()[2].validated());
}

#[tokio::test]
async fn missing_or_bad_token_is_401_without_a_body() {
    let sim = start().await;
    let url = format!("{}/version", sim.url());
    for header in [
        None,
        Some("PVEAPIToken=kiln@pve!ci=wrong"),
        Some("Bearer x"),
    ] {
        let mut request = client().get(&url);
        if let Some(header) = header {
            request = request.header("Authorization", header);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), 401);
        assert_eq!(response.text().await.unwrap(), "");
    }
    let log = sim.requests();
    assert_eq!(log.len(), 3);
    assert!(log.iter().all(|r| r.token.is_none() && !r.validated()));
    assert!(
        !format!("{log:?}").contains("wrong"),
        "no secret in the log"
    );
}

#[tokio::test]
async fn upload_lands_in_the_listing_and_its_task_ends_ok() {
    let sim = start().await;
    let bytes = b"not really a tarball\r\n--with a dash line\r\n".repeat(1000);
    let form = upload_form(
        "vztmpl",
        Some(&sha256(&bytes)),
        "my img_1.0.tar.zst",
        &bytes,
    );
    let response = upload(&sim, form).await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let body = json(response).await;
    let upid = body["data"].as_str().unwrap().to_owned();
    assert!(Regex::new(UPID).unwrap().is_match(&upid), "{upid}");

    let status = task_status(&sim, &upid).await;
    assert_eq!(
        (status["status"].as_str(), status["exitstatus"].as_str()),
        (Some("stopped"), Some("OK"))
    );
    let (_, listing) = get(&sim, "/nodes/pve1/storage/local/content?content=vztmpl").await;
    assert_eq!(
        listing["data"][0]["volid"],
        "local:vztmpl/my_img_1.0.tar.zst"
    );
    assert_eq!(listing["data"][0]["format"], "tzst");
    assert_eq!(listing["data"][0]["size"], bytes.len());
    let path = sim.volume_path("local:vztmpl/my_img_1.0.tar.zst").unwrap();
    assert_eq!(std::fs::read(path).unwrap(), bytes);

    let (_, log) = get(
        &sim,
        &format!("/nodes/pve1/tasks/{}/log", url_encode(&upid)),
    )
    .await;
    assert_eq!(
        log["data"].as_array().unwrap().last().unwrap()["t"],
        "TASK OK"
    );
    assert!(sim.requests().iter().all(|r| r.validated()));

    // Deleting it is an imgdel task.
    let response = client()
        .delete(format!(
            "{}/nodes/pve1/storage/local/content/local:vztmpl/my_img_1.0.tar.zst",
            sim.url()
        ))
        .header("Authorization", sim.authorization())
        .send()
        .await
        .unwrap();
    let body = json(response).await;
    let status = task_status(&sim, body["data"].as_str().unwrap()).await;
    assert_eq!(status["exitstatus"], "OK");
    assert!(sim.volumes("local").is_empty());
}

#[tokio::test]
async fn wrong_checksum_fails_the_task_and_lists_nothing() {
    let sim = start().await;
    let form = upload_form("iso", Some(&"0".repeat(64)), "seed.iso", b"iso bytes");
    let body = json(upload(&sim, form).await.unwrap()).await;
    let status = task_status(&sim, body["data"].as_str().unwrap()).await;
    assert_eq!(status["status"], "stopped");
    let exit = status["exitstatus"].as_str().unwrap();
    assert!(exit.starts_with("checksum mismatch: got '"), "{exit}");
    assert!(sim.volumes("local").is_empty());
}

#[tokio::test]
async fn wrong_extension_and_chunked_body_are_refused_as_pve_does() {
    let sim = start().await;
    let form = upload_form("iso", None, "disk.qcow2", b"x");
    let response = upload(&sim, form).await.unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let body = json(response).await;
    assert_eq!(body["errors"]["filename"], "wrong file extension");

    let (content_type, bytes) = upload_form("iso", None, "seed.iso", b"chunked bytes");
    let form = (content_type, futures_stream(bytes).await);
    let response = upload(&sim, form).await.unwrap();
    assert_eq!(response.status().as_u16(), 501);
    assert_eq!(
        response.text().await.unwrap(),
        "chunked transfer encoding not supported"
    );
    assert!(sim.volumes("local").is_empty());
}

/// A body of unknown length (a file stream), so reqwest sends it chunked.
async fn futures_stream(bytes: Vec<u8>) -> reqwest::Body {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), bytes).unwrap();
    reqwest::Body::from(tokio::fs::File::open(file.path()).await.unwrap())
}

#[tokio::test]
async fn armed_faults_happen_exactly_as_armed() {
    let sim = start().await;
    sim.arm(Fault::ServiceUnavailable {
        path: Regex::new("^/version$").unwrap(),
        count: 2,
    });
    let statuses = [
        get(&sim, "/version").await.0,
        get(&sim, "/version").await.0,
        get(&sim, "/version").await.0,
    ];
    assert_eq!(statuses, [503, 503, 200]);

    sim.arm(Fault::DropUpload { after_bytes: 1000 });
    let bytes = vec![7u8; 64 * 1024];
    let result = upload(&sim, upload_form("iso", None, "big.iso", &bytes)).await;
    assert!(result.is_err(), "the connection was dropped: {result:?}");
    assert!(sim.volumes("local").is_empty());
    let ok = upload(&sim, upload_form("iso", None, "big.iso", &bytes))
        .await
        .unwrap();
    assert_eq!(ok.status().as_u16(), 200, "only the next upload is dropped");

    sim.arm(Fault::FailTask {
        kind: "imgcopy".into(),
        message: "storage went away".into(),
    });
    let body = json(
        upload(&sim, upload_form("iso", None, "a.iso", b"a"))
            .await
            .unwrap(),
    )
    .await;
    let status = task_status(&sim, body["data"].as_str().unwrap()).await;
    assert_eq!(status["exitstatus"], "storage went away");

    sim.arm(Fault::TaskNeverEnds {
        kind: "imgcopy".into(),
    });
    let body = json(
        upload(&sim, upload_form("iso", None, "b.iso", b"b"))
            .await
            .unwrap(),
    )
    .await;
    let upid = body["data"].as_str().unwrap().to_owned();
    for _ in 0..3 {
        let status = task_status(&sim, &upid).await;
        assert_eq!(status["status"], "running");
        assert!(status.get("exitstatus").is_none());
    }
    let volids: Vec<String> = sim.volumes("local").into_keys().collect();
    assert_eq!(volids, ["local:iso/big.iso"]);
    assert!(sim.armed().is_empty());
}
