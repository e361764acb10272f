//! The pub/sub subscriber runtime (P8): a handler over a subscription, with the queue's retry
//! policy applied in-process and a dead-letter record per subscription.

use std::collections::VecDeque;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::FutureExt;
use parking_lot::Mutex;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::clock::SystemClock;
use crate::error::Result;
use crate::handler::{BoxHandler, HandlerResult};
use crate::policy::{FailureAction, RetryPolicy};
use crate::pubsub::{PubSub, SubscribeOptions};
use crate::queue::DeadLetter;

/// Builds a subscriber: `Subscriber::builder(pubsub, "meeting.*").handler(f).start().await`.
pub struct Subscriber {
    pubsub: Arc<dyn PubSub>,
    pattern: String,
    retry: RetryPolicy,
    options: SubscribeOptions,
    handler: Option<BoxHandler>,
    max_dead_letters: usize,
    handler_timeout: Option<Duration>,
}

/// Counters of a subscriber.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SubscriberStats {
    /// Messages taken from the subscription.
    pub received: u64,
    /// Messages handled successfully.
    pub handled: u64,
    /// Failed attempts that were retried in-process.
    pub retried: u64,
    /// Messages recorded as dead letters.
    pub dead: u64,
    /// Handler runs cancelled at their timeout (also counted as retried or dead).
    pub timed_out: u64,
    /// Messages dropped by the subscription buffer because the handler was too slow (P7).
    pub dropped: u64,
}

#[derive(Default)]
struct Shared {
    received: AtomicU64,
    handled: AtomicU64,
    retried: AtomicU64,
    dead: AtomicU64,
    timed_out: AtomicU64,
    dropped: AtomicU64,
    dead_letters: Mutex<VecDeque<DeadLetter>>,
}

impl Subscriber {
    /// A subscriber to `pattern` (a channel or a pattern with `*` / `>`).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{Message, Subscriber};
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let sub = Subscriber::builder(courier.pubsub().clone(), "room.*")
    ///     .handler(|_m: Message| async { Ok(()) })
    ///     .start()
    ///     .await?;
    /// courier.pubsub().publish("room.1", Message::new("joined", "ann")).await?;
    /// # tokio::time::timeout(Duration::from_secs(5), async {
    /// #     while sub.stats().handled < 1 { tokio::time::sleep(Duration::from_millis(5)).await }
    /// # }).await.expect("handled");
    /// assert_eq!(sub.stats().handled, 1);
    /// sub.stop().await;
    /// # Ok(())
    /// # }
    /// ```
    pub fn builder(pubsub: Arc<dyn PubSub>, pattern: &str) -> Self {
        Subscriber {
            pubsub,
            pattern: pattern.to_string(),
            retry: RetryPolicy::default(),
            options: SubscribeOptions::default(),
            handler: None,
            max_dead_letters: 10_000,
            handler_timeout: None,
        }
    }

    /// Cancel a handler run after `timeout` and count it as a failed attempt ("handler timed
    /// out after …"), retried or dead-lettered by the retry policy. A message's own limit
    /// ([`crate::Message::with_handler_timeout`]) wins. Default: no limit.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{Message, RetryPolicy};
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let sub = courier
    ///     .subscriber("cursor.*")
    ///     .handler_timeout(Duration::from_millis(20))
    ///     .retry(RetryPolicy::default().with_max_attempts(1))
    ///     .handler(|_m: Message| async {
    ///         tokio::time::sleep(Duration::from_secs(60)).await;
    ///         Ok(())
    ///     })
    ///     .start()
    ///     .await?;
    /// courier.pubsub().publish("cursor.ann", Message::new("move", "1,2")).await?;
    /// # tokio::time::timeout(Duration::from_secs(5), async {
    /// #     while sub.stats().dead < 1 { tokio::time::sleep(Duration::from_millis(5)).await }
    /// # }).await.expect("timed out and dead");
    /// let s = sub.stats();
    /// assert_eq!((s.timed_out, s.dead), (1, 1));
    /// sub.stop().await;
    /// # Ok(())
    /// # }
    /// ```
    pub fn handler_timeout(mut self, timeout: Duration) -> Self {
        self.handler_timeout = Some(timeout);
        self
    }

    /// The retry policy applied in-process (default: [`RetryPolicy::default`]).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{HandlerError, Message, RetryPolicy};
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let sub = courier
    ///     .subscriber("room.*")
    ///     .retry(RetryPolicy::exact(3, Duration::from_millis(5), 1.0, Duration::from_millis(5)))
    ///     .handler(|m: Message| async move {
    ///         if m.attempt < 3 { Err(HandlerError::retry("busy")) } else { Ok(()) }
    ///     })
    ///     .start()
    ///     .await?;
    /// courier.pubsub().publish("room.1", Message::new("joined", "ann")).await?;
    /// # tokio::time::timeout(Duration::from_secs(5), async {
    /// #     while sub.stats().handled < 1 { tokio::time::sleep(Duration::from_millis(5)).await }
    /// # }).await.expect("handled");
    /// assert_eq!(sub.stats().retried, 2);
    /// sub.stop().await;
    /// # Ok(())
    /// # }
    /// ```
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Subscription options (buffer size).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{Message, SubscribeOptions};
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let sub = courier
    ///     .subscriber("ticks")
    ///     .options(SubscribeOptions { buffer: 16 })
    ///     .handler(|_m: Message| async { Ok(()) })
    ///     .start()
    ///     .await?;
    /// sub.stop().await;
    /// # Ok(())
    /// # }
    /// ```
    pub fn options(mut self, options: SubscribeOptions) -> Self {
        self.options = options;
        self
    }

