//! `mk_*` builders for node and pod facts (the core's input, without Kubernetes types).

use std::collections::BTreeMap;
use std::time::SystemTime;

use vramfit::core::{build_node, Config, ContainerResources, Inventory, NodeFacts, PodFacts};

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// An NVIDIA node with GFD labels.
pub fn mk_gpu_node(
    name: &str,
    zone: &str,
    product: &str,
    memory_mib: u64,
    count: u32,
) -> NodeFacts {
    NodeFacts {
        name: name.into(),
        labels: map(&[
            ("topology.kubernetes.io/zone", zone),
            ("nvidia.com/gpu.product", product),
            ("nvidia.com/gpu.memory", &memory_mib.to_string()),
            ("nvidia.com/gpu.count", &count.to_string()),
        ]),
        annotations: BTreeMap::new(),
        allocatable: map(&[
            ("cpu", "64"),
            ("memory", "512Gi"),
            ("nvidia.com/gpu", &count.to_string()),
        ]),
        unschedulable: false,
    }
}

pub fn mk_a100(name: &str, zone: &str, count: u32) -> NodeFacts {
    mk_gpu_node(name, zone, "NVIDIA-A100-SXM4-80GB", 81920, count)
}

pub fn mk_t4(name: &str, zone: &str) -> NodeFacts {
    mk_gpu_node(name, zone, "Tesla-T4", 15360, 1)
}

/// An Ascend node with the official plugin's resource and the chip-name label.
pub fn mk_ascend_node(name: &str, zone: &str, chip: &str, count: u32) -> NodeFacts {
    NodeFacts {
        name: name.into(),
        labels: map(&[
            ("topology.kubernetes.io/zone", zone),
            ("accelerator", "huawei-Ascend910"),
            ("node.kubernetes.io/npu.chip.name", chip),
        ]),
        annotations: BTreeMap::new(),
        allocatable: map(&[("huawei.com/Ascend910", &count.to_string())]),
        unschedulable: false,
    }
}

/// Marks a node as sharing devices by VRAM.
pub fn sharing(mut node: NodeFacts) -> NodeFacts {
    node.labels
        .insert("vramfit.io/sharing".into(), "vram".into());
    node
}

/// Builder for pod facts.
#[derive(Clone)]
pub struct PodBuilder(pub PodFacts);

pub fn mk_pod(name: &str) -> PodBuilder {
    PodBuilder(PodFacts {
        namespace: "ml".into(),
        name: name.into(),
        uid: format!("uid-{name}"),
        containers: vec![ContainerResources::default()],
        ..PodFacts::default()
    })
}

impl PodBuilder {
    pub fn resource(mut self, resource: &str, count: &str) -> Self {
        self.0.containers[0]
            .requests
            .insert(resource.into(), count.into());
        self.0.containers[0]
            .limits
            .insert(resource.into(), count.into());
        self
    }
    pub fn gpus(self, n: u32) -> Self {
        self.resource("nvidia.com/gpu", &n.to_string())
    }
    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.0.annotations.insert(key.into(), value.into());
        self
    }
    pub fn vram(self, quantity: &str) -> Self {
        self.annotation("vramfit.io/vram", quantity)
    }
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.0.labels.insert(key.into(), value.into());
        self
    }
    pub fn model(self, model: &str) -> Self {
        self.label("vramfit.io/model", model)
    }
    pub fn scheduler(mut self, name: &str) -> Self {
        self.0.scheduler_name = Some(name.into());
        self
    }
    pub fn bound(mut self, node: &str) -> Self {
        self.0.node_name = Some(node.into());
        self
    }
    pub fn phase(mut self, phase: &str) -> Self {
        self.0.phase = Some(phase.into());
        self
    }
    pub fn init_container(mut self, resource: &str, count: &str) -> Self {
        let mut c = ContainerResources::default();
        c.requests.insert(resource.into(), count.into());
        self.0.init_containers.push(c);
        self
    }
    pub fn container(mut self, resource: &str, count: &str) -> Self {
        let mut c = ContainerResources::default();
        c.requests.insert(resource.into(), count.into());
        self.0.containers.push(c);
        self
    }
    pub fn build(self) -> PodFacts {
        self.0
    }
}

/// An inventory of the given nodes, read with `config` at the current time.
pub fn mk_inventory(nodes: &[NodeFacts], config: &Config) -> Inventory {
    let mut inventory = Inventory::new();
    for node in nodes {
        inventory.upsert_node(build_node(node, config, SystemTime::now()));
    }
    inventory
}
