//! Filter: whether a pod fits a node, which devices it would get, and otherwise a short, stable
//! reason. Pure function of one node and one demand.

use std::fmt;

use serde::Serialize;
use smallvec::SmallVec;

use super::demand::PodDemand;
use super::inventory::DeviceShare;
use super::node::{products_allow, NodeInfo, NodeProblem, MAX_DEVICES_PER_NODE};
use super::quantity::format_mib;

/// Why a node was rejected. `Display` gives the reason kube-scheduler shows in events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "code", rename_all = "kebab-case")]
pub enum Reason {
    /// The pod's own declarations are invalid; no node can take it.
    InvalidPod {
        /// What is invalid.
        message: String,
    },
    /// The node is not in vramfit's cluster state.
    UnknownNode,
    /// The node has none of the accelerator resource the pod requests.
    NoDevices {
        /// The requested resource (`nvidia.com/gpu`).
        resource: String,
    },
    /// A sharing pod on a node whose devices are not shared by VRAM.
    NotSharing,
    /// No source tells the size of this node's devices.
    VramUnknown,
    /// The node's data is unusable (e.g. it claims more devices than any node has).
    InvalidNode {
        /// What is wrong with the node's data.
        message: String,
    },
    /// No device on this node is of an allowed product.
    ProductNotAllowed {
        /// The pod's allow-list, comma separated.
        allowed: String,
        /// The node's products, comma separated (`none` when it has no devices).
        present: String,
    },
    /// Fewer devices than the pod needs, even when all are free.
    TooFewDevices {
        /// Devices the pod needs.
        need: u32,
        /// Allowed devices the node has (capped by its allocatable count for whole devices).
        have: u32,
    },
    /// No (or too few) devices large enough, even when empty.
    DeviceTooSmall {
        /// VRAM the pod needs per device, in MiB.
        need_mib: u64,
        /// Headroom percent kept free on each device.
        headroom: u8,
        /// Total VRAM of the node's largest device, in MiB.
        largest_mib: u64,
    },
    /// Large enough devices exist but too few are healthy.
    Unhealthy {
        /// Devices the pod needs.
        need: u32,
        /// Healthy devices large enough for the pod.
        healthy: u32,
    },
    /// Not enough free VRAM or free devices right now.
    Insufficient {
        /// Devices the pod needs.
        need: u32,
        /// VRAM the pod needs per device, in MiB (0 when undeclared).
        need_mib: u64,
        /// Devices that could take the pod right now.
        free: u32,
    },
}

impl Reason {
    /// Rejections no eviction can fix (everything but a lack of free capacity, and a node not
    /// yet known) go to `FailedAndUnresolvableNodes`, so preemption does not try them.
    pub fn is_unresolvable(&self) -> bool {
        !matches!(self, Reason::UnknownNode | Reason::Insufficient { .. })
    }

    /// A fixed, low-cardinality code for metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Reason::InvalidPod { .. } => "invalid-pod",
            Reason::UnknownNode => "unknown-node",
            Reason::NoDevices { .. } => "no-devices",
            Reason::NotSharing => "not-sharing",
            Reason::VramUnknown => "vram-unknown",
            Reason::InvalidNode { .. } => "invalid-node",
            Reason::ProductNotAllowed { .. } => "product-not-allowed",
            Reason::TooFewDevices { .. } => "too-few-devices",
            Reason::DeviceTooSmall { .. } => "device-too-small",
            Reason::Unhealthy { .. } => "unhealthy",
            Reason::Insufficient { .. } => "insufficient",
        }
    }
}

/// `1 device`, `2 devices`, `1 free device`.
fn devices(n: u32, adjective: &str) -> String {
    let adjective = if adjective.is_empty() {
        String::new()
    } else {
        format!("{adjective} ")
    };
    if n == 1 {
        format!("1 {adjective}device")
    } else {
        format!("{n} {adjective}devices")
    }
}

