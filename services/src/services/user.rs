//! The user service: accounts with argon2id password hashes, login sessions, profiles and
//! presence.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use courier::{HandlerError, Message};
use parking_lot::Mutex;
use rand::RngCore;

use super::{Ctx, Handled, unhandled, valid_token};
use crate::ledger::now_ms;
use crate::protocol::{
    Activity, ChangeStatus, EmotionDone, LoginUser, MeetingCreated, MeetingEnded, ProfileUpdated,
    RegisterUser, RosterChange, SpeechDone, StatusChanged, UpdateProfile, UserLoggedIn,
    UserRegistered,
};

/// Statuses a user can be in.
const STATUSES: &[&str] = &["online", "away", "busy", "in_meeting", "offline"];

/// Argon2id with deliberately low cost: 4 MiB of memory, 1 pass, 1 lane. The OWASP baseline
/// for interactive logins is 19 MiB / 2 passes; this service hashes on every register and
/// login of the demo and the tests, which run unoptimised builds on shared CI cores. The
/// parameters are stored inside each PHC hash string, so raising them later keeps old hashes
/// verifiable.
const ARGON2_MEMORY_KIB: u32 = 4 * 1024;
const ARGON2_PASSES: u32 = 1;

fn argon2() -> Result<Argon2<'static>, HandlerError> {
    let params = Params::new(ARGON2_MEMORY_KIB, ARGON2_PASSES, 1, None)
        .map_err(|e| HandlerError::permanent(format!("argon2 parameters: {e}")))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Hash a password with a fresh 16-byte random salt; the result is a PHC string
/// (`$argon2id$v=19$m=4096,t=1,p=1$<salt>$<hash>`).
pub(crate) fn hash_password(password: &str) -> Result<String, HandlerError> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt =
        SaltString::encode_b64(&salt).map_err(|e| HandlerError::permanent(format!("salt: {e}")))?;
    argon2()?
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| HandlerError::permanent(format!("hashing failed: {e}")))
}

/// Check a password against a stored PHC string (constant time inside argon2).
pub(crate) fn verify_password(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(h) => Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok(),
        Err(_) => false,
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, HandlerError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| HandlerError::retry(format!("hashing task failed: {e}")))
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

struct User {
    user_id: String,
    display_name: String,
    password_hash: String,
    status: String,
    logins: u32,
    last_login_ms: Option<u64>,
    current_meeting: Option<String>,
    meetings_hosted: u32,
    speaking_ms: u64,
    last_mood: Option<(String, f64)>,
}

#[derive(Default)]
struct State {
    users: BTreeMap<String, User>,
    /// Session token → username.
    sessions: HashMap<String, String>,
    /// The presence component's view (fed by the local bus).
    online: BTreeSet<String>,
    activity: BTreeMap<String, u32>,
}

pub(crate) struct UserService {
    ctx: Ctx,
    state: Mutex<State>,
}

impl UserService {
    pub(crate) fn new(ctx: Ctx) -> Self {
        UserService {
            ctx,
            state: Mutex::new(State::default()),
        }
    }

    pub(crate) async fn task(&self, kind: &str, m: Message) -> Handled {
        match kind {
            "user_register" => self.register(m.decode()?).await,
            "user_login" => self.login(m.decode()?).await,
            "user_profile_update" => self.update_profile(m.decode()?).await,
            "user_status_change" => self.change_status(m.decode()?).await,
            other => Err(unhandled(self.ctx.service, other)),
        }
    }

