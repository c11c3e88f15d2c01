//! The fleet: every site, its networks and cluster, and every machine, as a
//! typed and validated model. `load` is the only way in: it reads
//! `inventory/fleet.yaml`, `sites/*.yaml` and `inventory/<site>.yaml`,
//! checks every rule of the inventory contract (DESIGN.md) and either
//! returns a [`Fleet`] or every problem it found ([`LoadError`]).
//!
//! Layers: `raw` (the files as written) → `build` (parse values, check
//! rules) → the types below. Nothing past this module sees raw strings.

mod build;
pub mod diag;
pub mod extensions;
pub mod grammar;
mod load;
pub mod lock;
mod raw;
pub mod roles;
pub mod show;
pub mod types;
pub mod window;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Serialize;
use url::Url;

pub use diag::Diagnostic;
pub use types::{
    BmcDriver, Cidr, ClusterName, DhcpMode, MacAddr, MachineName, OsFlavor, Role, SecretRef,
    SiteName,
};

/// Why a fleet could not be loaded: one or more problems, in file order.
#[derive(Debug, thiserror::Error)]
#[error("{} problem{} in fleet {}", .diagnostics.len(), if .diagnostics.len() == 1 { "" } else { "s" }, .root.display())]
pub struct LoadError {
    pub root: PathBuf,
    pub diagnostics: Vec<Diagnostic>,
}

/// Reads and validates the fleet in `root`.
pub fn load(root: &Path) -> Result<Fleet, LoadError> {
    build::load(root)
}

#[derive(Clone, Debug, Serialize)]
pub struct Fleet {
    /// The fleet directory the files were read from.
    #[serde(skip)]
    pub root: PathBuf,
    pub name: String,
    pub os: Os,
    pub kubernetes: Kubernetes,
    pub admins: Vec<Admin>,
    pub state: StateSettings,
    pub traffic: Option<Traffic>,
    pub boot: BootSettings,
    pub alarms: Option<Alarms>,
    pub windows: Vec<String>,
    pub rebuild: Option<Rebuild>,
    pub forensics: Option<Forensics>,
    pub drill: Option<Drill>,
    /// Node software as system extensions, in `fleet.yaml` order.
    pub extensions: Vec<Extension>,
    /// Sites in name order.
    pub sites: Vec<Site>,
}

impl Fleet {
    pub fn site(&self, name: &str) -> Option<&Site> {
        self.sites.iter().find(|s| s.name.as_str() == name)
    }

    /// Every machine with its site, sites in name order, machines in
    /// inventory order.
    pub fn machines(&self) -> impl Iterator<Item = (&Site, &Machine)> {
        self.sites
            .iter()
            .flat_map(|s| s.machines.iter().map(move |m| (s, m)))
    }

    pub fn machine(&self, name: &str) -> Option<(&Site, &Machine)> {
        self.machines().find(|(_, m)| m.name.as_str() == name)
    }

    /// `machine` installs its OS to a disk (its `install_disk`, on an OS
    /// that installs) rather than running from RAM: outside its
    /// provisioning window it boots that disk, and once provisioned its
    /// BMC is set to boot from disk.
    pub fn installs(&self, machine: &Machine) -> bool {
        machine.install_disk.is_some() && self.os.flavor != OsFlavor::Lab
    }

