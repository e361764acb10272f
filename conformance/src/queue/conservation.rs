//! Queue cases, Q9 conservation: `queue::conservation::*`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use courier_core::{Message, MessageId, QueueExt, RetryPolicy, Settle};

use super::{LIMIT, config_with, kinds, one, publish, publish_all, queue, settle};
use crate::{
    Accounting, Case, Ctx, Outcome, case, ensure, ensure_eq, plain_config, receive_n, within,
};

pub(super) fn cases() -> Vec<Case> {
    vec![
        case!(
            "queue::conservation::every_message_in_exactly_one_state",
            ["Q9"],
            conservation
        ),
        case!(
            "queue::conservation::competing_consumers_jepsen",
            ["Q9", "Q4"],
            competing_consumers
        ),
        case!(
            "queue::conservation::publishers_and_consumers_jepsen",
            ["Q9", "Q7"],
            publishers_consumers
        ),
        case!(
            "queue::conservation::dropped_receive_loses_nothing",
            ["Q9"],
            dropped_receive
        ),
        case!(
            "queue::conservation::waiting_receive_wakes_on_publish",
            ["Q9"],
            waiting_receive_wakes
        ),
        case!(
            "queue::conservation::same_id_published_twice_is_two_messages",
            ["Q9"],
            same_id_twice
        ),
    ]
}

async fn conservation(cx: Ctx) -> Outcome {
    let q = queue(
        &cx,
        "conserve",
        config_with(
            RetryPolicy::exact(2, Duration::ZERO, 2.0, Duration::ZERO),
            Duration::from_secs(30),
        ),
    )?;
    let mut ms = kinds(20, "c");
    for m in ms.iter_mut().take(4) {
        *m = m.clone().with_delay(Duration::from_secs(60));
    }
    publish_all(&cx, &q, ms).await?;
    let ds = receive_n(cx.q(), &q, 12, LIMIT).await?;
    for (i, d) in ds.iter().enumerate() {
        match i % 4 {
            0 => settle(&cx, &q, Settle::Ack(d.lease)).await?,
            1 => {
                within(LIMIT, "nack", cx.q().nack(&q, d, "e")).await??;
            }
            2 => {
                settle(
                    &cx,
                    &q,
                    Settle::Bury {
                        lease: d.lease,
                        error: "e".into(),
                    },
                )
                .await?
            }
            _ => {}
        }
    }
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    let accounted = s.ready_total() + s.delayed + s.in_flight + s.dead + s.acked;
    ensure_eq!(
        accounted,
        s.published,
        "ready + delayed + in flight + dead + acked = published ({s:?})"
    );
    ensure_eq!(
        (s.acked, s.dead, s.in_flight, s.delayed, s.ready_total()),
        (3, 3, 3, 4, 7),
        "each state"
    );
    Ok(())
}

/// Run `consumers` competing receive loops over `total` messages already published; returns
/// the accounting. Each consumer acks what it gets.
async fn consume_all(
    cx: &Ctx,
    q: &str,
    consumers: usize,
    acct: Arc<parking_lot::Mutex<Accounting>>,
    done: Arc<std::sync::atomic::AtomicUsize>,
    total: usize,
) -> Outcome {
    let mut tasks = Vec::new();
    for _ in 0..consumers {
        let queue = cx.backend.queue.clone();
        let q = q.to_string();
        let acct = acct.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(45);
            while done.load(std::sync::atomic::Ordering::SeqCst) < total
                && Instant::now() < deadline
            {
                let got = queue.receive(&q, 16, Duration::from_millis(100)).await?;
                if got.is_empty() {
                    continue;
                }
                let leases: Vec<Settle> = got.iter().map(|d| Settle::Ack(d.lease)).collect();
                {
                    let mut a = acct.lock();
                    for d in &got {
                        a.seen(d.message.id);
                    }
                }
                let rs = queue.settle(&q, leases).await?;
                for r in rs {
                    r?;
                }
                done.fetch_add(got.len(), std::sync::atomic::Ordering::SeqCst);
            }
            Ok::<(), courier_core::Error>(())
        }));
    }
    for t in tasks {
        within(Duration::from_secs(60), "consumer", t)
            .await?
            .map_err(|e| crate::Failure(format!("consumer task failed: {e}")))??;
    }
    Ok(())
}

async fn competing_consumers(cx: Ctx) -> Outcome {
    let q = queue(&cx, "compete", plain_config())?;
    let total = 2_000;
    let acct = Arc::new(parking_lot::Mutex::new(Accounting::default()));
    for chunk in 0..(total / 100) {
        let ms: Vec<Message> = (0..100)
            .map(|i| Message::new("j", format!("{chunk}-{i}")))
            .collect();
        for id in publish_all(&cx, &q, ms).await? {
            acct.lock().sent(id);
        }
    }
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    consume_all(&cx, &q, 4, acct.clone(), done, total).await?;
    let (lost, unexpected, duplicated) = acct
        .lock()
        .report(&format!("{} competing consumers", cx.factory.name()));
    ensure_eq!((lost, unexpected), (0, 0), "lost, unexpected");
    ensure_eq!(
        duplicated,
        0,
        "a clean ack never duplicates (leases are 30 s)"
    );
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!((s.acked, s.stored()), (total as u64, 0), "all acked");
    Ok(())
}

