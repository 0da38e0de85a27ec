//! The workload model: a compact, bounded, decaying distribution of the pod shapes vramfit
//! expects, which the fragmentation term ([`super::frag`]) measures nodes against.
//!
//! A [`Shape`] is what a pod asks of one node: VRAM per device, whole devices or a share of one,
//! the accelerator resource, allowed products, headroom, and host cpu/memory. Every observation
//! adds weight to its shape; older observations fade with a half-life counted in observed pods.
//! At most `maxShapes` shapes are kept: a new shape evicts the lightest one, so the model's size
//! and the cost of an observation are bounded whatever arrives.
//!
//! The fragmentation term does not read the live weights: it reads a published
//! [`WorkloadProfile`] — the heaviest shapes covering `coverage` of the weight, renormalised — which
//! is republished only when the live distribution has moved by more than [`REPUBLISH_DISTANCE`]
//! (total variation). Each republish makes the inventory recompute every node's cached
//! fragmentation, so a steady workload costs nothing after warm-up.

use std::collections::VecDeque;
use std::sync::Arc;

use rustc_hash::FxHashSet;
use serde::{Deserialize, Serialize};

use super::catalog::Catalog;
use super::demand::{PodDemand, MAX_DEVICES, MAX_VRAM_MIB};

/// Most shapes a model may be configured to keep.
pub const MAX_SHAPES_LIMIT: usize = 256;
/// The most observations one [`WorkloadModel::add_batch`] call counts (10¹²).
pub const MAX_BATCH_COUNT: f64 = 1e12;

/// Total-variation distance between the live and the published distribution above which a new
/// profile is published.
pub const REPUBLISH_DISTANCE: f64 = 0.02;
/// Most allowed products one shape keeps (a longer allow-list is kept as "any product").
pub const MAX_SHAPE_PRODUCTS: usize = 8;
/// Longest product name a shape keeps (a longer one makes the list "any product").
pub const MAX_PRODUCT_NAME: usize = 64;
/// Pod ids remembered so that a pod seen twice (asked about, then bound) counts once.
const RECENT_IDS: usize = 4096;
/// Weight added by one observation grows by the decay factor each time; when it passes this,
/// every weight is rescaled so nothing overflows.
const RESCALE_ABOVE: f64 = 1e100;

/// What one pod asks of one node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Shape {
    /// VRAM per device in MiB (0: any idle device, for whole-device pods that declare none).
    pub vram_mib: u64,
    /// Whole devices; 0 for a pod sharing one device by VRAM.
    pub devices: u32,
    /// Whole-device resource (`nvidia.com/gpu`); `None` for sharing pods and catalog entries.
    pub resource: Option<&'static str>,
    /// Allowed products or classes, sorted; empty allows all.
    pub products: Vec<String>,
    /// Percent of each device kept free.
    pub headroom_percent: u8,
    /// Host cpu request in milli-cores (0 when unknown).
    pub cpu_milli: u64,
    /// Host memory request in MiB (0 when unknown).
    pub memory_mib: u64,
}

impl Shape {
    /// The shape of a pod's demand, its cpu and memory requests included; `None` for pods
    /// that ask nothing of accelerators.
    pub fn of(demand: &PodDemand) -> Option<Shape> {
        if demand.is_accelerator_free() {
            return None;
        }
        let sharing = demand.is_sharing();
        Some(Shape::new(
            demand.vram_mib,
            if sharing { 0 } else { demand.devices.max(1) },
            if sharing { None } else { demand.resource },
            &demand.products,
            demand.headroom_percent,
            demand.host.cpu_milli,
            demand.host.memory_mib,
        ))
    }

    /// A shape with every value clamped to what the core accepts, so extreme input stays bounded.
    pub fn new(
        vram_mib: u64,
        devices: u32,
        resource: Option<&'static str>,
        products: &[String],
        headroom_percent: u8,
        cpu_milli: u64,
        memory_mib: u64,
    ) -> Shape {
        let mut products: Vec<String> = products
            .iter()
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect();
        if products.len() > MAX_SHAPE_PRODUCTS
            || products.iter().any(|p| p.len() > MAX_PRODUCT_NAME)
        {
            products.clear();
        }
        products.sort();
        products.dedup();
        Shape {
            vram_mib: vram_mib.min(MAX_VRAM_MIB),
            devices: devices.min(MAX_DEVICES),
            resource,
            products,
            headroom_percent: headroom_percent.min(super::config::MAX_HEADROOM_PERCENT),
            cpu_milli: cpu_milli.min(u64::from(u32::MAX)),
            memory_mib: memory_mib.min(MAX_VRAM_MIB * 64),
        }
    }

