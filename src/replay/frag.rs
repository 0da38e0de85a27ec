//! FGD's fragmentation measure (Weng et al., ATC'23) and its typical-task set.
//!
//! Node fragmentation against one task type m: if the node cannot host m (too little CPU, too few
//! GPUs with enough free milli, or a GPU model m does not accept) every idle milli-GPU on the node
//! is fragment; otherwise the idle milli on the GPUs whose free share is below m's `gpu_milli` is.
//! CPU-only task types count all idle GPU as fragment, as the simulator's `xl_satisfied` and
//! `xr_lack_cpu` classes do. The node value is the frequency-weighted sum over the typical task
//! types; the cluster value is the sum over nodes. The arithmetic follows the simulator's
//! `NodeGpuShareFragAmount` term by term so that FGD's quantised scores tie where its do.

use std::collections::HashMap;

use rustc_hash::FxBuildHasher;

use super::sim::NodeState;
use super::trace::{TracePod, MAX_GPUS, MILLI};
use super::workload::{ModelSet, PodReq};

/// Share of all pods the typical task types must cover, in percent (the simulator's default run).
pub const TYPICAL_COVERAGE_PCT: f64 = 95.0;

/// One typical task type: a (cpu, num_gpu, gpu_milli, gpu model constraint) shape and its weight.
#[derive(Debug, Clone, PartialEq)]
pub struct TypicalPod {
    /// CPU request in milli-cores.
    pub cpu_milli: u32,
    /// Milli-GPU per GPU (0 for CPU-only).
    pub gpu_milli: u16,
    /// Number of GPUs.
    pub num_gpu: u8,
    /// Allowed GPU models.
    pub models: ModelSet,
    /// The raw `gpu_spec` string the shape was keyed by.
    pub gpu_spec: String,
    /// Number of pods of this shape in the trace.
    pub count: u32,
    /// Frequency among the typical set (the weights sum to 1).
    pub freq: f64,
}

/// Computes the typical task types of a trace, as the simulator's `GetTypicalPods` does with
/// CPU-only pods included, step 1 and the given coverage: shapes sorted by count (ties by the
/// larger cpu, gpu_milli, num_gpu, spec), the most popular taken until they cover
/// `coverage_pct` % of the pods, then renormalised to sum to 1.
pub fn typical_pods(pods: &[TracePod], models: &[String], coverage_pct: f64) -> Vec<TypicalPod> {
    let mut counts: HashMap<(u32, u16, u8, &str), u32> = HashMap::new();
    for p in pods {
        *counts
            .entry((p.cpu_milli, p.gpu_milli, p.num_gpu, p.gpu_spec_raw.as_str()))
            .or_insert(0) += 1;
    }
    let mut list: Vec<_> = counts.into_iter().collect();
    list.sort_by(|(ka, ca), (kb, cb)| cb.cmp(ca).then_with(|| kb.cmp(ka)));
    let total = pods.len() as f64;
    let expected = coverage_pct * total / 100.0;
    let mut cum = 0.0;
    let mut taken = 0;
    while cum < expected && taken < list.len() {
        cum += f64::from(list[taken].1);
        taken += 1;
    }
    let renorm = taken < list.len();
    list.truncate(taken);
    list.into_iter()
        .map(|((cpu_milli, gpu_milli, num_gpu, spec), count)| {
            let mut freq = f64::from(count) / total;
            if renorm {
                freq /= cum / total;
            }
            let names: Vec<String> = spec
                .split('|')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            TypicalPod {
                cpu_milli,
                gpu_milli,
                num_gpu,
                models: ModelSet::from_names(&names, models),
                gpu_spec: spec.to_string(),
                count,
                freq,
            }
        })
        .collect()
}

const Q1_LACK_BOTH: usize = 0;
const Q2_LACK_GPU: usize = 1;
const Q3_SATISFIED: usize = 2;
const Q4_LACK_CPU: usize = 3;
const XL_SATISFIED: usize = 4;
const XR_LACK_CPU: usize = 5;
const NO_ACCESS: usize = 6;

