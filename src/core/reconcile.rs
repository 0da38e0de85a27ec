//! The ledger follows kubelet: what the node agent reports each pod really holds
//! ([`AllocatedDevices`], the Node annotation `vramfit.io/allocated-devices`) against what the
//! ledger recorded, as [`Correction`]s for whole-device pods whose devices differ.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::inventory::Placement;

/// Node annotation the agent writes: the device indices each whole-device pod on the node
/// holds, as kubelet's PodResources API reports them.
pub const ANNOTATION_ALLOCATED_DEVICES: &str = "vramfit.io/allocated-devices";

/// The `vramfit.io/allocated-devices` schema version.
pub const ALLOCATED_DEVICES_VERSION: u32 = 1;

/// The annotation's value: `{"version":1,"observedAt":"…","pods":{"ns/name":[1]}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AllocatedDevices {
    /// Schema version ([`ALLOCATED_DEVICES_VERSION`]).
    pub version: u32,
    /// When the agent asked kubelet (RFC 3339).
    pub observed_at: String,
    /// `namespace/name` → device indices on the node, ascending.
    pub pods: BTreeMap<String, Vec<u32>>,
}

/// Why an annotation value was not read.
#[derive(Debug, thiserror::Error)]
pub enum AllocatedDevicesError {
    /// The value is not valid JSON of this shape.
    #[error("{ANNOTATION_ALLOCATED_DEVICES}: {0}")]
    Json(#[from] serde_json::Error),
    /// The schema version is not [`ALLOCATED_DEVICES_VERSION`].
    #[error("{ANNOTATION_ALLOCATED_DEVICES}: schema version {0} (this vramfit reads {ALLOCATED_DEVICES_VERSION})")]
    Version(u32),
}

impl AllocatedDevices {
    /// Parses an annotation value.
    pub fn parse(raw: &str) -> Result<Self, AllocatedDevicesError> {
        let report: AllocatedDevices = serde_json::from_str(raw)?;
        if report.version != ALLOCATED_DEVICES_VERSION {
            return Err(AllocatedDevicesError::Version(report.version));
        }
        Ok(report)
    }
}

/// One ledger entry to move: pod `id` (ledger identity) from the recorded devices to the real.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Correction {
    /// The placement's ledger identity.
    pub id: String,
    /// `namespace/name`.
    pub pod: String,
    /// Device indices the ledger records, ascending.
    pub recorded: Vec<u32>,
    /// Device indices the agent reports, ascending.
    pub real: Vec<u32>,
}

/// The corrections for `node`: every whole-device placement there whose pod the report lists
/// with as many devices as recorded, but other ones. Pods the report leaves out (not admitted
/// yet, or not a whole-device pod) and reports of a different count (a stale report about an
/// earlier pod of the same name) change nothing. Sorted by pod.
pub fn corrections<'a>(
    node: &str,
    placements: impl IntoIterator<Item = (&'a String, &'a Placement)>,
    report: &AllocatedDevices,
) -> Vec<Correction> {
    let mut out: Vec<Correction> = placements
        .into_iter()
        .filter(|(_, p)| p.node == node && p.exclusive)
        .filter_map(|(id, p)| {
            let real = report.pods.get(&p.pod)?;
            let mut recorded: Vec<u32> = p.shares.iter().map(|s| s.index).collect();
            recorded.sort_unstable();
            let mut real = real.clone();
            real.sort_unstable();
            real.dedup();
            (real.len() == recorded.len() && real != recorded).then(|| Correction {
                id: id.clone(),
                pod: p.pod.clone(),
                recorded,
                real,
            })
        })
        .collect();
    out.sort_by(|a, b| a.pod.cmp(&b.pod));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::inventory::DeviceShare;

    fn placement(pod: &str, node: &str, devices: &[u32], exclusive: bool) -> Placement {
        Placement {
            pod: pod.into(),
            node: node.into(),
            zone: None,
            model: None,
            shares: devices
                .iter()
                .map(|&index| DeviceShare {
                    index,
                    vram_mib: 1000,
                })
                .collect(),
            exclusive,
        }
    }

    fn report(pods: &[(&str, &[u32])]) -> AllocatedDevices {
        AllocatedDevices {
            version: 1,
            observed_at: "2026-01-01T00:00:00Z".into(),
            pods: pods
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_vec()))
                .collect(),
        }
    }

    #[test]
    fn only_differing_whole_device_pods_on_the_node_move() {
        let ledger = [
            ("u1".to_string(), placement("ml/a", "n1", &[0], true)),
            ("u2".to_string(), placement("ml/b", "n1", &[1, 2], true)),
            ("u3".to_string(), placement("ml/c", "n1", &[3], false)),
            ("u4".to_string(), placement("ml/d", "n2", &[0], true)),
            ("u5".to_string(), placement("ml/e", "n1", &[4], true)),
            ("u6".to_string(), placement("ml/f", "n1", &[5], true)),
        ];
        let r = report(&[
            ("ml/a", &[2]),    // moved
            ("ml/b", &[2, 1]), // same set, other order
            ("ml/c", &[0]),    // sharing pod: not this report's business
            ("ml/d", &[1]),    // another node's pod
            ("ml/f", &[5, 6]), // a different count: stale
            ("ml/zz", &[7]),   // not in the ledger
        ]);
        let got = corrections("n1", ledger.iter().map(|(k, v)| (k, v)), &r);
        assert_eq!(
            got,
            [Correction {
                id: "u1".into(),
                pod: "ml/a".into(),
                recorded: vec![0],
                real: vec![2],
            }]
        );
    }

    #[test]
    fn parse_round_trips_and_refuses_other_versions() {
        let r = report(&[("ml/a", &[1])]);
        let raw = serde_json::to_string(&r).unwrap();
        assert_eq!(
            raw,
            r#"{"version":1,"observedAt":"2026-01-01T00:00:00Z","pods":{"ml/a":[1]}}"#
        );
        assert_eq!(AllocatedDevices::parse(&raw).unwrap(), r);
        let e =
            AllocatedDevices::parse(&raw.replace("\"version\":1", "\"version\":2")).unwrap_err();
        assert!(matches!(e, AllocatedDevicesError::Version(2)), "{e:?}");
        assert_eq!(
            e.to_string(),
            "vramfit.io/allocated-devices: schema version 2 (this vramfit reads 1)"
        );
        let e = AllocatedDevices::parse("{").unwrap_err();
        assert!(matches!(e, AllocatedDevicesError::Json(_)), "{e:?}");
        assert_eq!(
            e.to_string(),
            "vramfit.io/allocated-devices: EOF while parsing an object at line 1 column 1"
        );
        let e = AllocatedDevices::parse(r#"{"version":1,"observedAt":"x","pods":{"a":[-1]}}"#)
            .unwrap_err();
        assert!(matches!(e, AllocatedDevicesError::Json(_)), "{e:?}");
        assert_eq!(
            e.to_string(),
            "vramfit.io/allocated-devices: invalid value: integer `-1`, expected u32 at line 1 column 45"
        );
    }
}
