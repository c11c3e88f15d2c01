//! Downloads over HTTP(S): streamed to a partial file, resumed with
//! `Range` after an interruption, retried with capped exponential backoff
//! on connection errors, timeouts and 5xx (never on other 4xx), with a
//! progress bar on a TTY and plain progress lines otherwise.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use reqwest::header::{CONTENT_RANGE, RANGE};
use reqwest::StatusCode;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url}: the server answered {status}")]
    Status { url: String, status: StatusCode },
    #[error("{url}: gave up after {attempts} attempts; last error: {last}")]
    GaveUp {
        url: String,
        attempts: u32,
        last: String,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot set up the HTTP client: {0}")]
    Client(String),
}

/// How hard to try.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Attempts after the first.
    pub retries: u32,
    /// The first pause; it doubles each time, up to `max_delay`.
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl RetryPolicy {
    fn delay(&self, attempt: u32) -> Duration {
        self.base_delay
            .saturating_mul(1 << attempt.min(16))
            .min(self.max_delay)
    }
}

pub struct Fetcher {
    client: reqwest::Client,
    policy: RetryPolicy,
    /// A progress bar (on a TTY) or progress lines.
    bars: bool,
}

/// Why one attempt failed, and whether another may help.
enum Attempt {
    Retry(String),
    Fatal(FetchError),
}

impl Fetcher {
    pub fn new(policy: RetryPolicy, bars: bool) -> Result<Self, FetchError> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
            .user_agent(concat!("metalherd/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| FetchError::Client(e.to_string()))?;
        Ok(Fetcher {
            client,
            policy,
            bars,
        })
    }

    async fn retrying<T, F, Fut>(&self, url: &str, mut attempt: F) -> Result<T, FetchError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Attempt>>,
    {
        let mut last = String::new();
        for n in 0..=self.policy.retries {
            if n > 0 {
                let pause = self.policy.delay(n - 1);
                tracing::warn!(
                    "{url}: {last}; retrying in {pause:.1?} (attempt {} of {})",
                    n + 1,
                    self.policy.retries + 1
                );
                tokio::time::sleep(pause).await;
            }
            match attempt().await {
                Ok(t) => return Ok(t),
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Retry(why)) => last = why,
            }
        }
        Err(FetchError::GaveUp {
            url: url.to_string(),
            attempts: self.policy.retries + 1,
            last,
        })
    }

    /// Fetches a small file (digests, signatures, metadata) into memory.
    pub async fn fetch_bytes(&self, url: &str) -> Result<Vec<u8>, FetchError> {
        self.retrying(url, || async {
            let resp = self
                .client
                .get(url)
                .send()
                .await
                .map_err(|e| Attempt::Retry(crate::errfmt::chain(&e)))?;
            let status = resp.status();
            if !status.is_success() {
                return Err(classify(url, status));
            }
            let body = resp
                .bytes()
                .await
                .map_err(|e| Attempt::Retry(crate::errfmt::chain(&e)))?;
            Ok(body.to_vec())
        })
        .await
    }

    /// Downloads `url` into `part`, continuing a partial file left by an
    /// earlier attempt or run. Returns the file's size.
    pub async fn fetch_to(&self, url: &str, part: &Path, label: &str) -> Result<u64, FetchError> {
        let bar = self.progress(label);
        let result = self
            .retrying(url, || self.attempt_to(url, part, &bar))
            .await;
        bar.finish_and_clear();
        result
    }

    async fn attempt_to(&self, url: &str, part: &Path, bar: &Progress) -> Result<u64, Attempt> {
        let io = |source| {
            Attempt::Fatal(FetchError::Io {
                path: part.into(),
                source,
            })
        };
        let have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
        let mut req = self.client.get(url);
        if have > 0 {
            req = req.header(RANGE, format!("bytes={have}-"));
        }
        let resp = req
            .send()
            .await
            .map_err(|e| Attempt::Retry(crate::errfmt::chain(&e)))?;
        let status = resp.status();
        let (mut file, mut done) = match status {
            StatusCode::PARTIAL_CONTENT => {
                let range = resp
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if !range.starts_with(&format!("bytes {have}-")) {
                    // Not the range we asked for: start over.
                    std::fs::remove_file(part).map_err(io)?;
                    return Err(Attempt::Retry(format!(
                        "unexpected Content-Range {range:?}"
                    )));
                }
                tracing::info!("{url}: resuming at byte {have}");
                (
                    OpenOptions::new().append(true).open(part).map_err(io)?,
                    have,
                )
            }
            StatusCode::RANGE_NOT_SATISFIABLE => {
                // The partial file is longer than the resource: start over.
                std::fs::remove_file(part).map_err(io)?;
                return Err(Attempt::Retry(
                    "partial file does not fit the resource".into(),
                ));
            }
            s if s.is_success() => (File::create(part).map_err(io)?, 0),
            s => return Err(classify(url, s)),
        };
        let total = resp.content_length().map(|n| n + done);
        bar.start(total, done);
        let mut resp = resp;
        loop {
            match resp.chunk().await {
                Ok(Some(bytes)) => {
                    file.write_all(&bytes).map_err(io)?;
                    done += bytes.len() as u64;
                    bar.set(done);
                }
                Ok(None) => break,
                Err(e) => {
                    file.flush().map_err(io)?;
                    return Err(Attempt::Retry(format!(
                        "connection lost after {done} bytes: {}",
                        crate::errfmt::chain(&e)
                    )));
                }
            }
        }
        file.sync_all().map_err(io)?;
        match total {
            Some(t) if t != done => Err(Attempt::Retry(format!("got {done} of {t} bytes"))),
            _ => Ok(done),
        }
    }

    fn progress(&self, label: &str) -> Progress {
        Progress::new(label, self.bars)
    }
}

fn classify(url: &str, status: StatusCode) -> Attempt {
    if status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
    {
        Attempt::Retry(format!("the server answered {status}"))
    } else {
        Attempt::Fatal(FetchError::Status {
            url: url.to_string(),
            status,
        })
    }
}

/// Progress of one download: an indicatif bar on a TTY, otherwise a line
/// at every quarter (nightly jobs and journald read those).
struct Progress {
    label: String,
    bar: Option<ProgressBar>,
    total: std::cell::Cell<Option<u64>>,
    next_quarter: std::cell::Cell<u64>,
}

impl Progress {
    fn new(label: &str, bars: bool) -> Self {
        let bar = bars.then(|| {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg:40} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_message(label.to_string());
            bar
        });
        Progress {
            label: label.to_string(),
            bar,
            total: Default::default(),
            next_quarter: Default::default(),
        }
    }

    fn start(&self, total: Option<u64>, done: u64) {
        self.total.set(total);
        if let Some(bar) = &self.bar {
            bar.set_length(total.unwrap_or(0));
            bar.set_position(done);
        } else {
            let size = total.map(|t| format!(" ({} bytes)", t)).unwrap_or_default();
            tracing::info!("fetching {}{size}", self.label);
            self.next_quarter.set(1);
        }
    }

    fn set(&self, done: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            return;
        }
        if let Some(total) = self.total.get().filter(|t| *t > 0) {
            let q = self.next_quarter.get();
            if q < 4 && done * 4 >= total * q {
                tracing::info!(
                    "fetching {}: {}% ({done} of {total} bytes)",
                    self.label,
                    q * 25
                );
                self.next_quarter.set(q + 1);
            }
        }
    }

    fn finish_and_clear(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
