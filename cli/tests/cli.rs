//! The `courier` binary run as a process against SQLite and Redis (memory lives only inside
//! one process, so its case calls `courier_cli::run` in-process): after a scripted workload
//! through the library, the CLI's numbers are the library's; a requeue of 1,000 dead letters
//! handles each once; a purge without `--yes` and without a terminal refuses; errors are one
//! line with exit code 2 and never show a password.
//!
//! Redis is skipped loudly when absent, unless `COURIER_REQUIRE_BACKENDS=1`.

mod support;

use std::collections::HashSet;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use courier::{Courier, Message, MessageId, Priority, QueueStats, Settle};
use support::{LIMIT, TempDb, assert_same_stats, redis, unique, within};

/// What a run of the binary gave.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Run the binary with `args`, stdin closed (no terminal), bounded by `LIMIT`.
fn courier_cli(args: &[&str]) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_courier"))
        .args(args)
        .env_remove("COURIER_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn courier");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("courier {args:?} ran longer than {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Run {
        code: status.code().unwrap_or(-1),
        stdout: reader.join().expect("stdout reader"),
        stderr: err_reader.join().expect("stderr reader"),
    }
}

/// A workload that leaves every state populated and nothing time-dependent for a minute:
/// ready at three priorities, delayed for an hour, one in flight (30 s lease), two dead, one
/// acked, one retried back to ready, one duplicate.
async fn workload(c: &Courier, q: &str) -> QueueStats {
    let mut batch = Vec::new();
    for i in 0..12 {
        let p = [Priority::Critical, Priority::Normal, Priority::Low][i % 3];
        batch.push(Message::new(format!("k{i}"), vec![i as u8]).with_priority(p));
    }
    batch.push(Message::new("later", "").with_delay(Duration::from_secs(3600)));
    batch.push(Message::new("keyed", "").with_dedup_key("once"));
    batch.push(Message::new("keyed", "").with_dedup_key("once"));
    within("publish", c.queue().publish_batch(q, batch)).await;
    let got = within("receive", c.queue().receive(q, 5, Duration::from_secs(5))).await;
    assert_eq!(got.len(), 5);
    let ops = vec![
        Settle::Ack(got[0].lease),
        Settle::Bury {
            lease: got[1].lease,
            error: "bad input".into(),
        },
        Settle::Bury {
            lease: got[2].lease,
            error: "still bad".into(),
        },
        Settle::Retry {
            lease: got[3].lease,
            delay: Duration::ZERO,
            error: "flaky".into(),
        },
    ];
    for r in within("settle", c.queue().settle(q, ops)).await {
        r.expect("settle");
    }
    within("stats", c.queue().stats(q)).await
}

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

async fn stats_match(c: &Courier, url: &str) {
    let q = unique("stats");
    let want = workload(c, &q).await;
    assert_eq!((want.dead, want.in_flight, want.delayed), (2, 1, 1));
    let run = courier_cli(&["--url", url, "--json", "stats", &q]);
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    let lines = json_lines(&run.stdout);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["queue"], q.as_str());
    assert_same_stats(&lines[0], &want);
    // The table shows the same figures.
    let run = courier_cli(&["--url", url, "stats", &q]);
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    let row = run.stdout.lines().nth(1).expect("a row");
    let ready = format!(
        "{}/{}/{}/{}",
        want.ready[0], want.ready[1], want.ready[2], want.ready[3]
    );
    assert!(row.starts_with(&q) && row.contains(&ready), "{row}");
}

