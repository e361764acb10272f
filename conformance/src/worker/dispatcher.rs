//! Worker cases, dispatcher: `worker::dispatcher::*`.

use courier_core::{Delivery, Dispatcher, ErrorKind, Message, Priority};

use super::{Job, LIMIT, queue, stats};
use crate::{
    Case, Ctx, Failure, Outcome, case, ensure, ensure_eq, plain_config, receive_n, within,
};

pub(super) fn cases() -> Vec<Case> {
    vec![
        case!(
            "worker::dispatcher::routes_kind_to_owning_queue",
            ["W"],
            dispatcher_routes
        ),
        case!(
            "worker::dispatcher::batch_keeps_order_per_queue",
            ["W", "Q7"],
            dispatcher_batch
        ),
    ]
}

async fn dispatcher_routes(cx: Ctx) -> Outcome {
    let media = queue(&cx, "media", plain_config())?;
    let ai = queue(&cx, "ai", plain_config())?;
    let fallback = queue(&cx, "default", plain_config())?;
    let d = Dispatcher::new(cx.backend.queue.clone());
    d.route("media.transcode", &media)?;
    d.route_with_priority("speech_recognition", &ai, Some(Priority::High))?;
    ensure_eq!(
        d.queue_for("media.transcode"),
        Some(media.clone()),
        "queue_for"
    );
    ensure_eq!(
        d.queue_for("nobody.owns"),
        None,
        "queue_for an unrouted kind"
    );
    let id_media = within(
        LIMIT,
        "dispatch",
        d.dispatch(Message::new("media.transcode", "m")),
    )
    .await??;
    let id_ai = within(
        LIMIT,
        "dispatch_json",
        d.dispatch_json(
            "speech_recognition",
            &Job {
                n: 7,
                name: "meeting-42".into(),
                tags: vec![],
            },
        ),
    )
    .await??;
    // An unknown kind without a default queue is an error, and nothing is published.
    let err = within(
        LIMIT,
        "dispatch",
        d.dispatch(Message::new("nobody.owns", "")),
    )
    .await?
    .err()
    .ok_or_else(|| Failure("dispatching an unrouted kind succeeded".into()))?;
    ensure_eq!(err.kind(), ErrorKind::InvalidInput, "error kind ({err})");
    ensure!(
        err.to_string().contains("nobody.owns"),
        "the error should name the kind: {err}"
    );
    ensure!(
        d.route("x", "not a valid name!").is_err(),
        "routing to an invalid queue name must fail"
    );
    let got = receive_n(cx.q(), &media, 1, cx.prompt()).await?;
    ensure_eq!(got[0].message.id, id_media, "media queue got its message");
    let got = receive_n(cx.q(), &ai, 1, cx.prompt()).await?;
    ensure_eq!(got[0].message.id, id_ai, "ai queue got its message");
    ensure_eq!(
        got[0].message.priority,
        Priority::High,
        "the route's priority applies to a default-priority message"
    );
    for (name, want) in [(&media, 1), (&ai, 1), (&fallback, 0)] {
        ensure_eq!(
            stats(&cx, name).await?.published,
            want,
            "published to {name}"
        );
    }
    // With a default queue, unrouted kinds go there.
    d.set_default_queue(&fallback)?;
    let id = within(
        LIMIT,
        "dispatch",
        d.dispatch(Message::new("nobody.owns", "")),
    )
    .await??;
    let got = receive_n(cx.q(), &fallback, 1, cx.prompt()).await?;
    ensure_eq!(
        got[0].message.id,
        id,
        "the default queue got the unrouted kind"
    );
    ensure_eq!(stats(&cx, &media).await?.published, 1, "media untouched");
    Ok(())
}

async fn dispatcher_batch(cx: Ctx) -> Outcome {
    let qa = queue(&cx, "batch-a", plain_config())?;
    let qb = queue(&cx, "batch-b", plain_config())?;
    let d = Dispatcher::new(cx.backend.queue.clone());
    d.route("a", &qa)?;
    d.route("b", &qb)?;
    let ids = within(
        LIMIT,
        "dispatch_batch",
        d.dispatch_batch(vec![
            Message::new("a", "a1"),
            Message::new("b", "b1"),
            Message::new("a", "a2"),
            Message::new("b", "b2"),
            Message::new("a", "a3"),
        ]),
    )
    .await??;
    ensure_eq!(ids.len(), 5, "ids returned");
    let payloads = |ds: &[Delivery]| {
        ds.iter()
            .map(|d| String::from_utf8_lossy(&d.message.payload).into_owned())
            .collect::<Vec<_>>()
    };
    let a = receive_n(cx.q(), &qa, 3, cx.prompt()).await?;
    ensure_eq!(payloads(&a), vec!["a1", "a2", "a3"], "queue a in order");
    let b = receive_n(cx.q(), &qb, 2, cx.prompt()).await?;
    ensure_eq!(payloads(&b), vec!["b1", "b2"], "queue b in order");
    // A batch with an unrouted kind fails before anything is published.
    let r = within(
        LIMIT,
        "dispatch_batch",
        d.dispatch_batch(vec![Message::new("a", "a4"), Message::new("zzz", "")]),
    )
    .await?;
    ensure!(r.is_err(), "a batch with an unrouted kind must fail");
    ensure_eq!(
        stats(&cx, &qa).await?.published,
        3,
        "nothing of the failed batch published"
    );
    Ok(())
}
