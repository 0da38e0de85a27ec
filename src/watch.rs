//! Live Kubernetes mode: watchers on Nodes and Pods (kube-runtime, with backoff) keep the
//! cluster state current, a sweeper expires unconfirmed reservations, and [`KubeBinder`] creates
//! Bindings that carry the device assignment. Objects are converted to the lean types of
//! [`crate::k8s`] at once, so only what placement needs is kept.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node as ApiNode, Pod as ApiPod};
use kube::api::{Api, PostParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Client;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

use crate::cluster::{
    binding_annotations, BindFailure, BindTarget, Binder, BoxFuture, ClusterState, WatchedResource,
};
use crate::core::Placement;
use crate::k8s::{Node, Pod};

/// Creates Bindings through the API server (RBAC: `create` on `pods/binding`).
pub struct KubeBinder {
    client: Client,
    timeout: Duration,
}

impl KubeBinder {
    /// A binder that gives the API server `timeout` per binding (keep it well under
    /// kube-scheduler's `httpTimeout`).
    pub fn new(client: Client, timeout: Duration) -> Self {
        KubeBinder { client, timeout }
    }
}

/// The Binding object for a placement.
pub fn binding_object(target: &BindTarget, placement: &Placement) -> Value {
    let mut metadata = json!({
        "name": target.name,
        "namespace": target.namespace,
        "annotations": binding_annotations(placement),
    });
    if !target.uid.is_empty() {
        metadata["uid"] = json!(target.uid);
    }
    json!({
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": metadata,
        "target": {"apiVersion": "v1", "kind": "Node", "name": target.node},
    })
}

impl Binder for KubeBinder {
    fn bind<'a>(
        &'a self,
        target: &'a BindTarget,
        placement: &'a Placement,
    ) -> BoxFuture<'a, Result<(), BindFailure>> {
        Box::pin(async move {
            let api: Api<ApiPod> = Api::namespaced(self.client.clone(), &target.namespace);
            let body = binding_object(target, placement);
            let params = PostParams::default();
            let call =
                api.create_subresource::<Value, Value>("binding", &target.name, &params, &body);
            match tokio::time::timeout(self.timeout, call).await {
                Err(_) => Err(BindFailure {
                    message: format!("the API server did not answer within {:?}", self.timeout),
                    definite: false,
                }),
                Ok(Ok(_)) => Ok(()),
                Ok(Err(kube::Error::Api(status))) => {
                    let same_node = format!("already assigned to node \"{}\"", target.node);
                    if status.code == 409 && status.message.contains(&same_node) {
                        return Ok(());
                    }
                    Err(BindFailure {
                        message: format!("{} ({})", status.message, status.code),
                        definite: (400..500).contains(&status.code),
                    })
                }
                Ok(Err(other)) => Err(BindFailure {
                    message: other.to_string(),
                    definite: false,
                }),
            }
        })
    }
}

fn lean<T: Serialize, U: DeserializeOwned>(object: &T) -> Result<U, String> {
    serde_json::to_value(object)
        .and_then(serde_json::from_value)
        .map_err(|e| e.to_string())
}

/// Watches Nodes until the stream ends (it does not: the watcher retries with backoff).
pub async fn watch_nodes(client: Client, state: Arc<ClusterState>) {
    let stream = watcher(Api::<ApiNode>::all(client)).default_backoff();
    futures::pin_mut!(stream);
    let mut seen: Option<HashSet<String>> = None;
    while let Some(event) = stream.next().await {
        let health = &state.health;
        match event {
            Err(error) => {
                health.error(WatchedResource::Nodes);
                tracing::warn!(%error, "node watch failed; retrying with backoff, answering from the last known state");
                continue;
            }
            Ok(Event::Init) => seen = Some(HashSet::new()),
            Ok(Event::InitDone) => {
                if let Some(seen) = seen.take() {
                    state.retain_nodes(&seen);
                }
                health.synced(WatchedResource::Nodes);
                if health.is_synced() && !state.is_ready() {
                    tracing::info!("initial lists of nodes and pods are in; ready");
                    state.set_ready(true);
                }
            }
            Ok(Event::InitApply(object)) | Ok(Event::Apply(object)) => {
                match lean::<_, Node>(&object) {
                    Ok(node) => {
                        if let Some(seen) = seen.as_mut() {
                            seen.insert(node.metadata.name.clone());
                        }
                        state.apply_node(&node, SystemTime::now());
                    }
                    Err(error) => tracing::warn!(%error, "skipping a malformed Node"),
                }
            }
            Ok(Event::Delete(object)) => {
                if let Some(name) = object.metadata.name.as_deref() {
                    state.delete_node(name);
                }
            }
        }
        health.touch(WatchedResource::Nodes);
    }
}

/// Watches Pods until the stream ends (it does not: the watcher retries with backoff).
pub async fn watch_pods(client: Client, state: Arc<ClusterState>) {
    let stream = watcher(Api::<ApiPod>::all(client)).default_backoff();
    futures::pin_mut!(stream);
    let mut seen: Option<HashSet<String>> = None;
    while let Some(event) = stream.next().await {
        let health = &state.health;
        match event {
            Err(error) => {
                health.error(WatchedResource::Pods);
                tracing::warn!(%error, "pod watch failed; retrying with backoff, answering from the last known state");
                continue;
            }
            Ok(Event::Init) => seen = Some(HashSet::new()),
            Ok(Event::InitDone) => {
                if let Some(seen) = seen.take() {
                    state.retain_pods(&seen);
                }
                health.synced(WatchedResource::Pods);
                if health.is_synced() && !state.is_ready() {
                    tracing::info!("initial lists of nodes and pods are in; ready");
                    state.set_ready(true);
                }
            }
            Ok(Event::InitApply(object)) | Ok(Event::Apply(object)) => {
                match lean::<_, Pod>(&object) {
                    Ok(pod) => {
                        if let Some(seen) = seen.as_mut() {
                            seen.insert(pod.facts().ledger_id());
                        }
                        state.apply_pod(&pod);
                    }
                    Err(error) => tracing::warn!(%error, "skipping a malformed Pod"),
                }
            }
            Ok(Event::Delete(object)) => match lean::<_, Pod>(&object) {
                Ok(pod) => state.delete_pod(&pod),
                Err(error) => tracing::warn!(%error, "skipping a malformed deleted Pod"),
            },
        }
        health.touch(WatchedResource::Pods);
    }
}

fn watcher<K>(api: Api<K>) -> impl futures::Stream<Item = Result<Event<K>, watcher::Error>>
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    watcher::watcher(api, watcher::Config::default())
}

/// Releases reservations no pod event confirmed within `ttl`, every `every`.
pub async fn sweep_reservations(state: Arc<ClusterState>, ttl: Duration, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let expired = state.expire_reservations(Instant::now(), ttl);
        if expired > 0 {
            tracing::warn!(
                expired,
                ttl_seconds = ttl.as_secs(),
                "released reservations no pod event confirmed"
            );
        }
    }
}

/// Starts the watchers and the sweeper; the state turns ready once both initial lists are in.
pub fn spawn_live(client: Client, state: Arc<ClusterState>, reservation_ttl: Duration) {
    tokio::spawn(watch_nodes(client.clone(), state.clone()));
    tokio::spawn(watch_pods(client, state.clone()));
    tokio::spawn(sweep_reservations(
        state,
        reservation_ttl,
        Duration::from_secs(5),
    ));
}
