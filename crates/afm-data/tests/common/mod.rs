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

/// A record as afm's native JSON (`{"id","task","trajectory":[{"agent","output"|"observation"}],...}`),
/// for round trips through `Format::Native`.
pub fn native_json(t: &afm_format::Trajectory) -> serde_json::Value {
    let steps: Vec<serde_json::Value> = t
        .steps
        .iter()
        .map(|s| match s.kind {
            afm_format::StepKind::Agent => serde_json::json!({"agent": s.agent, "output": s.text}),
            afm_format::StepKind::Observation => {
                serde_json::json!({"agent": s.agent, "observation": s.text})
            }
        })
        .collect();
    let mut v = serde_json::json!({"id": t.id, "task": t.task, "trajectory": steps});
    let o = v.as_object_mut().unwrap();
    if let Some(b) = t.success {
        o.insert("success".into(), b.into());
    }
    if let Some(s) = t.score {
        o.insert("score".into(), s.into());
    }
    if let Some(a) = &t.answer {
        o.insert("answer".into(), a.clone().into());
    }
    if let Some(m) = &t.meta {
        o.insert("meta".into(), m.clone());
    }
    v
}

/// Loss weight (default agent weights) summed over the content targets
/// (markers excluded) of the task prompt and of each step: (task, per step).
pub fn loss_by_step(t: &afm_format::Trajectory) -> (f32, Vec<f32>) {
    use afm_format::layout::{encode_trajectory, is_marker, label, weights_of, AgentWeights};
    let mut roles = afm_tokenizer::RoleVocab::new();
    for s in &t.steps {
        if s.kind == afm_format::StepKind::Agent {
            roles.insert(&s.agent).unwrap();
        }
    }
    let tok = afm_tokenizer::Tokenizer::new(roles);
    let enc = encode_trajectory(&tok, t).unwrap();
    let l = label(&enc.tokens);
    let w = weights_of(&l.owners, &AgentWeights::default().table(&tok));
    let mut task = 0.0;
    let mut steps = vec![0.0; t.steps.len()];
    for j in 1..enc.tokens.len() {
        if is_marker(enc.tokens[j]) {
            continue;
        }
        match enc.turn_starts.iter().rposition(|&s| s <= j) {
            None => task += w[j - 1],
            Some(k) => steps[k] += w[j - 1],
        }
    }
    (task, steps)
}
