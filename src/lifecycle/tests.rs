//! The operations that take a site down (replace in place and blue-green,
//! rebuild's waves, drill), each driven through its happy path and its
//! failure points on a [`MemoryStore`] with the recording fake of
//! [`crate::infra::fake`]: no root, no VMs, no network. The safety rules
//! are asserted step by step: who was drained when a hook ran or a
//! machine went off, what the state records after a failure, which hooks
//! ran and which did not, that no lock is left. The real programs' side
//! of the same operations is in `tests/it/` and the lab.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::drill::{self, Drill};
use super::rebuild::{self, Status};
use super::replace::{self, How, ReplaceReport};
use crate::fleet::{Fleet, Role};
use crate::infra::fake::Fake;
use crate::job::Reporter;
use crate::keys::{KeyPair, Keys};
use crate::operation::{Env, Outcome};
use crate::provision::Tuning;
use crate::state::crypt::Sealer;
use crate::state::journal::{self, OpRecord, Status as JournalStatus};
use crate::state::memory::MemoryStore;
use crate::state::{provisioning, records, Key, MachineState, StateStore};

/// The example fleet, its three sites running generation 1 (PKI in the
/// state, every serving machine on and healthy), fra with spares enough
/// for a blue-green replace.
struct World {
    fleet: Fleet,
    store: MemoryStore,
    fake: Arc<Fake>,
    env: Env,
    keys: Keys,
    _dir: tempfile::TempDir,
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    for (path, text) in crate::example::FILES {
        let target = dir.path().join(path);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::write(&target, text).unwrap();
    }
    let mut fleet = crate::fleet::load(dir.path()).unwrap();
    let fra = fleet
        .sites
        .iter_mut()
        .find(|s| s.name.as_str() == "fra")
        .unwrap();
    let serving = crate::provision::machines(fra).len();
    let spares = fra
        .machines
        .iter()
        .filter(|m| m.role == Role::Spare)
        .count();
    let template = fra.machines[0].clone();
    for i in spares..serving {
        let mut m = template.clone();
        m.name = format!("fra-spare-{:02}", i + 10).parse().unwrap();
        m.role = Role::Spare;
        fra.machines.push(m);
    }
    fleet.drill = Some(crate::fleet::Drill {
        isolate: "scripts/cut {site}".into(),
        reconnect: "scripts/uncut {site}".into(),
    });
    let store = MemoryStore::new();
    let sealer = Sealer::none();
    block(async {
        for site in &fleet.sites {
            crate::pki::load_or_create(&store, &sealer, site, 1, 90)
                .await
                .unwrap();
            crate::provision::record(&store, site, 1, &Default::default())
                .await
                .unwrap();
        }
    });
    let fake = Arc::new(Fake::new(&fleet, store.clone()));
    let env = Env {
        store: Arc::new(store.clone()),
        sealer,
        infra: fake.clone(),
        io: Default::default(),
    };
    let keys = Keys {
        host: HashMap::new(),
        operator: KeyPair::from_seed([7; 32], "metalherd@test"),
    };
    World {
        fleet,
        store,
        fake,
        env,
        keys,
        _dir: dir,
    }
}

fn block<T>(f: impl std::future::Future<Output = T>) -> T {
    // Paused time: the operations' waits (the boot server rendering new
    // roles, etcd going away) take no wall time.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
        .block_on(f)
}

fn how() -> How {
    How {
        force: false,
        reason: None,
        validity_days: 90,
        blue_green: false,
        bake: Duration::ZERO,
        tuning: Tuning::default(),
    }
}

impl World {
    fn replace(&self, site: &str, how: &How) -> Outcome<ReplaceReport> {
        let site = self.fleet.site(site).unwrap();
        let reporter = Reporter::plain();
        block(replace::replace(
            &self.env,
            &self.fleet,
            &self.keys,
            site,
            how,
            &reporter,
        ))
        .unwrap()
    }

    fn ran(&self, site: &str, how: &How) -> ReplaceReport {
        match self.replace(site, how) {
            Outcome::Ran(report) => report,
            Outcome::Refused(checks) => panic!("refused: {checks:?}"),
        }
    }

    fn site(&self, site: &str) -> records::SiteRecord {
        block(records::read_site(&self.store, site))
            .unwrap()
            .unwrap()
    }

    fn journal(&self, kind: &str, site: &str) -> Option<OpRecord> {
        block(journal::latest(&self.store, kind, &Key::target_site(site))).unwrap()
    }

    fn steps(&self, kind: &str, site: &str) -> Vec<(String, bool)> {
        self.journal(kind, site)
            .unwrap()
            .steps
            .into_iter()
            .map(|s| (s.name.clone(), s.completed()))
            .collect()
    }

