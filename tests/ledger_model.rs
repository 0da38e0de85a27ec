//! A model-based property test of the live cluster state: random interleavings of binds
//! (succeeding, refused, timing out before or after the API server bound the pod), pod watch
//! events (created, bound, finished, deleted), reservation expiry and extender restarts, checked
//! against a reference API server. Invariants: no device is ever over-committed (in the ledger,
//! and in what the API server ends up binding), nothing a bind committed is lost, and the ledger
//! after a restart equals the ledger before it.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::future::BoxFuture;
use proptest::prelude::*;
use serde_json::{json, Value};
use vramfit::core::{Catalog, Config, Placement};
use vramfit::extender::binder::{binding_annotations, BindFailure, BindTarget, Binder};
use vramfit::extender::state::ExtenderState;
use vramfit::kubernetes::objects::{Node, Pod};

const NODES: [(&str, &str, u64, u32, bool); 3] = [
    ("a100-0", "NVIDIA-A100-SXM4-80GB", 81920, 2, false),
    ("a100-1", "NVIDIA-A100-SXM4-80GB", 81920, 2, false),
    ("t4-shared", "Tesla-T4", 15360, 2, true),
];

fn nodes() -> Vec<Node> {
    NODES
        .iter()
        .map(|(name, product, memory, count, sharing)| {
            let mut labels = json!({"nvidia.com/gpu.product": product, "nvidia.com/gpu.memory": memory.to_string(), "topology.kubernetes.io/zone": "z"});
            if *sharing {
                labels["vramfit.io/sharing"] = json!("vram");
            }
            serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}, "status": {"allocatable": {"nvidia.com/gpu": count.to_string()}}})).unwrap()
        })
        .collect()
}

#[derive(Debug, Clone, Copy)]
enum Outcome {
    Bound,
    Refused,
    TimeoutButBound,
    TimeoutNotBound,
}

#[derive(Debug, Clone)]
enum Op {
    Create { pod: u8, gpus: u8, vram_gib: u8 },
    Bind { pod: u8, node: u8, outcome: Outcome },
    Deliver { pod: u8 },
    Finish { pod: u8 },
    Delete { pod: u8 },
    ExpireAfterEventsArrive,
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    let outcome = prop_oneof![
        4 => Just(Outcome::Bound),
        1 => Just(Outcome::Refused),
        1 => Just(Outcome::TimeoutButBound),
        1 => Just(Outcome::TimeoutNotBound),
    ];
    prop_oneof![
        3 => (0u8..10, 0u8..3, 0u8..40).prop_map(|(pod, gpus, vram_gib)| Op::Create { pod, gpus, vram_gib }),
        5 => (0u8..10, 0u8..3, outcome).prop_map(|(pod, node, outcome)| Op::Bind { pod, node, outcome }),
        3 => (0u8..10).prop_map(|pod| Op::Deliver { pod }),
        1 => (0u8..10).prop_map(|pod| Op::Finish { pod }),
        1 => (0u8..10).prop_map(|pod| Op::Delete { pod }),
        1 => Just(Op::ExpireAfterEventsArrive),
        1 => Just(Op::Restart),
    ]
}

/// The reference API server: pods by UID as JSON objects.
#[derive(Default)]
struct ApiServer {
    pods: BTreeMap<String, Value>,
}

struct ScriptedBinder {
    api: Arc<Mutex<ApiServer>>,
    next: Mutex<Outcome>,
}

impl Binder for ScriptedBinder {
    fn bind<'a>(
        &'a self,
        target: &'a BindTarget,
        placement: &'a Placement,
    ) -> BoxFuture<'a, Result<(), BindFailure>> {
        Box::pin(async move {
            let outcome = *self.next.lock().unwrap();
            let mut api = self.api.lock().unwrap();
            let bindable = api
                .pods
                .get(&target.uid)
                .is_some_and(|p| p["spec"]["nodeName"].is_null());
            if matches!(outcome, Outcome::Bound | Outcome::TimeoutButBound) && bindable {
                let pod = api.pods.get_mut(&target.uid).unwrap();
                pod["spec"]["nodeName"] = json!(target.node);
                for (k, v) in binding_annotations(placement) {
                    pod["metadata"]["annotations"][k] = json!(v);
                }
            }
            // Like the real binder: "already assigned to the same node" (409) counts as success.
            let same_node = api
                .pods
                .get(&target.uid)
                .is_some_and(|p| p["spec"]["nodeName"] == json!(target.node));
            match outcome {
                Outcome::Bound if bindable || same_node => Ok(()),
                Outcome::Bound | Outcome::Refused => Err(BindFailure {
                    message: "refused".into(),
                    definite: true,
                }),
                Outcome::TimeoutButBound | Outcome::TimeoutNotBound => Err(BindFailure {
                    message: "timeout".into(),
                    definite: false,
                }),
            }
        })
    }
}

