//! Criterion: filter + prioritize of one pod over every node (NodeNames mode), on synthetic
//! clusters of 500, 5,000 and 15,000 nodes × 8 devices.

mod common;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use std::hint::black_box;
use vramfit::core::{filter, pod_demand, prioritize, Catalog, Config};

fn filter_and_prioritize(c: &mut Criterion) {
    let config = Config::default();
    let demand = pod_demand(&common::pod(), &config, &Catalog::default());
    let mut group = c.benchmark_group("core_filter_prioritize");
    for nodes in [500usize, 5_000, 15_000] {
        let inventory = common::cluster(nodes, 7);
        let names: Vec<String> = (0..nodes).map(common::node_name).collect();
        group.bench_with_input(BenchmarkId::from_parameter(nodes), &nodes, |b, _| {
            b.iter(|| {
                let outcome = filter(
                    names.iter().map(|n| (n.as_str(), inventory.node(n))),
                    &demand,
                );
                let scores = prioritize(
                    outcome.feasible.iter().map(|n| (*n, inventory.node(n))),
                    &demand,
                    &inventory,
                    &config,
                );
                black_box((outcome, scores))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, filter_and_prioritize);
criterion_main!(benches);
