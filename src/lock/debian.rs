//! Debian package sets, resolved by apt itself.
//!
//! [`resolve`] answers "which `.deb` files would `mmdebstrap
//! --variant=VARIANT --include=PACKAGES…` install from this archive?" with
//! every package's name, version, architecture, pool path, URL, size and
//! SHA-256: what `lockfile.toml` pins. kiln has no dependency solver of its
//! own and must not grow one: Debian's dependency semantics (alternatives,
//! virtual packages, `Essential`, `Multi-Arch`, versioned provides) are
//! whatever apt says they are, so apt does the solving.
//!
//! How a request is answered:
//!
//! 1. A temporary directory becomes a throwaway APT root: a deb822 source
//!    whose `Signed-By` is a copy of the archive keyring, an empty dpkg
//!    status, and an `apt.conf` (handed to apt through `APT_CONFIG`) that
//!    points `Dir` at the temporary directory. apt therefore reads nothing
//!    from the host's `/etc/apt` (no host sources, pins, proxies or
//!    `apt.conf.d` snippets leak in) and writes nothing to the host's lists,
//!    cache or dpkg status. Root is not needed.
//! 2. `apt-get update --error-on=any` downloads `InRelease`, has gpgv verify
//!    it against that keyring only (insecure repositories stay forbidden),
//!    and downloads the `Packages` indices whose hashes it vouches for.
//! 3. The package set is computed in the same two phases as mmdebstrap 1.x
//!    (`run_download` and `run_install` in its source): phase one installs
//!    the essential set into an empty system (`apt-get install
//!    '?narrow(…,?essential)'`, or `apt-get dist-upgrade` for the `apt`
//!    variant, where libapt counts apt itself as essential); phase two
//!    installs the requested packages plus the variant's extras (a
//!    `?priority(…)` pattern, or `build-essential apt`) into a system whose
//!    dpkg status lists the phase-one packages as installed. Both phases run
//!    as `apt-get --print-uris install`, which resolves and lists the
//!    `.deb` files apt would fetch without fetching them (and is about three
//!    times faster than an `apt-get -s` simulation, which also orders the
//!    unpacks). The two-phase split matters because apt satisfies an
//!    `a | b` dependency with an installed `b` but may pick `a` when both
//!    are merely being installed together.
//! 4. `apt-cache show NAME:ARCH=VERSION` yields each chosen package's
//!    `Filename`, `Size` and `SHA256` from the verified index: apt 2.6 puts
//!    an MD5 on its `--print-uris` lines, not a SHA-256.
//!
//! The result lists every package either phase installs. If phase two
//! happens to remove a phase-one package, that package is still listed:
//! mmdebstrap downloads and installs it first, so a build that replays the
//! lock needs its `.deb` as well.
//!
//! mmdebstrap's `--hook-dir` helpers are not modelled. On bookworm that is
//! visible: the essential `init-system-helpers` depends on `usrmerge |
//! usr-is-merged`, apt picks `usrmerge`, and `usrmerge` pulls in perl, exactly
//! as a hook-less mmdebstrap does. Request `usr-is-merged` explicitly and it
//! still arrives after phase one, so the perl packages stay in the set.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The keyring of the Debian archive signing keys, from the
/// `debian-archive-keyring` package.
pub const DEBIAN_ARCHIVE_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// The mmdebstrap variants [`resolve`] understands, aliases included.
pub const VARIANTS: &[&str] = &[
    "extract",
    "custom",
    "essential",
    "apt",
    "required",
    "minbase",
    "buildd",
    "important",
    "debootstrap",
    "-",
    "standard",
];

/// What to resolve: one archive, one architecture, one mmdebstrap variant
/// and the packages to install on top of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebianRequest {
    /// Suite or codename, e.g. `bookworm` or `stable`.
    pub suite: String,
    /// Debian architecture, e.g. `amd64`.
    pub architecture: String,
    /// Archive root URL, e.g. `http://deb.debian.org/debian`
    /// (`http`, `https` or `file`).
    pub mirror: String,
    /// Archive components, e.g. `["main"]`.
    pub components: Vec<String>,
    /// mmdebstrap variant: `essential`, `apt`, `required`, `minbase`,
    /// `buildd`, `important`, `standard` (also `extract`, `custom`, and the
    /// `debootstrap`/`-` aliases of `important`).
    pub variant: String,
    /// Extra packages (mmdebstrap's `--include`): `name`, `name:arch`,
    /// `name=version` or `name:arch=version`.
    pub packages: Vec<String>,
}

/// One `.deb` of the resolved set, as the archive's signed index describes
/// it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ResolvedPackage {
    pub name: String,
    /// Full Debian version, epoch included (`1:2.38.1-5`).
    pub version: String,
    /// `amd64`, `all`, …
    pub architecture: String,
    /// Path relative to the mirror root (`pool/main/h/hello/hello_2.10-3_amd64.deb`).
    pub filename: String,
    /// `mirror` + `/` + `filename`.
    pub url: String,
    /// Lowercase hex SHA-256 of the `.deb`.
    pub sha256: String,
    /// Size of the `.deb` in bytes.
    pub size: u64,
}

