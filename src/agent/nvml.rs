//! The NVIDIA reader, over NVML (`libnvidia-ml.so.1`, loaded at run time by `nvml-wrapper`).
//!
//! Every NVML call the reader makes goes through [`NvmlApi`], so the reading and health rules
//! are tested against a fake; [`RealNvml`] is the thin implementation over `nvml-wrapper`.

use std::collections::BTreeMap;

use nvml_wrapper::enum_wrappers::device::RetirementCause;
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Nvml;

use super::devices::{bytes_to_mib, DeviceReader, DeviceReading, Health, MigMode, ReadError};

/// Retired pages (both causes together) at which a GPU is unhealthy: DCGM's health check
/// fails a GPU at 60 retired pages (`DCGM_LIMIT_MAX_RETIRED_PAGES`).
pub const DEFAULT_MAX_RETIRED_PAGES: u64 = 60;

/// `NVML_DEVICE_MIG_ENABLE`: the value of an enabled MIG mode.
const MIG_ENABLED: u32 = 1;

/// Framebuffer memory of one device, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryBytes {
    /// Total framebuffer memory in bytes.
    pub total: u64,
    /// Memory in use in bytes.
    pub used: u64,
    /// Memory free in bytes.
    pub free: u64,
}

/// The NVML queries the reader makes, by device index. Errors are NVML's own.
pub trait NvmlApi: Send + Sync {
    /// Number of devices NVML sees.
    fn device_count(&self) -> Result<u32, NvmlError>;
    /// The device's UUID (`GPU-…`).
    fn uuid(&self, index: u32) -> Result<String, NvmlError>;
    /// The device's product name.
    fn name(&self, index: u32) -> Result<String, NvmlError>;
    /// The device's framebuffer memory.
    fn memory_info(&self, index: u32) -> Result<MemoryBytes, NvmlError>;
    /// Running compute processes: pid and bytes used (`None` where the driver does not say).
    fn running_compute_processes(&self, index: u32) -> Result<Vec<(u32, Option<u64>)>, NvmlError>;
    /// Whether retired pages wait for a GPU reset to take effect.
    fn are_pages_pending_retired(&self, index: u32) -> Result<bool, NvmlError>;
    /// Pages retired for both causes (multiple single-bit, double-bit ECC errors).
    fn retired_page_count(&self, index: u32) -> Result<u64, NvmlError>;
    /// The current MIG mode (`NVML_DEVICE_MIG_ENABLE` when enabled).
    fn mig_mode(&self, index: u32) -> Result<u32, NvmlError>;
}

/// [`NvmlApi`] over a loaded NVML.
pub struct RealNvml(Nvml);

impl RealNvml {
    /// Loads `libnvidia-ml.so.1` and initialises NVML.
    pub fn init() -> Result<Self, NvmlError> {
        Nvml::init().map(RealNvml)
    }
}

impl NvmlApi for RealNvml {
    fn device_count(&self) -> Result<u32, NvmlError> {
        self.0.device_count()
    }

    fn uuid(&self, index: u32) -> Result<String, NvmlError> {
        self.0.device_by_index(index)?.uuid()
    }

    fn name(&self, index: u32) -> Result<String, NvmlError> {
        self.0.device_by_index(index)?.name()
    }

    fn memory_info(&self, index: u32) -> Result<MemoryBytes, NvmlError> {
        let m = self.0.device_by_index(index)?.memory_info()?;
        Ok(MemoryBytes {
            total: m.total,
            used: m.used,
            free: m.free,
        })
    }

    fn running_compute_processes(&self, index: u32) -> Result<Vec<(u32, Option<u64>)>, NvmlError> {
        let processes = self.0.device_by_index(index)?.running_compute_processes()?;
        Ok(processes
            .into_iter()
            .map(|p| match p.used_gpu_memory {
                UsedGpuMemory::Used(bytes) => (p.pid, Some(bytes)),
                UsedGpuMemory::Unavailable => (p.pid, None),
            })
            .collect())
    }

    fn are_pages_pending_retired(&self, index: u32) -> Result<bool, NvmlError> {
        self.0.device_by_index(index)?.are_pages_pending_retired()
    }

    fn retired_page_count(&self, index: u32) -> Result<u64, NvmlError> {
        let device = self.0.device_by_index(index)?;
        let single = device.retired_pages(RetirementCause::MultipleSingleBitEccErrors)?;
        let double = device.retired_pages(RetirementCause::DoubleBitEccError)?;
        Ok((single.len() + double.len()) as u64)
    }

