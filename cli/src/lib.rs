//! `courier`: the operator's command line.
//!
//! It uses only the facade's public API (`courier::connect`), so every backend Courier knows
//! works the same. The binary (`src/main.rs`) parses the arguments, connects and calls
//! [`run`]; tests call [`run`] in-process with a [`courier::Courier`] of their own (a
//! `memory://` backend lives only inside its process).
//!
//! Exit codes: 0 done; 1 a partial failure (some of a requeue or purge not done, with the
//! counts on stderr); 2 an error a person acts on (a wrong URL, an unreachable broker, a
//! backend not compiled in, bad input), one line on stderr; 130 interrupted (Ctrl-C) with
//! everything either done or untouched.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use courier::{
    Courier, DeadLetter, Error, ErrorKind, Message, MessageId, Page, Priority, QueueExt,
    QueueStats, RateLimit, ReplayFrom, Selection, SubscribeOptions,
};
use serde_json::json;

pub mod dashboard;

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "courier",
    version,
    about = "Operate Courier queues, dead letters, event groups and pub/sub on any backend"
)]
pub struct Cli {
    /// Backend URL (`redis://host:6379`, `sqlite://file.db`, …). Else `COURIER_URL`, else the
    /// config file's `url`.
    #[arg(long, global = true)]
    pub url: Option<String>,
    /// A Courier TOML config file, as services load it (`courier::load_config`).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The queues the backend stores (every queue published to, by any process), with their
    /// depth.
    Queues,
    /// A table per queue: ready per priority, delayed, in flight, dead and the counters.
    Stats {
        /// The queues (default: every queue the backend stores).
        queues: Vec<String>,
        /// Print again every SECONDS, with rates (Ctrl-C stops).
        #[arg(long, value_name = "SECONDS")]
        watch: Option<f64>,
        /// With --watch: stop after this many tables.
        #[arg(long, requires = "watch")]
        times: Option<u64>,
    },
    /// Pause queues (Q14), for every process: publishes are accepted, nothing is delivered,
    /// leases already granted stay valid.
    Pause {
        /// The queues.
        #[arg(required = true)]
        queues: Vec<String>,
    },
    /// Resume paused queues (Q14); waiting workers take work at once.
    Resume {
        /// The queues.
        #[arg(required = true)]
        queues: Vec<String>,
    },
    /// Show, set or clear a queue's rate limit (Q15), shared by every worker and process.
    Rate {
        /// The queue.
        queue: String,
        /// `N/WINDOW` (`200/s`, `10/500ms`, `1000/1m`), or `off`; none shows the current one.
        #[arg(value_parser = parse_rate)]
        limit: Option<RateArg>,
    },
    /// Move a queued message to another priority (Q16): to the back of that level's line.
    Reprioritise {
        /// The queue.
        queue: String,
        /// The message id.
        id: String,
        /// critical, high, normal or low.
        #[arg(long, value_parser = parse_priority)]
        priority: Priority,
    },
    /// Dead letters: list, show, requeue, purge.
    Dead {
        /// What to do with them.
        #[command(subcommand)]
        command: DeadCommand,
    },
    /// Publish one message.
    Publish {
        /// The queue.
        queue: String,
        /// The message kind (the handler's routing key).
        #[arg(long)]
        kind: String,
        /// critical, high, normal or low.
        #[arg(long, default_value = "normal", value_parser = parse_priority)]
        priority: Priority,
        /// Deliver no sooner than this (e.g. 500ms, 30s, 5m).
        #[arg(long, value_parser = parse_duration)]
        delay: Option<Duration>,
        /// Expire if not leased within this (Q12).
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
        /// A deduplication key (Q11).
        #[arg(long)]
        key: Option<String>,
        /// A header, `NAME=VALUE` (repeatable).
        #[arg(long = "header", value_parser = parse_header)]
        headers: Vec<(String, String)>,
        /// The payload: JSON text (checked).
        #[arg(long, group = "payload")]
        json_payload: Option<String>,
        /// The payload: the bytes of a file.
        #[arg(long, group = "payload")]
        file: Option<PathBuf>,
        /// The payload: text as it is.
        #[arg(long, group = "payload")]
        text: Option<String>,
    },
    /// Live pub/sub messages on a pattern, one line each (at most once: only what is
    /// published while it runs).
    Tail {
        /// A channel pattern (`meeting.*`, `signal.>`).
        pattern: String,
        /// Print each payload too.
        #[arg(long)]
        payload: bool,
        /// Stop after this many messages.
        #[arg(long)]
        count: Option<u64>,
        /// Stop after this long.
        #[arg(long = "for", value_parser = parse_duration)]
        duration: Option<Duration>,
    },
    /// Event-bus consumer groups.
    Events {
        /// What to do.
        #[command(subcommand)]
        command: EventsCommand,
    },
    /// The throughput harness against this URL, with the raw client's baseline beside it.
    Bench {
        /// Messages to publish and consume.
        #[arg(long, default_value_t = 20_000)]
        messages: usize,
        /// Messages per publish batch and per receive.
        #[arg(long, default_value_t = 100)]
        batch: usize,
        /// Concurrent publishers and handlers.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// Payload size in bytes.
        #[arg(long, default_value_t = 256)]
        payload: usize,
    },
    /// A web UI: queues with depth and rates, dead letters (view, requeue, purge), event groups
    /// with lag, updating live (see [`dashboard`]).
    Dashboard(dashboard::Args),
}