/// The full package set a request resolves to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebianResolution {
    /// The `Date:` field of the archive's (verified) Release file.
    pub release_date: Option<String>,
    /// Every package installed, sorted by name (then version and
    /// architecture).
    pub packages: Vec<ResolvedPackage>,
}

#[derive(Debug, thiserror::Error)]
pub enum DebianError {
    #[error("invalid Debian request: {field} {value:?}: {reason}")]
    InvalidRequest {
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error("archive keyring {} is missing (install the debian-archive-keyring package)", path.display())]
    KeyringMissing { path: PathBuf },
    /// The mirror could not be contacted at all (refused, unresolvable,
    /// timed out). Tests that need the network skip on this and only this.
    #[error("Debian mirror {mirror} is unreachable: {detail}")]
    MirrorUnreachable { mirror: String, detail: String },
    #[error("{step} failed:\n{stderr}")]
    Apt { step: String, stderr: String },
    #[error("apt cannot install {}:\n{detail}", packages.join(", "))]
    Unresolvable {
        packages: Vec<String>,
        detail: String,
    },
    #[error("cannot run {program} (is apt installed?): {source}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("unexpected output from {step}: {detail}")]
    Parse { step: String, detail: String },
    #[error("{}: size is {actual} bytes, the lock says {expected}", path.display())]
    SizeMismatch {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("{}: sha256 is {actual}, the lock says {expected}", path.display())]
    HashMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
}

impl DebianError {
    /// Whether this is [`DebianError::MirrorUnreachable`]: the one failure
    /// that says nothing about the request itself.
    pub fn is_mirror_unreachable(&self) -> bool {
        matches!(self, DebianError::MirrorUnreachable { .. })
    }
}

/// Resolves `request` against its mirror, verifying the archive's Release
/// signature with [`DEBIAN_ARCHIVE_KEYRING`].
pub fn resolve(request: &DebianRequest) -> Result<DebianResolution, DebianError> {
    resolve_with_keyring(request, Path::new(DEBIAN_ARCHIVE_KEYRING))
}

/// [`resolve`] with another keyring (binary `.gpg`, or armored `.asc`), for
/// archives not signed by Debian.
pub fn resolve_with_keyring(
    request: &DebianRequest,
    keyring: &Path,
) -> Result<DebianResolution, DebianError> {
    let mirror = validate(request)?;
    let plan = Plan::for_variant(request)?;
    if !keyring.is_file() {
        return Err(DebianError::KeyringMissing {
            path: keyring.to_path_buf(),
        });
    }

    let root = AptRoot::create(request, &mirror, keyring, plan.force_essential)?;
    root.update()?;
    let release_date = root.release_date()?;

    let mut resolved: BTreeSet<ResolvedPackage> = BTreeSet::new();
    let first = match &plan.first {
        Some(step) => root.plan_downloads(step)?,
        None => Vec::new(),
    };
    let first = root.show(&first)?;
    resolved.extend(first.iter().map(|stanza| stanza.package.clone()));

    if !plan.second.is_empty() {
        root.mark_installed(&first)?;
        let second = root.plan_downloads(&Step::Install(plan.second.clone()))?;
        let second = root.show(&second)?;
        resolved.extend(second.into_iter().map(|stanza| stanza.package));
    }

    Ok(DebianResolution {
        release_date,
        // BTreeSet order is the derived Ord: name, then version, then
        // architecture, which is the documented order for distinct names.
        packages: resolved.into_iter().collect(),
    })
}

