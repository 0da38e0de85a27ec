//! `place` against a live cluster: a fake API server on loopback serves the example cluster's
//! Nodes (in two pages) and Pods; `place --kubeconfig --context` reads it and never writes.

mod common;

use common::api::FakeApi;
use common::succeeded;
use serde_json::Value;

fn example_objects() -> (Vec<Value>, Vec<Value>) {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/cluster.yaml"
    ))
    .unwrap();
    let list: Value = serde_yaml_ng::from_str(&text).unwrap();
    let items = list["items"].as_array().unwrap();
    let of = |kind: &str| {
        items
            .iter()
            .filter(|i| i["kind"] == kind)
            .cloned()
            .collect::<Vec<_>>()
    };
    (of("Node"), of("Pod"))
}

#[test]
fn place_reads_a_live_cluster_read_only() {
    let (node_items, pod_items) = example_objects();
    // Nodes in pages of one (the command follows the continue tokens).
    let api = FakeApi::builder()
        .nodes(node_items)
        .pods(pod_items)
        .node_pages_of(1)
        .start();
    let server = api.url();
    let dir = std::env::temp_dir().join(format!("vramfit-live-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"{server}\"}}\n\
             - name: nowhere\n  cluster: {{server: \"http://127.0.0.1:9\"}}\nusers:\n- name: u\n  user: {{token: t}}\n\
             contexts:\n- name: fake\n  context: {{cluster: fake, user: u}}\n- name: broken\n  context: {{cluster: nowhere, user: u}}\n\
             current-context: broken\n"
        ),
    )
    .unwrap();

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vramfit"))
        .args([
            "place",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--context",
            "fake",
            "--pods",
            "examples/models.yaml",
            "--output",
            "json",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let stdout = succeeded(&out);
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["nodes"], 11, "every page of nodes was read");
    assert_eq!(report["pods"].as_array().unwrap().len(), 10);
    let requests = api.requests();
    let writes: Vec<_> = requests.iter().filter(|r| r.method != "GET").collect();
    assert_eq!(
        writes,
        Vec::<&common::api::Recorded>::new(),
        "a dry run never writes"
    );
    let pod_list = requests
        .iter()
        .find(|r| r.path == "/api/v1/pods")
        .expect("the pods are listed");
    assert_eq!(
        pod_list.param("fieldSelector").as_deref(),
        Some("status.phase!=Succeeded,status.phase!=Failed")
    );

    // The default (broken) context gives a clear error and exit code 1.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vramfit"))
        .args([
            "place",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--pods",
            "examples/models.yaml",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("listing nodes"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
