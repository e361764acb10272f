//! The signaling service: WebRTC negotiation between participants. Offers, answers and ICE
//! candidates arrive as tasks, are checked against the meeting's signaling sessions, relayed
//! live over pub/sub to the peer's channel `signal.<meeting>.<user>`, and announced as events.

use std::collections::BTreeMap;
use std::time::Duration;

use courier::{HandlerError, Message};
use parking_lot::Mutex;

use super::{Ctx, Handled, unhandled};
use crate::ledger::now_ms;
use crate::protocol::{
    ConnectionManage, Disconnected, Ice, MeetingCreated, MeetingEnded, Negotiation, PeerEvent,
    RecordingStarted, RecordingStopped, Relay, RosterChange, Sdp,
};

const NOT_YET: Duration = Duration::from_millis(100);

#[derive(Default)]
struct Pair {
    offerer: String,
    offer: bool,
    answer: bool,
    candidates: u32,
    connected: bool,
}

#[derive(Default)]
struct Room {
    /// Participant → when their signaling session opened.
    sessions: BTreeMap<String, u64>,
    /// Unordered participant pair (a < b) → negotiation state.
    pairs: BTreeMap<(String, String), Pair>,
}

#[derive(Default)]
struct State {
    rooms: BTreeMap<String, Room>,
    /// The monitor component's view (fed by the local bus): steps per kind.
    steps: BTreeMap<String, u32>,
    relayed: u32,
}

fn pair_key(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_string(), b.to_string())
    } else {
        (b.to_string(), a.to_string())
    }
}

/// Check an SDP blob: version line first, at least one media section.
fn check_sdp(sdp: &str) -> Result<usize, HandlerError> {
    let mut lines = sdp.lines().map(str::trim);
    if lines.next() != Some("v=0") {
        return Err(HandlerError::permanent("SDP must start with \"v=0\""));
    }
    let media = sdp.lines().filter(|l| l.starts_with("m=")).count();
    if media == 0 {
        return Err(HandlerError::permanent("SDP has no media section (m=)"));
    }
    Ok(media)
}

/// Parse an ICE candidate line (RFC 8839):
/// `candidate:<foundation> <component> <transport> <priority> <address> <port> typ <type> ...`.
/// Returns "transport type address:port".
fn parse_candidate(c: &str) -> Result<String, HandlerError> {
    let bad = |why: &str| HandlerError::permanent(format!("bad ICE candidate {c:?}: {why}"));
    let body = c
        .strip_prefix("candidate:")
        .ok_or_else(|| bad("missing \"candidate:\""))?;
    let f: Vec<&str> = body.split_whitespace().collect();
    if f.len() < 8 {
        return Err(bad("too few fields"));
    }
    f[1].parse::<u8>().map_err(|_| bad("component"))?;
    let transport = f[2].to_ascii_lowercase();
    if transport != "udp" && transport != "tcp" {
        return Err(bad("transport must be udp or tcp"));
    }
    f[3].parse::<u32>().map_err(|_| bad("priority"))?;
    let addr: std::net::IpAddr = f[4].parse().map_err(|_| bad("address"))?;
    let port: u16 = f[5].parse().map_err(|_| bad("port"))?;
    if f[6] != "typ" || !["host", "srflx", "prflx", "relay"].contains(&f[7]) {
        return Err(bad("typ"));
    }
    Ok(format!("{transport} {} {addr}:{port}", f[7]))
}

pub(crate) struct SignalingService {
    ctx: Ctx,
    state: Mutex<State>,
}

impl SignalingService {
    pub(crate) fn new(ctx: Ctx) -> Self {
        SignalingService {
            ctx,
            state: Mutex::new(State::default()),
        }
    }

    pub(crate) async fn task(&self, kind: &str, m: Message) -> Handled {
        match kind {
            "signaling_webrtc_offer" => self.offer(m.decode()?).await,
            "signaling_webrtc_answer" => self.answer(m.decode()?).await,
            "signaling_ice_candidate" => self.ice(m.decode()?).await,
            "signaling_connection_manage" => self.manage(m.decode()?).await,
            other => Err(unhandled(self.ctx.service, other)),
        }
    }

