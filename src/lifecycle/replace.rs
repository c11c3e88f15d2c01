//! `replace site S`: the site's cluster replaced by generation N+1 under
//! the safety rules — the fleet and site locks, the gate, a journal — in
//! place (drain, power off, provision, health, bake, restore) or, with
//! `blue_green`, on the spares (see [`super::blue_green`]).
//!
//! The steps are named as [`super::plan`] names them; the crash test and
//! the lab assert that the journal's names equal the plan's.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use serde_json::json;

use super::{traffic, Check};
use crate::bootstrap::Phase;
use crate::fleet::{Fleet, Machine, Role, Site};
use crate::job::Reporter;
use crate::keys::Keys;
use crate::operation::{self, Env, Gate, OpCtx, Outcome, Override};
use crate::pki::ClusterPki;
use crate::provision::{self, Generation, Report, Tuning};
use crate::state::journal::{self, Journal};
use crate::state::{self, records, Expect, Holder, Key, MachineRecord, StateStore};

/// How a replace runs (`replace`, `rebuild`, a drill's `--rebuild`).
#[derive(Clone, Debug)]
pub struct How {
    /// Go on despite failing safety checks, recorded with `reason`.
    pub force: bool,
    pub reason: Option<String>,
    /// Days the new generation's certificates are valid.
    pub validity_days: i64,
    /// Build on the spares while the current generation serves.
    pub blue_green: bool,
    /// How long health must stay green before traffic returns.
    pub bake: Duration,
    pub tuning: Tuning,
}

impl How {
    /// The gate's override.
    pub fn over(&self) -> Override<'_> {
        Override {
            force: self.force,
            reason: self.reason.as_deref(),
        }
    }

    fn generation(&self, number: u64) -> Generation {
        Generation {
            number,
            validity_days: self.validity_days,
        }
    }
}

/// What a replace did.
#[derive(Debug, Serialize)]
pub struct ReplaceReport {
    #[serde(flatten)]
    pub report: Report,
    pub from_generation: Option<u64>,
    pub checks: Vec<Check>,
    pub overridden: Vec<String>,
}

/// Replaces `site` (see `replace --help`): refused (nothing changed) when
/// a blocker fails and `how` does not force it.
pub async fn replace(
    env: &Env,
    fleet: &Fleet,
    keys: &Keys,
    site: &Site,
    how: &How,
    reporter: &Reporter,
) -> anyhow::Result<Outcome<ReplaceReport>> {
    let started = Instant::now();
    let operation = format!("replace site {}", site.name);
    let holder = Holder::current(&operation);
    let ctx = env.ctx(fleet, site, keys, &holder, reporter);
    let store = ctx.store;
    operation::with_site_locks(store, fleet, site, ctx.holder, || async {
        let serving: Vec<&str> = provision::machines(site)
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        let next = roles_to_build(store, site, how, &serving).await?;
        let from = records::site_generation(store, &site.name).await?;
        // An unfinished replace resumes towards the generation it was
        // building: when it died after its `record` step, the recorded one
        // is already it.
        let target = Key::target_site(&site.name);
        let resumed_to = journal::latest(store, "replace", &target)
            .await?
            .filter(|op| op.status != journal::Status::Succeeded)
            .and_then(|op| op.generation);
        let to = resumed_to.unwrap_or(from.unwrap_or(0) + 1);
        let gated = match operation::gate(ctx, &operation, how.over()).await? {
            Gate::Refused { checks } => return Ok(Outcome::Refused(checks)),
            Gate::Open(gated) => gated,
        };
        let mut journal = Journal::begin(store, "replace", &target, ctx.holder).await?;
        journal.set_generation(to).await?;
        gated.journal(&mut journal).await?;
        let mut report = ReplaceReport {
            report: Report::new(site, to),
            from_generation: from,
            checks: gated.checks,
            overridden: gated.overridden,
        };
        let result = match &next {
            Some(next) => {
                super::blue_green::steps(ctx, how, to, &mut journal, &mut report, next).await
            }
            None => steps(ctx, how, to, &mut journal, &mut report, true).await,
        };
        report.report.finish(result, started);
        journal.finish(report.report.error.clone()).await?;
        state::audit(
            store,
            "replace",
            json!({ "site": site.name, "from": from, "to": to, "ok": report.report.ok,
                    "error": report.report.error, "overridden": report.overridden }),
        )
        .await?;
        Ok(Outcome::Ran(report))
    })
    .await
}

