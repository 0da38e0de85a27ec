//! Property tests of the core: no over-commit, scores in range, determinism, a reason for every
//! rejected node, and "fits somewhere in an empty cluster ⇒ placed", checked against a reference.

mod common;

use std::time::SystemTime;

use proptest::prelude::*;
use vramfit::core::{build_node, pod_demand, Catalog, Config, Inventory, NodeFacts, PodFacts};

#[derive(Debug, Clone)]
struct NodeSpec {
    product: &'static str,
    memory_mib: u64,
    count: u32,
    zone: u8,
    sharing: bool,
}

#[derive(Debug, Clone)]
struct PodSpec {
    gpus: u32,
    vram_gib: Option<u32>,
    headroom: Option<u8>,
    model: u8,
    spread: bool,
}

fn node_spec() -> impl Strategy<Value = NodeSpec> {
    (
        prop_oneof![
            Just(("Tesla-T4", 15360u64)),
            Just(("NVIDIA-A100-SXM4-80GB", 81920)),
            Just(("NVIDIA-L4", 23034)),
            Just(("NVIDIA-A100-SXM4-40GB", 40960)),
        ],
        prop_oneof![Just(1u32), Just(2), Just(4), Just(8)],
        0u8..3,
        any::<bool>(),
    )
        .prop_map(|((product, memory_mib), count, zone, sharing)| NodeSpec {
            product,
            memory_mib,
            count,
            zone,
            sharing,
        })
}

fn pod_spec() -> impl Strategy<Value = PodSpec> {
    (
        prop_oneof![3 => Just(1u32), 1 => Just(0), 1 => Just(2), 1 => Just(4)],
        proptest::option::weighted(0.8, 1u32..90),
        proptest::option::weighted(0.2, 0u8..50),
        0u8..4,
        any::<bool>(),
    )
        .prop_map(|(gpus, vram_gib, headroom, model, spread)| PodSpec {
            gpus,
            vram_gib,
            headroom,
            model,
            spread,
        })
}

fn facts(i: usize, spec: &NodeSpec) -> NodeFacts {
    let mut node = common::mk_gpu_node(
        &format!("node-{i:03}"),
        &format!("zone-{}", spec.zone),
        spec.product,
        spec.memory_mib,
        spec.count,
    );
    if spec.sharing {
        node = common::sharing(node);
    }
    node
}

fn pod_facts(i: usize, spec: &PodSpec) -> PodFacts {
    let mut pod = common::mk_pod(&format!("pod-{i}")).model(&format!("model-{}", spec.model));
    if spec.gpus > 0 {
        pod = pod.gpus(spec.gpus);
    }
    if let Some(gib) = spec.vram_gib {
        pod = pod.vram(&format!("{gib}Gi"));
    }
    if let Some(h) = spec.headroom {
        pod = pod.annotation("vramfit.io/headroom", &h.to_string());
    }
    if spec.spread {
        pod = pod.scheduler("vramfit-spread");
    }
    pod.build()
}

fn inventory(nodes: &[NodeSpec], config: &Config) -> Inventory {
    let facts: Vec<NodeFacts> = nodes.iter().enumerate().map(|(i, s)| facts(i, s)).collect();
    common::mk_inventory(&facts, config)
}

/// No device is held twice, held devices are not shared, and reservations stay within capacity.
fn assert_not_overcommitted(inventory: &Inventory) -> Result<(), TestCaseError> {
    for node in inventory.nodes() {
        prop_assert!(
            node.held_devices() <= node.allocatable_devices,
            "{}: held > allocatable",
            node.name
        );
        for d in &node.devices {
            prop_assert!(
                d.exclusive_holders <= 1,
                "{} #{} held twice",
                node.name,
                d.index
            );
            prop_assert!(
                d.exclusive_holders == 0 || d.sharers == 0,
                "{} #{} held and shared",
                node.name,
                d.index
            );
            prop_assert!(
                d.reserved_mib <= d.total_mib,
                "{} #{} reserved {} > {}",
                node.name,
                d.index,
                d.reserved_mib,
                d.total_mib
            );
        }
    }
    Ok(())
}

