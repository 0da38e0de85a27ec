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
//! * `hostBalance` = 1 / (1 + e^(Δs/ref)), where Δs is how much the node's *stranded* VRAM
//!   grows when the pod lands: free VRAM its free cpu and memory could not feed at the cpu and
//!   memory per MiB the expected workload asks (see [`super::frag::Assessment::stranded`]); ref
//!   as for `frag`; rounded down to a multiple of `hostBalanceStep`. 0.5 when nothing changes or the node's free cpu and memory are
//!   not known; above 0.5 when the pod leaves the node's host resources and VRAM in better
//!   proportion (a cpu-light pod on a cpu-poor node), below when it uses up cpu or memory that
//!   the node's free VRAM needs.
//! * `lookahead` = 1 / (1 + e^(4·ΔL/ref)), where ΔL is how much the chosen device's two-step
//!   fragment grows when a sharing pod lands: its fragment by VRAM against the expected
//!   workload now, plus the share-weighted fragment after each expected sharing size that fits
//!   lands on it too (see [`super::frag::SizeIndex`]); ref as for `frag`; not rounded. It
//!   weighs gaps against each other looking one pod further than `frag` (a 530 gap is kept for
//!   a 470 rather than cut to 210 by a 320). Only among devices of the smallest size any
//!   candidate offers the pod: a larger device gets 0, so it never pulls a small model onto a
//!   big GPU; 0.5 where the pod would take a whole device. Left out of the weighted sum (like
//!   `frag` without a workload model) when no candidate shares a device or it is the same on
//!   every candidate: it cannot tell them apart there and would only flatten the other terms
//!   on the wire.
//!
//! score = round(10 × Σ wᵢ·termᵢ / Σ wᵢ).
//!
//! A profile's `maxZoneSkew` then acts like kube-scheduler's `maxSkew` for zones, among the
//! candidates: a node whose zone would hold more of the model's replicas than the emptiest
//! candidate zone plus `maxZoneSkew` once the pod lands *breaks* the skew. When some candidate
//! keeps it, every breaking candidate scores below every keeping one, on the exact value and on
//! the 0–10 wire ([`limit_zone_skew`]); when none keeps it (or none breaks it) scores are as above.

use serde::Serialize;
use smallvec::SmallVec;

use super::config::Weights;
use super::filter::Fit;
use super::frag::Change;
use super::inventory::ModelReplicas;
use super::node::NodeInfo;

/// The terms of one node's score, each in `0..=1`.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Terms {
    /// The `fit` term: how little VRAM the chosen devices leave idle.
    pub fit: f64,
    /// The `packing` term: busy devices after placement over the node's devices.
    pub packing: f64,
    /// The `zoneSpread` term: fewer of the model's replicas in the zone scores higher.
    pub zone_spread: f64,
    /// The `nodeSpread` term: 1 / (1 + the model's replicas on the node).
    pub node_spread: f64,
    /// The `frag` term: above 0.5 when the pod reduces fragmentation.
    pub frag: f64,
    /// The `hostBalance` term: above 0.5 when the pod leaves less VRAM stranded.
    pub host_balance: f64,
    /// The `lookahead` term: above 0.5 when the pod leaves its device in a state the expected
    /// workload fills better, looking one pod further than `frag`.
    pub lookahead: f64,
}

/// A node's score: the exact weighted value in `0..=1` and the 0–10 integer sent on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Scored {
    /// The weighted score in `0..=1`.
    pub exact: f64,
    /// The 0–10 score sent to kube-scheduler.
    pub score: u8,
    /// The terms it was computed from.
    pub terms: Terms,
}

/// Distinct zones whose replica counts one scoring pass remembers.
const ZONE_CACHE: usize = 16;

/// `value` rounded down to a multiple of `step` (0: exact), so changes too small to matter tie
/// and the other terms decide.
fn round_down(value: f64, step: f64) -> f64 {
    if step > 0.0 {
        let steps = value / step;
        // Truncation is the floor of the non-negative values the terms give, without the libm
        // call `f64::floor` makes on baseline x86-64 (once per candidate and term).
        let whole = if (0.0..1e15).contains(&steps) {
            (steps as u64) as f64
        } else {
            steps.floor()
        };
        whole * step
    } else {
        value
    }
}

/// An exact score (`0..=1`) on kube-scheduler's 0–10 scale, rounded half away from zero as
/// `f64::round` rounds, without its libm call.
fn wire_score(exact: f64) -> u8 {
    let tenths = exact * 10.0;
    if !(0.0..=25.0).contains(&tenths) {
        return tenths.round() as u8;
    }
    let whole = tenths as u8;
    // `tenths - whole` is exact here (Sterbenz), so the half-way test is too.
    if tenths - f64::from(whole) >= 0.5 {
        whole + 1
    } else {
        whole
    }
}

