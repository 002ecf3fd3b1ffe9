//! The libFuzzer runner: `HERALD_FUZZ_TARGET=<target> herald-fuzz [libFuzzer options]
//! corpus/<target>`. Built by `scripts/fuzz` with the sanitizer-coverage flags.

#![no_main]

use std::sync::OnceLock;

static TARGET: OnceLock<fn(&[u8])> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let target = TARGET.get_or_init(|| {
        let name = std::env::var("HERALD_FUZZ_TARGET").unwrap_or_default();
        herald_fuzz::target(&name).unwrap_or_else(|| {
            let names: Vec<_> = herald_fuzz::TARGETS.iter().map(|(n, _)| *n).collect();
            eprintln!("set HERALD_FUZZ_TARGET to one of: {}", names.join(", "));
            std::process::exit(2)
        })
    });
    target(data);
});
