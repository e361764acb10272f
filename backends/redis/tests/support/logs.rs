//! Captured log lines, for tests that assert what an operator sees: a tiny
//! `tracing::Subscriber` (no `tracing-subscriber`, which is not in the dependency tree) that
//! keeps each event's level and fields as text.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;

/// One captured event: its level and fields (`message` included) as text.
#[derive(Clone, Debug)]
pub(crate) struct Line {
    pub(crate) level: tracing::Level,
    pub(crate) fields: BTreeMap<String, String>,
}

impl Line {
    /// One field's text (`""` when absent).
    pub(crate) fn field(&self, name: &str) -> &str {
        self.fields.get(name).map_or("", String::as_str)
    }

    /// Every field as `name=value`, for a substring search.
    pub(crate) fn text(&self) -> String {
        self.fields
            .iter()
            .map(|(k, v)| format!("{k}={v} "))
            .collect()
    }
}

/// Records the events at `max_level` or more severe whose target starts with `target`.
#[derive(Clone)]
pub(crate) struct LogRecorder {
    lines: Arc<Mutex<Vec<Line>>>,
    max_level: tracing::Level,
    target: &'static str,
}

impl LogRecorder {
    pub(crate) fn new(max_level: tracing::Level, target: &'static str) -> Self {
        LogRecorder {
            lines: Arc::default(),
            max_level,
            target,
        }
    }

    /// The lines recorded so far.
    pub(crate) fn lines(&self) -> Vec<Line> {
        self.lines.lock().clone()
    }
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl tracing::field::Visit for Fields<'_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}"));
    }
}

impl tracing::Subscriber for LogRecorder {
    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        *metadata.level() <= self.max_level && metadata.target().starts_with(self.target)
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        self.lines.lock().push(Line {
            level: *event.metadata().level(),
            fields,
        });
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}
