//! End-to-end against a real control plane: etcd, kube-apiserver and kube-scheduler (run with the
//! repository's `scheduler-config/kube-scheduler-v1.yaml`) on 127.0.0.1, fake GPU nodes, and
//! `vramfit serve` in live mode. `tests/e2e/cluster.sh` starts and stops the control plane; the
//! scenarios are the YAML files of `tests/e2e/scenarios/`.
//!
//! Checked: placements and the Binding's `vramfit.io/assigned-devices` annotation, the
//! FailedScheduling text of a pod that fits nowhere, a vramfit restart while pods are being
//! scheduled (nothing lost, no device booked twice), and a burst of 11 replicas.
//!
//! The binaries come from `${VRAMFIT_E2E_K8S_BIN:-/opt/k8s/bin}` (kube-apiserver,
//! kube-scheduler; etcd from PATH or there). Without them the test prints one `skipped: …` line
//! and passes. How to build them offline: docs/operations.md, "End-to-end test".

mod common;
use common::free_port;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const NAMESPACE: &str = "default";

fn k8s_bin() -> PathBuf {
    std::env::var_os("VRAMFIT_E2E_K8S_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/k8s/bin"))
}

fn on_path(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(tool))
            .find(|p| p.is_file())
    })
}

/// What is missing to run, if anything.
fn missing_tools(bin: &Path) -> Vec<String> {
    let mut missing = Vec::new();
    for tool in ["kube-apiserver", "kube-scheduler"] {
        if !bin.join(tool).is_file() {
            missing.push(bin.join(tool).display().to_string());
        }
    }
    if on_path("etcd").is_none() && !bin.join("etcd").is_file() {
        missing.push("etcd (on PATH or in the binaries' directory)".into());
    }
    for tool in ["openssl", "curl", "setsid", "base64"] {
        if on_path(tool).is_none() {
            missing.push(tool.into());
        }
    }
    missing
}

/// The control plane, stopped (with every process registered under its state) when dropped.
struct ControlPlane {
    state: PathBuf,
    env: Vec<(String, String)>,
}

impl ControlPlane {
    fn up(bin: &Path) -> ControlPlane {
        let state = std::env::temp_dir().join(format!("vramfit-e2e-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&state);
        std::fs::create_dir_all(&state).unwrap();
        let env = vec![
            ("E2E_STATE".into(), state.display().to_string()),
            ("K8S_BIN".into(), bin.display().to_string()),
            ("ETCD_PORT".into(), free_port().to_string()),
            ("ETCD_PEER_PORT".into(), free_port().to_string()),
            ("APISERVER_PORT".into(), free_port().to_string()),
        ];
        let plane = ControlPlane { state, env };
        let status = plane.script("up");
        assert!(status, "tests/e2e/cluster.sh up failed");
        plane
    }

    fn script(&self, verb: &str) -> bool {
        Command::new("bash")
            .arg(Path::new(ROOT).join("tests/e2e/cluster.sh"))
            .arg(verb)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    fn kubeconfig(&self) -> PathBuf {
        self.state.join("kubeconfig")
    }

    fn log(&self, name: &str) -> std::fs::File {
        std::fs::File::create(self.state.join("logs").join(format!("{name}.log"))).unwrap()
    }

    /// Starts a process whose output goes to `logs/NAME.log` and registers it for `down`.
    fn spawn(&self, name: &str, command: &mut Command) -> Child {
        let child = command
            .stdout(Stdio::from(self.log(name)))
            .stderr(Stdio::from(self.log(&format!("{name}.err"))))
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        std::fs::write(
            self.state.join("run").join(format!("{name}.pid")),
            child.id().to_string(),
        )
        .unwrap();
        child
    }

    /// Starts Kubernetes component `name` (kube-scheduler, kube-controller-manager) from
    /// `binary` with `args`, authenticating and authorizing through the plane's kubeconfig and
    /// serving its health port on a free loopback port.
    fn spawn_component(&self, name: &str, binary: &Path, args: &[&str]) -> Child {
        self.spawn(
            name,
            Command::new(binary)
                .args(args)
                .arg("--authentication-kubeconfig")
                .arg(self.kubeconfig())
                .arg("--authorization-kubeconfig")
                .arg(self.kubeconfig())
                .args([
                    "--bind-address",
                    "127.0.0.1",
                    "--secure-port",
                    &free_port().to_string(),
                ]),
        )
    }

    fn tail(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.state.join("logs").join(format!("{name}.log")))
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.script("down");
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.state);
        } else {
            eprintln!("e2e: logs kept in {}", self.state.display());
        }
    }
}

