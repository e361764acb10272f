//! Configuration: the seed system's message-queue settings from a TOML file, overridden by
//! environment variables, overridden by command-line flags.
//!
//! ```toml
//! [message_queue]
//! enabled = true
//! backend = "sqlite://meeting-system.db"  # a URL, or a type: "memory", "sqlite", "redis"
//! queue_name = "svc"           # service queues are <queue_name>.<service>
//! namespace = ""               # prefix of every queue, topic and channel ("" = none)
//! workers = 4
//! visibility_timeout_ms = 30000
//! poll_interval_ms = 1000
//! max_retries = 3
//! retry_base_ms = 100
//! retry_max_delay_ms = 5000
//! dead_letter = true
//! event_retention = 100000     # events kept per topic; 0 = all
//! ```
//!
//! Environment (each overrides the file): `COURIER_URL`, then `MEETING_BACKEND` (the more
//! specific wins), `MEETING_ENABLED`, `MEETING_QUEUE_NAME`, `MEETING_NAMESPACE`,
//! `MEETING_WORKERS`, `MEETING_VISIBILITY_TIMEOUT_MS`, `MEETING_POLL_INTERVAL_MS`,
//! `MEETING_MAX_RETRIES`, `MEETING_RETRY_BASE_MS`, `MEETING_RETRY_MAX_DELAY_MS`,
//! `MEETING_DEAD_LETTER`, `MEETING_EVENT_RETENTION`. `MEETING_CONFIG` names the file when `--config` is not given.

use std::path::{Path, PathBuf};
use std::time::Duration;

use courier::{QueueConfig, RetryPolicy};
use serde::{Deserialize, Serialize};

/// The backend used when nothing else is configured: the embedded one, a SQLite file in the
/// working directory. Separate processes (`run user`, `run meeting`, …) started in the same
/// directory share it; `demo` puts each run under a fresh namespace, so what an earlier run
/// left in the file does not disturb the next.
pub const DEFAULT_BACKEND_URL: &str = "sqlite://meeting-system.db";

/// Whether a backend URL names a store shared between processes (everything but `memory://`
/// and `sqlite::memory:`).
pub fn is_shared(url: &str) -> bool {
    !url.starts_with("memory://") && url != "sqlite::memory:" && url != "sqlite://:memory:"
}

/// The file read when neither `--config` nor `MEETING_CONFIG` names one (if it exists).
pub const DEFAULT_CONFIG_FILE: &str = "meeting-system.toml";

/// Errors in configuration, naming the file, variable or key at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// The whole configuration file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// The message-queue section.
    pub message_queue: MessageQueue,
}

/// The seed's message-queue settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MessageQueue {
    /// When false, `run` and `demo` refuse to start (the services only talk through Courier).
    pub enabled: bool,
    /// A backend URL (`memory://`, `sqlite://file.db`, `redis://host:6379`) or a backend type
    /// (`memory`, `sqlite`, `redis`, `amqp`, `nats`) that picks that backend's local default.
    pub backend: String,
    /// Prefix of the service queues: `<queue_name>.<service>`.
    pub queue_name: String,
    /// Prefix of every queue, topic and channel name; empty for none.
    pub namespace: String,
    /// Task handlers running at once per service.
    pub workers: usize,
    /// How long a received task stays invisible to other consumers, ms.
    pub visibility_timeout_ms: u64,
    /// How long an idle consumer waits on the backend per receive, ms.
    pub poll_interval_ms: u64,
    /// Retries after the first attempt (so `max_retries + 1` deliveries in all).
    pub max_retries: u32,
    /// Backoff after the first failure, ms (doubles per attempt).
    pub retry_base_ms: u64,
    /// Upper bound of the backoff, ms.
    pub retry_max_delay_ms: u64,
    /// Keep messages that ran out of attempts as dead letters.
    pub dead_letter: bool,
    /// Events kept per topic (oldest trimmed first); 0 keeps everything. A consumer group
    /// that is down longer than it takes to emit this many events misses the trimmed ones.
    pub event_retention: u64,
}

