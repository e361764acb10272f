//! The end-to-end scenario: three users register and log in, one creates a meeting, all three
//! join and negotiate WebRTC pairwise, the meeting is recorded, media and ai process audio,
//! video and a transcript, a malformed transcode task ends in dead letters, everybody hangs up
//! and leaves, and the meeting ends.
//!
//! The scenario only sends what the users' clients would send; everything else (cascaded
//! tasks, events) is the services' doing. Each phase adds its expectations to an explicit
//! table, and the scenario waits (bounded) until the ledger shows all of them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use courier::headers::SOURCE;
use courier::{Courier, Message, QueueExt, QueueStats, Subscriber, SubscriberHandle};
use serde::Serialize;
use tracing::Instrument as _;

use crate::config::Settings;
use crate::dsp;
use crate::ledger::{Channel, Entry, Key, Ledger, Outcome};
use crate::protocol::{
    ConnectionManage, CreateMeeting, EndMeeting, Ice, LoginUser, MeetingMember, RecordingRequest,
    RegisterUser, Relay, Sdp, StreamChunk, Transcode, TranscriptTask, UpdateProfile,
};
use crate::runtime::{NOTE, Platform};
use crate::topology::{Names, ServiceKind, owner_of, subscribers_of};

/// The codec of the deliberately malformed transcode task.
pub const BAD_CODEC: &str = "h265-hw";

// ------------------------------------------------------------------ expectations

/// A shortfall: something expected that the ledger does not (yet) show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shortfall {
    /// What was expected.
    pub what: String,
    /// How many.
    pub expected: usize,
    /// How many were seen.
    pub got: usize,
}

impl std::fmt::Display for Shortfall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "MISSING {}: expected {}, got {}",
            self.what, self.expected, self.got
        )
    }
}

/// The explicit expectation table: successful deliveries per (channel, name, recipient), and
/// messages that must end as dead letters after a given number of attempts.
#[derive(Clone, Debug, Default)]
pub struct Expectations {
    ok: BTreeMap<Key, usize>,
    dead: BTreeMap<Key, (usize, u32)>,
    expired: BTreeMap<Key, usize>,
    observer: Option<String>,
}

fn describe(k: &Key) -> String {
    let what = match k.0 {
        Channel::Task => "task",
        Channel::Event => "event",
        Channel::Signal => "relay",
        Channel::Local => "local event",
    };
    format!("{what} {} -> {}", k.1, k.2)
}

impl Expectations {
    /// An empty table. With `observer`, every event is also expected at that group.
    pub fn new(observer: Option<String>) -> Expectations {
        Expectations {
            observer,
            ..Expectations::default()
        }
    }

    fn add(&mut self, channel: Channel, name: &str, to: &str, n: usize) {
        *self
            .ok
            .entry((channel, name.to_string(), to.to_string()))
            .or_insert(0) += n;
    }

    /// `n` runs of task `kind` by its owner.
    pub fn task(&mut self, kind: &str, n: usize) {
        let owner = owner_of(kind).map_or("nobody", |s| s.name());
        self.add(Channel::Task, kind, owner, n);
    }

    /// `n` events on `topic`, delivered to every subscribed service (and the observer).
    pub fn event(&mut self, topic: &str, n: usize) {
        for s in subscribers_of(topic) {
            self.add(Channel::Event, topic, s.name(), n);
        }
        if let Some(o) = self.observer.clone() {
            self.add(Channel::Event, topic, &o, n);
        }
    }

    /// `n` deliveries on a service's in-process bus.
    pub fn local(&mut self, service: ServiceKind, topic: &str, n: usize) {
        let component = service
            .local_topics()
            .iter()
            .find(|(t, _)| *t == topic)
            .map_or("?", |(_, c)| c);
        self.add(Channel::Local, topic, &format!("{service}/{component}"), n);
    }

    /// `n` live relays of `kind` reaching `user`'s client.
    pub fn relay(&mut self, kind: &str, user: &str, n: usize) {
        self.add(Channel::Signal, kind, &format!("client:{user}"), n);
    }

    /// `n` tasks of `kind` that must fail `attempts` times each and end as dead letters.
    pub fn dead_task(&mut self, kind: &str, n: usize, attempts: u32) {
        let owner = owner_of(kind).map_or("nobody", |s| s.name());
        let e = self
            .dead
            .entry((Channel::Task, kind.to_string(), owner.to_string()))
            .or_insert((0, attempts));
        e.0 += n;
    }

    /// `n` tasks of `kind` that must expire in their queue before they are handled (Q12).
    pub fn expired_task(&mut self, kind: &str, n: usize) {
        let owner = owner_of(kind).map_or("nobody", |s| s.name());
        *self
            .expired
            .entry((Channel::Task, kind.to_string(), owner.to_string()))
            .or_insert(0) += n;
    }

    /// Expected successful deliveries in total.
    pub fn total(&self) -> usize {
        self.ok.values().sum::<usize>()
            + self.dead.values().map(|(n, _)| n).sum::<usize>()
            + self.expired.values().sum::<usize>()
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.ok.len() + self.dead.len() + self.expired.len()
    }

