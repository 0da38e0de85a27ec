//! The six baselines of the FGD paper, as the simulator's `pkg/simulator/plugin/*_score.go` score
//! them and as its `Open-Gpu-Share` reserve step picks GPUs.
//!
//! Scores are the simulator's integer node scores (0..=100, including its truncations). Among the
//! best-scoring feasible nodes the one with the lowest [`Cluster::tie_rank`] wins: the simulator's
//! kube-scheduler fork (`mental2008/kubernetes v1.20.5-minor`) breaks ties by the smallest node
//! name, and node names carry a per-run random permutation prefix.
//! GPU choice: Random picks a random fitting GPU for a sharing pod; DotProd, Clustering, Packing
//! and BestFit the fitting GPU with the least free milli (lowest index on ties); FGD the GPU whose
//! use raises fragmentation least. Whole-GPU pods always take the lowest-indexed fully free GPUs.

use rand::RngExt;
use rand_chacha::ChaCha8Rng;

use super::frag::{fgd_node_score, FragMemo};
use super::sim::{Choice, Cluster, NodeState, Policy};
use super::trace::MILLI;
use super::workload::PodReq;

/// CPU normaliser of DotProd and BestFit (`MaxSpecCpu`, milli-cores).
pub const MAX_SPEC_CPU: f64 = 128_000.0;
/// GPU normaliser of DotProd, BestFit and Clustering (`MaxSpecGpu`, milli-GPU).
pub const MAX_SPEC_GPU: f64 = 8_000.0;
const MAX_NODE_SCORE: i64 = 100;

/// Names of the six baselines, in the paper's order.
pub const BASELINES: [&str; 6] = [
    "Random",
    "DotProd",
    "Clustering",
    "Packing",
    "BestFit",
    "FGD",
];

/// Builds a baseline by name (case-insensitive; `GpuClustering`/`GpuPacking` also accepted).
pub fn baseline(name: &str) -> Option<Box<dyn Policy>> {
    let p: Box<dyn Policy> = match name.to_ascii_lowercase().as_str() {
        "random" => Box::new(RandomFit),
        "dotprod" | "dotproduct" => Box::new(Scored::new(ScoreRule::DotProd)),
        "clustering" | "gpuclustering" => Box::new(Scored::new(ScoreRule::Clustering)),
        "packing" | "gpupacking" => Box::new(Scored::new(ScoreRule::Packing)),
        "bestfit" => Box::new(Scored::new(ScoreRule::BestFit)),
        "fgd" => Box::new(Fgd::default()),
        _ => return None,
    };
    Some(p)
}

/// Lowest-indexed fully free GPUs for a whole-GPU pod (the simulator's `AllocateExclusiveGpuId`).
pub fn exclusive_gpus(node: &NodeState, num: u8) -> Vec<u8> {
    node.gpu_free()
        .iter()
        .enumerate()
        .filter(|(_, &g)| g == MILLI)
        .take(usize::from(num))
        .map(|(i, _)| i as u8)
        .collect()
}

/// Fitting GPU with the least free milli, lowest index on ties (`allocateGpuIdBasedOnBestFit`).
pub fn tightest_gpu(node: &NodeState, gpu_milli: u16) -> Option<u8> {
    let mut best: Option<(u16, u8)> = None;
    for (i, &g) in node.gpu_free().iter().enumerate() {
        if g >= gpu_milli && best.is_none_or(|(b, _)| g < b) {
            best = Some((g, i as u8));
        }
    }
    best.map(|(_, i)| i)
}

/// GPUs for a pod by best fit: tightest GPU for a sharing pod, exclusive GPUs otherwise.
pub fn best_fit_gpus(node: &NodeState, pod: &PodReq) -> Vec<u8> {
    if pod.num_gpu == 0 {
        Vec::new()
    } else if pod.is_gpu_share() {
        tightest_gpu(node, pod.gpu_milli).into_iter().collect()
    } else {
        exclusive_gpus(node, pod.num_gpu)
    }
}

/// Best-scoring entry of `scored` (node, score); ties go to the node with the lowest
/// [`Cluster::tie_rank`], as in the simulator's scheduler.
pub fn pick_best(cluster: &Cluster, scored: &[(usize, i64)]) -> Option<usize> {
    scored
        .iter()
        .max_by(|a, b| {
            a.1.cmp(&b.1)
                .then_with(|| cluster.tie_rank(b.0).cmp(&cluster.tie_rank(a.0)))
        })
        .map(|&(n, _)| n)
}

