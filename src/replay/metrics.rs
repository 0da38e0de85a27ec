//! Per-run measurements, the paper's 1 %-of-arrived-load buckets, and the experiment runner
//! (traces × policies × seeds, in parallel, reporting each finished run).
//!
//! Bucketing follows the simulator's analysis scripts (`experiments/analysis/merge_*_discrete*.py`):
//! after every pod the arrived GPU request is expressed in % of cluster capacity and rounded to an
//! integer (half to even); a bucket's value is the mean over the pods that fall in it (allocation
//! first rounded to 0.01 %), or, when no pod falls in it, the mean over the pods within ±1 of it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use super::sim::{simulate, Policy, SimError};
use super::trace::TraceNode;
use super::workload::Workload;

/// State after one arrived pod.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    /// GPU request of all pods so far, failed ones included (milli-GPU).
    pub arrived_gpu_milli: u64,
    /// Allocated milli-GPU.
    pub allocated_gpu_milli: u64,
    /// FGD fragment of the cluster (milli-GPU).
    pub frag_gpu_milli: f64,
}

/// One 1 % bucket of arrived load.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BucketRow {
    /// Arrived GPU request in % of capacity (the bucket).
    pub arrived_pct: u32,
    /// Unallocated GPU in % of capacity (100 − allocation ratio).
    pub unalloc_gpu_pct: f64,
    /// Allocated GPU in % of capacity.
    pub alloc_ratio_pct: f64,
    /// Fragment in % of capacity.
    pub frag_amount_pct: f64,
    /// Fragment in % of idle GPU (`None` if nothing was idle).
    pub frag_ratio_pct: Option<f64>,
}

/// Highest bucket reported (130 % arrived).
pub const MAX_ARRIVED_PCT: u32 = 130;

fn round2(x: f64) -> f64 {
    (x * 100.0).round_ties_even() / 100.0
}

/// Buckets the steps of a run at each 1 % of arrived load from 0 to `max_pct`.
pub fn bucketize(steps: &[Step], total_gpu_milli: u64, max_pct: u32) -> Vec<BucketRow> {
    if total_gpu_milli == 0 {
        return Vec::new();
    }
    let gpus = total_gpu_milli as f64 / 1000.0;
    struct Point {
        bucket: f64,
        alloc: f64,
        frag_milli: f64,
        frag_ratio: Option<f64>,
    }
    let points: Vec<Point> = steps
        .iter()
        .map(|s| {
            let idle = total_gpu_milli - s.allocated_gpu_milli;
            Point {
                bucket: (s.arrived_gpu_milli as f64 / gpus / 10.0).round_ties_even(),
                alloc: round2(s.allocated_gpu_milli as f64 / gpus / 10.0),
                frag_milli: round2(s.frag_gpu_milli),
                frag_ratio: (idle > 0).then(|| round2(100.0 * s.frag_gpu_milli / idle as f64)),
            }
        })
        .collect();
    let mut rows = Vec::new();
    for pct in 0..=max_pct {
        let b = f64::from(pct);
        let mut sel: Vec<&Point> = points.iter().filter(|p| p.bucket == b).collect();
        if sel.is_empty() {
            sel = points
                .iter()
                .filter(|p| p.bucket >= b - 1.0 && p.bucket <= b + 1.0)
                .collect();
        }
        if sel.is_empty() {
            continue;
        }
        let n = sel.len() as f64;
        let alloc = round2(sel.iter().map(|p| p.alloc).sum::<f64>() / n);
        let frag = sel.iter().map(|p| p.frag_milli).sum::<f64>() / n;
        let ratios: Vec<f64> = sel.iter().filter_map(|p| p.frag_ratio).collect();
        rows.push(BucketRow {
            arrived_pct: pct,
            unalloc_gpu_pct: round2(100.0 - alloc),
            alloc_ratio_pct: alloc,
            frag_amount_pct: round2(100.0 * frag / 1000.0 / gpus),
            frag_ratio_pct: (!ratios.is_empty())
                .then(|| ratios.iter().sum::<f64>() / ratios.len() as f64),
        });
    }
    rows
}

/// Result of one (trace, policy, seed) run.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// Trace label.
    pub trace: String,
    /// Policy name.
    pub policy: String,
    /// Seed.
    pub seed: u64,
    /// Pods that arrived (after tuning).
    pub pods: usize,
    /// Pods that failed.
    pub failed: usize,
    /// Buckets 0..=130 % arrived.
    pub buckets: Vec<BucketRow>,
    /// Wall time of the run in seconds.
    pub seconds: f64,
}

impl RunResult {
    /// The bucket at `arrived_pct`, if the run reached it.
    pub fn at(&self, arrived_pct: u32) -> Option<&BucketRow> {
        self.buckets.iter().find(|b| b.arrived_pct == arrived_pct)
    }
}

