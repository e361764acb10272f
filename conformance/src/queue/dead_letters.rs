//! Queue cases, Q6 dead letters: `queue::dead_letters::*`.

use std::time::Duration;

use bytes::Bytes;
use courier_core::{
    ErrorKind, FailureAction, Message, MessageId, Page, QueueExt, RetryPolicy, Selection, Settle,
};

use super::{LIMIT, SHORT, config_with, kinds, one, publish, publish_all, queue, settle};
use crate::{
    Case, Ctx, Outcome, case, ensure, ensure_eq, expect_nothing, plain_config, receive_n, summary,
    within,
};

pub(super) fn cases() -> Vec<Case> {
    vec![
        case!(
            "queue::dead_letters::out_of_attempts_recorded",
            ["Q6"],
            dead_recorded
        ),
        case!(
            "queue::dead_letters::permanent_failure_skips_retries",
            ["Q6"],
            permanent_skips
        ),
        case!(
            "queue::dead_letters::listed_oldest_first_and_paged",
            ["Q6"],
            dead_paged
        ),
        case!("queue::dead_letters::fetched_by_id", ["Q6"], dead_by_id),
        case!(
            "queue::dead_letters::listed_through_another_handle",
            ["Q6", "Q8"],
            dead_through_other_handle
        ),
        case!(
            "queue::dead_letters::unknown_id_is_not_found",
            ["Q6"],
            dead_unknown
        ),
        case!(
            "queue::dead_letters::requeue_all_resets_attempts_keeps_id",
            ["Q6"],
            requeue_all
        ),
        case!("queue::dead_letters::requeue_some", ["Q6"], requeue_some),
        case!("queue::dead_letters::purge_some_and_all", ["Q6"], purge),
        case!(
            "queue::dead_letters::requeued_joins_the_back_of_its_level",
            ["Q6", "Q2"],
            requeued_to_back
        ),
        case!(
            "queue::dead_letters::requeue_at_priority_joins_the_back_of_that_level",
            ["Q6", "Q2", "Q5"],
            requeued_at_priority
        ),
        case!(
            "queue::dead_letters::error_text_kept_verbatim",
            ["Q6"],
            error_verbatim
        ),
        case!(
            "queue::dead_letters::requeue_and_purge_all_beyond_a_page",
            ["Q6"],
            all_beyond_a_page
        ),
        case!(
            "queue::dead_letters::copies_of_one_id_are_selected_together",
            ["Q6"],
            copies_of_one_id
        ),
        case!(
            "queue::dead_letters::repeated_ids_count_once",
            ["Q6"],
            repeated_ids
        ),
        case!(
            "queue::dead_letters::disabled_discards",
            ["Q6", "Q9"],
            dead_disabled
        ),
    ]
}

/// Publish `n` messages and fail each permanently, in order; returns their ids.
async fn bury_n(cx: &Ctx, q: &str, n: usize) -> Result<Vec<MessageId>, crate::Failure> {
    let ids = publish_all(cx, q, kinds(n, "d")).await?;
    for (i, id) in ids.iter().enumerate() {
        let d = one(cx, q, LIMIT).await?;
        ensure_eq!(d.message.id, *id, "fifo");
        settle(
            cx,
            q,
            Settle::Bury {
                lease: d.lease,
                error: format!("error {i}"),
            },
        )
        .await?;
    }
    Ok(ids)
}

async fn dead_recorded(cx: Ctx) -> Outcome {
    let q = queue(
        &cx,
        "dead",
        config_with(
            RetryPolicy::exact(1, Duration::ZERO, 2.0, Duration::ZERO),
            Duration::from_secs(30),
        ),
    )?;
    let before = cx.q().clock().now_ms();
    let id = publish(
        &cx,
        &q,
        Message::new("bad", "payload").with_header("h", "v"),
    )
    .await?;
    let d = one(&cx, &q, LIMIT).await?;
    let action = within(LIMIT, "nack", cx.q().nack(&q, &d, "invalid input: no user")).await??;
    ensure_eq!(action, FailureAction::Dead, "out of attempts");
    let dl = within(LIMIT, "dead_letter", cx.q().dead_letter(&q, id)).await??;
    ensure_eq!(dl.error, "invalid input: no user", "last error");
    ensure_eq!(dl.attempts, 1, "attempts");
    ensure!(
        dl.failed_at + 5_000 >= before && dl.failed_at <= cx.q().clock().now_ms() + 5_000,
        "failed_at {} not near now {before}",
        dl.failed_at
    );
    ensure_eq!(
        dl.message.payload,
        Bytes::from_static(b"payload"),
        "payload kept"
    );
    ensure_eq!(dl.message.header("h"), Some("v"), "headers kept");
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!((s.dead, s.dead_lettered, s.in_flight), (1, 1, 0), "stats");
    Ok(())
}