async fn publishers_consumers(cx: Ctx) -> Outcome {
    let q = queue(&cx, "pubcon", plain_config())?;
    let per = 500;
    let publishers = 3;
    let total = per * publishers;
    let acct = Arc::new(parking_lot::Mutex::new(Accounting::default()));
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut pubs = Vec::new();
    for p in 0..publishers {
        let queue = cx.backend.queue.clone();
        let q = q.clone();
        let acct = acct.clone();
        pubs.push(tokio::spawn(async move {
            let mut i = 0;
            while i < per {
                let n = if i % 3 == 0 { 1 } else { 10.min(per - i) };
                let ms: Vec<Message> = (0..n)
                    .map(|k| Message::new("pc", format!("{p}-{}", i + k)))
                    .collect();
                let ids = queue.publish_batch(&q, ms).await?;
                let mut a = acct.lock();
                for p in ids {
                    a.sent(p.id());
                }
                i += n;
            }
            Ok::<(), courier_core::Error>(())
        }));
    }
    let consumers = consume_all(&cx, &q, 3, acct.clone(), done, total);
    let (c, _) = tokio::join!(consumers, async {
        for t in pubs.drain(..) {
            let _ = t.await;
        }
    });
    c?;
    let (lost, unexpected, duplicated) = acct
        .lock()
        .report(&format!("{} publishers and consumers", cx.factory.name()));
    ensure_eq!(
        (lost, unexpected, duplicated),
        (0, 0, 0),
        "lost, unexpected, duplicated"
    );
    Ok(())
}

async fn dropped_receive(cx: Ctx) -> Outcome {
    let vis = Duration::from_millis(300);
    let q = queue(
        &cx,
        "cancel",
        config_with(
            RetryPolicy::exact(5, Duration::ZERO, 2.0, Duration::ZERO),
            vis,
        ),
    )?;
    // A waiting receive dropped mid-wait, while a publish happens concurrently.
    let queue2 = cx.backend.queue.clone();
    let q2 = q.clone();
    let waiting = tokio::spawn(async move { queue2.receive(&q2, 1, Duration::from_secs(5)).await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let id = publish(&cx, &q, Message::new("m", "")).await?;
    waiting.abort();
    let _ = waiting.await;
    // Whether or not the aborted receive leased it, the message is delivered: at once, or
    // after the lease of the abandoned delivery ends.
    let d = one(&cx, &q, vis + cx.prompt()).await?;
    ensure_eq!(d.message.id, id, "the message survived a dropped receive");
    settle(&cx, &q, Settle::Ack(d.lease)).await?;
    Ok(())
}

async fn waiting_receive_wakes(cx: Ctx) -> Outcome {
    let q = queue(&cx, "wake", plain_config())?;
    let queue2 = cx.backend.queue.clone();
    let q2 = q.clone();
    let t0 = Instant::now();
    let waiting = tokio::spawn(async move { queue2.receive(&q2, 1, Duration::from_secs(8)).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    publish(&cx, &q, Message::new("wake", "")).await?;
    let got = within(LIMIT, "waiting receive", waiting)
        .await?
        .map_err(|e| crate::Failure(e.to_string()))??;
    let took = t0.elapsed();
    ensure_eq!(got.len(), 1, "the waiting receive got the message");
    ensure!(
        took < Duration::from_secs(4),
        "a waiting receive took {took:?}: it should wake on publish, not at the end of its 8 s wait"
    );
    Ok(())
}

/// Courier does not deduplicate by id (`Message::with_id`): two publishes of one id are two
/// messages, each stored and delivered with its own payload and settled on its own lease.
async fn same_id_twice(cx: Ctx) -> Outcome {
    let q = queue(&cx, "dup", plain_config())?;
    let id = MessageId::new();
    let a = publish(&cx, &q, Message::new("dup", "first").with_id(id)).await?;
    let b = publish(&cx, &q, Message::new("dup", "second").with_id(id)).await?;
    ensure_eq!((a, b), (id, id), "publish returns the given id both times");
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!(
        (s.published, s.ready_total()),
        (2, 2),
        "(published, ready): both copies are stored"
    );
    let got = receive_n(cx.q(), &q, 2, cx.prompt()).await?;
    ensure!(
        got.iter().all(|d| d.message.id == id),
        "both deliveries carry the id"
    );
    let mut payloads: Vec<&[u8]> = got.iter().map(|d| &d.message.payload[..]).collect();
    payloads.sort();
    ensure_eq!(
        payloads,
        vec![&b"first"[..], &b"second"[..]],
        "each copy keeps its own payload"
    );
    for d in &got {
        settle(&cx, &q, Settle::Ack(d.lease)).await?;
    }
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!(
        (s.acked, s.stored()),
        (2, 0),
        "(acked, stored) after acking both"
    );
    Ok(())
}