    fn mig_mode(&self, index: u32) -> Result<u32, NvmlError> {
        Ok(self.0.device_by_index(index)?.mig_mode()?.current)
    }
}

/// Reads NVIDIA GPUs through NVML.
///
/// Health rule, per device:
/// * **unhealthy** when pages are pending retirement (memory with ECC errors stays mapped
///   until the GPU is reset), when retired pages of both causes reach
///   [`max_retired_pages`](Self::max_retired_pages) (default [`DEFAULT_MAX_RETIRED_PAGES`],
///   DCGM's limit), or when any query fails with a device fault (`GpuLost`, `ResetRequired`,
///   `Unknown`, …): the reason names the query and the error;
/// * `NotSupported` from a basic query (`uuid`, `name`, `memory_info`) is such a fault, since the
///   device cannot be reported without them; from the other queries it only means the signal
///   is absent (T4-class parts answer `NotSupported` to retired pages, Ampere and later
///   replaced page retirement by row remapping), and the device stays healthy;
/// * errors that are not one device's fault (NVML not initialised, driver not loaded, library
///   and driver mismatch, no permission, symbol missing) fail the whole read instead, so the
///   agent reports nothing rather than blame healthy devices.
///
/// A device failing a basic query is not asked further (its processes are empty, its MIG mode
/// [`MigMode::Unknown`]); one whose `memory_info` fails is reported with 0 MiB. Either way it is
/// unhealthy, which keeps it out of placement while the other devices are still reported.
pub struct NvmlReader {
    api: Box<dyn NvmlApi>,
    max_retired_pages: u64,
}

impl NvmlReader {
    /// Loads NVML. Fails where `libnvidia-ml.so.1` is missing or the driver is not loaded.
    pub fn init() -> Result<Self, ReadError> {
        let api = RealNvml::init().map_err(|source| ReadError::Nvml {
            index: None,
            query: "init",
            source,
        })?;
        Ok(Self::with_api(Box::new(api)))
    }

    /// A reader over any [`NvmlApi`] (a fake in tests).
    pub fn with_api(api: Box<dyn NvmlApi>) -> Self {
        Self {
            api,
            max_retired_pages: DEFAULT_MAX_RETIRED_PAGES,
        }
    }

    /// How many GPUs NVML sees.
    pub fn device_count(&self) -> Result<u32, ReadError> {
        self.api.device_count().map_err(|source| ReadError::Nvml {
            index: None,
            query: "device_count",
            source,
        })
    }

    /// Retired pages at which a device is unhealthy.
    pub fn max_retired_pages(mut self, pages: u64) -> Self {
        self.max_retired_pages = pages;
        self
    }

    fn read_device(&self, index: u32) -> Result<DeviceReading, ReadError> {
        let mut faults = Faults {
            index,
            reasons: Vec::new(),
        };
        let api = &*self.api;
        let uuid = faults.basic("uuid", api.uuid(index))?.unwrap_or_default();
        let product = faults.basic("name", api.name(index))?.unwrap_or_default();
        let memory = faults
            .basic("memory_info", api.memory_info(index))?
            .unwrap_or(MemoryBytes {
                total: 0,
                used: 0,
                free: 0,
            });
        // A device failing a basic query would fail the rest the same way: ask no further.
        let (processes, mig) = if faults.reasons.is_empty() {
            self.signals(&mut faults, index)?
        } else {
            (BTreeMap::new(), MigMode::Unknown)
        };
        let health = if faults.reasons.is_empty() {
            Health::Healthy
        } else {
            Health::Unhealthy(faults.reasons.join("; "))
        };
        Ok(DeviceReading {
            index,
            uuid,
            product,
            total_mib: bytes_to_mib(memory.total),
            used_mib: bytes_to_mib(memory.used),
            free_mib: bytes_to_mib(memory.free),
            processes,
            health,
            mig,
        })
    }
}

