//! What one look at a queue or consumer group by a receive found: the answer a claim job
//! hands from the store, through the writer thread, to the waiting receive.

use courier_core::Delivery;

/// One look at a queue or group by a receive.
pub(crate) enum Poll {
    /// Leased these (at least one).
    Got(Vec<Delivery>),
    /// Nothing ready at `now` (ms); the state may change by itself at `next_wake`.
    Empty { now: u64, next_wake: Option<u64> },
}
