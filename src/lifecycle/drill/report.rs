//! The report of a disaster drill (`metalherd drill site S`): every step
//! with when it started, how long it took and what it found, the recovery
//! time, written as Markdown (for people), JSON (for scripts) and an SVG
//! timeline (for the post-mortem), all from the same [`DrillReport`].

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// One step of a drill, timed from the drill's start.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    pub name: String,
    /// Milliseconds from the drill's start to this step's start.
    pub start_ms: u128,
    pub duration_ms: u128,
    pub ok: bool,
    pub detail: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct DrillReport {
    pub site: String,
    /// `power-off` or `isolate`.
    pub mode: String,
    pub started: String,
    pub finished: String,
    /// Whether the drill proved what it set out to: the site went away, the
    /// other sites stayed healthy with the capacity to carry the load, and
    /// (with `--rebuild`) the site came back.
    pub ok: bool,
    pub rebuild: bool,
    /// From taking the site down to traffic restored on its new generation;
    /// `None` without `--rebuild` or when the rebuild failed.
    pub recovery_ms: Option<u128>,
    pub generation_before: Option<u64>,
    pub generation_after: Option<u64>,
    /// Overridden safety checks (`--force --reason`), and the reason.
    pub overridden: Vec<String>,
    pub reason: Option<String>,
    pub steps: Vec<Step>,
    /// Workers the rebuild set aside (each named in `error` too); the
    /// same drill again resumes and finishes them.
    pub set_aside: Vec<crate::bootstrap::SetAside>,
    pub error: Option<String>,
}

impl DrillReport {
    /// `drill-<site>-<UTC timestamp>`, the stem of the report's files.
    pub fn stem(&self) -> String {
        let compact: String = self
            .started
            .chars()
            .take(19)
            .filter(|c| c.is_ascii_alphanumeric())
            .collect();
        format!("drill-{}-{}Z", self.site, compact)
    }

    /// The drill on the terminal: each step, the recovery time (or how to
    /// bring the site back), and where the report `files` are.
    pub fn text(&self, files: &[PathBuf]) -> String {
        let mut out = String::new();
        for (i, s) in self.steps.iter().enumerate() {
            let status = if s.ok { "ok" } else { "FAILED" };
            let secs = s.duration_ms as f64 / 1000.0;
            let (n, name, detail) = (i + 1, &s.name, &s.detail);
            let _ = writeln!(
                out,
                "{n:>2}. {name:<22} {secs:>8.1} s  {status:<6} {detail}"
            );
        }
        match self.recovery_ms {
            Some(ms) => {
                let _ = writeln!(out, "recovery time: {:.0} s", ms as f64 / 1000.0);
            }
            None if self.ok && !self.rebuild => {
                let _ = writeln!(
                    out,
                    "site {0} stays down and drained; `metalherd replace site {0}` brings it back",
                    self.site
                );
            }
            None => {}
        }
        for f in files {
            let _ = writeln!(out, "report: {}", f.display());
        }
        out
    }

    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# Disaster drill: site {}\n", self.site);
        let _ = writeln!(
            md,
            "- **Result:** {}",
            if self.ok {
                "passed"
            } else {
                "FAILED (see the steps below)"
            }
        );
        let _ = writeln!(
            md,
            "- **Mode:** {} ({})",
            self.mode,
            if self.mode == "isolate" {
                "network cut, machines left running"
            } else {
                "machines powered off"
            }
        );
        let _ = writeln!(md, "- **Started:** {}", self.started);
        let _ = writeln!(md, "- **Finished:** {}", self.finished);
        let _ = writeln!(
            md,
            "- **Recovery time:** {}",
            match self.recovery_ms {
                Some(ms) => format!("{} (site down until traffic restored)", secs(ms)),
                None if self.rebuild => "none: the rebuild did not finish".into(),
                None => format!(
                    "not measured (no --rebuild): the site stays down; \
                     `metalherd replace site {}` brings it back",
                    self.site
                ),
            }
        );
        let _ = writeln!(
            md,
            "- **Generation:** {} -> {}",
            gen(self.generation_before),
            gen(self.generation_after)
        );
        if !self.overridden.is_empty() {
            let _ = writeln!(
                md,
                "- **Overridden safety checks:** {} (reason: {})",
                self.overridden.join("; "),
                self.reason.as_deref().unwrap_or("")
            );
        }
        if let Some(e) = &self.error {
            let _ = writeln!(md, "- **Error:** {}", e.replace('\n', " "));
        }
        let _ = writeln!(
            md,
            "\n| # | step | start | took | result | detail |\n|---|---|---|---|---|---|"
        );
        for (i, s) in self.steps.iter().enumerate() {
            let _ = writeln!(
                md,
                "| {} | {} | +{} | {} | {} | {} |",
                i + 1,
                s.name,
                secs(s.start_ms),
                secs(s.duration_ms),
                if s.ok { "ok" } else { "FAILED" },
                s.detail.replace('|', "\\|").replace('\n', " ")
            );
        }
        md
    }

    /// A Gantt-style timeline: one bar per step, green when it went well.
    pub fn svg(&self) -> String {
        const WIDTH: f64 = 960.0;
        const LABEL: f64 = 260.0;
        const ROW: f64 = 26.0;
        const TOP: f64 = 50.0;
        let total = self
            .steps
            .iter()
            .map(|s| s.start_ms + s.duration_ms)
            .max()
            .unwrap_or(0)
            .max(1) as f64;
        let scale = (WIDTH - LABEL - 90.0) / total;
        let height = TOP + ROW * self.steps.len() as f64 + 40.0;
        let mut svg = String::new();
        let _ = writeln!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="13">"#
        );
        let _ = writeln!(
            svg,
            r#"<title>{}</title><rect width="100%" height="100%" fill="white"/>"#,
            xml(&format!("Disaster drill: site {}", self.site))
        );
        let _ = writeln!(
            svg,
            r#"<text x="10" y="22" font-size="16" font-weight="bold">{}</text>"#,
            xml(&format!(
                "drill site {} ({}) {}: {} total{}",
                self.site,
                self.mode,
                if self.ok { "passed" } else { "FAILED" },
                secs(total as u128),
                self.recovery_ms
                    .map(|r| format!(", recovery {}", secs(r)))
                    .unwrap_or_default()
            ))
        );
        for (i, s) in self.steps.iter().enumerate() {
            let y = TOP + ROW * i as f64;
            let x = LABEL + s.start_ms as f64 * scale;
            let w = (s.duration_ms as f64 * scale).max(2.0);
            let fill = if s.ok { "#3c9a5f" } else { "#c8453b" };
            let _ = writeln!(
                svg,
                r##"<text x="10" y="{:.1}">{}</text><rect x="{x:.1}" y="{:.1}" width="{w:.1}" height="{:.1}" fill="{fill}"><title>{}</title></rect><text x="{:.1}" y="{:.1}" fill="#333">{}</text>"##,
                y + 17.0,
                xml(&s.name),
                y + 4.0,
                ROW - 8.0,
                xml(&format!("{}: {}", s.name, s.detail)),
                x + w + 6.0,
                y + 17.0,
                secs(s.duration_ms)
            );
        }
        let axis = TOP + ROW * self.steps.len() as f64 + 14.0;
        let _ = writeln!(
            svg,
            r##"<line x1="{LABEL}" y1="{axis:.1}" x2="{:.1}" y2="{axis:.1}" stroke="#999"/><text x="{LABEL}" y="{:.1}" fill="#666">0 s</text><text x="{:.1}" y="{:.1}" fill="#666" text-anchor="end">{}</text>"##,
            LABEL + total * scale,
            axis + 16.0,
            LABEL + total * scale,
            axis + 16.0,
            secs(total as u128)
        );
        svg.push_str("</svg>\n");
        svg
    }

    /// Writes `<stem>.md`, `<stem>.json` and `<stem>.svg` into `dir`
    /// (created when missing), each atomically; returns their paths.
    pub fn write(&self, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("creating the report directory {}: {e}", dir.display()))?;
        let stem = self.stem();
        let files = [
            ("md", self.markdown()),
            ("json", serde_json::to_string_pretty(self)? + "\n"),
            ("svg", self.svg()),
        ];
        let mut written = Vec::new();
        for (ext, body) in files {
            let path = dir.join(format!("{stem}.{ext}"));
            crate::fsutil::write_atomic(&path, body.as_bytes(), 0o644)
                .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
            written.push(path);
        }
        Ok(written)
    }
}

