//! `metalherd provision site S`: the whole job on one site, from powered-off
//! machines to a recorded cluster generation: network boot (see
//! `crate::provision`), then the bootstrap (see `crate::bootstrap`).

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde::Serialize;

use super::bootstrap::{pki_step, print_phases, record};
use super::context::{fleet_and_keys, runtime};
use super::ssh::SshArgs;
use super::{print_json, Cli, Output};
use crate::assets::download::RetryPolicy;
use crate::bootstrap::{self, Phase};
use crate::fleet::SiteName;
use crate::job::Reporter;
use crate::operation::OpCtx;
use crate::provision::{self, Options};
use crate::ssh::Timeouts;
use crate::state::journal::Journal;
use crate::state::{self, Expect, Holder, MachineRecord, MachineState};

#[derive(Subcommand, Debug)]
pub enum ProvisionCommand {
    /// Provision one site: power on, network boot, report, SSH, etcd quorum.
    Site(SiteArgs),
}

#[derive(Args, Debug)]
pub struct SiteArgs {
    /// The site to provision (every machine but the spares).
    site: SiteName,
    /// The cluster generation to provision.
    #[arg(long, default_value_t = 1, value_name = "N")]
    generation: u64,
    /// Days the generation's certificates are valid.
    #[arg(long, default_value_t = 90, value_name = "DAYS")]
    validity_days: i64,
    #[command(flatten)]
    tuning: Tuning,
}

/// How long each part of a provision may take, and how wide it fans out.
#[derive(Args, Debug)]
pub struct Tuning {
    /// Seconds a machine may take from power-on to its first-boot report.
    #[arg(long, default_value_t = 900, value_name = "SECS")]
    boot_timeout: u64,
    /// Seconds each step on a machine may take (power, SSH commands).
    #[arg(long, default_value_t = 120, value_name = "SECS")]
    step_timeout: u64,
    /// Seconds to wait for etcd quorum and for the API server's /readyz.
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    ready_timeout: u64,
    /// Machines worked on at once in the site.
    #[arg(long, default_value_t = 8, value_name = "N")]
    parallel: usize,
    #[command(flatten)]
    ssh: SshArgs,
}

impl Tuning {
    /// The provision's and the bootstrap's options for `generation`.
    pub(super) fn options(&self, generation: u64) -> (Options, bootstrap::Options) {
        let timeouts = Timeouts {
            connect: Duration::from_secs(self.ssh.connect_timeout),
            step: Duration::from_secs(self.step_timeout),
        };
        let opts = Options {
            power: crate::power::Options {
                per_site: self.parallel,
                state_timeout: Duration::from_secs(self.step_timeout),
                retry: RetryPolicy {
                    retries: 3,
                    base_delay: Duration::from_millis(500),
                    max_delay: Duration::from_secs(10),
                },
            },
            boot_timeout: Duration::from_secs(self.boot_timeout),
            ssh_timeout: Duration::from_secs(self.step_timeout),
            user: self.ssh.user.clone(),
            timeouts,
            parallel: self.parallel,
            poll: Duration::from_secs(1),
        };
        let boot = bootstrap::Options {
            generation,
            user: self.ssh.user.clone(),
            timeouts,
            parallel: self.parallel,
            ready_timeout: Duration::from_secs(self.ready_timeout),
        };
        (opts, boot)
    }
}

/// What `provision` did, for the summary and `--output json`.
#[derive(Debug, Serialize)]
pub(super) struct Report {
    pub site: String,
    pub generation: u64,
    pub ok: bool,
    pub phases: Vec<Phase>,
    pub error: Option<String>,
    pub took_ms: u128,
}

