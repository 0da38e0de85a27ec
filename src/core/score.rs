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
}

/// A node's score: the exact weighted value in `0..=1` and the 0–10 integer sent on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Scored {
    pub exact: f64,
    pub score: u8,
    pub terms: Terms,
}

/// Scores feasible candidates against each other. `replicas` are the pod's model's replicas.
pub fn score_candidates(
    candidates: &[(&NodeInfo, &Fit)],
    replicas: Option<&ModelReplicas>,
    weights: &Weights,
) -> Vec<Scored> {
    let reference = candidates
        .iter()
        .map(|(_, fit)| fit.chosen_total_mib)
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
    let weight_sum = weights.fit + weights.packing + weights.zone_spread + weights.node_spread;

    candidates
        .iter()
        .map(|(node, fit)| {
            let terms = Terms {
                fit: if reference == 0 {
                    1.0
                } else {
                    1.0 - fit.idle_after_mib as f64 / reference as f64
                },
                packing: packing_after(node, fit),
                zone_spread: if busiest_zone == 0 {
                    1.0
                } else {
                    1.0 - f64::from(zone_count(node)) / f64::from(busiest_zone)
                },
                node_spread: {
                    let here = replicas
                        .and_then(|r| r.by_node.get(&node.name))
                        .copied()
                        .unwrap_or(0);
                    1.0 / (1.0 + f64::from(here))
                },
            };
            let exact = if weight_sum > 0.0 {
                (weights.fit * terms.fit
                    + weights.packing * terms.packing
                    + weights.zone_spread * terms.zone_spread
                    + weights.node_spread * terms.node_spread)
                    / weight_sum
            } else {
                0.0
            };
            let exact = exact.clamp(0.0, 1.0);
            Scored {
                exact,
                score: (exact * 10.0).round() as u8,
                terms,
            }
        })
        .collect()
}

fn packing_after(node: &NodeInfo, fit: &Fit) -> f64 {
    if node.devices.is_empty() {
        return 0.0;
    }
    f64::from(fit.busy_before + fit.newly_busy) / node.devices.len() as f64
}
