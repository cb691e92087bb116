//! The defaults pass, its opt-outs and provenance, and the checks, on
//! small stacks evaluated by the real evaluator.

use serde_json::json;

use crate::config::diagnostic::render;
use crate::config::{DocKind, Repo};
use crate::eval::Evaluator;

use super::model::{Peer, Probe, Stack, Strategy, Workload};

fn evaluator(stack: &str) -> Evaluator {
    let files = vec![("stacks/s.toml".to_owned(), stack.as_bytes().to_vec())];
    Evaluator::new(Repo::from_files("/repo".into(), files))
}

fn stack_in(text: &str, env: Option<&str>) -> Result<Stack, Vec<String>> {
    let evaluator = evaluator(text);
    assert!(
        evaluator.diagnostics.is_empty(),
        "{:?}",
        evaluator.diagnostics
    );
    let id = evaluator.repo.find(DocKind::Stack, "s").unwrap();
    evaluator.stack_in(id, env).map_err(|diagnostics| {
        diagnostics
            .iter()
            .map(|d| render(d, &evaluator.repo.sources, false))
            .collect()
    })
}

fn stack(text: &str) -> Stack {
    stack_in(text, None).unwrap_or_else(|errors| panic!("{}", errors.join("\n")))
}

fn errors(text: &str) -> String {
    stack_in(text, None).map(|_| ()).unwrap_err().join("\n")
}

const APP: &str = r#"[stack]
[services.app]
image = "ghcr.io/org/app:1.2.3"
depends_on = ["db"]
[services.app.ports]
http = { port = 8080 }
metrics = { port = 9100 }
[services.app.metrics]
port = "metrics"
[services.app.expose]
hostname = "app.home.arpa"
port = "http"
[services.app.volumes.uploads]
path = "/uploads"

[services.db]
image = "postgres:16.4-alpine"
kind = "stateful"
[services.db.ports]
postgres = { port = 5432 }
[services.db.volumes.data]
path = "/var/lib/postgresql/data"
size = "8GiB"
"#;

#[test]
fn a_service_gets_every_default_with_its_reason() {
    let stack = stack(APP);
    let app = &stack.services["app"];
    let why = |path: &str| stack.provenance[path].as_str();

    assert!(app.monitoring);
    assert_eq!(
        why("services.app.monitoring"),
        "default: kiln stack defaults (monitoring for every metrics endpoint)"
    );
    let backup = app.volumes["uploads"].backup.as_ref().unwrap();
    assert_eq!(
        (
            backup.schedule.as_str(),
            backup.keep_daily,
            backup.keep_weekly
        ),
        ("0 3 * * *", 7, 4)
    );
    assert_eq!(
        why("services.app.volumes.uploads.backup"),
        "default: kiln stack defaults (backup for every persistent volume)"
    );
    // The health check probes the exposed port.
    let health = app.health.as_ref().unwrap();
    assert_eq!(
        health.probe,
        Probe::Tcp {
            port: "http".into()
        }
    );
    assert!(why("services.app.health").contains("TCP connect to port `http`"));
    assert_eq!((app.resources.cpu, app.resources.memory), (100, 128 << 20));
    assert_eq!(app.resources.memory_limit, 128 << 20);
    assert_eq!(app.resources.cpu_limit, None);
    assert_eq!(app.strategy, Some(Strategy::Rolling));
    assert_eq!(
        serde_json::to_value(&app.labels).unwrap(),
        json!({
            "app.kubernetes.io/component": "server",
            "app.kubernetes.io/instance": "s-app",
            "app.kubernetes.io/managed-by": "kiln",
            "app.kubernetes.io/name": "app",
            "app.kubernetes.io/part-of": "s",
            "app.kubernetes.io/version": "1.2.3",
        })
    );
    assert!(
        why("services.app.labels.\"app.kubernetes.io/name\"")
            .starts_with("default: kiln stack defaults")
    );
    // Written values point at the file; declared defaults say so.
    assert_eq!(why("services.app.image"), "stacks/s.toml:3:9");
    assert_eq!(
        why("services.app.expose.tls"),
        "default: the option's declared default (services.<name>.expose.tls)"
    );
}

