//! A trace as an indented tree of spans, each line naming the service that ran the span.
//!
//! Every service wraps its handlers in a span named [`HANDLER_SPAN`] with a `service` field
//! (see `runtime.rs`). In the tree that wrapper is folded into its parent, the span Courier's
//! worker opened for the delivery (`courier.handle`), which then shows the service's name;
//! spans without a `service` of their own (a publish or emit inside a handler) show the
//! service of the span they ran in.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::time::SystemTime;

/// The name of the span every service's handler runs in.
pub const HANDLER_SPAN: &str = "service.handle";

/// The attribute naming who ran a span (a service, or the client in the demo's root span).
pub const SERVICE: &str = "service";

/// The attribute naming the part of a service that ran a handler (`media/recorder` on a
/// service's in-process bus); shown instead of `service` when present.
pub const HANDLER: &str = "handler";

/// One finished span, as the tree needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct SpanNode {
    /// The span's id.
    pub id: u64,
    /// Its parent's id; `None` for a root.
    pub parent: Option<u64>,
    /// The span's name (`courier.handle`, `join_meeting`, …).
    pub name: String,
    /// When it started (orders siblings).
    pub start: SystemTime,
    /// Its attributes, as text.
    pub attributes: BTreeMap<String, String>,
}

impl SpanNode {
    fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }

    fn who(&self) -> Option<&str> {
        self.attr(HANDLER).or_else(|| self.attr(SERVICE))
    }

    /// What the span was about: the message kind, its queue or topic when that says more,
    /// and the attempt when it was not the first.
    fn detail(&self) -> String {
        let mut out = String::new();
        let kind = self.attr("kind");
        if let Some(k) = kind {
            let _ = write!(out, " {k}");
        }
        let place = self
            .attr("queue")
            .or_else(|| self.attr("topic"))
            .or_else(|| self.attr("channel"));
        if let Some(p) = place.filter(|p| Some(*p) != kind) {
            let _ = write!(out, " ({p})");
        }
        if let Some(a) = self.attr("attempt").filter(|a| *a != "1" && *a != "0") {
            let _ = write!(out, " attempt {a}");
        }
        out
    }
}

/// A rendered trace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tree {
    /// One line per span, indented two spaces per level.
    pub text: String,
    /// The spans shown (handler wrappers folded into their parents are not counted).
    pub spans: usize,
    /// Who ran the spans, in order of first appearance.
    pub services: Vec<String>,
}

