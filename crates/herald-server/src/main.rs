//! The `herald` binary. All behaviour lives in the library; see `herald_server::cli`.

/// jemalloc, unless built with `--no-default-features` (see the `jemalloc` feature).
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    herald_server::cli::main()
}
