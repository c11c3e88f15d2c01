//! Bootstrap of one site's control plane over SSH, each phase verified
//! before the next begins:
//!
//! 0. `connect`: every node of the site answers with its pinned host key
//!    (before anything is uploaded anywhere);
//! 1. `upload`: every node of the site gets its part of the generation's
//!    PKI (private keys never travel in Ignition), the control planes also
//!    their etcd configuration and static-pod manifests, the workers their
//!    kubelet kubeconfig;
//! 2. `start etcd`: `systemctl start` of the unit rendered into each
//!    control plane's Ignition;
//! 3. `etcd quorum`: metalherd itself asks every member over TLS, with the
//!    generation's CA and its own client certificate, until all report
//!    healthy and the member list holds every control plane;
//! 4. `control plane`: where the kubelet binary exists, start the kubelet
//!    (which runs the static pods) and wait for the API server's `/readyz`
//!    over TLS; where it does not, say so plainly;
//! 5. `workers`: start their kubelets where the binary exists.
//!
//! Each phase fans out with [`crate::job`]. A failed control plane stops
//! the bootstrap, and the error names the phase and the machine; a failed
//! worker is set aside ([`SetAside`]: its phase and cause) and the others
//! go on, so one dead worker of hundreds does not hold up its site. A
//! journaled phase that left machines behind is recorded `partial` and
//! runs again, for those machines, in the next run.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;

use crate::fleet::{Fleet, Machine, Role, Site};
use crate::job::{self, Outcome, Reporter, Target, Task};
use crate::keys::Keys;
use crate::pki::ClusterPki;
use crate::render::manifests::{self, NodeFile};
use crate::ssh::{Session, Timeouts};
use crate::state::journal::Journal;

/// How a bootstrap runs.
#[derive(Clone, Debug)]
pub struct Options {
    pub generation: u64,
    /// The SSH user (`core` on Flatcar and FCOS).
    pub user: String,
    pub timeouts: Timeouts,
    /// Machines worked on at once in the site.
    pub parallel: usize,
    /// How long to wait for etcd quorum and for `/readyz`.
    pub ready_timeout: Duration,
    /// Machines not acted on: done in an earlier run of the operation,
    /// or set aside earlier in this one.
    pub skip: BTreeSet<String>,
    /// Whether machines of this generation were set aside earlier in this
    /// run: the per-machine phases then leave them (journaled `partial`).
    pub leaves_some: bool,
}

/// A machine that failed while the rest of its site went on: the step it
/// failed at and why. The next run of the operation finishes it.
#[derive(Clone, Debug, Serialize)]
pub struct SetAside {
    pub machine: String,
    pub step: String,
    pub error: String,
}

/// One phase's result, for the summary and `--output json`.
#[derive(Debug, Serialize)]
pub struct Phase {
    pub name: String,
    pub ok: bool,
    pub duration_ms: u128,
    /// What the phase wants the operator to know (skips, counts).
    pub notes: Vec<String>,
    pub machines: Vec<Outcome<()>>,
}

/// What a bootstrap did.
#[derive(Debug, Serialize)]
pub struct Report {
    pub site: String,
    pub generation: u64,
    pub ok: bool,
    pub phases: Vec<Phase>,
    pub error: Option<String>,
    /// Workers set aside (each once, at the phase it failed in).
    pub set_aside: Vec<SetAside>,
}

/// Why a phase failed: the phase and its summary.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PhaseFailed(pub String);

struct Ctx<'a> {
    site: &'a Site,
    keys: &'a Keys,
    pki: &'a ClusterPki,
    opts: &'a Options,
    reporter: &'a Reporter,
    etcd_env: std::collections::HashMap<String, String>,
    manifests: std::collections::HashMap<String, Vec<NodeFile>>,
}