/// A reference for "would this pod fit this empty node", written independently of the core.
fn fits_empty(node: &NodeSpec, pod: &PodSpec, default_headroom: u8) -> bool {
    let headroom = u64::from(pod.headroom.unwrap_or(default_headroom));
    let need = u64::from(pod.vram_gib.unwrap_or(0)) * 1024;
    let usable = node.memory_mib * (100 - headroom) / 100;
    let sharing_pod = pod.gpus == 0 && pod.vram_gib.is_some();
    if pod.gpus == 0 && pod.vram_gib.is_none() {
        return true;
    }
    if sharing_pod {
        return node.sharing && usable >= need;
    }
    node.count >= pod.gpus && usable >= need
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn sequential_placement_never_overcommits(
        nodes in proptest::collection::vec(node_spec(), 1..12),
        pods in proptest::collection::vec(pod_spec(), 1..40),
    ) {
        let config = Config::default();
        let mut inv = inventory(&nodes, &config);
        for (i, spec) in pods.iter().enumerate() {
            let demand = pod_demand(&pod_facts(i, spec), &config, &Catalog::default());
            let decision = vramfit::core::place(&mut inv, &demand, &config);
            if let Some(score) = decision.score {
                prop_assert!(score <= 10);
            }
            if decision.node.is_none() {
                prop_assert_eq!(decision.reasons.len(), inv.node_count(), "every node has a reason");
            }
            assert_not_overcommitted(&inv)?;
        }
    }

    #[test]
    fn placement_is_deterministic(
        nodes in proptest::collection::vec(node_spec(), 1..10),
        pods in proptest::collection::vec(pod_spec(), 1..25),
    ) {
        let config = Config::default();
        let run = || {
            let mut inv = inventory(&nodes, &config);
            pods.iter()
                .enumerate()
                .map(|(i, spec)| {
                    let demand = pod_demand(&pod_facts(i, spec), &config, &Catalog::default());
                    let d = vramfit::core::place(&mut inv, &demand, &config);
                    (d.node, d.shares, d.score)
                })
                .collect::<Vec<_>>()
        };
        prop_assert_eq!(run(), run());
    }

    #[test]
    fn filter_accounts_for_every_node_and_prioritize_stays_in_range(
        nodes in proptest::collection::vec(node_spec(), 1..12),
        pod in pod_spec(),
        extra_unknown in 0usize..3,
    ) {
        let config = Config::default();
        let inv = inventory(&nodes, &config);
        let demand = pod_demand(&pod_facts(0, &pod), &config, &Catalog::default());
        let mut names: Vec<String> = inv.nodes().map(|n| n.name.clone()).collect();
        names.extend((0..extra_unknown).map(|i| format!("ghost-{i}")));
        let outcome = vramfit::core::filter(names.iter().map(|n| (n.as_str(), inv.node(n))), &demand, &inv);
        let rejected: std::collections::BTreeSet<&str> = outcome.rejected.iter().map(|r| r.node).collect();
        prop_assert_eq!(outcome.feasible.len() + outcome.rejected.len(), names.len());
        prop_assert_eq!(outcome.failed().count() + outcome.unresolvable().count(), outcome.rejected.len());
        for name in &outcome.feasible {
            prop_assert!(!rejected.contains(name));
        }
        for (_, reason) in outcome.failed().chain(outcome.unresolvable()) {
            prop_assert!(reason.starts_with("vramfit: "));
        }
        for r in &outcome.rejected {
            let node = inv.node(r.node);
            let expected = vramfit::core::schedule::verdict(node, &demand).unwrap_err();
            prop_assert_eq!(&outcome.messages[r.message], &expected.to_string(), "shared message matches the node's own reason");
        }
        let scores = vramfit::core::prioritize(names.iter().map(|n| (n.as_str(), inv.node(n))), &demand, &inv, &config);
        prop_assert_eq!(scores.len(), names.len());
        for (name, score) in scores {
            prop_assert!(score <= 10, "{} scored {}", name, score);
        }
    }

    #[test]
    fn a_pod_that_fits_an_empty_cluster_is_placed(
        nodes in proptest::collection::vec(node_spec(), 1..12),
        pod in pod_spec(),
    ) {
        let config = Config::default();
        let mut inv = inventory(&nodes, &config);
        let expected = nodes.iter().any(|n| fits_empty(n, &pod, config.headroom_percent));
        let demand = pod_demand(&pod_facts(0, &pod), &config, &Catalog::default());
        let decision = vramfit::core::place(&mut inv, &demand, &config);
        prop_assert_eq!(decision.node.is_some(), expected, "reasons: {:?}", decision.reasons);
    }

    #[test]
    fn releasing_everything_restores_an_empty_inventory(
        nodes in proptest::collection::vec(node_spec(), 1..8),
        pods in proptest::collection::vec(pod_spec(), 1..30),
    ) {
        let config = Config::default();
        let mut inv = inventory(&nodes, &config);
        let sorted = |inv: &Inventory| {
            let mut nodes: Vec<_> = inv.nodes().cloned().collect();
            nodes.sort_by(|a, b| a.name.cmp(&b.name));
            nodes
        };
        let empty = sorted(&inv);
        let mut ids = Vec::new();
        for (i, spec) in pods.iter().enumerate() {
            let facts = pod_facts(i, spec);
            let demand = pod_demand(&facts, &config, &Catalog::default());
            let placed = vramfit::core::place(&mut inv, &demand, &config).node.is_some();
            // Pods that ask nothing of accelerators are placed but hold nothing.
            let holds = demand.as_ref().is_ok_and(|d| !d.is_accelerator_free());
            let placement = inv.placement(&facts.ledger_id()).cloned();
            prop_assert_eq!(placement.is_some(), placed && holds);
            if let Some(placement) = placement {
                ids.push((facts.ledger_id(), placement));
            }
        }
        for (id, placement) in ids {
            prop_assert_eq!(inv.remove(&id), Some(placement));
        }
        prop_assert_eq!(sorted(&inv), empty);
    }
}