/// Random-fit: a uniformly random feasible node, and a random fitting GPU for a sharing pod.
#[derive(Debug, Default, Clone, Copy)]
pub struct RandomFit;

impl Policy for RandomFit {
    fn name(&self) -> String {
        "Random".into()
    }

    fn select(
        &mut self,
        cluster: &Cluster,
        pod: &PodReq,
        feasible: &[usize],
        rng: &mut ChaCha8Rng,
    ) -> Option<Choice> {
        let node = feasible[rng.random_range(0..feasible.len())];
        let state = cluster.node(node);
        let gpus = if pod.is_gpu_share() {
            let fitting: Vec<u8> = (0..state.num_gpus())
                .filter(|&g| state.gpu_free()[usize::from(g)] >= pod.gpu_milli)
                .collect();
            vec![fitting[rng.random_range(0..fitting.len())]]
        } else {
            exclusive_gpus(state, pod.num_gpu)
        };
        Some(Choice { node, gpus })
    }
}

/// Node-scoring rules of the score-based baselines other than FGD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScoreRule {
    /// Tetris dot product of free (CPU, total GPU) and request, normalised by the max node spec;
    /// the simulator scores `1 − dot/2`, so the node with the smaller product wins.
    DotProd,
    /// GPU clustering: nodes already holding only the pod's GPU class, then mixed nodes with it,
    /// then idle nodes, then others; within a band, less free GPU scores higher.
    Clustering,
    /// GPU packing: partly used GPUs first (least free), then used nodes needing the fewest fully
    /// free GPUs, idle nodes last.
    Packing,
    /// Best fit: least leftover `0.5·CPU/128 vCPU + 0.5·GPU/8 GPUs` after placement.
    BestFit,
}

impl ScoreRule {
    /// The simulator's integer score of a node for a pod (higher is better).
    pub fn score(self, node: &NodeState, pod: &PodReq) -> i64 {
        match self {
            ScoreRule::DotProd => dot_prod_score(node, pod),
            ScoreRule::Clustering => clustering_score(node, pod),
            ScoreRule::Packing => packing_score(node, pod),
            ScoreRule::BestFit => best_fit_score(node, pod),
        }
    }

    fn name(self) -> &'static str {
        match self {
            ScoreRule::DotProd => "DotProd",
            ScoreRule::Clustering => "Clustering",
            ScoreRule::Packing => "Packing",
            ScoreRule::BestFit => "BestFit",
        }
    }
}

fn dot_prod_score(node: &NodeState, pod: &PodReq) -> i64 {
    if node.cpu_free() < pod.cpu_milli {
        return 0;
    }
    let n = [
        f64::from(node.cpu_free()) / MAX_SPEC_CPU,
        f64::from(node.gpu_free_total()) / MAX_SPEC_GPU,
    ];
    let p = [
        f64::from(pod.cpu_milli) / MAX_SPEC_CPU,
        pod.total_gpu_milli() as f64 / MAX_SPEC_GPU,
    ];
    let mut dot = 0.0;
    for i in 0..2 {
        dot += n[i] * p[i];
    }
    let score = 1.0 - dot / 2.0;
    (MAX_NODE_SCORE as f64 * score) as i64
}

fn clustering_score(node: &NodeState, pod: &PodReq) -> i64 {
    let Some(class) = pod.gpu_class() else {
        return 0;
    };
    let counts = node.class_counts();
    let present = counts.iter().filter(|&&c| c > 0).count();
    let left = i64::from(node.gpu_free_total());
    let spec = MAX_SPEC_GPU as i64;
    let base = MAX_NODE_SCORE / 4 * (spec - left) / spec;
    let band = if counts[class] > 0 {
        if present == 1 {
            3
        } else {
            2
        }
    } else if present == 0 {
        1
    } else {
        0
    };
    base + MAX_NODE_SCORE * band / 4
}

