//! Which replica a scale-down should delete first: the pod deletion cost vramfit writes at bind.
//!
//! A scheduler decides where replicas go, but the ReplicaSet controller decides which ones a
//! scale-down deletes: pending first, then the lowest `controller.kubernetes.io/pod-deletion-cost`,
//! then pods sharing a node with more replicas, then the newest. Without a cost it knows nothing
//! of zones or device sizes, so deletions skew a model's zones and leave the replicas that
//! overflowed onto big devices in place while big models wait. vramfit therefore writes a cost
//! at bind (in the Binding's annotations, which the API server copies onto the pod):
//!
//! * `−n`, where n is the number of the model's replicas in the pod's zone once it is placed: the
//!   n-th replica of a zone goes before the (n−1)-th of any zone, so scale-downs take the top
//!   layer off the fullest zones and leave the zones as even as placement made them;
//! * minus another [`OVERSIZED_COST`] when the pod sits on a device bigger than the smallest one
//!   in the cluster that could host it (a small model on an A100 while T4s exist), so those
//!   replicas go first and free the big devices for the models that need them.
//!
//! The cost written at bind goes stale as replicas come and go, and taking oversized replicas
//! first whatever their zone can leave the zones uneven. [`deletion_order`] therefore ranks all
//! of a model's bound replicas afresh — an oversized replica as early as its zone can spare it
//! without the zone skew exceeding the profile's limit, otherwise the top replica of the fullest
//! zone — and `serve` rewrites the costs that changed (the deletion-cost refresher in
//! `extender::deletion`), so that every scale-down, whatever its size, keeps the zones within the
//! limit (or no further from it than they were) while freeing big devices as early as that allows.

use std::collections::BTreeSet;

use super::demand::PodDemand;
use super::inventory::{Inventory, Placement, Stage};
use super::node::{product_matches, NodeInfo, Vendor};

/// The annotation the ReplicaSet controller reads (beta, on by default since Kubernetes 1.22).
pub const ANNOTATION_DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";

/// Extra cost taken off a replica on a device bigger than the smallest that could host it.
pub const OVERSIZED_COST: i64 = 1_000_000;

/// The deletion cost of the pod `placement` describes, with the placement already in
/// `inventory` (a reservation or a bound pod). `None` for a pod that holds no device.
pub fn deletion_cost(
    inventory: &Inventory,
    demand: &PodDemand,
    placement: &Placement,
) -> Option<i64> {
    if placement.shares.is_empty() {
        return None;
    }
    let in_zone = match (&placement.model, &placement.zone) {
        (Some(model), Some(zone)) => inventory
            .replicas(model)
            .map(|r| r.in_zone(zone))
            .unwrap_or(0),
        _ => 0,
    };
    let oversized = oversized(inventory, demand, placement);
    Some(-i64::from(in_zone) - if oversized { OVERSIZED_COST } else { 0 })
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
/// refresher to write where the pod's annotation differs: [`deletion_order`] over the
/// placements of the model that are bound or whose binding succeeded (a reservation still
/// binding gets its cost from the Binding), the zones that could host it
/// ([`hosting_zones`]) and the profile's `max_skew`. `demand` stands for the model's pods (one
/// model, one demand), judging zones and oversized devices.
pub fn refreshed_costs(
    inventory: &Inventory,
    model: &str,
    demand: &PodDemand,
    max_skew: u32,
) -> Vec<(String, i64)> {
    let counts = inventory.replicas(model);
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
        let held = held_mib(inventory, placement);
        let oversized = match oversized_by_size.iter().find(|(size, _)| *size == held) {
            Some(&(_, known)) => known,
            None => {
                let judged = has_smaller_host(inventory, demand, held);
                oversized_by_size.push((held, judged));
                judged
            }
        };
        ids.push(id.clone());
        replicas.push(Replica {
            pod: placement.pod.clone(),
            zone: placement.zone.clone(),
            oversized,
            colocated: counts.map_or(0, |c| c.on_node(&placement.node)),
        });
    }
    let costs = deletion_order(&replicas, &hosting_zones(inventory, demand), max_skew);
    ids.into_iter().zip(costs).collect()
}

/// The zones with a node that could host the pod when empty: those a model's zone skew is
/// counted over (a zone without such a node can never take a replica).
pub fn hosting_zones(inventory: &Inventory, demand: &PodDemand) -> BTreeSet<String> {
    inventory
        .nodes()
        .filter(|node| could_host(node, demand, u64::MAX))
        .filter_map(|node| node.zone_name())
        .collect()
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
                && (demand.products.is_empty()
                    || demand
                        .products
                        .iter()
                        .any(|p| product_matches(p, d, vendor)))
        })
        .count();
    hosts >= need && (sharing || node.allocatable_devices as usize >= need)
}