/// A named way to build a fresh policy for each run.
pub struct PolicySpec {
    /// Name shown in results.
    pub name: String,
    /// Builds the policy.
    pub build: Box<dyn Fn() -> Box<dyn Policy> + Send + Sync>,
}

impl PolicySpec {
    /// A policy spec from a name and a constructor.
    pub fn new(
        name: impl Into<String>,
        build: impl Fn() -> Box<dyn Policy> + Send + Sync + 'static,
    ) -> Self {
        Self {
            name: name.into(),
            build: Box::new(build),
        }
    }

    /// The six paper baselines.
    pub fn baselines() -> Vec<PolicySpec> {
        super::policy::BASELINES
            .iter()
            .map(|&n| {
                PolicySpec::new(n, move || {
                    super::policy::baseline(n).expect("known baseline")
                })
            })
            .collect()
    }
}

/// The run matrix.
pub struct Experiment<'a> {
    /// Node list.
    pub nodes: &'a [TraceNode],
    /// Workloads (traces).
    pub workloads: &'a [Workload],
    /// Policies.
    pub policies: &'a [PolicySpec],
    /// Seeds (the paper: 42..=51).
    pub seeds: &'a [u64],
    /// Workload tuning ratio (the paper: 1.3).
    pub tune_ratio: f64,
    /// Worker threads (at least 1).
    pub threads: usize,
}

/// Progress of an experiment, passed to the callback after each finished run.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Runs finished.
    pub done: usize,
    /// Runs in total.
    pub total: usize,
}

/// Runs every (trace, policy, seed) combination; calls `on_done` on the calling thread as each run
/// finishes; returns the results in (trace, policy, seed) order. Stops at the first error.
pub fn run_experiment(
    exp: &Experiment<'_>,
    mut on_done: impl FnMut(&RunResult, Progress),
) -> Result<Vec<RunResult>, SimError> {
    let mut jobs = Vec::new();
    for w in 0..exp.workloads.len() {
        for p in 0..exp.policies.len() {
            for &seed in exp.seeds {
                jobs.push((w, p, seed));
            }
        }
    }
    let total = jobs.len();
    let next = AtomicUsize::new(0);
    let mut slots: Vec<Option<RunResult>> = vec![None; total];
    let (tx, rx) = mpsc::channel::<(usize, Result<RunResult, SimError>)>();
    std::thread::scope(|scope| {
        for _ in 0..exp.threads.max(1).min(total.max(1)) {
            let tx = tx.clone();
            let (jobs, next) = (&jobs, &next);
            scope.spawn(move || loop {
                let j = next.fetch_add(1, Ordering::Relaxed);
                let Some(&(w, p, seed)) = jobs.get(j) else {
                    break;
                };
                let res = run_one(exp, w, p, seed);
                let failed = res.is_err();
                if tx.send((j, res)).is_err() || failed {
                    next.store(usize::MAX / 2, Ordering::Relaxed);
                    break;
                }
            });
        }
        drop(tx);
        for (done, (j, res)) in rx.into_iter().enumerate() {
            let r = res?;
            on_done(
                &r,
                Progress {
                    done: done + 1,
                    total,
                },
            );
            slots[j] = Some(r);
        }
        Ok(slots.into_iter().flatten().collect())
    })
}