/// `vramfit serve` in live mode on `port`, logging as `name`.
fn start_vramfit(plane: &ControlPlane, name: &str, port: u16, config: &Path) -> Child {
    plane.spawn(
        name,
        Command::new(env!("CARGO_BIN_EXE_vramfit"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--kubeconfig")
            .arg(plane.kubeconfig())
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info"),
    )
}

/// The repository's vramfit config with `line` added to its `server:` section (the file's
/// last), written to the plane's state as `name`.
fn with_server_line(plane: &ControlPlane, name: &str, line: &str) -> PathBuf {
    let sample =
        std::fs::read_to_string(Path::new(ROOT).join("scheduler-config/vramfit-config.yaml"))
            .unwrap();
    let (_, server) = sample.rsplit_once("\nserver:\n").unwrap();
    assert!(
        !server
            .lines()
            .any(|l| l.starts_with(|c: char| c.is_alphanumeric())),
        "server: is last"
    );
    let path = plane.state.join(name);
    std::fs::write(&path, format!("{}\n  {line}\n", sample.trim_end())).unwrap();
    path
}

/// This machine's host name, which kube-scheduler's Lease identity begins with.
/// Read as `vramfit serve` reads its default `leaderIdentity`.
fn hostname() -> String {
    hostname::get().unwrap().into_string().unwrap()
}

/// The holder of kube-scheduler's Lease, once there is one.
async fn lease_holder(client: &Client) -> String {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let holder = leases
            .get_opt("vramfit-scheduler")
            .await
            .unwrap()
            .and_then(|l| l.spec?.holder_identity)
            .filter(|h| !h.is_empty());
        if let Some(holder) = holder {
            return holder;
        }
        assert!(
            Instant::now() < deadline,
            "no holder of kube-system/vramfit-scheduler"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `GET /metrics` from the vramfit on `port`.
fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    reply
}

fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn documents<T: serde::de::DeserializeOwned>(file: &str) -> Vec<T> {
    let text =
        std::fs::read_to_string(Path::new(ROOT).join("tests/e2e/scenarios").join(file)).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap())
        .collect()
}

async fn create_nodes(client: &Client) {
    let api: Api<Node> = Api::all(client.clone());
    for mut node in documents::<Node>("nodes.yaml") {
        let status = node.status.take().unwrap();
        let name = node.metadata.name.clone().unwrap();
        api.create(&PostParams::default(), &node).await.unwrap();
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let patch = json!({"status": {
            "capacity": status.capacity,
            "allocatable": status.allocatable,
            "conditions": [{"type": "Ready", "status": "True", "reason": "E2E",
                            "lastHeartbeatTime": now, "lastTransitionTime": now}],
        }});
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
        // No node lifecycle controller runs: drop the not-ready taint admission added.
        api.patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"taints": null}})),
        )
        .await
        .unwrap();
    }
}

async fn create_pods(client: &Client, file: &str) -> Vec<String> {
    let api: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let mut names = Vec::new();
    for pod in documents::<Pod>(file) {
        names.push(pod.metadata.name.clone().unwrap());
        api.create(&PostParams::default(), &pod).await.unwrap();
    }
    names
}

