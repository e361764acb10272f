//! # courier-sqlite
//!
//! Courier's embedded, durable, file-based backend: [`SqliteBackend`] implements
//! [`Queue`], [`PubSub`] and [`EventBus`] on one SQLite database (rusqlite, SQLite bundled),
//! with exactly the semantics of the reference model (`courier-memory`).
//!
//! ```no_run
//! use std::time::Duration;
//! use courier_core::{Message, QueueExt};
//! use courier_sqlite::SqliteBackend;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> courier_core::Result<()> {
//! let backend = SqliteBackend::from_url("sqlite://data/courier.db").await?;
//! backend.publish("tasks", Message::new("hello", "world")).await?;
//! let d = backend.receive_one("tasks", Duration::from_secs(1)).await?.expect("a message");
//! backend.ack("tasks", &d.lease).await?;
//! # Ok(()) }
//! ```
//!
//! ## Storage and durability
//!
//! - URLs: `sqlite://path/to/file.db` (relative), `sqlite:///abs/path.db` (absolute) and
//!   `sqlite::memory:` (a private in-memory database that lives as long as the backend).
//!   The scheme is case-insensitive; the path is percent-decoded (`%20` is a space, `%3F` a
//!   `?`). Parameters after `?`, joined by `&`:
//!
//!   | parameter | values | builder | default |
//!   |---|---|---|---|
//!   | `mode` | `ro` (existing file, read-only, schema must be current), `rw` (existing file), `rwc` (created when missing) | [`SqliteBackendBuilder::mode`] | `rwc` |
//!   | `busy_timeout` | milliseconds, 0 to 2147483647 | [`SqliteBackendBuilder::busy_timeout`] | 5000 |
//!   | `foreign` | `allow`, `refuse` | [`SqliteBackendBuilder::allow_foreign_database`] | `refuse` |
//!
//!   An unknown, repeated or malformed parameter, an invalid percent-escape, a fragment
//!   (`#`) or a user name/password is refused with `InvalidInput` naming what is wrong
//!   (never a password; see [`SqliteUrl::parse`]).
//! - The file is created when missing (mode `rwc`), but its directory must exist: a missing
//!   directory, a read-only, locked or corrupt file gives a clear error naming the path.
//! - Courier marks its files (`PRAGMA application_id`). A database that is not Courier's —
//!   tables of its own, another application id — is refused with `InvalidInput` naming the
//!   path, before anything in it changes (not even its journal mode), unless allowed
//!   explicitly ([`SqliteBackendBuilder::allow_foreign_database`], `?foreign=allow`). An
//!   empty file or a new one becomes Courier's.
//! - WAL journal, `synchronous=NORMAL` (a committed publish survives a crash of the process;
//!   the last commits may be lost on power loss), a busy timeout (default 5 s).
//! - The schema is versioned (`PRAGMA user_version`) and migrated on open; a database from a
//!   newer Courier is refused.
//! - Message bodies are Courier's wire encoding (`courier_core::wire`), as on every backend.
//!
//! ## Concurrency
//!
//! One dedicated writer thread per backend handle owns the connection. It receives operations
//! over a channel and **group-commits** everything queued at that moment into one short
//! `BEGIN IMMEDIATE` transaction; blocking SQLite calls never run on the async runtime.
//! Several handles and several processes may open the same file: every claim runs inside an
//! `IMMEDIATE` transaction, so a message is never leased to two consumers at once.
//!
//! ## Waiting and time
//!
//! - Time comes from the backend's [`Clock`](courier_core::Clock), passed into every query as
//!   a parameter (never SQLite's clock).
//! - A waiting `receive` wakes on an in-process notification (any handle of this process on
//!   the same file), on a timer set to the next delayed message or lease deadline, and on
//!   other processes' commits, detected every poll interval (default 50 ms) with
//!   `PRAGMA data_version`. **Delay tick:** about 1 ms within a process (timer driven); up to
//!   one poll interval for a change made by another process.
//! - Expired leases are processed whenever the queue is touched (bounded per call): they count
//!   as failed attempts, retried with the core's backoff or buried as "lease expired".
//!
//! ## Flow control
//!
//! Pause (Q14, E8), the rate limit (Q15) and its window count live in the queue's (or
//! group's) row of `courier_queues`, which every operation loads and saves in its write
//! transaction: every handle and process sees a change at its next operation, and a claim
//! reads them at no extra cost (an unpaused queue without a limit runs no extra statement).
//! A claim under a limit leases at most what the current epoch-aligned window has left
//! (at most a quarter of it per receive) and adds what it leased to the stored count in the
//! same transaction, so the limit holds across processes. When the window is spent and work
//! is ready, its end is a wake-up instant like a delayed message's due time. `resume` (and
//! `set_rate_limit`) wake this process's waiting receivers at once; other processes see the
//! commit within one poll interval. A group paused before it exists is remembered in
//! `courier_pending_pauses` (so it is neither created nor listed) and starts paused.
//! `reprioritise` finds a message's copies through the per-state partial indexes (no index
//! on live ids is kept, which would cost every publish and claim): its cost grows with the
//! queue's ready, delayed and leased rows.
//!
//! ## PubSub
//!
//! In-process subscriptions (every handle on the same file in this process) receive a message
//! at once. For other processes, each publish also writes a short-lived row (deleted after
//! about 10 s) that their pollers read from their last seen row; a subscription only sees
//! rows written after it was created, so a message published with no subscriber anywhere is
//! dropped (P2). `sqlite::memory:` databases are private to their backend: no relay.
//!
//! ## EventBus
//!
//! Each topic is an append-only log table; each consumer group has a cursor and delivery rows
//! that follow the queue state machine (leases, retries, dead letters), materialised lazily
//! from the log at receive. Retention (`max_len`, `max_age`) is stored with the topic and
//! applied on emit and on every group operation.
#![forbid(unsafe_code)]

