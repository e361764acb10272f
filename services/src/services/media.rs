//! The media service: measures incoming audio, records meetings (the recorder component
//! collects audio from the in-process bus), transcodes recordings, and hands analysis work
//! to the ai service.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use courier::{HandlerError, Message};
use parking_lot::Mutex;

use super::{Ctx, Handled, unhandled};
use crate::dsp;
use crate::ledger::now_ms;
use crate::protocol::{
    AudioChunk, AudioTask, DenoiseDone, Disconnected, EnhanceDone, FrameTask, MeetingCreated,
    MeetingEnded, PeerEvent, RecordingRequest, RecordingStarted, RecordingStopped, RosterChange,
    StreamChunk, StreamProcessed, Transcode, TranscodeCompleted,
};

/// Codecs this node has encoders for.
const CODECS: &[&str] = &["pcm_s16le", "pcm_u8"];
/// The rate recordings are transcoded to for archiving (telephone-band speech).
const ARCHIVE_RATE: u32 = 8_000;
const NOT_YET: Duration = Duration::from_millis(200);

#[derive(Default)]
struct Room {
    open: bool,
    participants: BTreeSet<String>,
    links: usize,
    chunks: u32,
    denoise_reports: u32,
    enhance_reports: u32,
}

struct Recording {
    meeting_id: String,
    started_ms: u64,
    stopped_ms: Option<u64>,
    sample_rate: u32,
    samples: Vec<i16>,
    outputs: Vec<(String, u32, usize)>,
}

#[derive(Default)]
struct State {
    rooms: BTreeMap<String, Room>,
    recordings: BTreeMap<String, Recording>,
    /// Meeting → its active recording.
    active: BTreeMap<String, String>,
    next_recording: u32,
}

pub(crate) struct MediaService {
    ctx: Ctx,
    state: Mutex<State>,
}

fn check_rate(rate: u32) -> Result<(), HandlerError> {
    if (8_000..=48_000).contains(&rate) {
        Ok(())
    } else {
        Err(HandlerError::permanent(format!(
            "sample rate {rate} Hz outside 8000..=48000"
        )))
    }
}

impl MediaService {
    pub(crate) fn new(ctx: Ctx) -> Self {
        MediaService {
            ctx,
            state: Mutex::new(State::default()),
        }
    }

    pub(crate) async fn task(&self, kind: &str, m: Message) -> Handled {
        match kind {
            "media_stream_process" => self.stream(m.decode()?).await,
            "media_recording_start" => self.start_recording(m.decode()?).await,
            "media_recording_stop" => self.stop_recording(m.decode()?).await,
            "media_transcode" => self.transcode(m.decode()?).await,
            other => Err(unhandled(self.ctx.service, other)),
        }
    }

    async fn stream(&self, c: StreamChunk) -> Handled {
        check_rate(c.sample_rate)?;
        if c.samples.is_empty() {
            return Err(HandlerError::permanent("empty audio chunk"));
        }
        let levels = dsp::levels(&c.samples, c.sample_rate);
        let recorded = {
            let mut st = self.state.lock();
            st.rooms.entry(c.meeting_id.clone()).or_default().chunks += 1;
            st.active.contains_key(&c.meeting_id)
        };
        self.ctx
            .emit(
                "stream.processed",
                &StreamProcessed {
                    meeting_id: c.meeting_id.clone(),
                    username: c.username.clone(),
                    levels,
                    recorded,
                },
            )
            .await?;
        // The recorder component picks the audio up from the in-process bus.
        self.ctx
            .emit_local(
                "media.audio_chunk",
                &AudioChunk {
                    meeting_id: c.meeting_id.clone(),
                    sample_rate: c.sample_rate,
                    samples: c.samples.clone(),
                },
            )
            .await?;
        let audio = AudioTask {
            meeting_id: c.meeting_id.clone(),
            username: c.username.clone(),
            sample_rate: c.sample_rate,
            samples: c.samples,
        };
        self.ctx.dispatch("speech_recognition", &audio).await?;
        self.ctx.dispatch("audio_denoising", &audio).await?;
        let mut sent = vec!["speech_recognition", "audio_denoising"];
        if let Some(frame) = c.frame {
            self.ctx
                .dispatch(
                    "video_enhancement",
                    &FrameTask {
                        meeting_id: c.meeting_id.clone(),
                        username: c.username.clone(),
                        frame,
                    },
                )
                .await?;
            sent.push("video_enhancement");
        }
        Ok(format!(
            "{} ms from {}: rms {:.1} dBFS, peak {:.1} dBFS, {} clipped; sent to ai: {}",
            levels.duration_ms,
            c.username,
            levels.rms_dbfs,
            levels.peak_dbfs,
            levels.clipped,
            sent.join(", ")
        ))
    }