/// Waits until every pod is bound; their nodes.
async fn wait_bound(client: &Client, names: &[String], within: Duration) -> BTreeMap<String, Pod> {
    let api: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let deadline = Instant::now() + within;
    loop {
        let mut bound = BTreeMap::new();
        for name in names {
            let pod = api.get(name).await.unwrap();
            if pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_ref())
                .is_some()
            {
                bound.insert(name.clone(), pod);
            }
        }
        if bound.len() == names.len() {
            return bound;
        }
        assert!(
            Instant::now() < deadline,
            "only {}/{} pods bound within {within:?}: {:?}",
            bound.len(),
            names.len(),
            bound.keys().collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Every bound pod in the namespace: (node, device) → pods holding it.
/// Waits until every pod of `names` carries a deletion cost and two reads 5 s apart (two
/// refresher passes) agree; returns the costs.
async fn wait_costs(client: &Client, names: &[String], within: Duration) -> Vec<i64> {
    let api: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let deadline = Instant::now() + within;
    let mut last: Option<Vec<i64>> = None;
    loop {
        let mut costs = Vec::new();
        for name in names {
            let pod = api.get(name).await.unwrap();
            let cost = pod
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("controller.kubernetes.io/pod-deletion-cost"))
                .and_then(|v| v.parse::<i64>().ok());
            costs.push(cost);
        }
        let complete: Option<Vec<i64>> = costs.iter().copied().collect();
        if let Some(complete) = complete {
            if last.as_ref() == Some(&complete) {
                return complete;
            }
            last = Some(complete);
        }
        assert!(Instant::now() < deadline, "deletion costs {costs:?}");
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// The replicas of ReplicaSet `e2e-spread` not being deleted: how many, and the bound ones by
/// zone.
async fn spread_replicas_by_zone(client: &Client) -> (BTreeMap<String, u32>, usize) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let nodes: Api<Node> = Api::all(client.clone());
    let list = pods
        .list(&ListParams::default().labels("app=e2e-spread"))
        .await
        .unwrap();
    let mut zones = BTreeMap::new();
    let mut alive = 0;
    for pod in list
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
    {
        alive += 1;
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            continue;
        };
        let labels = nodes.get(&node).await.unwrap().metadata.labels;
        let zone = labels.unwrap_or_default()["topology.kubernetes.io/zone"].clone();
        *zones.entry(zone).or_default() += 1;
    }
    (zones, alive)
}

/// Step 6: six replicas of a ReplicaSet under `vramfit-spread` across both zones; scaled down
/// to three by the real ReplicaSet controller, which reads vramfit's costs, the zones stay
/// within one of each other (pods being deleted stay Terminating: no kubelet finishes them).
async fn scale_down_keeps_zones_even(client: &Client) {
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), NAMESPACE);
    let set: ReplicaSet = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": "e2e-spread"},
        "spec": {
            "replicas": 6,
            "selector": {"matchLabels": {"app": "e2e-spread"}},
            "template": {
                "metadata": {
                    "labels": {"app": "e2e-spread", "vramfit.io/model": "spread-model"},
                    "annotations": {"vramfit.io/vram": "12Gi"}
                },
                "spec": {
                    "schedulerName": "vramfit-spread",
                    "containers": [{"name": "main", "image": "registry.invalid/model:1",
                                    "resources": {"limits": {"nvidia.com/gpu": "1"}}}]
                }
            }
        }
    }))
    .unwrap();
    sets.create(&PostParams::default(), &set).await.unwrap();
    let even = |zones: &BTreeMap<String, u32>| {
        let counts: Vec<u32> = zones.values().copied().collect();
        counts.len() == 2 && counts[0].abs_diff(counts[1]) <= 1
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (zones, alive) = spread_replicas_by_zone(client).await;
        if alive == 6 && zones.values().sum::<u32>() == 6 {
            assert!(even(&zones), "placed: {zones:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "six replicas never bound: {zones:?}, {alive} alive"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The refresher settles the costs; then the scale-down.
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let names: Vec<String> = pods
        .list(&ListParams::default().labels("app=e2e-spread"))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    wait_costs(client, &names, Duration::from_secs(60)).await;
    sets.patch(
        "e2e-spread",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"replicas": 3}})),
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (zones, alive) = spread_replicas_by_zone(client).await;
        if alive == 3 {
            assert!(even(&zones), "after the scale-down: {zones:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never scaled down: {alive} alive"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn device_holders(client: &Client) -> BTreeMap<(String, u32), Vec<String>> {
    let api: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let mut holders: BTreeMap<(String, u32), Vec<String>> = BTreeMap::new();
    for pod in api.list(&ListParams::default()).await.unwrap() {
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            continue;
        };
        let name = pod.metadata.name.clone().unwrap();
        let assigned = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("vramfit.io/assigned-devices"))
            .unwrap_or_else(|| panic!("{name} bound without vramfit.io/assigned-devices"));
        for index in assigned.split(',') {
            holders
                .entry((node.clone(), index.trim().parse().unwrap()))
                .or_default()
                .push(name.clone());
        }
    }
    holders
}

async fn assert_no_device_booked_twice(client: &Client) {
    for ((node, device), pods) in device_holders(client).await {
        assert_eq!(pods.len(), 1, "{node} device {device} held by {pods:?}");
    }
}

fn assigned(pod: &Pod) -> Vec<u32> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("vramfit.io/assigned-devices"))
        .map(|v| v.split(',').map(|i| i.trim().parse().unwrap()).collect())
        .unwrap_or_default()
}

fn node_of(pod: &Pod) -> &str {
    pod.spec.as_ref().unwrap().node_name.as_deref().unwrap()
}

