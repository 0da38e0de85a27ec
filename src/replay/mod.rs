//! Trace replay of the FGD paper's experiment (Weng et al., "Beware of Fragmentation", USENIX
//! ATC'23) on Alibaba's openb trace: the paper's six baseline policies, and vramfit's own policy
//! through the placement core ([`vramfit_policy`]).

pub mod churn;
pub mod cli;
pub mod frag;
pub mod metrics;
pub mod policy;
pub mod report;
pub mod sim;
pub mod trace;
pub mod vramfit_policy;
pub mod workload;