/// The steps of an in-place replace after the gate; `drain: false` when
/// the caller (a drill) has drained the site already.
pub async fn steps(
    ctx: OpCtx<'_>,
    how: &How,
    to: u64,
    journal: &mut Journal<'_>,
    report: &mut ReplaceReport,
    drain: bool,
) -> anyhow::Result<()> {
    let OpCtx {
        fleet, site, store, ..
    } = ctx;
    let phases = &mut report.report.phases;
    if drain {
        let why = format!("replace to generation {to}");
        timed(journal, phases, "drain", || {
            traffic::drain(store, ctx.infra, fleet, site, why)
        })
        .await?;
    }
    let (opts, _) = how.tuning.options(to);
    // A worker whose BMC fails here is set aside, as in the provision's
    // own steps: the rest of the site goes on without it.
    let mut off_aside = Vec::new();
    timed(journal, phases, "power off", || async {
        let (note, aside) = power_off_or_set_aside(ctx, to, &opts.power).await?;
        off_aside = aside;
        anyhow::Ok(note)
    })
    .await?;

    let mut inner = Report::new(site, to);
    inner.set_aside = off_aside;
    let provisioned = provision::steps(
        ctx,
        &how.tuning,
        how.generation(to),
        journal,
        &mut inner,
        true,
    )
    .await;
    phases.append(&mut inner.phases);
    report.report.set_aside.append(&mut inner.set_aside);
    provisioned?;

    let note = format!("{} s with health green", how.bake.as_secs());
    health_and_bake(ctx, to, how.bake, journal, phases, note).await?;
    timed(journal, phases, "restore", || {
        traffic::restore(store, ctx.infra, fleet, site)
    })
    .await?;
    Ok(())
}

/// Journal steps `health` (every etcd member of generation `to` healthy)
/// and `bake` (health stays green for `bake`, looked at every 10 s).
pub(super) async fn health_and_bake(
    ctx: OpCtx<'_>,
    to: u64,
    bake: Duration,
    journal: &mut Journal<'_>,
    phases: &mut Vec<Phase>,
    bake_note: String,
) -> anyhow::Result<()> {
    let OpCtx {
        site,
        store,
        sealer,
        ..
    } = ctx;
    let pki = crate::pki::load(store, sealer, site, to)
        .await?
        .context("the new generation's PKI is missing from the state")?;
    timed(journal, phases, "health", || healthy(ctx, &pki)).await?;
    let start = Instant::now();
    let baked = journal
        .step("bake", || async {
            let until = Instant::now() + bake;
            while Instant::now() < until {
                tokio::time::sleep(Duration::from_secs(10).min(until - Instant::now())).await;
                healthy(ctx, &pki)
                    .await
                    .context("health went red during the bake")?;
            }
            anyhow::Ok(())
        })
        .await;
    phases.push(phase("bake", start, baked.is_ok(), Some(bake_note)));
    baked?;
    Ok(())
}

/// Every control-plane machine's etcd member answers healthy.
async fn healthy(ctx: OpCtx<'_>, pki: &ClusterPki) -> anyhow::Result<()> {
    let site = ctx.site;
    let members = provision::machines(site)
        .iter()
        .filter(|m| m.role == Role::ControlPlane)
        .count();
    let (healthy, errors) = ctx.infra.etcd_health(site, pki).await?;
    if healthy < members {
        bail!(
            "etcd {healthy} of {members} members healthy: {}",
            errors.join("; ")
        );
    }
    Ok(())
}

/// Powers `machines` of the site of `ctx` off; fails naming each machine
/// that did not go off. Returns what it did, for the report.
pub(crate) async fn power_off(
    ctx: OpCtx<'_>,
    machines: &[&Machine],
    opts: &crate::power::Options,
) -> anyhow::Result<String> {
    let outcomes = ctx
        .infra
        .power(
            ctx.fleet,
            ctx.site,
            machines,
            crate::power::Action::Off,
            opts,
        )
        .await;
    let failed: Vec<String> = outcomes
        .iter()
        .filter(|o| !o.ok)
        .map(|o| format!("{}: {}", o.machine, o.error.clone().unwrap_or_default()))
        .collect();
    if !failed.is_empty() {
        bail!("power off: {}", failed.join("; "));
    }
    Ok(format!("{} machine(s) powered off", outcomes.len()))
}

