//! Q15 across processes (issue 18): three copies of this test binary each run a Courier worker
//! on one queue of the shared Redis (under a unique key prefix) with a rate limit of 200/s.
//!
//! The parent publishes 4,000 messages, sets the limit, pauses the queue and starts the three
//! consumer processes; once each reports its worker running it resumes the queue (which wakes
//! the blocked receivers of the other processes) and collects the children's lines, one per
//! handled message with its wall-clock time in ms (the children and Redis share this machine's
//! clock), until 10 whole aligned seconds have passed. Then:
//!
//! - those 10 seconds delivered 2,000 ± 5 %;
//! - no aligned 1-second window handled more than 200 + 10 (handling follows the lease by a
//!   moment, so a lease at the end of one window may be printed in the next);
//! - each process handled at least 15 % of the total.
//!
//! It prints the per-second counts and the per-process totals. Skipped loudly when Redis is
//! unreachable unless `COURIER_REQUIRE_BACKENDS=1`.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use courier_core::{Courier, Message, Queue, QueueConfig, RateLimit};
use courier_redis::RedisBackend;
use tokio::time::timeout;

const TEST: &str = "three_processes_share_a_rate_limit";
/// The test the children run (does nothing without [`ROLE`]).
const CHILD: &str = "rate_limited_consumer";
/// `index|prefix|url`: makes this binary a consumer process.
const ROLE: &str = "COURIER_RATE_CHILD";
const QUEUE: &str = "rate";
const PROCESSES: usize = 3;
const PUBLISHED: usize = 4_000;
const PER_SECOND: u32 = 200;
const SECONDS: u64 = 10;
/// Extra deliveries tolerated in a 1-second window (clock skew between lease and print).
const SKEW: usize = 10;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

async fn connect(url: &str, prefix: &str) -> courier_core::Result<RedisBackend> {
    let build = RedisBackend::builder().url(url).key_prefix(prefix).build();
    match timeout(support::T, build).await {
        Ok(r) => r,
        Err(_) => Err(courier_core::Error::new(
            courier_core::ErrorKind::Unavailable,
            "connect timed out",
        )),
    }
}

/// A consumer process: a Courier worker on the queue, printing `@@h <index> <ms>` per handled
/// message, until its stdin closes (the parent is done) or a minute passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_consumer() {
    let Ok(role) = std::env::var(ROLE) else {
        return; // Not a child: nothing to do.
    };
    let mut parts = role.splitn(3, '|');
    let (Some(index), Some(prefix), Some(url)) = (parts.next(), parts.next(), parts.next()) else {
        panic!("bad {ROLE} {role:?}");
    };
    let index: usize = index.parse().expect("child index");
    let backend = connect(url, prefix).await.expect("child connects");
    let courier = Courier::new(
        Arc::new(backend.clone()),
        Arc::new(backend.clone()),
        Arc::new(backend),
    );
    let worker = courier
        .worker(QUEUE)
        .concurrency(4)
        .handler("tick", move |_m: Message| async move {
            println!("@@h {index} {}", now_ms());
            Ok(())
        })
        .start()
        .expect("worker starts");
    println!("@@ready {index}");
    // The parent closes stdin when it has what it needs.
    let eof = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {
            line.clear();
        }
    });
    let _ = timeout(Duration::from_secs(60), eof).await;
    let report = worker.stop(Duration::from_secs(2)).await;
    println!("@@done {index} {}", report.stats.succeeded);
}

/// A child process, killed when dropped (a failing parent leaves none behind).
struct Consumer {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Drop for Consumer {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

enum Line {
    Ready(usize),
    Handled(usize, u64),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_share_a_rate_limit() {
    if std::env::var_os(ROLE).is_some() {
        return;
    }
    let url = support::shared_url();
    let prefix = format!("courier-rate-{}", rand::random::<u32>());
    let q = match connect(&url, &prefix).await {
        Ok(q) => q,
        Err(e) => return support::unreachable(TEST, &e),
    };
    let result = run(&q, &url, &prefix).await;
    support::delete_prefix(&url, &prefix).await;
    result.unwrap_or_else(|e| panic!("{TEST}: {e}"));
}

async fn run(q: &RedisBackend, url: &str, prefix: &str) -> Result<(), String> {
    q.configure(QUEUE, QueueConfig::default())
        .map_err(|e| e.to_string())?;
    let batch: Vec<Message> = (0..PUBLISHED)
        .map(|i| Message::new("tick", i.to_string()))
        .collect();
    support::within("publish", q.publish_batch(QUEUE, batch))
        .await
        .map_err(|e| format!("publish: {e}"))?;
    let limit = RateLimit::per_second(PER_SECOND);
    support::within("set_rate_limit", q.set_rate_limit(QUEUE, Some(limit)))
        .await
        .map_err(|e| format!("set_rate_limit: {e}"))?;
    // Paused until every consumer runs, so the measured seconds are all contended.
    support::within("pause", q.pause(QUEUE))
        .await
        .map_err(|e| format!("pause: {e}"))?;

    let exe = std::env::current_exe().map_err(|e| format!("current exe: {e}"))?;
    let (tx, rx) = mpsc::channel::<Line>();
    let mut children = Vec::new();
    for i in 0..PROCESSES {
        let mut child = Command::new(&exe)
            .args([CHILD, "--exact", "--nocapture", "--test-threads=1"])
            .env(ROLE, format!("{i}|{prefix}|{url}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("spawn child {i}: {e}"))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().ok_or("child stdout")?;
        children.push(Consumer { child, stdin });
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // The first may follow libtest's "test <name> ... " on the same line.
                let Some(at) = line.find("@@") else {
                    continue;
                };
                let words: Vec<&str> = line[at..].split(' ').collect();
                let parsed = match words.as_slice() {
                    ["@@ready", i] => i.parse().ok().map(Line::Ready),
                    ["@@h", i, ms] => match (i.parse(), ms.parse()) {
                        (Ok(i), Ok(ms)) => Some(Line::Handled(i, ms)),
                        _ => None,
                    },
                    _ => None,
                };
                if let Some(l) = parsed
                    && tx.send(l).is_err()
                {
                    return;
                }
            }
        });
    }
    drop(tx);

