//! The example fleet in this repo: it checks, and every target's evaluated
//! spec matches its golden snapshot (tests/snapshots/fleet__eval-*.snap).

mod common;

use common::{kiln, root, text};

fn names(directory: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root().join(directory))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn example_fleet_checks() {
    let output = kiln(&root(), &["check"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert_eq!(
        text(&output.stdout),
        "ok: 5 hosts, 1 image, 2 stacks, 7 modules\n"
    );
    assert_eq!(text(&output.stderr), "");
}

/// The example's lockfile pins every input as configured, and is written
/// exactly as `kiln lock` writes it (so a re-lock is a minimal diff).
#[test]
fn example_lockfile_is_current_and_canonical() {
    let output = kiln(&root(), &["lock", "--locked"]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(root().join("lockfile.toml")).unwrap();
    let lock = kiln::lock::Lockfile::parse(&text).unwrap();
    assert_eq!(lock.to_text(), text);
    // Every stack image is pinned by digest.
    assert_eq!(lock.oci.len(), 8, "{:?}", lock.oci.keys());
}

#[test]
fn example_fleet_models_the_homelab() {
    assert_eq!(
        names("hosts"),
        ["db", "docker-host", "monitoring", "netbox", "vault"]
    );
    assert_eq!(names("images"), ["debian-12"]);
}

#[test]
fn golden_eval_json_of_every_target() {
    let targets = names("hosts")
        .into_iter()
        .chain(names("images").into_iter().map(|n| format!("image:{n}")))
        .chain(names("stacks").into_iter().map(|n| format!("stack:{n}")));
    for target in targets {
        let output = kiln(&root(), &["eval", &target, "--json"]);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{target}: {}",
            text(&output.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        // Hosts round-trip through the library's typed spec.
        if !target.contains(':') {
            let spec: kiln::eval::spec::HostSpec = serde_json::from_value(json.clone()).unwrap();
            assert_eq!(spec.name, target);
            assert!(spec.config.proxmox.vmid.is_some());
        }
        insta::assert_snapshot!(
            format!("eval-{}", target.replace(':', "-")),
            text(&output.stdout)
        );
    }
}

#[test]
fn human_eval_is_toml() {
    let output = kiln(&root(), &["eval", "monitoring"]);
    assert_eq!(output.status.code(), Some(0));
    let parsed: toml::Table = toml::from_str(&text(&output.stdout)).unwrap();
    assert_eq!(parsed["name"].as_str(), Some("monitoring"));
}

#[test]
fn option_reference_in_docs_is_current() {
    let output = kiln(&root(), &["options", "--markdown"]);
    assert_eq!(output.status.code(), Some(0));
    let committed = std::fs::read_to_string(root().join("docs/src/reference/options.md")).unwrap();
    assert!(
        committed == text(&output.stdout),
        "docs/src/reference/options.md is stale: run `cargo run -- options --markdown > docs/src/reference/options.md`"
    );
}

#[test]
fn options_json_lists_builtins_and_module_options() {
    let output = kiln(&root(), &["options", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["kind"], "options");
    let options = json["options"].as_array().unwrap();
    let find = |path: &str| {
        options
            .iter()
            .find(|o| o["path"] == path)
            .unwrap_or_else(|| panic!("{path} missing"))
    };
    assert_eq!(find("ssh.port")["type"], "port");
    assert_eq!(find("ssh.port")["default"], "22");
    assert_eq!(
        find("ssh.port")["declared_in"],
        "modules/ssh-hardened.toml:5"
    );
    assert_eq!(find("users.<name>.uid")["declared_in"], "kiln");
    assert_eq!(find("proxmox.memory")["type"], "size");
}

#[test]
fn unknown_target_is_an_error_with_a_hint() {
    let output = kiln(&root(), &["eval", "monitorng"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("no host named `monitorng`"));
    assert!(text(&output.stderr).contains("did you mean `monitoring`?"));
}

#[test]
fn usage_errors_exit_2() {
    let output = kiln(&root(), &["eval"]);
    assert_eq!(output.status.code(), Some(2));
    let output = kiln(&root(), &["eval", "bogus:x"]);
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn no_repo_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let output = kiln(dir.path(), &["check"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stderr).contains("no kiln repo found"),
        "{}",
        text(&output.stderr)
    );
}

/// Deploy-only options (`proxmox.api.*`, `health.*`) are not build
/// inputs: changing the endpoint or a health check rebuilds nothing.
#[test]
fn deploy_options_do_not_change_derivations() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("repo");
    for sub in ["hosts", "images", "modules", "stacks"] {
        common::copy_tree(&root().join(sub), &copy.join(sub));
    }
    std::fs::copy(root().join("lockfile.toml"), copy.join("lockfile.toml")).unwrap();
    let hash = |repo: &std::path::Path, host: &str| {
        let output = kiln(repo, &["show-derivation", host, "--json"]);
        assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
        let value: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        value["hash"].as_str().unwrap().to_owned()
    };
    let before = (hash(&copy, "db"), hash(&copy, "docker-host"));
    let base = std::fs::read_to_string(copy.join("modules/base.toml")).unwrap();
    std::fs::write(
        copy.join("modules/base.toml"),
        base.replace("https://pve1.home.arpa:8006", "https://pve2.home.arpa:8006")
            .replace("[config]\n", "[config]\nproxmox.api.timeout = 30\n"),
    )
    .unwrap();
    let after = (hash(&copy, "db"), hash(&copy, "docker-host"));
    assert_eq!(before, after);
    // …while a build input does change them.
    std::fs::write(
        copy.join("modules/base.toml"),
        base.replace("Europe/Berlin", "Europe/Paris"),
    )
    .unwrap();
    assert_ne!(hash(&copy, "db"), before.0);
}
