//! The fragmentation term: how much accelerator capacity the expected workload could not use.
//!
//! For one node and one expected [`Shape`] s, the node's *fragment* is
//!
//! * all of its free VRAM, when s cannot land there at all: no device of an allowed product or
//!   of the right resource, fewer usable devices than s needs, or too little free cpu/memory
//!   (when the host's free resources are known);
//! * otherwise the free VRAM of the devices s cannot use (too little free, shared when s wants
//!   whole devices, product not allowed).
//!
//! A node's fragmentation is the share-weighted sum over the published [`WorkloadProfile`]; the
//! term prefers the node (and, for a sharing pod, the device) whose fragmentation grows least when
//! the pod lands. This is the fragmentation-gradient idea of Weng et al. (USENIX ATC'23), measured
//! in VRAM MiB so that devices of different sizes compare: with 40 GiB models in the workload, a
//! T4's 16 GB is fragment already, an idle A100's 80 GB is not, so a small model placed on the T4
//! lowers fragmentation and on the A100 raises it — the class best-fit rule follows.
//!
//! Cost: a node's per-shape aggregates are cached by [`Packing`] (inside the inventory) and
//! recomputed only when the node, its host resources or the published profile change; scoring a
//! candidate then costs one pass over the shapes per distinct device it could take.

use std::sync::Arc;

use smallvec::SmallVec;

use super::demand::PodDemand;
use super::filter::Fit;
use super::host::{Host, HostLedger};
use super::node::{products_allow, Device, NodeInfo, NodeProblem, Vendor};
use super::workload::{Expected, Shape, WorkloadModel, WorkloadParams, WorkloadProfile};

/// Whether `host` has too little cpu or memory free for one pod of `shape`.
fn lacks(host: &Host, shape: &Shape) -> bool {
    host.cpu_milli < shape.cpu_milli || host.memory_mib < shape.memory_mib
}

/// Device sizes beyond this (4 PiB in MiB) count as this much, so sums over a node's devices
/// (at most 64) stay far inside `u64`.
const MAX_DEVICE_MIB: u64 = 1 << 32;

/// The occupancy of one device that fragmentation depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Dev {
    total: u64,
    used: u64,
    holders: u32,
    sharers: u32,
    healthy: bool,
}

impl Dev {
    fn of(d: &Device) -> Dev {
        Dev {
            total: d.total_mib.min(MAX_DEVICE_MIB),
            used: d.used_mib().min(MAX_DEVICE_MIB),
            holders: d.exclusive_holders,
            sharers: d.sharers,
            healthy: d.healthy,
        }
    }

    /// VRAM a whole-device pod holds but does not use: lost to every shape.
    fn stranded(&self) -> u64 {
        if self.holders > 0 {
            self.total.saturating_sub(self.used)
        } else {
            0
        }
    }

    /// VRAM a pod could still use on this device (none when held whole or unhealthy).
    fn free(&self) -> u64 {
        if self.holders > 0 || !self.healthy {
            0
        } else {
            self.total.saturating_sub(self.used)
        }
    }

    /// Whether a pod of `shape` could take this device (product and resource checked elsewhere).
    fn hosts(&self, shape: &Shape) -> bool {
        if self.holders > 0 || !self.healthy || (!shape.is_sharing() && self.sharers > 0) {
            return false;
        }
        let usable = u128::from(below_headroom(self.total, shape.headroom_percent));
        usable >= u128::from(self.used) + u128::from(shape.vram_mib)
    }

    fn place(&mut self, vram_mib: u64, exclusive: bool) {
        if exclusive {
            self.holders += 1;
        } else {
            self.sharers += 1;
        }
        self.used = self.used.saturating_add(vram_mib);
    }
}

/// `total × (100 − headroom) / 100`, rounded down, exactly and without a 128-bit division (this
/// runs for every device and shape of every candidate node).
fn below_headroom(total: u64, headroom_percent: u8) -> u64 {
    let keep = u64::from(100 - headroom_percent.min(100));
    (total / 100) * keep + (total % 100) * keep / 100
}

/// Which devices each profile shape may use on one node (bit i: device at position i).
type Masks = SmallVec<[u64; 16]>;

/// One shape's view of a node (or of one device): devices it could take, free VRAM on the
/// others, free VRAM on the ones it could take, and how many pods of it those could still hold.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct PerShape {
    /// Free VRAM under the shape's headroom, on every device.
    free: u64,
    usable: u32,
    unusable: u64,
    usable_free: u64,
    slots: u64,
}

impl PerShape {
    fn of(d: Dev, allowed: bool, shape: &Shape) -> PerShape {
        // The headroom is kept free on purpose: it is not fragment.
        let cap = below_headroom(d.total, shape.headroom_percent);
        let free = if d.free() == 0 {
            0
        } else {
            cap.saturating_sub(d.used)
        };
        if allowed && d.hosts(shape) {
            let slots = if shape.is_sharing() {
                free / shape.vram_mib.max(1)
            } else {
                1
            };
            PerShape {
                free,
                usable: 1,
                unusable: 0,
                usable_free: free,
                slots,
            }
        } else {
            PerShape {
                free,
                unusable: free,
                ..PerShape::default()
            }
        }
    }

    fn add(&mut self, o: PerShape) {
        self.free += o.free;
        self.usable += o.usable;
        self.unusable += o.unusable;
        self.usable_free += o.usable_free;
        self.slots += o.slots;
    }

    fn sub(&mut self, o: PerShape) {
        self.free -= o.free;
        self.usable -= o.usable;
        self.unusable -= o.unusable;
        self.usable_free -= o.usable_free;
        self.slots -= o.slots;
    }
}

/// Per shape, over a node's devices.
#[derive(Debug, Clone, Default, PartialEq)]
struct Aggregate {
    total_free: u64,
    stranded: u64,
    per_shape: SmallVec<[PerShape; 16]>,
}

