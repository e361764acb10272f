//! Queue cases, Q15 rate limits: `queue::rate::*`.
//!
//! Cases that count within one window use a window of a day: the case ends long before it
//! rolls over, except when it starts a moment before midnight UTC; such a run is detected
//! (the window changed under the case) and the count is then allowed the next window's share.

use std::time::{Duration, Instant};

use courier_core::{ErrorKind, Message, RateLimit};

use super::{LIMIT, SHORT, kinds, publish_all, queue};
use crate::{
    Case, Ctx, Outcome, case, ensure, ensure_eq, expect_kind, expect_nothing, plain_config,
    receive_n, within,
};

const DAY: Duration = Duration::from_secs(86_400);

pub(super) fn cases() -> Vec<Case> {
    vec![
        case!(
            "queue::rate::at_most_the_limit_per_window",
            ["Q15", "Q8"],
            at_most_limit
        ),
        case!(
            "queue::rate::one_receive_takes_at_most_a_quarter",
            ["Q15"],
            quarter
        ),
        case!(
            "queue::rate::excess_waits_for_the_next_window",
            ["Q15"],
            excess_waits
        ),
        case!("queue::rate::shared_by_every_handle", ["Q15"], shared),
        case!(
            "queue::rate::cleared_limit_delivers_at_once",
            ["Q15"],
            cleared
        ),
        case!(
            "queue::rate::invalid_limit_refused",
            ["Q15", "Q10"],
            invalid
        ),
    ]
}

async fn set(cx: &Ctx, q: &str, limit: Option<RateLimit>) -> Outcome {
    within(LIMIT, "set_rate_limit", cx.q().set_rate_limit(q, limit)).await??;
    Ok(())
}

/// Receive with `max` until a receive comes back empty after `SHORT`; every delivery.
async fn drain(
    q: &dyn courier_core::Queue,
    name: &str,
    max: usize,
) -> Result<Vec<usize>, crate::Failure> {
    let mut sizes = Vec::new();
    loop {
        let got = within(LIMIT, "receive", q.receive(name, max, SHORT)).await??;
        if got.is_empty() {
            return Ok(sizes);
        }
        sizes.push(got.len());
    }
}

/// Whether the day window changed between `start` and now (the case straddled midnight UTC).
fn rolled(cx: &Ctx, start: u64) -> bool {
    let limit = RateLimit::new(1, DAY);
    limit.window_start(start) != limit.window_start(cx.q().clock().now_ms())
}

async fn at_most_limit(cx: Ctx) -> Outcome {
    let q = queue(&cx, "window", plain_config())?;
    let limit = RateLimit::new(4, DAY);
    let start = cx.q().clock().now_ms();
    set(&cx, &q, Some(limit)).await?;
    publish_all(&cx, &q, kinds(10, "m")).await?;
    let sizes = drain(cx.q(), &q, 10).await?;
    let total: usize = sizes.iter().sum();
    if rolled(&cx, start) {
        ensure!(total <= 8, "at most two windows' worth: {sizes:?}");
        return Ok(());
    }
    ensure_eq!(
        total,
        4,
        "the window's four, no more (receive sizes {sizes:?})"
    );
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!(s.rate_limit, Some(limit), "stats report the limit");
    ensure_eq!(
        (s.ready_total(), s.in_flight),
        (6, 4),
        "the rest waits, ready"
    );
    Ok(())
}

async fn quarter(cx: Ctx) -> Outcome {
    let q = queue(&cx, "quarter", plain_config())?;
    let start = cx.q().clock().now_ms();
    set(&cx, &q, Some(RateLimit::new(8, DAY))).await?;
    publish_all(&cx, &q, kinds(10, "m")).await?;
    let got = within(LIMIT, "receive", cx.q().receive(&q, 10, LIMIT)).await??;
    if rolled(&cx, start) {
        return Ok(());
    }
    ensure_eq!(
        got.len(),
        2,
        "one receive takes a quarter of the window's 8"
    );
    let sizes = drain(cx.q(), &q, 10).await?;
    ensure_eq!(
        sizes,
        vec![2, 2, 2],
        "the window's other six, two at a time"
    );
    Ok(())
}

