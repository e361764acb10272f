//! W3C trace context across a queue: a publish writes the current span's context into the
//! message's `traceparent` and `tracestate` headers, and the worker makes its handler's span a
//! child of the context a message carries (feature `otel`).
//!
//! Without the feature both are no-ops and the headers travel untouched, as any other header.

use crate::message::Message;

#[cfg(feature = "otel")]
mod otel {
    use std::collections::HashMap;

    use opentelemetry::propagation::{Extractor, TextMapPropagator};
    use opentelemetry::trace::TraceContextExt;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use crate::message::{Headers, Message, headers};

    struct HeaderReader<'a>(&'a Headers);

    impl Extractor for HeaderReader<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).map(String::as_str)
        }
        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(String::as_str).collect()
        }
    }

    pub(super) fn inject(span: &tracing::Span, messages: &mut [Message]) {
        if span.is_disabled() || messages.is_empty() {
            return;
        }
        let cx = span.context();
        if !cx.span().span_context().is_valid() {
            return;
        }
        let mut carrier: HashMap<String, String> = HashMap::new();
        TraceContextPropagator::new().inject_context(&cx, &mut carrier);
        for m in messages {
            // A message that already carries a trace (forwarded from elsewhere) keeps it.
            if m.headers.contains_key(headers::TRACEPARENT) {
                continue;
            }
            for (k, v) in &carrier {
                m.headers.insert(k.clone(), v.clone());
            }
        }
    }

    pub(super) fn extract(span: &tracing::Span, message: &Message) {
        if span.is_disabled() || !message.headers.contains_key(headers::TRACEPARENT) {
            return;
        }
        let cx = TraceContextPropagator::new().extract(&HeaderReader(&message.headers));
        if cx.span().span_context().is_valid() {
            // Fails only when the span was already entered, which it has not been.
            let _ = span.set_parent(cx);
        }
    }
}

/// Write the trace context of `span` into each message that carries none.
#[inline]
pub(crate) fn inject(span: &tracing::Span, messages: &mut [Message]) {
    #[cfg(feature = "otel")]
    otel::inject(span, messages);
    #[cfg(not(feature = "otel"))]
    let _ = (span, messages);
}

/// Make `span` a child of the trace context `message` carries, if any.
#[inline]
pub(crate) fn extract(span: &tracing::Span, message: &Message) {
    #[cfg(feature = "otel")]
    otel::extract(span, message);
    #[cfg(not(feature = "otel"))]
    let _ = (span, message);
}
