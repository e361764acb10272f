//! PubSub cases, P4 Patterns: `pubsub::patterns::*`.

use std::collections::{BTreeSet, HashSet};
use std::time::Instant;

use courier_core::Message;

use super::{QUIET, drain_quiet, next, publish, sub, until_kind};
use crate::{Case, Ctx, Failure, Outcome, case, ensure_eq};

pub(super) fn cases() -> Vec<Case> {
    vec![
        case!(
            "pubsub::patterns::star_matches_exactly_one_token",
            ["P4"],
            star_one_token
        ),
        case!(
            "pubsub::patterns::tail_matches_one_or_more_tokens",
            ["P4"],
            tail_one_or_more
        ),
        case!(
            "pubsub::patterns::exact_name_matches_only_itself",
            ["P4"],
            exact_only_itself
        ),
        case!(
            "pubsub::patterns::star_in_the_middle",
            ["P4"],
            star_in_middle
        ),
        case!(
            "pubsub::patterns::star_and_tail_combined",
            ["P4"],
            star_and_tail
        ),
    ]
}

/// Subscribe to `pattern` (relative to a root token unique to the case) and publish one message
/// to every channel in `matching` and `not_matching` (interleaved); the subscription must get
/// exactly the matching ones. A witness subscription to `root.>` proves that every publish was
/// delivered somewhere before the quiet period is judged.
async fn pattern_case(
    cx: &Ctx,
    pattern: &str,
    matching: &[&str],
    not_matching: &[&str],
) -> Outcome {
    let root = cx.name("p");
    let full = |s: &str| format!("{root}.{s}");
    let mut tested = sub(cx, &full(pattern)).await?;
    let mut witness = sub(cx, &format!("{root}.>")).await?;
    let mut all: Vec<String> = Vec::new();
    for i in 0..matching.len().max(not_matching.len()) {
        if let Some(c) = not_matching.get(i) {
            all.push(full(c));
        }
        if let Some(c) = matching.get(i) {
            all.push(full(c));
        }
    }
    for ch in &all {
        publish(cx, ch, Message::new(ch.clone(), "x")).await?;
    }
    // The witness sees every channel (each is below root): wait until all have arrived.
    let deadline = Instant::now() + cx.prompt();
    let mut seen = HashSet::new();
    while seen.len() < all.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = next(&mut witness, left, "the witness subscription (root.>)")
            .await
            .map_err(|f| {
                Failure(format!(
                    "{} — witness saw {} of {}: {seen:?}",
                    f.0,
                    seen.len(),
                    all.len()
                ))
            })?;
        seen.insert(m.kind);
    }
    // The sentinel goes to the first matching channel.
    let sentinel = "sentinel".to_string();
    let first = full(matching[0]);
    publish(cx, &first, Message::new(sentinel.clone(), "x")).await?;
    let mut got = until_kind(&mut tested, &sentinel, cx.prompt()).await?;
    got.pop();
    got.extend(drain_quiet(&mut tested, QUIET).await);
    let got: BTreeSet<String> = got.into_iter().map(|m| m.kind).collect();
    let want: BTreeSet<String> = matching.iter().map(|c| full(c)).collect();
    ensure_eq!(
        got,
        want,
        "pattern {:?}: received channels vs. the matching ones (not matching: {not_matching:?})",
        full(pattern)
    );
    Ok(())
}

async fn star_one_token(cx: Ctx) -> Outcome {
    pattern_case(
        &cx,
        "a.*",
        &["a.b", "a.c", "a.x-y_z"],
        &["a", "a.b.c", "b.x", "ab.x", "a.b.c.d", "A.b"],
    )
    .await
}

async fn tail_one_or_more(cx: Ctx) -> Outcome {
    pattern_case(
        &cx,
        "a.>",
        &["a.b", "a.b.c", "a.b.c.d.e"],
        &["a", "b.a", "ab.c", "b", "A.b.c"],
    )
    .await
}

async fn exact_only_itself(cx: Ctx) -> Outcome {
    pattern_case(
        &cx,
        "a.b",
        &["a.b"],
        &["a.bc", "a.b.c", "a", "ab", "a-b", "A.b", "b.a", "x.a.b"],
    )
    .await
}

async fn star_in_middle(cx: Ctx) -> Outcome {
    pattern_case(
        &cx,
        "*.c",
        &["x.c", "y.c", "c.c"],
        &["c", "x.y.c", "x.d", "x.c.d", "xc", "x.C"],
    )
    .await
}

async fn star_and_tail(cx: Ctx) -> Outcome {
    pattern_case(
        &cx,
        "a.*.c.>",
        &["a.x.c.d", "a.y.c.d.e"],
        &["a.x.c", "a.x.d.e", "a.c.d", "b.x.c.d", "a.x.y.c.d"],
    )
    .await
}
