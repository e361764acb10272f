//! Queue cases, Q10 bad input: `queue::bad_input::*`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use courier_core::{ErrorKind, Message, QueueExt, Settle};

use super::{LIMIT, one, publish, queue, settle};
use crate::{
    Case, Ctx, Outcome, case, ensure, ensure_eq, plain_config, receive_n, stats_until, within,
};

pub(super) fn cases() -> Vec<Case> {
    vec![
        case!("queue::bad_input::invalid_queue_names", ["Q10"], bad_names),
        case!("queue::bad_input::oversize_payload", ["Q10"], oversize),
        case!("queue::bad_input::bad_config", ["Q10"], bad_config),
        case!(
            "queue::bad_input::undecodable_entry_dead_lettered",
            ["Q10"],
            undecodable
        ),
    ]
}

async fn bad_names(cx: Ctx) -> Outcome {
    let long = "x".repeat(201);
    for bad in [
        "",
        ".lead",
        "trail.",
        "two..dots",
        "sp ace",
        "star*",
        "gt>",
        "sla/sh",
        long.as_str(),
        "uni\u{e9}",
    ] {
        let r = within(LIMIT, "publish", cx.q().publish(bad, Message::new("k", ""))).await?;
        ensure_eq!(
            r.map(|_| ()).map_err(|e| e.kind()),
            Err(ErrorKind::InvalidInput),
            "publish to {bad:?}"
        );
        let r = within(LIMIT, "receive", cx.q().receive(bad, 1, Duration::ZERO)).await?;
        ensure_eq!(
            r.map(|_| ()).map_err(|e| e.kind()),
            Err(ErrorKind::InvalidInput),
            "receive from {bad:?}"
        );
        let r = cx.q().configure(bad, plain_config());
        ensure_eq!(
            r.map_err(|e| e.kind()),
            Err(ErrorKind::InvalidInput),
            "configure {bad:?}"
        );
    }
    let ok = cx.name("Valid_name-1.with.tokens");
    publish(&cx, &ok, Message::new("k", "")).await?;
    Ok(())
}

async fn oversize(cx: Ctx) -> Outcome {
    let mut config = plain_config();
    config.max_payload = 2048;
    let q = queue(&cx, "big", config)?;
    let r = within(
        LIMIT,
        "publish",
        cx.q().publish(&q, Message::new("k", vec![1u8; 2049])),
    )
    .await?;
    let e = match r {
        Ok(_) => return Err(crate::Failure("an oversize payload was accepted".into())),
        Err(e) => e,
    };
    ensure_eq!(e.kind(), ErrorKind::PayloadTooLarge, "kind");
    ensure!(
        e.to_string().contains("2049") || e.to_string().contains("2048"),
        "the error names the sizes: {e}"
    );
    publish(&cx, &q, Message::new("k", vec![1u8; 2048])).await?;
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!(s.published, 1, "only the fitting one stored");
    Ok(())
}

async fn bad_config(cx: Ctx) -> Outcome {
    let q = cx.name("badcfg");
    let mut configs = Vec::new();
    let mut c = plain_config();
    c.visibility_timeout = Duration::ZERO;
    configs.push(("zero visibility", c));
    let mut c = plain_config();
    c.retry.max_attempts = 0;
    configs.push(("zero attempts", c));
    let mut c = plain_config();
    c.retry.jitter = 1.5;
    configs.push(("jitter > 1", c));
    let mut c = plain_config();
    c.retry.factor = 0.5;
    configs.push(("factor < 1", c));
    let mut c = plain_config();
    c.retry.base = Duration::from_secs(10);
    c.retry.max_delay = Duration::from_secs(1);
    configs.push(("base > max_delay", c));
    for (what, c) in configs {
        let r = cx.q().configure(&q, c);
        ensure_eq!(
            r.map_err(|e| e.kind()),
            Err(ErrorKind::InvalidInput),
            "{what}"
        );
    }
    // The queue keeps working with its previous (default) configuration.
    publish(&cx, &q, Message::new("k", "")).await?;
    let d = one(&cx, &q, LIMIT).await?;
    settle(&cx, &q, Settle::Ack(d.lease)).await?;
    Ok(())
}

/// Bytes no backend can decode as a message.
const JUNK: &[u8] = b"\x00not a courier message\xff";

async fn undecodable(cx: Ctx) -> Outcome {
    let q = queue(&cx, "corrupt", plain_config())?;
    publish(&cx, &q, Message::new("before", "")).await?;
    let injected = within(
        LIMIT,
        "inject",
        cx.factory.inject_undecodable(&cx.backend, &q, JUNK),
    )
    .await??;
    publish(&cx, &q, Message::new("after", "")).await?;
    let Some(bad) = injected else {
        println!(
            "{}: stores typed values, nothing can fail to decode; checking the queue still works",
            cx.factory.name()
        );
        let got = receive_n(cx.q(), &q, 2, LIMIT).await?;
        ensure_eq!(got.len(), 2, "both delivered");
        return Ok(());
    };
    // The consumer keeps running: both good messages arrive, the bad entry never does.
    let mut kinds = Vec::new();
    let deadline = Instant::now() + LIMIT;
    while kinds.len() < 2 && Instant::now() < deadline {
        let got = within(
            LIMIT,
            "receive",
            cx.q().receive(&q, 10, Duration::from_millis(200)),
        )
        .await?;
        let got = got.map_err(|e| {
            crate::Failure(format!(
                "receive failed on an undecodable entry instead of dead-lettering it: {e}"
            ))
        })?;
        for d in got {
            ensure!(d.message.id != bad, "the undecodable entry was delivered");
            kinds.push(d.message.kind.clone());
            settle(&cx, &q, Settle::Ack(d.lease)).await?;
        }
    }
    ensure_eq!(
        kinds,
        vec!["before".to_string(), "after".to_string()],
        "good messages around the bad one"
    );
    let (s, ok) = stats_until(cx.q(), &q, LIMIT, |s| s.dead == 1).await?;
    ensure!(ok, "the undecodable entry is not in dead letters: {s:?}");
    let dl = within(LIMIT, "dead_letter", cx.q().dead_letter(&q, bad)).await??;
    // The same junk gives the same dead letter on every backend: the reason is core's
    // wording around the error of decoding exactly the stored bytes, after one attempt.
    let want = match courier_core::wire::decode(&Bytes::from_static(JUNK)) {
        Err(e) => courier_core::backend::undecodable_reason(&e),
        Ok(m) => return Err(crate::Failure(format!("the junk decodes: {m:?}"))),
    };
    ensure_eq!(dl.error, want, "the dead letter carries the decode error");
    ensure_eq!(dl.message.id, bad, "the dead letter keeps the entry's id");
    let listed = within(
        LIMIT,
        "dead_letters",
        cx.q().dead_letters(&q, courier_core::Page::first(10)),
    )
    .await??;
    ensure_eq!(
        listed.iter().map(|d| d.message.id).collect::<Vec<_>>(),
        vec![bad],
        "listed under the entry's id"
    );
    ensure_eq!(
        dl.attempts,
        1,
        "an undecodable entry fails on its one attempt"
    );
    Ok(())
}
