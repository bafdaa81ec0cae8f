//! Fail-stop (SPEC.md §8, "Fail-stop"): the first failed write or sync of the metadata journal
//! or the blob store stops every later write until the process restarts and recovery runs.
//!
//! After a failed `fdatasync` or `syncfs`, Linux may already have dropped the dirty pages it
//! could not write (and reports the error only once), so retrying and then acknowledging could
//! acknowledge data that is not on disk. After a failed journal append, a torn record may sit
//! at the end of the journal; a later record appended behind it would be hidden from replay.
//! So nothing is retried: the vault refuses writes, reads go on, and the next open replays the
//! journal (dropping a torn tail) and cleans up the blob folder.
//!
//! [`Faults`] injects such failures for tests (a handle shared with the storage backends; it
//! costs one atomic load per I/O when nothing is armed).

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use crate::error::Error;

/// A place where [`Faults`] can inject a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// A journal append: half the record reaches the file, then the write fails (a torn record).
    JournalWrite,
    /// The journal's `fdatasync`.
    JournalSync,
    /// sled's apply of a batch already appended to the journal.
    MetaApply,
    /// The blob store's sync (`syncfs` on Linux).
    BlobSync,
    /// A small blob's write to a pack file (`pack.rs`).
    PackWrite,
    /// One op of sled's apply of a journaled batch (counted per op: the ops before it are
    /// applied, so the batch is left half applied).
    MetaApplyPart,
}

const POINTS: usize = 6;

impl Fault {
    fn index(self) -> usize {
        match self {
            Fault::JournalWrite => 0,
            Fault::JournalSync => 1,
            Fault::MetaApply => 2,
            Fault::BlobSync => 3,
            Fault::PackWrite => 4,
            Fault::MetaApplyPart => 5,
        }
    }
}

/// Injected storage failures, shared by the backends that were given the same handle (see
/// `SledMeta::with_faults` and `FsBlobs::with_faults`). For tests; nothing is armed by default.
#[derive(Debug, Clone, Default)]
pub struct Faults(Arc<[AtomicU64; POINTS]>);

impl Faults {
    /// A handle with nothing armed.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the `nth` call (1 = the next one) at `point` fail, once.
    pub fn fail_nth(&self, point: Fault, nth: u64) {
        self.0[point.index()].store(nth, Ordering::SeqCst);
    }

    /// Whether this call at `point` must fail (counts the call down if armed).
    pub(crate) fn hit(&self, point: Fault) -> bool {
        let slot = &self.0[point.index()];
        if slot.load(Ordering::Relaxed) == 0 {
            return false;
        }
        slot.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok_and(|n| n == 1)
    }

    /// The error an injected failure reports.
    pub(crate) fn error(point: Fault) -> io::Error {
        io::Error::other(format!("injected failure ({point:?})"))
    }
}

type Hook = Box<dyn Fn(&str) + Send + Sync>;

/// The fail-stop state of an open vault.
#[derive(Default)]
pub(crate) struct FailStop {
    /// The first failure, once there was one.
    reason: OnceLock<String>,
    /// Told the reason once, when the vault stops.
    hook: OnceLock<Hook>,
}

impl fmt::Debug for FailStop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailStop").field("reason", &self.reason.get()).finish_non_exhaustive()
    }
}

impl FailStop {
    /// Refuses a write once the vault has stopped (nothing of it was done).
    pub fn check(&self) -> Result<(), Error> {
        match self.reason.get() {
            Some(reason) => Err(Error::FailStopped { reason: reason.clone(), outcome_unknown: false }),
            None => Ok(()),
        }
    }

    /// Stops the vault after a failed write or sync of `what` (the first failure is kept as the
    /// reason and reported to the hook) and returns the error for the write that hit it: its
    /// outcome is unknown (it may or may not be found after recovery, whole or not at all).
    pub fn trip(&self, what: &str, cause: impl fmt::Display) -> Error {
        let mut first = false;
        let reason = self.reason.get_or_init(|| {
            first = true;
            format!("{what}: {cause}")
        });
        if first {
            if let Some(hook) = self.hook.get() {
                hook(reason);
            }
        }
        Error::FailStopped { reason: reason.clone(), outcome_unknown: true }
    }

    /// The first failure, if the vault has stopped.
    pub fn reason(&self) -> Option<&str> {
        self.reason.get().map(String::as_str)
    }

    /// Sets the function told when the vault stops (once; later calls are ignored). If the
    /// vault has already stopped, it is told at once.
    pub fn set_hook(&self, hook: Hook) {
        if self.hook.set(hook).is_ok() {
            if let (Some(reason), Some(hook)) = (self.reason.get(), self.hook.get()) {
                hook(reason);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_fire_once_at_the_nth_call() {
        let f = Faults::new();
        assert!(!f.hit(Fault::JournalSync));
        f.fail_nth(Fault::JournalSync, 3);
        let hits: Vec<bool> = (0..5).map(|_| f.hit(Fault::JournalSync)).collect();
        assert_eq!(hits, [false, false, true, false, false]);
        assert!(!f.hit(Fault::BlobSync));
    }

    #[test]
    fn the_first_failure_is_the_reason_and_is_reported_once() {
        let fs = FailStop::default();
        assert!(fs.check().is_ok());
        let told = Arc::new(std::sync::Mutex::new(Vec::new()));
        let t = told.clone();
        fs.set_hook(Box::new(move |r| t.lock().unwrap_or_else(|p| p.into_inner()).push(r.to_owned())));
        let e = fs.trip("syncing the journal", "EIO");
        assert!(matches!(e, Error::FailStopped { outcome_unknown: true, .. }));
        fs.trip("syncing blobs", "EIO again");
        assert!(
            matches!(fs.check(), Err(Error::FailStopped { outcome_unknown: false, ref reason }) if reason == "syncing the journal: EIO")
        );
        assert_eq!(*told.lock().unwrap_or_else(|p| p.into_inner()), ["syncing the journal: EIO"]);
    }
}
