//! The lab: a lab fleet's sites as QEMU virtual machines on one Linux host,
//! booted the way hardware is, inside a network namespace of their own.
//!
//! `up` creates the namespace, one bridge per site carrying the site's
//! provisioning and nodes gateways and its boot server's address, then per
//! site a `metalherd serve` and a real `dnsmasq` running the config
//! metalherd rendered for that site, and per inventory machine a QEMU VM
//! (started paused, i.e. powered off, with the inventory's MAC, its tap on
//! the site's bridge, its QMP socket where the inventory's `qemu` BMC
//! address says). Every process is started with `ip netns exec`; their PIDs
//! and start times are kept in `.metalherd/lab/lab.json`, and `down` stops
//! exactly those, then every process still in the namespace, then deletes
//! the namespace. A failed `up` undoes itself the same way.
//!
//! Nothing here routes the host's own namespace to the lab: metalherd
//! commands that talk to lab machines enter the namespace themselves
//! ([`enter`]).

pub mod console;
pub mod extensions;
pub mod fleet;
pub mod image;
pub mod report;

use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::fleet::{Fleet, OsFlavor, Site, SiteName};
use crate::fsutil::{create_dir_with_mode, write_atomic};

/// The network namespace a lab uses unless told otherwise.
pub const DEFAULT_NAME: &str = "metalherd-lab";

/// Where a fleet's lab keeps its record, sockets, configs and logs.
/// (absolute: the programs it starts change directory).
pub fn dir(fleet: &Fleet) -> PathBuf {
    absolute_root(fleet).join(".metalherd/lab")
}

fn absolute_root(fleet: &Fleet) -> PathBuf {
    std::fs::canonicalize(&fleet.root).unwrap_or_else(|_| fleet.root.clone())
}

fn record_path(fleet: &Fleet) -> PathBuf {
    dir(fleet).join("lab.json")
}

/// One process the lab started.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Process {
    /// What it is: `boot-server fra`, `dnsmasq fra`, `vm fra-cp-01`.
    pub role: String,
    pub pid: u32,
    /// Its start time in clock ticks since boot (`/proc/PID/stat` field
    /// 22): with the PID, it names the process even after PID reuse.
    pub start_ticks: u64,
    /// Its log (QEMU: the serial console).
    pub log: PathBuf,
}

/// What `lab up` started, as `lab.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    /// The network namespace.
    pub name: String,
    pub sites: Vec<String>,
    pub started: String,
    /// `tcg` or `kvm`.
    pub accel: String,
    pub memory_mb: u32,
    pub processes: Vec<Process>,
}

impl Record {
    /// The lab's VM of `machine`.
    pub fn vm(&self, machine: &str) -> Option<&Process> {
        let role = format!("vm {machine}");
        self.processes.iter().find(|p| p.role == role)
    }
}

