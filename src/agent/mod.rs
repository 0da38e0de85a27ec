//! The node agent's device side (`vramfit agent`, a DaemonSet on accelerator nodes): reading
//! the node's accelerators with a [`DeviceReader`].

pub mod devices;
pub mod nvml;

pub use devices::{DeviceReader, DeviceReading, Health, MigMode, ReadError};
pub use nvml::{NvmlApi, NvmlReader, RealNvml};
