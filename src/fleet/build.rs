//! From raw files to the typed [`Fleet`]: every value parsed into its
//! type, every rule of the inventory contract checked. Problems are
//! collected, never returned early, so one run reports them all.
//!
//! To add a rule: check it where the values it needs are at hand (per
//! site, per machine, or in `check_fleet_wide`), with `Ctx::err` naming the
//! file, line and field.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use marked_yaml::Span;
use url::Url;

use super::diag::Diagnostics;
use super::grammar;
use super::load::{self, InventoryFile, SiteFile};
use super::raw::*;
use super::types::*;
use super::*;

mod addresses;
mod disks;
use addresses::Kind;

pub(super) fn load(root: &Path) -> Result<Fleet, LoadError> {
    let mut diags = Diagnostics::default();
    let files = load::read_all(root, &mut diags);
    let mut ctx = Ctx {
        diags,
        file: 0,
        root: root.to_path_buf(),
        refused_default_credentials: HashSet::new(),
        invalid_count: HashSet::new(),
        claims: Vec::new(),
    };
    let fleet = ctx.build(root, files);
    match fleet {
        Some(fleet) if ctx.diags.is_empty() => Ok(fleet),
        _ => Err(LoadError {
            root: root.to_path_buf(),
            diagnostics: ctx.diags.into_sorted(),
        }),
    }
}

pub(super) struct Ctx {
    diags: Diagnostics,
    /// The file being converted, for `err`.
    file: usize,
    /// The fleet directory, where hooks run.
    root: std::path::PathBuf,
    /// Sites whose `bmc_defaults.credentials` was refused (reported once
    /// there, not again for each machine that relies on it).
    refused_default_credentials: HashSet<String>,
    /// Sites whose `cluster.control_plane_count` was refused (their
    /// machines are not counted against it).
    invalid_count: HashSet<String>,
    /// Who answers at which address, judged once all is read.
    claims: Vec<addresses::Claim>,
}

/// The folders of a fleet repository (and of metalherd's own): no site
/// may be named like one.
const RESERVED_SITE_NAMES: &[&str] = &[
    "sites",
    "inventory",
    "ignition",
    "templates",
    "assets",
    "scripts",
    "monitoring",
    "docs",
    "tests",
    "bench",
    "fuzz",
    "src",
    "target",
    "out",
];

/// Where something was written, to point back at it from a later error.
#[derive(Clone, Copy)]
struct Origin {
    file: usize,
    line: usize,
}

impl Ctx {
    pub(super) fn err(
        &mut self,
        span: &Span,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.diags.at(self.file, span, field, message);
    }

    fn origin(&self, span: &Span) -> Origin {
        Origin {
            file: self.file,
            line: span.start().map(|m| m.line()).unwrap_or(0),
        }
    }

    fn describe(&self, o: Origin) -> String {
        format!("{}:{}", self.diags.file(o.file).display(), o.line)
    }

    /// Parses a scalar with `parse`, reporting its error at the value.
    pub(super) fn parse<T>(
        &mut self,
        v: &Text,
        field: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        match parse(v.as_str()) {
            Ok(t) => Some(t),
            Err(msg) => {
                self.err(v.span(), field, msg);
                None
            }
        }
    }

    /// A hook command, as `sh -c` runs it in the fleet directory: `{site}`
    /// its only placeholder, and the program it starts (or the script `sh`
    /// runs) there to run: a path in the fleet, or a command on PATH.
    pub(super) fn hook(&mut self, v: &Text, field: &str) -> Option<String> {
        let text = v.as_str();
        match hook_problem(text, &self.root) {
            None => Some(text.to_string()),
            Some(problem) => {
                self.err(v.span(), field, problem);
                None
            }
        }
    }

    pub(super) fn parse_as<T: FromStr<Err = String>>(
        &mut self,
        v: &Text,
        field: &str,
    ) -> Option<T> {
        self.parse(v, field, |s| s.parse())
    }

    /// A secret reference; an inline secret is refused without its value.
    fn secret_ref(&mut self, v: &Text, field: &str) -> Option<SecretRef> {
        match v.parse::<SecretRef>() {
            Ok(r) => Some(r),
            Err(InlineSecret) => {
                self.err(
                    v.span(),
                    field,
                    "looks like an inline secret (value not shown); write a reference instead: env:NAME or file:PATH",
                );
                None
            }
        }
    }

    pub(super) fn url(&mut self, v: &Text, field: &str, schemes: &[&str]) -> Option<Url> {
        let url = match Url::parse(v.as_str()) {
            Ok(url) => url,
            Err(e) => {
                self.err(v.span(), field, format!("malformed URL: {e}"));
                return None;
            }
        };
        if !url.username().is_empty() || url.password().is_some() {
            self.err(
                v.span(),
                field,
                "the URL carries credentials (value not shown); put them in a credentials reference (env:NAME or file:PATH)",
            );
            return None;
        }
        if !schemes.contains(&url.scheme()) {
            self.err(
                v.span(),
                field,
                format!("URL scheme must be {}", schemes.join(" or ")),
            );
            return None;
        }
        if let Err(msg) = grammar::url(v.as_str(), &url) {
            self.err(v.span(), field, msg);
            return None;
        }
        Some(url)
    }

