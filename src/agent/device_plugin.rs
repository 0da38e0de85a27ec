//! `vramfit device-plugin`: a kubelet device plugin (API `v1beta1`) for the sharing resource
//! [`RESOURCE_VRAM_GIB`]. It serves on its own socket in kubelet's device plugin directory,
//! registers with kubelet, streams the units ([`units`]) with their health through
//! `ListAndWatch`, and answers `Allocate` with vramfit's assignment ([`choose`], [`Handover`]).
//! When kubelet restarts (it deletes the plugin sockets, or replaces its own), the plugin serves
//! again and re-registers.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::Stream;
use tokio::sync::{mpsc, watch, Mutex};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::devices::{DeviceReader, DeviceReading};
use super::kubelet_api::deviceplugin::device_plugin_server::{DevicePlugin, DevicePluginServer};
use super::kubelet_api::deviceplugin::registration_client::RegistrationClient;
use super::kubelet_api::deviceplugin::{
    AllocateRequest, AllocateResponse, DevicePluginOptions, Empty, ListAndWatchResponse,
    PreStartContainerRequest, PreStartContainerResponse, PreferredAllocationRequest,
    PreferredAllocationResponse, RegisterRequest,
};
use super::kubelet_api::{
    bind, connect, serve, server, DEVICE_PLUGIN_API_VERSION, DEVICE_PLUGIN_DIR, KUBELET_SOCKET_NAME,
};
use super::node_pods::NodePods;
use super::pod_resources::PodResourcesSource;
use super::sharing::{
    answer_for, choose, devices_for, units, Answer, ContainerKey, Handover, RESOURCE_VRAM_GIB,
};

/// The plugin's socket name in the device plugin directory.
pub const PLUGIN_SOCKET_NAME: &str = "vramfit-vram-gib.sock";

/// Why the plugin stopped.
#[derive(Debug, thiserror::Error)]
pub enum DevicePluginError {
    /// The plugin's Unix socket could not be bound.
    #[error("binding the plugin socket {path}: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The gRPC server failed while serving.
    #[error("serving the device plugin: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Where the plugin lives and how watchful it is.
#[derive(Debug, Clone)]
pub struct PluginSettings {
    /// kubelet's device plugin directory (`/var/lib/kubelet/device-plugins`).
    pub dir: PathBuf,
    /// The plugin's socket name in `dir`.
    pub socket_name: String,
    /// How often to check that the plugin's socket and kubelet's are still the ones registered,
    /// and to retry a failed registration.
    pub check_interval: Duration,
    /// How long an answered `Allocate` counts as taken before kubelet's PodResources shows it.
    pub handout_ttl: Duration,
}

impl Default for PluginSettings {
    fn default() -> Self {
        PluginSettings {
            dir: PathBuf::from(DEVICE_PLUGIN_DIR),
            socket_name: PLUGIN_SOCKET_NAME.into(),
            check_interval: Duration::from_secs(1),
            handout_ttl: Duration::from_secs(300),
        }
    }
}

/// What a run did, for logs and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunStats {
    /// Successful registrations with kubelet (1 + re-registrations).
    pub registrations: u64,
}

/// An `Allocate` answered, until kubelet's PodResources shows who got those units.
struct Handout {
    units: BTreeSet<String>,
    container: ContainerKey,
    answer: Answer,
    at: Instant,
}

struct Shared {
    handover: Handover,
    readings: watch::Receiver<Vec<DeviceReading>>,
    pods: Arc<dyn NodePods>,
    allocated: Arc<dyn PodResourcesSource>,
    /// Also serialises `Allocate` calls: one decision at a time.
    handouts: Mutex<Vec<Handout>>,
    handout_ttl: Duration,
    allocations: AtomicU64,
    mismatches: AtomicU64,
}

/// The device plugin: shared state of every serve, and the gRPC service of one.
#[derive(Clone)]
pub struct VramPlugin {
    shared: Arc<Shared>,
    /// Ends `ListAndWatch` streams when the serve they belong to stops.
    stop: watch::Receiver<bool>,
}

impl VramPlugin {
    /// A plugin answering from `readings` (kept current by [`poll_devices`]), the pods bound to
    /// this node, and kubelet's allocations.
    pub fn new(
        handover: Handover,
        readings: watch::Receiver<Vec<DeviceReading>>,
        pods: Arc<dyn NodePods>,
        allocated: Arc<dyn PodResourcesSource>,
        handout_ttl: Duration,
    ) -> Self {
        VramPlugin {
            shared: Arc::new(Shared {
                handover,
                readings,
                pods,
                allocated,
                handouts: Mutex::new(Vec::new()),
                handout_ttl,
                allocations: AtomicU64::new(0),
                mismatches: AtomicU64::new(0),
            }),
            stop: watch::channel(false).1,
        }
    }

    /// Allocations answered so far.
    pub fn allocations(&self) -> u64 {
        self.shared.allocations.load(Ordering::Relaxed)
    }

