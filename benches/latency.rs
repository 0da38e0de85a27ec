//! Tail latency of filter + prioritize (NodeNames mode) for one pod over every node of synthetic
//! clusters: in the core alone, and through the HTTP stack on loopback. Prints p50/p99/max.
//!
//! `cargo bench --bench latency` (set `LATENCY_ITERATIONS` to change the sample count).

mod common;

use std::time::{Duration, Instant};

use serde_json::Value;
use vramfit::core::{filter, pod_demand, prioritize, Catalog, Config};

fn percentiles(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let at =
        |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1];
    format!(
        "p50 {:>8.3} ms  p99 {:>8.3} ms  max {:>8.3} ms  (n={})",
        at(0.50).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        samples[samples.len() - 1].as_secs_f64() * 1e3,
        samples.len()
    )
}

fn core_latency(nodes: usize, iterations: usize) -> String {
    let config = Config::default();
    let inventory = common::cluster(nodes, 7);
    let demand = pod_demand(&common::pod(), &config, &Catalog::default());
    let names: Vec<String> = (0..nodes).map(common::node_name).collect();
    let mut samples = Vec::with_capacity(iterations);
    for i in 0..iterations + iterations / 10 {
        let started = Instant::now();
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
        std::hint::black_box((outcome, scores));
        if i >= iterations / 10 {
            samples.push(started.elapsed());
        }
    }
    percentiles(samples)
}

/// Filter then prioritize through the HTTP stack on loopback, with a lean client
/// ([`common::RawClient`]) on one keep-alive connection, as kube-scheduler keeps one.
fn http_latency(runtime: &tokio::runtime::Runtime, nodes: usize, iterations: usize) -> String {
    let addr = common::serve(runtime, common::cluster(nodes, 7));
    let mut client = common::RawClient::connect(addr);
    let filter = common::RawClient::request(
        "/scheduler/filter",
        &common::extender_args(nodes).to_string(),
    );
    // Filter does not change state, so the survivors are the same every time: build the
    // prioritize body once, outside the timed loop, as kube-scheduler would between the calls.
    let (status, reply) = client.send(&filter);
    assert_eq!(status, 200);
    let reply: Value = serde_json::from_slice(reply).expect("filter reply");
    let mut args = common::extender_args(0);
    args["NodeNames"] = reply["NodeNames"].clone();
    let prioritize = common::RawClient::request("/scheduler/prioritize", &args.to_string());
    let mut samples = Vec::with_capacity(iterations);
    for i in 0..iterations + iterations / 10 {
        let started = Instant::now();
        for request in [&filter, &prioritize] {
            let (status, body) = client.send(request);
            assert_eq!(status, 200);
            std::hint::black_box(body);
        }
        if i >= iterations / 10 {
            samples.push(started.elapsed());
        }
    }
    percentiles(samples)
}

fn main() {
    // `cargo test --benches` runs benches with `--bench` absent; keep that quick.
    let quick = !std::env::args().any(|a| a == "--bench");
    let iterations: usize = std::env::var("LATENCY_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 3 } else { 500 });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for nodes in [500usize, 5_000, 15_000] {
        println!(
            "core  filter+prioritize {nodes:>6} nodes x 8 devices: {}",
            core_latency(nodes, iterations)
        );
        let http = http_latency(&runtime, nodes, iterations);
        println!("http  filter+prioritize {nodes:>6} nodes x 8 devices: {http}");
    }
}
