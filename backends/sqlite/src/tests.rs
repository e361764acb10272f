//! Unit tests: migrations, error mapping of bad files, cross-connection leasing, and the
//! queue / event bus / pub/sub primitives against the reference model's rules.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use courier_core::{
    ErrorKind, EventBus, EventBusExt, Message, Page, Priority, PubSub, Queue, QueueConfig,
    QueueExt, ReplayFrom, Retention, RetryPolicy, Selection, Settle, SubscribeOptions,
};

use super::*;

/// A fresh temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "courier-sqlite-{tag}-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn config() -> QueueConfig {
    QueueConfig::default()
        .with_visibility_timeout(Duration::from_millis(200))
        .with_retry(RetryPolicy::exact(
            3,
            Duration::from_millis(50),
            2.0,
            Duration::from_secs(1),
        ))
}

async fn open(path: &Path) -> SqliteBackend {
    SqliteBackend::builder()
        .path(path)
        .default_config(config())
        .build()
        .await
        .expect("open")
}

fn user_version(path: &Path) -> i64 {
    let c = rusqlite::Connection::open(path).expect("open");
    c.pragma_query_value(None, "user_version", |r| r.get(0))
        .expect("user_version")
}

/// Set `PRAGMA user_version` of a closed database (an older or newer schema).
fn set_user_version(path: &Path, v: i64) {
    let c = rusqlite::Connection::open(path).expect("open");
    c.pragma_update(None, "user_version", v)
        .expect("user_version");
}

// ---------------------------------------------------------------------------------------
// URLs and opening

#[test]
fn urls_parse() {
    assert_eq!(
        parse_url("sqlite::memory:").expect("m"),
        SqliteLocation::Memory
    );
    assert_eq!(
        parse_url("sqlite://:memory:").expect("m"),
        SqliteLocation::Memory
    );
    assert_eq!(
        parse_url("sqlite://data/q.db").expect("rel"),
        SqliteLocation::File(PathBuf::from("data/q.db"))
    );
    assert_eq!(
        parse_url("sqlite:///var/q.db").expect("abs"),
        SqliteLocation::File(PathBuf::from("/var/q.db"))
    );
    let e = parse_url("sqlite://").expect_err("empty");
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    let e = parse_url("redis://x").expect_err("scheme");
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
}

/// The `InvalidInput` error of parsing `url`.
fn url_error(url: &str) -> courier_core::Error {
    let e = SqliteUrl::parse(url).expect_err(url);
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{url}: {e}");
    e
}

#[test]
fn url_parameters_are_supported_or_refused_by_name() {
    let u = SqliteUrl::parse("sqlite:///var/q.db?mode=ro&busy_timeout=250").expect("params");
    assert_eq!(u.location, SqliteLocation::File(PathBuf::from("/var/q.db")));
    assert_eq!(u.mode, Some(OpenMode::ReadOnly));
    assert_eq!(u.busy_timeout, Some(Duration::from_millis(250)));
    for (url, mode) in [
        ("sqlite://q.db?mode=rw", OpenMode::ReadWrite),
        ("sqlite://q.db?mode=rwc", OpenMode::ReadWriteCreate),
    ] {
        assert_eq!(SqliteUrl::parse(url).expect(url).mode, Some(mode));
    }
    let u = SqliteUrl::parse("sqlite://q.db").expect("none");
    assert_eq!((u.mode, u.busy_timeout), (None, None));
    // An empty query and empty pairs are nothing.
    assert_eq!(
        parse_url("sqlite://q.db?").expect("?"),
        parse_url("sqlite://q.db").expect("q")
    );
    assert_eq!(
        SqliteUrl::parse("sqlite://:memory:?busy_timeout=10")
            .expect("memory")
            .location,
        SqliteLocation::Memory
    );
    // The finding: a query string was part of the file name.
    let e = url_error("sqlite://?mode=ro");
    assert!(e.message().contains("empty path"), "{e}");
    for (url, named) in [
        ("sqlite:///var/q.db?cache=shared", "\"cache\""),
        ("sqlite:///var/q.db?mode=memory", "mode"),
        ("sqlite:///var/q.db?mode=RO", "mode"),
        ("sqlite:///var/q.db?mode", "mode"),
        ("sqlite:///var/q.db?mode=ro&mode=rw", "more than once"),
        ("sqlite:///var/q.db?busy_timeout=soon", "busy_timeout"),
        ("sqlite:///var/q.db?busy_timeout=-1", "busy_timeout"),
        ("sqlite:///var/q.db?busy_timeout=+5", "busy_timeout"),
        (
            "sqlite:///var/q.db?busy_timeout=99999999999",
            "busy_timeout",
        ),
        ("sqlite:///var/q.db?busy_timeout=", "busy_timeout"),
        ("sqlite://:memory:?mode=ro", "mode=ro"),
    ] {
        let e = url_error(url);
        assert!(e.message().contains(named), "{url}: {e}");
    }
    // A fragment is not silently part of the name either.
    url_error("sqlite:///var/q.db#x");
}

#[test]
fn url_paths_are_percent_decoded() {
    assert_eq!(
        parse_url("sqlite:///tmp/x-%20y.db").expect("space"),
        SqliteLocation::File(PathBuf::from("/tmp/x- y.db"))
    );
    assert_eq!(
        parse_url("sqlite://a%3Fb%23c%25d%40e.db").expect("escapes"),
        SqliteLocation::File(PathBuf::from("a?b#c%d@e.db"))
    );
    assert_eq!(
        SqliteUrl::parse("sqlite:///q.db?mode=r%6F")
            .expect("escaped value")
            .mode,
        Some(OpenMode::ReadOnly)
    );
    for url in [
        "sqlite:///tmp/x-%2.db",
        "sqlite:///tmp/x-%zz.db",
        "sqlite:///tmp/x-%",
        "sqlite:///tmp/x-%00.db",
        "sqlite:///q.db?mode=r%6",
    ] {
        url_error(url);
    }
}

#[test]
fn url_scheme_is_case_insensitive() {
    assert_eq!(
        parse_url("SQLite:///var/q.db").expect("mixed"),
        SqliteLocation::File(PathBuf::from("/var/q.db"))
    );
    assert_eq!(
        parse_url("SQLITE::memory:").expect("upper"),
        SqliteLocation::Memory
    );
    assert_eq!(
        parse_url("Sqlite://:memory:").expect("upper"),
        SqliteLocation::Memory
    );
    url_error("sqlites:///var/q.db");
    url_error("sqlite:/var/q.db");
}

#[test]
fn url_errors_never_show_a_secret() {
    for url in [
        "sqlite://user:hunter2@localhost/q.db",
        "sqlite://user:hunter2@/q.db",
        "postgres://user:hunter2@localhost/db",
        "sqlite:///q.db?password=hunter2",
        "sqlite:///q.db?token=hunter2&mode=ro",
    ] {
        let e = url_error(url);
        assert!(!format!("{e:#}").contains("hunter2"), "{url}: {e:#}");
    }
}

#[test]
fn a_relative_path_starting_with_file_colon_is_a_file_name() {
    // SQLite would read `file:q.db?mode=memory` as a URI with parameters of its own.
    assert_eq!(
        writer::sqlite_path(Path::new("file:q.db?mode=memory")),
        Path::new("./file:q.db?mode=memory")
    );
    assert_eq!(
        writer::sqlite_path(Path::new("data/q.db")),
        Path::new("data/q.db")
    );
    assert_eq!(
        writer::sqlite_path(Path::new("/abs/file:q.db")),
        Path::new("/abs/file:q.db")
    );
}

#[tokio::test]
async fn url_query_never_becomes_part_of_the_file_name() {
    // Before: `sqlite://?mode=ro` opened (and created) a file named `?mode=ro` here.
    let r = SqliteBackend::from_url("sqlite://?mode=ro").await;
    let litter = Path::new("?mode=ro").exists();
    let _ = std::fs::remove_file("?mode=ro");
    assert!(!litter, "a file named ?mode=ro was created");
    assert_eq!(r.expect_err("empty path").kind(), ErrorKind::InvalidInput);

    let dir = TempDir::new("url-query");
    let url = format!("sqlite://{}?busy_timeout=250", dir.file("q.db").display());
    let b = SqliteBackend::from_url(&url).await.expect("open");
    assert_eq!(b.path(), dir.file("q.db"));
    drop(b);
    let url = format!("sqlite://{}?journal=off", dir.file("r.db").display());
    let e = SqliteBackend::from_url(&url)
        .await
        .expect_err("unknown parameter");
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(e.message().contains("journal"), "{e}");
    assert!(
        listing(&dir.0).iter().all(|n| n.starts_with("q.db")),
        "{:?}",
        listing(&dir.0)
    );
}

#[tokio::test]
async fn url_percent_escapes_open_the_decoded_file() {
    let dir = TempDir::new("url-escape");
    let url = format!("sqlite://{}/x-%20y.db", dir.0.display());
    let b = SqliteBackend::from_url(&url).await.expect("open");
    assert_eq!(b.path(), dir.file("x- y.db"));
    let q: &dyn Queue = &b;
    q.publish("q", Message::new("k", "v"))
        .await
        .expect("publish");
    assert!(dir.file("x- y.db").is_file());
    assert!(!dir.file("x-%20y.db").exists());
    let e = SqliteBackend::from_url(&format!("sqlite://{}/x-%2.db", dir.0.display()))
        .await
        .expect_err("bad escape");
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
}

#[tokio::test]
async fn mode_rw_and_ro_refuse_a_missing_file_and_create_nothing() {
    let dir = TempDir::new("mode-missing");
    let path = dir.file("q.db");
    for mode in ["ro", "rw"] {
        let url = format!("sqlite://{}?mode={mode}", path.display());
        let e = SqliteBackend::from_url(&url).await.expect_err("missing");
        assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
        assert!(e.message().contains(&path.display().to_string()), "{e}");
        assert!(e.message().contains("does not exist"), "{e}");
        assert!(listing(&dir.0).is_empty(), "{:?}", listing(&dir.0));
    }
    let url = format!("sqlite://{}?mode=rwc", path.display());
    drop(SqliteBackend::from_url(&url).await.expect("rwc creates"));
    let url = format!("sqlite://{}?mode=rw", path.display());
    drop(
        SqliteBackend::from_url(&url)
            .await
            .expect("rw opens what exists"),
    );
}

