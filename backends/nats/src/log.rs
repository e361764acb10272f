//! The [`Log`] of the NATS backend: one JetStream stream per prefix (named after it), holding
//! the subjects `<prefix>.q.<queue>` and `<prefix>.t.<topic>`. A record is published with
//! `js.publish` and its ack awaited; a follower is an ordered push consumer filtered on the
//! log's subject, starting at a stream sequence. Offsets are stream sequences.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::push::OrderedConfig;
use async_nats::jetstream::{self, stream};
use async_trait::async_trait;
use bytes::Bytes;
use courier_core::backend::OutageLog;
use courier_core::{Error, ErrorKind, Result};
use courier_replicated::Log;
use futures::StreamExt;
use tokio::sync::OnceCell;

use crate::{KIT, frag};

/// Logs on one NATS connection.
pub struct NatsLog {
    pub(crate) client: async_nats::Client,
    pub(crate) js: jetstream::Context,
    pub(crate) prefix: String,
    /// The stream, created (or found) once.
    stream: OnceCell<stream::Stream>,
    pub(crate) health: Arc<OutageLog>,
}

/// A NATS error as a Courier error: everything the client reports about the server or the
/// connection is retryable (`Unavailable`); the text never holds the URL's credentials.
pub(crate) fn nats_err(operation: &'static str, what: String, e: impl std::fmt::Display) -> Error {
    KIT.tag(operation)(Error::new(ErrorKind::Unavailable, format!("{what}: {e}")))
}

/// Creations of the stream tried again after the server failed to create its store.
const STORE_RACE_RETRIES: u32 = 5;

/// Whether creating a stream failed because the server could not create its store directory
/// (JetStream error 10049, "error creating store for stream", or 10077). NATS 2.9 removes an
/// account's store directory when its last stream is deleted; a stream created at that moment
/// fails so (the server logs `mkdir …/jetstream/$G/streams: no such file or directory`).
/// Nothing was created, and the same request succeeds a moment later
/// (`tests/stream_churn.rs`).
fn store_race(e: &jetstream::context::CreateStreamError) -> bool {
    use async_nats::jetstream::ErrorCode;
    use async_nats::jetstream::context::CreateStreamErrorKind;
    match e.kind() {
        CreateStreamErrorKind::JetStream(js) => matches!(
            js.error_code(),
            ErrorCode::STREAM_CREATE | ErrorCode::STREAM_STORE_FAILED
        ),
        _ => false,
    }
}

impl NatsLog {
    pub(crate) fn new(
        client: async_nats::Client,
        prefix: String,
        health: Arc<OutageLog>,
        timeout: Duration,
    ) -> Self {
        let mut js = jetstream::new(client.clone());
        js.set_timeout(timeout);
        NatsLog {
            client,
            js,
            prefix,
            stream: OnceCell::new(),
            health,
        }
    }

    /// The subject of the log `name` (`q.<queue>` or `t.<topic>`).
    pub(crate) fn subject(&self, name: &str) -> String {
        format!("{}.{name}", self.prefix)
    }

    /// The JetStream stream of this prefix, created on first use (file storage, limits
    /// retention with no limit: the records are the state).
    pub(crate) async fn stream(&self, operation: &'static str) -> Result<&stream::Stream> {
        self.stream
            .get_or_try_init(|| async {
                let config = stream::Config {
                    name: self.prefix.clone(),
                    subjects: vec![
                        format!("{}.q.>", self.prefix),
                        format!("{}.t.>", self.prefix),
                    ],
                    storage: stream::StorageType::File,
                    ..Default::default()
                };
                let mut attempt = 0u32;
                loop {
                    match self.js.get_or_create_stream(config.clone()).await {
                        Ok(stream) => return Ok(stream),
                        Err(e) if store_race(&e) && attempt < STORE_RACE_RETRIES => {
                            attempt += 1;
                            tracing::debug!(stream = %self.prefix, attempt, error = %e, "courier nats: the server could not create the stream's store; creating it again");
                            tokio::time::sleep(Duration::from_millis(10) * attempt).await;
                        }
                        Err(e) => {
                            return Err(nats_err(
                                operation,
                                format!("creating stream {:?}", self.prefix),
                                e,
                            ));
                        }
                    }
                }
            })
            .await
    }

    /// Delete this prefix's stream (tests and benchmarks that clean up after themselves).
    pub(crate) async fn delete(&self) -> Result<()> {
        match self.js.delete_stream(&self.prefix).await {
            Ok(_) => Ok(()),
            Err(e) if e.to_string().contains("not found") => Ok(()),
            Err(e) => Err(nats_err(
                "delete_stream",
                format!("deleting stream {:?}", self.prefix),
                e,
            )),
        }
    }

    fn note<T>(&self, r: &Result<T>) {
        match r {
            Ok(_) => self.health.up(),
            Err(e) => self.health.down(e),
        }
    }
}

#[async_trait]
impl Log for NatsLog {
    async fn append(&self, name: &str, record: Bytes, operation: &'static str) -> Result<()> {
        let r = async {
            self.stream(operation).await?;
            let subject = self.subject(name);
            let max = self.client.server_info().max_payload;
            let parts = match frag::split(&record, max) {
                None => vec![(None, record)],
                Some(frags) => frags.into_iter().map(|(h, p)| (Some(h), p)).collect(),
            };
            // Fragments one after the other: the record is appended when its last one is.
            for (headers, payload) in parts {
                let ack = match headers {
                    None => self.js.publish(subject.clone(), payload).await,
                    Some(h) => {
                        self.js
                            .publish_with_headers(subject.clone(), h, payload)
                            .await
                    }
                };
                ack.map_err(|e| nats_err(operation, format!("appending to {subject:?}"), e))?
                    .await
                    .map_err(|e| nats_err(operation, format!("ack from {subject:?}"), e))?;
            }
            Ok(())
        }
        .await;
        self.note(&r);
        r
    }

    async fn follow(
        &self,
        name: &str,
        from: u64,
        sink: &mut (dyn FnMut(u64, Bytes) -> bool + Send),
    ) -> Result<()> {
        let subject = self.subject(name);
        let r = async {
            let stream = self.stream("follow").await?;
            let consumer = stream
                .create_consumer(OrderedConfig {
                    deliver_subject: self.client.new_inbox(),
                    filter_subject: subject.clone(),
                    deliver_policy: DeliverPolicy::ByStartSequence {
                        start_sequence: from.max(1),
                    },
                    ..Default::default()
                })
                .await
                .map_err(|e| nats_err("follow", format!("following {subject:?}"), e))?;
            let mut messages = consumer
                .messages()
                .await
                .map_err(|e| nats_err("follow", format!("following {subject:?}"), e))?;
            let mut parts = frag::Reassembler::default();
            while let Some(m) = messages.next().await {
                let m = m.map_err(|e| nats_err("follow", format!("reading {subject:?}"), e))?;
                let offset = m
                    .info()
                    .map_err(|e| nats_err("follow", format!("reading {subject:?}"), e))?
                    .stream_sequence;
                // A fragmented record applies at its last fragment's offset.
                let Some(record) =
                    parts.push(m.message.headers.as_ref(), m.message.payload.clone())
                else {
                    continue;
                };
                if !sink(offset, record) {
                    return Ok(());
                }
            }
            Err(KIT.tag("follow")(Error::new(
                ErrorKind::Unavailable,
                format!("the consumer of {subject:?} ended"),
            )))
        }
        .await;
        if let Err(e) = &r {
            self.health.down(e);
        }
        r
    }
}
