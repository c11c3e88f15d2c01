//! `lockdown cluster C`: containment of a suspected compromise of one
//! site's cluster. The safety rules do not block it (an incident does not
//! wait for a window); the checks that fail are recorded. Under the
//! `fleet` and `sites/<S>` locks, journaled as `lockdown site/<S>` with
//! steps named `<case>: <step>`:
//!
//! 1. `quarantine`: every machine of the cluster is `quarantined` before
//!    anything else happens to it (fail-safe: from now on no command powers
//!    it off, wipes or reprovisions it until `release machine`);
//! 2. `drain`: the site is recorded drained (`lockdown <case>`) and the
//!    `traffic.drain` hook runs. A failing hook is reported but does not
//!    stop the containment;
//! 3. `isolate`: on each node, an nftables table ([`node::ruleset`]) drops
//!    everything but loopback, the forensic bastion and metalherd's own
//!    address (which expires by itself, see [`node::COLLECTOR_TTL`]);
//! 4. `evidence`: the [`node::COLLECT`] commands over SSH and an etcd
//!    snapshot of each control plane, into the case's evidence directory
//!    with a chain-of-custody log ([`evidence`]);
//! 5. `seal`: the nodes' authorized keys become the forensic key alone,
//!    then metalherd's address leaves the ruleset: from here on only the
//!    bastion reaches them, and machines stay powered;
//! 6. `pki`: the generation's PKI is retired for good: marked compromised
//!    (`pki::load` refuses it), its private keys deleted from the state,
//!    the generation added to the site's retired ones;
//! 7. `verify`: metalherd's TCP connections to each node's port 22 must
//!    now fail.
//!
//! The evidence directory is then sealed (manifest, read-only) whatever
//! happened. A failure never undoes an earlier step; each step runs on
//! every machine it can, and the report names each machine and step that
//! failed.

pub mod evidence;
pub mod node;
mod request;
mod text;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use serde_json::json;

use crate::fleet::{Fleet, Forensics, Machine, Role, Site};
use crate::job::{self, Outcome, Reporter, Task};
use crate::keys::Keys;
use crate::lifecycle::{self, Check};
use crate::ssh::{Session, Timeouts};
use crate::state::journal::Journal;
use crate::state::{self, Expect, Holder, MachineRecord, MachineState, SiteRecord, StateStore};
use evidence::Evidence;
pub use request::{cluster_site, forensics, replace_hint, CaseId, ReplaceOn};

/// How a lockdown runs.
#[derive(Clone, Debug)]
pub struct Options {
    pub case: CaseId,
    pub reason: String,
    /// The directory holding one evidence directory per case.
    pub evidence_root: PathBuf,
    /// The SSH user (`core`), whose authorized keys the seal replaces.
    pub user: String,
    pub timeouts: Timeouts,
    /// Machines worked on at once.
    pub parallel: usize,
    /// How long `verify` may wait for port 22 to close.
    pub verify_deadline: Duration,
}

/// One step's outcome.
#[derive(Debug, Serialize)]
pub struct StepOutcome {
    pub name: String,
    pub ok: bool,
    pub duration_ms: u128,
    pub detail: Option<String>,
}

/// One machine's outcome of each step: `ok`, `failed: …` or `not run`.
#[derive(Debug, Serialize)]
pub struct MachineStatus {
    pub machine: String,
    pub role: Role,
    pub ip: IpAddr,
    pub quarantined: bool,
    pub isolate: String,
    /// The address metalherd collected from (allowed until the seal).
    pub collector: Option<IpAddr>,
    pub evidence: String,
    pub evidence_files: usize,
    pub seal: String,
    pub verify: String,
}

/// What a lockdown did.
#[derive(Debug, Serialize)]
pub struct Report {
    pub ok: bool,
    pub case: CaseId,
    pub reason: String,
    pub site: String,
    pub cluster: String,
    pub generation: Option<u64>,
    pub evidence_dir: PathBuf,
    pub manifest_sha256: Option<String>,
    /// The safety checks at the start (recorded, never blocking).
    pub checks: Vec<Check>,
    pub failing_checks: Vec<String>,
    pub steps: Vec<StepOutcome>,
    pub machines: Vec<MachineStatus>,
    /// The first failure: the step, the machines it failed on and why.
    pub error: Option<String>,
    pub started: String,
    pub finished: Option<String>,
}

const NOT_RUN: &str = "not run";

