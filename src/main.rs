//! The `vramfit` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};

use vramfit::dryrun::place::{render_table, DryRun};
use vramfit::extender::http::{serve_with_ops, App};
use vramfit::extender::metrics::Metrics;
use vramfit::extender::settings::{load_catalog, Settings};
use vramfit::extender::state::ExtenderState;
use vramfit::kubernetes::snapshot::{load_file, load_workloads};

#[derive(Parser)]
#[command(
    name = "vramfit",
    version,
    about = "GPU-VRAM-aware Kubernetes scheduler extender and placement dry-run"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum SharingBackend {
    Mps,
    HamiCore,
    None,
}

#[derive(Subcommand)]
enum Command {
    /// Run the scheduler extender (filter, prioritize, bind) over HTTP: against the live
    /// cluster (watching Nodes and Pods, creating Bindings), or a static snapshot.
    Serve(ServeArgs),
    /// Place pods on a cluster snapshot or a live cluster (read-only), one after another, and
    /// show where and why not.
    Place(PlaceArgs),
    /// Node agent: reads this node's GPUs (NVML) or NPUs (npu-smi) and keeps the node's
    /// `vramfit.io/gpu-status` annotation current.
    Agent(AgentArgs),
    /// Kubelet device plugin for VRAM sharing (`vramfit.io/vram-gib`, 1 GiB units) on nodes
    /// labelled `vramfit.io/sharing: vram`: hands each sharing container the device vramfit
    /// assigned it, with its VRAM limit for the node's enforcement backend.
    DevicePlugin(DevicePluginArgs),
    /// Health probe for Kubernetes exec probes: GETs http://ADDR/PATH on the local server and
    /// exits 0 on status 200, 1 otherwise (the server listens on loopback, which httpGet probes
    /// cannot reach).
    Probe(ProbeArgs),
    /// Replay GPU-sharing traces (Alibaba openb) and measure packing quality per policy.
    Replay(ReplayArgs),
}

/// Where the cluster comes from: a snapshot file or the live API.
#[derive(Args)]
struct ClusterSource {
    /// Cluster snapshot (Nodes and Pods, YAML or JSON, e.g. `kubectl get nodes,pods -A -o yaml`)
    /// instead of the live cluster (`serve` then records binds in memory only).
    #[arg(long)]
    snapshot: Option<PathBuf>,
    /// Kubeconfig for the live cluster (default: in-cluster service account, KUBECONFIG,
    /// ~/.kube/config).
    #[arg(long, conflicts_with = "snapshot")]
    kubeconfig: Option<PathBuf>,
    /// Kubeconfig context for the live cluster.
    #[arg(long, conflicts_with = "snapshot")]
    context: Option<String>,
}

/// The placement policy's files.
#[derive(Args)]
struct PolicyFiles {
    /// Config file (placement and server sections).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Model catalog file.
    #[arg(long)]
    catalog: Option<PathBuf>,
}

impl PolicyFiles {
    /// The settings (`--config`) and the model catalog (`--catalog`), defaults where unset.
    fn load(&self) -> anyhow::Result<(Settings, vramfit::core::Catalog)> {
        Ok((
            Settings::load(self.config.as_deref())?,
            load_catalog(self.catalog.as_deref())?,
        ))
    }
}

/// `vramfit serve`.
#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    source: ClusterSource,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8888")]
    listen: SocketAddr,
    /// Also serve only /metrics, /healthz, /readyz and /version here (overrides
    /// server.metricsListen), e.g. 0.0.0.0:9090 for Prometheus and kubelet probes.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    #[command(flatten)]
    files: PolicyFiles,
}

/// `vramfit place`.
#[derive(Args)]
struct PlaceArgs {
    // Without --snapshot the live cluster is read (list only, never written).
    #[command(flatten)]
    source: ClusterSource,
    /// Pods to place, in order.
    #[arg(long)]
    pods: PathBuf,
    #[arg(long, value_enum, default_value = "table")]
    output: Output,
    #[command(flatten)]
    files: PolicyFiles,
    /// Draw every node and device before and after as an SVG picture.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// What-if capacity: `[N x] CLASS[:DEVICES][@ZONE]` (e.g. `2x T4`, `1x A100:8`) or
    /// `[N x] NODE.yaml`; repeatable.
    #[arg(long = "add-nodes", value_name = "SPEC")]
    add_nodes: Vec<String>,
}