async fn permanent_skips(cx: Ctx) -> Outcome {
    let q = queue(
        &cx,
        "perm",
        config_with(
            RetryPolicy::exact(10, Duration::ZERO, 2.0, Duration::ZERO),
            Duration::from_secs(30),
        ),
    )?;
    let id = publish(&cx, &q, Message::new("m", "")).await?;
    let d = one(&cx, &q, LIMIT).await?;
    let action = within(
        LIMIT,
        "fail",
        cx.q()
            .fail(&q, &d, "malformed", courier_core::FailureMode::Permanent),
    )
    .await??;
    ensure_eq!(
        action,
        FailureAction::Dead,
        "permanent failures are not retried"
    );
    expect_nothing(cx.q(), &q, SHORT).await?;
    let dl = within(LIMIT, "dead_letter", cx.q().dead_letter(&q, id)).await??;
    ensure_eq!(
        (dl.attempts, dl.error.as_str()),
        (1, "malformed"),
        "dead letter"
    );
    Ok(())
}

async fn dead_paged(cx: Ctx) -> Outcome {
    let q = queue(&cx, "paged", plain_config())?;
    let ids = bury_n(&cx, &q, 7).await?;
    let p1 = within(
        LIMIT,
        "dead_letters",
        cx.q().dead_letters(
            &q,
            Page {
                offset: 0,
                limit: 3,
            },
        ),
    )
    .await??;
    let p2 = within(
        LIMIT,
        "dead_letters",
        cx.q().dead_letters(
            &q,
            Page {
                offset: 3,
                limit: 3,
            },
        ),
    )
    .await??;
    let p3 = within(
        LIMIT,
        "dead_letters",
        cx.q().dead_letters(
            &q,
            Page {
                offset: 6,
                limit: 3,
            },
        ),
    )
    .await??;
    let p4 = within(
        LIMIT,
        "dead_letters",
        cx.q().dead_letters(
            &q,
            Page {
                offset: 9,
                limit: 3,
            },
        ),
    )
    .await??;
    let got: Vec<MessageId> = p1
        .iter()
        .chain(&p2)
        .chain(&p3)
        .map(|d| d.message.id)
        .collect();
    ensure_eq!(
        (p1.len(), p2.len(), p3.len(), p4.len()),
        (3, 3, 1, 0),
        "page sizes"
    );
    ensure_eq!(got, ids, "oldest first");
    ensure_eq!(p2[0].error, "error 3", "each keeps its error");
    Ok(())
}

async fn dead_by_id(cx: Ctx) -> Outcome {
    let q = queue(&cx, "byid", plain_config())?;
    let ids = bury_n(&cx, &q, 3).await?;
    let dl = within(LIMIT, "dead_letter", cx.q().dead_letter(&q, ids[1])).await??;
    ensure_eq!(
        (dl.message.id, dl.message.kind.as_str(), dl.error.as_str()),
        (ids[1], "d1", "error 1"),
        "fetched"
    );
    Ok(())
}

/// Dead letters are shared like stats (Q6, Q8): what one handle buried, another handle (as
/// another process would open it) lists and fetches at once, with no other call first.
async fn dead_through_other_handle(cx: Ctx) -> Outcome {
    let q = queue(&cx, "deadshared", plain_config())?;
    let ids = bury_n(&cx, &q, 2).await?;
    let other = within(LIMIT, "reopen", cx.factory.reopen(&cx.ns, &cx.backend)).await??;
    other.queue.configure(&q, plain_config())?;
    let listed = within(
        LIMIT,
        "dead_letters",
        other.queue.dead_letters(&q, Page::first(10)),
    )
    .await??;
    ensure_eq!(
        listed.iter().map(|d| d.message.id).collect::<Vec<_>>(),
        ids,
        "the other handle lists both dead letters, oldest first"
    );
    let dl = within(LIMIT, "dead_letter", other.queue.dead_letter(&q, ids[1])).await??;
    ensure_eq!(
        dl.error.as_str(),
        "error 1",
        "fetched through the other handle"
    );
    Ok(())
}