    fn audit(&self) -> Vec<serde_json::Value> {
        block(self.store.list(Key::audit_log().as_str()))
            .unwrap()
            .into_iter()
            .map(|e| serde_json::from_slice(&e.value).unwrap())
            .collect()
    }

    fn no_locks(&self) {
        assert!(
            block(self.store.locks()).unwrap().is_empty(),
            "a lock is left"
        );
    }

    /// The fake's events whose text starts with `what`.
    fn when(&self, what: &str) -> Vec<crate::infra::fake::Event> {
        self.fake
            .events()
            .into_iter()
            .filter(|e| e.what.starts_with(what))
            .collect()
    }

    fn names(&self, site: &str, role: Option<Role>) -> Vec<String> {
        self.fleet
            .site(site)
            .unwrap()
            .machines
            .iter()
            .filter(|m| role.map_or(m.role != Role::Spare, |r| m.role == r))
            .map(|m| m.name.to_string())
            .collect()
    }
}

fn plan_names(steps: &[super::plan::Step]) -> Vec<String> {
    steps.iter().map(|s| s.step.to_string()).collect()
}

#[test]
fn an_in_place_replace_drains_before_its_hook_and_restores_after_health() {
    let w = world();
    let report = w.ran("fra", &how());
    assert!(report.report.ok, "{:?}", report.report.error);
    assert_eq!(
        (report.from_generation, report.report.generation),
        (Some(1), 2)
    );

    // The journal's steps are plan's, all completed.
    let fra = w.fleet.site("fra").unwrap();
    let plan = super::plan::replace(&w.fleet, fra, Some(1), 2, Duration::ZERO);
    let steps = w.steps("replace", "fra");
    assert_eq!(
        steps.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
        plan_names(&plan)
    );
    assert!(steps.iter().all(|(_, ok)| *ok));

    // What was done to the world, in order.
    let serving = w.names("fra", None).join(" ");
    assert_eq!(
        w.fake.done(),
        [
            "hook traffic.drain fra".to_string(),
            format!("power off {serving}"),
            format!("power on {serving}"),
            "booted fra".into(),
            // Each machine installed to its disk now boots from it.
            format!("boot from disk {serving}"),
            "bootstrap fra".into(),
            "hook traffic.restore fra".into(),
        ]
    );
    // The site was recorded drained before traffic.drain ran and stayed
    // so until after traffic.restore; generation 2 was recorded before
    // the health looks that let traffic back.
    for what in [
        "hook traffic.drain",
        "power off",
        "bootstrap",
        "hook traffic.restore",
    ] {
        for e in w.when(what) {
            assert_eq!(
                e.drained.as_deref(),
                Some("replace to generation 2"),
                "{what}"
            );
        }
    }
    assert_eq!(w.when("bootstrap")[0].generation, 1);
    assert_eq!(w.when("hook traffic.restore")[0].generation, 2);
    assert!(w.when("health fra").iter().all(|e| e.generation == 2));

    let record = w.site("fra");
    assert_eq!((record.generation, record.retired.clone()), (2, vec![1]));
    assert_eq!(record.drained, None);
    for m in w.names("fra", None) {
        let (machine, _) = block(records::read_machine(&w.store, &m)).unwrap().unwrap();
        assert_eq!(
            (machine.state, machine.generation),
            (MachineState::Ready, Some(2))
        );
    }
    let audit = w.audit();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0]["action"], "replace");
    assert_eq!(audit[0]["detail"]["ok"], true);
    w.no_locks();
    // Each machine booted in a provisioning window (the fake boots none
    // outside one), which its report closed.
    for m in w.names("fra", None) {
        let (window, _) = block(provisioning::read(&w.store, &m)).unwrap().unwrap();
        assert_eq!(window.closed.as_deref(), Some("reported"), "{m}");
    }
}

#[test]
fn a_failed_boot_closes_the_provisioning_windows_it_opened() {
    let w = world();
    w.fake.fail("booted fra", "no report within 900 s");
    let report = w.ran("fra", &how());
    assert!(!report.report.ok);
    for m in w.names("fra", None) {
        let (window, _) = block(provisioning::read(&w.store, &m)).unwrap().unwrap();
        let closed = window.closed.unwrap_or_default();
        assert!(
            closed.starts_with("the boot of ") && closed.ends_with(" ended"),
            "{m}: {closed}"
        );
    }
}

/// Each failure point of an in-place replace: the step it fails at, and
/// whether generation 2 was recorded by then.
const IN_PLACE_FAILURES: &[(&str, &str, u64)] = &[
    ("hook traffic.drain fra", "drain", 1),
    ("power off fra-cp-02", "power off", 1),
    ("power on fra-cp-01", "power on", 1),
    ("booted fra", "boot", 1),
    ("bootstrap fra", "start etcd", 1),
    ("health fra", "health", 2),
    ("hook traffic.restore fra", "restore", 2),
];

