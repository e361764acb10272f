//! Courier's semantic contract (DESIGN §3–§6) as named test cases.
//!
//! A backend runs the whole suite from one short test file with `harness = false`:
//!
//! ```text
//! // backends/foo/tests/conformance.rs
//! fn main() -> std::process::ExitCode {
//!     courier_conformance::run(FooFactory::default())
//! }
//! ```
//!
//! Every case is printed by `cargo test` as `<backend>::<area>::<rule>::<case>`, e.g.
//! `memory::queue::priority::strict_order`, and is defined and registered in
//! `src/<area>/<rule>.rs` (here `src/queue/priority.rs`). Each case gets its own namespace
//! (a fresh backend, key prefix or database), every wait is bounded, and a case that runs
//! past its deadline fails instead of hanging. A backend whose server is unreachable is
//! shown as ignored with a loud banner, and fails when `COURIER_REQUIRE_BACKENDS=1`.
//!
//! `conformance/RULES.md` maps every rule id to the cases that prove it; a unit test keeps
//! it in step with [`cases`].

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use courier_core::{
    Delivery, Error, ErrorKind, EventBus, MessageId, PubSub, Queue, QueueConfig, QueueStats,
    RetryPolicy,
};
use futures::future::BoxFuture;

mod capture;
mod differential;
mod events;
mod pubsub;
mod queue;
mod worker;

pub mod faults;

/// The three services of a backend under test.
#[derive(Clone)]
pub struct Backend {
    /// The work queue.
    pub queue: Arc<dyn Queue>,
    /// Ephemeral broadcast.
    pub pubsub: Arc<dyn PubSub>,
    /// Durable events with consumer groups.
    pub events: Arc<dyn EventBus>,
}

impl Backend {
    /// One value implementing all three traits, shared.
    pub fn from_one<B: Queue + PubSub + EventBus + Clone>(b: B) -> Self {
        Backend {
            queue: Arc::new(b.clone()),
            pubsub: Arc::new(b.clone()),
            events: Arc::new(b),
        }
    }
}

/// How the suite reaches a backend. Implemented once per backend crate, in its
/// `tests/conformance.rs`.
#[async_trait]
pub trait BackendFactory: Send + Sync + 'static {
    /// The backend's short name, the first segment of every case name.
    fn name(&self) -> &'static str;

    /// The backend's documented delay tick: how late after its due time a delayed or
    /// retried message may become ready (Q3). The suite uses it as its tolerance.
    fn tick(&self) -> Duration {
        Duration::from_millis(100)
    }

    /// `Err(reason)` when the backend cannot run here (its server is unreachable).
    async fn probe(&self) -> Result<(), String> {
        Ok(())
    }

    /// A fresh backend whose queues, channels and topics are isolated under `ns`.
    async fn connect(&self, ns: &str) -> courier_core::Result<Backend>;

    /// A second, independent handle on the same namespace as `backend`, as another
    /// process would open it. Memory has no other process: it returns the same store.
    async fn reopen(&self, ns: &str, backend: &Backend) -> courier_core::Result<Backend>;

    /// Store `bytes` in `queue` as an entry that does not decode, as a corrupt or foreign
    /// writer would (Q10). `Ok(None)` only where stored entries are never encoded (memory
    /// keeps typed values, so nothing in it can fail to decode).
    async fn inject_undecodable(
        &self,
        backend: &Backend,
        queue: &str,
        bytes: &[u8],
    ) -> courier_core::Result<Option<MessageId>>;

    /// Make the next `publish_batch` on `backend` (the handle of namespace `ns`) fail after
    /// `calls` of its storage steps succeeded, as a connection lost mid-batch would, to prove
    /// `Error::stored` (Q7). `Ok(false)` where a batch is stored in one all-or-nothing step
    /// (memory; SQLite's single transaction): there is no partial store to report.
    async fn fail_batch_after(
        &self,
        _ns: &str,
        _backend: &Backend,
        _calls: usize,
    ) -> courier_core::Result<bool> {
        Ok(false)
    }

    /// Remove what the case of namespace `ns` left on the broker, after the case (whether it
    /// passed or not), where leftovers cost the broker resources: RabbitMQ keeps files open
    /// for every stream. Only names under `ns` are touched, never the rest of the broker.
    async fn cleanup(&self, _ns: &str) -> courier_core::Result<()> {
        Ok(())
    }

    /// Cut the backend's connections (P6) so that they must come back by themselves.
    /// `Ok(false)` when the backend has no connection to cut (memory).
    async fn disrupt(&self, _backend: &Backend) -> courier_core::Result<bool> {
        Ok(false)
    }
}