fn pod(uid: &str, gpus: u8, vram_gib: u8) -> Value {
    let mut limits = json!({});
    if gpus > 0 {
        limits["nvidia.com/gpu"] = json!(gpus.to_string());
    }
    let mut annotations = json!({});
    if vram_gib > 0 || gpus == 0 {
        annotations["vramfit.io/vram"] = json!(format!("{}Gi", vram_gib.max(1)));
    }
    json!({
        "metadata": {"name": uid, "namespace": "ml", "uid": uid, "annotations": annotations},
        "spec": {"containers": [{"name": "c", "resources": {"limits": limits}}], "nodeName": null},
        "status": {"phase": "Pending"}
    })
}

fn as_pod(value: &Value) -> Pod {
    serde_json::from_value(value.clone()).unwrap()
}

fn fresh_state(api: &Arc<Mutex<ApiServer>>, binder: Arc<ScriptedBinder>) -> ExtenderState {
    struct Shared(Arc<ScriptedBinder>);
    impl Binder for Shared {
        fn bind<'a>(
            &'a self,
            t: &'a BindTarget,
            p: &'a Placement,
        ) -> BoxFuture<'a, Result<(), BindFailure>> {
            self.0.bind(t, p)
        }
    }
    let state = ExtenderState::new(
        Config::default(),
        Catalog::default(),
        Box::new(Shared(binder)),
    );
    for node in nodes() {
        state.apply_node(&node, SystemTime::now());
    }
    // The initial list: every pod the API server has, then the relist clean-up.
    let api = api.lock().unwrap();
    for value in api.pods.values() {
        state.apply_pod(&as_pod(value));
    }
    state.retain_pods(&api.pods.keys().cloned().collect());
    state.set_ready(true);
    state
}

/// (pod, node, devices) of every placement in the ledger.
fn ledger(state: &ExtenderState) -> BTreeSet<(String, String, Vec<u32>)> {
    state
        .read()
        .placements()
        .map(|(id, p)| {
            (
                id.clone(),
                p.node.clone(),
                p.shares.iter().map(|s| s.index).collect(),
            )
        })
        .collect()
}

/// (pod, node, devices) of every bound, unfinished pod at the API server.
fn api_bound(api: &ApiServer) -> BTreeSet<(String, String, Vec<u32>)> {
    api.pods
        .iter()
        .filter(|(_, p)| p["spec"]["nodeName"].is_string() && p["status"]["phase"] != "Succeeded")
        .map(|(id, p)| {
            let devices = p["metadata"]["annotations"]["vramfit.io/assigned-devices"]
                .as_str()
                .unwrap_or("")
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|s| s.parse().unwrap())
                .collect();
            (
                id.clone(),
                p["spec"]["nodeName"].as_str().unwrap().to_string(),
                devices,
            )
        })
        .collect()
}