/// Checks that a downloaded `.deb` at `path` is the one `expected`
/// describes: same size, same SHA-256.
pub fn verify_deb(path: &Path, expected: &ResolvedPackage) -> Result<(), DebianError> {
    let io_error = |action, source| DebianError::Io {
        action,
        path: path.to_path_buf(),
        source,
    };
    let mut file = fs::File::open(path).map_err(|e| io_error("open", e))?;
    // Size first: it is free, and a truncated download is the common case.
    let actual = file.metadata().map_err(|e| io_error("stat", e))?.len();
    if actual != expected.size {
        return Err(DebianError::SizeMismatch {
            path: path.to_path_buf(),
            expected: expected.size,
            actual,
        });
    }
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buffer).map_err(|e| io_error("read", e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    let digest: [u8; 32] = hasher.finalize().into();
    let actual = hex(&digest);
    if !actual.eq_ignore_ascii_case(&expected.sha256) {
        return Err(DebianError::HashMismatch {
            path: path.to_path_buf(),
            expected: expected.sha256.clone(),
            actual,
        });
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
    out
}

// ---------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------

/// Checks every field that ends up in apt.conf, a deb822 source or an apt
/// command line, and returns the mirror without trailing slashes. Strict on
/// purpose: a package named `-oDir=/` or a suite containing `"` would
/// otherwise be an option or a config line of its own.
fn validate(request: &DebianRequest) -> Result<String, DebianError> {
    let invalid = |field: &'static str, value: &str, reason: &str| DebianError::InvalidRequest {
        field,
        value: value.to_owned(),
        reason: reason.to_owned(),
    };

    let suite_ok = |s: &str| {
        !s.is_empty()
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+'))
    };
    if !suite_ok(&request.suite) {
        return Err(invalid(
            "suite",
            &request.suite,
            "expected a suite or codename like bookworm or stable",
        ));
    }
    let arch_ok = !request.architecture.is_empty()
        && request
            .architecture
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !arch_ok {
        return Err(invalid(
            "architecture",
            &request.architecture,
            "expected a Debian architecture like amd64",
        ));
    }

    let mirror = request.mirror.trim_end_matches('/');
    let scheme_ok = ["http://", "https://", "file:/"]
        .iter()
        .any(|scheme| mirror.starts_with(scheme));
    if !scheme_ok {
        return Err(invalid(
            "mirror",
            &request.mirror,
            "expected an http://, https:// or file:/ URL",
        ));
    }
    if mirror
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '"' | '\'' | '[' | ']'))
    {
        return Err(invalid(
            "mirror",
            &request.mirror,
            "URL contains whitespace, quotes or brackets",
        ));
    }

    if request.components.is_empty() {
        return Err(invalid(
            "components",
            "",
            "at least one component is needed",
        ));
    }
    for component in &request.components {
        let ok = !component.is_empty()
            && component.starts_with(|c: char| c.is_ascii_alphanumeric())
            && component
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/'));
        if !ok {
            return Err(invalid(
                "components",
                component,
                "expected a component like main",
            ));
        }
    }

    for package in &request.packages {
        if !package_spec_ok(package) {
            return Err(invalid(
                "packages",
                package,
                "expected NAME, NAME:ARCH, NAME=VERSION or NAME:ARCH=VERSION",
            ));
        }
    }
    Ok(mirror.to_owned())
}

/// `name[:arch][=version]` with Debian policy's character sets (§5.6.1,
/// §5.6.12). Leading `-`, `?` and `~` are thereby rejected, so a request can
/// never smuggle in an apt option or pattern.
fn package_spec_ok(spec: &str) -> bool {
    let (name_arch, version) = match spec.split_once('=') {
        Some((name_arch, version)) => (name_arch, Some(version)),
        None => (spec, None),
    };
    let (name, arch) = match name_arch.split_once(':') {
        Some((name, arch)) => (name, Some(arch)),
        None => (name_arch, None),
    };
    let name_ok = name.len() >= 2
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '+' | '-' | '.'));
    let arch_ok = arch.is_none_or(|a| {
        !a.is_empty()
            && a.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    });
    let version_ok = version.is_none_or(|v| {
        v.starts_with(|c: char| c.is_ascii_digit())
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '-' | '~' | ':'))
    });
    name_ok && arch_ok && version_ok
}

// ---------------------------------------------------------------------------
// Variants
// ---------------------------------------------------------------------------

/// One apt-get invocation whose result is part of the package set.
#[derive(Debug, Clone)]
enum Step {
    Install(Vec<String>),
    DistUpgrade,
}

/// mmdebstrap's recipe for a variant (mmdebstrap 1.4.0: `run_download`,
/// `run_install` and the option parsing that maps aliases).
#[derive(Debug)]
struct Plan {
    /// Phase one, against an empty dpkg status.
    first: Option<Step>,
    /// Phase two's `apt-get install` arguments, against a status listing
    /// phase one as installed.
    second: Vec<String>,
    /// Whether libapt may keep treating `apt` as essential. mmdebstrap turns
    /// that off (`pkgCacheGen::ForceEssential ","`) for every variant but
    /// `apt`, whose whole definition is "essential plus apt".
    force_essential: bool,
}

impl Plan {
    fn for_variant(request: &DebianRequest) -> Result<Plan, DebianError> {
        let arch = &request.architecture;
        // Restricting to the requested suite and architecture keeps a
        // pattern from matching packages of other sources or (with
        // multiarch) other architectures, as mmdebstrap does.
        let narrow = |selector: &str| {
            format!(
                "?narrow(?or(?archive(^{suite}$),?codename(^{suite}$)),?architecture({arch}),{selector})",
                suite = request.suite,
            )
        };
        let essential = Some(Step::Install(vec![narrow("?essential")]));
        // Phase two never re-selects essential packages: they are installed
        // already, and mmdebstrap avoids the "already the newest version"
        // noise the same way.
        let priority = |selector: &str| narrow(&format!("?and({selector},?not(?essential))"));
        let includes = request.packages.clone();

        let plan = match request.variant.as_str() {
            "extract" | "custom" => Plan {
                first: (!includes.is_empty()).then_some(Step::Install(includes)),
                second: Vec::new(),
                force_essential: false,
            },
            "essential" => Plan {
                first: essential,
                second: includes,
                force_essential: false,
            },
            "apt" => Plan {
                first: Some(Step::DistUpgrade),
                second: includes,
                force_essential: true,
            },
            "required" | "minbase" => Plan {
                first: essential,
                second: [includes, vec![priority("?priority(required)")]].concat(),
                force_essential: false,
            },
            "important" | "debootstrap" | "-" => Plan {
                first: essential,
                second: [
                    includes,
                    vec![priority("?or(?priority(required),?priority(important))")],
                ]
                .concat(),
                force_essential: false,
            },
            "standard" => Plan {
                first: essential,
                second: [
                    includes,
                    vec![priority(
                        "?or(?priority(required),?priority(important),?priority(standard))",
                    )],
                ]
                .concat(),
                force_essential: false,
            },
            "buildd" => Plan {
                first: essential,
                second: [
                    includes,
                    vec!["build-essential".to_owned(), "apt".to_owned()],
                ]
                .concat(),
                force_essential: false,
            },
            _ => {
                return Err(DebianError::InvalidRequest {
                    field: "variant",
                    value: request.variant.clone(),
                    reason: format!("expected one of {}", VARIANTS.join(", ")),
                });
            }
        };
        Ok(plan)
    }
}

