//! Starting services: one worker per service queue, one consumer group per service on the
//! event bus, and the service's in-process bus with its components.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use courier::headers::SOURCE;
use courier::{
    BoxHandler, Courier, FailureMode, GroupConsumer, HandlerError, HandlerResult, Message,
    QueueConfig, Result, WorkerHandle, WorkerStats,
};
use futures::FutureExt;
use futures::future::BoxFuture;
use tracing::Instrument as _;

use crate::config::Settings;
use crate::ledger::{Channel, Entry, Ledger, Outcome};
use crate::services::{Ctx, Handled, Svc};
use crate::telemetry::tree::HANDLER_SPAN;
use crate::topology::{Names, ServiceKind, install};

/// Header a sender may set to explain an expected failure; shown in the timeline.
pub const NOTE: &str = "note";

/// A connected backend with the topology installed: ready to start services on.
#[derive(Clone, Debug)]
pub struct Platform {
    courier: Courier,
    names: Names,
    config: QueueConfig,
    workers: usize,
    poll: Duration,
    ledger: Ledger,
}

impl Platform {
    /// Connect to the configured backend and install queues, routes and group settings.
    ///
    /// # Errors
    /// Connection or configuration errors.
    pub async fn connect(settings: &Settings, ledger: Ledger) -> Result<Platform> {
        let url = settings
            .backend_url()
            .map_err(|e| courier::Error::invalid(e.0))?;
        let courier = courier::connect(&url).await?;
        Platform::on(courier, settings, ledger)
    }

    /// Use an existing handle (for example one `memory://` store shared by everything in a
    /// process).
    ///
    /// # Errors
    /// Configuration errors.
    pub fn on(courier: Courier, settings: &Settings, ledger: Ledger) -> Result<Platform> {
        let names = settings.names()?;
        let config = settings.queue_config();
        install(&courier, &names, config, settings.retention())?;
        Ok(Platform {
            courier,
            names,
            config,
            workers: settings.message_queue.workers,
            poll: settings.poll_interval(),
            ledger,
        })
    }

    /// The shared handle.
    pub fn courier(&self) -> &Courier {
        &self.courier
    }

    /// The names in use.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// The ledger records go to.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// The queue and group configuration in force.
    pub fn queue_config(&self) -> QueueConfig {
        self.config
    }

    /// Start one service: its task worker, its consumer group and its local components.
    ///
    /// # Errors
    /// Invalid names, or a backend error while starting.
    pub async fn start(&self, service: ServiceKind) -> Result<RunningService> {
        let local = courier::connect("memory://").await?;
        let ctx = Ctx {
            service,
            courier: self.courier.clone(),
            local: local.clone(),
            names: self.names.clone(),
        };
        let svc = Svc::new(ctx);
        let limit = self.config.retry.max_attempts;

        let mut worker = self
            .courier
            .worker(&self.names.queue(service))
            .concurrency(self.workers)
            .idle_wait(self.poll);
        for kind in service.tasks() {
            let s = svc.clone();
            let h = recorded(
                self.ledger.clone(),
                Channel::Task,
                kind,
                service.name().to_string(),
                limit,
                move |m| {
                    let s = s.clone();
                    async move { s.task(kind, m).await }.boxed()
                },
            );
            worker = worker.boxed_handler(kind, h);
        }
        let tasks = worker.start()?;

        let mut group = GroupConsumer::builder(self.courier.events().clone(), service.name())
            .concurrency(1)
            .idle_wait(self.poll);
        for topic in service.subscribes() {
            let s = svc.clone();
            let h = recorded(
                self.ledger.clone(),
                Channel::Event,
                topic,
                service.name().to_string(),
                limit,
                move |m| {
                    let s = s.clone();
                    async move { s.event(topic, m).await }.boxed()
                },
            );
            group = group.on(&self.names.topic(topic), move |m| h(m));
        }
        let events = group.start().await?;

        let mut locals = Vec::new();
        for (topic, component) in service.local_topics() {
            local
                .events()
                .configure_group(topic, component, self.config)?;
            let s = svc.clone();
            let h = recorded(
                self.ledger.clone(),
                Channel::Local,
                topic,
                format!("{}/{component}", service.name()),
                limit,
                move |m| {
                    let s = s.clone();
                    async move { s.local(topic, m).await }.boxed()
                },
            );
            let consumer = GroupConsumer::builder(local.events().clone(), component)
                .concurrency(1)
                .idle_wait(self.poll)
                .on(topic, move |m| h(m))
                .start()
                .await?;
            locals.push(consumer);
        }
        Ok(RunningService {
            service,
            svc,
            tasks,
            events,
            locals,
            _local: local,
        })
    }

