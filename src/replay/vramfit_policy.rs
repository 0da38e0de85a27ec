//! vramfit's own policy in the replay: the placement core decides, exactly as in the extender.
//!
//! How the trace maps onto the core's device model: every GPU is a device of 1000 units ("MiB"
//! in the core's vocabulary), so `gpu_milli` is VRAM per device in thousandths of a GPU whatever
//! the GPU model (the paper's simulator packs the same way). A pod with `gpu_milli == 1000`
//! requests `num_gpu` whole devices; a pod with less requests that share of one device on a
//! VRAM-sharing node (every openb node shares). `gpu_spec` becomes the product allow-list;
//! headroom is 0 (the trace's shares are already what pods use). CPU and memory are checked by
//! the simulator before the policy is asked, as kube-scheduler does before calling the extender.
//!
//! The workload model is seeded from the trace (every pod's shape, with cpu and memory) before
//! the first pod, as `place` seeds it from its pods file; the mirror gives each node its cpu
//! and memory and counts every placed pod's requests there (`Inventory::hold_host`, as `serve`
//! does for the pods it sees bound), so fragmentation counts GPUs stranded without cpu.
//! A node's score for a pod shape only changes when the node does, so it is kept per (shape,
//! node) and recomputed when the simulator's node epoch moves: the same core computation, done
//! once per change instead of once per pod.

use rand_chacha::ChaCha8Rng;

use super::sim::{Choice, Cluster, Policy};
use super::workload::PodReq;
use crate::core::demand::VramSource;
use crate::core::frag::assess;
use crate::core::host::Host;
use crate::core::node::{
    CapacitySource, Device, DeviceNames, Devices, NodeInfo, Vendor, RESOURCE_NVIDIA_GPU,
};
use crate::core::score::{score_one, Context};
use crate::core::workload::Shape;
use crate::core::{fit_node, Config, Fit, Inventory, Placement, PodDemand, Weights};

/// Units of one GPU in the core's device model.
pub const UNITS_PER_GPU: u64 = 1000;

/// A node's score for one pod shape, valid while the node's epoch is unchanged.
#[derive(Debug, Clone, Copy, Default)]
struct Memo {
    epoch: u64,
    exact: f64,
    /// Chosen devices (at most 8 on openb nodes).
    devices: [u8; 8],
    count: u8,
    fits: bool,
}

/// The core's default profile, deciding pod by pod on a mirror of the simulator's cluster.
pub struct VramfitPolicy {
    config: Config,
    inventory: Option<Inventory>,
    names: Vec<String>,
    placed: u64,
    memo: Vec<Vec<Memo>>,
}

impl VramfitPolicy {
    /// A policy scoring with `config`'s default profile.
    pub fn new(config: Config) -> Self {
        VramfitPolicy {
            config,
            inventory: None,
            names: Vec::new(),
            placed: 0,
            memo: Vec::new(),
        }
    }

    fn mirror(&self, cluster: &Cluster) -> (Inventory, Vec<String>) {
        let mut inventory = Inventory::new();
        inventory.configure_workload(&self.config.workload);
        let mut names = Vec::with_capacity(cluster.nodes().len());
        for (i, node) in cluster.nodes().iter().enumerate() {
            let name = format!("{i:05}-{}", node.name());
            let product: std::sync::Arc<str> = if node.num_gpus() > 0 {
                cluster.model_name(i).into()
            } else {
                "".into()
            };
            let device_names = std::sync::Arc::new(DeviceNames {
                uuid: None,
                product: product.clone(),
                class: product,
            });
            let devices: Devices = node
                .gpu_free()
                .iter()
                .enumerate()
                .map(|(index, free)| Device {
                    index: index as u32,
                    names: device_names.clone(),
                    total_mib: UNITS_PER_GPU,
                    measured_used_mib: UNITS_PER_GPU.saturating_sub(u64::from(*free)),
                    healthy: true,
                    reserved_mib: 0,
                    exclusive_holders: 0,
                    sharers: 0,
                })
                .collect();
            inventory.upsert_node(NodeInfo {
                name: name.clone(),
                zone: None,
                resource: (node.num_gpus() > 0).then_some(RESOURCE_NVIDIA_GPU),
                vendor: Some(Vendor::Nvidia),
                allocatable_devices: u32::from(node.num_gpus()),
                devices,
                sharing: true,
                source: CapacitySource::Report,
                problem: None,
                notes: Vec::new(),
                host: Some(Host {
                    cpu_milli: u64::from(node.cpu_free()),
                    memory_mib: node.mem_free(),
                }),
            });
            names.push(name);
        }
        let shapes: Vec<(Shape, f64)> = cluster
            .pod_shapes()
            .iter()
            .filter_map(|(pod, count)| {
                let demand = demand(cluster, pod);
                Shape::of(&demand).map(|s| (s, f64::from(*count)))
            })
            .collect();
        inventory.observe_batch(shapes);
        (inventory, names)
    }
}