#[test]
fn a_failed_in_place_replace_stops_at_its_step_and_leaves_the_site_drained() {
    for (label, step, generation) in IN_PLACE_FAILURES {
        let w = world();
        w.fake.fail(label, "it broke");
        let report = w.ran("fra", &how());
        let error = report.report.error.clone().unwrap_or_default();
        assert!(!report.report.ok, "{label}");
        assert!(error.contains("it broke"), "{label}: {error}");

        let op = w.journal("replace", "fra").unwrap();
        assert_eq!(op.status, JournalStatus::Failed, "{label}");
        let last = op.steps.last().unwrap();
        assert_eq!(
            (last.name.as_str(), last.completed()),
            (*step, false),
            "{label}"
        );
        assert!(op.steps[..op.steps.len() - 1].iter().all(|s| s.completed()));

        // Traffic never came back: the site is recorded drained, the
        // restore hook ran only when it was the one that failed.
        let record = w.site("fra");
        assert_eq!(
            record.drained.as_deref(),
            Some("replace to generation 2"),
            "{label}"
        );
        assert_eq!(record.generation, *generation, "{label}");
        let restored = w.when("hook traffic.restore").len();
        assert_eq!(restored, usize::from(*step == "restore"), "{label}");
        // Nothing was powered off unless the drain hook had succeeded.
        if *step == "drain" {
            assert!(w.when("power").is_empty(), "{label}");
        }
        assert_eq!(w.audit()[0]["detail"]["ok"], false, "{label}");
        w.no_locks();
    }
}

#[test]
fn a_failed_replace_resumes_after_its_last_completed_step() {
    let w = world();
    w.fake.fail("booted fra", "no report");
    assert!(!w.ran("fra", &how()).report.ok);
    let before = w.fake.done().len();

    let w2 = World {
        fake: Arc::new(Fake::new(&w.fleet, w.store.clone())),
        ..w
    };
    let w2 = World {
        env: Env {
            store: Arc::new(w2.store.clone()),
            sealer: Sealer::none(),
            infra: w2.fake.clone(),
            io: Default::default(),
        },
        ..w2
    };
    assert!(before > 0);
    let report = w2.ran("fra", &how());
    assert!(report.report.ok, "{:?}", report.report.error);
    assert_eq!(report.report.generation, 2, "the same generation, resumed");
    // Drain, power off and power on completed in the first run: the drain
    // hook does not rerun. Its boot ended without reports, closing the
    // machines' windows: the resumed boot step boots them again, each in
    // a new window (the fake boots nothing outside one).
    let serving = w2.names("fra", None).join(" ");
    assert_eq!(
        w2.fake.done(),
        [
            format!("power on {serving}"),
            "booted fra".into(),
            // Each machine installed to its disk now boots from it.
            format!("boot from disk {serving}"),
            "bootstrap fra".into(),
            "hook traffic.restore fra".into()
        ]
    );
    let op = w2.journal("replace", "fra").unwrap();
    assert_eq!(op.runs.len(), 2);
    assert_eq!(op.status, JournalStatus::Succeeded);
    assert_eq!(w2.site("fra").generation, 2);
}

