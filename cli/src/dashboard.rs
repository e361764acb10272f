//! `courier dashboard`: a web UI served by the binary itself.
//!
//! One page (HTML, CSS and vanilla JavaScript embedded with `include_str!`; no build step) over
//! a small JSON API, polled about once a second:
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/` | the page (with this process's CSRF token in a `<meta>`) |
//! | GET | `/app.js`, `/app.css` | its script and style |
//! | GET | `/api/overview` | backend, redacted URL, every queue's stats, every group's lag |
//! | GET | `/api/queues/{queue}/dead?offset=&limit=` | a page of dead letters (no payloads) |
//! | GET | `/api/queues/{queue}/dead/{id}` | one dead letter with its payload |
//! | POST | `/api/queues/{queue}/dead/requeue` | `{"all":true}` or `{"ids":[…]}` |
//! | POST | `/api/queues/{queue}/dead/purge` | the same |
//! | | `/api/groups/{topic}/{group}/dead…` | the same four for an event group's dead letters |
//!
//! Which queues and groups: the ones named with `--queue` and `--group TOPIC/GROUP` when any
//! are, else every one the backend lists ([`courier::Queue::list_queues`],
//! [`courier::EventBus::list_topics`], [`courier::EventBus::list_groups`]; contract rules
//! Q13 and E7, on every backend). A backend that answers `Unsupported` (one written outside
//! this repository) shows what is named, and the page says so.
//!
//! Security:
//! - It listens on loopback by default. Any other address needs a token (`--token` or
//!   `COURIER_DASHBOARD_TOKEN`); without one the command refuses to start (exit 2).
//! - With a token, every request (page, assets, API) needs `Authorization: Bearer TOKEN` or
//!   the session cookie that opening `/?token=TOKEN` once sets (HttpOnly, SameSite=Strict;
//!   the URL is redirected to `/` at once so the token does not stay in the address bar).
//!   Anything else gets 401. Tokens are compared in constant time.
//! - Without a token (loopback only), a request whose `Host` is not a loopback name is refused
//!   (403): a web page cannot reach the dashboard through a DNS name rebound to 127.0.0.1.
//! - Mutations are POST only and need the page's per-process CSRF token in the
//!   `X-Courier-Csrf` header (else 403); a POST whose `Origin` does not match its `Host` is
//!   refused too.
//! - The page shows the backend's name and its URL with any password replaced
//!   ([`courier::redact_url`]); errors are the CLI's one-line errors, which never contain one.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use courier::{Courier, DeadLetter, Error, ErrorKind, MessageId, Page, Selection};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{Cli, Done, dead_json, now_ms, one_line, parse_id, resolve_url, stats_json};

/// The environment variable read for the token when `--token` is not given.
pub const TOKEN_ENV: &str = "COURIER_DASHBOARD_TOKEN";

/// The header a POST must carry the page's CSRF token in.
pub const CSRF_HEADER: &str = "x-courier-csrf";

/// How long one request may wait for the backend before it is answered 504.
const REQUEST_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The session cookie set after `/?token=…`.
const COOKIE: &str = "courier_dashboard";

const INDEX_HTML: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const APP_CSS: &str = include_str!("dashboard/app.css");

/// `courier dashboard`'s flags.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on (port 0 picks one; the bound address is printed). Anything but
    /// loopback needs a token.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Require this token on every request (else `COURIER_DASHBOARD_TOKEN`, which keeps it out
    /// of `ps`): `Authorization: Bearer TOKEN`, or open `/?token=TOKEN` once in a browser.
    #[arg(long)]
    pub token: Option<String>,
    /// A queue to show (repeatable). Default: every queue the backend lists.
    #[arg(long = "queue", value_name = "QUEUE")]
    pub queues: Vec<String>,
    /// An event group to show, `TOPIC/GROUP` (repeatable). Default: every group the backend
    /// lists.
    #[arg(long = "group", value_name = "TOPIC/GROUP")]
    pub groups: Vec<String>,
}

/// The checked flags.
#[derive(Debug)]
struct Options {
    listen: SocketAddr,
    token: Option<String>,
    queues: Vec<String>,
    groups: Vec<(String, String)>,
}

/// Check the flags before connecting: the address resolves, a non-loopback address has a
/// token, the names are valid.
///
/// # Errors
/// `InvalidInput`, saying what to change.
pub fn preflight(args: &Args) -> courier::Result<()> {
    options(args).map(|_| ())
}

fn options(args: &Args) -> courier::Result<Options> {
    let token = args
        .token
        .clone()
        .or_else(|| std::env::var(TOKEN_ENV).ok())
        .filter(|t| !t.is_empty());
    let addrs: Vec<SocketAddr> = args
        .listen
        .to_socket_addrs()
        .map_err(|e| Error::invalid(format!("--listen {:?}: {e}", args.listen)))?
        .collect();
    let Some(&listen) = addrs.first() else {
        return Err(Error::invalid(format!(
            "--listen {:?} resolves to no address",
            args.listen
        )));
    };
    let loopback = addrs.iter().all(|a| a.ip().is_loopback());
    if !loopback && token.is_none() {
        return Err(Error::invalid(format!(
            "refusing to serve the dashboard on {} without a token: pass --token or set \
             {TOKEN_ENV} (only a loopback address may go without)",
            args.listen
        )));
    }
    for q in &args.queues {
        courier::validate_name("queue", q)?;
    }
    let mut groups = Vec::with_capacity(args.groups.len());
    for g in &args.groups {
        let Some((topic, group)) = g.split_once('/') else {
            return Err(Error::invalid(format!(
                "--group {g:?}: write it TOPIC/GROUP"
            )));
        };
        courier::validate_name("topic", topic)?;
        courier::validate_name("group", group)?;
        groups.push((topic.to_string(), group.to_string()));
    }
    Ok(Options {
        listen,
        token,
        queues: args.queues.clone(),
        groups,
    })
}

/// What every handler shares.
struct App {
    courier: Courier,
    backend: &'static str,
    /// The URL with its password replaced; empty when there is none (in-process use).
    url: String,
    token: Option<String>,
    /// The session cookie's value once the token was shown (random, this process only).
    session: String,
    /// The page's CSRF token (random, this process only).
    csrf: String,
    queues: Vec<String>,
    groups: Vec<(String, String)>,
}

/// Serve the dashboard until Ctrl-C. Prints `listening on http://ADDR` on stdout once bound.
///
/// # Errors
/// Bad flags (see [`preflight`]) or an address that cannot be bound.
pub async fn run(courier: &Courier, cli: &Cli, args: &Args) -> courier::Result<Done> {
    let opts = options(args)?;
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|e| Error::invalid(format!("cannot listen on {}: {e}", opts.listen)))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::invalid(format!("cannot read the bound address: {e}")))?;
    let app = Arc::new(App {
        courier: courier.clone(),
        backend: courier.backend_name(),
        url: resolve_url(cli)
            .map(|u| courier::redact_url(&u))
            .unwrap_or_default(),
        token: opts.token,
        session: random_hex(),
        csrf: random_hex(),
        queues: opts.queues,
        groups: opts.groups,
    });
    let auth = if app.token.is_some() {
        " (token required)"
    } else {
        ""
    };
    println!("listening on http://{local}{auth}");
    let _ = std::io::stdout().flush();
    let router = router(app);
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| {
            Error::new(
                ErrorKind::Unavailable,
                format!("the dashboard stopped: {e}"),
            )
        })?;
    Ok(Done::Ok)
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(index))
        .route(
            "/app.js",
            get(|| asset("text/javascript; charset=utf-8", APP_JS)),
        )
        .route(
            "/app.css",
            get(|| asset("text/css; charset=utf-8", APP_CSS)),
        )
        .route("/api/overview", get(overview))
        .route("/api/queues/{queue}/dead", get(dead_list))
        .route("/api/queues/{queue}/dead/{id}", get(dead_one))
        .route("/api/queues/{queue}/dead/requeue", post(requeue))
        .route("/api/queues/{queue}/dead/purge", post(purge))
        .route("/api/groups/{topic}/{group}/dead", get(dead_list))
        .route("/api/groups/{topic}/{group}/dead/{id}", get(dead_one))
        .route("/api/groups/{topic}/{group}/dead/requeue", post(requeue))
        .route("/api/groups/{topic}/{group}/dead/purge", post(purge))
        .route("/api/queues/{queue}/pause", post(pause))
        .route("/api/queues/{queue}/resume", post(resume))
        .route("/api/groups/{topic}/{group}/pause", post(pause))
        .route("/api/groups/{topic}/{group}/resume", post(resume))
        .fallback(|| async { api_error(StatusCode::NOT_FOUND, "no such page") })
        .layer(from_fn_with_state(app.clone(), guard))
        .with_state(app)
}

