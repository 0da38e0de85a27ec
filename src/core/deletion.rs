//! Which replica a scale-down should delete first: the pod deletion cost vramfit writes.
//!
//! A scheduler decides where replicas go, but the ReplicaSet controller decides which ones a
//! scale-down deletes: pending first, then the lowest `controller.kubernetes.io/pod-deletion-cost`,
//! then pods sharing a node with more replicas, then the newest. Without a cost it knows nothing
//! of zones or device sizes, so deletions skew a model's zones and leave the replicas that
//! overflowed onto big devices in place while big models wait.
//!
//! vramfit stacks each zone's replicas of a model: those on devices bigger than the model needs
//! ([`oversized`]) on top, the others below, each at a *height* 1 … n in its zone. A replica's
//! *level* is its height, plus `maxZoneSkew − 1` when it is oversized, and its cost is
//! [`layer_cost`] = −(2 × level + 1 if oversized): the lowest cost is the highest level, an
//! oversized replica first among equals. Deleting replicas in that order — any number of them —
//!
//! * takes a non-oversized replica only from a fullest zone, so the zones stay as even as they
//!   were (the skew never grows past max(`maxZoneSkew`, the skew before));
//! * takes an oversized replica as soon as its zone would stay within `maxZoneSkew` of the
//!   fullest, freeing big devices for the models that need them as early as the skew allows.
//!
//! A bind writes the new replica's cost (on the Binding) as the top of its zone
//! ([`deletion_cost`]). Heights go stale as replicas come and go, so `serve` re-ranks a model
//! whose replicas changed ([`refreshed_costs`], the refresher in `extender::deletion`). The
//! ranking keeps every replica at the height its current cost says where that height is still
//! valid and free, so a scale-down that took the tops, or a scale-up that added on top, costs
//! no rewrite at all; only the replicas whose heights moved are written.

use std::collections::BTreeMap;

use super::demand::PodDemand;
use super::inventory::{Inventory, Placement, Stage};
use super::node::{products_allow, NodeInfo, Vendor};

/// The annotation the ReplicaSet controller reads (beta, on by default since Kubernetes 1.22).
pub const ANNOTATION_DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";

/// The cost of an oversized replica on a node without a zone: below every zoned replica's, so it
/// goes first (a replica without a zone and not oversized costs 0 and goes last).
pub const OVERSIZED_COST: i64 = 1_000_000;

/// The largest zone skew limit the costs tell apart; a profile without `maxZoneSkew` counts as
/// this (its oversized replicas then go before any other).
pub const SKEW_LIMIT_CAP: u32 = 100_000;

/// The cost of a zoned replica at `height` in its zone's stack under the profile's
/// `max_skew` (see the module docs).
pub fn layer_cost(height: u32, oversized: bool, max_skew: u32) -> i64 {
    let lift = if oversized {
        i64::from(max_skew.clamp(1, SKEW_LIMIT_CAP)) - 1
    } else {
        0
    };
    -(2 * (i64::from(height) + lift) + i64::from(oversized))
}

/// The height a zoned replica's `cost` stands for, if it is one [`layer_cost`] gives.
fn height_of(cost: i64, oversized: bool, max_skew: u32) -> Option<u32> {
    let lift = if oversized {
        i64::from(max_skew.clamp(1, SKEW_LIMIT_CAP)) - 1
    } else {
        0
    };
    // Any i64 may come from an annotation: no arithmetic here may overflow.
    let doubled = cost.checked_neg()?.checked_sub(i64::from(oversized))?;
    if doubled <= 0 || doubled % 2 != 0 {
        return None;
    }
    u32::try_from(doubled / 2 - lift).ok().filter(|h| *h >= 1)
}

