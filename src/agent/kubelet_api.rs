//! kubelet's gRPC APIs, generated at build time from `proto/` (see `build.rs`), and the unix
//! socket plumbing both ends use: [`connect`] dials a socket, [`serve`] answers on one.

use std::future::Future;
use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::{Channel, Endpoint, Server, Uri};

/// Device plugin API `v1beta1` (`k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1`).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod deviceplugin {
    tonic::include_proto!("v1beta1");
}

/// PodResources API `v1` (`k8s.io/kubelet/pkg/apis/podresources/v1`).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod podresources {
    tonic::include_proto!("v1");
}

/// Where kubelet keeps device plugin sockets, its own `kubelet.sock` among them.
pub const DEVICE_PLUGIN_DIR: &str = "/var/lib/kubelet/device-plugins";
/// kubelet's Registration socket, in [`DEVICE_PLUGIN_DIR`].
pub const KUBELET_SOCKET_NAME: &str = "kubelet.sock";
/// kubelet's PodResources socket.
pub const POD_RESOURCES_SOCKET: &str = "/var/lib/kubelet/pod-resources/kubelet.sock";
/// The device plugin API version vramfit speaks.
pub const DEVICE_PLUGIN_API_VERSION: &str = "v1beta1";

/// A gRPC channel over the unix socket at `path`. Connects once, now: a missing socket or a
/// peer that does not answer is an error here, not at the first call.
pub async fn connect(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path: PathBuf = path.to_path_buf();
    // The URI is required by the HTTP/2 layer but never resolved: the connector dials the socket.
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { UnixStream::connect(path).await.map(TokioIo::new) }
        }))
        .await
}

/// Binds a unix socket at `path`, replacing a stale socket file left there by an earlier run.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    UnixListener::bind(path)
}

/// Serves `router` on `listener` until `shutdown` completes.
pub async fn serve(
    router: tonic::transport::server::Router,
    listener: UnixListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    router
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await
}

/// A server builder with no per-connection limits beyond tonic's defaults.
pub fn server() -> Server {
    Server::builder()
}
