//! `metalherd state show|history|locks|unlock|keygen`: what the state
//! store holds, who holds which lock, and breaking a lock on purpose.
//! (`state demo` is a hidden journaled operation the crash tests kill.)

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::json;

use super::context::runtime;
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
        let (secret, public) = state::crypt::Sealer::generate_identity();
        let text = format!("# public key: {public}\n{}\n", secret.as_str());
        let Some(path) = out else {
            // Data to stdout: the caller redirects it into a 0600 file.
            print!("{text}");
            return Ok(());
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                crate::fsutil::create_dir_with_mode(dir, 0o700)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
        }
        crate::fsutil::create_file(path, text.as_bytes(), 0o600).with_context(|| {
            format!(
                "writing {} (an existing key is never overwritten)",
                path.display()
            )
        })?;
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
            StateCommand::Locks => locks(cli, store).await,
            StateCommand::Unlock(args) => unlock(cli, store, args).await,
            StateCommand::Demo(args) => demo(&fleet, store, args).await,
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
            &crate::state::Key::site(&args.target),
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

/// Whether the object `key` holds private key material (sealed in etcd).
fn is_secret(key: &str) -> bool {
    key.ends_with(".key")
        || key.ends_with(".conf")
        || key.ends_with("_key")
        || key == "ssh/id_ed25519"
}

async fn migrate(
    cli: &Cli,
    fleet: &crate::fleet::Fleet,
    source: &dyn state::StateStore,
    args: &MigrateArgs,
) -> anyhow::Result<()> {
    use crate::fleet::StateBackend;
    use crate::state::{Expect, StateStore};
    anyhow::ensure!(
        matches!(fleet.state.backend, StateBackend::Local { .. }),
        "the state is already in {}",
        source.describe()
    );
    let reference = fleet.state.encryption_key.as_ref().context(
        "set state.encryption_key in fleet.yaml first (`metalherd state keygen`): secrets in etcd are sealed",
    )?;
    let sealer = state::crypt::Sealer::from_ref(reference, &fleet.root)?;
    let read = |p: &Option<std::path::PathBuf>, what: &str| -> anyhow::Result<Option<String>> {
        p.as_ref()
            .map(|p| {
                std::fs::read_to_string(fleet.root.join(p))
                    .with_context(|| format!("reading {what} {}", p.display()))
            })
            .transpose()
    };
    let tls = match (
        read(&args.ca_file, "--ca-file")?,
        read(&args.cert_file, "--cert-file")?,
        read(&args.key_file, "--key-file")?,
    ) {
        (Some(ca_pem), Some(cert_pem), Some(key)) => Some(state::etcd::EtcdTls {
            ca_pem,
            cert_pem,
            key_pem: zeroize::Zeroizing::new(key),
        }),
        (None, None, None) => None,
        _ => anyhow::bail!("--ca-file, --cert-file and --key-file go together"),
    };
    let target = state::etcd::EtcdStore::new(
        args.endpoints.clone(),
        tls,
        &format!("/metalherd/{}/", fleet.name),
        Duration::from_secs(args.lock_ttl),
    )?;
    // Nobody may change the local state while it is copied.
    let holder = Holder::current("state migrate --to etcd");
    let lock = source
        .lock("state/migrate", &holder, Duration::from_secs(args.lock_ttl))
        .await?;
    for busy in source.locks().await? {
        anyhow::ensure!(
            busy.name == "state/migrate",
            "{} is locked by {} since {}: migrate when no operation runs",
            busy.name,
            busy.holder,
            busy.holder.since
        );
    }
    let objects = source.list("").await?;
    for e in &objects {
        let value = if is_secret(&e.key) && !state::crypt::is_sealed(&e.value) {
            sealer.seal(&e.key, &e.value)?
        } else {
            e.value.clone()
        };
        target.put(&e.key, &value, Expect::Any).await?;
    }
    // Verify: every object reads back from etcd with the same contents.
    for e in &objects {
        let copied = target
            .get(&e.key)
            .await?
            .with_context(|| format!("{} is missing in etcd after the copy", e.key))?;
        anyhow::ensure!(
            *sealer.open(&e.key, &copied.value)? == *sealer.open(&e.key, &e.value)?,
            "{} differs in etcd after the copy",
            e.key
        );
    }
    switch_fleet_yaml(fleet, args)?;
    lock.release().await?;
    state::audit(
        &target,
        "state migrate",
        json!({ "from": source.describe(), "to": target.describe(), "objects": objects.len() }),
    )
    .await?;
    if cli.output == Output::Json {
        return print_json(
            &json!({ "ok": true, "objects": objects.len(), "to": target.describe() }),
        );
    }
    println!(
        "copied and verified {} objects into {}; fleet.yaml now uses it (the local copy stays as a backup)",
        objects.len(),
        target.describe()
    );
    Ok(())
}

/// Replaces the `state:` section of inventory/fleet.yaml (up to the next
/// top-level key) with the etcd settings, keeping the encryption key.
fn switch_fleet_yaml(fleet: &crate::fleet::Fleet, args: &MigrateArgs) -> anyhow::Result<()> {
    let path = fleet.root.join("inventory/fleet.yaml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let start = text
        .find("\nstate:")
        .map(|i| i + 1)
        .or_else(|| text.starts_with("state:").then_some(0))
        .with_context(|| format!("{}: no top-level state: section", path.display()))?;
    // The section ends at the next line that starts a top-level key.
    let body = text[start..]
        .find('\n')
        .map_or(text.len(), |i| start + i + 1);
    let mut end = text.len();
    let mut offset = body;
    for line in text[body..].split_inclusive('\n') {
        if !line.starts_with([' ', '\t', '#', '\n']) {
            end = offset;
            break;
        }
        offset += line.len();
    }
    let mut section = String::from("state:\n  backend: etcd\n  endpoints:\n");
    for e in &args.endpoints {
        section.push_str(&format!("    - \"{e}\"\n"));
    }
    for (name, value) in [
        ("ca_file", &args.ca_file),
        ("cert_file", &args.cert_file),
        ("key_file", &args.key_file),
    ] {
        if let Some(v) = value {
            section.push_str(&format!("  {name}: \"{}\"\n", v.display()));
        }
    }
    if let Some(k) = &fleet.state.encryption_key {
        section.push_str(&format!("  encryption_key: \"{k}\"\n"));
    }
    section.push_str(&format!("  lock_ttl: {}\n", args.lock_ttl));
    let new = format!("{}{section}{}", &text[..start], &text[end..]);
    crate::fsutil::write_atomic(&path, new.as_bytes(), 0o644)
        .with_context(|| format!("writing {}", path.display()))?;
    // The new file must load; if not, put the old one back.
    if let Err(e) = crate::fleet::load(&fleet.root) {
        let _ = crate::fsutil::write_atomic(&path, text.as_bytes(), 0o644);
        anyhow::bail!("the switched fleet.yaml does not load ({e}); left it as it was");
    }
    Ok(())
}
