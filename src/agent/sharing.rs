//! The pure half of `vramfit device-plugin`: which units the node advertises, which pod a
//! container being started belongs to, and what the container is handed.
//!
//! **Unit.** The plugin advertises [`RESOURCE_VRAM_GIB`]: one unit is 1 GiB of one device's VRAM;
//! a device of `total` MiB gives `total / 1024` units (rounded down), all healthy or all unhealthy
//! with the device. kube-scheduler's in-tree fit then checks GiB per node, vramfit's ledger checks
//! MiB per device; a pod that fits a device by vramfit's count fits the node by kubelet's. Which
//! units kubelet takes does not matter: the device comes from vramfit's assignment.
//!
//! **Handshake.** kubelet's `Allocate` names units, not pods. The container being started is one
//! of the pods bound to this node, still `Pending`, whose container requests exactly that many
//! units and that no allocation covers yet ([`choose`]). When every such candidate would get the
//! same answer (the same devices and limit), that answer is right whichever pod it is. When
//! answers differ, kubelet admits pods in the order they were bound, so the earliest-bound
//! candidate is taken only if it was bound strictly (a whole second) before every candidate with
//! another answer (an unknown bind time is never "later"); otherwise the allocation fails as
//! ambiguous. A candidate without an assignment
//! is never given a device.

use std::collections::{BTreeMap, HashSet};

use crate::core::demand::ANNOTATION_VRAM;
pub use crate::core::demand::RESOURCE_VRAM_GIB;
use crate::core::quantity::parse_mib;
use crate::core::schedule::{parse_assigned_devices, ANNOTATION_ASSIGNED_DEVICES};

use super::devices::{DeviceReading, MigMode};
use super::kubelet_api::deviceplugin::{CdiDevice, ContainerAllocateResponse, Device, Mount};

/// MiB in one unit of [`RESOURCE_VRAM_GIB`].
pub const UNIT_MIB: u64 = 1024;
/// Health strings of the device plugin API.
pub const HEALTHY: &str = "Healthy";
/// See [`HEALTHY`].
pub const UNHEALTHY: &str = "Unhealthy";
/// Environment variable naming the pod a container's devices were handed to (`namespace/name`).
pub const ENV_ALLOCATED_FOR: &str = "VRAMFIT_ALLOCATED_FOR";
/// Environment variable with the VRAM limit per device in MiB, whatever the backend.
pub const ENV_VRAM_LIMIT_MIB: &str = "VRAMFIT_VRAM_LIMIT_MIB";

/// How a device is named to the container runtime: `GPU-…` UUIDs for NVIDIA, `npu<index>`
/// where a runtime prints no UUID (Ascend).
pub fn device_id(reading: &DeviceReading) -> String {
    if reading.uuid.is_empty() {
        format!("npu{}", reading.index)
    } else {
        reading.uuid.clone()
    }
}

/// The units a node advertises in `ListAndWatch`: `<device>::<n>` for n in 0..total/1024, healthy
/// when the device is healthy and not split into MIG instances. Ordered by device index.
pub fn units(readings: &[DeviceReading]) -> Vec<Device> {
    let mut sorted: Vec<&DeviceReading> = readings.iter().collect();
    sorted.sort_by_key(|r| r.index);
    sorted
        .into_iter()
        .flat_map(|r| {
            let healthy = r.health.is_healthy() && r.mig != MigMode::Enabled;
            let id = device_id(r);
            (0..r.total_mib / UNIT_MIB).map(move |n| Device {
                id: format!("{id}::{n}"),
                health: if healthy { HEALTHY } else { UNHEALTHY }.to_string(),
                topology: None,
            })
        })
        .collect()
}

