//! The deployment (`manifests/`, a kustomize base; `Dockerfile`; the operations docs) agrees with
//! the code: every document is a typed Kubernetes object with no dropped field, the kustomization
//! lists every file, the extender entry, the sidecar's flags, the mounted files and the probes
//! meet in one place, RBAC grants exactly a table that mirrors the API calls the code makes, and
//! every container is locked down (one documented exception).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, Node, NodeSelectorRequirement, PodSpec, ServiceAccount,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tower::ServiceExt;

use vramfit::core::Reason;
use vramfit::extender::binder::RecordOnly;
use vramfit::extender::http::{ops_router, router, App};
use vramfit::extender::metrics::{Metrics, ReasonLabels};
use vramfit::extender::settings::{load_catalog, Settings};
use vramfit::extender::state::{ExtenderState, WatchedResource};

// ---------------------------------------------------------------------------------------------
// The tables the RBAC must match. Each row is one (ServiceAccount, scope, API group, resource,
// verb, resource name) the manifests grant; "cluster" is a ClusterRoleBinding's scope.

/// Mirrors the API calls of the code (checked against recorded requests below):
/// * agent (`src/agent/run.rs`): PATCH its Node (a JSON merge patch of one annotation); get to
///   read it back.
/// * extender (`vramfit-extender`; live mode, `src/extender/watch.rs`): the watchers list and watch nodes
///   and pods, `KubeBinder` creates pods/binding (`src/extender/binder.rs`; `src/kubernetes/client.rs`, for `place`, only lists). No
///   get: nothing reads one object by name.
/// * the second kube-scheduler: its leader-election Lease, get and update (create comes with
///   system:kube-scheduler).
const GRANTS: &[(&str, &str, &str, &str, &str, &str)] = &[
    ("vramfit-agent", "cluster", "", "nodes", "get", ""),
    ("vramfit-agent", "cluster", "", "nodes", "patch", ""),
    ("vramfit-scheduler", "cluster", "", "nodes", "list", ""),
    ("vramfit-scheduler", "cluster", "", "nodes", "watch", ""),
    ("vramfit-scheduler", "cluster", "", "pods", "list", ""),
    ("vramfit-scheduler", "cluster", "", "pods", "watch", ""),
    (
        "vramfit-scheduler",
        "cluster",
        "",
        "pods/binding",
        "create",
        "",
    ),
    (
        "vramfit-scheduler",
        "vramfit-system",
        "coordination.k8s.io",
        "leases",
        "get",
        "vramfit-scheduler",
    ),
    (
        "vramfit-scheduler",
        "vramfit-system",
        "coordination.k8s.io",
        "leases",
        "update",
        "vramfit-scheduler",
    ),
];

/// Built-in roles bound as they are (what kube-scheduler itself runs with): ServiceAccount,
/// role kind, scope, role name.
const BUILT_IN_ROLES: &[(&str, &str, &str, &str)] = &[
    (
        "vramfit-scheduler",
        "ClusterRole",
        "cluster",
        "system:kube-scheduler",
    ),
    (
        "vramfit-scheduler",
        "ClusterRole",
        "cluster",
        "system:volume-scheduler",
    ),
    (
        "vramfit-scheduler",
        "Role",
        "kube-system",
        "extension-apiserver-authentication-reader",
    ),
];

/// Containers allowed to run as root and privileged, and why (also in the manifest's comment).
const ROOT_EXCEPTIONS: &[(&str, &str, &str)] = &[(
    "vramfit-agent-ascend",
    "agent",
    "npu-smi opens /dev/davinci* that no device plugin allocated to the agent",
)];

/// The per-class metrics docs/operations.md's KEDA ScaledObject may scale on.
const KEDA_METRICS: &[&str] = &[
    "vramfit_device_class_free_vram_mib",
    "vramfit_device_class_free_devices",
];

// ---------------------------------------------------------------------------------------------
// Loading the base.

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(root().join(relative))
        .unwrap_or_else(|e| panic!("reading {relative}: {e}"))
}

/// The YAML documents of a text, as JSON values (empty documents skipped).
fn documents(text: &str, what: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{what}: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

fn yaml(relative: &str) -> Value {
    let mut docs = documents(&read(relative), relative);
    assert_eq!(docs.len(), 1, "{relative}: one document");
    docs.remove(0)
}

/// Where `a` and `b` first differ, if they do.
fn first_difference(a: &Value, b: &Value, at: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, v) in x {
                let here = format!("{at}.{k}");
                match y.get(k) {
                    None => return Some(format!("{here} is not a field of the typed object")),
                    Some(w) => {
                        if let Some(d) = first_difference(v, w, &here) {
                            return Some(d);
                        }
                    }
                }
            }
            y.keys()
                .find(|k| !x.contains_key(*k))
                .map(|k| format!("{at}.{k} appeared in the typed object"))
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (v, w))| first_difference(v, w, &format!("{at}[{i}]"))),
        _ if a == b => None,
        _ => Some(format!("{at}: {a} became {b}")),
    }
}

/// Parses a document into its typed object and back: a field the type does not know (a typo, a
/// field at the wrong level) would be dropped silently by the parse, so it fails here.
fn typed<T>(what: &str, doc: &Value) -> T
where
    T: DeserializeOwned + Serialize + k8s_openapi::Resource,
{
    assert_eq!(doc["apiVersion"], T::API_VERSION, "{what}");
    let object: T = serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{what}: {e}"));
    let back = serde_json::to_value(&object).unwrap();
    if let Some(difference) = first_difference(doc, &back, "") {
        panic!("{what}: {difference}");
    }
    object
}

struct Generator {
    name: String,
    namespace: String,
    /// key in the ConfigMap → file, relative to manifests/
    files: Vec<(String, String)>,
}

#[derive(Default)]
struct Base {
    kustomization: Value,
    resources: Vec<String>,
    generators: Vec<Generator>,
    namespaces: Vec<Namespace>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    roles: Vec<Role>,
    role_bindings: Vec<RoleBinding>,
    deployments: Vec<Deployment>,
    daemon_sets: Vec<DaemonSet>,
    pdbs: Vec<PodDisruptionBudget>,
    /// The ConfigMaps of configMapGenerator (names without kustomize's hash suffix).
    config_maps: Vec<ConfigMap>,
}

fn name(meta: &ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or("")
}

fn namespace(meta: &ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or("")
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| s.as_str().expect("a string").to_string())
                .collect()
        })
        .unwrap_or_default()
}

