//! `metalherd drill site S`: a disaster drill. Takes site S away (powers
//! its machines off, or cuts its network with the `drill.isolate` hook and
//! leaves them running), proves the site is really gone and that the other
//! sites stay healthy with the capacity to carry the load, optionally
//! rebuilds S (`--rebuild`: a replace onto a fresh generation), and writes
//! a report (Markdown, JSON, SVG timeline) under `reports/`.
//!
//! A drill is an operation that takes a site down, so the safety rules of
//! `replace` hold: the fleet and site locks, the blockers (`--force
//! --reason` overrides them, recorded), quarantined machines refused, each
//! step journaled, an audit entry.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::json;

use super::context::{fleet_and_keys, runtime};
use super::lifecycle::{bake_of, print_checks, replace_steps, site, How, ReplaceReport, BLOCKED};
use super::provision::Report;
use super::{print_json, Cli, Exit, Output};
use crate::fleet::{Fleet, Site, SiteName};
use crate::job::Reporter;
use crate::lifecycle::drill::{DrillReport, Step};
use crate::lifecycle::{self, traffic, Check};
use crate::operation::OpCtx;
use crate::power::{self, Action};
use crate::state::journal::Journal;
use crate::state::{self, Holder, SiteRecord, StateStore};

#[derive(Subcommand, Debug)]
pub enum DrillCommand {
    /// Take site S away, prove the other sites carry the load, optionally
    /// rebuild S, and write a report with the time each step took.
    Site(DrillArgs),
}

#[derive(Args, Debug)]
pub struct DrillArgs {
    site: SiteName,
    /// Cut the site's network with the `drill.isolate` hook of fleet.yaml
    /// and leave its machines running (default: power them off).
    #[arg(long)]
    isolate: bool,
    /// Rebuild the site afterwards (a replace onto generation N+1) and
    /// measure the recovery time. Without it the site stays down and
    /// drained; `metalherd replace site S` brings it back.
    #[arg(long)]
    rebuild: bool,
    /// Keep checking the other sites this long after the site went away
    /// (every 10 s) before the drill counts them as carrying the load.
    #[arg(long, default_value = "0", value_name = "DURATION")]
    observe: String,
    /// Where the report files go [default: reports/ in the fleet].
    #[arg(long, value_name = "DIR")]
    reports: Option<PathBuf>,
    #[command(flatten)]
    how: How,
}

pub fn run(cli: &Cli, cmd: &DrillCommand) -> anyhow::Result<()> {
    let DrillCommand::Site(args) = cmd;
    args.how.check_reason()?;
    if args.how.blue_green {
        bail!("--blue-green is for `replace` and `rebuild`: a drill takes the whole site away");
    }
    let observe = super::lifecycle::parse_duration(&args.observe).context("--observe")?;
    let (fleet, keys) = fleet_and_keys(cli)?;
    let site = site(&fleet, &args.site)?;
    if args.isolate && fleet.drill.is_none() {
        bail!(
            "--isolate needs the `drill` hooks in {}: drill: {{ isolate: \"…{{site}}\", reconnect: \"…{{site}}\" }}",
            fleet.root.join("inventory/fleet.yaml").display()
        );
    }
    let bake = bake_of(&fleet, &args.how.bake)?;
    let reports_dir = match &args.reports {
        Some(dir) => {
            std::path::absolute(dir).with_context(|| format!("--reports {}", dir.display()))?
        }
        None => fleet.root.join("reports"),
    };
    let reporter = Reporter::new(super::progress_bars(cli));
    let outcome =
        runtime()?.block_on(drill(&fleet, &keys, site, args, observe, bake, &reporter))?;
    let report = match outcome {
        Outcome::Blocked(checks) => {
            if cli.output == Output::Json {
                print_json(&json!({
                    "ok": false, "blocked": true, "site": site.name, "checks": checks,
                    "error": format!("drill of {} refused by: {}", site.name, lifecycle::failing(&checks).join("; ")),
                }))?;
            } else {
                eprintln!("drill of {} refused; blockers:", site.name);
                print_checks(&checks);
                eprintln!(
                    "override with --force --reason \"...\" (recorded in the journal and audit log)"
                );
            }
            return Err(Exit(BLOCKED).into());
        }
        Outcome::Ran(report) => *report,
    };
    let files = report.write(&reports_dir)?;
    if cli.output == Output::Json {
        let mut doc = serde_json::to_value(&report)?;
        doc["reports"] = json!(files);
        print_json(&doc)?;
    } else {
        for (i, s) in report.steps.iter().enumerate() {
            println!(
                "{:>2}. {:<22} {:>8.1} s  {:<6} {}",
                i + 1,
                s.name,
                s.duration_ms as f64 / 1000.0,
                if s.ok { "ok" } else { "FAILED" },
                s.detail
            );
        }
        match report.recovery_ms {
            Some(ms) => println!("recovery time: {:.0} s", ms as f64 / 1000.0),
            None if report.ok && !args.rebuild => println!(
                "site {} stays down and drained; `metalherd replace site {}` brings it back",
                site.name, site.name
            ),
            None => {}
        }
        for f in &files {
            println!("report: {}", f.display());
        }
    }
    if report.ok {
        Ok(())
    } else {
        Err(super::Reported(format!(
            "drill of {} failed: {}",
            site.name,
            report.error.as_deref().unwrap_or("see the report")
        ))
        .into())
    }
}