/// The deletion cost of the pod `placement` describes, with the placement already in
/// `inventory` (a reservation or a bound pod), under the profile's `max_skew` (`None`: no
/// limit): the top of its zone's stack. `None` for a pod that holds no device.
pub fn deletion_cost(
    inventory: &Inventory,
    demand: &PodDemand,
    placement: &Placement,
    max_skew: Option<u32>,
) -> Option<i64> {
    let max_skew = max_skew.unwrap_or(SKEW_LIMIT_CAP);
    if placement.shares.is_empty() {
        return None;
    }
    let oversized = oversized(inventory, demand, placement);
    let in_zone = match (&placement.model, &placement.zone) {
        (Some(model), Some(zone)) => inventory.replicas(model).map_or(0, |r| r.in_zone(zone)),
        _ => return Some(if oversized { -OVERSIZED_COST } else { 0 }),
    };
    Some(layer_cost(in_zone.max(1), oversized, max_skew))
}

/// Whether the placement holds a device bigger than the smallest device of the cluster that
/// could host the pod when empty (same accelerator resource, a sharing node for a sharing pod,
/// an allowed product, its VRAM need under its headroom).
pub fn oversized(inventory: &Inventory, demand: &PodDemand, placement: &Placement) -> bool {
    has_smaller_host(inventory, demand, held_mib(inventory, placement))
}

/// The largest device (total VRAM, MiB) the placement holds; 0 when its node is unknown.
fn held_mib(inventory: &Inventory, placement: &Placement) -> u64 {
    let Some(node) = inventory.node(&placement.node) else {
        return 0;
    };
    placement
        .shares
        .iter()
        .filter_map(|s| node.devices.iter().find(|d| d.index == s.index))
        .map(|d| d.total_mib)
        .max()
        .unwrap_or(0)
}

/// Whether some node could host the pod, empty, on devices smaller than `held` MiB.
fn has_smaller_host(inventory: &Inventory, demand: &PodDemand, held: u64) -> bool {
    inventory
        .nodes()
        .any(|other| could_host(other, demand, held))
}

/// The deletion cost every bound replica of `model` should carry now, by ledger id, for the
/// refresher to write where the pod's annotation differs: [`deletion_costs`] over the
/// placements of the model that are bound or whose binding succeeded (a reservation still
/// binding gets its cost from the Binding) that `current` knows: `current(id)` is `None` to
/// leave a pod out (`serve` ranks only pods its watch has shown bound, so that two replicas of
/// the extender rank alike), else the cost its annotation holds, if any. `max_skew` is the
/// profile's limit (`None`: no limit). `demand` stands for
/// the model's pods (one model, one demand), judging which devices are oversized.
pub fn refreshed_costs(
    inventory: &Inventory,
    model: &str,
    demand: &PodDemand,
    max_skew: Option<u32>,
    current: impl Fn(&str) -> Option<Option<i64>>,
) -> Vec<(String, i64)> {
    let max_skew = max_skew.unwrap_or(SKEW_LIMIT_CAP);
    let mut oversized_by_size: Vec<(u64, bool)> = Vec::new();
    let mut ids = Vec::new();
    let mut replicas = Vec::new();
    for (id, placement) in inventory.placements() {
        if placement.model.as_deref() != Some(model)
            || placement.shares.is_empty()
            || matches!(inventory.stage(id), Some(Stage::Assumed { .. }) | None)
        {
            continue;
        }
        let Some(current) = current(id) else {
            continue;
        };
        let held = held_mib(inventory, placement);
        let oversized = match oversized_by_size.iter().find(|(size, _)| *size == held) {
            Some(&(_, known)) => known,
            None => {
                let judged = has_smaller_host(inventory, demand, held);
                oversized_by_size.push((held, judged));
                judged
            }
        };
        replicas.push(Replica {
            pod: placement.pod.clone(),
            zone: placement.zone.clone(),
            oversized,
            current,
        });
        ids.push(id.clone());
    }
    let costs = deletion_costs(&replicas, max_skew);
    ids.into_iter().zip(costs).collect()
}
/// Whether `node`, empty, could host the pod on devices smaller than `below` MiB each.
fn could_host(node: &NodeInfo, demand: &PodDemand, below: u64) -> bool {
    let sharing = demand.is_sharing();
    if sharing && !node.sharing {
        return false;
    }
    if let Some(resource) = demand.resource {
        if node.resource != Some(resource) {
            return false;
        }
    }
    let vendor = node.vendor.unwrap_or(Vendor::Nvidia);
    let need = demand.devices.max(1) as usize;
    let hosts = node
        .devices
        .iter()
        .filter(|d| {
            d.total_mib < below
                && d.usable_mib(demand.headroom_percent) >= demand.vram_mib
                && products_allow(&demand.products, d, vendor)
        })
        .count();
    hosts >= need && (sharing || node.allocatable_devices as usize >= need)
}

