//! Per-node, per-device capacity, built from a node's facts in a fixed order of trust:
//! a fresh `vramfit.io/gpu-status` report, then GPU Feature Discovery labels, then Ascend labels,
//! then the configured default. Occupancy is applied on top by the [`Inventory`](super::Inventory).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use super::config::Config;
use super::facts::NodeFacts;
use super::host::Host;
use super::quantity::{parse_count, parse_mib, parse_millis};

/// Annotation holding the node agent's live device report (JSON, [`GpuStatus`]).
pub const ANNOTATION_GPU_STATUS: &str = "vramfit.io/gpu-status";
/// Node label that makes a node's devices shareable by VRAM (value `vram`).
pub const LABEL_SHARING: &str = "vramfit.io/sharing";
/// Zone label, and its deprecated fallback.
pub const LABEL_ZONE: &str = "topology.kubernetes.io/zone";
/// Deprecated zone label, read when [`LABEL_ZONE`] is absent.
pub const LABEL_ZONE_LEGACY: &str = "failure-domain.beta.kubernetes.io/zone";
/// GPU Feature Discovery labels.
pub const LABEL_GFD_PRODUCT: &str = "nvidia.com/gpu.product";
/// GFD label: VRAM per device in MiB.
pub const LABEL_GFD_MEMORY: &str = "nvidia.com/gpu.memory";
/// GFD label: devices on the node.
pub const LABEL_GFD_COUNT: &str = "nvidia.com/gpu.count";
/// Ascend labels.
pub const LABEL_NPU_CHIP: &str = "node.kubernetes.io/npu.chip.name";
/// Ascend server type label (`Ascend910B-24…`); names the chip only where unambiguous.
pub const LABEL_ASCEND_SERVERTYPE: &str = "servertype";
/// Ascend accelerator label (`huawei-Ascend310P`).
pub const LABEL_ASCEND_ACCELERATOR: &str = "accelerator";

/// Most accelerator devices one node may have. Real nodes have at most 16; a larger count
/// (from allocatable, the GFD count label or a report) is a mislabelled or hostile object, and
/// the node is treated as invalid instead of allocating one entry per claimed device.
pub const MAX_DEVICES_PER_NODE: u64 = 64;

/// Largest VRAM one device may report (16 TiB, in MiB). Larger values in a label or a report are
/// ignored as unreadable, so arithmetic on device sizes never overflows.
pub const MAX_DEVICE_VRAM_MIB: u64 = 16 * 1024 * 1024;

/// Longest label value Kubernetes allows; a longer zone label is ignored.
pub const MAX_LABEL_VALUE_LEN: usize = 63;

/// The NVIDIA device-plugin resource.
pub const RESOURCE_NVIDIA_GPU: &str = "nvidia.com/gpu";

/// Every whole-device accelerator resource the core understands, in the order a node is read.
pub const DEVICE_RESOURCES: &[&str] = &[
    RESOURCE_NVIDIA_GPU,
    "huawei.com/Ascend910",
    "huawei.com/Ascend910A",
    "huawei.com/Ascend910B",
    "huawei.com/Ascend910B1",
    "huawei.com/Ascend910B2",
    "huawei.com/Ascend910B3",
    "huawei.com/Ascend910B4",
    "huawei.com/Ascend910B4-1",
    "huawei.com/Ascend910C",
    "huawei.com/Ascend310",
    "huawei.com/Ascend310P",
];

/// Whether `name` is a whole-device accelerator resource.
pub fn is_device_resource(name: &str) -> bool {
    device_resource(name).is_some()
}

/// The static name of a whole-device accelerator resource (cheap to copy and compare).
pub fn device_resource(name: &str) -> Option<&'static str> {
    DEVICE_RESOURCES.iter().copied().find(|r| *r == name)
}

/// The live device report the node agent writes into [`ANNOTATION_GPU_STATUS`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GpuStatus {
    /// Schema version; this is version 1.
    pub version: u32,
    /// When the agent read the devices (RFC 3339, UTC).
    pub observed_at: String,
    /// One entry per device.
    pub devices: Vec<DeviceStatus>,
}