/// Bootstraps `site` with `pki` (the generation's PKI). Always returns a
/// report; `report.ok` says whether every phase passed.
pub async fn bootstrap_site(
    fleet: &Fleet,
    site: &Site,
    keys: &Keys,
    pki: &ClusterPki,
    opts: &Options,
    reporter: &Reporter,
    journal: Option<&mut Journal<'_>>,
) -> anyhow::Result<Report> {
    let tera = crate::render::load_templates(&fleet.root)?;
    let site_ctx = crate::render::context::site_context(fleet, site, opts.generation);
    let mut etcd_env = std::collections::HashMap::new();
    let mut manifests = std::collections::HashMap::new();
    for m in control_planes(site) {
        let ctx = crate::render::context::machine_context(&site_ctx, site, m);
        let env = tera
            .render("templates/etcd/etcd.env", &ctx)
            .with_context(|| format!("rendering templates/etcd/etcd.env for {}", m.name))?;
        etcd_env.insert(m.name.to_string(), env);
        manifests.insert(
            m.name.to_string(),
            manifests::control_plane_manifests(fleet, site, m, opts.generation)?,
        );
    }
    let ctx = Ctx {
        site,
        keys,
        pki,
        opts,
        reporter,
        etcd_env,
        manifests,
    };
    let mut report = Report {
        site: site.name.to_string(),
        generation: opts.generation,
        ok: false,
        phases: Vec::new(),
        error: None,
        set_aside: Vec::new(),
    };
    if let Err(e) = run_phases(&ctx, &mut report, journal).await {
        report.error = Some(format!("{e:#}"));
        return Ok(report);
    }
    report.ok = true;
    Ok(report)
}

fn control_planes(site: &Site) -> impl Iterator<Item = &Machine> {
    site.machines
        .iter()
        .filter(|m| m.role == Role::ControlPlane)
}

fn targets<'a>(site: &Site, machines: impl Iterator<Item = &'a Machine>) -> Vec<Target> {
    machines
        .map(|m| Target {
            machine: m.name.to_string(),
            site: site.name.to_string(),
        })
        .collect()
}

/// Runs `work` as journal step `name` (skipped when an earlier run of
/// the operation completed it), or plainly without a journal. Returns
/// whether it ran.
async fn step<Fut>(
    journal: &mut Option<&mut Journal<'_>>,
    name: &str,
    work: Fut,
) -> anyhow::Result<bool>
where
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    match journal {
        Some(j) => Ok(j.step(name, || work).await?.is_some()),
        None => work.await.map(|()| true),
    }
}

/// After per-machine step `name` ran: when it left machines of the
/// generation behind (set aside in this run), it is journaled `partial`,
/// so the next run runs it again for them.
async fn left_behind(
    journal: &mut Option<&mut Journal<'_>>,
    ctx: &Ctx<'_>,
    report: &Report,
    name: &str,
) -> anyhow::Result<()> {
    let left = report.set_aside.len();
    if let (Some(j), true) = (journal, ctx.opts.leaves_some || left > 0) {
        let why = if left > 0 {
            format!("{left} machine(s) set aside in the bootstrap")
        } else {
            "machines were set aside before it".to_string()
        };
        j.mark_partial(name, &why).await?;
    }
    Ok(())
}

