//! Machines that metalherd can power, network-boot and bootstrap without
//! VMs: the SSH test hosts ([`super::hosts`]) plus, per machine, a BMC and
//! a firmware stand-in, and the real boot server. Used by the crash and
//! fault tests, which need `provision`, `replace` and `rebuild` end to end
//! in seconds.
//!
//! - Each named machine's site is cut to the named machines (one control
//!   plane: `control_plane_count: 1`), RAM-only, its BMCs IPMI.
//! - The BMCs are pyghmi's `fakebmc` (real IPMI over LAN; metalherd drives
//!   them through Debian's `ipmitool`), on [`BMC_HOST`] in the harness's
//!   controller namespace, one port per machine.
//! - The boot server is the real `metalherd serve` on [`BOOT_SERVER`] (the
//!   controller's address on fra's node network; the other sites' hosts
//!   reach it through the controller's routing), every site's
//!   `boot_server`.
//! - With [`Machines::start_installing`] the machines install to a disk:
//!   their firmware boots the network first unless the BMC says disk; an
//!   install stage "installs" (keeps the final config and its report
//!   secret) and reboots, and the network boot after it, told to boot the
//!   disk, is the installed system's first boot, which reports.
//! - A firmware stand-in per machine watches its BMC's power events. Power
//!   off cuts the host ([`super::hosts::PowerCut`]: its units die, etcd's
//!   data goes, as on a RAM-only machine). On every power-on with the boot
//!   device set to PXE it consumes the one-time override and does what the
//!   machine's iPXE and first boot do, from the machine's own network
//!   namespace with curl: `/ipxe` for a one-time token (a script without
//!   one — no provisioning window — ends the boot there), the Ignition config
//!   with it, the first-boot report with the config's per-boot secret and
//!   the pinned host key's fingerprint. A boot that cannot reach the boot
//!   server is retried every second, as PXE firmware does, until it gets
//!   through or the machine's power changes again. An Ignition request the
//!   boot server refuses (403) is retried with the same URL for 30 s, as
//!   Ignition does. While `pause-<machine>` exists in the fleet directory,
//!   the stand-in waits between its `/ipxe` and its `/ignition` (the
//!   window a thief uses: [`super::theft`]). The hosts' sshd with
//!   the pinned host key is already up (the harness boots them from the
//!   rendered config), standing for the booted system.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::hosts::{Hosts, Options};
use super::{example_fleet, require, require_pip, text};

/// The boot server, on the controller's side of fra's node network.
pub const BOOT_SERVER: &str = "10.10.4.1:18080";
/// Where every BMC listens (each on its own port).
pub const BMC_HOST: &str = "10.10.4.1";
/// fakebmc's only user, for every site's `env:<SITE>_BMC_CREDENTIALS`.
const CREDENTIALS: [(&str, &str); 3] = [
    ("FRA_BMC_CREDENTIALS", "admin:password"),
    ("BER_BMC_CREDENTIALS", "admin:password"),
    ("MUC_BMC_CREDENTIALS", "admin:password"),
];

pub fn all(out: &Output) -> String {
    format!("{}{}", text(&out.stdout), text(&out.stderr))
}

pub fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", all(out)))
}

fn bmc_port(i: usize) -> u16 {
    16231 + u16::try_from(i).unwrap()
}

