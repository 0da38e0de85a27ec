//! Kubernetes objects, read leniently into the core's facts.
//!
//! Only the fields placement needs are decoded; everything else (managedFields, images, status
//! conditions) is skipped while parsing. Go's encoder writes `null` for empty slices and maps, and
//! YAML dumps write quantities as numbers, so every field tolerates `null`, absence, and scalars.

use serde::Deserialize;
use serde::Deserializer;
use std::collections::BTreeMap;

use crate::core::facts::{ContainerResources, NodeFacts, PodFacts};

/// Decodes `null` as the type's default.
fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A string-valued map whose values may be written as strings, numbers or booleans.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScalarMap(pub BTreeMap<String, String>);

impl<'de> Deserialize<'de> for ScalarMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Scalar {
            S(String),
            I(i64),
            U(u64),
            F(f64),
            B(bool),
        }
        let raw = Option::<BTreeMap<String, Option<Scalar>>>::deserialize(d)?.unwrap_or_default();
        Ok(ScalarMap(
            raw.into_iter()
                .filter_map(|(k, v)| {
                    let v = match v? {
                        Scalar::S(s) => s,
                        Scalar::I(i) => i.to_string(),
                        Scalar::U(u) => u.to_string(),
                        Scalar::F(f) => f.to_string(),
                        Scalar::B(b) => b.to_string(),
                    };
                    Some((k, v))
                })
                .collect(),
        ))
    }
}

/// `metadata`, the parts placement reads.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Meta {
    /// `metadata.name`.
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
    /// `metadata.namespace`; empty for cluster-scoped objects.
    #[serde(default, deserialize_with = "nullable")]
    pub namespace: String,
    /// `metadata.uid`.
    #[serde(default, deserialize_with = "nullable")]
    pub uid: String,
    /// `metadata.labels`.
    #[serde(default)]
    pub labels: ScalarMap,
    /// `metadata.annotations`.
    #[serde(default)]
    pub annotations: ScalarMap,
    /// `metadata.ownerReferences`.
    #[serde(default, deserialize_with = "nullable")]
    pub owner_references: Vec<OwnerReference>,
    /// `metadata.deletionTimestamp`; set while the object is being deleted.
    #[serde(default, deserialize_with = "nullable")]
    pub deletion_timestamp: Option<String>,
    /// Kept for the live watch, which resumes from the last version it saw.
    #[serde(default, deserialize_with = "nullable")]
    pub resource_version: String,
}

/// An owner reference.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnerReference {
    /// The owner's kind (`ReplicaSet`, `StatefulSet`).
    #[serde(default, deserialize_with = "nullable")]
    pub kind: String,
    /// The owner's name.
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
    /// Whether the owner is the managing controller.
    #[serde(default, deserialize_with = "nullable")]
    pub controller: bool,
}

/// A taint on a node.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct Taint {
    /// Taint key.
    #[serde(default, deserialize_with = "nullable")]
    pub key: String,
    /// Taint value; empty when none.
    #[serde(default, deserialize_with = "nullable")]
    pub value: String,
    /// `NoSchedule`, `PreferNoSchedule` or `NoExecute`.
    #[serde(default, deserialize_with = "nullable")]
    pub effect: String,
}

/// A Node.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Node {
    /// `metadata`.
    #[serde(default, deserialize_with = "nullable")]
    pub metadata: Meta,
    /// `spec`.
    #[serde(default, deserialize_with = "nullable")]
    pub spec: NodeSpec,
    /// `status`.
    #[serde(default, deserialize_with = "nullable")]
    pub status: NodeStatus,
}

/// `Node.spec`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct NodeSpec {
    /// `spec.unschedulable` (cordoned).
    #[serde(default, deserialize_with = "nullable")]
    pub unschedulable: bool,
    /// `spec.taints`.
    #[serde(default, deserialize_with = "nullable")]
    pub taints: Vec<Taint>,
}

/// `Node.status`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct NodeStatus {
    /// `status.allocatable`, as quantity strings.
    #[serde(default)]
    pub allocatable: ScalarMap,
    /// `status.capacity`, as quantity strings.
    #[serde(default)]
    pub capacity: ScalarMap,
}

/// `resources` of a container.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Resources {
    /// `requests`, as quantity strings.
    #[serde(default)]
    pub requests: ScalarMap,
    /// `limits`, as quantity strings.
    #[serde(default)]
    pub limits: ScalarMap,
}

/// A container, the parts placement reads.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    /// Container name.
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
    /// `restartPolicy`; `Always` on an init container makes it a sidecar.
    #[serde(default, deserialize_with = "nullable")]
    pub restart_policy: String,
    /// `resources`.
    #[serde(default, deserialize_with = "nullable")]
    pub resources: Resources,
}

/// A Pod (or a workload's pod template, which has the same shape).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Pod {
    /// `metadata`.
    #[serde(default, deserialize_with = "nullable")]
    pub metadata: Meta,
    /// `spec`.
    #[serde(default, deserialize_with = "nullable")]
    pub spec: PodSpec,
    /// `status`.
    #[serde(default, deserialize_with = "nullable")]
    pub status: PodStatus,
}

