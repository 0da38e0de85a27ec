//! What kube-scheduler checks before it calls the extender, for the dry run: unschedulable nodes,
//! taints and tolerations, nodeSelector and required node affinity, and resource fit (cpu, memory,
//! pods, extended resources). Reasons use kube-scheduler's own texts so `place` groups them as a
//! FailedScheduling event does. Pure functions over the lenient Kubernetes types.

use std::collections::BTreeMap;

use crate::core::demand::{effective_quantity, DemandError};
use crate::core::quantity::{parse_quantity, QuantityError};
use crate::kubernetes::objects::{Node, Pod, SelectorRequirement, Taint, Toleration};

/// Resources kube-scheduler is configured to ignore (`ignoredByScheduler: true` in
/// scheduler-config/): VRAM vocabularies no node advertises.
pub const IGNORED_RESOURCES: &[&str] =
    &["vramfit.io/vram", "nvidia.com/gpumem", "aliyun.com/gpu-mem"];

/// A pod's effective requests in base units: cpu in millicores, everything else in units
/// (memory in bytes).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Requests {
    /// Resource name → amount.
    pub amounts: BTreeMap<String, u64>,
}

/// What is already requested on a node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeUsage {
    /// Resource name → amount requested by the node's pods.
    pub amounts: BTreeMap<String, u64>,
    /// Pods on the node.
    pub pods: u64,
}

impl NodeUsage {
    /// Adds a pod's requests.
    pub fn add(&mut self, requests: &Requests) {
        for (name, amount) in &requests.amounts {
            *self.amounts.entry(name.clone()).or_default() += amount;
        }
        self.pods += 1;
    }
}

/// A quantity in base units, exactly, rounded up as the API server rounds: cpu in millicores
/// (`MilliValue()`), everything else in units (`Value()`).
fn base_units(resource: &str, text: &str) -> Result<u64, QuantityError> {
    let quantity = parse_quantity(text)?;
    let amount = if resource == "cpu" {
        quantity.ceil_scaled(1000, 1)?
    } else {
        quantity.ceil_scaled(1, 1)?
    };
    // Sums of many pods' requests stay far from overflow.
    if amount > u64::MAX / 4 {
        return Err(QuantityError::TooLarge);
    }
    Ok(amount)
}

/// The pod's effective requests with kube-scheduler's rule ([`effective_quantity`]: containers
/// and sidecars add up, init containers peak; a limit stands in for a missing request), for
/// every resource a container names. An unreadable quantity is an error naming it.
pub fn pod_requests(pod: &Pod) -> Result<Requests, DemandError> {
    let facts = pod.facts();
    let names: std::collections::BTreeSet<&String> = facts
        .containers
        .iter()
        .chain(&facts.init_containers)
        .flat_map(|c| c.requests.keys().chain(c.limits.keys()))
        .collect();
    let mut amounts = BTreeMap::new();
    for name in names {
        if let Some(amount) = effective_quantity(&facts, name, |text| base_units(name, text))? {
            amounts.insert(name.clone(), amount);
        }
    }
    Ok(Requests { amounts })
}

fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    if !toleration.effect.is_empty() && toleration.effect != taint.effect {
        return false;
    }
    if toleration.key.is_empty() {
        return toleration.operator == "Exists";
    }
    if toleration.key != taint.key {
        return false;
    }
    match toleration.operator.as_str() {
        "Exists" => true,
        _ => toleration.value == taint.value,
    }
}

fn matches_requirement(requirement: &SelectorRequirement, value: Option<&str>) -> bool {
    let values = &requirement.values;
    match requirement.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) = (
                value.and_then(|v| v.parse::<i64>().ok()),
                values.first().and_then(|b| b.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if requirement.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

fn matches_affinity(node: &Node, pod: &Pod) -> bool {
    let labels = &node.metadata.labels.0;
    if !pod
        .spec
        .node_selector
        .0
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v))
    {
        return false;
    }
    let Some(required) = &pod
        .spec
        .affinity
        .node_affinity
        .required_during_scheduling_ignored_during_execution
    else {
        return true;
    };
    // Terms are ORed; an empty term matches nothing, as in kube-scheduler.
    required.node_selector_terms.iter().any(|term| {
        (!term.match_expressions.is_empty() || !term.match_fields.is_empty())
            && term
                .match_expressions
                .iter()
                .all(|r| matches_requirement(r, labels.get(&r.key).map(String::as_str)))
            && term.match_fields.iter().all(|r| {
                let field = (r.key == "metadata.name").then_some(node.metadata.name.as_str());
                matches_requirement(r, field)
            })
    })
}