impl NvmlReader {
    /// Processes, health signals and MIG mode of a device that answered the basic queries.
    fn signals(
        &self,
        faults: &mut Faults,
        index: u32,
    ) -> Result<(BTreeMap<u32, u64>, MigMode), ReadError> {
        let api = &*self.api;
        let mut processes = BTreeMap::new();
        let listed = faults.optional(
            "running_compute_processes",
            api.running_compute_processes(index),
        )?;
        for (pid, bytes) in listed.unwrap_or_default() {
            *processes.entry(pid).or_insert(0) += bytes.map_or(0, bytes_to_mib);
        }
        let pending = faults.optional(
            "are_pages_pending_retired",
            api.are_pages_pending_retired(index),
        )?;
        if pending == Some(true) {
            faults
                .reasons
                .push("pages pending retirement (reset the GPU to retire them)".into());
        }
        let retired = faults.optional("retired_pages", api.retired_page_count(index))?;
        if let Some(retired) = retired.filter(|r| *r >= self.max_retired_pages) {
            faults.reasons.push(format!(
                "{retired} retired pages (limit {})",
                self.max_retired_pages
            ));
        }
        let mig = match faults.optional("mig_mode", api.mig_mode(index))? {
            None => MigMode::NotSupported,
            Some(MIG_ENABLED) => MigMode::Enabled,
            Some(_) => MigMode::Disabled,
        };
        Ok((processes, mig))
    }
}

impl DeviceReader for NvmlReader {
    fn runtime(&self) -> &'static str {
        "nvml"
    }

    fn read(&self) -> Result<Vec<DeviceReading>, ReadError> {
        let count = self.device_count()?;
        (0..count).map(|index| self.read_device(index)).collect()
    }
}

/// The faults found on one device while reading it.
struct Faults {
    index: u32,
    reasons: Vec<String>,
}

impl Faults {
    /// A query the device cannot be reported without: any device fault is recorded.
    fn basic<T>(
        &mut self,
        query: &'static str,
        result: Result<T, NvmlError>,
    ) -> Result<Option<T>, ReadError> {
        match result {
            Ok(value) => Ok(Some(value)),
            Err(e) if is_systemic(&e) => Err(self.systemic(query, e)),
            Err(e) => {
                self.reasons.push(format!("{query}: {e}"));
                Ok(None)
            }
        }
    }

    /// A signal the device may lack: `NotSupported` is no answer, other device faults are recorded.
    fn optional<T>(
        &mut self,
        query: &'static str,
        result: Result<T, NvmlError>,
    ) -> Result<Option<T>, ReadError> {
        match result {
            Err(NvmlError::NotSupported) => Ok(None),
            other => self.basic(query, other),
        }
    }

    fn systemic(&self, query: &'static str, source: NvmlError) -> ReadError {
        ReadError::Nvml {
            index: Some(self.index),
            query,
            source,
        }
    }
}

