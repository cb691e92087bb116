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
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        response.lines().next().map(str::to_owned)
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
