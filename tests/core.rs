//! Table-driven tests of the placement core, built with `mk_*` builders.

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use vramfit::core::node::{DeviceStatus, GpuStatus};
use vramfit::core::{
    build_node, fit_node, place, pod_demand, record_bound, Catalog, Config, Reason,
};

fn demand(pod: PodBuilder) -> vramfit::core::Demand {
    pod_demand(&pod.build(), &Config::default(), &Catalog::default())
}

/// Places `count` replicas of the 12 GiB SDXL model under `vramfit-spread`, one after another.
fn place_sdxl_replicas(
    inventory: &mut vramfit::core::Inventory,
    config: &vramfit::core::Config,
    count: usize,
) -> Vec<vramfit::core::Decision> {
    (0..count)
        .map(|i| {
            let pod = mk_pod(&format!("sdxl-{i}"))
                .gpus(1)
                .vram("12Gi")
                .model("sdxl")
                .scheduler("vramfit-spread");
            place(inventory, &demand(pod), config)
        })
        .collect()
}

fn reason_on(node: vramfit::core::NodeFacts, pod: PodBuilder) -> Result<Vec<u32>, Reason> {
    let config = Config::default();
    let node = build_node(&node, &config, SystemTime::now());
    let demand = demand(pod);
    vramfit::core::schedule::verdict(Some(&node), &demand).map(|fit| fit.devices.to_vec())
}

/// Name, node, pod, expected devices or reason, whether the reason is unresolvable.
type Case = (
    &'static str,
    vramfit::core::NodeFacts,
    PodBuilder,
    Result<Vec<u32>, &'static str>,
    bool,
);

