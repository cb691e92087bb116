//! `lock::debian`: resolving mmdebstrap package sets with apt.
//!
//! Two kinds of tests:
//!
//! - `fixture_*` run offline against `tests/fixtures/debian/repo`, a tiny
//!   signed archive served over `file:` (see `make-fixture.sh` there). They
//!   pin down the variant recipes, the two-phase resolution, error
//!   classification and signature checking exactly.
//! - `bookworm_*` resolve against the real `http://deb.debian.org/debian`.
//!   If the mirror cannot be reached they print a `NOTICE:` and pass (the
//!   sandbox may have no network); any other failure fails them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kiln::lock::debian::{
    DEBIAN_ARCHIVE_KEYRING, DebianError, DebianRequest, DebianResolution, ResolvedPackage, resolve,
    resolve_with_keyring, verify_deb,
};

const BOOKWORM_MIRROR: &str = "http://deb.debian.org/debian";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/debian")
}

fn fixture_keyring() -> PathBuf {
    fixtures().join("kiln-test-keyring.gpg")
}

fn fixture_mirror() -> String {
    format!("file:{}", fixtures().join("repo").display())
}

fn fixture_request(suite: &str, variant: &str, packages: &[&str]) -> DebianRequest {
    DebianRequest {
        suite: suite.to_owned(),
        architecture: "amd64".to_owned(),
        mirror: fixture_mirror(),
        components: vec!["main".to_owned()],
        variant: variant.to_owned(),
        packages: packages.iter().map(|p| (*p).to_owned()).collect(),
    }
}

fn resolve_fixture(variant: &str, packages: &[&str]) -> DebianResolution {
    let request = fixture_request("kiln-test", variant, packages);
    resolve_with_keyring(&request, &fixture_keyring())
        .unwrap_or_else(|e| panic!("resolving {variant} + {packages:?}: {e}"))
}

fn names(resolution: &DebianResolution) -> Vec<&str> {
    resolution
        .packages
        .iter()
        .map(|p| p.name.as_str())
        .collect()
}

/// The fixture's essential closure: the Essential:yes packages plus what
/// they depend on, `usrmerge` (first alternative of init-helpers) and its
/// `perl` included, as on bookworm.
const FIXTURE_ESSENTIAL: &[&str] = &[
    "base-files",
    "dash",
    "init-helpers",
    "libkiln1",
    "perl",
    "usrmerge",
];

