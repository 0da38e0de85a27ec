//! Loading the kustomize base: typed objects, the scheduler pod, the sidecar and its files.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Container, Namespace, PodSpec, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use vramfit::extender::settings::Settings;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn read(relative: &str) -> String {
    std::fs::read_to_string(root().join(relative))
        .unwrap_or_else(|e| panic!("reading {relative}: {e}"))
}

/// The YAML documents of a text, as JSON values (empty documents skipped).
pub fn documents(text: &str, what: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{what}: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

pub fn yaml(relative: &str) -> Value {
    let mut docs = documents(&read(relative), relative);
    assert_eq!(docs.len(), 1, "{relative}: one document");
    docs.remove(0)
}

/// Where `a` and `b` first differ, if they do.
pub fn first_difference(a: &Value, b: &Value, at: &str) -> Option<String> {
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
pub fn typed<T>(what: &str, doc: &Value) -> T
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

pub struct Generator {
    pub name: String,
    pub namespace: String,
    /// key in the ConfigMap → file, relative to manifests/
    pub files: Vec<(String, String)>,
}

#[derive(Default)]
pub struct Base {
    pub kustomization: Value,
    pub resources: Vec<String>,
    pub generators: Vec<Generator>,
    pub namespaces: Vec<Namespace>,
    pub service_accounts: Vec<ServiceAccount>,
    pub cluster_roles: Vec<ClusterRole>,
    pub cluster_role_bindings: Vec<ClusterRoleBinding>,
    pub roles: Vec<Role>,
    pub role_bindings: Vec<RoleBinding>,
    pub deployments: Vec<Deployment>,
    pub daemon_sets: Vec<DaemonSet>,
    pub pdbs: Vec<PodDisruptionBudget>,
    /// The ConfigMaps of configMapGenerator (names without kustomize's hash suffix).
    pub config_maps: Vec<ConfigMap>,
}

pub fn name(meta: &ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or("")
}

pub fn namespace(meta: &ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or("")
}

pub fn strings(value: &Value) -> Vec<String> {
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
    pub fn load() -> Base {
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

    pub fn config_map(&self, namespace_: &str, name_: &str) -> &ConfigMap {
        self.config_maps
            .iter()
            .find(|c| name(&c.metadata) == name_ && namespace(&c.metadata) == namespace_)
            .unwrap_or_else(|| panic!("no ConfigMap {namespace_}/{name_}"))
    }

    pub fn deployment(&self, name_: &str) -> &Deployment {
        self.deployments
            .iter()
            .find(|d| name(&d.metadata) == name_)
            .unwrap_or_else(|| panic!("no Deployment {name_}"))
    }

    pub fn daemon_set(&self, name_: &str) -> &DaemonSet {
        self.daemon_sets
            .iter()
            .find(|d| name(&d.metadata) == name_)
            .unwrap_or_else(|| panic!("no DaemonSet {name_}"))
    }

    /// Every pod template: (workload name, namespace, pod spec).
    pub fn workloads(&self) -> Vec<(&str, &str, &PodSpec)> {
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
    pub fn mounted_file(
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

pub fn container<'a>(spec: &'a PodSpec, name_: &str) -> &'a Container {
    spec.containers
        .iter()
        .find(|c| c.name == name_)
        .unwrap_or_else(|| panic!("no container {name_}"))
}

/// The value of `--name VALUE` or `--name=VALUE`.
pub fn flag(args: &[String], name_: &str) -> Option<String> {
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

pub fn scheduler_pod(base: &Base) -> (&str, &PodSpec) {
    let d = base.deployment("vramfit-scheduler");
    (
        namespace(&d.metadata),
        d.spec.as_ref().unwrap().template.spec.as_ref().unwrap(),
    )
}

/// What the vramfit container runs with: its args and the files they name, as mounted.
pub struct Sidecar {
    pub args: Vec<String>,
    pub listen: SocketAddr,
    /// `--metrics-listen`: the ops listener (probes, scraping).
    pub metrics_listen: SocketAddr,
    /// flag → (path in the container, content)
    pub files: BTreeMap<&'static str, (String, String)>,
}

pub fn sidecar(base: &Base) -> Sidecar {
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
pub fn scratch_files(sidecar: &Sidecar, tag: &str) -> BTreeMap<&'static str, PathBuf> {
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

pub fn settings_of(sidecar: &Sidecar) -> Settings {
    let files = scratch_files(sidecar, "settings");
    Settings::load(Some(&files["config"])).unwrap()
}

pub fn scheduler_config(base: &Base) -> Value {
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
pub fn split_url(url: &str) -> (SocketAddr, String) {
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