#[test]
fn filter_reasons_table() {
    let cases: Vec<Case> =
        vec![
        (
            "8Gi fits a T4",
            mk_t4("t4", "a"),
            mk_pod("p").gpus(1).vram("8Gi"),
            Ok(vec![0]),
            false,
        ),
        (
            "40Gi is too big for a T4",
            mk_t4("t4", "a"),
            mk_pod("p").gpus(1).vram("40Gi"),
            Err("vramfit: needs 40Gi per device (plus 15 percent headroom); largest device here has 15Gi"),
            true,
        ),
        (
            "14Gi exceeds a T4 once 15% headroom is kept",
            mk_t4("t4", "a"),
            mk_pod("p").gpus(1).vram("14Gi"),
            Err("vramfit: needs 14Gi per device (plus 15 percent headroom); largest device here has 15Gi"),
            true,
        ),
        (
            "14Gi fits a T4 with headroom 0",
            mk_t4("t4", "a"),
            mk_pod("p").gpus(1).vram("14Gi").annotation("vramfit.io/headroom", "0"),
            Ok(vec![0]),
            false,
        ),
        (
            "two devices on a one-device node",
            mk_t4("t4", "a"),
            mk_pod("p").gpus(2),
            Err("vramfit: needs 2 devices; node has 1"),
            true,
        ),
        (
            "product allow-list excludes T4",
            mk_t4("t4", "a"),
            mk_pod("p").gpus(1).annotation("vramfit.io/products", "A100,H100"),
            Err("vramfit: product Tesla-T4 not allowed (wants A100,H100)"),
            true,
        ),
        (
            "allow-list entry A100-80GB matches the GFD product",
            mk_a100("a100", "a", 2),
            mk_pod("p").gpus(1).annotation("vramfit.io/products", "A100-80GB"),
            Ok(vec![0]),
            false,
        ),
        (
            "A10 does not match A100",
            mk_a100("a100", "a", 2),
            mk_pod("p").gpus(1).annotation("vramfit.io/products", "A10"),
            Err("vramfit: product NVIDIA-A100-SXM4-80GB not allowed (wants A10)"),
            true,
        ),
        (
            "Ascend pod on an NVIDIA node",
            mk_a100("a100", "a", 2),
            mk_pod("p").resource("huawei.com/Ascend910", "1"),
            Err("vramfit: node has no huawei.com/Ascend910 devices"),
            true,
        ),
        (
            "48Gi fits a 910B3 (64 GiB HBM)",
            mk_ascend_node("npu", "a", "910B3", 2),
            mk_pod("p").resource("huawei.com/Ascend910", "1").vram("48Gi"),
            Ok(vec![0]),
            false,
        ),
        (
            "48Gi does not fit a 910B4 (32 GiB HBM)",
            mk_ascend_node("npu", "a", "910B4", 2),
            mk_pod("p").resource("huawei.com/Ascend910", "1").vram("48Gi"),
            Err("vramfit: needs 48Gi per device (plus 15 percent headroom); largest device here has 32Gi"),
            true,
        ),
        (
            "sharing pod on a node that does not share",
            mk_t4("t4", "a"),
            mk_pod("p").vram("4Gi"),
            Err("vramfit: needs a shared device; node does not share devices by VRAM"),
            true,
        ),
        (
            "sharing pod on a sharing node",
            sharing(mk_t4("t4", "a")),
            mk_pod("p").vram("4Gi"),
            Ok(vec![0]),
            false,
        ),
        (
            "invalid vram annotation",
            mk_t4("t4", "a"),
            mk_pod("p").gpus(1).vram("lots"),
            Err("vramfit: invalid vramfit.io/vram \"lots\": not a Kubernetes quantity"),
            true,
        ),
        (
            "negative vram",
            mk_t4("t4", "a"),
            mk_pod("p").gpus(1).vram("-4Gi"),
            Err("vramfit: invalid vramfit.io/vram \"-4Gi\": negative quantity"),
            true,
        ),
        (
            "absurd vram",
            mk_t4("t4", "a"),
            mk_pod("p").gpus(1).vram("4Pi"),
            Err("vramfit: invalid vramfit.io/vram \"4Pi\": absurdly large (over 1Ti per device)"),
            true,
        ),
        (
            "invalid headroom",
            mk_t4("t4", "a"),
            mk_pod("p").gpus(1).annotation("vramfit.io/headroom", "150"),
            Err("vramfit: invalid vramfit.io/headroom \"150\": expected a percent 0..=90"),
            true,
        ),
        (
            "fractional device count",
            mk_t4("t4", "a"),
            mk_pod("p").resource("nvidia.com/gpu", "500m"),
            Err("vramfit: invalid nvidia.com/gpu \"500m\": not a whole number"),
            true,
        ),
        (
            "HAMi gpumem vocabulary (MiB)",
            mk_t4("t4", "a"),
            mk_pod("p").gpus(1).resource("nvidia.com/gpumem", "20000"),
            Err("vramfit: needs 19.5Gi per device (plus 15 percent headroom); largest device here has 15Gi"),
            true,
        ),
        (
            "gpushare vocabulary (GiB) makes a sharing pod",
            sharing(mk_t4("t4", "a")),
            mk_pod("p").resource("aliyun.com/gpu-mem", "4"),
            Ok(vec![0]),
            false,
        ),
    ];
    for (name, node, pod, expected, unresolvable) in cases {
        let got = reason_on(node, pod);
        match (&got, &expected) {
            (Ok(devices), Ok(want)) => assert_eq!(devices, want, "{name}"),
            (Err(reason), Err(want)) => {
                assert_eq!(reason.to_string(), *want, "{name}");
                assert_eq!(
                    reason.is_unresolvable(),
                    unresolvable,
                    "{name}: resolvability"
                );
            }
            _ => panic!("{name}: got {got:?}, expected {expected:?}"),
        }
    }
}

#[test]
fn small_models_go_to_small_devices_and_big_to_big() {
    let config = Config::default();
    let mut inventory = mk_inventory(
        &[
            mk_a100("a100", "a", 2),
            mk_t4("t4-0", "a"),
            mk_t4("t4-1", "b"),
        ],
        &config,
    );
    let small = place(
        &mut inventory,
        &demand(mk_pod("classifier").gpus(1).vram("8Gi")),
        &config,
    );
    assert_eq!(small.node.as_deref(), Some("t4-0"));
    let big = place(
        &mut inventory,
        &demand(mk_pod("image").gpus(1).vram("40Gi")),
        &config,
    );
    assert_eq!(big.node.as_deref(), Some("a100"));
    // No VRAM declared: still gets a device, on the smallest class.
    let undeclared = place(&mut inventory, &demand(mk_pod("plain").gpus(1)), &config);
    assert_eq!(undeclared.node.as_deref(), Some("t4-1"));
}

