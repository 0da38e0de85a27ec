//! Placement configuration: headroom, staleness, VRAM tables, and the scoring profiles that
//! `spec.schedulerName` selects. Everything has a documented default (docs/configuration.md).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::workload::{WorkloadParams, WorkloadParamsError};

/// Weights of the named score terms. Each term is in `0..=1`; a node's score is
/// `round(10 × Σ weight·term / Σ weight)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Weights {
    /// Prefer the device whose VRAM is left least idle (smallest class that fits).
    #[serde(default)]
    pub fit: f64,
    /// Prefer nodes whose devices are already busy, so whole nodes stay whole.
    #[serde(default)]
    pub packing: f64,
    /// Prefer zones holding fewer replicas of the same model.
    #[serde(default)]
    pub zone_spread: f64,
    /// Prefer nodes holding no replica of the same model.
    #[serde(default)]
    pub node_spread: f64,
    /// Prefer the node (and device) whose fragmentation against the expected workload grows
    /// least (see `core::frag`).
    #[serde(default)]
    pub frag: f64,
    /// Prefer the node whose free cpu and memory stay in proportion to its free VRAM for the
    /// expected workload (see `core::score`): fewer GPUs stranded without cpu. Counts only where
    /// nodes' free cpu/memory are known, and only together with `frag`.
    #[serde(default)]
    pub host_balance: f64,
    /// Prefer the device a sharing pod leaves in the state the expected workload can still
    /// fill: its fragmentation now plus after one more expected pod lands (see `core::frag`).
    /// Counts only together with `frag`.
    #[serde(default)]
    pub lookahead: f64,
    /// Most a model's replica count may differ between the candidate zones (kube-scheduler's
    /// `maxSkew` for zones): a node whose zone would hold more than the emptiest candidate zone
    /// plus this, after the pod lands, scores below every node whose zone keeps within it.
    /// `None` (omitted): no limit, only the `zoneSpread` term.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_zone_skew: Option<u32>,
}

impl Weights {
    fn is_valid(&self) -> bool {
        let all = [
            self.fit,
            self.packing,
            self.zone_spread,
            self.node_spread,
            self.frag,
            self.host_balance,
            self.lookahead,
        ];
        all.iter().all(|w| w.is_finite() && *w >= 0.0) && all.iter().sum::<f64>() > 0.0
    }
}

/// The configuration of the placement core.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct Config {
    /// Percent of each device kept free after placement unless the pod says otherwise.
    pub headroom_percent: u8,
    /// A `vramfit.io/gpu-status` report older than this many seconds is ignored.
    pub report_ttl_seconds: u64,
    /// VRAM (MiB) assumed for devices whose size no source tells. `None` rejects such nodes.
    pub default_device_vram_mib: Option<u64>,
    /// Ascend chip name → HBM MiB; merged over the built-in table.
    pub ascend_hbm_mib: BTreeMap<String, u64>,
    /// Treat every node as sharing devices by VRAM (else only nodes labelled `vramfit.io/sharing: vram`).
    pub sharing_all_nodes: bool,
    /// Scheduler name → weight profile.
    pub profiles: BTreeMap<String, Weights>,
    /// Profile used for a scheduler name that has none of its own.
    pub default_profile: String,
    /// The workload model the fragmentation term measures against.
    pub workload: WorkloadParams,
    /// Resolution of the `frag` term: it is rounded down to a multiple of this, so changes too
    /// small to matter tie and the other terms decide (0: exact).
    pub frag_step: f64,
    /// Resolution of the `hostBalance` term, as `frag_step` is of `frag` (0: exact).
    pub host_balance_step: f64,
    /// Write `controller.kubernetes.io/pod-deletion-cost` at bind, so scale-downs delete the
    /// replicas of a model's fullest zones and those on oversized devices first (`core::deletion`).
    pub deletion_cost: bool,
}

/// Name of the bin-packing profile.
pub const PROFILE_BINPACK: &str = "vramfit-binpack";
/// Name of the spreading profile.
pub const PROFILE_SPREAD: &str = "vramfit-spread";