    /// Both parties must have an open signaling session (opened on `meeting.user_joined`).
    fn check_sessions(&self, meeting: &str, from: &str, to: &str) -> Result<(), HandlerError> {
        if from == to {
            return Err(HandlerError::permanent(format!(
                "{from} cannot signal itself"
            )));
        }
        let st = self.state.lock();
        let room = st.rooms.get(meeting);
        for who in [from, to] {
            if !room.is_some_and(|r| r.sessions.contains_key(who)) {
                return Err(HandlerError::retry_after(
                    NOT_YET,
                    format!(
                        "{who} has no signaling session in {meeting} (waiting for meeting.user_joined)"
                    ),
                ));
            }
        }
        Ok(())
    }

    async fn relay_and_announce(
        &self,
        meeting: &str,
        from: &str,
        to: &str,
        step: &'static str,
        body: String,
        detail: String,
    ) -> Result<usize, HandlerError> {
        let receivers = self
            .ctx
            .relay(
                meeting,
                to,
                step,
                &Relay {
                    meeting_id: meeting.into(),
                    from: from.into(),
                    body,
                },
            )
            .await?;
        self.state.lock().relayed += 1;
        self.ctx
            .emit(
                step,
                &PeerEvent {
                    meeting_id: meeting.into(),
                    from: from.into(),
                    to: to.into(),
                    detail,
                },
            )
            .await?;
        self.ctx
            .emit_local(
                "signaling.negotiation",
                &Negotiation {
                    meeting_id: meeting.into(),
                    from: from.into(),
                    to: to.into(),
                    step: step.into(),
                },
            )
            .await?;
        Ok(receivers)
    }

    async fn offer(&self, o: Sdp) -> Handled {
        let media = check_sdp(&o.sdp)?;
        self.check_sessions(&o.meeting_id, &o.from, &o.to)?;
        {
            let mut st = self.state.lock();
            let room = st.rooms.entry(o.meeting_id.clone()).or_default();
            let pair = room.pairs.entry(pair_key(&o.from, &o.to)).or_default();
            pair.offerer = o.from.clone();
            pair.offer = true;
        }
        let detail = format!("{media} media section(s), {} bytes", o.sdp.len());
        let n = self
            .relay_and_announce(
                &o.meeting_id,
                &o.from,
                &o.to,
                "webrtc.offer",
                o.sdp,
                detail.clone(),
            )
            .await?;
        Ok(format!(
            "offer {} -> {} ({detail}) relayed to {n} subscriber(s)",
            o.from, o.to
        ))
    }

    async fn answer(&self, a: Sdp) -> Handled {
        let media = check_sdp(&a.sdp)?;
        self.check_sessions(&a.meeting_id, &a.from, &a.to)?;
        {
            let mut st = self.state.lock();
            let room = st.rooms.entry(a.meeting_id.clone()).or_default();
            let pair = room.pairs.entry(pair_key(&a.from, &a.to)).or_default();
            if !(pair.offer && pair.offerer == a.to) {
                return Err(HandlerError::retry_after(
                    NOT_YET,
                    format!("no offer from {} to {} seen yet", a.to, a.from),
                ));
            }
            pair.answer = true;
        }
        let detail = format!("{media} media section(s), {} bytes", a.sdp.len());
        let n = self
            .relay_and_announce(
                &a.meeting_id,
                &a.from,
                &a.to,
                "webrtc.answer",
                a.sdp,
                detail.clone(),
            )
            .await?;
        Ok(format!(
            "answer {} -> {} ({detail}) relayed to {n} subscriber(s)",
            a.from, a.to
        ))
    }

