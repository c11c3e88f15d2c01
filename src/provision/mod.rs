//! Provisioning a site's machines up to the point where the bootstrap takes
//! over: power each machine on to boot from the network once, follow it
//! through the boot server (iPXE script, Ignition with its one-time token,
//! first-boot report with the host key), then wait until it answers SSH
//! with the host key metalherd generated for it.
//!
//! The boot server is the witness: its `/api/v1/machines` shows the stage
//! each machine reached, who fetched its Ignition, and why a request was
//! refused. A refused replay means someone else holds the machine's config
//! (its private host key included): that machine fails, the others go on.

mod steps;
pub mod windows;

pub use steps::{bootstrap, pki_step, provision, record, steps, Generation, Report, Tuning};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Deserialize;

use crate::bootstrap::{Phase, PhaseFailed};
use crate::fleet::{Fleet, Machine, Site};
use crate::infra::Infra;
use crate::job::{self, Outcome, Reporter, Task};
use crate::keys::Keys;
use crate::power::{self, Action};
use crate::ssh::{Session, SshError, Timeouts};
use crate::state::provisioning::{self, unix_now};
use crate::state::StateStore;

/// How a provision runs.
#[derive(Clone, Debug)]
pub struct Options {
    pub power: power::Options,
    /// How long a machine may take from power-on to its report.
    pub boot_timeout: Duration,
    /// How long SSH may take to answer after the report.
    pub ssh_timeout: Duration,
    pub user: String,
    pub timeouts: Timeouts,
    /// Machines worked on at once in the site.
    pub parallel: usize,
    /// How often the boot server is asked.
    pub poll: Duration,
}

/// The machines that take part: every one but the spares.
pub fn machines(site: &Site) -> Vec<&Machine> {
    site.machines
        .iter()
        .filter(|m| m.role != crate::fleet::Role::Spare)
        .collect()
}

/// Sets each of `list` to boot from the network once and powers it on (or
/// cycles it). Returns the phase (failed when any machine failed, with the
/// summary) and the time it started (unix seconds).
pub async fn power_on(
    infra: &dyn Infra,
    fleet: &Fleet,
    site: &Site,
    list: &[&Machine],
    opts: &Options,
) -> (Phase, u64) {
    let since = unix_now();
    let phase = power_phase(
        infra,
        fleet,
        site,
        list,
        Action::PxeOnce,
        ("power on", "power on (network boot once)"),
        opts,
    )
    .await;
    (phase, since)
}

/// Sets the machines of `list` that installed to a disk to boot from it
/// from now on, through their BMCs (which read the setting back), so later
/// reboots never network-boot into a second install; `replace` and a
/// drill's rebuild set a network boot again for their one boot. Machines
/// that run from RAM are left alone: an empty phase.
pub async fn boot_from_disk(
    infra: &dyn Infra,
    fleet: &Fleet,
    site: &Site,
    list: &[&Machine],
    opts: &Options,
) -> Phase {
    let installed: Vec<&Machine> = list.iter().copied().filter(|m| fleet.installs(m)).collect();
    power_phase(
        infra,
        fleet,
        site,
        &installed,
        Action::Disk,
        ("boot from disk", "boot from disk from now on"),
        opts,
    )
    .await
}

/// `action` on `list` as a phase named `name`, its failures summarised as
/// `what`.
async fn power_phase(
    infra: &dyn Infra,
    fleet: &Fleet,
    site: &Site,
    list: &[&Machine],
    action: Action,
    (name, what): (&str, &str),
    opts: &Options,
) -> Phase {
    let started = Instant::now();
    let outcomes = if list.is_empty() {
        Vec::new()
    } else {
        infra.power(fleet, site, list, action, &opts.power).await
    };
    let machines: Vec<Outcome<()>> = outcomes
        .into_iter()
        .map(|o| Outcome {
            machine: o.machine,
            site: o.site,
            ok: o.ok,
            result: o.ok.then_some(()),
            error: o.error,
            last_lines: Vec::new(),
            duration_ms: o.duration_ms,
        })
        .collect();
    let (ok, summary) = job::summary(what, &machines);
    Phase {
        name: name.into(),
        ok,
        duration_ms: started.elapsed().as_millis(),
        notes: if ok { Vec::new() } else { vec![summary] },
        machines,
    }
}

