//! Worker cases, failure: `worker::failure::*`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use courier_core::{HandlerError, HandlerResult, Message, MessageId, RetryPolicy, Worker};

use super::{
    GRACE, Job, LIMIT, Log, SLACK, cfg, dead, log, publish, publish_all, queue, queue_until, stats,
    stop,
};
use crate::{Case, Ctx, Outcome, case, ensure, ensure_eq, plain_config, within};

pub(super) fn cases() -> Vec<Case> {
    vec![
        case!(
            "worker::failure::handler_error_retries_then_dead_letters",
            ["W", "Q5", "Q6"],
            error_retries_then_dead_letters
        ),
        case!(
            "worker::failure::message_max_attempts_override",
            ["W", "Q5"],
            max_attempts_override
        ),
        case!(
            "worker::failure::panic_counts_as_failure",
            ["W", "Q5", "Q6"],
            panic_counts_as_failure
        ),
        case!(
            "worker::failure::panic_before_future_counts_as_failure",
            ["W", "Q5"],
            panic_before_future
        ),
        case!(
            "worker::failure::permanent_error_dead_letters_at_once",
            ["W", "Q6"],
            permanent_error_dead_letters
        ),
        case!(
            "worker::failure::unknown_kind_fails_permanently",
            ["W", "Q6"],
            unknown_kind_fails_permanently
        ),
        case!(
            "worker::failure::retry_after_is_honoured",
            ["W", "Q5"],
            retry_after_is_honoured
        ),
        case!(
            "worker::failure::fallback_handles_unknown_kinds",
            ["W"],
            fallback_handles_unknown_kinds
        ),
        case!(
            "worker::failure::question_mark_picks_the_mode",
            ["W", "Q5"],
            question_mark_picks_the_mode
        ),
    ]
}

async fn error_retries_then_dead_letters(cx: Ctx) -> Outcome {
    let base = Duration::from_millis(100);
    let q = queue(
        &cx,
        "fail",
        cfg(
            RetryPolicy::exact(3, base, 2.0, Duration::from_secs(5)),
            Duration::from_secs(30),
        ),
    )?;
    let calls: Log<(u32, Instant)> = log();
    let c = calls.clone();
    let h = Worker::builder(cx.backend.queue.clone(), &q)
        .handler("fails", move |m: Message| {
            let c = c.clone();
            async move {
                c.lock().push((m.attempt, Instant::now()));
                Err(HandlerError::retry(format!(
                    "boom on attempt {}",
                    m.attempt
                )))
            }
        })
        .start()?;
    let id = publish(&cx, &q, Message::new("fails", "x")).await?;
    queue_until(&cx, &q, base * 3 + cx.prompt(), "dead-lettered", |s| {
        s.dead == 1
    })
    .await?;
    let report = stop(h, GRACE).await?;
    let calls = calls.lock().clone();
    ensure_eq!(
        calls.iter().map(|c| c.0).collect::<Vec<_>>(),
        vec![1, 2, 3],
        "attempts seen by the handler (max_attempts 3 = exactly 3 calls)"
    );
    let gap1 = calls[1].1 - calls[0].1;
    let gap2 = calls[2].1 - calls[1].1;
    ensure!(
        gap1 + SLACK >= base,
        "second attempt {gap1:?} after the first, before the {base:?} backoff"
    );
    ensure!(
        gap2 + SLACK >= base * 2,
        "third attempt {gap2:?} after the second, before the {:?} backoff",
        base * 2
    );
    let dl = dead(&cx, &q).await?;
    ensure_eq!(dl.len(), 1, "dead letters");
    ensure_eq!(dl[0].message.id, id, "dead letter id");
    ensure_eq!(dl[0].attempts, 3, "dead letter attempts");
    ensure_eq!(
        dl[0].error,
        "boom on attempt 3",
        "dead letter keeps the last error"
    );
    ensure!(dl[0].failed_at > 0, "failed_at set");
    let s = stats(&cx, &q).await?;
    ensure_eq!(s.retried, 2, "queue retried counter");
    ensure_eq!(s.dead_lettered, 1, "queue dead_lettered counter");
    ensure_eq!(report.stats.retried, 2, "worker retried");
    ensure_eq!(report.stats.dead, 1, "worker dead");
    ensure_eq!(report.stats.succeeded, 0, "worker succeeded");
    Ok(())
}

