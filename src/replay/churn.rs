//! `replay --churn`: inference Deployments scaled up and down in rounds on a mixed fleet.
//!
//! openb only arrives; inference fleets also shrink. This workload is built in and seeded: a
//! fleet of T4×4 (16 GB), A100×8 (80 GB) and Ascend 910B×8 (64 GB) nodes spread over zones
//! ([`FleetSpec`]), and seven model Deployments ([`MODELS`]) whose replica targets follow a
//! seeded wave with noise for a number of rounds. Each round:
//!
//! 1. every Deployment is scaled to its target. Scaling down deletes pods the way the
//!    ReplicaSet controller picks them (pending first, then pods sharing a node with more
//!    replicas of their model, then the newest by log₂ age, then at random) and releases them
//!    through `Inventory::remove`, the path a deleted pod takes in `serve`; scaling up creates
//!    pending pods;
//! 2. every pending pod (older ones first, this round's in a seeded order) is scheduled once:
//!    under a vramfit profile through `core::schedule::place_where` on a `core::Inventory`, its
//!    demand read by `core::pod_demand` from the pod's facts and nodes built by
//!    `core::build_node` from their labels (the eligible nodes are those with the pod's cpu,
//!    memory and a pod slot free, as kube-scheduler's own filters would pass); under `stock`, as
//!    kube-scheduler without vramfit would (count-only devices, `LeastAllocated` and
//!    `BalancedAllocation` on cpu and memory, the default topology spread, random ties);
//! 3. the round is measured ([`ModelStats`]).
//!
//! The targets, the pods created and their order depend on the seed only, so every scheduler
//! sees the same demand.

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::core::config::Config;
use crate::core::deletion::{deletion_cost, refreshed_costs};
use crate::core::facts::{ContainerResources, NodeFacts, PodFacts};
use crate::core::node::{build_node, NodeInfo, RESOURCE_NVIDIA_GPU};
use crate::core::schedule::{filter, observe, place_where, prioritize, Demand};
use crate::core::score::keeps_zone_skew;
use crate::core::{
    fit_node, pod_demand, Catalog, DemandError, DeviceShare, Inventory, Placement, PodDemand,
};

/// The Ascend device resource of the fleet's 910B nodes.
pub const RESOURCE_ASCEND: &str = "huawei.com/Ascend910";
/// Most rounds one run may have.
pub const MAX_ROUNDS: u32 = 1000;
/// Most zones.
pub const MAX_ZONES: u32 = 64;
/// Most nodes of one class.
pub const MAX_NODES_PER_CLASS: u32 = 10_000;
/// Largest demand multiplier.
pub const MAX_DEMAND: f64 = 10.0;
/// The scheduler name that selects the stock kube-scheduler baseline.
pub const STOCK: &str = "stock";
/// Pods one node takes (kubelet's default `maxPods`).
const MAX_PODS_PER_NODE: u32 = 110;

/// Why a churn replay cannot run.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ChurnError {
    /// `--rounds` out of range.
    #[error("--rounds must be 1..={MAX_ROUNDS}, got {0}")]
    Rounds(u32),
    /// `--demand` out of range.
    #[error("--demand must be a number in (0, {MAX_DEMAND}], got {0}")]
    Demand(f64),
    /// `--zones` out of range.
    #[error("--zones must be 1..={MAX_ZONES}, got {0}")]
    Zones(u32),
    /// `--node-cpu` unreadable or out of range.
    #[error("--node-cpu {0:?}: expected T4,A100,910B cores per node such as 64,128,192 (each 1..={MAX_NODE_CPU})")]
    NodeCpu(String),
    /// `--fleet` unreadable or out of range.
    #[error("--fleet {0:?}: expected T4,A100,910B node counts such as 150,105,45 (each at most {MAX_NODES_PER_CLASS}, not all 0)")]
    Fleet(String),
    /// A scheduler name that is neither a profile nor `stock`.
    #[error(
        "unknown profile {name:?} (known: {known}, each also with {KUBE_SUFFIX}; {STOCK}; all)"
    )]
    Scheduler {
        /// The name given.
        name: String,
        /// The profiles of the config.
        known: String,
    },
    /// A built-in pod's demand was refused by the core (a bug in this module or the config).
    #[error("pod {pod}: {source}")]
    Pod {
        /// The pod.
        pod: String,
        /// The core's reason.
        source: DemandError,
    },
}

/// Node counts per class and the number of zones; nodes of each class are dealt round-robin
/// over the zones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetSpec {
    /// T4×4 nodes (16 GB devices, VRAM-sharing).
    pub t4: u32,
    /// A100×8 nodes (80 GB devices, VRAM-sharing).
    pub a100: u32,
    /// Ascend 910B×8 nodes (64 GB devices, whole devices only).
    pub ascend: u32,
    /// Zones `zone-1` … `zone-N`.
    pub zones: u32,
    /// Allocatable cpu cores of one T4, A100 and 910B node.
    pub cpu: [u32; 3],
}

/// Cores of one T4, A100 and 910B node unless `--node-cpu` says otherwise.
pub const DEFAULT_NODE_CPU: [u32; 3] = [64, 128, 192];

/// Most cores `--node-cpu` accepts for one node.
pub const MAX_NODE_CPU: u32 = 4096;

impl Default for FleetSpec {
    /// The fleet: 150 T4×4, 105 A100×8, 45 910B×8 in three zones.
    fn default() -> Self {
        FleetSpec {
            t4: 150,
            a100: 105,
            ascend: 45,
            zones: 3,
            cpu: DEFAULT_NODE_CPU,
        }
    }
}

impl FleetSpec {
    /// Parses `T4,A100,910B` node counts (`150,105,45`) for `zones` zones.
    pub fn parse(text: &str, zones: u32) -> Result<Self, ChurnError> {
        if !(1..=MAX_ZONES).contains(&zones) {
            return Err(ChurnError::Zones(zones));
        }
        let counts = per_class(text)
            .filter(|c| c.iter().all(|&c| c <= MAX_NODES_PER_CLASS) && c.iter().any(|&c| c > 0))
            .ok_or_else(|| ChurnError::Fleet(crate::core::node::clip(text)))?;
        let [t4, a100, ascend] = counts;
        Ok(FleetSpec {
            t4,
            a100,
            ascend,
            zones,
            cpu: DEFAULT_NODE_CPU,
        })
    }

    /// Sets the cores of one T4, A100 and 910B node from `T4,A100,910B` (`16,48,64`).
    pub fn with_node_cpu(mut self, text: &str) -> Result<Self, ChurnError> {
        self.cpu = per_class(text)
            .filter(|c| c.iter().all(|&c| (1..=MAX_NODE_CPU).contains(&c)))
            .ok_or_else(|| ChurnError::NodeCpu(crate::core::node::clip(text)))?;
        Ok(self)
    }

    fn devices(&self, class: Class) -> u32 {
        match class {
            Class::T4 => self.t4 * 4,
            Class::A100 => self.a100 * 8,
            Class::Ascend => self.ascend * 8,
        }
    }
}

/// Three comma-separated numbers, one per class (`T4,A100,910B`); `None` otherwise.
fn per_class(text: &str) -> Option<[u32; 3]> {
    let numbers: Vec<u32> = text
        .split(',')
        .map(|s| s.trim().parse::<u32>())
        .collect::<Result<_, _>>()
        .ok()?;
    numbers.try_into().ok()
}

/// A node class of the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Class {
    /// T4×4 nodes.
    T4,
    /// A100×8 nodes.
    A100,
    /// Ascend 910B×8 nodes.
    Ascend,
}

impl Class {
    /// Every class, in table order.
    pub const ALL: [Class; 3] = [Class::T4, Class::A100, Class::Ascend];

    /// Short name.
    pub fn name(self) -> &'static str {
        match self {
            Class::T4 => "T4",
            Class::A100 => "A100",
            Class::Ascend => "910B",
        }
    }

    fn of(node: &NodeInfo) -> Class {
        if node.resource == Some(RESOURCE_ASCEND) {
            Class::Ascend
        } else if node.largest_device_mib() <= 16 * 1024 {
            Class::T4
        } else {
            Class::A100
        }
    }

    /// (devices, cpu cores, memory GiB) of one node of `fleet`.
    fn shape(self, fleet: &FleetSpec) -> (u32, u32, u64) {
        let cpu = fleet.cpu[self as usize];
        match self {
            Class::T4 => (4, cpu, 256),
            Class::A100 => (8, cpu, 1024),
            Class::Ascend => (8, cpu, 1536),
        }
    }
}

