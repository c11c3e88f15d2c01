//! Crash safety: `provision` and `replace` killed with SIGKILL at every
//! journaled step in turn, on [`super::machines`] (SSH test hosts with
//! IPMI BMCs, firmware stand-ins and the real boot server).
//!
//! The site is fra cut to one control plane and one worker. Every
//! power-on with PXE set makes the machine's firmware stand-in fetch its
//! config through the boot server and report, as the real first boot
//! does; every power-off kills the host's units and wipes etcd's data.
//!
//! A debug build stops at `METALHERD_CRASH_AT=<kind>:<step>:<at>` and the
//! test SIGKILLs it there: at the `end` of each step in turn (its work
//! done, its end not yet journaled: the worst moment), then at the `start`
//! of each (journaled as started, nothing done). Then, each time:
//! - the state reads back (no corrupt object) and the journal shows the
//!   earlier steps completed and the killed one unfinished;
//! - a rerun is refused while the dead run's lock is held (exit 3, the lock
//!   named); `state unlock --force` breaks it;
//! - the rerun resumes, never runs a completed step again (the journal, the
//!   BMC's power-ons, the firmware's network boots and the traffic hooks
//!   are counted), and converges: the same generation recorded, every
//!   machine ready, the site restored, the PKI the killed run created kept.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::machines::{all, calls, json, Machines};
use super::text;

const MACHINES: [&str; 2] = ["fra-cp-01", "fra-wk-01"];

const PROVISION_STEPS: [&str; 8] = [
    "power on",
    "boot",
    "pki",
    "upload",
    "start etcd",
    "control plane",
    "workers",
    "record",
];

const REPLACE_STEPS: [&str; 13] = [
    "drain",
    "power off",
    "power on",
    "boot",
    "pki",
    "upload",
    "start etcd",
    "control plane",
    "workers",
    "record",
    "health",
    "bake",
    "restore",
];

/// Starts `args` with the crash point at `at` (`start` or `end`) of
/// `kind`'s `step`, waits until it stops there and SIGKILLs it.
fn kill_at(site: &Machines, kind: &str, step: &str, at: &str, args: &[&str]) {
    let mut child = site
        .metalherd_command(args)
        .env("METALHERD_CRASH_AT", format!("{kind}:{step}:{at}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut said = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.starts_with("crash point ") {
                let _ = tx.send(());
            }
            said.push_str(&line);
            said.push('\n');
        }
        said
    });
    let reached = rx.recv_timeout(Duration::from_secs(240)).is_ok();
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    let said = reader.join().unwrap();
    assert!(
        reached,
        "{kind} never reached the end of step {step:?} ({status}): {said}"
    );
    site.firmware.settle();
}

fn history_op(site: &Machines, kind: &str) -> serde_json::Value {
    history_op_of(site, kind, "site/fra")
}

fn history_op_of(site: &Machines, kind: &str, target: &str) -> serde_json::Value {
    let out = site.metalherd(&["--output", "json", "state", "history"]);
    assert!(out.status.success(), "state history: {}", all(&out));
    let doc = json(&out);
    doc["operations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["kind"] == kind && o["target"] == target)
        .unwrap_or_else(|| panic!("no {kind} in {doc}"))
        .clone()
}

/// The names of the steps of `op` run in `run`, with their outcomes.
fn steps_of(op: &serde_json::Value, run: u64) -> Vec<(String, Option<String>)> {
    op["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["run"] == run && !s["name"].as_str().unwrap().starts_with("override"))
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["outcome"].as_str().map(str::to_string),
            )
        })
        .collect()
}

