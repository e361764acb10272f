//! # courier-core
//!
//! The message model, the three backend traits ([`Queue`], [`PubSub`], [`EventBus`]), the
//! policies (retry, backoff, priority, names) and the runtimes written once for every backend.
//! No broker I/O lives here: backends implement atomic primitives, core decides policy
//! (DESIGN §7).
#![forbid(unsafe_code)]

pub mod backend;
pub mod clock;
pub mod courier;
pub mod dispatcher;
pub mod error;
pub mod event_bus;
pub mod handler;
pub mod message;
pub mod names;
pub mod policy;
pub mod pubsub;
pub mod queue;
pub mod scheduler;
pub mod subscriber;
pub mod telemetry;
pub mod wire;
pub mod worker;

pub use clock::{Clock, SharedClock, SystemClock, TokioClock};
pub use courier::{Courier, CourierConfig};
pub use dispatcher::Dispatcher;
pub use error::{BoxError, Error, ErrorKind, Result, redact_url};
pub use event_bus::{EventBus, EventBusExt, GroupStats, ReplayFrom, Retention};
pub use handler::{BoxHandler, HandlerError, HandlerResult};
pub use message::{Headers, Message, MessageId, Priority};
pub use names::{MAX_DEDUP_KEY_LEN, Pattern, check_dedup_key, validate_name};
pub use policy::{FailureAction, FailureMode, QueueConfig, RateLimit, RetryPolicy};
pub use pubsub::{PubSub, SubscribeOptions, Subscription, SubscriptionBuffer};
pub use queue::{
    DeadLetter, Delivery, Lease, Page, Published, Queue, QueueExt, QueueStats, Selection, Settle,
};
pub use scheduler::{Every, ScheduleHandle, Scheduler};
pub use subscriber::{Subscriber, SubscriberHandle, SubscriberStats};
pub use worker::{
    GroupConsumer, GroupSource, QueueSource, Source, Worker, WorkerBuilder, WorkerHandle,
    WorkerReport, WorkerStats,
};

/// A typed event: a Rust type that names its topic and travels as JSON.
pub trait Event: serde::Serialize + serde::de::DeserializeOwned + Send + 'static {
    /// The topic the event is emitted to.
    const TOPIC: &'static str;
}