/// Cuts each named machine's site to the named machines (see the module
/// docs) and writes a traffic hook that logs to `calls.log`.
fn prepare_fleet(dir: &Path, names: &[&str], installs: bool) {
    let model = metalherd::fleet::load(dir).unwrap();
    let mut sites: Vec<String> = Vec::new();
    for name in names {
        let (site, _) = model.machine(name).unwrap();
        if !sites.contains(&site.name.to_string()) {
            sites.push(site.name.to_string());
        }
    }
    for site in &sites {
        let path = dir.join(format!("sites/{site}.yaml"));
        let yaml: String = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| {
                if l.starts_with("boot_server:") {
                    format!("boot_server: http://{BOOT_SERVER}\n")
                } else {
                    format!(
                        "{}\n",
                        l.replace("control_plane_count: 3", "control_plane_count: 1")
                            .replace("driver: redfish", "driver: ipmi")
                    )
                }
            })
            .collect();
        assert!(yaml.contains("driver: ipmi") && yaml.contains("control_plane_count: 1"));
        std::fs::write(&path, yaml).unwrap();
        let mut inventory = format!("site: {site}\nmachines:\n");
        for (i, name) in names.iter().enumerate() {
            let (s, m) = model.machine(name).unwrap();
            if s.name.as_str() != site {
                continue;
            }
            inventory.push_str(&format!(
                "  - name: {name}\n    role: {}\n    mac: \"{}\"\n    ip: {}\n    bmc: {{ driver: ipmi, address: \"{BMC_HOST}:{}\" }}\n",
                if name.contains("-cp-") { "control-plane" } else { "worker" },
                m.mac,
                m.ip,
                bmc_port(i)
            ));
            if installs {
                inventory.push_str("    install_disk: /dev/sda\n");
            }
        }
        std::fs::write(dir.join(format!("inventory/{site}.yaml")), inventory).unwrap();
    }
    std::fs::create_dir_all(dir.join("scripts")).unwrap();
    let hook = dir.join("scripts/gslb-weight");
    std::fs::write(
        &hook,
        "#!/bin/sh\necho \"gslb-weight $1 $2\" >> calls.log\n",
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}

/// The traffic hooks' calls so far (`gslb-weight <site> <weight>` lines).
pub fn calls(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("calls.log")).unwrap_or_default()
}

/// A process in a namespace, SIGKILLed by PID when dropped (`ip netns
/// exec` execs the program, so the child's PID is the program's).
pub struct Running(Child);

