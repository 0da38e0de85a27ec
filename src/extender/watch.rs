//! Live Kubernetes mode: watchers on Nodes and Pods (kube-runtime, with backoff) keep the
//! extender state current, a sweeper expires unconfirmed reservations, and
//! [`KubeBinder`](crate::extender::binder::KubeBinder) creates Bindings that carry the device
//! assignment. Events are decoded once, straight into the lean types of
//! [`crate::kubernetes::objects`], so only what placement needs is kept.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node as ApiNode, Pod as ApiPod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::Api;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

use crate::extender::lease::LeaseGate;
use crate::extender::state::{ExtenderState, WatchedResource};
use crate::kubernetes::objects::{Meta, Node, Pod};

/// A lean object type the live mode watches, and what its events do to the extender state.
trait Watched: DeserializeOwned + Clone + std::fmt::Debug + Send + Sync + 'static {
    /// The k8s-openapi type whose API path and kind this is.
    type Api: Resource<DynamicType = ()>;
    const RESOURCE: WatchedResource;
    fn meta(&self) -> &Meta;
    /// Identity in a relist's "seen" set.
    fn key(&self) -> String;
    fn apply(&self, state: &ExtenderState);
    fn delete(&self, state: &ExtenderState);
    /// After a full relist: forget what the list no longer has.
    fn retain(state: &ExtenderState, seen: &HashSet<String>);
}

/// A watched object as the watcher needs it: the lean object, decoded once from the API
/// server's bytes, plus the identity and version kube-runtime reads from `metadata`.
#[derive(Debug, Clone)]
struct Lean<T> {
    object: T,
    meta: ObjectMeta,
}

impl<'de, T: Watched> Deserialize<'de> for Lean<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let object = T::deserialize(d)?;
        let lean = object.meta();
        let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
        let meta = ObjectMeta {
            name: some(&lean.name),
            namespace: some(&lean.namespace),
            uid: some(&lean.uid),
            resource_version: some(&lean.resource_version),
            ..ObjectMeta::default()
        };
        Ok(Lean { object, meta })
    }
}

impl<T: Watched> Resource for Lean<T> {
    type DynamicType = ();
    type Scope = <T::Api as Resource>::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        T::Api::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        T::Api::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        T::Api::version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        T::Api::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.meta
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.meta
    }
}

impl Watched for Node {
    type Api = ApiNode;
    const RESOURCE: WatchedResource = WatchedResource::Nodes;
    fn meta(&self) -> &Meta {
        &self.metadata
    }
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
    fn meta(&self) -> &Meta {
        &self.metadata
    }
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
    let stream = watcher(Api::<Lean<T>>::all(client)).default_backoff();
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
            Ok(Event::InitApply(item)) | Ok(Event::Apply(item)) => {
                if let Some(seen) = seen.as_mut() {
                    seen.insert(item.object.key());
                }
                item.object.apply(&state);
            }
            Ok(Event::Delete(item)) => item.object.delete(&state),
        }
        health.touch(resource);
    }
}

/// Watches Nodes: applies every event to the state, relists after a broken watch, retries with backoff.
pub async fn watch_nodes(client: Client, state: Arc<ExtenderState>) {
    watch::<Node>(client, state).await
}

/// Watches Pods, as [`watch_nodes`] watches Nodes.
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

/// Starts the watchers, the reservation sweeper and (with `deletionCost`) the deletion-cost
/// refresher (writing only while `cost_gate`'s Lease does not name another replica's
/// scheduler); the state turns ready once both initial lists are in.
pub fn spawn_live(
    client: Client,
    state: Arc<ExtenderState>,
    reservation_ttl: Duration,
    cost_gate: Option<LeaseGate>,
) {
    tokio::spawn(watch_nodes(client.clone(), state.clone()));
    tokio::spawn(watch_pods(client, state.clone()));
    if state.config.deletion_cost {
        tokio::spawn(crate::extender::deletion::refresh_deletion_costs(
            state.clone(),
            crate::extender::deletion::REFRESH_EVERY,
            cost_gate,
        ));
    }
    tokio::spawn(sweep_reservations(
        state,
        reservation_ttl,
        Duration::from_secs(5),
    ));
}
