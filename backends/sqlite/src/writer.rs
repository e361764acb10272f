//! The writer thread: one dedicated OS thread owns the read-write connection, receives jobs
//! over a channel and group-commits every job queued at that moment into one
//! `BEGIN IMMEDIATE` transaction (each job inside its own savepoint, so a failing job rolls
//! back alone). Replies are sent only after `COMMIT` succeeded, so an `Ok` publish is durable.
//!
//! Between jobs, and at least every poll interval, the thread checks `PRAGMA data_version`
//! (it changes when *another* connection committed): then it wakes every waiting receiver of
//! the process and runs the [`Relay`] hook it was started with (pub/sub's delivery of other
//! processes' messages, handed in by the builder, so the writer names nothing above it).
//!
//! Blocking SQLite calls therefore never run on the async runtime's worker threads.

use std::borrow::Cow;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use courier_core::{Error, ErrorKind, Result, SharedClock};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use rusqlite::{Connection, OpenFlags};

use crate::OpenMode;
use crate::consts::BACKEND_NAME;
use crate::error::{copy, map_err, read_only as read_only_error, writer_gone};
use crate::hub::Hub;
use crate::schema;

/// Most jobs committed together in one transaction.
const MAX_BATCH: usize = 512;

/// What a job sees: the connection inside the open transaction, plus writer-local state.
pub(crate) struct Ctx<'a> {
    /// The connection (a transaction and the job's savepoint are open).
    pub(crate) conn: &'a Connection,
    /// The database path, for error messages.
    pub(crate) path: &'a Path,
    /// "Now" of the running job, read from the backend clock by its caller.
    now: u64,
    /// Randomness for retry jitter of expired leases.
    pub(crate) rng: &'a mut SmallRng,
    /// Queue / group row ids by key; valid across transactions (rows are never deleted),
    /// cleared whenever a transaction or savepoint rolls back.
    pub(crate) qids: &'a mut HashMap<String, i64>,
    /// Row ids of the leases this writer granted, by `(qid, token)`, so that an ack deletes by
    /// primary key (the statement still checks qid, state, token, id and deadline), and whether
    /// the message has a deduplication key (an ack of one without a key need not look for
    /// it). A hint only: a miss takes the token index. Cleared with `qids` whenever a
    /// transaction or savepoint rolls back (rolled-back tokens may be granted again, to other
    /// rows).
    pub(crate) leased: &'a mut HashMap<(i64, i64), (i64, bool)>,
    /// Wake-up keys to signal once the transaction commits.
    wakes: &'a mut Vec<String>,
    /// Last time this writer pruned old pub/sub relay rows.
    pub(crate) last_prune: &'a mut Option<Instant>,
}

impl Ctx<'_> {
    /// Milliseconds since the epoch from the backend clock, read when the job was submitted
    /// (on the caller's thread, so a clock that follows tokio's virtual time reads correctly).
    pub(crate) fn now(&self) -> u64 {
        self.now
    }

    /// Wake the receivers waiting on `key` after commit.
    pub(crate) fn wake(&mut self, key: String) {
        if !self.wakes.contains(&key) {
            self.wakes.push(key);
        }
    }

    /// Forget the caches that a rollback may have made stale.
    fn forget(&mut self) {
        self.qids.clear();
        self.leased.clear();
    }

    /// Map a SQLite error of this job.
    pub(crate) fn err(&self, operation: &'static str) -> impl Fn(rusqlite::Error) -> Error + '_ {
        move |e| map_err(operation, self.path, e)
    }
}

/// A job's result, waiting for the transaction's outcome.
struct Finish {
    ok: bool,
    done: Done,
}

/// Delivers a job's result once the commit's outcome (`None`: committed) is known.
type Done = Box<dyn FnOnce(Option<&Error>) + Send>;