fn masks(node: &NodeInfo, profile: &WorkloadProfile) -> Masks {
    let vendor = node.vendor.unwrap_or(Vendor::Nvidia);
    profile
        .shapes
        .iter()
        .map(|e| {
            let shape = &e.shape;
            let compatible = node.problem != Some(NodeProblem::VramUnknown)
                && if shape.is_sharing() {
                    node.sharing
                } else {
                    match shape.resource {
                        Some(r) => node.resource == Some(r),
                        None => node.resource.is_some(),
                    }
                };
            if !compatible {
                return 0;
            }
            let mut mask = 0u64;
            // Devices of one node mostly share a product: match each distinct product once.
            let mut last: Option<(&Arc<str>, bool)> = None;
            for (i, d) in node.devices.iter().enumerate().take(64) {
                let allowed = shape.products.is_empty()
                    || match last {
                        Some((product, allowed)) if Arc::ptr_eq(product, d.product()) => allowed,
                        _ => {
                            let allowed = products_allow(&shape.products, d, vendor);
                            last = Some((d.product(), allowed));
                            allowed
                        }
                    };
                if allowed {
                    mask |= 1 << i;
                }
            }
            mask
        })
        .collect()
}

fn aggregate(devs: &[Dev], masks: &Masks, profile: &WorkloadProfile) -> Aggregate {
    let total_free = devs.iter().map(|d| d.free()).sum();
    let stranded = devs.iter().map(|d| d.stranded()).sum();
    let per_shape = profile
        .shapes
        .iter()
        .zip(masks)
        .map(|(e, &mask)| {
            let mut sum = PerShape::default();
            for (i, d) in devs.iter().enumerate() {
                sum.add(PerShape::of(*d, i < 64 && mask >> i & 1 == 1, &e.shape));
            }
            sum
        })
        .collect();
    Aggregate {
        total_free,
        stranded,
        per_shape,
    }
}

/// Moves one device from `before` to `after` in an aggregate.
fn update(
    agg: &mut Aggregate,
    i: usize,
    before: Dev,
    after: Dev,
    masks: &Masks,
    p: &WorkloadProfile,
) {
    agg.total_free = agg.total_free - before.free() + after.free();
    agg.stranded = agg.stranded - before.stranded() + after.stranded();
    for ((e, &mask), sum) in p.shapes.iter().zip(masks).zip(&mut agg.per_shape) {
        let allowed = i < 64 && mask >> i & 1 == 1;
        sum.sub(PerShape::of(before, allowed, &e.shape));
        sum.add(PerShape::of(after, allowed, &e.shape));
    }
}

fn frag_of(
    agg: &Aggregate,
    profile: &WorkloadProfile,
    host: Option<Host>,
    measure: FragMeasure,
) -> f64 {
    let stranded = agg.stranded as f64;
    if agg.total_free == 0 || profile.shapes.is_empty() {
        return if profile.shapes.is_empty() {
            0.0
        } else {
            stranded
        };
    }
    let total = agg.total_free as f64;
    stranded
        + profile
            .shapes
            .iter()
            .zip(&agg.per_shape)
            .map(|(e, sum)| {
                let shape = &e.shape;
                let need = shape.devices.max(1);
                let lost = match measure {
                    FragMeasure::Reach => {
                        if host.is_some_and(|h| lacks(&h, shape)) || sum.usable < need {
                            total
                        } else {
                            sum.unusable as f64
                        }
                    }
                    FragMeasure::Fill => {
                        let by_devices = if shape.is_sharing() {
                            sum.slots
                        } else {
                            u64::from(sum.usable / need)
                        };
                        let by_host = host.map_or(u64::MAX, |h| {
                            let cpu = h.cpu_milli.checked_div(shape.cpu_milli).unwrap_or(u64::MAX);
                            let mem = h
                                .memory_mib
                                .checked_div(shape.memory_mib)
                                .unwrap_or(u64::MAX);
                            cpu.min(mem)
                        });
                        let pods = by_devices.min(by_host) as f64;
                        let per_pod = if shape.is_sharing() {
                            shape.vram_mib as f64
                        } else if sum.usable > 0 {
                            f64::from(need) * sum.usable_free as f64 / f64::from(sum.usable)
                        } else {
                            0.0
                        };
                        (total - pods * per_pod).max(0.0)
                    }
                };
                e.share * lost
            })
            .sum::<f64>()
}

/// The shapes of one headroom, by VRAM, for [`SizeIndex`].
#[derive(Debug, Clone, Default, PartialEq)]
struct SizeGroup {
    headroom_percent: u8,
    /// Sharing shapes: (VRAM, share of that VRAM, what a gap just below that VRAM loses to the
    /// sharing shapes), VRAM ascending and distinct. The loss is the sharing shapes' share times
    /// the chance that none of `patience` sharing pods fits: (share of this VRAM and every larger
    /// one ÷ all sharing) ^ patience (at patience 1, simply the share of this and every larger).
    sharing: Vec<(u64, f64, f64)>,
    /// Whole-device shapes: (VRAM, share of that VRAM, share of it and every larger one).
    whole: Vec<(u64, f64, f64)>,
    /// The sharing sizes whose landing the second step looks at (VRAM ascending, share): this
    /// group's part of the profile's [`LANDING_SIZES`] heaviest.
    landing: Vec<(u64, f64)>,
}

/// How many sharing sizes (the heaviest) the two-step fragment lands on a device: bounds its
/// cost whatever the profile holds (every openb trace has fewer).
pub const LANDING_SIZES: usize = 32;

impl SizeGroup {
    /// What a gap of `free` loses to the shapes in `sizes`: the third field of the smallest
    /// entry larger than `free` (0 when none is).
    fn lost_to(sizes: &[(u64, f64, f64)], free: u64) -> f64 {
        let at = sizes.partition_point(|&(vram, _, _)| vram <= free);
        sizes.get(at).map_or(0.0, |&(_, _, from_here)| from_here)
    }
}

/// A profile's shapes by VRAM per headroom, whatever their products: what the `lookahead`
/// term asks of one device (how much of the expected workload could not use its free VRAM,
/// and which sizes could land on it) in a few binary searches instead of a pass over every
/// shape. Built with the profile.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SizeIndex {
    groups: Vec<SizeGroup>,
}