mod backend;
mod consts;
mod error;
mod event_bus;
mod hub;
mod poll;
mod pubsub;
mod queue;
mod schema;
mod store;
mod url;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use courier_core::{Error, EventBus, PubSub, Queue, QueueConfig, Result, SharedClock, SystemClock};

pub use backend::SqliteBackend;
pub use consts::BACKEND_NAME;
pub use schema::LATEST as SCHEMA_VERSION;
pub use url::{OpenMode, SqliteLocation, SqliteUrl, parse_url};

use courier_core::backend::ConfigStore;

use crate::backend::Inner;
use crate::error::KIT;
use crate::hub::Hub;
use crate::writer::Target;

/// The default interval at which other processes' commits are detected.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// The default SQLite busy timeout.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

impl SqliteBackend {
    /// Open the database named by a URL: `sqlite://path/to/file.db`, `sqlite:///abs/file.db`
    /// or `sqlite::memory:`, optionally with parameters (`?mode=ro`, `?busy_timeout=500`;
    /// see [`SqliteUrl::parse`]), otherwise default settings.
    ///
    /// # Errors
    /// [`courier_core::ErrorKind::InvalidInput`] for a malformed URL, an empty path or a bad
    /// parameter; the errors of [`SqliteBackendBuilder::build`].
    pub async fn from_url(url: &str) -> Result<Self> {
        Self::builder().url(url)?.build().await
    }

    /// A builder to choose the file, clock, default queue configuration and intervals.
    pub fn builder() -> SqliteBackendBuilder {
        SqliteBackendBuilder::default()
    }

    /// The backend's short name, `"sqlite"`.
    pub fn backend_name(&self) -> &'static str {
        BACKEND_NAME
    }

    /// The clock used for delays, leases and timestamps.
    pub fn clock(&self) -> SharedClock {
        self.inner.clock.clone()
    }

    /// The configuration of queues and consumer groups that were never configured.
    pub fn default_config(&self) -> QueueConfig {
        self.inner.configs.default_config()
    }

    /// The database file (`:memory:` for an in-memory database).
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Whether the database is a private in-memory one.
    pub fn is_in_memory(&self) -> bool {
        self.inner.target == Target::Memory
    }

    /// The interval at which other processes' commits are detected.
    pub fn poll_interval(&self) -> Duration {
        self.inner.poll_interval
    }

    /// Names of the queues stored in the database, sorted.
    ///
    /// # Errors
    /// A database failure.
    pub async fn queue_names(&self) -> Result<Vec<String>> {
        self.inner
            .writer
            .call("queue_names", |ctx| {
                ctx.conn
                    .prepare_cached(
                        "SELECT name FROM courier_queues WHERE kind = 'queue' ORDER BY name",
                    )
                    .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
                    .map_err(ctx.err("queue_names"))
            })
            .await
    }

    /// Names of the topics stored in the database, sorted.
    ///
    /// # Errors
    /// A database failure.
    pub async fn topic_names(&self) -> Result<Vec<String>> {
        self.inner
            .writer
            .call("topic_names", |ctx| {
                ctx.conn
                    .prepare_cached("SELECT topic FROM courier_topics ORDER BY topic")
                    .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
                    .map_err(ctx.err("topic_names"))
            })
            .await
    }

    /// Store `bytes` as the body of a new ready message (Normal priority) without encoding or
    /// checking them, as a corrupt or foreign writer would. For tests of Q10 (an undecodable
    /// entry goes to dead letters and the consumer keeps running); not for applications.
    ///
    /// # Errors
    /// An invalid queue name or a database failure.
    #[doc(hidden)]
    pub async fn inject_raw(&self, queue: &str, bytes: &[u8]) -> Result<courier_core::MessageId> {
        KIT.check_name("queue", queue, "inject_raw")?;
        let body = bytes.to_vec();
        let name = queue.to_owned();
        let config = self.queue_config_of(queue);
        self.inner
            .writer
            .call("inject_raw", move |ctx| {
                let now = ctx.now();
                let mut q = queue::open(ctx, &name)?;
                store::tick(ctx, &mut q, now, &config)?;
                let id = store::inject_raw(
                    ctx,
                    &mut q,
                    courier_core::Priority::Normal.index() as i64,
                    &body,
                )?;
                store::save(ctx, &mut q)?;
                ctx.wake(store::queue_key(&name));
                Ok(id)
            })
            .await
    }

    /// Append `bytes` to a topic's log as an event body without encoding them (tests of Q10
    /// on consumer groups); not for applications.
    ///
    /// # Errors
    /// An invalid topic name or a database failure.
    #[doc(hidden)]
    pub async fn inject_raw_event(
        &self,
        topic: &str,
        bytes: &[u8],
    ) -> Result<courier_core::MessageId> {
        KIT.check_name("topic", topic, "inject_raw")?;
        let body = bytes.to_vec();
        let name = topic.to_owned();
        self.inner
            .writer
            .call("inject_raw", move |ctx| {
                let id = courier_core::MessageId::new();
                let row = event_bus::EventRow {
                    id,
                    due: None,
                    max_attempts: None,
                    body,
                };
                event_bus::append(ctx, &name, &[row])?;
                Ok(id)
            })
            .await
    }
}

