//! Decisions over many nodes: filter with reasons, prioritize, and place-and-commit, all as pure
//! functions of the inventory and a demand. The HTTP server and the CLI call these.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Serialize;

use super::config::Config;
use super::demand::{DemandError, PodDemand};
use super::filter::{fit_node, Fit, Reason};
use super::frag::{assess, Change};
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
    /// The node's name.
    pub node: &'a str,
    /// Index into [`FilterOutcome::messages`].
    pub message: usize,
    /// Whether no eviction can fix the rejection ([`Reason::is_unresolvable`]).
    pub unresolvable: bool,
    /// The reason's metrics code ([`Reason::code`]).
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
    /// Rejections no eviction can fix (`unresolvable`) or the others: node → index into
    /// [`FilterOutcome::messages`].
    pub fn rejections(&self, unresolvable: bool) -> impl Iterator<Item = (&'a str, usize)> + '_ {
        self.rejected
            .iter()
            .filter(move |r| r.unresolvable == unresolvable)
            .map(|r| (r.node, r.message))
    }

    /// Rejections an eviction could fix (`FailedNodes`): node → reason.
    pub fn failed(&self) -> impl Iterator<Item = (&'a str, &str)> + '_ {
        self.rejections(false)
            .map(|(node, i)| (node, self.messages[i].as_str()))
    }

    /// Rejections no eviction can fix (`FailedAndUnresolvableNodes`): node → reason.
    pub fn unresolvable(&self) -> impl Iterator<Item = (&'a str, &str)> + '_ {
        self.rejections(true)
            .map(|(node, i)| (node, self.messages[i].as_str()))
    }
}

/// How many distinct reasons a filter call compares against before writing a reason anew.
const DISTINCT_REASONS_SCANNED: usize = 32;

/// Judges nodes for one demand, through the inventory's [memo](super::memo) for the nodes that
/// are the inventory's own (nodes built elsewhere are judged afresh). The shape's memo goes back
/// to the inventory when the judge is dropped.
pub struct Judge<'a> {
    inventory: &'a Inventory,
    demand: &'a Demand,
    memo: Option<ShapeMemo>,
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

    /// The node's memo entry, computed first when missing or stale.
    fn judged(&mut self, node: &NodeInfo) -> Option<&mut Judged> {
        let (slot, generation) = self.stamp(node)?;
        let memo = self.memo.as_mut()?;
        if memo.get(slot, generation).is_none() {
            let verdict = verdict(Some(node), self.demand);
            memo.put(
                slot,
                Judged {
                    generation,
                    verdict,
                    assessed: None,
                },
            );
        }
        memo.get_mut(slot, generation)
    }

    /// [`verdict`], from the memo when current.
    pub fn verdict(&mut self, node: Option<&NodeInfo>) -> Cow<'_, Result<Fit, Reason>> {
        let demand = self.demand;
        match node {
            Some(node) => match self.judged(node) {
                Some(judged) => Cow::Borrowed(&judged.verdict),
                None => Cow::Owned(verdict(Some(node), demand)),
            },
            None => Cow::Owned(verdict(None, demand)),
        }
    }

    /// For a node that passes: the fit scoring uses and, when `measure` is set, the changes of
    /// the node's fragmentation and stranded VRAM ([`assess`]: for a sharing pod, the device
    /// that fragments least). `None` when the node does not pass.
    pub fn scored_fit(&mut self, node: &NodeInfo, measure: bool) -> Option<(Fit, Option<Change>)> {
        let inventory = self.inventory;
        let Ok(pod) = self.demand else {
            return None;
        };
        let fresh = |fit: &Fit| {
            let a = assess(
                node,
                fit,
                pod,
                pod.host,
                inventory.packing(),
                inventory.frag_state(node),
            );
            (a.change(), a.fit)
        };
        match self.judged(node) {
            Some(judged) => {
                let fit = judged.verdict.as_ref().ok()?;
                if !measure {
                    return Some((fit.clone(), None));
                }
                let (delta, fit) = judged.assessed.get_or_insert_with(|| fresh(fit));
                Some((fit.clone(), Some(*delta)))
            }
            None => {
                let fit = verdict(Some(node), self.demand).ok()?;
                if !measure {
                    return Some((fit, None));
                }
                let (delta, fit) = fresh(&fit);
                Some((fit, Some(delta)))
            }
        }
    }
}

impl Drop for Judge<'_> {
    fn drop(&mut self) {
        if let Some(memo) = self.memo.take() {
            self.inventory.memo().put_back(memo);
        }
    }
}

