//! The node agent's device side (`vramfit agent`, a DaemonSet on accelerator nodes).
//!
//! The agent reads its node's accelerators with a [`DeviceReader`] ([`NvmlReader`] for NVIDIA,
//! [`NpuSmiReader`] for Ascend, picked by [`detect`]), turns the readings into the core's
//! [`GpuStatus`](crate::core::node::GpuStatus) with [`gpu_status`], and asks a [`WriteState`]
//! whether the `vramfit.io/gpu-status` annotation is worth rewriting (a meaningful change, a
//! heartbeat, or not yet after failed writes). Writing the annotation (kube-rs) and the loop
//! around it live with the CLI; everything here is synchronous and, past the readers, pure.
//!
//! A loop, in outline (the reader blocks: call it off the async runtime):
//!
//! ```ignore
//! let reader = vramfit::agent::detect().ok_or("no accelerator runtime")?;
//! let mut state = WriteState::new(WritePolicy::default());
//! loop {
//!     let status = gpu_status(&reader.read()?, SystemTime::now());
//!     if let WriteDecision::Write(_) = state.decide(&status, Instant::now()) {
//!         match patch_annotation(ANNOTATION_GPU_STATUS, &annotation_value(&status)?) {
//!             Ok(()) => state.succeeded(&status, Instant::now()),
//!             Err(_) => { state.failed(Instant::now()); }
//!         }
//!     }
//!     sleep(poll_interval);
//! }
//! ```

pub mod allocated;
pub mod device_plugin;
pub mod devices;
pub mod kubelet_api;
pub mod node_pods;
pub mod npu_smi;
pub mod nvml;
pub mod pod_resources;
pub mod report;
pub mod run;
pub mod sharing;

pub use devices::{DeviceReader, DeviceReading, Health, MigMode, ReadError};
pub use npu_smi::{CommandOutput, CommandRunner, NpuSmiReader, SystemRunner};
pub use nvml::{NvmlApi, NvmlReader, RealNvml};
pub use report::{
    annotation_value, gpu_status, Backoff, WriteDecision, WritePolicy, WriteReason, WriteState,
};

/// No accelerator runtime answered on this node; says why each did not.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no accelerator runtime found ({nvml}; {npu_smi})")]
pub struct NoRuntime {
    /// Why NVML did not answer.
    pub nvml: String,
    /// Why `npu-smi` did not answer.
    pub npu_smi: String,
}

/// The node's device reader: NVML, else `npu-smi`, else `None` (the agent logs one line and
/// idles). [`find_runtime`] says why neither answered.
pub fn detect() -> Option<Box<dyn DeviceReader>> {
    find_runtime().ok()
}

/// Like [`detect`], with the reasons when no runtime answers. Detection runs once: a node
/// whose driver is still loading can be asked again later.
pub fn find_runtime() -> Result<Box<dyn DeviceReader>, NoRuntime> {
    find_runtime_with(NvmlReader::init, NpuSmiReader::system())
}

