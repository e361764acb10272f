//! Payloads of tasks, events and relays (JSON on the wire).

use serde::{Deserialize, Serialize};

use crate::dsp::{FrameStats, GrayFrame, Levels, Sentiment, VoiceActivity};

// ------------------------------------------------------------------ tasks

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct RegisterUser {
    pub(crate) username: String,
    pub(crate) password: String,
    pub(crate) display_name: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct LoginUser {
    pub(crate) username: String,
    pub(crate) password: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct UpdateProfile {
    pub(crate) username: String,
    pub(crate) display_name: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ChangeStatus {
    pub(crate) username: String,
    pub(crate) status: String,
    pub(crate) reason: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct CreateMeeting {
    pub(crate) meeting_id: String,
    pub(crate) host: String,
    pub(crate) title: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct EndMeeting {
    pub(crate) meeting_id: String,
    pub(crate) by: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct MeetingMember {
    pub(crate) meeting_id: String,
    pub(crate) username: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct StreamChunk {
    pub(crate) meeting_id: String,
    pub(crate) username: String,
    pub(crate) sample_rate: u32,
    pub(crate) samples: Vec<i16>,
    #[serde(default)]
    pub(crate) frame: Option<GrayFrame>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct RecordingRequest {
    pub(crate) meeting_id: String,
    pub(crate) requested_by: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Transcode {
    pub(crate) recording_id: String,
    pub(crate) codec: String,
    pub(crate) sample_rate: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Sdp {
    pub(crate) meeting_id: String,
    pub(crate) from: String,
    pub(crate) to: String,
    pub(crate) sdp: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Ice {
    pub(crate) meeting_id: String,
    pub(crate) from: String,
    pub(crate) to: String,
    pub(crate) candidate: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ConnectionManage {
    pub(crate) meeting_id: String,
    pub(crate) from: String,
    #[serde(default)]
    pub(crate) to: Option<String>,
    /// `connected` or `disconnected`.
    pub(crate) action: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct AudioTask {
    pub(crate) meeting_id: String,
    pub(crate) username: String,
    pub(crate) sample_rate: u32,
    pub(crate) samples: Vec<i16>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct TranscriptTask {
    pub(crate) meeting_id: String,
    pub(crate) username: String,
    pub(crate) text: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct FrameTask {
    pub(crate) meeting_id: String,
    pub(crate) username: String,
    pub(crate) frame: GrayFrame,
}

// ------------------------------------------------------------------ events

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct UserRegistered {
    pub(crate) user_id: String,
    pub(crate) username: String,
    pub(crate) display_name: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct UserLoggedIn {
    pub(crate) username: String,
    pub(crate) session_id: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ProfileUpdated {
    pub(crate) username: String,
    pub(crate) display_name: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct StatusChanged {
    pub(crate) username: String,
    pub(crate) from: String,
    pub(crate) to: String,
    pub(crate) reason: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct MeetingCreated {
    pub(crate) meeting_id: String,
    pub(crate) host: String,
    pub(crate) title: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct MeetingEnded {
    pub(crate) meeting_id: String,
    pub(crate) ended_by: String,
    pub(crate) duration_ms: u64,
    pub(crate) peak_participants: usize,
    pub(crate) still_present: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct RosterChange {
    pub(crate) meeting_id: String,
    pub(crate) username: String,
    pub(crate) display_name: String,
    pub(crate) participants: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct StreamProcessed {
    pub(crate) meeting_id: String,
    pub(crate) username: String,
    pub(crate) levels: Levels,
    pub(crate) recorded: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct RecordingStarted {
    pub(crate) meeting_id: String,
    pub(crate) recording_id: String,
    pub(crate) requested_by: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct RecordingStopped {
    pub(crate) meeting_id: String,
    pub(crate) recording_id: String,
    pub(crate) duration_ms: u64,
    pub(crate) samples: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct TranscodeCompleted {
    pub(crate) meeting_id: String,
    pub(crate) recording_id: String,
    pub(crate) codec: String,
    pub(crate) sample_rate: u32,
    pub(crate) bytes: usize,
    pub(crate) duration_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct PeerEvent {
    pub(crate) meeting_id: String,
    pub(crate) from: String,
    pub(crate) to: String,
    pub(crate) detail: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Disconnected {
    pub(crate) meeting_id: String,
    pub(crate) username: String,
    pub(crate) peers: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct SpeechDone {
    pub(crate) meeting_id: String,
    pub(crate) username: String,
    pub(crate) vad: VoiceActivity,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct EmotionDone {
    pub(crate) meeting_id: String,
    pub(crate) username: String,
    pub(crate) sentiment: Sentiment,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct DenoiseDone {
    pub(crate) meeting_id: String,
    pub(crate) username: String,
    pub(crate) method: String,
    pub(crate) before: Levels,
    pub(crate) after: Levels,
    pub(crate) gated_frames: usize,
    pub(crate) frames: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct EnhanceDone {
    pub(crate) meeting_id: String,
    pub(crate) username: String,
    pub(crate) method: String,
    pub(crate) before: FrameStats,
    pub(crate) after: FrameStats,
}

// ------------------------------------------------------------------ pub/sub relay

/// What signaling relays to one participant's channel. `kind` of the message is
/// `webrtc.offer`, `webrtc.answer`, `webrtc.ice_candidate` or `recording.notice`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Relay {
    pub(crate) meeting_id: String,
    pub(crate) from: String,
    pub(crate) body: String,
}

// ------------------------------------------------------------------ local bus

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Activity {
    pub(crate) username: String,
    pub(crate) action: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct RosterSnapshot {
    pub(crate) meeting_id: String,
    pub(crate) participants: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct AudioChunk {
    pub(crate) meeting_id: String,
    pub(crate) sample_rate: u32,
    pub(crate) samples: Vec<i16>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Negotiation {
    pub(crate) meeting_id: String,
    pub(crate) from: String,
    pub(crate) to: String,
    pub(crate) step: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct AiResult {
    pub(crate) meeting_id: String,
    pub(crate) username: String,
    pub(crate) analysis: String,
    pub(crate) value: f64,
}