    /// The local state directory (`state.path`, relative to the fleet).
    pub fn state_dir(&self) -> PathBuf {
        match &self.state.backend {
            StateBackend::Local { path } => self.root.join(path),
            StateBackend::Etcd { .. } => self.root.join(".metalherd/state"),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Os {
    pub flavor: OsFlavor,
    pub channel: String,
    pub version: String,
    pub assets_url: Url,
    pub signing_keys: Vec<PathBuf>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Kubernetes {
    pub version: String,
    /// Where static-pod and pause images come from (`registry.k8s.io`).
    pub image_registry: String,
}

/// Node software delivered as a systemd system extension (`extensions`
/// in `fleet.yaml`): fetched or built into the asset cache, served by each
/// site's boot server, fetched by Ignition with its digest checked, merged
/// by `systemd-sysext`.
#[derive(Clone, Debug, Serialize)]
pub struct Extension {
    pub name: String,
    pub version: String,
    pub roles: Vec<Role>,
    pub source: ExtensionSource,
    /// The vendor's checksum file (and its OpenPGP signature), read once
    /// when there is no pin yet.
    pub checksums: Option<Url>,
    pub checksums_signature: Option<Url>,
    /// The fetched file's digest as written in the fleet.
    pub pin: Option<crate::assets::verify::Expected>,
    /// What `assets.lock` records for it, when it has an entry that
    /// matches this declaration.
    pub locked: Option<lock::LockedExtension>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExtensionSource {
    /// A ready sysext image.
    Image(Url),
    /// A `.tar.gz` release archive; `binaries` are paths inside it.
    Archive { url: Url, binaries: Vec<String> },
    /// A Debian package (a URL, or `debian:PACKAGE` for `lab image`);
    /// `binaries` are paths inside it (empty: all of `usr/bin`).
    Deb {
        source: String,
        binaries: Vec<String>,
    },
}

impl ExtensionSource {
    /// Where the input comes from, as written.
    pub fn location(&self) -> String {
        match self {
            ExtensionSource::Image(url) => url.to_string(),
            ExtensionSource::Archive { url, .. } => url.to_string(),
            ExtensionSource::Deb { source, .. } => source.clone(),
        }
    }
}

impl Extension {
    /// The image's file name in the cache, on the boot server and on the
    /// node: `<name>-<version>.raw`.
    pub fn file_name(&self) -> String {
        format!("{}-{}.raw", self.name, self.version)
    }

    /// The path below the asset cache (and the boot server's `/assets/`).
    pub fn asset_path(&self) -> String {
        format!("extensions/{}/{}", self.name, self.file_name())
    }

    /// Ignition's `verification.hash` of the image nodes fetch
    /// (`sha512-<hex>`): the lock's, or for a ready image the fleet's own
    /// pin. None until pinned.
    pub fn image_hash(&self) -> Option<String> {
        if let Some(l) = &self.locked {
            return Some(format!("sha512-{}", l.image_sha512));
        }
        match (&self.source, &self.pin) {
            (ExtensionSource::Image(_), Some(p)) => {
                Some(format!("{}-{}", p.algorithm.name(), p.hex))
            }
            _ => None,
        }
    }

    pub fn for_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Admin {
    pub name: String,
    /// An OpenSSH public key line, checked to parse.
    pub ssh_authorized_key: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct StateSettings {
    #[serde(flatten)]
    pub backend: StateBackend,
    pub encryption_key: Option<SecretRef>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(tag = "backend", rename_all = "lowercase")]
pub enum StateBackend {
    Local {
        path: PathBuf,
    },
    Etcd {
        endpoints: Vec<Url>,
        /// Client TLS, paths relative to the fleet.
        ca_file: Option<PathBuf>,
        cert_file: Option<PathBuf>,
        key_file: Option<PathBuf>,
        /// Seconds a crashed holder's lock outlives it (the lease TTL).
        lock_ttl: u64,
    },
}

#[derive(Clone, Debug, Serialize)]
pub struct Traffic {
    pub drain: String,
    pub restore: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct BootSettings {
    pub require_token: bool,
    pub dhcp: DhcpMode,
    /// How long a provisioning window stays open unless the machine
    /// reports first (`boot.window`, default 30m).
    #[serde(with = "secs")]
    pub window: std::time::Duration,
}

/// A duration as whole seconds, in `inventory show --output json`.
mod secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Alarms {
    pub command: Option<String>,
    pub url: Option<Url>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Rebuild {
    pub waves: Vec<Vec<SiteName>>,
    pub bake: Option<String>,
}

/// `drill`: hook commands that cut a site's network off and reconnect it
/// (`{site}` substituted), for `drill site S --isolate`.
#[derive(Clone, Debug, Serialize)]
pub struct Drill {
    pub isolate: String,
    pub reconnect: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Forensics {
    pub bastion: IpAddr,
    pub ssh_authorized_key: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Site {
    pub name: SiteName,
    pub datacenter: String,
    pub boot_server: Url,
    pub networks: Networks,
    pub cluster: Cluster,
    /// Share of the global load this site can carry, in percent.
    pub capacity: u32,
    pub bmc_defaults: BmcDefaults,
    /// A registry mirror for this site's image pulls (air-gapped sites).
    pub registry_mirror: Option<Url>,
    /// The named data disks role files may use, with default devices.
    pub disks: std::collections::BTreeMap<String, String>,
    pub machines: Vec<Machine>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Networks {
    pub provisioning: Network,
    pub nodes: Network,
}

#[derive(Clone, Debug, Serialize)]
pub struct Network {
    pub cidr: Cidr,
    pub gateway: IpAddr,
    pub dns: Vec<IpAddr>,
}

impl Network {
    pub fn prefix_len(&self) -> u8 {
        self.cidr.net().prefix_len()
    }

    pub fn netmask(&self) -> IpAddr {
        self.cidr.net().netmask()
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Cluster {
    pub name: ClusterName,
    pub api_endpoint: Endpoint,
    pub pod_cidr: Cidr,
    pub service_cidr: Cidr,
    pub control_plane_count: u32,
}

/// `host:port`, where host is an IP address or a DNS name.
#[derive(Clone, Debug, Serialize)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

#[derive(Clone, Debug, Serialize)]
pub struct BmcDefaults {
    pub driver: Option<BmcDriver>,
    pub credentials: Option<SecretRef>,
    /// CA file for the site's Redfish BMCs, relative to the fleet.
    pub ca_file: Option<PathBuf>,
    /// Skip certificate checks for the site's BMCs (warned about).
    pub insecure: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub name: MachineName,
    pub role: Role,
    pub mac: MacAddr,
    pub ip: IpAddr,
    /// The disk the OS is installed to; none for machines that run from
    /// RAM after every network boot.
    pub install_disk: Option<String>,
    /// Its named data disks: the site's defaults with its own devices.
    pub disks: std::collections::BTreeMap<String, String>,
    pub bmc: Bmc,
}

#[derive(Clone, Debug, Serialize)]
pub struct Bmc {
    pub driver: BmcDriver,
    pub address: String,
    pub system: Option<String>,
    pub credentials: Option<SecretRef>,
}