#[test]
fn the_network_policy_follows_depends_on() {
    let stack = stack(APP);
    let app = stack.services["app"].network_policy.as_ref().unwrap();
    let db = stack.services["db"].network_policy.as_ref().unwrap();
    assert!(app.default_deny && app.dns && db.default_deny && db.dns);
    assert_eq!(
        app.egress,
        [Peer::Service {
            name: "db".into(),
            ports: vec!["postgres".into()]
        }]
    );
    assert_eq!(
        app.ingress,
        [
            Peer::Proxy {
                ports: vec!["http".into()]
            },
            Peer::Monitoring {
                ports: vec!["metrics".into()]
            },
        ]
    );
    assert_eq!(
        db.ingress,
        [Peer::Service {
            name: "app".into(),
            ports: vec!["postgres".into()]
        }]
    );
    assert!(db.egress.is_empty());
}

#[test]
fn opt_outs_are_honoured_and_located() {
    let text = format!(
        "{APP}[services.db.health]\ntype = \"none\"\n\
         [services.app2]\nimage = \"app:1\"\nmonitoring = false\nnetwork_policy = false\nbackup = false\n\
         metrics = {{ port = \"m\" }}\nports.m = {{ port = 9100 }}\nvolumes.v = {{ path = \"/v\" }}\n"
    );
    let stack = stack(&text);
    let app2 = &stack.services["app2"];
    assert!(!app2.monitoring);
    assert_eq!(app2.network_policy, None);
    assert_eq!(app2.volumes["v"].backup, None);
    assert!(stack.provenance["services.app2.monitoring"].starts_with("stacks/s.toml:"));
    assert!(stack.provenance["services.app2.network_policy"].starts_with("stacks/s.toml:"));
    // The service-wide `backup = false` is where each volume's backup went.
    assert_eq!(
        stack.provenance["services.app2.volumes.v.backup"],
        "stacks/s.toml:30:10"
    );
    assert_eq!(stack.services["db"].health, None);
    assert!(stack.provenance["services.db.health"].starts_with("stacks/s.toml:"));
    assert!(!stack.provenance.contains_key("services.db.health.interval"));
}

#[test]
fn a_volume_can_opt_out_alone() {
    let stack = stack(&APP.replace("path = \"/uploads\"", "path = \"/uploads\"\nbackup = false"));
    let app = &stack.services["app"];
    assert_eq!(app.volumes["uploads"].backup, None);
    assert_eq!(
        stack.provenance["services.app.volumes.uploads.backup"],
        "stacks/s.toml:15:10"
    );
    assert!(stack.services["db"].volumes["data"].backup.is_some());
}

#[test]
fn cron_jobs_and_strategies() {
    let stack = stack(
        r#"[stack]
[services.report]
image = "report:1"
kind = "cronjob"
schedule = "30 4 * * 1"
[services.web]
image = "web:1"
ports.http = { port = 80 }
strategy = { type = "canary" }
[services.api]
image = "api:1"
strategy = { type = "blue-green" }
"#,
    );
    let report = &stack.services["report"];
    assert_eq!(
        report.workload,
        Workload::Cronjob {
            schedule: "30 4 * * 1".into()
        }
    );
    assert_eq!(
        (report.strategy.clone(), report.health.clone()),
        (None, None)
    );
    assert_eq!(report.labels["app.kubernetes.io/component"], "job");
    assert_eq!(
        stack.services["web"].strategy,
        Some(Strategy::Canary {
            steps: vec![10, 50, 100]
        })
    );
    assert!(
        stack.provenance["services.web.strategy.steps"].starts_with("default: kiln stack defaults")
    );
    assert_eq!(stack.services["api"].strategy, Some(Strategy::BlueGreen));
    // No port: no default health check, and the reason says so.
    assert_eq!(stack.services["api"].health, None);
    assert!(stack.provenance["services.api.health"].contains("no port to probe"));
    let json = serde_json::to_value(report).unwrap();
    assert_eq!(
        (json["kind"].clone(), json["schedule"].clone()),
        (json!("cronjob"), json!("30 4 * * 1"))
    );
}