/// For a boot step resumed after its power on (the run that powered the
/// machines ended): every machine of `list` whose latest provisioning window
/// closed without its report, or expired, or never opened, gets a new
/// window and is powered on for a network boot again; machines still in
/// their window are left to finish booting. Returns the time from which
/// reports count: when the earliest of the kept windows opened (a report
/// from before it is an older boot's).
pub async fn reboot_unreported(
    infra: &dyn Infra,
    fleet: &Fleet,
    site: &Site,
    list: &[&Machine],
    store: &dyn StateStore,
    holder: &crate::state::Holder,
    opts: &Options,
) -> anyhow::Result<u64> {
    let now = unix_now();
    let mut since = now;
    let mut again = Vec::new();
    for m in list.iter().copied() {
        match provisioning::read(store, &m.name).await? {
            Some((w, _)) if w.is_open(now) || w.closed.as_deref() == Some("reported") => {
                since = since.min(w.opened_unix);
            }
            _ => again.push(m),
        }
    }
    if again.is_empty() {
        return Ok(since);
    }
    let names: Vec<&str> = again.iter().map(|m| m.name.as_str()).collect();
    tracing::info!(
        "{}: booting again what did not report before the last run ended: {}",
        site.name,
        names.join(", ")
    );
    for m in &again {
        provisioning::open(store, &m.name, &holder.to_string(), fleet.boot.window).await?;
    }
    let failed: Vec<String> = infra
        .power(fleet, site, &again, Action::PxeOnce, &opts.power)
        .await
        .into_iter()
        .filter(|o| !o.ok)
        .map(|o| format!("{}: {}", o.machine, o.error.unwrap_or_default()))
        .collect();
    anyhow::ensure!(
        failed.is_empty(),
        "power on (network boot once) again: {}",
        failed.join("; ")
    );
    Ok(since)
}

/// One machine as the boot server saw it.
#[derive(Clone, Debug, Deserialize)]
struct Seen {
    machine: String,
    last_request_unix: Option<u64>,
    stage: Option<String>,
    client: Option<String>,
    refused: Option<String>,
    ignition_client: Option<String>,
}

#[derive(Deserialize)]
struct Machines {
    machines: Vec<Seen>,
}

async fn ask(client: &reqwest::Client, url: &str) -> anyhow::Result<Vec<Seen>> {
    let resp = client
        .get(url)
        .send()
        .await
        .with_context(|| format!("asking the boot server ({url})"))?;
    anyhow::ensure!(
        resp.status().is_success(),
        "the boot server ({url}) answered {}",
        resp.status()
    );
    let body = resp.bytes().await?;
    Ok(serde_json::from_slice::<Machines>(&body)
        .with_context(|| format!("reading the boot server's answer ({url})"))?
        .machines)
}

/// Waits until every machine of `list` has booted and reported (after
/// `since`, unix seconds; 0 accepts earlier reports, for a resumed run)
/// and answers SSH with its pinned host key.
///
/// Every machine waits at once: one poller asks the boot server about all
/// of them each `opts.poll` (hundreds of machines cost one request per
/// poll, not one each), and only the SSH checks are bounded, by
/// `opts.parallel`.
pub async fn wait_booted(
    site: &Site,
    list: &[&Machine],
    keys: &Keys,
    store: &dyn StateStore,
    since: u64,
    opts: &Options,
    reporter: &Reporter,
) -> Phase {
    let started = Instant::now();
    let targets: Vec<job::Target> = list
        .iter()
        .map(|m| job::Target {
            machine: m.name.to_string(),
            site: site.name.to_string(),
        })
        .collect();
    let url = format!(
        "{}/api/v1/machines",
        site.boot_server.as_str().trim_end_matches('/')
    );
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_default();
    let (tx, rx) = tokio::sync::watch::channel::<Option<Witness>>(None);
    let poller = async {
        loop {
            let seen = ask(&client, &url)
                .await
                .map(|all| {
                    Arc::new(
                        all.into_iter()
                            .map(|s| (s.machine.clone(), s))
                            .collect::<HashMap<_, _>>(),
                    )
                })
                .map_err(|e| format!("{e:#}"));
            if tx.send(Some(seen)).is_err() {
                return;
            }
            tokio::time::sleep(opts.poll).await;
        }
    };
    let ssh = tokio::sync::Semaphore::new(opts.parallel.max(1));
    let work = job::run(&targets, targets.len(), reporter, |target, task| {
        let machine = list
            .iter()
            .find(|m| m.name.as_str() == target.machine)
            .copied();
        let (rx, ssh) = (rx.clone(), &ssh);
        async move {
            let machine = machine.context("machine vanished from the inventory")?;
            wait_report(rx, store, machine, since, opts, &task).await?;
            let _turn = ssh.acquire().await?;
            wait_ssh(machine, keys, opts, &task).await
        }
    });
    tokio::pin!(work);
    let outcomes = tokio::select! {
        outcomes = &mut work => outcomes,
        () = poller => work.await,
    };
    let (ok, summary) = job::summary("boot", &outcomes);
    Phase {
        name: "boot".into(),
        ok,
        duration_ms: started.elapsed().as_millis(),
        notes: if ok { Vec::new() } else { vec![summary] },
        machines: outcomes,
    }
}

/// The boot server's latest answer: every machine it saw, or why asking
/// failed.
type Witness = Result<Arc<HashMap<String, Seen>>, String>;

