//! Prometheus metrics of the HTTP layer: latency per verb, requests by outcome, filter
//! rejections by reason code, and inventory gauges computed per scrape.
//!
//! A scrape copies what the gauges need from the inventory under the read lock (a flat list of
//! devices and exclusive shares: no per-scrape work beyond copying happens under the lock), then
//! builds the gauges into a registry of its own, so concurrent scrapes never see each other's
//! half-built values. The HTTP handler runs the build on a blocking thread, off the async
//! workers that answer filter, prioritize and bind.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use std::collections::HashMap;
use std::sync::Arc;

use crate::core::host::Host;
use crate::core::Inventory;
use crate::extender::state::{ExtenderState, WatchedResource};

/// Labels of per-verb metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerbLabels {
    /// Extender verb (`filter`, `prioritize`, `bind`).
    pub verb: String,
}

/// Labels of the request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// Extender verb.
    pub verb: String,
    /// How the call ended (`ok`, `rejected-all`, `bad-request`, `error`).
    pub outcome: String,
}

/// Labels of per-reason counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// A filter rejection code, or a bind conflict (`no-longer-fits`, `bound-elsewhere`).
    pub reason: String,
}

/// Labels of per-device gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeviceLabels {
    /// Node name.
    pub node: String,
    /// Device index on the node.
    pub device: String,
    /// Device class (`A100`, `910B3`).
    pub class: String,
}

/// Labels of per-node gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    /// Node name.
    pub node: String,
}

/// Labels of per-class gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabels {
    /// Device class (`A100`, `910B3`).
    pub class: String,
}

/// The server's counters, shared by every request; gauges are built per scrape.
pub struct Metrics {
    /// `vramfit_request_duration_seconds`: time to answer a call, by verb.
    pub latency: Family<VerbLabels, Histogram>,
    /// `vramfit_requests`: calls by verb and outcome.
    pub requests: Family<OutcomeLabels, Counter>,
    /// `vramfit_filter_rejections`: nodes rejected by filter, by reason code.
    pub rejections: Family<ReasonLabels, Counter>,
    /// `vramfit_bind_conflicts`: binds refused as conflicts, by reason.
    pub bind_conflicts: Family<ReasonLabels, Counter>,
}

/// Labels of per-watched-resource gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    /// Watched resource (`nodes`, `pods`).
    pub resource: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            latency: Family::<VerbLabels, Histogram>::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_05, 2.0, 18))
            }),
            requests: Family::default(),
            rejections: Family::default(),
            bind_conflicts: Family::default(),
        }
    }
}

/// One device as a scrape needs it.
#[derive(Debug, Clone)]
struct DeviceRow {
    node: u32,
    index: u32,
    class: Arc<str>,
    total_mib: u64,
    measured_used_mib: u64,
    reserved_mib: u64,
    healthy: bool,
    exclusive_holders: u32,
    sharers: u32,
}

/// One node as a scrape needs it.
#[derive(Debug, Clone)]
struct NodeRow {
    name: String,
    resource: Option<&'static str>,
    sharing: bool,
    /// Whole devices the device plugin can still hand out (allocatable − held).
    free_slots: u32,
    /// Free cpu/memory (allocatable − the requests of the pods counted there), when known.
    free_host: Option<Host>,
}

