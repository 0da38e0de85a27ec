//! vramfit's own policy in the replay: the placement core decides, exactly as in the extender.
//!
//! How the trace maps onto the core's device model: every GPU is a device of 1000 units ("MiB"
//! in the core's vocabulary), so `gpu_milli` is VRAM per device in thousandths of a GPU whatever
//! the GPU model (the paper's simulator packs the same way). A pod with `gpu_milli == 1000`
//! requests `num_gpu` whole devices; a pod with less requests that share of one device on a
//! VRAM-sharing node (every openb node shares). `gpu_spec` becomes the product allow-list;
//! headroom is 0 (the trace's shares are already what pods use). CPU and memory are checked by
//! the simulator before the policy is asked, as kube-scheduler does before calling the extender.

use rand_chacha::ChaCha8Rng;

use super::sim::{Choice, Cluster, Policy};
use super::workload::PodReq;
use crate::core::demand::VramSource;
use crate::core::node::{
    CapacitySource, Device, DeviceNames, Devices, NodeInfo, Vendor, RESOURCE_NVIDIA_GPU,
};
use crate::core::score::score_candidates;
use crate::core::{fit_node, Config, Fit, Inventory, Placement, PodDemand};

/// Units of one GPU in the core's device model.
pub const UNITS_PER_GPU: u64 = 1000;

/// The core's default profile, deciding pod by pod on a mirror of the simulator's cluster.
pub struct VramfitPolicy {
    config: Config,
    inventory: Option<Inventory>,
    names: Vec<String>,
    placed: u64,
}

impl VramfitPolicy {
    /// A policy scoring with `config`'s default profile.
    pub fn new(config: Config) -> Self {
        VramfitPolicy {
            config,
            inventory: None,
            names: Vec::new(),
            placed: 0,
        }
    }

    fn mirror(cluster: &Cluster) -> (Inventory, Vec<String>) {
        let mut inventory = Inventory::new();
        let mut names = Vec::with_capacity(cluster.nodes().len());
        for (i, node) in cluster.nodes().iter().enumerate() {
            let name = format!("{i:05}-{}", node.name());
            let product: std::sync::Arc<str> = if node.num_gpus() > 0 {
                cluster.model_name(usize::from(node.model_id())).into()
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
            });
            names.push(name);
        }
        (inventory, names)
    }

    fn demand(&self, cluster: &Cluster, pod: &PodReq) -> PodDemand {
        let whole = pod.num_gpu > 0 && u64::from(pod.gpu_milli) >= UNITS_PER_GPU;
        let products = if pod.models.is_any() {
            Vec::new()
        } else {
            (0..cluster.models().len())
                .filter(|m| pod.models.allows(*m as u8))
                .map(|m| cluster.model_name(m).to_string())
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
        }
    }
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
            let (inventory, names) = Self::mirror(cluster);
            self.inventory = Some(inventory);
            self.names = names;
        }
        let demand = self.demand(cluster, pod);
        let inventory = self.inventory.as_mut()?;
        let fits: Vec<(usize, &NodeInfo, Fit)> = feasible
            .iter()
            .filter_map(|&i| {
                let node = inventory.node(&self.names[i])?;
                let fit = if demand.is_accelerator_free() {
                    Fit::default()
                } else {
                    fit_node(node, &demand).ok()?
                };
                Some((i, node, fit))
            })
            .collect();
        let candidates: Vec<(&NodeInfo, &Fit)> = fits.iter().map(|(_, n, f)| (*n, f)).collect();
        let (_, weights) = self.config.profile_for(None);
        let scores = score_candidates(&candidates, None, weights);
        // Highest score wins; ties go the way the simulator breaks them for every policy.
        let best = (0..fits.len()).max_by(|&a, &b| {
            scores[a].exact.total_cmp(&scores[b].exact).then_with(|| {
                cluster
                    .tie_rank(fits[b].0)
                    .cmp(&cluster.tie_rank(fits[a].0))
            })
        })?;
        let (node_index, _, fit) = &fits[best];
        let choice = Choice {
            node: *node_index,
            gpus: fit.devices.iter().map(|&d| d as u8).collect(),
        };
        if !demand.is_accelerator_free() {
            self.placed += 1;
            let placement = Placement {
                pod: String::new(),
                node: self.names[*node_index].clone(),
                zone: None,
                model: None,
                shares: fit.shares(),
                exclusive: fit.exclusive,
            };
            inventory.commit(&self.placed.to_string(), placement);
        }
        Some(choice)
    }
}