/// One device in a [`GpuStatus`] report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceStatus {
    /// Index as the device plugin numbers it (NVML index, NPU id).
    pub index: u32,
    /// Device UUID (`GPU-…`); empty where the runtime gives none.
    pub uuid: String,
    /// Product name, GFD-style (`NVIDIA-A100-SXM4-80GB`, `Ascend910B3`).
    pub product: String,
    /// Device memory in MiB (`totalMiB`).
    #[serde(rename = "totalMiB")]
    pub total_mib: u64,
    /// Memory in use as the driver measures it, by anything.
    #[serde(rename = "usedMiB")]
    pub used_mib: u64,
    /// Whether the device should take work.
    pub healthy: bool,
}

/// Device vendor, which decides how product names are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Vendor {
    /// NVIDIA GPUs.
    Nvidia,
    /// Huawei Ascend NPUs.
    Ascend,
}

/// Where a node's device sizes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CapacitySource {
    /// The agent's [`ANNOTATION_GPU_STATUS`] report.
    Report,
    /// GPU Feature Discovery labels.
    GfdLabels,
    /// Ascend resource names and labels, with the configured HBM sizes.
    AscendLabels,
    /// The config's `defaultDeviceVramMib`.
    ConfigDefault,
    /// No source; the node has no accelerators or their VRAM is unknown.
    Unknown,
}

/// A device's names: read for allow-lists, metrics and reports, never per device in a filter's
/// hot loop, so they sit behind one pointer (shared by a node's devices of one product when no
/// UUID tells them apart).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceNames {
    /// Device UUID, when known.
    pub uuid: Option<Box<str>>,
    /// Product name, GFD-style (`NVIDIA-A100-SXM4-80GB`, `Ascend910B3`).
    pub product: Arc<str>,
    /// Short model name used for allow-lists and metrics (`A100`, `T4`, `910B3`).
    pub class: Arc<str>,
}

/// One accelerator device with its capacity and current occupancy: the numbers a filter reads
/// for every device (48 bytes, so a node's eight devices span six cache lines), its names
/// behind one pointer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Device {
    /// Device memory in MiB.
    pub total_mib: u64,
    /// Measured use (from a fresh report), by anything on the device.
    pub measured_used_mib: u64,
    /// VRAM reserved by placed pods (ledger).
    pub reserved_mib: u64,
    /// UUID, product and class.
    #[serde(flatten)]
    pub names: Arc<DeviceNames>,
    /// Index as the device plugin numbers it.
    pub index: u32,
    /// Pods holding the whole device (normally 0 or 1).
    pub exclusive_holders: u32,
    /// Pods sharing the device by VRAM.
    pub sharers: u32,
    /// Whether the device should take work.
    pub healthy: bool,
}

impl Device {
    /// The product name, GFD-style (`NVIDIA-A100-SXM4-80GB`, `Ascend910B3`).
    pub fn product(&self) -> &Arc<str> {
        &self.names.product
    }

    /// The short model name (`A100`, `T4`, `910B3`).
    pub fn class(&self) -> &Arc<str> {
        &self.names.class
    }

    /// The device's UUID, when a report gave one.
    pub fn uuid(&self) -> Option<&str> {
        self.names.uuid.as_deref()
    }

    /// VRAM counted as used: the larger of what was measured and what is reserved.
    pub fn used_mib(&self) -> u64 {
        self.measured_used_mib.max(self.reserved_mib)
    }

    /// VRAM usable by pods when `headroom_percent` must stay free.
    pub fn usable_mib(&self, headroom_percent: u8) -> u64 {
        let kept = u128::from(100 - headroom_percent.min(100));
        (u128::from(self.total_mib) * kept / 100) as u64
    }

    /// VRAM still available to a new pod under `headroom_percent`.
    pub fn free_mib(&self, headroom_percent: u8) -> u64 {
        self.usable_mib(headroom_percent)
            .saturating_sub(self.used_mib())
    }

