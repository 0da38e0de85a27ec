//! A model-based property test of the core's ledger, without tokio or the server: random
//! interleavings of binds (succeeding, refused, timing out before or after the API server bound
//! the pod) driven through `reserve` → binder → `confirm` / `release` / `mark_ambiguous`, pod
//! watch events (created, bound, finished, deleted) through `observe_pod` / `remove`,
//! reservation expiry with time passed in, and restarts (`rebuild` from the API server's list),
//! checked against a reference API server. Invariants: no device is ever over-committed (in the
//! ledger, and in what the API server ends up binding), nothing a bind committed is lost, and the
//! ledger after a restart equals the ledger before it; once every event has arrived (and after a
//! restart) each node's free cpu/memory is its allocatable minus the bound pods' requests.
//!
//! CI runs 1024 cases; set `LEDGER_MODEL_CASES` for a long run (10,000 pass:
//! `LEDGER_MODEL_CASES=10000 cargo test --release --test ledger_model`).
//!
//! A second property checks that filter and bind agree by construction: for accelerator-free,
//! sharing, whole-device and multi-device pods on every kind of node, `reserve` succeeds exactly
//! where `filter` passes, on the devices the verdict chose.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime};

use proptest::prelude::*;
use serde_json::{json, Value};
use vramfit::core::host::Host;
use vramfit::core::schedule::verdict;
use vramfit::core::{
    build_node, filter, pod_demand, Catalog, Config, Demand, Inventory, NodeInfo, Observed,
    Placement, PodFacts, Reason, RelocateError, ReserveError, Stage,
};
use vramfit::extender::binder::binding_annotations;
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
            let allocatable = json!({"nvidia.com/gpu": count.to_string(), "cpu": "64", "memory": "256Gi"});
            serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}, "status": {"allocatable": allocatable}})).unwrap()
        })
        .collect()
}

fn node_infos() -> Vec<NodeInfo> {
    nodes()
        .iter()
        .map(|n| build_node(&n.facts(), &Config::default(), SystemTime::UNIX_EPOCH))
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
    Create {
        pod: u8,
        gpus: u8,
        vram_gib: u8,
    },
    Bind {
        pod: u8,
        node: u8,
        outcome: Outcome,
    },
    /// kube-scheduler retrying the last bind (same pod, same node), answered `outcome`.
    Retry {
        outcome: Outcome,
    },
    Deliver {
        pod: u8,
    },
    Finish {
        pod: u8,
    },
    Delete {
        pod: u8,
    },
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
        // Retries are where ambiguity bites: after a timeout, a refusal is as likely as not.
        3 => prop_oneof![
            Just(Outcome::Bound),
            Just(Outcome::Refused),
            Just(Outcome::TimeoutButBound),
            Just(Outcome::TimeoutNotBound),
        ]
        .prop_map(|outcome| Op::Retry { outcome }),
        3 => (0u8..5, 0u8..3, 0u8..16).prop_map(|(pod, gpus, vram_gib)| Op::Create { pod, gpus, vram_gib }),
        5 => (0u8..5, 0u8..3, outcome).prop_map(|(pod, node, outcome)| Op::Bind { pod, node, outcome }),
        3 => (0u8..5).prop_map(|pod| Op::Deliver { pod }),
        1 => (0u8..5).prop_map(|pod| Op::Finish { pod }),
        1 => (0u8..5).prop_map(|pod| Op::Delete { pod }),
        1 => Just(Op::ExpireAfterEventsArrive),
        1 => Just(Op::Restart),
    ]
}

/// The reference API server: pods by UID as JSON objects.
#[derive(Default)]
struct ApiServer {
    pods: BTreeMap<String, Value>,
}

/// Why the scripted binder failed: `definite` like a 4xx, otherwise ambiguous like a timeout.
struct BindFailure {
    definite: bool,
}