async fn max_attempts_override(cx: Ctx) -> Outcome {
    // The queue allows 3 attempts with immediate retries; the messages say otherwise.
    let q = queue(&cx, "override", plain_config())?;
    let calls: Log<(MessageId, u32)> = log();
    let c = calls.clone();
    let h = Worker::builder(cx.backend.queue.clone(), &q)
        .handler("fails", move |m: Message| {
            let c = c.clone();
            async move {
                c.lock().push((m.id, m.attempt));
                Err(HandlerError::retry("still failing"))
            }
        })
        .start()?;
    let once = publish(&cx, &q, Message::new("fails", "").with_max_attempts(1)).await?;
    let five = publish(&cx, &q, Message::new("fails", "").with_max_attempts(5)).await?;
    queue_until(&cx, &q, cx.prompt(), "both dead-lettered", |s| s.dead == 2).await?;
    let report = stop(h, GRACE).await?;
    let calls = calls.lock().clone();
    let of = |id: MessageId| {
        calls
            .iter()
            .filter(|c| c.0 == id)
            .map(|c| c.1)
            .collect::<Vec<_>>()
    };
    ensure_eq!(of(once), vec![1], "max_attempts 1: one call");
    ensure_eq!(of(five), vec![1, 2, 3, 4, 5], "max_attempts 5: five calls");
    let dl = dead(&cx, &q).await?;
    let attempts: HashMap<MessageId, u32> = dl.iter().map(|d| (d.message.id, d.attempts)).collect();
    ensure_eq!(
        attempts.get(&once),
        Some(&1),
        "attempts of the max-1 message"
    );
    ensure_eq!(
        attempts.get(&five),
        Some(&5),
        "attempts of the max-5 message"
    );
    ensure_eq!(report.stats.retried, 4, "worker retried");
    Ok(())
}

async fn panic_counts_as_failure(cx: Ctx) -> Outcome {
    let q = queue(
        &cx,
        "panic",
        cfg(
            RetryPolicy::exact(2, Duration::ZERO, 2.0, Duration::ZERO),
            Duration::from_secs(30),
        ),
    )?;
    let calls: Log<(String, u32)> = log();
    let (c1, c2, c3) = (calls.clone(), calls.clone(), calls.clone());
    let h = Worker::builder(cx.backend.queue.clone(), &q)
        .handler("flaky", move |m: Message| {
            let c = c1.clone();
            async move {
                c.lock().push((m.kind.clone(), m.attempt));
                if m.attempt == 1 {
                    panic!("flaky handler fails its first attempt");
                }
                Ok(())
            }
        })
        .handler("doomed", move |m: Message| {
            let c = c2.clone();
            async move {
                c.lock().push((m.kind.clone(), m.attempt));
                panic!("doomed handler always panics");
            }
        })
        .handler("later", move |m: Message| {
            let c = c3.clone();
            async move {
                c.lock().push((m.kind.clone(), m.attempt));
                Ok(())
            }
        })
        .start()?;
    let flaky = publish(&cx, &q, Message::new("flaky", "")).await?;
    let doomed = publish(&cx, &q, Message::new("doomed", "")).await?;
    queue_until(&cx, &q, cx.prompt(), "flaky acked, doomed dead", |s| {
        s.acked == 1 && s.dead == 1
    })
    .await?;
    // The worker survived the panics: it still handles new work.
    publish(&cx, &q, Message::new("later", "")).await?;
    queue_until(&cx, &q, cx.prompt(), "later message acked", |s| {
        s.acked == 2
    })
    .await?;
    let mid = h.stats();
    let report = stop(h, GRACE).await?;
    let calls = calls.lock().clone();
    let of = |k: &str| {
        calls
            .iter()
            .filter(|c| c.0 == k)
            .map(|c| c.1)
            .collect::<Vec<_>>()
    };
    ensure_eq!(
        of("flaky"),
        vec![1, 2],
        "flaky: panicked once, then succeeded"
    );
    ensure_eq!(of("doomed"), vec![1, 2], "doomed: both attempts used");
    ensure_eq!(of("later"), vec![1], "later message handled once");
    ensure_eq!(mid.panicked, 3, "WorkerStats.panicked");
    ensure_eq!(report.stats.retried, 2, "worker retried");
    ensure_eq!(report.stats.dead, 1, "worker dead");
    ensure_eq!(report.stats.succeeded, 2, "worker succeeded");
    let dl = within(LIMIT, "dead_letter", cx.q().dead_letter(&q, doomed)).await??;
    ensure_eq!(dl.attempts, 2, "dead letter attempts");
    ensure!(
        dl.error.contains("panic") && dl.error.contains("doomed handler always panics"),
        "dead letter error should say it panicked and carry the panic text: {:?}",
        dl.error
    );
    let s = stats(&cx, &q).await?;
    ensure_eq!(s.retried, 2, "queue retried");
    ensure!(
        within(LIMIT, "dead_letter", cx.q().dead_letter(&q, flaky))
            .await?
            .is_err(),
        "the flaky message must not be dead"
    );
    Ok(())
}

fn sync_panicking(m: Message) -> futures::future::Ready<HandlerResult> {
    if m.attempt == 1 {
        panic!("handler panicked before returning its future");
    }
    futures::future::ready(Ok(()))
}

