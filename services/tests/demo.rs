//! The end-to-end scenario in one process on `memory://`. Every test body is bounded as a
//! whole (and each scenario wait on its own).

use std::time::Duration;

use meeting_system::Settings;
use meeting_system::config::Overrides;
use meeting_system::ledger::Ledger;
use meeting_system::runtime::Platform;
use meeting_system::scenario::{Phase, Scenario, run_demo};
use meeting_system::topology::ServiceKind;

/// Bound of a whole test.
const TEST_LIMIT: Duration = Duration::from_secs(120);

fn settings() -> Settings {
    let mut s = Settings::default();
    s.apply_overrides(&Overrides {
        backend: Some("memory://".into()),
        max_retries: Some(2),
        retry_base_ms: Some(20),
        poll_interval_ms: Some(200),
        ..Overrides::default()
    });
    s.validate().expect("valid settings");
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_scenario_delivers_every_task_and_event_on_memory() {
    let report = tokio::time::timeout(TEST_LIMIT, run_demo(&settings(), Duration::from_secs(30)))
        .await
        .expect("demo finishes in time")
        .expect("demo runs");
    assert!(report.passed, "{}", report.text);
    assert!(report.shortfalls.is_empty());
    let (rows, deliveries) = report.expected;
    assert!(
        rows >= 70 && deliveries >= 180,
        "{rows} rows, {deliveries} deliveries"
    );
    // The malformed transcode ran 3 times (2 retries) and is the only dead letter.
    let media = report
        .queues
        .iter()
        .find(|(q, _)| q == "svc.media")
        .map(|(_, s)| *s)
        .expect("media queue");
    assert_eq!(media.dead, 1, "{}", report.text);
    assert_eq!(media.retried, 2, "{}", report.text);
    // carol's candidate for dave expired (LateJoiner): signaling's one dead letter, counted as
    // expired, not as a failure out of attempts.
    let signaling = report
        .queues
        .iter()
        .find(|(q, _)| q == "svc.signaling")
        .map(|(_, s)| *s)
        .expect("signaling queue");
    assert_eq!(
        (signaling.expired, signaling.dead, signaling.dead_lettered),
        (1, 1, 0),
        "{}",
        report.text
    );
    assert_eq!(signaling.published, signaling.acked + 1, "{}", report.text);
    for (q, s) in &report.queues {
        assert_eq!(s.ready_total() + s.delayed + s.in_flight, 0, "{q} settled");
        if q != "svc.media" && q != "svc.signaling" {
            assert_eq!(s.dead, 0, "{q}");
            assert_eq!(s.published, s.acked, "{q}");
        }
    }
    assert!(report.text.contains("EXPIRED, not delivered"));
    assert_eq!(report.group_dead_letters, 0);
    assert!(report.text.contains("deliberately malformed task"));
    assert!(report.text.contains("FAILED -> DEAD LETTER"));
    assert!(report.text.contains("PASS"));
    // The trace of alice's join, then her audio and video: an indented tree naming the
    // service that ran each span (recorded with the `otel` feature, on by default).
    if cfg!(feature = "otel") {
        assert_trace_names_the_services(&report.text);
    }
}

fn assert_trace_names_the_services(text: &str) {
    let trace = text
        .split("\n== trace: ")
        .nth(1)
        .and_then(|t| t.split("\n== ").next())
        .expect("the report has a trace section");
    for service in ["user", "meeting", "media", "ai"] {
        assert!(
            trace
                .lines()
                .skip(1)
                .any(|l| l.trim_start().starts_with(&format!("{service}: "))),
            "the trace names no span run by {service}:\n{trace}"
        );
    }
    // Courier carried the context from alice's client through meeting to user, and through
    // media to ai: their handler spans are inside the root's tree, not roots of their own.
    let tree: Vec<&str> = trace.lines().skip(1).filter(|l| !l.is_empty()).collect();
    assert_eq!(tree[0], "client:alice: join_meeting", "{trace}");
    assert!(tree[1..].iter().all(|l| l.starts_with("  ")), "{trace}");
    for handled in [
        "meeting: courier.handle meeting_user_join",
        "ai: courier.handle speech_recognition",
    ] {
        assert!(
            tree.iter().any(|l| l.trim_start().starts_with(handled)),
            "no {handled:?} in\n{trace}"
        );
    }
}

/// Without the ai service, the diff names exactly what ai should have received; once ai
/// starts (late), its consumer group catches up from the start of the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_service_shows_in_the_diff_and_catches_up_when_started() {
    tokio::time::timeout(TEST_LIMIT, missing_service_catches_up())
        .await
        .expect("the scenario finishes in time");
}

async fn missing_service_catches_up() {
    let settings = settings();
    let ledger = Ledger::new(false);
    let platform = Platform::connect(&settings, ledger.clone())
        .await
        .expect("memory");
    let mut running = platform
        .start_all(&[
            ServiceKind::User,
            ServiceKind::Meeting,
            ServiceKind::Media,
            ServiceKind::Signaling,
        ])
        .await
        .expect("start");
    let mut scenario = Scenario::new(
        platform.courier().clone(),
        platform.names().clone(),
        ledger,
        3,
        Duration::from_secs(20),
        None,
    );
    for phase in [Phase::Register, Phase::Login] {
        scenario.send(phase).await.expect("send");
        scenario.wait().await.expect("no ai needed yet");
    }
    scenario.send(Phase::Create).await.expect("send");
    let missing = scenario
        .wait_for(Duration::from_millis(800))
        .await
        .expect_err("ai is not running");
    let text: Vec<String> = missing.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        text,
        vec!["MISSING event meeting.created -> ai: expected 1, got 0".to_string()]
    );
    running.push(platform.start(ServiceKind::Ai).await.expect("start ai"));
    scenario
        .wait()
        .await
        .expect("ai catches up on the event it missed");
    for phase in [Phase::Join, Phase::Negotiate, Phase::Record, Phase::Media] {
        scenario.send(phase).await.expect("send");
        scenario.wait().await.expect("phase completes");
    }
    scenario.close().await;
    for r in running {
        r.stop(Duration::from_secs(1)).await;
    }
}
