//! The bridge's durable state, in files under `<data_dir>/push/` (readable by `mqim push-log`
//! while the broker runs):
//! - `users/<hex user id>.json`: the user's devices (registration, the "pushed up to seq"
//!   cursor against the user's stream, the last badge pushed, the last 20 push outcomes) and
//!   muted conversations;
//! - `tokens/<hex SHA-256 of provider:token>`: which device holds a token, so a token
//!   registered on another device moves there.
//!
//! Every change is written to a temporary file, synced and renamed over the old one, so a crash
//! leaves the old or the new state, never a torn one. A cache keeps each user's state after its
//! first read; all writes go through [`PushState::update`], one at a time.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::notification::Registration;

/// Push outcomes kept per device.
pub const LOG_LEN: usize = 20;

/// One push outcome (or registration change) in a device's log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Unix milliseconds.
    pub at_ms: i64,
    pub provider: String,
    /// `delivered`, `retry`, `token_gone`, `rejected`, `auth_failed`, `gave_up`,
    /// `registered`, `unregistered`, `moved`.
    pub status: String,
    pub reason: String,
    /// The stream seq the push covered (0 for registration changes).
    pub seq: u64,
}

/// One device's push state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceState {
    /// `None` once removed (the log stays, so the operator can see why).
    pub registration: Option<Registration>,
    /// Every event of the user's stream up to this seq has been dealt with for this device.
    pub pushed_up_to: u64,
    /// The badge of the last push that was delivered.
    pub badge: Option<u64>,
    pub log: VecDeque<LogEntry>,
}

impl DeviceState {
    /// Appends to the log, keeping the last [`LOG_LEN`].
    pub fn log(&mut self, e: LogEntry) {
        self.log.push_back(e);
        while self.log.len() > LOG_LEN {
            self.log.pop_front();
        }
    }
}

/// One user's push state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserState {
    pub devices: BTreeMap<String, DeviceState>,
    /// Conversation -> muted until (Unix ms; `None`: until unmuted).
    pub mutes: BTreeMap<String, Option<i64>>,
}

impl UserState {
    /// Is `conversation` muted at `now_ms`?
    pub fn muted(&self, conversation: &str, now_ms: i64) -> bool {
        match self.mutes.get(conversation) {
            Some(None) => true,
            Some(Some(until)) => now_ms < *until,
            None => false,
        }
    }
}

/// Who holds a token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenOwner {
    pub user: String,
    pub device: String,
}

/// The file-backed state of the bridge.
pub struct PushState {
    dir: PathBuf,
    cache: Mutex<HashMap<String, UserState>>,
}

impl PushState {
    /// Opens (creating) `<data_dir>/push`.
    pub fn open(data_dir: &Path) -> std::io::Result<PushState> {
        let dir = data_dir.join("push");
        std::fs::create_dir_all(dir.join("users"))?;
        std::fs::create_dir_all(dir.join("tokens"))?;
        Ok(PushState {
            dir,
            cache: Mutex::new(HashMap::new()),
        })
    }

    fn user_file(&self, user: &str) -> PathBuf {
        user_file(&self.dir, user)
    }

    /// A copy of `user`'s state.
    pub fn get(&self, user: &str) -> std::io::Result<UserState> {
        let mut cache = self.cache.lock();
        if let Some(s) = cache.get(user) {
            return Ok(s.clone());
        }
        let s = read_user(&self.user_file(user))?;
        cache.insert(user.to_string(), s.clone());
        Ok(s)
    }

    /// Changes `user`'s state with `f` and writes it durably before returning.
    pub fn update<T>(&self, user: &str, f: impl FnOnce(&mut UserState) -> T) -> std::io::Result<T> {
        self.update_with(user, true, f)
    }

    /// Like [`PushState::update`], but the write is not synced (still atomic: old or new).
    pub fn update_lazy<T>(
        &self,
        user: &str,
        f: impl FnOnce(&mut UserState) -> T,
    ) -> std::io::Result<T> {
        self.update_with(user, false, f)
    }

    fn update_with<T>(
        &self,
        user: &str,
        sync: bool,
        f: impl FnOnce(&mut UserState) -> T,
    ) -> std::io::Result<T> {
        let mut cache = self.cache.lock();
        let mut s = match cache.get(user) {
            Some(s) => s.clone(),
            None => read_user(&self.user_file(user))?,
        };
        let before = s.clone();
        let out = f(&mut s);
        if s != before {
            let bytes = serde_json::to_vec_pretty(&s).map_err(std::io::Error::other)?;
            write_atomic(&self.user_file(user), &bytes, sync)?;
        }
        cache.insert(user.to_string(), s);
        Ok(out)
    }

