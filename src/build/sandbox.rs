//! The hermetic environment a builder runs in.
//!
//! Each derivation is built by a child process (`kiln internal-build`) that
//! starts with an empty environment plus:
//!
//! | variable | value |
//! |---|---|
//! | `SOURCE_DATE_EPOCH` | from the derivation |
//! | `TZ` | `UTC` |
//! | `LC_ALL` | `C.UTF-8` |
//! | `PATH` | `/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin` |
//! | `HOME` | a directory in the build's scratch |
//! | the derivation's `env` | |
//!
//! with umask 022 (set by the child), and — for every derivation except
//! fixed-output ones — in a fresh network namespace with no interfaces but
//! loopback, made by util-linux's `unshare --net` (as root) or `unshare
//! --net --map-root-user` (where unprivileged user namespaces are allowed).
//! Where neither works, kiln says so once and builds without isolation.

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How builders are cut off from the network on this machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Isolation {
    /// `unshare --net` works (root).
    NetNamespace,
    /// `unshare --net --map-root-user` works (unprivileged user namespaces).
    UserNamespace,
    /// Neither works; the reason.
    Unavailable(String),
}

impl Isolation {
    /// Probe once per process.
    pub fn detect() -> &'static Isolation {
        static DETECTED: OnceLock<Isolation> = OnceLock::new();
        DETECTED.get_or_init(|| {
            let works = |args: &[&str]| {
                Command::new("unshare")
                    .args(args)
                    .arg("true")
                    .env_clear()
                    .env("PATH", PATH)
                    .output()
                    .map(|o| {
                        (
                            o.status.success(),
                            String::from_utf8_lossy(&o.stderr).trim().to_owned(),
                        )
                    })
            };
            match works(&["--net", "--"]) {
                Ok((true, _)) => Isolation::NetNamespace,
                _ => match works(&["--net", "--map-root-user", "--"]) {
                    Ok((true, _)) => Isolation::UserNamespace,
                    Ok((false, stderr)) => {
                        Isolation::Unavailable(format!("`unshare --net` failed: {stderr}"))
                    }
                    Err(error) => Isolation::Unavailable(format!(
                        "cannot run `unshare` (util-linux): {error}"
                    )),
                },
            }
        })
    }

    pub fn describe(&self) -> String {
        match self {
            Isolation::NetNamespace => "network namespace".into(),
            Isolation::UserNamespace => "user + network namespace".into(),
            Isolation::Unavailable(reason) => format!("NONE ({reason})"),
        }
    }
}

/// The command that runs one builder in the sandbox.
pub fn command(
    kiln: &Path,
    network: bool,
    env: &std::collections::BTreeMap<String, String>,
    home: &Path,
) -> Command {
    let isolation = Isolation::detect();
    let mut command = match (network, isolation) {
        (false, Isolation::NetNamespace) => {
            let mut c = Command::new("unshare");
            c.args(["--net", "--"]).arg(kiln);
            c
        }
        (false, Isolation::UserNamespace) => {
            let mut c = Command::new("unshare");
            c.args(["--net", "--map-root-user", "--"]).arg(kiln);
            c
        }
        _ => Command::new(kiln),
    };
    command
        .env_clear()
        .env("TZ", "UTC")
        .env("LC_ALL", "C.UTF-8")
        .env("PATH", PATH)
        .env("HOME", home)
        .envs(env);
    command
}