/// One bound replica of a model, as [`deletion_order`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    /// The pod's id (`namespace/name`), which breaks the last ties.
    pub pod: String,
    /// The zone of its node, if the node has one.
    pub zone: Option<String>,
    /// Whether it holds a bigger device than the model needs ([`oversized`]).
    pub oversized: bool,
    /// Replicas of the model on its node (the ReplicaSet controller's own tie-break: a node
    /// with more of them gives one up first).
    pub colocated: u32,
}

/// The deletion cost of each replica (same order as `replicas`), lowest first to go: a ranking
/// such that deleting any number of the lowest-cost replicas keeps the model's zone skew (max −
/// min replicas over `zones` and the replicas' own zones) within `max(max_skew, its skew now)`.
/// Step by step it takes an oversized replica whenever one can go within that bound (from the
/// fullest such zone), otherwise a replica of the fullest zone — oversized, then the most
/// colocated, then the last by pod id first. Replicas without a zone do not count towards the
/// skew: oversized ones go first, the others once no zoned replica is left. Costs are `−n ..
/// −1` for n replicas, below the cost of a replica without one (0).
pub fn deletion_order(replicas: &[Replica], zones: &BTreeSet<String>, max_skew: u32) -> Vec<i64> {
    // Per zone (None last), replicas in the order they should go within it, front = first.
    let mut zone_names: Vec<Option<&str>> = zones.iter().map(|z| Some(z.as_str())).collect();
    for replica in replicas {
        if !zone_names.contains(&replica.zone.as_deref()) {
            zone_names.push(replica.zone.as_deref());
        }
    }
    zone_names.sort_unstable_by_key(|z| (z.is_none(), *z));
    let mut queues: Vec<Vec<usize>> = vec![Vec::new(); zone_names.len()];
    for (i, replica) in replicas.iter().enumerate() {
        let z = zone_names
            .iter()
            .position(|name| *name == replica.zone.as_deref())
            .unwrap_or(0);
        queues[z].push(i);
    }
    for queue in &mut queues {
        // Sorted so that the replica to go first is at the back (popped).
        queue.sort_unstable_by(|&a, &b| {
            let (ra, rb) = (&replicas[a], &replicas[b]);
            (ra.oversized, ra.colocated, &ra.pod).cmp(&(rb.oversized, rb.colocated, &rb.pod))
        });
    }
    let zoned = zone_names.iter().filter(|z| z.is_some()).count();
    let counted = |queues: &[Vec<usize>]| -> Vec<u32> {
        queues[..zoned].iter().map(|q| q.len() as u32).collect()
    };
    let skew_of = |counts: &[u32]| -> u32 {
        let max = counts.iter().copied().max().unwrap_or(0);
        let min = counts.iter().copied().min().unwrap_or(0);
        max - min
    };
    let mut costs = vec![0i64; replicas.len()];
    let total = replicas.len() as i64;
    for step in 0..replicas.len() {
        let counts = counted(&queues);
        let bound = skew_of(&counts).max(max_skew);
        let oversized_at = |z: usize| queues[z].last().is_some_and(|&i| replicas[i].oversized);
        // An oversized replica without a zone, else one whose zone can spare it.
        let zoneless_oversized = (zoned < queues.len() && oversized_at(zoned)).then_some(zoned);
        let spare = (0..zoned)
            .filter(|&z| oversized_at(z))
            .filter(|&z| {
                let mut after = counts.clone();
                after[z] -= 1;
                skew_of(&after) <= bound
            })
            .max_by_key(|&z| (counts[z], std::cmp::Reverse(z)));
        let fullest = (0..zoned)
            .filter(|&z| !queues[z].is_empty())
            .max_by_key(|&z| (counts[z], std::cmp::Reverse(z)));
        let Some(z) = zoneless_oversized
            .or(spare)
            .or(fullest)
            .or((zoned < queues.len()).then_some(zoned))
        else {
            break;
        };
        let Some(i) = queues[z].pop() else { break };
        costs[i] = step as i64 - total;
    }
    costs
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::SystemTime;

    use super::*;
    use crate::core::facts::{ContainerResources, NodeFacts, PodFacts};
    use crate::core::{build_node, place, pod_demand, Catalog, Config};

    fn node(name: &str, zone: &str, product: &str, mib: u32, count: u32) -> NodeFacts {
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

    fn pod(name: &str, vram: &str, products: Option<&str>) -> PodDemand {
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
        for facts in [
            node("t4-a", "a", "Tesla-T4", 15360, 1),
            node("a100-b", "b", "NVIDIA-A100-SXM4-80GB", 81920, 2),
        ] {
            inventory.upsert_node(build_node(&facts, &config, SystemTime::UNIX_EPOCH));
        }
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
                deletion_cost(&inventory, &demand, &placement).unwrap(),
            ));
        }
        // The first replica takes the T4 (zone a, the first there); the others the A100s of
        // zone b, where a T4 exists: oversized, first and second of their zone.
        assert_eq!(costs[0], ("t4-a".to_string(), -1));
        assert_eq!(costs[1], ("a100-b".to_string(), -1 - OVERSIZED_COST));
        assert_eq!(costs[2], ("a100-b".to_string(), -2 - OVERSIZED_COST));
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
            assert_eq!(deletion_cost(&inventory, &demand, &placement), Some(0));
        }
        // A pod holding no device gets no cost.
        let none = Placement {
            shares: Vec::new(),
            ..inventory.placement("sdxl-0").unwrap().clone()
        };
        assert_eq!(
            deletion_cost(&inventory, &pod("x", "1Gi", None), &none),
            None
        );
    }

    fn replica(pod: &str, zone: Option<&str>, oversized: bool) -> Replica {
        Replica {
            pod: pod.into(),
            zone: zone.map(String::from),
            oversized,
            colocated: 1,
        }
    }

    fn zone_set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|z| z.to_string()).collect()
    }

    /// The replicas' indices in the order a scale-down takes them (lowest cost first).
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
        let costs = deletion_order(&replicas, &zone_set(&["a", "b", "c"]), 1);
        let names: Vec<&str> = deletions(&costs)
            .into_iter()
            .map(|i| replicas[i].pod.as_str())
            .collect();
        // One oversized replica first (3,3,3 → 2,3,3); the second would make the skew 2, so the
        // fullest zones give one each (b, then c: the last pod id first), then it goes.
        assert_eq!(
            names,
            ["ml/a1", "ml/b2", "ml/c2", "ml/a0", "ml/b1", "ml/c1", "ml/a2", "ml/b0", "ml/c0"]
        );
        let mut sorted = costs.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (-9..=-1).collect::<Vec<i64>>());
        // Without a skew limit every oversized replica goes first.
        let free = deletion_order(&replicas, &zone_set(&["a", "b", "c"]), u32::MAX);
        let first: Vec<&str> = deletions(&free)[..2]
            .iter()
            .map(|&i| replicas[i].pod.as_str())
            .collect();
        assert_eq!(first, ["ml/a1", "ml/a0"]);
    }

    #[test]
    fn an_empty_hosting_zone_counts_and_replicas_without_a_zone_go_last_unless_oversized() {
        // Zone c can host the model but holds none of it: the skew is already 2 (2,2,0), and no
        // deletion may raise it; b's oversized replica may go (2,1,0 keeps 2).
        let replicas = vec![
            replica("ml/a0", Some("a"), false),
            replica("ml/a1", Some("a"), false),
            replica("ml/b0", Some("b"), true),
            replica("ml/b1", Some("b"), false),
            replica("ml/x0", None, false),
            replica("ml/x1", None, true),
        ];
        let costs = deletion_order(&replicas, &zone_set(&["a", "b", "c"]), 1);
        let names: Vec<&str> = deletions(&costs)
            .into_iter()
            .map(|i| replicas[i].pod.as_str())
            .collect();
        assert_eq!(
            names,
            ["ml/x1", "ml/b0", "ml/a1", "ml/a0", "ml/b1", "ml/x0"]
        );
        assert_eq!(deletion_order(&[], &zone_set(&["a"]), 1), Vec::<i64>::new());
    }

    proptest::proptest! {
        /// Model-based: a scale-down of any size, taking the lowest costs, never leaves the zone
        /// skew above max(limit, the skew before); each step takes an oversized replica whenever
        /// one could go within that bound; costs are −n..−1, one each.
        #[test]
        fn every_scale_down_keeps_the_skew_bound_and_frees_big_devices_first(
            raw in proptest::collection::vec((0u8..4, proptest::bool::ANY, 0u32..3), 0..40),
            limit in 1u32..4,
        ) {
            let zones = zone_set(&["a", "b", "c"]);
            let replicas: Vec<Replica> = raw
                .iter()
                .enumerate()
                .map(|(i, &(zone, oversized, colocated))| Replica {
                    pod: format!("ml/p{i:02}"),
                    zone: ["a", "b", "c"].get(zone as usize).map(|z| z.to_string()),
                    oversized,
                    colocated,
                })
                .collect();
            let costs = deletion_order(&replicas, &zones, limit);
            let mut sorted = costs.clone();
            sorted.sort_unstable();
            proptest::prop_assert_eq!(sorted, (-(replicas.len() as i64)..0).collect::<Vec<_>>());
            let count = |left: &[bool]| -> Vec<u32> {
                ["a", "b", "c"]
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
            let bound = skew(&count(&left)).max(limit);
            for i in deletions(&costs) {
                let counts = count(&left);
                let step_bound = skew(&counts).max(limit);
                let could_go = |j: usize| {
                    let mut after = left.clone();
                    after[j] = false;
                    replicas[j].zone.is_none() || skew(&count(&after)) <= step_bound
                };
                if !replicas[i].oversized {
                    let waiting = (0..replicas.len())
                        .any(|j| left[j] && replicas[j].oversized && could_go(j));
                    proptest::prop_assert!(!waiting, "{} went before an oversized replica", replicas[i].pod);
                }
                left[i] = false;
                proptest::prop_assert!(skew(&count(&left)) <= bound);
            }
        }
    }
}
