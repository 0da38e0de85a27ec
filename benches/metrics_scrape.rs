//! A `/metrics` scrape at 5,000 nodes × 8 A100s with 20,000 whole-device pods: the part done
//! under the state's read lock (copying what the gauges need) and the part done on a blocking
//! thread without it (building and encoding the gauges).
//!
//! `cargo bench --bench metrics_scrape`

use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::json;
use std::time::SystemTime;
use vramfit::core::{Catalog, Config};
use vramfit::extender::metrics::{Metrics, ScrapeInput};
use vramfit::extender::state::ExtenderState;
use vramfit::kubernetes::snapshot::Objects;

const NODES: usize = 5_000;
const PODS: usize = 20_000;

fn state() -> ExtenderState {
    let mut objects = Objects::default();
    for i in 0..NODES {
        objects.nodes.push(
            serde_json::from_value(json!({
                "metadata": {"name": format!("gpu-node-{i:05}"), "labels": {
                    "topology.kubernetes.io/zone": format!("zone-{}", i % 3),
                    "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB", "nvidia.com/gpu.memory": "81920"}},
                "status": {"allocatable": {"nvidia.com/gpu": "8"}}
            }))
            .unwrap(),
        );
    }
    for i in 0..PODS {
        objects.pods.push(
            serde_json::from_value(json!({
                "metadata": {"name": format!("p-{i}"), "namespace": "ml", "uid": format!("u-{i}"),
                    "annotations": {"vramfit.io/vram": "8Gi", "vramfit.io/assigned-devices": (i / NODES).to_string()}},
                "spec": {"nodeName": format!("gpu-node-{:05}", i % NODES),
                    "containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": "1"}}}]},
                "status": {"phase": "Running"}
            }))
            .unwrap(),
        );
    }
    ExtenderState::from_snapshot(
        &objects,
        Config::default(),
        Catalog::default(),
        SystemTime::now(),
    )
}

fn scrape(c: &mut Criterion) {
    let state = state();
    let metrics = Metrics::default();
    let mut group = c.benchmark_group("metrics_scrape_5000x8");
    group.sample_size(20);
    group.bench_function("copy_under_read_lock", |b| {
        b.iter(|| ScrapeInput::of(&state))
    });
    let input = ScrapeInput::of(&state);
    group.bench_function("build_and_encode_off_lock", |b| {
        b.iter(|| metrics.render(input.clone(), 15).len())
    });
    group.finish();
}

criterion_group!(benches, scrape);
criterion_main!(benches);
