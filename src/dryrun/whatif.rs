//! `--add-nodes SPEC`: nodes that do not exist yet, to answer "what do I have to buy for these
//! pending models". A SPEC is `[N x] CLASS[:DEVICES][@ZONE]` (`2x T4`, `1x A100:8@zone-b`,
//! `910B3:8`) or `[N x] FILE` with a Node object to copy.

use std::path::Path;

use serde_json::{json, Value};

use crate::kubernetes::objects::Node;
use crate::kubernetes::snapshot::{parse_documents, LoadError};

/// Device classes `--add-nodes` knows: name, GFD product (or Ascend chip), VRAM MiB.
pub const CLASSES: &[(&str, &str, u64)] = &[
    ("T4", "Tesla-T4", 15360),
    ("L4", "NVIDIA-L4", 23034),
    ("A10", "NVIDIA-A10", 23028),
    ("A100-40GB", "NVIDIA-A100-SXM4-40GB", 40960),
    ("A100", "NVIDIA-A100-SXM4-80GB", 81920),
    ("A100-80GB", "NVIDIA-A100-SXM4-80GB", 81920),
    ("H100", "NVIDIA-H100-80GB-HBM3", 81559),
    ("910B2", "910B2", 65536),
    ("910B3", "910B3", 65536),
    ("910B4", "910B4", 32768),
    ("310P", "310P", 24576),
];

/// Why a SPEC was refused.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// A SPEC could not be read.
    #[error("--add-nodes {spec:?}: {reason}")]
    Invalid {
        /// The SPEC as given.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A Node template file could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
}

fn invalid(spec: &str, reason: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        spec: spec.to_string(),
        reason: reason.into(),
    }
}

/// Most nodes one SPEC may add.
const MAX_ADDED: u32 = 1000;

/// Expands one SPEC into Node objects named `whatif-…` (copies of a file keep its name plus `-whatif-N`).
pub fn nodes_from_spec(spec: &str, first_index: usize) -> Result<Vec<Node>, SpecError> {
    let text = spec.trim();
    let (count, rest) = match text.split_once(['x', 'X']) {
        Some((n, rest)) if !n.trim().is_empty() && n.trim().chars().all(|c| c.is_ascii_digit()) => {
            let n: u32 = n.trim().parse().map_err(|_| invalid(spec, "bad count"))?;
            (n, rest.trim())
        }
        _ => (1, text),
    };
    if count == 0 || count > MAX_ADDED {
        return Err(invalid(spec, format!("count must be 1..={MAX_ADDED}")));
    }
    let template = if Path::new(rest).is_file() {
        template_from_file(rest)?
    } else {
        template_from_class(spec, rest)?
    };
    let base = template
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("whatif")
        .to_string();
    (0..count as usize)
        .map(|i| {
            let mut node = template.clone();
            node["metadata"]["name"] = json!(format!("{base}-whatif-{}", first_index + i));
            serde_json::from_value(node).map_err(|e| invalid(spec, e.to_string()))
        })
        .collect()
}

fn template_from_file(path: &str) -> Result<Value, SpecError> {
    let path = Path::new(path);
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let docs = parse_documents(&text, path)?;
    let node = docs
        .into_iter()
        .find(|d| d.get("kind").and_then(Value::as_str) == Some("Node"))
        .ok_or_else(|| invalid(&path.display().to_string(), "the file holds no Node"))?;
    Ok(node)
}

fn template_from_class(spec: &str, text: &str) -> Result<Value, SpecError> {
    let (text, zone) = match text.split_once('@') {
        Some((t, z)) => (t.trim(), Some(z.trim())),
        None => (text, None),
    };
    let (class, devices) = match text.split_once(':') {
        Some((c, d)) => (
            c.trim(),
            d.trim()
                .parse::<u32>()
                .map_err(|_| invalid(spec, "devices after ':' must be a number"))?,
        ),
        None => (text, 1),
    };
    if devices == 0 || devices > 64 {
        return Err(invalid(spec, "devices must be 1..=64"));
    }
    let Some((name, product, memory)) = CLASSES
        .iter()
        .find(|(n, _, _)| n.eq_ignore_ascii_case(class))
    else {
        let known: Vec<&str> = CLASSES.iter().map(|c| c.0).collect();
        return Err(invalid(
            spec,
            format!(
                "unknown class {class:?} (known: {}, or a Node YAML file)",
                known.join(", ")
            ),
        ));
    };
    let zone = zone.unwrap_or("what-if");
    let ascend = !product.contains('-');
    let (labels, resource) = if ascend {
        (
            json!({"topology.kubernetes.io/zone": zone, "accelerator": "huawei-Ascend910", "node.kubernetes.io/npu.chip.name": product}),
            if *product == "310P" {
                "huawei.com/Ascend310P"
            } else {
                "huawei.com/Ascend910"
            },
        )
    } else {
        (
            json!({"topology.kubernetes.io/zone": zone, "nvidia.com/gpu.product": product,
                   "nvidia.com/gpu.memory": memory.to_string(), "nvidia.com/gpu.count": devices.to_string()}),
            "nvidia.com/gpu",
        )
    };
    let allocatable =
        json!({"cpu": "64", "memory": "512Gi", "pods": "110", resource: devices.to_string()});
    Ok(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": format!("{}-{devices}x", name.to_ascii_lowercase()), "labels": labels},
        "spec": {},
        "status": {"allocatable": allocatable, "capacity": allocatable}
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_specs_make_labelled_nodes() {
        let nodes = nodes_from_spec("2x T4", 0).unwrap();
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[1].metadata.name, "t4-1x-whatif-1");
        assert_eq!(
            nodes[0].metadata.labels.0["nvidia.com/gpu.product"],
            "Tesla-T4"
        );
        let big = nodes_from_spec("1x a100:8@zone-b", 5).unwrap();
        assert_eq!(big[0].metadata.name, "a100-8x-whatif-5");
        assert_eq!(big[0].status.allocatable.0["nvidia.com/gpu"], "8");
        assert_eq!(
            big[0].metadata.labels.0["topology.kubernetes.io/zone"],
            "zone-b"
        );
        let npu = nodes_from_spec("910B3:8", 0).unwrap();
        assert_eq!(npu[0].status.allocatable.0["huawei.com/Ascend910"], "8");
    }

    #[test]
    fn bad_specs_are_clear_errors() {
        for (spec, fragment) in [
            ("2x Z9", "unknown class \"Z9\""),
            ("0x T4", "count must be"),
            ("T4:lots", "devices after ':'"),
            ("T4:0", "devices must be"),
        ] {
            let err = nodes_from_spec(spec, 0).unwrap_err().to_string();
            assert!(err.contains(fragment), "{spec}: {err}");
        }
    }
}