fn with(extra: &[&'static str]) -> Vec<&'static str> {
    let mut all: Vec<&str> = FIXTURE_ESSENTIAL.iter().chain(extra).copied().collect();
    all.sort_unstable();
    all
}

#[test]
fn fixture_essential_set_with_index_facts() {
    let resolution = resolve_fixture("essential", &[]);
    // No `apt`: libapt treats apt as essential unless told otherwise, and
    // mmdebstrap tells it otherwise for every variant but `apt`.
    assert_eq!(names(&resolution), FIXTURE_ESSENTIAL);
    assert_eq!(
        resolution.release_date.as_deref(),
        Some("Sat, 01 Jun 2024 00:00:00 UTC")
    );

    let libkiln = resolution
        .packages
        .iter()
        .find(|p| p.name == "libkiln1")
        .unwrap();
    let pool = "pool/main/libk/libkiln/libkiln1_1.0-1_amd64.deb";
    assert_eq!(
        libkiln,
        &ResolvedPackage {
            name: "libkiln1".to_owned(),
            // The epoch is part of the version, though not of the file name.
            version: "2:1.0-1".to_owned(),
            architecture: "amd64".to_owned(),
            filename: pool.to_owned(),
            url: format!("{}/{pool}", fixture_mirror()),
            sha256: "cec4d75eaee2440b1e51263ad6ca9e4c04e8c8db567a1d9f0216a904a7338397".to_owned(),
            size: 2036,
        },
        "the lock must carry the index's own Filename, Size and SHA256"
    );
    let helpers = resolution
        .packages
        .iter()
        .find(|p| p.name == "init-helpers")
        .unwrap();
    assert_eq!(helpers.architecture, "all");
}

#[test]
fn fixture_variants_follow_mmdebstrap() {
    let cases: &[(&str, Vec<&str>)] = &[
        ("apt", with(&["apt"])),
        ("required", with(&["apt"])),
        ("minbase", with(&["apt"])),
        ("important", with(&["apt", "iproute2"])),
        ("debootstrap", with(&["apt", "iproute2"])),
        ("standard", with(&["apt", "iproute2", "less"])),
        ("buildd", with(&["apt", "build-essential", "make"])),
        ("extract", vec![]),
    ];
    for (variant, expected) in cases {
        let resolution = resolve_fixture(variant, &[]);
        assert_eq!(&names(&resolution), expected, "variant {variant}");
    }
}

#[test]
fn fixture_includes_come_without_recommends() {
    let resolution = resolve_fixture("essential", &["hello"]);
    // hello Recommends hello-doc; mmdebstrap sets Install-Recommends false.
    assert_eq!(names(&resolution), with(&["hello", "libc6"]));

    let resolution = resolve_fixture("custom", &["hello"]);
    assert_eq!(names(&resolution), ["hello", "libc6"]);
}

#[test]
fn fixture_includes_see_the_essential_set_installed() {
    // merged-aware Depends: alt-merged | usrmerge. After phase one usrmerge
    // is installed and satisfies it, so mmdebstrap never installs
    // alt-merged; with nothing installed apt takes the first alternative.
    let resolution = resolve_fixture("essential", &["merged-aware"]);
    assert_eq!(names(&resolution), with(&["merged-aware"]));

    let resolution = resolve_fixture("custom", &["merged-aware"]);
    assert_eq!(names(&resolution), ["alt-merged", "merged-aware"]);
}

#[test]
fn fixture_pinned_versions_are_accepted() {
    let resolution = resolve_fixture("custom", &["hello=2.10-3", "libkiln1:amd64=2:1.0-1"]);
    assert_eq!(names(&resolution), ["hello", "libc6", "libkiln1"]);

    let err = resolve_with_keyring(
        &fixture_request("kiln-test", "custom", &["hello=9.9"]),
        &fixture_keyring(),
    )
    .unwrap_err();
    assert!(
        matches!(&err, DebianError::Unresolvable { packages, .. } if packages == &["hello"]),
        "{err}"
    );
}

#[test]
fn fixture_unknown_package_is_unresolvable() {
    let request = fixture_request("kiln-test", "essential", &["hello", "no-such-package"]);
    let err = resolve_with_keyring(&request, &fixture_keyring()).unwrap_err();
    match &err {
        DebianError::Unresolvable { packages, detail } => {
            assert_eq!(packages, &["no-such-package"]);
            assert!(detail.contains("Unable to locate package"), "{detail}");
        }
        other => panic!("expected Unresolvable, got {other}"),
    }
    assert!(err.to_string().contains("no-such-package"), "{err}");
}

#[test]
fn fixture_broken_dependency_is_unresolvable() {
    let request = fixture_request("kiln-test", "essential", &["broken"]);
    let err = resolve_with_keyring(&request, &fixture_keyring()).unwrap_err();
    match &err {
        DebianError::Unresolvable { packages, detail } => {
            assert_eq!(packages, &["broken"]);
            assert!(detail.contains("missing-library"), "{detail}");
        }
        other => panic!("expected Unresolvable, got {other}"),
    }
}

#[test]
fn fixture_signed_by_another_key_is_rejected() {
    // The fixture archive checked against Debian's keyring: apt must refuse
    // it, and that is an apt failure, not an unreachable mirror.
    let request = fixture_request("kiln-test", "essential", &[]);
    let err = resolve_with_keyring(&request, Path::new(DEBIAN_ARCHIVE_KEYRING)).unwrap_err();
    match &err {
        DebianError::Apt { step, stderr } => {
            assert!(step.contains("apt-get update"), "{step}");
            assert!(
                stderr.contains("NO_PUBKEY") || stderr.contains("not signed"),
                "{stderr}"
            );
        }
        other => panic!("expected Apt, got {other}"),
    }
}

#[test]
fn fixture_tampered_index_is_rejected() {
    // kiln-tampered's Packages was edited after its InRelease was signed.
    let request = fixture_request("kiln-tampered", "essential", &[]);
    let err = resolve_with_keyring(&request, &fixture_keyring()).unwrap_err();
    match &err {
        DebianError::Apt { stderr, .. } => {
            assert!(stderr.contains("Hash Sum mismatch"), "{stderr}");
        }
        other => panic!("expected Apt, got {other}"),
    }
}

#[test]
fn fixture_unknown_suite_is_an_apt_error() {
    // The mirror answers, it just has no such suite: not "unreachable".
    let request = fixture_request("kiln-nonexistent", "essential", &[]);
    let err = resolve_with_keyring(&request, &fixture_keyring()).unwrap_err();
    match &err {
        DebianError::Apt { step, stderr } => {
            assert!(step.contains("apt-get update"), "{step}");
            assert!(stderr.contains("kiln-nonexistent"), "{stderr}");
        }
        other => panic!("expected Apt, got {other}"),
    }
}

#[test]
fn fixture_resolution_is_deterministic() {
    let first = resolve_fixture("important", &["hello", "merged-aware"]);
    let second = resolve_fixture("important", &["merged-aware", "hello"]);
    assert_eq!(first, second);
}

#[test]
fn invalid_requests_are_refused_before_apt_runs() {
    let cases: &[(&str, DebianRequest)] = &[
        (
            "packages",
            fixture_request("kiln-test", "essential", &["-oDir=/"]),
        ),
        (
            "packages",
            fixture_request("kiln-test", "essential", &["?essential"]),
        ),
        ("variant", fixture_request("kiln-test", "fat", &[])),
        ("suite", fixture_request("kiln\"test", "essential", &[])),
        ("components", {
            let mut request = fixture_request("kiln-test", "essential", &[]);
            request.components.clear();
            request
        }),
        ("mirror", {
            let mut request = fixture_request("kiln-test", "essential", &[]);
            request.mirror = "ftp://example.org/debian".to_owned();
            request
        }),
        ("architecture", {
            let mut request = fixture_request("kiln-test", "essential", &[]);
            request.architecture = "AMD 64".to_owned();
            request
        }),
    ];
    for (field, request) in cases {
        let err = resolve_with_keyring(request, &fixture_keyring()).unwrap_err();
        assert!(
            matches!(&err, DebianError::InvalidRequest { field: f, .. } if f == field),
            "{field}: {err}"
        );
    }
}

#[test]
fn missing_keyring_is_named() {
    let request = fixture_request("kiln-test", "essential", &[]);
    let err = resolve_with_keyring(&request, Path::new("/nonexistent/keyring.gpg")).unwrap_err();
    assert!(matches!(&err, DebianError::KeyringMissing { .. }), "{err}");
    assert!(
        err.to_string().contains("/nonexistent/keyring.gpg"),
        "{err}"
    );
}

#[test]
fn unreachable_mirror_is_mirror_unreachable() {
    // Nothing listens on the discard port.
    let request = DebianRequest {
        suite: "bookworm".to_owned(),
        architecture: "amd64".to_owned(),
        mirror: "http://127.0.0.1:9/debian".to_owned(),
        components: vec!["main".to_owned()],
        variant: "essential".to_owned(),
        packages: vec!["hello".to_owned()],
    };
    let err = resolve(&request).unwrap_err();
    assert!(err.is_mirror_unreachable(), "{err}");
    match &err {
        DebianError::MirrorUnreachable { mirror, detail } => {
            assert_eq!(mirror, "http://127.0.0.1:9/debian");
            assert!(detail.contains("127.0.0.1"), "{detail}");
        }
        other => panic!("expected MirrorUnreachable, got {other}"),
    }
}

// ---------------------------------------------------------------------------
// The real archive
// ---------------------------------------------------------------------------

fn bookworm(variant: &str, packages: &[&str]) -> DebianRequest {
    DebianRequest {
        suite: "bookworm".to_owned(),
        architecture: "amd64".to_owned(),
        mirror: BOOKWORM_MIRROR.to_owned(),
        components: vec!["main".to_owned()],
        variant: variant.to_owned(),
        packages: packages.iter().map(|p| (*p).to_owned()).collect(),
    }
}

#[expect(
    clippy::print_stderr,
    reason = "a skipped network test must say so loudly, and timings are test diagnostics"
)]
fn note(message: &str) {
    eprintln!("{message}");
}