// --- security ----------------------------------------------------------------------------------

/// Authentication, the loopback host check and CSRF, in front of every route.
async fn guard(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let headers = req.headers();
    let mut resp = match &app.token {
        None if !host_is_loopback(headers) => plain(
            StatusCode::FORBIDDEN,
            "forbidden: this dashboard answers only to a loopback host name \
             (localhost, 127.0.0.1, [::1])",
        ),
        Some(token) => {
            let authorized = bearer(headers).is_some_and(|b| ct_eq(b, token))
                || cookie(headers, COOKIE).is_some_and(|c| ct_eq(c, &app.session));
            let shown = (req.method() == Method::GET && req.uri().path() == "/")
                .then(|| query_param(req.uri().query(), "token"))
                .flatten()
                .is_some_and(|t| ct_eq(&t, token));
            if shown {
                // Set the session and drop the token from the address bar.
                let mut r = StatusCode::SEE_OTHER.into_response();
                let h = r.headers_mut();
                h.insert(header::LOCATION, HeaderValue::from_static("/"));
                let c = format!(
                    "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict",
                    app.session
                );
                if let Ok(v) = HeaderValue::from_str(&c) {
                    h.insert(header::SET_COOKIE, v);
                }
                r
            } else if !authorized {
                let mut r = plain(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized: send Authorization: Bearer TOKEN, or open /?token=TOKEN once",
                );
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"courier\""),
                );
                r
            } else {
                csrf_then(&app, req, next).await
            }
        }
        None => csrf_then(&app, req, next).await,
    };
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'none'",
        ),
    );
    resp
}