    /// Containers kubelet started with units that had been answered for another container
    /// with a different answer (found once PodResources shows the holder).
    pub fn mismatches(&self) -> u64 {
        self.shared.mismatches.load(Ordering::Relaxed)
    }

    /// Serves on `settings.dir/socket_name` and registers with kubelet, again after every
    /// kubelet restart, until `shutdown` completes; then removes the socket.
    pub async fn run(
        &self,
        settings: &PluginSettings,
        shutdown: impl Future<Output = ()>,
    ) -> Result<RunStats, DevicePluginError> {
        let mut shutdown = std::pin::pin!(shutdown);
        let socket = settings.dir.join(&settings.socket_name);
        let kubelet = settings.dir.join(KUBELET_SOCKET_NAME);
        let mut stats = RunStats::default();
        loop {
            let listener = bind(&socket).map_err(|source| DevicePluginError::Bind {
                path: socket.clone(),
                source,
            })?;
            // Taken before registering: a change after this point, even during registration,
            // is seen by the watch below.
            let mine = socket_identity(&socket);
            let (stop_tx, stop_rx) = watch::channel(false);
            let service = VramPlugin {
                shared: Arc::clone(&self.shared),
                stop: stop_rx.clone(),
            };
            let mut stop_server = stop_rx;
            let router = server().add_service(DevicePluginServer::new(service));
            let serving = tokio::spawn(serve(router, listener, async move {
                let _ = stop_server.wait_for(|stop| *stop).await;
            }));
            // Register (kubelet may be restarting: retry until it answers).
            let registered_with = loop {
                let kubelet_identity = socket_identity(&kubelet);
                match register(&kubelet, &settings.socket_name).await {
                    Ok(()) => break kubelet_identity,
                    Err(error) => {
                        tracing::warn!(%error, kubelet = %kubelet.display(), "registering with kubelet failed; retrying");
                    }
                }
                tokio::select! {
                    _ = &mut shutdown => {
                        stop_serving(serving, stop_tx).await?;
                        remove_socket(&socket);
                        return Ok(stats);
                    }
                    _ = tokio::time::sleep(settings.check_interval) => {}
                }
            };
            stats.registrations += 1;
            tracing::info!(resource = RESOURCE_VRAM_GIB, socket = %socket.display(), "registered with kubelet");

            // Watch for kubelet restarts.
            let why = loop {
                tokio::select! {
                    _ = &mut shutdown => break None,
                    _ = tokio::time::sleep(settings.check_interval) => {}
                }
                if socket_identity(&socket) != mine {
                    break Some("the plugin socket was removed (kubelet restarted?)");
                }
                if socket_identity(&kubelet) != registered_with {
                    break Some("kubelet's socket was replaced (kubelet restarted)");
                }
            };
            stop_serving(serving, stop_tx).await?;
            match why {
                Some(why) => tracing::warn!("{why}; serving again and re-registering"),
                None => {
                    remove_socket(&socket);
                    return Ok(stats);
                }
            }
        }
    }

    async fn allocate_all(&self, request: AllocateRequest) -> Result<AllocateResponse, Status> {
        let shared = &self.shared;
        let mut handouts = shared.handouts.lock().await;
        let (pods, held) = tokio::join!(shared.pods.list(), shared.allocated.list());
        let pods = pods.map_err(|e| {
            Status::unavailable(format!(
                "listing this node's pods to find the container: {e}"
            ))
        })?;
        let held = held.map_err(|e| {
            Status::unavailable(format!(
                "reading kubelet's allocations to skip allocated pods: {e}"
            ))
        })?;
        let ours: HashMap<BTreeSet<String>, ContainerKey> = held
            .into_iter()
            .filter(|h| h.resource == RESOURCE_VRAM_GIB)
            .map(|h| (h.device_ids.into_iter().collect(), h.container))
            .collect();
        let ttl = shared.handout_ttl;
        handouts.retain(|h| match ours.get(&h.units) {
            Some(holder) => {
                if *holder != h.container {
                    let holder_answer = pods
                        .iter()
                        .find(|p| p.namespace == holder.namespace && p.name == holder.pod)
                        .and_then(|p| answer_for(p, h.units.len() as u64).ok());
                    if holder_answer.as_ref() != Some(&h.answer) {
                        shared.mismatches.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(holder = %holder, meant_for = %h.container, devices = ?h.answer.indices, "kubelet started a container with devices answered for another pod; its ledger entry is corrected by reconciliation");
                    }
                }
                false
            }
            None => h.at.elapsed() < ttl,
        });
        let mut taken: HashSet<ContainerKey> = ours
            .into_values()
            .chain(handouts.iter().map(|h| h.container.clone()))
            .collect();
        let readings = shared.readings.borrow().clone();
        let mut responses = Vec::with_capacity(request.container_requests.len());
        for container in request.container_requests {
            let count = container.devices_ids.len() as u64;
            let refuse = |e: super::sharing::AllocateError| {
                tracing::warn!(units = count, error = %e, "allocation refused");
                Status::failed_precondition(e.to_string())
            };
            let grant = choose(count, &pods, &taken).map_err(refuse)?;
            let pod = format!("{}/{}", grant.container.namespace, grant.container.pod);
            let devices = devices_for(&pod, &grant.answer, &readings).map_err(refuse)?;
            responses.push(shared.handover.response(&grant, &devices));
            tracing::info!(container = %grant.container, devices = ?devices, vram_mib = grant.answer.vram_mib, "allocated");
            taken.insert(grant.container.clone());
            handouts.push(Handout {
                units: container.devices_ids.into_iter().collect(),
                container: grant.container,
                answer: grant.answer,
                at: Instant::now(),
            });
            shared.allocations.fetch_add(1, Ordering::Relaxed);
        }
        Ok(AllocateResponse {
            container_responses: responses,
        })
    }
}

