//! `cargo xtask fuzz --minutes N`: every cargo-fuzz target in `fuzz/`, the
//! time split evenly between them. libFuzzer needs a nightly toolchain
//! (`-Z sanitizer`); without one the verb says so and fails, it never
//! pretends to have fuzzed.

use crate::setup::root;
use std::process::Command;

/// Parse `--minutes N` (default 1; fractions allowed).
fn minutes(rest: &[String]) -> Result<f64, String> {
    let mut m = 1.0;
    let mut it = rest.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--minutes" => {
                let v = it.next().ok_or("--minutes needs a value")?;
                m = v
                    .parse::<f64>()
                    .map_err(|_| format!("--minutes {v:?}: not a number"))?;
            }
            other => return Err(format!("unknown argument `{other}` (use --minutes N)")),
        }
    }
    if !(m.is_finite() && m > 0.0) {
        return Err(format!("--minutes must be a positive number, got {m}"));
    }
    Ok(m)
}

/// The targets: one per `fuzz/fuzz_targets/*.rs`, sorted.
pub fn targets() -> Result<Vec<String>, String> {
    let dir = root().join("fuzz").join("fuzz_targets");
    let rd = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut t: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let p = e.path();
            (p.extension()? == "rs").then(|| p.file_stem()?.to_str().map(str::to_string))?
        })
        .collect();
    t.sort();
    Ok(t)
}

fn works(cmd: &mut Command) -> bool {
    cmd.output().map(|o| o.status.success()).unwrap_or(false)
}

pub fn fuzz(rest: &[String]) -> Result<(), String> {
    let minutes = minutes(rest)?;
    if !works(Command::new("cargo").args(["+nightly", "--version"])) {
        return Err("no nightly toolchain: libFuzzer (cargo-fuzz) needs one. \
             Install it with `rustup toolchain install nightly`; nothing was fuzzed"
            .into());
    }
    if !works(Command::new("cargo").args(["+nightly", "fuzz", "--version"])) {
        eprintln!("xtask: cargo-fuzz is missing; installing it from crates.io (once)");
        crate::setup::run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    let targets = targets()?;
    if targets.is_empty() {
        return Err("fuzz/fuzz_targets holds no target".into());
    }
    let secs = ((minutes * 60.0) / targets.len() as f64).ceil().max(1.0) as u64;
    for t in &targets {
        eprintln!("xtask: fuzzing `{t}` for {secs} s");
        let mut c = Command::new("cargo");
        c.current_dir(root()).args([
            "+nightly",
            "fuzz",
            "run",
            t,
            "--",
            &format!("-max_total_time={secs}"),
        ]);
        crate::setup::run(&mut c)?;
    }
    eprintln!(
        "xtask: fuzzed {} target(s) ({}) for {secs} s each; no crash",
        targets.len(),
        targets.join(", ")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minutes_are_parsed_and_checked() {
        assert_eq!(minutes(&[]).unwrap(), 1.0);
        let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(minutes(&a(&["--minutes", "2.5"])).unwrap(), 2.5);
        assert!(minutes(&a(&["--minutes", "NaN"])).is_err());
        assert!(minutes(&a(&["--minutes", "0"])).is_err());
        assert!(minutes(&a(&["--minutes"])).is_err());
        assert!(minutes(&a(&["--seconds", "3"])).is_err());
    }

    #[test]
    fn every_fuzz_target_is_found() {
        let t = targets().unwrap();
        assert!(t.contains(&"parse".to_string()), "{t:?}");
        assert!(t.contains(&"tool".to_string()), "{t:?}");
    }
}
