//! The cluster lifecycle's safety rules (DESIGN.md, "Safety rules"): what
//! must hold before a site is taken down, checked before `replace` starts
//! and again before each wave of a `rebuild`.
//!
//! Each rule is a [`Check`] with a name an operator can act on:
//! `other-sites` (no other site disrupted: its lock held, or left drained;
//! each other site has a recorded generation whose etcd answers healthy
//! over TLS), `capacity` (the healthy other sites' declared capacity
//! covers 100%), `alarms` (the `alarms.command` exits 0, the
//! `alarms.url` Alertmanager has no active alert), `window` (now is inside
//! one of `windows`). `--force --reason` overrides failing checks; each
//! override is returned so the caller records it in the journal and the
//! audit log.

pub mod blue_green;
pub mod drill;
pub mod lockdown;
pub mod plan;
pub mod rebuild;
pub mod replace;
pub mod traffic;

#[cfg(test)]
mod tests;

use std::time::Duration;

use anyhow::Context as _;

use serde::Serialize;

use crate::fleet::window;
use crate::fleet::{Fleet, Site, SiteName};
use crate::infra::Infra;
use crate::state::{self, crypt::Sealer, SiteRecord, StateStore};

/// One safety rule and whether it holds.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

/// What the checks may do.
#[derive(Clone, Debug)]
pub struct Options {
    /// Ask the other sites' etcd over the network (off when only the
    /// recorded state should be looked at).
    pub probe_health: bool,
    pub alarm_timeout: Duration,
    pub now: jiff::Timestamp,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            probe_health: true,
            alarm_timeout: Duration::from_secs(30),
            now: jiff::Timestamp::now(),
        }
    }
}

/// Every check before `site` is taken down, in a fixed order.
pub async fn check(
    fleet: &Fleet,
    site: &Site,
    store: &dyn StateStore,
    sealer: &Sealer,
    infra: &dyn Infra,
    opts: &Options,
) -> Vec<Check> {
    let (others, healthy_capacity) = other_sites(fleet, site, store, sealer, infra, opts).await;
    vec![
        others,
        capacity(fleet, site, healthy_capacity),
        alarms(fleet, opts).await,
        in_window(fleet, opts),
    ]
}

/// Site `name` of `fleet`, or an error naming the fleet.
pub fn site<'a>(fleet: &'a Fleet, name: &SiteName) -> anyhow::Result<&'a Site> {
    fleet
        .site(name.as_str())
        .with_context(|| format!("no site `{name}` in fleet {}", fleet.name))
}

/// The bake time: `arg` (`--bake`), else `rebuild.bake` in fleet.yaml,
/// else 10 minutes.
pub fn bake(fleet: &Fleet, arg: Option<&str>) -> anyhow::Result<Duration> {
    match arg.or(fleet.rebuild.as_ref().and_then(|r| r.bake.as_deref())) {
        Some(t) => crate::fleet::window::parse_duration(t),
        None => Ok(Duration::from_secs(600)),
    }
}

/// The failing checks, as one line each (`alarms: …`).
pub fn failing(checks: &[Check]) -> Vec<String> {
    checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| format!("{}: {}", c.name, c.detail))
        .collect()
}

async fn other_sites(
    fleet: &Fleet,
    site: &Site,
    store: &dyn StateStore,
    sealer: &Sealer,
    infra: &dyn Infra,
    opts: &Options,
) -> (Check, u32) {
    let mut problems = Vec::new();
    let mut healthy_capacity = 0;
    let locks = store.locks().await.unwrap_or_default();
    for other in fleet.sites.iter().filter(|s| s.name != site.name) {
        let lock_key = crate::state::Key::site(&other.name);
        if let Some(l) = locks.iter().find(|l| l.name == *lock_key) {
            problems.push(format!(
                "{} is disrupted: locked by {} since {}",
                other.name, l.holder, l.holder.since
            ));
            continue;
        }
        let record = match state::get_json::<SiteRecord>(store, &lock_key).await {
            Ok(Some((r, _))) => r,
            Ok(None) => {
                problems.push(format!("{} has no cluster generation recorded", other.name));
                continue;
            }
            Err(e) => {
                problems.push(format!("{}: reading its state: {e}", other.name));
                continue;
            }
        };
        if let Some(why) = &record.drained {
            problems.push(format!("{} is disrupted: drained ({why})", other.name));
            continue;
        }
        if opts.probe_health {
            match crate::pki::load(store, sealer, other, record.generation).await {
                Ok(None) => {
                    problems.push(format!(
                        "{}: the PKI of generation {} is not in the state",
                        other.name, record.generation
                    ));
                    continue;
                }
                Ok(Some(pki)) => match infra.etcd_health(other, &pki).await {
                    Ok((healthy, errors)) => {
                        let members = other.cluster.control_plane_count as usize;
                        if healthy * 2 <= members {
                            problems.push(format!(
                                "{} is unhealthy: etcd {healthy} of {members} members healthy ({})",
                                other.name,
                                errors.join("; ")
                            ));
                            continue;
                        }
                    }
                    Err(e) => {
                        problems.push(format!("{}: checking etcd: {e:#}", other.name));
                        continue;
                    }
                },
                Err(e) => {
                    problems.push(format!(
                        "{}: the PKI of generation {}: {e}",
                        other.name, record.generation
                    ));
                    continue;
                }
            }
        }
        healthy_capacity += other.capacity;
    }
    let check = Check {
        name: "other-sites",
        ok: problems.is_empty(),
        detail: if problems.is_empty() {
            "every other site is in service and healthy".into()
        } else {
            problems.join("; ")
        },
    };
    (check, healthy_capacity)
}

