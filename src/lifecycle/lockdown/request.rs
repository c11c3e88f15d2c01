//! What a lockdown is asked for: the case id, the cluster (by site or
//! cluster name), the forensic settings it needs, and `--replace-on`.

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Context};
use serde::Serialize;

use crate::fleet::{Fleet, Forensics, Role, Site, SiteName};

/// An incident's id (`INC-4711`): letters, digits, `.`, `_` and `-`,
/// starting with a letter or digit, at most 64 characters. It names the
/// evidence directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct CaseId(String);

impl FromStr for CaseId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if ok {
            Ok(CaseId(s.to_string()))
        } else {
            Err(format!(
                "{s:?} is not a case id: use letters, digits, '.', '_' and '-', starting with a \
                 letter or digit, at most 64 characters (e.g. INC-4711)"
            ))
        }
    }
}

impl CaseId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a replacement cluster should run (`--replace-on`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplaceOn {
    Spares,
    Site(SiteName),
}

impl FromStr for ReplaceOn {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "spares" {
            return Ok(ReplaceOn::Spares);
        }
        s.parse()
            .map(ReplaceOn::Site)
            .map_err(|e| format!("expected `spares` or a site name: {e}"))
    }
}

/// The site whose cluster is `name`: a site's name or its cluster's.
pub fn cluster_site<'a>(fleet: &'a Fleet, name: &str) -> anyhow::Result<&'a Site> {
    fleet
        .sites
        .iter()
        .find(|s| s.name.as_str() == name || s.cluster.name.as_str() == name)
        .with_context(|| {
            let known: Vec<String> = fleet
                .sites
                .iter()
                .map(|s| format!("{} ({})", s.cluster.name, s.name))
                .collect();
            format!(
                "no cluster or site `{name}` in fleet {}; clusters: {}",
                fleet.name,
                known.join(", ")
            )
        })
}

/// The forensic settings, or an error that says where to configure them.
pub fn forensics(fleet: &Fleet) -> anyhow::Result<&Forensics> {
    fleet.forensics.as_ref().with_context(|| {
        format!(
            "lockdown needs `forensics` in {}: `forensics: {{ bastion: <IP of the forensic \
             bastion>, ssh_authorized_key: \"ssh-ed25519 …\" }}`",
            fleet.root.join("inventory/fleet.yaml").display()
        )
    })
}

/// What `--replace-on` means today: `spares` is refused (with why),
/// another site gets the command to run printed. Checked before anything
/// is done.
pub fn replace_hint(fleet: &Fleet, site: &Site, on: &ReplaceOn) -> anyhow::Result<String> {
    match on {
        ReplaceOn::Spares => {
            let spares = site
                .machines
                .iter()
                .filter(|m| m.role == Role::Spare)
                .count();
            bail!(
                "--replace-on spares is not supported yet: the site has {spares} spare \
                 machine(s); a replacement cluster on spares needs per-generation role \
                 assignment. Run lockdown without it, then replace the cluster elsewhere"
            )
        }
        ReplaceOn::Site(other) => {
            let other = fleet.site(other.as_str()).with_context(|| {
                format!("--replace-on: no site `{other}` in fleet {}", fleet.name)
            })?;
            if other.name == site.name {
                bail!(
                    "--replace-on {}: that is the site being locked down",
                    other.name
                );
            }
            Ok(format!(
                "metalherd plan site {o} && metalherd replace site {o}  # {o} carries {c}% of \
                 the load; the safety checks apply (with {s} locked down they block until \
                 overridden with --force --reason)",
                o = other.name,
                c = other.capacity,
                s = site.name
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_ids_are_plain_names() {
        for ok in ["INC-4711", "a", "2026.11_x-1"] {
            assert_eq!(ok.parse::<CaseId>().unwrap().as_str(), ok);
        }
        for bad in [
            "",
            ".",
            "..",
            "-x",
            ".hidden",
            "a/b",
            "../x",
            "a b",
            "ä",
            &"x".repeat(65),
        ] {
            assert!(bad.parse::<CaseId>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn clusters_are_named_by_site_or_cluster_and_spares_are_refused() {
        let fleet = crate::fleet::load(std::path::Path::new(env!("CARGO_MANIFEST_DIR"))).unwrap();
        assert_eq!(cluster_site(&fleet, "fra").unwrap().name.as_str(), "fra");
        assert_eq!(
            cluster_site(&fleet, "fra-k8s").unwrap().name.as_str(),
            "fra"
        );
        let e = cluster_site(&fleet, "nope").unwrap_err().to_string();
        assert!(e.contains("fra-k8s (fra)"), "{e}");
        let fra = fleet.site("fra").unwrap();
        let e = replace_hint(&fleet, fra, &"spares".parse().unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not supported yet") && e.contains("spare machine(s)"),
            "{e}"
        );
        assert!(replace_hint(&fleet, fra, &"fra".parse().unwrap()).is_err());
        let hint = replace_hint(&fleet, fra, &"ber".parse().unwrap()).unwrap();
        assert!(hint.contains("metalherd replace site ber"), "{hint}");
    }

    #[test]
    fn without_forensics_the_error_names_the_file_and_field() {
        let fleet = crate::fleet::load(std::path::Path::new(env!("CARGO_MANIFEST_DIR"))).unwrap();
        let e = forensics(&fleet).unwrap_err().to_string();
        assert!(
            e.contains("inventory/fleet.yaml") && e.contains("forensics:"),
            "{e}"
        );
        assert!(
            e.contains("bastion") && e.contains("ssh_authorized_key"),
            "{e}"
        );
    }
}
