//! `metalherd plan site S`, `replace site S` and `audit`: replacing a
//! site's cluster with a fresh generation under the safety rules (see
//! `crate::lifecycle`), and the audit log of what was done and overridden.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde::Serialize;
use serde_json::json;

use super::context::{fleet_and_keys, runtime};
use super::provision::{steps, Report, Tuning};
use super::{print_json, Cli, Exit, Output};
use crate::bootstrap::Phase;
use crate::fleet::{Fleet, Role, Site, SiteName};
use crate::job::Reporter;
use crate::lifecycle::{self, traffic, Check};
use crate::operation::OpCtx;
use crate::power::{self, Action};
use crate::state::journal::Journal;
use crate::state::{self, Expect, Holder, SiteRecord, StateStore};

/// The exit code of an operation refused by a safety check.
pub const BLOCKED: u8 = 4;

#[derive(Subcommand, Debug)]
pub enum PlanCommand {
    /// What `replace site S` would do, and which blockers hold now.
    Site(PlanArgs),
}

#[derive(Args, Debug)]
pub struct PlanArgs {
    site: SiteName,
    /// Judge only the recorded state: do not ask the other sites' etcd.
    #[arg(long)]
    no_probe: bool,
    /// Plan a blue-green replace (`replace site S --blue-green`): built on
    /// the spares while the current generation serves.
    #[arg(long)]
    blue_green: bool,
}

#[derive(Subcommand, Debug)]
pub enum ReplaceCommand {
    /// Replace one site's cluster with generation N+1: drain, power off,
    /// provision, health, bake, restore traffic, retire generation N.
    Site(ReplaceArgs),
}

#[derive(Args, Debug)]
pub struct ReplaceArgs {
    site: SiteName,
    #[command(flatten)]
    how: How,
}

/// How a replace runs (shared by `replace` and `rebuild`).
#[derive(Args, Debug)]
pub struct How {
    /// Bake time with health green before traffic returns (`90s`, `10m`,
    /// `1h`) [default: rebuild.bake in fleet.yaml, else 10m].
    #[arg(long, value_name = "DURATION")]
    pub(super) bake: Option<String>,
    /// Override the failing safety checks (recorded with --reason).
    #[arg(long, requires = "reason")]
    pub(super) force: bool,
    /// Why the override is needed (recorded in the journal and audit log).
    #[arg(long, value_name = "TEXT")]
    pub(super) reason: Option<String>,
    /// Days the new generation's certificates are valid.
    #[arg(long, default_value_t = 90, value_name = "DAYS")]
    pub(super) validity_days: i64,
    /// Build the new generation on the site's spare machines while the
    /// current one keeps serving, switch traffic over (drained only for
    /// the switch), then power the old machines off as the new spares.
    /// Needs as many spares as serving machines.
    #[arg(long)]
    pub(super) blue_green: bool,
    #[command(flatten)]
    pub(super) tuning: Tuning,
}

impl How {
    /// Refuses `--force` without a reason worth recording.
    pub(super) fn check_reason(&self) -> anyhow::Result<()> {
        if self.force && self.reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
            bail!("--force needs a --reason \"...\" (it is recorded)");
        }
        Ok(())
    }
}

#[derive(Args, Debug)]
pub struct RebuildArgs {
    /// Every site, in the waves of `rebuild.waves` (default: one site per wave).
    #[arg(long, conflicts_with = "sites")]
    all: bool,
    /// Only these sites (comma-separated), in wave order.
    #[arg(long, value_delimiter = ',', value_name = "A,B")]
    sites: Vec<SiteName>,
    #[command(flatten)]
    how: How,
}

#[derive(Args, Debug)]
pub struct AuditArgs {
    /// Show the last N entries.
    #[arg(long, default_value_t = 50, value_name = "N")]
    limit: usize,
}