#[tokio::test]
async fn mode_ro_reads_and_refuses_writes_naming_the_path() {
    let dir = TempDir::new("mode-ro");
    let path = dir.file("q.db");
    {
        let b = open(&path).await;
        let q: &dyn Queue = &b;
        q.publish("jobs", Message::new("k", "v"))
            .await
            .expect("publish");
    }
    let b = SqliteBackend::builder()
        .url(&format!("sqlite://{}?mode=ro", path.display()))
        .expect("url")
        .build()
        .await
        .expect("read-only open");
    assert_eq!(b.queue_names().await.expect("names"), ["jobs"]);
    let q: &dyn Queue = &b;
    let e = q
        .publish("jobs", Message::new("k", "w"))
        .await
        .expect_err("read-only");
    assert_eq!(e.kind(), ErrorKind::Backend, "{e}");
    assert!(e.message().contains("read-only"), "{e}");
    assert!(e.message().contains(&path.display().to_string()), "{e}");
    drop(b);
    // Nothing was written: the message is still there, once.
    let b = open(&path).await;
    let q: &dyn Queue = &b;
    assert_eq!(q.stats("jobs").await.expect("stats").published, 1);
}

#[tokio::test]
async fn huge_busy_timeout_is_clamped_not_a_panic() {
    let dir = TempDir::new("huge-busy");
    let b = SqliteBackend::builder()
        .path(dir.file("q.db"))
        .busy_timeout(Duration::MAX)
        .build()
        .await
        .expect("open");
    let q: &dyn Queue = &b;
    q.publish("q", Message::new("k", "v"))
        .await
        .expect("publish");
}

#[tokio::test]
async fn empty_path_and_missing_target_are_invalid() {
    let e = SqliteBackend::from_url("sqlite://")
        .await
        .expect_err("empty");
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    let e = SqliteBackend::builder().build().await.expect_err("none");
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    let e = SqliteBackend::builder()
        .path("")
        .build()
        .await
        .expect_err("empty path");
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
}

#[tokio::test]
async fn in_memory_database_works() {
    let b = SqliteBackend::from_url("sqlite::memory:")
        .await
        .expect("open");
    assert!(b.is_in_memory());
    let b: &dyn Queue = &b;
    b.publish("q", Message::new("k", "p"))
        .await
        .expect("publish");
    let d = b
        .receive_one("q", Duration::ZERO)
        .await
        .expect("receive")
        .expect("one");
    assert_eq!(d.message.attempt, 1);
    b.ack("q", &d.lease).await.expect("ack");
}

// ---------------------------------------------------------------------------------------
// Migrations

#[tokio::test]
async fn migrations_fresh_and_reopen() {
    let dir = TempDir::new("migrate");
    let path = dir.file("q.db");
    {
        let b = open(&path).await;
        let b: &dyn Queue = &b;
        b.publish("q", Message::new("k", "durable"))
            .await
            .expect("publish");
    }
    assert_eq!(user_version(&path), i64::from(SCHEMA_VERSION));
    // Reopen: no migration runs again, the data is there.
    let b = open(&path).await;
    let b: &dyn Queue = &b;
    let d = b
        .receive_one("q", Duration::from_secs(1))
        .await
        .expect("receive")
        .expect("the message survived");
    assert_eq!(&d.message.payload[..], b"durable");
    assert_eq!(user_version(&path), i64::from(SCHEMA_VERSION));
}

#[tokio::test]
async fn migration_2_keeps_rows_of_a_version_1_database() {
    let dir = TempDir::new("migrate-v1");
    let path = dir.file("q.db");
    {
        // A database as version 1 left it: a queue with a ready Low, a ready Critical and a
        // dead message.
        let c = rusqlite::Connection::open(&path).expect("open");
        c.execute_batch(schema::MIGRATIONS[0]).expect("v1 schema");
        c.pragma_update(None, "application_id", schema::APPLICATION_ID)
            .expect("application_id");
        c.pragma_update(None, "user_version", 1)
            .expect("user_version");
        c.execute(
            "INSERT INTO courier_queues (qid, kind, name, next_seq, published, dead_lettered) \
             VALUES (7, 'queue', 'q', 4, 3, 1)",
            [],
        )
        .expect("queue row");
        let mut ins = c
            .prepare(
                "INSERT INTO courier_messages (qid, id, priority, state, seq, deliveries, \
                 last_error, failed_at, body) VALUES (7, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .expect("prepare");
        for (kind, priority, state, seq, deliveries, error, failed_at) in [
            ("low", Priority::Low, 0, 1, 0, None, None),
            ("critical", Priority::Critical, 0, 2, 0, None, None),
            ("dead", Priority::Normal, 3, 3, 3, Some("boom"), Some(5)),
        ] {
            let m = Message::new(kind, "v1").with_priority(priority);
            let body = courier_core::wire::encode(&m).expect("encode");
            ins.execute(rusqlite::params![
                &m.id.as_bytes()[..],
                priority.index() as i64,
                state,
                seq,
                deliveries,
                error,
                failed_at,
                &body[..]
            ])
            .expect("insert");
        }
    }
    let b = open(&path).await;
    assert_eq!(user_version(&path), i64::from(SCHEMA_VERSION));
    {
        let c = rusqlite::Connection::open(&path).expect("open");
        let sql: String = c
            .query_row(
                "SELECT sql FROM sqlite_schema WHERE name = 'courier_messages'",
                [],
                |r| r.get(0),
            )
            .expect("schema");
        assert!(!sql.contains("IN (0, 1, 2, 3)"), "{sql}");
        let indexes: i64 = c
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE type = 'index' \
                 AND tbl_name = 'courier_messages' AND name LIKE 'courier_messages_%'",
                [],
                |r| r.get(0),
            )
            .expect("indexes");
        assert_eq!(indexes, 6);
    }
    let q: &dyn Queue = &b;
    let st = q.stats("q").await.expect("stats");
    assert_eq!(st.published, 3);
    assert_eq!(st.dead, 1);
    let ds = q
        .receive("q", 10, Duration::from_secs(1))
        .await
        .expect("receive");
    let kinds: Vec<&str> = ds.iter().map(|d| d.message.kind.as_str()).collect();
    assert_eq!(kinds, ["critical", "low"]);
    let dead = q.dead_letters("q", Page::first(10)).await.expect("dead");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].error, "boom");
    assert_eq!(dead[0].attempts, 3);
}

#[tokio::test]
async fn migration_3_keeps_a_version_2_database_and_adds_deduplication() {
    let dir = TempDir::new("migrate-v2");
    let path = dir.file("q.db");
    let old = Message::new("old", "v2");
    {
        // A database as version 2 left it: a queue with one ready message and its counters.
        let c = rusqlite::Connection::open(&path).expect("open");
        c.execute_batch(schema::MIGRATIONS[0]).expect("v1 schema");
        c.execute_batch(schema::MIGRATIONS[1]).expect("v2 schema");
        c.pragma_update(None, "application_id", schema::APPLICATION_ID)
            .expect("application_id");
        c.pragma_update(None, "user_version", 2)
            .expect("user_version");
        c.execute(
            "INSERT INTO courier_queues (qid, kind, name, next_seq, published) \
             VALUES (3, 'queue', 'q', 2, 1)",
            [],
        )
        .expect("queue row");
        let body = courier_core::wire::encode(&old).expect("encode");
        c.execute(
            "INSERT INTO courier_messages (qid, id, priority, state, seq, body) \
             VALUES (3, ?1, 2, 0, 1, ?2)",
            rusqlite::params![&old.id.as_bytes()[..], &body[..]],
        )
        .expect("insert");
    }
    let b = within(SqliteBackend::builder().path(&path).build())
        .await
        .expect("open");
    assert_eq!(user_version(&path), i64::from(SCHEMA_VERSION));
    let q: &dyn Queue = &b;
    let st = within(q.stats("q")).await.expect("stats");
    assert_eq!((st.published, st.deduplicated, st.ready_total()), (1, 0, 1));
    let keyed = || Message::new("new", "").with_dedup_key("k");
    let first = within(q.publish_unique("q", keyed()))
        .await
        .expect("publish");
    assert!(!first.is_duplicate());
    let again = within(q.publish_unique("q", keyed()))
        .await
        .expect("publish");
    assert_eq!(again, courier_core::Published::Duplicate(first.id()));
    let ds = within(q.receive("q", 10, Duration::from_secs(1)))
        .await
        .expect("receive");
    assert_eq!(ds.len(), 2);
    assert_eq!(ds[0].message.id, old.id);
    for d in &ds {
        within(q.ack("q", &d.lease)).await.expect("ack");
    }
    let st = within(q.stats("q")).await.expect("stats");
    assert_eq!((st.published, st.acked, st.deduplicated), (2, 2, 1));
}

#[tokio::test]
async fn migration_4_keeps_a_version_3_database_and_counts_expiry() {
    let dir = TempDir::new("migrate-v3");
    let path = dir.file("q.db");
    let old = Message::new("old", "v3");
    {
        // A database as version 3 left it: a queue with counters and one ready message.
        let c = rusqlite::Connection::open(&path).expect("open");
        for sql in &schema::MIGRATIONS[..3] {
            c.execute_batch(sql).expect("v1..v3 schema");
        }
        c.pragma_update(None, "application_id", schema::APPLICATION_ID)
            .expect("application_id");
        c.pragma_update(None, "user_version", 3)
            .expect("user_version");
        c.execute(
            "INSERT INTO courier_queues (qid, kind, name, next_seq, published, dead_lettered, \
             deduplicated) VALUES (5, 'queue', 'q', 2, 4, 1, 2)",
            [],
        )
        .expect("queue row");
        let body = courier_core::wire::encode(&old).expect("encode");
        c.execute(
            "INSERT INTO courier_messages (qid, id, priority, state, seq, body) \
             VALUES (5, ?1, 2, 0, 1, ?2)",
            rusqlite::params![&old.id.as_bytes()[..], &body[..]],
        )
        .expect("insert");
    }
    let b = within(open(&path)).await;
    assert_eq!(user_version(&path), i64::from(SCHEMA_VERSION));
    let q: &dyn Queue = &b;
    let st = within(q.stats("q")).await.expect("stats");
    assert_eq!(
        (st.published, st.dead_lettered, st.deduplicated, st.expired),
        (4, 1, 2, 0)
    );
    // The old row has no expiry; a new one that expires is counted, and the count is stored.
    within(q.publish(
        "q",
        Message::new("brief", "").with_ttl(Duration::from_millis(30)),
    ))
    .await
    .expect("publish");
    tokio::time::sleep(Duration::from_millis(60)).await;
    let ds = within(q.receive("q", 10, Duration::ZERO))
        .await
        .expect("receive");
    assert_eq!(ds.len(), 1);
    assert_eq!(ds[0].message.id, old.id);
    within(q.ack("q", &ds[0].lease)).await.expect("ack");
    drop(b);
    let b = within(open(&path)).await;
    let q: &dyn Queue = &b;
    let st = within(q.stats("q")).await.expect("stats");
    assert_eq!(
        (
            st.published,
            st.acked,
            st.expired,
            st.dead_lettered,
            st.dead,
            st.stored()
        ),
        (5, 1, 1, 1, 1, 1)
    );
}