#[test]
fn multi_device_pods_need_enough_free_devices_on_one_node() {
    let config = Config::default();
    let mut inventory = mk_inventory(
        &[mk_a100("a100-a", "a", 2), mk_a100("a100-b", "b", 2)],
        &config,
    );
    let one = place(
        &mut inventory,
        &demand(mk_pod("one").gpus(1).vram("40Gi")),
        &config,
    );
    let llm = place(
        &mut inventory,
        &demand(mk_pod("llm").gpus(2).vram("38Gi")),
        &config,
    );
    assert_ne!(
        one.node, llm.node,
        "the 2-device pod needs the untouched node"
    );
    assert_eq!(llm.shares.len(), 2);
    let third = place(
        &mut inventory,
        &demand(mk_pod("third").gpus(2).vram("38Gi")),
        &config,
    );
    assert_eq!(third.node, None);
    let reason = &third.reasons[one.node.as_deref().unwrap()];
    assert_eq!(
        reason.to_string(),
        "vramfit: needs 2 devices with 38Gi free; 1 such here"
    );
    assert!(!reason.is_unresolvable(), "an eviction could free it");
}

#[test]
fn packing_fills_partly_used_nodes_first() {
    let config = Config::default();
    let mut inventory = mk_inventory(
        &[mk_a100("a100-a", "a", 2), mk_a100("a100-b", "a", 2)],
        &config,
    );
    let first = place(
        &mut inventory,
        &demand(mk_pod("x").gpus(1).vram("40Gi")),
        &config,
    );
    let second = place(
        &mut inventory,
        &demand(mk_pod("y").gpus(1).vram("40Gi")),
        &config,
    );
    assert_eq!(
        first.node, second.node,
        "the second pod joins the busy node"
    );
}

#[test]
fn replicas_spread_across_zones_and_spreading_never_blocks() {
    let config = Config::default();
    let mut inventory = mk_inventory(
        &[
            mk_t4("t4-a-0", "a"),
            mk_t4("t4-a-1", "a"),
            mk_t4("t4-b-0", "b"),
        ],
        &config,
    );
    let zones: Vec<String> = place_sdxl_replicas(&mut inventory, &config, 3)
        .into_iter()
        .map(|d| d.zone.expect("placed"))
        .collect();
    assert!(zones[..2].contains(&"a".to_string()) && zones[..2].contains(&"b".to_string()));
    // The third replica goes to zone a even though zone a already holds one: never left pending.
    assert_eq!(zones[2], "a");
}

#[test]
fn model_identity_falls_back_to_app_name_then_controller() {
    let config = Config::default();
    let catalog = Catalog::default();
    let mut pod = mk_pod("p")
        .gpus(1)
        .label("app.kubernetes.io/name", "whisper")
        .build();
    assert_eq!(
        pod_demand(&pod, &config, &catalog)
            .unwrap()
            .model
            .as_deref(),
        Some("whisper")
    );
    pod.labels.clear();
    pod.controller = Some("whisper-7d9f".into());
    assert_eq!(
        pod_demand(&pod, &config, &catalog)
            .unwrap()
            .model
            .as_deref(),
        Some("whisper-7d9f")
    );
    pod.labels
        .insert("vramfit.io/model".into(), "whisper-large".into());
    assert_eq!(
        pod_demand(&pod, &config, &catalog)
            .unwrap()
            .model
            .as_deref(),
        Some("whisper-large")
    );
}

#[test]
fn device_count_follows_kube_scheduler_init_container_rule() {
    let config = Config::default();
    let catalog = Catalog::default();
    let pod = mk_pod("p")
        .gpus(1)
        .container("nvidia.com/gpu", "1")
        .init_container("nvidia.com/gpu", "3")
        .build();
    assert_eq!(pod_demand(&pod, &config, &catalog).unwrap().devices, 3);
    let pod = mk_pod("p")
        .gpus(2)
        .container("nvidia.com/gpu", "2")
        .init_container("nvidia.com/gpu", "1")
        .build();
    assert_eq!(pod_demand(&pod, &config, &catalog).unwrap().devices, 4);
}

