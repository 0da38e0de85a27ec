//! The device plugin's DaemonSet: sharing nodes only, flags the command accepts, kubelet's two
//! directories and nothing else from the host, root without capabilities, and RBAC exactly the
//! API calls the plugin makes.

use std::collections::BTreeSet;
use std::path::Path;

use vramfit::agent::kubelet_api::{DEVICE_PLUGIN_DIR, POD_RESOURCES_SOCKET};

use crate::base::*;
use crate::common::api::FakeApi;
use crate::common::objects::node_json;
use crate::containers::KUBELET_SOCKET_CONTAINERS;
use crate::rbac::{effective_grants, Grant};

const DAEMON_SET: &str = "vramfit-device-plugin-nvidia";

#[test]
fn runs_on_sharing_nodes_with_flags_the_command_accepts() {
    let base = Base::load();
    let spec = base
        .daemon_set(DAEMON_SET)
        .spec
        .clone()
        .unwrap()
        .template
        .spec
        .unwrap();
    assert_eq!(
        spec.node_selector.clone().unwrap_or_default()["vramfit.io/sharing"],
        "vram"
    );
    assert_eq!(
        spec.service_account_name.as_deref(),
        Some("vramfit-device-plugin")
    );
    let c = container(&spec, "device-plugin");
    let args = c.args.clone().unwrap();
    assert_eq!(args[0], "device-plugin");
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_vramfit"))
        .args(["device-plugin", "--help"])
        .output()
        .unwrap();
    assert!(help.status.success());
    let help = String::from_utf8(help.stdout).unwrap();
    for arg in args.iter().filter(|a| a.starts_with("--")) {
        assert!(help.contains(arg.as_str()), "{arg} is a device-plugin flag");
    }
    let backend = flag(&args, "backend").unwrap();
    assert!(["mps", "hami-core", "none"].contains(&backend.as_str()));
    let env: Vec<&str> = c.env.iter().flatten().map(|e| e.name.as_str()).collect();
    assert!(env.contains(&"NODE_NAME"), "the node name the plugin needs");
}

#[test]
fn mounts_kubelets_two_directories_only_and_runs_as_root_without_capabilities() {
    let base = Base::load();
    let mut seen = 0;
    for (workload, _, spec) in base.workloads() {
        for c in &spec.containers {
            if !KUBELET_SOCKET_CONTAINERS.contains(&(workload, c.name.as_str())) {
                continue;
            }
            seen += 1;
            let what = format!("{workload}/{}", c.name);
            let mut host_paths = BTreeSet::new();
            for mount in c.volume_mounts.iter().flatten() {
                let volume = spec
                    .volumes
                    .iter()
                    .flatten()
                    .find(|v| v.name == mount.name)
                    .unwrap();
                let Some(host) = &volume.host_path else {
                    continue;
                };
                assert_eq!(host.path, mount.mount_path, "{what}: mounted where it is");
                assert_eq!(host.type_.as_deref(), Some("Directory"), "{what}");
                let read_only = mount.read_only == Some(true);
                host_paths.insert((host.path.clone(), read_only));
            }
            let pod_resources = Path::new(POD_RESOURCES_SOCKET)
                .parent()
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            assert_eq!(
                host_paths,
                BTreeSet::from([
                    (DEVICE_PLUGIN_DIR.to_string(), false),
                    (pod_resources, true),
                ]),
                "{what}: the plugin's socket directory read-write, PodResources read-only"
            );

            let pod = spec.security_context.clone().unwrap_or_default();
            let sc = c.security_context.clone().unwrap_or_default();
            assert_eq!(sc.run_as_user.or(pod.run_as_user), Some(0), "{what}");
            assert_eq!(sc.privileged, Some(false), "{what}");
            assert_eq!(sc.allow_privilege_escalation, Some(false), "{what}");
            assert_eq!(sc.read_only_root_filesystem, Some(true), "{what}");
            let caps = sc.capabilities.clone().unwrap_or_default();
            assert_eq!(caps.drop, Some(vec!["ALL".to_string()]), "{what}");
            assert!(caps.add.unwrap_or_default().is_empty(), "{what}");
            let seccomp = sc.seccomp_profile.or(pod.seccomp_profile).map(|p| p.type_);
            assert_eq!(seccomp.as_deref(), Some("RuntimeDefault"), "{what}");
            assert_ne!(spec.host_network, Some(true), "{what}");
            assert_ne!(spec.host_pid, Some(true), "{what}");
            let resources = c.resources.clone().unwrap_or_default();
            let keys: BTreeSet<String> = resources
                .requests
                .unwrap_or_default()
                .into_keys()
                .chain(resources.limits.unwrap_or_default().into_keys())
                .collect();
            assert_eq!(
                keys,
                BTreeSet::from(["cpu".to_string(), "memory".to_string()]),
                "{what}: takes no device"
            );
        }
    }
    assert_eq!(seen, KUBELET_SOCKET_CONTAINERS.len());
    let manifest = read("manifests/device-plugin-daemonset-nvidia.yaml");
    assert!(manifest.contains("Root without privileges"), "explained");
}

