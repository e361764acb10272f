//! The Lua scripts (one file each under `src/scripts/`) and how they are called.
//!
//! Every queue and group script is `lib.lua` and `lib_more.lua` followed by its own body
//! (`publish.lua` needs only `lib.lua`), concatenated at compile time, so each is one
//! self-contained `EVAL` body. Scripts are sent by SHA (`EVALSHA`); when
//! the server does not know a script (first use, restart, failover) it is loaded and the call
//! repeated once.

use std::time::Duration;

use courier_core::clock::ms_ceil;
use courier_core::{QueueConfig, Retention};
use redis::aio::ConnectionLike;
use redis::{Cmd, RedisResult, Value};

/// A script and its SHA1.
pub(crate) struct Lua {
    name: &'static str,
    code: &'static str,
    hash: String,
}

impl Lua {
    fn new(name: &'static str, code: &'static str) -> Self {
        let hash = redis::Script::new(code).get_hash().to_string();
        Lua { name, code, hash }
    }

    /// The script's file name (for errors and logs).
    pub(crate) fn name(&self) -> &'static str {
        self.name
    }

    /// An `EVALSHA` call with these keys; add arguments with [`Cmd::arg`].
    pub(crate) fn call<K: AsRef<str>>(&self, keys: &[K]) -> Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&self.hash).arg(keys.len());
        for k in keys {
            cmd.arg(k.as_ref());
        }
        cmd
    }

    /// Run a call made by [`Lua::call`], loading the script first if the server lacks it.
    /// A call refused before it was sent is tried once more (see [`retry_refused`]).
    pub(crate) async fn run<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        cmd: &Cmd,
    ) -> RedisResult<Value> {
        match self.run_once(conn, cmd).await {
            Err(e) if e.is_connection_refusal() => self.run_once(conn, cmd).await,
            other => other,
        }
    }

    async fn run_once<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        cmd: &Cmd,
    ) -> RedisResult<Value> {
        match cmd.query_async::<Value>(conn).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                redis::cmd("SCRIPT")
                    .arg("LOAD")
                    .arg(self.code)
                    .query_async::<Value>(conn)
                    .await?;
                cmd.query_async::<Value>(conn).await
            }
            other => other,
        }
    }
}

/// Run a plain command, trying once more when the connection was refused.
///
/// Why: the shared `ConnectionManager` hands every caller the outcome of its last reconnect
/// attempt. After Redis was away, that outcome is "connection refused" even once Redis is back:
/// the first call fails with it (and only then starts a new attempt). Without a second try,
/// every caller that backs off on errors (the worker's receive loop doubles its pause per
/// failure) resumes a whole backoff step late; measured in `tests/broker_restart.rs`, workers
/// stalled 1-3 s after each restart. A refusal is raised while connecting, so the command was
/// never sent and running it again cannot apply it twice. While Redis is really away the second
/// try is refused as well, and the call fails (retryable) after one extra connect attempt.
pub(crate) async fn retry_refused<C: ConnectionLike + Send, T: redis::FromRedisValue>(
    conn: &mut C,
    cmd: &Cmd,
) -> RedisResult<T> {
    match cmd.query_async::<T>(conn).await {
        Err(e) if e.is_connection_refusal() => cmd.query_async::<T>(conn).await,
        other => other,
    }
}

macro_rules! with_lib {
    ($file:literal) => {
        concat!(
            include_str!("scripts/lib.lua"),
            include_str!("scripts/lib_more.lua"),
            include_str!($file)
        )
    };
}

/// A script that needs only the first part of the shared prologue (`lib.lua` without
/// `lib_more.lua`): fewer closures made per call.
macro_rules! with_core_lib {
    ($file:literal) => {
        concat!(include_str!("scripts/lib.lua"), include_str!($file))
    };
}

/// Every script of the crate.
pub(crate) struct Scripts {
    pub(crate) publish: Lua,
    pub(crate) claim: Lua,
    pub(crate) settle: Lua,
    pub(crate) extend: Lua,
    pub(crate) stats: Lua,
    pub(crate) dead_read: Lua,
    pub(crate) dead_move: Lua,
    pub(crate) group_claim: Lua,
    pub(crate) group_stats: Lua,
    pub(crate) group_reset: Lua,
    pub(crate) emit: Lua,
    pub(crate) topic_len: Lua,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Scripts {
            publish: Lua::new("publish.lua", with_core_lib!("scripts/publish.lua")),
            claim: Lua::new("claim.lua", with_lib!("scripts/claim.lua")),
            settle: Lua::new("settle.lua", with_lib!("scripts/settle.lua")),
            extend: Lua::new("extend.lua", with_lib!("scripts/extend.lua")),
            stats: Lua::new("stats.lua", with_lib!("scripts/stats.lua")),
            dead_read: Lua::new("dead_read.lua", with_lib!("scripts/dead_read.lua")),
            dead_move: Lua::new("dead_move.lua", with_lib!("scripts/dead_move.lua")),
            group_claim: Lua::new("group_claim.lua", with_lib!("scripts/group_claim.lua")),
            group_stats: Lua::new("group_stats.lua", with_lib!("scripts/group_stats.lua")),
            group_reset: Lua::new("group_reset.lua", with_lib!("scripts/group_reset.lua")),
            emit: Lua::new("emit.lua", include_str!("scripts/emit.lua")),
            topic_len: Lua::new("topic_len.lua", include_str!("scripts/topic_len.lua")),
        }
    }
}