/// Which devices a model's pods ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asks {
    /// `count` whole NVIDIA GPUs.
    Nvidia(u32),
    /// `count` whole Ascend NPUs.
    Ascend(u32),
    /// VRAM on one shared device (any VRAM-sharing node); stock kube-scheduler, which cannot
    /// share, gives it one whole NVIDIA GPU.
    Sharing,
}

/// One model Deployment of the churn workload.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelSpec {
    /// `vramfit.io/model`.
    pub name: &'static str,
    /// VRAM per device, GiB (`vramfit.io/vram`).
    pub vram_gib: u64,
    /// Which devices its pods ask for.
    pub asks: Asks,
    /// cpu cores and memory GiB requested.
    pub cpu: u32,
    /// Memory requested, GiB.
    pub memory_gib: u64,
    /// Replicas at the top of the wave on the default fleet at demand 1 (scaled with the
    /// fleet's devices of the class the model runs on).
    pub peak: u32,
    /// Rounds per wave.
    pub period: u32,
}

/// The seven Deployments: a multi-device 70B LLM and a 40 GiB image model that need A100s, an
/// LLM on Ascend, three single-device models a T4 holds (SDXL, Whisper, a classifier) and a
/// small embedding model that shares devices by VRAM.
pub const MODELS: [ModelSpec; 7] = [
    ModelSpec {
        name: "llm-70b",
        vram_gib: 38,
        asks: Asks::Nvidia(2),
        cpu: 16,
        memory_gib: 128,
        peak: 130,
        period: 24,
    },
    ModelSpec {
        name: "imagegen-40g",
        vram_gib: 40,
        asks: Asks::Nvidia(1),
        cpu: 8,
        memory_gib: 64,
        peak: 300,
        period: 15,
    },
    ModelSpec {
        name: "qwen-ascend",
        vram_gib: 48,
        asks: Asks::Ascend(1),
        cpu: 8,
        memory_gib: 64,
        peak: 280,
        period: 20,
    },
    ModelSpec {
        name: "sdxl",
        vram_gib: 12,
        asks: Asks::Nvidia(1),
        cpu: 4,
        memory_gib: 32,
        peak: 260,
        period: 12,
    },
    ModelSpec {
        name: "whisper",
        vram_gib: 10,
        asks: Asks::Nvidia(1),
        cpu: 4,
        memory_gib: 16,
        peak: 150,
        period: 18,
    },
    ModelSpec {
        name: "classifier",
        vram_gib: 6,
        asks: Asks::Nvidia(1),
        cpu: 2,
        memory_gib: 8,
        peak: 120,
        period: 10,
    },
    ModelSpec {
        name: "embedder",
        vram_gib: 3,
        asks: Asks::Sharing,
        cpu: 2,
        memory_gib: 8,
        peak: 200,
        period: 30,
    },
];

/// What one churn run is.
#[derive(Debug, Clone, PartialEq)]
pub struct ChurnSpec {
    /// Node counts per class and zones.
    pub fleet: FleetSpec,
    /// Rounds of scaling.
    pub rounds: u32,
    /// Multiplies every Deployment's replica targets.
    pub demand: f64,
}

impl Default for ChurnSpec {
    fn default() -> Self {
        ChurnSpec {
            fleet: FleetSpec::default(),
            rounds: 30,
            demand: 1.0,
        }
    }
}

impl ChurnSpec {
    /// Checks the ranges the flags document.
    pub fn validate(&self) -> Result<(), ChurnError> {
        if !(1..=MAX_ROUNDS).contains(&self.rounds) {
            return Err(ChurnError::Rounds(self.rounds));
        }
        if !(self.demand > 0.0 && self.demand <= MAX_DEMAND) {
            return Err(ChurnError::Demand(self.demand));
        }
        if !(1..=MAX_ZONES).contains(&self.fleet.zones) {
            return Err(ChurnError::Zones(self.fleet.zones));
        }
        Ok(())
    }
}

/// Suffix of a profile name that runs vramfit as kube-scheduler's extender.
pub const KUBE_SUFFIX: &str = "+kube";

/// Who places the pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scheduler {
    /// vramfit alone with this profile of the config (`spec.schedulerName`), as `vramfit place`
    /// decides: `core::schedule::place_where`.
    Profile(String),
    /// vramfit with this profile as kube-scheduler's extender, as in a cluster (`PROFILE+kube`):
    /// kube-scheduler's own filters, vramfit's `filter` and `prioritize`, its 0–10 at the sample
    /// configuration's weight 10 (× 10, up to 1,000 points) added to the in-tree scores of
    /// `stock`, random among the best, then the bind's `Inventory::reserve` and `confirm`.
    Extender(String),
    /// kube-scheduler without vramfit.
    Stock,
}

impl Scheduler {
    /// The name in tables.
    pub fn name(&self) -> String {
        match self {
            Scheduler::Profile(p) => p.clone(),
            Scheduler::Extender(p) => format!("{p}{KUBE_SUFFIX}"),
            Scheduler::Stock => STOCK.to_string(),
        }
    }

    /// The scheduler a table name stands for, if `config` knows its profile.
    pub fn from_name(name: &str, config: &Config) -> Option<Scheduler> {
        if name.eq_ignore_ascii_case(STOCK) {
            return Some(Scheduler::Stock);
        }
        let known = |p: &str| config.profiles.contains_key(p).then(|| p.to_string());
        match name.strip_suffix(KUBE_SUFFIX) {
            Some(profile) => known(profile).map(Scheduler::Extender),
            None => known(name).map(Scheduler::Profile),
        }
    }

    /// The profile that scores (none for `stock`).
    pub fn profile(&self) -> Option<&str> {
        match self {
            Scheduler::Profile(p) | Scheduler::Extender(p) => Some(p),
            Scheduler::Stock => None,
        }
    }

    /// The zone skew the scheduler is held to: the profile's `maxZoneSkew` (none: unbounded),
    /// kube-scheduler's default of 5 for `stock`.
    pub fn skew_limit(&self, config: &Config) -> Option<u32> {
        match self.profile() {
            Some(p) => config.max_zone_skew(Some(p)),
            None => Some(5),
        }
    }
}

/// Parses `vramfit-spread,vramfit-spread+kube,stock` (profiles of `config`, each alone or with
/// `+kube`, and `stock`); `all` is `vramfit-spread,vramfit-binpack,vramfit-spread+kube,
/// vramfit-binpack+kube,stock`.
pub fn parse_schedulers(text: &str, config: &Config) -> Result<Vec<Scheduler>, ChurnError> {
    let names: Vec<&str> = if text.trim().eq_ignore_ascii_case("all") {
        vec![
            crate::core::config::PROFILE_SPREAD,
            crate::core::config::PROFILE_BINPACK,
            "vramfit-spread+kube",
            "vramfit-binpack+kube",
            STOCK,
        ]
    } else {
        text.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect()
    };
    let known = || {
        config
            .profiles
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    };
    if names.is_empty() {
        return Err(ChurnError::Scheduler {
            name: text.to_string(),
            known: known(),
        });
    }
    let mut out: Vec<Scheduler> = Vec::new();
    for name in names {
        let Some(scheduler) = Scheduler::from_name(name, config) else {
            return Err(ChurnError::Scheduler {
                name: crate::core::node::clip(name),
                known: known(),
            });
        };
        if !out.contains(&scheduler) {
            out.push(scheduler);
        }
    }
    Ok(out)
}

