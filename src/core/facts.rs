//! Plain inputs to the core: the parts of Node and Pod objects that placement reads.
//! Adapters (snapshot files, HTTP requests, watchers) fill these; the core never sees Kubernetes types.

use std::collections::BTreeMap;

/// What the core needs to know about a Node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeFacts {
    /// Node name.
    pub name: String,
    /// Node labels.
    pub labels: BTreeMap<String, String>,
    /// Node annotations.
    pub annotations: BTreeMap<String, String>,
    /// `status.allocatable` as quantity strings.
    pub allocatable: BTreeMap<String, String>,
    /// `spec.unschedulable`.
    pub unschedulable: bool,
}

/// Requests and limits of one container, as quantity strings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerResources {
    /// `resources.requests` as quantity strings.
    pub requests: BTreeMap<String, String>,
    /// `resources.limits` as quantity strings.
    pub limits: BTreeMap<String, String>,
    /// An init container with `restartPolicy: Always` (a sidecar) runs beside the app containers.
    pub sidecar: bool,
}

impl ContainerResources {
    /// The request of `resource`, else its limit (Kubernetes defaults requests from limits).
    pub fn get(&self, resource: &str) -> Option<&str> {
        self.requests
            .get(resource)
            .or_else(|| self.limits.get(resource))
            .map(String::as_str)
    }
}

/// What the core needs to know about a Pod.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodFacts {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// Pod UID.
    pub uid: String,
    /// Pod labels.
    pub labels: BTreeMap<String, String>,
    /// Pod annotations.
    pub annotations: BTreeMap<String, String>,
    /// Name of the owning controller (`ownerReferences[controller=true].name`).
    pub controller: Option<String>,
    /// `spec.schedulerName`, if set.
    pub scheduler_name: Option<String>,
    /// App containers (`spec.containers`).
    pub containers: Vec<ContainerResources>,
    /// Init containers (`spec.initContainers`), sidecars included.
    pub init_containers: Vec<ContainerResources>,
    /// `spec.nodeName`, when bound.
    pub node_name: Option<String>,
    /// `status.phase`.
    pub phase: Option<String>,
}

impl PodFacts {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The identity the ledger uses: the UID, or `namespace/name` when the UID is unknown.
    pub fn ledger_id(&self) -> String {
        if self.uid.is_empty() {
            self.key()
        } else {
            self.uid.clone()
        }
    }

    /// Succeeded and Failed pods hold nothing.
    pub fn is_finished(&self) -> bool {
        matches!(self.phase.as_deref(), Some("Succeeded") | Some("Failed"))
    }
}