#[test]
fn a_failed_worker_is_set_aside_and_the_rerun_finishes_only_it() {
    let w = world();
    w.fake.fail("power on fra-wk-01", "BMC refused");
    let report = w.ran("fra", &how());
    assert!(!report.report.ok);
    let aside: Vec<(String, String, String)> = report
        .report
        .set_aside
        .iter()
        .map(|a| (a.machine.clone(), a.step.clone(), a.error.clone()))
        .collect();
    assert_eq!(
        aside,
        [(
            "fra-wk-01".to_string(),
            "power on".to_string(),
            "BMC refused".to_string()
        )]
    );
    let error = report.report.error.clone().unwrap_or_default();
    assert_eq!(error.matches("fra-wk-01").count(), 1, "{error}");
    // The rest went on: generation 2 recorded, every other machine ready
    // at it; the one set aside is not, and says why.
    let serving = w.names("fra", None);
    assert_eq!(w.site("fra").generation, 2);
    for m in &serving {
        let (record, _) = block(records::read_machine(&w.store, m)).unwrap().unwrap();
        if m == "fra-wk-01" {
            assert_eq!(record.state, MachineState::Provisioning);
            assert_eq!(record.failed.as_deref(), Some("power on: BMC refused"));
        } else {
            assert!(record.ready_at(2), "{m}: {record:?}");
        }
    }
    // A failure leaves the site drained, as any failed replace does.
    assert!(w.site("fra").drained.is_some());

    // The rerun, the BMC fixed: only fra-wk-01 is powered and booted.
    let w2 = World {
        fake: Arc::new(Fake::new(&w.fleet, w.store.clone())),
        ..w
    };
    let w2 = World {
        env: Env {
            store: Arc::new(w2.store.clone()),
            sealer: Sealer::none(),
            infra: w2.fake.clone(),
            io: Default::default(),
        },
        ..w2
    };
    let report = w2.ran("fra", &how());
    assert!(report.report.ok, "{:?}", report.report.error);
    assert_eq!(
        w2.fake.done(),
        [
            "power on fra-wk-01",
            "booted fra",
            "boot from disk fra-wk-01",
            "bootstrap fra",
            "hook traffic.restore fra"
        ]
    );
    for m in &serving {
        let (record, _) = block(records::read_machine(&w2.store, m)).unwrap().unwrap();
        assert!(
            record.ready_at(2) && record.failed.is_none(),
            "{m}: {record:?}"
        );
    }
    // The control plane's steps completed in the first run; the
    // per-machine ones ran again for fra-wk-01.
    let op = w2.journal("replace", "fra").unwrap();
    let second: Vec<&str> = op
        .steps
        .iter()
        .filter(|s| s.run == 1)
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(
        second,
        ["power on", "boot", "upload", "workers", "record", "health", "bake", "restore"]
    );
    assert_eq!(op.status, JournalStatus::Succeeded);
}

#[test]
fn a_worker_whose_bmc_fails_at_power_off_is_set_aside_and_finished_by_the_rerun() {
    let w = world();
    w.fake.fail("power off fra-wk-02", "BMC timed out");
    let report = w.ran("fra", &how());
    assert!(!report.report.ok);
    let aside: Vec<(&str, &str)> = report
        .report
        .set_aside
        .iter()
        .map(|a| (a.machine.as_str(), a.step.as_str()))
        .collect();
    assert_eq!(aside, [("fra-wk-02", "power off")]);
    // It was left out of the rest: never powered on for this boot.
    let powered: Vec<String> = w.when("power on ").into_iter().map(|e| e.what).collect();
    assert!(
        !powered.is_empty() && powered.iter().all(|p| !p.contains("fra-wk-02")),
        "{powered:?}"
    );
    let (record, _) = block(records::read_machine(&w.store, "fra-wk-02"))
        .unwrap()
        .unwrap();
    assert_eq!(record.failed.as_deref(), Some("power off: BMC timed out"));

    let w2 = World {
        fake: Arc::new(Fake::new(&w.fleet, w.store.clone())),
        ..w
    };
    let w2 = World {
        env: Env {
            store: Arc::new(w2.store.clone()),
            sealer: Sealer::none(),
            infra: w2.fake.clone(),
            io: Default::default(),
        },
        ..w2
    };
    let report = w2.ran("fra", &how());
    assert!(report.report.ok, "{:?}", report.report.error);
    // The completed power off is not repeated; the worker is powered on
    // (a cycle, as it still runs) for its network boot, alone.
    assert_eq!(w2.fake.done()[0], "power on fra-wk-02");
    for m in w2.names("fra", None) {
        let (record, _) = block(records::read_machine(&w2.store, &m))
            .unwrap()
            .unwrap();
        assert!(record.ready_at(2), "{m}: {record:?}");
    }
}

#[test]
fn the_gate_refuses_when_another_site_is_unhealthy_unless_forced_with_a_reason() {
    let w = world();
    w.fake.fail("health ber", "connection refused");
    let Outcome::Refused(checks) = w.replace("fra", &how()) else {
        panic!("ran with ber unhealthy");
    };
    let other = checks.iter().find(|c| c.name == "other-sites").unwrap();
    assert!(
        !other.ok && other.detail.contains("ber is unhealthy"),
        "{other:?}"
    );
    assert!(w.fake.done().is_empty(), "refused, nothing done");
    assert!(w.journal("replace", "fra").is_none());
    assert_eq!(w.site("fra").drained, None);
    w.no_locks();

    let forced = How {
        force: true,
        reason: Some("CVE-2026-1 fix".into()),
        ..how()
    };
    let report = w.ran("fra", &forced);
    assert!(report.report.ok, "{:?}", report.report.error);
    assert_eq!(report.overridden.len(), 2, "other-sites and capacity");
    let steps = w.steps("replace", "fra");
    assert!(
        steps[0].0.starts_with("override: other-sites: ")
            && steps[0].0.ends_with("(reason: CVE-2026-1 fix)"),
        "{:?}",
        steps[0]
    );
    let audit = w.audit();
    let over = audit.iter().find(|a| a["action"] == "override").unwrap();
    assert_eq!(over["detail"]["reason"], "CVE-2026-1 fix");
    assert_eq!(over["detail"]["operation"], "replace site fra");
}

