//! Fan-out of work over machines (the colmena model): one task per
//! machine, a semaphore per site bounding how many run at once, every
//! failure collected rather than the first one aborting the rest, and a
//! summary at the end with the last lines each failed machine logged.
//!
//! Progress: on a terminal (and without `--verbose`) one indicatif line
//! per machine shows its current phase; otherwise each phase change is a
//! plain log line (`fra-cp-01: start etcd`) for journald and nightly jobs.
//! A fan-out over more than [`PLAIN_LINES`] machines logs, instead, one
//! line every [`TALLY_EVERY`] counting the machines in each phase
//! (`270 machines: 212 done; 40 SSH ready; 18 waiting for DHCP and iPXE`),
//! and each failure as it happens; the per-machine lines go to `-v`.
//!
//! To fan out new work: build [`Target`]s, call [`run`] with an async
//! closure that receives the target and a [`Task`] for progress.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde::Serialize;
use tokio::sync::Semaphore;

/// How many of a machine's log lines a failure summary shows.
const TAIL: usize = 8;
/// Above this many machines, plain progress is a tally, not a line per
/// machine and phase.
pub const PLAIN_LINES: usize = 24;
/// How often the tally is logged.
pub const TALLY_EVERY: Duration = Duration::from_secs(10);

/// One machine to work on.
#[derive(Clone, Debug)]
pub struct Target {
    pub machine: String,
    pub site: String,
}

/// How progress is shown.
#[derive(Clone)]
pub struct Reporter {
    bars: Option<MultiProgress>,
}

impl Reporter {
    /// Bars when `bars` (the caller checks for a terminal and verbosity),
    /// plain log lines otherwise.
    pub fn new(bars: bool) -> Self {
        Reporter {
            bars: bars.then(MultiProgress::new),
        }
    }

    /// Plain lines only (tests, libraries).
    pub fn plain() -> Self {
        Reporter { bars: None }
    }

