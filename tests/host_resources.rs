//! cpu and memory next to the GPUs, in `serve` (watch events) and `place` (a snapshot): every
//! bound pod's requests count on its node, accelerator-free pods included, so the `frag` and
//! `hostBalance` terms see which GPUs still have the cpu to run something.
//!
//! The scenario: two identical sharing nodes, `rich` and `starved` (one A100 80 GB, 128 cpu), and
//! a `seed` node where five 10 GiB, 4-cpu replicas run (the workload vramfit learns). A cpu hog
//! (127 cpu, no GPU) runs on `starved`, so its GPU cannot feed the usual 4-cpu pod any more. A
//! cpu-light 40 GiB pod (100m) should use that GPU, keeping `rich` for the pods that need cpu.
//! Without the hog both nodes are alike and the name that sorts first (`rich`) wins. (A pod
//! much smaller than the device moves the exact score by less than one step of the 0–10 wire.)

mod common;

use std::sync::Arc;
use std::time::SystemTime;

use serde_json::{json, Value};

use common::objects::{node_json, pod_json, NodeJson, PodJson};
use common::router::{call, extender, get};
use common::{scratch, succeeded};
use vramfit::core::{Catalog, Config};
use vramfit::extender::binder::RecordOnly;
use vramfit::extender::state::ExtenderState;

fn gpu_node(name: &str) -> NodeJson {
    node_json(name, 1)
        .label("vramfit.io/sharing", "vram")
        .host("128", "1Ti")
}

fn seed_replicas() -> Vec<PodJson> {
    (0..5)
        .map(|i| {
            pod_json(&format!("seed-{i}"))
                .vram("10Gi")
                .requests("4", "16Gi")
                .bound("seed")
        })
        .collect()
}

fn hog() -> PodJson {
    pod_json("hog").requests("127", "8Gi").bound("starved")
}

/// The cpu-light pod asked about.
fn light() -> PodJson {
    pod_json("light")
        .vram("40Gi")
        .requests("100m", "1Gi")
        .scheduler("vramfit-binpack")
}

fn scores(reply: &Value) -> Vec<(String, u64)> {
    let list = reply.as_array().expect("a HostPriorityList");
    list.iter()
        .map(|p| {
            (
                p["Host"].as_str().unwrap().to_string(),
                p["Score"].as_u64().unwrap(),
            )
        })
        .collect()
}

async fn prioritize(app: &axum::Router) -> Vec<(String, u64)> {
    let request = json!({"Pod": light().build(), "Nodes": null, "NodeNames": ["rich", "starved"]});
    scores(&call(app, "/scheduler/prioritize", request).await)
}

#[tokio::test]
async fn serve_counts_every_bound_pods_cpu_and_fills_the_gpus_left_without_cpu() {
    let state = Arc::new(ExtenderState::new(
        Config::default(),
        Catalog::default(),
        Box::new(RecordOnly),
    ));
    for name in ["rich", "starved", "seed"] {
        state.apply_node(&gpu_node(name).typed(), SystemTime::now());
    }
    for pod in seed_replicas() {
        state.apply_pod(&pod.typed());
    }
    state.set_ready(true);
    let app = extender(state.clone());

    // The workload model learned the replicas' cpu and memory from the watch.
    let (_, body) = get(&app, "/debug/workload").await;
    let workload: Value = serde_json::from_str(&body).unwrap();
    assert!(
        workload["live"].as_array().unwrap().iter().any(|s| {
            s["vramMib"] == json!(10240)
                && s["cpuMilli"] == json!(4000)
                && s["memoryMib"] == json!(16384)
        }),
        "{workload:#}"
    );

    // Alike: a tie, and kube-scheduler's own order decides.
    let alike = prioritize(&app).await;
    assert_eq!(alike[0].1, alike[1].1, "{alike:?}");

    // The hog (no GPU) takes starved's cpu: its GPUs are what the light pod should use.
    state.apply_pod(&hog().typed());
    let with_hog = prioritize(&app).await;
    assert_eq!(with_hog[0].0, "rich");
    assert!(with_hog[1].1 > with_hog[0].1, "starved wins: {with_hog:?}");
    // Operators see the same free cpu and memory in the metrics.
    let (_, metrics) = get(&app, "/metrics").await;
    for line in [
        "vramfit_node_free_cpu_millicores{node=\"starved\"} 1000",
        "vramfit_node_free_memory_mib{node=\"starved\"} 1040384",
        "vramfit_node_free_cpu_millicores{node=\"seed\"} 108000",
        "vramfit_node_free_cpu_millicores{node=\"rich\"} 128000",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }

    // The hog finishes: its cpu is free again and the nodes are alike once more.
    let mut finished = hog().build();
    finished["status"]["phase"] = json!("Succeeded");
    state.apply_pod(&serde_json::from_value(finished).unwrap());
    assert_eq!(prioritize(&app).await, alike);

    // Running again, then deleted: the same.
    state.apply_pod(&hog().typed());
    assert_eq!(prioritize(&app).await, with_hog);
    state.delete_pod(&hog().typed());
    assert_eq!(prioritize(&app).await, alike);

    // Gone while the watch was down: a relist that lacks it releases its cpu too.
    state.apply_pod(&hog().typed());
    let seen = seed_replicas()
        .into_iter()
        .map(|p| p.typed().facts().ledger_id())
        .collect();
    state.retain_pods(&seen);
    assert_eq!(prioritize(&app).await, alike);
}

fn place_light(with_hog: bool) -> Value {
    let mut items: Vec<Value> = ["rich", "starved", "seed"]
        .into_iter()
        .map(|n| gpu_node(n).build())
        .collect();
    items.extend(seed_replicas().into_iter().map(PodJson::build));
    if with_hog {
        items.push(hog().build());
    }
    let snapshot = json!({"apiVersion": "v1", "kind": "List", "items": items});
    let tag = if with_hog { "hog" } else { "alike" };
    let cluster = scratch(&format!("host-{tag}.json"), &snapshot.to_string());
    let pods = scratch(
        &format!("host-pods-{tag}.json"),
        &light().build().to_string(),
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vramfit"))
        .args(["place", "--snapshot"])
        .arg(&cluster)
        .arg("--pods")
        .arg(&pods)
        .args(["--output", "json"])
        .output()
        .unwrap();
    serde_json::from_str(&succeeded(&out)).unwrap()
}

#[test]
fn place_predicts_the_same() {
    let node = |report: &Value| report["pods"][0]["node"].as_str().map(String::from);
    assert_eq!(node(&place_light(false)).as_deref(), Some("rich"));
    assert_eq!(node(&place_light(true)).as_deref(), Some("starved"));
}