/// The binder against the reference API server, scripted to answer `outcome`.
fn scripted_bind(
    api: &mut ApiServer,
    uid: &str,
    node: &str,
    placement: &Placement,
    outcome: Outcome,
) -> Result<(), BindFailure> {
    let bindable = api
        .pods
        .get(uid)
        .is_some_and(|p| p["spec"]["nodeName"].is_null());
    if matches!(outcome, Outcome::Bound | Outcome::TimeoutButBound) && bindable {
        let pod = api.pods.get_mut(uid).unwrap();
        pod["spec"]["nodeName"] = json!(node);
        for (k, v) in binding_annotations(placement, None) {
            pod["metadata"]["annotations"][k] = json!(v);
        }
    }
    // Like the real binder: "already assigned to the same node" (409) counts as success.
    let same_node = api
        .pods
        .get(uid)
        .is_some_and(|p| p["spec"]["nodeName"] == json!(node));
    match outcome {
        Outcome::Bound if bindable || same_node => Ok(()),
        Outcome::Bound | Outcome::Refused => Err(BindFailure { definite: true }),
        Outcome::TimeoutButBound | Outcome::TimeoutNotBound => Err(BindFailure { definite: false }),
    }
}

/// The extender as far as the core goes: the ledger plus the demands of pending pods.
struct Extender {
    inventory: Inventory,
    demands: HashMap<String, Demand>,
}

impl Extender {
    /// The pod watch delivered `value`.
    fn observe(&mut self, value: &Value) {
        let facts = as_facts(value);
        let id = facts.ledger_id();
        match self
            .inventory
            .observe_pod(&facts, &Config::default(), &Catalog::default())
        {
            Observed::Pending(demand) => {
                self.demands.insert(id, demand);
            }
            _ => {
                self.demands.remove(&id);
            }
        }
    }

    /// A bind: reserve with the core's verdict, call the binder, settle with its answer.
    /// Returns whether the bind reported success.
    fn bind(
        &mut self,
        api: &mut ApiServer,
        uid: &str,
        node: &str,
        outcome: Outcome,
        now: Instant,
    ) -> bool {
        let Some(demand) = self.demands.get(uid) else {
            // Demand dropped once seen bound: a repeat to where it is bound still succeeds.
            return self
                .inventory
                .placement(uid)
                .is_some_and(|p| p.node == node);
        };
        let Ok(reservation) = self.inventory.reserve(demand, node, now) else {
            return false;
        };
        if !reservation.needs_binding {
            return true;
        }
        match scripted_bind(api, uid, node, &reservation.placement, outcome) {
            Ok(()) => {
                self.inventory.confirm(&reservation.id, now);
                true
            }
            Err(BindFailure { definite: true }) => {
                self.inventory.release(&reservation.id);
                false
            }
            Err(BindFailure { definite: false }) => {
                self.inventory.mark_ambiguous(&reservation.id);
                false
            }
        }
    }
}

fn pod(uid: &str, gpus: u8, vram_gib: u8) -> Value {
    let mut limits = json!({});
    if gpus > 0 {
        limits["nvidia.com/gpu"] = json!(gpus.to_string());
    }
    // No device and no VRAM: an accelerator-free pod, which holds nothing.
    let mut annotations = json!({});
    if vram_gib > 0 {
        annotations["vramfit.io/vram"] = json!(format!("{vram_gib}Gi"));
    }
    json!({
        "metadata": {"name": uid, "namespace": "ml", "uid": uid, "annotations": annotations},
        "spec": {"containers": [{"name": "c", "resources": {"limits": limits, "requests": {"cpu": "1", "memory": "1Gi"}}}], "nodeName": null},
        "status": {"phase": "Pending"}
    })
}

fn as_facts(value: &Value) -> PodFacts {
    serde_json::from_value::<Pod>(value.clone())
        .unwrap()
        .facts()
}

/// A (re)started extender: the ledger rebuilt from the API server's full list.
fn restart(api: &ApiServer) -> Extender {
    let pods: Vec<PodFacts> = api.pods.values().map(as_facts).collect();
    let (inventory, observed) =
        Inventory::rebuild(node_infos(), &pods, &Config::default(), &Catalog::default());
    let demands = pods
        .iter()
        .zip(observed)
        .filter_map(|(pod, observed)| match observed {
            Observed::Pending(demand) => Some((pod.ledger_id(), demand)),
            _ => None,
        })
        .collect();
    Extender { inventory, demands }
}