    async fn ice(&self, c: Ice) -> Handled {
        let parsed = parse_candidate(&c.candidate)?;
        self.check_sessions(&c.meeting_id, &c.from, &c.to)?;
        {
            let mut st = self.state.lock();
            let room = st.rooms.entry(c.meeting_id.clone()).or_default();
            let pair = room.pairs.entry(pair_key(&c.from, &c.to)).or_default();
            if !pair.offer {
                return Err(HandlerError::retry_after(
                    NOT_YET,
                    format!("no offer between {} and {} yet", c.from, c.to),
                ));
            }
            pair.candidates += 1;
        }
        let n = self
            .relay_and_announce(
                &c.meeting_id,
                &c.from,
                &c.to,
                "webrtc.ice_candidate",
                c.candidate,
                parsed.clone(),
            )
            .await?;
        Ok(format!(
            "candidate {} -> {} ({parsed}) relayed to {n} subscriber(s)",
            c.from, c.to
        ))
    }

    async fn manage(&self, c: ConnectionManage) -> Handled {
        match c.action.as_str() {
            "connected" => {
                let to = c.to.clone().ok_or_else(|| {
                    HandlerError::permanent("action \"connected\" needs a peer (\"to\")")
                })?;
                self.check_sessions(&c.meeting_id, &c.from, &to)?;
                {
                    let mut st = self.state.lock();
                    let room = st.rooms.entry(c.meeting_id.clone()).or_default();
                    let pair = room.pairs.entry(pair_key(&c.from, &to)).or_default();
                    if !(pair.offer && pair.answer) {
                        return Err(HandlerError::retry_after(
                            NOT_YET,
                            format!("{} and {to} have not finished offer/answer", c.from),
                        ));
                    }
                    pair.connected = true;
                }
                self.ctx
                    .emit(
                        "webrtc.connected",
                        &PeerEvent {
                            meeting_id: c.meeting_id.clone(),
                            from: c.from.clone(),
                            to: to.clone(),
                            detail: "ice connected".into(),
                        },
                    )
                    .await?;
                self.negotiation(&c.meeting_id, &c.from, &to, "connected")
                    .await?;
                Ok(format!("{} <-> {to} connected", c.from))
            }
            "disconnected" => {
                let peers: Vec<String> = {
                    let mut st = self.state.lock();
                    let room = st.rooms.entry(c.meeting_id.clone()).or_default();
                    let mut peers = Vec::new();
                    for ((a, b), pair) in room.pairs.iter_mut() {
                        let other = if *a == c.from {
                            b
                        } else if *b == c.from {
                            a
                        } else {
                            continue;
                        };
                        if c.to.as_ref().is_some_and(|t| t != other) {
                            continue;
                        }
                        if pair.connected {
                            pair.connected = false;
                            peers.push(other.clone());
                        }
                    }
                    peers
                };
                self.ctx
                    .emit(
                        "webrtc.disconnected",
                        &Disconnected {
                            meeting_id: c.meeting_id.clone(),
                            username: c.from.clone(),
                            peers: peers.clone(),
                        },
                    )
                    .await?;
                self.negotiation(&c.meeting_id, &c.from, "*", "disconnected")
                    .await?;
                Ok(format!(
                    "{} hung up on {} peer(s): {peers:?}",
                    c.from,
                    peers.len()
                ))
            }
            other => Err(HandlerError::permanent(format!(
                "unknown connection action {other:?} (expected connected or disconnected)"
            ))),
        }
    }

    async fn negotiation(
        &self,
        meeting: &str,
        from: &str,
        to: &str,
        step: &str,
    ) -> Result<(), HandlerError> {
        self.ctx
            .emit_local(
                "signaling.negotiation",
                &Negotiation {
                    meeting_id: meeting.into(),
                    from: from.into(),
                    to: to.into(),
                    step: step.into(),
                },
            )
            .await
    }

    async fn notify_participants(&self, meeting: &str, body: String) -> Handled {
        let participants: Vec<String> = self
            .state
            .lock()
            .rooms
            .get(meeting)
            .map(|r| r.sessions.keys().cloned().collect())
            .unwrap_or_default();
        for p in &participants {
            self.ctx
                .relay(
                    meeting,
                    p,
                    "recording.notice",
                    &Relay {
                        meeting_id: meeting.into(),
                        from: "media".into(),
                        body: body.clone(),
                    },
                )
                .await?;
        }
        Ok(format!(
            "told {} participant(s): {body}",
            participants.len()
        ))
    }

