//! Who may act: sessions opened with `DASHBOARD_TOKEN`, each with a CSRF
//! token every form carries, and wrong tokens slowed down.
//!
//! Without a token the dashboard is read-only. With one, `POST /login`
//! compares the form's `token` with it in constant time and, when it
//! matches, opens a session: a random id in an `HttpOnly`, `SameSite=Strict`
//! cookie, and a random CSRF token that each form repeats in a `csrf`
//! field. Sessions live in memory (a restart logs everyone out) for
//! [`SESSION_TTL`]. A wrong token is answered the same whatever was wrong
//! with it; after [`FREE_ATTEMPTS`] wrong ones from an address, each further
//! attempt must wait twice as long as the one before (up to
//! [`MAX_WAIT`]), and is refused with 429 until then.

use std::collections::HashMap;
use std::io::Read;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// Sessions kept at most (the oldest go first).
pub const MAX_SESSIONS: usize = 1000;

/// Wrong tokens an address may send before it is slowed down.
pub const FREE_ATTEMPTS: u32 = 3;

/// The longest wait between attempts.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// The session cookie's name.
pub const COOKIE: &str = "bp_session";

/// `n` random bytes as hex, from the kernel's generator.
pub fn random_hex(n: usize) -> std::io::Result<String> {
    let mut bytes = vec![0u8; n];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Compares two secrets in time that depends on their lengths only.
pub fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut diff = (a.len() ^ b.len()) as u8 | u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

#[derive(Debug, Clone)]
struct Session {
    csrf: String,
    opened: Instant,
    /// What the last action did, shown once on the next page.
    flash: Option<String>,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

/// The dashboard's sessions and failed logins.
#[derive(Debug)]
pub struct Auth {
    token: Option<String>,
    sessions: Mutex<HashMap<String, Session>>,
    failures: Mutex<HashMap<IpAddr, Failures>>,
}

/// What a login attempt got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Login {
    /// A new session: its id (for the cookie).
    Opened(String),
    /// The token did not match.
    Refused,
    /// Too many wrong tokens from this address: try again after this long.
    TooSoon(Duration),
    /// No `DASHBOARD_TOKEN`: the dashboard is read-only.
    ReadOnly,
    /// No random session id could be made (the kernel's generator failed).
    Unavailable,
}

impl Auth {
    /// Sessions for `token` (`None`: read-only).
    pub fn new(token: Option<String>) -> Auth {
        Auth {
            token,
            sessions: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Whether actions are possible at all.
    pub fn enabled(&self) -> bool {
        self.token.is_some()
    }

    /// Tries `given` from `from`.
    pub fn login(&self, given: &str, from: Option<IpAddr>) -> Login {
        let Some(token) = &self.token else {
            return Login::ReadOnly;
        };
        let from = from.unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let now = Instant::now();
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        failures.retain(|_, f| now.duration_since(f.last) < MAX_WAIT * 10);
        if let Some(f) = failures.get(&from) {
            let wait = wait_after(f.count);
            let waited = now.duration_since(f.last);
            if waited < wait {
                return Login::TooSoon(wait - waited);
            }
        }
        if !same_secret(given, token) {
            let f = failures.entry(from).or_insert(Failures {
                count: 0,
                last: now,
            });
            f.count += 1;
            f.last = now;
            return Login::Refused;
        }
        failures.remove(&from);
        drop(failures);
        let (Ok(id), Ok(csrf)) = (random_hex(32), random_hex(32)) else {
            return Login::Unavailable;
        };
        let mut sessions = self.lock_sessions();
        sessions.retain(|_, s| now.duration_since(s.opened) < SESSION_TTL);
        if sessions.len() >= MAX_SESSIONS {
            if let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.opened)
                .map(|(k, _)| k.clone())
            {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(
            id.clone(),
            Session {
                csrf,
                opened: now,
                flash: None,
            },
        );
        Login::Opened(id)
    }

    /// The CSRF token of the live session `id`, if it is one.
    pub fn csrf(&self, id: &str) -> Option<String> {
        let sessions = self.lock_sessions();
        sessions
            .iter()
            .find(|(k, s)| same_secret(k, id) && s.opened.elapsed() < SESSION_TTL)
            .map(|(_, s)| s.csrf.clone())
    }

    /// Whether an action with session `id` and form field `csrf` may run.
    pub fn allows(&self, id: Option<&str>, csrf: Option<&str>) -> bool {
        match (id.and_then(|id| self.csrf(id)), csrf) {
            (Some(expected), Some(given)) => same_secret(&expected, given),
            _ => false,
        }
    }

    /// Keeps `text` to show on session `id`'s next page.
    pub fn set_flash(&self, id: &str, text: String) {
        if let Some((_, s)) = self
            .lock_sessions()
            .iter_mut()
            .find(|(k, _)| same_secret(k, id))
        {
            s.flash = Some(text);
        }
    }

    /// What session `id`'s last action did, once.
    pub fn take_flash(&self, id: &str) -> Option<String> {
        self.lock_sessions()
            .iter_mut()
            .find(|(k, _)| same_secret(k, id))
            .and_then(|(_, s)| s.flash.take())
    }

    /// Ends session `id`.
    pub fn logout(&self, id: &str) {
        self.lock_sessions().retain(|k, _| !same_secret(k, id));
    }

    fn lock_sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// How long an address must wait after `count` wrong tokens.
fn wait_after(count: u32) -> Duration {
    if count < FREE_ATTEMPTS {
        return Duration::ZERO;
    }
    let doublings = (count - FREE_ATTEMPTS).min(10);
    (Duration::from_secs(1) * 2u32.pow(doublings)).min(MAX_WAIT)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123";

    #[test]
    fn secrets_compare_exactly() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
        assert!(!same_secret("", "a"));
        assert!(same_secret("", ""));
    }

    #[test]
    fn a_session_needs_the_token_and_each_action_its_csrf() {
        let auth = Auth::new(Some(TOKEN.into()));
        let ip = Some(IpAddr::from([10, 0, 0, 1]));
        assert_eq!(auth.login("wrong", ip), Login::Refused);
        let Login::Opened(id) = auth.login(TOKEN, ip) else {
            panic!("the token opens a session");
        };
        let csrf = auth.csrf(&id).expect("a live session");
        assert!(auth.allows(Some(&id), Some(&csrf)));
        assert!(!auth.allows(Some(&id), Some("forged")));
        assert!(!auth.allows(Some(&id), None));
        assert!(!auth.allows(None, Some(&csrf)));
        assert!(!auth.allows(Some("guessed"), Some(&csrf)));
        auth.logout(&id);
        assert!(!auth.allows(Some(&id), Some(&csrf)));
    }

    #[test]
    fn wrong_tokens_are_slowed_down_per_address() {
        let auth = Auth::new(Some(TOKEN.into()));
        let ip = Some(IpAddr::from([10, 0, 0, 2]));
        for _ in 0..FREE_ATTEMPTS {
            assert_eq!(auth.login("wrong", ip), Login::Refused);
        }
        assert!(
            matches!(auth.login(TOKEN, ip), Login::TooSoon(_)),
            "even the right token waits"
        );
        let other = Some(IpAddr::from([10, 0, 0, 3]));
        assert!(matches!(auth.login(TOKEN, other), Login::Opened(_)));
        assert_eq!(wait_after(FREE_ATTEMPTS + 2), Duration::from_secs(4));
        assert_eq!(wait_after(100), MAX_WAIT);
    }

    #[test]
    fn without_a_token_nothing_opens() {
        let auth = Auth::new(None);
        assert_eq!(auth.login("", None), Login::ReadOnly);
        assert!(!auth.allows(Some("x"), Some("y")));
    }
}
