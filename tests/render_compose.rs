//! The compose target: every library stack in every environment renders
//! and validates against the compose-spec schema; bundles are golden and
//! byte-identical; who can reach whom on the rendered networks is what the
//! model's network policy allows; no secret value reaches a bundle.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use common::root;
use kiln::eval::Evaluator;
use kiln::ops::render::{pinned_stack, render_stack};
use kiln::stack::model::{Peer, Role, Service, Stack};
use kiln::stack::render::{Bundle, Target};
use serde_json::Value;

const SCHEMA: &str = include_str!("fixtures/compose-spec/compose-spec.json");
const FEATURES: &str = include_str!("fixtures/compose-stacks/features.toml");

fn open(dir: &Path) -> Evaluator {
    kiln::ops::open(Some(dir), dir).expect("open the repo")
}

fn validator() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(SCHEMA).expect("the schema is JSON");
    jsonschema::validator_for(&schema).expect("the schema compiles")
}

fn yaml(text: &str) -> Value {
    serde_saphyr::from_str(text).unwrap_or_else(|e| panic!("not YAML: {e}\n{text}"))
}

/// Every schema error of `document`, one per line.
fn schema_errors(validator: &jsonschema::Validator, document: &Value) -> Vec<String> {
    validator
        .iter_errors(document)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

/// The stacks of the repo at `dir` (`stacks/*.toml`), by name.
fn library(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("stacks"))
        .expect("stacks/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Each environment to render a stack in: the base, then each it defines.
fn environments(evaluator: &Evaluator, name: &str) -> Vec<Option<String>> {
    let stack = pinned_stack(evaluator, name, None)
        .unwrap_or_else(|e| panic!("stack {name} does not pin: {e:?}"))
        .stack;
    std::iter::once(None)
        .chain(stack.environments.into_iter().map(Some))
        .collect()
}

fn render(evaluator: &Evaluator, name: &str, env: Option<&str>) -> Bundle {
    render_stack(evaluator, name, Target::Compose, env)
        .unwrap_or_else(|e| panic!("stack {name} (env {env:?}) does not render: {e:?}"))
}

/// A bundle as one text: each file under a `=== path ===` line.
fn bundle_text(bundle: &Bundle) -> String {
    bundle
        .files
        .iter()
        .map(|(path, text)| format!("=== {path} ===\n{text}"))
        .collect()
}

/// A repo with the project's lockfile and `stacks/features.toml`.
fn features_repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("stacks")).unwrap();
    std::fs::copy(
        root().join("lockfile.toml"),
        dir.path().join("lockfile.toml"),
    )
    .unwrap();
    std::fs::write(dir.path().join("stacks/features.toml"), FEATURES).unwrap();
    dir
}