/// `f`, or a failure after 20 s: the deduplication tests bound every await.
async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("timed out")
}

/// Key rows left in `courier_dedup` whose key does not start with `probe`.
fn key_rows(path: &Path) -> i64 {
    let c = rusqlite::Connection::open(path).expect("open");
    c.query_row(
        "SELECT count(*) FROM courier_dedup WHERE key NOT LIKE 'probe%'",
        [],
        |r| r.get(0),
    )
    .expect("count")
}

#[tokio::test]
async fn key_rows_whose_window_passed_are_purged() {
    let dir = TempDir::new("purge-keys");
    let path = dir.file("q.db");
    let b = open(&path).await;
    b.configure("q", config().with_dedup_window(Duration::from_millis(100)))
        .expect("configure");
    let q: &dyn Queue = &b;
    let batch = (0..20)
        .map(|n| Message::new("k", "").with_dedup_key(format!("key-{n}")))
        .collect();
    within(q.publish_batch("q", batch)).await.expect("publish");
    assert_eq!(key_rows(&path), 20);
    let ds = within(q.receive("q", 20, Duration::from_secs(1)))
        .await
        .expect("receive");
    assert_eq!(ds.len(), 20);
    for d in &ds {
        within(q.ack("q", &d.lease)).await.expect("ack");
    }
    // Held (not live) until the window passes, then purged by later keyed publishes: poll,
    // bounded, publishing a fresh probe key each time.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    while key_rows(&path) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "key rows never purged"
        );
        within(tokio::time::sleep(Duration::from_millis(20))).await;
        n += 1;
        within(q.publish_unique(
            "q",
            Message::new("p", "").with_dedup_key(format!("probe-{n}")),
        ))
        .await
        .expect("probe");
    }
}

#[tokio::test]
async fn newer_schema_is_refused() {
    let dir = TempDir::new("newer");
    let path = dir.file("q.db");
    drop(open(&path).await);
    {
        let c = rusqlite::Connection::open(&path).expect("open");
        c.pragma_update(None, "user_version", i64::from(SCHEMA_VERSION) + 1)
            .expect("bump");
    }
    let e = SqliteBackend::builder()
        .path(&path)
        .build()
        .await
        .expect_err("newer schema");
    assert_eq!(e.kind(), ErrorKind::Backend);
    assert!(e.message().contains("newer"), "{e}");
    assert!(e.message().contains(&path.display().to_string()), "{e}");
    // Refused without touching it: the version stays, nothing is migrated down.
    assert_eq!(user_version(&path), i64::from(SCHEMA_VERSION) + 1);
}

#[tokio::test]
async fn foreign_database_is_refused() {
    let dir = TempDir::new("foreign");
    let path = dir.file("other.db");
    {
        let c = rusqlite::Connection::open(&path).expect("open");
        c.pragma_update(None, "application_id", 1234)
            .expect("app id");
        c.execute_batch("CREATE TABLE t (x)").expect("table");
    }
    let e = SqliteBackend::builder()
        .path(&path)
        .build()
        .await
        .expect_err("foreign");
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(e.message().contains("another application"), "{e}");
    assert_eq!(
        journal_mode(&path),
        "delete",
        "refused before the WAL switch"
    );
}

/// A plain SQLite database of another program: a table with a row, rollback journal, no
/// application id.
fn foreign_file(path: &Path) {
    let c = rusqlite::Connection::open(path).expect("open");
    c.execute_batch("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO users (name) VALUES ('ada');")
        .expect("foreign schema");
}

fn journal_mode(path: &Path) -> String {
    let c = rusqlite::Connection::open(path).expect("open");
    c.pragma_query_value(None, "journal_mode", |r| r.get(0))
        .expect("journal_mode")
}

fn table_names(path: &Path) -> Vec<String> {
    let c = rusqlite::Connection::open(path).expect("open");
    let mut s = c
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
        .expect("prepare");
    s.query_map([], |r| r.get(0))
        .expect("query")
        .collect::<rusqlite::Result<_>>()
        .expect("names")
}

#[tokio::test]
async fn a_foreign_database_is_refused_and_left_untouched() {
    let dir = TempDir::new("foreign-plain");
    let path = dir.file("app.db");
    foreign_file(&path);
    let bytes = std::fs::read(&path).expect("read");
    for how in ["builder", "url", "url foreign=refuse"] {
        let r = match how {
            "builder" => SqliteBackend::builder().path(&path).build().await,
            "url" => SqliteBackend::from_url(&format!("sqlite://{}", path.display())).await,
            _ => {
                SqliteBackend::from_url(&format!("sqlite://{}?foreign=refuse", path.display()))
                    .await
            }
        };
        let e = r.expect_err("a foreign database must be refused");
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{how}: {e}");
        assert!(e.message().contains(&path.display().to_string()), "{e}");
        assert!(e.message().contains("users"), "names what it found: {e}");
        assert!(e.message().contains("allow_foreign_database(true)"), "{e}");
        assert!(e.message().contains("foreign=allow"), "{e}");
    }
    // Refused before anything changed: same bytes, still a rollback journal, no Courier
    // tables, no -wal or -shm.
    assert!(
        std::fs::read(&path).expect("read") == bytes,
        "the file was changed"
    );
    assert_eq!(journal_mode(&path), "delete");
    assert_eq!(table_names(&path), ["users"]);
    assert_eq!(listing(&dir.0), ["app.db"]);
    // Read-only handles refuse it too.
    let e = SqliteBackend::from_url(&format!("sqlite://{}?mode=ro", path.display()))
        .await
        .expect_err("foreign, read-only");
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
}

#[tokio::test]
async fn a_foreign_database_is_shared_only_when_allowed() {
    let dir = TempDir::new("foreign-allowed");
    let path = dir.file("app.db");
    foreign_file(&path);
    {
        let b = SqliteBackend::builder()
            .path(&path)
            .allow_foreign_database(true)
            .build()
            .await
            .expect("allowed explicitly");
        let q: &dyn Queue = &b;
        q.publish("jobs", Message::new("k", "shared"))
            .await
            .expect("publish");
    }
    let tables = table_names(&path);
    assert!(tables.contains(&"users".to_string()), "{tables:?}");
    assert!(tables.contains(&"courier_queues".to_string()), "{tables:?}");
    {
        let c = rusqlite::Connection::open(&path).expect("open");
        let name: String = c
            .query_row("SELECT name FROM users", [], |r| r.get(0))
            .expect("their row");
        assert_eq!(name, "ada");
        let app: i32 = c
            .pragma_query_value(None, "application_id", |r| r.get(0))
            .expect("app id");
        assert_eq!(app, 0, "not marked as Courier's own file");
    }
    // Still not Courier's own: each open says so again.
    let e = SqliteBackend::builder()
        .path(&path)
        .build()
        .await
        .expect_err("still foreign");
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    let b = SqliteBackend::from_url(&format!("sqlite://{}?foreign=allow", path.display()))
        .await
        .expect("allowed by URL");
    let q: &dyn Queue = &b;
    let d = q
        .receive_one("jobs", Duration::ZERO)
        .await
        .expect("receive")
        .expect("the message");
    assert_eq!(&d.message.payload[..], b"shared");
}

#[tokio::test]
async fn a_foreign_database_using_user_version_cannot_be_shared() {
    let dir = TempDir::new("foreign-version");
    let path = dir.file("app.db");
    foreign_file(&path);
    set_user_version(&path, 1);
    let bytes = std::fs::read(&path).expect("read");
    let e = SqliteBackend::builder()
        .path(&path)
        .allow_foreign_database(true)
        .build()
        .await
        .expect_err("its user_version is not Courier's schema version");
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(e.message().contains("user_version"), "{e}");
    assert!(e.message().contains(&path.display().to_string()), "{e}");
    assert!(
        std::fs::read(&path).expect("read") == bytes,
        "the file was changed"
    );
    assert_eq!(listing(&dir.0), ["app.db"]);
}

#[tokio::test]
async fn empty_and_new_files_become_courier_databases() {
    let dir = TempDir::new("empty");
    // A zero-byte file, a SQLite database with no tables, and no file at all.
    let zero = dir.file("zero.db");
    std::fs::write(&zero, b"").expect("touch");
    let blank = dir.file("blank.db");
    {
        let c = rusqlite::Connection::open(&blank).expect("open");
        c.execute_batch("CREATE TABLE t (x); DROP TABLE t;")
            .expect("blank");
    }
    let new = dir.file("new.db");
    for path in [&zero, &blank, &new] {
        drop(open(path).await);
        assert_eq!(
            user_version(path),
            i64::from(SCHEMA_VERSION),
            "{}",
            path.display()
        );
        let c = rusqlite::Connection::open(path).expect("open");
        let app: i32 = c
            .pragma_query_value(None, "application_id", |r| r.get(0))
            .expect("app id");
        assert_eq!(app, schema::APPLICATION_ID, "{}", path.display());
        drop(c);
        // ... and open again as Courier's own, without any opt-in.
        drop(open(path).await);
    }
}

// ---------------------------------------------------------------------------------------
// Bad files

#[tokio::test]
async fn missing_directory_is_an_error_naming_the_path() {
    let dir = TempDir::new("missing");
    let path = dir.file("no/such/dir/q.db");
    let e = SqliteBackend::builder()
        .path(&path)
        .build()
        .await
        .expect_err("missing dir");
    assert_eq!(e.kind(), ErrorKind::Backend);
    assert!(e.message().contains(&path.display().to_string()), "{e}");
    assert!(e.message().contains("does not exist"), "{e}");
    assert!(!dir.file("no").exists(), "no directory may be created");
}

