//! An in-process [`Log`] for the replicated crate's tests: named append-only logs in memory,
//! offsets are indexes. It counts appends, and can store a record yet report the append as
//! failed (as a broker whose confirm is lost does), once the record was applied.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use courier_core::{Error, ErrorKind, Result};
use courier_replicated::Log;
use tokio::sync::Notify;

#[derive(Default)]
pub(crate) struct Logs {
    logs: Mutex<HashMap<String, Vec<Bytes>>>,
    appended: Notify,
    /// Records appended, over every log.
    pub(crate) appends: AtomicU64,
    /// Per log, the offset after the last record any follower handed on.
    delivered: Mutex<HashMap<String, u64>>,
    handed_on: Notify,
    /// Operations whose next append stores the record, waits until a follower applied it,
    /// then fails (one entry per append to fail).
    lost_confirms: Mutex<Vec<&'static str>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Logs {
    /// The next append of `operation` is stored and applied, but reported as failed.
    #[allow(dead_code)] // not every test binary loses confirms
    pub(crate) fn lose_confirm_of(&self, operation: &'static str) {
        lock(&self.lost_confirms).push(operation);
    }
}

#[derive(Clone)]
pub(crate) struct MemLog(pub(crate) Arc<Logs>);

#[async_trait]
impl Log for MemLog {
    async fn append(&self, name: &str, record: Bytes, operation: &'static str) -> Result<()> {
        let offset = {
            let mut logs = lock(&self.0.logs);
            let log = logs.entry(name.to_owned()).or_default();
            log.push(record);
            log.len() as u64 - 1
        };
        self.0.appends.fetch_add(1, Ordering::Relaxed);
        self.0.appended.notify_waiters();
        let lose = {
            let mut lost = lock(&self.0.lost_confirms);
            match lost.iter().position(|op| *op == operation) {
                Some(i) => {
                    lost.remove(i);
                    true
                }
                None => false,
            }
        };
        if !lose {
            return Ok(());
        }
        let applied = async {
            loop {
                let notified = self.0.handed_on.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if lock(&self.0.delivered)
                    .get(name)
                    .is_some_and(|d| *d > offset)
                {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), applied).await;
        Err(Error::new(
            ErrorKind::Unavailable,
            format!("test log: the confirm of record {offset} of {name:?} was lost"),
        ))
    }

    async fn follow(
        &self,
        name: &str,
        from: u64,
        sink: &mut (dyn FnMut(u64, Bytes) -> bool + Send),
    ) -> Result<()> {
        let mut next = usize::try_from(from).unwrap_or(usize::MAX);
        loop {
            let notified = self.0.appended.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let batch: Vec<Bytes> = {
                let logs = lock(&self.0.logs);
                logs.get(name)
                    .map(|l| l.get(next..).unwrap_or_default().to_vec())
                    .unwrap_or_default()
            };
            for record in batch {
                if !sink(next as u64, record) {
                    return Ok(());
                }
                next += 1;
                let mut delivered = lock(&self.0.delivered);
                let d = delivered.entry(name.to_owned()).or_default();
                *d = (*d).max(next as u64);
                drop(delivered);
                self.0.handed_on.notify_waiters();
            }
            notified.await;
        }
    }
}
