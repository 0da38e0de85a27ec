//! What kubelet really allocated, reported for the ledger: the agent reads kubelet's
//! PodResources API, maps each whole-device pod's device IDs to node indices, and writes the
//! Node annotation [`ANNOTATION_ALLOCATED_DEVICES`] when it changes. The extender moves a
//! whole-device pod's ledger entry to the devices reported (`core::reconcile`).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::core::node::device_resource;
pub use crate::core::reconcile::{
    AllocatedDevices, ALLOCATED_DEVICES_VERSION, ANNOTATION_ALLOCATED_DEVICES,
};

use super::devices::{DeviceReader, DeviceReading};
use super::pod_resources::{HeldDevices, PodResourcesSource};
use super::report::rfc3339;
use super::run::AnnotationWriter;

/// The node index a device plugin's device ID names: a GPU UUID (`GPU-…`, also with a
/// time-slicing replica suffix `GPU-…::3`), or an Ascend ID ending in the device number
/// (`Ascend910-3`) on a node whose runtime prints no UUIDs. `None` for anything else (MIG
/// instances, unknown devices).
pub fn device_index(id: &str, readings: &[DeviceReading]) -> Option<u32> {
    let base = id.split("::").next().unwrap_or(id);
    if let Some(r) = readings
        .iter()
        .find(|r| !r.uuid.is_empty() && r.uuid == base)
    {
        return Some(r.index);
    }
    let number: u32 = base.rsplit_once('-')?.1.parse().ok()?;
    readings
        .iter()
        .find(|r| r.uuid.is_empty() && r.index == number)
        .map(|r| r.index)
}

/// The report: every pod holding a whole-device resource (`nvidia.com/gpu`, `huawei.com/Ascend…`)
/// with the indices its containers hold together. A pod with a device that cannot be mapped is
/// left out (a partial list would move its ledger entry wrongly).
pub fn allocated_devices(
    held: &[HeldDevices],
    readings: &[DeviceReading],
    observed_at: SystemTime,
) -> AllocatedDevices {
    let mut pods: BTreeMap<String, Option<Vec<u32>>> = BTreeMap::new();
    for h in held
        .iter()
        .filter(|h| device_resource(&h.resource).is_some())
    {
        let key = format!("{}/{}", h.container.namespace, h.container.pod);
        let entry = pods.entry(key).or_insert_with(|| Some(Vec::new()));
        for id in &h.device_ids {
            match (device_index(id, readings), entry.as_mut()) {
                (Some(index), Some(list)) => list.push(index),
                _ => *entry = None,
            }
        }
    }
    AllocatedDevices {
        version: ALLOCATED_DEVICES_VERSION,
        observed_at: rfc3339(observed_at),
        pods: pods
            .into_iter()
            .filter_map(|(key, list)| {
                let mut list = list?;
                list.sort_unstable();
                list.dedup();
                Some((key, list))
            })
            .collect(),
    }
}

/// What a reporting run did, for logs and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReportStats {
    /// Polls made (each reads the devices and kubelet's allocations).
    pub reads: u64,
    /// Polls whose device read or allocation listing failed.
    pub read_errors: u64,
    /// Annotation writes that succeeded.
    pub writes: u64,
    /// Annotation writes that failed.
    pub write_errors: u64,
}