/// The record of the fleet's lab, when one is up (or was left behind).
pub fn load_record(fleet: &Fleet) -> anyhow::Result<Option<Record>> {
    let path = record_path(fleet);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(
            serde_json::from_slice(&bytes)
                .with_context(|| format!("reading {}", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// How to run the VMs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// KVM when a short probe boots the lab kernel with it, TCG otherwise.
    Auto,
    /// QEMU's emulator: slow, works everywhere.
    Tcg,
    /// Hardware virtualisation (fails when /dev/kvm cannot run guests).
    Kvm,
}

/// What `lab up` needs.
pub struct UpOptions {
    pub name: String,
    /// Sites to start (all of the fleet's when empty).
    pub sites: Vec<SiteName>,
    pub memory_mb: u32,
    pub accel: Accel,
    /// The metalherd binary that serves the boot server.
    pub metalherd: PathBuf,
    pub assets_dir: PathBuf,
}

/// Refuses fleets that are not lab fleets, with what to do instead.
pub fn ensure_lab_fleet(fleet: &Fleet) -> anyhow::Result<()> {
    if fleet.os.flavor != OsFlavor::Lab {
        bail!(
            "fleet {} runs os.flavor {}; the lab runs fleets with `os.flavor: lab` \
             (make one with `metalherd init --lab DIR`)",
            fleet.name,
            fleet.os.flavor.as_str()
        );
    }
    Ok(())
}

fn ensure_root(what: &str) -> anyhow::Result<()> {
    if !rustix::process::geteuid().is_root() {
        bail!("{what} needs root (network namespaces, bridges, tap devices); run it with sudo");
    }
    Ok(())
}

/// Enters the network namespace of the fleet's lab, when the fleet is a lab
/// fleet; a no-op for other fleets. Call before any thread starts (the
/// namespace is per thread; threads started later inherit it).
pub fn enter(fleet: &Fleet) -> anyhow::Result<()> {
    if fleet.os.flavor != OsFlavor::Lab {
        return Ok(());
    }
    let Some(record) = load_record(fleet)? else {
        bail!(
            "the lab of fleet {} is not up: run `metalherd lab up` first",
            fleet.name
        );
    };
    enter_namespace(&record.name)
}

fn enter_namespace(name: &str) -> anyhow::Result<()> {
    ensure_root("reaching the lab's machines")?;
    let path = Path::new("/run/netns").join(name);
    let file = std::fs::File::open(&path).with_context(|| {
        format!(
            "opening network namespace {name} ({}); is the lab up?",
            path.display()
        )
    })?;
    rustix::thread::move_into_link_name_space(
        std::os::fd::AsFd::as_fd(&file),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .with_context(|| format!("entering network namespace {name}"))?;
    Ok(())
}

fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// Runs `ip ARGS`, failing with its stderr.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running `ip` (apt-get install iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn valid_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !ok {
        bail!("lab name {name:?}: use 1-32 letters, digits, '-' or '_'");
    }
    Ok(())
}

/// The host part of a site's boot server URL, which the lab puts on the
/// site's bridge, and its port.
fn boot_server_addr(site: &Site) -> anyhow::Result<(IpAddr, u16)> {
    let url = &site.boot_server;
    let host = url
        .host_str()
        .with_context(|| format!("site {}: boot_server {url} has no host", site.name))?;
    let ip: IpAddr = host.trim_matches(['[', ']']).parse().with_context(|| {
        format!(
            "site {}: the lab needs boot_server to be an IP address, not {host:?}",
            site.name
        )
    })?;
    Ok((ip, url.port_or_known_default().unwrap_or(80)))
}

/// `/proc/PID/stat` field 22, the process's start time.
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after it do not.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

fn alive(p: &Process) -> bool {
    start_ticks(p.pid) == Some(p.start_ticks)
}

/// Starts `ip netns exec NAME PROGRAM ARGS` in a process group of its own
/// (it outlives `lab up`), stdout and stderr to `log`.
fn spawn(
    netns: &str,
    role: &str,
    log: &Path,
    program: &Path,
    args: &[String],
) -> anyhow::Result<Process> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let err = out.try_clone()?;
    let child = Command::new("ip")
        .args(["netns", "exec", netns])
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {role} ({})", program.display()))?;
    let pid = child.id();
    // `ip netns exec` execs the program: the PID stays. Give it a moment
    // to get past the exec before its start time is read.
    let start = start_ticks(pid).unwrap_or(0);
    Ok(Process {
        role: role.to_string(),
        pid,
        start_ticks: start,
        log: log.to_path_buf(),
    })
}

/// What `lab up` reports.
#[derive(Debug, Serialize)]
pub struct UpReport {
    pub record: Record,
    pub took_ms: u128,
}

/// Starts the lab; on any failure stops what it started and deletes the
/// namespace again.
pub fn up(fleet: &Fleet, opts: &UpOptions, progress: &dyn Fn(&str)) -> anyhow::Result<UpReport> {
    ensure_lab_fleet(fleet)?;
    ensure_root("lab up")?;
    valid_name(&opts.name)?;
    let sites: Vec<&Site> = if opts.sites.is_empty() {
        fleet.sites.iter().collect()
    } else {
        opts.sites
            .iter()
            .map(|s| {
                fleet
                    .site(s.as_str())
                    .with_context(|| format!("no site `{s}` in fleet {}", fleet.name))
            })
            .collect::<anyhow::Result<_>>()?
    };
    // Every VM may run (the spares too, for a blue-green replacement):
    // refuse before anything starts when they would not fit. Under `auto`
    // TCG's larger need is counted: the probe comes later.
    let vms: usize = sites.iter().map(|s| s.machines.len()).sum();
    let counted = if opts.accel == Accel::Kvm {
        "kvm"
    } else {
        "tcg"
    };
    if let Some(available) = mem_available_mib() {
        if let Some(problem) = memory_problem(vms, opts.memory_mb, counted, available) {
            bail!("{problem}");
        }
    }
    // Each named disk is a virtio disk: refuse names the VMs cannot have.
    for m in sites.iter().flat_map(|s| &s.machines) {
        vm_disks(m)?;
    }
    // VMs would boot without their node software: refuse, and say how.
    let unpinned: Vec<&str> = fleet
        .extensions
        .iter()
        .filter(|e| e.image_hash().is_none())
        .map(|e| e.name.as_str())
        .collect();
    if !unpinned.is_empty() {
        bail!(
            "extension(s) {} of fleet {} are not built and pinned yet: run `metalherd lab image` first \
             (it builds them from Debian's packages into the asset cache and records them in assets.lock)",
            unpinned.join(", "),
            fleet.name
        );
    }
    let started = Instant::now();
    if let Some(old) = load_record(fleet)? {
        if netns_exists(&old.name) || old.processes.iter().any(alive) {
            bail!(
                "the lab is already up (namespace {}, {} processes); `metalherd lab down` first",
                old.name,
                old.processes.len()
            );
        }
        let _ = std::fs::remove_file(record_path(fleet));
    }
    if netns_exists(&opts.name) {
        bail!(
            "network namespace {} already exists and is not this fleet's lab; pick another with --name or delete it (ip netns del {})",
            opts.name,
            opts.name
        );
    }
    let image = opts.assets_dir.join("lab").join(&fleet.os.version);
    for f in ["vmlinuz", "initrd.img"] {
        if !image.join(f).is_file() {
            bail!(
                "the lab image is missing ({} has no {f}): run `metalherd lab image` first",
                image.display()
            );
        }
    }
    let accel = match opts.accel {
        Accel::Auto if !cpu_virtualizes() => "tcg",
        Accel::Auto => {
            progress("probing KVM");
            if probe_kvm(&image.join("vmlinuz")) {
                "kvm"
            } else {
                "tcg"
            }
        }
        Accel::Tcg => "tcg",
        Accel::Kvm => "kvm",
    };
    let lab = dir(fleet);
    for sub in ["", "logs", "qmp", "tftp", "disks"] {
        create_dir_with_mode(&lab.join(sub), 0o700)
            .with_context(|| format!("creating {}", lab.join(sub).display()))?;
    }
    let mut record = Record {
        name: opts.name.clone(),
        sites: sites.iter().map(|s| s.name.to_string()).collect(),
        started: crate::state::now_rfc3339(),
        accel: accel.to_string(),
        memory_mb: opts.memory_mb,
        processes: Vec::new(),
    };
    progress(&format!("network namespace {}", opts.name));
    ip(&["netns", "add", &opts.name])?;
    // This process joins the namespace too, to check on what it starts.
    let result = enter_namespace(&opts.name)
        .and_then(|()| start_all(fleet, opts, &sites, &lab, &mut record, progress));
    // Recorded even on failure, so that the cleanup below (or a later
    // `lab down`) finds every process.
    let saved = save_record(fleet, &record);
    if let Err(e) = result.and(saved) {
        progress("failed; stopping what was started");
        let _ = stop(&record);
        let _ = std::fs::remove_file(record_path(fleet));
        return Err(e);
    }
    Ok(UpReport {
        record,
        took_ms: started.elapsed().as_millis(),
    })
}

fn save_record(fleet: &Fleet, record: &Record) -> anyhow::Result<()> {
    let path = record_path(fleet);
    write_atomic(&path, &serde_json::to_vec_pretty(record)?, 0o600)
        .with_context(|| format!("writing {}", path.display()))?;
    // Which fleet this lab is, for a command pointed at another fleet
    // (best effort: the lab runs without it).
    let owner = OtherLab {
        name: record.name.clone(),
        fleet: fleet.name.clone(),
        root: absolute_root(fleet),
    };
    if std::fs::create_dir_all(OWNERS).is_ok() {
        let _ = write_atomic(
            &Path::new(OWNERS).join(&record.name),
            &serde_json::to_vec_pretty(&owner)?,
            0o644,
        );
    }
    Ok(())
}

/// Where each lab up says whose it is (`<namespace>`: [`OtherLab`]).
const OWNERS: &str = "/run/metalherd-lab";

/// A lab that is up for another fleet than the one a command was given.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OtherLab {
    /// Its name (the network namespace).
    pub name: String,
    pub fleet: String,
    pub root: PathBuf,
}