    /// An OpenSSH public key line, whose comment cannot add a line to
    /// `authorized_keys`. A private key pasted by mistake is refused
    /// without being echoed.
    fn public_key(&mut self, v: &Text, field: &str) -> Option<String> {
        match ssh_key::PublicKey::from_openssh(v.as_str()) {
            Ok(key) => match grammar::key_comment(key.comment()) {
                Ok(()) => Some(v.as_str().trim().to_string()),
                Err(msg) => {
                    self.err(v.span(), field, msg);
                    None
                }
            },
            Err(_) if v.contains("PRIVATE KEY") => {
                self.err(
                    v.span(),
                    field,
                    "this is a private key (value not shown); give the public key line",
                );
                None
            }
            Err(e) => {
                self.err(
                    v.span(),
                    field,
                    format!("not an OpenSSH public key line ({e}); value not shown"),
                );
                None
            }
        }
    }

    fn build(&mut self, root: &Path, files: load::RawFiles) -> Option<Fleet> {
        let lock = match super::lock::AssetsLock::read(root) {
            Ok(lock) => lock,
            Err(e) => {
                let id = self.diags.add_file(PathBuf::from(super::lock::LOCK_FILE));
                let (line, column) = match &e {
                    super::lock::LockError::Parse { line, column, .. } => (*line, *column),
                    super::lock::LockError::Io { .. } => (0, 0),
                };
                self.diags
                    .push(id, line, column, String::new(), crate::errfmt::chain(&e));
                super::lock::AssetsLock::default()
            }
        };
        let settings = files.fleet.as_ref().and_then(|(id, raw)| {
            self.file = *id;
            self.fleet_settings(raw, &lock)
        });
        let mut sites = Vec::new();
        let mut site_origins = HashMap::new();
        for file in &files.sites {
            self.file = file.id;
            if let Some(site) = self.site(file) {
                let name = site.0.name.clone();
                if let Some(first) = site_origins.get(&name) {
                    let msg = format!(
                        "site `{name}` is already defined at {}",
                        self.describe(*first)
                    );
                    self.err(file.site.name.span(), "name", msg);
                    continue;
                }
                site_origins.insert(name, self.origin(file.site.name.span()));
                sites.push(site);
            }
        }
        // Rules about all sites together only make sense when every site
        // file produced a site; otherwise they would report noise.
        let all_sites = sites.len() == files.site_stems.len();
        self.check_sites(&files.sites, &sites, all_sites);

        let site_files: HashSet<String> = files.site_stems.iter().cloned().collect();
        let mut seen = Seen::default();
        let mut inventory_of: HashMap<SiteName, Origin> = HashMap::new();
        // Sites with a machine that failed its checks: their control-plane
        // count cannot be judged.
        let mut incomplete: HashSet<String> =
            files.unreadable_inventories.iter().cloned().collect();
        for file in &files.inventories {
            self.file = file.id;
            if !self.inventory(file, &mut sites, &site_files, &mut seen, &mut inventory_of) {
                incomplete.insert(file.header.site.to_string());
            }
        }
        for (site, spans) in &sites {
            if incomplete.contains(site.name.as_str()) {
                continue;
            }
            self.file = spans.file;
            self.check_control_planes(site, spans);
        }

        if let Some((id, raw)) = &files.fleet {
            self.file = *id;
            let waves = raw
                .rebuild
                .iter()
                .flat_map(|r| r.waves.iter().flatten().flatten());
            for name in waves {
                if !sites.iter().any(|(s, _)| s.name.as_str() == name.as_str()) {
                    self.err(
                        name.span(),
                        "rebuild.waves",
                        format!("unknown site `{}`", name.as_str()),
                    );
                }
            }
        }
        let single: Vec<String> = sites
            .iter()
            .filter(|(s, _)| s.cluster.control_plane_count == 1)
            .map(|(s, _)| s.name.to_string())
            .collect();
        self.check_address_claims(&single);
        let mut fleet = settings?;
        let mut sites: Vec<Site> = sites.into_iter().map(|(s, _)| s).collect();
        sites.sort_by(|a, b| a.name.cmp(&b.name));
        fleet.sites = sites;
        fleet.root = root.to_path_buf();
        self.check_role_files(&fleet);
        Some(fleet)
    }

    /// What rendering will read must be there, so that `inventory check`
    /// fails where `render` would: each role's file (and the install stage
    /// where machines install), the templates those files name with
    /// `local:` / `contents_local:`, and the flavor's iPXE and the dnsmasq
    /// templates. (Tera syntax errors are still `render`'s to find.)
    fn check_role_files(&mut self, fleet: &Fleet) {
        let mut roles: Vec<(String, Vec<&str>)> = Vec::new();
        for (_, m) in fleet.machines() {
            let file = format!("ignition/{}.yaml", m.role.as_str());
            match roles.iter_mut().find(|(f, _)| *f == file) {
                Some((_, users)) => users.push(m.name.as_str()),
                None => roles.push((file, vec![m.name.as_str()])),
            }
        }
        if fleet.os.flavor == OsFlavor::Flatcar
            && fleet.machines().any(|(_, m)| m.install_disk.is_some())
        {
            roles.push((
                "ignition/install.yaml".into(),
                vec!["(machines with an install_disk)"],
            ));
        }
        for (file, users) in &roles {
            let path = self.root.join(file);
            let id = self.diags.add_file(PathBuf::from(file));
            let Ok(text) = std::fs::read_to_string(&path) else {
                let shown: Vec<&str> = users.iter().take(3).copied().collect();
                self.diags.push(
                    id,
                    0,
                    0,
                    String::new(),
                    format!(
                        "cannot read: the role file of {}{} is missing",
                        shown.join(", "),
                        if users.len() > 3 { ", …" } else { "" }
                    ),
                );
                continue;
            };
            for (n, line) in text.lines().enumerate() {
                let trimmed = line.trim_start().trim_start_matches("- ");
                let Some((key, value)) = trimmed.split_once(':') else {
                    continue;
                };
                if !["local", "contents_local"].contains(&key.trim()) {
                    continue;
                }
                let value = value.trim().trim_matches(['"', '\'']);
                if value.is_empty() || value.contains("{{") || value.contains("{%") {
                    continue;
                }
                // A file, or a directory (`storage.trees`): render checks
                // which one the field needs.
                if !self.root.join("templates").join(value).exists() {
                    self.diags.push(
                        id,
                        n + 1,
                        line.len() - line.trim_start().len() + 1,
                        key.trim().to_string(),
                        format!("templates/{value} does not exist"),
                    );
                }
            }
        }
        for template in [
            format!("templates/ipxe/{}.ipxe", fleet.os.flavor.as_str()),
            "templates/dnsmasq/dnsmasq.conf".to_string(),
        ] {
            if !self.root.join(&template).is_file() {
                let id = self.diags.add_file(PathBuf::from(&template));
                self.diags.push(
                    id,
                    0,
                    0,
                    String::new(),
                    "cannot read: the template is missing (every machine's boot renders it)".into(),
                );
            }
        }
    }
}