    /// Whether any pod holds or shares the device.
    pub fn is_busy(&self) -> bool {
        self.exclusive_holders > 0 || self.sharers > 0 || self.reserved_mib > 0
    }
}

/// A node's devices.
pub type Devices = SmallVec<[Device; 8]>;

/// What is wrong with a node's data, when something is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum NodeProblem {
    /// Accelerators are allocatable but no source tells their VRAM.
    VramUnknown,
    /// The node claims more devices than [`MAX_DEVICES_PER_NODE`]; `source` names where.
    TooManyDevices {
        /// Devices claimed.
        count: u64,
        /// Where the count came from (`allocatable nvidia.com/gpu`, `label nvidia.com/gpu.count`).
        source: String,
    },
}

/// A node as the core sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeInfo {
    /// Node name.
    pub name: String,
    /// The zone; the inventory shares one allocation per zone name among its nodes, so
    /// scoring can tell zones apart by pointer.
    pub zone: Option<Arc<str>>,
    /// The whole-device resource of this node's accelerators, if any.
    pub resource: Option<&'static str>,
    /// The accelerators' vendor, if any.
    pub vendor: Option<Vendor>,
    /// Devices the device plugin advertises as allocatable.
    pub allocatable_devices: u32,
    /// Devices, inline for up to 8 so a node's data sits together in memory.
    pub devices: Devices,
    /// Devices may host several pods by VRAM.
    pub sharing: bool,
    /// Where the device sizes came from.
    pub source: CapacitySource,
    /// What is wrong with the node's data, if anything.
    pub problem: Option<NodeProblem>,
    /// Things worth a log line (an unparsable or stale report), never fatal.
    pub notes: Vec<String>,
    /// Allocatable cpu and memory (`status.allocatable`), when the node gives both: with the
    /// requests of the pods bound there, the free host resources the `frag` and `hostBalance`
    /// terms read ([`super::host`]).
    pub host: Option<Host>,
}

impl NodeInfo {
    /// The node's zone as an owned name (for placements and reports).
    pub fn zone_name(&self) -> Option<String> {
        self.zone.as_deref().map(String::from)
    }

    /// Devices held by whole-device pods.
    pub fn held_devices(&self) -> u32 {
        self.devices.iter().map(|d| d.exclusive_holders).sum()
    }

    /// The largest device's total VRAM.
    pub fn largest_device_mib(&self) -> u64 {
        self.devices.iter().map(|d| d.total_mib).max().unwrap_or(0)
    }
}

/// Reads a node's capacity from its facts. Never fails: problems are recorded on the node.
pub fn build_node(facts: &NodeFacts, config: &Config, now: SystemTime) -> NodeInfo {
    let zone = facts
        .labels
        .get(LABEL_ZONE)
        .or_else(|| facts.labels.get(LABEL_ZONE_LEGACY))
        .filter(|z| z.len() <= MAX_LABEL_VALUE_LEN)
        .map(|z| Arc::from(z.as_str()));
    let sharing = config.sharing_all_nodes
        || facts.labels.get(LABEL_SHARING).map(String::as_str) == Some("vram");
    let mut node = NodeInfo {
        name: facts.name.clone(),
        zone,
        resource: None,
        vendor: None,
        allocatable_devices: 0,
        devices: Devices::new(),
        sharing,
        source: CapacitySource::Unknown,
        problem: None,
        notes: Vec::new(),
        host: None,
    };
    node.host = host_allocatable(facts, &mut node.notes);
    let Some((resource, count)) = accelerator_allocatable(facts, &mut node.notes) else {
        return node;
    };
    let vendor = if resource == RESOURCE_NVIDIA_GPU {
        Vendor::Nvidia
    } else {
        Vendor::Ascend
    };
    node.resource = Some(resource);
    node.vendor = Some(vendor);
    if count > MAX_DEVICES_PER_NODE {
        node.problem = Some(NodeProblem::TooManyDevices {
            count,
            source: format!("allocatable {resource}"),
        });
        return node;
    }
    let count = count as u32;
    node.allocatable_devices = count;

    if let Some(devices) = devices_from_report(facts, config, now, vendor, &mut node.notes) {
        node.devices = devices;
        node.source = CapacitySource::Report;
        return node;
    }
    let labelled = match vendor {
        Vendor::Nvidia => match devices_from_gfd(facts, count, &mut node.notes) {
            Err(problem) => {
                node.problem = Some(problem);
                return node;
            }
            Ok(devices) => devices,
        },
        Vendor::Ascend => devices_from_ascend(facts, resource, count, config),
    };
    if let Some(devices) = labelled {
        node.devices = devices;
        node.source = match vendor {
            Vendor::Nvidia => CapacitySource::GfdLabels,
            Vendor::Ascend => CapacitySource::AscendLabels,
        };
        return node;
    }
    match config.default_device_vram_mib {
        Some(mib) => {
            node.devices = (0..count)
                .map(|i| mk_device(i, None, &Names::new("unknown", vendor), mib, 0, true))
                .collect();
            node.source = CapacitySource::ConfigDefault;
        }
        None => node.problem = Some(NodeProblem::VramUnknown),
    }
    node
}