/// One model's figures over a run (summed over rounds; over seeds when merged).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelStats {
    /// Replicas bound at the end of each round, summed (replica-rounds).
    pub bound: u64,
    /// Replicas pending at the end of each round, summed (replica-rounds).
    pub pending: u64,
    /// Pending replicas that would have fit had every small replica on a big device been on a
    /// free smaller one (replica-rounds).
    pub pending_with_capacity: u64,
    /// Replicas on a device class bigger than the smallest their model fits, at the end of a
    /// round in which a device of a smaller class had room for them (pod-rounds).
    pub small_on_big: u64,
    /// Placements on a bigger device class than a candidate in a zone that kept the skew limit
    /// offered (a small device free where the spread allowed it).
    pub big_for_small: u64,
    /// Placements made.
    pub placements: u64,
    /// Placements that raised the model's zone skew beyond the scheduler's limit (and beyond
    /// what it was) while every zone had a node with room.
    pub skew_breaking: u64,
    /// Replicas bound to a device smaller than their VRAM need (pod-rounds; stock only).
    pub unrunnable: u64,
    /// Zone skew (most − fewest bound replicas in a zone) summed over rounds, the rounds
    /// counted, and the largest seen.
    pub skew_sum: u64,
    /// Rounds counted in `skew_sum`.
    pub skew_rounds: u64,
    /// Largest zone skew seen.
    pub skew_max: u32,
    /// Rounds ending with the skew above the scheduler's limit while every zone had a node with
    /// room for one more replica.
    pub over_limit: u64,
    /// Of those, rounds that began within the limit and did not scale the model down: the
    /// scheduler's own doing.
    pub over_limit_placed: u64,
    /// Zone skew summed over the rounds that did not scale the model down, and those rounds.
    pub grow_skew_sum: u64,
    /// Rounds counted in `grow_skew_sum`.
    pub grow_rounds: u64,
}

impl ModelStats {
    fn add(&mut self, o: &ModelStats) {
        self.bound += o.bound;
        self.pending += o.pending;
        self.pending_with_capacity += o.pending_with_capacity;
        self.small_on_big += o.small_on_big;
        self.big_for_small += o.big_for_small;
        self.placements += o.placements;
        self.skew_breaking += o.skew_breaking;
        self.unrunnable += o.unrunnable;
        self.skew_sum += o.skew_sum;
        self.skew_rounds += o.skew_rounds;
        self.skew_max = self.skew_max.max(o.skew_max);
        self.over_limit += o.over_limit;
        self.over_limit_placed += o.over_limit_placed;
        self.grow_skew_sum += o.grow_skew_sum;
        self.grow_rounds += o.grow_rounds;
    }

    /// Mean zone skew over the rounds that did not scale the model down.
    pub fn grow_skew_mean(&self) -> f64 {
        if self.grow_rounds == 0 {
            0.0
        } else {
            self.grow_skew_sum as f64 / self.grow_rounds as f64
        }
    }

    /// Mean zone skew over the rounds counted.
    pub fn skew_mean(&self) -> f64 {
        if self.skew_rounds == 0 {
            0.0
        } else {
            self.skew_sum as f64 / self.skew_rounds as f64
        }
    }
}

/// What one run (or several merged) produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChurnResult {
    /// Scheduler name.
    pub scheduler: String,
    /// Per model, in [`MODELS`] order.
    pub models: Vec<ModelStats>,
    /// Unallocated devices (no pod on them) at the end of each round, per class, summed.
    pub unallocated: [u64; 3],
    /// Devices per class.
    pub devices: [u64; 3],
    /// Rounds counted (over seeds when merged).
    pub rounds: u64,
    /// Runs merged.
    pub runs: u64,
    /// Deletion costs the refresher rewrote (what `serve` would patch), summed.
    pub cost_rewrites: u64,
}

impl ChurnResult {
    /// Adds another run of the same scheduler.
    pub fn merge(&mut self, other: &ChurnResult) {
        if self.models.len() < other.models.len() {
            self.models
                .resize(other.models.len(), ModelStats::default());
        }
        for (a, b) in self.models.iter_mut().zip(&other.models) {
            a.add(b);
        }
        for c in 0..3 {
            self.unallocated[c] += other.unallocated[c];
        }
        self.devices = other.devices;
        self.rounds += other.rounds;
        self.runs += other.runs;
        self.cost_rewrites += other.cost_rewrites;
    }

    /// All models together.
    pub fn total(&self) -> ModelStats {
        let mut total = ModelStats::default();
        for m in &self.models {
            total.add(m);
        }
        total
    }
}

/// cpu (milli), memory (MiB) and pod slots free on a node.
#[derive(Debug, Clone, Copy)]
struct Room {
    cpu: u64,
    memory: u64,
    pods: u32,
}

#[derive(Debug, Clone)]
struct Pod {
    serial: u64,
    model: usize,
    /// Node and round bound.
    bound: Option<(String, u32)>,
    demand: PodDemand,
    /// `controller.kubernetes.io/pod-deletion-cost`, as vramfit writes it at bind and its
    /// refresher rewrites it (0: none).
    cost: i64,
    cpu: u64,
    memory: u64,
}

/// The cluster of one run: the core's inventory plus what kube-scheduler's own filters see.
struct World<'a> {
    config: &'a Config,
    fleet: FleetSpec,
    inventory: Inventory,
    rooms: HashMap<String, Room>,
    zones: Vec<String>,
    /// Smallest device class each model fits on an empty node.
    smallest: Vec<Option<Class>>,
}

impl World<'_> {
    fn fits_room(&self, node: &str, pod: &Pod) -> bool {
        self.rooms
            .get(node)
            .is_some_and(|r| r.cpu >= pod.cpu && r.memory >= pod.memory && r.pods > 0)
    }

    fn take(&mut self, node: &str, pod: &Pod) {
        if let Some(r) = self.rooms.get_mut(node) {
            r.cpu -= pod.cpu;
            r.memory -= pod.memory;
            r.pods -= 1;
        }
    }

    fn give(&mut self, node: &str, pod: &Pod) {
        if let Some(r) = self.rooms.get_mut(node) {
            r.cpu += pod.cpu;
            r.memory += pod.memory;
            r.pods += 1;
        }
    }

    /// Nodes where `pod` would run now: VRAM (the core's verdict) and room.
    fn fitting<'s>(&'s self, pod: &'s Pod) -> impl Iterator<Item = &'s NodeInfo> + 's {
        self.inventory
            .nodes()
            .filter(move |n| self.fits_room(&n.name, pod) && fit_node(n, &pod.demand).is_ok())
    }

    fn zone_counts(&self, model: usize) -> Vec<u32> {
        let replicas = self.inventory.replicas(MODELS[model].name);
        self.zones
            .iter()
            .map(|z| replicas.map_or(0, |r| r.in_zone(z)))
            .collect()
    }
}

fn skew(counts: &[u32]) -> u32 {
    let max = counts.iter().copied().max().unwrap_or(0);
    let min = counts.iter().copied().min().unwrap_or(0);
    max - min
}

fn zone_name(i: u32) -> String {
    format!("zone-{}", i + 1)
}

/// The fleet's nodes, built by the core from GFD and Ascend labels.
pub fn fleet_nodes(fleet: &FleetSpec, config: &Config) -> Vec<NodeInfo> {
    let mut nodes = Vec::new();
    let zones = fleet.zones.max(1);
    for class in Class::ALL {
        let count = match class {
            Class::T4 => fleet.t4,
            Class::A100 => fleet.a100,
            Class::Ascend => fleet.ascend,
        };
        let (devices, cpu, memory) = class.shape(fleet);
        for i in 0..count {
            let zone = zone_name(i % zones);
            let name = format!("{}-{zone}-{i:04}", class.name().to_ascii_lowercase());
            let mut labels = BTreeMap::from([
                ("kubernetes.io/hostname".to_string(), name.clone()),
                (crate::core::node::LABEL_ZONE.to_string(), zone),
            ]);
            let resource = match class {
                Class::T4 | Class::A100 => RESOURCE_NVIDIA_GPU,
                Class::Ascend => RESOURCE_ASCEND,
            };
            match class {
                Class::T4 => {
                    labels.insert("nvidia.com/gpu.product".into(), "Tesla-T4".into());
                    labels.insert("nvidia.com/gpu.memory".into(), "15360".into());
                }
                Class::A100 => {
                    labels.insert(
                        "nvidia.com/gpu.product".into(),
                        "NVIDIA-A100-SXM4-80GB".into(),
                    );
                    labels.insert("nvidia.com/gpu.memory".into(), "81920".into());
                }
                Class::Ascend => {
                    labels.insert(crate::core::node::LABEL_NPU_CHIP.into(), "910B3".into());
                }
            }
            if class != Class::Ascend {
                labels.insert("nvidia.com/gpu.count".into(), devices.to_string());
                labels.insert(crate::core::node::LABEL_SHARING.into(), "vram".into());
            }
            let facts = NodeFacts {
                name,
                labels,
                annotations: BTreeMap::new(),
                allocatable: BTreeMap::from([
                    (resource.to_string(), devices.to_string()),
                    ("cpu".to_string(), cpu.to_string()),
                    ("memory".to_string(), format!("{memory}Gi")),
                    ("pods".to_string(), MAX_PODS_PER_NODE.to_string()),
                ]),
                unschedulable: false,
            };
            nodes.push(build_node(&facts, config, SystemTime::UNIX_EPOCH));
        }
    }
    nodes
}

