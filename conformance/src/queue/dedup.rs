//! Queue cases, Q11 deduplication keys: `queue::dedup::*`.

use std::sync::Arc;
use std::time::Duration;

use courier_core::{
    ErrorKind, Message, MessageId, Published, Queue, QueueExt, RetryPolicy, Selection, Settle,
};

use super::{LIMIT, config_with, one, queue, settle};
use crate::{Case, Ctx, Outcome, case, ensure, ensure_eq, plain_config, receive_n, within};

pub(super) fn cases() -> Vec<Case> {
    vec![
        case!("queue::dedup::live_key_blocks", ["Q11"], live_key_blocks),
        case!(
            "queue::dedup::delayed_and_retrying_messages_hold_their_key",
            ["Q11", "Q3", "Q5"],
            delayed_and_retrying_hold
        ),
        case!(
            "queue::dedup::acked_key_frees_without_a_window",
            ["Q11"],
            acked_frees
        ),
        case!(
            "queue::dedup::window_holds_after_ack",
            ["Q11"],
            window_holds_after_ack
        ),
        case!(
            "queue::dedup::window_expiry_frees",
            ["Q11"],
            window_expiry_frees
        ),
        case!(
            "queue::dedup::race_of_8_publishers_stores_one",
            ["Q11", "Q1"],
            race_of_8
        ),
        case!(
            "queue::dedup::batch_with_internal_duplicates",
            ["Q11", "Q7"],
            batch_internal
        ),
        case!(
            "queue::dedup::dead_letter_frees_key_requeue_retakes_it",
            ["Q11", "Q6"],
            dead_and_requeue
        ),
        case!("queue::dedup::keys_are_per_queue", ["Q11"], per_queue),
        case!(
            "queue::dedup::key_length_limit",
            ["Q11", "Q10"],
            key_length_limit
        ),
    ]
}

async fn outcome(cx: &Ctx, q: &str, m: Message) -> Result<Published, crate::Failure> {
    Ok(within(LIMIT, "publish_unique", cx.q().publish_unique(q, m)).await??)
}

async fn outcomes(cx: &Ctx, q: &str, ms: Vec<Message>) -> Result<Vec<Published>, crate::Failure> {
    Ok(within(LIMIT, "publish_batch", cx.q().publish_batch(q, ms)).await??)
}

fn keyed(key: &str, payload: &str) -> Message {
    Message::new("dd", payload.to_string()).with_dedup_key(key)
}

/// Publish `m` expecting it stored; returns its id.
async fn stored(cx: &Ctx, q: &str, m: Message) -> Result<MessageId, crate::Failure> {
    let id = m.id;
    let got = outcome(cx, q, m).await?;
    ensure_eq!(got, Published::Stored(id), "stored under its own id");
    Ok(id)
}

async fn live_key_blocks(cx: Ctx) -> Outcome {
    let q = queue(&cx, "ddlive", plain_config())?;
    let a = stored(&cx, &q, keyed("order-1", "a")).await?;
    // Ready: a second message with the key stores nothing and names the holder.
    let b = keyed("order-1", "b");
    ensure_eq!(
        outcome(&cx, &q, b).await?,
        Published::Duplicate(a),
        "duplicate of the ready holder"
    );
    // In flight: still held.
    let d = one(&cx, &q, LIMIT).await?;
    ensure_eq!(d.message.id, a, "the holder is delivered");
    ensure_eq!(
        d.message.dedup_key.as_deref(),
        Some("order-1"),
        "the key travels with the message"
    );
    ensure_eq!(
        outcome(&cx, &q, keyed("order-1", "c")).await?,
        Published::Duplicate(a),
        "duplicate of the in-flight holder"
    );
    // `publish` reports the holder's id too.
    let id = within(LIMIT, "publish", cx.q().publish(&q, keyed("order-1", "d"))).await??;
    ensure_eq!(id, a, "publish returns the holder's id");
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!(
        (s.published, s.deduplicated, s.in_flight, s.ready_total()),
        (1, 3, 1, 0),
        "one stored, three suppressed"
    );
    settle(&cx, &q, Settle::Ack(d.lease)).await?;
    crate::expect_nothing(cx.q(), &q, Duration::from_millis(100)).await
}