    async fn start_recording(&self, r: RecordingRequest) -> Handled {
        let (recording_id, note) = {
            let mut st = self.state.lock();
            if let Some(id) = st.active.get(&r.meeting_id) {
                (
                    id.clone(),
                    format!("{} already recording as {id}", r.meeting_id),
                )
            } else {
                st.next_recording += 1;
                let id = format!("rec-{}-{}", r.meeting_id, st.next_recording);
                st.recordings.insert(
                    id.clone(),
                    Recording {
                        meeting_id: r.meeting_id.clone(),
                        started_ms: now_ms(),
                        stopped_ms: None,
                        sample_rate: 0,
                        samples: Vec::new(),
                        outputs: Vec::new(),
                    },
                );
                st.active.insert(r.meeting_id.clone(), id.clone());
                let note = format!(
                    "recording {id} of {} started by {}",
                    r.meeting_id, r.requested_by
                );
                (id, note)
            }
        };
        self.ctx
            .emit(
                "recording.started",
                &RecordingStarted {
                    meeting_id: r.meeting_id,
                    recording_id,
                    requested_by: r.requested_by,
                },
            )
            .await?;
        Ok(note)
    }

    /// Close the active recording of `meeting`, if any: (id, duration ms, samples).
    fn close_recording(&self, meeting: &str) -> Option<(String, u64, usize)> {
        let mut st = self.state.lock();
        let id = st.active.remove(meeting)?;
        let rec = st.recordings.get_mut(&id)?;
        let now = now_ms();
        rec.stopped_ms = Some(now);
        let audio_ms = dsp::duration_ms(rec.samples.len(), rec.sample_rate);
        Some((id, audio_ms, rec.samples.len()))
    }

    async fn stop_recording(&self, r: RecordingRequest) -> Handled {
        let Some((recording_id, duration_ms, samples)) = self.close_recording(&r.meeting_id) else {
            return Err(HandlerError::permanent(format!(
                "{} has no active recording",
                r.meeting_id
            )));
        };
        self.ctx
            .emit(
                "recording.stopped",
                &RecordingStopped {
                    meeting_id: r.meeting_id.clone(),
                    recording_id: recording_id.clone(),
                    duration_ms,
                    samples,
                },
            )
            .await?;
        self.ctx
            .dispatch(
                "media_transcode",
                &Transcode {
                    recording_id: recording_id.clone(),
                    codec: "pcm_s16le".into(),
                    sample_rate: ARCHIVE_RATE,
                },
            )
            .await?;
        Ok(format!(
            "{recording_id} stopped: {duration_ms} ms of audio ({samples} samples); \
             queued media_transcode to pcm_s16le @ {ARCHIVE_RATE} Hz"
        ))
    }

