//! `kiln::lock::oci` against real registries on loopback.
//!
//! Each test starts its own Debian `docker-registry` (distribution 2.8) on a
//! free port, with a config written from a template in
//! `tests/fixtures/oci/`, and pushes images into it with `skopeo`. The
//! images come from `tests/fixtures/oci/mkoci.py`, which writes a
//! deterministic OCI layout: tag `1.0` is an index over linux/amd64 and
//! linux/arm64, tag `1.0-amd64` is the amd64 manifest on its own. It prints
//! the digests it wrote, which are what the resolver must find. The
//! token-auth registry gets its Bearer tokens from
//! `tests/fixtures/oci/token_server.py`, signed with a throwaway
//! certificate that `openssl` makes for the test.
//!
//! Needs `docker-registry`, `skopeo`, `python3` with `cryptography`, and
//! `openssl`; `scripts/setup.sh` installs them. A missing tool fails the
//! test. Only a machine where they cannot run at all (no loopback, a tool
//! that cannot be executed) skips it, with a `NOTICE:`.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use kiln::lock::oci::{
    ACCEPT_MANIFESTS, OCI_INDEX, OCI_MANIFEST, OciError, Reference, Resolved, Resolver,
    ResolverOptions,
};
use tempfile::TempDir;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/oci");
const SETUP: &str = "run scripts/setup.sh as root (it runs scripts/setup-oci.sh, which installs \
                     docker-registry, skopeo, python3, python3-cryptography and openssl)";
/// How long a server may take to start answering. Generous: a loaded CI
/// machine is slow, and the wait ends as soon as the server is up.
const STARTUP: Duration = Duration::from_secs(30);
/// How long a one-shot command (mkoci.py, skopeo, openssl) may take.
const COMMAND_LIMIT: Duration = Duration::from_secs(120);
/// Where the images are pushed.
const REPOSITORY: &str = "demo/hello";

// ---- tools ----

/// The tools are there and can run here.
struct Tools {
    /// A python3 that can import `cryptography` (a pyenv or venv python
    /// first on PATH may not see Debian's python3-cryptography).
    python: String,
}

enum Probe {
    Runs,
    Missing,
    /// Present, but the OS will not run it here.
    CannotRun(String),
    /// Runs, but fails.
    Fails(String),
}

fn probe(program: &str, args: &[&str]) -> Probe {
    match Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => Probe::Runs,
        Ok(out) => Probe::Fails(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Probe::Missing,
        Err(e) => Probe::CannotRun(e.to_string()),
    }
}

#[expect(
    clippy::print_stderr,
    reason = "a skipped integration test must say loudly why it did not run"
)]
fn notice(reason: &str) {
    eprintln!("NOTICE: skipping OCI registry test: {reason}");
}

/// `None` (after a `NOTICE:`) when the tests cannot run on this machine;
/// panics, pointing at `scripts/setup.sh`, when a tool is just not installed.
fn tools() -> Option<Tools> {
    if let Err(e) = TcpListener::bind("127.0.0.1:0") {
        notice(&format!("cannot listen on 127.0.0.1 ({e})"));
        return None;
    }
    let checks: [(&str, &[&str]); 3] = [
        ("docker-registry", &["--version"]),
        ("skopeo", &["--version"]),
        ("openssl", &["version"]),
    ];
    for (tool, args) in checks {
        match probe(tool, args) {
            Probe::Runs => {}
            Probe::Missing => panic!("`{tool}` is not installed; {SETUP}"),
            Probe::CannotRun(why) => {
                notice(&format!(
                    "`{tool}` is installed but cannot be run here: {why}"
                ));
                return None;
            }
            Probe::Fails(output) => panic!("`{tool} {}` fails: {output}\n{SETUP}", args.join(" ")),
        }
    }
    let mut python_seen = false;
    for python in ["python3", "/usr/bin/python3"] {
        match probe(python, &["-c", "import cryptography"]) {
            Probe::Runs => {
                return Some(Tools {
                    python: python.to_owned(),
                });
            }
            Probe::Missing => {}
            Probe::Fails(_) => python_seen = true,
            Probe::CannotRun(why) => {
                notice(&format!(
                    "`{python}` is installed but cannot be run here: {why}"
                ));
                return None;
            }
        }
    }
    if python_seen {
        panic!(
            "python3 cannot import `cryptography` (Debian package python3-cryptography); {SETUP}"
        );
    }
    panic!("`python3` is not installed; {SETUP}");
}

// ---- processes ----

