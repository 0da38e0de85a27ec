//! Tail latency of filter + prioritize (NodeNames mode) for one pod over every node of synthetic
//! clusters: in the core alone, and through the HTTP stack on loopback. Prints p50/p99/max.
//!
//! `cargo bench --bench latency` (set `LATENCY_ITERATIONS` to change the sample count).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use vramfit::core::{filter, pod_demand, prioritize, Catalog, Config};
use vramfit::extender::http::{router, App, ServerConfig};
use vramfit::extender::metrics::Metrics;
use vramfit::extender::state::ExtenderState;

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

async fn http_latency(nodes: usize, iterations: usize) -> String {
    let state = ExtenderState::new(
        Config::default(),
        Catalog::default(),
        Box::new(vramfit::extender::binder::RecordOnly),
    );
    {
        let cluster = common::cluster(nodes, 7);
        let mut inventory = state.write();
        *inventory = cluster;
    }
    state.set_ready(true);
    let app = App {
        cluster: Arc::new(state),
        metrics: Arc::new(Metrics::default()),
    };
    let server = ServerConfig {
        path_prefix: "/scheduler".into(),
        ..ServerConfig::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move { axum::serve(listener, router(app, &server)).await });
    let client = reqwest::Client::new();
    let filter_url = format!("http://{addr}/scheduler/filter");
    let prioritize_url = format!("http://{addr}/scheduler/prioritize");
    let filter_body = common::extender_args(nodes).to_string();
    // Filter does not change state, so the survivors are the same every time: build the
    // prioritize body once, outside the timed loop, as kube-scheduler would between the calls.
    let reply: Value = client
        .post(&filter_url)
        .header("content-type", "application/json")
        .body(filter_body.clone())
        .send()
        .await
        .expect("filter")
        .json()
        .await
        .expect("filter reply");
    let mut args = common::extender_args(0);
    args["NodeNames"] = reply["NodeNames"].clone();
    let prioritize_body = args.to_string();
    let mut samples = Vec::with_capacity(iterations);
    for i in 0..iterations + iterations / 10 {
        let (f, p) = (filter_body.clone(), prioritize_body.clone());
        let started = Instant::now();
        for (url, body) in [(&filter_url, f), (&prioritize_url, p)] {
            let response = client
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .expect("request");
            assert!(response.status().is_success());
            std::hint::black_box(response.bytes().await.expect("reply body"));
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
        let http = runtime.block_on(http_latency(nodes, iterations.min(200)));
        println!("http  filter+prioritize {nodes:>6} nodes x 8 devices: {http}");
    }
}