/// Errors that say NVML or the agent's access is broken, not the device.
fn is_systemic(e: &NvmlError) -> bool {
    matches!(
        e,
        NvmlError::Uninitialized
            | NvmlError::DriverNotLoaded
            | NvmlError::LibRmVersionMismatch
            | NvmlError::LibraryNotFound
            | NvmlError::FunctionNotFound
            | NvmlError::FailedToLoadSymbol(_)
            | NvmlError::LibloadingError(_)
            | NvmlError::NoPermission
            | NvmlError::OperatingSystem
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const GIB: u64 = 1024 * 1024 * 1024;
    const MIB: u64 = 1024 * 1024;

    /// A GPU as the fake NVML answers for it.
    struct FakeGpu {
        uuid: Result<String, NvmlError>,
        name: Result<String, NvmlError>,
        memory: Result<MemoryBytes, NvmlError>,
        processes: Result<Vec<(u32, Option<u64>)>, NvmlError>,
        pending: Result<bool, NvmlError>,
        retired: Result<u64, NvmlError>,
        mig: Result<u32, NvmlError>,
    }

    fn clone_err(e: &NvmlError) -> NvmlError {
        match e {
            NvmlError::NotSupported => NvmlError::NotSupported,
            NvmlError::GpuLost => NvmlError::GpuLost,
            NvmlError::Unknown => NvmlError::Unknown,
            NvmlError::NoPermission => NvmlError::NoPermission,
            NvmlError::DriverNotLoaded => NvmlError::DriverNotLoaded,
            NvmlError::ResetRequired => NvmlError::ResetRequired,
            other => panic!("fake cannot clone {other:?}"),
        }
    }

    fn answer<T: Clone>(r: &Result<T, NvmlError>) -> Result<T, NvmlError> {
        match r {
            Ok(v) => Ok(v.clone()),
            Err(e) => Err(clone_err(e)),
        }
    }

    fn a100(i: u32) -> FakeGpu {
        FakeGpu {
            uuid: Ok(format!("GPU-a100-{i}")),
            name: Ok("NVIDIA A100-SXM4-80GB".into()),
            memory: Ok(MemoryBytes {
                total: 81920 * MIB,
                used: 12 * GIB + 5 * MIB + 123,
                free: 81920 * MIB - (12 * GIB + 5 * MIB + 123),
            }),
            processes: Ok(vec![(4242, Some(12 * GIB)), (4343, None)]),
            pending: Ok(false),
            retired: Err(NvmlError::NotSupported),
            mig: Ok(0),
        }
    }

    fn t4(i: u32) -> FakeGpu {
        FakeGpu {
            uuid: Ok(format!("GPU-t4-{i}")),
            name: Ok("Tesla T4".into()),
            memory: Ok(MemoryBytes {
                total: 15360 * MIB,
                used: 0,
                free: 15360 * MIB,
            }),
            processes: Ok(vec![]),
            pending: Err(NvmlError::NotSupported),
            retired: Err(NvmlError::NotSupported),
            mig: Err(NvmlError::NotSupported),
        }
    }

    struct FakeNvml {
        count: Result<u32, NvmlError>,
        gpus: HashMap<u32, FakeGpu>,
    }

    impl FakeNvml {
        fn new(gpus: Vec<FakeGpu>) -> Self {
            Self {
                count: Ok(gpus.len() as u32),
                gpus: gpus
                    .into_iter()
                    .enumerate()
                    .map(|(i, g)| (i as u32, g))
                    .collect(),
            }
        }
        fn gpu(&self, i: u32) -> &FakeGpu {
            &self.gpus[&i]
        }
    }

    impl NvmlApi for FakeNvml {
        fn device_count(&self) -> Result<u32, NvmlError> {
            answer(&self.count)
        }
        fn uuid(&self, i: u32) -> Result<String, NvmlError> {
            answer(&self.gpu(i).uuid)
        }
        fn name(&self, i: u32) -> Result<String, NvmlError> {
            answer(&self.gpu(i).name)
        }
        fn memory_info(&self, i: u32) -> Result<MemoryBytes, NvmlError> {
            answer(&self.gpu(i).memory)
        }
        fn running_compute_processes(&self, i: u32) -> Result<Vec<(u32, Option<u64>)>, NvmlError> {
            answer(&self.gpu(i).processes)
        }
        fn are_pages_pending_retired(&self, i: u32) -> Result<bool, NvmlError> {
            answer(&self.gpu(i).pending)
        }
        fn retired_page_count(&self, i: u32) -> Result<u64, NvmlError> {
            answer(&self.gpu(i).retired)
        }
        fn mig_mode(&self, i: u32) -> Result<u32, NvmlError> {
            answer(&self.gpu(i).mig)
        }
    }

    fn read(gpus: Vec<FakeGpu>) -> Result<Vec<DeviceReading>, ReadError> {
        NvmlReader::with_api(Box::new(FakeNvml::new(gpus))).read()
    }

    #[test]
    fn healthy_a100_reads_sizes_processes_and_mig() {
        let r = read(vec![a100(0)]).unwrap();
        assert_eq!(
            r,
            vec![DeviceReading {
                index: 0,
                uuid: "GPU-a100-0".into(),
                product: "NVIDIA A100-SXM4-80GB".into(),
                total_mib: 81920,
                used_mib: 12 * 1024 + 5,
                free_mib: 81920 - (12 * 1024 + 5) - 1,
                processes: BTreeMap::from([(4242, 12 * 1024), (4343, 0)]),
                health: Health::Healthy,
                mig: MigMode::Disabled,
            }]
        );
    }

    #[test]
    fn not_supported_health_signals_leave_a_t4_healthy() {
        let r = read(vec![t4(0), t4(1)]).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].index, 1);
        assert_eq!(r[1].uuid, "GPU-t4-1");
        assert_eq!(r[0].health, Health::Healthy);
        assert_eq!(r[0].mig, MigMode::NotSupported);
        assert_eq!(
            (r[0].total_mib, r[0].used_mib, r[0].free_mib),
            (15360, 0, 15360)
        );
    }

    #[test]
    fn mig_enabled_is_read() {
        let mut g = a100(0);
        g.mig = Ok(MIG_ENABLED);
        assert_eq!(read(vec![g]).unwrap()[0].mig, MigMode::Enabled);
    }

    #[test]
    fn pending_retirement_is_unhealthy() {
        let mut g = a100(0);
        g.pending = Ok(true);
        let r = read(vec![g]).unwrap();
        assert_eq!(
            r[0].health.reason(),
            Some("pages pending retirement (reset the GPU to retire them)")
        );
    }

    #[test]
    fn retired_pages_at_the_limit_are_unhealthy() {
        let mut below = t4(0);
        below.retired = Ok(59);
        let mut at = t4(1);
        at.retired = Ok(60);
        let r = read(vec![below, at]).unwrap();
        assert!(r[0].health.is_healthy());
        assert_eq!(r[1].health.reason(), Some("60 retired pages (limit 60)"));

        let mut few = t4(0);
        few.retired = Ok(3);
        let strict = NvmlReader::with_api(Box::new(FakeNvml::new(vec![few]))).max_retired_pages(3);
        assert_eq!(
            strict.read().unwrap()[0].health.reason(),
            Some("3 retired pages (limit 3)")
        );
    }

    #[test]
    fn failing_memory_info_makes_that_device_unhealthy_and_empty() {
        let mut lost = a100(1);
        lost.memory = Err(NvmlError::GpuLost);
        let r = read(vec![a100(0), lost, a100(2)]).unwrap();
        assert!(r[0].health.is_healthy() && r[2].health.is_healthy());
        assert_eq!(r[1].uuid, "GPU-a100-1");
        assert_eq!((r[1].total_mib, r[1].used_mib, r[1].free_mib), (0, 0, 0));
        assert_eq!(
            r[1].health.reason(),
            Some("memory_info: device fell off the bus or has otherwise become inacessible")
        );
    }

    #[test]
    fn not_supported_on_a_basic_query_is_a_fault() {
        let mut g = t4(0);
        g.memory = Err(NvmlError::NotSupported);
        let r = read(vec![g]).unwrap();
        assert_eq!(
            r[0].health.reason(),
            Some("memory_info: the requested operation is not available on the target device")
        );
    }

    #[test]
    fn every_fault_is_named_in_the_reason() {
        let mut g = a100(0);
        g.retired = Err(NvmlError::ResetRequired);
        g.pending = Ok(true);
        let r = read(vec![g]).unwrap();
        assert_eq!(
            r[0].health.reason(),
            Some(
                "pages pending retirement (reset the GPU to retire them); \
                 retired_pages: device requires a reset before it can be used again"
            )
        );
        assert_eq!(r[0].mig, MigMode::Disabled);
    }

    #[test]
    fn a_device_failing_basic_queries_is_asked_no_further() {
        let mut g = a100(0);
        g.uuid = Err(NvmlError::Unknown);
        g.name = Err(NvmlError::Unknown);
        g.pending = Ok(true);
        g.mig = Err(NvmlError::Unknown);
        let r = read(vec![g]).unwrap();
        assert_eq!(
            r[0].health.reason(),
            Some(
                "uuid: an internal driver error occurred; name: an internal driver error occurred"
            )
        );
        assert_eq!((r[0].uuid.as_str(), r[0].product.as_str()), ("", ""));
        assert_eq!(r[0].total_mib, 81920, "memory_info still answered");
        assert!(r[0].processes.is_empty());
        assert_eq!(r[0].mig, MigMode::Unknown);
    }

    #[test]
    fn faults_on_optional_queries_are_unhealthy() {
        let mut g = a100(0);
        g.processes = Err(NvmlError::GpuLost);
        let r = read(vec![g]).unwrap();
        assert_eq!(
            r[0].health.reason(),
            Some("running_compute_processes: device fell off the bus or has otherwise become inacessible")
        );
    }

    #[test]
    fn systemic_errors_fail_the_whole_read() {
        let mut g = a100(0);
        g.memory = Err(NvmlError::NoPermission);
        let e = read(vec![a100(1), g]).unwrap_err();
        assert!(matches!(
            e,
            ReadError::Nvml {
                index: Some(1),
                query: "memory_info",
                source: NvmlError::NoPermission
            }
        ));
        assert_eq!(
            e.to_string(),
            "NVML: device 1: memory_info: the current user does not have permission to perform this operation"
        );
    }

    #[test]
    fn failing_device_count_fails_the_read() {
        let mut nvml = FakeNvml::new(vec![]);
        nvml.count = Err(NvmlError::DriverNotLoaded);
        let e = NvmlReader::with_api(Box::new(nvml)).read().unwrap_err();
        assert_eq!(
            e.to_string(),
            "NVML: device_count: NVIDIA driver is not loaded"
        );
    }

    #[test]
    fn no_gpus_is_an_empty_reading() {
        assert_eq!(read(vec![]).unwrap(), vec![]);
    }

    #[test]
    fn real_nvml_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<RealNvml>();
        check::<NvmlReader>();
    }
}
