//! Live mode against a fake API server on loopback: initial lists, watch events (added,
//! modified, deleted), a watch that breaks, bind through a Binding that carries the assignment,
//! a 409 for another node, an API server that never answers a binding, and readiness.

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{json, Value};

use common::api::FakeApi;
use common::eventually;
use common::objects::{node_json, pod_json};
use common::router::{call, extender, get};
use vramfit::core::{Catalog, Config};
use vramfit::extender::state::ExtenderState;

fn node(name: &str, gpus: u32) -> Value {
    node_json(name, gpus).build()
}

/// A pod of the live tests: one device of 40 GiB, scheduled by vramfit.
fn pod(name: &str) -> common::objects::PodJson {
    pod_json(name)
        .gpus(1)
        .vram("40Gi")
        .scheduler("vramfit-binpack")
}

/// Filter for pod `name` of the live tests over `nodes` (this is where vramfit learns the pod).
async fn filter(app: &axum::Router, name: &str, nodes: &[&str]) -> Value {
    call(
        app,
        "/scheduler/filter",
        json!({"Pod": pod(name).build(), "Nodes": null, "NodeNames": nodes}),
    )
    .await
}

/// Bind pod `ml/name` (UID `uid-name`) to `node`.
async fn bind(app: &axum::Router, name: &str, node: &str) -> Value {
    call(
        app,
        "/scheduler/bind",
        json!({"PodName": name, "PodNamespace": "ml", "PodUID": format!("uid-{name}"), "Node": node}),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_mode_lists_watches_binds_and_recovers() {
    // "old" was bound before the extender started, on device 1 by its assignment annotation.
    let api = FakeApi::builder()
        .nodes([node("gpu-a", 2), node("gpu-b", 1)])
        .pods([
            pod("old").bound("gpu-a").assigned("1").build(),
            pod("new").build(),
            pod("other").build(),
            pod("slow").build(),
        ])
        .failing_pod_watches(1)
        .start();
    let client = api.client();
    let binder =
        vramfit::extender::binder::KubeBinder::new(client.clone(), Duration::from_millis(300));
    let state = Arc::new(ExtenderState::new(
        Config::default(),
        Catalog::default(),
        Box::new(binder),
    ));
    let app = extender(state.clone());
    assert_eq!(
        get(&app, "/readyz").await.0,
        StatusCode::SERVICE_UNAVAILABLE,
        "not ready before the lists"
    );
    vramfit::extender::watch::spawn_live(client, state.clone(), Duration::from_secs(120), None);
    eventually("ready after both lists (the first pod watch broke)", || {
        state.is_ready()
    })
    .await;
    assert_eq!(get(&app, "/readyz").await.0, StatusCode::OK);
    eventually("the broken pod watch is counted", || {
        state
            .health
            .errors(vramfit::extender::state::WatchedResource::Pods)
            >= 1
    })
    .await;
    {
        let inventory = state.read();
        let placement = inventory
            .placement("uid-old")
            .expect("restart recovery: the bound pod holds its device");
        assert_eq!(
            (placement.node.as_str(), placement.shares[0].index),
            ("gpu-a", 1)
        );
    }

    // A new pod: filter (learns the pod), bind (Binding with the assignment), watch confirms.
    let filtered = filter(&app, "new", &["gpu-a", "gpu-b"]).await;
    assert_eq!(filtered["NodeNames"], json!(["gpu-a", "gpu-b"]));
    let reply = bind(&app, "new", "gpu-a").await;
    assert_eq!(reply, json!({"Error": ""}));
    let sent = api.bindings().last().cloned().unwrap();
    assert_eq!(
        sent["metadata"]["annotations"]["vramfit.io/assigned-devices"], "0",
        "device 1 is taken by the old pod"
    );
    assert_eq!(
        sent["metadata"]["annotations"]["vramfit.io/vram"],
        "40960Mi"
    );
    // The ReplicaSet controller's scale-down order (core::deletion): a pod of no model, on a
    // device of the smallest size that holds it, costs 0.
    assert_eq!(
        sent["metadata"]["annotations"]["controller.kubernetes.io/pod-deletion-cost"],
        "0"
    );
    assert_eq!(sent["metadata"]["uid"], "uid-new");
    assert_eq!(
        sent["target"],
        json!({"apiVersion": "v1", "kind": "Node", "name": "gpu-a"})
    );
    eventually("the watch confirms the bind", || state.reserved_pods() == 0).await;

    // gpu-a is full now: a bind there is refused with a reason and nothing is reserved.
    filter(&app, "other", &["gpu-a", "gpu-b"]).await;
    let reply = bind(&app, "other", "gpu-a").await;
    assert_eq!(
        reply["Error"],
        "vramfit: no longer fits gpu-a: vramfit: needs 1 device with 40Gi free; 0 such here",
    );
    assert!(state.read().placement("uid-other").is_none());

    // An API server that never answers the binding: the bind returns on its own timeout (the
    // binding is held until the server stops, so no other answer can come), and the
    // reservation is kept (the binding may still happen) rather than handed to another pod.
    api.hang_bindings_of("slow");
    filter(&app, "slow", &["gpu-b"]).await;
    let reply = bind(&app, "slow", "gpu-b").await;
    assert_eq!(
        reply["Error"],
        "vramfit: binding failed: the API server did not answer within 300ms",
    );
    let kept = state
        .read()
        .placement("uid-slow")
        .map(|p| (p.node.to_string(), p.shares[0].index));
    assert_eq!(
        kept,
        Some(("gpu-b".to_string(), 0)),
        "ambiguous: kept until the watch or the TTL settles it"
    );

    // 409 "already assigned to the same node" is success: bind "new" again after the watch confirmed it.
    let reply = bind(&app, "new", "gpu-a").await;
    assert_eq!(reply, json!({"Error": ""}));

    // The old pod is deleted: its device is free again.
    api.delete_pod("old");
    eventually("the delete releases the device", || {
        state.read().placement("uid-old").is_none()
    })
    .await;
    // A node is removed and another added.
    api.delete_node("gpu-b");
    api.put_node(node("gpu-c", 4));
    eventually("node events apply", || {
        let inventory = state.read();
        inventory.node("gpu-b").is_none()
            && inventory
                .node("gpu-c")
                .is_some_and(|n| n.devices.len() == 4)
    })
    .await;

    let (_, text) = get(&app, "/metrics").await;
    assert!(
        text.contains("vramfit_watch_last_event_age_seconds{resource=\"pods\"}"),
        "{text}"
    );
    assert!(
        text.contains("vramfit_bind_conflicts_total{reason=\"no-longer-fits\"} 1"),
        "{text}"
    );
}

/// The Binding `KubeBinder` posts is the one the capture extender posted (and the API server
/// accepted with a 201) plus the device assignment's annotations.
#[tokio::test]
async fn the_binding_is_the_captured_one_plus_the_assignment() {
    use vramfit::core::{DeviceShare, Placement};
    use vramfit::extender::binder::{BindTarget, Binder, KubeBinder};
    let captured: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/kube-scheduler-v1.28/extender-to-apiserver-binding.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let body = &captured["body"];
    let api = FakeApi::builder()
        .pods([pod_json("gpu-pod-1").gpus(1).build()])
        .start();
    let target = BindTarget {
        namespace: body["metadata"]["namespace"].as_str().unwrap().into(),
        name: body["metadata"]["name"].as_str().unwrap().into(),
        uid: body["metadata"]["uid"].as_str().unwrap().into(),
        node: body["target"]["name"].as_str().unwrap().into(),
    };
    let placement = Placement {
        pod: format!("{}/{}", target.namespace, target.name),
        node: target.node.clone(),
        zone: None,
        model: None,
        shares: vec![DeviceShare {
            index: 2,
            vram_mib: 0,
        }],
        exclusive: true,
    };
    KubeBinder::new(api.client(), Duration::from_secs(5))
        .bind(&target, &placement, None)
        .await
        .expect("the API server's 201 is success");
    let requests = api.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].method, captured["method"]);
    assert_eq!(requests[0].path, captured["url_path"]);
    let mut sent: Value = serde_json::from_str(&requests[0].body).unwrap();
    let annotations = sent["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("annotations");
    assert_eq!(&sent, body);
    assert_eq!(
        annotations,
        Some(json!({"vramfit.io/assigned-devices": "2"}))
    );
}

/// A replica of model `sdxl` (12 GiB, `vramfit-spread`), bound to `node` on `device`, its
/// deletion cost annotation still the one a Binding wrote long ago.
fn replica(name: &str, node: &str, device: &str) -> Value {
    let mut pod = pod_json(name)
        .gpus(1)
        .vram("12Gi")
        .scheduler("vramfit-spread")
        .annotation("controller.kubernetes.io/pod-deletion-cost", "0")
        .bound(node)
        .assigned(device)
        .build();
    pod["metadata"]["labels"] = json!({"vramfit.io/model": "sdxl"});
    pod
}

fn deletion_cost(api: &FakeApi, name: &str) -> Option<String> {
    api.pod(name)?["metadata"]["annotations"]["controller.kubernetes.io/pod-deletion-cost"]
        .as_str()
        .map(String::from)
}

/// Asserts that `/metrics` of `state` holds `line`.
async fn assert_metric(state: &Arc<ExtenderState>, line: &str) {
    let metrics = get(&extender(state.clone()), "/metrics").await.1;
    assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
}

/// Zone a: a T4 (the smallest device SDXL fits) and an A100; zones b and c: an A100 each;
/// six SDXL replicas, one of them another scheduler's.
fn sdxl_in_three_zones() -> FakeApi {
    let zoned = |name: &str, zone: &str, gpus: u32| {
        node_json(name, gpus).label("topology.kubernetes.io/zone", zone)
    };
    FakeApi::builder()
        .nodes([
            zoned("t4-a", "a", 1).product("Tesla-T4", 15360).build(),
            zoned("a100-a", "a", 2).build(),
            zoned("a100-b", "b", 2).build(),
            zoned("a100-c", "c", 2).build(),
        ])
        .pods([
            replica("sdxl-t4", "t4-a", "0"),
            replica("sdxl-a", "a100-a", "0"),
            replica("sdxl-b1", "a100-b", "0"),
            replica("sdxl-b2", "a100-b", "1"),
            replica("sdxl-c", "a100-c", "0"),
            // Scheduled by another scheduler: counted for capacity, never written.
            {
                let mut other = replica("sdxl-other", "a100-c", "1");
                other["spec"]["schedulerName"] = json!("default-scheduler");
                other
            },
        ])
        .start()
}

/// Live mode over `api` with the deletion-cost refresher gated by `gate`, once the six
/// replicas are in.
async fn live_sdxl(
    api: &FakeApi,
    gate: Option<vramfit::extender::lease::LeaseGate>,
) -> Arc<ExtenderState> {
    let client = api.client();
    let binder = vramfit::extender::binder::KubeBinder::new(client.clone(), Duration::from_secs(5));
    let state = Arc::new(ExtenderState::new(
        Config::default(),
        Catalog::default(),
        Box::new(binder),
    ));
    vramfit::extender::watch::spawn_live(client, state.clone(), Duration::from_secs(120), gate);
    eventually("ready", || state.is_ready()).await;
    eventually("the six replicas seen (one another scheduler's)", || {
        state
            .read()
            .replicas("sdxl")
            .is_some_and(|r| ["a", "b", "c"].iter().map(|z| r.in_zone(z)).sum::<u32>() == 6)
    })
    .await;
    state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_refresher_rewrites_stale_deletion_costs_so_scale_downs_keep_zones_even() {
    let api = sdxl_in_three_zones();
    let state = live_sdxl(&api, None).await;
    // Zones hold 2 / 2 / 1 replicas; four sit on A100s while a T4 fits SDXL. Each zone stacks
    // its oversized replicas above the others, and the lowest cost — the highest level, an
    // oversized replica first among equals — goes first: the tops of zones a and b (−5), then
    // the oversized replicas at height 1 (−3), the T4 replica last (−2).
    // Only the refresher's own loop writes (a pass every 2 s), so every count below is exact.
    let costs = || -> Vec<Option<String>> {
        ["sdxl-a", "sdxl-b2", "sdxl-b1", "sdxl-c", "sdxl-t4"]
            .iter()
            .map(|name| deletion_cost(&api, name))
            .collect()
    };
    let expected = |values: &[&str]| -> Vec<Option<String>> {
        values.iter().map(|v| Some(v.to_string())).collect()
    };
    eventually("the first pass written", || {
        costs() == expected(&["-5", "-5", "-3", "-3", "-2"])
    })
    .await;
    // The API server shows a write before the refresher has counted it: wait for the count.
    eventually("five writes counted", || {
        state.deletion_costs().written() == 5
    })
    .await;
    // The watch echoes the writes; once it has, nothing is due.
    eventually("the written costs seen by the watch", || {
        state.deletion_costs().due(&state, true).is_empty()
    })
    .await;

    // The T4 replica goes: zone a keeps only its oversized replica, now at height 1. The
    // refresher's own pass, a few seconds later, rewrites that one cost and no other.
    api.delete_pod("sdxl-t4");
    eventually("zone a's replica moved down", || {
        costs()[..4] == expected(&["-3", "-5", "-3", "-3"])[..]
    })
    .await;
    eventually("the sixth write counted", || {
        state.deletion_costs().written() == 6
    })
    .await;
    assert_eq!(state.deletion_costs().failures(), 0);
    assert_eq!(deletion_cost(&api, "sdxl-other").as_deref(), Some("0"));
    assert_metric(&state, "vramfit_deletion_cost_updates_total 6").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_replica_beside_the_lease_holder_writes_deletion_costs() {
    let api = sdxl_in_three_zones();
    // kube-scheduler in the other replica's pod holds the Lease (`<host name>_<uuid>`).
    api.put_lease("vramfit-system", "vramfit-scheduler", "sched-b_5f0c");
    let lease = "vramfit-system/vramfit-scheduler"
        .to_string()
        .try_into()
        .unwrap();
    let gate = vramfit::extender::lease::LeaseGate::new(api.client(), lease, "sched-a".into());
    let state = live_sdxl(&api, Some(gate)).await;
    eventually("the Lease read", || !state.deletion_costs().writes()).await;
    // Two passes later still nothing written: the leader's replica writes.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(state.deletion_costs().written(), 0);
    assert_eq!(deletion_cost(&api, "sdxl-a").as_deref(), Some("0"));
    assert_metric(&state, "vramfit_deletion_cost_writer 0").await;

    // Our kube-scheduler takes over: this replica writes every stale cost.
    api.put_lease("vramfit-system", "vramfit-scheduler", "sched-a_9e41");
    eventually("the costs written", || {
        deletion_cost(&api, "sdxl-a").as_deref() == Some("-5")
            && deletion_cost(&api, "sdxl-t4").as_deref() == Some("-2")
    })
    .await;
    eventually("five writes counted", || {
        state.deletion_costs().written() == 5
    })
    .await;
    assert!(state.deletion_costs().writes());
    assert_metric(&state, "vramfit_deletion_cost_writer 1").await;
}
