//! A pod's demand: how many devices of which resource, how much VRAM on each, which products,
//! how much headroom, and which model it serves (for spreading).

use serde::Serialize;

use super::catalog::Catalog;
use super::config::{Config, MAX_HEADROOM_PERCENT};
use super::facts::{ContainerResources, PodFacts};
use super::host::Host;
use super::node::{clip, device_resource};
use super::quantity::{parse_count, parse_mib, parse_millis};

/// Annotation: VRAM per device, a Kubernetes quantity.
pub const ANNOTATION_VRAM: &str = "vramfit.io/vram";
/// Extended resource form of the VRAM request (bytes, per device), for `managedResources`.
pub const RESOURCE_VRAM: &str = "vramfit.io/vram";
/// The sharing resource `vramfit device-plugin` advertises on `vramfit.io/sharing: vram` nodes:
/// one unit is 1 GiB of one device's VRAM. A sharing pod requests it (limits) to be handed its
/// assigned device by the node; it also declares the pod's VRAM per device when nothing else does.
pub const RESOURCE_VRAM_GIB: &str = "vramfit.io/vram-gib";
/// Annotation: allowed products or classes, comma separated.
pub const ANNOTATION_PRODUCTS: &str = "vramfit.io/products";
/// Annotation: percent of the device kept free after placement.
pub const ANNOTATION_HEADROOM: &str = "vramfit.io/headroom";
/// Label naming the model a pod serves (catalog key and spreading identity).
pub const LABEL_MODEL: &str = "vramfit.io/model";
/// Fallback model identity.
pub const LABEL_APP_NAME: &str = "app.kubernetes.io/name";
/// HAMi vocabulary: VRAM per device in MiB (resource).
pub const RESOURCE_HAMI_GPUMEM: &str = "nvidia.com/gpumem";
/// gpushare vocabulary: VRAM in GiB (resource).
pub const RESOURCE_ALIYUN_GPUMEM: &str = "aliyun.com/gpu-mem";

/// Largest VRAM per device a pod may declare (1 TiB); more is a typo, not a model.
pub const MAX_VRAM_MIB: u64 = 1024 * 1024;
/// Most devices one pod may ask for.
pub const MAX_DEVICES: u32 = 64;
/// Most entries a `vramfit.io/products` allow-list may have (after removing duplicates).
pub const MAX_PRODUCTS: usize = 32;
/// Longest entry of a products allow-list, in bytes.
pub const MAX_PRODUCT_LEN: usize = 128;

/// Where a pod's VRAM need came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum VramSource {
    /// The [`ANNOTATION_VRAM`] annotation.
    Annotation,
    /// The [`RESOURCE_VRAM`] extended resource (bytes).
    Resource,
    /// The catalog entry for the pod's [`LABEL_MODEL`] label.
    Catalog,
    /// HAMi's [`RESOURCE_HAMI_GPUMEM`] resource (MiB).
    HamiGpumem,
    /// gpushare's [`RESOURCE_ALIYUN_GPUMEM`] resource (GiB).
    AliyunGpuMem,
    /// The sharing resource [`RESOURCE_VRAM_GIB`] (GiB).
    VramGib,
    /// No declaration: the pod still gets a device and prefers the smallest.
    Undeclared,
}

/// What a pod asks of a node's accelerators.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PodDemand {
    /// `namespace/name`.
    pub key: String,
    /// Ledger identity (UID, else `namespace/name`).
    pub id: String,
    /// Whole-device resource requested (`nvidia.com/gpu`), if any.
    pub resource: Option<&'static str>,
    /// Whole devices requested; 0 for a sharing pod or a pod without accelerators.
    pub devices: u32,
    /// VRAM per device in MiB (0 when undeclared).
    pub vram_mib: u64,
    /// Where `vram_mib` came from.
    pub vram_source: VramSource,
    /// Allowed products or classes; empty allows all.
    pub products: Vec<String>,
    /// Percent of each device to keep free after placement.
    pub headroom_percent: u8,
    /// Identity for spreading replicas.
    pub model: Option<String>,
    /// The pod's `spec.schedulerName`, if set.
    pub scheduler_name: Option<String>,
    /// cpu and memory requests ([`host_request`]), for the `frag` and `hostBalance` terms.
    pub host: Host,
}

impl PodDemand {
    /// A sharing pod declares VRAM and requests no whole device.
    pub fn is_sharing(&self) -> bool {
        self.devices == 0 && self.vram_source != VramSource::Undeclared
    }

    /// A pod that asks nothing of accelerators; the extender passes it through.
    pub fn is_accelerator_free(&self) -> bool {
        self.devices == 0 && self.vram_source == VramSource::Undeclared
    }
}

