//! The one versioned binary encoding of [`Message`] (see `docs/wire-format.md`).
//!
//! Every backend that stores bytes stores exactly this, so a message written by one service
//! (or one backend's tool) is readable by every other. All integers are big-endian.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{Error, Result};
use crate::message::{Headers, Message, MessageId, Priority};

/// First byte of every encoded message.
pub const MAGIC: u8 = 0xC7;
/// The format version written by this crate for a message without optional fields (no
/// deduplication key, no expiry): byte-identical to every earlier release.
pub const VERSION: u8 = 1;
/// The format version written for a message with optional fields (a deduplication key, Q11;
/// an expiry):
/// version 1's layout, then the **extension**: tagged fields (`tag u8, length u16, value`),
/// then the extension's length (u16) as the last two bytes, so a reader (a Redis script) finds
/// the fields from the end without parsing the rest. Readers skip tags they do not know, so a
/// new optional field needs a new tag, not a new version.
pub const VERSION_KEYED: u8 = 2;

/// Extension tag of the deduplication key (UTF-8).
pub const TAG_DEDUP_KEY: u8 = 1;
/// Extension tag of the expiry instant ([`Message::expires_at`], ms since the epoch, u64).
pub const TAG_EXPIRES_AT: u8 = 2;

const FIXED_LEN: usize = 2 + 16 + 1 + 4 + 4 + 8 + 8;

/// Encode a message. The relative `delay` must already be resolved into `not_before`
/// ([`Message::prepare_for_publish`]); an unresolved delay is not encoded.
///
/// # Errors
/// [`crate::ErrorKind::InvalidInput`] when the kind, a header or the payload exceed the
/// format's length fields (64 KiB kind and header keys, 4 GiB values and payload).
pub fn encode(msg: &Message) -> Result<Bytes> {
    let headers_len: usize = msg
        .headers
        .iter()
        .map(|(k, v)| 2 + k.len() + 4 + v.len())
        .sum();
    let mut buf = BytesMut::with_capacity(
        FIXED_LEN + 2 + msg.kind.len() + 2 + headers_len + 4 + msg.payload.len(),
    );
    let key = msg.dedup_key.as_deref().map(str::as_bytes);
    if let Some(k) = key
        && k.len() > u16::MAX as usize
    {
        return Err(Error::invalid("dedup key longer than 65535 bytes"));
    }
    buf.put_u8(MAGIC);
    let expires = msg.expires_at;
    buf.put_u8(if key.is_some() || expires.is_some() {
        VERSION_KEYED
    } else {
        VERSION
    });
    buf.put_slice(msg.id.as_bytes());
    buf.put_u8(msg.priority as u8);
    buf.put_u32(msg.attempt);
    buf.put_u32(msg.max_attempts.unwrap_or(0));
    buf.put_u64(msg.created_at);
    buf.put_u64(msg.not_before.unwrap_or(0));
    put_short(&mut buf, msg.kind.as_bytes(), "kind")?;
    let count = u16::try_from(msg.headers.len())
        .map_err(|_| Error::invalid("more than 65535 headers cannot be encoded"))?;
    buf.put_u16(count);
    for (k, v) in &msg.headers {
        put_short(&mut buf, k.as_bytes(), "header name")?;
        put_long(&mut buf, v.as_bytes(), "header value")?;
    }
    put_long(&mut buf, &msg.payload, "payload")?;
    if key.is_some() || expires.is_some() {
        // The extension: its fields, then its length. A key is at most 200 bytes (checked at
        // publish), so the fields and the extension fit their u16 lengths.
        let field = key.map_or(0, |k| 3 + k.len()) + expires.map_or(0, |_| 3 + 8);
        let ext = u16::try_from(field)
            .map_err(|_| Error::invalid("dedup key longer than 65521 bytes"))?;
        if let Some(k) = key {
            buf.put_u8(TAG_DEDUP_KEY);
            buf.put_u16(k.len() as u16);
            buf.put_slice(k);
        }
        if let Some(at) = expires {
            buf.put_u8(TAG_EXPIRES_AT);
            buf.put_u16(8);
            buf.put_u64(at);
        }
        buf.put_u16(ext);
    }
    Ok(buf.freeze())
}

fn put_short(buf: &mut BytesMut, b: &[u8], what: &str) -> Result<()> {
    let n = u16::try_from(b.len())
        .map_err(|_| Error::invalid(format!("{what} longer than 65535 bytes")))?;
    buf.put_u16(n);
    buf.put_slice(b);
    Ok(())
}

