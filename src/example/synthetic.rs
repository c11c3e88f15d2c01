//! `metalherd dev gen-fleet`: a large synthetic fleet for benchmarks
//! (`bench/render`): the example's settings, Ignition and templates, and
//! generated sites and inventories of many machines, each site able to
//! carry the load when any one other is down.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;

use crate::fsutil::write_atomic;

/// Writes a fleet of `sites` sites with `machines` machines each into
/// `dir` (three control planes per site, a spare in every twenty).
pub fn write(dir: &Path, sites: u8, machines: u16) -> anyhow::Result<()> {
    let write = |path: &str, text: &str| -> anyhow::Result<()> {
        let target = dir.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        write_atomic(&target, text.as_bytes(), 0o644)
            .with_context(|| format!("writing {}", target.display()))
    };
    for (path, text) in super::FILES {
        if path.starts_with("ignition/")
            || path.starts_with("templates/")
            || *path == "inventory/fleet.yaml"
        {
            write(path, text)?;
        }
    }
    // Any one site down, the others carry 100% (rounded up, at most 100).
    let capacity = 100_u32.div_ceil(u32::from(sites) - 1).min(100);
    for s in 0..sites {
        let name = format!("s{s:02}");
        let n = u32::from(s) * 8;
        write(
            &format!("sites/{name}.yaml"),
            &format!(
                "name: {name}\ndatacenter: DC-{s}\nboot_server: http://10.{n}.0.2:8080\nnetworks:\n  provisioning: {{ cidr: 10.{n}.0.0/22, gateway: 10.{n}.0.1, dns: [10.{n}.0.1] }}\n  nodes: {{ cidr: 10.{}.0.0/22, gateway: 10.{}.0.1, dns: [10.{}.0.1] }}\ncluster:\n  name: {name}-k8s\n  api_endpoint: 10.{}.0.10:6443\n  pod_cidr: 100.{}.0.0/16\n  service_cidr: 172.{}.0.0/16\n  control_plane_count: 3\ncapacity: {capacity}\ndisks: {{ etcd: /dev/nvme0n1 }}\nbmc_defaults: {{ driver: redfish, credentials: \"env:BMC_CREDENTIALS\" }}\n",
                n + 4, n + 4, n + 4, n + 4, 64 + s, 16 + s % 16
            ),
        )?;
        let mut inv = format!("site: {name}\nmachines:\n");
        for i in 0..machines {
            let role = match i {
                0..=2 => "control-plane",
                _ if i % 20 == 19 => "spare",
                _ => "worker",
            };
            let host = 11 + u32::from(i);
            let _ = writeln!(
                inv,
                "  - name: {name}-m{i:04}\n    role: {role}\n    mac: \"52:54:{s:02x}:{:02x}:{:02x}:01\"\n    ip: 10.{}.{}.{}\n    install_disk: /dev/sda\n    bmc:\n      address: https://10.{n}.{}.{}",
                i >> 8,
                i & 0xff,
                n + 4,
                host / 256,
                host % 256,
                1 + host / 256,
                host % 256
            );
        }
        write(&format!("inventory/{name}.yaml"), &inv)?;
    }
    Ok(())
}