// ---------------------------------------------------------------------------
// The throwaway APT root
// ---------------------------------------------------------------------------

/// Connection-level failures in `apt-get update` output: the mirror was
/// never reached, as opposed to answering with something wrong.
const UNREACHABLE_MARKERS: &[&str] = &[
    "Could not connect to",
    "Could not resolve",
    "Temporary failure resolving",
    "Connection timed out",
    "Connection failed",
    "Connection refused",
    "Network is unreachable",
    "No route to host",
    "Unable to connect to",
    "Could not wait for server fd",
];

struct AptRoot {
    dir: tempfile::TempDir,
    config: PathBuf,
    mirror: String,
}

/// A package apt chose, as named on an `apt-get --print-uris` line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Chosen {
    name: String,
    version: String,
    architecture: String,
}

/// One `apt-cache show` record: the raw text (phase two's dpkg status is
/// made of these) and what the lock needs from it.
#[derive(Debug, Clone)]
struct Stanza {
    text: String,
    package: ResolvedPackage,
}

impl AptRoot {
    fn create(
        request: &DebianRequest,
        mirror: &str,
        keyring: &Path,
        force_essential: bool,
    ) -> Result<AptRoot, DebianError> {
        let tmp = std::env::temp_dir();
        let dir = tempfile::Builder::new()
            .prefix("kiln-apt-")
            .tempdir()
            .map_err(|source| DebianError::Io {
                action: "create a temporary APT root in",
                path: tmp,
                source,
            })?;
        let root = dir.path();
        let io_error = |action: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| DebianError::Io {
                action,
                path,
                source,
            }
        };
        // apt.conf has no escape for `"`; refuse rather than write a config
        // whose Dir silently points somewhere else.
        let root_text = root.to_str().filter(|s| !s.contains(['"', '\n']));
        let Some(root_text) = root_text else {
            return Err(DebianError::InvalidRequest {
                field: "TMPDIR",
                value: root.display().to_string(),
                reason: "the temporary directory path must be UTF-8 without quotes".to_owned(),
            });
        };
        // When run as root, apt downloads as the unprivileged _apt user,
        // which must be able to enter the root (tempdir creates it 0700).
        fs::set_permissions(root, fs::Permissions::from_mode(0o755))
            .map_err(io_error("chmod", root))?;
        for sub in [
            "etc/apt/apt.conf.d",
            "etc/apt/preferences.d",
            "etc/apt/sources.list.d",
            "etc/apt/trusted.gpg.d",
            "etc/apt/keyrings",
            "var/lib/apt/lists/partial",
            "var/cache/apt/archives/partial",
            "var/lib/dpkg",
            "var/log/apt",
        ] {
            let path = root.join(sub);
            fs::create_dir_all(&path).map_err(io_error("create directory", &path))?;
        }
        let status = root.join("var/lib/dpkg/status");
        fs::write(&status, "").map_err(io_error("write", &status))?;

        // A copy of the keyring: its path then needs no quoting in deb822,
        // and the _apt user can certainly read it. apt tells armored from
        // binary keyrings by the extension, so that is kept.
        let armored = keyring.extension().is_some_and(|ext| ext == "asc");
        let keyring_copy = root.join(if armored {
            "etc/apt/keyrings/archive.asc"
        } else {
            "etc/apt/keyrings/archive.gpg"
        });
        fs::copy(keyring, &keyring_copy).map_err(io_error("copy keyring", keyring))?;
        fs::set_permissions(&keyring_copy, fs::Permissions::from_mode(0o644))
            .map_err(io_error("chmod", &keyring_copy))?;

        let sources = root.join("etc/apt/sources.list.d/kiln.sources");
        let sources_text = format!(
            "Types: deb\nURIs: {mirror}\nSuites: {suite}\nComponents: {components}\nSigned-By: {keyring}\n",
            suite = request.suite,
            components = request.components.join(" "),
            keyring = keyring_copy.display(),
        );
        fs::write(&sources, sources_text).map_err(io_error("write", &sources))?;

