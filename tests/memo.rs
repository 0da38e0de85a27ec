//! The judgement memo (`core::memo`) never changes an answer: after any sequence of changes to
//! an inventory (placements, releases, node capacity, host resources, the workload profile,
//! nodes removed and added), filter and prioritize through the memo answer exactly what a fresh
//! copy of the inventory (whose memo is empty) answers.

mod common;

use std::time::SystemTime;

use proptest::prelude::*;

use common::facts::{mk_a100, mk_gpu_node, mk_pod, mk_t4, sharing};
use vramfit::core::host::Host;
use vramfit::core::memo::MEMO_SHAPES;
use vramfit::core::{
    build_node, filter, place, pod_demand, prioritize, Catalog, Config, Demand, Inventory,
    NodeFacts,
};

const NODES: [&str; 6] = ["a100-x", "a100-y", "t4-x", "t4-y", "l4-x", "shared"];

fn facts(name: &str, variant: u8) -> NodeFacts {
    let zone = if variant.is_multiple_of(2) {
        "z1"
    } else {
        "z2"
    };
    match name {
        "a100-x" | "a100-y" => mk_a100(name, zone, 4 + u32::from(variant % 5)),
        "t4-x" | "t4-y" => mk_t4(name, zone),
        "l4-x" => mk_gpu_node(name, zone, "NVIDIA-L4", 23034, 2 + u32::from(variant % 3)),
        _ => sharing(mk_a100(name, zone, 2)),
    }
}

/// Pods of a few shapes (more than the memo keeps, so shapes also fall out of it).
fn demand(shape: u8, id: u32) -> Demand {
    let name = format!("p{id}");
    let pod = match shape % 10 {
        0 => mk_pod(&name)
            .gpus(1)
            .vram("12Gi")
            .resource("memory", "64Gi"),
        1 => mk_pod(&name).gpus(1).vram("40Gi"),
        2 => mk_pod(&name).gpus(2).vram("30Gi"),
        3 => mk_pod(&name).gpus(1),
        4 => mk_pod(&name).vram("6Gi").resource("cpu", "8"),
        5 => mk_pod(&name).vram("20Gi"),
        6 => mk_pod(&name)
            .gpus(1)
            .vram("8Gi")
            .annotation("vramfit.io/products", "Tesla-T4"),
        7 => mk_pod(&name).gpus(1).vram("8Gi").model("m7"),
        8 => mk_pod(&name)
            .gpus(1)
            .vram("16Gi")
            .annotation("vramfit.io/headroom", "0"),
        _ => mk_pod(&name).gpus(4).vram("70Gi"),
    };
    let pod = pod.scheduler(if id.is_multiple_of(2) {
        "vramfit-binpack"
    } else {
        "vramfit-spread"
    });
    pod_demand(&pod.build(), &Config::default(), &Catalog::default())
}

#[derive(Debug, Clone)]
enum Op {
    /// Asks filter + prioritize about a pod of this shape (the memo fills).
    Ask(u8),
    /// Places and commits a pod of this shape on the best node.
    Place(u8),
    /// Releases the n-th placed pod.
    Release(usize),
    /// Re-reads a node with other capacity.
    Reshape(usize, u8),
    /// Gives a node allocatable cpu/memory (or none).
    Host(usize, Option<(u64, u64)>),
    /// Counts an accelerator-free pod's cpu/memory on a node.
    HostPod(usize, u64, u64),
    /// Counts many pods of a shape in the workload model (the profile moves).
    Observe(u8, u8),
    /// Removes a node, then (true) adds it back.
    Remove(usize, bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => any::<u8>().prop_map(Op::Ask),
        3 => any::<u8>().prop_map(Op::Place),
        2 => any::<usize>().prop_map(Op::Release),
        1 => (0..NODES.len(), any::<u8>()).prop_map(|(n, v)| Op::Reshape(n, v)),
        1 => (0..NODES.len(), proptest::option::of((0u64..64_000, 0u64..512_000)))
            .prop_map(|(n, h)| Op::Host(n, h)),
        1 => (0..NODES.len(), 0u64..16_000, 0u64..128_000)
            .prop_map(|(n, cpu, memory)| Op::HostPod(n, cpu, memory)),
        1 => (any::<u8>(), 1u8..40).prop_map(|(s, c)| Op::Observe(s, c)),
        1 => (0..NODES.len(), any::<bool>()).prop_map(|(n, back)| Op::Remove(n, back)),
    ]
}

