//! What an operation does outside its state: power machines, watch them
//! boot through the boot server, bootstrap their cluster over SSH, ask
//! etcd whether it is healthy, run the fleet's hooks. The operations
//! ([`crate::lifecycle`], [`crate::provision`]) reach these only through
//! [`Infra`], so their steps and safety rules can be tested on a
//! [`crate::state::memory::MemoryStore`] with the recording fake of
//! `fake.rs` (no root, no VMs); [`Real`] is what every command uses, and
//! the integration tests and the lab drive it against the real programs.
//!
//! To add something an operation does to the world: a method here, its
//! real body in [`Real`], and what the fake records.

#[cfg(test)]
pub mod fake;

use std::collections::BTreeMap;
use std::time::Duration;

use crate::bootstrap::{self, Phase};
use crate::fleet::{Fleet, Machine, Role, Site};
use crate::job::Reporter;
use crate::keys::Keys;
use crate::operation::OpCtx;
use crate::pki::ClusterPki;
use crate::power::{self, Action};
use crate::state::journal::Journal;
use crate::state::StateStore;

/// The world an operation acts on.
#[async_trait::async_trait]
pub trait Infra: Send + Sync {
    /// Runs `action` on each of `machines` of `site`: one outcome each, in
    /// order.
    async fn power(
        &self,
        fleet: &Fleet,
        site: &Site,
        machines: &[&Machine],
        action: Action,
        opts: &power::Options,
    ) -> Vec<power::Outcome>;

    /// Waits until each of `machines` of `site` has booted its Ignition
    /// (reported to the boot server after `since`, unix seconds) and
    /// answers SSH with its pinned host key; a machine whose provisioning
    /// window in `store` shows its config asked for twice fails.
    // Each argument is one thing the wait needs; a struct for them would
    // be used nowhere else.
    #[allow(clippy::too_many_arguments)]
    async fn booted(
        &self,
        site: &Site,
        machines: &[&Machine],
        keys: &Keys,
        store: &dyn StateStore,
        since: u64,
        opts: &crate::provision::Options,
        reporter: &Reporter,
    ) -> Phase;

    /// Bootstraps the cluster of the site of `ctx` on its booted machines,
    /// its steps in `journal`.
    async fn bootstrap(
        &self,
        ctx: OpCtx<'_>,
        pki: &ClusterPki,
        opts: &bootstrap::Options,
        journal: Option<&mut Journal<'_>>,
    ) -> anyhow::Result<bootstrap::Report>;

    /// How many of `site`'s etcd members answer healthy with `pki`, and
    /// the others' errors (`machine: error`).
    async fn etcd_health(
        &self,
        site: &Site,
        pki: &ClusterPki,
    ) -> anyhow::Result<(usize, Vec<String>)>;

    /// Runs the fleet's hook `which` (`traffic.drain`, `drill.isolate`, …):
    /// `command` for `site`.
    async fn hook(
        &self,
        fleet: &Fleet,
        site: &Site,
        which: &str,
        command: &str,
    ) -> anyhow::Result<()>;

    /// The machines `site`'s boot server does not yet give their role in
    /// `next` (`fra-spare-01 still "spare"`).
    async fn unrendered(
        &self,
        site: &Site,
        next: &BTreeMap<String, Role>,
    ) -> anyhow::Result<Vec<String>>;
}

/// The real world: BMCs, the boot server, SSH, etcd over TLS, `sh -c`.
pub struct Real;

#[async_trait::async_trait]
impl Infra for Real {
    async fn power(
        &self,
        fleet: &Fleet,
        site: &Site,
        machines: &[&Machine],
        action: Action,
        opts: &power::Options,
    ) -> Vec<power::Outcome> {
        let targets: Vec<(&Site, &Machine)> = machines.iter().map(|m| (site, *m)).collect();
        power::run(fleet, &targets, action, opts).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn booted(
        &self,
        site: &Site,
        machines: &[&Machine],
        keys: &Keys,
        store: &dyn StateStore,
        since: u64,
        opts: &crate::provision::Options,
        reporter: &Reporter,
    ) -> Phase {
        crate::provision::wait_booted(site, machines, keys, store, since, opts, reporter).await
    }

    async fn bootstrap(
        &self,
        ctx: OpCtx<'_>,
        pki: &ClusterPki,
        opts: &bootstrap::Options,
        journal: Option<&mut Journal<'_>>,
    ) -> anyhow::Result<bootstrap::Report> {
        let OpCtx {
            fleet,
            site,
            keys,
            reporter,
            ..
        } = ctx;
        bootstrap::bootstrap_site(fleet, site, keys, pki, opts, reporter, journal).await
    }

    async fn etcd_health(
        &self,
        site: &Site,
        pki: &ClusterPki,
    ) -> anyhow::Result<(usize, Vec<String>)> {
        bootstrap::etcd_health(site, pki).await
    }

    async fn hook(
        &self,
        fleet: &Fleet,
        site: &Site,
        which: &str,
        command: &str,
    ) -> anyhow::Result<()> {
        crate::lifecycle::traffic::hook(fleet, site, which, command).await
    }

    async fn unrendered(
        &self,
        site: &Site,
        next: &BTreeMap<String, Role>,
    ) -> anyhow::Result<Vec<String>> {
        let url = format!(
            "{}/api/v1/machines",
            site.boot_server.as_str().trim_end_matches('/')
        );
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?;
        let body = client.get(&url).send().await?.bytes().await?;
        let doc: serde_json::Value = serde_json::from_slice(&body)?;
        Ok(doc["machines"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| {
                let name = m["machine"].as_str()?;
                let want = next.get(name)?;
                (m["role"].as_str() != Some(want.as_str()))
                    .then(|| format!("{name} still {}", m["role"]))
            })
            .collect())
    }
}