/// Allocatable cpu (millicores) and memory (MiB); `None` unless both are given and valid.
fn host_allocatable(facts: &NodeFacts, notes: &mut Vec<String>) -> Option<Host> {
    let cpu = facts.allocatable.get("cpu")?;
    let memory = facts.allocatable.get("memory")?;
    match (parse_millis(cpu), parse_mib(memory)) {
        (Ok(cpu_milli), Ok(memory_mib)) => Some(Host {
            cpu_milli,
            memory_mib,
        }),
        (cpu_read, memory_read) => {
            for (key, value, error) in [
                ("cpu", cpu, cpu_read.err()),
                ("memory", memory, memory_read.err()),
            ] {
                if let Some(e) = error {
                    notes.push(format!("allocatable {key}={:?} ignored: {e}", clip(value)));
                }
            }
            None
        }
    }
}

fn accelerator_allocatable(
    facts: &NodeFacts,
    notes: &mut Vec<String>,
) -> Option<(&'static str, u64)> {
    for resource in DEVICE_RESOURCES {
        let Some(value) = facts.allocatable.get(*resource) else {
            continue;
        };
        match parse_count(value) {
            Ok(0) => continue,
            Ok(n) => return Some((resource, n)),
            Err(e) => notes.push(format!(
                "allocatable {resource}={:?} ignored: {e}",
                clip(value)
            )),
        }
    }
    None
}

