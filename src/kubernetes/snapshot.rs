//! Loading cluster snapshots and pod files: a `kubectl get nodes,pods -A -o yaml` dump (a
//! `List`), multi-document YAML, a JSON object, or a JSON array, all as they are.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::kubernetes::objects::{Node, Pod};

/// Why a file could not be loaded. Always names the file, and the line where known.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The reading error.
        source: std::io::Error,
    },
    /// The file's content is not what was expected.
    #[error("{path}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The line, when known (1-based).
        line: Option<usize>,
        /// What is wrong.
        message: String,
    },
}

/// Nodes and pods read from a file, plus what was skipped.
#[derive(Debug, Default)]
pub struct Objects {
    /// The Nodes, in file order.
    pub nodes: Vec<Node>,
    /// The Pods, in file order (workloads' replicas expanded when asked).
    pub pods: Vec<Pod>,
    /// Kind → count of objects that are neither Node nor Pod (nor, when expanding, a workload).
    pub skipped: BTreeMap<String, usize>,
}

/// Workload kinds whose pod template `load_workloads` expands into replicas.
pub const WORKLOAD_KINDS: &[&str] = &["Deployment", "StatefulSet", "ReplicaSet", "Job"];

/// Reads a cluster snapshot: Nodes and Pods as they are (workloads are skipped, their pods are
/// already listed).
pub fn load_file(path: &Path) -> Result<Objects, LoadError> {
    parse_objects(&read(path)?, path, false)
}

/// Reads pods to place: Pods, and Deployments / StatefulSets / ReplicaSets / Jobs expanded into
/// their replicas' pods (`replicas`, or a Job's `parallelism`, default 1).
pub fn load_workloads(path: &Path) -> Result<Objects, LoadError> {
    parse_objects(&read(path)?, path, true)
}

fn read(path: &Path) -> Result<String, LoadError> {
    std::fs::read_to_string(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Most replicas one workload may expand to in a dry run.
const MAX_REPLICAS: u64 = 10_000;

fn expand(value: &Value, kind: &str) -> Result<Vec<Pod>, String> {
    let name = value
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    if name.is_empty() {
        return Err("has no metadata.name".into());
    }
    let namespace = value
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let count_at = |pointer: &str| -> Result<Option<u64>, String> {
        match value.pointer(pointer) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                format!(
                    "{} must be a non-negative integer, got {v}",
                    pointer.trim_start_matches('/').replace('/', ".")
                )
            }),
        }
    };
    let replicas = if kind == "Job" {
        let parallelism = count_at("/spec/parallelism")?.unwrap_or(1);
        count_at("/spec/completions")?.map_or(parallelism, |c| parallelism.min(c))
    } else {
        count_at("/spec/replicas")?.unwrap_or(1)
    };
    if replicas > MAX_REPLICAS {
        return Err(format!(
            "{replicas} replicas is more than a dry run takes ({MAX_REPLICAS})"
        ));
    }
    let template = value
        .pointer("/spec/template")
        .ok_or("has no spec.template")?;
    let template: Pod =
        serde_json::from_value(template.clone()).map_err(|e| format!("spec.template: {e}"))?;
    Ok((0..replicas)
        .map(|i| {
            let mut pod = template.clone();
            pod.metadata.name = format!("{name}-{i}");
            pod.metadata.namespace = namespace.to_string();
            pod.metadata.uid = format!("{namespace}/{name}-{i}");
            pod.metadata.owner_references = vec![crate::kubernetes::objects::OwnerReference {
                kind: kind.to_string(),
                name: name.to_string(),
                controller: true,
            }];
            pod.spec.node_name = String::new();
            pod
        })
        .collect())
}

/// Deepest nesting a snapshot or pod file may have. Kubernetes objects nest about 15 deep;
/// JSON input is held to 128 by its parser, YAML is checked before parsing (a YAML parser
/// takes seconds to refuse a file nested 100,000 deep).
pub const MAX_NESTING: usize = 128;

/// Refuses YAML nested deeper than [`MAX_NESTING`]: by flow brackets (`[`, `{`, outside quotes
/// and comments) or by block indentation (columns of leading spaces, and `- ` list markers
/// opening a line). An over-estimate is fine: real files stay far below the limit.
/// The error names the file and the line where the limit was passed.
fn check_yaml_nesting(text: &str, path: &Path) -> Result<(), LoadError> {
    let mut flow: usize = 0;
    for (number, line) in text.lines().enumerate() {
        let too_deep = |depth: usize| LoadError::Parse {
            path: path.to_path_buf(),
            line: Some(number + 1),
            message: format!("nested at least {depth} levels deep; at most {MAX_NESTING} are read"),
        };
        let indent = line.len() - line.trim_start_matches(' ').len();
        let mut rest = &line[indent..];
        let mut markers = 0;
        while let Some(after) = rest.strip_prefix("- ").or_else(|| rest.strip_prefix("-\t")) {
            markers += 1;
            rest = after.trim_start_matches(' ');
        }
        // Two columns per level is the usual indentation; allow one column per level.
        if indent + markers > MAX_NESTING * 2 {
            return Err(too_deep(indent + markers));
        }
        let mut quote: Option<char> = None;
        for c in rest.chars() {
            match (quote, c) {
                (None, '#') => break,
                (None, '"' | '\'') => quote = Some(c),
                (Some(q), c) if c == q => quote = None,
                (None, '[' | '{') => {
                    flow += 1;
                    if flow > MAX_NESTING {
                        return Err(too_deep(flow));
                    }
                }
                (None, ']' | '}') => flow = flow.saturating_sub(1),
                _ => {}
            }
        }
    }
    Ok(())
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
    check_yaml_nesting(text, path)?;
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

/// Parses text holding Node and Pod objects (and, with `expand_workloads`, workloads).
pub fn parse_objects(
    text: &str,
    path: &Path,
    expand_workloads: bool,
) -> Result<Objects, LoadError> {
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
            workload if expand_workloads && WORKLOAD_KINDS.contains(&workload) => {
                objects.pods.extend(expand(&value, workload).map_err(err)?)
            }
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
    if !expand_workloads {
        objects.order_for_loading();
    }
    Ok(objects)
}

impl Objects {
    /// Puts bound pods that carry `vramfit.io/assigned-devices` before the other pods, keeping
    /// file order otherwise. Loading records pods in this order, and a bound pod without the
    /// annotation gets its devices guessed around those already recorded: so a guess never
    /// takes a device that an annotated pod later in the file really holds.
    pub fn order_for_loading(&mut self) {
        let annotated = |pod: &Pod| {
            !pod.spec.node_name.is_empty()
                && pod
                    .metadata
                    .annotations
                    .0
                    .contains_key(crate::core::schedule::ANNOTATION_ASSIGNED_DEVICES)
        };
        // Stable: false (annotated) sorts first.
        self.pods.sort_by_key(|pod| !annotated(pod));
    }
}
