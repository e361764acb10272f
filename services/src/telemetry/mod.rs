//! Observability of the services: the Prometheus endpoint (`run --metrics-listen`), trace
//! export over OTLP (`--otlp-endpoint`, feature `otel`) and the demo's printed trace.
//!
//! Courier records its series through the `metrics` facade and registers each handle at its
//! first use, so the recorder must be installed before the platform connects: a handle taken
//! while no recorder is installed stays a no-op for the life of the process.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use courier::Courier;
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder};

#[cfg(feature = "otel")]
pub mod trace;
pub mod tree;

/// Histogram buckets of every series whose name ends in `_seconds` (handler duration, queue
/// wait, publish latency): 0.5 ms to 30 s, roughly 1-2.5-5 per decade.
pub const SECONDS_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How often the queue depth gauges are refreshed unless `--stats-every` says otherwise.
pub const STATS_EVERY: Duration = Duration::from_secs(5);

/// An observability setup that failed, saying what and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryError(pub String);

impl std::fmt::Display for TelemetryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TelemetryError {}

/// Parse a listen address: `IP:PORT` (`127.0.0.1:9100`, `[::]:9100`), or `HOST:PORT` resolved
/// once (`localhost:9100`). For clap's `value_parser`.
///
/// # Errors
/// A text naming the expected form when `s` is neither.
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    let hint = "expected IP:PORT or HOST:PORT, e.g. 127.0.0.1:9100 or 0.0.0.0:9100";
    if !s.contains(':') {
        return Err(format!("{s:?} has no port: {hint}"));
    }
    match s.to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| format!("{s:?} resolves to no address: {hint}")),
        Err(e) => Err(format!("{s:?} is not a listen address ({e}): {hint}")),
    }
}

/// Install the Prometheus recorder as the process's `metrics` recorder, serving the text
/// exposition format over HTTP on `listen` (any path but `/health` renders it; scrape
/// `/metrics`). Histograms named `*_seconds` get [`SECONDS_BUCKETS`].
///
/// Call it inside the Tokio runtime (the listener runs as a task on it) and before connecting.
///
/// # Errors
/// The address cannot be bound (taken, or not an address of this machine), or a recorder is
/// already installed in this process.
pub fn install_metrics(listen: SocketAddr) -> Result<(), TelemetryError> {
    PrometheusBuilder::new()
        .with_http_listener(listen)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
        .and_then(PrometheusBuilder::install)
        .map_err(|e| match e {
            BuildError::FailedToCreateHTTPListener(why) => TelemetryError(format!(
                "cannot serve metrics on {listen}: {why} (is another process listening there? \
                 choose another --metrics-listen address)"
            )),
            other => TelemetryError(format!("cannot install the metrics recorder: {other}")),
        })?;
    // Units and help texts: the `# HELP` lines of a scrape.
    courier::telemetry::describe();
    Ok(())
}

/// Refresh the queue depth gauges (ready per priority, delayed, in flight, dead) and the
/// consumer groups' lag from the backend's stats every `every`, until the task is aborted.
pub fn spawn_stats_poller(courier: Courier, every: Duration) -> tokio::task::JoinHandle<()> {
    courier::telemetry::spawn_stats_poller(courier, every)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_parse_or_say_what_is_expected() {
        assert_eq!(
            parse_listen("127.0.0.1:9100"),
            Ok(SocketAddr::from(([127, 0, 0, 1], 9100)))
        );
        assert!(parse_listen("[::1]:0").is_ok());
        let e = parse_listen("9100").expect_err("no host");
        assert!(e.contains("no port") && e.contains("IP:PORT"), "{e}");
        let e = parse_listen("127.0.0.1:port").expect_err("bad port");
        assert!(e.contains("not a listen address"), "{e}");
        let e = parse_listen("127.0.0.1:99999").expect_err("port out of range");
        assert!(e.contains("IP:PORT"), "{e}");
    }

    #[test]
    fn buckets_rise_from_half_a_millisecond_to_thirty_seconds() {
        assert!(SECONDS_BUCKETS.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(SECONDS_BUCKETS[0], 0.0005);
        assert_eq!(SECONDS_BUCKETS[SECONDS_BUCKETS.len() - 1], 30.0);
    }
}