/// (pod, node, devices) of every placement in the ledger.
fn ledger(inventory: &Inventory) -> BTreeSet<(String, String, Vec<u32>)> {
    inventory
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

/// (pod, node, devices) of every bound, unfinished pod at the API server that holds devices
/// (an accelerator-free pod holds none, and the ledger records nothing for it).
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
        .filter(|(_, _, devices): &(String, String, Vec<u32>)| !devices.is_empty())
        .collect()
}

/// Every node's free cpu/memory is its allocatable (64 cpu, 256 GiB) minus one cpu and 1 GiB per
/// bound, unfinished pod the API server has there, accelerator-free pods included.
fn check_host(inventory: &Inventory, api: &ApiServer) -> Result<(), TestCaseError> {
    for (node, ..) in NODES {
        let pods = api
            .pods
            .values()
            .filter(|p| p["spec"]["nodeName"] == node && p["status"]["phase"] != "Succeeded")
            .count() as u64;
        let expected = Host {
            cpu_milli: 64_000 - 1_000 * pods,
            memory_mib: 256 * 1024 - 1024 * pods,
        };
        prop_assert_eq!(inventory.free_host(node), Some(expected), "{}", node);
    }
    Ok(())
}

fn check_no_overcommit(inventory: &Inventory, api: &ApiServer) -> Result<(), TestCaseError> {
    for node in inventory.nodes() {
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
    let mut api = ApiServer::default();
    let mut extender = restart(&api);
    let mut delivered: HashSet<String> = HashSet::new();
    let mut last_bind: Option<(String, &str)> = None;
    let ttl = Duration::from_secs(60);
    let mut now = Instant::now();
    for op in ops {
        now += Duration::from_secs(1);
        match op {
            Op::Create {
                pod: i,
                gpus,
                vram_gib,
            } => {
                let uid = format!("pod-{i}");
                if api.pods.contains_key(&uid) {
                    continue;
                }
                let value = pod(&uid, gpus, vram_gib);
                api.pods.insert(uid.clone(), value.clone());
                extender.observe(&value);
            }
            Op::Bind {
                pod: i,
                node,
                outcome,
            } => {
                let uid = format!("pod-{i}");
                if !api.pods.contains_key(&uid) {
                    continue;
                }
                let node = NODES[node as usize].0;
                last_bind = Some((uid.clone(), node));
                let ok = extender.bind(&mut api, &uid, node, outcome, now);
                if matches!(outcome, Outcome::Bound) && ok {
                    // A successful bind is in the ledger at once, before any watch event
                    // (unless the pod holds no device).
                    let placement = extender.inventory.placement(&uid);
                    let accelerator_free = api.pods[&uid]["spec"]["containers"][0]["resources"]
                        ["limits"]
                        .as_object()
                        .is_some_and(|l| l.is_empty())
                        && api.pods[&uid]["metadata"]["annotations"]["vramfit.io/vram"].is_null();
                    prop_assert!(
                        accelerator_free || placement.is_some_and(|p| p.node == node),
                        "bound pod missing from the ledger"
                    );
                }
                delivered.remove(&uid);
            }
            Op::Retry { outcome } => {
                let Some((uid, node)) = last_bind.clone() else {
                    continue;
                };
                if !api.pods.contains_key(&uid) {
                    continue;
                }
                extender.bind(&mut api, &uid, node, outcome, now);
                delivered.remove(&uid);
            }
            Op::Deliver { pod: i } => {
                let uid = format!("pod-{i}");
                if let Some(value) = api.pods.get(&uid).cloned() {
                    extender.observe(&value);
                    delivered.insert(uid);
                }
            }
            Op::Finish { pod: i } => {
                let uid = format!("pod-{i}");
                let value = api.pods.get_mut(&uid).map(|p| {
                    p["status"]["phase"] = json!("Succeeded");
                    p.clone()
                });
                if let Some(value) = value {
                    extender.observe(&value);
                    delivered.insert(uid);
                }
            }
            Op::Delete { pod: i } => {
                let uid = format!("pod-{i}");
                if api.pods.remove(&uid).is_some() {
                    extender.inventory.remove(&uid);
                    extender.demands.remove(&uid);
                    delivered.remove(&uid);
                }
            }
            Op::ExpireAfterEventsArrive => {
                // A TTL is far longer than watch latency: every pending event arrives first.
                let all: Vec<(String, Value)> = api
                    .pods
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                for (uid, value) in all {
                    extender.observe(&value);
                    delivered.insert(uid);
                }
                now += 2 * ttl;
                extender.inventory.expire(now, ttl);
                prop_assert_eq!(extender.inventory.reserved(), 0);
                prop_assert_eq!(
                    ledger(&extender.inventory),
                    api_bound(&api),
                    "after events and expiry the ledger is the API's truth"
                );
                check_host(&extender.inventory, &api)?;
            }
            Op::Restart => {
                // What a bind committed (the API server has it) must survive; reservations of binds
                // that never happened may not.
                let committed = api_bound(&api);
                let before: BTreeSet<_> = ledger(&extender.inventory)
                    .into_iter()
                    .filter(|e| committed.contains(e))
                    .collect();
                extender = restart(&api);
                let after = ledger(&extender.inventory);
                prop_assert_eq!(
                    &after,
                    &api_bound(&api),
                    "a restart rebuilds exactly what the API server bound"
                );
                for entry in &before {
                    prop_assert!(after.contains(entry), "restart lost {entry:?}");
                }
                check_host(&extender.inventory, &api)?;
                delivered = api.pods.keys().cloned().collect();
            }
        }
        check_no_overcommit(&extender.inventory, &api)?;
        // Nothing committed is lost: every bound pod whose event arrived is in the ledger, where the API says.
        let ledger_now = ledger(&extender.inventory);
        for entry in api_bound(&api)
            .iter()
            .filter(|(id, _, _)| delivered.contains(id))
        {
            prop_assert!(ledger_now.contains(entry), "ledger lost {entry:?}");
        }
    }
    Ok(())
}

/// Cases per property: 1024 in CI, `LEDGER_MODEL_CASES` for a long run.
fn cases() -> u32 {
    std::env::var("LEDGER_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn ledger_matches_the_api_server_through_binds_events_and_restarts(ops in proptest::collection::vec(op(), 1..80)) {
        run(ops)?;
    }

    #[test]
    fn filter_and_reserve_agree_on_every_pod_kind_and_node(
        earlier in proptest::collection::vec((0usize..4, 0usize..4, 1u8..40), 0..12),
        kind in 0usize..4,
        vram_gib in 1u8..40,
        node in 0usize..4,
    ) {
        let mut inventory = agreement_inventory();
        let now = Instant::now();
        // Occupy the nodes with earlier pods, each placed where filter and reserve allow.
        for (i, (kind, node, vram_gib)) in earlier.into_iter().enumerate() {
            let demand = kind_demand(&format!("early-{i}"), kind, vram_gib);
            let _ = inventory.reserve(&demand, AGREEMENT_NODES[node], now);
        }
        let demand = kind_demand("pod", kind, vram_gib);
        check_agreement(&inventory, &demand, AGREEMENT_NODES[node], now)?;
    }
}

/// Nodes of every kind: no accelerators, one whole GPU, shared GPUs, and four whole GPUs.
const AGREEMENT_NODES: [&str; 4] = ["cpu", "one-gpu", "shared-gpus", "four-gpus"];

fn agreement_inventory() -> Inventory {
    let node = |name: &str, gpus: u32, sharing: bool| -> NodeInfo {
        let mut labels = json!({"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB", "nvidia.com/gpu.memory": "81920"});
        if sharing {
            labels["vramfit.io/sharing"] = json!("vram");
        }
        let mut allocatable = json!({"cpu": "64", "memory": "256Gi"});
        if gpus > 0 {
            allocatable["nvidia.com/gpu"] = json!(gpus.to_string());
        } else {
            labels = json!({});
        }
        let node: Node = serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}, "status": {"allocatable": allocatable}})).unwrap();
        build_node(&node.facts(), &Config::default(), SystemTime::UNIX_EPOCH)
    };
    let mut inventory = Inventory::new();
    inventory.upsert_node(node("cpu", 0, false));
    inventory.upsert_node(node("one-gpu", 1, false));
    inventory.upsert_node(node("shared-gpus", 2, true));
    inventory.upsert_node(node("four-gpus", 4, false));
    inventory
}