/// Builds a [`SqliteBackend`].
#[derive(Debug, Clone)]
pub struct SqliteBackendBuilder {
    target: Option<Target>,
    clock: Option<SharedClock>,
    default_config: Option<QueueConfig>,
    poll_interval: Duration,
    busy_timeout: Duration,
    mode: OpenMode,
    allow_foreign_database: bool,
    separate_process: bool,
}

impl Default for SqliteBackendBuilder {
    fn default() -> Self {
        SqliteBackendBuilder {
            target: None,
            clock: None,
            default_config: None,
            poll_interval: DEFAULT_POLL_INTERVAL,
            busy_timeout: DEFAULT_BUSY_TIMEOUT,
            mode: OpenMode::default(),
            allow_foreign_database: false,
            separate_process: false,
        }
    }
}

impl SqliteBackendBuilder {
    /// Use the database file at `path` (created when missing; its directory must exist).
    pub fn path(mut self, path: impl Into<PathBuf>) -> Self {
        self.target = Some(Target::File(path.into()));
        self
    }

    /// Use a private in-memory database (lives as long as the backend).
    pub fn in_memory(mut self) -> Self {
        self.target = Some(Target::Memory);
        self
    }

    /// Use the database named by a URL (see [`SqliteUrl::parse`]). Its parameters
    /// (`mode`, `busy_timeout`) replace the settings made before this call; settings made
    /// after it replace the URL's.
    ///
    /// # Errors
    /// [`courier_core::ErrorKind::InvalidInput`] for a malformed URL, an empty path, or an
    /// unknown, repeated or malformed parameter.
    pub fn url(mut self, url: &str) -> Result<Self> {
        let parsed = SqliteUrl::parse(url)?;
        self.target = Some(match parsed.location {
            SqliteLocation::File(p) => Target::File(p),
            SqliteLocation::Memory => Target::Memory,
        });
        if let Some(mode) = parsed.mode {
            self.mode = mode;
        }
        if let Some(timeout) = parsed.busy_timeout {
            self.busy_timeout = timeout;
        }
        if let Some(allow) = parsed.allow_foreign_database {
            self.allow_foreign_database = allow;
        }
        Ok(self)
    }

    /// Whether to open a database that is not Courier's (default `false`; URL parameter
    /// `foreign=allow`).
    ///
    /// A database is Courier's when Courier created it (its `PRAGMA application_id` is
    /// Courier's) or it is empty. Any other database — tables of its own, another application
    /// id, or a `user_version` of its own — is refused with
    /// [`courier_core::ErrorKind::InvalidInput`] before anything in it is changed. With
    /// `true`, Courier adds its tables (all named `courier_*`) next to the others, switches
    /// the file to WAL, and records its schema version in `PRAGMA user_version`, which the
    /// other application therefore must not use (a database whose `user_version` is already
    /// taken is refused even then). The file is not marked as Courier's: every open needs the
    /// permission again.
    pub fn allow_foreign_database(mut self, allow: bool) -> Self {
        self.allow_foreign_database = allow;
        self
    }

