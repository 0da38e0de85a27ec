//! Filter: whether a pod fits a node, which devices it would get, and otherwise a short, stable
//! reason. Pure function of one node and one demand.

use std::fmt;

use serde::Serialize;

use super::demand::PodDemand;
use super::inventory::DeviceShare;
use super::node::{product_matches, Device, NodeInfo, NodeProblem};
use super::quantity::format_mib;

/// Why a node was rejected. `Display` gives the reason kube-scheduler shows in events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "code", rename_all = "kebab-case")]
pub enum Reason {
    /// The pod's own declarations are invalid; no node can take it.
    InvalidPod { message: String },
    /// The node is not in vramfit's cluster state.
    UnknownNode,
    /// The node has none of the accelerator resource the pod requests.
    NoDevices { resource: String },
    /// A sharing pod on a node whose devices are not shared by VRAM.
    NotSharing,
    /// No source tells the size of this node's devices.
    VramUnknown,
    /// No device on this node is of an allowed product.
    ProductNotAllowed { allowed: String, present: String },
    /// Fewer devices than the pod needs, even when all are free.
    TooFewDevices { need: u32, have: u32 },
    /// No (or too few) devices large enough, even when empty.
    DeviceTooSmall {
        need_mib: u64,
        headroom: u8,
        largest_mib: u64,
    },
    /// Large enough devices exist but too few are healthy.
    Unhealthy { need: u32, healthy: u32 },
    /// Not enough free VRAM or free devices right now.
    Insufficient { need: u32, need_mib: u64, free: u32 },
}

impl Reason {
    /// Rejections no eviction can fix go to `FailedAndUnresolvableNodes`.
    pub fn is_unresolvable(&self) -> bool {
        !matches!(
            self,
            Reason::UnknownNode | Reason::Unhealthy { .. } | Reason::Insufficient { .. }
        )
    }

    /// A fixed, low-cardinality code for metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Reason::InvalidPod { .. } => "invalid-pod",
            Reason::UnknownNode => "unknown-node",
            Reason::NoDevices { .. } => "no-devices",
            Reason::NotSharing => "not-sharing",
            Reason::VramUnknown => "vram-unknown",
            Reason::ProductNotAllowed { .. } => "product-not-allowed",
            Reason::TooFewDevices { .. } => "too-few-devices",
            Reason::DeviceTooSmall { .. } => "device-too-small",
            Reason::Unhealthy { .. } => "unhealthy",
            Reason::Insufficient { .. } => "insufficient",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::InvalidPod { message } => write!(f, "vramfit: {message}"),
            Reason::UnknownNode => write!(f, "vramfit: node unknown to vramfit"),
            Reason::NoDevices { resource } => write!(f, "vramfit: node has no {resource} devices"),
            Reason::NotSharing => write!(f, "vramfit: needs a shared device; node does not share devices by VRAM"),
            Reason::VramUnknown => write!(
                f,
                "vramfit: device VRAM unknown (no fresh vramfit.io/gpu-status, no GFD or Ascend labels)"
            ),
            Reason::ProductNotAllowed { allowed, present } => {
                write!(f, "vramfit: product {present} not allowed (wants {allowed})")
            }
            Reason::TooFewDevices { need, have } => {
                write!(f, "vramfit: needs {need} devices; node has {have}")
            }
            Reason::DeviceTooSmall { need_mib, headroom, largest_mib } => write!(
                f,
                "vramfit: needs {} per device (+{headroom}% headroom); largest device here has {}",
                format_mib(*need_mib),
                format_mib(*largest_mib)
            ),
            Reason::Unhealthy { need, healthy } => {
                write!(f, "vramfit: needs {need} healthy devices; {healthy} healthy here")
            }
            Reason::Insufficient { need, need_mib, free } => {
                if *need_mib == 0 {
                    write!(f, "vramfit: needs {need} free devices; {free} free here")
                } else {
                    write!(
                        f,
                        "vramfit: needs {need} devices with {} free; {free} such here",
                        format_mib(*need_mib)
                    )
                }
            }
        }
    }
}

