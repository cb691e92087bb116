//! The cloud-init NoCloud seed: golden output for the hosts under
//! `tests/fixtures/seed/`, what a YAML 1.1 reader makes of it, that no
//! secret reaches it, its errors, cloud-init's own verdict on it, and a
//! byte-identical ISO under any umask, time zone, locale and input mtime.
//!
//! cloud-init's verdict comes from Debian 12's cloud-init 22.4.2, run from
//! its package by `scripts/cloud-init-validator.sh` (never installed). If
//! the Debian mirror cannot be reached to fetch it, those tests print
//! `SKIP:` and pass; any other failure fails them. The ISO tests need
//! `xorriso` and `isoinfo` (Debian packages `xorriso`, `genisoimage`).
//!
//! To review a changed snapshot: `cargo insta test --test seed`, then
//! `cargo insta review`.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine as _;
use common::{have, mirror_reachable};
use kiln::builders::overlay::{self, OverlayInput};
use kiln::builders::seed::{self, Seed, SeedError, SeedInput};
use kiln::config::DocKind;
use kiln::eval::spec::{File, SystemConfig};
use proptest::prelude::*;
use serde_json::{Value, json};

const EPOCH: i64 = 1_700_000_000;
const INSTANCE_ID: &str = "kiln-0123456789abcdfghijklmnpqrsvwxyz";

// ── rendering ──────────────────────────────────────────────────────────────

fn fixture_root() -> PathBuf {
    common::root().join("tests/fixtures/seed")
}

/// A host of `root` and its `files.*.source` mapped to the repo's files.
fn evaluate(root: &Path, name: &str) -> (SystemConfig, BTreeMap<String, PathBuf>) {
    let evaluator = kiln::ops::open(Some(root), root).expect("open the repo");
    let id = evaluator
        .repo
        .find(DocKind::Host, name)
        .unwrap_or_else(|| panic!("host {name} exists"));
    let spec = evaluator
        .host(id)
        .unwrap_or_else(|d| panic!("host {name} evaluates: {d:?}"));
    let sources = spec
        .config
        .files
        .values()
        .filter_map(|file| file.source.clone())
        .map(|source| (source.clone(), root.join(&source)))
        .collect();
    (spec.config, sources)
}

/// The MACs a VM spec would give. `web`'s is all digits: YAML 1.1 reads
/// `52:54:00:12:34:56` unquoted as a base-60 number.
fn macs(host: &str) -> BTreeMap<String, String> {
    let pairs: &[(&str, &str)] = match host {
        "web" => &[("eth0", "52:54:00:12:34:56")],
        "dhcp" => &[("eth0", "BC:24:11:5E:00:01"), ("eth1", "bc:24:11:5e:00:02")],
        "bare" => &[("eth0", "bc:24:11:5e:00:03")],
        _ => &[],
    };
    pairs
        .iter()
        .map(|(name, mac)| ((*name).to_owned(), (*mac).to_owned()))
        .collect()
}

/// A rendered overlay (kept alive by the guard) and the seed made from it.
struct Rendered {
    _dir: tempfile::TempDir,
    overlay: PathBuf,
    config: SystemConfig,
    seed: Seed,
}

fn render_overlay(
    host: &str,
    config: &SystemConfig,
    sources: &BTreeMap<String, PathBuf>,
) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("overlay");
    let input = OverlayInput {
        host,
        config,
        sources,
        epoch: EPOCH,
    };
    overlay::render(&input, &out).expect("overlay renders");
    (dir, out)
}

fn try_seed(
    host: &str,
    config: &SystemConfig,
    macs: &BTreeMap<String, String>,
    overlay: &Path,
) -> Result<Seed, SeedError> {
    seed::render(&SeedInput {
        host,
        config,
        instance_id: INSTANCE_ID,
        macs,
        overlay,
    })
}