    /// Test support, not for applications: the handle behaves as if another process had
    /// opened the file. It shares no wake-ups or subscriptions with this process's other
    /// handles and has its own pub/sub relay identity, so messages reach it the way they
    /// reach another process (through relay rows and polling). The conformance suite's
    /// `reopen` uses it.
    #[doc(hidden)]
    pub fn as_separate_process(mut self) -> Self {
        self.separate_process = true;
        self
    }

    /// How the file is opened (default [`OpenMode::ReadWriteCreate`]; URL parameter `mode`).
    pub fn mode(mut self, mode: OpenMode) -> Self {
        self.mode = mode;
        self
    }

    /// Use this clock (default: [`SystemClock`]). Every process sharing a file should use the
    /// same time base.
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The configuration of queues and groups never configured (default:
    /// [`QueueConfig::default`]).
    pub fn default_config(mut self, config: QueueConfig) -> Self {
        self.default_config = Some(config);
        self
    }

    /// How often other processes' commits are looked for (default 50 ms, at least 1 ms).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// How long a write waits for another process's lock before failing with
    /// [`courier_core::ErrorKind::Unavailable`] (default 5 s, at most `i32::MAX` ms — about
    /// 24.8 days — which is SQLite's limit; URL parameter `busy_timeout`).
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout.min(url::MAX_BUSY_TIMEOUT);
        self
    }

    /// Open the database (creating and migrating it as needed) and start the writer thread.
    ///
    /// # Errors
    /// [`courier_core::ErrorKind::InvalidInput`] when no path was given, the path is empty,
    /// an in-memory database is asked to be read-only, or the default configuration is
    /// invalid; [`courier_core::ErrorKind::NotFound`] naming the file when it is missing in
    /// [`OpenMode::ReadOnly`] or [`OpenMode::ReadWrite`]; [`courier_core::ErrorKind::Backend`]
    /// naming the file when it cannot be opened (missing directory, read-only, corrupt, not a
    /// database, from a newer Courier, in need of a migration in [`OpenMode::ReadOnly`]);
    /// [`courier_core::ErrorKind::Unavailable`] when it stays locked beyond the busy timeout.
    pub async fn build(self) -> Result<SqliteBackend> {
        let target = self.target.ok_or_else(|| {
            KIT.tag("open")(Error::invalid(
                "no SQLite database given: call path(..), url(..) or in_memory()",
            ))
        })?;
        let path = match &target {
            Target::File(p) if p.as_os_str().is_empty() => {
                return Err(KIT.tag("open")(Error::invalid(
                    "SQLite database path is empty",
                )));
            }
            Target::File(p) => p.clone(),
            Target::Memory if self.mode == OpenMode::ReadOnly => {
                return Err(KIT.tag("open")(Error::invalid(
                    "a private in-memory SQLite database cannot be opened read-only",
                )));
            }
            Target::Memory => PathBuf::from(":memory:"),
        };
        let default_config = self.default_config.unwrap_or_default();
        default_config.validate().map_err(KIT.tag("open"))?;
        let clock = self.clock.unwrap_or_else(|| Arc::new(SystemClock));
        let hub = match &target {
            Target::File(_) if self.separate_process => Arc::new(Hub::default()),
            Target::File(p) => Hub::for_file(p),
            Target::Memory => Arc::new(Hub::default()),
        };
        let writer = writer::start(writer::Settings {
            target: target.clone(),
            path: path.clone(),
            clock: clock.clone(),
            busy_timeout: self.busy_timeout,
            mode: self.mode,
            allow_foreign_database: self.allow_foreign_database,
            poll_interval: self.poll_interval,
            hub: hub.clone(),
            relay: pubsub::relay,
            // TokioClock follows tokio's clock, which may be paused (virtual) in tests.
            virtual_time: format!("{clock:?}").starts_with("TokioClock"),
        })
        .await?;
        Ok(SqliteBackend {
            inner: Arc::new(Inner {
                target,
                path,
                clock,
                configs: ConfigStore::new(default_config),
                poll_interval: self.poll_interval,
                writer,
                hub,
            }),
        })
    }
}

// Compile-time proof that the backend serves every trait behind `Arc<dyn …>`.
fn _object_safe(b: SqliteBackend) {
    let _: Arc<dyn Queue> = Arc::new(b.clone());
    let _: Arc<dyn PubSub> = Arc::new(b.clone());
    let _: Arc<dyn EventBus> = Arc::new(b);
}

#[cfg(test)]
mod tests;