/// What a scrape reads from the state, copied under the read lock.
#[derive(Debug, Clone, Default)]
pub struct ScrapeInput {
    nodes: Vec<NodeRow>,
    devices: Vec<DeviceRow>,
    /// Exclusive shares: (row in `devices`, VRAM per device the pod needs).
    exclusive_shares: Vec<(u32, u64)>,
    reservations: usize,
    watch: Vec<(&'static str, Option<f64>, u64)>,
    ledger_corrections: u64,
    /// Deletion costs written and failed writes (`extender::deletion`).
    deletion_costs: (u64, u64),
    /// Whether this replica writes deletion costs (not while another one's scheduler leads).
    deletion_cost_writer: bool,
}

impl ScrapeInput {
    /// Copies what the inventory gauges need. Only copies: the caller holds the read lock
    /// for as long as this takes.
    pub fn capture(inventory: &Inventory) -> Self {
        let mut input = ScrapeInput {
            nodes: Vec::with_capacity(inventory.node_count()),
            devices: Vec::with_capacity(inventory.node_count() * 8),
            ..ScrapeInput::default()
        };
        let mut first_device: HashMap<&str, (u32, u32)> =
            HashMap::with_capacity(inventory.node_count());
        for node in inventory.nodes() {
            let node_row = input.nodes.len() as u32;
            first_device.insert(
                &node.name,
                (input.devices.len() as u32, node.devices.len() as u32),
            );
            input.nodes.push(NodeRow {
                name: node.name.clone(),
                resource: node.resource,
                sharing: node.sharing,
                free_slots: node.allocatable_devices.saturating_sub(node.held_devices()),
                free_host: inventory.free_host(&node.name),
            });
            input.devices.extend(node.devices.iter().map(|d| DeviceRow {
                node: node_row,
                index: d.index,
                class: d.class().clone(),
                total_mib: d.total_mib,
                measured_used_mib: d.measured_used_mib,
                reserved_mib: d.reserved_mib,
                healthy: d.healthy,
                exclusive_holders: d.exclusive_holders,
                sharers: d.sharers,
            }));
        }
        for (_, placement) in inventory.placements() {
            if !placement.exclusive {
                continue;
            }
            let Some(&(first, count)) = first_device.get(placement.node.as_str()) else {
                continue;
            };
            for share in &placement.shares {
                let rows = first..first + count;
                if let Some(row) = rows
                    .clone()
                    .find(|&r| input.devices[r as usize].index == share.index)
                {
                    input.exclusive_shares.push((row, share.vram_mib));
                }
            }
        }
        input
    }

    /// [`capture`](Self::capture) plus the watch and reservation figures of `cluster`.
    pub fn of(cluster: &ExtenderState) -> Self {
        let mut input = ScrapeInput::capture(&cluster.read());
        input.reservations = cluster.reserved_pods();
        input.ledger_corrections = cluster.ledger_corrections();
        let costs = cluster.deletion_costs();
        input.deletion_costs = (costs.written(), costs.failures());
        input.deletion_cost_writer = costs.writes();
        input.watch = [
            (WatchedResource::Nodes, "nodes"),
            (WatchedResource::Pods, "pods"),
        ]
        .into_iter()
        .map(|(resource, name)| {
            (
                name,
                cluster
                    .health
                    .last_event_age(resource)
                    .map(|age| age.as_secs_f64()),
                cluster.health.errors(resource),
            )
        })
        .collect();
        input
    }
}

/// VRAM a device can give a pod right now under `headroom_percent`: nothing on a device held
/// whole; on a VRAM-sharing node, what sharing pods could still get; elsewhere only an idle
/// device's VRAM, and only while the node has a device left to hand out (`slot_free`).
fn placeable_mib(device: &DeviceRow, sharing: bool, slot_free: bool, headroom: u8) -> u64 {
    if !device.healthy || device.exclusive_holders > 0 {
        return 0;
    }
    let usable = (u128::from(device.total_mib) * u128::from(100 - headroom.min(100)) / 100) as u64;
    let free = usable.saturating_sub(device.measured_used_mib.max(device.reserved_mib));
    let idle = device.sharers == 0 && device.reserved_mib == 0;
    if sharing || (idle && slot_free) {
        free
    } else {
        0
    }
}

/// Devices held whole by a pod whose need would fit a smaller device class of the same
/// resource: rows of `input.devices`.
fn stranded_rows(input: &ScrapeInput, headroom: u8) -> Vec<bool> {
    let usable = |d: &DeviceRow| {
        (u128::from(d.total_mib) * u128::from(100 - headroom.min(100)) / 100) as u64
    };
    let mut sizes: HashMap<Option<&'static str>, Vec<u64>> = HashMap::new();
    for d in &input.devices {
        sizes
            .entry(input.nodes[d.node as usize].resource)
            .or_default()
            .push(usable(d));
    }
    for list in sizes.values_mut() {
        list.sort_unstable();
        list.dedup();
    }
    let mut stranded = vec![false; input.devices.len()];
    for &(row, need) in &input.exclusive_shares {
        let d = &input.devices[row as usize];
        let own = usable(d);
        let Some(list) = sizes.get(&input.nodes[d.node as usize].resource) else {
            continue;
        };
        // The smallest usable size that still fits the need: stranded if it is smaller.
        let at = list.partition_point(|&u| u < need);
        if list.get(at).is_some_and(|&smallest| smallest < own) {
            stranded[row as usize] = true;
        }
    }
    stranded
}

/// A gauge registered in `registry`, set to `value`.
fn register_gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let gauge = Gauge::<i64>::default();
    gauge.set(value);
    registry.register(name, help, gauge);
}