/// Where the pod would go on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fit {
    pub shares: Vec<DeviceShare>,
    /// Whole devices (true) or VRAM on a shared device (false).
    pub exclusive: bool,
    /// VRAM left idle on the chosen devices after placement (MiB).
    pub idle_after_mib: u64,
    /// Total VRAM of the chosen devices (MiB).
    pub chosen_total_mib: u64,
}

/// Checks whether `demand` fits `node` now, and picks the devices: the smallest fitting ones
/// (best fit), lowest index first. Checks run from the least to the most changeable, so the
/// reason names what matters most.
pub fn fit_node(node: &NodeInfo, demand: &PodDemand) -> Result<Fit, Reason> {
    let sharing = demand.is_sharing();
    match (&demand.resource, &node.resource) {
        (Some(want), have) if have.as_deref() != Some(want.as_str()) => {
            return Err(Reason::NoDevices {
                resource: want.clone(),
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
    if node.problem == Some(NodeProblem::VramUnknown) {
        return Err(Reason::VramUnknown);
    }
    let vendor = node.vendor.unwrap_or(super::node::Vendor::Nvidia);
    let allowed: Vec<&Device> = node
        .devices
        .iter()
        .filter(|d| {
            demand.products.is_empty()
                || demand
                    .products
                    .iter()
                    .any(|p| product_matches(p, d, vendor))
        })
        .collect();
    if allowed.is_empty() {
        let mut present: Vec<&str> = node.devices.iter().map(|d| d.product.as_str()).collect();
        present.dedup();
        return Err(Reason::ProductNotAllowed {
            allowed: demand.products.join(","),
            present: if present.is_empty() {
                "none".into()
            } else {
                present.join(",")
            },
        });
    }
    let need = demand.devices.max(1);
    let countable = (allowed.len() as u32).min(if sharing {
        u32::MAX
    } else {
        node.allocatable_devices
    });
    if countable < need {
        return Err(Reason::TooFewDevices {
            need,
            have: countable,
        });
    }
    let headroom = demand.headroom_percent;
    let big_enough: Vec<&Device> = allowed
        .into_iter()
        .filter(|d| d.usable_mib(headroom) >= demand.vram_mib)
        .collect();
    if (big_enough.len() as u32) < need {
        return Err(Reason::DeviceTooSmall {
            need_mib: demand.vram_mib,
            headroom,
            largest_mib: node.largest_device_mib(),
        });
    }
    let healthy: Vec<&Device> = big_enough.into_iter().filter(|d| d.healthy).collect();
    if (healthy.len() as u32) < need {
        return Err(Reason::Unhealthy {
            need,
            healthy: healthy.len() as u32,
        });
    }
    let mut free: Vec<&Device> = healthy
        .into_iter()
        .filter(|d| {
            d.exclusive_holders == 0
                && (sharing || d.sharers == 0)
                && d.free_mib(headroom) >= demand.vram_mib
        })
        .collect();
    let whole_devices_left = node.allocatable_devices.saturating_sub(node.held_devices());
    let available = if sharing {
        free.len() as u32
    } else {
        (free.len() as u32).min(whole_devices_left)
    };
    if available < need {
        return Err(Reason::Insufficient {
            need,
            need_mib: demand.vram_mib,
            free: available,
        });
    }
    free.sort_by_key(|d| (d.free_mib(0).saturating_sub(demand.vram_mib), d.index));
    let chosen = &free[..need as usize];
    let shares = chosen
        .iter()
        .map(|d| DeviceShare {
            index: d.index,
            vram_mib: demand.vram_mib,
        })
        .collect();
    let idle_after_mib = chosen
        .iter()
        .map(|d| {
            if sharing {
                d.free_mib(0).saturating_sub(demand.vram_mib)
            } else {
                d.total_mib.saturating_sub(demand.vram_mib)
            }
        })
        .sum();
    Ok(Fit {
        shares,
        exclusive: !sharing,
        idle_after_mib,
        chosen_total_mib: chosen.iter().map(|d| d.total_mib).sum(),
    })
}