/// The node a node-side command runs for, and how it reaches the API server.
#[derive(Args)]
struct NodeAccess {
    /// This node's name (from the downward API in the DaemonSet).
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// Kubeconfig (default: in-cluster service account, KUBECONFIG, ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Kubeconfig context.
    #[arg(long)]
    context: Option<String>,
}

/// `vramfit agent`.
#[derive(Args)]
struct AgentArgs {
    #[command(flatten)]
    node: NodeAccess,
    /// Seconds between device reads.
    #[arg(long, default_value_t = 5)]
    poll_seconds: u64,
    /// Rewrite the report at least this often (keep it under the core's reportTtlSeconds).
    #[arg(long, default_value_t = 30)]
    heartbeat_seconds: u64,
    /// Also report the devices kubelet allocated to whole-device pods
    /// (vramfit.io/allocated-devices), read from this PodResources socket (needs the socket
    /// mounted and uid 0; `vramfit device-plugin` does this on sharing nodes).
    #[arg(long)]
    pod_resources_socket: Option<PathBuf>,
}

/// `vramfit device-plugin`.
#[derive(Args)]
struct DevicePluginArgs {
    #[command(flatten)]
    node: NodeAccess,
    /// How the VRAM limit is enforced: CUDA MPS, HAMi-core, or none (placement only).
    #[arg(
        long,
        value_enum,
        env = "VRAMFIT_SHARING_BACKEND",
        default_value = "none"
    )]
    backend: SharingBackend,
    /// MPS control daemon's pipe directory on the host (backend mps).
    #[arg(long, default_value = "/run/nvidia/mps")]
    mps_pipe_dir: String,
    /// Host directory with HAMi-core's libvgpu.so and an ld.so.preload naming it
    /// (backend hami-core).
    #[arg(long, default_value = "/usr/local/vgpu")]
    hami_core_dir: String,
    /// Hand NVIDIA devices over as CDI names (nvidia.com/gpu=<uuid>) instead of
    /// NVIDIA_VISIBLE_DEVICES.
    #[arg(long)]
    cdi: bool,
    /// kubelet's device plugin directory.
    #[arg(long, default_value = vramfit::agent::kubelet_api::DEVICE_PLUGIN_DIR)]
    device_plugin_dir: PathBuf,
    /// kubelet's PodResources socket.
    #[arg(long, default_value = vramfit::agent::kubelet_api::POD_RESOURCES_SOCKET)]
    pod_resources_socket: PathBuf,
    /// Seconds between device reads (health reaches kubelet this fast).
    #[arg(long, default_value_t = 5)]
    poll_seconds: u64,
    /// Advertise without waiting for the node label vramfit.io/sharing=vram (for clusters
    /// with placement.sharingAllNodes).
    #[arg(long)]
    ignore_sharing_label: bool,
    /// Do not write the node annotation vramfit.io/allocated-devices (whole-device pods'
    /// devices as kubelet allocated them, for the extender's ledger).
    #[arg(long)]
    no_allocation_report: bool,
}

impl DevicePluginArgs {
    /// The enforcement backend with its host paths.
    fn backend(&self) -> vramfit::agent::sharing::Backend {
        use vramfit::agent::sharing::Backend;
        match self.backend {
            SharingBackend::Mps => Backend::Mps {
                pipe_dir: self.mps_pipe_dir.clone(),
            },
            SharingBackend::HamiCore => Backend::HamiCore {
                library_dir: self.hami_core_dir.clone(),
            },
            SharingBackend::None => Backend::None,
        }
    }
}

