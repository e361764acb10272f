//! [`PubSub`] for [`NatsBackend`]: core NATS subjects `<prefix>.ps.<channel>`.
//!
//! - Courier's pattern grammar is NATS's (`*` one token, a trailing `>` one or more), so a
//!   pattern is subscribed as it is; deliveries are still matched by core's matcher before
//!   they are buffered.
//! - `subscribe` returns once the server has the subscription, and `publish` once the server
//!   has routed the message (a request the server answers follows the `SUB` or `PUB` on the
//!   same connection; a flush would only write the socket): a subscription made on another
//!   connection after `publish` returned never receives it (P1, P2).
//! - Each subscription has a task that moves messages from the client into core's bounded,
//!   drop-oldest [`SubscriptionBuffer`] (P7), so the client's own channel never overflows
//!   silently.
//! - The client reconnects and re-subscribes by itself (P6); messages published meanwhile are
//!   lost (P2).

use std::sync::Arc;

use async_trait::async_trait;
use courier_core::backend::SubscriptionBuffer;
use courier_core::{Message, Pattern, PubSub, Result, SubscribeOptions, Subscription, wire};
use futures::StreamExt;
use parking_lot::Mutex;

use crate::frag;
use crate::log::nats_err;
use crate::{BACKEND_NAME, KIT, NatsBackend};

/// The handle's subscriptions, for `publish`'s local count.
#[derive(Default)]
pub(crate) struct Registry {
    buffers: Mutex<Vec<std::sync::Weak<SubscriptionBuffer>>>,
}

impl Registry {
    /// How many open subscriptions of this handle match `channel` (P1's count).
    fn local_receivers(&self, channel: &str) -> usize {
        let mut buffers = self.buffers.lock();
        buffers.retain(|b| b.upgrade().is_some_and(|b| !b.is_closed()));
        buffers
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .filter(|b| b.pattern().matches(channel))
            .count()
    }
}

/// Ends a subscription's task when the subscription is dropped.
struct Unsubscribe {
    task: tokio::task::JoinHandle<()>,
    buffer: Arc<SubscriptionBuffer>,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        self.buffer.close();
        self.task.abort();
    }
}

impl NatsBackend {
    fn channel_subject(&self, channel: &str) -> String {
        format!("{}.ps.{channel}", self.inner.prefix)
    }

    /// Wait until the server has processed everything this connection sent so far. A flush
    /// only writes the socket; a request answered by the server (JetStream's account info,
    /// which every server this backend runs on has) comes back after the server read what
    /// was sent before it, in order.
    async fn barrier(&self, operation: &'static str) -> Result<()> {
        let client = &self.inner.client;
        let reply = client.request("$JS.API.INFO", bytes::Bytes::new());
        match tokio::time::timeout(std::time::Duration::from_secs(10), reply).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(nats_err(operation, "waiting for the server".into(), e)),
            Err(_) => Err(nats_err(
                operation,
                "waiting for the server".into(),
                "no answer within 10 s",
            )),
        }
    }

    /// Make the client reconnect, as a network cut would: subscriptions must come back by
    /// themselves (P6). For tests (the conformance suite's `disrupt`), not for applications.
    ///
    /// # Errors
    /// `Unavailable` when the reconnect cannot be started.
    #[doc(hidden)]
    pub async fn disrupt(&self) -> Result<bool> {
        self.inner
            .client
            .force_reconnect()
            .await
            .map_err(|e| nats_err("disrupt", "forcing a reconnect".into(), e))?;
        Ok(true)
    }
}

#[async_trait]
impl PubSub for NatsBackend {
    fn backend_name(&self) -> &'static str {
        BACKEND_NAME
    }

    /// Publishes on core NATS and flushes. Returns how many subscriptions of *this* handle
    /// match the channel (other processes' subscribers are not counted).
    async fn publish(&self, channel: &str, mut message: Message) -> Result<usize> {
        KIT.check_publish(channel, &self.inner.store.default_config(), &message)?;
        message.prepare_for_publish(self.inner.clock.now_ms());
        let bytes = wire::encode(&message).map_err(KIT.tag("publish"))?;
        let subject = self.channel_subject(channel);
        let client = &self.inner.client;
        let max = client.server_info().max_payload;
        let sent = match frag::split(&bytes, max) {
            None => client.publish(subject.clone(), bytes).await,
            Some(frags) => {
                let mut r = Ok(());
                for (h, p) in frags {
                    r = client.publish_with_headers(subject.clone(), h, p).await;
                    if r.is_err() {
                        break;
                    }
                }
                r
            }
        };
        sent.map_err(|e| nats_err("publish", format!("publishing to {subject:?}"), e))?;
        self.barrier("publish").await?;
        Ok(self.inner.registry.local_receivers(channel))
    }

    /// Cancel safe: dropped before it returns, it leaves no subscription.
    async fn subscribe(&self, pattern: &str, options: SubscribeOptions) -> Result<Subscription> {
        let pattern = Pattern::parse(pattern).map_err(KIT.tag("subscribe"))?;
        let subject = self.channel_subject(pattern.as_str());
        let client = &self.inner.client;
        let mut subscriber = client
            .subscribe(subject.clone())
            .await
            .map_err(|e| nats_err("subscribe", format!("subscribing to {subject:?}"), e))?;
        self.barrier("subscribe").await?;
        let buffer = SubscriptionBuffer::new(pattern, options.buffer);
        self.inner
            .registry
            .buffers
            .lock()
            .push(Arc::downgrade(&buffer));
        let prefix_len = self.inner.prefix.len() + ".ps.".len();
        let b = buffer.clone();
        let task = tokio::spawn(async move {
            let mut parts = frag::Reassembler::default();
            while let Some(m) = subscriber.next().await {
                let channel = m.subject.as_str().get(prefix_len..).unwrap_or_default();
                if b.is_closed() || !b.pattern().matches(channel) {
                    continue;
                }
                let Some(payload) = parts.push(m.headers.as_ref(), m.payload) else {
                    continue;
                };
                match wire::decode(&payload) {
                    Ok(message) => b.push(message),
                    Err(e) => tracing::debug!(
                        backend = BACKEND_NAME,
                        channel,
                        error = %e,
                        "courier nats: dropping an undecodable pub/sub message"
                    ),
                }
            }
        });
        let guard = Unsubscribe {
            task,
            buffer: buffer.clone(),
        };
        Ok(Subscription::new(buffer, guard))
    }
}