    // Every worker runs (bounded), and nothing was handled while paused.
    let mut ready = [false; PROCESSES];
    let started = Instant::now();
    while !ready.iter().all(|r| *r) {
        let left = Duration::from_secs(30).saturating_sub(started.elapsed());
        match rx.recv_timeout(left) {
            Ok(Line::Ready(i)) if i < PROCESSES => ready[i] = true,
            Ok(Line::Ready(i)) => return Err(format!("unknown process {i}")),
            Ok(Line::Handled(i, _)) => return Err(format!("process {i} handled while paused")),
            Err(e) => return Err(format!("consumers started: {ready:?}: {e}")),
        }
    }
    support::within("resume", q.resume(QUEUE))
        .await
        .map_err(|e| format!("resume: {e}"))?;
    let resumed = now_ms();
    // The measured seconds: the first whole aligned second after the resume, and 9 more.
    let first = (resumed / 1000 + 1) * 1000;
    let end = first + SECONDS * 1000;
    // Lines are printed when handled; a little longer catches the last ones of the period.
    let stop_at = Instant::now() + Duration::from_millis(end + 500 - resumed);
    let mut handled: Vec<(usize, u64)> = Vec::new();
    loop {
        let left = stop_at.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match rx.recv_timeout(left) {
            Ok(Line::Handled(i, ms)) if i < PROCESSES => handled.push((i, ms)),
            Ok(Line::Handled(i, _)) => return Err(format!("unknown process {i}")),
            Ok(Line::Ready(_)) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => break,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err("every consumer process ended early".into());
            }
        }
    }
    // Done: close their stdin so they stop; the drop kills any that does not.
    for c in &mut children {
        if let Some(mut s) = c.stdin.take() {
            let _ = s.flush();
        }
    }
    drop(children);

    let mut per_second: BTreeMap<u64, usize> = BTreeMap::new();
    let mut per_process = [0usize; PROCESSES];
    let mut total = 0usize;
    for &(i, ms) in &handled {
        *per_second.entry(ms / 1000).or_default() += 1;
        if (first..end).contains(&ms) {
            total += 1;
            per_process[i] += 1;
        }
    }
    println!(
        "{TEST}: resumed at {resumed} ms, measured [{first}, {end}): {total} delivered \
         (limit {PER_SECOND}/s)"
    );
    for (s, n) in &per_second {
        let inside = (first / 1000..end / 1000).contains(s);
        println!(
            "  second {s}: {n}{}",
            if inside { "" } else { " (outside the period)" }
        );
    }
    for (i, n) in per_process.iter().enumerate() {
        let share = if total > 0 {
            *n as f64 * 100.0 / total as f64
        } else {
            0.0
        };
        println!("  process {i}: {n} ({share:.1} %)");
    }

    let want = PER_SECOND as usize * SECONDS as usize;
    let (lo, hi) = (want * 95 / 100, want * 105 / 100);
    if !(lo..=hi).contains(&total) {
        return Err(format!(
            "{total} delivered in {SECONDS} s, want {want} ± 5 %"
        ));
    }
    if let Some((s, n)) = per_second
        .iter()
        .find(|(_, n)| **n > PER_SECOND as usize + SKEW)
    {
        return Err(format!(
            "second {s} handled {n}, more than {PER_SECOND} + {SKEW}"
        ));
    }
    if let Some((i, n)) = per_process
        .iter()
        .enumerate()
        .find(|(_, n)| **n * 100 < total * 15)
    {
        return Err(format!("process {i} starved: {n} of {total} (under 15 %)"));
    }
    Ok(())
}