/// One bound replica of a model, as [`deletion_costs`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    /// The pod's id (`namespace/name`), which breaks the last ties.
    pub pod: String,
    /// The zone of its node, if the node has one.
    pub zone: Option<String>,
    /// Whether it holds a bigger device than the model needs ([`oversized`]).
    pub oversized: bool,
    /// The cost its annotation holds now, if any: where still valid, its height is kept.
    pub current: Option<i64>,
}

/// The deletion cost each of a model's bound replicas should carry (same order as
/// `replicas`) under the profile's `max_skew`: per zone, the non-oversized replicas take the
/// heights 1 … k and the oversized ones k + 1 … n, each keeping the height its current cost
/// says where that is in its range and not taken by a replica listed earlier; the others fill
/// the free heights, those without a cost (the newest) highest, then the lowest current cost
/// highest, then by pod id. Costs are [`layer_cost`]s; replicas without a zone cost
/// −[`OVERSIZED_COST`] if oversized, else 0.
pub fn deletion_costs(replicas: &[Replica], max_skew: u32) -> Vec<i64> {
    let mut costs = vec![0i64; replicas.len()];
    let mut zones: BTreeMap<&str, (Vec<usize>, Vec<usize>)> = BTreeMap::new();
    for (i, replica) in replicas.iter().enumerate() {
        match &replica.zone {
            None => {
                costs[i] = if replica.oversized {
                    -OVERSIZED_COST
                } else {
                    0
                }
            }
            Some(zone) => {
                let (plain, big) = zones.entry(zone.as_str()).or_default();
                if replica.oversized {
                    big.push(i);
                } else {
                    plain.push(i);
                }
            }
        }
    }
    for (plain, big) in zones.values() {
        let below = plain.len() as u32;
        stack(replicas, plain, 1, max_skew, &mut costs);
        stack(replicas, big, below + 1, max_skew, &mut costs);
    }
    costs
}