#[test]
fn a_quarantined_machine_refuses_the_replace_before_anything_changes() {
    let w = world();
    let quarantined = crate::state::MachineRecord::now(MachineState::Quarantined, Some(1));
    block(records::put_machine(
        &w.store,
        "fra-wk-01",
        &quarantined,
        crate::state::Expect::Any,
    ))
    .unwrap();
    let site = w.fleet.site("fra").unwrap();
    let reporter = Reporter::plain();
    let err = block(replace::replace(
        &w.env,
        &w.fleet,
        &w.keys,
        site,
        &how(),
        &reporter,
    ))
    .err()
    .unwrap();
    assert!(format!("{err:#}").contains("fra-wk-01"), "{err:#}");
    assert!(w.fake.done().is_empty());
    assert!(w.journal("replace", "fra").is_none());
    w.no_locks();
}

fn blue_green() -> How {
    How {
        blue_green: true,
        ..how()
    }
}

#[test]
fn a_blue_green_replace_builds_on_the_spares_and_drains_only_for_the_switch() {
    let w = world();
    let old = w.names("fra", None);
    let fra = w.fleet.site("fra").unwrap();
    let next = crate::fleet::roles::blue_green(fra).unwrap();
    let new: Vec<String> = fra
        .machines
        .iter()
        .filter(|m| m.role == Role::Spare && next[m.name.as_str()] != Role::Spare)
        .map(|m| m.name.to_string())
        .collect();
    let report = w.ran("fra", &blue_green());
    assert!(report.report.ok, "{:?}", report.report.error);

    let plan = super::plan::blue_green(&w.fleet, fra, &next, Some(1), 2, Duration::ZERO);
    let steps = w.steps("replace", "fra");
    assert_eq!(
        steps.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
        plan_names(&plan)
    );
    assert_eq!(
        w.fake.done(),
        [
            "unrendered fra".to_string(),
            format!("power on {}", new.join(" ")),
            "booted fra".into(),
            format!("boot from disk {}", new.join(" ")),
            "bootstrap fra".into(),
            "hook traffic.drain fra".into(),
            "hook traffic.restore fra".into(),
            format!("power off {}", old.join(" ")),
        ]
    );
    // Generation 1 served, undrained, while 2 was built and baked.
    for e in w.when("power on").into_iter().chain(w.when("bootstrap")) {
        assert_eq!((e.drained.clone(), e.generation), (None, 1), "{}", e.what);
    }
    let drain = &w.when("hook traffic.drain")[0];
    assert_eq!(drain.generation, 1);
    assert!(drain
        .drained
        .as_deref()
        .unwrap()
        .contains("blue-green switch"));
    let restore = &w.when("hook traffic.restore")[0];
    assert_eq!(restore.generation, 2, "recorded between drain and restore");
    assert_eq!(w.when("power off")[0].drained, None, "retired in service");

    let record = w.site("fra");
    assert_eq!((record.generation, record.drained.clone()), (2, None));
    assert!(record.next_roles.is_empty());
    for m in &new {
        assert_eq!(record.roles.get(m), next.get(m), "{m}");
    }
    let on = w.fake.powered_on();
    assert!(new.iter().all(|m| on.contains(m)) && old.iter().all(|m| !on.contains(m)));
    for m in &old {
        let (r, _) = block(records::read_machine(&w.store, m)).unwrap().unwrap();
        assert_eq!(r.state, MachineState::Available, "{m}");
    }
    w.no_locks();
}

#[test]
fn a_blue_green_failure_before_the_switch_leaves_the_old_generation_serving() {
    for (label, step) in [
        ("unrendered fra", "assign"),
        ("booted fra", "boot"),
        ("bootstrap fra", "start etcd"),
        ("health fra", "health"),
    ] {
        let w = world();
        let old = w.names("fra", None);
        w.fake.fail(label, "it broke");
        let report = w.ran("fra", &blue_green());
        assert!(!report.report.ok, "{label}");
        let steps = w.steps("replace", "fra");
        assert_eq!(steps.last().unwrap(), &(step.to_string(), false), "{label}");
        let record = w.site("fra");
        assert_eq!(
            (record.generation, record.drained.clone()),
            (1, None),
            "{label}"
        );
        assert!(
            w.when("hook traffic").is_empty(),
            "{label}: traffic was touched"
        );
        let on = w.fake.powered_on();
        assert!(
            old.iter().all(|m| on.contains(m)),
            "{label}: old machines off"
        );
        w.no_locks();
    }
}

