//! `courier dashboard` run as a process against SQLite and Redis: its JSON API gives the
//! library's numbers for a scripted workload, a requeue through it (POST + CSRF token) empties
//! the dead letters, POSTs without the token or from another origin are refused, a non-loopback
//! address needs a token and then every request without it gets 401, and no response or output
//! shows a URL password. The browser test drives Debian's headless Chromium through
//! chromedriver (W3C WebDriver over a hand-written HTTP client): the page shows the workload's
//! counts, and clicking "Requeue all" then "Confirm" empties the dead letters.
//!
//! Redis, and Chromium with chromedriver (`bash scripts/chromium.sh`), are skipped loudly when
//! absent, unless `COURIER_REQUIRE_BACKENDS=1`. With `COURIER_SCREENSHOT=path.png` the browser
//! test saves the overview page there (docs/dashboard.png is made so), and with
//! `COURIER_SCREENSHOT_DEAD=path.png` the dead-letter browser with its confirmation open.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use courier::{Courier, Message, Priority, ReplayFrom, Settle};
use serde_json::{Value, json};
use support::{LIMIT, TempDb, assert_same_stats, redis, skip_loudly, unique, within};

// --- the workload ------------------------------------------------------------------------------

/// What the workload made: a queue and an event group.
struct Workload {
    queue: String,
    topic: String,
    group: String,
}

impl Workload {
    fn group_flag(&self) -> String {
        format!("{}/{}", self.topic, self.group)
    }
}

/// A queue with every state populated and nothing time-dependent for a minute: ready at three
/// priorities (4 each, one of them retried back), delayed for an hour, one in flight (30 s
/// lease), two dead (errors "bad input" and "still bad"), one acked; and a group that has read
/// 2 of 5 events, one of them dead ("bad event").
async fn workload(c: &Courier) -> Workload {
    let w = Workload {
        queue: unique("q"),
        topic: unique("topic").replace('-', "_"),
        group: "billing".into(),
    };
    let q = w.queue.as_str();
    let mut batch = Vec::new();
    for i in 0..12 {
        let p = [Priority::Critical, Priority::Normal, Priority::Low][i % 3];
        batch.push(
            Message::new(format!("k{i}"), format!("{{\"n\":{i}}}"))
                .with_priority(p)
                .with_header("source", "dashboard-test"),
        );
    }
    batch.push(Message::new("later", "").with_delay(Duration::from_secs(3600)));
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
    let ev = c.events();
    within(
        "create group",
        ev.create_group(&w.topic, &w.group, ReplayFrom::Start),
    )
    .await;
    let events = (0..5)
        .map(|i| Message::new("tick", format!("{i}")))
        .collect();
    within("emit", ev.emit_batch(&w.topic, events)).await;
    let got = within(
        "receive events",
        ev.receive(&w.topic, &w.group, 2, Duration::from_secs(5)),
    )
    .await;
    assert_eq!(got.len(), 2);
    let bury = vec![Settle::Bury {
        lease: got[0].lease,
        error: "bad event".into(),
    }];
    for r in within("bury event", ev.settle(&w.topic, &w.group, bury)).await {
        r.expect("bury event");
    }
    w
}

// --- the dashboard process ---------------------------------------------------------------------

/// A running `courier dashboard`, killed when dropped.
struct Dashboard {
    child: Child,
    addr: SocketAddr,
    output: Arc<Mutex<String>>,
}