#[tokio::test]
async fn corrupt_file_is_an_error_naming_the_path() {
    let dir = TempDir::new("corrupt");
    let path = dir.file("q.db");
    std::fs::write(&path, vec![0x5au8; 8192]).expect("write garbage");
    let e = SqliteBackend::builder()
        .path(&path)
        .build()
        .await
        .expect_err("corrupt");
    assert_eq!(e.kind(), ErrorKind::Backend);
    assert!(e.message().contains(&path.display().to_string()), "{e}");
    assert!(e.message().contains("not a SQLite database"), "{e}");
    // The file was not replaced.
    assert_eq!(std::fs::read(&path).expect("read"), vec![0x5au8; 8192]);
}

/// The names of the files in a directory, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn short_garbage_file_is_an_error_naming_the_path() {
    let dir = TempDir::new("garbage");
    let path = dir.file("q.db");
    std::fs::write(&path, b"hello, not a database").expect("write garbage");
    let e = SqliteBackend::builder()
        .path(&path)
        .build()
        .await
        .expect_err("garbage");
    assert_eq!(e.kind(), ErrorKind::Backend);
    assert!(e.message().contains(&path.display().to_string()), "{e}");
    assert!(e.message().contains("not a SQLite database"), "{e}");
    assert_eq!(
        std::fs::read(&path).expect("read"),
        b"hello, not a database"
    );
    assert_eq!(listing(&dir.0), ["q.db"], "no second database was created");
}