/// `vramfit probe`.
#[derive(Args)]
struct ProbeArgs {
    /// Address the server listens on (`serve --listen`).
    #[arg(long, default_value = "127.0.0.1:8888")]
    addr: SocketAddr,
    /// Path to GET: `/healthz` (liveness) or `/readyz` (readiness).
    #[arg(long, default_value = "/healthz")]
    path: String,
    /// Connect, write and read timeout.
    #[arg(long, default_value_t = 2)]
    timeout_seconds: u64,
}

/// `vramfit replay`.
#[derive(Args)]
struct ReplayArgs {
    /// Node list CSV (`sn,cpu_milli,memory_mib,gpu,model`), e.g. openb_node_list_gpu_node.csv.
    #[arg(long, required_unless_present = "churn")]
    nodes: Option<PathBuf>,
    /// Pod list CSVs, one run set per file (e.g. openb_pod_list_default.csv).
    #[arg(required_unless_present = "churn")]
    pods: Vec<PathBuf>,
    /// Run the built-in churn workload instead of trace files: model Deployments scaled up and
    /// down in rounds on a mixed T4/A100/910B fleet (docs/benchmarks.md).
    #[arg(long, conflicts_with_all = ["nodes", "pods", "policies", "tune_ratio", "csv", "reference"])]
    churn: bool,
    /// Churn: rounds of scaling [default: 30].
    #[arg(long)]
    rounds: Option<u32>,
    /// Churn: multiplier of every Deployment's replica targets [default: 1].
    #[arg(long)]
    demand: Option<f64>,
    /// Churn: comma-separated profiles of the config, and `stock` (kube-scheduler without
    /// vramfit); `all` is vramfit-spread,vramfit-binpack,stock [default: all].
    #[arg(long)]
    profiles: Option<String>,
    /// Churn: node counts `T4,A100,910B` (T4×4, A100×8, 910B×8 nodes) [default: 150,105,45].
    #[arg(long)]
    fleet: Option<String>,
    /// Churn: zones the nodes are dealt over [default: 3].
    #[arg(long)]
    zones: Option<u32>,
    /// Churn: allocatable cpu cores of one T4, A100 and 910B node [default: 64,128,192].
    #[arg(long)]
    node_cpu: Option<String>,
    /// Seeds: a range `42-51` or a list `42,43`.
    #[arg(long, default_value = "42-51")]
    seeds: String,
    /// Policies, comma separated: vramfit and the paper's Random, DotProd, Clustering,
    /// Packing, BestFit, FGD; `all` for every one.
    #[arg(long, default_value = "all")]
    policies: String,
    /// Load is inflated to this multiple of cluster GPU capacity (the paper's 1.3).
    #[arg(long, default_value_t = 1.3)]
    tune_ratio: f64,
    /// Worker threads (default: available cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Per-bucket results CSV to write.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// The paper's reference results (fgd_atc23_reference_results.csv) to print beside ours.
    #[arg(long)]
    reference: Option<PathBuf>,
    /// Config file whose placement section drives the vramfit policy.
    #[arg(long)]
    config: Option<PathBuf>,
}

fn init_logging(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    // Colour codes only on a terminal: logs written to files or collected by Kubernetes stay
    // plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => {
            init_logging(cli.log_format, "info");
            run_serve(args)
        }
        Command::Place(args) => {
            init_logging(cli.log_format, "warn");
            run_place(args)
        }
        Command::Agent(args) => {
            init_logging(cli.log_format, "info");
            run_agent(args)
        }
        Command::DevicePlugin(args) => {
            init_logging(cli.log_format, "info");
            run_device_plugin(args)
        }
        Command::Probe(args) => {
            let timeout = std::time::Duration::from_secs(args.timeout_seconds.max(1));
            vramfit::extender::probe::check(args.addr, &args.path, timeout)
                .map(|_| ExitCode::SUCCESS)
                .map_err(anyhow::Error::from)
        }
        Command::Replay(args) => {
            init_logging(cli.log_format, "warn");
            run_replay(args)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// The async runtime the long-running commands and live reads run on.
fn async_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new().context("starting the async runtime")
}