impl Base {
    fn load() -> Base {
        let kustomization = yaml("manifests/kustomization.yaml");
        assert_eq!(kustomization["kind"], "Kustomization");
        let mut base = Base {
            resources: strings(&kustomization["resources"]),
            ..Base::default()
        };
        for generator in kustomization["configMapGenerator"].as_array().unwrap() {
            let files: Vec<(String, String)> = strings(&generator["files"])
                .into_iter()
                .map(|f| match f.split_once('=') {
                    Some((key, path)) => (key.to_string(), path.to_string()),
                    None => (
                        Path::new(&f)
                            .file_name()
                            .unwrap()
                            .to_string_lossy()
                            .into_owned(),
                        f,
                    ),
                })
                .collect();
            let g = Generator {
                name: generator["name"].as_str().unwrap().to_string(),
                namespace: generator["namespace"]
                    .as_str()
                    .expect("generated ConfigMaps name their namespace")
                    .to_string(),
                files,
            };
            let data = g
                .files
                .iter()
                .map(|(key, path)| (key.clone(), read(&format!("manifests/{path}"))))
                .collect();
            base.config_maps.push(ConfigMap {
                metadata: ObjectMeta {
                    name: Some(g.name.clone()),
                    namespace: Some(g.namespace.clone()),
                    ..ObjectMeta::default()
                },
                data: Some(data),
                ..ConfigMap::default()
            });
            base.generators.push(g);
        }
        for file in base.resources.clone() {
            let text = read(&format!("manifests/{file}"));
            for (i, doc) in documents(&text, &file).iter().enumerate() {
                let kind = doc["kind"].as_str().unwrap_or("");
                let what = format!("manifests/{file} document {} ({kind})", i + 1);
                match kind {
                    "Namespace" => base.namespaces.push(typed(&what, doc)),
                    "ServiceAccount" => base.service_accounts.push(typed(&what, doc)),
                    "ClusterRole" => base.cluster_roles.push(typed(&what, doc)),
                    "ClusterRoleBinding" => base.cluster_role_bindings.push(typed(&what, doc)),
                    "Role" => base.roles.push(typed(&what, doc)),
                    "RoleBinding" => base.role_bindings.push(typed(&what, doc)),
                    "Deployment" => base.deployments.push(typed(&what, doc)),
                    "DaemonSet" => base.daemon_sets.push(typed(&what, doc)),
                    "PodDisruptionBudget" => base.pdbs.push(typed(&what, doc)),
                    "ConfigMap" => base.config_maps.push(typed(&what, doc)),
                    other => panic!("{what}: kind {other:?} is not one this test knows"),
                }
            }
        }
        base.kustomization = kustomization;
        base
    }

    fn config_map(&self, namespace_: &str, name_: &str) -> &ConfigMap {
        self.config_maps
            .iter()
            .find(|c| name(&c.metadata) == name_ && namespace(&c.metadata) == namespace_)
            .unwrap_or_else(|| panic!("no ConfigMap {namespace_}/{name_}"))
    }

    fn deployment(&self, name_: &str) -> &Deployment {
        self.deployments
            .iter()
            .find(|d| name(&d.metadata) == name_)
            .unwrap_or_else(|| panic!("no Deployment {name_}"))
    }

    fn daemon_set(&self, name_: &str) -> &DaemonSet {
        self.daemon_sets
            .iter()
            .find(|d| name(&d.metadata) == name_)
            .unwrap_or_else(|| panic!("no DaemonSet {name_}"))
    }

    /// Every pod template: (workload name, namespace, pod spec).
    fn workloads(&self) -> Vec<(&str, &str, &PodSpec)> {
        let deployments = self.deployments.iter().map(|d| {
            (
                name(&d.metadata),
                namespace(&d.metadata),
                d.spec.as_ref().unwrap().template.spec.as_ref().unwrap(),
            )
        });
        let daemon_sets = self.daemon_sets.iter().map(|d| {
            (
                name(&d.metadata),
                namespace(&d.metadata),
                d.spec.as_ref().unwrap().template.spec.as_ref().unwrap(),
            )
        });
        deployments.chain(daemon_sets).collect()
    }

    /// The content of `path` as `container` sees it through its ConfigMap or projected-ConfigMap
    /// volume mounts.
    fn mounted_file(
        &self,
        namespace_: &str,
        spec: &PodSpec,
        container: &Container,
        path: &str,
    ) -> Option<String> {
        for mount in container.volume_mounts.iter().flatten() {
            let Some(relative) = path
                .strip_prefix(mount.mount_path.as_str())
                .and_then(|r| r.strip_prefix('/'))
            else {
                continue;
            };
            assert!(mount.sub_path.is_none(), "no subPath mounts");
            let volume = spec
                .volumes
                .iter()
                .flatten()
                .find(|v| v.name == mount.name)
                .unwrap_or_else(|| panic!("volume {} is not declared", mount.name));
            let mut sources = Vec::new();
            if let Some(cm) = &volume.config_map {
                sources.push((cm.name.clone(), cm.items.clone()));
            }
            if let Some(projected) = &volume.projected {
                for source in projected.sources.iter().flatten() {
                    if let Some(cm) = &source.config_map {
                        sources.push((cm.name.clone(), cm.items.clone()));
                    }
                }
            }
            for (cm_name, items) in sources {
                if cm_name == "kube-root-ca.crt" {
                    continue;
                }
                let data = self.config_map(namespace_, &cm_name).data.clone()?;
                let key = match &items {
                    Some(items) => items
                        .iter()
                        .find(|i| i.path == relative)
                        .map(|i| i.key.clone()),
                    None => Some(relative.to_string()),
                };
                if let Some(content) = key.and_then(|k| data.get(&k)) {
                    return Some(content.clone());
                }
            }
        }
        None
    }
}

fn container<'a>(spec: &'a PodSpec, name_: &str) -> &'a Container {
    spec.containers
        .iter()
        .find(|c| c.name == name_)
        .unwrap_or_else(|| panic!("no container {name_}"))
}

/// The value of `--name VALUE` or `--name=VALUE`.
fn flag(args: &[String], name_: &str) -> Option<String> {
    let long = format!("--{name_}");
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if *a == long {
            return it.next().cloned();
        }
        if let Some(v) = a.strip_prefix(&format!("{long}=")) {
            return Some(v.to_string());
        }
    }
    None
}

fn scheduler_pod(base: &Base) -> (&str, &PodSpec) {
    let d = base.deployment("vramfit-scheduler");
    (
        namespace(&d.metadata),
        d.spec.as_ref().unwrap().template.spec.as_ref().unwrap(),
    )
}

/// What the vramfit container runs with: its args and the files they name, as mounted.
struct Sidecar {
    args: Vec<String>,
    listen: SocketAddr,
    /// `--metrics-listen`: the ops listener (probes, scraping).
    metrics_listen: SocketAddr,
    /// flag → (path in the container, content)
    files: BTreeMap<&'static str, (String, String)>,
}

