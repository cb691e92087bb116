//! Inputs in the build: `kiln build` of an image fetches its pinned inputs
//! as fixed-output derivations, refuses a lockfile that does not match,
//! honours `--locked` and `--offline`, and refuses bytes that do not match
//! the lock.
//!
//! - `url_input_*` use a `file://` input: no network.
//! - `bookworm_*` resolve and fetch a small real Debian set through
//!   `http://deb.debian.org/debian`. If the mirror cannot be reached they
//!   print a `NOTICE:` and pass; any other failure fails them.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::text;

/// A repo in a temporary directory and a store next to it.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("repo/images")).unwrap();
        Fixture { dir }
    }

    fn repo(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    fn write(&self, relative: &str, contents: &str) {
        let path = self.repo().join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
    }

    fn kiln(&self, args: &[&str]) -> Output {
        let store = self.store();
        let mut all = vec!["--store", store.to_str().unwrap()];
        all.extend_from_slice(args);
        common::kiln(&self.repo(), &all)
    }

    fn ok(&self, args: &[&str]) -> Output {
        let output = self.kiln(args);
        assert_eq!(
            output.status.code(),
            Some(0),
            "kiln {args:?}\nstdout:\n{}\nstderr:\n{}",
            text(&output.stdout),
            text(&output.stderr)
        );
        output
    }

    fn fails(&self, args: &[&str]) -> String {
        let output = self.kiln(args);
        assert_eq!(
            output.status.code(),
            Some(1),
            "kiln {args:?} should fail\nstdout:\n{}\nstderr:\n{}",
            text(&output.stdout),
            text(&output.stderr)
        );
        text(&output.stderr)
    }

    /// Base names of the store's valid paths.
    fn store_paths(&self) -> Vec<String> {
        let output = self.ok(&["store", "ls", "--json"]);
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        json["paths"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                Path::new(p["path"].as_str().unwrap())
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect()
    }

    /// Leftovers in the store directory that are not valid paths.
    fn unregistered(&self) -> Vec<String> {
        let valid = self.store_paths();
        std::fs::read_dir(self.store())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name != ".kiln" && !valid.contains(name))
            .collect()
    }
}

/// `(name, builder, status)` of each result of `kiln build --json`.
fn results(output: &Output) -> Vec<(String, String, String)> {
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    json["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_owned(),
                r["builder"].as_str().unwrap().to_owned(),
                r["status"].as_str().unwrap_or("other").to_owned(),
            )
        })
        .collect()
}

/// A VM image whose disk is a pinned download (building it builds the
/// download).
fn url_image(url: &str) -> String {
    format!(
        "[image]\nformats = [\"vm\"]\nversion = \"1\"\n\n[image.base.url]\nurl = \"{url}\"\nformat = \"raw\"\n"
    )
}

#[test]
fn url_input_is_fetched_once_and_offline_names_what_is_missing() {
    let fixture = Fixture::new();
    let served = fixture.dir.path().join("served");
    std::fs::create_dir(&served).unwrap();
    let bytes: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(served.join("rootfs.tar"), &bytes).unwrap();
    let url = format!("file://{}/rootfs.tar", served.display());
    fixture.write("images/rootfs.toml", &url_image(&url));

    // Not pinned yet: build refuses and says what to do.
    let stderr = fixture.fails(&["build", "image:rootfs"]);
    assert!(
        stderr.contains("url `image:rootfs`: not pinned") && stderr.contains("run `kiln lock`"),
        "{stderr}"
    );
    fixture.ok(&["lock"]);

    // Offline with an empty store: the input is named, with its URL.
    let stderr = fixture.fails(&["build", "image:rootfs", "--offline"]);
    assert!(
        stderr.contains("--offline: 1 input would need the network")
            && stderr.contains(&format!("rootfs.tar (from {url})")),
        "{stderr}"
    );
    assert!(fixture.store_paths().is_empty());

    let built = fixture.ok(&["build", "image:rootfs", "--json"]);
    assert_eq!(
        results(&built),
        [("rootfs.tar".into(), "fetch".into(), "built".into())]
    );
    let result = fixture.repo().join("result");
    assert_eq!(std::fs::read(&result).unwrap(), bytes);

    // Now offline works, and the source can go away.
    std::fs::remove_file(served.join("rootfs.tar")).unwrap();
    let again = fixture.ok(&["build", "image:rootfs", "--offline", "--json"]);
    assert_eq!(
        results(&again),
        [("rootfs.tar".into(), "fetch".into(), "valid".into())]
    );
}

