//! One fake Kubernetes API server on loopback, for every test that talks to one (live mode, the
//! binder, `place --kubeconfig`, the agent's Node patch, the RBAC check, the built binary).
//!
//! It serves core/v1 the way the real one does for the calls vramfit makes: node and pod lists
//! (paged on request), watches that replay every event after the requested resourceVersion and
//! then stay open, `GET`/`PATCH` (JSON merge patch) of a node, `PATCH` of a pod, and `pods/binding` (201, 404 for
//! an unknown pod, 409 for one already bound). Every request is recorded. It runs on its own
//! thread and runtime, so a test may use a paused clock or no runtime at all.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use tokio::sync::{broadcast, Notify};

/// One request the fake received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: String,
}

impl Recorded {
    /// A watch (`?watch=true` or `?watch=1`).
    pub fn is_watch(&self) -> bool {
        query_value(&self.query, "watch").is_some_and(|w| w == "true" || w == "1")
    }

    /// A query parameter, decoded.
    pub fn param(&self, key: &str) -> Option<String> {
        query_value(&self.query, key)
    }
}

/// What the fake serves before the test starts it.
#[derive(Default)]
pub struct FakeApiBuilder {
    nodes: Vec<Value>,
    pods: Vec<Value>,
    node_page_size: Option<usize>,
    hold_pod_list: bool,
    failing_pod_watches: u32,
}