    /// What the ledger does not show yet.
    pub fn shortfalls(&self, entries: &[Entry]) -> Vec<Shortfall> {
        let mut ok: BTreeMap<Key, usize> = BTreeMap::new();
        let mut dead: BTreeMap<Key, usize> = BTreeMap::new();
        let mut failed: BTreeMap<Key, usize> = BTreeMap::new();
        let mut expired: BTreeMap<Key, usize> = BTreeMap::new();
        for e in entries {
            let k = (e.channel, e.name.clone(), e.to.clone());
            match e.outcome {
                Outcome::Ok => *ok.entry(k).or_insert(0) += 1,
                Outcome::Dead(_) => {
                    *dead.entry(k.clone()).or_insert(0) += 1;
                    *failed.entry(k).or_insert(0) += 1;
                }
                Outcome::Retry(_) => *failed.entry(k).or_insert(0) += 1,
                Outcome::Expired(_) => *expired.entry(k).or_insert(0) += 1,
            }
        }
        let mut out = Vec::new();
        for (k, n) in &self.expired {
            let got = expired.get(k).copied().unwrap_or(0);
            if got < *n {
                out.push(Shortfall {
                    what: format!("expiry of {}", describe(k)),
                    expected: *n,
                    got,
                });
            }
        }
        for (k, n) in &self.ok {
            let got = ok.get(k).copied().unwrap_or(0);
            if got < *n {
                out.push(Shortfall {
                    what: describe(k),
                    expected: *n,
                    got,
                });
            }
        }
        for (k, (n, attempts)) in &self.dead {
            let got = dead.get(k).copied().unwrap_or(0);
            if got < *n {
                out.push(Shortfall {
                    what: format!("dead letter of {}", describe(k)),
                    expected: *n,
                    got,
                });
            }
            let tries = failed.get(k).copied().unwrap_or(0);
            let want = *n * *attempts as usize;
            if tries < want {
                out.push(Shortfall {
                    what: format!("failed attempts of {}", describe(k)),
                    expected: want,
                    got: tries,
                });
            }
        }
        out
    }

    /// Deliveries seen more often than expected (at-least-once duplicates) or not expected
    /// at all: reported, not failed.
    pub fn surplus(&self, entries: &[Entry]) -> Vec<String> {
        let mut ok: BTreeMap<Key, usize> = BTreeMap::new();
        for e in entries.iter().filter(|e| e.is_ok()) {
            *ok.entry((e.channel, e.name.clone(), e.to.clone()))
                .or_insert(0) += 1;
        }
        ok.iter()
            .filter_map(|(k, got)| match self.ok.get(k) {
                Some(n) if got > n => Some(format!("{}: expected {n}, got {got}", describe(k))),
                None if !self.dead.contains_key(k) && !self.expired.contains_key(k) => {
                    Some(format!("{}: not in the table, got {got}", describe(k)))
                }
                _ => None,
            })
            .collect()
    }

    /// The table, one row per line.
    pub fn table(&self) -> String {
        let mut s = String::new();
        for (k, n) in &self.ok {
            let _ = writeln!(s, "  {n:>3} x {}", describe(k));
        }
        for (k, (n, a)) in &self.dead {
            let _ = writeln!(
                s,
                "  {n:>3} x dead letter of {} after {a} attempt(s)",
                describe(k)
            );
        }
        s
    }
}

// ------------------------------------------------------------------ the scenario

/// The scenario's steps, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    /// alice, bob and carol register.
    Register,
    /// They log in; bob renames himself.
    Login,
    /// alice creates the meeting.
    Create,
    /// All three join.
    Join,
    /// Pairwise WebRTC offers, answers, ICE candidates, connections.
    Negotiate,
    /// carol sends an ICE candidate to dave, who is invited but joins late: the candidate
    /// waits for his session and expires (Q12) instead of being relayed stale.
    LateJoiner,
    /// alice starts the recording.
    Record,
    /// alice's audio and video go through media and ai; carol's transcript through ai; and a
    /// malformed transcode task fails until it is a dead letter.
    Media,
    /// alice stops the recording; media transcodes it.
    StopRecording,
    /// Everybody hangs up their peer connections.
    Hangup,
    /// Everybody leaves.
    Leave,
    /// alice ends the meeting.
    End,
}

impl Phase {
    /// Every phase, in order.
    pub const ALL: [Phase; 12] = [
        Phase::Register,
        Phase::Login,
        Phase::Create,
        Phase::Join,
        Phase::Negotiate,
        Phase::LateJoiner,
        Phase::Record,
        Phase::Media,
        Phase::StopRecording,
        Phase::Hangup,
        Phase::Leave,
        Phase::End,
    ];