impl SizeIndex {
    /// The index of `shapes`, sharing gaps measured with `patience`
    /// ([`super::workload::WorkloadParams::patience`]).
    pub fn of(shapes: &[Expected], patience: f64) -> SizeIndex {
        let mut groups: Vec<SizeGroup> = Vec::new();
        for e in shapes {
            let shape = &e.shape;
            let group = match groups
                .iter_mut()
                .position(|g| g.headroom_percent == shape.headroom_percent)
            {
                Some(at) => &mut groups[at],
                None => {
                    groups.push(SizeGroup {
                        headroom_percent: shape.headroom_percent,
                        ..SizeGroup::default()
                    });
                    groups.last_mut().expect("just pushed")
                }
            };
            let sizes = if shape.is_sharing() {
                &mut group.sharing
            } else {
                &mut group.whole
            };
            match sizes
                .iter_mut()
                .find(|(vram, _, _)| *vram == shape.vram_mib)
            {
                Some((_, share, _)) => *share += e.share,
                None => sizes.push((shape.vram_mib, e.share, 0.0)),
            }
        }
        for group in &mut groups {
            for sizes in [&mut group.sharing, &mut group.whole] {
                sizes.sort_by_key(|&(vram, _, _)| vram);
                let mut from_here = 0.0;
                for entry in sizes.iter_mut().rev() {
                    from_here += entry.1;
                    entry.2 = from_here;
                }
            }
            let all = group.sharing.first().map_or(0.0, |&(_, _, all)| all);
            if all > 0.0 {
                for entry in &mut group.sharing {
                    entry.2 = all * (entry.2 / all).powf(patience);
                }
            }
        }
        let mut heaviest: Vec<(usize, u64, f64)> = groups
            .iter()
            .enumerate()
            .flat_map(|(g, group)| {
                group
                    .sharing
                    .iter()
                    .map(move |&(vram, share, _)| (g, vram, share))
            })
            .collect();
        heaviest.sort_by(|a, b| b.2.total_cmp(&a.2).then(a.1.cmp(&b.1)));
        for &(g, vram, share) in heaviest.iter().take(LANDING_SIZES) {
            groups[g].landing.push((vram, share));
        }
        for group in &mut groups {
            group.landing.sort_by_key(|&(vram, _)| vram);
        }
        SizeIndex { groups }
    }

    /// The fragment of one device by VRAM alone: its free VRAM times the share of the
    /// whole-device shapes that could not use it (too large, or any on a shared device) plus
    /// what it loses to the sharing shapes (their share, times the chance that none of
    /// `patience` sharing pods fits; at patience 1 FGD's measure). Products are the node-level
    /// `frag` term's business.
    fn device_frag(&self, d: Dev) -> f64 {
        if d.free() == 0 {
            return 0.0;
        }
        self.groups
            .iter()
            .map(|g| {
                let free = below_headroom(d.total, g.headroom_percent).saturating_sub(d.used);
                if free == 0 {
                    return 0.0;
                }
                let whole = if d.sharers > 0 {
                    g.whole.first().map_or(0.0, |&(_, _, all)| all)
                } else {
                    SizeGroup::lost_to(&g.whole, free)
                };
                free as f64 * (SizeGroup::lost_to(&g.sharing, free) + whole)
            })
            .sum()
    }

    /// The two-step fragment of one device: its fragment now plus, for each sharing size that
    /// could land on it (of the [`LANDING_SIZES`] heaviest), that size's share times the
    /// device's fragment once it has. A gap
    /// that the workload fills exactly scores low; one that a likely pod would leave as a
    /// sliver nothing uses scores high. A whole-device shape leaves nothing free, so nothing
    /// to add.
    fn two_step_frag(&self, d: Dev) -> f64 {
        let mut total = self.device_frag(d);
        if d.free() == 0 {
            return total;
        }
        for g in &self.groups {
            let free = below_headroom(d.total, g.headroom_percent).saturating_sub(d.used);
            let fits = g.landing.partition_point(|&(vram, _)| vram <= free);
            for &(vram, share) in &g.landing[..fits] {
                let mut after = d;
                after.place(vram, false);
                total += share * self.device_frag(after);
            }
        }
        total
    }
}

/// How a node's capacity counts as lost to one expected shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FragMeasure {
    /// FGD's measure: all free VRAM when the shape cannot land even once, else the free VRAM of
    /// the devices it cannot use.
    #[default]
    Reach,
    /// Free VRAM left over if the node were filled with the shape alone: what does not divide
    /// into whole pods, on devices or by host cpu/memory.
    Fill,
}

/// A node's fragmentation (MiB of VRAM) against `profile`; `host` is its free cpu/memory when
/// known. Never negative; zero for an empty profile or a node with nothing free.
pub fn node_frag(
    node: &NodeInfo,
    profile: &WorkloadProfile,
    host: Option<Host>,
    measure: FragMeasure,
) -> f64 {
    let devs: SmallVec<[Dev; 8]> = node.devices.iter().map(Dev::of).collect();
    frag_of(
        &aggregate(&devs, &masks(node, profile), profile),
        profile,
        host,
        measure,
    )
}

/// A node's cached fragmentation state for the published profile.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeFrag {
    version: u64,
    masks: Masks,
    agg: Aggregate,
    feed: Feed,
    /// Each device's two-step fragment now (`lookahead`), by position.
    two_step: SmallVec<[f64; 8]>,
    /// The node's fragmentation now.
    pub frag: f64,
}

/// Host resources the expected workload asks per MiB of accelerator VRAM on one node: the
/// share-weighted cpu and memory of the shapes that could use the node, over the VRAM they
/// take there (a whole-device shape takes its devices whole).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Feed {
    cpu_per_mib: f64,
    mem_per_mib: f64,
}

