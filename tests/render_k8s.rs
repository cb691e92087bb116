//! The Kubernetes bundle of every library stack, in every environment:
//! core objects pass `kubernetes-validate --strict` for 1.33, custom
//! resources their CRD's JSON schema; the bundles are golden and
//! byte-identical on every render; the rendered NetworkPolicies, evaluated
//! with Kubernetes' semantics, allow exactly the model's edges; no secret
//! value reaches a bundle.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::root;
use kiln::stack::model::{Role, SecretRef};
use kiln::stack::pin::PinnedStack;
use kiln::stack::render::Bundle;
use kiln::stack::render::k8s;
use serde_json::Value;

// ── Rendering ─────────────────────────────────────────────────────────────

fn pinned(repo: &Path, name: &str, env: Option<&str>) -> PinnedStack {
    let evaluator = kiln::ops::open(Some(repo), repo).expect("open repo");
    match kiln::ops::render::pinned_stack(&evaluator, name, env) {
        Ok(stack) => stack,
        Err(kiln::ops::render::RenderFailure::Unpinned(d)) => {
            panic!("{name} {env:?}: unpinned: {d:#?}")
        }
        Err(e) => panic!("{name} {env:?}: {e}"),
    }
}

fn render(stack: &PinnedStack) -> Bundle {
    k8s::render(stack).unwrap_or_else(|e| panic!("{}: {e}", stack.stack.name))
}

/// Every stack of the library (`stacks/*.toml`), by name.
fn library() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root().join("stacks"))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".toml").map(str::to_owned)
        })
        .collect();
    names.sort();
    assert!(names.len() >= 2, "the library has stacks: {names:?}");
    names
}

/// Every (stack, env) of the library, pinned: base and each environment.
fn library_cases() -> Vec<(String, PinnedStack)> {
    let root = root();
    let mut cases = Vec::new();
    for name in library() {
        let base = pinned(&root, &name, None);
        let environments = base.stack.environments.clone();
        cases.push((name.clone(), base));
        for env in environments {
            cases.push((
                format!("{name} --env {env}"),
                pinned(&root, &name, Some(&env)),
            ));
        }
    }
    cases
}

/// The bundle's YAML documents as JSON, by path (kustomization.yaml
/// left out).
fn documents(bundle: &Bundle) -> BTreeMap<String, Value> {
    bundle
        .files
        .iter()
        .filter(|(path, _)| path.as_str() != "kustomization.yaml")
        .map(|(path, text)| {
            let value: Value = serde_saphyr::from_str(text)
                .unwrap_or_else(|e| panic!("{path} does not read back: {e}\n{text}"));
            (path.clone(), value)
        })
        .collect()
}

fn kind_of(doc: &Value) -> (String, String) {
    (
        doc["apiVersion"].as_str().unwrap_or_default().to_owned(),
        doc["kind"].as_str().unwrap_or_default().to_owned(),
    )
}

// ── Validators ────────────────────────────────────────────────────────────

/// The vendored CRD schema of a custom resource, or `None` for a core kind.
fn crd_schema(api_version: &str, kind: &str) -> Option<&'static str> {
    Some(match (api_version, kind) {
        ("monitoring.coreos.com/v1", "ServiceMonitor") => "monitoring.coreos.com_servicemonitor_v1",
        ("external-secrets.io/v1", "ExternalSecret") => "external-secrets.io_externalsecret_v1",
        ("traefik.io/v1alpha1", "IngressRoute") => "traefik.io_ingressroute_v1alpha1",
        ("traefik.io/v1alpha1", "Middleware") => "traefik.io_middleware_v1alpha1",
        ("k8up.io/v1", "Schedule") => "k8up.io_schedule_v1",
        ("velero.io/v1", "Schedule") => "velero.io_schedule_v1",
        ("argoproj.io/v1alpha1", "Rollout") => "argoproj.io_rollout_v1alpha1",
        _ => return None,
    })
}

/// Core kinds are in the core group or a `*.k8s.io` / well-known one.
fn is_core(api_version: &str) -> bool {
    match api_version.split_once('/') {
        None => true,
        Some((group, _)) => {
            group.ends_with(".k8s.io")
                || ["apps", "batch", "policy", "autoscaling"].contains(&group)
        }
    }
}

