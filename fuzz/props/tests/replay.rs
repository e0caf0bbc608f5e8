//! Replays the committed fuzz inputs on stable: every file of
//! `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/` through the
//! target's property function (what libFuzzer runs under `make fuzz`).

use std::fs;
use std::path::Path;

#[test]
fn corpus_and_regressions_hold_every_property() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut total = 0;
    for (name, property) in ds_fuzz::TARGETS {
        let mut seeds = 0;
        for kind in ["corpus", "regressions"] {
            let dir = root.join(kind).join(name);
            let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            for entry in entries {
                let path = entry.expect("a directory entry").path();
                if path.file_name().is_some_and(|n| n == ".gitkeep") {
                    continue;
                }
                let data = fs::read(&path).expect("a committed input");
                let outcome = std::panic::catch_unwind(|| property(&data));
                assert!(outcome.is_ok(), "{name}: {} breaks a property", path.display());
                seeds += usize::from(kind == "corpus");
                total += 1;
            }
        }
        assert!(seeds > 0, "{name} has no seed corpus");
    }
    eprintln!("replayed {total} fuzz inputs");
}
