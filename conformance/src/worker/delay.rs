//! Worker cases, delay: `worker::delay::*`.

use std::time::{Duration, Instant};

use courier_core::Message;

use super::{GRACE, SLACK, next, publish, queue, stop, timing_worker};
use crate::{Case, Ctx, Outcome, case, ensure, ensure_eq, plain_config};

pub(super) fn cases() -> Vec<Case> {
    vec![case!(
        "worker::delay::delayed_message_handled_not_before_due",
        ["W", "Q3"],
        delayed_not_before_due
    )]
}

async fn delayed_not_before_due(cx: Ctx) -> Outcome {
    let q = queue(&cx, "delayed", plain_config())?;
    let (h, mut rx) = timing_worker(&cx, &q, "job")?;
    let delay = Duration::from_millis(500);
    let t0 = Instant::now();
    let later = publish(&cx, &q, Message::new("job", "later").with_delay(delay)).await?;
    let now = publish(&cx, &q, Message::new("job", "now")).await?;
    let (first, _) = next(&mut rx, cx.prompt(), "the ready message").await?;
    ensure_eq!(first.id, now, "the ready message is handled first");
    let (second, at) = next(&mut rx, delay + cx.prompt(), "the delayed message").await?;
    let took = at - t0;
    stop(h, GRACE).await?;
    ensure_eq!(second.id, later, "the delayed message");
    ensure!(
        took + SLACK >= delay,
        "delayed message handled after {took:?}, before its {delay:?} delay"
    );
    ensure!(
        took <= delay + cx.prompt(),
        "delayed message handled after {took:?}, not promptly after {delay:?}"
    );
    ensure_eq!(second.attempt, 1, "attempt");
    println!(
        "delay {delay:?}: handled after {took:?} (tick {:?})",
        cx.tick
    );
    Ok(())
}