pub fn run(cli: &Cli, cmd: &ProvisionCommand) -> anyhow::Result<()> {
    let ProvisionCommand::Site(args) = cmd;
    let started = std::time::Instant::now();
    let (fleet, keys) = fleet_and_keys(cli)?;
    let site = fleet
        .site(args.site.as_str())
        .with_context(|| format!("no site `{}` in fleet {}", args.site, fleet.name))?;
    let reporter = Reporter::new(super::progress_bars(cli));
    let mut report = Report {
        site: site.name.to_string(),
        generation: args.generation,
        ok: false,
        phases: Vec::new(),
        error: None,
        took_ms: 0,
    };
    runtime()?.block_on(async {
        let (store, sealer) = state::open(&fleet)?;
        let store = store.as_ref();
        let holder = Holder::current(&format!("provision site {}", site.name));
        let lock = store
            .lock(
                &crate::state::Key::site(&site.name),
                &holder,
                state::lock_ttl(&fleet),
            )
            .await?;
        let mut journal = Journal::begin(
            store,
            "provision",
            &crate::state::Key::target_site(&site.name),
            &holder,
        )
        .await?;
        let ctx = OpCtx {
            fleet: &fleet,
            site,
            keys: &keys,
            store,
            sealer: &sealer,
            holder: &holder,
            reporter: &reporter,
        };
        let result = steps(
            ctx,
            &args.tuning,
            args.generation,
            args.validity_days,
            &mut journal,
            &mut report,
            true,
        )
        .await;
        if let Err(e) = result {
            report.error = Some(format!("{e:#}"));
        }
        report.ok = report.error.is_none();
        journal.finish(report.error.clone()).await?;
        lock.release().await?;
        anyhow::Ok(())
    })?;
    report.took_ms = started.elapsed().as_millis();
    if cli.output == Output::Json {
        print_json(&serde_json::to_value(&report)?)?;
    } else {
        print_phases(&report.phases);
        println!(
            "{:<16} {:<7} {:>8.1} s",
            "total",
            if report.ok { "ok" } else { "FAILED" },
            report.took_ms as f64 / 1000.0
        );
    }
    match &report.error {
        None => {
            if cli.output == Output::Text {
                println!(
                    "provision of {} (generation {}): done; every machine ready",
                    report.site, report.generation
                );
            }
            Ok(())
        }
        Some(e) => {
            if cli.output == Output::Text {
                eprintln!("{e}");
            }
            Err(super::Reported(format!(
                "provision of {} (generation {}) failed: {}",
                report.site,
                report.generation,
                e.lines().next().unwrap_or("")
            ))
            .into())
        }
    }
}

/// The provision's journaled steps, shared with `replace`: generation
/// `generation` (certificates valid `validity_days`) on the site of `ctx`,
/// recorded as running there when `record_generation` (a blue-green
/// replace records it at its switch instead).
pub(super) async fn steps(
    ctx: OpCtx<'_>,
    tuning: &Tuning,
    generation: u64,
    validity_days: i64,
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
        ..
    } = ctx;
    let (opts, boot_opts) = tuning.options(generation);
    let (opts, boot_opts) = (&opts, &boot_opts);
    let names: Vec<&str> = provision::machines(site)
        .iter()
        .map(|m| m.name.as_str())
        .collect();
    crate::lifecycle::refuse_quarantined(store, &names, &format!("provision of {}", site.name))
        .await?;
    // Power on. A resumed run that completed this step does not power the
    // machines again, and accepts the boot reports they made since.
    let mut since = 0;
    let mut phase = None;
    let result = journal
        .step("power on", || async {
            for m in provision::machines(site) {
                let record = MachineRecord {
                    state: MachineState::Provisioning,
                    since: state::now_rfc3339(),
                    generation: Some(generation),
                };
                state::put_json(
                    store,
                    &crate::state::Key::machine(&m.name),
                    &record,
                    Expect::Any,
                )
                .await?;
            }
            let (p, t) = provision::power_on(fleet, site, opts).await;
            since = t;
            let result = provision::failed(&p);
            phase = Some(p);
            result
        })
        .await;
    report.phases.extend(phase.take());
    result?;

    let mut phase = None;
    let result = journal
        .step("boot", || async {
            let p = provision::wait_booted(site, keys, since, opts, reporter).await;
            let result = provision::failed(&p);
            phase = Some(p);
            result
        })
        .await;
    report.phases.extend(phase.take());
    result?;

    let pki = pki_step(journal, store, sealer, site, generation, validity_days).await?;
    let boot =
        bootstrap::bootstrap_site(fleet, site, keys, &pki, boot_opts, reporter, Some(journal))
            .await?;
    report.phases.extend(boot.phases);
    if let Some(e) = boot.error {
        anyhow::bail!(e);
    }
    if record_generation {
        journal
            .step("record", || record(store, site, generation))
            .await?;
    }
    Ok(())
}
