#![doc = include_str!("../README.md")]
//!
//! ## The guide
//!
//! One page per capability, each built around a runnable program in `examples/`:
//! [`docs/guide/`](https://example.invalid/courier/tree/main/docs/guide) (start with its
//! `README.md`). Every public method of the user API carries an example on `memory://`.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]

use std::path::Path;
use std::sync::Arc;

// The user API, explicitly: what an application names to publish, consume and configure.
// What only a backend author needs lives under [`backend`].

// The handle of one backend and the runtimes built on it.
pub use courier_core::{Courier, CourierConfig, Dispatcher, Every, ScheduleHandle, Scheduler};

// The message envelope (the same on every backend).
pub use courier_core::{Event, Headers, Message, MessageId, Priority};

/// Standard header names (`source`, `traceparent`, `correlation_id`).
pub use courier_core::message::headers;

// Work queues: the trait, its conveniences, configuration and what they return.
pub use courier_core::{
    DeadLetter, Delivery, FailureAction, FailureMode, Lease, MAX_DEDUP_KEY_LEN, Page, Published,
    Queue, QueueConfig, QueueExt, QueueStats, RateLimit, RetryPolicy, Selection, Settle,
};

// Pub/sub: live broadcast with patterns.
pub use courier_core::{Pattern, PubSub, SubscribeOptions, Subscription};

// The event bus: durable topics read by consumer groups.
pub use courier_core::{EventBus, EventBusExt, GroupStats, ReplayFrom, Retention};

// Runtimes that run handlers: workers, group consumers and subscribers.
pub use courier_core::{
    BoxHandler, GroupConsumer, HandlerError, HandlerResult, Subscriber, SubscriberHandle,
    SubscriberStats, Worker, WorkerBuilder, WorkerHandle, WorkerReport, WorkerStats,
};

/// Building handlers from closures ([`handler::boxed`], [`handler::json`]).
pub use courier_core::handler;

/// Metrics and traces: the series Courier records, the stats poller, trace propagation.
pub use courier_core::telemetry;

// Errors, and the helpers to show names and URLs safely.
pub use courier_core::{BoxError, Error, ErrorKind, Result, redact_url, validate_name};

// Clocks: real time, or tokio's virtual time in tests.
pub use courier_core::{Clock, SharedClock, SystemClock, TokioClock};

/// For backend authors: the backend kit, the wire format, the subscription buffer a pub/sub
/// backend fills and the worker's [`backend::Source`]. An application does not need these;
/// `docs/backend-guide.md` walks through writing a backend with them.
pub mod backend {
    pub use courier_core::backend::*;
}

/// The in-memory backend (feature `memory`, on by default).
#[cfg(feature = "memory")]
#[cfg_attr(docsrs, doc(cfg(feature = "memory")))]
pub use courier_memory as memory;

/// The embedded SQLite backend (feature `sqlite`, on by default).
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use courier_sqlite as sqlite;

/// The Redis backend (feature `redis`).
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use courier_redis as redis;

/// The RabbitMQ backend (feature `amqp`).
#[cfg(feature = "amqp")]
#[cfg_attr(docsrs, doc(cfg(feature = "amqp")))]
pub use courier_amqp as amqp;

/// The NATS JetStream backend (feature `nats`).
#[cfg(feature = "nats")]
#[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
pub use courier_nats as nats;

