//! Making a placement real: the [`Binder`] trait, [`KubeBinder`] (a Binding through the API
//! server, carrying the device assignment) and [`RecordOnly`] (snapshot mode, memory only).

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Pod as ApiPod;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::{json, Value};

use crate::core::deletion::ANNOTATION_DELETION_COST;
use crate::core::demand::ANNOTATION_VRAM;
use crate::core::schedule::ANNOTATION_ASSIGNED_DEVICES;
use crate::core::Placement;

/// Identifies the pod of a bind call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindTarget {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// Pod UID.
    pub uid: String,
    /// The node to bind to.
    pub node: String,
}

/// Why a binder could not make a placement real.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindFailure {
    /// What went wrong, in words.
    pub message: String,
    /// The API server answered that the binding was not made (a 4xx). When false (a timeout,
    /// a dropped connection, a 5xx) the binding may have happened: the reservation is kept
    /// until the pod watch or the reservation TTL settles it.
    pub definite: bool,
}

/// Why a deletion cost could not be written onto a pod.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CostWriteError {
    /// The pod no longer exists (404).
    #[error("the pod no longer exists")]
    Gone,
    /// Any other failure, in words; the refresher retries.
    #[error("{0}")]
    Failed(String),
}

/// Makes a committed placement real (creates the Binding), or says why not. `deletion_cost`
/// is the pod's `controller.kubernetes.io/pod-deletion-cost` (see `core::deletion`), if any.
pub trait Binder: Send + Sync {
    /// Creates the Binding of `target` to its node, annotated with `placement` and `deletion_cost`.
    fn bind<'a>(
        &'a self,
        target: &'a BindTarget,
        placement: &'a Placement,
        deletion_cost: Option<i64>,
    ) -> BoxFuture<'a, Result<(), BindFailure>>;

    /// Rewrites a bound pod's `controller.kubernetes.io/pod-deletion-cost` (the refresher in
    /// `extender::deletion`); the value is clamped to int32 as at bind.
    fn set_deletion_cost<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        cost: i64,
    ) -> BoxFuture<'a, Result<(), CostWriteError>>;
}

/// The annotation value of a deletion cost: the API server only accepts an int32.
pub fn deletion_cost_value(cost: i64) -> String {
    cost.clamp(i64::from(i32::MIN), i64::from(i32::MAX))
        .to_string()
}

/// The annotations a Binding carries so the API server writes the assignment onto the pod with
/// the node: `vramfit.io/assigned-devices` (`0,1`) and, when the pod needs VRAM, `vramfit.io/vram`
/// per device in MiB. A restarted extender rebuilds the ledger from them. With a
/// `deletion_cost`, also `controller.kubernetes.io/pod-deletion-cost`, which the ReplicaSet
/// controller reads on scale-down. An accelerator-free pod holds no device and gets none.
pub fn binding_annotations(
    placement: &Placement,
    deletion_cost: Option<i64>,
) -> BTreeMap<String, String> {
    let mut annotations = BTreeMap::new();
    if placement.shares.is_empty() {
        return annotations;
    }
    if let Some(cost) = deletion_cost {
        annotations.insert(
            ANNOTATION_DELETION_COST.to_string(),
            deletion_cost_value(cost),
        );
    }
    let devices: Vec<String> = placement
        .shares
        .iter()
        .map(|s| s.index.to_string())
        .collect();
    annotations.insert(ANNOTATION_ASSIGNED_DEVICES.to_string(), devices.join(","));
    if let Some(vram) = placement
        .shares
        .first()
        .map(|s| s.vram_mib)
        .filter(|v| *v > 0)
    {
        annotations.insert(ANNOTATION_VRAM.to_string(), format!("{vram}Mi"));
    }
    annotations
}

/// Snapshot mode: the placement lives in memory only.
pub struct RecordOnly;

impl Binder for RecordOnly {
    fn bind<'a>(
        &'a self,
        _: &'a BindTarget,
        _: &'a Placement,
        _: Option<i64>,
    ) -> BoxFuture<'a, Result<(), BindFailure>> {
        Box::pin(async { Ok(()) })
    }

    fn set_deletion_cost<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
        _: i64,
    ) -> BoxFuture<'a, Result<(), CostWriteError>> {
        Box::pin(async { Ok(()) })
    }
}

/// Creates Bindings through the API server (RBAC: `create` on `pods/binding`) and rewrites
/// bound pods' deletion costs (`patch` on `pods`).
pub struct KubeBinder {
    client: Client,
    timeout: Duration,
}