#[test]
fn url_input_with_a_tampered_lock_hash_is_refused_and_nothing_is_registered() {
    let fixture = Fixture::new();
    let served = fixture.dir.path().join("served");
    std::fs::create_dir(&served).unwrap();
    std::fs::write(served.join("disk.raw"), b"the real bytes\n").unwrap();
    let url = format!("file://{}/disk.raw", served.display());
    fixture.write("images/disk.toml", &url_image(&url));
    fixture.ok(&["lock"]);
    let lock_path = fixture.repo().join("lockfile.toml");
    let lock = std::fs::read_to_string(&lock_path).unwrap();
    let real = regex::Regex::new(r#"sha256 = "([0-9a-f]{64})""#)
        .unwrap()
        .captures(&lock)
        .unwrap()[1]
        .to_owned();
    let forged = format!(
        "{}{}",
        &real[..60],
        if &real[60..] == "0000" {
            "1111"
        } else {
            "0000"
        }
    );
    std::fs::write(&lock_path, lock.replace(&real, &forged)).unwrap();

    let stderr = fixture.fails(&["build", "image:disk"]);
    assert!(stderr.contains(&url), "the error names the URL: {stderr}");
    assert!(
        stderr.contains(&forged) && stderr.contains(&real),
        "the error names the expected and the actual hash: {stderr}"
    );
    assert!(fixture.store_paths().is_empty(), "nothing registered");
    assert!(
        fixture.unregistered().is_empty(),
        "nothing left in the store: {:?}",
        fixture.unregistered()
    );
    assert!(!fixture.repo().join("result").exists());

    // The honest lock builds.
    std::fs::write(&lock_path, &lock).unwrap();
    fixture.ok(&["build", "image:disk"]);
}

#[test]
fn locked_fails_when_a_module_adds_an_input() {
    let fixture = Fixture::new();
    let served = fixture.dir.path().join("served");
    std::fs::create_dir(&served).unwrap();
    std::fs::write(served.join("rootfs.tar"), b"rootfs\n").unwrap();
    let url = format!("file://{}/rootfs.tar", served.display());
    fixture.write("images/rootfs.toml", &url_image(&url));
    fixture.ok(&["lock"]);
    // A Debian image whose packages come from a module, pinned by hand
    // (--locked compares; it resolves nothing, so no mirror is needed).
    fixture.write(
        "images/small.toml",
        &debian_image("[]").replace("[image]\n", "[image]\nimports = [\"tools\"]\n"),
    );
    fixture.write(
        "modules/tools.toml",
        "[module]\ndescription = \"tools\"\n\n[config]\npackages = [\"hello\"]\n",
    );
    let lock_path = fixture.repo().join("lockfile.toml");
    let mut lock = std::fs::read_to_string(&lock_path).unwrap();
    lock.push_str(&format!(
        r#"
[debian."image:small"]
suite = "bookworm"
architecture = "amd64"
mirror = "http://deb.debian.org/debian"
components = ["main"]
variant = "essential"
requested = ["hello"]
packages = [
  {{ name = "hello", version = "2.10-3", architecture = "amd64", filename = "pool/main/h/hello/hello_2.10-3_amd64.deb", sha256 = "{}", size = 53000 }},
]
"#,
        "a".repeat(64)
    ));
    std::fs::write(&lock_path, lock).unwrap();
    fixture.ok(&["lock", "--locked"]);
    fixture.ok(&["build", "image:rootfs", "--locked", "--no-link"]);

    // The module adds a package: an input the lock does not pin.
    fixture.write(
        "modules/tools.toml",
        "[module]\ndescription = \"tools\"\n\n[config]\npackages = [\"hello\", \"curl\"]\n",
    );
    let stderr = fixture.fails(&["build", "image:rootfs", "--locked", "--no-link"]);
    assert!(
        stderr.contains("--locked forbids changing it")
            && stderr.contains("debian `image:small`: pinned for a different configuration"),
        "{stderr}"
    );
    let stderr = fixture.fails(&["lock", "--locked"]);
    assert!(
        stderr.contains("debian `image:small`: pinned for a different configuration"),
        "{stderr}"
    );
    // The image that uses it refuses even without --locked …
    let stderr = fixture.fails(&["build", "image:small", "--no-link"]);
    assert!(
        stderr.contains("debian `image:small`: pinned for a different configuration")
            && stderr.contains("run `kiln lock`"),
        "{stderr}"
    );
    // … while one whose inputs are pinned still builds.
    fixture.ok(&["build", "image:rootfs", "--no-link"]);
}

#[allow(
    clippy::print_stderr,
    reason = "a skipped network test must say so loudly"
)]
fn notice(message: &str) {
    eprintln!("{message}");
}

