//! Kubernetes Node and Pod objects as JSON, the way the API server serves them, with builders for
//! what the tests vary. `typed()` gives the project's lean object types.

use serde_json::{json, Value};
use vramfit::kubernetes::objects::{Node, Pod};

/// A Node object under construction: an 80 GB A100 node with GFD labels, in zone `z`.
#[derive(Clone, Debug)]
pub struct NodeJson(pub Value);

/// An A100 node named `name` with `gpus` allocatable `nvidia.com/gpu`.
pub fn node_json(name: &str, gpus: u32) -> NodeJson {
    NodeJson(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {
            "topology.kubernetes.io/zone": "z",
            "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB",
            "nvidia.com/gpu.memory": "81920"}},
        "status": {"allocatable": {"nvidia.com/gpu": gpus.to_string()}}
    }))
}

impl NodeJson {
    /// Sets (or replaces) a label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.0["metadata"]["labels"][key] = json!(value);
        self
    }
    /// The GFD product and memory labels.
    pub fn product(self, product: &str, memory_mib: u64) -> Self {
        self.label("nvidia.com/gpu.product", product)
            .label("nvidia.com/gpu.memory", &memory_mib.to_string())
    }
    /// Sets an annotation.
    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.0["metadata"]["annotations"][key] = json!(value);
        self
    }
    /// Allocatable `cpu` and `memory`.
    pub fn host(mut self, cpu: &str, memory: &str) -> Self {
        self.0["status"]["allocatable"]["cpu"] = json!(cpu);
        self.0["status"]["allocatable"]["memory"] = json!(memory);
        self
    }
    /// The JSON object.
    pub fn build(self) -> Value {
        self.0
    }
    /// The object as the watchers decode it.
    pub fn typed(self) -> Node {
        serde_json::from_value(self.0).expect("a valid Node")
    }
}

/// A Pod object under construction: namespace `ml`, UID `uid-NAME`, one container, `Pending`.
#[derive(Clone, Debug)]
pub struct PodJson(pub Value);

/// A pending pod with one container that requests nothing yet.
pub fn pod_json(name: &str) -> PodJson {
    PodJson(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "ml", "uid": format!("uid-{name}"), "annotations": {}},
        "spec": {"containers": [{"name": "c", "resources": {}}]},
        "status": {"phase": "Pending"}
    }))
}

impl PodJson {
    /// `limits` of `nvidia.com/gpu` on the first container (the API server defaults the request).
    pub fn gpus(mut self, count: u32) -> Self {
        self.0["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] =
            json!(count.to_string());
        self
    }
    /// Sets an annotation.
    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.0["metadata"]["annotations"][key] = json!(value);
        self
    }
    /// `requests` of `cpu` and `memory` on the first container.
    pub fn requests(mut self, cpu: &str, memory: &str) -> Self {
        let requests = &mut self.0["spec"]["containers"][0]["resources"]["requests"];
        requests["cpu"] = json!(cpu);
        requests["memory"] = json!(memory);
        self
    }
    /// `vramfit.io/vram`: the VRAM the pod needs per device.
    pub fn vram(self, quantity: &str) -> Self {
        self.annotation("vramfit.io/vram", quantity)
    }
    /// `vramfit.io/assigned-devices`, as a Binding of vramfit writes it.
    pub fn assigned(self, devices: &str) -> Self {
        self.annotation("vramfit.io/assigned-devices", devices)
    }
    /// Another UID than `uid-NAME`.
    pub fn uid(mut self, uid: &str) -> Self {
        self.0["metadata"]["uid"] = json!(uid);
        self
    }
    /// `spec.schedulerName`.
    pub fn scheduler(mut self, name: &str) -> Self {
        self.0["spec"]["schedulerName"] = json!(name);
        self
    }
    /// Bound to `node` and running.
    pub fn bound(mut self, node: &str) -> Self {
        self.0["spec"]["nodeName"] = json!(node);
        self.0["status"]["phase"] = json!("Running");
        self
    }
    /// The JSON object.
    pub fn build(self) -> Value {
        self.0
    }
    /// The object as the watchers decode it.
    pub fn typed(self) -> Pod {
        serde_json::from_value(self.0).expect("a valid Pod")
    }
}
