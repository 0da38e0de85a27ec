//! Cluster state, the policy interface and the pod-by-pod placement loop.
//!
//! The replay follows the ATC'23 FGD simulator (`hkust-adsl/kubernetes-scheduler-simulator`):
//! the arrival sequence comes from [`Workload::arrivals`]; every pod is tried once, a pod no node
//! can host fails, nothing departs. The policy under test sees the feasible nodes and returns a
//! [`Choice`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::frag::{FragMemo, TypicalPod};
use super::metrics::Step;
use super::trace::{TraceNode, MAX_GPUS, MILLI};
use super::workload::{model_names, PodReq, Workload, MAX_MODELS, NO_MODEL};
/// Number of GPU-request classes used by GPU clustering: shared, then 1..=8 whole GPUs.
pub const GPU_CLASSES: usize = 1 + MAX_GPUS as usize;

/// Error from the simulator.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The node list has more distinct GPU models than supported.
    #[error("node list has {0} distinct GPU models; at most {MAX_MODELS} are supported")]
    TooManyModels(usize),
    /// The node list is empty.
    #[error("node list is empty")]
    NoNodes,
    /// The workload was resolved against a node list with other GPU models.
    #[error("workload and cluster were built from node lists with different GPU models")]
    ModelMismatch,
    /// A policy returned a placement that is not valid for the pod.
    #[error("policy `{policy}` made an invalid choice for pod `{pod}`: {reason}")]
    InvalidChoice {
        /// Policy name.
        policy: String,
        /// Pod name.
        pod: String,
        /// Why the choice is invalid.
        reason: ChoiceError,
    },
}

/// Why a policy's [`Choice`] is not a valid placement of the pod.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChoiceError {
    /// The node index is outside the cluster.
    #[error("node index {0} out of range")]
    NoSuchNode(usize),
    /// The pod's cpu, memory, GPU count or GPU model does not fit the node.
    #[error("pod does not fit node `{0}`")]
    DoesNotFit(String),
    /// Not one GPU index per requested GPU.
    #[error("{given} GPU indices for a pod requesting {requested}")]
    GpuCount {
        /// Indices given.
        given: usize,
        /// GPUs the pod requests.
        requested: u8,
    },
    /// A GPU index the node does not have.
    #[error("GPU index {index} on a node with {gpus} GPUs")]
    NoSuchGpu {
        /// The index given.
        index: u8,
        /// GPUs on the node.
        gpus: u8,
    },
    /// The same GPU index twice.
    #[error("GPU index {0} given twice")]
    GpuTwice(u8),
    /// A GPU with too little free.
    #[error("GPU {index} has {free} milli free, pod needs {need}")]
    GpuFull {
        /// The GPU index.
        index: u8,
        /// Its free milli-GPU.
        free: u32,
        /// The pod's milli-GPU per GPU.
        need: u32,
    },
}

/// Where a policy puts a pod: the node index and the GPU indices on it (one per requested GPU).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    /// Index into [`Cluster::nodes`].
    pub node: usize,
    /// GPU indices on the node; empty for CPU-only pods.
    pub gpus: Vec<u8>,
}

/// A placement policy the simulator calls for every pod that fits at least one node.
pub trait Policy: Send {
    /// Name used in results (e.g. `"FGD"`).
    fn name(&self) -> String;
    /// Picks a node among `feasible` (indices into [`Cluster::nodes`], never empty) and GPUs on
    /// it. `None` makes the pod fail.
    fn select(
        &mut self,
        cluster: &Cluster,
        pod: &PodReq,
        feasible: &[usize],
        rng: &mut ChaCha8Rng,
    ) -> Option<Choice>;
}

static NEXT_EPOCH: AtomicU64 = AtomicU64::new(1);

fn next_epoch() -> u64 {
    NEXT_EPOCH.fetch_add(1, Ordering::Relaxed)
}

/// Mutable state of one node.
#[derive(Debug, Clone)]
pub struct NodeState {
    name: String,
    model: u8,
    cpu_capacity: u32,
    cpu_free: u32,
    mem_capacity: u64,
    mem_free: u64,
    num_gpus: u8,
    gpu_free: [u16; MAX_GPUS as usize],
    classes: [u32; GPU_CLASSES],
    epoch: u64,
}

