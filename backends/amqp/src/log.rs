//! The [`Log`] of the RabbitMQ backend: one durable stream per queue and per topic,
//! `<prefix>.q.<queue>` and `<prefix>.t.<topic>`, appended to on the connection's
//! publisher-confirm channel and read by a stream consumer from a given offset.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use courier_core::{Error, ErrorKind, Result};
use courier_replicated::Log;
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Confirmation};

use crate::KIT;
use crate::conn::{CLOSE_TIMEOUT, Conn, amqp_err, stream_not_started};

/// Records a follower reads ahead (stream consumers need a prefetch; acks are credit).
const PREFETCH: u16 = 2_000;

/// Appends refused because the stream was not started yet that are tried again.
const APPEND_RETRIES: u32 = 5;

/// The longest one append (declare, publish, confirm) may take. Around a broker restart a
/// confirm can fail to arrive at all (the stream's writer was restarting); without a bound the
/// call, and the worker or publisher waiting on it, would wait forever on a connection that
/// will never answer. On time out the session is dropped and the call fails `Unavailable`,
/// which callers retry on a fresh connection (the record may or may not be stored, as for any
/// failed publish; an unanswered claim is undone by the replica when it is applied).
const APPEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Streams on one RabbitMQ connection.
pub struct AmqpLog {
    pub(crate) conn: Arc<Conn>,
    pub(crate) prefix: String,
}

impl AmqpLog {
    /// The stream of the log `name` (`q.<queue>` or `t.<topic>`).
    pub(crate) fn stream(&self, name: &str) -> String {
        format!("{}.{name}", self.prefix)
    }
}

/// The `x-stream-offset` header RabbitMQ puts on each stream delivery.
fn offset_of(props: &BasicProperties) -> Option<u64> {
    let headers = props.headers().as_ref()?;
    match headers.inner().get("x-stream-offset")? {
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        _ => None,
    }
}

impl AmqpLog {
    /// One append; on failure, whether RabbitMQ refused it because the stream was not started
    /// yet (then nothing was stored: see [`stream_not_started`]).
    async fn append_once(
        &self,
        name: &str,
        record: &Bytes,
        operation: &'static str,
    ) -> std::result::Result<(), (Error, bool)> {
        let stream = self.stream(name);
        let session = self.conn.session(operation).await.map_err(|e| (e, false))?;
        let mut refused = false;
        let append = async {
            session.declare_stream(&stream, operation).await?;
            let confirm = session
                .publish
                .basic_publish(
                    "".into(),
                    stream.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    record,
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .map_err(|e| {
                    refused = stream_not_started(&e);
                    amqp_err(operation, format!("appending to stream {stream:?}"), e)
                })?
                .await
                .map_err(|e| {
                    refused = stream_not_started(&e);
                    amqp_err(operation, format!("confirm from stream {stream:?}"), e)
                })?;
            match confirm {
                Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
                Confirmation::Ack(Some(returned)) => Err(KIT.tag(operation)(Error::new(
                    ErrorKind::Unavailable,
                    format!(
                        "RabbitMQ returned the record for stream {stream:?}: {}",
                        returned.reply_text
                    ),
                ))),
                Confirmation::Nack(_) => Err(KIT.tag(operation)(Error::new(
                    ErrorKind::Unavailable,
                    format!("RabbitMQ did not store the record for stream {stream:?} (nack)"),
                ))),
            }
        };
        let r = match tokio::time::timeout(APPEND_TIMEOUT, append).await {
            Ok(r) => r,
            Err(_) => Err(KIT.tag(operation)(Error::new(
                ErrorKind::Unavailable,
                format!(
                    "no confirm from stream {stream:?} within {}s; reconnecting",
                    APPEND_TIMEOUT.as_secs()
                ),
            ))),
        };
        if let Err(e) = &r {
            self.conn.failed(&session, e).await;
        }
        r.map_err(|e| (e, refused))
    }
}

#[async_trait]
impl Log for AmqpLog {
    async fn append(&self, name: &str, record: Bytes, operation: &'static str) -> Result<()> {
        // RabbitMQ refuses (and closes the connection for) a publish to a stream another
        // connection declared a moment ago whose writer has not started: nothing was stored,
        // so that refusal alone is retried, on a new connection, a few times.
        let mut refused = 0u32;
        loop {
            match self.append_once(name, &record, operation).await {
                Err((e, true)) if refused < APPEND_RETRIES => {
                    refused += 1;
                    tracing::debug!(error = %e, refused, "courier amqp: stream not started yet; appending again");
                    tokio::time::sleep(Duration::from_millis(20) * refused).await;
                }
                Err((e, _)) => return Err(e),
                Ok(()) => return Ok(()),
            }
        }
    }

    async fn follow(
        &self,
        name: &str,
        from: u64,
        sink: &mut (dyn FnMut(u64, Bytes) -> bool + Send),
    ) -> Result<()> {
        let stream = self.stream(name);
        let session = self.conn.session("follow").await?;
        session.declare_stream(&stream, "follow").await?;
        let err = |what: &str| {
            let what = format!("{what} stream {stream:?}");
            move |e: lapin::Error| amqp_err("follow", what, e)
        };
        let channel = session
            .connection
            .create_channel()
            .await
            .map_err(err("opening a channel for"))?;
        let r = async {
            channel
                .basic_qos(PREFETCH, BasicQosOptions::default())
                .await
                .map_err(err("setting the prefetch of"))?;
            let mut args = FieldTable::default();
            let start = i64::try_from(from).unwrap_or(i64::MAX);
            args.insert("x-stream-offset".into(), AMQPValue::LongLongInt(start));
            let mut consumer = channel
                .basic_consume(
                    stream.as_str().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    args,
                )
                .await
                .map_err(err("consuming"))?;
            while let Some(delivery) = consumer.next().await {
                let delivery = delivery.map_err(err("reading"))?;
                match offset_of(&delivery.properties) {
                    Some(offset) => {
                        if !sink(offset, Bytes::from(delivery.data.clone())) {
                            return Ok(());
                        }
                    }
                    None => tracing::warn!(stream = %stream, "courier amqp: a stream delivery without x-stream-offset was skipped"),
                }
                delivery
                    .ack(BasicAckOptions::default())
                    .await
                    .map_err(err("acknowledging"))?;
            }
            self.conn.invalidate(session.generation).await;
            Err(KIT.tag("follow")(Error::new(
                ErrorKind::Unavailable,
                format!("the consumer of stream {stream:?} ended"),
            )))
        }
        .await;
        let _ = tokio::time::timeout(
            CLOSE_TIMEOUT,
            channel.close(200, "courier: follower done".into()),
        )
        .await;
        r
    }
}
