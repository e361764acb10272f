//! Metrics and traces (the `metrics` and `tracing` facades): what Courier records, so that an
//! application installs the exporter it likes (Prometheus, StatsD, OpenTelemetry …) and sees
//! the same series on every backend.
//!
//! The library only records. With no recorder installed every call lands on the `metrics`
//! crate's no-op recorder. Handles are registered once per queue (or topic and group) and
//! kind and then reused, so **install the recorder before connecting**: handles registered
//! before it stay no-ops.

pub mod names;

pub use names::SERIES;