/// Six messages at two per 500 ms window: each receive gets at most the grant cap (one), and
/// all six arrive, which takes at least three windows. Which window a delivery was granted in
/// is not observable from outside on every backend (a lease's deadline on RabbitMQ and NATS
/// carries a variable pad for the claim's round trip), so the per-window count is checked by
/// `at_most_the_limit_per_window` and by the backends' multi-process tests.
async fn excess_waits(cx: Ctx) -> Outcome {
    let q = queue(&cx, "waits", plain_config())?;
    let limit = RateLimit::new(2, Duration::from_millis(500));
    set(&cx, &q, Some(limit)).await?;
    publish_all(&cx, &q, kinds(6, "m")).await?;
    let started = Instant::now();
    let mut got = 0;
    while got < 6 {
        ensure!(
            started.elapsed() < LIMIT,
            "received {got} of 6 within {LIMIT:?}: the excess must wait, not be lost"
        );
        let ds = within(
            LIMIT,
            "receive",
            cx.q().receive(&q, 6, Duration::from_millis(500)),
        )
        .await??;
        ensure!(
            ds.len() <= limit.grant_cap() as usize,
            "one receive took {} of a window of 2 (cap {})",
            ds.len(),
            limit.grant_cap()
        );
        got += ds.len();
    }
    let elapsed = started.elapsed();
    ensure!(
        elapsed >= Duration::from_millis(400),
        "six deliveries at two per 500 ms window span three windows, so at least one whole \
         window: {elapsed:?}"
    );
    Ok(())
}

async fn shared(cx: Ctx) -> Outcome {
    let q = queue(&cx, "shared", plain_config())?;
    let limit = RateLimit::new(2, DAY);
    let start = cx.q().clock().now_ms();
    set(&cx, &q, Some(limit)).await?;
    publish_all(&cx, &q, kinds(5, "m")).await?;
    let other = within(LIMIT, "reopen", cx.factory.reopen(&cx.ns, &cx.backend)).await??;
    other.queue.configure(&q, plain_config())?;
    let mine = receive_n(cx.q(), &q, 1, LIMIT).await?;
    let theirs = receive_n(&*other.queue, &q, 1, LIMIT).await?;
    ensure_eq!((mine.len(), theirs.len()), (1, 1), "one each");
    if rolled(&cx, start) {
        return Ok(());
    }
    expect_nothing(&*other.queue, &q, SHORT).await?;
    expect_nothing(cx.q(), &q, SHORT).await?;
    let s = within(LIMIT, "stats", other.queue.stats(&q)).await??;
    ensure_eq!(
        s.rate_limit,
        Some(limit),
        "the other handle's stats show the limit"
    );
    Ok(())
}

async fn cleared(cx: Ctx) -> Outcome {
    let q = queue(&cx, "cleared", plain_config())?;
    let start = cx.q().clock().now_ms();
    set(&cx, &q, Some(RateLimit::new(1, DAY))).await?;
    publish_all(&cx, &q, kinds(3, "m")).await?;
    receive_n(cx.q(), &q, 1, LIMIT).await?;
    if rolled(&cx, start) {
        return Ok(());
    }
    expect_nothing(cx.q(), &q, SHORT).await?;
    set(&cx, &q, None).await?;
    let t = Instant::now();
    let got = receive_n(cx.q(), &q, 2, LIMIT).await?;
    ensure_eq!(got.len(), 2, "the rest, once the limit is gone");
    ensure!(
        t.elapsed() < cx.prompt(),
        "delivered promptly after clearing: {:?}",
        t.elapsed()
    );
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!(s.rate_limit, None, "stats show no limit");
    Ok(())
}

async fn invalid(cx: Ctx) -> Outcome {
    let q = queue(&cx, "invalid", plain_config())?;
    for (limit, what) in [
        (RateLimit::new(0, Duration::from_secs(1)), "max 0"),
        (RateLimit::new(5, Duration::ZERO), "a zero window"),
        (
            RateLimit::new(5, Duration::from_secs(86_401)),
            "a window over a day",
        ),
    ] {
        let r = within(
            LIMIT,
            "set_rate_limit",
            cx.q().set_rate_limit(&q, Some(limit)),
        )
        .await?;
        expect_kind(r, ErrorKind::InvalidInput, what)?;
    }
    let r = within(
        LIMIT,
        "set_rate_limit",
        cx.q()
            .set_rate_limit("bad name!", Some(RateLimit::per_second(1))),
    )
    .await?;
    expect_kind(r, ErrorKind::InvalidInput, "an invalid queue name")?;
    publish_all(&cx, &q, vec![Message::new("a", "")]).await?;
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!(s.rate_limit, None, "nothing stored");
    Ok(())
}