/// Why a pod's demand is invalid. The text names the key and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {key} {value:?}: {reason}")]
pub struct DemandError {
    /// The annotation or resource at fault.
    pub key: String,
    /// Its value, clipped.
    pub value: String,
    /// Why the value was refused.
    pub reason: String,
}

fn invalid(key: &str, value: &str, reason: impl ToString) -> DemandError {
    DemandError {
        key: key.to_string(),
        value: clip(value),
        reason: reason.to_string(),
    }
}

/// Effective amount of `resource` over the pod, the kube-scheduler way: app containers and
/// sidecars (init containers with `restartPolicy: Always`) add up; each other init container
/// needs its own amount plus the sidecars started before it; the pod needs the larger. A
/// container's limit stands in for a missing request. `None` when no container names it.
pub fn effective_quantity<F>(
    pod: &PodFacts,
    resource: &str,
    parse: F,
) -> Result<Option<u64>, DemandError>
where
    F: Fn(&str) -> Result<u64, super::quantity::QuantityError>,
{
    let read = |c: &ContainerResources| -> Result<Option<u64>, DemandError> {
        c.get(resource)
            .map(|v| parse(v).map_err(|e| invalid(resource, v, e)))
            .transpose()
    };
    let mut seen = false;
    let mut running: u64 = 0;
    for c in &pod.containers {
        if let Some(v) = read(c)? {
            seen = true;
            running = running.saturating_add(v);
        }
    }
    let (mut sidecars, mut init_peak) = (0u64, 0u64);
    for c in &pod.init_containers {
        let v = read(c)?;
        seen |= v.is_some();
        let v = v.unwrap_or(0);
        if c.sidecar {
            sidecars = sidecars.saturating_add(v);
            running = running.saturating_add(v);
        } else {
            init_peak = init_peak.max(v.saturating_add(sidecars));
        }
    }
    Ok(seen.then_some(running.max(init_peak)))
}

/// The pod's cpu (millicores, rounded up) and memory (MiB, rounded up) requests, counted the
/// way kube-scheduler counts them (containers and sidecars add up, init containers peak);
/// zero where not given. An unreadable quantity is an error naming it.
pub fn host_request(pod: &PodFacts) -> Result<Host, DemandError> {
    Ok(Host {
        cpu_milli: effective_quantity(pod, "cpu", parse_millis)?.unwrap_or(0),
        memory_mib: effective_quantity(pod, "memory", parse_mib)?.unwrap_or(0),
    })
}

/// [`host_request`] of a pod already bound (reality is recorded, never refused): an unreadable
/// quantity counts as 0 and the other one still counts.
pub fn bound_host_request(pod: &PodFacts) -> Host {
    let read = |resource: &str, parse: fn(&str) -> Result<u64, super::quantity::QuantityError>| {
        effective_quantity(pod, resource, parse)
            .ok()
            .flatten()
            .unwrap_or(0)
    };
    Host {
        cpu_milli: read("cpu", parse_millis),
        memory_mib: read("memory", parse_mib),
    }
}