/// A failed check, with what was expected and what was seen.
pub struct Failure(pub String);

impl fmt::Debug for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure(format!("unexpected error: {e}"))
    }
}

impl From<String> for Failure {
    fn from(s: String) -> Self {
        Failure(s)
    }
}

/// What a case returns.
pub type Outcome = Result<(), Failure>;

/// Fail the case with a formatted message unless `cond` holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err($crate::Failure(format!(
                "{} (check `{}` at {}:{})",
                format!($($arg)+),
                stringify!($cond),
                file!(),
                line!()
            )));
        }
    };
}

/// Fail the case unless `left == right`, printing both.
#[macro_export]
macro_rules! ensure_eq {
    ($left:expr, $right:expr, $($arg:tt)+) => {{
        let (l, r) = (&$left, &$right);
        if l != r {
            return Err($crate::Failure(format!(
                "{}: left {:?} != right {:?} ({}:{})",
                format!($($arg)+),
                l,
                r,
                file!(),
                line!()
            )));
        }
    }};
}

/// One named case of the suite.
#[derive(Clone, Copy)]
pub struct Case {
    /// `<area>::<rule>::<case>`, without the backend prefix.
    pub name: &'static str,
    /// The rule ids (DESIGN §3–§6, and `W` for the worker runtime of §4) it proves.
    pub rules: &'static [&'static str],
    /// The case itself.
    pub run: fn(Ctx) -> BoxFuture<'static, Outcome>,
}

macro_rules! case {
    ($name:literal, [$($rule:literal),+], $f:path) => {
        $crate::Case {
            name: $name,
            rules: &[$($rule),+],
            run: |cx| Box::pin($f(cx)),
        }
    };
}
#[allow(unused_imports)]
pub(crate) use case;

/// Every case of the suite, in a stable order.
pub fn cases() -> Vec<Case> {
    let mut all = Vec::new();
    all.extend(queue::cases());
    all.extend(worker::cases());
    all.extend(pubsub::cases());
    all.extend(events::cases());
    all.extend(differential::cases());
    all
}

/// Every rule id of the contract.
pub const RULES: &[&str] = &[
    "Q1", "Q2", "Q3", "Q4", "Q5", "Q6", "Q7", "Q8", "Q9", "Q10", "Q11", "Q12", "Q13", "Q14", "Q15",
    "Q16", "W", "P1", "P2", "P3", "P4", "P5", "P6", "P7", "P8", "E1", "E2", "E3", "E4", "E5", "E6",
    "E7", "E8",
];

/// What one case works with: a fresh backend in its own namespace.
#[derive(Clone)]
pub struct Ctx {
    /// The backend under test.
    pub backend: Backend,
    /// This case's namespace: prefix every name with it (see [`Ctx::name`]).
    pub ns: String,
    /// The factory, for reopen, injection and disruption.
    pub factory: Arc<dyn BackendFactory>,
    /// The backend's delay tick ([`BackendFactory::tick`]).
    pub tick: Duration,
}

impl Ctx {
    /// A queue, channel, topic or group name unique to this case.
    pub fn name(&self, what: &str) -> String {
        format!("{}-{what}", self.ns)
    }

    /// The queue under test.
    pub fn q(&self) -> &dyn Queue {
        &*self.backend.queue
    }

    /// A generous bound for anything that should happen "promptly": several ticks, and
    /// never less than 2 s, so a loaded CI machine does not fail a correct backend.
    pub fn prompt(&self) -> Duration {
        (self.tick * 10).max(Duration::from_secs(2))
    }
}