impl Feed {
    fn of(devs: &[Dev], masks: &Masks, profile: &WorkloadProfile) -> Feed {
        if devs.is_empty() {
            return Feed::default();
        }
        let device = devs.iter().map(|d| d.total as f64).sum::<f64>() / devs.len() as f64;
        let (mut vram, mut cpu, mut mem) = (0.0, 0.0, 0.0);
        for (e, &mask) in profile.shapes.iter().zip(masks) {
            if mask == 0 {
                continue;
            }
            let shape = &e.shape;
            let takes = if shape.is_sharing() {
                shape.vram_mib as f64
            } else {
                f64::from(shape.devices.max(1)) * device
            };
            vram += e.share * takes;
            cpu += e.share * shape.cpu_milli as f64;
            mem += e.share * shape.memory_mib as f64;
        }
        if vram <= 0.0 {
            return Feed::default();
        }
        Feed {
            cpu_per_mib: cpu / vram,
            mem_per_mib: mem / vram,
        }
    }

    /// Free VRAM (MiB) that `host`'s free cpu and memory could not feed at the workload's
    /// ratios: `max(0, free − min(cpu / cpu per MiB, memory / memory per MiB))`.
    fn stranded(&self, free_mib: f64, host: Host) -> f64 {
        let by = |have: u64, per_mib: f64| {
            if per_mib > 0.0 {
                have as f64 / per_mib
            } else {
                f64::INFINITY
            }
        };
        let fed = by(host.cpu_milli, self.cpu_per_mib).min(by(host.memory_mib, self.mem_per_mib));
        (free_mib - fed).max(0.0)
    }
}

impl NodeFrag {
    fn compute(
        node: &NodeInfo,
        profile: &WorkloadProfile,
        host: Option<Host>,
        measure: FragMeasure,
    ) -> NodeFrag {
        let devs: SmallVec<[Dev; 8]> = node.devices.iter().map(Dev::of).collect();
        let masks = masks(node, profile);
        let agg = aggregate(&devs, &masks, profile);
        NodeFrag {
            version: profile.version,
            frag: frag_of(&agg, profile, host, measure),
            feed: Feed::of(&devs, &masks, profile),
            two_step: devs
                .iter()
                .map(|&d| profile.sizes.two_step_frag(d))
                .collect(),
            masks,
            agg,
        }
    }
}

/// What placing a pod on one node changes, as the score's `frag` and `hostBalance` terms read
/// it (MiB of VRAM; see [`Assessment`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Change {
    /// Fragmentation after minus before.
    pub frag: f64,
    /// Stranded VRAM after minus before.
    pub stranded: f64,
    /// The chosen device's two-step fragment after minus before (sharing pods; 0 otherwise).
    pub lookahead: f64,
}

/// What placing a pod on one node does to its fragmentation.
#[derive(Debug, Clone, PartialEq)]
pub struct Assessment {
    /// Fragmentation after minus before (MiB; negative when the pod fills a fragment).
    pub delta: f64,
    /// Stranded VRAM after minus before (MiB): free VRAM the node's free cpu and memory could
    /// not feed at the expected workload's cpu and memory per MiB. 0 when the node's host
    /// resources are not known.
    pub stranded: f64,
    /// The chosen device's two-step fragment after minus before (MiB): its fragmentation
    /// against the expected workload now and after one more expected pod lands on it. Sharing
    /// pods only; 0 for whole-device pods.
    pub lookahead: f64,
    /// The fit, with the device that fragments least for a sharing pod.
    pub fit: Fit,
}

/// Assesses placing `demand` on `node` as `fit` proposes. For a pod sharing one device, every
/// device that fits is tried and the one whose use raises fragmentation least is kept (ties keep
/// the filter's best-fit choice). `request` is the pod's cpu/memory (zero when unknown).
pub fn assess(
    node: &NodeInfo,
    fit: &Fit,
    demand: &PodDemand,
    request: Host,
    packing: &Packing,
    cached: Option<&NodeFrag>,
) -> Assessment {
    let profile = packing.profile();
    let host = packing.host(&node.name);
    let fresh;
    let state = match cached.filter(|c| c.version == profile.version) {
        Some(c) => c,
        None => {
            fresh = NodeFrag::compute(node, profile, host, packing.measure);
            &fresh
        }
    };
    if profile.shapes.is_empty() {
        return Assessment {
            delta: 0.0,
            stranded: 0.0,
            lookahead: 0.0,
            fit: fit.clone(),
        };
    }
    let host_after = host.map(|h| h.minus(request));
    let devs: SmallVec<[Dev; 8]> = node.devices.iter().map(Dev::of).collect();
    let position = |index: u32| node.devices.iter().position(|d| d.index == index);
    let after = |chosen: &[u32]| -> (f64, u64) {
        let mut agg = state.agg.clone();
        for &index in chosen {
            if let Some(i) = position(index) {
                let mut changed = devs[i];
                changed.place(fit.vram_mib, fit.exclusive);
                update(&mut agg, i, devs[i], changed, &state.masks, profile);
            }
        }
        (
            frag_of(&agg, profile, host_after, packing.measure),
            agg.total_free,
        )
    };
    let mut best_fit = fit.clone();
    let (mut best, mut free_after) = after(&fit.devices);
    if !fit.exclusive && fit.devices.len() == 1 {
        let mut tried: SmallVec<[Dev; 8]> = SmallVec::new();
        tried.push(position(fit.devices[0]).map_or(devs[0], |i| devs[i]));
        for (i, d) in node.devices.iter().enumerate() {
            let dev = devs[i];
            if d.index == fit.devices[0] || tried.contains(&dev) || !shares_fit(node, d, demand) {
                continue;
            }
            tried.push(dev);
            let (frag, free) = after(&[d.index]);
            if frag < best - 1e-9 {
                best = frag;
                free_after = free;
                best_fit.devices = SmallVec::from_slice(&[d.index]);
                best_fit.idle_after_mib = d.free_mib(0).saturating_sub(fit.vram_mib);
                best_fit.chosen_total_mib = d.total_mib;
                best_fit.newly_busy = u32::from(!d.is_busy());
            }
        }
    }
    let stranded = match (host, host_after) {
        (Some(now), Some(then)) => {
            state.feed.stranded(free_after as f64, then)
                - state.feed.stranded(state.agg.total_free as f64, now)
        }
        _ => 0.0,
    };
    let lookahead = match best_fit.devices.as_slice() {
        [index] if !best_fit.exclusive => position(*index).map_or(0.0, |i| {
            let mut after = devs[i];
            after.place(fit.vram_mib, false);
            let before = match state.two_step.get(i) {
                Some(&cached) => cached,
                None => profile.sizes.two_step_frag(devs[i]),
            };
            profile.sizes.two_step_frag(after) - before
        }),
        _ => 0.0,
    };
    Assessment {
        delta: best - state.frag,
        stranded,
        lookahead,
        fit: best_fit,
    }
}

