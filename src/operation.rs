//! The skeleton every operation that takes a site down runs on (replace,
//! blue-green, rebuild's replaces, drill): the fleet lock and the site's
//! lock held for the whole operation and released on every path
//! ([`with_site_locks`]); the safety checks, refused or overridden with a
//! reason that is audited ([`gate`]) and journaled ([`Gated::journal`]).
//!
//! To add an operation: take the locks with [`with_site_locks`], pass the
//! [`gate`], begin its journal, journal the override, then its steps.

use std::future::Future;
use std::sync::Arc;

use serde_json::json;

use crate::fleet::{Fleet, Site};
use crate::infra::Infra;
use crate::job::Reporter;
use crate::keys::Keys;
use crate::lifecycle::{self, Check};
use crate::state::crypt::Sealer;
use crate::state::journal::Journal;
use crate::state::{self, Holder, Key, StateStore};

/// What an operation's steps work with: the fleet and the site acted on,
/// the keys that reach its machines, the state and the sealer of its
/// secrets, who holds the locks, where progress goes, and the world it
/// acts on. Copied freely; a blue-green replace swaps `fleet` and `site`
/// for the ones with the new roles.
#[derive(Clone, Copy)]
pub struct OpCtx<'a> {
    pub fleet: &'a Fleet,
    pub site: &'a Site,
    pub keys: &'a Keys,
    pub store: &'a dyn StateStore,
    pub sealer: &'a Sealer,
    pub holder: &'a Holder,
    pub reporter: &'a Reporter,
    pub infra: &'a dyn Infra,
}

/// Where operations run: the fleet's state, the sealer of its secrets,
/// and the world they act on ([`Infra`]: the real one, or a unit test's
/// fake).
pub struct Env {
    pub store: Arc<dyn StateStore>,
    pub sealer: Sealer,
    pub infra: Arc<dyn Infra>,
    /// What went through `store` (opened with [`Env::open`]).
    pub io: Arc<crate::state::counted::Counts>,
}

impl Env {
    /// `fleet`'s state, acting on the real world.
    pub fn open(fleet: &Fleet) -> anyhow::Result<Env> {
        let (store, sealer) = state::open(fleet)?;
        let counted = crate::state::counted::Counted::new(store);
        Ok(Env {
            io: counted.counts(),
            store: Arc::new(counted),
            sealer,
            infra: Arc::new(crate::infra::Real),
        })
    }

    /// The context of an operation on `site`, its locks held as `holder`.
    pub fn ctx<'a>(
        &'a self,
        fleet: &'a Fleet,
        site: &'a Site,
        keys: &'a Keys,
        holder: &'a Holder,
        reporter: &'a Reporter,
    ) -> OpCtx<'a> {
        OpCtx {
            fleet,
            site,
            keys,
            store: self.store.as_ref(),
            sealer: &self.sealer,
            holder,
            reporter,
            infra: self.infra.as_ref(),
        }
    }
}

/// Runs `body` while `holder` holds the fleet lock (one disrupted site at
/// a time, fleet-wide) and the site's lock, and releases both whatever
/// `body` returns. A lock that cannot be taken fails before `body` runs,
/// with nothing held. A failed release is reported unless `body` failed
/// first (then it is logged: the body's error is the one to act on).
pub async fn with_site_locks<T, Fut>(
    store: &dyn StateStore,
    fleet: &Fleet,
    site: &Site,
    holder: &Holder,
    body: impl FnOnce() -> Fut,
) -> anyhow::Result<T>
where
    Fut: Future<Output = anyhow::Result<T>>,
{
    let names = [Key::fleet(), Key::site(&site.name)];
    with_locks(store, fleet, &names, holder, body).await
}

/// [`with_site_locks`] for the operations that build a site without taking
/// it down (provision, bootstrap): only the site's lock, so the other
/// sites' operations go on.
pub async fn with_site_lock<T, Fut>(
    store: &dyn StateStore,
    fleet: &Fleet,
    site: &Site,
    holder: &Holder,
    body: impl FnOnce() -> Fut,
) -> anyhow::Result<T>
where
    Fut: Future<Output = anyhow::Result<T>>,
{
    with_locks(store, fleet, &[Key::site(&site.name)], holder, body).await
}

/// Takes `names` in order, runs `body`, releases them in reverse order.
async fn with_locks<T, Fut>(
    store: &dyn StateStore,
    fleet: &Fleet,
    names: &[Key],
    holder: &Holder,
    body: impl FnOnce() -> Fut,
) -> anyhow::Result<T>
where
    Fut: Future<Output = anyhow::Result<T>>,
{
    let ttl = state::lock_ttl(fleet);
    let mut held = Vec::with_capacity(names.len());
    for name in names {
        match store.lock(name, holder, ttl).await {
            Ok(lock) => held.push(lock),
            Err(e) => {
                release_all(held, names).await.unwrap_or_else(|r| {
                    tracing::warn!("{r}");
                });
                return Err(e.into());
            }
        }
    }
    let result = body().await;
    let released = release_all(held, names).await;
    match (result, released) {
        (Ok(value), Ok(())) => Ok(value),
        (Ok(_), Err(e)) => Err(e),
        (Err(e), released) => {
            if let Err(r) = released {
                tracing::warn!("{r}");
            }
            Err(e)
        }
    }
}