/// A background server, killed when dropped (also when a test panics).
struct Server {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Server {
    /// Start `command` with stderr (and stdout, unless `stdout` names a
    /// file for it) going to `<dir>/<name>.log`.
    fn spawn(name: &str, mut command: Command, dir: &Path, stdout: Option<&Path>) -> Server {
        let log = dir.join(format!("{name}.log"));
        let log_file = File::create(&log).unwrap();
        let out = match stdout {
            Some(path) => File::create(path).unwrap(),
            None => log_file.try_clone().unwrap(),
        };
        command.stdin(Stdio::null()).stdout(out).stderr(log_file);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({command:?}): {e}"));
        Server {
            name: name.to_owned(),
            child,
            log,
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run a one-shot command to completion (with a time limit) and return its
/// stdout; panic with its output if it fails.
fn run(dir: &Path, name: &str, mut command: Command) -> String {
    let out_path = dir.join(format!("{name}.out"));
    let err_path = dir.join(format!("{name}.err"));
    command
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).unwrap())
        .stderr(File::create(&err_path).unwrap());
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    let deadline = Instant::now() + COMMAND_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} did not finish within {COMMAND_LIMIT:?}");
        }
        sleep(Duration::from_millis(20));
    };
    let stdout = fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = fs::read_to_string(&err_path).unwrap_or_default();
    assert!(
        status.success(),
        "{command:?} failed ({status}):\n{stderr}{stdout}"
    );
    stdout
}

/// A port nothing listens on right now. Another process could take it
/// before the registry binds it, which `start_registry` detects and retries.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A bare HTTP/1.1 exchange, for looking at exactly what a registry answers
/// without the resolver in between. Returns status line, headers and body.
fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    Ok(String::from_utf8_lossy(&response).into_owned())
}

/// Start `docker-registry serve` with a config made from `template`, on a
/// free port. Returns the server and its `127.0.0.1:port`.
fn start_registry(
    dir: &Path,
    name: &str,
    template: &str,
    vars: &[(&str, &str)],
) -> (Server, String) {
    let template = fs::read_to_string(Path::new(FIXTURES).join(template)).unwrap();
    let data = dir.join(format!("{name}-data"));
    for attempt in 1..=5 {
        let addr = format!("127.0.0.1:{}", free_port());
        let mut config = template
            .replace("@ADDR@", &addr)
            .replace("@DATA@", data.to_str().unwrap());
        for (key, value) in vars {
            config = config.replace(key, value);
        }
        let config_path = dir.join(format!("{name}-{attempt}.yml"));
        fs::write(&config_path, config).unwrap();
        let mut command = Command::new("docker-registry");
        command.arg("serve").arg(&config_path);
        // `REGISTRY_*` variables override the config file (distribution's
        // configuration rules); the test's config must be the one in force.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("REGISTRY_") {
                command.env_remove(&key);
            }
        }
        let mut server = Server::spawn(&format!("{name}-{attempt}"), command, dir, None);
        match wait_until_serving(&mut server, &addr) {
            Ok(()) => return (server, addr),
            Err(log) if log.contains("address already in use") => continue,
            Err(log) => panic!("{} did not start on {addr}:\n{log}", server.name),
        }
    }
    panic!("{name}: the port was taken under it 5 times in a row");
}

/// Poll until the registry serves on `addr`, it exits, or `STARTUP` passes.
/// Two signs together: its own log says it listens on `addr` (so the port is
/// not someone else's), and `/v2/` answers as a registry.
fn wait_until_serving(server: &mut Server, addr: &str) -> Result<(), String> {
    let deadline = Instant::now() + STARTUP;
    let listening = format!("listening on {addr}");
    loop {
        if let Some(status) = server.exited() {
            return Err(format!("exited ({status}):\n{}", server.log()));
        }
        if server.log().contains(&listening)
            && http(addr, "GET", "/v2/", &[]).is_ok_and(|r| {
                r.to_ascii_lowercase()
                    .contains("docker-distribution-api-version")
            })
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("not serving after {STARTUP:?}:\n{}", server.log()));
        }
        sleep(Duration::from_millis(50));
    }
}

// ---- the image ----

/// What mkoci.py wrote, as it reports it.
#[derive(Debug, serde::Deserialize)]
struct Digests {
    index: String,
    amd64: String,
    arm64: String,
}

/// Write the OCI layout to `<dir>/layout`.
fn make_image(dir: &Path, tools: &Tools) -> Digests {
    let mut command = Command::new(&tools.python);
    command
        .arg(Path::new(FIXTURES).join("mkoci.py"))
        .arg(dir.join("layout"));
    let stdout = run(dir, "mkoci", command);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("mkoci.py printed {stdout:?}: {e}"))
}