fn packing_score(node: &NodeState, pod: &PodReq) -> i64 {
    if pod.num_gpu == 0 {
        return 0;
    }
    let free = node.gpu_free();
    let fully_free = i64::from(node.fully_free_gpus());
    if fully_free == i64::from(node.num_gpus()) {
        return (MAX_NODE_SCORE / 3 - fully_free).max(fully_free);
    }
    let mut order: Vec<usize> = (0..free.len()).collect();
    order.sort_by_key(|&i| free[i]); // stable: lowest index first among equals
    let mut need = pod.num_gpu;
    let mut fully_free_used = 0i64;
    let mut ratio_sum = 0i64;
    for i in order {
        if need == 0 {
            break;
        }
        if free[i] >= pod.gpu_milli {
            need -= 1;
            ratio_sum += i64::from(free[i]) * 100 / i64::from(MILLI);
            if free[i] == MILLI {
                fully_free_used += 1;
            }
        }
    }
    if need != 0 {
        return 0;
    }
    if fully_free_used > 0 {
        return (MAX_NODE_SCORE / 2 - fully_free_used).max(MAX_NODE_SCORE / 3);
    }
    (MAX_NODE_SCORE - ratio_sum / 10).max(MAX_NODE_SCORE / 2)
}

fn best_fit_score(node: &NodeState, pod: &PodReq) -> i64 {
    let free = [f64::from(node.cpu_free()), f64::from(node.gpu_free_total())];
    let req = [f64::from(pod.cpu_milli), pod.total_gpu_milli() as f64];
    let max = [MAX_SPEC_CPU, MAX_SPEC_GPU];
    let mut score = 0.0;
    for i in 0..2 {
        score += (free[i] - req[i]) / max[i] * 0.5;
    }
    ((1.0 - score) * MAX_NODE_SCORE as f64) as i64
}

/// A score-based baseline: best [`ScoreRule`] score, ties by rank, best-fit GPUs.
#[derive(Debug, Clone)]
pub struct Scored {
    rule: ScoreRule,
    scored: Vec<(usize, i64)>,
}

impl Scored {
    /// A policy using `rule`.
    pub fn new(rule: ScoreRule) -> Self {
        Self {
            rule,
            scored: Vec::new(),
        }
    }
}

impl Policy for Scored {
    fn name(&self) -> String {
        self.rule.name().into()
    }