/// Powers the serving machines of the site of `ctx` off before its
/// replace to `to`; workers whose BMC fails are set aside (recorded, not
/// ready at `to`, with why) and returned, any other failure fails.
async fn power_off_or_set_aside(
    ctx: OpCtx<'_>,
    to: u64,
    opts: &crate::power::Options,
) -> anyhow::Result<(String, Vec<crate::bootstrap::SetAside>)> {
    let machines = provision::machines(ctx.site);
    let outcomes = ctx
        .infra
        .power(
            ctx.fleet,
            ctx.site,
            &machines,
            crate::power::Action::Off,
            opts,
        )
        .await;
    let failed: Vec<&crate::power::Outcome> = outcomes.iter().filter(|o| !o.ok).collect();
    let worker = |name: &str| {
        machines
            .iter()
            .any(|m| m.name.as_str() == name && m.role == Role::Worker)
    };
    if failed.iter().any(|o| !worker(&o.machine)) {
        let all: Vec<String> = failed
            .iter()
            .map(|o| format!("{}: {}", o.machine, o.error.clone().unwrap_or_default()))
            .collect();
        bail!("power off: {}", all.join("; "));
    }
    let mut aside = Vec::new();
    for o in failed {
        let error = o.error.clone().unwrap_or_default();
        let record = MachineRecord::set_aside(to, "power off", &error);
        records::put_machine(ctx.store, &o.machine, &record, Expect::Any).await?;
        aside.push(crate::bootstrap::SetAside {
            machine: o.machine.clone(),
            step: "power off".into(),
            error,
        });
    }
    let note = if aside.is_empty() {
        format!("{} machine(s) powered off", outcomes.len())
    } else {
        format!(
            "{} machine(s) powered off; {} set aside (listed at the end)",
            outcomes.len() - aside.len(),
            aside.len()
        )
    };
    Ok((note, aside))
}

/// Runs journal step `name` and adds its phase, timed, to `phases`; the
/// step's text (when it returns one) is the phase's note.
pub(super) async fn timed<T, F, Fut>(
    journal: &mut Journal<'_>,
    phases: &mut Vec<Phase>,
    name: &str,
    work: F,
) -> anyhow::Result<Option<T>>
where
    T: Note,
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let start = Instant::now();
    let result = journal.step(name, work).await;
    let note = result
        .as_ref()
        .ok()
        .and_then(|t| t.as_ref().and_then(Note::note));
    phases.push(phase(name, start, result.is_ok(), note));
    result
}

/// What a step's result says in its phase's notes.
pub(super) trait Note {
    fn note(&self) -> Option<String>;
}

impl Note for () {
    fn note(&self) -> Option<String> {
        None
    }
}

impl Note for String {
    fn note(&self) -> Option<String> {
        Some(self.clone())
    }
}

fn phase(name: &str, start: Instant, ok: bool, note: Option<String>) -> Phase {
    Phase {
        name: name.to_string(),
        ok,
        duration_ms: start.elapsed().as_millis(),
        notes: note.into_iter().collect(),
        machines: Vec::new(),
    }
}

/// Refuses quarantined machines among those a replace touches, and for a
/// blue-green replace works out the new generation's roles (refused when
/// the site has too few spares).
async fn roles_to_build(
    store: &dyn StateStore,
    site: &Site,
    how: &How,
    serving: &[&str],
) -> anyhow::Result<Option<BTreeMap<String, Role>>> {
    let what = format!("replace of {}", site.name);
    super::refuse_quarantined(store, serving, &what).await?;
    if !how.blue_green {
        return Ok(None);
    }
    let next = crate::fleet::roles::blue_green(site)?;
    let building: Vec<&str> = site
        .machines
        .iter()
        .filter(|m| m.role == Role::Spare && next[m.name.as_str()] != Role::Spare)
        .map(|m| m.name.as_str())
        .collect();
    super::refuse_quarantined(store, &building, &what).await?;
    Ok(Some(next))
}
