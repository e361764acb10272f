//! What the handles of one process on one database file share: the wake-ups of waiting
//! receivers and the local pub/sub subscriptions. The writer thread signals a hub after its
//! commits; the receives and subscriptions of every handle on the file listen to it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Weak};

use courier_core::{Message, SubscriptionBuffer};
use parking_lot::{Mutex, RwLock};
use tokio::sync::Notify;

/// Hubs of this process by database file, so that every handle on one file shares wake-ups
/// and pub/sub subscriptions.
static HUBS: LazyLock<Mutex<HashMap<PathBuf, Weak<Hub>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// What the handles of one process on one database share.
#[derive(Debug)]
pub(crate) struct Hub {
    /// This process (or this separate handle) as written into pub/sub relay rows: the relay
    /// skips its own rows, which were delivered locally.
    pub(crate) origin: i64,
    /// Waiting receivers per queue (`q:…`) or topic (`t:…`).
    wakers: Mutex<HashMap<String, Arc<Notify>>>,
    /// Signalled when another connection committed (all receivers re-check).
    pub(crate) external: Notify,
    /// Local pub/sub subscriptions.
    pub(crate) pubsub: RwLock<Registry>,
    /// The last relay row read from other processes (`None` while nobody subscribes).
    pub(crate) relay_cursor: Mutex<Option<i64>>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            origin: rand::random::<i64>() & i64::MAX,
            wakers: Mutex::default(),
            external: Notify::new(),
            pubsub: RwLock::default(),
            relay_cursor: Mutex::new(None),
        }
    }
}

impl Hub {
    /// The hub of the database file at `path`, shared with every other handle of this
    /// process on the same file (however its path is spelled).
    pub(crate) fn for_file(path: &Path) -> Arc<Hub> {
        let key = canonical(path);
        let mut hubs = HUBS.lock();
        if let Some(h) = hubs.get(&key).and_then(Weak::upgrade) {
            return h;
        }
        hubs.retain(|_, w| w.strong_count() > 0);
        let h = Arc::new(Hub::default());
        hubs.insert(key, Arc::downgrade(&h));
        h
    }

    pub(crate) fn waker(&self, key: &str) -> Arc<Notify> {
        let mut w = self.wakers.lock();
        if let Some(n) = w.get(key) {
            return n.clone();
        }
        let n = Arc::new(Notify::new());
        w.insert(key.to_owned(), n.clone());
        n
    }

    /// Wake the receivers waiting on `key`.
    pub(crate) fn wake(&self, key: &str) {
        let n = self.wakers.lock().get(key).cloned();
        if let Some(n) = n {
            n.notify_waiters();
        }
    }

    /// Another connection committed: every waiting receiver re-checks.
    pub(crate) fn external_change(&self) {
        self.external.notify_waiters();
    }
}

/// The same file reached by different spellings maps to one key.
fn canonical(path: &Path) -> PathBuf {
    if let Ok(p) = std::fs::canonicalize(path) {
        return p;
    }
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    let dir = match parent {
        Some(p) => std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf()),
        None => std::env::current_dir().unwrap_or_default(),
    };
    match path.file_name() {
        Some(f) => dir.join(f),
        None => path.to_path_buf(),
    }
}

/// One local subscription.
#[derive(Debug)]
pub(crate) struct Sub {
    pub(crate) buffer: Arc<SubscriptionBuffer>,
    /// Relay rows up to this one were written before the subscription became active.
    pub(crate) start: i64,
}

/// The local subscriptions of a hub.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    pub(crate) subs: Vec<Sub>,
}

impl Registry {
    /// Offer a message to every open matching subscription; returns how many took it.
    pub(crate) fn deliver(
        &self,
        channel: &str,
        message: &Message,
        relay_row: Option<i64>,
    ) -> usize {
        let mut n = 0;
        for s in &self.subs {
            if relay_row.is_some_and(|r| r <= s.start) {
                continue;
            }
            if s.buffer.offer(channel, message) {
                n += 1;
            }
        }
        n
    }
}
