//! An htpasswd file, re-read when it changes: operators add users by editing it, as
//! with registry:2, and expect that to take effect without a restart.

use crate::password::StoredHash;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// How often the file's modification time is looked at.
const CHECK_EVERY: Duration = Duration::from_secs(1);

pub struct Htpasswd {
    path: PathBuf,
    state: Mutex<State>,
}

struct State {
    entries: Arc<HashMap<String, StoredHash>>,
    stamp: Option<(SystemTime, u64)>,
    checked: Instant,
}

impl Htpasswd {
    /// Reads the file now: a missing or unreadable file at start-up is a configuration
    /// error, not an empty user list.
    pub fn open(path: PathBuf) -> std::io::Result<Htpasswd> {
        let stamp = stamp(&path);
        let entries = Arc::new(parse(&std::fs::read_to_string(&path)?, &path));
        Ok(Htpasswd { path, state: Mutex::new(State { entries, stamp, checked: Instant::now() }) })
    }

    /// The hash stored for `user`, from the file as it is now (checked at most once a
    /// second).
    pub fn lookup(&self, user: &str) -> Option<StoredHash> {
        self.current().get(user).cloned()
    }

    fn current(&self) -> Arc<HashMap<String, StoredHash>> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.checked.elapsed() >= CHECK_EVERY {
            state.checked = Instant::now();
            let now = stamp(&self.path);
            if now != state.stamp {
                match std::fs::read_to_string(&self.path) {
                    Ok(text) => {
                        state.entries = Arc::new(parse(&text, &self.path));
                        state.stamp = now;
                        tracing::info!(path = %self.path.display(), users = state.entries.len(), "reloaded the htpasswd file");
                    }
                    // Being replaced: keep the users we have and look again next time.
                    Err(e) => tracing::warn!(path = %self.path.display(), error = %e, "cannot read the htpasswd file"),
                }
            }
        }
        state.entries.clone()
    }
}

fn stamp(path: &std::path::Path) -> Option<(SystemTime, u64)> {
    std::fs::metadata(path).ok().and_then(|m| Some((m.modified().ok()?, m.len())))
}

/// `user:hash` lines; blank lines and `#` comments are skipped, entries with weak or
/// unknown hashes are refused with a warning that names the user, never the hash.
fn parse(text: &str, path: &std::path::Path) -> HashMap<String, StoredHash> {
    let mut entries = HashMap::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let Some((user, hash)) = line.split_once(':') else { continue };
        match StoredHash::recognise(hash) {
            Some(h) => {
                entries.insert(user.to_owned(), h);
            }
            None => tracing::warn!(
                path = %path.display(),
                user,
                "ignoring an htpasswd entry that is not bcrypt (write it with `htpasswd -B`)"
            ),
        }
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        let alice = bcrypt::hash("a", 4).unwrap();
        std::fs::write(&path, format!("# users\nalice:{alice}\nbob:$apr1$weak$hash\n\n")).unwrap();
        let h = Htpasswd::open(path.clone()).unwrap();
        assert!(h.lookup("alice").unwrap().verify("a"));
        assert_eq!(h.lookup("bob"), None);

        let carol = bcrypt::hash("c", 4).unwrap();
        std::fs::write(&path, format!("carol:{carol}\n# alice removed, file longer than before\n")).unwrap();
        // The test moves the check time back instead of waiting for it.
        h.state.lock().unwrap().checked -= CHECK_EVERY;
        assert_eq!(h.lookup("alice"), None);
        assert!(h.lookup("carol").unwrap().verify("c"));
        assert!(Htpasswd::open(dir.path().join("missing")).is_err());
    }
}
