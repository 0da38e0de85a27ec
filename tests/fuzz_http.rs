//! Property-based fuzzing of the extender's HTTP layer: every request kube-scheduler sent in the
//! captures of `tests/fixtures/kube-scheduler-v1.28`, mutated (types swapped, values made huge,
//! keys dropped or added, arrays multiplied, nesting deepened, bytes cut or flipped) and posted
//! to the verb it was captured for, against one long-lived server state.
//!
//! Every answer must be 200 with the verb's reply shape, or a 4xx with `{"error": "…"}`; a panic
//! fails the test (the handler's panic reaches the caller); the state must stay bounded.
//!
//! CI runs `VRAMFIT_FUZZ_CASES` cases per capture (default 48). The long run, documented in
//! docs/operations.md, is:
//! `VRAMFIT_FUZZ_CASES=20000 cargo test --release --test fuzz_http`.

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use serde_json::{json, Map, Value};
use tower::ServiceExt;

use vramfit::core::{Catalog, Config};
use vramfit::extender::http::{router, App, ServerConfig, MAX_NODES_FROM_REQUESTS};
use vramfit::extender::metrics::Metrics;
use vramfit::extender::state::ExtenderState;
use vramfit::kubernetes::snapshot::load_file;

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/kube-scheduler-v1.28"
);

/// Cases per capture: `VRAMFIT_FUZZ_CASES`, else 48.
fn cases() -> u32 {
    std::env::var("VRAMFIT_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48)
}

/// Every captured request: (verb, body).
fn captures() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(FIXTURES).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let Some((verb, _)) = name.split_once("-request") else {
            continue;
        };
        let body: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        out.push((verb.to_string(), body));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(out.len() >= 10, "captured requests found: {}", out.len());
    out
}

/// One server state shared by every case, so what requests leave behind accumulates.
fn state() -> &'static Arc<ExtenderState> {
    static STATE: OnceLock<Arc<ExtenderState>> = OnceLock::new();
    STATE.get_or_init(|| {
        let snapshot =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/capture-cluster.json");
        Arc::new(ExtenderState::from_snapshot(
            &load_file(&snapshot).unwrap(),
            Config::default(),
            Catalog::default(),
            SystemTime::now(),
        ))
    })
}

fn app() -> axum::Router {
    router(
        App {
            cluster: state().clone(),
            metrics: Arc::new(Metrics::default()),
        },
        &ServerConfig {
            body_limit_bytes: 4 * 1024 * 1024,
            ..ServerConfig::default()
        },
    )
}

/// Values that have broken parsers before: huge and negative counts, fractions, exponents,
/// printf directives, long and non-ASCII strings, every JSON type.
fn hostile_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        Just(json!(true)),
        Just(json!(-1)),
        Just(json!(0)),
        Just(json!(1.5)),
        Just(json!(1e308)),
        Just(json!(u64::MAX)),
        Just(json!(i64::MIN)),
        Just(json!("")),
        Just(json!("4294967295")),
        Just(json!("18446744073709551616")),
        Just(json!("1e18")),
        Just(json!("-5")),
        Just(json!("0.5")),
        Just(json!("NaN")),
        Just(json!("1Ei")),
        Just(json!("999999999Ti")),
        Just(json!("%s%d%!h(MISSING)")),
        Just(json!("Tesla-T4,A100,%")),
        Just(json!("ß∂ƒ©˙∆˚¬…æ")),
        Just(json!([])),
        Just(json!({})),
        (1usize..20_000).prop_map(|n| json!("a".repeat(n))),
        (0u64..u64::MAX).prop_map(|n| json!(n.to_string())),
        any::<i64>().prop_map(|n| json!(n)),
        "[a-zA-Z0-9.,%/-]{0,40}".prop_map(Value::String),
    ]
}

/// Keys worth adding where objects are: the labels, annotations and resources vramfit reads.
const KEYS: &[&str] = &[
    "nvidia.com/gpu",
    "nvidia.com/gpu.count",
    "nvidia.com/gpu.memory",
    "nvidia.com/gpu.product",
    "huawei.com/Ascend910",
    "node.kubernetes.io/npu.chip.name",
    "vramfit.io/vram",
    "vramfit.io/products",
    "vramfit.io/headroom",
    "vramfit.io/gpu-status",
    "vramfit.io/sharing",
    "vramfit.io/model",
    "nvidia.com/gpumem",
    "aliyun.com/gpu-mem",
    "Pod",
    "Nodes",
    "NodeNames",
    "items",
    "metadata",
    "name",
    "uid",
];