/// `resolve`, or `None` (after a loud notice) when the mirror cannot be
/// reached. Every other error fails the test.
fn resolve_online(request: &DebianRequest) -> Option<DebianResolution> {
    match resolve(request) {
        Ok(resolution) => Some(resolution),
        Err(err) if err.is_mirror_unreachable() => {
            note(&format!("NOTICE: skipping network test: {err}"));
            None
        }
        Err(err) => panic!("resolving {request:?}: {err}"),
    }
}

fn assert_well_formed(resolution: &DebianResolution, mirror: &str) {
    assert!(
        resolution.release_date.is_some(),
        "Release file had no Date"
    );
    let mut seen = BTreeSet::new();
    for package in &resolution.packages {
        assert!(
            package.sha256.len() == 64
                && package
                    .sha256
                    .chars()
                    .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)),
            "{package:?}"
        );
        assert!(package.size > 0, "{package:?}");
        assert!(package.filename.starts_with("pool/"), "{package:?}");
        assert!(package.filename.ends_with(".deb"), "{package:?}");
        assert_eq!(
            package.url,
            format!("{mirror}/{}", package.filename),
            "{package:?}"
        );
        assert!(
            package.architecture == "amd64" || package.architecture == "all",
            "{package:?}"
        );
        assert!(!package.version.is_empty(), "{package:?}");
        assert!(seen.insert(package.name.clone()), "twice: {}", package.name);
    }
    let sorted: Vec<&str> = names(resolution);
    let mut expected = sorted.clone();
    expected.sort_unstable();
    assert_eq!(sorted, expected, "packages must be sorted by name");
}