/// `courier dead …`.
#[derive(Debug, Subcommand)]
pub enum DeadCommand {
    /// Dead letters of a queue, oldest first.
    List {
        /// The queue.
        queue: String,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Skip this many first.
        #[arg(long, default_value_t = 0)]
        offset: usize,
        /// Only those buried within this long (e.g. 10m, 2h, 1d).
        #[arg(long, value_parser = parse_duration)]
        since: Option<Duration>,
    },
    /// One dead letter: message, headers, payload, error, attempts.
    Show {
        /// The queue.
        queue: String,
        /// The message id.
        id: String,
    },
    /// Put dead letters back at the back of their ready level, attempts reset.
    Requeue {
        /// The queue.
        queue: String,
        /// Message ids (or --all).
        ids: Vec<String>,
        /// Every dead letter of the queue.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        /// Requeue at this priority (critical, high, normal, low) instead of each message's
        /// own; a later retry keeps it.
        #[arg(long, value_parser = parse_priority)]
        priority: Option<Priority>,
    },
    /// Delete dead letters for good.
    Purge {
        /// The queue.
        queue: String,
        /// Message ids (or --all).
        ids: Vec<String>,
        /// Every dead letter of the queue.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        /// Do not ask for confirmation (required without a terminal).
        #[arg(long)]
        yes: bool,
    },
}

/// `courier events …`.
#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// The topics the backend stores, with their retained events and groups.
    Topics,
    /// Groups of a topic with their lag, pending and dead events.
    Groups {
        /// The topic.
        topic: String,
        /// The groups (default: every group of the topic).
        groups: Vec<String>,
    },
    /// Follow a topic's events as they are emitted, one line each, without a consumer group
    /// (nothing is leased; no group is created or moves).
    Tail {
        /// The topic.
        topic: String,
        /// Where to start: `now` (default), `start`, an event id, or `time:<ms>`.
        #[arg(long, default_value = "now")]
        from: String,
        /// Print each payload too.
        #[arg(long)]
        payload: bool,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
        /// Stop after this long.
        #[arg(long = "for", value_parser = parse_duration)]
        duration: Option<Duration>,
    },
    /// Pause a consumer group (E8): events are kept, the group receives nothing.
    Pause {
        /// The topic.
        topic: String,
        /// The group.
        group: String,
    },
    /// Resume a paused consumer group (E8).
    Resume {
        /// The topic.
        topic: String,
        /// The group.
        group: String,
    },
    /// Move a group to another position of the log (its pending events are dropped).
    Replay {
        /// The topic.
        topic: String,
        /// The group.
        #[arg(long)]
        group: String,
        /// `start`, `now`, an event id, or an instant `time:<ms since the epoch>`.
        #[arg(long)]
        from: String,
    },
}

/// How a command ended, for the exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Done {
    /// Everything done.
    Ok,
    /// Part of it was not done (the counts were printed).
    Partial,
    /// Stopped by Ctrl-C; everything is either done or untouched.
    Interrupted,
}

impl Done {
    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            Done::Ok => 0,
            Done::Partial => 1,
            Done::Interrupted => 130,
        }
    }
}

/// The URL to use: `--url`, else `COURIER_URL`, else the config file's `url`.
///
/// # Errors
/// `InvalidInput` when none is given, or the config file cannot be read.
pub fn resolve_url(cli: &Cli) -> courier::Result<String> {
    if let Some(u) = &cli.url {
        return Ok(u.clone());
    }
    if let Ok(u) = std::env::var("COURIER_URL")
        && !u.is_empty()
    {
        return Ok(u);
    }
    if let Some(path) = &cli.config {
        return courier::load_config(path)?
            .url
            .ok_or_else(|| Error::invalid(format!("{} sets no url", path.display())));
    }
    Err(Error::invalid(
        "no backend URL: pass --url, set COURIER_URL, or give --config FILE",
    ))
}