impl Assessment {
    /// The changes the score reads.
    pub fn change(&self) -> Change {
        Change {
            frag: self.delta,
            stranded: self.stranded,
            lookahead: self.lookahead,
        }
    }
}

/// Whether a sharing pod may take device `d` (the filter's per-device checks).
fn shares_fit(node: &NodeInfo, d: &Device, demand: &PodDemand) -> bool {
    let vendor = node.vendor.unwrap_or(Vendor::Nvidia);
    d.healthy
        && d.exclusive_holders == 0
        && d.free_mib(demand.headroom_percent) >= demand.vram_mib
        && products_allow(&demand.products, d, vendor)
}

/// The workload model plus every node's cached fragmentation, kept by the inventory in step
/// with its nodes (slot for slot).
#[derive(Debug, Clone, Default)]
pub struct Packing {
    model: WorkloadModel,
    /// Nodes' allocatable cpu/memory and the requests of the pods held on them.
    hosts: HostLedger,
    slots: Vec<NodeFrag>,
    /// Per slot, the node's generation: renewed whenever its cached state is recomputed, never
    /// reused (see [`super::memo`]).
    generations: Vec<u64>,
    next_generation: u64,
    measure: FragMeasure,
    /// The profile the term measures against: the model's published one, cut to its heaviest
    /// [`Packing::shape_limit`] shapes so the per-node cache stays within its budget.
    profile: Arc<WorkloadProfile>,
    /// How many shapes `profile` keeps.
    limit: usize,
}

/// The per-node, per-shape cache holds at most this many entries (40 bytes each, plus 8 for the
/// shape's device mask): about 48 MiB, whatever the node count and the workload.
pub const CACHE_ENTRIES: usize = 1 << 20;

/// Fewest shapes the term keeps however many nodes there are.
const MIN_SHAPE_LIMIT: usize = 16;

/// The shapes kept for `nodes` nodes: the largest power of two (from 16 up to the model's
/// limit, 256) whose product with the node count fits [`CACHE_ENTRIES`]. Powers of two, so the
/// limit — and the full recomputation a change costs — moves only at a few node counts.
pub fn shape_limit(nodes: usize) -> usize {
    let mut limit = super::workload::MAX_SHAPES_LIMIT.next_power_of_two();
    while limit > MIN_SHAPE_LIMIT && nodes.saturating_mul(limit) > CACHE_ENTRIES {
        limit /= 2;
    }
    limit
}

impl Packing {
    /// The workload model.
    pub fn model(&self) -> &WorkloadModel {
        &self.model
    }

    /// The profile the term measures against: the published one, or its heaviest
    /// [`shape_limit`] shapes when the cluster is large.
    pub fn profile(&self) -> &WorkloadProfile {
        let published = self.model.profile();
        if published.version == self.profile.version {
            &self.profile
        } else {
            // Published but not yet cut (no refresh since): the whole profile.
            published
        }
    }

    /// Rebuilds [`Packing::profile`] from the model's published profile for `nodes` nodes.
    fn cut_profile(&mut self, nodes: usize) {
        let published = self.model.profile();
        self.limit = shape_limit(nodes);
        self.profile = if published.shapes.len() <= self.limit {
            published.clone()
        } else {
            Arc::new(WorkloadProfile::new(
                published.version,
                published.shapes[..self.limit].to_vec(),
                self.model.params().patience,
            ))
        };
    }

    /// Whether the shape limit for `nodes` nodes differs from the one in use (the caller then
    /// refreshes every node).
    pub fn limit_changes(&self, nodes: usize) -> bool {
        let next = shape_limit(nodes);
        // When the profile has no more shapes than either limit, both cut nothing.
        next != self.limit && self.model.profile().shapes.len() > next.min(self.limit)
    }

    /// A node's free host resources (allocatable minus the pods held there), when its
    /// allocatable is known.
    pub fn host(&self, node: &str) -> Option<Host> {
        self.hosts.free(node)
    }

    /// The host-resource ledger the fragmentation terms read.
    pub fn hosts(&self) -> &HostLedger {
        &self.hosts
    }

    /// The host-resource ledger, for changes; the caller recomputes the nodes whose free host
    /// resources moved.
    pub fn hosts_mut(&mut self) -> &mut HostLedger {
        &mut self.hosts
    }

    /// The cached state of the node in `slot`, if current.
    pub fn cached(&self, slot: usize) -> Option<&NodeFrag> {
        self.slots
            .get(slot)
            .filter(|c| c.version == self.profile.version)
    }

    /// The generation of the node in `slot`: it changes whenever anything its verdict or
    /// fragmentation depends on changes.
    pub fn generation(&self, slot: usize) -> Option<u64> {
        self.generations.get(slot).copied()
    }

    fn renew(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation
    }

    /// Recomputes the node in `slot` (appending when `slot` is new).
    pub fn node_changed(&mut self, slot: usize, node: &NodeInfo) {
        let state = NodeFrag::compute(node, self.profile(), self.host(&node.name), self.measure);
        let generation = self.renew();
        match self.slots.get_mut(slot) {
            Some(s) => *s = state,
            None => self.slots.push(state),
        }
        match self.generations.get_mut(slot) {
            Some(g) => *g = generation,
            None => self.generations.push(generation),
        }
    }

    /// Forgets the node in `slot`; the last slot moves into it (as the inventory's nodes do).
    pub fn node_removed(&mut self, slot: usize, name: &str) {
        if slot < self.slots.len() {
            self.slots.swap_remove(slot);
        }
        if slot < self.generations.len() {
            self.generations.swap_remove(slot);
        }
        self.hosts.set_allocatable(name, None);
    }

