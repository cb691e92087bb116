//! The typed stack model through the real binary: bad stacks fail with the
//! right message at the right `file:line:col`; environments overlay the
//! base; `kiln eval stack:NAME --json` is golden; images pin from the lock.

mod common;

use std::path::Path;

use common::{kiln, root, text};

/// A repo holding only `stacks/s.toml` with `stack`.
fn repo_with(stack: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("stacks")).unwrap();
    std::fs::write(dir.path().join("stacks/s.toml"), stack).unwrap();
    dir
}

/// Every diagnostic of `kiln check` as (code, message, "file:line:col").
fn problems(dir: &Path) -> Vec<(String, String, String)> {
    let output = kiln(dir, &["--message-format", "json", "check"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stdout));
    text(&output.stderr)
        .lines()
        .map(|line| {
            let d: serde_json::Value = serde_json::from_str(line).unwrap();
            (
                d["code"].as_str().unwrap_or_default().to_owned(),
                d["message"].as_str().unwrap_or_default().to_owned(),
                format!("{}:{}:{}", d["file"], d["line"], d["column"]).replace('"', ""),
            )
        })
        .collect()
}

const WEB: &str = "[stack]\n[services.web]\nimage = \"nginx:1.27\"\n";

/// (case, stack file, code, message, location). Each case is WEB plus a
/// few lines, so locations are easy to read off.
const CASES: &[(&str, &str, &str, &str, &str)] = &[
    (
        "typo in a field",
        "replics = 2\n",
        "unknown-option",
        "unknown field `replics` in `services.web`",
        "stacks/s.toml:4:1",
    ),
    (
        "wrong type",
        "replicas = \"2\"\n",
        "type-mismatch",
        "wrong type for `services.web.replicas`",
        "stacks/s.toml:4:12",
    ),
    (
        "unknown top-level table",
        "[servics.db]\nimage = \"postgres:16\"\n",
        "unknown-table",
        "unknown top-level key `servics` in a stack file",
        "stacks/s.toml:4:2",
    ),
    (
        "missing image",
        "[services.db]\nkind = \"stateful\"\n",
        "missing-field",
        "`services.db.image` must be set",
        "stacks/s.toml:4:1",
    ),
    (
        "depends on an unknown service",
        "depends_on = [\"db\"]\n",
        "unknown-service",
        "`web` depends on unknown service `db`",
        "stacks/s.toml:4:15",
    ),
    (
        "depends on itself",
        "depends_on = [\"web\"]\n",
        "dependency-cycle",
        "`web` depends on itself",
        "stacks/s.toml:4:15",
    ),
    (
        "a dependency cycle",
        "depends_on = [\"api\"]\n[services.api]\nimage = \"api:1\"\ndepends_on = [\"web\"]\n",
        "dependency-cycle",
        "dependency cycle: `api` → `web` → `api`",
        "stacks/s.toml:4:15",
    ),
    (
        "stateful volume without size",
        "kind = \"stateful\"\n[services.web.volumes.data]\npath = \"/data\"\n",
        "missing-field",
        "volume `data` of stateful service `web` has no size",
        "stacks/s.toml:5:1",
    ),
    (
        "cron job without schedule",
        "kind = \"cronjob\"\n",
        "missing-field",
        "cron job `web` has no schedule",
        "stacks/s.toml:4:8",
    ),
    (
        "schedule on a service",
        "schedule = \"0 3 * * *\"\n",
        "invalid-value",
        "`services.web.schedule` is set, but `web` is not a cron job",
        "stacks/s.toml:4:12",
    ),
    (
        "bad cron schedule",
        "kind = \"cronjob\"\nschedule = \"every day\"\n",
        "invalid-value",
        "invalid cron schedule `every day`",
        "stacks/s.toml:5:12",
    ),
    (
        "literal secret",
        "secrets = { DB_PASSWORD = \"hunter2\" }\n",
        "secret-value",
        "`services.web.secrets.DB_PASSWORD` takes a secret reference, not a secret",
        "stacks/s.toml:4:27",
    ),
    (
        "secret-named env variable",
        "env = { DB_PASSWORD = \"hunter2\" }\n",
        "secret-value",
        "`services.web.env.DB_PASSWORD` looks like a secret",
        "stacks/s.toml:4:23",
    ),
    (
        "token-looking env value",
        "env = { GIT = \"ghp_16C7e42F292c6912E7710c838347Ae178B4a\" }\n",
        "secret-value",
        "`services.web.env.GIT` looks like a secret",
        "stacks/s.toml:4:15",
    ),
    (
        "metrics on an unknown port",
        "metrics = { port = \"metrcs\" }\n[services.web.ports.metrics]\nport = 9100\n",
        "unknown-port",
        "`web` has no port named `metrcs`",
        "stacks/s.toml:4:20",
    ),
    (
        "exposed without a port",
        "expose = { hostname = \"web.home.arpa\" }\n",
        "missing-field",
        "which port of `web` does the proxy route to?",
        "stacks/s.toml:4:10",
    ),
    (
        "canary steps that do not reach 100",
        "strategy = { type = \"canary\", steps = [50, 20] }\n",
        "invalid-value",
        "invalid canary steps for `web`",
        "stacks/s.toml:4:39",
    ),
    (
        "digest in the stack",
        "[services.db]\nimage = \"postgres:16@sha256:5660c2cbfea50c7a9127d17dc4e48543eedd3d7a41a595a2dfa572471e37e64c\"\n",
        "image-digest",
        "`postgres:16@sha256:5660c2cbfea50c7a9127d17dc4e48543eedd3d7a41a595a2dfa572471e37e64c` pins a digest in the stack",
        "stacks/s.toml:5:9",
    ),
    (
        "monitoring without metrics",
        "monitoring = true\n",
        "missing-field",
        "`web` is monitored but has no metrics endpoint",
        "stacks/s.toml:4:14",
    ),
    (
        "two services publishing one host port",
        "ports.http = { port = 80, published = 8080 }\n[services.api]\nimage = \"api:1\"\nports.http = { port = 80, published = 8080 }\n",
        "duplicate-port",
        "host port 8080/tcp is published by both `api` and `web`",
        "stacks/s.toml:4:14",
    ),
    (
        "unknown key in an environment",
        "[env.prod]\nreplicas = 2\n",
        "unknown-option",
        "unknown key `replicas` in `env.prod`",
        "stacks/s.toml:5:1",
    ),
    (
        "wrong type in an environment overlay",
        "[env.prod.services.web]\nreplicas = \"two\"\n",
        "type-mismatch",
        "wrong type for `services.web.replicas`",
        "stacks/s.toml:5:12",
    ),
];