/// Render `spans` (one trace) as a tree. Spans whose parent is not among them are roots.
pub fn render(spans: &[SpanNode]) -> Tree {
    let by_id: HashMap<u64, usize> = spans.iter().enumerate().map(|(i, s)| (s.id, i)).collect();
    let parent_of = |i: usize| spans[i].parent.and_then(|p| by_id.get(&p).copied());
    // A handler wrapper with a parent folds into it: the parent takes its service, the
    // wrapper's children become the parent's.
    let folded = |i: usize| spans[i].name == HANDLER_SPAN && parent_of(i).is_some();
    let mut service_of: HashMap<usize, &str> = HashMap::new();
    for i in (0..spans.len()).filter(|&i| folded(i)) {
        if let (Some(p), Some(who)) = (parent_of(i), spans[i].who()) {
            service_of.entry(p).or_insert(who);
        }
    }
    let shown_parent = |mut i: usize| {
        while let Some(p) = parent_of(i) {
            if !folded(p) {
                return Some(p);
            }
            i = p;
        }
        None
    };
    let mut children: BTreeMap<Option<usize>, Vec<usize>> = BTreeMap::new();
    for i in (0..spans.len()).filter(|&i| !folded(i)) {
        children.entry(shown_parent(i)).or_default().push(i);
    }
    for list in children.values_mut() {
        list.sort_by(|&a, &b| {
            (spans[a].start, &spans[a].name, spans[a].id).cmp(&(
                spans[b].start,
                &spans[b].name,
                spans[b].id,
            ))
        });
    }
    let mut tree = Tree::default();
    let mut seen = BTreeSet::new();
    let mut stack: Vec<(usize, usize, String)> = children
        .get(&None)
        .map(|roots| {
            roots
                .iter()
                .rev()
                .map(|&r| (r, 0, "?".to_string()))
                .collect()
        })
        .unwrap_or_default();
    while let Some((i, depth, inherited)) = stack.pop() {
        let s = &spans[i];
        let who = service_of
            .get(&i)
            .copied()
            .or_else(|| s.who())
            .map_or(inherited, str::to_string);
        let _ = writeln!(
            tree.text,
            "{:indent$}{who}: {}{}",
            "",
            s.name,
            s.detail(),
            indent = depth * 2
        );
        tree.spans += 1;
        if seen.insert(who.clone()) {
            tree.services.push(who.clone());
        }
        if let Some(kids) = children.get(&Some(i)) {
            for &k in kids.iter().rev() {
                stack.push((k, depth + 1, who.clone()));
            }
        }
    }
    tree
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn node(id: u64, parent: Option<u64>, name: &str, at: u64, attrs: &[(&str, &str)]) -> SpanNode {
        SpanNode {
            id,
            parent,
            name: name.into(),
            start: SystemTime::UNIX_EPOCH + Duration::from_millis(at),
            attributes: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn handler_wrappers_fold_into_the_delivery_span_and_name_its_service() {
        let spans = [
            node(1, None, "join_meeting", 0, &[("service", "client:alice")]),
            node(
                2,
                Some(1),
                "courier.publish",
                1,
                &[("kind", "meeting_user_join"), ("queue", "svc.meeting")],
            ),
            node(
                3,
                Some(2),
                "courier.handle",
                2,
                &[("kind", "meeting_user_join"), ("attempt", "1")],
            ),
            node(4, Some(3), HANDLER_SPAN, 3, &[("service", "meeting")]),
            // Emitted by meeting's handler: meeting ran it.
            node(
                5,
                Some(4),
                "courier.emit",
                4,
                &[
                    ("kind", "meeting.user_joined"),
                    ("topic", "meeting.user_joined"),
                ],
            ),
            // media started later than user but is listed by start time, not by id.
            node(
                8,
                Some(5),
                "courier.handle",
                7,
                &[("kind", "meeting.user_joined")],
            ),
            node(9, Some(8), HANDLER_SPAN, 7, &[("service", "media")]),
            node(
                6,
                Some(5),
                "courier.handle",
                5,
                &[("kind", "meeting.user_joined"), ("attempt", "2")],
            ),
            node(
                7,
                Some(6),
                HANDLER_SPAN,
                6,
                &[("service", "user"), ("handler", "user")],
            ),
            // A local-bus handler shows its component.
            node(
                10,
                Some(4),
                "courier.handle",
                8,
                &[("kind", "meeting.roster")],
            ),
            node(
                11,
                Some(10),
                HANDLER_SPAN,
                8,
                &[("service", "meeting"), ("handler", "meeting/analytics")],
            ),
        ];
        let tree = render(&spans);
        assert_eq!(
            tree.text,
            "client:alice: join_meeting\n\
             \x20 client:alice: courier.publish meeting_user_join (svc.meeting)\n\
             \x20   meeting: courier.handle meeting_user_join\n\
             \x20     meeting: courier.emit meeting.user_joined\n\
             \x20       user: courier.handle meeting.user_joined attempt 2\n\
             \x20       media: courier.handle meeting.user_joined\n\
             \x20     meeting/analytics: courier.handle meeting.roster\n"
        );
        assert_eq!(tree.spans, 7);
        assert_eq!(
            tree.services,
            [
                "client:alice",
                "meeting",
                "user",
                "media",
                "meeting/analytics"
            ]
        );
    }

    #[test]
    fn spans_whose_parent_is_missing_are_roots_and_a_lone_wrapper_is_shown() {
        let spans = [
            node(2, Some(99), "courier.handle", 2, &[("kind", "user_login")]),
            node(3, None, HANDLER_SPAN, 1, &[("service", "ai")]),
        ];
        let tree = render(&spans);
        assert_eq!(
            tree.text,
            "ai: service.handle\n?: courier.handle user_login\n"
        );
        assert_eq!(render(&[]), Tree::default());
    }
}