fn validator(name: &str) -> jsonschema::Validator {
    let path = root().join(format!("tests/fixtures/k8s-crds/{name}.json"));
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    jsonschema::validator_for(&schema).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The CRD schema's complaints about `doc` (empty: valid).
fn crd_errors(
    validators: &mut BTreeMap<&'static str, jsonschema::Validator>,
    doc: &Value,
) -> Vec<String> {
    let (api_version, kind) = kind_of(doc);
    let Some(name) = crd_schema(&api_version, &kind) else {
        return vec![format!("no vendored schema for {api_version} {kind}")];
    };
    let validator = validators.entry(name).or_insert_with(|| validator(name));
    validator
        .iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

/// `kubernetes-validate`: `${KILN_TOOLS:-/opt/kiln-tools}` or PATH.
/// `None` (with a notice) only when `KILN_SKIP_PYPI_TOOLS=1`; absent
/// otherwise is a failure telling how to install it.
fn kubernetes_validate() -> Option<PathBuf> {
    let tools = std::env::var_os("KILN_TOOLS")
        .map_or_else(|| PathBuf::from("/opt/kiln-tools"), PathBuf::from);
    let venv = tools.join("kubernetes-validate/bin/kubernetes-validate");
    if venv.is_file() {
        return Some(venv);
    }
    if common::have("kubernetes-validate") {
        return Some(PathBuf::from("kubernetes-validate"));
    }
    if std::env::var("KILN_SKIP_PYPI_TOOLS").as_deref() == Ok("1") {
        common::notice("SKIPPED: kubernetes-validate is not installed (KILN_SKIP_PYPI_TOOLS=1)");
        return None;
    }
    panic!(
        "kubernetes-validate is not installed (looked in {} and on PATH): run scripts/setup.sh \
         (or scripts/setup-validators.sh), or set KILN_SKIP_PYPI_TOOLS=1 to skip",
        venv.display()
    );
}

/// Run kubernetes-validate on `files`; `Err` with its output when it
/// fails or warns (it passes a kind it has no schema for with a WARN).
fn run_kubernetes_validate(tool: &Path, files: &[PathBuf]) -> Result<(), String> {
    let output = Command::new(tool)
        .args(["--strict", "-k", "1.33", "--quiet"])
        .args(files)
        .output()
        .expect("run kubernetes-validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.success() && !text.contains("WARN") && !text.contains("ERROR") {
        Ok(())
    } else {
        Err(format!("exit {:?}\n{text}", output.status.code()))
    }
}

/// Write each document to its own JSON file under `dir`.
fn write_documents<'a>(
    dir: &Path,
    docs: impl IntoIterator<Item = (String, &'a Value)>,
) -> Vec<PathBuf> {
    docs.into_iter()
        .map(|(name, doc)| {
            let path = dir.join(format!("{}.json", name.replace(['/', ' '], "_")));
            std::fs::write(&path, serde_json::to_string_pretty(doc).unwrap()).unwrap();
            path
        })
        .collect()
}

#[test]
fn every_core_object_validates_with_kubernetes_validate() {
    let Some(tool) = kubernetes_validate() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    let mut kinds = BTreeSet::new();
    for (case, stack) in library_cases() {
        let bundle = render(&stack);
        let docs = documents(&bundle);
        let core: Vec<(String, &Value)> = docs
            .iter()
            .filter(|(_, doc)| is_core(&kind_of(doc).0))
            .map(|(path, doc)| {
                kinds.insert(kind_of(doc).1);
                (format!("{case}--{path}"), doc)
            })
            .collect();
        files.extend(write_documents(dir.path(), core));
    }
    for kind in [
        "Namespace",
        "Deployment",
        "StatefulSet",
        "Service",
        "NetworkPolicy",
        "PersistentVolumeClaim",
        "PodDisruptionBudget",
    ] {
        assert!(
            kinds.contains(kind),
            "the library renders a {kind}: {kinds:?}"
        );
    }
    if let Err(output) = run_kubernetes_validate(&tool, &files) {
        panic!("kubernetes-validate rejects the bundles:\n{output}");
    }
}

#[test]
fn kubernetes_validate_rejects_broken_documents() {
    let Some(tool) = kubernetes_validate() else {
        return;
    };
    let stack = pinned(&root(), "edge", None);
    let docs = documents(&render(&stack));
    let deployment = docs["authentik/deployment.yaml"].clone();
    let dir = tempfile::tempdir().unwrap();
    let good = write_documents(dir.path(), [("good".to_owned(), &deployment)]);
    assert_eq!(
        run_kubernetes_validate(&tool, &good),
        Ok(()),
        "the control passes"
    );

    let mut unknown_field = deployment.clone();
    unknown_field["spec"]["template"]["spec"]["containers"][0]["bogus"] = Value::from(1);
    let mut wrong_type = deployment.clone();
    wrong_type["spec"]["replicas"] = Value::from("two");
    let mut unknown_kind = deployment.clone();
    unknown_kind["apiVersion"] = Value::from("example.org/v1");
    unknown_kind["kind"] = Value::from("Gadget");
    for (name, doc) in [
        ("unknown-field", &unknown_field),
        ("wrong-type", &wrong_type),
        ("unknown-kind", &unknown_kind),
    ] {
        let files = write_documents(dir.path(), [(name.to_owned(), doc)]);
        assert!(
            run_kubernetes_validate(&tool, &files).is_err(),
            "kubernetes-validate must reject the {name} document"
        );
    }
}

#[test]
fn every_custom_resource_validates_against_its_crd() {
    let mut validators = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for (case, stack) in library_cases() {
        for (path, doc) in documents(&render(&stack)) {
            let (api_version, kind) = kind_of(&doc);
            if is_core(&api_version) {
                assert!(
                    crd_schema(&api_version, &kind).is_none(),
                    "{case} {path}: {api_version} is not core"
                );
                continue;
            }
            let errors = crd_errors(&mut validators, &doc);
            assert!(
                errors.is_empty(),
                "{case} {path} ({kind}):\n{}",
                errors.join("\n")
            );
            seen.insert(format!("{api_version} {kind}"));
        }
    }
    for kind in [
        "monitoring.coreos.com/v1 ServiceMonitor",
        "external-secrets.io/v1 ExternalSecret",
        "traefik.io/v1alpha1 IngressRoute",
        "traefik.io/v1alpha1 Middleware",
        "k8up.io/v1 Schedule",
        "argoproj.io/v1alpha1 Rollout",
    ] {
        assert!(
            seen.contains(kind),
            "the library renders a {kind}: {seen:?}"
        );
    }
}

/// The settings variants the library does not use (Ingress instead of
/// IngressRoute, Velero instead of k8up, blue-green): rendered from a
/// test stack, every document checked the same way.
#[test]
fn the_other_settings_validate_too() {
    let repo = test_repo(&format!(
        "[stack]\nnamespace = \"apps\"\n[stack.k8s]\ningress = \"ingress\"\nbackup = \"velero\"\n{}\
         [services.web.strategy]\ntype = \"blue-green\"\n[services.web.expose]\nhostname = \"web.home.arpa\"\nauth = \"authentik\"\n\
         [services.report]\nimage = \"nginx:1.27\"\nkind = \"cronjob\"\nschedule = \"@daily\"\ncommand = [\"/bin/true\"]\n\
         [services.report.mounts.logs]\nhost = \"/var/log\"\npath = \"/logs\"\n",
        three_services("")
    ));
    let stack = pinned(repo.path(), "s", None);
    let bundle = render(&stack);
    let docs = documents(&bundle);
    for path in [
        "web/ingress.yaml",
        "web/rollout.yaml",
        "web/service-preview.yaml",
        "report/cronjob.yaml",
        "backup/schedule.yaml",
    ] {
        assert!(docs.contains_key(path), "{path} in {:?}", docs.keys());
    }
    assert_eq!(
        docs["backup/schedule.yaml"]["metadata"]["namespace"],
        "velero"
    );
    assert_eq!(
        docs["backup/schedule.yaml"]["spec"]["template"]["includedNamespaces"][0],
        "apps"
    );
    assert_eq!(
        docs["web/ingress.yaml"]["metadata"]["annotations"]["traefik.ingress.kubernetes.io/router.middlewares"],
        "apps-authentik@kubernetescrd"
    );
    assert_eq!(
        docs["report/cronjob.yaml"]["spec"]["concurrencyPolicy"],
        "Forbid"
    );
    let mut validators = BTreeMap::new();
    let mut core = Vec::new();
    for (path, doc) in &docs {
        if is_core(&kind_of(doc).0) {
            core.push((path.clone(), doc));
        } else {
            let errors = crd_errors(&mut validators, doc);
            assert!(errors.is_empty(), "{path}:\n{}", errors.join("\n"));
        }
    }
    if let Some(tool) = kubernetes_validate() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_documents(dir.path(), core);
        if let Err(output) = run_kubernetes_validate(&tool, &files) {
            panic!("kubernetes-validate rejects the bundle:\n{output}");
        }
    }
}

#[test]
fn the_crd_schemas_reject_broken_documents() {
    let stack = pinned(&root(), "edge", Some("prod"));
    let docs = documents(&render(&stack));
    let mut validators = BTreeMap::new();
    let monitor = docs["authentik/servicemonitor.yaml"].clone();
    assert!(
        crd_errors(&mut validators, &monitor).is_empty(),
        "the control passes"
    );

    let mut bad_interval = monitor.clone();
    bad_interval["spec"]["endpoints"][0]["interval"] = Value::from("30 seconds");
    let mut unknown_field = monitor.clone();
    unknown_field["spec"]["endpoints"][0]["bogus"] = Value::from(true);
    let mut rollout = docs["authentik/rollout.yaml"].clone();
    assert!(
        crd_errors(&mut validators, &rollout).is_empty(),
        "the control passes"
    );
    rollout["spec"]["strategy"]["canary"]["steps"][0]["setWieght"] = Value::from(25);
    let mut secret = docs["authentik/externalsecret.yaml"].clone();
    secret["spec"]["data"][0]["remoteRef"]
        .as_object_mut()
        .unwrap()
        .remove("key");
    let mut unknown = monitor.clone();
    unknown["kind"] = Value::from("ServiceWatcher");
    for (name, doc) in [
        ("interval in words", &bad_interval),
        ("unknown endpoint field", &unknown_field),
        ("misspelt canary step", &rollout),
        ("remoteRef without key", &secret),
        ("unknown custom kind", &unknown),
    ] {
        assert!(
            !crd_errors(&mut validators, doc).is_empty(),
            "the schema must reject the {name}"
        );
    }
}

// ── The bundle's shape ────────────────────────────────────────────────────

#[test]
fn the_kustomization_lists_every_file_and_every_object_its_namespace() {
    for (case, stack) in library_cases() {
        let bundle = render(&stack);
        let kustomization: Value =
            serde_saphyr::from_str(&bundle.files["kustomization.yaml"]).unwrap();
        let resources: Vec<&str> = kustomization["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap())
            .collect();
        let files: Vec<&str> = bundle
            .files
            .keys()
            .map(String::as_str)
            .filter(|p| *p != "kustomization.yaml")
            .collect();
        assert_eq!(resources, files, "{case}: resources, sorted");
        let ns = &stack.stack.settings.namespace;
        for (path, doc) in documents(&bundle) {
            let (_, kind) = kind_of(&doc);
            let namespace = doc["metadata"]["namespace"].as_str();
            match kind.as_str() {
                "Namespace" => assert_eq!(namespace, None),
                _ if path.starts_with("backup/") && doc["apiVersion"] == "velero.io/v1" => {
                    assert_eq!(namespace, Some("velero"), "{case} {path}")
                }
                _ => assert_eq!(namespace, Some(ns.as_str()), "{case} {path}"),
            }
            let labels = &doc["metadata"]["labels"];
            assert_eq!(
                labels["app.kubernetes.io/managed-by"], "kiln",
                "{case} {path}"
            );
            assert_eq!(
                labels["app.kubernetes.io/part-of"],
                stack.stack.name.as_str(),
                "{case} {path}"
            );
        }
        for (name, service) in &stack.stack.services {
            let workload = bundle
                .files
                .keys()
                .find(|p| {
                    [
                        format!("{name}/deployment.yaml"),
                        format!("{name}/statefulset.yaml"),
                        format!("{name}/cronjob.yaml"),
                    ]
                    .contains(p)
                })
                .unwrap_or_else(|| panic!("{case}: no workload for {name}"));
            let text = &bundle.files[workload];
            let image = service.image_ref.as_deref().unwrap();
            assert!(
                text.contains(&format!("image: {image}\n")),
                "{case}: {workload} runs {image}"
            );
        }
    }
}

fn snapshot_text(bundle: &Bundle) -> String {
    let mut text = String::new();
    for (path, body) in &bundle.files {
        text.push_str(&format!("# ---- {path}\n{body}"));
    }
    text
}

#[test]
fn golden_bundles_are_byte_identical_on_every_render() {
    for (name, env) in [("edge", None), ("edge", Some("prod")), ("ai", None)] {
        let stack = pinned(&root(), name, env);
        let first = render(&stack);
        let again = render(&pinned(&root(), name, env));
        assert_eq!(first, again, "{name} {env:?}: two renders differ");
        let snapshot = match env {
            Some(env) => format!("k8s-{name}-{env}"),
            None => format!("k8s-{name}"),
        };
        insta::assert_snapshot!(snapshot, snapshot_text(&first));
    }
}

// ── Secrets ───────────────────────────────────────────────────────────────

const PROBE_VAR: &str = "KILN_TEST_SECRET_PROBE";
const ENV_VALUE: &str = "env-secret-8c1f0d6e2b";
const FILE_VALUE: &str = "file-secret-4a7e93b1d5";

/// The deploying machine has the values of `env:` and `file:` secrets;
/// the bundle must still hold only references. Runs itself again with
/// the variable set (a test cannot set its own environment safely).
#[test]
fn no_secret_value_reaches_a_bundle() {
    if std::env::var(PROBE_VAR).is_err() {
        let status = Command::new(std::env::current_exe().unwrap())
            .args(["no_secret_value_reaches_a_bundle", "--exact", "--nocapture"])
            .env(PROBE_VAR, ENV_VALUE)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "the run with the secret in the environment failed"
        );
        return;
    }
    assert_eq!(std::env::var(PROBE_VAR).unwrap(), ENV_VALUE);
    let secrets_dir = tempfile::tempdir().unwrap();
    let secret_file = secrets_dir.path().join("token");
    std::fs::write(&secret_file, FILE_VALUE).unwrap();
    let repo = test_repo(&format!(
        "[stack]\n{}[services.web.env]\nGREETING = \"hello-plain-value\"\n\
         [services.web.secrets]\nAPI_TOKEN = \"env:{PROBE_VAR}\"\nSIGNING_KEY = \"file:{}\"\nDB_PASSWORD = \"vault:kv/s/web#db\"\n",
        three_services(""),
        secret_file.display()
    ));
    let stack = pinned(repo.path(), "s", None);
    let bundle = render(&stack);
    let all = snapshot_text(&bundle);
    assert!(
        all.contains("hello-plain-value"),
        "the control: literal env reaches the bundle"
    );
    for value in [ENV_VALUE, FILE_VALUE] {
        assert!(
            !all.contains(value),
            "a secret value is in the bundle:\n{all}"
        );
    }
    let docs = documents(&bundle);
    let env = &docs["web/deployment.yaml"]["spec"]["template"]["spec"]["containers"][0]["env"];
    let by_name = |name: &str| {
        env.as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(
        by_name("API_TOKEN")["valueFrom"]["secretKeyRef"]["name"],
        "web-local-secrets"
    );
    assert_eq!(
        by_name("SIGNING_KEY")["valueFrom"]["secretKeyRef"]["name"],
        "web-local-secrets"
    );
    assert_eq!(
        by_name("DB_PASSWORD")["valueFrom"]["secretKeyRef"]["name"],
        "web-secrets"
    );
    assert_eq!(
        by_name("DB_PASSWORD")["valueFrom"]["secretKeyRef"]["key"],
        "DB_PASSWORD"
    );
    assert_eq!(
        docs["web/externalsecret.yaml"]["spec"]["data"][0]["remoteRef"]["key"],
        "kv/s/web"
    );
    assert_eq!(
        docs["web/externalsecret.yaml"]["spec"]["data"][0]["remoteRef"]["property"],
        "db"
    );
    // The library's bundles: no Secret object, no inline value.
    for (case, stack) in library_cases() {
        for (path, doc) in documents(&render(&stack)) {
            assert_ne!(kind_of(&doc).1, "Secret", "{case} {path}");
            let text = doc.to_string();
            assert!(
                !text.contains("\"data\":{\"") || kind_of(&doc).1 == "ExternalSecret",
                "{case} {path}"
            );
        }
        for service in stack.stack.services.values() {
            for secret in service.secrets.values() {
                assert!(matches!(
                    secret,
                    SecretRef::Vault { .. } | SecretRef::Env { .. } | SecretRef::File { .. }
                ));
            }
        }
    }
}

// ── A test repo ───────────────────────────────────────────────────────────

/// The pins the test stacks need (fake digests: nothing is pulled).
const TEST_LOCK: &str = r#"version = 1

[oci."nginx:1.27"]
reference = "docker.io/library/nginx:1.27"
digest = "sha256:1111111111111111111111111111111111111111111111111111111111111111"

[oci."offen/docker-volume-backup:v2.44.0"]
reference = "docker.io/offen/docker-volume-backup:v2.44.0"
digest = "sha256:2222222222222222222222222222222222222222222222222222222222222222"

[oci."postgres:16.4-alpine"]
reference = "docker.io/library/postgres:16.4-alpine"
digest = "sha256:3333333333333333333333333333333333333333333333333333333333333333"
"#;

/// `web` (http 8080), `api` (http 8000, depends on `db`) and `db`
/// (stateful PostgreSQL, 5432); `web_extra` is added to `web`'s table.
fn three_services(web_extra: &str) -> String {
    format!(
        "[services.web]\nimage = \"nginx:1.27\"\n{web_extra}\n\
         [services.web.ports.http]\nport = 8080\n\
         [services.api]\nimage = \"nginx:1.27\"\ndepends_on = [\"db\"]\n\
         [services.api.ports.http]\nport = 8000\n\
         [services.db]\nimage = \"postgres:16.4-alpine\"\nkind = \"stateful\"\n\
         [services.db.ports.postgres]\nport = 5432\n\
         [services.db.volumes.data]\npath = \"/var/lib/postgresql/data\"\nsize = \"8GiB\"\n"
    )
}

/// A repo holding `stacks/s.toml` and a lockfile pinning its images.
fn test_repo(stack: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("stacks")).unwrap();
    std::fs::write(dir.path().join("stacks/s.toml"), stack).unwrap();
    std::fs::write(dir.path().join("lockfile.toml"), TEST_LOCK).unwrap();
    dir
}

// ── NetworkPolicy semantics ───────────────────────────────────────────────

/// A pod (or, with `namespace: None`, a host outside the cluster).
#[derive(Clone, Debug)]
struct Pod {
    namespace: Option<String>,
    labels: BTreeMap<String, String>,
    ip: Ipv4Addr,
    /// Container ports by name: (number, protocol).
    ports: BTreeMap<String, (i64, String)>,
}

struct Policy {
    namespace: String,
    spec: Value,
}

fn selector_matches(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    if let Some(wanted) = selector.get("matchLabels").and_then(Value::as_object) {
        for (key, value) in wanted {
            if labels.get(key).map(String::as_str) != value.as_str() {
                return false;
            }
        }
    }
    if let Some(expressions) = selector.get("matchExpressions").and_then(Value::as_array) {
        for expression in expressions {
            let key = expression["key"].as_str().unwrap();
            let values: Vec<&str> = expression["values"]
                .as_array()
                .map(|v| v.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let actual = labels.get(key).map(String::as_str);
            let ok = match expression["operator"].as_str().unwrap() {
                "In" => actual.is_some_and(|a| values.contains(&a)),
                "NotIn" => actual.is_none_or(|a| !values.contains(&a)),
                "Exists" => actual.is_some(),
                "DoesNotExist" => actual.is_none(),
                other => panic!("unknown operator {other}"),
            };
            if !ok {
                return false;
            }
        }
    }
    true
}

fn in_cidr(ip: Ipv4Addr, cidr: &str) -> bool {
    let (net, bits) = cidr.split_once('/').unwrap();
    let net: Ipv4Addr = net.parse().unwrap();
    let bits: u32 = bits.parse().unwrap();
    let mask = if bits == 0 {
        0
    } else {
        u32::MAX << (32 - bits)
    };
    u32::from(ip) & mask == u32::from(net) & mask
}

/// Whether a `from`/`to` peer of a policy in `policy_ns` matches `pod`.
fn peer_matches(peer: &Value, policy_ns: &str, pod: &Pod) -> bool {
    if let Some(block) = peer.get("ipBlock") {
        let excepted = block["except"]
            .as_array()
            .is_some_and(|e| e.iter().any(|c| in_cidr(pod.ip, c.as_str().unwrap())));
        return in_cidr(pod.ip, block["cidr"].as_str().unwrap()) && !excepted;
    }
    let Some(namespace) = &pod.namespace else {
        return false; // selectors only select pods
    };
    let namespace_ok = match peer.get("namespaceSelector") {
        Some(selector) => selector_matches(
            selector,
            &BTreeMap::from([("kubernetes.io/metadata.name".to_owned(), namespace.clone())]),
        ),
        None => namespace == policy_ns,
    };
    let pod_ok = peer
        .get("podSelector")
        .is_none_or(|selector| selector_matches(selector, &pod.labels));
    namespace_ok && pod_ok
}

/// Whether a rule's `ports` admit `port`/`protocol` on `destination`.
fn ports_match(ports: Option<&Value>, destination: &Pod, port: i64, protocol: &str) -> bool {
    let Some(ports) = ports.and_then(Value::as_array) else {
        return true;
    };
    if ports.is_empty() {
        return true;
    }
    ports.iter().any(|p| {
        let rule_protocol = p["protocol"].as_str().unwrap_or("TCP");
        if rule_protocol != protocol {
            return false;
        }
        match &p["port"] {
            Value::Null => true,
            Value::Number(n) => {
                let start = n.as_i64().unwrap();
                let end = p["endPort"].as_i64().unwrap_or(start);
                (start..=end).contains(&port)
            }
            Value::String(name) => destination
                .ports
                .get(name)
                .is_some_and(|(number, proto)| *number == port && proto == protocol),
            other => panic!("port {other}"),
        }
    })
}

/// Kubernetes' rule: the connection needs the source's egress and the
/// destination's ingress; a pod no policy of that type selects is open.
fn allowed(
    policies: &[Policy],
    source: &Pod,
    destination: &Pod,
    port: i64,
    protocol: &str,
) -> bool {
    let selecting = |pod: &Pod, kind: &str| -> Vec<&Policy> {
        policies
            .iter()
            .filter(|p| Some(&p.namespace) == pod.namespace.as_ref())
            .filter(|p| {
                p.spec["policyTypes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|t| t == kind)
            })
            .filter(|p| selector_matches(&p.spec["podSelector"], &pod.labels))
            .collect()
    };
    let rule_allows = |policy: &Policy, rule: &Value, field: &str, peer: &Pod| {
        let peers_ok = match rule.get(field).and_then(Value::as_array) {
            None => true,
            Some(list) if list.is_empty() => true,
            Some(list) => list
                .iter()
                .any(|p| peer_matches(p, &policy.namespace, peer)),
        };
        peers_ok && ports_match(rule.get("ports"), destination, port, protocol)
    };
    let egress = selecting(source, "Egress");
    let egress_ok = egress.is_empty()
        || egress.iter().any(|policy| {
            policy.spec["egress"].as_array().is_some_and(|rules| {
                rules
                    .iter()
                    .any(|r| rule_allows(policy, r, "to", destination))
            })
        });
    let ingress = selecting(destination, "Ingress");
    let ingress_ok = ingress.is_empty()
        || ingress.iter().any(|policy| {
            policy.spec["ingress"]
                .as_array()
                .is_some_and(|rules| rules.iter().any(|r| rule_allows(policy, r, "from", source)))
        });
    egress_ok && ingress_ok
}

/// The stack's pods (one per workload, from its pod template) and its
/// NetworkPolicies, as the bundle has them.
fn cluster(bundle: &Bundle) -> (BTreeMap<String, Pod>, Vec<Policy>) {
    let mut pods = BTreeMap::new();
    let mut policies = Vec::new();
    for (path, doc) in documents(bundle) {
        let (_, kind) = kind_of(&doc);
        let namespace = doc["metadata"]["namespace"].as_str().map(str::to_owned);
        let template = match kind.as_str() {
            "Deployment" | "StatefulSet" => &doc["spec"]["template"],
            "CronJob" => &doc["spec"]["jobTemplate"]["spec"]["template"],
            "NetworkPolicy" => {
                policies.push(Policy {
                    namespace: namespace.unwrap(),
                    spec: doc["spec"].clone(),
                });
                continue;
            }
            _ => continue,
        };
        let name = doc["metadata"]["name"].as_str().unwrap().to_owned();
        let labels = template["metadata"]["labels"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
            .collect();
        let ports = template["spec"]["containers"][0]["ports"]
            .as_array()
            .map(|ports| {
                ports
                    .iter()
                    .map(|p| {
                        (
                            p["name"].as_str().unwrap().to_owned(),
                            (
                                p["containerPort"].as_i64().unwrap(),
                                p["protocol"].as_str().unwrap_or("TCP").to_owned(),
                            ),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let ip = Ipv4Addr::new(10, 1, 0, u8::try_from(pods.len() + 1).unwrap());
        assert!(path.ends_with(".yaml"));
        pods.insert(
            name.clone(),
            Pod {
                namespace,
                labels,
                ip,
                ports,
            },
        );
    }
    (pods, policies)
}

fn outsider(namespace: Option<&str>, labels: &[(&str, &str)], ip: [u8; 4]) -> Pod {
    Pod {
        namespace: namespace.map(str::to_owned),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ip: Ipv4Addr::from(ip),
        ports: BTreeMap::new(),
    }
}

fn can_reach(bundle: &Bundle, from: &str, to: &str, port: i64) -> bool {
    let (pods, policies) = cluster(bundle);
    allowed(&policies, &pods[from], &pods[to], port, "TCP")
}

/// The destination's side alone: whether its ingress lets `from` in (the
/// source's own policies set aside).
fn lets_in(bundle: &Bundle, from: &str, to: &str, port: i64) -> bool {
    let (pods, policies) = cluster(bundle);
    let theirs: Vec<Policy> = policies
        .into_iter()
        .filter(|p| selector_matches(&p.spec["podSelector"], &pods[to].labels))
        .collect();
    allowed(&theirs, &pods[from], &pods[to], port, "TCP")
}

/// The source's side alone: whether its egress lets it out to `to`.
fn lets_out(bundle: &Bundle, from: &str, to: &str, port: i64) -> bool {
    let (pods, policies) = cluster(bundle);
    let ours: Vec<Policy> = policies
        .into_iter()
        .filter(|p| selector_matches(&p.spec["podSelector"], &pods[from].labels))
        .collect();
    allowed(&ours, &pods[from], &pods[to], port, "TCP")
}

#[test]
fn a_service_reaches_the_database_only_once_it_depends_on_it() {
    let without = test_repo(&format!("[stack]\n{}", three_services("")));
    let bundle = render(&pinned(without.path(), "s", None));
    assert!(
        !can_reach(&bundle, "web", "db", 5432),
        "web does not depend on db"
    );
    assert!(
        !lets_in(&bundle, "web", "db", 5432),
        "the database's policy keeps web out"
    );
    assert!(
        !lets_out(&bundle, "web", "db", 5432),
        "web's policy keeps it in"
    );
    assert!(lets_in(&bundle, "api", "db", 5432) && lets_out(&bundle, "api", "db", 5432));
    assert!(can_reach(&bundle, "api", "db", 5432), "api depends on db");
    assert!(
        !can_reach(&bundle, "api", "db", 5433),
        "only the database's port"
    );
    assert!(
        !can_reach(&bundle, "db", "api", 8000),
        "the edge has a direction"
    );

    let with = test_repo(&format!(
        "[stack]\n{}",
        three_services("depends_on = [\"db\"]")
    ));
    let bundle = render(&pinned(with.path(), "s", None));
    assert!(
        can_reach(&bundle, "web", "db", 5432),
        "web now depends on db"
    );
    assert!(lets_in(&bundle, "web", "db", 5432) && lets_out(&bundle, "web", "db", 5432));
    assert!(can_reach(&bundle, "api", "db", 5432));
    assert!(
        !can_reach(&bundle, "web", "api", 8000),
        "web does not depend on api"
    );
}

/// Evaluate every library bundle: the connections the policies allow are
/// exactly the model's: the dependency edges on the dependency's ports,
/// the proxy to exposed ports, Prometheus to metrics ports, DNS, and the
/// internet only where `internet = true`.
#[test]
fn the_policies_allow_exactly_the_models_edges() {
    for (case, pinned) in library_cases() {
        let stack = &pinned.stack;
        let bundle = render(&pinned);
        let (pods, policies) = cluster(&bundle);
        let settings = &stack.settings;
        let ns = settings.namespace.as_str();
        let has_policy = |name: &str| stack.services[name].network_policy.is_some();
        let exposes = |name: &str, port: &str| {
            stack.services[name]
                .expose
                .as_ref()
                .is_some_and(|e| e.port == port)
        };
        let scraped = |name: &str, port: &str| {
            let service = &stack.services[name];
            service.monitoring && service.metrics.as_ref().is_some_and(|m| m.port == port)
        };
        let in_stack_role = |role: Role| stack.services.values().any(|s| s.role == role);
        let mut checked = 0;
        for (to, service) in &stack.services {
            let Some(destination) = pods.get(to) else {
                panic!("{case}: no pod for {to}");
            };
            for (port_name, port) in &service.ports {
                let number = i64::from(port.port);
                let protocol = match port.protocol {
                    kiln::stack::model::Protocol::Tcp => "TCP",
                    kiln::stack::model::Protocol::Udp => "UDP",
                };
                for (from, source) in &pods {
                    if from == to {
                        continue;
                    }
                    let model_source = &stack.services[from];
                    let depends = model_source.depends_on.contains(to);
                    let egress = !has_policy(from) || depends;
                    let ingress = !has_policy(to)
                        || depends
                        || (model_source.role == Role::Proxy && exposes(to, port_name))
                        || (model_source.role == Role::Monitoring && scraped(to, port_name))
                        || (ns == settings.k8s.proxy_namespace
                            && !in_stack_role(Role::Proxy)
                            && exposes(to, port_name))
                        || (ns == settings.k8s.monitoring_namespace
                            && !in_stack_role(Role::Monitoring)
                            && scraped(to, port_name));
                    assert_eq!(
                        allowed(&policies, source, destination, number, protocol),
                        egress && ingress,
                        "{case}: {from} → {to}:{port_name}"
                    );
                    checked += 1;
                }
                if settings.k8s.proxy_namespace != ns {
                    let proxy = outsider(
                        Some(&settings.k8s.proxy_namespace),
                        &[("app.kubernetes.io/name", "traefik")],
                        [10, 2, 0, 1],
                    );
                    assert_eq!(
                        allowed(&policies, &proxy, destination, number, protocol),
                        !has_policy(to) || exposes(to, port_name),
                        "{case}: the proxy → {to}:{port_name}"
                    );
                }
                if settings.k8s.monitoring_namespace != ns {
                    let prometheus = outsider(
                        Some(&settings.k8s.monitoring_namespace),
                        &[("app.kubernetes.io/name", "prometheus")],
                        [10, 3, 0, 1],
                    );
                    assert_eq!(
                        allowed(&policies, &prometheus, destination, number, protocol),
                        !has_policy(to) || scraped(to, port_name),
                        "{case}: Prometheus → {to}:{port_name}"
                    );
                }
                let stranger = outsider(Some("other"), &[], [10, 4, 0, 1]);
                assert_eq!(
                    allowed(&policies, &stranger, destination, number, protocol),
                    !has_policy(to),
                    "{case}: another namespace → {to}:{port_name}"
                );
            }
        }
        for (from, source) in &pods {
            let policy = stack.services[from].network_policy.as_ref();
            let mut dns = outsider(
                Some("kube-system"),
                &[("k8s-app", "kube-dns")],
                [10, 96, 0, 10],
            );
            dns.ports.insert("dns".into(), (53, "UDP".into()));
            assert_eq!(
                allowed(&policies, source, &dns, 53, "UDP"),
                policy.is_none_or(|p| p.dns),
                "{case}: {from} → DNS"
            );
            let internet = outsider(None, &[], [1, 1, 1, 1]);
            assert_eq!(
                allowed(&policies, source, &internet, 443, "TCP"),
                policy.is_none_or(|p| p.internet),
                "{case}: {from} → the internet"
            );
            let lan = outsider(None, &[], [192, 168, 1, 10]);
            assert_eq!(
                allowed(&policies, source, &lan, 443, "TCP"),
                policy.is_none(),
                "{case}: {from} → a private address"
            );
        }
        // A one-service stack (vault) has no pairs; its outsiders, DNS and
        // internet were still checked above.
        let ports: usize = stack.services.values().map(|s| s.ports.len()).sum();
        assert!(
            checked > 0 || stack.services.len() < 2 || ports == 0,
            "{case}: pairs were checked"
        );
    }
}

/// The evaluator itself: a hand-written policy set with known answers.
#[test]
fn the_policy_evaluator_follows_kubernetes_semantics() {
    let pod = |ns: &str, app: &str, ip: u8| Pod {
        namespace: Some(ns.into()),
        labels: BTreeMap::from([("app".to_owned(), app.to_owned())]),
        ip: Ipv4Addr::new(10, 0, 0, ip),
        ports: BTreeMap::from([("http".to_owned(), (80, "TCP".to_owned()))]),
    };
    let a = pod("x", "a", 1);
    let b = pod("x", "b", 2);
    let c = pod("y", "a", 3);
    // No policy: everything open.
    assert!(allowed(&[], &a, &b, 80, "TCP"));
    let deny_b: Value = serde_json::json!({
        "podSelector": {"matchLabels": {"app": "b"}},
        "policyTypes": ["Ingress"],
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "a"}}}], "ports": [{"port": "http"}]}]
    });
    let policies = [Policy {
        namespace: "x".into(),
        spec: deny_b,
    }];
    assert!(
        allowed(&policies, &a, &b, 80, "TCP"),
        "a is let in by name, on the named port"
    );
    assert!(!allowed(&policies, &a, &b, 81, "TCP"), "another port");
    assert!(!allowed(&policies, &a, &b, 80, "UDP"), "another protocol");
    assert!(
        !allowed(&policies, &c, &b, 80, "TCP"),
        "a podSelector alone is the policy's namespace"
    );
    assert!(allowed(&policies, &b, &a, 80, "TCP"), "a is not isolated");
    let egress_a: Value = serde_json::json!({
        "podSelector": {},
        "policyTypes": ["Egress"],
        "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}]}]
    });
    let policies = [Policy {
        namespace: "x".into(),
        spec: egress_a,
    }];
    let internet = outsider(None, &[], [8, 8, 8, 8]);
    assert!(allowed(&policies, &a, &internet, 53, "UDP"));
    assert!(!allowed(&policies, &a, &b, 80, "TCP"), "10/8 is excepted");
    assert!(
        allowed(&policies, &c, &b, 80, "TCP"),
        "policies of x do not select pods of y"
    );
    let by_namespace: Value = serde_json::json!({
        "podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["b"]}]},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "y"}}}]}]
    });
    let policies = [Policy {
        namespace: "x".into(),
        spec: by_namespace,
    }];
    assert!(
        allowed(&policies, &c, &b, 80, "TCP"),
        "any pod of namespace y"
    );
    assert!(!allowed(&policies, &a, &b, 80, "TCP"), "not one of x");
    assert!(
        !allowed(&policies, &b, &a, 80, "TCP"),
        "b is isolated for egress with no rule"
    );
}

/// Prometheus' `job` label is the name of the Service a ServiceMonitor
/// selects (no `jobLabel`) and `namespace` its namespace: each monitor
/// must select exactly the Service named after its service, in the
/// stack's namespace, so the labels equal the compose target's.
#[test]
fn each_service_monitor_selects_exactly_its_own_service() {
    let mut monitors = 0;
    for (case, stack) in library_cases() {
        let docs = documents(&render(&stack));
        let services: Vec<&Value> = docs
            .values()
            .filter(|d| kind_of(d).1 == "Service")
            .collect();
        for (path, doc) in &docs {
            if kind_of(doc).1 != "ServiceMonitor" {
                continue;
            }
            monitors += 1;
            let name = doc["metadata"]["name"].as_str().unwrap();
            assert!(doc["spec"].get("jobLabel").is_none(), "{case} {path}");
            assert_eq!(
                doc["spec"]["namespaceSelector"]["matchNames"],
                serde_json::json!([stack.stack.settings.namespace])
            );
            let selected: Vec<&str> = services
                .iter()
                .filter(|s| {
                    let labels = s["metadata"]["labels"]
                        .as_object()
                        .unwrap()
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                        .collect();
                    selector_matches(&doc["spec"]["selector"], &labels)
                })
                .map(|s| s["metadata"]["name"].as_str().unwrap())
                .collect();
            assert_eq!(selected, [name], "{case} {path}: the job label is `{name}`");
            let service = &stack.stack.services[name];
            let metrics = service.metrics.as_ref().unwrap();
            assert!(service.monitoring, "{case} {path}");
            assert_eq!(doc["spec"]["endpoints"][0]["port"], metrics.port.as_str());
            assert_eq!(doc["spec"]["endpoints"][0]["path"], metrics.path.as_str());
        }
        for (name, service) in &stack.stack.services {
            let has = docs.contains_key(&format!("{name}/servicemonitor.yaml"));
            assert_eq!(
                has,
                service.monitoring
                    && !service.ports.is_empty()
                    && !matches!(
                        service.workload,
                        kiln::stack::model::Workload::Cronjob { .. }
                    ),
                "{case}: {name}"
            );
        }
    }
    assert!(monitors > 0);
}

/// A label key's name part, or a value: at most 63 of `[A-Za-z0-9._-]`,
/// alphanumeric at both ends (Kubernetes' `IsQualifiedName`/`IsValidLabelValue`).
fn label_name_ok(text: &str) -> bool {
    let b = text.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// Every label of every object (and pod template) of every library bundle
/// is a valid Kubernetes label; Traefik's Docker-provider labels, which the
/// edge stack's Authentik sets for compose, never reach Kubernetes.
#[test]
fn every_label_is_a_kubernetes_label_and_docker_provider_labels_stay_out() {
    fn walk(value: &Value, path: &str, seen: &mut usize) {
        match value {
            Value::Object(map) => {
                for (key, child) in map {
                    if key == "labels" {
                        for (k, v) in child.as_object().unwrap() {
                            *seen += 1;
                            let name = k.rsplit_once('/').map_or(k.as_str(), |(_, n)| n);
                            assert!(label_name_ok(name), "{path}: label key {k}");
                            let v = v.as_str().unwrap();
                            assert!(v.is_empty() || label_name_ok(v), "{path}: {k}={v}");
                            assert!(!k.starts_with("traefik."), "{path}: {k}");
                        }
                    } else {
                        walk(child, path, seen);
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|i| walk(i, path, seen)),
            _ => {}
        }
    }
    let mut seen = 0;
    let mut authentik = false;
    for (case, stack) in library_cases() {
        authentik |= stack.stack.services.values().any(|s| {
            s.labels
                .keys()
                .any(|k| k.starts_with("traefik.http.middlewares."))
        });
        for (path, doc) in documents(&render(&stack)) {
            walk(&doc, &format!("{case} {path}"), &mut seen);
        }
    }
    assert!(authentik, "the library sets a Docker-provider label");
    assert!(seen > 0);

    // A label Kubernetes would reject is refused, naming it.
    for (label, expected) in [
        (
            "\"example.com/team\" = \"a b\"",
            "is not a Kubernetes label value",
        ),
        ("\"-team\" = \"x\"", "is not a Kubernetes label key"),
    ] {
        let repo = test_repo(&format!(
            "[stack]\n{}",
            three_services(&format!("[services.web.labels]\n{label}\n"))
        ));
        let stack = pinned(repo.path(), "s", None);
        let err = k8s::render(&stack).unwrap_err().to_string();
        assert!(err.contains(expected), "{label}: {err}");
        assert!(err.contains("web"), "{err}");
    }
}
