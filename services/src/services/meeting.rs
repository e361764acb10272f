//! The meeting service: meetings, their rosters, and what the other services report about
//! them (recordings, speech activity, moods, peer connections).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use courier::{HandlerError, Message};
use parking_lot::Mutex;

use super::{Ctx, Handled, unhandled, valid_token};
use crate::ledger::now_ms;
use crate::protocol::{
    ChangeStatus, CreateMeeting, Disconnected, EmotionDone, EndMeeting, MeetingCreated,
    MeetingEnded, MeetingMember, PeerEvent, ProfileUpdated, RecordingStarted, RecordingStopped,
    RosterChange, RosterSnapshot, SpeechDone, StatusChanged, TranscodeCompleted, UserLoggedIn,
    UserRegistered,
};

/// How long to wait before retrying a task that depends on an event not seen yet.
const NOT_YET: Duration = Duration::from_millis(200);

struct Person {
    display_name: String,
    logged_in: bool,
    status: String,
}

struct Participant {
    display_name: String,
    links: BTreeSet<String>,
}

struct Meeting {
    title: String,
    host: String,
    created_ms: u64,
    ended_ms: Option<u64>,
    participants: BTreeMap<String, Participant>,
    peak: usize,
    joins: u32,
    recording: Option<String>,
    recordings_ready: Vec<String>,
    speech_ms: u64,
    moods: Vec<(String, f64)>,
    negotiation_steps: u32,
}

#[derive(Default)]
struct State {
    directory: BTreeMap<String, Person>,
    meetings: BTreeMap<String, Meeting>,
    /// The analytics component's view (fed by the local bus): roster changes per meeting.
    roster_changes: BTreeMap<String, u32>,
}

pub(crate) struct MeetingService {
    ctx: Ctx,
    state: Mutex<State>,
}

impl MeetingService {
    pub(crate) fn new(ctx: Ctx) -> Self {
        MeetingService {
            ctx,
            state: Mutex::new(State::default()),
        }
    }

    pub(crate) async fn task(&self, kind: &str, m: Message) -> Handled {
        match kind {
            "meeting_create" => self.create(m.decode()?).await,
            "meeting_user_join" => self.join(m.decode()?).await,
            "meeting_user_leave" => self.leave(m.decode()?).await,
            "meeting_end" => self.end(m.decode()?).await,
            other => Err(unhandled(self.ctx.service, other)),
        }
    }

    async fn create(&self, c: CreateMeeting) -> Handled {
        if !valid_token(&c.meeting_id) {
            return Err(HandlerError::permanent(format!(
                "invalid meeting id {:?}: use 1-32 of a-z 0-9 _ -",
                c.meeting_id
            )));
        }
        let note = {
            let mut st = self.state.lock();
            match st.directory.get(&c.host) {
                Some(p) if p.logged_in => {}
                _ => {
                    return Err(HandlerError::retry_after(
                        NOT_YET,
                        format!(
                            "host {:?} not known to be logged in yet (waiting for user.logged_in)",
                            c.host
                        ),
                    ));
                }
            }
            match st.meetings.get(&c.meeting_id) {
                Some(m) if m.host == c.host => {
                    format!("{} already exists (redelivery)", c.meeting_id)
                }
                Some(_) => {
                    return Err(HandlerError::permanent(format!(
                        "meeting id {:?} is taken",
                        c.meeting_id
                    )));
                }
                None => {
                    st.meetings.insert(
                        c.meeting_id.clone(),
                        Meeting {
                            title: c.title.clone(),
                            host: c.host.clone(),
                            created_ms: now_ms(),
                            ended_ms: None,
                            participants: BTreeMap::new(),
                            peak: 0,
                            joins: 0,
                            recording: None,
                            recordings_ready: Vec::new(),
                            speech_ms: 0,
                            moods: Vec::new(),
                            negotiation_steps: 0,
                        },
                    );
                    format!("{} {:?} created, host {}", c.meeting_id, c.title, c.host)
                }
            }
        };
        self.ctx
            .emit(
                "meeting.created",
                &MeetingCreated {
                    meeting_id: c.meeting_id,
                    host: c.host,
                    title: c.title,
                },
            )
            .await?;
        Ok(note)
    }