#[test]
fn a_blue_green_failure_in_the_switch_leaves_the_site_drained() {
    let w = world();
    w.fake.fail("hook traffic.restore fra", "gslb down");
    let report = w.ran("fra", &blue_green());
    assert!(!report.report.ok);
    assert_eq!(w.steps("replace", "fra").last().unwrap().0, "switch");
    let record = w.site("fra");
    assert!(record.drained.unwrap().contains("blue-green switch"));
    assert_eq!(record.generation, 2, "recorded before the restore failed");
    assert!(
        w.when("power off").is_empty(),
        "the old generation is not retired"
    );
}

#[test]
fn a_blue_green_replace_needs_enough_spares() {
    let w = world();
    for site in ["ber", "muc"] {
        let site = w.fleet.site(site).unwrap();
        let reporter = Reporter::plain();
        let err = block(replace::replace(
            &w.env,
            &w.fleet,
            &w.keys,
            site,
            &blue_green(),
            &reporter,
        ))
        .err()
        .unwrap();
        assert!(format!("{err:#}").contains("spare machine(s)"), "{err:#}");
    }
    assert!(w.fake.done().is_empty());
    w.no_locks();
}

fn rebuild(w: &World) -> rebuild::RebuildReport {
    let waves = rebuild::waves(&w.fleet, &[]);
    let reporter = Reporter::plain();
    block(rebuild::rebuild(
        &w.env,
        &w.fleet,
        &w.keys,
        waves,
        &how(),
        &reporter,
    ))
    .unwrap()
}

fn statuses(report: &rebuild::RebuildReport) -> Vec<(String, Status)> {
    report
        .sites
        .iter()
        .map(|s| (s.site.clone(), s.status))
        .collect()
}

#[test]
fn a_rebuild_replaces_the_sites_one_wave_at_a_time() {
    let w = world();
    let report = rebuild(&w);
    assert_eq!(report.stopped, None);
    let order: Vec<String> = report
        .waves
        .iter()
        .flatten()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(
        statuses(&report),
        order
            .iter()
            .map(|s| (s.clone(), Status::Replaced))
            .collect::<Vec<_>>()
    );
    // One site down at a time: each site's power-off comes after the
    // previous site's restore.
    let offs: Vec<String> = w
        .fake
        .done()
        .into_iter()
        .filter(|d| d.starts_with("power off") || d.starts_with("hook traffic.restore"))
        .collect();
    let mut expected = Vec::new();
    for site in &order {
        expected.push(format!("power off {}", w.names(site, None).join(" ")));
        expected.push(format!("hook traffic.restore {site}"));
    }
    assert_eq!(offs, expected);
    for site in &order {
        assert_eq!(w.site(site).generation, 2, "{site}");
    }
    w.no_locks();
}

#[test]
fn a_rebuild_stops_at_the_first_failed_site_and_leaves_the_rest_untouched() {
    let w = world();
    let order: Vec<String> = rebuild::waves(&w.fleet, &[])
        .into_iter()
        .flatten()
        .map(|s| s.to_string())
        .collect();
    let (first, second, third) = (&order[0], &order[1], &order[2]);
    w.fake.fail(&format!("booted {second}"), "no report");
    let report = rebuild(&w);
    assert_eq!(
        statuses(&report),
        [
            (first.clone(), Status::Replaced),
            (second.clone(), Status::Failed),
            (third.clone(), Status::NotStarted)
        ]
    );
    let (status, why) = report.stopped.clone().unwrap();
    assert_eq!(status, Status::Failed);
    assert!(
        why.starts_with(&format!("{second}: ")) && why.contains("no report"),
        "{why}"
    );
    assert!(w.fake.done().iter().all(|d| !d.contains(third.as_str())));
    assert_eq!(w.site(third).generation, 1);
    assert!(
        w.site(second).drained.is_some(),
        "the failed site stays drained"
    );
}

#[test]
fn a_rebuild_stops_when_a_site_is_blocked() {
    let w = world();
    let order: Vec<String> = rebuild::waves(&w.fleet, &[])
        .into_iter()
        .flatten()
        .map(|s| s.to_string())
        .collect();
    // The last site's etcd is unhealthy: the first site's gate refuses.
    w.fake
        .fail(&format!("health {}", order[2]), "connection refused");
    let report = rebuild(&w);
    assert_eq!(report.sites[0].status, Status::Blocked);
    assert!(report.sites[1..]
        .iter()
        .all(|s| s.status == Status::NotStarted));
    assert_eq!(report.stopped.as_ref().unwrap().0, Status::Blocked);
    assert!(w.fake.done().is_empty(), "nothing was touched");
    w.no_locks();
}