/// The pod facts of replica `serial` of `model`, as its Deployment would create it.
fn pod_facts(model: &ModelSpec, serial: u64, scheduler: &Scheduler) -> PodFacts {
    let name = format!("{}-{serial:06}", model.name);
    let mut requests = BTreeMap::from([
        ("cpu".to_string(), model.cpu.to_string()),
        ("memory".to_string(), format!("{}Gi", model.memory_gib)),
    ]);
    match model.asks {
        Asks::Nvidia(n) => {
            requests.insert(RESOURCE_NVIDIA_GPU.into(), n.to_string());
        }
        Asks::Ascend(n) => {
            requests.insert(RESOURCE_ASCEND.into(), n.to_string());
        }
        Asks::Sharing => {}
    }
    PodFacts {
        namespace: "churn".into(),
        name: name.clone(),
        uid: name,
        labels: BTreeMap::from([(
            crate::core::demand::LABEL_MODEL.to_string(),
            model.name.to_string(),
        )]),
        annotations: BTreeMap::from([(
            crate::core::demand::ANNOTATION_VRAM.to_string(),
            format!("{}Gi", model.vram_gib),
        )]),
        controller: Some(format!("{}-rs", model.name)),
        scheduler_name: scheduler.profile().map(str::to_string),
        containers: vec![ContainerResources {
            limits: requests.clone(),
            requests,
            sidecar: false,
        }],
        init_containers: Vec::new(),
        node_name: None,
        phase: None,
    }
}

/// Replica targets per round and model, from the seed only.
pub fn targets(spec: &ChurnSpec, seed: u64) -> Vec<Vec<u32>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let default = FleetSpec::default();
    let phases: Vec<f64> = MODELS
        .iter()
        .map(|_| rng.random::<f64>() * std::f64::consts::TAU)
        .collect();
    (0..spec.rounds)
        .map(|round| {
            MODELS
                .iter()
                .zip(&phases)
                .map(|(m, phase)| {
                    let class = match m.asks {
                        Asks::Ascend(_) => Class::Ascend,
                        Asks::Nvidia(_) if m.vram_gib > 16 => Class::A100,
                        _ => Class::T4,
                    };
                    let scale =
                        f64::from(spec.fleet.devices(class)) / f64::from(default.devices(class));
                    let wave = (std::f64::consts::TAU * f64::from(round) / f64::from(m.period)
                        + phase)
                        .sin();
                    let noise = rng.random::<f64>() * 0.2 - 0.1;
                    let level = (0.6 + 0.35 * wave + noise).clamp(0.05, 1.0);
                    (f64::from(m.peak) * scale * spec.demand * level).round() as u32
                })
                .collect()
        })
        .collect()
}

/// Runs the churn workload once with one scheduler.
pub fn run(
    spec: &ChurnSpec,
    scheduler: &Scheduler,
    config: &Config,
    seed: u64,
) -> Result<ChurnResult, ChurnError> {
    spec.validate()?;
    let targets = targets(spec, seed);
    let mut order_rng = ChaCha8Rng::seed_from_u64(seed ^ (1 << 40));
    let mut victim_rng = ChaCha8Rng::seed_from_u64(seed ^ (2 << 40));
    let mut tie_rng = ChaCha8Rng::seed_from_u64(seed ^ (3 << 40));
    let nodes = fleet_nodes(&spec.fleet, config);
    let mut inventory = Inventory::new();
    let mut rooms = HashMap::new();
    let mut devices = [0u64; 3];
    for node in nodes {
        let class = Class::of(&node);
        let (_, cpu, memory) = class.shape(&spec.fleet);
        devices[class as usize] += node.devices.len() as u64;
        rooms.insert(
            node.name.clone(),
            Room {
                cpu: u64::from(cpu) * 1000,
                memory: memory * 1024,
                pods: MAX_PODS_PER_NODE,
            },
        );
        inventory.upsert_node(node);
    }
    let catalog = Catalog::default();
    let make_pod = |model: usize, serial: u64| -> Result<Pod, ChurnError> {
        let spec = &MODELS[model];
        let facts = pod_facts(spec, serial, scheduler);
        let demand = pod_demand(&facts, config, &catalog).map_err(|source| ChurnError::Pod {
            pod: facts.key(),
            source,
        })?;
        Ok(Pod {
            serial,
            model,
            bound: None,
            cost: 0,
            demand,
            cpu: u64::from(spec.cpu) * 1000,
            memory: spec.memory_gib * 1024,
        })
    };
    let mut world = World {
        config,
        fleet: spec.fleet,
        inventory,
        rooms,
        zones: (0..spec.fleet.zones).map(zone_name).collect(),
        smallest: Vec::new(),
    };
    // Smallest class each model fits on an empty node.
    for model in 0..MODELS.len() {
        let probe = make_pod(model, 0)?;
        let smallest = world
            .inventory
            .nodes()
            .filter(|n| fit_node(n, &probe.demand).is_ok())
            .map(Class::of)
            .min_by_key(|c| class_size(*c));
        world.smallest.push(smallest);
    }
    let limit = scheduler.skew_limit(config);
    let mut result = ChurnResult {
        scheduler: scheduler.name(),
        models: vec![ModelStats::default(); MODELS.len()],
        devices,
        runs: 1,
        ..ChurnResult::default()
    };
    let mut pods: BTreeMap<u64, Pod> = BTreeMap::new();
    let mut serial = 0u64;
    for (round, wanted) in targets.iter().enumerate() {
        let round = round as u32;
        let mut scaled_down = vec![false; MODELS.len()];
        let start_skew: Vec<u32> = (0..MODELS.len())
            .map(|m| skew(&world.zone_counts(m)))
            .collect();
        let mut created = Vec::new();
        for (model, &target) in wanted.iter().enumerate() {
            let alive: Vec<u64> = pods
                .values()
                .filter(|p| p.model == model)
                .map(|p| p.serial)
                .collect();
            let alive_count = alive.len() as u32;
            if target < alive_count {
                scaled_down[model] = true;
                let victims = victims(
                    &world,
                    &pods,
                    &alive,
                    (alive_count - target) as usize,
                    round,
                    &mut victim_rng,
                );
                for id in victims {
                    if let Some(pod) = pods.remove(&id) {
                        if let Some((node, _)) = &pod.bound {
                            world.inventory.remove(&pod.demand.id);
                            world.give(node, &pod);
                        }
                    }
                }
            } else {
                for _ in alive_count..target {
                    serial += 1;
                    created.push(make_pod(model, serial)?);
                }
            }
        }
        created.shuffle(&mut order_rng);
        let mut queue: Vec<u64> = pods
            .values()
            .filter(|p| p.bound.is_none())
            .map(|p| p.serial)
            .collect();
        for pod in created {
            queue.push(pod.serial);
            pods.insert(pod.serial, pod);
        }
        for id in &queue {
            let Some(pod) = pods.get(id) else { continue };
            let stats = &mut result.models[pod.model];
            let chosen = schedule(&mut world, pod, scheduler, limit, stats, &mut tie_rng);
            if let Some(node) = chosen {
                stats.placements += 1;
                // What `serve` writes into the Binding (none under stock kube-scheduler).
                let cost = match scheduler {
                    Scheduler::Profile(_) | Scheduler::Extender(_) if config.deletion_cost => world
                        .inventory
                        .placement(&pod.demand.id)
                        .and_then(|p| deletion_cost(&world.inventory, &pod.demand, p, limit)),
                    _ => None,
                };
                let pod = pods.get_mut(id).map(|p| {
                    p.bound = Some((node.clone(), round));
                    p.cost = cost.unwrap_or(0);
                    p.clone()
                });
                if let Some(pod) = pod {
                    world.take(&node, &pod);
                }
            }
        }
        if matches!(scheduler, Scheduler::Profile(_) | Scheduler::Extender(_))
            && config.deletion_cost
        {
            result.cost_rewrites += refresh_costs(&world, &mut pods, limit);
        }
        measure(
            &world,
            &pods,
            &queue,
            limit,
            &scaled_down,
            &start_skew,
            &mut result,
        );
    }
    result.rounds = u64::from(spec.rounds);
    Ok(result)
}

