//! Metrics and traces (the `metrics` and `tracing` facades): what Courier records, so that an
//! application installs the exporter it likes (Prometheus, StatsD, OpenTelemetry …) and sees
//! the same series on every backend.
//!
//! - **Metrics.** The handles a [`crate::Courier`] hands out record every publish, delivery and
//!   settle; workers record handler durations, queue wait and handlers in flight;
//!   [`spawn_stats_poller`] turns stats into depth gauges. [`names`] lists every series and its
//!   labels. With no recorder installed every call lands on the `metrics` crate's no-op
//!   recorder. Handles are registered once per queue (or topic and group) and kind and then
//!   reused, so **install the recorder before connecting**: handles registered before it stay
//!   no-ops.
//! - **Traces.** Publishing runs in a `courier.publish` span (`courier.emit` on the event bus,
//!   `courier.broadcast` on pub/sub), each handler in a `courier.handle` span with the
//!   message's id, kind, attempt, backend and queue (or topic and group). With the `otel`
//!   feature, a publish writes the W3C `traceparent` and `tracestate` of its span into the
//!   message's headers and the handler's span becomes its child, so one trace crosses services
//!   and backends. Without it the headers travel untouched.

pub(crate) mod handles;
pub(crate) mod instrument;
pub mod names;
mod poller;
pub(crate) mod propagation;

pub use names::SERIES;

/// Whether a metrics recorder is installed, so that work whose only use is a metric (reading
/// the clock around every handler) can be skipped without one.
///
/// The `metrics` crate offers no direct question. Its fallback, `NoopRecorder`, is a
/// zero-sized type, and a recorder that records anything holds state (every exporter keeps
/// its registry behind a pointer), so a recorder of size zero is taken for none. A zero-sized
/// recorder of the application's own, writing to statics, would lose the handler durations
/// and queue waits, and nothing else.
pub(crate) fn recorder_installed() -> bool {
    metrics::with_recorder(|r| std::mem::size_of_val(r) != 0)
}
pub use poller::{describe, spawn_stats_poller};
