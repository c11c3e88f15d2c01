//! `metalherd state show|history|locks|unlock|keygen`: what the state
//! store holds, who holds which lock, and breaking a lock on purpose.
//! (`state demo` is a hidden journaled operation the crash tests kill.)

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::json;

use super::context::runtime;
use super::print::print_locks;
use super::{load_fleet, print_json, Cli, Output};
use crate::state::journal;
use crate::state::{self, MachineRecord, SiteRecord};

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
        if cli.output == Output::Json {
            return print_json(&json!({ "ok": true, "file": path, "public_key": public }));
        }
        println!(
            "wrote {} (0600); public key {public}; set `state.encryption_key: file:{}`",
            path.display(),
            path.display()
        );
        return Ok(());
    }
    let fleet = load_fleet(cli)?;
    runtime()?.block_on(async {
        let (store, _) = state::open(&fleet)?;
        let store = store.as_ref();
        match cmd {
            StateCommand::Show { site } => show(cli, &fleet, store, site.as_deref()).await,
            StateCommand::History { limit } => history(cli, store, *limit).await,
            StateCommand::Locks => {
                let locks = store.locks().await?;
                if cli.output == Output::Json {
                    return print_json(&json!({ "ok": true, "locks": locks }));
                }
                print_locks(&locks);
                Ok(())
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

async fn show(
    cli: &Cli,
    fleet: &crate::fleet::Fleet,
    store: &dyn state::StateStore,
    only: Option<&str>,
) -> anyhow::Result<()> {
    let mut sites = Vec::new();
    for site in &fleet.sites {
        if only.is_some_and(|o| o != site.name.as_str()) {
            continue;
        }
        let record =
            state::get_json::<SiteRecord>(store, &crate::state::Key::site(&site.name)).await?;
        let mut machines = Vec::new();
        let moved = record
            .as_ref()
            .map(|(r, _)| r.roles.clone())
            .unwrap_or_default();
        for m in &site.machines {
            let r = state::get_json::<MachineRecord>(store, &crate::state::Key::machine(&m.name))
                .await?;
            // The role it holds now: the state's after a blue-green replace.
            let role = moved.get(m.name.as_str()).copied().unwrap_or(m.role);
            machines.push(json!({
                "name": m.name, "role": role.as_str(), "inventory_role": m.role.as_str(),
                "state": r.as_ref().map_or(json!("available"), |(r, _)| json!(r.state)),
                "since": r.as_ref().map(|(r, _)| r.since.clone()),
                "generation": r.as_ref().and_then(|(r, _)| r.generation),
            }));
        }
        sites.push(json!({
            "name": site.name,
            "generation": record.as_ref().map(|(r, _)| r.generation),
            "updated": record.as_ref().map(|(r, _)| r.updated.clone()),
            "retired": record.as_ref().map(|(r, _)| r.retired.clone()).unwrap_or_default(),
            "drained": record.as_ref().and_then(|(r, _)| r.drained.clone()),
            "roles": (!moved.is_empty()).then_some(&moved),
            "next_roles": record.as_ref().map(|(r, _)| &r.next_roles).filter(|n| !n.is_empty()),
            "machines": machines,
        }));
    }
    let locks = store.locks().await?;
    if cli.output == Output::Json {
        return print_json(
            &json!({ "ok": true, "store": store.describe(), "sites": sites, "locks": locks }),
        );
    }
    println!("state: {}", store.describe());
    for s in &sites {
        let generation = s["generation"]
            .as_u64()
            .map_or("none".to_string(), |g| g.to_string());
        println!(
            "site {}: generation {generation}{}",
            s["name"].as_str().unwrap_or(""),
            s["drained"]
                .as_str()
                .map(|why| format!(", DRAINED ({why})"))
                .unwrap_or_default()
        );
        for m in s["machines"].as_array().into_iter().flatten() {
            let (role, was) = (m["role"].as_str(), m["inventory_role"].as_str());
            println!(
                "  {:<16} {:<14} {}{}",
                m["name"].as_str().unwrap_or(""),
                role.unwrap_or(""),
                m["state"].as_str().unwrap_or(""),
                if role != was {
                    format!(
                        "  (inventory: {}; moved by a blue-green replace)",
                        was.unwrap_or("")
                    )
                } else {
                    String::new()
                }
            );
        }
    }
    print_locks(&locks);
    Ok(())
}

async fn history(cli: &Cli, store: &dyn state::StateStore, limit: usize) -> anyhow::Result<()> {
    let mut ops = journal::history(store).await?;
    ops.truncate(limit);
    if cli.output == Output::Json {
        return print_json(&json!({ "ok": true, "operations": ops }));
    }
    for op in &ops {
        println!(
            "{} {} {} {:?} ({} run{})",
            op.started,
            op.kind,
            op.target,
            op.status,
            op.runs.len(),
            if op.runs.len() == 1 { "" } else { "s" }
        );
        for s in &op.steps {
            println!(
                "    {:<16} {:<10} {}",
                s.name,
                s.duration_ms.map_or("-".into(), |d| format!("{d} ms")),
                s.outcome.as_deref().unwrap_or("interrupted")
            );
        }
    }
    Ok(())
}

async fn unlock(cli: &Cli, store: &dyn state::StateStore, args: &UnlockArgs) -> anyhow::Result<()> {
    anyhow::ensure!(!args.reason.trim().is_empty(), "--reason must say why");
    let holder = store
        .break_lock(&args.lock)
        .await?
        .with_context(|| format!("no lock named {} is held", args.lock))?;
    state::audit(
        store,
        "state unlock",
        json!({ "lock": args.lock, "holder": holder, "reason": args.reason }),
    )
    .await?;
    if cli.output == Output::Json {
        return print_json(&json!({ "ok": true, "lock": args.lock, "holder": holder }));
    }
    println!(
        "broke lock {} held by {holder} since {}",
        args.lock, holder.since
    );
    Ok(())
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
    if cli.output == Output::Json {
        return print_json(&json!({ "ok": true, "objects": objects, "to": target }));
    }
    println!(
        "copied and verified {objects} objects into {target}; fleet.yaml now uses it (the local copy stays as a backup)"
    );
    Ok(())
}
