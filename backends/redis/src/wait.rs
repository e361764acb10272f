//! Blocking waits (`BLPOP`, `XREAD BLOCK`) on dedicated connections.
//!
//! - redis-rs 1.x gives every async connection a 500 ms response timeout by default, which
//!   would break any longer wait, and a blocking command on a shared multiplexed connection
//!   would hold up every command pipelined behind it. So each wait takes a connection of its
//!   own, with no response timeout, from a small pool.
//! - Redis ends blocked commands on its own timer only at `hz` resolution (up to 100 ms late
//!   with the default `hz 10`). Waits that must end on time (a due delayed message, a lease
//!   deadline, the end of a receive) are therefore timed here: the server timeout is only a
//!   safety net, and when the local timer fires the wait is ended at once with
//!   `CLIENT UNBLOCK` from the shared connection, so the blocking connection can be reused.
//! - A wait whose future is dropped drops its connection with it (the server then ends the
//!   blocked command), so cancelling a receive never leaves a busy connection in the pool.
//! - On a cluster, a wait runs on the master of its key's slot (see [`crate::cluster`]), and
//!   idle connections are kept per node. A wait redirected with `MOVED` (its slot moved, or
//!   its node became a replica after a failover) reads the topology again and waits on the
//!   new master at once; one whose node is gone reads it again and fails as
//!   [`ErrorKind::Unavailable`], so the caller's next receive finds the new master.
//! - The pool (`waits`) logs its outages once each (see [`Health`]): a wait that cannot get a
//!   connection, or loses it, starts one; the next wait that gets an answer ends it. A pooled
//!   connection found broken and replaced at once is not an outage.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use courier_core::{Error, ErrorKind, Result};
use parking_lot::Mutex;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Cmd, Value};

use crate::cluster::Topology;
use crate::error::{Health, map_err, map_err_on, timed_out};
use crate::{BACKEND_NAME, Conn};

/// Idle blocking connections kept for reuse (per node, on a cluster).
const MAX_IDLE: usize = 32;

/// Where a cluster sent a wait that it no longer serves.
enum Redirect {
    /// `MOVED`: the slot is served by this node now.
    Moved(String, u16),
    /// `ASK`: the slot is migrating and the key is at this node; ask there once.
    Ask(String),
    /// `UNBLOCKED`: the node turned replica while the wait was blocked; read the topology.
    Unblocked,
}

/// Where waits connect: the one server, or the master of each wait key's slot.
pub(crate) enum Route {
    Node(Box<Client>),
    Cluster(Arc<Topology>),
}

/// How much longer than the local timer the server-side timeout is.
pub(crate) const SERVER_SLACK: Duration = Duration::from_secs(2);

struct Waiter {
    conn: MultiplexedConnection,
    /// `CLIENT ID` of the connection, for `CLIENT UNBLOCK`.
    id: i64,
}

pub(crate) struct Waiters {
    route: Route,
    config: AsyncConnectionConfig,
    connection_timeout: Duration,
    /// By node address (`""` for the one server).
    idle: Mutex<HashMap<String, Vec<Waiter>>>,
    /// Whether these connections can be had, for logging their outages once (pool `waits`).
    health: Health,
}

