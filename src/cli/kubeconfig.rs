//! `metalherd kubeconfig --site S`: an admin kubeconfig for the site's
//! current generation (see `crate::kubeconfig`). Without `--out` the
//! kubeconfig is the data and goes to stdout; the serial and expiry go to
//! stderr.

use std::path::PathBuf;

use clap::Args;
use secrecy::ExposeSecret;
use serde_json::json;

use super::context::runtime;
use super::context::site;
use super::{load_fleet, print_json, Cli, Output};
use crate::fleet::window::parse_duration;
use crate::fleet::SiteName;
use crate::kubeconfig::{self, Options};
use crate::state;

#[derive(Args, Debug)]
pub struct KubeconfigArgs {
    /// The site whose cluster the kubeconfig is for.
    #[arg(long, value_name = "SITE")]
    site: SiteName,
    /// How long the client certificate is valid (`30m`, `8h`, `1d`; at
    /// most 7 days).
    #[arg(long, default_value = "8h", value_name = "DURATION")]
    ttl: String,
    /// The generation expected [default: the site's current one]; any
    /// other, retired or compromised one is refused.
    #[arg(long, value_name = "N")]
    generation: Option<u64>,
    /// Write the kubeconfig to FILE (0600, atomically) instead of stdout.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Replace FILE if it exists.
    #[arg(long, requires = "out")]
    force: bool,
}

pub fn run(cli: &Cli, args: &KubeconfigArgs) -> anyhow::Result<()> {
    let fleet = load_fleet(cli)?;
    let site = site(&fleet, &args.site)?;
    let opts = Options {
        generation: args.generation,
        ttl: parse_duration(&args.ttl)?,
        out: args.out.clone(),
        force: args.force,
    };
    let issued = runtime()?.block_on(async {
        let (store, sealer) = state::open(&fleet)?;
        anyhow::Ok(kubeconfig::issue_admin(store.as_ref(), &sealer, site, &opts).await?)
    })?;
    if cli.output == Output::Json {
        let mut doc = json!({
            "ok": true, "site": issued.site, "generation": issued.generation,
            "serial": issued.serial, "subject": issued.subject, "expiry": issued.expires(),
        });
        match &issued.path {
            Some(path) => doc["path"] = json!(path),
            None => doc["kubeconfig"] = json!(issued.kubeconfig.expose_secret()),
        }
        return print_json(&doc);
    }
    let what = issued.describe();
    match &issued.path {
        Some(path) => println!("wrote {} (0600): {what}", path.display()),
        None => {
            print!("{}", issued.kubeconfig.expose_secret());
            eprintln!("{what}");
        }
    }
    Ok(())
}
