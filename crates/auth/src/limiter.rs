//! Failed sign-ins counted per user and per client address, so that guessing passwords
//! costs the guesser time instead of the registry CPU (each guess is a bcrypt or
//! argon2 run). Counts live in this process: behind a load balancer each instance
//! allows its own share, which still bounds guessing to a fixed rate.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Keys tracked at most; beyond it, new user names are not tracked (addresses still
/// are), so that inventing names cannot grow memory without bound.
const MAX_KEYS: usize = 100_000;

pub struct LoginLimiter {
    failures: u32,
    window: Duration,
    counts: Mutex<HashMap<Key, (u32, Instant)>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    User(String),
    Address(IpAddr),
}

impl LoginLimiter {
    pub fn new(failures: u32, window: Duration) -> LoginLimiter {
        LoginLimiter { failures, window, counts: Mutex::new(HashMap::new()) }
    }

    /// `Err(wait)` when the user or the address has used up its failures.
    pub fn check(&self, user: &str, from: IpAddr) -> Result<(), Duration> {
        if self.failures == 0 {
            return Ok(());
        }
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let blocked = [Key::User(user.to_owned()), Key::Address(from)].into_iter().filter_map(|k| {
            let (n, since) = counts.get(&k)?;
            let left = self.window.checked_sub(since.elapsed())?;
            (*n >= self.failures).then_some(left)
        });
        match blocked.max() {
            Some(wait) => Err(wait.max(Duration::from_secs(1))),
            None => Ok(()),
        }
    }

    pub fn failed(&self, user: &str, from: IpAddr) {
        if self.failures == 0 {
            return;
        }
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if counts.len() >= MAX_KEYS {
            counts.retain(|_, (_, since)| since.elapsed() < self.window);
        }
        for key in [Key::Address(from), Key::User(user.to_owned())] {
            if counts.len() >= MAX_KEYS && !counts.contains_key(&key) {
                continue;
            }
            let entry = counts.entry(key).or_insert((0, Instant::now()));
            if entry.1.elapsed() >= self.window {
                *entry = (0, Instant::now());
            }
            entry.0 += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_per_user_and_per_address() {
        let l = LoginLimiter::new(2, Duration::from_secs(60));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        l.failed("alice", a);
        assert!(l.check("alice", a).is_ok());
        l.failed("alice", b);
        // alice has two failures, from two addresses: blocked from anywhere.
        assert!(l.check("alice", "10.0.0.3".parse().unwrap()).is_err());
        assert!(l.check("bob", b).is_ok());
        l.failed("carol", b);
        // b has two failures now: blocked for every user.
        let wait = l.check("dave", b).unwrap_err();
        assert!(wait <= Duration::from_secs(60) && wait >= Duration::from_secs(1));
        assert!(LoginLimiter::new(0, Duration::from_secs(1)).check("x", a).is_ok());
    }
}