/// A unit of work for the writer thread.
trait JobFn: Send {
    fn run(self: Box<Self>, ctx: &mut Ctx<'_>) -> Finish;
    fn abort(self: Box<Self>, err: Error);
}

struct Typed<T, F, D> {
    operation: &'static str,
    now: u64,
    f: F,
    done: D,
    _t: PhantomData<fn() -> T>,
}

impl<T, F, D> JobFn for Typed<T, F, D>
where
    T: Send + 'static,
    F: FnOnce(&mut Ctx<'_>) -> Result<T> + Send + 'static,
    D: FnOnce(Result<T>) + Send + 'static,
{
    fn run(self: Box<Self>, ctx: &mut Ctx<'_>) -> Finish {
        let Typed {
            operation,
            now,
            f,
            done,
            ..
        } = *self;
        ctx.now = now;
        let r = match catch_unwind(AssertUnwindSafe(|| f(ctx))) {
            Ok(r) => r,
            Err(_) => Err(Error::new(
                ErrorKind::Backend,
                "internal error: a SQLite job panicked (rolled back)",
            )
            .with_backend(BACKEND_NAME)
            .with_operation(operation)),
        };
        Finish {
            ok: r.is_ok(),
            done: Box::new(move |commit_err| {
                let r = match (r, commit_err) {
                    (Ok(_), Some(e)) => Err(copy(e, operation)),
                    (r, _) => r,
                };
                done(r);
            }),
        }
    }

    fn abort(self: Box<Self>, err: Error) {
        (self.done)(Err(err));
    }
}

type Job = Box<dyn JobFn>;

/// The handle to the writer thread (cheap to clone).
#[derive(Clone)]
pub(crate) struct Writer {
    tx: mpsc::Sender<Job>,
    clock: SharedClock,
    /// Answers are awaited through a blocking thread (see [`Gate`]).
    virtual_time: bool,
}

/// Under tokio's paused (virtual) time, the runtime advances the clock whenever it has
/// nothing to do, which would include the moments spent waiting for the writer thread. Waiting
/// for the writer's signal on a `spawn_blocking` thread tells tokio that work is in progress,
/// so virtual time stands still while SQLite works.
pub(crate) struct Gate(Option<mpsc::Receiver<()>>);

impl Gate {
    /// Wait for the writer's signal (virtual time only; returns at once otherwise).
    pub(crate) async fn wait(self) {
        if let Some(rx) = self.0 {
            let _ = tokio::task::spawn_blocking(move || rx.recv()).await;
        }
    }
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").finish_non_exhaustive()
    }
}

impl Writer {
    /// Queue `f`; `done` gets its result once the transaction committed (or failed), on the
    /// writer thread. Never blocks.
    pub(crate) fn submit<T, F, D>(&self, operation: &'static str, f: F, done: D)
    where
        T: Send + 'static,
        F: FnOnce(&mut Ctx<'_>) -> Result<T> + Send + 'static,
        D: FnOnce(Result<T>) + Send + 'static,
    {
        let job: Job = Box::new(Typed {
            operation,
            now: self.clock.now_ms(),
            f,
            done,
            _t: PhantomData,
        });
        if let Err(mpsc::SendError(job)) = self.tx.send(job) {
            job.abort(writer_gone(operation));
        }
    }

    /// A signal for the job's `done` closure to give after answering, and the gate that waits
    /// for it (both inert unless the backend runs on virtual time).
    pub(crate) fn gate(&self) -> (Option<mpsc::Sender<()>>, Gate) {
        if self.virtual_time {
            let (tx, rx) = mpsc::channel();
            (Some(tx), Gate(Some(rx)))
        } else {
            (None, Gate(None))
        }
    }

    /// Run `f` in the next group commit and wait for its committed result.
    ///
    /// # Cancel safety
    /// Dropping the future does not cancel the job: it runs and commits all the same.
    pub(crate) async fn call<T, F>(&self, operation: &'static str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Ctx<'_>) -> Result<T> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (signal, gate) = self.gate();
        self.submit(operation, f, move |r| {
            let _ = tx.send(r);
            drop(signal);
        });
        gate.wait().await;
        rx.await.map_err(|_| writer_gone(operation))?
    }

    /// Queue `f` without waiting; a failure is logged.
    pub(crate) fn fire<F>(&self, operation: &'static str, f: F)
    where
        F: FnOnce(&mut Ctx<'_>) -> Result<()> + Send + 'static,
    {
        self.submit(operation, f, move |r| {
            if let Err(e) = r {
                tracing::warn!(error = %format_args!("{e:#}"), "courier sqlite: background {operation} failed");
            }
        });
    }
}

/// Where the database lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// A file (created when missing; its directory must exist).
    File(PathBuf),
    /// A private in-memory database.
    Memory,
}

/// Settings of the writer thread.
pub(crate) struct Settings {
    pub(crate) target: Target,
    pub(crate) path: PathBuf,
    pub(crate) clock: SharedClock,
    pub(crate) busy_timeout: Duration,
    pub(crate) mode: OpenMode,
    pub(crate) allow_foreign_database: bool,
    pub(crate) poll_interval: Duration,
    pub(crate) hub: Arc<Hub>,
    /// Run whenever another connection committed.
    pub(crate) relay: Relay,
    pub(crate) virtual_time: bool,
}

/// What the writer thread runs, on its connection, whenever another connection committed:
/// the layer above delivers other processes' pub/sub messages to the hub's subscriptions.
pub(crate) type Relay = fn(&Connection, &Hub, &Path);

/// How [`open`] opens the connection.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OpenOptions {
    pub(crate) mode: OpenMode,
    pub(crate) busy_timeout: Duration,
    pub(crate) allow_foreign_database: bool,
}

/// The name to hand SQLite for `p`. This build of SQLite takes a name that starts with
/// `file:` as a URI with parameters of its own (`?mode=memory`, `?vfs=…`), so a relative
/// path that starts so is made `./file:…`: a file name is always just a file name.
pub(crate) fn sqlite_path(p: &Path) -> Cow<'_, Path> {
    if p.is_relative() && p.as_os_str().as_encoded_bytes().starts_with(b"file:") {
        Cow::Owned(Path::new(".").join(p))
    } else {
        Cow::Borrowed(p)
    }
}

/// The `-wal` and `-shm` files of a database file that did not exist before an open, so
/// that a failed open (or a read-only handle, which SQLite leaves them behind for) can take
/// away what it created, and nothing else.
pub(crate) struct Companions {
    file: PathBuf,
    absent: Vec<PathBuf>,
}

impl Companions {
    /// Note which companions of `target`'s file do not exist yet (`None`: in memory).
    pub(crate) fn before(target: &Target) -> Option<Companions> {
        let Target::File(file) = target else {
            return None;
        };
        let absent = ["-wal", "-shm"]
            .into_iter()
            .map(|suffix| {
                let mut name = file.as_os_str().to_owned();
                name.push(suffix);
                PathBuf::from(name)
            })
            .filter(|c| std::fs::symlink_metadata(c).is_err())
            .collect();
        Some(Companions {
            file: file.clone(),
            absent,
        })
    }