/// `10m`, `90s`, `1h`, `1d`, `0`.
pub fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let t = text.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = num
        .parse()
        .with_context(|| format!("duration {text:?}: expected a number and s, m, h or d"))?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => bail!("duration {text:?}: expected a number and s, m, h or d (e.g. 10m)"),
    };
    n.checked_mul(unit)
        .map(Duration::from_secs)
        .with_context(|| format!("duration {text:?} is too long"))
}

pub(super) fn site<'a>(fleet: &'a Fleet, name: &SiteName) -> anyhow::Result<&'a Site> {
    fleet
        .site(name.as_str())
        .with_context(|| format!("no site `{name}` in fleet {}", fleet.name))
}

pub(super) fn bake_of(fleet: &Fleet, arg: &Option<String>) -> anyhow::Result<Duration> {
    match arg
        .as_deref()
        .or(fleet.rebuild.as_ref().and_then(|r| r.bake.as_deref()))
    {
        Some(t) => parse_duration(t),
        None => Ok(Duration::from_secs(600)),
    }
}

pub fn plan(cli: &Cli, cmd: &PlanCommand) -> anyhow::Result<()> {
    let PlanCommand::Site(args) = cmd;
    let (fleet, _keys) = fleet_and_keys(cli)?;
    let site = site(&fleet, &args.site)?;
    let bake = bake_of(&fleet, &None)?;
    let (record, checks) = runtime()?.block_on(async {
        let (store, sealer) = state::open(&fleet)?;
        let record =
            state::get_json::<SiteRecord>(store.as_ref(), &crate::state::Key::site(&site.name))
                .await?
                .map(|(r, _)| r);
        let opts = lifecycle::Options {
            probe_health: !args.no_probe,
            ..Default::default()
        };
        let checks = lifecycle::check(&fleet, site, store.as_ref(), &sealer, &opts).await;
        anyhow::Ok((record, checks))
    })?;
    let from = record.as_ref().map(|r| r.generation).filter(|g| *g > 0);
    let to = from.unwrap_or(0) + 1;
    let steps = if args.blue_green {
        let next = crate::fleet::roles::blue_green(site)?;
        lifecycle::plan::blue_green(&fleet, site, &next, from, to, bake)
    } else {
        lifecycle::plan::replace(&fleet, site, from, to, bake)
    };
    let blocked = checks.iter().any(|c| !c.ok);
    if cli.output == Output::Json {
        return print_json(&json!({
            "site": site.name, "from_generation": from, "to_generation": to,
            "blue_green": args.blue_green, "steps": steps, "checks": checks, "blocked": blocked,
        }));
    }
    println!(
        "replace site {}{}: generation {} -> {to}, holding the locks `fleet` and `sites/{}`, \
         after the blockers below pass:",
        site.name,
        if args.blue_green { " --blue-green" } else { "" },
        from.map_or("none".to_string(), |g| g.to_string()),
        site.name
    );
    for (i, s) in steps.iter().enumerate() {
        println!("  {:>2}. {:<14} {}", i + 1, s.step, s.does);
    }
    println!("blockers now:");
    print_checks(&checks);
    if blocked {
        println!("replace would be refused (override: --force --reason \"...\")");
    }
    Ok(())
}

pub(super) fn print_checks(checks: &[Check]) {
    for c in checks {
        println!(
            "  {:<12} {:<8} {}",
            c.name,
            if c.ok { "ok" } else { "BLOCKED" },
            c.detail
        );
    }
}

#[derive(Serialize)]
pub(super) struct ReplaceReport {
    #[serde(flatten)]
    pub(super) report: Report,
    pub(super) from_generation: Option<u64>,
    pub(super) checks: Vec<Check>,
    pub(super) overridden: Vec<String>,
}