/// Connect to a backend by URL and return the [`Courier`] handle.
///
/// | scheme | backend | feature |
/// |---|---|---|
/// | `memory://` | in-process, the reference model | `memory` (default) |
/// | `sqlite://path`, `sqlite::memory:` | embedded SQLite | `sqlite` (default) |
/// | `redis://`, `rediss://` | Redis | `redis` |
/// | `redis+cluster://h1:p1,h2:p2`, `rediss+cluster://…` | Redis Cluster | `redis` |
/// | `amqp://`, `amqps://` | RabbitMQ | `amqp` |
/// | `nats://`, `tls://` | NATS JetStream | `nats` |
///
/// Schemes are case-insensitive (`SQLite://…`, `MEMORY://`, `Redis://…`). Each `memory://`
/// URL makes a new, independent in-process store; share it by cloning the returned
/// [`Courier`].
///
/// # Errors
/// [`ErrorKind::InvalidInput`] for a malformed URL or unknown scheme,
/// [`ErrorKind::Unsupported`] when the backend is not compiled into this build. Passwords in
/// the URL never appear in the error.
///
/// # Cancel safety
/// Dropping the future before it returns gives no handle, and nothing is published or
/// subscribed; what the backend had opened so far is dropped with the future. A SQLite file
/// may already have been created, with its schema.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> courier::Result<()> {
/// use courier::ErrorKind;
///
/// let courier = courier::connect("memory://").await?;
/// assert_eq!(courier.backend_name(), "memory");
/// let embedded = courier::connect("sqlite::memory:").await?;
/// assert_eq!(embedded.backend_name(), "sqlite");
/// // An unknown scheme is refused, and a password never shows in the error.
/// let e = courier::connect("mqtt://user:secret@host").await.unwrap_err();
/// assert_eq!(e.kind(), ErrorKind::InvalidInput);
/// assert!(!e.to_string().contains("secret"));
/// # Ok(())
/// # }
/// ```
pub async fn connect(url: &str) -> Result<Courier> {
    let (scheme, normalized) = scheme_of(url)?;
    let url = normalized.as_str();
    match scheme.as_str() {
        #[cfg(feature = "memory")]
        "memory" => {
            let b = courier_memory::MemoryBackend::new();
            Ok(Courier::new(
                Arc::new(b.clone()),
                Arc::new(b.clone()),
                Arc::new(b),
            ))
        }
        #[cfg(not(feature = "memory"))]
        "memory" => Err(not_compiled(url, "memory")),
        #[cfg(feature = "sqlite")]
        "sqlite" => {
            let b = courier_sqlite::SqliteBackend::from_url(url).await?;
            Ok(Courier::new(
                Arc::new(b.clone()),
                Arc::new(b.clone()),
                Arc::new(b),
            ))
        }
        #[cfg(feature = "redis")]
        "redis" | "rediss" | "redis+cluster" | "rediss+cluster" => {
            let b = courier_redis::RedisBackend::from_url(url).await?;
            Ok(Courier::new(
                Arc::new(b.clone()),
                Arc::new(b.clone()),
                Arc::new(b),
            ))
        }
        #[cfg(feature = "amqp")]
        "amqp" | "amqps" => {
            let b = courier_amqp::AmqpBackend::from_url(url).await?;
            Ok(Courier::new(
                Arc::new(b.clone()),
                Arc::new(b.clone()),
                Arc::new(b),
            ))
        }
        #[cfg(feature = "nats")]
        "nats" | "tls" => {
            let b = courier_nats::NatsBackend::from_url(url).await?;
            Ok(Courier::new(
                Arc::new(b.clone()),
                Arc::new(b.clone()),
                Arc::new(b),
            ))
        }
        #[cfg(not(feature = "sqlite"))]
        "sqlite" => Err(not_compiled(url, "sqlite")),
        #[cfg(not(feature = "redis"))]
        "redis" | "rediss" | "redis+cluster" | "rediss+cluster" => Err(not_compiled(url, "redis")),
        #[cfg(not(feature = "amqp"))]
        "amqp" | "amqps" => Err(not_compiled(url, "amqp")),
        #[cfg(not(feature = "nats"))]
        "nats" | "tls" => Err(not_compiled(url, "nats")),
        other => Err(Error::invalid(format!(
            "unknown backend scheme {other:?} in URL {} (expected memory, sqlite, redis, \
             rediss, redis+cluster, rediss+cluster, amqp, amqps, nats or tls)",
            redact_url(url)
        ))),
    }
}

/// Connect using a [`CourierConfig`]: its `url` (default `memory://`), then apply its queue
/// configurations, routes and retention.
///
/// # Errors
/// As [`connect`] and [`Courier::apply`].
///
/// # Cancel safety
/// As [`connect`]: dropping the future before it returns gives no handle. The configuration is
/// applied only to the handle it returns.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> courier::Result<()> {
/// let config = courier::parse_config(
///     r#"
///     url = "memory://"
///     [routes]
///     speech_recognition = "ai"
///     "#,
/// )?;
/// let courier = courier::connect_with(&config).await?;
/// courier.dispatcher().dispatch_json("speech_recognition", &"chunk-1").await?;
/// assert_eq!(courier.queue().stats("ai").await?.published, 1);
/// # Ok(())
/// # }
/// ```
pub async fn connect_with(config: &CourierConfig) -> Result<Courier> {
    let url = config.url.as_deref().unwrap_or("memory://");
    let courier = connect(url).await?;
    courier.apply(config)?;
    Ok(courier)
}

// Unused only in a build with every backend.
#[cfg(not(all(
    feature = "memory",
    feature = "sqlite",
    feature = "redis",
    feature = "amqp",
    feature = "nats"
)))]
fn not_compiled(url: &str, feature: &str) -> Error {
    Error::new(
        ErrorKind::Unsupported,
        format!(
            "backend {feature:?} is not available in this build of courier (URL {}): \
             it needs the cargo feature `{feature}`",
            redact_url(url)
        ),
    )
}

