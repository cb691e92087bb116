//! Substitution through `kiln build`, against a real S3-protocol server
//! (moto on loopback): build in store A and push; `kiln build` in an empty
//! store B substitutes everything and builds nothing, byte for byte; a
//! tampered archive or record is refused with a clear error and nothing
//! is registered; an unreachable cache means building instead; `--check`
//! substitutes and then rebuilds to compare.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::moto::Moto;
use kiln::cache::{CacheBackend, CacheKey};

const CACHE: &str = "s3://kiln-cache/fleet";

/// A repo with two LXC hosts on one local rootfs tarball (no mirror
/// needed), and a signing key pair.
struct Fixture {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
    public_key: String,
}

impl Fixture {
    fn new(moto: &Moto) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let fixture = Fixture {
            env: moto.env(),
            public_key: String::new(),
            dir,
        };
        let served = fixture.dir.path().join("served");
        std::fs::create_dir_all(&served).unwrap();
        let tarball = common::rootfs_tarball(&served);
        fixture.write(
            "images/mini.toml",
            &format!(
                "[image]\nformats = [\"lxc\"]\nversion = \"1.0\"\n\n[image.base.url]\nurl = \"file://{}\"\n",
                tarball.display()
            ),
        );
        for (host, vmid, motd) in [("db", 120, "the database\n"), ("web", 121, "the web\n")] {
            fixture.write(
                &format!("hosts/{host}.toml"),
                &format!(
                    "[host]\nkind = \"lxc\"\nimage = \"mini\"\nnode = \"pve1\"\nvmid = {vmid}\n\n\
                     [config.files.\"/etc/motd\"]\ntext = {motd:?}\n"
                ),
            );
        }
        let mut fixture = fixture;
        common::ok(fixture.kiln("A", &["lock"]), "lock");
        let key_file = fixture.dir.path().join("cache.sec");
        let keygen = fixture.kiln(
            "A",
            &[
                "cache",
                "keygen",
                "test-cache-1",
                "--secret-key-file",
                key_file.to_str().unwrap(),
            ],
        );
        fixture.public_key = common::text(&common::ok(keygen, "keygen").stdout)
            .trim()
            .to_owned();
        fixture
    }

    fn repo(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    fn write(&self, relative: &str, contents: &str) {
        let path = self.repo().join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
    }

    fn store(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("store-{name}"))
    }

    /// Point kiln.toml at the cache, trusting `key`.
    fn trust(&self, key: &str) {
        self.write(
            "kiln.toml",
            &format!("[cache]\nsubstituters = [\"{CACHE}\"]\ntrusted_keys = [\"{key}\"]\n"),
        );
    }

    fn kiln(&self, store: &str, args: &[&str]) -> Output {
        self.kiln_with(store, args, &[])
    }

    fn kiln_with(&self, store: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["--color", "never", "--store"])
            .arg(self.store(store))
            .args(args)
            .current_dir(self.repo())
            .env_remove("KILN_SUBSTITUTERS")
            .env_remove("KILN_TRUSTED_KEYS")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(env.iter().copied())
            .output()
            .expect("run kiln")
    }

    /// `kiln build --json EXTRA…`: each result's name and status.
    fn build(&self, store: &str, extra: &[&str]) -> Vec<(String, String, serde_json::Value)> {
        let mut args = vec!["build", "--no-link", "--json"];
        args.extend(extra);
        let output = common::ok(self.kiln(store, &args), "build");
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        json["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["name"].as_str().unwrap().to_owned(),
                    r["path"].as_str().unwrap().to_owned(),
                    r["status"].clone(),
                )
            })
            .collect()
    }

    /// Valid paths of a store and their NAR hashes (`kiln store path-info`).
    fn valid(&self, store: &str) -> BTreeMap<String, String> {
        let listed = self.kiln(store, &["store", "ls", "--json"]);
        let json: serde_json::Value =
            serde_json::from_slice(&common::ok(listed, "store ls").stdout).unwrap();
        json["paths"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let path = p["path"].as_str().unwrap().to_owned();
                let info = self.kiln(store, &["store", "path-info", &path, "--json"]);
                let info: serde_json::Value =
                    serde_json::from_slice(&common::ok(info, "path-info").stdout).unwrap();
                let name = Path::new(&path)
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                (
                    name,
                    info["record"]["nar_sha256"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    fn cache(&self) -> CacheBackend {
        CacheBackend::open_with_env(CACHE, self.env.clone()).unwrap()
    }
}

fn stderr(output: &Output) -> String {
    common::text(&output.stderr)
}

/// The store path names of the roots in `results`.
fn roots(results: &[(String, String, serde_json::Value)], names: &[&str]) -> Vec<String> {
    names
        .iter()
        .map(|name| {
            results
                .iter()
                .find(|(n, _, _)| n == name)
                .unwrap_or_else(|| panic!("{name} not in {results:?}"))
                .1
                .clone()
        })
        .collect()
}

#[test]
fn an_empty_store_substitutes_everything_and_builds_nothing() {
    let Some(moto) = Moto::start(&[]) else { return };
    moto.create_bucket("kiln-cache");
    let fixture = Fixture::new(&moto);

    // Store A builds everything (no kiln.toml yet: no caches).
    let built = fixture.build("A", &["--all"]);
    assert!(
        built.iter().all(|(_, _, s)| s == "built"),
        "store A builds: {built:?}"
    );
    let hosts = roots(&built, &["db-lxc", "web-lxc"]);
    let key_file = fixture.dir.path().join("cache.sec");
    let mut push = vec![
        "cache",
        "push",
        "--to",
        CACHE,
        "--secret-key-file",
        key_file.to_str().unwrap(),
    ];
    push.extend(hosts.iter().map(String::as_str));
    common::ok(fixture.kiln("A", &push), "push");
    fixture.trust(&fixture.public_key);

    // Store B: the dry run says what would be substituted, and nothing is
    // built.
    let dry = common::ok(
        fixture.kiln("B", &["build", "--all", "--dry-run", "--json"]),
        "dry run",
    );
    let dry: serde_json::Value = serde_json::from_slice(&dry.stdout).unwrap();
    assert_eq!(dry["kind"], "build-dry-run");
    assert_eq!(dry["substituters"], serde_json::json!([CACHE]));
    let actions: Vec<&str> = dry["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["substitute", "substitute"], "{dry:#}");
    for derivation in dry["derivations"].as_array().unwrap() {
        assert_eq!(derivation["action"], "substitute", "{dry:#}");
        assert_eq!(derivation["from"], CACHE);
    }
    let human = common::ok(
        fixture.kiln("B", &["build", "--all", "--dry-run"]),
        "dry run",
    );
    let human = common::text(&human.stdout);
    assert_eq!(human.matches("would substitute ").count(), 2, "{human}");
    assert!(!human.contains("would build"), "{human}");

    let substituted = fixture.build("B", &["--all"]);
    assert!(!substituted.is_empty());
    for (name, _, status) in &substituted {
        assert_eq!(
            status,
            &serde_json::json!({ "substituted": { "from": CACHE } }),
            "{name} in store B: {substituted:?}"
        );
    }
    // Byte for byte: every path B holds is in A with the same NAR hash,
    // and B holds only what the images need at run time (no tarball, no
    // build inputs).
    let a = fixture.valid("A");
    let b = fixture.valid("B");
    for (name, hash) in &b {
        assert_eq!(a.get(name), Some(hash), "{name} differs from store A");
    }
    for host in &hosts {
        let name = Path::new(host).file_name().unwrap().to_str().unwrap();
        assert!(b.contains_key(name), "{name} missing from store B");
    }
    assert!(b.len() < a.len(), "B has only the run-time closure: {b:?}");
    common::ok(fixture.kiln("B", &["store", "verify"]), "verify B");
    // Nothing left to do.
    let again = fixture.build("B", &["--all"]);
    assert!(again.iter().all(|(_, _, s)| s == "valid"), "{again:?}");

    // --check: substitute what the cache has, rebuild it here, compare.
    let checked = fixture.build("E", &["--all", "--check"]);
    let statuses: Vec<&serde_json::Value> = checked.iter().map(|(_, _, s)| s).collect();
    assert!(
        statuses.contains(&&serde_json::json!("checked_same")),
        "{checked:?}"
    );
    assert!(
        !statuses
            .iter()
            .any(|s| s.get("checked_different").is_some()),
        "{checked:?}"
    );
}

#[test]
fn a_tampered_cache_is_refused_and_nothing_is_registered() {
    let Some(moto) = Moto::start(&[]) else { return };
    moto.create_bucket("kiln-cache");
    let fixture = Fixture::new(&moto);
    let built = fixture.build("A", &["db"]);
    let db = roots(&built, &["db-lxc"]).remove(0);
    let db_name = Path::new(&db)
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let hash_part = db_name.split('-').next().unwrap().to_owned();
    let key_file = fixture.dir.path().join("cache.sec");
    common::ok(
        fixture.kiln(
            "A",
            &[
                "cache",
                "push",
                "--to",
                CACHE,
                "--secret-key-file",
                key_file.to_str().unwrap(),
                &db,
            ],
        ),
        "push",
    );
    fixture.trust(&fixture.public_key);
    let cache = fixture.cache();
    let record_key = CacheKey::new(&format!("{hash_part}.narinfo")).unwrap();
    let record = String::from_utf8(cache.get(&record_key).unwrap().unwrap().to_vec()).unwrap();
    let archive_url = record
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .unwrap()
        .to_owned();
    let archive_key = CacheKey::new(&archive_url).unwrap();
    let archive = cache.get(&archive_key).unwrap().unwrap();

    let refused = |store: &str, expect: &str| {
        let output = fixture.kiln(store, &["build", "db", "--no-link"]);
        let message = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{message}");
        assert!(
            message.contains(expect),
            "expected {expect:?} in:\n{message}"
        );
        assert!(!message.contains("panicked"), "{message}");
        assert!(
            !message.contains("built "),
            "nothing is built after a refusal:\n{message}"
        );
        let valid = fixture.valid(store);
        assert!(
            !valid.contains_key(&db_name),
            "{db_name} registered in {store}"
        );
        message
    };

    // An archive replaced by other, well-formed bytes.
    let mut other = zstd::encode_all(&b"not the image"[..], 3).unwrap();
    cache.put(&archive_key, other.clone()).unwrap();
    let message = refused("C", "the cache was tampered with or damaged");
    assert!(message.contains(&archive_url), "{message}");
    // A truncated archive.
    other.clear();
    other.extend_from_slice(&archive[..archive.len() / 2]);
    cache.put(&archive_key, other).unwrap();
    refused("C", "the cache was tampered with or damaged");
    cache.put(&archive_key, archive.clone()).unwrap();

    // A record changed after signing (it claims a smaller NAR).
    let changed: String = record
        .lines()
        .map(|l| {
            if l.starts_with("NarSize: ") {
                "NarSize: 512".to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    cache.put(&record_key, changed).unwrap();
    refused("D", "does not match the record");
    // An unsigned one.
    let unsigned: String = record
        .lines()
        .filter(|l| !l.starts_with("Sig: "))
        .map(|l| format!("{l}\n"))
        .collect();
    cache.put(&record_key, unsigned).unwrap();
    refused("D", "is not signed");
    cache.put(&record_key, record.clone()).unwrap();

    // Signed, but not by a key this repo trusts.
    let other_key = fixture.dir.path().join("other.sec");
    let keygen = fixture.kiln(
        "A",
        &[
            "cache",
            "keygen",
            "someone-else-1",
            "--secret-key-file",
            other_key.to_str().unwrap(),
        ],
    );
    let stranger = common::text(&common::ok(keygen, "keygen").stdout);
    fixture.trust(stranger.trim());
    refused("D", "test-cache-1");
    fixture.trust(&fixture.public_key);

    // The genuine cache still works, in the same store.
    let substituted = fixture.build("D", &["db"]);
    assert!(
        substituted
            .iter()
            .all(|(_, _, s)| s.get("substituted").is_some()),
        "{substituted:?}"
    );
}

#[test]
fn an_unreachable_cache_means_building_instead() {
    let Some(moto) = Moto::start(&[]) else { return };
    let fixture = Fixture::new(&moto);
    fixture.trust(&fixture.public_key);
    let dead = format!("http://127.0.0.1:{}", common::moto::free_port());
    let output = fixture.kiln_with(
        "B",
        &["build", "db", "--no-link", "--json"],
        &[("AWS_ENDPOINT_URL", &dead)],
    );
    let message = stderr(&output);
    assert!(output.status.success(), "{message}");
    assert!(
        message.contains(&format!("warning: not substituting from {CACHE}")),
        "{message}"
    );
    assert_eq!(
        message.matches("not substituting from").count(),
        1,
        "{message}"
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(
        json["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"] == "built"),
        "{json:#}"
    );
    // A configuration that names caches but trusts no key is refused
    // before anything is built.
    fixture.write(
        "kiln.toml",
        &format!("[cache]\nsubstituters = [\"{CACHE}\"]\n"),
    );
    let untrusting = fixture.kiln("C", &["build", "db", "--no-link"]);
    assert_eq!(untrusting.status.code(), Some(1), "{}", stderr(&untrusting));
    assert!(
        stderr(&untrusting).contains("no key is trusted"),
        "{}",
        stderr(&untrusting)
    );
    // --no-substitute builds without asking.
    common::ok(
        fixture.kiln("C", &["build", "db", "--no-link", "--no-substitute"]),
        "--no-substitute",
    );
}
