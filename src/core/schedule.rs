//! Decisions over many nodes: filter with reasons, prioritize, and place-and-commit, all as pure
//! functions of the inventory and a demand. The HTTP server and the CLI call these.

use std::collections::BTreeMap;

use serde::Serialize;

use super::config::Config;
use super::demand::{DemandError, PodDemand};
use super::filter::{fit_node, Fit, Reason};
use super::frag::{assess, Host};
use super::inventory::{DeviceShare, Inventory, Placement};
use super::memo::{Judged, ShapeKey, ShapeMemo};
use super::node::NodeInfo;
use super::score::{score_candidates, Scored};
use super::workload::Shape;

/// A pod's demand, or why it is invalid.
pub type Demand = Result<PodDemand, DemandError>;

/// The verdict for one node: where the pod would go there, or why not.
pub fn verdict(node: Option<&NodeInfo>, demand: &Demand) -> Result<Fit, Reason> {
    let demand = demand.as_ref().map_err(|e| Reason::InvalidPod {
        message: e.to_string(),
    })?;
    if demand.is_accelerator_free() {
        return Ok(Fit::default());
    }
    fit_node(node.ok_or(Reason::UnknownNode)?, demand)
}

/// One rejected node of a filter call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejected<'a> {
    pub node: &'a str,
    /// Index into [`FilterOutcome::messages`].
    pub message: usize,
    pub unresolvable: bool,
    pub code: &'static str,
}

/// The filter answer in kube-scheduler's terms. Identical reasons share one message.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FilterOutcome<'a> {
    /// Nodes that pass, in input order.
    pub feasible: Vec<&'a str>,
    /// Every rejected node, in input order.
    pub rejected: Vec<Rejected<'a>>,
    /// The distinct reason texts.
    pub messages: Vec<String>,
}

impl<'a> FilterOutcome<'a> {
    /// Rejections an eviction could fix (`FailedNodes`): node → reason.
    pub fn failed(&self) -> impl Iterator<Item = (&'a str, &str)> + '_ {
        self.rejected
            .iter()
            .filter(|r| !r.unresolvable)
            .map(|r| (r.node, self.messages[r.message].as_str()))
    }

    /// Rejections no eviction can fix (`FailedAndUnresolvableNodes`): node → reason.
    pub fn unresolvable(&self) -> impl Iterator<Item = (&'a str, &str)> + '_ {
        self.rejected
            .iter()
            .filter(|r| r.unresolvable)
            .map(|r| (r.node, self.messages[r.message].as_str()))
    }
}

/// How many distinct reasons a filter call compares against before writing a reason anew.
const DISTINCT_REASONS_SCANNED: usize = 32;

/// Judges nodes for one demand, through the inventory's [memo](super::memo) for the nodes that
/// are the inventory's own (nodes built elsewhere are judged afresh). The shape's memo goes back
/// to the inventory when the judge is dropped.
///
/// Judging reads the memo only (so many threads can judge at once); what was computed afresh
/// comes back as a [`Pending`] entry that [`Judge::record`] stores afterwards.
pub struct Judge<'a> {
    inventory: &'a Inventory,
    demand: &'a Demand,
    memo: Option<ShapeMemo>,
}

/// A judgement computed afresh, to be stored in the memo.
pub struct Pending {
    slot: usize,
    generation: u64,
    verdict: Result<Fit, Reason>,
    assessed: Option<(f64, Fit)>,
}

impl<'a> Judge<'a> {
    /// A judge of `demand` against `inventory`'s nodes.
    pub fn new(inventory: &'a Inventory, demand: &'a Demand) -> Judge<'a> {
        let memo = match demand {
            Ok(d) if !d.is_accelerator_free() => Some(inventory.memo().take(&ShapeKey::of(d))),
            _ => None,
        };
        Judge {
            inventory,
            demand,
            memo,
        }
    }

    /// The node's slot and generation, when it is the inventory's own and memoised.
    fn stamp(&self, node: &NodeInfo) -> Option<(usize, u64)> {
        self.memo.as_ref()?;
        let slot = self.inventory.own_slot(node)?;
        Some((slot, self.inventory.packing().generation(slot)?))
    }