async fn panic_before_future(cx: Ctx) -> Outcome {
    let q = queue(&cx, "syncpanic", plain_config())?;
    let h = Worker::builder(cx.backend.queue.clone(), &q)
        .handler("sync", sync_panicking)
        .start()?;
    publish(&cx, &q, Message::new("sync", "")).await?;
    queue_until(&cx, &q, cx.prompt(), "acked on the second attempt", |s| {
        s.acked == 1
    })
    .await?;
    let report = stop(h, GRACE).await?;
    ensure_eq!(report.stats.panicked, 1, "panicked");
    ensure_eq!(report.stats.retried, 1, "retried");
    ensure_eq!(report.stats.succeeded, 1, "succeeded");
    ensure_eq!(report.stats.in_progress, 0, "in_progress back to 0");
    let s = stats(&cx, &q).await?;
    ensure_eq!(s.retried, 1, "queue retried");
    ensure_eq!(s.stored(), 0, "nothing left: {s:?}");
    Ok(())
}

async fn permanent_error_dead_letters(cx: Ctx) -> Outcome {
    let q = queue(&cx, "perm", plain_config())?;
    let calls = Arc::new(AtomicU64::new(0));
    let c = calls.clone();
    let h = Worker::builder(cx.backend.queue.clone(), &q)
        .handler("bad", move |_m: Message| {
            let c = c.clone();
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                Err(HandlerError::permanent("invalid meeting id"))
            }
        })
        .start()?;
    let id = publish(&cx, &q, Message::new("bad", "")).await?;
    queue_until(&cx, &q, cx.prompt(), "dead-lettered", |s| s.dead == 1).await?;
    let report = stop(h, GRACE).await?;
    ensure_eq!(calls.load(Ordering::SeqCst), 1, "handler calls");
    let dl = within(LIMIT, "dead_letter", cx.q().dead_letter(&q, id)).await??;
    ensure_eq!(dl.attempts, 1, "attempts");
    ensure_eq!(dl.error, "invalid meeting id", "error");
    let s = stats(&cx, &q).await?;
    ensure_eq!(s.retried, 0, "no retry");
    ensure_eq!(s.dead_lettered, 1, "dead_lettered");
    ensure_eq!(report.stats.retried, 0, "worker retried");
    ensure_eq!(report.stats.dead, 1, "worker dead");
    Ok(())
}

async fn unknown_kind_fails_permanently(cx: Ctx) -> Outcome {
    let q = queue(&cx, "unknown", plain_config())?;
    let seen: Log<String> = log();
    let s2 = seen.clone();
    let h = Worker::builder(cx.backend.queue.clone(), &q)
        .handler("known", move |m: Message| {
            let s = s2.clone();
            async move {
                s.lock().push(m.kind);
                Ok(())
            }
        })
        .start()?;
    let mystery = publish(&cx, &q, Message::new("mystery.kind", "")).await?;
    publish(&cx, &q, Message::new("known", "")).await?;
    queue_until(&cx, &q, cx.prompt(), "1 acked, 1 dead", |s| {
        s.acked == 1 && s.dead == 1
    })
    .await?;
    let report = stop(h, GRACE).await?;
    ensure_eq!(
        seen.lock().clone(),
        vec!["known".to_string()],
        "handled kinds"
    );
    let dl = within(LIMIT, "dead_letter", cx.q().dead_letter(&q, mystery)).await??;
    ensure_eq!(dl.attempts, 1, "no retries for an unknown kind");
    ensure!(
        dl.error.contains("mystery.kind"),
        "the error should name the kind: {:?}",
        dl.error
    );
    let s = stats(&cx, &q).await?;
    ensure_eq!(s.retried, 0, "queue retried");
    ensure_eq!(report.stats.dead, 1, "worker dead");
    Ok(())
}

