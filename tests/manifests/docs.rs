//! The operations docs: metrics, reasons and links match the code.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::SystemTime;

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use serde::Deserialize;
use serde_json::Value;

use vramfit::core::Reason;
use vramfit::extender::binder::RecordOnly;
use vramfit::extender::metrics::{Metrics, ReasonLabels};
use vramfit::extender::state::{ExtenderState, WatchedResource};

use crate::base::*;
use crate::common::objects::node_json;

/// The per-class metrics docs/operations.md's KEDA ScaledObject may scale on.
const KEDA_METRICS: &[&str] = &[
    "vramfit_device_class_free_vram_mib",
    "vramfit_device_class_free_devices",
];

/// Names the server exports, as samples (`…_bucket`, `…_total`) and as families.
fn exported_metrics() -> BTreeSet<String> {
    let metrics = Metrics::default();
    for (verb, outcome) in [
        ("filter", "ok"),
        ("filter", "rejected-all"),
        ("prioritize", "ok"),
        ("bind", "error"),
    ] {
        metrics.observe(verb, outcome, 0.001);
    }
    metrics
        .rejections
        .get_or_create(&ReasonLabels {
            reason: "insufficient".into(),
        })
        .inc();
    metrics
        .bind_conflicts
        .get_or_create(&ReasonLabels {
            reason: "no-longer-fits".into(),
        })
        .inc();
    // The scrape-time gauges, from a cluster with one GPU node (cpu and memory known) and a
    // watch event seen.
    let cluster = ExtenderState::new(
        vramfit::core::Config::default(),
        vramfit::core::Catalog::default(),
        Box::new(RecordOnly),
    );
    let node = node_json("gpu-1", 2).host("64", "256Gi").typed();
    cluster.apply_node(&node, SystemTime::now());
    cluster.health.touch(WatchedResource::Nodes);
    cluster.health.touch(WatchedResource::Pods);
    let mut names = BTreeSet::new();
    for line in metrics.scrape(&cluster).lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            names.insert(rest.split_whitespace().next().unwrap().to_string());
        } else if !line.starts_with('#') && !line.is_empty() {
            names.insert(line.split(['{', ' ']).next().unwrap().to_string());
        }
    }
    for family in [
        "vramfit_requests_total",
        "vramfit_bind_conflicts_total",
        "vramfit_device_vram_total_mib",
        "vramfit_device_vram_used_mib",
        "vramfit_device_vram_reserved_mib",
        "vramfit_device_class_free_vram_mib",
        "vramfit_device_class_free_devices",
        "vramfit_device_class_stranded_devices",
        "vramfit_watch_last_event_age_seconds",
        "vramfit_watch_errors",
        "vramfit_reservations_in_flight",
    ] {
        assert!(names.contains(family), "{family} in {names:?}");
    }
    names
}

/// Every `vramfit_…` name in a text.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("vramfit_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

/// The fenced code blocks of a markdown text: (info string, body).
fn code_blocks(markdown: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in markdown.lines() {
        if let Some(info) = line.trim_start().strip_prefix("```") {
            match current.take() {
                Some(block) => blocks.push(block),
                None => current = Some((info.trim().to_string(), String::new())),
            }
        } else if let Some((_, body)) = current.as_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    blocks
}

#[test]
fn dashboard_and_alerts_use_only_exported_metrics() {
    let exported = exported_metrics();
    let dashboard: Value = serde_json::from_str(&read("docs/grafana-dashboard.json")).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 4);
    let mut exprs = 0;
    for panel in panels {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            exprs += 1;
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{expr}");
            for n in names {
                assert!(
                    exported.contains(&n),
                    "dashboard uses {n}, which is not exported"
                );
            }
        }
    }
    assert!(exprs >= panels.len());

    let operations = read("docs/operations.md");
    for n in metric_names(&operations) {
        assert!(
            exported.contains(&n),
            "docs/operations.md names {n}, which is not exported"
        );
    }
    for doc in [
        "docs/install.md",
        "docs/troubleshooting.md",
        "docs/migration.md",
        "docs/configuration.md",
    ] {
        for n in metric_names(&read(doc)) {
            assert!(exported.contains(&n), "{doc} names {n}");
        }
    }

    // The alert rules parse as a Prometheus rule file and use exported metrics only.
    let blocks = code_blocks(&operations);
    let rules = blocks
        .iter()
        .find(|(info, body)| info == "yaml" && body.contains("groups:"))
        .expect("an alert rule file");
    let rules = documents(&rules.1, "alert rules").remove(0);
    let mut alerts = 0;
    for group in rules["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            alerts += 1;
            assert!(rule["alert"].is_string() && rule["annotations"]["summary"].is_string());
            for n in metric_names(rule["expr"].as_str().unwrap()) {
                assert!(exported.contains(&n), "alert {} uses {n}", rule["alert"]);
            }
        }
    }
    assert!(alerts >= 3);

    // The KEDA example is a ScaledObject on the per-class free capacity.
    let keda = blocks
        .iter()
        .find(|(_, body)| body.contains("kind: ScaledObject"))
        .expect("a ScaledObject");
    let scaled = documents(&keda.1, "ScaledObject")
        .into_iter()
        .find(|d| d["kind"] == "ScaledObject")
        .unwrap();
    assert_eq!(scaled["apiVersion"], "keda.sh/v1alpha1");
    assert_eq!(scaled["spec"]["scaleTargetRef"]["kind"], "Deployment");
    let trigger = &scaled["spec"]["triggers"][0];
    assert_eq!(trigger["type"], "prometheus");
    let query = metric_names(trigger["metadata"]["query"].as_str().unwrap());
    assert!(query.iter().any(|n| KEDA_METRICS.contains(&n.as_str())));
    assert!(query.iter().all(|n| exported.contains(n)), "{query:?}");

    // The admission policy in the docs is made of real fields.
    for (_, body) in &blocks {
        for doc in documents_if_yaml(body) {
            match doc["kind"].as_str() {
                Some("ValidatingAdmissionPolicy") => {
                    typed::<ValidatingAdmissionPolicy>("docs/operations.md", &doc);
                }
                Some("ValidatingAdmissionPolicyBinding") => {
                    typed::<ValidatingAdmissionPolicyBinding>("docs/operations.md", &doc);
                }
                _ => {}
            }
        }
    }
}