/// A POST needs the CSRF header and, when the browser sends an `Origin`, a same-origin one.
async fn csrf_then(app: &App, req: Request, next: Next) -> Response {
    if req.method() == Method::POST {
        let headers = req.headers();
        let token_ok = headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| ct_eq(v, &app.csrf));
        if !token_ok {
            return api_error(
                StatusCode::FORBIDDEN,
                "forbidden: a change needs the page's CSRF token in X-Courier-Csrf",
            );
        }
        if !same_origin(headers) {
            return api_error(
                StatusCode::FORBIDDEN,
                "forbidden: the request's Origin is not this dashboard",
            );
        }
    }
    match tokio::time::timeout(REQUEST_LIMIT, next.run(req)).await {
        Ok(r) => r,
        Err(_) => api_error(
            StatusCode::GATEWAY_TIMEOUT,
            &format!(
                "the backend gave no answer within {} s (a requeue or purge may or may not \
                 have been applied; the next refresh shows which)",
                REQUEST_LIMIT.as_secs()
            ),
        ),
    }
}

/// Equal, in time that depends only on the lengths.
fn ct_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut diff = (a.len() ^ b.len()) as u8 | u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

fn random_hex() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = header_str(headers, header::AUTHORIZATION)?;
    let (scheme, rest) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// `name`'s value in a query string, percent-decoded.
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| percent_decode(v))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(x)) => {
                out.push(x);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The host part of a `Host` (or an origin's authority), without the port, lower case.
fn host_part(authority: &str) -> String {
    let a = authority.trim();
    let host = if let Some(rest) = a.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        a.rsplit_once(':').map_or(a, |(h, _)| h)
    };
    host.to_ascii_lowercase()
}

fn host_is_loopback(headers: &HeaderMap) -> bool {
    let Some(host) = header_str(headers, header::HOST) else {
        return false;
    };
    let h = host_part(host);
    h == "localhost"
        || h.ends_with(".localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// No `Origin`, or one whose authority is the `Host`.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = header_str(headers, header::ORIGIN) else {
        return true;
    };
    let Some(host) = header_str(headers, header::HOST) else {
        return false;
    };
    origin
        .split_once("://")
        .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host))
}

// --- responses ---------------------------------------------------------------------------------

fn plain(status: StatusCode, text: &'static str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{text}\n"),
    )
        .into_response()
}

fn api_error(status: StatusCode, text: &str) -> Response {
    (status, Json(json!({ "error": text }))).into_response()
}