/// Every `poll`: reads the devices and kubelet's allocations, and writes the annotation when the
/// pods' devices changed since the last successful write (or nothing was written yet). Runs
/// until `shutdown`.
pub async fn run_report(
    reader: Arc<dyn DeviceReader>,
    pod_resources: Arc<dyn PodResourcesSource>,
    writer: &dyn AnnotationWriter,
    poll: Duration,
    shutdown: impl Future<Output = ()>,
) -> ReportStats {
    let mut shutdown = std::pin::pin!(shutdown);
    let mut stats = ReportStats::default();
    let mut written: Option<BTreeMap<String, Vec<u32>>> = None;
    loop {
        let work = async {
            let readings = {
                let reader = Arc::clone(&reader);
                tokio::task::spawn_blocking(move || reader.read()).await
            };
            let held = pod_resources.list().await;
            (readings, held)
        };
        let (readings, held) = tokio::select! {
            _ = &mut shutdown => return stats,
            both = work => both,
        };
        stats.reads += 1;
        match (readings, held) {
            (Ok(Ok(readings)), Ok(held)) => {
                let report = allocated_devices(&held, &readings, SystemTime::now());
                if written.as_ref() != Some(&report.pods) {
                    let value = serde_json::to_string(&report).unwrap_or_default();
                    match writer.write(&value).await {
                        Ok(()) => {
                            stats.writes += 1;
                            tracing::info!(
                                pods = report.pods.len(),
                                "wrote {ANNOTATION_ALLOCATED_DEVICES}"
                            );
                            written = Some(report.pods);
                        }
                        Err(error) => {
                            stats.write_errors += 1;
                            tracing::warn!(%error, "writing {ANNOTATION_ALLOCATED_DEVICES} failed; retrying next poll");
                        }
                    }
                }
            }
            (Ok(Err(error)), _) => {
                stats.read_errors += 1;
                tracing::warn!(%error, "reading devices for the allocation report");
            }
            (Err(join), _) => {
                stats.read_errors += 1;
                tracing::error!(%join, "the device read panicked");
            }
            (_, Err(error)) => {
                stats.read_errors += 1;
                tracing::warn!(%error, "reading kubelet's allocations");
            }
        }
        tokio::select! {
            _ = &mut shutdown => return stats,
            _ = tokio::time::sleep(poll) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::devices::{Health, MigMode};
    use crate::agent::sharing::ContainerKey;

    fn reading(index: u32, uuid: &str) -> DeviceReading {
        DeviceReading {
            index,
            uuid: uuid.into(),
            product: String::new(),
            total_mib: 1,
            used_mib: 0,
            free_mib: 1,
            processes: BTreeMap::new(),
            health: Health::Healthy,
            mig: MigMode::NotSupported,
        }
    }

    fn held(pod: &str, container: &str, resource: &str, ids: &[&str]) -> HeldDevices {
        HeldDevices {
            container: ContainerKey {
                namespace: "ml".into(),
                pod: pod.into(),
                container: container.into(),
            },
            resource: resource.into(),
            device_ids: ids.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn maps_uuids_replicas_and_ascend_ids_to_indices() {
        let gpus = [reading(0, "GPU-a"), reading(1, "GPU-b")];
        assert_eq!(device_index("GPU-b", &gpus), Some(1));
        assert_eq!(device_index("GPU-a::3", &gpus), Some(0));
        assert_eq!(device_index("MIG-x", &gpus), None);
        let npus = [reading(0, ""), reading(5, "")];
        assert_eq!(device_index("Ascend910-5", &npus), Some(5));
        assert_eq!(device_index("Ascend910-2", &npus), None);
    }

    #[test]
    fn whole_device_pods_only_and_never_partial() {
        let gpus = [
            reading(0, "GPU-a"),
            reading(1, "GPU-b"),
            reading(2, "GPU-c"),
        ];
        let report = allocated_devices(
            &[
                held("train", "main", "nvidia.com/gpu", &["GPU-c"]),
                held("train", "side", "nvidia.com/gpu", &["GPU-a"]),
                held("share", "main", "vramfit.io/vram-gib", &["GPU-b::0"]),
                held("odd", "main", "nvidia.com/gpu", &["GPU-b", "MIG-zz"]),
            ],
            &gpus,
            SystemTime::UNIX_EPOCH,
        );
        assert_eq!(report.observed_at, "1970-01-01T00:00:00Z");
        assert_eq!(
            report.pods,
            BTreeMap::from([("ml/train".to_string(), vec![0, 2])])
        );
    }
}
