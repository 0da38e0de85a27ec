//! The kube-scheduler extender wire format (`k8s.io/kube-scheduler/extender/v1`): PascalCase keys,
//! every field optional and `null`-tolerant, lowercase and camelCase aliases accepted.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use crate::kubernetes::objects::Pod;

fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A node name borrowed from the request body when it has no escapes (the common case).
pub type Name<'a> = std::borrow::Cow<'a, str>;

/// `ExtenderArgs`: the filter and prioritize request.
#[derive(Debug, Deserialize)]
pub struct ExtenderArgs<'a> {
    #[serde(rename = "Pod", alias = "pod", default)]
    pub pod: Option<Pod>,
    #[serde(rename = "Nodes", alias = "nodes", default)]
    pub nodes: Option<RawNodeList>,
    #[serde(
        rename = "NodeNames",
        alias = "nodeNames",
        alias = "nodenames",
        default
    )]
    #[serde(borrow)]
    pub node_names: Option<Vec<Name<'a>>>,
}

/// A NodeList whose items are kept byte for byte, to be returned unchanged.
#[derive(Debug, Deserialize)]
pub struct RawNodeList {
    #[serde(default, deserialize_with = "nullable")]
    pub items: Vec<Box<RawValue>>,
}

/// A NodeList in a reply.
#[derive(Debug, Serialize)]
pub struct NodeListOut {
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub items: Vec<Box<RawValue>>,
}

/// `ExtenderFilterResult`.
#[derive(Debug, Serialize)]
pub struct ExtenderFilterResult<'a> {
    #[serde(rename = "Nodes")]
    pub nodes: Option<NodeListOut>,
    #[serde(rename = "NodeNames")]
    pub node_names: Option<Vec<&'a str>>,
    #[serde(rename = "FailedNodes")]
    pub failed_nodes: PairMap<'a>,
    #[serde(rename = "FailedAndUnresolvableNodes")]
    pub failed_and_unresolvable_nodes: PairMap<'a>,
    #[serde(rename = "Error")]
    pub error: String,
}

/// A JSON object written from key–value pairs, without building a map first.
#[derive(Debug, Default)]
pub struct PairMap<'a>(pub Vec<(&'a str, &'a str)>);

impl Serialize for PairMap<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(k, v)| (*k, *v)))
    }
}

/// `HostPriority`; the prioritize reply is a bare array of these.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct HostPriority<'a> {
    #[serde(rename = "Host", alias = "host", borrow)]
    pub host: Name<'a>,
    #[serde(rename = "Score", alias = "score")]
    pub score: i64,
}

/// `ExtenderBindingArgs`.
#[derive(Debug, Deserialize)]
pub struct ExtenderBindingArgs {
    #[serde(
        rename = "PodName",
        alias = "podName",
        alias = "podname",
        default,
        deserialize_with = "nullable"
    )]
    pub pod_name: String,
    #[serde(
        rename = "PodNamespace",
        alias = "podNamespace",
        alias = "podnamespace",
        default,
        deserialize_with = "nullable"
    )]
    pub pod_namespace: String,
    #[serde(
        rename = "PodUID",
        alias = "podUID",
        alias = "poduid",
        default,
        deserialize_with = "nullable"
    )]
    pub pod_uid: String,
    #[serde(
        rename = "Node",
        alias = "node",
        default,
        deserialize_with = "nullable"
    )]
    pub node: String,
}

/// `ExtenderBindingResult`.
#[derive(Debug, Serialize)]
pub struct ExtenderBindingResult {
    #[serde(rename = "Error")]
    pub error: String,
}