/// Run `cli` against `courier`, printing to stdout (progress and prompts to stderr).
///
/// # Errors
/// The first backend error or bad input; nothing further was attempted.
pub async fn run(courier: &Courier, cli: &Cli, out: &mut String) -> courier::Result<Done> {
    match &cli.command {
        Command::Stats {
            queues,
            watch,
            times,
        } => {
            let queues = if queues.is_empty() {
                courier.queue().list_queues().await?
            } else {
                queues.clone()
            };
            stats(courier, &queues, *watch, *times, cli.json, out).await
        }
        Command::Queues => queues(courier, cli.json, out).await,
        Command::Pause { queues } => {
            for q in queues {
                courier.queue().pause(q).await?;
                let _ = writeln!(out, "paused {q}");
            }
            Ok(Done::Ok)
        }
        Command::Resume { queues } => {
            for q in queues {
                courier.queue().resume(q).await?;
                let _ = writeln!(out, "resumed {q}");
            }
            Ok(Done::Ok)
        }
        Command::Rate { queue, limit } => {
            match limit {
                Some(RateArg::Off) => {
                    courier.queue().set_rate_limit(queue, None).await?;
                    let _ = writeln!(out, "{queue}: no rate limit");
                }
                Some(RateArg::Limit(l)) => {
                    courier.queue().set_rate_limit(queue, Some(*l)).await?;
                    let _ = writeln!(out, "{queue}: at most {}", show_rate(l));
                }
                None => match courier.queue().stats(queue).await?.rate_limit {
                    Some(l) => {
                        let _ = writeln!(out, "{queue}: at most {}", show_rate(&l));
                    }
                    None => {
                        let _ = writeln!(out, "{queue}: no rate limit");
                    }
                },
            }
            Ok(Done::Ok)
        }
        Command::Reprioritise {
            queue,
            id,
            priority,
        } => {
            let id = parse_id(id)?;
            courier.queue().reprioritise(queue, id, *priority).await?;
            let _ = writeln!(
                out,
                "{id} in {queue} is now {priority}, at the back of its level"
            );
            Ok(Done::Ok)
        }
        Command::Dead { command } => dead(courier, command, cli.json, out).await,
        Command::Publish {
            queue,
            kind,
            priority,
            delay,
            ttl,
            key,
            headers,
            json_payload,
            file,
            text,
        } => {
            let payload: Vec<u8> = match (json_payload, file, text) {
                (Some(j), _, _) => {
                    serde_json::from_str::<serde_json::Value>(j)
                        .map_err(|e| Error::invalid(format!("--json-payload is not JSON: {e}")))?;
                    j.clone().into_bytes()
                }
                (_, Some(f), _) => std::fs::read(f).map_err(|e| {
                    Error::invalid(format!("cannot read --file {}: {e}", f.display()))
                })?,
                (_, _, Some(t)) => t.clone().into_bytes(),
                _ => Vec::new(),
            };
            let mut m = Message::new(kind.clone(), payload).with_priority(*priority);
            if let Some(d) = delay {
                m = m.with_delay(*d);
            }
            if let Some(t) = ttl {
                m = m.with_ttl(*t);
            }
            if let Some(k) = key {
                m = m.with_dedup_key(k.clone());
            }
            for (k, v) in headers {
                m = m.with_header(k.clone(), v.clone());
            }
            let got = courier.queue().publish_unique(queue, m).await?;
            if cli.json {
                let _ = writeln!(
                    out,
                    "{}",
                    json!({"id": got.id().to_string(), "duplicate": got.is_duplicate()})
                );
            } else if got.is_duplicate() {
                let _ = writeln!(out, "duplicate: {} holds the key; nothing stored", got.id());
            } else {
                let _ = writeln!(out, "published {}", got.id());
            }
            Ok(Done::Ok)
        }
        Command::Tail {
            pattern,
            payload,
            count,
            duration,
        } => tail(courier, pattern, *payload, *count, *duration, cli.json, out).await,
        Command::Events { command } => events(courier, command, cli.json, out).await,
        Command::Dashboard(args) => dashboard::run(courier, cli, args).await,
        Command::Bench { .. } => Err(Error::invalid(
            "bench runs on its own connections: use the binary (`courier bench --url …`)",
        )),
    }
}

/// `courier queues`: every stored queue, one line each.
async fn queues(courier: &Courier, as_json: bool, out: &mut String) -> courier::Result<Done> {
    let names = courier.queue().list_queues().await?;
    if !as_json {
        let w = names.iter().map(String::len).max().unwrap_or(5).max(5);
        let _ = writeln!(
            out,
            "{:<w$} {:>8} {:>8} {:>9} {:>7} {:>10}",
            "queue", "ready", "delayed", "in-flight", "dead", "published"
        );
        for q in &names {
            let s = courier.queue().stats(q).await?;
            let _ = writeln!(
                out,
                "{q:<w$} {:>8} {:>8} {:>9} {:>7} {:>10}",
                s.ready_total(),
                s.delayed,
                s.in_flight,
                s.dead,
                s.published
            );
        }
        if names.is_empty() {
            let _ = writeln!(out, "(no queue: nothing was published on this backend)");
        }
        return Ok(Done::Ok);
    }
    for q in &names {
        let s = courier.queue().stats(q).await?;
        let _ = writeln!(out, "{}", stats_json(q, &s));
    }
    Ok(Done::Ok)
}