impl FakeApiBuilder {
    /// Adds Node objects.
    pub fn nodes(mut self, nodes: impl IntoIterator<Item = Value>) -> Self {
        self.nodes.extend(nodes);
        self
    }
    /// Adds Pod objects.
    pub fn pods(mut self, pods: impl IntoIterator<Item = Value>) -> Self {
        self.pods.extend(pods);
        self
    }
    /// Serves node lists in pages of `size`, chained by `continue` tokens.
    pub fn node_pages_of(mut self, size: usize) -> Self {
        self.node_page_size = Some(size);
        self
    }
    /// Pod lists wait until [`FakeApi::release_pod_list`].
    pub fn hold_pod_list(mut self) -> Self {
        self.hold_pod_list = true;
        self
    }
    /// The first `count` pod watches fail with a 500 (a watcher must back off and relist).
    pub fn failing_pod_watches(mut self, count: u32) -> Self {
        self.failing_pod_watches = count;
        self
    }
    /// Starts serving on a free loopback port.
    pub fn start(self) -> FakeApi {
        let shared = Arc::new(Shared {
            nodes: Mutex::new(self.nodes),
            pods: Mutex::new(
                self.pods
                    .into_iter()
                    .map(|p| (p["metadata"]["name"].as_str().unwrap().to_string(), p))
                    .collect(),
            ),
            node_events: Events::new(),
            pod_events: Events::new(),
            requests: Mutex::default(),
            arrived: Notify::new(),
            node_page_size: self.node_page_size,
            pod_list_open: AtomicBool::new(!self.hold_pod_list),
            pod_list_released: Notify::new(),
            failing_pod_watches: AtomicU32::new(self.failing_pod_watches),
            held_bindings: Mutex::default(),
            leases: Mutex::default(),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = shared.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let app = axum::Router::new().fallback(
                    move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                        let shared = serving.clone();
                        async move { shared.handle(method, uri, headers, body).await }
                    },
                );
                tokio::select! {
                    _ = axum::serve(listener, app) => {}
                    _ = stopped => {}
                }
            });
        });
        FakeApi {
            shared,
            port,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

/// A running fake API server; stops when dropped.
pub struct FakeApi {
    shared: Arc<Shared>,
    port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl FakeApi {
    /// What to serve.
    pub fn builder() -> FakeApiBuilder {
        FakeApiBuilder::default()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A client for this server (call inside a tokio runtime).
    pub fn client(&self) -> kube::Client {
        kube::Client::try_from(kube::Config::new(self.url().parse().unwrap())).unwrap()
    }

    /// A kubeconfig whose current context `fake` is this server.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
             clusters: [{{name: fake, cluster: {{server: '{}'}}}}]\n\
             users: [{{name: fake, user: {{}}}}]\n\
             contexts: [{{name: fake, context: {{cluster: fake, user: fake}}}}]\n",
            self.url()
        )
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// Forgets the requests so far.
    pub fn clear_requests(&self) {
        self.shared.requests.lock().unwrap().clear();
    }

    /// The bodies of the Bindings posted so far, as JSON.
    pub fn bindings(&self) -> Vec<Value> {
        self.requests()
            .iter()
            .filter(|r| r.method == "POST" && r.path.ends_with("/binding"))
            .map(|r| serde_json::from_str(&r.body).unwrap())
            .collect()
    }

    /// Waits (without a clock) until the recorded requests satisfy `check`.
    pub async fn until(&self, check: impl Fn(&[Recorded]) -> bool) {
        loop {
            let arrived = self.shared.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            if check(&self.shared.requests.lock().unwrap()) {
                return;
            }
            arrived.await;
        }
    }

    /// Lets held pod lists answer.
    pub fn release_pod_list(&self) {
        self.shared.pod_list_open.store(true, Ordering::SeqCst);
        self.shared.pod_list_released.notify_waiters();
    }

    /// Bindings of the pod `name` get no answer until the server stops (a hung API server).
    pub fn hang_bindings_of(&self, name: &str) {
        self.shared
            .held_bindings
            .lock()
            .unwrap()
            .insert(name.to_string());
    }

    /// The stored pod `name`.
    pub fn pod(&self, name: &str) -> Option<Value> {
        self.shared.pods.lock().unwrap().get(name).cloned()
    }

    /// Deletes the pod `name` and sends its DELETED event.
    pub fn delete_pod(&self, name: &str) {
        let pod = self.shared.pods.lock().unwrap().remove(name).unwrap();
        self.shared.pod_events.send("DELETED", pod);
    }

    /// Adds (or replaces) a node and sends its ADDED (MODIFIED) event.
    pub fn put_node(&self, node: Value) {
        let name = node["metadata"]["name"].clone();
        let mut nodes = self.shared.nodes.lock().unwrap();
        let kind = match nodes.iter_mut().find(|n| n["metadata"]["name"] == name) {
            Some(old) => {
                *old = node.clone();
                "MODIFIED"
            }
            None => {
                nodes.push(node.clone());
                "ADDED"
            }
        };
        drop(nodes);
        self.shared.node_events.send(kind, node);
    }

    /// Creates or replaces Lease `namespace/name`, held by `holder`.
    pub fn put_lease(&self, namespace: &str, name: &str, holder: &str) {
        let lease = serde_json::json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15},
        });
        self.shared
            .leases
            .lock()
            .unwrap()
            .insert(format!("{namespace}/{name}"), lease);
    }

    /// Deletes the node `name` and sends its DELETED event.
    pub fn delete_node(&self, name: &str) {
        let mut nodes = self.shared.nodes.lock().unwrap();
        let at = nodes
            .iter()
            .position(|n| n["metadata"]["name"] == name)
            .unwrap();
        let node = nodes.remove(at);
        drop(nodes);
        self.shared.node_events.send("DELETED", node);
    }
}

struct Shared {
    nodes: Mutex<Vec<Value>>,
    /// By name (the tests' pod names are unique across namespaces).
    pods: Mutex<BTreeMap<String, Value>>,
    node_events: Events,
    pod_events: Events,
    requests: Mutex<Vec<Recorded>>,
    arrived: Notify,
    node_page_size: Option<usize>,
    pod_list_open: AtomicBool,
    pod_list_released: Notify,
    failing_pod_watches: AtomicU32,
    held_bindings: Mutex<BTreeSet<String>>,
    /// Leases by `namespace/name`.
    leases: Mutex<BTreeMap<String, Value>>,
}

