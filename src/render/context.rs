//! What role files and templates can use. Every template is rendered with
//! `fleet`, `site`, `cluster`, `node_network`, `provisioning_network`, `control_planes`,
//! `generation`, `registry` and `assets_base`; machine templates also get `machine`
//! and `ignition_url`. docs/fleet.md ("Templates") lists the fields; add new
//! ones here, in a view struct, so templates never see secrets.

use std::net::IpAddr;

use serde::Serialize;
use tera::Context;

use crate::fleet::{Admin, Cluster, Fleet, Kubernetes, Machine, Os, Site};

#[derive(Serialize)]
struct FleetView<'a> {
    name: &'a str,
    os: &'a Os,
    kubernetes: &'a Kubernetes,
    admins: &'a [Admin],
}

#[derive(Serialize)]
struct SiteView<'a> {
    name: &'a str,
    datacenter: &'a str,
    /// Without a trailing slash, ready for `{{ site.boot_server }}/path`.
    boot_server: &'a str,
    capacity: u32,
    networks: &'a crate::fleet::Networks,
}

#[derive(Serialize)]
struct ClusterView<'a> {
    #[serde(flatten)]
    spec: &'a Cluster,
    /// The first service IP (the `kubernetes` service).
    api_service_ip: Option<IpAddr>,
    /// The tenth service IP, by convention the cluster DNS.
    dns_ip: Option<IpAddr>,
}

#[derive(Serialize)]
struct NetworkView {
    cidr: String,
    address: IpAddr,
    prefix_len: u8,
    netmask: IpAddr,
    gateway: IpAddr,
    dns: Vec<IpAddr>,
}

/// Where images come from: `fleet.yaml`'s `kubernetes.image_registry`
/// (its host, which names containerd's `certs.d/<host>/` directory) and
/// the site's `registry_mirror`, if any.
#[derive(Serialize)]
struct RegistryView<'a> {
    host: &'a str,
    mirror: Option<&'a str>,
}

#[derive(Serialize)]
struct PeerView<'a> {
    name: &'a str,
    ip: IpAddr,
}

#[derive(Serialize)]
struct MachineView<'a> {
    name: &'a str,
    role: &'a str,
    mac: String,
    /// `aa-bb-cc-dd-ee-ff`, as iPXE's `${mac:hexhyp}` spells it.
    mac_hexhyp: String,
    ip: IpAddr,
    install_disk: Option<&'a str>,
    /// Named data disks → devices (`machine.disks.etcd`).
    disks: &'a std::collections::BTreeMap<String, String>,
}

fn network_view(n: &crate::fleet::Network) -> NetworkView {
    NetworkView {
        cidr: n.cidr.to_string(),
        address: n.cidr.net().network(),
        prefix_len: n.prefix_len(),
        netmask: n.netmask(),
        gateway: n.gateway,
        dns: n.dns.clone(),
    }
}

fn nth_host(cidr: &crate::fleet::Cidr, n: u32) -> Option<IpAddr> {
    match cidr.net().network() {
        IpAddr::V4(v4) => u32::from(v4).checked_add(n).map(|x| IpAddr::V4(x.into())),
        IpAddr::V6(v6) => u128::from(v6)
            .checked_add(n.into())
            .map(|x| IpAddr::V6(x.into())),
    }
}

pub(crate) fn trim_slash(url: &url::Url) -> &str {
    url.as_str().trim_end_matches('/')
}

/// The context shared by every template of one site.
pub fn site_context(fleet: &Fleet, site: &Site, generation: u64) -> Context {
    let mut ctx = Context::new();
    ctx.insert(
        "fleet",
        &FleetView {
            name: &fleet.name,
            os: &fleet.os,
            kubernetes: &fleet.kubernetes,
            admins: &fleet.admins,
        },
    );
    ctx.insert(
        "site",
        &SiteView {
            name: site.name.as_str(),
            datacenter: &site.datacenter,
            boot_server: trim_slash(&site.boot_server),
            capacity: site.capacity,
            networks: &site.networks,
        },
    );
    ctx.insert(
        "cluster",
        &ClusterView {
            spec: &site.cluster,
            api_service_ip: nth_host(&site.cluster.service_cidr, 1),
            dns_ip: nth_host(&site.cluster.service_cidr, 10),
        },
    );
    ctx.insert("node_network", &network_view(&site.networks.nodes));
    ctx.insert(
        "provisioning_network",
        &network_view(&site.networks.provisioning),
    );
    let peers: Vec<PeerView> = site
        .machines
        .iter()
        .filter(|m| m.role == crate::fleet::Role::ControlPlane)
        .map(|m| PeerView {
            name: m.name.as_str(),
            ip: m.ip,
        })
        .collect();
    ctx.insert("control_planes", &peers);
    let registry = &fleet.kubernetes.image_registry;
    ctx.insert(
        "registry",
        &RegistryView {
            host: registry.split('/').next().unwrap_or(registry),
            mirror: site.registry_mirror.as_ref().map(trim_slash),
        },
    );
    ctx.insert("generation", &generation);
    ctx.insert(
        "assets_base",
        &format!(
            "{}/{}/{}",
            trim_slash(&fleet.os.assets_url),
            fleet.os.flavor.as_str(),
            fleet.os.version
        ),
    );
    ctx
}

fn machine_view(m: &Machine) -> MachineView<'_> {
    MachineView {
        name: m.name.as_str(),
        role: m.role.as_str(),
        mac: m.mac.to_string(),
        mac_hexhyp: m.mac.hexhyp(),
        ip: m.ip,
        install_disk: m.install_disk.as_deref(),
        disks: &m.disks,
    }
}

/// Adds one machine to a copy of its site's context.
pub fn machine_context(site_ctx: &Context, site: &Site, machine: &Machine) -> Context {
    let mut ctx = site_ctx.clone();
    ctx.insert("machine", &machine_view(machine));
    ctx.insert(
        "ignition_url",
        &format!(
            "{}/ignition?mac={}",
            trim_slash(&site.boot_server),
            machine.mac.hexhyp()
        ),
    );
    ctx
}

/// How the site's dnsmasq answers DHCP (`fleet.yaml`'s `boot.dhcp`); in
/// `server` mode it leases the upper half of the provisioning network.
#[derive(Serialize)]
struct DhcpView {
    mode: crate::fleet::DhcpMode,
    range_start: Option<IpAddr>,
    range_end: Option<IpAddr>,
}

fn dhcp_view(fleet: &Fleet, site: &Site) -> DhcpView {
    let cidr = &site.networks.provisioning.cidr;
    let size = 1u32
        .checked_shl(32 - u32::from(cidr.net().prefix_len()).min(32))
        .unwrap_or(0);
    DhcpView {
        mode: fleet.boot.dhcp,
        range_start: nth_host(cidr, size / 2),
        range_end: size.checked_sub(2).and_then(|n| nth_host(cidr, n)),
    }
}

/// The site's context plus every machine, for the boot server's DHCP.
pub fn dnsmasq_context(fleet: &Fleet, site_ctx: &Context, site: &Site) -> Context {
    let mut ctx = site_ctx.clone();
    ctx.insert("dhcp", &dhcp_view(fleet, site));
    let machines: Vec<MachineView> = site.machines.iter().map(machine_view).collect();
    ctx.insert("machines", &machines);
    ctx
}
