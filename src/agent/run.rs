//! The agent's loop and its one write: read the devices every poll, and patch the node's
//! `vramfit.io/gpu-status` annotation when [`WriteState`] says so (a change, a heartbeat), backing
//! off exponentially after API errors. The device read blocks, so it runs off the async runtime.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use super::devices::DeviceReader;
use super::report::{annotation_value, gpu_status, WriteDecision, WritePolicy, WriteState};
use crate::core::node::ANNOTATION_GPU_STATUS;
use futures::future::BoxFuture;

/// Writes the annotation value somewhere (the Node through the API server; a fake in tests).
pub trait AnnotationWriter: Send + Sync {
    /// Writes `value` as the annotation.
    fn write<'a>(&'a self, value: &'a str) -> BoxFuture<'a, Result<(), WriteError>>;
}

/// Why an annotation write failed (the loop backs off and retries).
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The API server refused the patch or could not be reached.
    #[error("patching the node: {0}")]
    Api(#[from] kube::Error),
    /// Another writer refused it, with its reason.
    #[error("{0}")]
    Refused(String),
}

/// Patches one Node's annotation with a JSON merge patch (RBAC: `patch` on `nodes`).
pub struct NodeAnnotationWriter {
    api: Api<Node>,
    node: String,
    annotation: &'static str,
}

impl NodeAnnotationWriter {
    /// Writes `vramfit.io/gpu-status`.
    pub fn new(client: kube::Client, node: impl Into<String>) -> Self {
        Self::for_annotation(client, node, ANNOTATION_GPU_STATUS)
    }

    /// Writes `annotation` instead.
    pub fn for_annotation(
        client: kube::Client,
        node: impl Into<String>,
        annotation: &'static str,
    ) -> Self {
        NodeAnnotationWriter {
            api: Api::all(client),
            node: node.into(),
            annotation,
        }
    }
}

impl AnnotationWriter for NodeAnnotationWriter {
    fn write<'a>(&'a self, value: &'a str) -> BoxFuture<'a, Result<(), WriteError>> {
        Box::pin(async move {
            let patch = json!({"metadata": {"annotations": {self.annotation: value}}});
            self.api
                .patch(&self.node, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map(|_| ())
                .map_err(WriteError::from)
        })
    }
}

/// How often to read, and when to write.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Time between two device reads.
    pub poll: Duration,
    /// When a read is written to the node (a change, a heartbeat).
    pub policy: WritePolicy,
}

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions {
            poll: Duration::from_secs(5),
            policy: WritePolicy::default(),
        }
    }
}

/// What a run did, for logs and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentStats {
    /// Device reads that succeeded.
    pub reads: u64,
    /// Device reads that failed.
    pub read_errors: u64,
    /// Annotation writes that succeeded.
    pub writes: u64,
    /// Annotation writes that failed (retried after a backoff).
    pub write_errors: u64,
}

/// Runs until `shutdown` completes.
pub async fn run(
    reader: Arc<dyn DeviceReader>,
    writer: &dyn AnnotationWriter,
    options: AgentOptions,
    shutdown: impl Future<Output = ()>,
) -> AgentStats {
    let mut state = WriteState::new(options.policy);
    let mut stats = AgentStats::default();
    tokio::pin!(shutdown);
    loop {
        let reading = {
            let reader = Arc::clone(&reader);
            tokio::task::spawn_blocking(move || reader.read())
        };
        let readings = tokio::select! {
            _ = &mut shutdown => return stats,
            joined = reading => joined.map_err(|e| e.to_string()).and_then(|r| r.map_err(|e| e.to_string())),
        };
        stats.reads += 1;
        match readings {
            Err(error) => {
                stats.read_errors += 1;
                tracing::warn!(runtime = reader.runtime(), %error, "reading devices failed; the last report ages out");
            }
            Ok(readings) => {
                let status = gpu_status(&readings, SystemTime::now());
                if let WriteDecision::Write(reason) = state.decide(&status, Instant::now()) {
                    let value = match annotation_value(&status) {
                        Ok(value) => value,
                        Err(error) => {
                            tracing::error!(%error, "encoding the report");
                            continue;
                        }
                    };
                    match writer.write(&value).await {
                        Ok(()) => {
                            stats.writes += 1;
                            state.succeeded(&status, Instant::now());
                            tracing::info!(
                                ?reason,
                                devices = status.devices.len(),
                                "wrote {ANNOTATION_GPU_STATUS}"
                            );
                        }
                        Err(error) => {
                            stats.write_errors += 1;
                            let retry_in = state.failed(Instant::now());
                            tracing::warn!(%error, retry_in_ms = retry_in.as_millis() as u64, "writing {ANNOTATION_GPU_STATUS} failed");
                        }
                    }
                }
            }
        }
        tokio::select! {
            _ = &mut shutdown => return stats,
            _ = tokio::time::sleep(options.poll) => {}
        }
    }
}