/// `Pod.spec`, the parts placement reads.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    /// `spec.nodeName`; empty while unbound.
    #[serde(default, deserialize_with = "nullable")]
    pub node_name: String,
    /// `spec.schedulerName`; empty when unset.
    #[serde(default, deserialize_with = "nullable")]
    pub scheduler_name: String,
    /// `spec.containers`.
    #[serde(default, deserialize_with = "nullable")]
    pub containers: Vec<Container>,
    /// `spec.initContainers`.
    #[serde(default, deserialize_with = "nullable")]
    pub init_containers: Vec<Container>,
    /// `spec.nodeSelector`.
    #[serde(default)]
    pub node_selector: ScalarMap,
    /// `spec.tolerations`.
    #[serde(default, deserialize_with = "nullable")]
    pub tolerations: Vec<Toleration>,
    /// `spec.affinity`.
    #[serde(default, deserialize_with = "nullable")]
    pub affinity: Affinity,
}

/// A toleration.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct Toleration {
    /// Taint key matched; empty with `Exists` matches every key.
    #[serde(default, deserialize_with = "nullable")]
    pub key: String,
    /// `Equal` (the default when empty) or `Exists`.
    #[serde(default, deserialize_with = "nullable")]
    pub operator: String,
    /// Taint value matched, for `Equal`.
    #[serde(default, deserialize_with = "nullable")]
    pub value: String,
    /// Taint effect matched; empty matches every effect.
    #[serde(default, deserialize_with = "nullable")]
    pub effect: String,
}

/// `spec.affinity`, the part kube-scheduler filters on.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Affinity {
    /// `nodeAffinity`.
    #[serde(default, deserialize_with = "nullable")]
    pub node_affinity: NodeAffinity,
}

/// `nodeAffinity`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeAffinity {
    /// `requiredDuringSchedulingIgnoredDuringExecution`; `None` when absent.
    #[serde(default, deserialize_with = "nullable")]
    pub required_during_scheduling_ignored_during_execution: Option<NodeSelector>,
}

/// A node selector: terms ORed.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeSelector {
    /// `nodeSelectorTerms`.
    #[serde(default, deserialize_with = "nullable")]
    pub node_selector_terms: Vec<NodeSelectorTerm>,
}

/// One term: expressions ANDed.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeSelectorTerm {
    /// `matchExpressions`, on node labels.
    #[serde(default, deserialize_with = "nullable")]
    pub match_expressions: Vec<SelectorRequirement>,
    /// `matchFields`, on node fields (`metadata.name`).
    #[serde(default, deserialize_with = "nullable")]
    pub match_fields: Vec<SelectorRequirement>,
}

/// `key operator values`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SelectorRequirement {
    /// Label (or field) key.
    #[serde(default, deserialize_with = "nullable")]
    pub key: String,
    /// `In`, `NotIn`, `Exists`, `DoesNotExist`, `Gt` or `Lt`.
    #[serde(default, deserialize_with = "nullable")]
    pub operator: String,
    /// Values the operator compares with.
    #[serde(default, deserialize_with = "nullable")]
    pub values: Vec<String>,
}

/// `Pod.status`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PodStatus {
    /// `status.phase` (`Pending`, `Running`, `Succeeded`, `Failed`).
    #[serde(default, deserialize_with = "nullable")]
    pub phase: String,
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

impl Node {
    /// The core's view of this node.
    pub fn facts(&self) -> NodeFacts {
        NodeFacts {
            name: self.metadata.name.clone(),
            labels: self.metadata.labels.0.clone(),
            annotations: self.metadata.annotations.0.clone(),
            allocatable: if self.status.allocatable.0.is_empty() {
                self.status.capacity.0.clone()
            } else {
                self.status.allocatable.0.clone()
            },
            unschedulable: self.spec.unschedulable,
        }
    }
}

fn container_facts(c: &Container) -> ContainerResources {
    ContainerResources {
        requests: c.resources.requests.0.clone(),
        limits: c.resources.limits.0.clone(),
        sidecar: c.restart_policy == "Always",
    }
}

impl Pod {
    /// The core's view of this pod.
    pub fn facts(&self) -> PodFacts {
        let meta = &self.metadata;
        PodFacts {
            namespace: if meta.namespace.is_empty() {
                "default".into()
            } else {
                meta.namespace.clone()
            },
            name: meta.name.clone(),
            uid: meta.uid.clone(),
            labels: meta.labels.0.clone(),
            annotations: meta.annotations.0.clone(),
            controller: meta
                .owner_references
                .iter()
                .find(|o| o.controller)
                .map(|o| o.name.clone()),
            scheduler_name: non_empty(&self.spec.scheduler_name),
            containers: self.spec.containers.iter().map(container_facts).collect(),
            init_containers: self
                .spec
                .init_containers
                .iter()
                .map(container_facts)
                .collect(),
            node_name: non_empty(&self.spec.node_name),
            phase: non_empty(&self.status.phase),
        }
    }
}
