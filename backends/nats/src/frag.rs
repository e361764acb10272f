//! Records and pub/sub messages larger than the server's `max_payload` (1 MiB by default,
//! which a 1 MiB Courier payload plus its envelope always exceeds) travel as fragments: NATS
//! messages with a `Courier-Frag: <id> <index> <count>` header, published in order by one
//! proposer and put back together by every reader. A record counts as appended when its last
//! fragment is; one whose proposer died part-way is never completed and never applied.

use std::collections::HashMap;

use async_nats::HeaderMap;
use bytes::{Bytes, BytesMut};

/// The header naming a fragment.
pub(crate) const HEADER: &str = "Courier-Frag";

/// Room left in a fragment for the header and the protocol's own overhead.
const OVERHEAD: usize = 1024;

/// Incomplete fragment sets a reader keeps at most (older ones are dropped).
const MAX_PENDING: usize = 256;

/// Split `payload` for a server whose messages hold at most `max_payload` bytes: `None` when
/// it fits in one message, else the fragments with their headers, in order.
pub(crate) fn split(payload: &Bytes, max_payload: usize) -> Option<Vec<(HeaderMap, Bytes)>> {
    let chunk = max_payload.saturating_sub(OVERHEAD).max(1);
    if payload.len() <= chunk {
        return None;
    }
    let id = courier_core::MessageId::new();
    let count = payload.len().div_ceil(chunk);
    Some(
        (0..count)
            .map(|i| {
                let mut h = HeaderMap::new();
                h.insert(HEADER, format!("{id} {i} {count}").as_str());
                let end = ((i + 1) * chunk).min(payload.len());
                (h, payload.slice(i * chunk..end))
            })
            .collect(),
    )
}

/// Puts fragments back together, in the order they are read.
#[derive(Default)]
pub(crate) struct Reassembler {
    /// Per fragment set: the parts so far, and when (in reads) it started.
    pending: HashMap<String, (Vec<Bytes>, u64)>,
    reads: u64,
}

impl Reassembler {
    /// The whole payload when this message completes one (or is not a fragment at all);
    /// `None` while parts are missing, or for a fragment out of order (its set is dropped).
    pub(crate) fn push(&mut self, headers: Option<&HeaderMap>, payload: Bytes) -> Option<Bytes> {
        self.reads += 1;
        let Some(value) = headers.and_then(|h| h.get(HEADER)) else {
            return Some(payload);
        };
        let mut parts = value.as_str().split(' ');
        let (Some(id), Some(index), Some(count)) = (parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let (Ok(index), Ok(count)) = (index.parse::<usize>(), count.parse::<usize>()) else {
            return None;
        };
        let reads = self.reads;
        let entry = self
            .pending
            .entry(id.to_owned())
            .or_insert_with(|| (Vec::new(), reads));
        if entry.0.len() != index {
            self.pending.remove(id);
            return None;
        }
        entry.0.push(payload);
        if entry.0.len() < count {
            if self.pending.len() > MAX_PENDING {
                self.drop_oldest();
            }
            return None;
        }
        let (parts, _) = self.pending.remove(id)?;
        let mut whole = BytesMut::with_capacity(parts.iter().map(Bytes::len).sum());
        for p in parts {
            whole.extend_from_slice(&p);
        }
        Some(whole.freeze())
    }

    fn drop_oldest(&mut self) {
        if let Some(oldest) = self
            .pending
            .iter()
            .min_by_key(|(_, (_, at))| *at)
            .map(|(id, _)| id.clone())
        {
            self.pending.remove(&oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_payloads_come_back_whole_and_small_ones_pass_through() {
        let big = Bytes::from(
            (0..10_000u32)
                .flat_map(|i| i.to_be_bytes())
                .collect::<Vec<u8>>(),
        );
        let frags = split(&big, 4096).expect("split");
        assert_eq!(frags.len(), big.len().div_ceil(4096 - OVERHEAD));
        let mut r = Reassembler::default();
        let small = Bytes::from_static(b"small");
        let mut got = Vec::new();
        for (i, (h, p)) in frags.into_iter().enumerate() {
            // Another proposer's whole record in between.
            if i == 1 {
                assert_eq!(r.push(None, small.clone()), Some(small.clone()));
            }
            if let Some(whole) = r.push(Some(&h), p) {
                got.push(whole);
            }
        }
        assert_eq!(got, vec![big]);
        assert!(split(&small, 4096).is_none());
    }

    #[test]
    fn a_set_missing_its_start_is_never_completed() {
        let big = Bytes::from(vec![7u8; 9000]);
        let frags = split(&big, 4096).expect("split");
        let mut r = Reassembler::default();
        for (h, p) in frags.into_iter().skip(1) {
            assert_eq!(r.push(Some(&h), p), None);
        }
    }
}
