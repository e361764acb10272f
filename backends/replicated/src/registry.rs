//! The registry: which queues and topics the backend stores (Q13, E7).
//!
//! Queues and topics are logs of their own, and neither broker lists them cheaply through the
//! client (RabbitMQ lists queues only through its management plugin). So one more log,
//! [`LOG`], names them: a handle appends `q<queue>` before its first publish to a queue and
//! `t<topic>` before its first emit to or group placement on a topic (once per handle and
//! name, so a long-lived process adds nothing after its start). A listing appends a sync
//! record with a random token and reads the registry from its start up to that token, so it
//! sees every name any process registered before it.
//!
//! The name is registered before the publish it precedes, so a queue whose first publish
//! failed may be listed (Q13 allows it); a publish that succeeded is never missing. The
//! registry grows by one record per name and process start: a service of 20 queues restarted
//! daily adds about 7,000 small records a year.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use courier_core::backend::Kit;
use courier_core::{Error, ErrorKind, Result};
use parking_lot::Mutex;

use crate::Log;

/// The registry's log. Under `q.` so that the brokers' existing subjects and streams hold it
/// (NATS streams take `<prefix>.q.>`); `~` is in no Courier name, so no queue's log is named
/// so.
pub(crate) const LOG: &str = "q.~names";

/// How long a listing may take to read the registry up to its own sync record.
const READ_LIMIT: Duration = Duration::from_secs(15);

const QUEUE: u8 = b'q';
const TOPIC: u8 = b't';
const SYNC: u8 = b's';

/// What kind of name a registry record holds.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kind {
    Queue,
    Topic,
}

impl Kind {
    fn tag(self) -> u8 {
        match self {
            Kind::Queue => QUEUE,
            Kind::Topic => TOPIC,
        }
    }
}

/// The names this handle registered, queues and topics (its own cache: the log holds them
/// all). Looked up by `&str`, so the check on every publish or receive allocates nothing.
#[derive(Default)]
pub(crate) struct Registered(Mutex<[HashSet<String>; 2]>);

fn record(tag: u8, body: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(1 + body.len());
    b.put_u8(tag);
    b.put_slice(body);
    b.freeze()
}

/// Register `name` unless this handle already did.
pub(crate) async fn register<L: Log>(
    log: &L,
    registered: &Registered,
    kind: Kind,
    name: &str,
    operation: &'static str,
) -> Result<()> {
    let slot = match kind {
        Kind::Queue => 0,
        Kind::Topic => 1,
    };
    if registered.0.lock()[slot].contains(name) {
        return Ok(());
    }
    log.append(LOG, record(kind.tag(), name.as_bytes()), operation)
        .await?;
    registered.0.lock()[slot].insert(name.to_owned());
    Ok(())
}

/// Every registered name of `kind`, sorted, each once: as of this call (see the module).
pub(crate) async fn list<L: Log>(
    log: &L,
    kit: Kit,
    kind: Kind,
    operation: &'static str,
) -> Result<Vec<String>> {
    let token: [u8; 16] = rand::random();
    log.append(LOG, record(SYNC, &token), operation).await?;
    let mut names = BTreeSet::new();
    let mut seen = false;
    let mut sink = |_, rec: Bytes| {
        match rec.split_first() {
            Some((&SYNC, t)) if t == token => {
                seen = true;
                return false;
            }
            Some((&tag, name)) if tag == kind.tag() => {
                if let Ok(name) = std::str::from_utf8(name) {
                    names.insert(name.to_owned());
                }
            }
            _ => {}
        }
        true
    };
    let read = tokio::time::timeout(READ_LIMIT, log.follow(LOG, 0, &mut sink)).await;
    match read {
        Ok(Ok(())) if seen => Ok(names.into_iter().collect()),
        Ok(Ok(())) => Err(kit.tag(operation)(Error::new(
            ErrorKind::Backend,
            "the registry log ended before the listing's own sync record",
        ))),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(kit.tag(operation)(Error::new(
            ErrorKind::Unavailable,
            format!("reading the registry log took longer than {READ_LIMIT:?}"),
        ))),
    }
}
