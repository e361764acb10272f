//! The warnings and errors a case's backend logged, kept per case and printed with the
//! case's failure: a failure in CI then shows what the backend saw (a lost connection, a
//! restarted follower, a refused settle) and not only which wait timed out.
//!
//! Each case runs on its own runtime; every thread of that runtime, and the thread that
//! blocks on it, point a thread-local at the case's buffer. One global subscriber appends
//! `WARN` and `ERROR` events to whichever buffer the emitting thread points at. Nothing
//! below `WARN` is formatted (the callsites are disabled), so passing cases pay nothing.

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::sync::{Arc, Once};
use std::time::Instant;

use parking_lot::Mutex;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber, subscriber::Interest};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// The most lines one case keeps (a fault case may log a warning per attempt).
const MAX_LINES: usize = 60;

/// One case's captured lines.
#[derive(Clone)]
pub(crate) struct Captured(Arc<Mutex<Lines>>);

struct Lines {
    /// When the case started: lines are stamped with the time since.
    started: Instant,
    kept: Vec<String>,
    dropped: usize,
}

thread_local! {
    static CURRENT: RefCell<Option<Captured>> = const { RefCell::new(None) };
}

impl Captured {
    /// Install the global subscriber (once per process) and return an empty buffer.
    pub(crate) fn new() -> Self {
        static INSTALL: Once = Once::new();
        INSTALL.call_once(|| {
            // A binary that installed its own subscriber keeps it; cases then capture nothing.
            let _ = tracing::subscriber::set_global_default(
                tracing_subscriber::registry().with(CaptureLayer),
            );
        });
        Captured(Arc::new(Mutex::new(Lines {
            started: Instant::now(),
            kept: Vec::new(),
            dropped: 0,
        })))
    }

    /// Point the calling thread at this buffer (for a runtime's `on_thread_start`, and for
    /// the thread that blocks on it).
    pub(crate) fn enter(&self) {
        let me = self.clone();
        CURRENT.with(|c| *c.borrow_mut() = Some(me));
    }

    /// Point the calling thread at no buffer.
    pub(crate) fn leave() {
        CURRENT.with(|c| *c.borrow_mut() = None);
    }

    /// The captured lines as a block to append to a failure, or `""` when there are none.
    pub(crate) fn report(&self) -> String {
        let lines = self.0.lock();
        if lines.kept.is_empty() {
            return String::new();
        }
        let total = lines.kept.len() + lines.dropped;
        let mut out =
            format!("\nthe backend logged {total} warning(s) or error(s) during the case:");
        for line in &lines.kept {
            let _ = write!(out, "\n  {line}");
        }
        if lines.dropped > 0 {
            let _ = write!(out, "\n  … and {} more", lines.dropped);
        }
        out
    }

    fn push(&self, line: impl FnOnce(u128) -> String) {
        let mut lines = self.0.lock();
        if lines.kept.len() < MAX_LINES {
            let at = lines.started.elapsed().as_millis();
            lines.kept.push(line(at));
        } else {
            lines.dropped += 1;
        }
    }
}

struct CaptureLayer;

fn wanted(meta: &Metadata<'_>) -> bool {
    *meta.level() <= Level::WARN
}

impl<S: Subscriber> Layer<S> for CaptureLayer {
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        if wanted(meta) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, meta: &Metadata<'_>, _cx: Context<'_, S>) -> bool {
        wanted(meta)
    }

    fn on_event(&self, event: &Event<'_>, _cx: Context<'_, S>) {
        let Some(buffer) = CURRENT.with(|c| c.borrow().clone()) else {
            return;
        };
        let meta = event.metadata();
        let mut line = Line::default();
        event.record(&mut line);
        buffer.push(|at| {
            format!(
                "+{at} ms {} {}: {}{}",
                meta.level(),
                meta.target(),
                line.message,
                line.fields
            )
        });
    }
}

/// An event's message and its other fields as ` key=value`.
#[derive(Default)]
struct Line {
    message: String,
    fields: String,
}

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Warnings of the threads pointed at a buffer land in it, in order and stamped; other
    /// threads' and lower levels' do not; a thread that left captures nothing.
    #[test]
    fn keeps_warnings_of_its_threads_only() {
        let captured = Captured::new();
        assert_eq!(captured.report(), "");
        captured.enter();
        tracing::info!("not kept");
        tracing::warn!(stream = "q.jobs", "follower restarted");
        let other = Captured::new();
        let o = other.clone();
        std::thread::spawn(move || {
            o.enter();
            tracing::error!(code = 7, "elsewhere");
        })
        .join()
        .expect("thread");
        Captured::leave();
        tracing::warn!("after leaving");
        let report = captured.report();
        assert!(report.contains("1 warning(s)"), "{report}");
        assert!(
            report.contains(
                "WARN courier_conformance::capture::tests: follower restarted stream=\"q.jobs\""
            ) || report.contains(
                "WARN courier_conformance::capture::tests: follower restarted stream=q.jobs"
            ),
            "{report}"
        );
        assert!(
            !report.contains("not kept") && !report.contains("after leaving"),
            "{report}"
        );
        assert!(
            other
                .report()
                .contains("ERROR courier_conformance::capture::tests: elsewhere code=7"),
            "{}",
            other.report()
        );
    }
}