    /// Whether the pod shares one device by VRAM.
    pub fn is_sharing(&self) -> bool {
        self.devices == 0
    }
}

/// The workload model's knobs (`workload:` in the placement config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct WorkloadParams {
    /// Most distinct shapes kept; a new shape evicts the lightest.
    pub max_shapes: usize,
    /// Observations after which an observation's weight has halved.
    pub half_life_pods: f64,
    /// Share of the weight (0–1] the published profile covers, heaviest shapes first.
    pub coverage: f64,
    /// What a shape's share counts: `pods` (how often it arrives) or `vram` (how much VRAM its
    /// arrivals ask for in all: pods × VRAM per device × devices).
    pub weigh_by: WeighBy,
    /// How capacity counts as lost to a shape (`reach` or `fill`, see `core::frag`).
    pub measure: super::frag::FragMeasure,
    /// How many sharing pods the `lookahead` term expects a device's free VRAM to wait for: a
    /// gap counts as lost to the sharing pods by the chance that none of that many fits it
    /// (1: FGD's one-pod measure).
    pub patience: f64,
}

/// Default [`WorkloadParams::patience`].
pub const DEFAULT_PATIENCE: f64 = 12.0;

/// Largest accepted [`WorkloadParams::patience`].
pub const MAX_PATIENCE: f64 = 64.0;

/// What a shape's share in the published profile counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeighBy {
    /// Arrivals.
    Pods,
    /// VRAM asked for by the arrivals.
    Vram,
}

impl Shape {
    /// Total VRAM one pod of this shape asks for (MiB).
    pub fn total_vram_mib(&self) -> f64 {
        self.vram_mib as f64 * f64::from(self.devices.max(1))
    }
}

impl Default for WorkloadParams {
    fn default() -> Self {
        WorkloadParams {
            max_shapes: 256,
            half_life_pods: 5000.0,
            coverage: 1.0,
            weigh_by: WeighBy::Pods,
            measure: super::frag::FragMeasure::Reach,
            patience: DEFAULT_PATIENCE,
        }
    }
}

/// Why workload parameters were refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum WorkloadParamsError {
    /// `workload.maxShapes` is 0 or above [`MAX_SHAPES_LIMIT`].
    #[error("workload.maxShapes must be 1..={MAX_SHAPES_LIMIT}, got {0}")]
    MaxShapes(usize),
    /// `workload.halfLifePods` is below 1 or not finite.
    #[error("workload.halfLifePods must be a finite number ≥ 1, got {0}")]
    HalfLife(f64),
    /// `workload.coverage` is outside (0, 1].
    #[error("workload.coverage must be in (0, 1], got {0}")]
    Coverage(f64),
    /// `workload.patience` is outside [1, [`MAX_PATIENCE`]].
    #[error("workload.patience must be a number in [1, {MAX_PATIENCE}], got {0}")]
    Patience(f64),
}

impl WorkloadParams {
    /// Checks the ranges.
    pub fn validate(&self) -> Result<(), WorkloadParamsError> {
        if self.max_shapes == 0 || self.max_shapes > MAX_SHAPES_LIMIT {
            return Err(WorkloadParamsError::MaxShapes(self.max_shapes));
        }
        if !(self.half_life_pods.is_finite() && self.half_life_pods >= 1.0) {
            return Err(WorkloadParamsError::HalfLife(self.half_life_pods));
        }
        if !(self.coverage > 0.0 && self.coverage <= 1.0) {
            return Err(WorkloadParamsError::Coverage(self.coverage));
        }
        if !(1.0..=MAX_PATIENCE).contains(&self.patience) {
            return Err(WorkloadParamsError::Patience(self.patience));
        }
        Ok(())
    }
}

/// One shape of a published profile and its share of the profile (the shares sum to 1).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Expected {
    /// The shape.
    #[serde(flatten)]
    pub shape: Shape,
    /// Its share of the profile, in `0..=1`.
    pub share: f64,
}

/// The published distribution the fragmentation term measures against.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadProfile {
    /// Increases with every publication.
    pub version: u64,
    /// Heaviest first.
    pub shapes: Vec<Expected>,
    /// The shapes by VRAM, for the `lookahead` term.
    #[serde(skip)]
    pub sizes: super::frag::SizeIndex,
}