    fn select(
        &mut self,
        cluster: &Cluster,
        pod: &PodReq,
        feasible: &[usize],
        _rng: &mut ChaCha8Rng,
    ) -> Option<Choice> {
        self.scored.clear();
        self.scored.extend(
            feasible
                .iter()
                .map(|&n| (n, self.rule.score(cluster.node(n), pod))),
        );
        let node = pick_best(cluster, &self.scored)?;
        Some(Choice {
            node,
            gpus: best_fit_gpus(cluster.node(node), pod),
        })
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct CacheEntry {
    epoch: u64,
    score: i64,
    gpu: u8,
}

/// Fragmentation Gradient Descent: the node (and, for a sharing pod, the GPU) whose use raises
/// the cluster's fragmentation against the typical workload least.
///
/// Fast path: node fragmentation is memoised by node state, and each node's score for a pod shape
/// is cached until that node changes, so a placement only re-evaluates what it touched.
#[derive(Debug, Default)]
pub struct Fgd {
    memo: FragMemo,
    cache: Vec<CacheEntry>,
    shapes: usize,
    scored: Vec<(usize, i64)>,
}

impl Fgd {
    fn score(&mut self, cluster: &Cluster, node: usize, pod: &PodReq) -> (i64, u8) {
        let state = cluster.node(node);
        let slot = node * self.shapes + pod.shape as usize;
        let hit = self.cache.get(slot).filter(|e| e.epoch == state.epoch());
        if let Some(e) = hit {
            return (e.score, e.gpu);
        }
        let (score, gpu) = fgd_node_score(&mut self.memo, cluster.typical_pods(), state, pod);
        let gpu = gpu.unwrap_or(0);
        if let Some(e) = self.cache.get_mut(slot) {
            *e = CacheEntry {
                epoch: state.epoch(),
                score,
                gpu,
            };
        }
        (score, gpu)
    }
}

impl Policy for Fgd {
    fn name(&self) -> String {
        "FGD".into()
    }

    fn select(
        &mut self,
        cluster: &Cluster,
        pod: &PodReq,
        feasible: &[usize],
        _rng: &mut ChaCha8Rng,
    ) -> Option<Choice> {
        let shapes = cluster.num_pod_shapes() as usize;
        let slots = cluster.nodes().len() * shapes;
        if self.shapes != shapes || self.cache.len() != slots {
            self.shapes = shapes;
            self.cache = vec![CacheEntry::default(); slots];
        }
        let mut scored = std::mem::take(&mut self.scored);
        scored.clear();
        for &n in feasible {
            scored.push((n, self.score(cluster, n, pod).0));
        }
        let node = pick_best(cluster, &scored);
        self.scored = scored;
        let node = node?;
        let gpus = if pod.is_gpu_share() {
            vec![self.score(cluster, node, pod).1]
        } else {
            exclusive_gpus(cluster.node(node), pod.num_gpu)
        };
        Some(Choice { node, gpus })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rand::SeedableRng;

    use super::super::frag::TypicalPod;
    use super::super::workload::ModelSet;
    use super::*;

    fn pod(cpu: u32, num: u8, milli: u16, class_shape: u32) -> PodReq {
        PodReq {
            trace_index: 0,
            tuned: false,
            cpu_milli: cpu,
            memory_mib: 0,
            num_gpu: num,
            gpu_milli: milli,
            models: ModelSet::ANY,
            shape: class_shape,
        }
    }

    fn node(name: &str, cpu: u32, gpus: &[u16]) -> NodeState {
        NodeState::new(name, 0, cpu, 1 << 20, gpus)
    }

    fn cluster(nodes: Vec<NodeState>, typical: Vec<TypicalPod>) -> Cluster {
        Cluster::from_states(nodes, Arc::from(vec!["G".to_string()]), typical.into(), 4)
    }

    fn rng() -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(7)
    }

    fn choose(policy: &mut dyn Policy, c: &Cluster, p: &PodReq) -> Choice {
        let mut feasible = Vec::new();
        c.feasible_nodes(p, &mut feasible);
        policy.select(c, p, &feasible, &mut rng()).unwrap()
    }

    fn chosen(node: usize, gpus: &[u8]) -> Choice {
        Choice {
            node,
            gpus: gpus.to_vec(),
        }
    }

    /// Node 0: 8 GPUs, GPU3 half used, 16 vCPU free of 96; node 1: idle 2-GPU node, 64 vCPU.
    fn two_nodes() -> Cluster {
        let mut a = node("a", 96_000, &[MILLI; 8]);
        a.place(&pod(80_000, 1, 500, 0), &[3]);
        cluster(vec![a, node("b", 64_000, &[MILLI; 2])], Vec::new())
    }

    #[test]
    fn best_fit_scores_and_choice() {
        let c = two_nodes();
        let share = pod(4000, 1, 300, 0);
        // a: 0.5·(16000−4000)/128000 + 0.5·(7500−300)/8000 = 0.046875 + 0.45 → int(50.3125) = 50
        assert_eq!(best_fit_score(c.node(0), &share), 50);
        // b: 0.5·60000/128000 + 0.5·1700/8000 = 0.234375 + 0.10625 → int(65.9375) = 65
        assert_eq!(best_fit_score(c.node(1), &share), 65);
        let ch = choose(&mut Scored::new(ScoreRule::BestFit), &c, &share);
        assert_eq!(ch, chosen(1, &[0]));
        // The sharing pod takes the tightest fitting GPU on node a.
        assert_eq!(best_fit_gpus(c.node(0), &share), vec![3]);
    }

    #[test]
    fn dot_prod_prefers_smaller_product() {
        let c = two_nodes();
        let whole = pod(8000, 1, 1000, 1);
        // a: 1 − (0.125·0.0625 + 0.9375·0.125)/2 = 0.9375 → 93; b: 1 − (0.5·0.0625 + 0.25·0.125)/2 → 96
        assert_eq!(dot_prod_score(c.node(0), &whole), 93);
        assert_eq!(dot_prod_score(c.node(1), &whole), 96);
        let ch = choose(&mut Scored::new(ScoreRule::DotProd), &c, &whole);
        assert_eq!(ch, chosen(1, &[0]));
    }

    #[test]
    fn clustering_bands() {
        let c = two_nodes();
        // Share pod: node a holds only shared pods → 75 + 25·(8000−7500)/8000 = 75 + 1.
        assert_eq!(clustering_score(c.node(0), &pod(1000, 1, 200, 0)), 76);
        // 1-GPU pod: node a holds another class → band 0: 1; idle node b → 25 + 25·6000/8000 = 43.
        assert_eq!(clustering_score(c.node(0), &pod(1000, 1, 1000, 1)), 1);
        assert_eq!(clustering_score(c.node(1), &pod(1000, 1, 1000, 1)), 43);
        assert_eq!(clustering_score(c.node(1), &pod(1000, 0, 0, 2)), 0);
        let ch = choose(
            &mut Scored::new(ScoreRule::Clustering),
            &c,
            &pod(1000, 1, 200, 0),
        );
        assert_eq!(ch, chosen(0, &[3]));
    }

    #[test]
    fn packing_cases() {
        let c = two_nodes();
        // Case 1, shared GPU with 500 free: 100 − 50/10 = 95.
        assert_eq!(packing_score(c.node(0), &pod(1000, 1, 300, 0)), 95);
        // Case 2, a used node needing 2 fully free GPUs: 50 − 2.
        assert_eq!(packing_score(c.node(0), &pod(1000, 2, 1000, 3)), 48);
        // Case 3, idle 2-GPU node: 33 − 2.
        assert_eq!(packing_score(c.node(1), &pod(1000, 1, 300, 0)), 31);
        let ch = choose(
            &mut Scored::new(ScoreRule::Packing),
            &c,
            &pod(1000, 1, 300, 0),
        );
        assert_eq!(ch, chosen(0, &[3]));
    }

    #[test]
    fn random_picks_a_feasible_node_and_fitting_gpu() {
        let c = two_nodes();
        let p = pod(30_000, 1, 600, 0); // only node b has the CPU
        let ch = choose(&mut RandomFit, &c, &p);
        assert_eq!(ch.node, 1);
        assert!(ch.gpus.len() == 1 && ch.gpus[0] < 2);
        let mut seen = [false; 8];
        let mut r = rng();
        for _ in 0..200 {
            let ch = RandomFit
                .select(&c, &pod(1000, 1, 600, 0), &[0], &mut r)
                .unwrap();
            seen[usize::from(ch.gpus[0])] = true;
        }
        // GPU3 (500 free) never fits a 600-milli pod; every other GPU is drawn.
        assert_eq!(seen, [true, true, true, false, true, true, true, true]);
    }

    #[test]
    fn fgd_avoids_fragmenting() {
        // Workload: only whole-GPU tasks. Node a has one GPU with 500 free, node b is idle.
        let typical = vec![TypicalPod {
            cpu_milli: 1000,
            gpu_milli: 1000,
            num_gpu: 1,
            models: ModelSet::ANY,
            gpu_spec: String::new(),
            count: 1,
            freq: 1.0,
        }];
        let mut a = node("a", 96_000, &[MILLI; 8]);
        a.place(&pod(1000, 1, 500, 0), &[3]);
        let c = cluster(vec![a, node("b", 64_000, &[MILLI; 2])], typical);
        assert_eq!(c.frag_total(), 500.0);
        // A 0.4-GPU pod on a's GPU3 lowers fragment (500 → 100): sigmoid(0.4) → 59;
        // anywhere else it adds 600: sigmoid(−0.6) → 35.
        let ch = choose(&mut Fgd::default(), &c, &pod(1000, 1, 400, 0));
        assert_eq!(ch, chosen(0, &[3]));
        // Cached path gives the same answer.
        let mut f = Fgd::default();
        let p = pod(1000, 1, 400, 0);
        assert_eq!(choose(&mut f, &c, &p), choose(&mut f, &c, &p));
    }

    #[test]
    fn ties_go_to_the_lowest_rank() {
        let mut c = cluster(
            vec![
                node("a", 8000, &[MILLI]),
                node("b", 8000, &[MILLI]),
                node("c", 8000, &[MILLI]),
            ],
            Vec::new(),
        );
        let p = pod(1000, 1, 1000, 1);
        assert_eq!(choose(&mut Scored::new(ScoreRule::BestFit), &c, &p).node, 0);
        c.set_tie_ranks(vec![2, 0, 1]);
        for mut policy in [
            Scored::new(ScoreRule::BestFit),
            Scored::new(ScoreRule::Packing),
        ] {
            assert_eq!(choose(&mut policy, &c, &p).node, 1);
        }
        assert_eq!(choose(&mut Fgd::default(), &c, &p).node, 1);
        assert_eq!(pick_best(&c, &[(0, 5), (2, 5), (1, 4)]), Some(2));
        assert_eq!(pick_best(&c, &[]), None);
    }

    #[test]
    fn names_and_lookup() {
        for name in BASELINES {
            assert_eq!(baseline(name).unwrap().name(), name);
        }
        assert!(baseline("nope").is_none());
    }
}