impl Dashboard {
    /// Start `courier --url URL dashboard ARGS…` and wait (bounded) for its address.
    fn start(url: &str, args: &[&str]) -> Dashboard {
        let mut child = Command::new(env!("CARGO_BIN_EXE_courier"))
            .args(["--url", url, "dashboard"])
            .args(args)
            .env_remove("COURIER_URL")
            .env_remove("COURIER_DASHBOARD_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn courier dashboard");
        let output = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        let out = output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                out.lock().expect("output").push_str(&format!("{line}\n"));
                if let Some(rest) = line.strip_prefix("listening on http://") {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
                }
            }
        });
        let stderr = child.stderr.take().expect("stderr");
        let err = output.clone();
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = BufReader::new(stderr).read_to_string(&mut s);
            err.lock().expect("output").push_str(&s);
        });
        let mut d = Dashboard {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            output,
        };
        match rx.recv_timeout(LIMIT) {
            Ok(a) => d.addr = a.parse().unwrap_or_else(|e| panic!("address {a:?}: {e}")),
            Err(_) => panic!(
                "the dashboard printed no address within {LIMIT:?}: {}",
                d.output()
            ),
        }
        if d.addr.ip().is_unspecified() {
            d.addr.set_ip([127, 0, 0, 1].into());
        }
        d
    }

    fn output(&self) -> String {
        self.output.lock().expect("output").clone()
    }

    fn get(&self, path: &str, headers: &[(&str, &str)]) -> Resp {
        http(self.addr, "GET", path, headers, None)
    }

    fn json(&self, path: &str) -> Value {
        let r = self.get(path, &[]);
        assert_eq!(r.status, 200, "GET {path}: {}", r.body);
        r.json()
    }

    /// The CSRF token the page carries.
    fn csrf(&self, headers: &[(&str, &str)]) -> String {
        let page = self.get("/", headers);
        assert_eq!(page.status, 200, "{}", page.body);
        let at = page
            .body
            .find("name=\"courier-csrf\" content=\"")
            .expect("the page has its CSRF token");
        let rest = &page.body[at + "name=\"courier-csrf\" content=\"".len()..];
        rest[..rest.find('"').expect("token end")].to_string()
    }
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Wait (bounded) for a process to exit, killing it past the limit.
fn wait_exit(mut child: Child) -> (i32, String) {
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            return (s.code().unwrap_or(-1), err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the process ran longer than {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

// --- a minimal HTTP/1.1 client -----------------------------------------------------------------

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
    /// Status line, headers and body, for "no password anywhere" checks.
    fn all(&self) -> String {
        let mut s = format!("{}\n", self.status);
        for (k, v) in &self.headers {
            s.push_str(&format!("{k}: {v}\n"));
        }
        s + &self.body
    }
}

/// One request on its own connection (`Connection: close`), every step bounded by `LIMIT`.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Resp {
    let mut s =
        TcpStream::connect_timeout(&addr, LIMIT).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(LIMIT)).expect("timeout");
    s.set_write_timeout(Some(LIMIT)).expect("timeout");
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    let body = body.unwrap_or("");
    if method != "GET" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes())
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    // Read the head, then exactly the body: some servers (chromedriver) keep the connection
    // open despite `Connection: close`.
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let split = loop {
        if let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        let n = s
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        assert!(n > 0, "{method} {path}: closed before the head ended");
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut payload = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: bad status line in {head}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let find = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let chunked = find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let length: Option<usize> = find("content-length").and_then(|v| v.parse().ok());
    loop {
        let complete = match (chunked, length) {
            (true, _) => payload == b"0\r\n\r\n" || payload.ends_with(b"\r\n0\r\n\r\n"),
            (false, Some(len)) => payload.len() >= len,
            (false, None) => false,
        };
        if complete || method == "HEAD" || status == 204 || status == 304 {
            break;
        }
        let n = s
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        if n == 0 {
            break;
        }
        payload.extend_from_slice(&buf[..n]);
    }
    if chunked {
        payload = dechunk(&payload);
    }
    Resp {
        status,
        headers,
        body: String::from_utf8_lossy(&payload).to_string(),
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&b[..eol])
                .split(';')
                .next()
                .unwrap_or("")
                .trim(),
            16,
        )
        .expect("chunk size");
        if size == 0 {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[eol + 2 + size + 2..];
    }
    out
}

// --- the API checks ----------------------------------------------------------------------------