async fn dead_unknown(cx: Ctx) -> Outcome {
    let q = queue(&cx, "unknown", plain_config())?;
    bury_n(&cx, &q, 1).await?;
    let r = within(
        LIMIT,
        "dead_letter",
        cx.q().dead_letter(&q, MessageId::new()),
    )
    .await?;
    ensure_eq!(
        r.map(|_| ()).map_err(|e| e.kind()),
        Err(ErrorKind::NotFound),
        "unknown id"
    );
    let live = publish(&cx, &q, Message::new("live", "")).await?;
    let r = within(LIMIT, "dead_letter", cx.q().dead_letter(&q, live)).await?;
    ensure_eq!(
        r.map(|_| ()).map_err(|e| e.kind()),
        Err(ErrorKind::NotFound),
        "a live message is not a dead letter"
    );
    Ok(())
}

async fn requeue_all(cx: Ctx) -> Outcome {
    let q = queue(&cx, "requeue", plain_config())?;
    let ids = bury_n(&cx, &q, 3).await?;
    let n = within(LIMIT, "requeue", cx.q().requeue_dead(&q, Selection::All)).await??;
    ensure_eq!(n, 3, "requeued");
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!((s.dead, s.ready_total()), (0, 3), "stats after requeue");
    let got = receive_n(cx.q(), &q, 3, LIMIT).await?;
    let mut got_ids: Vec<MessageId> = got.iter().map(|d| d.message.id).collect();
    got_ids.sort();
    let mut want = ids.clone();
    want.sort();
    ensure_eq!(got_ids, want, "ids kept");
    ensure!(
        got.iter().all(|d| d.message.attempt == 1),
        "attempts reset: {:?}",
        summary(&got)
    );
    Ok(())
}

async fn requeue_some(cx: Ctx) -> Outcome {
    let q = queue(&cx, "rsome", plain_config())?;
    let ids = bury_n(&cx, &q, 4).await?;
    let n = within(
        LIMIT,
        "requeue",
        cx.q()
            .requeue_dead(&q, Selection::Ids(vec![ids[0], ids[2], MessageId::new()])),
    )
    .await??;
    ensure_eq!(n, 2, "only existing dead letters count");
    let left: Vec<MessageId> = within(LIMIT, "list", cx.q().dead_letters(&q, Page::first(10)))
        .await??
        .iter()
        .map(|d| d.message.id)
        .collect();
    ensure_eq!(left, vec![ids[1], ids[3]], "the others stay dead, in order");
    let got = receive_n(cx.q(), &q, 2, LIMIT).await?;
    let mut got_ids: Vec<MessageId> = got.iter().map(|d| d.message.id).collect();
    got_ids.sort();
    let mut want = vec![ids[0], ids[2]];
    want.sort();
    ensure_eq!(got_ids, want, "requeued ones delivered");
    Ok(())
}

async fn purge(cx: Ctx) -> Outcome {
    let q = queue(&cx, "purge", plain_config())?;
    let ids = bury_n(&cx, &q, 4).await?;
    let n = within(
        LIMIT,
        "purge",
        cx.q().purge_dead(&q, Selection::Ids(vec![ids[1], ids[3]])),
    )
    .await??;
    ensure_eq!(n, 2, "purged the two named");
    for gone in [ids[1], ids[3]] {
        let r = within(LIMIT, "dead_letter", cx.q().dead_letter(&q, gone)).await?;
        ensure_eq!(
            r.map(|_| ()).map_err(|e| e.kind()),
            Err(ErrorKind::NotFound),
            "purged is gone"
        );
    }
    let n = within(LIMIT, "purge", cx.q().purge_dead(&q, Selection::All)).await??;
    ensure_eq!(n, 2, "purged the rest");
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!((s.dead, s.stored()), (0, 0), "empty");
    expect_nothing(cx.q(), &q, SHORT).await
}