fn documents_if_yaml(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map_while(|doc| Value::deserialize(doc).ok())
        .filter(|v| !v.is_null())
        .collect()
}

#[test]
fn troubleshooting_lists_every_filter_reason() {
    let doc = read("docs/troubleshooting.md");
    let reasons = [
        Reason::InvalidPod {
            message: "invalid vramfit.io/vram \"x\": not a Kubernetes quantity".into(),
        },
        Reason::UnknownNode,
        Reason::NoDevices {
            resource: "nvidia.com/gpu".into(),
        },
        Reason::NotSharing,
        Reason::VramUnknown,
        Reason::ProductNotAllowed {
            allowed: "A100".into(),
            present: "Tesla-T4".into(),
        },
        Reason::TooFewDevices { need: 4, have: 2 },
        Reason::DeviceTooSmall {
            need_mib: 40 * 1024,
            headroom: 15,
            largest_mib: 15 * 1024,
        },
        Reason::Unhealthy {
            need: 1,
            healthy: 0,
        },
        Reason::Insufficient {
            need: 1,
            need_mib: 10 * 1024,
            free: 0,
        },
        Reason::Insufficient {
            need: 1,
            need_mib: 0,
            free: 0,
        },
    ];
    for reason in &reasons {
        assert!(
            doc.contains(&format!("`{}`", reason.code())),
            "docs/troubleshooting.md lists {}",
            reason.code()
        );
        // Every fixed part of the text (between the variable parts: numbers, sizes, names) is
        // quoted as kube-scheduler shows it.
        let text = reason.to_string();
        let fragments: Vec<String> = match reason {
            Reason::InvalidPod { .. } => vec!["vramfit: invalid".into()],
            _ => {
                let variable = |w: &str| {
                    w.chars().any(|c| c.is_ascii_digit())
                        || ["Tesla-T4", "A100", "nvidia.com/gpu"]
                            .iter()
                            .any(|v| w.contains(v))
                };
                let mut fragments = vec![String::new()];
                for word in text.split(' ') {
                    if variable(word) {
                        fragments.push(String::new());
                    } else {
                        let last = fragments.last_mut().unwrap();
                        if !last.is_empty() {
                            last.push(' ');
                        }
                        last.push_str(word);
                    }
                }
                fragments.retain(|f| !f.is_empty());
                fragments
            }
        };
        for fixed in fragments {
            assert!(
                doc.contains(&fixed),
                "docs/troubleshooting.md quotes {fixed:?} (from {text:?})"
            );
        }
    }
}

#[test]
fn docs_are_linked_from_the_readme_and_their_links_resolve() {
    let readme = read("README.md");
    let last = readme.trim_end().rsplit("\n\n").next().unwrap();
    for doc in [
        "docs/install.md",
        "docs/operations.md",
        "docs/troubleshooting.md",
        "docs/migration.md",
    ] {
        assert!(
            last.contains(&format!("]({doc})")),
            "README's last paragraph links {doc}"
        );
        let text = read(doc);
        let base_dir = Path::new(doc).parent().unwrap();
        let mut rest = text.as_str();
        while let Some(at) = rest.find("](") {
            let tail = &rest[at + 2..];
            let end = tail.find(')').unwrap();
            let target = &tail[..end];
            rest = &tail[end..];
            if target.starts_with("http") || target.starts_with('#') {
                continue;
            }
            let file = target.split('#').next().unwrap();
            assert!(
                root().join(base_dir).join(file).exists(),
                "{doc} links {target}, which does not exist"
            );
        }
    }
}
