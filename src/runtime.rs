//! The process's one tokio runtime, built on first use, here and nowhere
//! else: every command blocks on it, the boot server serves on it.
//! Blocking on it from inside one of its tasks panics (as with any tokio
//! runtime): library code that may be called either way runs the async
//! part on a scoped thread (see `keys::ensure_state`).
//!
//! Its threads inherit the network namespace of the thread that builds
//! it, so a command for a lab fleet enters the lab's namespace
//! (`lab::enter`, in `cli::context::fleet_and_keys`) before its first use.

use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::Runtime;

static RUNTIME: OnceLock<Runtime> = OnceLock::new();

/// The runtime, built the first time it is asked for.
pub fn get() -> std::io::Result<&'static Runtime> {
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("metalherd")
        .build()?;
    // Two threads racing here both build one; the first stored wins and
    // the other is dropped unused.
    Ok(RUNTIME.get_or_init(|| rt))
}

/// Runs `future` to completion on the runtime.
pub fn block_on<F: Future>(future: F) -> anyhow::Result<F::Output> {
    use anyhow::Context;
    Ok(get()
        .context("starting the async runtime")?
        .block_on(future))
}
