//! Queue cases, Q7 batch: `queue::batch::*`.

use std::time::Duration;

use courier_core::{ErrorKind, Message, MessageId, Priority};

use super::{LIMIT, kinds, publish_all, queue};
use crate::{Case, Ctx, Outcome, case, ensure, ensure_eq, plain_config, receive_n, within};

pub(super) fn cases() -> Vec<Case> {
    vec![
        case!("queue::batch::all_stored_in_order", ["Q7"], batch_in_order),
        case!(
            "queue::batch::invalid_member_stores_nothing",
            ["Q7", "Q10"],
            batch_invalid
        ),
        case!("queue::batch::empty_batch_is_a_no_op", ["Q7"], batch_empty),
        case!("queue::batch::large_batch", ["Q7"], batch_large),
        case!(
            "queue::batch::failure_reports_the_stored_prefix",
            ["Q7", "Q9"],
            batch_partial
        ),
    ]
}

async fn batch_in_order(cx: Ctx) -> Outcome {
    let q = queue(&cx, "batch", plain_config())?;
    let ms = kinds(50, "b");
    let sent: Vec<MessageId> = ms.iter().map(|m| m.id).collect();
    let ids = publish_all(&cx, &q, ms).await?;
    ensure_eq!(ids, sent, "ids returned in batch order");
    let got = receive_n(cx.q(), &q, 50, LIMIT).await?;
    ensure_eq!(
        got.iter().map(|d| d.message.id).collect::<Vec<_>>(),
        sent,
        "delivered in batch order"
    );
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!(s.published, 50, "published counter");
    Ok(())
}

async fn batch_invalid(cx: Ctx) -> Outcome {
    let mut config = plain_config();
    config.max_payload = 1024;
    let q = queue(&cx, "binv", config)?;
    let mut ms = kinds(5, "ok");
    ms.insert(3, Message::new("huge", vec![0u8; 4096]));
    let r = within(LIMIT, "publish_batch", cx.q().publish_batch(&q, ms)).await?;
    let e = match r {
        Ok(ids) => {
            return Err(crate::Failure(format!(
                "an oversize member was accepted ({} ids)",
                ids.len()
            )));
        }
        Err(e) => e,
    };
    ensure_eq!(e.kind(), ErrorKind::PayloadTooLarge, "error kind ({e})");
    ensure!(
        matches!(e.stored(), None | Some(0)),
        "validation failed after storing {:?}",
        e.stored()
    );
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!((s.stored(), s.published), (0, 0), "no silent partial batch");
    Ok(())
}

async fn batch_empty(cx: Ctx) -> Outcome {
    let q = queue(&cx, "bempty", plain_config())?;
    let ids = publish_all(&cx, &q, Vec::new()).await?;
    ensure!(ids.is_empty(), "ids {ids:?}");
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!(s.published, 0, "nothing published");
    Ok(())
}

async fn batch_large(cx: Ctx) -> Outcome {
    let q = queue(&cx, "blarge", plain_config())?;
    let ms: Vec<Message> = (0..2_000)
        .map(|i| {
            let p = Priority::from_index(i % 4).unwrap_or_default();
            Message::new("bulk", format!("{i}")).with_priority(p)
        })
        .collect();
    let ids = publish_all(&cx, &q, ms).await?;
    ensure_eq!(ids.len(), 2_000, "all stored");
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!(s.ready, [500, 500, 500, 500], "ready per priority");
    let got = receive_n(cx.q(), &q, 2_000, Duration::from_secs(30)).await?;
    let mut last = 0;
    for d in &got {
        ensure!(
            d.message.priority.index() >= last,
            "priority went back up at {}",
            d.message.kind
        );
        last = d.message.priority.index();
    }
    Ok(())
}

/// A batch that fails part-way reports exactly the leading messages that were stored
/// (`Error::stored`), and those are the ones in the queue, in order: no silent partial batch.
/// Where a batch is one all-or-nothing step (memory, SQLite) the factory cannot fail it
/// part-way and the case checks nothing more.
async fn batch_partial(cx: Ctx) -> Outcome {
    const N: usize = 2_500;
    let q = queue(&cx, "partial", plain_config())?;
    let ms = kinds(N, "p");
    let sent: Vec<MessageId> = ms.iter().map(|m| m.id).collect();
    if !cx.factory.fail_batch_after(&cx.ns, &cx.backend, 1).await? {
        println!(
            "{}: a batch is one all-or-nothing step, nothing to fail part-way",
            cx.factory.name()
        );
        return Ok(());
    }
    let r = within(LIMIT, "publish_batch", cx.q().publish_batch(&q, ms)).await?;
    let e = match r {
        Ok(_) => {
            return Err(crate::Failure(
                "the injected failure did not fail the batch".into(),
            ));
        }
        Err(e) => e,
    };
    let k = e
        .stored()
        .ok_or_else(|| crate::Failure(format!("a part-way failure without stored(): {e}")))?;
    ensure!(
        0 < k && k < N,
        "stored() = {k} of {N} after a failure part-way"
    );
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!(
        (s.ready_total(), s.published),
        (k as u64, k as u64),
        "(ready, published) match stored()"
    );
    let got = receive_n(cx.q(), &q, k, LIMIT).await?;
    ensure_eq!(
        got.iter().map(|d| d.message.id).collect::<Vec<_>>(),
        sent[..k].to_vec(),
        "the stored messages are the leading ones, in order"
    );
    Ok(())
}
