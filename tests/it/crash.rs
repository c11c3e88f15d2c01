//! Crash safety: `provision` and `replace` killed with SIGKILL at every
//! journaled step in turn, on the SSH test hosts ([`super::hosts`]).
//!
//! The site is fra cut to one control plane and one worker, RAM-only. Its
//! BMCs are pyghmi's `fakebmc` (real IPMI over LAN, driven by metalherd
//! through Debian's `ipmitool`), its boot server the real `metalherd
//! serve`, all in the harness's controller namespace. A firmware stand-in
//! per machine watches its BMC: on every power-on with the boot device set
//! to PXE it does what the machine's iPXE and first boot do, from the
//! machine's own network namespace with curl: `/ipxe` for a one-time token,
//! the Ignition config with it, and the first-boot report with the config's
//! per-boot secret and the pinned host key's fingerprint; then it clears
//! the one-time boot device. The hosts' sshd with the pinned host key is
//! already up (the harness boots them from the rendered final config).
//!
//! A debug build stops at `METALHERD_CRASH_AT=<kind>:<step>:end` (the
//! step's work done, its end not yet journaled: the worst moment) and the
//! test SIGKILLs it there. Then, for each step:
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
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use super::hosts::{Hosts, Options};
use super::{example_fleet, require, require_pip, text};

const MACHINES: [&str; 2] = ["fra-cp-01", "fra-wk-01"];
/// The boot server, on the controller's side of the node network.
const BOOT_SERVER: &str = "10.10.4.1:18080";
const BMC_HOST: &str = "10.10.4.1";
const CREDENTIALS: (&str, &str) = ("FRA_BMC_CREDENTIALS", "admin:password");

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

fn all(out: &Output) -> String {
    format!("{}{}", text(&out.stdout), text(&out.stderr))
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", all(out)))
}

fn bmc_port(i: usize) -> u16 {
    16231 + u16::try_from(i).unwrap()
}

/// fra: one control plane, one worker, RAM-only, IPMI BMCs on the
/// controller, the boot server on the node network's gateway address.
fn prepare_fleet(dir: &Path) {
    let model = metalherd::fleet::load(dir).unwrap();
    let site = dir.join("sites/fra.yaml");
    let yaml = std::fs::read_to_string(&site)
        .unwrap()
        .replace("control_plane_count: 3", "control_plane_count: 1")
        .replace(
            "boot_server: http://10.10.0.2:8080",
            &format!("boot_server: http://{BOOT_SERVER}"),
        )
        .replace("driver: redfish", "driver: ipmi");
    assert!(yaml.contains(BOOT_SERVER) && yaml.contains("driver: ipmi"));
    std::fs::write(&site, yaml).unwrap();
    let mut inventory = String::from("site: fra\nmachines:\n");
    for (i, name) in MACHINES.iter().enumerate() {
        let (_, m) = model.machine(name).unwrap();
        inventory.push_str(&format!(
            "  - name: {name}\n    role: {}\n    mac: \"{}\"\n    ip: {}\n    bmc: {{ driver: ipmi, address: \"{BMC_HOST}:{}\" }}\n",
            if name.contains("-cp-") { "control-plane" } else { "worker" },
            m.mac,
            m.ip,
            bmc_port(i)
        ));
    }
    std::fs::write(dir.join("inventory/fra.yaml"), inventory).unwrap();
    std::fs::create_dir_all(dir.join("scripts")).unwrap();
    let hook = dir.join("scripts/gslb-weight");
    std::fs::write(
        &hook,
        "#!/bin/sh\necho \"gslb-weight $1 $2\" >> calls.log\n",
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}

fn calls(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("calls.log")).unwrap_or_default()
}

/// A process in a namespace, SIGKILLed by PID when dropped (`ip netns
/// exec` execs the program, so the child's PID is the program's).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What the firmware stand-ins saw, per machine.
#[derive(Default)]
struct Seen {
    power_ons: Vec<usize>,
    network_boots: Vec<usize>,
    busy: Vec<bool>,
    /// Power events handled so far.
    handled: Vec<usize>,
    errors: Vec<String>,
}

