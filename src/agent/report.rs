//! Readings to the core's [`GpuStatus`], and when to write it: pure functions over injected time.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::core::node::{sanitize_product, DeviceStatus, GpuStatus};

use super::devices::DeviceReading;

/// The `vramfit.io/gpu-status` schema version the agent writes.
pub const SCHEMA_VERSION: u32 = 1;

/// The latest instant humantime formats (9999-12-31T23:59:59Z).
const MAX_RFC3339_SECS: u64 = 253_402_300_799;

/// The report for `readings`, observed at `observed_at` (the agent's clock, injected).
///
/// Devices are sorted by index; products are sanitised as GFD does (`NVIDIA A100-SXM4-80GB` →
/// `NVIDIA-A100-SXM4-80GB`), `unknown` when the runtime gave none. Sizes and health are copied
/// as read: the core clamps used memory to the total itself.
pub fn gpu_status(readings: &[DeviceReading], observed_at: SystemTime) -> GpuStatus {
    let mut devices: Vec<DeviceStatus> = readings
        .iter()
        .map(|r| {
            let product = sanitize_product(&r.product);
            DeviceStatus {
                index: r.index,
                uuid: r.uuid.clone(),
                product: if product.is_empty() {
                    "unknown".into()
                } else {
                    product
                },
                total_mib: r.total_mib,
                used_mib: r.used_mib,
                healthy: r.health.is_healthy(),
            }
        })
        .collect();
    devices.sort_by_key(|d| d.index);
    GpuStatus {
        version: SCHEMA_VERSION,
        observed_at: rfc3339(observed_at),
        devices,
    }
}

/// `t` as RFC 3339 UTC to the second, clamped to 1970..=9999 (humantime panics outside).
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        .min(MAX_RFC3339_SECS);
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// The annotation value: the report as compact JSON.
pub fn annotation_value(status: &GpuStatus) -> Result<String, serde_json::Error> {
    serde_json::to_string(status)
}

/// How long to wait after failed writes: `initial × factor^(failures−1)`, at most `cap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Wait after the first failure.
    pub initial: Duration,
    /// Growth per failure; 0 is read as 1.
    pub factor: u32,
    /// Longest wait.
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            factor: 2,
            cap: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    /// The wait after `failures` consecutive failures (zero after none). Never overflows.
    pub fn delay(&self, failures: u32) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        let growth = self.factor.max(1).checked_pow(failures - 1);
        growth
            .and_then(|g| self.initial.checked_mul(g))
            .map_or(self.cap, |d| d.min(self.cap))
    }
}

/// When the agent rewrites the annotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WritePolicy {
    /// Rewrite at least this often, even when nothing changed. Keep it well under the core's
    /// `reportTtlSeconds` (60 s by default), which drops older reports.
    pub heartbeat: Duration,
    /// A device's used memory has moved when it differs from the last written value by more
    /// than this percentage of its total, or by more than `used_change_mib`: whichever is
    /// smaller decides.
    pub used_change_percent: u8,
    /// Used-memory change threshold in MiB; see `used_change_percent`.
    pub used_change_mib: u64,
    /// Wait between retries after failed writes.
    pub backoff: Backoff,
}

impl Default for WritePolicy {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(30),
            used_change_percent: 5,
            used_change_mib: 512,
            backoff: Backoff::default(),
        }
    }
}

impl WritePolicy {
    /// The used-memory change (MiB) a device of `total_mib` must exceed to be worth a write.
    pub fn used_threshold_mib(&self, total_mib: u64) -> u64 {
        let percent = total_mib.saturating_mul(u64::from(self.used_change_percent)) / 100;
        percent.min(self.used_change_mib)
    }
}

/// Why a report is worth writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteReason {
    /// Nothing was written yet.
    First,
    /// A device appeared, went away, or changed identity, product or size.
    DevicesChanged,
    /// A device's health flipped.
    HealthChanged {
        /// The device's index.
        index: u32,
    },
    /// A device's used memory moved past the threshold since the last write.
    UsedMemoryMoved {
        /// The device's index.
        index: u32,
        /// Used memory last written, in MiB.
        from_mib: u64,
        /// Used memory now, in MiB.
        to_mib: u64,
    },
    /// Nothing changed, but the last write is a heartbeat old.
    Heartbeat,
}

