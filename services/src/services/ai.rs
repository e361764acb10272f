//! The ai service: honest signal processing on what it is given (see [`crate::dsp`]):
//! energy-based voice activity detection, a lexicon sentiment score, a noise gate with a
//! low-pass filter, and a contrast/brightness pass on a grayscale frame. The insights
//! component collects the results per meeting from the in-process bus.

use std::collections::BTreeMap;

use courier::{HandlerError, Message};
use parking_lot::Mutex;

use super::{Ctx, Handled, unhandled};
use crate::dsp;
use crate::protocol::{
    AiResult, AudioTask, DenoiseDone, EmotionDone, EnhanceDone, FrameTask, MeetingCreated,
    MeetingEnded, RecordingStopped, SpeechDone, StreamProcessed, TranscriptTask,
};

/// Cut-off of the denoiser's low-pass: the top of the telephone speech band.
const DENOISE_CUTOFF_HZ: f64 = 3_400.0;
const MAX_TRANSCRIPT: usize = 10_000;

#[derive(Default)]
struct Insight {
    open: bool,
    speech_ms: u64,
    analysed_ms: u64,
    sentiments: Vec<f64>,
    loudest_dbfs: Option<f64>,
    results: u32,
    recordings: u32,
}

#[derive(Default)]
struct State {
    insights: BTreeMap<String, Insight>,
    tasks: BTreeMap<&'static str, u32>,
}

pub(crate) struct AiService {
    ctx: Ctx,
    state: Mutex<State>,
}

async fn cpu<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, HandlerError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| HandlerError::retry(format!("analysis task failed: {e}")))
}

fn check_audio(a: &AudioTask) -> Result<(), HandlerError> {
    if !(8_000..=48_000).contains(&a.sample_rate) {
        return Err(HandlerError::permanent(format!(
            "sample rate {} Hz outside 8000..=48000",
            a.sample_rate
        )));
    }
    if a.samples.is_empty() {
        return Err(HandlerError::permanent("no samples"));
    }
    Ok(())
}

impl AiService {
    pub(crate) fn new(ctx: Ctx) -> Self {
        AiService {
            ctx,
            state: Mutex::new(State::default()),
        }
    }

    pub(crate) async fn task(&self, kind: &str, m: Message) -> Handled {
        let note = match kind {
            "speech_recognition" => self.speech(m.decode()?).await?,
            "emotion_detection" => self.emotion(m.decode()?).await?,
            "audio_denoising" => self.denoise(m.decode()?).await?,
            "video_enhancement" => self.enhance(m.decode()?).await?,
            other => return Err(unhandled(self.ctx.service, other)),
        };
        let mut st = self.state.lock();
        if let Some(k) = self.ctx.service.tasks().iter().find(|k| **k == kind) {
            *st.tasks.entry(k).or_insert(0) += 1;
        }
        Ok(note)
    }

    async fn result(
        &self,
        meeting: &str,
        user: &str,
        analysis: &str,
        value: f64,
    ) -> Result<(), HandlerError> {
        self.ctx
            .emit_local(
                "ai.result",
                &AiResult {
                    meeting_id: meeting.into(),
                    username: user.into(),
                    analysis: analysis.into(),
                    value,
                },
            )
            .await
    }

    async fn speech(&self, a: AudioTask) -> Handled {
        check_audio(&a)?;
        let (samples, rate) = (a.samples, a.sample_rate);
        let vad = cpu(move || dsp::voice_activity(&samples, rate)).await?;
        let segments: Vec<String> = vad
            .segments
            .iter()
            .map(|s| format!("{}-{} ms", s.start_ms, s.end_ms))
            .collect();
        let note = format!(
            "energy VAD on {} ms from {}: speech {} ms in [{}] (floor {:.1} dBFS, threshold {:.1} dBFS); no transcription",
            vad.total_ms,
            a.username,
            vad.speech_ms,
            segments.join(", "),
            vad.noise_floor_dbfs,
            vad.threshold_dbfs
        );
        let speech_ms = vad.speech_ms;
        self.ctx
            .emit(
                "speech_recognition.completed",
                &SpeechDone {
                    meeting_id: a.meeting_id.clone(),
                    username: a.username.clone(),
                    vad,
                },
            )
            .await?;
        self.result(&a.meeting_id, &a.username, "speech_ms", speech_ms as f64)
            .await?;
        Ok(note)
    }

    async fn emotion(&self, t: TranscriptTask) -> Handled {
        if t.text.trim().is_empty() {
            return Err(HandlerError::permanent("empty transcript"));
        }
        if t.text.len() > MAX_TRANSCRIPT {
            return Err(HandlerError::permanent(format!(
                "transcript of {} bytes exceeds {MAX_TRANSCRIPT}",
                t.text.len()
            )));
        }
        let s = dsp::sentiment(&t.text);
        let note = format!(
            "lexicon sentiment of {}'s {} words: {} ({:+.2}) from {:?}",
            t.username, s.words, s.label, s.score, s.matched
        );
        let score = s.score;
        self.ctx
            .emit(
                "emotion_detection.completed",
                &EmotionDone {
                    meeting_id: t.meeting_id.clone(),
                    username: t.username.clone(),
                    sentiment: s,
                },
            )
            .await?;
        self.result(&t.meeting_id, &t.username, "sentiment", score)
            .await?;
        Ok(note)
    }

