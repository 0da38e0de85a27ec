//! Containers: non-root, requests and limits, documented images, the Dockerfile.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::base::*;

/// Containers allowed to run as root and privileged, and why (also in the manifest's comment).
const ROOT_EXCEPTIONS: &[(&str, &str, &str)] = &[(
    "vramfit-agent-ascend",
    "agent",
    "npu-smi opens /dev/davinci* that no device plugin allocated to the agent",
)];

/// Containers that talk to kubelet's root-owned sockets: uid 0 without capabilities, with
/// hostPath mounts of kubelet's directories only; checked in `device_plugin.rs`.
pub const KUBELET_SOCKET_CONTAINERS: &[(&str, &str)] =
    &[("vramfit-device-plugin-nvidia", "device-plugin")];

#[test]
fn every_container_runs_as_non_root_with_requests_and_limits() {
    let base = Base::load();
    let mut exceptions_seen = 0;
    for (workload, _, spec) in base.workloads() {
        assert_ne!(spec.host_network, Some(true), "{workload}");
        assert_ne!(spec.host_pid, Some(true), "{workload}");
        assert_ne!(spec.host_ipc, Some(true), "{workload}");
        let pod = spec.security_context.clone().unwrap_or_default();
        assert!(spec.init_containers.is_none());
        for c in &spec.containers {
            let what = format!("{workload}/{}", c.name);
            let sc = c.security_context.clone().unwrap_or_default();
            let seccomp = sc
                .seccomp_profile
                .clone()
                .or(pod.seccomp_profile.clone())
                .map(|p| p.type_);
            assert_eq!(seccomp.as_deref(), Some("RuntimeDefault"), "{what}");
            assert_eq!(sc.read_only_root_filesystem, Some(true), "{what}");
            let non_root = sc.run_as_non_root.or(pod.run_as_non_root);
            let user = sc.run_as_user.or(pod.run_as_user);
            if KUBELET_SOCKET_CONTAINERS.contains(&(workload, c.name.as_str())) {
                continue;
            }
            let exception = ROOT_EXCEPTIONS
                .iter()
                .find(|(w, name_, _)| *w == workload && *name_ == c.name);
            if let Some((_, _, why)) = exception {
                exceptions_seen += 1;
                assert_eq!(sc.privileged, Some(true), "{what}: {why}");
                assert_eq!(user, Some(0), "{what}: {why}");
                let manifest = read("manifests/agent-daemonset-ascend.yaml");
                assert!(
                    manifest.contains("EXCEPTION"),
                    "{what}: explained in a comment"
                );
            } else {
                assert_eq!(non_root, Some(true), "{what}: runAsNonRoot");
                assert!(user.is_some_and(|u| u != 0), "{what}: a non-zero runAsUser");
                assert_ne!(sc.privileged, Some(true), "{what}");
                assert_eq!(sc.allow_privilege_escalation, Some(false), "{what}");
                let caps = sc.capabilities.clone().unwrap_or_default();
                assert_eq!(caps.drop, Some(vec!["ALL".to_string()]), "{what}");
                assert!(caps.add.unwrap_or_default().is_empty(), "{what}");
            }
            // hostPath only where the exception is, and read-only.
            for mount in c.volume_mounts.iter().flatten() {
                let volume = spec
                    .volumes
                    .iter()
                    .flatten()
                    .find(|v| v.name == mount.name)
                    .unwrap();
                if volume.host_path.is_some() {
                    assert!(exception.is_some(), "{what}: hostPath {}", mount.name);
                    assert_eq!(mount.read_only, Some(true), "{what}: {}", mount.name);
                }
            }
            let resources = c.resources.clone().unwrap_or_default();
            let requests = resources.requests.unwrap_or_default();
            let limits = resources.limits.unwrap_or_default();
            for r in ["cpu", "memory"] {
                assert!(requests.contains_key(r), "{what}: requests.{r}");
                assert!(limits.contains_key(r), "{what}: limits.{r}");
            }
            let millis = |q: &str| vramfit::core::quantity::parse_millis(q).unwrap();
            assert!(
                millis(&requests["cpu"].0) <= millis(&limits["cpu"].0),
                "{what}"
            );
            let mib = |q: &str| vramfit::core::quantity::parse_mib(q).unwrap();
            assert!(
                mib(&requests["memory"].0) <= mib(&limits["memory"].0),
                "{what}"
            );
            for key in requests.keys().chain(limits.keys()) {
                assert!(
                    key == "cpu" || key == "memory",
                    "{what}: requests no {key} (the agent must not take a device)"
                );
            }
        }
    }
    assert_eq!(exceptions_seen, ROOT_EXCEPTIONS.len());
}

#[test]
fn images_come_from_documented_kustomize_entries() {
    let base = Base::load();
    let entries: BTreeMap<String, Value> = base.kustomization["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_string(), e.clone()))
        .collect();
    let mut used = BTreeSet::new();
    for (workload, _, spec) in base.workloads() {
        for c in &spec.containers {
            let image = c.image.as_deref().unwrap();
            let (name_, tag) = image.rsplit_once(':').unwrap_or((image, ""));
            let entry = entries
                .get(name_)
                .unwrap_or_else(|| panic!("{workload}/{}: no images entry for {name_}", c.name));
            used.insert(name_.to_string());
            if !tag.is_empty() {
                assert_eq!(
                    entry["newTag"], tag,
                    "{image}: the manifest and the entry agree"
                );
            }
        }
    }
    assert_eq!(used.len(), entries.len(), "every images entry is used");
    let scheduler = entries["registry.k8s.io/kube-scheduler"]["newTag"]
        .as_str()
        .unwrap();
    assert!(scheduler.starts_with("v1."), "{scheduler}");
    assert_eq!(entries["vramfit"]["newTag"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn dockerfile_builds_locked_and_runs_distroless_nonroot() {
    let dockerfile = read("Dockerfile");
    let froms: Vec<&str> = dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("FROM "))
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(froms.len(), 2, "multi-stage");
    for image in &froms {
        let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
        assert!(
            !tag.is_empty() && tag != "latest" && !tag.contains('/'),
            "{image}: an explicit tag"
        );
    }
    assert!(froms[0].contains("/rust:"), "{}", froms[0]);
    assert_eq!(froms[1], "gcr.io/distroless/cc-debian12:nonroot");
    assert!(dockerfile.contains("cargo build --release --locked"));
    assert!(dockerfile.contains("COPY --from=build /out/vramfit /usr/local/bin/vramfit"));
    assert!(dockerfile.contains("USER 65532:65532"));
    assert!(dockerfile.contains(r#"ENTRYPOINT ["/usr/local/bin/vramfit"]"#));
    let ignore = read(".dockerignore");
    assert!(ignore.lines().any(|l| l.trim() == "target/"));
    for needed in ["src", "Cargo.toml", "Cargo.lock", "benches"] {
        assert!(
            !ignore
                .lines()
                .any(|l| l.trim().trim_end_matches('/') == needed),
            "{needed} stays in the build context"
        );
    }
}
