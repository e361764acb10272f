//! One error type for every backend and runtime (DESIGN §9).

use std::fmt;

/// Boxed source error carried by [`Error`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result alias used across Courier.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The small, stable set of error kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A name, message or configuration was rejected before anything was sent.
    InvalidInput,
    /// A payload exceeded the queue's `max_payload`.
    PayloadTooLarge,
    /// The addressed message, dead letter or resource does not exist.
    NotFound,
    /// The caller no longer holds the lease (settled, expired or handed to another consumer).
    LeaseLost,
    /// The backend could not be reached; retrying later may succeed.
    Unavailable,
    /// The backend answered with an error that retrying will not fix.
    Backend,
    /// A stored message could not be decoded.
    Decode,
    /// The component is shutting down.
    Shutdown,
    /// The requested feature is not compiled in or not supported by this backend.
    Unsupported,
}

impl ErrorKind {
    /// A short lowercase name for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::NotFound => "not_found",
            ErrorKind::LeaseLost => "lease_lost",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Backend => "backend",
            ErrorKind::Decode => "decode",
            ErrorKind::Shutdown => "shutdown",
            ErrorKind::Unsupported => "unsupported",
        }
    }
}

/// Courier's error: a kind, where it happened (backend, operation), a message and an optional
/// source.
///
/// `Display` shows each fact once: `[backend operation] kind: message`. The underlying error
/// is not repeated there; it is [`std::error::Error::source`], so a chain printer (`anyhow`,
/// `eyre`, `tracing`'s error fields) shows it once. The alternate form `{:#}` appends the
/// whole source chain, for a one-line log.
///
/// For a partially stored batch ([`crate::Queue::publish_batch`]), [`Error::stored`] tells how many
/// leading messages were stored before the failure.
pub struct Error {
    kind: ErrorKind,
    backend: &'static str,
    operation: &'static str,
    message: String,
    stored: Option<usize>,
    source: Option<BoxError>,
}

impl Error {
    /// A new error of `kind` with a human message.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            backend: "",
            operation: "",
            message: message.into(),
            stored: None,
            source: None,
        }
    }

    /// Shorthand for [`ErrorKind::InvalidInput`].
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }

    /// Shorthand for [`ErrorKind::LeaseLost`].
    pub fn lease_lost(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::LeaseLost, message)
    }

    /// Shorthand for [`ErrorKind::NotFound`].
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    /// Shorthand for [`ErrorKind::Decode`].
    pub fn decode(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Decode, message)
    }

    /// Shorthand for [`ErrorKind::Shutdown`].
    pub fn shutdown(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Shutdown, message)
    }

    /// Attach the backend name (`"memory"`, `"redis"`, …).
    pub fn with_backend(mut self, backend: &'static str) -> Self {
        self.backend = backend;
        self
    }

    /// Attach the operation name (`"publish"`, `"receive"`, …).
    pub fn with_operation(mut self, operation: &'static str) -> Self {
        self.operation = operation;
        self
    }

    /// Attach the underlying error.
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Record how many leading messages of a batch were stored.
    pub fn with_stored(mut self, stored: usize) -> Self {
        self.stored = Some(stored);
        self
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The backend that failed, or `""`.
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// The operation that failed, or `""`.
    pub fn operation(&self) -> &'static str {
        self.operation
    }

    /// The human message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// For a failed batch publish: how many leading messages were stored. `None` means nothing
    /// is known to be stored (for errors raised before sending, nothing was).
    pub fn stored(&self) -> Option<usize> {
        self.stored
    }

    /// Whether retrying the same call later may succeed (connection trouble, shutdown of a
    /// remote node). Invalid input, lease loss and decode errors are never retryable.
    pub fn is_retryable(&self) -> bool {
        matches!(self.kind, ErrorKind::Unavailable)
    }

    /// `true` for [`ErrorKind::LeaseLost`].
    pub fn is_lease_lost(&self) -> bool {
        self.kind == ErrorKind::LeaseLost
    }

    /// `true` for [`ErrorKind::NotFound`].
    pub fn is_not_found(&self) -> bool {
        self.kind == ErrorKind::NotFound
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.backend, self.operation) {
            ("", "") => {}
            (b, "") => write!(f, "[{b}] ")?,
            ("", o) => write!(f, "[{o}] ")?,
            (b, o) => write!(f, "[{b} {o}] ")?,
        }
        write!(f, "{}: {}", self.kind.as_str(), self.message)?;
        if let Some(n) = self.stored {
            write!(f, " ({n} leading messages stored)")?;
        }
        // The source is returned by `source()`, so error-chain printers show it once; the
        // alternate form (`{:#}`, used in Courier's own log lines) appends the chain itself.
        if f.alternate() {
            let mut next = std::error::Error::source(self);
            while let Some(src) = next {
                write!(f, ": {src}")?;
                next = src.source();
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind);
        if !self.backend.is_empty() {
            d.field("backend", &self.backend);
        }
        if !self.operation.is_empty() {
            d.field("operation", &self.operation);
        }
        d.field("message", &self.message);
        if let Some(n) = self.stored {
            d.field("stored", &n);
        }
        if let Some(src) = &self.source {
            d.field("source", src);
        }
        d.finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|s| s.as_ref() as &(dyn std::error::Error + 'static))
    }
}

