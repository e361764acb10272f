//! The Lua scripts (one file each under `src/scripts/`) and how they are called.
//!
//! Every queue and group script is `lib.lua` and `lib_more.lua` followed by its own body. They
//! run in one of two ways, chosen per server on first use:
//!
//! - **Redis Functions** (Redis >= 7): all scripts form one library, loaded once with
//!   `FUNCTION LOAD` and called with `FCALL`. The shared part runs once at load; a call runs
//!   only its own function. Measured with `tests/server_cost.rs` (Redis 7.0, 2-core machine),
//!   server time per single-message call, `EVALSHA` → `FCALL`: publish 70 → 44 µs, claim
//!   101 → 64 µs, ack 88 → 54 µs (the shared part alone costs 22-37 µs per `EVALSHA`).
//! - **`EVAL` bodies** (Redis 6.2, or where `FUNCTION` is not allowed): each script is the
//!   shared part followed by its body, sent by SHA (`EVALSHA`) and loaded when the server does
//!   not know it.
//!
//! Both are atomic in the same way (Redis runs a function or script to completion with no other
//! command in between), take every key as a key, and use server time. The library's name
//! carries a hash of its text, so several Courier versions can share a server. When the server
//! lost the library or script (first use, restart, failover, `FUNCTION FLUSH`), it is loaded
//! and the call repeated once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use courier_core::clock::ms_ceil;
use courier_core::{QueueConfig, Retention};
use redis::aio::ConnectionLike;
use redis::{Arg, Cmd, RedisResult, Value};

/// The function library shared by every [`Lua`] of a backend, and which way scripts run.
struct Library {
    /// `#!lua name=…` followed by the shared part and one registered function per script.
    code: String,
    /// False once the server refused `FUNCTION LOAD` or `FCALL` (too old, or not permitted):
    /// from then on every script runs as an `EVAL` body.
    functions: AtomicBool,
}

/// A script: its `EVAL` body and SHA1, and its function name in the library.
pub(crate) struct Lua {
    name: &'static str,
    code: String,
    hash: String,
    function: String,
    library: Arc<Library>,
}

/// A failed `FCALL` that means the server does not have our function, has no functions at all
/// (Redis < 7), or does not let this user call them (ACL).
fn function_missing(e: &redis::RedisError) -> bool {
    let text = e.to_string().to_ascii_lowercase();
    text.contains("function not found")
        || text.contains("unknown command")
        || (text.contains("noperm") && text.contains("fcall"))
}

impl Lua {
    /// The script's file name (for errors and logs).
    pub(crate) fn name(&self) -> &'static str {
        self.name
    }

    /// A call with these keys (`FCALL`, or `EVALSHA` on servers without functions); add
    /// arguments with [`Cmd::arg`].
    pub(crate) fn call<K: AsRef<str>>(&self, keys: &[K]) -> Cmd {
        let mut cmd = if self.library.functions.load(Ordering::Relaxed) {
            let mut c = redis::cmd("FCALL");
            c.arg(&self.function);
            c
        } else {
            let mut c = redis::cmd("EVALSHA");
            c.arg(&self.hash);
            c
        };
        cmd.arg(keys.len());
        for k in keys {
            cmd.arg(k.as_ref());
        }
        cmd
    }

    /// Run a call made by [`Lua::call`], loading the library or script first if the server
    /// lacks it. A call refused before it was sent is tried once more (see [`retry_refused`]).
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
        let is_fcall = cmd
            .args_iter()
            .next()
            .is_some_and(|a| matches!(a, Arg::Simple(b) if b.eq_ignore_ascii_case(b"FCALL")));
        if !is_fcall {
            return self.run_eval(conn, cmd).await;
        }
        match cmd.query_async::<Value>(conn).await {
            Err(e) if function_missing(&e) => {
                let loaded = redis::cmd("FUNCTION")
                    .arg("LOAD")
                    .arg(&self.library.code)
                    .query_async::<Value>(conn)
                    .await;
                match loaded {
                    // Loaded, or another client loaded it in between.
                    Ok(_) => cmd.query_async::<Value>(conn).await,
                    Err(l) if l.to_string().contains("already exists") => {
                        cmd.query_async::<Value>(conn).await
                    }
                    Err(l) if matches!(l.kind(), redis::ErrorKind::Server(_)) => {
                        // No functions here (Redis < 7, or FUNCTION not permitted): EVAL from
                        // now on, for every script of this backend.
                        if self.library.functions.swap(false, Ordering::Relaxed) {
                            if function_missing(&l) {
                                tracing::info!(error = %l, "courier redis: cannot load the function library; running scripts with EVALSHA");
                            } else {
                                // Not a server without functions: a library the server
                                // rejects is a bug of ours, and EVALSHA is slower.
                                tracing::warn!(error = %l, "courier redis: the server rejected the function library; running scripts with EVALSHA");
                            }
                        }
                        self.run_eval(conn, &self.as_eval(cmd)).await
                    }
                    Err(l) => Err(l),
                }
            }
            other => other,
        }
    }

    async fn run_eval<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        cmd: &Cmd,
    ) -> RedisResult<Value> {
        match cmd.query_async::<Value>(conn).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                redis::cmd("SCRIPT")
                    .arg("LOAD")
                    .arg(&self.code)
                    .query_async::<Value>(conn)
                    .await?;
                cmd.query_async::<Value>(conn).await
            }
            other => other,
        }
    }

    /// The `EVALSHA` form of an `FCALL` made by [`Lua::call`]: same keys and arguments.
    fn as_eval(&self, fcall: &Cmd) -> Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&self.hash);
        for a in fcall.args_iter().skip(2) {
            if let Arg::Simple(b) = a {
                cmd.arg(b);
            }
        }
        cmd
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