fn drill(w: &World, isolate: bool, rebuild: bool, how: How) -> Outcome<drill::DrillReport> {
    let site = w.fleet.site("fra").unwrap();
    let reporter = Reporter::plain();
    let d = Drill {
        isolate,
        rebuild,
        observe: Duration::ZERO,
        how,
    };
    block(drill::drill(&w.env, &w.fleet, &w.keys, site, &d, &reporter)).unwrap()
}

fn drill_steps(report: &drill::DrillReport) -> Vec<(String, bool)> {
    report
        .steps
        .iter()
        .map(|s| (s.name.clone(), s.ok))
        .collect()
}

#[test]
fn a_drill_whose_rebuild_sets_a_worker_aside_fails_and_the_same_drill_finishes_it() {
    let w = world();
    w.fake.fail("power on fra-wk-01", "BMC refused");
    let Outcome::Ran(report) = drill(&w, false, true, how()) else {
        panic!("refused");
    };
    assert!(!report.ok);
    let aside: Vec<(&str, &str)> = report
        .set_aside
        .iter()
        .map(|a| (a.machine.as_str(), a.step.as_str()))
        .collect();
    assert_eq!(aside, [("fra-wk-01", "power on")]);
    let error = report.error.clone().unwrap_or_default();
    assert_eq!(error.matches("fra-wk-01").count(), 1, "{error}");
    assert!(w.site("fra").drained.is_some(), "left drained");

    // The same drill again, the BMC fixed: it resumes and finishes only
    // fra-wk-01, then health, bake and traffic.
    let w2 = World {
        fake: Arc::new(Fake::new(&w.fleet, w.store.clone())),
        ..w
    };
    let w2 = World {
        env: Env {
            store: Arc::new(w2.store.clone()),
            sealer: Sealer::none(),
            infra: w2.fake.clone(),
            io: Default::default(),
        },
        ..w2
    };
    let Outcome::Ran(report) = drill(&w2, false, true, how()) else {
        panic!("refused");
    };
    assert!(report.ok, "{:?}", report.error);
    assert_eq!(report.generation_after, Some(2));
    assert!(report.set_aside.is_empty());
    assert_eq!(
        w2.fake.done(),
        [
            "power on fra-wk-01",
            "booted fra",
            "boot from disk fra-wk-01",
            "bootstrap fra",
            "hook traffic.restore fra"
        ]
    );
    for m in w2.names("fra", None) {
        let (record, _) = block(records::read_machine(&w2.store, &m))
            .unwrap()
            .unwrap();
        assert!(record.ready_at(2), "{m}: {record:?}");
    }
    assert_eq!(w2.site("fra").drained, None);
}

#[test]
fn a_power_off_drill_takes_the_site_away_and_proves_it_gone() {
    let w = world();
    let Outcome::Ran(report) = drill(&w, false, false, how()) else {
        panic!("refused");
    };
    assert!(report.ok, "{:?}", report.error);
    let names: Vec<String> = drill_steps(&report).into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        ["drain", "power off", "site gone", "other sites carry"]
    );
    let serving = w.names("fra", None);
    assert_eq!(
        w.fake.done(),
        [
            "hook traffic.drain fra".to_string(),
            format!("power off {}", serving.join(" "))
        ]
    );
    assert_eq!(
        w.when("hook traffic.drain")[0].drained.as_deref(),
        Some("drill")
    );
    let on = w.fake.powered_on();
    assert!(serving.iter().all(|m| !on.contains(m)));
    assert_eq!(
        w.site("fra").drained.as_deref(),
        Some("drill"),
        "left drained"
    );
    // The report is kept in the state, and audited.
    let stored = block(w.store.list("reports/drill/fra/")).unwrap();
    assert_eq!(stored.len(), 1);
    assert!(w.audit().iter().any(|a| a["action"] == "drill"));
    w.no_locks();
}

#[test]
fn an_isolating_drill_with_rebuild_reconnects_and_replaces_without_a_second_drain() {
    let w = world();
    let Outcome::Ran(report) = drill(&w, true, true, how()) else {
        panic!("refused");
    };
    assert!(report.ok, "{:?}", report.error);
    assert_eq!(
        (report.generation_before, report.generation_after),
        (Some(1), Some(2))
    );
    assert!(report.recovery_ms.is_some());
    let serving = w.names("fra", None).join(" ");
    assert_eq!(
        w.fake.done(),
        [
            "hook traffic.drain fra".to_string(),
            "hook drill.isolate fra".into(),
            "hook drill.reconnect fra".into(),
            format!("power off {serving}"),
            format!("power on {serving}"),
            "booted fra".into(),
            // Each machine installed to its disk now boots from it.
            format!("boot from disk {serving}"),
            "bootstrap fra".into(),
            "hook traffic.restore fra".into(),
        ]
    );
    // The rebuild's steps are the in-place replace's without its drain.
    let journal: Vec<String> = w
        .steps("drill", "fra")
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let fra = w.fleet.site("fra").unwrap();
    let mut expected = vec![
        "drain".to_string(),
        "isolate".into(),
        "site gone".into(),
        "other sites carry".into(),
        "reconnect".into(),
    ];
    expected.extend(
        plan_names(&super::plan::replace(
            &w.fleet,
            fra,
            Some(1),
            2,
            Duration::ZERO,
        ))
        .into_iter()
        .skip(1),
    );
    assert_eq!(journal, expected);
    let record = w.site("fra");
    assert_eq!((record.generation, record.drained), (2, None));
    w.no_locks();
}

