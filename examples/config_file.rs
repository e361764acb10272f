//! Configuration from a TOML file: backend URL, queue settings, routes and retention.
//!
//! Writes a service's `courier.toml` to a temporary directory, loads it with
//! `courier::load_config` (`COURIER_URL` overrides its `url`), connects with
//! `courier::connect_with`, and shows what was applied.
//!
//! Run: `cargo run --example config_file [URL]` (default `memory://`; the URL replaces the
//! file's, as `COURIER_URL` would).

use std::time::Duration;

use courier::QueueExt;

const WAIT: Duration = Duration::from_secs(10);

const CONFIG: &str = r#"
url = "memory://"

[queue_defaults]
visibility_timeout = 30000          # ms
retry = { max_attempts = 5, base = 1000, factor = 2.0, max_delay = 300000, jitter = 0.2 }

[queues."examples.ai"]
visibility_timeout = 120000
handler_timeout = 60000
retry = { max_attempts = 3, base = 500 }

[queues."examples.signaling"]
message_ttl = 10000
drop_expired = true

[routes]
speech_recognition = "examples.ai"
ice_candidate = "examples.signaling"
send_email = "examples.mail"

[retention."examples.meeting.created"]
max_len = 10000
max_age = 604800000                 # a week, in ms
"#;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("courier-config-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("courier.toml");
    std::fs::write(&path, CONFIG)?;
    let loaded = courier::load_config(&path);
    std::fs::remove_dir_all(&dir)?;
    let mut config = loaded?;
    if let Some(url) = std::env::args().nth(1) {
        config.url = Some(url);
    }
    let courier = courier::connect_with(&config).await?;
    println!(
        "config loaded; connected to {} ({})",
        courier.backend_name(),
        config.url.as_deref().unwrap_or("memory://")
    );

    for (kind, queue) in courier.dispatcher().routes() {
        let c = courier.queue().queue_config(&queue);
        println!(
            "  {kind:<18} -> {queue:<18} visibility {:>6?}, max attempts {}, ttl {:?}",
            c.visibility_timeout, c.retry.max_attempts, c.message_ttl
        );
    }
    // `queue_defaults` applies to routed queues without their own table.
    let mail = courier.queue().queue_config("examples.mail");
    let ai = courier.queue().queue_config("examples.ai");
    if mail.retry.max_attempts != 5 || ai.retry.max_attempts != 3 {
        return Err("the configuration was not applied".into());
    }
    if ai.handler_timeout != Some(Duration::from_secs(60)) {
        return Err("examples.ai should have a handler timeout".into());
    }

    tokio::time::timeout(
        WAIT,
        courier
            .dispatcher()
            .dispatch_json("speech_recognition", &"chunk-1"),
    )
    .await??;
    let d = tokio::time::timeout(WAIT, courier.queue().receive_one("examples.ai", WAIT))
        .await??
        .ok_or("nothing delivered")?;
    println!(
        "  a speech_recognition message went to examples.ai, leased until {} ms",
        d.lease.deadline_ms
    );
    tokio::time::timeout(WAIT, courier.queue().ack("examples.ai", &d.lease)).await??;

    // A bad file is refused with the place of the mistake.
    let e = courier::parse_config("[queues.ai]\nretry = { max_attempts = 0 }")
        .err()
        .ok_or("a bad config was accepted")?;
    println!("a bad file is refused: {e}");
    Ok(())
}
