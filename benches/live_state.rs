//! Live-state figures: resident memory for 5,000 nodes and 100,000 bound pods fed through the
//! same event handlers the watchers call, and bind throughput with many binds in parallel.
//!
//! `cargo bench --bench live_state`

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use serde_json::json;
use vramfit::core::{Catalog, Config};
use vramfit::extender::binder::{BindTarget, RecordOnly};
use vramfit::extender::state::ExtenderState;
use vramfit::kubernetes::objects::{Node, Pod};

fn rss_mib() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0.0);
    pages * 4096.0 / (1024.0 * 1024.0)
}

fn node(i: usize) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": format!("gpu-node-{i:05}"), "labels": {
            "topology.kubernetes.io/zone": format!("zone-{}", i % 3), "kubernetes.io/hostname": format!("gpu-node-{i:05}"),
            "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB", "nvidia.com/gpu.memory": "81920", "nvidia.com/gpu.count": "8"}},
        "status": {"allocatable": {"cpu": "96", "memory": "1000Gi", "pods": "110", "nvidia.com/gpu": "8"}}
    }))
    .unwrap()
}

fn pod(i: usize, node: Option<String>) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": format!("model-{}-{i}", i % 50), "namespace": "ml", "uid": format!("6f1c2a8e-3b7d-4c1e-9a51-{i:012}"),
            "labels": {"vramfit.io/model": format!("model-{}", i % 50), "app.kubernetes.io/name": format!("model-{}", i % 50)},
            "annotations": {"vramfit.io/vram": "8Gi", "vramfit.io/assigned-devices": (i % 8).to_string()}},
        "spec": {"nodeName": node, "schedulerName": "vramfit-binpack",
            "containers": [{"name": "server", "resources": {"requests": {"cpu": "1", "memory": "4Gi"}, "limits": {"nvidia.com/gpu": "1"}}}]},
        "status": {"phase": "Running"}
    }))
    .unwrap()
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return; // `cargo test --benches` only checks that this builds
    }
    let before = rss_mib();
    let state = Arc::new(ExtenderState::new(
        Config::default(),
        Catalog::default(),
        Box::new(RecordOnly),
    ));
    let started = Instant::now();
    for i in 0..5_000 {
        state.apply_node(&node(i), SystemTime::now());
    }
    // 100,000 pods, 20 per node (more than its 8 devices: real clusters hold CPU pods and
    // overlapping shares too; the ledger records reality and never refuses it).
    for i in 0..100_000 {
        state.apply_pod(&pod(i, Some(format!("gpu-node-{:05}", i % 5_000))));
    }
    let load = started.elapsed();
    let after = rss_mib();
    println!(
        "live state: 5000 nodes x 8 devices + 100000 bound pods: RSS {:.1} MiB (process {:.1} -> {:.1} MiB), fed in {:.2} s",
        after - before,
        before,
        after,
        load.as_secs_f64()
    );

    // Bind throughput: 8 binds per node on 2,000 empty nodes, 16,000 binds, all at once.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let fresh = Arc::new(ExtenderState::new(
        Config::default(),
        Catalog::default(),
        Box::new(RecordOnly),
    ));
    for i in 0..2_000 {
        fresh.apply_node(&node(i), SystemTime::now());
    }
    for i in 0..16_000 {
        fresh.apply_pod(&pod(i, None));
    }
    let started = Instant::now();
    let ok = runtime.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..16_000usize {
            let state = fresh.clone();
            tasks.push(tokio::spawn(async move {
                let target = BindTarget {
                    namespace: "ml".into(),
                    name: format!("model-{}-{i}", i % 50),
                    uid: format!("6f1c2a8e-3b7d-4c1e-9a51-{i:012}"),
                    node: format!("gpu-node-{:05}", i % 2_000),
                };
                state.bind(&target).await.is_ok()
            }));
        }
        let mut ok = 0;
        for task in tasks {
            ok += usize::from(task.await.unwrap_or(false));
        }
        ok
    });
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "binds: {ok}/16000 succeeded in {elapsed:.3} s = {:.0} binds/s (in-process binder, {} worker threads)",
        16_000.0 / elapsed,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
}