/// A pod of kind 0 = accelerator-free, 1 = sharing (VRAM only), 2 = one whole device,
/// 3 = two whole devices.
fn kind_demand(uid: &str, kind: usize, vram_gib: u8) -> Demand {
    let (gpus, vram) = match kind {
        0 => (0, false),
        1 => (0, true),
        2 => (1, vram_gib.is_multiple_of(2)),
        _ => (2, vram_gib.is_multiple_of(2)),
    };
    let mut limits = json!({"cpu": "1"});
    if gpus > 0 {
        limits["nvidia.com/gpu"] = json!(gpus.to_string());
    }
    let mut annotations = json!({});
    if vram {
        annotations["vramfit.io/vram"] = json!(format!("{vram_gib}Gi"));
    }
    let value = json!({
        "metadata": {"name": uid, "namespace": "ml", "uid": uid, "annotations": annotations},
        "spec": {"containers": [{"name": "c", "resources": {"limits": limits}}]},
    });
    pod_demand(&as_facts(&value), &Config::default(), &Catalog::default())
}

/// `reserve` succeeds exactly where `filter` passes, with the same reason otherwise, on the
/// devices the verdict chose, and holds nothing for an accelerator-free pod.
fn check_agreement(
    inventory: &Inventory,
    demand: &Demand,
    node: &str,
    now: Instant,
) -> Result<(), TestCaseError> {
    let outcome = filter([(node, inventory.node(node))], demand, inventory);
    let mut after = inventory.clone();
    let reserved = after.reserve(demand, node, now);
    match (&reserved, outcome.feasible.is_empty()) {
        (Ok(reservation), false) => {
            let pod = demand.as_ref().unwrap();
            prop_assert!(reservation.needs_binding);
            if pod.is_accelerator_free() {
                prop_assert!(reservation.placement.shares.is_empty());
                prop_assert_eq!(after.stage(&pod.id), None);
            } else {
                prop_assert_eq!(
                    after.stage(&pod.id),
                    Some(Stage::Assumed {
                        since: now,
                        ambiguous: false
                    })
                );
                prop_assert_eq!(Some(&reservation.placement), after.placement(&pod.id));
                let fit = verdict(inventory.node(node), demand).unwrap();
                prop_assert_eq!(&reservation.placement.shares, &fit.shares());
            }
        }
        (Err(ReserveError::NoFit(reason)), true) => {
            prop_assert_eq!(outcome.messages.len(), 1);
            prop_assert_eq!(&outcome.messages[0], &reason.to_string());
            prop_assert_eq!(after.placements().count(), inventory.placements().count());
        }
        (reserved, filtered_out) => {
            return Err(TestCaseError::fail(format!(
                "filter {} but reserve gave {reserved:?} ({:?})",
                if filtered_out { "rejects" } else { "passes" },
                outcome.messages
            )))
        }
    }
    Ok(())
}

