//! Stack bundles as derivations, through the real binary: `kiln build
//! stack:NAME` is byte-identical across stores, umask, TZ and locale;
//! `kiln render` copies exactly the store's bundle out (whole or not at
//! all); a host carries the compose bundles of the stacks that name it.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{copy_tree, kiln_under, ok, root, text};

/// A copy of the example repo (hosts, images, modules, stacks, lock).
fn repo() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    for part in ["hosts", "images", "modules", "stacks"] {
        copy_tree(&root().join(part), &repo.join(part));
    }
    std::fs::copy(root().join("lockfile.toml"), repo.join("lockfile.toml")).unwrap();
    (dir, repo)
}

/// Every file under `dir`, by relative path, with its bytes and mode.
fn tree(dir: &Path) -> BTreeMap<String, (Vec<u8>, u32)> {
    use std::os::unix::fs::PermissionsExt;
    fn walk(dir: &Path, prefix: &str, out: &mut BTreeMap<String, (Vec<u8>, u32)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .collect();
        entries.sort_by_key(std::fs::DirEntry::file_name);
        for entry in entries {
            let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
            let meta = std::fs::symlink_metadata(entry.path()).unwrap();
            if meta.is_dir() {
                walk(&entry.path(), &format!("{name}/"), out);
            } else {
                out.insert(
                    name,
                    (
                        std::fs::read(entry.path()).unwrap(),
                        meta.permissions().mode() & 0o777,
                    ),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, "", &mut out);
    out
}

/// The last stdout line of a build: the output path.
fn built_path(output: &std::process::Output) -> PathBuf {
    PathBuf::from(text(&output.stdout).lines().last().unwrap_or_default())
}

#[test]
fn stack_bundles_are_byte_identical_across_stores_umask_tz_and_locale() {
    let (dir, repo) = repo();
    let (store_a, store_b) = (dir.path().join("store-a"), dir.path().join("store-b"));
    for target in ["stack:ai#compose", "stack:ai#k8s@dev", "stack:edge#compose"] {
        let a = ok(
            kiln_under(
                &repo,
                &store_a,
                "022",
                "UTC",
                "C.UTF-8",
                &["build", "--no-link", target],
            ),
            target,
        );
        let b = ok(
            kiln_under(
                &repo,
                &store_b,
                "077",
                "Pacific/Chatham",
                "de_DE.UTF-8",
                &["build", "--no-link", target],
            ),
            target,
        );
        let (path_a, path_b) = (built_path(&a), built_path(&b));
        assert_eq!(
            path_a.file_name(),
            path_b.file_name(),
            "{target}: the same derivation in both stores"
        );
        let (tree_a, tree_b) = (tree(&path_a), tree(&path_b));
        assert!(
            tree_a.contains_key("compose.yaml") || tree_a.contains_key("kustomization.yaml"),
            "{target}: {:?}",
            tree_a.keys().collect::<Vec<_>>()
        );
        assert_eq!(tree_a, tree_b, "{target}: bundles differ");
    }
}

#[test]
fn build_names_one_root_per_target_and_environment() {
    let (dir, repo) = repo();
    let store = dir.path().join("store");
    let output = ok(
        kiln_under(
            &repo,
            &store,
            "022",
            "UTC",
            "C.UTF-8",
            &["build", "stack:ai", "--env", "dev"],
        ),
        "build stack:ai --env dev",
    );
    let paths: Vec<String> = text(&output.stdout).lines().map(str::to_owned).collect();
    assert_eq!(paths.len(), 2, "{paths:?}");
    assert!(paths[0].ends_with("-ai-dev-compose"), "{paths:?}");
    assert!(paths[1].ends_with("-ai-dev-k8s"), "{paths:?}");
    for link in ["result-stack-ai-compose-dev", "result-stack-ai-k8s-dev"] {
        assert!(repo.join(link).exists(), "{link}");
    }

    let bad = kiln_under(
        &repo,
        &store,
        "022",
        "UTC",
        "C.UTF-8",
        &["build", "stack:ai#helm"],
    );
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        text(&bad.stderr).contains("no part `helm`"),
        "{}",
        text(&bad.stderr)
    );
    let bad = kiln_under(
        &repo,
        &store,
        "022",
        "UTC",
        "C.UTF-8",
        &["build", "stack:ai@prod"],
    );
    assert_ne!(bad.status.code(), Some(0));
}

#[test]
fn render_copies_the_store_bundle_out_whole() {
    let (dir, repo) = repo();
    let store = dir.path().join("store");
    let run = |args: &[&str]| kiln_under(&repo, &store, "022", "UTC", "C.UTF-8", args);

    let out = dir.path().join("bundles/ai-dev-k8s");
    let rendered = ok(
        run(&[
            "render",
            "ai",
            "--target",
            "k8s",
            "--env",
            "dev",
            "-o",
            out.to_str().unwrap(),
            "--json",
        ]),
        "render",
    );
    let report: serde_json::Value = serde_json::from_slice(&rendered.stdout).unwrap();
    assert_eq!(report["kind"], "render");
    let store_path = PathBuf::from(report["store_path"].as_str().unwrap());
    let from_store: BTreeMap<String, Vec<u8>> = tree(&store_path)
        .into_iter()
        .map(|(k, (b, _))| (k, b))
        .collect();
    let copied = tree(&out);
    assert_eq!(
        from_store,
        copied
            .iter()
            .map(|(k, (b, _))| (k.clone(), b.clone()))
            .collect(),
        "the rendered directory is the store's bundle"
    );
    assert!(copied.values().all(|(_, mode)| *mode == 0o644));
    assert_eq!(
        report["files"].as_array().unwrap().len(),
        copied.len(),
        "{report}"
    );

    // A non-empty directory is kept unless --force, and left untouched.
    std::fs::write(out.join("mine.txt"), "keep me").unwrap();
    let refused = run(&[
        "render",
        "ai",
        "--target",
        "k8s",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        text(&refused.stderr).contains("--force"),
        "{}",
        text(&refused.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(out.join("mine.txt")).unwrap(),
        "keep me"
    );
    ok(
        run(&[
            "render",
            "ai",
            "--target",
            "k8s",
            "-o",
            out.to_str().unwrap(),
            "--force",
        ]),
        "render --force",
    );
    assert!(!out.join("mine.txt").exists());
    let leftovers: Vec<_> = std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        leftovers,
        ["ai-dev-k8s"],
        "no staging directory left behind"
    );

    // Mistakes: exit 1 with a clear message, nothing written.
    let missing = dir.path().join("nothing");
    let unknown = run(&[
        "render",
        "aii",
        "--target",
        "k8s",
        "-o",
        missing.to_str().unwrap(),
    ]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(text(&unknown.stderr).contains("no stack named `aii`"));
    assert!(text(&unknown.stderr).contains("`ai`"), "did you mean");
    let no_env = run(&[
        "render",
        "ai",
        "--target",
        "compose",
        "--env",
        "qa",
        "-o",
        missing.to_str().unwrap(),
    ]);
    assert_eq!(no_env.status.code(), Some(1));
    assert!(text(&no_env.stderr).contains("has no environment `qa`"));
    assert!(!missing.exists());
}

#[test]
fn a_host_carries_the_compose_bundles_of_its_stacks() {
    let (dir, repo) = repo();
    let store = dir.path().join("store");
    let run = |args: &[&str]| kiln_under(&repo, &store, "022", "UTC", "C.UTF-8", args);
    let overlay = built_path(&ok(
        run(&["build", "--no-link", "docker-host#overlay"]),
        "docker-host overlay",
    ));
    let root_dir = overlay.join("root");
    for stack in ["edge", "ai"] {
        let bundle = built_path(&ok(
            run(&["build", "--no-link", &format!("stack:{stack}#compose")]),
            stack,
        ));
        let mut units = 0;
        for (relative, (bytes, _)) in tree(&bundle) {
            let installed = match relative.strip_prefix("systemd/") {
                Some(unit) => {
                    units += 1;
                    root_dir.join("etc/systemd/system").join(unit)
                }
                None => root_dir.join(format!("etc/kiln/stacks/{stack}/{relative}")),
            };
            assert_eq!(
                std::fs::read(&installed).unwrap_or_default(),
                bytes,
                "{}",
                installed.display()
            );
        }
        let unit = root_dir.join(format!("etc/systemd/system/kiln-stack-{stack}.service"));
        let text = std::fs::read_to_string(&unit).unwrap();
        assert!(text.contains(&format!("WorkingDirectory=/etc/kiln/stacks/{stack}")));
        assert!(text.contains("up --detach"), "{text}");
        assert!(
            root_dir
                .join(format!(
                    "etc/systemd/system/multi-user.target.wants/kiln-stack-{stack}.service"
                ))
                .is_symlink(),
            "enabled"
        );
        let _ = units;
    }
    assert!(root_dir.join("usr/libexec/kiln/compose").is_file());

    // A host no stack names carries none.
    let db = built_path(&ok(
        run(&["build", "--no-link", "db#overlay"]),
        "db overlay",
    ));
    assert!(!db.join("root/etc/kiln").exists());
}

/// The synthetic repo of `benches/render.sh`: `stacks` stacks of
/// `services` services each, mixing every workload kind, exposure,
/// metrics, volumes, secrets and strategies, and a lockfile pinning their
/// images (digests made up: nothing is pulled).
fn synthetic_repo(dir: &Path, stacks: usize, services: usize) {
    use std::fmt::Write;
    std::fs::create_dir_all(dir.join("stacks")).unwrap();
    let mut lock = String::from("version = 1\n");
    let images = 10;
    for i in 0..images {
        let _ = write!(
            lock,
            "\n[oci.\"registry.example/bench/app{i}:1.{i}\"]\nreference = \"registry.example/bench/app{i}:1.{i}\"\ndigest = \"sha256:{:064x}\"\n",
            i + 1
        );
    }
    let _ = write!(
        lock,
        "\n[oci.\"{0}\"]\nreference = \"docker.io/{0}\"\ndigest = \"sha256:{1:064x}\"\n",
        kiln::stack::model::BACKUP_IMAGE,
        999
    );
    std::fs::write(dir.join("lockfile.toml"), lock).unwrap();
    for s in 0..stacks {
        let mut text = format!(
            "[stack]\ndescription = \"synthetic stack {s}\"\ntargets = [\"compose\", \"k8s\"]\n"
        );
        for v in 0..services {
            let name = format!("svc{v}");
            let _ = write!(
                text,
                "\n[services.{name}]\nimage = \"registry.example/bench/app{0}:1.{0}\"\n",
                v % images
            );
            match v % 5 {
                1 => text.push_str("kind = \"stateful\"\n"),
                4 => text.push_str("kind = \"cronjob\"\nschedule = \"15 2 * * *\"\n"),
                _ => {}
            }
            if v > 0 {
                let _ = writeln!(text, "depends_on = [\"svc{}\", \"svc{}\"]", v - 1, v / 2);
            }
            if v % 5 != 4 {
                let _ = writeln!(
                    text,
                    "ports.http = {{ port = {} }}\nports.metrics = {{ port = 9{v:03} }}\nmetrics = {{ port = \"metrics\" }}",
                    8000 + v
                );
            }
            let _ = writeln!(
                text,
                "env = {{ LOG_LEVEL = \"info\", PEER = \"svc{v}\" }}\nsecrets = {{ API_TOKEN = \"vault:kv/bench/{s}/{name}#token\" }}"
            );
            if v % 5 == 1 {
                text.push_str("volumes.data = { path = \"/var/lib/data\", size = \"4GiB\" }\n");
            }
            if v % 5 == 0 {
                let _ = writeln!(
                    text,
                    "expose = {{ hostname = \"s{s}-{name}.bench.home.arpa\", port = \"http\", auth = \"authentik\" }}"
                );
            }
            if v % 5 == 2 {
                text.push_str("replicas = 3\nstrategy = { type = \"canary\" }\n");
            }
            if v % 5 == 3 {
                text.push_str("strategy = { type = \"blue-green\" }\n");
            }
        }
        std::fs::write(dir.join(format!("stacks/s{s:03}.toml")), text).unwrap();
    }
}

/// `benches/render.sh`: evaluate and pin `KILN_BENCH_STACKS` (100) stacks
/// of `KILN_BENCH_SERVICES` (10) services, then render every one for both
/// targets; prints the figures. Not a timed test: it asserts only that
/// everything rendered.
#[test]
#[ignore = "a benchmark: run by benches/render.sh"]
#[allow(clippy::print_stdout, reason = "a benchmark prints its figures")]
fn bench_render_stacks() {
    use std::time::Instant;
    let number = |key: &str, default: usize| {
        std::env::var(key)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (stacks, services) = (
        number("KILN_BENCH_STACKS", 100),
        number("KILN_BENCH_SERVICES", 10),
    );
    let dir = tempfile::tempdir().unwrap();
    synthetic_repo(dir.path(), stacks, services);

    let started = Instant::now();
    let evaluator = kiln::ops::open(Some(dir.path()), dir.path()).unwrap();
    let names: Vec<String> = evaluator
        .repo
        .names(kiln::config::DocKind::Stack)
        .map(str::to_owned)
        .collect();
    let pinned: Vec<_> = names
        .iter()
        .map(|name| {
            kiln::ops::render::pinned_stack(&evaluator, name, None)
                .unwrap_or_else(|e| panic!("{name}: {e:?}"))
        })
        .collect();
    let evaluated = started.elapsed();
    assert_eq!(pinned.len(), stacks);

    let mut best = std::time::Duration::MAX;
    let (mut files, mut bytes) = (0, 0);
    for _ in 0..5 {
        let started = Instant::now();
        let (mut f, mut b) = (0, 0);
        for stack in &pinned {
            for target in kiln::stack::render::Target::ALL {
                let bundle = kiln::stack::render::render(stack, target).unwrap();
                f += bundle.files.len();
                b += bundle.size();
            }
        }
        best = best.min(started.elapsed());
        (files, bytes) = (f, b);
    }
    println!(
        "render: {stacks} stacks x {services} services, both targets: {:.1} ms (best of 5); {files} files, {:.1} MiB",
        best.as_secs_f64() * 1e3,
        bytes as f64 / (1 << 20) as f64
    );
    println!(
        "evaluate + pin (parse, module system, checks, defaults, lock lookup): {:.1} ms",
        evaluated.as_secs_f64() * 1e3
    );
    println!("total: {:.1} ms", (evaluated + best).as_secs_f64() * 1e3);
}