#[test]
fn every_library_stack_renders_valid_compose_in_every_environment() {
    let validator = validator();
    let evaluator = open(&root());
    let stacks = library(&root());
    assert!(stacks.len() >= 2, "stacks/ holds {stacks:?}");
    let mut rendered = Vec::new();
    let mut problems = Vec::new();
    for name in &stacks {
        for env in environments(&evaluator, name) {
            let bundle = render(&evaluator, name, env.as_deref());
            let compose = yaml(&bundle.files["compose.yaml"]);
            for error in schema_errors(&validator, &compose) {
                problems.push(format!("{name} (env {env:?}): {error}"));
            }
            assert!(
                bundle.files.values().all(|t| t.ends_with('\n')),
                "{name}: every file ends with a newline"
            );
            rendered.push(format!("{name}/{}", env.as_deref().unwrap_or("base")));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // edge and ai define dev (and edge prod): at least five renders.
    assert!(rendered.len() >= 5, "rendered only {rendered:?}");
}

#[test]
fn the_features_stack_renders_valid_compose() {
    let repo = features_repo();
    let bundle = render(&open(repo.path()), "features", None);
    let compose = yaml(&bundle.files["compose.yaml"]);
    let errors = schema_errors(&validator(), &compose);
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

/// The negative control: the validator is not one that passes everything.
#[test]
fn the_schema_refuses_invalid_compose() {
    let validator = validator();
    let evaluator = open(&root());
    let compose = yaml(&render(&evaluator, "edge", None).files["compose.yaml"]);
    assert!(schema_errors(&validator, &compose).is_empty());

    let mut typo = compose.clone();
    let postgres = typo["services"]["postgres"].as_object_mut().unwrap();
    let profiles = postgres.remove("restart").unwrap();
    postgres.insert("restrat".to_owned(), profiles);
    let errors = schema_errors(&validator, &typo);
    assert!(
        errors.iter().any(|e| e.contains("restrat")),
        "a misspelt key must be refused: {errors:?}"
    );

    let mut wrong_type = compose.clone();
    wrong_type["services"]["postgres"]["depends_on"] =
        serde_json::json!({"redis": {"condition": "when_ready"}});
    assert!(!schema_errors(&validator, &wrong_type).is_empty());

    let mut bad_network = compose;
    bad_network["networks"]["authentik--postgres"]["interal"] = serde_json::json!(true);
    assert!(!schema_errors(&validator, &bad_network).is_empty());
}

#[test]
fn edge_bundle_is_golden() {
    let bundle = render(&open(&root()), "edge", None);
    insta::assert_snapshot!("compose-edge", bundle_text(&bundle));
}

#[test]
fn ai_bundle_is_golden() {
    let bundle = render(&open(&root()), "ai", None);
    insta::assert_snapshot!("compose-ai", bundle_text(&bundle));
}

#[test]
fn features_bundle_is_golden() {
    let repo = features_repo();
    let bundle = render(&open(repo.path()), "features", None);
    insta::assert_snapshot!("compose-features", bundle_text(&bundle));
}

#[test]
fn two_renders_are_byte_identical() {
    for name in library(&root()) {
        let first = open(&root());
        let second = open(&root());
        for env in environments(&first, &name) {
            let a = render(&first, &name, env.as_deref());
            let b = render(&second, &name, env.as_deref());
            assert_eq!(a, b, "{name} (env {env:?})");
        }
    }
}

// ── Reachability ────────────────────────────────────────────────────────

type Pairs = BTreeSet<(String, String)>;

fn pair(a: &str, b: &str) -> (String, String) {
    if a < b {
        (a.to_owned(), b.to_owned())
    } else {
        (b.to_owned(), a.to_owned())
    }
}

/// Whether `service`'s policy (or, without one, its fields) lets the
/// proxy in.
fn admits_proxy(service: &Service) -> bool {
    match &service.network_policy {
        Some(policy) => policy
            .ingress
            .iter()
            .any(|p| matches!(p, Peer::Proxy { .. })),
        None => service.expose.is_some(),
    }
}

fn admits_monitoring(service: &Service) -> bool {
    match &service.network_policy {
        Some(policy) => policy
            .ingress
            .iter()
            .any(|p| matches!(p, Peer::Monitoring { .. })),
        None => service.monitoring && service.metrics.is_some(),
    }
}

/// `from` is the hub (proxy or monitoring system) `to` lets in.
fn hub_route(from: &Service, to: &Service) -> bool {
    (from.role == Role::Proxy && admits_proxy(to))
        || (from.role == Role::Monitoring && admits_monitoring(to))
}

fn lists_service(peers: &[Peer], name: &str) -> bool {
    peers
        .iter()
        .any(|p| matches!(p, Peer::Service { name: n, .. } if n == name))
}

/// Whether the model lets `from` open a connection to `to`: `from`'s
/// egress and `to`'s ingress both allow it (a service without policy
/// allows everything; a hub reaches whoever lets it in).
fn connects(stack: &Stack, from: &str, to: &str) -> bool {
    let (a, b) = (&stack.services[from], &stack.services[to]);
    let egress = match &a.network_policy {
        None => true,
        Some(policy) => lists_service(&policy.egress, to) || hub_route(a, b),
    };
    let ingress = match &b.network_policy {
        None => true,
        Some(policy) => lists_service(&policy.ingress, from) || hub_route(a, b),
    };
    egress && ingress
}

/// The unordered pairs the model allows to talk (Docker networks are
/// symmetric: a shared network lets both sides connect).
fn model_pairs(stack: &Stack) -> Pairs {
    let names: Vec<&String> = stack.services.keys().collect();
    let mut pairs = Pairs::new();
    for (i, a) in names.iter().enumerate() {
        for b in &names[i + 1..] {
            if connects(stack, a, b) || connects(stack, b, a) {
                pairs.insert(pair(a, b));
            }
        }
    }
    pairs
}

/// Each model service's networks, by the rendered compose file.
fn memberships(compose: &Value, stack: &Stack) -> BTreeMap<String, BTreeSet<String>> {
    stack
        .services
        .keys()
        .map(|name| {
            let service = &compose["services"][name];
            let networks = service["networks"]
                .as_object()
                .map(|n| n.keys().cloned().collect())
                .unwrap_or_default();
            if service["networks"].is_null() {
                assert_eq!(
                    service["network_mode"], "none",
                    "{name} is on no network, so it must have none at all"
                );
            }
            (name.clone(), networks)
        })
        .collect()
}

/// The pairs sharing a network in the rendered compose file.
fn compose_pairs(members: &BTreeMap<String, BTreeSet<String>>) -> Pairs {
    let names: Vec<&String> = members.keys().collect();
    let mut pairs = Pairs::new();
    for (i, a) in names.iter().enumerate() {
        for b in &names[i + 1..] {
            if !members[*a].is_disjoint(&members[*b]) {
                pairs.insert(pair(a, b));
            }
        }
    }
    pairs
}

/// The external networks (by Docker name) a service must join, from the
/// model: the hubs themselves, and what they reach when they live in
/// another stack.
fn expected_external(stack: &Stack, service: &Service) -> BTreeSet<String> {
    let compose = &stack.settings.compose;
    let has = |role| stack.services.values().any(|s| s.role == role);
    let mut networks = BTreeSet::new();
    if service.role == Role::Proxy || (!has(Role::Proxy) && service.expose.is_some()) {
        networks.insert(compose.proxy_network.clone());
    }
    if service.role == Role::Monitoring
        || (!has(Role::Monitoring) && service.monitoring && service.metrics.is_some())
    {
        networks.insert(compose.monitoring_network.clone());
    }
    networks
}

/// The pairs Docker lets talk beyond the policy: two services of one
/// stack on the same shared external network (exposed through a proxy in
/// another stack, or scraped by a monitoring system in another stack).
fn shared_external_pairs(stack: &Stack) -> Pairs {
    let external: BTreeMap<&String, BTreeSet<String>> = stack
        .services
        .iter()
        .map(|(name, s)| (name, expected_external(stack, s)))
        .collect();
    let mut pairs = Pairs::new();
    for (a, networks_a) in &external {
        for (b, networks_b) in &external {
            if a < b && !networks_a.is_disjoint(networks_b) {
                pairs.insert(pair(a, b));
            }
        }
    }
    pairs
}

fn check_reachability(name: &str, env: Option<&str>, stack: &Stack, bundle: &Bundle) -> Pairs {
    let compose = yaml(&bundle.files["compose.yaml"]);
    let members = memberships(&compose, stack);
    let definitions = compose["networks"].as_object().cloned().unwrap_or_default();
    for (service, networks) in &members {
        let external: BTreeSet<String> = networks
            .iter()
            .filter(|key| definitions[*key]["external"] == true)
            .map(|key| definitions[key]["name"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            external,
            expected_external(stack, &stack.services[service]),
            "{name} (env {env:?}): external networks of {service}"
        );
    }
    let model = model_pairs(stack);
    let gap = shared_external_pairs(stack);
    let expected: Pairs = model.union(&gap).cloned().collect();
    let actual = compose_pairs(&members);
    assert_eq!(
        actual, expected,
        "{name} (env {env:?}): compose reachability (left) differs from the model's \
         allowed pairs plus the shared external networks (right)\nmodel: {model:?}\nshared: {gap:?}"
    );
    gap
}

#[test]
fn compose_reachability_is_the_models_network_policy() {
    let evaluator = open(&root());
    let mut allowed = 0;
    for name in library(&root()) {
        for env in environments(&evaluator, &name) {
            let stack = pinned_stack(&evaluator, &name, env.as_deref())
                .unwrap()
                .stack;
            let bundle = render(&evaluator, &name, env.as_deref());
            let gap = check_reachability(&name, env.as_deref(), &stack, &bundle);
            allowed += model_pairs(&stack).len();
            if name == "ai" {
                assert!(gap.is_empty(), "{name}: exact, nothing shared: {gap:?}");
            }
        }
    }
    assert!(allowed > 0, "the library's model allows some pairs");
}

#[test]
fn edge_reachability_by_name() {
    let evaluator = open(&root());
    let stack = pinned_stack(&evaluator, "edge", None).unwrap().stack;
    let bundle = render(&evaluator, "edge", None);
    let members = memberships(&yaml(&bundle.files["compose.yaml"]), &stack);
    let pairs = compose_pairs(&members);
    for (a, b) in [
        ("authentik", "postgres"),
        ("authentik", "redis"),
        ("authentik-worker", "postgres"),
        ("authentik-worker", "redis"),
    ] {
        assert!(
            pairs.contains(&pair(a, b)),
            "{a} and {b} must share a network"
        );
    }
    for (a, b) in [
        ("portainer", "postgres"),
        ("postgres", "redis"),
        ("traefik", "postgres"),
        ("authentik", "authentik-worker"),
    ] {
        assert!(!pairs.contains(&pair(a, b)), "{a} and {b} must not meet");
    }
    check_reachability("edge", None, &stack, &bundle);
}

#[test]
fn features_reachability() {
    let repo = features_repo();
    let evaluator = open(repo.path());
    let stack = pinned_stack(&evaluator, "features", None).unwrap().stack;
    let bundle = render(&evaluator, "features", None);
    // The proxy and the monitoring system live in this stack: exact.
    assert_eq!(
        check_reachability("features", None, &stack, &bundle),
        Pairs::new()
    );
    let pairs = compose_pairs(&memberships(&yaml(&bundle.files["compose.yaml"]), &stack));
    for (a, b) in [
        ("app", "db"),
        ("db", "vacuum"),
        ("app", "gateway"),
        ("app", "prometheus"),
    ] {
        assert!(
            pairs.contains(&pair(a, b)),
            "{a} and {b} must share a network"
        );
    }
    for (a, b) in [
        ("app", "vacuum"),
        ("db", "gateway"),
        ("gateway", "prometheus"),
        ("cache", "app"),
    ] {
        assert!(!pairs.contains(&pair(a, b)), "{a} and {b} must not meet");
    }
    let compose = yaml(&bundle.files["compose.yaml"]);
    assert_eq!(
        compose["services"]["app"]["labels"]["traefik.docker.network"],
        "features_gateway--app"
    );
    assert_eq!(
        compose["networks"]["gateway--app"]["internal"],
        serde_json::json!(true)
    );
    assert_eq!(compose["services"]["cache"]["network_mode"], "none");
    assert_eq!(compose["services"]["backup"]["network_mode"], "none");
    assert!(
        compose["services"]["app"]["networks"]
            .get("egress.app")
            .is_some()
    );
}

// ── Secrets ─────────────────────────────────────────────────────────────

const TOKEN: &str = "s3cr3t-t0ken-value-91c2";
const DB_PASSWORD: &str = "db-pa55word-value-77e1";

/// Run by `no_secret_value_in_the_bundle` in a child process whose
/// environment holds the secret values (this crate forbids the `unsafe`
/// that `std::env::set_var` needs): renders the stack in
/// `KILN_TEST_REPO` into `KILN_TEST_OUT`. Does nothing when run on its own.
#[test]
#[ignore = "a helper run by no_secret_value_in_the_bundle"]
fn render_with_secrets_in_the_environment() {
    let (Some(repo), Some(out)) = (
        std::env::var_os("KILN_TEST_REPO"),
        std::env::var_os("KILN_TEST_OUT"),
    ) else {
        return;
    };
    assert_eq!(
        std::env::var("KILN_TEST_SECRET_TOKEN").as_deref(),
        Ok(TOKEN)
    );
    let bundle = render(&open(Path::new(&repo)), "features", None);
    for (path, text) in &bundle.files {
        let target = Path::new(&out).join(path);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::write(target, text).unwrap();
    }
}

#[test]
fn no_secret_value_in_the_bundle() {
    let repo = features_repo();
    let out = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "render_with_secrets_in_the_environment",
            "--ignored",
            "--quiet",
        ])
        .env("KILN_TEST_REPO", repo.path())
        .env("KILN_TEST_OUT", out.path())
        .env("KILN_TEST_SECRET_TOKEN", TOKEN)
        .env("KILN_TEST_SECRET_DB", DB_PASSWORD)
        .status()
        .unwrap();
    assert!(status.success());
    let mut files = BTreeMap::new();
    read_tree(out.path(), out.path(), &mut files);
    assert!(files.contains_key("compose.yaml"), "{:?}", files.keys());
    let everything: String = files.values().cloned().collect();
    // The search works: a literal env value and the references are there.
    assert!(everything.contains("visible-marker-7f3a"));
    assert!(everything.contains("KILN_TEST_SECRET_TOKEN"));
    assert!(everything.contains("KILN_TEST_SECRET_DB"));
    assert!(everything.contains("/etc/kiln/keys/signing.pem"));
    for value in [TOKEN, DB_PASSWORD] {
        for (path, text) in &files {
            assert!(!text.contains(value), "a secret value in {path}");
        }
    }
    let compose = yaml(&files["compose.yaml"]);
    assert_eq!(
        compose["secrets"]["app.API_TOKEN"]["environment"],
        "KILN_TEST_SECRET_TOKEN"
    );
    assert_eq!(
        compose["services"]["app"]["environment"]["API_TOKEN_FILE"],
        "/run/secrets/API_TOKEN"
    );
    assert!(compose["services"]["app"]["environment"]["API_TOKEN"].is_null());
}

#[test]
fn library_bundles_hold_references_only() {
    let evaluator = open(&root());
    let bundle = render(&evaluator, "edge", None);
    let compose = yaml(&bundle.files["compose.yaml"]);
    assert_eq!(
        compose["secrets"]["authentik.AUTHENTIK_SECRET_KEY"]["file"],
        "./secrets/authentik.AUTHENTIK_SECRET_KEY"
    );
    let readme = &bundle.files["secrets/README.md"];
    assert!(readme.contains("Vault `kv/edge/authentik`, key `secret_key`"));
    assert!(!bundle.files[".env"].contains("secret_key"));
}

fn read_tree(base: &Path, dir: &Path, files: &mut BTreeMap<String, String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            read_tree(base, &path, files);
        } else {
            let key = path
                .strip_prefix(base)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            files.insert(key, std::fs::read_to_string(&path).unwrap());
        }
    }
}

