//! Faults while operating, on [`super::machines`]: fra (one control plane)
//! and ber (one control plane, one worker) provisioned, muc never touched.
//! Each fault hits one site in the middle of an operation:
//!
//! 1. fra's link is cut (`ip link set eth0 down` in its control plane's
//!    namespace, by the drain hook as fra is drained) during `rebuild`;
//! 2. ber's BMC is stopped (SIGKILL, by the drain hook) during `replace`;
//! 3. a fra host dies (its link down) mid-bootstrap of a `replace`.
//!
//! Each time: the operation stops with exit 1 and a message that names the
//! machine and the step; the other sites are untouched (generation, drain
//! mark, traffic hooks); and after the fault clears, rerunning the same
//! site's replace resumes its journal and finishes. (The etcd state
//! backend losing quorum mid-operation is
//! `state::etcd_losing_quorum_mid_operation_stops_it_and_a_rerun_finishes`.)

use std::path::Path;

use super::machines::{all, calls, json, Machines};
use super::text;

const MACHINES: [&str; 3] = ["fra-cp-01", "ber-cp-01", "ber-wk-01"];

/// A drain hook that logs like the default one, and when `<site>.fault`
/// exists in the fleet, runs it as the site is drained (once).
fn hook_with_faults(fleet: &Path) {
    let hook = fleet.join("scripts/gslb-weight");
    std::fs::write(
        &hook,
        "#!/bin/sh\necho \"gslb-weight $1 $2\" >> calls.log\n\
         if [ \"$2\" = 0 ] && [ -e \"$1.fault\" ]; then sh \"$1.fault\"; rm -f \"$1.fault\"; fi\nexit 0\n",
    )
    .unwrap();
}

fn generation(m: &Machines, site: &str) -> serde_json::Value {
    m.site_record(site)["generation"].clone()
}

/// muc: never provisioned, never touched (no generation, no drain mark,
/// no hook call).
fn muc_untouched(m: &Machines, fleet: &Path) {
    let record = m.site_record("muc");
    assert!(
        record["generation"].as_u64().unwrap_or(0) == 0 && record["drained"].is_null(),
        "muc touched: {record}"
    );
    assert!(!calls(fleet).contains("muc"), "{}", calls(fleet));
}

fn drained(m: &Machines, site: &str) -> bool {
    !m.site_record(site)["drained"].is_null()
}

fn replace(site: &str) -> Vec<&str> {
    vec![
        "replace",
        site,
        "--force",
        "--reason",
        "fault test",
        "--bake",
        "0",
        "--boot-timeout",
        "20",
        "--ready-timeout",
        "30",
        "--step-timeout",
        "10",
    ]
}

/// Reruns `replace site <site>` after a fault cleared: it resumes and
/// finishes at `generation`, restored.
fn rerun_finishes(m: &Machines, site: &str, generation_now: u64) {
    let mut args = vec!["replace", "site"];
    args.extend(replace(site).into_iter().skip(1));
    let out = m.metalherd(&args);
    assert!(out.status.success(), "rerun of {site}: {}", all(&out));
    assert!(
        text(&out.stderr).contains(&format!("resuming replace site/{site}")),
        "{}",
        all(&out)
    );
    assert_eq!(generation(m, site), generation_now);
    assert!(!drained(m, site), "{site} still drained");
}