#[test]
fn filter_and_bind_agree_for_the_four_pod_kinds() {
    let inventory = agreement_inventory();
    let now = Instant::now();
    // (kind, nodes it fits when all are empty)
    let expected: [(usize, &[&str]); 4] = [
        (0, &["cpu", "one-gpu", "shared-gpus", "four-gpus"]),
        (1, &["shared-gpus"]),
        (2, &["one-gpu", "shared-gpus", "four-gpus"]),
        (3, &["shared-gpus", "four-gpus"]),
    ];
    for (kind, fits) in expected {
        let demand = kind_demand("pod", kind, 10);
        for node in AGREEMENT_NODES {
            check_agreement(&inventory, &demand, node, now)
                .unwrap_or_else(|e| panic!("kind {kind} on {node}: {e}"));
            let mut after = inventory.clone();
            assert_eq!(
                after.reserve(&demand, node, now).is_ok(),
                fits.contains(&node),
                "kind {kind} on {node}"
            );
        }
    }
    // The accelerator-free pod is not refused on the CPU node and holds no device anywhere.
    let mut after = inventory.clone();
    let free = kind_demand("free", 0, 1);
    for node in AGREEMENT_NODES {
        let reservation = after.reserve(&free, node, now).unwrap();
        assert!(reservation.placement.shares.is_empty());
    }
    assert_eq!(after.placements().count(), 0);
    // A whole-device pod on the one-GPU node leaves the next one a reason, the same in both.
    let first = kind_demand("first", 2, 10);
    after.reserve(&first, "one-gpu", now).unwrap();
    let second = kind_demand("second", 2, 10);
    assert_eq!(
        after.reserve(&second, "one-gpu", now),
        Err(ReserveError::NoFit(Reason::Insufficient {
            need: 1,
            need_mib: 10 * 1024,
            free: 0
        }))
    );
    check_agreement(&after, &second, "one-gpu", now).unwrap();
}