pub(crate) fn stats_json(queue: &str, s: &QueueStats) -> serde_json::Value {
    json!({
        "queue": queue,
        "ready": {"critical": s.ready[0], "high": s.ready[1], "normal": s.ready[2], "low": s.ready[3]},
        "delayed": s.delayed,
        "in_flight": s.in_flight,
        "dead": s.dead,
        "published": s.published,
        "acked": s.acked,
        "retried": s.retried,
        "dead_lettered": s.dead_lettered,
        "deduplicated": s.deduplicated,
        "expired": s.expired,
        "paused": s.paused,
        "rate_limit": s.rate_limit.map(|l| json!({"max": l.max, "per_ms": l.per_ms()})),
    })
}

async fn stats(
    courier: &Courier,
    queues: &[String],
    watch: Option<f64>,
    times: Option<u64>,
    as_json: bool,
    out: &mut String,
) -> courier::Result<Done> {
    let interval = match watch {
        Some(s) if !(0.05..=86_400.0).contains(&s) => {
            return Err(Error::invalid("--watch takes 0.05 to 86400 seconds"));
        }
        Some(s) => Some(Duration::from_secs_f64(s)),
        None => None,
    };
    let mut before: Option<(Instant, Vec<QueueStats>)> = None;
    let mut round = 0u64;
    loop {
        let mut now = Vec::with_capacity(queues.len());
        for q in queues {
            now.push(courier.queue().stats(q).await?);
        }
        let at = Instant::now();
        let rates: Option<Vec<(f64, f64)>> = before.as_ref().map(|(t, old)| {
            let secs = at.duration_since(*t).as_secs_f64().max(1e-3);
            old.iter()
                .zip(&now)
                .map(|(o, n)| {
                    (
                        n.published.saturating_sub(o.published) as f64 / secs,
                        n.acked.saturating_sub(o.acked) as f64 / secs,
                    )
                })
                .collect()
        });
        if as_json {
            for (i, (q, s)) in queues.iter().zip(&now).enumerate() {
                let mut v = stats_json(q, s);
                if let Some(r) = &rates {
                    v["published_per_s"] = json!(r[i].0);
                    v["acked_per_s"] = json!(r[i].1);
                }
                let _ = writeln!(out, "{v}");
            }
        } else {
            out.push_str(&stats_table(queues, &now, rates.as_deref()));
        }
        round += 1;
        let Some(every) = interval else {
            return Ok(Done::Ok);
        };
        if times.is_some_and(|t| round >= t) {
            return Ok(Done::Ok);
        }
        flush(out);
        before = Some((at, now));
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = tokio::signal::ctrl_c() => return Ok(Done::Ok),
        }
    }
}

/// The stats table (with rates when watching).
pub fn stats_table(
    queues: &[String],
    stats: &[QueueStats],
    rates: Option<&[(f64, f64)]>,
) -> String {
    let w = queues.iter().map(String::len).max().unwrap_or(5).max(5);
    let mut s = String::new();
    let _ = write!(
        s,
        "{:<w$} {:>23} {:>8} {:>9} {:>7} {:>10} {:>10} {:>8} {:>8} {:>8}",
        "queue",
        "ready crit/high/norm/low",
        "delayed",
        "in-flight",
        "dead",
        "published",
        "acked",
        "retried",
        "buried",
        "expired"
    );
    if rates.is_some() {
        let _ = write!(s, " {:>9} {:>9}", "publ/s", "acked/s");
    }
    s.push('\n');
    for (i, (q, st)) in queues.iter().zip(stats).enumerate() {
        let ready = format!(
            "{}/{}/{}/{}",
            st.ready[0], st.ready[1], st.ready[2], st.ready[3]
        );
        let _ = write!(
            s,
            "{q:<w$} {ready:>23} {:>8} {:>9} {:>7} {:>10} {:>10} {:>8} {:>8} {:>8}",
            st.delayed,
            st.in_flight,
            st.dead,
            st.published,
            st.acked,
            st.retried,
            st.dead_lettered,
            st.expired
        );
        if let Some(r) = rates {
            let _ = write!(s, " {:>9.1} {:>9.1}", r[i].0, r[i].1);
        }
        if st.paused {
            s.push_str("  paused");
        }
        if let Some(l) = st.rate_limit {
            let _ = write!(s, "  limit {}", show_rate(&l));
        }
        s.push('\n');
    }
    s
}

