//! Who owns which task, who emits and who listens to which event: the one table the
//! services, the dispatcher routes and the scenario's expectations are all built from.

use std::fmt;

use courier::{Courier, Priority, QueueConfig, Result, Retention};
use serde::{Deserialize, Serialize};

/// One of the five services.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum ServiceKind {
    /// Accounts, passwords, sessions, presence.
    User,
    /// Meetings and their rosters.
    Meeting,
    /// Streams, recordings, transcoding.
    Media,
    /// WebRTC negotiation and relay.
    Signaling,
    /// Signal processing on audio, video and transcripts.
    Ai,
}

impl ServiceKind {
    /// Every service, in start order.
    pub const ALL: [ServiceKind; 5] = [
        ServiceKind::User,
        ServiceKind::Meeting,
        ServiceKind::Media,
        ServiceKind::Signaling,
        ServiceKind::Ai,
    ];

    /// Lowercase name: also the consumer group name and the queue suffix.
    pub fn name(self) -> &'static str {
        match self {
            ServiceKind::User => "user",
            ServiceKind::Meeting => "meeting",
            ServiceKind::Media => "media",
            ServiceKind::Signaling => "signaling",
            ServiceKind::Ai => "ai",
        }
    }

    /// Parse a lowercase name.
    pub fn parse(s: &str) -> Option<ServiceKind> {
        ServiceKind::ALL.into_iter().find(|k| k.name() == s)
    }

    /// The priority of this service's tasks: signaling is latency critical, user and meeting
    /// actions are interactive, media processing is normal work, AI analysis is batch work.
    pub fn priority(self) -> Priority {
        match self {
            ServiceKind::Signaling => Priority::Critical,
            ServiceKind::User | ServiceKind::Meeting => Priority::High,
            ServiceKind::Media => Priority::Normal,
            ServiceKind::Ai => Priority::Low,
        }
    }

    /// The task kinds this service handles (from its queue).
    pub fn tasks(self) -> &'static [&'static str] {
        match self {
            ServiceKind::User => &[
                "user_register",
                "user_login",
                "user_profile_update",
                "user_status_change",
            ],
            ServiceKind::Meeting => &[
                "meeting_create",
                "meeting_end",
                "meeting_user_join",
                "meeting_user_leave",
            ],
            ServiceKind::Media => &[
                "media_stream_process",
                "media_recording_start",
                "media_recording_stop",
                "media_transcode",
            ],
            ServiceKind::Signaling => &[
                "signaling_webrtc_offer",
                "signaling_webrtc_answer",
                "signaling_ice_candidate",
                "signaling_connection_manage",
            ],
            ServiceKind::Ai => &[
                "speech_recognition",
                "emotion_detection",
                "audio_denoising",
                "video_enhancement",
            ],
        }
    }

    /// The event topics this service emits.
    pub fn emits(self) -> &'static [&'static str] {
        match self {
            ServiceKind::User => &[
                "user.registered",
                "user.logged_in",
                "user.profile_updated",
                "user.status_changed",
            ],
            ServiceKind::Meeting => &[
                "meeting.created",
                "meeting.ended",
                "meeting.user_joined",
                "meeting.user_left",
            ],
            ServiceKind::Media => &[
                "stream.processed",
                "recording.started",
                "recording.stopped",
                "transcode.completed",
            ],
            ServiceKind::Signaling => &[
                "webrtc.offer",
                "webrtc.answer",
                "webrtc.ice_candidate",
                "webrtc.connected",
                "webrtc.disconnected",
            ],
            ServiceKind::Ai => &[
                "speech_recognition.completed",
                "emotion_detection.completed",
                "audio_denoising.completed",
                "video_enhancement.completed",
            ],
        }
    }

    /// The event topics this service's consumer group reads.
    pub fn subscribes(self) -> &'static [&'static str] {
        match self {
            // meeting and ai events
            ServiceKind::User => &[
                "meeting.created",
                "meeting.ended",
                "meeting.user_joined",
                "meeting.user_left",
                "speech_recognition.completed",
                "emotion_detection.completed",
            ],
            // user, ai, media and signaling events
            ServiceKind::Meeting => &[
                "user.registered",
                "user.logged_in",
                "user.profile_updated",
                "user.status_changed",
                "speech_recognition.completed",
                "emotion_detection.completed",
                "recording.started",
                "recording.stopped",
                "transcode.completed",
                "webrtc.offer",
                "webrtc.answer",
                "webrtc.ice_candidate",
                "webrtc.connected",
                "webrtc.disconnected",
            ],
            // meeting, ai and signaling events
            ServiceKind::Media => &[
                "meeting.created",
                "meeting.ended",
                "meeting.user_joined",
                "meeting.user_left",
                "audio_denoising.completed",
                "video_enhancement.completed",
                "webrtc.connected",
                "webrtc.disconnected",
            ],
            // meeting and media events
            ServiceKind::Signaling => &[
                "meeting.created",
                "meeting.ended",
                "meeting.user_joined",
                "meeting.user_left",
                "recording.started",
                "recording.stopped",
            ],
            // meeting and media events
            ServiceKind::Ai => &[
                "meeting.created",
                "meeting.ended",
                "stream.processed",
                "recording.stopped",
            ],
        }
    }

    /// The service's in-process bus: (topic, consuming component). The producing component is
    /// the service's task handlers ("api").
    pub fn local_topics(self) -> &'static [(&'static str, &'static str)] {
        match self {
            ServiceKind::User => &[("user.activity", "presence")],
            ServiceKind::Meeting => &[("meeting.roster", "analytics")],
            ServiceKind::Media => &[("media.audio_chunk", "recorder")],
            ServiceKind::Signaling => &[("signaling.negotiation", "monitor")],
            ServiceKind::Ai => &[("ai.result", "insights")],
        }
    }
}