struct Firmware {
    seen: Arc<Mutex<Seen>>,
    bmc_logs: Vec<PathBuf>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Firmware {
    fn counts(&self) -> (Vec<usize>, Vec<usize>) {
        let seen = self.seen.lock().unwrap();
        assert!(seen.errors.is_empty(), "firmware: {:?}", seen.errors);
        (seen.power_ons.clone(), seen.network_boots.clone())
    }

    /// Waits until every power-on the BMCs logged has been handled (as a
    /// machine finishes booting before anyone acts on it again).
    fn settle(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let logged: Vec<usize> = self
                .bmc_logs
                .iter()
                .map(|l| power_events(l).len())
                .collect();
            {
                let seen = self.seen.lock().unwrap();
                if seen.handled == logged && !seen.busy.contains(&true) {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the firmware stand-ins did not settle"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Firmware {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn in_ns(ns: &str, program: &str) -> Command {
    let mut cmd = Command::new(require("ip", "iproute2"));
    cmd.args(["netns", "exec", ns, program]);
    cmd
}

fn ipmitool(ctl: &str, port: u16, args: &[&str]) -> Result<String, String> {
    let out = in_ns(ctl, "ipmitool")
        .args(["-I", "lanplus", "-H", BMC_HOST, "-p", &port.to_string()])
        .args(["-U", "admin", "-P", "password"])
        .args(args)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(text(&out.stdout))
    } else {
        Err(all(&out))
    }
}

fn curl(ns: &str, args: &[&str]) -> Result<String, String> {
    let out = in_ns(ns, "curl")
        .args(["-sS", "-f", "--max-time", "10"])
        .args(args)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(text(&out.stdout))
    } else {
        Err(all(&out))
    }
}

const POWER_ON: &str = "powered on";
const POWER_OFF: &str = "abruptly remove power";

/// What fakebmc did to the machine's power, in order.
fn power_events(log: &Path) -> Vec<&'static str> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| match l.trim() {
            POWER_ON => Some(POWER_ON),
            POWER_OFF => Some(POWER_OFF),
            _ => None,
        })
        .collect()
}

/// One network boot as the machine's firmware and first boot do it.
fn network_boot(ns: &str, machine: &str, mac: &str, fingerprint: &str) -> Result<(), String> {
    let base = format!("http://{BOOT_SERVER}");
    let script = curl(ns, &[&format!("{base}/ipxe?mac={mac}")])?;
    let token = script
        .split("token=")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .ok_or_else(|| format!("no token in the iPXE script: {script}"))?;
    let ignition = curl(ns, &[&format!("{base}/ignition?mac={mac}&token={token}")])?;
    let doc: serde_json::Value = serde_json::from_str(&ignition).map_err(|e| e.to_string())?;
    let secret = doc["storage"]["files"]
        .as_array()
        .and_then(|files| {
            files
                .iter()
                .find(|f| f["path"] == "/etc/metalherd/report-secret")
        })
        .and_then(|f| f["contents"]["source"].as_str())
        .and_then(|s| s.strip_prefix("data:,"))
        .ok_or("no report secret in the config")?
        .to_string();
    curl(
        ns,
        &[
            "-X",
            "POST",
            "-H",
            &format!("Authorization: Bearer {secret}"),
            "-H",
            "Content-Type: application/json",
            "--data",
            &format!("{{\"host_key_fingerprint\":\"{fingerprint}\"}}"),
            &format!("{base}/report/{machine}"),
        ],
    )?;
    Ok(())
}

