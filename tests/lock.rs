//! `kiln lock`'s bookkeeping: what is resolved, what is kept, what moved,
//! and `--locked`. The resolvers here are in-memory stand-ins that return
//! pins derived from their input; the real ones (apt against Debian's
//! mirror, a loopback OCI registry, HTTP) are tested in debian_resolve.rs,
//! oci.rs and fetch.rs.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;

use kiln::config::Repo;
use kiln::eval::Evaluator;
use kiln::lock::inputs::Wanted;
use kiln::lock::{DebianEntry, DebianPackage, Lockfile, OciEntry, UrlEntry};
use kiln::ops::lock::{LockError, Resolvers, Update, lock, wanted_inputs};

/// Pins that depend on the input and on a "day" (what the registry or
/// mirror serves today), recording every resolution asked for.
struct Stand {
    day: u8,
    calls: RefCell<Vec<String>>,
}

fn hex(seed: &str, day: u8) -> String {
    use std::fmt::Write;
    let digest = {
        let mut state: u64 = 0xcbf29ce484222325 ^ u64::from(day);
        for b in seed.bytes() {
            state = (state ^ u64::from(b)).wrapping_mul(0x100000001b3);
        }
        state
    };
    let mut out = String::new();
    for i in 0..8u64 {
        let _ = write!(out, "{:08x}", (digest.rotate_left((i * 8) as u32) as u32));
    }
    out
}

impl Resolvers for Stand {
    fn debian(&self, id: &str, wanted: &Wanted) -> Result<DebianEntry, String> {
        self.calls.borrow_mut().push(format!("debian {id}"));
        let Wanted::Debian(set) = wanted else {
            return Err("not debian".into());
        };
        let packages = set
            .packages
            .iter()
            .map(|name| DebianPackage {
                name: name.clone(),
                version: format!("1.{}", self.day),
                architecture: set.architecture.clone(),
                filename: format!("pool/main/{name}_1.{}.deb", self.day),
                sha256: hex(name, self.day),
                size: 1000,
            })
            .collect();
        Ok(set.entry(None, packages))
    }

    fn oci(&self, id: &str, reference: &str) -> Result<OciEntry, String> {
        self.calls.borrow_mut().push(format!("oci {id}"));
        Ok(OciEntry {
            reference: format!("docker.io/library/{reference}"),
            digest: format!("sha256:{}", hex(reference, self.day)),
            media_type: Some("application/vnd.oci.image.index.v1+json".into()),
            platforms: BTreeMap::new(),
        })
    }

    fn url(&self, id: &str, urls: &[String]) -> Result<UrlEntry, String> {
        self.calls.borrow_mut().push(format!("url {id}"));
        Ok(UrlEntry {
            urls: urls.to_vec(),
            sha256: hex(&urls[0], 0),
            size: 5,
        })
    }
}

fn repo(packages: &str) -> Evaluator {
    let files = vec![
        (
            "images/deb.toml".to_owned(),
            format!("[image]\nformats = [\"lxc\"]\nbase.debian = {{ suite = \"bookworm\" }}\n[config]\npackages = [{packages}]\n").into_bytes(),
        ),
        ("images/tarball.toml".to_owned(), b"[image]\nformats = [\"lxc\"]\nbase.url = { url = \"file:///srv/rootfs.tar\" }\n".to_vec()),
        (
            "stacks/web.toml".to_owned(),
            b"[stack]\n[services.proxy]\nimage = \"traefik:v3.1\"\n[services.app]\nimage = \"ghcr.io/org/app:1.2\"\n".to_vec(),
        ),
    ];
    Evaluator::new(Repo::from_files(PathBuf::from("/repo"), files))
}

