//! Worker cases, priority: `worker::priority::*`.

use courier_core::{Message, Priority, Worker};

use super::{GRACE, Log, gate, log, pass, publish, publish_all, queue, stats, stop, wait_until};
use crate::{Case, Ctx, Outcome, case, ensure_eq, plain_config};

pub(super) fn cases() -> Vec<Case> {
    vec![
        case!(
            "worker::priority::worker_handles_critical_first",
            ["W", "Q2"],
            handles_critical_first
        ),
        case!(
            "worker::priority::critical_overtakes_while_busy",
            ["W", "Q2"],
            critical_overtakes_while_busy
        ),
    ]
}

async fn handles_critical_first(cx: Ctx) -> Outcome {
    let q = queue(&cx, "prio", plain_config())?;
    let order: Vec<(&str, Priority)> = vec![
        ("low-1", Priority::Low),
        ("normal-1", Priority::Normal),
        ("high-1", Priority::High),
        ("critical-1", Priority::Critical),
        ("low-2", Priority::Low),
        ("critical-2", Priority::Critical),
        ("normal-2", Priority::Normal),
        ("high-2", Priority::High),
    ];
    publish_all(
        &cx,
        &q,
        order
            .iter()
            .map(|(label, p)| Message::new("task", label.to_string()).with_priority(*p))
            .collect(),
    )
    .await?;
    let seen: Log<String> = log();
    let s2 = seen.clone();
    let h = Worker::builder(cx.backend.queue.clone(), &q)
        .concurrency(1)
        .prefetch(1)
        .handler("task", move |m: Message| {
            let s = s2.clone();
            async move {
                s.lock()
                    .push(String::from_utf8_lossy(&m.payload).into_owned());
                Ok(())
            }
        })
        .start()?;
    wait_until(cx.prompt(), "8 handled", || seen.lock().len() >= 8).await?;
    stop(h, GRACE).await?;
    let want = [
        "critical-1",
        "critical-2",
        "high-1",
        "high-2",
        "normal-1",
        "normal-2",
        "low-1",
        "low-2",
    ];
    ensure_eq!(seen.lock().clone(), want.to_vec(), "handling order");
    Ok(())
}

async fn critical_overtakes_while_busy(cx: Ctx) -> Outcome {
    let q = queue(&cx, "overtake", plain_config())?;
    let (open, gate_rx) = gate();
    let seen: Log<String> = log();
    let s2 = seen.clone();
    let h = Worker::builder(cx.backend.queue.clone(), &q)
        .concurrency(1)
        .prefetch(0)
        .handler("task", move |m: Message| {
            let (s, g) = (s2.clone(), gate_rx.clone());
            async move {
                let label = String::from_utf8_lossy(&m.payload).into_owned();
                s.lock().push(label.clone());
                if label == "blocker" {
                    pass(g).await;
                }
                Ok(())
            }
        })
        .start()?;
    publish(&cx, &q, Message::new("task", "blocker")).await?;
    wait_until(cx.prompt(), "the blocker to start", || {
        !seen.lock().is_empty()
    })
    .await?;
    // With prefetch 0 nothing else is leased while the blocker runs.
    publish(
        &cx,
        &q,
        Message::new("task", "low").with_priority(Priority::Low),
    )
    .await?;
    publish(&cx, &q, Message::new("task", "normal")).await?;
    publish(
        &cx,
        &q,
        Message::new("task", "critical").with_priority(Priority::Critical),
    )
    .await?;
    let s = stats(&cx, &q).await?;
    ensure_eq!(
        s.in_flight,
        1,
        "prefetch 0 leases only the running message: {s:?}"
    );
    let _ = open.send(true);
    wait_until(cx.prompt(), "4 handled", || seen.lock().len() >= 4).await?;
    stop(h, GRACE).await?;
    ensure_eq!(
        seen.lock().clone(),
        vec!["blocker", "critical", "normal", "low"],
        "handling order"
    );
    Ok(())
}
