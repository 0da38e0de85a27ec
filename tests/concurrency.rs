//! Many binds at once, to the same and to different nodes: nothing is over-committed, and every
//! device that can be given is given exactly once.

use std::sync::Arc;

use serde_json::json;
use vramfit::core::{Catalog, Config};
use vramfit::extender::binder::{BindTarget, RecordOnly};
use vramfit::extender::state::ExtenderState;
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
