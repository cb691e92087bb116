//! Push a closure from store A to a cache and pull it into an empty store
//! B: the same paths, byte for byte. A tampered archive, record, or one
//! that is unsigned or signed by an untrusted key is refused with a clear
//! error, and nothing is registered.

use std::collections::BTreeSet;
use std::path::Path;

use kiln::cache::record::SecretKey;
use kiln::cache::transfer::{self, Outcome};
use kiln::cache::{CacheBackend, CacheKey};
use kiln::store::Store;
use kiln::store::path::StorePath;

/// Register a directory holding `files` as `path` in `store`.
fn add(store: &Store, path: &StorePath, files: &[(&str, String)], refs: &[&StorePath]) {
    let scratch = store.scratch().unwrap();
    let out = scratch.path().join("out");
    std::fs::create_dir(&out).unwrap();
    for (name, text) in files {
        std::fs::write(out.join(name), text).unwrap();
    }
    let candidates: BTreeSet<StorePath> = refs.iter().map(|r| (*r).clone()).collect();
    let record = store.register(path, &out, None, None, &candidates).unwrap();
    assert_eq!(record.references, candidates);
}

/// Store A with `lib` ← `app` ← `image` (each refers to the previous).
fn store_a(dir: &Path) -> (Store, Vec<StorePath>) {
    let store = Store::open(&dir.join("a")).unwrap();
    let lib = StorePath::new([1; 20], "lib").unwrap();
    let app = StorePath::new([2; 20], "app").unwrap();
    let image = StorePath::new([3; 20], "image").unwrap();
    add(&store, &lib, &[("lib.so", "x".repeat(300_000))], &[]);
    add(
        &store,
        &app,
        &[("run", format!("uses /store/{lib}\n"))],
        &[&lib],
    );
    add(
        &store,
        &image,
        &[("manifest", format!("{app}\n{}", "y".repeat(10_000)))],
        &[&app],
    );
    (store, vec![lib, app, image])
}

fn nar_of(store: &Store, path: &StorePath) -> Vec<u8> {
    let mut out = Vec::new();
    kiln::store::nar::dump(&store.real_path(path), &mut out).unwrap();
    out
}

#[test]
fn a_pushed_closure_is_pulled_into_an_empty_store_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let (a, paths) = store_a(dir.path());
    let key = SecretKey::generate("test-1").unwrap();
    let cache_dir = dir.path().join("cache");
    std::fs::create_dir(&cache_dir).unwrap();
    for url in [
        "memory://".to_owned(),
        format!("file://{}", cache_dir.display()),
    ] {
        let cache = CacheBackend::open(&url).unwrap();
        let pushed =
            transfer::push_closure(&a, &cache, &key, &[paths[2].clone()], |_, _| {}).unwrap();
        assert_eq!(
            pushed.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>(),
            paths,
            "references first"
        );
        assert!(pushed.iter().all(|(_, o)| *o == Outcome::Transferred));
        // A second push uploads nothing.
        let again =
            transfer::push_closure(&a, &cache, &key, &[paths[2].clone()], |_, _| {}).unwrap();
        assert!(again.iter().all(|(_, o)| *o == Outcome::AlreadyThere));

        let b = Store::open(&dir.path().join(format!("b-{}", url.len()))).unwrap();
        let mut seen = Vec::new();
        let outcome = transfer::pull(&b, &cache, &[key.public()], &paths[2], &mut |p, _| {
            seen.push(p.clone())
        })
        .unwrap();
        assert_eq!(outcome, Outcome::Transferred);
        for path in &paths {
            assert!(b.is_valid(path), "{path}");
            assert_eq!(nar_of(&b, path), nar_of(&a, path), "{path}");
            let (ra, rb) = (
                a.record(path).unwrap().unwrap(),
                b.record(path).unwrap().unwrap(),
            );
            assert_eq!(
                (ra.nar_sha256, ra.references, ra.deriver),
                (rb.nar_sha256, rb.references, rb.deriver)
            );
        }
        assert_eq!(b.verify(|_| {}).unwrap().corrupt.len(), 0);
    }
}

