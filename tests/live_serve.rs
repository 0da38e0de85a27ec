//! Live mode against a fake API server on loopback: initial lists, watch events (added,
//! modified, deleted), a watch that breaks, bind through a Binding that carries the assignment,
//! a 409 for another node, a slow API server, and readiness.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tokio::sync::broadcast;
use tower::ServiceExt;

use vramfit::core::{Catalog, Config};
use vramfit::extender::http::{router, App, ServerConfig};
use vramfit::extender::metrics::Metrics;
use vramfit::extender::state::ExtenderState;

#[derive(Clone)]
struct Fake {
    nodes: Arc<Mutex<Vec<Value>>>,
    pods: Arc<Mutex<BTreeMap<String, Value>>>,
    node_events: Events,
    pod_events: Events,
    bindings: Arc<Mutex<Vec<Value>>>,
    failed_pod_watches: Arc<Mutex<u32>>,
}

fn node(name: &str, gpus: u32) -> Value {
    json!({"apiVersion": "v1", "kind": "Node",
           "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": "z", "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB", "nvidia.com/gpu.memory": "81920"}},
           "status": {"allocatable": {"nvidia.com/gpu": gpus.to_string()}}})
}

fn pod(name: &str, node: Option<&str>, assigned: Option<&str>) -> Value {
    let mut annotations = json!({"vramfit.io/vram": "40Gi"});
    if let Some(devices) = assigned {
        annotations["vramfit.io/assigned-devices"] = json!(devices);
    }
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "ml", "uid": format!("uid-{name}"), "annotations": annotations},
           "spec": {"nodeName": node, "schedulerName": "vramfit-binpack",
                    "containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": "1"}}}]},
           "status": {"phase": if node.is_some() { "Running" } else { "Pending" }}})
}

fn list(kind: &str, items: Vec<Value>) -> Response {
    axum::Json(json!({"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": "10"}, "items": items})).into_response()
}

/// Watch events since the lists' resourceVersion: a watch that starts late (after a broken
/// one) gets every event since, as from a real API server.
#[derive(Clone)]
struct Events {
    live: broadcast::Sender<String>,
    history: Arc<Mutex<Vec<String>>>,
}

impl Events {
    fn new() -> Self {
        Events {
            live: broadcast::channel(64).0,
            history: Arc::default(),
        }
    }
    fn send(&self, event: Value) {
        // Every event carries a resourceVersion, as the watcher resumes from the last one.
        let mut event = event;
        let version = 11 + self.history.lock().unwrap().len();
        event["object"]["metadata"]["resourceVersion"] = json!(version.to_string());
        let line = event.to_string();
        self.history.lock().unwrap().push(line.clone());
        let _ = self.live.send(line);
    }
}

fn stream(events: &Events) -> Response {
    let rx = events.live.subscribe();
    let past: Vec<String> = events.history.lock().unwrap().clone();
    let replay = futures::stream::iter(
        past.into_iter()
            .map(|line| Ok::<_, Infallible>(Bytes::from(line + "\n"))),
    );
    let live = futures::stream::unfold(rx, |mut rx| async move {
        match rx.recv().await {
            Ok(line) => Some((Ok::<_, Infallible>(Bytes::from(line + "\n")), rx)),
            Err(_) => None,
        }
    });
    let lines = futures::StreamExt::chain(replay, live);
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(lines))
        .unwrap()
}

async fn nodes(State(fake): State<Fake>, Query(q): Query<BTreeMap<String, String>>) -> Response {
    if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
        return stream(&fake.node_events);
    }
    list("NodeList", fake.nodes.lock().unwrap().clone())
}

async fn pods(State(fake): State<Fake>, Query(q): Query<BTreeMap<String, String>>) -> Response {
    if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
        let mut failed = fake.failed_pod_watches.lock().unwrap();
        if *failed == 0 {
            *failed += 1;
            // The first pod watch breaks: the watcher must back off, relist and go on.
            return (StatusCode::INTERNAL_SERVER_ERROR, "etcd hiccup").into_response();
        }
        return stream(&fake.pod_events);
    }
    list(
        "PodList",
        fake.pods.lock().unwrap().values().cloned().collect(),
    )
}

