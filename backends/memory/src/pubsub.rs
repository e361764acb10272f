//! [`PubSub`] for [`MemoryBackend`]: in-process fan-out into bounded subscription buffers.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use async_trait::async_trait;
use courier_core::{
    Message, Pattern, PubSub, Result, SubscribeOptions, Subscription, SubscriptionBuffer,
};
use parking_lot::RwLock;

use crate::{BACKEND_NAME, KIT, MemoryBackend};

/// Active subscriptions: literal channels by name, wildcard patterns in a list.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    literal: HashMap<String, Vec<Arc<SubscriptionBuffer>>>,
    wildcard: Vec<Arc<SubscriptionBuffer>>,
}

impl Registry {
    fn add(&mut self, buffer: Arc<SubscriptionBuffer>) {
        if buffer.pattern().is_literal() {
            self.literal
                .entry(buffer.pattern().as_str().to_owned())
                .or_default()
                .push(buffer);
        } else {
            self.wildcard.push(buffer);
        }
    }

    fn remove(&mut self, buffer: &Arc<SubscriptionBuffer>) {
        let pattern = buffer.pattern();
        if pattern.is_literal() {
            if let Some(v) = self.literal.get_mut(pattern.as_str()) {
                v.retain(|b| !Arc::ptr_eq(b, buffer));
                if v.is_empty() {
                    self.literal.remove(pattern.as_str());
                }
            }
        } else {
            self.wildcard.retain(|b| !Arc::ptr_eq(b, buffer));
        }
    }
}

/// Removes a subscription's buffer from the registry when the subscription is dropped.
struct Unsubscribe {
    registry: Weak<RwLock<Registry>>,
    buffer: Arc<SubscriptionBuffer>,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        self.buffer.close();
        if let Some(registry) = self.registry.upgrade() {
            registry.write().remove(&self.buffer);
        }
    }
}

#[async_trait]
impl PubSub for MemoryBackend {
    fn backend_name(&self) -> &'static str {
        BACKEND_NAME
    }

    /// Offers the message (id and `created_at` assigned) to every open matching subscription
    /// in this process and returns how many took it. Messages from one caller reach each
    /// subscription in call order (P3).
    async fn publish(&self, channel: &str, mut message: Message) -> Result<usize> {
        KIT.check_publish(channel, &self.inner.default_config, &message)?;
        message.prepare_for_publish(self.now());
        let registry = self.inner.pubsub.read();
        let mut n = 0;
        if let Some(buffers) = registry.literal.get(channel) {
            for b in buffers {
                if !b.is_closed() {
                    b.push(message.clone());
                    n += 1;
                }
            }
        }
        for b in &registry.wildcard {
            if b.offer(channel, &message) {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Active as soon as this returns (registration is synchronous).
    async fn subscribe(&self, pattern: &str, options: SubscribeOptions) -> Result<Subscription> {
        let pattern = Pattern::parse(pattern).map_err(KIT.tag("subscribe"))?;
        let buffer = SubscriptionBuffer::new(pattern, options.buffer);
        self.inner.pubsub.write().add(buffer.clone());
        let guard = Unsubscribe {
            registry: Arc::downgrade(&self.inner.pubsub),
            buffer: buffer.clone(),
        };
        Ok(Subscription::new(buffer, guard))
    }
}