/// The positions of a site's values that later checks point back at.
struct SiteSpans {
    file: usize,
    count: Option<Span>,
    cluster: Span,
}

impl Ctx {
    /// Everything of `fleet.yaml`; `sites` is filled in by `build`.
    fn fleet_settings(&mut self, raw: &RawFleet, lock: &super::lock::AssetsLock) -> Option<Fleet> {
        let flavor = self.parse_as::<OsFlavor>(&raw.os.flavor, "os.flavor");
        let extensions = self.extensions(
            raw.extensions.as_deref().unwrap_or_default(),
            flavor,
            &raw.kubernetes.version,
            lock,
        );
        let image_registry = match &raw.kubernetes.image_registry {
            Some(r) => self.parse(r, "kubernetes.image_registry", parse_registry),
            None => Some("registry.k8s.io".to_string()),
        };
        let dhcp = match raw.boot.as_ref().and_then(|b| b.dhcp.as_ref()) {
            Some(v) => self.parse_as::<DhcpMode>(v, "boot.dhcp"),
            None => Some(DhcpMode::Proxy),
        };
        let boot_window = match raw.boot.as_ref().and_then(|b| b.window.as_ref()) {
            Some(v) => self.parse(v, "boot.window", |s| {
                match super::window::parse_duration(s).map_err(|e| format!("{e:#}"))? {
                    d if d.is_zero() => Err("a provisioning window of 0 would never let a machine boot: give a duration such as 30m".into()),
                    d => Ok(d),
                }
            }),
            None => Some(crate::state::provisioning::DEFAULT_WINDOW),
        };
        let assets_url = self.url(&raw.os.assets_url, "os.assets_url", &["http", "https"]);
        let channel = self.parse(&raw.os.channel, "os.channel", |s| {
            grammar::channel(flavor, s)
        });
        let os_version = self.parse(&raw.os.version, "os.version", |s| {
            grammar::exact_os_version(flavor, s)
        });
        let kubernetes_version = self.parse(
            &raw.kubernetes.version,
            "kubernetes.version",
            grammar::exact_kubernetes_version,
        );
        let mut admins = Vec::new();
        for (i, a) in raw.admins.iter().enumerate() {
            let name = self.parse(&a.name, &format!("admins[{i}].name"), grammar::label);
            let key = self.public_key(
                &a.ssh_authorized_key,
                &format!("admins[{i}].ssh_authorized_key"),
            );
            if let (Some(name), Some(key)) = (name, key) {
                admins.push(Admin {
                    name,
                    ssh_authorized_key: key,
                });
            }
        }
        let name = self.parse(&raw.name, "name", grammar::label);
        let encryption_key = raw
            .state
            .encryption_key
            .as_ref()
            .and_then(|k| self.secret_ref(k, "state.encryption_key"));
        let backend = match raw.state.backend.as_str() {
            "local" => Some(StateBackend::Local {
                path: raw
                    .state
                    .path
                    .as_ref()
                    .map(|p| PathBuf::from(p.as_str()))
                    .unwrap_or_else(|| ".metalherd/state".into()),
            }),
            "etcd" => {
                let mut endpoints = Vec::new();
                for (i, e) in raw.state.endpoints.iter().flatten().enumerate() {
                    endpoints.extend(self.url(
                        e,
                        &format!("state.endpoints[{i}]"),
                        &["http", "https"],
                    ));
                }
                if endpoints.is_empty() {
                    self.err(
                        raw.state.backend.span(),
                        "state.endpoints",
                        "the etcd backend needs at least one endpoint",
                    );
                }
                if encryption_key.is_none() && raw.state.encryption_key.is_none() {
                    self.err(
                        raw.state.backend.span(),
                        "state.encryption_key",
                        "the etcd backend needs state.encryption_key: secrets in etcd are sealed",
                    );
                }
                let path = |v: &Option<Text>| v.as_ref().map(|p| PathBuf::from(p.as_str()));
                let tls = [
                    &raw.state.ca_file,
                    &raw.state.cert_file,
                    &raw.state.key_file,
                ];
                if endpoints.iter().any(|u| u.scheme() == "https")
                    && tls.iter().any(|v| v.is_none())
                {
                    self.err(
                        raw.state.backend.span(),
                        "state.ca_file",
                        "https endpoints need state.ca_file, state.cert_file and state.key_file (client TLS)",
                    );
                }
                Some(StateBackend::Etcd {
                    endpoints,
                    ca_file: path(&raw.state.ca_file),
                    cert_file: path(&raw.state.cert_file),
                    key_file: path(&raw.state.key_file),
                    lock_ttl: raw.state.lock_ttl.unwrap_or(30),
                })
            }
            _ => {
                self.err(
                    raw.state.backend.span(),
                    "state.backend",
                    "unknown state backend: expected local or etcd",
                );
                None
            }
        };
        let alarms = raw.alarms.as_ref().map(|a| Alarms {
            command: a
                .command
                .as_ref()
                .and_then(|c| self.hook(c, "alarms.command")),
            url: a
                .url
                .as_ref()
                .and_then(|u| self.url(u, "alarms.url", &["http", "https"])),
        });
        let forensics = match &raw.forensics {
            Some(f) => {
                let bastion = self.parse(&f.bastion, "forensics.bastion", parse_ip);
                let key = self.public_key(&f.ssh_authorized_key, "forensics.ssh_authorized_key");
                bastion
                    .zip(key)
                    .map(|(bastion, ssh_authorized_key)| Forensics {
                        bastion,
                        ssh_authorized_key,
                    })
            }
            None => None,
        };
        let rebuild = raw.rebuild.as_ref().map(|r| Rebuild {
            waves: r
                .waves
                .iter()
                .flatten()
                .map(|w| w.iter().filter_map(|s| s.parse().ok()).collect())
                .collect(),
            bake: r.bake.as_ref().map(|b| b.to_string()),
        });
        let fleet = Fleet {
            root: PathBuf::new(),
            name: name?,
            os: Os {
                flavor: flavor?,
                channel: channel?,
                version: os_version?,
                assets_url: assets_url?,
                signing_keys: raw
                    .os
                    .signing_keys
                    .iter()
                    .flatten()
                    .map(|k| PathBuf::from(k.as_str()))
                    .collect(),
            },
            kubernetes: Kubernetes {
                version: kubernetes_version?,
                image_registry: image_registry?,
            },
            admins,
            state: StateSettings {
                backend: backend?,
                encryption_key,
            },
            traffic: raw.traffic.as_ref().map(|t| Traffic {
                drain: self.hook(&t.drain, "traffic.drain").unwrap_or_default(),
                restore: self.hook(&t.restore, "traffic.restore").unwrap_or_default(),
            }),
            boot: BootSettings {
                require_token: raw
                    .boot
                    .as_ref()
                    .and_then(|b| b.require_token.as_ref())
                    .map(|b| **b)
                    .unwrap_or(true),
                dhcp: dhcp?,
                window: boot_window?,
            },
            alarms,
            windows: raw
                .windows
                .iter()
                .flatten()
                .filter(|w| {
                    self.parse_as::<crate::fleet::window::Window>(w, "windows")
                        .is_some()
                })
                .map(|w| w.to_string())
                .collect(),
            rebuild,
            forensics,
            drill: raw.drill.as_ref().map(|d| Drill {
                isolate: self.hook(&d.isolate, "drill.isolate").unwrap_or_default(),
                reconnect: self
                    .hook(&d.reconnect, "drill.reconnect")
                    .unwrap_or_default(),
            }),
            extensions,
            sites: Vec::new(),
        };
        Some(fleet)
    }
}