    /// Dead letters kept in memory at most (oldest dropped first; default 10,000).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{HandlerError, Message, RetryPolicy};
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let sub = courier
    ///     .subscriber("room.*")
    ///     .max_dead_letters(1)
    ///     .retry(RetryPolicy::default().with_max_attempts(1))
    ///     .handler(|_m: Message| async { Err(HandlerError::permanent("no")) })
    ///     .start()
    ///     .await?;
    /// for body in ["a", "b"] {
    ///     courier.pubsub().publish("room.1", Message::new("chat", body)).await?;
    /// }
    /// # tokio::time::timeout(Duration::from_secs(5), async {
    /// #     while sub.stats().dead < 2 { tokio::time::sleep(Duration::from_millis(5)).await }
    /// # }).await.expect("dead");
    /// // Only the newest is kept.
    /// let dead = sub.dead_letters();
    /// assert_eq!(dead.len(), 1);
    /// assert_eq!(&dead[0].message.payload[..], b"b");
    /// sub.stop().await;
    /// # Ok(())
    /// # }
    /// ```
    pub fn max_dead_letters(mut self, n: usize) -> Self {
        self.max_dead_letters = n.max(1);
        self
    }

    /// The handler.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::Message;
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    /// let sub = courier
    ///     .subscriber("room.42.>")
    ///     .handler(move |m: Message| {
    ///         let tx = tx.clone();
    ///         async move {
    ///             let _ = tx.send(m.payload);
    ///             Ok(())
    ///         }
    ///     })
    ///     .start()
    ///     .await?;
    /// courier.pubsub().publish("room.42.ice.candidate", Message::new("ice", "c1")).await?;
    /// let got = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
    /// assert_eq!(got.ok().flatten().as_deref(), Some(&b"c1"[..]));
    /// sub.stop().await;
    /// # Ok(())
    /// # }
    /// ```
    pub fn handler<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(crate::Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        self.handler = Some(crate::handler::boxed(f));
        self
    }

    /// Subscribe (returns once the subscription is active) and start handling.
    ///
    /// # Errors
    /// - [`crate::ErrorKind::InvalidInput`] for an invalid retry policy, no handler, or a
    ///   malformed pattern. Nothing is subscribed.
    /// - The backend's subscribe errors (see [`PubSub::subscribe`]).
    ///
    /// # Panics
    /// Outside a tokio runtime.
    ///
    /// # Cancel safety
    /// Dropping the future before it returns leaves no subscription and starts nothing.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{ErrorKind, Message};
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let sub = courier.subscriber("room.*").handler(|_m: Message| async { Ok(()) }).start().await?;
    /// // Active once `start` returns: this publish reaches it (P1).
    /// assert_eq!(courier.pubsub().publish("room.1", Message::new("k", "")).await?, 1);
    /// sub.stop().await;
    /// let e = courier.subscriber("room.*").start().await.err().map(|e| e.kind());
    /// assert_eq!(e, Some(ErrorKind::InvalidInput), "no handler");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn start(self) -> Result<SubscriberHandle> {
        // Checked here too, so the refusal does not depend on the backend's subscribe.
        crate::names::Pattern::parse(&self.pattern).map_err(|e| {
            e.with_backend(self.pubsub.backend_name())
                .with_operation("subscribe")
        })?;
        self.retry.validate()?;
        let handler = self
            .handler
            .ok_or_else(|| crate::Error::invalid("a subscriber needs a handler"))?;
        let mut sub = self.pubsub.subscribe(&self.pattern, self.options).await?;
        let shared = Arc::new(Shared::default());
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let retry = self.retry;
        let max_dead = self.max_dead_letters;
        let default_limit = self.handler_timeout;
        let task_shared = shared.clone();
        let pattern = self.pattern.clone();
        let task = tokio::spawn(async move {
            let shared = task_shared;
            let mut rng = SmallRng::from_rng(&mut rand::rng());
            loop {
                let msg = tokio::select! {
                    biased;
                    _ = stop_rx.changed() => break,
                    m = sub.next() => match m { Some(m) => m, None => break },
                };
                shared.dropped.store(sub.dropped(), Ordering::Relaxed);
                shared.received.fetch_add(1, Ordering::Relaxed);
                let mut attempt = 1u32;
                loop {
                    let mut m = msg.clone();
                    m.attempt = attempt;
                    let limit = msg.handler_timeout().or(default_limit);
                    let run = AssertUnwindSafe(handler(m)).catch_unwind();
                    let outcome = match limit {
                        Some(limit) => tokio::time::timeout(limit, run).await.ok(),
                        None => Some(run.await),
                    };
                    let (error, mode) = match outcome {
                        Some(Ok(Ok(()))) => {
                            shared.handled.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        Some(Ok(Err(e))) => (e.message().to_string(), e.mode()),
                        Some(Err(_)) => {
                            ("handler panicked".to_string(), crate::FailureMode::Backoff)
                        }
                        None => {
                            shared.timed_out.fetch_add(1, Ordering::Relaxed);
                            let limit = limit.unwrap_or_default();
                            (
                                crate::worker::timed_out_error(limit),
                                crate::FailureMode::Backoff,
                            )
                        }
                    };
                    match retry.decide(attempt, msg.max_attempts, mode, &mut rng) {
                        FailureAction::Retry(d) => {
                            shared.retried.fetch_add(1, Ordering::Relaxed);
                            tokio::select! {
                                biased;
                                _ = stop_rx.changed() => return,
                                _ = tokio::time::sleep(d) => {}
                            }
                            attempt += 1;
                        }
                        FailureAction::Dead => {
                            shared.dead.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(pattern = %pattern, kind = %msg.kind, id = %msg.id, attempts = attempt, error = %format_args!("{error:#}"), "courier subscriber: message dead-lettered");
                            let mut dl = shared.dead_letters.lock();
                            if dl.len() >= max_dead {
                                dl.pop_front();
                            }
                            let mut message = msg.clone();
                            message.attempt = attempt;
                            dl.push_back(DeadLetter {
                                message,
                                error,
                                attempts: attempt,
                                failed_at: crate::clock::Clock::now_ms(&SystemClock),
                            });
                            break;
                        }
                    }
                }
            }
        });
        Ok(SubscriberHandle {
            shared,
            stop_tx,
            task: Some(task),
        })
    }
}