fn debian_image(packages: &str) -> String {
    format!(
        "[image]\nformats = [\"lxc\"]\nversion = \"1\"\n\n[image.base.debian]\nsuite = \"bookworm\"\nmirror = \"http://deb.debian.org/debian\"\nvariant = \"essential\"\n\n[config]\npackages = {packages}\n"
    )
}

#[test]
fn bookworm_set_is_fetched_then_rebuilt_offline_and_shared() {
    let fixture = Fixture::new();
    fixture.write("images/small.toml", &debian_image("[\"hello\"]"));
    let locked = fixture.kiln(&["lock"]);
    if locked.status.code() != Some(0) {
        let stderr = text(&locked.stderr);
        if stderr.contains("is unreachable") {
            notice(&format!("NOTICE: skipping network test: {stderr}"));
            return;
        }
        panic!("kiln lock failed:\n{stderr}");
    }
    let lock = std::fs::read_to_string(fixture.repo().join("lockfile.toml")).unwrap();
    let packages = lock.matches("{ name = ").count();
    assert!(packages > 10, "essential + hello: {packages} packages");

    let stderr = fixture.fails(&["build", "image:small#packages", "--offline"]);
    assert!(
        stderr.contains(&format!(
            "--offline: {packages} inputs would need the network"
        )) && stderr.contains("hello_"),
        "{stderr}"
    );

    let built = fixture.ok(&["build", "image:small#packages", "--json"]);
    let first = results(&built);
    let fetched = first
        .iter()
        .filter(|(_, builder, status)| builder == "fetch" && status == "built")
        .count();
    assert_eq!(fetched, packages, "one fixed-output path per .deb");
    assert!(
        first.contains(&(
            "small-debian-packages".into(),
            "debian-index".into(),
            "built".into()
        )),
        "{first:?}"
    );
    // The index agrees with the packages themselves.
    let index = std::fs::read_to_string(fixture.repo().join("result/Packages")).unwrap();
    assert_eq!(index.matches("\nFilename: pool/").count(), packages);
    let hello = index
        .split("\n\n")
        .find(|stanza| stanza.starts_with("Package: hello\n"))
        .expect("hello in the index");
    assert!(hello.contains("\nArchitecture: amd64\n"), "{hello}");
    assert!(
        regex::Regex::new(r"\nSHA256: [0-9a-f]{64}(\n|$)")
            .unwrap()
            .is_match(hello),
        "{hello}"
    );

    // Rebuilt from the store with the network forbidden: identical.
    let checked = fixture.ok(&["build", "image:small#packages", "--offline", "--check"]);
    assert!(
        text(&checked.stderr).contains("identical to the first build"),
        "{}",
        text(&checked.stderr)
    );

    // A second image with the same packages downloads nothing: it builds
    // offline from the paths the first one fetched.
    fixture.write("images/other.toml", &debian_image("[\"hello\"]"));
    fixture.ok(&["lock"]);
    let other = fixture.ok(&[
        "build",
        "image:other#packages",
        "--offline",
        "--json",
        "--no-link",
    ]);
    assert_eq!(
        results(&other),
        [(
            "other-debian-packages".into(),
            "debian-index".into(),
            "built".into()
        )]
    );
    fixture.ok(&["store", "verify"]);
}
