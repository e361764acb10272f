//! PubSub cases, P8 Handler failures: `pubsub::handler::*`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use courier_core::{HandlerError, Message, RetryPolicy, Subscriber, SubscriberHandle};
use parking_lot::Mutex;

use super::{QUIET, publish, stop, subscriber_until};
use crate::{Case, Ctx, Failure, Outcome, case, ensure, ensure_eq, within};

pub(super) fn cases() -> Vec<Case> {
    vec![
        case!(
            "pubsub::handler::retried_then_dead_letter",
            ["P8"],
            handler_retried_then_dead
        ),
        case!(
            "pubsub::handler::hung_handler_times_out",
            ["P8", "W"],
            handler_times_out
        ),
        case!(
            "pubsub::handler::success_on_retry_leaves_no_dead_letter",
            ["P8"],
            handler_success_on_retry
        ),
        case!(
            "pubsub::handler::permanent_error_dead_at_once",
            ["P8"],
            handler_permanent
        ),
        case!(
            "pubsub::handler::explicit_retry_delay_honoured",
            ["P8"],
            handler_retry_after
        ),
        case!(
            "pubsub::handler::panic_counts_as_failed_attempt",
            ["P8"],
            handler_panic
        ),
    ]
}

/// What a handler saw: (kind, attempt, when).
type Calls = Arc<Mutex<Vec<(String, u32, Instant)>>>;

async fn start_subscriber<F>(
    cx: &Ctx,
    ch: &str,
    retry: RetryPolicy,
    fail: F,
) -> Result<(SubscriberHandle, Calls), Failure>
where
    F: Fn(&Message) -> Option<HandlerError> + Send + Sync + 'static,
{
    let calls: Calls = Arc::new(Mutex::new(Vec::new()));
    let c = calls.clone();
    let fail = Arc::new(fail);
    let h = Subscriber::builder(cx.backend.pubsub.clone(), ch)
        .retry(retry)
        .handler(move |m: Message| {
            let c = c.clone();
            let fail = fail.clone();
            async move {
                c.lock().push((m.kind.clone(), m.attempt, Instant::now()));
                match fail(&m) {
                    Some(e) => Err(e),
                    None => Ok(()),
                }
            }
        })
        .start();
    let h = within(cx.prompt() + Duration::from_secs(5), "subscriber start", h).await??;
    Ok((h, calls))
}

