//! Key names. Every key of one queue shares the hash tag `{<prefix>:q:<queue>}`, and every key
//! of one topic (its log and all its consumer groups) shares `{<prefix>:t:<topic>}`, so each
//! queue or topic lives in one Redis Cluster slot and its scripts may touch all of its keys.
//! Scripts receive every key they touch in `KEYS` (see `scripts/lib.lua` for the layout).
//!
//! The state keys of queues and groups carry the layout version ([`LAYOUT`]): a layout change
//! gets new keys, so a newer Courier never misreads what an older one stored (and an older
//! one's data stays where it was, for the operator to drain with that version).

/// The version of the state layout (see `scripts/lib.lua`). 2: entries are wire bytes,
/// leases are a hash of tokens with deadlines per claim batch. (A queue's deduplication keys,
/// Q11, are two keys more; they change none of the others, so the layout stays 2.)
pub(crate) const LAYOUT: &str = "v2";

/// The state keys after the four ready lists, in the order of `scripts/lib.lua`.
const SUFFIXES: [&str; 11] = [
    "msgs",
    "info",
    "delayed",
    "leased",
    "dead",
    "deadidx",
    "deadinfo",
    "counters",
    "wake",
    "deadlines",
    "batches",
];

/// The keys only a queue has, after [`SUFFIXES`]: its deduplication keys' holders and their
/// windows (Q11), its control hash (pause and rate limit, Q14/Q15) and its rate-limit window
/// count (Q15). A group's 16th key is its topic's log instead, and its 17th its control hash.
/// (Flow control only adds keys; none of the others changes, so the layout stays 2.)
const QUEUE_SUFFIXES: [&str; 4] = ["dedup", "holds", "ctl", "rate"];

/// The 19 keys of a queue, in the order of `scripts/lib.lua`.
pub(crate) fn queue(prefix: &str, queue: &str) -> Vec<String> {
    let tag = format!("{{{prefix}:q:{queue}}}:{LAYOUT}");
    let mut v: Vec<String> = (0..4).map(|p| format!("{tag}:ready:{p}")).collect();
    for suffix in SUFFIXES.into_iter().chain(QUEUE_SUFFIXES) {
        v.push(format!("{tag}:{suffix}"));
    }
    v
}

/// Index of the Normal ready list and the counters in [`queue`].
pub(crate) const QUEUE_READY_NORMAL: usize = 2;
/// See [`QUEUE_READY_NORMAL`].
pub(crate) const QUEUE_COUNTERS: usize = 11;

/// The wake-up list of a queue (index 12 of [`queue`]).
pub(crate) const QUEUE_WAKE: usize = 12;

/// The control hash of a queue (index 17 of [`queue`]): `paused` while paused (Q14), `max`
/// and `per` (ms) while rate-limited (Q15). Absent when neither, so a claim on an unpaused,
/// unlimited queue reads one key that does not exist.
#[cfg(test)]
pub(crate) const QUEUE_CTL: usize = 17;

/// A topic's log (a stream).
pub(crate) fn log(prefix: &str, topic: &str) -> String {
    format!("{{{prefix}:t:{topic}}}:log")
}

/// The 17 keys of a consumer group on a topic, in the order of `scripts/lib.lua`: the group's
/// one ready list four times, its own state keys, the topic's log, then the group's control
/// hash (`paused`, E8; kept by a reset, and not a consumer group of the log: pausing a group
/// that does not exist yet does not create it).
pub(crate) fn group(prefix: &str, topic: &str, group: &str) -> Vec<String> {
    let base = format!("{{{prefix}:t:{topic}}}:g:{group}:{LAYOUT}");
    let ready = format!("{base}:ready");
    let mut v = vec![ready.clone(), ready.clone(), ready.clone(), ready];
    for suffix in SUFFIXES {
        v.push(format!("{base}:{suffix}"));
    }
    v.push(log(prefix, topic));
    v.push(format!("{base}:ctl"));
    v
}

/// The wake-up stream of a group (index 12 of [`group`]) and the log (index 15).
pub(crate) const GROUP_WAKE: usize = 12;
/// See [`GROUP_WAKE`].
pub(crate) const GROUP_LOG: usize = 15;

/// A `SCAN` pattern matching one key of every queue that was published to (its counters,
/// which a publish creates and nothing removes), for listing (Q13).
pub(crate) fn queue_scan(prefix: &str) -> String {
    format!("{{{prefix}:q:*}}:{LAYOUT}:counters")
}

