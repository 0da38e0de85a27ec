//! Round trip: what the agent reads → the `vramfit.io/gpu-status` annotation → what the core sees.

use std::collections::BTreeMap;
use std::io;
use std::time::{Duration, SystemTime};

use nvml_wrapper::error::NvmlError;
use vramfit::agent::nvml::MemoryBytes;
use vramfit::agent::{
    annotation_value, gpu_status, CommandOutput, CommandRunner, DeviceReader, DeviceReading,
    NpuSmiReader, NvmlApi, NvmlReader,
};
use vramfit::core::node::{CapacitySource, Vendor, ANNOTATION_GPU_STATUS};
use vramfit::core::{build_node, Config, NodeFacts};

const MIB: u64 = 1024 * 1024;

/// Four A100s: one with pages pending retirement, one whose memory query fails.
struct FourA100;

impl NvmlApi for FourA100 {
    fn device_count(&self) -> Result<u32, NvmlError> {
        Ok(4)
    }
    fn uuid(&self, i: u32) -> Result<String, NvmlError> {
        Ok(format!("GPU-5c6f0b1e-27d4-4b8e-9a2f-00000000000{i}"))
    }
    fn name(&self, _: u32) -> Result<String, NvmlError> {
        Ok("NVIDIA A100-SXM4-80GB".into())
    }
    fn memory_info(&self, i: u32) -> Result<MemoryBytes, NvmlError> {
        let total = 81920 * MIB;
        let used = [0, 40_000, 75_000, 0][i as usize] * MIB + 4096;
        match i {
            3 => Err(NvmlError::GpuLost),
            _ => Ok(MemoryBytes {
                total,
                used,
                free: total - used,
            }),
        }
    }
    fn running_compute_processes(&self, i: u32) -> Result<Vec<(u32, Option<u64>)>, NvmlError> {
        Ok(if i == 1 {
            vec![(1234, Some(39_000 * MIB))]
        } else {
            vec![]
        })
    }
    fn are_pages_pending_retired(&self, i: u32) -> Result<bool, NvmlError> {
        Ok(i == 2)
    }
    fn retired_page_count(&self, _: u32) -> Result<u64, NvmlError> {
        Err(NvmlError::NotSupported)
    }
    fn mig_mode(&self, _: u32) -> Result<u32, NvmlError> {
        Ok(0)
    }
}

struct Prints(&'static str);

impl CommandRunner for Prints {
    fn run(&self, _: &str, _: &[&str]) -> io::Result<CommandOutput> {
        Ok(CommandOutput {
            success: true,
            status: "exit status: 0".into(),
            stdout: self.0.into(),
            stderr: String::new(),
        })
    }
}

/// What a device is, as the agent read it or as the core saw it.
type Seen = (u32, Option<String>, String, u64, u64, bool);

/// Reads with `reader`, writes the annotation, builds the node the core would, and checks the
/// core saw exactly the readings.
fn round_trip(reader: &dyn DeviceReader, resource: &str, class: &str, vendor: Vendor) {
    let readings: Vec<DeviceReading> = reader.read().unwrap();
    let now = SystemTime::now();
    let status = gpu_status(&readings, now - Duration::from_secs(5));
    let facts = NodeFacts {
        name: "node-a".into(),
        annotations: BTreeMap::from([(
            ANNOTATION_GPU_STATUS.to_string(),
            annotation_value(&status).unwrap(),
        )]),
        allocatable: BTreeMap::from([(resource.to_string(), readings.len().to_string())]),
        ..NodeFacts::default()
    };
    let node = build_node(&facts, &Config::default(), now);

    assert_eq!(
        node.source,
        CapacitySource::Report,
        "notes: {:?}",
        node.notes
    );
    assert!(node.notes.is_empty(), "{:?}", node.notes);
    assert_eq!(node.vendor, Some(vendor));
    let read: Vec<Seen> = readings
        .iter()
        .map(|r| {
            (
                r.index,
                Some(r.uuid.clone()).filter(|u| !u.is_empty()),
                vramfit::core::node::sanitize_product(&r.product),
                r.total_mib,
                r.used_mib,
                r.health.is_healthy(),
            )
        })
        .collect();
    let seen: Vec<Seen> = node
        .devices
        .iter()
        .map(|d| {
            (
                d.index,
                d.uuid().map(str::to_string),
                d.product().to_string(),
                d.total_mib,
                d.measured_used_mib,
                d.healthy,
            )
        })
        .collect();
    assert_eq!(seen, read);
    assert!(node.devices.iter().all(|d| &**d.class() == class));
}

#[test]
fn nvml_readings_reach_the_core_unchanged() {
    let reader = NvmlReader::with_api(Box::new(FourA100));
    let readings = reader.read().unwrap();
    // The fake's sizes, rounded down to MiB; the lost GPU is reported empty and unhealthy.
    let summary: Vec<(u64, u64, bool)> = readings
        .iter()
        .map(|r| (r.total_mib, r.used_mib, r.health.is_healthy()))
        .collect();
    assert_eq!(
        summary,
        [
            (81920, 0, true),
            (81920, 40_000, true),
            (81920, 75_000, false),
            (0, 0, false)
        ]
    );
    round_trip(&reader, "nvidia.com/gpu", "A100", Vendor::Nvidia);
}

#[test]
fn npu_smi_910b3_readings_reach_the_core_unchanged() {
    let reader = NpuSmiReader::new(Box::new(Prints(include_str!(
        "fixtures/npu-smi/910b3-atlas-800i-a2.txt"
    ))));
    assert_eq!(reader.read().unwrap().len(), 8);
    round_trip(&reader, "huawei.com/Ascend910", "910B3", Vendor::Ascend);
}

#[test]
fn npu_smi_310p_readings_reach_the_core_unchanged() {
    for fixture in [
        include_str!("fixtures/npu-smi/310p3-atlas-300i-pro.txt"),
        include_str!("fixtures/npu-smi/310p3-atlas-300i-duo.txt"),
    ] {
        let reader = NpuSmiReader::new(Box::new(Prints(fixture)));
        round_trip(&reader, "huawei.com/Ascend310P", "310P", Vendor::Ascend);
    }
}