/// Starts a firmware stand-in per machine (see the module docs).
fn firmware(hosts: &Hosts, fleet: &Path, bmc_logs: &[PathBuf]) -> Firmware {
    let model = metalherd::fleet::load(fleet).unwrap();
    let seen = Arc::new(Mutex::new(Seen {
        power_ons: vec![0; MACHINES.len()],
        network_boots: vec![0; MACHINES.len()],
        busy: vec![false; MACHINES.len()],
        handled: vec![0; MACHINES.len()],
        errors: Vec::new(),
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for (i, name) in MACHINES.iter().enumerate() {
        let (_, m) = model.machine(name).unwrap();
        let pubkey = std::fs::read_to_string(fleet.join(format!(
            ".metalherd/state/hostkeys/fra/{name}/ssh_host_ed25519_key.pub"
        )))
        .unwrap();
        let fingerprint = ssh_key::PublicKey::from_openssh(pubkey.trim())
            .unwrap()
            .fingerprint(ssh_key::HashAlg::Sha256)
            .to_string();
        let (ctl, ns) = (
            hosts.ctl_namespace().to_string(),
            hosts.host_namespace(name).to_string(),
        );
        let (machine, mac, log) = (name.to_string(), m.mac.to_string(), bmc_logs[i].clone());
        let cut = hosts.power_cut(name);
        let (seen, stop) = (seen.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let mut handled = 0;
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(100));
                let events = power_events(&log);
                if events.len() == handled {
                    continue;
                }
                seen.lock().unwrap().busy[i] = true;
                for event in &events[handled..] {
                    if *event == POWER_OFF {
                        let killed = cut.apply();
                        eprintln!("{machine}: power cut; killed {killed:?}");
                        continue;
                    }
                    seen.lock().unwrap().power_ons[i] += 1;
                    // The firmware reads the boot device and consumes a
                    // one-time override as it starts.
                    let device = ipmitool(&ctl, bmc_port(i), &["chassis", "bootparam", "get", "5"]);
                    let booted = match device {
                        Ok(d) if d.contains("Force PXE") => {
                            ipmitool(&ctl, bmc_port(i), &["chassis", "bootdev", "disk"])
                                .and_then(|_| network_boot(&ns, &machine, &mac, &fingerprint))
                                .map(|()| true)
                        }
                        Ok(_) => Ok(false), // a disk boot: the host is up already
                        Err(e) => Err(e),
                    };
                    let mut seen = seen.lock().unwrap();
                    match booted {
                        Ok(true) => seen.network_boots[i] += 1,
                        Ok(false) => {}
                        Err(e) => seen.errors.push(format!("{machine}: boot: {e}")),
                    }
                }
                handled = events.len();
                let mut seen = seen.lock().unwrap();
                seen.handled[i] = handled;
                seen.busy[i] = false;
            }
        }));
    }
    Firmware {
        seen,
        bmc_logs: bmc_logs.to_vec(),
        stop,
        threads,
    }
}

struct Site {
    fleet: tempfile::TempDir,
    hosts: Hosts,
    _bmcs: Vec<Running>,
    _serve: Running,
    firmware: Firmware,
}