/// One line per lab up for another fleet than `fleet`, saying how to
/// point a command at it (empty when there is none).
pub fn elsewhere(fleet: &Fleet) -> String {
    other_labs(fleet)
        .iter()
        .map(|o| {
            format!(
                "\nlab {} is up for fleet {} at {}: point the command at it with `--fleet {}`",
                o.name,
                o.fleet,
                o.root.display(),
                o.root.display()
            )
        })
        .collect()
}

/// The labs up for fleets other than `fleet`.
fn other_labs(fleet: &Fleet) -> Vec<OtherLab> {
    let here = absolute_root(fleet);
    let Ok(entries) = std::fs::read_dir(OWNERS) else {
        return Vec::new();
    };
    let mut labs: Vec<OtherLab> = entries
        .flatten()
        .filter_map(|e| serde_json::from_slice::<OtherLab>(&std::fs::read(e.path()).ok()?).ok())
        .filter(|l| l.root != here && netns_exists(&l.name))
        .collect();
    labs.sort_by(|a, b| a.name.cmp(&b.name));
    labs
}

fn start_all(
    fleet: &Fleet,
    opts: &UpOptions,
    sites: &[&Site],
    lab: &Path,
    record: &mut Record,
    progress: &dyn Fn(&str),
) -> anyhow::Result<()> {
    let ns = opts.name.as_str();
    ip(&["-n", ns, "link", "set", "lo", "up"])?;
    // dnsmasq's rendered config names Debian's TFTP root; it must exist.
    create_dir_with_mode(Path::new("/var/lib/tftpboot"), 0o755)
        .context("creating /var/lib/tftpboot")?;
    let (keys, _) = crate::keys::ensure_state(fleet)?;
    let rendered = crate::render::render(fleet, &keys, &crate::render::Selection::default(), 1)
        .context("rendering the sites' dnsmasq configs")?;
    let mut vm_index = 0;
    for site in sites {
        let bridge = format!("br-{}", site.name);
        anyhow::ensure!(
            bridge.len() <= 15,
            "site name {} is too long for a bridge name",
            site.name
        );
        progress(&format!("site {}: bridge {bridge}", site.name));
        ip(&["-n", ns, "link", "add", &bridge, "type", "bridge"])?;
        let (boot_ip, port) = boot_server_addr(site)?;
        let prov = &site.networks.provisioning;
        let nodes = &site.networks.nodes;
        let mut addrs = vec![
            format!("{}/{}", prov.gateway, prov.prefix_len()),
            format!("{}/{}", nodes.gateway, nodes.prefix_len()),
        ];
        if boot_ip != prov.gateway {
            addrs.push(format!("{boot_ip}/{}", prov.prefix_len()));
        }
        for a in &addrs {
            ip(&["-n", ns, "addr", "add", a, "dev", &bridge])?;
        }
        ip(&["-n", ns, "link", "set", &bridge, "up"])?;

        // The boot server of this site.
        let log = lab
            .join("logs")
            .join(format!("boot-server-{}.log", site.name));
        let args: Vec<String> = vec![
            "--fleet".into(),
            absolute_root(fleet).display().to_string(),
            "serve".into(),
            "--site".into(),
            site.name.to_string(),
            "--listen".into(),
            format!("{}", std::net::SocketAddr::new(boot_ip, port)),
            "--assets-dir".into(),
            opts.assets_dir.display().to_string(),
        ];
        progress(&format!(
            "site {}: boot server on {boot_ip}:{port}",
            site.name
        ));
        record.processes.push(spawn(
            ns,
            &format!("boot-server {}", site.name),
            &log,
            &opts.metalherd,
            &args,
        )?);

        // dnsmasq with the config rendered for this site.
        let conf = rendered
            .sites
            .iter()
            .find(|s| s.name == site.name)
            .and_then(|s| s.dnsmasq.clone())
            .with_context(|| format!("no dnsmasq config rendered for {}", site.name))?;
        let conf_path = lab.join(format!("dnsmasq-{}.conf", site.name));
        write_atomic(&conf_path, conf.as_bytes(), 0o600)?;
        let log = lab.join("logs").join(format!("dnsmasq-{}.log", site.name));
        let args: Vec<String> = vec![
            "--keep-in-foreground".into(),
            format!("--conf-file={}", conf_path.display()),
            format!("--interface={bridge}"),
            "--bind-interfaces".into(),
            "--log-facility=-".into(),
            format!(
                "--pid-file={}",
                lab.join(format!("dnsmasq-{}.pid", site.name)).display()
            ),
            format!(
                "--dhcp-leasefile={}",
                lab.join(format!("dnsmasq-{}.leases", site.name)).display()
            ),
        ];
        progress(&format!("site {}: dnsmasq on {bridge}", site.name));
        record.processes.push(spawn(
            ns,
            &format!("dnsmasq {}", site.name),
            &log,
            &which("dnsmasq", "dnsmasq-base")?,
            &args,
        )?);

        // One VM per machine, powered off (paused) until metalherd says.
        for m in &site.machines {
            vm_index += 1;
            let tap = format!("mhtap{vm_index}");
            ip(&["-n", ns, "tuntap", "add", "dev", &tap, "mode", "tap"])?;
            ip(&["-n", ns, "link", "set", &tap, "master", &bridge])?;
            ip(&["-n", ns, "link", "set", &tap, "up"])?;
            let qmp = crate::power::qemu::socket_path(&m.bmc.address, &absolute_root(fleet));
            let console = lab.join("logs").join(format!("{}.console", m.name));
            let console_sock = lab.join("qmp").join(format!("{}.serial", m.name));
            let args: Vec<String> = vec![
                "-name".into(),
                m.name.to_string(),
                "-M".into(),
                "q35".into(),
                "-accel".into(),
                accel_arg(&record.accel),
                "-cpu".into(),
                "max".into(),
                "-m".into(),
                opts.memory_mb.to_string(),
                "-smp".into(),
                "1".into(),
                "-display".into(),
                "none".into(),
                "-monitor".into(),
                "none".into(),
                "-S".into(),
                "-no-shutdown".into(),
                "-boot".into(),
                "n".into(),
                "-qmp".into(),
                format!("unix:{qmp},server=on,wait=off"),
                "-chardev".into(),
                format!(
                    "socket,id=serial0,path={},server=on,wait=off,logfile={}",
                    console_sock.display(),
                    console.display()
                ),
                "-serial".into(),
                "chardev:serial0".into(),
                "-netdev".into(),
                format!("tap,id=n0,ifname={tap},script=no,downscript=no"),
                "-device".into(),
                format!("virtio-net-pci,netdev=n0,mac={}", m.mac),
            ];
            let mut args = args;
            for (i, (name, _)) in vm_disks(m)?.iter().enumerate() {
                // New, empty hardware at each `lab up` (sparse: no space
                // until written).
                let image = lab.join("disks").join(format!("{}-{name}.img", m.name));
                let _ = std::fs::remove_file(&image);
                std::fs::File::create(&image)
                    .and_then(|f| f.set_len(DISK_SIZE_MIB << 20))
                    .with_context(|| format!("creating {}", image.display()))?;
                args.push("-drive".into());
                args.push(format!(
                    "file={},if=none,id=disk{i},format=raw,cache=unsafe",
                    image.display()
                ));
                args.push("-device".into());
                args.push(format!("virtio-blk-pci,drive=disk{i},serial={name}"));
            }
            let _ = std::fs::remove_file(&qmp);
            progress(&format!("site {}: VM {} ({})", site.name, m.name, m.mac));
            let log = lab.join("logs").join(format!("qemu-{}.log", m.name));
            record.processes.push(spawn(
                ns,
                &format!("vm {}", m.name),
                &log,
                &which("qemu-system-x86_64", "qemu-system-x86")?,
                &args,
            )?);
        }
    }
    // Everything must be running, the QMP sockets and boot servers answering.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for p in &mut record.processes {
            if p.start_ticks == 0 {
                p.start_ticks = start_ticks(p.pid).unwrap_or(0);
            }
        }
        let dead: Vec<&Process> = record
            .processes
            .iter()
            .filter(|p| start_ticks(p.pid).is_none())
            .collect();
        if let Some(p) = dead.first() {
            bail!(
                "{} (pid {}) exited at start; its log {}:\n{}",
                p.role,
                p.pid,
                p.log.display(),
                tail(&p.log, 12)
            );
        }
        let sockets_ready = sites.iter().flat_map(|s| &s.machines).all(|m| {
            Path::new(&crate::power::qemu::socket_path(
                &m.bmc.address,
                &fleet.root,
            ))
            .exists()
        });
        let servers_ready = sites.iter().all(|s| {
            boot_server_addr(s)
                .map(|(ip, port)| healthz(ip, port))
                .unwrap_or(false)
        });
        if sockets_ready && servers_ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the lab did not come up within 30 s (QMP sockets ready: {sockets_ready}, boot servers answering: {servers_ready}); logs in {}",
                lab.join("logs").display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Whether the boot server at `ip:port` answers `/healthz` (this process
/// is in the lab's namespace by then).
fn healthz(ip: IpAddr, port: u16) -> bool {
    let addr = std::net::SocketAddr::new(ip, port);
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut answer = [0u8; 12];
    stream.read_exact(&mut answer).is_ok() && answer.ends_with(b"200")
}

fn which(program: &str, package: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .with_context(|| format!("{program} is not installed: apt-get install {package}"))
}

/// TCG's translation cache per VM, in MiB. QEMU's default (1 GiB on a
/// 64-bit host) lets a 768 MiB VM grow to 1.6 GB; a booting Debian with
/// etcd needs far less.
pub const TB_SIZE_MIB: u64 = 128;

/// QEMU's own memory per VM beyond the guest's and the translation cache
/// (devices, its heap, the iPXE ROM), in MiB: measured below 100.
const QEMU_OVERHEAD_MIB: u64 = 100;

/// QEMU's `-accel` value: TCG with its translation cache bounded.
fn accel_arg(accel: &str) -> String {
    if accel == "tcg" {
        format!("tcg,tb-size={TB_SIZE_MIB}")
    } else {
        accel.to_string()
    }
}

/// What one VM may take at most, in MiB.
pub fn vm_budget_mib(memory_mb: u32, accel: &str) -> u64 {
    let cache = if accel == "tcg" { TB_SIZE_MIB } else { 0 };
    u64::from(memory_mb) + cache + QEMU_OVERHEAD_MIB
}

/// Why `vms` VMs of `memory_mb` would not fit in `available` MiB, with the
/// numbers and what to do instead; `None` when they fit.
/// The size of each lab VM's data disks (sparse files).
const DISK_SIZE_MIB: u64 = 1024;

/// A lab VM's data disks: one virtio disk per named disk of the machine,
/// `/dev/vda`, `/dev/vdb`, … in order (the VMs run from RAM: no root
/// disk comes first). Returns (name, device) in device order, or why the
/// machine's devices cannot be the VM's.
fn vm_disks(m: &crate::fleet::Machine) -> anyhow::Result<Vec<(String, String)>> {
    let mut disks: Vec<(String, String)> = m
        .disks
        .iter()
        .map(|(n, d)| (n.clone(), d.clone()))
        .collect();
    disks.sort_by(|a, b| a.1.cmp(&b.1));
    for (i, (name, device)) in disks.iter().enumerate() {
        let want = format!("/dev/vd{}", (b'a' + i as u8) as char);
        if *device != want || i >= 26 {
            bail!(
                "machine {}'s disk {name} is {device}, but a lab VM has virtio disks /dev/vda, \
                 /dev/vdb, … one per named disk, in order ({want} here); `metalherd init --lab` \
                 writes the example fleet's disks so",
                m.name
            );
        }
    }
    Ok(disks)
}

fn memory_problem(vms: usize, memory_mb: u32, accel: &str, available: u64) -> Option<String> {
    let per_vm = vm_budget_mib(memory_mb, accel);
    let need = per_vm * vms as u64;
    if need <= available {
        return None;
    }
    let cache = if accel == "tcg" {
        format!(" + {TB_SIZE_MIB} MiB TCG translation cache")
    } else {
        String::new()
    };
    let fit = available / per_vm;
    Some(format!(
        "the lab's {vms} VMs may take {need} MiB ({vms} × ({memory_mb} MiB memory{cache} + \
         {QEMU_OVERHEAD_MIB} MiB QEMU)), but this machine has {available} MiB available \
         (MemAvailable): {fit} such VMs fit. Start fewer sites (--site SITE, repeatable) or \
         give each VM less memory (--memory 512)"
    ))
}

/// MemAvailable from /proc/meminfo, in MiB.
fn mem_available_mib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// Whether the CPU offers hardware virtualisation (vmx or svm): without
/// it KVM cannot run guests, and probing would only cost seconds.
fn cpu_virtualizes() -> bool {
    std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|text| {
        text.lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
    })
}