#[test]
fn bookworm_essential_plus_hello() {
    let started = Instant::now();
    let Some(resolution) = resolve_online(&bookworm("essential", &["hello"])) else {
        return;
    };
    note(&format!(
        "bookworm essential + hello: {} packages in {:.1?}",
        resolution.packages.len(),
        started.elapsed()
    ));
    assert_well_formed(&resolution, BOOKWORM_MIRROR);
    let names = names(&resolution);
    for expected in [
        "hello",
        "base-files",
        "bash",
        "coreutils",
        "dash",
        "dpkg",
        "libc6",
        "init-system-helpers",
    ] {
        assert!(names.contains(&expected), "{expected} missing: {names:?}");
    }
    // apt is not essential, and the essential variant must not add it.
    assert!(!names.contains(&"apt"), "{names:?}");
    // ~30 Essential:yes packages and their libraries, plus usrmerge and the
    // perl it depends on (init-system-helpers: usrmerge | usr-is-merged):
    // about 70 on bookworm. The bounds only catch a recipe gone wrong.
    assert!(
        (40..=120).contains(&resolution.packages.len()),
        "{} packages: {names:?}",
        resolution.packages.len()
    );
}

#[test]
fn bookworm_resolution_is_deterministic() {
    let Some(first) = resolve_online(&bookworm("essential", &["hello"])) else {
        return;
    };
    let Some(second) = resolve_online(&bookworm("essential", &["hello"])) else {
        return;
    };
    if first.release_date != second.release_date {
        // The archive was updated between the two runs; different answers
        // are then correct, and there is nothing to compare.
        note("NOTICE: bookworm Release changed between runs; determinism not compared");
        return;
    }
    assert_eq!(first, second);
}