    async fn register(&self, r: RegisterUser) -> Handled {
        if !valid_token(&r.username) {
            return Err(HandlerError::permanent(format!(
                "invalid username {:?}: use 1-32 of a-z 0-9 _ -",
                r.username
            )));
        }
        if r.password.chars().count() < 8 {
            return Err(HandlerError::permanent(
                "password shorter than 8 characters",
            ));
        }
        let existing = self
            .state
            .lock()
            .users
            .get(&r.username)
            .map(|u| (u.password_hash.clone(), u.user_id.clone()));
        let (user_id, note) = match existing {
            Some((phc, user_id)) => {
                let pw = r.password.clone();
                if !blocking(move || verify_password(&pw, &phc)).await? {
                    return Err(HandlerError::permanent(format!(
                        "username {:?} is taken",
                        r.username
                    )));
                }
                // A redelivery of a registration that was stored: announce it again
                // (at least once), change nothing.
                (
                    user_id,
                    format!("{} already registered (redelivery)", r.username),
                )
            }
            None => {
                let pw = r.password.clone();
                let phc = blocking(move || hash_password(&pw)).await??;
                let user_id = format!("u-{}", random_hex(6));
                let mut st = self.state.lock();
                if st.users.contains_key(&r.username) {
                    return Err(HandlerError::permanent(format!(
                        "username {:?} is taken",
                        r.username
                    )));
                }
                let note = format!(
                    "{} registered as {user_id}, password stored as argon2id ({} chars)",
                    r.username,
                    phc.len()
                );
                st.users.insert(
                    r.username.clone(),
                    User {
                        user_id: user_id.clone(),
                        display_name: r.display_name.clone(),
                        password_hash: phc,
                        status: "offline".into(),
                        logins: 0,
                        last_login_ms: None,
                        current_meeting: None,
                        meetings_hosted: 0,
                        speaking_ms: 0,
                        last_mood: None,
                    },
                );
                (user_id, note)
            }
        };
        self.ctx
            .emit(
                "user.registered",
                &UserRegistered {
                    user_id,
                    username: r.username.clone(),
                    display_name: r.display_name,
                },
            )
            .await?;
        self.activity(&r.username, "registered").await?;
        Ok(note)
    }

    async fn login(&self, l: LoginUser) -> Handled {
        let phc = self
            .state
            .lock()
            .users
            .get(&l.username)
            .map(|u| u.password_hash.clone())
            .ok_or_else(|| HandlerError::permanent(format!("unknown user {:?}", l.username)))?;
        let pw = l.password.clone();
        if !blocking(move || verify_password(&pw, &phc)).await? {
            return Err(HandlerError::permanent(format!(
                "invalid credentials for {:?}",
                l.username
            )));
        }
        let token = random_hex(16);
        let session_id = format!("s-{}", &token[..8]);
        {
            let mut st = self.state.lock();
            st.sessions.insert(token, l.username.clone());
            if let Some(u) = st.users.get_mut(&l.username) {
                u.status = "online".into();
                u.logins += 1;
                u.last_login_ms = Some(now_ms());
            }
        }
        self.ctx
            .emit(
                "user.logged_in",
                &UserLoggedIn {
                    username: l.username.clone(),
                    session_id: session_id.clone(),
                },
            )
            .await?;
        self.activity(&l.username, "login").await?;
        Ok(format!(
            "{} logged in: password verified, session {session_id}",
            l.username
        ))
    }

    async fn update_profile(&self, p: UpdateProfile) -> Handled {
        let name = p.display_name.trim().to_string();
        if name.is_empty() || name.chars().count() > 64 {
            return Err(HandlerError::permanent(
                "display name must be 1-64 characters",
            ));
        }
        let old = {
            let mut st = self.state.lock();
            let u = st
                .users
                .get_mut(&p.username)
                .ok_or_else(|| HandlerError::permanent(format!("unknown user {:?}", p.username)))?;
            std::mem::replace(&mut u.display_name, name.clone())
        };
        self.ctx
            .emit(
                "user.profile_updated",
                &ProfileUpdated {
                    username: p.username.clone(),
                    display_name: name.clone(),
                },
            )
            .await?;
        self.activity(&p.username, "profile").await?;
        Ok(format!("{}: display name {old:?} -> {name:?}", p.username))
    }

    async fn change_status(&self, c: ChangeStatus) -> Handled {
        if !STATUSES.contains(&c.status.as_str()) {
            return Err(HandlerError::permanent(format!(
                "unknown status {:?} (expected one of {STATUSES:?})",
                c.status
            )));
        }
        let from = {
            let mut st = self.state.lock();
            let u = st
                .users
                .get_mut(&c.username)
                .ok_or_else(|| HandlerError::permanent(format!("unknown user {:?}", c.username)))?;
            std::mem::replace(&mut u.status, c.status.clone())
        };
        self.ctx
            .emit(
                "user.status_changed",
                &StatusChanged {
                    username: c.username.clone(),
                    from: from.clone(),
                    to: c.status.clone(),
                    reason: c.reason.clone(),
                },
            )
            .await?;
        self.activity(&c.username, &c.status).await?;
        Ok(format!(
            "{}: {from} -> {} ({})",
            c.username, c.status, c.reason
        ))
    }

    async fn activity(&self, username: &str, action: &str) -> Result<(), HandlerError> {
        self.ctx
            .emit_local(
                "user.activity",
                &Activity {
                    username: username.into(),
                    action: action.into(),
                },
            )
            .await
    }

