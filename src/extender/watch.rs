//! Live Kubernetes mode: watchers on Nodes and Pods (kube-runtime, with backoff) keep the
//! cluster state current, a sweeper expires unconfirmed reservations, and [`KubeBinder`] creates
//! Bindings that carry the device assignment. Objects are converted to the lean types of
//! [`crate::kubernetes::objects`] at once, so only what placement needs is kept.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node as ApiNode, Pod as ApiPod};
use kube::api::Api;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Client;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::extender::state::{ExtenderState, WatchedResource};
use crate::kubernetes::objects::{Node, Pod};

fn lean<T: Serialize, U: DeserializeOwned>(object: &T) -> Result<U, String> {
    serde_json::to_value(object)
        .and_then(serde_json::from_value)
        .map_err(|e| e.to_string())
}

/// A lean object type the live mode watches, and what its events do to the cluster state.
trait Watched: DeserializeOwned + Sized {
    /// The k8s-openapi type the API server sends.
    type Api: kube::Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug
        + Send
        + 'static;
    const RESOURCE: WatchedResource;
    /// Identity in a relist's "seen" set.
    fn key(&self) -> String;
    fn apply(&self, state: &ExtenderState);
    fn delete(&self, state: &ExtenderState);
    /// After a full relist: forget what the list no longer has.
    fn retain(state: &ExtenderState, seen: &HashSet<String>);
}

impl Watched for Node {
    type Api = ApiNode;
    const RESOURCE: WatchedResource = WatchedResource::Nodes;
    fn key(&self) -> String {
        self.metadata.name.clone()
    }
    fn apply(&self, state: &ExtenderState) {
        state.apply_node(self, SystemTime::now());
    }
    fn delete(&self, state: &ExtenderState) {
        state.delete_node(&self.metadata.name);
    }
    fn retain(state: &ExtenderState, seen: &HashSet<String>) {
        state.retain_nodes(seen);
    }
}

impl Watched for Pod {
    type Api = ApiPod;
    const RESOURCE: WatchedResource = WatchedResource::Pods;
    fn key(&self) -> String {
        self.facts().ledger_id()
    }
    fn apply(&self, state: &ExtenderState) {
        state.apply_pod(self);
    }
    fn delete(&self, state: &ExtenderState) {
        state.delete_pod(self);
    }
    fn retain(state: &ExtenderState, seen: &HashSet<String>) {
        state.retain_pods(seen);
    }
}

/// Watches one resource until the stream ends (it does not: the watcher retries with backoff).
/// A malformed object is logged and skipped; a failing watch is counted and retried while the
/// state keeps answering from what it knows.
async fn watch<T: Watched>(client: Client, state: Arc<ExtenderState>) {
    let resource = T::RESOURCE;
    let stream = watcher(Api::<T::Api>::all(client)).default_backoff();
    futures::pin_mut!(stream);
    let mut seen: Option<HashSet<String>> = None;
    while let Some(event) = stream.next().await {
        let health = &state.health;
        match event {
            Err(error) => {
                health.error(resource);
                tracing::warn!(?resource, %error, "watch failed; retrying with backoff, answering from the last known state");
                continue;
            }
            Ok(Event::Init) => seen = Some(HashSet::new()),
            Ok(Event::InitDone) => {
                if let Some(seen) = seen.take() {
                    T::retain(&state, &seen);
                }
                health.synced(resource);
                if health.is_synced() && !state.is_ready() {
                    tracing::info!("initial lists of nodes and pods are in; ready");
                    state.set_ready(true);
                }
            }
            Ok(Event::InitApply(object)) | Ok(Event::Apply(object)) => {
                match lean::<_, T>(&object) {
                    Ok(item) => {
                        if let Some(seen) = seen.as_mut() {
                            seen.insert(item.key());
                        }
                        item.apply(&state);
                    }
                    Err(error) => tracing::warn!(?resource, %error, "skipping a malformed object"),
                }
            }
            Ok(Event::Delete(object)) => match lean::<_, T>(&object) {
                Ok(item) => item.delete(&state),
                Err(error) => {
                    tracing::warn!(?resource, %error, "skipping a malformed deleted object")
                }
            },
        }
        health.touch(resource);
    }
}

/// Watches Nodes (see [`watch`]).
pub async fn watch_nodes(client: Client, state: Arc<ExtenderState>) {
    watch::<Node>(client, state).await
}

/// Watches Pods (see [`watch`]).
pub async fn watch_pods(client: Client, state: Arc<ExtenderState>) {
    watch::<Pod>(client, state).await
}

fn watcher<K>(api: Api<K>) -> impl futures::Stream<Item = Result<Event<K>, watcher::Error>>
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    watcher::watcher(api, watcher::Config::default())
}

/// Releases reservations no pod event confirmed within `ttl`, every `every`.
pub async fn sweep_reservations(state: Arc<ExtenderState>, ttl: Duration, every: Duration) {
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
pub fn spawn_live(client: Client, state: Arc<ExtenderState>, reservation_ttl: Duration) {
    tokio::spawn(watch_nodes(client.clone(), state.clone()));
    tokio::spawn(watch_pods(client, state.clone()));
    tokio::spawn(sweep_reservations(
        state,
        reservation_ttl,
        Duration::from_secs(5),
    ));
}