    async fn join(&self, j: MeetingMember) -> Handled {
        let change = {
            let mut st = self.state.lock();
            let display_name = match st.directory.get(&j.username) {
                Some(p) => p.display_name.clone(),
                None => {
                    return Err(HandlerError::retry_after(
                        NOT_YET,
                        format!(
                            "user {:?} not known yet (waiting for user.registered)",
                            j.username
                        ),
                    ));
                }
            };
            let Some(m) = st.meetings.get_mut(&j.meeting_id) else {
                return Err(HandlerError::retry_after(
                    NOT_YET,
                    format!("meeting {:?} does not exist (yet)", j.meeting_id),
                ));
            };
            if m.ended_ms.is_some() {
                return Err(HandlerError::permanent(format!(
                    "meeting {:?} has ended",
                    j.meeting_id
                )));
            }
            if !m.participants.contains_key(&j.username) {
                m.joins += 1;
            }
            m.participants.insert(
                j.username.clone(),
                Participant {
                    display_name: display_name.clone(),
                    links: BTreeSet::new(),
                },
            );
            m.peak = m.peak.max(m.participants.len());
            RosterChange {
                meeting_id: j.meeting_id.clone(),
                username: j.username.clone(),
                display_name,
                participants: m.participants.len(),
            }
        };
        self.ctx.emit("meeting.user_joined", &change).await?;
        self.ctx
            .dispatch(
                "user_status_change",
                &ChangeStatus {
                    username: j.username.clone(),
                    status: "in_meeting".into(),
                    reason: format!("joined {}", j.meeting_id),
                },
            )
            .await?;
        self.roster(&j.meeting_id, change.participants).await?;
        Ok(format!(
            "{} joined {} ({} present); asked user service to mark them in_meeting",
            j.username, j.meeting_id, change.participants
        ))
    }

    async fn leave(&self, l: MeetingMember) -> Handled {
        let change = {
            let mut st = self.state.lock();
            let Some(m) = st.meetings.get_mut(&l.meeting_id) else {
                return Err(HandlerError::permanent(format!(
                    "meeting {:?} does not exist",
                    l.meeting_id
                )));
            };
            let Some(p) = m.participants.remove(&l.username) else {
                return Ok(format!(
                    "{} is not in {}; nothing to do",
                    l.username, l.meeting_id
                ));
            };
            RosterChange {
                meeting_id: l.meeting_id.clone(),
                username: l.username.clone(),
                display_name: p.display_name,
                participants: m.participants.len(),
            }
        };
        self.ctx.emit("meeting.user_left", &change).await?;
        self.ctx
            .dispatch(
                "user_status_change",
                &ChangeStatus {
                    username: l.username.clone(),
                    status: "online".into(),
                    reason: format!("left {}", l.meeting_id),
                },
            )
            .await?;
        self.roster(&l.meeting_id, change.participants).await?;
        Ok(format!(
            "{} left {} ({} present)",
            l.username, l.meeting_id, change.participants
        ))
    }

    async fn end(&self, e: EndMeeting) -> Handled {
        let ended = {
            let mut st = self.state.lock();
            let Some(m) = st.meetings.get_mut(&e.meeting_id) else {
                return Err(HandlerError::permanent(format!(
                    "meeting {:?} does not exist",
                    e.meeting_id
                )));
            };
            if m.host != e.by {
                return Err(HandlerError::permanent(format!(
                    "{} is not the host of {} and cannot end it",
                    e.by, e.meeting_id
                )));
            }
            let now = now_ms();
            let ended_ms = *m.ended_ms.get_or_insert(now);
            MeetingEnded {
                meeting_id: e.meeting_id.clone(),
                ended_by: e.by.clone(),
                duration_ms: ended_ms.saturating_sub(m.created_ms),
                peak_participants: m.peak,
                still_present: std::mem::take(&mut m.participants).into_keys().collect(),
            }
        };
        self.ctx.emit("meeting.ended", &ended).await?;
        Ok(format!(
            "{} ended by {} after {} ms, peak {} participant(s)",
            e.meeting_id, e.by, ended.duration_ms, ended.peak_participants
        ))
    }

