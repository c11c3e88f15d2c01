//! Secret hygiene across the suite (issue 10). The real binary is run
//! through the commands that handle secrets, in text and `--output json`,
//! at `-vv` (some also with `METALHERD_LOG=trace`, every crate's logs):
//! inventory, render, dnsmasq, power against a real Redfish BMC
//! (`sushy-emulator` with basic auth: right and wrong passwords, bad and
//! missing credentials, an unreachable BMC), the boot server through a
//! whole boot and the abuses of its tokens and report secrets (and a
//! SIGHUP reload of a fleet with an inline secret), state, audit and plan,
//! a wrong and a missing state key, inline secrets in the inventory, an
//! admin `kubeconfig` (all of it but the client key it hands out); and
//! `bootstrap`, `exec` and `ssh` on the network-namespace test hosts.
//!
//! Every stdout, stderr and log, every HTTP answer of the boot server that
//! is not a machine's own config, and every file below the fleet and the
//! render directories is swept (as it is, percent-decoded, and with its
//! base64 runs decoded) for the secrets the test knows: every private key
//! in the state (opened with the state's key), BMC passwords (also as
//! basic auth), the state's age identity, one-time tokens and report
//! secrets handed out, values an attacker presented. The Ignition files
//! (they hold host keys) and the secret stores themselves are not swept:
//! their modes are checked instead, 0600 files in 0700 directories (up to
//! the state directory for the state; the site directory for renders).
//!
//! Findings are reported as `<where>: contains <kind of secret>`, never
//! with the secret. `the_sweep_finds_planted_secrets` proves the sweep
//! and the mode checks are not no-ops.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use metalherd::fleet::SecretRef;
use metalherd::state::crypt::{is_sealed, Sealer};

use super::hosts::{Hosts, Options};
use super::{example_fleet, metalherd_env, require_pip, text};

/// The shortest base64 line of a private key that is searched for.
const MIN_LINE: usize = 20;
/// The state's age identity, relative to the fleet.
const STATE_KEY: &str = "keys/state.age";
/// ber's BMC credentials file, relative to the fleet.
const BER_BMC: &str = "keys/ber-bmc";

// ------------------------------------------------------------ the sweep

/// What the test knows to be secret: (kind, value). Kinds are printed,
/// values never.
#[derive(Default)]
struct Secrets {
    known: Vec<(String, String)>,
    /// DER of public material (certificates, public keys): a base64 line
    /// of a private key that decodes to bytes found in one of these is
    /// public (a PKCS#8 key ends with its public key, which the
    /// certificate holds too) and is not searched for.
    public: Vec<Vec<u8>>,
}

impl Secrets {
    fn add(&mut self, kind: &str, value: &str) {
        let value = value.trim();
        assert!(
            value.len() >= 8,
            "a {kind} too short to search for ({} chars)",
            value.len()
        );
        if !self.known.iter().any(|(_, v)| v == value) {
            self.known.push((kind.to_string(), value.to_string()));
        }
    }

    /// A BMC password, also as it would travel in HTTP basic auth.
    fn add_password(&mut self, kind: &str, user: &str, password: &str) {
        self.add(kind, password);
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        self.add(&format!("{kind} (as HTTP basic auth)"), &basic);
    }

    /// Private key material: every base64 line of a PEM or OpenSSH key
    /// (at least [`MIN_LINE`] long); for kubeconfigs, the embedded
    /// `client-key-data` as it is and decoded.
    fn add_private(&mut self, kind: &str, contents: &str) {
        for line in contents.lines().map(str::trim) {
            if let Some(data) = line.strip_prefix("client-key-data:") {
                let data = data.trim();
                self.add(kind, data);
                if let Ok(pem) = base64::engine::general_purpose::STANDARD.decode(data) {
                    self.add_private(kind, &String::from_utf8_lossy(&pem));
                }
                continue;
            }
            let base64_line = line
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b));
            // The constant start of every OpenSSH key is a marker of its own.
            let marked = MARKERS.iter().any(|(m, _)| line.contains(m));
            if line.len() >= MIN_LINE && base64_line && !marked && !self.is_public(line) {
                self.add(kind, line);
            }
        }
    }

    /// Whether the base64 `line` decodes to bytes of known public material.
    fn is_public(&self, line: &str) -> bool {
        let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(line) else {
            return false;
        };
        self.public
            .iter()
            .any(|der| der.windows(bytes.len()).any(|w| w == bytes))
    }

    /// Learns the public material in `contents`: PEM certificates and
    /// public keys, OpenSSH public keys.
    fn add_public(&mut self, contents: &str) {
        let b64 = &base64::engine::general_purpose::STANDARD;
        let mut body: Option<String> = None;
        for line in contents.lines().map(str::trim) {
            if line.starts_with("-----BEGIN ") && !line.contains("PRIVATE") {
                body = Some(String::new());
            } else if line.starts_with("-----END ") {
                if let Some(Ok(der)) = body.take().map(|b| b64.decode(b)) {
                    self.public.push(der);
                }
            } else if let Some(b) = body.as_mut() {
                b.push_str(line);
            } else if line.starts_with("ssh-") {
                if let Some(Ok(blob)) = line.split_whitespace().nth(1).map(|k| b64.decode(k)) {
                    self.public.push(blob);
                }
            }
        }
    }

    fn count(&self, kind_prefix: &str) -> usize {
        self.known
            .iter()
            .filter(|(k, _)| k.starts_with(kind_prefix))
            .count()
    }
}

/// Markers no output may hold, whatever the key.
const MARKERS: [(&str, &str); 3] = [
    ("PRIVATE KEY", "a private key header"),
    ("AGE-SECRET-KEY-", "an age identity"),
    ("b3BlbnNzaC1rZXktdjE", "an OpenSSH private key body"),
];

/// Every run of base64 in `text` (40 characters or more), decoded: a key
/// can hide in a `data:;base64,` URL.
fn base64_runs(text: &str) -> Vec<String> {
    let engine = &base64::engine::general_purpose::STANDARD_NO_PAD;
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '+' || c == '/' || c == '='))
        .filter(|run| run.len() >= 40)
        .filter_map(|run| {
            let run = run.trim_end_matches('=');
            (0..4).find_map(|cut| engine.decode(&run[..run.len() - cut]).ok())
        })
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .collect()
}

