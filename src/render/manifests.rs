//! What metalherd's bootstrap puts on a node over SSH: the control plane's
//! static-pod manifests (kube-apiserver, kube-controller-manager,
//! kube-scheduler, rendered from `templates/kubernetes/manifests/`) and the
//! generation's PKI ([`crate::pki::ClusterPki`]) mapped onto the node.
//!
//! # On-node layout
//!
//! kubeadm's, so that its documentation and tools apply. The templates
//! (`templates/kubernetes/manifests/*.yaml`, `templates/etcd/etcd.env`,
//! `templates/kubernetes/kubelet.yaml`, `templates/systemd/*.service`) and
//! [`pki_files`] agree on it; a test checks that every such path a rendered
//! file names is uploaded.
//!
//! | on the node | from the PKI | mode | who |
//! |---|---|---|---|
//! | `/etc/etcd/pki/ca.crt` | `etcd/ca.crt` | 0644 | etcd |
//! | `/etc/etcd/pki/{server,peer}.crt` | `nodes/<m>/etcd/{server,peer}.crt` | 0644 | etcd |
//! | `/etc/etcd/pki/{server,peer}.key` | `nodes/<m>/etcd/{server,peer}.key` | 0600 | etcd |
//! | `/etc/kubernetes/pki/ca.crt` | `kubernetes/ca.crt` | 0644 | everyone (also workers) |
//! | `/etc/kubernetes/pki/ca.key` | `kubernetes/ca.key` | 0600 | controller-manager's CSR signer |
//! | `/etc/kubernetes/pki/apiserver.{crt,key}` | `kubernetes/apiserver.*` | 0644/0600 | apiserver (serving) |
//! | `/etc/kubernetes/pki/apiserver-kubelet-client.{crt,key}` | `kubernetes/apiserver-kubelet-client.*` | 0644/0600 | apiserver → kubelets |
//! | `/etc/kubernetes/pki/apiserver-etcd-client.{crt,key}` | `etcd/apiserver-etcd-client.*` | 0644/0600 | apiserver → etcd |
//! | `/etc/kubernetes/pki/etcd/ca.crt` | `etcd/ca.crt` | 0644 | apiserver → etcd |
//! | `/etc/kubernetes/pki/front-proxy-ca.crt` | `front-proxy/ca.crt` | 0644 | apiserver, controller-manager |
//! | `/etc/kubernetes/pki/front-proxy-client.{crt,key}` | `front-proxy/client.*` | 0644/0600 | apiserver → aggregated APIs |
//! | `/etc/kubernetes/pki/sa.key` | `kubernetes/sa.key` | 0600 | apiserver (signs), controller-manager |
//! | `/etc/kubernetes/pki/sa.pub` | `kubernetes/sa.pub` | 0644 | apiserver (verifies) |
//! | `/etc/kubernetes/admin.conf` | `kubernetes/admin.conf` | 0600 | operators on the node |
//! | `/etc/kubernetes/controller-manager.conf` | `kubernetes/controller-manager.conf` | 0600 | controller-manager |
//! | `/etc/kubernetes/scheduler.conf` | `kubernetes/scheduler.conf` | 0600 | scheduler |
//! | `/etc/kubernetes/kubelet.conf` | `nodes/<m>/kubelet.conf` | 0600 | kubelet (also workers) |
//! | `/etc/kubernetes/manifests/kube-*.yaml` | rendered | 0600 | kubelet (static pods) |
//!
//! Workers get only `/etc/kubernetes/kubelet.conf` and
//! `/etc/kubernetes/pki/ca.crt`; spares nothing. Left on the operator's
//! side: the etcd and front-proxy CA keys (nothing on a node signs with
//! them), metalherd's own etcd client (`etcd/client.*`) and the client
//! certificates the kubeconfigs already embed. The directories come from
//! Ignition (`/etc/etcd/pki` and `/etc/kubernetes/pki` 0700,
//! `/etc/kubernetes/manifests` 0755), except `/etc/kubernetes/pki/etcd`,
//! which the upload must create (0700). Upload [`pki_files`] before the
//! manifests: their hostPath volumes must find the files (`type: File`).

use std::fmt;

use zeroize::Zeroizing;

use super::{context, load_templates, RenderError};
use crate::fleet::{Fleet, Machine, Role, Site};
use crate::pki::ClusterPki;

/// Where the kubelet looks for static pods (`staticPodPath` in
/// `templates/kubernetes/kubelet.yaml`).
pub const MANIFEST_DIR: &str = "/etc/kubernetes/manifests";

