//! The state the server answers from: the core's inventory (nodes and the placement ledger)
//! behind one lock, the demands of pods seen in filter calls (bind carries only names), and a
//! [`Binder`] that makes a placement real. Every placement decision, bind's included, is the
//! core's ([`crate::core::ledger`]); this module only takes the lock, calls the binder without
//! it, and logs. Snapshot mode records binds in memory; live Kubernetes mode plugs in its own
//! binder and feeds the inventory from watchers.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant, SystemTime};

use dashmap::DashMap;
use rustc_hash::FxBuildHasher;

use crate::core::deletion::{deletion_cost, ANNOTATION_DELETION_COST};
use crate::core::reconcile::{corrections, AllocatedDevices, ANNOTATION_ALLOCATED_DEVICES};
use crate::core::{
    build_node, pod_demand, Catalog, Config, Demand, Inventory, Observed, Placement, PodFacts,
    ReserveError,
};
use crate::extender::binder::{BindTarget, Binder, RecordOnly};
use crate::extender::deletion::CostBook;
use crate::kubernetes::objects::{Node, Pod};
use crate::kubernetes::snapshot::Objects;

/// How many pods' demands are remembered for the bind that follows, at most (plus one check
/// interval); past it the older half is dropped.
pub const DEMAND_CACHE_SIZE: usize = 16_384;
/// How many inserts pass between two size checks of the demand cache.
pub const DEMAND_CACHE_CHECK_EVERY: u64 = 256;

/// Why a bind failed; the text goes into the bind reply's `Error`.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BindError {
    /// The pod was not seen in a filter call, so its demand is unknown.
    #[error("vramfit: pod {0} was not seen in a filter call; cannot tell what it needs")]
    UnknownPod(String),
    /// The pod is already placed on another node.
    #[error("vramfit: pod {pod} is already bound to {node}")]
    BoundElsewhere {
        /// The pod, `namespace/name`.
        pod: String,
        /// The node it is placed on.
        node: String,
    },
    /// The pod no longer fits the node.
    #[error("vramfit: no longer fits {node}: {reason}")]
    NoLongerFits {
        /// The node asked for.
        node: String,
        /// Why it no longer fits.
        reason: String,
    },
    /// The binder failed; holds its message.
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

/// A remembered demand and when (in inserts) it was remembered.
struct Remembered {
    demand: Demand,
    seq: u64,
}

/// Demands of pending pods (from filter calls and the pod watch) for the bind that follows,
/// keyed by ledger id (the UID). Many filter handlers insert at once: a [`DashMap`] lets them
/// without a common lock. The pod watch drops a pod's entry once it sees the pod bound or gone;
/// what it never settles (snapshot mode, pods nobody binds) is bounded by dropping the older
/// half whenever the cache passes [`DEMAND_CACHE_SIZE`].
#[derive(Default)]
struct DemandCache {
    by_id: DashMap<String, Remembered, FxBuildHasher>,
    inserts: AtomicU64,
    sweeping: AtomicBool,
}

impl DemandCache {
    fn insert(&self, id: &str, demand: Demand) {
        let seq = self.inserts.fetch_add(1, Ordering::Relaxed);
        self.by_id
            .insert(id.to_string(), Remembered { demand, seq });
        if seq.is_multiple_of(DEMAND_CACHE_CHECK_EVERY) && self.by_id.len() > DEMAND_CACHE_SIZE {
            self.sweep(seq);
        }
    }

    /// Keeps the newest half. One sweep at a time; others skip (the next check retries).
    fn sweep(&self, now: u64) {
        if self.sweeping.swap(true, Ordering::Acquire) {
            return;
        }
        let oldest_kept = now.saturating_sub(DEMAND_CACHE_SIZE as u64 / 2);
        self.by_id.retain(|_, r| r.seq >= oldest_kept);
        self.sweeping.store(false, Ordering::Release);
    }

