//! What publish, claim and ack cost Redis: round trips and server microseconds per message,
//! from `INFO commandstats` on a private `redis-server` (so no other client's commands are
//! counted), reset before each phase with `CONFIG RESETSTAT`.
//!
//! Run: `cargo test -p courier-redis --test server_cost -- --ignored --nocapture`
//! (the server-side figures do not depend on the client's build profile).

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use courier_core::{Lease, Message, Queue, QueueConfig, Settle};
use courier_redis::RedisBackend;
use tokio::time::timeout;

const QUEUE: &str = "cost";

/// `cmdstat_<name>` → (calls, usec).
async fn commandstats(
    conn: &mut redis::aio::MultiplexedConnection,
) -> BTreeMap<String, (u64, u64)> {
    let info: String = timeout(
        Duration::from_secs(5),
        redis::cmd("INFO").arg("commandstats").query_async(conn),
    )
    .await
    .expect("INFO in time")
    .expect("INFO");
    let mut out = BTreeMap::new();
    for line in info.lines() {
        let Some((name, rest)) = line
            .strip_prefix("cmdstat_")
            .and_then(|l| l.split_once(':'))
        else {
            continue;
        };
        let field = |k: &str| {
            rest.split(',')
                .find_map(|kv| kv.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        out.insert(name.to_string(), (field("calls"), field("usec")));
    }
    out
}

async fn reset(conn: &mut redis::aio::MultiplexedConnection) {
    timeout(
        Duration::from_secs(5),
        redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async::<redis::Value>(conn),
    )
    .await
    .expect("RESETSTAT in time")
    .expect("RESETSTAT");
}

/// Print one phase: top-level commands (round trips) and the commands the scripts ran.
fn report(phase: &str, messages: usize, wall: Duration, stats: &BTreeMap<String, (u64, u64)>) {
    // Commands sent by the client (a script's own redis.call()s are counted too, under their
    // own names, but they are not round trips).
    const TOP: [&str; 6] = [
        "evalsha",
        "script|load",
        "eval",
        "fcall",
        "function|load",
        "blpop",
    ];
    let mut trips = 0;
    let mut usec = 0;
    for name in TOP {
        if let Some((c, u)) = stats.get(name) {
            trips += c;
            usec += u;
        }
    }
    let n = messages as f64;
    println!(
        "{phase:<28} {messages:>6} msgs: {trips:>5} round trips ({:.3}/msg), {usec:>7} us server \
         ({:.2} us/msg), client wall {:.1} us/msg",
        trips as f64 / n,
        usec as f64 / n,
        wall.as_secs_f64() * 1e6 / n
    );
    let inner: Vec<String> = stats
        .iter()
        .filter(|(k, _)| {
            !TOP.contains(&k.as_str()) && !matches!(k.as_str(), "info" | "config|resetstat")
        })
        .map(|(k, (c, u))| format!("{k} {c}x/{u}us"))
        .collect();
    println!("{:<28} inside scripts: {}", "", inner.join(", "));
}

async fn measure(
    b: &RedisBackend,
    admin: &mut redis::aio::MultiplexedConnection,
    total: usize,
    batch: usize,
) {
    let q: &dyn Queue = b;
    let label = format!("batch {batch}");
    // Publish.
    reset(admin).await;
    let t = Instant::now();
    for chunk in 0..total / batch {
        let msgs: Vec<Message> = (0..batch)
            .map(|i| Message::new("job", format!("payload-{chunk}-{i}-0123456789abcdef")))
            .collect();
        timeout(Duration::from_secs(10), q.publish_batch(QUEUE, msgs))
            .await
            .expect("publish in time")
            .expect("publish");
    }
    let wall = t.elapsed();
    report(
        &format!("publish ({label})"),
        total,
        wall,
        &commandstats(admin).await,
    );

    // Claim.
    reset(admin).await;
    let t = Instant::now();
    let mut leases: Vec<Lease> = Vec::with_capacity(total);
    while leases.len() < total {
        let ds = timeout(
            Duration::from_secs(10),
            q.receive(QUEUE, batch, Duration::ZERO),
        )
        .await
        .expect("receive in time")
        .expect("receive");
        assert!(!ds.is_empty(), "claimed {} of {total}", leases.len());
        leases.extend(ds.into_iter().map(|d| d.lease));
    }
    let wall = t.elapsed();
    report(
        &format!("claim ({label})"),
        total,
        wall,
        &commandstats(admin).await,
    );

    // Ack.
    reset(admin).await;
    let t = Instant::now();
    for chunk in leases.chunks(batch) {
        let ops = chunk.iter().map(|l| Settle::Ack(*l)).collect();
        let results = timeout(Duration::from_secs(10), q.settle(QUEUE, ops))
            .await
            .expect("ack in time")
            .expect("ack");
        assert!(results.iter().all(Result::is_ok));
    }
    let wall = t.elapsed();
    report(
        &format!("ack ({label})"),
        total,
        wall,
        &commandstats(admin).await,
    );
    let s = timeout(Duration::from_secs(5), q.stats(QUEUE))
        .await
        .expect("stats in time")
        .expect("stats");
    assert_eq!(s.stored(), 0, "{s:?}");
}

/// Server time of calls that do (almost) nothing, for scale: a `PING`, an empty script, and the
/// shared prologue every queue script runs (`lib.lua`: its functions, seeding, argument parsing)
/// with the 13 keys and 12 common arguments of a queue call.
async fn baselines(conn: &mut redis::aio::MultiplexedConnection) {
    const CALLS: usize = 2_000;
    let empty = redis::Script::new("return 1");
    // The shared part as an EVAL body runs it (see src/scripts.rs).
    let prologue = redis::Script::new(concat!(
        "local EVAL_KEYS, EVAL_ARGV = KEYS, ARGV\n",
        include_str!("../src/scripts/lib.lua"),
        include_str!("../src/scripts/lib_more.lua"),
        "setup(EVAL_KEYS, EVAL_ARGV)\n",
        "return now_ms()"
    ));
    let keys: Vec<String> = (0..13).map(|i| format!("{{cost-baseline}}:{i}")).collect();
    for (name, script) in [
        ("ping", None),
        ("empty script", Some(&empty)),
        ("lib.lua prologue", Some(&prologue)),
    ] {
        if let Some(s) = script {
            let load = s.prepare_invoke();
            timeout(Duration::from_secs(5), load.load_async(conn))
                .await
                .expect("load in time")
                .expect("load");
        }
        reset(conn).await;
        let cmd = match script {
            None => redis::cmd("PING"),
            Some(s) => {
                let mut c = redis::cmd("EVALSHA");
                c.arg(s.get_hash()).arg(keys.len()).arg(&keys);
                // The 12 common arguments of a queue call (see lib.lua), then the script's own.
                c.arg(30_000)
                    .arg(5)
                    .arg(1000.0)
                    .arg(2.0)
                    .arg(60_000.0)
                    .arg(0.0);
                c.arg(7).arg("1").arg("q").arg("").arg(-1).arg(0).arg(0);
                c
            }
        };
        for _ in 0..CALLS {
            timeout(
                Duration::from_secs(5),
                cmd.query_async::<redis::Value>(conn),
            )
            .await
            .expect("call in time")
            .expect("call");
        }
        let stats = commandstats(conn).await;
        let (calls, usec) = stats
            .get(if script.is_none() { "ping" } else { "evalsha" })
            .copied()
            .unwrap_or_default();
        println!(
            "baseline {name:<20} {calls:>5} calls, {:.2} us server per call",
            usec as f64 / calls.max(1) as f64
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check: run with --ignored --nocapture"]
async fn redis_server_cost_per_message() {
    let Some(server) = support::start_or_skip(
        "redis_server_cost_per_message",
        &["--save", "", "--appendonly", "no"],
    ) else {
        return;
    };
    let connect = |functions: bool| {
        timeout(
            Duration::from_secs(10),
            RedisBackend::builder()
                .url(server.url())
                .redis_functions(functions)
                .default_config(
                    QueueConfig::default().with_visibility_timeout(Duration::from_secs(600)),
                )
                .build(),
        )
    };
    let client = redis::Client::open(server.url()).expect("client");
    let mut admin = timeout(
        Duration::from_secs(5),
        client.get_multiplexed_async_connection(),
    )
    .await
    .expect("admin in time")
    .expect("admin");
    let version: String = timeout(
        Duration::from_secs(5),
        redis::cmd("INFO").arg("server").query_async(&mut admin),
    )
    .await
    .expect("INFO in time")
    .expect("INFO");
    let version = version
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("?")
        .to_string();
    println!("redis {version}, private server, appendonly no; payload ~35 bytes");
    baselines(&mut admin).await;
    for functions in [true, false] {
        let b = connect(functions)
            .await
            .expect("connect in time")
            .expect("connect");
        println!(
            "=== scripts run as {} ===",
            if functions {
                "Redis Functions (FCALL)"
            } else {
                "EVALSHA bodies"
            }
        );
        // Warm up: scripts loaded, connections made.
        measure(&b, &mut admin, 1_000, 100).await;
        println!("--- measured ---");
        measure(&b, &mut admin, 20_000, 100).await;
        measure(&b, &mut admin, 2_000, 1).await;
    }
}
