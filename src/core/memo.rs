//! The judgement memo: a node's verdict and fragmentation change for a pod shape, kept until the
//! node changes.
//!
//! kube-scheduler asks about the replicas of a Deployment one after another, and between two of
//! them only the node that took the last one changes. So the inventory keeps, for the few pod
//! shapes asked about most recently, each node's verdict ([`fit_node`](super::fit_node)) and
//! fragmentation assessment, stamped with the node's *generation*: a number the inventory
//! renews whenever the node, its occupancy, its host resources or the published workload profile
//! change. A stamp that no longer matches is recomputed on the next request. Generations are
//! never reused, so a slot that now holds another node cannot match an old entry.
//!
//! Bounded: at most [`MEMO_SHAPES`] shapes, one entry per node slot each.

use std::sync::Mutex;

use super::demand::PodDemand;
use super::filter::{Fit, Reason};
use super::host::Host;

/// How many pod shapes the memo keeps (least recently used goes first).
pub const MEMO_SHAPES: usize = 8;

/// What a node's verdict and fragmentation change depend on in a pod's demand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeKey {
    resource: Option<&'static str>,
    devices: u32,
    vram_mib: u64,
    sharing: bool,
    headroom_percent: u8,
    products: Vec<String>,
    /// The pod's cpu/memory: it moves the fragmentation change, not the verdict.
    host: Host,
}

impl ShapeKey {
    /// The key of a demand.
    pub fn of(demand: &PodDemand) -> ShapeKey {
        ShapeKey {
            resource: demand.resource,
            devices: demand.devices,
            vram_mib: demand.vram_mib,
            sharing: demand.is_sharing(),
            headroom_percent: demand.headroom_percent,
            products: demand.products.clone(),
            host: demand.host,
        }
    }
}

/// One node's memoised judgement for one shape.
#[derive(Debug, Clone)]
pub struct Judged {
    /// The node's generation when this was computed.
    pub generation: u64,
    /// The filter verdict: the fit, or why the node was rejected.
    pub verdict: Result<Fit, Reason>,
    /// The changes placing the pod makes and the fit it chose, once prioritize asked.
    pub assessed: Option<(super::frag::Change, Fit)>,
}

/// The memo of one shape: an entry per node slot.
#[derive(Debug, Clone)]
pub struct ShapeMemo {
    /// The shape this memo is for.
    pub key: ShapeKey,
    entries: Vec<Option<Judged>>,
}

impl ShapeMemo {
    fn new(key: ShapeKey) -> ShapeMemo {
        ShapeMemo {
            key,
            entries: Vec::new(),
        }
    }

    /// The entry of `slot` if it was computed at `generation`.
    pub fn get(&self, slot: usize, generation: u64) -> Option<&Judged> {
        self.entries
            .get(slot)
            .and_then(Option::as_ref)
            .filter(|j| j.generation == generation)
    }

    /// The entry of `slot` if current, for adding the assessment.
    pub fn get_mut(&mut self, slot: usize, generation: u64) -> Option<&mut Judged> {
        self.entries
            .get_mut(slot)
            .and_then(Option::as_mut)
            .filter(|j| j.generation == generation)
    }

    /// Stores the entry of `slot`, replacing what was there.
    pub fn put(&mut self, slot: usize, judged: Judged) -> &mut Judged {
        if self.entries.len() <= slot {
            self.entries.resize(slot + 1, None);
        }
        self.entries[slot].insert(judged)
    }

    /// Drops entries of slots at or beyond `slots` (nodes removed).
    fn truncate(&mut self, slots: usize) {
        self.entries.truncate(slots);
    }
}

/// The memo of the most recent shapes. Requests holding the inventory's read lock take a
/// shape's memo out, fill it, and put it back; two requests for the same shape at once each
/// work on their own copy (the later one put back is kept).
#[derive(Debug, Default)]
pub struct Memo {
    shapes: Mutex<Vec<ShapeMemo>>,
}

impl Clone for Memo {
    /// A copy of an inventory starts with an empty memo (its generations are its own).
    fn clone(&self) -> Self {
        Memo::default()
    }
}

impl Memo {
    /// Takes the memo of `key` out (a new, empty one when absent).
    pub fn take(&self, key: &ShapeKey) -> ShapeMemo {
        let mut shapes = self.lock();
        match shapes.iter().position(|m| m.key == *key) {
            Some(i) => shapes.remove(i),
            None => ShapeMemo::new(key.clone()),
        }
    }

    /// Puts a shape's memo back as the most recently used, dropping the least recently used
    /// beyond [`MEMO_SHAPES`].
    pub fn put_back(&self, memo: ShapeMemo) {
        let mut shapes = self.lock();
        shapes.retain(|m| m.key != memo.key);
        shapes.push(memo);
        if shapes.len() > MEMO_SHAPES {
            let excess = shapes.len() - MEMO_SHAPES;
            shapes.drain(..excess);
        }
    }

    /// Forgets entries of slots at or beyond `slots`.
    pub fn truncate(&mut self, slots: usize) {
        for memo in self.lock().iter_mut() {
            memo.truncate(slots);
        }
    }

    /// Number of shapes held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no shape is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<ShapeMemo>> {
        // A panic while the lock was held leaves at worst a memo that misses: keep using it.
        self.shapes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