    /// Start several services.
    ///
    /// # Errors
    /// The first service that fails to start (the ones started before are stopped).
    pub async fn start_all(&self, services: &[ServiceKind]) -> Result<Vec<RunningService>> {
        let mut running = Vec::new();
        for s in services {
            match self.start(*s).await {
                Ok(r) => running.push(r),
                Err(e) => {
                    for r in running {
                        r.stop(Duration::from_secs(1)).await;
                    }
                    return Err(e);
                }
            }
        }
        Ok(running)
    }
}

/// Wrap a handler so that every delivery, its sender and its outcome land in the ledger.
/// Panics are caught here and turned into a retryable failure (so they are recorded too).
///
/// The handler runs in a [`HANDLER_SPAN`] span naming the service (and the component, on a
/// service's in-process bus): whatever it publishes or emits carries that span's trace
/// context, and a trace shows which service ran which delivery.
fn recorded<F>(
    ledger: Ledger,
    channel: Channel,
    name: &'static str,
    to: String,
    limit: u32,
    f: F,
) -> BoxHandler
where
    F: Fn(Message) -> BoxFuture<'static, Handled> + Send + Sync + 'static,
{
    let f = Arc::new(f);
    let service = to.split('/').next().unwrap_or_default().to_string();
    courier::handler::boxed(move |m: Message| {
        let (ledger, to, f) = (ledger.clone(), to.clone(), f.clone());
        let span = tracing::info_span!(
            target: "meeting_system",
            HANDLER_SPAN,
            service = %service,
            handler = %to,
            channel = channel.as_str(),
            what = name,
        );
        async move {
            let from = m.header(SOURCE).unwrap_or("unknown").to_string();
            let attempt = m.attempt;
            let limit = m.max_attempts.unwrap_or(limit);
            // A sender may say why a failure is expected (the demo's malformed task does).
            let note_of_failure = m.header(NOTE).map(str::to_string);
            let result = match AssertUnwindSafe(f(m)).catch_unwind().await {
                Ok(r) => r,
                Err(panic) => {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a panic".into());
                    Err(HandlerError::retry(format!("handler panicked: {what}")))
                }
            };
            let (outcome, note, result): (Outcome, String, HandlerResult) = match result {
                Ok(note) => (Outcome::Ok, note, Ok(())),
                Err(e) => {
                    let dead = e.mode() == FailureMode::Permanent || attempt >= limit;
                    let text = e.message().to_string();
                    let o = if dead {
                        Outcome::Dead(text)
                    } else {
                        Outcome::Retry(text)
                    };
                    (o, note_of_failure.unwrap_or_default(), Err(e))
                }
            };
            ledger
                .record(Entry::now(channel, from, name, to, attempt, outcome, note))
                .await;
            result
        }
        .instrument(span)
    })
}

/// A started service. Stop it with [`RunningService::stop`].
pub struct RunningService {
    service: ServiceKind,
    svc: Svc,
    tasks: WorkerHandle,
    events: WorkerHandle,
    locals: Vec<WorkerHandle>,
    _local: Courier,
}

impl std::fmt::Debug for RunningService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningService")
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl RunningService {
    /// Which service.
    pub fn service(&self) -> ServiceKind {
        self.service
    }

    /// A one-line summary of the service's state.
    pub fn summary(&self) -> String {
        self.svc.summary()
    }

    /// Counters of the task worker and of the consumer group.
    pub fn stats(&self) -> (WorkerStats, WorkerStats) {
        (self.tasks.stats(), self.events.stats())
    }

    /// Stop receiving, let running handlers finish within `grace`, release the rest.
    pub async fn stop(self, grace: Duration) {
        self.tasks.stop(grace).await;
        self.events.stop(grace).await;
        for l in self.locals {
            l.stop(grace).await;
        }
    }
}
