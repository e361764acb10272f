//! Reading script replies (`redis::Value`) without panicking on an unexpected shape.

use redis::Value;

/// An integer reply (Redis integers, or numeric strings).
pub(crate) fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        Value::Double(d) => Some(*d as i64),
        _ => None,
    }
}

/// An unsigned integer reply.
pub(crate) fn uint(v: &Value) -> Option<u64> {
    int(v).and_then(|i| u64::try_from(i).ok())
}

/// A string reply.
pub(crate) fn string(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// The bytes of a bulk-string reply, taken out of the value (no copy).
pub(crate) fn take_bytes(v: &mut Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(std::mem::take(b)),
        Value::SimpleString(s) => Some(std::mem::take(s).into_bytes()),
        _ => None,
    }
}

/// The items of an array reply.
pub(crate) fn array(v: Value) -> Option<Vec<Value>> {
    match v {
        Value::Array(items) | Value::Set(items) => Some(items),
        Value::Nil => Some(Vec::new()),
        _ => None,
    }
}
