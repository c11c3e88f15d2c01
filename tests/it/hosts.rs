//! SSH test hosts in network namespaces, for testing what metalherd does
//! over SSH (`bootstrap`, `exec`, `ssh`) against the real OpenSSH `sshd`,
//! `sudo` and `etcd`, without VMs.
//!
//! What a [`Hosts`] owns, and tears down in `Drop` (also on panic):
//!
//! - A controller network namespace (`mh<pid>x<n>c`) holding a bridge `br0`
//!   with every site's node-network gateway address, and IP forwarding on,
//!   so every host (of any site) is reachable from it and hosts of
//!   different sites reach each other. metalherd runs in there
//!   ([`Hosts::metalherd`], [`Hosts::ctl_command`]). Nothing is added to
//!   the machine's own namespace: no route, address or link.
//! - One network namespace per machine (`mh<pid>x<n>-<i>`), linked to the
//!   bridge with a veth pair (`h<i>` on the bridge, `eth0` in the host),
//!   with the machine's inventory IP, `lo` and a default route via its
//!   site's gateway.
//! - In each host namespace, a private mount and UTS namespace running
//!   `hosts/boot.sh`: overlays give the host its own writable `/etc`,
//!   `/home`, `/var`, `/opt`, `/usr/bin`, `/usr/local` and `/root` (upper dirs in this
//!   harness's temp dir, see [`Hosts::host_file`]) and a tmpfs `/run`; the
//!   real Ignition (Debian's build) applies the machine's rendered final
//!   config with `-root /` *into those overlays* (no temp root, no
//!   copying): the `core` user with the admins' and metalherd's keys, the
//!   pinned host key, `/etc/etcd/etcd.env`, the units. Then what Flatcar
//!   has and Debian lacks: passwordless sudo for `core`, etcd at `/usr/bin/etcd` (Debian's, where the
//!   merged extension puts it),
//!   and a `systemctl` stand-in (`hosts/systemctl`; hosts run no systemd)
//!   that starts units detached and records their pids in
//!   `/var/lib/systemctl-standin/`. Finally it execs `sshd` on the
//!   machine's IP, port 22, with the pinned host key.
//! - Teardown: SIGTERM to each sshd (by the pid we spawned) and SIGKILL to
//!   each pid the stand-in recorded that is still in the host's namespace
//!   (an etcd told to stop waits seconds for peers that are going away
//!   too); then every process still in one of the harness's namespaces
//!   (`ip netns pids`: by pid, never by name) gets SIGTERM and, after a
//!   grace period, SIGKILL; then the namespaces are deleted. The mounts
//!   die with the last process of their mount namespace.
//!
//! A `down` machine (and one after [`Hosts::link_down`]) has its link
//! down, and the controller a host route for its IP into `nowhere` (a
//! veth without ARP whose peer is down, so it drops every packet): so
//! connecting from the controller times out, as for a machine gone
//! behind a router, rather than failing fast with "no route to host"
//! after ARP fails. (A permanent neighbour entry with a bogus MAC does
//! not do: the kernel flushed it on the bridge's early carrier changes.)
//!
//! Ignition logs the whole config, private host key included: its output
//! goes to a 0600 file and only ever reaches a failure message redacted.

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use metalherd::fleet::{Fleet, Machine, Site};

use super::{require, text};

const IGNITION: &str = "/usr/lib/dracut/modules.d/30ignition/ignition";
const BOOT_SH: &str = include_str!("hosts/boot.sh");
const SYSTEMCTL: &str = include_str!("hosts/systemctl");
/// PATH for everything the harness runs itself.
const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The directories each host gets an overlay of.
const OVERLAID: [&str; 6] = ["etc", "home", "var", "opt", "usr/local", "root"];
/// How long starting the hosts (Ignition, sshd) may take, plus
/// [`BOOT_TIMEOUT_PER_HOST`] per host (they boot at once, on a few cores).
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);
const BOOT_TIMEOUT_PER_HOST: Duration = Duration::from_millis(500);

static INSTANCES: AtomicUsize = AtomicUsize::new(0);

#[derive(Clone, Copy, Debug, Default)]
pub struct Options<'a> {
    /// Machines whose sshd presents a different (freshly generated) host
    /// key than the one metalherd generated.
    pub wrong_host_key: &'a [&'a str],
    /// Machines whose namespace exists but whose link is down and no sshd
    /// runs: connecting times out.
    pub down: &'a [&'a str],
}