enum Outcome {
    Blocked(Vec<Check>),
    Ran(Box<DrillReport>),
}

/// The steps of a drill so far, timed from its start.
struct Timeline {
    start: Instant,
    steps: Vec<Step>,
}

impl Timeline {
    fn push(&mut self, name: &str, began: Instant, ok: bool, detail: String) {
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
    }
}

async fn drill(
    fleet: &Fleet,
    keys: &crate::keys::Keys,
    site: &Site,
    args: &DrillArgs,
    observe: Duration,
    bake: Duration,
    reporter: &Reporter,
) -> anyhow::Result<Outcome> {
    let (store, sealer) = state::open(fleet)?;
    let store = store.as_ref();
    let holder = Holder::current(&format!("drill site {}", site.name));
    let ctx = OpCtx {
        fleet,
        site,
        keys,
        store,
        sealer: &sealer,
        holder: &holder,
        reporter,
    };
    crate::operation::with_site_locks(store, fleet, site, &holder, || {
        locked(ctx, args, observe, bake)
    })
    .await
}

async fn locked(
    ctx: OpCtx<'_>,
    args: &DrillArgs,
    observe: Duration,
    bake: Duration,
) -> anyhow::Result<Outcome> {
    let OpCtx {
        fleet,
        site,
        store,
        sealer,
        holder,
        ..
    } = ctx;
    let names: Vec<&str> = crate::provision::machines(site)
        .iter()
        .map(|m| m.name.as_str())
        .collect();
    lifecycle::refuse_quarantined(store, &names, &format!("drill of {}", site.name)).await?;
    let how = crate::operation::Override {
        force: args.how.force,
        reason: args.how.reason.as_deref(),
    };
    let operation = format!("drill site {}", site.name);
    let gated = match crate::operation::gate(fleet, site, store, sealer, &operation, how).await? {
        crate::operation::Gate::Refused { checks } => return Ok(Outcome::Blocked(checks)),
        crate::operation::Gate::Open(gated) => gated,
    };
    let failing = gated.overridden.clone();
    let reason = args.how.reason.clone();
    let before = state::get_json::<SiteRecord>(store, &crate::state::Key::site(&site.name))
        .await?
        .map(|(r, _)| r.generation)
        .filter(|g| *g > 0);
    let started = state::now_rfc3339();
    let mode = if args.isolate { "isolate" } else { "power-off" };
    let mut report = DrillReport {
        site: site.name.to_string(),
        mode: mode.into(),
        started: started.clone(),
        finished: String::new(),
        ok: false,
        rebuild: args.rebuild,
        recovery_ms: None,
        generation_before: before,
        generation_after: before,
        overridden: failing.clone(),
        reason: reason.clone().filter(|_| !failing.is_empty()),
        steps: Vec::new(),
        error: None,
    };
    let mut journal = Journal::begin(
        store,
        "drill",
        &crate::state::Key::target_site(&site.name),
        holder,
    )
    .await?;
    gated.journal(&mut journal).await?;
    let mut timeline = Timeline {
        start: Instant::now(),
        steps: Vec::new(),
    };
    let result = drill_steps(
        ctx,
        args,
        observe,
        bake,
        &mut journal,
        &mut timeline,
        &mut report,
    )
    .await;
    report.steps = timeline.steps;
    report.error = result.err().map(|e| format!("{e:#}"));
    report.ok = report.error.is_none();
    report.finished = state::now_rfc3339();
    journal.finish(report.error.clone()).await?;
    let stored = serde_json::to_vec(&report)?;
    store
        .put(
            &crate::state::Key::drill_report(&site.name, &report.stem()),
            &stored,
            state::Expect::Any,
        )
        .await?;
    state::audit(
        store,
        "drill",
        json!({ "site": site.name, "mode": mode, "rebuild": args.rebuild, "ok": report.ok,
                "error": report.error, "overridden": report.overridden,
                "recovery_ms": report.recovery_ms }),
    )
    .await?;
    Ok(Outcome::Ran(Box::new(report)))
}