/// Whether QEMU boots the lab kernel with KVM: within 5 s the kernel must
/// print its banner on the serial console (with KVM it does in well under
/// a second).
fn probe_kvm(kernel: &Path) -> bool {
    if !Path::new("/dev/kvm").exists() {
        return false;
    }
    let Ok(qemu) = which("qemu-system-x86_64", "qemu-system-x86") else {
        return false;
    };
    let Ok(mut child) = Command::new(qemu)
        .args(["-M", "q35", "-accel", "kvm", "-cpu", "host", "-m", "256"])
        .args([
            "-display",
            "none",
            "-monitor",
            "none",
            "-no-reboot",
            "-serial",
            "stdio",
        ])
        .arg("-kernel")
        .arg(kernel)
        .args(["-append", "console=ttyS0 panic=-1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
    else {
        return false;
    };
    let mut out = child.stdout.take();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while let Some(Ok(n)) = out.as_mut().map(|o| o.read(&mut buf)) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&seen).contains("Linux version") {
                let _ = tx.send(());
                break;
            }
        }
    });
    let works = rx.recv_timeout(Duration::from_secs(5)).is_ok();
    let _ = child.kill();
    let _ = child.wait();
    works
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// What `lab down` did.
#[derive(Debug, Default, Serialize)]
pub struct DownReport {
    pub name: Option<String>,
    pub stopped: Vec<String>,
    pub namespace_deleted: bool,
}