async fn retry_after_is_honoured(cx: Ctx) -> Outcome {
    // The queue would retry at once; the handler asks for 400 ms.
    let q = queue(&cx, "retryafter", plain_config())?;
    let asked = Duration::from_millis(400);
    let calls: Log<(MessageId, u32, Instant)> = log();
    let c = calls.clone();
    let h = Worker::builder(cx.backend.queue.clone(), &q)
        .handler("later", move |m: Message| {
            let c = c.clone();
            async move {
                c.lock().push((m.id, m.attempt, Instant::now()));
                if m.attempt == 1 {
                    Err(HandlerError::retry_after(asked, "come back later"))
                } else {
                    Ok(())
                }
            }
        })
        .start()?;
    let id = publish(&cx, &q, Message::new("later", "")).await?;
    // Still bounded by max_attempts: with one attempt allowed it is dead at once.
    let single = publish(&cx, &q, Message::new("later", "").with_max_attempts(1)).await?;
    queue_until(&cx, &q, asked + cx.prompt(), "acked and dead", |s| {
        s.acked == 1 && s.dead == 1
    })
    .await?;
    let report = stop(h, GRACE).await?;
    let calls = calls.lock().clone();
    let mine: Vec<_> = calls.iter().filter(|c| c.0 == id).collect();
    ensure_eq!(mine.len(), 2, "calls for the retried message");
    ensure_eq!((mine[0].1, mine[1].1), (1, 2), "attempts");
    let gap = mine[1].2 - mine[0].2;
    ensure!(
        gap + SLACK >= asked,
        "second attempt after {gap:?}, before the requested {asked:?}"
    );
    ensure!(
        gap <= asked + cx.prompt(),
        "second attempt after {gap:?}, long after the requested {asked:?}"
    );
    ensure_eq!(
        calls.iter().filter(|c| c.0 == single).count(),
        1,
        "retry_after does not extend max_attempts"
    );
    let dl = within(LIMIT, "dead_letter", cx.q().dead_letter(&q, single)).await??;
    ensure_eq!(dl.error, "come back later", "error");
    ensure_eq!(dl.attempts, 1, "attempts");
    ensure_eq!(report.stats.retried, 1, "worker retried");
    println!("retry_after {asked:?}: second attempt after {gap:?}");
    Ok(())
}

async fn fallback_handles_unknown_kinds(cx: Ctx) -> Outcome {
    let q = queue(&cx, "fallback", plain_config())?;
    let known: Log<String> = log();
    let other: Log<String> = log();
    let (k, o) = (known.clone(), other.clone());
    let h = Worker::builder(cx.backend.queue.clone(), &q)
        .handler("known", move |m: Message| {
            let k = k.clone();
            async move {
                k.lock().push(m.kind);
                Ok(())
            }
        })
        .fallback(courier_core::handler::boxed(move |m: Message| {
            let o = o.clone();
            async move {
                o.lock().push(m.kind);
                Ok(())
            }
        }))
        .start()?;
    publish_all(
        &cx,
        &q,
        vec![
            Message::new("known", ""),
            Message::new("other.one", ""),
            Message::new("other.two", ""),
        ],
    )
    .await?;
    queue_until(&cx, &q, cx.prompt(), "3 acked", |s| s.acked == 3).await?;
    let report = stop(h, GRACE).await?;
    ensure_eq!(
        known.lock().clone(),
        vec!["known".to_string()],
        "bound handler"
    );
    let mut o = other.lock().clone();
    o.sort();
    ensure_eq!(
        o,
        vec!["other.one".to_string(), "other.two".to_string()],
        "fallback"
    );
    ensure_eq!(report.stats.dead, 0, "nothing dead");
    ensure_eq!(stats(&cx, &q).await?.dead, 0, "queue dead");
    Ok(())
}

async fn question_mark_picks_the_mode(cx: Ctx) -> Outcome {
    let q = queue(
        &cx,
        "qmark",
        cfg(
            RetryPolicy::exact(2, Duration::ZERO, 2.0, Duration::ZERO),
            Duration::from_secs(30),
        ),
    )?;
    let calls: Log<String> = log();
    let (c1, c2) = (calls.clone(), calls.clone());
    let h = Worker::builder(cx.backend.queue.clone(), &q)
        .handler("io", move |m: Message| {
            let c = c1.clone();
            async move {
                c.lock().push(m.kind);
                let r: Result<(), std::io::Error> = Err(std::io::Error::other("disk full"));
                r?;
                Ok(())
            }
        })
        .handler("decode", move |m: Message| {
            let c = c2.clone();
            async move {
                c.lock().push(m.kind.clone());
                let _job: Job = m.decode()?;
                Ok(())
            }
        })
        .start()?;
    let io = publish(&cx, &q, Message::new("io", "")).await?;
    let dec = publish(&cx, &q, Message::new("decode", "not json")).await?;
    queue_until(&cx, &q, cx.prompt(), "both dead", |s| s.dead == 2).await?;
    let report = stop(h, GRACE).await?;
    let calls = calls.lock().clone();
    ensure_eq!(
        calls.iter().filter(|k| *k == "io").count(),
        2,
        "an io error via `?` is retried (2 attempts)"
    );
    ensure_eq!(
        calls.iter().filter(|k| *k == "decode").count(),
        1,
        "a decode error via `?` is permanent"
    );
    let d_io = within(LIMIT, "dead_letter", cx.q().dead_letter(&q, io)).await??;
    ensure_eq!(d_io.error, "disk full", "io error text");
    ensure_eq!(d_io.attempts, 2, "io attempts");
    let d_dec = within(LIMIT, "dead_letter", cx.q().dead_letter(&q, dec)).await??;
    ensure_eq!(d_dec.attempts, 1, "decode attempts");
    ensure_eq!(report.stats.retried, 1, "worker retried");
    Ok(())
}