    /// What happens in the phase.
    pub fn title(self) -> &'static str {
        match self {
            Phase::Register => "alice, bob and carol register",
            Phase::Login => "they log in; bob updates his display name",
            Phase::Create => "alice creates the meeting",
            Phase::Join => "all three join",
            Phase::Negotiate => "WebRTC offers, answers and ICE candidates between every pair",
            Phase::LateJoiner => {
                "carol's ICE candidate for dave (invited, not joined yet) waits for his session \
                 and expires after 250 ms instead of being relayed stale"
            }
            Phase::Record => "alice starts recording",
            Phase::Media => {
                "alice's audio+video chunk goes through media and ai, carol's transcript through \
                 ai; a malformed media_transcode fails until it is a dead letter"
            }
            Phase::StopRecording => "alice stops recording; media transcodes it",
            Phase::Hangup => "everybody hangs up their peer connections",
            Phase::Leave => "everybody leaves",
            Phase::End => "alice ends the meeting",
        }
    }
}

/// The demo's users: (username, password, display name).
pub const USERS: [(&str, &str, &str); 3] = [
    ("alice", "alice-secret-1", "Alice A."),
    ("bob", "bob-secret-22", "Bob B."),
    ("carol", "carol-secret-333", "Carol C."),
];

/// The meeting the scenario holds.
pub const MEETING: &str = "weekly-sync";

/// The user whose join and first media chunk the demo traces.
pub const TRACED_USER: &str = "alice";

/// Carol's transcript for emotion detection.
pub const TRANSCRIPT: &str = "Thanks everyone, really great progress this week. \
     I am a bit worried about the launch date, but the demo works and looks good.";

const SAMPLE_RATE: u32 = 16_000;

/// Drives the scenario: dispatches the clients' tasks, plays the clients' side of the WebRTC
/// relay, and checks the ledger against the expectation table.
pub struct Scenario {
    courier: Courier,
    names: Names,
    ledger: Ledger,
    expect: Expectations,
    max_attempts: u32,
    timeout: Duration,
    clients: Vec<SubscriberHandle>,
    trace: Option<tracing::Span>,
}

impl std::fmt::Debug for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scenario")
            .field("names", &self.names)
            .field("expectations", &self.expect.rows())
            .finish_non_exhaustive()
    }
}

fn offer_sdp(user: &str) -> String {
    format!(
        "v=0\r\no={user} 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
         m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
    )
}

fn candidate(user: &str) -> String {
    let octet = 10 + user.bytes().map(u32::from).sum::<u32>() % 200;
    format!("candidate:1 1 udp 2122260223 192.0.2.{octet} 54400 typ host")
}

/// Is `me` the one who offers to `other` (the earlier name offers)?
fn offers_to(me: &str, other: &str) -> bool {
    me < other
}

impl Scenario {
    /// A scenario dispatching through `courier` (routes installed, see
    /// [`crate::topology::install`]) and checking `ledger`. Tasks failing every time are
    /// expected to be tried `max_attempts` times; each phase waits at most `timeout`.
    /// With `observer`, every event is also expected at that consumer group.
    pub fn new(
        courier: Courier,
        names: Names,
        ledger: Ledger,
        max_attempts: u32,
        timeout: Duration,
        observer: Option<String>,
    ) -> Scenario {
        Scenario {
            courier,
            names,
            ledger,
            expect: Expectations::new(observer),
            max_attempts,
            timeout,
            clients: Vec::new(),
            trace: None,
        }
    }

    /// Trace [`TRACED_USER`]'s way through the platform under `root`: her join
    /// ([`Phase::Join`]) is sent inside `root`, and her audio and video chunk
    /// ([`Phase::Media`]) inside a `stream_media` span under it. With Courier's trace
    /// propagation, every delivery these cause, in every service, joins the trace.
    pub fn trace_under(&mut self, root: tracing::Span) {
        self.trace = Some(root);
    }

    /// Stop tracing: the root span ends once no one else holds it.
    pub fn end_trace(&mut self) {
        self.trace = None;
    }

    /// The span to send `user`'s message in: a child of the trace root named `step`, the root
    /// itself when `step` is `None`; no span unless `user` is traced.
    fn span_for(&self, user: &str, step: Option<&'static str>) -> tracing::Span {
        let Some(root) = self.trace.as_ref().filter(|_| user == TRACED_USER) else {
            return tracing::Span::none();
        };
        match step {
            None => root.clone(),
            Some(step) => tracing::info_span!(
                target: "meeting_system",
                parent: root,
                "scenario.step",
                otel.name = step,
                service = %format!("client:{user}"),
            ),
        }
    }

    /// The expectation table so far.
    pub fn expectations(&self) -> &Expectations {
        &self.expect
    }

    /// The table, to expect what a caller causes besides the phases.
    pub fn expectations_mut(&mut self) -> &mut Expectations {
        &mut self.expect
    }

    async fn task<T: Serialize>(&self, from: &str, kind: &str, payload: &T) -> Result<(), String> {
        let mut msg = Message::json(kind, payload)
            .map_err(|e| e.to_string())?
            .with_header(SOURCE, from);
        if let Some(ttl) = crate::topology::task_ttl(kind) {
            msg = msg.with_ttl(ttl);
        }
        self.courier
            .dispatcher()
            .dispatch(msg)
            .await
            .map(|_| ())
            .map_err(|e| format!("dispatch {kind}: {e}"))
    }

