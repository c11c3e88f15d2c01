//! The operation journal: an operation (`bootstrap site fra`) is a list of
//! named, idempotent steps; each step's start, end, outcome and duration
//! are written to the state store before and after it runs. A run of an
//! operation whose last run did not finish resumes it: steps recorded as
//! completed are skipped (with a message), the first one that is not runs
//! next.
//!
//! Objects: `journal/<id>` (the [`OpRecord`], written with compare-and-swap
//! so two writers cannot interleave) and `operations/<kind>/<target>`, the
//! id of the latest run of that operation.

use std::fmt;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::{now_rfc3339, Expect, Holder, StateError, StateStore};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Running,
    Succeeded,
    Failed,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepRecord {
    pub name: String,
    pub started: String,
    pub ended: Option<String>,
    /// `ok`, `partial: <why>` (it left machines behind, to finish in the
    /// next run) or `failed: <why>`; none while running (or when killed).
    pub outcome: Option<String>,
    pub duration_ms: Option<u128>,
    /// Which run of the operation ran the step (0 first, 1 first resume…).
    pub run: u32,
}

impl StepRecord {
    pub fn completed(&self) -> bool {
        self.outcome.as_deref() == Some("ok")
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OpRecord {
    pub id: String,
    pub kind: String,
    pub target: String,
    pub started: String,
    pub ended: Option<String>,
    pub status: Status,
    pub error: Option<String>,
    /// Who ran it, each run.
    pub runs: Vec<Holder>,
    pub steps: Vec<StepRecord>,
    /// The generation the operation builds, for operations that pick it
    /// themselves (`replace`: the recorded one plus one), so that a resumed
    /// run goes on to the same one even after its `record` step ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
}

/// `state history`'s text: the operation on one line, its steps below.
impl fmt::Display for OpRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let runs = self.runs.len();
        let plural = if runs == 1 { "" } else { "s" };
        writeln!(
            f,
            "{} {} {} {:?} ({runs} run{plural})",
            self.started, self.kind, self.target, self.status
        )?;
        for s in &self.steps {
            writeln!(
                f,
                "    {:<16} {:<10} {}",
                s.name,
                s.duration_ms.map_or("-".into(), |d| format!("{d} ms")),
                s.outcome.as_deref().unwrap_or("interrupted")
            )?;
        }
        Ok(())
    }
}

/// Debug builds (the tests') only: `METALHERD_CRASH_AT=<kind>:<step>:<start|end>`
/// stops the process at that point of that step (`start`: its start is
/// journaled, its work not begun; `end`: its work done, its end not yet
/// journaled) and waits there, so that a crash test can SIGKILL it at an
/// exact step. Release builds have no such point.
#[cfg(debug_assertions)]
fn crash_point(kind: &str, step: &str, at: &str) {
    let Ok(wanted) = std::env::var("METALHERD_CRASH_AT") else {
        return;
    };
    if wanted == format!("{kind}:{step}:{at}") {
        eprintln!("crash point {wanted}: waiting to be killed");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}

#[cfg(not(debug_assertions))]
fn crash_point(_kind: &str, _step: &str, _at: &str) {}

/// An operation in progress.
pub struct Journal<'a> {
    store: &'a dyn StateStore,
    record: OpRecord,
    revision: u64,
}

fn to_json(record: &OpRecord) -> Result<Vec<u8>, StateError> {
    serde_json::to_vec_pretty(record).map_err(|e| StateError::Backend {
        backend: "journal".into(),
        message: e.to_string(),
    })
}

fn from_json(key: &str, bytes: &[u8]) -> Result<OpRecord, StateError> {
    serde_json::from_slice(bytes).map_err(|e| StateError::Backend {
        backend: "journal".into(),
        message: format!("{key} is not a journal record: {e}"),
    })
}

fn pointer_key(kind: &str, target: &str) -> String {
    format!("operations/{kind}/{}", target.replace('/', "-"))
}

/// The latest run of `kind` on `target`, if any.
pub async fn latest(
    store: &dyn StateStore,
    kind: &str,
    target: &str,
) -> Result<Option<OpRecord>, StateError> {
    let Some(pointer) = store.get(&pointer_key(kind, target)).await? else {
        return Ok(None);
    };
    let id = String::from_utf8_lossy(&pointer.value).trim().to_string();
    let key = format!("journal/{id}");
    match store.get(&key).await? {
        Some(e) => Ok(Some(from_json(&key, &e.value)?)),
        None => Ok(None),
    }
}

/// Every recorded operation, newest first.
pub async fn history(store: &dyn StateStore) -> Result<Vec<OpRecord>, StateError> {
    let mut out = Vec::new();
    for e in store.list("journal/").await? {
        out.push(from_json(&e.key, &e.value)?);
    }
    out.sort_by(|a, b| b.started.cmp(&a.started).then(b.id.cmp(&a.id)));
    Ok(out)
}

