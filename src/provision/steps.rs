//! The provision as an operation: its journaled steps (power on, boot,
//! pki, the bootstrap's, record), shared by `provision`, `replace`, the
//! blue-green replace and a drill's rebuild; and the `provision` and
//! `bootstrap` operations themselves, each under its site's lock.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use super::Options;
use crate::assets::download::RetryPolicy;
use crate::bootstrap::{self, Phase, SetAside};
use crate::fleet::{Machine, Role, Site};
use crate::operation::OpCtx;
use crate::ssh::Timeouts;
use crate::state::journal::Journal;
use crate::state::{provisioning, records, Expect, Key, MachineRecord, MachineState, StateStore};

/// How long each part of a provision may take, and how wide it fans out.
#[derive(Clone, Debug)]
pub struct Tuning {
    /// From power-on to a machine's first-boot report.
    pub boot_timeout: Duration,
    /// Each step on a machine (power, SSH commands).
    pub step_timeout: Duration,
    /// Waiting for etcd quorum and the API server's /readyz.
    pub ready_timeout: Duration,
    /// SSH sessions at once in the site.
    pub parallel: usize,
    /// BMC operations at once in the site.
    pub bmc_parallel: usize,
    /// The SSH user, and how long a connection may take.
    pub user: String,
    pub connect_timeout: Duration,
}

