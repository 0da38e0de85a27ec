//! The inventory: every node's capacity plus a ledger of which pod holds what, and at which
//! [`Stage`] of binding. Occupancy on devices is always derived from the ledger, so replacing a
//! node's capacity (a new report, a label change) never loses or double-counts a placement. The
//! binding state machine (reserve, confirm, release, expire) is in [`super::ledger`].

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use serde::Serialize;

use super::catalog::Catalog;
use super::frag::{NodeFrag, Packing};
use super::host::Host;
use super::memo::Memo;
use super::name_lists::NameLists;
use super::node::NodeInfo;
use super::workload::{Shape, WorkloadParams};

/// VRAM a pod holds on one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct DeviceShare {
    /// The device's index on its node.
    pub index: u32,
    /// VRAM held on it, in MiB.
    pub vram_mib: u64,
}

/// Where a pod sits and what it holds there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Placement {
    /// `namespace/name`.
    pub pod: String,
    /// The node's name.
    pub node: String,
    /// The node's zone, if labelled.
    pub zone: Option<String>,
    /// The model the pod serves (its spreading identity), if any.
    pub model: Option<String>,
    /// VRAM held per device.
    pub shares: Vec<DeviceShare>,
    /// Whole devices (true) or VRAM on shared devices (false).
    pub exclusive: bool,
}

/// How far a placement has come. Only a bind's reservation ([`Stage::Assumed`],
/// [`Stage::Confirmed`]) can be released or expire; a pod seen bound is reality.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Reserved by a bind whose binding is not (known to be) made.
    Assumed {
        /// When the reservation was made.
        since: Instant,
        /// A binding attempt failed ambiguously: it may exist, so a later definite refusal
        /// does not release the devices (the pod watch or the TTL settles it).
        ambiguous: bool,
    },
    /// The binder reported success; the pod watch has not shown the pod bound yet.
    Confirmed {
        /// When the binder reported success (the TTL counts from then).
        since: Instant,
    },
    /// Seen bound (pod watch, snapshot, restart) or committed by a dry run.
    Bound,
}

/// One ledger entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry {
    pub(super) placement: Placement,
    pub(super) stage: Stage,
}

/// A node or zone name stored inline (up to 40 bytes, as most are), so a lookup compares bytes
/// in the table itself instead of chasing a pointer per probe.
type NameKey = smallvec::SmallVec<[u8; 40]>;

/// Replica counts of one model, by node and by zone (names kept inline), and by the slot of
/// nodes the inventory knows: scoring reads a candidate's count by slot, without its name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelReplicas {
    by_node: HashMap<NameKey, u32>,
    by_zone: HashMap<NameKey, u32>,
    by_slot: HashMap<u32, u32>,
}

impl ModelReplicas {
    /// Counts from (zone, replicas) and (node, replicas) pairs.
    pub fn from_counts<'a>(
        zones: impl IntoIterator<Item = (&'a str, u32)>,
        nodes: impl IntoIterator<Item = (&'a str, u32)>,
    ) -> Self {
        let mut replicas = Self::default();
        for (zone, n) in zones {
            *replicas.by_zone.entry(key(zone)).or_default() += n;
        }
        for (node, n) in nodes {
            *replicas.by_node.entry(key(node)).or_default() += n;
        }
        replicas
    }

    /// Replicas on node `name`.
    pub fn on_node(&self, name: &str) -> u32 {
        self.by_node.get(name.as_bytes()).copied().unwrap_or(0)
    }

    /// Replicas in zone `zone`.
    pub fn in_zone(&self, zone: &str) -> u32 {
        self.by_zone.get(zone.as_bytes()).copied().unwrap_or(0)
    }

    /// Whether some node holds a replica.
    pub fn has_node_counts(&self) -> bool {
        !self.by_node.is_empty()
    }

    /// Adds (`sign = 1`) or removes (`sign = -1`) one replica on the node at `slot`.
    fn count_slot(&mut self, slot: u32, sign: i32) {
        let count = self.by_slot.entry(slot).or_default();
        if sign > 0 {
            *count += 1;
        } else {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.by_slot.remove(&slot);
            }
        }
    }

