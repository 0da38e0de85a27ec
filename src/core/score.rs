//! Scoring: named terms in `0..=1`, combined by a profile's weights into kube-scheduler's 0–10.
//!
//! * `fit` = 1 − idle / ref, where idle is the VRAM left idle on the chosen devices after
//!   placement and ref is the largest chosen-device total among the candidates. Small devices
//!   that the model nearly fills score highest.
//! * `packing` = busy devices after placement / devices on the node. Filling a node keeps other
//!   nodes whole for multi-device models.
//! * `zoneSpread` = 1 − replicas in the node's zone / the most replicas in any candidate zone
//!   (1 when no candidate zone holds one).
//! * `nodeSpread` = 1 / (1 + replicas on the node).
//! * `frag` = 1 / (1 + e^(Δ/ref)), where Δ is how much the node's fragmentation against the
//!   expected workload grows when the pod lands (MiB, negative when the pod fills a fragment;
//!   see [`super::frag`]) and ref is the largest device among the candidates; rounded down to a
//!   multiple of `fragStep`. 0.5 when nothing changes; towards 1 when the pod fills capacity
//!   nothing else could use, towards 0 when it breaks capacity the workload needs.
//!
//! score = round(10 × Σ wᵢ·termᵢ / Σ wᵢ).

use serde::Serialize;

use super::config::Weights;
use super::filter::Fit;
use super::inventory::ModelReplicas;
use super::node::NodeInfo;

/// The terms of one node's score, each in `0..=1`.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Terms {
    pub fit: f64,
    pub packing: f64,
    pub zone_spread: f64,
    pub node_spread: f64,
    pub frag: f64,
}

/// A node's score: the exact weighted value in `0..=1` and the 0–10 integer sent on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Scored {
    pub exact: f64,
    pub score: u8,
    pub terms: Terms,
}

/// Scores feasible candidates against each other. `replicas` are the pod's model's replicas;
/// `frag_deltas[i]` is candidate i's fragmentation change (empty: no fragmentation term).
pub fn score_candidates(
    candidates: &[(&NodeInfo, &Fit)],
    frag_deltas: &[f64],
    replicas: Option<&ModelReplicas>,
    weights: &Weights,
    frag_step: f64,
) -> Vec<Scored> {
    let reference = candidates
        .iter()
        .map(|(_, fit)| fit.chosen_total_mib)
        .max()
        .unwrap_or(0);
    // Fragmentation changes are measured against the largest device among the candidates.
    let frag_reference = candidates
        .iter()
        .map(|(n, _)| n.largest_device_mib())
        .max()
        .unwrap_or(0);
    let zone_count = |node: &NodeInfo| -> u32 {
        match (replicas, &node.zone) {
            (Some(r), Some(zone)) => r.by_zone.get(zone).copied().unwrap_or(0),
            _ => 0,
        }
    };
    let busiest_zone = candidates
        .iter()
        .map(|(n, _)| zone_count(n))
        .max()
        .unwrap_or(0);
    candidates
        .iter()
        .enumerate()
        .map(|(i, (node, fit))| {
            let context = Context {
                reference,
                frag_reference,
                frag_step,
                zone_replicas: zone_count(node),
                busiest_zone,
                node_replicas: replicas
                    .and_then(|r| r.by_node.get(&node.name))
                    .copied()
                    .unwrap_or(0),
            };
            score_one(node, fit, frag_deltas.get(i).copied(), &context, weights)
        })
        .collect()
}

/// What a node's score depends on beyond the node and its fit: the candidates' reference size
/// and the model's replica counts.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Context {
    /// Largest chosen-device total among the candidates (MiB).
    pub reference: u64,
    /// Reference for the fragmentation change: the largest device among the candidates (MiB).
    pub frag_reference: u64,
    /// The `frag` term is rounded down to a multiple of this (0: exact).
    pub frag_step: f64,
    /// Replicas of the pod's model in the node's zone, and in the busiest candidate zone.
    pub zone_replicas: u32,
    pub busiest_zone: u32,
    /// Replicas of the pod's model on the node.
    pub node_replicas: u32,
}

/// Scores one candidate given its context (what [`score_candidates`] does for each).
pub fn score_one(
    node: &NodeInfo,
    fit: &Fit,
    frag_delta: Option<f64>,
    context: &Context,
    weights: &Weights,
) -> Scored {
    let terms = Terms {
        fit: if context.reference == 0 {
            1.0
        } else {
            1.0 - fit.idle_after_mib as f64 / context.reference as f64
        },
        packing: packing_after(node, fit),
        zone_spread: if context.busiest_zone == 0 {
            1.0
        } else {
            1.0 - f64::from(context.zone_replicas) / f64::from(context.busiest_zone)
        },
        node_spread: 1.0 / (1.0 + f64::from(context.node_replicas)),
        frag: match frag_delta {
            Some(delta) if context.frag_reference > 0 => {
                let exact = 1.0 / (1.0 + (delta / context.frag_reference as f64).exp());
                if context.frag_step > 0.0 {
                    (exact / context.frag_step).floor() * context.frag_step
                } else {
                    exact
                }
            }
            _ => 0.5,
        },
    };
    // Without a fragmentation change (no workload model yet) the term is left out, so the
    // other terms keep their full range on the wire.
    let frag_weight = if frag_delta.is_some() {
        weights.frag
    } else {
        0.0
    };
    let weight_sum =
        weights.fit + weights.packing + weights.zone_spread + weights.node_spread + frag_weight;
    let exact = if weight_sum > 0.0 {
        (weights.fit * terms.fit
            + weights.packing * terms.packing
            + weights.zone_spread * terms.zone_spread
            + weights.node_spread * terms.node_spread
            + frag_weight * terms.frag)
            / weight_sum
    } else {
        0.0
    };
    let exact = if exact.is_nan() {
        0.0
    } else {
        exact.clamp(0.0, 1.0)
    };
    Scored {
        exact,
        score: (exact * 10.0).round() as u8,
        terms,
    }
}

fn packing_after(node: &NodeInfo, fit: &Fit) -> f64 {
    if node.devices.is_empty() {
        return 0.0;
    }
    f64::from(fit.busy_before + fit.newly_busy) / node.devices.len() as f64
}