/// The queue a [`queue_scan`] key belongs to; `None` for a key of another prefix that the
/// pattern also matched (a longer prefix makes a name with `:`, which no queue has).
pub(crate) fn queue_of<'k>(prefix: &str, key: &'k str) -> Option<&'k str> {
    let name = key
        .strip_prefix(&format!("{{{prefix}:q:"))?
        .strip_suffix(&format!("}}:{LAYOUT}:counters"))?;
    courier_core::names::validate_name("name", name)
        .ok()
        .map(|()| name)
}

/// A `SCAN` pattern matching every topic's log (an emit or a group creates it, E7).
pub(crate) fn topic_scan(prefix: &str) -> String {
    format!("{{{prefix}:t:*}}:log")
}

/// The topic a [`topic_scan`] key belongs to (see [`queue_of`]).
pub(crate) fn topic_of<'k>(prefix: &str, key: &'k str) -> Option<&'k str> {
    let name = key
        .strip_prefix(&format!("{{{prefix}:t:"))?
        .strip_suffix("}:log")?;
    courier_core::names::validate_name("name", name)
        .ok()
        .map(|()| name)
}

/// What the Redis channel of every pub/sub channel starts with (pub/sub channels are not per
/// database, so the prefix also isolates them): `<prefix>:ps:`, and on a cluster
/// `{<prefix>:ps}:`, whose hash tag sends every `PUBLISH` of the prefix to one master, the one
/// the subscriber connection uses (see `pubsub::Nodes`).
pub(crate) fn channels(prefix: &str, cluster: bool) -> String {
    if cluster {
        format!("{{{prefix}:ps}}:")
    } else {
        format!("{prefix}:ps:")
    }
}

/// Check a key prefix: 1–100 bytes of `A–Z a–z 0–9 _ - . :`. Braces (hash tags) and glob
/// characters (pub/sub patterns) are refused.
pub(crate) fn validate_prefix(prefix: &str) -> courier_core::Result<()> {
    let ok = !prefix.is_empty()
        && prefix.len() <= 100
        && prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'));
    if ok {
        Ok(())
    } else {
        Err(courier_core::Error::invalid(format!(
            "key prefix {prefix:?} must be 1-100 bytes of A-Z a-z 0-9 _ - . :"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot_tag(key: &str) -> &str {
        let open = key.find('{').expect("tag");
        let close = key[open..].find('}').expect("tag end") + open;
        &key[open + 1..close]
    }

    #[test]
    fn queue_keys_share_one_tag() {
        let k = queue("app", "tasks.high");
        assert_eq!(k.len(), 19);
        assert!(k.iter().all(|key| slot_tag(key) == "app:q:tasks.high"));
        assert!(k[15].ends_with(":dedup") && k[16].ends_with(":holds"));
        assert!(k[QUEUE_CTL].ends_with(":ctl") && k[18].ends_with(":rate"));
        assert!(k[QUEUE_WAKE].ends_with(":wake"));
        assert!(k[QUEUE_COUNTERS].ends_with(":counters"));
        assert!(k[QUEUE_READY_NORMAL].ends_with(":ready:2"));
    }

    #[test]
    fn group_keys_share_the_topic_tag() {
        let k = group("app", "meeting.created", "billing");
        assert_eq!(k.len(), 17);
        assert!(k.iter().all(|key| slot_tag(key) == "app:t:meeting.created"));
        assert_eq!(k[GROUP_LOG], log("app", "meeting.created"));
        assert!(k[16].ends_with(":g:billing:v2:ctl"));
        assert!(k[GROUP_WAKE].ends_with(":wake"));
    }

    #[test]
    fn listing_patterns_find_names_of_their_prefix_only() {
        let counters = &queue("app", "orders")[QUEUE_COUNTERS];
        assert_eq!(queue_of("app", counters), Some("orders"));
        assert_eq!(queue_scan("app"), "{app:q:*}:v2:counters");
        // The pattern of prefix `app` also matches the keys of prefix `app:q`; they are skipped.
        assert_eq!(
            queue_of("app", &queue("app:q", "orders")[QUEUE_COUNTERS]),
            None
        );
        assert_eq!(queue_of("app", &queue("app", "orders")[0]), None);
        assert_eq!(
            topic_of("app", &log("app", "meeting.events")),
            Some("meeting.events")
        );
        assert_eq!(topic_of("app", &log("app:t", "x")), None);
    }

    #[test]
    fn prefixes_are_checked() {
        assert!(validate_prefix("courier:test-1.x").is_ok());
        for bad in ["", "a{b}", "a*", "a b", &"x".repeat(101)] {
            assert!(validate_prefix(bad).is_err(), "{bad}");
        }
    }
}