async fn delayed_and_retrying_hold(cx: Ctx) -> Outcome {
    let q = queue(
        &cx,
        "dddelay",
        config_with(
            RetryPolicy::exact(3, Duration::from_secs(60), 1.0, Duration::from_secs(60)),
            Duration::from_secs(30),
        ),
    )?;
    let a = stored(
        &cx,
        &q,
        keyed("later", "a").with_delay(Duration::from_secs(60)),
    )
    .await?;
    ensure_eq!(
        outcome(&cx, &q, keyed("later", "b")).await?,
        Published::Duplicate(a),
        "a delayed message holds its key"
    );
    let r = stored(&cx, &q, keyed("again", "r")).await?;
    let d = one(&cx, &q, LIMIT).await?;
    ensure_eq!(d.message.id, r, "the ready one");
    let retry = Settle::Retry {
        lease: d.lease,
        delay: Duration::from_secs(60),
        error: "try later".into(),
    };
    settle(&cx, &q, retry).await?;
    ensure_eq!(
        outcome(&cx, &q, keyed("again", "r2")).await?,
        Published::Duplicate(r),
        "a message waiting for its retry holds its key"
    );
    Ok(())
}

async fn acked_frees(cx: Ctx) -> Outcome {
    let q = queue(&cx, "ddack", plain_config())?;
    let a = stored(&cx, &q, keyed("k", "a")).await?;
    let d = one(&cx, &q, LIMIT).await?;
    ensure_eq!(d.message.id, a, "holder");
    settle(&cx, &q, Settle::Ack(d.lease)).await?;
    let b = stored(&cx, &q, keyed("k", "b")).await?;
    let d = one(&cx, &q, LIMIT).await?;
    ensure_eq!(d.message.id, b, "the new holder is delivered");
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!((s.published, s.deduplicated), (2, 0), "counters");
    Ok(())
}

async fn window_holds_after_ack(cx: Ctx) -> Outcome {
    let q = queue(
        &cx,
        "ddwin",
        plain_config().with_dedup_window(Duration::from_secs(600)),
    )?;
    let a = stored(&cx, &q, keyed("k", "a")).await?;
    let d = one(&cx, &q, LIMIT).await?;
    settle(&cx, &q, Settle::Ack(d.lease)).await?;
    ensure_eq!(
        outcome(&cx, &q, keyed("k", "b")).await?,
        Published::Duplicate(a),
        "within the window the key stays taken after the ack"
    );
    // Other keys are not affected.
    stored(&cx, &q, keyed("other", "c")).await?;
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!(
        (s.published, s.acked, s.deduplicated),
        (2, 1, 1),
        "counters"
    );
    Ok(())
}

