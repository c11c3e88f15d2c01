//! The documentation tells the truth: the generated command reference
//! (`docs/cli.md`, `docs/man/`) is what the code generates now, every
//! shell block marked ```` ```sh test ```` in README.md and docs/*.md runs
//! as written, and every `metalherd …` command the docs name exists.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{files_below, metalherd, repo, text};

/// README.md and every page under docs/.
fn pages() -> Vec<PathBuf> {
    let mut pages = vec![repo().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .expect("docs/")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

#[test]
fn the_generated_command_reference_is_current() {
    let dir = tempfile::tempdir().unwrap();
    let out = metalherd(dir.path(), &["dev", "gen-docs", "."]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let fresh = files_below(dir.path());
    assert!(
        fresh.iter().any(|f| f == Path::new("cli.md"))
            && fresh.iter().any(|f| f.starts_with("man")),
        "gen-docs wrote {fresh:?}"
    );
    let mut checked_in: Vec<PathBuf> = files_below(&repo().join("docs"))
        .into_iter()
        .filter(|f| f == Path::new("cli.md") || f.starts_with("man"))
        .collect();
    checked_in.sort();
    let mut fresh_sorted = fresh.clone();
    fresh_sorted.sort();
    let stale = "stale: run `cargo run -- dev gen-docs docs` and commit the result";
    assert_eq!(
        checked_in, fresh_sorted,
        "docs/cli.md and docs/man/ are {stale}"
    );
    for file in &fresh {
        let want = std::fs::read(dir.path().join(file)).unwrap();
        let have = std::fs::read(repo().join("docs").join(file)).unwrap();
        assert!(want == have, "docs/{} is {stale}", file.display());
    }
}

/// The ```` ```sh test ```` blocks of `page`: (line of the fence, script).
fn test_blocks(page: &Path) -> Vec<(usize, String)> {
    let body = std::fs::read_to_string(page).unwrap();
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, line) in body.lines().enumerate() {
        match &mut current {
            None if line.trim_end() == "```sh test" => current = Some((i + 1, String::new())),
            Some(_) if line.starts_with("```") => blocks.extend(current.take()),
            Some((_, script)) => {
                script.push_str(line);
                script.push('\n');
            }
            None => {}
        }
    }
    blocks
}

#[test]
fn every_tested_shell_block_in_the_docs_runs_as_written() {
    // `metalherd` is the binary under test; HOME and the working
    // directory are fresh, as for a new user.
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_metalherd"));
    let path = format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut ran = 0;
    for page in pages() {
        for (line, script) in test_blocks(&page) {
            let home = tempfile::tempdir().unwrap();
            let cwd = tempfile::tempdir().unwrap();
            let out = Command::new("bash")
                .args(["-euo", "pipefail", "-c", &script])
                .current_dir(cwd.path())
                .env_clear()
                .env("PATH", &path)
                .env("HOME", home.path())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}:{line}: the block failed ({:?}):\n{script}\n{}{}",
                page.display(),
                out.status.code(),
                text(&out.stdout),
                text(&out.stderr)
            );
            ran += 1;
        }
    }
    assert!(
        ran >= 2,
        "only {ran} tested blocks: the README's try-it block is one"
    );
}

/// The subcommand words of every inline `metalherd …` the docs write:
/// up to the first option, placeholder or punctuation.
fn named_commands(page: &Path) -> BTreeSet<Vec<String>> {
    let body = std::fs::read_to_string(page).unwrap();
    let mut found = BTreeSet::new();
    for span in body.split('`').skip(1).step_by(2) {
        let Some(rest) = span.strip_prefix("metalherd ") else {
            continue;
        };
        let words: Vec<String> = rest
            .split_whitespace()
            .take_while(|w| {
                w.chars().all(|c| c.is_ascii_lowercase() || c == '-') && !w.starts_with('-')
            })
            .take(2)
            .map(str::to_string)
            .collect();
        if !words.is_empty() {
            found.insert(words);
        }
    }
    found
}

#[test]
fn every_command_the_docs_name_exists() {
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for page in pages() {
        for words in named_commands(&page) {
            // `--help` after the words: a subcommand that does not exist is
            // a usage error; a positional value (a machine) is accepted.
            let mut args: Vec<&str> = words.iter().map(String::as_str).collect();
            args.push("--help");
            let out = metalherd(dir.path(), &args);
            assert!(
                out.status.success(),
                "{} names `metalherd {}`, which is not a command: {}",
                page.display(),
                words.join(" "),
                text(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(checked > 20, "only {checked} commands found in the docs");
}

/// Commands that act on nothing but the fleet repository and its local
/// state: the docs' inline examples of them run as written.
const OFFLINE: &[&str] = &[
    "inventory",
    "render",
    "plan",
    "dnsmasq",
    "completions",
    "audit",
    "metrics",
    "state show",
    "state history",
    "state locks",
    "state keygen",
    "boot status",
    "assets list",
    "dev gen-docs",
    "init",
];

#[test]
fn every_inline_offline_command_in_the_docs_runs_on_the_shipped_fleet() {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_metalherd"));
    let path = format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut ran = BTreeSet::new();
    // cli.md is the reference (its headings name command groups).
    for page in pages().into_iter().filter(|p| !p.ends_with("cli.md")) {
        let body = std::fs::read_to_string(&page).unwrap();
        for span in body.split('`').skip(1).step_by(2) {
            let command = span.split_whitespace().collect::<Vec<_>>().join(" ");
            let Some(rest) = command.strip_prefix("metalherd ") else {
                continue;
            };
            // Placeholders (S, DIR), elisions and paths outside the fleet
            // are usage lines, not examples.
            let example = !rest.split(' ').any(|w| {
                w.len() <= 4 && w.chars().all(|c| c.is_ascii_uppercase())
                    || w.starts_with('/')
                    || w.starts_with('~')
                    || ["…", "|", "[", ">"].iter().any(|p| w.contains(p))
            });
            if !example || !OFFLINE.iter().any(|o| rest.starts_with(o)) {
                continue;
            }
            let fleet = super::example_fleet();
            let out = Command::new("bash")
                .args(["-c", &command])
                .current_dir(fleet.path())
                .env_clear()
                .env("PATH", &path)
                .output()
                .unwrap();
            let code = out.status.code();
            // A usage error (2) is prose naming a command (`metalherd
            // init` writes …), not an example; an example must work.
            if code == Some(2) {
                continue;
            }
            let fine = code == Some(0) || (rest.starts_with("plan") && code == Some(4));
            assert!(
                fine,
                "{}: `{command}` fails on the shipped fleet ({code:?}): {}{}",
                page.display(),
                text(&out.stdout),
                text(&out.stderr)
            );
            ran.insert(command);
        }
    }
    assert!(ran.len() >= 3, "only {ran:?} ran");
}