/// The control plane's static pods: file names in
/// `templates/kubernetes/manifests/` and in [`MANIFEST_DIR`].
pub const MANIFESTS: [&str; 3] = [
    "kube-apiserver.yaml",
    "kube-controller-manager.yaml",
    "kube-scheduler.yaml",
];

/// A file metalherd puts on a node at bootstrap: absolute path on the
/// node, contents, mode.
#[derive(Clone)]
pub struct NodeFile {
    pub path: String,
    pub contents: Zeroizing<String>,
    pub mode: u32,
}

impl NodeFile {
    /// Readable by its owner only (keys, kubeconfigs, manifests): its
    /// contents are never shown.
    pub fn is_private(&self) -> bool {
        self.mode & 0o077 == 0
    }
}

impl fmt::Debug for NodeFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = if self.is_private() {
            "****".to_string()
        } else {
            format!("({} bytes)", self.contents.len())
        };
        f.debug_struct("NodeFile")
            .field("path", &self.path)
            .field("mode", &format_args!("{:#o}", self.mode))
            .field("contents", &format_args!("{shown}"))
            .finish()
    }
}

/// The static-pod manifests of `machine` (a control plane of `site`),
/// rendered from `templates/kubernetes/manifests/*.yaml` with the same
/// context as its other templates; paths `/etc/kubernetes/manifests/<file>`,
/// mode 0600 (kubeadm's, and the CIS benchmark's).
pub fn control_plane_manifests(
    fleet: &Fleet,
    site: &Site,
    machine: &Machine,
    generation: u64,
) -> Result<Vec<NodeFile>, RenderError> {
    let fail = |message: String| RenderError::Machine {
        machine: machine.name.to_string(),
        message,
    };
    if machine.role != Role::ControlPlane {
        return Err(fail(format!(
            "is a {}; only control planes run the control plane's static pods",
            machine.role.as_str()
        )));
    }
    if !site.machines.iter().any(|m| m.name == machine.name) {
        return Err(fail(format!("is not a machine of site {}", site.name)));
    }
    let tera = load_templates(&fleet.root)?;
    let ctx = context::machine_context(
        &context::site_context(fleet, site, generation),
        site,
        machine,
    );
    MANIFESTS
        .iter()
        .map(|file| {
            let template = format!("templates/kubernetes/manifests/{file}");
            let text = tera
                .render(&template, &ctx)
                .map_err(|e| RenderError::Template {
                    template: template.clone(),
                    machine: machine.name.to_string(),
                    message: crate::errfmt::chain(&e),
                })?;
            Ok(NodeFile {
                path: format!("{MANIFEST_DIR}/{file}"),
                contents: Zeroizing::new(text),
                mode: 0o600,
            })
        })
        .collect()
}

/// Every file bootstrap uploads to `machine` from the generation's PKI,
/// mapped onto the node layout (see the module's table): control planes
/// get etcd's files under `/etc/etcd/pki`, the control plane's under
/// `/etc/kubernetes/pki`, the components' kubeconfigs and their own
/// kubelet's; workers only their kubelet kubeconfig and the cluster CA;
/// spares nothing. Private files (keys, kubeconfigs) are 0600,
/// certificates and `sa.pub` 0644.
///
/// `pki` must be the PKI of `machine`'s site ([`crate::pki::generate`]
/// makes every file listed here for each of the site's machines); a file
/// it lacks is left out of the list, so a mismatch shows as a shorter
/// list, never as an error here.
pub fn pki_files(pki: &ClusterPki, machine: &Machine) -> Vec<NodeFile> {
    layout(machine)
        .into_iter()
        .filter_map(|(from, to)| {
            let file = pki.files.iter().find(|f| f.path == from)?;
            Some(NodeFile {
                path: to.to_string(),
                contents: file.contents.clone(),
                mode: if file.private { 0o600 } else { 0o644 },
            })
        })
        .collect()
}

