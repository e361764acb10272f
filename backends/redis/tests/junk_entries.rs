//! Junk in a queue's storage (Q10): bytes no Courier encoded, written straight into Redis (an
//! `RPUSH` onto a ready list, see `src/keys.rs`) and into SQLite (its `inject_raw` hook), must
//! become the same dead letters on both backends, before and after a requeue: each with an id
//! of its own, one attempt (the one delivery Courier made), and the decode error of the bytes
//! as they were found. The SQLite backend is the reference here: it keeps the id outside the
//! bytes and counts deliveries in a column of its own.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use courier_core::{
    DeadLetter, Message, MessageId, Page, Queue, QueueConfig, QueueExt, Selection, wire,
};
use courier_redis::RedisBackend;
use courier_sqlite::SqliteBackend;

use support::{T, shared_url as url, within as t};

/// Deletes the test's keys when dropped.
struct Cleanup(String);

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

/// A message of this build, encoded, with its id.
fn encoded(kind: &str) -> (MessageId, Vec<u8>) {
    let mut m = Message::new(kind, "a payload of some length");
    m.id = MessageId::new();
    m.created_at = 1_700_000_000_000;
    (m.id, wire::encode(&m).expect("encode").to_vec())
}

/// The junk, in storage order: its bytes, and the id it carries that can be trusted (a
/// version-1 header with an id that is not nil), if any.
fn junk() -> Vec<(&'static str, Vec<u8>, Option<MessageId>)> {
    let (id, valid) = encoded("truncated");
    let truncated = valid[..valid.len() / 2].to_vec();
    let (_, mut wrong_magic) = encoded("magic");
    wrong_magic[0] = 0x7b;
    let (_, mut wrong_version) = encoded("version");
    wrong_version[1] = 2;
    // A well-formed header (magic, version, id), then garbage where the priority, the attempt
    // field and the rest would be: "invalid priority byte 48", and bytes 19..23 read as an
    // attempt count of 825373492.
    let header_id = MessageId::new();
    let mut garbage = vec![wire::MAGIC, wire::VERSION];
    garbage.extend_from_slice(header_id.as_bytes());
    garbage.extend_from_slice(&b"0123456789".repeat(5));
    // The same bytes where an id would be, after a version this build does not read.
    let mut same_id = vec![wire::MAGIC, 9];
    same_id.extend_from_slice(&[0x11; 16]);
    same_id.extend_from_slice(b"xyz");
    // A version-1 header with the nil id: an id no two dead letters may share.
    let mut nil_header = vec![wire::MAGIC, wire::VERSION];
    nil_header.extend_from_slice(&[0; 16]);
    nil_header.extend_from_slice(b"short");
    vec![
        ("empty", Vec::new(), None),
        ("3 bytes", b"abc".to_vec(), None),
        ("16 bytes", vec![0xAB; 16], None),
        ("16 bytes again", vec![0xAB; 16], None),
        ("header then garbage", garbage, Some(header_id)),
        ("truncated message", truncated, Some(id)),
        ("wrong magic", wrong_magic, None),
        ("wrong version", wrong_version, None),
        ("same id bytes", same_id.clone(), None),
        ("same id bytes again", same_id, None),
        ("nil id in a header", nil_header, None),
        ("JSON", br#"{"job":1}"#.to_vec(), None),
    ]
}

/// Receive until the one good message arrives (every junk entry ahead of it is buried on the
/// way), and ack it.
async fn drain(q: &dyn Queue, queue: &str, backend: &str) {
    let end = tokio::time::Instant::now() + T;
    loop {
        let got = t("receive", q.receive(queue, 100, Duration::from_millis(500)))
            .await
            .unwrap_or_else(|e| panic!("{backend}: receive failed on junk: {e}"));
        if let Some(d) = got.first() {
            assert_eq!(
                got.len(),
                1,
                "{backend}: only the good message is delivered"
            );
            assert_eq!(d.message.kind, "good", "{backend}");
            t("ack", q.ack(queue, &d.lease)).await.expect("ack");
            return;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "{backend}: no good message"
        );
    }
}

/// The dead letters of `queue`, checked: as many as there is junk, in storage order, each with
/// the junk's bytes, an id of its own (not nil) that `dead_letter` finds exactly, one attempt.
async fn dead(
    q: &dyn Queue,
    queue: &str,
    backend: &str,
    junk: &[(&str, Vec<u8>, Option<MessageId>)],
) -> Vec<DeadLetter> {
    let dead = t("dead_letters", q.dead_letters(queue, Page::first(100)))
        .await
        .expect("dead letters");
    assert_eq!(
        dead.len(),
        junk.len(),
        "{backend}: one dead letter per junk entry"
    );
    let ids: HashSet<MessageId> = dead.iter().map(|d| d.message.id).collect();
    assert_eq!(
        ids.len(),
        dead.len(),
        "{backend}: every dead letter has an id of its own: {:?}",
        dead.iter().map(|d| d.message.id).collect::<Vec<_>>()
    );
    for (d, (what, bytes, _)) in dead.iter().zip(junk) {
        assert!(!d.message.id.is_nil(), "{backend}, {what}: the nil id");
        assert_eq!(
            d.message.payload,
            Bytes::from(bytes.clone()),
            "{backend}, {what}"
        );
        assert_eq!(d.message.kind, "", "{backend}, {what}");
        assert_eq!(d.attempts, 1, "{backend}, {what}: attempts");
        assert!(
            d.error.starts_with("undecodable message: "),
            "{backend}, {what}: {}",
            d.error
        );
        let found = t("dead_letter", q.dead_letter(queue, d.message.id))
            .await
            .unwrap_or_else(|e| panic!("{backend}, {what}: dead_letter by id: {e}"));
        assert_eq!(
            (
                found.message.id,
                &found.message.payload,
                &found.error,
                found.failed_at
            ),
            (d.message.id, &d.message.payload, &d.error, d.failed_at),
            "{backend}, {what}: dead_letter(q, id) finds exactly this one"
        );
    }
    dead
}

#[tokio::test]
async fn junk_becomes_the_same_dead_letters_on_redis_and_sqlite() {
    compare(true).await;
}

/// The same with every script run as an `EVALSHA` body (servers without Redis Functions).
#[tokio::test]
async fn junk_becomes_the_same_dead_letters_with_evalsha_scripts() {
    compare(false).await;
}

/// Junk into both backends, compared (see the module's rustdoc). `functions`: the way the
/// Redis backend runs its scripts.
async fn compare(functions: bool) {
    let prefix = format!(
        "courier-test:junk-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    );
    let config = QueueConfig::default().with_visibility_timeout(Duration::from_secs(30));
    let built = t(
        "connect",
        RedisBackend::builder()
            .url(url())
            .key_prefix(&prefix)
            .redis_functions(functions)
            .default_config(config)
            .build(),
    )
    .await;
    let redis = match built {
        Ok(b) => b,
        Err(e) => {
            support::unreachable("junk_entries", &e);
            return;
        }
    };
    let _cleanup = Cleanup(prefix.clone());
    let sqlite = SqliteBackend::builder()
        .in_memory()
        .default_config(config)
        .build()
        .await
        .expect("sqlite");
    let queue = "junk";
    let junk = junk();

    // Into storage, behind Courier's back: Redis's Normal ready list (the key layout of
    // src/keys.rs), SQLite's inject_raw (a row with a fresh id and the bytes as its body).
    let client = redis::Client::open(url()).expect("client");
    let mut raw = t("raw connection", client.get_multiplexed_async_connection())
        .await
        .expect("raw connection");
    let ready = format!("{{{prefix}:q:{queue}}}:v2:ready:2");
    let mut sqlite_ids = Vec::new();
    for (_, bytes, _) in &junk {
        let _: i64 = t(
            "RPUSH",
            redis::cmd("RPUSH")
                .arg(&ready)
                .arg(&bytes[..])
                .query_async(&mut raw),
        )
        .await
        .expect("RPUSH");
        sqlite_ids.push(
            t("inject_raw", sqlite.inject_raw(queue, bytes))
                .await
                .expect("inject"),
        );
    }
    let (rq, sq): (&dyn Queue, &dyn Queue) = (&redis, &sqlite);
    let backends = [("redis", rq), ("sqlite", sq)];

    let mut before = Vec::new();
    for (name, q) in backends {
        t("publish", q.publish(queue, Message::new("good", "")))
            .await
            .expect("publish");
        drain(q, queue, name).await;
        before.push(dead(q, queue, name, &junk).await);
    }
    let (r, s) = (&before[0], &before[1]);
    for ((rd, sd), (what, _, carried)) in r.iter().zip(s).zip(&junk) {
        assert_eq!(
            rd.error, sd.error,
            "{what}: the same reason on both backends"
        );
        if let Some(id) = carried {
            assert_eq!(
                rd.message.id, *id,
                "{what}: Redis keeps the id the header carries"
            );
        }
    }
    let sqlite_dead: Vec<MessageId> = s.iter().map(|d| d.message.id).collect();
    assert_eq!(sqlite_dead, sqlite_ids, "SQLite keeps its rows' ids");

    // Requeued and delivered again: the same dead letters (reason, attempts, bytes, ids).
    let mut after = Vec::new();
    for (name, q) in backends {
        let n = t("requeue_dead", q.requeue_dead(queue, Selection::All))
            .await
            .expect("requeue");
        assert_eq!(n as usize, junk.len(), "{name}: requeued");
        t("publish", q.publish(queue, Message::new("good", "")))
            .await
            .expect("publish");
        drain(q, queue, name).await;
        after.push(dead(q, queue, name, &junk).await);
    }
    for (b, (name, _)) in backends.iter().enumerate() {
        for ((old, new), (what, _, _)) in before[b].iter().zip(&after[b]).zip(&junk) {
            assert_eq!(
                (new.message.id, &new.error, new.attempts),
                (old.message.id, &old.error, old.attempts),
                "{name}, {what}: the same dead letter after a requeue"
            );
        }
    }
    for ((rd, sd), (what, _, _)) in after[0].iter().zip(&after[1]).zip(&junk) {
        assert_eq!(
            (&rd.error, rd.attempts),
            (&sd.error, sd.attempts),
            "{what}: the same dead letter on both backends after a requeue"
        );
    }

    // Requeue by id finds exactly one dead letter: the two identical entries stay apart.
    for (b, (name, q)) in backends.into_iter().enumerate() {
        let twin = after[b][3].message.id;
        let n = t(
            "requeue_dead",
            q.requeue_dead(queue, Selection::Ids(vec![twin])),
        )
        .await
        .expect("requeue by id");
        assert_eq!(n, 1, "{name}: requeue by id moves exactly one dead letter");
        let st = t("stats", q.stats(queue)).await.expect("stats");
        assert_eq!(
            (st.dead, st.ready_total()),
            (junk.len() as u64 - 1, 1),
            "{name}: {st:?}"
        );
    }
}

/// Junk whose lease expired before the client buried it (a consumer that died between its
/// claim and the burial) is buried by the scripts: "lease expired", one attempt, and an id of
/// its own although it carries none; a requeue then delivers it to a client, which buries it
/// with its decode error under that same id.
#[tokio::test]
async fn junk_whose_lease_expired_gets_an_id_of_its_own() {
    let prefix = format!(
        "courier-test:junk-expired-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    );
    let built = t(
        "connect",
        RedisBackend::builder()
            .url(url())
            .key_prefix(&prefix)
            .build(),
    )
    .await;
    let redis = match built {
        Ok(b) => b,
        Err(e) => {
            support::unreachable("junk_entries", &e);
            return;
        }
    };
    let _cleanup = Cleanup(prefix.clone());
    let queue = "expired";
    let q: &dyn Queue = &redis;
    let junk: Vec<Vec<u8>> = vec![b"abc".to_vec(), b"abc".to_vec(), {
        let mut nil_header = vec![wire::MAGIC, wire::VERSION];
        nil_header.extend_from_slice(&[0; 16]);
        nil_header
    }];
    // The state a dead consumer leaves: each entry leased under a token (see
    // src/scripts/lib.lua) whose own deadline has passed.
    let client = redis::Client::open(url()).expect("client");
    let mut raw = t("raw connection", client.get_multiplexed_async_connection())
        .await
        .expect("raw connection");
    let key = |suffix: &str| format!("{{{prefix}:q:{queue}}}:v2:{suffix}");
    for (i, bytes) in junk.iter().enumerate() {
        let token = format!("1{:011}000{:03}", 900 + i, 0);
        let _: i64 = t(
            "HSET",
            redis::cmd("HSET")
                .arg(key("leased"))
                .arg(&token)
                .arg(&bytes[..])
                .query_async(&mut raw),
        )
        .await
        .expect("HSET");
        let _: i64 = t(
            "ZADD",
            redis::cmd("ZADD")
                .arg(key("deadlines"))
                .arg(1)
                .arg(&token)
                .query_async(&mut raw),
        )
        .await
        .expect("ZADD");
    }
    let dead = t("dead_letters", q.dead_letters(queue, Page::first(10)))
        .await
        .expect("dead letters");
    assert_eq!(dead.len(), junk.len(), "{dead:?}");
    let ids: HashSet<MessageId> = dead.iter().map(|d| d.message.id).collect();
    assert_eq!(ids.len(), junk.len(), "an id each: {ids:?}");
    for (d, bytes) in dead.iter().zip(&junk) {
        assert!(!d.message.id.is_nil());
        assert_eq!(d.message.payload, Bytes::from(bytes.clone()));
        assert_eq!((d.attempts, d.error.as_str()), (1, "lease expired"));
        let found = t("dead_letter", q.dead_letter(queue, d.message.id))
            .await
            .expect("dead letter by id");
        assert_eq!(found.message.payload, d.message.payload);
    }
    let n = t("requeue_dead", q.requeue_dead(queue, Selection::All))
        .await
        .expect("requeue");
    assert_eq!(n as usize, junk.len());
    t("publish", q.publish(queue, Message::new("good", "")))
        .await
        .expect("publish");
    drain(q, queue, "redis").await;
    let again = t("dead_letters", q.dead_letters(queue, Page::first(10)))
        .await
        .expect("dead letters");
    assert_eq!(again.len(), junk.len());
    for (old, new) in dead.iter().zip(&again) {
        assert_eq!(
            new.message.id, old.message.id,
            "the same id after a requeue"
        );
        assert_eq!(new.message.payload, old.message.payload);
        assert_eq!(new.attempts, 1);
        assert!(
            new.error.starts_with("undecodable message: "),
            "{}",
            new.error
        );
    }
}
