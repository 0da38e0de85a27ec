//! `place` against a live cluster: a fake API server on loopback serves the example cluster's
//! Nodes (in two pages) and Pods; `place --kubeconfig --context` reads it and never writes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{Method, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

#[derive(Clone)]
struct Fake {
    nodes: Arc<Vec<Value>>,
    pods: Arc<Vec<Value>>,
    writes: Arc<AtomicUsize>,
    pod_selectors: Arc<std::sync::Mutex<Vec<String>>>,
}

async fn nodes(
    State(fake): State<Fake>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Json<Value> {
    // Page 1 holds the first node and a continue token; page 2 the rest.
    let (items, token) = match q.get("continue").map(String::as_str) {
        Some("page-2") => (fake.nodes[1..].to_vec(), ""),
        _ => (fake.nodes[..1].to_vec(), "page-2"),
    };
    Json(
        json!({"apiVersion": "v1", "kind": "NodeList", "metadata": {"resourceVersion": "7", "continue": token}, "items": items}),
    )
}

async fn pods(
    State(fake): State<Fake>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Json<Value> {
    fake.pod_selectors
        .lock()
        .unwrap()
        .push(q.get("fieldSelector").cloned().unwrap_or_default());
    Json(
        json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "7"}, "items": *fake.pods}),
    )
}

async fn anything_else(State(fake): State<Fake>, method: Method) -> impl IntoResponse {
    if method != Method::GET {
        fake.writes.fetch_add(1, Ordering::SeqCst);
    }
    StatusCode::METHOD_NOT_ALLOWED
}

fn example_objects() -> (Vec<Value>, Vec<Value>) {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/cluster.yaml"
    ))
    .unwrap();
    let list: Value = serde_yaml_ng::from_str(&text).unwrap();
    let items = list["items"].as_array().unwrap();
    let of = |kind: &str| {
        items
            .iter()
            .filter(|i| i["kind"] == kind)
            .cloned()
            .collect::<Vec<_>>()
    };
    (of("Node"), of("Pod"))
}

#[test]
fn place_reads_a_live_cluster_read_only() {
    let (node_items, pod_items) = example_objects();
    let fake = Fake {
        nodes: Arc::new(node_items),
        pods: Arc::new(pod_items),
        writes: Arc::new(AtomicUsize::new(0)),
        pod_selectors: Arc::default(),
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = Router::new()
        .route("/api/v1/nodes", get(nodes))
        .route("/api/v1/pods", get(pods))
        .fallback(anything_else)
        .with_state(fake.clone());
    runtime.spawn(async move { axum::serve(listener, app).await });

    let dir = std::env::temp_dir().join(format!("vramfit-live-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"http://127.0.0.1:{port}\"}}\n\
             - name: nowhere\n  cluster: {{server: \"http://127.0.0.1:9\"}}\nusers:\n- name: u\n  user: {{token: t}}\n\
             contexts:\n- name: fake\n  context: {{cluster: fake, user: u}}\n- name: broken\n  context: {{cluster: nowhere, user: u}}\n\
             current-context: broken\n"
        ),
    )
    .unwrap();

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vramfit"))
        .args([
            "place",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--context",
            "fake",
            "--pods",
            "examples/models.yaml",
            "--output",
            "json",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["nodes"], 11, "both pages of nodes were read");
    assert_eq!(report["pods"].as_array().unwrap().len(), 10);
    assert_eq!(
        fake.writes.load(Ordering::SeqCst),
        0,
        "a dry run never writes"
    );
    assert_eq!(
        fake.pod_selectors
            .lock()
            .unwrap()
            .first()
            .map(String::as_str),
        Some("status.phase!=Succeeded,status.phase!=Failed")
    );

    // The default (broken) context gives a clear error and exit code 1.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vramfit"))
        .args([
            "place",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--pods",
            "examples/models.yaml",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("listing nodes"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