impl Ctx {
    fn network(&mut self, raw: &RawNetwork, field: &str) -> Option<Network> {
        let cidr = self.parse_as::<Cidr>(&raw.cidr, &format!("{field}.cidr"));
        let gateway = self.parse(&raw.gateway, &format!("{field}.gateway"), parse_ip);
        if let (Some(cidr), Some(gw)) = (cidr, gateway) {
            if !cidr.contains(&gw) {
                self.err(
                    raw.gateway.span(),
                    format!("{field}.gateway"),
                    format!("gateway {gw} is outside {cidr}"),
                );
            } else if cidr.reserved().contains(&gw) {
                self.err(
                    raw.gateway.span(),
                    format!("{field}.gateway"),
                    format!("gateway {gw} is the network or broadcast address of {cidr}"),
                );
            }
        }
        let mut dns = Vec::new();
        for (i, d) in raw.dns.iter().enumerate() {
            dns.extend(self.parse(d, &format!("{field}.dns[{i}]"), parse_ip));
        }
        Some(Network {
            cidr: cidr?,
            gateway: gateway?,
            dns,
        })
    }

    fn site(&mut self, file: &SiteFile) -> Option<(Site, SiteSpans)> {
        let raw = &file.site;
        let name = self.parse_as::<SiteName>(&raw.name, "name");
        if let Some(name) = &name {
            // `render --out .` writes `<site>/`: a site may not be named
            // like a folder of the fleet repository.
            if RESERVED_SITE_NAMES.contains(&name.as_str()) {
                self.err(
                    raw.name.span(),
                    "name",
                    format!(
                        "`{name}` is a folder of the fleet repository (rendered sites are written to \
                         <out>/<site>/): choose another name (reserved: {})",
                        RESERVED_SITE_NAMES.join(", ")
                    ),
                );
            }
            if name.as_str() != file.stem {
                self.err(
                    raw.name.span(),
                    "name",
                    format!(
                        "site `{name}` must be in sites/{name}.yaml, not sites/{}.yaml",
                        file.stem
                    ),
                );
            }
        }
        let boot_server = self.url(&raw.boot_server, "boot_server", &["http", "https"]);
        let site_name = raw.name.as_str();
        if let Some(url) = &boot_server {
            if let Some(ip) = url_ip(url) {
                let what = format!("the boot server of site `{site_name}`");
                let port = url.port_or_known_default();
                self.claim(
                    ip,
                    port,
                    Kind::BootServer,
                    site_name,
                    what,
                    raw.boot_server.span(),
                    "boot_server",
                );
            }
        }
        let datacenter = self.parse(&raw.datacenter, "datacenter", grammar::label);
        let provisioning = self.network(&raw.networks.provisioning, "networks.provisioning");
        let nodes = self.network(&raw.networks.nodes, "networks.nodes");
        let c = &*raw.cluster;
        let cluster_name = self.parse_as::<ClusterName>(&c.name, "cluster.name");
        let api_endpoint = self.parse(&c.api_endpoint, "cluster.api_endpoint", parse_endpoint);
        if let Some(ip) = api_endpoint
            .as_ref()
            .and_then(|e| e.host.parse::<IpAddr>().ok())
        {
            let what = format!("the API endpoint of site `{site_name}`");
            let port = api_endpoint.as_ref().map(|e| e.port);
            let span = c.api_endpoint.span();
            self.claim(
                ip,
                port,
                Kind::ApiEndpoint,
                site_name,
                what,
                span,
                "cluster.api_endpoint",
            );
        }
        for (net, raw_net, which) in [
            (&provisioning, &raw.networks.provisioning, "provisioning"),
            (&nodes, &raw.networks.nodes, "nodes"),
        ] {
            if let Some(net) = net {
                let what = format!("the gateway of site `{site_name}`'s {which} network");
                let field = format!("networks.{which}.gateway");
                self.claim(
                    net.gateway,
                    None,
                    Kind::Gateway,
                    site_name,
                    what,
                    raw_net.gateway.span(),
                    &field,
                );
            }
        }
        let pod_cidr = self.parse_as::<Cidr>(&c.pod_cidr, "cluster.pod_cidr");
        let service_cidr = self.parse_as::<Cidr>(&c.service_cidr, "cluster.service_cidr");
        if let (Some(pod), Some(svc)) = (pod_cidr, service_cidr) {
            if pod.overlaps(&svc) {
                self.err(
                    c.service_cidr.span(),
                    "cluster.service_cidr",
                    format!("{svc} overlaps the pod CIDR {pod}"),
                );
            }
        }
        let count = match &c.control_plane_count {
            None => {
                self.err(
                    raw.cluster.span(),
                    "cluster.control_plane_count",
                    "missing; set 1, 3 or 5",
                );
                None
            }
            Some(n) if ![1, 3, 5].contains(&**n) => {
                let why = if **n % 2 == 0 {
                    "an even count cannot keep etcd quorum through a failure"
                } else {
                    "supported counts are 1, 3 and 5"
                };
                self.err(
                    n.span(),
                    "cluster.control_plane_count",
                    format!("{} is not allowed: {why}", **n),
                );
                // Reported; the site is still built so that the rules
                // about all sites (overlapping networks) are checked too.
                self.invalid_count.insert(raw.name.as_str().to_string());
                Some(**n)
            }
            Some(n) => Some(**n),
        };
        if *raw.capacity > 100 {
            self.err(
                raw.capacity.span(),
                "capacity",
                format!("{} is more than 100 percent", *raw.capacity),
            );
        }
        let disks = self.site_disks(raw.disks.as_ref());
        let registry_mirror = raw
            .registry_mirror
            .as_ref()
            .and_then(|u| self.url(u, "registry_mirror", &["http", "https"]));
        let defaults = raw.bmc_defaults.as_ref();
        let driver = defaults
            .and_then(|d| d.driver.as_ref())
            .and_then(|d| self.parse_as::<BmcDriver>(d, "bmc_defaults.driver"));
        let credentials = defaults
            .and_then(|d| d.credentials.as_ref())
            .and_then(|c| self.secret_ref(c, "bmc_defaults.credentials"));
        if credentials.is_none() && defaults.is_some_and(|d| d.credentials.is_some()) {
            self.refused_default_credentials
                .insert(raw.name.as_str().to_string());
        }
        let site = Site {
            name: name?,
            datacenter: datacenter?,
            boot_server: boot_server?,
            networks: Networks {
                provisioning: provisioning?,
                nodes: nodes?,
            },
            cluster: Cluster {
                name: cluster_name?,
                api_endpoint: api_endpoint?,
                pod_cidr: pod_cidr?,
                service_cidr: service_cidr?,
                control_plane_count: count?,
            },
            capacity: *raw.capacity,
            bmc_defaults: BmcDefaults {
                driver,
                credentials,
                ca_file: defaults
                    .and_then(|d| d.ca_file.as_ref())
                    .map(|f| PathBuf::from(f.as_str())),
                insecure: defaults.and_then(|d| d.insecure).unwrap_or(false),
            },
            registry_mirror,
            disks,
            machines: Vec::new(),
        };
        let spans = SiteSpans {
            file: file.id,
            count: c.control_plane_count.as_ref().map(|n| *n.span()),
            cluster: *raw.cluster.span(),
        };
        Some((site, spans))
    }