/// What `serve`'s deletion-cost refresher does between rounds: every bound replica's cost
/// ranked afresh by the core ([`refreshed_costs`]) under the profile's zone skew limit.
/// Returns how many costs changed (the patches `serve` would send).
fn refresh_costs(world: &World, pods: &mut BTreeMap<u64, Pod>, limit: Option<u32>) -> u64 {
    let mut rewrites = 0;
    let by_id: HashMap<String, u64> = pods
        .values()
        .map(|p| (p.demand.id.clone(), p.serial))
        .collect();
    for (model, spec) in MODELS.iter().enumerate() {
        let Some(demand) = pods
            .values()
            .find(|p| p.model == model)
            .map(|p| p.demand.clone())
        else {
            continue;
        };
        let costs = refreshed_costs(&world.inventory, spec.name, &demand, limit, |id| {
            by_id
                .get(id)
                .and_then(|serial| pods.get(serial))
                .map(|p| Some(p.cost))
        });
        for (id, cost) in costs {
            if let Some(pod) = by_id.get(&id).and_then(|serial| pods.get_mut(serial)) {
                rewrites += u64::from(pod.cost != cost);
                pod.cost = cost;
            }
        }
    }
    rewrites
}

fn class_size(class: Class) -> u64 {
    match class {
        Class::T4 => 15360,
        Class::Ascend => 65536,
        Class::A100 => 81920,
    }
}

/// The ReplicaSet controller's choice of `count` pods to delete among `alive`: pending first
/// (newest first), then the lowest `pod-deletion-cost`, then pods on nodes holding more replicas
/// of the model, then the newest by log₂ of their age in rounds, then at random.
fn victims(
    world: &World,
    pods: &BTreeMap<u64, Pod>,
    alive: &[u64],
    count: usize,
    round: u32,
    rng: &mut ChaCha8Rng,
) -> Vec<u64> {
    let mut ranked: Vec<(u8, i64, std::cmp::Reverse<u32>, u32, u64, u64)> = alive
        .iter()
        .filter_map(|id| pods.get(id))
        .map(|p| {
            let tie: u64 = rng.random();
            match &p.bound {
                None => (0, 0, std::cmp::Reverse(0), 0, u64::MAX - p.serial, p.serial),
                Some((node, since)) => {
                    let colocated = world
                        .inventory
                        .replicas(MODELS[p.model].name)
                        .map(|r| r.on_node(node))
                        .unwrap_or(0);
                    let age_bucket = (round - since + 1).ilog2();
                    (
                        1,
                        p.cost,
                        std::cmp::Reverse(colocated),
                        age_bucket,
                        tie,
                        p.serial,
                    )
                }
            }
        })
        .collect();
    ranked.sort_unstable();
    ranked.into_iter().take(count).map(|r| r.5).collect()
}

/// Schedules one pending pod; returns its node. Counts the placement-time figures.
fn schedule(
    world: &mut World,
    pod: &Pod,
    scheduler: &Scheduler,
    limit: Option<u32>,
    stats: &mut ModelStats,
    tie_rng: &mut ChaCha8Rng,
) -> Option<String> {
    // Where the pod could run (VRAM and room), for the placement-time figures.
    let candidates: Vec<(Option<String>, Class)> = world
        .fitting(pod)
        .map(|n| (n.zone_name(), Class::of(n)))
        .collect();
    let before = world.zone_counts(pod.model);
    let node = match scheduler {
        Scheduler::Profile(_) => {
            let World {
                inventory,
                rooms,
                config,
                ..
            } = world;
            let fits_room = |n: &NodeInfo| {
                rooms
                    .get(&n.name)
                    .is_some_and(|r| r.cpu >= pod.cpu && r.memory >= pod.memory && r.pods > 0)
            };
            place_where(inventory, &Ok(pod.demand.clone()), config, fits_room).node
        }
        Scheduler::Extender(_) => extender_place(world, pod, tie_rng),
        Scheduler::Stock => stock_place(world, pod, tie_rng),
    }?;
    let class = world.inventory.node(&node).map(Class::of)?;
    // A bigger class than a candidate in a zone that kept the skew limit offered.
    let zones: Vec<Option<&str>> = candidates.iter().map(|(z, _)| z.as_deref()).collect();
    let replicas = world.inventory.replicas(MODELS[pod.model].name);
    let index = |z: &str| world.zones.iter().position(|x| x == z);
    let count_before = |z: &str| index(z).map_or(0, |i| before[i]);
    let keeps = keeps_zone_skew(&zones, count_before, limit.unwrap_or(u32::MAX));
    let smallest_kept = candidates
        .iter()
        .zip(&keeps)
        .filter(|(_, k)| **k)
        .map(|((_, c), _)| class_size(*c))
        .min();
    if smallest_kept.is_some_and(|s| s < class_size(class)) {
        stats.big_for_small += 1;
    }
    // Skew raised beyond the limit (and beyond what it was) while every zone had room.
    let every_zone = world
        .zones
        .iter()
        .all(|z| candidates.iter().any(|(c, _)| c.as_deref() == Some(z)));
    if let (true, Some(limit)) = (every_zone, limit) {
        let after: Vec<u32> = world
            .zones
            .iter()
            .map(|z| replicas.map_or(0, |r| r.in_zone(z)))
            .collect();
        if skew(&after) > limit.max(skew(&before)) {
            stats.skew_breaking += 1;
        }
    }
    Some(node)
}

/// kube-scheduler without vramfit: the device resource is a count (a sharing pod takes one
/// whole GPU); filter on free devices, cpu, memory and pod slots; score `LeastAllocated` +
/// `BalancedAllocation` on cpu and memory (weight 1 each) + the default topology spread (zone
/// `maxSkew` 5 and hostname `maxSkew` 3, `ScheduleAnyway`, weight 2); random among the best.
fn stock_place(world: &mut World, pod: &Pod, rng: &mut ChaCha8Rng) -> Option<String> {
    let (resource, count) = match MODELS[pod.model].asks {
        Asks::Nvidia(n) => (RESOURCE_NVIDIA_GPU, n),
        Asks::Ascend(n) => (RESOURCE_ASCEND, n),
        Asks::Sharing => (RESOURCE_NVIDIA_GPU, 1),
    };
    let free = |n: &NodeInfo| {
        n.devices
            .iter()
            .filter(|d| d.exclusive_holders == 0 && d.sharers == 0)
            .count() as u32
    };
    let feasible: Vec<&NodeInfo> = world
        .inventory
        .nodes()
        .filter(|n| {
            n.resource == Some(resource) && free(n) >= count && world.fits_room(&n.name, pod)
        })
        .collect();
    if feasible.is_empty() {
        return None;
    }
    let scores = kube_scores(world, pod, &feasible);
    let node = feasible[best_of(&scores, rng)?];
    let indices: Vec<u32> = node
        .devices
        .iter()
        .filter(|d| d.exclusive_holders == 0 && d.sharers == 0)
        .take(count as usize)
        .map(|d| d.index)
        .collect();
    let placement = Placement {
        pod: pod.demand.key.clone(),
        node: node.name.clone(),
        zone: node.zone_name(),
        model: pod.demand.model.clone(),
        shares: indices
            .into_iter()
            .map(|index| DeviceShare {
                index,
                vram_mib: pod.demand.vram_mib,
            })
            .collect(),
        exclusive: true,
    };
    let name = node.name.clone();
    world.inventory.commit(&pod.demand.id, placement);
    Some(name)
}