/// What a pod's filter and prioritize answer, comparable across inventories.
fn answer(inventory: &Inventory, demand: &Demand, config: &Config) -> String {
    let names: Vec<&str> = NODES.to_vec();
    let outcome = filter(
        names.iter().map(|n| (*n, inventory.node(n))),
        demand,
        inventory,
    );
    let scores = prioritize(
        outcome.feasible.iter().map(|n| (*n, inventory.node(n))),
        demand,
        inventory,
        config,
    );
    format!("{outcome:?} {scores:?}")
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let config = Config::default();
    let mut inventory = Inventory::new();
    for name in NODES {
        inventory.upsert_node(build_node(&facts(name, 0), &config, SystemTime::now()));
    }
    let mut placed: Vec<String> = Vec::new();
    for (step, op) in ops.into_iter().enumerate() {
        let id = step as u32;
        match op {
            Op::Ask(shape) => {
                let demand = demand(shape, id);
                let memoised = answer(&inventory, &demand, &config);
                let fresh = answer(&inventory.clone(), &demand, &config);
                prop_assert_eq!(&memoised, &fresh, "step {} shape {}", step, shape);
                // Asked twice without a change, the memo answers alone: still the same.
                prop_assert_eq!(answer(&inventory, &demand, &config), fresh);
            }
            Op::Place(shape) => {
                let demand = demand(shape, id);
                let decision = place(&mut inventory, &demand, &config);
                // The next replica sees the placement, through the memo as afresh.
                let next = self::demand(shape, id + 1_000_000);
                prop_assert_eq!(
                    answer(&inventory, &next, &config),
                    answer(&inventory.clone(), &next, &config)
                );
                if let (Some(_), Ok(d)) = (&decision.node, &demand) {
                    placed.push(d.id.clone());
                }
            }
            Op::Release(n) => {
                if !placed.is_empty() {
                    let id = placed.remove(n % placed.len());
                    inventory.remove(&id);
                }
            }
            Op::Reshape(n, variant) => {
                let node = build_node(&facts(NODES[n], variant), &config, SystemTime::now());
                inventory.upsert_node(node);
            }
            Op::Host(n, host) => {
                let mut facts = facts(NODES[n], 0);
                if let Some((cpu_milli, memory_mib)) = host {
                    facts
                        .allocatable
                        .insert("cpu".into(), format!("{cpu_milli}m"));
                    facts
                        .allocatable
                        .insert("memory".into(), format!("{memory_mib}Mi"));
                }
                inventory.upsert_node(build_node(&facts, &config, SystemTime::now()));
            }
            Op::HostPod(n, cpu_milli, memory_mib) => {
                let request = Host {
                    cpu_milli,
                    memory_mib,
                };
                inventory.hold_host(&format!("cpu-only-{step}"), NODES[n], request);
                placed.push(format!("cpu-only-{step}"));
            }
            Op::Observe(shape, count) => {
                if let Ok(d) = demand(shape, id) {
                    if let Some(s) = vramfit::core::workload::Shape::of(&d) {
                        inventory.observe_batch([(s, f64::from(count))]);
                    }
                }
            }
            Op::Remove(n, back) => {
                inventory.remove_node(NODES[n]);
                if back {
                    let node = build_node(&facts(NODES[n], 1), &config, SystemTime::now());
                    inventory.upsert_node(node);
                }
            }
        }
        prop_assert!(inventory.memo().len() <= MEMO_SHAPES);
        // Scoring reads zones from the inventory's dense per-slot copy: it follows every
        // reshape and removal (a removal moves the last node into the freed slot).
        for node in inventory.nodes() {
            prop_assert_eq!(inventory.zone_of(node), node.zone.as_deref());
        }
    }
    Ok(())
}

fn cases() -> u32 {
    std::env::var("MEMO_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn memoised_answers_equal_fresh_ones(ops in proptest::collection::vec(op(), 1..60)) {
        run(ops)?;
    }
}

#[test]
fn a_replica_after_a_bind_is_answered_as_a_fresh_inventory_would() {
    let config = Config::default();
    let mut inventory = Inventory::new();
    for name in NODES {
        inventory.upsert_node(build_node(&facts(name, 0), &config, SystemTime::now()));
    }
    // Replicas of one model, one after another: each placement changes one node, and the next
    // replica's answer must see that change.
    for i in 0..12 {
        let demand = demand(0, i);
        let before = answer(&inventory, &demand, &config);
        assert_eq!(before, answer(&inventory.clone(), &demand, &config));
        place(&mut inventory, &demand, &config);
    }
    assert_eq!(inventory.memo().len(), 1);
}

#[test]
fn a_long_list_keeps_every_answer_in_order() {
    // Thousands of nodes of four kinds, a third of them busy: every node gets its own verdict,
    // in input order, and the memo answers as a fresh inventory does.
    let config = Config::default();
    let mut inventory = Inventory::new();
    let count = 3_089;
    let names: Vec<String> = (0..count).map(|i| format!("n{i:05}")).collect();
    for (i, name) in names.iter().enumerate() {
        let facts = match i % 4 {
            0 => mk_t4(name, "z1"),
            1 => mk_a100(name, "z2", 1 + (i % 8) as u32),
            2 => mk_gpu_node(name, "z1", "NVIDIA-L4", 23034, 2),
            _ => mk_gpu_node(name, "z2", "Tesla-T4", 15360, 0),
        };
        inventory.upsert_node(build_node(&facts, &config, SystemTime::now()));
    }
    for i in 0..count / 8 {
        place(&mut inventory, &demand(1, i as u32), &config);
    }
    let demand = demand(0, 99_999_999);
    let outcome = filter(
        names.iter().map(|n| (n.as_str(), inventory.node(n))),
        &demand,
        &inventory,
    );
    let expected: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|n| vramfit::core::schedule::verdict(inventory.node(n), &demand).is_ok())
        .collect();
    assert_eq!(outcome.feasible, expected);
    assert_eq!(outcome.feasible.len() + outcome.rejected.len(), count);
    let rejected: Vec<&str> = outcome.rejected.iter().map(|r| r.node).collect();
    let mut all: Vec<&str> = outcome.feasible.iter().chain(&rejected).copied().collect();
    all.sort_unstable();
    assert_eq!(all, names.iter().map(String::as_str).collect::<Vec<_>>());
    // Through the memo (now filled) and afresh: the same scores, node for node.
    let memoised = answer_all(&inventory, &names, &demand, &config);
    assert_eq!(
        memoised,
        answer_all(&inventory.clone(), &names, &demand, &config)
    );
    assert_eq!(memoised, answer_all(&inventory, &names, &demand, &config));
}

fn answer_all(
    inventory: &Inventory,
    names: &[String],
    demand: &Demand,
    config: &Config,
) -> Vec<(String, u8)> {
    prioritize(
        names.iter().map(|n| (n.as_str(), inventory.node(n))),
        demand,
        inventory,
        config,
    )
    .into_iter()
    .map(|(n, s)| (n.to_string(), s))
    .collect()
}