fn setup() -> Site {
    let fakebmc = require_pip("fakebmc", "pyghmi");
    require("ipmitool", "ipmitool");
    require("curl", "curl");
    let fleet = example_fleet();
    let f = fleet.path();
    prepare_fleet(f);
    let hosts = Hosts::start(f, &MACHINES, &Options::default());
    let ctl = hosts.ctl_namespace().to_string();
    let logs = tempfile::tempdir().unwrap().keep();
    let mut bmcs = Vec::new();
    let mut bmc_logs = Vec::new();
    for i in 0..MACHINES.len() {
        let log = logs.join(format!("bmc-{i}.log"));
        let child = in_ns(&ctl, fakebmc.to_str().unwrap())
            .args(["--port", &bmc_port(i).to_string()])
            .env("PYTHONUNBUFFERED", "1")
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        bmcs.push(Running(child));
        bmc_logs.push(log);
    }
    let serve_log = f.join("serve.log");
    let serve = hosts
        .ctl_command(env!("CARGO_BIN_EXE_metalherd"))
        .arg("--fleet")
        .arg(f)
        .args(["serve", "--listen", BOOT_SERVER, "--site", "fra"])
        .current_dir(f)
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&serve_log).unwrap())
        .spawn()
        .unwrap();
    let serve = Running(serve);
    let deadline = Instant::now() + Duration::from_secs(30);
    while curl(&ctl, &[&format!("http://{BOOT_SERVER}/healthz")]).is_err() {
        assert!(
            Instant::now() < deadline,
            "serve did not start: {}",
            std::fs::read_to_string(&serve_log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for i in 0..MACHINES.len() {
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Err(e) = ipmitool(&ctl, bmc_port(i), &["chassis", "power", "status"]) {
            assert!(Instant::now() < deadline, "fakebmc {i} did not start: {e}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let firmware = firmware(&hosts, f, &bmc_logs);
    Site {
        fleet,
        hosts,
        _bmcs: bmcs,
        _serve: serve,
        firmware,
    }
}

/// Runs metalherd in the controller namespace with the BMC credentials.
fn metalherd(site: &Site, args: &[&str]) -> Output {
    site.hosts.metalherd_env(args, &[CREDENTIALS])
}

/// Starts `args` with the crash point at the end of `kind`'s `step`, waits
/// until it stops there and SIGKILLs it.
fn kill_at(site: &Site, kind: &str, step: &str, args: &[&str]) {
    let f = site.fleet.path();
    let mut child = site
        .hosts
        .ctl_command(env!("CARGO_BIN_EXE_metalherd"))
        .arg("--fleet")
        .arg(f)
        .args(args)
        .current_dir(f)
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env(CREDENTIALS.0, CREDENTIALS.1)
        .env("METALHERD_CRASH_AT", format!("{kind}:{step}:end"))
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

fn history_op(site: &Site, kind: &str) -> serde_json::Value {
    let out = metalherd(site, &["--output", "json", "state", "history"]);
    assert!(out.status.success(), "state history: {}", all(&out));
    let doc = json(&out);
    doc["operations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["kind"] == kind && o["target"] == "site/fra")
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
fn after_kill(site: &Site, kind: &str, steps: &[&str], k: usize) {
    for args in [
        &["--output", "json", "state", "show"][..],
        &["--output", "json", "state", "locks"][..],
        &["--output", "json", "audit"][..],
    ] {
        let out = metalherd(site, args);
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

    let out = metalherd(site, &["--output", "json", "state", "locks"]);
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
    for lock in &locks {
        let out = metalherd(
            site,
            &[
                "state",
                "unlock",
                lock,
                "--force",
                "--reason",
                "crash test: holder SIGKILLed",
            ],
        );
        assert!(out.status.success(), "unlock {lock}: {}", all(&out));
    }
}

/// The rerun's journal: `steps[..k]` not run again, `steps[k..]` run once.
fn check_resumed(site: &Site, kind: &str, steps: &[&str], k: usize, out: &Output) {
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
fn check_power(site: &Site, step: &str, ons_before: &[usize], boots_before: &[usize]) {
    let (ons, boots) = site.firmware.counts();
    let want = 1 + usize::from(step == "power on");
    for (i, m) in MACHINES.iter().enumerate() {
        assert_eq!(
            ons[i] - ons_before[i],
            want,
            "{m}: power-ons, killed at {step}"
        );
        assert_eq!(
            boots[i] - boots_before[i],
            want,
            "{m}: network boots, killed at {step}"
        );
    }
}

fn site_record(site: &Site) -> serde_json::Value {
    let out = metalherd(
        site,
        &["--output", "json", "state", "show", "--site", "fra"],
    );
    assert!(out.status.success(), "{}", all(&out));
    json(&out)
}

/// The converged state: `generation` recorded, not drained, every machine
/// ready in it.
fn check_converged(site: &Site, generation: u64) {
    let doc = site_record(site);
    let record = &doc["sites"][0];
    assert_eq!(record["name"], "fra", "{doc}");
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
fn ca_of(site: &Site, generation: u64) -> Vec<(PathBuf, Vec<u8>)> {
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
    let site = setup();
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

    // provision: the same generation each time, killed at each step.
    for (k, step) in PROVISION_STEPS.iter().enumerate() {
        let started = Instant::now();
        let (ons_before, boots_before) = site.firmware.counts();
        kill_at(&site, "provision", step, &provision);
        after_kill(&site, "provision", &PROVISION_STEPS, k);
        let ca_killed = (k >= 2).then(|| ca_of(&site, 1));
        let out = metalherd(&site, &provision);
        site.firmware.settle();
        check_resumed(&site, "provision", &PROVISION_STEPS, k, &out);
        check_converged(&site, 1);
        check_power(&site, step, &ons_before, &boots_before);
        if let Some(ca) = ca_killed {
            assert_eq!(
                ca_of(&site, 1),
                ca,
                "the PKI changed after a kill at {step}"
            );
        }
        eprintln!(
            "provision killed at {step:?}: resumed and converged in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }

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
    for (k, step) in REPLACE_STEPS.iter().enumerate() {
        let started = Instant::now();
        let generation = u64::try_from(k).unwrap() + 2;
        let drains = calls(&f).matches("gslb-weight fra 0").count();
        let restores = calls(&f).matches("gslb-weight fra 100").count();
        let (ons_before, boots_before) = site.firmware.counts();
        kill_at(&site, "replace", step, &replace);
        after_kill(&site, "replace", &REPLACE_STEPS, k);
        let pki_done = k >= REPLACE_STEPS.iter().position(|s| *s == "pki").unwrap();
        let ca_killed = pki_done.then(|| ca_of(&site, generation));
        let out = metalherd(&site, &replace);
        site.firmware.settle();
        check_resumed(&site, "replace", &REPLACE_STEPS, k, &out);
        check_converged(&site, generation);
        check_power(&site, step, &ons_before, &boots_before);
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
        assert_eq!(drained, 1 + usize::from(*step == "drain"), "{}", calls(&f));
        let restored = calls(&f).matches("gslb-weight fra 100").count() - restores;
        assert_eq!(
            restored,
            1 + usize::from(*step == "restore"),
            "{}",
            calls(&f)
        );
        eprintln!(
            "replace to generation {generation} killed at {step:?}: resumed and converged in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
}