    /// Rules across sites: no overlapping networks, pod and service ranges
    /// clear of every node network, and enough capacity to lose any site.
    fn check_sites(&mut self, files: &[SiteFile], sites: &[(Site, SiteSpans)], all_sites: bool) {
        let span_of = |id: usize| files.iter().find(|f| f.id == id).map(|f| &f.site);
        for (i, (site, spans)) in sites.iter().enumerate() {
            let Some(raw) = span_of(spans.file) else {
                continue;
            };
            self.file = spans.file;
            let own = [
                (
                    "networks.provisioning.cidr",
                    site.networks.provisioning.cidr,
                    raw.networks.provisioning.cidr.span(),
                ),
                (
                    "networks.nodes.cidr",
                    site.networks.nodes.cidr,
                    raw.networks.nodes.cidr.span(),
                ),
            ];
            for (earlier, _) in &sites[..i] {
                for (field, cidr, span) in &own {
                    for theirs in [
                        earlier.networks.provisioning.cidr,
                        earlier.networks.nodes.cidr,
                    ] {
                        if cidr.overlaps(&theirs) {
                            self.err(
                                span,
                                *field,
                                format!("{cidr} overlaps {theirs} of site `{}`", earlier.name),
                            );
                        }
                    }
                }
            }
            for (other, _) in sites {
                for (field, cidr, span) in [
                    (
                        "cluster.pod_cidr",
                        site.cluster.pod_cidr,
                        raw.cluster.pod_cidr.span(),
                    ),
                    (
                        "cluster.service_cidr",
                        site.cluster.service_cidr,
                        raw.cluster.service_cidr.span(),
                    ),
                ] {
                    for net in [other.networks.nodes.cidr, other.networks.provisioning.cidr] {
                        if cidr.overlaps(&net) {
                            let whose = if other.name == site.name {
                                "this site".to_string()
                            } else {
                                format!("site `{}`", other.name)
                            };
                            self.err(
                                span,
                                field,
                                format!("{cidr} overlaps the network {net} of {whose}"),
                            );
                        }
                    }
                }
            }
        }
        if sites.len() < 2 || !all_sites {
            return;
        }
        for (site, spans) in sites {
            let rest: u32 = sites
                .iter()
                .filter(|(s, _)| s.name != site.name)
                .map(|(s, _)| s.capacity)
                .sum();
            if rest < 100 {
                let Some(raw) = span_of(spans.file) else {
                    continue;
                };
                self.file = spans.file;
                let detail: Vec<String> = sites
                    .iter()
                    .filter(|(s, _)| s.name != site.name)
                    .map(|(s, _)| format!("{} {}%", s.name, s.capacity))
                    .collect();
                self.err(
                    raw.capacity.span(),
                    "capacity",
                    format!("with site `{}` down the others carry only {rest}% ({}); they must cover 100%", site.name, detail.join(", ")),
                );
            }
        }
    }

