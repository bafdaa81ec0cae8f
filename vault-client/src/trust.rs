//! What the client remembers about a server's audit log, so that a log rolled back or forked
//! behind its back is detected: the vault key it pinned, and the last checkpoint it verified.
//!
//! The state file is JSON, one entry per server (by base URL), written atomically (a temporary
//! file renamed over the old one).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use vault::log::note::{parse_checkpoint, NoteVerifier};

use crate::Error;

/// The last verified state of one server's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    /// The vault's note verifier key (`<name>+<8 hex>+<base64>`), pinned at first use.
    pub vault_key: String,
    /// The log's origin line.
    pub origin: String,
    /// Tree size of the last verified checkpoint.
    pub size: u64,
    /// Its root hash, standard base64.
    pub root: String,
}

/// A checkpoint that verified: signed by the pinned key and consistent with what was seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Origin line.
    pub origin: String,
    /// Tree size.
    pub size: u64,
    /// Root hash.
    pub root: [u8; 32],
    /// The signed note as served.
    pub note: String,
}

/// The state file.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct TrustStore {
    #[serde(default)]
    servers: BTreeMap<String, Seen>,
    #[serde(skip)]
    path: Option<PathBuf>,
}

impl TrustStore {
    /// Loads the state file (a missing file is an empty state).
    pub fn load(path: &Path) -> Result<Self, Error> {
        let mut s: TrustStore = match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                Error::Invalid(format!(
                    "{}: not a vault client state file ({e}); move it away to start over",
                    path.display()
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => TrustStore::default(),
            Err(e) => return Err(Error::io(path)(e)),
        };
        s.path = Some(path.to_path_buf());
        Ok(s)
    }

    /// An in-memory state (nothing remembered between runs).
    pub fn ephemeral() -> Self {
        Self::default()
    }

    /// What was last seen of `server`.
    pub fn seen(&self, server: &str) -> Option<&Seen> {
        self.servers.get(server)
    }

    /// Records a verified state and writes the file.
    pub fn remember(&mut self, server: &str, seen: Seen) -> Result<(), Error> {
        self.servers.insert(server.to_owned(), seen);
        let Some(path) = &self.path else { return Ok(()) };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
        }
        let tmp = path.with_extension("tmp");
        let body = serde_json::to_vec_pretty(self).map_err(|e| Error::Invalid(e.to_string()))?;
        std::fs::write(&tmp, body).map_err(Error::io(&tmp))?;
        std::fs::rename(&tmp, path).map_err(Error::io(path))
    }
}

/// Verifies a checkpoint note with `vault_key` and parses it.
pub fn open_checkpoint(vault_key: &str, note: &str) -> Result<Checkpoint, Error> {
    let verifier = NoteVerifier::parse(vault_key).map_err(|e| Error::Invalid(format!("vault key: {e}")))?;
    let text = verifier
        .verify(note)
        .map_err(|e| Error::Verification(format!("the checkpoint is not signed by the vault key: {e}")))?;
    let (origin, size, root) =
        parse_checkpoint(text).map_err(|e| Error::Verification(format!("malformed checkpoint: {e}")))?;
    Ok(Checkpoint { origin, size, root, note: note.to_owned() })
}

/// Decides whether `new` may follow `old` without a proof: returns `Ok(true)` if a
/// consistency proof from `old.size` to `new.size` is needed, `Ok(false)` if nothing is, and
/// the error for a rollback, a fork at equal size, or another origin.
pub fn needs_proof(old: &Seen, new: &Checkpoint) -> Result<bool, Error> {
    if old.origin != new.origin {
        return Err(Error::Verification(format!(
            "the log's origin changed from {:?} to {:?}: this is another log",
            old.origin, new.origin
        )));
    }
    if new.size < old.size {
        return Err(Error::Verification(format!(
            "the log was rolled back: it had {} entries when last seen, now {}",
            old.size, new.size
        )));
    }
    if new.size == old.size {
        if B64.encode(new.root) != old.root {
            return Err(Error::Verification(format!(
                "the log forked: same size {} as last seen, different root hash",
                new.size
            )));
        }
        return Ok(false);
    }
    Ok(old.size > 0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn seen(size: u64, root: [u8; 32]) -> Seen {
        Seen { vault_key: String::new(), origin: "o".into(), size, root: B64.encode(root) }
    }

    fn cp(size: u64, root: [u8; 32]) -> Checkpoint {
        Checkpoint { origin: "o".into(), size, root, note: String::new() }
    }

    #[test]
    fn rollbacks_forks_and_other_logs_are_refused() {
        assert!(matches!(needs_proof(&seen(5, [1; 32]), &cp(4, [1; 32])), Err(Error::Verification(_))));
        assert!(matches!(needs_proof(&seen(5, [1; 32]), &cp(5, [2; 32])), Err(Error::Verification(_))));
        assert!(!needs_proof(&seen(5, [1; 32]), &cp(5, [1; 32])).unwrap());
        assert!(needs_proof(&seen(5, [1; 32]), &cp(6, [2; 32])).unwrap());
        assert!(!needs_proof(&seen(0, [0; 32]), &cp(6, [2; 32])).unwrap());
        let mut other = cp(6, [2; 32]);
        other.origin = "p".into();
        assert!(matches!(needs_proof(&seen(5, [1; 32]), &other), Err(Error::Verification(_))));
    }

    #[test]
    fn the_state_file_round_trips_and_a_corrupt_one_is_an_error() {
        let dir = tempfile_dir();
        let path = dir.join("state.json");
        let mut s = TrustStore::load(&path).unwrap();
        s.remember("http://x", seen(3, [9; 32])).unwrap();
        let back = TrustStore::load(&path).unwrap();
        assert_eq!(back.seen("http://x"), Some(&seen(3, [9; 32])));
        std::fs::write(&path, "{not json").unwrap();
        assert!(matches!(TrustStore::load(&path), Err(Error::Invalid(_))));
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("vault-client-trust-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