/// Reads a pod's demand. Invalid values are errors naming the key and value, never defaults.
pub fn pod_demand(
    pod: &PodFacts,
    config: &Config,
    catalog: &Catalog,
) -> Result<PodDemand, DemandError> {
    // Whole-device resources: at most one kind per pod.
    let mut resource = None;
    let mut devices: u64 = 0;
    let names: std::collections::BTreeSet<&'static str> = pod
        .containers
        .iter()
        .chain(&pod.init_containers)
        .flat_map(|c| c.requests.keys().chain(c.limits.keys()))
        .map(String::as_str)
        .filter_map(device_resource)
        .collect();
    for name in names {
        let count = effective_quantity(pod, name, parse_count)?.unwrap_or(0);
        if count == 0 {
            continue;
        }
        if let Some(first) = &resource {
            return Err(invalid(
                name,
                &count.to_string(),
                format!("a pod may request one accelerator resource, it also requests {first}"),
            ));
        }
        if count > u64::from(MAX_DEVICES) {
            return Err(invalid(
                name,
                &count.to_string(),
                format!("more than {MAX_DEVICES} devices"),
            ));
        }
        resource = Some(name);
        devices = count;
    }

    let model = pod
        .labels
        .get(LABEL_MODEL)
        .or_else(|| pod.labels.get(LABEL_APP_NAME))
        .or(pod.controller.as_ref())
        .cloned();
    let catalog_entry = pod
        .labels
        .get(LABEL_MODEL)
        .and_then(|m| catalog.models.get(m));

    let (vram_mib, vram_source) = if let Some(v) = pod.annotations.get(ANNOTATION_VRAM) {
        (
            parse_mib(v).map_err(|e| invalid(ANNOTATION_VRAM, v, e))?,
            VramSource::Annotation,
        )
    } else if let Some(v) = effective_quantity(pod, RESOURCE_VRAM, parse_mib)? {
        (v, VramSource::Resource)
    } else if let Some(entry) = catalog_entry {
        (entry.vram_mib, VramSource::Catalog)
    } else if let Some(v) = effective_quantity(pod, RESOURCE_VRAM_GIB, parse_count)? {
        (v.saturating_mul(1024), VramSource::VramGib)
    } else if let Some(v) = effective_quantity(pod, RESOURCE_HAMI_GPUMEM, parse_count)? {
        (v, VramSource::HamiGpumem)
    } else if let Some(v) = effective_quantity(pod, RESOURCE_ALIYUN_GPUMEM, parse_count)? {
        (v.saturating_mul(1024), VramSource::AliyunGpuMem)
    } else {
        (0, VramSource::Undeclared)
    };
    if vram_mib > MAX_VRAM_MIB {
        let key = match vram_source {
            VramSource::HamiGpumem => RESOURCE_HAMI_GPUMEM,
            VramSource::AliyunGpuMem => RESOURCE_ALIYUN_GPUMEM,
            VramSource::VramGib => RESOURCE_VRAM_GIB,
            _ => ANNOTATION_VRAM,
        };
        let written = pod
            .annotations
            .get(key)
            .cloned()
            .or_else(|| {
                pod.containers
                    .iter()
                    .find_map(|c| c.get(key).map(str::to_string))
            })
            .unwrap_or_else(|| format!("{vram_mib}Mi"));
        return Err(invalid(
            key,
            &written,
            "absurdly large (over 1Ti per device)",
        ));
    }
    if vram_source != VramSource::Undeclared && vram_mib == 0 {
        return Err(invalid(
            ANNOTATION_VRAM,
            "0",
            "a declared VRAM need must be positive",
        ));
    }

    if let (Some(entry), Some(model)) = (catalog_entry, pod.labels.get(LABEL_MODEL)) {
        if let Some(needed) = entry.devices {
            if devices > 0 && devices < u64::from(needed) {
                return Err(invalid(
                    resource.unwrap_or("devices"),
                    &devices.to_string(),
                    format!("catalog model {model:?} needs {needed} devices"),
                ));
            }
        }
    }

    let products: Vec<String> = match pod.annotations.get(ANNOTATION_PRODUCTS) {
        Some(list) => {
            let items = normalize_products(list.split(','))
                .map_err(|reason| invalid(ANNOTATION_PRODUCTS, list, reason))?;
            if items.is_empty() {
                return Err(invalid(ANNOTATION_PRODUCTS, list, "names no product"));
            }
            items
        }
        None => match catalog_entry {
            Some(e) => normalize_products(e.products.iter().map(String::as_str))
                .map_err(|reason| invalid("catalog products", &e.products.join(","), reason))?,
            None => Vec::new(),
        },
    };

    let headroom_percent = match pod.annotations.get(ANNOTATION_HEADROOM) {
        Some(raw) => parse_percent(raw).ok_or_else(|| {
            invalid(
                ANNOTATION_HEADROOM,
                raw,
                format!("expected a percent 0..={MAX_HEADROOM_PERCENT}"),
            )
        })?,
        None => config.headroom_percent,
    };

    Ok(PodDemand {
        key: pod.key(),
        id: pod.ledger_id(),
        resource,
        devices: devices as u32,
        vram_mib,
        vram_source,
        products,
        headroom_percent,
        model,
        scheduler_name: pod.scheduler_name.clone(),
        host: host_request(pod)?,
    })
}

/// Trims an allow-list's entries and drops empty ones and case-insensitive duplicates, once
/// per pod, so the filter compares each entry as written; too many or too long entries are an
/// error (the filter's cost grows with devices × entries).
fn normalize_products<'a>(entries: impl Iterator<Item = &'a str>) -> Result<Vec<String>, String> {
    let mut items: Vec<String> = Vec::new();
    for entry in entries.map(str::trim).filter(|s| !s.is_empty()) {
        if entry.len() > MAX_PRODUCT_LEN {
            return Err(format!(
                "an entry is longer than {MAX_PRODUCT_LEN} characters"
            ));
        }
        if items.iter().any(|seen| seen.eq_ignore_ascii_case(entry)) {
            continue;
        }
        if items.len() == MAX_PRODUCTS {
            return Err(format!("more than {MAX_PRODUCTS} products"));
        }
        items.push(entry.to_string());
    }
    Ok(items)
}

fn parse_percent(raw: &str) -> Option<u8> {
    let n: u8 = raw.trim().trim_end_matches('%').trim().parse().ok()?;
    (n <= MAX_HEADROOM_PERCENT).then_some(n)
}