fn sidecar(base: &Base) -> Sidecar {
    let (ns, spec) = scheduler_pod(base);
    let vramfit = container(spec, "vramfit");
    let args = vramfit.args.clone().unwrap_or_default();
    assert_eq!(args.first().map(String::as_str), Some("serve"));
    let listen: SocketAddr = flag(&args, "listen")
        .expect("--listen is explicit")
        .parse()
        .unwrap();
    let metrics_listen: SocketAddr = flag(&args, "metrics-listen")
        .expect("--metrics-listen is explicit")
        .parse()
        .unwrap();
    assert_eq!(
        flag(&args, "snapshot"),
        None,
        "the sidecar runs live: no --snapshot"
    );
    let mut files = BTreeMap::new();
    for name_ in ["config", "catalog"] {
        let path = flag(&args, name_).unwrap_or_else(|| panic!("serve --{name_}"));
        let content = base
            .mounted_file(ns, spec, vramfit, &path)
            .unwrap_or_else(|| panic!("--{name_} {path} is not provided by a mounted ConfigMap"));
        files.insert(name_, (path, content));
    }
    Sidecar {
        args,
        listen,
        metrics_listen,
        files,
    }
}

/// Writes the sidecar's files to a scratch folder (for the loaders, which take paths).
fn scratch_files(sidecar: &Sidecar, tag: &str) -> BTreeMap<&'static str, PathBuf> {
    let dir = std::env::temp_dir().join(format!("vramfit-manifests-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    sidecar
        .files
        .iter()
        .map(|(flag_, (_, content))| {
            let path = dir.join(format!("{flag_}.yaml"));
            std::fs::write(&path, content).unwrap();
            (*flag_, path)
        })
        .collect()
}

fn settings_of(sidecar: &Sidecar) -> Settings {
    let files = scratch_files(sidecar, "settings");
    Settings::load(Some(&files["config"])).unwrap()
}

fn scheduler_config(base: &Base) -> Value {
    let (ns, spec) = scheduler_pod(base);
    let ks = container(spec, "kube-scheduler");
    let command = ks.command.clone().unwrap_or_default();
    let path = flag(&command, "config").expect("kube-scheduler --config");
    let text = base
        .mounted_file(ns, spec, ks, &path)
        .unwrap_or_else(|| panic!("kube-scheduler --config {path} is not mounted"));
    let mut docs = documents(&text, &path);
    assert_eq!(docs.len(), 1);
    docs.remove(0)
}

/// `http://HOST:PORT/PATH` → (HOST:PORT, /PATH).
fn split_url(url: &str) -> (SocketAddr, String) {
    let rest = url
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("{url}: plain http (TLS is off in the deployment)"));
    let (host_port, path) = rest.split_once('/').unwrap_or((rest, ""));
    (
        host_port
            .parse()
            .unwrap_or_else(|e| panic!("{url}: {host_port}: {e}")),
        format!("/{}", path.trim_end_matches('/')),
    )
}

// ---------------------------------------------------------------------------------------------
// The base itself.