#[test]
fn tampering_is_refused_and_registers_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (a, paths) = store_a(dir.path());
    let key = SecretKey::generate("test-1").unwrap();
    let lib = &paths[0];
    let record_key = transfer::record_key(lib);
    let fresh = || {
        let cache = CacheBackend::open("memory://").unwrap();
        transfer::push_closure(&a, &cache, &key, std::slice::from_ref(lib), |_, _| {}).unwrap();
        let text = String::from_utf8(cache.get(&record_key).unwrap().unwrap().to_vec()).unwrap();
        (cache, text)
    };
    let mut n = 0;
    let mut check =
        |cache: &CacheBackend, trusted: &[kiln::cache::record::PublicKey], words: &str| {
            n += 1;
            let b = Store::open(&dir.path().join(format!("b{n}"))).unwrap();
            let err = transfer::pull(&b, cache, trusted, lib, &mut |_, _| {})
                .unwrap_err()
                .to_string();
            assert!(err.contains(words), "expected `{words}` in: {err}");
            assert!(!b.is_valid(lib));
            assert!(b.records().unwrap().is_empty(), "nothing registered");
            assert!(!b.real_path(lib).exists(), "nothing left in the store");
        };

    // The archive replaced by other bytes.
    let (cache, text) = fresh();
    let url = text.lines().find_map(|l| l.strip_prefix("URL: ")).unwrap();
    cache
        .put(&CacheKey::new(url).unwrap(), b"not the archive".to_vec())
        .unwrap();
    check(&cache, &[key.public()], "tampered");

    // The archive replaced by a valid archive of other contents, the record
    // changed to match it but not re-signed.
    let (cache, text) = fresh();
    cache
        .put(&record_key, text.replace("NarSize: ", "NarSize: 1"))
        .unwrap();
    check(&cache, &[key.public()], "does not match the record");

    // The archive swapped for another path's genuine archive, with the
    // unsigned archive fields pointed at it: the signature still verifies,
    // the archive's hash matches, and the NAR hash catches it.
    let (cache, text) = fresh();
    transfer::push_closure(&a, &cache, &key, std::slice::from_ref(&paths[2]), |_, _| {}).unwrap();
    let image = String::from_utf8(
        cache
            .get(&transfer::record_key(&paths[2]))
            .unwrap()
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    let field = |text: &str, name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .unwrap()
            .to_owned()
    };
    let mut swapped = text.clone();
    for name in ["URL: ", "FileHash: ", "FileSize: "] {
        swapped = swapped.replace(&field(&text, name), &field(&image, name));
    }
    assert_ne!(swapped, text);
    cache.put(&record_key, swapped).unwrap();
    check(&cache, &[key.public()], "unpacks to a NAR");

    // Unsigned.
    let (cache, text) = fresh();
    let unsigned: String = text
        .lines()
        .filter(|l| !l.starts_with("Sig: "))
        .map(|l| format!("{l}\n"))
        .collect();
    cache.put(&record_key, unsigned).unwrap();
    check(&cache, &[key.public()], "not signed");

    // Signed, but by a key this machine does not trust.
    let (cache, _) = fresh();
    let other = SecretKey::generate("other-1").unwrap();
    check(&cache, &[other.public()], "not trusted");

    // A record that is not a record.
    let (cache, _) = fresh();
    cache.put(&record_key, b"garbage".to_vec()).unwrap();
    check(&cache, &[key.public()], "line 1");

    // Missing entirely.
    let cache = CacheBackend::open("memory://").unwrap();
    check(&cache, &[key.public()], "not in the cache");
}

fn kiln(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["--color", "never"])
        .args(args)
        .env_remove("KILN_TRUSTED_KEYS")
        .env_remove("KILN_CACHE_SECRET_KEY_FILE")
        .output()
        .unwrap()
}

/// The commands: keygen, push a closure, pull it into another store; pull
/// refuses without a trusted key, and with the wrong one.
#[test]
fn kiln_cache_push_and_pull_through_a_directory_cache() {
    let dir = tempfile::tempdir().unwrap();
    let (a, paths) = store_a(dir.path());
    let cache = dir.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    let url = format!("file://{}", cache.display());
    let secret = dir.path().join("k.sec");
    let out = kiln(&[
        "cache",
        "keygen",
        "t-1",
        "--secret-key-file",
        secret.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let public = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let a_root = a.root().to_str().unwrap().to_owned();
    let image = a.real_path(&paths[2]);
    let out = kiln(&[
        "--store",
        &a_root,
        "cache",
        "push",
        "--to",
        &url,
        "--secret-key-file",
        secret.to_str().unwrap(),
        image.to_str().unwrap(),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["paths"].as_array().unwrap().len(), 3);

    let b = dir.path().join("b");
    let b_root = b.to_str().unwrap();
    let name = paths[2].to_string();
    let out = kiln(&["--store", b_root, "cache", "pull", "--from", &url, &name]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no trusted keys"));
    let other = SecretKey::generate("t-1").unwrap().public().to_text();
    let out = kiln(&[
        "--store",
        b_root,
        "cache",
        "pull",
        "--from",
        &url,
        "--trusted-key",
        &other,
        &name,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not match"));
    let out = kiln(&[
        "--store",
        b_root,
        "cache",
        "pull",
        "--from",
        &url,
        "--trusted-key",
        &public,
        &name,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let b = Store::open(&b).unwrap();
    for path in &paths {
        assert_eq!(nar_of(&b, path), nar_of(&a, path));
    }
}
