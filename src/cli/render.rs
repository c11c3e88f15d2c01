//! `metalherd render`: write every machine's Ignition and iPXE and every
//! site's dnsmasq config into a directory. Everything is rendered in
//! memory first, so a template error writes nothing.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use serde_json::json;

use super::context;
use super::print::print;
use super::{load_fleet, Cli};
use crate::fleet::{MachineName, SiteName};
use crate::keys;
use crate::render::{self, Selection};

#[derive(Args, Debug)]
pub struct RenderArgs {
    /// Only this site.
    #[arg(long, value_name = "SITE")]
    site: Option<SiteName>,
    /// Only this machine.
    #[arg(long, value_name = "MACHINE")]
    machine: Option<MachineName>,
    /// The cluster generation to render for.
    #[arg(long, default_value_t = 1, value_name = "N")]
    generation: u64,
    /// Where to write: DIR/<site>/<machine>.ign (served at PXE boot),
    /// <machine>.final.ign (the installed system's config, when the
    /// machine installs to disk), <machine>.ipxe and DIR/<site>/dnsmasq.conf.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

pub fn run(cli: &Cli, args: &RenderArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let fleet = load_fleet(cli)?;
    if let Some(site) = &args.site {
        context::site(&fleet, site)?;
    }
    if let Some(machine) = &args.machine {
        let (site, _) = context::machine(&fleet, machine)?;
        if let Some(only) = args.site.as_ref().filter(|s| **s != site.name) {
            let site = &site.name;
            anyhow::bail!("machine `{machine}` belongs to site `{site}`, not `{only}`");
        }
    }
    tracing::debug!("loaded fleet {} in {:.2?}", fleet.name, started.elapsed());
    let state_dir = fleet.state_dir();
    let (keys, created) = keys::ensure_state(&fleet)
        .with_context(|| format!("preparing SSH keys in {}", state_dir.display()))?;
    if created > 0 {
        tracing::info!("generated {created} SSH key(s) in {}", state_dir.display());
    }
    tracing::debug!("SSH keys ready after {:.2?}", started.elapsed());
    let selection = Selection {
        site: args.site.clone(),
        machine: args.machine.clone(),
    };
    let rendered = render::render(&fleet, &keys, &selection, args.generation)?;
    let unpinned = render::unpinned(&fleet);
    for warning in &unpinned {
        tracing::warn!("{warning}");
    }
    tracing::debug!("rendered after {:.2?}", started.elapsed());
    let written = rendered
        .write_to(&args.out)
        .with_context(|| format!("writing rendered files to {}", args.out.display()))?;
    let elapsed = started.elapsed();
    let text = format!(
        "rendered {} machine(s) of {} site(s) into {}: {} files in {:.2?}",
        rendered.machines.len(),
        rendered.sites.len(),
        args.out.display(),
        written.len(),
        elapsed
    );
    let doc = json!({
        "ok": true,
        "out": args.out,
        "generation": args.generation,
        "machines": rendered.machines,
        "files": written,
        "unpinned_extensions": unpinned,
        "elapsed_ms": elapsed.as_millis(),
    });
    print(cli, doc, text)
}