impl Reason {
    fn write_text(&self, f: &mut impl fmt::Write) -> fmt::Result {
        match self {
            Reason::InvalidPod { message } => write!(f, "vramfit: {message}"),
            Reason::UnknownNode => write!(f, "vramfit: node unknown to vramfit"),
            Reason::NoDevices { resource } => write!(f, "vramfit: node has no {resource} devices"),
            Reason::NotSharing => write!(f, "vramfit: needs a shared device; node does not share devices by VRAM"),
            Reason::VramUnknown => write!(
                f,
                "vramfit: device VRAM unknown (no fresh vramfit.io/gpu-status, no GFD or Ascend labels)"
            ),
            Reason::InvalidNode { message } => write!(f, "vramfit: node data invalid: {message}"),
            Reason::ProductNotAllowed { allowed, present } => {
                write!(f, "vramfit: product {present} not allowed (wants {allowed})")
            }
            Reason::TooFewDevices { need, have } => {
                write!(f, "vramfit: needs {}; node has {have}", devices(*need, ""))
            }
            Reason::DeviceTooSmall { need_mib, headroom, largest_mib } => write!(
                f,
                "vramfit: needs {} per device (plus {headroom} percent headroom); largest device here has {}",
                format_mib(*need_mib),
                format_mib(*largest_mib)
            ),
            Reason::Unhealthy { need, healthy } => {
                write!(f, "vramfit: needs {}; {healthy} healthy here", devices(*need, "healthy"))
            }
            Reason::Insufficient { need, need_mib, free } => {
                if *need_mib == 0 {
                    write!(f, "vramfit: needs {}; {free} free here", devices(*need, "free"))
                } else {
                    write!(
                        f,
                        "vramfit: needs {} with {} free; {free} such here",
                        devices(*need, ""),
                        format_mib(*need_mib)
                    )
                }
            }
        }
    }
}

/// The reason as kube-scheduler shows it. kube-scheduler passes the text to a printf-style
/// event recorder, so a `%` (from a pod's or node's own values) is written as `pct`: the
/// text never contains `%`.
impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = String::new();
        self.write_text(&mut text)?;
        if text.contains('%') {
            text = text.replace('%', "pct");
        }
        f.write_str(&text)
    }
}

/// Where the pod would go on one node: the chosen devices and what scoring needs to know.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Fit {
    /// Indices of the chosen devices, best fit first.
    pub devices: SmallVec<[u32; 4]>,
    /// VRAM reserved on each chosen device (MiB).
    pub vram_mib: u64,
    /// Whole devices (true) or VRAM on a shared device (false).
    pub exclusive: bool,
    /// VRAM left idle on the chosen devices after placement (MiB).
    pub idle_after_mib: u64,
    /// Total VRAM of the chosen devices (MiB).
    pub chosen_total_mib: u64,
    /// Devices of the node busy before placement, and those the placement newly occupies.
    pub busy_before: u32,
    /// Chosen devices that were idle before placement.
    pub newly_busy: u32,
    /// Total VRAM of the node's largest device (MiB), whichever devices were chosen.
    #[serde(skip)]
    pub node_largest_mib: u64,
    /// Devices of the node, carried so scoring need not read the node again.
    #[serde(skip)]
    pub node_devices: u32,
}

impl Fit {
    /// The reservation per chosen device.
    pub fn shares(&self) -> Vec<DeviceShare> {
        self.devices
            .iter()
            .map(|&index| DeviceShare {
                index,
                vram_mib: self.vram_mib,
            })
            .collect()
    }
}

/// A candidate device: (idle after placement, index, total, busy before).
type Candidate = (u64, u32, u64, bool);

