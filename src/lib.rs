//! vramfit: a GPU-VRAM-aware Kubernetes scheduler extender.
//!
//! [`core`] is the pure placement engine; [`k8s`] reads Kubernetes objects into its facts;
//! [`cluster`] holds the state the server answers from, fed by [`watch`] in live mode;
//! [`server`] speaks the extender protocol; [`place`], [`kube_checks`], [`whatif`] and
//! [`picture`] make the dry run; [`replay`] replays GPU-sharing traces; [`agent`] is the node
//! agent. See docs/architecture.md.

pub mod agent;
pub mod cluster;
pub mod core;
pub mod k8s;
pub mod kube_checks;
pub mod live;
pub mod picture;
pub mod place;
pub mod probe;
pub mod replay;
pub mod replay_cli;
pub mod server;
pub mod settings;
pub mod snapshot;
pub mod watch;
pub mod whatif;