/// A requeued dead letter keeps its priority and queues behind the messages already waiting
/// at that level (Q6), ahead of lower levels (Q2).
async fn requeued_to_back(cx: Ctx) -> Outcome {
    let q = queue(&cx, "rqback", plain_config())?;
    let high = |k: &str| Message::new(k, "").with_priority(courier_core::Priority::High);
    publish_all(&cx, &q, vec![high("h1"), Message::new("n1", "")]).await?;
    let d = one(&cx, &q, LIMIT).await?;
    ensure_eq!(d.message.kind, "h1", "High first");
    settle(
        &cx,
        &q,
        Settle::Bury {
            lease: d.lease,
            error: "bad".into(),
        },
    )
    .await?;
    publish(&cx, &q, high("h2")).await?;
    let n = within(LIMIT, "requeue", cx.q().requeue_dead(&q, Selection::All)).await??;
    ensure_eq!(n, 1, "requeued");
    let got = receive_n(cx.q(), &q, 3, LIMIT).await?;
    let kinds: Vec<&str> = got.iter().map(|d| d.message.kind.as_str()).collect();
    ensure_eq!(
        kinds,
        vec!["h2", "h1", "n1"],
        "the requeued High message behind h2, ahead of Normal"
    );
    ensure_eq!(
        got[1].message.priority,
        courier_core::Priority::High,
        "priority kept"
    );
    Ok(())
}

/// `requeue_dead_at` moves dead letters to another level: to the back of its line, delivered
/// with that priority, and retried at it; the rest stay dead.
async fn requeued_at_priority(cx: Ctx) -> Outcome {
    use courier_core::Priority;
    let q = queue(&cx, "rqat", plain_config())?;
    let low = |k: &str| Message::new(k, "").with_priority(Priority::Low);
    let ids = publish_all(&cx, &q, vec![low("l1"), low("l2")]).await?;
    for d in receive_n(cx.q(), &q, 2, LIMIT).await? {
        let error = "bad".into();
        settle(
            &cx,
            &q,
            Settle::Bury {
                lease: d.lease,
                error,
            },
        )
        .await?;
    }
    let high = Message::new("h1", "").with_priority(Priority::High);
    publish_all(&cx, &q, vec![high, Message::new("n1", "")]).await?;
    let n = within(
        LIMIT,
        "requeue_dead_at",
        cx.q()
            .requeue_dead_at(&q, Selection::Ids(vec![ids[0]]), Priority::High),
    )
    .await??;
    ensure_eq!(n, 1, "one requeued");
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!(
        (s.ready, s.dead),
        ([0, 2, 1, 0], 1),
        "l1 counted at High, l2 still dead"
    );
    let got = receive_n(cx.q(), &q, 3, LIMIT).await?;
    let seen: Vec<(&str, Priority, u32)> = got
        .iter()
        .map(|d| {
            (
                d.message.kind.as_str(),
                d.message.priority,
                d.message.attempt,
            )
        })
        .collect();
    ensure_eq!(
        seen,
        vec![
            ("h1", Priority::High, 1),
            ("l1", Priority::High, 1),
            ("n1", Priority::Normal, 1)
        ],
        "l1 behind h1 at High, ahead of Normal, attempts reset"
    );
    // A retry keeps the new priority: l1 comes back ahead of a Normal message published first.
    publish(&cx, &q, Message::new("n2", "")).await?;
    let retry = Settle::Retry {
        lease: got[1].lease,
        delay: Duration::ZERO,
        error: "again".into(),
    };
    settle(&cx, &q, retry).await?;
    let d = one(&cx, &q, LIMIT).await?;
    ensure_eq!(
        (
            d.message.kind.as_str(),
            d.message.priority,
            d.message.attempt
        ),
        ("l1", Priority::High, 2),
        "the retried message stays at High"
    );
    let n = within(
        LIMIT,
        "requeue_dead_at",
        cx.q()
            .requeue_dead_at(&q, Selection::All, Priority::Critical),
    )
    .await??;
    ensure_eq!(n, 1, "the other one requeued");
    let d = one(&cx, &q, LIMIT).await?;
    ensure_eq!(
        (d.message.kind.as_str(), d.message.priority),
        ("l2", Priority::Critical),
        "l2 at Critical, first"
    );
    Ok(())
}