/// Print what is buffered (a watch prints as it goes).
fn flush(out: &mut String) {
    print!("{out}");
    out.clear();
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(crate) fn parse_id(text: &str) -> courier::Result<MessageId> {
    text.parse::<MessageId>()
        .map_err(|_| Error::invalid(format!("{text:?} is not a message id")))
}

pub(crate) fn dead_json(d: &DeadLetter, with_payload: bool) -> serde_json::Value {
    let mut v = json!({
        "id": d.message.id.to_string(),
        "kind": d.message.kind,
        "priority": d.message.priority.as_str(),
        "attempts": d.attempts,
        "failed_at_ms": d.failed_at,
        "error": d.error,
        "created_at_ms": d.message.created_at,
        "headers": d.message.headers,
        "payload_bytes": d.message.payload.len(),
    });
    if with_payload {
        v["payload"] = match std::str::from_utf8(&d.message.payload) {
            Ok(t) => json!(t),
            Err(_) => json!(hex(&d.message.payload)),
        };
    }
    v
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}

/// Every dead letter's id, oldest first (paged, so a large store is read in steps).
async fn all_dead_ids(courier: &Courier, queue: &str) -> courier::Result<Vec<MessageId>> {
    const PAGE: usize = 500;
    let mut ids = Vec::new();
    let mut offset = 0;
    loop {
        let page = courier
            .queue()
            .dead_letters(
                queue,
                Page {
                    offset,
                    limit: PAGE,
                },
            )
            .await?;
        let n = page.len();
        ids.extend(page.into_iter().map(|d| d.message.id));
        if n < PAGE {
            break;
        }
        offset += n;
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// The progress line on stderr, when stderr is a terminal.
struct Progress {
    what: &'static str,
    total: usize,
    shown: bool,
}

impl Progress {
    fn new(what: &'static str, total: usize) -> Self {
        Progress {
            what,
            total,
            shown: std::io::stderr().is_terminal() && total > 100,
        }
    }

    fn update(&self, done: usize) {
        if self.shown {
            let width = 30;
            let filled = (done * width).checked_div(self.total).unwrap_or(width);
            eprint!(
                "\r{} [{}{}] {done}/{}",
                self.what,
                "#".repeat(filled),
                " ".repeat(width - filled),
                self.total
            );
        }
    }

    fn finish(&self) {
        if self.shown {
            eprintln!();
        }
    }
}

/// Requeue or purge `ids` in chunks; each chunk is one atomic call of the backend, so an
/// interrupt or a failure between chunks leaves every message either done or untouched.
async fn in_chunks(
    courier: &Courier,
    queue: &str,
    ids: Vec<MessageId>,
    purge: bool,
    at: Option<Priority>,
    as_json: bool,
    out: &mut String,
) -> courier::Result<Done> {
    const CHUNK: usize = 100;
    let verb = if purge { "purged" } else { "requeued" };
    let total = ids.len();
    let progress = Progress::new(if purge { "purging" } else { "requeuing" }, total);
    let mut done_ids = 0usize;
    let mut moved = 0u64;
    let mut failure: Option<Error> = None;
    let mut interrupted = false;
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    for chunk in ids.chunks(CHUNK) {
        let which = Selection::Ids(chunk.to_vec());
        let call = async {
            match (purge, at) {
                (true, _) => courier.queue().purge_dead(queue, which).await,
                (false, None) => courier.queue().requeue_dead(queue, which).await,
                (false, Some(p)) => courier.queue().requeue_dead_at(queue, which, p).await,
            }
        };
        // A chunk in flight completes (it is one atomic call); Ctrl-C stops before the next.
        let r = call.await;
        match r {
            Ok(n) => {
                moved += n;
                done_ids += chunk.len();
                progress.update(done_ids);
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
        if futures_ready(&mut ctrl_c) {
            interrupted = true;
            break;
        }
    }
    progress.finish();
    let left = total - done_ids;
    if as_json {
        let _ = writeln!(
            out,
            "{}",
            json!({verb: moved, "ids_done": done_ids, "ids_left": left,
                   "error": failure.as_ref().map(ToString::to_string), "interrupted": interrupted})
        );
    } else {
        let _ = writeln!(
            out,
            "{verb} {moved} dead letter(s) of {queue} ({done_ids} of {total} id(s))"
        );
    }
    if let Some(e) = failure {
        eprintln!(
            "courier: {verb} {done_ids} of {total} id(s); {left} left as dead letters: {}",
            one_line(&e)
        );
        return Ok(Done::Partial);
    }
    if interrupted {
        eprintln!("courier: interrupted: {left} id(s) left as dead letters, untouched");
        return Ok(Done::Interrupted);
    }
    Ok(Done::Ok)
}

/// Whether a future (Ctrl-C) has completed, without waiting.
fn futures_ready<F: std::future::Future + Unpin>(f: &mut F) -> bool {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    std::pin::Pin::new(f).poll(&mut cx).is_ready()
}

async fn dead(
    courier: &Courier,
    command: &DeadCommand,
    as_json: bool,
    out: &mut String,
) -> courier::Result<Done> {
    match command {
        DeadCommand::List {
            queue,
            limit,
            offset,
            since,
        } => {
            let page = Page {
                offset: *offset,
                limit: *limit,
            };
            let mut ds = courier.queue().dead_letters(queue, page).await?;
            if let Some(s) = since {
                let from = now_ms().saturating_sub(s.as_millis() as u64);
                ds.retain(|d| d.failed_at >= from);
            }
            if as_json {
                for d in &ds {
                    let _ = writeln!(out, "{}", dead_json(d, false));
                }
            } else {
                let _ = writeln!(
                    out,
                    "{:<36} {:<24} {:>8} {:>8}  {:<13}  error",
                    "id", "kind", "priority", "attempts", "failed_at_ms"
                );
                for d in &ds {
                    let _ = writeln!(
                        out,
                        "{:<36} {:<24} {:>8} {:>8}  {:<13}  {}",
                        d.message.id.to_string(),
                        d.message.kind,
                        d.message.priority.as_str(),
                        d.attempts,
                        d.failed_at,
                        d.error.lines().next().unwrap_or("")
                    );
                }
                let _ = writeln!(out, "{} dead letter(s) shown", ds.len());
            }
            Ok(Done::Ok)
        }
        DeadCommand::Show { queue, id } => {
            let d = courier.queue().dead_letter(queue, parse_id(id)?).await?;
            if as_json {
                let _ = writeln!(out, "{}", dead_json(&d, true));
            } else {
                let v = dead_json(&d, true);
                let _ = writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&v).unwrap_or_default()
                );
            }
            Ok(Done::Ok)
        }
        DeadCommand::Requeue {
            queue,
            ids,
            all,
            priority,
        } => {
            let ids = selection(courier, queue, ids, *all).await?;
            in_chunks(courier, queue, ids, false, *priority, as_json, out).await
        }
        DeadCommand::Purge {
            queue,
            ids,
            all,
            yes,
        } => {
            let ids = selection(courier, queue, ids, *all).await?;
            if !yes && !confirm(&format!("purge {} dead letter(s) of {queue}", ids.len()))? {
                let _ = writeln!(out, "nothing purged");
                return Ok(Done::Ok);
            }
            in_chunks(courier, queue, ids, true, None, as_json, out).await
        }
    }
}

async fn selection(
    courier: &Courier,
    queue: &str,
    ids: &[String],
    all: bool,
) -> courier::Result<Vec<MessageId>> {
    if all {
        return all_dead_ids(courier, queue).await;
    }
    if ids.is_empty() {
        return Err(Error::invalid("name the ids, or pass --all"));
    }
    ids.iter().map(|i| parse_id(i)).collect()
}

/// Ask on the terminal; refuse (an error) without one.
fn confirm(what: &str) -> courier::Result<bool> {
    if !std::io::stdin().is_terminal() {
        return Err(Error::invalid(format!(
            "refusing to {what} without confirmation: no terminal to ask on; pass --yes"
        )));
    }
    eprint!("{what}? [y/N] ");
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| Error::invalid(format!("cannot read the answer: {e}")))?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes"))
}

async fn tail(
    courier: &Courier,
    pattern: &str,
    payload: bool,
    count: Option<u64>,
    duration: Option<Duration>,
    as_json: bool,
    out: &mut String,
) -> courier::Result<Done> {
    let mut sub = courier
        .pubsub()
        .subscribe(pattern, SubscribeOptions::default())
        .await?;
    let until = duration.map(|d| tokio::time::Instant::now() + d);
    let mut seen = 0u64;
    // Tell a script (and the tests) the subscription is live.
    eprintln!("courier: tailing {pattern}");
    loop {
        if count.is_some_and(|c| seen >= c) {
            return Ok(Done::Ok);
        }
        let next = async {
            match until {
                Some(u) => tokio::time::timeout_at(u, sub.next()).await.ok().flatten(),
                None => sub.next().await,
            }
        };
        let m = tokio::select! {
            m = next => m,
            _ = tokio::signal::ctrl_c() => None,
        };
        let Some(m) = m else {
            return Ok(Done::Ok);
        };
        seen += 1;
        message_line(&m, payload, as_json, out);
        flush(out);
    }
}

/// One line for a message (`courier tail`, `courier events tail`): kind, id, size, headers,
/// and the payload when asked.
fn message_line(m: &Message, payload: bool, as_json: bool, out: &mut String) {
    if as_json {
        let mut v = json!({"kind": m.kind, "id": m.id.to_string(), "bytes": m.payload.len(),
                           "headers": m.headers, "priority": m.priority.as_str()});
        if payload {
            v["payload"] = json!(String::from_utf8_lossy(&m.payload));
        }
        let _ = writeln!(out, "{v}");
    } else {
        let headers: Vec<String> = m.headers.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = write!(
            out,
            "{} {} {}B [{}]",
            m.kind,
            m.id,
            m.payload.len(),
            headers.join(" ")
        );
        if payload {
            let _ = write!(out, " {}", String::from_utf8_lossy(&m.payload));
        }
        out.push('\n');
    }
}

/// `--from` of `events replay` and `events tail`: `start`, `now`/`end`, `time:<ms>`, an id.
fn parse_from(from: &str) -> courier::Result<ReplayFrom> {
    Ok(match from {
        "start" => ReplayFrom::Start,
        "now" | "end" => ReplayFrom::End,
        t if t.starts_with("time:") => ReplayFrom::Time(
            t["time:".len()..]
                .parse()
                .map_err(|_| Error::invalid(format!("{t:?}: time:<ms since the epoch>")))?,
        ),
        id => ReplayFrom::Id(parse_id(id).map_err(|_| {
            Error::invalid(format!(
                "--from {id:?}: use start, now, an event id or time:<ms>"
            ))
        })?),
    })
}

/// How often `events tail` looks for new events when it has read everything.
const TAIL_POLL: Duration = Duration::from_millis(200);

/// `courier events tail`: read the topic's log from `from` with `read_events`, then from the
/// last event read (`Id` includes it, so it is dropped), polling when there is nothing new.
async fn events_tail(
    courier: &Courier,
    topic: &str,
    from: &str,
    (count, duration): (Option<u64>, Option<Duration>),
    (payload, as_json): (bool, bool),
    out: &mut String,
) -> courier::Result<Done> {
    const PAGE: usize = 100;
    let bus = courier.events();
    let mut position = match parse_from(from)? {
        // "now" on the backend's clock: what is emitted from here on.
        ReplayFrom::End => ReplayFrom::Time(bus.clock().now_ms()),
        other => other,
    };
    let mut last: Option<MessageId> = None;
    let until = duration.map(|d| tokio::time::Instant::now() + d);
    let mut seen = 0u64;
    eprintln!("courier: tailing events of {topic}");
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        let page = match bus.read_events(topic, position, PAGE).await {
            Ok(p) => p,
            Err(e) if e.kind() == ErrorKind::NotFound && last.is_some() => {
                // Retention trimmed the last event read: go on at the oldest retained.
                eprintln!(
                    "courier: retention trimmed {topic} past the tail; going on from the oldest \
                     retained event"
                );
                position = ReplayFrom::Start;
                last = None;
                continue;
            }
            Err(e) => return Err(e),
        };
        let fresh: Vec<&Message> = page.iter().filter(|m| Some(m.id) != last).collect();
        for m in &fresh {
            if count.is_some_and(|c| seen >= c) {
                return Ok(Done::Ok);
            }
            seen += 1;
            message_line(m, payload, as_json, out);
        }
        flush(out);
        if count.is_some_and(|c| seen >= c) {
            return Ok(Done::Ok);
        }
        if let Some(m) = page.last() {
            last = Some(m.id);
            position = ReplayFrom::Id(m.id);
        }
        if fresh.is_empty() || page.len() < PAGE {
            let wake = match until {
                Some(u) if tokio::time::Instant::now() >= u => return Ok(Done::Ok),
                Some(u) => u.min(tokio::time::Instant::now() + TAIL_POLL),
                None => tokio::time::Instant::now() + TAIL_POLL,
            };
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                _ = &mut ctrl_c => return Ok(Done::Ok),
            }
        }
    }
}