/// The overview's counts are the library's; the dead-letter browser's API lists and shows the
/// two dead letters; a POST without the CSRF token, or from another origin, is refused; with
/// it, a requeue of all empties the dead letters.
async fn api_matches_and_requeues(c: &Courier, url: &str) {
    let w = workload(c).await;
    let q = w.queue.as_str();
    let d = Dashboard::start(
        url,
        &[
            "--listen",
            "127.0.0.1:0",
            "--queue",
            q,
            "--group",
            &w.group_flag(),
        ],
    );
    let want = within("stats", c.queue().stats(q)).await;
    assert_eq!((want.dead, want.in_flight, want.delayed), (2, 1, 1));
    let ov = d.json("/api/overview");
    assert_eq!(ov["queues_from"], "named");
    let queues = ov["queues"].as_array().expect("queues");
    assert_eq!(queues.len(), 1, "{ov}");
    assert_eq!(queues[0]["queue"], q);
    assert_same_stats(&queues[0], &want);
    let gs = within("group stats", c.events().group_stats(&w.topic, &w.group)).await;
    let g = &ov["groups"][0];
    assert_eq!(
        (g["topic"].as_str(), g["group"].as_str(), g["lag"].as_u64()),
        (Some(w.topic.as_str()), Some("billing"), Some(gs.lag)),
        "{ov}"
    );
    assert_eq!(g["in_flight"].as_u64(), Some(gs.queue.in_flight));
    assert_eq!(g["retained"].as_u64(), Some(5));

    // The dead-letter browser's API.
    let dead = d.json(&format!("/api/queues/{q}/dead"));
    let items = dead["items"].as_array().expect("items");
    let errors: Vec<&str> = items.iter().filter_map(|v| v["error"].as_str()).collect();
    assert_eq!(errors, ["bad input", "still bad"], "oldest first: {dead}");
    let id = items[0]["id"].as_str().expect("id");
    let one = d.json(&format!("/api/queues/{q}/dead/{id}"));
    assert_eq!(
        (one["attempts"].as_u64(), one["error"].as_str()),
        (Some(1), Some("bad input"))
    );
    assert!(
        one["payload"]
            .as_str()
            .is_some_and(|p| p.starts_with("{\"n\":")),
        "{one}"
    );
    assert_eq!(one["headers"]["source"], "dashboard-test");
    let missing = d.get(
        &format!("/api/queues/{q}/dead/{}", courier::MessageId::new()),
        &[],
    );
    assert_eq!(missing.status, 404, "{}", missing.body);

    // Mutations: POST only, with the page's CSRF token, from this origin.
    let path = format!("/api/queues/{q}/dead/requeue");
    let all = r#"{"all":true}"#;
    let json_ct = ("Content-Type", "application/json");
    let r = http(d.addr, "POST", &path, &[json_ct], Some(all));
    assert_eq!(r.status, 403, "no CSRF token: {}", r.body);
    let r = http(
        d.addr,
        "POST",
        &path,
        &[json_ct, ("X-Courier-Csrf", "0123456789abcdef")],
        Some(all),
    );
    assert_eq!(r.status, 403, "a wrong CSRF token: {}", r.body);
    let csrf = d.csrf(&[]);
    let origin = format!("http://{}", d.addr);
    let r = http(
        d.addr,
        "POST",
        &path,
        &[
            json_ct,
            ("X-Courier-Csrf", &csrf),
            ("Origin", "http://evil.example"),
        ],
        Some(all),
    );
    assert_eq!(r.status, 403, "another origin: {}", r.body);
    let r = d.get(&path, &[]);
    assert_eq!(r.status, 405, "GET does not change anything: {}", r.body);
    assert_eq!(within("stats", c.queue().stats(q)).await.dead, 2);
    let r = http(
        d.addr,
        "POST",
        &path,
        &[json_ct, ("X-Courier-Csrf", &csrf), ("Origin", &origin)],
        Some(all),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["requeued"].as_u64(), Some(2));
    let after = within("stats", c.queue().stats(q)).await;
    assert_eq!(
        (after.dead, after.ready_total()),
        (0, want.ready_total() + 2)
    );
    let ov = d.json("/api/overview");
    assert_same_stats(&ov["queues"][0], &after);

    // An event group's dead letters, the same way.
    let (t, g) = (w.topic.as_str(), w.group.as_str());
    assert_eq!(gs.queue.dead, 1);
    let dead = d.json(&format!("/api/groups/{t}/{g}/dead"));
    assert_eq!(dead["dead"].as_u64(), Some(1), "{dead}");
    let id = dead["items"][0]["id"].as_str().expect("id");
    let one = d.json(&format!("/api/groups/{t}/{g}/dead/{id}"));
    assert_eq!(
        (one["error"].as_str(), one["payload"].as_str()),
        (Some("bad event"), Some("0"))
    );
    let missing = d.get(
        &format!("/api/groups/{t}/{g}/dead/{}", courier::MessageId::new()),
        &[],
    );
    assert_eq!(missing.status, 404, "{}", missing.body);
    let path = format!("/api/groups/{t}/{g}/dead/requeue");
    let r = http(d.addr, "POST", &path, &[json_ct], Some(all));
    assert_eq!(r.status, 403, "no CSRF token: {}", r.body);
    let r = http(
        d.addr,
        "POST",
        &path,
        &[json_ct, ("X-Courier-Csrf", &csrf)],
        Some(&format!(r#"{{"ids":["{id}"]}}"#)),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["requeued"].as_u64(), Some(1));
    let gs = within("group stats", c.events().group_stats(t, g)).await;
    assert_eq!(gs.queue.dead, 0, "{gs:?}");

    // Pause and resume (Q14, E8): POST with the CSRF token, seen in the overview and by the
    // library.
    let path = format!("/api/queues/{q}/pause");
    let r = http(d.addr, "POST", &path, &[json_ct], Some("{}"));
    assert_eq!(r.status, 403, "no CSRF token: {}", r.body);
    assert!(!within("stats", c.queue().stats(q)).await.paused);
    let r = http(
        d.addr,
        "POST",
        &path,
        &[json_ct, ("X-Courier-Csrf", &csrf)],
        Some("{}"),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(within("stats", c.queue().stats(q)).await.paused);
    assert_eq!(d.json("/api/overview")["queues"][0]["paused"], true);
    let r = http(
        d.addr,
        "POST",
        &format!("/api/queues/{q}/resume"),
        &[json_ct, ("X-Courier-Csrf", &csrf)],
        Some("{}"),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!within("stats", c.queue().stats(q)).await.paused);
    let r = http(
        d.addr,
        "POST",
        &format!("/api/groups/{t}/{g}/pause"),
        &[json_ct, ("X-Courier-Csrf", &csrf)],
        Some("{}"),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let gs = within("group stats", c.events().group_stats(t, g)).await;
    assert!(gs.queue.paused, "{gs:?}");
    let r = http(
        d.addr,
        "POST",
        &format!("/api/groups/{t}/{g}/resume"),
        &[json_ct, ("X-Courier-Csrf", &csrf)],
        Some("{}"),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let gs = within("group stats", c.events().group_stats(t, g)).await;
    assert!(!gs.queue.paused, "{gs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_api_counts_and_requeue() {
    let db = TempDb::new("api");
    let url = db.url();
    let c = within("connect", courier::connect(&url)).await;
    api_matches_and_requeues(&c, &url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_api_counts_and_requeue() {
    let Some((c, url)) = redis("dashboard test over Redis").await else {
        return;
    };
    api_matches_and_requeues(&c, &url).await;
}

/// Without names, the dashboard shows what the backend lists (Q13, E7: every backend lists;
/// this fresh SQLite file holds only the workload); named queues show alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_or_named_queues() {
    let db = TempDb::new("list");
    let url = db.url();
    let c = within("connect", courier::connect(&url)).await;
    let w = workload(&c).await;
    let want = within("stats", c.queue().stats(&w.queue)).await;
    let listed = Dashboard::start(&url, &["--listen", "127.0.0.1:0"]);
    let ov = listed.json("/api/overview");
    assert_eq!(ov["queues_from"], "listed", "{ov}");
    let queues = ov["queues"].as_array().expect("queues");
    assert_eq!(queues.len(), 1, "only the workload's queue: {ov}");
    assert_eq!(queues[0]["queue"], w.queue.as_str(), "{ov}");
    assert_same_stats(&queues[0], &want);
    assert_eq!(ov["groups_from"], "listed", "{ov}");
    assert!(
        ov["groups"]
            .as_array()
            .expect("groups")
            .iter()
            .any(|g| g["topic"] == w.topic.as_str() && g["group"] == "billing"),
        "{ov}"
    );
    drop(listed);
    let named = Dashboard::start(&url, &["--listen", "127.0.0.1:0", "--queue", &w.queue]);
    let ov = named.json("/api/overview");
    assert_eq!(ov["queues_from"], "named");
    assert_same_stats(&ov["queues"][0], &want);
}

// --- authentication ----------------------------------------------------------------------------

#[test]
fn a_non_loopback_address_without_a_token_is_refused() {
    let db = TempDb::new("refuse");
    let child = Command::new(env!("CARGO_BIN_EXE_courier"))
        .args(["--url", &db.url(), "dashboard", "--listen", "0.0.0.0:0"])
        .env_remove("COURIER_URL")
        .env_remove("COURIER_DASHBOARD_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let (code, err) = wait_exit(child);
    assert_eq!(code, 2, "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("--token") && err.contains("COURIER_DASHBOARD_TOKEN"),
        "{err}"
    );
}

#[test]
fn with_a_token_every_request_without_it_gets_401() {
    let db = TempDb::new("token");
    let token = "tok-3141/5926+a";
    let d = Dashboard::start(
        &db.url(),
        &["--listen", "0.0.0.0:0", "--token", token, "--queue", "jobs"],
    );
    assert!(
        d.output().contains("token required") && !d.output().contains(token),
        "{}",
        d.output()
    );
    let bearer = format!("Bearer {token}");
    for path in [
        "/",
        "/app.js",
        "/app.css",
        "/api/overview",
        "/api/queues/jobs/dead",
        "/nope",
    ] {
        let r = d.get(path, &[]);
        assert_eq!(r.status, 401, "GET {path} without the token: {}", r.body);
        assert!(r.header("www-authenticate").is_some());
        let r = d.get(path, &[("Authorization", "Bearer tok-3141/5926+b")]);
        assert_eq!(r.status, 401, "GET {path} with another token");
        let r = d.get(path, &[("Cookie", "courier_dashboard=guess")]);
        assert_eq!(r.status, 401, "GET {path} with a made-up cookie");
        let r = d.get(path, &[("Authorization", &bearer)]);
        let want = if path == "/nope" { 404 } else { 200 };
        assert_eq!(r.status, want, "GET {path} with the token: {}", r.body);
    }
    let r = http(
        d.addr,
        "POST",
        "/api/queues/jobs/dead/requeue",
        &[("Content-Type", "application/json")],
        Some(r#"{"all":true}"#),
    );
    assert_eq!(r.status, 401, "POST without the token");
    // Opening /?token=… once sets an HttpOnly, SameSite=Strict session cookie and moves the
    // token out of the address bar.
    let r = d.get("/?token=tok-3141%2F5926%2Ba", &[]);
    assert_eq!(r.status, 303, "{}", r.all());
    assert_eq!(r.header("location"), Some("/"));
    let set = r.header("set-cookie").expect("a session cookie");
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict") && !set.contains(token),
        "{set}"
    );
    let cookie = set.split(';').next().expect("name=value").to_string();
    let r = d.get("/api/overview", &[("Cookie", &cookie)]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(d.get("/?token=wrong", &[]).status, 401);
    // The cookie or the token lets a POST through to the CSRF check, and no further without it.
    let r = http(
        d.addr,
        "POST",
        "/api/queues/jobs/dead/requeue",
        &[("Content-Type", "application/json"), ("Cookie", &cookie)],
        Some(r#"{"all":true}"#),
    );
    assert_eq!(r.status, 403, "no CSRF token: {}", r.body);
    let csrf = d.csrf(&[("Cookie", &cookie)]);
    let r = http(
        d.addr,
        "POST",
        "/api/queues/jobs/dead/requeue",
        &[
            ("Content-Type", "application/json"),
            ("Authorization", &bearer),
            ("X-Courier-Csrf", &csrf),
        ],
        Some(r#"{"all":true}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
}

/// Without a token (loopback only), a Host that is not a loopback name is refused: a page of
/// another site cannot reach the dashboard through a DNS name rebound to 127.0.0.1.
#[test]
fn loopback_without_token_answers_only_loopback_hosts() {
    let db = TempDb::new("host");
    let d = Dashboard::start(&db.url(), &["--listen", "127.0.0.1:0"]);
    let port = d.addr.port();
    for host in [format!("127.0.0.1:{port}"), format!("localhost:{port}")] {
        assert_eq!(d.get("/", &[("Host", &host)]).status, 200, "{host}");
    }
    let evil = format!("rebound.example:{port}");
    assert_eq!(d.get("/api/overview", &[("Host", &evil)]).status, 403);
}

/// The page shows the backend's name and its URL with the password replaced; no response, and
/// nothing the process prints, contains the password. (memory:// ignores what follows the
/// scheme, so a URL with a password can be served without a server that checks one.)
#[test]
fn no_page_log_or_error_shows_a_url_password() {
    let secret = "s3cretPassw0rd";
    let url = format!("memory://admin:{secret}@localhost:6379/0");
    let d = Dashboard::start(&url, &["--listen", "127.0.0.1:0", "--queue", "jobs"]);
    let ov = d.json("/api/overview");
    assert_eq!(ov["backend"], "memory");
    assert_eq!(ov["url"], "memory://admin:***@localhost:6379/0");
    let mut seen = String::new();
    for path in [
        "/",
        "/app.js",
        "/api/overview",
        "/api/queues/jobs/dead",
        "/api/queues/bad%20name!/dead",
        "/api/queues/jobs/dead/not-an-id",
        "/missing",
    ] {
        seen += &d.get(path, &[]).all();
    }
    let csrf = d.csrf(&[]);
    seen += &http(
        d.addr,
        "POST",
        "/api/queues/jobs/dead/purge",
        &[
            ("Content-Type", "application/json"),
            ("X-Courier-Csrf", &csrf),
        ],
        Some(r#"{"ids":["nope"]}"#),
    )
    .all();
    assert!(seen.contains("400"), "the errors were served: {seen}");
    assert!(!seen.contains(secret), "a password was served: {seen}");
    assert!(!d.output().contains(secret), "printed: {}", d.output());
    // And an unreachable backend with a password: one line, exit 2, no password.
    let child = Command::new(env!("CARGO_BIN_EXE_courier"))
        .args([
            "--url",
            &format!("redis://:{secret}@127.0.0.1:1/"),
            "dashboard",
        ])
        .env_remove("COURIER_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let (code, err) = wait_exit(child);
    assert_eq!((code, err.lines().count()), (2, 1), "{err}");
    assert!(!err.contains(secret), "{err}");
}

// --- the browser -------------------------------------------------------------------------------

/// chromium and chromedriver, when installed.
fn browser_binaries() -> Option<(String, String)> {
    let find = |names: &[&str]| {
        names.iter().find_map(|n| {
            let p = std::path::Path::new(n);
            if p.is_absolute() {
                return p.exists().then(|| n.to_string());
            }
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join(n))
                    .find(|p| p.exists())
                    .map(|p| p.display().to_string())
            })
        })
    };
    let chromium = find(&["chromium", "chromium-browser", "google-chrome"]);
    let driver = find(&["chromedriver", "/usr/lib/chromium/chromedriver"]);
    match (chromium, driver) {
        (Some(c), Some(d)) => Some((c, d)),
        (c, d) => {
            let why = format!(
                "no headless browser (chromium: {}, chromedriver: {}); run `bash scripts/chromium.sh`",
                c.as_deref().unwrap_or("missing"),
                d.as_deref().unwrap_or("missing"),
            );
            skip_loudly("the dashboard's browser test", &why);
            None
        }
    }
}

/// A chromedriver process and one browser session in it, both ended when dropped.
struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    fn start(chromium: &str, chromedriver: &str) -> Browser {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
            l.local_addr().expect("port").port()
        };
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromedriver");
        let mut b = Browser {
            driver,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            session: String::new(),
        };
        let deadline = Instant::now() + LIMIT;
        loop {
            if TcpStream::connect_timeout(&b.addr, Duration::from_secs(1)).is_ok() {
                let r = http(b.addr, "GET", "/status", &[], None);
                if r.status == 200 && r.json()["value"]["ready"] == true {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "chromedriver not ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1100,700",
                         "--hide-scrollbars"],
            },
        }}});
        // Starting the browser can fail on a loaded machine ("session not created"): retry
        // within the limit, and say why when it never works.
        let deadline = Instant::now() + LIMIT;
        let v = loop {
            match b.try_call("POST", "/session", Some(caps.clone())) {
                Ok(v) => break v,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("chromedriver: no session yet ({e}); retrying");
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => panic!("chromedriver gave no session within {LIMIT:?}: {e}"),
            }
        };
        b.session = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_string();
        b
    }

    /// One WebDriver command; its `value`.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.try_call(method, path, body)
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"))
    }

    /// One WebDriver command; its `value`, or the error the driver answered.
    fn try_call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let body = body.map(|b| b.to_string());
        let r = http(
            self.addr,
            method,
            path,
            &[("Content-Type", "application/json; charset=utf-8")],
            body.as_deref().or((method == "POST").then_some("{}")),
        );
        let v: Value = serde_json::from_str(&r.body).map_err(|e| format!("{e}: {}", r.body))?;
        if r.status != 200 {
            return Err(format!("HTTP {}: {v}", r.status));
        }
        Ok(v.get("value").cloned().unwrap_or(Value::Null))
    }

    fn cmd(&self, method: &str, what: &str, body: Option<Value>) -> Value {
        self.call(method, &format!("/session/{}{what}", self.session), body)
    }

    fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url })));
    }

    /// Elements matching a CSS selector (none is not an error).
    fn find_all(&self, css: &str) -> Vec<String> {
        let v = self.cmd(
            "POST",
            "/elements",
            Some(json!({"using": "css selector", "value": css})),
        );
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e[ELEMENT].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The text of the first element matching `css`; None when there is none, or when it was
    /// replaced between finding and reading it (a stale element: the caller polls again).
    fn text_of(&self, css: &str) -> Option<String> {
        let id = self.find_all(css).into_iter().next()?;
        self.cmd_try("GET", &format!("/element/{id}/text"))
            .ok()?
            .as_str()
            .map(String::from)
    }

    fn cmd_try(&self, method: &str, what: &str) -> Result<Value, String> {
        let body = (method == "POST").then(|| json!({}));
        self.try_call(method, &format!("/session/{}{what}", self.session), body)
    }

    /// Poll (bounded) until `css`'s text satisfies `ok`; its text.
    fn wait_text(&self, css: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + LIMIT;
        loop {
            let t = self.text_of(css);
            if let Some(t) = t.as_deref().filter(|t| ok(t)) {
                return t.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "{css}: text {t:?} still not as expected after {LIMIT:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Click the first element matching `css`, waiting (bounded) for it to be there; a click
    /// on an element replaced meanwhile is tried again on the new one.
    fn click(&self, css: &str) {
        let deadline = Instant::now() + LIMIT;
        loop {
            let tried = match self.find_all(css).into_iter().next() {
                Some(id) => self.cmd_try("POST", &format!("/element/{id}/click")),
                None => Err("not there".to_string()),
            };
            match tried {
                Ok(_) => return,
                Err(e) => assert!(
                    Instant::now() < deadline,
                    "cannot click {css} within {LIMIT:?}: {e}"
                ),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn screenshot(&self) -> Vec<u8> {
        let v = self.cmd("GET", "/screenshot", None);
        base64_decode(v.as_str().expect("base64 PNG"))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let path = format!("/session/{}", self.session);
            let _ = std::panic::catch_unwind(|| http(self.addr, "DELETE", &path, &[], None));
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for v in s.bytes().filter_map(val) {
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// The page shows the workload's counts; the dead-letter browser shows a message's payload and
/// error; "Requeue all" and "Confirm" empty the dead letters, and the library agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_shows_counts_and_requeues() {
    let Some((chromium, chromedriver)) = browser_binaries() else {
        return;
    };
    let db = TempDb::new("browser");
    let url = db.url();
    let c = within("connect", courier::connect(&url)).await;
    let w = workload(&c).await;
    let q = w.queue.clone();
    let want = within("stats", c.queue().stats(&q)).await;
    // A second queue with steady traffic, so the rate chart has something to draw.
    let busy = unique("busy");
    let d = Dashboard::start(
        &url,
        &[
            "--listen",
            "127.0.0.1:0",
            "--queue",
            &q,
            "--queue",
            &busy,
            "--group",
            &w.group_flag(),
        ],
    );
    let traffic = tokio::spawn({
        let c = c.clone();
        let busy = busy.clone();
        async move {
            for i in 0u64..600 {
                let n = 5 + (i % 7) as usize;
                let batch = (0..n)
                    .map(|j| {
                        let p = [Priority::High, Priority::Normal][j % 2];
                        Message::new("work", "x").with_priority(p)
                    })
                    .collect();
                c.queue().publish_batch(&busy, batch).await?;
                let got = c
                    .queue()
                    .receive(&busy, n - 2, Duration::from_millis(50))
                    .await?;
                let acks = got.iter().map(|d| Settle::Ack(d.lease)).collect();
                c.queue().settle(&busy, acks).await?;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok::<_, courier::Error>(())
        }
    });
    let page = format!("http://{}/", d.addr);
    let group_row = format!("tr[data-group=\"{}\"]", w.group_flag());
    let group = format!("{group_row} td.lag");
    let (shot, counts) = tokio::task::spawn_blocking(move || {
        let b = Browser::start(&chromium, &chromedriver);
        b.goto(&page);
        let row = format!("tr[data-queue=\"{q}\"]");
        let mut counts = Vec::new();
        for class in [
            "ready-critical",
            "ready-high",
            "ready-normal",
            "ready-low",
            "delayed",
            "in-flight",
            "dead",
        ] {
            counts.push(b.wait_text(&format!("{row} td.{class}"), |t| !t.is_empty()));
        }
        counts.push(b.wait_text(&group, |t| !t.is_empty()));
        // The rates are live once the busy queue shows one. For the saved picture, let the
        // chart draw a few seconds of them first (a pause for content, not a wait for a state).
        let busy_row = format!("tr[data-queue=\"{busy}\"] td.publ-rate");
        b.wait_text(&busy_row, |t| t.parse::<f64>().is_ok_and(|r| r > 0.0));
        if std::env::var_os("COURIER_SCREENSHOT").is_some() {
            std::thread::sleep(Duration::from_secs(6));
        }
        let shot = b.screenshot();
        // The dead-letter browser: the queue's dead count links to it.
        b.click(&format!("{row} td.dead button"));
        b.wait_text("#dead-count", |t| t == "2 dead");
        b.wait_text("#dead-list tbody tr[data-id] td.error", |t| {
            t == "bad input"
        });
        b.click("#dead-list tbody tr[data-id] button.view");
        b.wait_text("#detail-error", |t| t == "bad input");
        b.wait_text("#detail-payload", |t| t.contains("\"n\""));
        b.wait_text("#detail-headers", |t| t.contains("dashboard-test"));
        b.wait_text("#detail-attempts", |t| t == "1");
        // Requeue all, confirmed in the page.
        b.click("#requeue-all");
        b.wait_text("#confirm-text", |t| t.contains("Requeue all 2"));
        if let Some(path) = std::env::var_os("COURIER_SCREENSHOT_DEAD").filter(|p| !p.is_empty()) {
            std::fs::write(&path, b.screenshot()).expect("write the dead-letter screenshot");
        }
        b.click("#confirm-yes");
        b.wait_text("#dead-count", |t| t == "0 dead");
        b.wait_text("#dead-result", |t| t == "requeued 2");
        // An event group's dead count opens its dead letters too.
        b.click("#nav-overview");
        b.click(&format!("{group_row} td.dead button"));
        b.wait_text("#dead-count", |t| t == "1 dead");
        b.wait_text("#dead-list tbody tr[data-id] td.error", |t| {
            t == "bad event"
        });
        (shot, counts)
    })
    .await
    .expect("the browser session");
    traffic.abort();
    let want_counts: Vec<String> = [
        want.ready[0],
        want.ready[1],
        want.ready[2],
        want.ready[3],
        want.delayed,
        want.in_flight,
        want.dead,
    ]
    .iter()
    .map(u64::to_string)
    .chain([within("group", c.events().group_stats(&w.topic, &w.group))
        .await
        .lag
        .to_string()])
    .collect();
    assert_eq!(counts, want_counts, "the page shows the library's counts");
    let after = within("stats", c.queue().stats(&w.queue)).await;
    assert_eq!(
        (after.dead, after.ready_total()),
        (0, want.ready_total() + 2),
        "{after:?}"
    );
    assert!(shot.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG screenshot");
    if let Some(path) = std::env::var_os("COURIER_SCREENSHOT").filter(|p| !p.is_empty()) {
        std::fs::write(&path, &shot).expect("write the screenshot");
        eprintln!("screenshot of the overview: {}", path.to_string_lossy());
    }
}
