//! The extender's HTTP layer against the captured kube-scheduler requests, field by field, and
//! against hostile bodies (which get 4xx or a reasoned rejection, never a 500 or a panic).

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use vramfit::core::{Catalog, Config};
use vramfit::extender::http::{router, App, ServerConfig};
use vramfit::extender::metrics::Metrics;
use vramfit::extender::state::ExtenderState;
use vramfit::kubernetes::snapshot::load_file;

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/kube-scheduler-v1.28"
);

fn fixture(name: &str) -> String {
    std::fs::read_to_string(Path::new(FIXTURES).join(name)).unwrap()
}

fn fixture_json(name: &str) -> Value {
    serde_json::from_str(&fixture(name)).unwrap()
}

fn app_with(snapshot: Option<&str>) -> axum::Router {
    let objects = match snapshot {
        Some(path) => load_file(Path::new(path)).unwrap(),
        None => Default::default(),
    };
    let state = ExtenderState::from_snapshot(
        &objects,
        Config::default(),
        Catalog::default(),
        SystemTime::now(),
    );
    let app = App {
        cluster: Arc::new(state),
        metrics: Arc::new(Metrics::default()),
    };
    let server = ServerConfig {
        path_prefix: "/scheduler".into(),
        body_limit_bytes: 4 * 1024 * 1024,
        ..ServerConfig::default()
    };
    router(app, &server)
}

fn capture_app() -> axum::Router {
    app_with(Some(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/capture-cluster.json"
    )))
}

async fn post(app: &axum::Router, path: &str, body: impl Into<Body>) -> (StatusCode, Value) {
    let request = Request::post(path)
        .header("content-type", "application/json")
        .body(body.into())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, value)
}

async fn get(app: &axum::Router, path: &str) -> (StatusCode, String) {
    let response = app
        .clone()
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into())
}