/// What to do with a fresh report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteDecision {
    /// Write the report, for this reason.
    Write(WriteReason),
    /// Nothing worth writing; the next heartbeat is due at `heartbeat_at`.
    Skip {
        /// When the next heartbeat is due.
        heartbeat_at: Instant,
    },
    /// Earlier writes failed; try again no sooner than `until`.
    BackOff {
        /// Earliest time to retry.
        until: Instant,
    },
}

/// The write-decision state machine: the last report written and the failures since.
///
/// Per read: [`decide`](Self::decide); after a write, [`succeeded`](Self::succeeded) or
/// [`failed`](Self::failed). Changes are judged against the last *written* report, so slow
/// drift adds up until it is worth a write.
#[derive(Debug, Clone)]
pub struct WriteState {
    policy: WritePolicy,
    last: Option<(Vec<DeviceStatus>, Instant)>,
    failures: u32,
    retry_at: Option<Instant>,
}

impl WriteState {
    /// A state with nothing written yet and no failures.
    pub fn new(policy: WritePolicy) -> Self {
        Self {
            policy,
            last: None,
            failures: 0,
            retry_at: None,
        }
    }

    /// The policy it decides by.
    pub fn policy(&self) -> &WritePolicy {
        &self.policy
    }

    /// Consecutive failed writes.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Whether `status`, read at `now`, should be written.
    pub fn decide(&self, status: &GpuStatus, now: Instant) -> WriteDecision {
        if let Some(until) = self.retry_at.filter(|t| now < *t) {
            return WriteDecision::BackOff { until };
        }
        let Some((written, at)) = &self.last else {
            return WriteDecision::Write(WriteReason::First);
        };
        if let Some(reason) = change(&self.policy, written, &status.devices) {
            return WriteDecision::Write(reason);
        }
        let heartbeat_at = *at + self.policy.heartbeat;
        if now >= heartbeat_at {
            WriteDecision::Write(WriteReason::Heartbeat)
        } else {
            WriteDecision::Skip { heartbeat_at }
        }
    }

    /// `status` was written at `now`: remember it and forget past failures.
    pub fn succeeded(&mut self, status: &GpuStatus, now: Instant) {
        self.last = Some((status.devices.clone(), now));
        self.failures = 0;
        self.retry_at = None;
    }

    /// A write failed at `now`; returns how long to wait before the next try.
    pub fn failed(&mut self, now: Instant) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let delay = self.policy.backoff.delay(self.failures);
        self.retry_at = Some(now + delay);
        delay
    }
}