    fn task(&self, machine: &str, tallied: bool) -> Task {
        let bar = self.bars.as_ref().map(|m| {
            let bar = m.add(ProgressBar::new_spinner());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {prefix:<14} {elapsed:>4} {wide_msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.set_prefix(machine.to_string());
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Task {
            machine: machine.to_string(),
            bar,
            tail: Arc::new(Mutex::new(VecDeque::new())),
            tallied,
            current: Arc::new(Mutex::new(String::from("waiting to start"))),
        }
    }
}

/// A machine's handle for reporting what it is doing.
#[derive(Clone)]
pub struct Task {
    machine: String,
    bar: Option<ProgressBar>,
    tail: Arc<Mutex<VecDeque<String>>>,
    /// Counted in its fan-out's tally rather than logged line by line.
    tallied: bool,
    current: Arc<Mutex<String>>,
}

impl Task {
    /// The machine entered `phase`.
    pub fn phase(&self, phase: &str) {
        self.remember(phase.to_string());
        if let Ok(mut current) = self.current.lock() {
            phase.clone_into(&mut current);
        }
        match &self.bar {
            Some(bar) => bar.set_message(phase.to_string()),
            None if self.tallied => tracing::debug!("{}: {phase}", self.machine),
            None => tracing::info!("{}: {phase}", self.machine),
        }
    }

    /// The phase the machine is in, for the tally (`done` and `FAILED`
    /// once it finished).
    fn current(&self) -> String {
        self.current.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Output worth keeping for the failure summary (not shown live).
    pub fn output(&self, text: &str) {
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            self.remember(line.to_string());
        }
    }

    fn remember(&self, line: String) {
        if let Ok(mut tail) = self.tail.lock() {
            if tail.len() == TAIL {
                tail.pop_front();
            }
            tail.push_back(line);
        }
    }

    fn finish(&self, ok: bool) {
        let word = if ok { "done" } else { "FAILED" };
        if let Ok(mut current) = self.current.lock() {
            word.clone_into(&mut current);
        }
        if let Some(bar) = &self.bar {
            bar.finish_with_message(word);
        }
    }

    fn tail(&self) -> Vec<String> {
        self.tail
            .lock()
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// What happened on one machine.
#[derive(Debug, Serialize)]
pub struct Outcome<T> {
    pub machine: String,
    pub site: String,
    pub ok: bool,
    pub result: Option<T>,
    pub error: Option<String>,
    /// A failed machine's last phases and output lines, for the summary.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub last_lines: Vec<String>,
    pub duration_ms: u128,
}

/// Runs `work` for every target, `per_site` at a time per site, and
/// returns every outcome in `targets` order.
pub async fn run<T, F, Fut>(
    targets: &[Target],
    per_site: usize,
    reporter: &Reporter,
    work: F,
) -> Vec<Outcome<T>>
where
    F: Fn(Target, Task) -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let mut limits: HashMap<&str, Arc<Semaphore>> = HashMap::new();
    let mut futures = Vec::new();
    let tallied = reporter.bars.is_none() && targets.len() > PLAIN_LINES;
    let mut tasks = Vec::new();
    for target in targets {
        let limit = limits
            .entry(target.site.as_str())
            .or_insert_with(|| Arc::new(Semaphore::new(per_site.max(1))))
            .clone();
        let task = reporter.task(&target.machine, tallied);
        tasks.push(task.clone());
        let fut = work(target.clone(), task.clone());
        futures.push(async move {
            let _permit = limit.acquire_owned().await;
            let start = Instant::now();
            let result = fut.await;
            task.finish(result.is_ok());
            let (result, error) = match result {
                Ok(v) => (Some(v), None),
                Err(e) => {
                    let msg = format!("{e:#}");
                    task.remember(format!("error: {msg}"));
                    if task.tallied {
                        tracing::warn!("{}: failed: {msg}", task.machine);
                    }
                    (None, Some(msg))
                }
            };
            let ok = error.is_none();
            Outcome {
                machine: target.machine.clone(),
                site: target.site.clone(),
                ok,
                result,
                error,
                // The summary shows them for failures; for the rest they
                // would only grow `--output json` (hundreds of machines).
                last_lines: if ok { Vec::new() } else { task.tail() },
                duration_ms: start.elapsed().as_millis(),
            }
        });
    }
    let all = futures_util::future::join_all(futures);
    if !tallied {
        return all.await;
    }
    tokio::pin!(all);
    loop {
        tokio::select! {
            outcomes = &mut all => return outcomes,
            () = tokio::time::sleep(TALLY_EVERY) => tracing::info!("{}", tally(&tasks)),
        }
    }
}

/// `270 machines: 212 done; 40 SSH ready; 18 waiting for DHCP and iPXE`:
/// how many machines are in each phase, most first.
fn tally(tasks: &[Task]) -> String {
    let mut counts: HashMap<String, usize> = HashMap::new();
    for t in tasks {
        *counts.entry(t.current()).or_default() += 1;
    }
    let mut counts: Vec<(String, usize)> = counts.into_iter().collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let parts: Vec<String> = counts.iter().map(|(p, n)| format!("{n} {p}")).collect();
    format!("{} machines: {}", tasks.len(), parts.join("; "))
}

/// `6 of 6 done`, or `2 of 6 failed: a, b` followed by each failed
/// machine's error and last lines.
pub fn summary<T>(what: &str, outcomes: &[Outcome<T>]) -> (bool, String) {
    let failed: Vec<&Outcome<T>> = outcomes.iter().filter(|o| !o.ok).collect();
    if failed.is_empty() {
        return (true, format!("{what}: {0} of {0} done", outcomes.len()));
    }
    let names: Vec<&str> = failed.iter().map(|o| o.machine.as_str()).collect();
    let mut text = format!(
        "{what}: {} of {} failed: {}",
        failed.len(),
        outcomes.len(),
        names.join(", ")
    );
    for o in failed {
        text.push_str(&format!(
            "\n  {}: {}",
            o.machine,
            o.error.as_deref().unwrap_or("")
        ));
        for line in &o.last_lines {
            text.push_str(&format!("\n    | {line}"));
        }
    }
    (false, text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn targets(n: usize, site: &str) -> Vec<Target> {
        (0..n)
            .map(|i| Target {
                machine: format!("{site}-{i}"),
                site: site.into(),
            })
            .collect()
    }

    #[test]
    fn the_tally_counts_machines_per_phase_most_first() {
        let reporter = Reporter::plain();
        let tasks: Vec<Task> = (0..5)
            .map(|i| reporter.task(&format!("m{i}"), true))
            .collect();
        tasks[0].phase("SSH ready");
        tasks[1].phase("SSH ready");
        tasks[2].finish(true);
        assert_eq!(
            tally(&tasks),
            "5 machines: 2 SSH ready; 2 waiting to start; 1 done"
        );
    }

    #[tokio::test]
    async fn failures_are_collected_and_the_rest_finish() {
        let t = targets(4, "fra");
        let out = run(&t, 8, &Reporter::plain(), |target, task| async move {
            task.phase("working");
            task.output("line one\nline two");
            if target.machine == "fra-2" {
                anyhow::bail!("host unreachable")
            }
            Ok(target.machine.len())
        })
        .await;
        assert_eq!(out.len(), 4);
        assert_eq!(out.iter().filter(|o| o.ok).count(), 3);
        let (ok, text) = summary("exec", &out);
        assert!(!ok);
        assert!(text.starts_with("exec: 1 of 4 failed: fra-2"), "{text}");
        assert!(text.contains("host unreachable"), "{text}");
        assert!(text.contains("| line two"), "{text}");
    }

    #[tokio::test]
    async fn at_most_per_site_run_at_once_per_site() {
        let mut t = targets(6, "fra");
        t.extend(targets(6, "ber"));
        let running: Arc<HashMap<String, AtomicUsize>> = Arc::new(
            ["fra", "ber"]
                .iter()
                .map(|s| (s.to_string(), AtomicUsize::new(0)))
                .collect(),
        );
        let peak = Arc::new(AtomicUsize::new(0));
        let out = run(&t, 2, &Reporter::plain(), |target, _| {
            let running = running.clone();
            let peak = peak.clone();
            async move {
                let now = running[&target.site].fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                running[&target.site].fetch_sub(1, Ordering::SeqCst);
                Ok(())
            }
        })
        .await;
        assert!(out.iter().all(|o| o.ok));
        assert_eq!(peak.load(Ordering::SeqCst), 2);
        assert_eq!(summary("x", &out), (true, "x: 12 of 12 done".into()));
    }
}
