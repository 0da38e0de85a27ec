//! Synthetic clusters for the benchmarks: `nodes` nodes × 8 devices of four classes, about 60 %
//! of devices held by bound pods of a dozen models, deterministic for a seed.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::SystemTime;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use vramfit::core::{
    build_node, pod_demand, record_bound, Catalog, Config, ContainerResources, Inventory,
    NodeFacts, PodFacts,
};

const CLASSES: [(&str, u64); 4] = [
    ("NVIDIA-A100-SXM4-80GB", 81920),
    ("NVIDIA-A100-SXM4-40GB", 40960),
    ("NVIDIA-L4", 23034),
    ("Tesla-T4", 15360),
];

fn map(pairs: &[(&str, String)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

pub fn node_name(i: usize) -> String {
    format!("gpu-node-{i:05}")
}

/// The inventory of a synthetic cluster.
pub fn cluster(nodes: usize, seed: u64) -> Inventory {
    let config = Config::default();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut inventory = Inventory::new();
    let now = SystemTime::now();
    for i in 0..nodes {
        let (product, memory) = CLASSES[i % CLASSES.len()];
        let facts = NodeFacts {
            name: node_name(i),
            labels: map(&[
                ("topology.kubernetes.io/zone", format!("zone-{}", i % 3)),
                ("nvidia.com/gpu.product", product.to_string()),
                ("nvidia.com/gpu.memory", memory.to_string()),
                ("nvidia.com/gpu.count", "8".into()),
            ]),
            annotations: BTreeMap::new(),
            allocatable: map(&[("nvidia.com/gpu", "8".into())]),
            unschedulable: false,
        };
        inventory.upsert_node(build_node(&facts, &config, now));
        let held = rng
            .random_range(0..=8u32)
            .min(if rng.random_bool(0.6) { 8 } else { 3 });
        for d in 0..held {
            let mut resources = ContainerResources::default();
            resources.limits.insert("nvidia.com/gpu".into(), "1".into());
            let vram_gib = rng.random_range(2..=(memory / 1024 * 8 / 10));
            let pod = PodFacts {
                namespace: "ml".into(),
                name: format!("bound-{i}-{d}"),
                uid: format!("uid-{i}-{d}"),
                labels: map(&[(
                    "vramfit.io/model",
                    format!("model-{}", rng.random_range(0..12)),
                )]),
                annotations: map(&[("vramfit.io/vram", format!("{vram_gib}Gi"))]),
                containers: vec![resources],
                node_name: Some(node_name(i)),
                ..PodFacts::default()
            };
            let demand =
                pod_demand(&pod, &config, &Catalog::default()).expect("valid synthetic pod");
            record_bound(&mut inventory, &demand, &node_name(i), None);
        }
    }
    inventory
}

/// The pod scheduled in every benchmark: one device, 20 GiB, a model with replicas around.
pub fn pod() -> PodFacts {
    let mut resources = ContainerResources::default();
    resources.limits.insert("nvidia.com/gpu".into(), "1".into());
    PodFacts {
        namespace: "ml".into(),
        name: "bench".into(),
        uid: "bench-uid".into(),
        labels: map(&[("vramfit.io/model", "model-3".into())]),
        annotations: map(&[("vramfit.io/vram", "20Gi".into())]),
        scheduler_name: Some("vramfit-binpack".into()),
        containers: vec![resources],
        ..PodFacts::default()
    }
}

/// [`pod`] asking for `vram_mib` instead: a shape the memo has not seen yet.
pub fn pod_of(vram_mib: u64) -> PodFacts {
    let mut pod = pod();
    pod.annotations
        .insert("vramfit.io/vram".into(), format!("{vram_mib}Mi"));
    pod
}

/// One pod's filter over `names`, then prioritize over the survivors, in the core.
pub fn filter_then_prioritize(
    inventory: &Inventory,
    names: &[String],
    demand: &vramfit::core::Demand,
    config: &Config,
) -> usize {
    let outcome = vramfit::core::filter(inventory.nodes_named(names), demand, inventory);
    let scores = vramfit::core::prioritize(
        inventory.nodes_named(&outcome.feasible),
        demand,
        inventory,
        config,
    );
    std::hint::black_box(&outcome);
    scores.len()
}

/// What a bind does to the state between two pods: one node changes (here: re-recorded as it
/// is, which renews it as a real change would).
pub fn touch(inventory: &mut Inventory, names: &[String], round: usize) {
    let name = &names[round * 7919 % names.len()];
    if let Some(node) = inventory.node(name).cloned() {
        inventory.upsert_node(node);
    }
}

/// The same pod as an `ExtenderArgs` body in NodeNames mode.
pub fn extender_args(nodes: usize) -> Value {
    let names: Vec<String> = (0..nodes).map(node_name).collect();
    json!({
        "Pod": {
            "metadata": {"name": "bench", "namespace": "ml", "uid": "bench-uid",
                         "labels": {"vramfit.io/model": "model-3"},
                         "annotations": {"vramfit.io/vram": "20Gi"}},
            "spec": {"schedulerName": "vramfit-binpack",
                     "containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": "1"}}}]},
            "status": {}
        },
        "Nodes": null,
        "NodeNames": names
    })
}