impl NodeState {
    /// A free-standing node state (model id, capacities and current free milli-GPU per GPU).
    pub fn new(
        name: &str,
        model: u8,
        cpu_capacity: u32,
        mem_capacity: u64,
        gpu_free: &[u16],
    ) -> Self {
        let mut free = [0u16; MAX_GPUS as usize];
        let n = gpu_free.len().min(MAX_GPUS as usize);
        free[..n].copy_from_slice(&gpu_free[..n]);
        Self {
            name: name.to_string(),
            model,
            cpu_capacity,
            cpu_free: cpu_capacity,
            mem_capacity,
            mem_free: mem_capacity,
            num_gpus: n as u8,
            gpu_free: free,
            classes: [0; GPU_CLASSES],
            epoch: next_epoch(),
        }
    }

    /// Node name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// GPU model id ([`NO_MODEL`] without GPUs); see [`Cluster::models`].
    pub fn model_id(&self) -> u8 {
        self.model
    }
    /// CPU capacity in milli-cores.
    pub fn cpu_capacity(&self) -> u32 {
        self.cpu_capacity
    }
    /// Unrequested CPU in milli-cores.
    pub fn cpu_free(&self) -> u32 {
        self.cpu_free
    }
    /// Memory capacity in MiB.
    pub fn mem_capacity(&self) -> u64 {
        self.mem_capacity
    }
    /// Unrequested memory in MiB.
    pub fn mem_free(&self) -> u64 {
        self.mem_free
    }
    /// Number of GPUs.
    pub fn num_gpus(&self) -> u8 {
        self.num_gpus
    }
    /// Free milli-GPU of each GPU (0..=1000), by GPU index.
    pub fn gpu_free(&self) -> &[u16] {
        &self.gpu_free[..usize::from(self.num_gpus)]
    }
    /// Sum of free milli-GPU.
    pub fn gpu_free_total(&self) -> u32 {
        self.gpu_free().iter().map(|&g| u32::from(g)).sum()
    }
    /// Number of GPUs with all 1000 milli free.
    pub fn fully_free_gpus(&self) -> u8 {
        self.gpu_free().iter().filter(|&&g| g == MILLI).count() as u8
    }
    /// Number of placed pods per GPU-request class (index as [`PodReq::gpu_class`]).
    pub fn class_counts(&self) -> &[u32; GPU_CLASSES] {
        &self.classes
    }
    /// Changes whenever the node's state changes (unique within the process).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Whether the pod fits: CPU and memory, and for GPU pods an accepted model and `num_gpu`
    /// GPUs with at least `gpu_milli` free each (the simulator's `Open-Gpu-Share` filter).
    pub fn fits(&self, pod: &PodReq) -> bool {
        if pod.cpu_milli > self.cpu_free || pod.memory_mib > self.mem_free {
            return false;
        }
        if pod.num_gpu == 0 {
            return true;
        }
        if self.num_gpus == 0 || !pod.models.allows(self.model) {
            return false;
        }
        let fitting = self
            .gpu_free()
            .iter()
            .filter(|&&g| g >= pod.gpu_milli)
            .count();
        fitting >= usize::from(pod.num_gpu)
    }

    fn check_gpus(&self, pod: &PodReq, gpus: &[u8]) -> Result<(), ChoiceError> {
        if gpus.len() != usize::from(pod.num_gpu) {
            return Err(ChoiceError::GpuCount {
                given: gpus.len(),
                requested: pod.num_gpu,
            });
        }
        for (k, &g) in gpus.iter().enumerate() {
            if g >= self.num_gpus {
                return Err(ChoiceError::NoSuchGpu {
                    index: g,
                    gpus: self.num_gpus,
                });
            }
            if gpus[..k].contains(&g) {
                return Err(ChoiceError::GpuTwice(g));
            }
            let free = self.gpu_free[usize::from(g)];
            if free < pod.gpu_milli {
                return Err(ChoiceError::GpuFull {
                    index: g,
                    free: free.into(),
                    need: pod.gpu_milli.into(),
                });
            }
        }
        Ok(())
    }

    /// Places the pod on the given GPUs (the caller has checked it fits).
    pub fn place(&mut self, pod: &PodReq, gpus: &[u8]) {
        self.cpu_free -= pod.cpu_milli;
        self.mem_free -= pod.memory_mib;
        for &g in gpus {
            self.gpu_free[usize::from(g)] -= pod.gpu_milli;
        }
        if let Some(c) = pod.gpu_class() {
            self.classes[c] += 1;
        }
        self.epoch = next_epoch();
    }
}

