//! Hundreds of machines in one site, on [`super::hosts`]: the cheapest
//! shape that still runs every real program metalherd talks to.
//!
//! - Site fra of the example fleet is rewritten to `Shape::machines`
//!   machines ([`layout`]): three control planes, about one spare in 30,
//!   the rest workers, RAM-only, each with a Redfish BMC. With
//!   [`Shape::other_sites`], ber and muc become small healthy sites of
//!   three control planes and a worker each ([`small_site`]), started the
//!   same way and provisioned by the caller, so that `replace` and `drill`
//!   pass their safety checks without `--force`; otherwise they stay as
//!   they are and are never started.
//! - Each machine but the spares is a test host (namespace, real Ignition,
//!   real sshd with the pinned host key).
//! - One `sushy-emulator` (fake driver, basic auth) in the controller
//!   namespace on [`SUSHY`] serves every system by UUID. Its change
//!   notifications drive the firmware stand-ins ([`firmware`]): one thread
//!   per machine in the machine's namespace, a jittered boot delay, then
//!   iPXE, Ignition and the first-boot report against the real boot
//!   server (`metalherd serve` on [`BOOT_SERVER`]).
//! - Faults: a refusing BMC is an address where nothing listens
//!   ([`REFUSING_BMC`]); a silent one a socket the harness holds open and
//!   never accepts from ([`SILENT_BMC`]): requests time out; a silent SSH
//!   host drops port 22 with nft in its namespace
//!   ([`Hosts::ssh_silent`]). Healing a BMC points the machine's inventory
//!   entry at sushy.
//! - [`Scale::metalherd`] runs metalherd in the controller namespace and
//!   measures it: wall time, CPU time and peak RSS (GNU time when
//!   installed), the peak of SSH connections open from the controller
//!   (sampled from its `/proc/net/tcp` every 100 ms) and of power changes
//!   in flight at sushy (from its notifications).
//!
//! The CI test is bounded at 30 machines; `bench/site-scale` runs
//! [`bench`] for larger sites.

mod bench;
mod firmware;
mod http;

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::etcd_cluster::EtcdCluster;
use super::hosts::{Hosts, Options};
use super::machines::{all, json, BOOT_SERVER};
use super::{example_fleet, require_pip, text};
use firmware::{Delay, Firmware};

/// sushy-emulator, on the controller's side of fra's node network.
const SUSHY: &str = "10.10.4.1:8000";
/// Where nothing listens: a BMC that refuses connections.
const REFUSING_BMC: &str = "10.10.4.1:8001";
/// Where the harness listens and never accepts: a BMC that never answers.
const SILENT_BMC: &str = "10.10.4.1:8002";
/// The notification listener, on the controller's loopback.
const LISTENER: &str = "127.0.0.1:9999";
const CREDENTIALS: [(&str, &str); 3] = [
    ("FRA_BMC_CREDENTIALS", "admin:password"),
    ("BER_BMC_CREDENTIALS", "admin:password"),
    ("MUC_BMC_CREDENTIALS", "admin:password"),
];

/// What to build.
#[derive(Clone, Debug)]
pub struct Shape {
    /// Machines in site fra, spares included.
    pub machines: usize,
    /// A boot's time from power-on to its network boot: mean ± jitter,
    /// uniform.
    pub boot_delay: Duration,
    pub jitter: Duration,
    pub bmc_refusing: Vec<String>,
    pub bmc_silent: Vec<String>,
    pub ssh_silent: Vec<String>,
    /// The state in a three-member etcd cluster on the controller's
    /// loopback (migrated there after the hosts started), not locally.
    pub etcd: bool,
    /// ber and muc as small sites ([`small_site`]) beside fra.
    pub other_sites: bool,
}

impl Shape {
    pub fn new(machines: usize, boot_delay: Duration, jitter: Duration) -> Shape {
        Shape {
            machines,
            boot_delay,
            jitter,
            bmc_refusing: Vec::new(),
            bmc_silent: Vec::new(),
            ssh_silent: Vec::new(),
            etcd: false,
            other_sites: false,
        }
    }

    /// The issue's fault mix, on workers spread over the site: 3% of the
    /// BMCs failing (half refusing, half silent; at least one refusing)
    /// and 2% of the hosts never answering SSH (at least one).
    pub fn with_faults(mut self) -> Shape {
        let workers: Vec<String> = layout(self.machines)
            .into_iter()
            .filter(|m| m.role == "worker")
            .map(|m| m.name)
            .collect();
        let bmcs = (self.machines * 3).div_ceil(100).max(1);
        let ssh = (self.machines * 2).div_ceil(100).max(1);
        let step = workers.len() / (bmcs + ssh + 1);
        let mut picked = (1..=bmcs + ssh).map(|k| workers[k * step].clone());
        for k in 0..bmcs {
            let name = picked.next().unwrap();
            if k % 2 == 0 {
                self.bmc_refusing.push(name);
            } else {
                self.bmc_silent.push(name);
            }
        }
        self.ssh_silent.extend(picked);
        self
    }