    /// [`verdict`], from the memo when current.
    pub fn verdict_of(&self, node: Option<&NodeInfo>) -> (Result<Fit, Reason>, Option<Pending>) {
        let Some((node, (slot, generation))) = node.and_then(|n| Some((n, self.stamp(n)?))) else {
            return (verdict(node, self.demand), None);
        };
        if let Some(judged) = self.memo.as_ref().and_then(|m| m.get(slot, generation)) {
            return (judged.verdict.clone(), None);
        }
        let fresh = verdict(Some(node), self.demand);
        let pending = Pending {
            slot,
            generation,
            verdict: fresh.clone(),
            assessed: None,
        };
        (fresh, Some(pending))
    }

    /// [`assess`] of a feasible node, from the memo when current: the fragmentation change and
    /// the fit it chose.
    pub fn assess_of(
        &self,
        node: &NodeInfo,
        fit: &Fit,
        pod: &PodDemand,
    ) -> ((f64, Fit), Option<Pending>) {
        let stamp = self.stamp(node);
        if let Some((slot, generation)) = stamp {
            if let Some((delta, fit)) = self
                .memo
                .as_ref()
                .and_then(|m| m.get(slot, generation))
                .and_then(|j| j.assessed.as_ref())
            {
                return ((*delta, fit.clone()), None);
            }
        }
        let a = assess(
            node,
            fit,
            pod,
            Host::default(),
            self.inventory.packing(),
            self.inventory.frag_state(node),
        );
        let pending = stamp.map(|(slot, generation)| Pending {
            slot,
            generation,
            verdict: Ok(fit.clone()),
            assessed: Some((a.delta, a.fit.clone())),
        });
        ((a.delta, a.fit), pending)
    }

    /// Stores a judgement computed afresh.
    pub fn record(&mut self, pending: Pending) {
        let Some(memo) = self.memo.as_mut() else {
            return;
        };
        match memo.get_mut(pending.slot, pending.generation) {
            Some(judged) if pending.assessed.is_some() => judged.assessed = pending.assessed,
            Some(_) => {}
            None => {
                memo.put(
                    pending.slot,
                    Judged {
                        generation: pending.generation,
                        verdict: pending.verdict,
                        assessed: pending.assessed,
                    },
                );
            }
        }
    }

    /// Verdicts of many nodes, in order, on several threads when there are many.
    pub fn verdicts(&mut self, nodes: &[Option<&NodeInfo>]) -> Vec<Result<Fit, Reason>> {
        let judged = split_map(nodes, |node| self.verdict_of(*node));
        self.keep(judged)
    }

    /// Assessments of many feasible nodes, in order, on several threads when there are many.
    fn assessments(
        &mut self,
        candidates: &[(&NodeInfo, &Fit)],
        pod: &PodDemand,
    ) -> Vec<(f64, Fit)> {
        let judged = split_map(candidates, |(node, fit)| self.assess_of(node, fit, pod));
        self.keep(judged)
    }

    fn keep<T>(&mut self, judged: Vec<(T, Option<Pending>)>) -> Vec<T> {
        judged
            .into_iter()
            .map(|(value, pending)| {
                if let Some(pending) = pending {
                    self.record(pending);
                }
                value
            })
            .collect()
    }
}

impl Drop for Judge<'_> {
    fn drop(&mut self) {
        if let Some(memo) = self.memo.take() {
            self.inventory.memo().put_back(memo);
        }
    }
}

/// Lists shorter than this are judged on the calling thread alone: below it, starting a second
/// thread costs more than it saves.
pub const PARALLEL_MIN_ITEMS: usize = 1024;

/// How many threads a long list is split over: the machine's cores, at most 8.
fn split_threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(|| {
        std::thread::available_parallelism()
            .map(usize::from)
            .unwrap_or(1)
            .min(8)
    })
}