/// Test hosts for some machines of a fleet; see the module docs.
pub struct Hosts {
    fleet: PathBuf,
    /// Rendered boot files (`<site>/<machine>.final.ign`, ...).
    render: tempfile::TempDir,
    /// Per host: `<machine>/` with upper dirs, logs, sshd_config.
    dir: tempfile::TempDir,
    ctl: String,
    hosts: Vec<Host>,
    /// Every namespace created so far, in creation order.
    namespaces: Vec<String>,
}

struct Host {
    machine: String,
    ip: IpAddr,
    /// Its site's node-network gateway (the controller).
    gateway: IpAddr,
    ns: String,
    dir: PathBuf,
    sshd: Option<Child>,
}

impl Hosts {
    /// Renders `fleet` with the CLI (which also generates the pinned host
    /// keys and metalherd's key under `<fleet>/.metalherd/state/`) and
    /// starts one test host per named machine; returns once each sshd
    /// answers on its machine's IP.
    pub fn start(fleet: &Path, machines: &[&str], opts: &Options) -> Hosts {
        require_tools();
        for name in opts.wrong_host_key.iter().chain(opts.down) {
            assert!(
                machines.contains(name),
                "{name} is in Options but not started"
            );
        }
        let model =
            metalherd::fleet::load(fleet).unwrap_or_else(|e| panic!("{e}: {:#?}", e.diagnostics));
        let dir = tempfile::tempdir().unwrap();
        set_mode(dir.path(), 0o755);
        let prefix = format!(
            "mh{}x{}",
            std::process::id(),
            INSTANCES.fetch_add(1, Ordering::SeqCst)
        );
        let mut hosts = Hosts {
            fleet: fleet.to_path_buf(),
            render: super::render_with_cli(fleet),
            dir,
            ctl: format!("{prefix}c"),
            hosts: Vec::new(),
            namespaces: Vec::new(),
        };
        hosts.create_controller(&model);
        for (i, name) in machines.iter().enumerate() {
            let (site, machine) = model
                .machine(name)
                .unwrap_or_else(|| panic!("{name} is not a machine of the fleet"));
            let down = opts.down.contains(name);
            hosts.create_host(&format!("{prefix}-{i}"), i, site, machine, down);
            if !down {
                let wrong_key = opts.wrong_host_key.contains(name);
                hosts.boot(i, site, wrong_key);
            }
        }
        hosts.write_known_hosts(&model);
        hosts.wait_until_serving();
        hosts
    }

    /// Runs the metalherd binary in the controller namespace with
    /// `--fleet <fleet>` prepended, in the fleet directory, with a clean
    /// environment (PATH kept).
    pub fn metalherd(&self, args: &[&str]) -> Output {
        self.metalherd_env(args, &[])
    }