/// After a kill at the end of `steps[k]`: the state reads back, the journal
/// shows `steps[..k]` completed and `steps[k]` unfinished, a rerun is
/// refused on the dead run's lock(s), which `state unlock --force` breaks.
fn after_kill(site: &Machines, kind: &str, steps: &[&str], k: usize, args: &[&str]) {
    for args in [
        &["--output", "json", "state", "show"][..],
        &["--output", "json", "state", "locks"][..],
        &["--output", "json", "audit"][..],
    ] {
        let out = site.metalherd(args);
        assert!(
            out.status.success(),
            "{args:?} after the kill: {}",
            all(&out)
        );
        json(&out);
    }
    let op = history_op(site, kind);
    assert_eq!(op["status"], "running", "{op}");
    let run0 = steps_of(&op, 0);
    let want: Vec<(String, Option<String>)> = steps[..k]
        .iter()
        .map(|s| (s.to_string(), Some("ok".to_string())))
        .chain([(steps[k].to_string(), None)])
        .collect();
    assert_eq!(run0, want, "{kind} killed at {}: {op}", steps[k]);

    let out = site.metalherd(&["--output", "json", "state", "locks"]);
    let locks: Vec<String> = json(&out)["locks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap().to_string())
        .collect();
    assert!(
        !locks.is_empty(),
        "the dead run's lock is gone: {}",
        all(&out)
    );
    let refused = site.metalherd(args);
    assert_eq!(refused.status.code(), Some(3), "{}", all(&refused));
    assert!(
        text(&refused.stderr).contains(&format!("{} is locked by ", locks[0])),
        "{}",
        all(&refused)
    );
    for lock in &locks {
        let out = site.metalherd(&[
            "state",
            "unlock",
            lock,
            "--force",
            "--reason",
            "crash test: holder SIGKILLed",
        ]);
        assert!(out.status.success(), "unlock {lock}: {}", all(&out));
    }
}

/// The rerun's journal: `steps[..k]` not run again, `steps[k..]` run once.
fn check_resumed(site: &Machines, kind: &str, steps: &[&str], k: usize, out: &Output) {
    if !out.status.success() {
        let etcd = site
            .hosts
            .host_file(MACHINES[0], "/var/log/etcd.service.log");
        panic!(
            "{kind} rerun after a kill at {}: {}\n{}'s etcd log:\n{}",
            steps[k],
            all(out),
            MACHINES[0],
            std::fs::read_to_string(etcd).unwrap_or_default()
        );
    }
    assert!(
        text(&out.stderr).contains(&format!("resuming {kind} site/fra")),
        "{}",
        all(out)
    );
    let op = history_op(site, kind);
    assert_eq!(op["status"], "succeeded", "{op}");
    let want: Vec<(String, Option<String>)> = steps[k..]
        .iter()
        .map(|s| (s.to_string(), Some("ok".to_string())))
        .collect();
    assert_eq!(
        steps_of(&op, 1),
        want,
        "{kind} resumed after {}: {op}",
        steps[k]
    );
}

/// Over a killed run and its rerun, each machine was powered on and
/// network-booted once: twice when the run died after powering on but
/// before that was journaled (the rerun powers on again), never more.
fn check_power(
    site: &Machines,
    step: &str,
    at: &str,
    ons_before: &[usize],
    boots_before: &[usize],
) {
    let (ons, boots) = site.firmware.counts();
    let want = 1 + usize::from(step == "power on" && at == "end");
    for (i, m) in MACHINES.iter().enumerate() {
        assert_eq!(
            ons[i] - ons_before[i],
            want,
            "{m}: power-ons, killed at {step}"
        );
        assert_eq!(
            boots[i] - boots_before[i],
            want,
            "{m}: network boots, killed at {step} ({at}); local boots {:?}; boot server log:\n{}",
            site.firmware.local_boots(),
            std::fs::read_to_string(site.fleet.path().join("serve.log")).unwrap_or_default()
        );
    }
}

/// The converged state: `generation` recorded, not drained, every machine
/// ready in it.
fn check_converged(site: &Machines, generation: u64) {
    let record = &site.site_record("fra");
    let doc = record;
    assert_eq!(record["generation"], generation, "{doc}");
    assert!(record["drained"].is_null(), "still drained: {doc}");
    let machines = record["machines"].as_array().unwrap();
    assert_eq!(machines.len(), MACHINES.len(), "{doc}");
    for m in machines {
        assert_eq!(m["state"], "ready", "{doc}");
        assert_eq!(m["generation"], generation, "{doc}");
    }
}

/// The generation's CA certificates (every `ca.crt` of its PKI), in path order.
fn ca_of(site: &Machines, generation: u64) -> Vec<(PathBuf, Vec<u8>)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
        for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.file_name().is_some_and(|n| n == "ca.crt") {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    let dir = metalherd::pki::state_path(
        &site.fleet.path().join(".metalherd/state"),
        "fra",
        generation,
    );
    let mut out = Vec::new();
    walk(&dir, &mut out);
    out.sort();
    assert!(!out.is_empty(), "no ca.crt in {}", dir.display());
    out
}

#[test]
fn provision_and_replace_killed_at_every_step_resume_and_converge() {
    let site = Machines::start(&MACHINES);
    let f = site.fleet.path().to_path_buf();
    let provision = [
        "provision",
        "site",
        "fra",
        "--boot-timeout",
        "60",
        "--ready-timeout",
        "90",
    ];

    // provision: the same generation each time, killed at the end of each
    // step (its work done, not yet journaled), then at the start of each
    // (journaled as started, nothing done).
    let points = ["end", "start"].into_iter().flat_map(|at| {
        PROVISION_STEPS
            .iter()
            .enumerate()
            .map(move |(k, step)| (at, k, step))
    });
    for (at, k, step) in points {
        let started = Instant::now();
        let (ons_before, boots_before) = site.firmware.counts();
        kill_at(&site, "provision", step, at, &provision);
        after_kill(&site, "provision", &PROVISION_STEPS, k, &provision);
        let ca_killed = (k > 2 || (k == 2 && at == "end")).then(|| ca_of(&site, 1));
        let out = site.metalherd(&provision);
        site.firmware.settle();
        check_resumed(&site, "provision", &PROVISION_STEPS, k, &out);
        check_converged(&site, 1);
        check_power(&site, step, at, &ons_before, &boots_before);
        if let Some(ca) = ca_killed {
            assert_eq!(
                ca_of(&site, 1),
                ca,
                "the PKI changed after a kill at {step}"
            );
        }
        eprintln!(
            "provision killed at the {at} of {step:?}: resumed and converged in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }

    // `plan` names the steps `replace` journals, in its order.
    let out = site.metalherd(&["--output", "json", "plan", "site", "fra", "--no-probe"]);
    // (Blocked: the harness's other sites have no generation; exit 4.)
    let blocked = json(&out)["blocked"] == true;
    assert_eq!(
        out.status.code(),
        Some(if blocked { 4 } else { 0 }),
        "plan: {}",
        all(&out)
    );
    let planned: Vec<String> = json(&out)["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(planned, REPLACE_STEPS, "plan and replace disagree");

    // replace: generation 2, 3, ... each killed at the next step.
    let replace = [
        "replace",
        "site",
        "fra",
        "--force",
        "--reason",
        "crash test",
        "--bake",
        "0",
        "--boot-timeout",
        "60",
        "--ready-timeout",
        "90",
    ];
    let points = ["end", "start"].into_iter().flat_map(|at| {
        REPLACE_STEPS
            .iter()
            .enumerate()
            .map(move |(k, step)| (at, k, step))
    });
    for (n, (at, k, step)) in points.enumerate() {
        let started = Instant::now();
        let generation = u64::try_from(n).unwrap() + 2;
        let drains = calls(&f).matches("gslb-weight fra 0").count();
        let restores = calls(&f).matches("gslb-weight fra 100").count();
        let (ons_before, boots_before) = site.firmware.counts();
        kill_at(&site, "replace", step, at, &replace);
        after_kill(&site, "replace", &REPLACE_STEPS, k, &replace);
        let pki = REPLACE_STEPS.iter().position(|s| *s == "pki").unwrap();
        let pki_done = k > pki || (k == pki && at == "end");
        let ca_killed = pki_done.then(|| ca_of(&site, generation));
        let out = site.metalherd(&replace);
        site.firmware.settle();
        check_resumed(&site, "replace", &REPLACE_STEPS, k, &out);
        check_converged(&site, generation);
        check_power(&site, step, at, &ons_before, &boots_before);
        if let Some(ca) = ca_killed {
            assert_eq!(
                ca_of(&site, generation),
                ca,
                "the PKI changed after a kill at {step}"
            );
        }
        // The traffic hooks: one drain and one restore per replace, two
        // when it died right after the hook, before the step was journaled.
        let drained = calls(&f).matches("gslb-weight fra 0").count() - drains;
        let again = |hook: &str| usize::from(*step == hook && at == "end");
        assert_eq!(drained, 1 + again("drain"), "{}", calls(&f));
        let restored = calls(&f).matches("gslb-weight fra 100").count() - restores;
        assert_eq!(restored, 1 + again("restore"), "{}", calls(&f));
        eprintln!(
            "replace to generation {generation} killed at the {at} of {step:?}: resumed and converged in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
}

/// `drill site muc --rebuild` (power-off mode; fra and ber carry the load)
/// killed at the end of its `site gone` step, then at the end of its
/// `record` step: each rerun resumes without looking again for a site that
/// is back or rebuilding to yet another generation, and converges.
#[test]
fn a_drill_killed_mid_rebuild_resumes_to_the_same_generation() {
    let site = Machines::start(&["fra-cp-01", "ber-cp-01", "muc-cp-01"]);
    for s in ["fra", "ber", "muc"] {
        let out = site.metalherd(&["provision", "site", s, "--boot-timeout", "60"]);
        assert!(out.status.success(), "provision {s}: {}", all(&out));
    }
    site.firmware.settle();
    let reports = tempfile::tempdir().unwrap();
    let drill = [
        "drill",
        "site",
        "muc",
        "--rebuild",
        "--bake",
        "0",
        "--boot-timeout",
        "60",
        "--ready-timeout",
        "60",
        "--reports",
        reports.path().to_str().unwrap(),
    ];
    for (generation, step) in [(2, "site gone"), (3, "record")] {
        kill_at(&site, "drill", step, "end", &drill);
        let op = history_op_of(&site, "drill", "site/muc");
        assert_eq!(op["status"], "running", "{op}");
        let out = site.metalherd(&["--output", "json", "state", "locks"]);
        for lock in json(&out)["locks"].as_array().unwrap() {
            let name = lock["name"].as_str().unwrap();
            let out = site.metalherd(&["state", "unlock", name, "--force", "--reason", "test"]);
            assert!(out.status.success(), "{}", all(&out));
        }
        let out = site.metalherd(&drill);
        assert!(
            out.status.success(),
            "drill rerun after a kill at {step}: {}",
            all(&out)
        );
        assert!(
            text(&out.stderr).contains("resuming drill site/muc"),
            "{}",
            all(&out)
        );
        let record = site.site_record("muc");
        assert_eq!(
            record["generation"], generation,
            "killed at {step}: {record}"
        );
        assert!(record["drained"].is_null(), "{record}");
        let op = history_op_of(&site, "drill", "site/muc");
        assert_eq!(op["status"], "succeeded", "{op}");
        let reran: Vec<String> = steps_of(&op, 1).into_iter().map(|(n, _)| n).collect();
        assert_eq!(reran.first().map(String::as_str), Some(step), "{op}");
        for gone in ["drain", "power off", "site gone"] {
            assert!(
                step == gone || !reran.iter().any(|n| n == gone),
                "{gone} ran again after a kill at {step}: {op}"
            );
        }
        for other in ["fra", "ber"] {
            assert_eq!(site.site_record(other)["generation"], 1, "{other} touched");
        }
        site.firmware.settle();
    }
}
