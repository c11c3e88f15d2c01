//! `metalherd bootstrap`, `exec` and `ssh` against real OpenSSH `sshd`,
//! `sudo` and etcd on the network-namespace test hosts ([`super::hosts`]):
//! etcd quorum with mutual TLS in three sites, checked with the real
//! `etcdctl`; pinned host keys; hosts that are down; the `/readyz` wait
//! against a TLS server with the generated API server certificate; and
//! no private key material in any output or any command line.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use super::hosts::{Hosts, Options};
use super::{example_fleet, require, text};

fn all(out: &Output) -> String {
    format!("{}{}", text(&out.stdout), text(&out.stderr))
}

/// The machines of `site` that bootstrap works on (spares get nothing).
fn nodes(site: &str) -> Vec<String> {
    ["cp-01", "cp-02", "cp-03", "wk-01", "wk-02"]
        .iter()
        .map(|m| format!("{site}-{m}"))
        .collect()
}

fn pki_dir(fleet: &Path, site: &str) -> PathBuf {
    fleet.join(".metalherd/state/pki").join(site).join("1")
}

/// `etcdctl` (v3 API) in the controller namespace against `site`'s three
/// control planes, with `cert` (client certificate and key) or none.
fn etcdctl(hosts: &Hosts, fleet: &Path, site: &str, cert: bool, args: &[&str]) -> Output {
    require("etcdctl", "etcd-client");
    let pki = pki_dir(fleet, site);
    let endpoints: Vec<String> = (1..=3)
        .map(|i| format!("https://{}:2379", hosts.ip(&format!("{site}-cp-0{i}"))))
        .collect();
    let mut cmd = hosts.ctl_command("etcdctl");
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .arg(format!("--cacert={}", pki.join("etcd/ca.crt").display()))
        .arg("--dial-timeout=3s")
        .arg("--command-timeout=5s");
    if cert {
        cmd.arg(format!("--cert={}", pki.join("etcd/client.crt").display()))
            .arg(format!("--key={}", pki.join("etcd/client.key").display()));
    }
    cmd.args(args).output().unwrap()
}

/// Fails if `said` holds anything that looks like private key material:
/// a PEM private key, an OpenSSH key, or the body of any private file of
/// the generation's PKI or the fleet's SSH keys.
fn assert_no_secrets(said: &str, fleet: &Path) {
    assert!(
        !said.contains("PRIVATE KEY"),
        "private key in output: {said}"
    );
    let state = fleet.join(".metalherd/state");
    for file in super::files_below(&state) {
        let name = file.to_string_lossy();
        let private = name.ends_with(".key")
            || name.ends_with(".conf")
            || name.ends_with("_key")
            || name.ends_with("id_ed25519");
        if !private {
            continue;
        }
        let body = std::fs::read_to_string(state.join(&file)).unwrap_or_default();
        for line in body
            .lines()
            .filter(|l| l.len() >= 40 && !l.starts_with("-----"))
        {
            // kubeconfigs: the base64 of the key is on one long line.
            let needle = line.trim().rsplit(' ').next().unwrap_or("");
            assert!(
                needle.len() < 40 || !said.contains(needle),
                "material of {name} appears in output"
            );
        }
    }
}

