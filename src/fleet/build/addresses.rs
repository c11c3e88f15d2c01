//! One address, one thing: a machine, a site's API endpoint, its boot
//! server, a gateway and a BMC must not share an IP address, within a
//! site or across sites. Two things at one address means metalherd (or a
//! machine) talks to the wrong one: a power change aimed at a BMC that is
//! really a node, an API endpoint that dies with the machine it names, a
//! boot server that is a machine being reinstalled.
//!
//! Some pairs may share: one boot server may serve several sites, a
//! gateway may serve the boot files, and emulated
//! BMCs (virtualbmc, sushy-tools) listen on the provisioning host beside
//! them; a one-control-plane site's API endpoint may be that machine.
//!
//! Claims are collected while sites and machines are built and judged at
//! the end, when every site's control-plane count is known.

use std::collections::HashMap;
use std::net::IpAddr;

use marked_yaml::Span;

use super::{Ctx, Origin};
use crate::fleet::Role;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Kind {
    Machine(Role),
    ApiEndpoint,
    BootServer,
    Gateway,
    Bmc,
}

/// Something that answers at `ip`, with where the fleet says so.
pub(super) struct Claim {
    pub ip: IpAddr,
    /// The port, where the thing has one (API endpoint, boot server).
    pub port: Option<u16>,
    pub kind: Kind,
    pub site: String,
    /// What it is, for a message: "machine `fra-cp-01`".
    pub what: String,
    pub origin: Origin,
    pub span: Span,
    pub field: String,
}

impl Ctx {
    /// Records that the thing at the current file's `span` answers at `ip`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn claim(
        &mut self,
        ip: IpAddr,
        port: Option<u16>,
        kind: Kind,
        site: &str,
        what: String,
        span: &Span,
        field: &str,
    ) {
        let origin = self.origin(span);
        self.claims.push(Claim {
            ip,
            port,
            kind,
            site: site.to_string(),
            what,
            origin,
            span: *span,
            field: field.to_string(),
        });
    }

    /// Reports each claim on an address an earlier claim of another kind
    /// holds. `single_control_plane` names the sites with one control
    /// plane, whose API endpoint may be that machine's address.
    pub(super) fn check_address_claims(&mut self, single_control_plane: &[String]) {
        let claims = std::mem::take(&mut self.claims);
        let mut by_ip: HashMap<IpAddr, Vec<&Claim>> = HashMap::new();
        for claim in &claims {
            by_ip.entry(claim.ip).or_default().push(claim);
        }
        let mut found = Vec::new();
        for group in by_ip.values() {
            for (i, later) in group.iter().enumerate() {
                let conflict = group[..i]
                    .iter()
                    .find(|first| conflicts(first, later, single_control_plane));
                if let Some(first) = conflict {
                    found.push((*first, *later));
                }
            }
        }
        for (first, later) in found {
            let hint = match (first.kind, later.kind) {
                (Kind::Bmc, _) | (_, Kind::Bmc) => {
                    " (a power change aimed at the BMC would reach the other)"
                }
                (Kind::ApiEndpoint, Kind::Machine(_)) | (Kind::Machine(_), Kind::ApiEndpoint) => {
                    " (with more than one control plane the API endpoint must outlive any one \
                     machine: a VIP or a DNS name)"
                }
                (Kind::BootServer, Kind::Machine(_)) | (Kind::Machine(_), Kind::BootServer) => {
                    " (a machine is reinstalled by metalherd; the boot server must not be one)"
                }
                _ => "",
            };
            let msg = format!(
                "{} is already {} at {}: {} needs an address of its own{hint}",
                later.ip,
                first.what,
                self.describe(first.origin),
                later.what
            );
            self.diags
                .at(later.origin.file, &later.span, later.field.clone(), msg);
        }
    }
}

/// Whether `a` (earlier) and `b` (later) may not share their address.
/// Same-kind pairs are other rules' business (duplicate machine IPs,
/// BMCs by address and system, overlapping networks), except API
/// endpoints, which no other rule compares; machines against gateways are
/// the networks' rules too.
fn conflicts(a: &Claim, b: &Claim, single_control_plane: &[String]) -> bool {
    use Kind::*;
    match (a.kind, b.kind) {
        (ApiEndpoint, ApiEndpoint) => a.port == b.port,
        // One `metalherd serve --site A --site B` may serve several sites.
        (BootServer, BootServer) => false,
        (Machine(_), Machine(_)) | (Bmc, Bmc) | (Gateway, Gateway) => false,
        (Machine(_), Gateway) | (Gateway, Machine(_)) => false,
        // A router that also serves the boot files is a common small setup;
        // emulated BMCs (virtualbmc, sushy-tools) run on the provisioning
        // host, one port each, beside its boot server at its gateway.
        (BootServer, Gateway) | (Gateway, BootServer) => false,
        (Bmc, Gateway | BootServer) | (Gateway | BootServer, Bmc) => false,
        (ApiEndpoint, Machine(Role::ControlPlane)) | (Machine(Role::ControlPlane), ApiEndpoint) => {
            !(a.site == b.site && single_control_plane.contains(&a.site))
        }
        _ => true,
    }
}
