//! What the boot server hands out, rendered once at start-up (and on
//! reload) and held in memory: per machine its iPXE script, split where
//! the one-time token goes, and its Ignition. No templating and no disk
//! reads per request.

use std::collections::HashMap;
use std::sync::Arc;

use crate::fleet::{Fleet, MacAddr, SiteName};
use crate::keys;
use crate::render::{self, Selection};

pub struct MachineContent {
    pub name: String,
    pub site: String,
    pub mac: MacAddr,
    /// The iPXE script before and after the point where `&token=…` goes
    /// (the end of the Ignition URL); `None` if the script has no such URL.
    pub ipxe: (String, Option<String>),
    pub ignition: Arc<[u8]>,
    /// Where each boot's report secret goes in `ignition`.
    pub secret_at: Vec<usize>,
    /// The SSH host key fingerprint metalherd generated for the machine.
    pub host_key_fingerprint: String,
    /// It installs to a disk: what it is served is installed there (an
    /// install stage, or the config FCOS's installer fetches), so its next
    /// network boot in the window, and any outside one, boots that disk.
    pub installs: bool,
    /// The role it was rendered for (the state's, where a blue-green
    /// replace moved the roles).
    pub role: crate::fleet::Role,
}

impl MachineContent {
    /// This boot's Ignition: a copy with `secret` in every placeholder.
    pub fn ignition_with(&self, secret: &str) -> Vec<u8> {
        let mut bytes = self.ignition.to_vec();
        for &at in &self.secret_at {
            bytes[at..at + secret.len()].copy_from_slice(secret.as_bytes());
        }
        bytes
    }
}

pub struct Content {
    pub by_mac: HashMap<MacAddr, Arc<MachineContent>>,
    /// Pinned extension images by their path under `/assets/`, with the
    /// sha512 machines will check: the boot server checks what it serves
    /// against it, to say which machine will refuse what.
    pub extensions: HashMap<String, String>,
    pub require_token: bool,
    pub machines: usize,
    /// The fleet and the sites served, for the fleet metrics on `/metrics`.
    pub fleet: Arc<Fleet>,
    pub sites: Vec<SiteName>,
}

/// Renders every machine of `sites` (all when empty) of `fleet`.
pub fn build(fleet: &Fleet, sites: &[SiteName]) -> anyhow::Result<Content> {
    let (keys, created) = keys::ensure_state(fleet)?;
    if created > 0 {
        tracing::info!("generated {created} SSH key(s)");
    }
    let mut by_mac = HashMap::new();
    for site in &fleet.sites {
        if !sites.is_empty() && !sites.contains(&site.name) {
            continue;
        }
        let selection = Selection {
            site: Some(site.name.clone()),
            machine: None,
        };
        let rendered = render::render(fleet, &keys, &selection, 1)?;
        for (m, machine) in rendered.machines.into_iter().zip(&site.machines) {
            let url = format!(
                "{}/ignition?mac={}",
                site.boot_server.as_str().trim_end_matches('/'),
                machine.mac.hexhyp()
            );
            let ipxe = match m.ipxe.find(&url) {
                Some(at) => {
                    let cut = at + url.len();
                    (m.ipxe[..cut].to_string(), Some(m.ipxe[cut..].to_string()))
                }
                None => (m.ipxe.clone(), None),
            };
            let placeholder = render::REPORT_SECRET_PLACEHOLDER.as_bytes();
            // An install stage (Flatcar), or a config coreos-installer
            // fetches to write to disk (FCOS): either way an install.
            let installs = fleet.installs(machine);
            let ignition = m.ignition.into_bytes();
            let secret_at: Vec<usize> = ignition
                .windows(placeholder.len())
                .enumerate()
                .filter(|(_, w)| *w == placeholder)
                .map(|(i, _)| i)
                .collect();
            let host_key_fingerprint = keys
                .host
                .get(&machine.name)
                .map(|k| k.fingerprint().to_string())
                .unwrap_or_default();
            by_mac.insert(
                machine.mac,
                Arc::new(MachineContent {
                    name: m.name.to_string(),
                    site: m.site.to_string(),
                    mac: machine.mac,
                    ipxe,
                    ignition: Arc::from(ignition),
                    secret_at,
                    host_key_fingerprint,
                    installs,
                    role: machine.role,
                }),
            );
        }
    }
    let machines = by_mac.len();
    let extensions = fleet
        .extensions
        .iter()
        .filter_map(|e| {
            let hash = e.image_hash()?;
            let sha512 = hash.strip_prefix("sha512-")?.to_string();
            Some((e.asset_path(), sha512))
        })
        .collect();
    Ok(Content {
        by_mac,
        extensions,
        require_token: fleet.boot.require_token,
        machines,
        fleet: Arc::new(fleet.clone()),
        sites: sites.to_vec(),
    })
}
