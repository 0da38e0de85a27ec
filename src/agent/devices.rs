//! What a device reader reports, whatever runtime it asks: one [`DeviceReading`] per device.

use std::collections::BTreeMap;

use nvml_wrapper::error::NvmlError;

use super::npu_smi::ParseError;

/// Reads the node's accelerators. Implemented over NVML ([`NvmlReader`](super::NvmlReader)) and
/// `npu-smi` ([`NpuSmiReader`](super::NpuSmiReader)); the agent holds one as `Box<dyn DeviceReader>`.
pub trait DeviceReader: Send + Sync {
    /// Short name of the runtime, for log lines (`nvml`, `npu-smi`).
    fn runtime(&self) -> &'static str;

    /// Reads every device now. A device that misbehaves is a reading with
    /// [`Health::Unhealthy`]; an error means the runtime itself could not be asked.
    fn read(&self) -> Result<Vec<DeviceReading>, ReadError>;
}

/// One device as its runtime reports it at the moment of reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceReading {
    /// Index as the device plugin numbers devices (NVML index; `npu-smi` device id).
    pub index: u32,
    /// Stable identity (`GPU-…`); empty where the runtime prints none (`npu-smi info`).
    pub uuid: String,
    /// Product name as the runtime reports it (`NVIDIA A100-SXM4-80GB`, `Ascend910B3`);
    /// the report sanitises it.
    pub product: String,
    /// Device memory in MiB.
    pub total_mib: u64,
    /// Memory in use by anything, as the driver measures it.
    pub used_mib: u64,
    /// Memory free in MiB, as the driver measures it.
    pub free_mib: u64,
    /// Device memory held per process (pid → MiB); 0 where the driver does not say.
    pub processes: BTreeMap<u32, u64>,
    /// Whether the device should take work.
    pub health: Health,
    /// The device's MIG mode.
    pub mig: MigMode,
}

/// Whether a device should take work, and why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Fit for work.
    Healthy,
    /// Unhealthy, with the reason in words (`pages pending retirement`, `memory_info: …`).
    Unhealthy(String),
}

impl Health {
    /// Whether this is [`Health::Healthy`].
    pub fn is_healthy(&self) -> bool {
        matches!(self, Health::Healthy)
    }

    /// Why the device is unhealthy, if it is.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Health::Healthy => None,
            Health::Unhealthy(reason) => Some(reason),
        }
    }
}

/// Multi-Instance GPU mode, as currently in force (a pending change needs a reset first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MigMode {
    /// The device has no MIG: pre-Ampere and consumer NVIDIA parts, every Ascend NPU.
    NotSupported,
    /// MIG is supported but turned off.
    Disabled,
    /// The device is split into MIG instances; its memory belongs to them, not to whole-device pods.
    Enabled,
    /// Not asked: the device failed a basic query.
    Unknown,
}

/// Why a runtime could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// NVML failed in a way that is not one device's fault (driver not loaded, library and
    /// driver mismatch, no permission), or while listing devices.
    #[error("NVML: {}{query}: {source}", device_prefix(*.index))]
    Nvml {
        /// The device asked, when the failing call was about one device.
        index: Option<u32>,
        /// The NVML call (`device_count`, `memory_info`, …).
        query: &'static str,
        /// NVML's error.
        #[source]
        source: NvmlError,
    },
    /// A command could not be run, timed out, or exited unsuccessfully.
    #[error("{command}: {message}")]
    Command {
        /// The command line that was run.
        command: String,
        /// What went wrong, in words.
        message: String,
    },
    /// `npu-smi info` ran but its output could not be read.
    #[error("npu-smi info output: {0}")]
    NpuSmi(#[from] ParseError),
}

fn device_prefix(index: Option<u32>) -> String {
    index.map(|i| format!("device {i}: ")).unwrap_or_default()
}

/// Bytes to MiB, rounded down (as `nvidia-smi` prints them).
pub(crate) fn bytes_to_mib(bytes: u64) -> u64 {
    bytes / (1024 * 1024)
}