    /// Remove the companions that appeared since [`Companions::before`], if no other
    /// connection uses them. Call once this process's connections to the file are closed.
    ///
    /// Only SQLite can tell whether another connection (of any process) has the database
    /// open, so this asks it: a read-write connection that closes as the last one on a WAL
    /// database checkpoints and deletes `-wal` and `-shm`, and leaves them while another
    /// connection is open. The probe opens the existing file without creating anything and
    /// reads the schema; a file it may not write keeps its companions (logged).
    pub(crate) fn clean_up(&self) {
        let created: Vec<&PathBuf> = self.absent.iter().filter(|c| c.exists()).collect();
        if created.is_empty() {
            return;
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        match Connection::open_with_flags(sqlite_path(&self.file), flags) {
            Ok(probe) if !probe.is_readonly("main").unwrap_or(true) => {
                let _ = probe.busy_timeout(Duration::from_millis(100));
                let _ = probe.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()));
                drop(probe);
            }
            Ok(_) | Err(_) => {}
        }
        let left: Vec<String> = created
            .iter()
            .filter(|c| c.exists())
            .map(|c| c.display().to_string())
            .collect();
        if !left.is_empty() {
            tracing::debug!(
                path = %self.file.display(),
                ?left,
                "courier sqlite: -wal/-shm left in place (another connection uses them, or no write access)"
            );
        }
    }
}

