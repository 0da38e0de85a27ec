//! The extender's HTTP layer against the captured kube-scheduler requests, field by field, and
//! against hostile bodies (which get 4xx or a reasoned rejection, never a 500 or a panic).

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use axum::http::StatusCode;
use serde_json::{json, Value};

use common::router::{extender_with, get, post};
use vramfit::core::{Catalog, Config};
use vramfit::extender::http::ServerConfig;
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
    let server = ServerConfig {
        path_prefix: "/scheduler".into(),
        body_limit_bytes: 4 * 1024 * 1024,
        ..ServerConfig::default()
    };
    extender_with(Arc::new(state), &server)
}

fn capture_app() -> axum::Router {
    app_with(Some(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/capture-cluster.json"
    )))
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
        // undeclared VRAM, 1 device: fit = 1 - 15360/81920 on the T4, 0 on the A100s; no model
        // to spread; the workload model is empty, so `frag` is left out (vramfit-binpack: fit
        // 0.2, zone 0.1, node 0.05). T4 (0.2·0.8125 + 0.15)/0.35 → 9; A100 0.15/0.35 → 4.
        assert_eq!(
            list[0],
            json!({"Host": "gpu-node-a100-a", "Score": 4}),
            "{name}"
        );
        assert_eq!(
            list[1],
            json!({"Host": "gpu-node-a100-b", "Score": 4}),
            "{name}"
        );
        assert_eq!(
            list[2],
            json!({"Host": "gpu-node-t4-b", "Score": 9}),
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
    // (case, body, status, the JSON error of a 400)
    let cases: Vec<(&str, String, StatusCode, &str)> = vec![
        (
            "not json",
            "hello".into(),
            StatusCode::BAD_REQUEST,
            "invalid ExtenderArgs: expected value at line 1 column 1",
        ),
        (
            "empty",
            String::new(),
            StatusCode::BAD_REQUEST,
            "invalid ExtenderArgs: EOF while parsing a value at line 1 column 0",
        ),
        (
            "wrong type for Pod",
            r#"{"Pod": 5, "NodeNames": []}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid ExtenderArgs: invalid type: integer `5`, expected struct Pod at line 1 column 9",
        ),
        (
            "wrong type for NodeNames",
            r#"{"Pod": {}, "NodeNames": "a"}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid ExtenderArgs: invalid type: string \"a\", expected a sequence at line 1 column 28",
        ),
        (
            "missing Pod",
            r#"{"NodeNames": ["gpu-node-a100-a"]}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid ExtenderArgs: missing Pod",
        ),
        (
            "deep nesting",
            format!(r#"{{"Pod": {deep}}}"#),
            StatusCode::BAD_REQUEST,
            "invalid ExtenderArgs: invalid type: sequence, expected a string at line 1 column 10",
        ),
        (
            "a bare array",
            "[]".into(),
            StatusCode::BAD_REQUEST,
            "invalid ExtenderArgs: missing Pod",
        ),
        (
            "bad node object",
            r#"{"Pod": {}, "Nodes": {"items": [7]}}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid Node in Nodes.items: invalid type: integer `7`, expected struct Node at line 1 column 1",
        ),
        (
            "too large",
            "x".repeat(5 * 1024 * 1024),
            StatusCode::PAYLOAD_TOO_LARGE,
            "",
        ),
    ];
    for verb in ["filter", "prioritize"] {
        for (name, body, expected, error) in &cases {
            let (status, reply) = post(&app, &format!("/scheduler/{verb}"), body.clone()).await;
            assert_eq!(status, *expected, "{verb}: {name}");
            if *expected == StatusCode::BAD_REQUEST {
                assert_eq!(reply, json!({ "error": error }), "{verb}: {name}");
            }
        }
    }
    // A body that is not UTF-8 (a Latin-1 byte in a name) is refused as a whole.
    let mut latin1 = br#"{"Pod": {}, "NodeNames": ["gpu-node-"#.to_vec();
    latin1.extend([0xe9, b'"', b']', b'}']);
    for verb in ["filter", "prioritize"] {
        let (status, reply) = post(&app, &format!("/scheduler/{verb}"), latin1.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{verb}");
        assert_eq!(
            reply,
            json!({"error": "invalid ExtenderArgs: body is not UTF-8: invalid utf-8 sequence of 1 bytes from index 36"}),
            "{verb}"
        );
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
async fn debug_workload_shows_each_asked_about_pod_once() {
    let app = capture_app();
    let (status, body) = get(&app, "/debug/workload").await;
    assert_eq!(status, StatusCode::OK);
    let before: Value = serde_json::from_str(&body).unwrap();
    let observed = before["observed"].as_u64().expect("observed count");
    let request = pod_request(
        json!({"vramfit.io/vram": "6Gi"}),
        "1",
        json!(["gpu-node-t4-b"]),
    );
    // kube-scheduler retries a pending pod: it is counted once.
    for _ in 0..3 {
        assert_eq!(
            post(&app, "/scheduler/filter", request.clone()).await.0,
            StatusCode::OK
        );
    }
    let (_, body) = get(&app, "/debug/workload").await;
    let after: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(after["observed"].as_u64(), Some(observed + 1), "{after}");
    let shapes = after["live"].as_array().expect("live shapes");
    assert!(
        shapes
            .iter()
            .any(|s| s["vramMib"] == json!(6144) && s["devices"] == json!(1)),
        "{after}"
    );
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

// ---------------------------------------------------------------------------------------------
// Golden comparisons with the captured replies kube-scheduler accepted. kube-scheduler decodes
// with Go's encoding/json: keys match case-insensitively and a null field is the zero value, so
// replies are compared after that decoding (object keys lowercased, nulls dropped; map keys such
// as node names kept).

/// `value` as Go's decoder sees the fields of an extender reply.
fn as_go_decodes(value: &Value) -> Value {
    match value {
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| {
                    // The maps of node name → reason keep their keys.
                    let inner = if k.eq_ignore_ascii_case("FailedNodes")
                        || k.eq_ignore_ascii_case("FailedAndUnresolvableNodes")
                    {
                        v.clone()
                    } else {
                        as_go_decodes(v)
                    };
                    (k.to_ascii_lowercase(), inner)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(as_go_decodes).collect()),
        other => other.clone(),
    }
}

/// The JSON types of `value`'s fields, recursively (arrays by their first element).
fn shape(value: &Value) -> Value {
    match value {
        Value::Object(fields) => {
            Value::Object(fields.iter().map(|(k, v)| (k.clone(), shape(v))).collect())
        }
        Value::Array(items) => Value::Array(items.first().map(shape).into_iter().collect()),
        Value::String(_) => json!("string"),
        Value::Number(_) => json!("number"),
        Value::Bool(_) => json!("bool"),
        Value::Null => Value::Null,
    }
}

#[tokio::test]
async fn filter_replies_match_the_captured_accepted_replies() {
    let app = capture_app();
    // Every node passes for this pod (it declares no VRAM), as in the capture: the reply is the
    // captured one exactly.
    let (_, reply) = post(
        &app,
        "/scheduler/filter",
        fixture("filter-request-nodenames.json"),
    )
    .await;
    assert_eq!(
        as_go_decodes(&reply),
        as_go_decodes(&fixture_json("filter-response-nodenames.json"))
    );
    // The experiments' replies (all rejected; lowercase keys) were accepted with the same
    // fields and types as ours.
    let (_, reply) = post(
        &app,
        "/scheduler/filter",
        fixture("filter-request-nodenames-reject-all.json"),
    )
    .await;
    let ours = as_go_decodes(&reply);
    let kind = |v: &Value| match v {
        Value::Object(_) => "object",
        Value::Array(_) => "array",
        Value::String(_) => "string",
        Value::Number(_) => "number",
        Value::Bool(_) => "bool",
        Value::Null => "null",
    };
    for accepted in [
        "filter-response-nodenames-reject-all.json",
        "filter-response-nodenames-lowercase-keys-accepted.json",
    ] {
        let accepted = as_go_decodes(&fixture_json(accepted));
        for (key, value) in accepted.as_object().unwrap() {
            assert_eq!(kind(&ours[key]), kind(value), "{key}");
        }
        assert_eq!(
            ours.as_object().unwrap().len(),
            accepted.as_object().unwrap().len(),
            "no field more or less"
        );
    }
    // With full Node objects the captured reply is the NodeList the request carried.
    let (_, reply) = post(
        &app_with(None),
        "/scheduler/filter",
        fixture("filter-request-full-nodes.json"),
    )
    .await;
    assert_eq!(
        as_go_decodes(&reply),
        as_go_decodes(&fixture_json("filter-response-full-nodes.json"))
    );
}

#[tokio::test]
async fn prioritize_and_bind_replies_match_the_captured_accepted_replies() {
    let app = capture_app();
    for (request, accepted) in [
        ("prioritize-request.json", "prioritize-response.json"),
        (
            "prioritize-request-nodenames.json",
            "prioritize-response-nodenames.json",
        ),
        (
            "prioritize-request-after-lowercase-filter.json",
            "prioritize-response-lowercase-keys-accepted.json",
        ),
    ] {
        let (_, reply) = post(&app, "/scheduler/prioritize", fixture(request)).await;
        let (ours, theirs) = (
            as_go_decodes(&reply),
            as_go_decodes(&fixture_json(accepted)),
        );
        // The same hosts in the same order, the same fields; only the scores are vramfit's.
        let hosts = |list: &Value| -> Vec<Value> {
            list.as_array()
                .unwrap()
                .iter()
                .map(|e| e["host"].clone())
                .collect()
        };
        assert_eq!(hosts(&ours), hosts(&theirs), "{request}");
        assert_eq!(shape(&ours), shape(&theirs), "{request}");
    }
    // Bind: `{"Error": ""}` is what the capture's `{"error": ""}` decodes to.
    post(
        &app,
        "/scheduler/filter",
        fixture("filter-request-nodenames.json"),
    )
    .await;
    let mut bind = fixture_json("bind-request-nodenames-run.json");
    let filter = fixture_json("filter-request-nodenames.json");
    bind["PodUID"] = filter["Pod"]["metadata"]["uid"].clone();
    bind["PodName"] = filter["Pod"]["metadata"]["name"].clone();
    bind["PodNamespace"] = filter["Pod"]["metadata"]["namespace"].clone();
    let (_, reply) = post(&app, "/scheduler/bind", bind.to_string()).await;
    assert_eq!(
        as_go_decodes(&reply),
        as_go_decodes(&fixture_json("bind-response.json"))
    );
}

/// The captured HTTP envelope, byte for byte over a socket: method, path, HTTP/1.1, Go's
/// headers (`Accept-Encoding: gzip` included) and the compact body of the captured request.
#[tokio::test]
async fn the_captured_http_requests_are_served_over_a_socket() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, capture_app()).await });
    let envelope = fixture_json("http-envelope.json");
    for (call, body_file) in [
        (
            "filter (nodeCacheCapable=false)",
            "filter-request-full-nodes.json",
        ),
        (
            "prioritize (nodeCacheCapable=false)",
            "prioritize-request.json",
        ),
        ("bind (nodeCacheCapable=false)", "bind-request.json"),
        (
            "filter (nodeCacheCapable=true)",
            "filter-request-nodenames.json",
        ),
        (
            "prioritize (nodeCacheCapable=true)",
            "prioritize-request-nodenames.json",
        ),
        (
            "bind (nodeCacheCapable=true)",
            "bind-request-nodenames-run.json",
        ),
    ] {
        let captured = &envelope[call];
        let body = fixture_json(body_file).to_string();
        assert_eq!(
            body.len() as u64,
            captured["body_bytes"].as_u64().unwrap(),
            "{call}: the fixture is the captured body"
        );
        let mut head = format!(
            "{} {} {}\r\n",
            captured["method"].as_str().unwrap(),
            captured["path"].as_str().unwrap(),
            captured["http_version"].as_str().unwrap()
        );
        for (name, value) in captured["headers"].as_object().unwrap() {
            head += &format!("{name}: {}\r\n", value.as_str().unwrap());
        }
        head += "Connection: close\r\n\r\n";
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(body.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        let answer = String::from_utf8(answer).unwrap();
        let (head, reply) = answer.split_once("\r\n\r\n").unwrap();
        let mut lines = head.lines();
        assert_eq!(lines.next(), Some("HTTP/1.1 200 OK"), "{call}: {answer}");
        let headers: Vec<String> = lines.map(str::to_ascii_lowercase).collect();
        assert!(
            headers.contains(&"content-type: application/json".to_string()),
            "{call}: {headers:?}"
        );
        assert!(
            !headers.iter().any(|h| h.starts_with("content-encoding")),
            "{call}: a plain body (Go's client would also take gzip)"
        );
        let reply: Value = serde_json::from_str(reply).unwrap();
        let expected_keys: &[&str] = match call.split(' ').next().unwrap() {
            "filter" => &[
                "Error",
                "FailedAndUnresolvableNodes",
                "FailedNodes",
                "NodeNames",
                "Nodes",
            ],
            "bind" => &["Error"],
            _ => &[],
        };
        if expected_keys.is_empty() {
            assert!(reply.is_array(), "{call}: {reply}");
        } else {
            assert_eq!(keys(&reply), expected_keys, "{call}");
        }
    }
}

#[tokio::test]
async fn the_catalog_seeds_the_workload_model_before_any_pod_is_seen() {
    let catalog = Catalog::from_value(json!({"models": {
        "llama-70b": {"vram": "38Gi", "devices": 2},
        "whisper": {"vram": "10Gi", "products": ["Tesla-T4"]}
    }}))
    .unwrap();
    let live = ExtenderState::new(
        Config::default(),
        catalog.clone(),
        Box::new(vramfit::extender::binder::RecordOnly),
    );
    let snapshot = ExtenderState::from_snapshot(
        &Default::default(),
        Config::default(),
        catalog,
        SystemTime::now(),
    );
    for state in [live, snapshot] {
        let app = extender_with(Arc::new(state), &ServerConfig::default());
        let (status, body) = get(&app, "/debug/workload").await;
        assert_eq!(status, StatusCode::OK);
        let workload: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(workload["observed"], json!(2), "{workload:#}");
        let mut published: Vec<(Value, Value, Value)> = workload["published"]["shapes"]
            .as_array()
            .expect("published shapes")
            .iter()
            .map(|s| {
                (
                    s["vramMib"].clone(),
                    s["devices"].clone(),
                    s["products"].clone(),
                )
            })
            .collect();
        published.sort_by_key(|(vram, ..)| vram.as_u64());
        assert_eq!(
            published,
            vec![
                (json!(10240), json!(1), json!(["Tesla-T4"])),
                (json!(38912), json!(2), json!([])),
            ],
            "{workload:#}"
        );
    }
}
