//! kubelet's PodResources API (`List`): which devices each container really holds, as kubelet
//! allocated them. Read over the unix socket under `/var/lib/kubelet/pod-resources/`.

use std::path::{Path, PathBuf};

use futures::future::BoxFuture;

use super::kubelet_api::connect;
use super::kubelet_api::podresources::pod_resources_lister_client::PodResourcesListerClient;
use super::kubelet_api::podresources::{ListPodResourcesRequest, ListPodResourcesResponse};
use super::sharing::ContainerKey;

/// Devices of one resource held by one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldDevices {
    /// The container holding the devices.
    pub container: ContainerKey,
    /// Extended resource name (`nvidia.com/gpu`, `vramfit.io/vram-gib`).
    pub resource: String,
    /// Device IDs as the resource's device plugin named them.
    pub device_ids: Vec<String>,
}

/// Why the PodResources API could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PodResourcesError {
    /// The socket could not be connected to.
    #[error("connecting to kubelet's PodResources socket {path}: {source}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The underlying transport error.
        #[source]
        source: tonic::transport::Error,
    },
    /// kubelet answered the `List` call with an error.
    #[error("kubelet PodResources List: {0}")]
    List(#[from] tonic::Status),
}

/// Flattens a `List` answer into one entry per container and resource; entries without devices
/// are left out.
pub fn held_devices(response: ListPodResourcesResponse) -> Vec<HeldDevices> {
    let mut held = Vec::new();
    for pod in response.pod_resources {
        for container in pod.containers {
            for devices in container.devices {
                if devices.device_ids.is_empty() {
                    continue;
                }
                held.push(HeldDevices {
                    container: ContainerKey {
                        namespace: pod.namespace.clone(),
                        pod: pod.name.clone(),
                        container: container.name.clone(),
                    },
                    resource: devices.resource_name,
                    device_ids: devices.device_ids,
                });
            }
        }
    }
    held
}

/// Lists what kubelet allocated (where to ask is the implementation's business).
pub trait PodResourcesSource: Send + Sync {
    /// Devices kubelet has allocated, one entry per container and resource.
    fn list(&self) -> BoxFuture<'_, Result<Vec<HeldDevices>, PodResourcesError>>;
}

/// kubelet's PodResources socket; connects anew on every call (kubelet restarts replace it).
#[derive(Debug, Clone)]
pub struct PodResourcesSocket {
    path: PathBuf,
}

impl PodResourcesSocket {
    /// The PodResources socket at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        PodResourcesSocket { path: path.into() }
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl PodResourcesSource for PodResourcesSocket {
    fn list(&self) -> BoxFuture<'_, Result<Vec<HeldDevices>, PodResourcesError>> {
        Box::pin(async move {
            let channel =
                connect(&self.path)
                    .await
                    .map_err(|source| PodResourcesError::Connect {
                        path: self.path.clone(),
                        source,
                    })?;
            let response = PodResourcesListerClient::new(channel)
                .list(ListPodResourcesRequest {})
                .await?;
            Ok(held_devices(response.into_inner()))
        })
    }
}
