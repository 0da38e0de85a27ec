//! Tail latency of filter + prioritize (NodeNames mode) for one pod over every node of synthetic
//! clusters: in the core alone, and through the HTTP stack on loopback. Prints p50/p99/max.
//!
//! `cargo bench --bench latency` (set `LATENCY_ITERATIONS` to change the sample count).

mod common;

use std::time::{Duration, Instant};

use serde_json::Value;
use vramfit::core::{pod_demand, Catalog, Config};

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

/// Which pods the core is timed with.
#[derive(Clone, Copy)]
enum Case {
    /// The next replica of a shape asked about before, one node changed since (a bind).
    Replica,
    /// A shape never asked about before: every node is judged afresh.
    NewShape,
}

fn core_latency(nodes: usize, iterations: usize, case: Case) -> String {
    let config = Config::default();
    let mut inventory = common::cluster(nodes, 7);
    let names: Vec<String> = (0..nodes).map(common::node_name).collect();
    let total = iterations + iterations / 10;
    let demands: Vec<_> = (0..total)
        .map(|i| {
            let pod = match case {
                Case::Replica => common::pod(),
                Case::NewShape => common::pod_of(20_480 + 1 + i as u64),
            };
            pod_demand(&pod, &config, &Catalog::default())
        })
        .collect();
    let mut samples = Vec::with_capacity(iterations);
    for (i, demand) in demands.iter().enumerate() {
        // Between two pods a bind changes one node; outside the timed part.
        common::touch(&mut inventory, &names, i);
        let started = Instant::now();
        std::hint::black_box(common::filter_then_prioritize(
            &inventory, &names, demand, &config,
        ));
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
    // `LATENCY_NODES=5000` and `LATENCY_CASES=replica,new-shape,http` narrow the run.
    let sizes: Vec<usize> = std::env::var("LATENCY_NODES")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![500, 5_000, 15_000]);
    let cases = std::env::var("LATENCY_CASES").unwrap_or_else(|_| "replica,new-shape,http".into());
    let wanted = |case: &str| cases.split(',').any(|c| c.trim() == case);
    for nodes in sizes {
        if wanted("replica") {
            println!(
                "core  replica    {nodes:>6} nodes x 8 devices: {}",
                core_latency(nodes, iterations, Case::Replica)
            );
        }
        if wanted("new-shape") {
            println!(
                "core  new shape  {nodes:>6} nodes x 8 devices: {}",
                core_latency(nodes, iterations, Case::NewShape)
            );
        }
        if wanted("http") {
            let http = http_latency(&runtime, nodes, iterations);
            println!("http  replica    {nodes:>6} nodes x 8 devices: {http}");
        }
    }
}
