//! The extender HTTP server (axum): `POST {prefix}/filter`, `/prioritize`, `/bind`, plus
//! `GET /healthz`, `/readyz`, `/metrics`, `/version`. Handlers translate the wire format to the
//! core and back; they hold no placement logic of their own.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::metrics::{Metrics, ReasonLabels, ScrapeInput};
use super::wire::{
    host_priorities_json, ExtenderArgs, ExtenderBindingArgs, ExtenderBindingResult,
    ExtenderFilterResult, Name, NodeListOut, PairMap, RawNodeList,
};
use crate::core::node::{NodeProblem, MAX_DEVICES_PER_NODE};
use crate::core::{build_node, pod_demand, NodeInfo};
use crate::extender::binder::BindTarget;
use crate::extender::listener::{self, Drain, Limits};
use crate::extender::state::ExtenderState;
use crate::kubernetes::objects::Node;
use crate::shutdown::shutdown_signal;

/// Settings of the HTTP layer (the `server:` section of the config file).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct ServerConfig {
    /// Prefix before the verbs, matching `urlPrefix`'s path (e.g. `/scheduler`).
    pub path_prefix: String,
    /// Largest request body accepted; larger gets 413.
    pub body_limit_bytes: usize,
    /// PEM certificate and key for HTTPS (`enableHTTPS`); both or neither.
    pub tls_cert_file: Option<PathBuf>,
    /// See `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// How long SIGTERM waits for in-flight requests.
    pub shutdown_grace_seconds: u64,
    /// A second, plain-HTTP listener with only `/metrics`, `/healthz`, `/readyz`, `/version`
    /// (for Prometheus and kubelet probes on the pod IP); none by default.
    pub metrics_listen: Option<SocketAddr>,
    /// Live mode: a bind's reservation that no pod event confirms is released after this.
    pub reservation_ttl_seconds: u64,
    /// Live mode: how long a Binding may take at the API server (keep it under `httpTimeout`).
    pub bind_timeout_millis: u64,
    /// Open connections at most per listener; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Time a client has to send a request's headers (and finish a TLS handshake), counted
    /// from when its connection opens or its previous response was sent; so an HTTP/1
    /// keep-alive connection with no new request for this long is closed too.
    pub header_read_timeout_seconds: u64,
    /// A connection that reads and writes nothing for this long is closed (HTTP/2 included).
    pub idle_timeout_seconds: u64,
    /// Live mode: the scheduler's leader-election Lease; only the replica whose scheduler
    /// holds it writes deletion costs (none: every replica writes).
    pub leader_lease: Option<crate::extender::lease::LeaseName>,
    /// This replica's name in that Lease's holder (default: the host name, which
    /// kube-scheduler's `<host name>_<uuid>` begins with).
    pub leader_identity: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            path_prefix: String::new(),
            body_limit_bytes: 64 * 1024 * 1024,
            tls_cert_file: None,
            tls_key_file: None,
            shutdown_grace_seconds: 10,
            metrics_listen: None,
            reservation_ttl_seconds: 120,
            bind_timeout_millis: 2500,
            max_connections: 512,
            header_read_timeout_seconds: 10,
            idle_timeout_seconds: 120,
            leader_lease: None,
            leader_identity: None,
        }
    }
}

/// Shared state of the handlers.
#[derive(Clone)]
pub struct App {
    /// The cluster state the handlers read and change.
    pub cluster: Arc<ExtenderState>,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
}

/// Builds the router.
pub fn router(app: App, server: &ServerConfig) -> Router {
    let prefix = server.path_prefix.trim_end_matches('/');
    let prefix = if prefix.is_empty() || prefix.starts_with('/') {
        prefix.to_string()
    } else {
        format!("/{prefix}")
    };
    Router::new()
        .route(&format!("{prefix}/filter"), post(filter))
        .route(&format!("{prefix}/prioritize"), post(prioritize))
        .route(&format!("{prefix}/bind"), post(bind))
        .layer(DefaultBodyLimit::max(server.body_limit_bytes))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        // Probes and scrapes are not traced: a 503 from /readyz before the state is ready is
        // an answer, not an error worth a log line.
        .merge(ops_routes())
        .with_state(app)
}

fn ops_routes() -> Router<App> {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/version", get(version))
        .route("/debug/workload", get(workload))
}

