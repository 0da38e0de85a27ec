//! The agents: on accelerator nodes only, reporting inside the TTL.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, NodeSelectorRequirement, PodSpec};

use crate::base::*;

fn selects(spec: &PodSpec, labels: &BTreeMap<String, String>) -> bool {
    let selector_ok = spec
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let terms = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .map(|r| r.node_selector_terms.clone())
        .unwrap_or_default();
    let matches = |e: &NodeSelectorRequirement| {
        let value = labels.get(&e.key);
        let values = e.values.clone().unwrap_or_default();
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => !value.is_some_and(|v| values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            other => panic!("operator {other}"),
        }
    };
    selector_ok
        && (terms.is_empty()
            || terms
                .iter()
                .any(|t| t.match_expressions.iter().flatten().all(matches)))
}

#[test]
fn agents_run_on_accelerator_nodes_only_and_report_inside_the_ttl() {
    let base = Base::load();
    let ttl = settings_of(&sidecar(&base)).placement.report_ttl_seconds;
    let nvidia = base.daemon_set("vramfit-agent-nvidia");
    let ascend = base.daemon_set("vramfit-agent-ascend");
    let pod = |d: &DaemonSet| d.spec.as_ref().unwrap().template.spec.clone().unwrap();
    for d in [nvidia, ascend] {
        let spec = pod(d);
        let what = name(&d.metadata);
        let agent = container(&spec, "agent");
        let args = agent.args.clone().unwrap();
        assert_eq!(args[0], "agent", "{what}");
        let heartbeat: u64 = flag(&args, "heartbeat-seconds").unwrap().parse().unwrap();
        let poll: u64 = flag(&args, "poll-seconds").unwrap().parse().unwrap();
        assert!(
            poll <= heartbeat && heartbeat < ttl,
            "{what}: reports stay fresh (heartbeat {heartbeat} s, TTL {ttl} s)"
        );
        let env = agent.env.clone().unwrap_or_default();
        let node_name = env.iter().find(|e| e.name == "NODE_NAME").unwrap();
        let field = node_name
            .value_from
            .as_ref()
            .unwrap()
            .field_ref
            .as_ref()
            .unwrap();
        assert_eq!(field.field_path, "spec.nodeName", "{what}");
        let tolerated: BTreeSet<&str> = spec
            .tolerations
            .iter()
            .flatten()
            .filter(|t| t.operator.as_deref() == Some("Exists") && t.effect.is_none())
            .filter_map(|t| t.key.as_deref())
            .collect();
        for taint in ["nvidia.com/gpu", "huawei.com/Ascend910"] {
            assert!(tolerated.contains(taint), "{what} tolerates {taint}");
        }
        assert_eq!(
            spec.service_account_name.as_deref(),
            Some("vramfit-agent"),
            "{what}"
        );
    }
    let nvidia_env = container(&pod(nvidia), "agent").env.clone().unwrap();
    let var = |n: &str| {
        nvidia_env
            .iter()
            .find(|e| e.name == n)
            .and_then(|e| e.value.clone())
    };
    assert_eq!(var("NVIDIA_VISIBLE_DEVICES").as_deref(), Some("all"));
    assert_eq!(
        var("NVIDIA_DRIVER_CAPABILITIES").as_deref(),
        Some("utility")
    );
    let ascend_spec = pod(ascend);
    let npu_smi = container(&ascend_spec, "agent")
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == "/usr/local/sbin/npu-smi")
        .expect("npu-smi is mounted where PATH finds it");
    let volume = ascend_spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == npu_smi.name)
        .unwrap();
    assert_eq!(
        volume.host_path.as_ref().unwrap().path,
        "/usr/local/sbin/npu-smi"
    );

    // Which nodes each DaemonSet lands on: the example cluster's, plus a CPU node, a GPU Operator
    // node without GFD labels and a HAMi-labelled Ascend node.
    let list = yaml("examples/cluster.yaml");
    let mut nodes: Vec<Node> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["kind"] == "Node")
        .map(|i| serde_json::from_value(i.clone()).unwrap())
        .collect();
    for (node_name, label, value, resource) in [
        ("cpu-0", "kubernetes.io/os", "linux", "cpu"),
        (
            "gpu-operator-0",
            "nvidia.com/gpu.present",
            "true",
            "nvidia.com/gpu",
        ),
        ("hami-ascend-0", "ascend", "on", "huawei.com/Ascend910B3"),
    ] {
        nodes.push(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": node_name, "labels": {label: value}},
                "status": {"allocatable": {resource: "8"}}
            }))
            .unwrap(),
        );
    }
    let (nvidia_spec, mut on_nvidia, mut on_ascend) = (pod(nvidia), 0, 0);
    for node in &nodes {
        let labels = node.metadata.labels.clone().unwrap_or_default();
        let allocatable = node
            .status
            .as_ref()
            .and_then(|s| s.allocatable.clone())
            .unwrap_or_default();
        let has_gpu = allocatable.contains_key("nvidia.com/gpu");
        let has_npu = allocatable
            .keys()
            .any(|k| k.starts_with("huawei.com/Ascend"));
        let n = name(&node.metadata);
        assert_eq!(
            selects(&nvidia_spec, &labels),
            has_gpu,
            "nvidia agent on {n}"
        );
        assert_eq!(
            selects(&ascend_spec, &labels),
            has_npu,
            "ascend agent on {n}"
        );
        on_nvidia += usize::from(has_gpu);
        on_ascend += usize::from(has_npu);
    }
    assert!(on_nvidia >= 2 && on_ascend >= 2);
}