#[test]
fn locks_every_input_then_only_what_changes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lockfile.toml");
    let stand = Stand {
        day: 1,
        calls: RefCell::new(Vec::new()),
    };

    let evaluator = repo("\"curl\", \"htop\"");
    let wanted = wanted_inputs(&evaluator).unwrap();
    let report = lock(&wanted, &path, &Update::Missing, false, &stand).unwrap();
    assert!(report.written);
    assert_eq!(stand.calls.borrow().len(), 4, "{:?}", stand.calls.borrow());
    let text = std::fs::read_to_string(&path).unwrap();
    let parsed = Lockfile::parse(&text).unwrap();
    assert_eq!(parsed.debian["image:deb"].requested, ["curl", "htop"]);
    assert!(
        parsed.oci.contains_key("traefik:v3.1") && parsed.oci.contains_key("ghcr.io/org/app:1.2")
    );
    assert_eq!(parsed.url["image:tarball"].urls, ["file:///srv/rootfs.tar"]);

    // Nothing changed: nothing resolved, nothing written, --locked passes.
    stand.calls.borrow_mut().clear();
    let report = lock(&wanted, &path, &Update::Missing, false, &stand).unwrap();
    assert!(!report.written && report.changes.is_empty() && stand.calls.borrow().is_empty());
    lock(&wanted, &path, &Update::Missing, true, &stand).unwrap();

    // A module adds a package: --locked refuses and names the input; a plain
    // lock re-resolves only that input and leaves the other lines alone.
    let evaluator = repo("\"curl\", \"htop\", \"tmux\"");
    let wanted = wanted_inputs(&evaluator).unwrap();
    let error = lock(&wanted, &path, &Update::Missing, true, &stand).unwrap_err();
    assert!(matches!(error, LockError::Locked(_)));
    assert!(
        error
            .to_string()
            .contains("debian `image:deb`: pinned for a different configuration"),
        "{error}"
    );
    let report = lock(&wanted, &path, &Update::Missing, false, &stand).unwrap();
    assert_eq!(*stand.calls.borrow(), ["debian image:deb"]);
    assert_eq!(report.changes.len(), 1);
    assert_eq!(report.changes[0].details, ["+ tmux 1.1"]);
    let after = std::fs::read_to_string(&path).unwrap();
    let changed: Vec<_> = diff_lines(&text, &after);
    // A minimal diff: the `requested` line replaced (-/+) and one package line added.
    assert_eq!(changed.len(), 3, "{changed:#?}");
}

#[test]
fn update_reresolves_named_inputs_and_reports_what_moved() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lockfile.toml");
    let evaluator = repo("\"curl\"");
    let wanted = wanted_inputs(&evaluator).unwrap();
    lock(
        &wanted,
        &path,
        &Update::Missing,
        false,
        &Stand {
            day: 1,
            calls: RefCell::new(Vec::new()),
        },
    )
    .unwrap();

    let tomorrow = Stand {
        day: 2,
        calls: RefCell::new(Vec::new()),
    };
    let report = lock(
        &wanted,
        &path,
        &Update::Some(vec!["traefik:v3.1".into()]),
        false,
        &tomorrow,
    )
    .unwrap();
    assert_eq!(*tomorrow.calls.borrow(), ["oci traefik:v3.1"]);
    assert_eq!(report.changes[0].action, "updated");
    assert!(
        report.changes[0].details[0].contains(" → sha256:"),
        "{:?}",
        report.changes
    );

    let report = lock(&wanted, &path, &Update::All, false, &tomorrow).unwrap();
    let debian = report.changes.iter().find(|c| c.kind == "debian").unwrap();
    assert_eq!(debian.details, ["curl 1.1 → 1.2"]);

    let unknown = lock(
        &wanted,
        &path,
        &Update::Some(vec!["nginx:1".into()]),
        false,
        &tomorrow,
    )
    .unwrap_err();
    assert!(matches!(unknown, LockError::UnknownInput(_)));
}

#[test]
fn inputs_no_longer_used_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lockfile.toml");
    let stand = Stand {
        day: 1,
        calls: RefCell::new(Vec::new()),
    };
    lock(
        &wanted_inputs(&repo("\"curl\"")).unwrap(),
        &path,
        &Update::Missing,
        false,
        &stand,
    )
    .unwrap();
    let smaller = Evaluator::new(Repo::from_files(
        PathBuf::from("/repo"),
        vec![(
            "stacks/web.toml".into(),
            b"[stack]\n[services.proxy]\nimage = \"traefik:v3.1\"\n".to_vec(),
        )],
    ));
    let wanted = wanted_inputs(&smaller).unwrap();
    assert!(
        lock(&wanted, &path, &Update::Missing, true, &stand).is_err(),
        "stale pins fail --locked"
    );
    let report = lock(&wanted, &path, &Update::Missing, false, &stand).unwrap();
    let removed: Vec<&str> = report
        .changes
        .iter()
        .filter(|c| c.action == "removed")
        .map(|c| c.id.as_str())
        .collect();
    assert_eq!(
        removed,
        ["image:deb", "ghcr.io/org/app:1.2", "image:tarball"]
    );
    let parsed = Lockfile::parse(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(parsed.debian.is_empty() && parsed.url.is_empty() && parsed.oci.len() == 1);
}