    /// Like [`Hosts::metalherd`], with extra environment variables.
    pub fn metalherd_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let path = std::env::var_os("PATH").unwrap_or(SYSTEM_PATH.into());
        let mut cmd = self.ctl_command(env!("CARGO_BIN_EXE_metalherd"));
        cmd.arg("--fleet")
            .arg(&self.fleet)
            .args(args)
            .current_dir(&self.fleet)
            .env("PATH", path)
            .envs(env.iter().copied());
        cmd.output().expect("run metalherd")
    }

    /// A command running `program` in the controller namespace
    /// (`ip netns exec <ctl> program`), with a clean environment but PATH.
    pub fn ctl_command(&self, program: &str) -> Command {
        let mut cmd = ip_command();
        cmd.args(["netns", "exec", &self.ctl, program]);
        cmd
    }

    /// OpenSSH, from the controller namespace, as `core` on `machine`
    /// with metalherd's key and the pinned host keys ([`Hosts::known_hosts`],
    /// strict checking, batch mode, 5 s connect timeout), running
    /// `remote_command`.
    pub fn ssh_command(&self, machine: &str, remote_command: &str) -> Command {
        let state = self.fleet.join(".metalherd/state");
        let mut cmd = self.ctl_command("ssh");
        cmd.args(["-F", "/dev/null", "-i"])
            .arg(state.join("ssh/id_ed25519"))
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                self.known_hosts().display()
            ))
            .args(["-o", "GlobalKnownHostsFile=/dev/null"])
            .args(["-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"])
            .args(["-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR"])
            .arg(format!("core@{}", self.ip(machine)))
            .arg("--")
            .arg(remote_command);
        cmd
    }

    /// Where `path` (absolute, e.g. `/etc/etcd/pki/server.key`) is on the
    /// real filesystem if the host wrote it: in the upper dir of the
    /// host's overlay. Panics for paths outside the overlaid directories.
    pub fn host_file(&self, machine: &str, path: &str) -> PathBuf {
        let host = self.host(machine);
        for dir in OVERLAID {
            if let Some(rest) = path.strip_prefix(&format!("/{dir}/")) {
                return host
                    .dir
                    .join("upper")
                    .join(dir.replace('/', "_"))
                    .join(rest);
            }
        }
        panic!("{path} is not below one of the overlaid directories {OVERLAID:?}")
    }

    /// Takes `machine`'s link down, as if it died: its sshd and processes
    /// keep running but nothing reaches them; new connections time out.
    pub fn link_down(&self, machine: &str) {
        let host = self.host(machine);
        ip(&["-n", &host.ns, "link", "set", "eth0", "down"]);
        self.blackhole(host.ip);
    }

    /// Undoes [`Hosts::link_down`]: the link up, the default route back
    /// (the kernel dropped it with the link), the controller's blackhole
    /// route gone.
    pub fn link_up(&self, machine: &str) {
        let host = self.host(machine);
        ip(&["-n", &host.ns, "link", "set", "eth0", "up"]);
        ip(&[
            "-n",
            &host.ns,
            "route",
            "replace",
            "default",
            "via",
            &host.gateway.to_string(),
        ]);
        let route = match host.ip {
            IpAddr::V4(_) => format!("{}/32", host.ip),
            IpAddr::V6(_) => format!("{}/128", host.ip),
        };
        let _ = ip_command()
            .args(["-n", &self.ctl, "route", "del", &route, "dev", "nowhere"])
            .output();
    }

    /// Makes `machine`'s SSH silent (`true`: an nft table in its
    /// namespace drops every packet to port 22, so connecting times out
    /// while the host runs on) or answer again (`false`: the table goes).
    pub fn ssh_silent(&self, machine: &str, silent: bool) {
        let host = self.host(machine);
        let rules = if silent {
            "table inet mh-silent-ssh {\n  chain input {\n    type filter hook input priority 0; policy accept;\n    tcp dport 22 drop\n  }\n}\n"
        } else {
            "delete table inet mh-silent-ssh\n"
        };
        let file = host.dir.join("silent-ssh.nft");
        std::fs::write(&file, rules).unwrap();
        let mut nft = ip_command();
        nft.args(["netns", "exec", &host.ns, "nft", "-f"])
            .arg(&file);
        run(nft, &format!("nft in {machine}'s namespace"));
    }

    /// What cutting `machine`'s power does to its host, as a value a
    /// thread may keep (a firmware stand-in watching a BMC).
    pub fn power_cut(&self, machine: &str) -> PowerCut {
        let host = self.host(machine);
        PowerCut {
            ns: host.ns.clone(),
            sshd: host.sshd.as_ref().map(Child::id),
        }
    }

    pub fn ctl_namespace(&self) -> &str {
        &self.ctl
    }

    /// The network namespace of `machine`'s host, for looking at it from
    /// outside SSH (`ip netns exec <ns> nft list ruleset`).
    pub fn host_namespace(&self, machine: &str) -> &str {
        &self.host(machine).ns
    }

    /// Every namespace this instance created (hosts and controller).
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    pub fn ip(&self, machine: &str) -> IpAddr {
        self.host(machine).ip
    }

    /// The directory `metalherd render` wrote this fleet's boot files to.
    pub fn render_dir(&self) -> &Path {
        self.render.path()
    }

    /// A known_hosts file with each started machine's pinned host key.
    pub fn known_hosts(&self) -> PathBuf {
        self.dir.path().join("known_hosts")
    }

    /// The host's boot and sshd log (no secrets: Ignition's log is apart).
    pub fn host_log(&self, machine: &str) -> String {
        std::fs::read_to_string(self.host(machine).dir.join("host.log")).unwrap_or_default()
    }

    fn host(&self, machine: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.machine == machine)
            .unwrap_or_else(|| panic!("{machine} is not one of the started hosts"))
    }
}

