//! `vramfit device-plugin` against a fake kubelet: a Registration server on a temporary unix
//! socket, a client driving ListAndWatch and Allocate on the plugin's socket, and a fake
//! PodResources server.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;

use futures::future::BoxFuture;
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status};

use vramfit::agent::device_plugin::{poll_devices, PluginSettings, VramPlugin, PLUGIN_SOCKET_NAME};
use vramfit::agent::kubelet_api::deviceplugin::device_plugin_client::DevicePluginClient;
use vramfit::agent::kubelet_api::deviceplugin::registration_server::{
    Registration, RegistrationServer,
};
use vramfit::agent::kubelet_api::deviceplugin::{
    AllocateRequest, AllocateResponse, ContainerAllocateRequest, Device, Empty, RegisterRequest,
};
use vramfit::agent::kubelet_api::podresources::pod_resources_lister_server::{
    PodResourcesLister, PodResourcesListerServer,
};
use vramfit::agent::kubelet_api::podresources::{
    AllocatableResourcesRequest, AllocatableResourcesResponse, ContainerDevices,
    ContainerResources, GetPodResourcesRequest, GetPodResourcesResponse, ListPodResourcesRequest,
    ListPodResourcesResponse, PodResources,
};
use vramfit::agent::kubelet_api::{bind, connect, serve, server, KUBELET_SOCKET_NAME};
use vramfit::agent::node_pods::NodePods;
use vramfit::agent::pod_resources::PodResourcesSocket;
use vramfit::agent::sharing::{
    Backend, Handover, NodePod, Vendor, ENV_ALLOCATED_FOR, HEALTHY, RESOURCE_VRAM_GIB, UNHEALTHY,
};
use vramfit::agent::{DeviceReader, DeviceReading, Health, MigMode, ReadError};

/// Upper bound for waiting on something the test caused; a hang fails instead of blocking CI.
const PATIENCE: Duration = Duration::from_secs(20);

// ---- fakes --------------------------------------------------------------------------------

/// kubelet's Registration service: forwards every request.
struct FakeRegistration(mpsc::UnboundedSender<RegisterRequest>);

#[tonic::async_trait]
impl Registration for FakeRegistration {
    async fn register(&self, request: Request<RegisterRequest>) -> Result<Response<Empty>, Status> {
        let _ = self.0.send(request.into_inner());
        Ok(Response::new(Empty {}))
    }
}

/// kubelet's PodResources service over a shared, editable answer.
#[derive(Clone, Default)]
struct FakePodResources(Arc<Mutex<Vec<PodResources>>>);

impl FakePodResources {
    fn hold(&self, namespace: &str, pod: &str, container: &str, resource: &str, ids: &[String]) {
        self.0.lock().unwrap().push(PodResources {
            name: pod.into(),
            namespace: namespace.into(),
            containers: vec![ContainerResources {
                name: container.into(),
                devices: vec![ContainerDevices {
                    resource_name: resource.into(),
                    device_ids: ids.to_vec(),
                    topology: None,
                }],
                cpu_ids: vec![],
                memory: vec![],
            }],
        });
    }
}

#[tonic::async_trait]
impl PodResourcesLister for FakePodResources {
    async fn list(
        &self,
        _: Request<ListPodResourcesRequest>,
    ) -> Result<Response<ListPodResourcesResponse>, Status> {
        Ok(Response::new(ListPodResourcesResponse {
            pod_resources: self.0.lock().unwrap().clone(),
        }))
    }
    async fn get_allocatable_resources(
        &self,
        _: Request<AllocatableResourcesRequest>,
    ) -> Result<Response<AllocatableResourcesResponse>, Status> {
        Err(Status::unimplemented("not used"))
    }
    async fn get(
        &self,
        _: Request<GetPodResourcesRequest>,
    ) -> Result<Response<GetPodResourcesResponse>, Status> {
        Err(Status::unimplemented("not used"))
    }
}

#[derive(Clone, Default)]
struct FakePods(Arc<Mutex<Vec<NodePod>>>);

impl NodePods for FakePods {
    fn list(&self) -> BoxFuture<'_, Result<Vec<NodePod>, kube::Error>> {
        let pods = self.0.lock().unwrap().clone();
        Box::pin(async move { Ok(pods) })
    }
}