#[test]
fn rbac_is_exactly_the_calls_the_plugin_makes() {
    let api = FakeApi::builder()
        .nodes([node_json("gpu-1", 1)
            .label("vramfit.io/sharing", "vram")
            .build()])
        .start();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        use vramfit::agent::node_pods::{wait_for_sharing_label, KubeNodePods, NodePods};
        let labelled = wait_for_sharing_label(
            api.client(),
            "gpu-1",
            std::time::Duration::from_secs(60),
            std::future::pending(),
        )
        .await;
        assert!(labelled);
        KubeNodePods::new(api.client(), "gpu-1")
            .list()
            .await
            .unwrap();
        use vramfit::agent::run::{AnnotationWriter, NodeAnnotationWriter};
        NodeAnnotationWriter::for_annotation(
            api.client(),
            "gpu-1",
            vramfit::agent::allocated::ANNOTATION_ALLOCATED_DEVICES,
        )
        .write("{}")
        .await
        .unwrap();
    });
    let calls: BTreeSet<(String, String)> = api
        .requests()
        .iter()
        .map(|r| match (r.method.as_str(), r.path.as_str()) {
            ("GET", "/api/v1/pods") => {
                assert!(
                    r.query.contains("fieldSelector=spec.nodeName%3Dgpu-1"),
                    "{}",
                    r.query
                );
                ("list".to_string(), "pods".to_string())
            }
            ("GET", path) if path.starts_with("/api/v1/nodes/") => {
                ("get".to_string(), "nodes".to_string())
            }
            ("PATCH", "/api/v1/nodes/gpu-1") => {
                assert_eq!(r.content_type, "application/merge-patch+json");
                assert!(
                    r.body.contains("vramfit.io/allocated-devices"),
                    "{}",
                    r.body
                );
                ("patch".to_string(), "nodes".to_string())
            }
            other => panic!("unexpected call {other:?}"),
        })
        .collect();
    let (grants, _) = effective_grants(&Base::load());
    for (verb, resource) in &calls {
        let grant = Grant::new("vramfit-device-plugin", "cluster", "", resource, verb, "");
        assert!(grants.contains(&grant), "{verb} {resource} is granted");
    }
    // Nothing more: rbac.rs holds the grants to exactly its table, these two rows.
    assert_eq!(
        calls,
        BTreeSet::from([
            ("get".to_string(), "nodes".to_string()),
            ("patch".to_string(), "nodes".to_string()),
            ("list".to_string(), "pods".to_string())
        ])
    );
}

#[test]
fn troubleshooting_quotes_every_allocation_refusal() {
    use vramfit::agent::sharing::AllocateError;
    let doc = read("docs/troubleshooting.md");
    let refusals = [
        (
            AllocateError::NoCandidate { units: 4 },
            "no pending pod on this node has a container requesting",
        ),
        (
            AllocateError::NoAssignment {
                pod: "ml/p".into(),
                units: 4,
                reason: "absent".into(),
            },
            "has no valid vramfit.io/assigned-devices",
        ),
        (
            AllocateError::Ambiguous {
                units: 4,
                candidates: vec!["ml/a".into(), "ml/b".into()],
            },
            "were bound in the same second and were assigned different devices",
        ),
        (
            AllocateError::UnknownDevice {
                pod: "ml/p".into(),
                index: 3,
            },
            "which this node does not have",
        ),
        (
            AllocateError::UnhealthyDevice {
                pod: "ml/p".into(),
                index: 3,
            },
            "which is unhealthy now",
        ),
    ];
    for (error, quoted) in refusals {
        assert!(error.to_string().contains(quoted), "{error}");
        assert!(
            doc.contains(quoted),
            "docs/troubleshooting.md quotes {quoted:?}"
        );
    }
}

#[test]
fn the_image_build_context_keeps_the_protos() {
    let ignore = read(".dockerignore");
    for needed in ["build.rs", "proto"] {
        assert!(
            !ignore
                .lines()
                .any(|l| l.trim().trim_end_matches('/') == needed),
            "{needed} stays in the build context (build.rs compiles proto/)"
        );
        assert!(root().join(needed).exists(), "{needed}");
    }
}