/// Filters `nodes` (name, node if known). Every rejected node gets exactly one reason.
pub fn filter<'a>(
    nodes: impl IntoIterator<Item = (&'a str, Option<&'a NodeInfo>)>,
    demand: &Demand,
    inventory: &Inventory,
) -> FilterOutcome<'a> {
    let mut judge = Judge::new(inventory, demand);
    let nodes = nodes.into_iter();
    // Sized for the common answer, most nodes passing: no regrowth over thousands of nodes.
    let mut out = FilterOutcome {
        feasible: Vec::with_capacity(nodes.size_hint().0),
        ..FilterOutcome::default()
    };
    let mut distinct: Vec<Reason> = Vec::new();
    for (name, node) in nodes {
        let verdict = judge.verdict(node);
        let reason = match verdict.as_ref() {
            Ok(_) => {
                out.feasible.push(name);
                continue;
            }
            Err(reason) => reason,
        };
        // `distinct[i]` is the reason of `messages[i]`; both grow together up to the cap.
        let message = match distinct.iter().position(|r| r == reason) {
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
    let Ok(pod) = demand else {
        return nodes.into_iter().map(|(n, _)| (n, 0)).collect();
    };
    let measure = measures_frag(inventory, pod, config);
    let nodes = nodes.into_iter();
    let count = nodes.size_hint().0;
    let mut out: Vec<(&'a str, u8)> = Vec::with_capacity(count);
    let mut passing: Vec<usize> = Vec::with_capacity(count);
    let mut assessed = Assessed::with_capacity(count, measure);
    // One judgement per node: the verdict and, for a node that passes, its fit and changes.
    for (name, node) in nodes {
        if let Some(node) = node {
            if let Some((fit, change)) = judge.scored_fit(node, measure) {
                passing.push(out.len());
                assessed.push(node, fit, change);
            }
        }
        out.push((name, 0));
    }
    let scores = assessed.score(inventory, pod, config);
    for (i, scored) in passing.into_iter().zip(scores) {
        out[i].1 = scored.score;
    }
    out
}

/// Whether scoring measures fragmentation: the pod's profile weighs `frag` and the workload
/// model holds shapes.
fn measures_frag(inventory: &Inventory, demand: &PodDemand, config: &Config) -> bool {
    let (_, weights) = config.profile_for(demand.scheduler_name.as_deref());
    weights.frag != 0.0 && !inventory.packing().profile().shapes.is_empty()
}

/// Nodes that pass with the fit and the fragmentation change each would be scored with.
struct Assessed<'n> {
    nodes: Vec<&'n NodeInfo>,
    fits: Vec<Fit>,
    /// Empty when fragmentation is not measured.
    changes: Vec<Change>,
}

impl<'n> Assessed<'n> {
    fn with_capacity(count: usize, measure: bool) -> Self {
        Assessed {
            nodes: Vec::with_capacity(count),
            fits: Vec::with_capacity(count),
            changes: Vec::with_capacity(if measure { count } else { 0 }),
        }
    }

    fn push(&mut self, node: &'n NodeInfo, fit: Fit, change: Option<Change>) {
        self.nodes.push(node);
        self.fits.push(fit);
        if let Some(change) = change {
            self.changes.push(change);
        }
    }

    /// Scores the nodes against each other, in order.
    fn score(&self, inventory: &Inventory, demand: &PodDemand, config: &Config) -> Vec<Scored> {
        let (_, weights) = config.profile_for(demand.scheduler_name.as_deref());
        let replicas = demand.model.as_deref().and_then(|m| inventory.replicas(m));
        let chosen: Vec<(&NodeInfo, &Fit)> = self.nodes.iter().copied().zip(&self.fits).collect();
        score_candidates(
            &chosen,
            &self.changes,
            replicas,
            |node| replicas.map_or(0, |r| inventory.replicas_on(r, node)),
            |node| inventory.zone_of(node),
            weights,
            config.steps(),
        )
    }
}

/// Scores nodes that pass, against each other; also returns the fit each was scored with.
fn rank(
    judge: &mut Judge,
    candidates: &[&NodeInfo],
    demand: &PodDemand,
    config: &Config,
) -> (Vec<Scored>, Vec<Fit>) {
    let inventory = judge.inventory;
    let measure = measures_frag(inventory, demand, config);
    let mut assessed = Assessed::with_capacity(candidates.len(), measure);
    for node in candidates {
        // Every candidate passed the same judge's verdict, so a fit is always there.
        let (fit, change) = judge.scored_fit(node, measure).unwrap_or_default();
        assessed.push(node, fit, change.or(measure.then(Change::default)));
    }
    (assessed.score(inventory, demand, config), assessed.fits)
}

/// The outcome of placing one pod.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// `namespace/name`.
    pub pod: String,
    /// The chosen node; `None` when the pod was not placed.
    pub node: Option<String>,
    /// The chosen node's zone, if labelled.
    pub zone: Option<String>,
    /// VRAM reserved per chosen device.
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
    let mut fits: Vec<&NodeInfo> = Vec::new();
    for node in inventory_view.nodes().filter(|n| eligible(n)) {
        match judge.verdict(Some(node)).as_ref() {
            Ok(_) => fits.push(node),
            Err(reason) => {
                decision.reasons.insert(node.name.clone(), reason.clone());
            }
        }
    }
    let Ok(pod) = demand else {
        return decision;
    };
    let (scores, chosen) = rank(&mut judge, &fits, pod, config);
    drop(judge);
    // Highest score wins; ties go to the node whose name sorts first, so results are deterministic.
    let best = scores
        .iter()
        .enumerate()
        .max_by(|(ia, a), (ib, b)| {
            a.exact
                .total_cmp(&b.exact)
                .then_with(|| fits[*ib].name.cmp(&fits[*ia].name))
        })
        .map(|(i, s)| (i, *s));
    let Some((best, scored)) = best else {
        return decision;
    };
    let node = fits[best];
    let fit = &chosen[best];
    let placement = Placement::from_fit(pod, node, fit);
    let node_name = node.name.clone();
    decision.node = Some(node.name.clone());
    decision.zone = node.zone_name();
    decision.shares = placement.shares.clone();
    decision.exclusive = fit.exclusive;
    decision.score = Some(scored.score);
    decision.exact_score = Some(scored.exact);
    drop(fits);
    if !pod.is_accelerator_free() {
        inventory.commit(&pod.id, placement);
    }
    inventory.hold_host(&pod.id, &node_name, pod.host);
    decision
}

/// Counts a pod in the inventory's workload model (pods asked about, placed or seen bound).
pub fn observe(inventory: &mut Inventory, demand: &PodDemand) {
    if let Some(shape) = Shape::of(demand) {
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
        zone: node.and_then(NodeInfo::zone_name),
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
