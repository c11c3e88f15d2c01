//! A real three-member etcd cluster with mutual TLS on loopback, for the
//! etcd state backend's tests: certificates made here with rcgen, free
//! ports picked at runtime (parallel tests never share a port), one data
//! directory and log file per member in a temporary directory, every
//! member killed (by PID) and the directory removed on drop.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use metalherd::state::etcd::EtcdTls;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use super::require;

const MEMBERS: usize = 3;
/// How long a (re)started cluster may take to become healthy.
const START_TIMEOUT: Duration = Duration::from_secs(30);

pub struct EtcdCluster {
    dir: tempfile::TempDir,
    etcd: PathBuf,
    client_ports: Vec<u16>,
    peer_ports: Vec<u16>,
    token: String,
    members: Vec<Option<Child>>,
    tls: EtcdTls,
}

/// `n` distinct free loopback ports: all bound at once (so they differ),
/// then released for etcd to take.
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

fn write_private(path: &Path, text: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

struct Pki {
    ca: String,
    /// (cert, key) per member: server and peer, serverAuth + clientAuth.
    members: Vec<(String, String)>,
    /// The client's (cert, key).
    client: (String, String),
}

fn make_pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "metalherd test etcd CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::from_params(&ca_params, &ca_key);
    let leaf = |cn: &str, sans: Vec<String>, usages: Vec<ExtendedKeyUsagePurpose>| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(sans).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = usages;
        p.use_authority_key_identifier_extension = true;
        let cert = p.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    use ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
    let sans = || vec!["127.0.0.1".to_string(), "localhost".to_string()];
    Pki {
        ca: ca_cert.pem(),
        members: (0..MEMBERS)
            .map(|i| leaf(&format!("m{i}"), sans(), vec![ServerAuth, ClientAuth]))
            .collect(),
        client: leaf("metalherd", Vec::new(), vec![ClientAuth]),
    }
}

impl EtcdCluster {
    /// Three members, returned once every one of them reports healthy.
    pub fn start() -> EtcdCluster {
        let etcd = require("etcd", "etcd-server");
        let dir = tempfile::Builder::new()
            .prefix("metalherd-etcd-")
            .tempdir()
            .unwrap();
        let pki = make_pki();
        std::fs::write(dir.path().join("ca.crt"), &pki.ca).unwrap();
        for (i, (cert, key)) in pki.members.iter().enumerate() {
            std::fs::write(dir.path().join(format!("m{i}.crt")), cert).unwrap();
            write_private(&dir.path().join(format!("m{i}.key")), key);
        }
        std::fs::write(dir.path().join("client.crt"), &pki.client.0).unwrap();
        write_private(&dir.path().join("client.key"), &pki.client.1);
        let ports = free_ports(2 * MEMBERS);
        let token = format!(
            "metalherd-test-{}-{}",
            std::process::id(),
            dir.path().file_name().unwrap().to_string_lossy()
        );
        let mut cluster = EtcdCluster {
            etcd,
            client_ports: ports[..MEMBERS].to_vec(),
            peer_ports: ports[MEMBERS..].to_vec(),
            token,
            members: (0..MEMBERS).map(|_| None).collect(),
            tls: EtcdTls {
                ca_pem: pki.ca.clone(),
                cert_pem: pki.client.0.clone(),
                key_pem: zeroize::Zeroizing::new(pki.client.1.clone()),
            },
            dir,
        };
        for i in 0..MEMBERS {
            cluster.spawn(i, "new");
        }
        cluster.wait_healthy(&(0..MEMBERS).collect::<Vec<_>>(), START_TIMEOUT);
        cluster
    }

    pub fn endpoints(&self) -> Vec<url::Url> {
        (0..MEMBERS).map(|i| self.endpoint(i)).collect()
    }

    pub fn endpoint(&self, i: usize) -> url::Url {
        url::Url::parse(&format!("https://127.0.0.1:{}", self.client_ports[i])).unwrap()
    }

    pub fn tls(&self) -> EtcdTls {
        self.tls.clone()
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    pub fn cert_file(&self) -> PathBuf {
        self.dir.path().join("client.crt")
    }

    /// The client key, 0600.
    pub fn key_file(&self) -> PathBuf {
        self.dir.path().join("client.key")
    }

    /// Member `i`'s log (stdout and stderr).
    pub fn log_file(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("m{i}.log"))
    }