/// Locks down `site`'s cluster (see the module docs). `Err` only when
/// nothing was done (no forensics, evidence exists, locks held) or the
/// state store failed; otherwise the report says what happened.
pub async fn lockdown(
    fleet: &Fleet,
    keys: &Keys,
    site: &Site,
    opts: &Options,
    reporter: &Reporter,
) -> anyhow::Result<Report> {
    let forensics = forensics(fleet)?;
    let case_dir = opts.evidence_root.join(opts.case.as_str());
    if case_dir.symlink_metadata().is_ok() {
        bail!(
            "{} exists: evidence is never overwritten (use another --case or --evidence-dir)",
            case_dir.display()
        );
    }
    let (store, sealer) = state::open(fleet)?;
    let store = store.as_ref();
    let holder = Holder::current(&format!(
        "lockdown cluster {} (case {})",
        site.cluster.name, opts.case
    ));
    crate::operation::with_site_locks(store, fleet, site, &holder, || async {
        let ctx = Ctx {
            fleet,
            site,
            keys,
            forensics,
            opts,
            reporter,
            store,
            sealer: &sealer,
            holder: &holder,
        };
        ctx.locked(Evidence::create(&case_dir, &holder)?).await
    })
    .await
}

struct Ctx<'a> {
    fleet: &'a Fleet,
    site: &'a Site,
    keys: &'a Keys,
    forensics: &'a Forensics,
    opts: &'a Options,
    reporter: &'a Reporter,
    store: &'a dyn StateStore,
    sealer: &'a crate::state::crypt::Sealer,
    holder: &'a Holder,
}

impl<'a> Ctx<'a> {
    async fn locked(&self, ev: Evidence) -> anyhow::Result<Report> {
        let (site, opts) = (self.site, self.opts);
        let key = crate::state::Key::site(&site.name);
        let generation = state::get_json::<SiteRecord>(self.store, &key)
            .await?
            .map(|(r, _)| r.generation)
            .filter(|g| *g > 0);
        let checks = lifecycle::check(
            self.fleet,
            site,
            self.store,
            self.sealer,
            &crate::infra::Real,
            &lifecycle::Options::default(),
        )
        .await;
        let failing = lifecycle::failing(&checks);
        let mut report = Report {
            ok: false,
            case: opts.case.clone(),
            reason: opts.reason.clone(),
            site: site.name.to_string(),
            cluster: site.cluster.name.to_string(),
            generation,
            evidence_dir: ev.dir().to_path_buf(),
            manifest_sha256: None,
            checks,
            failing_checks: failing.clone(),
            steps: Vec::new(),
            machines: crate::provision::machines(site)
                .iter()
                .map(|m| MachineStatus {
                    machine: m.name.to_string(),
                    role: m.role,
                    ip: m.ip,
                    quarantined: false,
                    isolate: NOT_RUN.into(),
                    collector: None,
                    evidence: NOT_RUN.into(),
                    evidence_files: 0,
                    seal: NOT_RUN.into(),
                    verify: NOT_RUN.into(),
                })
                .collect(),
            error: None,
            started: state::now_rfc3339(),
            finished: None,
        };
        state::audit(
            self.store,
            "lockdown",
            json!({ "phase": "started", "case": opts.case, "reason": opts.reason,
                    "site": site.name, "cluster": site.cluster.name, "generation": generation,
                    "failing_checks": failing, "evidence_dir": ev.dir() }),
        )
        .await?;
        let mut journal = Journal::begin(
            self.store,
            "lockdown",
            &crate::state::Key::target_site(&site.name),
            self.holder,
        )
        .await?;
        let not_blocking = if failing.is_empty() {
            "none".to_string()
        } else {
            failing.join("; ")
        };
        journal
            .step(
                &format!(
                    "{}: start (reason: {}; failing checks, not blocking: {not_blocking})",
                    opts.case, opts.reason
                ),
                || async { anyhow::Ok(()) },
            )
            .await?;
        self.steps(&ev, &mut journal, &mut report).await;

        report.finished = Some(state::now_rfc3339());
        let case = json!({
            "case": opts.case, "reason": opts.reason, "site": site.name,
            "cluster": site.cluster.name, "generation": generation,
            "machines": report.machines.iter().map(|m| &m.machine).collect::<Vec<_>>(),
            "bastion": self.forensics.bastion, "by": self.holder,
            "started": report.started, "finished": report.finished,
            "failing_checks": report.failing_checks, "error": report.error,
        });
        match ev.seal(&case) {
            Ok(sha) => report.manifest_sha256 = Some(sha),
            Err(e) => {
                let e = format!("sealing the evidence directory: {e:#}");
                report.error.get_or_insert(e);
            }
        }
        report.ok = report.error.is_none();
        journal.finish(report.error.clone()).await?;
        state::audit(
            self.store,
            "lockdown",
            json!({ "phase": "finished", "case": opts.case, "site": site.name, "ok": report.ok,
                    "error": report.error, "manifest_sha256": report.manifest_sha256 }),
        )
        .await?;
        Ok(report)
    }