impl KubeBinder {
    /// A binder that gives the API server `timeout` per binding (keep it well under
    /// kube-scheduler's `httpTimeout`).
    pub fn new(client: Client, timeout: Duration) -> Self {
        KubeBinder { client, timeout }
    }
}

/// The Binding object for a placement.
pub fn binding_object(
    target: &BindTarget,
    placement: &Placement,
    deletion_cost: Option<i64>,
) -> Value {
    let mut metadata = json!({
        "name": target.name,
        "namespace": target.namespace,
        "annotations": binding_annotations(placement, deletion_cost),
    });
    if !target.uid.is_empty() {
        metadata["uid"] = json!(target.uid);
    }
    json!({
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": metadata,
        "target": {"apiVersion": "v1", "kind": "Node", "name": target.node},
    })
}

impl Binder for KubeBinder {
    fn bind<'a>(
        &'a self,
        target: &'a BindTarget,
        placement: &'a Placement,
        deletion_cost: Option<i64>,
    ) -> BoxFuture<'a, Result<(), BindFailure>> {
        Box::pin(async move {
            let api: Api<ApiPod> = Api::namespaced(self.client.clone(), &target.namespace);
            let body = binding_object(target, placement, deletion_cost);
            let params = PostParams::default();
            let call =
                api.create_subresource::<Value, Value>("binding", &target.name, &params, &body);
            match tokio::time::timeout(self.timeout, call).await {
                Err(_) => Err(BindFailure {
                    message: format!("the API server did not answer within {:?}", self.timeout),
                    definite: false,
                }),
                Ok(Ok(_)) => Ok(()),
                Ok(Err(kube::Error::Api(status))) => {
                    let same_node = format!("already assigned to node \"{}\"", target.node);
                    if status.code == 409 && status.message.contains(&same_node) {
                        return Ok(());
                    }
                    Err(BindFailure {
                        message: format!("{} ({})", status.message, status.code),
                        definite: (400..500).contains(&status.code),
                    })
                }
                Ok(Err(other)) => Err(BindFailure {
                    message: other.to_string(),
                    definite: false,
                }),
            }
        })
    }

    fn set_deletion_cost<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        cost: i64,
    ) -> BoxFuture<'a, Result<(), CostWriteError>> {
        Box::pin(async move {
            let api: Api<ApiPod> = Api::namespaced(self.client.clone(), namespace);
            let patch = json!({"metadata": {"annotations": {
                ANNOTATION_DELETION_COST: deletion_cost_value(cost),
            }}});
            let params = PatchParams::default();
            let patch = Patch::Merge(&patch);
            let call = api.patch(name, &params, &patch);
            match tokio::time::timeout(self.timeout, call).await {
                Err(_) => Err(CostWriteError::Failed(format!(
                    "the API server did not answer within {:?}",
                    self.timeout
                ))),
                Ok(Ok(_)) => Ok(()),
                Ok(Err(kube::Error::Api(status))) if status.code == 404 => {
                    Err(CostWriteError::Gone)
                }
                Ok(Err(kube::Error::Api(status))) => Err(CostWriteError::Failed(format!(
                    "{} ({})",
                    status.message, status.code
                ))),
                Ok(Err(other)) => Err(CostWriteError::Failed(other.to_string())),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::DeviceShare;

    fn placement(shares: Vec<DeviceShare>) -> Placement {
        Placement {
            pod: "ml/p".into(),
            node: "gpu-1".into(),
            zone: Some("a".into()),
            model: Some("sdxl".into()),
            shares,
            exclusive: true,
        }
    }

    #[test]
    fn the_deletion_cost_rides_on_the_binding_within_int32() {
        let held = placement(vec![DeviceShare {
            index: 1,
            vram_mib: 12288,
        }]);
        let annotations = binding_annotations(&held, Some(-1_000_002));
        assert_eq!(annotations[ANNOTATION_DELETION_COST], "-1000002");
        assert_eq!(annotations[ANNOTATION_ASSIGNED_DEVICES], "1");
        let clamped = binding_annotations(&held, Some(i64::MIN));
        assert_eq!(clamped[ANNOTATION_DELETION_COST], i32::MIN.to_string());
        assert!(!binding_annotations(&held, None).contains_key(ANNOTATION_DELETION_COST));
        // A pod holding no device gets no annotation at all.
        assert!(binding_annotations(&placement(Vec::new()), Some(-3)).is_empty());
    }
}
