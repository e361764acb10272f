//! The Lua scripts (one file each under `src/scripts/`) and how they are called.
//!
//! Every queue and group script is `lib.lua`, `expiry.lua` and `lib_more.lua` followed by its
//! own body. They run in one of two ways, chosen per server on first use:
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
//!
//! Retry policy: the scripts never compute a backoff. [`common_args`] passes core's
//! [`RetryPolicy::delay_bounds_table`] (see [`delay_table`]) and `expiry.lua` only checks the
//! attempt limit and draws within the bounds for the attempt.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use courier_core::clock::ms_ceil;
use courier_core::{QueueConfig, Retention, RetryPolicy};
use parking_lot::RwLock;
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
const EXPIRY: &str = include_str!("scripts/expiry.lua");
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
            "local EVAL_KEYS, EVAL_ARGV = KEYS, ARGV\n{LIB}{EXPIRY}{LIB_MORE}setup(EVAL_KEYS, EVAL_ARGV)\n{body}"
        ),
        Kind::Plain => body.to_string(),
    }
}

/// Every script of the crate.
pub(crate) struct Scripts {
    pub(crate) publish: Lua,
    pub(crate) publish_keyed: Lua,
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
    pub(crate) control: Lua,
    pub(crate) reprioritise: Lua,
}