impl Default for Tuning {
    /// The CLI's defaults.
    fn default() -> Self {
        Tuning {
            boot_timeout: Duration::from_secs(900),
            step_timeout: Duration::from_secs(120),
            ready_timeout: Duration::from_secs(300),
            parallel: 32,
            bmc_parallel: 256,
            user: "core".into(),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

impl Tuning {
    /// The provision's and the bootstrap's options for `generation`.
    pub fn options(&self, generation: u64) -> (Options, bootstrap::Options) {
        let timeouts = Timeouts {
            connect: self.connect_timeout,
            step: self.step_timeout,
        };
        let opts = Options {
            power: crate::power::Options {
                per_site: self.bmc_parallel,
                state_timeout: self.step_timeout,
                retry: RetryPolicy {
                    retries: 3,
                    base_delay: Duration::from_millis(500),
                    max_delay: Duration::from_secs(10),
                },
            },
            boot_timeout: self.boot_timeout,
            ssh_timeout: self.step_timeout,
            user: self.user.clone(),
            timeouts,
            parallel: self.parallel,
            poll: Duration::from_secs(1),
        };
        let boot = bootstrap::Options {
            generation,
            user: self.user.clone(),
            timeouts,
            parallel: self.parallel,
            ready_timeout: self.ready_timeout,
            skip: BTreeSet::new(),
            leaves_some: false,
        };
        (opts, boot)
    }
}

/// What a provision did, for the summary and `--output json`.
#[derive(Debug, Serialize)]
pub struct Report {
    pub site: String,
    pub generation: u64,
    pub ok: bool,
    pub phases: Vec<Phase>,
    pub error: Option<String>,
    /// Workers that failed while the rest of the site went on, each once
    /// with the step it failed at; the next run finishes them.
    pub set_aside: Vec<SetAside>,
    pub took_ms: u128,
    /// What the operation read from and wrote to the state store (set by
    /// the CLI, which opened it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_io: Option<crate::state::counted::StateIo>,
}

impl Report {
    /// A report of `site` building `generation`, nothing done yet.
    pub fn new(site: &Site, generation: u64) -> Report {
        Report {
            site: site.name.to_string(),
            generation,
            ok: false,
            phases: Vec::new(),
            error: None,
            set_aside: Vec::new(),
            took_ms: 0,
            state_io: None,
        }
    }

    /// Records how `result` ended the operation.
    pub fn finish(&mut self, result: anyhow::Result<()>, started: Instant) {
        if let Err(e) = result {
            self.error = Some(format!("{e:#}"));
        }
        self.ok = self.error.is_none();
        self.took_ms = started.elapsed().as_millis();
    }
}

/// What the provision and bootstrap operations are given besides their
/// context: the generation and how long its certificates are valid.
#[derive(Clone, Copy, Debug)]
pub struct Generation {
    pub number: u64,
    pub validity_days: i64,
}

/// `metalherd provision site S`: the site's machines provisioned and its
/// cluster bootstrapped as `generation`, under the site's lock, journaled
/// (a rerun resumes after the last completed step).
pub async fn provision(
    ctx: OpCtx<'_>,
    tuning: &Tuning,
    generation: Generation,
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let OpCtx {
        fleet,
        site,
        store,
        holder,
        ..
    } = ctx;
    crate::operation::with_site_lock(store, fleet, site, holder, || async {
        let target = Key::target_site(&site.name);
        let mut journal = Journal::begin(store, "provision", &target, holder).await?;
        let mut report = Report::new(site, generation.number);
        let result = steps(ctx, tuning, generation, &mut journal, &mut report, true).await;
        report.finish(result, started);
        journal.finish(report.error.clone()).await?;
        audit(
            store,
            "provision",
            site,
            generation.number,
            report.ok,
            &report.error,
        )
        .await?;
        anyhow::Ok(report)
    })
    .await
}

/// `metalherd bootstrap site S`: the control plane of machines that booted
/// their Ignition, under the site's lock, journaled.
pub async fn bootstrap(
    ctx: OpCtx<'_>,
    opts: &bootstrap::Options,
    validity_days: i64,
) -> anyhow::Result<bootstrap::Report> {
    let OpCtx {
        fleet,
        site,
        store,
        sealer,
        holder,
        infra,
        ..
    } = ctx;
    crate::operation::with_site_lock(store, fleet, site, holder, || async {
        let target = Key::target_site(&site.name);
        let mut journal = Journal::begin(store, "bootstrap", &target, holder).await?;
        let generation = Generation {
            number: opts.generation,
            validity_days,
        };
        let pki = pki_step(&mut journal, store, sealer, site, generation).await?;
        let mut report = infra.bootstrap(ctx, &pki, opts, Some(&mut journal)).await?;
        if report.ok {
            let aside: BTreeSet<String> =
                report.set_aside.iter().map(|a| a.machine.clone()).collect();
            journal
                .step("record", || record(store, site, opts.generation, &aside))
                .await?;
            if !aside.is_empty() {
                journal
                    .mark_partial("record", "machines were set aside")
                    .await?;
                report.ok = false;
                report.error = Some(set_aside_error(
                    site,
                    &report.set_aside,
                    super::machines(site).len(),
                ));
            }
        }
        journal.finish(report.error.clone()).await?;
        audit(
            store,
            "bootstrap",
            site,
            opts.generation,
            report.ok,
            &report.error,
        )
        .await?;
        anyhow::Ok(report)
    })
    .await
}

/// The audit log's entry for a provision or bootstrap of `site`.
async fn audit(
    store: &dyn StateStore,
    action: &str,
    site: &Site,
    generation: u64,
    ok: bool,
    error: &Option<String>,
) -> anyhow::Result<()> {
    let detail = serde_json::json!({
        "site": site.name, "generation": generation, "ok": ok, "error": error,
    });
    crate::state::audit(store, action, detail).await?;
    Ok(())
}

/// The provision's journaled steps, shared with `replace`: `generation` on
/// the site of `ctx`, recorded as running there when `record_generation`
/// (a blue-green replace records it at its switch instead).
pub async fn steps(
    ctx: OpCtx<'_>,
    tuning: &Tuning,
    generation: Generation,
    journal: &mut Journal<'_>,
    report: &mut Report,
    record_generation: bool,
) -> anyhow::Result<()> {
    let OpCtx {
        fleet,
        site,
        keys,
        store,
        sealer,
        reporter,
        infra,
        ..
    } = ctx;
    let (opts, mut boot_opts) = tuning.options(generation.number);
    let opts = &opts;
    let names: Vec<&str> = super::machines(site)
        .iter()
        .map(|m| m.name.as_str())
        .collect();
    crate::lifecycle::refuse_quarantined(store, &names, &format!("provision of {}", site.name))
        .await?;
    // A resumed run acts only on what is not done: a machine an earlier
    // run of this operation left ready at this generation is not powered,
    // booted or bootstrapped again.
    let done = if journal.resumed() {
        let started = journal.record().started.clone();
        ready_at(store, site, generation.number, &started).await?
    } else {
        BTreeSet::new()
    };
    // Machines the caller set aside already (a replace's power off) are
    // left out too.
    let mut active: Vec<&Machine> = super::machines(site)
        .into_iter()
        .filter(|m| {
            !done.contains(m.name.as_str())
                && !report
                    .set_aside
                    .iter()
                    .any(|a| a.machine == m.name.as_str())
        })
        .collect();
    if !done.is_empty() {
        tracing::info!(
            "{}: {} machine(s) ready at generation {} in an earlier run; finishing the other {}",
            site.name,
            done.len(),
            generation.number,
            active.len()
        );
    }
    // Power on. A resumed run that completed this step does not power the
    // machines again: it accepts the reports they made in their windows,
    // and boots again only those whose window closed without one. Each
    // machine's provisioning window opens first: the boot server gives a
    // machine its Ignition only inside one, and only once.
    let holder = ctx.holder;
    let mut since = 0;
    let mut phase = None;
    let result = journal
        .step("power on", || async {
            for m in &active {
                provisioning::open(store, &m.name, &holder.to_string(), fleet.boot.window).await?;
            }
            let (p, t) = super::power_on(infra, fleet, site, &active, opts).await;
            since = t;
            // Recorded `provisioning`: what was powered on for this boot,
            // not what a BMC refused.
            for o in p.machines.iter().filter(|o| o.ok) {
                let record =
                    MachineRecord::now(MachineState::Provisioning, Some(generation.number));
                records::put_machine(store, &o.machine, &record, Expect::Any).await?;
            }
            let result = set_aside(site, &p);
            phase = Some(p);
            result
        })
        .await;
    report.phases.extend(phase.take());
    let result = match result {
        Ok(aside) => put_aside(journal, report, store, generation, "power on", aside).await,
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        close_windows(store, site, holder).await;
        return Err(e);
    }
    active.retain(|m| {
        !report
            .set_aside
            .iter()
            .any(|a| a.machine == m.name.as_str())
    });

    // Boot: every machine reports in its window and answers SSH; those
    // that installed to a disk then boot from it from now on.
    let mut phases = Vec::new();
    let result = journal
        .step("boot", || async {
            if since == 0 {
                // Resumed after the power on: boot again what neither
                // reported nor is still in its window.
                since = super::reboot_unreported(infra, fleet, site, &active, store, holder, opts)
                    .await?;
            }
            let p = infra
                .booted(site, &active, keys, store, since, opts, reporter)
                .await;
            let mut aside = set_aside(site, &p);
            phases.push(p);
            let booted: Vec<&Machine> = active
                .iter()
                .copied()
                .filter(|m| match &aside {
                    Ok(a) => !a.iter().any(|x| x.machine == m.name.as_str()),
                    Err(_) => true,
                })
                .collect();
            if aside.is_ok() {
                let p = super::boot_from_disk(infra, fleet, site, &booted, opts).await;
                let more = set_aside(site, &p);
                if !p.machines.is_empty() {
                    phases.push(p);
                }
                aside = match (aside, more) {
                    (Ok(mut a), Ok(b)) => {
                        a.extend(b);
                        Ok(a)
                    }
                    (Err(e), _) | (_, Err(e)) => Err(e),
                };
            }
            aside
        })
        .await;
    report.phases.append(&mut phases);
    // The boot is over, however it went: no window stays open behind it.
    close_windows(store, site, holder).await;
    match result {
        Ok(aside) => put_aside(journal, report, store, generation, "boot", aside).await?,
        Err(e) => return Err(e),
    }

    let pki = pki_step(journal, store, sealer, site, generation).await?;
    boot_opts.skip = done
        .iter()
        .cloned()
        .chain(report.set_aside.iter().map(|a| a.machine.clone()))
        .collect();
    boot_opts.leaves_some = !report.set_aside.is_empty();
    let boot = infra
        .bootstrap(ctx, &pki, &boot_opts, Some(journal))
        .await?;
    report.phases.extend(boot.phases);
    for a in boot.set_aside {
        let record = MachineRecord::set_aside(generation.number, &a.step, &a.error);
        records::put_machine(store, &a.machine, &record, Expect::Any).await?;
        report.set_aside.push(a);
    }
    if let Some(e) = boot.error {
        anyhow::bail!(e);
    }
    let not_ready: BTreeSet<String> = done
        .iter()
        .cloned()
        .chain(report.set_aside.iter().map(|a| a.machine.clone()))
        .collect();
    if record_generation {
        let ran = journal
            .step("record", || {
                record(store, site, generation.number, &not_ready)
            })
            .await?;
        if ran.is_some() && !report.set_aside.is_empty() {
            journal
                .mark_partial("record", "machines were set aside")
                .await?;
        }
    }
    if !report.set_aside.is_empty() {
        // Each machine set aside is named once, at the end (and in its
        // phase's per-machine outcomes): its phase went on without it.
        for p in report.phases.iter_mut().filter(|p| !p.ok) {
            let failed: Vec<&str> = p
                .machines
                .iter()
                .filter(|o| !o.ok)
                .map(|o| o.machine.as_str())
                .collect();
            if !failed.is_empty()
                && failed
                    .iter()
                    .all(|f| report.set_aside.iter().any(|a| a.machine == *f))
            {
                p.ok = true;
                p.notes = vec![format!(
                    "{} of {} set aside (listed at the end)",
                    failed.len(),
                    p.machines.len()
                )];
            }
        }
        anyhow::bail!(set_aside_error(site, &report.set_aside, names.len()));
    }
    Ok(())
}

/// The machines of `site` an earlier run of the operation (which started
/// at `started`, RFC 3339) left ready at `generation`.
async fn ready_at(
    store: &dyn StateStore,
    site: &Site,
    generation: u64,
    started: &str,
) -> anyhow::Result<BTreeSet<String>> {
    let mut done = BTreeSet::new();
    for m in super::machines(site) {
        if let Some((r, _)) = records::read_machine(store, &m.name).await? {
            // Same format both sides (`now_rfc3339`): the strings order
            // as the times do.
            if r.ready_at(generation) && r.since.as_str() >= started {
                done.insert(m.name.to_string());
            }
        }
    }
    Ok(done)
}

/// The workers that failed in `phase`, to set aside; an error when a
/// control plane failed (a cluster needs its control plane) or the phase
/// failed as a whole.
fn set_aside(site: &Site, phase: &Phase) -> anyhow::Result<Vec<SetAside>> {
    if phase.ok {
        return Ok(Vec::new());
    }
    let failed: Vec<_> = phase.machines.iter().filter(|o| !o.ok).collect();
    let worker = |name: &str| {
        site.machines
            .iter()
            .any(|m| m.name.as_str() == name && m.role == Role::Worker)
    };
    // A host key mismatch means something else answers for a machine:
    // that stops everything (the text of `SshError::HostKeyMismatch`).
    if failed.is_empty()
        || failed.iter().any(|o| {
            !worker(&o.machine)
                || o.error
                    .as_deref()
                    .is_some_and(|e| e.contains("host key mismatch"))
        })
    {
        super::failed(phase)?;
    }
    Ok(failed
        .iter()
        .map(|o| SetAside {
            machine: o.machine.clone(),
            step: phase.name.clone(),
            error: o.error.clone().unwrap_or_default(),
        })
        .collect())
}

/// Records machines set aside at `step`: each in the state (not ready,
/// with why) and the report, and the step as `partial` in the journal.
async fn put_aside(
    journal: &mut Journal<'_>,
    report: &mut Report,
    store: &dyn StateStore,
    generation: Generation,
    step: &str,
    aside: Option<Vec<SetAside>>,
) -> anyhow::Result<()> {
    let aside = aside.unwrap_or_default();
    for a in &aside {
        let record = MachineRecord::set_aside(generation.number, &a.step, &a.error);
        records::put_machine(store, &a.machine, &record, Expect::Any).await?;
    }
    report.set_aside.extend(aside);
    if !report.set_aside.is_empty() {
        let why = format!("{} machine(s) set aside so far", report.set_aside.len());
        journal.mark_partial(step, &why).await?;
    }
    Ok(())
}

/// The error of a provision that left workers behind.
fn set_aside_error(site: &Site, aside: &[SetAside], total: usize) -> String {
    let mut text = format!(
        "{} of {total} machines of {} set aside; the other {} are ready. \
         Fix what is named and run the same command again: it finishes only these.",
        aside.len(),
        site.name,
        total - aside.len()
    );
    for a in aside {
        text.push_str(&format!("\n  {} ({}): {}", a.machine, a.step, a.error));
    }
    text
}

/// Closes the provisioning windows of `site`'s machines that are still
/// open (machines that did not report): the operation that opened them is
/// past its boot. A window that cannot be closed expires on its own.
async fn close_windows(store: &dyn StateStore, site: &Site, holder: &crate::state::Holder) {
    let why = format!("the boot of {} ended", holder.operation);
    for m in super::machines(site) {
        if let Err(e) = provisioning::close(store, m.name.as_str(), &why).await {
            tracing::warn!(
                "{}: closing its provisioning window: {e} (it expires on its own)",
                m.name
            );
        }
    }
}

/// Journal step `pki`: the generation's PKI, made once and kept in the
/// state (a resumed run that skips the step loads it).
pub async fn pki_step(
    journal: &mut Journal<'_>,
    store: &dyn StateStore,
    sealer: &crate::state::crypt::Sealer,
    site: &Site,
    generation: Generation,
) -> anyhow::Result<crate::pki::ClusterPki> {
    let Generation {
        number,
        validity_days,
    } = generation;
    let pki = journal
        .step("pki", || async {
            let (pki, created) =
                crate::pki::load_or_create(store, sealer, site, number, validity_days)
                    .await
                    .with_context(|| {
                        format!("preparing the PKI of {} generation {number}", site.name)
                    })?;
            if created {
                tracing::info!(
                    "{}: generated the PKI of generation {number} ({})",
                    site.name,
                    store.describe()
                );
            }
            Ok(pki)
        })
        .await?;
    // A resumed run skips the step but still needs the PKI: it is stored.
    match pki {
        Some(p) => Ok(p),
        None => Ok(
            crate::pki::load_or_create(store, sealer, site, number, validity_days)
                .await?
                .0,
        ),
    }
}

/// Records generation `generation` as running at `site` and its nodes as
/// ready, but for those in `not_ready` (done earlier, or set aside).
pub async fn record(
    store: &dyn StateStore,
    site: &Site,
    generation: u64,
    not_ready: &BTreeSet<String>,
) -> anyhow::Result<()> {
    records::update_site(store, &site.name, |record| {
        if record.generation != generation
            && record.generation > 0
            && !record.retired.contains(&record.generation)
        {
            record.retired.push(record.generation);
        }
        record.retired.retain(|g| *g != generation);
        record.generation = generation;
        // The roles `site` gave its machines are now the current
        // generation's (a blue-green replace built it on other machines
        // than the inventory says); differences from the inventory stay
        // recorded.
        record.roles = crate::fleet::roles::overrides(site, &record.roles, &record.next_roles);
        record.next_roles.clear();
    })
    .await?;
    for m in site
        .machines
        .iter()
        .filter(|m| m.role != Role::Spare && !not_ready.contains(m.name.as_str()))
    {
        let record = MachineRecord::now(MachineState::Ready, Some(generation));
        records::put_machine(store, &m.name, &record, Expect::Any).await?;
    }
    Ok(())
}