fn put_long(buf: &mut BytesMut, b: &[u8], what: &str) -> Result<()> {
    let n =
        u32::try_from(b.len()).map_err(|_| Error::invalid(format!("{what} longer than 4 GiB")))?;
    buf.put_u32(n);
    buf.put_slice(b);
    Ok(())
}

/// A copy of the encoded message `data` with its priority byte (offset 18) set to `priority`,
/// for a backend that changes a stored message's priority without decoding it (a requeue at
/// another priority). `None` when `data` is not a Courier message of a known version (junk
/// stays as it is).
pub fn with_priority(data: &[u8], priority: Priority) -> Option<Bytes> {
    if data.len() < FIXED_LEN
        || data[0] != MAGIC
        || (data[1] != VERSION && data[1] != VERSION_KEYED)
    {
        return None;
    }
    let mut b = BytesMut::from(data);
    b[PRIORITY_OFFSET] = priority.index() as u8;
    Some(b.freeze())
}

/// The offset of the priority byte.
const PRIORITY_OFFSET: usize = 18;

/// Decode a message. The payload shares `data`'s buffer (no copy).
///
/// # Errors
/// [`crate::ErrorKind::Decode`] saying what is wrong and at which byte offset.
pub fn decode(data: &Bytes) -> Result<Message> {
    let mut r = Reader { data, pos: 0 };
    let magic = r.u8("magic")?;
    if magic != MAGIC {
        return Err(Error::decode(format!(
            "not a Courier message (first byte 0x{magic:02x}, expected 0x{MAGIC:02x})"
        )));
    }
    let version = r.u8("version")?;
    if version != VERSION && version != VERSION_KEYED {
        return Err(Error::decode(format!(
            "unsupported wire format version {version} (this build reads versions \
             {VERSION} and {VERSION_KEYED})"
        )));
    }
    let id_bytes: [u8; 16] = r
        .take(16, "id")?
        .as_ref()
        .try_into()
        .map_err(|_| Error::decode("id is not 16 bytes"))?;
    let prio = r.u8("priority")?;
    let priority = Priority::from_index(prio as usize)
        .ok_or_else(|| Error::decode(format!("invalid priority byte {prio}")))?;
    let attempt = r.u32("attempt")?;
    let max_attempts = r.u32("max_attempts")?;
    let created_at = r.u64("created_at")?;
    let not_before = r.u64("not_before")?;
    let kind_len = r.u16("kind length")? as usize;
    let kind = r.string(kind_len, "kind")?;
    let header_count = r.u16("header count")?;
    let mut headers = Headers::new();
    for _ in 0..header_count {
        let kl = r.u16("header name length")? as usize;
        let k = r.string(kl, "header name")?;
        let vl = r.u32("header value length")? as usize;
        let v = r.string(vl, "header value")?;
        headers.insert(k, v);
    }
    let pl = r.u32("payload length")? as usize;
    let payload = r.take(pl, "payload")?;
    let mut dedup_key = None;
    let mut expires_at = None;
    if version == VERSION_KEYED {
        let rest = data.len() - r.pos;
        if rest < 2 {
            return Err(Error::decode(format!(
                "version {VERSION_KEYED} message ends {rest} bytes after the payload, before \
                 its extension length"
            )));
        }
        let ext = u16::from_be_bytes([data[data.len() - 2], data[data.len() - 1]]) as usize;
        if ext + 2 != rest {
            return Err(Error::decode(format!(
                "extension length {ext} does not match the {rest} bytes after the payload"
            )));
        }
        let end = r.pos + ext;
        while r.pos < end {
            let tag = r.u8("extension tag")?;
            let len = r.u16("extension field length")? as usize;
            if r.pos + len > end {
                return Err(Error::decode(format!(
                    "extension field {tag} of {len} bytes runs past the extension"
                )));
            }
            match tag {
                TAG_DEDUP_KEY if dedup_key.is_some() => {
                    return Err(Error::decode("two dedup keys in the extension"));
                }
                TAG_DEDUP_KEY => dedup_key = Some(r.string(len, "dedup key")?),
                TAG_EXPIRES_AT if expires_at.is_some() => {
                    return Err(Error::decode("two expiry fields in the extension"));
                }
                TAG_EXPIRES_AT if len != 8 => {
                    return Err(Error::decode(format!(
                        "expiry field of {len} bytes (expected 8)"
                    )));
                }
                TAG_EXPIRES_AT => expires_at = Some(r.u64("expires_at")?),
                // A field of a later release: skipped.
                _ => {
                    r.take(len, "extension field")?;
                }
            }
        }
        r.pos += 2;
    }
    if r.pos != data.len() {
        return Err(Error::decode(format!(
            "{} trailing bytes after the payload",
            data.len() - r.pos
        )));
    }
    Ok(Message {
        id: MessageId::from_bytes(id_bytes),
        kind,
        payload,
        priority,
        headers,
        created_at,
        attempt,
        max_attempts: (max_attempts != 0).then_some(max_attempts),
        delay: None,
        not_before: (not_before != 0).then_some(not_before),
        dedup_key,
        ttl: None,
        expires_at,
    })
}