impl Default for MessageQueue {
    fn default() -> Self {
        MessageQueue {
            enabled: true,
            backend: DEFAULT_BACKEND_URL.to_string(),
            queue_name: "svc".into(),
            namespace: String::new(),
            workers: 4,
            visibility_timeout_ms: 30_000,
            poll_interval_ms: 1_000,
            max_retries: 3,
            retry_base_ms: 100,
            retry_max_delay_ms: 5_000,
            dead_letter: true,
            event_retention: 100_000,
        }
    }
}

/// Command-line overrides (every field optional).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `--backend`.
    pub backend: Option<String>,
    /// `--namespace`.
    pub namespace: Option<String>,
    /// `--queue-name`.
    pub queue_name: Option<String>,
    /// `--workers`.
    pub workers: Option<usize>,
    /// `--visibility-timeout-ms`.
    pub visibility_timeout_ms: Option<u64>,
    /// `--poll-interval-ms`.
    pub poll_interval_ms: Option<u64>,
    /// `--max-retries`.
    pub max_retries: Option<u32>,
    /// `--retry-base-ms`.
    pub retry_base_ms: Option<u64>,
    /// `--no-dead-letter` (`Some(false)`).
    pub dead_letter: Option<bool>,
}

impl Settings {
    /// Parse TOML text.
    ///
    /// # Errors
    /// The TOML parser's message, with line and column.
    pub fn parse(text: &str) -> Result<Settings, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError(format!("invalid configuration: {e}")))
    }

    /// Read a file.
    ///
    /// # Errors
    /// A missing or unreadable file, or bad TOML, naming the path.
    pub fn from_file(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        Settings::parse(&text).map_err(|e| ConfigError(format!("{}: {}", path.display(), e.0)))
    }

    /// File (explicit path, else `MEETING_CONFIG`, else `./meeting-system.toml` if present,
    /// else defaults), then the process environment, then `overrides`; validated.
    ///
    /// # Errors
    /// The first problem found, naming where it came from.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Settings, ConfigError> {
        let env_path = std::env::var_os("MEETING_CONFIG").map(PathBuf::from);
        let mut settings = match path.map(Path::to_path_buf).or(env_path) {
            Some(p) => Settings::from_file(&p)?,
            None if Path::new(DEFAULT_CONFIG_FILE).exists() => {
                Settings::from_file(Path::new(DEFAULT_CONFIG_FILE))?
            }
            None => Settings::default(),
        };
        settings.apply_env(|k| std::env::var(k).ok())?;
        settings.apply_overrides(overrides);
        settings.validate()?;
        Ok(settings)
    }

    /// Apply environment overrides read through `get` (so tests need not touch the process
    /// environment).
    ///
    /// # Errors
    /// A variable whose value does not parse, naming it.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        fn parsed<T: std::str::FromStr>(
            get: &impl Fn(&str) -> Option<String>,
            key: &str,
        ) -> Result<Option<T>, ConfigError> {
            match get(key).filter(|v| !v.is_empty()) {
                None => Ok(None),
                Some(v) => v
                    .trim()
                    .parse()
                    .map(Some)
                    .map_err(|_| ConfigError(format!("{key}={v:?} is not a valid value"))),
            }
        }
        fn flag(
            get: &impl Fn(&str) -> Option<String>,
            key: &str,
        ) -> Result<Option<bool>, ConfigError> {
            match get(key).filter(|v| !v.is_empty()) {
                None => Ok(None),
                Some(v) => match v.trim().to_ascii_lowercase().as_str() {
                    "1" | "true" | "yes" | "on" => Ok(Some(true)),
                    "0" | "false" | "no" | "off" => Ok(Some(false)),
                    _ => Err(ConfigError(format!("{key}={v:?} is not a boolean"))),
                },
            }
        }
        let mq = &mut self.message_queue;
        if let Some(url) = get("COURIER_URL").filter(|v| !v.is_empty()) {
            mq.backend = url;
        }
        if let Some(b) = get("MEETING_BACKEND").filter(|v| !v.is_empty()) {
            mq.backend = b;
        }
        if let Some(v) = flag(&get, "MEETING_ENABLED")? {
            mq.enabled = v;
        }
        if let Some(v) = get("MEETING_QUEUE_NAME").filter(|v| !v.is_empty()) {
            mq.queue_name = v;
        }
        if let Some(v) = get("MEETING_NAMESPACE") {
            mq.namespace = v;
        }
        if let Some(v) = parsed(&get, "MEETING_WORKERS")? {
            mq.workers = v;
        }
        if let Some(v) = parsed(&get, "MEETING_VISIBILITY_TIMEOUT_MS")? {
            mq.visibility_timeout_ms = v;
        }
        if let Some(v) = parsed(&get, "MEETING_POLL_INTERVAL_MS")? {
            mq.poll_interval_ms = v;
        }
        if let Some(v) = parsed(&get, "MEETING_MAX_RETRIES")? {
            mq.max_retries = v;
        }
        if let Some(v) = parsed(&get, "MEETING_RETRY_BASE_MS")? {
            mq.retry_base_ms = v;
        }
        if let Some(v) = parsed(&get, "MEETING_RETRY_MAX_DELAY_MS")? {
            mq.retry_max_delay_ms = v;
        }
        if let Some(v) = flag(&get, "MEETING_DEAD_LETTER")? {
            mq.dead_letter = v;
        }
        if let Some(v) = parsed(&get, "MEETING_EVENT_RETENTION")? {
            mq.event_retention = v;
        }
        Ok(())
    }

    /// Apply command-line overrides.
    pub fn apply_overrides(&mut self, o: &Overrides) {
        let mq = &mut self.message_queue;
        if let Some(v) = &o.backend {
            mq.backend = v.clone();
        }
        if let Some(v) = &o.namespace {
            mq.namespace = v.clone();
        }
        if let Some(v) = &o.queue_name {
            mq.queue_name = v.clone();
        }
        if let Some(v) = o.workers {
            mq.workers = v;
        }
        if let Some(v) = o.visibility_timeout_ms {
            mq.visibility_timeout_ms = v;
        }
        if let Some(v) = o.poll_interval_ms {
            mq.poll_interval_ms = v;
        }
        if let Some(v) = o.max_retries {
            mq.max_retries = v;
        }
        if let Some(v) = o.retry_base_ms {
            mq.retry_base_ms = v;
        }
        if let Some(v) = o.dead_letter {
            mq.dead_letter = v;
        }
    }

    /// Check the values.
    ///
    /// # Errors
    /// The first invalid value, naming its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mq = &self.message_queue;
        if mq.workers == 0 {
            return Err(ConfigError(
                "message_queue.workers must be at least 1".into(),
            ));
        }
        if mq.poll_interval_ms == 0 {
            return Err(ConfigError(
                "message_queue.poll_interval_ms must be at least 1".into(),
            ));
        }
        self.backend_url()?;
        crate::topology::Names::new(&mq.namespace, &mq.queue_name)
            .map_err(|e| ConfigError(format!("message_queue: {}", e.message())))?;
        self.queue_config()
            .validate()
            .map_err(|e| ConfigError(format!("message_queue: {}", e.message())))
    }

    /// The backend URL: `backend` when it is a URL, else the local default of that type.
    ///
    /// # Errors
    /// An unknown backend type.
    pub fn backend_url(&self) -> Result<String, ConfigError> {
        let b = self.message_queue.backend.trim();
        if b.contains("://") || b == "sqlite::memory:" {
            return Ok(b.to_string());
        }
        Ok(match b {
            "" => DEFAULT_BACKEND_URL.to_string(),
            "memory" => "memory://".into(),
            "sqlite" => DEFAULT_BACKEND_URL.to_string(),
            "redis" => "redis://127.0.0.1:6379".into(),
            "amqp" | "rabbitmq" => "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            "nats" => "nats://127.0.0.1:4222".into(),
            other => {
                return Err(ConfigError(format!(
                    "message_queue.backend {other:?} is neither a URL nor one of memory, \
                     sqlite, redis, amqp, nats"
                )));
            }
        })
    }

    /// The names under the configured namespace and queue prefix.
    ///
    /// # Errors
    /// An invalid namespace or queue name.
    pub fn names(&self) -> courier::Result<crate::topology::Names> {
        crate::topology::Names::new(
            &self.message_queue.namespace,
            &self.message_queue.queue_name,
        )
    }

    /// The Courier queue configuration (service queues and consumer groups alike).
    /// `max_retries` retries means `max_retries + 1` attempts.
    pub fn queue_config(&self) -> QueueConfig {
        let mq = &self.message_queue;
        let base = Duration::from_millis(mq.retry_base_ms);
        QueueConfig::default()
            .with_visibility_timeout(Duration::from_millis(mq.visibility_timeout_ms))
            .with_retry(
                RetryPolicy::default()
                    .with_max_attempts(mq.max_retries.saturating_add(1))
                    .with_base(base)
                    .with_factor(2.0)
                    .with_max_delay(Duration::from_millis(mq.retry_max_delay_ms).max(base))
                    .with_jitter(0.1),
            )
            .with_dead_letter(mq.dead_letter)
    }

    /// The retention of every topic (domain events and the audit topic).
    pub fn retention(&self) -> courier::Retention {
        courier::Retention {
            max_len: (self.message_queue.event_retention > 0)
                .then_some(self.message_queue.event_retention),
            max_age: None,
        }
    }

    /// How long an idle consumer waits per receive.
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.message_queue.poll_interval_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn shipped_example_parses() {
        let s = Settings::parse(include_str!("../meeting-system.toml")).expect("valid example");
        s.validate().expect("valid values");
        assert_eq!(
            s.queue_config().retry.max_attempts,
            s.message_queue.max_retries + 1
        );
    }

    #[test]
    fn file_then_env_then_flags() {
        let mut s =
            Settings::parse("[message_queue]\nbackend = \"redis\"\nworkers = 2\nmax_retries = 1\n")
                .expect("valid");
        assert_eq!(s.backend_url().expect("url"), "redis://127.0.0.1:6379");
        let env: HashMap<&str, &str> = [
            ("COURIER_URL", "redis://a:6379"),
            ("MEETING_WORKERS", "7"),
            ("MEETING_DEAD_LETTER", "off"),
        ]
        .into();
        s.apply_env(|k| env.get(k).map(|v| v.to_string()))
            .expect("valid env");
        assert_eq!(s.message_queue.backend, "redis://a:6379");
        assert_eq!(s.message_queue.workers, 7);
        assert!(!s.message_queue.dead_letter);
        let env: HashMap<&str, &str> = [
            ("COURIER_URL", "redis://a:6379"),
            ("MEETING_BACKEND", "redis://b:6379"),
        ]
        .into();
        s.apply_env(|k| env.get(k).map(|v| v.to_string()))
            .expect("valid env");
        assert_eq!(s.message_queue.backend, "redis://b:6379", "specific wins");
        s.apply_overrides(&Overrides {
            backend: Some("memory://".into()),
            max_retries: Some(4),
            ..Overrides::default()
        });
        assert_eq!(s.backend_url().expect("url"), "memory://");
        assert_eq!(s.queue_config().retry.max_attempts, 5);
        s.validate().expect("valid");
    }

    #[test]
    fn bad_values_are_named() {
        let mut s = Settings::default();
        let e = s
            .apply_env(|k| (k == "MEETING_WORKERS").then(|| "many".to_string()))
            .expect_err("bad");
        assert!(e.0.contains("MEETING_WORKERS"), "{e}");
        assert!(Settings::parse("[message_queue]\nbogus = 1").is_err());
        s.message_queue.backend = "carrier-pigeon".into();
        assert!(s.validate().expect_err("bad").0.contains("backend"));
        let mut s = Settings::default();
        s.message_queue.workers = 0;
        assert!(s.validate().is_err());
    }
}
