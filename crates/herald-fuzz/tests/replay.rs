//! Replays the checked-in corpus and every former finding through each target (no fuzzer:
//! the plain functions). Fast: it runs in CI on every change.

use std::path::Path;

fn inputs(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<_> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().is_file())
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(e.path()).expect("readable"))
        })
        .collect();
    out.sort();
    out
}

#[test]
fn every_target_survives_its_corpus_and_former_findings() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut total = 0;
    for (name, target) in herald_fuzz::TARGETS {
        let corpus = inputs(&root.join("corpus").join(name));
        assert!(!corpus.is_empty(), "no corpus for {name}");
        for (file, bytes) in corpus
            .iter()
            .chain(inputs(&root.join("regressions").join(name)).iter())
        {
            let outcome = std::panic::catch_unwind(|| target(bytes));
            assert!(outcome.is_ok(), "{name} fails on {file}");
            total += 1;
        }
    }
    eprintln!("replayed {total} inputs");
}
