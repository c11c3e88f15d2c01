//! What `power` reports of a fan-out: each machine's outcome on a line,
//! then `6 of 6 done` or which machines failed.

use std::fmt;

use serde::Serialize;

use super::{Action, Outcome};

/// The outcomes of one action on many machines.
#[derive(Debug, Serialize)]
pub struct Report {
    pub ok: bool,
    pub action: Action,
    pub results: Vec<Outcome>,
    /// `6 of 6 done`, or `2 of 6 failed: a, b`.
    pub summary: String,
}

impl Report {
    /// The report of `action` from its `results`.
    pub fn new(action: Action, results: Vec<Outcome>) -> Report {
        let failed: Vec<&str> = results
            .iter()
            .filter(|o| !o.ok)
            .map(|o| o.machine.as_str())
            .collect();
        let (k, n) = (failed.len(), results.len());
        let summary = if failed.is_empty() {
            format!("{n} of {n} done")
        } else {
            format!("{k} of {n} failed: {}", failed.join(", "))
        };
        Report {
            ok: failed.is_empty(),
            action,
            results,
            summary,
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for o in &self.results {
            let m = &o.machine;
            match (&o.state, &o.error) {
                (_, Some(e)) => writeln!(f, "{m:<16} FAILED  {e}")?,
                (Some(s), None) => writeln!(f, "{m:<16} {s:<7} ({} ms)", o.duration_ms)?,
                (None, None) => writeln!(f, "{m:<16} done")?,
            }
        }
        writeln!(f, "{}", self.summary)
    }
}
