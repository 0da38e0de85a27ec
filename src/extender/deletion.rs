//! The deletion-cost refresher (live mode): keeps `controller.kubernetes.io/pod-deletion-cost`
//! on every bound replica of a model equal to the order the core ranks now
//! ([`crate::core::deletion::refreshed_costs`]), so that the ReplicaSet controller's next
//! scale-down, whatever its size, keeps the model's zones within the profile's skew and takes
//! replicas on oversized devices first as far as that allows. The cost a Binding carries is the
//! top of the pod's zone at bind and goes stale as replicas come and go; this rewrites, a few
//! seconds after a change, only the costs that differ from what the pods' annotations hold.
//!
//! The pod watch tells the [`CostBook`] which bound replicas exist and what their annotations
//! say; a model whose replicas changed is marked for the next pass, and every
//! [`RESYNC_PASSES`] passes all models are (nodes added or removed change which devices are
//! oversized). The core keeps every replica at the height its current cost says where that is
//! still valid, so a scale-down that took the tops of the zones, or a scale-up that added on
//! top, rewrites nothing; a deletion from the middle of a zone moves the replicas above it. Writes are JSON merge patches of the one annotation
//! through the [`Binder`](crate::extender::binder::Binder) (RBAC: `patch` on `pods`); a failed
//! one is retried on the next pass.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::core::deletion::{refreshed_costs, ANNOTATION_DELETION_COST};
use crate::core::PodDemand;
use crate::extender::binder::CostWriteError;
use crate::extender::lease::{LeaseGate, Turn};
use crate::extender::state::ExtenderState;

/// How often the refresher looks for models whose replicas changed.
pub const REFRESH_EVERY: Duration = Duration::from_secs(2);
/// Every this many passes, all models are refreshed, changed or not.
pub const RESYNC_PASSES: u64 = 30;

/// A bound replica the watch has shown: its demand and what its annotation holds, as last
/// seen by the watch or written here.
struct Tracked {
    demand: PodDemand,
    cost: Option<i64>,
}

#[derive(Default)]
struct Book {
    /// Per model, its bound replicas by ledger id.
    models: BTreeMap<String, BTreeMap<String, Tracked>>,
    /// The model of each tracked replica.
    model_of: HashMap<String, String>,
    dirty: BTreeSet<String>,
}

impl Book {
    fn forget(&mut self, id: &str) {
        let Some(model) = self.model_of.remove(id) else {
            return;
        };
        if let Some(replicas) = self.models.get_mut(&model) {
            replicas.remove(id);
            if replicas.is_empty() {
                self.models.remove(&model);
            }
        }
        self.dirty.insert(model);
    }
}

/// One cost to write: the pod and its new value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CostUpdate {
    /// The pod's ledger id (its UID).
    pub id: String,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The model it is a replica of.
    pub model: String,
    /// The cost to write.
    pub cost: i64,
}

/// The refresher's record: per model its bound replicas (demand and the cost each annotation
/// holds), and the models changed since the last pass.
///
/// Only replicas the watch has shown bound are ranked (not this extender's own binds the watch
/// has not echoed yet), and the demand standing for a model is its replica with the smallest
/// ledger id, so that both replicas of an HA deployment, each running a refresher from the
/// same watch, rank alike and agree on every value (a write is skipped where the annotation
/// already holds it).
#[derive(Default)]
pub struct CostBook {
    book: Mutex<Book>,
    written: AtomicU64,
    failed: AtomicU64,
    /// Another replica's scheduler holds `server.leaderLease`: this one writes nothing.
    following: AtomicBool,
}