/// Stops every process of the lab (recorded ones by PID and start time,
/// then any other process left in its namespace) and deletes the
/// namespace. Safe to run twice.
pub fn down(fleet: &Fleet, name: Option<&str>) -> anyhow::Result<DownReport> {
    ensure_root("lab down")?;
    let record = load_record(fleet)?;
    let name = match (name, &record) {
        (Some(n), _) => n.to_string(),
        (None, Some(r)) => r.name.clone(),
        (None, None) => DEFAULT_NAME.to_string(),
    };
    valid_name(&name)?;
    let mut report = DownReport {
        name: Some(name.clone()),
        ..DownReport::default()
    };
    if let Some(r) = &record {
        report.stopped = stop(r)?;
    } else if netns_exists(&name) {
        report.stopped = stop(&Record {
            name: name.clone(),
            sites: Vec::new(),
            started: String::new(),
            accel: String::new(),
            memory_mb: 0,
            processes: Vec::new(),
        })?;
    }
    report.namespace_deleted = !netns_exists(&name);
    let _ = std::fs::remove_file(record_path(fleet));
    let _ = std::fs::remove_file(Path::new(OWNERS).join(&name));
    let _ = std::fs::remove_dir_all(dir(fleet).join("qmp"));
    let _ = std::fs::remove_dir_all(dir(fleet).join("disks"));
    Ok(report)
}