    fn add(&mut self, node: &str, zone: Option<&str>) {
        *self.by_node.entry(key(node)).or_default() += 1;
        if let Some(zone) = zone {
            *self.by_zone.entry(key(zone)).or_default() += 1;
        }
    }

    fn subtract(&mut self, node: &str, zone: Option<&str>) {
        decrement(&mut self.by_node, node);
        if let Some(zone) = zone {
            decrement(&mut self.by_zone, zone);
        }
    }
}

fn key(name: &str) -> NameKey {
    NameKey::from_slice(name.as_bytes())
}

/// Nodes, devices and the placement ledger.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    /// Nodes stored densely; `index` maps a name to its slot.
    nodes: Vec<NodeInfo>,
    index: HashMap<NameKey, u32>,
    pub(super) ledger: HashMap<String, Entry>,
    pods_by_node: HashMap<String, BTreeSet<String>>,
    models: HashMap<String, ModelReplicas>,
    /// The workload model and each node's cached fragmentation, slot for slot with `nodes`.
    packing: Packing,
    /// Verdicts and fragmentation changes of recent pod shapes, per node slot.
    memo: Memo,
    /// One shared allocation per zone name, so nodes of a zone carry the same `Arc` and
    /// scoring looks each zone's replica count up once per request.
    zones: HashSet<Arc<str>>,
    /// Each node's zone, slot for slot with `nodes`: scoring reads zones from this dense copy
    /// instead of touching every node's own memory.
    zone_by_slot: Vec<Option<Arc<str>>>,
    /// Renewed whenever a node's slot may have moved (a removal), so remembered name lists of
    /// an older layout are not trusted.
    layout: u64,
    /// The node-name lists of recent requests, with their slots.
    name_lists: NameLists,
}

/// Distinct zone names shared between nodes; names beyond it stay unshared (still correct, only
/// looked up once per node instead of once per zone).
const MAX_INTERNED_ZONES: usize = 1024;

impl Inventory {
    /// An empty inventory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a node's capacity; placements recorded on it are applied again.
    pub fn upsert_node(&mut self, mut node: NodeInfo) {
        self.intern_zone(&mut node);
        self.rezone_placements(&node.name, node.zone.as_deref());
        self.apply_ledger(&mut node);
        self.packing
            .hosts_mut()
            .set_allocatable(&node.name, node.host);
        let slot = match self.index.get(node.name.as_bytes()) {
            Some(&slot) => {
                self.zone_by_slot[slot as usize] = node.zone.clone();
                self.nodes[slot as usize] = node;
                slot as usize
            }
            None => {
                let slot = self.nodes.len() as u32;
                self.index
                    .insert(NameKey::from_slice(node.name.as_bytes()), slot);
                self.count_models_at(&node.name, slot);
                self.zone_by_slot.push(node.zone.clone());
                self.nodes.push(node);
                slot as usize
            }
        };
        self.packing.node_changed(slot, &self.nodes[slot]);
        self.keep_cache_budget();
    }

    /// Gives the placements on node `name` its zone `zone`, and moves their replicas between
    /// the models' zone counts: a pod seen bound before its node (the pod list came first) or
    /// on a node whose zone label changed would otherwise keep counting in no zone or the old one.
    fn rezone_placements(&mut self, name: &str, zone: Option<&str>) {
        let Some(ids) = self.pods_by_node.get(name) else {
            return;
        };
        for id in ids {
            let Some(entry) = self.ledger.get_mut(id) else {
                continue;
            };
            let placement = &mut entry.placement;
            if placement.zone.as_deref() == zone {
                continue;
            }
            if let Some(replicas) = placement
                .model
                .as_deref()
                .and_then(|m| self.models.get_mut(m))
            {
                replicas.subtract(name, placement.zone.as_deref());
                replicas.add(name, zone);
            }
            placement.zone = zone.map(String::from);
        }
    }

    /// Points the node's zone at the inventory's shared copy of that name.
    fn intern_zone(&mut self, node: &mut NodeInfo) {
        let Some(zone) = &node.zone else { return };
        if let Some(shared) = self.zones.get(zone) {
            node.zone = Some(shared.clone());
        } else if self.zones.len() < MAX_INTERNED_ZONES {
            self.zones.insert(zone.clone());
        }
    }