    /// The demand of the bind's pod, by UID or else by `namespace/name`.
    fn recall(&self, target: &BindTarget) -> Option<Demand> {
        let by_uid = (!target.uid.is_empty())
            .then(|| self.by_id.get(&target.uid))
            .flatten();
        by_uid
            .or_else(|| {
                self.by_id
                    .get(&format!("{}/{}", target.namespace, target.name))
            })
            .map(|r| r.demand.clone())
    }

    fn forget(&self, id: &str) {
        self.by_id.remove(id);
    }

    fn len(&self) -> usize {
        self.by_id.len()
    }
}

/// A resource the live mode watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchedResource {
    /// Node objects.
    Nodes,
    /// Pod objects.
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

/// Everything the server reads and writes: the core's inventory (nodes and ledger) behind one
/// lock, the demand cache, and the binder. The placement logic, bind's included, is the core's.
pub struct ExtenderState {
    /// Placement and scoring settings.
    pub config: Config,
    /// Model VRAM catalog.
    pub catalog: Catalog,
    inventory: RwLock<Inventory>,
    demands: DemandCache,
    ready: AtomicBool,
    binder: Box<dyn Binder>,
    /// Watch progress in live mode (unused with a snapshot).
    pub health: WatchHealth,
    ledger_corrections: AtomicU64,
    deletion_costs: CostBook,
}

