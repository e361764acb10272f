//! Trace propagation (feature `otel`): a span around `publish` in one task is the ancestor of
//! the handler's span on the consuming side, through the message's `traceparent` header, on
//! memory and on Redis. Spans are collected by OpenTelemetry's in-memory exporter.
//!
//! Each test runs on a current-thread runtime with its own subscriber set as the thread's
//! default, so the worker's task (on the same thread) reports to it and tests stay apart.

mod support;

use std::time::Duration;

use courier::{Courier, EventBusExt, Message, QueueExt, ReplayFrom, headers};
use opentelemetry::trace::{SpanId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use support::{redis, unique};
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

const LIMIT: Duration = Duration::from_secs(30);

struct Traces {
    exporter: InMemorySpanExporter,
    provider: SdkTracerProvider,
    _guard: tracing::subscriber::DefaultGuard,
}

impl Traces {
    fn install() -> Self {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let tracer = provider.tracer("courier-test");
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(tracer));
        let guard = tracing::subscriber::set_default(subscriber);
        Traces {
            exporter,
            provider,
            _guard: guard,
        }
    }

    fn spans(&self) -> Vec<SpanData> {
        let _ = self.provider.force_flush();
        self.exporter
            .get_finished_spans()
            .expect("the in-memory exporter answers")
    }
}

fn one<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    let found: Vec<_> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(
        found.len(),
        1,
        "exactly one {name} span; all spans: {:?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    found[0]
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

/// `child`'s parent is `parent`, in the same trace.
fn assert_parent(child: &SpanData, parent: &SpanData) {
    assert_eq!(
        child.span_context.trace_id(),
        parent.span_context.trace_id(),
        "{} and {} are in one trace",
        child.name,
        parent.name
    );
    assert_eq!(
        child.parent_span_id,
        parent.span_context.span_id(),
        "{} is a child of {}",
        child.name,
        parent.name
    );
}

/// Publish one message inside a `request` span, handle it with a worker, and check the chain
/// request → courier.publish → courier.handle.
async fn queue_trace(courier: Courier) {
    let traces = Traces::install();
    let queue = unique("tt-q");
    let root = tracing::info_span!("request");
    courier
        .queue()
        .publish(&queue, Message::new("greet", "hi"))
        .instrument(root.clone())
        .await
        .expect("publish");
    drop(root);

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let worker = courier
        .worker(&queue)
        .idle_wait(Duration::from_millis(50))
        .handler("greet", move |m: Message| {
            let tx = tx.clone();
            async move {
                // A span the handler opens belongs to the message's trace too.
                let _inner = tracing::info_span!("handler-work").entered();
                let _ = tx.send(m.header(headers::TRACEPARENT).map(str::to_string));
                Ok(())
            }
        })
        .start()
        .expect("worker");
    let carried = tokio::time::timeout(LIMIT, rx.recv())
        .await
        .expect("handled in time")
        .expect("handler ran");
    tokio::time::timeout(LIMIT, worker.stop(Duration::from_secs(5)))
        .await
        .expect("worker stops in time");

    let spans = traces.spans();
    let request = one(&spans, "request");
    let publish = one(&spans, "courier.publish");
    let handle = one(&spans, "courier.handle");
    let work = one(&spans, "handler-work");
    assert_eq!(
        request.parent_span_id,
        SpanId::INVALID,
        "request is the root"
    );
    assert_parent(publish, request);
    assert_parent(handle, publish);
    assert_parent(work, handle);
    let carried = carried.expect("the message carries a traceparent");
    assert!(
        carried.contains(&publish.span_context.span_id().to_string()),
        "traceparent {carried} names the publish span"
    );
    assert_eq!(attribute(handle, "queue").as_deref(), Some(queue.as_str()));
    assert_eq!(attribute(handle, "kind").as_deref(), Some("greet"));
    assert_eq!(attribute(handle, "attempt").as_deref(), Some("1"));
    assert_eq!(
        attribute(handle, "backend").as_deref(),
        Some(courier.backend_name())
    );
    assert!(
        attribute(handle, "id").is_some(),
        "the message id is a field"
    );
}

/// The same chain through the event bus: request → courier.emit → courier.handle.
async fn event_trace(courier: Courier) {
    let traces = Traces::install();
    let topic = unique("tt-t");
    let group = unique("tt-g");
    courier
        .events()
        .create_group(&topic, &group, ReplayFrom::Start)
        .await
        .expect("group");
    let root = tracing::info_span!("request");
    courier
        .events()
        .emit(&topic, Message::new("joined", "{}"))
        .instrument(root.clone())
        .await
        .expect("emit");
    drop(root);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let consumer = courier
        .group_consumer(&group)
        .idle_wait(Duration::from_millis(50))
        .on(&topic, move |_m: Message| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(());
                Ok(())
            }
        })
        .start()
        .await
        .expect("consumer");
    tokio::time::timeout(LIMIT, rx.recv())
        .await
        .expect("handled in time")
        .expect("handler ran");
    tokio::time::timeout(LIMIT, consumer.stop(Duration::from_secs(5)))
        .await
        .expect("consumer stops in time");
    let spans = traces.spans();
    let request = one(&spans, "request");
    let emit = one(&spans, "courier.emit");
    let handle = one(&spans, "courier.handle");
    assert_parent(emit, request);
    assert_parent(handle, emit);
    assert_eq!(attribute(handle, "topic").as_deref(), Some(topic.as_str()));
    assert_eq!(attribute(handle, "group").as_deref(), Some(group.as_str()));
}