/// The core's demand for a trace pod.
fn demand(cluster: &Cluster, pod: &PodReq) -> PodDemand {
    let whole = pod.num_gpu > 0 && u64::from(pod.gpu_milli) >= UNITS_PER_GPU;
    let products = if pod.models.is_any() {
        Vec::new()
    } else {
        (0..cluster.models().len())
            .filter(|m| pod.models.allows(*m as u8))
            .map(|m| cluster.models()[m].clone())
            .collect()
    };
    PodDemand {
        key: String::new(),
        id: String::new(),
        resource: whole.then_some(RESOURCE_NVIDIA_GPU),
        devices: if whole { u32::from(pod.num_gpu) } else { 0 },
        vram_mib: if pod.num_gpu == 0 {
            0
        } else {
            u64::from(pod.gpu_milli)
        },
        vram_source: if pod.num_gpu == 0 {
            VramSource::Undeclared
        } else {
            VramSource::Annotation
        },
        products,
        headroom_percent: 0,
        model: None,
        scheduler_name: None,
        host: Host {
            cpu_milli: u64::from(pod.cpu_milli),
            memory_mib: pod.memory_mib,
        },
    }
}

/// The core's verdict and score of one node for one pod.
fn judge(
    inventory: &Inventory,
    node: &NodeInfo,
    demand: &PodDemand,
    weights: &Weights,
    config: &Config,
) -> Option<(f64, Fit)> {
    let fit = if demand.is_accelerator_free() {
        Fit::default()
    } else {
        fit_node(node, demand).ok()?
    };
    let (change, fit) = if weights.frag > 0.0 {
        let a = assess(
            node,
            &fit,
            demand,
            demand.host,
            inventory.packing(),
            inventory.frag_state(node),
        );
        (Some(a.change()), a.fit)
    } else {
        (None, fit)
    };
    // Every openb device has the same size, so the references every candidate would share are
    // the pod's own request in whole devices and one device (the smallest chosen device too).
    let context = Context {
        reference: fit.chosen_total_mib,
        smallest_chosen_mib: fit.chosen_total_mib,
        frag_reference: UNITS_PER_GPU,
        steps: config.steps(),
        ..Context::default()
    };
    Some((score_one(&fit, change, &context, weights).exact, fit))
}

impl Policy for VramfitPolicy {
    fn name(&self) -> String {
        "vramfit".into()
    }

    fn select(
        &mut self,
        cluster: &Cluster,
        pod: &PodReq,
        feasible: &[usize],
        _: &mut ChaCha8Rng,
    ) -> Option<Choice> {
        if self.inventory.is_none() {
            let (inventory, names) = self.mirror(cluster);
            self.inventory = Some(inventory);
            self.names = names;
            self.memo = vec![Vec::new(); cluster.num_pod_shapes() as usize];
        }
        let demand = demand(cluster, pod);
        let (_, weights) = self.config.profile_for(None);
        let inventory = self.inventory.as_mut()?;
        let shape = pod.shape as usize;
        if shape >= self.memo.len() {
            self.memo.resize(shape + 1, Vec::new());
        }
        let memo = &mut self.memo[shape];
        if memo.is_empty() {
            memo.resize(cluster.nodes().len(), Memo::default());
        }
        let mut best: Option<(f64, usize)> = None;
        for &i in feasible {
            let epoch = cluster.node(i).epoch();
            if memo[i].epoch != epoch {
                let node = inventory.node(&self.names[i])?;
                memo[i] = match judge(inventory, node, &demand, weights, &self.config) {
                    Some((exact, fit)) => {
                        let mut devices = [0u8; 8];
                        for (slot, &d) in devices.iter_mut().zip(&fit.devices) {
                            *slot = d as u8;
                        }
                        Memo {
                            epoch,
                            exact,
                            devices,
                            count: fit.devices.len().min(8) as u8,
                            fits: true,
                        }
                    }
                    None => Memo {
                        epoch,
                        ..Memo::default()
                    },
                };
            }
            if !memo[i].fits {
                continue;
            }
            // Highest score wins; ties go the way the simulator breaks them for every policy.
            let better = match best {
                None => true,
                Some((score, j)) => memo[i]
                    .exact
                    .total_cmp(&score)
                    .then_with(|| cluster.tie_rank(j).cmp(&cluster.tie_rank(i)))
                    .is_gt(),
            };
            if better {
                best = Some((memo[i].exact, i));
            }
        }
        let (_, node_index) = best?;
        let chosen = memo[node_index];
        let gpus: Vec<u8> = chosen.devices[..usize::from(chosen.count)].to_vec();
        let name = self.names[node_index].clone();
        // Every pod's cpu and memory count on its node, accelerator-free ones included.
        self.placed += 1;
        let id = self.placed.to_string();
        inventory.hold_host(&id, &name, demand.host);
        if !demand.is_accelerator_free() {
            let placement = Placement {
                pod: String::new(),
                node: name,
                zone: None,
                model: None,
                shares: gpus
                    .iter()
                    .map(|&index| crate::core::DeviceShare {
                        index: u32::from(index),
                        vram_mib: demand.vram_mib,
                    })
                    .collect(),
                exclusive: !demand.is_sharing(),
            };
            inventory.commit(&id, placement);
        }
        Some(Choice {
            node: node_index,
            gpus,
        })
    }
}
