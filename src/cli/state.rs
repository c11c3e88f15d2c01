//! `metalherd state show|history|locks|unlock|keygen`: what the state
//! store holds, who holds which lock, and breaking a lock on purpose.
//! (`state demo` is a hidden journaled operation the crash tests kill.)

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::json;

use super::context::runtime;
use super::print::{print, print_ok};
use super::{load_fleet, Cli};
use crate::state::summary::{summary, Locks};
use crate::state::{self, journal};

#[derive(Subcommand, Debug)]
pub enum StateCommand {
    /// Each site's generation, each machine's lifecycle state, the locks.
    Show {
        /// Only this site.
        #[arg(long, value_name = "SITE")]
        site: Option<String>,
    },
    /// The journal of operations, newest first, with their steps.
    History {
        #[arg(long, default_value_t = 20, value_name = "N")]
        limit: usize,
    },
    /// Who holds which lock, since when, and whether the holder is gone.
    Locks,
    /// Break a lock (recorded in the audit log with the reason).
    Unlock(UnlockArgs),
    /// Print a new age identity for `state.encryption_key`, or with `--out`
    /// write it to a new 0600 file.
    Keygen {
        /// Write the identity to FILE (created 0600, in a 0700 directory if
        /// that is new; never overwritten) instead of printing it.
        #[arg(long, value_name = "FILE")]
        out: Option<std::path::PathBuf>,
    },
    /// Copy the local state into etcd, verify every object, then switch
    /// fleet.yaml's `state` section to etcd.
    Migrate(MigrateArgs),
    /// A journaled operation of N steps holding the lock `sites/<target>`,
    /// for crash tests.
    #[command(hide = true)]
    Demo(DemoArgs),
}

#[derive(Args, Debug)]
pub struct UnlockArgs {
    /// The lock's name, as `state locks` shows it (`sites/fra`).
    lock: String,
    /// Required: breaking a lock someone may still hold is a decision.
    #[arg(long, required = true)]
    force: bool,
    /// Why; recorded in the audit log.
    #[arg(long, required = true, value_name = "TEXT")]
    reason: String,
}

#[derive(Args, Debug)]
pub struct MigrateArgs {
    /// The backend to move to.
    #[arg(long, value_parser = ["etcd"])]
    to: String,
    /// The etcd endpoints, comma-separated.
    #[arg(long, required = true, value_delimiter = ',', value_name = "URL,URL")]
    endpoints: Vec<url::Url>,
    /// Client TLS for etcd (paths relative to the fleet, as fleet.yaml keeps them).
    #[arg(long, value_name = "FILE")]
    ca_file: Option<std::path::PathBuf>,
    #[arg(long, value_name = "FILE")]
    cert_file: Option<std::path::PathBuf>,
    #[arg(long, value_name = "FILE")]
    key_file: Option<std::path::PathBuf>,
    /// Seconds a crashed holder's lock outlives it.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    lock_ttl: u64,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    target: String,
    #[arg(long, default_value_t = 5)]
    steps: u32,
    #[arg(long, default_value_t = 200, value_name = "MS")]
    step_ms: u64,
    /// Each step appends its name to this file when it runs.
    #[arg(long, value_name = "FILE")]
    marker: std::path::PathBuf,
}

pub fn run(cli: &Cli, cmd: &StateCommand) -> anyhow::Result<()> {
    if let StateCommand::Keygen { out } = cmd {
        let Some(path) = out else {
            // Data to stdout: the caller redirects it into a 0600 file.
            let (secret, public) = state::crypt::Sealer::generate_identity();
            print!("# public key: {public}\n{}\n", secret.as_str());
            return Ok(());
        };
        let public = state::crypt::write_identity(path)?;
        let text = format!(
            "wrote {} (0600); public key {public}; set `state.encryption_key: file:{}`",
            path.display(),
            path.display()
        );
        let doc = json!({ "ok": true, "file": path, "public_key": public });
        return print(cli, doc, text);
    }
    let fleet = load_fleet(cli)?;
    runtime()?.block_on(async {
        let (store, _) = state::open(&fleet)?;
        let store = store.as_ref();
        match cmd {
            StateCommand::Show { site } => {
                if let Some(s) = site.as_deref() {
                    anyhow::ensure!(
                        fleet.site(s).is_some(),
                        "no site `{s}` in fleet {}",
                        fleet.name
                    );
                }
                print_ok(cli, &summary(&fleet, store, site.as_deref()).await?)
            }
            StateCommand::History { limit } => {
                let mut ops = journal::history(store).await?;
                ops.truncate(*limit);
                let text: String = ops.iter().map(ToString::to_string).collect();
                print(cli, json!({ "ok": true, "operations": ops }), text)
            }
            StateCommand::Locks => {
                let locks = store.locks().await?;
                print(cli, json!({ "ok": true, "locks": locks }), Locks(&locks))
            }
            StateCommand::Unlock(args) => unlock(cli, store, args).await,
            StateCommand::Demo(args) => {
                let lock_ttl = state::lock_ttl(&fleet);
                journal::demo(
                    store,
                    &args.target,
                    args.steps,
                    args.step_ms,
                    &args.marker,
                    lock_ttl,
                )
                .await
            }
            StateCommand::Migrate(args) => migrate(cli, &fleet, store, args).await,
            StateCommand::Keygen { .. } => Ok(()),
        }
    })
}

async fn unlock(cli: &Cli, store: &dyn state::StateStore, args: &UnlockArgs) -> anyhow::Result<()> {
    anyhow::ensure!(!args.reason.trim().is_empty(), "--reason must say why");
    let lock = &args.lock;
    let holder = state::unlock(store, lock, &args.reason)
        .await?
        .with_context(|| format!("no lock named {lock} is held"))?;
    let text = format!("broke lock {lock} held by {holder} since {}", holder.since);
    print(
        cli,
        json!({ "ok": true, "lock": lock, "holder": holder }),
        text,
    )
}

async fn migrate(
    cli: &Cli,
    fleet: &crate::fleet::Fleet,
    source: &dyn state::StateStore,
    args: &MigrateArgs,
) -> anyhow::Result<()> {
    let to = state::migrate::EtcdTarget {
        endpoints: args.endpoints.clone(),
        ca_file: args.ca_file.clone(),
        cert_file: args.cert_file.clone(),
        key_file: args.key_file.clone(),
        lock_ttl: args.lock_ttl,
    };
    let (objects, target) = state::migrate::to_etcd(fleet, source, &to).await?;
    let text = format!(
        "copied and verified {objects} objects into {target}; fleet.yaml now uses it (the local copy stays as a backup)"
    );
    let doc = json!({ "ok": true, "objects": objects, "to": target });
    print(cli, doc, text)
}