/// Checks whether `demand` fits `node` now, and picks the devices: the smallest fitting ones
/// (best fit), lowest index first. One pass over the devices, no allocation for one-device pods.
/// Checks are reported from the least to the most changeable, so the reason names what matters most.
pub fn fit_node(node: &NodeInfo, demand: &PodDemand) -> Result<Fit, Reason> {
    let sharing = demand.is_sharing();
    match (demand.resource, node.resource) {
        (Some(want), have) if have != Some(want) => {
            return Err(Reason::NoDevices {
                resource: want.to_string(),
            })
        }
        (None, None) => {
            return Err(Reason::NoDevices {
                resource: "accelerator".into(),
            })
        }
        _ => {}
    }
    if sharing && !node.sharing {
        return Err(Reason::NotSharing);
    }
    match &node.problem {
        Some(NodeProblem::VramUnknown) => return Err(Reason::VramUnknown),
        Some(NodeProblem::TooManyDevices { count, source }) => {
            return Err(Reason::InvalidNode {
                message: format!(
                    "{source} claims {count} devices, more than {MAX_DEVICES_PER_NODE}"
                ),
            })
        }
        None => {}
    }
    let vendor = node.vendor.unwrap_or(super::node::Vendor::Nvidia);
    let headroom = demand.headroom_percent;
    let need = demand.devices.max(1);
    let vram = demand.vram_mib;
    let (mut allowed, mut big_enough, mut healthy, mut free, mut busy_before) =
        (0u32, 0u32, 0u32, 0u32, 0u32);
    let mut best: Option<Candidate> = None;
    let mut many: Vec<Candidate> = Vec::new();
    // A node's devices share their product names (one `Arc`): match the allow-list once per
    // product, not once per device.
    let mut last_product: Option<(&std::sync::Arc<str>, bool)> = None;
    let mut largest = 0u64;
    for d in &node.devices {
        largest = largest.max(d.total_mib);
        let busy = d.is_busy();
        busy_before += u32::from(busy);
        if !demand.products.is_empty() {
            let allowed_here = match last_product {
                Some((product, verdict)) if std::sync::Arc::ptr_eq(product, d.product()) => verdict,
                _ => {
                    let verdict = products_allow(&demand.products, d, vendor);
                    last_product = Some((d.product(), verdict));
                    verdict
                }
            };
            if !allowed_here {
                continue;
            }
        }
        allowed += 1;
        if d.usable_mib(headroom) < vram {
            continue;
        }
        big_enough += 1;
        if !d.healthy {
            continue;
        }
        healthy += 1;
        if d.exclusive_holders > 0 || (!sharing && d.sharers > 0) || d.free_mib(headroom) < vram {
            continue;
        }
        free += 1;
        let idle = if sharing {
            d.free_mib(0).saturating_sub(vram)
        } else {
            d.total_mib.saturating_sub(vram)
        };
        let candidate = (idle, d.index, d.total_mib, busy);
        if need == 1 {
            if best.is_none_or(|b| (candidate.0, candidate.1) < (b.0, b.1)) {
                best = Some(candidate);
            }
        } else {
            many.push(candidate);
        }
    }
    if allowed == 0 {
        return Err(product_not_allowed(node, demand));
    }
    let countable = if sharing {
        allowed
    } else {
        allowed.min(node.allocatable_devices)
    };
    if countable < need {
        return Err(Reason::TooFewDevices {
            need,
            have: countable,
        });
    }
    if big_enough < need {
        return Err(Reason::DeviceTooSmall {
            need_mib: vram,
            headroom,
            largest_mib: node.largest_device_mib(),
        });
    }
    if healthy < need {
        return Err(Reason::Unhealthy { need, healthy });
    }
    let available = if sharing {
        free
    } else {
        free.min(node.allocatable_devices.saturating_sub(node.held_devices()))
    };
    if available < need {
        return Err(Reason::Insufficient {
            need,
            need_mib: vram,
            free: available,
        });
    }
    let chosen: &[Candidate] = match &best {
        Some(one) => std::slice::from_ref(one),
        None => {
            many.sort_unstable_by_key(|c| (c.0, c.1));
            &many[..(need as usize).min(many.len())]
        }
    };
    Ok(Fit {
        devices: chosen.iter().map(|c| c.1).collect(),
        vram_mib: vram,
        exclusive: !sharing,
        idle_after_mib: chosen.iter().fold(0u64, |sum, c| sum.saturating_add(c.0)),
        chosen_total_mib: chosen.iter().fold(0u64, |sum, c| sum.saturating_add(c.2)),
        busy_before,
        newly_busy: chosen.iter().filter(|c| !c.3).count() as u32,
        node_largest_mib: largest,
        node_devices: node.devices.len() as u32,
    })
}

fn product_not_allowed(node: &NodeInfo, demand: &PodDemand) -> Reason {
    let mut present: Vec<&str> = node.devices.iter().map(|d| d.product().as_ref()).collect();
    present.dedup();
    Reason::ProductNotAllowed {
        allowed: demand.products.join(","),
        present: if present.is_empty() {
            "none".into()
        } else {
            present.join(",")
        },
    }
}