    /// Recomputes every node (after the profile changed).
    pub fn refresh_all(&mut self, nodes: &[NodeInfo]) {
        self.cut_profile(nodes.len());
        let profile = self.profile.clone();
        self.slots = nodes
            .iter()
            .map(|n| NodeFrag::compute(n, &profile, self.host(&n.name), self.measure))
            .collect();
        self.generations = (0..nodes.len()).map(|_| self.renew()).collect();
    }

    /// The model, for changes; the caller refreshes nodes when a change reports `true`.
    pub fn model_mut(&mut self) -> &mut WorkloadModel {
        &mut self.model
    }

    /// Applies new workload parameters; returns whether the profile changed.
    pub fn configure(&mut self, params: &WorkloadParams) -> bool {
        let measure_changed = self.measure != params.measure;
        self.measure = params.measure;
        self.model.set_params(params.clone()) || measure_changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_shape_entry_is_40_bytes() {
        // Cached for every node × published shape (up to 20,000 remembered nodes × 256 shapes).
        assert_eq!(std::mem::size_of::<PerShape>(), 40);
    }

    #[test]
    fn the_shape_limit_keeps_the_cache_within_its_budget() {
        assert_eq!(shape_limit(0), 256);
        assert_eq!(shape_limit(1_523), 256); // the openb cluster: nothing cut
        assert_eq!(shape_limit(5_000), 128);
        assert_eq!(shape_limit(20_000), 32);
        assert_eq!(shape_limit(usize::MAX), MIN_SHAPE_LIMIT);
        for nodes in [1, 4_096, 4_097, 8_193, 65_536] {
            assert!(nodes * shape_limit(nodes) <= CACHE_ENTRIES, "{nodes}");
        }
    }

    #[test]
    fn a_large_cluster_measures_against_the_heaviest_shapes_only() {
        let mut inventory = crate::core::Inventory::new();
        inventory.observe_batch(
            (1..=200u64).map(|i| (Shape::new(i * 100, 1, None, &[], 0, 0, 0), i as f64)),
        );
        inventory.upsert_node(node("n0", &[81_920], &[0]));
        assert_eq!(inventory.packing().profile().shapes.len(), 200);
        // Past 8,192 nodes at most 64 shapes are kept (the heaviest, in published order).
        for i in 1..=8_200 {
            inventory.upsert_node(node(&format!("n{i}"), &[81_920], &[0]));
        }
        let kept = &inventory.packing().profile().shapes;
        assert_eq!(kept.len(), 64);
        assert_eq!(kept[..], inventory.packing().model().profile().shapes[..64]);
        // Fewer nodes again: the whole profile is back.
        inventory.retain_nodes(|name| name.len() <= 3);
        assert_eq!(inventory.packing().profile().shapes.len(), 200);
    }

    #[test]
    fn below_headroom_is_exact_for_every_size() {
        for total in [0, 1, 99, 100, 101, 15_360, 81_920, u64::MAX / 3, u64::MAX] {
            for headroom in [0u8, 1, 10, 15, 50, 99, 100, 200] {
                let exact = u128::from(total) * u128::from(100 - headroom.min(100)) / 100;
                assert_eq!(
                    u128::from(below_headroom(total, headroom)),
                    exact,
                    "{total} {headroom}"
                );
            }
        }
    }
    use crate::core::node::{CapacitySource, Devices, RESOURCE_NVIDIA_GPU};
    use crate::core::workload::{Expected, MAX_PATIENCE};

    const R: FragMeasure = FragMeasure::Reach;

    pub(crate) fn node(name: &str, sizes: &[u64], used: &[u64]) -> NodeInfo {
        let devices: Devices = sizes
            .iter()
            .zip(used)
            .enumerate()
            .map(|(i, (&total, &used))| Device {
                index: i as u32,
                names: Arc::new(crate::core::node::DeviceNames {
                    uuid: None,
                    product: "X".into(),
                    class: "X".into(),
                }),
                total_mib: total,
                measured_used_mib: 0,
                healthy: true,
                reserved_mib: used,
                exclusive_holders: 0,
                sharers: u32::from(used > 0),
            })
            .collect();
        NodeInfo {
            name: name.into(),
            zone: None,
            resource: Some(RESOURCE_NVIDIA_GPU),
            vendor: Some(Vendor::Nvidia),
            allocatable_devices: sizes.len() as u32,
            devices,
            sharing: true,
            source: CapacitySource::Report,
            problem: None,
            notes: Vec::new(),
            host: None,
        }
    }

    /// A profile of (VRAM, devices, share) measured as FGD does (patience 1).
    fn profile(shapes: &[(u64, u32, f64)]) -> WorkloadProfile {
        profile_with_patience(shapes, 1.0)
    }

    fn profile_with_patience(shapes: &[(u64, u32, f64)], patience: f64) -> WorkloadProfile {
        WorkloadProfile::new(
            1,
            shapes
                .iter()
                .map(|&(vram, devices, share)| Expected {
                    shape: Shape::new(vram, devices, None, &[], 0, 0, 0),
                    share,
                })
                .collect(),
            patience,
        )
    }

    #[test]
    fn fragmentation_by_hand() {
        // Half the pods want 500 of a device (shared), half a whole device.
        let p = profile(&[(500, 0, 0.5), (1000, 1, 0.5)]);
        // Free 300 and 1000: the share fits device 1 (fragment 300); a whole device fits
        // device 1 (fragment 300: device 0 is shared) → 300.
        assert_eq!(
            node_frag(&node("n", &[1000, 1000], &[700, 0]), &p, None, R),
            300.0
        );
        // Free 300 and 600: the share fits (fragment 300); no whole device (all 900 lost).
        assert_eq!(
            node_frag(&node("n", &[1000, 1000], &[700, 400]), &p, None, R),
            0.5 * 300.0 + 0.5 * 900.0
        );
        // Host too small for the shapes: everything free is fragment.
        let mut cpu = p.clone();
        for e in &mut cpu.shapes {
            e.shape.cpu_milli = 4000;
        }
        let host = Some(Host {
            cpu_milli: 1000,
            memory_mib: 1 << 20,
        });
        assert_eq!(
            node_frag(&node("n", &[1000, 1000], &[700, 0]), &cpu, host, R),
            1300.0
        );
        assert_eq!(node_frag(&node("n", &[1000], &[1000]), &p, None, R), 0.0);
        assert_eq!(
            node_frag(&node("n", &[1000], &[0]), &profile(&[]), None, R),
            0.0
        );
    }

    #[test]
    fn small_model_fragments_a_big_device_more() {
        // 40 GiB models and 10 GiB models, whole devices.
        let p = profile(&[(40_960, 1, 0.5), (10_240, 1, 0.5)]);
        let packing = packing_of(p.shapes.iter().map(|e| (e.shape.clone(), 10.0)));
        let demand = demand_of(Some(RESOURCE_NVIDIA_GPU), 1, 10_240);
        let a100 = node("a100", &[81_920], &[0]);
        let t4 = node("t4", &[16_384], &[0]);
        let on = |n: &NodeInfo| {
            let fit = crate::core::fit_node(n, &demand).unwrap();
            assess(n, &fit, &demand, Host::default(), &packing, None).delta
        };
        assert!(on(&t4) < on(&a100), "t4 {} a100 {}", on(&t4), on(&a100));
    }

    /// A pod of `devices` whole devices of `resource` (0: sharing) needing `vram_mib` per
    /// device, declared by annotation (undeclared when 0).
    fn demand_of(resource: Option<&'static str>, devices: u32, vram_mib: u64) -> PodDemand {
        PodDemand {
            key: "a/b".into(),
            id: "b".into(),
            resource,
            devices,
            vram_mib,
            vram_source: if vram_mib > 0 {
                crate::core::demand::VramSource::Annotation
            } else {
                crate::core::demand::VramSource::Undeclared
            },
            products: Vec::new(),
            headroom_percent: 0,
            model: None,
            scheduler_name: None,
            host: Default::default(),
        }
    }

    /// A packing whose model has published `shapes`, each seen `weight` times.
    fn packing_of(shapes: impl IntoIterator<Item = (Shape, f64)>) -> Packing {
        let mut packing = Packing::default();
        for (shape, weight) in shapes {
            packing.model.add_batch(shape, weight);
        }
        packing.model.publish();
        packing
    }

    #[test]
    fn sharing_pod_takes_the_device_that_fragments_least() {
        let packing = packing_of([(Shape::new(500, 0, None, &[], 0, 0, 0), 1.0)]);
        // Free 500 and 400; a 300 pod on device 0 leaves 200+400 (fragment 600), on device 1
        // leaves 500+100 (fragment 100).
        let n = node("n", &[1000, 1000], &[500, 600]);
        let demand = demand_of(None, 0, 300);
        let fit = crate::core::fit_node(&n, &demand).unwrap();
        let a = assess(&n, &fit, &demand, Host::default(), &packing, None);
        assert_eq!(a.fit.devices.as_slice(), &[1]);
        assert_eq!(a.delta, 100.0 - 400.0);
    }

    fn shared(total: u64, used: u64) -> Dev {
        Dev {
            total,
            used,
            holders: 0,
            sharers: u32::from(used > 0),
            healthy: true,
        }
    }

    #[test]
    fn two_step_fragment_by_hand() {
        // Shares of 470 and 320 (sharing) and of whole devices, on devices of 1000.
        let p = profile(&[(470, 0, 0.5), (320, 0, 0.25), (1000, 1, 0.25)]);
        let sizes = &p.sizes;
        // Free 530: every share fits; whole devices cannot use a shared device.
        assert_eq!(sizes.device_frag(shared(1000, 470)), 530.0 * 0.25);
        // An idle device loses nothing; a full one has nothing to lose.
        assert_eq!(sizes.device_frag(shared(1000, 0)), 0.0);
        assert_eq!(sizes.device_frag(shared(1000, 1000)), 0.0);
        // After a 470 the 60 left is lost to all, and after a 320 the 210 left is too.
        let two_step = 530.0 * 0.25 + 0.5 * 60.0 + 0.25 * 210.0;
        assert_eq!(sizes.two_step_frag(shared(1000, 470)), two_step);
        // Nothing expected: nothing lost.
        assert_eq!(
            SizeIndex::of(&[], 1.0).two_step_frag(shared(1000, 470)),
            0.0
        );
    }

    #[test]
    fn patience_discounts_a_gap_by_the_chance_no_sharing_pod_fits_it() {
        let shapes = [(470, 0, 0.5), (320, 0, 0.25), (1000, 1, 0.25)];
        let fgd = profile(&shapes).sizes;
        let patient = profile_with_patience(&shapes, 2.0).sizes;
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        // Free 400: a 320 fits, a 470 does not — two thirds of the sharing pods miss it. FGD
        // counts the 470s' share; with patience 2 the chance two in a row miss, (2/3)², of all
        // sharing (0.75). Whole devices never use a shared device either way.
        assert!(close(
            fgd.device_frag(shared(1000, 600)),
            400.0 * (0.5 + 0.25)
        ));
        assert!(close(
            patient.device_frag(shared(1000, 600)),
            400.0 * (0.75 * 4.0 / 9.0 + 0.25)
        ));
        // Free 210: no sharing pod fits, so waiting does not help; free 530: every one fits.
        for sizes in [&fgd, &patient] {
            assert!(close(sizes.device_frag(shared(1000, 790)), 210.0 * 1.0));
            assert!(close(sizes.device_frag(shared(1000, 470)), 530.0 * 0.25));
        }
        // A gap most sharing pods fit counts for less the more patient the measure.
        let at = |patience: f64| {
            profile_with_patience(&shapes, patience)
                .sizes
                .device_frag(shared(1000, 600))
        };
        assert!(at(1.0) > at(2.0) && at(2.0) > at(12.0) && at(12.0) > 100.0);
    }

    #[test]
    fn only_the_heaviest_sharing_sizes_land_in_the_second_step() {
        // 200 distinct sharing sizes, the larger the heavier.
        let shapes: Vec<(u64, u32, f64)> = (1..=200).map(|i| (i * 10, 0, i as f64)).collect();
        let p = profile(&shapes);
        let landing: Vec<u64> = p
            .sizes
            .groups
            .iter()
            .flat_map(|g| g.landing.iter().map(|&(vram, _)| vram))
            .collect();
        assert_eq!(landing.len(), LANDING_SIZES);
        assert_eq!(landing, (169..=200).map(|i| i * 10).collect::<Vec<u64>>());
        // Every size still counts in the fragment itself.
        assert_eq!(p.sizes.device_frag(shared(2000, 1995)), 5.0 * 20_100.0);
    }

    #[test]
    fn lookahead_keeps_a_gap_for_the_shape_that_fills_it() {
        // 470s and 320s expected; a 320 either cuts a 530 gap to 210 (which a 470 no longer
        // fits) or fills a 350 gap to 30.
        let packing = packing_of([
            (Shape::new(470, 0, None, &[], 0, 0, 0), 2.0),
            (Shape::new(320, 0, None, &[], 0, 0, 0), 1.0),
        ]);
        let demand = demand_of(None, 0, 320);
        let lookahead = |used: u64| {
            let n = node("n", &[1000], &[used]);
            let fit = crate::core::fit_node(&n, &demand).unwrap();
            assess(&n, &fit, &demand, Host::default(), &packing, None).lookahead
        };
        assert!(
            lookahead(650) < lookahead(470),
            "{} {}",
            lookahead(650),
            lookahead(470)
        );
        // Whole-device pods have none.
        let whole = demand_of(Some(RESOURCE_NVIDIA_GPU), 1, 500);
        let n = node("n", &[1000], &[0]);
        let fit = crate::core::fit_node(&n, &whole).unwrap();
        assert_eq!(
            assess(&n, &fit, &whole, Host::default(), &packing, None).lookahead,
            0.0
        );
    }

    #[test]
    fn a_patient_lookahead_pairs_a_320_with_a_320_rather_than_a_470() {
        // The openb default trace's commonest shapes, by pod count. A 320 can join a lone 470
        // (530 → 210, a gap only rare small pods fit) or a lone 320 (680 → 360, which a third
        // 320 fills). FGD's one-pod measure prefers the 470; waiting for 12 pods, the 320.
        let shapes = [
            (810, 0, 1078.0),
            (470, 0, 750.0),
            (320, 0, 328.0),
            (650, 0, 253.0),
            (1000, 1, 3911.0),
        ]
        .map(|(vram, devices, count)| (Shape::new(vram, devices, None, &[], 0, 0, 0), count));
        let demand = demand_of(None, 0, 320);
        let lookahead_with = |patience: f64, used: u64| {
            let mut packing = packing_of(shapes.iter().cloned());
            packing.configure(&WorkloadParams {
                patience,
                ..WorkloadParams::default()
            });
            let n = node("n", &[1000], &[used]);
            let fit = crate::core::fit_node(&n, &demand).unwrap();
            assess(&n, &fit, &demand, Host::default(), &packing, None).lookahead
        };
        assert!(lookahead_with(1.0, 470) < lookahead_with(1.0, 320));
        assert!(lookahead_with(12.0, 320) < lookahead_with(12.0, 470));
        // Either way a lone 650's 350 gap beats cutting the 470's.
        for patience in [1.0, 12.0] {
            assert!(lookahead_with(patience, 650) < lookahead_with(patience, 470));
        }
    }

    #[test]
    fn the_two_step_fragment_is_never_negative_and_deterministic() {
        let shapes = [
            (470, 0, 0.3),
            (320, 0, 0.2),
            (810, 0, 0.1),
            (1000, 1, 0.3),
            (2000, 2, 0.1),
        ];
        let profiles = [1.0, 12.0, MAX_PATIENCE].map(|p| profile_with_patience(&shapes, p));
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..10_000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let total = [0, 1, 15_360, 81_920, u64::MAX][(rng % 5) as usize];
            let d = Dev {
                total,
                used: (rng >> 8) % total.saturating_add(1).max(1),
                holders: u32::from(rng >> 60 == 0),
                sharers: ((rng >> 40) % 3) as u32,
                healthy: rng >> 62 != 0,
            };
            for p in &profiles {
                let value = p.sizes.two_step_frag(d);
                assert!(value.is_finite() && value >= 0.0, "{d:?}: {value}");
                assert_eq!(value, p.sizes.two_step_frag(d));
            }
        }
    }

