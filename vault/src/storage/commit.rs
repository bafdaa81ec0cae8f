//! Group commit: concurrent writers share metadata syncs instead of each paying for one.
//!
//! A writer applies its change, takes a ticket ([`GroupCommit::written`]) and waits
//! ([`GroupCommit::wait_durable`]). One waiter at a time runs the sync; everyone whose ticket
//! was taken before that sync started is released by it. Writers arriving during a sync are
//! covered by the next one, which starts as soon as the current one ends, so a burst of N
//! writers costs about two syncs, not N. A failed sync is never retried: it and every later wait
//! fail (fail-stop, SPEC.md §8).

use std::sync::{Condvar, Mutex, MutexGuard};

use crate::storage::StoreError;

#[derive(Debug, Default)]
struct State {
    /// Tickets handed out so far (one per applied change).
    written: u64,
    /// Every ticket up to this one is durable.
    durable: u64,
    /// A sync is running.
    syncing: bool,
    /// Syncs run, and tickets they released (for metrics and benchmarks).
    syncs: u64,
    /// The first failed sync: nothing is synced or released after it (fail-stop).
    failed: Option<String>,
}

/// Shared state of the group commit.
#[derive(Debug, Default)]
pub struct GroupCommit {
    state: Mutex<State>,
    done: Condvar,
}

/// Counters of the group commit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Changes applied.
    pub written: u64,
    /// Syncs run.
    pub syncs: u64,
}

impl GroupCommit {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves only counters behind, which stay consistent
        // (every update is a single assignment), so a poisoned lock is safe to keep using.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that a change was applied and returns its ticket.
    pub fn written(&self) -> u64 {
        let mut s = self.lock();
        s.written += 1;
        s.written
    }

    /// The latest ticket handed out (covers every change applied before this call).
    pub fn latest(&self) -> u64 {
        self.lock().written
    }

    /// Counters so far.
    pub fn stats(&self) -> CommitStats {
        let s = self.lock();
        CommitStats { written: s.written, syncs: s.syncs }
    }

    /// Returns once every change up to `ticket` is durable, running `sync` if needed.
    pub fn wait_durable(&self, ticket: u64, sync: impl Fn() -> Result<(), StoreError>) -> Result<(), StoreError> {
        let mut s = self.lock();
        loop {
            if s.durable >= ticket {
                return Ok(());
            }
            if let Some(reason) = &s.failed {
                // Never retried: after a failed fdatasync/syncfs the kernel may have dropped the
                // pages it could not write, so a later successful sync proves nothing.
                return Err(StoreError::Stopped(reason.clone()));
            }
            if s.syncing {
                s = self.done.wait(s).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            // Become the leader: everything ticketed so far is applied, so one sync covers it.
            let target = s.written;
            s.syncing = true;
            drop(s);
            let result = sync();
            s = self.lock();
            s.syncing = false;
            match &result {
                Ok(()) => {
                    s.durable = s.durable.max(target);
                    s.syncs += 1;
                }
                Err(e) => s.failed = Some(e.to_string()),
            }
            self.done.notify_all();
            // On failure the others wake and fail too: nobody past `durable` is ever released.
            result?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    #[test]
    fn concurrent_writers_share_syncs() {
        let gc = Arc::new(GroupCommit::default());
        let syncs = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let gc = gc.clone();
                let syncs = syncs.clone();
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        let t = gc.written();
                        gc.wait_durable(t, || {
                            syncs.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_millis(1));
                            Ok(())
                        })
                        .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let st = gc.stats();
        assert_eq!(st.written, 800);
        assert_eq!(st.syncs, syncs.load(Ordering::SeqCst));
        assert!(st.syncs < 800, "no sharing: {} syncs", st.syncs);
    }

    #[test]
    fn item_10_3_a_failed_sync_is_never_retried() {
        let gc = GroupCommit::default();
        let before = gc.written();
        gc.wait_durable(before, || Ok(())).unwrap();
        let t = gc.written();
        assert!(gc.wait_durable(t, || Err(StoreError::Meta("EIO".into()))).is_err());
        // Not retried, not released, however often it is asked; later tickets neither.
        for ticket in [t, gc.written()] {
            match gc.wait_durable(ticket, || panic!("a sync after a failed sync")) {
                Err(StoreError::Stopped(reason)) => assert!(reason.contains("EIO"), "{reason}"),
                other => panic!("{other:?}"),
            }
        }
        // What was durable before the failure stays durable.
        gc.wait_durable(before, || panic!("synced twice")).unwrap();
    }
}