impl<'a> Journal<'a> {
    /// Starts `kind` on `target`, or resumes its latest run if that did
    /// not finish. The caller holds the operation's lock.
    pub async fn begin(
        store: &'a dyn StateStore,
        kind: &str,
        target: &str,
        holder: &Holder,
    ) -> Result<Journal<'a>, StateError> {
        if let Some(mut record) = latest(store, kind, target).await? {
            if record.status != Status::Succeeded {
                let done = record.steps.iter().filter(|s| s.completed()).count();
                tracing::info!(
                    "resuming {kind} {target} (operation {}, started {}): {done} step(s) completed",
                    record.id,
                    record.started
                );
                record.status = Status::Running;
                record.ended = None;
                record.error = None;
                record.runs.push(holder.clone());
                let key = format!("journal/{}", record.id);
                let current = store.get(&key).await?.map(|e| e.revision).unwrap_or(0);
                let revision = store
                    .put(&key, &to_json(&record)?, Expect::Revision(current))
                    .await?;
                return Ok(Journal {
                    store,
                    record,
                    revision,
                });
            }
        }
        let started = now_rfc3339();
        let id = format!(
            "{}-{kind}-{}-{:08x}",
            started.replace([':', '-', '+', '.'], ""),
            target.replace('/', "-"),
            rand_core::RngCore::next_u32(&mut rand_core::OsRng)
        );
        let record = OpRecord {
            id: id.clone(),
            kind: kind.to_string(),
            target: target.to_string(),
            started,
            ended: None,
            status: Status::Running,
            error: None,
            runs: vec![holder.clone()],
            steps: Vec::new(),
            generation: None,
        };
        let revision = store
            .put(&format!("journal/{id}"), &to_json(&record)?, Expect::Absent)
            .await?;
        store
            .put(&pointer_key(kind, target), id.as_bytes(), Expect::Any)
            .await?;
        Ok(Journal {
            store,
            record,
            revision,
        })
    }

    pub fn record(&self) -> &OpRecord {
        &self.record
    }

    /// Records the generation this operation builds (see
    /// [`OpRecord::generation`]); a no-op when it is already recorded.
    pub async fn set_generation(&mut self, generation: u64) -> Result<(), StateError> {
        if self.record.generation == Some(generation) {
            return Ok(());
        }
        self.record.generation = Some(generation);
        self.save().await
    }

    /// Whether this run resumes an earlier, unfinished one.
    pub fn resumed(&self) -> bool {
        self.record.runs.len() > 1
    }

    /// Records that step `name`, which just ran, left machines behind
    /// (`partial: <why>`): it is not completed, so the next run of the
    /// operation runs it again, for what it left.
    pub async fn mark_partial(&mut self, name: &str, why: &str) -> Result<(), StateError> {
        let Some(step) = self.record.steps.iter_mut().rev().find(|s| s.name == name) else {
            return Ok(());
        };
        step.outcome = Some(format!("partial: {why}"));
        self.save().await
    }

    /// Whether `name` completed in an earlier run.
    pub fn completed(&self, name: &str) -> bool {
        self.record
            .steps
            .iter()
            .any(|s| s.name == name && s.completed())
    }

    async fn save(&mut self) -> Result<(), StateError> {
        let key = format!("journal/{}", self.record.id);
        self.revision = self
            .store
            .put(
                &key,
                &to_json(&self.record)?,
                Expect::Revision(self.revision),
            )
            .await?;
        Ok(())
    }

    /// Runs step `name` unless it completed before, journaling its start
    /// and end. Returns `None` for a skipped step.
    pub async fn step<T, F, Fut>(&mut self, name: &str, work: F) -> anyhow::Result<Option<T>>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<T>>,
    {
        if self.completed(name) {
            tracing::info!(
                "{}: step {name}: completed in an earlier run, skipped",
                self.record.target
            );
            return Ok(None);
        }
        let run = u32::try_from(self.record.runs.len().saturating_sub(1)).unwrap_or(u32::MAX);
        self.record.steps.push(StepRecord {
            name: name.to_string(),
            started: now_rfc3339(),
            ended: None,
            outcome: None,
            duration_ms: None,
            run,
        });
        self.save().await?;
        crash_point(&self.record.kind, name, "start");
        let start = Instant::now();
        let result = work().await;
        crash_point(&self.record.kind, name, "end");
        if let Some(step) = self.record.steps.last_mut() {
            step.ended = Some(now_rfc3339());
            step.duration_ms = Some(start.elapsed().as_millis());
            step.outcome = Some(match &result {
                Ok(_) => "ok".to_string(),
                Err(e) => format!("failed: {e:#}"),
            });
        }
        self.save().await?;
        result.map(Some)
    }

    /// Records the end of the operation.
    pub async fn finish(mut self, error: Option<String>) -> Result<OpRecord, StateError> {
        self.record.ended = Some(now_rfc3339());
        self.record.status = if error.is_none() {
            Status::Succeeded
        } else {
            Status::Failed
        };
        self.record.error = error;
        self.save().await?;
        Ok(self.record)
    }
}
/// `state demo`: a journaled operation of `steps` steps of `step_ms` each
/// on `target`, holding the lock `sites/<target>`; each step appends its
/// name to `marker` when it runs. The crash tests kill it mid-step.
pub async fn demo(
    store: &dyn StateStore,
    target: &str,
    steps: u32,
    step_ms: u64,
    marker: &std::path::Path,
    lock_ttl: std::time::Duration,
) -> anyhow::Result<()> {
    use std::io::Write;
    let holder = Holder::current(&format!("demo {target}"));
    let lock = store
        .lock(&super::Key::site(target), &holder, lock_ttl)
        .await?;
    let mut journal = Journal::begin(store, "demo", target, &holder).await?;
    for i in 1..=steps {
        let name = format!("step-{i}");
        journal
            .step(&name, || async {
                tokio::time::sleep(std::time::Duration::from_millis(step_ms)).await;
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(marker)?;
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