/// (path in the PKI, path on the node) of every file `machine` gets.
fn layout(machine: &Machine) -> Vec<(String, &'static str)> {
    let node = |rest: &str| format!("nodes/{}/{rest}", machine.name);
    let kubelet = [
        (
            "kubernetes/ca.crt".to_string(),
            "/etc/kubernetes/pki/ca.crt",
        ),
        (node("kubelet.conf"), "/etc/kubernetes/kubelet.conf"),
    ];
    match machine.role {
        Role::Spare => Vec::new(),
        Role::Worker => kubelet.into(),
        Role::ControlPlane => {
            let mut out = vec![
                ("etcd/ca.crt".to_string(), "/etc/etcd/pki/ca.crt"),
                (node("etcd/server.crt"), "/etc/etcd/pki/server.crt"),
                (node("etcd/server.key"), "/etc/etcd/pki/server.key"),
                (node("etcd/peer.crt"), "/etc/etcd/pki/peer.crt"),
                (node("etcd/peer.key"), "/etc/etcd/pki/peer.key"),
            ];
            out.extend(kubelet);
            out.extend(
                [
                    ("kubernetes/ca.key", "/etc/kubernetes/pki/ca.key"),
                    (
                        "kubernetes/apiserver.crt",
                        "/etc/kubernetes/pki/apiserver.crt",
                    ),
                    (
                        "kubernetes/apiserver.key",
                        "/etc/kubernetes/pki/apiserver.key",
                    ),
                    (
                        "kubernetes/apiserver-kubelet-client.crt",
                        "/etc/kubernetes/pki/apiserver-kubelet-client.crt",
                    ),
                    (
                        "kubernetes/apiserver-kubelet-client.key",
                        "/etc/kubernetes/pki/apiserver-kubelet-client.key",
                    ),
                    (
                        "etcd/apiserver-etcd-client.crt",
                        "/etc/kubernetes/pki/apiserver-etcd-client.crt",
                    ),
                    (
                        "etcd/apiserver-etcd-client.key",
                        "/etc/kubernetes/pki/apiserver-etcd-client.key",
                    ),
                    ("etcd/ca.crt", "/etc/kubernetes/pki/etcd/ca.crt"),
                    (
                        "front-proxy/ca.crt",
                        "/etc/kubernetes/pki/front-proxy-ca.crt",
                    ),
                    (
                        "front-proxy/client.crt",
                        "/etc/kubernetes/pki/front-proxy-client.crt",
                    ),
                    (
                        "front-proxy/client.key",
                        "/etc/kubernetes/pki/front-proxy-client.key",
                    ),
                    ("kubernetes/sa.key", "/etc/kubernetes/pki/sa.key"),
                    ("kubernetes/sa.pub", "/etc/kubernetes/pki/sa.pub"),
                    ("kubernetes/admin.conf", "/etc/kubernetes/admin.conf"),
                    (
                        "kubernetes/controller-manager.conf",
                        "/etc/kubernetes/controller-manager.conf",
                    ),
                    (
                        "kubernetes/scheduler.conf",
                        "/etc/kubernetes/scheduler.conf",
                    ),
                ]
                .map(|(from, to)| (from.to_string(), to)),
            );
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::*;

    fn example() -> Fleet {
        crate::fleet::load(Path::new(env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    fn pki(site: &Site) -> ClusterPki {
        crate::pki::generate(site, time::OffsetDateTime::now_utc(), 90).unwrap()
    }

    fn machine<'a>(site: &'a Site, name: &str) -> &'a Machine {
        site.machines
            .iter()
            .find(|m| m.name.as_str() == name)
            .unwrap()
    }

    /// The other templates a machine's files come from that name PKI
    /// files: etcd's environment and unit, the kubelet's config and unit.
    fn other_templates(fleet: &Fleet, site: &Site, m: &Machine) -> Vec<(String, String)> {
        let tera = load_templates(&fleet.root).unwrap();
        let ctx = context::machine_context(&context::site_context(fleet, site, 1), site, m);
        let mut names = vec![
            "templates/kubernetes/kubelet.yaml",
            "templates/systemd/kubelet.service",
        ];
        if m.role == Role::ControlPlane {
            names.extend(["templates/etcd/etcd.env", "templates/systemd/etcd.service"]);
        }
        names
            .into_iter()
            .map(|n| (n.to_string(), tera.render(n, &ctx).unwrap()))
            .collect()
    }

    /// Every `/etc/etcd/pki/…` and `/etc/kubernetes/pki/…` file and every
    /// `/etc/kubernetes/*.conf` a text names.
    fn referenced_paths(text: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for (i, _) in text.match_indices("/etc/") {
            let path: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || "/._-".contains(*c))
                .collect();
            let path = path.trim_end_matches('.').to_string();
            let under_pki = ["/etc/etcd/pki/", "/etc/kubernetes/pki/"]
                .iter()
                .any(|dir| path.len() > dir.len() && path.starts_with(dir));
            let kubeconfig = path
                .strip_prefix("/etc/kubernetes/")
                .is_some_and(|rest| !rest.contains('/') && rest.ends_with(".conf"));
            if under_pki || kubeconfig {
                out.insert(path);
            }
        }
        out
    }

    #[test]
    fn manifests_are_rendered_for_control_planes_only() {
        let fleet = example();
        let site = fleet.site("fra").unwrap();
        let files = control_plane_manifests(&fleet, site, machine(site, "fra-cp-02"), 7).unwrap();
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/etc/kubernetes/manifests/kube-apiserver.yaml",
                "/etc/kubernetes/manifests/kube-controller-manager.yaml",
                "/etc/kubernetes/manifests/kube-scheduler.yaml",
            ]
        );
        for f in &files {
            assert_eq!(f.mode, 0o600, "{}", f.path);
            assert!(f.contents.starts_with("# kube-"), "{}", f.path);
            let doc = marked_yaml::parse_yaml(0, f.contents.as_str())
                .unwrap_or_else(|e| panic!("{}: {e}", f.path));
            let map = doc.as_mapping().unwrap();
            assert_eq!(map.get_scalar("kind").unwrap().as_str(), "Pod");
            assert!(
                f.contents.contains("image: registry.k8s.io/kube-")
                    && f.contents.contains(":v1.31.2\n"),
                "{}",
                f.path
            );
            assert!(
                f.contents.contains("metalherd.io/generation: \"7\""),
                "{}",
                f.path
            );
        }
        let apiserver = files[0].contents.as_str();
        for flag in [
            "--advertise-address=10.10.4.12\n",
            "--secure-port=6443\n",
            "--etcd-servers=https://10.10.4.11:2379,https://10.10.4.12:2379,https://10.10.4.13:2379\n",
            "--service-cluster-ip-range=10.96.0.0/16\n",
        ] {
            assert!(apiserver.contains(flag), "{flag} in\n{apiserver}");
        }
        assert!(files[1].contents.contains("--cluster-cidr=10.64.0.0/14\n"));

        for name in ["fra-wk-01", "fra-sp-01"] {
            let err = control_plane_manifests(&fleet, site, machine(site, name), 1)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(name) && err.contains("only control planes"),
                "{err}"
            );
        }
        let other = fleet.site("ber").unwrap();
        let err = control_plane_manifests(&fleet, other, machine(site, "fra-cp-01"), 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a machine of site ber"), "{err}");
    }

    #[test]
    fn etcd_servers_bracket_ipv6_addresses() {
        let fleet = example();
        let mut site = fleet.site("fra").unwrap().clone();
        for (i, m) in site
            .machines
            .iter_mut()
            .filter(|m| m.role == Role::ControlPlane)
            .enumerate()
        {
            m.ip = format!("fd00::{}", i + 1).parse().unwrap();
        }
        let cp = site.machines[0].clone();
        let files = control_plane_manifests(&fleet, &site, &cp, 1).unwrap();
        let apiserver = files[0].contents.as_str();
        assert!(
            apiserver.contains(
                "--etcd-servers=https://[fd00::1]:2379,https://[fd00::2]:2379,https://[fd00::3]:2379\n"
            ),
            "{apiserver}"
        );
        assert!(
            apiserver.contains("--advertise-address=fd00::1\n"),
            "{apiserver}"
        );
    }

    #[test]
    fn pki_files_follow_the_layout_with_their_modes() {
        let fleet = example();
        let site = fleet.site("fra").unwrap();
        let pki = pki(site);
        for m in &site.machines {
            let files = pki_files(&pki, m);
            let expected = match m.role {
                Role::ControlPlane => 23,
                Role::Worker => 2,
                Role::Spare => 0,
            };
            assert_eq!(files.len(), expected, "{}: {files:?}", m.name);
            assert_eq!(
                files.len(),
                layout(m).len(),
                "{}: every file of the layout is in the PKI",
                m.name
            );
            let distinct: BTreeSet<&str> = files.iter().map(|f| f.path.as_str()).collect();
            assert_eq!(
                distinct.len(),
                files.len(),
                "{}: paths are distinct",
                m.name
            );
            for f in &files {
                assert!(Path::new(&f.path).is_absolute(), "{}", f.path);
                assert!(!f.contents.is_empty(), "{}", f.path);
                let private = f.path.ends_with(".key") || f.path.ends_with(".conf");
                assert_eq!(
                    f.mode,
                    if private { 0o600 } else { 0o644 },
                    "{}: mode {:o}",
                    f.path,
                    f.mode
                );
                assert_eq!(f.is_private(), private, "{}", f.path);
                if f.path.ends_with(".key") {
                    assert!(f.contents.contains("PRIVATE KEY"), "{}", f.path);
                } else if f.path.ends_with(".crt") {
                    assert!(f.contents.contains("BEGIN CERTIFICATE"), "{}", f.path);
                }
            }
        }
        // Each node gets its own etcd and kubelet credentials.
        let cp1 = pki_files(&pki, machine(site, "fra-cp-01"));
        let cp2 = pki_files(&pki, machine(site, "fra-cp-02"));
        let get = |files: &[NodeFile], path: &str| {
            files
                .iter()
                .find(|f| f.path == path)
                .map(|f| f.contents.to_string())
                .unwrap()
        };
        for path in ["/etc/etcd/pki/server.key", "/etc/kubernetes/kubelet.conf"] {
            assert_ne!(get(&cp1, path), get(&cp2, path), "{path}");
        }
        assert_eq!(
            get(&cp1, "/etc/kubernetes/kubelet.conf"),
            pki.get("nodes/fra-cp-01/kubelet.conf").unwrap()
        );
        assert_eq!(
            get(&cp1, "/etc/kubernetes/pki/front-proxy-ca.crt"),
            pki.get("front-proxy/ca.crt").unwrap()
        );
        assert_eq!(
            get(&cp1, "/etc/kubernetes/pki/etcd/ca.crt"),
            get(&cp1, "/etc/etcd/pki/ca.crt")
        );
        // CA keys nothing on a node signs with stay with the operator.
        let all: Vec<&str> = cp1.iter().map(|f| f.contents.as_str()).collect();
        for kept in ["etcd/ca.key", "front-proxy/ca.key", "etcd/client.key"] {
            let key = pki.get(kept).unwrap();
            assert!(!all.contains(&key), "{kept} is not uploaded");
        }
    }

    #[test]
    fn every_pki_path_the_rendered_files_name_is_uploaded() {
        let fleet = example();
        let site = fleet.site("fra").unwrap();
        let pki = pki(site);
        for name in ["fra-cp-01", "fra-wk-01"] {
            let m = machine(site, name);
            let mut texts = other_templates(&fleet, site, m);
            if m.role == Role::ControlPlane {
                for f in control_plane_manifests(&fleet, site, m, 1).unwrap() {
                    texts.push((f.path.clone(), f.contents.to_string()));
                }
            }
            let uploaded: BTreeSet<String> =
                pki_files(&pki, m).into_iter().map(|f| f.path).collect();
            let mut named = BTreeSet::new();
            for (source, text) in &texts {
                for path in referenced_paths(text) {
                    assert!(
                        uploaded.contains(&path),
                        "{name}: {source} names {path}, which is not uploaded"
                    );
                    named.insert(path);
                }
            }
            // The check above must have had something to check.
            let least = if m.role == Role::ControlPlane { 20 } else { 2 };
            assert!(named.len() >= least, "{name}: {named:?}");
        }
    }

    #[test]
    fn referenced_paths_finds_files_not_directories() {
        let text = "--x=/etc/kubernetes/pki/sa.pub\n  mountPath: /etc/kubernetes/pki\n\
                    path: /etc/kubernetes/controller-manager.conf\nEnvironmentFile=/etc/etcd/etcd.env\n\
                    ETCD_CERT_FILE=/etc/etcd/pki/server.crt\n/etc/kubernetes/manifests/x.yaml";
        let found: Vec<String> = referenced_paths(text).into_iter().collect();
        assert_eq!(
            found,
            [
                "/etc/etcd/pki/server.crt",
                "/etc/kubernetes/controller-manager.conf",
                "/etc/kubernetes/pki/sa.pub",
            ]
        );
    }

    #[test]
    fn debug_never_shows_private_contents() {
        let fleet = example();
        let site = fleet.site("fra").unwrap();
        let pki = pki(site);
        let files = pki_files(&pki, machine(site, "fra-cp-01"));
        let shown = format!("{files:?}");
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
        assert!(!shown.contains("client-key-data"), "{shown}");
        assert!(shown.contains("\"/etc/kubernetes/pki/sa.key\""), "{shown}");
        assert!(shown.contains("mode: 0o600"), "{shown}");
    }
}