/// Fragment of one node (milli-GPU) against the typical task types.
///
/// `model` is the node's model id (see [`ModelSet`]); only the first `gpu_free.len()` GPUs exist.
pub fn node_frag(model: u8, cpu_free: u32, gpu_free: &[u16], typical: &[TypicalPod]) -> f64 {
    let idle: u32 = gpu_free.iter().map(|&g| u32::from(g)).sum();
    if idle == 0 {
        return 0.0;
    }
    let idle_f = f64::from(idle);
    let mut data = [0.0f64; 7];
    for t in typical {
        if t.gpu_milli == 0 {
            let class = if cpu_free >= t.cpu_milli {
                XL_SATISFIED
            } else {
                XR_LACK_CPU
            };
            data[class] += t.freq * idle_f;
            continue;
        }
        if !t.models.allows(model) {
            data[NO_ACCESS] += t.freq * idle_f;
            continue;
        }
        let fitting = gpu_free.iter().filter(|&&g| g >= t.gpu_milli).count();
        let gpu_ok = fitting >= usize::from(t.num_gpu.max(1));
        let cpu_ok = cpu_free >= t.cpu_milli;
        match (gpu_ok, cpu_ok) {
            (true, true) => {
                let frag: u32 = gpu_free
                    .iter()
                    .filter(|&&g| g < t.gpu_milli)
                    .map(|&g| u32::from(g))
                    .sum();
                data[Q2_LACK_GPU] += t.freq * f64::from(frag);
                data[Q3_SATISFIED] += t.freq * f64::from(idle - frag);
            }
            (true, false) => data[Q4_LACK_CPU] += t.freq * idle_f,
            (false, true) => data[Q2_LACK_GPU] += t.freq * idle_f,
            (false, false) => data[Q1_LACK_BOTH] += t.freq * idle_f,
        }
    }
    let mut out = 0.0;
    for (i, v) in data.iter().enumerate() {
        if i != Q3_SATISFIED {
            out += v;
        }
    }
    out
}

/// A node state as far as fragmentation is concerned: model, free CPU and the multiset of free
/// milli-GPU (sorted, packed 16 bits per GPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FragKey {
    gpus: u128,
    cpu_free: u32,
    model: u8,
    num_gpus: u8,
}

impl FragKey {
    /// Builds the key of a node state.
    pub fn new(model: u8, cpu_free: u32, gpu_free: &[u16]) -> Self {
        let mut sorted = [0u16; MAX_GPUS as usize];
        sorted[..gpu_free.len()].copy_from_slice(gpu_free);
        sorted[..gpu_free.len()].sort_unstable_by(|a, b| b.cmp(a));
        let gpus = sorted
            .iter()
            .fold(0u128, |acc, &g| (acc << 16) | u128::from(g));
        Self {
            gpus,
            cpu_free,
            model,
            num_gpus: gpu_free.len() as u8,
        }
    }
}

/// Memo of node fragmentation by node state; many nodes share shape and state.
#[derive(Debug, Clone, Default)]
pub struct FragMemo {
    map: HashMap<FragKey, f64, FxBuildHasher>,
}

impl FragMemo {
    /// Fragment of a node state, computed once per distinct state.
    pub fn frag(
        &mut self,
        model: u8,
        cpu_free: u32,
        gpu_free: &[u16],
        typical: &[TypicalPod],
    ) -> f64 {
        *self
            .map
            .entry(FragKey::new(model, cpu_free, gpu_free))
            .or_insert_with(|| node_frag(model, cpu_free, gpu_free, typical))
    }

