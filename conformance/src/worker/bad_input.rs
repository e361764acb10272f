//! Worker cases, bad input: `worker::bad_input::*`. A runtime given a name that a publish
//! would refuse refuses it too, at `start` (or at the call that takes the name, when that
//! call returns a `Result`), with the same `InvalidInput` (Q10): it never starts and then
//! fails every receive.

use courier_core::{
    Courier, CourierConfig, Dispatcher, ErrorKind, GroupConsumer, Message, QueueExt, Subscriber,
    Worker, WorkerHandle,
};

use super::{GRACE, stop};
use crate::{Case, Ctx, Outcome, case, expect_kind, within};

pub(super) fn cases() -> Vec<Case> {
    vec![
        case!(
            "worker::bad_input::invalid_queue_name_rejected_at_start",
            ["Q10", "W"],
            worker_name
        ),
        case!(
            "worker::bad_input::invalid_group_or_topic_rejected_at_start",
            ["Q10", "W"],
            group_names
        ),
        case!(
            "worker::bad_input::invalid_subscriber_pattern_rejected_at_start",
            ["Q10", "P4"],
            subscriber_pattern
        ),
        case!(
            "worker::bad_input::invalid_route_queue_rejected",
            ["Q10", "W"],
            route_names
        ),
    ]
}

/// Names every backend refuses (the queue, channel, topic and group grammar).
fn bad_names() -> Vec<String> {
    vec![
        String::new(),
        "a*b".into(),
        ".a".into(),
        "a.".into(),
        "a..b".into(),
        "a b".into(),
        "a/b".into(),
        "ä".into(),
        "a.>".into(),
        "x".repeat(201),
    ]
}

fn courier(cx: &Ctx) -> Courier {
    Courier::new(
        cx.backend.queue.clone(),
        cx.backend.pubsub.clone(),
        cx.backend.events.clone(),
    )
}

/// A started runtime's handle as a `Debug` value for [`expect_kind`].
fn started(r: courier_core::Result<WorkerHandle>) -> courier_core::Result<&'static str> {
    r.map(|_| "a running worker")
}

async fn worker_name(cx: Ctx) -> Outcome {
    let courier = courier(&cx);
    for name in bad_names() {
        let r = Worker::builder(cx.backend.queue.clone(), &name)
            .handler("k", |_m: Message| async { Ok(()) })
            .start();
        expect_kind(
            started(r),
            ErrorKind::InvalidInput,
            &format!("Worker::builder({name:?}).start()"),
        )?;
        let r = courier
            .worker(&name)
            .handler("k", |_m: Message| async { Ok(()) })
            .start();
        expect_kind(
            started(r),
            ErrorKind::InvalidInput,
            &format!("courier.worker({name:?}).start()"),
        )?;
        // The kind a publish to that name gets.
        let r = within(
            cx.prompt(),
            "publish",
            cx.q().publish(&name, Message::new("k", "x")),
        )
        .await?;
        expect_kind(r, ErrorKind::InvalidInput, &format!("publish to {name:?}"))?;
    }
    // A valid name starts.
    let h = courier
        .worker(&cx.name("fine"))
        .handler("k", |_m: Message| async { Ok(()) })
        .start()?;
    stop(h, GRACE).await?;
    Ok(())
}

async fn group_names(cx: Ctx) -> Outcome {
    let courier = courier(&cx);
    let topic = cx.name("t");
    let group = cx.name("g");
    for name in bad_names() {
        let r = within(
            cx.prompt(),
            "group consumer start",
            GroupConsumer::builder(cx.backend.events.clone(), &name)
                .on(&topic, |_m: Message| async { Ok(()) })
                .start(),
        )
        .await?;
        expect_kind(
            started(r),
            ErrorKind::InvalidInput,
            &format!("group_consumer({name:?}).start()"),
        )?;
        let r = within(
            cx.prompt(),
            "group consumer start",
            courier
                .group_consumer(&group)
                .on(&topic, |_m: Message| async { Ok(()) })
                .on(&name, |_m: Message| async { Ok(()) })
                .start(),
        )
        .await?;
        expect_kind(
            started(r),
            ErrorKind::InvalidInput,
            &format!("group_consumer(..).on({name:?}).start()"),
        )?;
    }
    let h = within(
        cx.prompt(),
        "group consumer start",
        courier
            .group_consumer(&group)
            .on(&topic, |_m: Message| async { Ok(()) })
            .start(),
    )
    .await??;
    stop(h, GRACE).await?;
    Ok(())
}

async fn subscriber_pattern(cx: Ctx) -> Outcome {
    let courier = courier(&cx);
    let root = cx.name("p");
    let mut bad: Vec<String> = bad_names()
        .into_iter()
        .filter(|n| n != "a.>") // a valid pattern
        .collect();
    bad.extend(
        ["a.>.b", "a.*b", "a.b>", "a.**"]
            .iter()
            .map(|p| format!("{root}.{p}")),
    );
    for pattern in bad {
        let r = within(
            cx.prompt(),
            "subscriber start",
            Subscriber::builder(cx.backend.pubsub.clone(), &pattern)
                .handler(|_m: Message| async { Ok(()) })
                .start(),
        )
        .await?;
        expect_kind(
            r.map(|_| "a running subscriber"),
            ErrorKind::InvalidInput,
            &format!("Subscriber::builder({pattern:?}).start()"),
        )?;
        let r = within(
            cx.prompt(),
            "subscriber start",
            courier
                .subscriber(&pattern)
                .handler(|_m: Message| async { Ok(()) })
                .start(),
        )
        .await?;
        expect_kind(
            r.map(|_| "a running subscriber"),
            ErrorKind::InvalidInput,
            &format!("courier.subscriber({pattern:?}).start()"),
        )?;
    }
    let h = within(
        cx.prompt(),
        "subscriber start",
        courier
            .subscriber(&format!("{root}.>"))
            .handler(|_m: Message| async { Ok(()) })
            .start(),
    )
    .await??;
    within(cx.prompt(), "subscriber stop", h.stop()).await?;
    Ok(())
}

async fn route_names(cx: Ctx) -> Outcome {
    let d = Dispatcher::new(cx.backend.queue.clone());
    for name in bad_names() {
        expect_kind(
            d.route("k", &name),
            ErrorKind::InvalidInput,
            &format!("route to {name:?}"),
        )?;
        expect_kind(
            d.route_with_priority("k", &name, None),
            ErrorKind::InvalidInput,
            &format!("route_with_priority to {name:?}"),
        )?;
        expect_kind(
            d.set_default_queue(&name),
            ErrorKind::InvalidInput,
            &format!("set_default_queue({name:?})"),
        )?;
        let mut config = CourierConfig::default();
        config.routes.insert("k".into(), name.clone());
        expect_kind(
            courier(&cx).apply(&config),
            ErrorKind::InvalidInput,
            &format!("a config routing to {name:?}"),
        )?;
    }
    crate::ensure_eq!(d.routes(), Vec::new(), "no route was kept");
    let r = within(cx.prompt(), "dispatch", d.dispatch(Message::new("k", "x"))).await?;
    expect_kind(
        r,
        ErrorKind::InvalidInput,
        "dispatch of a kind with no route",
    )?;
    Ok(())
}
