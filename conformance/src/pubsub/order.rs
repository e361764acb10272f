//! PubSub cases, P3 Order: `pubsub::order::*`.

use std::time::{Duration, Instant};

use courier_core::Message;

use super::{next, publish, sub_with};
use crate::{Case, Ctx, Failure, Outcome, case, ensure, ensure_eq, within};

pub(super) fn cases() -> Vec<Case> {
    vec![
        case!(
            "pubsub::order::one_publisher_in_order",
            ["P3"],
            one_publisher_in_order
        ),
        case!(
            "pubsub::order::concurrent_publishers_each_in_order",
            ["P3"],
            concurrent_publishers_in_order
        ),
    ]
}

async fn one_publisher_in_order(cx: Ctx) -> Outcome {
    let ch = cx.name("order");
    let mut s = sub_with(&cx, &ch, 4096).await?;
    let n = 200;
    for i in 0..n {
        publish(&cx, &ch, Message::new(format!("{i}"), "x")).await?;
    }
    let mut got = Vec::with_capacity(n);
    let deadline = Instant::now() + cx.prompt() * 2;
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = next(&mut s, left, &format!("message {} of {n}", got.len())).await?;
        got.push(m.kind);
    }
    let want: Vec<String> = (0..n).map(|i| format!("{i}")).collect();
    ensure!(
        got == want,
        "one publisher's messages out of order; first difference at {:?}",
        got.iter().zip(&want).position(|(a, b)| a != b)
    );
    ensure_eq!(s.dropped(), 0, "nothing dropped with a large enough buffer");
    Ok(())
}

async fn concurrent_publishers_in_order(cx: Ctx) -> Outcome {
    let ch = cx.name("order2");
    let mut s = sub_with(&cx, &ch, 4096).await?;
    let per = 100usize;
    let publishers = 3usize;
    let mut tasks = Vec::new();
    for p in 0..publishers {
        let ps = cx.backend.pubsub.clone();
        let ch = ch.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per {
                ps.publish(&ch, Message::new(format!("{p}:{i}"), "x"))
                    .await?;
            }
            Ok::<_, courier_core::Error>(())
        }));
    }
    for t in tasks {
        within(Duration::from_secs(30), "publisher task", t)
            .await?
            .map_err(|e| Failure(format!("publisher task failed: {e}")))??;
    }
    let mut last: Vec<Option<usize>> = vec![None; publishers];
    let deadline = Instant::now() + cx.prompt() * 2;
    for k in 0..per * publishers {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = next(
            &mut s,
            left,
            &format!("message {k} of {}", per * publishers),
        )
        .await?;
        let (p, i) = m
            .kind
            .split_once(':')
            .and_then(|(p, i)| Some((p.parse::<usize>().ok()?, i.parse::<usize>().ok()?)))
            .ok_or_else(|| Failure(format!("unexpected kind {:?}", m.kind)))?;
        let want = last[p].map_or(0, |l| l + 1);
        ensure_eq!(i, want, "publisher {p}: next message in its publish order");
        last[p] = Some(i);
    }
    Ok(())
}