fn run_one(exp: &Experiment<'_>, w: usize, p: usize, seed: u64) -> Result<RunResult, SimError> {
    let start = Instant::now();
    let workload = &exp.workloads[w];
    let spec = &exp.policies[p];
    let mut policy = (spec.build)();
    let trace = simulate(exp.nodes, workload, policy.as_mut(), seed, exp.tune_ratio)?;
    Ok(RunResult {
        trace: workload.label.clone(),
        policy: spec.name.clone(),
        seed,
        pods: trace.steps.len(),
        failed: trace.failed,
        buckets: bucketize(&trace.steps, trace.total_gpu_milli, MAX_ARRIVED_PCT),
        seconds: start.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use rand_chacha::ChaCha8Rng;

    use super::super::sim::{Choice, Cluster};
    use super::super::trace::TracePod;
    use super::super::workload::PodReq;
    use super::*;

    fn trace_pod(name: &str, cpu: u32, num: u8, milli: u16) -> TracePod {
        TracePod {
            name: name.into(),
            cpu_milli: cpu,
            memory_mib: 0,
            num_gpu: num,
            gpu_milli: milli,
            gpu_spec: Vec::new(),
            gpu_spec_raw: String::new(),
        }
    }

    fn two_by_two() -> Vec<TraceNode> {
        (0..2)
            .map(|i| TraceNode {
                name: format!("n{i}"),
                cpu_milli: 16_000,
                memory_mib: 65_536,
                num_gpus: 2,
                model: "T4".into(),
            })
            .collect()
    }

    /// a: 1 whole GPU; b, c: half a GPU each; d: CPU only.
    fn small_workload(nodes: &[TraceNode]) -> Workload {
        let pods = vec![
            trace_pod("a", 4000, 1, 1000),
            trace_pod("b", 2000, 1, 500),
            trace_pod("c", 2000, 1, 500),
            trace_pod("d", 1000, 0, 0),
        ];
        Workload::new("small", pods, nodes).unwrap()
    }

    #[test]
    fn hand_computed_two_nodes_two_gpus() {
        let nodes = two_by_two();
        let w = small_workload(&nodes);
        // Typical types: half-GPU (2 of 4 pods), whole GPU (1), CPU-only (1); all kept.
        let freqs: Vec<f64> = w.typical_pods().iter().map(|t| t.freq).collect();
        assert_eq!(freqs, [0.5, 0.25, 0.25]);
        let mut c = Cluster::new(&nodes, &w).unwrap();
        // Idle: only the CPU-only type counts the 4000 idle milli: 0.25 · 4000.
        assert_eq!(c.frag_total(), 1000.0);
        let req = |i: usize| -> PodReq {
            let p = &w.pods[i];
            PodReq {
                trace_index: i,
                tuned: false,
                cpu_milli: p.cpu_milli,
                memory_mib: p.memory_mib,
                num_gpu: p.num_gpu,
                gpu_milli: p.gpu_milli,
                models: super::super::workload::ModelSet::ANY,
                shape: 0,
            }
        };
        let mut steps = Vec::new();
        let mut arrived = 0;
        let plan = [
            (0, 0, vec![0u8]),
            (1, 1, vec![0]),
            (2, 0, vec![1]),
            (3, 1, vec![]),
        ];
        for (pod, node, gpus) in plan {
            let p = req(pod);
            arrived += p.total_gpu_milli();
            c.apply(&p, &Choice { node, gpus }).unwrap();
            steps.push(Step {
                arrived_gpu_milli: arrived,
                allocated_gpu_milli: c.allocated_gpu_milli(),
                frag_gpu_milli: c.frag_total(),
            });
        }
        // After a on n0/GPU0: n0 [0,1000] → 0.25·1000; n1 idle → 0.25·2000. Total 750.
        assert_eq!(steps[0].frag_gpu_milli, 750.0);
        // After b on n1/GPU0: n1 [500,1000]: whole type sees 500 stranded (0.25·500) plus the
        // CPU-only type's 0.25·1500 → 500; n0 still 250. Total 750.
        assert_eq!(steps[1].frag_gpu_milli, 750.0);
        // After c on n0/GPU1: n0 [0,500]: the whole type cannot fit → all 500 idle (0.25·500),
        // CPU-only type 0.25·500 → 250; n1 500. Total 750.
        assert_eq!(c.node_frag(0), 250.0);
        assert_eq!(steps[2].frag_gpu_milli, 750.0);
        assert_eq!(steps[3].allocated_gpu_milli, 2000);

        let rows = bucketize(&steps, c.total_gpu_milli(), 130);
        let at = |p: u32| *rows.iter().find(|r| r.arrived_pct == p).unwrap();
        // 1000 of 4000 milli arrived and allocated: 25 % → 75 % unallocated.
        assert_eq!(
            (at(25).unalloc_gpu_pct, at(25).alloc_ratio_pct),
            (75.0, 25.0)
        );
        assert_eq!(at(25).frag_amount_pct, 18.75); // 750 / 4000
        assert_eq!(at(25).frag_ratio_pct, Some(25.0)); // 750 / 3000 idle
                                                       // 1500 milli = 37.5 % → bucket 38 (half to even).
        assert_eq!(at(38).unalloc_gpu_pct, 62.5);
        // Bucket 50 holds c and d: both 50 % allocated; fragment 750 of 2000 idle.
        assert_eq!(at(50).unalloc_gpu_pct, 50.0);
        assert_eq!(at(50).frag_ratio_pct, Some(37.5));
    }

    /// Outside policy: first feasible node, best-fit GPUs.
    struct FirstFit;

    impl Policy for FirstFit {
        fn name(&self) -> String {
            "FirstFit".into()
        }
        fn select(
            &mut self,
            c: &Cluster,
            pod: &PodReq,
            feasible: &[usize],
            _: &mut ChaCha8Rng,
        ) -> Option<Choice> {
            let node = feasible[0];
            Some(Choice {
                node,
                gpus: super::super::policy::best_fit_gpus(c.node(node), pod),
            })
        }
    }

    /// Outside policy returning an impossible GPU.
    struct Broken;

    impl Policy for Broken {
        fn name(&self) -> String {
            "Broken".into()
        }
        fn select(
            &mut self,
            _: &Cluster,
            _: &PodReq,
            feasible: &[usize],
            _: &mut ChaCha8Rng,
        ) -> Option<Choice> {
            Some(Choice {
                node: feasible[0],
                gpus: vec![7],
            })
        }
    }

    #[test]
    fn same_seed_same_result() {
        let nodes = two_by_two();
        let w = small_workload(&nodes);
        for name in super::super::policy::BASELINES {
            let run = |seed| {
                let mut p = super::super::policy::baseline(name).unwrap();
                simulate(&nodes, &w, p.as_mut(), seed, 1.3).unwrap().steps
            };
            assert_eq!(run(42), run(42), "{name}");
        }
        let mut p = super::super::policy::baseline("Random").unwrap();
        let a = simulate(&nodes, &w, p.as_mut(), 42, 1.3).unwrap();
        // Tuned to 1.3 × 4000: arrivals stop once the next pod would pass 5200 milli.
        let last = a.steps.last().unwrap();
        assert!(last.arrived_gpu_milli <= 5200 + 1000, "{last:?}");
        assert!(last.allocated_gpu_milli <= 4000);
    }

    #[test]
    fn experiment_runs_every_combination_and_reports_progress() {
        let nodes = two_by_two();
        let workloads = [small_workload(&nodes)];
        let mut policies = PolicySpec::baselines();
        policies.push(PolicySpec::new("FirstFit", || Box::new(FirstFit)));
        let seeds = [1, 2, 3];
        let exp = Experiment {
            nodes: &nodes,
            workloads: &workloads,
            policies: &policies,
            seeds: &seeds,
            tune_ratio: 1.3,
            threads: 2,
        };
        let mut seen = Vec::new();
        let results =
            run_experiment(&exp, |r, p| seen.push((r.policy.clone(), p.done, p.total))).unwrap();
        assert_eq!(results.len(), 7 * 3);
        assert_eq!(seen.len(), 21);
        assert!(seen.iter().all(|&(_, _, t)| t == 21));
        assert_eq!(seen.last().unwrap().1, 21);
        assert_eq!((results[0].policy.as_str(), results[0].seed), ("Random", 1));
        assert_eq!(
            (results[20].policy.as_str(), results[20].seed),
            ("FirstFit", 3)
        );
        assert!(results.iter().all(|r| !r.buckets.is_empty() && r.pods >= 4));
        // Same inputs on one thread give the same numbers.
        let single = run_experiment(&Experiment { threads: 1, ..exp }, |_, _| {}).unwrap();
        for (a, b) in results.iter().zip(&single) {
            assert_eq!(a.buckets, b.buckets);
        }

        let broken = [PolicySpec::new("Broken", || Box::new(Broken))];
        let err = run_experiment(
            &Experiment {
                policies: &broken,
                ..exp
            },
            |_, _| {},
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("policy `Broken` made an invalid choice"),
            "{err}"
        );
    }

    fn step(arrived: u64, alloc: u64, frag: f64) -> Step {
        Step {
            arrived_gpu_milli: arrived,
            allocated_gpu_milli: alloc,
            frag_gpu_milli: frag,
        }
    }

    #[test]
    fn buckets_average_and_fall_back() {
        // 4 GPUs = 4000 milli; 1 % = 40 milli.
        let steps = [
            step(0, 0, 400.0),       // bucket 0
            step(40, 40, 400.0),     // bucket 1
            step(60, 40, 200.0),     // 1.5 → 2 (half to even)
            step(100, 100, 100.0),   // 2.5 → 2
            step(4000, 3000, 500.0), // bucket 100
        ];
        let rows = bucketize(&steps, 4000, 130);
        let at = |p| {
            rows.iter()
                .find(|r: &&BucketRow| r.arrived_pct == p)
                .copied()
        };
        assert_eq!(at(0).unwrap().alloc_ratio_pct, 0.0);
        assert_eq!(at(0).unwrap().frag_amount_pct, 10.0);
        assert_eq!(at(0).unwrap().frag_ratio_pct, Some(10.0));
        let b2 = at(2).unwrap();
        assert_eq!(b2.alloc_ratio_pct, 1.75); // mean of 1.0 and 2.5
        assert_eq!(b2.unalloc_gpu_pct, 98.25);
        assert_eq!(b2.frag_amount_pct, 3.75); // mean 150 milli of 4000
                                              // Bucket 3 has no point: the points of buckets 2..=4 are used.
        assert_eq!(at(3).unwrap().alloc_ratio_pct, 1.75);
        assert!(at(4).is_none());
        assert!(at(50).is_none());
        let b100 = at(100).unwrap();
        assert_eq!((b100.unalloc_gpu_pct, b100.alloc_ratio_pct), (25.0, 75.0));
        assert_eq!(b100.frag_ratio_pct, Some(50.0));
    }
}