    fn check_control_planes(&mut self, site: &Site, spans: &SiteSpans) {
        if self.invalid_count.contains(site.name.as_str()) {
            return;
        }
        let want = site.cluster.control_plane_count;
        let have = site
            .machines
            .iter()
            .filter(|m| m.role == Role::ControlPlane)
            .count();
        if (have as u32) < want {
            let span = spans.count.unwrap_or(spans.cluster);
            self.err(
                &span,
                "cluster.control_plane_count",
                format!(
                    "{want} control-plane machines wanted but inventory/{}.yaml lists {have}",
                    site.name
                ),
            );
        }
    }
}

/// Names, MACs and IPs seen so far, fleet-wide, with where they were.
#[derive(Default)]
struct Seen {
    names: HashMap<MachineName, Origin>,
    macs: HashMap<MacAddr, (Origin, MachineName)>,
    ips: HashMap<IpAddr, (Origin, MachineName)>,
    /// BMC address and system: one BMC powers one machine.
    bmcs: HashMap<(String, String), (Origin, String)>,
}

impl Ctx {
    fn inventory(
        &mut self,
        file: &InventoryFile,
        sites: &mut [(Site, SiteSpans)],
        site_files: &HashSet<String>,
        seen: &mut Seen,
        inventory_of: &mut HashMap<SiteName, Origin>,
    ) -> bool {
        let site_field = &file.header.site;
        let Some(site_name) = self.parse_as::<SiteName>(site_field, "site") else {
            return false;
        };
        if site_name.as_str() != file.stem {
            self.err(site_field.span(), "site", format!("the machines of site `{site_name}` belong in inventory/{site_name}.yaml, not inventory/{}.yaml", file.stem));
        }
        if let Some(first) = inventory_of.get(&site_name) {
            let msg = format!(
                "site `{site_name}` already has an inventory at {}",
                self.describe(*first)
            );
            self.err(site_field.span(), "site", msg);
            return false;
        }
        inventory_of.insert(site_name.clone(), self.origin(site_field.span()));
        let mut site = sites
            .iter_mut()
            .find(|(s, _)| s.name == site_name)
            .map(|(s, _)| s);
        if site.is_none() && !site_files.contains(site_name.as_str()) {
            self.err(
                site_field.span(),
                "site",
                format!("no such site: there is no sites/{site_name}.yaml"),
            );
            return false;
        }
        // A site file that exists but failed its own checks is reported
        // already; its machines are still checked on their own.
        let mut complete = !file.incomplete;
        // In file order, the malformed entries among them: a malformed
        // entry's name still takes part in the duplicate check.
        let mut malformed = file.malformed_names.iter().peekable();
        for (i, raw) in &file.machines {
            while let Some((j, name)) = malformed.next_if(|(j, _)| j < i) {
                self.malformed_name(*j, name, seen);
            }
            let at = format!("machines[{i}]");
            match self.machine(raw, &at, site.as_deref(), seen) {
                Some(machine) => {
                    if let Some(site) = site.as_mut() {
                        site.machines.push(machine);
                    }
                }
                None => complete = false,
            }
        }
        for (j, name) in malformed {
            self.malformed_name(*j, name, seen);
        }
        complete
    }