fn devices_from_report(
    facts: &NodeFacts,
    config: &Config,
    now: SystemTime,
    vendor: Vendor,
    notes: &mut Vec<String>,
) -> Option<Devices> {
    let raw = facts.annotations.get(ANNOTATION_GPU_STATUS)?;
    let report: GpuStatus = match serde_json::from_str(raw) {
        Ok(r) => r,
        Err(e) => {
            notes.push(format!("{ANNOTATION_GPU_STATUS} ignored: {e}"));
            return None;
        }
    };
    let observed = match humantime::parse_rfc3339_weak(&report.observed_at) {
        Ok(t) => t,
        Err(e) => {
            notes.push(format!("{ANNOTATION_GPU_STATUS} ignored: observedAt: {e}"));
            return None;
        }
    };
    if report.version != 1 {
        notes.push(format!(
            "{ANNOTATION_GPU_STATUS} ignored: unknown schema version {}",
            report.version
        ));
        return None;
    }
    let ttl = Duration::from_secs(config.report_ttl_seconds);
    if observed.duration_since(now).is_ok_and(|ahead| ahead > ttl) {
        notes.push(format!(
            "{ANNOTATION_GPU_STATUS} ignored: observedAt is in the future (clock skew?)"
        ));
        return None;
    }
    let age = now.duration_since(observed).unwrap_or(Duration::ZERO);
    if age > ttl {
        notes.push(format!(
            "{ANNOTATION_GPU_STATUS} ignored: stale ({}s old, ttl {}s)",
            age.as_secs(),
            config.report_ttl_seconds
        ));
        return None;
    }
    if report.devices.is_empty() {
        notes.push(format!("{ANNOTATION_GPU_STATUS} ignored: no devices"));
        return None;
    }
    if let Some(d) = report
        .devices
        .iter()
        .find(|d| d.total_mib > MAX_DEVICE_VRAM_MIB)
    {
        notes.push(format!(
            "{ANNOTATION_GPU_STATUS} ignored: device {} reports {} MiB, more than {MAX_DEVICE_VRAM_MIB}",
            d.index, d.total_mib
        ));
        return None;
    }
    if report.devices.len() as u64 > MAX_DEVICES_PER_NODE {
        notes.push(format!(
            "{ANNOTATION_GPU_STATUS} ignored: {} devices, more than {MAX_DEVICES_PER_NODE}",
            report.devices.len()
        ));
        return None;
    }
    let mut names: Option<(&str, Names)> = None;
    let mut devices: Devices = report
        .devices
        .iter()
        .map(|d| {
            // Devices of one node mostly share a product: build its names once.
            let shared = match &names {
                Some((product, shared)) if *product == d.product => shared.clone(),
                _ => {
                    let fresh = Names::new(&d.product, vendor);
                    names = Some((&d.product, fresh.clone()));
                    fresh
                }
            };
            mk_device(
                d.index,
                Some(d.uuid.clone()).filter(|u| !u.is_empty() && u.len() <= 128),
                &shared,
                d.total_mib,
                d.used_mib.min(d.total_mib),
                d.healthy,
            )
        })
        .collect();
    devices.sort_by_key(|d| d.index);
    devices.dedup_by_key(|d| d.index);
    Some(devices)
}

/// Devices from GFD labels: `Ok(None)` when the labels are absent or unreadable, `Err` when
/// the count label claims more than [`MAX_DEVICES_PER_NODE`].
fn devices_from_gfd(
    facts: &NodeFacts,
    allocatable: u32,
    notes: &mut Vec<String>,
) -> Result<Option<Devices>, NodeProblem> {
    let (Some(product), Some(memory)) = (
        facts.labels.get(LABEL_GFD_PRODUCT),
        facts.labels.get(LABEL_GFD_MEMORY),
    ) else {
        return Ok(None);
    };
    let Some(total_mib) = memory
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|mib| *mib <= MAX_DEVICE_VRAM_MIB)
    else {
        notes.push(format!(
            "{LABEL_GFD_MEMORY}={:?} ignored: not a MiB integer up to {MAX_DEVICE_VRAM_MIB}",
            clip(memory)
        ));
        return Ok(None);
    };
    let count = facts
        .labels
        .get(LABEL_GFD_COUNT)
        .and_then(|c| c.trim().parse::<u64>().ok())
        .filter(|c| *c > 0)
        .unwrap_or(u64::from(allocatable));
    if count > MAX_DEVICES_PER_NODE {
        return Err(NodeProblem::TooManyDevices {
            count,
            source: format!("label {LABEL_GFD_COUNT}"),
        });
    }
    let names = Names::new(product, Vendor::Nvidia);
    Ok(Some(
        (0..count as u32)
            .map(|i| mk_device(i, None, &names, total_mib, 0, true))
            .collect(),
    ))
}

fn devices_from_ascend(
    facts: &NodeFacts,
    resource: &str,
    count: u32,
    config: &Config,
) -> Option<Devices> {
    let chip = ascend_chip(facts, resource)?;
    let hbm = config.ascend_hbm(&chip)?;
    let names = Names::new(&format!("Ascend{chip}"), Vendor::Ascend);
    Some(
        (0..count)
            .map(|i| mk_device(i, None, &names, hbm, 0, true))
            .collect(),
    )
}

