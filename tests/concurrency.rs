//! The extender state under concurrent use: many binds at once, to the same and to different
//! nodes (nothing is over-committed, every device that can be given is given exactly once), and
//! the demand cache that filter handlers fill at once (bounded, emptied by the pod watch).

use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use serde_json::{json, Value};
use vramfit::core::{pod_demand, Catalog, Config, Placement};
use vramfit::extender::binder::{BindFailure, BindTarget, Binder, CostWriteError, RecordOnly};
use vramfit::extender::state::{ExtenderState, DEMAND_CACHE_CHECK_EVERY, DEMAND_CACHE_SIZE};
use vramfit::kubernetes::objects::{Node, Pod};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_binds_never_overcommit() {
    let state = Arc::new(ExtenderState::new(
        Config::default(),
        Catalog::default(),
        Box::new(RecordOnly),
    ));
    // 20 nodes × 8 A100s = 160 devices; 400 single-device pods race for them, half of them all
    // aiming at node 0.
    for i in 0..20 {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": format!("n{i}"), "labels": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB", "nvidia.com/gpu.memory": "81920"}},
            "status": {"allocatable": {"nvidia.com/gpu": "8"}}
        }))
        .unwrap();
        state.apply_node(&node, std::time::SystemTime::now());
    }
    for p in 0..400 {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": format!("p{p}"), "namespace": "ml", "uid": format!("u{p}"), "annotations": {"vramfit.io/vram": "30Gi"}},
            "spec": {"containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": "1"}}}]},
            "status": {"phase": "Pending"}
        }))
        .unwrap();
        state.apply_pod(&pod);
    }
    let mut tasks = Vec::new();
    for p in 0..400 {
        let state = state.clone();
        tasks.push(tokio::spawn(async move {
            let node = if p % 2 == 0 { 0 } else { 1 + (p / 2) % 19 };
            let target = BindTarget {
                namespace: "ml".into(),
                name: format!("p{p}"),
                uid: format!("u{p}"),
                node: format!("n{node}"),
            };
            (node, state.bind(&target).await.is_ok())
        }));
    }
    let mut bound_per_node = [0u32; 20];
    for task in tasks {
        let (node, ok) = task.await.unwrap();
        if ok {
            bound_per_node[node] += 1;
        }
    }
    let inventory = state.read();
    for node in inventory.nodes() {
        for d in &node.devices {
            assert!(
                d.exclusive_holders <= 1,
                "{} #{} held {} times",
                node.name,
                d.index,
                d.exclusive_holders
            );
        }
    }
    // Node 0 had 200 contenders and 8 devices; the others 10 or 11 each and 8 devices.
    assert_eq!(bound_per_node[0], 8);
    for (node, bound) in bound_per_node.iter().enumerate().skip(1) {
        assert_eq!(*bound, 8, "node {node}");
    }
    assert_eq!(inventory.placements().count(), 160);
}

fn pending_pod(uid: &str, limits: Value, annotations: Value) -> Value {
    json!({
        "metadata": {"name": uid, "namespace": "ml", "uid": uid, "annotations": annotations},
        "spec": {"containers": [{"name": "c", "resources": {"limits": limits}}]},
        "status": {"phase": "Pending"}
    })
}