/// How finely the `frag` and `hostBalance` terms are resolved: the config's `fragStep` and
/// `hostBalanceStep`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Steps {
    /// `fragStep`: the `frag` term's resolution (0: exact).
    pub frag: f64,
    /// `hostBalanceStep`: the `hostBalance` term's resolution (0: exact).
    pub host_balance: f64,
}

/// Scores feasible candidates against each other. `replicas` are the pod's model's replicas
/// and `node_replicas(node)` their count on a candidate (the inventory reads it by slot),
/// `zone_of(node)` its zone (the inventory reads a dense per-slot copy);
/// `changes[i]` is candidate i's fragmentation and stranded-VRAM change (empty: no
/// fragmentation or host-balance term).
pub fn score_candidates<'n>(
    candidates: &[(&'n NodeInfo, &Fit)],
    changes: &[Change],
    replicas: Option<&ModelReplicas>,
    node_replicas: impl Fn(&NodeInfo) -> u32,
    zone_of: impl Fn(&'n NodeInfo) -> Option<&'n str>,
    weights: &Weights,
    steps: Steps,
) -> Vec<Scored> {
    let reference = candidates
        .iter()
        .map(|(_, fit)| fit.chosen_total_mib)
        .max()
        .unwrap_or(0);
    let smallest_chosen_mib = candidates
        .iter()
        .map(|(_, fit)| fit.chosen_total_mib)
        .filter(|&total| total > 0)
        .min()
        .unwrap_or(0);
    // Fragmentation changes are measured against the largest device among the candidates.
    let frag_reference = candidates
        .iter()
        .map(|(_, fit)| fit.node_largest_mib)
        .max()
        .unwrap_or(0);
    // Each zone's replicas, looked up once per distinct zone: the inventory shares one
    // allocation per zone name, so a few recent zones are remembered by pointer.
    let mut recent_zones: SmallVec<[(*const u8, u32); ZONE_CACHE]> = SmallVec::new();
    let zone_counts: Vec<Option<u32>> = candidates
        .iter()
        .map(|(node, _)| match (replicas, zone_of(node)) {
            (Some(r), Some(zone)) => {
                let ptr = zone.as_ptr();
                if let Some(&(_, count)) = recent_zones.iter().find(|(p, _)| *p == ptr) {
                    return Some(count);
                }
                let count = r.in_zone(zone);
                if recent_zones.len() < ZONE_CACHE {
                    recent_zones.push((ptr, count));
                }
                Some(count)
            }
            (None, Some(_)) => Some(0),
            _ => None,
        })
        .collect();
    let busiest_zone = zone_counts.iter().flatten().copied().max().unwrap_or(0);
    let on_node = |node: &NodeInfo| -> u32 {
        match replicas {
            Some(r) if r.has_node_counts() => node_replicas(node),
            _ => 0,
        }
    };
    let shared = Context {
        reference,
        smallest_chosen_mib,
        frag_reference,
        steps,
        ..Context::default()
    };
    let left_out = weights.lookahead > 0.0 && lookahead_tells_nothing(candidates, changes, &shared);
    let mut scored: Vec<Scored> = candidates
        .iter()
        .zip(&zone_counts)
        .enumerate()
        .map(|(i, ((node, fit), zone_count))| {
            let context = Context {
                zone_replicas: zone_count.unwrap_or(0),
                busiest_zone,
                node_replicas: on_node(node),
                lookahead_left_out: left_out,
                ..shared
            };
            score_one(fit, changes.get(i).copied(), &context, weights)
        })
        .collect();
    if let (Some(max_skew), Some(_)) = (weights.max_zone_skew, replicas) {
        let keeps = keeps_skew_by_count(&zone_counts, max_skew);
        limit_zone_skew(&mut scored, &keeps);
    }
    scored
}

/// [`keeps_zone_skew`] on counts already looked up: `counts[i]` is the replicas in candidate
/// i's zone (`None`: the candidate has no zone).
fn keeps_skew_by_count(counts: &[Option<u32>], max_skew: u32) -> Vec<bool> {
    let Some(min) = counts.iter().flatten().copied().min() else {
        return vec![true; counts.len()];
    };
    counts
        .iter()
        .map(|count| count.is_none_or(|c| u64::from(c) + 1 - u64::from(min) <= u64::from(max_skew)))
        .collect()
}

/// For each candidate (by its zone; `count` gives a zone's replicas of the model): whether the model's replicas stay within `max_skew` of the
/// emptiest candidate zone once one more lands in that zone, i.e. `count(zone) + 1 − min ≤
/// max_skew` with `min` the fewest replicas in any candidate zone. Zones with no candidate node
/// (full, or excluded by kube-scheduler's filters) are not counted: no placement can fill them.
/// A candidate without a zone always keeps the skew.
pub fn keeps_zone_skew(
    zones: &[Option<&str>],
    count: impl Fn(&str) -> u32,
    max_skew: u32,
) -> Vec<bool> {
    let counts: Vec<Option<u32>> = zones.iter().map(|z| z.map(&count)).collect();
    keeps_skew_by_count(&counts, max_skew)
}

/// Puts every candidate that breaks the zone skew (`keeps[i] == false`) below every candidate
/// that keeps it, when there are both: a breaker's exact score is scaled into
/// `[0, min(k, (w − 0.5) / 10))`, where k and w are the lowest exact and wire scores among the
/// keepers, so its wire score is below w too; order among breakers is kept. Should a keeper's
/// wire score be 0, keepers below 0.05 are lifted to 0.05 (wire 1) so the breakers' 0 is below.
pub fn limit_zone_skew(scored: &mut [Scored], keeps: &[bool]) {
    let kept = |i: &usize| keeps.get(*i).copied().unwrap_or(true);
    let (keepers, breakers): (Vec<usize>, Vec<usize>) = (0..scored.len()).partition(kept);
    if keepers.is_empty() || breakers.is_empty() {
        return;
    }
    for &i in &keepers {
        if scored[i].score == 0 {
            scored[i].exact = scored[i].exact.max(0.05);
            scored[i].score = 1;
        }
    }
    let lowest_exact = keepers
        .iter()
        .map(|&i| scored[i].exact)
        .fold(f64::INFINITY, f64::min);
    let lowest_wire = keepers.iter().map(|&i| scored[i].score).min().unwrap_or(1);
    let cap = lowest_exact.min((f64::from(lowest_wire) - 0.5) / 10.0) * 0.999;
    for &i in &breakers {
        let exact = scored[i].exact * cap;
        scored[i].exact = exact;
        scored[i].score = wire_score(exact);
    }
}

/// What a node's score depends on beyond the node and its fit: the candidates' reference size
/// and the model's replica counts.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Context {
    /// Largest chosen-device total among the candidates (MiB).
    pub reference: u64,
    /// Smallest chosen-device total among the candidates (MiB; 0: not known). A sharing pod's
    /// `lookahead` term counts only on devices of that size: it weighs gaps against each other
    /// within the smallest class the pod fits, and a larger class gets its lowest value.
    pub smallest_chosen_mib: u64,
    /// Reference for the fragmentation change: the largest device among the candidates (MiB).
    pub frag_reference: u64,
    /// The `frag` and `hostBalance` terms are rounded down to multiples of these (0: exact).
    pub steps: Steps,
    /// Replicas of the pod's model in the node's zone, and in the busiest candidate zone.
    pub zone_replicas: u32,
    /// Replicas of the pod's model in the busiest candidate zone.
    pub busiest_zone: u32,
    /// Replicas of the pod's model on the node.
    pub node_replicas: u32,
    /// Leave the `lookahead` term out of the sum: no candidate shares a device, or the term is
    /// the same on every candidate, so it cannot tell them apart and would only squeeze the
    /// other terms on the wire (see [`score_candidates`]).
    pub lookahead_left_out: bool,
}

/// The `lookahead` term reads its change at this many times the `frag` term's reference: a
/// two-step fragment moves less than the node's whole fragmentation, so the term is steeper.
pub const LOOKAHEAD_SCALE: f64 = 4.0;

/// The `frag` and `hostBalance` form: 1 / (1 + e^(Δ/ref)) rounded down to a multiple of
/// `step`; 0.5 without a reference.
fn logistic(delta: f64, reference: u64, step: f64) -> f64 {
    if reference == 0 {
        return 0.5;
    }
    if delta == 0.0 {
        // 1 / (1 + e^0), exactly: most candidates' stranded VRAM does not change.
        return round_down(0.5, step);
    }
    round_down(1.0 / (1.0 + (delta / reference as f64).exp()), step)
}

/// Whether the fit puts a pod on one device beside others (the pods `lookahead` weighs).
fn shares_a_device(fit: &Fit) -> bool {
    !fit.exclusive && fit.devices.len() == 1
}

/// Whether a sharing pod's candidate gets the `lookahead` term's lowest value: its device is
/// larger than the smallest any candidate offers.
fn lookahead_gated(fit: &Fit, context: &Context) -> bool {
    !fit.exclusive
        && context.smallest_chosen_mib > 0
        && fit.chosen_total_mib > context.smallest_chosen_mib
}

/// What one candidate's `lookahead` term is computed from: its device's two-step change, or
/// `None` on a device larger than the smallest offered (the term's lowest value).
fn lookahead_input(fit: &Fit, change: Change, context: &Context) -> Option<f64> {
    (!lookahead_gated(fit, context)).then_some(change.lookahead)
}

/// The `lookahead` term of one candidate (0 on a device larger than the smallest offered).
fn lookahead_term(fit: &Fit, change: Change, context: &Context) -> f64 {
    lookahead_input(fit, change, context).map_or(0.0, |delta| {
        logistic(delta * LOOKAHEAD_SCALE, context.frag_reference, 0.0)
    })
}

/// Whether the `lookahead` term cannot tell the candidates apart: none shares a device, or it
/// is the same on every one. Compares what the term is computed from, so it costs no `exp`
/// per candidate.
fn lookahead_tells_nothing(
    candidates: &[(&NodeInfo, &Fit)],
    changes: &[Change],
    context: &Context,
) -> bool {
    if !candidates.iter().any(|(_, fit)| shares_a_device(fit)) {
        return true;
    }
    let mut inputs = candidates
        .iter()
        .zip(changes)
        .map(|((_, fit), change)| lookahead_input(fit, *change, context));
    match inputs.next() {
        Some(first) => inputs.all(|input| input == first),
        None => true,
    }
}

/// Scores one candidate given its context (what [`score_candidates`] does for each); `change`
/// is what the pod does to the node's fragmentation and stranded VRAM (`None`: not measured,
/// both terms left out).
pub fn score_one(
    fit: &Fit,
    change: Option<Change>,
    context: &Context,
    weights: &Weights,
) -> Scored {
    let terms = Terms {
        fit: if context.reference == 0 {
            1.0
        } else {
            1.0 - fit.idle_after_mib as f64 / context.reference as f64
        },
        packing: packing_after(fit),
        zone_spread: if context.busiest_zone == 0 {
            1.0
        } else {
            1.0 - f64::from(context.zone_replicas) / f64::from(context.busiest_zone)
        },
        node_spread: 1.0 / (1.0 + f64::from(context.node_replicas)),
        frag: change.map_or(0.5, |c| {
            logistic(c.frag, context.frag_reference, context.steps.frag)
        }),
        host_balance: change.map_or(0.5, |c| {
            logistic(
                c.stranded,
                context.frag_reference,
                context.steps.host_balance,
            )
        }),
        lookahead: change.map_or(0.5, |c| lookahead_term(fit, c, context)),
    };
    // Without a fragmentation change (no workload model yet) the terms are left out, and
    // `lookahead` where it cannot tell the candidates apart, so the other terms keep their full
    // range on the wire.
    let (frag_weight, balance_weight) = if change.is_some() {
        (weights.frag, weights.host_balance)
    } else {
        (0.0, 0.0)
    };
    let lookahead_weight = if change.is_some() && !context.lookahead_left_out {
        weights.lookahead
    } else {
        0.0
    };
    let weight_sum = weights.fit
        + weights.packing
        + weights.zone_spread
        + weights.node_spread
        + frag_weight
        + balance_weight
        + lookahead_weight;
    let exact = if weight_sum > 0.0 {
        (weights.fit * terms.fit
            + weights.packing * terms.packing
            + weights.zone_spread * terms.zone_spread
            + weights.node_spread * terms.node_spread
            + frag_weight * terms.frag
            + balance_weight * terms.host_balance
            + lookahead_weight * terms.lookahead)
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
        score: wire_score(exact),
        terms,
    }
}

fn packing_after(fit: &Fit) -> f64 {
    if fit.node_devices == 0 {
        return 0.0;
    }
    f64::from(fit.busy_before + fit.newly_busy) / f64::from(fit.node_devices)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::core::config::{Config, PROFILE_BINPACK, PROFILE_SPREAD};
    use crate::core::node::{CapacitySource, Device, DeviceNames, Vendor, RESOURCE_NVIDIA_GPU};

    fn node(name: &str, zone: &str, mib: u64) -> NodeInfo {
        let names = Arc::new(DeviceNames {
            uuid: None,
            product: "GPU".into(),
            class: "GPU".into(),
        });
        NodeInfo {
            name: name.into(),
            zone: Some(zone.into()),
            resource: Some(RESOURCE_NVIDIA_GPU),
            vendor: Some(Vendor::Nvidia),
            allocatable_devices: 1,
            devices: std::iter::once(Device {
                total_mib: mib,
                measured_used_mib: 0,
                reserved_mib: 0,
                names,
                index: 0,
                exclusive_holders: 0,
                sharers: 0,
                healthy: true,
            })
            .collect(),
            sharing: false,
            source: CapacitySource::Report,
            problem: None,
            notes: Vec::new(),
            host: None,
        }
    }

    fn fit(total: u64, need: u64) -> Fit {
        Fit {
            devices: std::iter::once(0).collect(),
            vram_mib: need,
            exclusive: true,
            idle_after_mib: total - need,
            chosen_total_mib: total,
            busy_before: 0,
            newly_busy: 1,
            node_largest_mib: total,
            node_devices: 1,
        }
    }

    fn replicas(zones: &[(&str, u32)]) -> ModelReplicas {
        ModelReplicas::from_counts(zones.iter().copied(), [])
    }

    /// Scores candidates outside an inventory (replicas by node name, zones from the nodes),
    /// `fragStep` 0.04 and the given `hostBalanceStep`.
    fn score(
        candidates: &[(&NodeInfo, &Fit)],
        changes: &[Change],
        replicas: Option<&ModelReplicas>,
        weights: &Weights,
        balance_step: f64,
    ) -> Vec<Scored> {
        score_candidates(
            candidates,
            changes,
            replicas,
            |node| replicas.map_or(0, |r| r.on_node(&node.name)),
            zone_of,
            weights,
            Steps {
                frag: 0.04,
                host_balance: balance_step,
            },
        )
    }

    /// A candidate's zone read from the node itself (nodes outside an inventory).
    fn zone_of(node: &NodeInfo) -> Option<&str> {
        node.zone.as_deref()
    }

    #[test]
    fn keeps_zone_skew_counts_against_the_emptiest_candidate_zone() {
        let r = replicas(&[("a", 4), ("b", 3), ("c", 0)]);
        let counts = |z: &str| r.in_zone(z);
        let zones = [Some("a"), Some("b"), Some("c"), None];
        assert_eq!(
            keeps_zone_skew(&zones, counts, 1),
            [false, false, true, true]
        );
        assert_eq!(
            keeps_zone_skew(&zones, counts, 4),
            [false, true, true, true]
        );
        // Zone c has no candidate (full): only a and b count, so b keeps a skew of 1.
        assert_eq!(
            keeps_zone_skew(&[Some("a"), Some("b")], counts, 1),
            [false, true]
        );
        assert_eq!(keeps_zone_skew(&[None, None], counts, 1), [true, true]);
        assert!(keeps_zone_skew(&[], counts, 1).is_empty());
    }

    #[test]
    fn wire_scores_and_steps_round_as_the_float_functions_do() {
        let mut values: Vec<f64> = (0..=100_000).map(|i| f64::from(i) / 100_000.0).collect();
        values.extend([
            0.049_999_999_999_999_996,
            0.05,
            0.15,
            0.25,
            0.35,
            0.45,
            0.95,
            1.0,
        ]);
        values.extend([0.5f64.next_down(), 0.5f64.next_up(), 0.0f64.next_up()]);
        for v in values {
            assert_eq!(wire_score(v), (v * 10.0).round() as u8, "{v}");
            for step in [0.04, 0.12, 0.5, 0.03] {
                assert_eq!(round_down(v, step), (v / step).floor() * step, "{v} {step}");
            }
        }
        for odd in [f64::NAN, -0.3, 2.0, f64::INFINITY] {
            assert_eq!(wire_score(odd), (odd * 10.0).round() as u8, "{odd}");
            let (a, b) = (round_down(odd, 0.04), (odd / 0.04).floor() * 0.04);
            assert!(a == b || (a.is_nan() && b.is_nan()), "{odd}");
        }
        assert_eq!(logistic(0.0, 80, 0.12), round_down(0.5, 0.12));
        assert_eq!(logistic(0.0, 80, 0.0), 1.0 / (1.0 + 0f64.exp()));
    }

    #[test]
    fn breakers_score_below_every_keeper_on_the_wire_and_exactly() {
        let scored = |exact: f64| Scored {
            exact,
            score: (exact * 10.0).round() as u8,
            terms: Terms::default(),
        };
        let mut all = vec![scored(0.31), scored(0.95), scored(0.62), scored(0.99)];
        limit_zone_skew(&mut all, &[true, false, true, false]);
        assert_eq!((all[0].score, all[2].score), (3, 6), "keepers unchanged");
        assert!(all[1].exact < all[3].exact, "order among breakers kept");
        assert!(all[3].exact < 0.31 && all[3].score < 3);
        // A keeper at wire 0 is lifted so that the breakers' 0 stays below it.
        let mut low = vec![scored(0.01), scored(1.0)];
        limit_zone_skew(&mut low, &[true, false]);
        assert_eq!((low[0].score, low[1].score), (1, 0));
        assert!(low[1].exact < low[0].exact);
        // Only keepers, or only breakers: nothing changes.
        let mut same = vec![scored(0.2), scored(0.7)];
        limit_zone_skew(&mut same, &[false, false]);
        assert_eq!(same, vec![scored(0.2), scored(0.7)]);
    }

    proptest::proptest! {
        #[test]
        fn every_breaker_ranks_below_every_keeper(
            cases in proptest::collection::vec((0.0f64..=1.0, proptest::bool::ANY), 1..12)
        ) {
            let mut scored: Vec<Scored> = cases
                .iter()
                .map(|(exact, _)| Scored {
                    exact: *exact,
                    score: (exact * 10.0).round() as u8,
                    terms: Terms::default(),
                })
                .collect();
            let keeps: Vec<bool> = cases.iter().map(|(_, k)| *k).collect();
            let before = scored.clone();
            limit_zone_skew(&mut scored, &keeps);
            let both = keeps.contains(&true) && keeps.contains(&false);
            for (i, a) in scored.iter().enumerate() {
                proptest::prop_assert!(a.exact >= 0.0 && a.exact <= 1.0 && a.score <= 10);
                if !both {
                    proptest::prop_assert_eq!(a, &before[i]);
                    continue;
                }
                for (j, b) in scored.iter().enumerate() {
                    if !keeps[i] && keeps[j] {
                        proptest::prop_assert!(a.exact < b.exact && a.score < b.score);
                    }
                    if !keeps[i] && !keeps[j] && before[i].exact < before[j].exact {
                        proptest::prop_assert!(a.exact <= b.exact, "breakers keep their order");
                    }
                }
            }
        }
    }

    #[test]
    fn spread_profile_keeps_replicas_within_one_of_the_emptiest_zone() {
        // Zone a already holds 2 replicas, b holds 1: the A100 in a (fresh node) would win on
        // zone-blind terms against nothing, but breaks the skew; b's T4 keeps it.
        let config = Config::default();
        let (_, weights) = config.profile_for(Some(PROFILE_SPREAD));
        let a = node("t4-a", "a", 15360);
        let b = node("a100-b", "b", 81920);
        let (fa, fb) = (fit(15360, 12288), fit(81920, 12288));
        let candidates = [(&a, &fa), (&b, &fb)];
        let r = replicas(&[("a", 2), ("b", 1)]);
        let scores = score(&candidates, &[], Some(&r), weights, 0.0);
        assert!(scores[1].exact > scores[0].exact);
        assert!(scores[1].score > scores[0].score);
        // Balanced zones: the T4 (best fit) wins, and nothing is capped.
        let even = replicas(&[("a", 1), ("b", 1)]);
        let scores = score(&candidates, &[], Some(&even), weights, 0.0);
        assert!(scores[0].exact > scores[1].exact);
        let plain = score(
            &candidates,
            &[],
            Some(&even),
            &Weights {
                max_zone_skew: None,
                ..weights.clone()
            },
            0.0,
        );
        assert_eq!(scores, plain);
    }

    #[test]
    fn binpack_profile_allows_a_skew_of_five() {
        let config = Config::default();
        let (_, weights) = config.profile_for(Some(PROFILE_BINPACK));
        let a = node("a100-a", "a", 81920);
        let b = node("a100-b", "b", 81920);
        let (fa, fb) = (fit(81920, 40960), fit(81920, 40960));
        let candidates = [(&a, &fa), (&b, &fb)];
        // Frag deltas favour zone a strongly.
        let deltas = [-40960.0, 40960.0].map(|frag| Change {
            frag,
            stranded: 0.0,
            lookahead: 0.0,
        });
        let within = replicas(&[("a", 4), ("b", 0)]);
        let scores = score(&candidates, &deltas, Some(&within), weights, 0.0);
        assert!(scores[0].exact > scores[1].exact, "a skew of 5 is allowed");
        let beyond = replicas(&[("a", 5), ("b", 0)]);
        let scores = score(&candidates, &deltas, Some(&beyond), weights, 0.0);
        assert!(scores[1].exact > scores[0].exact, "a skew of 6 is not");
        assert!(scores[1].score > scores[0].score);
    }

    #[test]
    fn zone_counts_are_the_same_whether_zone_names_are_shared_or_not() {
        let config = Config::default();
        let (_, weights) = config.profile_for(Some(PROFILE_SPREAD));
        // 20 zones (more than the per-pass cache), each with `zone index` replicas; every zone
        // has one node with the inventory's shared name and one with its own copy of it.
        let mut nodes = Vec::new();
        let mut counts = Vec::new();
        for z in 0..20u32 {
            let zone = format!("zone-{z}");
            let shared = node(&format!("shared-{z}"), &zone, 15360);
            let mut copy = node(&format!("copy-{z}"), &zone, 15360);
            copy.zone = Some(Arc::from(zone.as_str()));
            let mut twin = node(&format!("twin-{z}"), &zone, 15360);
            twin.zone = shared.zone.clone();
            nodes.extend([shared, copy, twin]);
            counts.push((zone, z));
        }
        let r = ModelReplicas::from_counts(counts.iter().map(|(z, n)| (z.as_str(), *n)), []);
        let f = fit(15360, 12288);
        let candidates: Vec<_> = nodes.iter().map(|n| (n, &f)).collect();
        let scores = score(&candidates, &[], Some(&r), weights, 0.0);
        for (i, scored) in scores.iter().enumerate() {
            let z = (i / 3) as f64;
            let expected = 1.0 - z / 19.0;
            assert!(
                (scored.terms.zone_spread - expected).abs() < 1e-9,
                "{}: {} vs {expected}",
                nodes[i].name,
                scored.terms.zone_spread
            );
        }
    }

    /// Weights of `frag` 1 and the two terms measured with it.
    fn frag_and(host_balance: f64, lookahead: f64) -> Weights {
        Weights {
            fit: 0.0,
            packing: 0.0,
            zone_spread: 0.0,
            node_spread: 0.0,
            frag: 1.0,
            host_balance,
            lookahead,
            max_zone_skew: None,
        }
    }

    #[test]
    fn lookahead_counts_only_on_the_smallest_device_offered() {
        let weights = frag_and(0.0, 1.0);
        let sharing = |total: u64| Fit {
            devices: SmallVec::from_slice(&[0]),
            vram_mib: 3072,
            chosen_total_mib: total,
            node_largest_mib: total,
            ..Fit::default()
        };
        let (t4, a100) = (sharing(15_360), sharing(81_920));
        let change = Change {
            frag: 0.0,
            stranded: 0.0,
            lookahead: -4096.0,
        };
        let context = Context {
            reference: 81_920,
            smallest_chosen_mib: 15_360,
            frag_reference: 81_920,
            ..Context::default()
        };
        let on_t4 = score_one(&t4, Some(change), &context, &weights).terms;
        let on_a100 = score_one(&a100, Some(change), &context, &weights).terms;
        assert!(on_t4.lookahead > 0.5, "{on_t4:?}");
        assert_eq!(on_a100.lookahead, 0.0);
        // Whole-device pods: no lookahead anywhere.
        let whole = Fit {
            exclusive: true,
            ..a100.clone()
        };
        let none = Change {
            lookahead: 0.0,
            ..change
        };
        assert_eq!(
            score_one(&whole, Some(none), &context, &weights)
                .terms
                .lookahead,
            0.5
        );
    }

    #[test]
    fn lookahead_weighs_only_where_a_candidate_shares_a_device() {
        let a = node("a", "z", 15_360);
        let b = node("b", "z", 15_360);
        let whole = fit(15_360, 15_360);
        let sharing = Fit {
            exclusive: false,
            vram_mib: 3072,
            ..whole.clone()
        };
        let changes = [-8192.0, 0.0].map(|frag| Change {
            frag,
            stranded: 0.0,
            lookahead: 0.0,
        });
        // Whole-device candidates only: the weight changes nothing, so the other terms keep
        // their full range on the 0–10 wire.
        let wholes = [(&a, &whole), (&b, &whole)];
        assert_eq!(
            score(&wholes, &changes, None, &frag_and(0.0, 10.0), 0.0),
            score(&wholes, &changes, None, &frag_and(0.0, 0.0), 0.0)
        );
        // One candidate shares its device (a node that shares beside one that does not): the
        // term counts on both, 0.5 on the whole-device one, so both stay on one scale.
        let mixed = [(&a, &whole), (&b, &sharing)];
        let mut apart = changes;
        apart[1].lookahead = -2000.0;
        let with = score(&mixed, &apart, None, &frag_and(0.0, 10.0), 0.0);
        let without = score(&mixed, &apart, None, &frag_and(0.0, 0.0), 0.0);
        assert_eq!(with[0].terms.lookahead, 0.5);
        assert!(with[1].terms.lookahead > 0.5, "{with:?}");
        assert!(
            (with[0].exact - (without[0].exact + 10.0 * 0.5) / 11.0).abs() < 1e-12,
            "{with:?} vs {without:?}"
        );
        // score_one alone (as `replay` calls it, with no other candidates to compare) counts
        // it as score_candidates does here.
        let context = Context {
            reference: 15_360,
            smallest_chosen_mib: 15_360,
            frag_reference: 15_360,
            steps: Steps {
                frag: 0.04,
                host_balance: 0.0,
            },
            ..Context::default()
        };
        let one = score_one(&sharing, Some(apart[1]), &context, &frag_and(0.0, 10.0));
        assert_eq!(one.exact, with[1].exact);
    }

    #[test]
    fn a_lookahead_alike_on_every_candidate_is_left_out_of_the_sum() {
        // Two sharing candidates; the stranded change tells them apart, the lookahead only in
        // the second case.
        let weights = frag_and(1.0, 40.0);
        let a = node("a", "z", 81_920);
        let b = node("b", "z", 81_920);
        let sharing = Fit {
            exclusive: false,
            ..fit(81_920, 40_960)
        };
        let candidates = [(&a, &sharing), (&b, &sharing)];
        let change = |stranded: f64, lookahead: f64| Change {
            frag: 0.0,
            stranded,
            lookahead,
        };
        let alike = score(
            &candidates,
            &[change(40_960.0, 100.0), change(0.0, 100.0)],
            None,
            &weights,
            0.0,
        );
        let without = score(
            &candidates,
            &[change(40_960.0, 100.0), change(0.0, 100.0)],
            None,
            &frag_and(1.0, 0.0),
            0.0,
        );
        assert_eq!(alike, without, "an alike lookahead changes nothing");
        assert!(alike[1].score > alike[0].score, "{alike:?}");
        // Once it differs it counts, and at weight 40 it decides.
        let apart = score(
            &candidates,
            &[change(40_960.0, -2_000.0), change(0.0, 100.0)],
            None,
            &weights,
            0.0,
        );
        assert!(apart[0].exact > apart[1].exact, "{apart:?}");
        assert!(apart[0].terms.lookahead > apart[1].terms.lookahead);
    }

    #[test]
    fn host_balance_prefers_the_node_left_in_proportion() {
        let weights = frag_and(1.0, 0.0);
        let a = node("a", "z", 1000);
        let b = node("b", "z", 1000);
        let f = fit(1000, 1000);
        let candidates = [(&a, &f), (&b, &f)];
        let changes = [
            Change {
                frag: 0.0,
                stranded: 500.0,
                lookahead: 0.0,
            },
            Change {
                frag: 0.0,
                stranded: 0.0,
                lookahead: 0.0,
            },
        ];
        let scores = score(&candidates, &changes, None, &weights, 0.0);
        assert_eq!(scores[1].terms.host_balance, 0.5);
        assert!(scores[0].terms.host_balance < 0.5);
        assert!(scores[1].exact > scores[0].exact);
        // Without measured changes the term is left out.
        let plain = score(&candidates, &[], None, &weights, 0.0);
        assert_eq!(plain[0].exact, plain[1].exact);
        // With a step, a change too small to leave the step ties; a large one does not.
        let small = [
            Change {
                frag: 0.0,
                stranded: 50.0,
                lookahead: 0.0,
            },
            changes[1],
        ];
        let stepped = score(&candidates, &small, None, &weights, 0.12);
        assert_eq!(stepped[0].terms.host_balance, stepped[1].terms.host_balance);
        assert_eq!(stepped[0].exact, stepped[1].exact);
        let stepped = score(&candidates, &changes, None, &weights, 0.12);
        assert!(stepped[1].terms.host_balance > stepped[0].terms.host_balance);
        // 0.5 is a multiple of neither step exactly: rounding goes down.
        assert!((stepped[1].terms.host_balance - 0.48).abs() < 1e-12);
    }

    #[test]
    fn host_balance_step_is_validated() {
        let mut config = Config {
            host_balance_step: 0.6,
            ..Config::default()
        };
        assert_eq!(
            config.validate(),
            Err(crate::core::config::ConfigError::HostBalanceStep(0.6))
        );
        assert_eq!(
            crate::core::config::ConfigError::HostBalanceStep(0.6).to_string(),
            "hostBalanceStep must be in 0..=0.5, got 0.6"
        );
        config.host_balance_step = 0.0;
        assert_eq!(config.validate(), Ok(()));
    }
}