// ── What the bundle says ────────────────────────────────────────────────

#[test]
fn features_bundle_details() {
    let repo = features_repo();
    let bundle = render(&open(repo.path()), "features", None);
    let compose = yaml(&bundle.files["compose.yaml"]);
    let app = &compose["services"]["app"];
    // `$` reaches the container as written: compose reads `$$` as `$`.
    assert_eq!(
        app["environment"]["GREETING"],
        "costs $$5, $${NOT_INTERPOLATED}"
    );
    assert_eq!(app["ports"][0]["published"], "5353");
    assert_eq!(app["ports"][0]["protocol"], "udp");
    assert_eq!(app["expose"], serde_json::json!(["8080", "9100"]));
    assert_eq!(
        app["labels"]["traefik.http.routers.features-app.entrypoints"],
        "web"
    );
    assert!(app["labels"]["traefik.http.routers.features-app.tls"].is_null());
    assert_eq!(app["depends_on"]["db"]["condition"], "service_healthy");
    let vacuum = &compose["services"]["vacuum"];
    assert_eq!(vacuum["profiles"], serde_json::json!(["cronjob"]));
    assert_eq!(vacuum["restart"], "no");
    assert!(
        bundle.files["compose.yaml"].contains("restart: \"no\"")
            || bundle.files["compose.yaml"].contains("restart: 'no'"),
        "a YAML 1.1 reader must see the string `no`"
    );
    let timer = &bundle.files["systemd/kiln-features-vacuum.timer"];
    assert!(
        timer.contains("OnCalendar=Mon..Fri *-*-* 04:15:00"),
        "{timer}"
    );
    let unit = &bundle.files["systemd/kiln-features-vacuum.service"];
    assert!(unit.contains(
        "docker compose --project-name features --file /etc/kiln/stacks/features/compose.yaml run --rm --no-TTY vacuum"
    ));
    // Two backup policies: db's own, and the default for cache's volume.
    let confs: Vec<&String> = bundle
        .files
        .keys()
        .filter(|p| p.starts_with("backup/conf.d/"))
        .collect();
    assert_eq!(
        confs,
        [
            "backup/conf.d/01-keep-7d-4w.env",
            "backup/conf.d/02-keep-3d-0w.env"
        ]
    );
    assert!(
        bundle.files["backup/conf.d/01-keep-7d-4w.env"].contains("BACKUP_RETENTION_DAYS=\"28\"")
    );
    assert!(
        bundle.files["backup/conf.d/02-keep-3d-0w.env"].contains("BACKUP_RETENTION_DAYS=\"3\"")
    );
    // The monitoring system of this stack reaches app on their own network,
    // under the stack-qualified alias the targets name.
    assert_eq!(
        app["networks"]["prometheus--app"]["aliases"],
        serde_json::json!(["features-app"])
    );
    let targets: Value = serde_json::from_str(&bundle.files["prometheus/targets.json"]).unwrap();
    assert_eq!(
        targets[0]["targets"],
        serde_json::json!(["features-app:9100"])
    );
    assert_eq!(targets[0]["labels"]["job"], "app");
    assert_eq!(targets[0]["labels"]["namespace"], "features");
    assert_eq!(targets[0]["labels"]["app_kubernetes_io_name"], "app");
}