const LIB: &str = include_str!("scripts/lib.lua");
const LIB_MORE: &str = include_str!("scripts/lib_more.lua");

/// How a script's body gets its keys and arguments.
#[derive(Clone, Copy)]
enum Kind {
    /// Uses the shared part: `setup(KEYS, ARGV)` first.
    Lib,
    /// Stands alone and reads `KEYS` / `ARGV` itself.
    Plain,
}

/// The `EVAL` body of a script: the shared part (for [`Kind::Lib`]), then the body.
fn eval_body(kind: Kind, body: &str) -> String {
    match kind {
        // The globals are captured before lib.lua declares its own KEYS / ARGV upvalues.
        Kind::Lib => format!(
            "local EVAL_KEYS, EVAL_ARGV = KEYS, ARGV\n{LIB}{LIB_MORE}setup(EVAL_KEYS, EVAL_ARGV)\n{body}"
        ),
        Kind::Plain => body.to_string(),
    }
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

/// (name, kind, body) of every script, in [`Scripts`] order.
const SOURCES: [(&str, Kind, &str); 12] = [
    ("publish", Kind::Lib, include_str!("scripts/publish.lua")),
    ("claim", Kind::Lib, include_str!("scripts/claim.lua")),
    ("settle", Kind::Lib, include_str!("scripts/settle.lua")),
    ("extend", Kind::Lib, include_str!("scripts/extend.lua")),
    ("stats", Kind::Lib, include_str!("scripts/stats.lua")),
    (
        "dead_read",
        Kind::Lib,
        include_str!("scripts/dead_read.lua"),
    ),
    (
        "dead_move",
        Kind::Lib,
        include_str!("scripts/dead_move.lua"),
    ),
    (
        "group_claim",
        Kind::Lib,
        include_str!("scripts/group_claim.lua"),
    ),
    (
        "group_stats",
        Kind::Lib,
        include_str!("scripts/group_stats.lua"),
    ),
    (
        "group_reset",
        Kind::Lib,
        include_str!("scripts/group_reset.lua"),
    ),
    ("emit", Kind::Plain, include_str!("scripts/emit.lua")),
    (
        "topic_len",
        Kind::Plain,
        include_str!("scripts/topic_len.lua"),
    ),
];

impl Scripts {
    /// `functions`: start with Redis Functions (switching to `EVAL` by itself where the server
    /// refuses them), or use `EVAL` bodies only.
    pub(crate) fn new(functions: bool) -> Self {
        // The library: the shared part once, then one function per script. Its name and its
        // functions' names carry a hash of the text, so versions never overwrite each other.
        let mut registrations = String::new();
        for (name, kind, body) in SOURCES {
            let wrapped = match kind {
                Kind::Lib => format!("function(keys, argv)\nsetup(keys, argv)\n{body}\nend"),
                Kind::Plain => format!("function(KEYS, ARGV)\n{body}\nend"),
            };
            registrations.push_str(&format!(
                "redis.register_function('courier_@@_{name}', {wrapped})\n"
            ));
        }
        let text = format!("{LIB}{LIB_MORE}{registrations}");
        let version = redis::Script::new(&text).get_hash()[..12].to_string();
        let code = format!(
            "#!lua name=courier_{version}\n{}",
            text.replace("courier_@@_", &format!("courier_{version}_"))
        );
        let library = Arc::new(Library {
            code,
            functions: AtomicBool::new(functions),
        });
        let make = |i: usize| {
            let (name, kind, body) = SOURCES[i];
            let code = eval_body(kind, body);
            Lua {
                name,
                hash: redis::Script::new(&code).get_hash().to_string(),
                code,
                function: format!("courier_{version}_{name}"),
                library: library.clone(),
            }
        };
        Scripts {
            publish: make(0),
            claim: make(1),
            settle: make(2),
            extend: make(3),
            stats: make(4),
            dead_read: make(5),
            dead_move: make(6),
            group_claim: make(7),
            group_stats: make(8),
            group_reset: make(9),
            emit: make(10),
            topic_len: make(11),
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
        let code = eval_body(
            Kind::Lib,
            "local out = {}\nfor a = 1, tonumber(ARGV[A]) do out[a] = backoff_ms(a) end\nreturn out\n",
        );
        let library = Arc::new(Library {
            code: String::new(),
            functions: AtomicBool::new(false),
        });
        let lua = Lua {
            name: "backoff_test.lua",
            hash: redis::Script::new(&code).get_hash().to_string(),
            code,
            function: String::new(),
            library,
        };
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
            let config = QueueConfig::default().with_retry(policy);
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
        let policy =
            RetryPolicy::exact(10, Duration::from_millis(100), 2.0, Duration::from_secs(10))
                .with_jitter(0.25);
        let config = QueueConfig::default().with_retry(policy);
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