/// The cluster during one run.
#[derive(Debug, Clone)]
pub struct Cluster {
    nodes: Vec<NodeState>,
    models: Arc<[String]>,
    typical: Arc<[TypicalPod]>,
    num_pod_shapes: u32,
    pod_shapes: Arc<[(PodReq, u32)]>,
    total_gpu_milli: u64,
    allocated_gpu_milli: u64,
    node_frag: Vec<f64>,
    frag_total: f64,
    memo: FragMemo,
    rank: Vec<u32>,
}

impl Cluster {
    /// Builds an idle cluster from the node list and the workload's typical pods; the workload
    /// must have been resolved against a node list with the same GPU models.
    pub fn new(nodes: &[TraceNode], workload: &Workload) -> Result<Self, SimError> {
        let models = model_names(nodes)?;
        if models != workload.models() {
            return Err(SimError::ModelMismatch);
        }
        let nodes: Vec<NodeState> = nodes
            .iter()
            .map(|n| {
                let model = models
                    .iter()
                    .position(|m| *m == n.model)
                    .map_or(NO_MODEL, |i| i as u8);
                let model = if n.num_gpus == 0 { NO_MODEL } else { model };
                let gpus = vec![MILLI; usize::from(n.num_gpus)];
                NodeState::new(&n.name, model, n.cpu_milli, n.memory_mib, &gpus)
            })
            .collect();
        let mut cluster = Self::from_states(
            nodes,
            models.into(),
            workload.typical_shared(),
            workload.num_pod_shapes(),
        );
        cluster.pod_shapes = workload.shape_counts();
        Ok(cluster)
    }

    /// Builds a cluster from explicit node states (e.g. a hand-built or partly used cluster).
    pub fn from_states(
        nodes: Vec<NodeState>,
        models: Arc<[String]>,
        typical: Arc<[TypicalPod]>,
        num_pod_shapes: u32,
    ) -> Self {
        let mut memo = FragMemo::default();
        let node_frag: Vec<f64> = nodes
            .iter()
            .map(|n| memo.frag(n.model, n.cpu_free, n.gpu_free(), &typical))
            .collect();
        let total_gpu_milli = nodes
            .iter()
            .map(|n| u64::from(n.num_gpus) * u64::from(MILLI))
            .sum();
        let allocated_gpu_milli = total_gpu_milli
            - nodes
                .iter()
                .map(|n| u64::from(n.gpu_free_total()))
                .sum::<u64>();
        Self {
            rank: (0..nodes.len() as u32).collect(),
            frag_total: node_frag.iter().sum(),
            node_frag,
            nodes,
            models,
            typical,
            num_pod_shapes,
            pod_shapes: Arc::from(Vec::new()),
            total_gpu_milli,
            allocated_gpu_milli,
            memo,
        }
    }

    /// All nodes, by index.
    pub fn nodes(&self) -> &[NodeState] {
        &self.nodes
    }
    /// One node.
    pub fn node(&self, i: usize) -> &NodeState {
        &self.nodes[i]
    }
    /// GPU model names; a node's [`NodeState::model_id`] indexes this list.
    pub fn models(&self) -> &[String] {
        &self.models
    }
    /// Model name of a node ("" without GPUs).
    pub fn model_name(&self, i: usize) -> &str {
        self.models
            .get(usize::from(self.nodes[i].model))
            .map_or("", String::as_str)
    }
    /// The workload's typical task types (FGD's target workload).
    pub fn typical_pods(&self) -> &[TypicalPod] {
        &self.typical
    }
    /// Number of distinct pod shapes ([`PodReq::shape`] is below it).
    pub fn num_pod_shapes(&self) -> u32 {
        self.num_pod_shapes
    }
    /// One pod of each distinct shape of the workload and its count in the trace (empty for a
    /// cluster built from explicit states).
    pub fn pod_shapes(&self) -> &[(PodReq, u32)] {
        &self.pod_shapes
    }
    /// GPU capacity in milli-GPU.
    pub fn total_gpu_milli(&self) -> u64 {
        self.total_gpu_milli
    }
    /// Allocated milli-GPU.
    pub fn allocated_gpu_milli(&self) -> u64 {
        self.allocated_gpu_milli
    }
    /// FGD fragment of one node (milli-GPU).
    pub fn node_frag(&self, i: usize) -> f64 {
        self.node_frag[i]
    }
    /// FGD fragment of the cluster (milli-GPU).
    pub fn frag_total(&self) -> f64 {
        self.frag_total
    }