/// Stops one serve and waits for its server to finish.
async fn stop_serving(
    serving: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    stop: watch::Sender<bool>,
) -> Result<(), DevicePluginError> {
    let _ = stop.send(true);
    match serving.await {
        Ok(result) => Ok(result?),
        Err(join) => {
            tracing::error!(%join, "the plugin's server task failed");
            Ok(())
        }
    }
}

/// Identity of a file (device, inode and change time: a new socket may reuse the inode number
/// of the one it replaces), `None` when it is absent.
fn socket_identity(path: &Path) -> Option<(u64, u64, i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino(), m.ctime(), m.ctime_nsec()))
}

fn remove_socket(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(error = %e, socket = %path.display(), "removing the plugin socket");
        }
    }
}

/// Why a registration failed.
#[derive(Debug, thiserror::Error)]
enum RegisterError {
    #[error("connecting: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("kubelet refused: {0}")]
    Refused(#[from] Status),
}

async fn register(kubelet: &Path, socket_name: &str) -> Result<(), RegisterError> {
    let channel = connect(kubelet).await?;
    RegistrationClient::new(channel)
        .register(RegisterRequest {
            version: DEVICE_PLUGIN_API_VERSION.into(),
            endpoint: socket_name.into(),
            resource_name: RESOURCE_VRAM_GIB.into(),
            options: Some(options()),
        })
        .await?;
    Ok(())
}

fn options() -> DevicePluginOptions {
    DevicePluginOptions {
        pre_start_required: false,
        get_preferred_allocation_available: false,
    }
}

type UnitStream = Pin<Box<dyn Stream<Item = Result<ListAndWatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl DevicePlugin for VramPlugin {
    async fn get_device_plugin_options(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<DevicePluginOptions>, Status> {
        Ok(Response::new(options()))
    }

    type ListAndWatchStream = UnitStream;

    async fn list_and_watch(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<Self::ListAndWatchStream>, Status> {
        let mut readings = self.shared.readings.clone();
        let mut stop = self.stop.clone();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut last = None;
            loop {
                let current = units(&readings.borrow_and_update());
                if last.as_ref() != Some(&current) {
                    let message = ListAndWatchResponse {
                        devices: current.clone(),
                    };
                    if tx.send(Ok(message)).await.is_err() {
                        return;
                    }
                    last = Some(current);
                }
                tokio::select! {
                    changed = readings.changed() => if changed.is_err() { return },
                    _ = stop.wait_for(|stop| *stop) => return,
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_preferred_allocation(
        &self,
        _: Request<PreferredAllocationRequest>,
    ) -> Result<Response<PreferredAllocationResponse>, Status> {
        Err(Status::unimplemented(
            "vramfit's units are interchangeable; the device comes from the pod's assignment",
        ))
    }

    async fn allocate(
        &self,
        request: Request<AllocateRequest>,
    ) -> Result<Response<AllocateResponse>, Status> {
        self.allocate_all(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn pre_start_container(
        &self,
        _: Request<PreStartContainerRequest>,
    ) -> Result<Response<PreStartContainerResponse>, Status> {
        Ok(Response::new(PreStartContainerResponse {}))
    }
}

/// Reads the devices every `poll` and publishes the readings when they change (health, size,
/// devices), until `shutdown`. A failed read keeps the last readings.
pub async fn poll_devices(
    reader: Arc<dyn DeviceReader>,
    readings: watch::Sender<Vec<DeviceReading>>,
    poll: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let read = {
            let reader = Arc::clone(&reader);
            tokio::task::spawn_blocking(move || reader.read())
        };
        tokio::select! {
            _ = &mut shutdown => return,
            joined = read => match joined {
                Ok(Ok(new)) => {
                    readings.send_if_modified(|old| {
                        let changed = *old != new;
                        if changed {
                            *old = new;
                        }
                        changed
                    });
                }
                Ok(Err(error)) => tracing::warn!(runtime = reader.runtime(), %error, "reading devices failed; keeping the last readings"),
                Err(join) => tracing::error!(%join, "the device read panicked"),
            },
        }
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(poll) => {}
        }
    }
}