/// A backend error as JSON, one line, no password (the CLI's [`one_line`]).
fn backend_error(e: &Error) -> Response {
    let status = match e.kind() {
        ErrorKind::InvalidInput => StatusCode::BAD_REQUEST,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Unsupported => StatusCode::NOT_IMPLEMENTED,
        _ => StatusCode::BAD_GATEWAY,
    };
    api_error(status, &one_line(e))
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn index(State(app): State<Arc<App>>) -> Response {
    let page = INDEX_HTML.replace("{{CSRF}}", &app.csrf);
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response()
}

// --- the API -----------------------------------------------------------------------------------

/// Where the shown names came from.
fn source(named: bool, listed: &courier::Result<Vec<String>>) -> &'static str {
    match (named, listed) {
        (true, _) => "named",
        (false, Ok(_)) => "listed",
        (false, Err(e)) if e.kind() == ErrorKind::Unsupported => "unsupported",
        (false, Err(_)) => "error",
    }
}

async fn overview(State(app): State<Arc<App>>) -> Response {
    match overview_json(&app).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => backend_error(&e),
    }
}

async fn overview_json(app: &App) -> courier::Result<Value> {
    let c = &app.courier;
    // Queues: the named ones, else the listed ones.
    let (queues, queues_from, queues_note) = if app.queues.is_empty() {
        let listed = c.queue().list_queues().await;
        let from = source(false, &listed);
        match listed {
            Ok(mut qs) => {
                qs.sort();
                (qs, from, String::new())
            }
            Err(e) if e.kind() == ErrorKind::Unsupported => (
                Vec::new(),
                from,
                format!(
                    "this {} backend cannot list its queues yet: name them with --queue",
                    app.backend
                ),
            ),
            Err(e) => return Err(e),
        }
    } else {
        (app.queues.clone(), "named", String::new())
    };
    let mut qv = Vec::with_capacity(queues.len());
    for q in &queues {
        qv.push(stats_json(q, &c.queue().stats(q).await?));
    }
    // Groups: the named ones, else every group of every listed topic.
    let (groups, groups_from, groups_note) = if app.groups.is_empty() {
        let topics = c.events().list_topics().await;
        let from = source(false, &topics);
        match topics {
            Ok(mut ts) => {
                ts.sort();
                let mut gs = Vec::new();
                for t in ts {
                    let mut names = c.events().list_groups(&t).await?;
                    names.sort();
                    gs.extend(names.into_iter().map(|g| (t.clone(), g)));
                }
                (gs, from, String::new())
            }
            Err(e) if e.kind() == ErrorKind::Unsupported => (
                Vec::new(),
                from,
                format!(
                    "this {} backend cannot list its event groups yet: name them with \
                     --group TOPIC/GROUP",
                    app.backend
                ),
            ),
            Err(e) => return Err(e),
        }
    } else {
        (app.groups.clone(), "named", String::new())
    };
    let mut gv = Vec::with_capacity(groups.len());
    for (topic, group) in &groups {
        let retained = c.events().topic_len(topic).await?;
        let s = c.events().group_stats(topic, group).await?;
        gv.push(json!({
            "topic": topic, "group": group, "retained": retained, "lag": s.lag,
            "ready": s.queue.ready_total(), "delayed": s.queue.delayed,
            "in_flight": s.queue.in_flight, "dead": s.queue.dead, "acked": s.queue.acked,
            "retried": s.queue.retried, "dead_lettered": s.queue.dead_lettered,
            "expired": s.queue.expired, "paused": s.queue.paused,
        }));
    }
    Ok(json!({
        "backend": app.backend,
        "url": app.url,
        "at_ms": now_ms(),
        "queues": qv,
        "queues_from": queues_from,
        "queues_note": queues_note,
        "groups": gv,
        "groups_from": groups_from,
        "groups_note": groups_note,
    }))
}

#[derive(Debug, Deserialize)]
struct PageQuery {
    #[serde(default)]
    offset: usize,
    #[serde(default = "default_limit")]
    limit: usize,
}

fn default_limit() -> usize {
    50
}

/// Whose dead letters: a queue's, or an event group's.
enum Target {
    Queue(String),
    Group(String, String),
}

impl Target {
    /// From the route's parameters: `{queue}`, or `{topic}` and `{group}`.
    fn from_params(p: &HashMap<String, String>) -> Target {
        let get = |k: &str| p.get(k).cloned().unwrap_or_default();
        match p.get("queue") {
            Some(q) => Target::Queue(q.clone()),
            None => Target::Group(get("topic"), get("group")),
        }
    }