fn capacity(fleet: &Fleet, site: &Site, healthy: u32) -> Check {
    let others: Vec<String> = fleet
        .sites
        .iter()
        .filter(|s| s.name != site.name)
        .map(|s| format!("{} {}%", s.name, s.capacity))
        .collect();
    Check {
        name: "capacity",
        ok: healthy >= 100,
        detail: format!(
            "the healthy other sites carry {healthy}% of the load (declared: {}; needed: 100%)",
            others.join(", ")
        ),
    }
}

async fn alarms(fleet: &Fleet, opts: &Options) -> Check {
    let Some(alarms) = &fleet.alarms else {
        return Check {
            name: "alarms",
            ok: true,
            detail: "no alarm source configured (alarms.command, alarms.url)".into(),
        };
    };
    let mut firing = Vec::new();
    if let Some(command) = &alarms.command {
        let run = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .current_dir(&fleet.root)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        match tokio::time::timeout(opts.alarm_timeout, run).await {
            Ok(Ok(out)) if out.status.success() => {}
            Ok(Ok(out)) => {
                let said = String::from_utf8_lossy(&out.stdout);
                let said = said.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
                firing.push(format!(
                    "alarms.command `{command}` exited {} (firing){}",
                    out.status
                        .code()
                        .map_or("by signal".into(), |c| c.to_string()),
                    if said.is_empty() {
                        String::new()
                    } else {
                        format!(": {said}")
                    }
                ));
            }
            Ok(Err(e)) => firing.push(format!(
                "alarms.command `{command}`: {e} (treated as firing)"
            )),
            Err(_) => firing.push(format!(
                "alarms.command `{command}` did not finish within {} s (treated as firing)",
                opts.alarm_timeout.as_secs()
            )),
        }
    }
    if let Some(url) = &alarms.url {
        match active_alerts(url, opts.alarm_timeout).await {
            Ok(names) if names.is_empty() => {}
            Ok(names) => firing.push(format!(
                "{} active alert(s) at {url}: {}",
                names.len(),
                names.join(", ")
            )),
            Err(e) => firing.push(format!("alarms.url {url}: {e:#} (treated as firing)")),
        }
    }
    Check {
        name: "alarms",
        ok: firing.is_empty(),
        detail: if firing.is_empty() {
            "no alarm firing".into()
        } else {
            firing.join("; ")
        },
    }
}

/// The names of the active (not silenced, not inhibited) alerts of an
/// Alertmanager-compatible endpoint (`GET /api/v2/alerts`).
async fn active_alerts(base: &url::Url, timeout: Duration) -> anyhow::Result<Vec<String>> {
    let url = format!(
        "{}/api/v2/alerts?active=true&silenced=false&inhibited=false",
        base.as_str().trim_end_matches('/')
    );
    let client = reqwest::Client::builder().timeout(timeout).build()?;
    let resp = client.get(&url).send().await?.error_for_status()?;
    let alerts: serde_json::Value = serde_json::from_slice(&resp.bytes().await?)?;
    let list = alerts
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("expected a JSON array of alerts"))?;
    Ok(list
        .iter()
        .filter(|a| a["status"]["state"].as_str().is_none_or(|s| s == "active"))
        .map(|a| {
            a["labels"]["alertname"]
                .as_str()
                .unwrap_or("unnamed")
                .to_string()
        })
        .collect())
}

fn in_window(fleet: &Fleet, opts: &Options) -> Check {
    let mut windows = Vec::new();
    for text in &fleet.windows {
        match text.parse::<window::Window>() {
            Ok(w) => windows.push(w),
            Err(e) => {
                return Check {
                    name: "window",
                    ok: false,
                    detail: e,
                }
            }
        }
    }
    let now = opts.now.strftime("%Y-%m-%d %H:%M UTC").to_string();
    if windows.is_empty() {
        return Check {
            name: "window",
            ok: true,
            detail: "no windows configured: any time".into(),
        };
    }
    let ok = window::open(&windows, opts.now);
    Check {
        name: "window",
        ok,
        detail: format!(
            "{} {} ({})",
            now,
            if ok {
                "is inside"
            } else {
                "is outside every window"
            },
            fleet.windows.join("; ")
        ),
    }
}

/// Refuses when any of `machines` is quarantined (a suspected compromise
/// under investigation): no command powers off, wipes or reprovisions such
/// a machine until `metalherd release machine M --reason "…"`.
pub async fn refuse_quarantined(
    store: &dyn StateStore,
    machines: &[&str],
    what: &str,
) -> anyhow::Result<()> {
    let mut held = Vec::new();
    for m in machines {
        if let Some((r, _)) =
            state::get_json::<state::MachineRecord>(store, &crate::state::Key::machine(m)).await?
        {
            if r.state == state::MachineState::Quarantined {
                held.push(format!("{m} (since {})", r.since));
            }
        }
    }
    if !held.is_empty() {
        anyhow::bail!(
            "{what} refused: quarantined machine(s) {}; they are never powered off, wiped or \
             reprovisioned until `metalherd release machine M --reason \"…\"`",
            held.join(", ")
        );
    }
    Ok(())
}