    /// Users with a state file (to resume pending pushes at start-up).
    pub fn users(&self) -> std::io::Result<Vec<String>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(self.dir.join("users"))? {
            let name = e?.file_name();
            let name = name.to_string_lossy();
            if let Some(user) = name.strip_suffix(".json").and_then(unhex) {
                out.push(user);
            }
        }
        Ok(out)
    }

    fn token_file(&self, key: &str) -> PathBuf {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key.as_bytes());
        self.dir
            .join("tokens")
            .join(crate::webhook::hex(digest.as_ref()))
    }

    /// The device holding `key` (`provider:token`), if any.
    pub fn token_owner(&self, key: &str) -> std::io::Result<Option<TokenOwner>> {
        match std::fs::read(self.token_file(key)) {
            Ok(b) => Ok(serde_json::from_slice(&b).ok()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn set_token_owner(&self, key: &str, owner: &TokenOwner) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(owner).map_err(std::io::Error::other)?;
        write_atomic(&self.token_file(key), &bytes, true)
    }

    /// Forgets `key` if `owner` holds it.
    pub fn clear_token(&self, key: &str, owner: &TokenOwner) -> std::io::Result<()> {
        if self.token_owner(key)?.as_ref() == Some(owner) {
            match std::fs::remove_file(self.token_file(key)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }
}

fn user_file(dir: &Path, user: &str) -> PathBuf {
    dir.join("users")
        .join(format!("{}.json", crate::webhook::hex(user.as_bytes())))
}

fn unhex(s: &str) -> Option<String> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

fn read_user(path: &Path) -> std::io::Result<UserState> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map_err(std::io::Error::other),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(UserState::default()),
        Err(e) => Err(e),
    }
}

fn write_atomic(path: &Path, bytes: &[u8], sync: bool) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    if sync {
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if sync {
        if let Some(parent) = path.parent() {
            std::fs::File::open(parent)?.sync_all()?;
        }
    }
    Ok(())
}

/// The push log of `user` in `data_dir`, one line per entry, for `mqim push-log`.
pub fn format_log(data_dir: &Path, user: &str) -> std::io::Result<String> {
    let s = read_user(&user_file(&data_dir.join("push"), user))?;
    let mut out = String::new();
    if s.devices.is_empty() {
        out.push_str(&format!("{user}: no push registrations and no push log\n"));
    }
    for (device, d) in &s.devices {
        let reg = match &d.registration {
            Some(r) => format!("registered with {}", r.provider.name()),
            None => "not registered".into(),
        };
        out.push_str(&format!(
            "{user}/{device}: {reg}, pushed up to seq {}\n",
            d.pushed_up_to
        ));
        for e in &d.log {
            out.push_str(&format!(
                "  {} {:<8} {:<12} seq {:<6} {}\n",
                humantime::format_rfc3339_millis(
                    std::time::UNIX_EPOCH + std::time::Duration::from_millis(e.at_ms.max(0) as u64)
                ),
                e.provider,
                e.status,
                e.seq,
                e.reason
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notification::ProviderKind;

    fn reg() -> Registration {
        Registration {
            provider: ProviderKind::Webhook,
            token: "https://push.example.com/x".into(),
            topic: None,
            sandbox: false,
            locale: None,
            preview: false,
        }
    }

    fn entry(seq: u64) -> LogEntry {
        LogEntry {
            at_ms: 1,
            provider: "webhook".into(),
            status: "delivered".into(),
            reason: String::new(),
            seq,
        }
    }

    #[test]
    fn state_survives_a_reopen_and_the_log_keeps_the_last_20() {
        let dir = tempfile::tempdir().unwrap();
        let s = PushState::open(dir.path()).unwrap();
        s.update("bob/with:odd chars", |u| {
            let d = u.devices.entry("phone".into()).or_default();
            d.registration = Some(reg());
            d.pushed_up_to = 7;
            for i in 0..25 {
                d.log(entry(i));
            }
            u.mutes.insert("u:alice".into(), None);
        })
        .unwrap();
        drop(s);
        let s = PushState::open(dir.path()).unwrap();
        assert_eq!(s.users().unwrap(), vec!["bob/with:odd chars".to_string()]);
        let u = s.get("bob/with:odd chars").unwrap();
        let d = &u.devices["phone"];
        assert_eq!(d.pushed_up_to, 7);
        assert_eq!(d.log.len(), LOG_LEN);
        assert_eq!(
            d.log.front().unwrap().seq,
            5,
            "the oldest entries went first"
        );
        assert!(u.muted("u:alice", 0));
        assert!(!u.muted("u:carol", 0));
        let text = format_log(dir.path(), "bob/with:odd chars").unwrap();
        assert!(
            text.contains("registered with webhook, pushed up to seq 7"),
            "{text}"
        );
    }

    #[test]
    fn a_timed_mute_ends() {
        let mut u = UserState::default();
        u.mutes.insert("u:alice".into(), Some(1000));
        assert!(u.muted("u:alice", 999));
        assert!(!u.muted("u:alice", 1000));
    }

    #[test]
    fn a_token_is_cleared_only_by_its_owner() {
        let dir = tempfile::tempdir().unwrap();
        let s = PushState::open(dir.path()).unwrap();
        let bob = TokenOwner {
            user: "bob".into(),
            device: "phone".into(),
        };
        let carol = TokenOwner {
            user: "carol".into(),
            device: "phone".into(),
        };
        s.set_token_owner("webhook:x", &carol).unwrap();
        s.clear_token("webhook:x", &bob).unwrap();
        assert_eq!(s.token_owner("webhook:x").unwrap(), Some(carol.clone()));
        s.clear_token("webhook:x", &carol).unwrap();
        assert_eq!(s.token_owner("webhook:x").unwrap(), None);
    }
}