/// The first meaningful change from `old` to `new`, if any.
fn change(policy: &WritePolicy, old: &[DeviceStatus], new: &[DeviceStatus]) -> Option<WriteReason> {
    let identity = |d: &DeviceStatus| (d.index, d.uuid.clone(), d.product.clone(), d.total_mib);
    let same_set =
        old.len() == new.len() && old.iter().zip(new).all(|(a, b)| identity(a) == identity(b));
    if !same_set {
        return Some(WriteReason::DevicesChanged);
    }
    if let Some(d) = old.iter().zip(new).find(|(a, b)| a.healthy != b.healthy) {
        return Some(WriteReason::HealthChanged { index: d.1.index });
    }
    old.iter().zip(new).find_map(|(a, b)| {
        let moved = a.used_mib.abs_diff(b.used_mib);
        (moved > policy.used_threshold_mib(b.total_mib)).then_some(WriteReason::UsedMemoryMoved {
            index: b.index,
            from_mib: a.used_mib,
            to_mib: b.used_mib,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::devices::{Health, MigMode};
    use std::collections::BTreeMap;

    fn reading(index: u32, product: &str, total: u64, used: u64) -> DeviceReading {
        DeviceReading {
            index,
            uuid: format!("GPU-{index}"),
            product: product.into(),
            total_mib: total,
            used_mib: used,
            free_mib: total - used,
            processes: BTreeMap::new(),
            health: Health::Healthy,
            mig: MigMode::Disabled,
        }
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn status(devices: &[(u64, bool)]) -> GpuStatus {
        let readings: Vec<DeviceReading> = devices
            .iter()
            .enumerate()
            .map(|(i, (used, healthy))| {
                let mut r = reading(i as u32, "NVIDIA A100-SXM4-80GB", 81920, *used);
                if !healthy {
                    r.health = Health::Unhealthy("test".into());
                }
                r
            })
            .collect();
        gpu_status(&readings, at(1_700_000_000))
    }

    #[test]
    fn report_sorts_sanitises_and_stamps() {
        let mut sick = reading(1, "Tesla T4", 15360, 100);
        sick.health = Health::Unhealthy("pages pending retirement".into());
        let nameless = reading(2, " ", 1000, 0);
        let s = gpu_status(
            &[
                nameless,
                sick,
                reading(0, "NVIDIA A100-SXM4-80GB", 81920, 512),
            ],
            at(1_700_000_000),
        );
        assert_eq!(
            s,
            GpuStatus {
                version: 1,
                observed_at: "2023-11-14T22:13:20Z".into(),
                devices: vec![
                    DeviceStatus {
                        index: 0,
                        uuid: "GPU-0".into(),
                        product: "NVIDIA-A100-SXM4-80GB".into(),
                        total_mib: 81920,
                        used_mib: 512,
                        healthy: true,
                    },
                    DeviceStatus {
                        index: 1,
                        uuid: "GPU-1".into(),
                        product: "Tesla-T4".into(),
                        total_mib: 15360,
                        used_mib: 100,
                        healthy: false,
                    },
                    DeviceStatus {
                        index: 2,
                        uuid: "GPU-2".into(),
                        product: "unknown".into(),
                        total_mib: 1000,
                        used_mib: 0,
                        healthy: true,
                    },
                ],
            }
        );
        assert_eq!(
            annotation_value(&s).unwrap(),
            r#"{"version":1,"observedAt":"2023-11-14T22:13:20Z","devices":[{"index":0,"uuid":"GPU-0","product":"NVIDIA-A100-SXM4-80GB","totalMiB":81920,"usedMiB":512,"healthy":true},{"index":1,"uuid":"GPU-1","product":"Tesla-T4","totalMiB":15360,"usedMiB":100,"healthy":false},{"index":2,"uuid":"GPU-2","product":"unknown","totalMiB":1000,"usedMiB":0,"healthy":true}]}"#
        );
    }

    #[test]
    fn timestamps_outside_humantime_range_are_clamped_not_panicked() {
        assert_eq!(
            rfc3339(UNIX_EPOCH - Duration::from_secs(5)),
            "1970-01-01T00:00:00Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(u64::MAX / 2)),
            "9999-12-31T23:59:59Z"
        );
        assert_eq!(
            rfc3339(at(0) + Duration::from_millis(1999)),
            "1970-01-01T00:00:01Z"
        );
    }

    #[test]
    fn backoff_doubles_to_the_cap() {
        let b = Backoff::default();
        let secs: Vec<u64> = (0..=9).map(|n| b.delay(n).as_secs()).collect();
        assert_eq!(secs, [0, 1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(60));
        let flat = Backoff {
            factor: 0,
            ..Backoff::default()
        };
        assert_eq!(flat.delay(5), Duration::from_secs(1));
        let huge = Backoff {
            initial: Duration::from_secs(u64::MAX),
            factor: 3,
            cap: Duration::from_secs(7),
        };
        assert_eq!(huge.delay(2), Duration::from_secs(7));
    }

    #[test]
    fn threshold_is_the_smaller_of_percent_and_mib() {
        let p = WritePolicy::default();
        assert_eq!(p.used_threshold_mib(81920), 512);
        assert_eq!(p.used_threshold_mib(8192), 409);
        assert_eq!(p.used_threshold_mib(0), 0);
        assert_eq!(p.used_threshold_mib(u64::MAX), 512);
    }

    #[test]
    fn first_write_then_skip_until_heartbeat() {
        let t0 = Instant::now();
        let mut w = WriteState::new(WritePolicy::default());
        let s = status(&[(1000, true), (0, true)]);
        assert_eq!(w.decide(&s, t0), WriteDecision::Write(WriteReason::First));
        w.succeeded(&s, t0);
        let due = t0 + Duration::from_secs(30);
        assert_eq!(
            w.decide(&s, t0 + Duration::from_secs(29)),
            WriteDecision::Skip { heartbeat_at: due }
        );
        assert_eq!(
            w.decide(&s, due),
            WriteDecision::Write(WriteReason::Heartbeat)
        );
        w.succeeded(&s, due);
        assert_eq!(
            w.decide(&s, due + Duration::from_secs(1)),
            WriteDecision::Skip {
                heartbeat_at: due + Duration::from_secs(30)
            }
        );
    }

    #[test]
    fn used_memory_must_move_past_the_threshold_since_the_last_write() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1);
        let mut w = WriteState::new(WritePolicy::default());
        w.succeeded(&status(&[(1000, true), (0, true)]), t0);
        // 512 MiB exactly is not more than the threshold.
        let small = status(&[(1512, true), (0, true)]);
        assert!(matches!(w.decide(&small, t1), WriteDecision::Skip { .. }));
        // Drift adds up against the last written value, in either direction.
        let more = status(&[(1000, true), (513, true)]);
        assert_eq!(
            w.decide(&more, t1),
            WriteDecision::Write(WriteReason::UsedMemoryMoved {
                index: 1,
                from_mib: 0,
                to_mib: 513
            })
        );
        let freed = status(&[(487, true), (0, true)]);
        assert_eq!(
            w.decide(&freed, t1),
            WriteDecision::Write(WriteReason::UsedMemoryMoved {
                index: 0,
                from_mib: 1000,
                to_mib: 487
            })
        );
    }

    #[test]
    fn percent_threshold_on_a_small_device() {
        let t0 = Instant::now();
        let policy = WritePolicy {
            used_change_percent: 10,
            used_change_mib: 4096,
            ..WritePolicy::default()
        };
        let mut w = WriteState::new(policy);
        let small = |used| gpu_status(&[reading(0, "Tesla T4", 15360, used)], at(0));
        w.succeeded(&small(0), t0);
        assert!(matches!(
            w.decide(&small(1536), t0),
            WriteDecision::Skip { .. }
        ));
        assert!(matches!(
            w.decide(&small(1537), t0),
            WriteDecision::Write(WriteReason::UsedMemoryMoved { .. })
        ));
    }

    #[test]
    fn health_and_device_set_changes_are_written_at_once() {
        let t0 = Instant::now();
        let mut w = WriteState::new(WritePolicy::default());
        w.succeeded(&status(&[(0, true), (0, true)]), t0);
        assert_eq!(
            w.decide(&status(&[(0, true), (0, false)]), t0),
            WriteDecision::Write(WriteReason::HealthChanged { index: 1 })
        );
        assert_eq!(
            w.decide(&status(&[(0, true)]), t0),
            WriteDecision::Write(WriteReason::DevicesChanged)
        );
        // Same count, another device in slot 1: identity changed.
        let mut swapped = status(&[(0, true), (0, true)]);
        swapped.devices[1].uuid = "GPU-other".into();
        assert_eq!(
            w.decide(&swapped, t0),
            WriteDecision::Write(WriteReason::DevicesChanged)
        );
        // The set wins over health and memory when both change.
        assert_eq!(
            w.decide(&status(&[(9000, false)]), t0),
            WriteDecision::Write(WriteReason::DevicesChanged)
        );
    }

    #[test]
    fn failures_back_off_and_success_resets() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut w = WriteState::new(WritePolicy::default());
        let report = status(&[(0, true)]);
        assert_eq!(w.failed(t0), s(1));
        assert_eq!(
            w.decide(&report, t0),
            WriteDecision::BackOff { until: t0 + s(1) }
        );
        assert_eq!(
            w.decide(&report, t0 + s(1)),
            WriteDecision::Write(WriteReason::First)
        );
        assert_eq!(w.failed(t0 + s(1)), s(2));
        assert_eq!(w.failed(t0 + s(3)), s(4));
        assert_eq!(w.failures(), 3);
        assert_eq!(
            w.decide(&report, t0 + s(5)),
            WriteDecision::BackOff { until: t0 + s(7) }
        );
        w.succeeded(&report, t0 + s(7));
        assert_eq!(w.failures(), 0);
        assert_eq!(
            w.decide(&report, t0 + s(8)),
            WriteDecision::Skip {
                heartbeat_at: t0 + s(37)
            }
        );
        assert_eq!(w.failed(t0 + s(40)), s(1));
    }

    #[test]
    fn a_failed_heartbeat_is_retried_after_the_backoff() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut w = WriteState::new(WritePolicy::default());
        let report = status(&[(0, true)]);
        w.succeeded(&report, t0);
        assert_eq!(
            w.decide(&report, t0 + s(30)),
            WriteDecision::Write(WriteReason::Heartbeat)
        );
        w.failed(t0 + s(30));
        assert_eq!(
            w.decide(&report, t0 + s(30)),
            WriteDecision::BackOff { until: t0 + s(31) }
        );
        assert_eq!(
            w.decide(&report, t0 + s(31)),
            WriteDecision::Write(WriteReason::Heartbeat)
        );
    }
}