async fn binding(
    State(fake): State<Fake>,
    Path((ns, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let binding: Value = serde_json::from_slice(&body).unwrap();
    fake.bindings.lock().unwrap().push(binding.clone());
    if name == "slow" {
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let target = binding["target"]["name"].as_str().unwrap().to_string();
    let mut pods = fake.pods.lock().unwrap();
    let Some(pod) = pods.get_mut(&name) else {
        return (StatusCode::NOT_FOUND, axum::Json(json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": format!("pods \"{name}\" not found"), "reason": "NotFound", "code": 404}))).into_response();
    };
    if let Some(bound) = pod["spec"]["nodeName"].as_str() {
        let message = format!("Operation cannot be fulfilled on pods/binding \"{name}\": pod {name} is already assigned to node \"{bound}\"");
        return (StatusCode::CONFLICT, axum::Json(json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "reason": "Conflict", "code": 409}))).into_response();
    }
    pod["spec"]["nodeName"] = json!(target);
    pod["status"]["phase"] = json!("Running");
    for (k, v) in binding["metadata"]["annotations"].as_object().unwrap() {
        pod["metadata"]["annotations"][k] = v.clone();
    }
    fake.pod_events
        .send(json!({"type": "MODIFIED", "object": pod.clone()}));
    let _ = ns;
    (
        StatusCode::CREATED,
        axum::Json(json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 201})),
    )
        .into_response()
}

