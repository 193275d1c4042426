//! Experiments that decide: the statistics behind adaptive allocation and a stopping rule
//! that may be checked after every sample.
//!
//! Owns: pure functions of each arm's running sums ([`Moments`]) — anytime-valid
//! confidence sequences and p-values (`sequential`), per-arm decisions against the control
//! with Holm's multiplicity correction (`decision`), and Thompson sampling shares
//! (`thompson`). The live gateway and `weir experiment report` both compute through here,
//! so they agree on the same figures.
//! The live side (`live`, `store`): counts per arm kept in memory or Redis, fed by finished
//! requests and feedback, refreshed every [`REFRESH`] into shares the router reads and a
//! decision (with promotion) the admin API shows.
//! Must not: do I/O on the request path; the statistics modules do no I/O at all and know
//! nothing of where the counts come from.

pub mod analysis;
pub mod decision;
mod live;
pub mod moments;
pub mod sequential;
#[cfg(test)]
mod simulations;
mod store;
pub mod thompson;

pub use analysis::{Analysis, ArmView, analyze};
pub use decision::{Decision, Direction, Rule, Verdict, decide};
pub use live::{Allocation, Experiment, Experiments, REFRESH, variants_of};
pub use moments::Moments;
pub use sequential::{Difference, Interval};
pub use thompson::Posterior;