struct FakeReader(Mutex<Vec<DeviceReading>>);

impl DeviceReader for FakeReader {
    fn runtime(&self) -> &'static str {
        "nvml"
    }
    fn read(&self) -> Result<Vec<DeviceReading>, ReadError> {
        Ok(self.0.lock().unwrap().clone())
    }
}

fn t4(index: u32) -> DeviceReading {
    DeviceReading {
        index,
        uuid: format!("GPU-{index}"),
        product: "Tesla T4".into(),
        total_mib: 15360,
        used_mib: 0,
        free_mib: 15360,
        processes: BTreeMap::new(),
        health: Health::Healthy,
        mig: MigMode::NotSupported,
    }
}

fn sharing_pod(name: &str, gib: u64, assigned: Option<&str>, bound_at: i64) -> NodePod {
    let mut annotations = BTreeMap::new();
    if let Some(devices) = assigned {
        annotations.insert("vramfit.io/assigned-devices".into(), devices.into());
        annotations.insert("vramfit.io/vram".into(), format!("{}Mi", gib * 1024));
    }
    NodePod {
        namespace: "ml".into(),
        name: name.into(),
        uid: format!("uid-{name}"),
        pending: true,
        annotations,
        requests: vec![("server".into(), gib)],
        bound_at: Some(bound_at),
    }
}

// ---- harness ------------------------------------------------------------------------------

struct Kubelet {
    dir: tempdir::Dir,
    registrations: mpsc::UnboundedReceiver<RegisterRequest>,
    registration_server: Option<(tokio::task::JoinHandle<()>, watch::Sender<bool>)>,
    pod_resources: FakePodResources,
    pods: FakePods,
    reader: Arc<FakeReader>,
    plugin: VramPlugin,
    stop_plugin: watch::Sender<bool>,
    plugin_task: tokio::task::JoinHandle<u64>,
}