    /// Send what the clients send in `phase`, and add what it must cause to the table.
    ///
    /// # Errors
    /// A dispatch or subscribe that failed.
    pub async fn send(&mut self, phase: Phase) -> Result<(), String> {
        let e = &mut self.expect;
        match phase {
            Phase::Register => {
                e.task("user_register", 3);
                e.event("user.registered", 3);
                e.local(ServiceKind::User, "user.activity", 3);
                for (u, p, d) in USERS {
                    let r = RegisterUser {
                        username: u.into(),
                        password: p.into(),
                        display_name: d.into(),
                    };
                    self.task("client", "user_register", &r).await?;
                }
            }
            Phase::Login => {
                e.task("user_login", 3);
                e.event("user.logged_in", 3);
                e.task("user_profile_update", 1);
                e.event("user.profile_updated", 1);
                e.local(ServiceKind::User, "user.activity", 4);
                for (u, p, _) in USERS {
                    let l = LoginUser {
                        username: u.into(),
                        password: p.into(),
                    };
                    self.task(&format!("client:{u}"), "user_login", &l).await?;
                }
                let p = UpdateProfile {
                    username: "bob".into(),
                    display_name: "Bob Builder".into(),
                };
                self.task("client:bob", "user_profile_update", &p).await?;
            }
            Phase::Create => {
                e.task("meeting_create", 1);
                e.event("meeting.created", 1);
                let c = CreateMeeting {
                    meeting_id: MEETING.into(),
                    host: "alice".into(),
                    title: "Weekly sync".into(),
                };
                self.task("client:alice", "meeting_create", &c).await?;
            }
            Phase::Join => {
                e.task("meeting_user_join", 3);
                e.event("meeting.user_joined", 3);
                e.task("user_status_change", 3);
                e.event("user.status_changed", 3);
                e.local(ServiceKind::User, "user.activity", 3);
                e.local(ServiceKind::Meeting, "meeting.roster", 3);
                for (u, _, _) in USERS {
                    let j = MeetingMember {
                        meeting_id: MEETING.into(),
                        username: u.into(),
                    };
                    self.task(&format!("client:{u}"), "meeting_user_join", &j)
                        .instrument(self.span_for(u, None))
                        .await?;
                }
            }
            Phase::Negotiate => {
                let pairs = [("alice", "bob"), ("alice", "carol"), ("bob", "carol")];
                e.task("signaling_webrtc_offer", 3);
                e.task("signaling_webrtc_answer", 3);
                e.task("signaling_ice_candidate", 6);
                e.task("signaling_connection_manage", 3);
                e.event("webrtc.offer", 3);
                e.event("webrtc.answer", 3);
                e.event("webrtc.ice_candidate", 6);
                e.event("webrtc.connected", 3);
                e.local(ServiceKind::Signaling, "signaling.negotiation", 15);
                for (offerer, answerer) in pairs {
                    e.relay("webrtc.offer", answerer, 1);
                    e.relay("webrtc.answer", offerer, 1);
                    e.relay("webrtc.ice_candidate", offerer, 1);
                    e.relay("webrtc.ice_candidate", answerer, 1);
                }
                self.start_clients().await?;
                for (offerer, answerer) in pairs {
                    let o = Sdp {
                        meeting_id: MEETING.into(),
                        from: offerer.into(),
                        to: answerer.into(),
                        sdp: offer_sdp(offerer),
                    };
                    self.task(&format!("client:{offerer}"), "signaling_webrtc_offer", &o)
                        .await?;
                }
            }
            Phase::LateJoiner => {
                e.expired_task("signaling_ice_candidate", 1);
                self.late_candidate().await?;
            }
            Phase::Record => {
                e.task("media_recording_start", 1);
                e.event("recording.started", 1);
                for (u, _, _) in USERS {
                    e.relay("recording.notice", u, 1);
                }
                let r = RecordingRequest {
                    meeting_id: MEETING.into(),
                    requested_by: "alice".into(),
                };
                self.task("client:alice", "media_recording_start", &r)
                    .await?;
            }
            Phase::Media => {
                e.task("media_stream_process", 1);
                e.event("stream.processed", 1);
                e.local(ServiceKind::Media, "media.audio_chunk", 1);
                for kind in [
                    "speech_recognition",
                    "audio_denoising",
                    "video_enhancement",
                    "emotion_detection",
                ] {
                    e.task(kind, 1);
                    e.event(&format!("{kind}.completed"), 1);
                }
                e.local(ServiceKind::Ai, "ai.result", 4);
                e.dead_task("media_transcode", 1, self.max_attempts);
                let chunk = StreamChunk {
                    meeting_id: MEETING.into(),
                    username: "alice".into(),
                    sample_rate: SAMPLE_RATE,
                    samples: dsp::synth::speech_chunk(SAMPLE_RATE, 1000, (300, 700)),
                    frame: Some(dsp::synth::dim_frame(16, 12)),
                };
                self.task("client:alice", "media_stream_process", &chunk)
                    .instrument(self.span_for("alice", Some("stream_media")))
                    .await?;
                let t = TranscriptTask {
                    meeting_id: MEETING.into(),
                    username: "carol".into(),
                    text: TRANSCRIPT.into(),
                };
                self.task("client:carol", "emotion_detection", &t).await?;
                let bad = Transcode {
                    recording_id: format!("rec-{MEETING}-1"),
                    codec: BAD_CODEC.into(),
                    sample_rate: 8_000,
                };
                let msg = Message::json("media_transcode", &bad)
                    .map_err(|e| e.to_string())?
                    .with_header(SOURCE, "client")
                    .with_header(
                        NOTE,
                        format!(
                            "deliberately malformed task: codec {BAD_CODEC:?} has no encoder, \
                             so it fails on each of its {} attempts and ends in dead letters",
                            self.max_attempts
                        ),
                    );
                self.courier
                    .dispatcher()
                    .dispatch(msg)
                    .await
                    .map_err(|e| format!("dispatch media_transcode: {e}"))?;
            }
            Phase::StopRecording => {
                e.task("media_recording_stop", 1);
                e.event("recording.stopped", 1);
                for (u, _, _) in USERS {
                    e.relay("recording.notice", u, 1);
                }
                e.task("media_transcode", 1);
                e.event("transcode.completed", 1);
                let r = RecordingRequest {
                    meeting_id: MEETING.into(),
                    requested_by: "alice".into(),
                };
                self.task("client:alice", "media_recording_stop", &r)
                    .await?;
            }
            Phase::Hangup => {
                e.task("signaling_connection_manage", 3);
                e.event("webrtc.disconnected", 3);
                e.local(ServiceKind::Signaling, "signaling.negotiation", 3);
                for (u, _, _) in USERS {
                    let c = ConnectionManage {
                        meeting_id: MEETING.into(),
                        from: u.into(),
                        to: None,
                        action: "disconnected".into(),
                    };
                    self.task(&format!("client:{u}"), "signaling_connection_manage", &c)
                        .await?;
                }
            }
            Phase::Leave => {
                e.task("meeting_user_leave", 3);
                e.event("meeting.user_left", 3);
                e.task("user_status_change", 3);
                e.event("user.status_changed", 3);
                e.local(ServiceKind::User, "user.activity", 3);
                e.local(ServiceKind::Meeting, "meeting.roster", 3);
                for (u, _, _) in USERS {
                    let l = MeetingMember {
                        meeting_id: MEETING.into(),
                        username: u.into(),
                    };
                    self.task(&format!("client:{u}"), "meeting_user_leave", &l)
                        .await?;
                }
            }
            Phase::End => {
                e.task("meeting_end", 1);
                e.event("meeting.ended", 1);
                let end = EndMeeting {
                    meeting_id: MEETING.into(),
                    by: "alice".into(),
                };
                self.task("client:alice", "meeting_end", &end).await?;
            }
        }
        Ok(())
    }