/// `<place>: contains <kind>` for every secret (or marker) in `text`,
/// also once or twice percent-decoded (query strings, data URLs, the
/// install stage's embedded config) and with its base64 runs decoded.
fn leaks(secrets: &Secrets, place: &str, text: &str) -> Vec<String> {
    let once = percent_decode(text);
    let twice = percent_decode(&once);
    let mut forms = vec![text.to_string(), once, twice];
    let decoded: Vec<String> = forms.iter().flat_map(|t| base64_runs(t)).collect();
    forms.extend(decoded);
    let mut kinds = BTreeSet::new();
    for (needle, kind) in MARKERS {
        if forms.iter().any(|t| t.contains(needle)) {
            kinds.insert(kind.to_string());
        }
    }
    for (kind, value) in &secrets.known {
        if forms.iter().any(|t| t.contains(value.as_str())) {
            kinds.insert(kind.clone());
        }
    }
    kinds
        .into_iter()
        .map(|k| format!("{place}: contains {k}"))
        .collect()
}

/// Everything printed or logged, by where it came from.
#[derive(Default)]
struct Said(Vec<(String, String)>);

impl Said {
    fn push(&mut self, place: impl Into<String>, text: impl Into<String>) {
        self.0.push((place.into(), text.into()));
    }

    fn output(&mut self, label: &str, out: &Output) {
        self.push(format!("`{label}` stdout"), text(&out.stdout));
        self.push(format!("`{label}` stderr"), text(&out.stderr));
    }

    /// Says what was special about the last command's run.
    fn note(&mut self, note: &str) {
        let n = self.0.len();
        for (place, _) in &mut self.0[n.saturating_sub(2)..] {
            place.push_str(&format!(" ({note})"));
        }
    }
}

/// Modes and sweep of files on disk.
#[derive(Default)]
struct Disk {
    /// The state has no `state.encryption_key`: private files are plain.
    plain_state: bool,
    problems: Vec<String>,
    swept: usize,
    ignition: usize,
    sealed: usize,
    secret_files: usize,
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().mode() & 0o777
}

impl Disk {
    /// `path` is 0600 and every directory from its parent up to `top`
    /// (included) is 0700.
    fn private_file(&mut self, path: &Path, top: &Path, shown: &str) {
        if mode(path) != 0o600 {
            self.problems
                .push(format!("{shown}: mode {:o}, not 600", mode(path)));
        }
        let mut dir = path.parent();
        while let Some(d) = dir {
            if mode(d) != 0o700 {
                self.problems.push(format!(
                    "{shown}: its directory {} has mode {:o}, not 700",
                    d.display(),
                    mode(d)
                ));
            }
            if d == top {
                break;
            }
            dir = d.parent();
        }
    }

    /// Every file below `root` (shown as `label/<relative path>`): Ignition
    /// files and the secret stores get their modes checked, the others are
    /// swept. `state` is the local state directory when it is below
    /// `root`; `own` are secret files the test itself wrote.
    fn tree(
        &mut self,
        root: &Path,
        label: &str,
        state: Option<&Path>,
        own: &[PathBuf],
        secrets: &Secrets,
    ) {
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                let kind = std::fs::symlink_metadata(&path).unwrap().file_type();
                if kind.is_dir() {
                    if state.is_some_and(|s| path.starts_with(s)) && mode(&path) != 0o700 {
                        self.problems.push(format!(
                            "{label}/{}: a state directory with mode {:o}, not 700",
                            path.strip_prefix(root).unwrap().display(),
                            mode(&path)
                        ));
                    }
                    stack.push(path);
                    continue;
                }
                if !kind.is_file() {
                    continue;
                }
                let shown = format!("{label}/{}", path.strip_prefix(root).unwrap().display());
                let bytes = std::fs::read(&path).unwrap();
                if path.extension().is_some_and(|e| e == "ign") {
                    self.ignition += 1;
                    let site_dir = path.parent().unwrap().to_path_buf();
                    self.private_file(&path, &site_dir, &shown);
                    continue;
                }
                if own.contains(&path) {
                    self.secret_files += 1;
                    self.private_file(&path, path.parent().unwrap(), &shown);
                    continue;
                }
                if let Some(state) = state.filter(|s| path.starts_with(s)) {
                    if is_sealed(&bytes) || private_name(&path.to_string_lossy()) {
                        self.sealed += 1;
                        self.private_file(&path, state, &shown);
                        if !is_sealed(&bytes) && !self.plain_state {
                            self.problems.push(format!(
                                "{shown}: a private file stored unsealed although state.encryption_key is set"
                            ));
                        }
                        continue;
                    }
                }
                self.swept += 1;
                self.problems
                    .extend(leaks(secrets, &shown, &String::from_utf8_lossy(&bytes)));
            }
        }
    }
}

/// Whether a state file's name says it is private (as the PKI and the
/// key store name them).
fn private_name(name: &str) -> bool {
    name.ends_with(".key")
        || name.ends_with(".conf")
        || name.ends_with("_key")
        || name.ends_with("id_ed25519")
}

/// Every private file of the local state below `state` (opened with the
/// fleet's state key when sealed), added to `secrets` by what it is; the
/// public material (certificates, public keys) learned first.
fn collect_state_secrets(fleet: &Path, state: &Path, secrets: &mut Secrets) -> usize {
    let sealer = fleet
        .join(STATE_KEY)
        .exists()
        .then(|| Sealer::from_ref(&SecretRef::File(STATE_KEY.into()), fleet).unwrap());
    let files = super::files_below(state);
    for rel in &files {
        let stored = std::fs::read(state.join(rel)).unwrap();
        if !is_sealed(&stored) && !private_name(&rel.to_string_lossy()) {
            secrets.add_public(&String::from_utf8_lossy(&stored));
        }
    }
    let mut n = 0;
    for rel in files {
        let key = rel.to_string_lossy().into_owned();
        let stored = std::fs::read(state.join(&rel)).unwrap();
        let plain = if is_sealed(&stored) {
            let sealer = sealer.as_ref().expect("a sealed object but no state key");
            sealer.open(&key, &stored).unwrap().to_vec()
        } else if private_name(&key) {
            stored
        } else {
            continue;
        };
        let plain = String::from_utf8_lossy(&plain).into_owned();
        let kind = if key.starts_with("hostkeys/") {
            "an SSH host private key".to_string()
        } else if key.starts_with("ssh/") {
            "metalherd's own SSH private key".to_string()
        } else if key.starts_with("pki/") {
            format!("PKI private material ({})", key.rsplit('/').next().unwrap())
        } else {
            format!("sealed state object {key}")
        };
        secrets.add_private(&kind, &plain);
        n += 1;
    }
    n
}