#[test]
fn catalog_supplies_vram_and_products_by_model_label() {
    let config = Config::default();
    let catalog = Catalog::from_value(serde_json::json!({
        "models": {"llama-70b": {"vram": "38Gi", "devices": 2, "products": ["A100"]}}
    }))
    .unwrap();
    let pod = mk_pod("p").gpus(2).model("llama-70b").build();
    let demand = pod_demand(&pod, &config, &catalog).unwrap();
    assert_eq!(
        (demand.vram_mib, demand.products.clone()),
        (38 * 1024, vec!["A100".to_string()])
    );
    let too_few = mk_pod("p").gpus(1).model("llama-70b").build();
    let err = pod_demand(&too_few, &config, &catalog).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid nvidia.com/gpu \"1\": catalog model \"llama-70b\" needs 2 devices"
    );
    // The annotation wins over the catalog.
    let pod = mk_pod("p").gpus(2).model("llama-70b").vram("30Gi").build();
    assert_eq!(
        pod_demand(&pod, &config, &catalog).unwrap().vram_mib,
        30 * 1024
    );
}

fn with_report(
    mut node: vramfit::core::NodeFacts,
    used_mib: u64,
    healthy: bool,
    age: Duration,
) -> vramfit::core::NodeFacts {
    let observed = SystemTime::now() - age;
    let report = GpuStatus {
        version: 1,
        observed_at: humantime::format_rfc3339_seconds(observed).to_string(),
        devices: vec![DeviceStatus {
            index: 0,
            uuid: "GPU-0".into(),
            product: "NVIDIA A100-SXM4-80GB".into(),
            total_mib: 81920,
            used_mib,
            healthy,
        }],
    };
    node.annotations.insert(
        "vramfit.io/gpu-status".into(),
        serde_json::to_string(&report).unwrap(),
    );
    node
}

#[test]
fn live_report_wins_over_labels_until_it_goes_stale() {
    let busy = with_report(
        mk_a100("a100", "a", 1),
        60_000,
        true,
        Duration::from_secs(5),
    );
    let err = reason_on(busy, mk_pod("p").gpus(1).vram("20Gi")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "vramfit: needs 1 device with 20Gi free; 0 such here"
    );
    let stale = with_report(
        mk_a100("a100", "a", 1),
        60_000,
        true,
        Duration::from_secs(600),
    );
    assert_eq!(
        reason_on(stale, mk_pod("p").gpus(1).vram("20Gi")),
        Ok(vec![0])
    );
    let sick = with_report(mk_a100("a100", "a", 1), 0, false, Duration::from_secs(5));
    let err = reason_on(sick, mk_pod("p").gpus(1).vram("20Gi")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "vramfit: needs 1 healthy device; 0 healthy here"
    );
    assert!(err.is_unresolvable(), "no eviction heals a device");
}

#[test]
fn unknown_vram_is_never_guessed_silently() {
    let mut node = mk_a100("bare", "a", 2);
    node.labels.remove("nvidia.com/gpu.memory");
    let err = reason_on(node.clone(), mk_pod("p").gpus(1)).unwrap_err();
    assert_eq!(err, Reason::VramUnknown);
    let config = Config {
        default_device_vram_mib: Some(16384),
        ..Config::default()
    };
    let info = build_node(&node, &config, SystemTime::now());
    let demand = pod_demand(
        &mk_pod("p").gpus(1).vram("10Gi").build(),
        &config,
        &Catalog::default(),
    )
    .unwrap();
    let fit = fit_node(&info, &demand).expect("the configured default VRAM is used");
    assert_eq!(
        (fit.devices.as_slice(), fit.vram_mib, fit.chosen_total_mib),
        (&[0][..], 10240, 16384)
    );
    // An Ascend node whose servertype cannot tell 910B3 from 910B4 is not guessed either.
    let mut npu = mk_ascend_node("npu", "a", "910B3", 1);
    npu.labels.remove("node.kubernetes.io/npu.chip.name");
    npu.labels
        .insert("servertype".into(), "Ascend910B-20".into());
    assert_eq!(
        reason_on(npu, mk_pod("p").resource("huawei.com/Ascend910", "1")),
        Err(Reason::VramUnknown)
    );
}