impl WorkloadProfile {
    /// A profile of `shapes` (heaviest first) at `version`, its size index built with
    /// `patience` ([`WorkloadParams::patience`]).
    pub fn new(version: u64, shapes: Vec<Expected>, patience: f64) -> Self {
        WorkloadProfile {
            version,
            sizes: super::frag::SizeIndex::of(&shapes, patience),
            shapes,
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    shape: Shape,
    weight: f64,
    seen: u64,
}

/// The live, decaying shape distribution and its published profile.
#[derive(Debug, Clone)]
pub struct WorkloadModel {
    params: WorkloadParams,
    entries: Vec<Entry>,
    /// Weight the next observation adds; grows by `growth` per observation (decay by inflation).
    increment: f64,
    growth: f64,
    observed: u64,
    recent: FxHashSet<String>,
    recent_order: VecDeque<String>,
    profile: Arc<WorkloadProfile>,
    /// Observations since the live distribution was last compared with the published one.
    unchecked: u64,
}

impl Default for WorkloadModel {
    fn default() -> Self {
        WorkloadModel::new(WorkloadParams::default())
    }
}

/// A read-only view of the model for operators (`GET /debug/workload`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadReport {
    /// The model's parameters.
    pub params: WorkloadParams,
    /// Pods observed since start.
    pub observed: u64,
    /// Every kept shape with its share of the live weight and how often it was seen.
    pub live: Vec<LiveShape>,
    /// What the fragmentation term uses now.
    pub published: WorkloadProfile,
}

/// A kept shape in a [`WorkloadReport`].
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LiveShape {
    /// The shape.
    #[serde(flatten)]
    pub shape: Shape,
    /// Its share of the live weight, in `0..=1`.
    pub share: f64,
    /// Pods of this shape observed.
    pub seen: u64,
}

impl WorkloadModel {
    /// An empty model (its profile is empty: no fragmentation anywhere).
    pub fn new(params: WorkloadParams) -> Self {
        let growth = 2f64.powf(1.0 / params.half_life_pods.max(1.0));
        WorkloadModel {
            params,
            entries: Vec::new(),
            increment: 1.0,
            growth,
            observed: 0,
            recent: FxHashSet::default(),
            recent_order: VecDeque::new(),
            profile: Arc::new(WorkloadProfile::default()),
            unchecked: 0,
        }
    }

    /// The parameters.
    pub fn params(&self) -> &WorkloadParams {
        &self.params
    }

    /// Replaces the parameters, keeping what was learned (lightest shapes go if fewer are kept).
    /// Returns whether the published profile changed.
    pub fn set_params(&mut self, params: WorkloadParams) -> bool {
        if params == self.params {
            return false;
        }
        let patience_changed = params.patience != self.params.patience;
        self.growth = 2f64.powf(1.0 / params.half_life_pods.max(1.0));
        self.params = params;
        self.entries
            .sort_by(|a, b| b.weight.total_cmp(&a.weight).then(a.shape.cmp(&b.shape)));
        self.entries.truncate(self.params.max_shapes.max(1));
        if self.publish() {
            return true;
        }
        if patience_changed {
            // Same shapes, measured differently: a new version so every cached node renews.
            self.set_profile(self.profile.shapes.clone());
        }
        patience_changed
    }

    /// The profile the fragmentation term reads.
    pub fn profile(&self) -> &Arc<WorkloadProfile> {
        &self.profile
    }

    /// Pods observed so far.
    pub fn observed(&self) -> u64 {
        self.observed
    }

    /// Seeds the model from the catalog: one observation per model, of the entry's VRAM on
    /// whole devices (the entry's device count, else one) of any accelerator resource, at
    /// `headroom_percent`. Publishes; returns whether the published profile changed.
    pub fn seed_from_catalog(&mut self, catalog: &Catalog, headroom_percent: u8) -> bool {
        for entry in catalog.models.values() {
            let shape = Shape::new(
                entry.vram_mib,
                entry.devices.unwrap_or(1),
                None,
                &entry.products,
                headroom_percent,
                0,
                0,
            );
            self.add(shape, 1.0);
        }
        self.publish()
    }

    /// Whether the pod `id` was counted already (empty ids never are).
    pub fn has_seen(&self, id: &str) -> bool {
        !id.is_empty() && self.recent.contains(id)
    }

