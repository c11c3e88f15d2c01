//! A lockdown's [`Report`] as people read it: each step with its time and,
//! when it failed, why; each machine's steps; the checks that failed at
//! the start; where the evidence is; and how to release the machines.

use std::fmt::Write as _;

use super::{Report, NOT_RUN};

impl Report {
    /// The report's text; `next` is where a replacement cluster should run
    /// (the command for it), when the operator asked.
    pub fn text(&self, next: Option<&str>) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = self.write_text(&mut out, next);
        out
    }

    fn write_text(&self, out: &mut String, next: Option<&str>) -> std::fmt::Result {
        let generation = self.generation.map_or("none".into(), |g| g.to_string());
        writeln!(
            out,
            "lockdown of {} (site {}, generation {generation}), case {}",
            self.cluster, self.site, self.case
        )?;
        for s in &self.steps {
            let status = if s.ok { "ok" } else { "FAILED" };
            let secs = s.duration_ms as f64 / 1000.0;
            writeln!(out, "  {:<11} {status:<7} {secs:>7.1} s", s.name)?;
            if let (false, Some(d)) = (s.ok, &s.detail) {
                for line in d.lines() {
                    writeln!(out, "      {line}")?;
                }
            }
        }
        for m in &self.machines {
            writeln!(
                out,
                "  {:<14} isolate {:<3} evidence {} file(s), {:<3} seal {:<3} verify {}",
                m.machine,
                short(&m.isolate),
                m.evidence_files,
                short(&m.evidence),
                short(&m.seal),
                m.verify
            )?;
        }
        if !self.failing_checks.is_empty() {
            writeln!(
                out,
                "safety checks failing at the start (recorded, not blocking):"
            )?;
            for f in &self.failing_checks {
                writeln!(out, "  {f}")?;
            }
        }
        writeln!(out, "evidence: {}", self.evidence_dir.display())?;
        if let Some(sha) = &self.manifest_sha256 {
            writeln!(out, "  MANIFEST.sha256: sha256 {sha}")?;
        }
        if let Some(n) = next {
            writeln!(out, "replacement: {n}")?;
        }
        if self.ok {
            writeln!(
                out,
                "{} is locked down: only the bastion reaches its nodes; machines quarantined \
                 until `metalherd release machine M --reason \"…\"`",
                self.cluster
            )?;
        }
        Ok(())
    }
}

/// A machine's step status in a column: `ok`, `-` (not run) or `FAILED`.
fn short(status: &str) -> &str {
    if status == "ok" {
        "ok"
    } else if status.starts_with(NOT_RUN) {
        "-"
    } else {
        "FAILED"
    }
}