    /// Tie-break rank of a node: among equally scored nodes the lowest rank wins. The simulator
    /// prefixes node names with a per-run random permutation and its scheduler fork picks the
    /// smallest name; [`simulate`] draws the permutation after preparing the workload. Defaults to
    /// the node index.
    pub fn tie_rank(&self, i: usize) -> u32 {
        self.rank[i]
    }

    /// Sets the tie-break ranks (a permutation of `0..nodes().len()`).
    pub fn set_tie_ranks(&mut self, ranks: Vec<u32>) {
        assert_eq!(ranks.len(), self.nodes.len(), "one rank per node");
        self.rank = ranks;
    }

    /// Indices of the nodes the pod fits, in node order.
    pub fn feasible_nodes(&self, pod: &PodReq, out: &mut Vec<usize>) {
        out.clear();
        out.extend((0..self.nodes.len()).filter(|&i| self.nodes[i].fits(pod)));
    }

    /// Applies a placement after checking it; updates allocation and fragmentation.
    pub fn apply(&mut self, pod: &PodReq, choice: &Choice) -> Result<(), ChoiceError> {
        let node = self
            .nodes
            .get(choice.node)
            .ok_or(ChoiceError::NoSuchNode(choice.node))?;
        if !node.fits(pod) {
            return Err(ChoiceError::DoesNotFit(node.name.clone()));
        }
        node.check_gpus(pod, &choice.gpus)?;
        let node = &mut self.nodes[choice.node];
        node.place(pod, &choice.gpus);
        self.allocated_gpu_milli += pod.total_gpu_milli();
        let frag = self
            .memo
            .frag(node.model, node.cpu_free, node.gpu_free(), &self.typical);
        self.frag_total += frag - self.node_frag[choice.node];
        self.node_frag[choice.node] = frag;
        Ok(())
    }
}

/// What one run produced.
#[derive(Debug, Clone)]
pub struct RunTrace {
    /// One entry per arrived pod, in arrival order.
    pub steps: Vec<Step>,
    /// Cluster GPU capacity in milli-GPU.
    pub total_gpu_milli: u64,
    /// Pods that could not be placed.
    pub failed: usize,
}

/// Replays one workload on one cluster with one policy.
///
/// The run's random stream is `ChaCha8Rng::seed_from_u64(seed)`: it shuffles and tunes the
/// workload first (so every policy sees the same arrivals for a seed), then draws the nodes'
/// tie-break ranks, then goes to the policy.
pub fn simulate(
    nodes: &[TraceNode],
    workload: &Workload,
    policy: &mut dyn Policy,
    seed: u64,
    tune_ratio: f64,
) -> Result<RunTrace, SimError> {
    use rand::SeedableRng;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut cluster = Cluster::new(nodes, workload)?;
    let arrivals = workload.arrivals(cluster.total_gpu_milli(), tune_ratio, &mut rng);
    let mut ranks: Vec<u32> = (0..cluster.nodes().len() as u32).collect();
    ranks.shuffle(&mut rng);
    cluster.set_tie_ranks(ranks);
    let mut steps = Vec::with_capacity(arrivals.len());
    let mut feasible = Vec::with_capacity(cluster.nodes().len());
    let mut arrived = 0u64;
    let mut failed = 0;
    for pod in &arrivals {
        arrived += pod.total_gpu_milli();
        cluster.feasible_nodes(pod, &mut feasible);
        let choice = if feasible.is_empty() {
            None
        } else {
            policy.select(&cluster, pod, &feasible, &mut rng)
        };
        match choice {
            Some(choice) => {
                cluster
                    .apply(pod, &choice)
                    .map_err(|reason| SimError::InvalidChoice {
                        policy: policy.name(),
                        pod: workload.pods[pod.trace_index].name.clone(),
                        reason,
                    })?;
            }
            None => failed += 1,
        }
        steps.push(Step {
            arrived_gpu_milli: arrived,
            allocated_gpu_milli: cluster.allocated_gpu_milli(),
            frag_gpu_milli: cluster.frag_total(),
        });
    }
    Ok(RunTrace {
        steps,
        total_gpu_milli: cluster.total_gpu_milli(),
        failed,
    })
}

#[cfg(test)]
mod tests {
    use super::super::workload::ModelSet;
    use super::*;