fn keys(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn filter_with_node_names_accepts_every_gpu_node_for_an_undeclared_pod() {
    let app = capture_app();
    for name in [
        "filter-request-nodenames.json",
        "filter-request-nodenames-reject-all.json",
        "filter-request-nodenames-one-feasible-node.json",
    ] {
        let request = fixture_json(name);
        let (status, reply) = post(&app, "/scheduler/filter", fixture(name)).await;
        assert_eq!(status, StatusCode::OK, "{name}");
        assert_eq!(
            keys(&reply),
            [
                "Error",
                "FailedAndUnresolvableNodes",
                "FailedNodes",
                "NodeNames",
                "Nodes"
            ]
        );
        assert_eq!(
            reply["NodeNames"], request["NodeNames"],
            "{name}: every node passes, in input order"
        );
        assert_eq!(reply["Nodes"], Value::Null);
        assert_eq!(reply["FailedNodes"], json!({}));
        assert_eq!(reply["FailedAndUnresolvableNodes"], json!({}));
        assert_eq!(reply["Error"], "");
    }
}

#[tokio::test]
async fn filter_with_full_nodes_returns_the_survivors_unchanged() {
    let app = app_with(None);
    for name in [
        "filter-request-full-nodes.json",
        "filter-request-full-nodes-one-feasible-node.json",
    ] {
        let request = fixture_json(name);
        let (status, reply) = post(&app, "/scheduler/filter", fixture(name)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(reply["NodeNames"], Value::Null, "{name}");
        assert_eq!(
            reply["Nodes"]["items"], request["Nodes"]["items"],
            "{name}: byte-for-byte survivors"
        );
        assert_eq!(reply["Error"], "");
    }
    // The captured reply the scheduler accepted has the same shape.
    let accepted = fixture_json("filter-response-full-nodes.json");
    let (_, reply) = post(
        &app,
        "/scheduler/filter",
        fixture("filter-request-full-nodes.json"),
    )
    .await;
    assert_eq!(reply["Nodes"]["items"], accepted["Nodes"]["items"]);
}

#[tokio::test]
async fn prioritize_prefers_the_smallest_device_class_and_answers_a_bare_array() {
    let app = capture_app();
    for name in [
        "prioritize-request.json",
        "prioritize-request-nodenames.json",
    ] {
        let (status, reply) = post(&app, "/scheduler/prioritize", fixture(name)).await;
        assert_eq!(status, StatusCode::OK);
        let list = reply.as_array().expect("bare array");
        assert_eq!(list.len(), 3, "{name}");
        for entry in list {
            assert_eq!(keys(entry), ["Host", "Score"]);
            let score = entry["Score"].as_i64().unwrap();
            assert!((0..=10).contains(&score));
        }
        // undeclared VRAM, 1 device: fit = 1 - 15360/81920 on the T4, 0 on the A100s;
        // packing 1/4 everywhere; no model to spread. (6·0.8125 + 3·0.25 + 1 + 0.5)/10.5 → 7.
        assert_eq!(
            list[0],
            json!({"Host": "gpu-node-a100-a", "Score": 2}),
            "{name}"
        );
        assert_eq!(
            list[1],
            json!({"Host": "gpu-node-a100-b", "Score": 2}),
            "{name}"
        );
        assert_eq!(
            list[2],
            json!({"Host": "gpu-node-t4-b", "Score": 7}),
            "{name}"
        );
    }
    let (_, reply) = post(
        &app,
        "/scheduler/prioritize",
        fixture("prioritize-request-after-lowercase-filter.json"),
    )
    .await;
    let hosts: Vec<&str> = reply
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["Host"].as_str().unwrap())
        .collect();
    assert_eq!(hosts, ["gpu-node-a100-a", "gpu-node-a100-b"]);
}

#[tokio::test]
async fn bind_after_filter_succeeds_once_and_is_idempotent() {
    // nodeCacheCapable: false run — the Nodes of the filter request are the state.
    let app = app_with(None);
    let (status, _) = post(
        &app,
        "/scheduler/filter",
        fixture("filter-request-full-nodes.json"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, reply) = post(&app, "/scheduler/bind", fixture("bind-request.json")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(reply, json!({"Error": ""}));
    let (_, again) = post(&app, "/scheduler/bind", fixture("bind-request.json")).await;
    assert_eq!(
        again,
        json!({"Error": ""}),
        "a repeat bind to the same node succeeds"
    );
    // The same pod to another node is refused with a reason.
    let mut elsewhere = fixture_json("bind-request.json");
    elsewhere["Node"] = json!("gpu-node-a100-b");
    let (_, reply) = post(&app, "/scheduler/bind", elsewhere.to_string()).await;
    assert!(reply["Error"]
        .as_str()
        .unwrap()
        .contains("already bound to gpu-node-a100-a"));

    let (_, _) = post(
        &app,
        "/scheduler/filter",
        fixture("filter-request-full-nodes-one-feasible-node.json"),
    )
    .await;
    let (_, reply) = post(
        &app,
        "/scheduler/bind",
        fixture("bind-request-one-feasible-node.json"),
    )
    .await;
    assert_eq!(reply, json!({"Error": ""}));
}

#[tokio::test]
async fn bind_in_node_names_mode_records_the_placement_for_the_next_filter() {
    let app = capture_app();
    let bind = fixture_json("bind-request-nodenames-run.json");
    // Find the filter capture of the same pod.
    let filter = [
        "filter-request-nodenames.json",
        "filter-request-nodenames-reject-all.json",
    ]
    .into_iter()
    .find(|f| fixture_json(f)["Pod"]["metadata"]["uid"] == bind["PodUID"])
    .unwrap_or("filter-request-nodenames.json");
    post(&app, "/scheduler/filter", fixture(filter)).await;
    let (_, reply) = post(&app, "/scheduler/bind", bind.to_string()).await;
    assert_eq!(reply, json!({"Error": ""}));
    let (_, metrics) = get(&app, "/metrics").await;
    assert!(
        metrics.contains("vramfit_requests_total{verb=\"bind\",outcome=\"ok\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn bind_of_a_pod_never_filtered_is_an_error_not_a_crash() {
    let app = capture_app();
    let (status, reply) = post(
        &app,
        "/scheduler/bind",
        r#"{"PodName":"ghost","PodNamespace":"ml","PodUID":"x","Node":"gpu-node-t4-b"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        reply["Error"],
        "vramfit: pod ml/ghost was not seen in a filter call; cannot tell what it needs"
    );
}

fn pod_request(annotations: Value, gpus: &str, names: Value) -> String {
    json!({
        "Pod": {
            "metadata": {"name": "p", "namespace": "ml", "uid": "u1", "annotations": annotations},
            "spec": {"containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": gpus}}}]},
            "status": {}
        },
        "Nodes": null,
        "NodeNames": names
    })
    .to_string()
}

#[tokio::test]
async fn rejections_are_reasoned_and_sorted_into_the_right_map() {
    let app = capture_app();
    let (status, reply) = post(
        &app,
        "/scheduler/filter",
        pod_request(
            json!({"vramfit.io/vram": "40Gi"}),
            "1",
            json!(["gpu-node-a100-a", "gpu-node-t4-b", "no-such-node"]),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(reply["NodeNames"], json!(["gpu-node-a100-a"]));
    assert_eq!(
        reply["FailedAndUnresolvableNodes"],
        json!({"gpu-node-t4-b": "vramfit: needs 40Gi per device (plus 15 percent headroom); largest device here has 15Gi"})
    );
    assert_eq!(
        reply["FailedNodes"],
        json!({"no-such-node": "vramfit: node unknown to vramfit"})
    );
}

#[tokio::test]
async fn hostile_bodies_get_4xx_or_reasoned_rejections() {
    let app = capture_app();
    // Invalid quantity: every node rejected, unresolvable, reason names key and value.
    let (status, reply) = post(
        &app,
        "/scheduler/filter",
        pod_request(
            json!({"vramfit.io/vram": "12 gigs"}),
            "1",
            json!(["gpu-node-a100-a"]),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(reply["NodeNames"], json!([]));
    assert_eq!(
        reply["FailedAndUnresolvableNodes"]["gpu-node-a100-a"],
        "vramfit: invalid vramfit.io/vram \"12 gigs\": not a Kubernetes quantity"
    );

    let deep = "[".repeat(100_000) + &"]".repeat(100_000);
    let many_names: Vec<String> = (0..100_000).map(|i| format!("node-{i}")).collect();
    let cases: Vec<(&str, String, StatusCode)> = vec![
        ("not json", "hello".into(), StatusCode::BAD_REQUEST),
        ("empty", String::new(), StatusCode::BAD_REQUEST),
        (
            "wrong type for Pod",
            r#"{"Pod": 5, "NodeNames": []}"#.into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "wrong type for NodeNames",
            r#"{"Pod": {}, "NodeNames": "a"}"#.into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "missing Pod",
            r#"{"NodeNames": ["gpu-node-a100-a"]}"#.into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "deep nesting",
            format!(r#"{{"Pod": {deep}}}"#),
            StatusCode::BAD_REQUEST,
        ),
        ("a bare array", "[]".into(), StatusCode::BAD_REQUEST),
        (
            "bad node object",
            r#"{"Pod": {}, "Nodes": {"items": [7]}}"#.into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "too large",
            "x".repeat(5 * 1024 * 1024),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
    ];
    for verb in ["filter", "prioritize"] {
        for (name, body, expected) in &cases {
            let (status, reply) = post(&app, &format!("/scheduler/{verb}"), body.clone()).await;
            assert_eq!(status, *expected, "{verb}: {name}");
            if *expected == StatusCode::BAD_REQUEST {
                assert!(
                    reply["error"].as_str().is_some(),
                    "{verb}: {name}: JSON error message"
                );
            }
        }
    }
    // 100,000 unknown node names: each gets a reason, nothing is dropped silently.
    let (status, reply) = post(
        &app,
        "/scheduler/filter",
        pod_request(json!({}), "1", json!(many_names)),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(reply["FailedNodes"].as_object().unwrap().len(), 100_000);
    for (name, body) in [
        ("bind: not json", "{"),
        ("bind: wrong type", r#"{"PodName": 1}"#),
        ("bind: missing node", r#"{"PodName": "p"}"#),
    ] {
        let (status, _) = post(&app, "/scheduler/bind", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name}");
    }
}

#[tokio::test]
async fn null_and_missing_fields_are_tolerated() {
    let app = capture_app();
    let body = json!({
        "Pod": {"metadata": {"name": "p", "labels": null, "annotations": null, "ownerReferences": null},
                "spec": {"containers": null, "initContainers": null}, "status": {}},
        "Nodes": null,
        "NodeNames": ["gpu-node-t4-b"]
    });
    let (status, reply) = post(&app, "/scheduler/filter", body.to_string()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        reply["NodeNames"],
        json!(["gpu-node-t4-b"]),
        "a pod asking for no accelerator passes"
    );
    // Lowercase keys (Go decodes case-insensitively; so do we).
    let body = json!({"pod": {"metadata": {"name": "p"}}, "nodenames": ["gpu-node-t4-b"]});
    let (status, reply) = post(&app, "/scheduler/filter", body.to_string()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(reply["NodeNames"], json!(["gpu-node-t4-b"]));
}

#[tokio::test]
async fn health_readiness_metrics_and_version() {
    let app = capture_app();
    assert_eq!(get(&app, "/healthz").await.0, StatusCode::OK);
    assert_eq!(get(&app, "/readyz").await.0, StatusCode::OK);
    post(
        &app,
        "/scheduler/filter",
        fixture("filter-request-nodenames.json"),
    )
    .await;
    post(&app, "/scheduler/filter", "garbage").await;
    let (status, metrics) = get(&app, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        metrics.contains("vramfit_request_duration_seconds_bucket{"),
        "{metrics}"
    );
    assert!(
        metrics.contains("vramfit_requests_total{verb=\"filter\",outcome=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("vramfit_requests_total{verb=\"filter\",outcome=\"bad-request\"} 1"),
        "{metrics}"
    );
    let (status, version) = get(&app, "/version").await;
    assert_eq!(status, StatusCode::OK);
    assert!(version.contains(env!("CARGO_PKG_VERSION")));
    // Without the prefix, verbs are not found.
    let (status, _) = post(&app, "/filter", fixture("filter-request-nodenames.json")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn inventory_gauges_and_bind_conflicts_are_exported() {
    let app = capture_app();
    post(
        &app,
        "/scheduler/filter",
        fixture("filter-request-nodenames.json"),
    )
    .await;
    let bind = fixture_json("bind-request-nodenames-run.json");
    // The capture's bind names the pod of a filter with the same UID; make sure it is known.
    let mut filter = fixture_json("filter-request-nodenames.json");
    filter["Pod"]["metadata"]["uid"] = bind["PodUID"].clone();
    filter["Pod"]["metadata"]["name"] = bind["PodName"].clone();
    post(&app, "/scheduler/filter", filter.to_string()).await;
    let (_, reply) = post(&app, "/scheduler/bind", bind.to_string()).await;
    assert_eq!(reply, json!({"Error": ""}));
    let mut elsewhere = bind.clone();
    elsewhere["Node"] = json!(if bind["Node"] == "gpu-node-t4-b" {
        "gpu-node-a100-a"
    } else {
        "gpu-node-t4-b"
    });
    post(&app, "/scheduler/bind", elsewhere.to_string()).await;

    let (_, metrics) = get(&app, "/metrics").await;
    let line = |prefix: &str| -> String {
        metrics
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("{prefix} in\n{metrics}"))
            .to_string()
    };
    assert_eq!(
        line("vramfit_device_vram_total_mib{node=\"gpu-node-t4-b\",device=\"0\",class=\"T4\"}"),
        "vramfit_device_vram_total_mib{node=\"gpu-node-t4-b\",device=\"0\",class=\"T4\"} 15360"
    );
    // 3 nodes × 4 devices; the bound pod holds one of them.
    let free_t4: i64 = line("vramfit_device_class_free_devices{class=\"T4\"}")
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let free_a100: i64 = line("vramfit_device_class_free_devices{class=\"A100\"}")
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(free_t4 + free_a100, 11);
    assert!(
        metrics.contains("vramfit_bind_conflicts_total{reason=\"bound-elsewhere\"} 1"),
        "{metrics}"
    );
    // The captured bind puts a pod that declares no VRAM on an A100 while T4s exist: stranded.
    assert_eq!(bind["Node"], "gpu-node-a100-b");
    assert!(
        metrics.contains("vramfit_device_class_stranded_devices{class=\"A100\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("vramfit_device_class_stranded_devices{class=\"T4\"} 0"),
        "{metrics}"
    );
}