/// Whether a script runs on a queue or on a consumer group of a topic.
#[derive(Clone, Copy)]
pub(crate) enum Mode<'a> {
    Queue,
    Group {
        group: &'a str,
        retention: Retention,
    },
}

/// Append the arguments every lib-based script starts with (`ARGV[1..12]`, see lib.lua).
pub(crate) fn common_args(cmd: &mut Cmd, config: &QueueConfig, mode: Mode<'_>) {
    let r = &config.retry;
    cmd.arg(ms_ceil(config.visibility_timeout))
        .arg(r.max_attempts)
        .arg(ms_f64(r.base))
        .arg(r.factor)
        .arg(ms_f64(r.max_delay))
        .arg(r.jitter)
        .arg(rand::random::<u32>())
        .arg(if config.dead_letter { "1" } else { "0" });
    match mode {
        Mode::Queue => {
            cmd.arg("q").arg("").arg(-1i64).arg(0u64);
        }
        Mode::Group { group, retention } => {
            cmd.arg("g")
                .arg(group)
                .arg(max_len_arg(&retention))
                .arg(retention.max_age.map_or(0, ms_ceil));
        }
    }
}

/// Retention by length as a script argument (-1 = unbounded).
pub(crate) fn max_len_arg(retention: &Retention) -> i64 {
    retention
        .max_len
        .map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX))
}

fn ms_f64(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use courier_core::RetryPolicy;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    /// The Lua backoff (lib.lua `backoff_ms`) and core's `RetryPolicy::delay` agree exactly
    /// with jitter 0, and Lua's jitter stays within core's documented range.
    #[tokio::test]
    async fn lua_backoff_mirrors_core() {
        let url = std::env::var("COURIER_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let Ok(client) = redis::Client::open(url.as_str()) else {
            return;
        };
        let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
            eprintln!("SKIPPED lua_backoff_mirrors_core: Redis unreachable");
            if std::env::var("COURIER_REQUIRE_BACKENDS").as_deref() == Ok("1") {
                panic!("Redis unreachable and COURIER_REQUIRE_BACKENDS=1");
            }
            return;
        };
        let body = concat!(
            include_str!("scripts/lib.lua"),
            include_str!("scripts/lib_more.lua"),
            "local out = {}\n",
            "for a = 1, tonumber(ARGV[A]) do out[a] = backoff_ms(a) end\n",
            "return out\n"
        );
        let lua = Lua::new("backoff_test.lua", body);
        let keys: Vec<String> = (0..13)
            .map(|i| format!("{{courier-test-backoff}}:{i}"))
            .collect();
        let policies = [
            RetryPolicy::exact(10, Duration::from_millis(100), 2.0, Duration::from_secs(1)),
            RetryPolicy::exact(10, Duration::from_millis(50), 1.5, Duration::from_secs(60)),
            RetryPolicy::exact(
                10,
                Duration::from_millis(7),
                3.0,
                Duration::from_millis(5000),
            ),
            RetryPolicy::exact(10, Duration::from_secs(1), 1.0, Duration::from_secs(1)),
            RetryPolicy::exact(10, Duration::from_millis(1), 10.0, Duration::from_secs(300)),
            RetryPolicy::exact(10, Duration::from_millis(33), 1.1, Duration::from_secs(300)),
        ];
        let attempts = 40u32;
        for policy in policies {
            let config = QueueConfig {
                retry: policy,
                ..QueueConfig::default()
            };
            let mut cmd = lua.call(&keys);
            common_args(&mut cmd, &config, Mode::Queue);
            cmd.arg(attempts);
            let got: Vec<u64> = lua
                .run(&mut conn, &cmd)
                .await
                .and_then(|v| Ok(redis::from_redis_value(v)?))
                .expect("script");
            let mut rng = SmallRng::seed_from_u64(1);
            let want: Vec<u64> = (1..=attempts)
                .map(|a| ms_ceil(policy.delay(a, &mut rng)))
                .collect();
            assert_eq!(got, want, "{policy:?}");
        }
        // With jitter: within [d(1-j), d(1+j)] (rounded up to whole ms), and varying.
        let policy = RetryPolicy {
            jitter: 0.25,
            ..RetryPolicy::exact(10, Duration::from_millis(100), 2.0, Duration::from_secs(10))
        };
        let config = QueueConfig {
            retry: policy,
            ..QueueConfig::default()
        };
        let mut seen = std::collections::HashSet::new();
        for _ in 0..20 {
            let mut cmd = lua.call(&keys);
            common_args(&mut cmd, &config, Mode::Queue);
            cmd.arg(6);
            let got: Vec<u64> = lua
                .run(&mut conn, &cmd)
                .await
                .and_then(|v| Ok(redis::from_redis_value(v)?))
                .expect("script");
            for (i, d) in got.iter().enumerate() {
                let (lo, hi) = policy.delay_bounds(i as u32 + 1);
                assert!(
                    *d >= lo.as_millis() as u64 && *d <= ms_ceil(hi),
                    "attempt {}: {d} not in {lo:?}..{hi:?}",
                    i + 1
                );
            }
            seen.insert(got[0]);
        }
        assert!(seen.len() > 3, "jitter should vary: {seen:?}");
    }
}
