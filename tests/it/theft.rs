//! The theft the boot server's token revocation is for, end to end on
//! [`super::machines`]: someone on the provisioning network who knows a
//! machine's MAC (MACs are on every switch) asks `/ipxe` for it and, while
//! the machine's firmware is between its own `/ipxe` and `/ignition`,
//! fetches the machine's Ignition first. The machine's own request is then
//! refused, and `provision` fails that machine naming the address its
//! config went to; the boot server counts and flags it.

use std::time::{Duration, Instant};

use super::machines::{all, curl, Machines, BOOT_SERVER};

fn machine_status(ctl: &str, name: &str) -> serde_json::Value {
    let doc = curl(ctl, &[&format!("http://{BOOT_SERVER}/api/v1/machines")]).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&doc).unwrap();
    doc["machines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["machine"] == name)
        .cloned()
        .unwrap()
}

#[test]
fn provision_fails_a_machine_whose_config_was_taken_first_naming_the_taker() {
    let m = Machines::start(&["fra-cp-01", "fra-wk-01"]);
    let fleet = m.fleet.path();
    let ctl = m.hosts.ctl_namespace().to_string();
    let model = metalherd::fleet::load(fleet).unwrap();
    let mac = model.machine("fra-wk-01").unwrap().1.mac.to_string();
    let pause = fleet.join("pause-fra-wk-01");
    std::fs::write(&pause, "").unwrap();

    let provision = m
        .metalherd_command(&[
            "provision",
            "site",
            "fra",
            "--boot-timeout",
            "60",
            "--ready-timeout",
            "90",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();

    // The worker's firmware has its token and waits before its Ignition.
    let deadline = Instant::now() + Duration::from_secs(90);
    while machine_status(&ctl, "fra-wk-01")["stage"] != "ipxe-served" {
        assert!(Instant::now() < deadline, "fra-wk-01 never asked /ipxe");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The thief, from the controller's address, asks for the same MAC and
    // takes the config first.
    let base = format!("http://{BOOT_SERVER}");
    let script = curl(&ctl, &[&format!("{base}/ipxe?mac={mac}")]).unwrap();
    let token = script
        .split("token=")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .unwrap()
        .to_string();
    let taken = curl(&ctl, &[&format!("{base}/ignition?mac={mac}&token={token}")]).unwrap();
    assert!(taken.contains("\"ignition\""), "{taken}");
    let thief = BOOT_SERVER.split(':').next().unwrap();
    std::fs::remove_file(&pause).unwrap();

    let out = provision.wait_with_output().unwrap();
    let said = all(&out);
    assert!(!out.status.success(), "provision passed: {said}");
    for expected in [
        "fra-wk-01",
        &format!("token revoked: the machine's Ignition was already delivered to {thief}"),
        &format!(
            "fra-wk-01 (boot): its Ignition was delivered to {thief}, and the boot server refused"
        ),
        &format!("clients involved: {thief}, 10.10.4.14; treat this machine's host key as exposed"),
    ] {
        assert!(said.contains(expected), "{expected:?} not in: {said}");
    }
    let wk = machine_status(&ctl, "fra-wk-01");
    assert_eq!(wk["possible_theft"], true, "{wk}");
    assert_eq!(wk["ignition_client"], thief, "{wk}");
    // The control plane booted as if nothing happened.
    let cp = machine_status(&ctl, "fra-cp-01");
    assert_eq!(cp["possible_theft"], false, "{cp}");
    assert_ne!(cp["stage"], "ignition-refused", "{cp}");
    // The counter counts refused requests: the stand-in retries a refused
    // Ignition request as Ignition does, and may boot again within the
    // window, so a loaded host can see more than one (CI saw 2).
    let metrics = curl(&ctl, &[&format!("{base}/metrics")]).unwrap();
    let thefts: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("metalherd_ignition_possible_thefts_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no theft counter: {metrics}"));
    assert!(thefts >= 1.0, "{metrics}");
}