/// (name, kind, body) of every script, in [`Scripts`] order.
const SOURCES: [(&str, Kind, &str); 15] = [
    ("publish", Kind::Lib, include_str!("scripts/publish.lua")),
    (
        "publish_keyed",
        Kind::Lib,
        include_str!("scripts/publish_keyed.lua"),
    ),
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
    ("control", Kind::Lib, include_str!("scripts/control.lua")),
    (
        "reprioritise",
        Kind::Lib,
        include_str!("scripts/reprioritise.lua"),
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
        let text = format!("{LIB}{EXPIRY}{LIB_MORE}{registrations}");
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
            publish_keyed: make(1),
            claim: make(2),
            settle: make(3),
            extend: make(4),
            stats: make(5),
            dead_read: make(6),
            dead_move: make(7),
            group_claim: make(8),
            group_stats: make(9),
            group_reset: make(10),
            emit: make(11),
            topic_len: make(12),
            control: make(13),
            reprioritise: make(14),
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

/// Append the arguments every lib-based script starts with (`ARGV[1..9]`, see lib.lua).
pub(crate) fn common_args(cmd: &mut Cmd, config: &QueueConfig, mode: Mode<'_>) {
    let r = &config.retry;
    cmd.arg(ms_ceil(config.visibility_timeout))
        .arg(r.max_attempts)
        .arg(&*delay_table(r))
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

/// A retry policy's delays as one script argument (`ARGV[3]`, read by expiry.lua): core's
/// [`RetryPolicy::delay_bounds_table`] as `lo1 hi1 lo2 hi2 ...`, each bound in ms as a decimal
/// with up to 6 places, that is its exact nanoseconds (`1500`, `0.000001`, `799.999999`).
///
/// Lua reads each bound into a double (nearest to the decimal), draws within the pair and
/// rounds up with `math.ceil(d - 1e-9)`. With no jitter (`lo == hi`) that is exactly
/// [`ms_ceil`] of core's delay for any delay below 2^33 ms, about 99 days (where a double
/// still tells a whole ms plus 1 ns from the whole ms); beyond that it can be 1 ms low. Every
/// draw, jitter or not, lies within `[floor(lo), ceil(hi)]` ms.
///
/// Size: one pair per attempt until the delay stops changing. The default policy (1 s doubling
/// to 300 s, jitter 0.2) is 10 pairs, 115 bytes. A policy that keeps growing for hundreds of
/// attempts (factor 1.01 from 1 ms to an hour) reaches the cap of 1001 pairs, about 20 KB sent
/// with every script call: the price of Lua not knowing the formula.
///
/// Building it costs one `base_delay` per attempt up to 1001, so each policy's text is made
/// once and kept: in a process that uses more than [`DELAY_TABLES_MAX`] policies the cache
/// starts over.
pub(crate) fn delay_table(policy: &RetryPolicy) -> Arc<str> {
    // max_attempts is not part of the table: key by what is.
    let key = |p: &RetryPolicy| (p.base, p.factor.to_bits(), p.max_delay, p.jitter.to_bits());
    let k = key(policy);
    if let Some((_, text)) = DELAY_TABLES.read().iter().find(|(p, _)| key(p) == k) {
        return text.clone();
    }
    let mut text = String::new();
    for (lo, hi) in policy.delay_bounds_table() {
        for d in [lo, hi] {
            if !text.is_empty() {
                text.push(' ');
            }
            let ns = d.as_nanos();
            let _ = write!(text, "{}", ns / 1_000_000);
            let frac = ns % 1_000_000;
            if frac != 0 {
                let _ = write!(text, ".{:06}", frac);
                text.truncate(text.trim_end_matches('0').len());
            }
        }
    }
    let text: Arc<str> = text.into();
    let mut tables = DELAY_TABLES.write();
    if tables.len() >= DELAY_TABLES_MAX {
        tables.clear();
    }
    tables.push((*policy, text.clone()));
    text
}

/// How many policies' delay tables [`delay_table`] keeps.
const DELAY_TABLES_MAX: usize = 64;

/// The delay tables made so far, with the policy each was made for.
static DELAY_TABLES: RwLock<Vec<(RetryPolicy, Arc<str>)>> = RwLock::new(Vec::new());

#[cfg(test)]
mod tests {
    use super::*;
    use courier_core::{FailureAction, FailureMode};
    use rand::SeedableRng;
    use rand::rngs::SmallRng;
    use std::time::Duration;

    /// Attempts compared per policy and override.
    const ATTEMPTS: u32 = 40;
    /// Per-message max_attempts overrides compared (`None` is 0 in the wire header).
    const OVERRIDES: [Option<u32>; 4] = [None, Some(1), Some(3), Some(50)];

    /// The policies the expiry tests compare with core, all with no jitter: factor 1, 1.1, 1.5,
    /// 2, 3 and 10; max_delay reached at once, early, late and never within 40 attempts;
    /// delays with fractions of a ms and of a µs.
    fn policies() -> Vec<RetryPolicy> {
        let ms = Duration::from_millis;
        vec![
            RetryPolicy::exact(10, ms(100), 2.0, Duration::from_secs(1)),
            RetryPolicy::exact(10, ms(50), 1.5, Duration::from_secs(60)),
            RetryPolicy::exact(10, ms(7), 3.0, ms(5000)),
            RetryPolicy::exact(10, Duration::from_secs(1), 1.0, Duration::from_secs(1)),
            RetryPolicy::exact(10, ms(250), 1.0, Duration::from_secs(300)),
            RetryPolicy::exact(10, ms(1), 10.0, Duration::from_secs(300)),
            RetryPolicy::exact(10, ms(2), 10.0, ms(2)),
            RetryPolicy::exact(10, ms(33), 1.1, Duration::from_secs(300)),
            RetryPolicy::exact(10, ms(33), 1.1, Duration::from_secs(86_400)),
            RetryPolicy::exact(10, Duration::from_micros(1500), 1.7, ms(10_001)),
            RetryPolicy::exact(10, Duration::from_nanos(333), 2.5, ms(3)),
            RetryPolicy::exact(3, Duration::ZERO, 2.0, Duration::ZERO),
            RetryPolicy::default().with_max_attempts(1).with_jitter(0.0),
            RetryPolicy::default().with_jitter(0.0),
        ]
    }

    /// The arguments a script gets for this policy (what [`common_args`] sends: `ARGV`),
    /// with the seed replaced by `seed`.
    fn argv(policy: RetryPolicy, seed: u32) -> Vec<Vec<u8>> {
        let config = QueueConfig::default().with_retry(policy);
        let mut cmd = redis::cmd("FCALL");
        common_args(&mut cmd, &config, Mode::Queue);
        let mut argv: Vec<Vec<u8>> = cmd
            .args_iter()
            .skip(1)
            .map(|a| match a {
                Arg::Simple(b) => b.to_vec(),
                _ => panic!("common_args sends plain arguments only"),
            })
            .collect();
        assert_eq!(argv.len(), 9, "ARGV[1..9], see lib.lua");
        argv[3] = seed.to_string().into_bytes();
        argv
    }

    /// One run of expiry.lua for attempts 1..=n: the delay in ms, or -1 for dead.
    type Run<'a> = dyn FnMut(RetryPolicy, u32, Option<u32>, u32) -> Vec<f64> + 'a;

    /// Compare expiry.lua, run by `run(policy, seed, override, attempts)`, with core:
    /// (a) retry or dead as `RetryPolicy::decide` says, for every policy, override and attempt;
    /// (b) with no jitter, the delay is exactly `ms_ceil` of core's;
    /// (c) with jitter 0.25, every draw over many seeds lies within `delay_bounds` (low
    ///     rounded down, high rounded up, to whole ms), and draws vary.
    fn compare_with_core(run: &mut Run<'_>, seeds: u32) {
        let mut rng = SmallRng::seed_from_u64(1);
        for policy in policies() {
            for over in OVERRIDES {
                let got = run(policy, 7, over, ATTEMPTS);
                assert_eq!(got.len(), ATTEMPTS as usize);
                for (a, got) in (1..=ATTEMPTS).zip(got) {
                    let want = match policy.decide(a, over, FailureMode::Backoff, &mut rng) {
                        FailureAction::Dead => -1.0,
                        FailureAction::Retry(d) => ms_ceil(d) as f64,
                    };
                    assert_eq!(got, want, "{policy:?}, override {over:?}, attempt {a}");
                }
            }
        }
        for policy in policies() {
            let policy = policy.with_jitter(0.25).with_max_attempts(ATTEMPTS + 1);
            let mut seen = vec![std::collections::HashSet::new(); ATTEMPTS as usize];
            for seed in 1..=seeds {
                let got = run(policy, seed, None, ATTEMPTS);
                for (a, got) in (1..=ATTEMPTS).zip(got) {
                    let (lo, hi) = policy.delay_bounds(a);
                    let (lo, hi) = (lo.as_millis() as f64, ms_ceil(hi) as f64);
                    assert!(
                        got.fract() == 0.0 && lo <= got && got <= hi,
                        "{policy:?}, seed {seed}, attempt {a}: {got} not in [{lo}, {hi}]"
                    );
                    seen[a as usize - 1].insert(got as u64);
                }
            }
            for (a, seen) in (1..=ATTEMPTS).zip(seen) {
                // Half the range's width in whole ms, at most 3 distinct values wanted.
                let (lo, hi) = policy.delay_bounds(a);
                let width = ms_ceil(hi) - lo.as_millis() as u64;
                let want = (width as usize / 2).clamp(1, 3);
                assert!(
                    seen.len() >= want,
                    "{policy:?}, attempt {a}: draws should vary, saw {seen:?}"
                );
            }
        }
    }

    /// The golden test: expiry.lua (its real text) in Lua 5.1 (as Redis embeds), with no
    /// Redis, against core's `RetryPolicy` (see [`compare_with_core`]).
    #[test]
    fn expiry_lua_matches_core() -> mlua::Result<()> {
        let lua = mlua::Lua::new();
        // What lib.lua provides: the ARGV upvalue and the policy state, reset as setup() does.
        let chunk = format!(
            "local ARGV, MAX_ATTEMPTS, DELAYS\n{EXPIRY}\n\
             return function(argv, override, n)\n\
               ARGV, MAX_ATTEMPTS, DELAYS = argv, nil, nil\n\
               local out = {{}}\n\
               for a = 1, n do out[a] = expiry_delay(a, override) or -1 end\n\
               return out\n\
             end\n"
        );
        let call: mlua::Function = lua.load(chunk).set_name("expiry.lua").eval()?;
        compare_with_core(
            &mut |policy, seed, over, n| {
                lua.create_sequence_from(
                    argv(policy, seed)
                        .into_iter()
                        .map(|a| lua.create_string(a).expect("lua string")),
                )
                .and_then(|args| call.call((args, over.unwrap_or(0), n)))
                .unwrap_or_else(|e| panic!("expiry.lua failed: {e}"))
            },
            300,
        );
        Ok(())
    }

    /// lib.lua reads version-2 entries (a deduplication key in the extension, Q11) as it reads
    /// version 1: wire bytes with their id, priority and attempts, and their key found from the
    /// extension at the end; a copy with other attempts is the same message. Lua 5.1, no Redis.
    #[test]
    fn lib_lua_reads_keyed_entries() -> mlua::Result<()> {
        use courier_core::{Message, Priority, wire};
        let lua = mlua::Lua::new();
        let chunk = format!(
            "{LIB}\n\
             return function(e, a)\n\
               setup({{}}, {{'1', '1', '0 0', '1', '1', 'q', '', '-1', '0'}})\n\
               local p, n = entry_info(e)\n\
               return is_wire(e), has_id(e), entry_key(e) or false, p, n, with_attempts(e, a)\n\
             end\n"
        );
        let call: mlua::Function = lua.load(chunk).set_name("lib.lua").eval()?;
        let messages = [
            Message::new("k", "p"),
            Message::new("k", "p").with_dedup_key("order-1"),
            Message::new("", "").with_dedup_key("k"),
            Message::new("kind", vec![7u8; 300])
                .with_header("h", "v")
                .with_priority(Priority::Critical)
                .with_max_attempts(4)
                .with_dedup_key("é".repeat(100)),
        ];
        for mut m in messages {
            m.attempt = 3;
            let e = wire::encode(&m).expect("encode");
            let (wire_ok, id_ok, key, p, n, copy): (
                bool,
                bool,
                mlua::Value,
                u8,
                u32,
                mlua::LuaString,
            ) = call.call((lua.create_string(&e[..])?, 7))?;
            assert!(wire_ok && id_ok, "{m:?}");
            let key = match key {
                mlua::Value::String(s) => Some(s.to_str()?.to_string()),
                _ => None,
            };
            assert_eq!(key, m.dedup_key, "the key, read from the extension");
            assert_eq!((p, n), (m.priority as u8, 3));
            let copy = wire::decode(&bytes::Bytes::from(copy.as_bytes().to_vec()))
                .expect("the copy decodes");
            m.attempt = 7;
            assert_eq!(copy, m, "only the attempts changed");
        }
        Ok(())
    }

    /// lib.lua's expiry reader (Q12): `entry_expiry` finds the instant in extension tag 2 of a
    /// version-2 entry, whatever else the extension holds; version 1, wrapped and junk entries,
    /// and a tag 2 that is not 8 bytes, have none. Lua 5.1, no Redis.
    #[test]
    fn lib_lua_reads_expiry() -> mlua::Result<()> {
        use courier_core::{Message, wire};
        let lua = mlua::Lua::new();
        let chunk = format!(
            "{LIB}\n\
             return function(e)\n\
               setup({{}}, {{'1', '1', '0 0', '1', '1', 'q', '', '-1', '0'}})\n\
               return entry_expiry(e) or false, entry_key(e) or false\n\
             end\n"
        );
        let call: mlua::Function = lua.load(chunk).set_name("lib.lua").eval()?;
        let read = |e: &[u8]| -> mlua::Result<(Option<f64>, Option<String>)> {
            let (at, key): (mlua::Value, mlua::Value) = call.call(lua.create_string(e)?)?;
            let at = match at {
                mlua::Value::Number(x) => Some(x),
                mlua::Value::Integer(x) => Some(x as f64),
                _ => None,
            };
            let key = match key {
                mlua::Value::String(s) => Some(s.to_str()?.to_string()),
                _ => None,
            };
            Ok((at, key))
        };
        let now = 1_760_000_000_123u64;
        let messages = [
            Message::new("k", "p"),
            Message::new("k", "p").with_dedup_key("order-1"),
            Message::new("k", "p").with_expires_at(now),
            Message::new("k", "p")
                .with_dedup_key("order-2")
                .with_expires_at(now + 1),
            Message::new("", "").with_expires_at(1),
            Message::new("kind", vec![7u8; 300])
                .with_header("h", "v")
                .with_dedup_key("é".repeat(100))
                .with_expires_at((1 << 53) - 1),
            Message::new("k", "p").with_expires_at(u64::MAX),
        ];
        for m in messages {
            let e = wire::encode(&m).expect("encode");
            let (at, key) = read(&e)?;
            assert_eq!(at, m.expires_at.map(|x| x as f64), "{m:?}");
            assert_eq!(key, m.dedup_key, "{m:?}");
            // Wrapped (0xC7 0xFF, id, bytes), the same message never expires.
            let mut wrapped = vec![0xC7, 0xFF];
            wrapped.extend_from_slice(m.id.as_bytes());
            wrapped.extend_from_slice(&e);
            assert_eq!(read(&wrapped)?, (None, None), "wrapped {m:?}");
        }
        // An unknown tag before tag 2 is skipped; a tag 2 of another length is no expiry.
        let m = Message::new("k", "p").with_expires_at(now);
        let e = wire::encode(&m).expect("encode");
        let body = &e[..e.len() - 2 - 11];
        let with_ext = |fields: &[u8]| {
            let mut out = body.to_vec();
            out.extend_from_slice(fields);
            out.extend_from_slice(&(fields.len() as u16).to_be_bytes());
            out
        };
        let mut fields = vec![9, 0, 3, 1, 2, 3, 2, 0, 8];
        fields.extend_from_slice(&now.to_be_bytes());
        assert_eq!(read(&with_ext(&fields))?, (Some(now as f64), None));
        let mut short = vec![2, 0, 4];
        short.extend_from_slice(&[0, 0, 0, 1]);
        assert_eq!(read(&with_ext(&short))?, (None, None), "4-byte tag 2");
        // An extension whose fields run past its end is read as none.
        assert_eq!(read(&with_ext(&[2, 0, 200, 1]))?, (None, None));
        // Junk: version byte 2 but too short, or not Courier's magic.
        assert_eq!(read(&[0xC7, 2, 0, 11])?, (None, None));
        let mut foreign = e.to_vec();
        foreign[0] = 0;
        assert_eq!(read(&foreign)?, (None, None), "not Courier's magic");
        Ok(())
    }

    /// lib_more.lua's `split_expired`, the claim's filter (Q12): moves the entries whose expiry
    /// `now` reached, in order, and keeps the live ones in order; `now == expires_at` expires.
    #[test]
    fn lib_more_lua_splits_expired_entries() -> mlua::Result<()> {
        use courier_core::{Message, wire};
        let lua = mlua::Lua::new();
        let chunk = format!(
            "{LIB}{EXPIRY}{LIB_MORE}\n\
             return function(entries, now)\n\
               setup({{}}, {{'1', '1', '0 0', '1', '1', 'q', '', '-1', '0'}})\n\
               local gone = {{'earlier'}}\n\
               split_expired(entries, now, gone)\n\
               return entries, gone\n\
             end\n"
        );
        let call: mlua::Function = lua.load(chunk).set_name("lib_more.lua").eval()?;
        let now = 1_760_000_000_000u64;
        let msgs = [
            Message::new("v1", ""),
            Message::new("due", "").with_expires_at(now),
            Message::new("later", "").with_expires_at(now + 1),
            Message::new("keyed", "").with_dedup_key("k"),
            Message::new("past", "")
                .with_dedup_key("k2")
                .with_expires_at(now - 1000),
            Message::new("v1b", ""),
        ];
        let entries: Vec<Vec<u8>> = msgs
            .iter()
            .map(|m| wire::encode(m).expect("encode").to_vec())
            .chain([b"junk".to_vec()])
            .collect();
        let kinds = |list: Vec<mlua::LuaString>| -> Vec<String> {
            list.into_iter()
                .map(|s| {
                    let b = bytes::Bytes::from(s.as_bytes().to_vec());
                    wire::decode(&b)
                        .map_or_else(|_| String::from_utf8_lossy(&b).into_owned(), |m| m.kind)
                })
                .collect()
        };
        let list = lua.create_sequence_from(
            entries
                .iter()
                .map(|e| lua.create_string(e))
                .collect::<mlua::Result<Vec<_>>>()?,
        )?;
        let (live, gone): (Vec<mlua::LuaString>, Vec<mlua::LuaString>) =
            call.call((list, now as f64))?;
        assert_eq!(kinds(live), ["v1", "later", "keyed", "v1b", "junk"]);
        assert_eq!(kinds(gone), ["earlier", "due", "past"]);
        // Nothing expired: the list is left as it is.
        let list = lua.create_sequence_from(
            entries
                .iter()
                .map(|e| lua.create_string(e))
                .collect::<mlua::Result<Vec<_>>>()?,
        )?;
        let (live, gone): (Vec<mlua::LuaString>, Vec<mlua::LuaString>) =
            call.call((list, (now - 1001) as f64))?;
        assert_eq!(live.len(), entries.len());
        assert_eq!(kinds(gone), ["earlier"]);
        Ok(())
    }

    /// The delay table argument is core's table, exactly (nanoseconds), and cached.
    #[test]
    fn delay_table_is_cores_table() {
        let mut fractions = false;
        for policy in policies()
            .into_iter()
            .chain([RetryPolicy::default(), policies()[9].with_jitter(0.3)])
        {
            let text = delay_table(&policy);
            let parsed: Vec<Duration> = text
                .split(' ')
                .map(|x| {
                    let (ms, frac) = x.split_once('.').unwrap_or((x, ""));
                    assert!(frac.len() <= 6 && !frac.ends_with('0'), "{x}");
                    let ms: u64 = ms.parse().expect("ms");
                    let frac: u64 = format!("{frac:0<6}").parse().expect("fraction");
                    Duration::from_millis(ms) + Duration::from_nanos(frac)
                })
                .collect();
            let want: Vec<Duration> = policy
                .delay_bounds_table()
                .into_iter()
                .flat_map(|(lo, hi)| [lo, hi])
                .collect();
            assert_eq!(parsed, want, "{policy:?}: {text}");
            fractions |= text.contains('.');
            assert!(Arc::ptr_eq(&text, &delay_table(&policy)), "cached");
        }
        assert!(fractions, "some bounds are not whole ms");
        assert_eq!(&*delay_table(&RetryPolicy::default()), {
            "800 1200 1600 2400 3200 4800 6400 9600 12800 19200 25600 38400 51200 76800 \
             102400 153600 204800 307200 240000 360000"
        });
    }

    /// The same comparison on a real server, through the library as Redis runs it (lib.lua's
    /// setup, then expiry.lua). Needs Redis; [`expiry_lua_matches_core`] does not.
    #[test]
    fn expiry_on_redis_matches_core() {
        let url = std::env::var("COURIER_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let conn = redis::Client::open(url.as_str())
            .and_then(|c| rt.block_on(c.get_multiplexed_async_connection()));
        let Ok(mut conn) = conn else {
            eprintln!("SKIPPED expiry_on_redis_matches_core: Redis unreachable");
            if std::env::var("COURIER_REQUIRE_BACKENDS").as_deref() == Ok("1") {
                panic!("Redis unreachable and COURIER_REQUIRE_BACKENDS=1");
            }
            return;
        };
        let code = eval_body(
            Kind::Lib,
            "local out = {}\nlocal over = tonumber(ARGV[A])\n\
             for a = 1, tonumber(ARGV[A + 1]) do out[a] = expiry_delay(a, over) or -1 end\n\
             return out\n",
        );
        let library = Arc::new(Library {
            code: String::new(),
            functions: AtomicBool::new(false),
        });
        let lua = Lua {
            name: "expiry_test.lua",
            hash: redis::Script::new(&code).get_hash().to_string(),
            code,
            function: String::new(),
            library,
        };
        let keys: Vec<String> = (0..16)
            .map(|i| format!("{{courier-test-expiry}}:{i}"))
            .collect();
        compare_with_core(
            &mut |policy, seed, over, n| {
                let mut cmd = lua.call(&keys);
                for a in argv(policy, seed) {
                    cmd.arg(a);
                }
                cmd.arg(over.unwrap_or(0)).arg(n);
                let got: Vec<i64> = rt
                    .block_on(lua.run(&mut conn, &cmd))
                    .and_then(|v| Ok(redis::from_redis_value(v)?))
                    .expect("script");
                got.into_iter().map(|d| d as f64).collect()
            },
            40,
        );
    }
}