/// vramfit as kube-scheduler's extender ([`Scheduler::Extender`]): what `serve` does for one pod.
fn extender_place(world: &mut World, pod: &Pod, rng: &mut ChaCha8Rng) -> Option<String> {
    // The filter request teaches the workload model the pod (`ExtenderState::remember`).
    observe(&mut world.inventory, &pod.demand);
    let demand: Demand = Ok(pod.demand.clone());
    let world_ref = &*world;
    // kube-scheduler's own filters: cpu, memory, pod slots, and the device resource as a count
    // (a sharing pod requests none of it).
    let passing: Vec<&NodeInfo> = world_ref
        .inventory
        .nodes()
        .filter(|n| {
            world_ref.fits_room(&n.name, pod)
                && match pod.demand.resource {
                    Some(r) => {
                        n.resource == Some(r)
                            && n.allocatable_devices.saturating_sub(n.held_devices())
                                >= pod.demand.devices
                    }
                    None => true,
                }
        })
        .collect();
    let outcome = filter(
        passing.iter().map(|n| (n.name.as_str(), Some(*n))),
        &demand,
        &world_ref.inventory,
    );
    let feasible: Vec<&NodeInfo> = outcome
        .feasible
        .iter()
        .filter_map(|name| world_ref.inventory.node(name))
        .collect();
    if feasible.is_empty() {
        return None;
    }
    let wire = prioritize(
        feasible.iter().map(|n| (n.name.as_str(), Some(*n))),
        &demand,
        &world_ref.inventory,
        world_ref.config,
    );
    let mut scores = kube_scores(world_ref, pod, &feasible);
    for (score, (_, extender)) in scores.iter_mut().zip(&wire) {
        *score += EXTENDER_WEIGHT * 10.0 * f64::from(*extender);
    }
    let name = feasible[best_of(&scores, rng)?].name.clone();
    let now = std::time::Instant::now();
    let reservation = world.inventory.reserve(&demand, &name, now).ok()?;
    world.inventory.confirm(&reservation.id, now);
    Some(name)
}

/// The extender's `weight` in scheduler-config/kube-scheduler-v1.yaml.
const EXTENDER_WEIGHT: f64 = 10.0;

/// Index of the highest score, a random one among equals (kube-scheduler's `selectHost`).
fn best_of(scores: &[f64], rng: &mut ChaCha8Rng) -> Option<usize> {
    let best = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let tied: Vec<usize> = (0..scores.len()).filter(|&i| scores[i] == best).collect();
    if tied.is_empty() {
        return None;
    }
    Some(tied[rng.random_range(0..tied.len())])
}

/// kube-scheduler's in-tree scores of `feasible` for the pod: `LeastAllocated` +
/// `BalancedAllocation` on cpu and memory (weight 1 each, 0–100) + the default topology spread
/// (zone `maxSkew` 5 and hostname `maxSkew` 3, `ScheduleAnyway`, weight 2, 0–100).
fn kube_scores(world: &World, pod: &Pod, feasible: &[&NodeInfo]) -> Vec<f64> {
    let replicas = world.inventory.replicas(MODELS[pod.model].name);
    let zone_count = |n: &NodeInfo| {
        n.zone
            .as_ref()
            .and_then(|z| replicas.map(|r| r.in_zone(z)))
            .unwrap_or(0)
    };
    let node_count = |n: &NodeInfo| replicas.map(|r| r.on_node(&n.name)).unwrap_or(0);
    // PodTopologySpread scoring: Σ constraints (count in the node's domain × ln(domains + 2)
    // + maxSkew − 1), normalized so the lowest raw score gets 100.
    let zones: std::collections::HashSet<&str> =
        feasible.iter().filter_map(|n| n.zone.as_deref()).collect();
    let zone_weight = (zones.len() as f64 + 2.0).ln();
    let host_weight = (feasible.len() as f64 + 2.0).ln();
    let raw: Vec<f64> = feasible
        .iter()
        .map(|n| {
            f64::from(zone_count(n)) * zone_weight
                + 4.0
                + f64::from(node_count(n)) * host_weight
                + 2.0
        })
        .collect();
    let max_raw = raw.iter().copied().fold(0.0, f64::max);
    let min_raw = raw.iter().copied().fold(f64::INFINITY, f64::min);
    feasible
        .iter()
        .zip(&raw)
        .map(|(n, &r)| {
            let (_, cpu, memory) = Class::of(n).shape(&world.fleet);
            let room = world.rooms.get(&n.name);
            let cpu_total = f64::from(cpu) * 1000.0;
            let memory_total = memory as f64 * 1024.0;
            let cpu_used = cpu_total - room.map_or(0.0, |r| r.cpu as f64) + pod.cpu as f64;
            let memory_used =
                memory_total - room.map_or(0.0, |r| r.memory as f64) + pod.memory as f64;
            let (fc, fm) = (cpu_used / cpu_total, memory_used / memory_total);
            let least = ((1.0 - fc) * 100.0 + (1.0 - fm) * 100.0) / 2.0;
            let balanced = (1.0 - (fc - fm).abs() / 2.0) * 100.0;
            let spread = if max_raw > 0.0 {
                100.0 * (max_raw + min_raw - r) / max_raw
            } else {
                100.0
            };
            least.floor() + balanced.floor() + 2.0 * spread.floor()
        })
        .collect()
}

/// The end-of-round figures.
fn measure(
    world: &World,
    pods: &BTreeMap<u64, Pod>,
    queue: &[u64],
    limit: Option<u32>,
    scaled_down: &[bool],
    start_skew: &[u32],
    result: &mut ChurnResult,
) {
    // Per model: the smallest class with room now, and whether every zone has room.
    let mut smallest_free: Vec<Option<u64>> = Vec::new();
    let mut every_zone: Vec<bool> = Vec::new();
    for model in 0..MODELS.len() {
        let probe = pods.values().find(|p| p.model == model);
        let Some(probe) = probe else {
            smallest_free.push(None);
            every_zone.push(false);
            continue;
        };
        let fitting: Vec<&NodeInfo> = world.fitting(probe).collect();
        smallest_free.push(fitting.iter().map(|n| class_size(Class::of(n))).min());
        every_zone.push(
            world
                .zones
                .iter()
                .all(|z| fitting.iter().any(|n| n.zone.as_deref() == Some(z))),
        );
    }
    let mut small_on_big: Vec<&Pod> = Vec::new();
    for pod in pods.values() {
        let stats = &mut result.models[pod.model];
        let Some((node, _)) = &pod.bound else {
            stats.pending += 1;
            continue;
        };
        stats.bound += 1;
        let Some(info) = world.inventory.node(node) else {
            continue;
        };
        let class = class_size(Class::of(info));
        if info.largest_device_mib() < pod.demand.vram_mib {
            stats.unrunnable += 1;
            continue;
        }
        let smallest = world.smallest[pod.model].map(class_size);
        if smallest.is_some_and(|s| s < class) {
            small_on_big.push(pod);
            if smallest_free[pod.model].is_some_and(|s| s < class) {
                stats.small_on_big += 1;
            }
        }
    }
    for (model, stats) in result.models.iter_mut().enumerate() {
        let counts = world.zone_counts(model);
        let s = skew(&counts);
        stats.skew_sum += u64::from(s);
        stats.skew_rounds += 1;
        stats.skew_max = stats.skew_max.max(s);
        if !scaled_down[model] {
            stats.grow_skew_sum += u64::from(s);
            stats.grow_rounds += 1;
        }
        if let (true, Some(l)) = (every_zone[model], limit) {
            if s > l {
                stats.over_limit += 1;
                if !scaled_down[model] && start_skew[model] <= l {
                    stats.over_limit_placed += 1;
                }
            }
        }
    }
    for node in world.inventory.nodes() {
        let class = Class::of(node) as usize;
        result.unallocated[class] += node
            .devices
            .iter()
            .filter(|d| d.exclusive_holders == 0 && d.sharers == 0)
            .count() as u64;
    }
    // Pending replicas that would fit had the small replicas on big devices been on smaller
    // free ones: move those (smallest class first), then place the pending in queue order.
    let pending: Vec<&Pod> = queue
        .iter()
        .filter_map(|id| pods.get(id))
        .filter(|p| p.bound.is_none())
        .collect();
    if pending.is_empty() || small_on_big.is_empty() {
        return;
    }
    let mut relieved = World {
        config: world.config,
        fleet: world.fleet,
        inventory: world.inventory.clone(),
        rooms: world.rooms.clone(),
        zones: Vec::new(),
        smallest: Vec::new(),
    };
    let mut by_class: Vec<(u64, String)> = relieved
        .inventory
        .nodes()
        .map(|n| (class_size(Class::of(n)), n.name.clone()))
        .collect();
    by_class.sort();
    for pod in small_on_big {
        let Some((from, _)) = &pod.bound else {
            continue;
        };
        let Some(size) = relieved
            .inventory
            .node(from)
            .map(|n| class_size(Class::of(n)))
        else {
            continue;
        };
        let target = by_class
            .iter()
            .take_while(|(s, _)| *s < size)
            .find_map(|(_, name)| {
                let node = relieved.inventory.node(name)?;
                if !relieved.fits_room(name, pod) {
                    return None;
                }
                let fit = fit_node(node, &pod.demand).ok()?;
                Some(Placement::from_fit(&pod.demand, node, &fit))
            });
        if let Some(placement) = target {
            let to = placement.node.clone();
            relieved.inventory.remove(&pod.demand.id);
            relieved.give(from, pod);
            relieved.inventory.commit(&pod.demand.id, placement);
            relieved.take(&to, pod);
        }
    }
    for pod in pending {
        let placement = relieved.fitting(pod).next().and_then(|node| {
            fit_node(node, &pod.demand)
                .ok()
                .map(|fit| Placement::from_fit(&pod.demand, node, &fit))
        });
        if let Some(placement) = placement {
            let to = placement.node.clone();
            relieved.inventory.commit(&pod.demand.id, placement);
            relieved.take(&to, pod);
            result.models[pod.model].pending_with_capacity += 1;
        }
    }
}