impl CostBook {
    fn lock(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether bound replica `id` of `model` is tracked (the caller then need not compute its
    /// demand again).
    pub fn tracks(&self, id: &str, model: &str) -> bool {
        self.lock()
            .model_of
            .get(id)
            .is_some_and(|known| known == model)
    }

    /// A bound replica `id` of `model` was seen with `annotation` (the raw value of
    /// `controller.kubernetes.io/pod-deletion-cost`, if any); `demand` is its demand when it
    /// is not tracked yet (`None` keeps the tracked one). The model is marked for the next
    /// pass when the pod is new or its annotation changed.
    pub fn saw_bound(
        &self,
        id: &str,
        model: &str,
        annotation: Option<&str>,
        demand: Option<PodDemand>,
    ) {
        let cost = annotation.and_then(|raw| raw.trim().parse::<i64>().ok());
        let mut book = self.lock();
        if book.model_of.get(id).is_some_and(|known| known != model) {
            book.forget(id);
        }
        let tracked = book
            .models
            .get_mut(model)
            .and_then(|replicas| replicas.get_mut(id));
        let changed = match (tracked, demand) {
            (Some(tracked), _) => {
                let changed = tracked.cost != cost;
                tracked.cost = cost;
                changed
            }
            (None, Some(demand)) => {
                book.models
                    .entry(model.to_string())
                    .or_default()
                    .insert(id.to_string(), Tracked { demand, cost });
                book.model_of.insert(id.to_string(), model.to_string());
                true
            }
            // Not tracked and its demand unreadable: nothing to rank it by.
            (None, None) => false,
        };
        if changed {
            book.dirty.insert(model.to_string());
        }
    }

    /// Pod `id` is gone or finished: its model's order changes.
    pub fn gone(&self, id: &str) {
        self.lock().forget(id);
    }

    /// After a full relist of pods: forgets the pods `keep` rejects.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        let mut book = self.lock();
        let gone: Vec<String> = book
            .model_of
            .keys()
            .filter(|id| !keep(id))
            .cloned()
            .collect();
        for id in gone {
            book.forget(&id);
        }
    }

    /// The costs to write now: for each model marked since the last pass (every tracked model
    /// when `all`), the core's ranking over `state`'s inventory under the skew limit of the
    /// model's profile, less the pods whose annotation already holds their cost.
    pub fn due(&self, state: &ExtenderState, all: bool) -> Vec<CostUpdate> {
        type Annotations = HashMap<String, Option<i64>>;
        let models: Vec<(String, PodDemand, Annotations)> = {
            let mut book = self.lock();
            let dirty = std::mem::take(&mut book.dirty);
            book.models
                .iter()
                .filter(|(model, _)| all || dirty.contains(*model))
                .filter_map(|(model, replicas)| {
                    let (_, first) = replicas.first_key_value()?;
                    let costs = replicas
                        .iter()
                        .map(|(id, tracked)| (id.clone(), tracked.cost))
                        .collect();
                    Some((model.clone(), first.demand.clone(), costs))
                })
                .collect()
        };
        let mut updates = Vec::new();
        for (model, demand, annotated) in models {
            let max_skew = state.config.max_zone_skew(demand.scheduler_name.as_deref());
            let inventory = state.read();
            // Only pods the watch has shown bound are ranked and written.
            let ranked = refreshed_costs(&inventory, &model, &demand, max_skew, |id| {
                annotated.get(id).copied()
            });
            for (id, cost) in ranked {
                // Only pods the watch has shown bound are written.
                let Some(&seen) = annotated.get(&id) else {
                    continue;
                };
                if seen == Some(cost) {
                    continue;
                }
                let Some((namespace, name)) =
                    inventory.placement(&id).and_then(|p| p.pod.split_once('/'))
                else {
                    continue;
                };
                updates.push(CostUpdate {
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                    id,
                    model: model.clone(),
                    cost,
                });
            }
        }
        updates
    }

    /// `update` was written: the pod's annotation holds its cost now.
    pub fn wrote(&self, update: &CostUpdate) {
        self.written.fetch_add(1, Ordering::Relaxed);
        let mut book = self.lock();
        let tracked = book
            .models
            .get_mut(&update.model)
            .and_then(|replicas| replicas.get_mut(&update.id));
        if let Some(tracked) = tracked {
            tracked.cost = Some(update.cost);
        }
    }

    /// Writing `update` failed: its model is tried again on the next pass.
    pub fn failed(&self, update: &CostUpdate) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        self.lock().dirty.insert(update.model.clone());
    }

    /// `update` was not tried in this pass: its model is kept for the next.
    pub fn postpone(&self, update: &CostUpdate) {
        self.lock().dirty.insert(update.model.clone());
    }