async fn drill_steps(
    ctx: OpCtx<'_>,
    args: &DrillArgs,
    observe: Duration,
    bake: Duration,
    journal: &mut Journal<'_>,
    timeline: &mut Timeline,
    report: &mut DrillReport,
) -> anyhow::Result<()> {
    let OpCtx {
        fleet,
        site,
        store,
        sealer,
        ..
    } = ctx;
    let began = Instant::now();
    let drained = journal
        .step("drain", || async {
            traffic::drain(store, fleet, site, "drill".into()).await?;
            anyhow::Ok(match &fleet.traffic {
                Some(t) => format!("traffic.drain `{}` ran", t.drain),
                None => "no traffic hooks configured; marked drained".into(),
            })
        })
        .await;
    push(timeline, "drain", began, &drained);
    drained?;

    // Taking the site away.
    let down_at = Instant::now();
    let took_down = journal
        .step(
            if args.isolate { "isolate" } else { "power off" },
            || async {
                if let Some(d) = fleet.drill.as_ref().filter(|_| args.isolate) {
                    traffic::hook(fleet, site, "drill.isolate", &d.isolate).await?;
                    return anyhow::Ok(format!("drill.isolate `{}` ran", d.isolate));
                }
                power_off(fleet, site, &args.how).await
            },
        )
        .await;
    push(
        timeline,
        if args.isolate { "isolate" } else { "power off" },
        down_at,
        &took_down,
    );
    took_down?;

    // The site must really be gone, or the drill proves nothing.
    let began = Instant::now();
    // Journaled: a drill resumed after the reconnect must not look again
    // for a site that is back by then.
    let before = report.generation_before;
    let gone = journal
        .step("site gone", || site_gone(store, sealer, site, before))
        .await;
    push(timeline, "site gone", began, &gone);
    gone?;

    // The other sites carry the load, now and through --observe.
    let began = Instant::now();
    let carried = journal
        .step("other sites carry", || {
            others_carry(fleet, site, store, sealer, observe)
        })
        .await;
    push(timeline, "other sites carry", began, &carried);
    carried?;

    if !args.rebuild {
        return Ok(());
    }
    if let Some(d) = fleet.drill.as_ref().filter(|_| args.isolate) {
        let began = Instant::now();
        let back = journal
            .step("reconnect", || async {
                traffic::hook(fleet, site, "drill.reconnect", &d.reconnect).await?;
                anyhow::Ok(format!("drill.reconnect `{}` ran", d.reconnect))
            })
            .await;
        push(timeline, "reconnect", began, &back);
        back?;
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
    let mut replace = ReplaceReport {
        report: Report {
            site: site.name.to_string(),
            generation: to,
            ok: false,
            phases: Vec::new(),
            error: None,
            took_ms: 0,
        },
        from_generation: report.generation_before,
        checks: Vec::new(),
        overridden: Vec::new(),
    };
    let rebuild_at = Instant::now();
    let rebuilt = replace_steps(ctx, &args.how, to, bake, journal, &mut replace, false).await;
    // The replace's phases ran one after the other: lay them out in turn.
    let mut offset = rebuild_at.duration_since(timeline.start).as_millis();
    for p in &replace.report.phases {
        timeline.steps.push(Step {
            name: format!("rebuild: {}", p.name),
            start_ms: offset,
            duration_ms: p.duration_ms,
            ok: p.ok,
            detail: p.notes.join("; "),
        });
        offset += p.duration_ms;
    }
    rebuilt?;
    report.generation_after = Some(to);
    report.recovery_ms = Some(down_at.elapsed().as_millis());
    Ok(())
}

fn push<T: AsRef<str>>(
    timeline: &mut Timeline,
    name: &str,
    began: Instant,
    outcome: &anyhow::Result<Option<T>>,
) {
    let (ok, detail) = match outcome {
        Ok(Some(d)) => (true, d.as_ref().to_string()),
        Ok(None) => (true, "done in an earlier run (journal)".to_string()),
        Err(e) => (false, format!("{e:#}")),
    };
    timeline.push(name, began, ok, detail);
}

async fn power_off(fleet: &Fleet, site: &Site, how: &How) -> anyhow::Result<String> {
    let (opts, _) = how.tuning.options(0);
    let targets: Vec<(&Site, &crate::fleet::Machine)> = crate::provision::machines(site)
        .into_iter()
        .map(|m| (site, m))
        .collect();
    let outcomes = power::run(fleet, &targets, Action::Off, &opts.power).await;
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

/// After the takedown, none of the site's etcd members may answer.
async fn site_gone(
    store: &dyn StateStore,
    sealer: &crate::state::crypt::Sealer,
    site: &Site,
    generation: Option<u64>,
) -> anyhow::Result<String> {
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
        let (healthy, _) = crate::bootstrap::etcd_health(site, &pki).await?;
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
async fn others_carry(
    fleet: &Fleet,
    site: &Site,
    store: &dyn StateStore,
    sealer: &crate::state::crypt::Sealer,
    observe: Duration,
) -> anyhow::Result<String> {
    let until = Instant::now() + observe;
    let mut looks = 0;
    loop {
        let checks =
            lifecycle::check(fleet, site, store, sealer, &lifecycle::Options::default()).await;
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
