//! How scripts reach the server: as Redis Functions (`FCALL`) where the server has them, and
//! as `EVALSHA` bodies where it does not or may not, switching by itself. Private servers
//! only: each test reads `INFO commandstats` and flushes functions, which must not disturb
//! other tests.

mod support;

use std::time::Duration;

use courier_core::{Message, Queue, QueueExt};
use courier_redis::RedisBackend;
use tokio::time::timeout;

const T: Duration = Duration::from_secs(10);

/// Calls of one command in `INFO commandstats`.
async fn calls(conn: &mut redis::aio::MultiplexedConnection, name: &str) -> u64 {
    let info: String = timeout(T, redis::cmd("INFO").arg("commandstats").query_async(conn))
        .await
        .expect("INFO in time")
        .expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{name}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

async fn admin(url: &str) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(url).expect("client");
    timeout(T, client.get_multiplexed_async_connection())
        .await
        .expect("admin in time")
        .expect("admin")
}

async fn connect(url: &str, functions: bool) -> RedisBackend {
    timeout(
        T,
        RedisBackend::builder()
            .url(url)
            .redis_functions(functions)
            .build(),
    )
    .await
    .expect("connect in time")
    .expect("connect")
}

/// Publish, receive and ack one message; the message must come back intact.
async fn round_trip(b: &RedisBackend, queue: &str) {
    let q: &dyn Queue = b;
    let id = timeout(T, q.publish(queue, Message::new("job", "payload")))
        .await
        .expect("publish in time")
        .expect("publish");
    let ds = timeout(T, q.receive(queue, 10, Duration::from_secs(2)))
        .await
        .expect("receive in time")
        .expect("receive");
    assert_eq!(ds.len(), 1);
    assert_eq!(ds[0].message.id, id);
    assert_eq!(&ds[0].message.payload[..], b"payload");
    timeout(T, q.ack(queue, &ds[0].lease))
        .await
        .expect("ack in time")
        .expect("ack");
    let s = timeout(T, q.stats(queue))
        .await
        .expect("stats in time")
        .expect("stats");
    assert_eq!((s.stored(), s.acked), (0, 1), "{s:?}");
}

#[tokio::test]
async fn scripts_run_as_functions_and_survive_a_function_flush() {
    let Some(server) = support::start_or_skip("scripts_run_as_functions", &["--save", ""]) else {
        return;
    };
    let url = server.url();
    let mut admin = admin(&url).await;
    let b = connect(&url, true).await;
    round_trip(&b, "fn-a").await;
    assert!(calls(&mut admin, "fcall").await >= 4, "FCALL used");
    assert_eq!(calls(&mut admin, "evalsha").await, 0, "no EVALSHA");
    let libs: redis::Value = timeout(
        T,
        redis::cmd("FUNCTION").arg("LIST").query_async(&mut admin),
    )
    .await
    .expect("FUNCTION LIST in time")
    .expect("FUNCTION LIST");
    assert!(format!("{libs:?}").contains("courier_"), "{libs:?}");

    // The server loses the library (FUNCTION FLUSH, or a restart of a server that keeps
    // nothing): the next call loads it again and succeeds.
    let _: () = timeout(
        T,
        redis::cmd("FUNCTION").arg("FLUSH").query_async(&mut admin),
    )
    .await
    .expect("FLUSH in time")
    .expect("FLUSH");
    round_trip(&b, "fn-b").await;
    assert_eq!(calls(&mut admin, "evalsha").await, 0, "still no EVALSHA");
}

#[tokio::test]
async fn scripts_fall_back_to_evalsha_where_functions_are_not_permitted() {
    // The default user may do everything except FUNCTION and FCALL.
    let Some(server) = support::start_or_skip(
        "scripts_fall_back_to_evalsha",
        &[
            "--save",
            "",
            "--user",
            "default",
            "on",
            "nopass",
            "~*",
            "&*",
            "+@all",
            "-function",
            "-fcall",
        ],
    ) else {
        return;
    };
    let url = server.url();
    let mut admin = admin(&url).await;
    let b = connect(&url, true).await;
    round_trip(&b, "fallback-a").await;
    round_trip(&b, "fallback-b").await;
    assert!(calls(&mut admin, "evalsha").await >= 8, "EVALSHA used");
    assert_eq!(calls(&mut admin, "fcall").await, 0, "no FCALL ran");
}

#[tokio::test]
async fn functions_can_be_turned_off() {
    let Some(server) = support::start_or_skip("functions_can_be_turned_off", &["--save", ""])
    else {
        return;
    };
    let url = server.url();
    let mut admin = admin(&url).await;
    let b = connect(&url, false).await;
    round_trip(&b, "off").await;
    assert_eq!(calls(&mut admin, "fcall").await, 0, "no FCALL");
    assert!(calls(&mut admin, "evalsha").await >= 4, "EVALSHA used");
}
