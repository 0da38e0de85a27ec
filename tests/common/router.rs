//! Calls to an in-process router (the extender's or the ops listener's), without a socket.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

use vramfit::extender::http::{router, App, ServerConfig};
use vramfit::extender::metrics::Metrics;
use vramfit::extender::state::ExtenderState;

/// The extender's router over `state`, verbs under `/scheduler`, fresh metrics.
pub fn extender(state: Arc<ExtenderState>) -> Router {
    let server = ServerConfig {
        path_prefix: "/scheduler".into(),
        ..ServerConfig::default()
    };
    extender_with(state, &server)
}

/// The extender's router over `state` with the given server settings.
pub fn extender_with(state: Arc<ExtenderState>, server: &ServerConfig) -> Router {
    let app = App {
        cluster: state,
        metrics: Arc::new(Metrics::default()),
    };
    router(app, server)
}

/// One request; the status and the body's bytes. POSTs carry `content-type: application/json`.
pub async fn send(
    app: &Router,
    method: &str,
    path: &str,
    body: impl Into<Body>,
) -> (StatusCode, Bytes) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(body.into())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, bytes)
}

/// POSTs `body`; the status and the reply as JSON (a body that is not JSON comes back as a
/// JSON string).
pub async fn post(app: &Router, path: &str, body: impl Into<Body>) -> (StatusCode, Value) {
    let (status, bytes) = send(app, "POST", path, body).await;
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, value)
}

/// POSTs a JSON value and expects 200; the reply.
pub async fn call(app: &Router, path: &str, body: Value) -> Value {
    let (status, reply) = post(app, path, body.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{path}: {reply}");
    reply
}

/// GETs `path`; the status and the body as text.
pub async fn get(app: &Router, path: &str) -> (StatusCode, String) {
    let (status, bytes) = send(app, "GET", path, Body::empty()).await;
    (status, String::from_utf8_lossy(&bytes).into())
}
