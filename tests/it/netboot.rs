//! A real network boot: QEMU (TCG) with Debian's iPXE ROM and user-mode
//! networking boots from `metalherd serve` on loopback: `/boot.ipxe` →
//! `/ipxe` with the VM's MAC → kernel and initrd from `/assets` →
//! `/ignition` with the one-time token → `/report` with the per-boot
//! secret. The image is Debian's kernel (from its .deb, which
//! `./scripts/test` fetches into target/netboot) and an initramfs built
//! here around busybox-static, whose `/init` fetches the Ignition named on
//! the kernel command line, posts the report and powers off.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{example_fleet, repo, require};

/// In dependency order.
const MODULES: [&str; 8] = [
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "failover",
    "net_failover",
    "virtio_net",
];

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci failover net_failover virtio_net; do
    insmod /lib/modules/$m.ko
done
sleep 1
ip link set eth0 up
udhcpc -i eth0 -s /etc/udhcpc.script -q -n -t 20 || echo "metalherd-test: no DHCP"
url=$(sed -n 's/.*ignition\.config\.url=\([^ ]*\).*/\1/p' /proc/cmdline)
base=${url%%/ignition*}
echo "metalherd-test: fetching Ignition"
if wget -q -O /tmp/ign.json "$url"; then
    secret=$(grep -o 'data:,[0-9a-f]\{32\}"},"mode":384,"overwrite":true,"path":"/etc/metalherd/report-secret"' /tmp/ign.json | cut -c7-38)
    report=$(grep -o '%2Freport%2F[a-z0-9-]*' /tmp/ign.json | head -n 1 | sed 's,%2F,/,g')
    wget -q -O - --header "Authorization: Bearer $secret" --header "Content-Type: application/json" \
        --post-data '{"host_key_fingerprint":"SHA256:reported-by-the-test-vm"}' "$base$report" \
        && echo "metalherd-test: reported"
else
    echo "metalherd-test: Ignition fetch failed"
fi
poweroff -f
"#;

const UDHCPC: &str = "#!/bin/sh\n[ \"$1\" = bound ] || exit 0\nifconfig \"$interface\" \"$ip\" netmask \"$subnet\"\nroute add default gw \"$router\"\n";

/// An uncompressed newc cpio archive.
struct Cpio(Vec<u8>, u32);

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.1 += 1;
        let header =
            format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.1, mode, 0, 0, 1, 0, data.len(), 0, 0, 0, 0, name.len() + 1, 0
        );
        self.0.extend_from_slice(header.as_bytes());
        self.0.extend_from_slice(name.as_bytes());
        self.0.push(0);
        while self.0.len() % 4 != 0 {
            self.0.push(0);
        }
        self.0.extend_from_slice(data);
        while self.0.len() % 4 != 0 {
            self.0.push(0);
        }
    }
}

fn initramfs(netboot: &Path) -> Vec<u8> {
    let busybox =
        std::fs::read("/bin/busybox").expect("busybox-static: apt-get install busybox-static");
    let mut c = Cpio(Vec::new(), 0);
    for dir in ["bin", "etc", "lib", "lib/modules"] {
        c.entry(dir, 0o040755, &[]);
    }
    c.entry("bin/busybox", 0o100755, &busybox);
    c.entry("init", 0o100755, INIT.as_bytes());
    c.entry("etc/udhcpc.script", 0o100755, UDHCPC.as_bytes());
    for m in MODULES {
        let ko = std::fs::read(netboot.join("modules").join(format!("{m}.ko"))).unwrap();
        c.entry(&format!("lib/modules/{m}.ko"), 0o100644, &ko);
    }
    c.entry("TRAILER!!!", 0, &[]);
    c.0
}