    fn faulty(&self) -> Vec<&str> {
        let all = self.bmc_refusing.iter().chain(&self.bmc_silent);
        all.chain(&self.ssh_silent).map(String::as_str).collect()
    }
}

/// One machine of the rewritten site.
#[derive(Clone, Debug)]
pub struct Planned {
    pub site: &'static str,
    pub name: String,
    pub role: &'static str,
    pub ip: Ipv4Addr,
    pub mac: String,
    pub uuid: String,
}

/// Site fra with `n` machines: fra-cp-01..03 on 10.10.4.11-13; workers
/// `fra-wk-NNN` from 10.10.4.20 upwards (into 10.10.5.x and on, no .0 or
/// .255), then about one spare in 30 (`fra-sp-NN`).
pub fn layout(n: usize) -> Vec<Planned> {
    assert!(
        n >= 5,
        "a site of {n} machines: three control planes, a worker, a spare at least"
    );
    let spares = n.div_ceil(30);
    let workers = n - 3 - spares;
    let mut out = Vec::new();
    let mut plan = |name: String, role, ip| {
        let i = out.len() + 1;
        out.push(Planned {
            site: "fra",
            name,
            role,
            ip,
            mac: format!("52:54:01:fa:{:02x}:{:02x}", i / 256, i % 256),
            uuid: format!("5ca1e000-0000-4000-8000-{i:012}"),
        });
    };
    for k in 1..=3u8 {
        plan(
            format!("fra-cp-{k:02}"),
            "control-plane",
            Ipv4Addr::new(10, 10, 4, 10 + k),
        );
    }
    let mut next = u32::from(Ipv4Addr::new(10, 10, 4, 20));
    let mut ip = || loop {
        let candidate = Ipv4Addr::from(next);
        next += 1;
        if !matches!(candidate.octets()[3], 0 | 255) {
            assert!(
                candidate < Ipv4Addr::new(10, 10, 7, 255),
                "fra's node network is full"
            );
            return candidate;
        }
    };
    for k in 1..=workers {
        plan(format!("fra-wk-{k:03}"), "worker", ip());
    }
    for k in 1..=spares {
        plan(format!("fra-sp-{k:02}"), "spare", ip());
    }
    out
}

/// Site `site` (ber or muc) as a small healthy site: `<site>-cp-01..03`
/// and `<site>-wk-01` on .11-.14 of its node network, each with a
/// Redfish BMC at sushy.
pub fn small_site(site: &'static str) -> Vec<Planned> {
    let (number, net) = match site {
        "ber" => (1, 20),
        "muc" => (2, 30),
        other => panic!("no small site {other}"),
    };
    let roles = [
        ("cp-01", "control-plane"),
        ("cp-02", "control-plane"),
        ("cp-03", "control-plane"),
        ("wk-01", "worker"),
    ];
    roles
        .iter()
        .zip(1u8..)
        .map(|((name, role), k)| Planned {
            site,
            name: format!("{site}-{name}"),
            role,
            ip: Ipv4Addr::new(10, net, 4, 10 + k),
            mac: format!("52:54:02:{number:02x}:00:{k:02x}"),
            uuid: format!("5ca1e000-0000-4000-800{number}-{k:012}"),
        })
        .collect()
}

/// Writes the inventory of `site` for `planned` (that site's machines),
/// each machine's BMC at sushy unless `shape` makes it refusing or silent.
fn write_inventory(fleet: &Path, site: &str, planned: &[Planned], shape: &Shape) {
    let mut inventory = format!("# Rewritten by the scale harness.\nsite: {site}\nmachines:\n");
    for m in planned.iter().filter(|m| m.site == site) {
        let address = if shape.bmc_refusing.contains(&m.name) {
            REFUSING_BMC
        } else if shape.bmc_silent.contains(&m.name) {
            SILENT_BMC
        } else {
            SUSHY
        };
        inventory.push_str(&format!(
            "  - name: {}\n    role: {}\n    mac: \"{}\"\n    ip: {}\n    bmc: {{ driver: redfish, address: \"http://{address}\", system: /redfish/v1/Systems/{} }}\n",
            m.name, m.role, m.mac, m.ip, m.uuid
        ));
    }
    std::fs::write(fleet.join(format!("inventory/{site}.yaml")), inventory).unwrap();
}

