//! A recording fake of [`Infra`] for the operations' unit tests: a small
//! model of the world (which machines are powered on, which sites are cut
//! off by `drill.isolate`) that answers as the real one would, fails where
//! a test says, and records every call with what the state said at that
//! moment (the site drained or not, its generation), so a test can assert
//! the safety rules step by step: the site was recorded drained before
//! `traffic.drain` ran, nothing was powered off before that, ….
//!
//! etcd at a site answers healthy for each control plane that is powered
//! on, unless the site is isolated or a test failed `health <site>`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard};

use crate::bootstrap::{self, Phase};
use crate::fleet::{Fleet, Machine, Role, Site};
use crate::job::Reporter;
use crate::keys::Keys;
use crate::operation::OpCtx;
use crate::pki::ClusterPki;
use crate::power::{self, Action};
use crate::state::journal::Journal;
use crate::state::memory::MemoryStore;
use crate::state::records;

use super::Infra;

/// One call, and the site's record when it was made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// `power off fra-cp-01 fra-wk-01`, `hook traffic.drain fra`,
    /// `booted fra`, `bootstrap fra`, `health ber`, `unrendered fra`.
    pub what: String,
    /// The site's `drained` and `generation` in the state at that moment.
    pub drained: Option<String>,
    pub generation: u64,
}

#[derive(Default)]
struct World {
    on: BTreeSet<String>,
    isolated: BTreeSet<String>,
    /// Event label (`power off fra-cp-02`, `hook traffic.restore fra`,
    /// `booted fra`, `bootstrap fra`, `health fra`, `unrendered fra`) → the
    /// error it fails with.
    failures: BTreeMap<String, String>,
    /// Labels of calls that succeed but change nothing (a BMC that says
    /// off while the machine runs on, an isolate hook that cuts nothing).
    no_effect: BTreeSet<String>,
    /// Machines powered on for a network boot outside their provisioning
    /// window: the boot server told them to boot locally; they never
    /// report.
    outside_window: BTreeSet<String>,
    events: Vec<Event>,
}

pub struct Fake {
    store: MemoryStore,
    world: Mutex<World>,
}

impl Fake {
    /// The world of `fleet` with every serving machine powered on; `store`
    /// is the state the operations under test write (read for each event).
    pub fn new(fleet: &Fleet, store: MemoryStore) -> Fake {
        let on = fleet
            .sites
            .iter()
            .flat_map(|s| crate::provision::machines(s))
            .map(|m| m.name.to_string())
            .collect();
        Fake {
            store,
            world: Mutex::new(World {
                on,
                ..World::default()
            }),
        }
    }

    fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes the call labelled `label` fail with `error` (every time).
    pub fn fail(&self, label: &str, error: &str) {
        self.world()
            .failures
            .insert(label.to_string(), error.to_string());
    }

    /// Makes the call labelled `label` succeed without doing anything.
    pub fn no_effect(&self, label: &str) {
        self.world().no_effect.insert(label.to_string());
    }

    /// Every call so far, in order.
    pub fn events(&self) -> Vec<Event> {
        self.world().events.clone()
    }

    /// What was done, in order, without the health looks (the gate and the
    /// bake look often).
    pub fn done(&self) -> Vec<String> {
        self.events()
            .into_iter()
            .map(|e| e.what)
            .filter(|w| !w.starts_with("health "))
            .collect()
    }

    /// The machines powered on now.
    pub fn powered_on(&self) -> BTreeSet<String> {
        self.world().on.clone()
    }

    async fn record(&self, site: &Site, what: String) -> Option<String> {
        let record = records::read_site(&self.store, &site.name)
            .await
            .ok()
            .flatten()
            .unwrap_or_default();
        let mut world = self.world();
        world.events.push(Event {
            what: what.clone(),
            drained: record.drained,
            generation: record.generation,
        });
        world.failures.get(&what).cloned()
    }

    fn failure(&self, label: &str) -> Option<String> {
        self.world().failures.get(label).cloned()
    }
}

fn label(action: Action) -> &'static str {
    match action {
        Action::Off => "power off",
        Action::PxeOnce => "power on",
        Action::On => "power on (disk)",
        Action::Cycle => "power cycle",
        Action::Status => "power status",
        Action::Disk => "boot from disk",
    }
}

#[async_trait::async_trait]
impl Infra for Fake {
    async fn power(
        &self,
        _fleet: &Fleet,
        site: &Site,
        machines: &[&Machine],
        action: Action,
        _opts: &power::Options,
    ) -> Vec<power::Outcome> {
        let names: Vec<&str> = machines.iter().map(|m| m.name.as_str()).collect();
        self.record(site, format!("{} {}", label(action), names.join(" ")))
            .await;
        if action == Action::PxeOnce {
            let now = crate::state::provisioning::unix_now();
            for m in machines {
                let open = crate::state::provisioning::read(&self.store, m.name.as_str())
                    .await
                    .ok()
                    .flatten()
                    .is_some_and(|(w, _)| w.is_open(now));
                let mut world = self.world();
                if open {
                    world.outside_window.remove(m.name.as_str());
                } else {
                    world.outside_window.insert(m.name.to_string());
                }
            }
        }
        machines
            .iter()
            .map(|m| {
                let this = format!("{} {}", label(action), m.name);
                let error = self.failure(&this);
                if error.is_none() && !self.world().no_effect.contains(&this) {
                    let mut world = self.world();
                    match action {
                        Action::Off => world.on.remove(m.name.as_str()),
                        Action::Status | Action::Disk => false,
                        _ => world.on.insert(m.name.to_string()),
                    };
                }
                power::Outcome {
                    machine: m.name.to_string(),
                    site: site.name.to_string(),
                    bmc: m.bmc.address.to_string(),
                    ok: error.is_none(),
                    state: None,
                    error,
                    duration_ms: 0,
                }
            })
            .collect()
    }