    pub(crate) async fn event(&self, topic: &str, m: Message) -> Handled {
        match topic {
            "recording.started" => {
                let e: RecordingStarted = m.decode()?;
                return self
                    .notify_participants(
                        &e.meeting_id,
                        format!("recording started ({})", e.recording_id),
                    )
                    .await;
            }
            "recording.stopped" => {
                let e: RecordingStopped = m.decode()?;
                return self
                    .notify_participants(
                        &e.meeting_id,
                        format!("recording stopped ({})", e.recording_id),
                    )
                    .await;
            }
            _ => {}
        }
        let mut st = self.state.lock();
        match topic {
            "meeting.created" => {
                let e: MeetingCreated = m.decode()?;
                st.rooms.entry(e.meeting_id.clone()).or_default();
                Ok(format!("signaling room {} ready", e.meeting_id))
            }
            "meeting.user_joined" => {
                let e: RosterChange = m.decode()?;
                let room = st.rooms.entry(e.meeting_id.clone()).or_default();
                room.sessions
                    .entry(e.username.clone())
                    .or_insert_with(now_ms);
                Ok(format!(
                    "session opened for {} in {} ({} open)",
                    e.username,
                    e.meeting_id,
                    room.sessions.len()
                ))
            }
            "meeting.user_left" => {
                let e: RosterChange = m.decode()?;
                let room = st.rooms.entry(e.meeting_id.clone()).or_default();
                room.sessions.remove(&e.username);
                room.pairs
                    .retain(|(a, b), _| *a != e.username && *b != e.username);
                Ok(format!(
                    "session of {} in {} closed ({} open)",
                    e.username,
                    e.meeting_id,
                    room.sessions.len()
                ))
            }
            "meeting.ended" => {
                let e: MeetingEnded = m.decode()?;
                let closed = st
                    .rooms
                    .remove(&e.meeting_id)
                    .map(|r| r.sessions.len())
                    .unwrap_or(0);
                Ok(format!(
                    "room {} dropped ({closed} session(s) closed)",
                    e.meeting_id
                ))
            }
            other => Err(unhandled(self.ctx.service, other)),
        }
    }

    /// The connection monitor component, fed by the local bus.
    pub(crate) async fn local(&self, topic: &str, m: Message) -> Handled {
        if topic != "signaling.negotiation" {
            return Err(unhandled(self.ctx.service, topic));
        }
        let n: Negotiation = m.decode()?;
        let mut st = self.state.lock();
        let count = st.steps.entry(n.step.clone()).or_insert(0);
        *count += 1;
        Ok(format!(
            "monitor: {} {} -> {} in {} (#{count})",
            n.step, n.from, n.to, n.meeting_id
        ))
    }

    pub(crate) fn summary(&self) -> String {
        let st = self.state.lock();
        let rooms: Vec<String> = st
            .rooms
            .iter()
            .map(|(id, r)| {
                let connected = r.pairs.values().filter(|p| p.connected).count();
                format!(
                    "{id} ({} session(s), {} pair(s), {connected} connected)",
                    r.sessions.len(),
                    r.pairs.len()
                )
            })
            .collect();
        format!(
            "{} relay(s) sent; steps {:?}; rooms: {}",
            st.relayed,
            st.steps,
            if rooms.is_empty() {
                "none".to_string()
            } else {
                rooms.join("; ")
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_and_sdp_are_checked() {
        assert_eq!(
            parse_candidate("candidate:1 1 udp 2122260223 192.0.2.10 54400 typ host")
                .expect("valid"),
            "udp host 192.0.2.10:54400"
        );
        assert!(parse_candidate("candidate:1 1 sctp 1 192.0.2.10 1 typ host").is_err());
        assert!(parse_candidate("1 1 udp 1 192.0.2.10 1 typ host").is_err());
        assert!(parse_candidate("candidate:1 1 udp 1 not-an-ip 1 typ host").is_err());
        assert_eq!(
            check_sdp("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n")
                .expect("ok"),
            1
        );
        assert!(check_sdp("m=audio").is_err());
        assert!(check_sdp("v=0\r\n").is_err());
    }
}
