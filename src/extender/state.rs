//! The cluster state the server answers from: the core's inventory behind a lock, the demands of
//! pods seen in filter calls (bind carries only names), and a [`Binder`] that makes a placement
//! real. Snapshot mode records binds in memory; live Kubernetes mode plugs in its own binder and
//! feeds the inventory from watchers, without touching the core.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant, SystemTime};

use crate::core::demand::{ANNOTATION_HEADROOM, ANNOTATION_PRODUCTS, ANNOTATION_VRAM, LABEL_MODEL};
use crate::core::schedule::{parse_assigned_devices, ANNOTATION_ASSIGNED_DEVICES};
use crate::core::{
    build_node, fit_node, pod_demand, record_bound, Catalog, Config, Demand, Inventory, Placement,
};
use crate::core::{PodDemand, PodFacts};
use crate::extender::binder::{BindTarget, Binder, RecordOnly};
use crate::kubernetes::objects::{Node, Pod};
use crate::kubernetes::snapshot::Objects;

/// How many filtered pods' demands are remembered for the bind that follows.
const DEMAND_CACHE_SIZE: usize = 16_384;

/// Why a bind failed; the text goes into the bind reply's `Error`.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BindError {
    #[error("vramfit: pod {0} was not seen in a filter call; cannot tell what it needs")]
    UnknownPod(String),
    #[error("vramfit: pod {pod} is already bound to {node}")]
    BoundElsewhere { pod: String, node: String },
    #[error("vramfit: no longer fits {node}: {reason}")]
    NoLongerFits { node: String, reason: String },
    #[error("vramfit: binding failed: {0}")]
    Api(String),
}

impl BindError {
    /// The conflict this error is, for the `bind_conflicts` metric (`None` for other errors).
    pub fn conflict(&self) -> Option<&'static str> {
        match self {
            BindError::BoundElsewhere { .. } => Some("bound-elsewhere"),
            BindError::NoLongerFits { .. } => Some("no-longer-fits"),
            BindError::UnknownPod(_) | BindError::Api(_) => None,
        }
    }
}

/// A bind's placement that the pod watch has not confirmed yet.
#[derive(Debug, Clone, Copy)]
struct Reservation {
    at: Instant,
    /// The binder reported success; a repeat bind need not ask it again.
    committed: bool,
    /// An earlier attempt failed ambiguously: the binding may exist, so a later refusal does
    /// not release the devices (the pod watch or the TTL settles it).
    ambiguous: bool,
}

#[derive(Default)]
struct DemandCache {
    by_id: HashMap<String, Demand>,
    order: VecDeque<String>,
}

/// A resource the live mode watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchedResource {
    Nodes,
    Pods,
}

#[derive(Debug, Default)]
struct ResourceHealth {
    synced: AtomicBool,
    last_event: Mutex<Option<Instant>>,
    errors: AtomicU64,
}

/// How the watches are doing: whether each initial list is in, when the last event came, and
/// how many watch errors there were (for `/readyz` and the staleness metrics).
#[derive(Debug, Default)]
pub struct WatchHealth {
    nodes: ResourceHealth,
    pods: ResourceHealth,
}

impl WatchHealth {
    fn of(&self, resource: WatchedResource) -> &ResourceHealth {
        match resource {
            WatchedResource::Nodes => &self.nodes,
            WatchedResource::Pods => &self.pods,
        }
    }

    /// An event (or a watch error) arrived now.
    pub fn touch(&self, resource: WatchedResource) {
        *self
            .of(resource)
            .last_event
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    /// The watch failed; it retries with backoff.
    pub fn error(&self, resource: WatchedResource) {
        self.of(resource).errors.fetch_add(1, Ordering::Relaxed);
    }

    /// The initial list of `resource` is complete.
    pub fn synced(&self, resource: WatchedResource) {
        self.of(resource).synced.store(true, Ordering::Release);
    }

    /// Both initial lists are complete.
    pub fn is_synced(&self) -> bool {
        self.nodes.synced.load(Ordering::Acquire) && self.pods.synced.load(Ordering::Acquire)
    }

    /// Time since the last event of `resource`, if any came.
    pub fn last_event_age(&self, resource: WatchedResource) -> Option<Duration> {
        self.of(resource)
            .last_event
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|at| at.elapsed())
    }