fn rendered_with(root: &Path, host: &str, macs: &BTreeMap<String, String>) -> Rendered {
    let (config, sources) = evaluate(root, host);
    let (dir, overlay) = render_overlay(host, &config, &sources);
    let seed = try_seed(host, &config, macs, &overlay).expect("seed renders");
    Rendered {
        _dir: dir,
        overlay,
        config,
        seed,
    }
}

fn rendered(host: &str) -> Rendered {
    rendered_with(&fixture_root(), host, &macs(host))
}

fn everything(seed: &Seed) -> String {
    seed.files()
        .iter()
        .map(|(name, text)| format!("──── {name} ────\n{text}"))
        .collect()
}

/// YAML as serde-saphyr reads it (the `#cloud-config` line is a comment).
fn parse(text: &str) -> Value {
    serde_saphyr::from_str(text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

// ── golden output ──────────────────────────────────────────────────────────

#[test]
fn golden_seed_of_web() {
    insta::assert_snapshot!("web", everything(&rendered("web").seed));
}

#[test]
fn golden_seed_of_dhcp() {
    insta::assert_snapshot!("dhcp", everything(&rendered("dhcp").seed));
}

#[test]
fn golden_seed_of_bare() {
    insta::assert_snapshot!("bare", everything(&rendered("bare").seed));
}

#[test]
fn without_macs_dhcp_is_asked_for_on_any_ethernet() {
    let seed = rendered_with(&fixture_root(), "bare", &BTreeMap::new()).seed;
    assert_eq!(
        seed.network_config,
        "version: 2\nethernets:\n  eth0:\n    match:\n      name: e*\n    dhcp4: true\n"
    );
}

#[test]
fn rendering_is_deterministic() {
    for host in ["web", "dhcp", "bare"] {
        assert_eq!(rendered(host).seed, rendered(host).seed, "{host}");
    }
}

// ── what a reader gets ─────────────────────────────────────────────────────

#[test]
fn user_data_reads_back_as_written() {
    let web = rendered("web");
    assert!(web.seed.user_data.starts_with("#cloud-config\n"));
    let data = parse(&web.seed.user_data);

    // Identity, and no distro `default` user.
    assert_eq!(data["hostname"], "web");
    assert_eq!(data["fqdn"], "web.home.arpa");
    assert_eq!(data["timezone"], "Europe/Berlin");
    let users = data["users"].as_array().expect("users is a list");
    let names: Vec<&str> = users.iter().filter_map(|u| u["name"].as_str()).collect();
    assert_eq!(names, ["admin", "deploy", "restic"]);
    assert!(users.iter().all(|u| u["lock_passwd"] == true));
    assert_eq!(users[0]["sudo"], "ALL=(ALL:ALL) NOPASSWD: ALL");
    assert_eq!(users[1]["sudo"], "ALL=(ALL:ALL) ALL");
    assert_eq!(users[2]["system"], true);
    assert_eq!(users[2]["primary_group"], "backup-data");
    assert!(users[2].get("sudo").is_none());

    // Every `files` entry, with the overlay's bytes, mode and owner.
    let files = data["write_files"].as_array().expect("write_files");
    let paths: Vec<&str> = files.iter().filter_map(|f| f["path"].as_str()).collect();
    let expected: Vec<&str> = web.config.files.keys().map(String::as_str).collect();
    assert_eq!(paths, expected);
    for file in files {
        let path = file["path"].as_str().unwrap();
        let on_disk = fs::read(web.overlay.join("root").join(&path[1..])).unwrap();
        let content = file["content"].as_str().unwrap();
        let bytes = if file.get("encoding").is_some() {
            assert_eq!(file["encoding"], "b64", "{path}");
            base64::engine::general_purpose::STANDARD
                .decode(content)
                .unwrap()
        } else {
            content.as_bytes().to_vec()
        };
        assert_eq!(bytes, on_disk, "{path}");
        let owner = file["owner"].as_str().unwrap();
        assert_eq!(
            file.get("defer") == Some(&json!(true)),
            owner != "root:root",
            "{path}"
        );
    }
    let by_path = |path: &str| files.iter().find(|f| f["path"] == path).unwrap();
    assert_eq!(by_path("/usr/share/web/blob.bin")["encoding"], "b64");
    assert_eq!(by_path("/etc/web/app.conf")["permissions"], "0640");
    assert_eq!(by_path("/etc/web/app.conf")["owner"], "deploy:www-data");
    assert_eq!(by_path("/usr/local/bin/healthcheck")["permissions"], "0755");
    assert_eq!(
        by_path("/etc/motd")["content"],
        "Welcome to web.\n\n  no: yes, on: off, 12:30 # not YAML\n"
    );

    // Commands exactly as configured; nothing here installs packages.
    assert_eq!(
        data["runcmd"],
        json!(web.config.cloud_init.runcmd),
        "{}",
        web.seed.user_data
    );
    assert_eq!(data["bootcmd"], json!(web.config.cloud_init.bootcmd));
    assert_eq!(data["package_update"], false);
    assert!(data.get("packages").is_none());

    let meta = parse(&web.seed.meta_data);
    assert_eq!(
        meta,
        json!({"instance-id": INSTANCE_ID, "local-hostname": "web"})
    );
    let network = parse(&web.seed.network_config);
    assert_eq!(
        network["ethernets"]["eth0"]["match"]["macaddress"],
        "52:54:00:12:34:56"
    );
}

#[test]
fn uppercase_macs_are_matched_in_lowercase() {
    let network = parse(&rendered("dhcp").seed.network_config);
    assert_eq!(
        network["ethernets"]["eth0"]["match"]["macaddress"],
        "bc:24:11:5e:00:01"
    );
}

#[test]
fn secrets_never_enter_the_seed() {
    let web = rendered("web");
    let passwords: Vec<&str> = web
        .config
        .users
        .values()
        .filter_map(|user| user.password.as_deref())
        .collect();
    assert_eq!(
        passwords.len(),
        2,
        "the fixture sets two password references"
    );
    let all = everything(&web.seed);
    for reference in passwords {
        let (scheme, rest) = reference.split_once(':').unwrap();
        assert!(!all.contains(reference), "{reference} leaked");
        assert!(!all.contains(rest), "{rest} leaked");
        assert!(!all.contains(&format!("{scheme}:")), "{scheme}: leaked");
    }
    let data = parse(&web.seed.user_data);
    for key in ["password", "chpasswd", "ssh_pwauth"] {
        assert!(data.get(key).is_none(), "{key} in the user-data");
    }
    for user in data["users"].as_array().unwrap() {
        for key in ["passwd", "hashed_passwd", "plain_text_passwd"] {
            assert!(user.get(key).is_none(), "{key} in {user}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Whatever a file holds, cloud-init writes exactly those bytes.
    #[test]
    fn any_file_content_round_trips(text in any::<String>()) {
        let (mut config, _) = evaluate(&fixture_root(), "bare");
        config.files.insert("/etc/kiln-test".to_owned(), File {
            text: Some(text.clone()),
            source: None,
            mode: "0644".to_owned(),
            owner: "root".to_owned(),
            group: "root".to_owned(),
        });
        let (_dir, overlay) = render_overlay("bare", &config, &BTreeMap::new());
        let seed = try_seed("bare", &config, &macs("bare"), &overlay).unwrap();
        let data = parse(&seed.user_data);
        let file = &data["write_files"][0];
        let content = file["content"].as_str().unwrap();
        let bytes = match file.get("encoding") {
            Some(_) => base64::engine::general_purpose::STANDARD.decode(content).unwrap(),
            None => content.as_bytes().to_vec(),
        };
        prop_assert_eq!(bytes, text.into_bytes());
    }
}

// ── errors ─────────────────────────────────────────────────────────────────

/// Render `host` after `change`; the error's message.
fn seed_error(
    host: &str,
    macs: BTreeMap<String, String>,
    change: impl FnOnce(&mut SystemConfig),
) -> String {
    let (mut config, sources) = evaluate(&fixture_root(), host);
    let (_dir, overlay) = render_overlay(host, &config, &sources);
    change(&mut config);
    try_seed(host, &config, &macs, &overlay)
        .expect_err("the seed should not render")
        .to_string()
}

#[test]
fn odd_input_is_an_error_not_a_panic() {
    let mac = |name: &str, mac: &str| BTreeMap::from([(name.to_owned(), mac.to_owned())]);
    let cases: Vec<(String, &str)> = vec![
        (
            seed_error("web", mac("eth0", "52:54:00:12:34"), |_| {}),
            "the MAC of eth0: `52:54:00:12:34` is not a MAC address",
        ),
        (
            seed_error("web", mac("eth9", "52:54:00:12:34:56"), |_| {}),
            "network.interfaces: the VM spec gives a MAC to `eth9`, which is not configured",
        ),
        (
            seed_error("dhcp", macs("dhcp"), |c| {
                c.network.interfaces.get_mut("eth0").unwrap().gateway = Some("10.0.0.1".into());
            }),
            "network.interfaces.eth0.gateway: a gateway needs a static IPv4 address on the interface",
        ),
        (
            seed_error("web", macs("web"), |c| {
                c.network.interfaces.get_mut("eth0").unwrap().gateway6 = Some("10.0.0.1".into());
            }),
            "network.interfaces.eth0.gateway6: `10.0.0.1` is not an IPv6 address",
        ),
        (
            seed_error("web", macs("web"), |c| {
                c.network.interfaces.get_mut("eth0").unwrap().address = vec!["10.0.0.1".into()];
            }),
            "network.interfaces.eth0.address[0]: `10.0.0.1` is not an address with a prefix length",
        ),
        (
            seed_error("web", macs("web"), |c| {
                let eth0 = c.network.interfaces.get_mut("eth0").unwrap();
                eth0.dhcp = true;
            }),
            "network.interfaces.eth0: has both `dhcp = true` and static addresses",
        ),
        (
            seed_error("web", macs("web"), |c| {
                c.network.nameservers = vec!["dns".into()]
            }),
            "network.nameservers[0]: `dns` is not an IP address",
        ),
        (
            seed_error("bare", macs("bare"), |c| c.hostname = Some("a b".into())),
            "hostname: `a b` is not a host name",
        ),
        (
            seed_error("web", macs("web"), |c| {
                c.files.insert(
                    "/etc/not-in-the-overlay".into(),
                    File {
                        text: Some("x".into()),
                        source: None,
                        mode: "0644".into(),
                        owner: "root".into(),
                        group: "root".into(),
                    },
                );
            }),
            "has no file /etc/not-in-the-overlay for files.\"/etc/not-in-the-overlay\"",
        ),
        (
            seed_error("web", macs("web"), |c| {
                c.users.insert("ghost".into(), c.users["admin"].clone());
            }),
            "has no account for `users.ghost`",
        ),
    ];
    for (message, expected) in cases {
        assert!(
            message.contains(expected),
            "expected `{expected}` in:\n{message}"
        );
    }
}

#[test]
fn a_bad_instance_id_or_overlay_is_an_error() {
    let (config, sources) = evaluate(&fixture_root(), "bare");
    let (_dir, overlay) = render_overlay("bare", &config, &sources);
    let macs = macs("bare");
    let input = |instance_id, overlay| SeedInput {
        host: "bare",
        config: &config,
        instance_id,
        macs: &macs,
        overlay,
    };
    let error = seed::render(&input("../etc", &overlay)).unwrap_err();
    assert!(
        error.to_string().starts_with("instance-id: `../etc`"),
        "{error}"
    );

    let missing = overlay.join("does-not-exist");
    let error = seed::render(&input(INSTANCE_ID, &missing)).unwrap_err();
    assert!(matches!(error, SeedError::ReadOverlay { .. }), "{error}");

    let manifest = overlay.join("manifest.json");
    let text = fs::read_to_string(&manifest).unwrap();
    fs::write(&manifest, text.replace("\"version\": 1", "\"version\": 99")).unwrap();
    let error = seed::render(&input(INSTANCE_ID, &overlay)).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("version 99 is not the supported 1"),
        "{error}"
    );
}

// ── cloud-init's verdict ───────────────────────────────────────────────────

#[allow(clippy::print_stderr, reason = "a skipped test must say so loudly")]
fn skip(message: &str) {
    eprintln!("SKIP: {message}");
}

/// Debian 12's cloud-init, unpacked by the validator script.
struct Validator {
    script: PathBuf,
    cache: PathBuf,
}

impl Validator {
    /// `None` (after a loud notice) when the package cannot be fetched.
    fn get() -> Option<Validator> {
        let validator = Validator {
            script: common::root().join("scripts/cloud-init-validator.sh"),
            cache: Path::new(env!("CARGO_TARGET_TMPDIR")).join("cloud-init"),
        };
        let output = validator.run(&[]);
        if output.status.success() {
            return Some(validator);
        }
        let log = format!(
            "{}{}",
            common::text(&output.stdout),
            common::text(&output.stderr)
        );
        if output.status.code() == Some(69) || !mirror_reachable() {
            skip(&format!(
                "cloud-init 22.4.2 could not be fetched from the Debian mirror; \
                 user-data and network-config were NOT validated\n{log}"
            ));
            return None;
        }
        panic!("scripts/cloud-init-validator.sh failed:\n{log}");
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("bash")
            .arg(&self.script)
            .args(args)
            .env("KILN_CLOUD_INIT_CACHE", &self.cache)
            .output()
            .expect("run bash")
    }

    /// `cloud-init schema --config-file FILE`: its output, and whether it passed.
    fn schema(&self, user_data: &str) -> (bool, String) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("user-data");
        fs::write(&file, user_data).unwrap();
        let output = self.run(&["schema", "--config-file", file.to_str().unwrap()]);
        let log = format!(
            "{}{}",
            common::text(&output.stdout),
            common::text(&output.stderr)
        );
        (output.status.success(), log)
    }

    /// `cloud-init devel net-convert` to `renderer`: every file written, by
    /// path under the output directory.
    fn net_convert(&self, network_config: &str, renderer: &str) -> BTreeMap<String, String> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("network-config");
        fs::write(&file, network_config).unwrap();
        let out = dir.path().join("out");
        let output = self.run(&[
            "devel",
            "net-convert",
            "-p",
            file.to_str().unwrap(),
            "-k",
            "yaml",
            "-d",
            out.to_str().unwrap(),
            "-D",
            "debian",
            "-O",
            renderer,
        ]);
        assert!(
            output.status.success(),
            "net-convert -O {renderer} failed on\n{network_config}\n{}{}",
            common::text(&output.stdout),
            common::text(&output.stderr)
        );
        let mut files = BTreeMap::new();
        collect_files(&out, &out, &mut files);
        files
    }
}

fn collect_files(base: &Path, dir: &Path, files: &mut BTreeMap<String, String>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect_files(base, &path, files);
        } else {
            let name = path.strip_prefix(base).unwrap().display().to_string();
            files.insert(name, fs::read_to_string(&path).unwrap());
        }
    }
}

