//! The `herald` binary. All behaviour lives in the library; see `herald_server::cli`.

fn main() -> std::process::ExitCode {
    herald_server::cli::main()
}