    /// Watch errors of `resource` so far.
    pub fn errors(&self, resource: WatchedResource) -> u64 {
        self.of(resource).errors.load(Ordering::Relaxed)
    }
}

/// Everything the server reads and writes.
pub struct ExtenderState {
    pub config: Config,
    pub catalog: Catalog,
    inventory: RwLock<Inventory>,
    demands: Mutex<DemandCache>,
    /// Placements made by bind that the pod watch has not yet seen bound.
    reservations: Mutex<HashMap<String, Reservation>>,
    ready: AtomicBool,
    binder: Box<dyn Binder>,
    /// Watch progress in live mode (unused with a snapshot).
    pub health: WatchHealth,
}

impl ExtenderState {
    /// An empty state with the given binder, not yet ready.
    pub fn new(config: Config, catalog: Catalog, binder: Box<dyn Binder>) -> Self {
        ExtenderState {
            config,
            catalog,
            inventory: RwLock::new(Inventory::new()),
            demands: Mutex::new(DemandCache::default()),
            reservations: Mutex::new(HashMap::new()),
            ready: AtomicBool::new(false),
            binder,
            health: WatchHealth::default(),
        }
    }

    /// A ready state built from a snapshot: nodes, bound pods' occupancy, pending pods' demands.
    pub fn from_snapshot(
        objects: &Objects,
        config: Config,
        catalog: Catalog,
        now: SystemTime,
    ) -> Self {
        let state = ExtenderState::new(config, catalog, Box::new(RecordOnly));
        {
            let mut inventory = state.write();
            load_snapshot(&mut inventory, objects, &state.config, &state.catalog, now);
        }
        for pod in objects.pods.iter().filter(|p| p.spec.node_name.is_empty()) {
            let facts = pod.facts();
            state.remember(
                &facts.ledger_id(),
                pod_demand(&facts, &state.config, &state.catalog),
            );
        }
        state.set_ready(true);
        state
    }