    /// Costs written since start.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Cost writes that failed since start (each retried).
    pub fn failures(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Whether this replica writes costs: false while another replica's scheduler holds
    /// `server.leaderLease`.
    pub fn writes(&self) -> bool {
        !self.following.load(Ordering::Relaxed)
    }

    fn set_writes(&self, writes: bool) {
        self.following.store(!writes, Ordering::Relaxed);
    }
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pass {
    /// Costs written.
    pub written: usize,
    /// Whether a write failed (the pass stopped there; its models are tried again).
    pub failed: bool,
}

/// One pass: writes the due costs through the state's binder, one at a time. At the first
/// failed write the pass stops (one warning, not one per pod: a missing RBAC grant or an
/// overloaded API server fails them all) and the models left are kept for the next pass.
pub async fn refresh_once(state: &ExtenderState, all: bool) -> Pass {
    let book = state.deletion_costs();
    let mut pass = Pass::default();
    let updates = book.due(state, all);
    let total = updates.len();
    let mut left = updates.into_iter();
    for update in left.by_ref() {
        match state
            .binder()
            .set_deletion_cost(&update.namespace, &update.name, update.cost)
            .await
        {
            Ok(()) => {
                book.wrote(&update);
                pass.written += 1;
            }
            Err(CostWriteError::Gone) => {
                // Its deletion event settles the order.
                book.gone(&update.id);
            }
            Err(CostWriteError::Failed(error)) => {
                tracing::warn!(pod = %format!("{}/{}", update.namespace, update.name), annotation = ANNOTATION_DELETION_COST, %error, pending = total - pass.written, "could not update the deletion cost; retrying later");
                book.failed(&update);
                pass.failed = true;
                break;
            }
        }
    }
    for update in left {
        book.postpone(&update);
    }
    if pass.written > 0 {
        tracing::debug!(written = pass.written, "deletion costs refreshed");
    }
    pass
}

/// Longest wait between passes after failed writes.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Refreshes deletion costs every `every` while the state is ready, all models every
/// [`RESYNC_PASSES`] passes; after a failed write the wait doubles, up to [`MAX_BACKOFF`],
/// until a pass succeeds. With a `gate`, passes run only while the Lease does not name another
/// replica's scheduler (see [`crate::extender::lease`]); the first pass after such a spell
/// refreshes every model.
pub async fn refresh_deletion_costs(
    state: Arc<ExtenderState>,
    every: Duration,
    gate: Option<LeaseGate>,
) {
    let mut pass: u64 = 0;
    let mut wait = every;
    let mut last_turn: Option<Turn> = None;
    let mut resync = false;
    loop {
        tokio::time::sleep(wait).await;
        if !state.is_ready() {
            continue;
        }
        if let Some(gate) = &gate {
            let turn = gate.turn().await;
            // Logged when it changes (an unreadable Lease once per spell, whatever the error).
            let same = match (&last_turn, &turn) {
                (Some(Turn::Unknown(_)), Turn::Unknown(_)) => true,
                (last, turn) => last.as_ref() == Some(turn),
            };
            if !same {
                log_turn(gate, &turn);
            }
            let writes = turn.writes();
            state.deletion_costs().set_writes(writes);
            last_turn = Some(turn);
            if !writes {
                resync = true;
                wait = every;
                continue;
            }
        }
        pass += 1;
        let all = std::mem::take(&mut resync) || pass.is_multiple_of(RESYNC_PASSES);
        let done = refresh_once(&state, all).await;
        wait = if done.failed {
            (wait * 2).min(MAX_BACKOFF.max(every))
        } else {
            every
        };
    }
}

fn log_turn(gate: &LeaseGate, turn: &Turn) {
    let lease = gate.lease();
    let identity = gate.identity();
    match turn {
        Turn::Leads => {
            tracing::info!(%lease, identity, "this replica's scheduler holds the Lease: writing deletion costs")
        }
        Turn::Follows(holder) => {
            tracing::info!(%lease, identity, holder, "another replica's scheduler holds the Lease: leaving deletion costs to it")
        }
        Turn::Unknown(why) => {
            tracing::warn!(%lease, identity, why, "cannot tell which replica leads: writing deletion costs here too")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::deletion::tests::{add_nodes, node, pod};
    use crate::core::{record_bound, Catalog, Config};
    use crate::extender::binder::RecordOnly;

    #[test]
    fn the_book_asks_for_what_differs_and_settles_on_the_echo() {
        let state = ExtenderState::new(Config::default(), Catalog::default(), Box::new(RecordOnly));
        let book = CostBook::default();
        let mut demands = Vec::new();
        {
            let mut inventory = state.write();
            add_nodes(
                &mut inventory,
                [
                    node("t4-a", "a", "Tesla-T4", 15360, 1),
                    node("a100-b", "b", "NVIDIA-A100-SXM4-80GB", 81920, 1),
                ],
            );
            for (name, on) in [("small", "t4-a"), ("big", "a100-b")] {
                let demand = pod(name, "12Gi", None);
                record_bound(&mut inventory, &demand, on, Some(&[0]));
                demands.push(demand);
            }
        }
        for demand in &demands {
            book.saw_bound(&demand.id, "sdxl", Some("0"), Some(demand.clone()));
        }
        // One replica per zone, each at height 1: the one on the A100, where a T4 fits SDXL,
        // is oversized and goes first (−3 against −2).
        let due = book.due(&state, false);
        let costs: Vec<(&str, i64)> = due.iter().map(|u| (u.name.as_str(), u.cost)).collect();
        assert_eq!(costs.len(), 2);
        assert!(
            costs.contains(&("big", -3)) && costs.contains(&("small", -2)),
            "{costs:?}"
        );
        for update in &due {
            book.wrote(update);
        }
        assert_eq!(book.written(), 2);
        // The watch echoes the writes: nothing changed, nothing due, even on a full pass.
        book.saw_bound("big", "sdxl", Some("-3"), None);
        book.saw_bound("small", "sdxl", Some("-2"), None);
        assert!(book.due(&state, false).is_empty());
        assert!(book.due(&state, true).is_empty());
        // Someone else rewrites one: it is put back on the next pass.
        book.saw_bound("small", "sdxl", Some("7"), None);
        let due = book.due(&state, false);
        assert_eq!(
            due.iter()
                .map(|u| (u.name.as_str(), u.cost))
                .collect::<Vec<_>>(),
            [("small", -2)]
        );
        book.failed(&due[0]);
        assert_eq!(book.failures(), 1);
        assert_eq!(
            book.due(&state, false).len(),
            1,
            "a failed write is retried"
        );
        // A replica the watch has not shown bound is never written; a gone one is forgotten.
        book.gone("big");
        book.gone("big");
        state.write().remove("big");
        book.wrote(&due[0]);
        assert!(book.due(&state, true).is_empty());
        assert!(!book.tracks("big", "sdxl"));
        book.saw_bound("unreadable", "sdxl", Some("-2"), None);
        assert!(!book.tracks("unreadable", "sdxl"));
        assert!(book.tracks("small", "sdxl"));
        book.retain(|_| false);
        assert!(!book.tracks("small", "sdxl"));
    }

    /// A binder whose deletion-cost writes are all refused, counting them.
    #[derive(Default)]
    struct Refusing(Arc<AtomicU64>);

    impl crate::extender::binder::Binder for Refusing {
        fn bind<'a>(
            &'a self,
            _: &'a crate::extender::binder::BindTarget,
            _: &'a crate::core::Placement,
            _: Option<i64>,
        ) -> futures::future::BoxFuture<'a, Result<(), crate::extender::binder::BindFailure>>
        {
            Box::pin(async { Ok(()) })
        }

        fn set_deletion_cost<'a>(
            &'a self,
            _: &'a str,
            _: &'a str,
            _: i64,
        ) -> futures::future::BoxFuture<'a, Result<(), CostWriteError>> {
            self.0.fetch_add(1, Ordering::Relaxed);
            Box::pin(async { Err(CostWriteError::Failed("pods is forbidden (403)".into())) })
        }
    }

    #[tokio::test]
    async fn a_refused_write_stops_the_pass_and_keeps_every_model_for_the_next() {
        let tries = Arc::new(AtomicU64::new(0));
        let state = ExtenderState::new(
            Config::default(),
            Catalog::default(),
            Box::new(Refusing(tries.clone())),
        );
        {
            let mut inventory = state.write();
            add_nodes(
                &mut inventory,
                [node("a100", "a", "NVIDIA-A100-SXM4-80GB", 81920, 2)],
            );
            for (name, device) in [("r0", 0), ("r1", 1)] {
                let demand = pod(name, "12Gi", None);
                record_bound(&mut inventory, &demand, "a100", Some(&[device]));
                state
                    .deletion_costs()
                    .saw_bound(name, "sdxl", None, Some(demand));
            }
        }
        let pass = refresh_once(&state, false).await;
        assert_eq!(
            pass,
            Pass {
                written: 0,
                failed: true
            }
        );
        assert_eq!(tries.load(Ordering::Relaxed), 1, "one try, not one per pod");
        assert_eq!(state.deletion_costs().failures(), 1);
        assert_eq!(state.deletion_costs().due(&state, false).len(), 2);
    }
}