impl Running {
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What the firmware stand-ins saw, per machine.
#[derive(Default)]
struct Seen {
    power_ons: Vec<usize>,
    network_boots: Vec<usize>,
    /// Network boot attempts that could not reach the boot server.
    failed_boots: Vec<usize>,
    /// Network boots told to boot locally: outside a provisioning window.
    local_boots: Vec<usize>,
    /// Install stages run (each one a network boot that installed).
    installs: Vec<usize>,
    /// Power-ons that booted the installed system from disk, no network.
    disk_boots: Vec<usize>,
    /// Why the latest failed network boot failed.
    last_failure: Option<String>,
    busy: Vec<bool>,
    /// Power events handled so far.
    handled: Vec<usize>,
    errors: Vec<String>,
}

pub struct Firmware {
    seen: Arc<Mutex<Seen>>,
    bmc_logs: Vec<PathBuf>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Firmware {
    /// Per machine: power-ons and completed network boots so far.
    pub fn counts(&self) -> (Vec<usize>, Vec<usize>) {
        let seen = self.seen.lock().unwrap();
        assert!(seen.errors.is_empty(), "firmware: {:?}", seen.errors);
        (seen.power_ons.clone(), seen.network_boots.clone())
    }

    /// Per machine: network boot attempts that did not get through.
    pub fn failed_boots(&self) -> Vec<usize> {
        self.seen.lock().unwrap().failed_boots.clone()
    }

    /// Per machine: install stages run, and power-ons that booted the
    /// installed system from disk without the network.
    pub fn installs(&self) -> (Vec<usize>, Vec<usize>) {
        let seen = self.seen.lock().unwrap();
        assert!(seen.errors.is_empty(), "firmware: {:?}", seen.errors);
        (seen.installs.clone(), seen.disk_boots.clone())
    }

    /// Per machine: network boots the boot server sent to the local disk
    /// (no provisioning window).
    pub fn local_boots(&self) -> Vec<usize> {
        self.seen.lock().unwrap().local_boots.clone()
    }

    /// Waits until every power event the BMCs logged has been handled (as
    /// a machine finishes booting before anyone acts on it again).
    pub fn settle(&self) {
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
                assert!(
                    Instant::now() < deadline,
                    "the firmware stand-ins did not settle: power events logged {logged:?}, \
                     handled {:?}, busy {:?}, failed boots {:?} (last error: {:?}), local boots {:?}, errors {:?}",
                    seen.handled,
                    seen.busy,
                    seen.failed_boots,
                    seen.last_failure,
                    seen.local_boots,
                    seen.errors
                );
            }
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

pub fn in_ns(ns: &str, program: &str) -> Command {
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

pub fn curl(ns: &str, args: &[&str]) -> Result<String, String> {
    let out = in_ns(ns, "curl")
        .args(["-sS", "-f", "--max-time", "5"])
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

/// How one network boot ended.
enum Boot {
    /// It booted its config and reported.
    Reported,
    /// The boot server told it to boot locally (no provisioning window,
    /// or its install stage was delivered in this one).
    Local,
    /// It was served an install stage and "installed": the final config
    /// (with this report secret) is on its disk, and it reboots.
    Installed(String),
}

/// `%XX`-decodes `text` (the install stage embeds the final config so).
pub fn percent_decode(text: &str) -> String {
    let (raw, mut bytes, mut i) = (text.as_bytes(), Vec::new(), 0);
    while i < raw.len() {
        match (
            raw[i],
            text.get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok()),
        ) {
            (b'%', Some(b)) => {
                bytes.push(b);
                i += 3;
            }
            (c, _) => {
                bytes.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The report secret in an Ignition config, and the final config an
/// install stage carries (`/opt/metalherd/final.ign`), if it is one.
fn read_config(doc: &serde_json::Value) -> (Option<String>, Option<serde_json::Value>) {
    let source = |path: &str| {
        doc["storage"]["files"].as_array().and_then(|files| {
            files
                .iter()
                .find(|f| f["path"] == path)
                .and_then(|f| f["contents"]["source"].as_str())
                .and_then(|s| s.strip_prefix("data:,"))
                .map(str::to_string)
        })
    };
    let final_config = source("/opt/metalherd/final.ign")
        .and_then(|s| serde_json::from_str(&percent_decode(&s)).ok());
    (source("/etc/metalherd/report-secret"), final_config)
}

/// The first-boot report, as `metalherd-report.service` posts it.
fn report(ns: &str, machine: &str, secret: &str, fingerprint: &str) -> Result<String, String> {
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
            &format!("http://{BOOT_SERVER}/report/{machine}"),
        ],
    )
}

/// One network boot as the machine's firmware and first boot do it.
fn network_boot(
    ns: &str,
    machine: &str,
    mac: &str,
    fingerprint: &str,
    pause: &Path,
) -> Result<Boot, String> {
    let base = format!("http://{BOOT_SERVER}");
    let script = curl(ns, &[&format!("{base}/ipxe?mac={mac}")])?;
    if !script.contains("token=") {
        // Told to boot its disk or to stop: this boot ends here, as a real
        // one would.
        return Ok(Boot::Local);
    }
    let token = script
        .split("token=")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .ok_or_else(|| format!("no token in the iPXE script: {script}"))?;
    while pause.exists() {
        std::thread::sleep(Duration::from_millis(100));
    }
    let url = format!("{base}/ignition?mac={mac}&token={token}");
    let mut ignition = curl(ns, &[&url]);
    for _ in 0..30 {
        match &ignition {
            Err(e) if e.contains("403") => {
                std::thread::sleep(Duration::from_secs(1));
                ignition = curl(ns, &[&url]);
            }
            _ => break,
        }
    }
    let ignition = ignition?;
    let doc: serde_json::Value = serde_json::from_str(&ignition).map_err(|e| e.to_string())?;
    match read_config(&doc) {
        (_, Some(final_config)) => {
            let (secret, _) = read_config(&final_config);
            Ok(Boot::Installed(
                secret.ok_or("no report secret in the installed config")?,
            ))
        }
        (Some(secret), None) => {
            report(ns, machine, &secret, fingerprint)?;
            Ok(Boot::Reported)
        }
        (None, None) => Err("no report secret in the config".into()),
    }
}

/// Starts a firmware stand-in per machine (see the module docs).
fn firmware(
    hosts: &Hosts,
    fleet: &Path,
    names: &[&str],
    bmc_logs: &[PathBuf],
    installs: bool,
) -> Firmware {
    let model = metalherd::fleet::load(fleet).unwrap();
    let n = names.len();
    let seen = Arc::new(Mutex::new(Seen {
        power_ons: vec![0; n],
        network_boots: vec![0; n],
        failed_boots: vec![0; n],
        local_boots: vec![0; n],
        installs: vec![0; n],
        disk_boots: vec![0; n],
        last_failure: None,
        busy: vec![false; n],
        handled: vec![0; n],
        errors: Vec::new(),
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let (site, m) = model.machine(name).unwrap();
        let pubkey = std::fs::read_to_string(fleet.join(format!(
            ".metalherd/state/hostkeys/{}/{name}/ssh_host_ed25519_key.pub",
            site.name
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
        let pause = fleet.join(format!("pause-{name}"));
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
                        cut.apply();
                        continue;
                    }
                    seen.lock().unwrap().power_ons[i] += 1;
                    // The firmware reads the boot device and consumes a
                    // one-time override as it starts. A machine that runs
                    // from RAM boots the network only when told to (else
                    // its host is up already); one with a disk boots the
                    // network first unless told to boot the disk.
                    let flags = ipmitool(&ctl, bmc_port(i), &["chassis", "bootparam", "get", "5"]);
                    let network = flags.and_then(|f| {
                        if f.contains("Force PXE") {
                            let consumed = if installs { "none" } else { "disk" };
                            ipmitool(&ctl, bmc_port(i), &["chassis", "bootdev", consumed])
                                .map(|_| true)
                        } else {
                            Ok(installs && !f.contains("Hard-Drive"))
                        }
                    });
                    match network {
                        Ok(true) => {}
                        Ok(false) => {
                            if installs {
                                seen.lock().unwrap().disk_boots[i] += 1;
                            }
                            continue;
                        }
                        Err(e) => {
                            seen.lock().unwrap().errors.push(format!("{machine}: {e}"));
                            continue;
                        }
                    }
                    let power = power_events(&log).len();
                    let mut installed: Option<String> = None;
                    loop {
                        match network_boot(&ns, &machine, &mac, &fingerprint, &pause) {
                            Ok(Boot::Reported) => {
                                seen.lock().unwrap().network_boots[i] += 1;
                                break;
                            }
                            Ok(Boot::Installed(secret)) => {
                                // The install reboots the machine: its
                                // firmware boots the network first again.
                                let mut seen = seen.lock().unwrap();
                                seen.installs[i] += 1;
                                if installed.is_some() {
                                    seen.errors.push(format!(
                                        "{machine}: installed twice in one boot (a loop)"
                                    ));
                                    break;
                                }
                                installed = Some(secret);
                                continue;
                            }
                            Ok(Boot::Local) => {
                                let mut seen = seen.lock().unwrap();
                                seen.local_boots[i] += 1;
                                // Booting the disk: the installed system's
                                // first boot reports.
                                if let Some(secret) = installed.take() {
                                    match report(&ns, &machine, &secret, &fingerprint) {
                                        Ok(_) => seen.network_boots[i] += 1,
                                        Err(e) => {
                                            seen.errors.push(format!("{machine}: report: {e}"))
                                        }
                                    }
                                }
                                break;
                            }
                            Err(e) => {
                                let mut seen = seen.lock().unwrap();
                                seen.failed_boots[i] += 1;
                                seen.last_failure = Some(format!("{machine}: {e}"));
                            }
                        }
                        std::thread::sleep(Duration::from_secs(1));
                        if stop.load(Ordering::SeqCst) || power_events(&log).len() != power {
                            break;
                        }
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

/// The harness; everything it started stops when it is dropped.
pub struct Machines {
    pub fleet: tempfile::TempDir,
    pub hosts: Hosts,
    bmcs: Vec<Running>,
    _serve: Running,
    pub firmware: Firmware,
    names: Vec<String>,
}

impl Machines {
    /// Cuts the example fleet's sites to `names` and starts their hosts,
    /// BMCs and firmware stand-ins, and the boot server.
    pub fn start(names: &[&str]) -> Machines {
        Machines::start_with(names, false)
    }

    /// Like [`Machines::start`], the machines installing to a disk
    /// (`install_disk`) behind firmware that boots the network first.
    pub fn start_installing(names: &[&str]) -> Machines {
        Machines::start_with(names, true)
    }

    fn start_with(names: &[&str], installs: bool) -> Machines {
        let fakebmc = require_pip("fakebmc", "pyghmi");
        require("ipmitool", "ipmitool");
        require("curl", "curl");
        require("nsenter", "util-linux");
        let fleet = example_fleet();
        let f = fleet.path();
        prepare_fleet(f, names, installs);
        let hosts = Hosts::start(f, names, &Options::default());
        let ctl = hosts.ctl_namespace().to_string();
        let logs = tempfile::tempdir().unwrap().keep();
        let mut bmcs = Vec::new();
        let mut bmc_logs = Vec::new();
        for i in 0..names.len() {
            let log = logs.join(format!("bmc-{i}.log"));
            bmcs.push(start_bmc(&ctl, &fakebmc, i, &log));
            bmc_logs.push(log);
        }
        let serve_log = f.join("serve.log");
        let serve = hosts
            .ctl_command(env!("CARGO_BIN_EXE_metalherd"))
            .arg("--fleet")
            .arg(f)
            .args(["serve", "--listen", BOOT_SERVER])
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
        for i in 0..names.len() {
            wait_for_bmc(&ctl, i);
        }
        let firmware = firmware(&hosts, f, names, &bmc_logs, installs);
        Machines {
            fleet,
            hosts,
            bmcs,
            _serve: serve,
            firmware,
            names: names.iter().map(|n| n.to_string()).collect(),
        }
    }

    /// What `machine`'s BMC says its boot device is (`ipmitool chassis
    /// bootparam get 5`).
    pub fn boot_device(&self, machine: &str) -> String {
        ipmitool(
            self.hosts.ctl_namespace(),
            bmc_port(self.index(machine)),
            &["chassis", "bootparam", "get", "5"],
        )
        .unwrap()
    }

    pub fn index(&self, machine: &str) -> usize {
        self.names.iter().position(|n| n == machine).unwrap()
    }

    /// The PID of `machine`'s BMC (for a hook to stop it mid-operation).
    pub fn bmc_pid(&self, machine: &str) -> u32 {
        self.bmcs[self.index(machine)].0.id()
    }

    /// Starts `machine`'s BMC again after it was stopped (a fresh one:
    /// power off), logging to the same file.
    pub fn start_bmc(&mut self, machine: &str) {
        let i = self.index(machine);
        let ctl = self.hosts.ctl_namespace().to_string();
        let log = self.firmware.bmc_logs[i].clone();
        self.bmcs[i].kill();
        self.bmcs[i] = start_bmc(&ctl, &require_pip("fakebmc", "pyghmi"), i, &log);
        wait_for_bmc(&ctl, i);
    }

    /// Runs metalherd in the controller namespace with the BMC credentials.
    pub fn metalherd(&self, args: &[&str]) -> Output {
        self.hosts.metalherd_env(args, &CREDENTIALS)
    }

    /// A metalherd command in the controller namespace with the BMC
    /// credentials, to spawn.
    pub fn metalherd_command(&self, args: &[&str]) -> Command {
        let f = self.fleet.path();
        let mut cmd = self.hosts.ctl_command(env!("CARGO_BIN_EXE_metalherd"));
        cmd.arg("--fleet")
            .arg(f)
            .args(args)
            .current_dir(f)
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(CREDENTIALS);
        cmd
    }

    /// `state show --site <site>`'s record of the site.
    pub fn site_record(&self, site: &str) -> serde_json::Value {
        let out = self.metalherd(&["--output", "json", "state", "show", "--site", site]);
        assert!(out.status.success(), "{}", all(&out));
        let doc = json(&out);
        let record = doc["sites"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == site)
            .cloned();
        record.unwrap_or(serde_json::Value::Null)
    }
}

fn start_bmc(ctl: &str, fakebmc: &Path, i: usize, log: &Path) -> Running {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let child = in_ns(ctl, fakebmc.to_str().unwrap())
        .args(["--port", &bmc_port(i).to_string()])
        .env("PYTHONUNBUFFERED", "1")
        .stdout(out)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Running(child)
}

fn wait_for_bmc(ctl: &str, i: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while let Err(e) = ipmitool(ctl, bmc_port(i), &["chassis", "power", "status"]) {
        assert!(Instant::now() < deadline, "fakebmc {i} did not start: {e}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
