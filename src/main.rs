//! The `metalherd` binary: everything lives in the library; see `cli`.

fn main() -> std::process::ExitCode {
    metalherd::cli::main()
}
