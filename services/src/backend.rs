//! Connecting to the shared backend by URL.
//!
//! Everything goes through the facade's `courier::connect`, except one temporary bridge:
//! the facade has no `redis` feature yet, so with this crate's `redis` feature a
//! `redis://` / `rediss://` URL that the facade reports as not compiled in is opened with
//! `courier_redis` directly. Delete the bridge once the facade has `redis`.

use courier::{Courier, Result};

/// Connect to the backend at `url` (see [`courier::connect`]).
///
/// # Errors
/// As [`courier::connect`]: invalid URL, backend not compiled in, backend unreachable.
pub async fn connect(url: &str) -> Result<Courier> {
    #[cfg(feature = "redis")]
    if url.starts_with("redis://") || url.starts_with("rediss://") {
        match courier::connect(url).await {
            Err(e) if e.kind() == courier::ErrorKind::Unsupported => {
                use std::sync::Arc;
                let b = courier_redis::RedisBackend::from_url(url).await?;
                b.ping().await?;
                return Ok(Courier::new(
                    Arc::new(b.clone()),
                    Arc::new(b.clone()),
                    Arc::new(b),
                ));
            }
            other => return other,
        }
    }
    courier::connect(url).await
}

/// Whether a backend URL names a store shared between processes (everything but `memory://`).
pub fn is_shared(url: &str) -> bool {
    !url.starts_with("memory://") && url != "sqlite::memory:"
}