/// Remove the password from a connection URL so it can be logged or shown.
///
/// `redis://user:secret@host:6379/0` becomes `redis://user:***@host:6379/0`; in text that is
/// not `scheme://…` (a mistyped URL), everything before the last `@` is hidden.
pub fn redact_url(url: &str) -> String {
    let scheme_end = url.find("://").filter(|&end| {
        let scheme = &url[..end];
        scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    });
    let Some(scheme_end) = scheme_end else {
        // Not `scheme://…`: a mistyped URL (`user:pw@host`, `redis:pw@host://…`). Whatever
        // stands before its last '@' may be a password, so none of it is shown.
        return match url.rfind('@') {
            Some(at) => format!("***{}", &url[at..]),
            None => url.to_string(),
        };
    };
    let rest_start = scheme_end + 3;
    let rest = &url[rest_start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_string();
    };
    let userinfo = &authority[..at];
    let redacted_userinfo = match userinfo.find(':') {
        Some(colon) => format!("{}:***", &userinfo[..colon]),
        None => "***".to_string(),
    };
    format!("{}{}{}", &url[..rest_start], redacted_userinfo, &rest[at..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_has_context_and_source() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = Error::new(ErrorKind::Unavailable, "cannot connect")
            .with_backend("redis")
            .with_operation("publish")
            .with_source(io);
        // Display shows each fact once; the source is left to `source()` ...
        assert_eq!(e.to_string(), "[redis publish] unavailable: cannot connect");
        assert!(e.is_retryable());
        let src = std::error::Error::source(&e).expect("source kept");
        assert_eq!(src.to_string(), "refused");
        // ... so a chain printer shows it exactly once,
        let mut chain = vec![e.to_string()];
        let mut next = std::error::Error::source(&e);
        while let Some(s) = next {
            chain.push(s.to_string());
            next = s.source();
        }
        assert_eq!(chain.join(": ").matches("refused").count(), 1);
        // and the alternate form carries the chain on one line (Courier's own log lines).
        assert_eq!(
            format!("{e:#}"),
            "[redis publish] unavailable: cannot connect: refused"
        );
        let outer = Error::new(ErrorKind::Backend, "outer").with_source(e);
        assert_eq!(
            format!("{outer:#}"),
            "backend: outer: [redis publish] unavailable: cannot connect: refused"
        );
    }

    #[test]
    fn only_unavailable_is_retryable() {
        for k in [
            ErrorKind::InvalidInput,
            ErrorKind::PayloadTooLarge,
            ErrorKind::NotFound,
            ErrorKind::LeaseLost,
            ErrorKind::Backend,
            ErrorKind::Decode,
            ErrorKind::Shutdown,
            ErrorKind::Unsupported,
        ] {
            assert!(!Error::new(k, "x").is_retryable(), "{k:?}");
        }
    }

    #[test]
    fn stored_count_is_reported() {
        let e = Error::new(ErrorKind::Unavailable, "lost connection").with_stored(3);
        assert_eq!(e.stored(), Some(3));
        assert!(e.to_string().contains("3 leading messages stored"));
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("redis://user:secret@host:6379/0"),
            "redis://user:***@host:6379/0"
        );
        assert_eq!(redact_url("redis://:pw@h"), "redis://:***@h");
        assert_eq!(redact_url("amqp://token@h/vh"), "amqp://***@h/vh");
        assert_eq!(redact_url("redis://h:6379"), "redis://h:6379");
        assert_eq!(redact_url("sqlite://a@b.db"), "sqlite://***@b.db");
        assert_eq!(redact_url("memory://"), "memory://");
        // Mistyped URLs: no password survives before the last '@'.
        assert_eq!(redact_url("user:secret@host"), "***@host");
        assert_eq!(redact_url("redis:secret@h:6379"), "***@h:6379");
        assert_eq!(redact_url("user:secret@%://x@://y"), "***@://y");
        assert_eq!(redact_url("not a url"), "not a url");
    }
}