/// A message that already carries a trace context (forwarded from elsewhere) keeps it.
async fn carried_context_is_kept(courier: Courier) {
    let traces = Traces::install();
    let queue = unique("tt-keep");
    let theirs = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    courier
        .queue()
        .publish(
            &queue,
            Message::new("k", "")
                .with_header(headers::TRACEPARENT, theirs)
                .with_header(headers::TRACESTATE, "vendor=1"),
        )
        .instrument(tracing::info_span!("request"))
        .await
        .expect("publish");
    let d = tokio::time::timeout(LIMIT, courier.queue().receive_one(&queue, LIMIT))
        .await
        .expect("receive in time")
        .expect("receive")
        .expect("a delivery");
    assert_eq!(d.message.header(headers::TRACEPARENT), Some(theirs));
    assert_eq!(d.message.header(headers::TRACESTATE), Some("vendor=1"));
    drop(traces);
}

/// The dispatcher's routing is a span between the caller's and the publish.
#[tokio::test]
async fn memory_dispatch_span_sits_between_the_caller_and_the_publish() {
    let traces = Traces::install();
    let courier = courier::connect("memory://").await.expect("memory");
    let queue = unique("tt-route");
    courier.dispatcher().route("charge", &queue).expect("route");
    courier
        .dispatcher()
        .dispatch(Message::new("charge", "o-1"))
        .instrument(tracing::info_span!("request"))
        .await
        .expect("dispatch");
    let d = tokio::time::timeout(LIMIT, courier.queue().receive_one(&queue, LIMIT))
        .await
        .expect("receive in time")
        .expect("receive")
        .expect("a delivery");
    assert!(d.message.header(headers::TRACEPARENT).is_some());
    let spans = traces.spans();
    let request = one(&spans, "request");
    let dispatch = one(&spans, "courier.dispatch");
    let publish = one(&spans, "courier.publish");
    assert_parent(dispatch, request);
    assert_parent(publish, dispatch);
    assert_eq!(
        attribute(dispatch, "queue").as_deref(),
        Some(queue.as_str())
    );
    assert_eq!(attribute(dispatch, "kind").as_deref(), Some("charge"));
}

#[tokio::test]
async fn memory_handler_span_is_a_child_of_the_publish_span() {
    queue_trace(courier::connect("memory://").await.expect("memory")).await;
}

#[tokio::test]
async fn memory_event_handler_span_is_a_child_of_the_emit_span() {
    event_trace(courier::connect("memory://").await.expect("memory")).await;
}

#[tokio::test]
async fn memory_publish_keeps_a_trace_context_the_message_carries() {
    carried_context_is_kept(courier::connect("memory://").await.expect("memory")).await;
}

#[tokio::test]
async fn redis_handler_span_is_a_child_of_the_publish_span() {
    if let Some(c) = redis("redis_handler_span_is_a_child_of_the_publish_span").await {
        queue_trace(c).await;
    }
}

#[tokio::test]
async fn redis_event_handler_span_is_a_child_of_the_emit_span() {
    if let Some(c) = redis("redis_event_handler_span_is_a_child_of_the_emit_span").await {
        event_trace(c).await;
    }
}

#[tokio::test]
async fn redis_publish_keeps_a_trace_context_the_message_carries() {
    if let Some(c) = redis("redis_publish_keeps_a_trace_context_the_message_carries").await {
        carried_context_is_kept(c).await;
    }
}