async fn requeue_1000(c: &Courier, url: &str) {
    let q = unique("requeue");
    let msgs: Vec<Message> = (0..1000)
        .map(|i| Message::new("job", format!("{i}")))
        .collect();
    let ids: HashSet<MessageId> = msgs.iter().map(|m| m.id).collect();
    within("publish", c.queue().publish_batch(&q, msgs)).await;
    let mut buried = 0;
    while buried < 1000 {
        let got = within(
            "receive",
            c.queue().receive(&q, 250, Duration::from_secs(5)),
        )
        .await;
        assert!(!got.is_empty(), "only {buried} of 1000 received");
        let ops = got
            .iter()
            .map(|d| Settle::Bury {
                lease: d.lease,
                error: "poison".into(),
            })
            .collect();
        for r in within("settle", c.queue().settle(&q, ops)).await {
            r.expect("bury");
        }
        buried += got.len();
    }
    assert_eq!(within("stats", c.queue().stats(&q)).await.dead, 1000);
    let run = courier_cli(&["--url", url, "--json", "dead", "requeue", &q, "--all"]);
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    let v = &json_lines(&run.stdout)[0];
    assert_eq!(
        (v["requeued"].as_u64(), v["ids_left"].as_u64()),
        (Some(1000), Some(0)),
        "{v}"
    );
    let s = within("stats", c.queue().stats(&q)).await;
    assert_eq!((s.dead, s.ready_total()), (0, 1000), "{s:?}");
    // Each message is back exactly once.
    let mut seen = HashSet::new();
    while seen.len() < 1000 {
        let got = within(
            "receive",
            c.queue().receive(&q, 500, Duration::from_secs(5)),
        )
        .await;
        assert!(!got.is_empty(), "only {} of 1000 back", seen.len());
        for d in &got {
            assert!(seen.insert(d.message.id), "{} twice", d.message.id);
            assert_eq!(d.message.attempt, 1, "attempts reset");
        }
        let acks = got.iter().map(|d| Settle::Ack(d.lease)).collect();
        within("ack", c.queue().settle(&q, acks)).await;
    }
    assert_eq!(seen, ids);
    let more = within("receive", c.queue().receive(&q, 10, Duration::ZERO)).await;
    assert!(more.is_empty(), "no extra copies");
}

async fn purge_refuses_without_yes(c: &Courier, url: &str) {
    let q = workload_dead(c).await;
    let run = courier_cli(&["--url", url, "dead", "purge", &q, "--all"]);
    assert_eq!(run.code, 2, "refused: {}", run.stderr);
    assert!(run.stderr.contains("--yes"), "says how: {}", run.stderr);
    assert_eq!(run.stderr.lines().count(), 1, "one line: {}", run.stderr);
    assert_eq!(
        within("stats", c.queue().stats(&q)).await.dead,
        2,
        "nothing purged"
    );
    let run = courier_cli(&["--url", url, "dead", "purge", &q, "--all", "--yes"]);
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    assert_eq!(within("stats", c.queue().stats(&q)).await.dead, 0);
}