async fn window_expiry_frees(cx: Ctx) -> Outcome {
    let window = Duration::from_millis(800);
    let q = queue(&cx, "ddexp", plain_config().with_dedup_window(window))?;
    let clock = cx.q().clock();
    let before = clock.now_ms();
    let a = stored(&cx, &q, keyed("k", "a")).await?;
    let after = clock.now_ms();
    let d = one(&cx, &q, LIMIT).await?;
    settle(&cx, &q, Settle::Ack(d.lease)).await?;
    let w = window.as_millis() as u64;
    // Clocks of a server or of other writers may differ from ours by a tick.
    let slack = (cx.tick.as_millis() as u64).max(100);
    let give_up = after + w + cx.prompt().as_millis() as u64;
    loop {
        let start = clock.now_ms();
        let probe = keyed("k", "probe");
        let pid = probe.id;
        match outcome(&cx, &q, probe).await? {
            Published::Duplicate(id) => {
                ensure_eq!(id, a, "the holder");
                ensure!(
                    start <= after + w + slack,
                    "still a duplicate {} ms after the accept, window {w} ms",
                    start.saturating_sub(after)
                );
            }
            Published::Stored(id) => {
                ensure_eq!(id, pid, "stored under its own id");
                let end = clock.now_ms();
                ensure!(
                    end + slack >= before + w,
                    "the key was free after {} ms, before the {w} ms window passed",
                    end.saturating_sub(before)
                );
                break;
            }
        }
        ensure!(clock.now_ms() < give_up, "the window never ended");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Ok(())
}

async fn race_of_8(cx: Ctx) -> Outcome {
    let q = queue(&cx, "ddrace", plain_config())?;
    let other = within(LIMIT, "reopen", cx.factory.reopen(&cx.ns, &cx.backend)).await??;
    other.queue.configure(&q, plain_config())?;
    let handles: [Arc<dyn Queue>; 2] = [cx.backend.queue.clone(), other.queue.clone()];
    let barrier = Arc::new(tokio::sync::Barrier::new(8));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let h = handles[i % 2].clone();
        let q = q.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let m = keyed("race", &format!("{i}"));
            let id = m.id;
            barrier.wait().await;
            (id, h.publish_unique(&q, m).await)
        }));
    }
    let mut outs = Vec::new();
    for t in tasks {
        let (id, r) = within(LIMIT, "racing publish", t)
            .await?
            .map_err(|e| crate::Failure(format!("publisher task: {e}")))?;
        outs.push((id, r?));
    }
    let winners: Vec<MessageId> = outs
        .iter()
        .filter_map(|(id, p)| (*p == Published::Stored(*id)).then_some(*id))
        .collect();
    ensure_eq!(winners.len(), 1, "exactly one stored: {outs:?}");
    let w = winners[0];
    for (id, p) in &outs {
        if *id != w {
            ensure_eq!(*p, Published::Duplicate(w), "the others name the winner");
        }
    }
    let got = receive_n(cx.q(), &q, 1, LIMIT).await?;
    ensure_eq!(got[0].message.id, w, "the winner");
    crate::expect_nothing(cx.q(), &q, Duration::from_millis(200)).await?;
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!((s.published, s.deduplicated), (1, 7), "counters");
    Ok(())
}

async fn batch_internal(cx: Ctx) -> Outcome {
    let q = queue(&cx, "ddbatch", plain_config())?;
    let ms = vec![
        keyed("k1", "a"),
        keyed("k2", "b"),
        keyed("k1", "c"),
        Message::new("dd", "d"),
        keyed("k2", "e"),
    ];
    let ids: Vec<MessageId> = ms.iter().map(|m| m.id).collect();
    let got = outcomes(&cx, &q, ms).await?;
    ensure_eq!(
        got,
        vec![
            Published::Stored(ids[0]),
            Published::Stored(ids[1]),
            Published::Duplicate(ids[0]),
            Published::Stored(ids[3]),
            Published::Duplicate(ids[1]),
        ],
        "duplicates inside one batch"
    );
    let ms = vec![keyed("k1", "f"), keyed("k3", "g"), keyed("k3", "h")];
    let more: Vec<MessageId> = ms.iter().map(|m| m.id).collect();
    let got = outcomes(&cx, &q, ms).await?;
    ensure_eq!(
        got,
        vec![
            Published::Duplicate(ids[0]),
            Published::Stored(more[1]),
            Published::Duplicate(more[1]),
        ],
        "against stored messages and inside the batch"
    );
    let ds = receive_n(cx.q(), &q, 4, LIMIT).await?;
    crate::expect_nothing(cx.q(), &q, Duration::from_millis(200)).await?;
    ensure_eq!(
        ds.iter().map(|d| d.message.id).collect::<Vec<_>>(),
        vec![ids[0], ids[1], ids[3], more[1]],
        "only the stored ones, in batch order"
    );
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!((s.published, s.deduplicated), (4, 4), "counters");
    Ok(())
}