/// The operations router alone (`/healthz`, `/readyz`, `/metrics`, `/version`; no extender
/// verbs), for `--metrics-listen`: safe to expose to the pod network for probes and scraping.
pub fn ops_router(app: App) -> Router {
    ops_routes().with_state(app)
}

/// A request the server cannot read: answered 400 with `{"error": "…"}`.
#[derive(Debug)]
pub struct BadRequest(pub String);

impl IntoResponse for BadRequest {
    fn into_response(self) -> Response {
        (StatusCode::BAD_REQUEST, Json(json!({ "error": self.0 }))).into_response()
    }
}

/// A body that could not be read (too large: 413, cut off: 400) answered like every other
/// client error: its status with `{"error": "…"}`.
fn unreadable_body(app: &App, verb: &str, rejection: BytesRejection, started: Instant) -> Response {
    app.metrics
        .observe(verb, "bad-request", started.elapsed().as_secs_f64());
    let status = rejection.status();
    (status, Json(json!({ "error": rejection.body_text() }))).into_response()
}

fn bad_request(message: impl std::fmt::Display) -> BadRequest {
    BadRequest(message.to_string())
}

fn parse_args(body: &[u8]) -> Result<ExtenderArgs<'_>, BadRequest> {
    // One UTF-8 check of the whole body is cheaper than serde_json's check of every string
    // (thousands of node names) when reading from bytes.
    let body = std::str::from_utf8(body)
        .map_err(|e| bad_request(format!("invalid ExtenderArgs: body is not UTF-8: {e}")))?;
    let args: ExtenderArgs = serde_json::from_str(body)
        .map_err(|e| bad_request(format!("invalid ExtenderArgs: {e}")))?;
    if args.pod.is_none() {
        return Err(bad_request("invalid ExtenderArgs: missing Pod"));
    }
    Ok(args)
}

/// Most nodes the inventory may hold before Node objects from filter requests stop being
/// remembered (non-`nodeCacheCapable` mode); far above any real cluster's node count.
pub const MAX_NODES_FROM_REQUESTS: usize = 20_000;

/// Whether a node built from a request is of a size worth remembering: a Kubernetes node
/// name (at most 253 characters) and short notes.
fn storable(info: &NodeInfo) -> bool {
    info.name.len() <= 253 && info.notes.iter().map(String::len).sum::<usize>() <= 4096
}

/// Whether a pod's names are of the sizes Kubernetes allows (name 253, namespace 63, UID 128,
/// model label 63): only such pods' demands are remembered for a later bind, so a request
/// cannot leave megabytes behind.
fn names_of_kubernetes_size(pod: &crate::core::PodFacts) -> bool {
    pod.name.len() <= 253
        && pod.namespace.len() <= 63
        && pod.uid.len() <= 128
        && pod.labels.values().all(|v| v.len() <= 63)
        && pod.controller.as_ref().is_none_or(|c| c.len() <= 253)
}

/// The nodes of a request, resolved to the core's view: from the inventory by name
/// (`NodeNames`), or built from the Node objects sent (`Nodes`) with the ledger's occupancy.
enum Candidates<'a> {
    Names(&'a [Name<'a>]),
    Objects(Vec<(String, NodeInfo)>),
}

