//! Worker cases, handlers: `worker::handlers::*`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use courier_core::{Message, MessageId, Priority, QueueExt, Worker};
use tokio::sync::mpsc;

use super::{
    GRACE, Job, LIMIT, Log, dead, log, next, publish, publish_all, queue, queue_until, stats, stop,
    wait_until,
};
use crate::{Case, Ctx, Outcome, case, ensure, ensure_eq, plain_config, within};

pub(super) fn cases() -> Vec<Case> {
    vec![
        case!("worker::handlers::routes_by_kind", ["W"], routes_by_kind),
        case!(
            "worker::handlers::json_handler_decodes",
            ["W", "Q6"],
            json_handler_decodes
        ),
        case!(
            "worker::handlers::message_fields_reach_handler",
            ["W", "Q1"],
            message_fields_reach_handler
        ),
    ]
}

async fn routes_by_kind(cx: Ctx) -> Outcome {
    let q = queue(&cx, "kinds", plain_config())?;
    let alpha: Log<Message> = log();
    let beta: Log<Message> = log();
    let (a, b) = (alpha.clone(), beta.clone());
    let h = Worker::builder(cx.backend.queue.clone(), &q)
        .handler("alpha", move |m: Message| {
            let a = a.clone();
            async move {
                a.lock().push(m);
                Ok(())
            }
        })
        .handler("beta", move |m: Message| {
            let b = b.clone();
            async move {
                b.lock().push(m);
                Ok(())
            }
        })
        .start()?;
    let msgs: Vec<Message> = (0..8)
        .map(|i| Message::new(if i % 2 == 0 { "alpha" } else { "beta" }, format!("{i}")))
        .collect();
    let ids = publish_all(&cx, &q, msgs).await?;
    wait_until(cx.prompt(), "8 messages handled", || {
        alpha.lock().len() + beta.lock().len() >= 8
    })
    .await?;
    let report = stop(h, GRACE).await?;
    let alpha = alpha.lock().clone();
    let beta = beta.lock().clone();
    ensure!(
        alpha.iter().all(|m| m.kind == "alpha"),
        "the alpha handler got {:?}",
        alpha.iter().map(|m| &m.kind).collect::<Vec<_>>()
    );
    ensure!(
        beta.iter().all(|m| m.kind == "beta"),
        "the beta handler got {:?}",
        beta.iter().map(|m| &m.kind).collect::<Vec<_>>()
    );
    let want_a: HashSet<MessageId> = ids.iter().step_by(2).copied().collect();
    let want_b: HashSet<MessageId> = ids.iter().skip(1).step_by(2).copied().collect();
    ensure_eq!(
        alpha.iter().map(|m| m.id).collect::<HashSet<_>>(),
        want_a,
        "alpha ids"
    );
    ensure_eq!(
        beta.iter().map(|m| m.id).collect::<HashSet<_>>(),
        want_b,
        "beta ids"
    );
    ensure_eq!(alpha.len() + beta.len(), 8, "each handled once");
    ensure_eq!(report.stats.succeeded, 8, "worker succeeded");
    let s = stats(&cx, &q).await?;
    ensure_eq!(s.acked, 8, "acked (stop returns after settling)");
    ensure_eq!(s.stored(), 0, "nothing left stored: {s:?}");
    Ok(())
}

async fn json_handler_decodes(cx: Ctx) -> Outcome {
    let q = queue(&cx, "json", plain_config())?;
    let jobs = vec![
        Job {
            n: 1,
            name: "transcode".into(),
            tags: vec!["hd".into(), "ünïcødé".into()],
        },
        Job {
            n: 2,
            name: "thumbnail".into(),
            tags: vec![],
        },
    ];
    let got: Log<(Job, MessageId)> = log();
    let calls = Arc::new(AtomicU64::new(0));
    let (g, c) = (got.clone(), calls.clone());
    let h = Worker::builder(cx.backend.queue.clone(), &q)
        .json_handler("job", move |job: Job, m: Message| {
            let (g, c) = (g.clone(), c.clone());
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                g.lock().push((job, m.id));
                Ok(())
            }
        })
        .start()?;
    let mut ids = Vec::new();
    for j in &jobs {
        ids.push(within(LIMIT, "publish_json", cx.q().publish_json(&q, "job", j)).await??);
    }
    let bad = publish(&cx, &q, Message::new("job", "{not json")).await?;
    queue_until(&cx, &q, cx.prompt(), "2 acked and 1 dead", |s| {
        s.acked == 2 && s.dead == 1
    })
    .await?;
    let report = stop(h, GRACE).await?;
    let got = got.lock().clone();
    ensure_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the typed handler runs only for decodable payloads"
    );
    let by_id: HashMap<MessageId, Job> = got.into_iter().map(|(j, id)| (id, j)).collect();
    for (id, job) in ids.iter().zip(&jobs) {
        ensure_eq!(by_id.get(id), Some(job), "decoded value of {id}");
    }
    let dl = dead(&cx, &q).await?;
    ensure_eq!(dl.len(), 1, "dead letters");
    ensure_eq!(
        dl[0].message.id,
        bad,
        "the undecodable message is the dead one"
    );
    ensure_eq!(dl[0].attempts, 1, "a decode failure is permanent: no retry");
    ensure!(
        dl[0].error.contains("job") && dl[0].error.to_lowercase().contains("json"),
        "the dead letter's error should name the kind and JSON: {:?}",
        dl[0].error
    );
    let s = stats(&cx, &q).await?;
    ensure_eq!(s.retried, 0, "no retry for a decode failure");
    ensure_eq!(report.stats.dead, 1, "worker dead counter");
    Ok(())
}

async fn message_fields_reach_handler(cx: Ctx) -> Outcome {
    let q = queue(&cx, "fields", plain_config())?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let h = Worker::builder(cx.backend.queue.clone(), &q)
        .handler("meeting.created", move |m: Message| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(m);
                Ok(())
            }
        })
        .start()?;
    let payload = Bytes::from_static(b"\x00\x01\xffbinary payload");
    let id = publish(
        &cx,
        &q,
        Message::new("meeting.created", payload.clone())
            .with_priority(Priority::High)
            .with_header("source", "meeting")
            .with_header(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
    )
    .await?;
    let m = next(&mut rx, cx.prompt(), "the handler").await?;
    let report = stop(h, GRACE).await?;
    ensure_eq!(m.id, id, "id");
    ensure_eq!(m.kind, "meeting.created", "kind");
    ensure_eq!(m.payload, payload, "payload");
    ensure_eq!(m.priority, Priority::High, "priority");
    ensure_eq!(m.header("source"), Some("meeting"), "source header");
    ensure_eq!(
        m.header("traceparent"),
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        "traceparent header"
    );
    ensure_eq!(m.attempt, 1, "attempt of the first delivery");
    ensure!(m.created_at > 0, "created_at set at publish");
    ensure_eq!(report.stats.succeeded, 1, "succeeded");
    Ok(())
}