/// Open the connection: WAL, `synchronous=NORMAL`, busy timeout, migrations (read-only:
/// no journal change and no migration, the schema must be current). A failed open removes
/// the `-wal` and `-shm` files it created (see [`Companions::clean_up`]); the database file
/// itself is kept even if this open created it, as another process may be creating it at
/// the same moment (an empty file is a new database to the next open).
pub(crate) fn open(target: &Target, path: &Path, opts: OpenOptions) -> Result<Connection> {
    let companions = Companions::before(target);
    let opened = open_connection(target, path, opts);
    if opened.is_err()
        && let Some(c) = companions
    {
        c.clean_up();
    }
    opened
}

fn open_connection(target: &Target, path: &Path, opts: OpenOptions) -> Result<Connection> {
    let me = |e| map_err("open", path, e);
    let read_only = opts.mode == OpenMode::ReadOnly;
    if let Target::File(p) = target
        && opts.mode != OpenMode::ReadWriteCreate
        && let Err(e) = std::fs::metadata(p)
        && e.kind() == std::io::ErrorKind::NotFound
    {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!(
                "SQLite database {} does not exist (mode={} opens an existing file only; \
                 mode=rwc creates it)",
                path.display(),
                opts.mode.as_str()
            ),
        )
        .with_backend(BACKEND_NAME)
        .with_operation("open"));
    }
    let access = match opts.mode {
        OpenMode::ReadOnly => OpenFlags::SQLITE_OPEN_READ_ONLY,
        OpenMode::ReadWrite => OpenFlags::SQLITE_OPEN_READ_WRITE,
        OpenMode::ReadWriteCreate => {
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE
        }
    };
    let mut conn = match target {
        Target::File(p) => {
            Connection::open_with_flags(sqlite_path(p), access | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        }
        Target::Memory => Connection::open_in_memory_with_flags(
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        ),
    }
    .map_err(me)?;
    conn.busy_timeout(opts.busy_timeout).map_err(me)?;
    // SQLite decides at open whether it could get write access (a file it may not write is
    // opened read-only): refuse before the first read, which would create `-wal` and `-shm`.
    if !read_only && conn.is_readonly("main").map_err(me)? {
        return Err(read_only_error(path));
    }
    if read_only {
        schema::check_current(&conn, path, opts.allow_foreign_database)?;
    } else {
        // Nothing in the file changes before it is known to be Courier's (or shared on
        // purpose): the WAL switch below is persistent, and the file's application would
        // find it changed.
        let found = schema::inspect(&conn, path)?;
        schema::admit(&found, path, opts.allow_foreign_database)?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(me)?;
        if matches!(target, Target::File(_)) && !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %path.display(), mode, "courier sqlite: WAL mode unavailable");
        }
    }
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(me)?;
    // Savepoint (statement) journals stay in memory: each job of a group commit runs in its
    // own savepoint, and a spilled journal would cost a file write per touched page.
    conn.pragma_update(None, "temp_store", "MEMORY")
        .map_err(me)?;
    // Auto-checkpoint at the default 1000 pages; truncate the WAL back to 16 MiB afterwards
    // so a burst does not leave a huge file behind.
    conn.pragma_update(None, "journal_size_limit", 16 * 1024 * 1024)
        .map_err(me)?;
    conn.pragma_update(None, "cache_size", -16_000)
        .map_err(me)?;
    // Plans never depend on bound values: otherwise a `LIMIT ?` re-prepares its cached
    // statement on every execution.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )
    .map_err(me)?;
    conn.set_prepared_statement_cache_capacity(128);
    // The checkpointer thread copies the WAL back into the database in the background, so
    // that the writer's commits only append to the WAL; this connection checkpoints by itself
    // only if the WAL grows past this many pages anyway (a stalled checkpointer, or another
    // process's reader keeping it from finishing).
    conn.pragma_update(None, "wal_autocheckpoint", AUTOCHECKPOINT_PAGES)
        .map_err(me)?;
    if !read_only {
        schema::migrate(&mut conn, path, opts.allow_foreign_database)?;
    }
    Ok(conn)
}

