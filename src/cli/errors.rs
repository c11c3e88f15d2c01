//! How a run ends on the terminal: logging to stderr, errors with their
//! whole chain (or as a JSON document with `--output json`), and a quiet
//! exit when the reader of stdout has gone.

use std::io::{IsTerminal, Write};

use super::{print_json, Cli, Output, Reported};
use crate::fleet::LoadError;

/// The exit code of a process killed by SIGPIPE (128 + 13).
pub(super) const BROKEN_PIPE: u8 = 141;

/// `metalherd … | head`: once the reader has gone, stop quietly with the
/// exit code of a Unix tool killed by SIGPIPE, instead of panicking in
/// `println!` (Rust ignores SIGPIPE, so writes fail with EPIPE; restoring
/// the signal's default would need `unsafe`, which this crate forbids).
pub(super) fn quiet_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(BROKEN_PIPE.into());
        }
        default(info)
    }));
}

pub(super) fn init_logging(cli: &Cli) {
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("METALHERD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("metalherd={level}")));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .without_time()
        .init();
}

/// Errors go to stderr with their whole chain; a fleet that failed to load
/// lists every problem. With `--output json` the same goes to stdout as a
/// document, for scripts.
/// A command line clap refused (or `--help`/`--version`): clap's text as
/// clap prints it, and with `--output json` also a JSON error on stdout,
/// so a script always gets a document; exit 2 (0 for help and version).
pub(super) fn usage(e: clap::Error) -> std::process::ExitCode {
    let code = e.exit_code();
    let args: Vec<String> = std::env::args().collect();
    let json = args
        .windows(2)
        .any(|w| w[0] == "--output" && w[1] == "json")
        || args.iter().any(|a| a == "--output=json");
    if json && code != 0 {
        let said = e.render().to_string();
        // The message up to clap's usage line, on one line.
        let first = said
            .lines()
            .take_while(|l| !l.trim().is_empty())
            .map(str::trim)
            .collect::<Vec<_>>()
            .join(" ")
            .trim_start_matches("error: ")
            .to_string();
        let _ = print_json(&serde_json::json!({
            "ok": false, "usage": true, "error": first, "usage_text": said,
        }));
    }
    let _ = e.print();
    std::process::ExitCode::from(u8::try_from(code).unwrap_or(2))
}

pub(super) fn report_error(cli: &Cli, err: &anyhow::Error) {
    if let Some(Reported(summary)) = err.downcast_ref::<Reported>() {
        if cli.output == Output::Text {
            eprintln!("error: {summary}");
        }
        return;
    }
    let diagnostics = err
        .downcast_ref::<LoadError>()
        .map(|e| e.diagnostics.clone())
        .unwrap_or_default();
    if cli.output == Output::Json {
        let chain: Vec<String> = err.chain().map(|e| e.to_string()).collect();
        let _ = print_json(&serde_json::json!({
            "ok": false,
            "error": chain.join(": "),
            "diagnostics": diagnostics,
        }));
        return;
    }
    let mut stderr = std::io::stderr().lock();
    for d in &diagnostics {
        let _ = writeln!(stderr, "error: {d}");
    }
    let _ = write!(stderr, "error: {err}");
    for cause in err.chain().skip(1) {
        let _ = write!(stderr, ": {cause}");
    }
    let _ = writeln!(stderr);
}
