//! The safety rules of `plan` and `replace`, with traffic and alarm hooks
//! that are scripts recording their calls: each blocker refuses with a
//! message that names it (exit 4) and changes nothing; `--force --reason`
//! goes ahead, is recorded in the journal and the audit log, and a failure
//! after the drain (the example fleet's BMCs do not exist here) leaves the
//! site drained; a second `replace` while the first holds the fleet lock
//! is refused with exit 3. (The lab test replaces a real site end to end.)

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{example_fleet, metalherd, text};

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}{}", text(&out.stdout), text(&out.stderr)))
}

/// The example fleet with hooks that append their calls to `calls.log`,
/// an alarm that fires while `alarm.firing` exists, and `windows`.
fn fleet_with_hooks(windows: &[&str]) -> tempfile::TempDir {
    let fleet = example_fleet();
    let dir = fleet.path();
    std::fs::create_dir_all(dir.join("scripts")).unwrap();
    let script = |name: &str, body: &str| {
        let p = dir.join("scripts").join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    };
    script(
        "gslb-weight",
        "echo \"gslb-weight $1 $2\" >> calls.log\n[ \"${SLOW_HOOK:-}\" ] && sleep \"$SLOW_HOOK\"\nexit 0",
    );
    script(
        "alarm",
        "echo alarm-check >> calls.log\nif [ -e alarm.firing ]; then echo 'DiskFull on fra-cp-02'; exit 1; fi\nexit 0",
    );
    let yaml = dir.join("inventory/fleet.yaml");
    let mut text = std::fs::read_to_string(&yaml).unwrap();
    text.push_str("alarms:\n  command: scripts/alarm\n");
    if !windows.is_empty() {
        text.push_str("windows:\n");
        for w in windows {
            text.push_str(&format!("  - \"{w}\"\n"));
        }
    }
    std::fs::write(&yaml, text).unwrap();
    fleet
}

fn calls(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("calls.log")).unwrap_or_default()
}

/// A window that is closed now: the same hours, on another weekday.
fn closed_window() -> String {
    let today = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .weekday();
    let other = today.wrapping_add(3);
    let name = &format!("{other:?}")[..3];
    format!("{name} 00:00-24:00 UTC")
}