/// A client for the cluster `--kubeconfig` / `--context` name (in-cluster, KUBECONFIG or
/// ~/.kube/config when unset).
async fn kube_client(
    kubeconfig: &Option<PathBuf>,
    context: &Option<String>,
) -> Result<kube::Client, vramfit::kubernetes::client::LiveError> {
    vramfit::kubernetes::client::client(kubeconfig.as_deref(), context.as_deref()).await
}

/// The refresher's gate on `server.leaderLease` (none when unset); the identity is
/// `server.leaderIdentity`, else the host name.
fn cost_gate(
    client: &kube::Client,
    server: &vramfit::extender::http::ServerConfig,
) -> anyhow::Result<Option<vramfit::extender::lease::LeaseGate>> {
    let Some(lease) = server.leader_lease.clone() else {
        return Ok(None);
    };
    let identity = match &server.leader_identity {
        Some(identity) => identity.clone(),
        None => hostname::get()
            .ok()
            .and_then(|name| name.into_string().ok())
            .filter(|name| !name.is_empty())
            .context("server.leaderLease is set but the host name cannot be read: set server.leaderIdentity")?,
    };
    tracing::info!(%lease, identity, "deletion costs are written by the replica whose scheduler holds the Lease");
    Ok(Some(vramfit::extender::lease::LeaseGate::new(
        client.clone(),
        lease,
        identity,
    )))
}

fn run_serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let ServeArgs {
        source,
        listen,
        metrics_listen,
        files,
    } = args;
    let (settings, catalog) = files.load()?;
    let ClusterSource {
        snapshot,
        kubeconfig,
        context,
    } = source;
    let runtime = async_runtime()?;
    runtime.block_on(async {
        let state = match &snapshot {
            Some(path) => {
                let objects = load_file(path)?;
                tracing::info!(nodes = objects.nodes.len(), pods = objects.pods.len(), snapshot = %path.display(), "loaded snapshot");
                Arc::new(ExtenderState::from_snapshot(&objects, settings.placement, catalog, SystemTime::now()))
            }
            None => {
                let client = kube_client(&kubeconfig, &context).await?;
                let binder = vramfit::extender::binder::KubeBinder::new(
                    client.clone(),
                    std::time::Duration::from_millis(settings.server.bind_timeout_millis),
                );
                let state = Arc::new(ExtenderState::new(settings.placement, catalog, Box::new(binder)));
                let ttl = std::time::Duration::from_secs(settings.server.reservation_ttl_seconds);
                let gate = cost_gate(&client, &settings.server)?;
                vramfit::extender::watch::spawn_live(client, state.clone(), ttl, gate);
                tracing::info!("watching nodes and pods; ready once both initial lists are in");
                state
            }
        };
        let app = App {
            cluster: state,
            metrics: Arc::new(Metrics::default()),
        };
        let ops = metrics_listen.or(settings.server.metrics_listen);
        serve_with_ops(app, &settings.server, listen, ops).await?;
        Ok(ExitCode::SUCCESS)
    })
}

fn run_agent(args: AgentArgs) -> anyhow::Result<ExitCode> {
    let AgentArgs {
        node:
            NodeAccess {
                node_name,
                kubeconfig,
                context,
            },
        poll_seconds,
        heartbeat_seconds,
        pod_resources_socket,
    } = args;
    use vramfit::agent::run::{run, AgentOptions, NodeAnnotationWriter};
    if poll_seconds == 0 || heartbeat_seconds == 0 {
        anyhow::bail!("--poll-seconds and --heartbeat-seconds must be positive");
    }
    let runtime = async_runtime()?;
    runtime.block_on(async {
        let reader = match vramfit::agent::find_runtime() {
            Ok(reader) => reader,
            Err(none) => {
                tracing::warn!("{none}; idling until terminated");
                vramfit::shutdown::shutdown_signal().await;
                return Ok(ExitCode::SUCCESS);
            }
        };
        tracing::info!(runtime = reader.runtime(), node = %node_name, "reading devices");
        let client = kube_client(&kubeconfig, &context).await?;
        let reader: std::sync::Arc<dyn vramfit::agent::DeviceReader> = reader.into();
        if let Some(socket) = pod_resources_socket {
            tokio::spawn(report_allocations(
                client.clone(),
                node_name.clone(),
                reader.clone(),
                std::sync::Arc::new(vramfit::agent::pod_resources::PodResourcesSocket::new(
                    socket,
                )),
                std::time::Duration::from_secs(poll_seconds),
                vramfit::shutdown::shutdown_signal(),
            ));
        }
        let writer = NodeAnnotationWriter::new(client, node_name);
        let mut options = AgentOptions {
            poll: std::time::Duration::from_secs(poll_seconds),
            ..AgentOptions::default()
        };
        options.policy.heartbeat = std::time::Duration::from_secs(heartbeat_seconds);
        let stats = run(
            reader,
            &writer,
            options,
            vramfit::shutdown::shutdown_signal(),
        )
        .await;
        tracing::info!(?stats, "stopped");
        Ok(ExitCode::SUCCESS)
    })
}