struct Reader<'a> {
    data: &'a Bytes,
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize, what: &str) -> Result<Bytes> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        match end {
            Some(end) => {
                let b = self.data.slice(self.pos..end);
                self.pos = end;
                Ok(b)
            }
            None => Err(Error::decode(format!(
                "truncated message: {what} needs {n} bytes at offset {}, {} left",
                self.pos,
                self.data.len() - self.pos
            ))),
        }
    }
    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(&b);
        Ok(u64::from_be_bytes(a))
    }
    fn string(&mut self, n: usize, what: &str) -> Result<String> {
        let at = self.pos;
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|e| {
            Error::decode(format!("{what} at offset {at} is not UTF-8")).with_source(e)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn priority_is_set_in_place() {
        let m = Message::new("k", "payload")
            .with_priority(Priority::Low)
            .with_dedup_key("key");
        let raw = encode(&m).expect("encode");
        let high = with_priority(&raw, Priority::High).expect("a message");
        let back = decode(&high).expect("decode");
        assert_eq!(back.priority, Priority::High);
        assert_eq!((back.id, back.kind.as_str()), (m.id, "k"));
        assert_eq!(back.dedup_key, m.dedup_key);
        assert_eq!(with_priority(b"junk", Priority::High), None);
        assert_eq!(with_priority(&[0u8; 64], Priority::High), None);
    }

    fn round_trip(m: &Message) -> Message {
        let bytes = encode(m).expect("encode");
        decode(&bytes).expect("decode")
    }

    #[test]
    fn full_message_round_trips() {
        let mut m = Message::new("speech_recognition", vec![1u8, 2, 3])
            .with_priority(Priority::Critical)
            .with_header("source", "ai")
            .with_header("traceparent", "00-abc-def-01")
            .with_max_attempts(7)
            .with_not_before(1_700_000_000_123);
        m.created_at = 1_700_000_000_000;
        m.attempt = 4;
        assert_eq!(round_trip(&m), m);
    }

    #[test]
    fn keyed_message_is_version_2_with_the_key_in_the_extension() {
        let m = Message::new("k", vec![9u8; 5]).with_dedup_key("order-17/ünï");
        let bytes = encode(&m).expect("encode");
        assert_eq!(bytes[1], VERSION_KEYED);
        let key = "order-17/ünï".as_bytes();
        let n = bytes.len();
        // ... payload | tag 1 | key length | key | extension length
        let ext = 3 + key.len();
        assert_eq!(&bytes[n - 2..], &(ext as u16).to_be_bytes());
        assert_eq!(bytes[n - 2 - ext], TAG_DEDUP_KEY);
        assert_eq!(
            &bytes[n - 1 - ext..n + 1 - ext],
            &(key.len() as u16).to_be_bytes()
        );
        assert_eq!(&bytes[n - 2 - key.len()..n - 2], key);
        assert_eq!(round_trip(&m), m);
        // Without a key the bytes are version 1, as before.
        let plain = encode(&Message::new("k", vec![9u8; 5])).expect("encode");
        assert_eq!(plain[1], VERSION);
        assert_eq!(plain.len() + ext + 2, n);
        // An extension length that does not match the bytes after the payload is refused.
        let mut bad = bytes.to_vec();
        bad[n - 1] ^= 1;
        let e = decode(&Bytes::from(bad)).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Decode, "{e}");
    }

    #[test]
    fn expiring_message_carries_tag_2_after_the_key() {
        let m = Message::new("k", vec![3u8]).with_expires_at(0x0102_0304_0506_0708);
        let bytes = encode(&m).expect("encode");
        assert_eq!(bytes[1], VERSION_KEYED);
        let n = bytes.len();
        // ... payload | tag 2 | 0x0008 | u64 | extension length 11
        assert_eq!(&bytes[n - 2..], &11u16.to_be_bytes());
        assert_eq!(&bytes[n - 13..n - 10], &[TAG_EXPIRES_AT, 0, 8]);
        assert_eq!(&bytes[n - 10..n - 2], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(round_trip(&m), m);
        let both = m.with_dedup_key("key");
        let bytes = encode(&both).expect("encode");
        let n = bytes.len();
        assert_eq!(&bytes[n - 2..], &(11u16 + 6).to_be_bytes());
        assert_eq!(round_trip(&both), both);
        // An expiry field that is not 8 bytes is refused.
        let mut bad = bytes.to_vec();
        bad[n - 12] = 7;
        assert!(decode(&Bytes::from(bad)).is_err());
    }

    #[test]
    fn unknown_extension_fields_are_skipped() {
        let m = Message::new("k", vec![1u8, 2]).with_dedup_key("key");
        let bytes = encode(&m).expect("encode");
        // Splice a field of a later release (tag 9, 4 bytes) before the key's field.
        let n = bytes.len();
        let ext = u16::from_be_bytes([bytes[n - 2], bytes[n - 1]]) as usize;
        let start = n - 2 - ext;
        let mut v = bytes[..start].to_vec();
        v.extend_from_slice(&[9, 0, 4, 0xAA, 0xBB, 0xCC, 0xDD]);
        v.extend_from_slice(&bytes[start..n - 2]);
        v.extend_from_slice(&((ext + 7) as u16).to_be_bytes());
        assert_eq!(decode(&Bytes::from(v)).expect("decode"), m);
    }

    #[test]
    fn empty_payload_and_no_headers() {
        let m = Message::new("", Bytes::new());
        assert_eq!(round_trip(&m), m);
    }

    #[test]
    fn binary_non_utf8_payload() {
        let payload: Vec<u8> = (0..=255u8).chain([0xff, 0xfe, 0x00, 0xc3, 0x28]).collect();
        let m = Message::new("bin", payload);
        assert_eq!(round_trip(&m), m);
    }

    #[test]
    fn odd_header_strings() {
        let m = Message::new("k", "p")
            .with_header("", "")
            .with_header("emoji 🎥", "line\nbreak\ttab\0nul")
            .with_header("quote\"'", "ünïcödé ✓")
            .with_header("k".repeat(300), "v".repeat(70_000));
        assert_eq!(round_trip(&m), m);
    }

    #[test]
    fn every_truncation_is_a_decode_error() {
        let m = Message::new("kind", "payload").with_header("a", "b");
        let bytes = encode(&m).expect("encode");
        for n in 0..bytes.len() {
            let err = decode(&bytes.slice(0..n)).expect_err("truncated must fail");
            assert_eq!(err.kind(), crate::ErrorKind::Decode, "len {n}");
        }
    }

    #[test]
    fn rejects_bad_magic_version_and_trailing_bytes() {
        let bytes = encode(&Message::new("k", "p")).expect("encode");
        let mut v = bytes.to_vec();
        v[0] = 0x00;
        assert!(
            decode(&Bytes::from(v))
                .unwrap_err()
                .message()
                .contains("not a Courier")
        );
        let mut v = bytes.to_vec();
        v[1] = 99;
        assert!(
            decode(&Bytes::from(v))
                .unwrap_err()
                .message()
                .contains("version 99")
        );
        let mut v = bytes.to_vec();
        v.push(0);
        assert!(
            decode(&Bytes::from(v))
                .unwrap_err()
                .message()
                .contains("trailing")
        );
        let mut v = bytes.to_vec();
        v[18] = 9;
        assert!(
            decode(&Bytes::from(v))
                .unwrap_err()
                .message()
                .contains("priority")
        );
    }

    #[test]
    fn rejects_invalid_utf8_kind() {
        let mut v = encode(&Message::new("ab", "")).expect("encode").to_vec();
        // kind bytes start after the fixed header and the 2-byte length
        v[FIXED_LEN + 2] = 0xff;
        let err = decode(&Bytes::from(v)).unwrap_err();
        assert!(err.message().contains("kind"), "{err}");
    }
}