    async fn transcode(&self, t: Transcode) -> Handled {
        if !CODECS.contains(&t.codec.as_str()) {
            // Encoders are plugins a node may load later, and another node of the pool may
            // have this one: an unknown codec is retried, and after max_retries it lands in
            // the dead letters, where an operator can inspect and requeue it.
            return Err(HandlerError::retry(format!(
                "unsupported codec {:?}: no encoder on this node (have {})",
                t.codec,
                CODECS.join(", ")
            )));
        }
        check_rate(t.sample_rate)?;
        let (meeting_id, samples, from_rate) = {
            let st = self.state.lock();
            let Some(rec) = st.recordings.get(&t.recording_id) else {
                return Err(HandlerError::retry_after(
                    NOT_YET,
                    format!("recording {} not known here (yet)", t.recording_id),
                ));
            };
            if rec.stopped_ms.is_none() {
                return Err(HandlerError::retry_after(
                    NOT_YET,
                    format!("recording {} is still running", t.recording_id),
                ));
            }
            (rec.meeting_id.clone(), rec.samples.clone(), rec.sample_rate)
        };
        let (codec, rate) = (t.codec.clone(), t.sample_rate);
        let bytes = tokio::task::spawn_blocking(move || {
            let out = if from_rate == 0 {
                Vec::new()
            } else {
                dsp::resample(&samples, from_rate, rate)
            };
            match codec.as_str() {
                "pcm_u8" => dsp::to_u8(&out).len(),
                _ => out.len() * 2,
            }
        })
        .await
        .map_err(|e| HandlerError::retry(format!("transcode task failed: {e}")))?;
        let bytes_per_sample = if t.codec == "pcm_u8" { 1 } else { 2 };
        let duration_ms = dsp::duration_ms(bytes / bytes_per_sample, t.sample_rate);
        if let Some(rec) = self.state.lock().recordings.get_mut(&t.recording_id) {
            rec.outputs.push((t.codec.clone(), t.sample_rate, bytes));
        }
        self.ctx
            .emit(
                "transcode.completed",
                &TranscodeCompleted {
                    meeting_id,
                    recording_id: t.recording_id.clone(),
                    codec: t.codec.clone(),
                    sample_rate: t.sample_rate,
                    bytes,
                    duration_ms,
                },
            )
            .await?;
        Ok(format!(
            "{}: {from_rate} Hz -> {} Hz {}, {bytes} bytes ({duration_ms} ms)",
            t.recording_id, t.sample_rate, t.codec
        ))
    }

    pub(crate) async fn event(&self, topic: &str, m: Message) -> Handled {
        match topic {
            "meeting.ended" => {
                let e: MeetingEnded = m.decode()?;
                if let Some(r) = self.state.lock().rooms.get_mut(&e.meeting_id) {
                    r.open = false;
                    r.participants.clear();
                }
                // A meeting that ends while recording stops its recording.
                if let Some((id, duration_ms, samples)) = self.close_recording(&e.meeting_id) {
                    self.ctx
                        .emit(
                            "recording.stopped",
                            &RecordingStopped {
                                meeting_id: e.meeting_id.clone(),
                                recording_id: id.clone(),
                                duration_ms,
                                samples,
                            },
                        )
                        .await?;
                    return Ok(format!("room {} closed; stopped {id}", e.meeting_id));
                }
                return Ok(format!("room {} closed", e.meeting_id));
            }
            "meeting.created"
            | "meeting.user_joined"
            | "meeting.user_left"
            | "audio_denoising.completed"
            | "video_enhancement.completed"
            | "webrtc.connected"
            | "webrtc.disconnected" => {}
            other => return Err(unhandled(self.ctx.service, other)),
        }
        let mut st = self.state.lock();
        match topic {
            "meeting.created" => {
                let e: MeetingCreated = m.decode()?;
                st.rooms.entry(e.meeting_id.clone()).or_default().open = true;
                Ok(format!("media room {} opened", e.meeting_id))
            }
            "meeting.user_joined" => {
                let e: RosterChange = m.decode()?;
                let room = st.rooms.entry(e.meeting_id.clone()).or_default();
                room.participants.insert(e.username.clone());
                Ok(format!(
                    "stream slot for {} in {} ({} slot(s))",
                    e.username,
                    e.meeting_id,
                    room.participants.len()
                ))
            }
            "meeting.user_left" => {
                let e: RosterChange = m.decode()?;
                let room = st.rooms.entry(e.meeting_id.clone()).or_default();
                room.participants.remove(&e.username);
                Ok(format!(
                    "stream slot of {} in {} freed ({} left)",
                    e.username,
                    e.meeting_id,
                    room.participants.len()
                ))
            }
            "audio_denoising.completed" => {
                let e: DenoiseDone = m.decode()?;
                st.rooms
                    .entry(e.meeting_id.clone())
                    .or_default()
                    .denoise_reports += 1;
                Ok(format!(
                    "denoised audio of {}: {}/{} frames gated, {:.1} -> {:.1} dBFS",
                    e.username, e.gated_frames, e.frames, e.before.rms_dbfs, e.after.rms_dbfs
                ))
            }
            "video_enhancement.completed" => {
                let e: EnhanceDone = m.decode()?;
                st.rooms
                    .entry(e.meeting_id.clone())
                    .or_default()
                    .enhance_reports += 1;
                Ok(format!(
                    "enhanced video of {}: mean {:.0} -> {:.0}, contrast {:.1} -> {:.1}",
                    e.username, e.before.mean, e.after.mean, e.before.std_dev, e.after.std_dev
                ))
            }
            "webrtc.connected" => {
                let e: PeerEvent = m.decode()?;
                let room = st.rooms.entry(e.meeting_id.clone()).or_default();
                room.links += 1;
                Ok(format!(
                    "forwarding {} <-> {} ({} link(s))",
                    e.from, e.to, room.links
                ))
            }
            "webrtc.disconnected" => {
                let e: Disconnected = m.decode()?;
                let room = st.rooms.entry(e.meeting_id.clone()).or_default();
                room.links = room.links.saturating_sub(e.peers.len());
                Ok(format!(
                    "stopped forwarding for {} ({} link(s) left)",
                    e.username, room.links
                ))
            }
            other => Err(unhandled(self.ctx.service, other)),
        }
    }

