//! `plan site S`: the steps a replace of the site would run now (the
//! list it journals) and the safety checks judged now, as one report.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::fleet::{Fleet, Site, SiteName};
use crate::infra::Infra;
use crate::lifecycle::{self, Check};
use crate::state::{crypt::Sealer, records, StateStore};

/// What a replace of a site would do, and whether it would be refused.
#[derive(Debug, Serialize)]
pub struct SitePlan {
    pub site: SiteName,
    pub from_generation: Option<u64>,
    pub to_generation: u64,
    pub blue_green: bool,
    pub steps: Vec<super::Step>,
    pub checks: Vec<Check>,
    /// A check fails: the replace would be refused without `--force`.
    pub blocked: bool,
}

/// The plan of a replace of `site` (`blue_green`: built on its spares)
/// with `bake`; the checks ask the other sites' etcd when `probe`.
pub async fn site_plan(
    fleet: &Fleet,
    site: &Site,
    (store, sealer, infra): (&dyn StateStore, &Sealer, &dyn Infra),
    probe: bool,
    blue_green: bool,
    bake: Duration,
) -> anyhow::Result<SitePlan> {
    let from = records::site_generation(store, &site.name).await?;
    let opts = lifecycle::Options {
        probe_health: probe,
        ..Default::default()
    };
    let checks = lifecycle::check(fleet, site, store, sealer, infra, &opts).await;
    let to = from.unwrap_or(0) + 1;
    let steps = if blue_green {
        let next = crate::fleet::roles::blue_green(site)?;
        super::blue_green(fleet, site, &next, from, to, bake)
    } else {
        super::replace(fleet, site, from, to, bake)
    };
    Ok(SitePlan {
        site: site.name.clone(),
        from_generation: from,
        to_generation: to,
        blue_green,
        steps,
        blocked: checks.iter().any(|c| !c.ok),
        checks,
    })
}

impl fmt::Display for SitePlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "replace site {}{}: generation {} -> {}, holding the locks `fleet` and `sites/{}`, \
             after the blockers below pass:",
            self.site,
            if self.blue_green { " --blue-green" } else { "" },
            self.from_generation
                .map_or("none".to_string(), |g| g.to_string()),
            self.to_generation,
            self.site
        )?;
        for (i, s) in self.steps.iter().enumerate() {
            writeln!(f, "  {:>2}. {:<14} {}", i + 1, s.step, s.does)?;
        }
        writeln!(f, "blockers now:")?;
        for c in &self.checks {
            let status = if c.ok { "ok" } else { "BLOCKED" };
            writeln!(f, "  {:<12} {status:<8} {}", c.name, c.detail)?;
        }
        if self.blocked {
            writeln!(
                f,
                "replace would be refused (override: --force --reason \"...\")"
            )?;
        }
        Ok(())
    }
}