async fn workload_dead(c: &Courier) -> String {
    let q = unique("purge");
    workload(c, &q).await;
    q
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_stats_requeue_and_purge() {
    let db = TempDb::new("sqlite");
    let url = db.url();
    let c = within("connect", courier::connect(&url)).await;
    stats_match(&c, &url).await;
    requeue_1000(&c, &url).await;
    purge_refuses_without_yes(&c, &url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stats_requeue_and_purge() {
    let Some((c, url)) = redis("CLI test over Redis").await else {
        return;
    };
    stats_match(&c, &url).await;
    requeue_1000(&c, &url).await;
    purge_refuses_without_yes(&c, &url).await;
}

/// memory:// lives inside one process: the same commands, run in-process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_in_process() {
    let c = within("connect", courier::connect("memory://")).await;
    let q = unique("mem");
    let want = workload(&c, &q).await;
    let cli = courier_cli::Cli::try_parse_from(["courier", "--json", "stats", q.as_str()])
        .expect("parse");
    let mut out = String::new();
    let done = within("run", courier_cli::run(&c, &cli, &mut out)).await;
    assert_eq!(done, courier_cli::Done::Ok);
    assert_same_stats(&json_lines(&out)[0], &want);
    let cli = courier_cli::Cli::try_parse_from([
        "courier",
        "--json",
        "dead",
        "requeue",
        q.as_str(),
        "--all",
    ])
    .expect("parse");
    out.clear();
    within("run", courier_cli::run(&c, &cli, &mut out)).await;
    assert_eq!(json_lines(&out)[0]["requeued"].as_u64(), Some(2));
    assert_eq!(within("stats", c.queue().stats(&q)).await.dead, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_list_and_show_name_the_error() {
    let db = TempDb::new("show");
    let url = db.url();
    let c = within("connect", courier::connect(&url)).await;
    let q = unique("show");
    workload(&c, &q).await;
    let run = courier_cli(&["--url", &url, "--json", "dead", "list", &q]);
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    let lines = json_lines(&run.stdout);
    assert_eq!(lines.len(), 2);
    let errors: Vec<&str> = lines.iter().filter_map(|v| v["error"].as_str()).collect();
    assert_eq!(errors, vec!["bad input", "still bad"], "oldest first");
    let id = lines[0]["id"].as_str().expect("id").to_string();
    let run = courier_cli(&["--url", &url, "--json", "dead", "show", &q, &id]);
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    let v = &json_lines(&run.stdout)[0];
    assert_eq!(
        (v["id"].as_str(), v["attempts"].as_u64()),
        (Some(id.as_str()), Some(1))
    );
    // An id that is not there: one line, exit 2.
    let run = courier_cli(&[
        "--url",
        &url,
        "dead",
        "show",
        &q,
        &MessageId::new().to_string(),
    ]);
    assert_eq!(
        (run.code, run.stderr.lines().count()),
        (2, 1),
        "{}",
        run.stderr
    );
}

#[test]
fn errors_are_one_line_with_exit_2_and_no_password() {
    for (args, says) in [
        (
            vec!["--url", "redis://:hunter2secret@127.0.0.1:1", "stats", "q"],
            "unavailable",
        ),
        (
            vec!["--url", "bogus://x", "stats", "q"],
            "unknown backend scheme",
        ),
        (vec!["stats", "q"], "no backend URL"),
        (vec!["--url", "memory://", "stats", "bad name!"], "invalid"),
    ] {
        let run = courier_cli(&args);
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        assert_eq!(run.stderr.lines().count(), 1, "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains(says), "{args:?}: {}", run.stderr);
        assert!(
            !run.stderr.contains("hunter2"),
            "password shown: {}",
            run.stderr
        );
        assert!(!run.stderr.contains("stack backtrace"), "{}", run.stderr);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_live_messages() {
    let db = TempDb::new("tail");
    let url = db.url();
    let c = within("connect", courier::connect(&url)).await;
    let chan = unique("chan").replace('-', "_");
    let pattern = format!("{chan}.*");
    let url2 = url.clone();
    let tail = tokio::task::spawn_blocking(move || {
        courier_cli(&[
            "--url",
            &url2,
            "tail",
            &pattern,
            "--count",
            "2",
            "--for",
            "30s",
            "--payload",
        ])
    });
    // The subscription is live once the process says so; publish until two arrive (pub/sub
    // is at most once: messages before the subscription are not seen).
    let deadline = Instant::now() + LIMIT;
    let mut n = 0;
    while !tail.is_finished() {
        assert!(Instant::now() < deadline, "tail never finished");
        n += 1;
        within(
            "publish",
            c.pubsub().publish(
                &format!("{chan}.room"),
                Message::new("ping", format!("hello {n}")),
            ),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let run = tokio::time::timeout(LIMIT, tail)
        .await
        .expect("tail ends")
        .expect("tail thread");
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", run.stdout);
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with("ping ") && l.contains("hello ")),
        "{}",
        run.stdout
    );
}

/// `courier queues`, `stats` without names, `events topics` and `events groups` without
/// names list what the backend stores (Q13, E7), with the library's numbers. `exact`: the
/// backend holds only this test's names (a fresh SQLite file); else (a shared Redis) the
/// test's names must be among the listed ones.
async fn listing(c: &Courier, url: &str, exact: bool) {
    use courier::{EventBusExt, QueueExt, ReplayFrom};
    let (q1, q2, q3) = (unique("list-a"), unique("list-b"), unique("list-c"));
    let s1 = workload(c, &q1).await;
    within("publish", c.queue().publish(&q2, Message::new("one", "x"))).await;
    let s2 = within("stats", c.queue().stats(&q2)).await;
    // Only read: not listed.
    within("stats", c.queue().stats(&q3)).await;
    let t = unique("topic");
    within("emit", c.events().emit(&t, Message::new("joined", "{}"))).await;
    for g in ["audit", "billing"] {
        within(
            "create_group",
            c.events().create_group(&t, g, ReplayFrom::Start),
        )
        .await;
    }

    let run = courier_cli(&["--url", url, "--json", "queues"]);
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    let lines = json_lines(&run.stdout);
    let names: Vec<&str> = lines.iter().filter_map(|v| v["queue"].as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted, "sorted by name");
    assert!(
        !names.contains(&q3.as_str()),
        "{q3} was only read: {names:?}"
    );
    if exact {
        assert_eq!(names, [q1.as_str(), q2.as_str()]);
    }
    for (q, want) in [(&q1, &s1), (&q2, &s2)] {
        let v = lines
            .iter()
            .find(|v| v["queue"] == q.as_str())
            .unwrap_or_else(|| panic!("{q} is listed: {names:?}"));
        assert_same_stats(v, want);
    }
    // The table names them too.
    let run = courier_cli(&["--url", url, "queues"]);
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    assert!(
        run.stdout.contains(&q1) && run.stdout.contains(&q2),
        "{}",
        run.stdout
    );

    if exact {
        let run = courier_cli(&["--url", url, "--json", "stats"]);
        assert_eq!(run.code, 0, "stderr: {}", run.stderr);
        let lines = json_lines(&run.stdout);
        assert_eq!(lines.len(), 2, "stats without names covers every queue");
        assert_same_stats(&lines[0], &s1);
    }

    let run = courier_cli(&["--url", url, "--json", "events", "topics"]);
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    let lines = json_lines(&run.stdout);
    let v = lines
        .iter()
        .find(|v| v["topic"] == t.as_str())
        .unwrap_or_else(|| panic!("{t} is listed: {lines:?}"));
    assert_eq!(v["retained"].as_u64(), Some(1), "{v}");
    assert_eq!(v["groups"], serde_json::json!(["audit", "billing"]), "{v}");
    if exact {
        assert_eq!(lines.len(), 1, "{lines:?}");
    }

    let run = courier_cli(&["--url", url, "--json", "events", "groups", &t]);
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    let lines = json_lines(&run.stdout);
    let groups: Vec<(&str, Option<u64>)> = lines
        .iter()
        .map(|v| (v["group"].as_str().unwrap_or(""), v["lag"].as_u64()))
        .collect();
    assert_eq!(groups, [("audit", Some(1)), ("billing", Some(1))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_lists_queues_topics_and_groups() {
    let db = TempDb::new("listing");
    let url = db.url();
    let c = within("connect", courier::connect(&url)).await;
    listing(&c, &url, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_lists_queues_topics_and_groups() {
    let Some((c, url)) = redis("CLI test over Redis").await else {
        return;
    };
    listing(&c, &url, false).await;
}

/// memory:// in-process: `courier queues` names what this process published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_lists_queues_in_process() {
    let c = within("connect", courier::connect("memory://")).await;
    let q = unique("mem-list");
    let want = workload(&c, &q).await;
    within("stats", c.queue().stats("only-read")).await;
    let cli = courier_cli::Cli::try_parse_from(["courier", "--json", "queues"]).expect("parse");
    let mut out = String::new();
    let done = within("run", courier_cli::run(&c, &cli, &mut out)).await;
    assert_eq!(done, courier_cli::Done::Ok);
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1, "{out}");
    assert_eq!(lines[0]["queue"], q.as_str());
    assert_same_stats(&lines[0], &want);
}

/// `dead requeue --priority` puts the dead letters back at that level (Q6 `requeue_dead_at`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeue_at_a_priority() {
    let db = TempDb::new("requeue-at");
    let url = db.url();
    let c = within("connect", courier::connect(&url)).await;
    let q = unique("rqat");
    let before = workload(&c, &q).await;
    assert_eq!(before.dead, 2);
    let run = courier_cli(&[
        "--url",
        &url,
        "--json",
        "dead",
        "requeue",
        &q,
        "--all",
        "--priority",
        "low",
    ]);
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    assert_eq!(json_lines(&run.stdout)[0]["requeued"].as_u64(), Some(2));
    let after = within("stats", c.queue().stats(&q)).await;
    assert_eq!(after.dead, 0);
    assert_eq!(
        after.ready,
        [
            before.ready[0],
            before.ready[1],
            before.ready[2],
            before.ready[3] + 2
        ],
        "both back at Low"
    );
    let run = courier_cli(&[
        "--url",
        &url,
        "dead",
        "requeue",
        &q,
        "--all",
        "--priority",
        "urgent",
    ]);
    assert_eq!(run.code, 2, "a bad priority is refused: {}", run.stderr);
}

/// `courier events tail` follows a topic without a consumer group (E5 `read_events`): from the
/// start it prints every event in order, from now only what comes after, and the topic's group
/// neither moves nor gains a sibling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_tail_follows_a_topic_without_a_group() {
    use courier::{EventBusExt, ReplayFrom};
    let db = TempDb::new("etail");
    let url = db.url();
    let c = within("connect", courier::connect(&url)).await;
    let t = unique("topic");
    within(
        "create_group",
        c.events().create_group(&t, "billing", ReplayFrom::Start),
    )
    .await;
    for i in 0..2 {
        within(
            "emit",
            c.events().emit(&t, Message::new(format!("early{i}"), "x")),
        )
        .await;
    }
    let (url2, t2) = (url.clone(), t.clone());
    let tail = tokio::task::spawn_blocking(move || {
        courier_cli(&[
            "--url",
            &url2,
            "--json",
            "events",
            "tail",
            &t2,
            "--from",
            "start",
            "--count",
            "4",
            "--for",
            "30s",
            "--payload",
        ])
    });
    for i in 0..2 {
        within(
            "emit",
            c.events().emit(&t, Message::new(format!("late{i}"), "y")),
        )
        .await;
    }
    let run = tokio::time::timeout(LIMIT, tail)
        .await
        .expect("tail ends")
        .expect("tail thread");
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    let kinds: Vec<String> = json_lines(&run.stdout)
        .iter()
        .map(|v| v["kind"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        kinds,
        ["early0", "early1", "late0", "late1"],
        "{}",
        run.stdout
    );
    let s = within("group_stats", c.events().group_stats(&t, "billing")).await;
    assert_eq!((s.lag, s.queue.in_flight), (4, 0), "the group did not move");
    let groups = within("list_groups", c.events().list_groups(&t)).await;
    assert_eq!(groups, ["billing"], "the tail left no group behind");

    // From now: what was emitted before the tail started is not printed.
    let (url3, t3) = (url.clone(), t.clone());
    let tail = tokio::task::spawn_blocking(move || {
        courier_cli(&[
            "--url", &url3, "events", "tail", &t3, "--count", "1", "--for", "30s",
        ])
    });
    let deadline = Instant::now() + LIMIT;
    let mut n = 0;
    while !tail.is_finished() {
        assert!(Instant::now() < deadline, "tail never finished");
        n += 1;
        within(
            "emit",
            c.events().emit(&t, Message::new(format!("now{n}"), "z")),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let run = tokio::time::timeout(LIMIT, tail)
        .await
        .expect("tail ends")
        .expect("tail thread");
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    let line = run.stdout.lines().next().unwrap_or("");
    assert!(
        line.starts_with("now"),
        "only events after the start: {}",
        run.stdout
    );
}

/// Flow control from the command line (issue 18): pause and resume a queue and a group, set,
/// show and clear a rate limit, and move a message to another priority; each seen by another
/// process (this test's own handle on the same SQLite file).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow_control_pause_rate_and_reprioritise() {
    let db = TempDb::new("flow");
    let url = db.url();
    let c = within("connect", courier::connect(&url)).await;
    let q = unique("flow");
    let ids = within(
        "publish",
        c.queue()
            .publish_batch(&q, vec![Message::new("a", ""), Message::new("b", "")]),
    )
    .await;
    let b = ids[1].id();

    let run = courier_cli(&["--url", &url, "pause", &q]);
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    assert!(within("stats", c.queue().stats(&q)).await.paused);
    let run = courier_cli(&["--url", &url, "stats", &q]);
    assert!(
        run.stdout.contains("paused"),
        "the table says so: {}",
        run.stdout
    );
    let run = courier_cli(&["--url", &url, "resume", &q]);
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    assert!(!within("stats", c.queue().stats(&q)).await.paused);

    let run = courier_cli(&["--url", &url, "rate", &q, "200/s"]);
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    assert_eq!(
        within("stats", c.queue().stats(&q)).await.rate_limit,
        Some(courier::RateLimit::per_second(200))
    );
    let run = courier_cli(&["--url", &url, "rate", &q]);
    assert!(
        run.stdout.contains("200 per 1s"),
        "shows it: {}",
        run.stdout
    );
    let run = courier_cli(&["--url", &url, "rate", &q, "0/s"]);
    assert_eq!(run.code, 2, "refused: {}", run.stderr);
    let run = courier_cli(&["--url", &url, "rate", &q, "off"]);
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    assert_eq!(within("stats", c.queue().stats(&q)).await.rate_limit, None);

    let run = courier_cli(&[
        "--url",
        &url,
        "reprioritise",
        &q,
        &b.to_string(),
        "--priority",
        "critical",
    ]);
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    let d = within("receive", c.queue().receive(&q, 1, LIMIT)).await;
    assert_eq!(
        (d[0].message.id, d[0].message.priority),
        (b, Priority::Critical),
        "b first, at its new priority"
    );
    let unknown = Message::new("x", "").id.to_string();
    let run = courier_cli(&[
        "--url",
        &url,
        "reprioritise",
        &q,
        &unknown,
        "--priority",
        "high",
    ]);
    assert_ne!(run.code, 0, "an unknown id fails: {}", run.stdout);

    let (t, g) = (unique("flow-t"), unique("flow-g"));
    let run = courier_cli(&["--url", &url, "events", "pause", &t, &g]);
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    within(
        "create",
        c.events().create_group(&t, &g, courier::ReplayFrom::Start),
    )
    .await;
    assert!(
        within("group stats", c.events().group_stats(&t, &g))
            .await
            .queue
            .paused
    );
    let run = courier_cli(&["--url", &url, "events", "resume", &t, &g]);
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    assert!(
        !within("group stats", c.events().group_stats(&t, &g))
            .await
            .queue
            .paused
    );
}
