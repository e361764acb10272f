//! Tracing through OpenTelemetry: a `tracing` subscriber whose OpenTelemetry layer feeds an
//! SDK tracer provider, exporting over OTLP (http/protobuf) when an endpoint is given and
//! keeping the spans of watched traces in memory for the demo's printed tree.
//!
//! Courier (feature `otel`) puts the current span's context into the `traceparent` header of
//! what it publishes or emits, and opens the consuming worker's `courier.handle` span as a
//! child of the context the message carries: a span around work in one service is thus the
//! ancestor of the handler spans in the next.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::{SpanId, TraceContextExt, TraceId, TracerProvider as _};
use opentelemetry::{Context, Value};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, Span, SpanData, SpanProcessor};
use parking_lot::Mutex;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;

use super::TelemetryError;
use super::tree::{self, SpanNode, Tree};

/// The path OTLP/HTTP collectors take traces on; added to an endpoint given without a path.
pub const TRACES_PATH: &str = "/v1/traces";

/// The crates whose spans are traced: Courier's (`courier`, `courier_core`, the backends) and
/// the services'. Nothing else (in particular not the HTTP client exporting the spans).
const TRACED_TARGETS: [&str; 2] = ["courier", "meeting_system"];

/// How long shutting down may take to flush spans still queued for export.
const FLUSH_LIMIT: Duration = Duration::from_secs(5);

/// What to set up.
#[derive(Clone, Debug, Default)]
pub struct TraceOptions {
    /// The `service.name` of the exported spans' resource.
    pub service_name: String,
    /// Export over OTLP http/protobuf to this collector URL (`http://host:4318`; without a
    /// path, [`TRACES_PATH`] is added).
    pub otlp_endpoint: Option<String>,
    /// Keep watched traces in memory ([`collector`]) for the demo's tree.
    pub collect: bool,
}

