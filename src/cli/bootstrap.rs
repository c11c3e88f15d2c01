//! `metalherd bootstrap site S`: deliver the generation's PKI and
//! configuration over SSH, form the etcd quorum, start the control plane
//! (see `crate::bootstrap` for the phases).

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::context::{fleet_and_keys, runtime};
use super::ssh::SshArgs;
use super::{print_json, Cli, Output};
use crate::bootstrap::{self, Options};
use crate::fleet::{Role, Site, SiteName};
use crate::job::Reporter;
use crate::ssh::Timeouts;
use crate::state::journal::Journal;
use crate::state::{self, Expect, Holder, MachineRecord, MachineState, StateStore};

#[derive(Subcommand, Debug)]
pub enum BootstrapCommand {
    /// Bootstrap the control plane of one site's cluster.
    Site(SiteArgs),
}

#[derive(Args, Debug)]
pub struct SiteArgs {
    /// The site whose machines have booted their Ignition.
    site: SiteName,
    /// The cluster generation (its PKI is made once and kept in the state).
    #[arg(long, default_value_t = 1, value_name = "N")]
    generation: u64,
    /// Days the generation's certificates are valid (clusters are replaced, not renewed).
    #[arg(long, default_value_t = 90, value_name = "DAYS")]
    validity_days: i64,
    /// Machines worked on at once in the site.
    #[arg(long, default_value_t = 8, value_name = "N")]
    parallel: usize,
    /// Seconds each step on a machine may take.
    #[arg(long, default_value_t = 120, value_name = "SECS")]
    step_timeout: u64,
    /// Seconds to wait for etcd quorum and for the API server's /readyz.
    #[arg(long, default_value_t = 180, value_name = "SECS")]
    ready_timeout: u64,
    #[command(flatten)]
    ssh: SshArgs,
}

pub fn run(cli: &Cli, cmd: &BootstrapCommand) -> anyhow::Result<()> {
    let BootstrapCommand::Site(args) = cmd;
    let (fleet, keys) = fleet_and_keys(cli)?;
    let site = fleet
        .site(args.site.as_str())
        .with_context(|| format!("no site `{}` in fleet {}", args.site, fleet.name))?;
    let opts = Options {
        generation: args.generation,
        user: args.ssh.user.clone(),
        timeouts: Timeouts {
            connect: Duration::from_secs(args.ssh.connect_timeout),
            step: Duration::from_secs(args.step_timeout),
        },
        parallel: args.parallel,
        ready_timeout: Duration::from_secs(args.ready_timeout),
    };
    let reporter = Reporter::new(super::progress_bars(cli));
    let report = runtime()?.block_on(async {
        let (store, sealer) = state::open(&fleet)?;
        let store = store.as_ref();
        let operation = format!("bootstrap site {}", site.name);
        let holder = Holder::current(&operation);
        // One operation at a time per site, fleet-wide.
        let lock = store
            .lock(
                &crate::state::Key::site(&site.name),
                &holder,
                state::lock_ttl(&fleet),
            )
            .await?;
        let mut journal = Journal::begin(
            store,
            "bootstrap",
            &crate::state::Key::target_site(&site.name),
            &holder,
        )
        .await?;
        let pki = pki_step(
            &mut journal,
            store,
            &sealer,
            site,
            args.generation,
            args.validity_days,
        )
        .await?;
        let report = bootstrap::bootstrap_site(
            &fleet,
            site,
            &keys,
            &pki,
            &opts,
            &reporter,
            Some(&mut journal),
        )
        .await?;
        if report.ok {
            journal
                .step("record", || record(store, site, args.generation))
                .await?;
        }
        journal.finish(report.error.clone()).await?;
        lock.release().await?;
        anyhow::Ok(report)
    })?;
    if cli.output == Output::Json {
        print_json(&serde_json::to_value(&report)?)?;
    } else {
        print_phases(&report.phases);
    }
    match &report.error {
        None => {
            if cli.output == Output::Text {
                println!(
                    "bootstrap of {} (generation {}): done",
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
                "bootstrap of {} (generation {}) failed: {}",
                report.site,
                report.generation,
                e.lines().next().unwrap_or("")
            ))
            .into())
        }
    }
}

/// Journal step `pki`: the generation's PKI, made once and kept in the
/// state (a resumed run that skips the step loads it).
pub(super) async fn pki_step(
    journal: &mut Journal<'_>,
    store: &dyn StateStore,
    sealer: &crate::state::crypt::Sealer,
    site: &Site,
    generation: u64,
    validity_days: i64,
) -> anyhow::Result<crate::pki::ClusterPki> {
    let args_generation = generation;
    let pki = journal
        .step("pki", || async {
            let (pki, created) =
                crate::pki::load_or_create(store, sealer, site, args_generation, validity_days)
                    .await
                    .with_context(|| {
                        format!(
                            "preparing the PKI of {} generation {}",
                            site.name, args_generation
                        )
                    })?;
            if created {
                tracing::info!(
                    "{}: generated the PKI of generation {} ({})",
                    site.name,
                    args_generation,
                    store.describe()
                );
            }
            Ok(pki)
        })
        .await?;
    // A resumed run skips the step but still needs the PKI: it is stored.
    let pki = match pki {
        Some(p) => p,
        None => {
            crate::pki::load_or_create(store, sealer, site, args_generation, validity_days)
                .await?
                .0
        }
    };
    Ok(pki)
}

/// Prints the phases of a report, one line each with its duration.
pub(super) fn print_phases(phases: &[bootstrap::Phase]) {
    for p in phases {
        let status = if p.ok { "ok" } else { "FAILED" };
        println!(
            "{:<16} {status:<7} {:>8.1} s",
            p.name,
            p.duration_ms as f64 / 1000.0
        );
        for n in &p.notes {
            println!("    {n}");
        }
    }
}

/// Records generation `generation` as running at `site` and its nodes as
/// ready.
pub(super) async fn record(
    store: &dyn StateStore,
    site: &Site,
    generation: u64,
) -> anyhow::Result<()> {
    state::records::update_site(store, &site.name, |record| {
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
    for m in site.machines.iter().filter(|m| m.role != Role::Spare) {
        let record = MachineRecord::now(MachineState::Ready, Some(generation));
        state::records::put_machine(store, &m.name, &record, Expect::Any).await?;
    }
    Ok(())
}