/// A queue configuration with a long lease (nothing expires by accident) and immediate,
/// exact retries.
pub fn plain_config() -> QueueConfig {
    QueueConfig::default()
        .with_visibility_timeout(Duration::from_secs(30))
        .with_retry(RetryPolicy::exact(3, Duration::ZERO, 2.0, Duration::ZERO))
}

/// Wait (bounded by 10 s) until the backend's clock (the server's for Redis, the log's for
/// RabbitMQ and NATS) reaches `at_ms`: for cases about instants on that clock (Q12 expiry).
pub async fn clock_past(cx: &Ctx, at_ms: u64) -> Outcome {
    const LIMIT: Duration = Duration::from_secs(10);
    let clock = cx.backend.queue.clock();
    let limit = Instant::now() + LIMIT;
    while clock.now_ms() < at_ms {
        ensure!(
            Instant::now() < limit,
            "the backend clock did not reach {at_ms} within {LIMIT:?} (now {})",
            clock.now_ms()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// Await `fut` for at most `limit`, failing the case with `what` when it takes longer.
pub async fn within<T>(
    limit: Duration,
    what: &str,
    fut: impl Future<Output = T>,
) -> Result<T, Failure> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| Failure(format!("timed out after {limit:?} waiting for {what}")))
}

/// Receive until `n` deliveries are collected (one receive call may return fewer), or fail
/// at `limit`.
pub async fn receive_n(
    q: &dyn Queue,
    queue: &str,
    n: usize,
    limit: Duration,
) -> Result<Vec<Delivery>, Failure> {
    let deadline = Instant::now() + limit;
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Failure(format!(
                "received {} of {n} from {queue} within {limit:?}",
                got.len()
            )));
        }
        let wait = left.min(Duration::from_millis(500));
        let batch = within(
            left + Duration::from_secs(5),
            "receive",
            q.receive(queue, n - got.len(), wait),
        )
        .await??;
        got.extend(batch);
    }
    Ok(got)
}

/// Check that nothing is delivered from `queue` during `wait`.
pub async fn expect_nothing(q: &dyn Queue, queue: &str, wait: Duration) -> Outcome {
    let got = within(
        wait + Duration::from_secs(5),
        "receive",
        q.receive(queue, 10, wait),
    )
    .await??;
    ensure!(
        got.is_empty(),
        "expected nothing from {queue} for {wait:?}, got {:?}",
        got.iter()
            .map(|d| (&d.message.kind, d.message.attempt))
            .collect::<Vec<_>>()
    );
    Ok(())
}