async fn wait_report(
    rx: tokio::sync::watch::Receiver<Option<Witness>>,
    store: &dyn StateStore,
    machine: &Machine,
    since: u64,
    opts: &Options,
    task: &Task,
) -> anyhow::Result<()> {
    task.phase("waiting for DHCP and iPXE");
    let deadline = Instant::now() + opts.boot_timeout;
    let mut last_stage = String::new();
    let mut last_error: Option<String> = None;
    loop {
        // The window holds what every boot server of the site saw: a second
        // request for the config, from anyone, fails the machine; its
        // report (to whichever server) closed it. Only a report that closed
        // a window opened for this boot counts.
        if let Ok(Some((window, _))) = provisioning::read(store, &machine.name).await {
            if let Some(exposure) = window.exposure() {
                bail!("{exposure}");
            }
            if window.opened_unix + 1 >= since {
                match window.closed.as_deref() {
                    Some("reported") => {
                        task.phase("reported; waiting for SSH");
                        return Ok(());
                    }
                    Some(why) if why.starts_with(provisioning::MISMATCH) => {
                        bail!("it {why}: refusing it")
                    }
                    _ => {}
                }
            }
        }
        let latest = rx.borrow().clone();
        match latest {
            None => {}
            Some(Err(e)) => last_error = Some(e),
            Some(Ok(all)) => {
                last_error = None;
                let seen = all
                    .get(machine.name.as_str())
                    .filter(|s| s.last_request_unix.unwrap_or(0) + 1 >= since);
                if let Some(seen) = seen {
                    let stage = seen.stage.clone().unwrap_or_default();
                    if stage != last_stage {
                        last_stage = stage.clone();
                        match stage.as_str() {
                            "ipxe-served" => {
                                task.phase("iPXE script served; loading kernel and initrd")
                            }
                            "ignition-served" => task.phase(&format!(
                                "Ignition served to {}; booting",
                                seen.ignition_client.as_deref().unwrap_or("?")
                            )),
                            "booting-disk" => task.phase("install stage done; booting its disk"),
                            "outside-window" => task.phase(
                                "asked the boot server outside its provisioning window; told to boot locally",
                            ),
                            "ignition-refused" | "extension-mismatch" => {}
                            "reported" => {}
                            other => task.phase(other),
                        }
                    }
                    if stage == "extension-mismatch" {
                        bail!(
                            "its boot will fail: {}",
                            seen.refused.clone().unwrap_or_default()
                        );
                    }
                    if stage == "ignition-refused" {
                        let why = seen.refused.clone().unwrap_or_default();
                        if why.contains("already used")
                            || why.contains("expired")
                            || why.contains("revoked")
                        {
                            bail!(
                                "the boot server refused its Ignition request from {}: {why}{}",
                                seen.client.as_deref().unwrap_or("?"),
                                match &seen.ignition_client {
                                    Some(c) => format!(
                                        "; the config was served to {c} first: treat this machine's host key as exposed"
                                    ),
                                    None => String::new(),
                                }
                            );
                        }
                    }
                    // A report counts once its window records it (above):
                    // the boot server's last stage may be an older boot's.
                }
            }
        }
        if Instant::now() > deadline {
            let stage = if last_stage.is_empty() {
                "none (no iPXE request: check power, DHCP and the boot order)".to_string()
            } else {
                last_stage
            };
            bail!(
                "no report within {} s; last stage the boot server saw: {stage}{}",
                opts.boot_timeout.as_secs(),
                last_error
                    .map(|e| format!("; last error: {e}"))
                    .unwrap_or_default()
            );
        }
        tokio::time::sleep(opts.poll).await;
    }
}

async fn wait_ssh(
    machine: &Machine,
    keys: &Keys,
    opts: &Options,
    task: &Task,
) -> anyhow::Result<()> {
    let host_key = keys
        .host
        .get(&machine.name)
        .with_context(|| format!("{}: no host key in the state", machine.name))?;
    let target = crate::ssh::Target::new(machine.name.as_str(), machine.ip, host_key);
    let deadline = Instant::now() + opts.ssh_timeout;
    loop {
        match Session::connect(&target, &opts.user, &keys.operator, opts.timeouts).await {
            Ok(session) => {
                let out = session
                    .exec("systemd state", "systemctl is-system-running || true", None)
                    .await;
                let state = out
                    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                    .unwrap_or_default();
                task.phase(&format!("SSH ready (systemd: {state})"));
                return Ok(());
            }
            Err(e @ SshError::HostKeyMismatch { .. }) => return Err(e.into()),
            Err(e) if Instant::now() > deadline => {
                return Err(anyhow::Error::from(e).context(format!(
                    "SSH did not answer within {} s of the report",
                    opts.ssh_timeout.as_secs()
                )))
            }
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

/// The phase as an error, for the journal.
pub fn failed(phase: &Phase) -> anyhow::Result<()> {
    if phase.ok {
        Ok(())
    } else {
        Err(PhaseFailed(phase.notes.join("\n")).into())
    }
}