    pub(crate) async fn event(&self, topic: &str, m: Message) -> Handled {
        let mut st = self.state.lock();
        match topic {
            "meeting.created" => {
                let e: MeetingCreated = m.decode()?;
                match st.users.get_mut(&e.host) {
                    Some(u) => {
                        u.meetings_hosted += 1;
                        Ok(format!(
                            "{} has hosted {} meeting(s)",
                            e.host, u.meetings_hosted
                        ))
                    }
                    None => Ok(format!("host {} is not a local user; ignored", e.host)),
                }
            }
            "meeting.user_joined" => {
                let e: RosterChange = m.decode()?;
                if let Some(u) = st.users.get_mut(&e.username) {
                    u.current_meeting = Some(e.meeting_id.clone());
                }
                Ok(format!("{} is in {}", e.username, e.meeting_id))
            }
            "meeting.user_left" => {
                let e: RosterChange = m.decode()?;
                if let Some(u) = st.users.get_mut(&e.username) {
                    u.current_meeting = None;
                }
                Ok(format!("{} left {}", e.username, e.meeting_id))
            }
            "meeting.ended" => {
                let e: MeetingEnded = m.decode()?;
                let mut n = 0;
                for u in st.users.values_mut() {
                    if u.current_meeting.as_deref() == Some(e.meeting_id.as_str()) {
                        u.current_meeting = None;
                        n += 1;
                    }
                }
                Ok(format!(
                    "{} ended; {n} user(s) still attached cleared",
                    e.meeting_id
                ))
            }
            "speech_recognition.completed" => {
                let e: SpeechDone = m.decode()?;
                match st.users.get_mut(&e.username) {
                    Some(u) => {
                        u.speaking_ms += e.vad.speech_ms;
                        Ok(format!(
                            "{} has spoken {} ms in total",
                            e.username, u.speaking_ms
                        ))
                    }
                    None => Ok(format!("{} unknown; ignored", e.username)),
                }
            }
            "emotion_detection.completed" => {
                let e: EmotionDone = m.decode()?;
                if let Some(u) = st.users.get_mut(&e.username) {
                    u.last_mood = Some((e.sentiment.label.clone(), e.sentiment.score));
                }
                Ok(format!(
                    "{} mood: {} ({:+.2})",
                    e.username, e.sentiment.label, e.sentiment.score
                ))
            }
            other => Err(unhandled(self.ctx.service, other)),
        }
    }

    /// The presence component, fed by the local bus.
    pub(crate) async fn local(&self, topic: &str, m: Message) -> Handled {
        if topic != "user.activity" {
            return Err(unhandled(self.ctx.service, topic));
        }
        let a: Activity = m.decode()?;
        let mut st = self.state.lock();
        *st.activity.entry(a.username.clone()).or_insert(0) += 1;
        match a.action.as_str() {
            "login" | "online" | "in_meeting" | "busy" | "away" => {
                st.online.insert(a.username.clone());
            }
            "offline" => {
                st.online.remove(&a.username);
            }
            _ => {}
        }
        Ok(format!(
            "presence: {} {} ({} online)",
            a.username,
            a.action,
            st.online.len()
        ))
    }

    pub(crate) fn summary(&self) -> String {
        let st = self.state.lock();
        let users: Vec<String> = st
            .users
            .iter()
            .map(|(name, u)| {
                let mood = u
                    .last_mood
                    .as_ref()
                    .map(|(l, s)| format!(", mood {l} {s:+.2}"))
                    .unwrap_or_default();
                let since = u
                    .last_login_ms
                    .map(|t| format!(", last login {} ms ago", now_ms().saturating_sub(t)))
                    .unwrap_or_default();
                format!(
                    "{name} ({}, {} \"{}\", {} login(s), hosted {}, spoke {} ms{mood}{since}{})",
                    u.user_id,
                    u.status,
                    u.display_name,
                    u.logins,
                    u.meetings_hosted,
                    u.speaking_ms,
                    u.current_meeting
                        .as_ref()
                        .map(|m| format!(", in {m}"))
                        .unwrap_or_default()
                )
            })
            .collect();
        format!(
            "{} user(s), {} session(s), {} online: {}",
            st.users.len(),
            st.sessions.len(),
            st.online.len(),
            users.join("; ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_with_salt_and_verify() {
        let a = hash_password("correct horse").expect("hash");
        let b = hash_password("correct horse").expect("hash");
        assert!(a.starts_with("$argon2id$v=19$m=4096,t=1,p=1$"), "{a}");
        assert_ne!(a, b, "salted");
        assert!(verify_password("correct horse", &a));
        assert!(!verify_password("wrong horse", &a));
        assert!(!verify_password("x", "not a hash"));
    }
}