#[test]
fn bootstrap_forms_etcd_quorum_with_mutual_tls_in_three_sites() {
    let fleet = example_fleet();
    let f = fleet.path();
    let machines: Vec<String> = ["fra", "ber", "muc"]
        .iter()
        .flat_map(|s| nodes(s))
        .collect();
    let names: Vec<&str> = machines.iter().map(String::as_str).collect();
    let hosts = Hosts::start(f, &names, &Options::default());

    // On fra, the kubelet is a TLS server the test runs with the generated
    // API server certificate (kube-apiserver cannot be installed here): the
    // static-pod stand-in answers /readyz with `ok`.
    for cp in ["fra-cp-01", "fra-cp-02", "fra-cp-03"] {
        install_fake_kubelet(&hosts, cp, "/etc/kubernetes/pki/apiserver");
    }

    let mut logs = String::new();
    for site in ["fra", "ber", "muc"] {
        let out = hosts.metalherd(&["bootstrap", "site", site, "--ready-timeout", "90"]);
        let said = all(&out);
        assert!(out.status.success(), "bootstrap of {site} failed: {said}");
        assert!(
            said.contains("etcd quorum") && said.contains("3 of 3 members healthy"),
            "{said}"
        );
        if site == "fra" {
            assert!(said.contains("api server ready"), "{said}");
        } else {
            assert!(
                said.contains("kubelet is not installed on any control plane"),
                "{said}"
            );
        }
        logs.push_str(&said);

        // The real etcdctl, with the generated client certificate.
        let health = etcdctl(&hosts, f, site, true, &["endpoint", "health"]);
        let h = all(&health);
        assert!(health.status.success(), "{site}: {h}");
        assert_eq!(h.matches("is healthy").count(), 3, "{site}: {h}");
        let members = etcdctl(&hosts, f, site, true, &["member", "list", "-w", "simple"]);
        let m = text(&members.stdout);
        assert_eq!(m.matches(", started, ").count(), 3, "{site}: {m}");
        for i in 1..=3 {
            assert!(m.contains(&format!("{site}-cp-0{i}")), "{m}");
        }
        // Without a client certificate: refused.
        let anonymous = etcdctl(&hosts, f, site, false, &["endpoint", "health"]);
        assert!(
            !anonymous.status.success(),
            "{site}: etcd answered a client without a certificate: {}",
            all(&anonymous)
        );
    }

    // What was uploaded: private files 0600, equal to the stored PKI.
    let key = hosts.host_file("ber-cp-02", "/etc/etcd/pki/server.key");
    assert_eq!(std::fs::metadata(&key).unwrap().mode() & 0o777, 0o600);
    assert_eq!(
        std::fs::read(&key).unwrap(),
        std::fs::read(pki_dir(f, "ber").join("nodes/ber-cp-02/etcd/server.key")).unwrap()
    );
    let kubeconfig = hosts.host_file("muc-wk-01", "/etc/kubernetes/kubelet.conf");
    assert_eq!(
        std::fs::metadata(&kubeconfig).unwrap().mode() & 0o777,
        0o600
    );
    assert!(!hosts
        .host_file("muc-wk-01", "/etc/etcd/pki/server.key")
        .exists());
    // The state keeps the PKI private.
    let stored = pki_dir(f, "fra").join("etcd/ca.key");
    assert_eq!(std::fs::metadata(&stored).unwrap().mode() & 0o777, 0o600);

    // No key in metalherd's output, nor in any command line run on a host
    // (sudo logs every command with its arguments).
    assert_no_secrets(&logs, f);
    for m in &names {
        let sudo_log = std::fs::read_to_string(hosts.host_file(m, "/var/log/sudo.log"))
            .unwrap_or_else(|e| panic!("{m}: no sudo log: {e}"));
        // The files went in one batch on stdin: the command line holds
        // no path's contents, only the reader.
        assert!(
            sudo_log.contains("head -c \"$size\""),
            "{m}: no batched upload in {sudo_log}"
        );
        assert_no_secrets(&sudo_log, f);
    }

    // A second bootstrap of the same generation converges: same PKI.
    let again = hosts.metalherd(&["--output", "json", "bootstrap", "site", "ber"]);
    assert!(again.status.success(), "{}", all(&again));
    let doc: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(doc["ok"], true);
    assert_eq!(doc["generation"], 1);
    let phases: Vec<&str> = doc["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        phases,
        [
            "connect",
            "upload",
            "start etcd",
            "etcd quorum",
            "control plane",
            "workers"
        ]
    );
    assert_no_secrets(&text(&again.stdout), f);
}