    async fn steps(&self, ev: &Evidence, journal: &mut Journal<'_>, report: &mut Report) {
        let (site, case) = (self.site, &self.opts.case);
        let generation = report.generation;
        let ok = run_step(journal, report, case, "quarantine", || {
            self.quarantine(generation)
        })
        .await;
        for m in &mut report.machines {
            m.quarantined = ok;
        }

        let drained = format!("lockdown {case}");
        run_step(journal, report, case, "drain", || async {
            super::traffic::drain(
                self.store,
                &crate::infra::Real,
                self.fleet,
                site,
                drained.clone(),
            )
            .await
        })
        .await;

        let mut got = Vec::new();
        let bastion = self.forensics.bastion;
        run_step(journal, report, case, "isolate", || async {
            got = self
                .fan_out(|_, s, t| async move {
                    t.phase("isolate: nft -f -");
                    let collector = node::isolate(&s, bastion).await?;
                    s.close().await;
                    Ok(collector)
                })
                .await;
            summary("isolate", &got)
        })
        .await;
        for o in &got {
            if let Some(m) = status(report, &o.machine) {
                m.isolate = said(o);
                m.collector = o.result;
            }
        }

        let pki = match report.generation {
            Some(g) => crate::pki::load(self.store, self.sealer, site, g)
                .await
                .map_err(|e| format!("{e}"))
                .and_then(|p| {
                    p.ok_or_else(|| format!("the PKI of generation {g} is not in the state"))
                }),
            None => Err("no cluster generation is recorded for the site".to_string()),
        };
        let pki = &pki;
        let mut got = Vec::new();
        run_step(journal, report, case, "evidence", || async {
            got = self
                .fan_out(|m, s, t| async move {
                    let n = evidence::collect(ev, m, &s, &t, pki).await?;
                    s.close().await;
                    Ok(n)
                })
                .await;
            summary("evidence", &got)
        })
        .await;
        for o in &got {
            if let Some(m) = status(report, &o.machine) {
                m.evidence = said(o);
                m.evidence_files = o.result.unwrap_or(0);
            }
        }

        let mut got = Vec::new();
        let (user, key) = (&self.opts.user, &self.forensics.ssh_authorized_key);
        run_step(journal, report, case, "seal", || async {
            got = self
                .fan_out(|_, s, t| async move {
                    t.phase("seal: forensic key only, collector removed");
                    node::seal(&s, user, key).await?;
                    s.close().await;
                    Ok(())
                })
                .await;
            summary("seal", &got)
        })
        .await;
        for o in &got {
            if let Some(m) = status(report, &o.machine) {
                m.seal = said(o);
            }
        }

        match report.generation {
            Some(g) => {
                run_step(journal, report, case, "pki", || self.retire(g)).await;
            }
            None => report.steps.push(StepOutcome {
                name: "pki".into(),
                ok: true,
                duration_ms: 0,
                detail: Some("no cluster generation recorded: no PKI to retire".into()),
            }),
        }

        let mut got = Vec::new();
        run_step(journal, report, case, "verify", || async {
            got = self.verify().await;
            let failed: Vec<String> = got
                .iter()
                .filter_map(|(m, r)| r.as_ref().err().map(|e| format!("{m}: {e}")))
                .collect();
            if failed.is_empty() {
                Ok(())
            } else {
                bail!("isolation does not hold: {}", failed.join("; "))
            }
        })
        .await;
        for (machine, r) in got {
            if let Some(m) = status(report, &machine) {
                m.verify = match r {
                    Ok(how) => format!("ok: {how}"),
                    Err(e) => format!("failed: {e}"),
                };
            }
        }
    }

    async fn quarantine(&self, generation: Option<u64>) -> anyhow::Result<()> {
        for m in crate::provision::machines(self.site) {
            let record = MachineRecord::now(MachineState::Quarantined, generation);
            state::put_json(
                self.store,
                &crate::state::Key::machine(&m.name),
                &record,
                Expect::Any,
            )
            .await?;
        }
        Ok(())
    }

    /// Retires generation `g` for good: the marker first (from then on
    /// `pki::load` refuses it), then its private keys leave the state;
    /// certificates stay, for the investigation.
    async fn retire(&self, g: u64) -> anyhow::Result<()> {
        let site = self.site.name.as_str();
        let marker = crate::pki::compromised_marker(site, g);
        let why = format!(
            "case {}, locked down {} by {}",
            self.opts.case,
            state::now_rfc3339(),
            self.holder.user
        );
        self.store.put(&marker, why.as_bytes(), Expect::Any).await?;
        let prefix = crate::pki::state_prefix(site, g);
        let mut deleted = 0;
        for e in self.store.list(&prefix).await? {
            if e.key.ends_with(".key") || e.key.ends_with(".conf") {
                self.store.delete(&e.key, Expect::Any).await?;
                deleted += 1;
            }
        }
        tracing::info!(
            "{site}: generation {g} retired as compromised; {deleted} private files deleted"
        );
        state::records::update_site(self.store, site, |record| {
            if !record.retired.contains(&g) {
                record.retired.push(g);
            }
        })
        .await?;
        Ok(())
    }

