//! Handlers and how they fail.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::de::DeserializeOwned;

use crate::error::{Error, ErrorKind};
use crate::message::Message;
use crate::policy::FailureMode;

/// Why a handler failed, and how it wants the failure treated.
///
/// `?` converts any `std::error::Error` into a retryable failure (a Courier decode or
/// invalid-input error becomes permanent: retrying cannot fix it).
pub struct HandlerError {
    message: String,
    mode: FailureMode,
}

impl HandlerError {
    /// Retry with the queue's backoff.
    pub fn retry(message: impl Into<String>) -> Self {
        HandlerError {
            message: message.into(),
            mode: FailureMode::Backoff,
        }
    }

    /// Retry after exactly `delay` (still bounded by `max_attempts`).
    pub fn retry_after(delay: Duration, message: impl Into<String>) -> Self {
        HandlerError {
            message: message.into(),
            mode: FailureMode::RetryAfter(delay),
        }
    }

    /// Do not retry: dead-letter now.
    pub fn permanent(message: impl Into<String>) -> Self {
        HandlerError {
            message: message.into(),
            mode: FailureMode::Permanent,
        }
    }

    /// The failure text stored as the message's last error.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// How the failure wants to be treated.
    pub fn mode(&self) -> FailureMode {
        self.mode
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HandlerError({:?}: {})", self.mode, self.message)
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for HandlerError {
    fn from(e: E) -> Self {
        let permanent = (&e as &dyn Any)
            .downcast_ref::<Error>()
            .is_some_and(|ce| matches!(ce.kind(), ErrorKind::Decode | ErrorKind::InvalidInput));
        let message = e.to_string();
        if permanent {
            HandlerError::permanent(message)
        } else {
            HandlerError::retry(message)
        }
    }
}

/// What a handler returns.
pub type HandlerResult = Result<(), HandlerError>;

/// A type-erased message handler.
pub type BoxHandler = Arc<dyn Fn(Message) -> BoxFuture<'static, HandlerResult> + Send + Sync>;

/// Erase a closure returning a future into a [`BoxHandler`].
pub fn boxed<F, Fut>(f: F) -> BoxHandler
where
    F: Fn(Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    Arc::new(move |m| Box::pin(f(m)))
}

/// A handler that decodes the JSON payload into `T` first; a payload that does not decode is
/// a permanent failure naming the decode error.
pub fn json<T, F, Fut>(f: F) -> BoxHandler
where
    T: DeserializeOwned + Send + 'static,
    F: Fn(T, Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    Arc::new(move |m: Message| match m.decode::<T>() {
        Ok(v) => Box::pin(f(v, m)),
        Err(e) => {
            let err = HandlerError::permanent(e.to_string());
            Box::pin(async move { Err(err) })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_pick_the_mode() {
        let io: HandlerError = std::io::Error::other("disk").into();
        assert_eq!(io.mode(), FailureMode::Backoff);
        let dec: HandlerError = Error::decode("bad json").into();
        assert_eq!(dec.mode(), FailureMode::Permanent);
        let un: HandlerError = Error::new(ErrorKind::Unavailable, "down").into();
        assert_eq!(un.mode(), FailureMode::Backoff);
    }
}
