//! The ledger's binding state machine, the way kube-scheduler's cache assumes and forgets pods.
//!
//! A bind [`reserve`](Inventory::reserve)s devices with the same verdict filter gives (so filter
//! and bind agree by construction), the binder's answer then [`confirm`](Inventory::confirm)s,
//! [`release`](Inventory::release)s (a definite refusal) or
//! [`mark_ambiguous`](Inventory::mark_ambiguous)es it (the binding may exist), the pod watch
//! turns it into reality ([`observe_pod`](Inventory::observe_pod)), and a reservation nothing
//! settles [`expire`](Inventory::expire)s. After a restart the ledger is
//! [`rebuild`](Inventory::rebuild)t from bound pods. Pure and synchronous: time is passed in.
//!
//! ```text
//!            reserve            confirm (binder ok)
//!   (none) ──────────► Assumed ───────────────────► Confirmed
//!                       │  │ mark_ambiguous             │
//!     release (4xx) ◄───┘  └──► Assumed{ambiguous}      │
//!     expire(ttl)  ◄──── any reservation ◄──────────────┘
//!   pod seen bound (watch, restart) ──► Bound ── pod finished / gone ──► (none)
//! ```

use std::time::{Duration, Instant};

use super::catalog::Catalog;
use super::config::Config;
use super::demand::{
    bound_host_request, pod_demand, DemandError, PodDemand, ANNOTATION_HEADROOM,
    ANNOTATION_PRODUCTS, ANNOTATION_VRAM, LABEL_MODEL,
};
use super::facts::PodFacts;
use super::filter::Reason;
use super::inventory::{DeviceShare, Inventory, Placement, Stage};
use super::node::NodeInfo;
use super::schedule::{
    parse_assigned_devices, record_bound, verdict, Demand, ANNOTATION_ASSIGNED_DEVICES,
};

/// What [`Inventory::reserve`] granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// The pod's ledger identity.
    pub id: String,
    /// Where the pod goes and what it holds there (no devices for an accelerator-free pod).
    pub placement: Placement,
    /// Whether the binder still has to make it real: false when the pod is already bound or the
    /// binder already reported success.
    pub needs_binding: bool,
}

/// Why [`Inventory::reserve`] refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReserveError {
    /// The pod already holds (or is reserved) a place on another node.
    #[error("already placed on {node}")]
    PlacedElsewhere {
        /// The node it is placed on.
        node: String,
    },
    /// The node's verdict is a rejection, the same filter would give.
    #[error("{0}")]
    NoFit(Reason),
}

/// Why [`Inventory::relocate`] refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelocateError {
    /// The pod holds nothing in the ledger.
    #[error("pod {0} holds nothing in the ledger")]
    UnknownPod(String),
    /// The pod would be moved onto no devices.
    #[error("pod {0} cannot be moved to an empty device list")]
    NoDevices(String),
}

/// What a pod (from a watch event or a restart's list) meant for the ledger.
#[derive(Debug, Clone, PartialEq)]
pub enum Observed {
    /// Not bound yet: its demand, for the bind that follows.
    Pending(Demand),
    /// Bound and recorded as holding its devices (none for an accelerator-free pod). `ignored`
    /// is the invalid VRAM declaration that was left out so its devices still count.
    Bound {
        /// The invalid VRAM declaration left out, if any.
        ignored: Option<DemandError>,
    },
    /// Bound, but even its device count is unreadable: not counted.
    Unreadable(DemandError),
    /// Succeeded or Failed: whatever it held is released.
    Finished,
}

impl Placement {
    /// The placement `fit` describes for `demand` on `node`.
    pub fn from_fit(demand: &PodDemand, node: &NodeInfo, fit: &super::filter::Fit) -> Self {
        Placement {
            pod: demand.key.clone(),
            node: node.name.clone(),
            zone: node.zone_name(),
            model: demand.model.clone(),
            shares: fit.shares(),
            exclusive: fit.exclusive,
        }
    }
}