async fn dead_letters_until(
    h: &SubscriberHandle,
    n: usize,
    limit: Duration,
) -> Result<Vec<courier_core::DeadLetter>, Failure> {
    let deadline = Instant::now() + limit;
    loop {
        let dl = h.dead_letters();
        if dl.len() >= n {
            return Ok(dl);
        }
        if Instant::now() >= deadline {
            return Err(Failure(format!(
                "{} of {n} dead letters within {limit:?}; stats {:?}",
                dl.len(),
                h.stats()
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A subscriber's `handler_timeout` cancels a handler that never returns: each run is a failed
/// attempt, retried in-process, then a dead letter with the timeout reason; a message's own
/// limit wins.
async fn handler_times_out(cx: Ctx) -> Outcome {
    let ch = cx.name("hangs");
    let limit = Duration::from_millis(200);
    let h = Subscriber::builder(cx.backend.pubsub.clone(), &ch)
        .retry(RetryPolicy::exact(2, Duration::ZERO, 1.0, Duration::ZERO))
        .handler_timeout(limit)
        .handler(|m: Message| async move {
            if m.kind == "hang" {
                std::future::pending::<()>().await;
            }
            Ok(())
        })
        .start();
    let h = within(cx.prompt() + Duration::from_secs(5), "subscriber start", h).await??;
    publish(&cx, &ch, Message::new("hang", "")).await?;
    publish(
        &cx,
        &ch,
        Message::new("hang", "").with_handler_timeout(Duration::from_millis(100)),
    )
    .await?;
    publish(&cx, &ch, Message::new("ok", "")).await?;
    let dl = dead_letters_until(&h, 2, limit * 4 + cx.prompt()).await?;
    ensure_eq!(
        dl.iter()
            .map(|d| (d.attempts, d.error.as_str()))
            .collect::<Vec<_>>(),
        vec![
            (2, "handler timed out after 200ms"),
            (2, "handler timed out after 100ms")
        ],
        "dead letters (attempts, reason)"
    );
    ensure!(
        subscriber_until(&h, cx.prompt(), |s| s.handled == 1).await,
        "the ok message was not handled: {:?}",
        h.stats()
    );
    let st = h.stats();
    ensure_eq!((st.timed_out, st.dead), (4, 2), "(timed_out, dead)");
    stop(h).await?;
    Ok(())
}

async fn handler_retried_then_dead(cx: Ctx) -> Outcome {
    let ch = cx.name("fails");
    let base = Duration::from_millis(60);
    let retry = RetryPolicy::exact(3, base, 2.0, Duration::from_secs(1));
    let (h, calls) = start_subscriber(&cx, &ch, retry, |m| {
        Some(HandlerError::retry(format!(
            "boom on attempt {}",
            m.attempt
        )))
    })
    .await?;
    let m = Message::new("bad", "payload");
    let id = m.id;
    publish(&cx, &ch, m).await?;
    let dl = dead_letters_until(&h, 1, base * 3 + cx.prompt()).await?;
    // No fourth attempt afterwards.
    tokio::time::sleep(QUIET).await;
    let seen = calls.lock().clone();
    let attempts: Vec<u32> = seen.iter().map(|c| c.1).collect();
    ensure_eq!(
        attempts,
        vec![1, 2, 3],
        "attempts seen by the handler (max_attempts 3 counts the first)"
    );
    let tol = Duration::from_millis(5);
    let gap1 = seen[1].2 - seen[0].2;
    let gap2 = seen[2].2 - seen[1].2;
    ensure!(
        gap1 + tol >= base,
        "second attempt {gap1:?} after the first, before the backoff {base:?}"
    );
    ensure!(
        gap2 + tol >= base * 2,
        "third attempt {gap2:?} after the second, before the backoff {:?}",
        base * 2
    );
    ensure_eq!(dl.len(), 1, "one dead letter");
    let d = &dl[0];
    ensure_eq!(d.message.id, id, "dead letter id");
    ensure_eq!(d.attempts, 3, "dead letter attempts");
    ensure_eq!(d.message.attempt, 3, "dead letter message attempt");
    ensure_eq!(
        d.error,
        "boom on attempt 3",
        "dead letter keeps the last error"
    );
    ensure!(d.failed_at > 0, "failed_at set");
    let st = h.stats();
    ensure_eq!(
        (st.received, st.handled, st.retried, st.dead),
        (1, 0, 2, 1),
        "subscriber stats (received, handled, retried, dead)"
    );
    stop(h).await
}

async fn handler_success_on_retry(cx: Ctx) -> Outcome {
    let ch = cx.name("flaky");
    let retry = RetryPolicy::exact(3, Duration::from_millis(20), 2.0, Duration::from_secs(1));
    let (h, calls) = start_subscriber(&cx, &ch, retry, |m| {
        (m.attempt == 1).then(|| HandlerError::retry("first try fails"))
    })
    .await?;
    publish(&cx, &ch, Message::new("flaky", "x")).await?;
    ensure!(
        subscriber_until(&h, cx.prompt(), |s| s.handled >= 1).await,
        "handled after one retry: {:?}",
        h.stats()
    );
    tokio::time::sleep(QUIET).await;
    let attempts: Vec<u32> = calls.lock().iter().map(|c| c.1).collect();
    ensure_eq!(attempts, vec![1, 2], "attempts");
    ensure!(
        h.dead_letters().is_empty(),
        "no dead letter for a message that succeeded: {:?}",
        h.dead_letters()
    );
    let st = h.stats();
    ensure_eq!(
        (st.handled, st.retried, st.dead),
        (1, 1, 0),
        "stats (handled, retried, dead)"
    );
    stop(h).await
}

async fn handler_permanent(cx: Ctx) -> Outcome {
    let ch = cx.name("permanent");
    let retry = RetryPolicy::exact(5, Duration::from_millis(20), 2.0, Duration::from_secs(1));
    let (h, calls) = start_subscriber(&cx, &ch, retry, |m| {
        (m.kind == "poison").then(|| HandlerError::permanent("cannot ever work"))
    })
    .await?;
    let poison = Message::new("poison", "x");
    let pid = poison.id;
    publish(&cx, &ch, poison).await?;
    publish(&cx, &ch, Message::new("good", "x")).await?;
    let dl = dead_letters_until(&h, 1, cx.prompt()).await?;
    ensure!(
        subscriber_until(&h, cx.prompt(), |s| s.handled >= 1).await,
        "the subscriber keeps handling after a dead letter: {:?}",
        h.stats()
    );
    tokio::time::sleep(QUIET).await;
    let seen: Vec<(String, u32)> = calls.lock().iter().map(|c| (c.0.clone(), c.1)).collect();
    ensure_eq!(
        seen,
        vec![("poison".to_string(), 1), ("good".to_string(), 1)],
        "a permanent failure is not retried"
    );
    ensure_eq!(dl.len(), 1, "dead letters");
    ensure_eq!(dl[0].message.id, pid, "dead letter id");
    ensure_eq!(dl[0].attempts, 1, "dead at the first attempt");
    ensure_eq!(dl[0].error, "cannot ever work", "error kept");
    ensure_eq!(h.stats().retried, 0, "nothing retried");
    stop(h).await
}

async fn handler_retry_after(cx: Ctx) -> Outcome {
    let ch = cx.name("retryafter");
    let asked = Duration::from_millis(200);
    let retry = RetryPolicy::exact(3, Duration::from_millis(1), 2.0, Duration::from_secs(1));
    let (h, calls) = start_subscriber(&cx, &ch, retry, move |m| {
        (m.attempt == 1).then(|| HandlerError::retry_after(asked, "later please"))
    })
    .await?;
    publish(&cx, &ch, Message::new("m", "x")).await?;
    ensure!(
        subscriber_until(&h, asked + cx.prompt(), |s| s.handled >= 1).await,
        "handled on the second attempt: {:?}",
        h.stats()
    );
    let seen = calls.lock().clone();
    ensure_eq!(seen.len(), 2, "two attempts");
    let gap = seen[1].2 - seen[0].2;
    ensure!(
        gap + Duration::from_millis(5) >= asked,
        "retried after {gap:?}, before the {asked:?} the handler asked for"
    );
    stop(h).await
}

async fn handler_panic(cx: Ctx) -> Outcome {
    let ch = cx.name("panics");
    let retry = RetryPolicy::exact(2, Duration::from_millis(10), 2.0, Duration::from_secs(1));
    let calls = Arc::new(Mutex::new(Vec::<(String, u32)>::new()));
    let c = calls.clone();
    let h = Subscriber::builder(cx.backend.pubsub.clone(), &ch)
        .retry(retry)
        .handler(move |m: Message| {
            let c = c.clone();
            async move {
                c.lock().push((m.kind.clone(), m.attempt));
                let always = m.kind == "always";
                if always || m.attempt == 1 {
                    panic!("conformance: deliberate handler panic");
                }
                Ok(())
            }
        })
        .start();
    let h = within(cx.prompt() + Duration::from_secs(5), "subscriber start", h).await??;
    publish(&cx, &ch, Message::new("once", "x")).await?;
    publish(&cx, &ch, Message::new("always", "x")).await?;
    let dl = dead_letters_until(&h, 1, cx.prompt()).await?;
    ensure!(
        subscriber_until(&h, cx.prompt(), |s| s.handled >= 1).await,
        "the message whose handler panicked once was handled on retry: {:?}",
        h.stats()
    );
    let seen = calls.lock().clone();
    ensure_eq!(
        seen,
        vec![
            ("once".to_string(), 1),
            ("once".to_string(), 2),
            ("always".to_string(), 1),
            ("always".to_string(), 2)
        ],
        "a panic is one failed attempt and the subscriber keeps running"
    );
    ensure_eq!(dl[0].message.kind, "always", "dead letter kind");
    ensure_eq!(dl[0].attempts, 2, "dead letter attempts");
    ensure!(
        dl[0].error.contains("panic"),
        "dead letter error names the panic: {:?}",
        dl[0].error
    );
    stop(h).await
}
