//! EventBus cases, concurrency: `events::concurrency::*`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use courier_core::{EventBusExt, GroupConsumer, Message, MessageId};
use parking_lot::Mutex;

use super::{emit_n, gstats_until, recv_n, stop_worker, topic_len, until};
use crate::{Accounting, Case, Ctx, Failure, Outcome, case, ensure, ensure_eq, within};

pub(super) fn cases() -> Vec<Case> {
    vec![
        case!(
            "events::concurrency::competing_group_consumers_jepsen",
            ["E2", "E4"],
            competing_consumers_jepsen
        ),
        case!(
            "events::concurrency::concurrent_emitters_all_delivered",
            ["E1", "E4"],
            concurrent_emitters
        ),
    ]
}

async fn competing_consumers_jepsen(cx: Ctx) -> Outcome {
    let b = cx.backend.events.clone();
    let t = cx.name("t");
    let g = cx.name("workers");
    let solo = cx.name("solo");
    let n = 1000usize;
    let seen = Arc::new(Mutex::new(Vec::<(usize, MessageId)>::new()));
    let mut handles = Vec::new();
    for w in 0..3usize {
        let s = seen.clone();
        handles.push(
            GroupConsumer::builder(b.clone(), &g)
                .on(&t, move |m: Message| {
                    let s = s.clone();
                    async move {
                        s.lock().push((w, m.id));
                        // Simulated work, so the consumers overlap.
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        Ok(())
                    }
                })
                .concurrency(4)
                .idle_wait(Duration::from_millis(100))
                .start()
                .await?,
        );
    }
    // A second group with a single, sequential consumer sees the same events in emit order.
    let solo_seen = Arc::new(Mutex::new(Vec::<MessageId>::new()));
    let ss = solo_seen.clone();
    let solo_h = GroupConsumer::builder(b.clone(), &solo)
        .on(&t, move |m: Message| {
            let ss = ss.clone();
            async move {
                ss.lock().push(m.id);
                Ok(())
            }
        })
        .concurrency(1)
        .idle_wait(Duration::from_millis(100))
        .start()
        .await?;
    let mut acc = Accounting::default();
    let mut sent = Vec::with_capacity(n);
    for batch in 0..10 {
        for id in emit_n(&*b, &t, &format!("b{batch}-"), n / 10).await? {
            acc.sent(id);
            sent.push(id);
        }
    }
    let limit = Duration::from_secs(30);
    let all_in = until(limit, || {
        let distinct: HashSet<MessageId> = seen.lock().iter().map(|(_, id)| *id).collect();
        distinct.len() >= n && solo_seen.lock().len() >= n
    })
    .await;
    // Let in-flight acks land before stopping.
    let (s, _) = gstats_until(&*b, &t, &g, cx.prompt(), |s| {
        s.lag == 0 && s.queue.in_flight == 0 && s.queue.ready_total() == 0
    })
    .await?;
    for h in handles {
        stop_worker(h).await?;
    }
    stop_worker(solo_h).await?;
    let seen = seen.lock().clone();
    for (_, id) in &seen {
        acc.seen(*id);
    }
    let (lost, unexpected, duplicated) = acc.report("events competing group consumers");
    let per: Vec<usize> = (0..3)
        .map(|w| seen.iter().filter(|(x, _)| *x == w).count())
        .collect();
    println!("per consumer: {per:?}; duplicates (only from expired leases): {duplicated}");
    ensure!(all_in, "not every event was handled within {limit:?}");
    ensure_eq!((lost, unexpected), (0, 0), "(lost, unexpected)");
    ensure_eq!(
        (s.lag, s.queue.in_flight, s.queue.dead),
        (0, 0, 0),
        "(lag, in_flight, dead) of the competing group"
    );
    let solo_seen = solo_seen.lock().clone();
    ensure!(
        solo_seen == sent,
        "the single-consumer group saw {} events, first difference from emit order at {:?}",
        solo_seen.len(),
        solo_seen.iter().zip(&sent).position(|(a, b)| a != b)
    );
    Ok(())
}

async fn concurrent_emitters(cx: Ctx) -> Outcome {
    let b = cx.backend.events.clone();
    let t = cx.name("t");
    let g = cx.name("g");
    let emitters = 4usize;
    let per = 150usize;
    let mut tasks = Vec::new();
    for e in 0..emitters {
        let b = b.clone();
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::with_capacity(per);
            for i in 0..per {
                ids.push(b.emit(&t, Message::new(format!("{e}:{i}"), "x")).await?);
            }
            Ok::<_, courier_core::Error>(ids)
        }));
    }
    let mut acc = Accounting::default();
    for task in tasks {
        let ids = within(Duration::from_secs(30), "emitter task", task)
            .await?
            .map_err(|e| Failure(format!("emitter task failed: {e}")))??;
        for id in ids {
            acc.sent(id);
        }
    }
    ensure_eq!(
        topic_len(&*b, &t).await?,
        (emitters * per) as u64,
        "every emit appended"
    );
    let got = recv_n(&*b, &t, &g, emitters * per, cx.prompt() * 2).await?;
    let mut last: HashMap<usize, usize> = HashMap::new();
    for d in &got {
        acc.seen(d.message.id);
        let (e, i) = d
            .message
            .kind
            .split_once(':')
            .and_then(|(e, i)| Some((e.parse::<usize>().ok()?, i.parse::<usize>().ok()?)))
            .ok_or_else(|| Failure(format!("unexpected kind {:?}", d.message.kind)))?;
        let want = last.get(&e).map_or(0, |l| l + 1);
        ensure_eq!(i, want, "emitter {e}: its events in its emit order");
        last.insert(e, i);
    }
    let (lost, unexpected, duplicated) = acc.report("events concurrent emitters");
    ensure_eq!(
        (lost, unexpected, duplicated),
        (0, 0, 0),
        "(lost, unexpected, duplicated)"
    );
    Ok(())
}