fn gen(g: Option<u64>) -> String {
    g.map_or("none".into(), |g| g.to_string())
}

fn secs(ms: u128) -> String {
    if ms >= 60_000 {
        format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000)
    } else {
        format!("{:.1}s", ms as f64 / 1000.0)
    }
}

fn xml(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> DrillReport {
        DrillReport {
            site: "ber".into(),
            mode: "power-off".into(),
            started: "2026-11-24T02:00:00Z".into(),
            finished: "2026-11-24T02:03:00Z".into(),
            ok: false,
            rebuild: false,
            recovery_ms: None,
            generation_before: Some(3),
            generation_after: Some(3),
            overridden: vec!["window: outside".into()],
            reason: Some("drill <Q4> & co".into()),
            steps: vec![
                Step {
                    name: "drain".into(),
                    start_ms: 0,
                    duration_ms: 1200,
                    ok: true,
                    detail: "traffic.drain ran".into(),
                },
                Step {
                    name: "other sites".into(),
                    start_ms: 1200,
                    duration_ms: 65_000,
                    ok: false,
                    detail: "fra | <unhealthy>".into(),
                },
            ],
            set_aside: Vec::new(),
            error: Some("fra unhealthy".into()),
        }
    }

    #[test]
    fn markdown_has_every_step_and_escapes_table_cells() {
        let md = report().markdown();
        assert!(md.contains("| 1 | drain | +0.0s | 1.2s | ok |"), "{md}");
        assert!(
            md.contains("| 2 | other sites | +1.2s | 1m05s | FAILED | fra \\| <unhealthy> |"),
            "{md}"
        );
        assert!(md.contains("FAILED (see the steps below)"));
        assert!(md.contains("`metalherd replace site ber`"));
    }

    #[test]
    fn svg_is_well_formed_xml_with_one_bar_per_step() {
        let svg = report().svg();
        assert_eq!(svg.matches("<rect x=").count(), 2);
        assert!(svg.contains("&lt;unhealthy&gt;"));
        assert!(!svg.contains("<Q4>"));
        let doc = roxmltree_like_check(&svg);
        assert!(doc, "{svg}");
    }

    /// Every `<` opens a tag that is closed or self-closed, in order.
    fn roxmltree_like_check(svg: &str) -> bool {
        let mut stack: Vec<String> = Vec::new();
        let mut rest = svg;
        while let Some(i) = rest.find('<') {
            let end = rest[i..].find('>').map(|e| i + e).unwrap_or(rest.len());
            let tag = &rest[i + 1..end];
            if let Some(name) = tag.strip_prefix('/') {
                if stack.pop().as_deref() != Some(name) {
                    return false;
                }
            } else if !tag.ends_with('/') {
                stack.push(tag.split_whitespace().next().unwrap_or("").to_string());
            }
            rest = &rest[end + 1..];
        }
        stack.is_empty()
    }

    #[test]
    fn stem_is_a_safe_file_name() {
        assert_eq!(report().stem(), "drill-ber-20261124T020000Z");
    }
}