/// An id named twice in a selection is one dead letter: it is moved or deleted once and
/// counted once, and the other dead letters are untouched.
async fn repeated_ids(cx: Ctx) -> Outcome {
    let q = queue(&cx, "rep", plain_config())?;
    let ids = bury_n(&cx, &q, 3).await?;
    let n = within(
        LIMIT,
        "requeue",
        cx.q()
            .requeue_dead(&q, Selection::Ids(vec![ids[0], ids[0], ids[0]])),
    )
    .await??;
    ensure_eq!(n, 1, "one dead letter requeued, however often it is named");
    let n = within(
        LIMIT,
        "purge",
        cx.q().purge_dead(&q, Selection::Ids(vec![ids[2], ids[2]])),
    )
    .await??;
    ensure_eq!(n, 1, "one dead letter purged, however often it is named");
    // An empty list names nothing: it is not `Selection::All`.
    let n = within(
        LIMIT,
        "purge",
        cx.q().purge_dead(&q, Selection::Ids(vec![])),
    )
    .await??;
    ensure_eq!(n, 0, "an empty selection purges nothing");
    let n = within(
        LIMIT,
        "requeue",
        cx.q().requeue_dead(&q, Selection::Ids(vec![])),
    )
    .await??;
    ensure_eq!(n, 0, "an empty selection requeues nothing");
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!((s.dead, s.ready_total()), (1, 1), "stats after both");
    let left = within(LIMIT, "list", cx.q().dead_letters(&q, Page::first(10))).await??;
    let left: Vec<MessageId> = left.iter().map(|d| d.message.id).collect();
    ensure_eq!(left, vec![ids[1]], "only the one not named is still dead");
    let got = receive_n(cx.q(), &q, 1, LIMIT).await?;
    ensure_eq!(got[0].message.id, ids[0], "the requeued one, once");
    expect_nothing(cx.q(), &q, SHORT).await
}

/// The error is the caller's text, byte for byte: separators, quotes, new lines and non-ASCII
/// are not cut or escaped, whether the message was buried or ran out of attempts.
async fn error_verbatim(cx: Ctx) -> Outcome {
    let q = queue(
        &cx,
        "errtext",
        config_with(
            RetryPolicy::exact(1, Duration::ZERO, 2.0, Duration::ZERO),
            Duration::from_secs(30),
        ),
    )?;
    let texts = [
        "a|b|c; d,e\tf \"quoted\" 'single'\nsecond line\r\n",
        "ünïcödé ✓ 🚀 |",
    ];
    let ids = publish_all(&cx, &q, kinds(2, "e")).await?;
    // Time passes between publish and failure, so the failure time is told apart from it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = cx.q().clock().now_ms();
    let d = one(&cx, &q, LIMIT).await?;
    let error = texts[0].to_string();
    settle(
        &cx,
        &q,
        Settle::Bury {
            lease: d.lease,
            error,
        },
    )
    .await?;
    let d = one(&cx, &q, LIMIT).await?;
    let action = within(LIMIT, "nack", cx.q().nack(&q, &d, texts[1])).await??;
    ensure_eq!(action, FailureAction::Dead, "out of attempts");
    let after = cx.q().clock().now_ms();
    for (id, text) in ids.iter().zip(texts) {
        let dl = within(LIMIT, "dead_letter", cx.q().dead_letter(&q, *id)).await??;
        ensure_eq!(dl.error, text, "the error as given");
        ensure!(
            dl.failed_at + 5 >= before && dl.failed_at <= after + 5,
            "failed_at {} is not the failure time, between {before} and {after} (published at {})",
            dl.failed_at,
            dl.message.created_at
        );
    }
    Ok(())
}