/// The events of one resource, numbered from resourceVersion 11 on (lists start at 10).
struct Events {
    live: broadcast::Sender<(u64, String)>,
    history: Mutex<Vec<String>>,
}

impl Events {
    fn new() -> Self {
        Events {
            live: broadcast::channel(256).0,
            history: Mutex::default(),
        }
    }

    /// The resourceVersion of the latest event (10 before any).
    fn version(&self) -> u64 {
        10 + self.history.lock().unwrap().len() as u64
    }

    fn send(&self, kind: &str, mut object: Value) {
        let mut history = self.history.lock().unwrap();
        let version = 11 + history.len() as u64;
        object["metadata"]["resourceVersion"] = json!(version.to_string());
        let line = json!({"type": kind, "object": object}).to_string() + "\n";
        history.push(line.clone());
        let _ = self.live.send((version, line));
    }

    /// A watch from `since`: the events after it, then the live ones.
    fn watch(&self, since: u64) -> Response {
        let history = self.history.lock().unwrap();
        let live = self.live.subscribe();
        let past: Vec<String> = history
            .iter()
            .skip((since - 10) as usize)
            .cloned()
            .collect();
        let last = 10 + history.len() as u64;
        drop(history);
        let replay = futures::stream::iter(past.into_iter().map(Ok::<_, Infallible>));
        let live = futures::stream::unfold(live, move |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok((version, _)) if version <= last => continue,
                    Ok((_, line)) => return Some((Ok::<_, Infallible>(line), rx)),
                    Err(_) => return None,
                }
            }
        });
        Response::builder()
            .header("content-type", "application/json")
            .body(Body::from_stream(futures::StreamExt::chain(replay, live)))
            .unwrap()
    }
}

fn query_value(query: &str, key: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

fn status(code: StatusCode, reason: &str, message: String) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                      "message": message, "reason": reason, "code": code.as_u16()});
    (code, axum::Json(body)).into_response()
}