#[tokio::test]
async fn corrupt_pages_behind_a_valid_header_are_an_error_naming_the_path() {
    let dir = TempDir::new("corrupt-pages");
    let path = dir.file("q.db");
    {
        let b = open(&path).await;
        let q: &dyn Queue = &b;
        q.publish("q", Message::new("k", "x"))
            .await
            .expect("publish");
    }
    // Fold the WAL into the file, then overwrite everything after the 100-byte header
    // (the schema table lives on page 1) with garbage.
    {
        let c = rusqlite::Connection::open(&path).expect("open");
        // The dropped backend's writer thread closes its connection by itself, soon; leaving
        // WAL mode needs the file alone and does not wait on the busy handler.
        let end = std::time::Instant::now() + Duration::from_secs(5);
        while let Err(e) =
            c.pragma_update_and_check(None, "journal_mode", "DELETE", |r| r.get::<_, String>(0))
        {
            assert!(std::time::Instant::now() < end, "checkpoint: {e}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let mut bytes = std::fs::read(&path).expect("read");
    for b in &mut bytes[100..] {
        *b = 0xa5;
    }
    std::fs::write(&path, &bytes).expect("write garbage");
    let e = SqliteBackend::builder()
        .path(&path)
        .busy_timeout(Duration::from_millis(100))
        .build()
        .await
        .expect_err("corrupt");
    assert_eq!(e.kind(), ErrorKind::Backend, "{e}");
    assert!(e.message().contains(&path.display().to_string()), "{e}");
    assert!(e.message().contains("corrupt"), "{e}");
    assert_eq!(std::fs::read(&path).expect("read"), bytes, "left as it was");
    assert_eq!(listing(&dir.0), ["q.db"], "no second database was created");
}

#[tokio::test]
async fn exclusively_locked_database_at_open_is_unavailable_naming_the_path() {
    let dir = TempDir::new("locked-open");
    let path = dir.file("q.db");
    drop(open(&path).await);
    // Another process took the file for itself (exclusive locking mode holds the lock until
    // it closes): opening must fail after the busy timeout, clearly, and not wait forever.
    let other = rusqlite::Connection::open(&path).expect("open");
    other
        .execute_batch("PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE; COMMIT;")
        .expect("lock");
    let started = std::time::Instant::now();
    let e = tokio::time::timeout(
        Duration::from_secs(10),
        SqliteBackend::builder()
            .path(&path)
            .busy_timeout(Duration::from_millis(200))
            .build(),
    )
    .await
    .expect("open gives up within the busy timeout")
    .expect_err("locked");
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.is_retryable());
    assert!(e.message().contains(&path.display().to_string()), "{e}");
    assert!(e.message().contains("locked"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // Once the other process lets go, the same file opens with its data.
    drop(other);
    let b = open(&path).await;
    let q: &dyn Queue = &b;
    q.publish("q", Message::new("k", "after"))
        .await
        .expect("publish");
}

#[tokio::test]
async fn read_only_file_is_an_error_naming_the_path() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("readonly");
    let path = courier_file_at_version(&dir, i64::from(SCHEMA_VERSION)).await;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).expect("chmod");
    // A file this process may not write is opened read-only by SQLite, and refused. Root
    // ignores permission bits, so as root a read-only handle (`mode=ro`) on a file that needs
    // writing (an older schema version) stands in for it: SQLite treats both the same way.
    let writable = std::fs::OpenOptions::new().write(true).open(&path).is_ok();
    let builder = if writable {
        set_user_version(&path, 1);
        SqliteBackend::builder()
            .url(&format!("sqlite://{}?mode=ro", path.display()))
            .expect("url")
    } else {
        SqliteBackend::builder().path(&path)
    };
    let e = builder
        .busy_timeout(Duration::from_millis(100))
        .build()
        .await
        .expect_err("a read-only database must be refused");
    assert_eq!(e.kind(), ErrorKind::Backend);
    assert!(e.message().contains("read-only"), "{e}");
    assert!(e.message().contains(&path.display().to_string()), "{e}");
    // ... without leaving an empty -wal and a -shm next to it.
    assert_eq!(listing(&dir.0), ["q.db"], "writable: {writable}");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
}

/// Wait (up to 5 s) until the directory holds exactly `names`: a dropped backend's threads
/// close their connections by themselves, shortly after.
async fn settles(dir: &Path, names: &[&str]) {
    let end = std::time::Instant::now() + Duration::from_secs(5);
    while listing(dir) != names {
        assert!(
            std::time::Instant::now() < end,
            "{:?} never became {names:?}",
            listing(dir)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A closed Courier database (WAL) at schema version `version`, alone in its directory.
async fn courier_file_at_version(dir: &TempDir, version: i64) -> PathBuf {
    let path = dir.file("q.db");
    drop(open(&path).await);
    settles(&dir.0, &["q.db"]).await;
    set_user_version(&path, version);
    assert_eq!(journal_mode(&path), "wal");
    settles(&dir.0, &["q.db"]).await;
    path
}

#[tokio::test]
async fn a_failed_open_removes_the_wal_and_shm_it_created() {
    // Root ignores permission bits, so a `chmod 444` file does not fail here; a read-only
    // handle (`mode=ro`) on a file that needs writing fails the same way for every user: an
    // older schema (needs a migration) and a newer one (refused). SQLite's read-only
    // connection creates `-wal` and `-shm` on its first read and leaves them when it closes.
    for version in [1, i64::from(SCHEMA_VERSION) + 1] {
        let dir = TempDir::new("failed-open-litter");
        let path = courier_file_at_version(&dir, version).await;
        let e = SqliteBackend::from_url(&format!("sqlite://{}?mode=ro", path.display()))
            .await
            .expect_err("needs writing");
        assert_eq!(e.kind(), ErrorKind::Backend, "{e}");
        assert!(e.message().contains(&path.display().to_string()), "{e}");
        // Bounded wait: a background thread of the failed handle may still hold its
        // connection for a moment on a loaded machine. Without the clean-up the files stay
        // for good (a read-only connection leaves them), so this still fails.
        settles(&dir.0, &["q.db"]).await;
        assert_eq!(user_version(&path), version, "left as it was");
    }
}

#[tokio::test]
async fn a_failed_open_keeps_the_wal_and_shm_of_others() {
    let dir = TempDir::new("failed-open-others");
    let path = courier_file_at_version(&dir, 1).await;
    // Another connection has the database open: its -wal and -shm existed before the
    // attempt and must survive it (with what they hold).
    let other = rusqlite::Connection::open(&path).expect("open");
    other
        .execute_batch("CREATE TABLE courier_note (x); INSERT INTO courier_note VALUES (1);")
        .expect("write");
    assert_eq!(listing(&dir.0), ["q.db", "q.db-shm", "q.db-wal"]);
    let e = SqliteBackend::from_url(&format!("sqlite://{}?mode=ro", path.display()))
        .await
        .expect_err("needs a migration");
    assert_eq!(e.kind(), ErrorKind::Backend, "{e}");
    assert_eq!(listing(&dir.0), ["q.db", "q.db-shm", "q.db-wal"]);
    let n: i64 = other
        .query_row("SELECT count(*) FROM courier_note", [], |r| r.get(0))
        .expect("still works");
    assert_eq!(n, 1);
    drop(other);
    assert_eq!(listing(&dir.0), ["q.db"]);
}

#[tokio::test]
async fn a_read_only_handle_leaves_no_wal_or_shm_behind() {
    let dir = TempDir::new("ro-litter");
    let path = courier_file_at_version(&dir, i64::from(SCHEMA_VERSION)).await;
    let b = SqliteBackend::from_url(&format!("sqlite://{}?mode=ro", path.display()))
        .await
        .expect("read-only open");
    assert!(b.queue_names().await.expect("names").is_empty());
    drop(b);
    settles(&dir.0, &["q.db"]).await;
}

#[tokio::test]
async fn locked_database_is_unavailable_and_retryable() {
    let dir = TempDir::new("locked");
    let path = dir.file("q.db");
    drop(open(&path).await);
    let b = SqliteBackend::builder()
        .path(&path)
        .busy_timeout(Duration::from_millis(100))
        .build()
        .await
        .expect("open");
    let b: &dyn Queue = &b;
    let other = rusqlite::Connection::open(&path).expect("open");
    other.execute_batch("BEGIN EXCLUSIVE").expect("lock");
    let e = b
        .publish("q", Message::new("k", ""))
        .await
        .expect_err("locked");
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.is_retryable());
    assert!(e.message().contains(&path.display().to_string()), "{e}");
    assert_eq!(e.stored(), Some(0));
    other.execute_batch("COMMIT").expect("unlock");
    b.publish("q", Message::new("k", ""))
        .await
        .expect("works again");
}

// ---------------------------------------------------------------------------------------
// Cross-connection leasing

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_backends_on_one_file_never_lease_the_same_message() {
    let dir = TempDir::new("cross");
    let path = dir.file("q.db");
    let a = open(&path).await;
    let b = open(&path).await;
    const N: usize = 300;
    let msgs: Vec<Message> = (0..N).map(|i| Message::new("k", format!("{i}"))).collect();
    a.publish_batch("q", msgs).await.expect("publish");
    let mut tasks = Vec::new();
    for backend in [a.clone(), b.clone(), a.clone(), b.clone()] {
        tasks.push(tokio::spawn(async move {
            let backend: &dyn Queue = &backend;
            let mut got = Vec::new();
            loop {
                let ds = backend
                    .receive("q", 7, Duration::from_millis(100))
                    .await
                    .expect("receive");
                if ds.is_empty() {
                    break;
                }
                for d in ds {
                    got.push(d.message.id);
                    backend.ack("q", &d.lease).await.expect("ack: lease held");
                }
            }
            got
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(all.len(), N, "every message delivered exactly once");
    assert_eq!(unique.len(), N);
    let s = Queue::stats(&b, "q").await.expect("stats");
    assert_eq!((s.acked, s.published, s.stored()), (N as u64, N as u64, 0));
}

#[tokio::test]
async fn another_handle_wakes_a_waiting_receiver_promptly() {
    let dir = TempDir::new("wake");
    let path = dir.file("q.db");
    let a = open(&path).await;
    let b = open(&path).await;
    let waiter = tokio::spawn(async move {
        let b: &dyn Queue = &b;
        let t = std::time::Instant::now();
        let d = b
            .receive_one("q", Duration::from_secs(5))
            .await
            .expect("receive");
        (d.is_some(), t.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    QueueExt::publish(&a, "q", Message::new("k", ""))
        .await
        .expect("publish");
    let (got, took) = waiter.await.expect("task");
    assert!(got);
    assert!(took < Duration::from_millis(1000), "{took:?}");
}

// ---------------------------------------------------------------------------------------
// Queue semantics (mirrors the reference model)

/// An in-memory backend with the tests' default configuration.
async fn in_memory() -> SqliteBackend {
    SqliteBackend::builder()
        .in_memory()
        .default_config(config())
        .build()
        .await
        .expect("open")
}

#[tokio::test]
async fn strict_priority_fifo_and_release_to_front() {
    let b = in_memory().await;
    let b: &dyn Queue = &b;
    for (k, p) in [
        ("l1", Priority::Low),
        ("n1", Priority::Normal),
        ("c1", Priority::Critical),
        ("n2", Priority::Normal),
        ("c2", Priority::Critical),
    ] {
        b.publish("q", Message::new(k, "").with_priority(p))
            .await
            .expect("publish");
    }
    let ds = b.receive("q", 3, Duration::ZERO).await.expect("receive");
    let kinds: Vec<_> = ds.iter().map(|d| d.message.kind.as_str()).collect();
    assert_eq!(kinds, ["c1", "c2", "n1"]);
    // Release n1 then c2: both go to the front of their level, not counted.
    b.release("q", &ds[2].lease).await.expect("release");
    b.release("q", &ds[1].lease).await.expect("release");
    let e = b
        .ack("q", &ds[1].lease)
        .await
        .expect_err("released lease is gone");
    assert_eq!(e.kind(), ErrorKind::LeaseLost);
    let ds2 = b.receive("q", 5, Duration::ZERO).await.expect("receive");
    let got: Vec<_> = ds2
        .iter()
        .map(|d| (d.message.kind.as_str(), d.message.attempt))
        .collect();
    assert_eq!(got, [("c2", 1), ("n1", 1), ("n2", 1), ("l1", 1)]);
}

#[tokio::test]
async fn large_publish_batch_keeps_order_delays_and_overrides() {
    // 75 messages: two multi-row INSERT chunks of 32 and 11 single-row inserts.
    let b = in_memory().await;
    let q: &dyn Queue = &b;
    let priorities = [
        Priority::Low,
        Priority::Normal,
        Priority::Critical,
        Priority::High,
    ];
    let messages: Vec<Message> = (0..75)
        .map(|k| {
            let mut m =
                Message::new(format!("m{k}"), format!("{k}")).with_priority(priorities[k % 4]);
            if k % 10 == 3 {
                m = m.with_delay(Duration::from_secs(3600));
            }
            if k.is_multiple_of(7) {
                m = m.with_max_attempts(5);
            }
            m
        })
        .collect();
    let ids = courier_core::Published::ids(
        &q.publish_batch("q", messages.clone())
            .await
            .expect("publish"),
    );
    assert_eq!(ids.len(), 75);
    let st = q.stats("q").await.expect("stats");
    assert_eq!(st.published, 75);
    assert_eq!(st.delayed, 8);
    assert_eq!(st.ready.iter().sum::<u64>(), 67);
    let ds = q.receive("q", 100, Duration::ZERO).await.expect("receive");
    let mut want: Vec<(usize, usize)> = (0..75)
        .filter(|k| k % 10 != 3)
        .map(|k| (priorities[k % 4].index(), k))
        .collect();
    want.sort_unstable();
    let got: Vec<String> = ds.iter().map(|d| d.message.kind.clone()).collect();
    let want: Vec<String> = want.iter().map(|(_, k)| format!("m{k}")).collect();
    assert_eq!(got, want);
    for d in &ds {
        let k: usize = d.message.kind[1..].parse().expect("index");
        assert_eq!(d.message.id, ids[k]);
        assert_eq!(&d.message.payload[..], format!("{k}").as_bytes());
        assert_eq!(d.message.max_attempts, k.is_multiple_of(7).then_some(5));
        assert_eq!(d.message.attempt, 1);
    }
}

#[tokio::test]
async fn delay_lease_expiry_retry_and_dead_letters() {
    let b = in_memory().await;
    let b: &dyn Queue = &b;
    let id = b
        .publish_in("q", Message::new("k", "x"), Duration::from_millis(100))
        .await
        .expect("publish");
    assert!(
        b.receive("q", 1, Duration::ZERO)
            .await
            .expect("r")
            .is_empty()
    );
    assert_eq!(b.stats("q").await.expect("s").delayed, 1);
    let t = std::time::Instant::now();
    let d = b
        .receive_one("q", Duration::from_secs(2))
        .await
        .expect("r")
        .expect("due");
    assert!(
        t.elapsed() >= Duration::from_millis(80),
        "{:?}",
        t.elapsed()
    );
    assert_eq!((d.message.id, d.lease.attempt), (id, 1));
    // Let the lease expire: a failed attempt, retried after 50 ms.
    let d2 = b
        .receive_one("q", Duration::from_secs(2))
        .await
        .expect("r")
        .expect("redelivered");
    assert_eq!(d2.lease.attempt, 2);
    let e = b.ack("q", &d.lease).await.expect_err("stale");
    assert_eq!(e.kind(), ErrorKind::LeaseLost);
    // Nack: attempt 2 of 3 → retry; then 3 → dead.
    let action = b.nack("q", &d2, "boom").await.expect("nack");
    assert!(matches!(action, courier_core::FailureAction::Retry(_)));
    let d3 = b
        .receive_one("q", Duration::from_secs(2))
        .await
        .expect("r")
        .expect("third");
    assert_eq!(d3.lease.attempt, 3);
    let action = b.nack("q", &d3, "final").await.expect("nack");
    assert_eq!(action, courier_core::FailureAction::Dead);
    let s = b.stats("q").await.expect("stats");
    assert_eq!(
        (s.dead, s.retried, s.dead_lettered, s.stored()),
        (1, 2, 1, 1)
    );
    let dl = b.dead_letter("q", id).await.expect("dead letter");
    assert_eq!(
        (dl.error.as_str(), dl.attempts, dl.message.attempt),
        ("final", 3, 3)
    );
    assert_eq!(
        b.dead_letters("q", Page::first(10))
            .await
            .expect("list")
            .len(),
        1
    );
    assert_eq!(
        b.requeue_dead("q", Selection::All).await.expect("requeue"),
        1
    );
    let d4 = b
        .receive_one("q", Duration::ZERO)
        .await
        .expect("r")
        .expect("requeued");
    assert_eq!((d4.message.id, d4.lease.attempt), (id, 1));
    b.settle_one(
        "q",
        Settle::Bury {
            lease: d4.lease,
            error: "again".into(),
        },
    )
    .await
    .expect("bury");
    assert_eq!(
        b.purge_dead("q", Selection::Ids(vec![id]))
            .await
            .expect("purge"),
        1
    );
    let e = b.dead_letter("q", id).await.expect_err("gone");
    assert_eq!(e.kind(), ErrorKind::NotFound);
}

#[tokio::test]
async fn extend_and_double_ack() {
    let b = in_memory().await;
    let b: &dyn Queue = &b;
    b.publish("q", Message::new("k", ""))
        .await
        .expect("publish");
    let d = b
        .receive_one("q", Duration::ZERO)
        .await
        .expect("r")
        .expect("one");
    tokio::time::sleep(Duration::from_millis(120)).await;
    let l = b
        .extend("q", &d.lease, Duration::from_millis(300))
        .await
        .expect("extend");
    assert!(l.deadline_ms > d.lease.deadline_ms);
    tokio::time::sleep(Duration::from_millis(150)).await;
    // Past the original deadline, still held thanks to the extension.
    b.ack("q", &l).await.expect("ack");
    let e = b.ack("q", &l).await.expect_err("double ack");
    assert_eq!(e.kind(), ErrorKind::LeaseLost);
    assert_eq!(b.stats("q").await.expect("s").acked, 1);
}

#[tokio::test]
async fn undecodable_entry_goes_to_dead_letters() {
    let b = in_memory().await;
    let bad = b.inject_raw("q", b"not a message").await.expect("inject");
    let b: &dyn Queue = &b;
    b.publish("q", Message::new("good", ""))
        .await
        .expect("publish");
    let ds = b.receive("q", 10, Duration::ZERO).await.expect("receive");
    assert_eq!(ds.len(), 1);
    assert_eq!(ds[0].message.kind, "good");
    let dl = b.dead_letter("q", bad).await.expect("dead");
    assert!(dl.error.contains("undecodable"), "{}", dl.error);
    assert_eq!(&dl.message.payload[..], b"not a message");
}

#[tokio::test]
async fn junk_rows_without_an_id_get_dead_letters_of_their_own() {
    let dir = TempDir::new("junk-ids");
    let path = dir.file("q.db");
    let b = open(&path).await;
    let q: &dyn Queue = &b;
    q.stats("jq").await.expect("stats creates the queue");
    // A foreign writer inserts rows whose id column is not an id: empty, or nil (twice each).
    {
        let c = rusqlite::Connection::open(&path).expect("open");
        let qid: i64 = c
            .query_row(
                "SELECT qid FROM courier_queues WHERE kind = 'queue' AND name = 'jq'",
                [],
                |r| r.get(0),
            )
            .expect("qid");
        for (seq, id) in [(1, &[][..]), (2, &[0u8; 16][..]), (3, &[]), (4, &[0u8; 16])] {
            c.execute(
                "INSERT INTO courier_messages (qid, id, priority, state, seq, body) \
                 VALUES (?1, ?2, 2, 0, ?3, ?4)",
                rusqlite::params![qid, id, seq, &b"junk"[..]],
            )
            .expect("insert");
        }
    }
    assert!(
        q.receive("jq", 10, Duration::ZERO)
            .await
            .expect("receive")
            .is_empty()
    );
    let dead = q.dead_letters("jq", Page::first(10)).await.expect("dead");
    assert_eq!(dead.len(), 4);
    let ids: HashSet<_> = dead.iter().map(|d| d.message.id).collect();
    assert_eq!(ids.len(), 4, "one id per dead letter: {ids:?}");
    for d in &dead {
        assert!(!d.message.id.is_nil());
        assert_eq!(d.attempts, 1);
        let found = q.dead_letter("jq", d.message.id).await.expect("by id");
        assert_eq!(
            (found.message.id, found.failed_at),
            (d.message.id, d.failed_at)
        );
    }
    // Requeued by id and delivered again: the same dead letter, under the same id.
    let first = dead[0].message.id;
    let n = q
        .requeue_dead("jq", Selection::Ids(vec![first]))
        .await
        .expect("requeue");
    assert_eq!(n, 1);
    assert!(
        q.receive("jq", 10, Duration::ZERO)
            .await
            .expect("receive")
            .is_empty()
    );
    let again = q.dead_letter("jq", first).await.expect("dead again");
    assert_eq!((again.attempts, &again.error), (1, &dead[0].error));
}

#[tokio::test]
async fn dropped_receive_releases_its_lease() {
    let b = SqliteBackend::builder()
        .in_memory()
        .default_config(config().with_visibility_timeout(Duration::from_secs(30)))
        .build()
        .await
        .expect("open");
    let b: &dyn Queue = &b;
    b.publish("q", Message::new("k", ""))
        .await
        .expect("publish");
    // Drop receive futures at random points; the message must stay available.
    for _ in 0..20 {
        let f = b.receive("q", 1, Duration::from_secs(1));
        if let Ok(done) = tokio::time::timeout(Duration::from_micros(50), f).await {
            // Completed in time: give it back (only cancelled receives are under test).
            for d in done.expect("receive") {
                b.release("q", &d.lease).await.expect("release");
            }
        }
    }
    let d = b
        .receive_one("q", Duration::from_secs(1))
        .await
        .expect("r")
        .expect("not lost");
    assert_eq!(d.lease.attempt, 1);
}

// ---------------------------------------------------------------------------------------
// EventBus

#[tokio::test]
async fn event_groups_replay_and_retention() {
    let dir = TempDir::new("events");
    let b = open(&dir.file("e.db")).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            b.emit("t", Message::new("e", format!("{i}")))
                .await
                .expect("emit"),
        );
    }
    // Two groups each get everything, in order.
    for g in ["g1", "g2"] {
        let ds = EventBus::receive(&b, "t", g, 10, Duration::ZERO)
            .await
            .expect("r");
        let got: Vec<_> = ds.iter().map(|d| d.message.id).collect();
        assert_eq!(got, ids);
        for d in &ds {
            EventBusExt::ack(&b, "t", g, &d.lease).await.expect("ack");
        }
    }
    let st = b.group_stats("t", "g1").await.expect("stats");
    assert_eq!((st.lag, st.queue.acked, st.queue.published), (0, 5, 5));
    // Replay from the third event.
    b.reset_group("t", "g1", ReplayFrom::Id(ids[2]))
        .await
        .expect("reset");
    assert_eq!(b.group_stats("t", "g1").await.expect("s").lag, 3);
    let ds = EventBus::receive(&b, "t", "g1", 10, Duration::ZERO)
        .await
        .expect("r");
    assert_eq!(ds.len(), 3);
    assert_eq!(ds[0].message.id, ids[2]);
    // Retention by length.
    b.set_retention(
        "t",
        Retention {
            max_len: Some(2),
            max_age: None,
        },
    )
    .expect("retention");
    assert_eq!(b.topic_len("t").await.expect("len"), 2);
    let e = b
        .reset_group("t", "g2", ReplayFrom::Id(ids[0]))
        .await
        .expect_err("trimmed");
    assert_eq!(e.kind(), ErrorKind::NotFound);
    // A new group starts at the oldest retained event.
    let ds = EventBus::receive(&b, "t", "g3", 10, Duration::ZERO)
        .await
        .expect("r");
    let got: Vec<_> = ds.iter().map(|d| d.message.id).collect();
    assert_eq!(got, ids[3..].to_vec());
}

#[tokio::test]
async fn group_receive_waits_for_emit() {
    let b = Arc::new(
        SqliteBackend::builder()
            .in_memory()
            .build()
            .await
            .expect("open"),
    );
    let b2 = b.clone();
    let waiter = tokio::spawn(async move {
        EventBus::receive(&*b2, "t", "g", 1, Duration::from_secs(5))
            .await
            .expect("r")
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    b.emit("t", Message::new("e", "")).await.expect("emit");
    let got = tokio::time::timeout(Duration::from_secs(1), waiter)
        .await
        .expect("prompt")
        .expect("task");
    assert_eq!(got.len(), 1);
}

// ---------------------------------------------------------------------------------------
// PubSub

#[tokio::test]
async fn pubsub_fans_out_across_handles_and_patterns() {
    let dir = TempDir::new("pubsub");
    let path = dir.file("p.db");
    let a = open(&path).await;
    let b = open(&path).await;
    let mut s1 = PubSub::subscribe(&b, "m.*", SubscribeOptions::default())
        .await
        .expect("sub");
    let mut s2 = PubSub::subscribe(&a, "m.>", SubscribeOptions::default())
        .await
        .expect("sub");
    assert_eq!(
        PubSub::publish(&a, "m.x", Message::new("1", ""))
            .await
            .expect("pub"),
        2
    );
    PubSub::publish(&a, "m.x.y", Message::new("2", ""))
        .await
        .expect("pub");
    PubSub::publish(&a, "other", Message::new("3", ""))
        .await
        .expect("pub");
    assert_eq!(
        s1.next_timeout(Duration::from_secs(1))
            .await
            .map(|m| m.kind),
        Some("1".into())
    );
    assert_eq!(
        s2.next_timeout(Duration::from_secs(1))
            .await
            .map(|m| m.kind),
        Some("1".into())
    );
    assert_eq!(
        s2.next_timeout(Duration::from_secs(1))
            .await
            .map(|m| m.kind),
        Some("2".into())
    );
    assert!(s1.next_timeout(Duration::from_millis(200)).await.is_none());
    drop(s1);
    assert_eq!(
        PubSub::publish(&a, "m.x", Message::new("4", ""))
            .await
            .expect("pub"),
        1
    );
}

#[test]
fn relay_delivers_other_process_rows_once_and_only_new_ones() {
    // Simulate another process by writing relay rows with a foreign origin.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        let dir = TempDir::new("relay");
        let path = dir.file("p.db");
        let b = SqliteBackend::builder()
            .path(&path)
            .poll_interval(Duration::from_millis(10))
            .build()
            .await
            .expect("open");
        let foreign = rusqlite::Connection::open(&path).expect("open");
        let write = |kind: &str| {
            let mut m = Message::new(kind, "");
            m.prepare_for_publish(1);
            let body = courier_core::wire::encode(&m).expect("encode");
            foreign
                .execute(
                    "INSERT INTO courier_pubsub (origin, channel, created_at, body) \
                     VALUES (?1, 'c.x', ?2, ?3)",
                    rusqlite::params![b.inner.hub.origin ^ 1, b.now() as i64, &body[..]],
                )
                .expect("insert");
        };
        write("before");
        let mut s = PubSub::subscribe(&b, "c.*", SubscribeOptions::default())
            .await
            .expect("sub");
        write("after");
        let m = s
            .next_timeout(Duration::from_secs(2))
            .await
            .expect("relayed");
        assert_eq!(m.kind, "after");
        assert!(s.next_timeout(Duration::from_millis(100)).await.is_none());
    });
}

// ---------------------------------------------------------------------------------------
// Virtual time

#[tokio::test(start_paused = true)]
async fn runs_on_paused_tokio_time() {
    let b = SqliteBackend::builder()
        .in_memory()
        .clock(Arc::new(courier_core::TokioClock::new()))
        .default_config(
            QueueConfig::default()
                .with_visibility_timeout(Duration::from_secs(60))
                .with_retry(RetryPolicy::exact(
                    2,
                    Duration::from_secs(600),
                    2.0,
                    Duration::from_secs(3600),
                )),
        )
        .build()
        .await
        .expect("open");
    let q: &dyn Queue = &b;
    let start = tokio::time::Instant::now();
    q.publish_in("v", Message::new("k", ""), Duration::from_secs(3600))
        .await
        .expect("publish");
    // Nothing before the hour is up, even though other work keeps the runtime busy.
    assert!(
        q.receive("v", 1, Duration::from_secs(1800))
            .await
            .expect("r")
            .is_empty()
    );
    let d = q
        .receive_one("v", Duration::from_secs(7200))
        .await
        .expect("r")
        .expect("due after an hour");
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(3600) && waited < Duration::from_secs(3601),
        "{waited:?}"
    );
    // The lease expires after a virtual minute: a failed attempt, back after 10 minutes.
    let d2 = q
        .receive_one("v", Duration::from_secs(7200))
        .await
        .expect("r")
        .expect("redelivered");
    assert_eq!(d2.lease.attempt, 2);
    let gap = d2.lease.deadline_ms - d.lease.deadline_ms;
    assert!((660_000..661_000).contains(&gap), "{gap}");
}

/// A backend on tokio's (paused) virtual time with long leases and exact retries.
async fn virtual_time(config: QueueConfig) -> SqliteBackend {
    SqliteBackend::builder()
        .in_memory()
        .clock(Arc::new(courier_core::TokioClock::new()))
        .default_config(config)
        .build()
        .await
        .expect("open")
}

#[tokio::test(start_paused = true)]
async fn a_receive_walks_past_many_expired_rows_and_frees_their_keys() {
    let b =
        virtual_time(QueueConfig::default().with_visibility_timeout(Duration::from_secs(60))).await;
    let q: &dyn Queue = &b;
    // 100 expiring Critical messages (every third with a key) ahead of 40 live Normal ones: a
    // receive of 35 needs several walks of the ready index (35 + 35 + 30 expired, then live).
    let stale: Vec<Message> = (0..100)
        .map(|k| {
            let m = Message::new(format!("stale{k}"), "")
                .with_priority(Priority::Critical)
                .with_ttl(Duration::from_secs(1));
            if k % 3 == 0 {
                m.with_dedup_key(format!("key{k}"))
            } else {
                m
            }
        })
        .collect();
    q.publish_batch("q", stale).await.expect("publish");
    let live: Vec<Message> = (0..40)
        .map(|k| Message::new(format!("live{k}"), ""))
        .collect();
    q.publish_batch("q", live).await.expect("publish");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ds = q.receive("q", 35, Duration::ZERO).await.expect("receive");
    let kinds: Vec<String> = ds.iter().map(|d| d.message.kind.clone()).collect();
    let want: Vec<String> = (0..35).map(|k| format!("live{k}")).collect();
    assert_eq!(
        kinds, want,
        "35 live messages in FIFO order, in one receive"
    );
    assert!(ds.iter().all(|d| d.lease.attempt == 1));
    let st = q.stats("q").await.expect("stats");
    assert_eq!(
        (
            st.expired,
            st.dead,
            st.dead_lettered,
            st.in_flight,
            st.ready_total()
        ),
        (100, 100, 0, 35, 5)
    );
    let dl = q.dead_letters("q", Page::first(200)).await.expect("dead");
    assert_eq!(dl.len(), 100);
    assert!(
        dl.iter()
            .all(|d| d.error == courier_core::backend::EXPIRED && d.attempts == 0)
    );
    let order: Vec<&str> = dl.iter().map(|d| d.message.kind.as_str()).collect();
    assert_eq!(
        order[..3],
        ["stale0", "stale1", "stale2"],
        "buried in FIFO order"
    );
    // Every expired key is free again.
    for k in (0..100).step_by(3) {
        let r = q
            .publish_unique(
                "q",
                Message::new("again", "").with_dedup_key(format!("key{k}")),
            )
            .await
            .expect("publish");
        assert!(!r.is_duplicate(), "key{k} still held");
    }
    // Acks of the live leases work as usual (the ack hints point at the right rows).
    for d in &ds {
        q.ack("q", &d.lease).await.expect("ack");
    }
    assert_eq!(q.stats("q").await.expect("stats").acked, 35);
}

#[tokio::test(start_paused = true)]
async fn expired_messages_are_discarded_when_dead_letters_are_off() {
    let b = virtual_time(QueueConfig::default().with_dead_letter(false)).await;
    let q: &dyn Queue = &b;
    let m = Message::new("gone", "")
        .with_ttl(Duration::from_millis(500))
        .with_dedup_key("k");
    q.publish_unique("q", m).await.expect("publish");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        q.receive("q", 5, Duration::ZERO)
            .await
            .expect("r")
            .is_empty()
    );
    let st = q.stats("q").await.expect("stats");
    assert_eq!(
        (
            st.expired,
            st.dead,
            st.dead_lettered,
            st.stored(),
            st.published
        ),
        (1, 0, 0, 0, 1)
    );
    let r = q
        .publish_unique("q", Message::new("again", "").with_dedup_key("k"))
        .await
        .expect("publish");
    assert!(!r.is_duplicate(), "the discarded message freed its key");
}

#[tokio::test(start_paused = true)]
async fn a_group_expires_events_it_reaches_late_and_counts_them() {
    let b =
        virtual_time(QueueConfig::default().with_visibility_timeout(Duration::from_secs(60))).await;
    let bus: &dyn EventBus = &b;
    bus.emit_batch(
        "t",
        vec![
            Message::new("e1", "").with_ttl(Duration::from_secs(1)),
            Message::new("e2", ""),
            Message::new("e3", "").with_ttl(Duration::from_secs(1)),
            Message::new("e4", ""),
        ],
    )
    .await
    .expect("emit");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut kinds = Vec::new();
    loop {
        let ds = bus
            .receive("t", "g", 2, Duration::ZERO)
            .await
            .expect("receive");
        if ds.is_empty() {
            break;
        }
        for d in ds {
            kinds.push(d.message.kind.clone());
            bus.settle("t", "g", vec![Settle::Ack(d.lease)])
                .await
                .expect("ack");
        }
    }
    assert_eq!(kinds, ["e2", "e4"]);
    let st = bus.group_stats("t", "g").await.expect("stats");
    assert_eq!(
        (st.queue.expired, st.queue.dead, st.queue.acked, st.lag),
        (2, 2, 2, 0)
    );
}

#[tokio::test]
async fn a_directory_is_not_a_database() {
    let dir = TempDir::new("isdir");
    let e = SqliteBackend::builder()
        .path(&dir.0)
        .build()
        .await
        .expect_err("a directory");
    assert_eq!(e.kind(), ErrorKind::Backend);
    assert!(e.message().contains(&dir.0.display().to_string()), "{e}");
}

// ---------------------------------------------------------------------------------------
// Flow control (issue 18): pause (Q14, E8), rate limit (Q15), reprioritise (Q16)

/// A second handle on `path` that shares nothing with this process's others, as another
/// process would (wake-ups reach it through polling only).
async fn other_process(path: &Path) -> SqliteBackend {
    SqliteBackend::builder()
        .path(path)
        .default_config(config())
        .poll_interval(Duration::from_millis(20))
        .as_separate_process()
        .build()
        .await
        .expect("open")
}

#[tokio::test]
async fn pause_blocks_leasing_for_every_handle_and_resume_wakes_a_waiter() {
    let dir = TempDir::new("pause");
    let path = dir.file("q.db");
    let a = open(&path).await;
    let b = other_process(&path).await;
    let (qa, qb): (&dyn Queue, &dyn Queue) = (&a, &b);
    // Pausing a queue nothing was published to is allowed and does not list it (Q13).
    within(qa.pause("q")).await.expect("pause");
    within(qa.pause("q")).await.expect("pause twice");
    assert!(within(qa.list_queues()).await.expect("list").is_empty());
    within(qa.publish("q", Message::new("k", "1")))
        .await
        .expect("publish is accepted while paused");
    assert!(
        within(qb.receive("q", 10, Duration::ZERO))
            .await
            .expect("receive")
            .is_empty()
    );
    assert!(
        within(qa.receive("q", 10, Duration::from_millis(30)))
            .await
            .expect("receive")
            .is_empty()
    );
    let st = within(qb.stats("q")).await.expect("stats");
    assert!(st.paused);
    assert_eq!(st.ready_total(), 1);
    // A receiver waiting on the paused queue gets the message as soon as it is resumed.
    let waiter = {
        let a = a.clone();
        tokio::spawn(async move {
            let q: &dyn Queue = &a;
            q.receive("q", 10, Duration::from_secs(10)).await
        })
    };
    // Let the waiter submit its first look; a stats call queued behind that look returns
    // after it (it found the queue paused and waits).
    tokio::task::yield_now().await;
    within(qa.stats("q")).await.expect("stats");
    let t = std::time::Instant::now();
    within(qa.resume("q")).await.expect("resume");
    let got = within(waiter).await.expect("task").expect("receive");
    assert_eq!(got.len(), 1);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert!(!within(qb.stats("q")).await.expect("stats").paused);
    within(qa.resume("q")).await.expect("resume twice");
}

#[tokio::test]
async fn a_paused_queue_keeps_its_leases_and_ready_work_waits() {
    let b = in_memory().await;
    let q: &dyn Queue = &b;
    for k in ["a", "b", "c"] {
        q.publish("q", Message::new(k, "")).await.expect("publish");
    }
    q.publish(
        "q",
        Message::new("later", "").with_delay(Duration::from_millis(20)),
    )
    .await
    .expect("publish");
    let ds = q.receive("q", 2, Duration::ZERO).await.expect("receive");
    assert_eq!(ds.len(), 2);
    q.pause("q").await.expect("pause");
    // Settles and extensions go on while paused.
    q.ack("q", &ds[0].lease).await.expect("ack while paused");
    q.extend("q", &ds[1].lease, Duration::from_secs(5))
        .await
        .expect("extend while paused");
    q.release("q", &ds[1].lease)
        .await
        .expect("release while paused");
    // The delayed one comes due (ready, not delivered).
    tokio::time::sleep(Duration::from_millis(40)).await;
    assert!(
        q.receive("q", 10, Duration::from_millis(10))
            .await
            .expect("receive")
            .is_empty()
    );
    let st = q.stats("q").await.expect("stats");
    assert_eq!((st.ready_total(), st.delayed, st.in_flight), (3, 0, 0));
    q.resume("q").await.expect("resume");
    let ds = q.receive("q", 10, Duration::ZERO).await.expect("receive");
    let kinds: Vec<_> = ds.iter().map(|d| d.message.kind.as_str()).collect();
    assert_eq!(kinds, ["b", "c", "later"]);
}

#[tokio::test]
async fn rate_window_is_counted_across_two_handles_on_one_file() {
    let dir = TempDir::new("rate");
    let path = dir.file("q.db");
    let a = open(&path).await;
    let b = other_process(&path).await;
    let (qa, qb): (&dyn Queue, &dyn Queue) = (&a, &b);
    // A day's window: the test ends long before it rolls over, unless it starts a moment
    // before midnight UTC (detected below).
    let window = Duration::from_secs(86_400);
    let day = |ms: u64| ms / 86_400_000;
    let started = day(qa.clock().now_ms());
    let e = within(qa.set_rate_limit("q", Some(courier_core::RateLimit::new(0, window))))
        .await
        .expect_err("max 0");
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    let limit = courier_core::RateLimit::new(8, window);
    within(qa.set_rate_limit("q", Some(limit)))
        .await
        .expect("limit");
    for k in 0..20 {
        within(qa.publish("q", Message::new(format!("m{k}"), "")))
            .await
            .expect("publish");
    }
    // One receive takes at most a quarter of the window (2 of 8); both handles count into the
    // same window, stored in the file.
    let mut got = 0;
    for q in [qa, qb, qa, qb, qa, qb] {
        let ds = within(q.receive("q", 10, Duration::ZERO))
            .await
            .expect("receive");
        assert!(ds.len() <= 2, "{}", ds.len());
        got += ds.len();
    }
    if day(qa.clock().now_ms()) != started {
        return;
    }
    assert_eq!(got, 8);
    assert_eq!(
        within(qb.stats("q")).await.expect("stats").rate_limit,
        Some(limit)
    );
    // Raising the limit keeps the window's count: 2 more, not 10.
    within(qb.set_rate_limit("q", Some(courier_core::RateLimit::new(10, window))))
        .await
        .expect("raise");
    let mut more = 0;
    for q in [qa, qb, qa] {
        more += within(q.receive("q", 10, Duration::ZERO))
            .await
            .expect("receive")
            .len();
    }
    assert_eq!(more, 2);
    // Released messages do not give budget back.
    let held = within(qa.receive("q", 10, Duration::ZERO))
        .await
        .expect("receive");
    assert!(held.is_empty());
    // Cleared: everything left is delivered.
    within(qa.set_rate_limit("q", None)).await.expect("clear");
    let rest = within(qb.receive("q", 100, Duration::ZERO))
        .await
        .expect("receive");
    assert_eq!(rest.len(), 10);
    assert_eq!(within(qa.stats("q")).await.expect("stats").rate_limit, None);
}

#[tokio::test]
async fn a_spent_window_wakes_its_waiter_when_the_next_one_starts() {
    let b = in_memory().await;
    let q: &dyn Queue = &b;
    let per = Duration::from_millis(300);
    q.set_rate_limit("q", Some(courier_core::RateLimit::new(1, per)))
        .await
        .expect("limit");
    for k in ["a", "b"] {
        q.publish("q", Message::new(k, "")).await.expect("publish");
    }
    let first = q.receive("q", 10, Duration::ZERO).await.expect("receive");
    assert_eq!(first.len(), 1);
    let window = q.clock().now_ms() / 300;
    // The second waits for the next window (not failing, not spinning), then is delivered.
    let second = within(q.receive("q", 10, Duration::from_secs(5)))
        .await
        .expect("receive");
    assert_eq!(second.len(), 1);
    let at = q.clock().now_ms();
    assert!(at / 300 > window, "delivered in the spent window");
    // Woken at the boundary, not at the end of the 5 s wait.
    assert!(
        at % 300 < 200,
        "woken {} ms after the window started",
        at % 300
    );
}

#[tokio::test]
async fn released_messages_and_expired_ones_do_not_change_the_window_count() {
    let b = in_memory().await;
    let q: &dyn Queue = &b;
    let hour = Duration::from_secs(3600);
    q.set_rate_limit("q", Some(courier_core::RateLimit::new(2, hour)))
        .await
        .expect("limit");
    q.publish(
        "q",
        Message::new("gone", "").with_ttl(Duration::from_millis(1)),
    )
    .await
    .expect("publish");
    for k in ["a", "b", "c"] {
        q.publish("q", Message::new(k, "")).await.expect("publish");
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    let ds = q.receive("q", 10, Duration::ZERO).await.expect("receive");
    // The expired one is taken out on the way and does not count.
    assert_eq!(ds.len(), 1);
    assert_eq!(ds[0].message.kind, "a");
    q.release("q", &ds[0].lease).await.expect("release");
    let ds = q.receive("q", 10, Duration::ZERO).await.expect("receive");
    assert_eq!(ds.len(), 1);
    assert_eq!(ds[0].message.kind, "a");
    assert!(
        q.receive("q", 10, Duration::ZERO)
            .await
            .expect("receive")
            .is_empty()
    );
    assert_eq!(q.stats("q").await.expect("stats").expired, 1);
}

#[tokio::test]
async fn reprioritise_moves_ready_delayed_and_leased_copies() {
    let b = in_memory().await;
    let q: &dyn Queue = &b;
    let a = q
        .publish("q", Message::new("a", ""))
        .await
        .expect("publish");
    let bb = q
        .publish("q", Message::new("b", ""))
        .await
        .expect("publish");
    let c = q
        .publish("q", Message::new("c", "").with_priority(Priority::High))
        .await
        .expect("publish");
    // Unchanged level: to the back of it.
    q.reprioritise("q", a, Priority::Normal)
        .await
        .expect("same level");
    // Ready: moves to Critical, delivered first with the new priority field.
    q.reprioritise("q", bb, Priority::Critical)
        .await
        .expect("ready");
    let ds = q.receive("q", 10, Duration::ZERO).await.expect("receive");
    let got: Vec<_> = ds
        .iter()
        .map(|d| (d.message.kind.as_str(), d.message.priority))
        .collect();
    assert_eq!(
        got,
        [
            ("b", Priority::Critical),
            ("c", Priority::High),
            ("a", Priority::Normal)
        ]
    );
    // Leased: the lease is kept; the stored copy has the new priority when retried.
    let leased = ds.iter().find(|d| d.message.id == c).expect("c");
    q.reprioritise("q", c, Priority::Low).await.expect("leased");
    q.settle_one(
        "q",
        Settle::Retry {
            lease: leased.lease,
            delay: Duration::ZERO,
            error: "again".into(),
        },
    )
    .await
    .expect("lease kept");
    // Delayed: keeps its due time, has the new priority when due.
    let d = q
        .publish(
            "q",
            Message::new("d", "").with_delay(Duration::from_millis(50)),
        )
        .await
        .expect("publish");
    q.reprioritise("q", d, Priority::Critical)
        .await
        .expect("delayed");
    let st = q.stats("q").await.expect("stats");
    assert_eq!((st.delayed, st.ready[Priority::Low.index()]), (1, 1));
    assert!(
        q.receive("q", 10, Duration::ZERO)
            .await
            .expect("receive")
            .iter()
            .all(|x| x.message.id == c && x.message.priority == Priority::Low)
    );
    let due = within(q.receive("q", 10, Duration::from_secs(5)))
        .await
        .expect("receive");
    assert_eq!(due.len(), 1);
    assert_eq!(
        (due[0].message.id, due[0].message.priority),
        (d, Priority::Critical)
    );
    // Unknown ids and dead letters are NotFound.
    let e = q
        .reprioritise("q", courier_core::MessageId::new(), Priority::High)
        .await
        .expect_err("unknown");
    assert_eq!(e.kind(), ErrorKind::NotFound);
    q.settle_one(
        "q",
        Settle::Bury {
            lease: due[0].lease,
            error: "dead".into(),
        },
    )
    .await
    .expect("bury");
    let e = q
        .reprioritise("q", d, Priority::High)
        .await
        .expect_err("dead letter");
    assert_eq!(e.kind(), ErrorKind::NotFound);
}

#[tokio::test]
async fn a_group_paused_before_it_exists_is_not_created_and_starts_paused() {
    let dir = TempDir::new("gpause");
    let path = dir.file("q.db");
    let a = open(&path).await;
    let b = other_process(&path).await;
    let (ba, bb): (&dyn EventBus, &dyn EventBus) = (&a, &b);
    within(ba.pause_group("t", "g")).await.expect("pause");
    assert!(within(ba.list_groups("t")).await.expect("list").is_empty());
    assert!(within(ba.list_topics()).await.expect("topics").is_empty());
    assert!(
        within(bb.group_stats("t", "g"))
            .await
            .expect("stats")
            .queue
            .paused
    );
    within(ba.emit("t", Message::new("e", "")))
        .await
        .expect("emit");
    assert!(
        within(bb.create_group("t", "g", ReplayFrom::Start))
            .await
            .expect("create")
    );
    assert!(
        within(bb.receive("t", "g", 10, Duration::from_millis(20)))
            .await
            .expect("receive")
            .is_empty()
    );
    // Other groups are not affected; the paused one's lag keeps counting.
    assert_eq!(
        within(ba.receive("t", "other", 10, Duration::ZERO))
            .await
            .expect("receive")
            .len(),
        1
    );
    within(ba.reset_group("t", "g", ReplayFrom::Start))
        .await
        .expect("reset keeps the flag");
    let st = within(ba.group_stats("t", "g")).await.expect("stats");
    assert!(st.queue.paused);
    assert_eq!(st.lag, 1);
    within(bb.resume_group("t", "g")).await.expect("resume");
    let got = within(ba.receive("t", "g", 10, Duration::from_secs(5)))
        .await
        .expect("receive");
    assert_eq!(got.len(), 1);
    assert!(
        !within(ba.group_stats("t", "g"))
            .await
            .expect("stats")
            .queue
            .paused
    );
    // Resuming a group that does not exist forgets a pending pause.
    within(ba.pause_group("t", "h")).await.expect("pause");
    within(ba.resume_group("t", "h")).await.expect("resume");
    within(ba.receive("t", "h", 10, Duration::ZERO))
        .await
        .expect("receive");
    assert!(
        !within(ba.group_stats("t", "h"))
            .await
            .expect("stats")
            .queue
            .paused
    );
}

#[tokio::test]
async fn migration_5_keeps_a_version_4_database_unpaused_and_unlimited() {
    let dir = TempDir::new("migrate-v4");
    let path = dir.file("q.db");
    let old = Message::new("old", "v4");
    {
        let c = rusqlite::Connection::open(&path).expect("open");
        for sql in &schema::MIGRATIONS[..4] {
            c.execute_batch(sql).expect("v1..v4 schema");
        }
        c.pragma_update(None, "application_id", schema::APPLICATION_ID)
            .expect("application_id");
        c.pragma_update(None, "user_version", 4)
            .expect("user_version");
        c.execute(
            "INSERT INTO courier_queues (qid, kind, name, next_seq, published) \
             VALUES (5, 'queue', 'q', 2, 1)",
            [],
        )
        .expect("queue row");
        let body = courier_core::wire::encode(&old).expect("encode");
        c.execute(
            "INSERT INTO courier_messages (qid, id, priority, state, seq, body) \
             VALUES (5, ?1, 2, 0, 1, ?2)",
            rusqlite::params![&old.id.as_bytes()[..], &body[..]],
        )
        .expect("insert");
    }
    let b = within(open(&path)).await;
    assert_eq!(user_version(&path), i64::from(SCHEMA_VERSION));
    let q: &dyn Queue = &b;
    let st = within(q.stats("q")).await.expect("stats");
    assert_eq!((st.published, st.paused, st.rate_limit), (1, false, None));
    within(q.pause("q")).await.expect("pause");
    drop(b);
    let b = within(open(&path)).await;
    let q: &dyn Queue = &b;
    assert!(within(q.stats("q")).await.expect("stats").paused);
    within(q.resume("q")).await.expect("resume");
    let ds = within(q.receive("q", 10, Duration::ZERO))
        .await
        .expect("receive");
    assert_eq!(ds.len(), 1);
    assert_eq!(ds[0].message.id, old.id);
}
