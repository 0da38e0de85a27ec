//! Filter throughput with concurrent clients: the extender serves a synthetic cluster on
//! loopback (the production runtime: one worker thread per core) while `C` client threads, each
//! on its own keep-alive connection, send the same filter request (NodeNames mode, every node)
//! back to back. Prints requests per second and the CPU the server's workers and the clients
//! used, in cores (from /proc: the clients run on the same machine and take their share).
//!
//! `cargo bench --bench throughput` (`THROUGHPUT_NODES`, `THROUGHPUT_SECONDS` to change).

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// CPU seconds used so far by this process's threads: (the server's, the clients').
fn cpu_seconds() -> (f64, f64) {
    let ticks = 100.0; // USER_HZ on Linux
    let (mut server, mut clients) = (0.0, 0.0);
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return (0.0, 0.0);
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ... utime stime: fields 14 and 15, counted after the ')'.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let used = fields
            .get(11..13)
            .map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum::<f64>())
            .unwrap_or(0.0)
            / ticks;
        if head.contains("bench-client") {
            clients += used;
        } else {
            server += used;
        }
    }
    (server, clients)
}

fn run(nodes: usize, clients: usize, seconds: f64) -> String {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let addr = common::serve(&runtime, common::cluster(nodes, 7));
    let request = Arc::new(common::RawClient::request(
        "/scheduler/filter",
        &common::extender_args(nodes).to_string(),
    ));
    let counting = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (request, counting, stop, done) = (
                request.clone(),
                counting.clone(),
                stop.clone(),
                done.clone(),
            );
            std::thread::Builder::new()
                .name("bench-client".into())
                .spawn(move || {
                    let mut client = common::RawClient::connect(addr);
                    while !stop.load(Ordering::Relaxed) {
                        let (status, body) = client.send(&request);
                        assert_eq!(status, 200);
                        std::hint::black_box(body);
                        if counting.load(Ordering::Relaxed) {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
                .expect("client thread")
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500)); // warm-up
    let (workers_before, others_before) = cpu_seconds();
    let started = Instant::now();
    counting.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs_f64(seconds));
    counting.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let (workers_after, others_after) = cpu_seconds();
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().expect("client thread");
    }
    let requests = done.load(Ordering::Relaxed);
    format!(
        "{:>7.0} filter requests/s  (n={requests} in {elapsed:.1} s; server {:.2} cores, clients {:.2} cores)",
        requests as f64 / elapsed,
        (workers_after - workers_before) / elapsed,
        (others_after - others_before) / elapsed,
    )
}

fn main() {
    // `cargo test --benches` runs benches without `--bench`: keep that to a moment.
    let quick = !std::env::args().any(|a| a == "--bench");
    let nodes: usize = std::env::var("THROUGHPUT_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000);
    let seconds: f64 = std::env::var("THROUGHPUT_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 0.2 } else { 5.0 });
    let counts: &[usize] = if quick { &[2] } else { &[1, 2, 4, 16, 64] };
    for &clients in counts {
        println!(
            "filter {nodes:>6} nodes x 8 devices, {clients:>2} clients: {}",
            run(nodes, clients, seconds)
        );
    }
}