/// Setting up the namespaces and links.
impl Hosts {
    fn add_namespace(&mut self, name: &str) {
        ip(&["netns", "add", name]);
        self.namespaces.push(name.to_string());
        ip(&["-n", name, "link", "set", "lo", "up"]);
    }

    fn create_controller(&mut self, fleet: &Fleet) {
        let ctl = self.ctl.clone();
        self.add_namespace(&ctl);
        ip(&["-n", &ctl, "link", "add", "br0", "type", "bridge"]);
        for site in &fleet.sites {
            let nodes = &site.networks.nodes;
            let gateway = format!("{}/{}", nodes.gateway, nodes.prefix_len());
            ip(&["-n", &ctl, "addr", "add", &gateway, "dev", "br0"]);
        }
        ip(&["-n", &ctl, "link", "set", "br0", "up"]);
        ip(&[
            "-n", &ctl, "link", "add", "nowhere", "type", "veth", "peer", "name", "nowhere1",
        ]);
        ip(&["-n", &ctl, "link", "set", "nowhere", "arp", "off", "up"]);
        let forward = self
            .ctl_command("sysctl")
            .args(["-q", "-w", "net.ipv4.ip_forward=1"])
            .output()
            .unwrap();
        assert!(forward.status.success(), "{}", text(&forward.stderr));
    }

    fn create_host(&mut self, ns: &str, i: usize, site: &Site, machine: &Machine, down: bool) {
        self.add_namespace(ns);
        let veth = format!("h{i}");
        let ctl = self.ctl.clone();
        ip(&[
            "-n", &ctl, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ]);
        self.hosts.push(Host {
            machine: machine.name.to_string(),
            ip: machine.ip,
            gateway: site.networks.nodes.gateway,
            ns: ns.to_string(),
            dir: self.dir.path().join(machine.name.as_str()),
            sshd: None,
        });
        let address = format!("{}/{}", machine.ip, site.networks.nodes.prefix_len());
        ip(&["-n", ns, "addr", "add", &address, "dev", "eth0"]);
        ip(&["-n", &ctl, "link", "set", &veth, "master", "br0", "up"]);
        if down {
            self.blackhole(machine.ip);
            return;
        }
        ip(&["-n", ns, "link", "set", "eth0", "up"]);
        let gateway = site.networks.nodes.gateway.to_string();
        ip(&["-n", ns, "route", "add", "default", "via", &gateway]);
    }

    /// The controller drops `addr`'s traffic: its route leads `nowhere`.
    fn blackhole(&self, addr: IpAddr) {
        let route = match addr {
            IpAddr::V4(_) => format!("{addr}/32"),
            IpAddr::V6(_) => format!("{addr}/128"),
        };
        ip(&[
            "-n", &self.ctl, "route", "replace", &route, "dev", "nowhere",
        ]);
    }

    fn write_known_hosts(&self, fleet: &Fleet) {
        let mut lines = String::new();
        for host in &self.hosts {
            let (site, _) = fleet.machine(&host.machine).unwrap();
            let public = self.fleet.join(format!(
                ".metalherd/state/hostkeys/{}/{}/ssh_host_ed25519_key.pub",
                site.name.as_str(),
                host.machine
            ));
            let key = std::fs::read_to_string(&public)
                .unwrap_or_else(|e| panic!("{}: {e}", public.display()));
            let key: Vec<&str> = key.split_whitespace().take(2).collect();
            lines += &format!("{} {}\n", host.ip, key.join(" "));
        }
        std::fs::write(self.known_hosts(), lines).unwrap();
    }
}

