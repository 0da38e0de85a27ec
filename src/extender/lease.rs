//! Which extender replica writes deletion costs (`server.leaderLease`): the one whose
//! kube-scheduler holds the scheduler's leader-election Lease.
//!
//! Both replicas of the HA deployment watch the cluster and rank alike, so either could write;
//! with a Lease named, only the replica beside the leading kube-scheduler does, and the other
//! writes nothing until its own kube-scheduler takes over. kube-scheduler names the holder
//! `<host name>_<uuid>`, and a sidecar shares its pod's host name, so a replica leads when the
//! holder is its identity (the host name unless `server.leaderIdentity` says otherwise) or
//! begins with it and an underscore. Whenever the Lease says nothing usable — missing, no
//! holder, unreadable — the replica writes, as it does without a Lease named: two replicas
//! writing the same values is harmless, a cost nobody writes is not.

use std::fmt;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use kube::Client;
use serde::Deserialize;

/// A Lease's namespace and name, written `NAMESPACE/NAME` in the config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct LeaseName {
    /// The Lease's namespace.
    pub namespace: String,
    /// The Lease's name.
    pub name: String,
}

/// `server.leaderLease` is not `NAMESPACE/NAME`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("leaderLease must be NAMESPACE/NAME (e.g. vramfit-system/vramfit-scheduler), got {0:?}")]
pub struct LeaseNameError(String);

impl TryFrom<String> for LeaseName {
    type Error = LeaseNameError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        let valid = |part: &str| {
            !part.is_empty()
                && part.len() <= 253
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        };
        match text.split_once('/') {
            Some((namespace, name)) if valid(namespace) && valid(name) => Ok(LeaseName {
                namespace: namespace.to_string(),
                name: name.to_string(),
            }),
            _ => Err(LeaseNameError(text)),
        }
    }
}

impl fmt::Display for LeaseName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Whether a Lease holder names `identity`: the identity itself, or kube-scheduler's
/// `<identity>_<uuid>`.
pub fn held_by(holder: &str, identity: &str) -> bool {
    !identity.is_empty()
        && holder
            .strip_prefix(identity)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('_'))
}

/// What the Lease says about this replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Turn {
    /// This replica's scheduler holds the Lease: it writes.
    Leads,
    /// Another replica's scheduler holds it (the holder's identity): this one writes nothing.
    Follows(String),
    /// The Lease says nothing usable (why): this replica writes, as without a Lease.
    Unknown(String),
}

impl Turn {
    /// Whether this replica writes deletion costs.
    pub fn writes(&self) -> bool {
        !matches!(self, Turn::Follows(_))
    }

    /// The turn a Lease holder (`None`: the Lease has none) gives `identity`.
    pub fn of(holder: Option<&str>, identity: &str) -> Turn {
        match holder.filter(|h| !h.is_empty()) {
            None => Turn::Unknown("the Lease has no holder".into()),
            Some(holder) if held_by(holder, identity) => Turn::Leads,
            Some(holder) => Turn::Follows(holder.to_string()),
        }
    }
}

/// Reads the Lease for the refresher.
#[derive(Clone)]
pub struct LeaseGate {
    leases: Api<Lease>,
    lease: LeaseName,
    identity: String,
}

impl LeaseGate {
    /// A gate on `lease` for the replica named `identity`.
    pub fn new(client: Client, lease: LeaseName, identity: String) -> Self {
        LeaseGate {
            leases: Api::namespaced(client, &lease.namespace),
            lease,
            identity,
        }
    }

    /// The Lease this gate reads.
    pub fn lease(&self) -> &LeaseName {
        &self.lease
    }

    /// This replica's identity.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Reads the Lease now.
    pub async fn turn(&self) -> Turn {
        match self.leases.get_opt(&self.lease.name).await {
            Ok(Some(lease)) => Turn::of(
                lease
                    .spec
                    .as_ref()
                    .and_then(|s| s.holder_identity.as_deref()),
                &self.identity,
            ),
            Ok(None) => Turn::Unknown("the Lease does not exist".into()),
            Err(error) => Turn::Unknown(format!("reading the Lease failed: {error}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_holder_names_the_identity_alone_or_with_kube_schedulers_suffix() {
        assert!(held_by(
            "vramfit-scheduler-7d9f-abcde",
            "vramfit-scheduler-7d9f-abcde"
        ));
        assert!(held_by(
            "vramfit-scheduler-7d9f-abcde_0d3c9a2e-5b1f-4c57-9d1e-2f6a8b7c4d21",
            "vramfit-scheduler-7d9f-abcde"
        ));
        // A longer pod name that merely begins with ours is another pod.
        assert!(!held_by(
            "vramfit-scheduler-7d9f-abcdef_1",
            "vramfit-scheduler-7d9f-abcde"
        ));
        assert!(!held_by("other_1", "vramfit-scheduler-7d9f-abcde"));
        assert!(!held_by("_1", ""));
    }

    #[test]
    fn only_another_holder_stops_the_writes() {
        assert_eq!(Turn::of(Some("me_1"), "me"), Turn::Leads);
        assert_eq!(Turn::of(Some("you_1"), "me"), Turn::Follows("you_1".into()));
        assert!(!Turn::of(Some("you_1"), "me").writes());
        assert!(Turn::of(None, "me").writes());
        assert!(Turn::of(Some(""), "me").writes());
    }

    #[test]
    fn a_lease_name_is_namespace_slash_name() {
        let lease = LeaseName::try_from("vramfit-system/vramfit-scheduler".to_string()).unwrap();
        assert_eq!(
            (lease.namespace.as_str(), lease.name.as_str()),
            ("vramfit-system", "vramfit-scheduler")
        );
        assert_eq!(lease.to_string(), "vramfit-system/vramfit-scheduler");
        for bad in [
            "",
            "/",
            "ns/",
            "/name",
            "ns/a/b",
            "ns name/x",
            "NS/x",
            "vramfit-scheduler",
        ] {
            assert_eq!(
                LeaseName::try_from(bad.to_string()),
                Err(LeaseNameError(bad.to_string())),
                "{bad:?}"
            );
        }
        assert_eq!(
            LeaseNameError("x".into()).to_string(),
            "leaderLease must be NAMESPACE/NAME (e.g. vramfit-system/vramfit-scheduler), got \"x\""
        );
    }
}
