//! The `place` command's engine: loads a snapshot, places a file's pods one after another —
//! kube-scheduler's own checks first, then the core exactly as the server runs it — and reports
//! where each went and why not elsewhere.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::Serialize;

use std::collections::HashMap;

use crate::core::quantity::format_mib;
use crate::core::schedule::Decision;
use crate::core::schedule::{filter, prioritize};
use crate::core::{place_where, pod_demand, Catalog, Config, Inventory};
use crate::dryrun::kube_checks::{pod_requests, reject_reason, NodeUsage};
use crate::extender::state::load_snapshot;
use crate::kubernetes::objects::{Node, Pod};
use crate::kubernetes::snapshot::Objects;

/// One device a placed pod got.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceOut {
    /// The device's index on the node.
    pub index: u32,
    /// The device's product name; empty when unknown.
    pub product: String,
    /// VRAM reserved on it (MiB); 0 when the pod declared none.
    #[serde(rename = "vramMiB")]
    pub vram_mib: u64,
    /// VRAM on a shared device (true) or the whole device (false).
    pub shared: bool,
}

/// Where one pod went, or why it could not.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PodResult {
    /// `namespace/name`.
    pub pod: String,
    /// The chosen node; `None` when the pod could not be placed.
    pub node: Option<String>,
    /// Devices the pod got on `node`.
    pub devices: Vec<DeviceOut>,
    /// The node's zone, if labelled.
    pub zone: Option<String>,
    /// 0–10, as kube-scheduler would receive it.
    pub score: Option<u8>,
    /// The scoring profile used.
    pub profile: String,
    /// For an unplaced pod: node → reason.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub reasons: BTreeMap<String, String>,
    /// For an unplaced pod: the FailedScheduling-style summary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Other nodes with the same 0–10 score as `node`: kube-scheduler picks among all of
    /// them at random, so the live pod may land on any (sorted by name).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tied: Vec<String>,
    /// The pod already exists in the cluster, bound to `node`: shown where it is, not placed.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub existing: bool,
}

/// The result of a `place` run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlaceReport {
    /// Nodes in the dry run.
    pub nodes: usize,
    /// One result per pod, in the order given.
    pub pods: Vec<PodResult>,
    /// Nodes added by `--add-nodes` (what-if capacity).
    #[serde(rename = "addedNodes", skip_serializing_if = "Vec::is_empty")]
    pub added_nodes: Vec<String>,
}

impl PlaceReport {
    /// Whether every pod was placed.
    pub fn all_placed(&self) -> bool {
        self.pods.iter().all(|p| p.node.is_some())
    }
}

/// Groups reasons the way kube-scheduler's FailedScheduling event does:
/// `0/14 nodes are available: 6 vramfit: …, 8 vramfit: ….`
pub fn failed_scheduling_message(total_nodes: usize, reasons: &BTreeMap<String, String>) -> String {
    let mut histogram: BTreeMap<&str, usize> = BTreeMap::new();
    for reason in reasons.values() {
        *histogram.entry(reason.as_str()).or_default() += 1;
    }
    let mut parts: Vec<String> = histogram.iter().map(|(r, n)| format!("{n} {r}")).collect();
    parts.sort();
    if parts.is_empty() {
        format!("0/{total_nodes} nodes are available.")
    } else {
        format!("0/{total_nodes} nodes are available: {}.", parts.join(", "))
    }
}

/// A dry run in progress: the core's inventory plus what kube-scheduler itself tracks (the Node
/// objects and the resources their pods request).
pub struct DryRun {
    /// The core's view of the nodes and what is placed on them.
    pub inventory: Inventory,
    nodes: Vec<Node>,
    usage: HashMap<String, NodeUsage>,
    /// Bound, unfinished pods of the snapshot that a pod to place may turn out to be.
    bound: Vec<BoundPod>,
}

/// A pod already bound in the snapshot.
struct BoundPod {
    namespace: String,
    name: String,
    controller: Option<String>,
    ledger_id: String,
    node: String,
    /// Already shown as one of the pods to place.
    claimed: bool,
}

impl DryRun {
    /// Starts from a snapshot: every node, and every bound, unfinished pod's devices and requests.
    pub fn new(snapshot: &Objects, config: &Config, catalog: &Catalog, now: SystemTime) -> Self {
        let (inventory, _) = load_snapshot(snapshot, config, catalog, now);
        let mut usage: HashMap<String, NodeUsage> = HashMap::new();
        let mut bound = Vec::new();
        for pod in &snapshot.pods {
            let facts = pod.facts();
            let (Some(node), false) = (facts.node_name.as_deref(), facts.is_finished()) else {
                continue;
            };
            bound.push(BoundPod {
                namespace: facts.namespace.clone(),
                name: facts.name.clone(),
                controller: facts.controller.clone(),
                ledger_id: facts.ledger_id(),
                node: node.to_string(),
                claimed: false,
            });
            match pod_requests(pod) {
                Ok(requests) => usage.entry(node.to_string()).or_default().add(&requests),
                Err(e) => {
                    tracing::warn!(pod = %facts.key(), error = %e, "bound pod's requests not counted")
                }
            }
        }
        DryRun {
            inventory,
            nodes: snapshot.nodes.clone(),
            usage,
            bound,
        }
    }