    /// Reads the inventory.
    pub fn read(&self) -> RwLockReadGuard<'_, Inventory> {
        self.inventory
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Writes the inventory. Hold it for microseconds, never across I/O.
    pub fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inventory> {
        self.inventory
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether the state is complete enough to answer.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Marks the state ready (or not).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Remembers a pod's demand for the bind that may follow.
    pub fn remember(&self, id: &str, demand: Demand) {
        let mut cache = self.demands.lock().unwrap_or_else(|p| p.into_inner());
        if cache.by_id.insert(id.to_string(), demand).is_none() {
            cache.order.push_back(id.to_string());
        }
        while cache.order.len() > DEMAND_CACHE_SIZE {
            if let Some(old) = cache.order.pop_front() {
                cache.by_id.remove(&old);
            }
        }
    }

    fn recall(&self, target: &BindTarget) -> Option<Demand> {
        let cache = self.demands.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .by_id
            .get(&target.uid)
            .or_else(|| {
                cache
                    .by_id
                    .get(&format!("{}/{}", target.namespace, target.name))
            })
            .cloned()
    }

    fn reservations(&self) -> std::sync::MutexGuard<'_, HashMap<String, Reservation>> {
        self.reservations.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Pods reserved by bind and not yet seen bound.
    pub fn reserved_pods(&self) -> usize {
        self.reservations().len()
    }

    /// Binds a pod: re-checks the fit and reserves its devices under the lock (so the next
    /// filter sees them), then lets the binder make it real. A definite refusal releases the
    /// reservation; an ambiguous failure keeps it for the pod watch or the TTL to settle. A
    /// repeat bind to the same node asks the binder again (binding is idempotent) unless the
    /// pod is already seen bound.
    pub async fn bind(&self, target: &BindTarget) -> Result<Placement, BindError> {
        let key = format!("{}/{}", target.namespace, target.name);
        let demand = self
            .recall(target)
            .ok_or_else(|| BindError::UnknownPod(key.clone()))?;
        let demand = demand.map_err(|e| BindError::NoLongerFits {
            node: target.node.clone(),
            reason: e.to_string(),
        })?;
        let placement = {
            let mut inventory = self.write();
            if let Some(existing) = inventory.placement(&demand.id) {
                if existing.node != target.node {
                    return Err(BindError::BoundElsewhere {
                        pod: key,
                        node: existing.node.clone(),
                    });
                }
                // Seen bound by the watch, or bound by an earlier call: nothing to redo.
                if self
                    .reservations()
                    .get(&demand.id)
                    .is_none_or(|r| r.committed)
                {
                    return Ok(existing.clone());
                }
                existing.clone()
            } else {
                let fit = match inventory.node(&target.node) {
                    None => Err("node unknown to vramfit".to_string()),
                    Some(node) => fit_node(node, &demand).map_err(|r| r.to_string()),
                }
                .map_err(|reason| BindError::NoLongerFits {
                    node: target.node.clone(),
                    reason,
                })?;
                let zone = inventory.node(&target.node).and_then(|n| n.zone.clone());
                let placement = Placement {
                    pod: key,
                    node: target.node.clone(),
                    zone,
                    model: demand.model.clone(),
                    shares: fit.shares(),
                    exclusive: fit.exclusive,
                };
                inventory.commit(&demand.id, placement.clone());
                let reservation = Reservation {
                    at: Instant::now(),
                    committed: false,
                    ambiguous: false,
                };
                self.reservations().insert(demand.id.clone(), reservation);
                placement
            }
        };
        match self.binder.bind(target, &placement).await {
            Ok(()) => {
                if let Some(reservation) = self.reservations().get_mut(&demand.id) {
                    reservation.committed = true;
                }
                Ok(placement)
            }
            Err(failure) => {
                let mut inventory = self.write();
                let mut reservations = self.reservations();
                match reservations.get_mut(&demand.id) {
                    Some(r) if failure.definite && !r.committed && !r.ambiguous => {
                        reservations.remove(&demand.id);
                        inventory.release(&demand.id);
                    }
                    Some(r) if !failure.definite => r.ambiguous = true,
                    _ => {}
                }
                Err(BindError::Api(failure.message))
            }
        }
    }

    /// A Node was added or changed.
    pub fn apply_node(&self, node: &Node, now: SystemTime) {
        let info = build_node(&node.facts(), &self.config, now);
        for note in &info.notes {
            tracing::debug!(node = %info.name, "{note}");
        }
        self.write().upsert_node(info);
    }

    /// A Node was deleted.
    pub fn delete_node(&self, name: &str) {
        self.write().remove_node(name);
    }

    /// After a full relist of Nodes: drops the nodes the list no longer has.
    pub fn retain_nodes(&self, seen: &HashSet<String>) {
        let mut inventory = self.write();
        let gone: Vec<String> = inventory
            .nodes()
            .map(|n| n.name.clone())
            .filter(|n| !seen.contains(n))
            .collect();
        for name in gone {
            inventory.remove_node(&name);
        }
    }

    /// A Pod was added or changed: a bound, unfinished pod holds its devices (confirming a
    /// reservation), a finished one releases them, a pending one is remembered for its bind.
    pub fn apply_pod(&self, pod: &Pod) {
        let facts = pod.facts();
        let id = facts.ledger_id();
        if facts.is_finished() {
            self.forget_pod(&id);
            return;
        }
        let Some(node) = facts.node_name.as_deref() else {
            self.remember(&id, pod_demand(&facts, &self.config, &self.catalog));
            return;
        };
        let Some(demand) = bound_pod_demand(&facts, &self.config, &self.catalog) else {
            return;
        };
        let mut inventory = self.write();
        self.reservations().remove(&id);
        if inventory.placement(&id).is_some_and(|p| p.node == node) {
            return;
        }
        record_bound_pod(&mut inventory, &facts, &demand, node);
    }

    /// A Pod is gone: whatever it held is released.
    pub fn delete_pod(&self, pod: &Pod) {
        self.forget_pod(&pod.facts().ledger_id());
    }

    fn forget_pod(&self, id: &str) {
        let mut inventory = self.write();
        self.reservations().remove(id);
        inventory.release(id);
    }

    /// After a full relist of Pods: releases placements of pods the list no longer has, except
    /// reservations still in flight.
    pub fn retain_pods(&self, seen: &HashSet<String>) {
        let mut inventory = self.write();
        let reservations = self.reservations();
        let gone: Vec<String> = inventory
            .placements()
            .map(|(id, _)| id.clone())
            .filter(|id| !seen.contains(id) && !reservations.contains_key(id))
            .collect();
        drop(reservations);
        for id in gone {
            inventory.release(&id);
        }
    }

    /// Releases reservations older than `ttl` that no pod event confirmed (a bind whose
    /// outcome never showed up). Returns how many were released.
    pub fn expire_reservations(&self, now: Instant, ttl: Duration) -> usize {
        let mut inventory = self.write();
        let mut reservations = self.reservations();
        let expired: Vec<String> = reservations
            .iter()
            .filter(|(_, r)| now.saturating_duration_since(r.at) > ttl)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            reservations.remove(id);
            inventory.release(id);
        }
        expired.len()
    }
}

