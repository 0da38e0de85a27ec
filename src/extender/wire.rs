//! The kube-scheduler extender wire format (`k8s.io/kube-scheduler/extender/v1`): PascalCase keys,
//! every field optional and `null`-tolerant, lowercase and camelCase aliases accepted.

use serde::de::Visitor;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use crate::kubernetes::objects::Pod;

fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A node name borrowed from the request body when it has no escapes (the common case).
pub type Name<'a> = std::borrow::Cow<'a, str>;

/// One node name, borrowed from the body when it can be: serde's own `Cow<str>` always copies
/// (its `borrow` attribute reaches a field's own `Cow`, not the elements of a `Vec`).
struct BorrowedName<'a>(Name<'a>);

impl<'de> Deserialize<'de> for BorrowedName<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct NameVisitor;
        impl<'de> Visitor<'de> for NameVisitor {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a node name")
            }
            fn visit_borrowed_str<E>(self, name: &'de str) -> Result<Self::Value, E> {
                Ok(Name::Borrowed(name))
            }
            fn visit_str<E>(self, name: &str) -> Result<Self::Value, E> {
                Ok(Name::Owned(name.to_owned()))
            }
            fn visit_string<E>(self, name: String) -> Result<Self::Value, E> {
                Ok(Name::Owned(name))
            }
        }
        d.deserialize_str(NameVisitor).map(BorrowedName)
    }
}

/// `NodeNames`, each name borrowed from the body unless it holds escapes.
fn borrowed_names<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Name<'de>>>, D::Error> {
    let names = Option::<Vec<BorrowedName<'de>>>::deserialize(d)?;
    Ok(names.map(|names| names.into_iter().map(|n| n.0).collect()))
}

/// `ExtenderArgs`: the filter and prioritize request.
#[derive(Debug, Deserialize)]
pub struct ExtenderArgs<'a> {
    /// The pod to schedule (`Pod`).
    #[serde(rename = "Pod", alias = "pod", default)]
    pub pod: Option<Pod>,
    /// Candidate nodes as full objects (`Nodes`), when the extender is not `nodeCacheCapable`.
    #[serde(rename = "Nodes", alias = "nodes", default)]
    pub nodes: Option<RawNodeList>,
    /// Candidate node names (`NodeNames`), when the extender is `nodeCacheCapable`.
    #[serde(
        rename = "NodeNames",
        alias = "nodeNames",
        alias = "nodenames",
        default,
        borrow,
        deserialize_with = "borrowed_names"
    )]
    pub node_names: Option<Vec<Name<'a>>>,
}

/// A NodeList whose items are kept byte for byte, to be returned unchanged.
#[derive(Debug, Deserialize)]
pub struct RawNodeList {
    /// The Node objects, raw JSON.
    #[serde(default, deserialize_with = "nullable")]
    pub items: Vec<Box<RawValue>>,
}

/// A NodeList in a reply.
#[derive(Debug, Serialize)]
pub struct NodeListOut {
    /// List metadata (vramfit writes it empty).
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// The passing Node objects, raw JSON.
    pub items: Vec<Box<RawValue>>,
}

/// `ExtenderFilterResult`.
#[derive(Debug, Serialize)]
pub struct ExtenderFilterResult<'a> {
    /// Passing nodes as objects (`Nodes`), when the request carried objects.
    #[serde(rename = "Nodes")]
    pub nodes: Option<NodeListOut>,
    /// Passing node names (`NodeNames`), when the request carried names.
    #[serde(rename = "NodeNames")]
    pub node_names: Option<Vec<&'a str>>,
    /// Rejected node → reason, for nodes preemption may help (`FailedNodes`).
    #[serde(rename = "FailedNodes")]
    pub failed_nodes: PairMap<'a>,
    /// Rejected node → reason, for nodes no eviction can fix (`FailedAndUnresolvableNodes`).
    #[serde(rename = "FailedAndUnresolvableNodes")]
    pub failed_and_unresolvable_nodes: PairMap<'a>,
    /// Error for the whole call; empty on success (`Error`).
    #[serde(rename = "Error")]
    pub error: String,
}

/// A JSON object written from key–value pairs, without building a map first. Values are
/// JSON text already (a filter reply repeats a few distinct reasons for thousands of nodes:
/// each reason is escaped once, not once per node).
#[derive(Debug, Default)]
pub struct PairMap<'a>(pub Vec<(&'a str, &'a RawValue)>);

impl Serialize for PairMap<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(k, v)| (*k, *v)))
    }
}