    async fn roster(&self, meeting: &str, participants: usize) -> Result<(), HandlerError> {
        self.ctx
            .emit_local(
                "meeting.roster",
                &RosterSnapshot {
                    meeting_id: meeting.into(),
                    participants,
                },
            )
            .await
    }

    pub(crate) async fn event(&self, topic: &str, m: Message) -> Handled {
        let mut st = self.state.lock();
        let st = &mut *st;
        match topic {
            "user.registered" => {
                let e: UserRegistered = m.decode()?;
                st.directory.entry(e.username.clone()).or_insert(Person {
                    display_name: e.display_name.clone(),
                    logged_in: false,
                    status: "offline".into(),
                });
                Ok(format!(
                    "directory: {} ({}) known",
                    e.username, e.display_name
                ))
            }
            "user.logged_in" => {
                let e: UserLoggedIn = m.decode()?;
                let p = st.directory.entry(e.username.clone()).or_insert(Person {
                    display_name: e.username.clone(),
                    logged_in: false,
                    status: "offline".into(),
                });
                p.logged_in = true;
                p.status = "online".into();
                Ok(format!("directory: {} may host meetings", e.username))
            }
            "user.profile_updated" => {
                let e: ProfileUpdated = m.decode()?;
                if let Some(p) = st.directory.get_mut(&e.username) {
                    p.display_name = e.display_name.clone();
                }
                let mut renamed = 0;
                for meeting in st.meetings.values_mut() {
                    if let Some(p) = meeting.participants.get_mut(&e.username) {
                        p.display_name = e.display_name.clone();
                        renamed += 1;
                    }
                }
                Ok(format!(
                    "directory: {} is now {:?} ({renamed} roster(s) renamed)",
                    e.username, e.display_name
                ))
            }
            "user.status_changed" => {
                let e: StatusChanged = m.decode()?;
                if let Some(p) = st.directory.get_mut(&e.username) {
                    p.status = e.to.clone();
                }
                Ok(format!("directory: {} is {}", e.username, e.to))
            }
            "speech_recognition.completed" => {
                let e: SpeechDone = m.decode()?;
                let meeting = st.meetings.get_mut(&e.meeting_id);
                Ok(match meeting {
                    Some(mt) => {
                        mt.speech_ms += e.vad.speech_ms;
                        format!("{}: {} ms of speech so far", e.meeting_id, mt.speech_ms)
                    }
                    None => format!("{} unknown; ignored", e.meeting_id),
                })
            }
            "emotion_detection.completed" => {
                let e: EmotionDone = m.decode()?;
                if let Some(mt) = st.meetings.get_mut(&e.meeting_id) {
                    mt.moods.push((e.username.clone(), e.sentiment.score));
                }
                Ok(format!(
                    "{}: {} sounds {}",
                    e.meeting_id, e.username, e.sentiment.label
                ))
            }
            "recording.started" => {
                let e: RecordingStarted = m.decode()?;
                if let Some(mt) = st.meetings.get_mut(&e.meeting_id) {
                    mt.recording = Some(e.recording_id.clone());
                }
                Ok(format!(
                    "{} is being recorded ({})",
                    e.meeting_id, e.recording_id
                ))
            }
            "recording.stopped" => {
                let e: RecordingStopped = m.decode()?;
                if let Some(mt) = st.meetings.get_mut(&e.meeting_id) {
                    mt.recording = None;
                }
                Ok(format!(
                    "{}: recording {} stopped ({} ms)",
                    e.meeting_id, e.recording_id, e.duration_ms
                ))
            }
            "transcode.completed" => {
                let e: TranscodeCompleted = m.decode()?;
                if let Some(mt) = st.meetings.get_mut(&e.meeting_id) {
                    mt.recordings_ready.push(e.recording_id.clone());
                }
                Ok(format!(
                    "{}: recording {} ready as {} @ {} Hz",
                    e.meeting_id, e.recording_id, e.codec, e.sample_rate
                ))
            }
            "webrtc.offer" | "webrtc.answer" | "webrtc.ice_candidate" => {
                let e: PeerEvent = m.decode()?;
                if let Some(mt) = st.meetings.get_mut(&e.meeting_id) {
                    mt.negotiation_steps += 1;
                }
                Ok(format!(
                    "{}: {} -> {} negotiating",
                    e.meeting_id, e.from, e.to
                ))
            }
            "webrtc.connected" => {
                let e: PeerEvent = m.decode()?;
                if let Some(mt) = st.meetings.get_mut(&e.meeting_id) {
                    if let Some(p) = mt.participants.get_mut(&e.from) {
                        p.links.insert(e.to.clone());
                    }
                    if let Some(p) = mt.participants.get_mut(&e.to) {
                        p.links.insert(e.from.clone());
                    }
                }
                Ok(format!(
                    "{}: {} <-> {} connected",
                    e.meeting_id, e.from, e.to
                ))
            }
            "webrtc.disconnected" => {
                let e: Disconnected = m.decode()?;
                if let Some(mt) = st.meetings.get_mut(&e.meeting_id) {
                    for p in mt.participants.values_mut() {
                        p.links.remove(&e.username);
                    }
                    if let Some(p) = mt.participants.get_mut(&e.username) {
                        p.links.clear();
                    }
                }
                Ok(format!(
                    "{}: {} dropped {} link(s)",
                    e.meeting_id,
                    e.username,
                    e.peers.len()
                ))
            }
            other => Err(unhandled(self.ctx.service, other)),
        }
    }