/// Fails with every finding, none showing a secret.
fn assert_clean(problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{} secret-hygiene problem(s):\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}

// ------------------------------------------------------------ helpers

/// A fresh value nobody else could print by chance.
fn distinctive(prefix: &str) -> String {
    use rand_core::RngCore;
    let mut bytes = [0u8; 8];
    rand_core::OsRng.fill_bytes(&mut bytes);
    format!("{prefix}-{}", hex::encode(bytes))
}

/// A process stopped (SIGKILL, by PID) when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn as_strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not start: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn write_private(path: &Path, contents: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::set_permissions(path.parent().unwrap(), PermissionsExt::from_mode(0o700)).unwrap();
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, PermissionsExt::from_mode(0o600)).unwrap();
}

/// `metalherd state keygen`: a new age identity (the whole output is the
/// secret, so it is not swept).
fn keygen(fleet: &Path) -> String {
    let out = metalherd_env(fleet, &["state", "keygen"], &[]);
    assert!(out.status.success(), "keygen: {}", text(&out.stderr));
    text(&out.stdout)
}

fn age_identity(file: &str) -> String {
    file.lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .unwrap()
        .to_string()
}

/// Puts `state.encryption_key: file:keys/state.age` into the fleet and
/// writes a fresh identity there (0600 in a 0700 `keys/`).
fn seal_state(fleet: &Path, secrets: &mut Secrets) {
    let yaml_path = fleet.join("inventory/fleet.yaml");
    let yaml = std::fs::read_to_string(&yaml_path).unwrap();
    let start = yaml.find("state:\n").unwrap();
    let end = yaml[start..].find("traffic:").unwrap() + start;
    let state = format!(
        "state:\n  backend: local\n  path: .metalherd/state\n  encryption_key: file:{STATE_KEY}\n"
    );
    std::fs::write(
        &yaml_path,
        format!("{}{state}{}", &yaml[..start], &yaml[end..]),
    )
    .unwrap();
    let identity = keygen(fleet);
    secrets.add("the state's age identity", &age_identity(&identity));
    write_private(&fleet.join(STATE_KEY), &identity);
}

/// Rewrites each machine's `bmc.address` (and `bmc.system`) in
/// `inventory/<site>.yaml`.
fn point_bmcs(fleet: &Path, site: &str, address: &str, by_name: bool) {
    let path = fleet.join(format!("inventory/{site}.yaml"));
    let mut out = String::new();
    let mut machine = String::new();
    for line in std::fs::read_to_string(&path).unwrap().lines() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        if let Some(name) = trimmed.strip_prefix("- name: ") {
            machine = name.trim().to_string();
        }
        if trimmed.starts_with("address:") {
            out.push_str(&format!("{indent}address: \"{address}\"\n"));
        } else if trimmed.starts_with("system:") && by_name {
            out.push_str(&format!("{indent}system: /redfish/v1/Systems/{machine}\n"));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    std::fs::write(&path, out).unwrap();
}

fn machine_names(fleet: &Path, site: &str) -> Vec<String> {
    std::fs::read_to_string(fleet.join(format!("inventory/{site}.yaml")))
        .unwrap()
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("- name: "))
        .map(|n| n.trim().to_string())
        .collect()
}

