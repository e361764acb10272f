//! The five services as five OS processes over one shared backend, driven from this test.
//!
//! The test installs the routes in its own Courier handle, dispatches the clients' tasks,
//! plays the clients' WebRTC side over pub/sub, and watches a test-owned consumer group
//! (`observer`) on every domain topic plus the audit topic the services write their delivery
//! records to (`run --audit`). Mid-scenario it SIGKILLs the ai service, lets events ai
//! subscribes to be emitted (and AI tasks be queued) while it is down, restarts it, and checks
//! that it got all of them.
//!
//! It runs twice: over a fresh SQLite file that every process opens, and over Redis
//! (`COURIER_TEST_REDIS_URL`, default `redis://127.0.0.1:6379`). The Redis run prints a loud
//! skip when Redis is unreachable or not compiled in (`--no-default-features`), and fails
//! instead when `COURIER_REQUIRE_BACKENDS=1`. The two runs take turns: ten service processes
//! at once would only measure the machine. Every wait is bounded; the whole scenario too.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use courier::headers::SOURCE;
use courier::{ErrorKind, EventBusExt, GroupConsumer, Message, QueueExt, WorkerHandle};
use meeting_system::Settings;
use meeting_system::config::Overrides;
use meeting_system::ledger::{Channel, Entry, Ledger, Outcome};
use meeting_system::runtime::Platform;
use meeting_system::scenario::{Phase, Scenario};
use meeting_system::topology::{ServiceKind, all_topics};

const READY_WAIT: Duration = Duration::from_secs(60);
const PHASE_WAIT: Duration = Duration::from_secs(40);
const MAX_RETRIES: u32 = 3;

/// Bounds a whole scenario run (each phase has its own, shorter bound).
const RUN_LIMIT: Duration = Duration::from_secs(480);

/// The two runs take turns.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn require_backends() -> bool {
    std::env::var("COURIER_REQUIRE_BACKENDS").is_ok_and(|v| v == "1")
}

fn skip(why: &str) {
    eprintln!("\n{}", "=".repeat(88));
    eprintln!("SKIPPED multiprocess test over Redis: {why}");
    eprintln!("Set COURIER_REQUIRE_BACKENDS=1 to make this a failure.");
    eprintln!("{}\n", "=".repeat(88));
}

/// Removes the SQLite file (and its journal files) when dropped.
struct TempDb(std::path::PathBuf);

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.0.display()));
        }
    }
}

