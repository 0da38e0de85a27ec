//! The `replay` command: loads traces, runs every policy × seed with a progress bar, prints the
//! paper-style table and writes the per-bucket CSV.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};

use crate::core::Config;
use crate::replay::metrics::{run_experiment, Experiment, PolicySpec};
use crate::replay::policy::BASELINES;
use crate::replay::report::{load_reference, summary_table, write_results_file};
use crate::replay::trace::{load_nodes, load_pods, trace_label};
use crate::replay::vramfit_policy::VramfitPolicy;
use crate::replay::workload::Workload;

/// Arguments of `vramfit replay`.
pub struct ReplayArgs {
    /// Node list CSV (`--nodes`).
    pub nodes: PathBuf,
    /// Pod list CSVs, one run set per file.
    pub pods: Vec<PathBuf>,
    /// Seeds: a range `42-51` or a list `42,43` (`--seeds`).
    pub seeds: String,
    /// Policies, comma separated, or `all` (`--policies`).
    pub policies: String,
    /// Load as a multiple of cluster GPU capacity, in (0, 10] (`--tune-ratio`).
    pub tune_ratio: f64,
    /// Worker threads; `None` uses every available core.
    pub threads: Option<usize>,
    /// Per-bucket results CSV to write, if any (`--csv`).
    pub csv: Option<PathBuf>,
    /// Reference results CSV to print beside ours, if any (`--reference`).
    pub reference: Option<PathBuf>,
    /// Placement settings for the vramfit policy.
    pub config: Config,
}

/// Parses `42-51` or `42,43,50`.
pub fn parse_seeds(text: &str) -> anyhow::Result<Vec<u64>> {
    let seeds: Vec<u64> = match text.split_once('-') {
        Some((a, b)) => {
            let (a, b): (u64, u64) = (a.trim().parse()?, b.trim().parse()?);
            if a > b {
                bail!("seed range {text:?} is empty");
            }
            (a..=b).collect()
        }
        None => text
            .split(',')
            .map(|s| s.trim().parse::<u64>())
            .collect::<Result<_, _>>()
            .with_context(|| format!("seeds {text:?}: expected 42-51 or 42,43"))?,
    };
    if seeds.is_empty() {
        bail!("no seeds in {text:?}");
    }
    Ok(seeds)
}

/// The policies named in `text` (`all`, or a comma-separated list).
pub fn policy_specs(text: &str, config: &Config) -> anyhow::Result<Vec<PolicySpec>> {
    let mut names: Vec<String> = std::iter::once("vramfit".to_string())
        .chain(BASELINES.iter().map(|s| s.to_string()))
        .collect();
    if !text.eq_ignore_ascii_case("all") {
        let wanted: Vec<&str> = text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        for w in &wanted {
            if !names.iter().any(|n| n.eq_ignore_ascii_case(w)) {
                bail!("unknown policy {w:?} (known: {})", names.join(", "));
            }
        }
        names.retain(|n| wanted.iter().any(|w| w.eq_ignore_ascii_case(n)));
    }
    let baselines = PolicySpec::baselines();
    let mut specs = Vec::new();
    for name in names {
        if name == "vramfit" {
            let config = config.clone();
            specs.push(PolicySpec::new("vramfit", move || {
                Box::new(VramfitPolicy::new(config.clone()))
            }));
        } else if let Some(i) = baselines.iter().position(|b| b.name == name) {
            let n = BASELINES[i];
            specs.push(PolicySpec::new(n, move || {
                crate::replay::policy::baseline(n)
                    .unwrap_or_else(|| unreachable!("listed baseline {n}"))
            }));
        }
    }
    Ok(specs)
}

/// Runs the replay and prints the table.
pub fn run(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let seeds = parse_seeds(&args.seeds)?;
    if !(args.tune_ratio > 0.0 && args.tune_ratio <= 10.0) {
        bail!("--tune-ratio must be in (0, 10], got {}", args.tune_ratio);
    }
    let policies = policy_specs(&args.policies, &args.config)?;
    let nodes = load_nodes(&args.nodes)?;
    let mut workloads = Vec::new();
    for path in &args.pods {
        let pods = load_pods(path)?;
        let label = trace_label(path.to_string_lossy().as_ref());
        workloads.push(
            Workload::new(&label, pods, &nodes).with_context(|| format!("{}", path.display()))?,
        );
    }
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let experiment = Experiment {
        nodes: &nodes,
        workloads: &workloads,
        policies: &policies,
        seeds: &seeds,
        tune_ratio: args.tune_ratio,
        threads,
    };
    let total = (workloads.len() * policies.len() * seeds.len()) as u64;
    let bar = ProgressBar::new(total).with_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} runs {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let results = run_experiment(&experiment, |r, _| {
        bar.set_message(format!("{} {} seed {}", r.trace, r.policy, r.seed));
        bar.inc(1);
    })?;
    bar.finish_and_clear();
    let reference = match &args.reference {
        Some(path) => load_reference(path)?,
        None => None,
    };
    print!("{}", summary_table(&results, reference.as_ref()));
    println!(
        "\n{} runs ({} traces × {} policies × {} seeds) in {:.1} s on {threads} threads",
        results.len(),
        workloads.len(),
        policies.len(),
        seeds.len(),
        started.elapsed().as_secs_f64()
    );
    if let Some(path) = &args.csv {
        write_results_file(path, &results)?;
        println!("wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `vramfit replay --churn`.
pub struct ChurnArgs {
    /// Seeds: a range `42-51` or a list `42,43` (`--seeds`).
    pub seeds: String,
    /// Rounds of scaling (`--rounds`).
    pub rounds: u32,
    /// Multiplier of every Deployment's replica targets (`--demand`).
    pub demand: f64,
    /// Comma-separated profiles of the config and `stock`, or `all` (`--profiles`).
    pub profiles: String,
    /// Node counts `T4,A100,910B` (`--fleet`).
    pub fleet: String,
    /// Zones the nodes are dealt over (`--zones`).
    pub zones: u32,
    /// Cores per node `T4,A100,910B` (`--node-cpu`); `None` keeps 64,128,192.
    pub node_cpu: Option<String>,
    /// Worker threads; `None` uses every available core.
    pub threads: Option<usize>,
    /// Placement settings for the vramfit profiles.
    pub config: Config,
}

/// Runs the built-in churn workload and prints its table.
pub fn run_churn(args: ChurnArgs) -> anyhow::Result<ExitCode> {
    use crate::replay::churn::{self, ChurnSpec, FleetSpec};
    let seeds = parse_seeds(&args.seeds)?;
    let spec = ChurnSpec {
        fleet: match (FleetSpec::parse(&args.fleet, args.zones)?, &args.node_cpu) {
            (fleet, Some(cores)) => fleet.with_node_cpu(cores)?,
            (fleet, None) => fleet,
        },
        rounds: args.rounds,
        demand: args.demand,
    };
    spec.validate()?;
    let schedulers = churn::parse_schedulers(&args.profiles, &args.config)?;
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let total = (schedulers.len() * seeds.len()) as u64;
    let bar = ProgressBar::new(total).with_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} runs")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let results = churn::run_all(&spec, &schedulers, &args.config, &seeds, threads, || {
        bar.inc(1)
    })?;
    bar.finish_and_clear();
    print!(
        "{}",
        churn::table(&results, &spec, seeds.len(), &args.config)
    );
    println!(
        "\n{total} runs ({} schedulers × {} seeds) in {:.1} s on {threads} threads",
        schedulers.len(),
        seeds.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}
