//! Synthetic prepared datasets for tests and benchmarks (written with
//! `afm_format::shards::ShardWriter`, in the exact layout `afm data prepare`
//! produces): packed multi-agent trajectories with task prompts, agent
//! turns, tool observations and `<|end|>`, loss only on agent turns.

use afm_format::shards::{Row, ShardWriter};
use afm_format::SplitMix64;
use afm_tokenizer::{RoleTracker, RoleVocab, Tokenizer, END, OBS, TASK};
use anyhow::Context;
use std::path::Path;

/// Shape of a synthetic dataset.
#[derive(Debug, Clone)]
pub struct SyntheticSpec {
    /// Agent names (role vocabulary order).
    pub agents: Vec<String>,
    pub train_rows: usize,
    pub val_rows: usize,
    pub row_len: usize,
    /// Plain token ids are drawn from `0..n_plain` (small = learnable).
    pub n_plain: u32,
    pub seed: u64,
}

impl Default for SyntheticSpec {
    fn default() -> Self {
        Self {
            agents: vec!["Planner".into(), "Coder".into(), "Reviewer".into()],
            train_rows: 16,
            val_rows: 4,
            row_len: 64,
            n_plain: 200,
            seed: 0,
        }
    }
}

/// One trajectory: task, then each agent's turn (Coder turns followed by an
/// observation), then `<|end|>`.
fn trajectory(tok: &Tokenizer, rng: &mut SplitMix64, n_plain: u32) -> Vec<u32> {
    let mut t = vec![TASK];
    for _ in 0..2 + rng.below(3) {
        t.push(rng.below(n_plain as u64) as u32);
    }
    let agents = tok.roles().agents().to_vec();
    for (i, a) in agents.iter().enumerate() {
        t.push(tok.role_token(a).unwrap_or(TASK));
        // A deterministic pattern per agent so the data is learnable.
        let start = rng.below(n_plain as u64) as u32;
        for k in 0..3 + rng.below(4) as u32 {
            t.push((start + k * (i as u32 + 1)) % n_plain);
        }
        if i == 1 {
            t.push(OBS);
            for _ in 0..2 {
                t.push(rng.below(n_plain as u64) as u32);
            }
        }
    }
    t.push(END);
    t
}

/// Pack trajectories into rows: targets are next tokens of the same
/// document; loss weight 1 on targets inside agent turns (role id of the
/// target >= ROLE_FIRST_AGENT, and the `<|obs|>`/`<|end|>` an agent emits),
/// 0 on the task, observations, padding and each document's last token.
fn pack(
    tok: &Tokenizer,
    rng: &mut SplitMix64,
    rows: usize,
    row_len: usize,
    n_plain: u32,
) -> Vec<(Row, usize, usize)> {
    let mut out = Vec::new();
    for _ in 0..rows {
        let mut row = Row::default();
        let mut docs = 0usize;
        let mut real = 0usize;
        while row.len() < row_len {
            let doc = trajectory(tok, rng, n_plain);
            let roles = RoleTracker::roles_of(&doc);
            let take = doc.len().min(row_len - row.len());
            for i in 0..take {
                let target = if i + 1 < doc.len() { doc[i + 1] } else { 0 };
                // Owner: the role of the agent producing the target.
                let owner = if i + 1 < doc.len() {
                    let r = roles[i];
                    // The agent that emits a marker is the one speaking before it.
                    if r >= afm_tokenizer::ROLE_FIRST_AGENT {
                        r
                    } else {
                        0
                    }
                } else {
                    0
                };
                let w = if i + 1 < take && owner != 0 { 1.0 } else { 0.0 };
                row.tokens.push(doc[i]);
                row.targets.push(target);
                row.weights.push(w);
                row.roles.push(roles[i] as u16);
                row.owners.push(if w > 0.0 { owner as u16 } else { 0 });
                row.positions.push(i as u16);
                row.docs.push(docs as u16);
            }
            docs += 1;
            real += take;
        }
        out.push((row, real, docs));
    }
    out
}

/// Write `vocab.json`, `train.*` and (if `val_rows > 0`) `val.*` into `dir`.
/// Returns the tokenizer.
pub fn write_dataset(dir: &Path, spec: &SyntheticSpec) -> anyhow::Result<Tokenizer> {
    let tok = Tokenizer::new(RoleVocab::from_agents(spec.agents.iter().cloned())?);
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    afm_tokenizer::atomic::write(&dir.join("vocab.json"), tok.to_json())?;
    let mut rng = SplitMix64(spec.seed);
    for (split, rows) in [("train", spec.train_rows), ("val", spec.val_rows)] {
        if rows == 0 {
            continue;
        }
        let mut w = ShardWriter::create(dir, split, spec.row_len)?;
        for (row, real, docs) in pack(&tok, &mut rng, rows, spec.row_len, spec.n_plain) {
            w.push(&row, real, docs)?;
        }
        w.finish()?;
    }
    Ok(tok)
}
