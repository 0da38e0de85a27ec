//! The node agent's device side (`vramfit agent`, a DaemonSet on accelerator nodes): reading
//! the node's accelerators with a [`DeviceReader`], over NVML or `npu-smi`, and turning the
//! readings into the `vramfit.io/gpu-status` report with [`gpu_status`], written when a
//! [`WriteState`] says so.

pub mod devices;
pub mod npu_smi;
pub mod nvml;
pub mod report;

pub use devices::{DeviceReader, DeviceReading, Health, MigMode, ReadError};
pub use npu_smi::{CommandOutput, CommandRunner, NpuSmiReader, SystemRunner};
pub use nvml::{NvmlApi, NvmlReader, RealNvml};
pub use report::{
    annotation_value, gpu_status, Backoff, Decision, WritePolicy, WriteReason, WriteState,
};
