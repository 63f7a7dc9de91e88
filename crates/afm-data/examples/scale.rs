//! Scale run: generate N native trajectories (streamed to a JSONL file),
//! then run the whole `prepare` pipeline on them and print timings.
//!
//! ```sh
//! cargo build --release -p afm-data --example scale
//! /usr/bin/time -v target/release/examples/scale 1000000 /tmp/afm-scale
//! ```
//! Peak RSS is what `/usr/bin/time -v` reports ("Maximum resident set size").

use afm_data::{prepare_with, PrepareConfig};
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().unwrap_or_else(|| "100000".into()).parse()?;
    let dir = PathBuf::from(args.next().unwrap_or_else(|| "/tmp/afm-scale".into()));
    std::fs::create_dir_all(&dir)?;
    let input = dir.join("gen.jsonl");
    let t0 = Instant::now();
    let mut f = std::io::BufWriter::new(std::fs::File::create(&input)?);
    let mut x = 42u64;
    let mut next = |m: u64| {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 33) % m
    };
    for i in 0..n {
        let (a, b) = (next(1000), next(1000));
        let mut traj = vec![
            serde_json::json!({"agent": "Planner", "output": format!("Add {a} and {b} with the tool, then check the sum.")}),
        ];
        for k in 0..1 + next(3) {
            traj.push(serde_json::json!({"agent": "Coder", "output": format!("total_{k} = {a} + {b}\nprint(total_{k})")}));
            traj.push(
                serde_json::json!({"agent": "Interpreter", "observation": format!("{}", a + b)}),
            );
        }
        traj.push(serde_json::json!({"agent": "Reviewer", "output": format!("Checked. ANSWER: {}", a + b)}));
        let r = serde_json::json!({"id": format!("g{i}"), "task": format!("Record {i}: what is {a} + {b}?"), "trajectory": traj, "success": next(10) > 0});
        writeln!(f, "{r}")?;
    }
    f.flush()?;
    drop(f);
    let bytes = std::fs::metadata(&input)?.len();
    eprintln!(
        "generated {n} records ({:.1} MB) in {:.1}s",
        bytes as f64 / 1e6,
        t0.elapsed().as_secs_f64()
    );
    let cfg = PrepareConfig {
        inputs: vec![input],
        out: dir.join("out"),
        ..Default::default()
    };
    let t1 = Instant::now();
    let m = prepare_with(&cfg, &|_| {}, None)?;
    let secs = t1.elapsed().as_secs_f64();
    print!("{}", m.table());
    println!(
        "prepare: {n} records, {} tokens in {secs:.1}s ({:.0} records/s, {:.2} M tokens/s)",
        m.tokens,
        n as f64 / secs,
        m.tokens as f64 / secs / 1e6
    );
    Ok(())
}
