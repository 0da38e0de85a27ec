//! Loading cluster snapshots and pod files: a `kubectl get nodes,pods -A -o yaml` dump (a
//! `List`), multi-document YAML, a JSON object, or a JSON array, all as they are.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::k8s::{Node, Pod};

/// Why a file could not be loaded. Always names the file, and the line where known.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Parse {
        path: PathBuf,
        line: Option<usize>,
        message: String,
    },
}

/// Nodes and pods read from a file, plus what was skipped.
#[derive(Debug, Default)]
pub struct Objects {
    pub nodes: Vec<Node>,
    pub pods: Vec<Pod>,
    /// Kind → count of objects that are neither Node nor Pod.
    pub skipped: BTreeMap<String, usize>,
}

/// Reads a file of Kubernetes objects.
pub fn load_file(path: &Path) -> Result<Objects, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_objects(&text, path)
}

/// Parses documents into raw values: JSON when the text starts with `{` or `[`, else YAML.
pub fn parse_documents(text: &str, path: &Path) -> Result<Vec<Value>, LoadError> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        let value: Value = serde_json::from_str(text).map_err(|e| LoadError::Parse {
            path: path.to_path_buf(),
            line: Some(e.line()),
            message: e.to_string(),
        })?;
        return Ok(vec![value]);
    }
    let mut docs = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(text) {
        let value: Value =
            serde::Deserialize::deserialize(document).map_err(|e: serde_yaml_ng::Error| {
                LoadError::Parse {
                    path: path.to_path_buf(),
                    line: e.location().map(|l| l.line()),
                    message: e.to_string(),
                }
            })?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// Flattens Lists and arrays into single objects.
fn flatten(value: Value, out: &mut Vec<Value>) {
    match value {
        Value::Array(items) => items.into_iter().for_each(|v| flatten(v, out)),
        Value::Object(ref map)
            if map.get("items").is_some_and(Value::is_array) && !map.contains_key("spec") =>
        {
            if let Value::Object(mut map) = value {
                if let Some(items) = map.remove("items") {
                    flatten(items, out);
                }
            }
        }
        other => out.push(other),
    }
}

/// Parses text holding Node and Pod objects.
pub fn parse_objects(text: &str, path: &Path) -> Result<Objects, LoadError> {
    let mut flat = Vec::new();
    for doc in parse_documents(text, path)? {
        flatten(doc, &mut flat);
    }
    let mut objects = Objects::default();
    for (i, value) in flat.into_iter().enumerate() {
        let kind = value
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let err = |message: String| LoadError::Parse {
            path: path.to_path_buf(),
            line: None,
            message: format!(
                "object #{} ({}): {message}",
                i + 1,
                if kind.is_empty() { "no kind" } else { &kind }
            ),
        };
        match kind.as_str() {
            "Node" => objects
                .nodes
                .push(serde_json::from_value(value).map_err(|e| err(e.to_string()))?),
            "Pod" => objects
                .pods
                .push(serde_json::from_value(value).map_err(|e| err(e.to_string()))?),
            "" => return Err(err("missing `kind`".into())),
            other => *objects.skipped.entry(other.to_string()).or_default() += 1,
        }
    }
    for node in &objects.nodes {
        if node.metadata.name.is_empty() {
            return Err(LoadError::Parse {
                path: path.to_path_buf(),
                line: None,
                message: "a Node has no metadata.name".into(),
            });
        }
    }
    for pod in &objects.pods {
        if pod.metadata.name.is_empty() {
            return Err(LoadError::Parse {
                path: path.to_path_buf(),
                line: None,
                message: "a Pod has no metadata.name".into(),
            });
        }
    }
    Ok(objects)
}