#[test]
fn every_document_is_a_typed_object_with_no_field_dropped() {
    let base = Base::load();
    assert_eq!(base.namespaces.len(), 1);
    assert_eq!(name(&base.namespaces[0].metadata), "vramfit-system");
    assert_eq!(base.service_accounts.len(), 2);
    assert_eq!(base.deployments.len(), 1);
    assert_eq!(base.daemon_sets.len(), 2);
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
    let caught = std::panic::catch_unwind(|| typed::<ServiceAccount>("misspelt", &doc));
    assert!(caught.is_err());
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

// ---------------------------------------------------------------------------------------------
// The scheduler pod: kube-scheduler's config, the sidecar's flags and files, the probes.

#[test]
fn scheduler_config_is_the_sample_with_its_lease_where_the_role_allows() {
    let base = Base::load();
    let config = scheduler_config(&base);
    assert_eq!(
        config,
        yaml("manifests/config/kube-scheduler.yaml"),
        "the mounted file is config/kube-scheduler.yaml"
    );
    let (ns, spec) = scheduler_pod(&base);
    let lease_ns = config["leaderElection"]["resourceNamespace"]
        .as_str()
        .unwrap();
    let lease = config["leaderElection"]["resourceName"].as_str().unwrap();
    assert_eq!(config["leaderElection"]["leaderElect"], true);
    assert_eq!(lease_ns, ns, "the Lease lives beside the scheduler");
    assert_eq!(lease, "vramfit-scheduler");

    // Same as scheduler-config/kube-scheduler-v1.yaml but for the Lease's namespace.
    let mut sample = yaml("scheduler-config/kube-scheduler-v1.yaml");
    sample["leaderElection"]["resourceNamespace"] = Value::from(lease_ns);
    assert_eq!(config, sample);

    // A Role in that namespace lets the pod's ServiceAccount get and update that Lease.
    let sa = spec.service_account_name.as_deref().unwrap();
    let granted = effective_grants(&base).0;
    for verb in ["get", "update"] {
        assert!(
            granted.contains(&Grant::new(
                sa,
                lease_ns,
                "coordination.k8s.io",
                "leases",
                verb,
                lease
            )),
            "{sa} may {verb} lease {lease_ns}/{lease}"
        );
    }
}

#[test]
fn vramfit_config_is_the_sample_and_every_file_loads() {
    let base = Base::load();
    let sidecar = sidecar(&base);
    let (_, config) = &sidecar.files["config"];
    assert_eq!(
        documents(config, "vramfit.yaml"),
        vec![yaml("scheduler-config/vramfit-config.yaml")],
        "manifests/config/vramfit.yaml is scheduler-config/vramfit-config.yaml"
    );
    let files = scratch_files(&sidecar, "load");
    let settings = Settings::load(Some(&files["config"])).unwrap();
    assert_eq!(
        settings.server.tls_cert_file, None,
        "plain HTTP on loopback"
    );
    load_catalog(Some(&files["catalog"])).unwrap();
    assert_eq!(
        settings.server.metrics_listen, None,
        "the ops listener is set by the flag, in one place"
    );
    assert!(
        settings.server.bind_timeout_millis < 3000,
        "a Binding's time at the API server fits in the extender's httpTimeout (3s)"
    );
}

/// The sidecar's server as live mode builds it (binds recorded in memory instead of sent),
/// ready as after both initial lists.
fn app_of(sidecar: &Sidecar) -> (App, Settings) {
    let files = scratch_files(sidecar, "app");
    let settings = Settings::load(Some(&files["config"])).unwrap();
    let catalog = load_catalog(Some(&files["catalog"])).unwrap();
    let cluster = ExtenderState::new(settings.placement.clone(), catalog, Box::new(RecordOnly));
    cluster.set_ready(true);
    let app = App {
        cluster: Arc::new(cluster),
        metrics: Arc::new(Metrics::default()),
    };
    (app, settings)
}

fn request(method: &str, path: &str) -> Request<Body> {
    let body = if method != "POST" {
        Body::empty()
    } else if path.ends_with("/bind") {
        Body::from(r#"{"PodName":"p","PodNamespace":"default","PodUID":"u","Node":"n"}"#)
    } else {
        Body::from(r#"{"Pod":{"metadata":{"name":"p","namespace":"default"}},"NodeNames":[]}"#)
    };
    Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(body)
        .unwrap()
}

/// The status of a call to the extender listener (`--listen`).
async fn status(app: &App, settings: &Settings, method: &str, path: &str) -> StatusCode {
    router(app.clone(), &settings.server)
        .oneshot(request(method, path))
        .await
        .unwrap()
        .status()
}

/// The status of a call to the ops listener (`--metrics-listen`).
async fn ops_status(app: &App, method: &str, path: &str) -> StatusCode {
    ops_router(app.clone())
        .oneshot(request(method, path))
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn extender_url_is_the_sidecars_listen_address_and_its_verbs_are_served_routes() {
    let base = Base::load();
    let sidecar = sidecar(&base);
    let config = scheduler_config(&base);
    let extenders = config["extenders"].as_array().unwrap();
    assert_eq!(extenders.len(), 1);
    let extender = &extenders[0];
    let (addr, path) = split_url(extender["urlPrefix"].as_str().unwrap());
    assert_eq!(
        addr, sidecar.listen,
        "urlPrefix host:port is serve --listen"
    );
    assert!(
        addr.ip().is_loopback(),
        "the sidecar is reached on loopback"
    );
    let (app, settings) = app_of(&sidecar);
    assert_eq!(
        path, settings.server.path_prefix,
        "urlPrefix path is server.pathPrefix"
    );
    assert_eq!(
        extender["bindVerb"], "bind",
        "serve runs live and is the binder"
    );
    let mut verbs = 0;
    for key in ["filterVerb", "prioritizeVerb", "bindVerb", "preemptVerb"] {
        if let Some(verb) = extender.get(key).and_then(Value::as_str) {
            verbs += 1;
            // kube-scheduler POSTs to urlPrefix + "/" + verb.
            let route = format!("{path}/{verb}");
            assert_eq!(
                status(&app, &settings, "POST", &route).await,
                StatusCode::OK,
                "{key}: POST {route}"
            );
        }
    }
    assert_eq!(verbs, 3, "filter, prioritize and bind");
    assert_eq!(
        status(&app, &settings, "POST", &format!("{path}/preempt")).await,
        StatusCode::NOT_FOUND,
        "an unserved verb is caught"
    );
    // The ops listener on the pod IP serves none of the verbs.
    assert!(!sidecar.metrics_listen.ip().is_loopback());
    for verb in ["filter", "prioritize", "bind"] {
        assert_eq!(
            ops_status(&app, "POST", &format!("{path}/{verb}")).await,
            StatusCode::NOT_FOUND,
            "{verb} is not served on --metrics-listen"
        );
    }
}

/// The httpGet probe of the vramfit container: (port, path), the port resolved through the
/// container's named ports.
fn http_probe(
    container: &Container,
    probe: Option<&k8s_openapi::api::core::v1::Probe>,
    what: &str,
) -> (u16, String) {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let probe = probe.unwrap_or_else(|| panic!("vramfit has a {what} probe"));
    assert!(
        probe.exec.is_none() && probe.tcp_socket.is_none(),
        "{what}: httpGet on the ops listener"
    );
    let get = probe.http_get.as_ref().unwrap();
    assert_eq!(get.scheme.as_deref().unwrap_or("HTTP"), "HTTP", "{what}");
    assert_eq!(get.host, None, "{what}: the kubelet connects to the pod IP");
    let port = match &get.port {
        IntOrString::Int(p) => *p,
        IntOrString::String(named) => {
            container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(named.as_str()))
                .unwrap_or_else(|| panic!("{what}: no container port named {named}"))
                .container_port
        }
    };
    (
        u16::try_from(port).unwrap(),
        get.path.clone().unwrap_or_default(),
    )
}

#[tokio::test]
async fn probes_hit_served_routes_on_the_metrics_port() {
    let base = Base::load();
    let sidecar = sidecar(&base);
    let (_, spec) = scheduler_pod(&base);
    let vramfit = container(spec, "vramfit");
    let (app, _) = app_of(&sidecar);
    let metrics_port = vramfit
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("metrics"))
        .expect("a container port named metrics");
    assert_eq!(
        metrics_port.container_port,
        i32::from(sidecar.metrics_listen.port()),
        "the metrics port is --metrics-listen's"
    );
    assert!(
        sidecar.metrics_listen.ip().is_unspecified(),
        "the kubelet and Prometheus reach the pod IP"
    );
    for (probe, what, expected) in [
        (vramfit.liveness_probe.as_ref(), "liveness", "/healthz"),
        (vramfit.readiness_probe.as_ref(), "readiness", "/readyz"),
    ] {
        let (port, path) = http_probe(vramfit, probe, what);
        assert_eq!(
            port,
            sidecar.metrics_listen.port(),
            "{what} probes the ops listener"
        );
        assert_eq!(path, expected, "{what}");
        assert_eq!(
            ops_status(&app, "GET", &path).await,
            StatusCode::OK,
            "{what}"
        );
        assert!(probe.unwrap().timeout_seconds.unwrap_or(1) >= 2, "{what}");
    }
    // Readiness waits for the initial lists; liveness does not.
    app.cluster.set_ready(false);
    assert_eq!(
        ops_status(&app, "GET", "/readyz").await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(ops_status(&app, "GET", "/healthz").await, StatusCode::OK);
    // Prometheus scrapes the same port, through the pod template's annotations.
    let template = &base
        .deployment("vramfit-scheduler")
        .spec
        .as_ref()
        .unwrap()
        .template;
    let annotations = template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.clone())
        .unwrap_or_default();
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(
        annotations["prometheus.io/port"],
        sidecar.metrics_listen.port().to_string()
    );
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
    assert_eq!(ops_status(&app, "GET", "/metrics").await, StatusCode::OK);
    // kube-scheduler's own probes use its HTTPS port, which it serves on every interface.
    let ks = container(spec, "kube-scheduler");
    for probe in [&ks.liveness_probe, &ks.readiness_probe] {
        let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(get.scheme.as_deref(), Some("HTTPS"));
        assert_eq!(
            get.port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(10259)
        );
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A fake API server on loopback for the built binary: lists one GPU node and no pods (the pod
/// list waits until `release` is set), and holds every watch open.
fn fake_api_server(
    runtime: &tokio::runtime::Runtime,
    release: Arc<std::sync::atomic::AtomicBool>,
) -> u16 {
    use axum::http::Uri;
    let app = axum::Router::new().fallback(move |uri: Uri| {
        let release = release.clone();
        async move {
            let query = uri.query().unwrap_or("");
            if query.contains("watch=true") {
                tokio::time::sleep(Duration::from_secs(600)).await;
                return json_body(String::new());
            }
            let body = if uri.path().ends_with("/nodes") {
                serde_json::json!({"apiVersion": "v1", "kind": "NodeList",
                    "metadata": {"resourceVersion": "1"},
                    "items": [{"apiVersion": "v1", "kind": "Node",
                        "metadata": {"name": "gpu-1", "resourceVersion": "1", "labels": {
                            "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB",
                            "nvidia.com/gpu.memory": "81920"}},
                        "status": {"allocatable": {"nvidia.com/gpu": "2"}}}]})
            } else {
                while !release.load(std::sync::atomic::Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                serde_json::json!({"apiVersion": "v1", "kind": "PodList",
                    "metadata": {"resourceVersion": "1"}, "items": []})
            };
            json_body(body.to_string())
        }
    });
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    runtime.spawn(async move { axum::serve(listener, app).await });
    port
}

/// A JSON body for the fake API server.
fn json_body(body: String) -> axum::response::Response {
    use axum::response::IntoResponse;
    ([("content-type", "application/json")], body).into_response()
}

/// Runs the container's command line (paths and ports moved to this machine; a kubeconfig for a
/// fake API server in place of the in-cluster token) with the built binary, then does what the
/// kubelet's httpGet probes do on the metrics port: 503 until the initial lists are in, then 200.
#[test]
fn the_sidecar_command_serves_live_and_its_probes_pass() {
    let base = Base::load();
    let sidecar = sidecar(&base);
    let files = scratch_files(&sidecar, "e2e");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let release = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let api_port = fake_api_server(&runtime, release.clone());
    let kubeconfig = files["config"].with_file_name("kubeconfig.yaml");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
             clusters: [{{name: fake, cluster: {{server: 'http://127.0.0.1:{api_port}'}}}}]\n\
             users: [{{name: fake, user: {{}}}}]\n\
             contexts: [{{name: fake, context: {{cluster: fake, user: fake}}}}]\n"
        ),
    )
    .unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut args: Vec<String> = sidecar
        .args
        .iter()
        .map(|a| {
            if *a == sidecar.listen.to_string() {
                return listen.clone();
            }
            if *a == sidecar.metrics_listen.to_string() {
                return metrics.to_string();
            }
            for (flag_, (path, _)) in &sidecar.files {
                if a == path {
                    return files[flag_].to_string_lossy().into_owned();
                }
            }
            a.clone()
        })
        .collect();
    args.push("--kubeconfig".into());
    args.push(kubeconfig.to_string_lossy().into_owned());
    let mut server = Command::new(env!("CARGO_BIN_EXE_vramfit"))
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (_, spec) = scheduler_pod(&base);
    let vramfit = container(spec, "vramfit");
    let (_, live_path) = http_probe(vramfit, vramfit.liveness_probe.as_ref(), "liveness");
    let (_, ready_path) = http_probe(vramfit, vramfit.readiness_probe.as_ref(), "readiness");
    // An HTTP GET that passes on 200 only, as the kubelet's httpGet (and `vramfit probe`).
    let get = |path: &str| vramfit::extender::probe::check(metrics, path, Duration::from_secs(5));
    let wait = |what: &str, server: &mut std::process::Child, ok: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ok() {
            if let Some(exit) = server.try_wait().unwrap() {
                let mut err = String::new();
                std::io::Read::read_to_string(server.stderr.as_mut().unwrap(), &mut err).unwrap();
                panic!("vramfit serve exited ({exit}): {err}");
            }
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait("liveness passes", &mut server, &|| get(&live_path).is_ok());
    let before = get(&ready_path);
    release.store(true, std::sync::atomic::Ordering::SeqCst);
    wait(
        "readiness passes once the lists are in",
        &mut server,
        &|| get(&ready_path).is_ok(),
    );
    let exposition = get("/metrics");
    let verb = get("/scheduler/filter");
    let main = vramfit::extender::probe::check(
        listen.parse().unwrap(),
        &ready_path,
        Duration::from_secs(5),
    );
    server.kill().unwrap();
    server.wait().unwrap();
    let before = before.unwrap_err().to_string();
    assert!(
        before.ends_with("status 503"),
        "not ready before the pod list: {before}"
    );
    let exposition = exposition.unwrap();
    assert!(
        exposition.contains(r#"vramfit_device_vram_total_mib{node="gpu-1",device="0""#),
        "the watched node's devices are exported: {exposition}"
    );
    assert!(
        verb.unwrap_err().to_string().ends_with("status 404"),
        "no extender verb on the metrics port"
    );
    main.expect("the extender listener answers /readyz too");
    // Nothing listens any more: the probe fails rather than hangs.
    assert!(get(&live_path).is_err());
}

#[test]
fn probe_answers_on_status_200_only() {
    use std::io::{Read, Write};
    fn answer(reply: &'static str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(reply.as_bytes());
        });
        addr
    }
    let t = Duration::from_secs(5);
    let addr = answer("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
    assert_eq!(
        vramfit::extender::probe::check(addr, "/healthz", t).unwrap(),
        "ok"
    );
    let addr = answer("HTTP/1.1 503 Service Unavailable\r\n\r\nnot ready");
    let e = vramfit::extender::probe::check(addr, "/readyz", t).unwrap_err();
    assert!(e.to_string().ends_with("/readyz: status 503"), "{e}");
    let addr = answer("SSH-2.0-OpenSSH\r\n");
    assert!(matches!(
        vramfit::extender::probe::check(addr, "/healthz", t),
        Err(vramfit::extender::probe::ProbeError::NotHttp { .. })
    ));
    for bad in ["healthz", "/a b"] {
        assert!(matches!(
            vramfit::extender::probe::check(addr, bad, t),
            Err(vramfit::extender::probe::ProbeError::BadPath(_))
        ));
    }
}

#[test]
fn scheduler_pod_mounts_the_token_only_into_the_containers_that_call_the_api() {
    let base = Base::load();
    let (_, spec) = scheduler_pod(&base);
    assert_eq!(spec.automount_service_account_token, Some(false));
    let token_volumes: Vec<&str> = spec
        .volumes
        .iter()
        .flatten()
        .filter(|v| {
            v.projected.as_ref().is_some_and(|p| {
                p.sources
                    .iter()
                    .flatten()
                    .any(|s| s.service_account_token.is_some())
            })
        })
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(token_volumes.len(), 1);
    for c in &spec.containers {
        let mounts: Vec<_> = c
            .volume_mounts
            .iter()
            .flatten()
            .filter(|m| token_volumes.contains(&m.name.as_str()))
            .collect();
        // kube-scheduler, and vramfit in live mode (watches, Bindings).
        if c.name == "kube-scheduler" || c.name == "vramfit" {
            assert_eq!(mounts.len(), 1, "{}", c.name);
            assert_eq!(
                mounts[0].mount_path,
                "/var/run/secrets/kubernetes.io/serviceaccount"
            );
        } else {
            assert!(mounts.is_empty(), "{} gets no API token", c.name);
        }
    }
    let sa = spec.service_account_name.as_deref().unwrap();
    assert!(base
        .service_accounts
        .iter()
        .any(|s| name(&s.metadata) == sa));
    // The extender's role is bound to the ServiceAccount the vramfit container runs as.
    let binding = base
        .cluster_role_bindings
        .iter()
        .find(|b| b.role_ref.name == "vramfit-extender")
        .expect("the vramfit-extender ClusterRole is bound");
    assert!(binding
        .subjects
        .iter()
        .flatten()
        .any(|s| s.kind == "ServiceAccount" && s.name == sa));
    let sidecar = sidecar(&base);
    assert!(
        spec.termination_grace_period_seconds.unwrap_or(30) as u64
            > settings_of(&sidecar).server.shutdown_grace_seconds,
        "the pod waits for vramfit's drain"
    );
}

#[test]
fn pdb_keeps_one_of_the_scheduler_replicas() {
    let base = Base::load();
    let deployment = base.deployment("vramfit-scheduler");
    let spec = deployment.spec.as_ref().unwrap();
    let replicas = spec.replicas.unwrap_or(1);
    let pdb = &base.pdbs[0];
    assert_eq!(namespace(&pdb.metadata), namespace(&deployment.metadata));
    let pdb_spec = pdb.spec.as_ref().unwrap();
    let selector = pdb_spec
        .selector
        .as_ref()
        .unwrap()
        .match_labels
        .clone()
        .unwrap();
    let labels = spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone()
        .unwrap();
    assert!(selector.iter().all(|(k, v)| labels.get(k) == Some(v)));
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let Some(IntOrString::Int(min)) = pdb_spec.min_available else {
        panic!("minAvailable as a number")
    };
    assert!(
        min >= 1 && min < replicas,
        "a drain can still move one of {replicas}"
    );
}

// ---------------------------------------------------------------------------------------------
// RBAC.

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Grant {
    sa: String,
    scope: String,
    group: String,
    resource: String,
    verb: String,
    name: String,
}

impl Grant {
    fn new(sa: &str, scope: &str, group: &str, resource: &str, verb: &str, name_: &str) -> Self {
        Grant {
            sa: sa.into(),
            scope: scope.into(),
            group: group.into(),
            resource: resource.into(),
            verb: verb.into(),
            name: name_.into(),
        }
    }
}

type BuiltIn = (String, String, String, String);

fn expand(rules: &[PolicyRule], sa: &str, scope: &str, out: &mut BTreeSet<Grant>) {
    for rule in rules {
        assert!(rule.non_resource_urls.is_none(), "no non-resource URLs");
        let groups = rule.api_groups.clone().unwrap_or_default();
        let resources = rule.resources.clone().unwrap_or_default();
        let names = rule
            .resource_names
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| vec![String::new()]);
        for x in groups.iter().chain(&resources).chain(&rule.verbs) {
            assert!(!x.contains('*'), "no wildcards: {rule:?}");
        }
        for g in &groups {
            for r in &resources {
                for v in &rule.verbs {
                    for n in &names {
                        out.insert(Grant::new(sa, scope, g, r, v, n));
                    }
                }
            }
        }
    }
}

/// What each ServiceAccount of the base may do, through the roles the base defines, and the
/// built-in roles it binds.
fn effective_grants(base: &Base) -> (BTreeSet<Grant>, BTreeSet<BuiltIn>) {
    let mut grants = BTreeSet::new();
    let mut built_in = BTreeSet::new();
    let mut used_roles = BTreeSet::new();
    let check_subject = |s: &k8s_openapi::api::rbac::v1::Subject| -> String {
        assert_eq!(s.kind, "ServiceAccount", "only ServiceAccounts are bound");
        let ns = s.namespace.as_deref().unwrap_or("");
        assert!(
            base.service_accounts
                .iter()
                .any(|sa| name(&sa.metadata) == s.name && namespace(&sa.metadata) == ns),
            "subject {ns}/{} is a ServiceAccount of the base",
            s.name
        );
        s.name.clone()
    };
    for binding in &base.cluster_role_bindings {
        assert_eq!(binding.role_ref.kind, "ClusterRole");
        for subject in binding.subjects.iter().flatten() {
            let sa = check_subject(subject);
            let role = &binding.role_ref.name;
            match base
                .cluster_roles
                .iter()
                .find(|r| name(&r.metadata) == role)
            {
                Some(r) => {
                    used_roles.insert(("ClusterRole", String::new(), role.clone()));
                    assert!(r.aggregation_rule.is_none());
                    expand(
                        r.rules.as_deref().unwrap_or(&[]),
                        &sa,
                        "cluster",
                        &mut grants,
                    );
                }
                None => {
                    built_in.insert((sa, "ClusterRole".into(), "cluster".into(), role.clone()));
                }
            }
        }
    }
    for binding in &base.role_bindings {
        let ns = namespace(&binding.metadata).to_string();
        for subject in binding.subjects.iter().flatten() {
            let sa = check_subject(subject);
            let role = &binding.role_ref.name;
            let rules = match binding.role_ref.kind.as_str() {
                "Role" => base
                    .roles
                    .iter()
                    .find(|r| name(&r.metadata) == role && namespace(&r.metadata) == ns)
                    .map(|r| {
                        used_roles.insert(("Role", ns.clone(), role.clone()));
                        r.rules.clone().unwrap_or_default()
                    }),
                "ClusterRole" => base
                    .cluster_roles
                    .iter()
                    .find(|r| name(&r.metadata) == role)
                    .map(|r| {
                        used_roles.insert(("ClusterRole", String::new(), role.clone()));
                        r.rules.clone().unwrap_or_default()
                    }),
                other => panic!("roleRef kind {other}"),
            };
            match rules {
                Some(rules) => expand(&rules, &sa, &ns, &mut grants),
                None => {
                    built_in.insert((sa, binding.role_ref.kind.clone(), ns.clone(), role.clone()));
                }
            }
        }
    }
    for r in &base.cluster_roles {
        assert!(
            used_roles.contains(&("ClusterRole", String::new(), name(&r.metadata).to_string())),
            "ClusterRole {} is bound",
            name(&r.metadata)
        );
    }
    for r in &base.roles {
        assert!(
            used_roles.contains(&(
                "Role",
                namespace(&r.metadata).to_string(),
                name(&r.metadata).to_string()
            )),
            "Role {} is bound",
            name(&r.metadata)
        );
    }
    (grants, built_in)
}

#[test]
fn rbac_grants_exactly_the_table() {
    let base = Base::load();
    let (grants, built_in) = effective_grants(&base);
    let expected: BTreeSet<Grant> = GRANTS
        .iter()
        .map(|(sa, scope, g, r, v, n)| Grant::new(sa, scope, g, r, v, n))
        .collect();
    let extra: Vec<_> = grants.difference(&expected).collect();
    let lacking: Vec<_> = expected.difference(&grants).collect();
    assert!(extra.is_empty(), "granted beyond the table: {extra:#?}");
    assert!(
        lacking.is_empty(),
        "the table's rows not granted: {lacking:#?}"
    );
    let expected_built_in: BTreeSet<BuiltIn> = BUILT_IN_ROLES
        .iter()
        .map(|(sa, kind, scope, role)| {
            (
                sa.to_string(),
                kind.to_string(),
                scope.to_string(),
                role.to_string(),
            )
        })
        .collect();
    assert_eq!(built_in, expected_built_in);
    // Each workload runs as the ServiceAccount the table is about.
    for (workload, _, spec) in base.workloads() {
        let sa = spec.service_account_name.as_deref().unwrap_or("default");
        let want = if workload.starts_with("vramfit-agent") {
            "vramfit-agent"
        } else {
            "vramfit-scheduler"
        };
        assert_eq!(sa, want, "{workload}");
    }
}

/// (method, path, query) of each request a fake API server got.
type Seen = Arc<Mutex<Vec<(String, String, String)>>>;

/// The RBAC (verb, resource) of a core/v1 request.
fn rbac_of(method: &str, path: &str, query: &str) -> (String, String) {
    let parts: Vec<&str> = path.trim_start_matches("/api/v1/").split('/').collect();
    let parts: Vec<&str> = if parts[0] == "namespaces" && parts.len() > 2 {
        parts[2..].to_vec()
    } else {
        parts
    };
    let resource = match parts.as_slice() {
        [r] | [r, _] => r.to_string(),
        [r, _, sub] => format!("{r}/{sub}"),
        other => panic!("unexpected path {other:?}"),
    };
    let named = parts.len() >= 2;
    let verb = match (method, named) {
        ("GET", false) if query.contains("watch=true") => "watch",
        ("GET", false) => "list",
        ("GET", true) => "get",
        ("PATCH", _) => "patch",
        ("PUT", _) => "update",
        ("POST", _) => "create",
        ("DELETE", _) => "delete",
        other => panic!("unexpected request {other:?}"),
    };
    (verb.to_string(), resource)
}

#[test]
fn the_api_calls_the_code_makes_are_granted() {
    use axum::http::{Method, Uri};
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let app = axum::Router::new().fallback(move |method: Method, uri: Uri| {
        let record = record.clone();
        async move {
            record.lock().unwrap().push((
                method.to_string(),
                uri.path().to_string(),
                uri.query().unwrap_or("").to_string(),
            ));
            if uri.query().unwrap_or("").contains("watch=true") {
                // Held open, as a quiet watch is.
                tokio::time::sleep(Duration::from_secs(600)).await;
            }
            let kind = if uri.path().ends_with("/pods") {
                "PodList"
            } else if uri.path().ends_with("/nodes") {
                "NodeList"
            } else {
                "Node"
            };
            axum::Json(serde_json::json!({
                "apiVersion": "v1", "kind": kind,
                "metadata": {"name": "gpu-1", "resourceVersion": "1"}, "items": []
            }))
        }
    });
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    runtime.spawn(async move { axum::serve(listener, app).await });
    let client = || {
        let config = kube::Config::new(format!("http://127.0.0.1:{port}").parse().unwrap());
        kube::Client::try_from(config).unwrap()
    };
    let calls = |f: &dyn Fn()| {
        seen.lock().unwrap().clear();
        f();
        let calls: BTreeSet<(String, String)> = seen
            .lock()
            .unwrap()
            .iter()
            .map(|(m, p, q)| rbac_of(m, p, q))
            .collect();
        assert!(!calls.is_empty());
        calls
    };
    // The agent's one write.
    let agent = calls(&|| {
        runtime.block_on(async {
            use vramfit::agent::run::{AnnotationWriter, NodeAnnotationWriter};
            NodeAnnotationWriter::new(client(), "gpu-1")
                .write("{}")
                .await
                .unwrap();
        })
    });
    // `place` without a snapshot: lists only.
    let place = calls(&|| {
        runtime.block_on(async {
            vramfit::kubernetes::client::read_cluster(client())
                .await
                .unwrap();
        });
    });
    // The extender in live mode: the watchers until both have listed and are watching, and one
    // Binding.
    let extender = calls(&|| {
        runtime.block_on(async {
            let catalog = vramfit::core::Catalog::default();
            let state = Arc::new(ExtenderState::new(
                vramfit::core::Config::default(),
                catalog,
                Box::new(RecordOnly),
            ));
            vramfit::extender::watch::spawn_live(client(), state.clone(), Duration::from_secs(120));
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let watching = seen
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|(_, _, q)| q.contains("watch=true"))
                    .count();
                if watching >= 2 && state.is_ready() {
                    break;
                }
                assert!(Instant::now() < deadline, "the watchers list, then watch");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            use vramfit::extender::binder::{BindTarget, Binder};
            let target = BindTarget {
                namespace: "default".into(),
                name: "p".into(),
                uid: "u".into(),
                node: "gpu-1".into(),
            };
            let placement = vramfit::core::Placement {
                pod: "default/p".into(),
                node: "gpu-1".into(),
                zone: None,
                model: None,
                shares: Vec::new(),
                exclusive: true,
            };
            vramfit::extender::binder::KubeBinder::new(client(), Duration::from_secs(3))
                .bind(&target, &placement)
                .await
                .unwrap();
        });
    });
    let base = Base::load();
    let (grants, _) = effective_grants(&base);
    let allowed = |sa: &str, (verb, resource): &(String, String)| {
        grants.contains(&Grant::new(sa, "cluster", "", resource, verb, ""))
    };
    for call in &agent {
        assert!(allowed("vramfit-agent", call), "agent: {call:?}");
    }
    assert_eq!(agent, BTreeSet::from([("patch".into(), "nodes".into())]));
    for call in place.iter().chain(&extender) {
        assert!(allowed("vramfit-scheduler", call), "extender: {call:?}");
    }
    let calls = |rows: &[(&str, &str)]| -> BTreeSet<(String, String)> {
        rows.iter()
            .map(|(v, r)| (v.to_string(), r.to_string()))
            .collect()
    };
    assert_eq!(place, calls(&[("list", "nodes"), ("list", "pods")]));
    let live = calls(&[
        ("list", "nodes"),
        ("watch", "nodes"),
        ("list", "pods"),
        ("watch", "pods"),
        ("create", "pods/binding"),
    ]);
    assert_eq!(extender, live);
    // The extender's ClusterRole grants exactly what live mode calls.
    let role = base
        .cluster_roles
        .iter()
        .find(|r| name(&r.metadata) == "vramfit-extender")
        .unwrap();
    let mut role_grants = BTreeSet::new();
    expand(
        role.rules.as_deref().unwrap_or_default(),
        "vramfit-scheduler",
        "cluster",
        &mut role_grants,
    );
    let expected: BTreeSet<Grant> = live
        .iter()
        .map(|(verb, resource)| Grant::new("vramfit-scheduler", "cluster", "", resource, verb, ""))
        .collect();
    assert_eq!(role_grants, expected);
    drop(runtime);
}

// ---------------------------------------------------------------------------------------------
// Containers.

fn cpu_millis(q: &str) -> u64 {
    match q.strip_suffix('m') {
        Some(m) => m.parse().unwrap(),
        None => (q.parse::<f64>().unwrap() * 1000.0) as u64,
    }
}

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
            assert!(
                cpu_millis(&requests["cpu"].0) <= cpu_millis(&limits["cpu"].0),
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

// ---------------------------------------------------------------------------------------------
// The agents.

fn selects(spec: &PodSpec, labels: &BTreeMap<String, String>) -> bool {
    let selector_ok = spec
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let terms = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .map(|r| r.node_selector_terms.clone())
        .unwrap_or_default();
    let matches = |e: &NodeSelectorRequirement| {
        let value = labels.get(&e.key);
        let values = e.values.clone().unwrap_or_default();
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => !value.is_some_and(|v| values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            other => panic!("operator {other}"),
        }
    };
    selector_ok
        && (terms.is_empty()
            || terms
                .iter()
                .any(|t| t.match_expressions.iter().flatten().all(matches)))
}

#[test]
fn agents_run_on_accelerator_nodes_only_and_report_inside_the_ttl() {
    let base = Base::load();
    let ttl = settings_of(&sidecar(&base)).placement.report_ttl_seconds;
    let nvidia = base.daemon_set("vramfit-agent-nvidia");
    let ascend = base.daemon_set("vramfit-agent-ascend");
    let pod = |d: &DaemonSet| d.spec.as_ref().unwrap().template.spec.clone().unwrap();
    for d in [nvidia, ascend] {
        let spec = pod(d);
        let what = name(&d.metadata);
        let agent = container(&spec, "agent");
        let args = agent.args.clone().unwrap();
        assert_eq!(args[0], "agent", "{what}");
        let heartbeat: u64 = flag(&args, "heartbeat-seconds").unwrap().parse().unwrap();
        let poll: u64 = flag(&args, "poll-seconds").unwrap().parse().unwrap();
        assert!(
            poll <= heartbeat && heartbeat < ttl,
            "{what}: reports stay fresh (heartbeat {heartbeat} s, TTL {ttl} s)"
        );
        let env = agent.env.clone().unwrap_or_default();
        let node_name = env.iter().find(|e| e.name == "NODE_NAME").unwrap();
        let field = node_name
            .value_from
            .as_ref()
            .unwrap()
            .field_ref
            .as_ref()
            .unwrap();
        assert_eq!(field.field_path, "spec.nodeName", "{what}");
        let tolerated: BTreeSet<&str> = spec
            .tolerations
            .iter()
            .flatten()
            .filter(|t| t.operator.as_deref() == Some("Exists") && t.effect.is_none())
            .filter_map(|t| t.key.as_deref())
            .collect();
        for taint in ["nvidia.com/gpu", "huawei.com/Ascend910"] {
            assert!(tolerated.contains(taint), "{what} tolerates {taint}");
        }
        assert_eq!(
            spec.service_account_name.as_deref(),
            Some("vramfit-agent"),
            "{what}"
        );
    }
    let nvidia_env = container(&pod(nvidia), "agent").env.clone().unwrap();
    let var = |n: &str| {
        nvidia_env
            .iter()
            .find(|e| e.name == n)
            .and_then(|e| e.value.clone())
    };
    assert_eq!(var("NVIDIA_VISIBLE_DEVICES").as_deref(), Some("all"));
    assert_eq!(
        var("NVIDIA_DRIVER_CAPABILITIES").as_deref(),
        Some("utility")
    );
    let ascend_spec = pod(ascend);
    let npu_smi = container(&ascend_spec, "agent")
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == "/usr/local/sbin/npu-smi")
        .expect("npu-smi is mounted where PATH finds it");
    let volume = ascend_spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == npu_smi.name)
        .unwrap();
    assert_eq!(
        volume.host_path.as_ref().unwrap().path,
        "/usr/local/sbin/npu-smi"
    );

    // Which nodes each DaemonSet lands on: the example cluster's, plus a CPU node, a GPU Operator
    // node without GFD labels and a HAMi-labelled Ascend node.
    let list = yaml("examples/cluster.yaml");
    let mut nodes: Vec<Node> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["kind"] == "Node")
        .map(|i| serde_json::from_value(i.clone()).unwrap())
        .collect();
    for (node_name, label, value, resource) in [
        ("cpu-0", "kubernetes.io/os", "linux", "cpu"),
        (
            "gpu-operator-0",
            "nvidia.com/gpu.present",
            "true",
            "nvidia.com/gpu",
        ),
        ("hami-ascend-0", "ascend", "on", "huawei.com/Ascend910B3"),
    ] {
        nodes.push(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": node_name, "labels": {label: value}},
                "status": {"allocatable": {resource: "8"}}
            }))
            .unwrap(),
        );
    }
    let (nvidia_spec, mut on_nvidia, mut on_ascend) = (pod(nvidia), 0, 0);
    for node in &nodes {
        let labels = node.metadata.labels.clone().unwrap_or_default();
        let allocatable = node
            .status
            .as_ref()
            .and_then(|s| s.allocatable.clone())
            .unwrap_or_default();
        let has_gpu = allocatable.contains_key("nvidia.com/gpu");
        let has_npu = allocatable
            .keys()
            .any(|k| k.starts_with("huawei.com/Ascend"));
        let n = name(&node.metadata);
        assert_eq!(
            selects(&nvidia_spec, &labels),
            has_gpu,
            "nvidia agent on {n}"
        );
        assert_eq!(
            selects(&ascend_spec, &labels),
            has_npu,
            "ascend agent on {n}"
        );
        on_nvidia += usize::from(has_gpu);
        on_ascend += usize::from(has_npu);
    }
    assert!(on_nvidia >= 2 && on_ascend >= 2);
}

// ---------------------------------------------------------------------------------------------
// The operations docs.

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
    // The scrape-time gauges, from a cluster with one GPU node and a watch event seen.
    let cluster = ExtenderState::new(
        vramfit::core::Config::default(),
        vramfit::core::Catalog::default(),
        Box::new(RecordOnly),
    );
    let node: vramfit::kubernetes::objects::Node = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "gpu-1", "labels": {
            "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB", "nvidia.com/gpu.memory": "81920"}},
        "status": {"allocatable": {"nvidia.com/gpu": "2"}}
    }))
    .unwrap();
    cluster.apply_node(&node, SystemTime::now());
    cluster.health.touch(WatchedResource::Nodes);
    cluster.health.touch(WatchedResource::Pods);
    metrics.refresh_inventory(&cluster.read(), cluster.config.headroom_percent);
    metrics.refresh_watch(&cluster);
    let mut names = BTreeSet::new();
    for line in metrics.render().lines() {
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