/// Releases every lock of `held` (the first `held.len()` of `names`), last
/// taken first; the first failure is returned after trying them all.
async fn release_all(held: Vec<Box<dyn state::LockGuard>>, names: &[Key]) -> anyhow::Result<()> {
    let mut first = Ok(());
    for (lock, name) in held.into_iter().zip(names).rev() {
        if let Err(e) = lock.release().await {
            if first.is_ok() {
                first = Err(anyhow::anyhow!("releasing the lock `{name}`: {e}"));
            }
        }
    }
    first
}

/// How an operation that passes the [`gate`] ended.
#[derive(Debug)]
pub enum Outcome<R> {
    /// Refused by these checks; nothing was changed.
    Refused(Vec<Check>),
    /// It ran; `R` says how that went.
    Ran(R),
}

/// How an operation treats failing safety checks.
#[derive(Clone, Copy, Debug, Default)]
pub struct Override<'a> {
    /// `--force`: go on despite failing checks.
    pub force: bool,
    /// `--reason`: why (recorded in the audit log and the journal).
    pub reason: Option<&'a str>,
}

/// What [`gate`] decided.
#[derive(Debug)]
pub enum Gate {
    /// Failing checks and no override: nothing may be changed.
    Refused { checks: Vec<Check> },
    /// The operation may go on; `overridden` names the failing checks a
    /// forced run went past (audited already).
    Open(Gated),
}

/// A passed gate: the checks and the blockers overridden.
#[derive(Debug)]
pub struct Gated {
    pub checks: Vec<Check>,
    pub overridden: Vec<String>,
    pub reason: Option<String>,
}

impl Gated {
    /// Journals the override (when there was one) as the operation's first
    /// step, so the journal says what was forced and why.
    pub async fn journal(&self, journal: &mut Journal<'_>) -> anyhow::Result<()> {
        if self.overridden.is_empty() {
            return Ok(());
        }
        let name = format!(
            "override: {} (reason: {})",
            self.overridden.join("; "),
            self.reason.as_deref().unwrap_or("")
        );
        journal.step(&name, || async { anyhow::Ok(()) }).await?;
        Ok(())
    }
}

/// The safety checks of taking `site` down for `operation` (`replace site
/// fra`): refused when any fails and `how` does not force it; a forced
/// run's blockers are written to the audit log before anything changes.
pub async fn gate(ctx: OpCtx<'_>, operation: &str, how: Override<'_>) -> anyhow::Result<Gate> {
    let OpCtx {
        fleet,
        site,
        store,
        sealer,
        infra,
        ..
    } = ctx;
    let checks = lifecycle::check(
        fleet,
        site,
        store,
        sealer,
        infra,
        &lifecycle::Options::default(),
    )
    .await;
    let failing = lifecycle::failing(&checks);
    if failing.is_empty() {
        return Ok(Gate::Open(Gated {
            checks,
            overridden: Vec::new(),
            reason: None,
        }));
    }
    if !how.force {
        return Ok(Gate::Refused { checks });
    }
    let reason = how.reason.unwrap_or_default().to_string();
    state::audit(
        store,
        "override",
        json!({ "operation": operation, "blockers": failing, "reason": reason }),
    )
    .await?;
    Ok(Gate::Open(Gated {
        checks,
        overridden: failing,
        reason: Some(reason),
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::state::memory::MemoryStore;

    fn block<T>(f: impl Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn example() -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in crate::example::FILES {
            let target = dir.path().join(path);
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            std::fs::write(&target, text).unwrap();
        }
        crate::fleet::load(dir.path()).unwrap()
    }

    #[test]
    fn locks_are_released_on_success_failure_and_when_the_site_lock_is_held() {
        let fleet = example();
        let site = fleet.site("fra").unwrap();
        let store = MemoryStore::new();
        let holder = Holder::current("test");
        block(async {
            let ok = with_site_locks(&store, &fleet, site, &holder, || async {
                assert_eq!(store.locks().await.unwrap().len(), 2, "both held");
                anyhow::Ok(7)
            })
            .await
            .unwrap();
            assert_eq!(ok, 7);
            assert!(store.locks().await.unwrap().is_empty());

            let failed: anyhow::Result<()> =
                with_site_locks(&store, &fleet, site, &holder, || async {
                    anyhow::bail!("the body failed")
                })
                .await;
            assert_eq!(failed.unwrap_err().to_string(), "the body failed");
            assert!(store.locks().await.unwrap().is_empty());

            // Someone else holds fra's lock: refused before the body runs,
            // and the fleet lock taken first is given back.
            let other = Holder::current("other");
            let held = store
                .lock(&Key::site("fra"), &other, std::time::Duration::from_secs(1))
                .await
                .unwrap();
            let mut ran = false;
            let refused = with_site_locks(&store, &fleet, site, &holder, || async {
                ran = true;
                anyhow::Ok(())
            })
            .await;
            assert!(!ran);
            assert!(refused.unwrap_err().to_string().contains("sites/fra"));
            let names: Vec<String> = store
                .locks()
                .await
                .unwrap()
                .into_iter()
                .map(|l| l.name)
                .collect();
            assert_eq!(names, ["sites/fra"]);
            held.release().await.unwrap();
        });
    }
}
