//! How results are printed: a command's document (`--output json`) or its
//! text, the end of an operation or a fan-out (the summary and the exit
//! code), progress lines, phases with their times, and a refusal by the
//! blockers.

use std::fmt::Display;

use serde::Serialize;
use serde_json::json;

use super::{print_json, Cli, Exit, Output, Reported};
use crate::bootstrap::Phase;
use crate::fleet::Site;
use crate::lifecycle::{self, Check};
use crate::operation::Outcome;

/// The exit code of an operation refused by a safety check.
pub(crate) const BLOCKED: u8 = 4;

/// Prints a command's result: `doc` with `--output json`, else `text`
/// (whole lines; a last line without its newline gets one; nothing for
/// an empty text).
pub(crate) fn print(cli: &Cli, doc: impl Serialize, text: impl Display) -> anyhow::Result<()> {
    if cli.output == Output::Json {
        return print_json(&serde_json::to_value(doc)?);
    }
    let text = text.to_string();
    if text.is_empty() || text.ends_with('\n') {
        print!("{text}");
    } else {
        println!("{text}");
    }
    Ok(())
}

/// Prints a report: as its document with `"ok": true` added
/// (`--output json`), else as its text.
pub(crate) fn print_ok<R: Serialize + Display>(cli: &Cli, report: &R) -> anyhow::Result<()> {
    let mut doc = serde_json::to_value(report)?;
    doc["ok"] = json!(true);
    print(cli, doc, report)
}

/// The end of an operation whose report (its `phases`) is printed: `done`
/// (text), or the error in full on stderr (unless a phase printed it
/// already) and a failure `failed: <its first line>`.
pub(crate) fn finish(
    cli: &Cli,
    error: Option<&str>,
    phases: &[Phase],
    done: impl Display,
    failed: impl Display,
) -> anyhow::Result<()> {
    let text = cli.output == Output::Text;
    match error {
        None => {
            if text {
                println!("{done}");
            }
            Ok(())
        }
        Some(e) => {
            let shown = phases.iter().flat_map(|p| &p.notes).any(|n| n.contains(e));
            if text && !shown {
                eprintln!("{e}");
            }
            let first = e.lines().next().unwrap_or("");
            Err(Reported(format!("{failed}: {first}")).into())
        }
    }
}

/// The end of a fan-out whose results are printed: a failure `k of N
/// <what> failed: a, b` when any of the `total` failed.
pub(crate) fn failures(what: &str, total: usize, failed: &[&str]) -> anyhow::Result<()> {
    if failed.is_empty() {
        return Ok(());
    }
    let (k, names) = (failed.len(), failed.join(", "));
    Err(Reported(format!("{k} of {total} {what} failed: {names}")).into())
}

/// Progress lines of a long command on stderr, `<what>: <line>`; none
/// with `--output json` or `--quiet`.
pub(crate) fn progress<'a>(cli: &Cli, what: &'a str) -> impl Fn(&str) + 'a {
    let quiet = cli.output == Output::Json || cli.quiet;
    move |line| {
        if !quiet {
            eprintln!("{what}: {line}");
        }
    }
}

/// The phases of a report, one line each with its duration and notes.
pub(crate) struct Phases<'a>(pub &'a [Phase]);

impl Display for Phases<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for p in self.0 {
            let status = if p.ok { "ok" } else { "FAILED" };
            let secs = p.duration_ms as f64 / 1000.0;
            writeln!(f, "{:<16} {status:<7} {secs:>8.1} s", p.name)?;
            for n in &p.notes {
                writeln!(f, "    {n}")?;
            }
        }
        Ok(())
    }
}

/// The report of an operation that ran; one refused by its safety checks
/// is said so (see [`refused`]).
pub(crate) fn ran<R>(cli: &Cli, what: &str, site: &Site, outcome: Outcome<R>) -> anyhow::Result<R> {
    match outcome {
        Outcome::Refused(checks) => Err(refused(cli, what, site.name.as_str(), &checks)),
        Outcome::Ran(report) => Ok(report),
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
