//! The `vramfit` binary: `place` on the built-in example, snapshot formats, exit codes, errors.

use std::path::Path;
use std::process::{Command, Output};

mod common;

use common::{scratch, succeeded};

use serde_json::Value;

fn vramfit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vramfit"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run vramfit")
}

/// `vramfit place --snapshot SNAPSHOT --pods PODS` and `extra` arguments.
fn place(snapshot: &str, pods: &str, extra: &[&str]) -> Output {
    let mut args = vec!["place", "--snapshot", snapshot, "--pods", pods];
    args.extend_from_slice(extra);
    vramfit(&args)
}

fn place_json(snapshot: &str, pods: &str) -> (i32, Value) {
    let out = place(snapshot, pods, &["--output", "json"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "json output: {e}\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap(), value)
}

#[test]
fn the_example_places_every_model_where_it_belongs() {
    let (code, report) = place_json("examples/cluster.yaml", "examples/models.yaml");
    assert_eq!(code, 0, "all placed: {report:#}");
    let pods = report["pods"].as_array().unwrap();
    assert_eq!(pods.len(), 10);
    let mut t4_free = 8; // eight T4 nodes in the example
    for pod in pods {
        for key in ["pod", "node", "devices", "zone", "score"] {
            assert!(pod.get(key).is_some(), "{key} in {pod}");
        }
        let node = pod["node"].as_str().unwrap();
        if node.starts_with("t4-") {
            t4_free -= 1;
        }
    }
    for pod in pods {
        let node = pod["node"].as_str().unwrap();
        let vram = pod["devices"][0]["vramMiB"].as_u64().unwrap();
        if vram <= 16 * 1024 && t4_free > 0 {
            assert!(
                node.starts_with("t4-"),
                "{} needs {vram} MiB but sits on {node} while a T4 has room",
                pod["pod"]
            );
        }
    }
    let by_name = |name: &str| pods.iter().find(|p| p["pod"] == name).unwrap();
    assert!(by_name("ml/imagegen-40g-0")["node"]
        .as_str()
        .unwrap()
        .starts_with("a100-"));
    assert_eq!(
        by_name("ml/llama-70b-0")["devices"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(by_name("ml/qwen-ascend-0")["node"], "ascend-a-0");
    let sdxl_zones: std::collections::BTreeSet<&str> = pods
        .iter()
        .filter(|p| p["pod"].as_str().unwrap().starts_with("ml/sdxl-"))
        .map(|p| p["zone"].as_str().unwrap())
        .collect();
    assert_eq!(sdxl_zones.len(), 2, "SDXL replicas span both zones");
}

#[test]
fn table_output_is_readable() {
    let out = place("examples/cluster.yaml", "examples/models.yaml", &[]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("POD "), "{text}");
    assert!(text.contains("10/10 pods placed on 11 nodes."), "{text}");
}

#[test]
fn snapshot_formats_load_alike() {
    // The same two nodes as a List, as multi-document YAML, and as a JSON array.
    let node = |name: &str, zone: &str| {
        format!(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels:\n    topology.kubernetes.io/zone: {zone}\n    nvidia.com/gpu.product: Tesla-T4\n    nvidia.com/gpu.memory: \"15360\"\nstatus:\n  allocatable:\n    nvidia.com/gpu: 1\n"
        )
    };
    let indent = |s: String| {
        s.lines()
            .map(|l| format!("  {l}"))
            .collect::<Vec<_>>()
            .join("\n")
            .replacen("  ", "- ", 1)
    };
    let list = format!(
        "apiVersion: v1\nkind: List\nitems:\n{}\n{}\n",
        indent(node("t4-a", "a")),
        indent(node("t4-b", "b"))
    );
    let multi = format!("{}---\n{}", node("t4-a", "a"), node("t4-b", "b"));
    let array = serde_json::to_string(&vec![
        serde_yaml_ng::from_str::<Value>(&node("t4-a", "a")).unwrap(),
        serde_yaml_ng::from_str::<Value>(&node("t4-b", "b")).unwrap(),
    ])
    .unwrap();
    let pods = scratch(
        "pods.yaml",
        "kind: Pod\napiVersion: v1\nmetadata: {name: p, namespace: ml, annotations: {vramfit.io/vram: 8Gi}}\nspec:\n  containers:\n  - name: c\n    resources: {limits: {nvidia.com/gpu: 1}}\n",
    );
    let mut results = Vec::new();
    for (name, text) in [
        ("list.yaml", list),
        ("multi.yaml", multi),
        ("array.json", array),
    ] {
        let path = scratch(name, &text);
        let (code, report) = place_json(path.to_str().unwrap(), pods.to_str().unwrap());
        assert_eq!(code, 0, "{name}: {report}");
        assert_eq!(report["nodes"], 2, "{name}");
        results.push(report);
    }
    assert!(results.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn unplaced_pods_exit_2_with_grouped_reasons() {
    let pods = scratch(
        "huge.yaml",
        "kind: Pod\napiVersion: v1\nmetadata: {name: huge, namespace: ml, annotations: {vramfit.io/vram: 100Gi}}\nspec:\n  containers:\n  - name: c\n    resources: {limits: {nvidia.com/gpu: 1}}\n",
    );
    let (code, report) = place_json("examples/cluster.yaml", pods.to_str().unwrap());
    assert_eq!(code, 2);
    let pod = &report["pods"][0];
    assert_eq!(pod["node"], Value::Null);
    assert_eq!(pod["reasons"].as_object().unwrap().len(), 11);
    assert_eq!(
        pod["message"],
        "0/11 nodes are available: 1 Insufficient nvidia.com/gpu, \
         2 vramfit: needs 100Gi per device (plus 15 percent headroom); largest device here has 80Gi, \
         8 vramfit: needs 100Gi per device (plus 15 percent headroom); largest device here has 15Gi."
    );
}

#[test]
fn bad_input_is_a_clear_error_with_exit_1() {
    let broken = scratch("broken.yaml", "kind: Pod\nmetadata: {name: [unclosed\n");
    let out = place("examples/cluster.yaml", broken.to_str().unwrap(), &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("broken.yaml:"), "{stderr}");

    let missing = place("no/such/file.yaml", "examples/models.yaml", &[]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no/such/file.yaml"));

    let kinds = scratch(
        "deploy.yaml",
        "kind: ConfigMap\napiVersion: v1\nmetadata: {name: x}\n",
    );
    let out = place("examples/cluster.yaml", kinds.to_str().unwrap(), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unsupported kind \"ConfigMap\""));

    let config = scratch("config.yaml", "placement:\n  headroomPercent: 99\n");
    let out = place(
        "examples/cluster.yaml",
        "examples/models.yaml",
        &["--config", config.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("headroomPercent must be 0..=90"));

    for (server, error) in [
        (
            "leaderLease: vramfit-scheduler",
            "leaderLease must be NAMESPACE/NAME (e.g. vramfit-system/vramfit-scheduler), got \"vramfit-scheduler\"",
        ),
        ("leaderIdentity: ' '", "leaderIdentity must not be empty"),
    ] {
        let config = scratch("server.yaml", &format!("server:\n  {server}\n"));
        let out = place(
            "examples/cluster.yaml",
            "examples/models.yaml",
            &["--config", config.to_str().unwrap()],
        );
        assert_eq!(out.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(error), "{stderr}");
    }
}

#[test]
fn config_and_catalog_files_are_read() {
    let config = scratch(
        "ok-config.yaml",
        "placement:\n  headroomPercent: 0\nserver:\n  pathPrefix: /scheduler\n",
    );
    let catalog = scratch("catalog.yaml", "models:\n  tiny: {vram: 14Gi}\n");
    let pods = scratch(
        "tiny.yaml",
        "kind: Pod\napiVersion: v1\nmetadata: {name: t, namespace: ml, labels: {vramfit.io/model: tiny}}\nspec:\n  containers:\n  - name: c\n    resources: {limits: {nvidia.com/gpu: 1}}\n",
    );
    let out = place(
        "examples/cluster.yaml",
        pods.to_str().unwrap(),
        &[
            "--output",
            "json",
            "--config",
            config.to_str().unwrap(),
            "--catalog",
            catalog.to_str().unwrap(),
        ],
    );
    let stdout = succeeded(&out);
    let report: Value = serde_json::from_str(&stdout).unwrap();
    // 14Gi fits a T4 only because headroom is 0 in this config.
    assert!(report["pods"][0]["node"]
        .as_str()
        .unwrap()
        .starts_with("t4-"));
    assert!(Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/models.yaml")
        .exists());
}

#[test]
fn place_simulates_kube_scheduler_checks_and_expands_workloads() {
    let (code, report) = place_json(
        "tests/fixtures/dry-run/cluster.yaml",
        "tests/fixtures/dry-run/workloads.yaml",
    );
    let pods = report["pods"].as_array().unwrap();
    let names: Vec<&str> = pods.iter().map(|p| p["pod"].as_str().unwrap()).collect();
    assert_eq!(names, ["ml/whisper-0", "ml/whisper-1", "ml/embed-0"]);
    // whisper-0: the free T4 (cordoned, tainted, other pool and too little CPU are out).
    assert_eq!(pods[0]["node"], "t4-free");
    // whisper-1: no T4 left that kube-scheduler accepts, so the A100 rather than Pending.
    assert_eq!(pods[1]["node"], "a100-0");
    // embed-0 tolerates the batch taint and goes to the tainted T4, smallest fitting device.
    assert_eq!(pods[2]["node"], "t4-tainted");
    assert_eq!(code, 0);

    // With the A100 gone, whisper-1 is Pending and every node says why, in kube-scheduler's words.
    let cluster = std::fs::read_to_string("tests/fixtures/dry-run/cluster.yaml").unwrap();
    let without_a100 = &cluster[..cluster
        .find("- kind: Node\n  apiVersion: v1\n  metadata:\n    name: a100-0")
        .unwrap()];
    let path = scratch("no-a100.yaml", without_a100);
    let (code, report) = place_json(
        path.to_str().unwrap(),
        "tests/fixtures/dry-run/workloads.yaml",
    );
    assert_eq!(code, 2);
    let pending = &report["pods"][1];
    assert_eq!(pending["node"], Value::Null);
    let reasons = pending["reasons"].as_object().unwrap();
    assert_eq!(reasons["t4-cordoned"], "node(s) were unschedulable");
    assert_eq!(
        reasons["t4-tainted"],
        "node(s) had untolerated taint {dedicated: batch}"
    );
    assert_eq!(
        reasons["t4-training"],
        "node(s) didn't match Pod's node affinity/selector"
    );
    assert_eq!(reasons["t4-small-cpu"], "Insufficient cpu");
    assert_eq!(reasons["t4-free"], "Insufficient nvidia.com/gpu");
    assert_eq!(
        pending["message"],
        "0/5 nodes are available: 1 Insufficient cpu, 1 Insufficient nvidia.com/gpu, \
         1 node(s) didn't match Pod's node affinity/selector, 1 node(s) had untolerated taint {dedicated: batch}, \
         1 node(s) were unschedulable."
    );
}

#[test]
fn what_if_nodes_and_the_picture() {
    let cluster = std::fs::read_to_string("tests/fixtures/dry-run/cluster.yaml").unwrap();
    let without_a100 = &cluster[..cluster
        .find("- kind: Node\n  apiVersion: v1\n  metadata:\n    name: a100-0")
        .unwrap()];
    let path = scratch("what-if.yaml", without_a100);
    let svg = std::env::temp_dir().join(format!("vramfit-cli-{}-picture.svg", std::process::id()));
    // The pending replica needs the `pool: inference` label, so buy a copy of an inference T4.
    let template = scratch(
        "t4-template.yaml",
        "kind: Node\napiVersion: v1\nmetadata:\n  name: t4-new\n  labels: {topology.kubernetes.io/zone: b, nvidia.com/gpu.product: Tesla-T4, nvidia.com/gpu.memory: \"15360\", pool: inference}\nstatus: {allocatable: {cpu: \"16\", memory: 64Gi, pods: \"110\", nvidia.com/gpu: \"1\"}}\n",
    );
    let spec = format!("1x {}", template.display());
    let out = place(
        path.to_str().unwrap(),
        "tests/fixtures/dry-run/workloads.yaml",
        &[
            "--add-nodes",
            &spec,
            "--add-nodes",
            "1x T4@b",
            "--output",
            "json",
            "--svg",
            svg.to_str().unwrap(),
        ],
    );
    let stdout = succeeded(&out);
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        report["addedNodes"],
        serde_json::json!(["t4-new-whatif-0", "t4-1x-whatif-1"])
    );
    assert_eq!(
        report["pods"][1]["node"], "t4-new-whatif-0",
        "the bought T4 takes the pending replica"
    );
    let picture = std::fs::read_to_string(&svg).unwrap();
    assert!(picture.starts_with("<svg") && picture.trim_end().ends_with("</svg>"));
    // Seven nodes with one device each, drawn before and after.
    assert_eq!(picture.matches("<g class=\"device").count(), 14);
    assert!(
        picture.contains("t4-new-whatif-0 #0 Tesla-T4: whisper"),
        "the tooltip names the model"
    );

    let bad = place(
        path.to_str().unwrap(),
        "tests/fixtures/dry-run/workloads.yaml",
        &["--add-nodes", "3x B200"],
    );
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown class \"B200\""));
}

#[test]
fn replay_churn_runs_the_built_in_workload_and_refuses_bad_flags() {
    let out = vramfit(&[
        "replay", "--churn", "--fleet", "6,4,2", "--rounds", "4", "--seeds", "1-2", "--demand",
        "1.6",
    ]);
    let stdout = succeeded(&out);
    for expected in [
        "vramfit-spread (zone-skew limit 1)",
        "vramfit-binpack (zone-skew limit 5)",
        "stock",
        "sdxl",
        "embedder",
        "unallocated devices",
    ] {
        assert!(stdout.contains(expected), "{expected:?} in\n{stdout}");
    }
    for (args, message) in [
        (vec!["--demand", "0"], "--demand must be"),
        (vec!["--demand", "NaN"], "--demand must be"),
        (vec!["--rounds", "0"], "--rounds must be"),
        (vec!["--zones", "0"], "--zones must be"),
        (vec!["--fleet", "1,2"], "--fleet \"1,2\""),
        (vec!["--node-cpu", "16,0,64"], "--node-cpu \"16,0,64\""),
        (vec!["--node-cpu", "many"], "--node-cpu \"many\""),
        (vec!["--profiles", "nope"], "unknown profile \"nope\""),
        (vec!["--seeds", "9-1"], "empty"),
    ] {
        let mut all = vec!["replay", "--churn"];
        all.extend(&args);
        let out = vramfit(&all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // Trace flags and churn flags do not mix; without --churn the trace flags are required.
    let out = vramfit(&["replay", "--churn", "--nodes", "n.csv"]);
    assert_eq!(out.status.code(), Some(2));
    for flag in [["--rounds", "3"], ["--node-cpu", "16,48,64"]] {
        let mut args = vec!["replay", "--nodes", "n.csv", "p.csv"];
        args.extend(flag);
        let out = vramfit(&args);
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains("need --churn"));
    }
    let out = vramfit(&["replay"]);
    assert_eq!(out.status.code(), Some(2));
}