/// `machines` without those skipped or set aside so far.
fn acted_on<'a>(ctx: &Ctx<'_>, report: &Report, machines: &[&'a Machine]) -> Vec<&'a Machine> {
    machines
        .iter()
        .copied()
        .filter(|m| {
            !ctx.opts.skip.contains(m.name.as_str())
                && !report
                    .set_aside
                    .iter()
                    .any(|a| a.machine == m.name.as_str())
        })
        .collect()
}

fn skipped(report: &mut Report, name: &str) {
    report.phases.push(Phase {
        name: name.to_string(),
        ok: true,
        duration_ms: 0,
        notes: vec!["completed in an earlier run: skipped".into()],
        machines: Vec::new(),
    });
}

async fn run_phases(
    ctx: &Ctx<'_>,
    report: &mut Report,
    mut journal: Option<&mut Journal<'_>>,
) -> anyhow::Result<()> {
    let site = ctx.site;
    let nodes: Vec<&Machine> = site
        .machines
        .iter()
        .filter(|m| m.role != Role::Spare)
        .collect();
    let cps: Vec<&Machine> = control_planes(site).collect();
    let workers: Vec<&Machine> = site
        .machines
        .iter()
        .filter(|m| m.role == Role::Worker)
        .collect();
    let j = &mut journal;

    // Every node's pinned host key is checked before anything is
    // uploaded anywhere: a mismatch on one node leaves all of them as
    // they were. (Never skipped: it is cheap and proves who we talk to.)
    let list = acted_on(ctx, report, &nodes);
    fan_out(ctx, report, "connect", &list, |_, s, _| async move {
        s.close().await;
        Ok(())
    })
    .await?;
    let list = acted_on(ctx, report, &nodes);
    let work = fan_out(ctx, report, "upload", &list, |m, s, t| upload(ctx, m, s, t));
    if step(j, "upload", async { work.await.map(|_| ()) }).await? {
        left_behind(j, ctx, report, "upload").await?;
    } else {
        skipped(report, "upload");
    }
    let work = fan_out(ctx, report, "start etcd", &cps, |_, s, t| async move {
        t.phase("systemctl start etcd.service");
        s.run(
            "start etcd",
            "sudo systemctl daemon-reload && sudo systemctl start --no-block etcd.service",
            None,
        )
        .await?;
        Ok(())
    });
    if !step(j, "start etcd", async { work.await.map(|_| ()) }).await? {
        skipped(report, "start etcd");
    }
    // Quorum is checked on every run: later steps need it now.
    wait_quorum(ctx, report, &cps).await?;
    let work = control_plane(ctx, report, &cps);
    if !step(j, "control plane", work).await? {
        skipped(report, "control plane");
    }
    let workers = acted_on(ctx, report, &workers);
    if !workers.is_empty() {
        let work = start_workers(ctx, report, &workers);
        if step(j, "workers", work).await? {
            left_behind(j, ctx, report, "workers").await?;
        } else {
            skipped(report, "workers");
        }
    }
    Ok(())
}

async fn control_plane(ctx: &Ctx<'_>, report: &mut Report, cps: &[&Machine]) -> anyhow::Result<()> {
    let cp_kubelets = start_kubelets(ctx, report, "control plane", cps).await?;
    if cp_kubelets.is_empty() {
        note(
            report,
            "kubelet is not installed on any control plane (/usr/bin/kubelet: the fleet delivers no \
             pinned kubernetes extension to them): the API server was not started; etcd and the \
             rendered manifests are in place",
        );
        Ok(())
    } else {
        readyz_phase(ctx, report, &cp_kubelets).await
    }
}

async fn start_workers(
    ctx: &Ctx<'_>,
    report: &mut Report,
    workers: &[&Machine],
) -> anyhow::Result<()> {
    let started = start_kubelets(ctx, report, "workers", workers).await?;
    if started.len() < workers.len() {
        note(
            report,
            &format!(
                "kubelet is not installed on {} of {} workers; their kubeconfigs are in place",
                workers.len() - started.len(),
                workers.len()
            ),
        );
    }
    Ok(())
}

fn note(report: &mut Report, text: &str) {
    tracing::warn!("{text}");
    if let Some(p) = report.phases.last_mut() {
        p.notes.push(text.to_string());
    }
}

/// Runs `work` on `machines` over fresh SSH sessions and records the
/// phase; fails if any machine failed.
async fn fan_out<'a, F, Fut, T>(
    ctx: &'a Ctx<'a>,
    report: &mut Report,
    name: &str,
    machines: &[&'a Machine],
    work: F,
) -> anyhow::Result<Vec<Outcome<T>>>
where
    F: Fn(&'a Machine, Session, Task) -> Fut + Clone,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
    T: Serialize,
{
    tracing::info!("{}: {name}", ctx.site.name);
    let start = Instant::now();
    let list = targets(ctx.site, machines.iter().copied());
    let outcomes = job::run(&list, ctx.opts.parallel, ctx.reporter, |target, task| {
        let work = work.clone();
        let machine = machines
            .iter()
            .copied()
            .find(|m| m.name.as_str() == target.machine);
        async move {
            let machine = machine.context("machine vanished")?;
            let session = connect(ctx, machine, &task).await?;
            let result = work(machine, session, task).await;
            result
        }
    })
    .await;
    // A failed worker is set aside and the phase goes on without it; a
    // failed control plane fails the phase, and so does a host key
    // mismatch anywhere (something else answers for a machine).
    let mismatch = outcomes.iter().any(|o| {
        o.error
            .as_deref()
            .is_some_and(|e| e.contains("host key mismatch"))
    });
    let set_aside = |o: &Outcome<T>| !o.ok && !mismatch && is_worker(machines, &o.machine);
    let fatal: Vec<&Outcome<T>> = outcomes.iter().filter(|o| !o.ok && !set_aside(o)).collect();
    let mut notes = Vec::new();
    let aside: Vec<SetAside> = outcomes
        .iter()
        .filter(|o| set_aside(o))
        .map(|o| SetAside {
            machine: o.machine.clone(),
            step: name.to_string(),
            error: o.error.clone().unwrap_or_default(),
        })
        .collect();
    if !aside.is_empty() {
        notes.push(format!(
            "{} of {} set aside (workers; listed at the end)",
            aside.len(),
            outcomes.len()
        ));
    }
    report.set_aside.extend(aside);
    let ok = fatal.is_empty();
    let summary = if ok {
        String::new()
    } else {
        let failed: Vec<Outcome<T>> = fatal
            .iter()
            .map(|o| Outcome {
                machine: o.machine.clone(),
                site: o.site.clone(),
                ok: false,
                result: None,
                error: o.error.clone(),
                last_lines: o.last_lines.clone(),
                duration_ms: o.duration_ms,
            })
            .collect();
        job::summary(name, &failed).1
    };
    report.phases.push(Phase {
        name: name.to_string(),
        ok,
        duration_ms: start.elapsed().as_millis(),
        notes,
        machines: outcomes
            .iter()
            .map(|o| Outcome {
                machine: o.machine.clone(),
                site: o.site.clone(),
                ok: o.ok,
                result: None,
                error: o.error.clone(),
                last_lines: o.last_lines.clone(),
                duration_ms: o.duration_ms,
            })
            .collect(),
    });
    if !ok {
        return Err(PhaseFailed(summary).into());
    }
    Ok(outcomes)
}

fn is_worker(machines: &[&Machine], name: &str) -> bool {
    machines
        .iter()
        .any(|m| m.name.as_str() == name && m.role == Role::Worker)
}

async fn connect(ctx: &Ctx<'_>, machine: &Machine, task: &Task) -> anyhow::Result<Session> {
    task.phase("connect");
    let host_key = ctx
        .keys
        .host
        .get(&machine.name)
        .with_context(|| format!("{}: no host key in the state", machine.name))?;
    let target = crate::ssh::Target::new(machine.name.as_str(), machine.ip, host_key);
    Ok(Session::connect(
        &target,
        &ctx.opts.user,
        &ctx.keys.operator,
        ctx.opts.timeouts,
    )
    .await?)
}

async fn upload(ctx: &Ctx<'_>, m: &Machine, s: Session, task: Task) -> anyhow::Result<()> {
    let mut files = manifests::pki_files(ctx.pki, m);
    if let Some(env) = ctx.etcd_env.get(m.name.as_str()) {
        files.push(NodeFile {
            path: "/etc/etcd/etcd.env".into(),
            contents: zeroize::Zeroizing::new(env.clone()),
            mode: 0o644,
        });
    }
    if let Some(list) = ctx.manifests.get(m.name.as_str()) {
        files.extend(list.iter().map(|f| NodeFile {
            path: f.path.clone(),
            contents: f.contents.clone(),
            mode: f.mode,
        }));
    }
    task.phase(&format!("upload {} files", files.len()));
    let batch: Vec<(&str, &[u8], u32)> = files
        .iter()
        .map(|f| (f.path.as_str(), f.contents.as_bytes(), f.mode))
        .collect();
    s.upload_all(&batch).await?;
    task.output(&format!("uploaded {} files", files.len()));
    s.close().await;
    Ok(())
}

/// Starts the kubelet on `machines` where its binary exists; returns the
/// machines where it was started.
async fn start_kubelets<'a>(
    ctx: &'a Ctx<'a>,
    report: &mut Report,
    name: &str,
    machines: &[&'a Machine],
) -> anyhow::Result<Vec<&'a Machine>> {
    let outcomes = fan_out(ctx, report, name, machines, |_, s, t| async move {
        t.phase("look for /usr/bin/kubelet");
        let found = s
            .exec("look for kubelet", "test -x /usr/bin/kubelet", None)
            .await?
            .success();
        if found {
            t.phase("systemctl start kubelet.service");
            s.run(
                "start kubelet",
                "sudo systemctl daemon-reload && sudo systemctl start --no-block kubelet.service",
                None,
            )
            .await?;
        } else {
            t.output("kubelet not installed (/usr/bin/kubelet): not started");
        }
        s.close().await;
        Ok(found)
    })
    .await?;
    Ok(machines
        .iter()
        .copied()
        .zip(outcomes)
        .filter(|(_, o)| o.result == Some(true))
        .map(|(m, _)| m)
        .collect())
}

/// An HTTPS client that trusts only `ca_pem` and presents `identity_pem`
/// (certificate and key) when given.
pub fn tls_client(ca_pem: &str, identity_pem: Option<String>) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes())?)
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10));
    if let Some(pem) = identity_pem {
        let identity = reqwest::Identity::from_pem(pem.as_bytes())
            .context("loading the client certificate")?;
        builder = builder.identity(identity);
    }
    Ok(builder.build()?)
}