    /// Number of distinct states seen.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True if nothing was memoised yet.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// FGD's 0..=100 node score for a fragment change, as the simulator quantises it:
/// `int(sigmoid((before − after) / 1000) × 100)`.
pub fn fgd_quantise(before: f64, after: f64) -> i64 {
    let x = (before - after) / 1000.0;
    (1.0 / (1.0 + (-x).exp()) * 100.0) as i64
}

/// FGD's score of placing a pod (`cpu_milli`, `num_gpu` × `gpu_milli`) on a node state, and the
/// GPU it would use for a GPU-sharing pod (the lowest index among the best-scoring GPUs).
/// Whole-GPU pods take the lowest-indexed fully free GPUs; CPU-only pods take none.
/// The caller guarantees the pod fits.
pub fn fgd_node_score(
    memo: &mut FragMemo,
    typical: &[TypicalPod],
    node: &NodeState,
    pod: &PodReq,
) -> (i64, Option<u8>) {
    let (model, cpu_free, gpu_free) = (node.model_id(), node.cpu_free(), node.gpu_free());
    let (cpu_milli, num_gpu, gpu_milli) = (pod.cpu_milli, pod.num_gpu, pod.gpu_milli);
    let before = memo.frag(model, cpu_free, gpu_free, typical);
    let cpu_after = cpu_free.saturating_sub(cpu_milli);
    let mut after = [0u16; MAX_GPUS as usize];
    let n = gpu_free.len();
    after[..n].copy_from_slice(gpu_free);
    if num_gpu == 1 && gpu_milli < MILLI {
        let mut best: Option<(i64, u8)> = None;
        let mut tried = [u16::MAX; MAX_GPUS as usize];
        for (i, &g) in gpu_free.iter().enumerate() {
            if g < gpu_milli || tried[..i].contains(&g) {
                continue;
            }
            tried[i] = g;
            after[i] = g - gpu_milli;
            let s = fgd_quantise(before, memo.frag(model, cpu_after, &after[..n], typical));
            after[i] = g;
            if best.is_none_or(|(b, _)| s > b) {
                best = Some((s, i as u8));
            }
        }
        match best {
            Some((s, i)) => (s, Some(i)),
            None => (0, None),
        }
    } else {
        let mut need = num_gpu;
        for g in after[..n].iter_mut() {
            if need == 0 {
                break;
            }
            if *g == MILLI {
                *g = 0;
                need -= 1;
            }
        }
        (
            fgd_quantise(before, memo.frag(model, cpu_after, &after[..n], typical)),
            None,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(cpu: u32, milli: u16, num: u8, freq: f64) -> TypicalPod {
        TypicalPod {
            cpu_milli: cpu,
            gpu_milli: milli,
            num_gpu: num,
            models: ModelSet::ANY,
            gpu_spec: String::new(),
            count: 1,
            freq,
        }
    }

    fn pod(name: &str, cpu: u32, num: u8, milli: u16, spec: &str) -> TracePod {
        TracePod {
            name: name.into(),
            cpu_milli: cpu,
            memory_mib: 0,
            num_gpu: num,
            gpu_milli: milli,
            gpu_spec: spec
                .split('|')
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            gpu_spec_raw: spec.into(),
        }
    }

    #[test]
    fn node_frag_by_hand() {
        // Two task types, half each: a 0.5-GPU task (4 CPU) and a whole 1-GPU task (4 CPU).
        let typical = [tp(4000, 500, 1, 0.5), tp(4000, 1000, 1, 0.5)];
        // GPUs free 300 and 1000: half-GPU task fits on GPU1, fragment is GPU0's 300;
        // whole-GPU task fits on GPU1, fragment is again 300 → 0.5·300 + 0.5·300 = 300.
        assert_eq!(node_frag(0, 8000, &[300, 1000], &typical), 300.0);
        // GPUs free 300 and 600: half fits (frag 300), whole does not (all 900 idle).
        assert_eq!(
            node_frag(0, 8000, &[300, 600], &typical),
            0.5 * 300.0 + 0.5 * 900.0
        );
        // Too little CPU: everything idle is fragment.
        assert_eq!(node_frag(0, 1000, &[300, 1000], &typical), 1300.0);
        // Fully used node has no fragment.
        assert_eq!(node_frag(0, 8000, &[0, 0], &typical), 0.0);
        // CPU-only task types count all idle GPU.
        assert_eq!(
            node_frag(0, 8000, &[1000, 1000], &[tp(1000, 0, 0, 1.0)]),
            2000.0
        );
    }

    #[test]
    fn model_constraint_is_no_access() {
        let models = vec!["A".to_string(), "B".to_string()];
        let mut t = tp(1000, 1000, 1, 1.0);
        t.models = ModelSet::from_names(&["B".to_string()], &models);
        assert_eq!(node_frag(0, 8000, &[1000], &[t.clone()]), 1000.0);
        assert_eq!(node_frag(1, 8000, &[1000], &[t]), 0.0);
    }

    #[test]
    fn typical_set_covers_and_renormalises() {
        let mut pods = Vec::new();
        for i in 0..50 {
            pods.push(pod(&format!("a{i}"), 4000, 1, 1000, ""));
        }
        for i in 0..46 {
            pods.push(pod(&format!("b{i}"), 2000, 1, 500, ""));
        }
        for i in 0..3 {
            pods.push(pod(&format!("c{i}"), 1000, 0, 0, ""));
        }
        pods.push(pod("d", 8000, 8, 1000, "X"));
        let t = typical_pods(&pods, &["X".to_string()], 95.0);
        // 50 + 46 = 96 ≥ 95: two shapes, renormalised over 96 pods.
        assert_eq!(t.len(), 2);
        assert_eq!((t[0].cpu_milli, t[0].count), (4000, 50));
        assert!((t[0].freq - 50.0 / 96.0).abs() < 1e-12);
        assert!((t.iter().map(|x| x.freq).sum::<f64>() - 1.0).abs() < 1e-12);
        // Full coverage keeps all shapes, including the model-constrained one.
        let all = typical_pods(&pods, &["X".to_string()], 100.0);
        assert_eq!(all.len(), 4);
        assert!(!all[3].models.is_any());
    }

    fn share(cpu: u32, milli: u16) -> PodReq {
        PodReq {
            trace_index: 0,
            tuned: false,
            cpu_milli: cpu,
            memory_mib: 0,
            num_gpu: 1,
            gpu_milli: milli,
            models: ModelSet::ANY,
            shape: 0,
        }
    }

    fn score(
        memo: &mut FragMemo,
        typical: &[TypicalPod],
        gpus: &[u16],
        milli: u16,
    ) -> (i64, Option<u8>) {
        let node = NodeState::new("n", 0, 8000, 1 << 20, gpus);
        fgd_node_score(memo, typical, &node, &share(1000, milli))
    }

    #[test]
    fn fgd_prefers_the_gpu_that_fragments_least() {
        let typical = [tp(1000, 500, 1, 1.0)];
        let mut memo = FragMemo::default();
        // A 0.5-GPU pod on GPUs free [1000, 500]: on GPU1 it uses the half left exactly
        // (fragment stays 0); on GPU0 it leaves 500 + 500, still no fragment for 0.5 tasks.
        let (s, gpu) = score(&mut memo, &typical, &[1000, 500], 500);
        assert_eq!((s, gpu), (50, Some(0)));
        // A 0.3-GPU pod: on GPU0 leaves 200 (fragment +200); on GPU1 leaves 700 (none).
        let (s, gpu) = score(&mut memo, &typical, &[500, 1000], 300);
        assert_eq!(gpu, Some(1));
        assert_eq!(s, 50);
        let (s, gpu) = score(&mut memo, &typical, &[500, 400], 300);
        // GPU0 → [200, 400]: fragment 600; GPU1 → [500, 100]: fragment 100 → GPU1 wins.
        assert_eq!(gpu, Some(1));
        assert_eq!(s, fgd_quantise(400.0, 100.0));
        assert!(memo.len() >= 4);
    }

    #[test]
    fn quantisation() {
        assert_eq!(fgd_quantise(0.0, 0.0), 50);
        assert_eq!(fgd_quantise(0.0, 1000.0), 26); // sigmoid(-1) = 0.2689
        assert_eq!(fgd_quantise(1000.0, 0.0), 73);
        assert_eq!(FragKey::new(0, 5, &[1, 2]), FragKey::new(0, 5, &[2, 1]));
    }
}