    /// Kills member `i` (SIGKILL: a crash, no goodbye to its peers).
    pub fn stop_member(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Restarts member `i` from its data directory. Returns once it is
    /// healthy if a majority of members is running (with less, a member
    /// cannot become healthy), else once it accepts connections.
    pub fn start_member(&mut self, i: usize) {
        assert!(self.members[i].is_none(), "member m{i} is running");
        self.spawn(i, "existing");
        let running: Vec<usize> = (0..MEMBERS)
            .filter(|&m| self.members[m].is_some())
            .collect();
        if running.len() * 2 > MEMBERS {
            self.wait_healthy(&[i], START_TIMEOUT);
        } else {
            let deadline = Instant::now() + START_TIMEOUT;
            while TcpStream::connect(("127.0.0.1", self.client_ports[i])).is_err() {
                self.check_alive(i);
                assert!(Instant::now() < deadline, "m{i} does not listen");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    fn url(port: u16) -> String {
        format!("https://127.0.0.1:{port}")
    }

    fn spawn(&mut self, i: usize, state: &str) {
        let d = self.dir.path();
        let file = |name: String| d.join(name).to_string_lossy().into_owned();
        let client = Self::url(self.client_ports[i]);
        let peer = Self::url(self.peer_ports[i]);
        let initial_cluster = (0..MEMBERS)
            .map(|m| format!("m{m}={}", Self::url(self.peer_ports[m])))
            .collect::<Vec<_>>()
            .join(",");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_file(i))
            .unwrap();
        let child = Command::new(&self.etcd)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .current_dir(d)
            .args(["--name", &format!("m{i}")])
            .args(["--data-dir", &file(format!("m{i}.data"))])
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", &self.token])
            .arg("--client-cert-auth")
            .args(["--trusted-ca-file", &file("ca.crt".into())])
            .args(["--cert-file", &file(format!("m{i}.crt"))])
            .args(["--key-file", &file(format!("m{i}.key"))])
            .arg("--peer-client-cert-auth")
            .args(["--peer-trusted-ca-file", &file("ca.crt".into())])
            .args(["--peer-cert-file", &file(format!("m{i}.crt"))])
            .args(["--peer-key-file", &file(format!("m{i}.key"))])
            // Small on disk: few snapshots and WAL files kept, a small
            // backend quota. (WAL segments are preallocated at 64 MB
            // each; etcd 3.4 has no flag for that.)
            .args(["--snapshot-count", "10000"])
            .args(["--max-snapshots", "1"])
            .args(["--max-wals", "1"])
            .args(["--quota-backend-bytes", &(256u64 << 20).to_string()])
            .args(["--logger", "zap", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.etcd.display()));
        self.members[i] = Some(child);
    }

    /// Panics with its log if member `i` has exited.
    fn check_alive(&mut self, i: usize) {
        if let Some(child) = self.members[i].as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                self.members[i] = None;
                panic!("etcd m{i} exited ({status}):\n{}", self.log_tail(i));
            }
        }
    }

    /// The last lines of member `i`'s log.
    pub fn log_tail(&self, i: usize) -> String {
        let text = std::fs::read_to_string(self.log_file(i)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Waits until each of `members` answers `/health` with `true` (which
    /// takes a leader and quorum), with the client certificate.
    pub fn wait_healthy(&mut self, members: &[usize], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let urls: Vec<(usize, String)> = members
            .iter()
            .map(|&i| (i, format!("{}/health", Self::url(self.client_ports[i]))))
            .collect();
        let mut pending = urls;
        let mut last = String::new();
        while !pending.is_empty() {
            for &(i, _) in &pending {
                self.check_alive(i);
            }
            let still = std::thread::scope(|s| {
                s.spawn(|| {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    rt.block_on(async {
                        // A client per round: its pool belongs to this runtime.
                        let client = self.health_client();
                        let mut still = Vec::new();
                        for (i, url) in &pending {
                            let said = match client.get(url).send().await {
                                Ok(r) => r.text().await.unwrap_or_default(),
                                Err(e) => e.to_string(),
                            };
                            if !said.contains(r#""health":"true""#) {
                                still.push(((*i, url.clone()), said));
                            }
                        }
                        still
                    })
                })
                .join()
                .unwrap()
            });
            if let Some((_, said)) = still.last() {
                last = said.clone();
            }
            pending = still.into_iter().map(|(p, _)| p).collect();
            if pending.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                let logs: String = pending
                    .iter()
                    .map(|(i, _)| format!("--- m{i} log:\n{}\n", self.log_tail(*i)))
                    .collect();
                panic!(
                    "etcd members {:?} not healthy within {timeout:?} (last answer: {last})\n{logs}",
                    pending.iter().map(|(i, _)| *i).collect::<Vec<_>>()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The member that leads now (waits up to 10 s for an election).
    pub fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(i) = self.current_leader() {
                return i;
            }
            assert!(Instant::now() < deadline, "no etcd leader within 10 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The member the running members call leader, if they agree on one.
    fn current_leader(&self) -> Option<usize> {
        let running: Vec<usize> = (0..MEMBERS)
            .filter(|&m| self.members[m].is_some())
            .collect();
        std::thread::scope(|s| {
            s.spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    let client = self.health_client();
                    // Each member's id, and whom it calls leader.
                    let mut ids = Vec::new();
                    let mut leaders = Vec::new();
                    for &i in &running {
                        let url =
                            format!("{}/v3/maintenance/status", Self::url(self.client_ports[i]));
                        let Ok(r) = client.post(url).body("{}").send().await else {
                            continue;
                        };
                        let bytes = r.bytes().await.unwrap_or_default();
                        let v: serde_json::Value =
                            serde_json::from_slice(&bytes).unwrap_or_default();
                        ids.push((i, v["header"]["member_id"].as_str().map(String::from)));
                        leaders.push(v["leader"].as_str().map(String::from));
                    }
                    let leader = leaders.into_iter().flatten().find(|l| l != "0")?;
                    ids.into_iter()
                        .find(|(_, id)| id.as_deref() == Some(leader.as_str()))
                        .map(|(i, _)| i)
                })
            })
            .join()
            .unwrap()
        })
    }

    fn health_client(&self) -> reqwest::Client {
        let mut identity = self.tls.cert_pem.clone().into_bytes();
        identity.extend_from_slice(self.tls.key_pem.as_bytes());
        reqwest::Client::builder()
            .no_proxy()
            .tls_built_in_root_certs(false)
            .add_root_certificate(
                reqwest::Certificate::from_pem(self.tls.ca_pem.as_bytes()).unwrap(),
            )
            .identity(reqwest::Identity::from_pem(&identity).unwrap())
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for i in 0..MEMBERS {
                eprintln!("--- etcd m{i} log (tail):\n{}", self.log_tail(i));
            }
        }
        for i in 0..MEMBERS {
            self.stop_member(i);
        }
        // The TempDir removes the data directories.
    }
}

/// The fixture itself: three members, mutual TLS (etcdctl with the files
/// works, a client without a certificate is refused), key file 0600.
#[test]
fn etcd_cluster_fixture_has_three_members_with_mutual_tls() {
    use std::os::unix::fs::PermissionsExt;
    let started = Instant::now();
    let cluster = EtcdCluster::start();
    eprintln!("cluster healthy after {:?}", started.elapsed());
    let etcdctl = require("etcdctl", "etcd-client");
    let endpoints = cluster
        .endpoints()
        .iter()
        .map(|u| u.as_str().trim_end_matches('/').to_string())
        .collect::<Vec<_>>()
        .join(",");
    let run = |with_cert: bool, args: &[&str]| {
        let mut cmd = Command::new(&etcdctl);
        cmd.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoints}"))
            .arg(format!("--cacert={}", cluster.ca_file().display()))
            .arg("--dial-timeout=2s")
            .arg("--command-timeout=3s");
        if with_cert {
            cmd.arg(format!("--cert={}", cluster.cert_file().display()))
                .arg(format!("--key={}", cluster.key_file().display()));
        }
        cmd.args(args).output().unwrap()
    };
    let members = run(true, &["member", "list"]);
    assert!(members.status.success(), "{}", super::text(&members.stderr));
    let listed = super::text(&members.stdout);
    assert_eq!(listed.lines().count(), 3, "{listed}");
    assert!(
        listed.contains("started, m0,") && listed.contains("started, m2,"),
        "{listed}"
    );
    let put = run(true, &["put", "/fixture/k", "v"]);
    assert!(put.status.success(), "{}", super::text(&put.stderr));
    let anonymous = run(false, &["get", "/fixture/k"]);
    assert!(
        !anonymous.status.success(),
        "etcd answered a client without a certificate: {}",
        super::text(&anonymous.stdout)
    );
    let mode = std::fs::metadata(cluster.key_file())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}