/// Detection over given readers (fakes in tests). NVML is taken when it loads and counts at
/// least one GPU; `npu-smi` when a read returns at least one NPU.
pub fn find_runtime_with(
    nvml: impl FnOnce() -> Result<NvmlReader, ReadError>,
    npu_smi: NpuSmiReader,
) -> Result<Box<dyn DeviceReader>, NoRuntime> {
    let nvml = match nvml().and_then(|r| r.device_count().map(|n| (r, n))) {
        Ok((reader, n)) if n > 0 => return Ok(Box::new(reader)),
        Ok(_) => "NVML: no GPUs".to_string(),
        Err(e) => e.to_string(),
    };
    let npu_smi = match npu_smi.read() {
        Ok(devices) if !devices.is_empty() => return Ok(Box::new(npu_smi)),
        Ok(_) => "npu-smi: no NPUs".to_string(),
        Err(e) => e.to_string(),
    };
    Err(NoRuntime { nvml, npu_smi })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nvml_wrapper::error::NvmlError;
    use std::io;

    struct OneGpu(u32);

    impl NvmlApi for OneGpu {
        fn device_count(&self) -> Result<u32, NvmlError> {
            Ok(self.0)
        }
        fn uuid(&self, _: u32) -> Result<String, NvmlError> {
            Ok("GPU-x".into())
        }
        fn name(&self, _: u32) -> Result<String, NvmlError> {
            Ok("Tesla T4".into())
        }
        fn memory_info(&self, _: u32) -> Result<nvml::MemoryBytes, NvmlError> {
            Ok(nvml::MemoryBytes {
                total: 1 << 30,
                used: 0,
                free: 1 << 30,
            })
        }
        fn running_compute_processes(&self, _: u32) -> Result<Vec<(u32, Option<u64>)>, NvmlError> {
            Ok(vec![])
        }
        fn are_pages_pending_retired(&self, _: u32) -> Result<bool, NvmlError> {
            Err(NvmlError::NotSupported)
        }
        fn retired_page_count(&self, _: u32) -> Result<u64, NvmlError> {
            Err(NvmlError::NotSupported)
        }
        fn mig_mode(&self, _: u32) -> Result<u32, NvmlError> {
            Err(NvmlError::NotSupported)
        }
    }

    struct Runner(Option<&'static str>);

    impl CommandRunner for Runner {
        fn run(&self, _: &str, _: &[&str]) -> io::Result<CommandOutput> {
            match self.0 {
                Some(stdout) => Ok(CommandOutput {
                    success: true,
                    status: "exit status: 0".into(),
                    stdout: stdout.into(),
                    stderr: String::new(),
                }),
                None => Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    "No such file or directory (os error 2)",
                )),
            }
        }
    }

    fn no_nvml() -> Result<NvmlReader, ReadError> {
        Err(ReadError::Nvml {
            index: None,
            query: "init",
            source: NvmlError::LibraryNotFound,
        })
    }

    fn npu_smi(stdout: Option<&'static str>) -> NpuSmiReader {
        NpuSmiReader::new(Box::new(Runner(stdout)))
    }

    const A2: &str = include_str!("../../tests/fixtures/npu-smi/910b3-atlas-800i-a2.txt");

    #[test]
    fn nvml_first() {
        let r = find_runtime_with(
            || Ok(NvmlReader::with_api(Box::new(OneGpu(1)))),
            npu_smi(Some(A2)),
        )
        .unwrap();
        assert_eq!(r.runtime(), "nvml");
        assert_eq!(r.read().unwrap().len(), 1);
    }

    #[test]
    fn npu_smi_when_nvml_is_missing_or_empty() {
        let r = find_runtime_with(no_nvml, npu_smi(Some(A2))).unwrap();
        assert_eq!(r.runtime(), "npu-smi");
        assert_eq!(r.read().unwrap().len(), 8);
        let r = find_runtime_with(
            || Ok(NvmlReader::with_api(Box::new(OneGpu(0)))),
            npu_smi(Some(A2)),
        )
        .unwrap();
        assert_eq!(r.runtime(), "npu-smi");
    }

    #[test]
    fn neither_is_a_clear_value() {
        let e = find_runtime_with(no_nvml, npu_smi(None)).err().unwrap();
        assert_eq!(
            e.to_string(),
            "no accelerator runtime found (NVML: init: a shared library couldn't be found or loaded; \
             npu-smi info: could not run: No such file or directory (os error 2))"
        );
        let e = find_runtime_with(
            || Ok(NvmlReader::with_api(Box::new(OneGpu(0)))),
            npu_smi(Some("garbage")),
        )
        .err()
        .unwrap();
        assert_eq!(e.nvml, "NVML: no GPUs");
        assert!(e
            .npu_smi
            .starts_with("npu-smi info output: no device table"));
    }

    #[test]
    fn detect_on_this_machine_answers_without_panicking() {
        // No assertion on the answer: it depends on the machine's drivers.
        match find_runtime() {
            Ok(reader) => assert!(["nvml", "npu-smi"].contains(&reader.runtime())),
            Err(e) => assert!(e.to_string().starts_with("no accelerator runtime found")),
        }
    }
}