    /// Counts one pod, once per `id` among the last few thousand ids (empty ids always count).
    /// Returns whether the published profile changed.
    pub fn observe(&mut self, id: &str, shape: Shape) -> bool {
        if !id.is_empty() {
            if self.recent.contains(id) {
                return false;
            }
            self.recent.insert(id.to_string());
            self.recent_order.push_back(id.to_string());
            while self.recent_order.len() > RECENT_IDS {
                if let Some(old) = self.recent_order.pop_front() {
                    self.recent.remove(&old);
                }
            }
        }
        self.add(shape, 1.0);
        self.maybe_publish()
    }

    /// Adds `count` observations of `shape` at once (seeding from a trace or a pods file) without
    /// decay between them. Call [`WorkloadModel::publish`] after a batch.
    /// Counts above [`MAX_BATCH_COUNT`] count as that many, so weights stay finite.
    pub fn add_batch(&mut self, shape: Shape, count: f64) {
        if count.is_finite() && count > 0.0 {
            self.add(shape, count.min(MAX_BATCH_COUNT));
        }
    }

    fn add(&mut self, shape: Shape, count: f64) {
        let whole = count.round().max(1.0) as u64;
        self.observed = self.observed.saturating_add(whole);
        let amount = self.increment * count;
        match self.entries.iter_mut().find(|e| e.shape == shape) {
            Some(entry) => {
                entry.weight += amount;
                entry.seen = entry.seen.saturating_add(whole);
            }
            None => {
                let entry = Entry {
                    shape,
                    weight: amount,
                    seen: whole,
                };
                if self.entries.len() < self.params.max_shapes.max(1) {
                    self.entries.push(entry);
                } else if let Some(lightest) = self
                    .entries
                    .iter_mut()
                    .min_by(|a, b| a.weight.total_cmp(&b.weight))
                {
                    *lightest = entry;
                }
            }
        }
        self.increment *= self.growth;
        if self.increment > RESCALE_ABOVE {
            let scale = 1.0 / self.increment;
            for e in &mut self.entries {
                e.weight *= scale;
            }
            self.increment = 1.0;
        }
    }

