//! [`courier_core::PubSub`] for [`crate::AmqpBackend`]: a topic exchange. (Being written.)

use courier_core::QueueConfig;

/// Pub/sub over one dedicated connection of the backend.
pub(crate) struct PubSubHub {
    _uri: String,
    _url: String,
    _prefix: String,
    _default_config: QueueConfig,
}

impl PubSubHub {
    /// A hub that connects on first use. `uri` may hold a password; `url` is redacted.
    pub(crate) fn new(
        uri: String,
        url: String,
        prefix: String,
        default_config: QueueConfig,
    ) -> Self {
        PubSubHub {
            _uri: uri,
            _url: url,
            _prefix: prefix,
            _default_config: default_config,
        }
    }
}