    fn pod(cpu: u32, mem: u64, num: u8, milli: u16, models: ModelSet) -> PodReq {
        PodReq {
            trace_index: 0,
            tuned: false,
            cpu_milli: cpu,
            memory_mib: mem,
            num_gpu: num,
            gpu_milli: milli,
            models,
            shape: 0,
        }
    }

    #[test]
    fn feasibility() {
        let mut n = NodeState::new("n", 1, 8000, 1024, &[MILLI; 4]);
        n.place(&pod(1000, 0, 1, 700, ModelSet::ANY), &[0]);
        n.place(&pod(1000, 0, 2, 1000, ModelSet::ANY), &[2, 3]);
        assert_eq!(n.gpu_free(), &[300, 1000, 0, 0]);
        assert_eq!(
            (n.cpu_free(), n.fully_free_gpus(), n.gpu_free_total()),
            (6000, 1, 1300)
        );
        assert_eq!(n.class_counts()[0], 1);
        assert_eq!(n.class_counts()[2], 1);
        assert!(n.fits(&pod(6000, 1024, 0, 0, ModelSet::ANY)));
        assert!(!n.fits(&pod(6001, 0, 0, 0, ModelSet::ANY)), "cpu");
        assert!(!n.fits(&pod(1000, 1025, 0, 0, ModelSet::ANY)), "memory");
        assert!(n.fits(&pod(1000, 0, 1, 300, ModelSet::ANY)));
        assert!(
            !n.fits(&pod(1000, 0, 2, 1000, ModelSet::ANY)),
            "one whole GPU left"
        );
        let models = ["A".to_string(), "B".to_string()];
        assert!(n.fits(&pod(
            1000,
            0,
            1,
            1000,
            ModelSet::from_names(&["B".into()], &models)
        )));
        assert!(!n.fits(&pod(
            1000,
            0,
            1,
            1000,
            ModelSet::from_names(&["A".into()], &models)
        )));
        let cpu_only = NodeState::new("c", NO_MODEL, 8000, 1024, &[]);
        assert!(cpu_only.fits(&pod(1000, 0, 0, 0, ModelSet::ANY)));
        assert!(!cpu_only.fits(&pod(1000, 0, 1, 100, ModelSet::ANY)));
    }

    #[test]
    fn apply_checks_the_choice() {
        let nodes = vec![NodeState::new("n", 0, 8000, 1024, &[MILLI, 500])];
        let mut c = Cluster::from_states(
            nodes,
            Arc::from(vec!["G".to_string()]),
            Arc::from(vec![]),
            1,
        );
        assert_eq!((c.total_gpu_milli(), c.allocated_gpu_milli()), (2000, 500));
        let share = pod(1000, 0, 1, 600, ModelSet::ANY);
        let bad = |gpus: Vec<u8>| Choice { node: 0, gpus };
        let refused = |c: &mut Cluster, pod: &PodReq, choice: Choice| {
            let error = c.apply(pod, &choice).unwrap_err();
            (error.clone(), error.to_string())
        };
        assert_eq!(
            refused(&mut c, &share, bad(vec![1])),
            (
                ChoiceError::GpuFull {
                    index: 1,
                    free: 500,
                    need: 600
                },
                "GPU 1 has 500 milli free, pod needs 600".into()
            )
        );
        assert_eq!(
            refused(&mut c, &share, bad(vec![2])).0,
            ChoiceError::NoSuchGpu { index: 2, gpus: 2 }
        );
        assert_eq!(
            refused(&mut c, &share, bad(vec![])).0,
            ChoiceError::GpuCount {
                given: 0,
                requested: 1
            }
        );
        let elsewhere = Choice {
            node: 5,
            gpus: vec![0],
        };
        assert_eq!(
            refused(&mut c, &share, elsewhere).0,
            ChoiceError::NoSuchNode(5)
        );
        let whole = pod(1000, 0, 2, 1000, ModelSet::ANY);
        assert_eq!(
            refused(&mut c, &whole, bad(vec![0, 0])).0,
            ChoiceError::DoesNotFit("n".into())
        );
        let epoch = c.node(0).epoch();
        c.apply(&share, &bad(vec![0])).unwrap();
        assert_eq!(c.node(0).gpu_free(), &[400, 500]);
        assert_eq!(c.allocated_gpu_milli(), 1100);
        assert_ne!(c.node(0).epoch(), epoch);
        c.set_tie_ranks(vec![0]);
        assert_eq!(c.tie_rank(0), 0);
    }
}