/// The URL's scheme in lower case, and the URL with its scheme in lower case: schemes are
/// case-insensitive (RFC 3986, section 3.1), and backends match them exactly.
fn scheme_of(url: &str) -> Result<(String, String)> {
    if let Some((scheme, ":memory:")) = url.split_once(':')
        && scheme.eq_ignore_ascii_case("sqlite")
    {
        return Ok(("sqlite".to_string(), "sqlite::memory:".to_string()));
    }
    match url.split_once("://") {
        Some((scheme, rest))
            if scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')) =>
        {
            let scheme = scheme.to_ascii_lowercase();
            let normalized = format!("{scheme}://{rest}");
            Ok((scheme, normalized))
        }
        // Not shown: what stands before "://" is no scheme and may hold a password.
        Some(_) => Err(Error::invalid(
            "not a backend URL: a scheme is a letter followed by letters, digits, '+', '-' or \
             '.' (expected scheme://…, e.g. memory:// or redis://127.0.0.1:6379)",
        )),
        None => Err(Error::invalid(format!(
            "not a backend URL: {} (expected scheme://…, e.g. memory:// or redis://127.0.0.1:6379)",
            redact_url(url)
        ))),
    }
}

/// Load a [`CourierConfig`] from a TOML file, then apply environment overrides:
/// `COURIER_URL` replaces `url`.
///
/// # Errors
/// [`ErrorKind::NotFound`] when the file is missing, [`ErrorKind::InvalidInput`] for bad TOML,
/// both naming the path.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> courier::Result<()> {
/// use courier::ErrorKind;
///
/// let path = std::env::temp_dir().join(format!("courier-doc-{}.toml", std::process::id()));
/// std::fs::write(&path, "url = \"memory://\"\n[queues.ai]\nvisibility_timeout = 120000\n")
///     .map_err(|e| courier::Error::invalid(e.to_string()))?;
/// let config = courier::load_config(&path);
/// let _ = std::fs::remove_file(&path);
/// let config = config?;
/// assert_eq!(config.queues["ai"].visibility_timeout.as_secs(), 120);
/// let missing = courier::load_config(std::path::Path::new("/no/such/courier.toml"));
/// assert_eq!(missing.unwrap_err().kind(), ErrorKind::NotFound);
/// # Ok(())
/// # }
/// ```
pub fn load_config(path: &Path) -> Result<CourierConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        let kind = if e.kind() == std::io::ErrorKind::NotFound {
            ErrorKind::NotFound
        } else {
            ErrorKind::InvalidInput
        };
        Error::new(kind, format!("cannot read config {}", path.display())).with_source(e)
    })?;
    let mut config = parse_config(&text)
        .map_err(|e| Error::invalid(format!("config {}: {}", path.display(), e.message())))?;
    apply_env(&mut config);
    Ok(config)
}