#[test]
fn a_real_kube_scheduler_places_pods_through_vramfit() {
    let bin = k8s_bin();
    let missing = missing_tools(&bin);
    if !missing.is_empty() {
        println!(
            "skipped: no Kubernetes binaries for the end-to-end test (missing: {}; set VRAMFIT_E2E_K8S_BIN)",
            missing.join(", ")
        );
        return;
    }
    let plane = ControlPlane::up(&bin);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = runtime.block_on(async {
        vramfit::kubernetes::client::client(Some(&plane.kubeconfig()), None)
            .await
            .unwrap()
    });
    runtime.block_on(create_nodes(&client));

    // vramfit, with the repository's config and the Lease kube-scheduler elects through
    // (vramfit and kube-scheduler share this machine's host name, as a sidecar shares its pod's).
    let vramfit_port = free_port();
    let vramfit_config = with_server_line(
        &plane,
        "vramfit.yaml",
        "leaderLease: kube-system/vramfit-scheduler",
    );
    let mut vramfit = start_vramfit(&plane, "vramfit", vramfit_port, &vramfit_config);

    // kube-scheduler with the repository's configuration: vramfit's port and the kubeconfig
    // (outside a pod it must be in the file); it elects itself through kube-system's Lease.
    let sample =
        std::fs::read_to_string(Path::new(ROOT).join("scheduler-config/kube-scheduler-v1.yaml"))
            .unwrap();
    assert!(sample.contains("http://127.0.0.1:8888/scheduler"));
    let config = sample.replace(
        "http://127.0.0.1:8888/scheduler",
        &format!("http://127.0.0.1:{vramfit_port}/scheduler"),
    ) + &format!(
        "clientConnection:\n  kubeconfig: {}\n",
        plane.kubeconfig().display()
    );
    let scheduler_config = plane.state.join("kube-scheduler.yaml");
    std::fs::write(&scheduler_config, config).unwrap();
    let scheduler_config = scheduler_config.display().to_string();
    let mut scheduler = plane.spawn_component(
        "kube-scheduler",
        &bin.join("kube-scheduler"),
        &["--config", &scheduler_config],
    );

    // kube-controller-manager's ReplicaSet controller, when its binary is there: the one
    // reader of the deletion costs (step 6).
    let controller_manager = bin.join("kube-controller-manager");
    let mut controllers = controller_manager.is_file().then(|| {
        let kubeconfig = plane.kubeconfig().display().to_string();
        plane.spawn_component(
            "kube-controller-manager",
            &controller_manager,
            &[
                "--kubeconfig",
                &kubeconfig,
                "--controllers",
                "replicaset",
                "--leader-elect=false",
            ],
        )
    });

    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runtime.block_on(async {
            // 1. Placements and the Binding's annotation.
            let names = create_pods(&client, "placement.yaml").await;
            let bound = wait_bound(&client, &names, Duration::from_secs(120)).await;
            let two = &bound["two-a100"];
            assert!(node_of(two).starts_with("e2e-a100-"), "{}", node_of(two));
            assert_eq!(assigned(two).len(), 2);
            assert!(node_of(&bound["big"]).starts_with("e2e-a100-"));
            assert_eq!(assigned(&bound["small"]).len(), 1);
            // Best fit: 10Gi goes to a T4, not to an 80 GB A100.
            assert!(node_of(&bound["small"]).starts_with("e2e-t4-"));
            assert_no_device_booked_twice(&client).await;

            // `place --kubeconfig --pods` run after the pods exist shows them where they are.
            let output = Command::new(env!("CARGO_BIN_EXE_vramfit"))
                .arg("place")
                .arg("--kubeconfig")
                .arg(plane.kubeconfig())
                .arg("--pods")
                .arg(Path::new(ROOT).join("tests/e2e/scenarios/placement.yaml"))
                .args(["--output", "json"])
                .output()
                .unwrap();
            let report: serde_json::Value = serde_json::from_slice(&output.stdout)
                .unwrap_or_else(|e| panic!("place: {e}: {}", String::from_utf8_lossy(&output.stderr)));
            for placed in report["pods"].as_array().unwrap() {
                let name = placed["pod"].as_str().unwrap().trim_start_matches("default/");
                assert_eq!(placed["existing"], json!(true), "{placed}");
                assert_eq!(placed["node"].as_str(), Some(node_of(&bound[name])), "{placed}");
            }

            // 2. A pod that fits nowhere: the event carries vramfit's reason unmangled.
            create_pods(&client, "too-big.yaml").await;
            let events: Api<Event> = Api::namespaced(client.clone(), NAMESPACE);
            let deadline = Instant::now() + Duration::from_secs(60);
            let message = loop {
                let list = events
                    .list(&ListParams::default().fields("involvedObject.name=too-big"))
                    .await
                    .unwrap();
                if let Some(message) = list
                    .items
                    .iter()
                    .filter(|e| e.reason.as_deref() == Some("FailedScheduling"))
                    .find_map(|e| e.message.clone())
                {
                    break message;
                }
                assert!(Instant::now() < deadline, "no FailedScheduling event");
                tokio::time::sleep(Duration::from_millis(250)).await;
            };
            assert!(
                message.contains(
                    "vramfit: needs 200Gi per device (plus 15 percent headroom); largest device here has 80Gi"
                ),
                "{message}"
            );
            assert!(!message.contains("%!"), "{message}");
            let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
            pods.delete("too-big", &DeleteParams::default().grace_period(0))
                .await
                .unwrap();
        });

        // 3. Restart vramfit while pods are being scheduled.
        let names = runtime.block_on(create_pods(&client, "restart.yaml"));
        let api: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
        runtime.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let mut bound = 0;
                for name in &names {
                    let pod = api.get(name).await.unwrap();
                    bound += usize::from(
                        pod.spec
                            .as_ref()
                            .and_then(|s| s.node_name.as_ref())
                            .is_some(),
                    );
                }
                if bound >= 1 || Instant::now() > deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        stop(&mut vramfit);
        vramfit = start_vramfit(&plane, "vramfit", vramfit_port, &vramfit_config);
        runtime.block_on(async {
            wait_bound(&client, &names, Duration::from_secs(120)).await;
            assert_no_device_booked_twice(&client).await;

            // 4. A burst of 11 replicas of one model.
            let names = create_pods(&client, "burst.yaml").await;
            let bound = wait_bound(&client, &names, Duration::from_secs(120)).await;
            assert_eq!(bound.len(), 11);
            assert_no_device_booked_twice(&client).await;
            let holders = device_holders(&client).await;
            // 4 + 6 + 11 pods, 2 + 1 + 1 + 6 + 11 devices, each held once.
            assert_eq!(holders.len(), 21);

            // 5. The deletion-cost refresher: every replica carries a cost, and one that
            // someone else rewrites is put back through a real merge patch.
            let settled = wait_costs(&client, &names, Duration::from_secs(60)).await;
            let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
            let foreign = json!({"metadata": {"annotations": {
                "controller.kubernetes.io/pod-deletion-cost": "7"}}});
            pods.patch(&names[5], &PatchParams::default(), &Patch::Merge(&foreign))
                .await
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let now = wait_costs(&client, &names, Duration::from_secs(60)).await;
                if now[5] == settled[5] {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "cost of {} stays {}",
                    names[5],
                    now[5]
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }

            // 5b. Only the replica beside the Lease holder writes: the holder is this host's
            // kube-scheduler (`<host name>_<uuid>`), and a second vramfit that goes by
            // another identity leaves the costs alone.
            let holder = lease_holder(&client).await;
            let host = hostname();
            assert!(
                holder.starts_with(&format!("{host}_")),
                "holder {holder:?}, host {host:?}"
            );
            assert!(scrape(vramfit_port).contains("vramfit_deletion_cost_writer 1"));
            let standby_port = free_port();
            let standby_config = with_server_line(
                &plane,
                "standby.yaml",
                "leaderLease: kube-system/vramfit-scheduler\n  leaderIdentity: e2e-standby",
            );
            let mut standby =
                start_vramfit(&plane, "vramfit-standby", standby_port, &standby_config);
            let deadline = Instant::now() + Duration::from_secs(60);
            while !plane
                .tail("vramfit-standby.err")
                .contains("leaving deletion costs to it")
            {
                assert!(
                    Instant::now() < deadline,
                    "standby: {}",
                    plane.tail("vramfit-standby.err")
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            let metrics = scrape(standby_port);
            stop(&mut standby);
            assert!(
                metrics.contains("vramfit_deletion_cost_writer 0"),
                "{metrics}"
            );
            assert!(
                metrics.contains("vramfit_deletion_cost_updates_total 0"),
                "{metrics}"
            );

            // 6. A ReplicaSet of six replicas under vramfit-spread, scaled down to three by the
            // real ReplicaSet controller, which reads the costs: the zones stay within one.
            if controllers.is_some() {
                scale_down_keeps_zones_even(&client).await;
            } else {
                println!(
                    "skipped: step 6 (no kube-controller-manager in {})",
                    bin.display()
                );
            }
        });
    }));
    stop(&mut vramfit);
    stop(&mut scheduler);
    if let Some(controllers) = controllers.as_mut() {
        stop(controllers);
    }
    if let Err(panic) = result {
        eprintln!("--- vramfit log ---\n{}", plane.tail("vramfit.err"));
        eprintln!(
            "--- kube-scheduler log ---\n{}",
            plane.tail("kube-scheduler.err")
        );
        std::panic::resume_unwind(panic);
    }
}