#[test]
fn an_ambiguous_bind_keeps_its_devices_through_a_later_refusal() {
    use Outcome::*;
    let ops = vec![
        Op::Create {
            pod: 1,
            gpus: 2,
            vram_gib: 0,
        },
        Op::Bind {
            pod: 1,
            node: 0,
            outcome: TimeoutButBound,
        },
        Op::Bind {
            pod: 1,
            node: 0,
            outcome: Refused,
        },
        Op::Create {
            pod: 2,
            gpus: 1,
            vram_gib: 0,
        },
        Op::Bind {
            pod: 2,
            node: 0,
            outcome: Bound,
        },
    ];
    run(ops).unwrap();
}

#[test]
fn relocate_moves_a_whole_device_pod_to_the_devices_it_really_got() {
    let mut inventory = agreement_inventory();
    let now = Instant::now();
    let pod = kind_demand("moved", 2, 10);
    let reservation = inventory.reserve(&pod, "four-gpus", now).unwrap();
    let chosen = reservation.placement.shares[0].index;
    let real = (chosen + 2) % 4;
    let moved = inventory.relocate("moved", &[real]).unwrap().clone();
    assert_eq!(moved.shares.len(), 1);
    assert_eq!(moved.shares[0].index, real);
    assert_eq!(moved.shares[0].vram_mib, 10 * 1024);
    // The stage is kept, and occupancy follows: the real device is held, the chosen one free.
    assert_eq!(
        inventory.stage("moved"),
        Some(Stage::Assumed {
            since: now,
            ambiguous: false
        })
    );
    let node = inventory.node("four-gpus").unwrap();
    let holders = |index: u32| {
        node.devices
            .iter()
            .find(|d| d.index == index)
            .unwrap()
            .exclusive_holders
    };
    assert_eq!((holders(real), holders(chosen)), (1, 0));
    assert_eq!(
        inventory.relocate("ghost", &[0]),
        Err(RelocateError::UnknownPod("ghost".into()))
    );
    assert_eq!(
        inventory.relocate("moved", &[]),
        Err(RelocateError::NoDevices("moved".into()))
    );
}

#[test]
fn expiry_counts_from_the_time_passed_in() {
    let mut inventory = agreement_inventory();
    let start = Instant::now();
    let ttl = Duration::from_secs(60);
    inventory
        .reserve(&kind_demand("assumed", 2, 10), "four-gpus", start)
        .unwrap();
    inventory
        .reserve(&kind_demand("confirmed", 2, 10), "four-gpus", start)
        .unwrap();
    // The binder succeeded 50 s later: its TTL counts from then.
    assert!(inventory.confirm("confirmed", start + Duration::from_secs(50)));
    assert_eq!(inventory.expire(start + ttl, ttl), Vec::<String>::new());
    assert_eq!(
        inventory.expire(start + ttl + Duration::from_secs(1), ttl),
        vec!["assumed".to_string()]
    );
    assert_eq!(inventory.reserved(), 1);
    assert_eq!(
        inventory.expire(start + Duration::from_secs(111), ttl),
        vec!["confirmed".to_string()]
    );
    assert_eq!(inventory.placements().count(), 0);
}

