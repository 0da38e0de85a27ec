//! `vramfit serve`: the scheduler extender. [`http`] speaks the wire format of [`wire`] and
//! calls [`state`], which holds the core's inventory and ledger; [`watch`] feeds it in live
//! mode and [`binder`] makes placements real; [`metrics`], [`settings`] and [`probe`] serve
//! operations.

pub mod binder;
pub mod deletion;
pub mod http;
pub mod lease;
pub mod listener;
pub mod metrics;
pub mod probe;
pub mod settings;
pub mod state;
pub mod watch;
pub mod wire;