/// The first of kube-scheduler's filters that rejects `pod` on `node`, with its reason text;
/// `None` when all pass. `usage` is what the node's pods already request.
pub fn reject_reason(
    node: &Node,
    usage: &NodeUsage,
    pod: &Pod,
    requests: &Requests,
) -> Option<String> {
    let unschedulable_taint = Taint {
        key: "node.kubernetes.io/unschedulable".into(),
        value: String::new(),
        effect: "NoSchedule".into(),
    };
    if node.spec.unschedulable
        && !pod
            .spec
            .tolerations
            .iter()
            .any(|t| tolerates(t, &unschedulable_taint))
    {
        return Some("node(s) were unschedulable".into());
    }
    for taint in &node.spec.taints {
        if !matches!(taint.effect.as_str(), "NoSchedule" | "NoExecute") {
            continue;
        }
        if !pod.spec.tolerations.iter().any(|t| tolerates(t, taint)) {
            return Some(format!(
                "node(s) had untolerated taint {{{}: {}}}",
                taint.key, taint.value
            ));
        }
    }
    if !matches_affinity(node, pod) {
        return Some("node(s) didn't match Pod's node affinity/selector".into());
    }
    let allocatable = if node.status.allocatable.0.is_empty() {
        &node.status.capacity.0
    } else {
        &node.status.allocatable.0
    };
    let max_pods = allocatable
        .get("pods")
        .and_then(|p| base_units("pods", p).ok())
        .unwrap_or(110);
    if usage.pods + 1 > max_pods {
        return Some("Too many pods".into());
    }
    for (name, amount) in &requests.amounts {
        let checked =
            name == "cpu" || name == "memory" || name == "ephemeral-storage" || is_extended(name);
        if !checked || IGNORED_RESOURCES.contains(&name.as_str()) || *amount == 0 {
            continue;
        }
        let capacity = allocatable
            .get(name)
            .and_then(|v| base_units(name, v).ok())
            .unwrap_or(0);
        let used = usage.amounts.get(name).copied().unwrap_or(0);
        if used + amount > capacity {
            return Some(format!("Insufficient {name}"));
        }
    }
    None
}