    async fn booted(
        &self,
        site: &Site,
        machines: &[&Machine],
        _keys: &Keys,
        _store: &dyn crate::state::StateStore,
        _since: u64,
        _opts: &crate::provision::Options,
        _reporter: &Reporter,
    ) -> Phase {
        let failed = self.record(site, format!("booted {}", site.name)).await;
        let on = self.powered_on();
        let outside = self.world().outside_window.clone();
        let mut outcomes = Vec::new();
        for m in machines {
            let name = m.name.as_str();
            let error = if !on.contains(name) {
                Some("no report: it is powered off".to_string())
            } else if outside.contains(name) {
                Some("no report: it network-booted outside its provisioning window".to_string())
            } else {
                if failed.is_none() {
                    // Its report closes its window, as at the boot server.
                    let _ = crate::state::provisioning::close(&self.store, name, "reported").await;
                }
                None
            };
            outcomes.push(crate::job::Outcome {
                machine: name.to_string(),
                site: site.name.to_string(),
                ok: error.is_none(),
                result: error.is_none().then_some(()),
                error,
                last_lines: Vec::new(),
                duration_ms: 0,
            });
        }
        let notes: Vec<String> = failed
            .into_iter()
            .chain(
                outcomes
                    .iter()
                    .filter(|o| !o.ok)
                    .map(|o| format!("{}: {}", o.machine, o.error.as_deref().unwrap_or(""))),
            )
            .collect();
        Phase {
            name: "boot".into(),
            ok: notes.is_empty(),
            duration_ms: 0,
            notes,
            machines: outcomes,
        }
    }

    async fn bootstrap(
        &self,
        ctx: OpCtx<'_>,
        _pki: &ClusterPki,
        opts: &bootstrap::Options,
        mut journal: Option<&mut Journal<'_>>,
    ) -> anyhow::Result<bootstrap::Report> {
        let site = ctx.site;
        let failed = self.record(site, format!("bootstrap {}", site.name)).await;
        let mut report = bootstrap::Report {
            site: site.name.to_string(),
            generation: opts.generation,
            ok: false,
            phases: Vec::new(),
            error: None,
            set_aside: Vec::new(),
        };
        // The real bootstrap's journal steps, in its order; a failure
        // fails `start etcd`.
        let mut steps = vec!["upload", "start etcd", "control plane"];
        if site.machines.iter().any(|m| m.role == Role::Worker) {
            steps.push("workers");
        }
        for name in steps {
            let error = failed.clone().filter(|_| name == "start etcd");
            let work = move || async move {
                match error {
                    Some(e) => Err(anyhow::anyhow!(e)),
                    None => Ok(()),
                }
            };
            let result = match journal.as_deref_mut() {
                Some(j) => {
                    let ran = j.step(name, work).await;
                    // As the real one: a per-machine step that left
                    // machines set aside earlier is partial.
                    if matches!(ran, Ok(Some(())))
                        && opts.leaves_some
                        && name != "start etcd"
                        && name != "control plane"
                    {
                        j.mark_partial(name, "machines were set aside before it")
                            .await?;
                    }
                    ran.map(|_| ())
                }
                None => work().await,
            };
            report.phases.push(Phase {
                name: name.into(),
                ok: result.is_ok(),
                duration_ms: 0,
                notes: Vec::new(),
                machines: Vec::new(),
            });
            if let Err(e) = result {
                report.error = Some(format!("{e:#}"));
                return Ok(report);
            }
        }
        report.ok = true;
        Ok(report)
    }

    async fn etcd_health(
        &self,
        site: &Site,
        _pki: &ClusterPki,
    ) -> anyhow::Result<(usize, Vec<String>)> {
        let failed = self.record(site, format!("health {}", site.name)).await;
        let world = self.world();
        let isolated = world.isolated.contains(site.name.as_str());
        let mut healthy = 0;
        let mut errors = Vec::new();
        for m in site
            .machines
            .iter()
            .filter(|m| m.role == Role::ControlPlane)
        {
            if let Some(e) = &failed {
                errors.push(format!("{}: {e}", m.name));
            } else if isolated {
                errors.push(format!("{}: no route to host", m.name));
            } else if world.on.contains(m.name.as_str()) {
                healthy += 1;
            } else {
                errors.push(format!("{}: connection refused", m.name));
            }
        }
        Ok((healthy, errors))
    }

    async fn hook(
        &self,
        _fleet: &Fleet,
        site: &Site,
        which: &str,
        _command: &str,
    ) -> anyhow::Result<()> {
        let this = format!("hook {which} {}", site.name);
        if let Some(e) = self.record(site, this.clone()).await {
            anyhow::bail!("{which}: {e}");
        }
        let mut world = self.world();
        if world.no_effect.contains(&this) {
            return Ok(());
        }
        match which {
            "drill.isolate" => world.isolated.insert(site.name.to_string()),
            "drill.reconnect" => world.isolated.remove(site.name.as_str()),
            _ => false,
        };
        Ok(())
    }

    async fn unrendered(
        &self,
        site: &Site,
        _next: &BTreeMap<String, Role>,
    ) -> anyhow::Result<Vec<String>> {
        match self.record(site, format!("unrendered {}", site.name)).await {
            Some(e) => anyhow::bail!("{e}"),
            None => Ok(Vec::new()),
        }
    }
}