#[test]
fn node_built_twice_from_the_same_facts_is_identical() {
    let config = Config::default();
    let facts = common::mk_a100("a", "z", 8);
    let now = SystemTime::now();
    assert_eq!(
        build_node(&facts, &config, now),
        build_node(&facts, &config, now)
    );
}

/// One step of [`replica_counts_read_by_slot_match_the_counts_by_name`].
#[derive(Debug, Clone)]
enum ReplicaStep {
    /// Pod `pod` (model `model`) is bound on node `node`.
    Commit {
        pod: u8,
        node: u8,
        model: u8,
    },
    Remove {
        pod: u8,
    },
    RemoveNode {
        node: u8,
    },
    UpsertNode {
        node: u8,
    },
}

fn replica_step() -> impl Strategy<Value = ReplicaStep> {
    prop_oneof![
        4 => (0..12u8, 0..6u8, 0..3u8).prop_map(|(pod, node, model)| ReplicaStep::Commit { pod, node, model }),
        2 => (0..12u8).prop_map(|pod| ReplicaStep::Remove { pod }),
        1 => (0..6u8).prop_map(|node| ReplicaStep::RemoveNode { node }),
        1 => (0..6u8).prop_map(|node| ReplicaStep::UpsertNode { node }),
    ]
}

proptest! {
    /// Scoring reads a candidate's replicas by slot; whatever order pods come and go and nodes
    /// are removed (slots move) or added back, that count equals the model's count by name.
    #[test]
    fn replica_counts_read_by_slot_match_the_counts_by_name(
        steps in proptest::collection::vec(replica_step(), 1..60)
    ) {
        let config = Config::default();
        let node_named = |n: u8| {
            let facts = common::mk_a100(&format!("node-{n}"), if n.is_multiple_of(2) { "a" } else { "b" }, 8);
            build_node(&facts, &config, SystemTime::UNIX_EPOCH)
        };
        let mut inventory = Inventory::new();
        for n in 0..6 {
            inventory.upsert_node(node_named(n));
        }
        for step in steps {
            match step {
                ReplicaStep::Commit { pod, node, model } => inventory.commit(
                    &format!("ns/pod-{pod}"),
                    vramfit::core::Placement {
                        pod: format!("ns/pod-{pod}"),
                        node: format!("node-{node}"),
                        zone: None,
                        model: Some(format!("model-{model}")),
                        shares: vec![vramfit::core::DeviceShare { index: 0, vram_mib: 1024 }],
                        exclusive: false,
                    },
                ),
                ReplicaStep::Remove { pod } => {
                    inventory.remove(&format!("ns/pod-{pod}"));
                }
                ReplicaStep::RemoveNode { node } => {
                    inventory.remove_node(&format!("node-{node}"));
                }
                ReplicaStep::UpsertNode { node } => inventory.upsert_node(node_named(node)),
            }
            for model in (0..3).map(|m| format!("model-{m}")) {
                for node in inventory.nodes() {
                    let expected = inventory
                        .placements()
                        .filter(|(_, p)| p.node == node.name && p.model.as_deref() == Some(model.as_str()))
                        .count() as u32;
                    let by_name = inventory.replicas(&model).map_or(0, |r| r.on_node(&node.name));
                    prop_assert_eq!(by_name, expected, "by name: {} on {}", model, node.name);
                    let Some(replicas) = inventory.replicas(&model) else {
                        prop_assert_eq!(expected, 0);
                        continue;
                    };
                    prop_assert_eq!(inventory.replicas_on(replicas, node), expected, "by slot: {} on {}", model, node.name);
                    // A copy of the node (not the inventory's own) is looked up by name.
                    prop_assert_eq!(inventory.replicas_on(replicas, &node.clone()), expected);
                }
            }
        }
    }
}