#[test]
fn bad_stacks_fail_with_message_and_location() {
    let mut failures = Vec::new();
    for (case, extra, code, message, location) in CASES {
        let dir = repo_with(&format!("{WEB}{extra}"));
        let found = problems(dir.path());
        let wanted = (
            (*code).to_owned(),
            (*message).to_owned(),
            (*location).to_owned(),
        );
        if !found.contains(&wanted) {
            failures.push(format!("{case}:\n  wanted {wanted:?}\n  found  {found:?}"));
        }
        let human = kiln(dir.path(), &["check"]);
        let stderr = text(&human.stderr);
        if stderr.contains("panicked") || !stderr.contains(&format!("--> {location}")) {
            failures.push(format!(
                "{case}: human output lacks `--> {location}`:\n{stderr}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn literal_secrets_are_masked_in_messages() {
    let dir = repo_with(&format!(
        "{WEB}env = {{ DB_PASSWORD = \"hunter2-and-more\" }}\n"
    ));
    let output = kiln(dir.path(), &["check"]);
    let stderr = text(&output.stderr);
    assert!(stderr.contains("looks like a secret"), "{stderr}");
    assert!(
        !stderr.contains("hunter2"),
        "the secret is shown:\n{stderr}"
    );
    assert!(stderr.contains("vault:MOUNT/PATH#KEY"), "{stderr}");
}

#[test]
fn golden_eval_of_edge_in_prod() {
    let output = kiln(&root(), &["eval", "stack:edge", "--env", "prod", "--json"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    insta::assert_snapshot!("eval-stack-edge-prod", text(&output.stdout));
}

fn eval_json(dir: &Path, args: &[&str]) -> serde_json::Value {
    let output = kiln(dir, args);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn environments_overlay_the_base() {
    let base = eval_json(&root(), &["eval", "stack:edge", "--json"]);
    let dev = eval_json(&root(), &["eval", "stack:edge", "--env", "dev", "--json"]);
    let prod = eval_json(&root(), &["eval", "stack:edge", "--env", "prod", "--json"]);
    assert_eq!(base["env"], serde_json::Value::Null);
    assert_eq!(prod["env"], "prod");
    assert_eq!(base["environments"], serde_json::json!(["dev", "prod"]));
    let authentik = |s: &serde_json::Value, field: &str| s["services"]["authentik"][field].clone();
    // Scalars: the overlay wins.
    assert_eq!(authentik(&base, "replicas"), 1);
    assert_eq!(authentik(&prod, "replicas"), 2);
    assert_eq!(authentik(&dev, "expose")["hostname"], "auth.dev.home.arpa");
    // What the overlay does not touch stays as in the base.
    assert_eq!(authentik(&dev, "expose")["port"], "http");
    assert_eq!(authentik(&prod, "expose")["hostname"], "auth.home.arpa");
    // Records merge field by field.
    let data = |s: &serde_json::Value| s["services"]["postgres"]["volumes"]["data"].clone();
    assert_eq!(data(&base)["size"], 8u64 << 30);
    assert_eq!(data(&prod)["size"], 32u64 << 30);
    assert_eq!(data(&prod)["path"], "/var/lib/postgresql/data");
    assert_eq!(data(&prod)["backup"]["keep_daily"], 14);
    assert_eq!(data(&prod)["backup"]["keep_weekly"], 4);
    // Provenance says which environment set a value.
    assert_eq!(
        prod["provenance"]["services.authentik.replicas"]
            .as_str()
            .unwrap()
            .rsplit_once(' ')
            .unwrap()
            .1,
        "prod)"
    );
    assert_eq!(
        base["provenance"]["services.authentik.replicas"],
        "default: the option's declared default (services.<name>.replicas)"
    );
}

#[test]
fn an_unknown_environment_lists_the_defined_ones() {
    let output = kiln(&root(), &["eval", "stack:edge", "--env", "staging"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("error[unknown-env]: stack `edge` has no environment `staging`"),
        "{stderr}"
    );
    assert!(stderr.contains("--> stacks/edge.toml:1:2"), "{stderr}");
    assert!(stderr.contains("environments: dev, prod"), "{stderr}");
}

#[test]
fn env_applies_to_stacks_only() {
    let output = kiln(&root(), &["eval", "monitoring", "--env", "prod"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("`--env` applies to stacks"));
}

#[test]
fn eval_shows_pinned_references_and_leaves_unpinned_images_unset() {
    let edge = eval_json(&root(), &["eval", "stack:edge", "--json"]);
    assert_eq!(
        edge["services"]["traefik"]["image_ref"],
        "docker.io/library/traefik:v3.1@sha256:74d72c7a1345984f186bddbabcc462b2128d0d8054177dc84afaeac4db1f0f56"
    );
    // No lockfile: still evaluates, nothing pinned.
    let dir = repo_with(WEB);
    let stack = eval_json(dir.path(), &["eval", "stack:s", "--json"]);
    assert_eq!(
        stack["services"]["web"]["image_ref"],
        serde_json::Value::Null
    );
}

#[test]
fn pin_needs_every_image_in_the_lock() {
    use kiln::config::Repo;
    use kiln::eval::Evaluator;

    let evaluator = Evaluator::new(Repo::load(&root()).unwrap());
    let id = evaluator
        .repo
        .find(kiln::config::DocKind::Stack, "edge")
        .unwrap();
    let stack = evaluator.stack(id).unwrap();
    let text = std::fs::read_to_string(root().join("lockfile.toml")).unwrap();
    let mut lock = kiln::lock::Lockfile::parse(&text).unwrap();
    let pinned = kiln::stack::pin(&stack, &lock).unwrap();
    assert_eq!(pinned.images.len(), stack.services.len());
    assert!(pinned.backup_image.is_some(), "edge backs volumes up");
    assert!(pinned.stack.services.values().all(|s| {
        s.image_ref
            .as_deref()
            .is_some_and(|r| r.contains("@sha256:"))
    }));

    lock.oci.remove("redis:7.4.10-alpine");
    let diagnostics = kiln::stack::pin(&stack, &lock).unwrap_err();
    assert_eq!(diagnostics.len(), 1);
    let rendered =
        kiln::config::diagnostic::render(&diagnostics[0], &evaluator.repo.sources, false);
    assert!(
        rendered.contains("image `redis:7.4.10-alpine` of `redis` is not pinned in lockfile.toml"),
        "{rendered}"
    );
    assert!(rendered.contains("--> stacks/edge.toml:"), "{rendered}");
    assert!(rendered.contains("run `kiln lock`"), "{rendered}");
}

/// docs/src/stacks.md names every field of the stack schema.
#[test]
fn every_stack_field_is_documented() {
    let docs = std::fs::read_to_string(root().join("docs/src/stacks.md")).unwrap();
    let schema: toml::Table = toml::from_str(kiln::stack::SCHEMA).unwrap();
    let mut missing = Vec::new();
    let mut pending = vec![schema["options"]["services"].clone()];
    while let Some(decl) = pending.pop() {
        let Some(fields) = decl.get("fields").and_then(|f| f.as_table()) else {
            continue;
        };
        for (name, field) in fields {
            // `name`, `name.KEY`, or a field listed in `{ a, name, b }`.
            let written = [
                format!("`{name}"),
                format!(" {name},"),
                format!(" {name} }}"),
            ];
            if !written.iter().any(|w| docs.contains(w.as_str())) {
                missing.push(name.clone());
            }
            pending.push(field.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "undocumented in docs/src/stacks.md: {missing:?}"
    );
}