    async fn verify(&self) -> Vec<(String, Result<String, String>)> {
        let machines = crate::provision::machines(self.site);
        let checks = machines.iter().map(|m| async move {
            let r = node::port_closed(
                SocketAddr::new(m.ip, 22),
                Duration::from_secs(3),
                self.opts.verify_deadline,
            )
            .await;
            (m.name.to_string(), r)
        });
        futures_util::future::join_all(checks).await
    }

    /// Runs `work` on every machine over a fresh SSH session.
    async fn fan_out<F, Fut, T>(&self, work: F) -> Vec<Outcome<T>>
    where
        F: Fn(&'a Machine, Session, Task) -> Fut + Clone,
        Fut: std::future::Future<Output = anyhow::Result<T>>,
    {
        let machines = crate::provision::machines(self.site);
        let targets: Vec<job::Target> = machines
            .iter()
            .map(|m| job::Target {
                machine: m.name.to_string(),
                site: self.site.name.to_string(),
            })
            .collect();
        job::run(
            &targets,
            self.opts.parallel,
            self.reporter,
            |target, task| {
                let work = work.clone();
                let machine = machines
                    .iter()
                    .copied()
                    .find(|m| m.name.as_str() == target.machine);
                async move {
                    let machine = machine.context("machine vanished")?;
                    task.phase("connect");
                    let target = crate::ssh::Target::new(
                        machine.name.as_str(),
                        machine.ip,
                        self.keys.host.get(&machine.name).with_context(|| {
                            format!("{}: no host key in the state", machine.name)
                        })?,
                    );
                    let session = Session::connect(
                        &target,
                        &self.opts.user,
                        &self.keys.operator,
                        self.opts.timeouts,
                    )
                    .await?;
                    work(machine, session, task).await
                }
            },
        )
        .await
    }
}

/// Runs step `name` in the journal (`<case>: <name>`), records its
/// outcome; the first failure becomes the report's error. Returns
/// whether it succeeded.
async fn run_step<T, F, Fut>(
    journal: &mut Journal<'_>,
    report: &mut Report,
    case: &CaseId,
    name: &str,
    work: F,
) -> bool
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    tracing::info!("{}: lockdown: {name}", report.site);
    let start = Instant::now();
    let result = journal.step(&format!("{case}: {name}"), work).await;
    let (ok, detail) = match result {
        Ok(Some(_)) => (true, None),
        Ok(None) => (
            true,
            Some("completed in an earlier run: skipped".to_string()),
        ),
        Err(e) => (false, Some(format!("{e:#}"))),
    };
    if !ok {
        let why = detail.clone().unwrap_or_default();
        tracing::error!("{}: lockdown: {name} failed: {why}", report.site);
        report.error.get_or_insert(if why.starts_with(name) {
            why
        } else {
            format!("{name}: {why}")
        });
    }
    report.steps.push(StepOutcome {
        name: name.to_string(),
        ok,
        duration_ms: start.elapsed().as_millis(),
        detail,
    });
    ok
}

fn summary<T>(what: &str, outcomes: &[Outcome<T>]) -> anyhow::Result<()> {
    match job::summary(what, outcomes) {
        (true, _) => Ok(()),
        (false, text) => Err(anyhow::anyhow!(text)),
    }
}

fn said<T>(o: &Outcome<T>) -> String {
    match &o.error {
        None => "ok".into(),
        Some(e) => format!("failed: {e}"),
    }
}

fn status<'r>(report: &'r mut Report, machine: &str) -> Option<&'r mut MachineStatus> {
    report.machines.iter_mut().find(|m| m.machine == machine)
}
/// `release machine M`: a quarantined machine becomes `available` again
/// (commands may then power it off, wipe it and reprovision it), recorded
/// in the audit log with `reason`. Returns since when it was quarantined.
pub async fn release(
    store: &dyn StateStore,
    machine: &crate::fleet::MachineName,
    reason: &str,
) -> anyhow::Result<String> {
    use crate::state::records;
    let Some((record, rev)) = records::read_machine(store, machine).await? else {
        bail!("{machine} is not quarantined (no state recorded)");
    };
    if record.state != MachineState::Quarantined {
        bail!(
            "{machine} is not quarantined (it is {:?}); nothing to release",
            record.state
        );
    }
    let released = MachineRecord::now(MachineState::Available, None);
    records::put_machine(store, machine, &released, Expect::Revision(rev)).await?;
    state::audit(
        store,
        "release",
        json!({ "machine": machine, "reason": reason, "quarantined_since": record.since }),
    )
    .await?;
    Ok(record.since)
}