    /// `queue`, or `topic/group` (names hold no '/').
    fn label(&self) -> String {
        match self {
            Target::Queue(q) => q.clone(),
            Target::Group(t, g) => format!("{t}/{g}"),
        }
    }

    async fn dead_count(&self, c: &Courier) -> courier::Result<u64> {
        Ok(match self {
            Target::Queue(q) => c.queue().stats(q).await?.dead,
            Target::Group(t, g) => c.events().group_stats(t, g).await?.queue.dead,
        })
    }

    async fn dead_letters(&self, c: &Courier, page: Page) -> courier::Result<Vec<DeadLetter>> {
        match self {
            Target::Queue(q) => c.queue().dead_letters(q, page).await,
            Target::Group(t, g) => c.events().dead_letters(t, g, page).await,
        }
    }

    /// One dead letter. A group has no look-up by id: its pages are read until it shows.
    async fn one(&self, c: &Courier, id: MessageId) -> courier::Result<DeadLetter> {
        let (t, g) = match self {
            Target::Queue(q) => return c.queue().dead_letter(q, id).await,
            Target::Group(t, g) => (t, g),
        };
        const PAGE: usize = 500;
        let mut offset = 0;
        loop {
            let page = c
                .events()
                .dead_letters(
                    t,
                    g,
                    Page {
                        offset,
                        limit: PAGE,
                    },
                )
                .await?;
            let n = page.len();
            if let Some(d) = page.into_iter().find(|d| d.message.id == id) {
                return Ok(d);
            }
            if n < PAGE {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!("no dead letter {id} in group {g} of topic {t}"),
                ));
            }
            offset += n;
        }
    }

    async fn requeue(&self, c: &Courier, which: Selection) -> courier::Result<u64> {
        match self {
            Target::Queue(q) => c.queue().requeue_dead(q, which).await,
            Target::Group(t, g) => c.events().requeue_dead(t, g, which).await,
        }
    }

    async fn purge(&self, c: &Courier, which: Selection) -> courier::Result<u64> {
        match self {
            Target::Queue(q) => c.queue().purge_dead(q, which).await,
            Target::Group(t, g) => c.events().purge_dead(t, g, which).await,
        }
    }
}

async fn dead_list(
    State(app): State<Arc<App>>,
    Path(params): Path<HashMap<String, String>>,
    Query(page): Query<PageQuery>,
) -> Response {
    let target = Target::from_params(&params);
    let listed = async {
        let dead = target.dead_count(&app.courier).await?;
        let page = Page {
            offset: page.offset,
            limit: page.limit.clamp(1, 500),
        };
        let items = target.dead_letters(&app.courier, page).await?;
        Ok::<_, Error>(json!({
            "of": target.label(),
            "dead": dead,
            "offset": page.offset,
            "items": items.iter().map(|d| dead_json(d, false)).collect::<Vec<_>>(),
        }))
    };
    match listed.await {
        Ok(v) => Json(v).into_response(),
        Err(e) => backend_error(&e),
    }
}

async fn dead_one(
    State(app): State<Arc<App>>,
    Path(params): Path<HashMap<String, String>>,
) -> Response {
    let target = Target::from_params(&params);
    let one = async {
        let id = parse_id(params.get("id").map_or("", String::as_str))?;
        target.one(&app.courier, id).await
    };
    match one.await {
        Ok(d) => Json(dead_json(&d, true)).into_response(),
        Err(e) => backend_error(&e),
    }
}

/// A requeue's or purge's body.
#[derive(Debug, Deserialize)]
struct Which {
    #[serde(default)]
    all: bool,
    #[serde(default)]
    ids: Vec<String>,
}

impl Which {
    fn selection(&self) -> courier::Result<Selection> {
        match (self.all, self.ids.is_empty()) {
            (true, true) => Ok(Selection::All),
            (false, false) => Ok(Selection::Ids(
                self.ids
                    .iter()
                    .map(|i| parse_id(i))
                    .collect::<courier::Result<_>>()?,
            )),
            (true, false) => Err(Error::invalid("give ids or all, not both")),
            (false, true) => Err(Error::invalid("give ids, or all: true")),
        }
    }
}

