//! The placement core: pure, synchronous, no I/O.
//!
//! Facts ([`facts`]) become capacity ([`node`]) and demand ([`demand`]); the [`inventory`] holds
//! both plus the placement ledger; [`filter`](mod@filter) and [`score`] judge one node; [`schedule`] judges
//! many and commits placements; [`ledger`] carries a bind's reservation from reserve to bound
//! (or released). Adapters (HTTP, CLI, watchers) only translate to and from this.

pub mod catalog;
pub mod config;
pub mod deletion;
pub mod demand;
pub mod facts;
pub mod filter;
pub mod frag;
pub mod host;
pub mod inventory;
pub mod ledger;
pub mod memo;
pub mod name_lists;
pub mod node;
pub mod quantity;
pub mod reconcile;
pub mod schedule;
pub mod score;
pub mod workload;

pub use catalog::Catalog;
pub use config::{Config, Weights};
pub use demand::{pod_demand, DemandError, PodDemand};
pub use facts::{ContainerResources, NodeFacts, PodFacts};
pub use filter::{fit_node, Fit, Reason};
pub use inventory::{DeviceShare, Inventory, Placement, Stage};
pub use ledger::{Observed, RelocateError, Reservation, ReserveError};
pub use node::{build_node, NodeInfo};
pub use schedule::{
    filter, place, place_where, prioritize, record_bound, Decision, Demand, FilterOutcome,
};