/// Replaces `site` (see `replace --help`); returns the report and whether
/// the blockers refused it (then nothing was changed).
async fn replace_one(
    fleet: &Fleet,
    keys: &crate::keys::Keys,
    site: &Site,
    how: &How,
    bake: Duration,
    reporter: &Reporter,
) -> anyhow::Result<(ReplaceReport, bool)> {
    let args = how;
    let (store, sealer) = state::open(fleet)?;
    let store = store.as_ref();
    let operation = format!("replace site {}", site.name);
    let holder = Holder::current(&operation);
    crate::operation::with_site_locks(store, fleet, site, &holder, || async {
        let names: Vec<&str> = crate::provision::machines(site)
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        let next = blue_green_roles(store, site, how, &names).await?;
        let from = state::records::site_generation(store, &site.name).await?;
        // An unfinished replace resumes towards the generation it was
        // building: when it died after its `record` step, the recorded one
        // is already it.
        let target = crate::state::Key::target_site(&site.name);
        let resumed_to = crate::state::journal::latest(store, "replace", &target)
            .await?
            .filter(|op| op.status != crate::state::journal::Status::Succeeded)
            .and_then(|op| op.generation);
        let to = resumed_to.unwrap_or(from.unwrap_or(0) + 1);
        let how_override = crate::operation::Override {
            force: args.force,
            reason: args.reason.as_deref(),
        };
        let gated =
            match crate::operation::gate(fleet, site, store, &sealer, &operation, how_override)
                .await?
            {
                crate::operation::Gate::Refused { checks } => {
                    let report = ReplaceReport {
                        report: Report {
                            site: site.name.to_string(),
                            generation: to,
                            ok: false,
                            phases: Vec::new(),
                            error: None,
                            took_ms: 0,
                        },
                        from_generation: from,
                        checks,
                        overridden: Vec::new(),
                    };
                    return anyhow::Ok((report, true));
                }
                crate::operation::Gate::Open(gated) => gated,
            };
        let mut journal = Journal::begin(store, "replace", &target, &holder).await?;
        journal.set_generation(to).await?;
        gated.journal(&mut journal).await?;
        let mut report = ReplaceReport {
            report: Report {
                site: site.name.to_string(),
                generation: to,
                ok: false,
                phases: Vec::new(),
                error: None,
                took_ms: 0,
            },
            from_generation: from,
            checks: gated.checks,
            overridden: gated.overridden,
        };
        let ctx = OpCtx {
            fleet,
            site,
            keys,
            store,
            sealer: &sealer,
            holder: &holder,
            reporter,
        };
        let result = match &next {
            Some(next) => {
                blue_green_steps(ctx, args, to, bake, &mut journal, &mut report, next).await
            }
            None => replace_steps(ctx, args, to, bake, &mut journal, &mut report, true).await,
        };
        if let Err(e) = result {
            report.report.error = Some(format!("{e:#}"));
        }
        report.report.ok = report.report.error.is_none();
        journal.finish(report.report.error.clone()).await?;
        state::audit(
            store,
            "replace",
            json!({ "site": site.name, "from": from, "to": to, "ok": report.report.ok,
                    "error": report.report.error, "overridden": report.overridden }),
        )
        .await?;
        anyhow::Ok((report, false))
    })
    .await
}