#[test]
fn a_drill_fails_when_the_other_sites_cannot_carry_the_load() {
    let w = world();
    w.fake.fail("health ber", "connection refused");
    assert!(matches!(drill(&w, false, true, how()), Outcome::Refused(_)));
    assert!(w.fake.done().is_empty());

    let forced = How {
        force: true,
        reason: Some("drill despite ber".into()),
        ..how()
    };
    let Outcome::Ran(report) = drill(&w, false, true, forced) else {
        panic!("refused though forced");
    };
    assert!(!report.ok);
    let steps = drill_steps(&report);
    assert_eq!(
        steps.last().unwrap(),
        &("other sites carry".to_string(), false)
    );
    assert!(report.error.unwrap().contains("ber is unhealthy"));
    // Stopped before the rebuild: fra stays down and drained.
    assert!(w.when("power on").is_empty());
    assert_eq!(w.site("fra").generation, 1);
    assert!(w.site("fra").drained.is_some());
    w.no_locks();
}

#[test]
fn a_drill_whose_takedown_fails_stops_there() {
    let w = world();
    w.fake.fail("power off fra-cp-03", "BMC timeout");
    let Outcome::Ran(report) = drill(&w, false, true, how()) else {
        panic!("refused");
    };
    assert!(!report.ok);
    assert_eq!(
        drill_steps(&report).last().unwrap(),
        &("power off".to_string(), false)
    );
    assert!(report.error.unwrap().contains("fra-cp-03: BMC timeout"));
    assert!(w.when("power on").is_empty());
    w.no_locks();
}

/// Each failure point of a drill with `--rebuild`: power-off or isolate
/// mode, the call that fails (or, `no effect`, succeeds without doing
/// anything), and the step the drill stops at.
const DRILL_FAILURES: &[(bool, &str, bool, &str)] = &[
    (false, "hook traffic.drain fra", false, "drain"),
    (false, "power off fra-cp-02", false, "power off"),
    (false, "power off fra-cp-01", true, "site gone"),
    (true, "hook drill.isolate fra", false, "isolate"),
    (true, "hook drill.isolate fra", true, "site gone"),
    (true, "hook drill.reconnect fra", false, "reconnect"),
    (false, "booted fra", false, "rebuild: boot"),
    (false, "hook traffic.restore fra", false, "rebuild: restore"),
];

#[test]
fn a_failed_drill_stops_at_its_step_leaving_the_site_drained() {
    for (isolate, label, no_effect, step) in DRILL_FAILURES {
        let w = world();
        if *no_effect {
            w.fake.no_effect(label);
        } else {
            w.fake.fail(label, "it broke");
        }
        let case = format!("{label} (no effect: {no_effect})");
        let Outcome::Ran(report) = drill(&w, *isolate, true, how()) else {
            panic!("{case}: refused");
        };
        assert!(!report.ok, "{case}");
        let steps = drill_steps(&report);
        assert_eq!(steps.last().unwrap(), &(step.to_string(), false), "{case}");
        assert!(steps[..steps.len() - 1].iter().all(|(_, ok)| *ok), "{case}");
        let error = report.error.clone().unwrap();
        if *step == "site gone" {
            assert!(error.contains("still answer"), "{case}: {error}");
        } else {
            assert!(error.contains("it broke"), "{case}: {error}");
        }
        // Not rebuilt, or not finished: the drill records no recovery,
        // the site stays drained, and the drill is journaled failed.
        assert_eq!(report.recovery_ms, None, "{case}");
        assert_eq!(w.site("fra").drained.as_deref(), Some("drill"), "{case}");
        let op = w.journal("drill", "fra").unwrap();
        assert_eq!(op.status, JournalStatus::Failed, "{case}");
        if !step.starts_with("rebuild") && *step != "reconnect" {
            assert!(w.when("power on").is_empty(), "{case}: rebuilt anyway");
        }
        w.no_locks();
    }
}
