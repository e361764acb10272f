//! The five services: their state and handlers.
//!
//! Each handler returns a short note of what it did (for the timeline) or a
//! [`HandlerError`] saying whether a retry can help. State lives in memory, per process:
//! the event log gives a restarted service the events it missed, not the state it had.

use std::sync::Arc;

use courier::headers::SOURCE;
use courier::{Courier, EventBusExt, HandlerError, Message};
use serde::Serialize;

use crate::topology::{Names, ServiceKind};

pub(crate) mod ai;
pub(crate) mod media;
pub(crate) mod meeting;
pub(crate) mod signaling;
pub(crate) mod user;

/// What a handler returns: a note for the timeline, or how it failed.
pub(crate) type Handled = Result<String, HandlerError>;

/// What every handler of a service can reach.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub(crate) service: ServiceKind,
    /// The shared backend: queues, pub/sub and the event bus between services.
    pub(crate) courier: Courier,
    /// This service's own in-process bus (a separate `memory://` store).
    pub(crate) local: Courier,
    pub(crate) names: Names,
}

impl Ctx {
    /// Emit a domain event this service owns.
    pub(crate) async fn emit<T: Serialize + ?Sized>(
        &self,
        topic: &'static str,
        payload: &T,
    ) -> Result<(), HandlerError> {
        debug_assert!(
            self.service.emits().contains(&topic),
            "{} does not own {topic}",
            self.service
        );
        let mut msg = Message::json(topic, payload)?.with_header(SOURCE, self.service.name());
        if let Some(ttl) = crate::topology::event_ttl(topic) {
            msg = msg.with_ttl(ttl);
        }
        self.courier
            .events()
            .emit(&self.names.topic(topic), msg)
            .await?;
        Ok(())
    }

    /// Dispatch a task to whichever service owns `kind`.
    pub(crate) async fn dispatch<T: Serialize + ?Sized>(
        &self,
        kind: &str,
        payload: &T,
    ) -> Result<(), HandlerError> {
        let msg = Message::json(kind, payload)?.with_header(SOURCE, self.service.name());
        self.courier.dispatcher().dispatch(msg).await?;
        Ok(())
    }

    /// Relay a live message to one participant's signal channel (at most once).
    pub(crate) async fn relay<T: Serialize + ?Sized>(
        &self,
        meeting: &str,
        user: &str,
        kind: &str,
        payload: &T,
    ) -> Result<usize, HandlerError> {
        let msg = Message::json(kind, payload)?.with_header(SOURCE, self.service.name());
        let channel = self.names.signal_channel(meeting, user);
        Ok(self.courier.pubsub().publish(&channel, msg).await?)
    }

    /// Emit on this service's in-process bus.
    pub(crate) async fn emit_local<T: Serialize + ?Sized>(
        &self,
        topic: &'static str,
        payload: &T,
    ) -> Result<(), HandlerError> {
        let msg = Message::json(topic, payload)?
            .with_header(SOURCE, format!("{}/api", self.service.name()));
        self.local.events().emit(topic, msg).await?;
        Ok(())
    }
}

/// One running service's handlers.
#[derive(Clone)]
pub(crate) enum Svc {
    User(Arc<user::UserService>),
    Meeting(Arc<meeting::MeetingService>),
    Media(Arc<media::MediaService>),
    Signaling(Arc<signaling::SignalingService>),
    Ai(Arc<ai::AiService>),
}

impl Svc {
    pub(crate) fn new(ctx: Ctx) -> Svc {
        match ctx.service {
            ServiceKind::User => Svc::User(Arc::new(user::UserService::new(ctx))),
            ServiceKind::Meeting => Svc::Meeting(Arc::new(meeting::MeetingService::new(ctx))),
            ServiceKind::Media => Svc::Media(Arc::new(media::MediaService::new(ctx))),
            ServiceKind::Signaling => {
                Svc::Signaling(Arc::new(signaling::SignalingService::new(ctx)))
            }
            ServiceKind::Ai => Svc::Ai(Arc::new(ai::AiService::new(ctx))),
        }
    }

    pub(crate) async fn task(&self, kind: &str, m: Message) -> Handled {
        match self {
            Svc::User(s) => s.task(kind, m).await,
            Svc::Meeting(s) => s.task(kind, m).await,
            Svc::Media(s) => s.task(kind, m).await,
            Svc::Signaling(s) => s.task(kind, m).await,
            Svc::Ai(s) => s.task(kind, m).await,
        }
    }

    pub(crate) async fn event(&self, topic: &str, m: Message) -> Handled {
        match self {
            Svc::User(s) => s.event(topic, m).await,
            Svc::Meeting(s) => s.event(topic, m).await,
            Svc::Media(s) => s.event(topic, m).await,
            Svc::Signaling(s) => s.event(topic, m).await,
            Svc::Ai(s) => s.event(topic, m).await,
        }
    }

    pub(crate) async fn local(&self, topic: &str, m: Message) -> Handled {
        match self {
            Svc::User(s) => s.local(topic, m).await,
            Svc::Meeting(s) => s.local(topic, m).await,
            Svc::Media(s) => s.local(topic, m).await,
            Svc::Signaling(s) => s.local(topic, m).await,
            Svc::Ai(s) => s.local(topic, m).await,
        }
    }

    /// A one-line summary of the service's state.
    pub(crate) fn summary(&self) -> String {
        match self {
            Svc::User(s) => s.summary(),
            Svc::Meeting(s) => s.summary(),
            Svc::Media(s) => s.summary(),
            Svc::Signaling(s) => s.summary(),
            Svc::Ai(s) => s.summary(),
        }
    }
}

/// The error for a kind or topic a service was bound to but has no code for (a bug in the
/// topology table): permanent, retrying cannot help.
pub(crate) fn unhandled(service: ServiceKind, what: &str) -> HandlerError {
    HandlerError::permanent(format!("{service} has no handler for {what:?}"))
}

/// Names that become channel tokens (users, meetings): 1-32 of `a-z 0-9 _ -`.
pub(crate) fn valid_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}