async fn dead_and_requeue(cx: Ctx) -> Outcome {
    let q = queue(&cx, "dddead", plain_config())?;
    let a = stored(&cx, &q, keyed("k", "a")).await?;
    let d = one(&cx, &q, LIMIT).await?;
    let bury = Settle::Bury {
        lease: d.lease,
        error: "broken".into(),
    };
    settle(&cx, &q, bury).await?;
    let dl = within(LIMIT, "dead_letter", cx.q().dead_letter(&q, a)).await??;
    ensure_eq!(
        dl.message.dedup_key.as_deref(),
        Some("k"),
        "the dead letter keeps its key"
    );
    // A dead message does not hold its key.
    let b = stored(&cx, &q, keyed("k", "b")).await?;
    let d = one(&cx, &q, LIMIT).await?;
    ensure_eq!(d.message.id, b, "the new one");
    // Requeued while b holds the key: requeued anyway, without taking the key.
    let n = within(
        LIMIT,
        "requeue_dead",
        cx.q().requeue_dead(&q, Selection::Ids(vec![a])),
    )
    .await??;
    ensure_eq!(n, 1, "requeued");
    ensure_eq!(
        outcome(&cx, &q, keyed("k", "c")).await?,
        Published::Duplicate(b),
        "b still holds the key"
    );
    let r = one(&cx, &q, LIMIT).await?;
    ensure_eq!(r.message.id, a, "the requeued one is delivered");
    ensure_eq!(r.message.dedup_key.as_deref(), Some("k"), "with its key");
    settle(&cx, &q, Settle::Ack(d.lease)).await?;
    // b acked: nothing holds the key (a is live, but was requeued without it).
    let e = stored(&cx, &q, keyed("k", "e")).await?;
    // a dies again (e's hold is untouched); once e is acked, nothing holds the key.
    let bury = Settle::Bury {
        lease: r.lease,
        error: "broken again".into(),
    };
    settle(&cx, &q, bury).await?;
    let de = one(&cx, &q, LIMIT).await?;
    ensure_eq!(de.message.id, e, "e");
    settle(&cx, &q, Settle::Ack(de.lease)).await?;
    // Now nobody holds "k": a requeued takes it again.
    let n = within(
        LIMIT,
        "requeue_dead",
        cx.q().requeue_dead(&q, Selection::All),
    )
    .await??;
    ensure_eq!(n, 1, "requeued again");
    ensure_eq!(
        outcome(&cx, &q, keyed("k", "f")).await?,
        Published::Duplicate(a),
        "the requeued message holds its key again"
    );
    Ok(())
}

async fn per_queue(cx: Ctx) -> Outcome {
    let q1 = queue(&cx, "ddq1", plain_config())?;
    let q2 = queue(&cx, "ddq2", plain_config())?;
    stored(&cx, &q1, keyed("same", "a")).await?;
    stored(&cx, &q2, keyed("same", "b")).await?;
    Ok(())
}

async fn key_length_limit(cx: Ctx) -> Outcome {
    let q = queue(&cx, "ddlen", plain_config())?;
    let longest = "k".repeat(courier_core::MAX_DEDUP_KEY_LEN);
    stored(&cx, &q, keyed(&longest, "ok")).await?;
    // Multi-byte characters count in bytes.
    stored(&cx, &q, keyed(&"é".repeat(100), "ok")).await?;
    for (what, key) in [
        ("too long", "k".repeat(courier_core::MAX_DEDUP_KEY_LEN + 1)),
        ("multi-byte too long", "é".repeat(101)),
        ("empty", String::new()),
        ("control character", "a\nb".to_string()),
    ] {
        let batch = vec![Message::new("dd", "first"), keyed(&key, "bad")];
        match within(LIMIT, "publish_batch", cx.q().publish_batch(&q, batch)).await? {
            Ok(out) => {
                return Err(crate::Failure(format!(
                    "a {what} key was accepted: {out:?}"
                )));
            }
            Err(e) => ensure_eq!(e.kind(), ErrorKind::InvalidInput, "{what}: {e}"),
        }
    }
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!(
        (s.published, s.ready_total()),
        (2, 2),
        "nothing of a batch with a bad key is stored"
    );
    Ok(())
}