fn candidates<'a>(
    app: &App,
    names: Option<&'a [Name<'a>]>,
    nodes: Option<&RawNodeList>,
) -> Result<Candidates<'a>, BadRequest> {
    if let Some(names) = names {
        return Ok(Candidates::Names(names));
    }
    let Some(list) = nodes else {
        return Ok(Candidates::Names(&[]));
    };
    let now = SystemTime::now();
    let mut parsed = Vec::with_capacity(list.items.len());
    for raw in &list.items {
        let node: Node = serde_json::from_str(raw.get())
            .map_err(|e| bad_request(format!("invalid Node in Nodes.items: {e}")))?;
        let info = build_node(&node.facts(), &app.cluster.config, now);
        // A Node object in the request that claims more devices than a node can have is a
        // malformed request: answered 400 naming the node, nothing kept. (A watched Node, or
        // one named in NodeNames, is rejected per pod with the same text instead.)
        if let Some(NodeProblem::TooManyDevices { count, source }) = &info.problem {
            return Err(bad_request(format!(
                "invalid Node {:?} in Nodes.items: {source} claims {count} devices, more than {MAX_DEVICES_PER_NODE}",
                info.name
            )));
        }
        parsed.push(info);
    }
    // The Node objects kube-scheduler sends are the freshest view: keep them, so a later bind
    // (which carries only the node's name) re-checks against the same capacity. What a request
    // can leave behind is bounded: known nodes are updated in place, and a new one is kept only
    // while the inventory holds fewer than `MAX_NODES_FROM_REQUESTS` nodes and its names are of
    // Kubernetes size; otherwise it is answered from the request alone (with the ledger's
    // occupancy) and forgotten.
    let mut inventory = app.cluster.write();
    let mut out = Vec::with_capacity(parsed.len());
    for mut info in parsed {
        let name = info.name.clone();
        let keep = inventory.node(&name).is_some()
            || (inventory.node_count() < MAX_NODES_FROM_REQUESTS && storable(&info));
        if keep {
            inventory.upsert_node(info);
            if let Some(resolved) = inventory.node(&name) {
                out.push((name, resolved.clone()));
            }
        } else {
            inventory.apply_ledger(&mut info);
            out.push((name, info));
        }
    }
    Ok(Candidates::Objects(out))
}

async fn filter(State(app): State<App>, body: Result<Bytes, BytesRejection>) -> Response {
    let started = Instant::now();
    let body = match body {
        Ok(body) => body,
        Err(rejection) => return unreadable_body(&app, "filter", rejection, started),
    };
    let (outcome, response) = match filter_inner(&app, &body) {
        Ok((outcome, json)) => (
            outcome,
            ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        ),
        Err(bad) => ("bad-request", bad.into_response()),
    };
    app.metrics
        .observe("filter", outcome, started.elapsed().as_secs_f64());
    response
}

fn filter_inner(app: &App, body: &[u8]) -> Result<(&'static str, Vec<u8>), BadRequest> {
    let ExtenderArgs {
        pod,
        nodes,
        node_names,
    } = parse_args(body)?;
    let pod = pod.map(|p| p.facts()).unwrap_or_default();
    let demand = pod_demand(&pod, &app.cluster.config, &app.cluster.catalog);
    if names_of_kubernetes_size(&pod) {
        app.cluster.remember(&pod.ledger_id(), demand.clone());
    }
    let candidates = candidates(app, node_names.as_deref(), nodes.as_ref())?;
    let inventory = app.cluster.read();
    let outcome = match &candidates {
        Candidates::Names(names) => {
            crate::core::filter(inventory.nodes_named(names), &demand, &inventory)
        }
        Candidates::Objects(nodes) => crate::core::filter(
            nodes.iter().map(|(n, i)| (n.as_str(), Some(i))),
            &demand,
            &inventory,
        ),
    };
    let mut codes: std::collections::BTreeMap<&str, u64> = std::collections::BTreeMap::new();
    for rejected in &outcome.rejected {
        *codes.entry(rejected.code).or_default() += 1;
    }
    for (code, count) in codes {
        app.metrics
            .rejections
            .get_or_create(&ReasonLabels {
                reason: code.into(),
            })
            .inc_by(count);
    }
    let label = if outcome.feasible.is_empty() && !outcome.rejected.is_empty() {
        "rejected-all"
    } else {
        "ok"
    };
    let (nodes, node_names) = match (&candidates, nodes) {
        (Candidates::Objects(resolved), Some(list)) => {
            let keep: std::collections::HashSet<&str> = outcome.feasible.iter().copied().collect();
            // Survivors go back unchanged, in input order.
            let items = list
                .items
                .into_iter()
                .zip(resolved)
                .filter(|(_, (name, _))| keep.contains(name.as_str()))
                .map(|(raw, _)| raw)
                .collect();
            (
                Some(NodeListOut {
                    metadata: serde_json::Map::new(),
                    items,
                }),
                None,
            )
        }
        _ => (None, Some(outcome.feasible.clone())),
    };
    // Each distinct reason is written as JSON once and copied for every node it rejected.
    let reasons = outcome
        .messages
        .iter()
        .map(serde_json::value::to_raw_value)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_request(format!("encoding the reply: {e}")))?;
    let pairs = |unresolvable: bool| {
        let rejected = outcome.rejections(unresolvable);
        PairMap(rejected.map(|(node, i)| (node, &*reasons[i])).collect())
    };
    let result = ExtenderFilterResult {
        nodes,
        node_names,
        failed_nodes: pairs(false),
        failed_and_unresolvable_nodes: pairs(true),
        error: String::new(),
    };
    let json = result
        .to_json(body)
        .map_err(|e| bad_request(format!("encoding the reply: {e}")))?;
    Ok((label, json))
}