/// Extended resources are domain-prefixed and outside `kubernetes.io/`.
fn is_extended(name: &str) -> bool {
    name.contains('/') && !name.starts_with("kubernetes.io/") && !name.starts_with("requests.")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(value: serde_json::Value) -> Node {
        serde_json::from_value(value).unwrap()
    }

    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).unwrap()
    }

    fn gpu_node() -> Node {
        node(json!({
            "metadata": {"name": "n1", "labels": {"pool": "gpu", "rank": "5"}},
            "spec": {"taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]},
            "status": {"allocatable": {"cpu": "8", "memory": "32Gi", "pods": "2", "nvidia.com/gpu": "1"}}
        }))
    }

    fn check(n: &Node, usage: &NodeUsage, p: &Pod) -> Option<String> {
        reject_reason(n, usage, p, &pod_requests(p).unwrap())
    }

    #[test]
    fn taints_need_tolerations() {
        let n = gpu_node();
        let bare = pod(json!({"spec": {"containers": [{"name": "c"}]}}));
        assert_eq!(
            check(&n, &NodeUsage::default(), &bare).as_deref(),
            Some("node(s) had untolerated taint {nvidia.com/gpu: present}")
        );
        let tolerant = pod(
            json!({"spec": {"containers": [{"name": "c"}], "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}}),
        );
        assert_eq!(check(&n, &NodeUsage::default(), &tolerant), None);
        let wildcard = pod(
            json!({"spec": {"containers": [{"name": "c"}], "tolerations": [{"operator": "Exists"}]}}),
        );
        assert_eq!(check(&n, &NodeUsage::default(), &wildcard), None);
        let wrong_value = pod(
            json!({"spec": {"containers": [{"name": "c"}], "tolerations": [{"key": "nvidia.com/gpu", "value": "absent"}]}}),
        );
        assert_eq!(
            check(&n, &NodeUsage::default(), &wrong_value).as_deref(),
            Some("node(s) had untolerated taint {nvidia.com/gpu: present}")
        );
    }

    #[test]
    fn selectors_and_affinity() {
        let mut n = gpu_node();
        n.spec.taints.clear();
        let selected =
            pod(json!({"spec": {"containers": [{"name": "c"}], "nodeSelector": {"pool": "cpu"}}}));
        assert_eq!(
            check(&n, &NodeUsage::default(), &selected).as_deref(),
            Some("node(s) didn't match Pod's node affinity/selector")
        );
        let affinity = |op: &str, values: serde_json::Value| {
            pod(
                json!({"spec": {"containers": [{"name": "c"}], "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "rank", "operator": op, "values": values}]}]}}}}}),
            )
        };
        assert_eq!(
            check(
                &n,
                &NodeUsage::default(),
                &affinity("In", json!(["5", "6"]))
            ),
            None
        );
        assert_eq!(
            check(&n, &NodeUsage::default(), &affinity("NotIn", json!(["5"]))).as_deref(),
            Some("node(s) didn't match Pod's node affinity/selector")
        );
        assert_eq!(
            check(&n, &NodeUsage::default(), &affinity("Gt", json!(["4"]))),
            None
        );
        assert_eq!(
            check(&n, &NodeUsage::default(), &affinity("Lt", json!(["4"]))).as_deref(),
            Some("node(s) didn't match Pod's node affinity/selector")
        );
        assert_eq!(
            check(&n, &NodeUsage::default(), &affinity("Exists", json!([]))),
            None
        );
        let by_name = pod(
            json!({"spec": {"containers": [{"name": "c"}], "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n2"]}]}]}}}}}),
        );
        assert_eq!(
            check(&n, &NodeUsage::default(), &by_name).as_deref(),
            Some("node(s) didn't match Pod's node affinity/selector")
        );
    }

    #[test]
    fn resources_fit_and_unschedulable() {
        let mut n = gpu_node();
        n.spec.taints.clear();
        let big = pod(
            json!({"spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "6", "memory": "8Gi"}, "limits": {"nvidia.com/gpu": 1, "vramfit.io/vram": "20Gi"}}}]}}),
        );
        assert_eq!(
            check(&n, &NodeUsage::default(), &big),
            None,
            "vramfit.io/vram is ignored like in the scheduler config"
        );
        let mut usage = NodeUsage::default();
        usage.add(&pod_requests(&big).unwrap());
        assert_eq!(check(&n, &usage, &big).as_deref(), Some("Insufficient cpu"));
        let small = pod(
            json!({"spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "1"}, "limits": {"nvidia.com/gpu": "1"}}}]}}),
        );
        assert_eq!(
            check(&n, &usage, &small).as_deref(),
            Some("Insufficient nvidia.com/gpu")
        );
        usage.add(&Requests::default());
        let tiny = pod(json!({"spec": {"containers": [{"name": "c"}]}}));
        assert_eq!(check(&n, &usage, &tiny).as_deref(), Some("Too many pods"));
        n.spec.unschedulable = true;
        assert_eq!(
            check(&n, &NodeUsage::default(), &tiny).as_deref(),
            Some("node(s) were unschedulable")
        );
    }

    #[test]
    fn requests_follow_the_init_container_rule() {
        let p = pod(json!({"spec": {
            "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "3"}}}],
            "containers": [{"name": "a", "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}}, {"name": "b", "resources": {"limits": {"cpu": "1"}}}]
        }}));
        let r = pod_requests(&p).unwrap();
        assert_eq!(r.amounts["cpu"], 3000);
        assert_eq!(r.amounts["memory"], 1 << 30);
        let bad = pod(
            json!({"spec": {"containers": [{"name": "a", "resources": {"requests": {"cpu": "lots"}}}]}}),
        );
        assert_eq!(
            pod_requests(&bad).unwrap_err().to_string(),
            "invalid cpu \"lots\": not a Kubernetes quantity"
        );
    }
}
