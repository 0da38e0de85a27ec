//! The model catalog: model name → VRAM per device, with optional allowed products and devices.
//!
//! ```yaml
//! models:
//!   llama-3-70b: { vram: 38Gi, devices: 2, products: [A100, H100] }
//!   whisper-large-v3: { vram: 10Gi }
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;

use super::quantity::parse_mib;

/// One catalog entry as written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// VRAM per device, a Kubernetes quantity (`38Gi`).
    pub vram: String,
    /// Devices the model needs at least.
    #[serde(default)]
    pub devices: Option<u32>,
    /// Allowed products or classes.
    #[serde(default)]
    pub products: Vec<String>,
}

/// A validated catalog entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelEntry {
    /// VRAM per device in MiB.
    pub vram_mib: u64,
    /// Devices the model needs, when the catalog says.
    pub devices: Option<u32>,
    /// Allowed products or classes; empty allows all.
    pub products: Vec<String>,
}

/// Model name → entry.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Catalog {
    /// Entries by model name (the `vramfit.io/model` label).
    pub models: BTreeMap<String, ModelEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    #[serde(default)]
    models: BTreeMap<String, ModelSpec>,
}

/// Why a catalog was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CatalogError {
    /// A model's `vram` is unreadable, zero or over 1 TiB.
    #[error("model {model:?}: vram {value:?}: {reason}")]
    Vram {
        /// The model.
        model: String,
        /// The `vram` as written.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A model's `devices` is outside 1..=64.
    #[error("model {0:?}: devices must be 1..=64")]
    Devices(String),
    /// The document is not a `models:` map of entries (the decoder's message).
    #[error("{0}")]
    Format(String),
}

impl Catalog {
    /// Validates catalog entries given as written.
    pub fn from_specs(specs: BTreeMap<String, ModelSpec>) -> Result<Self, CatalogError> {
        let mut models = BTreeMap::new();
        for (model, spec) in specs {
            let vram_mib = parse_mib(&spec.vram).map_err(|e| CatalogError::Vram {
                model: model.clone(),
                value: spec.vram.clone(),
                reason: e.to_string(),
            })?;
            if vram_mib == 0 || vram_mib > super::demand::MAX_VRAM_MIB {
                return Err(CatalogError::Vram {
                    model,
                    value: spec.vram,
                    reason: "must be more than 0 and at most 1Ti".into(),
                });
            }
            if matches!(spec.devices, Some(d) if d == 0 || d > 64) {
                return Err(CatalogError::Devices(model));
            }
            models.insert(
                model,
                ModelEntry {
                    vram_mib,
                    devices: spec.devices,
                    products: spec.products,
                },
            );
        }
        Ok(Catalog { models })
    }

    /// Parses the `models:` document (already decoded from YAML or JSON by the caller).
    pub fn from_value(value: serde_json::Value) -> Result<Self, CatalogError> {
        let file: CatalogFile =
            serde_json::from_value(value).map_err(|e| CatalogError::Format(e.to_string()))?;
        Catalog::from_specs(file.models)
    }
}