#[test]
fn sharing_pods_pack_onto_one_device_until_it_is_full() {
    let config = Config::default();
    let mut inventory = mk_inventory(&[sharing(mk_a100("a100", "a", 2))], &config);
    let mut devices = Vec::new();
    for i in 0..4 {
        let d = place(
            &mut inventory,
            &demand(mk_pod(&format!("s{i}")).vram("16Gi")),
            &config,
        );
        devices.push(d.shares[0].index);
    }
    // 80 GiB × 0.85 = 68 GiB usable: four 16 GiB pods would fit on device 0, but the fourth
    // would leave 4 GiB no 16 GiB pod can use while device 0 still holds a fifth pod's 20 GiB;
    // the frag term opens device 1 instead (the workload model has seen only 16 GiB pods).
    assert_eq!(devices, vec![0, 0, 0, 1]);
    let fifth = place(&mut inventory, &demand(mk_pod("s4").vram("16Gi")), &config);
    assert_eq!(fifth.shares[0].index, 1);
    // A whole-device pod can no longer take either device... device 1 is shared now.
    let whole = place(&mut inventory, &demand(mk_pod("w").gpus(1)), &config);
    assert_eq!(whole.node, None);
}

#[test]
fn bound_pods_occupy_devices_and_finished_pods_do_not() {
    let config = Config::default();
    let mut inventory = mk_inventory(&[mk_a100("a100", "a", 2)], &config);
    let running = pod_demand(
        &mk_pod("r").gpus(1).bound("a100").build(),
        &config,
        &Catalog::default(),
    )
    .unwrap();
    record_bound(&mut inventory, &running, "a100", None);
    let node = inventory.node("a100").unwrap();
    assert_eq!(node.held_devices(), 1);
    let d = place(&mut inventory, &demand(mk_pod("p").gpus(2)), &config);
    assert_eq!(d.node, None, "only one device left");
    inventory.remove("uid-r");
    let d = place(&mut inventory, &demand(mk_pod("p").gpus(2)), &config);
    assert_eq!(d.node.as_deref(), Some("a100"));
}

#[test]
fn big_devices_held_by_small_needs_are_stranded() {
    let config = Config::default();
    let mut inventory = mk_inventory(&[mk_a100("a100", "a", 2), mk_t4("t4", "a")], &config);
    // An 8 GiB model pinned to A100s strands one; a 40 GiB model on the other does not.
    place(
        &mut inventory,
        &demand(
            mk_pod("small")
                .gpus(1)
                .vram("8Gi")
                .annotation("vramfit.io/products", "A100"),
        ),
        &config,
    );
    place(
        &mut inventory,
        &demand(mk_pod("big").gpus(1).vram("40Gi")),
        &config,
    );
    let stranded = vramfit::core::schedule::stranded_devices(&inventory, 15);
    assert_eq!(stranded.len(), 1);
    let (node, _) = stranded.iter().next().unwrap();
    assert_eq!(node, "a100");
}

#[test]
fn spread_keeps_zones_within_one_and_takes_a_small_device_wherever_that_allows() {
    // Zone a: two T4s, zone b: one T4, zone c: an A100×2. SDXL (12 GiB) replicas.
    let config = Config::default();
    let mut inventory = mk_inventory(
        &[
            mk_t4("t4-a-0", "a"),
            mk_t4("t4-a-1", "a"),
            mk_t4("t4-b-0", "b"),
            mk_a100("a100-c-0", "c", 2),
        ],
        &config,
    );
    let placed: Vec<String> = place_sdxl_replicas(&mut inventory, &config, 4)
        .into_iter()
        .map(|d| d.node.expect("placed"))
        .collect();
    // The first two take T4s in two zones; the third would put zone a two ahead of zone c on
    // the free T4 there, so it takes the A100 in c (maxZoneSkew 1 outranks the best fit); with
    // every zone at one, the fourth takes the free T4 in a, not the second A100.
    assert!(placed[0].starts_with("t4-") && placed[1].starts_with("t4-"));
    assert_ne!(placed[0][..4], placed[1][..4], "{placed:?}");
    assert_eq!(placed[2], "a100-c-0", "{placed:?}");
    assert_eq!(placed[3], "t4-a-1", "{placed:?}");
}