/// The sites' boot server is the harness's; fra's inventory (and ber's
/// and muc's, with [`Shape::other_sites`]) is `planned`; the traffic hook
/// only logs.
fn prepare_fleet(fleet: &Path, planned: &[Planned], shape: &Shape) {
    for site in ["fra", "ber", "muc"] {
        let path = fleet.join(format!("sites/{site}.yaml"));
        let text: String = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| {
                if l.starts_with("boot_server:") {
                    format!("boot_server: http://{BOOT_SERVER}\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        assert!(
            text.contains("driver: redfish") && text.contains("control_plane_count: 3"),
            "{site}: {text}"
        );
        std::fs::write(&path, text).unwrap();
    }
    write_inventory(fleet, "fra", planned, shape);
    if shape.other_sites {
        write_inventory(fleet, "ber", planned, shape);
        write_inventory(fleet, "muc", planned, shape);
    }
    std::fs::create_dir_all(fleet.join("scripts")).unwrap();
    let hook = fleet.join("scripts/gslb-weight");
    std::fs::write(
        &hook,
        "#!/bin/sh\necho \"gslb-weight $1 $2\" >> calls.log\n",
    )
    .unwrap();
}

/// A process the harness started, SIGKILLed by PID when dropped.
struct Proc {
    child: Child,
    /// What it needs to keep (its config, its log).
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU seconds (user + system) and peak RSS (KiB) of a running process,
/// from `/proc`.
fn usage(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat; 12 and 13 after ") ".
    // The clock ticks per second are 100 on every Linux this runs on.
    let cpu = (ticks(11) + ticks(12)) / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    (cpu, hwm)
}

/// The processes in network namespaces `namespaces` (one scan of
/// `/proc`) and the sum of their proportional set sizes (KiB).
fn namespace_memory(namespaces: &[&str]) -> (usize, u64) {
    use std::os::unix::fs::MetadataExt;
    let inodes: Vec<u64> = namespaces
        .iter()
        .filter_map(|ns| std::fs::metadata(format!("/var/run/netns/{ns}")).ok())
        .map(|m| m.ino())
        .collect();
    let (mut count, mut pss) = (0, 0);
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let dir = entry.path();
        let Ok(link) = std::fs::read_link(dir.join("ns/net")) else {
            continue;
        };
        let ino = link
            .to_string_lossy()
            .trim_start_matches("net:[")
            .trim_end_matches(']')
            .parse()
            .unwrap_or(0);
        if !inodes.contains(&ino) {
            continue;
        }
        count += 1;
        pss += std::fs::read_to_string(dir.join("smaps_rollup"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("Pss:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
    }
    (count, pss)
}

/// One metalherd run and what it cost.
pub struct Run {
    pub out: Output,
    pub wall: Duration,
    /// User + system CPU seconds and peak RSS (KiB), from GNU time.
    pub cpu: Option<f64>,
    pub peak_rss_kib: Option<u64>,
    /// Peaks while it ran: SSH connections open from the controller,
    /// power changes in flight at sushy.
    pub ssh_peak: usize,
    pub bmc_peak: usize,
}

impl Run {
    pub fn json(&self) -> Value {
        json(&self.out)
    }
}

/// The harness; everything it started stops when it is dropped.
pub struct Scale {
    pub shape: Shape,
    pub planned: Vec<Planned>,
    pub firmware: Firmware,
    serve: Proc,
    sushy: Proc,
    /// Held open, never accepted from: the silent BMCs.
    _silent: Option<TcpListener>,
    /// The state's etcd cluster, with [`Shape::etcd`].
    _etcd: Option<EtcdCluster>,
    pub hosts: Hosts,
    pub fleet: tempfile::TempDir,
    /// How long starting the hosts took, and then the processes in their
    /// namespaces and the sum of their PSS (KiB).
    pub host_setup: Duration,
    pub host_memory: (usize, u64),
    /// The metalherd binary run ([`Scale::metalherd`]) and serving.
    binary: PathBuf,
}

impl Scale {
    pub fn start(shape: Shape) -> Scale {
        require_pip("sushy-emulator", "sushy-tools");
        super::require("nft", "nftables");
        let binary = std::env::var_os("SCALE_METALHERD")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_metalherd")));
        let fleet = example_fleet();
        let f = fleet.path();
        let mut planned = layout(shape.machines);
        if shape.other_sites {
            planned.extend(small_site("ber"));
            planned.extend(small_site("muc"));
        }
        prepare_fleet(f, &planned, &shape);
        if shape.etcd {
            seal_state(f);
        }
        let serving: Vec<&Planned> = planned.iter().filter(|m| m.role != "spare").collect();
        let names: Vec<&str> = serving.iter().map(|m| m.name.as_str()).collect();
        let started = Instant::now();
        let hosts = Hosts::start(f, &names, &Options::default());
        let host_setup = started.elapsed();
        let host_namespaces: Vec<&str> = names.iter().map(|n| hosts.host_namespace(n)).collect();
        let host_memory = namespace_memory(&host_namespaces);
        for name in &shape.ssh_silent {
            hosts.ssh_silent(name, true);
        }
        let ctl = hosts.ctl_namespace().to_string();
        let etcd = shape.etcd.then(|| {
            let cluster = http::in_ns(&ctl, EtcdCluster::start);
            migrate_to(&hosts, &cluster);
            cluster
        });
        let listener = http::in_ns(&ctl, || TcpListener::bind(LISTENER).unwrap());
        let silent = (!shape.bmc_silent.is_empty())
            .then(|| http::in_ns(&ctl, || TcpListener::bind(SILENT_BMC).unwrap()));
        let machines = serving
            .iter()
            .enumerate()
            .map(|(index, m)| firmware::Machine {
                index,
                name: m.name.clone(),
                uuid: m.uuid.clone(),
                mac: m.mac.clone(),
                fingerprint: fingerprint(f, m.site, &m.name),
                ns: hosts.host_namespace(&m.name).to_string(),
                cut: hosts.power_cut(&m.name),
            })
            .collect();
        let delay = Delay {
            mean: shape.boot_delay,
            jitter: shape.jitter,
        };
        let firmware = Firmware::start(listener, machines, SUSHY, delay);
        let sushy = start_sushy(&hosts, &planned);
        let serve = start_serve(&hosts, f, &binary);
        Scale {
            shape,
            planned,
            firmware,
            serve,
            sushy,
            _silent: silent,
            _etcd: etcd,
            hosts,
            fleet,
            host_setup,
            host_memory,
            binary,
        }
    }

    /// fra's machines that take part (not the spares), in the stand-ins'
    /// order (the first of them).
    pub fn serving(&self) -> Vec<&str> {
        self.planned
            .iter()
            .filter(|m| m.site == "fra" && m.role != "spare")
            .map(|m| m.name.as_str())
            .collect()
    }

    /// Runs metalherd with `args` in the controller namespace (see the
    /// module docs for what is measured).
    pub fn metalherd(&self, args: &[&str]) -> Run {
        let f = self.fleet.path();
        let rusage = tempfile::NamedTempFile::new().unwrap();
        let time = Path::new("/usr/bin/time");
        let mut cmd = if time.is_file() {
            let mut cmd = self.hosts.ctl_command(time.to_str().unwrap());
            cmd.args(["-f", "%U %S %M", "-o"])
                .arg(rusage.path())
                .arg(&self.binary);
            cmd
        } else {
            self.hosts.ctl_command(self.binary.to_str().unwrap())
        };
        cmd.arg("--fleet")
            .arg(f)
            .args(args)
            .current_dir(f)
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(CREDENTIALS);
        *self.firmware.board.in_flight_peak.lock().unwrap() = 0;
        let (stop, ssh_peak) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicUsize::new(0)),
        );
        let sampler = {
            let (ctl, stop, peak) = (
                self.hosts.ctl_namespace().to_string(),
                stop.clone(),
                ssh_peak.clone(),
            );
            std::thread::spawn(move || {
                http::enter(&ctl);
                while !stop.load(Ordering::SeqCst) {
                    peak.fetch_max(ssh_connections(), Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        let started = Instant::now();
        let out = cmd.output().expect("run metalherd");
        let wall = started.elapsed();
        stop.store(true, Ordering::SeqCst);
        sampler.join().unwrap();
        let measured = std::fs::read_to_string(rusage.path()).unwrap_or_default();
        let fields: Vec<&str> = measured
            .lines()
            .last()
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        let (cpu, peak_rss_kib) = match fields[..] {
            [user, system, rss] => (
                user.parse::<f64>()
                    .ok()
                    .zip(system.parse::<f64>().ok())
                    .map(|(u, s)| u + s),
                rss.parse().ok(),
            ),
            _ => (None, None),
        };
        let bmc_peak = *self.firmware.board.in_flight_peak.lock().unwrap();
        Run {
            out,
            wall,
            cpu,
            peak_rss_kib,
            ssh_peak: ssh_peak.load(Ordering::SeqCst),
            bmc_peak,
        }
    }

    /// The boot server's CPU seconds so far and peak RSS (KiB).
    pub fn boot_server_usage(&self) -> (f64, u64) {
        usage(self.serve.child.id())
    }

    /// sushy-emulator's CPU seconds so far and peak RSS (KiB).
    pub fn sushy_usage(&self) -> (f64, u64) {
        usage(self.sushy.child.id())
    }

    /// Heals every fault: the BMCs point at sushy, SSH answers.
    pub fn heal(&mut self) {
        for name in std::mem::take(&mut self.shape.ssh_silent) {
            self.hosts.ssh_silent(&name, false);
        }
        self.shape.bmc_refusing.clear();
        self.shape.bmc_silent.clear();
        write_inventory(self.fleet.path(), "fra", &self.planned, &self.shape);
    }

    /// Each fra machine's state in `state show` (name → state).
    pub fn machine_states(&self) -> std::collections::BTreeMap<String, String> {
        let out = self.hosts.metalherd_env(
            &["--output", "json", "state", "show", "--site", "fra"],
            &CREDENTIALS,
        );
        assert!(out.status.success(), "{}", all(&out));
        let doc = json(&out);
        let fra = doc["sites"]
            .as_array()
            .and_then(|sites| sites.iter().find(|site| site["name"] == "fra"))
            .unwrap_or_else(|| panic!("no site fra in `state show`: {doc}"));
        let machines = fra["machines"].as_array().cloned().unwrap_or_default();
        assert!(!machines.is_empty(), "no machines in `state show`: {doc}");
        machines
            .iter()
            .filter_map(|m| {
                Some((
                    m["name"].as_str()?.to_string(),
                    m["state"].as_str().unwrap_or("none").to_string(),
                ))
            })
            .collect()
    }
}

/// The local state sealed with an age identity (`state.key`), as the etcd
/// backend requires, before anything is written to it.
fn seal_state(fleet: &Path) {
    let (secret, _) = metalherd::state::crypt::Sealer::generate_identity();
    let key = fleet.join("state.key");
    std::fs::write(&key, secret.as_bytes()).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let path = fleet.join("inventory/fleet.yaml");
    let yaml = std::fs::read_to_string(&path).unwrap();
    let yaml = yaml.replacen(
        "  path: .metalherd/state",
        "  path: .metalherd/state\n  encryption_key: file:state.key",
        1,
    );
    assert!(yaml.contains("encryption_key: file:state.key"), "{yaml}");
    std::fs::write(&path, yaml).unwrap();
}

/// `state migrate --to etcd` (from the controller, where the cluster
/// listens): the keys the hosts were booted with move along.
fn migrate_to(hosts: &Hosts, cluster: &EtcdCluster) {
    let endpoints: Vec<String> = cluster.endpoints().iter().map(|u| u.to_string()).collect();
    let (ca, cert, key) = (cluster.ca_file(), cluster.cert_file(), cluster.key_file());
    let out = hosts.metalherd(&[
        "state",
        "migrate",
        "--to",
        "etcd",
        "--endpoints",
        &endpoints.join(","),
        "--ca-file",
        ca.to_str().unwrap(),
        "--cert-file",
        cert.to_str().unwrap(),
        "--key-file",
        key.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "state migrate: {}", all(&out));
}

/// SSH connections established from this thread's network namespace.
fn ssh_connections() -> usize {
    let tcp = std::fs::read_to_string("/proc/thread-self/net/tcp").unwrap_or_default();
    tcp.lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[2].ends_with(":0016") && f[3] == "01"
        })
        .count()
}

fn fingerprint(fleet: &Path, site: &str, machine: &str) -> String {
    let public = std::fs::read_to_string(fleet.join(format!(
        ".metalherd/state/hostkeys/{site}/{machine}/ssh_host_ed25519_key.pub"
    )))
    .unwrap();
    ssh_key::PublicKey::from_openssh(public.trim())
        .unwrap()
        .fingerprint(ssh_key::HashAlg::Sha256)
        .to_string()
}

/// sushy-emulator's own entry point, with `PersistentDict.connection`
/// closing its connection after use (see [`start_sushy`]).
const SUSHY_CLOSING: &str = r#"import contextlib, sqlite3, sys
from sushy_tools.emulator import memoize

@contextlib.contextmanager
def connection(self):
    if not self._dbpath:
        raise TypeError('Dict is not yet persistent')
    conn = sqlite3.connect(self._dbpath)
    try:
        with conn:
            conn.execute("pragma journal_mode=wal")
            yield conn.cursor()
    finally:
        conn.close()

memoize.PersistentDict.connection = connection
from sushy_tools.emulator.main import main
sys.argv[0] = "sushy-emulator"
sys.exit(main())
"#;

/// sushy-emulator in the controller namespace with every planned system
/// (see the module docs); returns once it answers.
fn start_sushy(hosts: &Hosts, planned: &[Planned]) -> Proc {
    let emulator = require_pip("sushy-emulator", "sushy-tools");
    let dir = tempfile::tempdir().unwrap();
    let python = emulator.with_file_name("python3");
    let hash = Command::new(&python)
        .args([
            "-c",
            "import bcrypt; print(bcrypt.hashpw(b'password', bcrypt.gensalt(rounds=4)).decode())",
        ])
        .output()
        .unwrap();
    assert!(
        hash.status.success(),
        "python3 bcrypt: {}",
        text(&hash.stderr)
    );
    std::fs::write(
        dir.path().join("htpasswd"),
        format!("admin:{}", text(&hash.stdout)),
    )
    .unwrap();
    let systems: Vec<Value> = planned
        .iter()
        .map(|m| {
            json!({ "uuid": m.uuid, "name": m.name, "power_state": "Off", "nics": [{"mac": m.mac}],
                    "external_notifier": true })
        })
        .collect();
    let conf = format!(
        "import json\nSUSHY_EMULATOR_FAKE_DRIVER = True\nSUSHY_EMULATOR_STATE_DIR = '{0}/state'\n\
         SUSHY_EMULATOR_AUTH_FILE = '{0}/htpasswd'\nEXTERNAL_NOTIFICATION_URL = 'http://{LISTENER}/'\n\
         SUSHY_EMULATOR_FAKE_SYSTEMS = json.loads('''{1}''')\n",
        dir.path().display(),
        Value::from(systems)
    );
    std::fs::write(dir.path().join("conf.py"), conf).unwrap();
    let (ip, port) = SUSHY.split_once(':').unwrap();
    let log = dir.path().join("log");
    // sushy-tools' state (`memoize.PersistentDict`) opens a SQLite
    // connection per access and leaves closing it to the garbage collector:
    // under a few hundred machines' requests it ran out of file
    // descriptors (20,000) and answered 500s. The same emulator, its
    // connections closed after use.
    std::fs::write(dir.path().join("sushy.py"), SUSHY_CLOSING).unwrap();
    let child = hosts
        .ctl_command(python.to_str().unwrap())
        .arg(dir.path().join("sushy.py"))
        .args([
            "--config",
            dir.path().join("conf.py").to_str().unwrap(),
            "-i",
            ip,
            "-p",
            port,
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let sushy = Proc {
        child,
        _dir: Some(dir),
    };
    let ctl = hosts.ctl_namespace().to_string();
    let up = http::in_ns(&ctl, || {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let answer = http::ok(
                SUSHY,
                "GET",
                "/redfish/v1/Systems",
                &[("Authorization", firmware::BASIC_AUTH)],
                None,
            );
            if answer.is_ok() || Instant::now() > deadline {
                return answer;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let listed = up.unwrap_or_else(|e| {
        panic!(
            "sushy-emulator did not start: {e}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    });
    let members: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(
        members["Members"].as_array().map(Vec::len),
        Some(planned.len()),
        "{listed}"
    );
    sushy
}

/// The real boot server in the controller namespace; returns once it
/// answers `/healthz`.
fn start_serve(hosts: &Hosts, fleet: &Path, binary: &Path) -> Proc {
    let log = fleet.join("serve.log");
    let child = hosts
        .ctl_command(binary.to_str().unwrap())
        .arg("--fleet")
        .arg(fleet)
        .args(["serve", "--listen", BOOT_SERVER])
        .current_dir(fleet)
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let serve = Proc { child, _dir: None };
    let ctl = hosts.ctl_namespace().to_string();
    let up = http::in_ns(&ctl, || {
        let deadline = Instant::now() + Duration::from_secs(60);
        while http::ok(BOOT_SERVER, "GET", "/healthz", &[], None).is_err() {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        true
    });
    assert!(
        up,
        "serve did not start: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    serve
}

/// Every machine outcome that failed in `doc`'s phases (a provision's at
/// the top, a replace's under `report`): machine, phase, error.
fn failures(doc: &Value) -> Vec<(String, String, String)> {
    phases_of(doc)
        .iter()
        .flat_map(|p| {
            let phase = p["name"].as_str().unwrap_or("?").to_string();
            p["machines"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter(|m| m["ok"] == false)
                .map(move |m| {
                    (
                        m["machine"].as_str().unwrap_or("?").to_string(),
                        phase.clone(),
                        m["error"].as_str().unwrap_or("").to_string(),
                    )
                })
        })
        .collect()
}

/// The phases of a provision (at the top) or replace (under `report`),
/// or a drill's steps: each with `name`, `duration_ms`, `ok`.
fn phases_of(doc: &Value) -> Vec<Value> {
    doc["phases"]
        .as_array()
        .or_else(|| doc["report"]["phases"].as_array())
        .or_else(|| doc["steps"].as_array())
        .cloned()
        .unwrap_or_default()
}

/// The tuning every run of the harness gets: bounded, so a fault costs
/// seconds, not the defaults' minutes.
fn tuning(shape: &Shape, step_timeout: u64) -> Vec<String> {
    let boot = shape.boot_delay + shape.jitter + Duration::from_secs(60);
    let mut args: Vec<String> = [
        "--boot-timeout".to_string(),
        boot.as_secs().to_string(),
        "--step-timeout".into(),
        step_timeout.to_string(),
        "--ready-timeout".into(),
        "120".into(),
    ]
    .into();
    if let Ok(parallel) = std::env::var("SCALE_PARALLEL") {
        args.extend(["--parallel".to_string(), parallel]);
    }
    if let Ok(parallel) = std::env::var("SCALE_BMC_PARALLEL") {
        args.extend(["--bmc-parallel".to_string(), parallel]);
    }
    args
}

fn args<'a>(head: &[&'a str], tail: &'a [String]) -> Vec<&'a str> {
    head.iter()
        .copied()
        .chain(tail.iter().map(String::as_str))
        .collect()
}

/// 30 machines in fra with three faults; ber and muc small healthy sites.
/// The provision names each faulty machine once and converges the rest;
/// the rerun after the faults heal finishes only those; then a drill
/// takes fra away and rebuilds it, passing its safety checks unforced.
#[test]
fn at_30_faults_are_named_the_rerun_finishes_and_a_drill_rebuilds_the_site() {
    let started = Instant::now();
    let workers: Vec<String> = layout(30)
        .into_iter()
        .filter(|m| m.role == "worker")
        .map(|m| m.name)
        .collect();
    let (refusing, silent_bmc, silent_ssh) =
        (workers[7].clone(), workers[13].clone(), workers[19].clone());
    let mut shape = Shape::new(30, Duration::from_secs(3), Duration::from_secs(1));
    shape.other_sites = true;
    shape.bmc_refusing.push(refusing.clone());
    shape.bmc_silent.push(silent_bmc.clone());
    shape.ssh_silent.push(silent_ssh.clone());
    let mut s = Scale::start(shape);
    eprintln!("30 machines up in {:.1} s", started.elapsed().as_secs_f64());
    let tail = tuning(&s.shape, 20);
    let provision = args(&["--output", "json", "provision", "site", "fra"], &tail);
    let first = s.metalherd(&provision);
    eprintln!(
        "provision with faults: exit {:?} in {:.1} s\n{}",
        first.out.status.code(),
        first.wall.as_secs_f64(),
        text(&first.out.stderr)
    );
    assert_eq!(first.out.status.code(), Some(1), "{}", all(&first.out));
    let doc = first.json();
    let failed = failures(&doc);
    let named = |machine: &str| -> Vec<&(String, String, String)> {
        failed.iter().filter(|f| f.0 == machine).collect()
    };
    // Each faulty machine: named once, with its step and its cause.
    let bmc = named(&refusing);
    assert!(
        bmc.len() == 1
            && bmc[0].1 == "power on"
            && bmc[0].2.contains(REFUSING_BMC)
            && bmc[0].2.to_lowercase().contains("refused"),
        "{refusing} (its BMC refuses) is named once, at power on, with the cause: {failed:#?}"
    );
    let timing_out = named(&silent_bmc);
    assert!(
        timing_out.len() == 1
            && timing_out[0].1 == "power on"
            && timing_out[0].2.contains(SILENT_BMC)
            && timing_out[0].2.contains("timed out"),
        "{silent_bmc} (its BMC never answers) is named once, at power on, with the cause: {failed:#?}"
    );
    // The report lists each machine set aside once, with its step.
    let mut aside: Vec<(String, String)> = doc["set_aside"]
        .as_array()
        .unwrap_or_else(|| panic!("no set_aside in {doc}"))
        .iter()
        .map(|a| {
            (
                a["machine"].as_str().unwrap().to_string(),
                a["step"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    aside.sort();
    let mut want = vec![
        (refusing.clone(), "power on".to_string()),
        (silent_bmc.clone(), "power on".to_string()),
        (silent_ssh.clone(), "boot".to_string()),
    ];
    want.sort();
    assert_eq!(aside, want, "{doc}");
    let ssh = named(&silent_ssh);
    assert!(
        ssh.len() == 1 && ssh[0].1 == "boot" && ssh[0].2.contains("SSH"),
        "{silent_ssh} (its SSH is silent) is named once, at boot, with the cause; \
         the other machines go on: {failed:#?}\nerror: {}",
        doc["error"]
    );
    let faulty = s
        .shape
        .faulty()
        .iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>();
    let healthy_failed: Vec<_> = failed.iter().filter(|f| !faulty.contains(&f.0)).collect();
    assert!(
        healthy_failed.is_empty(),
        "healthy machines failed: {healthy_failed:#?}"
    );
    let states = s.machine_states();
    for name in s.serving() {
        let state = states.get(name).map(String::as_str).unwrap_or("none");
        if faulty.iter().any(|f| f == name) {
            assert_ne!(state, "ready", "{name} is faulty: {states:?}");
        } else {
            assert_eq!(state, "ready", "{name}: {states:?}");
        }
    }

    // The faults heal; the rerun acts only on what failed.
    assert!(
        s.firmware.settle(Duration::from_secs(60)),
        "{:?}",
        s.firmware.counts()
    );
    let before = s.firmware.counts();
    s.heal();
    let rerun = s.metalherd(&provision);
    assert!(rerun.out.status.success(), "rerun: {}", all(&rerun.out));
    assert!(
        s.firmware.settle(Duration::from_secs(60)),
        "{:?}",
        s.firmware.counts()
    );
    let after = s.firmware.counts();
    for (i, name) in s.serving().into_iter().enumerate() {
        assert!(after[i].errors.is_empty(), "{name}: {:?}", after[i].errors);
        if name == refusing || name == silent_bmc {
            assert_eq!(
                after[i].network_boots, 1,
                "{name} booted once, in the rerun"
            );
        } else if name != silent_ssh {
            assert_eq!(
                after[i].power_ons, before[i].power_ons,
                "{name} (healthy) was powered on again by the rerun"
            );
        }
    }
    let states = s.machine_states();
    let not_ready: Vec<_> = s
        .serving()
        .into_iter()
        .filter(|n| states.get(*n).map(String::as_str) != Some("ready"))
        .collect();
    assert!(
        not_ready.is_empty(),
        "not ready after the rerun: {not_ready:?}"
    );

    // ber and muc up, fra drilled: taken away and rebuilt, the safety
    // checks passing on their own (ber and muc healthy over TLS, 100%).
    for site in ["ber", "muc"] {
        let run = s.metalherd(&args(&["provision", "site", site], &tail));
        assert!(
            run.out.status.success(),
            "provision site {site}: {}",
            all(&run.out)
        );
    }
    assert!(s.firmware.settle(Duration::from_secs(60)));
    let before = s.firmware.counts();
    let reports = tempfile::tempdir().unwrap();
    let drill = args(
        &[
            "--output",
            "json",
            "drill",
            "site",
            "fra",
            "--rebuild",
            "--bake",
            "0",
            "--reports",
            reports.path().to_str().unwrap(),
        ],
        &tail,
    );
    let run = s.metalherd(&drill);
    eprintln!(
        "drill: exit {:?} in {:.1} s",
        run.out.status.code(),
        run.wall.as_secs_f64()
    );
    assert!(run.out.status.success(), "drill: {}", all(&run.out));
    let doc = run.json();
    assert_eq!(doc["ok"], true, "{doc}");
    assert_eq!(doc["overridden"], json!([]), "nothing forced: {doc}");
    assert_eq!(doc["generation_before"], 1, "{doc}");
    assert_eq!(doc["generation_after"], 2, "{doc}");
    let steps: Vec<&str> = doc["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|step| step["name"].as_str())
        .collect();
    for step in [
        "power off",
        "site gone",
        "other sites carry",
        "rebuild: restore",
    ] {
        assert!(steps.contains(&step), "no step {step}: {steps:?}");
    }
    assert!(s.firmware.settle(Duration::from_secs(60)));
    let after = s.firmware.counts();
    for (i, name) in s.serving().into_iter().enumerate() {
        assert_eq!(
            after[i].network_boots,
            before[i].network_boots + 1,
            "{name} network-booted once in the rebuild"
        );
    }
    let states = s.machine_states();
    let not_ready: Vec<_> = s
        .serving()
        .into_iter()
        .filter(|n| states.get(*n).map(String::as_str) != Some("ready"))
        .collect();
    assert!(
        not_ready.is_empty(),
        "not ready after the drill: {not_ready:?}"
    );
    eprintln!("done in {:.1} s", started.elapsed().as_secs_f64());
}