/// `skopeo copy` one tag of the layout into a registry, anonymously and
/// without TLS, keeping the digests exactly (or failing).
fn push(dir: &Path, tag: &str, destination: &str) {
    let mut command = Command::new("skopeo");
    command
        // No trust policy file needed; we push our own image to our own registry.
        .arg("--insecure-policy")
        .arg("--tmpdir")
        .arg(dir)
        .args([
            "copy",
            "--quiet",
            "--all",
            "--preserve-digests",
            "--dest-no-creds",
            "--dest-tls-verify=false",
        ])
        .arg(format!("oci:{}:{tag}", dir.join("layout").display()))
        .arg(format!("docker://{destination}"));
    run(dir, &format!("skopeo-{tag}"), command);
}

fn resolver(insecure: &[&str]) -> Resolver {
    Resolver::new(ResolverOptions {
        insecure_registries: insecure.iter().map(|s| (*s).to_owned()).collect(),
        timeout: Duration::from_secs(30),
        ..ResolverOptions::default()
    })
    .unwrap()
}

fn reference(s: &str) -> Reference {
    s.parse().unwrap_or_else(|e| panic!("{e}"))
}

// ---- labs ----

/// A plain-http registry holding `demo/hello:1.0` (the index) and
/// `demo/hello:1.0-amd64` (a single manifest).
struct PlainLab {
    // Fields drop in order: the server goes before its directory.
    registry: Server,
    addr: String,
    digests: Digests,
    dir: TempDir,
}

impl PlainLab {
    fn start(tools: &Tools) -> PlainLab {
        let dir = tempfile::tempdir().unwrap();
        let digests = make_image(dir.path(), tools);
        let (registry, addr) =
            start_registry(dir.path(), "registry", "registry-config.yml.in", &[]);
        push(dir.path(), "1.0", &format!("{addr}/{REPOSITORY}:1.0"));
        push(
            dir.path(),
            "1.0-amd64",
            &format!("{addr}/{REPOSITORY}:1.0-amd64"),
        );
        PlainLab {
            registry,
            addr,
            digests,
            dir,
        }
    }

    fn resolve(&self, reference_text: &str) -> Result<Resolved, OciError> {
        resolver(&[&self.addr]).resolve(&reference(reference_text))
    }

    /// For assertion messages.
    fn logs(&self) -> String {
        format!(
            "registry log:\n{}\n(dir {})",
            self.registry.log(),
            self.dir.path().display()
        )
    }
}

/// A registry behind Bearer token auth holding `demo/hello:1.0`.
struct TokenLab {
    registry: Server,
    token_server: Server,
    addr: String,
    token_addr: String,
    digests: Digests,
    _dir: TempDir,
}

impl TokenLab {
    fn start(tools: &Tools) -> TokenLab {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path();
        let digests = make_image(path, tools);

        // The registry trusts tokens signed by this certificate's key.
        let (key, cert) = (path.join("token.key"), path.join("token.crt"));
        let mut openssl = Command::new("openssl");
        openssl
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=kiln-oci-test",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert);
        run(path, "openssl", openssl);

        // The token server binds a free port itself and prints it, so
        // there is no window for another process to take it.
        let port_file = path.join("token-server.port");
        let mut command = Command::new(&tools.python);
        command
            .arg(Path::new(FIXTURES).join("token_server.py"))
            .arg(&key)
            .arg(&cert);
        let mut token_server = Server::spawn("token-server", command, path, Some(&port_file));
        let deadline = Instant::now() + STARTUP;
        let port = loop {
            let printed = fs::read_to_string(&port_file).unwrap_or_default();
            if let Some(line) = printed.strip_suffix('\n') {
                break line.trim().parse::<u16>().unwrap();
            }
            if let Some(status) = token_server.exited() {
                panic!("token_server.py exited ({status}):\n{}", token_server.log());
            }
            assert!(
                Instant::now() < deadline,
                "token_server.py printed no port within {STARTUP:?}:\n{}",
                token_server.log()
            );
            sleep(Duration::from_millis(50));
        };
        let token_addr = format!("127.0.0.1:{port}");

        let realm = format!("http://{token_addr}/token");
        let (registry, addr) = start_registry(
            path,
            "token-registry",
            "registry-token-config.yml.in",
            &[("@REALM@", &realm), ("@CERT@", cert.to_str().unwrap())],
        );
        push(path, "1.0", &format!("{addr}/{REPOSITORY}:1.0"));
        TokenLab {
            registry,
            token_server,
            addr,
            token_addr,
            digests,
            _dir: dir,
        }
    }

    fn logs(&self) -> String {
        format!(
            "registry log:\n{}\ntoken server log:\n{}",
            self.registry.log(),
            self.token_server.log()
        )
    }
}

fn platforms(digests: &[(&str, &str)]) -> BTreeMap<String, String> {
    digests
        .iter()
        .map(|(platform, digest)| ((*platform).to_owned(), (*digest).to_owned()))
        .collect()
}

// ---- tests ----

