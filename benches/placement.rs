//! Criterion: filter + prioritize of one pod over every node (NodeNames mode), on synthetic
//! clusters of 500, 5,000 and 15,000 nodes × 8 devices, in two cases:
//!
//! * `replica`: the next replica of a model whose shape was asked about before, with one node
//!   changed since (what a bind does) — the common case;
//! * `new_shape`: a pod whose shape was never asked about (the memo cannot help).

mod common;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use vramfit::core::{pod_demand, Catalog, Config};

fn filter_and_prioritize(c: &mut Criterion) {
    let config = Config::default();
    let demand = pod_demand(&common::pod(), &config, &Catalog::default());
    let mut group = c.benchmark_group("core_filter_prioritize");
    group.sample_size(20);
    for nodes in [500usize, 5_000, 15_000] {
        let mut inventory = common::cluster(nodes, 7);
        let names: Vec<String> = (0..nodes).map(common::node_name).collect();
        let mut round = 0;
        group.bench_with_input(BenchmarkId::new("replica", nodes), &nodes, |b, _| {
            b.iter(|| {
                round += 1;
                common::touch(&mut inventory, &names, round);
                common::filter_then_prioritize(&inventory, &names, &demand, &config)
            })
        });
        let mut vram = 20_480;
        group.bench_with_input(BenchmarkId::new("new_shape", nodes), &nodes, |b, _| {
            b.iter(|| {
                vram += 1;
                let demand = pod_demand(&common::pod_of(vram), &config, &Catalog::default());
                common::filter_then_prioritize(&inventory, &names, &demand, &config)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, filter_and_prioritize);
criterion_main!(benches);