/// A counter registered in `registry`, at `total` (a count the state keeps since start).
fn register_counter(registry: &mut Registry, name: &str, help: &str, total: u64) {
    let counter = Counter::<u64>::default();
    counter.inc_by(total);
    registry.register(name, help, counter);
}

/// A gauge family registered in `registry`.
fn gauge_family<L>(registry: &mut Registry, name: &str, help: &str) -> Family<L, Gauge>
where
    L: prometheus_client::encoding::EncodeLabelSet
        + Clone
        + std::hash::Hash
        + Eq
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let family = Family::<L, Gauge>::default();
    registry.register(name, help, family.clone());
    family
}

impl Metrics {
    /// Counts one call's outcome and latency.
    pub fn observe(&self, verb: &str, outcome: &str, seconds: f64) {
        self.latency
            .get_or_create(&VerbLabels { verb: verb.into() })
            .observe(seconds);
        self.requests
            .get_or_create(&OutcomeLabels {
                verb: verb.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    /// A whole scrape in one call: capture under the lock, then render (for tests and tools;
    /// the server renders on a blocking thread).
    pub fn scrape(&self, cluster: &ExtenderState) -> String {
        self.render(ScrapeInput::of(cluster), cluster.config.headroom_percent)
    }

    /// Renders the text exposition format: the shared counters plus gauges built from `input`
    /// alone, in a registry of this scrape's own.
    pub fn render(&self, input: ScrapeInput, headroom_percent: u8) -> String {
        let mut registry = Registry::with_prefix("vramfit");
        registry.register(
            "request_duration_seconds",
            "Time to answer an extender call, by verb",
            self.latency.clone(),
        );
        registry.register(
            "requests",
            "Extender calls by verb and outcome (ok, rejected-all, bad-request, error)",
            self.requests.clone(),
        );
        registry.register(
            "filter_rejections",
            "Nodes rejected by filter, by reason code",
            self.rejections.clone(),
        );
        registry.register(
            "bind_conflicts",
            "Binds refused because the pod no longer fits or is bound elsewhere, by reason",
            self.bind_conflicts.clone(),
        );
        let device_total = gauge_family::<DeviceLabels>(
            &mut registry,
            "device_vram_total_mib",
            "VRAM of each device (MiB)",
        );
        let device_used = gauge_family::<DeviceLabels>(
            &mut registry,
            "device_vram_used_mib",
            "VRAM in use on each device as the node agent measured it (MiB; 0 without a fresh report)",
        );
        let device_reserved = gauge_family::<DeviceLabels>(
            &mut registry,
            "device_vram_reserved_mib",
            "VRAM reserved on each device by placed pods (ledger, MiB)",
        );
        let class_free_vram = gauge_family::<ClassLabels>(
            &mut registry,
            "device_class_free_vram_mib",
            "VRAM a pod could be given now per device class under the default headroom (MiB): shared devices' free VRAM, idle devices' VRAM where the node has a device left to hand out; nothing on devices held whole",
        );
        let class_free_devices = gauge_family::<ClassLabels>(
            &mut registry,
            "device_class_free_devices",
            "Healthy devices per class that no pod holds or shares",
        );
        let class_stranded = gauge_family::<ClassLabels>(
            &mut registry,
            "device_class_stranded_devices",
            "Devices per class held whole by pods whose need would fit a smaller class",
        );
        let free_cpu = gauge_family::<NodeLabels>(
            &mut registry,
            "node_free_cpu_millicores",
            "Accelerator nodes: allocatable cpu minus the requests of the pods bound or reserved there, as the frag and hostBalance terms read it (millicores); absent when the node's allocatable is not known",
        );
        let free_memory = gauge_family::<NodeLabels>(
            &mut registry,
            "node_free_memory_mib",
            "Accelerator nodes: allocatable memory minus the requests of the pods bound or reserved there (MiB); absent when the node's allocatable is not known",
        );
        for node in &input.nodes {
            let (Some(free), Some(_)) = (node.free_host, node.resource) else {
                continue;
            };
            let labels = NodeLabels {
                node: node.name.clone(),
            };
            free_cpu
                .get_or_create(&labels)
                .set(free.cpu_milli.min(i64::MAX as u64) as i64);
            free_memory
                .get_or_create(&labels)
                .set(free.memory_mib.min(i64::MAX as u64) as i64);
        }
        let stranded = stranded_rows(&input, headroom_percent);
        // Idle devices a non-sharing node can still hand out, counted down per node.
        let mut slots: Vec<u32> = input.nodes.iter().map(|n| n.free_slots).collect();
        let gauge_value = |v: u64| v.min(i64::MAX as u64) as i64;
        for (row, d) in input.devices.iter().enumerate() {
            let node = &input.nodes[d.node as usize];
            let labels = DeviceLabels {
                node: node.name.clone(),
                device: d.index.to_string(),
                class: d.class.to_string(),
            };
            device_total
                .get_or_create(&labels)
                .set(gauge_value(d.total_mib));
            device_used
                .get_or_create(&labels)
                .set(gauge_value(d.measured_used_mib));
            device_reserved
                .get_or_create(&labels)
                .set(gauge_value(d.reserved_mib));
            let class = ClassLabels {
                class: d.class.to_string(),
            };
            let idle = d.exclusive_holders == 0 && d.sharers == 0 && d.reserved_mib == 0;
            let slot = &mut slots[d.node as usize];
            let slot_free = *slot > 0;
            let placeable = placeable_mib(d, node.sharing, slot_free, headroom_percent);
            if !node.sharing && idle && d.healthy && slot_free && placeable > 0 {
                *slot -= 1;
            }
            class_free_vram
                .get_or_create(&class)
                .inc_by(gauge_value(placeable));
            let free = class_free_devices.get_or_create(&class);
            if d.healthy && idle {
                free.inc();
            }
            let held = class_stranded.get_or_create(&class);
            if stranded[row] {
                held.inc();
            }
        }
        let watch_age =
            Family::<ResourceLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "watch_last_event_age_seconds",
            "Live mode: seconds since the last watch event per resource (staleness); absent before the first",
            watch_age.clone(),
        );
        let watch_errors = Family::<ResourceLabels, Gauge>::default();
        registry.register(
            "watch_errors",
            "Live mode: watch failures per resource since start (each is retried with backoff)",
            watch_errors.clone(),
        );
        register_gauge(
            &mut registry,
            "reservations_in_flight",
            "Binds whose placement no pod event has confirmed yet",
            input.reservations as i64,
        );
        register_counter(
            &mut registry,
            "ledger_corrections",
            "Whole-device pods moved in the ledger to the devices kubelet really allocated (vramfit.io/allocated-devices)",
            input.ledger_corrections,
        );
        register_counter(
            &mut registry,
            "deletion_cost_updates",
            "Live mode: controller.kubernetes.io/pod-deletion-cost values rewritten on bound replicas so scale-downs keep zones even and free big devices first",
            input.deletion_costs.0,
        );
        register_counter(
            &mut registry,
            "deletion_cost_update_errors",
            "Live mode: deletion-cost writes the API server refused or did not answer (each ends its pass; retried with a backoff up to 60 s)",
            input.deletion_costs.1,
        );
        register_gauge(
            &mut registry,
            "deletion_cost_writer",
            "Live mode: 1 while this replica writes deletion costs, 0 while another replica's scheduler holds server.leaderLease",
            i64::from(input.deletion_cost_writer),
        );
        for (resource, age, errors) in &input.watch {
            let labels = ResourceLabels {
                resource: (*resource).into(),
            };
            if let Some(age) = age {
                watch_age.get_or_create(&labels).set(*age);
            }
            watch_errors
                .get_or_create(&labels)
                .set(gauge_value(*errors));
        }
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}
