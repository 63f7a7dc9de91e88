//! Fuzz the agents' tool (the bounded interpreter) on arbitrary programs:
//! `cargo xtask fuzz` (or `cargo +nightly fuzz run tool`).
//!
//! Invariants: no panic; fuel ends every run before the wall-clock backstop
//! under the default limits; the same program gives the same observation.
#![no_main]

use afm_tasks::{run_program, run_to_observation, Limits, ToolError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    let limits = Limits::default();
    let r = run_program(src, &limits);
    assert!(
        !matches!(r, Err(ToolError::Timeout { .. })),
        "escaped fuel: {src:?}"
    );
    assert_eq!(run_to_observation(src, &limits), run_to_observation(src, &limits));
});