async fn prioritize(State(app): State<App>, body: Result<Bytes, BytesRejection>) -> Response {
    let started = Instant::now();
    let body = match body {
        Ok(body) => body,
        Err(rejection) => return unreadable_body(&app, "prioritize", rejection, started),
    };
    let (outcome, response) = match prioritize_inner(&app, &body) {
        Ok(json) => (
            "ok",
            ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        ),
        Err(bad) => ("bad-request", bad.into_response()),
    };
    app.metrics
        .observe("prioritize", outcome, started.elapsed().as_secs_f64());
    response
}

fn prioritize_inner(app: &App, body: &[u8]) -> Result<Vec<u8>, BadRequest> {
    let args = parse_args(body)?;
    let pod = args.pod.as_ref().map(|p| p.facts()).unwrap_or_default();
    let demand = pod_demand(&pod, &app.cluster.config, &app.cluster.catalog);
    let candidates = candidates(app, args.node_names.as_deref(), args.nodes.as_ref())?;
    let inventory = app.cluster.read();
    let scores = match &candidates {
        Candidates::Names(names) => crate::core::prioritize(
            inventory.nodes_named(names),
            &demand,
            &inventory,
            &app.cluster.config,
        ),
        Candidates::Objects(nodes) => crate::core::prioritize(
            nodes.iter().map(|(n, i)| (n.as_str(), Some(i))),
            &demand,
            &inventory,
            &app.cluster.config,
        ),
    };
    host_priorities_json(&scores, body).map_err(|e| bad_request(format!("encoding the reply: {e}")))
}

async fn bind(State(app): State<App>, body: Result<Bytes, BytesRejection>) -> Response {
    let started = Instant::now();
    let body = match body {
        Ok(body) => body,
        Err(rejection) => return unreadable_body(&app, "bind", rejection, started),
    };
    let args: ExtenderBindingArgs = match serde_json::from_slice(&body) {
        Ok(args) => args,
        Err(e) => {
            app.metrics
                .observe("bind", "bad-request", started.elapsed().as_secs_f64());
            return bad_request(format!("invalid ExtenderBindingArgs: {e}")).into_response();
        }
    };
    if args.pod_name.is_empty() || args.node.is_empty() {
        app.metrics
            .observe("bind", "bad-request", started.elapsed().as_secs_f64());
        return bad_request("invalid ExtenderBindingArgs: PodName and Node are required")
            .into_response();
    }
    let target = BindTarget {
        namespace: if args.pod_namespace.is_empty() {
            "default".into()
        } else {
            args.pod_namespace
        },
        name: args.pod_name,
        uid: args.pod_uid,
        node: args.node,
    };
    let (outcome, error) = match app.cluster.bind(&target).await {
        Ok(placement) => {
            tracing::info!(pod = %placement.pod, node = %placement.node, devices = ?placement.shares, "bound");
            ("ok", String::new())
        }
        Err(e) => {
            tracing::warn!(pod = %target.name, node = %target.node, error = %e, "bind refused");
            if let Some(reason) = e.conflict() {
                app.metrics
                    .bind_conflicts
                    .get_or_create(&ReasonLabels {
                        reason: reason.into(),
                    })
                    .inc();
            }
            ("error", e.to_string())
        }
    };
    app.metrics
        .observe("bind", outcome, started.elapsed().as_secs_f64());
    Json(ExtenderBindingResult { error }).into_response()
}

async fn readyz(State(app): State<App>) -> Response {
    if app.cluster.is_ready() {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}

async fn metrics(State(app): State<App>) -> Response {
    // Copy what the gauges need under the read lock, then build and encode them on a blocking
    // thread: a scrape never holds the lock or an async worker for the whole rebuild.
    let input = ScrapeInput::of(&app.cluster);
    let headroom = app.cluster.config.headroom_percent;
    let metrics = app.metrics.clone();
    match tokio::task::spawn_blocking(move || metrics.render(input, headroom)).await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("rendering metrics failed: {error}"),
        )
            .into_response(),
    }
}