async fn requeue(
    State(app): State<Arc<App>>,
    Path(params): Path<HashMap<String, String>>,
    Json(which): Json<Which>,
) -> Response {
    let target = Target::from_params(&params);
    let moved = async { target.requeue(&app.courier, which.selection()?).await };
    match moved.await {
        Ok(n) => Json(json!({ "of": target.label(), "requeued": n })).into_response(),
        Err(e) => backend_error(&e),
    }
}

async fn purge(
    State(app): State<Arc<App>>,
    Path(params): Path<HashMap<String, String>>,
    Json(which): Json<Which>,
) -> Response {
    let target = Target::from_params(&params);
    let gone = async { target.purge(&app.courier, which.selection()?).await };
    match gone.await {
        Ok(n) => Json(json!({ "of": target.label(), "purged": n })).into_response(),
        Err(e) => backend_error(&e),
    }
}

/// Pause or resume a queue or an event group (Q14, E8), for every process.
async fn set_paused(app: &App, params: &HashMap<String, String>, paused: bool) -> Response {
    let target = Target::from_params(params);
    let c = &app.courier;
    let done = match (&target, paused) {
        (Target::Queue(q), true) => c.queue().pause(q).await,
        (Target::Queue(q), false) => c.queue().resume(q).await,
        (Target::Group(t, g), true) => c.events().pause_group(t, g).await,
        (Target::Group(t, g), false) => c.events().resume_group(t, g).await,
    };
    match done {
        Ok(()) => Json(json!({ "of": target.label(), "paused": paused })).into_response(),
        Err(e) => backend_error(&e),
    }
}

async fn pause(
    State(app): State<Arc<App>>,
    Path(params): Path<HashMap<String, String>>,
) -> Response {
    set_paused(&app, &params, true).await
}

async fn resume(
    State(app): State<Arc<App>>,
    Path(params): Path<HashMap<String, String>>,
) -> Response {
    set_paused(&app, &params, false).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(ct_eq("abc", "abc"));
        assert!(!ct_eq("abc", "abd"));
        assert!(!ct_eq("abc", "abcd"));
        assert!(!ct_eq("abc", ""));
        assert!(ct_eq("", ""));
    }

    #[test]
    fn query_tokens_decode() {
        assert_eq!(
            query_param(Some("a=1&token=s%20t%2Bx+y"), "token").as_deref(),
            Some("s t+x y")
        );
        assert_eq!(
            query_param(Some("token=50%"), "token").as_deref(),
            Some("50%")
        );
        assert_eq!(
            query_param(Some("token=%4"), "token").as_deref(),
            Some("%4")
        );
        assert_eq!(query_param(Some("x=1"), "token"), None);
        assert_eq!(query_param(None, "token"), None);
    }

    #[test]
    fn hosts() {
        assert_eq!(host_part("127.0.0.1:8080"), "127.0.0.1");
        assert_eq!(host_part("[::1]:80"), "::1");
        assert_eq!(host_part("LocalHost"), "localhost");
        let mut h = HeaderMap::new();
        for (host, ok) in [
            ("127.0.0.1:1", true),
            ("localhost:9", true),
            ("[::1]:9", true),
            ("evil.example:9", false),
            ("127.0.0.1.evil.example", false),
        ] {
            h.insert(header::HOST, HeaderValue::from_static(host));
            assert_eq!(host_is_loopback(&h), ok, "{host}");
        }
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://localhost:9"),
        );
        h.insert(header::HOST, HeaderValue::from_static("localhost:9"));
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(!same_origin(&h));
    }

    #[test]
    fn a_non_loopback_address_needs_a_token() {
        let args = |listen: &str, token: Option<&str>| Args {
            listen: listen.into(),
            token: token.map(Into::into),
            queues: vec![],
            groups: vec!["t/g".into()],
        };
        assert!(preflight(&args("127.0.0.1:0", None)).is_ok());
        assert!(preflight(&args("0.0.0.0:0", Some("t"))).is_ok());
        if std::env::var(TOKEN_ENV).is_err() {
            let e = preflight(&args("0.0.0.0:0", None)).expect_err("refused");
            assert!(e.to_string().contains("--token"), "{e}");
        }
        let mut bad = args("127.0.0.1:0", None);
        bad.groups = vec!["no-slash".into()];
        assert!(preflight(&bad).is_err());
    }
}