/// Parse a [`CourierConfig`] from TOML text.
///
/// # Errors
/// [`ErrorKind::InvalidInput`] with the TOML parser's message (line and column).
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> courier::Result<()> {
/// use std::time::Duration;
///
/// let config = courier::parse_config(
///     r#"
///     [queue_defaults]
///     retry = { max_attempts = 5, base = 1000, factor = 2.0, max_delay = 300000, jitter = 0.2 }
///     [queues.ai]
///     visibility_timeout = 120000
///     "#,
/// )?;
/// assert_eq!(config.queues["ai"].visibility_timeout, Duration::from_secs(120));
/// // Unknown keys and invalid values are refused, naming where.
/// assert!(courier::parse_config("bogus = 1").is_err());
/// let e = courier::parse_config("[queues.ai]\nretry = { max_attempts = 0 }").unwrap_err();
/// assert!(e.message().contains("queues.ai"));
/// # Ok(())
/// # }
/// ```
pub fn parse_config(text: &str) -> Result<CourierConfig> {
    let config: CourierConfig =
        toml::from_str(text).map_err(|e| Error::invalid(format!("invalid TOML: {e}")))?;
    if let Some(d) = &config.queue_defaults {
        d.validate()?;
    }
    for (name, q) in &config.queues {
        validate_name("queue", name)?;
        q.validate()
            .map_err(|e| Error::invalid(format!("queues.{name}: {}", e.message())))?;
    }
    Ok(config)
}

/// Apply environment overrides to a configuration (`COURIER_URL`).
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> courier::Result<()> {
/// let mut config = courier::parse_config("url = \"memory://\"")?;
/// courier::apply_env(&mut config);
/// // The URL is `COURIER_URL` when that is set and not empty, else the file's.
/// match std::env::var("COURIER_URL") {
///     Ok(url) if !url.is_empty() => assert_eq!(config.url, Some(url)),
///     _ => assert_eq!(config.url.as_deref(), Some("memory://")),
/// }
/// # Ok(())
/// # }
/// ```
pub fn apply_env(config: &mut CourierConfig) {
    if let Ok(url) = std::env::var("COURIER_URL")
        && !url.is_empty()
    {
        config.url = Some(url);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-queue keys of Q11 and of handler timeouts read from TOML in milliseconds, are
    /// unset when absent, and are validated.
    #[test]
    fn config_reads_dedup_window_and_handler_timeout() {
        let c = parse_config(
            "[queues.billing]\ndedup_window = 600000\nhandler_timeout = 30000\n\n[queues.plain]\n",
        )
        .expect("parse");
        let billing = &c.queues["billing"];
        assert_eq!(
            billing.dedup_window,
            Some(std::time::Duration::from_secs(600))
        );
        assert_eq!(
            billing.handler_timeout,
            Some(std::time::Duration::from_secs(30))
        );
        let plain = &c.queues["plain"];
        assert_eq!((plain.dedup_window, plain.handler_timeout), (None, None));
        let e = parse_config("[queues.q]\nhandler_timeout = 0\n").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    }

    /// Message expiry reads from TOML: `message_ttl` in milliseconds, `drop_expired` a bool.
    #[test]
    fn config_reads_message_ttl_and_drop_expired() {
        let c = parse_config("[queues.relay]\nmessage_ttl = 5000\ndrop_expired = true\n")
            .expect("parse");
        let relay = &c.queues["relay"];
        assert_eq!(
            (relay.message_ttl, relay.drop_expired),
            (Some(std::time::Duration::from_secs(5)), true)
        );
        let e = parse_config("[queues.q]\nmessage_ttl = 0\n").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    }

    /// The scheme parser every `connect` goes through, fuzzed (the URL parsers of the
    /// backends have their own: `backends/sqlite/tests/fuzz_url.rs`): it never panics, refuses
    /// with `InvalidInput` only, and never shows a password, wherever in the text it stands.
    #[test]
    fn scheme_parsing_fuzzed() {
        use rand::rngs::SmallRng;
        use rand::{Rng, SeedableRng};
        const TOKENS: &[&str] = &[
            "redis",
            "REDIS",
            "sqlite",
            "memory",
            "nats",
            "amqps",
            "://",
            ":",
            "/",
            "@",
            "+",
            "-",
            ".",
            "?",
            ":memory:",
            "user:s3cr3tPW@",
            "é",
            " ",
            "1",
        ];
        let seed: u64 = rand::random();
        let mut rng = SmallRng::seed_from_u64(seed);
        for i in 0..300_000 {
            let url: String = (0..rng.random_range(0..8))
                .map(|_| {
                    if rng.random_bool(0.8) {
                        TOKENS[rng.random_range(0..TOKENS.len())].to_string()
                    } else {
                        char::from_u32(rng.random_range(0..0x2FF))
                            .unwrap_or('?')
                            .to_string()
                    }
                })
                .collect();
            let Ok(result) = std::panic::catch_unwind(|| scheme_of(&url)) else {
                panic!("seed {seed}, input {i} {url:?}: scheme_of panicked");
            };
            match result {
                Ok((scheme, normalized)) => {
                    assert!(normalized.starts_with(&scheme), "{url:?} -> {normalized:?}");
                    assert_eq!(scheme, scheme.to_ascii_lowercase());
                }
                Err(e) => {
                    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{url:?}: {e:#}");
                    assert!(
                        !format!("{e:#} {e:?}").contains("s3cr3tPW"),
                        "seed {seed}, {url:?} leaks: {e:#}"
                    );
                }
            }
        }
    }

    #[tokio::test]
    async fn unknown_scheme_is_invalid_and_redacted() {
        let e = connect("foo://user:secret@h").await.expect_err("unknown");
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(!e.to_string().contains("secret"), "{e}");
        // NATS's schemes are routed to its backend, never refused as unknown: without the
        // feature as not compiled in, with it by the backend (nothing listens on port 1).
        for url in [
            "nats://user:secret@127.0.0.1:1",
            "tls://user:secret@127.0.0.1:1",
        ] {
            let e = connect(url).await.expect_err("off, or no server");
            #[cfg(not(feature = "nats"))]
            {
                assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
                assert!(e.to_string().contains("feature `nats`"), "{e}");
            }
            #[cfg(feature = "nats")]
            assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
            assert!(!format!("{e} {e:?}").contains("secret"), "{e:?}");
        }
        assert!(connect("nonsense").await.is_err());
    }

    #[test]
    fn schemes_are_case_insensitive() {
        for (url, scheme, normalized) in [
            ("MEMORY://", "memory", "memory://"),
            ("Memory://", "memory", "memory://"),
            ("SQLite:///tmp/Q.db", "sqlite", "sqlite:///tmp/Q.db"),
            ("SQLITE::memory:", "sqlite", "sqlite::memory:"),
            (
                "Redis://user:pw@Host:6379/0",
                "redis",
                "redis://user:pw@Host:6379/0",
            ),
            ("REDISS://h", "rediss", "rediss://h"),
            (
                "Redis+Cluster://a:1,b:2",
                "redis+cluster",
                "redis+cluster://a:1,b:2",
            ),
            ("NATS://h:4222", "nats", "nats://h:4222"),
            ("TLS://h:4222", "tls", "tls://h:4222"),
        ] {
            let (s, n) = scheme_of(url).expect(url);
            assert_eq!((s.as_str(), n.as_str()), (scheme, normalized), "{url}");
        }
    }

    #[tokio::test]
    async fn connect_matches_schemes_in_any_case() {
        #[cfg(feature = "memory")]
        {
            let c = connect("MEMORY://").await.expect("memory");
            c.queue()
                .publish("q", Message::new("k", "v"))
                .await
                .expect("publish");
        }
        #[cfg(feature = "sqlite")]
        {
            let c = connect("SQLite::memory:").await.expect("sqlite memory");
            c.queue()
                .publish("q", Message::new("k", "v"))
                .await
                .expect("publish");
            let dir = std::env::temp_dir().join(format!(
                "courier-facade-scheme-{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos())
            ));
            std::fs::create_dir_all(&dir).expect("temp dir");
            let r = connect(&format!("SQLite://{}/q.db", dir.display())).await;
            let created = dir.join("q.db").is_file();
            drop(r);
            let _ = std::fs::remove_dir_all(&dir);
            assert!(created, "SQLite://… opens the file");
        }
        // Redis is routed to its backend (here: not compiled in), not refused as unknown.
        #[cfg(not(feature = "redis"))]
        {
            let e = connect("Redis://user:secret@127.0.0.1:6379")
                .await
                .expect_err("off");
            assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
            assert!(!e.to_string().contains("secret"), "{e}");
        }
        // RabbitMQ likewise.
        #[cfg(not(feature = "amqp"))]
        {
            let e = connect("AMQPS://user:secret@h").await.expect_err("off");
            assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
            assert!(e.to_string().contains("feature `amqp`"), "{e}");
            assert!(!e.to_string().contains("secret"), "{e}");
        }
        // NATS likewise.
        #[cfg(not(feature = "nats"))]
        {
            let e = connect("NATS://user:secret@h").await.expect_err("off");
            assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
            assert!(e.to_string().contains("feature `nats`"), "{e}");
            assert!(!e.to_string().contains("secret"), "{e}");
        }
    }

    #[tokio::test]
    async fn a_password_before_the_scheme_separator_is_not_shown() {
        let e = connect("user:secret@host://x")
            .await
            .expect_err("no scheme");
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(!e.to_string().contains("secret"), "{e}");
    }

    #[cfg(feature = "sqlite")]
    #[tokio::test]
    async fn sqlite_memory_url_connects() {
        let c = connect("sqlite::memory:").await.expect("sqlite");
        let id = c
            .queue()
            .publish("facade", Message::new("k", "v"))
            .await
            .expect("publish");
        let d = c
            .queue()
            .receive_one("facade", std::time::Duration::from_secs(1))
            .await
            .expect("receive")
            .expect("a delivery");
        assert_eq!(d.message.id, id);
    }

    #[test]
    fn config_parses_and_validates() {
        let c = parse_config(
            r#"
            url = "memory://"
            [queues.ai]
            visibility_timeout = 60000
            retry = { max_attempts = 2 }
            [routes]
            speech_recognition = "ai"
            "#,
        )
        .expect("valid");
        assert_eq!(c.queues["ai"].retry.max_attempts, 2);
        assert_eq!(c.routes["speech_recognition"], "ai");
        let e = parse_config("[queues.ai]\nretry = { max_attempts = 0 }").expect_err("bad");
        assert!(e.message().contains("queues.ai"), "{e}");
        assert!(parse_config("bogus = 1").is_err());
        assert!(parse_config("[queues.\"a b\"]").is_err());
    }
}