/// `items.iter().map(f).collect()`, split over scoped threads when the list is long (the
/// calling thread takes the first part). Order is kept.
fn split_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = split_threads().min(items.len() / (PARALLEL_MIN_ITEMS / 2).max(1));
    if threads < 2 || items.len() < PARALLEL_MIN_ITEMS {
        return items.iter().map(f).collect();
    }
    let chunk = items.len().div_ceil(threads);
    let f = &f;
    std::thread::scope(|scope| {
        let mut parts = items.chunks(chunk);
        let first = parts.next().unwrap_or(&[]);
        let others: Vec<_> = parts
            .map(|part| scope.spawn(move || part.iter().map(f).collect::<Vec<R>>()))
            .collect();
        let mut out: Vec<R> = first.iter().map(f).collect();
        out.reserve(items.len() - out.len());
        for handle in others {
            match handle.join() {
                Ok(part) => out.extend(part),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        out
    })
}

/// Filters `nodes` (name, node if known). Every rejected node gets exactly one reason.
pub fn filter<'a>(
    nodes: impl IntoIterator<Item = (&'a str, Option<&'a NodeInfo>)>,
    demand: &Demand,
    inventory: &Inventory,
) -> FilterOutcome<'a> {
    let mut judge = Judge::new(inventory, demand);
    let (names, nodes): (Vec<&'a str>, Vec<Option<&'a NodeInfo>>) = nodes.into_iter().unzip();
    let verdicts = judge.verdicts(&nodes);
    let mut out = FilterOutcome::default();
    let mut distinct: Vec<Reason> = Vec::new();
    for (name, verdict) in names.into_iter().zip(verdicts) {
        let reason = match verdict {
            Ok(_) => {
                out.feasible.push(name);
                continue;
            }
            Err(reason) => reason,
        };
        // `distinct[i]` is the reason of `messages[i]`; both grow together up to the cap.
        let message = match distinct.iter().position(|r| *r == reason) {
            Some(i) => i,
            None => {
                out.messages.push(reason.to_string());
                if distinct.len() < DISTINCT_REASONS_SCANNED {
                    distinct.push(reason.clone());
                }
                out.messages.len() - 1
            }
        };
        out.rejected.push(Rejected {
            node: name,
            message,
            unresolvable: reason.is_unresolvable(),
            code: reason.code(),
        });
    }
    out
}

/// Scores `nodes` for the pod; infeasible or unknown nodes score 0. Order follows the input.
pub fn prioritize<'a>(
    nodes: impl IntoIterator<Item = (&'a str, Option<&'a NodeInfo>)>,
    demand: &Demand,
    inventory: &Inventory,
    config: &Config,
) -> Vec<(&'a str, u8)> {
    let mut judge = Judge::new(inventory, demand);
    let (names, nodes): (Vec<&'a str>, Vec<Option<&'a NodeInfo>>) = nodes.into_iter().unzip();
    let fits = judge.verdicts(&nodes);
    let verdicts: Vec<(&str, Option<(&NodeInfo, Fit)>)> = names
        .into_iter()
        .zip(nodes)
        .zip(fits)
        .map(|((name, node), fit)| (name, node.zip(fit.ok())))
        .collect();
    let Ok(pod) = demand else {
        return verdicts.iter().map(|(n, _)| (*n, 0)).collect();
    };
    let candidates: Vec<(&NodeInfo, &Fit)> = verdicts
        .iter()
        .filter_map(|(_, fit)| fit.as_ref().map(|(n, f)| (*n, f)))
        .collect();
    let mut scores = rank(&mut judge, &candidates, pod, config).0.into_iter();
    verdicts
        .iter()
        .map(|(name, fit)| {
            let score = match fit {
                Some(_) => scores.next().map(|s| s.score).unwrap_or(0),
                None => 0,
            };
            (*name, score)
        })
        .collect()
}