impl fmt::Display for ServiceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The service that owns a task kind.
pub fn owner_of(kind: &str) -> Option<ServiceKind> {
    ServiceKind::ALL
        .into_iter()
        .find(|s| s.tasks().contains(&kind))
}

/// How long a live-signaling task stays worth running (Q12): an offer, answer or ICE candidate
/// not handled within this is stale (the peer has given up or restarted negotiation), so it
/// expires in the queue instead of being relayed late.
pub const SIGNAL_TTL: std::time::Duration = std::time::Duration::from_secs(10);

/// How long presence and WebRTC events stay worth delivering to a consumer group (Q12): a
/// group that reaches a "user is online" or "offer sent" event later than this skips it.
pub const PRESENCE_TTL: std::time::Duration = std::time::Duration::from_secs(30);

/// The expiry of a task kind, if it has one: the live-signaling tasks.
pub fn task_ttl(kind: &str) -> Option<std::time::Duration> {
    matches!(
        kind,
        "signaling_webrtc_offer" | "signaling_webrtc_answer" | "signaling_ice_candidate"
    )
    .then_some(SIGNAL_TTL)
}

/// The expiry of an event topic, if it has one: presence and WebRTC signaling events.
pub fn event_ttl(topic: &str) -> Option<std::time::Duration> {
    (topic == "user.status_changed" || topic.starts_with("webrtc.")).then_some(PRESENCE_TTL)
}

/// The service that emits a topic.
pub fn emitter_of(topic: &str) -> Option<ServiceKind> {
    ServiceKind::ALL
        .into_iter()
        .find(|s| s.emits().contains(&topic))
}

/// The services whose consumer group reads `topic`.
pub fn subscribers_of(topic: &str) -> Vec<ServiceKind> {
    ServiceKind::ALL
        .into_iter()
        .filter(|s| s.subscribes().contains(&topic))
        .collect()
}

/// Every domain topic (emitted by some service), in table order.
pub fn all_topics() -> Vec<&'static str> {
    ServiceKind::ALL
        .into_iter()
        .flat_map(|s| s.emits().iter().copied())
        .collect()
}

