//! The steps of a replace, named as its journal names them, each with what
//! it does at this site: `plan` prints these, `replace` journals exactly
//! these names in this order (the crash test and the lab compare the two).
//! A forced run journals one more step first, `override: …`.
//!
//! [`site`] is `plan site S`'s whole report: these steps and the checks.
//!
//! To add a step to replace: add it where the operation runs it and here,
//! in the same place.

pub mod site;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::fleet::{Fleet, Role, Site};

/// One step: its journal name and what it does here.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    pub step: &'static str,
    pub does: String,
}

fn step(step: &'static str, does: impl Into<String>) -> Step {
    Step {
        step,
        does: does.into(),
    }
}

/// The user's hook `command` for `site`, or that there is none.
fn hook(site: &Site, command: Option<&str>) -> String {
    command
        .map(|c| format!("`{}`", c.replace("{site}", site.name.as_str())))
        .unwrap_or_else(|| "(no traffic hook configured)".into())
}

fn names(machines: &[&crate::fleet::Machine]) -> String {
    machines
        .iter()
        .map(|m| m.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The provision's steps for generation `to` on `site` (whose roles are
/// the ones being built), ending with `record` when it records the
/// generation itself.
pub fn provision(site: &Site, to: u64, record: bool) -> Vec<Step> {
    let serving = crate::provision::machines(site);
    let control: Vec<_> = serving
        .iter()
        .copied()
        .filter(|m| m.role == Role::ControlPlane)
        .collect();
    let workers: Vec<_> = serving
        .iter()
        .copied()
        .filter(|m| m.role == Role::Worker)
        .collect();
    let mut steps = vec![
        step(
            "power on",
            format!("power on {} to boot from the network", names(&serving)),
        ),
        step(
            "boot",
            "wait for each machine's boot report through the boot server",
        ),
        step(
            "pki",
            format!("make generation {to}'s PKI (fresh CAs) and keep it in the state"),
        ),
        step(
            "upload",
            "upload certificates and manifests over SSH (pinned host keys)",
        ),
        step("start etcd", format!("start etcd on {}", names(&control))),
        step(
            "control plane",
            "etcd quorum over TLS, then the control plane's kubelets and /readyz",
        ),
    ];
    if !workers.is_empty() {
        steps.push(step(
            "workers",
            format!("start the kubelets of {}", names(&workers)),
        ));
    }
    if record {
        steps.push(step(
            "record",
            format!("record generation {to} as running and its machines ready"),
        ));
    }
    steps
}

/// An in-place replace of `site` from generation `from` to `to`.
pub fn replace(
    fleet: &Fleet,
    site: &Site,
    from: Option<u64>,
    to: u64,
    bake: Duration,
) -> Vec<Step> {
    let traffic = fleet.traffic.as_ref();
    let mut steps = vec![
        step(
            "drain",
            format!(
                "record the site drained, then traffic.drain: {}",
                hook(site, traffic.map(|t| t.drain.as_str()))
            ),
        ),
        step(
            "power off",
            format!("power off {}", names(&crate::provision::machines(site))),
        ),
    ];
    steps.extend(provision(site, to, true));
    steps.extend(after_provision(from, bake));
    steps.push(step(
        "restore",
        format!(
            "traffic.restore: {}, then the site recorded in service{}",
            hook(site, traffic.map(|t| t.restore.as_str())),
            from.map(|g| format!("; generation {g} is retired"))
                .unwrap_or_default()
        ),
    ));
    steps
}

/// A blue-green replace of `site` onto the roles `next` (from
/// `fleet::roles::blue_green`): built on the spares while `from` serves.
pub fn blue_green(
    fleet: &Fleet,
    site: &Site,
    next: &BTreeMap<String, Role>,
    from: Option<u64>,
    to: u64,
    bake: Duration,
) -> Vec<Step> {
    let mut building = site.clone();
    crate::fleet::roles::apply(&mut building, next);
    let traffic = fleet.traffic.as_ref();
    let mut steps = vec![step(
        "assign",
        "record the new roles and wait until the boot server renders them",
    )];
    steps.extend(provision(&building, to, false));
    steps.extend(after_provision(from, bake));
    steps.push(step(
        "switch",
        format!(
            "traffic.drain {}, record generation {to} with its roles, traffic.restore {}",
            hook(site, traffic.map(|t| t.drain.as_str())),
            hook(site, traffic.map(|t| t.restore.as_str()))
        ),
    ));
    steps.push(step(
        "retire",
        format!(
            "power off {}: the new spares",
            names(&crate::provision::machines(site))
        ),
    ));
    steps
}

/// What follows the provision in both kinds of replace.
fn after_provision(from: Option<u64>, bake: Duration) -> Vec<Step> {
    vec![
        step(
            "health",
            "every etcd member healthy over TLS with the new CA",
        ),
        step(
            "bake",
            format!(
                "{} s with health green{}",
                bake.as_secs(),
                from.map(|g| format!(" (generation {g} keeps its PKI in the state)"))
                    .unwrap_or_default()
            ),
        ),
    ]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn example() -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in crate::example::FILES {
            let target = dir.path().join(path);
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            std::fs::write(&target, text).unwrap();
        }
        crate::fleet::load(dir.path()).unwrap()
    }

    #[test]
    fn an_in_place_replace_has_the_journal_steps_in_order() {
        let fleet = example();
        let site = fleet.site("fra").unwrap();
        let steps: Vec<&str> = replace(&fleet, site, Some(1), 2, Duration::from_secs(600))
            .iter()
            .map(|s| s.step)
            .collect();
        assert_eq!(
            steps,
            [
                "drain",
                "power off",
                "power on",
                "boot",
                "pki",
                "upload",
                "start etcd",
                "control plane",
                "workers",
                "record",
                "health",
                "bake",
                "restore"
            ]
        );
    }
}