    /// Reports `name` if an earlier machine has it; remembers it otherwise.
    fn check_name(&mut self, name: &MachineName, raw: &Text, field: &str, seen: &mut Seen) {
        if let Some(first) = seen.names.get(name) {
            let msg = format!(
                "machine name `{name}` is already used at {}",
                self.describe(*first)
            );
            self.err(raw.span(), field, msg);
        } else {
            seen.names.insert(name.clone(), self.origin(raw.span()));
        }
    }

    /// The name of a machine entry that is malformed otherwise (its own
    /// problem is reported already).
    fn malformed_name(&mut self, i: usize, raw: &Text, seen: &mut Seen) {
        let field = format!("machines[{i}].name");
        if let Some(name) = self.parse_as::<MachineName>(raw, &field) {
            self.check_name(&name, raw, &field, seen);
        }
    }

    fn machine(
        &mut self,
        raw: &RawMachine,
        at: &str,
        site: Option<&Site>,
        seen: &mut Seen,
    ) -> Option<Machine> {
        let name = self.parse_as::<MachineName>(&raw.name, &format!("{at}.name"));
        let role = self.parse_as::<Role>(&raw.role, &format!("{at}.role"));
        let mac = self.parse(&raw.mac, &format!("{at}.mac"), |s| {
            let mac: MacAddr = s.parse()?;
            let o = mac.octets();
            if o == [0; 6] {
                Err(format!("{mac} is no network card's address"))
            } else if o[0] & 1 == 1 {
                Err(format!(
                    "{mac} is a multicast (or broadcast) address: no network card has it \
                     (the first octet of a card's MAC is even)"
                ))
            } else {
                Ok(mac)
            }
        });
        let ip = self.parse(&raw.ip, &format!("{at}.ip"), parse_ip);
        if let (Some(ip), Some(site)) = (ip, site) {
            let nodes = &site.networks.nodes;
            let problem = if !nodes.cidr.contains(&ip) {
                Some(format!(
                    "{ip} is outside the nodes network {} of site `{}`",
                    nodes.cidr, site.name
                ))
            } else if nodes.cidr.reserved().contains(&ip) {
                Some(format!(
                    "{ip} is the network or broadcast address of {}",
                    nodes.cidr
                ))
            } else if ip == nodes.gateway {
                Some(format!("{ip} is the gateway of {}", nodes.cidr))
            } else {
                None
            };
            if let Some(problem) = problem {
                self.err(raw.ip.span(), format!("{at}.ip"), problem);
            }
        }
        if let (Some(name), Some(ip), Some(role), Some(site)) = (&name, ip, role, site) {
            let what = format!("machine `{name}`");
            let field = format!("{at}.ip");
            self.claim(
                ip,
                None,
                Kind::Machine(role),
                site.name.as_str(),
                what,
                raw.ip.span(),
                &field,
            );
        }
        if let Some(name) = &name {
            self.check_name(name, &raw.name, &format!("{at}.name"), seen);
            if let Some(mac) = mac {
                if let Some((first, owner)) = seen.macs.get(&mac) {
                    let msg = format!(
                        "MAC {mac} is already used by `{owner}` at {}",
                        self.describe(*first)
                    );
                    self.err(raw.mac.span(), format!("{at}.mac"), msg);
                } else {
                    seen.macs
                        .insert(mac, (self.origin(raw.mac.span()), name.clone()));
                }
            }
            if let Some(ip) = ip {
                if let Some((first, owner)) = seen.ips.get(&ip) {
                    let msg = format!(
                        "IP {ip} is already used by `{owner}` at {}",
                        self.describe(*first)
                    );
                    self.err(raw.ip.span(), format!("{at}.ip"), msg);
                } else {
                    seen.ips
                        .insert(ip, (self.origin(raw.ip.span()), name.clone()));
                }
            }
        }
        let install_disk = raw
            .install_disk
            .as_ref()
            .and_then(|d| self.parse(d, &format!("{at}.install_disk"), grammar::device));
        let default_refused =
            site.is_some_and(|s| self.refused_default_credentials.contains(s.name.as_str()));
        let bmc = self.bmc(
            &raw.bmc,
            &format!("{at}.bmc"),
            default_refused,
            site.map(|s| &s.bmc_defaults),
        );
        // Two machines behind one BMC (and system): powering one off
        // would power off the other. (The manual driver's address is a
        // place, not a BMC.)
        if let Some(b) = bmc.as_ref().filter(|b| b.driver != BmcDriver::Manual) {
            let key = (
                b.address.trim_end_matches('/').to_ascii_lowercase(),
                b.system.clone().unwrap_or_default(),
            );
            let owner = name.as_ref().map_or("?".to_string(), |n| n.to_string());
            if let (Some(ip), Some(site)) = (bmc_ip(&b.address), site) {
                let what = format!("the BMC of `{owner}`");
                let field = format!("{at}.bmc.address");
                let span = raw.bmc.address.span();
                self.claim(ip, None, Kind::Bmc, site.name.as_str(), what, span, &field);
            }
            if let Some((first, other)) = seen.bmcs.get(&key) {
                let msg = format!(
                    "BMC {}{} is already `{other}`'s at {}: a power change of one would hit the other",
                    b.address,
                    b.system.as_deref().map(|s| format!(" (system {s})")).unwrap_or_default(),
                    self.describe(*first)
                );
                self.err(raw.bmc.address.span(), format!("{at}.bmc.address"), msg);
            } else {
                seen.bmcs
                    .insert(key, (self.origin(raw.bmc.address.span()), owner));
            }
        }
        let disks = self.machine_disks(
            raw.disks.as_ref(),
            at,
            site,
            install_disk.as_deref(),
            raw.name.span(),
        );
        Some(Machine {
            name: name?,
            role: role?,
            mac: mac?,
            ip: ip?,
            install_disk,
            disks: disks?,
            bmc: bmc?,
        })
    }