impl Inventory {
    /// Reserves `node` for the pod (kube-scheduler's *assume*), judged by the same verdict
    /// filter gives: an accelerator-free pod passes on any node and holds nothing; any other
    /// pod holds the devices the verdict chose, as [`Stage::Assumed`] since `now`. A repeat for
    /// the same node returns the existing placement (binding is idempotent).
    pub fn reserve(
        &mut self,
        demand: &Demand,
        node: &str,
        now: Instant,
    ) -> Result<Reservation, ReserveError> {
        if let Ok(pod) = demand {
            if let Some(entry) = self.ledger.get(&pod.id) {
                if entry.placement.node != node {
                    return Err(ReserveError::PlacedElsewhere {
                        node: entry.placement.node.clone(),
                    });
                }
                return Ok(Reservation {
                    id: pod.id.clone(),
                    placement: entry.placement.clone(),
                    needs_binding: matches!(entry.stage, Stage::Assumed { .. }),
                });
            }
        }
        let info = self.node(node);
        let fit = verdict(info, demand).map_err(ReserveError::NoFit)?;
        let pod = match demand {
            Ok(pod) => pod,
            // `verdict` already rejected it; kept as an answer rather than a panic.
            Err(error) => {
                return Err(ReserveError::NoFit(Reason::InvalidPod {
                    message: error.to_string(),
                }))
            }
        };
        let placement = match info {
            Some(info) => Placement::from_fit(pod, info, &fit),
            None => Placement {
                pod: pod.key.clone(),
                node: node.to_string(),
                zone: None,
                model: pod.model.clone(),
                shares: Vec::new(),
                exclusive: false,
            },
        };
        if !pod.is_accelerator_free() {
            let stage = Stage::Assumed {
                since: now,
                ambiguous: false,
            };
            self.insert(&pod.id, placement.clone(), stage);
            // Released with the reservation; an accelerator-free pod holds nothing to release,
            // so its cpu and memory count once the watch sees it bound.
            self.hold_host(&pod.id, node, pod.host);
        }
        Ok(Reservation {
            id: pod.id.clone(),
            placement,
            needs_binding: true,
        })
    }

    /// The binder reported success (kube-scheduler's *finish binding*): the reservation waits
    /// for the pod watch, and expires `ttl` after `now` if the watch never shows it. Returns
    /// whether a reservation changed.
    pub fn confirm(&mut self, id: &str, now: Instant) -> bool {
        match self.ledger.get_mut(id) {
            Some(entry) if matches!(entry.stage, Stage::Assumed { .. }) => {
                entry.stage = Stage::Confirmed { since: now };
                true
            }
            _ => false,
        }
    }

    /// The binder definitely refused (kube-scheduler's *forget*): releases the reservation,
    /// unless an earlier attempt failed ambiguously or succeeded, or the pod is seen bound.
    pub fn release(&mut self, id: &str) -> Option<Placement> {
        match self.ledger.get(id)?.stage {
            Stage::Assumed {
                ambiguous: false, ..
            } => self.remove(id),
            _ => None,
        }
    }

    /// The binder failed ambiguously (a timeout, a 5xx): the binding may exist, so the devices
    /// stay reserved until the pod watch or the TTL settles it, whatever later attempts say.
    pub fn mark_ambiguous(&mut self, id: &str) -> bool {
        match self.ledger.get_mut(id) {
            Some(entry) => match &mut entry.stage {
                Stage::Assumed { ambiguous, .. } => {
                    *ambiguous = true;
                    true
                }
                _ => false,
            },
            None => false,
        }
    }