/// Booting the hosts: Ignition, then sshd.
impl Hosts {
    fn boot(&mut self, i: usize, site: &Site, wrong_key: bool) {
        let host = &self.hosts[i];
        std::fs::create_dir_all(&host.dir).unwrap();
        set_mode(&host.dir, 0o755);
        let host_key = if wrong_key {
            wrong_host_key(&host.dir)
        } else {
            PathBuf::from("/etc/ssh/ssh_host_ed25519_key")
        };
        let sshd_config = format!(
            "ListenAddress {}:22\nHostKey {}\nPidFile {}\n{}",
            host.ip,
            host_key.display(),
            host.dir.join("sshd.pid").display(),
            "AuthorizedKeysFile .ssh/authorized_keys .ssh/authorized_keys.d/ignition\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             UsePAM yes\nPermitRootLogin no\nStrictModes yes\nPrintMotd no\n\
             Subsystem sftp /usr/lib/openssh/sftp-server\n"
        );
        std::fs::write(host.dir.join("sshd_config"), sshd_config).unwrap();
        std::fs::write(host.dir.join("boot.sh"), BOOT_SH).unwrap();
        std::fs::write(host.dir.join("systemctl"), SYSTEMCTL).unwrap();
        // An installing machine's final config, or a RAM-only one's only one.
        let rendered = self.render.path().join(site.name.as_str());
        let config = [".final.ign", ".ign"]
            .iter()
            .map(|ext| rendered.join(format!("{}{ext}", host.machine)))
            .find(|p| p.is_file())
            .unwrap_or_else(|| panic!("no rendered config for {}", host.machine));
        let log = std::fs::File::create(host.dir.join("host.log")).unwrap();
        let child = ip_command()
            .args(["netns", "exec", &host.ns, "unshare", "--mount", "--uts"])
            .args(["--propagation", "private", "/bin/sh"])
            .arg(host.dir.join("boot.sh"))
            .env("HOST_DIR", &host.dir)
            .env("MACHINE", &host.machine)
            .env("CONFIG", config)
            .env("IGNITION", IGNITION)
            .env("STANDIN", host.dir.join("systemctl"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.hosts[i].sshd = Some(child);
    }

    /// Waits until every booted host's sshd sends its banner.
    fn wait_until_serving(&mut self) {
        let timeout = BOOT_TIMEOUT + BOOT_TIMEOUT_PER_HOST * self.hosts.len() as u32;
        let deadline = Instant::now() + timeout;
        let mut waiting: Vec<usize> = (0..self.hosts.len())
            .filter(|&i| self.hosts[i].sshd.is_some())
            .collect();
        while !waiting.is_empty() {
            for i in std::mem::take(&mut waiting) {
                let exited = self.hosts[i].sshd.as_mut().unwrap().try_wait().unwrap();
                if let Some(status) = exited {
                    self.boot_failed(i, status);
                }
                if !self.banner_from(self.hosts[i].ip) {
                    waiting.push(i);
                }
            }
            if Instant::now() > deadline {
                let names: Vec<&str> = waiting.iter().map(|&i| &*self.hosts[i].machine).collect();
                panic!("sshd did not come up within {timeout:?} on {names:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether something answers with an SSH banner on `addr`, port 22.
    fn banner_from(&self, addr: IpAddr) -> bool {
        let probe = format!("exec 3<>/dev/tcp/{addr}/22 && head -c 4 <&3");
        let out = self
            .ctl_command("timeout")
            .args(["2", "bash", "-c", &probe])
            .stderr(Stdio::null())
            .output()
            .unwrap();
        out.stdout == b"SSH-"
    }

    fn boot_failed(&self, i: usize, status: ExitStatus) -> ! {
        let host = &self.hosts[i];
        let ignition = std::fs::read_to_string(host.dir.join("ignition.log")).unwrap_or_default();
        panic!(
            "test host {} did not boot ({status}):\n{}\nIgnition's log, redacted:\n{}",
            host.machine,
            self.host_log(&host.machine),
            redacted(&ignition)
        );
    }
}

/// Teardown.
impl Drop for Hosts {
    fn drop(&mut self) {
        // sshd by its pid (our child); the units the stand-in started by
        // theirs, killed outright: an etcd told to stop waits seconds for
        // its peers, which are going away too.
        let sshds: Vec<u32> = self
            .hosts
            .iter()
            .filter_map(|h| h.sshd.as_ref())
            .map(Child::id)
            .collect();
        signal("TERM", &sshds);
        for host in &self.hosts {
            let inside = pids_in(&host.ns);
            let units: Vec<u32> = standin_pids(host).filter(|p| inside.contains(p)).collect();
            signal("KILL", &units);
        }
        // Then whatever else runs in the namespaces: SSH sessions, their
        // children, commands run in the controller.
        signal("TERM", &self.processes_left(Duration::from_millis(300)));
        signal("KILL", &self.processes_left(Duration::from_secs(2)));
        let left = self.processes_left(Duration::from_secs(5));
        if !left.is_empty() {
            eprintln!("hosts: processes {left:?} survived SIGKILL; deleting the namespaces anyway");
        }
        for mut child in self.hosts.iter_mut().filter_map(|h| h.sshd.take()) {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in self.namespaces.iter().rev() {
            let _ = ip_command().args(["netns", "del", ns]).output();
        }
    }
}

impl Hosts {
    /// The processes still in the harness's namespaces after waiting up
    /// to `wait` for them to end (reaping the sshds, our children).
    fn processes_left(&mut self, wait: Duration) -> Vec<u32> {
        let deadline = Instant::now() + wait;
        loop {
            for child in self.hosts.iter_mut().filter_map(|h| h.sshd.as_mut()) {
                let _ = child.try_wait();
            }
            let left: Vec<u32> = self.namespaces.iter().flat_map(|ns| pids_in(ns)).collect();
            if left.is_empty() || Instant::now() > deadline {
                return left;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// See [`Hosts::power_cut`].
pub struct PowerCut {
    ns: String,
    /// The host's sshd (boot.sh execs it): a process in its mount namespace.
    sshd: Option<u32>,
}

impl PowerCut {
    /// Kills what the host's units run (SIGKILL to each unit's process
    /// group, only for processes in the host's namespace) and empties what
    /// a RAM-only machine loses with its power but the host's overlay
    /// keeps: etcd's data. sshd stays up: it stands for the next boot's,
    /// which presents the same pinned host key. Returns the pids killed.
    pub fn apply(&self) -> Vec<u32> {
        // Inside the host's mount namespace: the overlay's upper dir must
        // not be read or changed beneath it.
        let Some(sshd) = self.sshd else {
            return Vec::new();
        };
        let in_host = |script: &str| {
            let out = Command::new("nsenter")
                .args(["-t", &sshd.to_string(), "-m", "--", "/bin/sh", "-c", script])
                .env_clear()
                .env("PATH", SYSTEM_PATH)
                .output()
                .unwrap();
            assert!(out.status.success(), "{script}: {}", text(&out.stderr));
            text(&out.stdout)
        };
        let inside = pids_in(&self.ns);
        let killed: Vec<u32> = in_host("cat /var/lib/systemctl-standin/*.pid 2>/dev/null; true")
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .filter(|p| inside.contains(p))
            .collect();
        for pid in &killed {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}"), &pid.to_string()])
                .env_clear()
                .env("PATH", SYSTEM_PATH)
                .stderr(Stdio::null())
                .status();
        }
        in_host("rm -f /var/lib/systemctl-standin/*.pid; find /var/lib/etcd -mindepth 1 -delete");
        killed
    }
}

/// The pids the systemctl stand-in recorded on `host`.
fn standin_pids(host: &Host) -> impl Iterator<Item = u32> {
    let dir = host.dir.join("upper/var/lib/systemctl-standin");
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .filter_map(|pid| pid.trim().parse().ok())
}

/// Every process in network namespace `ns`.
fn pids_in(ns: &str) -> Vec<u32> {
    let out = ip_command().args(["netns", "pids", ns]).output().unwrap();
    text(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn signal(name: &str, pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .args(pids.iter().map(u32::to_string))
        .env_clear()
        .env("PATH", SYSTEM_PATH)
        .stderr(Stdio::null())
        .status();
}

/// Runs `ip ARGS`, panicking with its error.
fn ip(args: &[&str]) {
    let out = ip_command().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        text(&out.stderr)
    );
}

/// `ip`, with a clean environment but PATH.
fn ip_command() -> Command {
    static IP: OnceLock<PathBuf> = OnceLock::new();
    let mut cmd = Command::new(IP.get_or_init(|| require("ip", "iproute2")));
    cmd.env_clear().env("PATH", SYSTEM_PATH);
    cmd
}

fn require_tools() {
    for (program, package) in [
        ("ip", "iproute2"),
        ("sshd", "openssh-server"),
        ("ssh", "openssh-client"),
        ("unshare", "util-linux"),
        ("sudo", "sudo"),
        ("etcd", "etcd-server"),
        ("etcdctl", "etcd-client"),
        ("useradd", "passwd"),
    ] {
        require(program, package);
    }
    assert!(
        Path::new(IGNITION).is_file(),
        "{IGNITION} is missing: run `apt-get install -y ignition` (or ./scripts/test)"
    );
}

/// A fresh host key that is not the one metalherd generated.
fn wrong_host_key(dir: &Path) -> PathBuf {
    let key = dir.join("wrong_host_ed25519_key");
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "wrong", "-f"])
        .arg(&key)
        .env_clear()
        .env("PATH", SYSTEM_PATH)
        .output()
        .unwrap();
    assert!(out.status.success(), "ssh-keygen: {}", text(&out.stderr));
    key
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// `log` without the lines that may carry config contents (keys).
pub fn redacted(log: &str) -> String {
    log.lines()
        .map(|l| {
            if l.contains("data:") || l.contains("PRIVATE") || l.contains("BEGIN") {
                "[line with config data redacted]"
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs `cmd`, panicking with its output when it fails; returns stdout.
fn run(mut cmd: Command, what: &str) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{what}: {}\n{}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Uploads `contents` to `path` on `machine` the way a bootstrap does: as
/// SSH stdin to `sudo install`, never in argv.
fn upload(hosts: &Hosts, machine: &str, contents: &str, path: &str) {
    use std::io::Write;
    let mut ssh = hosts.ssh_command(
        machine,
        &format!("sudo install -D -m 0600 /dev/stdin {path}"),
    );
    let mut child = ssh
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(contents.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "upload to {machine}:{path}: {}",
        text(&out.stderr)
    );
}

/// Polls `etcdctl endpoint health` from the controller until every
/// endpoint is healthy (true) or 60 s passed (false); and what it said.
fn etcd_healthy(hosts: &Hosts, endpoints: &str, pki: &Path) -> (bool, String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = hosts
            .ctl_command("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoints}"))
            .arg(format!("--cacert={}", pki.join("etcd/ca.crt").display()))
            .arg(format!("--cert={}", pki.join("etcd/client.crt").display()))
            .arg(format!("--key={}", pki.join("etcd/client.key").display()))
            .args(["endpoint", "health"])
            .output()
            .unwrap();
        let said = text(&out.stdout) + &text(&out.stderr);
        if out.status.success() || Instant::now() > deadline {
            return (out.status.success(), said);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Logs in to a control plane, delivers its etcd PKI and starts etcd.
fn bootstrap_etcd(hosts: &Hosts, pki: &metalherd::pki::ClusterPki, cp: &str) {
    let who = run(hosts.ssh_command(cp, "id -un; hostname"), cp);
    assert_eq!(who, format!("core\n{cp}\n"));
    let inactive = hosts.ssh_command(cp, "systemctl is-active etcd").output();
    let inactive = inactive.unwrap();
    assert_eq!(
        (inactive.status.code(), text(&inactive.stdout)),
        (Some(3), "inactive\n".into()),
        "no etcd before its PKI arrived"
    );
    let node = format!("nodes/{cp}/etcd");
    for (from, to) in [
        ("etcd/ca.crt".to_string(), "ca.crt"),
        (format!("{node}/server.crt"), "server.crt"),
        (format!("{node}/server.key"), "server.key"),
        (format!("{node}/peer.crt"), "peer.crt"),
        (format!("{node}/peer.key"), "peer.key"),
    ] {
        let path = format!("/etc/etcd/pki/{to}");
        upload(hosts, cp, pki.get(&from).unwrap(), &path);
    }
    run(
        hosts.ssh_command(cp, "sudo systemctl start etcd.service"),
        cp,
    );
}

/// The controller reaches the hosts; the machine's own namespace does not.
fn check_isolation(hosts: &Hosts, fleet: &Fleet) {
    let route = ip_command()
        .args(["-n", hosts.ctl_namespace(), "route", "get"])
        .arg(hosts.ip("fra-cp-01").to_string())
        .output()
        .unwrap();
    assert!(
        text(&route.stdout).contains("dev br0"),
        "{}",
        text(&route.stdout)
    );
    let own = text(&ip_command().args(["-o", "addr"]).output().unwrap().stdout);
    for site in &fleet.sites {
        let gateway = format!(" {}/", site.networks.nodes.gateway);
        assert!(
            !own.contains(&gateway),
            "the machine's namespace has {gateway}: {own}"
        );
    }
    let check = hosts.metalherd(&["inventory", "check"]);
    assert!(check.status.success(), "{}", text(&check.stderr));
    assert!(hosts.render_dir().join("fra/fra-cp-01.final.ign").is_file());
}

/// A host presenting another key than the pinned one is refused; a down
/// host times out, as does one whose link goes down.
fn check_wrong_key_and_down(fleet: &Path) -> Vec<String> {
    let opts = Options {
        wrong_host_key: &["fra-wk-01"],
        down: &["fra-wk-02"],
    };
    let hosts = Hosts::start(fleet, &["fra-wk-01", "fra-wk-02", "fra-sp-01"], &opts);
    let refused = hosts.ssh_command("fra-wk-01", "true").output().unwrap();
    let said = text(&refused.stderr);
    assert!(
        !refused.status.success() && said.contains("REMOTE HOST IDENTIFICATION HAS CHANGED"),
        "{said}"
    );
    run(hosts.ssh_command("fra-sp-01", "true"), "fra-sp-01 while up");
    hosts.link_down("fra-sp-01");
    let attempts: Vec<_> = ["fra-wk-02", "fra-sp-01"]
        .map(|name| {
            let mut ssh = hosts.ssh_command(name, "true");
            let ssh = ssh.stdout(Stdio::null()).stderr(Stdio::piped());
            (name, ssh.spawn().unwrap())
        })
        .into_iter()
        .collect();
    for (name, child) in attempts {
        let out = child.wait_with_output().unwrap();
        let said = text(&out.stderr);
        assert!(
            !out.status.success() && said.contains("timed out"),
            "{name}: {said}"
        );
    }
    hosts.namespaces().to_vec()
}

#[test]
fn hosts_serve_pinned_ssh_and_run_etcd() {
    let fleet = super::example_fleet();
    let cps = ["fra-cp-01", "fra-cp-02", "fra-cp-03"];
    let hosts = Hosts::start(fleet.path(), &cps, &Options::default());
    let model = metalherd::fleet::load(fleet.path()).unwrap();
    check_isolation(&hosts, &model);
    let now = time::OffsetDateTime::now_utc();
    let pki = metalherd::pki::generate(model.site("fra").unwrap(), now, 90).unwrap();
    std::thread::scope(|scope| {
        for cp in cps {
            let (hosts, pki) = (&hosts, &pki);
            scope.spawn(move || bootstrap_etcd(hosts, pki, cp));
        }
    });
    // What a host writes stays in its own overlay.
    let key = std::fs::read_to_string(hosts.host_file("fra-cp-02", "/etc/etcd/pki/server.key"));
    assert!(
        key.ok().as_deref() == pki.get("nodes/fra-cp-02/etcd/server.key"),
        "fra-cp-02's server key is in its overlay"
    );
    assert!(!Path::new("/etc/etcd/pki/server.key").exists());

    let pki_dir = tempfile::tempdir().unwrap();
    pki.write_to(pki_dir.path()).unwrap();
    let endpoints: Vec<String> = cps
        .iter()
        .map(|cp| format!("https://{}:2379", hosts.ip(cp)))
        .collect();
    let (healthy, said) = etcd_healthy(&hosts, &endpoints.join(","), pki_dir.path());
    assert!(healthy, "etcd is not healthy on all three: {said}");
    assert_eq!(said.matches("is healthy").count(), 3, "{said}");
    let active = run(
        hosts.ssh_command("fra-cp-03", "systemctl is-active etcd"),
        "is-active",
    );
    assert_eq!(active, "active\n");

    let mut names = check_wrong_key_and_down(fleet.path());
    names.extend_from_slice(hosts.namespaces());
    drop(hosts);
    let list = ip_command().args(["netns", "list"]).output().unwrap();
    let list = text(&list.stdout);
    for ns in names {
        let listed = list
            .lines()
            .any(|l| l.split_whitespace().next() == Some(&*ns));
        assert!(!listed, "{ns} is left: {list}");
    }
}
