//! vramfit: a GPU-VRAM-aware Kubernetes scheduler extender.
//!
//! [`core`] is the pure placement engine; [`k8s`] reads Kubernetes objects into its facts;
//! [`cluster`] holds the live state the server answers from; [`server`] speaks the extender
//! protocol; [`cli`] is the command line.

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
