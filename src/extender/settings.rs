//! The config file (`--config`): a `placement:` section for the core and a `server:` section for
//! the HTTP layer, YAML or JSON. Plus the model catalog file (`--catalog`).

use std::path::Path;

use serde::Deserialize;

use crate::core::{Catalog, Config};
use crate::extender::http::ServerConfig;
use crate::kubernetes::snapshot::{parse_documents, LoadError};

/// The whole config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Placement and scoring settings (the core's config).
    pub placement: Config,
    /// HTTP server settings.
    pub server: ServerConfig,
}

fn single_document(path: &Path) -> Result<serde_json::Value, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut docs = parse_documents(&text, path)?;
    match docs.len() {
        0 => Ok(serde_json::Value::Object(Default::default())),
        1 => Ok(docs.remove(0)),
        n => Err(LoadError::Parse {
            path: path.to_path_buf(),
            line: None,
            message: format!("expected one document, found {n}"),
        }),
    }
}

fn invalid(path: &Path, message: String) -> LoadError {
    LoadError::Parse {
        path: path.to_path_buf(),
        line: None,
        message,
    }
}

impl Settings {
    /// Reads and validates a config file; `None` gives the defaults.
    pub fn load(path: Option<&Path>) -> Result<Settings, LoadError> {
        let settings = match path {
            None => Settings::default(),
            Some(path) => {
                let settings: Settings = serde_json::from_value(single_document(path)?)
                    .map_err(|e| invalid(path, e.to_string()))?;
                settings
                    .placement
                    .validate()
                    .map_err(|e| invalid(path, e.to_string()))?;
                if settings
                    .server
                    .leader_identity
                    .as_deref()
                    .is_some_and(|identity| identity.trim().is_empty())
                {
                    return Err(invalid(path, "leaderIdentity must not be empty".into()));
                }
                settings
            }
        };
        Ok(settings)
    }
}

/// Reads a model catalog file; `None` gives an empty catalog.
pub fn load_catalog(path: Option<&Path>) -> Result<Catalog, LoadError> {
    match path {
        None => Ok(Catalog::default()),
        Some(path) => {
            Catalog::from_value(single_document(path)?).map_err(|e| invalid(path, e.to_string()))
        }
    }
}
