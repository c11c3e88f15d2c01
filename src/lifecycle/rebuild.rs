//! `rebuild`: the nightly job. Sites in waves, one site at a time, each a
//! [`super::replace::replace`] with its blockers checked again first; the
//! first failure or refusal stops the run, leaving that site as it is and
//! every later site untouched.

use std::fmt;
use std::time::Instant;

use serde::Serialize;

use super::replace::{replace, How};
use crate::fleet::{Fleet, SiteName};
use crate::job::Reporter;
use crate::keys::Keys;
use crate::operation::{Env, Outcome};

/// The waves of a rebuild: `rebuild.waves` (default one site per wave, in
/// the fleet's order; sites the waves leave out come last, one per wave),
/// narrowed to `only` when given.
pub fn waves(fleet: &Fleet, only: &[SiteName]) -> Vec<Vec<SiteName>> {
    let mut waves: Vec<Vec<SiteName>> = match &fleet.rebuild {
        Some(r) if !r.waves.is_empty() => r.waves.clone(),
        _ => fleet.sites.iter().map(|s| vec![s.name.clone()]).collect(),
    };
    let listed: Vec<SiteName> = waves.iter().flatten().cloned().collect();
    for s in &fleet.sites {
        if !listed.contains(&s.name) {
            waves.push(vec![s.name.clone()]);
        }
    }
    if !only.is_empty() {
        for w in &mut waves {
            w.retain(|s| only.contains(s));
        }
        waves.retain(|w| !w.is_empty());
    }
    waves
}

/// How one site of a rebuild ended.
#[derive(Debug, Serialize)]
pub struct SiteOutcome {
    pub site: String,
    pub wave: usize,
    pub status: Status,
    pub generation: Option<u64>,
    pub error: Option<String>,
    pub took_ms: u128,
}

/// The site's line of a rebuild: `wave <n> <site> <status> <error>`.
impl fmt::Display for SiteOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (wave, site, status) = (self.wave, &self.site, self.status.as_str());
        let error = self.error.as_deref().unwrap_or("");
        write!(f, "wave {wave} {site:<8} {status:<12} {error}")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Status {
    #[serde(rename = "replaced")]
    Replaced,
    /// The replace failed; the site is left drained.
    #[serde(rename = "failed")]
    Failed,
    /// A blocker refused it; the site is untouched.
    #[serde(rename = "blocked")]
    Blocked,
    #[serde(rename = "not started")]
    NotStarted,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Replaced => "replaced",
            Status::Failed => "failed",
            Status::Blocked => "blocked",
            Status::NotStarted => "not started",
        }
    }
}

/// What a rebuild did: every site of every wave, and why it stopped.
#[derive(Debug, Serialize)]
pub struct RebuildReport {
    pub waves: Vec<Vec<SiteName>>,
    pub sites: Vec<SiteOutcome>,
    /// The site that stopped the run: its status and why.
    pub stopped: Option<(Status, String)>,
}

/// Replaces the sites of `waves` in turn (see the module doc).
pub async fn rebuild(
    env: &Env,
    fleet: &Fleet,
    keys: &Keys,
    waves: Vec<Vec<SiteName>>,
    how: &How,
    reporter: &Reporter,
) -> anyhow::Result<RebuildReport> {
    let mut sites = Vec::new();
    let mut stopped: Option<(Status, String)> = None;
    for (i, wave) in waves.iter().enumerate() {
        for name in wave {
            let mut outcome = SiteOutcome {
                site: name.to_string(),
                wave: i + 1,
                status: Status::NotStarted,
                generation: None,
                error: None,
                took_ms: 0,
            };
            if stopped.is_some() {
                sites.push(outcome);
                continue;
            }
            let site = super::site(fleet, name)?;
            tracing::info!(
                "rebuild: wave {} of {}: replace site {name}",
                i + 1,
                waves.len()
            );
            let started = Instant::now();
            match replace(env, fleet, keys, site, how, reporter).await? {
                Outcome::Refused(checks) => {
                    outcome.status = Status::Blocked;
                    outcome.error = Some(super::failing(&checks).join("; "));
                }
                Outcome::Ran(report) => {
                    outcome.generation = Some(report.report.generation);
                    outcome.error = report.report.error.clone();
                    outcome.status = if report.report.ok {
                        Status::Replaced
                    } else {
                        Status::Failed
                    };
                }
            }
            outcome.took_ms = started.elapsed().as_millis();
            if outcome.status != Status::Replaced {
                let why = format!("{name}: {}", outcome.error.clone().unwrap_or_default());
                stopped = Some((outcome.status, why));
            }
            sites.push(outcome);
        }
    }
    Ok(RebuildReport {
        waves,
        sites,
        stopped,
    })
}