/// `GET /debug/workload`: the workload model the fragmentation term measures against (its
/// parameters, every kept shape with its share, and the published profile), read-only.
async fn workload(State(app): State<App>) -> Response {
    let report = app.cluster.read().packing().model().report();
    Json(report).into_response()
}

async fn version() -> Response {
    Json(json!({ "name": env!("CARGO_PKG_NAME"), "version": env!("CARGO_PKG_VERSION") }))
        .into_response()
}

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Only one of `tlsCertFile` and `tlsKeyFile` is set.
    #[error("TLS needs both tlsCertFile and tlsKeyFile")]
    TlsHalfConfigured,
    /// The certificate or key could not be loaded.
    #[error("TLS: {0}")]
    Tls(std::io::Error),
    /// The listen address could not be bound.
    #[error("listening on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The underlying I/O error.
        source: std::io::Error,
    },
}

/// Serves until SIGTERM or Ctrl-C, then drains in-flight requests for up to the grace period.
pub async fn serve(app: App, server: &ServerConfig, addr: SocketAddr) -> Result<(), ServeError> {
    serve_with_ops(app, server, addr, None).await
}

/// Like [`serve`], plus the operations routes alone on `ops_addr` (plain HTTP) when given.
pub async fn serve_with_ops(
    app: App,
    server: &ServerConfig,
    addr: SocketAddr,
    ops_addr: Option<SocketAddr>,
) -> Result<(), ServeError> {
    let bind = |addr: SocketAddr| {
        std::net::TcpListener::bind(addr).map_err(|source| ServeError::Listen { addr, source })
    };
    let listener = bind(addr)?;
    let ops = ops_addr.map(bind).transpose()?;
    serve_on(app, server, listener, ops, shutdown_signal()).await
}

/// Serves on bound listeners (the extender's, and optionally the operations-only one) until
/// `shutdown` completes, then drains: the listeners close, every response carries
/// `Connection: close`, requests already sent are answered, and open connections get up to
/// `shutdownGraceSeconds` to finish. See [`super::listener`].
pub async fn serve_on(
    app: App,
    server: &ServerConfig,
    listener: std::net::TcpListener,
    ops: Option<std::net::TcpListener>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let addr = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let limits = Limits {
        max_connections: server.max_connections.max(1),
        header_read_timeout: Duration::from_secs(server.header_read_timeout_seconds.max(1)),
        idle_timeout: Duration::from_secs(server.idle_timeout_seconds.max(1)),
        grace: Duration::from_secs(server.shutdown_grace_seconds),
    };
    let grace = limits.grace;
    let drain = Drain::on(async move {
        shutdown.await;
        tracing::info!(
            grace_seconds = grace.as_secs(),
            "shutting down, draining in-flight requests"
        );
    });
    let tls = match (&server.tls_cert_file, &server.tls_key_file) {
        (Some(cert), Some(key)) => {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let config = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                .await
                .map_err(ServeError::Tls)?;
            Some(axum_server::tls_rustls::RustlsAcceptor::new(config))
        }
        (None, None) => None,
        _ => return Err(ServeError::TlsHalfConfigured),
    };
    let to_tokio = |listener: std::net::TcpListener| {
        let addr = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        listener
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(listener))
            .map_err(|source| ServeError::Listen { addr, source })
    };
    let mut ops_task = None;
    if let Some(ops) = ops {
        let ops_listener = to_tokio(ops)?;
        if let Ok(ops_addr) = ops_listener.local_addr() {
            tracing::info!(%ops_addr, "serving /metrics, /healthz, /readyz, /version");
        }
        ops_task = Some(tokio::spawn(listener::run(
            ops_listener,
            ops_router(app.clone()),
            None,
            limits,
            drain.clone(),
        )));
    }
    let main_listener = to_tokio(listener)?;
    tracing::info!(%addr, tls = tls.is_some(), "serving the extender");
    listener::run(main_listener, router(app, server), tls, limits, drain).await;
    if let Some(task) = ops_task {
        let _ = task.await;
    }
    Ok(())
}