#[test]
fn a_replica_seen_before_its_node_counts_in_the_zone_the_node_brings() {
    // Live mode lists pods and nodes at once: a bound pod may arrive before its node.
    let config = Config::default();
    let mut inventory = vramfit::core::Inventory::new();
    let sdxl = |name: &str| {
        pod_demand(
            &mk_pod(name)
                .gpus(1)
                .vram("12Gi")
                .model("sdxl")
                .bound("a100")
                .build(),
            &config,
            &Catalog::default(),
        )
        .unwrap()
    };
    record_bound(&mut inventory, &sdxl("early"), "a100", Some(&[0]));
    assert_eq!(inventory.placement("uid-early").unwrap().zone, None);
    let node = |zone: &str| build_node(&mk_a100("a100", zone, 2), &config, SystemTime::now());
    inventory.upsert_node(node("a"));
    assert_eq!(
        inventory.placement("uid-early").unwrap().zone.as_deref(),
        Some("a")
    );
    record_bound(&mut inventory, &sdxl("late"), "a100", Some(&[1]));
    let replicas = inventory.replicas("sdxl").unwrap();
    assert_eq!((replicas.in_zone("a"), replicas.on_node("a100")), (2, 2));
    // The node's zone label changes: its replicas move with it.
    inventory.upsert_node(node("b"));
    let replicas = inventory.replicas("sdxl").unwrap();
    assert_eq!((replicas.in_zone("a"), replicas.in_zone("b")), (0, 2));
    assert_eq!(replicas.on_node("a100"), 2);
    inventory.remove("uid-early");
    inventory.remove("uid-late");
    assert!(inventory.replicas("sdxl").is_none());
}

#[test]
fn nodes_of_one_zone_share_the_zone_name_in_the_inventory() {
    let config = Config::default();
    let inventory = mk_inventory(
        &[
            mk_t4("t4-a-0", "a"),
            mk_t4("t4-a-1", "a"),
            mk_t4("t4-b-0", "b"),
        ],
        &config,
    );
    let zone = |name: &str| inventory.node(name).unwrap().zone.clone().unwrap();
    assert!(std::sync::Arc::ptr_eq(&zone("t4-a-0"), &zone("t4-a-1")));
    assert_eq!(&*zone("t4-b-0"), "b");
    assert!(!std::sync::Arc::ptr_eq(&zone("t4-a-0"), &zone("t4-b-0")));
}

#[test]
fn host_requests_and_allocatable_are_read_exactly_and_refused_with_the_key_when_unreadable() {
    let config = Config::default();
    let catalog = Catalog::default();
    // Containers add up, init containers peak (kube-scheduler's rule), rounding up.
    let pod = mk_pod("p")
        .vram("6Gi")
        .resource("cpu", "250m")
        .resource("memory", "1Gi")
        .container("cpu", "9m")
        .init_container("memory", "3Gi")
        .build();
    let host = pod_demand(&pod, &config, &catalog).unwrap().host;
    assert_eq!((host.cpu_milli, host.memory_mib), (259, 3072));
    let bad = mk_pod("p").vram("6Gi").resource("cpu", "two").build();
    let error = pod_demand(&bad, &config, &catalog).unwrap_err();
    assert_eq!(error.key, "cpu");
    assert_eq!(error.value, "two");

    // A node's allocatable cpu and memory, when both are there and readable.
    let mut node = mk_t4("t4", "z");
    node.allocatable.remove("cpu");
    assert_eq!(build_node(&node, &config, SystemTime::now()).host, None);
    node.allocatable.insert("cpu".into(), "15500m".into());
    node.allocatable.insert("memory".into(), "64Gi".into());
    let host = build_node(&node, &config, SystemTime::now()).host.unwrap();
    assert_eq!((host.cpu_milli, host.memory_mib), (15_500, 65_536));
    node.allocatable.insert("memory".into(), "lots".into());
    let info = build_node(&node, &config, SystemTime::now());
    assert_eq!(info.host, None);
    assert!(
        info.notes.iter().any(|n| n.contains("memory=\"lots\"")),
        "{:?}",
        info.notes
    );
}