#[test]
fn bookworm_unknown_package_is_unresolvable() {
    let request = bookworm("essential", &["hello", "kiln-no-such-package"]);
    match resolve(&request) {
        Err(err) if err.is_mirror_unreachable() => {
            note(&format!("NOTICE: skipping network test: {err}"));
        }
        Err(DebianError::Unresolvable { packages, .. }) => {
            assert_eq!(packages, ["kiln-no-such-package"]);
        }
        Err(err) => panic!("expected Unresolvable, got {err}"),
        Ok(resolution) => panic!("resolved an unknown package: {resolution:?}"),
    }
}

#[test]
fn bookworm_hello_deb_matches_its_lock_entry() {
    let Some(resolution) = resolve_online(&bookworm("custom", &["hello"])) else {
        return;
    };
    let hello = resolution
        .packages
        .iter()
        .find(|p| p.name == "hello")
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let bytes = runtime
        .block_on(async {
            reqwest::get(hello.url.as_str())
                .await?
                .error_for_status()?
                .bytes()
                .await
        })
        .unwrap_or_else(|e| panic!("downloading {}: {e}", hello.url));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hello.deb");
    std::fs::write(&path, &bytes).unwrap();
    verify_deb(&path, hello).unwrap();
}

/// The packages `images/debian-12.toml` and `modules/base.toml` list under
/// `[config] packages`, and the image's `[image.base.debian]` table.
fn debian_12_image_request() -> DebianRequest {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let read = |path: &str| -> toml::Table {
        let text = std::fs::read_to_string(root.join(path)).unwrap();
        text.parse()
            .unwrap_or_else(|e| panic!("{path} is not TOML: {e}"))
    };
    let image = read("images/debian-12.toml");
    let base = read("modules/base.toml");
    let packages = |table: &toml::Table| -> Vec<String> {
        table["config"]["packages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap().to_owned())
            .collect()
    };
    let debian = &image["image"]["base"]["debian"];
    let string = |key: &str| debian[key].as_str().unwrap().to_owned();
    let mut all = packages(&image);
    all.extend(packages(&base));
    DebianRequest {
        suite: string("suite"),
        architecture: "amd64".to_owned(),
        mirror: string("mirror"),
        components: debian["components"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_owned())
            .collect(),
        variant: string("variant"),
        packages: all,
    }
}

#[test]
fn bookworm_debian_12_image_set_resolves() {
    let request = debian_12_image_request();
    assert_eq!(request.variant, "important");
    let started = Instant::now();
    let Some(resolution) = resolve_online(&request) else {
        return;
    };
    let elapsed = started.elapsed();
    note(&format!(
        "debian-12 image (important + {} packages): {} packages, {} bytes of .debs, in {elapsed:.1?}",
        request.packages.len(),
        resolution.packages.len(),
        resolution.packages.iter().map(|p| p.size).sum::<u64>(),
    ));
    assert_well_formed(&resolution, request.mirror.trim_end_matches('/'));
    let names = names(&resolution);
    for requested in &request.packages {
        assert!(
            names.contains(&requested.as_str()),
            "{requested} missing: {names:?}"
        );
    }
    // Priority: important, pulled in by the variant rather than by request.
    for important in ["cron", "logrotate", "nano", "apt"] {
        assert!(names.contains(&important), "{important} missing");
    }
    assert!(elapsed < Duration::from_secs(300), "took {elapsed:?}");
}