fn run_device_plugin(args: DevicePluginArgs) -> anyhow::Result<ExitCode> {
    use futures::FutureExt;
    use vramfit::agent::device_plugin::{poll_devices, PluginSettings, VramPlugin};
    use vramfit::agent::sharing::{Backend, Handover, Vendor};
    if args.poll_seconds == 0 {
        anyhow::bail!("--poll-seconds must be positive");
    }
    let backend = args.backend();
    let runtime = async_runtime()?;
    runtime.block_on(async {
        let shutdown = vramfit::shutdown::shutdown_signal().boxed().shared();
        let reader = match vramfit::agent::find_runtime() {
            Ok(reader) => reader,
            Err(none) => {
                tracing::warn!("{none}; idling until terminated");
                shutdown.await;
                return Ok(ExitCode::SUCCESS);
            }
        };
        let vendor = match reader.runtime() {
            "npu-smi" if backend != Backend::None => {
                anyhow::bail!("Ascend NPUs support --backend none only (MPS and HAMi-core are CUDA)")
            }
            "npu-smi" => Vendor::Ascend,
            _ => Vendor::Nvidia { cdi: args.cdi },
        };
        let client = kube_client(&args.node.kubeconfig, &args.node.context).await?;
        if !args.ignore_sharing_label {
            let recheck = std::time::Duration::from_secs(60);
            let labelled = vramfit::agent::node_pods::wait_for_sharing_label(
                client.clone(),
                &args.node.node_name,
                recheck,
                shutdown.clone(),
            );
            if !labelled.await {
                return Ok(ExitCode::SUCCESS);
            }
        }
        let reader: std::sync::Arc<dyn vramfit::agent::DeviceReader> = reader.into();
        let first = {
            let reader = reader.clone();
            tokio::task::spawn_blocking(move || reader.read()).await?
        };
        let (readings_tx, readings) = tokio::sync::watch::channel(first.unwrap_or_else(|error| {
            tracing::warn!(%error, "first device read failed; advertising nothing until one succeeds");
            Vec::new()
        }));
        let poll = std::time::Duration::from_secs(args.poll_seconds);
        tokio::spawn(poll_devices(reader.clone(), readings_tx, poll, shutdown.clone()));
        let pod_resources = std::sync::Arc::new(vramfit::agent::pod_resources::PodResourcesSocket::new(
            args.pod_resources_socket,
        ));
        if !args.no_allocation_report {
            tokio::spawn(report_allocations(
                client.clone(),
                args.node.node_name.clone(),
                reader.clone(),
                pod_resources.clone(),
                poll,
                shutdown.clone(),
            ));
        }
        let settings = PluginSettings {
            dir: args.device_plugin_dir,
            ..PluginSettings::default()
        };
        let plugin = VramPlugin::new(
            Handover {
                vendor,
                backend,
            },
            readings,
            std::sync::Arc::new(vramfit::agent::node_pods::KubeNodePods::new(client, &args.node.node_name)),
            pod_resources,
            settings.handout_ttl,
        );
        tracing::info!(runtime = reader.runtime(), node = %args.node.node_name, "device plugin starting");
        let stats = plugin.run(&settings, shutdown).await?;
        tracing::info!(?stats, allocations = plugin.allocations(), "stopped");
        Ok(ExitCode::SUCCESS)
    })
}