impl ExtenderFilterResult<'_> {
    /// The reply as JSON, byte for byte what `serde_json::to_vec` writes. Node names read
    /// unescaped from the request `body` are copied as they are (see `write_name`), so a
    /// reply of thousands of names costs a copy, not an escape scan per byte.
    pub fn to_json(&self, body: &[u8]) -> serde_json::Result<Vec<u8>> {
        let names: usize = self.node_names.iter().flatten().map(|n| n.len() + 3).sum();
        let mut out = Vec::with_capacity(
            128 + names
                + self.failed_nodes.json_len()
                + self.failed_and_unresolvable_nodes.json_len(),
        );
        out.extend_from_slice(b"{\"Nodes\":");
        serde_json::to_writer(&mut out, &self.nodes)?;
        out.extend_from_slice(b",\"NodeNames\":");
        match &self.node_names {
            None => out.extend_from_slice(b"null"),
            Some(names) => {
                out.push(b'[');
                for (i, name) in names.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write_name(&mut out, name, body)?;
                }
                out.push(b']');
            }
        }
        out.extend_from_slice(b",\"FailedNodes\":");
        self.failed_nodes.write_json(&mut out, body)?;
        out.extend_from_slice(b",\"FailedAndUnresolvableNodes\":");
        self.failed_and_unresolvable_nodes
            .write_json(&mut out, body)?;
        out.extend_from_slice(b",\"Error\":");
        serde_json::to_writer(&mut out, &self.error)?;
        out.push(b'}');
        Ok(out)
    }
}

impl PairMap<'_> {
    /// About how many bytes [`PairMap::write_json`] writes.
    fn json_len(&self) -> usize {
        2 + self
            .0
            .iter()
            .map(|(k, v)| k.len() + v.get().len() + 4)
            .sum::<usize>()
    }

    /// Writes the object as `serde_json` would, names as [`write_name`] does.
    fn write_json(&self, out: &mut Vec<u8>, body: &[u8]) -> serde_json::Result<()> {
        out.push(b'{');
        for (i, (key, value)) in self.0.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_name(out, key, body)?;
            out.push(b':');
            out.extend_from_slice(value.get().as_bytes());
        }
        out.push(b'}');
        Ok(())
    }
}

/// Appends `name` as a JSON string. A name that lies inside the request `body` was borrowed
/// from it by the parser, which borrows only strings without escape sequences, and JSON text
/// holds no raw quote, backslash or control character inside a string: its bytes need no
/// escaping and are copied. Any other name (unescaped by the parser, or from the inventory)
/// is escaped by serde_json.
fn write_name(out: &mut Vec<u8>, name: &str, body: &[u8]) -> serde_json::Result<()> {
    let within = body.as_ptr_range();
    let start = name.as_ptr();
    if within.start <= start && (start as usize).saturating_add(name.len()) <= within.end as usize {
        out.push(b'"');
        out.extend_from_slice(name.as_bytes());
        out.push(b'"');
        Ok(())
    } else {
        serde_json::to_writer(out, name)
    }
}

/// The prioritize reply (a bare array of [`HostPriority`]) as JSON, byte for byte what
/// `serde_json::to_vec` writes for it, names written as `write_name` does.
pub fn host_priorities_json(scores: &[(&str, u8)], body: &[u8]) -> serde_json::Result<Vec<u8>> {
    const HOST: &[u8] = b"{\"Host\":";
    const SCORE: &[u8] = b",\"Score\":";
    let names: usize = scores.iter().map(|(n, _)| n.len()).sum();
    let mut out = Vec::with_capacity(2 + names + scores.len() * (HOST.len() + SCORE.len() + 7));
    let mut digits = itoa::Buffer::new();
    out.push(b'[');
    for (i, (host, score)) in scores.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(HOST);
        write_name(&mut out, host, body)?;
        out.extend_from_slice(SCORE);
        out.extend_from_slice(digits.format(*score).as_bytes());
        out.push(b'}');
    }
    out.push(b']');
    Ok(out)
}

/// `HostPriority`; the prioritize reply is a bare array of these.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct HostPriority<'a> {
    /// Node name (`Host`).
    #[serde(rename = "Host", alias = "host", borrow)]
    pub host: Name<'a>,
    /// Score, 0–10 (`Score`).
    #[serde(rename = "Score", alias = "score")]
    pub score: i64,
}