#[test]
fn the_demand_cache_stays_bounded_under_concurrent_filters() {
    let state = Arc::new(ExtenderState::new(
        Config::default(),
        Catalog::default(),
        Box::new(RecordOnly),
    ));
    let facts = serde_json::from_value::<Pod>(pending_pod("p", json!({}), json!({})))
        .unwrap()
        .facts();
    let demand = pod_demand(&facts, &state.config, &state.catalog);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let state = state.clone();
            let demand = demand.clone();
            std::thread::spawn(move || {
                for i in 0..10_000 {
                    state.remember(&format!("uid-{t}-{i}"), demand.clone());
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let remembered = state.remembered_pods();
    assert!(
        remembered <= DEMAND_CACHE_SIZE + DEMAND_CACHE_CHECK_EVERY as usize * 4,
        "{remembered} demands remembered"
    );
    // The newest are kept: the last pod each thread remembered can still be bound.
    assert!(remembered >= DEMAND_CACHE_SIZE / 2);
}

/// Records what the binder was asked.
#[derive(Clone, Default)]
struct Recording(Arc<Mutex<Vec<Placement>>>);

impl Binder for Recording {
    fn bind<'a>(
        &'a self,
        _: &'a BindTarget,
        placement: &'a Placement,
        _: Option<i64>,
    ) -> BoxFuture<'a, Result<(), BindFailure>> {
        self.0.lock().unwrap().push(placement.clone());
        Box::pin(async { Ok(()) })
    }

    fn set_deletion_cost<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
        _: i64,
    ) -> BoxFuture<'a, Result<(), CostWriteError>> {
        // No refresher runs in these tests (no watch, no `spawn_live`).
        Box::pin(async { Err(CostWriteError::Failed("not recorded".into())) })
    }
}

#[tokio::test]
async fn the_pod_watch_drops_demands_and_bind_still_answers_a_repeat() {
    let recording = Recording::default();
    let state = ExtenderState::new(
        Config::default(),
        Catalog::default(),
        Box::new(recording.clone()),
    );
    let gpu: Node = serde_json::from_value(json!({
        "metadata": {"name": "gpu", "labels": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB", "nvidia.com/gpu.memory": "81920"}},
        "status": {"allocatable": {"nvidia.com/gpu": "1"}}
    }))
    .unwrap();
    let cpu: Node = serde_json::from_value(json!({
        "metadata": {"name": "cpu"}, "status": {"allocatable": {"cpu": "8"}}
    }))
    .unwrap();
    state.apply_node(&gpu, std::time::SystemTime::now());
    state.apply_node(&cpu, std::time::SystemTime::now());

    let mut whole = pending_pod("whole", json!({"nvidia.com/gpu": "1"}), json!({}));
    let plain = pending_pod("plain", json!({"cpu": "1"}), json!({}));
    state.apply_pod(&serde_json::from_value(whole.clone()).unwrap());
    state.apply_pod(&serde_json::from_value(plain.clone()).unwrap());
    assert_eq!(state.remembered_pods(), 2);

    let target = |name: &str, node: &str| BindTarget {
        namespace: "ml".into(),
        name: name.into(),
        uid: name.into(),
        node: node.into(),
    };
    // An accelerator-free pod binds on a CPU node (filter passes it there too) and holds nothing.
    let placement = state.bind(&target("plain", "cpu")).await.unwrap();
    assert!(placement.shares.is_empty());
    assert!(state.read().placement("plain").is_none());

    let placement = state.bind(&target("whole", "gpu")).await.unwrap();
    assert_eq!(placement.shares.len(), 1);
    assert_eq!(state.reserved_pods(), 1);
    assert_eq!(recording.0.lock().unwrap().len(), 2);

    // The watch sees the pod bound: the reservation is settled and the demand dropped.
    whole["spec"]["nodeName"] = json!("gpu");
    whole["metadata"]["annotations"]["vramfit.io/assigned-devices"] = json!("0");
    state.apply_pod(&serde_json::from_value(whole.clone()).unwrap());
    assert_eq!(state.reserved_pods(), 0);
    assert_eq!(state.remembered_pods(), 1);

    // kube-scheduler retrying the bind still gets the placement, without a second Binding.
    assert_eq!(
        state.bind(&target("whole", "gpu")).await.unwrap(),
        placement
    );
    assert_eq!(recording.0.lock().unwrap().len(), 2);

    // The pod is deleted: its devices and any demand are gone.
    state.delete_pod(&serde_json::from_value(whole).unwrap());
    state.delete_pod(&serde_json::from_value(plain).unwrap());
    assert!(state.read().placement("whole").is_none());
    assert_eq!(state.remembered_pods(), 0);
}
