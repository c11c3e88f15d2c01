//! The shipped example fleet, compiled into the binary so that
//! `metalherd init DIR` works from an installed binary alone. When a file is
//! added to the example fleet, add it here too: a test compares this list
//! with the files in the repository.
//!
//! [`init`] writes it out as a new fleet repository; [`synthetic`] grows
//! it into a large fleet for benchmarks.

pub mod init;
pub mod synthetic;

/// Every file of the example fleet: its path in the fleet and contents.
pub const FILES: &[(&str, &str)] = &[
    (
        "ignition/control-plane.yaml",
        include_str!("../ignition/control-plane.yaml"),
    ),
    (
        "ignition/install.yaml",
        include_str!("../ignition/install.yaml"),
    ),
    (
        "ignition/spare.yaml",
        include_str!("../ignition/spare.yaml"),
    ),
    (
        "ignition/worker.yaml",
        include_str!("../ignition/worker.yaml"),
    ),
    ("inventory/ber.yaml", include_str!("../inventory/ber.yaml")),
    (
        "inventory/fleet.yaml",
        include_str!("../inventory/fleet.yaml"),
    ),
    ("inventory/fra.yaml", include_str!("../inventory/fra.yaml")),
    ("inventory/muc.yaml", include_str!("../inventory/muc.yaml")),
    (
        "monitoring/metalherd.rules.yaml",
        include_str!("../monitoring/metalherd.rules.yaml"),
    ),
    (
        "scripts/gslb-weight",
        include_str!("../scripts/gslb-weight"),
    ),
    ("sites/ber.yaml", include_str!("../sites/ber.yaml")),
    ("sites/fra.yaml", include_str!("../sites/fra.yaml")),
    ("sites/muc.yaml", include_str!("../sites/muc.yaml")),
    (
        "templates/containerd/10-metalherd.conf",
        include_str!("../templates/containerd/10-metalherd.conf"),
    ),
    (
        "templates/containerd/config.toml",
        include_str!("../templates/containerd/config.toml"),
    ),
    (
        "templates/containerd/hosts.toml",
        include_str!("../templates/containerd/hosts.toml"),
    ),
    (
        "templates/dnsmasq/dnsmasq.conf",
        include_str!("../templates/dnsmasq/dnsmasq.conf"),
    ),
    (
        "templates/etcd/etcd.env",
        include_str!("../templates/etcd/etcd.env"),
    ),
    (
        "templates/ipxe/fcos.ipxe",
        include_str!("../templates/ipxe/fcos.ipxe"),
    ),
    (
        "templates/ipxe/flatcar.ipxe",
        include_str!("../templates/ipxe/flatcar.ipxe"),
    ),
    (
        "templates/ipxe/lab.ipxe",
        include_str!("../templates/ipxe/lab.ipxe"),
    ),
    (
        "templates/kubernetes/kubelet.yaml",
        include_str!("../templates/kubernetes/kubelet.yaml"),
    ),
    (
        "templates/kubernetes/manifests/kube-apiserver.yaml",
        include_str!("../templates/kubernetes/manifests/kube-apiserver.yaml"),
    ),
    (
        "templates/kubernetes/manifests/kube-controller-manager.yaml",
        include_str!("../templates/kubernetes/manifests/kube-controller-manager.yaml"),
    ),
    (
        "templates/kubernetes/manifests/kube-scheduler.yaml",
        include_str!("../templates/kubernetes/manifests/kube-scheduler.yaml"),
    ),
    (
        "templates/network/node.network",
        include_str!("../templates/network/node.network"),
    ),
    (
        "templates/systemd/etcd.service",
        include_str!("../templates/systemd/etcd.service"),
    ),
    (
        "templates/systemd/flatcar-install.service",
        include_str!("../templates/systemd/flatcar-install.service"),
    ),
    (
        "templates/systemd/kubelet.service",
        include_str!("../templates/systemd/kubelet.service"),
    ),
];

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn embedded_fleet_matches_the_repository() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut on_disk = Vec::new();
        for dir in ["inventory", "monitoring", "sites", "ignition", "templates"] {
            let mut stack = vec![root.join(dir)];
            while let Some(d) = stack.pop() {
                for e in std::fs::read_dir(&d).unwrap() {
                    let p = e.unwrap().path();
                    if p.is_dir() {
                        stack.push(p);
                    } else {
                        on_disk.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
                    }
                }
            }
        }
        // The example's hooks (scripts/ also holds the repository's own).
        on_disk.push("scripts/gslb-weight".to_string());
        on_disk.sort();
        let embedded: Vec<String> = super::FILES.iter().map(|(p, _)| p.to_string()).collect();
        assert_eq!(
            embedded, on_disk,
            "src/example.rs lists the example fleet's files"
        );
        for (path, text) in super::FILES {
            assert_eq!(
                &std::fs::read_to_string(root.join(path)).unwrap(),
                text,
                "{path}"
            );
        }
    }
}
