//! How the operations' results are printed: phases with their times, the
//! safety checks, and a refusal by the blockers.

use serde_json::json;

use super::{print_json, Cli, Exit, Output};
use crate::bootstrap::Phase;
use crate::lifecycle::{self, Check};

/// The exit code of an operation refused by a safety check.
pub(crate) const BLOCKED: u8 = 4;

/// The phases of a report, one line each with its duration and notes.
pub(crate) fn print_phases(phases: &[Phase]) {
    for p in phases {
        let status = if p.ok { "ok" } else { "FAILED" };
        println!(
            "{:<16} {status:<7} {:>8.1} s",
            p.name,
            p.duration_ms as f64 / 1000.0
        );
        for n in &p.notes {
            println!("    {n}");
        }
    }
}

/// The safety checks, one line each.
pub(crate) fn print_checks(checks: &[Check]) {
    for c in checks {
        println!(
            "  {:<12} {:<8} {}",
            c.name,
            if c.ok { "ok" } else { "BLOCKED" },
            c.detail
        );
    }
}

/// Says that `what` (`replace of fra`) was refused by `checks`, and how to
/// override it; the error carries exit code [`BLOCKED`].
pub(crate) fn refused(cli: &Cli, what: &str, site: &str, checks: &[Check]) -> anyhow::Error {
    let failing = lifecycle::failing(checks);
    if cli.output == Output::Json {
        let printed = print_json(&json!({
            "ok": false, "blocked": true, "site": site, "checks": checks,
            "error": format!("{what} refused by: {}", failing.join("; ")),
        }));
        if let Err(e) = printed {
            return e;
        }
    } else {
        eprintln!("{what} refused; blockers:");
        for f in failing {
            eprintln!("  {f}");
        }
        eprintln!("override with --force --reason \"...\" (recorded in the journal and audit log)");
    }
    Exit(BLOCKED).into()
}

/// The locks held, one line each, stale ones said so.
pub(crate) fn print_locks(locks: &[crate::state::LockInfo]) {
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
