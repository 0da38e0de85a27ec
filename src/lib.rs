//! vramfit: a GPU-VRAM-aware Kubernetes scheduler extender.
//!
//! [`core`] is the pure placement engine. Around it, one room per verb: [`kubernetes`] reads
//! Kubernetes objects (files, the API) into the core's facts; [`extender`] is `vramfit serve`
//! (HTTP, state, watchers, binder, metrics, settings); [`dryrun`] is `vramfit place`;
//! [`replay`] is `vramfit replay`; [`agent`] is `vramfit agent`. See docs/architecture.md.

// Every public item carries a doc comment; clippy -D warnings (CI) keeps it so.
#![warn(missing_docs)]

pub mod agent;
pub mod core;
pub mod dryrun;
pub mod extender;
pub mod kubernetes;
pub mod replay;
pub mod shutdown;