#[test]
fn a_vm_boots_through_ipxe_ignition_and_reports() {
    let qemu = require("qemu-system-x86_64", "qemu-system-x86");
    assert!(
        Path::new("/usr/lib/ipxe/qemu/pxe-virtio.rom").exists(),
        "Debian's iPXE ROMs are missing: apt-get install ipxe-qemu"
    );
    let netboot: PathBuf = repo().join("target/netboot");
    assert!(
        netboot.join("vmlinuz").exists(),
        "the test kernel is missing: run ./scripts/test, which fetches it into target/netboot"
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // Inside QEMU's user network, 10.0.2.2 is the host's loopback.
    let host = format!("http://10.0.2.2:{port}");
    let fleet = example_fleet();
    let edit = |path: &str, from: &str, to: &str| {
        let p = fleet.path().join(path);
        let t = std::fs::read_to_string(&p).unwrap();
        assert!(t.contains(from), "{path}: {from}");
        std::fs::write(&p, t.replacen(from, to, 1)).unwrap();
    };
    edit(
        "inventory/fleet.yaml",
        "http://10.10.0.2:8080/assets",
        &format!("{host}/assets"),
    );
    edit(
        "sites/fra.yaml",
        "boot_server: http://10.10.0.2:8080",
        &format!("boot_server: {host}"),
    );
    // fra-cp-01 runs from RAM: it is served its final config directly.
    edit("inventory/fra.yaml", "    install_disk: /dev/sda\n", "");
    let assets = fleet.path().join("assets/flatcar/4081.2.0");
    std::fs::create_dir_all(&assets).unwrap();
    std::fs::copy(
        netboot.join("vmlinuz"),
        assets.join("flatcar_production_pxe.vmlinuz"),
    )
    .unwrap();
    std::fs::write(
        assets.join("flatcar_production_pxe_image.cpio.gz"),
        initramfs(&netboot),
    )
    .unwrap();

    let armed = super::metalherd(fleet.path(), &["boot", "arm", "fra-cp-01"]);
    assert!(armed.status.success(), "{}", super::text(&armed.stderr));
    let log = fleet.path().join("serve.log");
    let mut server = Command::new(env!("CARGO_BIN_EXE_metalherd"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .current_dir(fleet.path())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stderr(std::fs::File::create(&log).unwrap())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "serve did not start");
        std::thread::sleep(Duration::from_millis(50));
    }

    let console = fleet.path().join("console.log");
    let mut vm = Command::new(qemu)
        .args([
            "-M", "q35", "-accel", "tcg", "-cpu", "max", "-m", "512", "-smp", "1",
        ])
        .args([
            "-display",
            "none",
            "-monitor",
            "none",
            "-no-reboot",
            "-boot",
            "n",
        ])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .args(["-netdev", &format!("user,id=n0,bootfile={host}/boot.ipxe")])
        .args(["-device", "virtio-net-pci,netdev=n0,mac=52:54:00:fa:00:01"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let finished = loop {
        if let Some(status) = vm.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > Duration::from_secs(240) {
            let _ = vm.kill();
            let _ = vm.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let booted_in = started.elapsed();
    let _ = server.kill();
    let _ = server.wait();
    let served = std::fs::read_to_string(&log).unwrap();
    let screen = String::from_utf8_lossy(&std::fs::read(&console).unwrap_or_default()).to_string();
    let tail: String = screen
        .lines()
        .rev()
        .take(40)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        finished.is_some(),
        "the VM did not power off in time; console:\n{tail}\nserver:\n{served}"
    );
    eprintln!("network boot to report and power-off took {booted_in:.1?}");

    // The whole chain, in order, from the server's side.
    let steps = [
        "GET /boot.ipxe 200",
        "GET /ipxe 200 mac=52-54-00-fa-00-01",
        "GET /assets/flatcar/4081.2.0/flatcar_production_pxe.vmlinuz 200",
        "GET /assets/flatcar/4081.2.0/flatcar_production_pxe_image.cpio.gz 200",
        "GET /ignition 200 mac=52-54-00-fa-00-01",
        "POST /report/fra-cp-01 200",
    ];
    let mut from = 0;
    for step in steps {
        match served[from..].find(step) {
            Some(i) => from += i + step.len(),
            None => {
                panic!("missing or out of order: {step:?}\nserver log:\n{served}\nconsole:\n{tail}")
            }
        }
    }
    assert!(
        served.contains("fra-cp-01: reported host key \"SHA256:reported-by-the-test-vm\""),
        "mismatch flagged:\n{served}"
    );
    assert!(
        screen.contains("metalherd-test: reported"),
        "console:\n{tail}"
    );
}