#[test]
fn host_resources_follow_reservations_binds_and_pod_events() {
    let mut inventory = agreement_inventory();
    let full = Host {
        cpu_milli: 64_000,
        memory_mib: 256 * 1024,
    };
    let less = |by: u64| Host {
        cpu_milli: 64_000 - 2_000 * by,
        memory_mib: 256 * 1024 - 4_096 * by,
    };
    assert_eq!(inventory.free_host("four-gpus"), Some(full));
    let with_requests = |uid: &str, gpus: u8, vram_gib: u8| {
        let mut value = pod(uid, gpus, vram_gib);
        value["spec"]["containers"][0]["resources"]["requests"] =
            json!({"cpu": "2", "memory": "4Gi"});
        value
    };
    let demand =
        |value: &Value| pod_demand(&as_facts(value), &Config::default(), &Catalog::default());
    let config = Config::default();
    let catalog = Catalog::default();
    let now = Instant::now();

    // Reserved at bind: counted; a definite refusal gives it back.
    let whole = with_requests("whole", 1, 10);
    inventory
        .reserve(&demand(&whole), "four-gpus", now)
        .unwrap();
    assert_eq!(inventory.free_host("four-gpus"), Some(less(1)));
    inventory.release("whole");
    assert_eq!(inventory.free_host("four-gpus"), Some(full));

    // Reserved, confirmed, then seen bound: counted once; finished: given back.
    inventory
        .reserve(&demand(&whole), "four-gpus", now)
        .unwrap();
    assert!(inventory.confirm("whole", now));
    let mut bound = whole.clone();
    bound["spec"]["nodeName"] = json!("four-gpus");
    bound["status"]["phase"] = json!("Running");
    inventory.observe_pod(&as_facts(&bound), &config, &catalog);
    inventory.observe_pod(&as_facts(&bound), &config, &catalog);
    assert_eq!(inventory.free_host("four-gpus"), Some(less(1)));
    bound["status"]["phase"] = json!("Succeeded");
    inventory.observe_pod(&as_facts(&bound), &config, &catalog);
    assert_eq!(inventory.free_host("four-gpus"), Some(full));

    // An accelerator-free pod holds no device but uses cpu: counted while bound, given back
    // when deleted.
    let mut plain = with_requests("plain", 0, 0);
    plain["spec"]["nodeName"] = json!("four-gpus");
    plain["status"]["phase"] = json!("Running");
    inventory.observe_pod(&as_facts(&plain), &config, &catalog);
    assert_eq!(inventory.free_host("four-gpus"), Some(less(1)));
    assert_eq!(inventory.placement("plain"), None);
    inventory.remove("plain");
    assert_eq!(inventory.free_host("four-gpus"), Some(full));

    // A reservation that expires gives its cpu back; a relist keeps one still in flight and
    // drops the bound pods it no longer has, accelerator-free ones included.
    inventory
        .reserve(&demand(&whole), "four-gpus", now)
        .unwrap();
    inventory.expire(now + Duration::from_secs(61), Duration::from_secs(60));
    assert_eq!(inventory.free_host("four-gpus"), Some(full));
    inventory
        .reserve(&demand(&whole), "four-gpus", now)
        .unwrap();
    inventory.observe_pod(&as_facts(&plain), &config, &catalog);
    assert_eq!(inventory.free_host("four-gpus"), Some(less(2)));
    inventory.retain_pods(|_| false);
    assert_eq!(inventory.free_host("four-gpus"), Some(less(1)));
    assert_eq!(
        inventory.stage("whole").map(|s| s != Stage::Bound),
        Some(true)
    );

    // A bound pod's unreadable quantity counts as 0; the readable one still counts.
    let mut odd = with_requests("odd", 0, 0);
    odd["spec"]["containers"][0]["resources"]["requests"]["cpu"] = json!("lots");
    odd["spec"]["nodeName"] = json!("one-gpu");
    odd["status"]["phase"] = json!("Running");
    inventory.observe_pod(&as_facts(&odd), &config, &catalog);
    assert_eq!(
        inventory.free_host("one-gpu"),
        Some(Host {
            cpu_milli: 64_000,
            memory_mib: 256 * 1024 - 4_096,
        })
    );
    inventory.remove("odd");

    // Moved to another node (a new node name in a later event): counted there only.
    plain["spec"]["nodeName"] = json!("one-gpu");
    inventory.observe_pod(&as_facts(&plain), &config, &catalog);
    plain["spec"]["nodeName"] = json!("shared-gpus");
    inventory.observe_pod(&as_facts(&plain), &config, &catalog);
    assert_eq!(inventory.free_host("one-gpu"), Some(full));
    assert_eq!(inventory.free_host("shared-gpus"), Some(less(1)));
}