/// A bound pod's demand. When its VRAM declarations are invalid, they are ignored so its
/// devices still count; only an unreadable device count leaves it out (with a warning).
fn bound_pod_demand(facts: &PodFacts, config: &Config, catalog: &Catalog) -> Option<PodDemand> {
    let error = match pod_demand(facts, config, catalog) {
        Ok(demand) => return Some(demand),
        Err(error) => error,
    };
    let mut relaxed = facts.clone();
    for key in [ANNOTATION_VRAM, ANNOTATION_HEADROOM, ANNOTATION_PRODUCTS] {
        relaxed.annotations.remove(key);
    }
    relaxed.labels.remove(LABEL_MODEL);
    match pod_demand(&relaxed, config, catalog) {
        Ok(demand) => {
            tracing::warn!(pod = %facts.key(), %error, "bound pod has an invalid VRAM declaration; counting its devices only");
            Some(demand)
        }
        Err(_) => {
            tracing::warn!(pod = %facts.key(), %error, "bound pod's devices cannot be read; not counted");
            None
        }
    }
}

/// Records a bound pod on its node, on the devices its assignment annotation names if any.
fn record_bound_pod(inventory: &mut Inventory, facts: &PodFacts, demand: &PodDemand, node: &str) {
    let assigned = facts
        .annotations
        .get(ANNOTATION_ASSIGNED_DEVICES)
        .and_then(|raw| parse_assigned_devices(raw));
    record_bound(inventory, demand, node, assigned.as_deref());
}

/// Fills an inventory from snapshot objects: every node, then every bound, unfinished pod.
pub fn load_snapshot(
    inventory: &mut Inventory,
    objects: &Objects,
    config: &Config,
    catalog: &Catalog,
    now: SystemTime,
) {
    for node in &objects.nodes {
        let info = build_node(&node.facts(), config, now);
        for note in &info.notes {
            tracing::warn!(node = %info.name, "{note}");
        }
        if info.problem.is_some() {
            tracing::warn!(node = %info.name, problem = ?info.problem, "node has accelerators vramfit cannot size; it is rejected with a reason");
        }
        inventory.upsert_node(info);
    }
    for pod in &objects.pods {
        let facts = pod.facts();
        let Some(node_name) = facts.node_name.as_deref() else {
            continue;
        };
        if facts.is_finished() {
            continue;
        }
        if let Some(demand) = bound_pod_demand(&facts, config, catalog) {
            record_bound_pod(inventory, &facts, &demand, node_name);
        }
    }
}