/// Redis, when compiled in and reachable.
async fn redis_backend() -> Option<String> {
    let redis = std::env::var("COURIER_TEST_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let probe = async {
        let c = courier::connect(&redis).await?;
        c.queue().stats("meeting-system-probe").await?;
        Ok::<_, courier::Error>(())
    };
    let why = match tokio::time::timeout(Duration::from_secs(10), probe).await {
        Ok(Ok(())) => return Some(redis),
        Ok(Err(e)) if e.kind() == ErrorKind::Unsupported => {
            format!("the `redis` backend is not compiled into this build: {e}")
        }
        Ok(Err(e)) => format!(
            "Redis at {} is unreachable: {e}",
            courier::redact_url(&redis)
        ),
        Err(_) => format!(
            "Redis at {} gave no answer within 10 s",
            courier::redact_url(&redis)
        ),
    };
    assert!(!require_backends(), "COURIER_REQUIRE_BACKENDS=1: {why}");
    skip(&why);
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_sqlite_five_processes_share_a_file_and_a_restarted_service_misses_nothing() {
    let _turn = tokio::time::timeout(RUN_LIMIT, SERIAL.lock())
        .await
        .expect("the other run finished in time");
    let db = TempDb(std::env::temp_dir().join(format!(
        "meeting-system-mp-{}-{:08x}.db",
        std::process::id(),
        rand::random::<u32>()
    )));
    let url = format!("sqlite://{}", db.0.display());
    tokio::time::timeout(RUN_LIMIT, five_processes(&url))
        .await
        .expect("the scenario finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_redis_five_processes_share_a_server_and_a_restarted_service_misses_nothing() {
    let _turn = tokio::time::timeout(RUN_LIMIT, SERIAL.lock())
        .await
        .expect("the other run finished in time");
    let Some(url) = redis_backend().await else {
        return;
    };
    tokio::time::timeout(RUN_LIMIT, five_processes(&url))
        .await
        .expect("the scenario finished in time");
}

/// One service process, its output drained by a thread.
struct Proc {
    service: ServiceKind,
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    ready: mpsc::Receiver<()>,
    is_ready: bool,
}

/// Every child process; all are killed when this is dropped (test failure included).
struct Procs {
    exe: &'static str,
    args: Vec<String>,
    procs: Vec<Proc>,
}

impl Procs {
    fn spawn(&mut self, service: ServiceKind) {
        let mut child = Command::new(self.exe)
            .arg("run")
            .arg(service.name())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn meeting-system");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, ready) = mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        let err = child.stderr.take().expect("stderr");
        for (stream, is_out) in [
            (Box::new(out) as Box<dyn std::io::Read + Send>, true),
            (Box::new(err), false),
        ] {
            let (log, tx) = (log.clone(), tx.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if is_out && line.starts_with("READY ") {
                        let _ = tx.send(());
                    }
                    if let Ok(mut l) = log.lock() {
                        l.push(line);
                    }
                }
            });
        }
        self.procs.push(Proc {
            service,
            child,
            log,
            ready,
            is_ready: false,
        });
    }

    fn wait_ready(&mut self) {
        for p in self.procs.iter_mut().filter(|p| !p.is_ready) {
            p.is_ready = p.ready.recv_timeout(READY_WAIT).is_ok();
            if !p.is_ready {
                let status = p.child.try_wait();
                panic!(
                    "{} did not report READY within {READY_WAIT:?} (exit: {status:?}); output:\n{}",
                    p.service,
                    p.log.lock().map(|l| l.join("\n")).unwrap_or_default()
                );
            }
        }
    }

    /// SIGKILL (on Unix, `Child::kill` sends SIGKILL) and reap.
    fn kill(&mut self, service: ServiceKind) {
        let i = self
            .procs
            .iter()
            .position(|p| p.service == service)
            .expect("running");
        let mut p = self.procs.remove(i);
        p.child.kill().expect("kill");
        p.child.wait().expect("reap");
    }

    fn dump(&self) -> String {
        self.procs
            .iter()
            .map(|p| {
                let lines = p.log.lock().map(|l| l.clone()).unwrap_or_default();
                let tail = &lines[lines.len().saturating_sub(40)..];
                format!(
                    "--- {} (last {} lines)\n{}",
                    p.service,
                    tail.len(),
                    tail.join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}

/// The test's own consumer group: every domain event, plus the services' delivery records.
async fn observe(platform: &Platform, ledger: &Ledger) -> WorkerHandle {
    let names = platform.names();
    let mut group = GroupConsumer::builder(platform.courier().events().clone(), "observer")
        .concurrency(1)
        .idle_wait(Duration::from_millis(200));
    let l = ledger.clone();
    group = group.on(&names.audit_topic(), move |m: Message| {
        let l = l.clone();
        async move {
            let e: Entry = m.decode()?;
            l.push(e);
            Ok(())
        }
    });
    for topic in all_topics() {
        let l = ledger.clone();
        group = group.on(&names.topic(topic), move |m: Message| {
            let l = l.clone();
            async move {
                l.push(Entry::now(
                    Channel::Event,
                    m.header(SOURCE).unwrap_or("unknown"),
                    topic,
                    "observer",
                    m.attempt,
                    Outcome::Ok,
                    "",
                ));
                Ok(())
            }
        });
    }
    group.start().await.expect("observer group")
}

async fn phase(scenario: &mut Scenario, procs: &Procs, ledger: &Ledger, p: Phase) {
    scenario.send(p).await.expect("send phase");
    wait(scenario, procs, ledger, &format!("{p:?}")).await;
}

async fn wait(scenario: &Scenario, procs: &Procs, ledger: &Ledger, what: &str) {
    if let Err(missing) = scenario.wait_for(PHASE_WAIT).await {
        panic!(
            "{what}: still missing after {PHASE_WAIT:?}:\n{}\n\ntimeline:\n{}\nprocesses:\n{}",
            missing
                .iter()
                .map(|m| format!("  {m}"))
                .collect::<Vec<_>>()
                .join("\n"),
            ledger.timeline(),
            procs.dump()
        );
    }
}

/// The whole scenario over the shared backend at `url`.
async fn five_processes(url: &str) {
    let url = url.to_string();
    let namespace = format!("mp-{:08x}", rand::random::<u32>());
    eprintln!(
        "multiprocess test on {} under namespace {namespace}",
        courier::redact_url(&url)
    );
    let mut settings = Settings::default();
    let overrides = Overrides {
        backend: Some(url.clone()),
        namespace: Some(namespace.clone()),
        max_retries: Some(MAX_RETRIES),
        retry_base_ms: Some(50),
        visibility_timeout_ms: Some(3_000),
        poll_interval_ms: Some(200),
        ..Overrides::default()
    };
    settings.apply_overrides(&overrides);
    settings.validate().expect("valid settings");
    let args: Vec<String> = [
        "--backend",
        &url,
        "--namespace",
        &namespace,
        "--max-retries",
        &MAX_RETRIES.to_string(),
        "--retry-base-ms",
        "50",
        "--visibility-timeout-ms",
        "3000",
        "--poll-interval-ms",
        "200",
        "--audit",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();

    let ledger = Ledger::new(false);
    let platform = Platform::connect(&settings, ledger.clone())
        .await
        .expect("connect the test's own handle");
    let observer = observe(&platform, &ledger).await;
    let mut procs = Procs {
        exe: env!("CARGO_BIN_EXE_meeting-system"),
        args,
        procs: Vec::new(),
    };
    for s in ServiceKind::ALL {
        procs.spawn(s);
    }
    procs.wait_ready();
    let started = Instant::now();

    let mut scenario = Scenario::new(
        platform.courier().clone(),
        platform.names().clone(),
        ledger.clone(),
        MAX_RETRIES + 1,
        PHASE_WAIT,
        Some("observer".into()),
    );
    for p in [
        Phase::Register,
        Phase::Login,
        Phase::Create,
        Phase::Join,
        Phase::Negotiate,
    ] {
        phase(&mut scenario, &procs, &ledger, p).await;
    }

    // ---- ai goes down hard
    procs.kill(ServiceKind::Ai);
    eprintln!("killed ai after {} ms", started.elapsed().as_millis());
    // While it is down: media emits stream.processed and recording.stopped... (ai subscribes
    // to both), AI tasks pile up in svc.ai, and the test itself emits a meeting.created.
    scenario.send(Phase::Record).await.expect("send");
    scenario.send(Phase::Media).await.expect("send");
    let side = Message::json(
        "meeting.created",
        &serde_json::json!({"meeting_id": "side-room", "host": "nobody", "title": "emitted while ai is down"}),
    )
    .expect("json")
    .with_header(SOURCE, "test");
    platform
        .courier()
        .events()
        .emit(&platform.names().topic("meeting.created"), side)
        .await
        .expect("emit");
    // Every subscriber of meeting.created (ai included) and the observer must get it.
    scenario.expectations_mut().event("meeting.created", 1);
    let emitted = ledger
        .wait_until(PHASE_WAIT, |entries| {
            let seen = |topic: &str| {
                entries
                    .iter()
                    .filter(|e| e.to == "observer" && e.name == topic)
                    .count()
            };
            let streamed = entries
                .iter()
                .any(|e| e.name == "media_stream_process" && e.is_ok());
            streamed && seen("stream.processed") >= 1 && seen("meeting.created") >= 2
        })
        .await;
    assert!(
        emitted,
        "events were not emitted while ai was down:\n{}",
        ledger.timeline()
    );
    let ai_while_down = ledger.count_where(|e| {
        e.to == "ai" && (e.name == "stream.processed" || e.name == "speech_recognition")
    });
    assert_eq!(ai_while_down, 0, "ai is dead, yet something reached it");
    let pending = platform
        .courier()
        .queue()
        .stats(&platform.names().queue(ServiceKind::Ai))
        .await
        .expect("stats");
    let waiting = pending.ready_total() + pending.delayed;
    eprintln!("while ai was down: {waiting} AI task(s) waiting in its queue");
    assert_eq!(
        waiting, 4,
        "speech, denoise, video and emotion tasks wait for ai: {pending:?}"
    );

    // ---- ai comes back and must get everything it missed
    procs.spawn(ServiceKind::Ai);
    procs.wait_ready();
    eprintln!("restarted ai after {} ms", started.elapsed().as_millis());
    wait(&scenario, &procs, &ledger, "after restarting ai").await;
    for to in ["user", "media", "signaling", "observer"] {
        let n = ledger.count_where(|e| e.to == to && e.name == "meeting.created" && e.is_ok());
        assert!(n >= 2, "{to} saw meeting.created {n} time(s)");
    }

    for p in [
        Phase::StopRecording,
        Phase::Hangup,
        Phase::Leave,
        Phase::End,
    ] {
        phase(&mut scenario, &procs, &ledger, p).await;
    }
    scenario.close().await;

    let media = platform
        .courier()
        .queue()
        .stats(&platform.names().queue(ServiceKind::Media))
        .await
        .expect("stats");
    assert!(
        media.dead_lettered >= 1,
        "malformed transcode not dead-lettered: {media:?}"
    );
    let dead = platform
        .courier()
        .queue()
        .dead_letters_all(&platform.names().queue(ServiceKind::Media), 10)
        .await
        .expect("dead letters");
    assert!(
        dead.iter()
            .any(|d| d.message.kind == "media_transcode" && d.attempts == MAX_RETRIES + 1),
        "{dead:?}"
    );
    let rows = scenario.expectations().rows();
    eprintln!(
        "multiprocess scenario passed in {} ms: {} expectation row(s), {} ledger record(s)",
        started.elapsed().as_millis(),
        rows,
        ledger.entries().len()
    );
    observer.stop(Duration::from_secs(1)).await;
    drop(procs);
}