    #[test]
    fn host_resources_used_up_strand_free_vram() {
        // Every expected pod takes a whole device and 10 cpus: 10 milli-cpu per unit of VRAM.
        let mut packing = packing_of([(Shape::new(1000, 1, None, &[], 0, 10_000, 0), 1.0)]);
        let poor = node("poor", &[1000, 1000], &[0, 0]);
        let rich = node("rich", &[1000, 1000], &[0, 0]);
        let host = |cpu_milli| Host {
            cpu_milli,
            memory_mib: 1 << 20,
        };
        packing
            .hosts_mut()
            .set_allocatable("poor", Some(host(20_000)));
        packing
            .hosts_mut()
            .set_allocatable("rich", Some(host(100_000)));
        let demand = |devices: u32| {
            let vram_mib = if devices > 0 { 1000 } else { 0 };
            demand_of(
                (devices > 0).then_some(RESOURCE_NVIDIA_GPU),
                devices,
                vram_mib,
            )
        };
        let stranded = |packing: &Packing, n: &NodeInfo, devices: u32, cpu_milli: u64| {
            let d = demand(devices);
            let fit = if devices > 0 {
                crate::core::fit_node(n, &d).unwrap()
            } else {
                Fit::default()
            };
            assess(n, &fit, &d, host(cpu_milli), packing, None).stranded
        };
        // A cpu-only pod of 10 cpus leaves the poor node cpu for one device of its two.
        assert_eq!(stranded(&packing, &poor, 0, 10_000), 1000.0);
        assert_eq!(stranded(&packing, &rich, 0, 10_000), 0.0);
        // A cpu-light pod taking a device keeps the poor node in proportion.
        assert_eq!(stranded(&packing, &poor, 1, 2_000), 0.0);
        // Host resources unknown: nothing is stranded.
        packing.hosts_mut().set_allocatable("poor", None);
        assert_eq!(stranded(&packing, &poor, 0, 10_000), 0.0);
    }
}