/// Lines of `b` not in `a` plus lines of `a` not in `b`.
fn diff_lines(a: &str, b: &str) -> Vec<String> {
    let (a_lines, b_lines): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    let mut out: Vec<String> = b_lines
        .iter()
        .filter(|l| !a_lines.contains(l))
        .map(|l| format!("+{l}"))
        .collect();
    out.extend(
        a_lines
            .iter()
            .filter(|l| !b_lines.contains(l))
            .map(|l| format!("-{l}")),
    );
    out
}

/// Like `Stand`, but registries are unreachable.
struct NoRegistry(Stand);

impl Resolvers for NoRegistry {
    fn debian(&self, id: &str, wanted: &Wanted) -> Result<DebianEntry, String> {
        self.0.debian(id, wanted)
    }
    fn oci(&self, _id: &str, reference: &str) -> Result<OciEntry, String> {
        Err(format!("{reference}: connection refused"))
    }
    fn url(&self, id: &str, urls: &[String]) -> Result<UrlEntry, String> {
        self.0.url(id, urls)
    }
}

#[test]
fn a_failed_input_is_reported_and_the_others_are_still_pinned() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lockfile.toml");
    let wanted = wanted_inputs(&repo("\"curl\"")).unwrap();
    let report = lock(
        &wanted,
        &path,
        &Update::Missing,
        false,
        &NoRegistry(Stand {
            day: 1,
            calls: RefCell::new(Vec::new()),
        }),
    )
    .unwrap();
    assert_eq!(report.failures.len(), 2);
    assert!(report.failures[0].reason.contains("connection refused"));
    let parsed = Lockfile::parse(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(
        parsed.debian.contains_key("image:deb")
            && parsed.url.contains_key("image:tarball")
            && parsed.oci.is_empty()
    );
    // With the registry back, a later lock pins the rest, and keeps the others.
    let stand = Stand {
        day: 1,
        calls: RefCell::new(Vec::new()),
    };
    lock(&wanted, &path, &Update::Missing, false, &stand).unwrap();
    assert_eq!(
        *stand.calls.borrow(),
        ["oci ghcr.io/org/app:1.2", "oci traefik:v3.1"]
    );
}

#[test]
fn a_note_above_an_entry_stays_with_its_pin_and_goes_when_the_pin_changes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lockfile.toml");
    let evaluator = repo("\"curl\"");
    let wanted = wanted_inputs(&evaluator).unwrap();
    let today = Stand {
        day: 1,
        calls: RefCell::new(Vec::new()),
    };
    lock(&wanted, &path, &Update::Missing, false, &today).unwrap();
    // Someone notes where two pins came from.
    let text = std::fs::read_to_string(&path).unwrap();
    let noted = text
        .replace(
            "\n[oci.\"traefik:v3.1\"]\n",
            "\n# digest as published in example/repo-info (commit abc)\n[oci.\"traefik:v3.1\"]\n",
        )
        .replace(
            "\n[oci.\"ghcr.io/org/app:1.2\"]\n",
            "\n# from the vendor's release notes\n#\n# second line\n[oci.\"ghcr.io/org/app:1.2\"]\n",
        );
    assert_ne!(noted, text);
    std::fs::write(&path, &noted).unwrap();
    let parsed = Lockfile::parse(&noted).unwrap();
    assert_eq!(parsed.to_text(), noted, "notes round-trip byte for byte");

    // A lock that changes another input keeps both notes.
    let evaluator = repo("\"curl\", \"htop\"");
    let wanted = wanted_inputs(&evaluator).unwrap();
    lock(&wanted, &path, &Update::Missing, false, &today).unwrap();
    let after = std::fs::read_to_string(&path).unwrap();
    assert!(
        after.contains(
            "# digest as published in example/repo-info (commit abc)\n[oci.\"traefik:v3.1\"]"
        ),
        "{after}"
    );
    assert!(
        after.contains(
            "# from the vendor's release notes\n#\n# second line\n[oci.\"ghcr.io/org/app:1.2\"]"
        ),
        "{after}"
    );

    // Re-resolving traefik to a new digest drops its note (it no longer
    // describes the pin); re-resolving the other to the same digest keeps it.
    let tomorrow = Stand {
        day: 2,
        calls: RefCell::new(Vec::new()),
    };
    lock(
        &wanted,
        &path,
        &Update::Some(vec!["traefik:v3.1".into()]),
        false,
        &tomorrow,
    )
    .unwrap();
    lock(
        &wanted,
        &path,
        &Update::Some(vec!["ghcr.io/org/app:1.2".into()]),
        false,
        &today,
    )
    .unwrap();
    let after = std::fs::read_to_string(&path).unwrap();
    assert!(!after.contains("repo-info"), "{after}");
    assert!(
        after.contains("# from the vendor's release notes\n"),
        "{after}"
    );
}