/// The Ascend chip name (`910B3`, `310P`, …) from a per-chip resource name or the node's labels.
/// `servertype` alone names a chip only where the AI-core count is unambiguous.
fn ascend_chip(facts: &NodeFacts, resource: &str) -> Option<String> {
    let from_resource = resource.strip_prefix("huawei.com/Ascend").unwrap_or("");
    if !matches!(from_resource, "" | "910" | "910B") {
        return Some(normalize_ascend_chip(from_resource));
    }
    if let Some(chip) = facts.labels.get(LABEL_NPU_CHIP) {
        return Some(normalize_ascend_chip(chip));
    }
    if let Some(server) = facts.labels.get(LABEL_ASCEND_SERVERTYPE) {
        // `Ascend910B-24` has 24 AI cores: only the 910B2. `-20` could be 910B3 or 910B4 (32 vs 64 GB).
        if server.starts_with("Ascend910B-24") {
            return Some("910B2".into());
        }
        if server.starts_with("Ascend310P") {
            return Some("310P".into());
        }
    }
    match facts
        .labels
        .get(LABEL_ASCEND_ACCELERATOR)
        .map(String::as_str)
    {
        Some("huawei-Ascend310P") => Some("310P".into()),
        _ => None,
    }
}

/// Normalises an Ascend chip name: `Ascend910b3`, `ascend-910B3` and `910B3` all give `910B3`.
pub fn normalize_ascend_chip(raw: &str) -> String {
    let upper = raw.trim().to_ascii_uppercase();
    let bare = upper
        .trim_start_matches("ASCEND")
        .trim_start_matches(['-', '_', ' ']);
    // 310P3 and friends share the 310P table entry.
    if bare.starts_with("310P") {
        return "310P".into();
    }
    bare.to_string()
}

/// Longest product name kept; longer labels or reports are cut (real names are under 64).
pub const MAX_PRODUCT_NAME_LEN: usize = 128;

/// Sanitises a product name the way GFD does (spaces to `-`, odd characters dropped), cut to
/// [`MAX_PRODUCT_NAME_LEN`] characters.
pub fn sanitize_product(raw: &str) -> String {
    let kept: String = raw
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ' '))
        .take(MAX_PRODUCT_NAME_LEN * 2)
        .collect();
    let mut name = kept.split_whitespace().collect::<Vec<_>>().join("-");
    // Only ASCII is kept, so any byte index is a character boundary.
    name.truncate(MAX_PRODUCT_NAME_LEN);
    name
}

/// A label, annotation or pod value quoted in a note or an error, cut to a readable length.
pub(crate) fn clip(value: &str) -> String {
    const KEEP: usize = 80;
    if value.len() <= KEEP {
        return value.to_string();
    }
    let mut end = KEEP;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &value[..end])
}

/// The short class of a product: `NVIDIA-A100-SXM4-80GB` → `A100`, `Tesla-T4` → `T4`,
/// `Ascend910B3` → `910B3`.
pub fn product_class(product: &str, vendor: Vendor) -> String {
    match vendor {
        Vendor::Ascend => normalize_ascend_chip(product),
        Vendor::Nvidia => {
            let tokens: Vec<&str> = product
                .split('-')
                .filter(|t| {
                    !t.is_empty()
                        && !["NVIDIA", "TESLA", "GEFORCE", "QUADRO"]
                            .contains(&t.to_ascii_uppercase().as_str())
                })
                .collect();
            match tokens.as_slice() {
                [] => product.to_string(),
                [first, second, ..] if first.eq_ignore_ascii_case("RTX") => {
                    format!("{first}-{second}")
                }
                [first, ..] => first.to_string(),
            }
        }
    }
}

/// A device's names, built once per product and shared by the node's devices.
#[derive(Clone)]
struct Names {
    product: Arc<str>,
    class: Arc<str>,
    /// The names of this product's devices without a UUID, shared.
    shared: Arc<DeviceNames>,
}