fn rank(
    judge: &mut Judge,
    candidates: &[(&NodeInfo, &Fit)],
    demand: &PodDemand,
    config: &Config,
) -> (Vec<Scored>, Vec<Fit>) {
    let inventory = judge.inventory;
    let (_, weights) = config.profile_for(demand.scheduler_name.as_deref());
    let replicas = demand.model.as_deref().and_then(|m| inventory.replicas(m));
    if weights.frag == 0.0 || inventory.packing().profile().shapes.is_empty() {
        let fits = candidates.iter().map(|(_, f)| (*f).clone()).collect();
        return (
            score_candidates(candidates, &[], replicas, weights, config.frag_step),
            fits,
        );
    }
    let (deltas, fits): (Vec<f64>, Vec<Fit>) =
        judge.assessments(candidates, demand).into_iter().unzip();
    let chosen: Vec<(&NodeInfo, &Fit)> = candidates
        .iter()
        .zip(&fits)
        .map(|((node, _), fit)| (*node, fit))
        .collect();
    (
        score_candidates(&chosen, &deltas, replicas, weights, config.frag_step),
        fits,
    )
}

/// The outcome of placing one pod.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// `namespace/name`.
    pub pod: String,
    pub node: Option<String>,
    pub zone: Option<String>,
    pub shares: Vec<DeviceShare>,
    /// Whole devices (true) or VRAM on a shared device (false).
    pub exclusive: bool,
    /// 0–10, as kube-scheduler would see it.
    pub score: Option<u8>,
    /// The exact weighted score in `0..=1`.
    pub exact_score: Option<f64>,
    /// The profile that scored it.
    pub profile: String,
    /// Rejected node → reason (every rejected node, placed or not).
    pub reasons: BTreeMap<String, Reason>,
}

/// Places one pod on the best node of the whole inventory and commits it to the ledger.
pub fn place(inventory: &mut Inventory, demand: &Demand, config: &Config) -> Decision {
    place_where(inventory, demand, config, |_| true)
}

/// Like [`place`], among the nodes `eligible` accepts (for example those kube-scheduler's own
/// filters pass). Ineligible nodes get no verdict and no reason from vramfit.
pub fn place_where(
    inventory: &mut Inventory,
    demand: &Demand,
    config: &Config,
    eligible: impl Fn(&NodeInfo) -> bool,
) -> Decision {
    let (profile, _) = config.profile_for(
        demand
            .as_ref()
            .ok()
            .and_then(|d| d.scheduler_name.as_deref()),
    );
    inventory.configure_workload(&config.workload);
    if let Ok(pod) = demand {
        observe(inventory, pod);
    }
    let mut decision = Decision {
        pod: match demand {
            Ok(d) => d.key.clone(),
            Err(_) => String::new(),
        },
        node: None,
        zone: None,
        shares: Vec::new(),
        exclusive: false,
        score: None,
        exact_score: None,
        profile: profile.to_string(),
        reasons: BTreeMap::new(),
    };
    let inventory_view: &Inventory = inventory;
    let mut judge = Judge::new(inventory_view, demand);
    let eligible: Vec<Option<&NodeInfo>> = inventory_view
        .nodes()
        .filter(|n| eligible(n))
        .map(Some)
        .collect();
    let verdicts = judge.verdicts(&eligible);
    let mut fits: Vec<(&NodeInfo, Fit)> = Vec::new();
    for (node, verdict) in eligible.into_iter().flatten().zip(verdicts) {
        match verdict {
            Ok(fit) => fits.push((node, fit)),
            Err(reason) => {
                decision.reasons.insert(node.name.clone(), reason);
            }
        }
    }
    let Ok(pod) = demand else {
        return decision;
    };
    let candidates: Vec<(&NodeInfo, &Fit)> = fits.iter().map(|(n, f)| (*n, f)).collect();
    let (scores, chosen) = rank(&mut judge, &candidates, pod, config);
    drop(judge);
    // Highest score wins; ties go to the node whose name sorts first, so results are deterministic.
    let best = scores
        .iter()
        .enumerate()
        .max_by(|(ia, a), (ib, b)| {
            a.exact
                .total_cmp(&b.exact)
                .then_with(|| fits[*ib].0.name.cmp(&fits[*ia].0.name))
        })
        .map(|(i, s)| (i, *s));
    let Some((best, scored)) = best else {
        return decision;
    };
    let node = fits[best].0;
    let fit = &chosen[best];
    let placement = Placement::from_fit(pod, node, fit);
    decision.node = Some(node.name.clone());
    decision.zone = node.zone.clone();
    decision.shares = placement.shares.clone();
    decision.exclusive = fit.exclusive;
    decision.score = Some(scored.score);
    decision.exact_score = Some(scored.exact);
    drop(fits);
    if !pod.is_accelerator_free() {
        inventory.commit(&pod.id, placement);
    }
    decision
}