/// `x` → `y--z` and `x--y` → `z` would both be network `x--y--z`: refused
/// rather than joining four services on one network.
#[test]
fn colliding_network_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("stacks")).unwrap();
    std::fs::copy(
        root().join("lockfile.toml"),
        dir.path().join("lockfile.toml"),
    )
    .unwrap();
    let service = |name: &str, depends: &str| {
        format!("[services.{name}]\nimage = \"redis:7.4.10-alpine\"\ndepends_on = [{depends}]\n")
    };
    let stack = [
        "[stack]\n".to_owned(),
        service("x", "\"y--z\""),
        service("y--z", ""),
        service("x--y", "\"z\""),
        service("z", ""),
    ]
    .concat();
    std::fs::write(dir.path().join("stacks/s.toml"), stack).unwrap();
    let error = render_stack(&open(dir.path()), "s", Target::Compose, None)
        .expect_err("two edges, one network name");
    let message = format!("{error}: {error:?}");
    assert!(message.contains("x--y--z"), "{message}");
}

/// `docker-compose config` (Debian 12's Compose v1, 1.29: what the `docker`
/// module puts on a Docker host) in `dir`: `Err` with its output when it
/// refuses the bundle.
fn compose_v1_config(dir: &Path) -> Result<String, String> {
    let output = std::process::Command::new("docker-compose")
        .arg("config")
        .current_dir(dir)
        .env_remove("COMPOSE_PROJECT_NAME")
        .env_remove("COMPOSE_FILE")
        .output()
        .unwrap_or_else(|e| {
            panic!("docker-compose does not run ({e}): run scripts/setup.sh (apt-get install docker-compose)")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

fn write_bundle(bundle: &Bundle, dir: &Path) {
    for (path, text) in &bundle.files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
}

/// Every library bundle, in every environment, is accepted by the real
/// Compose v1 the Debian 12 Docker host runs, from a directory not named
/// after the stack (the project name comes from `.env`); a top-level
/// `name:` (Compose v2 only) is refused, so the check can fail.
#[test]
fn every_library_bundle_passes_docker_compose_v1() {
    let evaluator = open(&root());
    let mut checked = 0;
    for name in library(&root()) {
        for env in environments(&evaluator, &name) {
            let bundle = render(&evaluator, &name, env.as_deref());
            assert!(
                bundle.files[".env"].contains(&format!(
                    "\nCOMPOSE_PROJECT_NAME={}\n",
                    pinned_stack(&evaluator, &name, env.as_deref())
                        .unwrap()
                        .stack
                        .settings
                        .namespace
                )),
                "{name}: .env names the project"
            );
            let dir = tempfile::tempdir().unwrap();
            write_bundle(&bundle, dir.path());
            if let Err(output) = compose_v1_config(dir.path()) {
                panic!("{name} (env {env:?}): docker-compose config refused it:\n{output}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 5, "checked {checked} bundles");

    let dir = tempfile::tempdir().unwrap();
    let bundle = render(&evaluator, "edge", None);
    write_bundle(&bundle, dir.path());
    let named = format!("name: edge\n{}", bundle.files["compose.yaml"]);
    std::fs::write(dir.path().join("compose.yaml"), named).unwrap();
    let output = compose_v1_config(dir.path()).expect_err("Compose v1 refuses `name:`");
    assert!(output.contains("'name' does not match"), "{output}");
}