/// A pod bound to this node, as the handshake needs it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodePod {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// Pod UID.
    pub uid: String,
    /// Phase `Pending` and not being deleted: kubelet may still be admitting it.
    pub pending: bool,
    /// Pod annotations (vramfit's assignment among them).
    pub annotations: BTreeMap<String, String>,
    /// Containers (init containers included) requesting [`RESOURCE_VRAM_GIB`], with the units
    /// each requests.
    pub requests: Vec<(String, u64)>,
    /// When it was bound (the `PodScheduled` condition's transition), in Unix seconds.
    pub bound_at: Option<i64>,
}

impl NodePod {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// One container of one pod.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContainerKey {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Container name.
    pub container: String,
}

impl std::fmt::Display for ContainerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{} container {}",
            self.namespace, self.pod, self.container
        )
    }
}

/// What a container is handed: vramfit's devices (node indices) and its VRAM limit per device.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Answer {
    /// Assigned devices, by node index.
    pub indices: Vec<u32>,
    /// VRAM limit per device in MiB.
    pub vram_mib: u64,
}

/// The handshake's result: whose container it is, and its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The container being allocated.
    pub container: ContainerKey,
    /// UID of the container's pod.
    pub pod_uid: String,
    /// The devices and VRAM limit to hand it.
    pub answer: Answer,
}

/// Why an allocation was refused. The text is what kubelet shows on the pod's admission error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocateError {
    /// No pending, unallocated container requests this many units.
    #[error(
        "no pending pod on this node has a container requesting {units} {RESOURCE_VRAM_GIB} \
         that is not allocated yet; was the pod scheduled by a vramfit profile?"
    )]
    NoCandidate {
        /// Units kubelet asked for.
        units: u64,
    },
    /// The matching pod's assigned-devices annotation is absent or malformed.
    #[error(
        "{pod} requests {units} {RESOURCE_VRAM_GIB} but has no valid \
         {ANNOTATION_ASSIGNED_DEVICES} ({reason}); schedule it with a vramfit profile"
    )]
    NoAssignment {
        /// The pod, `namespace/name`.
        pod: String,
        /// Units kubelet asked for.
        units: u64,
        /// What is wrong with the annotation.
        reason: String,
    },
    /// Several pods bound in the same second match with different devices.
    #[error(
        "ambiguous: pods {candidates:?} each request {units} {RESOURCE_VRAM_GIB}, were bound in the \
         same second and were assigned different devices; refusing to guess (the pod fails admission; its controller replaces \
         it)"
    )]
    Ambiguous {
        /// Units kubelet asked for.
        units: u64,
        /// The matching pods, `namespace/name`.
        candidates: Vec<String>,
    },
    /// The pod is assigned a device index this node does not have.
    #[error("{pod} is assigned device {index}, which this node does not have")]
    UnknownDevice {
        /// The pod, `namespace/name`.
        pod: String,
        /// The assigned device index.
        index: u32,
    },
    /// The pod is assigned a device that is unhealthy now.
    #[error("{pod} is assigned device {index}, which is unhealthy now")]
    UnhealthyDevice {
        /// The pod, `namespace/name`.
        pod: String,
        /// The assigned device index.
        index: u32,
    },
    /// kubelet asked for 0 units.
    #[error("kubelet asked for 0 units of {RESOURCE_VRAM_GIB}")]
    Empty,
}

/// The answer vramfit's annotations give a pod's container of `units` units: the assigned
/// devices, and the VRAM per device from `vramfit.io/vram` (written at bind), else the units.
pub fn answer_for(pod: &NodePod, units: u64) -> Result<Answer, AllocateError> {
    let no_assignment = |reason: String| AllocateError::NoAssignment {
        pod: pod.key(),
        units,
        reason,
    };
    let raw = pod
        .annotations
        .get(ANNOTATION_ASSIGNED_DEVICES)
        .ok_or_else(|| no_assignment("absent".into()))?;
    let indices =
        parse_assigned_devices(raw).ok_or_else(|| no_assignment(format!("malformed: {raw:?}")))?;
    let vram_mib = match pod.annotations.get(ANNOTATION_VRAM) {
        Some(v) => parse_mib(v)
            .ok()
            .filter(|mib| *mib > 0)
            .ok_or_else(|| no_assignment(format!("{ANNOTATION_VRAM} {v:?} is not a size")))?,
        None => units.saturating_mul(UNIT_MIB),
    };
    Ok(Answer { indices, vram_mib })
}

