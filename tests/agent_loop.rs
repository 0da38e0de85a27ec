//! The agent's loop with a fake reader and writer, and its Node patch against a fake API server.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::api::FakeApi;
use common::objects::node_json;
use futures::future::BoxFuture;
use vramfit::agent::run::{run, AgentOptions, AnnotationWriter, NodeAnnotationWriter, WriteError};
use vramfit::agent::{
    Backoff, DeviceReader, DeviceReading, Health, MigMode, ReadError, WritePolicy,
};
use vramfit::core::node::GpuStatus;

/// Reads an A100 whose used memory grows by 10 GiB per read; every third read fails.
struct Growing {
    reads: AtomicUsize,
}

impl DeviceReader for Growing {
    fn runtime(&self) -> &'static str {
        "fake"
    }
    fn read(&self) -> Result<Vec<DeviceReading>, ReadError> {
        let n = self.reads.fetch_add(1, Ordering::SeqCst);
        if n % 3 == 2 {
            return Err(ReadError::Command {
                command: "fake".into(),
                message: "flaky".into(),
            });
        }
        let used = (n as u64 * 10_240).min(81_920);
        Ok(vec![DeviceReading {
            index: 0,
            uuid: "GPU-0".into(),
            product: "NVIDIA A100-SXM4-80GB".into(),
            total_mib: 81_920,
            used_mib: used,
            free_mib: 81_920 - used,
            processes: BTreeMap::new(),
            health: Health::Healthy,
            mig: MigMode::Disabled,
        }])
    }
}

/// Fails the first `failures` writes, records the rest, and signals after `stop_after` writes.
struct Recorder {
    failures: AtomicUsize,
    written: Mutex<Vec<String>>,
    stop_after: usize,
    done: tokio::sync::Notify,
}

impl AnnotationWriter for Recorder {
    fn write<'a>(&'a self, value: &'a str) -> BoxFuture<'a, Result<(), WriteError>> {
        Box::pin(async move {
            if self.failures.load(Ordering::SeqCst) > 0 {
                self.failures.fetch_sub(1, Ordering::SeqCst);
                return Err(WriteError::Refused("409 conflict".into()));
            }
            let mut written = self.written.lock().unwrap();
            written.push(value.to_string());
            if written.len() >= self.stop_after {
                self.done.notify_one();
            }
            Ok(())
        })
    }
}

#[tokio::test]
async fn the_loop_writes_changes_survives_errors_and_stops_on_shutdown() {
    let reader = Arc::new(Growing {
        reads: AtomicUsize::new(0),
    });
    let writer = Recorder {
        failures: AtomicUsize::new(2),
        written: Mutex::new(Vec::new()),
        stop_after: 3,
        done: tokio::sync::Notify::new(),
    };
    let options = AgentOptions {
        poll: Duration::from_millis(1),
        policy: WritePolicy {
            heartbeat: Duration::from_secs(3600),
            backoff: Backoff {
                initial: Duration::from_millis(1),
                factor: 2,
                cap: Duration::from_millis(4),
            },
            ..WritePolicy::default()
        },
    };
    // The loop returns once the shutdown future (the third write) completes.
    let stats = run(reader.clone(), &writer, options, writer.done.notified()).await;
    assert_eq!(stats.writes, 3);
    assert_eq!(stats.write_errors, 2, "two failed writes were retried");
    assert!(
        stats.read_errors >= 1,
        "a failing read is survived: {stats:?}"
    );
    let written = writer.written.lock().unwrap();
    let reports: Vec<GpuStatus> = written
        .iter()
        .map(|v| serde_json::from_str(v).unwrap())
        .collect();
    // Every write carries a change of more than 512 MiB (no heartbeat is due in this test).
    for pair in reports.windows(2) {
        assert!(
            pair[1].devices[0].used_mib > pair[0].devices[0].used_mib + 512,
            "{pair:?}"
        );
    }
    assert_eq!(
        reports[0].devices[0].product, "NVIDIA-A100-SXM4-80GB",
        "sanitised like GFD"
    );
}

#[test]
fn the_node_patch_is_a_merge_patch_of_the_annotation_only() {
    let api = FakeApi::builder()
        .nodes([node_json("gpu-1", 1).build()])
        .start();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let writer = NodeAnnotationWriter::new(api.client(), "gpu-1");
        writer.write("{\"version\":1}").await.unwrap();
    });
    let seen = api.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "PATCH");
    assert_eq!(seen[0].path, "/api/v1/nodes/gpu-1");
    assert_eq!(seen[0].content_type, "application/merge-patch+json");
    let body: serde_json::Value = serde_json::from_str(&seen[0].body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"metadata": {"annotations": {"vramfit.io/gpu-status": "{\"version\":1}"}}})
    );
}