pub fn replace(cli: &Cli, cmd: &ReplaceCommand) -> anyhow::Result<()> {
    let ReplaceCommand::Site(args) = cmd;
    let started = Instant::now();
    let (fleet, keys) = fleet_and_keys(cli)?;
    let site = site(&fleet, &args.site)?;
    let bake = bake_of(&fleet, &args.how.bake)?;
    args.how.check_reason()?;
    let reporter = Reporter::new(super::progress_bars(cli));
    let outcome =
        runtime()?.block_on(replace_one(&fleet, &keys, site, &args.how, bake, &reporter))?;
    let (mut report, blocked) = outcome;
    report.report.took_ms = started.elapsed().as_millis();
    if blocked {
        if cli.output == Output::Json {
            print_json(&json!({
                "ok": false, "blocked": true, "site": site.name,
                "checks": report.checks,
                "error": format!("replace of {} refused by: {}", site.name, lifecycle::failing(&report.checks).join("; ")),
            }))?;
        } else {
            eprintln!("replace of {} refused; blockers:", site.name);
            for f in lifecycle::failing(&report.checks) {
                eprintln!("  {f}");
            }
            eprintln!(
                "override with --force --reason \"...\" (recorded in the journal and audit log)"
            );
        }
        return Err(Exit(BLOCKED).into());
    }
    if cli.output == Output::Json {
        print_json(&serde_json::to_value(&report)?)?;
    } else {
        super::bootstrap::print_phases(&report.report.phases);
    }
    match &report.report.error {
        None => {
            if cli.output == Output::Text {
                println!(
                    "replace of {}: generation {} -> {} done in {:.0} s",
                    site.name,
                    report
                        .from_generation
                        .map_or("none".into(), |g| g.to_string()),
                    report.report.generation,
                    report.report.took_ms as f64 / 1000.0
                );
            }
            Ok(())
        }
        Some(e) => {
            if cli.output == Output::Text {
                eprintln!("{e}");
            }
            Err(super::Reported(format!(
                "replace of {} failed (the site stays drained): {}",
                site.name,
                e.lines().next().unwrap_or("")
            ))
            .into())
        }
    }
}

/// The steps of a replace after the checks; `drain: false` when the
/// caller (a drill) has drained the site already.
pub(super) async fn replace_steps(
    ctx: OpCtx<'_>,
    args: &How,
    to: u64,
    bake: Duration,
    journal: &mut Journal<'_>,
    report: &mut ReplaceReport,
    drain: bool,
) -> anyhow::Result<()> {
    let OpCtx {
        fleet,
        site,
        store,
        sealer,
        ..
    } = ctx;
    let (opts, _) = args.tuning.options(to);
    let timed = |name: &str, start: Instant, ok: bool, note: Option<String>| Phase {
        name: name.to_string(),
        ok,
        duration_ms: start.elapsed().as_millis(),
        notes: note.into_iter().collect(),
        machines: Vec::new(),
    };

    let start = Instant::now();
    let drained = if !drain {
        Ok(None)
    } else {
        journal
            .step("drain", || {
                traffic::drain(store, fleet, site, format!("replace to generation {to}"))
            })
            .await
    };
    if drain {
        report
            .report
            .phases
            .push(timed("drain", start, drained.is_ok(), None));
    }
    drained?;

    let start = Instant::now();
    let off = journal
        .step("power off", || async {
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
            anyhow::Ok(())
        })
        .await;
    report
        .report
        .phases
        .push(timed("power off", start, off.is_ok(), None));
    off?;

    let mut inner = Report {
        site: site.name.to_string(),
        generation: to,
        ok: false,
        phases: Vec::new(),
        error: None,
        took_ms: 0,
    };
    let provisioned = steps(
        ctx,
        &args.tuning,
        to,
        args.validity_days,
        journal,
        &mut inner,
        true,
    )
    .await;
    report.report.phases.append(&mut inner.phases);
    provisioned?;

    let pki = crate::pki::load(store, sealer, site, to)
        .await?
        .context("the new generation's PKI is missing from the state")?;
    let members = crate::provision::machines(site)
        .iter()
        .filter(|m| m.role == crate::fleet::Role::ControlPlane)
        .count();
    let health = || async {
        let (healthy, errors) = crate::bootstrap::etcd_health(site, &pki).await?;
        if healthy < members {
            bail!(
                "etcd {healthy} of {members} members healthy: {}",
                errors.join("; ")
            );
        }
        anyhow::Ok(())
    };
    let start = Instant::now();
    let healthy = journal.step("health", health).await;
    report
        .report
        .phases
        .push(timed("health", start, healthy.is_ok(), None));
    healthy?;

    let start = Instant::now();
    let baked = journal
        .step("bake", || async {
            let until = Instant::now() + bake;
            while Instant::now() < until {
                tokio::time::sleep(Duration::from_secs(10).min(until - Instant::now())).await;
                health().await.context("health went red during the bake")?;
            }
            anyhow::Ok(())
        })
        .await;
    report.report.phases.push(timed(
        "bake",
        start,
        baked.is_ok(),
        Some(format!("{} s with health green", bake.as_secs())),
    ));
    baked?;

    let start = Instant::now();
    let restored = journal
        .step("restore", || traffic::restore(store, fleet, site))
        .await;
    report
        .report
        .phases
        .push(timed("restore", start, restored.is_ok(), None));
    restored?;
    Ok(())
}

