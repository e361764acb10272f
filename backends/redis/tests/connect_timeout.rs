//! `RedisBackendBuilder::connection_timeout` bounds the whole of `build()`: against a server
//! that accepts TCP connections and never answers, connecting fails as `Unavailable` within
//! the timeout (plus scheduling slack), naming the address but not the password. No Redis
//! needed: the "server" is a silent listener inside the test.

use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use courier_core::ErrorKind;
use courier_redis::RedisBackend;

/// A listener on 127.0.0.1 that accepts every connection and holds it open without a byte of
/// answer (a hung server, a black-holing proxy). Lives until the test process ends.
fn silent_listener() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a silent listener");
    let port = listener.local_addr().expect("its address").port();
    std::thread::spawn(move || {
        let mut held: Vec<TcpStream> = Vec::new();
        for s in listener.incoming().flatten() {
            held.push(s);
        }
    });
    port
}

/// How late the error may come after the configured timeout (a loaded 2-core machine): up to
/// 500 ms, but less than a second attempt's worth, so a connect that tries twice with the full
/// timeout each (the bug: 2 s became 4.08 s) fails even for short timeouts.
fn tolerance(timeout: Duration) -> Duration {
    Duration::from_millis(500).min(timeout * 3 / 4)
}

async fn assert_bounded(timeout: Duration) {
    let port = silent_listener();
    let url = format!("redis://courier:s3cr3t-pw@127.0.0.1:{port}/0");
    let started = Instant::now();
    let outcome = tokio::time::timeout(
        Duration::from_secs(30),
        RedisBackend::builder()
            .url(&url)
            .connection_timeout(timeout)
            .build(),
    )
    .await
    .expect("build() must not hang (30 s outer bound)");
    let took = started.elapsed();
    let e = outcome.expect_err("a silent server cannot be connected to");
    eprintln!("connection_timeout {timeout:?}: failed after {took:?}: {e:#}");
    assert!(
        took <= timeout + tolerance(timeout),
        "connect took {took:?} with connection_timeout {timeout:?} (allowed {:?})",
        timeout + tolerance(timeout)
    );
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e:#}");
    assert!(e.is_retryable());
    let text = format!("{e:#}");
    assert!(
        text.contains(&format!("127.0.0.1:{port}")),
        "the error names the address: {text}"
    );
    assert!(!text.contains("s3cr3t-pw"), "the password leaked: {text}");
    assert!(
        !format!("{e:?}").contains("s3cr3t-pw"),
        "the password leaked: {e:?}"
    );
}

#[tokio::test]
async fn connect_to_a_silent_server_fails_within_the_connection_timeout() {
    assert_bounded(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_one_second_timeout_is_not_doubled_by_the_retry() {
    assert_bounded(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn the_default_bound_also_holds() {
    // Documented default: 2 s.
    let port = silent_listener();
    let started = Instant::now();
    let outcome = tokio::time::timeout(
        Duration::from_secs(30),
        RedisBackend::from_url(&format!("redis://127.0.0.1:{port}")),
    )
    .await
    .expect("build() must not hang (30 s outer bound)");
    let took = started.elapsed();
    let e = outcome.expect_err("a silent server cannot be connected to");
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e:#}");
    assert!(
        took <= Duration::from_secs(2) + tolerance(Duration::from_secs(2)),
        "connect took {took:?} with the default 2 s connection timeout"
    );
}

#[tokio::test]
async fn a_refused_connection_fails_fast() {
    // Nobody listens: refused at once, the retry (which helps with a restart in progress)
    // stays inside the bound too.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let started = Instant::now();
    let outcome = tokio::time::timeout(
        Duration::from_secs(30),
        RedisBackend::builder()
            .url(format!("redis://:pw-xyz@127.0.0.1:{port}"))
            .connection_timeout(Duration::from_millis(300))
            .build(),
    )
    .await
    .expect("build() must not hang");
    let e = outcome.expect_err("nobody listens");
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e:#}");
    assert!(
        started.elapsed() <= Duration::from_millis(300) + tolerance(Duration::from_millis(300))
    );
    let text = format!("{e:#}");
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(!text.contains("pw-xyz"), "{text}");
    // Each fact once: Display names the context and the address; the cause is `source()`,
    // not folded into Display as well, so a chain printer shows it once.
    let display = e.to_string();
    let source = std::error::Error::source(&e).map(ToString::to_string);
    assert!(source.is_some(), "the redis-rs error is kept as the source");
    let source = source.unwrap_or_default();
    assert!(
        !display.contains(&source),
        "{display:?} repeats its source {source:?}"
    );
    assert_eq!(text.matches("[redis connect]").count(), 1, "{text}");
    assert_eq!(text.matches("unavailable").count(), 1, "{text}");
}