#[test]
fn faults_stop_one_site_cleanly_and_a_rerun_after_they_clear_finishes() {
    let mut m = Machines::start(&MACHINES);
    let f = m.fleet.path().to_path_buf();
    for site in ["fra", "ber"] {
        let out = m.metalherd(&[
            "provision",
            "site",
            site,
            "--boot-timeout",
            "60",
            "--ready-timeout",
            "60",
        ]);
        assert!(out.status.success(), "provision {site}: {}", all(&out));
    }
    m.firmware.settle();
    hook_with_faults(&f);
    muc_untouched(&m, &f);

    // 1. fra's link cut during `rebuild` (waves: ber, then fra): ber's wave
    //    done, fra stops at boot.
    let ns = m.hosts.host_namespace("fra-cp-01").to_string();
    std::fs::write(
        f.join("fra.fault"),
        format!("ip -n {ns} link set eth0 down\n"),
    )
    .unwrap();
    let mut args = vec!["--output", "json", "rebuild", "--sites", "ber,fra"];
    args.extend(replace("").into_iter().skip(2));
    let out = m.metalherd(&args);
    assert_eq!(out.status.code(), Some(1), "{}", all(&out));
    let doc = json(&out);
    let statuses: Vec<(&str, &str)> = doc["sites"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["site"].as_str().unwrap(), s["status"].as_str().unwrap()))
        .collect();
    assert_eq!(statuses, [("ber", "replaced"), ("fra", "failed")], "{doc}");
    let error = doc["stopped"]["reason"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("fra: boot: ") && error.contains("fra-cp-01: no report within 20 s"),
        "the error names the site, step and machine: {doc}"
    );
    eprintln!("link cut: {error}");
    assert_eq!(generation(&m, "ber"), 2, "{doc}");
    assert!(!drained(&m, "ber"));
    assert_eq!(generation(&m, "fra"), 1);
    assert!(
        drained(&m, "fra"),
        "a failed replace leaves its site drained"
    );
    muc_untouched(&m, &f);
    assert_eq!(
        calls(&f).lines().collect::<Vec<_>>(),
        [
            "gslb-weight ber 0",
            "gslb-weight ber 100",
            "gslb-weight fra 0"
        ]
    );
    assert!(m.firmware.failed_boots()[m.index("fra-cp-01")] > 0);
    m.hosts.link_up("fra-cp-01");
    // Its firmware gets through now, after the replace gave up and closed
    // the window: told to boot locally, not given a config.
    m.firmware.settle();
    assert_eq!(m.firmware.local_boots()[m.index("fra-cp-01")], 1);
    // The rerun boots it again, in a window of its own.
    rerun_finishes(&m, "fra", 2);
    assert_eq!(generation(&m, "ber"), 2, "ber touched by fra's rerun");
    m.firmware.settle();

    // 2. ber's BMC stopped during `replace`: it stops at power off.
    std::fs::write(
        f.join("ber.fault"),
        format!("kill -KILL {}\n", m.bmc_pid("ber-cp-01")),
    )
    .unwrap();
    let calls_before = calls(&f);
    let mut args = vec!["--output", "json", "replace", "site"];
    args.extend(replace("ber").into_iter().skip(1));
    let out = m.metalherd(&args);
    assert_eq!(out.status.code(), Some(1), "{}", all(&out));
    let doc = json(&out);
    let error = doc["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("power off") && error.contains("ber-cp-01"),
        "{doc}"
    );
    assert!(error.contains("16232"), "the BMC's address: {error}");
    eprintln!("BMC stopped: {error}");
    assert!(drained(&m, "ber"));
    assert_eq!(generation(&m, "ber"), 2);
    assert_eq!(generation(&m, "fra"), 2, "fra touched");
    assert!(!drained(&m, "fra"));
    assert_eq!(
        calls(&f)[calls_before.len()..].lines().collect::<Vec<_>>(),
        ["gslb-weight ber 0"]
    );
    m.start_bmc("ber-cp-01");
    rerun_finishes(&m, "ber", 3);
    m.firmware.settle();

    // 3. A fra host dies mid-bootstrap of fra's replace.
    let mut args = vec!["--output", "json", "replace", "site"];
    args.extend(replace("fra").into_iter().skip(1));
    let child = m
        .metalherd_command(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // As soon as the new generation's PKI landed on the control plane.
    let landed = m.hosts.host_file("fra-cp-01", "/etc/etcd/pki/ca.crt");
    let before = std::fs::read(&landed).ok();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while std::fs::read(&landed).ok() == before {
        assert!(std::time::Instant::now() < deadline, "the PKI never landed");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    m.hosts.link_down("fra-cp-01");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", all(&out));
    let doc = json(&out);
    let error = doc["error"].as_str().unwrap_or_default();
    assert!(error.contains("fra-cp-01"), "{doc}");
    eprintln!("host died: {error}");
    assert_eq!(generation(&m, "fra"), 2);
    assert!(drained(&m, "fra"));
    assert_eq!(generation(&m, "ber"), 3, "ber touched");
    assert!(!drained(&m, "ber"));
    m.hosts.link_up("fra-cp-01");
    rerun_finishes(&m, "fra", 3);
    muc_untouched(&m, &f);
}