    /// The bound pod of the snapshot that `pod` (from the file of pods to place) is, if any: the
    /// same namespace and name, or for a workload's replica a pod of that workload (its
    /// controller is the workload, or for a Deployment one of its ReplicaSets,
    /// `<deployment>-<hash>`). Each bound pod answers for one pod to place.
    fn existing(&mut self, pod: &Pod) -> Option<&mut BoundPod> {
        let namespace = if pod.metadata.namespace.is_empty() {
            "default"
        } else {
            pod.metadata.namespace.as_str()
        };
        let owner = pod.metadata.owner_references.iter().find(|o| o.controller);
        let same_workload = |b: &BoundPod| match (owner, &b.controller) {
            (Some(owner), Some(controller)) => {
                controller == &owner.name
                    || (owner.kind == "Deployment"
                        && controller
                            .strip_prefix(owner.name.as_str())
                            .and_then(|rest| rest.strip_prefix('-'))
                            .is_some_and(|hash| !hash.is_empty() && !hash.contains('-')))
            }
            _ => false,
        };
        let by_name = self
            .bound
            .iter()
            .position(|b| !b.claimed && b.namespace == namespace && b.name == pod.metadata.name);
        let index = by_name.or_else(|| {
            self.bound
                .iter()
                .position(|b| !b.claimed && b.namespace == namespace && same_workload(b))
        })?;
        let found = &mut self.bound[index];
        found.claimed = true;
        Some(found)
    }

    /// Places `pods` one after another: kube-scheduler's checks first, then vramfit's policy on
    /// the nodes that pass, committing each placement before the next pod.
    pub fn place_all(&mut self, pods: &[Pod], config: &Config, catalog: &Catalog) -> PlaceReport {
        let results = pods
            .iter()
            .map(|pod| self.place_one(pod, config, catalog))
            .collect();
        PlaceReport {
            nodes: self.nodes.len(),
            pods: results,
            added_nodes: Vec::new(),
        }
    }

    fn place_one(&mut self, pod: &Pod, config: &Config, catalog: &Catalog) -> PodResult {
        let facts = pod.facts();
        let demand = pod_demand(&facts, config, catalog);
        if let Some(existing) = self.existing(pod) {
            let (ledger_id, node) = (existing.ledger_id.clone(), existing.node.clone());
            return self.describe_existing(facts.key(), &ledger_id, node, config, &demand);
        }
        let mut kube_reasons: BTreeMap<String, String> = BTreeMap::new();
        let requests = match pod_requests(pod) {
            Ok(requests) => {
                let empty = NodeUsage::default();
                for node in &self.nodes {
                    let usage = self.usage.get(&node.metadata.name).unwrap_or(&empty);
                    if let Some(reason) = reject_reason(node, usage, pod, &requests) {
                        kube_reasons.insert(node.metadata.name.clone(), reason);
                    }
                }
                Some(requests)
            }
            Err(e) => {
                for node in &self.nodes {
                    kube_reasons.insert(node.metadata.name.clone(), format!("invalid pod: {e}"));
                }
                None
            }
        };
        // The workload model counts the pod before it is scored (place_where would count it
        // anyway), so the scores below are the ones the placement sees.
        self.inventory.configure_workload(&config.workload);
        if let Ok(d) = &demand {
            crate::core::schedule::observe(&mut self.inventory, d);
        }
        // Every feasible node's 0–10 score as kube-scheduler would receive it, to name the
        // nodes tied with the winner.
        let scores: Vec<(String, u8)> = {
            let eligible: Vec<&str> = self
                .inventory
                .nodes()
                .filter(|n| !kube_reasons.contains_key(&n.name))
                .map(|n| n.name.as_str())
                .collect();
            let feasible = filter(
                eligible.iter().map(|n| (*n, self.inventory.node(n))),
                &demand,
                &self.inventory,
            )
            .feasible;
            prioritize(
                feasible.iter().map(|n| (*n, self.inventory.node(n))),
                &demand,
                &self.inventory,
                config,
            )
            .into_iter()
            .map(|(n, score)| (n.to_string(), score))
            .collect()
        };
        let decision = place_where(&mut self.inventory, &demand, config, |n| {
            !kube_reasons.contains_key(&n.name)
        });
        let mut tied: Vec<String> = match (&decision.node, decision.score) {
            (Some(chosen), Some(best)) => scores
                .into_iter()
                .filter(|(n, score)| *score == best && n != chosen)
                .map(|(n, _)| n)
                .collect(),
            _ => Vec::new(),
        };
        tied.sort();
        if let (Some(node), Some(requests)) = (&decision.node, &requests) {
            self.usage.entry(node.clone()).or_default().add(requests);
        }
        let total = self.nodes.len();
        let mut result = describe(&self.inventory, facts.key(), decision, kube_reasons, total);
        result.tied = tied;
        result
    }