/// Gives the replicas `members` (all oversized or all not) the heights `lowest ..` in one
/// zone's stack, keeping valid current heights (see [`deletion_costs`]).
fn stack(replicas: &[Replica], members: &[usize], lowest: u32, max_skew: u32, costs: &mut [i64]) {
    let highest = lowest + members.len() as u32;
    let mut taken = vec![false; members.len()];
    let mut unplaced = Vec::new();
    let mut ordered = members.to_vec();
    ordered.sort_by(|&a, &b| replicas[a].pod.cmp(&replicas[b].pod));
    for i in ordered {
        let replica = &replicas[i];
        let kept = replica
            .current
            .and_then(|cost| height_of(cost, replica.oversized, max_skew))
            .filter(|h| (lowest..highest).contains(h))
            .filter(|h| !taken[(h - lowest) as usize]);
        match kept {
            Some(height) => {
                taken[(height - lowest) as usize] = true;
                costs[i] = layer_cost(height, replica.oversized, max_skew);
            }
            None => unplaced.push(i),
        }
    }
    // Lowest first: replicas with a cost before those without, a higher cost (going later)
    // lower, then by pod id.
    unplaced.sort_by(|&a, &b| {
        let (ra, rb) = (&replicas[a], &replicas[b]);
        (ra.current.is_none(), std::cmp::Reverse(ra.current), &ra.pod).cmp(&(
            rb.current.is_none(),
            std::cmp::Reverse(rb.current),
            &rb.pod,
        ))
    });
    let free = (0..members.len()).filter(|&slot| !taken[slot]);
    for (i, slot) in unplaced.into_iter().zip(free) {
        costs[i] = layer_cost(lowest + slot as u32, replicas[i].oversized, max_skew);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;
    use std::time::SystemTime;

    use super::*;
    use crate::core::facts::{ContainerResources, NodeFacts, PodFacts};
    use crate::core::{build_node, place, pod_demand, Catalog, Config};

    /// A GPU node with GFD labels in `zone` (also for `extender::deletion`'s tests).
    pub(crate) fn node(name: &str, zone: &str, product: &str, mib: u32, count: u32) -> NodeFacts {
        NodeFacts {
            name: name.into(),
            labels: BTreeMap::from([
                ("topology.kubernetes.io/zone".into(), zone.into()),
                ("nvidia.com/gpu.product".into(), product.into()),
                ("nvidia.com/gpu.memory".into(), mib.to_string()),
                ("nvidia.com/gpu.count".into(), count.to_string()),
            ]),
            allocatable: BTreeMap::from([("nvidia.com/gpu".into(), count.to_string())]),
            ..NodeFacts::default()
        }
    }

    /// Adds `nodes`, built with the default config, to `inventory`.
    pub(crate) fn add_nodes(inventory: &mut Inventory, nodes: impl IntoIterator<Item = NodeFacts>) {
        for facts in nodes {
            inventory.upsert_node(build_node(
                &facts,
                &Config::default(),
                SystemTime::UNIX_EPOCH,
            ));
        }
    }

    /// A one-device replica of `sdxl` under `vramfit-spread`, UID `name`.
    pub(crate) fn pod(name: &str, vram: &str, products: Option<&str>) -> PodDemand {
        let mut annotations = BTreeMap::from([("vramfit.io/vram".into(), vram.into())]);
        if let Some(p) = products {
            annotations.insert("vramfit.io/products".into(), p.into());
        }
        let facts = PodFacts {
            namespace: "ml".into(),
            name: name.into(),
            uid: name.into(),
            labels: BTreeMap::from([("vramfit.io/model".into(), "sdxl".into())]),
            annotations,
            scheduler_name: Some("vramfit-spread".into()),
            containers: vec![ContainerResources {
                limits: BTreeMap::from([("nvidia.com/gpu".into(), "1".into())]),
                ..ContainerResources::default()
            }],
            ..PodFacts::default()
        };
        pod_demand(&facts, &Config::default(), &Catalog::default()).unwrap()
    }

    #[test]
    fn later_replicas_of_a_zone_and_small_models_on_big_devices_go_first() {
        let config = Config::default();
        let mut inventory = Inventory::new();
        add_nodes(
            &mut inventory,
            [
                node("t4-a", "a", "Tesla-T4", 15360, 1),
                node("a100-b", "b", "NVIDIA-A100-SXM4-80GB", 81920, 2),
            ],
        );
        let mut costs = Vec::new();
        for name in ["sdxl-0", "sdxl-1", "sdxl-2"] {
            let demand = pod(name, "12Gi", None);
            let decision = place(&mut inventory, &Ok(demand.clone()), &config);
            let placement = inventory.placement(name).unwrap().clone();
            assert_eq!(
                decision.node.as_deref(),
                Some(placement.node.as_str()),
                "{:?}",
                decision.reasons
            );
            costs.push((
                placement.node.clone(),
                deletion_cost(&inventory, &demand, &placement, Some(1)).unwrap(),
            ));
        }
        // The first replica takes the T4 (zone a, height 1: −2); the others the A100s of zone b,
        // where a T4 exists: oversized, heights 1 and 2 of their zone (−3, −5).
        assert_eq!(costs[0], ("t4-a".to_string(), -2));
        assert_eq!(costs[1], ("a100-b".to_string(), -3));
        assert_eq!(costs[2], ("a100-b".to_string(), -5));
        // A model only the A100 can hold, or one its allow-list keeps off T4s, is not oversized.
        for demand in [pod("big", "40Gi", None), pod("picky", "12Gi", Some("A100"))] {
            let placement = Placement {
                pod: demand.key.clone(),
                node: "a100-b".into(),
                zone: Some("b".into()),
                model: None,
                shares: vec![crate::core::DeviceShare {
                    index: 0,
                    vram_mib: demand.vram_mib,
                }],
                exclusive: true,
            };
            assert!(
                !oversized(&inventory, &demand, &placement),
                "{}",
                demand.key
            );
            assert_eq!(
                deletion_cost(&inventory, &demand, &placement, Some(1)),
                Some(0)
            );
        }
        // A pod holding no device gets no cost.
        let none = Placement {
            shares: Vec::new(),
            ..inventory.placement("sdxl-0").unwrap().clone()
        };
        assert_eq!(
            deletion_cost(&inventory, &pod("x", "1Gi", None), &none, Some(1)),
            None
        );
    }

    fn replica(pod: &str, zone: Option<&str>, oversized: bool) -> Replica {
        Replica {
            pod: pod.into(),
            zone: zone.map(String::from),
            oversized,
            current: None,
        }
    }

    /// The replicas' indices in the order a scale-down takes them (lowest cost first, ties by
    /// index).
    fn deletions(costs: &[i64]) -> Vec<usize> {
        let mut order: Vec<usize> = (0..costs.len()).collect();
        order.sort_by_key(|&i| costs[i]);
        order
    }

    #[test]
    fn oversized_replicas_go_as_early_as_the_zones_allow() {
        // Zones a, b, c with 3 replicas each; both oversized replicas are in zone a.
        let replicas = vec![
            replica("ml/a0", Some("a"), true),
            replica("ml/a1", Some("a"), true),
            replica("ml/a2", Some("a"), false),
            replica("ml/b0", Some("b"), false),
            replica("ml/b1", Some("b"), false),
            replica("ml/b2", Some("b"), false),
            replica("ml/c0", Some("c"), false),
            replica("ml/c1", Some("c"), false),
            replica("ml/c2", Some("c"), false),
        ];
        let costs = deletion_costs(&replicas, 1);
        assert_eq!(costs, [-5, -7, -2, -2, -4, -6, -2, -4, -6]);
        let names: Vec<&str> = deletions(&costs)
            .into_iter()
            .map(|i| replicas[i].pod.as_str())
            .collect();
        // One oversized replica first (3,3,3 → 2,3,3); the second would make the skew 2, so
        // the fullest zones give one each first, then it goes.
        assert_eq!(
            names,
            ["ml/a1", "ml/b2", "ml/c2", "ml/a0", "ml/b1", "ml/c1", "ml/a2", "ml/b0", "ml/c0"]
        );
        // With a limit of 5 both go first; without a limit too.
        for limit in [5, u32::MAX] {
            let costs = deletion_costs(&replicas, limit);
            assert_eq!(deletions(&costs)[..2], [1, 0], "limit {limit}");
        }
        // Replicas without a zone: oversized first of all, the others last.
        let loose = [replica("ml/x", None, true), replica("ml/y", None, false)];
        assert_eq!(deletion_costs(&loose, 1), [-OVERSIZED_COST, 0]);
        assert_eq!(deletion_costs(&[], 1), Vec::<i64>::new());
    }

    #[test]
    fn heights_that_are_still_valid_are_kept_and_only_moved_replicas_rewritten() {
        let with = |pod: &str, zone: &str, oversized: bool, current: Option<i64>| Replica {
            current,
            ..replica(pod, Some(zone), oversized)
        };
        // Zone a held four plain replicas at heights 1-4 and the one at height 2 was deleted:
        // the top one moves down to 2; the others keep theirs.
        let replicas = [
            with("ml/p", "a", false, Some(layer_cost(1, false, 1))),
            with("ml/q", "a", false, Some(layer_cost(3, false, 1))),
            with("ml/r", "a", false, Some(layer_cost(4, false, 1))),
        ];
        assert_eq!(deletion_costs(&replicas, 1), [-2, -6, -4]);
        // A new replica without a cost goes on top; a cost out of range or of the wrong kind
        // (written as oversized for a plain replica) is replaced.
        let replicas = [
            with("ml/p", "a", false, Some(-2)),
            with("ml/new", "a", false, None),
            with("ml/odd", "a", false, Some(-3)),
            with("ml/far", "a", false, Some(-40)),
        ];
        assert_eq!(deletion_costs(&replicas, 1), [-2, -8, -4, -6]);
        // Two claiming the same height: the first by pod id keeps it.
        let replicas = [
            with("ml/b", "a", false, Some(-2)),
            with("ml/a", "a", false, Some(-2)),
        ];
        assert_eq!(deletion_costs(&replicas, 1), [-4, -2]);
        // Height and level round-trip for both kinds and any limit.
        for (height, oversized, limit) in [
            (1, false, 1),
            (7, true, 1),
            (3, true, 5),
            (2, true, u32::MAX),
        ] {
            let cost = layer_cost(height, oversized, limit);
            assert_eq!(height_of(cost, oversized, limit), Some(height));
        }
        assert_eq!(height_of(0, false, 1), None);
        assert_eq!(height_of(5, false, 1), None);
        for extreme in [
            i64::MIN,
            i64::MIN + 1,
            i64::MAX,
            -(i64::from(u32::MAX) * 2 + 10),
        ] {
            assert_eq!(height_of(extreme, true, 1), None, "{extreme}");
            assert_eq!(height_of(extreme, false, u32::MAX), None, "{extreme}");
        }
        let hostile = [
            with("ml/p", "a", false, Some(i64::MIN)),
            with("ml/q", "a", true, Some(i64::MAX)),
        ];
        assert_eq!(deletion_costs(&hostile, 1), [-2, -5]);
    }

    #[test]
    fn refreshed_costs_rank_bound_and_confirmed_replicas_and_keep_valid_heights() {
        let mut inventory = Inventory::new();
        add_nodes(
            &mut inventory,
            [
                node("t4-a", "a", "Tesla-T4", 15360, 1),
                node("a100-a", "a", "NVIDIA-A100-SXM4-80GB", 81920, 4),
            ],
        );
        let now = std::time::Instant::now();
        let mut demands = Vec::new();
        for (name, on) in [
            ("s0", "t4-a"),
            ("s1", "a100-a"),
            ("s2", "a100-a"),
            ("s3", "a100-a"),
        ] {
            let demand = pod(name, "12Gi", None);
            inventory.reserve(&Ok(demand.clone()), on, now).unwrap();
            demands.push(demand);
        }
        // s0 and s1 are bound, s2's binding succeeded, s3's is still in flight (not ranked).
        inventory.confirm("s0", now);
        inventory.confirm("s1", now);
        inventory.confirm("s2", now);
        let current = |_: &str| Some(None);
        let ranked = refreshed_costs(&inventory, "sdxl", &demands[0], Some(1), current);
        let mut ranked: Vec<(&str, i64)> = ranked.iter().map(|(id, c)| (id.as_str(), *c)).collect();
        ranked.sort();
        // Zone a: s0 on the T4 at height 1 (−2), s1 and s2 oversized above it (−5, −7).
        assert_eq!(ranked, [("s0", -2), ("s1", -5), ("s2", -7)]);
        // Their current costs kept where still valid: s1 claims height 3, s2 moves down.
        let current = |id: &str| Some((id == "s1").then_some(-7));
        let ranked = refreshed_costs(&inventory, "sdxl", &demands[0], Some(1), current);
        let mut ranked: Vec<(&str, i64)> = ranked.iter().map(|(id, c)| (id.as_str(), *c)).collect();
        ranked.sort();
        assert_eq!(ranked, [("s0", -2), ("s1", -7), ("s2", -5)]);
        assert!(
            refreshed_costs(&inventory, "other", &demands[0], Some(1), |_| Some(None)).is_empty()
        );
        // A pod the caller leaves out is not ranked: s0 alone is at height 1 under s1, s2.
        let only = |id: &str| (id != "s0").then_some(None);
        let ranked = refreshed_costs(&inventory, "sdxl", &demands[0], Some(1), only);
        let mut ranked: Vec<(&str, i64)> = ranked.iter().map(|(id, c)| (id.as_str(), *c)).collect();
        ranked.sort();
        assert_eq!(ranked, [("s1", -3), ("s2", -5)]);
    }

    proptest::proptest! {
        /// Model-based: a scale-down of any size, taking the lowest costs with ties broken
        /// either way, keeps the zone skew within max(limit, the skew before); a plain replica
        /// goes only while no oversized one could go leaving its zone within the limit of the
        /// fullest; costs are stable: recomputing from them, after taking the lowest one, or
        /// after adding a replica changes no other replica's cost but the oversized ones above
        /// a new plain replica in its zone.
        #[test]
        fn every_scale_down_keeps_the_skew_bound_frees_big_devices_first_and_costs_stay_put(
            raw in proptest::collection::vec(
                (0u8..4, proptest::bool::ANY, proptest::option::of(-12i64..1)),
                0..40,
            ),
            hostile in proptest::option::of(proptest::num::i64::ANY),
            limit in 1u32..4,
            last_tie in proptest::bool::ANY,
            added in (0u8..3, proptest::bool::ANY),
        ) {
            let zones = ["a", "b", "c"];
            let replicas: Vec<Replica> = raw
                .iter()
                .enumerate()
                .map(|(i, &(zone, oversized, current))| Replica {
                    // Costs left by earlier rankings, other writers or none; the first may be
                    // anything at all.
                    current: if i == 0 { hostile } else { current },
                    ..replica(&format!("ml/p{i:02}"), zones.get(zone as usize).copied(), oversized)
                })
                .collect();
            let costs = deletion_costs(&replicas, limit);
            // Stable under recomputation.
            let settled: Vec<Replica> = replicas
                .iter()
                .zip(&costs)
                .map(|(r, &c)| Replica { current: Some(c), ..r.clone() })
                .collect();
            proptest::prop_assert_eq!(&deletion_costs(&settled, limit), &costs);
            // Adding a replica moves only the oversized replicas of its zone (when it is plain).
            let (zone, oversized) = (zones[added.0 as usize], added.1);
            let mut grown = settled.clone();
            grown.push(replica("ml/new", Some(zone), oversized));
            let regrown = deletion_costs(&grown, limit);
            for (i, r) in settled.iter().enumerate() {
                let may_move = !oversized && r.oversized && r.zone.as_deref() == Some(zone);
                proptest::prop_assert!(may_move || regrown[i] == costs[i], "{} moved", r.pod);
            }
            // Scale-downs.
            let count = |left: &[bool]| -> Vec<u32> {
                zones
                    .iter()
                    .map(|z| {
                        replicas
                            .iter()
                            .zip(left)
                            .filter(|(r, &l)| l && r.zone.as_deref() == Some(*z))
                            .count() as u32
                    })
                    .collect()
            };
            let skew = |c: &[u32]| c.iter().max().unwrap() - c.iter().min().unwrap();
            let mut left = vec![true; replicas.len()];
            let mut current = settled.clone();
            let bound = skew(&count(&left)).max(limit);
            while left.iter().any(|&l| l) {
                let now = deletion_costs(
                    &current.iter().zip(&left).filter(|(_, &l)| l).map(|(r, _)| r.clone()).collect::<Vec<_>>(),
                    limit,
                );
                let alive: Vec<usize> = (0..replicas.len()).filter(|&i| left[i]).collect();
                // Taking the lowest cost changed no one's cost.
                for (k, &i) in alive.iter().enumerate() {
                    proptest::prop_assert_eq!(Some(now[k]), current[i].current);
                }
                let lowest = alive.iter().map(|&i| current[i].current.unwrap()).min().unwrap();
                let tied = alive.iter().copied().filter(|&i| current[i].current == Some(lowest));
                let i = if last_tie { tied.max() } else { tied.min() }.unwrap();
                let counts = count(&left);
                let fullest = *counts.iter().max().unwrap();
                if !replicas[i].oversized && replicas[i].zone.is_some() {
                    for &j in &alive {
                        let Some(z) = zones.iter().position(|z| replicas[j].zone.as_deref() == Some(*z)) else {
                            continue;
                        };
                        proptest::prop_assert!(
                            !replicas[j].oversized || counts[z] + limit <= fullest,
                            "{} went before the oversized {}", replicas[i].pod, replicas[j].pod
                        );
                    }
                }
                left[i] = false;
                current[i].current = None;
                proptest::prop_assert!(skew(&count(&left)) <= bound);
            }
        }
    }
}
