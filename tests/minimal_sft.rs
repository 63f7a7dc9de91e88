//! The minimal SFT example (`examples/minimal_sft.rs`) compiles against the
//! crates' public API and runs end to end: data, a few training steps,
//! generation on held-out tasks.

#[allow(dead_code)]
#[path = "../examples/minimal_sft.rs"]
mod minimal_sft;

use std::io::{BufRead, Write};

#[test]
fn the_minimal_sft_example_runs_end_to_end() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    // The first 300 shipped trajectories keep the test short.
    let src = std::fs::File::open(root.join("datasets/scripted/train.jsonl")).unwrap();
    let small = tmp.path().join("trajectories.jsonl");
    let mut out = std::fs::File::create(&small).unwrap();
    for line in std::io::BufReader::new(src).lines().take(300) {
        writeln!(out, "{}", line.unwrap()).unwrap();
    }
    drop(out);
    let rate = minimal_sft::run(
        &small,
        &root.join("datasets/tasks/test.jsonl"),
        4,
        4,
        &tmp.path().join("work"),
    )
    .unwrap();
    assert!((0.0..=1.0).contains(&rate), "success rate {rate}");
    let run = tmp.path().join("work/run");
    assert!(run.join("final").is_dir() && run.join("summary.json").is_file());
    let prepared = tmp.path().join("work/prepared");
    assert!(prepared.join("manifest.json").is_file());
}