async fn events(
    courier: &Courier,
    command: &EventsCommand,
    as_json: bool,
    out: &mut String,
) -> courier::Result<Done> {
    match command {
        EventsCommand::Topics => {
            let topics = courier.events().list_topics().await?;
            for t in &topics {
                let len = courier.events().topic_len(t).await?;
                let groups = courier.events().list_groups(t).await?;
                if as_json {
                    let _ = writeln!(
                        out,
                        "{}",
                        json!({"topic": t, "retained": len, "groups": groups})
                    );
                } else {
                    let _ = writeln!(
                        out,
                        "{t}: {len} event(s) retained; groups: {}",
                        if groups.is_empty() {
                            "(none)".to_string()
                        } else {
                            groups.join(", ")
                        }
                    );
                }
            }
            if topics.is_empty() && !as_json {
                let _ = writeln!(out, "(no topic: nothing was emitted on this backend)");
            }
            Ok(Done::Ok)
        }
        EventsCommand::Groups { topic, groups } => {
            let groups = if groups.is_empty() {
                courier.events().list_groups(topic).await?
            } else {
                groups.clone()
            };
            let len = courier.events().topic_len(topic).await?;
            if !as_json {
                let _ = writeln!(out, "topic {topic}: {len} event(s) retained");
                let _ = writeln!(
                    out,
                    "{:<24} {:>8} {:>8} {:>9} {:>7} {:>8} {:>8}",
                    "group", "lag", "ready", "in-flight", "dead", "acked", "expired"
                );
            }
            for g in &groups {
                let s = courier.events().group_stats(topic, g).await?;
                if as_json {
                    let _ = writeln!(
                        out,
                        "{}",
                        json!({"topic": topic, "group": g, "retained": len, "lag": s.lag,
                               "ready": s.queue.ready_total(), "delayed": s.queue.delayed,
                               "in_flight": s.queue.in_flight, "dead": s.queue.dead,
                               "acked": s.queue.acked, "retried": s.queue.retried,
                               "dead_lettered": s.queue.dead_lettered, "expired": s.queue.expired})
                    );
                } else {
                    let _ = writeln!(
                        out,
                        "{g:<24} {:>8} {:>8} {:>9} {:>7} {:>8} {:>8}",
                        s.lag,
                        s.queue.ready_total() + s.queue.delayed,
                        s.queue.in_flight,
                        s.queue.dead,
                        s.queue.acked,
                        s.queue.expired
                    );
                }
            }
            Ok(Done::Ok)
        }
        EventsCommand::Tail {
            topic,
            from,
            payload,
            count,
            duration,
        } => {
            let stop = (*count, *duration);
            events_tail(courier, topic, from, stop, (*payload, as_json), out).await
        }
        EventsCommand::Pause { topic, group } => {
            courier.events().pause_group(topic, group).await?;
            let _ = writeln!(out, "paused group {group} of {topic}");
            Ok(Done::Ok)
        }
        EventsCommand::Resume { topic, group } => {
            courier.events().resume_group(topic, group).await?;
            let _ = writeln!(out, "resumed group {group} of {topic}");
            Ok(Done::Ok)
        }
        EventsCommand::Replay { topic, group, from } => {
            let position = parse_from(from)?;
            courier.events().reset_group(topic, group, position).await?;
            let _ = writeln!(out, "group {group} of {topic} now reads from {from}");
            Ok(Done::Ok)
        }
    }
}