    /// A pod that already runs where the cluster put it, with the devices the ledger has.
    fn describe_existing(
        &self,
        pod: String,
        ledger_id: &str,
        node: String,
        config: &Config,
        demand: &crate::core::schedule::Demand,
    ) -> PodResult {
        let info = self.inventory.node(&node);
        let placement = self.inventory.placement(ledger_id);
        let devices = placement
            .map(|p| {
                p.shares
                    .iter()
                    .map(|share| DeviceOut {
                        index: share.index,
                        product: info
                            .and_then(|n| n.devices.iter().find(|d| d.index == share.index))
                            .map(|d| d.product().to_string())
                            .unwrap_or_default(),
                        vram_mib: share.vram_mib,
                        shared: !p.exclusive,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let scheduler = demand
            .as_ref()
            .ok()
            .and_then(|d| d.scheduler_name.as_deref());
        PodResult {
            pod,
            zone: info.and_then(crate::core::NodeInfo::zone_name),
            node: Some(node),
            devices,
            score: None,
            profile: config.profile_for(scheduler).0.to_string(),
            reasons: BTreeMap::new(),
            message: None,
            tied: Vec::new(),
            existing: true,
        }
    }
}

fn describe(
    inventory: &Inventory,
    pod: String,
    decision: Decision,
    mut reasons: BTreeMap<String, String>,
    total_nodes: usize,
) -> PodResult {
    let node = decision.node.as_deref().and_then(|n| inventory.node(n));
    let devices = decision
        .shares
        .iter()
        .map(|share| {
            let device = node.and_then(|n| n.devices.iter().find(|d| d.index == share.index));
            DeviceOut {
                index: share.index,
                product: device.map(|d| d.product().to_string()).unwrap_or_default(),
                vram_mib: share.vram_mib,
                shared: !decision.exclusive,
            }
        })
        .collect();
    let placed = decision.node.is_some();
    if placed {
        reasons.clear();
    } else {
        reasons.extend(
            decision
                .reasons
                .iter()
                .map(|(n, r)| (n.clone(), r.to_string())),
        );
    }
    PodResult {
        message: (!placed).then(|| failed_scheduling_message(total_nodes, &reasons)),
        pod,
        node: decision.node,
        devices,
        zone: decision.zone,
        score: decision.score,
        profile: decision.profile,
        reasons,
        tied: Vec::new(),
        existing: false,
    }
}

/// Renders the report as an aligned table, followed by the reasons for unplaced pods.
pub fn render_table(report: &PlaceReport) -> String {
    let header = ["POD", "NODE", "DEVICES", "ZONE", "SCORE", "PROFILE"];
    let rows: Vec<[String; 6]> = report
        .pods
        .iter()
        .map(|p| {
            [
                p.pod.clone(),
                node_cell(p),
                devices_cell(&p.devices),
                p.zone.clone().unwrap_or_else(|| "-".into()),
                p.score.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
                p.profile.clone(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| -> String {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            out.push_str(cell);
            if i + 1 < cells.len() {
                // Padded by hand: `format!`'s width takes at most 65,535, and a cell (a long
                // product label) can be longer.
                let pad = w.saturating_sub(cell.chars().count()) + 2;
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(&header.map(String::from));
    for row in &rows {
        out.push_str(&line(row));
    }
    let placed = report.pods.iter().filter(|p| p.node.is_some()).count();
    if !report.added_nodes.is_empty() {
        out.push_str(&format!(
            "\nWhat-if nodes added: {}\n",
            report.added_nodes.join(", ")
        ));
    }
    out.push_str(&format!(
        "\n{placed}/{} pods placed on {} nodes.\n",
        report.pods.len(),
        report.nodes
    ));
    for p in report.pods.iter().filter(|p| p.node.is_none()) {
        if let Some(message) = &p.message {
            out.push_str(&format!("\n{}: {message}\n", p.pod));
        }
    }
    out
}

/// The node, `existing` for a pod already bound there, and `+N tied` when other nodes score
/// the same.
fn node_cell(p: &PodResult) -> String {
    let Some(node) = &p.node else {
        return "<pending>".into();
    };
    if p.existing {
        format!("{node} (existing)")
    } else if p.tied.is_empty() {
        node.clone()
    } else {
        format!("{node} +{} tied", p.tied.len())
    }
}

fn devices_cell(devices: &[DeviceOut]) -> String {
    if devices.is_empty() {
        return "-".into();
    }
    let product = &devices[0].product;
    let indices: Vec<String> = devices.iter().map(|d| format!("#{}", d.index)).collect();
    let vram = devices[0].vram_mib;
    let mut cell = format!("{} {product} {}", devices.len(), indices.join(","));
    if vram > 0 {
        cell.push_str(&format!(
            " ({} each{})",
            format_mib(vram),
            if devices[0].shared { ", shared" } else { "" }
        ));
    }
    cell
}
