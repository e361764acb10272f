//! The Redis lease layout (see `src/scripts/lib.lua`): entries are wire bytes, a claim leases
//! its messages in batches of up to 1000 under one deadline, and an extended lease gets a
//! deadline of its own. These tests pin what the conformance suite cannot see: batch edges,
//! an extended lease outliving its batch, mixed stale and held tokens in one settle, and
//! entries no Courier wrote. Each test works under its own key prefix on the shared server.

mod support;

use std::time::Duration;

use courier_core::{
    ErrorKind, Message, MessageId, Page, Queue, QueueConfig, QueueExt, RetryPolicy, Settle,
};
use courier_redis::RedisBackend;

use support::{T, shared_url as url, within as t};

fn config(visibility: Duration) -> QueueConfig {
    QueueConfig::default()
        .with_visibility_timeout(visibility)
        .with_retry(RetryPolicy::exact(5, Duration::ZERO, 1.0, Duration::ZERO))
}

/// A backend under a fresh prefix, its raw connection, and the prefix; `None` (skipped
/// loudly) when Redis cannot be reached.
async fn open(
    test: &str,
    config: QueueConfig,
) -> Option<(RedisBackend, redis::aio::MultiplexedConnection, Cleanup)> {
    let prefix = format!(
        "courier-test:{test}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    );
    let built = tokio::time::timeout(
        T,
        RedisBackend::builder()
            .url(url())
            .key_prefix(&prefix)
            .default_config(config)
            .build(),
    )
    .await;
    let backend = match built {
        Ok(Ok(b)) => b,
        other => {
            let why = match other {
                Ok(Err(e)) => e.to_string(),
                _ => "timed out".to_string(),
            };
            support::unreachable(test, &why);
            return None;
        }
    };
    let client = redis::Client::open(url()).expect("client");
    let conn = t("raw connection", client.get_multiplexed_async_connection())
        .await
        .expect("raw connection");
    Some((backend, conn, Cleanup(prefix)))
}

/// Deletes the test's keys when dropped.
struct Cleanup(String);

impl Cleanup {
    fn key(&self, queue: &str, suffix: &str) -> String {
        format!("{{{}:q:{queue}}}:v2:{suffix}", self.0)
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let Ok(client) = redis::Client::open(url()) else {
            return;
        };
        let Ok(mut conn) = client.get_connection_with_timeout(T) else {
            return;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{{{}:*", self.0))
            .query(&mut conn)
            .unwrap_or_default();
        for k in keys {
            let _: redis::RedisResult<i64> = redis::cmd("UNLINK").arg(k).query(&mut conn);
        }
    }
}

/// The size of a key (`cmd` is ZCARD or HLEN).
async fn size(raw: &mut redis::aio::MultiplexedConnection, cmd: &str, key: String) -> i64 {
    t(cmd, redis::cmd(cmd).arg(key).query_async(raw))
        .await
        .unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

#[tokio::test]
async fn a_claim_of_2500_is_three_batches_and_every_token_settles() {
    let Some((b, mut raw, c)) = open("batches", config(Duration::from_secs(30))).await else {
        return;
    };
    let q: &dyn Queue = &b;
    let n = 2500;
    let msgs: Vec<Message> = (0..n).map(|i| Message::new("k", format!("{i}"))).collect();
    t("publish", q.publish_batch("big", msgs))
        .await
        .expect("publish");
    let got = t("receive", q.receive("big", n, Duration::ZERO))
        .await
        .expect("receive");
    assert_eq!(got.len(), n, "one claim takes all of them");
    let tokens: std::collections::HashSet<u64> = got.iter().map(|d| d.lease.token).collect();
    assert_eq!(tokens.len(), n, "every delivery has its own token");
    for (i, d) in got.iter().enumerate() {
        assert_eq!(
            d.message.payload,
            format!("{i}").into_bytes(),
            "publish order"
        );
        assert_eq!((d.lease.attempt, d.message.attempt), (1, 1));
    }
    let batches = size(&mut raw, "ZCARD", c.key("big", "deadlines")).await;
    assert_eq!(batches, 3, "1000 + 1000 + 500");

    // Settle the middle batch's messages in an order that crosses the batches.
    let ops: Vec<Settle> = got.iter().rev().map(|d| Settle::Ack(d.lease)).collect();
    let res = t("settle", q.settle("big", ops)).await.expect("settle");
    assert!(res.iter().all(Result::is_ok), "every token was held");
    let st = t("stats", q.stats("big")).await.expect("stats");
    assert_eq!((st.acked, st.stored()), (n as u64, 0));
    // Nothing is left behind: no batch deadline, no batch count, no leased entry.
    for (suffix, cmd) in [
        ("deadlines", "ZCARD"),
        ("batches", "HLEN"),
        ("leased", "HLEN"),
    ] {
        let left = size(&mut raw, cmd, c.key("big", suffix)).await;
        assert_eq!(left, 0, "{suffix} is empty after the last ack");
    }
}

#[tokio::test]
async fn an_extended_lease_outlives_its_batch() {
    let vis = Duration::from_millis(300);
    let Some((b, _raw, _c)) = open("extend", config(vis)).await else {
        return;
    };
    let q: &dyn Queue = &b;
    let ids = courier_core::Published::ids(
        &t(
            "publish",
            q.publish_batch(
                "ext",
                (0..3).map(|i| Message::new("k", format!("{i}"))).collect(),
            ),
        )
        .await
        .expect("publish"),
    );
    let got = t("receive", q.receive("ext", 3, Duration::ZERO))
        .await
        .expect("receive");
    assert_eq!(got.len(), 3, "one batch of three");
    let kept = t(
        "extend",
        q.extend("ext", &got[0].lease, Duration::from_secs(5)),
    )
    .await
    .expect("extend");
    assert_eq!(kept.token, got[0].lease.token, "extend keeps the token");

    // The batch's deadline passes: the two others come back as their second attempt, the
    // extended one does not.
    let mut back = Vec::new();
    while back.len() < 2 {
        let more = t("receive again", q.receive("ext", 3, Duration::from_secs(3)))
            .await
            .expect("receive again");
        assert!(!more.is_empty(), "the expired leases came back");
        back.extend(more);
    }
    let mut back_ids: Vec<MessageId> = back.iter().map(|d| d.message.id).collect();
    back_ids.sort();
    let mut want = vec![ids[1], ids[2]];
    want.sort();
    assert_eq!(
        back_ids, want,
        "only the leases that were not extended ended"
    );
    assert!(back.iter().all(|d| d.lease.attempt == 2));

    // The old leases of the two are stale; the extended one is still held.
    let res = t(
        "settle",
        q.settle(
            "ext",
            vec![
                Settle::Ack(got[1].lease),
                Settle::Ack(kept),
                Settle::Ack(got[2].lease),
            ],
        ),
    )
    .await
    .expect("settle");
    let kinds: Vec<Option<ErrorKind>> = res
        .iter()
        .map(|r| r.as_ref().err().map(|e| e.kind()))
        .collect();
    assert_eq!(
        kinds,
        vec![Some(ErrorKind::LeaseLost), None, Some(ErrorKind::LeaseLost)]
    );
    let ops = back.iter().map(|d| Settle::Ack(d.lease)).collect();
    let res = t("settle new", q.settle("ext", ops)).await.expect("settle");
    assert!(res.iter().all(Result::is_ok));
    let st = t("stats", q.stats("ext")).await.expect("stats");
    assert_eq!((st.acked, st.retried, st.stored()), (3, 2, 0), "{st:?}");
}

#[tokio::test]
async fn stale_and_repeated_tokens_in_one_settle_fail_alone() {
    let Some((b, _raw, _c)) = open("stale", config(Duration::from_secs(30))).await else {
        return;
    };
    let q: &dyn Queue = &b;
    t(
        "publish",
        q.publish_batch("st", (0..4).map(|_| Message::new("k", "")).collect()),
    )
    .await
    .expect("publish");
    let d = t("receive", q.receive("st", 4, Duration::ZERO))
        .await
        .expect("receive");
    assert_eq!(d.len(), 4);
    // A token twice in one batch: the second is a double ack.
    let res = t(
        "settle",
        q.settle(
            "st",
            vec![
                Settle::Ack(d[0].lease),
                Settle::Ack(d[1].lease),
                Settle::Ack(d[0].lease),
            ],
        ),
    )
    .await
    .expect("settle");
    assert!(res[0].is_ok() && res[1].is_ok());
    assert_eq!(
        res[2].as_ref().map_err(|e| e.kind()),
        Err(ErrorKind::LeaseLost)
    );
    // An already settled token among held ones, with a retry: only it fails.
    let res = t(
        "settle",
        q.settle(
            "st",
            vec![
                Settle::Ack(d[2].lease),
                Settle::Ack(d[1].lease),
                Settle::Retry {
                    lease: d[3].lease,
                    delay: Duration::ZERO,
                    error: "try again".into(),
                },
            ],
        ),
    )
    .await
    .expect("settle");
    assert!(res[0].is_ok() && res[2].is_ok());
    assert_eq!(
        res[1].as_ref().map_err(|e| e.kind()),
        Err(ErrorKind::LeaseLost)
    );
    let again = t("receive", q.receive("st", 4, Duration::from_secs(2)))
        .await
        .expect("receive");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].message.id, d[3].message.id);
    assert_eq!(again[0].lease.attempt, 2, "the retry counted the attempt");
    t("ack", q.ack("st", &again[0].lease)).await.expect("ack");
    let st = t("stats", q.stats("st")).await.expect("stats");
    assert_eq!((st.acked, st.retried, st.stored()), (4, 1, 0), "{st:?}");
}

#[tokio::test]
async fn an_entry_no_courier_wrote_is_buried_under_an_id_of_its_own() {
    let Some((b, mut raw, c)) = open("foreign", config(Duration::from_secs(30))).await else {
        return;
    };
    let q: &dyn Queue = &b;
    // Another program pushed bytes straight onto the Normal ready list.
    let _: i64 = t(
        "RPUSH",
        redis::cmd("RPUSH")
            .arg(c.key("fq", "ready:2"))
            .arg(&b"{\"job\":1}"[..])
            .query_async(&mut raw),
    )
    .await
    .expect("RPUSH");
    t("publish", q.publish("fq", Message::new("good", "")))
        .await
        .expect("publish");
    let got = t("receive", q.receive("fq", 10, Duration::from_secs(2)))
        .await
        .expect("receive");
    assert_eq!(got.len(), 1, "only the good message is delivered");
    assert_eq!(got[0].message.kind, "good");
    t("ack", q.ack("fq", &got[0].lease)).await.expect("ack");
    let dead = t("dead letters", q.dead_letters("fq", Page::first(10)))
        .await
        .expect("dead letters");
    assert_eq!(dead.len(), 1);
    // It carries no id: it gets a fresh one, which finds it.
    assert!(!dead[0].message.id.is_nil());
    assert_eq!(dead[0].message.payload.as_ref(), b"{\"job\":1}");
    assert!(dead[0].error.contains("undecodable"), "{}", dead[0].error);
    let found = t("dead letter", q.dead_letter("fq", dead[0].message.id))
        .await
        .expect("dead letter by id");
    assert_eq!(found.message.payload, dead[0].message.payload);
    let st = t("stats", q.stats("fq")).await.expect("stats");
    assert_eq!((st.dead, st.stored()), (1, 1), "{st:?}");
}

#[tokio::test]
async fn a_group_never_regroups_its_events_by_priority() {
    use courier_core::EventBus;
    let Some((b, _raw, _c)) = open("grouporder", config(Duration::from_secs(30))).await else {
        return;
    };
    let bus: &dyn EventBus = &b;
    let low = Message::new("low", "").with_priority(courier_core::Priority::Low);
    let critical = Message::new("critical", "").with_priority(courier_core::Priority::Critical);
    t("emit", bus.emit_batch("go", vec![low, critical]))
        .await
        .expect("emit");
    let got = t("receive", bus.receive("go", "g", 2, Duration::from_secs(2)))
        .await
        .expect("receive");
    let kinds: Vec<&str> = got.iter().map(|d| d.message.kind.as_str()).collect();
    assert_eq!(kinds, ["low", "critical"], "log order, not priority order");
    // Released one after the other, each goes to the very front: critical, then low.
    let ops = got.iter().map(|d| Settle::Release(d.lease)).collect();
    let res = t("release", bus.settle("go", "g", ops))
        .await
        .expect("release");
    assert!(res.iter().all(Result::is_ok));
    let again = t(
        "receive again",
        bus.receive("go", "g", 2, Duration::from_secs(2)),
    )
    .await
    .expect("receive again");
    let kinds: Vec<&str> = again.iter().map(|d| d.message.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["critical", "low"],
        "as the reference model's push_front"
    );
    // The retry path is covered by the conformance case
    // events::order::retried_batch_keeps_emit_order_whatever_the_priority.
}

#[tokio::test]
async fn one_message_published_twice_with_a_delay_is_two_messages() {
    let Some((b, mut raw, c)) = open("twice", config(Duration::from_secs(30))).await else {
        return;
    };
    let q: &dyn Queue = &b;
    // The same message (same id, same bytes) twice in one batch, as a client repeating a
    // publish whose answer it never saw might send it.
    let mut m = Message::new("k", "same").with_delay(Duration::from_millis(100));
    m.id = MessageId::new();
    m.created_at = 1;
    t("publish", q.publish_batch("tw", vec![m.clone(), m]))
        .await
        .expect("publish");
    let delayed = size(&mut raw, "ZCARD", c.key("tw", "delayed")).await;
    assert_eq!(delayed, 2, "both copies are stored");
    let mut got = Vec::new();
    while got.len() < 2 {
        let more = t("receive", q.receive("tw", 10, Duration::from_secs(2)))
            .await
            .expect("receive");
        assert!(!more.is_empty(), "both copies are delivered");
        got.extend(more);
    }
    let ops = got.iter().map(|d| Settle::Ack(d.lease)).collect();
    let res = t("ack", q.settle("tw", ops)).await.expect("ack");
    assert!(res.iter().all(Result::is_ok));
    let st = t("stats", q.stats("tw")).await.expect("stats");
    assert_eq!((st.published, st.acked, st.stored()), (2, 2, 0), "{st:?}");
}

#[tokio::test]
async fn acking_an_extended_lease_leaves_no_deadline_behind() {
    let Some((b, mut raw, c)) = open("extack", config(Duration::from_secs(30))).await else {
        return;
    };
    let q: &dyn Queue = &b;
    t("publish", q.publish("ea", Message::new("k", "")))
        .await
        .expect("publish");
    let d = t("receive", q.receive("ea", 1, Duration::ZERO))
        .await
        .expect("receive");
    assert_eq!(d.len(), 1);
    let kept = t(
        "extend",
        q.extend("ea", &d[0].lease, Duration::from_secs(600)),
    )
    .await
    .expect("extend");
    t("ack", q.ack("ea", &kept)).await.expect("ack");
    let left = size(&mut raw, "ZCARD", c.key("ea", "deadlines")).await;
    assert_eq!(left, 0, "an idle queue has no deadline to wake up for");
}

#[tokio::test]
async fn acks_of_large_entries_check_each_token_too() {
    // Entries of 2 KiB and more are checked by length, not read back (see held_argv).
    let Some((b, _raw, _c)) = open("large", config(Duration::from_secs(30))).await else {
        return;
    };
    let q: &dyn Queue = &b;
    let body = vec![7u8; 8192];
    t(
        "publish",
        q.publish_batch(
            "lg",
            (0..3).map(|_| Message::new("k", body.clone())).collect(),
        ),
    )
    .await
    .expect("publish");
    let d = t("receive", q.receive("lg", 3, Duration::ZERO))
        .await
        .expect("receive");
    assert_eq!(d.len(), 3);
    assert!(
        d.iter()
            .all(|d| d.message.payload.as_ref() == body.as_slice())
    );
    let acks = |ls: &[usize]| ls.iter().map(|&i| Settle::Ack(d[i].lease)).collect();
    let res = t("settle", q.settle("lg", acks(&[0, 1, 0])))
        .await
        .expect("settle");
    let lost: Vec<bool> = res.iter().map(Result::is_err).collect();
    assert_eq!(
        lost,
        [false, false, true],
        "the repeated token is a double ack"
    );
    // A held large entry first (it picks the length check), then a settled one.
    let res = t("settle", q.settle("lg", acks(&[2, 1])))
        .await
        .expect("settle");
    let lost: Vec<bool> = res.iter().map(Result::is_err).collect();
    assert_eq!(lost, [false, true], "the settled token is stale");
    let st = t("stats", q.stats("lg")).await.expect("stats");
    assert_eq!((st.acked, st.stored()), (3, 0), "{st:?}");
}