    /// The recorder component, fed by the local bus.
    pub(crate) async fn local(&self, topic: &str, m: Message) -> Handled {
        if topic != "media.audio_chunk" {
            return Err(unhandled(self.ctx.service, topic));
        }
        let c: AudioChunk = m.decode()?;
        let mut st = self.state.lock();
        let Some(id) = st.active.get(&c.meeting_id).cloned() else {
            return Ok(format!(
                "recorder: {} not recording; chunk skipped",
                c.meeting_id
            ));
        };
        let Some(rec) = st.recordings.get_mut(&id) else {
            return Ok(format!("recorder: {id} vanished; chunk skipped"));
        };
        if rec.sample_rate == 0 {
            rec.sample_rate = c.sample_rate;
        }
        if rec.sample_rate == c.sample_rate {
            rec.samples.extend_from_slice(&c.samples);
        } else {
            let converted = dsp::resample(&c.samples, c.sample_rate, rec.sample_rate);
            rec.samples.extend_from_slice(&converted);
        }
        Ok(format!(
            "recorder: {id} now {} ms",
            dsp::duration_ms(rec.samples.len(), rec.sample_rate)
        ))
    }

    pub(crate) fn summary(&self) -> String {
        let st = self.state.lock();
        let rooms: Vec<String> = st
            .rooms
            .iter()
            .map(|(id, r)| {
                format!(
                    "{id} ({}, {} slot(s), {} link(s), {} chunk(s), {} denoise / {} video report(s))",
                    if r.open { "open" } else { "closed" },
                    r.participants.len(),
                    r.links,
                    r.chunks,
                    r.denoise_reports,
                    r.enhance_reports
                )
            })
            .collect();
        let recs: Vec<String> = st
            .recordings
            .iter()
            .map(|(id, r)| {
                let state = match r.stopped_ms {
                    Some(t) => format!("stopped after {} ms", t.saturating_sub(r.started_ms)),
                    None => "running".into(),
                };
                format!(
                    "{id} ({} ms of audio at {} Hz, {state}, outputs {:?})",
                    dsp::duration_ms(r.samples.len(), r.sample_rate),
                    r.sample_rate,
                    r.outputs
                )
            })
            .collect();
        format!(
            "rooms: {}; recordings: {}",
            rooms.join("; "),
            recs.join("; ")
        )
    }
}