fn check_no_overcommit(state: &ExtenderState, api: &ApiServer) -> Result<(), TestCaseError> {
    for node in state.read().nodes() {
        prop_assert!(node.held_devices() <= node.allocatable_devices);
        for d in &node.devices {
            prop_assert!(
                d.exclusive_holders <= 1,
                "ledger: {} #{} held twice",
                node.name,
                d.index
            );
            prop_assert!(
                d.exclusive_holders == 0 || d.sharers == 0,
                "ledger: {} #{} held and shared",
                node.name,
                d.index
            );
            prop_assert!(
                d.reserved_mib <= d.total_mib,
                "ledger: {} #{} over its VRAM",
                node.name,
                d.index
            );
        }
    }
    // What the API server actually bound never puts two whole-device pods on one device, nor
    // more VRAM than a shared device has.
    let mut whole: BTreeMap<(String, u32), u32> = BTreeMap::new();
    let mut shared: BTreeMap<(String, u32), u64> = BTreeMap::new();
    for (id, node, devices) in api_bound(api) {
        let p = &api.pods[&id];
        let exclusive =
            p["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"].is_string();
        let vram_mib: u64 = p["metadata"]["annotations"]["vramfit.io/vram"]
            .as_str()
            .and_then(|v| {
                v.strip_suffix("Mi")
                    .and_then(|n| n.parse().ok())
                    .or_else(|| {
                        v.strip_suffix("Gi")
                            .and_then(|n| n.parse::<u64>().ok())
                            .map(|g| g * 1024)
                    })
            })
            .unwrap_or(0);
        for d in devices {
            if exclusive {
                *whole.entry((node.clone(), d)).or_default() += 1;
            } else {
                *shared.entry((node.clone(), d)).or_default() += vram_mib;
            }
        }
    }
    for (device, holders) in &whole {
        prop_assert!(
            *holders <= 1,
            "API: {device:?} bound to {holders} whole-device pods"
        );
        prop_assert!(
            !shared.contains_key(device),
            "API: {device:?} both whole and shared"
        );
    }
    for (device, mib) in &shared {
        prop_assert!(*mib <= 15360, "API: {device:?} shares {mib} MiB");
    }
    Ok(())
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let api = Arc::new(Mutex::new(ApiServer::default()));
    let binder = Arc::new(ScriptedBinder {
        api: api.clone(),
        next: Mutex::new(Outcome::Bound),
    });
    let mut state = fresh_state(&api, binder.clone());
    let mut delivered: HashSet<String> = HashSet::new();
    let ttl = Duration::from_secs(60);
    for op in ops {
        match op {
            Op::Create {
                pod: i,
                gpus,
                vram_gib,
            } => {
                let uid = format!("pod-{i}");
                if api.lock().unwrap().pods.contains_key(&uid) {
                    continue;
                }
                let value = pod(&uid, gpus, vram_gib);
                api.lock().unwrap().pods.insert(uid.clone(), value.clone());
                state.apply_pod(&as_pod(&value));
            }
            Op::Bind {
                pod: i,
                node,
                outcome,
            } => {
                let uid = format!("pod-{i}");
                if !api.lock().unwrap().pods.contains_key(&uid) {
                    continue;
                }
                *binder.next.lock().unwrap() = outcome;
                let target = BindTarget {
                    namespace: "ml".into(),
                    name: uid.clone(),
                    uid: uid.clone(),
                    node: NODES[node as usize].0.into(),
                };
                let result = runtime.block_on(state.bind(&target));
                if matches!(outcome, Outcome::Bound) && result.is_ok() {
                    // A successful bind is in the ledger at once, before any watch event.
                    let ledger = state.read();
                    let placement = ledger.placement(&uid);
                    prop_assert!(
                        placement.is_some_and(|p| p.node == target.node),
                        "bound pod missing from the ledger"
                    );
                }
                delivered.remove(&uid);
            }
            Op::Deliver { pod: i } => {
                let uid = format!("pod-{i}");
                let value = api.lock().unwrap().pods.get(&uid).cloned();
                if let Some(value) = value {
                    state.apply_pod(&as_pod(&value));
                    delivered.insert(uid);
                }
            }
            Op::Finish { pod: i } => {
                let uid = format!("pod-{i}");
                let value = {
                    let mut api = api.lock().unwrap();
                    api.pods.get_mut(&uid).map(|p| {
                        p["status"]["phase"] = json!("Succeeded");
                        p.clone()
                    })
                };
                if let Some(value) = value {
                    state.apply_pod(&as_pod(&value));
                    delivered.insert(uid);
                }
            }
            Op::Delete { pod: i } => {
                let uid = format!("pod-{i}");
                let removed = api.lock().unwrap().pods.remove(&uid);
                if let Some(value) = removed {
                    state.delete_pod(&as_pod(&value));
                    delivered.remove(&uid);
                }
            }
            Op::ExpireAfterEventsArrive => {
                // A TTL is far longer than watch latency: every pending event arrives first.
                let all: Vec<(String, Value)> = api
                    .lock()
                    .unwrap()
                    .pods
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                for (uid, value) in all {
                    state.apply_pod(&as_pod(&value));
                    delivered.insert(uid);
                }
                state.expire_reservations(Instant::now() + 2 * ttl, ttl);
                prop_assert_eq!(state.reserved_pods(), 0);
                prop_assert_eq!(
                    ledger(&state),
                    api_bound(&api.lock().unwrap()),
                    "after events and expiry the ledger is the API's truth"
                );
            }
            Op::Restart => {
                // What a bind committed (the API server has it) must survive; reservations of binds
                // that never happened may not.
                let committed = api_bound(&api.lock().unwrap());
                let before: BTreeSet<_> = ledger(&state)
                    .into_iter()
                    .filter(|e| committed.contains(e))
                    .collect();
                state = fresh_state(&api, binder.clone());
                let after = ledger(&state);
                prop_assert_eq!(
                    &after,
                    &api_bound(&api.lock().unwrap()),
                    "a restart rebuilds exactly what the API server bound"
                );
                for entry in &before {
                    prop_assert!(after.contains(entry), "restart lost {entry:?}");
                }
                delivered = api.lock().unwrap().pods.keys().cloned().collect();
            }
        }
        check_no_overcommit(&state, &api.lock().unwrap())?;
        // Nothing committed is lost: every bound pod whose event arrived is in the ledger, where the API says.
        let api_now = api_bound(&api.lock().unwrap());
        let ledger_now = ledger(&state);
        for entry in api_now.iter().filter(|(id, _, _)| delivered.contains(id)) {
            prop_assert!(ledger_now.contains(entry), "ledger lost {entry:?}");
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn ledger_matches_the_api_server_through_binds_events_and_restarts(ops in proptest::collection::vec(op(), 1..80)) {
        run(ops)?;
    }
}