/// A running subscriber. Dropping it stops it.
pub struct SubscriberHandle {
    shared: Arc<Shared>,
    stop_tx: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl SubscriberHandle {
    /// This subscription's dead letters, oldest first.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{HandlerError, Message, RetryPolicy};
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let sub = courier
    ///     .subscriber("room.*")
    ///     .retry(RetryPolicy::default().with_max_attempts(1))
    ///     .handler(|_m: Message| async { Err(HandlerError::permanent("malformed")) })
    ///     .start()
    ///     .await?;
    /// courier.pubsub().publish("room.1", Message::new("chat", "??")).await?;
    /// # tokio::time::timeout(Duration::from_secs(5), async {
    /// #     while sub.stats().dead < 1 { tokio::time::sleep(Duration::from_millis(5)).await }
    /// # }).await.expect("dead");
    /// let dead = sub.dead_letters();
    /// assert!(dead[0].error.contains("malformed"));
    /// sub.stop().await;
    /// # Ok(())
    /// # }
    /// ```
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.shared.dead_letters.lock().iter().cloned().collect()
    }

    /// Counters.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::Message;
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let sub = courier.subscriber("room.*").handler(|_m: Message| async { Ok(()) }).start().await?;
    /// courier.pubsub().publish("room.1", Message::new("k", "")).await?;
    /// tokio::time::timeout(Duration::from_secs(5), async {
    ///     while sub.stats().handled < 1 {
    ///         tokio::time::sleep(Duration::from_millis(5)).await;
    ///     }
    /// })
    /// .await
    /// .expect("handled in time");
    /// assert_eq!(sub.stats().received, 1);
    /// sub.stop().await;
    /// # Ok(())
    /// # }
    /// ```
    pub fn stats(&self) -> SubscriberStats {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        SubscriberStats {
            received: l(&self.shared.received),
            handled: l(&self.shared.handled),
            retried: l(&self.shared.retried),
            dead: l(&self.shared.dead),
            timed_out: l(&self.shared.timed_out),
            dropped: l(&self.shared.dropped),
        }
    }

    /// Stop: the message being handled is abandoned (pub/sub is at most once).
    ///
    /// A handler call in progress is not interrupted: `stop` waits up to 5 s for it to return,
    /// and a failed message is not retried after that. After 5 s, `stop` returns and the task
    /// ends on its own once the call returns.
    ///
    /// # Errors
    /// None.
    ///
    /// # Cancel safety
    /// Dropping the future does not cancel the stop: the stop signal is sent at its first poll,
    /// or, when it is never polled, by dropping the handle it holds.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::Message;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let sub = courier.subscriber("room.*").handler(|_m: Message| async { Ok(()) }).start().await?;
    /// sub.stop().await;
    /// // Unsubscribed: nobody receives this one (P2).
    /// assert_eq!(courier.pubsub().publish("room.1", Message::new("k", "")).await?, 0);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn stop(mut self) {
        let _ = self.stop_tx.send(true);
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
}

impl Drop for SubscriberHandle {
    fn drop(&mut self) {
        let _ = self.stop_tx.send(true);
    }
}
