//! What the CLI test binaries share.

use std::process::Command;

/// Run the built `afm` with `args`: (success, stdout, stderr).
pub fn afm(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_afm"))
        .args(args)
        .output()
        .expect("running afm");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