    /// carol's candidate for dave, with a 250 ms expiry of its own: signaling retries it while
    /// dave has no session (every 100 ms; its own max_attempts is far above that), then the
    /// receive that reaches it after 250 ms expires it. The queue reports the expiry (stats
    /// `expired`, and the dead letter when dead letters are on); the timeline gets it from
    /// there, since no handler ran.
    async fn late_candidate(&mut self) -> Result<(), String> {
        let ttl = Duration::from_millis(250);
        let ice = Ice {
            meeting_id: MEETING.into(),
            from: "carol".into(),
            to: "dave".into(),
            candidate: candidate("carol"),
        };
        let msg = Message::json("signaling_ice_candidate", &ice)
            .map_err(|e| e.to_string())?
            .with_header(SOURCE, "client:carol")
            .with_ttl(ttl)
            // Retried for as long as it is worth anything: its expiry, not the queue's
            // attempts, ends it (a queue with few attempts would dead-letter it first).
            .with_max_attempts(1_000);
        let id = msg.id;
        self.courier
            .dispatcher()
            .dispatch(msg)
            .await
            .map_err(|e| format!("dispatch signaling_ice_candidate: {e}"))?;
        let q = self.names.queue(ServiceKind::Signaling);
        let deadline = Instant::now() + self.timeout;
        loop {
            let st = self
                .courier
                .queue()
                .stats(&q)
                .await
                .map_err(|e| format!("stats of {q}: {e}"))?;
            if st.expired > 0 {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the candidate for dave did not expire in {q}: {st:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let dead = self.courier.queue().dead_letter(&q, id).await.ok();
        let mut entry = Entry::now(
            Channel::Task,
            "client:carol",
            "signaling_ice_candidate",
            ServiceKind::Signaling.name(),
            dead.as_ref().map_or(1, |d| d.attempts),
            Outcome::Expired(format!(
                "{} ms after publish, dave never had a session",
                ttl.as_millis()
            )),
            match &dead {
                Some(d) => format!("dead letter, reason {:?}", d.error),
                None => "dropped (dead letters off)".into(),
            },
        );
        if let Some(d) = &dead {
            entry.at_ms = d.failed_at;
        }
        self.ledger.push(entry);
        Ok(())
    }

    /// Subscribe each user's client to its signal channel. A client answers offers (answer +
    /// its ICE candidate), sends its candidate on an answer, and, as the offerer, reports the
    /// connection once the answerer's candidate arrived.
    async fn start_clients(&mut self) -> Result<(), String> {
        for (me, _, _) in USERS {
            let channel = self.names.signal_channel(MEETING, me);
            let courier = self.courier.clone();
            let ledger = self.ledger.clone();
            let handle = Subscriber::builder(self.courier.pubsub().clone(), &channel)
                .handler(move |m: Message| {
                    let (courier, ledger) = (courier.clone(), ledger.clone());
                    async move { client_reacts(&courier, &ledger, me, m).await }
                })
                .start()
                .await
                .map_err(|e| format!("subscribe {channel}: {e}"))?;
            self.clients.push(handle);
        }
        Ok(())
    }

    /// Wait (bounded) until the ledger shows every expectation so far.
    ///
    /// # Errors
    /// What is still missing when the time is up.
    pub async fn wait(&self) -> Result<(), Vec<Shortfall>> {
        self.wait_for(self.timeout).await
    }

    /// As [`Scenario::wait`] with an explicit bound.
    ///
    /// # Errors
    /// What is still missing when the time is up.
    pub async fn wait_for(&self, timeout: Duration) -> Result<(), Vec<Shortfall>> {
        let expect = &self.expect;
        let met = self
            .ledger
            .wait_until(timeout, |entries| expect.shortfalls(entries).is_empty())
            .await;
        if met {
            Ok(())
        } else {
            Err(self.expect.shortfalls(&self.ledger.entries()))
        }
    }

    /// Stop the clients' subscriptions.
    pub async fn close(&mut self) {
        for c in self.clients.drain(..) {
            c.stop().await;
        }
    }
}

/// One client's reaction to a relayed message on its signal channel.
async fn client_reacts(
    courier: &Courier,
    ledger: &Ledger,
    me: &'static str,
    m: Message,
) -> courier::HandlerResult {
    let relay: Relay = m.decode()?;
    let from = m.header(SOURCE).unwrap_or("unknown").to_string();
    let body: String = relay
        .body
        .lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(48)
        .collect();
    ledger.push(Entry::now(
        Channel::Signal,
        from,
        m.kind.clone(),
        format!("client:{me}"),
        1,
        Outcome::Ok,
        format!("from {}: {body}", relay.from),
    ));
    let source = format!("client:{me}");
    let send = |payload: Result<Message, courier::Error>| {
        let source = source.clone();
        async move {
            let mut msg = payload?.with_header(SOURCE, source);
            if let Some(ttl) = crate::topology::task_ttl(&msg.kind) {
                msg = msg.with_ttl(ttl);
            }
            courier.dispatcher().dispatch(msg).await.map(|_| ())
        }
    };
    let peer = relay.from.clone();
    match m.kind.as_str() {
        "webrtc.offer" => {
            let answer = Sdp {
                meeting_id: relay.meeting_id.clone(),
                from: me.into(),
                to: peer.clone(),
                sdp: offer_sdp(me),
            };
            send(Message::json("signaling_webrtc_answer", &answer)).await?;
            let ice = Ice {
                meeting_id: relay.meeting_id,
                from: me.into(),
                to: peer,
                candidate: candidate(me),
            };
            send(Message::json("signaling_ice_candidate", &ice)).await?;
        }
        "webrtc.answer" => {
            let ice = Ice {
                meeting_id: relay.meeting_id,
                from: me.into(),
                to: peer,
                candidate: candidate(me),
            };
            send(Message::json("signaling_ice_candidate", &ice)).await?;
        }
        "webrtc.ice_candidate" if offers_to(me, &peer) => {
            let c = ConnectionManage {
                meeting_id: relay.meeting_id,
                from: me.into(),
                to: Some(peer),
                action: "connected".into(),
            };
            send(Message::json("signaling_connection_manage", &c)).await?;
        }
        _ => {}
    }
    Ok(())
}

// ------------------------------------------------------------------ the demo

/// What a demo run produced.
#[derive(Debug, Clone)]
pub struct DemoReport {
    /// Every expectation met.
    pub passed: bool,
    /// The printable report (timeline, stats, state, verdict).
    pub text: String,
    /// What was missing, if anything.
    pub shortfalls: Vec<Shortfall>,
    /// Stats of every service queue.
    pub queues: Vec<(String, QueueStats)>,
    /// Dead letters across all consumer groups.
    pub group_dead_letters: u64,
    /// Rows and deliveries in the expectation table.
    pub expected: (usize, usize),
}

/// Run the five services in this process on the configured backend and play the scenario.
/// `timeout` bounds each phase's wait.
///
/// With the `otel` feature the report ends with the trace of [`TRACED_USER`]'s join and media
/// chunk, recorded in process: if no `tracing` subscriber is set up yet, this installs the
/// collecting one of [`crate::telemetry::trace::collector`] for the rest of the process.
///
/// # Errors
/// The backend cannot be reached or the configuration is invalid. A scenario that does not
/// complete is not an error: see [`DemoReport::passed`].
pub async fn run_demo(settings: &Settings, timeout: Duration) -> courier::Result<DemoReport> {
    let mut settings = settings.clone();
    let url = settings
        .backend_url()
        .map_err(|e| courier::Error::invalid(e.0))?;
    if crate::config::is_shared(&url) && settings.message_queue.namespace.is_empty() {
        // A durable backend keeps what earlier runs left: a fresh namespace keeps runs apart.
        settings.message_queue.namespace = format!("demo-{:08x}", rand::random::<u32>());
    }
    let ledger = Ledger::new(false);
    let platform = Platform::connect(&settings, ledger.clone()).await?;
    let names = platform.names().clone();
    let config = platform.queue_config();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "meeting-system demo on {} ({}), namespace {}",
        platform.courier().backend_name(),
        courier::redact_url(&url),
        names.namespace().unwrap_or("(none)")
    );
    let _ = writeln!(
        out,
        "queues: {}; {} worker(s) each; {} retries ({} attempts), backoff {} ms doubling; \
         dead letters {}",
        ServiceKind::ALL
            .iter()
            .map(|s| format!("{} ({})", names.queue(*s), s.priority()))
            .collect::<Vec<_>>()
            .join(", "),
        settings.message_queue.workers,
        config.retry.max_attempts.saturating_sub(1),
        config.retry.max_attempts,
        config.retry.base.as_millis(),
        if config.dead_letter { "on" } else { "off" },
    );
    let running = platform.start_all(&ServiceKind::ALL).await?;
    let _ = writeln!(out, "\n== phases");
    let mut scenario = Scenario::new(
        platform.courier().clone(),
        names.clone(),
        ledger.clone(),
        config.retry.max_attempts,
        timeout,
        None,
    );
    let trace = DemoTrace::start();
    scenario.trace_under(trace.root.clone());
    let mut shortfalls = Vec::new();
    let started = Instant::now();
    for (i, phase) in Phase::ALL.into_iter().enumerate() {
        let t0 = Instant::now();
        if let Err(e) = scenario.send(phase).await {
            shortfalls.push(Shortfall {
                what: format!("phase {phase:?} could not be sent: {e}"),
                expected: 1,
                got: 0,
            });
            break;
        }
        let result = scenario.wait().await;
        let _ = writeln!(
            out,
            "{:>2}. {:<14} {:>6} ms  {}",
            i + 1,
            format!("{phase:?}"),
            t0.elapsed().as_millis(),
            phase.title()
        );
        if let Err(missing) = result {
            let _ = writeln!(out, "    timed out after {} s", timeout.as_secs_f64());
            shortfalls = missing;
            break;
        }
        if phase == Phase::Leave {
            scenario.close().await;
        }
        if phase == Phase::Media {
            scenario.end_trace();
        }
    }
    scenario.end_trace();
    scenario.close().await;
    let elapsed = started.elapsed();

    // Let the workers settle their last acks before reading the counters.
    let queues: Vec<String> = ServiceKind::ALL.iter().map(|s| names.queue(*s)).collect();
    let settle_deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut busy = false;
        for q in &queues {
            let s = platform.courier().queue().stats(q).await?;
            busy |= s.ready_total() + s.delayed + s.in_flight > 0;
        }
        if !busy || Instant::now() > settle_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let _ = writeln!(
        out,
        "\n== timeline (ms from start: sender, channel, task kind / topic / relay, receiver, outcome | what the handler did)"
    );
    out.push_str(&ledger.timeline());

    let _ = writeln!(out, "\n== queues");
    let w = queues.iter().map(String::len).max().unwrap_or(5).max(5);
    let _ = writeln!(
        out,
        "{:<w$} {:>9} {:>9} {:>6} {:>8} {:>14} {:>8} {:>5} {:>6}",
        "queue",
        "priority",
        "published",
        "acked",
        "retried",
        "dead-lettered",
        "expired",
        "dead",
        "ready"
    );
    let mut stats = Vec::new();
    for s in ServiceKind::ALL {
        let q = names.queue(s);
        let st = platform.courier().queue().stats(&q).await?;
        let _ = writeln!(
            out,
            "{q:<w$} {:>9} {:>9} {:>6} {:>8} {:>14} {:>8} {:>5} {:>6}",
            s.priority().to_string(),
            st.published,
            st.acked,
            st.retried,
            st.dead_lettered,
            st.expired,
            st.dead,
            st.ready_total() + st.delayed + st.in_flight
        );
        stats.push((q, st));
    }
    let _ = writeln!(out, "\n== dead letters");
    for (q, st) in &stats {
        if st.dead == 0 {
            continue;
        }
        for d in platform.courier().queue().dead_letters_all(q, 20).await? {
            let _ = writeln!(
                out,
                "{q}: {} from {} after {} attempt(s): {}",
                d.message.kind,
                d.message.header(SOURCE).unwrap_or("?"),
                d.attempts,
                d.error
            );
        }
    }
    let mut group_dead = 0;
    let mut subscriptions = 0;
    for s in ServiceKind::ALL {
        for t in s.subscribes() {
            let g = platform
                .courier()
                .events()
                .group_stats(&names.topic(t), s.name())
                .await?;
            group_dead += g.queue.dead;
            subscriptions += 1;
        }
    }
    let _ = writeln!(
        out,
        "consumer groups: {group_dead} dead letter(s) across {subscriptions} (topic, group) subscriptions"
    );

    let _ = writeln!(out, "\n== service state");
    for r in &running {
        let (tasks, events) = r.stats();
        let _ = writeln!(
            out,
            "{:<9} tasks {} ok / {} retried / {} dead, events {} ok | {}",
            r.service().name(),
            tasks.succeeded,
            tasks.retried,
            tasks.dead,
            events.succeeded,
            r.summary()
        );
    }
    for r in running {
        r.stop(Duration::from_secs(2)).await;
    }
    out.push_str(&trace.finish());

    let entries = ledger.entries();
    let expect = scenario.expectations();
    let expected = (expect.rows(), expect.total());
    let _ = writeln!(
        out,
        "\n== expectations: {} row(s), {} delivery(ies); ledger holds {} record(s); scenario took {} ms",
        expected.0,
        expected.1,
        entries.len(),
        elapsed.as_millis()
    );
    let surplus = expect.surplus(&entries);
    if !surplus.is_empty() {
        let _ = writeln!(
            out,
            "more than expected (at-least-once redeliveries; not a failure):"
        );
        for s in &surplus {
            let _ = writeln!(out, "  {s}");
        }
    }
    if shortfalls.is_empty() {
        shortfalls = expect.shortfalls(&entries);
    }
    let media_dead = stats
        .iter()
        .find(|(q, _)| *q == names.queue(ServiceKind::Media))
        .map_or(0, |(_, s)| s.dead_lettered);
    if media_dead == 0 {
        shortfalls.push(Shortfall {
            what: format!("dead-lettered count of {}", names.queue(ServiceKind::Media)),
            expected: 1,
            got: 0,
        });
    }
    let passed = shortfalls.is_empty();
    if passed {
        let _ = writeln!(
            out,
            "PASS: every expected task ran, every expected event reached every subscribed service, \
             every relay reached its client, and the malformed task is a dead letter"
        );
    } else {
        let _ = writeln!(out, "FAIL: when the wait ended, the ledger was missing:");
        let now_missing = expect.shortfalls(&entries);
        for s in &shortfalls {
            let late = !now_missing.iter().any(|m| m.what == s.what)
                && !s.what.starts_with("dead-lettered")
                && !s.what.starts_with("phase ");
            let tag = if late {
                " (arrived after the deadline)"
            } else {
                ""
            };
            let _ = writeln!(out, "  {s}{tag}");
        }
        let _ = writeln!(out, "expectation table:\n{}", expect.table());
    }
    Ok(DemoReport {
        passed,
        text: out,
        shortfalls,
        queues: stats,
        group_dead_letters: group_dead,
        expected,
    })
}

/// The demo's trace: a root span around [`TRACED_USER`]'s join, and the in-process collector
/// that keeps its spans.
struct DemoTrace {
    root: tracing::Span,
    #[cfg(feature = "otel")]
    watch: Result<
        (
            crate::telemetry::trace::Collector,
            opentelemetry::trace::TraceId,
        ),
        String,
    >,
}

impl DemoTrace {
    fn start() -> DemoTrace {
        #[cfg(feature = "otel")]
        let collector = crate::telemetry::trace::collector().map_err(|e| e.to_string());
        let root = tracing::info_span!(
            target: "meeting_system",
            "join_meeting",
            service = %format!("client:{TRACED_USER}"),
            user = TRACED_USER,
            meeting = MEETING,
        );
        #[cfg(feature = "otel")]
        let watch = collector.and_then(|c| match c.watch(&root) {
            Some(id) => Ok((c, id)),
            None => Err("the root span is not recorded by OpenTelemetry".to_string()),
        });
        DemoTrace {
            root,
            #[cfg(feature = "otel")]
            watch,
        }
    }

    /// End the root span and render the trace: the section of the report.
    fn finish(self) -> String {
        let title =
            format!("{TRACED_USER} joins {MEETING}, then her audio and video go to media and ai");
        drop(self.root);
        #[cfg(feature = "otel")]
        match self.watch {
            Ok((collector, id)) => {
                let tree = crate::telemetry::trace::render(&collector.take(id));
                format!(
                    "\n== trace: {title} (trace {id}, {} span(s); ran in: {})\n{}",
                    tree.spans,
                    tree.services.join(", "),
                    tree.text
                )
            }
            Err(why) => format!("\n== trace: {title}\nnot recorded: {why}\n"),
        }
        #[cfg(not(feature = "otel"))]
        format!("\n== trace: {title}\nnot recorded: built without the `otel` feature\n")
    }
}
