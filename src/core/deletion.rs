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
//! The cost is fixed at bind; later placements and deletions give newer replicas their own
//! numbers, which keeps the order close to the zones' current layers.

use super::demand::PodDemand;
use super::inventory::{Inventory, Placement};
use super::node::{product_matches, Vendor};

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
    let Some(node) = inventory.node(&placement.node) else {
        return false;
    };
    let held = placement
        .shares
        .iter()
        .filter_map(|s| node.devices.iter().find(|d| d.index == s.index))
        .map(|d| d.total_mib)
        .max()
        .unwrap_or(0);
    let sharing = demand.is_sharing();
    inventory.nodes().any(|other| {
        if sharing && !other.sharing {
            return false;
        }
        if let Some(resource) = demand.resource {
            if other.resource != Some(resource) {
                return false;
            }
        }
        let vendor = other.vendor.unwrap_or(Vendor::Nvidia);
        let need = demand.devices.max(1) as usize;
        let hosts = other
            .devices
            .iter()
            .filter(|d| {
                d.total_mib < held
                    && d.usable_mib(demand.headroom_percent) >= demand.vram_mib
                    && (demand.products.is_empty()
                        || demand
                            .products
                            .iter()
                            .any(|p| product_matches(p, d, vendor)))
            })
            .count();
        hosts >= need && (sharing || other.allocatable_devices as usize >= need)
    })
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
}