/// `ExtenderBindingArgs`.
#[derive(Debug, Deserialize)]
pub struct ExtenderBindingArgs {
    /// Pod name (`PodName`).
    #[serde(
        rename = "PodName",
        alias = "podName",
        alias = "podname",
        default,
        deserialize_with = "nullable"
    )]
    pub pod_name: String,
    /// Pod namespace (`PodNamespace`).
    #[serde(
        rename = "PodNamespace",
        alias = "podNamespace",
        alias = "podnamespace",
        default,
        deserialize_with = "nullable"
    )]
    pub pod_namespace: String,
    /// Pod UID (`PodUID`).
    #[serde(
        rename = "PodUID",
        alias = "podUID",
        alias = "poduid",
        default,
        deserialize_with = "nullable"
    )]
    pub pod_uid: String,
    /// The node to bind to (`Node`).
    #[serde(
        rename = "Node",
        alias = "node",
        default,
        deserialize_with = "nullable"
    )]
    pub node: String,
}

/// `ExtenderBindingResult`.
#[derive(Debug, Serialize)]
pub struct ExtenderBindingResult {
    /// Why the bind failed; empty on success (`Error`).
    #[serde(rename = "Error")]
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_are_borrowed_unless_they_hold_escapes() {
        let body = r#"{"Pod":{},"NodeNames":["gpu-node-1","gpu-\u006eode-2"]}"#;
        let args: ExtenderArgs = serde_json::from_str(body).unwrap();
        let names = args.node_names.unwrap();
        assert_eq!(names, ["gpu-node-1", "gpu-node-2"]);
        assert!(matches!(names[0], Name::Borrowed(_)));
        assert!(matches!(names[1], Name::Owned(_)));
        for absent in [r#"{"Pod":{}}"#, r#"{"Pod":{},"NodeNames":null}"#] {
            let args: ExtenderArgs = serde_json::from_str(absent).unwrap();
            assert_eq!(args.node_names, None);
        }
        let err = serde_json::from_str::<ExtenderArgs>(r#"{"NodeNames":[1]}"#).unwrap_err();
        assert!(err.to_string().contains("expected a node name"), "{err}");
    }

    #[test]
    fn replies_are_written_as_serde_json_writes_them() {
        // Names borrowed from the body are copied; escaped ones and names from elsewhere go
        // through serde_json: the bytes match serde_json's own output either way.
        let body = r#"{"NodeNames":["gpu-1","gpu-\"2\"","zone\\a","ünï"]}"#;
        let args: ExtenderArgs = serde_json::from_str(body).unwrap();
        let names = args.node_names.unwrap();
        let outside = String::from("tab\there");
        let mut all: Vec<&str> = names.iter().map(|n| n.as_ref()).collect();
        all.push(&outside);
        let reason = serde_json::value::to_raw_value("needs \"A100\" 20%").unwrap();
        let result = ExtenderFilterResult {
            nodes: None,
            node_names: Some(all.clone()),
            failed_nodes: PairMap(all.iter().map(|n| (*n, &*reason)).collect()),
            failed_and_unresolvable_nodes: PairMap::default(),
            error: "a \"quoted\" error".into(),
        };
        let expected = serde_json::to_vec(&result).unwrap();
        assert_eq!(
            String::from_utf8(result.to_json(body.as_bytes()).unwrap()).unwrap(),
            String::from_utf8(expected).unwrap()
        );
        let without = ExtenderFilterResult {
            node_names: None,
            nodes: Some(NodeListOut {
                metadata: serde_json::Map::new(),
                items: vec![serde_json::value::to_raw_value(&serde_json::json!({"a": 1})).unwrap()],
            }),
            ..result
        };
        assert_eq!(
            without.to_json(body.as_bytes()).unwrap(),
            serde_json::to_vec(&without).unwrap()
        );
        let scores: Vec<(&str, u8)> = all
            .iter()
            .zip([0u8, 7, 10, 255, 3])
            .map(|(n, s)| (*n, s))
            .collect();
        let list: Vec<HostPriority> = scores
            .iter()
            .map(|(host, score)| HostPriority {
                host: (*host).into(),
                score: i64::from(*score),
            })
            .collect();
        assert_eq!(
            String::from_utf8(host_priorities_json(&scores, body.as_bytes()).unwrap()).unwrap(),
            serde_json::to_string(&list).unwrap()
        );
        assert_eq!(host_priorities_json(&[], b"").unwrap(), b"[]");
    }

    #[test]
    fn reasons_are_written_as_json_once_and_copied() {
        let reason = serde_json::value::to_raw_value("needs \"A100\" \\ 80Gi").unwrap();
        let map = PairMap(vec![("n1", &*reason), ("n2", &*reason)]);
        let text = serde_json::to_string(&map).unwrap();
        let back: std::collections::BTreeMap<String, String> = serde_json::from_str(&text).unwrap();
        assert_eq!(back["n1"], "needs \"A100\" \\ 80Gi");
        assert_eq!(back["n2"], back["n1"]);
    }
}