#[test]
fn user_labels_win_over_recommended_ones() {
    let stack = stack(
        "[stack]\n[services.web]\nimage = \"web:1\"\nlabels = { \"app.kubernetes.io/name\" = \"website\", team = \"ops\" }\n",
    );
    let labels = &stack.services["web"].labels;
    assert_eq!(labels["app.kubernetes.io/name"], "website");
    assert_eq!(labels["team"], "ops");
    assert_eq!(
        stack.provenance["services.web.labels.\"app.kubernetes.io/name\""],
        "stacks/s.toml:4:39"
    );
}

#[test]
fn environments_overlay_leaf_by_leaf_and_replace_lists() {
    let text = format!(
        "{APP}\n[env.prod.services.app]\nreplicas = 3\ndepends_on = []\n[env.prod.services.app.ports.http]\nport = 8081\n"
    );
    let base = stack_in(&text, None).unwrap();
    let prod = stack_in(&text, Some("prod")).unwrap();
    assert_eq!(base.services["app"].replicas, 1);
    assert_eq!(prod.services["app"].replicas, 3);
    assert_eq!(prod.services["app"].ports["http"].port, 8081);
    assert_eq!(prod.services["app"].ports["metrics"].port, 9100);
    assert!(prod.services["app"].depends_on.is_empty());
    assert!(prod.provenance["services.app.replicas"].ends_with("(env prod)"));
    assert_eq!(prod.environments, ["prod"]);
    let unknown = stack_in(&text, Some("prd")).unwrap_err().join("\n");
    assert!(
        unknown.contains("stack `s` has no environment `prd`"),
        "{unknown}"
    );
    assert!(unknown.contains("did you mean `prod`?"), "{unknown}");
}

#[test]
fn an_error_in_an_overlay_is_found_without_asking_for_it() {
    let text = format!("{APP}[env.prod.services.app]\ndepends_on = [\"cache\"]\n");
    let found = errors(&text);
    assert!(
        found.contains("`app` depends on unknown service `cache`"),
        "{found}"
    );
    assert!(found.contains("stacks/s.toml:25:15"), "{found}");
}

#[test]
fn every_error_is_reported_once() {
    let found = stack_in(
        "[stack]\n[services.web]\nimage = \"web:1\"\ndepends_on = [\"db\"]\n[env.a]\n[env.b]\n",
        None,
    )
    .unwrap_err();
    assert_eq!(found.len(), 1, "{found:?}");
}

#[test]
fn references_stay_references() {
    let stack = stack(
        "[stack]\n[services.web]\nimage = \"web:1\"\nsecrets = { A = \"env:A\", B = \"file:/run/b\", C = \"vault:kv/web#c\" }\n",
    );
    assert_eq!(
        serde_json::to_value(&stack.services["web"].secrets).unwrap(),
        json!({
            "A": { "source": "env", "name": "A" },
            "B": { "source": "file", "path": "/run/b" },
            "C": { "source": "vault", "path": "kv/web", "key": "c" },
        })
    );
}

#[test]
fn misshapen_stacks_fail_without_panicking() {
    for text in [
        "[stack]\nservices = 3\n",
        "[stack]\nenv = []\n",
        "[stack]\n[env]\nprod = 1\n",
        "[stack]\n[env.PROD]\n",
        "[stack]\n[services.web]\nimage = 7\n",
        "[stack]\n[services.Web]\nimage = \"web:1\"\n",
        "[stack]\n[services.web]\nimage = \"web\"\n",
        "[stack]\n[services.web]\nimage = \"web:1\"\nresources = { cpu = \"2\", cpu_limit = \"500m\" }\n",
        "[stack]\n[services.web]\nimage = \"web:1\"\nhealth = { type = \"http\" }\n",
        "[stack]\n[services.web]\nimage = \"web:1\"\nkind = \"stateful\"\nstrategy = { type = \"blue-green\" }\n",
        "[stack]\n[services.web]\nimage = \"web:1\"\nexpose = { hostname = \"a.b\", port = \"x\" }\nports.http = { port = 80 }\n[services.api]\nimage = \"api:1\"\nports.http = { port = 80 }\nexpose = { hostname = \"a.b\" }\n",
    ] {
        assert!(!errors(text).is_empty(), "{text}");
    }
}