/// Stops the record's processes and everything else in its namespace,
/// then deletes the namespace. Returns what was stopped.
fn stop(record: &Record) -> anyhow::Result<Vec<String>> {
    let mut stopped = Vec::new();
    let mut targets: Vec<(String, u32)> = record
        .processes
        .iter()
        .filter(|p| alive(p))
        .map(|p| (p.role.clone(), p.pid))
        .collect();
    if netns_exists(&record.name) {
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &record.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok())
            {
                // `lab up` joins the namespace itself: cleaning up after a
                // failed start must not stop the process that reports it.
                if pid != std::process::id() && !targets.iter().any(|(_, p)| *p == pid) {
                    targets.push((format!("process {pid} in {}", record.name), pid));
                }
            }
        }
    }
    for (_, pid) in &targets {
        signal(*pid, rustix::process::Signal::TERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while targets.iter().any(|(_, p)| start_ticks(*p).is_some()) && Instant::now() < deadline {
        reap();
        std::thread::sleep(Duration::from_millis(100));
    }
    for (role, pid) in &targets {
        if start_ticks(*pid).is_some() {
            signal(*pid, rustix::process::Signal::KILL);
        }
        stopped.push(format!("{role} (pid {pid})"));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while targets.iter().any(|(_, p)| start_ticks(*p).is_some()) && Instant::now() < deadline {
        reap();
        std::thread::sleep(Duration::from_millis(50));
    }
    if netns_exists(&record.name) {
        ip(&["netns", "del", &record.name])?;
    }
    Ok(stopped)
}

fn signal(pid: u32, sig: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

/// Collects exited children of this process (a failed `up` started them).
fn reap() {
    while let Ok(Some(_)) = rustix::process::wait(rustix::process::WaitOptions::NOHANG) {}
}

/// One process in `lab status`.
#[derive(Debug, Serialize)]
pub struct ProcessStatus {
    pub role: String,
    pub pid: u32,
    pub running: bool,
    /// VMs: the QMP status (`prelaunch`, `paused`, `running`, `shutdown`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
}

/// `lab status`.
#[derive(Debug, Serialize)]
pub struct Status {
    pub up: bool,
    pub name: Option<String>,
    pub namespace: bool,
    pub accel: Option<String>,
    pub sites: Vec<String>,
    pub processes: Vec<ProcessStatus>,
    /// With no lab up for this fleet: the labs up for other fleets.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub other_labs: Vec<OtherLab>,
}

pub fn status(fleet: &Fleet) -> anyhow::Result<Status> {
    let Some(record) = load_record(fleet)? else {
        return Ok(Status {
            up: false,
            name: None,
            namespace: netns_exists(DEFAULT_NAME),
            accel: None,
            sites: Vec::new(),
            processes: Vec::new(),
            other_labs: other_labs(fleet),
        });
    };
    let namespace = netns_exists(&record.name);
    let mut processes = Vec::new();
    for p in &record.processes {
        let running = alive(p);
        let vm = match p.role.strip_prefix("vm ") {
            Some(machine) if running => fleet
                .machine(machine)
                .map(|(_, m)| crate::power::qemu::socket_path(&m.bmc.address, &fleet.root))
                .and_then(|sock| qmp_status(&sock)),
            _ => None,
        };
        processes.push(ProcessStatus {
            role: p.role.clone(),
            pid: p.pid,
            running,
            vm,
        });
    }
    let up = namespace && processes.iter().all(|p| p.running);
    Ok(Status {
        up,
        name: Some(record.name),
        namespace,
        accel: Some(record.accel),
        sites: record.sites,
        processes,
        other_labs: Vec::new(),
    })
}

/// The VM's run state over QMP, blocking and short.
fn qmp_status(socket: &str) -> Option<String> {
    let mut stream = std::os::unix::net::UnixStream::connect(socket).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .write_all(b"{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"query-status\"}\n")
        .ok()?;
    let mut reader = std::io::BufReader::new(stream);
    let mut line = String::new();
    for _ in 0..10 {
        line.clear();
        if std::io::BufRead::read_line(&mut reader, &mut line).ok()? == 0 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&line).ok()?;
        if let Some(s) = v["return"]["status"].as_str() {
            return Some(s.to_string());
        }
    }
    None
}

/// The serial console socket and log of a lab machine.
pub fn console_paths(fleet: &Fleet, machine: &str) -> (PathBuf, PathBuf) {
    let lab = dir(fleet);
    (
        lab.join("qmp").join(format!("{machine}.serial")),
        lab.join("logs").join(format!("{machine}.console")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_check_refuses_with_the_numbers_and_what_to_do() {
        // The example fleet's 18 VMs at 768 MiB under TCG: 18 × 996 MiB.
        let problem = memory_problem(18, 768, "tcg", 16_000).expect("refused");
        assert!(problem.contains("17928 MiB"), "{problem}");
        assert!(problem.contains("16000 MiB available"), "{problem}");
        assert!(problem.contains("16 such VMs fit"), "{problem}");
        assert!(
            problem.contains("--site") && problem.contains("--memory"),
            "{problem}"
        );
        // One site's six fit; KVM has no translation cache to count.
        assert_eq!(memory_problem(6, 768, "tcg", 16_000), None);
        assert_eq!(vm_budget_mib(768, "kvm"), 868);
        assert_eq!(accel_arg("tcg"), "tcg,tb-size=128");
        assert_eq!(accel_arg("kvm"), "kvm");
    }
}