/// Picks the container kubelet is starting, for a request of `units` units, among `pods`
/// (this node's), skipping containers in `taken` (already allocated). See the module docs.
pub fn choose(
    units: u64,
    pods: &[NodePod],
    taken: &HashSet<ContainerKey>,
) -> Result<Grant, AllocateError> {
    if units == 0 {
        return Err(AllocateError::Empty);
    }
    let mut candidates: Vec<(&NodePod, ContainerKey, Result<Answer, AllocateError>)> = pods
        .iter()
        .filter(|p| p.pending)
        .flat_map(|p| {
            p.requests
                .iter()
                .filter(move |(_, n)| *n == units)
                .map(move |(container, _)| {
                    let key = ContainerKey {
                        namespace: p.namespace.clone(),
                        pod: p.name.clone(),
                        container: container.clone(),
                    };
                    (p, key)
                })
        })
        .filter(|(_, key)| !taken.contains(key))
        .map(|(p, key)| (p, key, answer_for(p, units)))
        .collect();
    // Earliest bound first; unknown bind times last; then by name for a stable order.
    candidates.sort_by(|a, b| {
        (a.0.bound_at.is_none(), a.0.bound_at, &a.1).cmp(&(
            b.0.bound_at.is_none(),
            b.0.bound_at,
            &b.1,
        ))
    });
    let Some((first, _, first_answer)) = candidates.first() else {
        return Err(AllocateError::NoCandidate { units });
    };
    let others_differ: Vec<_> = candidates
        .iter()
        .skip(1)
        .filter(|(_, _, answer)| answer != first_answer)
        .collect();
    let strictly_first = match first.bound_at {
        Some(t) => others_differ
            .iter()
            .all(|(p, _, _)| p.bound_at.is_some_and(|other| other > t)),
        None => others_differ.is_empty(),
    };
    if !strictly_first {
        return Err(AllocateError::Ambiguous {
            units,
            candidates: candidates.iter().map(|(p, _, _)| p.key()).collect(),
        });
    }
    let (pod, container, answer) = candidates.swap_remove(0);
    Ok(Grant {
        container,
        pod_uid: pod.uid.clone(),
        answer: answer?,
    })
}

/// The device identities (`GPU-…`, `npu<i>`) for `answer`'s indices on this node.
pub fn devices_for(
    pod: &str,
    answer: &Answer,
    readings: &[DeviceReading],
) -> Result<Vec<String>, AllocateError> {
    answer
        .indices
        .iter()
        .map(|&index| {
            let reading = readings.iter().find(|r| r.index == index).ok_or_else(|| {
                AllocateError::UnknownDevice {
                    pod: pod.to_string(),
                    index,
                }
            })?;
            if !reading.health.is_healthy() {
                return Err(AllocateError::UnhealthyDevice {
                    pod: pod.to_string(),
                    index,
                });
            }
            Ok(device_id(reading))
        })
        .collect()
}

/// Whose devices these are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    /// NVIDIA: `NVIDIA_VISIBLE_DEVICES=<uuid>`, or CDI names `nvidia.com/gpu=<uuid>` with
    /// `cdi: true` (runtimes with CDI enabled: containerd 1.7+, CRI-O 1.23+).
    Nvidia {
        /// Name devices through CDI instead of `NVIDIA_VISIBLE_DEVICES`.
        cdi: bool,
    },
    /// Ascend: `ASCEND_VISIBLE_DEVICES=<index>` for Ascend Docker Runtime.
    Ascend,
}

