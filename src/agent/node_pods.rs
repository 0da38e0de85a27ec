//! The pods bound to this node, as the device plugin's handshake sees them
//! ([`NodePod`]), read from the API server (RBAC: `list` on `pods`).

use std::future::Future;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};

use crate::core::node::LABEL_SHARING;
use crate::core::quantity::parse_count;

use super::sharing::{NodePod, RESOURCE_VRAM_GIB};

/// Lists the pods bound to this node.
pub trait NodePods: Send + Sync {
    /// The pods currently bound to this node.
    fn list(&self) -> BoxFuture<'_, Result<Vec<NodePod>, kube::Error>>;
}

/// Lists pods with the field selector `spec.nodeName=<node>`, all namespaces.
pub struct KubeNodePods {
    api: Api<Pod>,
    node: String,
}

impl KubeNodePods {
    /// Lists the pods bound to `node`, through `client`.
    pub fn new(client: kube::Client, node: impl Into<String>) -> Self {
        KubeNodePods {
            api: Api::all(client),
            node: node.into(),
        }
    }
}

impl NodePods for KubeNodePods {
    fn list(&self) -> BoxFuture<'_, Result<Vec<NodePod>, kube::Error>> {
        Box::pin(async move {
            let params = ListParams::default().fields(&format!("spec.nodeName={}", self.node));
            let pods = self.api.list(&params).await?;
            Ok(pods.items.iter().map(node_pod).collect())
        })
    }
}

/// Waits until `node` carries `vramfit.io/sharing: vram`, asking every `recheck` (RBAC: `get` on
/// `nodes`). `false` when `shutdown` came first.
pub async fn wait_for_sharing_label(
    client: kube::Client,
    node: &str,
    recheck: Duration,
    shutdown: impl Future<Output = ()>,
) -> bool {
    let api: Api<Node> = Api::all(client);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut told = false;
    loop {
        match api.get(node).await {
            Ok(n) => {
                let labels = n.metadata.labels.unwrap_or_default();
                if labels.get(LABEL_SHARING).map(String::as_str) == Some("vram") {
                    return true;
                }
                if !told {
                    tracing::info!(node, "the node is not labelled {LABEL_SHARING}=vram; not advertising until it is");
                    told = true;
                }
            }
            Err(error) => tracing::warn!(node, %error, "reading the node's labels"),
        }
        tokio::select! {
            _ = &mut shutdown => return false,
            _ = tokio::time::sleep(recheck) => {}
        }
    }
}

/// The handshake's view of a pod. Units come from each container's limit of
/// [`RESOURCE_VRAM_GIB`] (else its request; extended resources have them equal); an unreadable
/// quantity counts as no request, so such a container is never matched.
pub fn node_pod(pod: &Pod) -> NodePod {
    let metadata = &pod.metadata;
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let containers = spec
        .into_iter()
        .flat_map(|s| s.init_containers.iter().flatten().chain(&s.containers));
    let requests = containers
        .filter_map(|c| {
            let resources = c.resources.as_ref()?;
            let quantity = resources
                .limits
                .as_ref()
                .and_then(|l| l.get(RESOURCE_VRAM_GIB))
                .or_else(|| resources.requests.as_ref()?.get(RESOURCE_VRAM_GIB))?;
            let units = parse_count(&quantity.0).ok().filter(|n| *n > 0)?;
            Some((c.name.clone(), units))
        })
        .collect();
    let bound_at = status
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "True")
        .and_then(|c| c.last_transition_time.as_ref())
        .map(|t| t.0.as_second());
    NodePod {
        namespace: metadata.namespace.clone().unwrap_or_default(),
        name: metadata.name.clone().unwrap_or_default(),
        uid: metadata.uid.clone().unwrap_or_default(),
        pending: metadata.deletion_timestamp.is_none()
            && status.and_then(|s| s.phase.as_deref()) == Some("Pending"),
        annotations: metadata.annotations.clone().unwrap_or_default(),
        requests,
        bound_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_requests_bind_time_and_phase() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ml", "uid": "u",
                         "annotations": {"vramfit.io/assigned-devices": "1"}},
            "spec": {
                "initContainers": [{"name": "init", "resources": {"limits": {"vramfit.io/vram-gib": "2"}}}],
                "containers": [
                    {"name": "main", "resources": {"limits": {"vramfit.io/vram-gib": "4"}}},
                    {"name": "side"},
                    {"name": "bad", "resources": {"limits": {"vramfit.io/vram-gib": "1.5"}}}
                ]
            },
            "status": {"phase": "Pending", "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-01-01T00:00:10Z"}
            ]}
        }))
        .unwrap();
        let p = node_pod(&pod);
        assert_eq!(p.key(), "ml/p");
        assert!(p.pending);
        assert_eq!(
            p.requests,
            [("init".to_string(), 2), ("main".to_string(), 4)]
        );
        assert_eq!(p.bound_at, Some(1_767_225_610));
        assert_eq!(p.annotations["vramfit.io/assigned-devices"], "1");
    }

    #[test]
    fn a_deleted_or_running_pod_is_not_pending() {
        let running: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"}, "status": {"phase": "Running"}
        }))
        .unwrap();
        assert!(!node_pod(&running).pending);
        let deleting: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "deletionTimestamp": "2026-01-01T00:00:00Z"},
            "status": {"phase": "Pending"}
        }))
        .unwrap();
        assert!(!node_pod(&deleting).pending);
        assert!(node_pod(&Pod::default()).requests.is_empty());
    }
}