    fn bmc(
        &mut self,
        raw: &RawBmc,
        at: &str,
        default_refused: bool,
        defaults: Option<&BmcDefaults>,
    ) -> Option<Bmc> {
        // Without the site (its file failed its own checks), only what
        // the machine itself says can be checked.
        let site_known = defaults.is_some();
        let none = BmcDefaults {
            driver: None,
            credentials: None,
            ca_file: None,
            insecure: false,
        };
        let defaults = defaults.unwrap_or(&none);
        let driver = match &raw.driver {
            Some(d) => self.parse_as::<BmcDriver>(d, &format!("{at}.driver")),
            None => match defaults.driver {
                Some(d) => Some(d),
                None if !site_known => None,
                None => {
                    self.err(
                        raw.address.span(),
                        format!("{at}.driver"),
                        "no BMC driver: set it here or in the site's bmc_defaults",
                    );
                    None
                }
            },
        };
        let credentials = match &raw.credentials {
            Some(c) => self.secret_ref(c, &format!("{at}.credentials")),
            None => defaults.credentials.clone(),
        };
        let address = raw.address.as_str();
        if address.contains("://") {
            self.url(&raw.address, &format!("{at}.address"), &["http", "https"])?;
        } else if address.contains('@') {
            self.err(raw.address.span(), format!("{at}.address"), "the address carries credentials (value not shown); put them in a credentials reference");
            return None;
        }
        let needs_credentials = matches!(driver, Some(BmcDriver::Redfish | BmcDriver::Ipmi));
        if site_known
            && needs_credentials
            && raw.credentials.is_none()
            && credentials.is_none()
            && !default_refused
        {
            self.err(raw.address.span(), format!("{at}.credentials"), "this BMC driver needs credentials: set a reference here or in the site's bmc_defaults");
        }
        Some(Bmc {
            driver: driver?,
            address: address.to_string(),
            system: raw.system.as_ref().map(|s| s.to_string()),
            credentials,
        })
    }
}

/// `host:port` or `[v6]:port`.
/// An image registry host as container image references spell it:
/// `host[:port][/path]`, no scheme.
/// The IP address a URL names, if it names one rather than a host name.
fn url_ip(url: &Url) -> Option<IpAddr> {
    match url.host()? {
        url::Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
        url::Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
        url::Host::Domain(_) => None,
    }
}

/// The IP address of a BMC: its URL's (Redfish), or the bare address or
/// `address:port` (IPMI). Sockets and host names have none.
fn bmc_ip(address: &str) -> Option<IpAddr> {
    if address.contains("://") {
        return Url::parse(address).ok().as_ref().and_then(url_ip);
    }
    address
        .parse()
        .ok()
        .or_else(|| address.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
}

fn parse_registry(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && !s.contains("://")
        && !s.ends_with('/')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:/_".contains(&b));
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "invalid image registry {s:?}: write it as image references do, host[:port][/path] without a scheme (registry.k8s.io)"
        ))
    }
}

fn parse_endpoint(s: &str) -> Result<Endpoint, String> {
    let bad = || format!("malformed endpoint {s:?}: expected HOST:PORT, e.g. 10.10.4.10:6443");
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let is_name = !host.is_empty()
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if host.parse::<IpAddr>().is_err() && !is_name {
        return Err(bad());
    }
    Ok(Endpoint {
        host: host.to_string(),
        port,
    })
}

/// What is wrong with hook command `text` run in `root`, if anything.
fn hook_problem(text: &str, root: &Path) -> Option<String> {
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        match after.find('}') {
            Some(end) if &after[..end] == "site" => rest = &after[end + 1..],
            _ => {
                return Some(format!(
                    "`{text}`: the only placeholder a hook gets is {{site}}"
                ))
            }
        }
    }
    let words: Vec<&str> = text
        .split_whitespace()
        .skip_while(|w| w.contains('=') && !w.starts_with('='))
        .collect();
    let program = match words.as_slice() {
        [] => return Some("an empty hook command".into()),
        [shell, script, ..] if ["sh", "bash"].contains(shell) && !script.starts_with('-') => {
            *script
        }
        [first, ..] => *first,
    };
    // Shell syntax, builtins, placeholders: nothing to look up.
    const BUILTINS: &[&str] = &[
        ":", "true", "false", "exit", "echo", "printf", "test", "[", "cd", "exec", ".",
    ];
    if BUILTINS.contains(&program)
        || program.contains(['{', '$', '(', '`', '"', '\'', ';', '&', '|'])
    {
        return None;
    }
    use std::os::unix::fs::PermissionsExt;
    let runnable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let script = program != words[0];
    if program.contains('/') {
        let path = root.join(program);
        if !path.is_file() {
            return Some(format!(
                "`{program}` does not exist in the fleet directory, where hooks run ({})",
                path.display()
            ));
        }
        if !script && !runnable(&path) {
            return Some(format!(
                "`{program}` is not executable: `chmod +x` it, or run it as `sh {program} …`"
            ));
        }
        return None;
    }
    let on_path = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| runnable(&d.join(program))));
    (!on_path).then(|| format!("`{program}` is not a command on PATH (nor a path in the fleet)"))
}