/// Puts a `kubelet` on `machine` that serves `/readyz` over TLS with the
/// API server certificate bootstrap delivered (`openssl s_server -WWW`).
fn install_fake_kubelet(hosts: &Hosts, machine: &str, cert: &str) {
    let port = 6443;
    let script = format!(
        "#!/bin/sh\n# Test stand-in: a TLS server with the generated API server certificate.\n\
         mkdir -p /var/lib/fake-apiserver && cd /var/lib/fake-apiserver && printf ok > readyz\n\
         exec openssl s_server -quiet -WWW -accept {ip}:{port} \
         -cert {cert}.crt -key {cert}.key\n",
        ip = hosts.ip(machine)
    );
    let mut child = hosts
        .ssh_command(
            machine,
            "sudo install -D -m 0755 /dev/stdin /usr/bin/kubelet",
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{machine}: {}", all(&out));
}

#[test]
fn a_host_with_another_host_key_is_refused_before_anything_is_uploaded() {
    let fleet = example_fleet();
    let f = fleet.path();
    let machines = [
        "fra-cp-01",
        "fra-cp-02",
        "fra-cp-03",
        "fra-wk-01",
        "fra-wk-02",
    ];
    let hosts = Hosts::start(
        f,
        &machines,
        &Options {
            wrong_host_key: &["fra-cp-02"],
            ..Options::default()
        },
    );
    let expected =
        fingerprint(&f.join(".metalherd/state/hostkeys/fra/fra-cp-02/ssh_host_ed25519_key.pub"));
    let out = hosts.metalherd(&["bootstrap", "site", "fra"]);
    let said = all(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("host key mismatch"), "{said}");
    assert!(
        said.contains(&expected),
        "expected fingerprint {expected} not named: {said}"
    );
    let presented = said
        .split("the host presented ")
        .nth(1)
        .and_then(|r| r.split(';').next())
        .unwrap_or("");
    assert!(
        presented.starts_with("SHA256:") && presented != expected,
        "presented fingerprint not named: {said}"
    );
    // Nothing uploaded, on any host.
    for m in machines {
        for path in ["/etc/etcd/pki/ca.crt", "/etc/kubernetes/kubelet.conf"] {
            assert!(
                !hosts.host_file(m, path).exists(),
                "{m}: {path} was uploaded"
            );
        }
    }
    // `ssh` and `exec` refuse it too.
    let ssh = hosts.metalherd(&["ssh", "fra-cp-02", "--", "true"]);
    assert_eq!(ssh.status.code(), Some(1), "{}", all(&ssh));
    assert!(all(&ssh).contains(&expected), "{}", all(&ssh));
}

fn fingerprint(public_key: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(public_key)
        .output()
        .unwrap();
    text(&out.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string()
}

#[test]
fn exec_and_bootstrap_name_a_host_that_is_down_and_the_others_finish() {
    let fleet = example_fleet();
    let f = fleet.path();
    let machines = [
        "fra-cp-01",
        "fra-cp-02",
        "fra-cp-03",
        "fra-wk-01",
        "fra-wk-02",
    ];
    let hosts = Hosts::start(
        f,
        &machines,
        &Options {
            down: &["fra-wk-02"],
            ..Options::default()
        },
    );
    let out = hosts.metalherd(&[
        "--output",
        "json",
        "exec",
        "--machines",
        "fra-cp-01,fra-cp-02,fra-cp-03,fra-wk-01,fra-wk-02",
        "--connect-timeout",
        "3",
        "--",
        "sh",
        "-c",
        "hostname; test $(hostname) != fra-cp-03",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", all(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let results = doc["results"].as_array().unwrap();
    assert_eq!(results.len(), 5);
    for r in results {
        let m = r["machine"].as_str().unwrap();
        match m {
            "fra-wk-02" => {
                assert_eq!(r["ok"], false);
                let e = r["error"].as_str().unwrap();
                assert!(e.contains("fra-wk-02") && e.contains("timed out"), "{e}");
            }
            "fra-cp-03" => {
                assert_eq!(r["ok"], false);
                assert_eq!(r["exit_code"], 1);
                assert_eq!(r["stdout"], "fra-cp-03\n");
            }
            _ => {
                assert_eq!(r["ok"], true, "{r}");
                assert_eq!(r["exit_code"], 0);
                assert_eq!(r["stdout"].as_str().unwrap(), format!("{m}\n"));
            }
        }
    }
    assert_eq!(
        doc["summary"].as_str().unwrap().lines().next().unwrap(),
        "exec: 2 of 5 failed: fra-cp-03, fra-wk-02"
    );

    // Text mode: data on stdout, the summary on stderr, exit 1.
    let text_out = hosts.metalherd(&[
        "exec",
        "--site",
        "fra",
        "--connect-timeout",
        "3",
        "--",
        "uname",
        "-s",
    ]);
    assert_eq!(text_out.status.code(), Some(1));
    let stdout = text(&text_out.stdout);
    assert!(stdout.contains("fra-cp-01 | Linux"), "{stdout}");
    // --site: the machines that serve; the spare (powered off) left out.
    assert!(
        all(&text_out).contains("1 of 5 failed: fra-wk-02") && !stdout.contains("fra-sp-01"),
        "{}",
        all(&text_out)
    );
    let with_spares = hosts.metalherd(&[
        "exec",
        "--site",
        "fra",
        "--include-spares",
        "--connect-timeout",
        "3",
        "--",
        "true",
    ]);
    assert!(
        all(&with_spares).contains("2 of 6 failed: fra-wk-02, fra-sp-01"),
        "{}",
        all(&with_spares)
    );

    // `ssh` runs one command and passes its exit status through.
    let ssh = hosts.metalherd(&["ssh", "fra-cp-01", "--", "sh", "-c", "hostname; exit 7"]);
    assert_eq!(ssh.status.code(), Some(7), "{}", all(&ssh));
    assert_eq!(text(&ssh.stdout), "fra-cp-01\n");
    // Its words make one command line for the remote shell, as OpenSSH's.
    let ssh = hosts.metalherd(&["ssh", "fra-cp-01", "--", "hostname; echo $((6 * 7))"]);
    assert_eq!(ssh.status.code(), Some(0), "{}", all(&ssh));
    assert_eq!(text(&ssh.stdout), "fra-cp-01\n42\n");

    // Without a command: the login shell, reading stdin (no terminal, no PTY).
    let mut shell = hosts
        .ctl_command(env!("CARGO_BIN_EXE_metalherd"))
        .arg("--fleet")
        .arg(f)
        .args(["ssh", "fra-wk-01"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = shell.stdin.take().unwrap();
        stdin
            .write_all(b"echo \"I am $(whoami) on $(hostname)\"\nexit 3\n")
            .unwrap();
    }
    let shell = shell.wait_with_output().unwrap();
    assert_eq!(shell.status.code(), Some(3), "{}", all(&shell));
    // (after the host's message of the day)
    assert!(
        text(&shell.stdout).ends_with("\nI am core on fra-wk-01\n"),
        "{}",
        all(&shell)
    );

    // On a terminal (a pseudo-terminal from `script`): the remote shell's
    // exit ends the session at once, with its status, and the terminal
    // is left as it was.
    let script = super::require("script", "bsdutils");
    let line = format!(
        "{} --fleet {} ssh fra-wk-01; echo \"exit $?, stty $(stty -g)\"",
        env!("CARGO_BIN_EXE_metalherd"),
        f.display()
    );
    let mut tty = hosts
        .ctl_command(script.to_str().unwrap())
        .args(["-qec", &format!("stty -g; {line}"), "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = tty.stdin.take().unwrap();
    std::thread::sleep(std::time::Duration::from_secs(2));
    {
        use std::io::Write;
        stdin.write_all(b"exit 3\n").unwrap();
    }
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = tty.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > std::time::Duration::from_secs(30) {
            let _ = tty.kill();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    drop(stdin);
    let out = tty.wait_with_output().unwrap();
    let said = all(&out);
    assert!(
        status.is_some(),
        "the session did not end after the remote shell exited: {said}"
    );
    let before = said.lines().next().unwrap_or_default().trim().to_string();
    assert!(
        said.contains(&format!("exit 3, stty {before}")),
        "exit status 3 and the terminal restored ({before}): {said}"
    );

    // Bootstrap sets the worker that is down aside at the connect phase,
    // names it once with the phase and the cause, and the rest of the
    // site goes on; it exits 1.
    let boot = hosts.metalherd(&["bootstrap", "site", "fra", "--connect-timeout", "3"]);
    let said = all(&boot);
    assert_eq!(boot.status.code(), Some(1), "{said}");
    assert!(
        said.contains("1 of 5 machines of fra set aside; the other 4 are ready"),
        "{said}"
    );
    assert!(
        said.contains("fra-wk-02 (connect): fra-wk-02 (10.10.4.15:22): connecting timed out"),
        "{said}"
    );
    assert!(hosts
        .host_file("fra-cp-01", "/etc/etcd/pki/ca.crt")
        .exists());
    assert!(hosts
        .host_file("fra-wk-01", "/etc/kubernetes/kubelet.conf")
        .exists());
}

#[test]
fn a_host_lost_mid_bootstrap_fails_the_phase_and_names_it() {
    let fleet = example_fleet();
    let f = fleet.path();
    let machines = ["muc-cp-01", "muc-cp-02", "muc-cp-03"];
    // A fleet of control planes only, so bootstrap has no workers to wait for.
    drop_workers(f, "muc");
    let hosts = Hosts::start(f, &machines, &Options::default());
    let child = hosts
        .ctl_command(env!("CARGO_BIN_EXE_metalherd"))
        .arg("--fleet")
        .arg(f)
        .args([
            "bootstrap",
            "site",
            "muc",
            "--ready-timeout",
            "8",
            "--step-timeout",
            "8",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Take a control plane away as soon as its PKI arrived.
    let landed = hosts.host_file("muc-cp-03", "/etc/etcd/pki/ca.crt");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !landed.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    hosts.link_down("muc-cp-03");
    let out = child.wait_with_output().unwrap();
    let said = all(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("muc-cp-03"), "{said}");
}

#[test]
fn an_api_server_with_a_certificate_of_another_ca_is_never_ready() {
    let fleet = example_fleet();
    let f = fleet.path();
    drop_workers(f, "ber");
    let machines = ["ber-cp-01", "ber-cp-02", "ber-cp-03"];
    let hosts = Hosts::start(f, &machines, &Options::default());
    // The etcd server certificate names the node's IP too, but is signed
    // by the etcd CA, not the cluster's Kubernetes CA.
    for m in machines {
        install_fake_kubelet(&hosts, m, "/etc/etcd/pki/server");
    }
    let out = hosts.metalherd(&["bootstrap", "site", "ber", "--ready-timeout", "5"]);
    let said = all(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("etcd quorum") && said.contains("3 of 3 members healthy"),
        "{said}"
    );
    assert!(said.contains("api server ready"), "{said}");
    assert!(said.contains("/readyz not ready after 5s"), "{said}");
    assert!(
        said.to_lowercase().contains("certificate"),
        "the failure should say the certificate was refused: {said}"
    );
}

/// Removes the workers and spares of `site` from its inventory.
fn drop_workers(fleet: &Path, site: &str) {
    let path = fleet.join("inventory").join(format!("{site}.yaml"));
    let text = std::fs::read_to_string(&path).unwrap();
    let cut = text.find(&format!("  - name: {site}-wk-01")).unwrap();
    std::fs::write(&path, &text[..cut]).unwrap();
}