#[test]
fn each_blocker_refuses_by_name_and_changes_nothing() {
    let window = closed_window();
    let fleet = fleet_with_hooks(&[&window]);
    let dir = fleet.path();
    std::fs::write(dir.join("alarm.firing"), "").unwrap();

    let out = metalherd(dir, &["--output", "json", "plan", "site", "fra"]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "blocked: exit 4 {}",
        text(&out.stderr)
    );
    let plan = json(&out);
    assert_eq!(plan["blocked"], true);
    assert_eq!(plan["to_generation"], 1);
    let by_name = |doc: &serde_json::Value, name: &str| -> serde_json::Value {
        doc["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no check {name}: {doc}"))
    };
    let others = by_name(&plan, "other-sites");
    assert_eq!(others["ok"], false);
    assert!(
        others["detail"]
            .as_str()
            .unwrap()
            .contains("ber has no cluster generation recorded"),
        "{others}"
    );
    let capacity = by_name(&plan, "capacity");
    assert_eq!(capacity["ok"], false);
    assert!(
        capacity["detail"].as_str().unwrap().contains("carry 0%"),
        "{capacity}"
    );
    let alarms = by_name(&plan, "alarms");
    assert_eq!(alarms["ok"], false);
    assert!(
        alarms["detail"]
            .as_str()
            .unwrap()
            .contains("DiskFull on fra-cp-02"),
        "{alarms}"
    );
    let win = by_name(&plan, "window");
    assert_eq!(win["ok"], false);
    assert!(
        win["detail"]
            .as_str()
            .unwrap()
            .contains("outside every window"),
        "{win}"
    );
    let steps = plan["steps"].as_array().unwrap();
    assert!(steps.iter().any(|s| s["step"] == "drain"
        && s["does"]
            .as_str()
            .unwrap()
            .contains("scripts/gslb-weight fra 0")));

    // replace refuses, naming every blocker, exit 4; nothing drained.
    let out = metalherd(dir, &["replace", "site", "fra", "--bake", "0"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    let said = text(&out.stderr);
    for name in ["other-sites:", "capacity:", "alarms:", "window:"] {
        assert!(said.contains(name), "{name} not named: {said}");
    }
    assert!(said.contains("--force --reason"), "{said}");
    assert!(
        !calls(dir).contains("gslb-weight"),
        "drained while refused: {}",
        calls(dir)
    );
    let out = metalherd(dir, &["--output", "json", "state", "history"]);
    assert!(
        !text(&out.stdout).contains("replace"),
        "journaled while refused"
    );

    // Only the alarm: once it clears, that blocker is gone.
    std::fs::remove_file(dir.join("alarm.firing")).unwrap();
    let out = metalherd(dir, &["--output", "json", "plan", "site", "fra"]);
    assert_eq!(by_name(&json(&out), "alarms")["ok"], true);

    // --force without a reason is a usage error.
    let out = metalherd(dir, &["replace", "site", "fra", "--force"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

#[test]
fn forced_replace_is_recorded_and_a_failure_leaves_the_site_drained() {
    let fleet = fleet_with_hooks(&[]);
    let dir = fleet.path();
    let out = Command::new(env!("CARGO_BIN_EXE_metalherd"))
        .args([
            "--output",
            "json",
            "replace",
            "site",
            "fra",
            "--force",
            "--reason",
            "drill CHG-1234",
            "--bake",
            "0",
            "--step-timeout",
            "3",
        ])
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("FRA_BMC_CREDENTIALS", "admin:not-a-real-password")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let doc = json(&out);
    assert_eq!(doc["ok"], false);
    let overridden = doc["overridden"].as_array().unwrap();
    assert!(overridden
        .iter()
        .any(|o| o.as_str().unwrap().starts_with("other-sites:")));
    let phases: Vec<&str> = doc["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(phases, ["drain", "power off"], "{doc}");
    assert!(
        doc["error"].as_str().unwrap().contains("fra-cp-01"),
        "{doc}"
    );
    // Drained, never restored.
    assert_eq!(
        calls(dir).matches("gslb-weight fra 0").count(),
        1,
        "{}",
        calls(dir)
    );
    assert!(!calls(dir).contains("gslb-weight fra 100"));
    assert!(
        !calls(dir).contains("gslb-weight ber"),
        "another site touched"
    );
    let out = metalherd(dir, &["--output", "json", "state", "show", "--site", "fra"]);
    let state = text(&out.stdout);
    assert!(
        state.contains("replace to generation 1"),
        "not recorded drained: {state}"
    );
    // The override and its reason: in the journal and the audit log.
    let out = metalherd(dir, &["--output", "json", "state", "history"]);
    let history = text(&out.stdout);
    assert!(history.contains("override: other-sites"), "{history}");
    assert!(history.contains("drill CHG-1234"), "{history}");
    let out = metalherd(dir, &["--output", "json", "audit"]);
    let audit = json(&out);
    let entries = audit["entries"].as_array().unwrap();
    let over = entries
        .iter()
        .find(|e| e["action"] == "override")
        .unwrap_or_else(|| panic!("{audit}"));
    assert_eq!(over["detail"]["reason"], "drill CHG-1234");
    assert!(entries
        .iter()
        .any(|e| e["action"] == "replace" && e["detail"]["ok"] == false));
    assert!(!text(&out.stdout).contains("not-a-real-password"));
}

#[test]
fn a_second_replace_while_the_first_holds_the_fleet_lock_is_refused() {
    let fleet = fleet_with_hooks(&[]);
    let dir = fleet.path();
    let first = Command::new(env!("CARGO_BIN_EXE_metalherd"))
        .args([
            "replace", "site", "fra", "--force", "--reason", "test", "--bake", "0",
        ])
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("SLOW_HOOK", "6")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = scopeguard(first);
    // Wait until the first is draining (it holds both locks by then).
    let deadline = Instant::now() + Duration::from_secs(20);
    while !calls(dir).contains("gslb-weight fra 0") {
        assert!(Instant::now() < deadline, "the first replace never drained");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = metalherd(
        dir,
        &["replace", "site", "ber", "--force", "--reason", "test"],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let said = text(&out.stderr);
    assert!(
        said.contains("fleet is locked by") || said.contains("locked by"),
        "{said}"
    );
    assert!(
        said.contains("replace site fra"),
        "the holder is not named: {said}"
    );
    assert!(!calls(dir).contains("gslb-weight ber"), "ber was drained");
    let _ = first.0.wait();
}

/// Kills the child when the test ends, whatever happens.
struct Guard(std::process::Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
fn scopeguard(c: std::process::Child) -> Guard {
    Guard(c)
}

#[test]
fn rebuild_stops_at_the_first_failure_and_never_touches_the_next_sites() {
    let fleet = fleet_with_hooks(&[]);
    let dir = fleet.path();
    let yaml = dir.join("inventory/fleet.yaml");
    let mut text_yaml = std::fs::read_to_string(&yaml).unwrap();
    text_yaml.push_str("rebuild:\n  waves: [[ber], [fra], [muc]]\n  bake: 0s\n");
    std::fs::write(&yaml, text_yaml).unwrap();

    // Blocked (nothing provisioned elsewhere): the first wave is refused,
    // nothing is drained, exit 4 for the scheduler.
    let out = metalherd(dir, &["--output", "json", "rebuild", "--all"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    let doc = json(&out);
    assert_eq!(doc["waves"], serde_json::json!([["ber"], ["fra"], ["muc"]]));
    let status: Vec<(&str, &str)> = doc["sites"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["site"].as_str().unwrap(), s["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        status,
        [
            ("ber", "blocked"),
            ("fra", "not started"),
            ("muc", "not started")
        ]
    );
    assert!(!calls(dir).contains("gslb-weight"), "{}", calls(dir));

    // Forced: the first wave's site fails after its drain (its BMCs are not
    // reachable here); the run stops, ber stays drained, fra and muc are
    // never touched. Exit 1, and a JSON summary saying so.
    let out = Command::new(env!("CARGO_BIN_EXE_metalherd"))
        .args([
            "--output",
            "json",
            "rebuild",
            "--all",
            "--force",
            "--reason",
            "nightly test",
            "--step-timeout",
            "3",
        ])
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("BER_BMC_CREDENTIALS", "admin:x")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let doc = json(&out);
    let sites = doc["sites"].as_array().unwrap();
    assert_eq!(sites[0]["site"], "ber");
    assert_eq!(sites[0]["status"], "failed");
    assert!(
        sites[0]["error"].as_str().unwrap().contains("ber-cp-01"),
        "{doc}"
    );
    assert_eq!(sites[1]["status"], "not started");
    assert_eq!(sites[2]["status"], "not started");
    assert_eq!(doc["stopped"]["status"], "failed");
    let log = calls(dir);
    assert_eq!(log.matches("gslb-weight ber 0").count(), 1, "{log}");
    assert!(
        !log.contains("gslb-weight ber 100"),
        "ber restored after a failure: {log}"
    );
    assert!(
        !log.contains("gslb-weight fra") && !log.contains("gslb-weight muc"),
        "{log}"
    );
    let out = metalherd(dir, &["--output", "json", "state", "show"]);
    let state = json(&out);
    for s in state["sites"].as_array().unwrap() {
        let drained = !s["drained"].is_null();
        assert_eq!(drained, s["name"] == "ber", "{s}");
    }
}

#[test]
fn quarantined_machines_are_refused_by_every_command_until_released() {
    let fleet = fleet_with_hooks(&[]);
    let dir = fleet.path();
    // What `lockdown` records (written here directly: the local backend's
    // object for machines/fra-cp-02).
    let state = dir.join(".metalherd/state/machines");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(
        state.join("fra-cp-02"),
        r#"{"state":"quarantined","since":"2026-11-23T10:00:00Z","generation":1}"#,
    )
    .unwrap();
    let env = [("FRA_BMC_CREDENTIALS", "admin:x")];
    for args in [
        &["power", "off", "fra-cp-02"][..],
        &["power", "pxe-once", "--site", "fra"][..],
        &["provision", "site", "fra"][..],
        &[
            "replace", "site", "fra", "--force", "--reason", "t", "--bake", "0",
        ][..],
        &["rebuild", "--sites", "fra", "--force", "--reason", "t"][..],
        &["drill", "site", "fra", "--force", "--reason", "t"][..],
    ] {
        let out = super::metalherd_env(dir, args, &env);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{args:?}: {}",
            text(&out.stderr)
        );
        let said = text(&out.stderr) + &text(&out.stdout);
        assert!(
            said.contains("quarantined machine(s) fra-cp-02"),
            "{args:?}: {said}"
        );
    }
    assert!(
        !calls(dir).contains("gslb-weight"),
        "drained: {}",
        calls(dir)
    );
    // Status is fine: it changes nothing.
    let out = super::metalherd_env(dir, &["power", "status", "fra-cp-02"], &env);
    assert!(
        !text(&out.stderr).contains("quarantined"),
        "{}",
        text(&out.stderr)
    );

    let out = metalherd(dir, &["release", "machine", "fra-cp-02"]);
    assert_eq!(out.status.code(), Some(2), "a reason is required");
    let out = metalherd(
        dir,
        &[
            "release",
            "machine",
            "fra-cp-02",
            "--reason",
            "INC-7: clean",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = metalherd(dir, &["--output", "json", "audit"]);
    assert!(text(&out.stdout).contains("INC-7: clean"));
    let out = super::metalherd_env(
        dir,
        &[
            "power",
            "off",
            "fra-cp-02",
            "--timeout",
            "2",
            "--retries",
            "0",
        ],
        &env,
    );
    assert!(
        !text(&out.stdout).contains("quarantined"),
        "{}",
        text(&out.stdout)
    );
    let out = metalherd(
        dir,
        &["release", "machine", "fra-cp-02", "--reason", "again"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("not quarantined"));
}

/// A drill on the example fleet, whose other sites have no cluster: the
/// isolate hook runs (the machines are left alone), the drill finds that
/// the other sites cannot carry the load, fails with exit 1, leaves the
/// site drained and cut off (no reconnect without --rebuild), and still
/// writes its report (Markdown, JSON, SVG) naming the failed step.
#[test]
fn a_drill_whose_other_sites_cannot_carry_the_load_fails_and_reports_it() {
    let fleet = fleet_with_hooks(&[]);
    let dir = fleet.path();
    let yaml = dir.join("inventory/fleet.yaml");
    let mut body = std::fs::read_to_string(&yaml).unwrap();
    body.push_str("drill:\n  isolate: \"echo isolate {site} >> calls.log\"\n  reconnect: \"echo reconnect {site} >> calls.log\"\n");
    std::fs::write(&yaml, body).unwrap();

    // Without the hooks' section, --isolate says what is missing.
    let bare = example_fleet();
    let out = metalherd(bare.path(), &["drill", "site", "ber", "--isolate"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("drill: { isolate:"),
        "{}",
        text(&out.stderr)
    );

    // Blocked first (no other site has a cluster): nothing runs.
    let out = metalherd(
        dir,
        &["--output", "json", "drill", "site", "ber", "--isolate"],
    );
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert!(json(&out)["error"]
        .as_str()
        .unwrap()
        .contains("other-sites"));
    assert!(!calls(dir).contains("isolate"), "{}", calls(dir));

    let out = metalherd(
        dir,
        &[
            "--output",
            "json",
            "drill",
            "site",
            "ber",
            "--isolate",
            "--force",
            "--reason",
            "game day",
            "--reports",
            "out/reports",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let doc = json(&out);
    assert_eq!(doc["ok"], false);
    let steps: Vec<(&str, bool)> = doc["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["ok"].as_bool().unwrap()))
        .collect();
    assert_eq!(
        steps,
        [
            ("drain", true),
            ("isolate", true),
            ("site gone", true),
            ("other sites carry", false)
        ],
        "{doc}"
    );
    assert!(
        doc["error"]
            .as_str()
            .unwrap()
            .contains("fra has no cluster generation"),
        "{doc}"
    );
    assert_eq!(
        calls(dir)
            .lines()
            .filter(|l| !l.starts_with("alarm"))
            .collect::<Vec<_>>(),
        ["gslb-weight ber 0", "isolate ber"]
    );
    let files: Vec<std::path::PathBuf> = doc["reports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().into())
        .collect();
    assert_eq!(files.len(), 3);
    for f in &files {
        assert!(f.starts_with(dir.join("out/reports")), "{f:?}");
    }
    let md = std::fs::read_to_string(&files[0]).unwrap();
    assert!(
        md.contains("| 4 | other sites carry |") && md.contains("| FAILED |"),
        "{md}"
    );
    assert!(md.contains("reason: game day"), "{md}");
    let svg = std::fs::read_to_string(&files[2]).unwrap();
    assert_eq!(svg.matches("<rect x=").count(), 4, "{svg}");
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&files[1]).unwrap()).unwrap();
    assert_eq!(saved["steps"], doc["steps"]);

    let out = metalherd(dir, &["--output", "json", "state", "show", "--site", "ber"]);
    let state = json(&out);
    assert_eq!(state["sites"][0]["drained"], "drill", "{state}");
    let out = metalherd(dir, &["--output", "json", "audit"]);
    let audit = text(&out.stdout);
    assert!(
        audit.contains("\"drill\"") && audit.contains("game day"),
        "{audit}"
    );
}