/// A minimal temporary directory (removed on drop) under the system temp dir.
mod tempdir {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU32, Ordering};

    pub struct Dir(PathBuf);

    impl Dir {
        pub fn new() -> Dir {
            static N: AtomicU32 = AtomicU32::new(0);
            let path = std::env::temp_dir().join(format!(
                "vramfit-dp-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&path).unwrap();
            Dir(path)
        }
        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn start_registration(
    dir: &Path,
    tx: mpsc::UnboundedSender<RegisterRequest>,
) -> (tokio::task::JoinHandle<()>, watch::Sender<bool>) {
    // Bound beside and renamed into place, so a replaced socket is always a new inode.
    let staging = dir.join("kubelet.sock.new");
    let listener = bind(&staging).unwrap();
    std::fs::rename(&staging, dir.join(KUBELET_SOCKET_NAME)).unwrap();
    let (stop, mut stopped) = watch::channel(false);
    let router = server().add_service(RegistrationServer::new(FakeRegistration(tx)));
    let task = tokio::spawn(async move {
        serve(router, listener, async move {
            let _ = stopped.wait_for(|s| *s).await;
        })
        .await
        .unwrap();
    });
    (task, stop)
}

fn start_pod_resources(path: &Path, fake: FakePodResources) {
    let listener = bind(path).unwrap();
    let router = server().add_service(PodResourcesListerServer::new(fake));
    tokio::spawn(async move {
        serve(router, listener, std::future::pending())
            .await
            .unwrap();
    });
}

impl Kubelet {
    async fn start(devices: Vec<DeviceReading>, backend: Backend) -> Kubelet {
        let dir = tempdir::Dir::new();
        let (tx, registrations) = mpsc::unbounded_channel();
        let registration_server = Some(start_registration(dir.path(), tx));

        let pod_resources = FakePodResources::default();
        let pr_socket = dir.path().join("pod-resources.sock");
        start_pod_resources(&pr_socket, pod_resources.clone());

        let pods = FakePods::default();
        let reader = Arc::new(FakeReader(Mutex::new(devices.clone())));
        let (readings_tx, readings) = watch::channel(devices);
        let (stop_plugin, stop_rx) = watch::channel(false);
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        tokio::spawn(poll_devices(
            reader.clone(),
            readings_tx,
            Duration::from_millis(20),
            stopped(stop_rx.clone()),
        ));
        let plugin = VramPlugin::new(
            Handover {
                vendor: Vendor::Nvidia { cdi: false },
                backend,
            },
            readings,
            Arc::new(pods.clone()),
            Arc::new(PodResourcesSocket::new(pr_socket)),
            Duration::from_secs(300),
        );
        let settings = PluginSettings {
            dir: dir.path().to_path_buf(),
            check_interval: Duration::from_millis(20),
            ..PluginSettings::default()
        };
        let plugin_task = {
            let plugin = plugin.clone();
            tokio::spawn(async move {
                plugin
                    .run(&settings, stopped(stop_rx))
                    .await
                    .unwrap()
                    .registrations
            })
        };
        let mut kubelet = Kubelet {
            dir,
            registrations,
            registration_server,
            pod_resources,
            pods,
            reader,
            plugin,
            stop_plugin,
            plugin_task,
        };
        let first = kubelet.next_registration().await;
        assert_eq!(first.version, "v1beta1");
        assert_eq!(first.resource_name, RESOURCE_VRAM_GIB);
        assert_eq!(first.endpoint, PLUGIN_SOCKET_NAME);
        let options = first.options.unwrap();
        assert!(!options.pre_start_required && !options.get_preferred_allocation_available);
        kubelet
    }

    async fn next_registration(&mut self) -> RegisterRequest {
        tokio::time::timeout(PATIENCE, self.registrations.recv())
            .await
            .expect("the plugin registers")
            .unwrap()
    }

    fn plugin_socket(&self) -> PathBuf {
        self.dir.path().join(PLUGIN_SOCKET_NAME)
    }

    async fn client(&self) -> DevicePluginClient<tonic::transport::Channel> {
        DevicePluginClient::new(connect(&self.plugin_socket()).await.unwrap())
    }

    /// kubelet's ListAndWatch stream on the plugin's current socket.
    async fn list_and_watch(
        &self,
    ) -> tonic::Streaming<vramfit::agent::kubelet_api::deviceplugin::ListAndWatchResponse> {
        self.client()
            .await
            .list_and_watch(Empty {})
            .await
            .unwrap()
            .into_inner()
    }

    /// kubelet's Allocate for one container that was given `units` unit IDs.
    async fn allocate(&self, units: &[String]) -> Result<AllocateResponse, Status> {
        self.client()
            .await
            .allocate(AllocateRequest {
                container_requests: vec![ContainerAllocateRequest {
                    devices_ids: units.to_vec(),
                }],
            })
            .await
            .map(Response::into_inner)
    }

    fn add_pod(&self, pod: NodePod) {
        self.pods.0.lock().unwrap().push(pod);
    }

    async fn stop(self) -> u64 {
        let _ = self.stop_plugin.send(true);
        let registrations = tokio::time::timeout(PATIENCE, self.plugin_task)
            .await
            .expect("the plugin stops")
            .unwrap();
        assert!(
            !self.dir.path().join(PLUGIN_SOCKET_NAME).exists(),
            "the plugin removes its socket"
        );
        registrations
    }
}

/// `n` unit IDs of device `index`, starting at `from` (as kubelet would pick them).
fn unit_ids(index: u32, from: u32, n: u32) -> Vec<String> {
    (from..from + n)
        .map(|k| format!("GPU-{index}::{k}"))
        .collect()
}

async fn first_devices(
    stream: &mut tonic::Streaming<vramfit::agent::kubelet_api::deviceplugin::ListAndWatchResponse>,
) -> Vec<Device> {
    tokio::time::timeout(PATIENCE, stream.message())
        .await
        .expect("ListAndWatch sends")
        .unwrap()
        .expect("stream open")
        .devices
}

// ---- tests --------------------------------------------------------------------------------

#[tokio::test]
async fn registers_and_advertises_gib_units() {
    let kubelet = Kubelet::start(vec![t4(0), t4(1)], Backend::None).await;
    let mut stream = kubelet.list_and_watch().await;
    let devices = first_devices(&mut stream).await;
    assert_eq!(devices.len(), 30, "two T4s of 15360 MiB: 15 units each");
    assert!(devices.iter().all(|d| d.health == HEALTHY));
    assert_eq!(devices[0].id, "GPU-0::0");
    assert_eq!(devices[29].id, "GPU-1::14");
    assert_eq!(kubelet.stop().await, 1);
}

#[tokio::test]
async fn re_registers_after_the_socket_disappears_or_kubelet_restarts() {
    let mut kubelet = Kubelet::start(vec![t4(0)], Backend::None).await;
    // kubelet restart, as kubelet does it: every socket in the directory is removed.
    std::fs::remove_file(kubelet.plugin_socket()).unwrap();
    let again = kubelet.next_registration().await;
    assert_eq!(again.resource_name, RESOURCE_VRAM_GIB);
    // The new socket answers.
    let mut stream = kubelet.list_and_watch().await;
    assert_eq!(first_devices(&mut stream).await.len(), 15);

    // kubelet comes back with a new socket of its own while the plugin's stays.
    let (task, stop) = kubelet.registration_server.take().unwrap();
    let _ = stop.send(true);
    task.await.unwrap();
    let (tx, registrations) = mpsc::unbounded_channel();
    kubelet.registrations = registrations;
    kubelet.registration_server = Some(start_registration(kubelet.dir.path(), tx));
    let third = kubelet.next_registration().await;
    assert_eq!(third.endpoint, PLUGIN_SOCKET_NAME);
    // The old ListAndWatch stream ended with the old serve.
    let ended = tokio::time::timeout(PATIENCE, async {
        while let Ok(Some(_)) = stream.message().await {}
    })
    .await;
    assert!(
        ended.is_ok(),
        "the old stream ends when the plugin serves again"
    );
    assert_eq!(kubelet.stop().await, 3);
}

#[tokio::test]
async fn allocate_hands_each_sharing_pod_its_assigned_device_and_limit() {
    let kubelet = Kubelet::start(
        vec![t4(0), t4(1)],
        Backend::Mps {
            pipe_dir: "/run/nvidia/mps".into(),
        },
    )
    .await;
    kubelet.add_pod(sharing_pod("a", 4, Some("0"), 100));
    kubelet.add_pod(sharing_pod("b", 4, Some("1"), 105));
    kubelet.add_pod(sharing_pod("c", 2, Some("1"), 100));

    // kubelet admits in bind order: a first. Which units it passes does not matter.
    let units_a = unit_ids(1, 0, 4);
    let a = kubelet.allocate(&units_a).await.unwrap();
    let a = &a.container_responses[0];
    assert_eq!(a.envs["NVIDIA_VISIBLE_DEVICES"], "GPU-0");
    assert_eq!(a.envs["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"], "0=4096M");
    assert_eq!(a.envs[ENV_ALLOCATED_FOR], "ml/a");
    assert_eq!(a.mounts[0].host_path, "/run/nvidia/mps");
    kubelet
        .pod_resources
        .hold("ml", "a", "server", RESOURCE_VRAM_GIB, &units_a);

    // The 2 GiB pod is told apart by its size.
    let c = kubelet.allocate(&unit_ids(0, 0, 2)).await.unwrap();
    assert_eq!(c.container_responses[0].envs[ENV_ALLOCATED_FOR], "ml/c");
    assert_eq!(
        c.container_responses[0].envs["NVIDIA_VISIBLE_DEVICES"],
        "GPU-1"
    );
    assert_eq!(
        c.container_responses[0].envs["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"],
        "0=2048M"
    );

    let b = kubelet.allocate(&unit_ids(0, 2, 4)).await.unwrap();
    assert_eq!(
        b.container_responses[0].envs["NVIDIA_VISIBLE_DEVICES"],
        "GPU-1"
    );
    assert_eq!(b.container_responses[0].envs[ENV_ALLOCATED_FOR], "ml/b");

    // Everyone is allocated now: another request finds no pod.
    let none = kubelet.allocate(&unit_ids(0, 6, 4)).await.unwrap_err();
    assert_eq!(none.code(), tonic::Code::FailedPrecondition);
    assert!(
        none.message().contains("no pending pod"),
        "{}",
        none.message()
    );
    assert_eq!(kubelet.plugin.allocations(), 3);
    assert_eq!(kubelet.plugin.mismatches(), 0);
    kubelet.stop().await;
}

#[tokio::test]
async fn concurrent_allocates_for_pods_of_equal_size() {
    let kubelet = Kubelet::start(
        vec![t4(0), t4(1)],
        Backend::HamiCore {
            library_dir: "/usr/local/vgpu".into(),
        },
    )
    .await;
    // Three equal pods on device 0, bound in the same second: any order gives the same answers.
    for name in ["p1", "p2", "p3"] {
        kubelet.add_pod(sharing_pod(name, 4, Some("0"), 200));
    }
    let calls = (0..3).map(|i| {
        let units = unit_ids(0, 4 * i, 4);
        let kubelet = &kubelet;
        async move { kubelet.allocate(&units).await }
    });
    let answers = futures::future::join_all(calls).await;
    let mut owners: Vec<String> = answers
        .into_iter()
        .map(|a| {
            let a = a.unwrap();
            let env = &a.container_responses[0].envs;
            assert_eq!(env["NVIDIA_VISIBLE_DEVICES"], "GPU-0");
            assert_eq!(env["CUDA_DEVICE_MEMORY_LIMIT_0"], "4096m");
            env[ENV_ALLOCATED_FOR].clone()
        })
        .collect();
    owners.sort();
    assert_eq!(
        owners,
        ["ml/p1", "ml/p2", "ml/p3"],
        "each pod allocated once"
    );
    let fourth = kubelet.allocate(&unit_ids(1, 0, 4)).await.unwrap_err();
    assert!(fourth.message().contains("no pending pod"));

    // Equal size, different devices, same bind second: refused, never guessed.
    kubelet.add_pod(sharing_pod("q1", 3, Some("0"), 300));
    kubelet.add_pod(sharing_pod("q2", 3, Some("1"), 300));
    let ambiguous = kubelet.allocate(&unit_ids(1, 0, 3)).await.unwrap_err();
    assert_eq!(ambiguous.code(), tonic::Code::FailedPrecondition);
    assert!(
        ambiguous.message().contains("ambiguous") && ambiguous.message().contains("ml/q1"),
        "{}",
        ambiguous.message()
    );
    kubelet.stop().await;
}

#[tokio::test]
async fn a_pod_without_an_assignment_fails_clearly() {
    let kubelet = Kubelet::start(vec![t4(0)], Backend::None).await;
    kubelet.add_pod(sharing_pod("stray", 4, None, 10));
    let e = kubelet.allocate(&unit_ids(0, 0, 4)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(
        e.message().contains("ml/stray")
            && e.message().contains("vramfit.io/assigned-devices")
            && e.message().contains("vramfit profile"),
        "{}",
        e.message()
    );
    // An assignment to a device the node does not have is refused too.
    kubelet.add_pod(sharing_pod("elsewhere", 5, Some("3"), 10));
    let e = kubelet.allocate(&unit_ids(0, 0, 5)).await.unwrap_err();
    assert!(e.message().contains("device 3"), "{}", e.message());
    assert_eq!(kubelet.plugin.allocations(), 0);
    kubelet.stop().await;
}

#[tokio::test]
async fn health_changes_reach_list_and_watch() {
    let kubelet = Kubelet::start(vec![t4(0), t4(1)], Backend::None).await;
    let mut stream = kubelet.list_and_watch().await;
    assert!(first_devices(&mut stream)
        .await
        .iter()
        .all(|d| d.health == HEALTHY));

    kubelet.reader.0.lock().unwrap()[1].health =
        Health::Unhealthy("pages pending retirement".into());
    let devices = first_devices(&mut stream).await;
    let (sick, well): (Vec<&Device>, Vec<&Device>) =
        devices.iter().partition(|d| d.id.starts_with("GPU-1::"));
    assert_eq!(sick.len(), 15);
    assert!(sick.iter().all(|d| d.health == UNHEALTHY));
    assert!(well.iter().all(|d| d.health == HEALTHY));

    // A pod assigned to the sick device is refused rather than started on it.
    kubelet.add_pod(sharing_pod("late", 4, Some("1"), 10));
    let e = kubelet.allocate(&unit_ids(0, 0, 4)).await.unwrap_err();
    assert!(e.message().contains("unhealthy"), "{}", e.message());

    kubelet.reader.0.lock().unwrap()[1].health = Health::Healthy;
    assert!(first_devices(&mut stream)
        .await
        .iter()
        .all(|d| d.health == HEALTHY));
    kubelet.stop().await;
}

// ---- reconciliation -----------------------------------------------------------------------

/// Captures what the agent writes and says when it did.
struct CapturingWriter {
    values: Mutex<Vec<String>>,
    written: tokio::sync::Notify,
}

impl vramfit::agent::run::AnnotationWriter for CapturingWriter {
    fn write<'a>(
        &'a self,
        value: &'a str,
    ) -> BoxFuture<'a, Result<(), vramfit::agent::run::WriteError>> {
        self.values.lock().unwrap().push(value.to_string());
        self.written.notify_one();
        Box::pin(async { Ok(()) })
    }
}

#[tokio::test]
async fn the_ledger_follows_the_device_kubelet_gave_a_whole_device_pod() {
    use common::objects::{node_json, pod_json};
    use vramfit::agent::allocated::{run_report, ANNOTATION_ALLOCATED_DEVICES};
    use vramfit::extender::binder::RecordOnly;
    use vramfit::extender::metrics::Metrics;
    use vramfit::extender::state::ExtenderState;

    // vramfit recorded ml/train on device 0 of gpu-1, as its Binding said.
    let state = ExtenderState::new(
        vramfit::core::Config::default(),
        vramfit::core::Catalog::default(),
        Box::new(RecordOnly),
    );
    let now = std::time::SystemTime::now();
    state.apply_node(&node_json("gpu-1", 4).typed(), now);
    let pod = pod_json("train").gpus(1).vram("30Gi").assigned("0");
    state.apply_pod(&pod.bound("gpu-1").typed());
    let devices = |state: &ExtenderState| -> Vec<u32> {
        let inventory = state.read();
        let placement = inventory.placement("uid-train").expect("recorded");
        placement.shares.iter().map(|s| s.index).collect()
    };
    assert_eq!(devices(&state), [0]);

    // kubelet's NVIDIA device plugin gave it GPU-2; a sharing pod holds vramfit units.
    let dir = tempdir::Dir::new();
    let socket = dir.path().join("pod-resources.sock");
    let pod_resources = FakePodResources::default();
    pod_resources.hold("ml", "train", "c", "nvidia.com/gpu", &["GPU-2".to_string()]);
    pod_resources.hold("ml", "share", "c", RESOURCE_VRAM_GIB, &unit_ids(1, 0, 4));
    start_pod_resources(&socket, pod_resources);

    // The agent's report.
    let reader = Arc::new(FakeReader(Mutex::new((0..4).map(t4).collect())));
    let writer = Arc::new(CapturingWriter {
        values: Mutex::default(),
        written: tokio::sync::Notify::new(),
    });
    let stats = {
        let writer = writer.clone();
        tokio::time::timeout(
            PATIENCE,
            run_report(
                reader,
                Arc::new(PodResourcesSocket::new(&socket)),
                writer.as_ref(),
                Duration::from_millis(10),
                async { writer.written.notified().await },
            ),
        )
        .await
        .expect("the agent writes a report")
    };
    assert_eq!((stats.writes, stats.read_errors), (1, 0));
    let value = writer.values.lock().unwrap()[0].clone();
    let report: serde_json::Value = serde_json::from_str(&value).unwrap();
    assert_eq!(report["pods"], serde_json::json!({"ml/train": [2]}));

    // The node watch delivers the annotation; the ledger moves, once.
    let annotated = node_json("gpu-1", 4).annotation(ANNOTATION_ALLOCATED_DEVICES, &value);
    state.apply_node(&annotated.clone().typed(), now);
    assert_eq!(devices(&state), [2]);
    assert_eq!(state.ledger_corrections(), 1);
    state.apply_node(&annotated.typed(), now);
    assert_eq!(state.ledger_corrections(), 1, "nothing left to correct");
    let scrape = Metrics::default().scrape(&state);
    assert!(
        scrape.contains("vramfit_ledger_corrections_total 1"),
        "{scrape}"
    );
    // Device 0 is free again for the next whole-device pod; device 2 is not.
    let inventory = state.read();
    let node = inventory.node("gpu-1").unwrap();
    let holders = |i: u32| {
        node.devices
            .iter()
            .find(|d| d.index == i)
            .unwrap()
            .exclusive_holders
    };
    assert_eq!((holders(0), holders(2)), (0, 1));
}
