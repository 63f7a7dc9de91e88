//! Shared helpers: deterministic generated native records.
#![allow(dead_code)]

use std::io::Write;
use std::path::Path;

/// A small deterministic PRNG (no dependency).
pub struct Lcg(pub u64);
impl Lcg {
    pub fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One native record: Planner / Coder / python tool / Reviewer, task `task_id`.
pub fn native_record(id: usize, task_id: usize, rng: &mut Lcg) -> serde_json::Value {
    let a = rng.below(100);
    let b = rng.below(100);
    let mut traj = vec![
        serde_json::json!({"agent": "Planner", "output": format!("Add the two numbers {a} and {b}, then report the sum.")}),
    ];
    for k in 0..(1 + rng.below(3)) {
        traj.push(serde_json::json!({"agent": "Coder", "output": format!("x{k} = {a} + {b}\nprint(x{k})")}));
        traj.push(serde_json::json!({"agent": "python", "observation": format!("{}", a + b)}));
    }
    traj.push(serde_json::json!({"agent": "Reviewer", "output": format!("The result {} is correct.", a + b)}));
    serde_json::json!({
        "id": format!("r{id}"),
        "task": format!("Task {task_id}: what is {a} plus {b}?"),
        "trajectory": traj,
        "success": true,
        "answer": format!("{}", a + b),
    })
}

/// Write `n` records over `tasks` distinct tasks to a JSONL file.
pub fn write_native(path: &Path, n: usize, seed: u64) {
    let mut rng = Lcg(seed);
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for i in 0..n {
        let r = native_record(i, i, &mut rng);
        writeln!(f, "{r}").unwrap();
    }
}