    async fn denoise(&self, a: AudioTask) -> Handled {
        check_audio(&a)?;
        let (samples, rate) = (a.samples, a.sample_rate);
        let d = cpu(move || dsp::denoise(&samples, rate, DENOISE_CUTOFF_HZ)).await?;
        let note = format!(
            "noise gate ({:.1} dBFS) muted {}/{} frames, low-pass {} Hz: rms {:.1} -> {:.1} dBFS",
            d.gate_threshold_dbfs,
            d.gated_frames,
            d.frames,
            d.cutoff_hz,
            d.before.rms_dbfs,
            d.after.rms_dbfs
        );
        let gated_share = d.gated_frames as f64 / d.frames.max(1) as f64;
        self.ctx
            .emit(
                "audio_denoising.completed",
                &DenoiseDone {
                    meeting_id: a.meeting_id.clone(),
                    username: a.username.clone(),
                    method: d.method,
                    before: d.before,
                    after: d.after,
                    gated_frames: d.gated_frames,
                    frames: d.frames,
                },
            )
            .await?;
        self.result(&a.meeting_id, &a.username, "gated_share", gated_share)
            .await?;
        Ok(note)
    }

    async fn enhance(&self, f: FrameTask) -> Handled {
        let frame = f.frame;
        let e = cpu(move || dsp::enhance(&frame, 128.0))
            .await?
            .map_err(|e| HandlerError::permanent(e.to_string()))?;
        let note = format!(
            "{}x{} frame of {}: mean {:.1} -> {:.1}, contrast (std) {:.1} -> {:.1}",
            e.frame.width,
            e.frame.height,
            f.username,
            e.before.mean,
            e.after.mean,
            e.before.std_dev,
            e.after.std_dev
        );
        let gain = e.after.std_dev / e.before.std_dev.max(0.01);
        self.ctx
            .emit(
                "video_enhancement.completed",
                &EnhanceDone {
                    meeting_id: f.meeting_id.clone(),
                    username: f.username.clone(),
                    method: e.method,
                    before: e.before,
                    after: e.after,
                },
            )
            .await?;
        self.result(&f.meeting_id, &f.username, "contrast_gain", gain)
            .await?;
        Ok(note)
    }

    pub(crate) async fn event(&self, topic: &str, m: Message) -> Handled {
        let mut st = self.state.lock();
        match topic {
            "meeting.created" => {
                let e: MeetingCreated = m.decode()?;
                st.insights.entry(e.meeting_id.clone()).or_default().open = true;
                Ok(format!("insights for {} opened", e.meeting_id))
            }
            "meeting.ended" => {
                let e: MeetingEnded = m.decode()?;
                let i = st.insights.entry(e.meeting_id.clone()).or_default();
                i.open = false;
                let mood = if i.sentiments.is_empty() {
                    "n/a".to_string()
                } else {
                    format!(
                        "{:+.2}",
                        i.sentiments.iter().sum::<f64>() / i.sentiments.len() as f64
                    )
                };
                Ok(format!(
                    "insights for {} closed: {} ms speech in {} ms analysed, mood {mood}, {} result(s)",
                    e.meeting_id, i.speech_ms, i.analysed_ms, i.results
                ))
            }
            "stream.processed" => {
                let e: StreamProcessed = m.decode()?;
                let i = st.insights.entry(e.meeting_id.clone()).or_default();
                i.analysed_ms += e.levels.duration_ms;
                let loudest = i
                    .loudest_dbfs
                    .map_or(e.levels.rms_dbfs, |l| l.max(e.levels.rms_dbfs));
                i.loudest_dbfs = Some(loudest);
                Ok(format!(
                    "{}: {} ms of {}'s audio seen, loudest chunk {loudest:.1} dBFS",
                    e.meeting_id, i.analysed_ms, e.username
                ))
            }
            "recording.stopped" => {
                let e: RecordingStopped = m.decode()?;
                let i = st.insights.entry(e.meeting_id.clone()).or_default();
                i.recordings += 1;
                Ok(format!(
                    "{}: recording {} ({} ms) noted for the summary",
                    e.meeting_id, e.recording_id, e.duration_ms
                ))
            }
            other => Err(unhandled(self.ctx.service, other)),
        }
    }

    /// The insights component, fed by the local bus.
    pub(crate) async fn local(&self, topic: &str, m: Message) -> Handled {
        if topic != "ai.result" {
            return Err(unhandled(self.ctx.service, topic));
        }
        let r: AiResult = m.decode()?;
        let mut st = self.state.lock();
        let i = st.insights.entry(r.meeting_id.clone()).or_default();
        i.results += 1;
        match r.analysis.as_str() {
            "speech_ms" => i.speech_ms += r.value.max(0.0) as u64,
            "sentiment" => i.sentiments.push(r.value),
            _ => {}
        }
        Ok(format!(
            "insights: {} {} = {:.2} for {} ({} result(s))",
            r.meeting_id, r.analysis, r.value, r.username, i.results
        ))
    }

    pub(crate) fn summary(&self) -> String {
        let st = self.state.lock();
        let insights: Vec<String> = st
            .insights
            .iter()
            .map(|(id, i)| {
                format!(
                    "{id} ({}, {} ms speech / {} ms analysed, {} sentiment(s), {} result(s), {} recording(s))",
                    if i.open { "open" } else { "closed" },
                    i.speech_ms,
                    i.analysed_ms,
                    i.sentiments.len(),
                    i.results,
                    i.recordings
                )
            })
            .collect();
        format!("tasks {:?}; insights: {}", st.tasks, insights.join("; "))
    }
}