    /// Releases reservations ([`Stage::Assumed`], [`Stage::Confirmed`]) older than `ttl` at
    /// `now` that no pod event turned into [`Stage::Bound`]. Returns the released pods' ids.
    pub fn expire(&mut self, now: Instant, ttl: Duration) -> Vec<String> {
        let expired: Vec<String> = self
            .ledger
            .iter()
            .filter(|(_, e)| match e.stage {
                Stage::Assumed { since, .. } | Stage::Confirmed { since } => {
                    now.saturating_duration_since(since) > ttl
                }
                Stage::Bound => false,
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            self.remove(id);
        }
        expired
    }

    /// Reservations not yet seen bound.
    pub fn reserved(&self) -> usize {
        self.ledger
            .values()
            .filter(|e| !matches!(e.stage, Stage::Bound))
            .count()
    }

    /// A pod is seen bound to `node`: its reservation there becomes [`Stage::Bound`], or it is
    /// recorded afresh (on the `assigned` devices when known) — reality is never refused.
    pub fn observe_bound(&mut self, demand: &PodDemand, node: &str, assigned: Option<&[u32]>) {
        if let Some(entry) = self.ledger.get_mut(&demand.id) {
            if entry.placement.node == node {
                entry.stage = Stage::Bound;
                return;
            }
        }
        record_bound(self, demand, node, assigned);
    }

    /// Applies what a pod's current object says: finished pods release, bound pods hold their
    /// devices (see [`Inventory::observe_bound`]), pending pods only report their demand.
    pub fn observe_pod(
        &mut self,
        facts: &PodFacts,
        config: &Config,
        catalog: &Catalog,
    ) -> Observed {
        if facts.is_finished() {
            self.remove(&facts.ledger_id());
            return Observed::Finished;
        }
        let Some(node) = facts.node_name.as_deref() else {
            return Observed::Pending(pod_demand(facts, config, catalog));
        };
        // Every bound pod's cpu and memory count on its node, whatever it asks of accelerators.
        let id = facts.ledger_id();
        let request = bound_host_request(facts);
        let observed = match bound_pod_demand(facts, config, catalog) {
            Ok((demand, ignored)) => {
                let assigned = facts
                    .annotations
                    .get(ANNOTATION_ASSIGNED_DEVICES)
                    .and_then(|raw| parse_assigned_devices(raw));
                self.observe_bound(&demand, node, assigned.as_deref());
                Observed::Bound { ignored }
            }
            Err(error) => Observed::Unreadable(error),
        };
        self.hold_host(&id, node, request);
        observed
    }

    /// After a full relist of pods: removes the bound pods `keep` rejects (gone while the watch
    /// was down), with their cpu and memory. Reservations stay: their binds may still be in
    /// flight. Returns how many went.
    pub fn retain_pods(&mut self, keep: impl Fn(&str) -> bool) -> usize {
        let mut gone: Vec<String> = self
            .ledger
            .iter()
            .filter(|(id, e)| e.stage == Stage::Bound && !keep(id))
            .map(|(id, _)| id.clone())
            .collect();
        // Pods holding only cpu and memory (accelerator-free ones); a reservation's stay.
        gone.extend(
            self.host_holders()
                .filter(|id| !keep(id) && !self.ledger.contains_key(*id))
                .cloned(),
        );
        for id in &gone {
            self.remove(id);
        }
        gone.len()
    }

    /// Moves pod `id`'s holding to `devices` on the same node, with the same VRAM on each (the
    /// devices the kubelet really gave a whole-device pod). Reality is recorded, never refused:
    /// the stage is kept and the devices are not re-checked. Returns the new placement.
    pub fn relocate(&mut self, id: &str, devices: &[u32]) -> Result<&Placement, RelocateError> {
        let entry = self
            .ledger
            .get(id)
            .ok_or_else(|| RelocateError::UnknownPod(id.to_string()))?;
        if devices.is_empty() {
            return Err(RelocateError::NoDevices(id.to_string()));
        }
        let stage = entry.stage;
        let vram_mib = entry.placement.shares.first().map_or(0, |s| s.vram_mib);
        let mut placement = entry.placement.clone();
        placement.shares = devices
            .iter()
            .map(|&index| DeviceShare { index, vram_mib })
            .collect();
        self.insert(id, placement, stage);
        Ok(&self.ledger[id].placement)
    }

    /// The ledger after a restart: the workload model seeded from the catalog, every node, then
    /// every pod of a full list observed in order (bound, unfinished pods hold their devices).
    /// Returns one [`Observed`] per pod.
    pub fn rebuild<'a>(
        nodes: impl IntoIterator<Item = NodeInfo>,
        pods: impl IntoIterator<Item = &'a PodFacts>,
        config: &Config,
        catalog: &Catalog,
    ) -> (Inventory, Vec<Observed>) {
        let mut inventory = Inventory::new();
        inventory.seed_workload(&config.workload, catalog, config.headroom_percent);
        for node in nodes {
            inventory.upsert_node(node);
        }
        let observed = pods
            .into_iter()
            .map(|pod| inventory.observe_pod(pod, config, catalog))
            .collect();
        (inventory, observed)
    }
}

/// A bound pod's demand. When its VRAM declarations are invalid they are left out (and
/// returned) so its devices still count; only an unreadable device count is an error.
fn bound_pod_demand(
    facts: &PodFacts,
    config: &Config,
    catalog: &Catalog,
) -> Result<(PodDemand, Option<DemandError>), DemandError> {
    let error = match pod_demand(facts, config, catalog) {
        Ok(demand) => return Ok((demand, None)),
        Err(error) => error,
    };
    let mut relaxed = facts.clone();
    for key in [ANNOTATION_VRAM, ANNOTATION_HEADROOM, ANNOTATION_PRODUCTS] {
        relaxed.annotations.remove(key);
    }
    // Host quantities do not decide where devices are held (observe_pod counts them apart).
    for c in relaxed
        .containers
        .iter_mut()
        .chain(&mut relaxed.init_containers)
    {
        for key in ["cpu", "memory"] {
            c.requests.remove(key);
            c.limits.remove(key);
        }
    }
    relaxed.labels.remove(LABEL_MODEL);
    match pod_demand(&relaxed, config, catalog) {
        Ok(demand) => Ok((demand, Some(error))),
        Err(_) => Err(error),
    }
}