    /// The shares the profile would have now: heaviest shapes covering `coverage`, renormalised.
    fn covering(&self) -> Vec<Expected> {
        let mass = |e: &Entry| match self.params.weigh_by {
            WeighBy::Pods => e.weight,
            WeighBy::Vram => e.weight * e.shape.total_vram_mib().max(1.0),
        };
        let total: f64 = self.entries.iter().map(mass).sum();
        if total.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
            return Vec::new();
        }
        let mut order: Vec<(&Entry, f64)> = self.entries.iter().map(|e| (e, mass(e))).collect();
        order.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.shape.cmp(&b.0.shape)));
        let mut covered = 0.0;
        let mut taken = Vec::new();
        for (e, m) in order {
            if covered >= self.params.coverage * total {
                break;
            }
            covered += m;
            taken.push((e, m));
        }
        taken
            .into_iter()
            .map(|(e, m)| Expected {
                shape: e.shape.clone(),
                share: m / covered,
            })
            .collect()
    }

    fn maybe_publish(&mut self) -> bool {
        // Compare after every observation at first, then every `observed / 8`, at most 32 apart.
        self.unchecked += 1;
        if self.unchecked < (self.observed / 8).clamp(1, 32) {
            return false;
        }
        self.unchecked = 0;
        let next = self.covering();
        let current = &self.profile.shapes;
        // Total variation distance between the two distributions.
        let mut distance = 0.0;
        for e in &next {
            let old = current
                .iter()
                .find(|c| c.shape == e.shape)
                .map_or(0.0, |c| c.share);
            distance += (e.share - old).abs();
        }
        for c in current {
            if !next.iter().any(|e| e.shape == c.shape) {
                distance += c.share;
            }
        }
        let first = current.is_empty() && !next.is_empty();
        if distance / 2.0 <= REPUBLISH_DISTANCE && !first {
            return false;
        }
        self.set_profile(next);
        true
    }

    /// Publishes the live distribution now. Returns whether the profile changed.
    pub fn publish(&mut self) -> bool {
        let next = self.covering();
        if next == self.profile.shapes {
            return false;
        }
        self.set_profile(next);
        true
    }

    fn set_profile(&mut self, shapes: Vec<Expected>) {
        self.profile = Arc::new(WorkloadProfile::new(
            self.profile.version + 1,
            shapes,
            self.params.patience,
        ));
    }

    /// Number of shapes kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing was observed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// What the model holds, for operators.
    pub fn report(&self) -> WorkloadReport {
        let total: f64 = self.entries.iter().map(|e| e.weight).sum();
        let mut live: Vec<LiveShape> = self
            .entries
            .iter()
            .map(|e| LiveShape {
                shape: e.shape.clone(),
                share: if total > 0.0 { e.weight / total } else { 0.0 },
                seen: e.seen,
            })
            .collect();
        live.sort_by(|a, b| b.share.total_cmp(&a.share).then(a.shape.cmp(&b.shape)));
        WorkloadReport {
            params: self.params.clone(),
            observed: self.observed,
            live,
            published: (*self.profile).clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(vram: u64, devices: u32) -> Shape {
        Shape::new(vram, devices, None, &[], 0, 0, 0)
    }

    #[test]
    fn empty_model_publishes_nothing() {
        let model = WorkloadModel::default();
        assert!(model.profile().shapes.is_empty());
        assert!(model.is_empty());
    }

    #[test]
    fn shares_follow_observations_and_sum_to_one() {
        let mut model = WorkloadModel::new(WorkloadParams {
            coverage: 1.0,
            ..WorkloadParams::default()
        });
        for i in 0..300 {
            let s = if i % 3 == 0 {
                shape(40_000, 1)
            } else {
                shape(10_000, 0)
            };
            model.observe("", s);
        }
        model.publish();
        let p = model.profile();
        assert_eq!(p.shapes.len(), 2);
        assert_eq!(p.shapes[0].shape, shape(10_000, 0));
        assert!((p.shapes[0].share - 2.0 / 3.0).abs() < 0.01);
        assert!((p.shapes.iter().map(|e| e.share).sum::<f64>() - 1.0).abs() < 1e-9);
    }

    #[test]
    fn a_new_patience_renews_the_published_profile() {
        let mut model = WorkloadModel::default();
        model.observe("a", shape(470, 0));
        model.observe("b", shape(320, 0));
        model.observe("c", shape(1000, 1));
        model.publish();
        let before = model.profile().clone();
        let patient = WorkloadParams {
            patience: 2.0,
            ..model.params().clone()
        };
        assert!(model.set_params(patient.clone()));
        let after = model.profile();
        assert_eq!(after.shapes, before.shapes);
        assert_eq!(after.version, before.version + 1);
        assert_ne!(after.sizes, before.sizes);
        // The same parameters again change nothing.
        assert!(!model.set_params(patient));
    }

    #[test]
    fn a_pod_counts_once_by_id() {
        let mut model = WorkloadModel::default();
        assert!(model.observe("uid-1", shape(1000, 1)));
        assert!(!model.observe("uid-1", shape(1000, 1)));
        assert_eq!(model.observed(), 1);
    }

    #[test]
    fn old_observations_fade() {
        let mut model = WorkloadModel::new(WorkloadParams {
            half_life_pods: 10.0,
            coverage: 1.0,
            ..WorkloadParams::default()
        });
        for _ in 0..100 {
            model.observe("", shape(1000, 1));
        }
        for _ in 0..100 {
            model.observe("", shape(2000, 1));
        }
        model.publish();
        let p = model.profile();
        assert_eq!(p.shapes[0].shape, shape(2000, 1));
        assert!(p.shapes[0].share > 0.99, "{:?}", p.shapes);
    }

    #[test]
    fn params_are_validated() {
        assert_eq!(WorkloadParams::default().validate(), Ok(()));
        // The full text: `HalfLife(NaN)` is not equal to itself.
        for (bad, reason) in [
            (
                WorkloadParams {
                    max_shapes: 0,
                    ..WorkloadParams::default()
                },
                format!("workload.maxShapes must be 1..={MAX_SHAPES_LIMIT}, got 0"),
            ),
            (
                WorkloadParams {
                    half_life_pods: f64::NAN,
                    ..WorkloadParams::default()
                },
                "workload.halfLifePods must be a finite number ≥ 1, got NaN".to_string(),
            ),
            (
                WorkloadParams {
                    coverage: 0.0,
                    ..WorkloadParams::default()
                },
                "workload.coverage must be in (0, 1], got 0".to_string(),
            ),
            (
                WorkloadParams {
                    patience: 0.5,
                    ..WorkloadParams::default()
                },
                "workload.patience must be a number in [1, 64], got 0.5".to_string(),
            ),
            (
                WorkloadParams {
                    patience: f64::INFINITY,
                    ..WorkloadParams::default()
                },
                "workload.patience must be a number in [1, 64], got inf".to_string(),
            ),
        ] {
            assert_eq!(bad.validate().map_err(|e| e.to_string()), Err(reason));
        }
    }
}