/// Runs every scheduler × seed (on up to `threads` threads) and merges each scheduler's seeds.
/// Results are the same whatever the number of threads.
pub fn run_all(
    spec: &ChurnSpec,
    schedulers: &[Scheduler],
    config: &Config,
    seeds: &[u64],
    threads: usize,
    progress: impl Fn() + Sync,
) -> Result<Vec<ChurnResult>, ChurnError> {
    spec.validate()?;
    let jobs: Vec<(usize, u64)> = (0..schedulers.len())
        .flat_map(|s| seeds.iter().map(move |&seed| (s, seed)))
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let done: std::sync::Mutex<Vec<(usize, Result<ChurnResult, ChurnError>)>> =
        std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..threads.clamp(1, jobs.len().max(1)) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(&(s, seed)) = jobs.get(i) else { break };
                let outcome = run(spec, &schedulers[s], config, seed);
                progress();
                if let Ok(mut done) = done.lock() {
                    done.push((i, outcome));
                }
            });
        }
    });
    let mut done = done.into_inner().unwrap_or_else(|e| e.into_inner());
    done.sort_by_key(|(i, _)| *i);
    let mut merged: Vec<ChurnResult> = schedulers
        .iter()
        .map(|s| ChurnResult {
            scheduler: s.name(),
            ..ChurnResult::default()
        })
        .collect();
    for (i, outcome) in done {
        merged[jobs[i].0].merge(&outcome?);
    }
    Ok(merged)
}

/// What a model asks, for tables: `2×38Gi`, `12Gi`, `3Gi shared`.
pub fn need(model: &ModelSpec) -> String {
    match model.asks {
        Asks::Nvidia(n) | Asks::Ascend(n) if n > 1 => format!("{n}×{}Gi", model.vram_gib),
        Asks::Sharing => format!("{}Gi shared", model.vram_gib),
        _ => format!("{}Gi", model.vram_gib),
    }
}