        let arch = &request.architecture;
        let mut conf = format!(
            "// Written by kiln (lock::debian): a throwaway APT root.\n\
             // Dir is set here, before apt reads any config parts, so the\n\
             // host's /etc/apt is never consulted.\n\
             Dir \"{root_text}/\";\n\
             Dir::State::Status \"{root_text}/var/lib/dpkg/status\";\n\
             Apt::Architecture \"{arch}\";\n\
             Apt::Architectures \"{arch}\";\n\
             Apt::Install-Recommends \"false\";\n\
             Apt::Install-Suggests \"false\";\n\
             Acquire::Languages \"none\";\n\
             Acquire::AllowInsecureRepositories \"false\";\n\
             Acquire::AllowDowngradeToInsecureRepositories \"false\";\n\
             APT::Get::AllowUnauthenticated \"false\";\n"
        );
        if !force_essential {
            conf.push_str("pkgCacheGen::ForceEssential \",\";\n");
        }
        let config = root.join("apt.conf");
        fs::write(&config, &conf).map_err(io_error("write", &config))?;

        let apt_root = AptRoot {
            config,
            mirror: mirror.to_owned(),
            dir,
        };
        if !apt_root.sandbox_usable() {
            // As mmdebstrap does: if _apt cannot reach the lists directory
            // (the temp dir sits somewhere private), download as root rather
            // than fail.
            conf.push_str("APT::Sandbox::User \"root\";\n");
            fs::write(&apt_root.config, &conf).map_err(io_error("write", &apt_root.config))?;
        }
        Ok(apt_root)
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Whether apt's privilege drop to `_apt` will work. Only a question
    /// when running as root; otherwise apt downloads as the caller.
    fn sandbox_usable(&self) -> bool {
        if !rustix::process::geteuid().is_root() {
            return true;
        }
        let partial = self.root().join("var/lib/apt/lists/partial");
        Command::new("/usr/lib/apt/apt-helper")
            .args(["drop-privs", "--", "test", "-r"])
            .arg(&partial)
            .env("APT_CONFIG", &self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }

    /// Runs an apt program inside this root. The exit status is the
    /// caller's to judge: apt's failures differ in meaning.
    fn run(&self, program: &str, args: &[String]) -> Result<Output, DebianError> {
        Command::new(program)
            .args(args)
            .env("APT_CONFIG", &self.config)
            // apt's messages are matched below; they must be untranslated.
            .env("LC_ALL", "C")
            .env_remove("LANGUAGE")
            .current_dir(self.root())
            .stdin(Stdio::null())
            .output()
            .map_err(|source| DebianError::Spawn {
                program: program.to_owned(),
                source,
            })
    }

    fn update(&self) -> Result<(), DebianError> {
        // --error-on=any: plain `apt-get update` exits 0 after a failed
        // fetch ("some index files failed to download… old ones used").
        let args = ["-q", "update", "--error-on=any"].map(str::to_owned);
        let output = self.run("apt-get", &args)?;
        if output.status.success() {
            return Ok(());
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let unreachable: Vec<&str> = stderr
            .lines()
            .chain(stdout.lines())
            .filter(|line| {
                UNREACHABLE_MARKERS
                    .iter()
                    .any(|marker| line.contains(marker))
            })
            .map(|line| {
                line.trim()
                    .trim_start_matches("E: ")
                    .trim_start_matches("W: ")
            })
            .collect();
        if let Some(first) = unreachable.first() {
            return Err(DebianError::MirrorUnreachable {
                mirror: self.mirror.clone(),
                detail: (*first).to_owned(),
            });
        }
        Err(DebianError::Apt {
            step: format!("apt-get update ({})", self.mirror),
            stderr: apt_stderr(&output),
        })
    }

    /// The `Date:` of the Release file apt verified and kept.
    fn release_date(&self) -> Result<Option<String>, DebianError> {
        let lists = self.root().join("var/lib/apt/lists");
        let entries = fs::read_dir(&lists).map_err(|source| DebianError::Io {
            action: "list",
            path: lists.clone(),
            source,
        })?;
        let mut releases: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| {
                path.file_name()
                    .and_then(|name| name.to_str())
                    .is_some_and(|name| name.ends_with("_InRelease") || name.ends_with("_Release"))
            })
            .collect();
        releases.sort();
        let Some(release) = releases.first() else {
            return Ok(None);
        };
        let text = fs::read_to_string(release).map_err(|source| DebianError::Io {
            action: "read",
            path: release.clone(),
            source,
        })?;
        Ok(text
            .lines()
            .take_while(|line| !line.starts_with("-----BEGIN PGP SIGNATURE"))
            .find_map(|line| line.strip_prefix("Date:"))
            .map(|date| date.trim().to_owned()))
    }

    /// Asks apt what `step` would install into the current dpkg status.
    fn plan_downloads(&self, step: &Step) -> Result<Vec<Chosen>, DebianError> {
        // --print-uris: resolve, list the .debs, fetch and unpack nothing;
        // without a lock, so no root is needed.
        // -q (not -qq): keeps the "unmet dependencies" explanation on stdout.
        let mut args: Vec<String> = ["--print-uris", "-q", "-y"].map(str::to_owned).to_vec();
        let (label, requested) = match step {
            Step::Install(packages) => {
                args.push("install".to_owned());
                args.extend(packages.iter().cloned());
                ("apt-get --print-uris install", packages.as_slice())
            }
            Step::DistUpgrade => {
                args.push("dist-upgrade".to_owned());
                ("apt-get --print-uris dist-upgrade", &[][..])
            }
        };
        let output = self.run("apt-get", &args)?;
        if !output.status.success() {
            return Err(install_failure(label, requested, &output));
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        stdout
            .lines()
            .filter(|line| line.starts_with('\''))
            .map(|line| {
                parse_uri_line(line).ok_or_else(|| DebianError::Parse {
                    step: label.to_owned(),
                    detail: format!("cannot read {line:?}"),
                })
            })
            .collect()
    }

    /// The index records of exactly these package versions.
    fn show(&self, chosen: &[Chosen]) -> Result<Vec<Stanza>, DebianError> {
        if chosen.is_empty() {
            return Ok(Vec::new());
        }
        let args: Vec<String> = chosen
            .iter()
            .map(|c| format!("{}:{}={}", c.name, c.architecture, c.version))
            .collect();
        let output = self.run("apt-cache", &[vec!["show".to_owned()], args].concat())?;
        if !output.status.success() {
            return Err(DebianError::Apt {
                step: "apt-cache show".to_owned(),
                stderr: apt_stderr(&output),
            });
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        let mut by_key: BTreeMap<(String, String, String), Stanza> = BTreeMap::new();
        for text in stdout.split("\n\n").filter(|t| !t.trim().is_empty()) {
            let stanza = self.parse_stanza(text)?;
            let key = (
                stanza.package.name.clone(),
                stanza.package.architecture.clone(),
                stanza.package.version.clone(),
            );
            // The same version from two sources prints twice; the first
            // record is as good as the second.
            by_key.entry(key).or_insert(stanza);
        }
        chosen
            .iter()
            .map(|c| {
                let key = (c.name.clone(), c.architecture.clone(), c.version.clone());
                by_key.get(&key).cloned().ok_or_else(|| DebianError::Parse {
                    step: "apt-cache show".to_owned(),
                    detail: format!(
                        "no record for {}:{}={} although apt chose it",
                        c.name, c.architecture, c.version
                    ),
                })
            })
            .collect()
    }

    fn parse_stanza(&self, text: &str) -> Result<Stanza, DebianError> {
        let mut fields: BTreeMap<&str, &str> = BTreeMap::new();
        for line in text.lines() {
            // Continuation lines (Description, Tag) start with a blank.
            if line.starts_with([' ', '\t']) {
                continue;
            }
            if let Some((key, value)) = line.split_once(':') {
                fields.insert(key, value.trim());
            }
        }
        let field = |name: &str| {
            fields
                .get(name)
                .filter(|value| !value.is_empty())
                .map(|value| (*value).to_owned())
                .ok_or_else(|| DebianError::Parse {
                    step: "apt-cache show".to_owned(),
                    detail: format!(
                        "record of {} has no {name} field",
                        fields.get("Package").copied().unwrap_or("?")
                    ),
                })
        };
        let filename = field("Filename")?;
        let sha256 = field("SHA256")?.to_ascii_lowercase();
        if sha256.len() != 64 || !sha256.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(DebianError::Parse {
                step: "apt-cache show".to_owned(),
                detail: format!("SHA256 {sha256:?} of {filename} is not 64 hex digits"),
            });
        }
        let size = field("Size")?;
        let size = size.parse::<u64>().map_err(|_| DebianError::Parse {
            step: "apt-cache show".to_owned(),
            detail: format!("Size {size:?} of {filename} is not a number"),
        })?;
        Ok(Stanza {
            text: text.trim_end().to_owned(),
            package: ResolvedPackage {
                name: field("Package")?,
                version: field("Version")?,
                architecture: field("Architecture")?,
                url: format!("{}/{}", self.mirror, filename),
                filename,
                sha256,
                size,
            },
        })
    }

    /// Rewrites the dpkg status so apt sees `installed` as installed: the
    /// state mmdebstrap's phase two starts from, minus the actual unpacking.
    fn mark_installed(&self, installed: &[Stanza]) -> Result<(), DebianError> {
        let mut status = String::new();
        for stanza in installed {
            let (first_line, rest) = stanza.text.split_once('\n').unwrap_or((&stanza.text, ""));
            status.push_str(first_line);
            status.push_str("\nStatus: install ok installed\n");
            status.push_str(rest);
            status.push_str("\n\n");
        }
        let path = self.root().join("var/lib/dpkg/status");
        fs::write(&path, status).map_err(|source| DebianError::Io {
            action: "write",
            path,
            source,
        })
    }
}

/// `'URL' NAME_VERSION_ARCH.deb SIZE HASHTYPE:HEX`, where the middle field
/// is apt's local file name: the three parts joined by `_`, each with `_`,
/// `:`, `%` and unprintable bytes percent-encoded (apt's `QuoteString`), so
/// an epoch appears as `1%3a`.
fn parse_uri_line(line: &str) -> Option<Chosen> {
    let rest = line.strip_prefix('\'')?;
    let (_url, rest) = rest.split_once("' ")?;
    let local = rest.split_whitespace().next()?;
    let stem = local.strip_suffix(".deb")?;
    let mut parts = stem.split('_');
    let (name, version, architecture) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    Some(Chosen {
        name: percent_decode(name)?,
        version: percent_decode(version)?,
        architecture: percent_decode(architecture)?,
    })
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let pair = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(pair, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok().filter(|s| !s.is_empty())
}

/// apt's stderr, or its exit status when it said nothing.
fn apt_stderr(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    if stderr.is_empty() {
        format!("(no message; {})", output.status)
    } else {
        stderr
    }
}

/// Turns a failed `apt-get --print-uris install` into [`DebianError::Unresolvable`]
/// naming the culprits when apt's message says which packages cannot be
/// had, and into [`DebianError::Apt`] otherwise.
fn install_failure(label: &str, requested: &[String], output: &Output) -> DebianError {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let mut packages: Vec<String> = Vec::new();
    let mut solver_failure = false;
    for line in stderr.lines() {
        let line = line.trim_start_matches("E: ");
        let named = line
            .strip_prefix("Unable to locate package ")
            .map(str::to_owned)
            .or_else(|| quoted_after(line, "Package '"))
            .or_else(|| quoted_after(line, "Couldn't find any package by glob '"))
            .or_else(|| quoted_after(line, "Couldn't find any package by regex '"))
            .or_else(|| {
                // Version 'V' for 'NAME' was not found
                line.strip_prefix("Version '")
                    .and_then(|rest| rest.split_once("' for '"))
                    .and_then(|(_, rest)| rest.split_once('\''))
                    .map(|(name, _)| name.to_owned())
            });
        if let Some(name) = named {
            if !packages.contains(&name) {
                packages.push(name);
            }
        } else if line.starts_with("Unable to correct problems")
            || line.starts_with("Essential packages were removed")
            || line.starts_with("Broken packages")
        {
            solver_failure = true;
        }
    }
    if packages.is_empty() && !solver_failure {
        return DebianError::Apt {
            step: label.to_owned(),
            stderr: apt_stderr(output),
        };
    }

    // apt's own explanation ("The following packages have unmet
    // dependencies: …", or the essential packages it would remove) is on
    // stdout; keep it, minus the progress chatter before it.
    let explanation: Vec<&str> = stdout
        .lines()
        .skip_while(|line| {
            !(line.starts_with("The following packages have unmet dependencies")
                || line.starts_with("WARNING:")
                || line.starts_with("The following packages will be REMOVED"))
        })
        .filter(|line| !line.starts_with('\''))
        .collect();
    if packages.is_empty() {
        // " hello : Depends: libfoo but it is not installable"
        for line in &explanation {
            if let Some((name, _)) = line.strip_prefix(' ').and_then(|l| l.split_once(" : ")) {
                let name = name.trim().to_owned();
                if !name.is_empty() && !packages.contains(&name) {
                    packages.push(name);
                }
            }
        }
    }
    if packages.is_empty() {
        // apt did not say which; the named requests are the suspects.
        packages = requested
            .iter()
            .filter(|p| !p.starts_with('?'))
            .cloned()
            .collect();
    }
    let mut detail = explanation.join("\n");
    if !detail.is_empty() {
        detail.push('\n');
    }
    detail.push_str(stderr.trim());
    DebianError::Unresolvable { packages, detail }
}

/// `prefix` followed by `NAME'…` → `NAME`.
fn quoted_after(line: &str, prefix: &str) -> Option<String> {
    let rest = line.strip_prefix(prefix)?;
    let (name, _) = rest.split_once('\'')?;
    Some(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn package(size: u64, sha256: &str) -> ResolvedPackage {
        ResolvedPackage {
            name: "hello".to_owned(),
            version: "2.10-3".to_owned(),
            architecture: "amd64".to_owned(),
            filename: "pool/main/h/hello/hello_2.10-3_amd64.deb".to_owned(),
            url: "http://deb.debian.org/debian/pool/main/h/hello/hello_2.10-3_amd64.deb".to_owned(),
            sha256: sha256.to_owned(),
            size,
        }
    }

    #[test]
    fn verify_deb_checks_size_and_sha256() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hello_2.10-3_amd64.deb");
        fs::write(&path, b"abc").unwrap();
        // SHA-256("abc"), FIPS 180-2 appendix B.1.
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

        verify_deb(&path, &package(3, abc)).unwrap();
        verify_deb(&path, &package(3, &abc.to_ascii_uppercase())).unwrap();

        let err = verify_deb(&path, &package(4, abc)).unwrap_err();
        assert!(
            matches!(
                err,
                DebianError::SizeMismatch {
                    expected: 4,
                    actual: 3,
                    ..
                }
            ),
            "{err}"
        );

        let zeros = "0".repeat(64);
        let err = verify_deb(&path, &package(3, &zeros)).unwrap_err();
        match &err {
            DebianError::HashMismatch {
                expected, actual, ..
            } => {
                assert_eq!(expected, &zeros);
                assert_eq!(actual, abc);
            }
            other => panic!("expected HashMismatch, got {other}"),
        }
        assert!(err.to_string().contains("hello_2.10-3_amd64.deb"), "{err}");

        let err = verify_deb(&dir.path().join("missing.deb"), &package(3, abc)).unwrap_err();
        assert!(
            matches!(err, DebianError::Io { action: "open", .. }),
            "{err}"
        );
    }

    #[test]
    fn uri_lines_parse() {
        let chosen = parse_uri_line(
            "'http://deb.debian.org/debian/pool/main/h/hello/hello_2.10-3_amd64.deb' \
             hello_2.10-3_amd64.deb 53080 MD5Sum:d04c2e9639dee67aa836d8232b1ca658",
        )
        .unwrap();
        assert_eq!(
            chosen,
            Chosen {
                name: "hello".to_owned(),
                version: "2.10-3".to_owned(),
                architecture: "amd64".to_owned(),
            }
        );
        // The epoch is only in apt's local file name, encoded.
        let chosen = parse_uri_line(
            "'http://deb.debian.org/debian/pool/main/a/audit/libaudit-common_3.0.9-1_all.deb' \
             libaudit-common_1%3a3.0.9-1_all.deb 10448 MD5Sum:c1f13138b89bb7eb29ee6cf93ccca204",
        )
        .unwrap();
        assert_eq!(chosen.version, "1:3.0.9-1");
        assert_eq!(chosen.architecture, "all");
        let chosen = parse_uri_line(
            "'http://deb.debian.org/debian/pool/main/g/gcc-12/libstdc%2b%2b6_12.2.0-14%2bdeb12u1_amd64.deb' \
             libstdc++6_12.2.0-14+deb12u1_amd64.deb 612604 MD5Sum:d5a137316d9551b28daed14e209d5538",
        )
        .unwrap();
        assert_eq!(
            (chosen.name.as_str(), chosen.version.as_str()),
            ("libstdc++6", "12.2.0-14+deb12u1")
        );
        assert!(parse_uri_line("garbage").is_none());
        assert!(parse_uri_line("'http://x/a.deb' a_1_amd64_x.deb 1 MD5Sum:0").is_none());
        assert!(parse_uri_line("'http://x/a.deb' a_1%3_amd64.deb 1 MD5Sum:0").is_none());
    }

    #[test]
    fn package_specs_are_strict() {
        for ok in [
            "hello",
            "libstdc++6",
            "hello:amd64",
            "hello=2.10-3",
            "libcap2:amd64=1:2.66-4+deb12u3+b1",
        ] {
            assert!(package_spec_ok(ok), "{ok}");
        }
        for bad in [
            "",
            "h",
            "-oDir=/",
            "?essential",
            "~prequired",
            "Hello",
            "hello world",
            "hello=",
            "hello:",
            "hello\"",
        ] {
            assert!(!package_spec_ok(bad), "{bad}");
        }
    }

    #[test]
    fn variants_follow_mmdebstrap() {
        let request = |variant: &str| DebianRequest {
            suite: "bookworm".to_owned(),
            architecture: "amd64".to_owned(),
            mirror: "http://deb.debian.org/debian".to_owned(),
            components: vec!["main".to_owned()],
            variant: variant.to_owned(),
            packages: vec!["hello".to_owned()],
        };
        let essential = "?narrow(?or(?archive(^bookworm$),?codename(^bookworm$)),?architecture(amd64),?essential)";

        let plan = Plan::for_variant(&request("essential")).unwrap();
        assert!(matches!(&plan.first, Some(Step::Install(p)) if p == &[essential]));
        assert_eq!(plan.second, ["hello"]);
        assert!(!plan.force_essential);

        let plan = Plan::for_variant(&request("apt")).unwrap();
        assert!(matches!(plan.first, Some(Step::DistUpgrade)));
        assert!(plan.force_essential);

        let plan = Plan::for_variant(&request("important")).unwrap();
        assert_eq!(plan.second.len(), 2);
        assert!(plan.second[1].contains("?priority(important)"), "{plan:?}");
        assert!(plan.second[1].contains("?not(?essential)"), "{plan:?}");

        let plan = Plan::for_variant(&request("buildd")).unwrap();
        assert_eq!(plan.second, ["hello", "build-essential", "apt"]);

        let plan = Plan::for_variant(&request("custom")).unwrap();
        assert!(matches!(&plan.first, Some(Step::Install(p)) if p == &["hello"]));
        assert!(plan.second.is_empty());

        let err = Plan::for_variant(&request("fat")).unwrap_err();
        assert!(err.to_string().contains("essential, apt"), "{err}");
    }
}