impl ExtenderState {
    /// An empty state with the given binder, not yet ready.
    pub fn new(config: Config, catalog: Catalog, binder: Box<dyn Binder>) -> Self {
        // The catalog's models are the workload vramfit expects before it sees any pod.
        let mut inventory = Inventory::new();
        inventory.seed_workload(&config.workload, &catalog, config.headroom_percent);
        ExtenderState {
            config,
            catalog,
            inventory: RwLock::new(inventory),
            demands: DemandCache::default(),
            ready: AtomicBool::new(false),
            binder,
            health: WatchHealth::default(),
            ledger_corrections: Default::default(),
            deletion_costs: CostBook::default(),
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
        let (inventory, observed) = load_snapshot(objects, &state.config, &state.catalog, now);
        *state.write() = inventory;
        for (pod, observed) in objects.pods.iter().zip(observed) {
            if let Observed::Pending(demand) = observed {
                state.remember(&pod.facts().ledger_id(), demand);
            }
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

    /// The binder placements are made real with (also the writer of deletion costs).
    pub fn binder(&self) -> &dyn Binder {
        self.binder.as_ref()
    }

    /// The deletion-cost refresher's record (`extender::deletion`).
    pub fn deletion_costs(&self) -> &CostBook {
        &self.deletion_costs
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
        if let Ok(d) = &demand {
            // The workload model counts each pod once, by UID (core::workload): a pod
            // kube-scheduler asks about again costs a read lock, not the write lock.
            if !self.read().packing().model().has_seen(&d.id) {
                let mut inventory = self.write();
                inventory.configure_workload(&self.config.workload);
                crate::core::schedule::observe(&mut inventory, d);
            }
        }
        self.demands.insert(id, demand);
    }

    /// Pods whose demand is remembered for a bind.
    pub fn remembered_pods(&self) -> usize {
        self.demands.len()
    }

    /// Pods reserved by bind and not yet seen bound.
    pub fn reserved_pods(&self) -> usize {
        self.read().reserved()
    }

    /// Binds a pod: reserves it on the node with the core's verdict under the write lock (so
    /// the next filter sees it), then lets the binder make it real, without the lock. The
    /// binder's answer confirms the reservation, releases it (a definite refusal) or marks it
    /// ambiguous (kept for the pod watch or the TTL to settle). A repeat bind to the same node
    /// asks the binder again unless it already succeeded or the pod is seen bound.
    pub async fn bind(&self, target: &BindTarget) -> Result<Placement, BindError> {
        let key = format!("{}/{}", target.namespace, target.name);
        let Some(demand) = self.demands.recall(target) else {
            // Demands are dropped once the watch sees the pod bound: a repeat bind to where
            // it is bound is still answered.
            let inventory = self.read();
            let bound = [target.uid.as_str(), key.as_str()]
                .into_iter()
                .filter(|id| !id.is_empty())
                .find_map(|id| inventory.placement(id))
                .filter(|p| p.node == target.node);
            return bound.cloned().ok_or(BindError::UnknownPod(key));
        };
        let reservation = self
            .write()
            .reserve(&demand, &target.node, Instant::now())
            .map_err(|error| match error {
                ReserveError::PlacedElsewhere { node } => {
                    BindError::BoundElsewhere { pod: key, node }
                }
                ReserveError::NoFit(reason) => BindError::NoLongerFits {
                    node: target.node.clone(),
                    reason: reason.to_string(),
                },
            })?;
        if !reservation.needs_binding {
            return Ok(reservation.placement);
        }
        // Under the read lock: the cost scans the nodes for a smaller device that could host
        // the pod, and filters need not wait for that.
        let deletion_cost = match &demand {
            Ok(pod) if self.config.deletion_cost => {
                let max_skew = self.config.max_zone_skew(pod.scheduler_name.as_deref());
                deletion_cost(&self.read(), pod, &reservation.placement, max_skew)
            }
            _ => None,
        };
        match self
            .binder
            .bind(target, &reservation.placement, deletion_cost)
            .await
        {
            Ok(()) => {
                self.write().confirm(&reservation.id, Instant::now());
                Ok(reservation.placement)
            }
            Err(failure) => {
                let mut inventory = self.write();
                if failure.definite {
                    inventory.release(&reservation.id);
                } else {
                    inventory.mark_ambiguous(&reservation.id);
                }
                Err(BindError::Api(failure.message))
            }
        }
    }

    /// A Node was added or changed.
    pub fn apply_node(&self, node: &Node, now: SystemTime) {
        let facts = node.facts();
        let info = build_node(&facts, &self.config, now);
        for note in &info.notes {
            tracing::debug!(node = %info.name, "{note}");
        }
        // Parsed before the lock is taken.
        let report = facts
            .annotations
            .get(ANNOTATION_ALLOCATED_DEVICES)
            .and_then(|raw| match AllocatedDevices::parse(raw) {
                Ok(report) => Some(report),
                Err(error) => {
                    tracing::warn!(node = %facts.name, %error, "ignoring the allocation report");
                    None
                }
            });
        let mut inventory = self.write();
        inventory.upsert_node(info);
        if let Some(report) = report {
            self.follow_kubelet(&mut inventory, &facts.name, &report);
        }
    }

    /// Moves whole-device pods on `node` to the devices kubelet really gave them, as the agent
    /// reports in `vramfit.io/allocated-devices` (`core::reconcile`).
    fn follow_kubelet(&self, inventory: &mut Inventory, node: &str, report: &AllocatedDevices) {
        for c in corrections(node, inventory.placements(), report) {
            if inventory.relocate(&c.id, &c.real).is_ok() {
                self.ledger_corrections.fetch_add(1, Ordering::Relaxed);
                tracing::info!(node, pod = %c.pod, recorded = ?c.recorded, real = ?c.real, "ledger moved to the devices kubelet allocated");
            }
        }
    }

    /// Ledger entries moved to the devices kubelet really allocated, since start.
    pub fn ledger_corrections(&self) -> u64 {
        self.ledger_corrections.load(Ordering::Relaxed)
    }

    /// A Node was deleted.
    pub fn delete_node(&self, name: &str) {
        self.write().remove_node(name);
    }

    /// After a full relist of Nodes: drops the nodes the list no longer has.
    pub fn retain_nodes(&self, seen: &HashSet<String>) {
        self.write().retain_nodes(|name| seen.contains(name));
    }

    /// A Pod was added or changed: the core's ledger observes it (a bound pod holds its
    /// devices, confirming a reservation; a finished one releases them). A pending pod's demand
    /// is remembered for its bind; a bound or finished pod's is dropped.
    pub fn apply_pod(&self, pod: &Pod) {
        let facts = pod.facts();
        let id = facts.ledger_id();
        let observed = self
            .write()
            .observe_pod(&facts, &self.config, &self.catalog);
        match observed {
            Observed::Pending(demand) => self.remember(&id, demand),
            observed => {
                log_observed(&facts, &observed);
                self.demands.forget(&id);
                if matches!(observed, Observed::Bound { .. }) {
                    self.note_replica(&facts, &id);
                } else {
                    self.deletion_costs.gone(&id);
                }
            }
        }
    }

    /// Tells the deletion-cost refresher that bound pod `id`, scheduled through one of
    /// vramfit's profiles, is a replica of the model its placement names (if any), with the
    /// cost its annotation holds.
    fn note_replica(&self, facts: &PodFacts, id: &str) {
        // Only pods scheduled through one of vramfit's profiles: others' pods are left alone.
        let ours = facts
            .scheduler_name
            .as_deref()
            .is_some_and(|name| self.config.profiles.contains_key(name));
        if !self.config.deletion_cost || !ours {
            return;
        }
        let placement_model = self
            .read()
            .placement(id)
            .filter(|p| !p.shares.is_empty())
            .and_then(|p| p.model.clone());
        let Some(model) = placement_model else {
            return;
        };
        let demand = (!self.deletion_costs.tracks(id, &model))
            .then(|| pod_demand(facts, &self.config, &self.catalog).ok())
            .flatten();
        self.deletion_costs.saw_bound(
            id,
            &model,
            facts
                .annotations
                .get(ANNOTATION_DELETION_COST)
                .map(String::as_str),
            demand,
        );
    }

    /// A Pod is gone: whatever it held is released.
    pub fn delete_pod(&self, pod: &Pod) {
        let id = pod.facts().ledger_id();
        self.write().remove(&id);
        self.demands.forget(&id);
        self.deletion_costs.gone(&id);
    }

    /// After a full relist of Pods: releases placements of pods the list no longer has, except
    /// reservations still in flight. Remembered demands stay (a pod filtered after the list was
    /// taken is not in it); the cache's bound covers those of pods gone meanwhile.
    pub fn retain_pods(&self, seen: &HashSet<String>) {
        self.write().retain_pods(|id| seen.contains(id));
        self.deletion_costs.retain(|id| seen.contains(id));
    }

    /// Releases reservations older than `ttl` at `now` that no pod event confirmed (a bind
    /// whose outcome never showed up). Returns how many were released.
    pub fn expire_reservations(&self, now: Instant, ttl: Duration) -> usize {
        self.write().expire(now, ttl).len()
    }
}

/// Logs what a pod observation left out, if anything.
fn log_observed(pod: &PodFacts, observed: &Observed) {
    match observed {
        Observed::Bound {
            ignored: Some(error),
        } => {
            tracing::warn!(pod = %pod.key(), %error, "bound pod has an invalid VRAM declaration; counting its devices only")
        }
        Observed::Unreadable(error) => {
            tracing::warn!(pod = %pod.key(), %error, "bound pod's devices cannot be read; not counted")
        }
        _ => {}
    }
}

/// The inventory a snapshot describes (the core's restart rebuild): every node, then every
/// bound, unfinished pod. Returns one [`Observed`] per pod of `objects.pods`, in order.
pub fn load_snapshot(
    objects: &Objects,
    config: &Config,
    catalog: &Catalog,
    now: SystemTime,
) -> (Inventory, Vec<Observed>) {
    let nodes = objects.nodes.iter().map(|node| {
        let info = build_node(&node.facts(), config, now);
        for note in &info.notes {
            tracing::warn!(node = %info.name, "{note}");
        }
        if info.problem.is_some() {
            tracing::warn!(node = %info.name, problem = ?info.problem, "node has accelerators vramfit cannot size; it is rejected with a reason");
        }
        info
    });
    let facts: Vec<PodFacts> = objects.pods.iter().map(Pod::facts).collect();
    let (inventory, observed) = Inventory::rebuild(nodes, &facts, config, catalog);
    for (pod, observed) in facts.iter().zip(&observed) {
        log_observed(pod, observed);
    }
    (inventory, observed)
}