fn list(kind: &str, version: u64, items: Vec<Value>, next: Option<String>) -> Response {
    let mut metadata = json!({"resourceVersion": version.to_string()});
    if let Some(token) = next {
        metadata["continue"] = json!(token);
    }
    axum::Json(json!({"apiVersion": "v1", "kind": kind, "metadata": metadata, "items": items}))
        .into_response()
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(fields) => {
            if !target.is_object() {
                *target = json!({});
            }
            let object = target.as_object_mut().unwrap();
            for (key, value) in fields {
                if value.is_null() {
                    object.remove(key);
                } else {
                    merge_patch(object.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        other => *target = other.clone(),
    }
}

impl Shared {
    async fn handle(&self, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
        let request = Recorded {
            method: method.to_string(),
            path: uri.path().to_string(),
            query: uri.query().unwrap_or("").to_string(),
            content_type: headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string(),
            body: String::from_utf8_lossy(&body).into_owned(),
        };
        self.requests.lock().unwrap().push(request.clone());
        self.arrived.notify_waiters();
        let since = query_value(&request.query, "resourceVersion")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(10)
            .max(10);
        let parts: Vec<&str> = request.path.trim_start_matches('/').split('/').collect();
        match (method.as_str(), parts.as_slice()) {
            ("GET", ["api", "v1", "nodes"]) if request.is_watch() => self.node_events.watch(since),
            ("GET", ["api", "v1", "nodes"]) => self.list_nodes(&request.query),
            ("GET", ["api", "v1", "pods"] | ["api", "v1", "namespaces", _, "pods"])
                if request.is_watch() =>
            {
                let failing = &self.failing_pod_watches;
                if failing
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
                {
                    return (StatusCode::INTERNAL_SERVER_ERROR, "etcd hiccup").into_response();
                }
                self.pod_events.watch(since)
            }
            ("GET", ["api", "v1", "pods"] | ["api", "v1", "namespaces", _, "pods"]) => {
                loop {
                    let released = self.pod_list_released.notified();
                    tokio::pin!(released);
                    released.as_mut().enable();
                    if self.pod_list_open.load(Ordering::SeqCst) {
                        break;
                    }
                    released.await;
                }
                let items = self.pods.lock().unwrap().values().cloned().collect();
                list("PodList", self.pod_events.version(), items, None)
            }
            ("GET" | "PATCH", ["api", "v1", "nodes", name]) => {
                let mut nodes = self.nodes.lock().unwrap();
                let Some(node) = nodes.iter_mut().find(|n| n["metadata"]["name"] == *name) else {
                    return status(
                        StatusCode::NOT_FOUND,
                        "NotFound",
                        format!("nodes \"{name}\" not found"),
                    );
                };
                if method == Method::PATCH {
                    let patch: Value = serde_json::from_str(&request.body).unwrap();
                    merge_patch(node, &patch);
                }
                axum::Json(node.clone()).into_response()
            }
            ("PATCH", ["api", "v1", "namespaces", _, "pods", name]) => {
                let mut pods = self.pods.lock().unwrap();
                let Some(pod) = pods.get_mut(*name) else {
                    return status(
                        StatusCode::NOT_FOUND,
                        "NotFound",
                        format!("pods \"{name}\" not found"),
                    );
                };
                let patch: Value = serde_json::from_str(&request.body).unwrap();
                merge_patch(pod, &patch);
                let pod = pod.clone();
                drop(pods);
                self.pod_events.send("MODIFIED", pod.clone());
                axum::Json(pod).into_response()
            }
            ("POST", ["api", "v1", "namespaces", _, "pods", name, "binding"]) => {
                self.bind(name, &request.body).await
            }
            ("GET", ["apis", "coordination.k8s.io", "v1", "namespaces", ns, "leases", name]) => {
                match self.leases.lock().unwrap().get(&format!("{ns}/{name}")) {
                    Some(lease) => axum::Json(lease.clone()).into_response(),
                    None => status(
                        StatusCode::NOT_FOUND,
                        "NotFound",
                        format!("leases.coordination.k8s.io \"{name}\" not found"),
                    ),
                }
            }
            _ => status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                format!(
                    "the fake API server does not serve {method} {}",
                    request.path
                ),
            ),
        }
    }

    fn list_nodes(&self, query: &str) -> Response {
        let nodes = self.nodes.lock().unwrap().clone();
        let version = self.node_events.version();
        let Some(size) = self.node_page_size else {
            return list("NodeList", version, nodes, None);
        };
        let from: usize = query_value(query, "continue")
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        let to = (from + size).min(nodes.len());
        let next = (to < nodes.len()).then(|| to.to_string());
        list("NodeList", version, nodes[from..to].to_vec(), next)
    }

    async fn bind(&self, name: &str, body: &str) -> Response {
        if self.held_bindings.lock().unwrap().contains(name) {
            std::future::pending::<()>().await;
        }
        let binding: Value = serde_json::from_str(body).unwrap();
        let mut pods = self.pods.lock().unwrap();
        let Some(pod) = pods.get_mut(name) else {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("pods \"{name}\" not found"),
            );
        };
        if let Some(bound) = pod["spec"]["nodeName"].as_str() {
            let message = format!(
                "Operation cannot be fulfilled on pods/binding \"{name}\": pod {name} is already assigned to node \"{bound}\""
            );
            return status(StatusCode::CONFLICT, "Conflict", message);
        }
        pod["spec"]["nodeName"] = binding["target"]["name"].clone();
        pod["status"]["phase"] = json!("Running");
        if let Some(annotations) = binding["metadata"]["annotations"].as_object() {
            for (key, value) in annotations {
                pod["metadata"]["annotations"][key] = value.clone();
            }
        }
        let pod = pod.clone();
        drop(pods);
        self.pod_events.send("MODIFIED", pod);
        let created = json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                             "status": "Success", "code": 201});
        (StatusCode::CREATED, axum::Json(created)).into_response()
    }
}
