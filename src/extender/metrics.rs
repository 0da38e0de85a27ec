//! Prometheus metrics of the HTTP layer: latency per verb, requests by outcome, filter
//! rejections by reason code.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::core::schedule::stranded_devices;
use crate::core::Inventory;
use crate::extender::state::{ExtenderState, WatchedResource};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerbLabels {
    pub verb: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub verb: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeviceLabels {
    pub node: String,
    pub device: String,
    pub class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabels {
    pub class: String,
}

/// The server's metrics and their registry.
pub struct Metrics {
    pub registry: Registry,
    pub latency: Family<VerbLabels, Histogram>,
    pub requests: Family<OutcomeLabels, Counter>,
    pub rejections: Family<ReasonLabels, Counter>,
    pub bind_conflicts: Family<ReasonLabels, Counter>,
    pub device_total: Family<DeviceLabels, Gauge>,
    pub device_used: Family<DeviceLabels, Gauge>,
    pub device_reserved: Family<DeviceLabels, Gauge>,
    pub class_free_vram: Family<ClassLabels, Gauge>,
    pub class_free_devices: Family<ClassLabels, Gauge>,
    pub class_stranded: Family<ClassLabels, Gauge>,
    pub watch_age: Family<ResourceLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub watch_errors: Family<ResourceLabels, Gauge>,
    pub reservations: Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    pub resource: String,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("vramfit");
        let latency = Family::<VerbLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_05, 2.0, 18))
        });
        let requests = Family::<OutcomeLabels, Counter>::default();
        let rejections = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "request_duration_seconds",
            "Time to answer an extender call, by verb",
            latency.clone(),
        );
        registry.register(
            "requests",
            "Extender calls by verb and outcome (ok, rejected-all, bad-request, error)",
            requests.clone(),
        );
        registry.register(
            "filter_rejections",
            "Nodes rejected by filter, by reason code",
            rejections.clone(),
        );
        let bind_conflicts = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "bind_conflicts",
            "Binds refused because the pod no longer fits or is bound elsewhere, by reason",
            bind_conflicts.clone(),
        );
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let family = Family::<DeviceLabels, Gauge>::default();
            registry.register(name, help, family.clone());
            family
        };
        let device_total = gauge(
            &mut registry,
            "device_vram_total_mib",
            "VRAM of each device (MiB)",
        );
        let device_used = gauge(
            &mut registry,
            "device_vram_used_mib",
            "VRAM in use on each device as the node agent measured it (MiB; 0 without a fresh report)",
        );
        let device_reserved = gauge(
            &mut registry,
            "device_vram_reserved_mib",
            "VRAM reserved on each device by placed pods (ledger, MiB)",
        );
        let class_gauge = |registry: &mut Registry, name: &str, help: &str| {
            let family = Family::<ClassLabels, Gauge>::default();
            registry.register(name, help, family.clone());
            family
        };
        let class_free_vram = class_gauge(
            &mut registry,
            "device_class_free_vram_mib",
            "VRAM still placeable per device class under the default headroom (MiB, healthy devices)",
        );
        let class_free_devices = class_gauge(
            &mut registry,
            "device_class_free_devices",
            "Healthy devices per class that no pod holds or shares",
        );
        let class_stranded = class_gauge(
            &mut registry,
            "device_class_stranded_devices",
            "Devices per class held whole by pods whose need would fit a smaller class",
        );
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
        let reservations = Gauge::default();
        registry.register(
            "reservations_in_flight",
            "Binds whose placement no pod event has confirmed yet",
            reservations.clone(),
        );
        Metrics {
            registry,
            watch_age,
            watch_errors,
            reservations,
            latency,
            requests,
            rejections,
            bind_conflicts,
            device_total,
            device_used,
            device_reserved,
            class_free_vram,
            class_free_devices,
            class_stranded,
        }
    }
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

    /// Sets the inventory gauges from the current inventory (called at scrape time).
    pub fn refresh_inventory(&self, inventory: &Inventory, headroom_percent: u8) {
        for family in [&self.device_total, &self.device_used, &self.device_reserved] {
            family.clear();
        }
        for family in [
            &self.class_free_vram,
            &self.class_free_devices,
            &self.class_stranded,
        ] {
            family.clear();
        }
        let stranded = stranded_devices(inventory, headroom_percent);
        for node in inventory.nodes() {
            for d in &node.devices {
                let labels = DeviceLabels {
                    node: node.name.clone(),
                    device: d.index.to_string(),
                    class: d.class.to_string(),
                };
                let set = |family: &Family<DeviceLabels, Gauge>, value: u64| {
                    family
                        .get_or_create(&labels)
                        .set(value.min(i64::MAX as u64) as i64);
                };
                set(&self.device_total, d.total_mib);
                set(&self.device_used, d.measured_used_mib);
                set(&self.device_reserved, d.reserved_mib);
                let class = ClassLabels {
                    class: d.class.to_string(),
                };
                if d.healthy {
                    self.class_free_vram
                        .get_or_create(&class)
                        .inc_by(d.free_mib(headroom_percent).min(i64::MAX as u64) as i64);
                    let free = self.class_free_devices.get_or_create(&class);
                    if !d.is_busy() {
                        free.inc();
                    }
                }
                let held = self.class_stranded.get_or_create(&class);
                if stranded.contains(&(node.name.clone(), d.index)) {
                    held.inc();
                }
            }
        }
    }

    /// Sets the watch and reservation gauges from the cluster state.
    pub fn refresh_watch(&self, cluster: &ExtenderState) {
        self.reservations.set(cluster.reserved_pods() as i64);
        for (resource, name) in [
            (WatchedResource::Nodes, "nodes"),
            (WatchedResource::Pods, "pods"),
        ] {
            let labels = ResourceLabels {
                resource: name.into(),
            };
            if let Some(age) = cluster.health.last_event_age(resource) {
                self.watch_age.get_or_create(&labels).set(age.as_secs_f64());
            }
            self.watch_errors
                .get_or_create(&labels)
                .set(cluster.health.errors(resource) as i64);
        }
    }

    /// Renders the text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