async fn call(app: &Router, path: &str, body: Value) -> Value {
    let request = Request::post(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..200 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_mode_lists_watches_binds_and_recovers() {
    let mut initial = BTreeMap::new();
    // Bound before the extender started, on device 1 by its assignment annotation.
    initial.insert("old".to_string(), pod("old", Some("gpu-a"), Some("1")));
    for name in ["new", "other", "slow"] {
        initial.insert(name.to_string(), pod(name, None, None));
    }
    let fake = Fake {
        nodes: Arc::new(Mutex::new(vec![node("gpu-a", 2), node("gpu-b", 1)])),
        pods: Arc::new(Mutex::new(initial)),
        node_events: Events::new(),
        pod_events: Events::new(),
        bindings: Arc::default(),
        failed_pod_watches: Arc::default(),
    };
    let api = Router::new()
        .route("/api/v1/nodes", get(nodes))
        .route("/api/v1/pods", get(pods))
        .route("/api/v1/namespaces/{ns}/pods/{name}/binding", post(binding))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, api).await });

    let client = kube::Client::try_from(kube::Config::new(
        format!("http://127.0.0.1:{port}").parse().unwrap(),
    ))
    .unwrap();
    let binder =
        vramfit::extender::binder::KubeBinder::new(client.clone(), Duration::from_millis(300));
    let state = Arc::new(ExtenderState::new(
        Config::default(),
        Catalog::default(),
        Box::new(binder),
    ));
    let app = router(
        App {
            cluster: state.clone(),
            metrics: Arc::new(Metrics::default()),
        },
        &ServerConfig {
            path_prefix: "/scheduler".into(),
            ..ServerConfig::default()
        },
    );
    let readyz = |app: Router| async move {
        app.oneshot(Request::get("/readyz").body(Body::empty()).unwrap())
            .await
            .unwrap()
            .status()
    };
    assert_eq!(
        readyz(app.clone()).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "not ready before the lists"
    );
    vramfit::extender::watch::spawn_live(client, state.clone(), Duration::from_secs(120));
    eventually("ready after both lists (the first pod watch broke)", || {
        state.is_ready()
    })
    .await;
    assert_eq!(readyz(app.clone()).await, StatusCode::OK);
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
    let args =
        json!({"Pod": pod("new", None, None), "Nodes": null, "NodeNames": ["gpu-a", "gpu-b"]});
    let filtered = call(&app, "/scheduler/filter", args).await;
    assert_eq!(filtered["NodeNames"], json!(["gpu-a", "gpu-b"]));
    let reply = call(
        &app,
        "/scheduler/bind",
        json!({"PodName": "new", "PodNamespace": "ml", "PodUID": "uid-new", "Node": "gpu-a"}),
    )
    .await;
    assert_eq!(reply, json!({"Error": ""}));
    let sent = fake.bindings.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        sent["metadata"]["annotations"]["vramfit.io/assigned-devices"], "0",
        "device 1 is taken by the old pod"
    );
    assert_eq!(
        sent["metadata"]["annotations"]["vramfit.io/vram"],
        "40960Mi"
    );
    assert_eq!(sent["metadata"]["uid"], "uid-new");
    assert_eq!(
        sent["target"],
        json!({"apiVersion": "v1", "kind": "Node", "name": "gpu-a"})
    );
    eventually("the watch confirms the bind", || state.reserved_pods() == 0).await;

    // gpu-a is full now: a bind there is refused with a reason and nothing is reserved.
    call(
        &app,
        "/scheduler/filter",
        json!({"Pod": pod("other", None, None), "Nodes": null, "NodeNames": ["gpu-a", "gpu-b"]}),
    )
    .await;
    let reply = call(
        &app,
        "/scheduler/bind",
        json!({"PodName": "other", "PodNamespace": "ml", "PodUID": "uid-other", "Node": "gpu-a"}),
    )
    .await;
    assert!(
        reply["Error"]
            .as_str()
            .unwrap()
            .contains("no longer fits gpu-a"),
        "{reply}"
    );
    assert!(state.read().placement("uid-other").is_none());

    // A slow API server: the bind answers within its timeout, and the reservation is kept
    // (the binding may still happen) rather than handed to another pod.
    call(
        &app,
        "/scheduler/filter",
        json!({"Pod": pod("slow", None, None), "Nodes": null, "NodeNames": ["gpu-b"]}),
    )
    .await;
    let started = std::time::Instant::now();
    let reply = call(
        &app,
        "/scheduler/bind",
        json!({"PodName": "slow", "PodNamespace": "ml", "PodUID": "uid-slow", "Node": "gpu-b"}),
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "well inside kube-scheduler's 5 s"
    );
    assert!(
        reply["Error"].as_str().unwrap().contains("did not answer"),
        "{reply}"
    );
    assert!(
        state.read().placement("uid-slow").is_some(),
        "ambiguous: kept until the watch or the TTL settles it"
    );

    // 409 "already assigned to the same node" is success: bind "new" again after the watch confirmed it.
    let reply = call(
        &app,
        "/scheduler/bind",
        json!({"PodName": "new", "PodNamespace": "ml", "PodUID": "uid-new", "Node": "gpu-a"}),
    )
    .await;
    assert_eq!(reply, json!({"Error": ""}));

    // The old pod is deleted: its device is free again.
    let old = fake.pods.lock().unwrap().remove("old").unwrap();
    fake.pod_events
        .send(json!({"type": "DELETED", "object": old}));
    eventually("the delete releases the device", || {
        state.read().placement("uid-old").is_none()
    })
    .await;
    // A node is removed and another added.
    *fake.nodes.lock().unwrap() = vec![node("gpu-a", 2), node("gpu-c", 4)];
    fake.node_events
        .send(json!({"type": "DELETED", "object": node("gpu-b", 1)}));
    fake.node_events
        .send(json!({"type": "ADDED", "object": node("gpu-c", 4)}));
    eventually("node events apply", || {
        let inventory = state.read();
        inventory.node("gpu-b").is_none()
            && inventory
                .node("gpu-c")
                .is_some_and(|n| n.devices.len() == 4)
    })
    .await;

    let metrics = app
        .clone()
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let text = String::from_utf8(
        metrics
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    assert!(
        text.contains("vramfit_watch_last_event_age_seconds{resource=\"pods\"}"),
        "{text}"
    );
    assert!(
        text.contains("vramfit_bind_conflicts_total{reason=\"no-longer-fits\"} 1"),
        "{text}"
    );
}