/// `Selection::All` means every dead letter, however many: more than any page or chunk a
/// backend works in.
async fn all_beyond_a_page(cx: Ctx) -> Outcome {
    const N: usize = 2_100;
    let q = queue(&cx, "allmany", plain_config())?;
    let bury_all = |round: &'static str| {
        let cx = &cx;
        let q = &q;
        async move {
            let mut buried = 0;
            while buried < N {
                let got = receive_n(cx.q(), q, (N - buried).min(500), LIMIT).await?;
                let ops = got
                    .iter()
                    .map(|d| Settle::Bury {
                        lease: d.lease,
                        error: round.into(),
                    })
                    .collect::<Vec<_>>();
                let rs = within(LIMIT, "settle", cx.q().settle(q, ops)).await??;
                ensure!(rs.iter().all(|r| r.is_ok()), "{round}: every bury settles");
                buried += got.len();
            }
            Ok::<_, crate::Failure>(())
        }
    };
    publish_all(&cx, &q, kinds(N, "m")).await?;
    bury_all("first").await?;
    let n = within(LIMIT, "requeue", cx.q().requeue_dead(&q, Selection::All)).await??;
    ensure_eq!(n as usize, N, "requeued every dead letter");
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!(
        (s.dead, s.ready_total()),
        (0, N as u64),
        "stats after requeue"
    );
    bury_all("second").await?;
    let n = within(LIMIT, "purge", cx.q().purge_dead(&q, Selection::All)).await??;
    ensure_eq!(n as usize, N, "purged every dead letter");
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!((s.dead, s.stored()), (0, 0), "empty after the purge");
    Ok(())
}

/// Two copies published under one id (Courier does not deduplicate) die as two dead letters;
/// a selection naming the id acts on both.
async fn copies_of_one_id(cx: Ctx) -> Outcome {
    let q = queue(&cx, "dupdead", plain_config())?;
    let id = MessageId::new();
    let other = publish(&cx, &q, Message::new("other", "")).await?;
    for payload in ["first", "second"] {
        publish(&cx, &q, Message::new("dup", payload).with_id(id)).await?;
    }
    let bury_all = || async {
        let got = receive_n(cx.q(), &q, 3, LIMIT).await?;
        for d in got {
            let error = "x".to_string();
            settle(
                &cx,
                &q,
                Settle::Bury {
                    lease: d.lease,
                    error,
                },
            )
            .await?;
        }
        Ok::<_, crate::Failure>(())
    };
    bury_all().await?;
    let n = within(
        LIMIT,
        "requeue",
        cx.q().requeue_dead(&q, Selection::Ids(vec![id])),
    )
    .await??;
    ensure_eq!(n, 2, "both copies requeued by their one id");
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!(
        (s.dead, s.ready_total()),
        (1, 2),
        "(dead, ready) after the requeue"
    );
    let got = receive_n(cx.q(), &q, 2, LIMIT).await?;
    for d in got {
        ensure_eq!(d.message.id, id, "a requeued copy");
        let error = "y".to_string();
        settle(
            &cx,
            &q,
            Settle::Bury {
                lease: d.lease,
                error,
            },
        )
        .await?;
    }
    let n = within(
        LIMIT,
        "purge",
        cx.q().purge_dead(&q, Selection::Ids(vec![id])),
    )
    .await??;
    ensure_eq!(n, 2, "both copies purged by their one id");
    let left = within(LIMIT, "list", cx.q().dead_letters(&q, Page::first(10))).await??;
    let left: Vec<MessageId> = left.iter().map(|d| d.message.id).collect();
    ensure_eq!(left, vec![other], "only the other dead letter is left");
    Ok(())
}

async fn dead_disabled(cx: Ctx) -> Outcome {
    let mut config = config_with(
        RetryPolicy::exact(1, Duration::ZERO, 2.0, Duration::ZERO),
        Duration::from_secs(30),
    );
    config.dead_letter = false;
    let q = queue(&cx, "nodlq", config)?;
    publish(&cx, &q, Message::new("m", "")).await?;
    let d = one(&cx, &q, LIMIT).await?;
    within(LIMIT, "nack", cx.q().nack(&q, &d, "fail")).await??;
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!((s.dead, s.stored()), (0, 0), "discarded, not stored");
    ensure_eq!(s.dead_lettered, 1, "the final failure is still counted");
    let listed = within(LIMIT, "list", cx.q().dead_letters(&q, Page::first(10))).await??;
    ensure!(listed.is_empty(), "no dead letters kept");
    expect_nothing(cx.q(), &q, SHORT).await
}