/// The argument of `courier rate`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateArg {
    /// Remove the limit.
    Off,
    /// Set this limit.
    Limit(RateLimit),
}

/// `N/WINDOW` (`200/s` = 200 per second, `10/500ms`, `1000/1m`) or `off`.
///
/// # Errors
/// A message naming the accepted forms, or why the limit is out of bounds.
pub fn parse_rate(text: &str) -> Result<RateArg, String> {
    if text.eq_ignore_ascii_case("off") || text.eq_ignore_ascii_case("none") {
        return Ok(RateArg::Off);
    }
    let (n, window) = text
        .split_once('/')
        .ok_or_else(|| format!("{text:?} is not a rate (e.g. 200/s, 10/500ms, 1000/1m, off)"))?;
    let max: u32 = n
        .trim()
        .parse()
        .map_err(|_| format!("{n:?} is not a count of deliveries"))?;
    let window = window.trim();
    // `200/s` means one second: a unit alone is one of it.
    let per = if window.starts_with(|c: char| c.is_ascii_digit()) {
        parse_duration(window)?
    } else {
        parse_duration(&format!("1{window}"))?
    };
    let limit = RateLimit::new(max, per);
    limit.validate().map_err(|e| e.to_string())?;
    Ok(RateArg::Limit(limit))
}