impl Waiters {
    pub(crate) fn new(route: Route, connection_timeout: Duration, health: Health) -> Self {
        Waiters {
            route,
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(connection_timeout))
                .set_response_timeout(None),
            connection_timeout,
            idle: Mutex::new(HashMap::new()),
            health,
        }
    }

    /// A new blocking connection and its `CLIENT ID`, within the connection timeout (the
    /// connection has no response timeout, so an unanswered `CLIENT ID` would hang).
    async fn connect(&self, client: &Client) -> redis::RedisResult<Waiter> {
        let connecting = async {
            let mut conn = client
                .get_multiplexed_async_connection_with_config(&self.config)
                .await?;
            let id: i64 = redis::cmd("CLIENT")
                .arg("ID")
                .query_async(&mut conn)
                .await?;
            Ok(Waiter { conn, id })
        };
        tokio::time::timeout(self.connection_timeout, connecting)
            .await
            .unwrap_or_else(|_| Err(timed_out()))
    }

    /// Run a blocking command on `key` for at most `block` (its own server-side timeout must
    /// be `block + SERVER_SLACK`). Returns its reply, or `Nil` when `block` passed. A pooled
    /// connection that turns out broken (Redis restarted) is replaced once, and the other idle
    /// ones of its node are dropped with it. On a cluster, a moved or migrating slot (`MOVED`,
    /// `UNBLOCKED`, `ASK`) is followed to its new node, three times at most (an `UNBLOCKED`
    /// read of the topology may meet a node that has not heard of the failover yet, and the
    /// old master's `MOVED` then sets it right).
    pub(crate) async fn run(
        &self,
        operation: &'static str,
        key: &str,
        cmd: &Cmd,
        block: Duration,
        mut shared: Conn,
    ) -> Result<Value> {
        // Each step reports against the state when it began: a wait that connected during an
        // outage (ending it) and then lost its connection in the next one starts that one.
        let mut start = self.health.begin();
        // After `ASK` (the slot is being migrated and the key is already at its new node):
        // that node, for this one command, announced with `ASKING`.
        let mut asking: Option<String> = None;
        for _ in 0..4 {
            let (addr, client) = match &self.route {
                Route::Node(client) => (String::new(), (**client).clone()),
                Route::Cluster(topology) if asking.is_some() => {
                    let addr = asking.clone().unwrap_or_default();
                    let client = topology.client(&addr)?;
                    (addr, client)
                }
                Route::Cluster(topology) => {
                    let owner = topology.owner(key, shared.shared()).await;
                    self.health.observe(start, operation, &owner);
                    let addr = owner.map_err(|e| map_err(operation, e))?;
                    let client = topology.client(&addr)?;
                    (addr, client)
                }
            };
            let pooled = self.idle.lock().get_mut(&addr).and_then(Vec::pop);
            let reused = pooled.is_some();
            let mut waiter = match pooled {
                Some(w) => w,
                None => {
                    let connected = self.connect(&client).await;
                    if connected.is_err()
                        && let Route::Cluster(topology) = &self.route
                    {
                        // The node may be gone: the next wait asks who serves the slot now.
                        let _ = topology.refresh(shared.shared(), false).await;
                    }
                    self.health.observe(start, operation, &connected);
                    connected.map_err(|e| map_err_on(operation, e, &addr))?
                }
            };
            start = self.health.begin();
            let id = waiter.id;
            if asking.take().is_some() {
                let asked = redis::cmd("ASKING")
                    .query_async::<Value>(&mut waiter.conn)
                    .await;
                if let Err(e) = asked {
                    self.health
                        .observe(start, operation, &Err::<(), _>(e.clone()));
                    return Err(map_err_on(operation, e, &addr));
                }
            }
            let outcome = {
                let fut = cmd.query_async::<Value>(&mut waiter.conn);
                tokio::pin!(fut);
                tokio::select! {
                    r = &mut fut => Some(r),
                    _ = tokio::time::sleep(block) => {
                        // End the wait now rather than at Redis' next timer tick.
                        let mut unblock = redis::cmd("CLIENT");
                        unblock.arg("UNBLOCK").arg(id);
                        let unblocked = shared.on_node(&addr, unblock).await;
                        match unblocked {
                            Ok(_) => tokio::time::timeout(SERVER_SLACK, fut).await.ok(),
                            // Cannot unblock (no permission?): drop the connection instead,
                            // which ends the command on the server.
                            Err(_) => None,
                        }
                    }
                }
            };
            // A slot that moved: `MOVED` names its new master; `UNBLOCKED` (Redis 7, a master
            // turned replica while the command was blocked) does not, so the topology is read
            // again; `ASK` sends this one command to the slot's next node.
            let redirect = match (&outcome, &self.route) {
                (Some(Err(e)), Route::Cluster(topology)) => match e.redirect_node() {
                    Some((to, _))
                        if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::Ask) =>
                    {
                        Some((topology.clone(), Redirect::Ask(to.to_string())))
                    }
                    Some((to, slot)) => {
                        Some((topology.clone(), Redirect::Moved(to.to_string(), slot)))
                    }
                    None if e.code() == Some("UNBLOCKED") => {
                        Some((topology.clone(), Redirect::Unblocked))
                    }
                    None => None,
                },
                _ => None,
            };
            if let Some(r) = &outcome
                && !(reused && r.as_ref().is_err_and(stale))
                && redirect.is_none()
            {
                self.health.observe(start, operation, r);
            }
            match outcome {
                Some(Ok(v)) => {
                    let mut idle = self.idle.lock();
                    let pool = idle.entry(addr).or_default();
                    if pool.len() < MAX_IDLE {
                        pool.push(waiter);
                    }
                    return Ok(v);
                }
                None => return Ok(Value::Nil),
                Some(Err(_)) if redirect.is_some() => {
                    // The slot is served elsewhere now (a failover, or resharding): the
                    // connection is fine and goes back to its node's pool; wait on the new
                    // master.
                    if let Some((topology, moved)) = redirect {
                        {
                            let mut idle = self.idle.lock();
                            let pool = idle.entry(addr).or_default();
                            if pool.len() < MAX_IDLE {
                                pool.push(waiter);
                            }
                        }
                        match moved {
                            Redirect::Moved(to, slot) => {
                                topology.moved(slot, &to, shared.shared()).await;
                            }
                            Redirect::Ask(to) => asking = Some(to),
                            Redirect::Unblocked => {
                                let _ = topology.refresh(shared.shared(), true).await;
                            }
                        }
                    }
                    start = self.health.begin();
                    continue;
                }
                Some(Err(e)) if reused && stale(&e) => {
                    // The idle connections were made to the same server, so after a restart
                    // they are all broken: drop them, and the retry connects afresh instead of
                    // failing on the next stale one.
                    self.idle.lock().remove(&addr);
                    if let Route::Cluster(topology) = &self.route {
                        let _ = topology.refresh(shared.shared(), false).await;
                    }
                    start = self.health.begin();
                    continue;
                }
                Some(Err(e)) => {
                    if stale(&e)
                        && let Route::Cluster(topology) = &self.route
                    {
                        let _ = topology.refresh(shared.shared(), false).await;
                    }
                    return Err(map_err_on(operation, e, &addr));
                }
            }
        }
        let e = Error::new(
            ErrorKind::Unavailable,
            "Redis connection lost during a wait",
        )
        .with_backend(BACKEND_NAME)
        .with_operation(operation);
        self.health.down(start, &e);
        Err(e)
    }
}

/// An error of a pooled connection that may only be stale (made before Redis restarted): the
/// wait is tried again on a new connection, and only that one's outcome counts for [`Health`].
fn stale(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_unrecoverable_error()
}