/// The per-model table of merged results, one block per scheduler.
pub fn table(results: &[ChurnResult], spec: &ChurnSpec, seeds: usize, config: &Config) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let f = &spec.fleet;
    let _ = writeln!(
        out,
        "churn: {} T4×4 + {} A100×8 + {} 910B×8 nodes in {} zones, {} rounds × {seeds} seeds, demand ×{}",
        f.t4, f.a100, f.ascend, f.zones, spec.rounds, spec.demand
    );
    let _ = writeln!(
        out,
        "counts are summed over rounds and seeds (pod-rounds, replica-rounds, placements)"
    );
    for result in results {
        let limit = Scheduler::from_name(&result.scheduler, config)
            .and_then(|s| s.skew_limit(config))
            .map_or("none".to_string(), |l| l.to_string());
        let _ = writeln!(
            out,
            "\n{} (zone-skew limit {limit})\n{:<13} {:>10} {:>8} {:>8} {:>9} {:>8} {:>9} {:>9} {:>10} {:>6} {:>6} {:>5} {:>10} {:>8}",
            result.scheduler,
            "model",
            "need",
            "bound",
            "pending",
            "pend+cap",
            "placed",
            "small>big",
            "big4small",
            "unrunnable",
            "skew",
            "grow",
            "max",
            "over(own)",
            "breaking"
        );
        let rows = MODELS
            .iter()
            .map(|m| (m.name.to_string(), need(m)))
            .zip(result.models.iter().cloned())
            .chain(std::iter::once((
                ("all".to_string(), String::new()),
                result.total(),
            )));
        for ((name, need), s) in rows {
            let _ = writeln!(
                out,
                "{:<13} {:>10} {:>8} {:>8} {:>9} {:>8} {:>9} {:>9} {:>10} {:>6.2} {:>6.2} {:>5} {:>10} {:>8}",
                name,
                need,
                s.bound,
                s.pending,
                s.pending_with_capacity,
                s.placements,
                s.small_on_big,
                s.big_for_small,
                s.unrunnable,
                s.skew_mean(),
                s.grow_skew_mean(),
                s.skew_max,
                format!("{} ({})", s.over_limit, s.over_limit_placed),
                s.skew_breaking
            );
        }
        let rounds = result.rounds.max(1) as f64;
        let _ = writeln!(
            out,
            "unallocated devices, mean per round: {}",
            Class::ALL
                .iter()
                .map(|c| format!(
                    "{} {:.1} of {}",
                    c.name(),
                    result.unallocated[*c as usize] as f64 / rounds,
                    result.devices[*c as usize]
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
        if result.cost_rewrites > 0 {
            let _ = writeln!(
                out,
                "deletion costs rewritten by the refresher: {} ({:.1} per round)",
                result.cost_rewrites,
                result.cost_rewrites as f64 / rounds
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::config::{PROFILE_BINPACK, PROFILE_SPREAD};

    /// A fifth of the fleet: 30 T4×4, 21 A100×8, 9 910B×8 in three zones.
    fn small(rounds: u32, demand: f64) -> ChurnSpec {
        ChurnSpec {
            fleet: FleetSpec::parse("30,21,9", 3).unwrap(),
            rounds,
            demand,
        }
    }

    fn spread() -> Scheduler {
        Scheduler::Profile(PROFILE_SPREAD.into())
    }

    fn binpack() -> Scheduler {
        Scheduler::Profile(PROFILE_BINPACK.into())
    }

    #[test]
    fn vramfit_profiles_meet_the_skew_limits_and_keep_small_models_off_big_devices() {
        let config = Config::default();
        for demand in [1.0, 1.6] {
            let spec = small(30, demand);
            let all = [
                spread(),
                binpack(),
                Scheduler::Extender(PROFILE_SPREAD.into()),
                Scheduler::Extender(PROFILE_BINPACK.into()),
            ];
            let results = run_all(&spec, &all, &config, &[1, 2], 2, || {}).unwrap();
            for result in &results {
                let total = result.total();
                assert!(total.placements > 1000, "{}: {total:?}", result.scheduler);
                for (model, s) in MODELS.iter().zip(&result.models) {
                    let at = format!("{} ×{demand} {}", result.scheduler, model.name);
                    assert!(s.bound > 0, "{at}: never bound");
                    assert_eq!(s.skew_breaking, 0, "{at}: a placement broke the skew");
                    assert_eq!(
                        s.over_limit_placed, 0,
                        "{at}: a round without scale-down ended over the limit"
                    );
                    if result.scheduler.starts_with(PROFILE_SPREAD) {
                        assert_eq!(
                            s.big_for_small, 0,
                            "{at}: a big device while a small one was free in a zone keeping the skew"
                        );
                    }
                    assert_eq!(s.unrunnable, 0, "{at}");
                }
            }
        }
    }

    #[test]
    fn the_deletion_cost_keeps_zones_even_and_big_devices_free_through_scale_downs() {
        // Scale-downs are the ReplicaSet controller's; the cost vramfit writes at bind and
        // keeps current decides which replicas they take.
        let with = Config::default();
        let without = Config {
            deletion_cost: false,
            ..Config::default()
        };
        let spec = small(30, 1.6);
        let run = |config: &Config| run_all(&spec, &[spread()], config, &[1, 2], 2, || {}).unwrap();
        let (with, without) = (run(&with), run(&without));
        let (a, b) = (with[0].total(), without[0].total());
        // With the costs kept current, no round ends above the skew limit while every zone
        // has room, and the refresher rewrites a few costs, far fewer than there are replicas.
        assert_eq!(a.over_limit, 0, "{a:?}");
        assert!(with[0].cost_rewrites > 0 && with[0].cost_rewrites < a.placements);
        assert_eq!(without[0].cost_rewrites, 0);
        assert!(a.skew_mean() < b.skew_mean(), "{a:?}\n{b:?}");
        assert!(a.over_limit < b.over_limit, "{a:?}\n{b:?}");
        assert!(a.small_on_big < b.small_on_big, "{a:?}\n{b:?}");
        assert!(
            a.pending_with_capacity < b.pending_with_capacity,
            "{a:?}\n{b:?}"
        );
    }

    #[test]
    fn growth_alone_keeps_spread_within_one_and_binpack_within_five() {
        // One round scales every Deployment up from nothing: no deletion can skew the zones.
        let config = Config::default();
        for seed in 1..=4 {
            for (scheduler, limit) in [(spread(), 1), (binpack(), 5)] {
                let result = run(&small(1, 1.0), &scheduler, &config, seed).unwrap();
                for (model, s) in MODELS.iter().zip(&result.models) {
                    assert!(s.bound > 0);
                    assert!(
                        s.skew_max <= limit,
                        "{} seed {seed} {}: skew {}",
                        scheduler.name(),
                        model.name,
                        s.skew_max
                    );
                }
            }
        }
    }

    #[test]
    fn stock_kube_scheduler_strands_small_models_on_big_devices() {
        // The same fleet and demand under count-only scheduling: the rules above are not met
        // by accident.
        let config = Config::default();
        let result = run(&small(30, 1.6), &Scheduler::Stock, &config, 1).unwrap();
        let total = result.total();
        assert!(
            total.small_on_big > 0 && total.big_for_small > 0,
            "{total:?}"
        );
        assert!(total.unrunnable > 0, "{total:?}");
    }

    #[test]
    fn results_depend_on_the_seed_only() {
        let config = Config::default();
        let spec = small(8, 1.3);
        let all = [spread(), Scheduler::Stock];
        let one = run_all(&spec, &all, &config, &[5, 6], 1, || {}).unwrap();
        let two = run_all(&spec, &all, &config, &[5, 6], 2, || {}).unwrap();
        assert_eq!(one, two);
        assert_eq!(targets(&spec, 5), targets(&spec, 5));
        assert_ne!(targets(&spec, 5), targets(&spec, 6));
        // Every scheduler sees the same demand: bound + pending is the target each round.
        assert_eq!(
            one[0]
                .models
                .iter()
                .map(|m| m.bound + m.pending)
                .sum::<u64>(),
            one[1]
                .models
                .iter()
                .map(|m| m.bound + m.pending)
                .sum::<u64>()
        );
    }

    #[test]
    fn bad_input_is_refused_with_the_flag_named() {
        let config = Config::default();
        for text in [
            "",
            "1,2",
            "1,2,3,4",
            "a,1,1",
            "0,0,0",
            "10001,0,0",
            "-1,2,3",
        ] {
            assert!(
                matches!(FleetSpec::parse(text, 3), Err(ChurnError::Fleet(_))),
                "{text:?}"
            );
        }
        assert_eq!(FleetSpec::parse("1,1,1", 0), Err(ChurnError::Zones(0)));
        assert_eq!(FleetSpec::parse("1,1,1", 65), Err(ChurnError::Zones(65)));
        for demand in [0.0, -1.0, f64::NAN, f64::INFINITY, 10.5] {
            let spec = ChurnSpec {
                demand,
                ..ChurnSpec::default()
            };
            assert!(matches!(spec.validate(), Err(ChurnError::Demand(_))));
            // Compared by bits: `Demand(NaN)` is not equal to itself.
            let err = run(&spec, &Scheduler::Stock, &config, 1).err();
            assert!(
                matches!(err, Some(ChurnError::Demand(d)) if d.to_bits() == demand.to_bits()),
                "{err:?}"
            );
        }
        for rounds in [0, MAX_ROUNDS + 1] {
            let spec = ChurnSpec {
                rounds,
                ..ChurnSpec::default()
            };
            assert_eq!(spec.validate(), Err(ChurnError::Rounds(rounds)));
        }
        let err = parse_schedulers("vramfit-spread,nope", &config).unwrap_err();
        assert!(err.to_string().contains("\"nope\""), "{err}");
        assert_eq!(
            parse_schedulers(" , ", &config),
            Err(ChurnError::Scheduler {
                name: " , ".into(),
                known: "vramfit-binpack, vramfit-spread".into(),
            })
        );
        assert_eq!(
            parse_schedulers("all", &config).unwrap(),
            [
                spread(),
                binpack(),
                Scheduler::Extender(PROFILE_SPREAD.into()),
                Scheduler::Extender(PROFILE_BINPACK.into()),
                Scheduler::Stock
            ]
        );
        assert_eq!(
            parse_schedulers("nope+kube", &config),
            Err(ChurnError::Scheduler {
                name: "nope+kube".into(),
                known: "vramfit-binpack, vramfit-spread".into(),
            })
        );
        assert_eq!(
            Scheduler::from_name("vramfit-binpack+kube", &config).map(|s| s.name()),
            Some("vramfit-binpack+kube".to_string())
        );
        assert_eq!(
            parse_schedulers("STOCK,stock,vramfit-binpack", &config).unwrap(),
            [Scheduler::Stock, binpack()]
        );
    }

    #[test]
    fn fleet_nodes_are_read_by_the_core_from_their_labels() {
        let config = Config::default();
        let nodes = fleet_nodes(&FleetSpec::parse("3,2,1", 2).unwrap(), &config);
        assert_eq!(nodes.len(), 6);
        let sizes: Vec<(Class, usize, u64, bool)> = nodes
            .iter()
            .map(|n| {
                (
                    Class::of(n),
                    n.devices.len(),
                    n.largest_device_mib(),
                    n.sharing,
                )
            })
            .collect();
        assert_eq!(sizes[0], (Class::T4, 4, 15360, true));
        assert_eq!(sizes[3], (Class::A100, 8, 81920, true));
        assert_eq!(sizes[5], (Class::Ascend, 8, 65536, false));
        assert!(nodes.iter().all(|n| n.problem.is_none()));
        let zones: std::collections::BTreeSet<_> =
            nodes.iter().filter_map(NodeInfo::zone_name).collect();
        assert_eq!(zones.len(), 2);
        // Allocatable cpu and memory, from the class or `--node-cpu`.
        let host = |n: &NodeInfo| n.host.map(|h| (h.cpu_milli, h.memory_mib));
        assert_eq!(host(&nodes[0]), Some((64_000, 256 * 1024)));
        let tight = FleetSpec::parse("1,1,1", 1)
            .unwrap()
            .with_node_cpu("16, 48,64")
            .unwrap();
        let cores: Vec<_> = fleet_nodes(&tight, &config).iter().map(host).collect();
        assert_eq!(
            cores,
            vec![
                Some((16_000, 256 * 1024)),
                Some((48_000, 1024 * 1024)),
                Some((64_000, 1536 * 1024))
            ]
        );
    }
}