/// Writes `vramfit.io/allocated-devices` for this node until `shutdown` (RBAC: `patch` nodes).
async fn report_allocations(
    client: kube::Client,
    node_name: String,
    reader: std::sync::Arc<dyn vramfit::agent::DeviceReader>,
    pod_resources: std::sync::Arc<dyn vramfit::agent::pod_resources::PodResourcesSource>,
    poll: std::time::Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    use vramfit::agent::allocated::{run_report, ANNOTATION_ALLOCATED_DEVICES};
    let writer = vramfit::agent::run::NodeAnnotationWriter::for_annotation(
        client,
        node_name,
        ANNOTATION_ALLOCATED_DEVICES,
    );
    let stats = run_report(reader, pod_resources, &writer, poll, shutdown).await;
    tracing::info!(?stats, "allocation report stopped");
}

fn run_place(args: PlaceArgs) -> anyhow::Result<ExitCode> {
    let (settings, catalog) = args.files.load()?;
    let mut cluster = match &args.source.snapshot {
        Some(path) => load_file(path)?,
        None => {
            let runtime = async_runtime()?;
            runtime.block_on(async {
                let client = kube_client(&args.source.kubeconfig, &args.source.context).await?;
                vramfit::kubernetes::client::read_cluster(client).await
            })?
        }
    };
    let workload = load_workloads(&args.pods)?;
    if let Some((kind, _)) = workload.skipped.iter().next() {
        anyhow::bail!(
            "{}: unsupported kind {kind:?} (place takes Pods, Deployments, StatefulSets, ReplicaSets and Jobs)",
            args.pods.display()
        );
    }
    let mut added = Vec::new();
    for spec in &args.add_nodes {
        let nodes = vramfit::dryrun::whatif::nodes_from_spec(spec, added.len())?;
        added.extend(nodes.iter().map(|n| n.metadata.name.clone()));
        cluster.nodes.extend(nodes);
    }
    let mut dry_run = DryRun::new(&cluster, &settings.placement, &catalog, SystemTime::now());
    let before = dry_run.inventory.clone();
    let mut report = dry_run.place_all(&workload.pods, &settings.placement, &catalog);
    report.added_nodes = added;
    if let Some(path) = &args.svg {
        std::fs::write(
            path,
            vramfit::dryrun::picture::render(&before, &dry_run.inventory),
        )
        .with_context(|| format!("writing {}", path.display()))?;
    }
    match args.output {
        Output::Table => print!("{}", render_table(&report)),
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    Ok(if report.all_placed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

fn run_replay(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(args.config.as_deref())?;
    if args.churn {
        return vramfit::replay::cli::run_churn(vramfit::replay::cli::ChurnArgs {
            seeds: args.seeds,
            rounds: args.rounds.unwrap_or(30),
            demand: args.demand.unwrap_or(1.0),
            profiles: args.profiles.unwrap_or_else(|| "all".into()),
            fleet: args.fleet.unwrap_or_else(|| "150,105,45".into()),
            zones: args.zones.unwrap_or(3),
            node_cpu: args.node_cpu,
            threads: args.threads,
            config: settings.placement,
        });
    }
    if args.rounds.is_some()
        || args.demand.is_some()
        || args.profiles.is_some()
        || args.fleet.is_some()
        || args.zones.is_some()
        || args.node_cpu.is_some()
    {
        anyhow::bail!(
            "--rounds, --demand, --profiles, --fleet, --zones and --node-cpu need --churn"
        );
    }
    let Some(nodes) = args.nodes else {
        anyhow::bail!("--nodes is required without --churn");
    };
    vramfit::replay::cli::run(vramfit::replay::cli::ReplayArgs {
        nodes,
        pods: args.pods,
        seeds: args.seeds,
        policies: args.policies,
        tune_ratio: args.tune_ratio,
        threads: args.threads,
        csv: args.csv,
        reference: args.reference,
        config: settings.placement,
    })
}