/// How the VRAM limit is enforced on the node (`--backend`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// CUDA MPS: the client's pinned device memory limit
    /// (`CUDA_MPS_PINNED_DEVICE_MEM_LIMIT`), talking to the node's MPS control daemon through
    /// its pipe directory, mounted into the container.
    Mps {
        /// The MPS pipe directory on the host, mounted at the same path.
        pipe_dir: String,
    },
    /// HAMi-core (`libvgpu.so`, preloaded): `CUDA_DEVICE_MEMORY_LIMIT_<i>`. The library and an
    /// `ld.so.preload` naming it are mounted read-only from `library_dir` on the host.
    HamiCore {
        /// Host directory holding `libvgpu.so` and `ld.so.preload`.
        library_dir: String,
    },
    /// Placement only: the container sees its device, nothing limits its memory.
    None,
}

/// Where HAMi-core's library is mounted in the container.
pub const HAMI_CORE_LIBRARY: &str = "/usr/local/vgpu/libvgpu.so";

/// Turns a grant into the container's `Allocate` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handover {
    /// Whose devices these are.
    pub vendor: Vendor,
    /// How the VRAM limit is enforced.
    pub backend: Backend,
}

impl Handover {
    /// The container's devices, limit and mounts. `devices` are [`devices_for`]'s identities.
    pub fn response(&self, grant: &Grant, devices: &[String]) -> ContainerAllocateResponse {
        let mut response = ContainerAllocateResponse::default();
        let env = &mut response.envs;
        let joined = devices.join(",");
        match self.vendor {
            Vendor::Nvidia { cdi: false } => {
                env.insert("NVIDIA_VISIBLE_DEVICES".into(), joined);
            }
            Vendor::Nvidia { cdi: true } => {
                // An image's own NVIDIA_VISIBLE_DEVICES=all must not add devices beside CDI's.
                env.insert("NVIDIA_VISIBLE_DEVICES".into(), "void".into());
                response.cdi_devices = devices
                    .iter()
                    .map(|d| CdiDevice {
                        name: format!("nvidia.com/gpu={d}"),
                    })
                    .collect();
            }
            Vendor::Ascend => {
                let indices: Vec<String> =
                    grant.answer.indices.iter().map(u32::to_string).collect();
                env.insert("ASCEND_VISIBLE_DEVICES".into(), indices.join(","));
            }
        }
        let mib = grant.answer.vram_mib;
        let env = &mut response.envs;
        env.insert(
            ENV_ALLOCATED_FOR.into(),
            format!("{}/{}", grant.container.namespace, grant.container.pod),
        );
        env.insert(ENV_VRAM_LIMIT_MIB.into(), mib.to_string());
        // Inside the container the visible devices are numbered 0..n.
        let ordinals = 0..devices.len();
        match &self.backend {
            Backend::Mps { pipe_dir } => {
                let limits: Vec<String> = ordinals.map(|i| format!("{i}={mib}M")).collect();
                env.insert("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT".into(), limits.join(","));
                env.insert("CUDA_MPS_PIPE_DIRECTORY".into(), pipe_dir.clone());
                response.mounts.push(Mount {
                    container_path: pipe_dir.clone(),
                    host_path: pipe_dir.clone(),
                    read_only: false,
                });
            }
            Backend::HamiCore { library_dir } => {
                for i in ordinals {
                    env.insert(format!("CUDA_DEVICE_MEMORY_LIMIT_{i}"), format!("{mib}m"));
                }
                env.insert(
                    "CUDA_DEVICE_MEMORY_SHARED_CACHE".into(),
                    format!("/tmp/vramfit-{}.cache", grant.pod_uid),
                );
                let library_dir = library_dir.trim_end_matches('/');
                response.mounts.push(Mount {
                    container_path: HAMI_CORE_LIBRARY.into(),
                    host_path: format!("{library_dir}/libvgpu.so"),
                    read_only: true,
                });
                response.mounts.push(Mount {
                    container_path: "/etc/ld.so.preload".into(),
                    host_path: format!("{library_dir}/ld.so.preload"),
                    read_only: true,
                });
            }
            Backend::None => {}
        }
        response.annotations.insert(
            "vramfit.io/allocated-for".into(),
            format!("{}/{}", grant.container.namespace, grant.container.pod),
        );
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::devices::Health;

    fn reading(index: u32, total_mib: u64, health: Health) -> DeviceReading {
        DeviceReading {
            index,
            uuid: format!("GPU-{index}"),
            product: "Tesla T4".into(),
            total_mib,
            used_mib: 0,
            free_mib: total_mib,
            processes: BTreeMap::new(),
            health,
            mig: MigMode::NotSupported,
        }
    }

    fn pod(name: &str, units: u64, assigned: Option<&str>, bound_at: Option<i64>) -> NodePod {
        let mut annotations = BTreeMap::new();
        if let Some(a) = assigned {
            annotations.insert(ANNOTATION_ASSIGNED_DEVICES.to_string(), a.to_string());
            annotations.insert(ANNOTATION_VRAM.to_string(), format!("{}Mi", units * 1024));
        }
        NodePod {
            namespace: "ml".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            pending: true,
            annotations,
            requests: vec![("main".into(), units)],
            bound_at,
        }
    }

    #[test]
    fn units_follow_size_and_health() {
        let u = units(&[
            reading(1, 2048, Health::Unhealthy("xid".into())),
            reading(0, 15360, Health::Healthy),
        ]);
        assert_eq!(u.len(), 17);
        assert_eq!(u[0].id, "GPU-0::0");
        assert!(u[..15].iter().all(|d| d.health == HEALTHY));
        assert_eq!(u[15].id, "GPU-1::0");
        assert!(u[15..].iter().all(|d| d.health == UNHEALTHY));
    }

    #[test]
    fn same_answer_is_safe_whichever_pod() {
        let pods = [
            pod("a", 4, Some("0"), Some(10)),
            pod("b", 4, Some("0"), Some(10)),
        ];
        let g = choose(4, &pods, &HashSet::new()).unwrap();
        assert_eq!(g.container.pod, "a");
        assert_eq!(
            g.answer,
            Answer {
                indices: vec![0],
                vram_mib: 4096
            }
        );
        let taken = HashSet::from([g.container]);
        assert_eq!(choose(4, &pods, &taken).unwrap().container.pod, "b");
    }

    #[test]
    fn different_answers_need_a_strict_bind_order() {
        let pods = [
            pod("b", 4, Some("1"), Some(11)),
            pod("a", 4, Some("0"), Some(10)),
        ];
        let g = choose(4, &pods, &HashSet::new()).unwrap();
        assert_eq!(
            (g.container.pod.as_str(), g.answer.indices.as_slice()),
            ("a", &[0][..])
        );
        let tied = [
            pod("b", 4, Some("1"), Some(10)),
            pod("a", 4, Some("0"), Some(10)),
        ];
        let e = choose(4, &tied, &HashSet::new()).unwrap_err();
        assert!(matches!(e, AllocateError::Ambiguous { .. }), "{e}");
        assert!(e.to_string().contains("refusing to guess"));
        // An unknown bind time is not "later".
        let unknown = [
            pod("b", 4, Some("1"), None),
            pod("a", 4, Some("0"), Some(10)),
        ];
        assert!(matches!(
            choose(4, &unknown, &HashSet::new()).unwrap_err(),
            AllocateError::Ambiguous { .. }
        ));
    }

    #[test]
    fn sizes_tell_pods_apart() {
        let pods = [
            pod("small", 2, Some("1"), Some(10)),
            pod("big", 6, Some("0"), Some(10)),
        ];
        assert_eq!(
            choose(6, &pods, &HashSet::new()).unwrap().container.pod,
            "big"
        );
        assert_eq!(
            choose(2, &pods, &HashSet::new()).unwrap().container.pod,
            "small"
        );
        assert_eq!(
            choose(3, &pods, &HashSet::new()).unwrap_err(),
            AllocateError::NoCandidate { units: 3 }
        );
    }

    #[test]
    fn an_unassigned_pod_is_never_given_a_device() {
        let alone = [pod("x", 4, None, Some(10))];
        let e = choose(4, &alone, &HashSet::new()).unwrap_err();
        assert!(matches!(e, AllocateError::NoAssignment { .. }), "{e}");
        assert!(e.to_string().contains("vramfit.io/assigned-devices"));
        // Bound in the same second as an assigned pod: it might be the one kubelet admits.
        let mixed = [
            pod("x", 4, None, Some(10)),
            pod("y", 4, Some("0"), Some(10)),
        ];
        assert!(matches!(
            choose(4, &mixed, &HashSet::new()).unwrap_err(),
            AllocateError::Ambiguous { .. }
        ));
    }

    #[test]
    fn running_pods_are_not_candidates() {
        let mut running = pod("r", 4, Some("0"), Some(1));
        running.pending = false;
        assert_eq!(
            choose(4, &[running], &HashSet::new()).unwrap_err(),
            AllocateError::NoCandidate { units: 4 }
        );
    }

    #[test]
    fn devices_are_checked_against_the_node() {
        let readings = [
            reading(0, 15360, Health::Healthy),
            reading(1, 15360, Health::Unhealthy("x".into())),
        ];
        let answer = |i| Answer {
            indices: vec![i],
            vram_mib: 1,
        };
        assert_eq!(devices_for("p", &answer(0), &readings).unwrap(), ["GPU-0"]);
        assert!(matches!(
            devices_for("p", &answer(1), &readings),
            Err(AllocateError::UnhealthyDevice { index: 1, .. })
        ));
        assert!(matches!(
            devices_for("p", &answer(7), &readings),
            Err(AllocateError::UnknownDevice { index: 7, .. })
        ));
    }

    fn grant() -> Grant {
        Grant {
            container: ContainerKey {
                namespace: "ml".into(),
                pod: "p".into(),
                container: "main".into(),
            },
            pod_uid: "u1".into(),
            answer: Answer {
                indices: vec![1],
                vram_mib: 4096,
            },
        }
    }

    #[test]
    fn backends_set_their_limits() {
        let devices = ["GPU-1".to_string()];
        let mps = Handover {
            vendor: Vendor::Nvidia { cdi: false },
            backend: Backend::Mps {
                pipe_dir: "/run/nvidia/mps".into(),
            },
        }
        .response(&grant(), &devices);
        assert_eq!(mps.envs["NVIDIA_VISIBLE_DEVICES"], "GPU-1");
        assert_eq!(mps.envs["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"], "0=4096M");
        assert_eq!(mps.envs["CUDA_MPS_PIPE_DIRECTORY"], "/run/nvidia/mps");
        assert_eq!(mps.mounts[0].host_path, "/run/nvidia/mps");

        let hami = Handover {
            vendor: Vendor::Nvidia { cdi: true },
            backend: Backend::HamiCore {
                library_dir: "/usr/local/vgpu/".into(),
            },
        }
        .response(&grant(), &devices);
        assert_eq!(hami.envs["NVIDIA_VISIBLE_DEVICES"], "void");
        assert_eq!(hami.cdi_devices[0].name, "nvidia.com/gpu=GPU-1");
        assert_eq!(hami.envs["CUDA_DEVICE_MEMORY_LIMIT_0"], "4096m");
        assert_eq!(hami.mounts[0].host_path, "/usr/local/vgpu/libvgpu.so");
        assert!(hami.mounts.iter().all(|m| m.read_only));

        let none = Handover {
            vendor: Vendor::Ascend,
            backend: Backend::None,
        }
        .response(&grant(), &["npu1".to_string()]);
        assert_eq!(none.envs["ASCEND_VISIBLE_DEVICES"], "1");
        assert_eq!(none.envs[ENV_ALLOCATED_FOR], "ml/p");
        assert!(none.mounts.is_empty());
        assert!(!none.envs.keys().any(|k| k.starts_with("CUDA_")));
    }
}
