//! Power drivers against real BMC implementations: Redfish against
//! `sushy-emulator` (PyPI sushy-tools, fake driver), IPMI against pyghmi's
//! `fakebmc` with Debian's `ipmitool`, and QEMU's QMP. Every emulator is
//! started by its test on loopback and stopped by PID.

use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{example_fleet, metalherd_env, require, require_pip, text};

const PASSWORD: &str = "s3cret-BMC-pw-4711";

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A process stopped (SIGKILL, by PID) when dropped.
struct Running {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Running {
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill();
    }
}

/// sushy-emulator with the fake driver, basic auth (bcrypt htpasswd), a
/// fresh state directory and one system per name (all off).
fn sushy(names: &[&str]) -> (Running, u16) {
    let emulator = require_pip("sushy-emulator", "sushy-tools");
    let dir = tempfile::tempdir().unwrap();
    let python = emulator.with_file_name("python3");
    let python = if python.is_file() {
        python
    } else {
        PathBuf::from("python3")
    };
    let hash = Command::new(python)
        .args(["-c", &format!("import bcrypt; print(bcrypt.hashpw(b'{PASSWORD}', bcrypt.gensalt(rounds=4)).decode())")])
        .output()
        .unwrap();
    assert!(
        hash.status.success(),
        "python3 bcrypt: {} (pip install bcrypt)",
        text(&hash.stderr)
    );
    std::fs::write(
        dir.path().join("htpasswd"),
        format!("admin:{}", text(&hash.stdout)),
    )
    .unwrap();
    let systems: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, n)| format!("{{'uuid': '00000000-0000-4000-8000-{:012}', 'name': '{n}', 'power_state': 'Off', 'nics': []}}", i + 1))
        .collect();
    let conf = format!(
        "SUSHY_EMULATOR_FAKE_DRIVER = True\nSUSHY_EMULATOR_STATE_DIR = '{0}/state'\nSUSHY_EMULATOR_AUTH_FILE = '{0}/htpasswd'\nSUSHY_EMULATOR_FAKE_SYSTEMS = [{1}]\n",
        dir.path().display(),
        systems.join(", ")
    );
    std::fs::write(dir.path().join("conf.py"), conf).unwrap();
    let port = free_tcp_port();
    let child = Command::new(emulator)
        .args([
            "--config",
            dir.path().join("conf.py").to_str().unwrap(),
            "-i",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
        .spawn()
        .unwrap();
    let running = Running { child, _dir: dir };
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "sushy-emulator did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    (running, port)
}

/// The example fleet with site fra cut to its three control planes, their
/// BMCs replaced by `bmc(name)` lines.
fn fleet_with_bmcs(bmc: impl Fn(&str) -> String) -> tempfile::TempDir {
    let fleet = example_fleet();
    let mut inv = String::from("site: fra\nmachines:\n");
    for (i, name) in ["fra-cp-01", "fra-cp-02", "fra-cp-03"].iter().enumerate() {
        inv.push_str(&format!(
            "  - name: {name}\n    role: control-plane\n    mac: \"52:54:00:fa:00:0{}\"\n    ip: 10.10.4.1{}\n    bmc: {}\n",
            i + 1,
            i + 1,
            bmc(name)
        ));
    }
    std::fs::write(fleet.path().join("inventory/fra.yaml"), inv).unwrap();
    fleet
}

fn power(fleet: &Path, args: &[&str], creds: &str) -> std::process::Output {
    let mut all = vec!["--output", "json", "-v", "power"];
    all.extend_from_slice(args);
    all.extend_from_slice(&[
        "--retries",
        "2",
        "--retry-delay-ms",
        "100",
        "--timeout",
        "30",
    ]);
    metalherd_env(fleet, &all, &[("FRA_BMC_CREDENTIALS", creds)])
}

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        )
    })
}

fn assert_no_password(out: &std::process::Output) {
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        !all.contains(PASSWORD) && !all.contains("password"),
        "a credential leaked:\n{all}"
    );
}

