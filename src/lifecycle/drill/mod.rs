//! `drill site S`: a disaster drill. Takes site S away (powers its
//! machines off, or cuts its network with the `drill.isolate` hook and
//! leaves them running), proves the site is really gone and that the other
//! sites stay healthy with the capacity to carry the load, optionally
//! rebuilds S (a replace onto a fresh generation), and reports every step
//! with its time ([`report`]).
//!
//! A drill takes a site down, so the safety rules of `replace` hold: the
//! fleet and site locks, the gate (`--force --reason` overrides it,
//! recorded), quarantined machines refused, each step journaled, an audit
//! entry.

pub mod report;

pub use report::{DrillReport, Step};

use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::json;

use super::replace::{self, How, ReplaceReport};
use super::{traffic, Check};
use crate::fleet::{Fleet, Site};
use crate::job::Reporter;
use crate::keys::Keys;
use crate::operation::{self, Env, Gate, OpCtx, Outcome};
use crate::provision::{self, Report};
use crate::state::journal::Journal;
use crate::state::{self, records, Holder, Key};

/// What a drill does besides taking the site away.
#[derive(Clone, Debug)]
pub struct Drill {
    /// Cut the network with `drill.isolate` instead of powering off.
    pub isolate: bool,
    /// Rebuild the site afterwards (a replace run as `how` says).
    pub rebuild: bool,
    /// How long the other sites are watched carrying the load.
    pub observe: Duration,
    pub how: How,
}

/// Runs a drill of `site` (see the module doc): refused (nothing changed)
/// when a blocker fails and it is not forced.
pub async fn drill(
    env: &Env,
    fleet: &Fleet,
    keys: &Keys,
    site: &Site,
    drill: &Drill,
    reporter: &Reporter,
) -> anyhow::Result<Outcome<DrillReport>> {
    if drill.isolate && fleet.drill.is_none() {
        bail!("--isolate needs the `drill` hooks (drill.isolate, drill.reconnect) in fleet.yaml");
    }
    let operation = format!("drill site {}", site.name);
    let holder = Holder::current(&operation);
    let ctx = env.ctx(fleet, site, keys, &holder, reporter);
    operation::with_site_locks(ctx.store, fleet, site, ctx.holder, || {
        locked(ctx, drill, &operation)
    })
    .await
}

async fn locked(
    ctx: OpCtx<'_>,
    drill: &Drill,
    operation: &str,
) -> anyhow::Result<Outcome<DrillReport>> {
    let OpCtx {
        site,
        store,
        holder,
        ..
    } = ctx;
    let names: Vec<&str> = provision::machines(site)
        .iter()
        .map(|m| m.name.as_str())
        .collect();
    super::refuse_quarantined(store, &names, &format!("drill of {}", site.name)).await?;
    let gated = match operation::gate(ctx, operation, drill.how.over()).await? {
        Gate::Refused { checks } => return Ok(Outcome::Refused(checks)),
        Gate::Open(gated) => gated,
    };
    let before = records::site_generation(store, &site.name).await?;
    let mode = if drill.isolate {
        "isolate"
    } else {
        "power-off"
    };
    let mut report = DrillReport {
        site: site.name.to_string(),
        mode: mode.into(),
        started: state::now_rfc3339(),
        finished: String::new(),
        ok: false,
        rebuild: drill.rebuild,
        recovery_ms: None,
        generation_before: before,
        generation_after: before,
        reason: gated.reason.clone(),
        overridden: gated.overridden.clone(),
        steps: Vec::new(),
        set_aside: Vec::new(),
        error: None,
    };
    let target = Key::target_site(&site.name);
    let mut journal = Journal::begin(store, "drill", &target, holder).await?;
    gated.journal(&mut journal).await?;
    let mut timeline = Timeline {
        start: Instant::now(),
        steps: Vec::new(),
    };
    let result = steps(ctx, drill, &mut journal, &mut timeline, &mut report).await;
    report.steps = timeline.steps;
    report.error = result.err().map(|e| format!("{e:#}"));
    report.ok = report.error.is_none();
    report.finished = state::now_rfc3339();
    journal.finish(report.error.clone()).await?;
    let stored = serde_json::to_vec(&report)?;
    let key = Key::drill_report(&site.name, &report.stem());
    store.put(&key, &stored, state::Expect::Any).await?;
    state::audit(
        store,
        "drill",
        json!({ "site": site.name, "mode": mode, "rebuild": drill.rebuild, "ok": report.ok,
                "error": report.error, "overridden": report.overridden,
                "recovery_ms": report.recovery_ms }),
    )
    .await?;
    Ok(Outcome::Ran(report))
}

/// The steps of a drill so far, timed from its start.
struct Timeline {
    start: Instant,
    steps: Vec<Step>,
}

impl Timeline {
    /// Runs journal step `name` and adds it to the timeline.
    async fn step<F, Fut>(
        &mut self,
        journal: &mut Journal<'_>,
        name: &str,
        work: F,
    ) -> anyhow::Result<Option<String>>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<String>>,
    {
        let began = Instant::now();
        let outcome = journal.step(name, work).await;
        let (ok, detail) = match &outcome {
            Ok(Some(d)) => (true, d.clone()),
            Ok(None) => (true, "done in an earlier run (journal)".to_string()),
            Err(e) => (false, format!("{e:#}")),
        };
        tracing::info!(
            "drill: {name}: {} ({detail})",
            if ok { "ok" } else { "FAILED" }
        );
        self.steps.push(Step {
            name: name.to_string(),
            start_ms: began.duration_since(self.start).as_millis(),
            duration_ms: began.elapsed().as_millis(),
            ok,
            detail,
        });
        outcome
    }
}

