//! A moto S3 server (PyPI, installed by scripts/setup-validators.sh) on a
//! free loopback port, for the tests that need a real S3-protocol server.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) const SECRET: &str = "not-a-real-secret-key";

/// A moto S3 server on a free loopback port, killed on drop.
pub(crate) struct Moto {
    child: Child,
    pub(crate) port: u16,
    _log: tempfile::NamedTempFile,
}

impl Moto {
    /// Start moto with `env`; `None` (with a notice) when it is not
    /// installed and `KILN_SKIP_PYPI_TOOLS=1`.
    pub(crate) fn start(env: &[(&str, &str)]) -> Option<Moto> {
        let program = moto_server()?;
        let port = free_port();
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new(&program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.reopen().unwrap())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", program.display()));
        let mut moto = Moto {
            child,
            port,
            _log: log,
        };
        moto.wait_until_ready();
        Some(moto)
    }

    /// Poll until moto answers HTTP (it takes a second or two to import).
    fn wait_until_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.request("GET", "/").is_some() {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                let log = std::fs::read_to_string(self._log.path()).unwrap_or_default();
                panic!("moto_server exited ({status}) before it was ready:\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "moto_server not ready after 60 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Send an unsigned request (moto accepts them with auth off); the
    /// status line, or `None` when nothing answers.
    pub(crate) fn request(&self, method: &str, path: &str) -> Option<String> {
        self.exchange(method, path, &[], "")
            .map(|(status, _)| status)
    }

    /// Send a request with extra `headers` and `body`; the status line and
    /// the body, or `None` when nothing answers.
    pub(crate) fn exchange(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Option<(String, String)> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.port,
            body.len()
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(body);
        stream.write_all(request.as_bytes()).ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let status = response.lines().next()?.to_owned();
        let body = response
            .split_once("\r\n\r\n")
            .map_or("", |(_, body)| body)
            .to_owned();
        Some((status, body))
    }

    /// Call IAM action `action` with `params`, unsigned (so before
    /// [`Moto::require_auth`]); the response body.
    fn iam(&self, action: &str, params: &[(&str, &str)]) -> String {
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("Action", action)
            .append_pair("Version", "2010-05-08")
            .extend_pairs(params)
            .finish();
        // moto picks the service from the credential scope, unchecked
        // while authentication is off.
        let authorization = "AWS4-HMAC-SHA256 \
            Credential=setup/20260101/us-east-1/iam/aws4_request, \
            SignedHeaders=host, Signature=0";
        let (status, response) = self
            .exchange(
                "POST",
                "/",
                &[
                    ("Authorization", authorization),
                    ("Content-Type", "application/x-www-form-urlencoded"),
                ],
                &body,
            )
            .unwrap();
        assert!(
            status.contains(" 200 "),
            "IAM {action}: {status}\n{response}"
        );
        response
    }

    /// An IAM user `name` allowed everything on S3, and an access key for
    /// it: (access key id, secret access key). Call before
    /// [`Moto::require_auth`].
    pub(crate) fn create_s3_user(&self, name: &str) -> (String, String) {
        self.iam("CreateUser", &[("UserName", name)]);
        let policy = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}"#;
        self.iam(
            "PutUserPolicy",
            &[
                ("UserName", name),
                ("PolicyName", "s3"),
                ("PolicyDocument", policy),
            ],
        );
        let response = self.iam("CreateAccessKey", &[("UserName", name)]);
        let element = |tag: &str| {
            let start = response.find(&format!("<{tag}>")).unwrap() + tag.len() + 2;
            let end = start + response[start..].find(&format!("</{tag}>")).unwrap();
            response[start..end].to_owned()
        };
        (element("AccessKeyId"), element("SecretAccessKey"))
    }

    /// From now on, moto checks every request's signature against its IAM
    /// users' keys, and their permissions (as `INITIAL_NO_AUTH_ACTION_COUNT=0`
    /// does from the start).
    pub(crate) fn require_auth(&self) {
        let (status, body) = self
            .exchange(
                "POST",
                "/moto-api/reset-auth",
                &[("Content-Type", "text/plain")],
                "0",
            )
            .unwrap();
        assert!(status.contains(" 200 "), "reset-auth: {status}\n{body}");
    }

    pub(crate) fn create_bucket(&self, bucket: &str) {
        let status = self.request("PUT", &format!("/{bucket}")).unwrap();
        assert!(status.contains(" 200 "), "create bucket {bucket}: {status}");
    }

    /// The environment a CI runner would set for this server.
    pub(crate) fn env(&self) -> Vec<(String, String)> {
        vec![
            (
                "AWS_ENDPOINT_URL".into(),
                format!("http://127.0.0.1:{}", self.port),
            ),
            ("AWS_ACCESS_KEY_ID".into(), "testing".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), SECRET.into()),
            ("AWS_REGION".into(), "us-east-1".into()),
        ]
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `moto_server`: `${KILN_TOOLS:-/opt/kiln-tools}/moto` or PATH. `None`
/// (with a notice) only when `KILN_SKIP_PYPI_TOOLS=1`; absent otherwise is
/// a failure telling how to install it.
pub(crate) fn moto_server() -> Option<PathBuf> {
    let tools = std::env::var_os("KILN_TOOLS")
        .map_or_else(|| PathBuf::from("/opt/kiln-tools"), PathBuf::from);
    let venv = tools.join("moto/bin/moto_server");
    if venv.is_file() {
        return Some(venv);
    }
    if super::have("moto_server") {
        return Some(PathBuf::from("moto_server"));
    }
    if std::env::var("KILN_SKIP_PYPI_TOOLS").as_deref() == Ok("1") {
        super::notice("SKIPPED: moto_server is not installed (KILN_SKIP_PYPI_TOOLS=1)");
        return None;
    }
    panic!(
        "moto_server is not installed (looked in {} and on PATH): run scripts/setup.sh \
         (or scripts/setup-validators.sh), or set KILN_SKIP_PYPI_TOOLS=1 to skip",
        venv.display()
    );
}

/// A port nothing listens on (the kernel's pick, released at once).
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
