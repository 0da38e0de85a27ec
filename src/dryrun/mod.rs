//! `vramfit place`: the dry run. [`place`] drives the core pod by pod after
//! kube-scheduler's own checks ([`kube_checks`]), [`whatif`] adds hypothetical nodes and
//! [`picture`] draws the result.

pub mod kube_checks;
pub mod picture;
pub mod place;
pub mod whatif;
