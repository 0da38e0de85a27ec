//! The node agent's device side (`vramfit agent`, a DaemonSet on accelerator nodes): reading
//! the node's accelerators with a [`DeviceReader`], over NVML or `npu-smi`.

pub mod devices;
pub mod npu_smi;
pub mod nvml;

pub use devices::{DeviceReader, DeviceReading, Health, MigMode, ReadError};
pub use npu_smi::{CommandOutput, CommandRunner, NpuSmiReader, SystemRunner};
pub use nvml::{NvmlApi, NvmlReader, RealNvml};