/// Counts a pod in the inventory's workload model (pods asked about, placed or seen bound).
pub fn observe(inventory: &mut Inventory, demand: &PodDemand) {
    if let Some(shape) = Shape::of(demand, 0, 0) {
        inventory.observe(&demand.id, shape);
    }
}

/// Pod annotation listing the device indices a bound pod holds (`0,1`), written at bind.
pub const ANNOTATION_ASSIGNED_DEVICES: &str = "vramfit.io/assigned-devices";

/// Parses [`ANNOTATION_ASSIGNED_DEVICES`]; `None` when absent or malformed.
pub fn parse_assigned_devices(raw: &str) -> Option<Vec<u32>> {
    let indices: Result<Vec<u32>, _> = raw
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::parse)
        .collect();
    indices.ok().filter(|v| !v.is_empty())
}

/// Records a pod that is already bound to `node_name` (it occupies devices whether or not it
/// would fit now). Devices come from `assigned` when known, else from the best fit ignoring
/// headroom, else from the least occupied devices: reality is recorded, never refused.
pub fn record_bound(
    inventory: &mut Inventory,
    demand: &PodDemand,
    node_name: &str,
    assigned: Option<&[u32]>,
) {
    if demand.is_accelerator_free() {
        return;
    }
    observe(inventory, demand);
    let node = inventory.node(node_name);
    let count = demand.devices.max(1) as usize;
    let indices: Vec<u32> = if let Some(assigned) = assigned {
        assigned.to_vec()
    } else if let Some(node) = node {
        let relaxed = PodDemand {
            headroom_percent: 0,
            products: Vec::new(),
            ..demand.clone()
        };
        match fit_node(node, &relaxed) {
            Ok(fit) => fit.devices.to_vec(),
            Err(_) => {
                let mut devices: Vec<_> = node.devices.iter().collect();
                devices.sort_by_key(|d| (d.exclusive_holders, d.sharers, d.used_mib(), d.index));
                devices.iter().take(count).map(|d| d.index).collect()
            }
        }
    } else {
        Vec::new()
    };
    let placement = Placement {
        pod: demand.key.clone(),
        node: node_name.to_string(),
        zone: node.and_then(|n| n.zone.clone()),
        model: demand.model.clone(),
        shares: indices
            .into_iter()
            .map(|index| DeviceShare {
                index,
                vram_mib: demand.vram_mib,
            })
            .collect(),
        exclusive: !demand.is_sharing(),
    };
    inventory.commit(&demand.id, placement);
}

/// Devices held whole by a pod whose per-device need would fit a smaller device class of the
/// same accelerator resource under `headroom_percent`: big GPUs doing a small GPU's job.
pub fn stranded_devices(
    inventory: &Inventory,
    headroom_percent: u8,
) -> std::collections::HashSet<(String, u32)> {
    let mut sizes: std::collections::HashMap<Option<&'static str>, Vec<u64>> =
        std::collections::HashMap::new();
    for node in inventory.nodes() {
        sizes
            .entry(node.resource)
            .or_default()
            .extend(node.devices.iter().map(|d| d.usable_mib(headroom_percent)));
    }
    let mut stranded = std::collections::HashSet::new();
    for (_, placement) in inventory.placements() {
        if !placement.exclusive {
            continue;
        }
        let Some(node) = inventory.node(&placement.node) else {
            continue;
        };
        let smaller = sizes.get(&node.resource).map(Vec::as_slice).unwrap_or(&[]);
        for share in &placement.shares {
            let Some(device) = node.devices.iter().find(|d| d.index == share.index) else {
                continue;
            };
            let own = device.usable_mib(headroom_percent);
            if smaller
                .iter()
                .any(|&usable| usable < own && usable >= share.vram_mib)
            {
                stranded.insert((node.name.clone(), device.index));
            }
        }
    }
    stranded
}
