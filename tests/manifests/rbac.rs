//! RBAC: the grants match a table that mirrors the API calls the code makes.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::rbac::v1::PolicyRule;

use vramfit::extender::binder::RecordOnly;
use vramfit::extender::state::ExtenderState;

use crate::base::*;
use crate::common;
use crate::common::api::FakeApi;
use crate::common::objects::{node_json, pod_json};

// The tables the RBAC must match. Each row is one (ServiceAccount, scope, API group, resource,
// verb, resource name) the manifests grant; "cluster" is a ClusterRoleBinding's scope.

/// Mirrors the API calls of the code (checked against recorded requests below):
/// * agent (`src/agent/run.rs`): PATCH its Node (a JSON merge patch of one annotation); get to
///   read it back.
/// * extender (`vramfit-extender`; live mode, `src/extender/watch.rs`): the watchers list and watch nodes
///   and pods, `KubeBinder` creates pods/binding and patches pods' deletion cost
///   (`src/extender/binder.rs`, `deletion.rs`; `src/kubernetes/client.rs`, for `place`, only
///   lists). No get: nothing reads one object by name.
/// * device plugin (`src/agent/node_pods.rs`, `allocated.rs`): get its Node (the sharing
///   label), list the pods bound to it, patch its Node (one annotation); checked in
///   `device_plugin.rs`.
/// * the second kube-scheduler: its leader-election Lease, get and update (create comes with
///   system:kube-scheduler).
const GRANTS: &[(&str, &str, &str, &str, &str, &str)] = &[
    ("vramfit-agent", "cluster", "", "nodes", "get", ""),
    ("vramfit-agent", "cluster", "", "nodes", "patch", ""),
    ("vramfit-device-plugin", "cluster", "", "nodes", "get", ""),
    ("vramfit-device-plugin", "cluster", "", "nodes", "patch", ""),
    ("vramfit-device-plugin", "cluster", "", "pods", "list", ""),
    ("vramfit-scheduler", "cluster", "", "nodes", "list", ""),
    ("vramfit-scheduler", "cluster", "", "nodes", "watch", ""),
    ("vramfit-scheduler", "cluster", "", "pods", "list", ""),
    ("vramfit-scheduler", "cluster", "", "pods", "watch", ""),
    ("vramfit-scheduler", "cluster", "", "pods", "patch", ""),
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

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Grant {
    sa: String,
    scope: String,
    group: String,
    resource: String,
    verb: String,
    name: String,
}

impl Grant {
    pub fn new(
        sa: &str,
        scope: &str,
        group: &str,
        resource: &str,
        verb: &str,
        name_: &str,
    ) -> Self {
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

pub type BuiltIn = (String, String, String, String);

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
pub fn effective_grants(base: &Base) -> (BTreeSet<Grant>, BTreeSet<BuiltIn>) {
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
        } else if workload.starts_with("vramfit-device-plugin") {
            "vramfit-device-plugin"
        } else {
            "vramfit-scheduler"
        };
        assert_eq!(sa, want, "{workload}");
    }
}

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
    // One node to patch, one pod to bind.
    let api = FakeApi::builder()
        .nodes([node_json("gpu-1", 1).build()])
        .pods([pod_json("p").gpus(1).build()])
        .start();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = || api.client();
    let calls = |f: &dyn Fn()| {
        api.clear_requests();
        f();
        let calls: BTreeSet<(String, String)> = api
            .requests()
            .iter()
            .map(|r| rbac_of(&r.method, &r.path, &r.query))
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
    // The extender in live mode: the watchers until both have listed and are watching, one
    // Binding and one deletion-cost patch.
    let extender = calls(&|| {
        runtime.block_on(async {
            let catalog = vramfit::core::Catalog::default();
            let state = Arc::new(ExtenderState::new(
                vramfit::core::Config::default(),
                catalog,
                Box::new(RecordOnly),
            ));
            vramfit::extender::watch::spawn_live(
                client(),
                state.clone(),
                Duration::from_secs(120),
                None,
            );
            api.until(|seen| seen.iter().filter(|r| r.is_watch()).count() >= 2)
                .await;
            common::eventually("ready after both lists", || state.is_ready()).await;
            use vramfit::extender::binder::{BindTarget, Binder};
            let target = BindTarget {
                namespace: "ml".into(),
                name: "p".into(),
                uid: "uid-p".into(),
                node: "gpu-1".into(),
            };
            let placement = vramfit::core::Placement {
                pod: "ml/p".into(),
                node: "gpu-1".into(),
                zone: None,
                model: None,
                shares: Vec::new(),
                exclusive: true,
            };
            vramfit::extender::binder::KubeBinder::new(client(), Duration::from_secs(3))
                .bind(&target, &placement, None)
                .await
                .unwrap();
            // The deletion-cost refresher's one write.
            vramfit::extender::binder::KubeBinder::new(client(), Duration::from_secs(3))
                .set_deletion_cost("ml", "p", -2)
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
        ("patch", "pods"),
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