/// The health of one etcd member as metalherd saw it.
#[derive(Debug)]
struct MemberHealth {
    healthy: bool,
    members: Option<Vec<String>>,
    error: Option<String>,
}

async fn member_health(client: &reqwest::Client, ip: IpAddr) -> MemberHealth {
    let base = match ip {
        IpAddr::V4(v4) => format!("https://{v4}:2379"),
        IpAddr::V6(v6) => format!("https://[{v6}]:2379"),
    };
    let health = async {
        let v = client
            .get(format!("{base}/health"))
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await?;
        let v: serde_json::Value = serde_json::from_slice(&v)?;
        anyhow::Ok(v.get("health").and_then(|h| h.as_str()) == Some("true"))
    };
    let members = async {
        let v = client
            .post(format!("{base}/v3/cluster/member/list"))
            .body("{}")
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await?;
        let v: serde_json::Value = serde_json::from_slice(&v)?;
        let names = v
            .get("members")
            .and_then(|m| m.as_array())
            .map(|list| {
                list.iter()
                    .map(|m| {
                        m.get("name")
                            .and_then(|n| n.as_str())
                            .unwrap_or("")
                            .to_string()
                    })
                    .collect()
            })
            .unwrap_or_default();
        anyhow::Ok(names)
    };
    match tokio::join!(health, members) {
        (Ok(healthy), Ok(names)) => MemberHealth {
            healthy,
            members: Some(names),
            error: (!healthy).then(|| "reports unhealthy".into()),
        },
        (Err(e), _) | (_, Err(e)) => MemberHealth {
            healthy: false,
            members: None,
            error: Some(format!("{e:#}")),
        },
    }
}