fn show_rate(l: &RateLimit) -> String {
    format!("{} per {:?}", l.max, l.per)
}

/// `1500ms`, `30s`, `5m`, `2h`, `1d`, or a bare number of milliseconds.
///
/// # Errors
/// A message naming the accepted forms.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 500ms, 30s, 5m, 2h, 1d)"))?;
    let ms = match unit {
        "" | "ms" => n,
        "s" => n * 1e3,
        "m" => n * 60e3,
        "h" => n * 3_600e3,
        "d" => n * 86_400e3,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (ms, s, m, h, d)")),
    };
    if !ms.is_finite() || !(0.0..=1e15).contains(&ms) {
        return Err(format!("{text:?} is out of range"));
    }
    Ok(Duration::from_micros((ms * 1e3) as u64))
}

fn parse_priority(text: &str) -> Result<Priority, String> {
    match text.to_ascii_lowercase().as_str() {
        "critical" => Ok(Priority::Critical),
        "high" => Ok(Priority::High),
        "normal" => Ok(Priority::Normal),
        "low" => Ok(Priority::Low),
        _ => Err(format!("{text:?}: critical, high, normal or low")),
    }
}

fn parse_header(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{text:?}: a header is NAME=VALUE"))
}

/// An error as one line a person can act on (no URL password: backends redact their URLs).
pub fn one_line(e: &Error) -> String {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or("").to_string();
    match e.kind() {
        ErrorKind::Unsupported => format!("{first} (rebuild with the backend's feature)"),
        _ => first,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("1500"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1.5m"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn the_command_line_parses() {
        let cli = Cli::try_parse_from([
            "courier",
            "--url",
            "memory://",
            "dead",
            "purge",
            "q",
            "--all",
            "--yes",
        ])
        .expect("parse");
        assert!(matches!(
            cli.command,
            Command::Dead {
                command: DeadCommand::Purge {
                    all: true,
                    yes: true,
                    ..
                }
            }
        ));
        assert!(
            Cli::try_parse_from(["courier", "dead", "requeue", "q", "--all", "0190"]).is_err(),
            "ids and --all conflict"
        );
    }
}