/// A minimal blocking HTTP/1.1 client on one keep-alive connection: it writes a prepared request
/// and reads the reply by its Content-Length, so the client's own cost stays small beside the
/// server's (kube-scheduler's Go client runs in another process).
pub struct RawClient {
    stream: std::net::TcpStream,
    buffer: Vec<u8>,
}

impl RawClient {
    /// Connects to `addr` (TCP_NODELAY, as Go's client sets it).
    pub fn connect(addr: std::net::SocketAddr) -> Self {
        let stream = std::net::TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        RawClient {
            stream,
            buffer: vec![0; 1 << 20],
        }
    }

    /// The bytes of a POST of `body` to `path`, with kube-scheduler's headers.
    pub fn request(path: &str, body: &str) -> Vec<u8> {
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: Go-http-client/1.1\r\n\
             Content-Length: {}\r\nContent-Type: application/json\r\nAccept-Encoding: gzip\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body.as_bytes());
        request
    }

    /// Reads what the server sent next into the buffer after its first `filled` bytes,
    /// growing the buffer when less than 64 KiB is left.
    fn read_more(&mut self, filled: &mut usize) {
        use std::io::Read;
        if self.buffer.len() - *filled < 64 * 1024 {
            self.buffer.resize(self.buffer.len() * 2, 0);
        }
        let n = self.stream.read(&mut self.buffer[*filled..]).expect("read");
        assert!(n > 0, "the server closed the connection");
        *filled += n;
    }

    /// Sends a prepared request; the status and the reply body. Replies are read straight
    /// into the connection's buffer (no second copy).
    pub fn send(&mut self, request: &[u8]) -> (u16, &[u8]) {
        use std::io::Write;
        self.stream.write_all(request).expect("write");
        let mut filled = 0;
        let (head_end, length) = loop {
            self.read_more(&mut filled);
            if let Some(at) = self.buffer[..filled]
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
            {
                let head = std::str::from_utf8(&self.buffer[..at]).expect("ASCII head");
                let length = head
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse::<usize>().ok())?
                    })
                    .expect("a Content-Length");
                break (at + 4, length);
            }
        };
        while filled < head_end + length {
            self.read_more(&mut filled);
        }
        let status = std::str::from_utf8(&self.buffer[9..12])
            .ok()
            .and_then(|s| s.parse().ok())
            .expect("a status line");
        (status, &self.buffer[head_end..head_end + length])
    }
}

/// Serves the extender over `inventory` on a loopback port of `runtime`; its address.
pub fn serve(runtime: &tokio::runtime::Runtime, inventory: Inventory) -> std::net::SocketAddr {
    use std::sync::Arc;
    use vramfit::extender::http::{router, App, ServerConfig};
    use vramfit::extender::metrics::Metrics;
    use vramfit::extender::state::ExtenderState;
    let state = ExtenderState::new(
        Config::default(),
        Catalog::default(),
        Box::new(vramfit::extender::binder::RecordOnly),
    );
    *state.write() = inventory;
    state.set_ready(true);
    let app = App {
        cluster: Arc::new(state),
        metrics: Arc::new(Metrics::default()),
    };
    let server = ServerConfig {
        path_prefix: "/scheduler".into(),
        ..ServerConfig::default()
    };
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    runtime.spawn(async move { axum::serve(listener, router(app, &server)).await });
    addr
}