impl Names {
    fn new(product: &str, vendor: Vendor) -> Self {
        let product: Arc<str> = sanitize_product(product).into();
        let class: Arc<str> = product_class(&product, vendor).into();
        Names {
            shared: Arc::new(DeviceNames {
                uuid: None,
                product: product.clone(),
                class: class.clone(),
            }),
            product,
            class,
        }
    }
}

fn mk_device(
    index: u32,
    uuid: Option<String>,
    names: &Names,
    total_mib: u64,
    measured_used_mib: u64,
    healthy: bool,
) -> Device {
    let names = match uuid {
        None => names.shared.clone(),
        Some(uuid) => Arc::new(DeviceNames {
            uuid: Some(uuid.into()),
            product: names.product.clone(),
            class: names.class.clone(),
        }),
    };
    Device {
        // Labels and reports are checked against this; a configured size is clamped here.
        total_mib: total_mib.min(MAX_DEVICE_VRAM_MIB),
        measured_used_mib,
        reserved_mib: 0,
        names,
        index,
        exclusive_holders: 0,
        sharers: 0,
        healthy,
    }
}

/// Whether an allow-list (`vramfit.io/products`, a catalog entry's `products`) admits `device`:
/// an empty list admits every device, otherwise one entry must name it ([`product_matches`]).
pub fn products_allow(products: &[String], device: &Device, vendor: Vendor) -> bool {
    products.is_empty() || products.iter().any(|p| product_matches(p, device, vendor))
}

/// Whether an allow-list entry (`A100`, `Tesla-T4`, `A100-80GB`, `910B3`, `nvidia`) names a device.
///
/// An entry matches the exact product, the class, the vendor, or a subsequence of the product's
/// `-`-separated tokens (so `A100-80GB` matches `NVIDIA-A100-SXM4-80GB`, and `A10` does not
/// match `A100`). Ascend entries also match chips they prefix (`910B` matches `910B3`).
/// Comparisons ignore ASCII case and allocate nothing: a filter calls this per device and entry.
pub fn product_matches(entry: &str, device: &Device, vendor: Vendor) -> bool {
    let entry = entry.trim();
    if entry.is_empty() {
        return false;
    }
    let product: &str = device.product();
    let class: &str = device.class();
    let vendor_name = match vendor {
        Vendor::Nvidia => "NVIDIA",
        Vendor::Ascend => "ASCEND",
    };
    if entry.eq_ignore_ascii_case(product)
        || entry.eq_ignore_ascii_case(class)
        || entry.eq_ignore_ascii_case(vendor_name)
    {
        return true;
    }
    if vendor == Vendor::Ascend {
        // A family (`910B`, `310P`) names all its chips; shorter prefixes name nothing.
        let chip = bare_ascend_chip(entry);
        if chip.len() >= 4
            && class.len() >= chip.len()
            && class.as_bytes()[..chip.len()].eq_ignore_ascii_case(chip.as_bytes())
        {
            return true;
        }
    }
    let mut product_tokens = product.split('-');
    entry
        .split('-')
        .all(|wanted| product_tokens.any(|have| have.eq_ignore_ascii_case(wanted)))
}

/// `Ascend910B`, `ascend-910B`, `910B` → `910B` (case kept), without allocating.
fn bare_ascend_chip(entry: &str) -> &str {
    let bytes = entry.as_bytes();
    let rest = if bytes.len() >= 6 && bytes[..6].eq_ignore_ascii_case(b"ASCEND") {
        &entry[6..]
    } else {
        entry
    };
    let bare = rest.trim_start_matches(['-', '_', ' ']);
    // 310P3 and friends share the 310P entry, as in [`normalize_ascend_chip`].
    if bare.len() >= 4 && bare.as_bytes()[..4].eq_ignore_ascii_case(b"310P") {
        return &bare[..4];
    }
    bare
}

#[cfg(test)]
mod tests {
    /// The per-device numbers a filter reads stay within 48 bytes (names behind one pointer).
    #[test]
    fn a_device_is_48_bytes() {
        assert_eq!(std::mem::size_of::<super::Device>(), 48);
    }
}