#[test]
fn resolves_the_two_platform_index() {
    let Some(tools) = tools() else { return };
    let lab = PlainLab::start(&tools);
    let d = &lab.digests;
    let text = format!("{}/{REPOSITORY}:1.0", lab.addr);

    let resolved = lab
        .resolve(&text)
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
    assert_eq!(resolved.reference, text);
    assert_eq!(resolved.digest, d.index);
    assert_eq!(resolved.media_type, OCI_INDEX);
    assert_eq!(
        resolved.platforms,
        platforms(&[("linux/amd64", &d.amd64), ("linux/arm64", &d.arm64)])
    );

    // Pinned by that digest, the reference resolves to the same thing.
    let pinned = format!("{}/{REPOSITORY}@{}", lab.addr, d.index);
    let again = lab
        .resolve(&pinned)
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
    assert_eq!(again.reference, pinned);
    assert_eq!(
        (again.digest, again.platforms),
        (resolved.digest, resolved.platforms)
    );
}

#[test]
fn resolves_a_single_manifest_with_its_platform() {
    let Some(tools) = tools() else { return };
    let lab = PlainLab::start(&tools);
    let amd64 = &lab.digests.amd64;

    let resolved = lab
        .resolve(&format!("{}/{REPOSITORY}:1.0-amd64", lab.addr))
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
    assert_eq!(resolved.digest, *amd64);
    assert_eq!(resolved.media_type, OCI_MANIFEST);
    // From the image config, which says linux/amd64.
    assert_eq!(resolved.platforms, platforms(&[("linux/amd64", amd64)]));
}

#[test]
fn missing_tag_is_a_clear_not_found_error() {
    let Some(tools) = tools() else { return };
    let lab = PlainLab::start(&tools);

    let text = format!("{}/{REPOSITORY}:2.0", lab.addr);
    let err = lab.resolve(&text).unwrap_err();
    assert!(matches!(err, OciError::NotFound { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "{text}: tag `2.0` not found (http://{}/v2/{REPOSITORY}/manifests/2.0 answered 404 Not Found)",
            lab.addr
        )
    );

    // A repository the registry has never seen is as missing as a tag.
    let err = lab
        .resolve(&format!("{}/demo/nope:1.0", lab.addr))
        .unwrap_err();
    assert!(matches!(err, OciError::NotFound { .. }), "{err:?}");
}

#[test]
fn unlisted_plain_http_registry_is_spoken_to_over_https() {
    let Some(_tools) = tools() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (_registry, addr) = start_registry(dir.path(), "registry", "registry-config.yml.in", &[]);

    // Without `insecure_registries`, kiln never falls back to plain http.
    let err = resolver(&[])
        .resolve(&reference(&format!("{addr}/{REPOSITORY}:1.0")))
        .unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, OciError::Request { .. }), "{err:?}");
    assert!(
        message.contains(&format!("https://{addr}/v2/{REPOSITORY}/manifests/1.0")),
        "{message}"
    );
}

#[test]
fn token_registry_needs_and_gets_a_bearer_token() {
    let Some(tools) = tools() else { return };
    let lab = TokenLab::start(&tools);

    // Without a token, the registry refuses and names our token service.
    let path = format!("/v2/{REPOSITORY}/manifests/1.0");
    let answer = http(&lab.addr, "HEAD", &path, &[("Accept", ACCEPT_MANIFESTS)]).unwrap();
    assert!(answer.starts_with("HTTP/1.1 401 "), "{answer}");
    let challenge = format!(
        r#"www-authenticate: bearer realm="http://{}/token",service="test-registry",scope="repository:{REPOSITORY}:pull""#,
        lab.token_addr
    );
    assert!(answer.to_ascii_lowercase().contains(&challenge), "{answer}");

    // The resolver does the dance: one token, used for HEAD and GET alike.
    let before = lab.token_server.log().lines().count();
    let text = format!("{}/{REPOSITORY}:1.0", lab.addr);
    let resolved = resolver(&[&lab.addr])
        .resolve(&reference(&text))
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
    assert_eq!(resolved.digest, lab.digests.index);
    assert_eq!(resolved.media_type, OCI_INDEX);
    assert_eq!(
        resolved.platforms,
        platforms(&[
            ("linux/amd64", &lab.digests.amd64),
            ("linux/arm64", &lab.digests.arm64)
        ])
    );
    let log = lab.token_server.log();
    let token_requests: Vec<&str> = log
        .lines()
        .skip(before)
        .filter(|line| line.starts_with("token request:"))
        .collect();
    assert_eq!(
        token_requests,
        ["token request: /token?service=test-registry&scope=repository%3Ademo%2Fhello%3Apull"],
        "{}",
        lab.logs()
    );
}
