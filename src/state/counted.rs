//! A state store that counts what passes through it: how many objects an
//! operation read, wrote and listed, and how many bytes it wrote. The CLI
//! reports the counts with an operation's result (`state_io` in
//! `--output json`), so the cost of the journal and the per-machine
//! records at a few hundred machines is measured, not guessed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::{Entry, Expect, Holder, LockGuard, LockInfo, StateError, StateStore};

/// The counts so far.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct StateIo {
    pub reads: u64,
    pub writes: u64,
    pub deletes: u64,
    pub lists: u64,
    /// Objects the lists returned.
    pub listed: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
}

#[derive(Debug, Default)]
pub struct Counts {
    reads: AtomicU64,
    writes: AtomicU64,
    deletes: AtomicU64,
    lists: AtomicU64,
    listed: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
}

impl Counts {
    pub fn snapshot(&self) -> StateIo {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StateIo {
            reads: get(&self.reads),
            writes: get(&self.writes),
            deletes: get(&self.deletes),
            lists: get(&self.lists),
            listed: get(&self.listed),
            bytes_read: get(&self.bytes_read),
            bytes_written: get(&self.bytes_written),
        }
    }
}

fn add(counter: &AtomicU64, n: usize) {
    counter.fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
}

/// `inner`, counted into [`Counted::counts`].
pub struct Counted {
    inner: Arc<dyn StateStore>,
    counts: Arc<Counts>,
}

impl Counted {
    pub fn new(inner: Arc<dyn StateStore>) -> Counted {
        Counted {
            inner,
            counts: Arc::default(),
        }
    }

    pub fn counts(&self) -> Arc<Counts> {
        self.counts.clone()
    }
}

#[async_trait::async_trait]
impl StateStore for Counted {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn get(&self, key: &str) -> Result<Option<Entry>, StateError> {
        let got = self.inner.get(key).await?;
        add(&self.counts.reads, 1);
        add(
            &self.counts.bytes_read,
            got.as_ref().map_or(0, |e| e.value.len()),
        );
        Ok(got)
    }

    async fn put(&self, key: &str, value: &[u8], expect: Expect) -> Result<u64, StateError> {
        let revision = self.inner.put(key, value, expect).await?;
        add(&self.counts.writes, 1);
        add(&self.counts.bytes_written, value.len());
        Ok(revision)
    }

    async fn delete(&self, key: &str, expect: Expect) -> Result<(), StateError> {
        self.inner.delete(key, expect).await?;
        add(&self.counts.deletes, 1);
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Entry>, StateError> {
        let all = self.inner.list(prefix).await?;
        add(&self.counts.lists, 1);
        add(&self.counts.listed, all.len());
        add(
            &self.counts.bytes_read,
            all.iter().map(|e| e.value.len()).sum(),
        );
        Ok(all)
    }

    async fn lock(
        &self,
        name: &str,
        holder: &Holder,
        ttl: Duration,
    ) -> Result<Box<dyn LockGuard>, StateError> {
        self.inner.lock(name, holder, ttl).await
    }

    async fn locks(&self) -> Result<Vec<LockInfo>, StateError> {
        self.inner.locks().await
    }

    async fn break_lock(&self, name: &str) -> Result<Option<Holder>, StateError> {
        self.inner.break_lock(name).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::memory::MemoryStore;

    #[tokio::test]
    async fn counts_what_succeeded() {
        let store = Counted::new(Arc::new(MemoryStore::new()));
        store.put("a/b", b"hello", Expect::Absent).await.unwrap();
        assert!(store.put("a/b", b"again", Expect::Absent).await.is_err());
        store.get("a/b").await.unwrap();
        store.get("a/c").await.unwrap();
        store.list("a/").await.unwrap();
        store.delete("a/b", Expect::Any).await.unwrap();
        assert_eq!(
            store.counts().snapshot(),
            StateIo {
                reads: 2,
                writes: 1,
                deletes: 1,
                lists: 1,
                listed: 1,
                bytes_read: 10,
                bytes_written: 5,
            }
        );
    }
}