/// How queue, topic and channel names are spelled, under an optional namespace (so that runs
/// sharing a broker never collide).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    namespace: Option<String>,
    queue_prefix: String,
}

impl Names {
    /// Names under `namespace` (empty: none), with service queues `<queue_prefix>.<service>`.
    ///
    /// # Errors
    /// [`courier::ErrorKind::InvalidInput`] when the namespace or prefix is not a valid name.
    pub fn new(namespace: &str, queue_prefix: &str) -> Result<Names> {
        let namespace = (!namespace.is_empty()).then(|| namespace.to_string());
        if let Some(ns) = &namespace {
            courier::validate_name("namespace", ns)?;
        }
        courier::validate_name("queue_name", queue_prefix)?;
        Ok(Names {
            namespace,
            queue_prefix: queue_prefix.to_string(),
        })
    }

    /// The namespace, if any.
    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    fn scoped(&self, name: &str) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}.{name}"),
            None => name.to_string(),
        }
    }

    /// The queue a service reads its tasks from, e.g. `svc.user`.
    pub fn queue(&self, service: ServiceKind) -> String {
        self.scoped(&format!("{}.{}", self.queue_prefix, service.name()))
    }

    /// The stored name of a domain topic, e.g. `meeting.created`.
    pub fn topic(&self, topic: &str) -> String {
        self.scoped(topic)
    }

    /// The live WebRTC relay channel of one participant: `signal.<meeting>.<user>`.
    pub fn signal_channel(&self, meeting: &str, user: &str) -> String {
        self.scoped(&format!("signal.{meeting}.{user}"))
    }

    /// The topic delivery records are emitted to when auditing is on (multi-process runs).
    pub fn audit_topic(&self) -> String {
        self.scoped("audit.delivery")
    }
}

/// Configure every service queue and every (topic, group) with `config`, give every topic
/// (and the audit topic) `retention`, and route every task kind to its owner's queue with the
/// owner's priority. Every process sharing a backend does this, so that any of them can
/// dispatch any task.
///
/// # Errors
/// Invalid names or configuration.
pub fn install(
    courier: &Courier,
    names: &Names,
    config: QueueConfig,
    retention: Retention,
) -> Result<()> {
    for topic in all_topics() {
        courier
            .events()
            .set_retention(&names.topic(topic), retention)?;
    }
    courier
        .events()
        .set_retention(&names.audit_topic(), retention)?;
    for service in ServiceKind::ALL {
        let queue = names.queue(service);
        courier.queue().configure(&queue, config)?;
        for kind in service.tasks() {
            courier
                .dispatcher()
                .route_with_priority(kind, &queue, Some(service.priority()))?;
        }
        for topic in service.subscribes() {
            courier
                .events()
                .configure_group(&names.topic(topic), service.name(), config)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_has_one_owner_and_every_topic_a_listener() {
        let mut kinds = std::collections::BTreeSet::new();
        for s in ServiceKind::ALL {
            for k in s.tasks() {
                assert!(kinds.insert(*k), "{k} owned twice");
            }
        }
        for t in all_topics() {
            assert!(!subscribers_of(t).is_empty(), "nobody listens to {t}");
            assert!(emitter_of(t).is_some());
        }
        for s in ServiceKind::ALL {
            for t in s.subscribes() {
                let from = emitter_of(t).expect("known topic");
                assert_ne!(from, s, "{s} listens to its own {t}");
            }
        }
    }

    #[test]
    fn names_scope_everything_under_the_namespace() {
        let n = Names::new("", "svc").expect("valid");
        assert_eq!(n.queue(ServiceKind::User), "svc.user");
        assert_eq!(n.topic("meeting.created"), "meeting.created");
        let n = Names::new("run-42", "svc").expect("valid");
        assert_eq!(n.queue(ServiceKind::Ai), "run-42.svc.ai");
        assert_eq!(n.signal_channel("m1", "bob"), "run-42.signal.m1.bob");
        assert!(Names::new("bad name", "svc").is_err());
    }
}