/// Refuses quarantined machines among those a replace touches, and for
/// `--blue-green` works out the new generation's roles (refused when the
/// site has too few spares).
async fn blue_green_roles(
    store: &dyn StateStore,
    site: &Site,
    how: &How,
    serving: &[&str],
) -> anyhow::Result<Option<BTreeMap<String, Role>>> {
    let what = format!("replace of {}", site.name);
    lifecycle::refuse_quarantined(store, serving, &what).await?;
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
    lifecycle::refuse_quarantined(store, &building, &what).await?;
    Ok(Some(next))
}

/// Records the roles of the generation being built and waits until the
/// site's boot server renders them (it watches the state).
async fn assign(
    store: &dyn StateStore,
    site: &Site,
    next: &BTreeMap<String, Role>,
) -> anyhow::Result<String> {
    state::records::update_site(store, &site.name, |r| r.next_roles = next.clone()).await?;
    let url = format!(
        "{}/api/v1/machines",
        site.boot_server.as_str().trim_end_matches('/')
    );
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let until = Instant::now() + Duration::from_secs(60);
    let mut last: String;
    loop {
        match client.get(&url).send().await {
            Ok(resp) => match resp
                .bytes()
                .await
                .map_err(anyhow::Error::from)
                .and_then(|b| Ok(serde_json::from_slice::<serde_json::Value>(&b)?))
            {
                Ok(doc) => {
                    let wrong: Vec<String> = doc["machines"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|m| {
                            let name = m["machine"].as_str()?;
                            let want = next.get(name)?;
                            (m["role"].as_str() != Some(want.as_str()))
                                .then(|| format!("{name} still {}", m["role"]))
                        })
                        .collect();
                    if wrong.is_empty() {
                        return Ok(format!("boot server {url} renders the new roles"));
                    }
                    last = wrong.join(", ");
                }
                Err(e) => last = format!("{e}"),
            },
            Err(e) => last = format!("{e}"),
        }
        if Instant::now() >= until {
            bail!(
                "the boot server {url} does not render the new roles after 60 s ({last}); \
                 is `metalherd serve` running with this fleet's state?"
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// A blue-green replace: generation N+1 built on the spares while N keeps
/// serving; traffic drained only for the switch; N's machines powered off
/// as the new spares. A failure before the switch leaves N serving and
/// nothing drained; one during the switch leaves the site drained.
async fn blue_green_steps(
    ctx: OpCtx<'_>,
    args: &How,
    to: u64,
    bake: Duration,
    journal: &mut Journal<'_>,
    report: &mut ReplaceReport,
    next: &BTreeMap<String, Role>,
) -> anyhow::Result<()> {
    let OpCtx {
        fleet,
        site,
        store,
        sealer,
        ..
    } = ctx;
    let (opts, _) = args.tuning.options(to);
    let timed = |name: &str, start: Instant, ok: bool, note: Option<String>| Phase {
        name: name.to_string(),
        ok,
        duration_ms: start.elapsed().as_millis(),
        notes: note.into_iter().collect(),
        machines: Vec::new(),
    };
    let mut new_fleet = fleet.clone();
    let new_site = new_fleet
        .sites
        .iter_mut()
        .find(|s| s.name == site.name)
        .context("the site vanished from the fleet")?;
    crate::fleet::roles::apply(new_site, next);
    let new_site = new_site.clone();

    let start = Instant::now();
    let assigned = journal.step("assign", || assign(store, site, next)).await;
    report.report.phases.push(timed(
        "assign",
        start,
        assigned.is_ok(),
        assigned.as_ref().ok().cloned().flatten(),
    ));
    assigned?;

    let mut inner = Report {
        site: site.name.to_string(),
        generation: to,
        ok: false,
        phases: Vec::new(),
        error: None,
        took_ms: 0,
    };
    let new_ctx = OpCtx {
        fleet: &new_fleet,
        site: &new_site,
        ..ctx
    };
    let provisioned = steps(
        new_ctx,
        &args.tuning,
        to,
        args.validity_days,
        journal,
        &mut inner,
        false,
    )
    .await;
    report.report.phases.append(&mut inner.phases);
    provisioned?;

    let pki = crate::pki::load(store, sealer, &new_site, to)
        .await?
        .context("the new generation's PKI is missing from the state")?;
    let members = crate::provision::machines(&new_site)
        .iter()
        .filter(|m| m.role == Role::ControlPlane)
        .count();
    let health = || async {
        let (healthy, errors) = crate::bootstrap::etcd_health(&new_site, &pki).await?;
        if healthy < members {
            bail!(
                "etcd {healthy} of {members} members healthy: {}",
                errors.join("; ")
            );
        }
        anyhow::Ok(())
    };
    let start = Instant::now();
    let healthy = journal.step("health", health).await;
    report
        .report
        .phases
        .push(timed("health", start, healthy.is_ok(), None));
    healthy?;

    let start = Instant::now();
    let baked = journal
        .step("bake", || async {
            let until = Instant::now() + bake;
            while Instant::now() < until {
                tokio::time::sleep(Duration::from_secs(10).min(until - Instant::now())).await;
                health().await.context("health went red during the bake")?;
            }
            anyhow::Ok(())
        })
        .await;
    report.report.phases.push(timed(
        "bake",
        start,
        baked.is_ok(),
        Some(format!(
            "{} s with health green while generation {} served",
            bake.as_secs(),
            report
                .from_generation
                .map_or("none".into(), |g| g.to_string())
        )),
    ));
    baked?;

    // The switch: traffic off the site, the new generation recorded (with
    // its roles), traffic back on.
    let start = Instant::now();
    let switched = journal
        .step("switch", || async {
            let why = format!("blue-green switch to generation {to}");
            traffic::drain(store, fleet, site, why).await?;
            super::bootstrap::record(store, &new_site, to).await?;
            traffic::restore(store, fleet, site).await
        })
        .await;
    report.report.phases.push(timed(
        "switch",
        start,
        switched.is_ok(),
        Some(format!("traffic moved to generation {to}")),
    ));
    switched?;

    // The old machines become the spares: powered off, available.
    let start = Instant::now();
    let retired = journal
        .step("retire", || async {
            let old: Vec<(&Site, &crate::fleet::Machine)> = crate::provision::machines(site)
                .into_iter()
                .map(|m| (site, m))
                .collect();
            let outcomes = power::run(fleet, &old, Action::Off, &opts.power).await;
            let failed: Vec<String> = outcomes
                .iter()
                .filter(|o| !o.ok)
                .map(|o| format!("{}: {}", o.machine, o.error.clone().unwrap_or_default()))
                .collect();
            for (_, m) in &old {
                let record = state::MachineRecord {
                    state: state::MachineState::Available,
                    since: state::now_rfc3339(),
                    generation: None,
                };
                state::put_json(
                    store,
                    &crate::state::Key::machine(&m.name),
                    &record,
                    Expect::Any,
                )
                .await?;
            }
            if !failed.is_empty() {
                bail!(
                    "powering off the old generation's machines: {}",
                    failed.join("; ")
                );
            }
            anyhow::Ok(format!(
                "{} machine(s) of the old generation powered off, now spares",
                old.len()
            ))
        })
        .await;
    report.report.phases.push(timed(
        "retire",
        start,
        retired.is_ok(),
        retired.as_ref().ok().cloned().flatten(),
    ));
    retired?;
    Ok(())
}

pub fn audit(cli: &Cli, args: &AuditArgs) -> anyhow::Result<()> {
    let fleet = super::load_fleet(cli)?;
    let entries = runtime()?.block_on(async {
        let (store, _) = state::open(&fleet)?;
        let list = store.list(&crate::state::Key::audit_log()).await?;
        let mut out = Vec::new();
        for e in list {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&e.value) {
                out.push(v);
            }
        }
        anyhow::Ok(out)
    })?;
    let mut entries = entries;
    entries.sort_by(|a, b| a["time"].as_str().cmp(&b["time"].as_str()));
    let skip = entries.len().saturating_sub(args.limit);
    let shown = &entries[skip..];
    if cli.output == Output::Json {
        return print_json(&json!({ "entries": shown }));
    }
    if shown.is_empty() {
        println!("the audit log is empty");
    }
    for e in shown {
        println!(
            "{}  {}@{}  {:<10} {}",
            e["time"].as_str().unwrap_or(""),
            e["user"].as_str().unwrap_or(""),
            e["host"].as_str().unwrap_or(""),
            e["action"].as_str().unwrap_or(""),
            e["detail"]
        );
    }
    Ok(())
}

/// The waves of a rebuild: `rebuild.waves` (default one site per wave, in
/// the fleet's order), narrowed to `only` when given.
fn waves(fleet: &Fleet, only: &[SiteName]) -> Vec<Vec<SiteName>> {
    let mut waves: Vec<Vec<SiteName>> = match &fleet.rebuild {
        Some(r) if !r.waves.is_empty() => r.waves.clone(),
        _ => fleet.sites.iter().map(|s| vec![s.name.clone()]).collect(),
    };
    let listed: Vec<SiteName> = waves.iter().flatten().cloned().collect();
    for s in &fleet.sites {
        if !listed.contains(&s.name) {
            waves.push(vec![s.name.clone()]);
        }
    }
    if !only.is_empty() {
        for w in &mut waves {
            w.retain(|s| only.contains(s));
        }
        waves.retain(|w| !w.is_empty());
    }
    waves
}

#[derive(Serialize)]
struct SiteOutcome {
    site: String,
    wave: usize,
    /// `replaced`, `failed` (left drained), `blocked` (untouched) or
    /// `not started`.
    status: &'static str,
    generation: Option<u64>,
    error: Option<String>,
    took_ms: u128,
}

/// `metalherd rebuild`: the nightly job. Sites in waves, one site at a time
/// (each a `replace`, its blockers checked again first); the first failure
/// or refusal stops the run, leaving that site as it is and every later
/// site untouched. Exit 0 when every site was replaced, 4 when a blocker
/// stopped it, 1 when a replace failed.
pub fn rebuild(cli: &Cli, args: &RebuildArgs) -> anyhow::Result<()> {
    if !args.all && args.sites.is_empty() {
        bail!("say which sites: --all, or --sites a,b");
    }
    args.how.check_reason()?;
    let (fleet, keys) = fleet_and_keys(cli)?;
    for s in &args.sites {
        site(&fleet, s)?;
    }
    let bake = bake_of(&fleet, &args.how.bake)?;
    let plan = waves(&fleet, &args.sites);
    let reporter = Reporter::new(super::progress_bars(cli));
    let rt = runtime()?;
    let mut outcomes: Vec<SiteOutcome> = Vec::new();
    let mut stopped: Option<(&'static str, String)> = None;
    for (i, wave) in plan.iter().enumerate() {
        for name in wave {
            if stopped.is_some() {
                outcomes.push(SiteOutcome {
                    site: name.to_string(),
                    wave: i + 1,
                    status: "not started",
                    generation: None,
                    error: None,
                    took_ms: 0,
                });
                continue;
            }
            let s = site(&fleet, name)?;
            tracing::info!(
                "rebuild: wave {} of {}: replace site {name}",
                i + 1,
                plan.len()
            );
            let started = Instant::now();
            let (report, blocked) =
                rt.block_on(replace_one(&fleet, &keys, s, &args.how, bake, &reporter))?;
            let status = if blocked {
                "blocked"
            } else if report.report.ok {
                "replaced"
            } else {
                "failed"
            };
            let error = if blocked {
                Some(lifecycle::failing(&report.checks).join("; "))
            } else {
                report.report.error.clone()
            };
            if status != "replaced" {
                stopped = Some((
                    status,
                    format!("{name}: {}", error.clone().unwrap_or_default()),
                ));
            }
            outcomes.push(SiteOutcome {
                site: name.to_string(),
                wave: i + 1,
                status,
                generation: Some(report.report.generation),
                error,
                took_ms: started.elapsed().as_millis(),
            });
        }
    }
    let ok = stopped.is_none();
    if cli.output == Output::Json {
        print_json(&json!({
            "ok": ok,
            "waves": plan.iter().map(|w| w.iter().map(|s| s.to_string()).collect::<Vec<_>>()).collect::<Vec<_>>(),
            "sites": outcomes,
            "stopped": stopped.as_ref().map(|(status, why)| json!({"status": status, "reason": why})),
        }))?;
    } else {
        for o in &outcomes {
            println!(
                "wave {} {:<8} {:<12} {}",
                o.wave,
                o.site,
                o.status,
                o.error.as_deref().unwrap_or("")
            );
        }
    }
    match stopped {
        None => Ok(()),
        Some(("blocked", why)) => {
            if cli.output == Output::Text {
                eprintln!("rebuild stopped: blocked: {why}");
            }
            Err(Exit(BLOCKED).into())
        }
        Some((_, why)) => Err(super::Reported(format!(
            "rebuild stopped at the first failure (that site stays drained, later sites untouched): {why}"
        ))
        .into()),
    }
}

#[derive(Subcommand, Debug)]
pub enum ReleaseCommand {
    /// Release a quarantined machine: it becomes `available` again, and
    /// commands may power it off, wipe it and reprovision it.
    Machine(ReleaseArgs),
}

#[derive(Args, Debug)]
pub struct ReleaseArgs {
    machine: crate::fleet::MachineName,
    /// Why (the investigation's outcome, a ticket); recorded in the audit log.
    #[arg(long, value_name = "TEXT")]
    reason: String,
}

pub fn release(cli: &Cli, cmd: &ReleaseCommand) -> anyhow::Result<()> {
    let ReleaseCommand::Machine(args) = cmd;
    let fleet = super::load_fleet(cli)?;
    anyhow::ensure!(
        fleet.machine(args.machine.as_str()).is_some(),
        "no machine `{}` in fleet {}",
        args.machine,
        fleet.name
    );
    anyhow::ensure!(!args.reason.trim().is_empty(), "--reason must say why");
    let key = crate::state::Key::machine(&args.machine);
    let previous = runtime()?.block_on(async {
        let (store, _) = state::open(&fleet)?;
        let store = store.as_ref();
        let Some((record, rev)) = state::get_json::<state::MachineRecord>(store, &key).await?
        else {
            bail!("{} is not quarantined (no state recorded)", args.machine);
        };
        if record.state != state::MachineState::Quarantined {
            bail!(
                "{} is not quarantined (it is {:?}); nothing to release",
                args.machine,
                record.state
            );
        }
        let released = state::MachineRecord {
            state: state::MachineState::Available,
            since: state::now_rfc3339(),
            generation: None,
        };
        state::put_json(store, &key, &released, Expect::Revision(rev)).await?;
        state::audit(
            store,
            "release",
            json!({ "machine": args.machine, "reason": args.reason, "quarantined_since": record.since }),
        )
        .await?;
        anyhow::Ok(record.since)
    })?;
    if cli.output == Output::Json {
        return print_json(
            &json!({ "ok": true, "machine": args.machine, "quarantined_since": previous }),
        );
    }
    println!(
        "{} released (quarantined since {previous}); it is available again",
        args.machine
    );
    Ok(())
}