/// The fixture hosts' seeds and the example fleet's VM hosts' seeds.
fn all_seeds() -> Vec<(String, Seed)> {
    let mut seeds: Vec<(String, Seed)> = ["web", "dhcp", "bare"]
        .into_iter()
        .map(|host| (host.to_owned(), rendered(host).seed))
        .collect();
    seeds.push((
        "bare without MACs".to_owned(),
        rendered_with(&fixture_root(), "bare", &BTreeMap::new()).seed,
    ));
    let fleet = common::root();
    let evaluator = kiln::ops::open(Some(&fleet), &fleet).expect("open the example fleet");
    for id in evaluator.repo.of_kind(DocKind::Host) {
        let name = evaluator.repo.document(id).name.clone();
        let Ok(spec) = evaluator.host(id) else {
            panic!("fleet host {name} evaluates");
        };
        if spec.guest != kiln::eval::spec::GuestKind::Vm {
            continue;
        }
        let macs: BTreeMap<String, String> = spec
            .config
            .network
            .interfaces
            .keys()
            .enumerate()
            .map(|(i, name)| (name.clone(), format!("bc:24:11:00:00:{i:02x}")))
            .collect();
        let seed = rendered_with(&fleet, &name, &macs).seed;
        seeds.push((format!("fleet host {name}"), seed));
    }
    assert!(seeds.len() > 4, "the example fleet has a VM host");
    seeds
}

