//! The base itself: typed documents, the kustomization, kustomize when kubectl is here.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use k8s_openapi::api::core::v1::ServiceAccount;
use serde_json::Value;

use crate::base::*;

#[test]
fn every_document_is_a_typed_object_with_no_field_dropped() {
    let base = Base::load();
    assert_eq!(base.namespaces.len(), 1);
    assert_eq!(name(&base.namespaces[0].metadata), "vramfit-system");
    assert_eq!(base.service_accounts.len(), 3);
    assert_eq!(base.deployments.len(), 1);
    assert_eq!(base.daemon_sets.len(), 3);
    assert_eq!(base.pdbs.len(), 1);
    assert!(!base.cluster_roles.is_empty() && !base.roles.is_empty());
    assert!(!base.cluster_role_bindings.is_empty() && !base.role_bindings.is_empty());
    assert_eq!(
        base.config_maps.len(),
        2,
        "no snapshot ConfigMap: the sidecar runs live"
    );
    // Namespaced objects say where they go (there is no top-level `namespace:`, which would also
    // move the kube-system RoleBinding), and names are unique per kind and namespace.
    assert!(base.kustomization.get("namespace").is_none());
    let mut seen = BTreeSet::new();
    let namespaced = base
        .service_accounts
        .iter()
        .map(|o| ("ServiceAccount", &o.metadata))
        .chain(base.roles.iter().map(|o| ("Role", &o.metadata)))
        .chain(
            base.role_bindings
                .iter()
                .map(|o| ("RoleBinding", &o.metadata)),
        )
        .chain(base.deployments.iter().map(|o| ("Deployment", &o.metadata)))
        .chain(base.daemon_sets.iter().map(|o| ("DaemonSet", &o.metadata)))
        .chain(
            base.pdbs
                .iter()
                .map(|o| ("PodDisruptionBudget", &o.metadata)),
        )
        .chain(base.config_maps.iter().map(|o| ("ConfigMap", &o.metadata)));
    for (kind, meta) in namespaced {
        let ns = namespace(meta);
        assert!(
            ns == "vramfit-system" || (kind == "RoleBinding" && ns == "kube-system"),
            "{kind} {} in namespace {ns:?}",
            name(meta)
        );
        assert!(
            seen.insert((kind, ns.to_string(), name(meta).to_string())),
            "{kind} {ns}/{} twice",
            name(meta)
        );
    }
}

#[test]
fn typed_parsing_catches_a_misspelt_field() {
    let doc: Value = serde_json::json!({
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "x", "namespace": "vramfit-system"},
        "automountServiceAcountToken": false
    });
    let caught = std::panic::catch_unwind(|| typed::<ServiceAccount>("misspelt", &doc))
        .expect_err("the misspelt field is caught");
    assert_eq!(
        caught.downcast_ref::<String>().map(String::as_str),
        Some("misspelt: .automountServiceAcountToken is not a field of the typed object")
    );
}

/// Every file under `dir`, relative to it.
fn files_under(dir: &Path, prefix: &str, out: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name_ = format!("{prefix}{}", entry.file_name().to_string_lossy());
        if entry.file_type().unwrap().is_dir() {
            files_under(&entry.path(), &format!("{name_}/"), out);
        } else {
            out.insert(name_);
        }
    }
}

#[test]
fn kustomization_lists_every_file_in_manifests_and_nothing_missing() {
    let base = Base::load();
    let mut present = BTreeSet::new();
    files_under(&root().join("manifests"), "", &mut present);
    present.remove("kustomization.yaml");
    let mut listed = BTreeSet::new();
    for file in base.resources.iter().chain(
        base.generators
            .iter()
            .flat_map(|g| g.files.iter().map(|f| &f.1)),
    ) {
        assert!(listed.insert(file.clone()), "{file} is listed twice");
    }
    let unlisted: Vec<_> = present.difference(&listed).collect();
    let missing: Vec<_> = listed.difference(&present).collect();
    assert!(
        unlisted.is_empty(),
        "in manifests/ but not in kustomization.yaml: {unlisted:?}"
    );
    assert!(
        missing.is_empty(),
        "in kustomization.yaml but not in manifests/: {missing:?}"
    );
}

#[test]
fn rendered_by_kustomize_when_kubectl_is_here() {
    // kubectl is not part of the project's toolchain; where it is installed, the base must render
    // and every ConfigMap the pods mount must come out with its hashed name.
    let Ok(out) = Command::new("kubectl")
        .args(["kustomize", "manifests"])
        .current_dir(root())
        .output()
    else {
        eprintln!("kubectl not found: kustomize rendering not checked");
        return;
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered = documents(&String::from_utf8_lossy(&out.stdout), "kubectl kustomize");
    let config_maps: BTreeSet<&str> = rendered
        .iter()
        .filter(|d| d["kind"] == "ConfigMap")
        .map(|d| d["metadata"]["name"].as_str().unwrap())
        .collect();
    let deployment = rendered.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let mut referenced = Vec::new();
    for volume in deployment["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
    {
        if let Some(n) = volume["configMap"]["name"].as_str() {
            referenced.push(n.to_string());
        }
        for source in volume["projected"]["sources"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if let Some(n) = source["configMap"]["name"].as_str() {
                referenced.push(n.to_string());
            }
        }
    }
    for n in referenced.iter().filter(|n| *n != "kube-root-ca.crt") {
        assert!(config_maps.contains(n.as_str()), "{n} is not rendered");
        assert!(
            n.rsplit_once('-').map(|(_, hash)| hash.len()) == Some(10),
            "{n} carries the content hash"
        );
    }
    let images: Vec<&str> = rendered
        .iter()
        .filter(|d| d["kind"] == "Deployment" || d["kind"] == "DaemonSet")
        .flat_map(|d| {
            d["spec"]["template"]["spec"]["containers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["image"].as_str().unwrap())
        })
        .collect();
    let kustomization = yaml("manifests/kustomization.yaml");
    let tag = kustomization["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "registry.k8s.io/kube-scheduler")
        .and_then(|e| e["newTag"].as_str())
        .unwrap();
    assert!(images.contains(&format!("registry.k8s.io/kube-scheduler:{tag}").as_str()));
    assert!(images.iter().all(|i| i.contains(':')), "{images:?}");
}