    /// The analytics component, fed by the local bus.
    pub(crate) async fn local(&self, topic: &str, m: Message) -> Handled {
        if topic != "meeting.roster" {
            return Err(unhandled(self.ctx.service, topic));
        }
        let r: RosterSnapshot = m.decode()?;
        let mut st = self.state.lock();
        let n = st.roster_changes.entry(r.meeting_id.clone()).or_insert(0);
        *n += 1;
        Ok(format!(
            "analytics: {} roster change #{n}, {} present",
            r.meeting_id, r.participants
        ))
    }

    pub(crate) fn summary(&self) -> String {
        let st = self.state.lock();
        let meetings: Vec<String> = st
            .meetings
            .iter()
            .map(|(id, m)| {
                let avg_mood = if m.moods.is_empty() {
                    "n/a".to_string()
                } else {
                    format!(
                        "{:+.2}",
                        m.moods.iter().map(|(_, s)| s).sum::<f64>() / m.moods.len() as f64
                    )
                };
                format!(
                    "{id} {:?} (host {}, {}, {} join(s), peak {}, {} present, {} negotiation step(s), \
                     {} ms speech, mood {avg_mood}, recordings ready {:?}{})",
                    m.title,
                    m.host,
                    if m.ended_ms.is_some() { "ended" } else { "active" },
                    m.joins,
                    m.peak,
                    m.participants.len(),
                    m.negotiation_steps,
                    m.speech_ms,
                    m.recordings_ready,
                    m.recording
                        .as_ref()
                        .map(|r| format!(", recording {r}"))
                        .unwrap_or_default(),
                )
            })
            .collect();
        let logged_in = st.directory.values().filter(|p| p.logged_in).count();
        let statuses: Vec<String> = st
            .directory
            .iter()
            .map(|(u, p)| format!("{u}={}", p.status))
            .collect();
        format!(
            "directory {} user(s) ({logged_in} logged in; {}), {} meeting(s): {}",
            st.directory.len(),
            statuses.join(" "),
            st.meetings.len(),
            meetings.join("; ")
        )
    }
}