#[test]
fn redfish_pxe_once_and_cycle_on_three_systems_in_parallel() {
    let (_emu, port) = sushy(&["fra-cp-01", "fra-cp-02", "fra-cp-03"]);
    // Name URLs: sushy redirects them to UUID URLs, which must be followed.
    let fleet = fleet_with_bmcs(|n| {
        format!("{{ address: \"http://127.0.0.1:{port}\", system: /redfish/v1/Systems/{n} }}")
    });
    let creds = format!("admin:{PASSWORD}");

    let started = Instant::now();
    let out = power(fleet.path(), &["pxe-once", "--site", "fra"], &creds);
    let wall = started.elapsed();
    let doc = json(&out);
    assert!(out.status.success(), "{doc}\n{}", text(&out.stderr));
    assert_eq!(doc["summary"], "3 of 3 done");
    let busy: u64 = doc["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["duration_ms"].as_u64().unwrap())
        .sum();
    assert!(
        wall.as_millis() < u128::from(busy),
        "the three ran in parallel: wall {wall:?}, sum {busy} ms"
    );
    // sushy's fake driver reads the override back as Continuous: warned, not failed.
    assert!(
        text(&out.stderr).contains("reads back as \"Continuous\""),
        "{}",
        text(&out.stderr)
    );

    let out = power(fleet.path(), &["status", "--site", "fra"], &creds);
    let doc = json(&out);
    assert!(
        doc["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["state"] == "on"),
        "{doc}"
    );

    // PowerCycle is answered 501 by the emulator: not retried, ForceRestart used.
    let out = power(fleet.path(), &["cycle", "--site", "fra"], &creds);
    let doc = json(&out);
    assert!(out.status.success(), "{doc}\n{}", text(&out.stderr));
    let log = text(&out.stderr);
    assert!(
        log.contains("reset type PowerCycle not supported (501)"),
        "{log}"
    );
    assert!(!log.contains("retrying"), "a 501 is not retried: {log}");

    let out = power(fleet.path(), &["off", "fra-cp-02"], &creds);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(json(&out)["results"][0]["state"], "off");
    assert_no_password(&out);

    // Boot from disk from now on (what provision sets once an installed
    // machine reported): the emulator itself holds Hdd, Continuous.
    let out = power(fleet.path(), &["disk", "fra-cp-02"], &creds);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let system = std::process::Command::new("curl")
        .args(["-sS", "-f", "-L", "-u", &creds])
        .arg(format!(
            "http://127.0.0.1:{port}/redfish/v1/Systems/fra-cp-02"
        ))
        .output()
        .unwrap();
    assert!(system.status.success(), "{}", text(&system.stderr));
    let system: serde_json::Value = serde_json::from_slice(&system.stdout).unwrap();
    assert_eq!(
        (
            &system["Boot"]["BootSourceOverrideTarget"],
            &system["Boot"]["BootSourceOverrideEnabled"]
        ),
        (&serde_json::json!("Hdd"), &serde_json::json!("Continuous")),
        "{system}"
    );
    assert_no_password(&out);
}

#[test]
fn redfish_requires_auth_and_names_machine_bmc_and_step() {
    let (_emu, port) = sushy(&["fra-cp-01", "fra-cp-02", "fra-cp-03"]);
    // One emulator, each machine its own system (one BMC powers one machine).
    let fleet = fleet_with_bmcs(|n| {
        format!("{{ address: \"http://127.0.0.1:{port}\", system: /redfish/v1/Systems/{n} }}")
    });
    // The emulator really demands authentication.
    let mut raw = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    std::io::Write::write_all(&mut raw, b"GET /redfish/v1/Systems HTTP/1.0\r\n\r\n").unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut raw, &mut answer).unwrap();
    assert!(answer.contains(" 401 "), "{answer}");

    let out = power(
        fleet.path(),
        &["status", "fra-cp-01"],
        "admin:wrong-password",
    );
    assert_eq!(out.status.code(), Some(1));
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(!all.contains("wrong-password"), "{all}");
    let doc = json(&out);
    let err = doc["results"][0]["error"].as_str().unwrap();
    assert!(
        err.starts_with(&format!(
            "fra-cp-01 (BMC http://127.0.0.1:{port}): status: the BMC answered 401"
        )),
        "{err}"
    );
    assert_eq!(doc["summary"], "1 of 1 failed: fra-cp-01");
    assert!(
        !text(&out.stderr).contains("retrying"),
        "a 401 is not retried"
    );

    let out = metalherd_env(fleet.path(), &["power", "status", "fra-cp-01"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).contains("env:FRA_BMC_CREDENTIALS: the environment variable is not set"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn redfish_emulator_killed_mid_operation_fails_cleanly() {
    // sushy's fake driver applies a power change `int(now) + randint(1, 11)`
    // seconds after the request: usually seconds later, rarely within a few
    // milliseconds. The emulator is killed as soon as its log shows the reset
    // request; when the change happened to land before the kill, metalherd
    // rightly succeeds, the scenario did not happen, and it is run again.
    for attempt in 1..=5 {
        let (mut emu, port) = sushy(&["fra-cp-01", "fra-cp-02", "fra-cp-03"]);
        let log = emu._dir.path().join("log");
        // One emulator, each machine its own system (one BMC powers one machine).
        let fleet = fleet_with_bmcs(|n| {
            format!("{{ address: \"http://127.0.0.1:{port}\", system: /redfish/v1/Systems/{n} }}")
        });
        let creds = format!("admin:{PASSWORD}");
        let child = Command::new(env!("CARGO_BIN_EXE_metalherd"))
            .args([
                "--output",
                "json",
                "power",
                "on",
                "fra-cp-01",
                "--retries",
                "2",
                "--retry-delay-ms",
                "100",
                "--timeout",
                "60",
            ])
            .current_dir(fleet.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("FRA_BMC_CREDENTIALS", &creds)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("ComputerSystem.Reset")
        {
            assert!(
                Instant::now() < deadline,
                "metalherd never sent the reset request"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        emu.kill();
        let started = Instant::now();
        let out = child.wait_with_output().unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "bounded retries"
        );
        if out.status.success() && attempt < 5 {
            eprintln!("attempt {attempt}: the fake BMC applied the change before the kill; again");
            continue;
        }
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
        let doc = json(&out);
        let err = doc["results"][0]["error"].as_str().unwrap();
        assert!(
            err.starts_with(&format!(
                "fra-cp-01 (BMC http://127.0.0.1:{port}): power on: "
            )),
            "{err}"
        );
        assert!(err.to_lowercase().contains("connect"), "{err}");
        assert_no_password(&out);
        return;
    }
}

#[test]
fn ipmi_against_pyghmi_fakebmc_with_the_password_off_argv() {
    let fakebmc = require_pip("fakebmc", "pyghmi");
    require("ipmitool", "ipmitool");
    let port = free_udp_port();
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new(fakebmc)
        .args(["--port", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _bmc = Running {
        child,
        _dir: tempfile::tempdir().unwrap(),
    };
    // An ipmitool shim that records its argv, to prove the password is not in it.
    let argv_log = dir.path().join("argv.log");
    let shim = dir.path().join("ipmitool");
    std::fs::write(
        &shim,
        format!(
            "#!/bin/sh\necho \"$@\" >> {}\nexec /usr/bin/ipmitool \"$@\"\n",
            argv_log.display()
        ),
    )
    .unwrap();
    std::os::unix::fs::PermissionsExt::set_mode(
        &mut std::fs::metadata(&shim).unwrap().permissions(),
        0o755,
    );
    std::fs::set_permissions(&shim, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );

    // fra-cp-02 is the BMC under test; the others' BMCs are elsewhere.
    let fleet = fleet_with_bmcs(|n| match n {
        "fra-cp-02" => format!("{{ driver: ipmi, address: \"127.0.0.1:{port}\" }}"),
        other => format!(
            "{{ driver: ipmi, address: \"127.0.0.2:{}\" }}",
            &other[other.len() - 1..]
        ),
    });
    // fakebmc's only user is admin/password.
    let run = |args: &[&str]| {
        let mut all = vec!["--output", "json", "power"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--retries", "3", "--retry-delay-ms", "300"]);
        metalherd_env(
            fleet.path(),
            &all,
            &[("FRA_BMC_CREDENTIALS", "admin:password"), ("PATH", &path)],
        )
    };
    std::thread::sleep(Duration::from_millis(500));
    let out = run(&["status", "fra-cp-02"]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(json(&out)["results"][0]["state"], "off");
    for (action, want) in [
        ("on", "on"),
        ("cycle", "on"),
        ("pxe-once", "on"),
        ("off", "off"),
        ("disk", "off"),
    ] {
        let out = run(&[action, "fra-cp-02"]);
        assert!(
            out.status.success(),
            "{action}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        assert_eq!(json(&out)["results"][0]["state"], want, "{action}");
    }
    let argv = std::fs::read_to_string(&argv_log).unwrap();
    assert!(
        argv.contains("-E") && argv.contains("chassis bootdev pxe"),
        "{argv}"
    );
    assert!(
        !argv.contains("password"),
        "the password must not be in argv: {argv}"
    );

    let out = metalherd_env(
        fleet.path(),
        &["power", "status", "fra-cp-02", "--retries", "0"],
        &[("FRA_BMC_CREDENTIALS", "admin:wrong"), ("PATH", &path)],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).contains("fra-cp-02 (BMC 127.0.0.1:"),
        "{}",
        text(&out.stdout)
    );
    assert!(!text(&out.stdout).contains("wrong") && !text(&out.stderr).contains("wrong"));
}

#[test]
fn qemu_over_qmp() {
    let qemu = require("qemu-system-x86_64", "qemu-system-x86");
    let dir = tempfile::tempdir().unwrap();
    let sock: PathBuf = dir.path().join("qmp.sock");
    // No disk, no NIC, CPUs stopped (-S): a VM that is "off".
    let child = Command::new(qemu)
        .args([
            "-M",
            "q35",
            "-accel",
            "tcg",
            "-m",
            "64",
            "-nodefaults",
            "-display",
            "none",
            "-S",
            "-qmp",
        ])
        .arg(format!("unix:{},server=on,wait=off", sock.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _vm = Running {
        child,
        _dir: tempfile::tempdir().unwrap(),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sock.exists() {
        assert!(
            Instant::now() < deadline,
            "QEMU did not open its QMP socket"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let s = sock.display().to_string();
    // fra-cp-03 is the VM under test; the others' sockets are elsewhere.
    let fleet = fleet_with_bmcs(|n| match n {
        "fra-cp-03" => format!("{{ driver: qemu, address: \"unix:{s}\" }}"),
        other => format!("{{ driver: qemu, address: \"unix:{s}.{other}\" }}"),
    });
    let run = |action: &str| {
        let out = metalherd_env(
            fleet.path(),
            &["--output", "json", "power", action, "fra-cp-03"],
            &[],
        );
        assert!(
            out.status.success(),
            "{action}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        json(&out)["results"][0]["state"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(run("status"), "off");
    assert_eq!(run("on"), "on");
    assert_eq!(run("status"), "on");
    assert_eq!(run("off"), "off");
    assert_eq!(run("status"), "off");
    assert_eq!(run("pxe-once"), "on");
    assert_eq!(run("status"), "on");
}

#[test]
fn the_manual_driver_asks_a_person_and_refuses_without_a_terminal() {
    let fleet = fleet_with_bmcs(|_| "{ driver: manual, address: \"rack 12, unit 7\" }".to_string());
    let out = metalherd_env(fleet.path(), &["power", "on", "fra-cp-01"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let said = text(&out.stdout);
    assert!(
        said.contains("fra-cp-01 (BMC rack 12, unit 7): power on: manual BMC: a person must power the machine on on fra-cp-01 (rack 12, unit 7); run this at a terminal"),
        "{said}"
    );
}
