//! `metalherd state show|history|locks|unlock|keygen`: what the state
//! store holds, who holds which lock, and breaking a lock on purpose.
//! (`state demo` is a hidden journaled operation the crash tests kill.)

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::json;

use super::ssh::runtime;
use super::{load_fleet, print_json, Cli, Output};
use crate::state::journal::{self, Journal};
use crate::state::{self, Holder, MachineRecord, SiteRecord};

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
    /// Print a new age identity for `state.encryption_key`.
    Keygen,
    /// A journaled operation of N steps, for crash tests.
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
    if let StateCommand::Keygen = cmd {
        let (secret, public) = state::crypt::Sealer::generate_identity();
        // Data to stdout: the caller redirects it into a 0600 file.
        println!("# public key: {public}\n{}", secret.as_str());
        return Ok(());
    }
    let fleet = load_fleet(cli)?;
    runtime()?.block_on(async {
        let (store, _) = state::open(&fleet)?;
        let store = store.as_ref();
        match cmd {
            StateCommand::Show { site } => show(cli, &fleet, store, site.as_deref()).await,
            StateCommand::History { limit } => history(cli, store, *limit).await,
            StateCommand::Locks => locks(cli, store).await,
            StateCommand::Unlock(args) => unlock(cli, store, args).await,
            StateCommand::Demo(args) => demo(&fleet, store, args).await,
            StateCommand::Keygen => Ok(()),
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
        let record = state::get_json::<SiteRecord>(store, &format!("sites/{}", site.name)).await?;
        let mut machines = Vec::new();
        for m in &site.machines {
            let r =
                state::get_json::<MachineRecord>(store, &format!("machines/{}", m.name)).await?;
            machines.push(json!({
                "name": m.name, "role": m.role.as_str(),
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
            "site {}: generation {generation}",
            s["name"].as_str().unwrap_or("")
        );
        for m in s["machines"].as_array().into_iter().flatten() {
            println!(
                "  {:<16} {:<14} {}",
                m["name"].as_str().unwrap_or(""),
                m["role"].as_str().unwrap_or(""),
                m["state"].as_str().unwrap_or("")
            );
        }
    }
    print_locks(&locks);
    Ok(())
}

fn print_locks(locks: &[state::LockInfo]) {
    if locks.is_empty() {
        println!("no locks held");
    }
    for l in locks {
        println!(
            "lock {}: held by {} since {}{}",
            l.name,
            l.holder,
            l.holder.since,
            if l.stale {
                " (STALE: the process is gone)"
            } else {
                ""
            }
        );
    }
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

async fn locks(cli: &Cli, store: &dyn state::StateStore) -> anyhow::Result<()> {
    let locks = store.locks().await?;
    if cli.output == Output::Json {
        return print_json(&json!({ "ok": true, "locks": locks }));
    }
    print_locks(&locks);
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

async fn demo(
    fleet: &crate::fleet::Fleet,
    store: &dyn state::StateStore,
    args: &DemoArgs,
) -> anyhow::Result<()> {
    let holder = Holder::current(&format!("demo {}", args.target));
    let lock = store
        .lock(
            &format!("demo/{}", args.target),
            &holder,
            state::lock_ttl(fleet),
        )
        .await?;
    let mut journal = Journal::begin(store, "demo", &args.target, &holder).await?;
    for i in 1..=args.steps {
        let name = format!("step-{i}");
        journal
            .step(&name, || async {
                tokio::time::sleep(Duration::from_millis(args.step_ms)).await;
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&args.marker)?;
                writeln!(f, "{name}")?;
                f.sync_all()?;
                anyhow::Ok(())
            })
            .await?;
    }
    journal.finish(None).await?;
    lock.release().await?;
    Ok(())
}