/// One look at a site's etcd, as the blockers of a site operation need
/// it: how many of its control planes' members answer healthy over TLS
/// with the generation's CA and client certificate, and the errors of the
/// others (`machine: error`).
pub async fn etcd_health(site: &Site, pki: &ClusterPki) -> anyhow::Result<(usize, Vec<String>)> {
    let ca = pki.get("etcd/ca.crt").context("the PKI has no etcd CA")?;
    let identity = format!(
        "{}{}",
        pki.get("etcd/client.crt").context("no etcd client cert")?,
        pki.get("etcd/client.key").context("no etcd client key")?
    );
    let client = tls_client(ca, Some(identity))?;
    let cps: Vec<&Machine> = control_planes(site).collect();
    let checks = cps.iter().map(|m| member_health(&client, m.ip));
    let results = futures_util::future::join_all(checks).await;
    let mut healthy = 0;
    let mut errors = Vec::new();
    for (m, h) in cps.iter().zip(results) {
        if h.healthy {
            healthy += 1;
        } else {
            errors.push(format!("{}: {}", m.name, h.error.unwrap_or_default()));
        }
    }
    Ok((healthy, errors))
}

/// Polls every control plane's etcd until all are healthy and each lists
/// every control plane as a started member.
async fn wait_quorum(ctx: &Ctx<'_>, report: &mut Report, cps: &[&Machine]) -> anyhow::Result<()> {
    let name = "etcd quorum";
    tracing::info!("{}: {name}", ctx.site.name);
    let start = Instant::now();
    let ca = ctx
        .pki
        .get("etcd/ca.crt")
        .context("the PKI has no etcd CA")?;
    let identity = format!(
        "{}{}",
        ctx.pki
            .get("etcd/client.crt")
            .context("no etcd client cert")?,
        ctx.pki
            .get("etcd/client.key")
            .context("no etcd client key")?
    );
    let client = tls_client(ca, Some(identity))?;
    let want: Vec<String> = cps.iter().map(|m| m.name.to_string()).collect();
    let mut last: Vec<String>;
    let ok = loop {
        let checks =
            futures_util::future::join_all(cps.iter().map(|m| member_health(&client, m.ip))).await;
        last = cps
            .iter()
            .zip(&checks)
            .filter_map(|(m, h)| {
                let complete = h.members.as_ref().is_some_and(|names| {
                    want.iter().all(|w| names.contains(w)) && names.len() == want.len()
                });
                match (&h.error, h.healthy && complete) {
                    (_, true) => None,
                    (Some(e), _) => Some(format!("{}: {e}", m.name)),
                    (None, false) => Some(format!(
                        "{}: healthy, but the member list is {:?}",
                        m.name,
                        h.members.clone().unwrap_or_default()
                    )),
                }
            })
            .collect();
        if last.is_empty() {
            break true;
        }
        if start.elapsed() >= ctx.opts.ready_timeout {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    report.phases.push(Phase {
        name: name.into(),
        ok,
        duration_ms: start.elapsed().as_millis(),
        notes: if ok {
            vec![format!(
                "{} of {} members healthy over TLS",
                cps.len(),
                cps.len()
            )]
        } else {
            last.clone()
        },
        machines: Vec::new(),
    });
    if ok {
        tracing::info!(
            "{}: etcd quorum: all {} members healthy",
            ctx.site.name,
            cps.len()
        );
        Ok(())
    } else {
        Err(PhaseFailed(format!(
            "etcd quorum: not healthy after {}s: {}",
            ctx.opts.ready_timeout.as_secs(),
            last.join("; ")
        ))
        .into())
    }
}

/// Waits until `url` answers 200 `ok` over TLS verified with `ca_pem`.
pub async fn wait_readyz(url: &str, ca_pem: &str, timeout: Duration) -> anyhow::Result<()> {
    let client = tls_client(ca_pem, None)?;
    let start = Instant::now();
    loop {
        let last = match client.get(url).send().await {
            Ok(r) if r.status().is_success() => {
                let body = r.text().await.unwrap_or_default();
                if body.trim() == "ok" {
                    return Ok(());
                }
                format!("answered {body:?}")
            }
            Ok(r) => format!("answered {}", r.status()),
            Err(e) => crate::errfmt::chain(&e),
        };
        if start.elapsed() >= timeout {
            anyhow::bail!("{url} not ready after {}s: {last}", timeout.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn readyz_failures(ctx: &Ctx<'_>, cps: &[&Machine]) -> anyhow::Result<Vec<String>> {
    let ca = ctx
        .pki
        .get("kubernetes/ca.crt")
        .context("the PKI has no Kubernetes CA")?;
    let port = ctx.site.cluster.api_endpoint.port;
    let checks = cps.iter().map(|m| {
        let url = match m.ip {
            IpAddr::V4(v4) => format!("https://{v4}:{port}/readyz"),
            IpAddr::V6(v6) => format!("https://[{v6}]:{port}/readyz"),
        };
        async move { wait_readyz(&url, ca, ctx.opts.ready_timeout).await }
    });
    let results = futures_util::future::join_all(checks).await;
    Ok(results
        .into_iter()
        .filter_map(|r| r.err().map(|e| format!("{e:#}")))
        .collect())
}

async fn readyz_phase(ctx: &Ctx<'_>, report: &mut Report, cps: &[&Machine]) -> anyhow::Result<()> {
    let start = Instant::now();
    let failures = readyz_failures(ctx, cps).await?;
    let ok = failures.is_empty();
    report.phases.push(Phase {
        name: "api server ready".into(),
        ok,
        duration_ms: start.elapsed().as_millis(),
        notes: failures.clone(),
        machines: Vec::new(),
    });
    if ok {
        Ok(())
    } else {
        Err(PhaseFailed(format!("api server ready: {}", failures.join("; "))).into())
    }
}