/// sushy-emulator (fake driver) on loopback, demanding basic auth with
/// `users` (user, password), one system per name.
fn sushy(users: &[(&str, &str)], names: &[String], dir: &Path) -> (Running, u16) {
    let emulator = require_pip("sushy-emulator", "sushy-tools");
    let python = emulator.with_file_name("python3");
    let python = if python.is_file() {
        python
    } else {
        PathBuf::from("python3")
    };
    let mut htpasswd = String::new();
    for (user, password) in users {
        // The password on stdin, not in python's argv.
        let mut child = Command::new(&python)
            .args([
                "-c",
                "import sys, bcrypt; print(bcrypt.hashpw(sys.stdin.read().encode(), bcrypt.gensalt(rounds=4)).decode())",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(password.as_bytes())
            .unwrap();
        let hash = child.wait_with_output().unwrap();
        assert!(
            hash.status.success(),
            "python3 bcrypt: {} (pip install bcrypt)",
            text(&hash.stderr)
        );
        htpasswd.push_str(&format!("{user}:{}", text(&hash.stdout)));
    }
    std::fs::write(dir.join("htpasswd"), htpasswd).unwrap();
    let systems: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, n)| format!("{{'uuid': '00000000-0000-4000-8000-{:012}', 'name': '{n}', 'power_state': 'Off', 'nics': []}}", i + 1))
        .collect();
    std::fs::write(
        dir.join("conf.py"),
        format!(
            "SUSHY_EMULATOR_FAKE_DRIVER = True\nSUSHY_EMULATOR_STATE_DIR = '{0}/state'\nSUSHY_EMULATOR_AUTH_FILE = '{0}/htpasswd'\nSUSHY_EMULATOR_FAKE_SYSTEMS = [{1}]\n",
            dir.display(),
            systems.join(", ")
        ),
    )
    .unwrap();
    let port = free_port();
    let log = dir.join("sushy.log");
    let child = Command::new(emulator)
        .args(["--config", dir.join("conf.py").to_str().unwrap()])
        .args(["-i", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let running = Running(child);
    wait_for_port(port, "sushy-emulator", &log);
    (running, port)
}

/// One HTTP/1.1 request to the boot server; (status, body).
fn http(port: u16, method: &str, path: &str, headers: &[String], body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    if method == "POST" {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(buf.len(), |i| i + 4);
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, String::from_utf8_lossy(&buf[split..]).into_owned())
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let Some(Ok(b)) = s.get(i + 1..i + 3).map(|h| u8::from_str_radix(h, 16)) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The report secret in a served Ignition: in its own files, or in the
/// final config embedded as a data URL (the install stage).
fn report_secret(ign: &serde_json::Value) -> Option<String> {
    for f in ign["storage"]["files"].as_array()? {
        let source = f["contents"]["source"].as_str().unwrap_or("");
        let data = if let Some(d) = source.strip_prefix("data:,") {
            percent_decode(d)
        } else if let Some(d) = source.strip_prefix("data:;base64,") {
            String::from_utf8_lossy(
                &base64::engine::general_purpose::STANDARD
                    .decode(d)
                    .unwrap_or_default(),
            )
            .into_owned()
        } else {
            continue;
        };
        if f["path"] == "/etc/metalherd/report-secret" {
            return Some(data.trim().to_string());
        }
        if let Ok(inner) = serde_json::from_str::<serde_json::Value>(&data) {
            if let Some(secret) = report_secret(&inner) {
                return Some(secret);
            }
        }
    }
    None
}

fn token_of(script: &str) -> String {
    script
        .split("token=")
        .nth(1)
        .unwrap_or_else(|| panic!("no token in the iPXE script"))
        .split(|c: char| c.is_whitespace() || c == '&' || c == '"')
        .next()
        .unwrap()
        .to_string()
}

fn host_key_fingerprint(state: &Path, site: &str, machine: &str) -> String {
    let public = std::fs::read_to_string(state.join(format!(
        "hostkeys/{site}/{machine}/ssh_host_ed25519_key.pub"
    )))
    .unwrap();
    ssh_key::PublicKey::from_openssh(public.trim())
        .unwrap()
        .fingerprint(ssh_key::HashAlg::Sha256)
        .to_string()
}

// ------------------------------------------------------------ the tests

#[test]
fn the_sweep_finds_planted_secrets() {
    let mut secrets = Secrets::default();
    secrets.add("a BMC password", "S3cr3t-bmc-planted-4711");
    secrets.add_password("the ber BMC password", "admin", "pl4nted-ber");
    let key = metalherd::keys::KeyPair::generate("planted").unwrap();
    secrets.add_private("an SSH host private key", key.private_openssh());
    let body_line = key.private_openssh().lines().nth(2).unwrap().to_string();
    let kubeconfig = format!(
        "users:\n- user:\n    client-key-data: {}\n",
        base64::engine::general_purpose::STANDARD.encode("-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgplantedplantedplan\n-----END PRIVATE KEY-----\n")
    );
    secrets.add_private("PKI private material (admin.conf)", &kubeconfig);
    assert!(secrets.count("an SSH host private key") >= 3);

    assert!(leaks(&secrets, "clean", "fra-cp-01: power on: 401 (admin)").is_empty());
    assert_eq!(
        leaks(
            &secrets,
            "log",
            "error: login S3cr3t-bmc-planted-4711 refused"
        ),
        ["log: contains a BMC password"]
    );
    assert_eq!(
        leaks(&secrets, "stderr", &format!("x {body_line} y")),
        ["stderr: contains an SSH host private key"]
    );
    assert_eq!(
        leaks(
            &secrets,
            "out",
            "Authorization: Basic YWRtaW46cGw0bnRlZC1iZXI="
        ),
        ["out: contains the ber BMC password (as HTTP basic auth)"]
    );
    assert_eq!(
        leaks(
            &secrets,
            "json",
            "\"k\": \"MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgplantedplantedplan\""
        ),
        ["json: contains PKI private material (admin.conf)"]
    );
    assert_eq!(
        leaks(&secrets, "f", "-----BEGIN EC PRIVATE KEY-----"),
        ["f: contains a private key header"]
    );
    let encoded = body_line.replace('/', "%2F").replace('+', "%2B");
    assert_eq!(
        leaks(
            &secrets,
            "url",
            &format!("data:,{}", encoded.replace('%', "%25"))
        ),
        ["url: contains an SSH host private key"]
    );
    let in_base64 = base64::engine::general_purpose::STANDARD.encode(key.private_openssh());
    assert_eq!(
        leaks(
            &secrets,
            "ign",
            &format!("{{\"source\":\"data:;base64,{in_base64}\"}}")
        ),
        [
            "ign: contains a private key header",
            "ign: contains an OpenSSH private key body",
            "ign: contains an SSH host private key"
        ]
    );
    let found = leaks(&secrets, "f", "AGE-SECRET-KEY-1ABC");
    assert_eq!(found, ["f: contains an age identity"]);
    // The messages never carry the secret itself.
    assert!(leaks(&secrets, "x", &body_line)
        .iter()
        .all(|m| !m.contains(&body_line)));

    // A private key's line that is public material (a certificate holds
    // it) is not searched for; its private lines are.
    let mut paired = Secrets::default();
    let shared = "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFB";
    paired.add_public(&format!(
        "-----BEGIN CERTIFICATE-----\nMIIB{shared}\n-----END CERTIFICATE-----\n"
    ));
    let private_line = "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0";
    paired.add_private(
        "k",
        &format!(
            "-----BEGIN PRIVATE KEY-----\n{private_line}\n{shared}\n-----END PRIVATE KEY-----\n"
        ),
    );
    assert_eq!(paired.known, [("k".to_string(), private_line.to_string())]);

    // Modes: a world-readable key and an open directory are found.
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let key_file = state.join("hostkeys/fra/ssh_host_ed25519_key");
    write_private(&key_file, "age-encryption.org/v1\n...");
    std::fs::set_permissions(state.join("hostkeys"), PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&state, PermissionsExt::from_mode(0o700)).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "pw S3cr3t-bmc-planted-4711").unwrap();
    std::fs::write(state.join("plain.key"), key.private_openssh()).unwrap();
    let mut disk = Disk::default();
    disk.tree(dir.path(), "planted", Some(&state), &[], &secrets);
    let all = disk.problems.join("\n");
    assert!(
        all.contains("planted/notes.txt: contains a BMC password"),
        "{all}"
    );
    assert!(
        all.contains("planted/state/hostkeys: a state directory with mode 755"),
        "{all}"
    );
    assert!(
        all.contains("planted/state/plain.key: mode 644, not 600"),
        "{all}"
    );
    assert!(
        all.contains("planted/state/plain.key: a private file stored unsealed"),
        "{all}"
    );
    assert!(!all.contains("S3cr3t"), "{all}");
}

/// Inventory, render, dnsmasq, power against a real Redfish BMC (right and
/// wrong passwords, a bad credentials format, a missing variable, an
/// unreachable BMC), the boot server with a whole boot and the abuses of
/// its secrets, the state and audit commands, a wrong and a missing state
/// key, inline secrets in the inventory: no secret anywhere, and every
/// secret file private.
#[test]
fn no_secret_in_any_output_log_or_file_and_secret_files_are_private() {
    let started = Instant::now();
    let fleet = example_fleet();
    let f = fleet.path();
    let work = tempfile::tempdir().unwrap();
    let mut secrets = Secrets::default();
    let mut said = Said::default();

    // --- The fleet: sealed state, fra's BMC password in the environment,
    // ber's in a file, muc's BMCs unreachable.
    seal_state(f, &mut secrets);
    let fra_pw = distinctive("S3cr3t-bmc-fra");
    let ber_pw = distinctive("S3cr3t-bmc-ber");
    let muc_pw = distinctive("S3cr3t-bmc-muc");
    let wrong_pw = distinctive("S3cr3t-wrong");
    let no_colon = distinctive("S3cr3t-nocolon");
    secrets.add_password("the fra BMC password", "admin", &fra_pw);
    secrets.add_password("the ber BMC password", "ber-admin", &ber_pw);
    secrets.add_password("the muc BMC password", "admin", &muc_pw);
    secrets.add_password("a wrong BMC password", "admin", &wrong_pw);
    secrets.add("a malformed BMC credential", &no_colon);
    write_private(&f.join(BER_BMC), &format!("ber-admin:{ber_pw}\n"));
    let site = f.join("sites/ber.yaml");
    let yaml = std::fs::read_to_string(&site)
        .unwrap()
        .replace("env:BER_BMC_CREDENTIALS", &format!("file:{BER_BMC}"));
    assert!(yaml.contains(BER_BMC));
    std::fs::write(&site, yaml).unwrap();

    let mut names = machine_names(f, "fra");
    names.extend(machine_names(f, "ber"));
    let (_bmc, port) = sushy(
        &[("admin", &fra_pw), ("ber-admin", &ber_pw)],
        &names,
        work.path(),
    );
    let bmc = format!("http://127.0.0.1:{port}");
    point_bmcs(f, "fra", &bmc, true);
    point_bmcs(f, "ber", &bmc, true);
    // muc's BMCs answer nothing (each its own system there: one BMC
    // powers one machine).
    let dead = format!("http://127.0.0.1:{}", free_port());
    point_bmcs(f, "muc", &dead, true);

    let fra_creds = format!("admin:{fra_pw}");
    let muc_creds = format!("admin:{muc_pw}");
    let wrong_creds = format!("admin:{wrong_pw}");
    let good_env = [
        ("FRA_BMC_CREDENTIALS", fra_creds.as_str()),
        ("MUC_BMC_CREDENTIALS", muc_creds.as_str()),
    ];
    let run = |said: &mut Said, args: &[&str], env: &[(&str, &str)]| -> Output {
        let out = metalherd_env(f, args, env);
        let filter = env.iter().find(|(k, _)| *k == "METALHERD_LOG");
        let label = match filter {
            Some((_, v)) => format!("METALHERD_LOG={v} {}", args.join(" ")),
            None => args.join(" "),
        };
        said.output(&label, &out);
        out
    };
    let ok = |out: &Output, what: &str| {
        assert!(
            out.status.success(),
            "{what}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    };

    // --- Inventory and render (which generates and seals every key).
    for output in ["text", "json"] {
        ok(
            &run(
                &mut said,
                &["--output", output, "-vv", "inventory", "check"],
                &good_env,
            ),
            "check",
        );
        ok(
            &run(
                &mut said,
                &["--output", output, "-vv", "inventory", "show"],
                &good_env,
            ),
            "show",
        );
        let out = run(
            &mut said,
            &["--output", output, "-vv", "render", "--out", "out"],
            &good_env,
        );
        ok(&out, "render");
        ok(
            &run(
                &mut said,
                &[
                    "--output",
                    output,
                    "-vv",
                    "dnsmasq",
                    "--site",
                    "fra",
                    "--out",
                    "fra.dnsmasq",
                ],
                &good_env,
            ),
            "dnsmasq --out",
        );
    }
    ok(
        &run(&mut said, &["dnsmasq", "--site", "ber"], &good_env),
        "dnsmasq",
    );
    ok(
        &run(
            &mut said,
            &["render", "--out", "out-one", "--machine", "fra-cp-01"],
            &good_env,
        ),
        "render --machine",
    );

    // --- Power, against the real Redfish emulator.
    let power = |args: &[&str]| -> Vec<String> {
        let mut all: Vec<String> = ["-vv", "power"].iter().map(|s| s.to_string()).collect();
        all.extend(args.iter().map(|s| s.to_string()));
        all.extend(
            [
                "--retries",
                "1",
                "--retry-delay-ms",
                "50",
                "--timeout",
                "20",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        all
    };
    for output in ["text", "json"] {
        let with = |args: &[&str]| {
            let mut v = vec!["--output".to_string(), output.to_string()];
            v.extend(power(args));
            v
        };
        let a = with(&["status", "--site", "fra"]);
        ok(&run(&mut said, &as_strs(&a), &good_env), "power status fra");
        let a = with(&["status", "--site", "ber"]);
        ok(
            &run(&mut said, &as_strs(&a), &good_env),
            "power status ber (file:)",
        );
        // A boot-override PATCH and its read-back.
        let a = with(&["disk", "fra-cp-02"]);
        ok(&run(&mut said, &as_strs(&a), &good_env), "power disk");
        let a = with(&["status", "fra-cp-01"]);
        let out = run(
            &mut said,
            &as_strs(&a),
            &[("FRA_BMC_CREDENTIALS", &wrong_creds)],
        );
        said.note("a wrong password");
        assert_eq!(out.status.code(), Some(1), "a wrong password fails");
        assert!(
            format!("{}{}", text(&out.stdout), text(&out.stderr)).contains("401"),
            "{}",
            text(&out.stdout)
        );
        let out = run(
            &mut said,
            &as_strs(&a),
            &[("FRA_BMC_CREDENTIALS", &no_colon)],
        );
        said.note("credentials without a colon");
        assert_eq!(out.status.code(), Some(1), "a malformed credential fails");
        let out = run(&mut said, &as_strs(&a), &[]);
        said.note("no credentials variable");
        assert_eq!(out.status.code(), Some(1), "a missing variable fails");
        let a = with(&["status", "muc-cp-01"]);
        let out = run(&mut said, &as_strs(&a), &good_env);
        said.note("an unreachable BMC");
        assert_eq!(out.status.code(), Some(1), "an unreachable BMC fails");
    }

    // Every crate's logs at trace (METALHERD_LOG takes a tracing filter):
    // the HTTP client's too, which sends the password.
    for (creds, note) in [
        (&fra_creds, "the right password"),
        (&wrong_creds, "a wrong password"),
    ] {
        let a = power(&["status", "fra-cp-01"]);
        run(
            &mut said,
            &as_strs(&a),
            &[("FRA_BMC_CREDENTIALS", creds), ("METALHERD_LOG", "trace")],
        );
        said.note(note);
    }

    // --- The boot server: a whole boot of an installing machine and of a
    // RAM-booted one, and the abuses of its tokens and report secrets.
    let serve_port = free_port();
    let serve_log = work.path().join("serve.log");
    let listen = format!("127.0.0.1:{serve_port}");
    let child = Command::new(env!("CARGO_BIN_EXE_metalherd"))
        .args(["serve", "--listen", &listen])
        .env_clear()
        .env("METALHERD_LOG", "trace")
        .current_dir(f)
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdout(std::fs::File::create(work.path().join("serve.out")).unwrap())
        .stderr(std::fs::File::create(&serve_log).unwrap())
        .spawn()
        .unwrap();
    let server = Running(child);
    wait_for_port(serve_port, "metalherd serve", &serve_log);
    let state = f.join(".metalherd/state");
    let mut answers = Vec::new();
    let armed = run(
        &mut said,
        &[
            "boot",
            "arm",
            "fra-cp-01",
            "ber-wk-01",
            "--reason",
            "a test boot",
        ],
        &[],
    );
    ok(&armed, "boot arm");
    for (site, machine, mac) in [
        ("fra", "fra-cp-01", "52:54:00:fa:00:01"),
        ("ber", "ber-wk-01", "52-54-00-BE-00-04"),
    ] {
        let (status, script) = http(serve_port, "GET", &format!("/ipxe?mac={mac}"), &[], "");
        assert_eq!(status, 200, "{script}");
        let token = token_of(&script);
        secrets.add("a one-time token", &token);
        // A made-up token first: refused.
        let forged = distinctive("f0rged").replace('-', "");
        secrets.add("a token presented by an attacker", &forged);
        let (status, _) = http(
            serve_port,
            "GET",
            &format!("/ignition?mac={mac}&token={forged}"),
            &[],
            "",
        );
        assert_eq!(status, 403);
        let ignition = format!("/ignition?mac={mac}&token={token}");
        let (status, ign) = http(serve_port, "GET", &ignition, &[], "");
        assert_eq!(status, 200, "{ign}");
        let doc: serde_json::Value = serde_json::from_str(&ign).unwrap();
        let secret = report_secret(&doc).unwrap_or_else(|| panic!("no report secret"));
        secrets.add("a report secret", &secret);
        // Replayed: refused.
        assert_eq!(http(serve_port, "GET", &ignition, &[], "").0, 403);
        let fingerprint = host_key_fingerprint(&state, site, machine);
        let report = format!("{{\"host_key_fingerprint\":\"{fingerprint}\"}}");
        let guessed = distinctive("gue55ed").replace('-', "");
        secrets.add("a report secret presented by an attacker", &guessed);
        let path = format!("/report/{machine}");
        let (status, body) = http(
            serve_port,
            "POST",
            &path,
            &[format!("Authorization: Bearer {guessed}")],
            &report,
        );
        assert_eq!(status, 401, "{body}");
        answers.push((format!("POST {path} (wrong secret)"), body));
        let (status, body) = http(
            serve_port,
            "POST",
            &path,
            &[format!("Authorization: Bearer {secret}")],
            &report,
        );
        assert!(status < 300, "report: {status} {body}");
        answers.push((format!("POST {path}"), body));
        // A forged host key with the right secret: flagged and logged.
        let (_, body) = http(
            serve_port,
            "POST",
            &path,
            &[format!("Authorization: Bearer {secret}")],
            "{\"host_key_fingerprint\":\"SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"}",
        );
        answers.push((format!("POST {path} (other key)"), body));
    }
    // A reload (SIGHUP) of a fleet with an inline secret: refused and
    // logged, the value never echoed; then a good reload.
    let muc = f.join("sites/muc.yaml");
    let good_muc = std::fs::read_to_string(&muc).unwrap();
    let reload_pw = distinctive("S3cr3t-reload");
    secrets.add("an inline BMC password (on reload)", &reload_pw);
    std::fs::write(
        &muc,
        good_muc.replace(
            "\"env:MUC_BMC_CREDENTIALS\"",
            &format!("\"admin:{reload_pw}\""),
        ),
    )
    .unwrap();
    for expected in ["reload failed", "reloaded: serving"] {
        let hup = Command::new("kill")
            .args(["-HUP", &server.0.id().to_string()])
            .status()
            .unwrap();
        assert!(hup.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        while !std::fs::read_to_string(&serve_log)
            .unwrap()
            .contains(expected)
        {
            assert!(Instant::now() < deadline, "serve never logged {expected:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
        std::fs::write(&muc, &good_muc).unwrap();
    }
    for path in ["/api/v1/machines", "/metrics", "/boot.ipxe", "/healthz"] {
        let (status, body) = http(serve_port, "GET", path, &[], "");
        assert_eq!(status, 200, "{path}");
        answers.push((format!("GET {path}"), body));
    }
    let machines = &answers
        .iter()
        .find(|(w, _)| w == "GET /api/v1/machines")
        .unwrap()
        .1;
    assert!(machines.contains("\"reported\""), "{machines}");
    drop(server);
    for (what, body) in answers {
        said.push(format!("boot server answer to {what}"), body);
    }
    said.push(
        "`METALHERD_LOG=trace serve` log",
        std::fs::read_to_string(&serve_log).unwrap(),
    );
    said.push(
        "`METALHERD_LOG=trace serve` stdout",
        std::fs::read_to_string(work.path().join("serve.out")).unwrap(),
    );

    // --- The state and the audit log, and plans.
    for output in ["text", "json"] {
        for args in [
            &["state", "show"][..],
            &["state", "history"],
            &["state", "locks"],
            &["audit"],
            &["plan", "site", "fra", "--no-probe"],
        ] {
            let mut all = vec!["--output", output, "-vv"];
            all.extend_from_slice(args);
            let out = run(&mut said, &all, &good_env);
            assert!(out.status.code().is_some(), "{args:?}");
        }
    }

    // --- A wrong state key, then none: errors that name the key's
    // reference, never a key.
    let right = std::fs::read_to_string(f.join(STATE_KEY)).unwrap();
    let wrong = keygen(f);
    secrets.add("a wrong age identity", &age_identity(&wrong));
    write_private(&f.join(STATE_KEY), &wrong);
    for output in ["text", "json"] {
        let out = run(
            &mut said,
            &["--output", output, "-vv", "render", "--out", "out-wrong"],
            &good_env,
        );
        assert_eq!(out.status.code(), Some(1), "a wrong state key fails");
        let out = run(
            &mut said,
            &["--output", output, "-vv", "power", "status", "fra-cp-01"],
            &good_env,
        );
        assert!(out.status.code().is_some());
    }
    std::fs::remove_file(f.join(STATE_KEY)).unwrap();
    let out = run(
        &mut said,
        &["-vv", "render", "--out", "out-wrong"],
        &good_env,
    );
    assert_eq!(out.status.code(), Some(1), "a missing state key fails");
    write_private(&f.join(STATE_KEY), &right);

    // --- Inline secrets in the inventory: refused, never echoed.
    let broken = example_fleet();
    let b = broken.path();
    let inline_pw = distinctive("S3cr3t-inline");
    let url_pw = distinctive("S3cr3t-url");
    secrets.add("an inline BMC password", &inline_pw);
    secrets.add("a password in a BMC URL", &url_pw);
    let admin_key = metalherd::keys::KeyPair::generate("pasted").unwrap();
    secrets.add_private(
        "a private key pasted as an admin key",
        admin_key.private_openssh(),
    );
    std::fs::write(
        b.join("sites/fra.yaml"),
        std::fs::read_to_string(b.join("sites/fra.yaml"))
            .unwrap()
            .replace(
                "\"env:FRA_BMC_CREDENTIALS\"",
                &format!("\"admin:{inline_pw}\""),
            ),
    )
    .unwrap();
    point_bmcs(
        b,
        "ber",
        &format!("https://admin:{url_pw}@10.20.1.11"),
        false,
    );
    let pasted: String = admin_key
        .private_openssh()
        .lines()
        .map(|l| format!("      {l}\n"))
        .collect();
    let yaml = std::fs::read_to_string(b.join("inventory/fleet.yaml")).unwrap();
    let alice_start = yaml.find("    ssh_authorized_key: \"ssh-ed25519").unwrap();
    let alice_end = yaml[alice_start..].find('\n').unwrap() + alice_start + 1;
    std::fs::write(
        b.join("inventory/fleet.yaml"),
        format!(
            "{}    ssh_authorized_key: |\n{pasted}{}",
            &yaml[..alice_start],
            &yaml[alice_end..]
        ),
    )
    .unwrap();
    for output in ["text", "json"] {
        for args in [
            &["inventory", "check"][..],
            &["render", "--out", "out"],
            &["power", "status", "fra-cp-01"],
        ] {
            let mut all = vec!["--output", output, "-vv"];
            all.extend_from_slice(args);
            let out = metalherd_env(b, &all, &good_env);
            assert_eq!(out.status.code(), Some(1), "{args:?} on inline secrets");
            said.output(&format!("{} (inline secrets)", all.join(" ")), &out);
        }
    }
    let diagnostics: String = said
        .0
        .iter()
        .filter(|(w, _)| w.starts_with("`--output text -vv inventory check (inline secrets)`"))
        .map(|(_, t)| t.as_str())
        .collect();
    for file in [
        "sites/fra.yaml",
        "inventory/ber.yaml",
        "inventory/fleet.yaml",
    ] {
        assert!(
            diagnostics.contains(file),
            "{file} not named: {diagnostics}"
        );
    }

    // --- Collect the keys the state holds, then sweep.
    let opened = collect_state_secrets(f, &state, &mut secrets);
    assert!(opened >= 19, "{opened} sealed keys in the state");
    assert!(secrets.count("an SSH host private key") >= 18 * 3);
    assert!(secrets.count("metalherd's own SSH private key") >= 3);
    assert!(secrets.count("a one-time token") == 2 && secrets.count("a report secret") >= 2);

    let mut problems = Vec::new();
    for (place, said) in &said.0 {
        problems.extend(leaks(&secrets, place, said));
    }
    let mut disk = Disk::default();
    let own = [f.join(STATE_KEY), f.join(BER_BMC)];
    disk.tree(f, "fleet", Some(&state), &own, &secrets);
    problems.extend(disk.problems.iter().cloned());
    assert_eq!(mode(&state), 0o700, "the state directory");
    eprintln!(
        "secrets: {} values ({} key lines), {} outputs, {} files swept, {} Ignition files and {} sealed state files and {} own secret files checked for modes, in {:?}",
        secrets.known.len(),
        secrets.count("an SSH host") + secrets.count("metalherd's own"),
        said.0.len(),
        disk.swept,
        disk.ignition,
        disk.sealed,
        disk.secret_files,
        started.elapsed()
    );
    assert!(disk.ignition > 18, "{} Ignition files", disk.ignition);
    assert!(disk.sealed >= 19);
    assert_clean(&problems);
}

/// The default fleet, without `state.encryption_key`: the keys are plain
/// OpenSSH files (another code path), still 0600 in 0700 directories and
/// never printed by render, inventory or dnsmasq, in text or JSON.
#[test]
fn without_a_state_key_plain_keys_are_private_and_never_printed() {
    let fleet = example_fleet();
    let f = fleet.path();
    let mut said = Said::default();
    for output in ["text", "json"] {
        for args in [
            &["render", "--out", "out"][..],
            &["render", "--out", "out", "--site", "ber"],
            &["inventory", "show"],
            &["dnsmasq", "--site", "muc"],
            &["state", "show"],
        ] {
            let mut all = vec!["--output", output, "-vv"];
            all.extend_from_slice(args);
            let out = metalherd_env(f, &all, &[]);
            assert!(out.status.success(), "{all:?}: {}", text(&out.stderr));
            said.output(&all.join(" "), &out);
        }
    }
    // An admin kubeconfig of a generation seeded into the state: all its
    // outputs but the fresh client key it is there to hand out.
    super::kubeconfig::seed(f, "fra", &[1], 1, &[]);
    let handed = |s: &str| -> String {
        let kept = s.lines().filter(|l| !l.contains("client-key-data:"));
        kept.collect::<Vec<_>>().join("\n")
    };
    let kc = tempfile::tempdir().unwrap();
    for output in ["text", "json"] {
        let file = kc.path().join(output);
        let args = ["--output", output, "-vv", "kubeconfig", "--site", "fra"];
        let out = metalherd_env(f, &args, &[]);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        let label = args.join(" ");
        said.push(format!("`{label}` stdout"), handed(&text(&out.stdout)));
        said.push(format!("`{label}` stderr"), text(&out.stderr));
        let out = metalherd_env(
            f,
            &[&args[..], &["--out", file.to_str().unwrap()]].concat(),
            &[],
        );
        assert!(
            out.status.success(),
            "{args:?} --out: {}",
            text(&out.stderr)
        );
        said.output(&format!("{label} --out"), &out);
        said.push(
            format!("kubeconfig --out ({output})"),
            handed(&std::fs::read_to_string(&file).unwrap()),
        );
    }
    let state = f.join(".metalherd/state");
    let pki = super::files_below(&state.join("pki"))
        .iter()
        .filter(|p| private_name(&p.to_string_lossy()))
        .count();
    let mut secrets = Secrets::default();
    let keys = collect_state_secrets(f, &state, &mut secrets);
    assert_eq!(
        keys,
        19 + pki,
        "18 host keys, metalherd's own and fra's PKI"
    );
    let mut problems = Vec::new();
    for (place, text) in &said.0 {
        problems.extend(leaks(&secrets, place, text));
    }
    let mut disk = Disk {
        plain_state: true,
        ..Disk::default()
    };
    disk.tree(f, "fleet", Some(&state), &[], &secrets);
    problems.extend(disk.problems.iter().cloned());
    assert_eq!((disk.sealed, disk.ignition), (19 + pki, 36));
    assert_clean(&problems);
}

/// `bootstrap` (PKI made, sealed and uploaded; etcd started), `exec` and
/// `ssh` on the network-namespace test hosts: a one-control-plane site.
#[test]
fn bootstrap_exec_and_ssh_leave_no_secret_in_output_or_files() {
    let started = Instant::now();
    let fleet = example_fleet();
    let f = fleet.path();
    let mut secrets = Secrets::default();
    let mut said = Said::default();
    seal_state(f, &mut secrets);
    // Site fra with one control plane, one worker and its spare.
    let site = f.join("sites/fra.yaml");
    let yaml = std::fs::read_to_string(&site)
        .unwrap()
        .replace("control_plane_count: 3", "control_plane_count: 1");
    std::fs::write(&site, yaml).unwrap();
    let inventory = f.join("inventory/fra.yaml");
    let yaml = std::fs::read_to_string(&inventory).unwrap();
    let mut parts = yaml.split("  - name: ");
    let mut kept = parts.next().unwrap().to_string();
    for block in parts {
        if ["fra-cp-01", "fra-wk-01", "fra-sp-"]
            .iter()
            .any(|m| block.starts_with(m))
        {
            kept.push_str("  - name: ");
            kept.push_str(block);
        }
    }
    std::fs::write(&inventory, kept).unwrap();
    let nodes = ["fra-cp-01", "fra-wk-01"];
    let hosts = Hosts::start(f, &nodes, &Options::default());

    let run = |said: &mut Said, args: &[&str]| -> Output {
        let out = hosts.metalherd(args);
        said.output(&args.join(" "), &out);
        out
    };
    let out = run(
        &mut said,
        &["-vv", "bootstrap", "site", "fra", "--ready-timeout", "60"],
    );
    assert!(
        out.status.success(),
        "bootstrap: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let out = run(
        &mut said,
        &["--output", "json", "-vv", "bootstrap", "site", "fra"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    for output in ["text", "json"] {
        let out = run(
            &mut said,
            &[
                "--output",
                output,
                "-vv",
                "exec",
                "--machines",
                "fra-cp-01,fra-wk-01",
                "--",
                "id",
                "-un",
            ],
        );
        assert!(out.status.success(), "exec: {}", text(&out.stderr));
        for args in [&["state", "show"][..], &["state", "history"], &["audit"]] {
            let mut all = vec!["--output", output, "-vv"];
            all.extend_from_slice(args);
            run(&mut said, &all);
        }
    }
    let out = run(&mut said, &["-vv", "ssh", "fra-cp-01", "--", "hostname"]);
    assert!(out.status.success(), "ssh: {}", text(&out.stderr));
    // Every crate's logs at trace: the SSH library's too.
    let out = hosts.metalherd_env(
        &["ssh", "fra-cp-01", "--", "hostname"],
        &[("METALHERD_LOG", "trace")],
    );
    said.output("METALHERD_LOG=trace ssh fra-cp-01 -- hostname", &out);
    assert!(out.status.success(), "ssh: {}", text(&out.stderr));
    let out = run(&mut said, &["-vv", "ssh", "fra-wk-01", "--", "false"]);
    assert_eq!(out.status.code(), Some(1), "the remote status is passed on");

    // What the nodes logged of the commands run there (sudo logs argv).
    for node in nodes {
        let sudo = std::fs::read_to_string(hosts.host_file(node, "/var/log/sudo.log")).unwrap();
        said.push(format!("{node}'s sudo log"), sudo);
        said.push(format!("{node}'s boot and sshd log"), hosts.host_log(node));
    }

    let state = f.join(".metalherd/state");
    let opened = collect_state_secrets(f, &state, &mut secrets);
    let pki = secrets.count("PKI private material");
    assert!(pki >= 20, "{pki} lines of PKI private material");
    assert!(opened > 20, "{opened} sealed objects");
    // The uploaded private files on the nodes: 0600, the stored ones.
    let mut problems = Vec::new();
    for (node, path) in [
        ("fra-cp-01", "/etc/etcd/pki/server.key"),
        ("fra-cp-01", "/etc/etcd/pki/peer.key"),
        ("fra-cp-01", "/etc/kubernetes/pki/ca.key"),
        ("fra-cp-01", "/etc/kubernetes/pki/sa.key"),
        ("fra-cp-01", "/etc/kubernetes/admin.conf"),
        ("fra-wk-01", "/etc/kubernetes/kubelet.conf"),
    ] {
        let file = hosts.host_file(node, path);
        let contents = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("{node}:{path} was not uploaded: {e}"));
        secrets.add_private(
            &format!("PKI private material ({path} on {node})"),
            &contents,
        );
        if mode(&file) != 0o600 {
            problems.push(format!("{node}:{path}: mode {:o}, not 600", mode(&file)));
        }
    }

    for (place, text) in &said.0 {
        problems.extend(leaks(&secrets, place, text));
    }
    let mut disk = Disk::default();
    disk.tree(f, "fleet", Some(&state), &[f.join(STATE_KEY)], &secrets);
    disk.tree(hosts.render_dir(), "render", None, &[], &secrets);
    problems.extend(disk.problems.iter().cloned());
    eprintln!(
        "secrets (bootstrap): {} values, {} outputs, {} files swept, {} Ignition files, {} sealed state files, in {:?}",
        secrets.known.len(),
        said.0.len(),
        disk.swept,
        disk.ignition,
        disk.sealed,
        started.elapsed()
    );
    assert!(disk.sealed > 20);
    assert_clean(&problems);
}
