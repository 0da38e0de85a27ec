//! The deployment (`manifests/`, a kustomize base; `Dockerfile`; the operations docs) agrees with
//! the code: every document is a typed Kubernetes object with no dropped field, the kustomization
//! lists every file, the extender entry, the sidecar's flags, the mounted files and the probes
//! meet in one place, RBAC grants exactly a table that mirrors the API calls the code makes, and
//! every container is locked down (one documented exception).
//!
//! One test target, a module per subject.

#[path = "../common/mod.rs"]
mod common;

mod agents;
mod base;
mod containers;
mod device_plugin;
mod docs;
mod documents;
mod rbac;
mod scheduler_pod;
