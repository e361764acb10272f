//! [`PubSub`] for [`SqliteBackend`]: in-process fan-out into bounded subscription buffers
//! (shared by every handle of this process on the same file), plus a short-lived relay table
//! that carries messages to other processes.
//!
//! - `publish` delivers to this process's matching subscriptions at once, then (for a file
//!   database) queues one relay row. Other processes' writer threads read relay rows from
//!   their last seen row every poll interval, when `PRAGMA data_version` says something was
//!   committed, skipping rows of their own process.
//! - A subscription only receives relay rows written after it became active, so a message
//!   published while nobody subscribed is dropped (P2).
//! - Relay rows older than [`RELAY_RETENTION_MS`] are deleted by publishers (at most once a
//!   second per writer).

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use courier_core::{
    Message, Pattern, PubSub, Result, SubscribeOptions, Subscription, SubscriptionBuffer, wire,
};
use rusqlite::{Connection, OptionalExtension, params};

use crate::backend::SqliteBackend;
use crate::consts::BACKEND_NAME;
use crate::error::{KIT, map_err};
use crate::hub::{Hub, Sub};
use crate::store::i;
use crate::writer::Target;

/// How long relay rows are kept (ms): far longer than any poll interval.
pub(crate) const RELAY_RETENTION_MS: u64 = 10_000;

/// Most relay rows read per poll round.
const RELAY_BATCH: i64 = 1_000;

/// Removes a subscription's buffer from the registry when the subscription is dropped.
struct Unsubscribe {
    hub: Weak<Hub>,
    buffer: Arc<SubscriptionBuffer>,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        self.buffer.close();
        if let Some(hub) = self.hub.upgrade() {
            let mut cursor = hub.relay_cursor.lock();
            let mut reg = hub.pubsub.write();
            reg.subs.retain(|s| !Arc::ptr_eq(&s.buffer, &self.buffer));
            if reg.subs.is_empty() {
                *cursor = None;
            }
        }
    }
}

/// A relay row: row id, origin process, channel, body.
type RelayRow = (i64, i64, String, Vec<u8>);

/// Read other processes' relay rows written since the last round and deliver them. Runs on a
/// writer thread (any handle of this process; the hub's cursor lock keeps it exactly once).
pub(crate) fn relay(conn: &Connection, hub: &Hub, path: &std::path::Path) {
    let mut cursor = hub.relay_cursor.lock();
    let Some(mut last) = *cursor else {
        return;
    };
    loop {
        let rows: rusqlite::Result<Vec<RelayRow>> = conn
            .prepare_cached(
                "SELECT rid, origin, channel, body FROM courier_pubsub WHERE rid > ?1 \
                 ORDER BY rid LIMIT ?2",
            )
            .and_then(|mut s| {
                s.query_map(params![last, RELAY_BATCH], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })?
                .collect()
            });
        let rows = match rows {
            Ok(r) => r,
            Err(e) => {
                let e = map_err("relay", path, e);
                tracing::warn!(error = %format_args!("{e:#}"), "courier sqlite: reading pub/sub relay rows failed");
                break;
            }
        };
        let n = rows.len() as i64;
        {
            let reg = hub.pubsub.read();
            for (rid, origin, channel, body) in rows {
                last = rid;
                if origin == hub.origin {
                    continue;
                }
                match wire::decode(&bytes::Bytes::from(body)) {
                    Ok(m) => {
                        reg.deliver(&channel, &m, Some(rid));
                    }
                    Err(e) => {
                        tracing::debug!(channel, error = %format_args!("{e:#}"), "courier sqlite: dropping an undecodable pub/sub message");
                    }
                }
            }
        }
        if n < RELAY_BATCH {
            break;
        }
    }
    *cursor = Some(last);
}

/// The highest relay row ever written (rows are never reused: AUTOINCREMENT).
fn relay_high(conn: &Connection) -> rusqlite::Result<i64> {
    Ok(conn
        .prepare_cached("SELECT seq FROM sqlite_sequence WHERE name = 'courier_pubsub'")?
        .query_row([], |r| r.get::<_, i64>(0))
        .optional()?
        .unwrap_or(0))
}

#[async_trait]
impl PubSub for SqliteBackend {
    fn backend_name(&self) -> &'static str {
        BACKEND_NAME
    }

    /// Offers the message (id and `created_at` assigned) to every open matching subscription
    /// of this process and returns how many took it; other processes get it through the
    /// relay table. Messages from one caller arrive in call order (P3).
    async fn publish(&self, channel: &str, mut message: Message) -> Result<usize> {
        KIT.check_publish(channel, &self.inner.configs.default_config(), &message)?;
        let now = self.now();
        message.prepare_for_publish(now);
        let body = if self.inner.target == Target::Memory {
            None
        } else {
            Some(wire::encode(&message).map_err(KIT.tag("publish"))?)
        };
        let n = self
            .inner
            .hub
            .pubsub
            .read()
            .deliver(channel, &message, None);
        if let Some(body) = body {
            let channel = channel.to_owned();
            let origin = self.inner.hub.origin;
            self.inner.writer.fire("publish", move |ctx| {
                let now = ctx.now();
                ctx.conn
                    .prepare_cached(
                        "INSERT INTO courier_pubsub (origin, channel, created_at, body) \
                         VALUES (?1, ?2, ?3, ?4)",
                    )
                    .and_then(|mut s| s.execute(params![origin, channel, i(now), &body[..]]))
                    .map_err(ctx.err("publish"))?;
                let due = ctx
                    .last_prune
                    .is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
                if due {
                    *ctx.last_prune = Some(Instant::now());
                    ctx.conn
                        .prepare_cached("DELETE FROM courier_pubsub WHERE created_at < ?1")
                        .and_then(|mut s| s.execute([i(now.saturating_sub(RELAY_RETENTION_MS))]))
                        .map_err(ctx.err("publish"))?;
                }
                Ok(())
            });
        }
        Ok(n)
    }

    /// Active as soon as this returns: local publishes are delivered from then on, and relay
    /// rows of other processes written after this point.
    async fn subscribe(&self, pattern: &str, options: SubscribeOptions) -> Result<Subscription> {
        let pattern = Pattern::parse(pattern).map_err(KIT.tag("subscribe"))?;
        let start = if self.inner.target == Target::Memory {
            0
        } else {
            self.inner
                .writer
                .call("subscribe", |ctx| {
                    relay_high(ctx.conn).map_err(ctx.err("subscribe"))
                })
                .await?
        };
        let buffer = SubscriptionBuffer::new(pattern, options.buffer);
        let hub = &self.inner.hub;
        {
            let mut cursor = hub.relay_cursor.lock();
            if cursor.is_none() {
                *cursor = Some(start);
            }
            hub.pubsub.write().subs.push(Sub {
                buffer: buffer.clone(),
                start,
            });
        }
        let guard = Unsubscribe {
            hub: Arc::downgrade(hub),
            buffer: buffer.clone(),
        };
        Ok(Subscription::new(buffer, guard))
    }
}
