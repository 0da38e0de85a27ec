//! Kubernetes objects in and out: lean Node/Pod types and their conversion to the core's facts
//! ([`objects`]), snapshot and pods files ([`snapshot`]), and the API client ([`client`]).

pub mod client;
pub mod objects;
pub mod snapshot;