impl Default for Config {
    fn default() -> Self {
        let mut profiles = BTreeMap::new();
        profiles.insert(PROFILE_BINPACK.to_string(), FALLBACK_WEIGHTS);
        profiles.insert(
            PROFILE_SPREAD.to_string(),
            Weights {
                fit: 6.0,
                packing: 0.0,
                zone_spread: 4.0,
                node_spread: 3.0,
                frag: 4.0,
                host_balance: 4.0,
                lookahead: SPREAD_LOOKAHEAD,
                max_zone_skew: Some(SPREAD_MAX_ZONE_SKEW),
            },
        );
        Config {
            headroom_percent: 15,
            report_ttl_seconds: 60,
            default_device_vram_mib: None,
            ascend_hbm_mib: BTreeMap::new(),
            sharing_all_nodes: false,
            profiles,
            default_profile: PROFILE_BINPACK.to_string(),
            workload: WorkloadParams::default(),
            frag_step: 0.04,
            host_balance_step: 0.12,
            deletion_cost: true,
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    /// `headroomPercent` is above 90.
    #[error("headroomPercent must be 0..=90, got {0}")]
    Headroom(u8),
    /// A profile's weights are negative, not finite, or all zero; names the profile.
    #[error("profile {0:?}: weights must be finite, non-negative, and not all zero")]
    Weights(String),
    /// A profile's `maxZoneSkew` is 0; names the profile.
    #[error("profile {0:?}: maxZoneSkew must be at least 1")]
    MaxZoneSkew(String),
    /// `defaultProfile` names no configured profile.
    #[error("defaultProfile {0:?} is not among the profiles")]
    DefaultProfile(String),
    /// `defaultDeviceVramMib` is 0.
    #[error("defaultDeviceVramMib must be positive")]
    DefaultVram,
    /// An `ascendHbmMib` entry is 0; names the chip.
    #[error("ascendHbmMib[{0:?}] must be positive")]
    AscendHbm(String),
    /// The workload parameters are invalid.
    #[error(transparent)]
    Workload(#[from] WorkloadParamsError),
    /// `fragStep` is outside 0..=0.5.
    #[error("fragStep must be in 0..=0.5, got {0}")]
    FragStep(f64),
    /// `hostBalanceStep` is outside 0..=0.5.
    #[error("hostBalanceStep must be in 0..=0.5, got {0}")]
    HostBalanceStep(f64),
}

const FALLBACK_WEIGHTS: Weights = Weights {
    fit: 0.2,
    packing: 0.0,
    zone_spread: 0.1,
    node_spread: 0.05,
    frag: 10.0,
    host_balance: 8.0,
    lookahead: BINPACK_LOOKAHEAD,
    max_zone_skew: Some(BINPACK_MAX_ZONE_SKEW),
};

/// `lookahead` weight of the built-in `vramfit-binpack` profile.
const BINPACK_LOOKAHEAD: f64 = 40.0;
/// `lookahead` weight of the built-in `vramfit-spread` profile.
const SPREAD_LOOKAHEAD: f64 = 4.0;

/// `maxZoneSkew` of the built-in `vramfit-spread` profile: replicas as even as the zones allow.
pub const SPREAD_MAX_ZONE_SKEW: u32 = 1;
/// `maxZoneSkew` of the built-in `vramfit-binpack` profile: kube-scheduler's own default for
/// zones, so packing never puts most replicas of a model in one zone.
pub const BINPACK_MAX_ZONE_SKEW: u32 = 5;

/// Largest headroom a config or pod may ask for.
pub const MAX_HEADROOM_PERCENT: u8 = 90;

impl Config {
    /// Checks the invariants the core relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.headroom_percent > MAX_HEADROOM_PERCENT {
            return Err(ConfigError::Headroom(self.headroom_percent));
        }
        for (name, weights) in &self.profiles {
            if !weights.is_valid() {
                return Err(ConfigError::Weights(name.clone()));
            }
            if weights.max_zone_skew == Some(0) {
                return Err(ConfigError::MaxZoneSkew(name.clone()));
            }
        }
        if !self.profiles.contains_key(&self.default_profile) {
            return Err(ConfigError::DefaultProfile(self.default_profile.clone()));
        }
        if self.default_device_vram_mib == Some(0) {
            return Err(ConfigError::DefaultVram);
        }
        if let Some((chip, _)) = self.ascend_hbm_mib.iter().find(|(_, mib)| **mib == 0) {
            return Err(ConfigError::AscendHbm(chip.clone()));
        }
        self.workload.validate()?;
        if !(0.0..=0.5).contains(&self.frag_step) {
            return Err(ConfigError::FragStep(self.frag_step));
        }
        if !(0.0..=0.5).contains(&self.host_balance_step) {
            return Err(ConfigError::HostBalanceStep(self.host_balance_step));
        }
        Ok(())
    }

    /// `fragStep` and `hostBalanceStep`, as scoring takes them.
    pub fn steps(&self) -> super::score::Steps {
        super::score::Steps {
            frag: self.frag_step,
            host_balance: self.host_balance_step,
        }
    }

    /// The weights for a pod's `spec.schedulerName` (the default profile when unknown).
    pub fn profile_for(&self, scheduler_name: Option<&str>) -> (&str, &Weights) {
        if let Some((name, weights)) = scheduler_name.and_then(|n| self.profiles.get_key_value(n)) {
            return (name.as_str(), weights);
        }
        match self.profiles.get_key_value(&self.default_profile) {
            Some((name, weights)) => (name.as_str(), weights),
            // Only reachable with a config that skipped `validate`.
            None => (PROFILE_BINPACK, &FALLBACK_WEIGHTS),
        }
    }

    /// The `maxZoneSkew` of the profile a pod with `scheduler_name` is scored by (see
    /// [`Config::profile_for`]); `None` when that profile sets none.
    pub fn max_zone_skew(&self, scheduler_name: Option<&str>) -> Option<u32> {
        self.profile_for(scheduler_name).1.max_zone_skew
    }

    /// HBM of an Ascend chip (`910B3`, `310P`, …) in MiB: config first, then the built-in table.
    /// Config keys may be written `910B3`, `910b3` or `Ascend910B3`.
    pub fn ascend_hbm(&self, chip: &str) -> Option<u64> {
        let configured = self
            .ascend_hbm_mib
            .iter()
            .find(|(key, _)| super::node::normalize_ascend_chip(key) == chip);
        match configured {
            Some((_, mib)) => Some(*mib),
            None => builtin_ascend_hbm(chip),
        }
    }
}

/// The built-in Ascend HBM table (MiB).
pub fn builtin_ascend_hbm(chip: &str) -> Option<u64> {
    Some(match chip {
        "910A" => 32768,
        "910B2" | "910B3" | "910B4-1" | "910C" => 65536,
        "910B4" => 32768,
        "310P" => 24576,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid_and_has_both_profiles() {
        let config = Config::default();
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(
            config.profile_for(Some("vramfit-spread")).0,
            "vramfit-spread"
        );
        assert_eq!(config.profile_for(Some("other")).0, "vramfit-binpack");
        assert_eq!(config.profile_for(None).0, "vramfit-binpack");
    }

    #[test]
    fn config_overrides_ascend_table() {
        let mut config = Config::default();
        assert_eq!(config.ascend_hbm("910B4"), Some(32768));
        config.ascend_hbm_mib.insert("Ascend910b4".into(), 30000);
        assert_eq!(config.ascend_hbm("910B4"), Some(30000));
        assert_eq!(config.ascend_hbm("910C"), Some(65536));
        assert_eq!(
            config.ascend_hbm("910B1"),
            None,
            "unverified sizes are not guessed"
        );
        assert_eq!(config.ascend_hbm("910X"), None);
    }

    #[test]
    fn invalid_configs_are_refused() {
        let mut config = Config {
            headroom_percent: 95,
            ..Config::default()
        };
        assert_eq!(config.validate(), Err(ConfigError::Headroom(95)));
        config.headroom_percent = 10;
        config.default_profile = "missing".into();
        assert_eq!(
            config.validate(),
            Err(ConfigError::DefaultProfile("missing".into()))
        );
        config.default_profile = PROFILE_BINPACK.into();
        config.profiles.get_mut(PROFILE_BINPACK).unwrap().fit = f64::NAN;
        assert_eq!(
            config.validate(),
            Err(ConfigError::Weights(PROFILE_BINPACK.into()))
        );
        config.profiles.get_mut(PROFILE_BINPACK).unwrap().fit = 1.0;
        config
            .profiles
            .get_mut(PROFILE_BINPACK)
            .unwrap()
            .max_zone_skew = Some(0);
        assert_eq!(
            config.validate(),
            Err(ConfigError::MaxZoneSkew(PROFILE_BINPACK.into()))
        );
    }

    #[test]
    fn max_zone_skew_is_optional_per_profile() {
        let weights: Weights = serde_json::from_str(r#"{"fit": 1}"#).unwrap();
        assert_eq!(weights.max_zone_skew, None);
        let weights: Weights = serde_json::from_str(r#"{"fit": 1, "maxZoneSkew": 2}"#).unwrap();
        assert_eq!(weights.max_zone_skew, Some(2));
        let config = Config::default();
        assert_eq!(
            config.profile_for(Some(PROFILE_SPREAD)).1.max_zone_skew,
            Some(1)
        );
        assert_eq!(
            config.profile_for(Some(PROFILE_BINPACK)).1.max_zone_skew,
            Some(5)
        );
    }
}
