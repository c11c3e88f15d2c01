//! The process's one tokio runtime, built on first use, here and nowhere
//! else: every command blocks on it, the boot server serves on it.
//! Blocking on it from inside one of its tasks panics (as with any tokio
//! runtime): library code that may be called either way runs the async
//! part on a scoped thread (see `keys::ensure_state`).
//!
//! Its threads inherit the network namespace of the thread that builds
//! it, so a command for a lab fleet enters the lab's namespace
//! (`lab::enter`, in `cli::context::fleet_and_keys`) before its first use.
//!
//! Building it also raises the process's soft limit of open files to the
//! hard one (at most [`OPEN_FILES`]), as Go's runtime does: a site's BMC
//! operations (`--bmc-parallel`, 256) and SSH sessions at once, each a
//! socket, come close to the usual soft limit of 1,024.

use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::Runtime;

static RUNTIME: OnceLock<Runtime> = OnceLock::new();

/// The most open files the runtime asks for (see the module docs).
pub const OPEN_FILES: u64 = 65_536;

/// The runtime, built the first time it is asked for.
pub fn get() -> std::io::Result<&'static Runtime> {
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    raise_open_files();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("metalherd")
        .build()?;
    // Two threads racing here both build one; the first stored wins and
    // the other is dropped unused.
    Ok(RUNTIME.get_or_init(|| rt))
}

/// Raises the soft limit of open files towards the hard one, up to
/// [`OPEN_FILES`]; never lowers it. Not being allowed to is not an
/// error: the limit stays as it was.
fn raise_open_files() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let want = limit.maximum.unwrap_or(OPEN_FILES).min(OPEN_FILES);
    if limit.current.is_some_and(|current| current < want) {
        let raised = Rlimit {
            current: Some(want),
            maximum: limit.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::debug!("raising the open files limit to {want}: {e}");
        }
    }
}

/// Runs `future` to completion on the runtime.
pub fn block_on<F: Future>(future: F) -> anyhow::Result<F::Output> {
    use anyhow::Context;
    Ok(get()
        .context("starting the async runtime")?
        .block_on(future))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_runtime_raises_the_open_files_limit_towards_the_hard_one() {
        use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
        let before = getrlimit(Resource::Nofile);
        let hard = before.maximum.unwrap_or(u64::MAX);
        // A lower soft limit, as on a default systemd host (1,024).
        let low = 512.min(hard);
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(low),
                maximum: before.maximum,
            },
        )
        .unwrap();
        super::raise_open_files();
        let after = getrlimit(Resource::Nofile);
        assert_eq!(after.current, Some(hard.min(super::OPEN_FILES)));
        assert_eq!(after.maximum, before.maximum);
    }
}
