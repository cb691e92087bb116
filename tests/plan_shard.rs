//! `kiln plan --json` describes the derivation graph, and `--shard I/N`
//! deals it between N CI runners: the shards' targets partition the
//! targets, the derivations they own partition the whole graph, each
//! shard's plan is exactly its targets' closure, and the dealing is the
//! same on every run. `kiln build --shard I/N --dry-run` builds only that
//! shard's share.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{kiln, root, text};
use serde_json::Value;

/// The whole example fleet: every host, and every stack's bundles.
fn targets() -> Vec<String> {
    let mut targets = vec!["--all".to_owned()];
    for stack in ["ai", "edge", "monitoring", "netbox", "vault"] {
        targets.push(format!("stack:{stack}#compose"));
        targets.push(format!("stack:{stack}#k8s@prod"));
    }
    targets
}

fn plan(store: &std::path::Path, extra: &[&str]) -> Value {
    let store = store.to_str().unwrap();
    let mut args = vec!["--store", store, "plan", "--json"];
    let targets = targets();
    args.extend(targets.iter().map(String::as_str));
    args.extend(extra);
    let output = kiln(&root(), &args);
    assert!(output.status.success(), "{}", text(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("kiln plan --json prints JSON")
}

fn hashes(plan: &Value) -> BTreeSet<String> {
    plan["derivations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["hash"].as_str().unwrap().to_owned())
        .collect()
}

fn root_targets(plan: &Value) -> BTreeSet<String> {
    plan["roots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["target"].as_str().unwrap().to_owned())
        .collect()
}

/// Each derivation's inputs, from a plan.
fn graph(plan: &Value) -> BTreeMap<String, Vec<String>> {
    plan["derivations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let inputs = d["inputs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i.as_str().unwrap().to_owned())
                .collect();
            (d["hash"].as_str().unwrap().to_owned(), inputs)
        })
        .collect()
}

fn closure(graph: &BTreeMap<String, Vec<String>>, roots: &[String]) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut stack = roots.to_vec();
    while let Some(hash) = stack.pop() {
        if seen.insert(hash.clone()) {
            stack.extend(graph[&hash].iter().cloned());
        }
    }
    seen
}

#[test]
fn the_plan_is_a_topologically_ordered_graph() {
    let store = tempfile::tempdir().unwrap();
    let whole = plan(store.path(), &[]);
    assert_eq!(whole["version"], 1);
    let mut seen = BTreeSet::new();
    for derivation in whole["derivations"].as_array().unwrap() {
        for input in derivation["inputs"].as_array().unwrap() {
            assert!(
                seen.contains(input.as_str().unwrap()),
                "{} comes before its input {input}",
                derivation["name"]
            );
        }
        assert_eq!(derivation["valid"], false, "an empty store has nothing");
        seen.insert(derivation["hash"].as_str().unwrap().to_owned());
    }
    // Every host and every stack bundle is a root; the hosts' closures
    // hold the Debian packages, so the graph is large.
    let roots = root_targets(&whole);
    assert!(roots.contains("docker-host") && roots.contains("stack:vault#k8s@prod"));
    assert_eq!(roots.len(), 15, "{roots:?}");
    assert!(seen.len() > 100, "{} derivations", seen.len());
    // The graph is closed: every input is in it.
    let graph = graph(&whole);
    let all_roots: Vec<String> = whole["roots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["hash"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(closure(&graph, &all_roots), seen);
}

#[test]
fn shards_are_disjoint_cover_the_graph_and_are_deterministic() {
    let store = tempfile::tempdir().unwrap();
    let whole = plan(store.path(), &[]);
    let everything = hashes(&whole);
    let all_targets = root_targets(&whole);
    let graph = graph(&whole);
    // Two and three runners, and more runners than targets (one idle).
    for count in [2usize, 3, 16] {
        let mut owned_union = BTreeSet::new();
        let mut target_union = BTreeSet::new();
        let mut costs = Vec::new();
        for index in 1..=count {
            let shard = format!("{index}/{count}");
            let share = plan(store.path(), &["--shard", &shard]);
            assert_eq!(share["shard"]["index"], index);
            assert_eq!(share["shard"]["count"], count);
            // Deterministic: the same share on every run.
            if count == 3 {
                assert_eq!(share, plan(store.path(), &["--shard", &shard]), "{shard}");
            }
            let targets = root_targets(&share);
            assert!(
                targets.is_disjoint(&target_union),
                "{shard}: a target in two shards: {targets:?}"
            );
            target_union.extend(targets);
            // The shard's plan is exactly its roots' closure.
            let roots: Vec<String> = share["roots"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["hash"].as_str().unwrap().to_owned())
                .collect();
            assert_eq!(hashes(&share), closure(&graph, &roots), "{shard}");
            let owned: BTreeSet<String> = share["derivations"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["shard"] == index)
                .map(|d| d["hash"].as_str().unwrap().to_owned())
                .collect();
            assert!(
                owned.is_disjoint(&owned_union),
                "{shard}: a derivation owned twice"
            );
            owned_union.extend(owned.iter().cloned());
            // The summary agrees with the list.
            let summary = &share["shards"][index - 1];
            assert_eq!(summary["derivations"], owned.len(), "{shard}");
            costs.push(summary["cost"].as_u64().unwrap());
        }
        assert_eq!(
            target_union, all_targets,
            "{count} shards cover every target"
        );
        assert_eq!(
            owned_union, everything,
            "{count} shards own the whole graph"
        );
        // Each shard has work while there are targets to deal.
        let busy = costs.iter().filter(|c| **c > 0).count();
        assert_eq!(
            busy,
            count.min(all_targets.len()),
            "{count} shards: {costs:?}"
        );
    }
}

#[test]
fn build_with_a_shard_builds_only_its_share() {
    let store = tempfile::tempdir().unwrap();
    let share = plan(store.path(), &["--shard", "2/3"]);
    let paths: BTreeSet<String> = share["derivations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["path"].as_str().unwrap().to_owned())
        .collect();
    let store_arg = store.path().to_str().unwrap();
    let mut args = vec!["--store", store_arg, "build", "--dry-run", "--shard", "2/3"];
    let targets = targets();
    args.extend(targets.iter().map(String::as_str));
    let output = kiln(&root(), &args);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let listed: Vec<String> = text(&output.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2).map(str::to_owned))
        .collect();
    assert!(!listed.is_empty());
    assert_eq!(
        listed.iter().cloned().collect::<BTreeSet<_>>(),
        paths,
        "the dry run lists exactly the shard's closure"
    );
    assert!(text(&output.stderr).contains("shard 2/3"));

    // A shard that is not one is a usage error.
    let output = kiln(&root(), &["plan", "--all", "--shard", "4/3"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        text(&output.stderr).contains("1 ≤ I ≤ N"),
        "{}",
        text(&output.stderr)
    );
}