/// WAL pages after which the writer connection checkpoints by itself (normally the
/// checkpointer thread keeps the WAL far below this).
const AUTOCHECKPOINT_PAGES: i64 = 4000;

/// How often the checkpointer looks at the WAL while it is being written.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(20);

/// Start the checkpointer thread of a database file: every [`CHECKPOINT_INTERVAL`] it runs a
/// `PASSIVE` checkpoint on a connection of its own. A passive checkpoint never blocks the
/// writer (WAL appends go on while pages are copied and the file is synced), so the writer
/// thread no longer pays the copy and the `fsync` of SQLite's automatic checkpoints inside its
/// commits. Durability is unchanged: a commit is durable once it is in the WAL, as before.
///
/// The thread stops when the returned sender is dropped. `None` if it cannot start (then the
/// writer's own automatic checkpoints still bound the WAL).
fn checkpointer(file: PathBuf) -> Option<mpsc::Sender<()>> {
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let path = file.clone();
    let spawned = std::thread::Builder::new()
        .name("courier-sqlite-checkpoint".into())
        .spawn(move || {
            let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
            let conn = match Connection::open_with_flags(sqlite_path(&path), flags).and_then(|c| {
                c.pragma_update(None, "journal_size_limit", 16 * 1024 * 1024)?;
                Ok(c)
            }) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %format_args!("{e:#}"), "courier sqlite: checkpointer not started; the writer checkpoints by itself");
                    return;
                }
            };
            let mut stmt = match conn.prepare("PRAGMA wal_checkpoint(PASSIVE)") {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %format_args!("{e:#}"), "courier sqlite: checkpointer not started; the writer checkpoints by itself");
                    return;
                }
            };
            while let Err(RecvTimeoutError::Timeout) = stop_rx.recv_timeout(CHECKPOINT_INTERVAL) {
                if let Err(e) = stmt.query_row([], |_| Ok(())) {
                    tracing::debug!(path = %path.display(), error = %format_args!("{e:#}"), "courier sqlite: background checkpoint failed");
                }
            }
        });
    match spawned {
        Ok(_) => Some(stop_tx),
        Err(e) => {
            tracing::warn!(path = %file.display(), error = %format_args!("{e:#}"), "courier sqlite: checkpointer not started; the writer checkpoints by itself");
            None
        }
    }
}

