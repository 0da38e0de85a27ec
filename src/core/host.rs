//! Host resources (cpu and memory) next to the accelerators: what each node can give, what the
//! pods bound or reserved there ask for, and so what is free for the fragmentation terms.
//!
//! kube-scheduler checks cpu and memory itself; vramfit only needs to know how much of each a
//! node has left so that the `frag` and `hostBalance` terms can tell a GPU that still has the
//! cpu to run something from one that does not. The [`HostLedger`] keeps every pod's request
//! (accelerator-free pods included: they use cpu on GPU nodes too) by pod id, so an update, a
//! move or a deletion is counted exactly once.

use rustc_hash::FxHashMap;
use serde::Serialize;

/// Host resources (cpu milli-cores, memory MiB): allocatable or free on a node, or requested by
/// a pod.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Host {
    /// CPU in millicores.
    pub cpu_milli: u64,
    /// Memory in MiB.
    pub memory_mib: u64,
}

impl Host {
    /// What is left of `self` after `request`, never below zero.
    pub fn minus(self, request: Host) -> Host {
        Host {
            cpu_milli: self.cpu_milli.saturating_sub(request.cpu_milli),
            memory_mib: self.memory_mib.saturating_sub(request.memory_mib),
        }
    }

    fn plus(self, other: Host) -> Host {
        Host {
            cpu_milli: self.cpu_milli.saturating_add(other.cpu_milli),
            memory_mib: self.memory_mib.saturating_add(other.memory_mib),
        }
    }
}

/// Per node: allocatable cpu/memory and the sum of the requests of the pods held there; per pod:
/// where it is held and what it asks.
#[derive(Debug, Clone, Default)]
pub struct HostLedger {
    allocatable: FxHashMap<String, Host>,
    requested: FxHashMap<String, Host>,
    pods: FxHashMap<String, (String, Host)>,
}

impl HostLedger {
    /// Sets (or, with `None`, forgets) a node's allocatable cpu/memory; returns the previous.
    pub fn set_allocatable(&mut self, node: &str, allocatable: Option<Host>) -> Option<Host> {
        match allocatable {
            Some(a) => self.allocatable.insert(node.to_string(), a),
            None => self.allocatable.remove(node),
        }
    }

    /// Holds `request` for pod `pod` on `node`, replacing what the pod held before (anywhere).
    /// Returns the node it was held on before, if any.
    pub fn hold(&mut self, pod: &str, node: &str, request: Host) -> Option<String> {
        let before = self.release(pod);
        let sum = self.requested.entry(node.to_string()).or_default();
        *sum = sum.plus(request);
        self.pods
            .insert(pod.to_string(), (node.to_string(), request));
        before
    }

    /// Releases whatever pod `pod` held; returns the node it was held on.
    pub fn release(&mut self, pod: &str) -> Option<String> {
        let (node, request) = self.pods.remove(pod)?;
        if let Some(sum) = self.requested.get_mut(&node) {
            *sum = sum.minus(request);
            if *sum == Host::default() {
                self.requested.remove(&node);
            }
        }
        Some(node)
    }

    /// Where pod `pod` is held and what it asks, if it is held.
    pub fn held(&self, pod: &str) -> Option<(&str, Host)> {
        self.pods.get(pod).map(|(node, h)| (node.as_str(), *h))
    }

    /// The ids of every held pod.
    pub fn pods(&self) -> impl Iterator<Item = &String> {
        self.pods.keys()
    }

    /// A node's free cpu/memory: allocatable minus what its pods ask; `None` when its
    /// allocatable is not known.
    pub fn free(&self, node: &str) -> Option<Host> {
        let allocatable = *self.allocatable.get(node)?;
        Some(allocatable.minus(self.requested.get(node).copied().unwrap_or_default()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(cpu_milli: u64, memory_mib: u64) -> Host {
        Host {
            cpu_milli,
            memory_mib,
        }
    }

    #[test]
    fn free_is_allocatable_minus_the_pods_held() {
        let mut ledger = HostLedger::default();
        assert_eq!(ledger.free("n1"), None, "allocatable unknown");
        ledger.set_allocatable("n1", Some(host(8_000, 32_768)));
        assert_eq!(ledger.free("n1"), Some(host(8_000, 32_768)));
        assert_eq!(ledger.hold("a", "n1", host(2_000, 4_096)), None);
        assert_eq!(ledger.hold("b", "n1", host(500, 1_024)), None);
        assert_eq!(ledger.free("n1"), Some(host(5_500, 27_648)));
        // Held before the node's allocatable is known: counted once it is.
        ledger.hold("c", "n2", host(1_000, 1_000));
        ledger.set_allocatable("n2", Some(host(4_000, 4_000)));
        assert_eq!(ledger.free("n2"), Some(host(3_000, 3_000)));
        // More asked than allocatable: nothing free, never an underflow.
        ledger.hold("d", "n2", host(10_000, 10_000));
        assert_eq!(ledger.free("n2"), Some(host(0, 0)));
    }

    #[test]
    fn a_pod_counts_once_whatever_its_events() {
        let mut ledger = HostLedger::default();
        ledger.set_allocatable("n1", Some(host(8_000, 8_000)));
        ledger.set_allocatable("n2", Some(host(8_000, 8_000)));
        ledger.hold("a", "n1", host(1_000, 1_000));
        // The same event again, then a changed request: replaced, not added.
        assert_eq!(
            ledger.hold("a", "n1", host(1_000, 1_000)),
            Some("n1".into())
        );
        ledger.hold("a", "n1", host(3_000, 2_000));
        assert_eq!(ledger.free("n1"), Some(host(5_000, 6_000)));
        // Held elsewhere now: the first node gets it back.
        assert_eq!(
            ledger.hold("a", "n2", host(3_000, 2_000)),
            Some("n1".into())
        );
        assert_eq!(ledger.free("n1"), Some(host(8_000, 8_000)));
        assert_eq!(ledger.free("n2"), Some(host(5_000, 6_000)));
        assert_eq!(ledger.held("a"), Some(("n2", host(3_000, 2_000))));
        assert_eq!(ledger.release("a"), Some("n2".into()));
        assert_eq!(ledger.release("a"), None);
        assert_eq!(ledger.free("n2"), Some(host(8_000, 8_000)));
        assert_eq!(ledger.pods().count(), 0);
    }

    #[test]
    fn sums_follow_a_random_sequence_of_holds_and_releases() {
        // A small deterministic generator: the sums must equal a recount from scratch.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        };
        let mut ledger = HostLedger::default();
        for n in 0..4 {
            ledger.set_allocatable(&format!("n{n}"), Some(host(u64::MAX / 2, u64::MAX / 2)));
        }
        for _ in 0..10_000 {
            let pod = format!("p{}", next(50));
            if next(3) == 0 {
                ledger.release(&pod);
            } else {
                let node = format!("n{}", next(4));
                ledger.hold(&pod, &node, host(next(4_000), next(16_384)));
            }
        }
        for n in 0..4 {
            let node = format!("n{n}");
            let recount = ledger
                .pods
                .values()
                .filter(|(on, _)| *on == node)
                .fold(Host::default(), |sum, (_, h)| sum.plus(*h));
            let expected = host(u64::MAX / 2, u64::MAX / 2).minus(recount);
            assert_eq!(ledger.free(&node), Some(expected), "{node}");
        }
    }
}
