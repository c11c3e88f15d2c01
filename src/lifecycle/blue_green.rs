//! `replace site S --blue-green`: generation N+1 built on the site's
//! spares while N keeps serving; traffic drained only for the switch; N's
//! machines powered off as the new spares. A failure before the switch
//! leaves N serving and nothing drained; one during the switch leaves the
//! site drained.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context};

use super::replace::{health_and_bake, power_off, timed, How, ReplaceReport};
use super::traffic;
use crate::fleet::Role;
use crate::operation::OpCtx;
use crate::provision::{self, Generation, Report};
use crate::state::journal::Journal;
use crate::state::{records, Expect, MachineRecord, MachineState};

/// The steps of a blue-green replace after the gate: `next` gives every
/// machine of the site its role in generation `to`.
pub async fn steps(
    ctx: OpCtx<'_>,
    how: &How,
    to: u64,
    journal: &mut Journal<'_>,
    report: &mut ReplaceReport,
    next: &BTreeMap<String, Role>,
) -> anyhow::Result<()> {
    let OpCtx {
        fleet, site, store, ..
    } = ctx;
    let mut new_fleet = fleet.clone();
    let new_site = new_fleet
        .sites
        .iter_mut()
        .find(|s| s.name == site.name)
        .context("the site vanished from the fleet")?;
    crate::fleet::roles::apply(new_site, next);
    let new_site = new_site.clone();
    let new_ctx = OpCtx {
        fleet: &new_fleet,
        site: &new_site,
        ..ctx
    };
    let from = report
        .from_generation
        .map_or("none".into(), |g| g.to_string());
    let phases = &mut report.report.phases;

    timed(journal, phases, "assign", || assign(ctx, next)).await?;

    let mut inner = Report::new(site, to);
    let generation = Generation {
        number: to,
        validity_days: how.validity_days,
    };
    let provisioned =
        provision::steps(new_ctx, &how.tuning, generation, journal, &mut inner, false).await;
    phases.append(&mut inner.phases);
    report.report.set_aside.append(&mut inner.set_aside);
    provisioned?;

    let note = format!(
        "{} s with health green while generation {from} served",
        how.bake.as_secs()
    );
    health_and_bake(new_ctx, to, how.bake, journal, phases, note).await?;

    // The switch: traffic off the site, the new generation recorded (with
    // its roles), traffic back on.
    timed(journal, phases, "switch", || async {
        let why = format!("blue-green switch to generation {to}");
        traffic::drain(store, ctx.infra, fleet, site, why).await?;
        provision::record(store, &new_site, to, &Default::default()).await?;
        traffic::restore(store, ctx.infra, fleet, site).await?;
        anyhow::Ok(format!("traffic moved to generation {to}"))
    })
    .await?;

    // The old machines become the spares: powered off, available.
    let (opts, _) = how.tuning.options(to);
    timed(journal, phases, "retire", || async {
        let old = provision::machines(site);
        let off = power_off(ctx, &old, &opts.power).await;
        for m in &old {
            let record = MachineRecord::now(MachineState::Available, None);
            records::put_machine(store, &m.name, &record, Expect::Any).await?;
        }
        off.context("powering off the old generation's machines")?;
        anyhow::Ok(format!(
            "{} machine(s) of the old generation powered off, now spares",
            old.len()
        ))
    })
    .await?;
    Ok(())
}

/// Records the roles of the generation being built and waits until the
/// site's boot server renders them (it watches the state).
async fn assign(ctx: OpCtx<'_>, next: &BTreeMap<String, Role>) -> anyhow::Result<String> {
    let OpCtx {
        site, store, infra, ..
    } = ctx;
    records::update_site(store, &site.name, |r| r.next_roles = next.clone()).await?;
    let url = site.boot_server.as_str();
    // tokio's clock: the unit tests run this on paused time.
    let until = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let last = match infra.unrendered(site, next).await {
            Ok(wrong) if wrong.is_empty() => {
                return Ok(format!("boot server {url} renders the new roles"));
            }
            Ok(wrong) => wrong.join(", "),
            Err(e) => format!("{e:#}"),
        };
        if tokio::time::Instant::now() >= until {
            bail!(
                "the boot server {url} does not render the new roles after 60 s ({last}); \
                 is `metalherd serve` running with this fleet's state?"
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
