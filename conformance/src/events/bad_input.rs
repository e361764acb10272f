//! EventBus cases, bad input: `events::bad_input::*`.

use std::time::Duration;

use bytes::Bytes;
use courier_core::{ErrorKind, EventBusExt, Message, MessageId, ReplayFrom};

use super::{ack_all, bus, emit_n, ids, recv_n, short_lease, topic_len};
use crate::{Case, Ctx, Outcome, case, ensure_eq, expect_kind, plain_config, within};

pub(super) fn cases() -> Vec<Case> {
    vec![
        case!(
            "events::bad_input::invalid_names_rejected",
            ["E1"],
            invalid_names
        ),
        case!(
            "events::bad_input::oversize_batch_stores_nothing",
            ["E1"],
            oversize_batch
        ),
        case!(
            "events::bad_input::bad_group_config_rejected",
            ["E3"],
            bad_group_config
        ),
        case!(
            "events::bad_input::reset_to_unknown_id_not_found",
            ["E5"],
            reset_unknown_id
        ),
    ]
}

async fn invalid_names(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let good_t = cx.name("t");
    let good_g = cx.name("g");
    let bad: Vec<String> = vec![
        String::new(),
        ".a".into(),
        "a.".into(),
        "a..b".into(),
        "a b".into(),
        "a/b".into(),
        "a.*".into(),
        "a.>".into(),
        "x".repeat(201),
    ];
    for name in &bad {
        let r = within(cx.prompt(), "emit", b.emit(name, Message::new("k", "x"))).await?;
        expect_kind(
            r,
            ErrorKind::InvalidInput,
            &format!("emit to topic {name:?}"),
        )?;
        let r = within(
            cx.prompt(),
            "receive",
            b.receive(name, &good_g, 1, Duration::ZERO),
        )
        .await?;
        expect_kind(
            r,
            ErrorKind::InvalidInput,
            &format!("receive from topic {name:?}"),
        )?;
        let r = within(
            cx.prompt(),
            "receive",
            b.receive(&good_t, name, 1, Duration::ZERO),
        )
        .await?;
        expect_kind(
            r,
            ErrorKind::InvalidInput,
            &format!("receive as group {name:?}"),
        )?;
        expect_kind(
            b.configure_group(&good_t, name, plain_config()),
            ErrorKind::InvalidInput,
            &format!("configure group {name:?}"),
        )?;
        let r = within(cx.prompt(), "topic_len", b.topic_len(name)).await?;
        expect_kind(
            r,
            ErrorKind::InvalidInput,
            &format!("topic_len of {name:?}"),
        )?;
    }
    ensure_eq!(topic_len(b, &good_t).await?, 0, "nothing was appended");
    Ok(())
}

async fn oversize_batch(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let max = b.group_config(&t, &cx.name("g")).max_payload;
    let big = Bytes::from(vec![7u8; max + 1]);
    let r = within(
        Duration::from_secs(30),
        "emit_batch",
        b.emit_batch(
            &t,
            vec![Message::new("ok", "x"), Message::new("big", big.clone())],
        ),
    )
    .await?;
    expect_kind(
        r,
        ErrorKind::PayloadTooLarge,
        "a batch with an oversize event",
    )?;
    let mut zero = Message::new("zero", "x");
    zero.max_attempts = Some(0);
    let r = within(Duration::from_secs(10), "emit", b.emit(&t, zero)).await?;
    expect_kind(r, ErrorKind::InvalidInput, "an event with max_attempts 0")?;
    ensure_eq!(
        topic_len(b, &t).await?,
        0,
        "nothing of a rejected batch was appended"
    );
    emit_n(b, &t, "fine", 1).await?;
    ensure_eq!(topic_len(b, &t).await?, 1, "a valid emit still works");
    Ok(())
}

async fn bad_group_config(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let g = cx.name("g");
    let mut c = plain_config();
    c.retry.max_attempts = 0;
    expect_kind(
        b.configure_group(&t, &g, c),
        ErrorKind::InvalidInput,
        "max_attempts 0",
    )?;
    let c = plain_config().with_visibility_timeout(Duration::ZERO);
    expect_kind(
        b.configure_group(&t, &g, c),
        ErrorKind::InvalidInput,
        "zero visibility timeout",
    )?;
    let mut c = plain_config();
    c.retry.jitter = 1.5;
    expect_kind(
        b.configure_group(&t, &g, c),
        ErrorKind::InvalidInput,
        "jitter 1.5",
    )?;
    // The rejected configurations did not replace the one in force.
    let good = short_lease(400, 4);
    b.configure_group(&t, &g, good)?;
    let mut c = good;
    c.retry.factor = 0.5;
    expect_kind(
        b.configure_group(&t, &g, c),
        ErrorKind::InvalidInput,
        "factor 0.5",
    )?;
    ensure_eq!(
        b.group_config(&t, &g),
        good,
        "the configuration in force after rejected ones"
    );
    Ok(())
}

async fn reset_unknown_id(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let g = cx.name("g");
    let sent = emit_n(b, &t, "e", 3).await?;
    let got = recv_n(b, &t, &g, 1, cx.prompt()).await?;
    ack_all(b, &t, &g, &got).await?;
    let r = within(
        cx.prompt(),
        "reset_group",
        b.reset_group(&t, &g, ReplayFrom::Id(MessageId::new())),
    )
    .await?;
    expect_kind(
        r,
        ErrorKind::NotFound,
        "reset to an id that is not in the log",
    )?;
    // The failed reset changed nothing: the group continues where it was.
    let rest = recv_n(b, &t, &g, 2, cx.prompt()).await?;
    ensure_eq!(
        ids(&rest),
        sent[1..].to_vec(),
        "the group continues where it was"
    );
    Ok(())
}
