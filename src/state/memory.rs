//! An in-memory [`StateStore`]: the backend of the operations' unit tests
//! (no directory, no etcd, no root). Same contract as the others: keys are
//! checked, every write bumps a store-wide revision, compare-and-swap
//! refuses a stale revision, a lock is held until released or dropped.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::{check_key, Entry, Expect, Holder, LockGuard, LockInfo, StateError, StateStore};

#[derive(Default)]
struct Inner {
    revision: u64,
    objects: BTreeMap<String, (Vec<u8>, u64)>,
    locks: BTreeMap<String, Holder>,
}

/// The state in memory; clones share it.
#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the mutex cannot leave a half-written map
        // (every change is one insert or remove), so poison is ignored.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn check(key: &str, found: Option<u64>, expect: Expect) -> Result<(), StateError> {
    let ok = match expect {
        Expect::Any => true,
        Expect::Absent => found.is_none(),
        Expect::Revision(r) => found == Some(r),
    };
    if ok {
        return Ok(());
    }
    Err(StateError::Conflict {
        key: key.to_string(),
        expected: match expect {
            Expect::Absent => "no object".into(),
            Expect::Revision(r) => format!("revision {r}"),
            Expect::Any => "anything".into(),
        },
        found: found.map_or("no object".into(), |r| format!("revision {r}")),
    })
}

#[async_trait::async_trait]
impl StateStore for MemoryStore {
    fn describe(&self) -> String {
        "memory".into()
    }

    async fn get(&self, key: &str) -> Result<Option<Entry>, StateError> {
        check_key(key)?;
        Ok(self.inner().objects.get(key).map(|(value, rev)| Entry {
            key: key.to_string(),
            value: value.clone(),
            revision: *rev,
        }))
    }

    async fn put(&self, key: &str, value: &[u8], expect: Expect) -> Result<u64, StateError> {
        check_key(key)?;
        let mut inner = self.inner();
        check(key, inner.objects.get(key).map(|(_, r)| *r), expect)?;
        inner.revision += 1;
        let rev = inner.revision;
        inner.objects.insert(key.to_string(), (value.to_vec(), rev));
        Ok(rev)
    }

    async fn delete(&self, key: &str, expect: Expect) -> Result<(), StateError> {
        check_key(key)?;
        let mut inner = self.inner();
        check(key, inner.objects.get(key).map(|(_, r)| *r), expect)?;
        inner.objects.remove(key);
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Entry>, StateError> {
        Ok(self
            .inner()
            .objects
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, (value, rev))| Entry {
                key: k.clone(),
                value: value.clone(),
                revision: *rev,
            })
            .collect())
    }

    async fn lock(
        &self,
        name: &str,
        holder: &Holder,
        _ttl: Duration,
    ) -> Result<Box<dyn LockGuard>, StateError> {
        check_key(name)?;
        let mut inner = self.inner();
        if let Some(h) = inner.locks.get(name) {
            return Err(StateError::Locked {
                name: name.to_string(),
                holder: Box::new(h.clone()),
                since: h.since.clone(),
                stale: false,
            });
        }
        inner.locks.insert(name.to_string(), holder.clone());
        Ok(Box::new(MemoryLock {
            store: self.clone(),
            name: Some(name.to_string()),
        }))
    }

    async fn locks(&self) -> Result<Vec<LockInfo>, StateError> {
        Ok(self
            .inner()
            .locks
            .iter()
            .map(|(name, holder)| LockInfo {
                name: name.clone(),
                holder: holder.clone(),
                stale: false,
            })
            .collect())
    }

    async fn break_lock(&self, name: &str) -> Result<Option<Holder>, StateError> {
        Ok(self.inner().locks.remove(name))
    }
}

struct MemoryLock {
    store: MemoryStore,
    name: Option<String>,
}

impl MemoryLock {
    fn remove(&mut self) {
        if let Some(name) = self.name.take() {
            self.store.inner().locks.remove(&name);
        }
    }
}

#[async_trait::async_trait]
impl LockGuard for MemoryLock {
    async fn release(mut self: Box<Self>) -> Result<(), StateError> {
        self.remove();
        Ok(())
    }
}

impl Drop for MemoryLock {
    fn drop(&mut self) {
        self.remove();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn block<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn compare_and_swap_lists_and_locks_like_the_other_backends() {
        block(async {
            let s = MemoryStore::new();
            let r1 = s.put("sites/fra", b"1", Expect::Absent).await.unwrap();
            assert!(matches!(
                s.put("sites/fra", b"x", Expect::Absent).await,
                Err(StateError::Conflict { .. })
            ));
            let r2 = s
                .put("sites/fra", b"2", Expect::Revision(r1))
                .await
                .unwrap();
            assert!(r2 > r1);
            assert!(s
                .put("sites/fra", b"3", Expect::Revision(r1))
                .await
                .is_err());
            s.put("sites/ber", b"b", Expect::Any).await.unwrap();
            s.put("machines/fra-cp-01", b"m", Expect::Any)
                .await
                .unwrap();
            let keys: Vec<String> = s
                .list("sites/")
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.key)
                .collect();
            assert_eq!(keys, ["sites/ber", "sites/fra"]);
            assert!(matches!(s.get("../x").await, Err(StateError::BadKey(_))));
            s.delete("sites/ber", Expect::Any).await.unwrap();
            assert!(s.get("sites/ber").await.unwrap().is_none());

            let h = Holder::current("test");
            let held = s.lock("fleet", &h, Duration::from_secs(1)).await.unwrap();
            assert!(matches!(
                s.lock("fleet", &h, Duration::from_secs(1)).await,
                Err(StateError::Locked { .. })
            ));
            assert_eq!(s.locks().await.unwrap().len(), 1);
            held.release().await.unwrap();
            assert!(s.locks().await.unwrap().is_empty());
            let dropped = s.lock("fleet", &h, Duration::from_secs(1)).await.unwrap();
            drop(dropped);
            assert!(s.locks().await.unwrap().is_empty());
        });
    }
}