async fn steps(
    ctx: OpCtx<'_>,
    drill: &Drill,
    journal: &mut Journal<'_>,
    timeline: &mut Timeline,
    report: &mut DrillReport,
) -> anyhow::Result<()> {
    let OpCtx {
        fleet,
        site,
        store,
        infra,
        ..
    } = ctx;
    timeline
        .step(journal, "drain", || async {
            traffic::drain(store, infra, fleet, site, "drill".into()).await?;
            anyhow::Ok(match &fleet.traffic {
                Some(t) => format!("traffic.drain `{}` ran", t.drain),
                None => "no traffic hooks configured; marked drained".into(),
            })
        })
        .await?;

    // Taking the site away.
    let down_at = Instant::now();
    let hooks = fleet.drill.as_ref().filter(|_| drill.isolate);
    let (opts, _) = drill.how.tuning.options(0);
    let takedown = if drill.isolate {
        "isolate"
    } else {
        "power off"
    };
    timeline
        .step(journal, takedown, || async {
            if let Some(d) = hooks {
                infra.hook(fleet, site, "drill.isolate", &d.isolate).await?;
                return anyhow::Ok(format!("drill.isolate `{}` ran", d.isolate));
            }
            replace::power_off(ctx, &provision::machines(site), &opts.power).await
        })
        .await?;

    // The site must really be gone, or the drill proves nothing.
    // Journaled: a drill resumed after the reconnect must not look again
    // for a site that is back by then.
    let before = report.generation_before;
    timeline
        .step(journal, "site gone", || site_gone(ctx, before))
        .await?;

    // The other sites carry the load, now and through `observe`.
    timeline
        .step(journal, "other sites carry", || {
            others_carry(ctx, drill.observe)
        })
        .await?;

    if !drill.rebuild {
        return Ok(());
    }
    if let Some(d) = hooks {
        timeline
            .step(journal, "reconnect", || async {
                infra
                    .hook(fleet, site, "drill.reconnect", &d.reconnect)
                    .await?;
                anyhow::Ok(format!("drill.reconnect `{}` ran", d.reconnect))
            })
            .await?;
    }
    // A resumed drill rebuilds to the generation it was building, even
    // when it died after recording it.
    let to = match journal.record().generation {
        Some(g) => g,
        None => {
            let g = report.generation_before.unwrap_or(0) + 1;
            journal.set_generation(g).await?;
            g
        }
    };
    let mut replaced = ReplaceReport {
        report: Report::new(site, to),
        from_generation: report.generation_before,
        checks: Vec::new(),
        overridden: Vec::new(),
    };
    let rebuild_at = Instant::now();
    let rebuilt = replace::steps(ctx, &drill.how, to, journal, &mut replaced, false).await;
    // The replace's phases ran one after the other: lay them out in turn.
    let mut offset = rebuild_at.duration_since(timeline.start).as_millis();
    for p in &replaced.report.phases {
        timeline.steps.push(Step {
            name: format!("rebuild: {}", p.name),
            start_ms: offset,
            duration_ms: p.duration_ms,
            ok: p.ok,
            detail: p.notes.join("; "),
        });
        offset += p.duration_ms;
    }
    report.set_aside = std::mem::take(&mut replaced.report.set_aside);
    rebuilt?;
    report.generation_after = Some(to);
    report.recovery_ms = Some(down_at.elapsed().as_millis());
    Ok(())
}

/// After the takedown, none of the site's etcd members may answer.
async fn site_gone(ctx: OpCtx<'_>, generation: Option<u64>) -> anyhow::Result<String> {
    let OpCtx {
        site,
        store,
        sealer,
        infra,
        ..
    } = ctx;
    let Some(generation) = generation else {
        return Ok("no generation recorded: no cluster to probe".into());
    };
    let Some(pki) = crate::pki::load(store, sealer, site, generation).await? else {
        return Ok(format!(
            "the PKI of generation {generation} is not in the state: nothing to probe"
        ));
    };
    let mut answering = 0;
    for _ in 0..10 {
        let (healthy, _) = infra.etcd_health(site, &pki).await?;
        answering = healthy;
        if healthy == 0 {
            let members = site.cluster.control_plane_count;
            return Ok(format!(
                "none of {members} etcd member(s) of generation {generation} answers"
            ));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    bail!(
        "{answering} etcd member(s) of {} still answer after the takedown: the site is not gone",
        site.name
    )
}

/// The other sites' checks (healthy, capacity), once and then every 10 s
/// through `observe`.
async fn others_carry(ctx: OpCtx<'_>, observe: Duration) -> anyhow::Result<String> {
    let OpCtx {
        fleet,
        site,
        store,
        sealer,
        infra,
        ..
    } = ctx;
    let until = Instant::now() + observe;
    let mut looks = 0;
    loop {
        let checks: Vec<Check> = super::check(
            fleet,
            site,
            store,
            sealer,
            infra,
            &super::Options::default(),
        )
        .await;
        looks += 1;
        let bad: Vec<String> = checks
            .iter()
            .filter(|c| !c.ok && (c.name == "other-sites" || c.name == "capacity"))
            .map(|c| format!("{}: {}", c.name, c.detail))
            .collect();
        if !bad.is_empty() {
            bail!("with {} down: {}", site.name, bad.join("; "));
        }
        if Instant::now() >= until {
            let capacity = checks
                .iter()
                .find(|c| c.name == "capacity")
                .map(|c| c.detail.clone())
                .unwrap_or_default();
            return Ok(format!(
                "every other site healthy ({looks} look(s) over {} s); {capacity}",
                observe.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_secs(10).min(until - Instant::now())).await;
    }
}