/// Poll `stats` until `pred` holds or `limit` passes; returns the last stats either way
/// with whether the predicate held.
pub async fn stats_until(
    q: &dyn Queue,
    queue: &str,
    limit: Duration,
    pred: impl Fn(&QueueStats) -> bool,
) -> Result<(QueueStats, bool), Failure> {
    let deadline = Instant::now() + limit;
    loop {
        let s = within(Duration::from_secs(10), "stats", q.stats(queue)).await??;
        if pred(&s) {
            return Ok((s, true));
        }
        if Instant::now() >= deadline {
            return Ok((s, false));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Jepsen-style accounting of a concurrent run: every message the run published (`sent`,
/// with the publish acknowledged) against every delivery handled (`seen`).
#[derive(Default)]
pub struct Accounting {
    sent: HashMap<MessageId, ()>,
    seen: HashMap<MessageId, u32>,
}

impl Accounting {
    /// Record an acknowledged publish.
    pub fn sent(&mut self, id: MessageId) {
        self.sent.insert(id, ());
    }

    /// Record a handled delivery.
    pub fn seen(&mut self, id: MessageId) {
        *self.seen.entry(id).or_default() += 1;
    }

    /// `(lost, unexpected, duplicated)`, printed as one line under `label`.
    pub fn report(&self, label: &str) -> (usize, usize, usize) {
        let lost = self
            .sent
            .keys()
            .filter(|id| !self.seen.contains_key(id))
            .count();
        let unexpected = self
            .seen
            .keys()
            .filter(|id| !self.sent.contains_key(id))
            .count();
        let duplicated = self.seen.values().filter(|&&n| n > 1).count();
        println!(
            "{label}: sent {} handled {} lost {lost} unexpected {unexpected} duplicated {duplicated}",
            self.sent.len(),
            self.seen.len()
        );
        (lost, unexpected, duplicated)
    }
}

/// Check that `r` failed with `kind`, naming `what` and what happened otherwise.
pub fn expect_kind<T: fmt::Debug>(
    r: courier_core::Result<T>,
    kind: ErrorKind,
    what: &str,
) -> Outcome {
    match r {
        Ok(v) => Err(Failure(format!("{what}: expected {kind:?}, got Ok({v:?})"))),
        Err(e) if e.kind() == kind => Ok(()),
        Err(e) => Err(Failure(format!(
            "{what}: expected {kind:?}, got {:?}: {e}",
            e.kind()
        ))),
    }
}

/// Ids and attempts of deliveries, for readable failures.
pub fn summary(ds: &[Delivery]) -> Vec<(String, u32)> {
    ds.iter()
        .map(|d| (d.message.kind.clone(), d.message.attempt))
        .collect()
}

/// A fresh namespace: a short random token valid in every backend's names.
fn namespace() -> String {
    format!("cf{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

/// The longest a case may run before it fails as hung.
const CASE_LIMIT: Duration = Duration::from_secs(90);

fn run_case(factory: Arc<dyn BackendFactory>, case: Case) -> Result<(), libtest_mimic::Failed> {
    let captured = capture::Captured::new();
    let on_start = captured.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(move || on_start.enter())
        .build()
        .map_err(|e| format!("cannot build a tokio runtime: {e}"))?;
    captured.enter();
    let outcome = rt.block_on(async move {
        let ns = namespace();
        let tick = factory.tick();
        let fut = async {
            let backend =
                within(Duration::from_secs(30), "connect", factory.connect(&ns)).await??;
            let cx = Ctx {
                backend,
                ns: ns.clone(),
                factory: factory.clone(),
                tick,
            };
            (case.run)(cx).await
        };
        let outcome = match tokio::time::timeout(CASE_LIMIT, fut).await {
            Ok(r) => r,
            Err(_) => Err(Failure(format!(
                "case did not finish within {CASE_LIMIT:?}"
            ))),
        };
        // The case's handles are dropped by now; remove what it left on the broker.
        match tokio::time::timeout(Duration::from_secs(30), factory.cleanup(&ns)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("cleanup of namespace {ns} failed: {e}"),
            Err(_) => eprintln!("cleanup of namespace {ns} did not finish within 30 s"),
        }
        outcome
    });
    rt.shutdown_timeout(Duration::from_secs(2));
    capture::Captured::leave();
    outcome.map_err(|f| libtest_mimic::Failed::from(format!("{}{}", f.0, captured.report())))
}

/// Run the whole suite against `factory` with libtest's command line (`--list`, filters,
/// `--exact`, `--test-threads`…). Use as the `main` of a `harness = false` test.
pub fn run<F: BackendFactory>(factory: F) -> ExitCode {
    let args = libtest_mimic::Arguments::from_args();
    let factory: Arc<dyn BackendFactory> = Arc::new(factory);
    let name = factory.name();
    let require = std::env::var("COURIER_REQUIRE_BACKENDS").as_deref() == Ok("1");
    let probe = if args.list {
        Ok(())
    } else {
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(10), factory.probe())
                    .await
                    .unwrap_or_else(|_| Err("probe timed out after 10 s".into()))
            }),
            Err(e) => Err(format!("cannot build a tokio runtime: {e}")),
        }
    };
    if let Err(reason) = &probe {
        let verdict = if require {
            "FAILING every case (COURIER_REQUIRE_BACKENDS=1)"
        } else {
            "SKIPPING every case (set COURIER_REQUIRE_BACKENDS=1 to fail instead)"
        };
        eprintln!(
            "\n==== courier conformance: backend {name:?} unavailable: {reason}\n==== {verdict}\n"
        );
    }
    let trials = cases()
        .into_iter()
        .map(|case| {
            let full = format!("{name}::{}", case.name);
            match &probe {
                Ok(()) => {
                    let f = factory.clone();
                    libtest_mimic::Trial::test(full, move || run_case(f, case))
                }
                Err(reason) if require => {
                    let reason = reason.clone();
                    libtest_mimic::Trial::test(full, move || {
                        Err(
                            format!("backend unavailable and COURIER_REQUIRE_BACKENDS=1: {reason}")
                                .into(),
                        )
                    })
                }
                Err(_) => libtest_mimic::Trial::test(full, || Ok(())).with_ignored_flag(true),
            }
        })
        .collect();
    libtest_mimic::run(&args, trials).exit_code()
}

/// The rule → cases table of `conformance/RULES.md`, generated from [`cases`].
pub fn rules_table() -> String {
    let mut by_rule: BTreeMap<usize, Vec<&'static str>> = BTreeMap::new();
    for case in cases() {
        for rule in case.rules {
            let i = RULES.iter().position(|r| r == rule).unwrap_or(usize::MAX);
            by_rule.entry(i).or_default().push(case.name);
        }
    }
    let mut out = String::from("| rule | cases |\n|---|---|\n");
    for (i, rule) in RULES.iter().enumerate() {
        let names = by_rule.get(&i).cloned().unwrap_or_default();
        let list = names
            .iter()
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join("<br>");
        out.push_str(&format!("| {rule} | {list} |\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_shaped() {
        let mut seen = std::collections::HashSet::new();
        for c in cases() {
            assert!(seen.insert(c.name), "duplicate case {}", c.name);
            assert_eq!(
                c.name.split("::").count(),
                3,
                "{} is not area::rule::case",
                c.name
            );
            for r in c.rules {
                assert!(RULES.contains(r), "{} names unknown rule {r}", c.name);
            }
        }
    }

    #[test]
    fn every_rule_has_a_case() {
        for rule in RULES {
            assert!(
                cases().iter().any(|c| c.rules.contains(rule)),
                "rule {rule} has no case"
            );
        }
    }

    /// `docs/contract.md` (the contract users read) and the registry name the same rules: each
    /// rule id has exactly one `- **<ID> Title.**` bullet there, and nothing else is a rule.
    #[test]
    fn contract_md_names_every_rule_once() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/contract.md");
        let text = std::fs::read_to_string(path).expect("docs/contract.md is readable");
        let mut found: Vec<&str> = Vec::new();
        for line in text.lines() {
            let Some(rest) = line.trim_start().strip_prefix("- **") else {
                continue;
            };
            let Some((id, _)) = rest.split_once(' ') else {
                continue;
            };
            if id.len() <= 3
                && id.starts_with(['Q', 'P', 'E', 'W'])
                && id[1..].chars().all(|c| c.is_ascii_digit())
            {
                found.push(id);
            }
        }
        for rule in RULES {
            let n = found.iter().filter(|id| *id == rule).count();
            assert_eq!(
                n, 1,
                "rule {rule} appears {n} times as a bullet in docs/contract.md"
            );
        }
        for id in &found {
            assert!(
                RULES.contains(id),
                "docs/contract.md names rule {id}, which has no cases in the registry"
            );
        }
    }

    /// RULES.md must match the registry; regenerate with
    /// `COURIER_WRITE_RULES=1 cargo test -p courier-conformance --lib`.
    #[test]
    fn rules_md_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/RULES.md");
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let table = rules_table();
        let begin = "<!-- table:begin -->\n";
        let end = "<!-- table:end -->";
        let (head, rest) = text
            .split_once(begin)
            .expect("RULES.md has a table:begin marker");
        let (_, tail) = rest
            .split_once(end)
            .expect("RULES.md has a table:end marker");
        let want = format!("{head}{begin}{table}{end}{tail}");
        if want != text {
            if std::env::var("COURIER_WRITE_RULES").as_deref() == Ok("1") {
                std::fs::write(path, want).expect("write RULES.md");
            } else {
                panic!(
                    "conformance/RULES.md is out of date: run COURIER_WRITE_RULES=1 cargo test -p courier-conformance --lib"
                );
            }
        }
    }
}