/// Normalise an OTLP endpoint: `http://host:port` gains [`TRACES_PATH`]; a URL with a path
/// is taken as is.
///
/// # Errors
/// Not an `http://` URL with a host (this build's exporter speaks plain HTTP: run a collector
/// or agent next to the service for TLS).
pub fn traces_url(endpoint: &str) -> Result<String, TelemetryError> {
    let bad = |why: &str| {
        TelemetryError(format!(
            "--otlp-endpoint {endpoint:?}: {why}; expected http://HOST:PORT (an OTLP/HTTP \
             collector, e.g. http://127.0.0.1:4318)"
        ))
    };
    if endpoint.starts_with("https://") {
        return Err(bad(
            "https is not built in (the exporter speaks plain HTTP to a local collector or agent)",
        ));
    }
    let Some(rest) = endpoint.strip_prefix("http://") else {
        return Err(bad("not an http:// URL"));
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if authority.is_empty() || authority.starts_with(':') {
        return Err(bad("no host"));
    }
    let url = if path.is_empty() || path == "/" {
        format!("http://{authority}{TRACES_PATH}")
    } else {
        endpoint.to_string()
    };
    Ok(url)
}

/// Keeps the finished spans of the traces it is told to watch (all others are dropped at
/// once), for the demo to print.
#[derive(Clone, Debug, Default)]
pub struct Collector {
    inner: Arc<Mutex<Collected>>,
}

#[derive(Debug, Default)]
struct Collected {
    watched: HashSet<TraceId>,
    spans: Vec<SpanData>,
}

impl Collector {
    /// Keep the spans of `span`'s trace from now on. Returns the trace id, or `None` when
    /// `span` is not recorded by OpenTelemetry (no subscriber with the layer, or disabled).
    pub fn watch(&self, span: &tracing::Span) -> Option<TraceId> {
        let id = trace_id_of(span)?;
        self.inner.lock().watched.insert(id);
        Some(id)
    }

    /// Stop watching `trace` and hand over its finished spans.
    pub fn take(&self, trace: TraceId) -> Vec<SpanData> {
        let mut c = self.inner.lock();
        c.watched.remove(&trace);
        let (mine, rest) = std::mem::take(&mut c.spans)
            .into_iter()
            .partition(|s| s.span_context.trace_id() == trace);
        c.spans = rest;
        mine
    }
}

impl SpanProcessor for Collector {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        let mut c = self.inner.lock();
        if c.watched.contains(&span.span_context.trace_id()) {
            c.spans.push(span);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// The OpenTelemetry trace id of a `tracing` span, if OpenTelemetry records it.
pub fn trace_id_of(span: &tracing::Span) -> Option<TraceId> {
    let cx = span.context();
    let id = cx.span().span_context().trace_id();
    (id != TraceId::INVALID).then_some(id)
}

/// Set up tracing: handle on the provider, to flush it at the end.
#[derive(Debug)]
pub struct Tracing {
    provider: SdkTracerProvider,
    exporting: bool,
}

impl Tracing {
    /// Whether spans go to an OTLP collector.
    pub fn exporting(&self) -> bool {
        self.exporting
    }

    /// Export what is still queued (bounded) and stop the provider. Blocking: call it from
    /// `spawn_blocking` inside a runtime.
    ///
    /// # Errors
    /// The flush or shutdown failed or timed out (spans may be lost).
    pub fn shutdown(self) -> Result<(), TelemetryError> {
        // Shutting the batch processor down exports what it still holds, within the limit.
        self.provider
            .shutdown_with_timeout(FLUSH_LIMIT)
            .map_err(|e| TelemetryError(format!("flushing the spans failed: {e}")))
    }
}

/// What the process installed.
struct Installed {
    collector: Option<Collector>,
}

static INSTALLED: Mutex<Option<Installed>> = Mutex::new(None);

/// Install the process's `tracing` subscriber: a registry with an OpenTelemetry layer (only
/// Courier's and the services' spans) over an SDK provider that exports over OTLP and/or
/// collects, as `options` say. Also makes W3C trace context the global propagator.
///
/// # Errors
/// Tracing was already set up in this process, the endpoint is malformed, or the exporter
/// cannot be built.
pub fn init(options: &TraceOptions) -> Result<Tracing, TelemetryError> {
    let mut installed = INSTALLED.lock();
    if installed.is_some() {
        return Err(TelemetryError(
            "tracing is already set up in this process".into(),
        ));
    }
    let mut builder = SdkTracerProvider::builder().with_resource(
        Resource::builder()
            .with_service_name(Value::from(options.service_name.clone()))
            .build(),
    );
    let collector = options.collect.then(Collector::default);
    if let Some(c) = &collector {
        builder = builder.with_span_processor(c.clone());
    }
    if let Some(endpoint) = &options.otlp_endpoint {
        let url = traces_url(endpoint)?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(url.clone())
            .build()
            .map_err(|e| TelemetryError(format!("cannot export spans to {url}: {e}")))?;
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();
    let tracer = provider.tracer("meeting-system");
    let targets = TRACED_TARGETS.iter().fold(Targets::new(), |t, target| {
        t.with_target(*target, tracing::Level::TRACE)
    });
    let subscriber = tracing_subscriber::registry().with(
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(targets),
    );
    tracing::subscriber::set_global_default(subscriber).map_err(|e| {
        TelemetryError(format!(
            "cannot install the tracing subscriber (another one is installed): {e}"
        ))
    })?;
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    *installed = Some(Installed {
        collector: collector.clone(),
    });
    Ok(Tracing {
        provider,
        exporting: options.otlp_endpoint.is_some(),
    })
}

/// The process's span collector: the one [`init`] set up, or, when tracing is not set up
/// yet, a collecting-only setup installed now (the demo run as a library, e.g. in tests).
///
/// # Errors
/// Tracing was set up without collecting, or another subscriber is installed.
pub fn collector() -> Result<Collector, TelemetryError> {
    {
        let installed = INSTALLED.lock();
        if let Some(i) = installed.as_ref() {
            return i.collector.clone().ok_or_else(|| {
                TelemetryError("tracing was set up without the span collector".into())
            });
        }
    }
    let tracing = init(&TraceOptions {
        service_name: "meeting-system".into(),
        otlp_endpoint: None,
        collect: true,
    });
    match tracing {
        // The provider lives on in the installed subscriber's layer; nothing to flush.
        Ok(_) => collector(),
        // Another caller got there first.
        Err(_) if INSTALLED.lock().is_some() => collector(),
        Err(e) => Err(e),
    }
}

/// The finished spans of one trace as the tree renders them.
pub fn render(spans: &[SpanData]) -> Tree {
    let nodes: Vec<SpanNode> = spans
        .iter()
        .map(|s| SpanNode {
            id: u64::from_be_bytes(s.span_context.span_id().to_bytes()),
            parent: (s.parent_span_id != SpanId::INVALID)
                .then(|| u64::from_be_bytes(s.parent_span_id.to_bytes())),
            name: s.name.to_string(),
            start: s.start_time,
            attributes: s
                .attributes
                .iter()
                .map(|kv| (kv.key.to_string(), kv.value.as_str().into_owned()))
                .collect(),
        })
        .collect();
    tree::render(&nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_gain_the_traces_path_or_are_refused_with_the_expected_form() {
        assert_eq!(
            traces_url("http://127.0.0.1:4318").as_deref(),
            Ok("http://127.0.0.1:4318/v1/traces")
        );
        assert_eq!(
            traces_url("http://collector:4318/").as_deref(),
            Ok("http://collector:4318/v1/traces")
        );
        assert_eq!(
            traces_url("http://collector:4318/custom/traces").as_deref(),
            Ok("http://collector:4318/custom/traces")
        );
        for bad in ["127.0.0.1:4318", "grpc://x:4317", "http://", "http://:4318"] {
            let e = traces_url(bad).expect_err(bad);
            assert!(e.0.contains("expected http://HOST:PORT"), "{e}");
        }
        let e = traces_url("https://x:4318").expect_err("tls");
        assert!(e.0.contains("https is not built in"), "{e}");
    }
}