    /// Recomputes every node when the node count moved the fragmentation term's shape limit.
    fn keep_cache_budget(&mut self) {
        if self.packing.limit_changes(self.nodes.len()) {
            self.packing.refresh_all(&self.nodes);
        }
    }

    /// Removes a node. Its placements stay in the ledger until their pods are released.
    pub fn remove_node(&mut self, name: &str) -> Option<NodeInfo> {
        let slot = self.index.remove(name.as_bytes())? as usize;
        self.layout += 1;
        let removed = self.nodes.swap_remove(slot);
        self.zone_by_slot.swap_remove(slot);
        let last = self.nodes.len() as u32;
        for replicas in self.models.values_mut() {
            replicas.by_slot.remove(&(slot as u32));
            if let Some(count) = replicas.by_slot.remove(&last) {
                replicas.by_slot.insert(slot as u32, count);
            }
        }
        self.packing.node_removed(slot, name);
        self.memo.truncate(self.nodes.len());
        self.keep_cache_budget();
        if let Some(moved) = self.nodes.get(slot) {
            self.index
                .insert(NameKey::from_slice(moved.name.as_bytes()), slot as u32);
        }
        Some(removed)
    }

    /// A node by name.
    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.index
            .get(name.as_bytes())
            .map(|&slot| &self.nodes[slot as usize])
    }

    /// Each name with its node, in order (`None`: not known). Resolves a list like the
    /// previous requests' by comparing names in order ([`super::name_lists`]), the rest by name.
    pub fn nodes_named<'n, N: AsRef<str>>(
        &self,
        names: &'n [N],
    ) -> impl Iterator<Item = (&'n str, Option<&NodeInfo>)> {
        let slots = self.name_lists.resolve(names, self.layout, |name| {
            self.index.get(name.as_bytes()).copied()
        });
        names
            .iter()
            .zip(slots)
            .map(|(name, slot)| (name.as_ref(), slot.and_then(|s| self.nodes.get(s as usize))))
    }

    /// Counts the replicas that the ledger places on node `name` (new at `slot`) by slot.
    fn count_models_at(&mut self, name: &str, slot: u32) {
        let held = self.pods_by_node.get(name).into_iter().flatten();
        for entry in held.filter_map(|id| self.ledger.get(id)) {
            let model = entry.placement.model.as_deref();
            if let Some(replicas) = model.and_then(|m| self.models.get_mut(m)) {
                replicas.count_slot(slot, 1);
            }
        }
    }

    /// The replicas of `model` (an entry of this inventory's [`Inventory::replicas`]) on `node`:
    /// read by slot when `node` is this inventory's own, else looked up by name.
    pub fn replicas_on(&self, model: &ModelReplicas, node: &NodeInfo) -> u32 {
        match self.own_slot(node) {
            Some(slot) => model.by_slot.get(&(slot as u32)).copied().unwrap_or(0),
            None => model.on_node(&node.name),
        }
    }

    /// Recomputes the cached fragmentation of a node after its occupancy changed.
    fn node_touched(&mut self, name: &str) {
        if let Some(&slot) = self.index.get(name.as_bytes()) {
            self.packing
                .node_changed(slot as usize, &self.nodes[slot as usize]);
        }
    }

    /// The workload model and the fragmentation caches.
    pub fn packing(&self) -> &Packing {
        &self.packing
    }

    /// The slot of `node` when it is this inventory's own (a reference into it, not a copy).
    pub fn own_slot(&self, node: &NodeInfo) -> Option<usize> {
        let base = self.nodes.as_ptr() as usize;
        let offset = (node as *const NodeInfo as usize).checked_sub(base)?;
        let slot = offset / std::mem::size_of::<NodeInfo>().max(1);
        self.nodes
            .get(slot)
            .is_some_and(|n| std::ptr::eq(n, node))
            .then_some(slot)
    }

    /// The zone of `node`, from the dense per-slot copy when the node is this inventory's own.
    pub fn zone_of<'a>(&'a self, node: &'a NodeInfo) -> Option<&'a str> {
        match self.own_slot(node) {
            Some(slot) => self.zone_by_slot[slot].as_deref(),
            None => node.zone.as_deref(),
        }
    }

    /// The cached fragmentation of `node` when it is this inventory's own (not a copy).
    pub fn frag_state(&self, node: &NodeInfo) -> Option<&NodeFrag> {
        self.own_slot(node)
            .and_then(|slot| self.packing.cached(slot))
    }

    /// The memo of verdicts and fragmentation changes per pod shape.
    pub fn memo(&self) -> &Memo {
        &self.memo
    }

    /// Counts a pod in the workload model (once per id); refreshes every node's fragmentation
    /// when the published profile changes.
    pub fn observe(&mut self, id: &str, shape: Shape) {
        if self.packing.model_mut().observe(id, shape) {
            self.packing.refresh_all(&self.nodes);
        }
    }

    /// Adds many observations at once (a trace, a pods file, the catalog), then publishes.
    pub fn observe_batch(&mut self, shapes: impl IntoIterator<Item = (Shape, f64)>) {
        let model = self.packing.model_mut();
        for (shape, count) in shapes {
            model.add_batch(shape, count);
        }
        if model.publish() {
            self.packing.refresh_all(&self.nodes);
        }
    }

    /// Seeds the workload model with one pod of every catalog model (a prior that the pods
    /// vramfit then sees outweigh), after applying `params`.
    pub fn seed_workload(
        &mut self,
        params: &WorkloadParams,
        catalog: &Catalog,
        headroom_percent: u8,
    ) {
        self.configure_workload(params);
        if self
            .packing
            .model_mut()
            .seed_from_catalog(catalog, headroom_percent)
        {
            self.packing.refresh_all(&self.nodes);
        }
    }

    /// Sets the workload model's parameters.
    pub fn configure_workload(&mut self, params: &WorkloadParams) {
        if self.packing.configure(params) {
            self.packing.refresh_all(&self.nodes);
        }
    }

    /// Counts pod `id`'s cpu/memory `request` on `node` (bound or reserved there), replacing
    /// what it counted before; [`Inventory::remove`] gives it back. The node's free host
    /// resources, and so its fragmentation, follow.
    pub fn hold_host(&mut self, id: &str, node: &str, request: Host) {
        let hosts = self.packing.hosts();
        let previous = match hosts.held(id) {
            Some(held) if held == (node, request) => return,
            Some((before, _)) if before != node => Some((before.to_string(), hosts.free(before))),
            _ => None,
        };
        let free = hosts.free(node);
        self.packing.hosts_mut().hold(id, node, request);
        self.host_moved(node, free);
        if let Some((before, free)) = previous {
            self.host_moved(&before, free);
        }
    }

    /// Recomputes a node's fragmentation when its free host resources are no longer `before`.
    fn host_moved(&mut self, node: &str, before: Option<Host>) {
        if self.packing.host(node) != before {
            self.node_touched(node);
        }
    }

    /// A node's free cpu/memory (allocatable minus the requests of the pods counted there);
    /// `None` when the node's allocatable is not known.
    pub fn free_host(&self, node: &str) -> Option<Host> {
        self.packing.host(node)
    }

    /// Pod ids whose cpu/memory is counted on a node.
    pub(super) fn host_holders(&self) -> impl Iterator<Item = &String> {
        self.packing.hosts().pods()
    }

    /// All nodes, in no particular order.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeInfo> {
        self.nodes.iter()
    }

    /// Number of nodes.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Applies the ledger's placements on `node` to a node built elsewhere (for example from a
    /// Node object in a filter request), so it shows the same occupancy as the inventory's own.
    pub fn apply_ledger(&self, node: &mut NodeInfo) {
        for device in &mut node.devices {
            device.reserved_mib = 0;
            device.exclusive_holders = 0;
            device.sharers = 0;
        }
        if let Some(ids) = self.pods_by_node.get(&node.name) {
            for id in ids {
                if let Some(entry) = self.ledger.get(id) {
                    occupy(node, &entry.placement, 1);
                }
            }
        }
    }

    /// Records that pod `id` is bound and holds `placement`, replacing what it held before
    /// (dry runs, replays, and pods seen bound).
    pub fn commit(&mut self, id: &str, placement: Placement) {
        self.insert(id, placement, Stage::Bound);
    }

    /// Records `placement` for pod `id` at `stage`, replacing what it held before (its host
    /// resources stay counted).
    pub(super) fn insert(&mut self, id: &str, placement: Placement, stage: Stage) {
        self.take_placement(id);
        let slot = self.index.get(placement.node.as_bytes()).copied();
        if let Some(slot) = slot {
            occupy(&mut self.nodes[slot as usize], &placement, 1);
        }
        self.node_touched(&placement.node);
        self.pods_by_node
            .entry(placement.node.clone())
            .or_default()
            .insert(id.to_string());
        if let Some(model) = &placement.model {
            let replicas = self.models.entry(model.clone()).or_default();
            replicas.add(&placement.node, placement.zone.as_deref());
            if let Some(slot) = slot {
                replicas.count_slot(slot, 1);
            }
        }
        self.ledger
            .insert(id.to_string(), Entry { placement, stage });
    }

    /// Removes whatever pod `id` holds, at any stage (the pod finished or is gone): its
    /// devices, returned, and its host resources.
    pub fn remove(&mut self, id: &str) -> Option<Placement> {
        if let Some((node, _)) = self.packing.hosts().held(id) {
            let (node, free) = (node.to_string(), self.packing.host(node));
            self.packing.hosts_mut().release(id);
            self.host_moved(&node, free);
        }
        self.take_placement(id)
    }

    /// Removes pod `id`'s placement from the ledger, returning it.
    fn take_placement(&mut self, id: &str) -> Option<Placement> {
        let placement = self.ledger.remove(id)?.placement;
        let slot = self.index.get(placement.node.as_bytes()).copied();
        if let Some(slot) = slot {
            occupy(&mut self.nodes[slot as usize], &placement, -1);
        }
        self.node_touched(&placement.node);
        if let Some(ids) = self.pods_by_node.get_mut(&placement.node) {
            ids.remove(id);
            if ids.is_empty() {
                self.pods_by_node.remove(&placement.node);
            }
        }
        if let Some(model) = &placement.model {
            if let Some(replicas) = self.models.get_mut(model) {
                replicas.subtract(&placement.node, placement.zone.as_deref());
                if let Some(slot) = slot {
                    replicas.count_slot(slot, -1);
                }
                if !replicas.has_node_counts() {
                    self.models.remove(model);
                }
            }
        }
        Some(placement)
    }

    /// What pod `id` holds, if anything.
    pub fn placement(&self, id: &str) -> Option<&Placement> {
        self.ledger.get(id).map(|e| &e.placement)
    }

    /// How far pod `id`'s placement has come, if it has one.
    pub fn stage(&self, id: &str) -> Option<Stage> {
        self.ledger.get(id).map(|e| e.stage)
    }

    /// Every placement, keyed by pod id.
    pub fn placements(&self) -> impl Iterator<Item = (&String, &Placement)> {
        self.ledger.iter().map(|(id, e)| (id, &e.placement))
    }

    /// Drops the nodes `keep` rejects (after a full relist). Their placements stay in the
    /// ledger until their pods go.
    pub fn retain_nodes(&mut self, keep: impl Fn(&str) -> bool) {
        let gone: Vec<String> = self
            .nodes
            .iter()
            .map(|n| n.name.clone())
            .filter(|n| !keep(n))
            .collect();
        for name in gone {
            self.remove_node(&name);
        }
    }

    /// Replica counts of a model.
    pub fn replicas(&self, model: &str) -> Option<&ModelReplicas> {
        self.models.get(model)
    }
}

fn decrement(map: &mut HashMap<NameKey, u32>, key: &str) {
    if let Some(count) = map.get_mut(key.as_bytes()) {
        *count = count.saturating_sub(1);
        if *count == 0 {
            map.remove(key.as_bytes());
        }
    }
}

/// Adds (`sign = 1`) or removes (`sign = -1`) a placement's occupancy on a node's devices.
fn occupy(node: &mut NodeInfo, placement: &Placement, sign: i64) {
    for share in &placement.shares {
        let Some(device) = node.devices.iter_mut().find(|d| d.index == share.index) else {
            continue;
        };
        let (counter, reserved) = if placement.exclusive {
            (&mut device.exclusive_holders, &mut device.reserved_mib)
        } else {
            (&mut device.sharers, &mut device.reserved_mib)
        };
        if sign > 0 {
            *counter += 1;
            *reserved = reserved.saturating_add(share.vram_mib);
        } else {
            *counter = counter.saturating_sub(1);
            *reserved = reserved.saturating_sub(share.vram_mib);
        }
    }
}