#[derive(Debug, Clone)]
enum Mutation {
    Replace(Value),
    Remove,
    Insert(&'static str, Value),
    /// Repeat an array's elements this many times (or wrap a scalar in such an array).
    Multiply(usize),
    /// Bury the value this deep in arrays.
    Nest(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => hostile_value().prop_map(Mutation::Replace),
        2 => Just(Mutation::Remove),
        3 => (proptest::sample::select(KEYS), hostile_value())
            .prop_map(|(k, v)| Mutation::Insert(k, v)),
        1 => (2usize..400).prop_map(Mutation::Multiply),
        1 => (1usize..300).prop_map(Mutation::Nest),
    ]
}

/// How the serialised body is then damaged.
#[derive(Debug, Clone)]
enum Damage {
    None,
    /// Keep this fraction (per mille) of the bytes.
    Truncate(u16),
    /// Overwrite the byte at this fraction (per mille) with this value.
    Flip(u16, u8),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        8 => Just(Damage::None),
        1 => (0u16..1000).prop_map(Damage::Truncate),
        1 => (0u16..1000, any::<u8>()).prop_map(|(at, b)| Damage::Flip(at, b)),
    ]
}

/// JSON pointers of every value in `value`, the root included.
fn pointers(value: &Value, at: String, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let escaped = k.replace('~', "~0").replace('/', "~1");
                pointers(v, format!("{at}/{escaped}"), out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                pointers(v, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
    out.push(at);
}

fn apply(body: &mut Value, pointer: &str, mutation: Mutation) {
    match mutation {
        Mutation::Remove => {
            let Some((parent, last)) = pointer.rsplit_once('/') else {
                *body = Value::Null;
                return;
            };
            let last = last.replace("~1", "/").replace("~0", "~");
            match body.pointer_mut(parent) {
                Some(Value::Object(map)) => {
                    map.remove(&last);
                }
                Some(Value::Array(items)) => {
                    if let Ok(i) = last.parse::<usize>() {
                        if i < items.len() {
                            items.remove(i);
                        }
                    }
                }
                _ => {}
            }
        }
        other => {
            let Some(target) = body.pointer_mut(pointer) else {
                return;
            };
            match other {
                Mutation::Replace(v) => *target = v,
                Mutation::Insert(key, v) => match target {
                    Value::Object(map) => {
                        map.insert(key.to_string(), v);
                    }
                    _ => {
                        let mut map = Map::new();
                        map.insert(key.to_string(), v);
                        *target = Value::Object(map);
                    }
                },
                Mutation::Multiply(n) => {
                    let items = match target.take() {
                        Value::Array(items) => items,
                        scalar => vec![scalar],
                    };
                    // Past twice the server's body limit a body only tests the 413 again:
                    // multiply no further, so nested multiplications stay a few hundred MiB
                    // instead of the gigabytes that made the long run peak at 15 GiB.
                    let bytes = serde_json::to_vec(&items).map_or(1, |b| b.len().max(1));
                    let n = n.min((2 * ServerConfig::default().body_limit_bytes / bytes).max(1));
                    let repeated: Vec<Value> = items
                        .iter()
                        .cycle()
                        .take(items.len() * n)
                        .cloned()
                        .collect();
                    *target = Value::Array(repeated);
                }
                Mutation::Nest(depth) => {
                    let mut v = target.take();
                    for _ in 0..depth {
                        v = Value::Array(vec![v]);
                    }
                    *target = v;
                }
                Mutation::Remove => unreachable!(),
            }
        }
    }
}

fn damaged(mut bytes: Vec<u8>, damage: Damage) -> Vec<u8> {
    match damage {
        Damage::None => {}
        Damage::Truncate(keep) => {
            let len = bytes.len() * usize::from(keep) / 1000;
            bytes.truncate(len);
        }
        Damage::Flip(at, byte) => {
            if !bytes.is_empty() {
                let i = (bytes.len() - 1) * usize::from(at) / 999;
                bytes[i] = byte;
            }
        }
    }
    bytes
}

/// Posts `body` to `verb` and checks the answer's contract.
async fn check(verb: &str, body: Vec<u8>) -> Result<(), TestCaseError> {
    let request = Request::post(format!("/{verb}"))
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap();
    let response = app().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    // Go's decoder has no depth limit of 128, so neither does this reading of the reply (the
    // server echoes Node objects it was sent).
    let mut reader = serde_json::Deserializer::from_slice(&bytes);
    reader.disable_recursion_limit();
    let reply = <Value as serde::Deserialize>::deserialize(&mut reader).map_err(|e| {
        TestCaseError::fail(format!(
            "{verb}: {status} with a body that is not JSON ({e}): {}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
        ))
    })?;
    if status == StatusCode::OK {
        let shape_ok = match verb {
            "filter" => reply.get("Error").is_some_and(Value::is_string),
            "prioritize" => reply.as_array().is_some_and(|scores| {
                scores
                    .iter()
                    .all(|s| s["Score"].as_i64().is_some_and(|n| (0..=10).contains(&n)))
            }),
            "bind" => reply.get("Error").is_some_and(Value::is_string),
            _ => false,
        };
        prop_assert!(shape_ok, "{verb}: 200 with an unexpected shape: {reply}");
    } else {
        prop_assert!(
            status.is_client_error(),
            "{verb}: status {status}, body {reply}"
        );
        prop_assert!(
            reply.get("error").is_some_and(Value::is_string),
            "{verb}: {status} without an error text: {reply}"
        );
    }
    Ok(())
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_free_heap() {
    extern "C" {
        fn malloc_trim(pad: usize) -> i32;
    }
    // SAFETY: glibc's malloc_trim only returns free heap pages to the kernel.
    unsafe { malloc_trim(0) };
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_heap() {}

fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[test]
fn mutated_captured_requests_get_a_2xx_or_a_4xx_with_a_json_error() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let before = rss_kib();
    let mut total = 0u64;
    for (verb, body) in captures() {
        let mut paths = Vec::new();
        pointers(&body, String::new(), &mut paths);
        let mut runner = TestRunner::new(ProptestConfig {
            cases: cases(),
            failure_persistence: None,
            ..ProptestConfig::default()
        });
        let strategy = (
            proptest::collection::vec((any::<prop::sample::Index>(), mutation()), 1..6),
            damage(),
        );
        runner
            .run(&strategy, |(mutations, damage)| {
                let mut mutated = body.clone();
                for (index, mutation) in mutations {
                    // Pointers of the original: a pointer a previous mutation removed is skipped.
                    let pointer: &String = index.get(&paths);
                    apply(&mut mutated, pointer, mutation);
                }
                let bytes = damaged(serde_json::to_vec(&mutated).unwrap(), damage);
                runtime.block_on(check(&verb, bytes))
            })
            .unwrap_or_else(|e| panic!("{verb}: {e}"));
        total += u64::from(cases());
    }
    // The state stays bounded whatever the requests were.
    assert!(state().read().node_count() <= MAX_NODES_FROM_REQUESTS);
    // What the run left behind: the heap pages glibc keeps after the test's own large transient
    // bodies (arrays multiplied up to twice the body limit) are handed back first, so the check
    // measures what the server holds, not the allocator's cache.
    let untrimmed = rss_kib();
    release_free_heap();
    eprintln!(
        "{total} requests: {} nodes, {} remembered pods, {} reserved pods; RSS {:?} KiB before, {:?} KiB after, {:?} KiB after returning free heap pages",
        state().read().node_count(),
        state().remembered_pods(),
        state().reserved_pods(),
        before,
        untrimmed,
        rss_kib()
    );
    if let (Some(before), Some(after)) = (before, rss_kib()) {
        let grown_mib = after.saturating_sub(before) / 1024;
        assert!(
            grown_mib < 1024,
            "RSS grew by {grown_mib} MiB over {total} requests"
        );
    }
    // Still answering.
    runtime
        .block_on(check(
            "filter",
            br#"{"Pod":{"metadata":{"name":"p"}}}"#.to_vec(),
        ))
        .unwrap();
}
