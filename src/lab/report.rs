//! What the lab's commands report, as people read it (`--output json` is
//! the reports' serialisation), and `lab image`'s whole job: the node
//! image, then the extension images built from the packages it recorded.

use std::fmt;
use std::path::Path;

use serde::Serialize;

use super::extensions::{self, BuiltExtension};
use super::image::{self, BuildOptions, ImageReport};
use super::{DownReport, Status, UpReport};
use crate::fleet::Fleet;

/// `lab image`: the node image of `version`, and its extensions.
#[derive(Debug, Serialize)]
pub struct LabImage {
    #[serde(skip)]
    pub version: String,
    #[serde(flatten)]
    pub image: ImageReport,
    pub extensions: Vec<BuiltExtension>,
}

/// Builds (or finds cached) the lab fleet's node image in `assets`, then
/// builds the fleet's extensions from the packages the image recorded and
/// pins them in assets.lock. `mirror` and `force` as [`BuildOptions`].
pub fn build_image(
    fleet: &Fleet,
    assets: &Path,
    mirror: Option<String>,
    force: bool,
    progress: &dyn Fn(&str),
) -> anyhow::Result<LabImage> {
    super::ensure_lab_fleet(fleet)?;
    let opts = BuildOptions {
        mirror,
        force,
        debs: extensions::debian_packages(fleet),
    };
    let image = image::build(assets, &fleet.os.version, &opts, progress)?;
    let recorded = image::recorded_debs(&image.dir)?;
    let extensions = extensions::build_and_lock(fleet, &image.dir, assets, &recorded)?;
    Ok(LabImage {
        version: fleet.os.version.clone(),
        image,
        extensions,
    })
}

impl fmt::Display for LabImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (r, version) = (&self.image, &self.version);
        if r.cached {
            let input = &r.input_hash[..12.min(r.input_hash.len())];
            let dir = r.dir.display();
            writeln!(f, "lab image {version} is cached in {dir} (input {input})")?;
        } else {
            writeln!(
                f,
                "built lab image {version} in {:.0} s: kernel {:.1} MB, initrd {:.1} MB, in {}",
                r.build_seconds,
                r.kernel_bytes as f64 / 1e6,
                r.initrd_bytes as f64 / 1e6,
                r.dir.display()
            )?;
        }
        for e in &self.extensions {
            writeln!(
                f,
                "extension {} {}: {} ({} bytes, sha512 {}…) from {}, {} assets.lock",
                e.name,
                e.version,
                e.image.display(),
                e.size,
                &e.sha512[..16.min(e.sha512.len())],
                e.deb,
                if e.cached { "matches" } else { "recorded in" }
            )?;
        }
        Ok(())
    }
}

impl UpReport {
    /// `lab up`'s text: what runs, where the consoles log, what next.
    pub fn text(&self, fleet: &Fleet) -> String {
        let r = &self.record;
        let vms = r
            .processes
            .iter()
            .filter(|p| p.role.starts_with("vm "))
            .count();
        format!(
            "lab {} is up in {:.1} s: sites {}, {vms} VMs (powered off, {}), consoles in {}\n\
             next: metalherd --fleet {} provision site {}\n",
            r.name,
            self.took_ms as f64 / 1000.0,
            r.sites.join(", "),
            r.accel,
            super::dir(fleet).join("logs").display(),
            super::absolute_root(fleet).display(),
            r.sites.first().map_or("SITE", |s| s.as_str())
        )
    }
}

impl fmt::Display for DownReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "lab {} is down: stopped {} processes; namespace {}",
            self.name.as_deref().unwrap_or("?"),
            self.stopped.len(),
            if self.namespace_deleted {
                "deleted"
            } else {
                "STILL PRESENT"
            }
        )?;
        for s in &self.stopped {
            writeln!(f, "    {s}")?;
        }
        Ok(())
    }
}

impl Status {
    /// `lab status`'s text for the fleet named `fleet`.
    pub fn text(&self, fleet: &str) -> String {
        let Some(name) = &self.name else {
            let mut out = format!("no lab is up for fleet {fleet}\n");
            for other in &self.other_labs {
                out.push_str(&format!(
                    "lab {} is up for fleet {} at {}: point the command at it with `--fleet {}`\n",
                    other.name,
                    other.fleet,
                    other.root.display(),
                    other.root.display()
                ));
            }
            return out;
        };
        let mut out = format!(
            "lab {name}: {} (namespace {}, {})\n",
            if self.up { "up" } else { "DEGRADED" },
            if self.namespace { "present" } else { "missing" },
            self.accel.as_deref().unwrap_or("?")
        );
        for p in &self.processes {
            let running = if p.running { "running" } else { "GONE" };
            let vm =
                p.vm.as_deref()
                    .map(|v| format!(" (vm {v})"))
                    .unwrap_or_default();
            out.push_str(&format!(
                "    {:<24} pid {:<8} {running}{vm}\n",
                p.role, p.pid
            ));
        }
        out
    }
}