#[test]
fn user_data_passes_cloud_init_schema() {
    let Some(validator) = Validator::get() else {
        return;
    };
    for (host, seed) in all_seeds() {
        let (passed, log) = validator.schema(&seed.user_data);
        assert!(
            passed && log.contains("Valid cloud-config"),
            "{host}: cloud-init schema rejects\n{}\n{log}",
            seed.user_data
        );
        assert!(
            !log.to_lowercase().contains("deprecated"),
            "{host}: deprecated keys\n{log}"
        );
    }
}

#[test]
fn the_schema_check_can_fail() {
    let Some(validator) = Validator::get() else {
        return;
    };
    let bad = [
        // A typo in a user key, and write_files permissions as a number.
        "#cloud-config\nusers:\n- name: admin\n  lock_password: true\n",
        "#cloud-config\nwrite_files:\n- path: /etc/x\n  content: x\n  permissions: 420\n",
        "#cloud-config\nruncmd: echo hi\n",
    ];
    for user_data in bad {
        let (passed, log) = validator.schema(user_data);
        assert!(
            !passed && log.contains("schema errors"),
            "cloud-init schema accepts\n{user_data}\n{log}"
        );
    }
}

#[test]
fn network_config_converts_with_cloud_init() {
    let Some(validator) = Validator::get() else {
        return;
    };
    for (host, seed) in all_seeds() {
        // ifupdown everywhere; the other renderers for the fixture hosts.
        let renderers: &[&str] = if host.starts_with("fleet") {
            &["eni"]
        } else {
            &["eni", "networkd", "netplan"]
        };
        for renderer in renderers {
            let files = validator.net_convert(&seed.network_config, renderer);
            assert!(
                !files.is_empty(),
                "{host}: net-convert -O {renderer} wrote nothing"
            );
        }
    }

    // Debian 12 images use ifupdown: cloud-init's ENI renderer.
    let web = validator.net_convert(&rendered("web").seed.network_config, "eni");
    let interfaces = &web["etc/network/interfaces.d/50-cloud-init"];
    for line in [
        "auto eth0",
        "iface eth0 inet static",
        "address 192.168.10.21/24",
        "gateway 192.168.10.1",
        "mtu 1450",
        "iface eth0 inet6 static",
        "address fd00:10::21/64",
        "gateway fd00:10::1",
        "dns-nameservers 192.168.10.1 fd00:10::1",
        "dns-search home.arpa lab.home.arpa",
    ] {
        assert!(
            interfaces.lines().any(|l| l.trim() == line),
            "web: no `{line}` in\n{interfaces}"
        );
    }
    let rules = &web["etc/udev/rules.d/70-persistent-net.rules"];
    assert!(
        rules.contains(r#"ATTR{address}=="52:54:00:12:34:56", NAME="eth0""#),
        "{rules}"
    );

    let dhcp = validator.net_convert(&rendered("dhcp").seed.network_config, "eni");
    let interfaces = &dhcp["etc/network/interfaces.d/50-cloud-init"];
    for line in [
        "iface eth0 inet dhcp",
        "iface eth0 inet6 dhcp",
        "iface eth1 inet static",
        "address 10.30.0.5/24",
        "mtu 9000",
    ] {
        assert!(
            interfaces.lines().any(|l| l.trim() == line),
            "dhcp: no `{line}` in\n{interfaces}"
        );
    }
    assert!(!interfaces.contains("gateway"), "{interfaces}");

    let bare = validator.net_convert(&rendered("bare").seed.network_config, "eni");
    let interfaces = &bare["etc/network/interfaces.d/50-cloud-init"];
    assert!(interfaces.contains("iface eth0 inet dhcp"), "{interfaces}");
}

/// PyYAML is the YAML 1.1 reader cloud-init uses (`yaml.safe_load`): it
/// must read every seed file exactly as serde-saphyr does.
#[test]
fn pyyaml_reads_what_kiln_wrote() {
    // The validator installs python3-yaml.
    if Validator::get().is_none() {
        return;
    }
    let script = "import json, sys, yaml\n\
                  json.dump(yaml.safe_load(open(sys.argv[1], encoding='utf-8')), sys.stdout)";
    for (host, seed) in all_seeds() {
        for (name, text) in seed.files() {
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join(name);
            fs::write(&file, text).unwrap();
            let output = Command::new("/usr/bin/python3")
                .args(["-c", script])
                .arg(&file)
                .output()
                .expect("run python3");
            assert!(
                output.status.success(),
                "{host} {name}: {}",
                common::text(&output.stderr)
            );
            let pyyaml: Value = serde_json::from_slice(&output.stdout).unwrap();
            assert_eq!(pyyaml, parse(text), "{host} {name}:\n{text}");
        }
    }
}

// ── the ISO ────────────────────────────────────────────────────────────────

/// Not a test on its own: the ISO test runs this binary again, under
/// another umask, time zone and locale, with `KILN_SEED_ISO_CHILD` naming a
/// directory. It renders `web` (overlay, seed, ISO) there, with the
/// overlay's mtimes moved to now when `KILN_SEED_TOUCH` is set.
#[test]
fn iso_child() {
    let Some(dir) = std::env::var_os("KILN_SEED_ISO_CHILD").map(PathBuf::from) else {
        return;
    };
    // Proof of the umask this process runs under.
    fs::write(dir.join("umask-probe"), "").unwrap();
    let (config, sources) = evaluate(&fixture_root(), "web");
    let overlay = dir.join("overlay");
    let input = OverlayInput {
        host: "web",
        config: &config,
        sources: &sources,
        epoch: EPOCH,
    };
    overlay::render(&input, &overlay).unwrap();
    if std::env::var_os("KILN_SEED_TOUCH").is_some() {
        touch_tree(&overlay);
    }
    let seed = try_seed("web", &config, &macs("web"), &overlay).unwrap();
    let work = dir.join("work");
    fs::create_dir(&work).unwrap();
    seed::write_iso(&seed, &work, &dir.join("seed.iso"), EPOCH as u64).unwrap();
}

fn touch_tree(path: &Path) {
    let now = fs::FileTimes::new().set_modified(std::time::SystemTime::now());
    for entry in fs::read_dir(path).unwrap() {
        let path = entry.unwrap().path();
        if path.is_symlink() {
            continue;
        }
        if path.is_dir() {
            touch_tree(&path);
        }
        fs::File::open(&path).unwrap().set_times(now).unwrap();
    }
}

fn build_iso_in_child(dir: &Path, umask: &str, tz: &str, locale: &str, touch: bool) -> PathBuf {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(format!("umask {umask} && exec \"$0\" \"$@\""))
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", "iso_child", "--nocapture"])
        .env("KILN_SEED_ISO_CHILD", dir)
        .env("TZ", tz)
        .env("LC_ALL", locale)
        .env("LANG", locale);
    if touch {
        command.env("KILN_SEED_TOUCH", "1");
    }
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "child build failed:\n{}{}",
        common::text(&output.stdout),
        common::text(&output.stderr)
    );
    let probe = fs::metadata(dir.join("umask-probe")).expect("the child ran");
    let expected = 0o666 & !u32::from_str_radix(umask, 8).unwrap();
    assert_eq!(
        probe.permissions().mode() & 0o777,
        expected,
        "umask {umask}"
    );
    dir.join("seed.iso")
}

fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .env("LC_ALL", "C")
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        common::text(&output.stderr)
    );
    common::text(&output.stdout)
}

#[test]
fn iso_is_identical_under_any_umask_time_zone_locale_and_mtimes() {
    for tool in ["xorriso", "isoinfo"] {
        assert!(
            have(tool),
            "`{tool}` is missing: apt-get install xorriso genisoimage"
        );
    }
    let one = tempfile::tempdir().unwrap();
    let two = tempfile::tempdir().unwrap();
    let first = build_iso_in_child(one.path(), "022", "UTC", "C", false);
    let second = build_iso_in_child(two.path(), "077", "Pacific/Chatham", "tr_TR.UTF-8", true);
    let bytes = fs::read(&first).unwrap();
    assert!(
        bytes == fs::read(&second).unwrap(),
        "the two ISOs differ: {} {}",
        first.display(),
        second.display()
    );
    assert_eq!(
        fs::metadata(&first).unwrap().permissions().mode() & 0o777,
        0o644
    );

    // What an independent reader (cdrkit's isoinfo) sees.
    let iso = first.to_str().unwrap();
    let descriptor = run("isoinfo", &["-d", "-i", iso]);
    for line in [
        "Volume id: cidata",
        "Joliet with UCS level 3 found",
        "Rock Ridge signatures version 1 found",
    ] {
        assert!(descriptor.contains(line), "no `{line}` in\n{descriptor}");
    }
    let names = |listing: &str| -> Vec<String> {
        listing
            .lines()
            .filter(|l| l.starts_with('-'))
            .filter_map(|l| l.split_whitespace().last().map(str::to_owned))
            .collect()
    };
    let expected = ["meta-data", "network-config", "user-data"];
    assert_eq!(names(&run("isoinfo", &["-J", "-l", "-i", iso])), expected);
    assert_eq!(names(&run("isoinfo", &["-R", "-l", "-i", iso])), expected);
    assert!(
        run("isoinfo", &["-R", "-l", "-i", iso])
            .lines()
            .filter(|l| l.starts_with('-'))
            .all(|l| l.starts_with("-r--r--r--   1    0    0")),
        "files are root-owned and read-only"
    );
    // Every date is the epoch (2023-11-14 22:13:20 UTC), whatever the mtimes.
    let listing = run("isoinfo", &["-R", "-l", "-i", iso]);
    let entries: Vec<&str> = listing
        .lines()
        .filter(|l| l.starts_with(['d', '-']))
        .collect();
    assert_eq!(entries.len(), 5, "{listing}");
    assert!(
        entries.iter().all(|l| l.contains("Nov 14 2023")),
        "{listing}"
    );

    // Extracted, the files are the seed.
    let seed = rendered("web").seed;
    let out = one.path().join("extracted");
    run(
        "xorriso",
        &[
            "-no_rc",
            "-osirrox",
            "on",
            "-indev",
            iso,
            "-extract",
            "/",
            out.to_str().unwrap(),
        ],
    );
    fs::set_permissions(&out, fs::Permissions::from_mode(0o755)).unwrap();
    let mut found: Vec<String> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    assert_eq!(found, expected);
    for (name, text) in seed.files() {
        assert_eq!(fs::read_to_string(out.join(name)).unwrap(), text, "{name}");
    }
}

#[test]
fn write_iso_never_overwrites() {
    let seed = rendered("bare").seed;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("seed.iso");
    fs::write(&out, "keep me").unwrap();
    let error = seed::write_iso(&seed, dir.path(), &out, EPOCH as u64).unwrap_err();
    assert!(matches!(error, SeedError::OutputExists { .. }), "{error}");
    assert_eq!(fs::read_to_string(&out).unwrap(), "keep me");
}
