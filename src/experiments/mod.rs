//! Experiments that decide: the statistics behind adaptive allocation and a stopping rule
//! that may be checked after every sample.
//!
//! Owns: pure functions of each arm's running sums ([`Moments`]) — anytime-valid
//! confidence sequences and p-values (`sequential`), per-arm decisions against the control
//! with Holm's multiplicity correction (`decision`), and Thompson sampling shares
//! (`thompson`). The live gateway and `weir experiment report` both compute through here,
//! so they agree on the same figures.
//! Must not: do I/O, keep state or know where the counts come from.

pub mod decision;
pub mod moments;
pub mod sequential;
#[cfg(test)]
mod simulations;
pub mod thompson;

pub use decision::{Decision, Direction, Rule, Verdict, decide};
pub use moments::Moments;
pub use sequential::{Difference, Interval};
pub use thompson::Posterior;