/// Start the writer thread; resolves once the database is open and migrated.
pub(crate) async fn start(settings: Settings) -> Result<Writer> {
    let virtual_time = settings.virtual_time;
    let clock = settings.clock.clone();
    let (tx, rx) = mpsc::channel::<Job>();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Result<()>>();
    std::thread::Builder::new()
        .name("courier-sqlite-writer".into())
        .spawn(move || {
            let options = OpenOptions {
                mode: settings.mode,
                busy_timeout: settings.busy_timeout,
                allow_foreign_database: settings.allow_foreign_database,
            };
            // SQLite leaves the -wal and -shm a read-only connection created behind when it
            // closes: a read-only handle takes them away when it stops.
            let read_only_companions = match settings.mode {
                OpenMode::ReadOnly => Companions::before(&settings.target),
                _ => None,
            };
            let conn = match open(&settings.target, &settings.path, options) {
                Ok(c) => c,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            // Dropped when this thread ends, which stops the checkpointer.
            // A read-only handle writes nothing, checkpoints included.
            let _checkpoints = match &settings.target {
                Target::File(p) if settings.mode != OpenMode::ReadOnly => checkpointer(p.clone()),
                _ => None,
            };
            run(conn, rx, settings);
            if let Some(c) = read_only_companions {
                c.clean_up();
            }
        })
        .map_err(|e| {
            Error::new(ErrorKind::Backend, "cannot start the SQLite writer thread")
                .with_backend(BACKEND_NAME)
                .with_operation("open")
                .with_source(e)
        })?;
    ready_rx.await.map_err(|_| writer_gone("open"))??;
    Ok(Writer {
        tx,
        clock,
        virtual_time,
    })
}

fn data_version(conn: &Connection) -> Option<i64> {
    conn.pragma_query_value(None, "data_version", |r| r.get(0))
        .ok()
}

/// The writer loop: group-commit jobs, poll for other connections' commits.
fn run(conn: Connection, rx: mpsc::Receiver<Job>, s: Settings) {
    let mut rng = SmallRng::from_rng(&mut rand::rng());
    let mut qids = HashMap::new();
    let mut leased = HashMap::new();
    let mut last_prune = None;
    let mut version = data_version(&conn);
    let mut last_poll = Instant::now();
    loop {
        let timeout = s.poll_interval.saturating_sub(last_poll.elapsed());
        match rx.recv_timeout(timeout) {
            Ok(first) => {
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(j) => batch.push(j),
                        Err(_) => break,
                    }
                }
                let mut wakes = Vec::new();
                let mut ctx = Ctx {
                    conn: &conn,
                    path: &s.path,
                    now: 0,
                    rng: &mut rng,
                    qids: &mut qids,
                    leased: &mut leased,
                    wakes: &mut wakes,
                    last_prune: &mut last_prune,
                };
                run_batch(&mut ctx, batch);
                for key in wakes {
                    s.hub.wake(&key);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if last_poll.elapsed() >= s.poll_interval {
            last_poll = Instant::now();
            let v = data_version(&conn);
            if v != version {
                version = v;
                s.hub.external_change();
                (s.relay)(&conn, &s.hub, &s.path);
            }
        }
    }
    tracing::debug!(path = %s.path.display(), "courier sqlite: writer thread stopped");
}

fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([])?;
    Ok(())
}

/// One group commit.
fn run_batch(ctx: &mut Ctx<'_>, batch: Vec<Job>) {
    if let Err(e) = exec(ctx.conn, "BEGIN IMMEDIATE") {
        let err = map_err("transaction", ctx.path, e);
        for job in batch {
            job.abort(copy(&err, "transaction"));
        }
        return;
    }
    let mut finished = Vec::with_capacity(batch.len());
    let alone = batch.len() == 1;
    for job in batch {
        if alone {
            // Alone in its transaction: no savepoint needed, a failure rolls back everything.
            let fin = job.run(ctx);
            if !fin.ok {
                ctx.wakes.clear();
                ctx.forget();
                if let Err(e) = exec(ctx.conn, "ROLLBACK") {
                    tracing::warn!(error = %format_args!("{e:#}"), "courier sqlite: rollback failed");
                }
                (fin.done)(None);
                return;
            }
            finished.push(fin);
            continue;
        }
        let wakes_before = ctx.wakes.len();
        if let Err(e) = exec(ctx.conn, "SAVEPOINT courier_job") {
            job.abort(map_err("transaction", ctx.path, e));
            continue;
        }
        let fin = job.run(ctx);
        let closed = if fin.ok {
            exec(ctx.conn, "RELEASE courier_job")
        } else {
            ctx.wakes.truncate(wakes_before);
            ctx.forget();
            exec(ctx.conn, "ROLLBACK TO courier_job")
                .and_then(|()| exec(ctx.conn, "RELEASE courier_job"))
        };
        if let Err(e) = closed {
            tracing::warn!(error = %format_args!("{e:#}"), "courier sqlite: closing a savepoint failed");
        }
        finished.push(fin);
    }
    let commit = exec(ctx.conn, "COMMIT").map_err(|e| map_err("commit", ctx.path, e));
    if commit.is_err() {
        if let Err(e) = exec(ctx.conn, "ROLLBACK") {
            tracing::warn!(error = %format_args!("{e:#}"), "courier sqlite: rollback after a failed commit failed");
        }
        ctx.forget();
        ctx.wakes.clear();
    }
    let err = commit.err();
    for fin in finished {
        (fin.done)(err.as_ref());
    }
}
