//! Long trajectories: `--max-tokens N` with `--long drop|truncate|window`.
//!
//! A *window* is `task prompt + a contiguous range of the trajectory`. The
//! first window is the trajectory's first `N` tokens. Each later window keeps
//! the task prompt, trains on about half its remaining budget of *new*
//! tokens, and fills the rest with as much recent history (context, no
//! loss) as fits, starting at a turn boundary when one is in reach. Window
//! ends snap to turn boundaries when possible. When context has to start in
//! the middle of a turn, that turn's marker is inserted first so every
//! token keeps its true role.
//!
//! Each original target position (position `g` predicting token `g+1`) is
//! trained in exactly one window: the windows' trained ranges are disjoint
//! and cover every weighted position of the whole document.

use afm_format::layout::{Doc, Encoded};

/// What to do with documents longer than `max_tokens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LongMode {
    /// Filter the trajectory out (reason `too_long`).
    Drop,
    /// Keep the first `max_tokens` tokens.
    Truncate,
    /// Split into windows that each keep the task prompt (default).
    #[default]
    Window,
}

impl std::str::FromStr for LongMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "drop" => Ok(Self::Drop),
            "truncate" => Ok(Self::Truncate),
            "window" => Ok(Self::Window),
            _ => Err(format!(
                "unknown --long mode {s:?} (drop, truncate, window)"
            )),
        }
    }
}

/// Why a long document produced nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TooLong {
    /// `--long drop` and the document is longer than `max_tokens`.
    Dropped,
    /// The task prompt alone leaves fewer than 4 tokens for the trajectory.
    PromptTooLong,
}

/// One window and the global positions it trains (for tests and stats).
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub doc: Doc,
    /// Global positions `[start, end)` of the full document trained here.
    pub trained: (usize, usize),
    /// First position of `doc` that is this window's own (not context):
    /// positions `new_from..len-1` are the ones trained here.
    pub new_from: usize,
}

/// Fit a formatted trajectory into `max_tokens`. `table` is the per-role weight table.
pub fn fit(
    enc: &Encoded,
    table: &[f32],
    max_tokens: usize,
    mode: LongMode,
) -> Result<Vec<Window>, TooLong> {
    let n = enc.tokens.len();
    if n <= max_tokens {
        return Ok(vec![Window {
            doc: Doc::new(enc.tokens.clone(), table),
            trained: (0, n.saturating_sub(1)),
            new_from: 0,
        }]);
    }
    match mode {
        LongMode::Drop => Err(TooLong::Dropped),
        LongMode::Truncate => {
            let doc = Doc::new(enc.tokens[..max_tokens].to_vec(), table);
            Ok(vec![Window {
                doc,
                trained: (0, max_tokens - 1),
                new_from: 0,
            }])
        }
        LongMode::Window => windows(enc, table, max_tokens),
    }
}

fn windows(enc: &Encoded, table: &[f32], max_tokens: usize) -> Result<Vec<Window>, TooLong> {
    let toks = &enc.tokens;
    let n = toks.len();
    let p = enc.prompt_len;
    if max_tokens < p + 4 {
        return Err(TooLong::PromptTooLong);
    }
    let budget = max_tokens - p; // tokens of trajectory range per window
    let full = Doc::new(toks.clone(), table);
    let starts = &enc.turn_starts;
    // Largest turn start in (lo, hi], else hi.
    let snap_end = |lo: usize, hi: usize| -> usize {
        if hi >= n {
            return n;
        }
        let k = starts.partition_point(|&s| s <= hi);
        match k.checked_sub(1).map(|j| starts[j]) {
            Some(s) if s > lo => s,
            _ => hi,
        }
    };
    let mut out = Vec::new();
    // First window: the document's first max_tokens tokens (snapped).
    let end = snap_end(p, p + budget);
    let doc = Doc::new(toks[..end].to_vec(), table);
    out.push(Window {
        doc,
        trained: (0, end - 1),
        new_from: 0,
    });
    let mut t0 = end - 1;
    let mut end = end;
    let new_budget = (budget / 2).max(1);
    while end < n {
        let end_n = snap_end(end, (t0 + 1 + new_budget).min(n));
        // Context: the earliest turn start in [end_n - budget, t0]; else mid-turn with a marker.
        let lo = end_n.saturating_sub(budget).max(p);
        let k = starts.partition_point(|&s| s < lo);
        let (ctx, synth) = match starts.get(k) {
            Some(&s) if s <= t0 => (s, None),
            _ => {
                let ctx = (end_n + 1).saturating_sub(budget).max(p).min(t0);
                let j = starts.partition_point(|&s| s <= ctx);
                let marker = toks[starts[j.saturating_sub(1)]];
                if starts.get(j.wrapping_sub(1)) == Some(&ctx) {
                    (ctx, None)
                } else {
                    (ctx, Some(marker))
                }
            }
        };
        let mut tokens = Vec::with_capacity(max_tokens);
        tokens.extend_from_slice(&toks[..p]);
        tokens.extend(synth);
        let off = tokens.len();
        tokens.extend_from_slice(&toks[ctx..end_n]);
        let mut doc = Doc::new(tokens, table);
        for k in 0..doc.len() {
            if k < off {
                doc.weights[k] = 0.0;
                continue;
            }
            let g = ctx + (k - off);
            doc.owners[k] = if g + 1 < end_n { full.owners[g] } else { 0 };
            doc.weights[k] = if g >= t0 && g + 1 < end_n {
                full.weights[g]
            } else {
                0.0
            };
        }
        out.push(Window {
            doc,
            trained: (t0, end_n - 1),
            new_from: off + (t0 - ctx),
        });
        t0 = end_n - 1;
        end = end_n;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use afm_format::layout::{encode_trajectory, AgentWeights};
    use afm_format::{Step, StepKind, Trajectory};
    use afm_tokenizer::{RoleVocab, Tokenizer};

    fn long_traj(turns: usize, giant: bool) -> Trajectory {
        let mut steps = Vec::new();
        for i in 0..turns {
            let (agent, kind) = match i % 3 {
                0 => ("Planner", StepKind::Agent),
                1 => ("Coder", StepKind::Agent),
                _ => ("python_tool", StepKind::Observation),
            };
            let text = if giant && i == 4 {
                " word".repeat(300)
            } else {
                format!(" step {i} says something about {}", "x ".repeat(i % 7))
            };
            steps.push(Step {
                agent: agent.into(),
                kind,
                text,
            });
        }
        Trajectory {
            id: "t".into(),
            task: "a task prompt of a few tokens".into(),
            steps,
            success: None,
            score: None,
            answer: None,
            meta: None,
        }
    }

    fn check_windows(giant: bool, max: usize) {
        let tok = Tokenizer::new(RoleVocab::from_agents(["Planner", "Coder"]).unwrap());
        let table = AgentWeights::default().table(&tok);
        let enc = encode_trajectory(&tok, &long_traj(30, giant)).unwrap();
        let full = Doc::new(enc.tokens.clone(), &table);
        let ws = fit(&enc, &table, max, LongMode::Window).unwrap();
        assert!(ws.len() > 2);
        // Each global position is trained at most once, and all weighted positions are covered.
        let mut trained = vec![0u32; enc.tokens.len()];
        let mut loss = 0.0f32;
        for w in &ws {
            assert!(w.doc.len() <= max, "window of {} > {max}", w.doc.len());
            assert_eq!(
                &w.doc.tokens[..enc.prompt_len],
                &enc.tokens[..enc.prompt_len],
                "keeps the task prompt"
            );
            assert_eq!(*w.doc.weights.last().unwrap(), 0.0);
            for g in w.trained.0..w.trained.1 {
                trained[g] += 1;
            }
            loss += w.doc.weights.iter().sum::<f32>();
            // Roles always follow the tracker.
            assert_eq!(
                w.doc.roles,
                afm_tokenizer::RoleTracker::roles_of(&w.doc.tokens),
            );
        }
        assert!(trained.iter().all(|&c| c <= 1), "a position trained twice");
        for (g, &w) in full.weights.iter().enumerate() {
            if w > 0.0 {
                assert_eq!(trained[g], 1, "weighted position {g} never trained");
            }
        }
        assert_eq!(
            loss,
            full.weights.iter().sum::<f32>(),
            "same total loss weight as the full document"
        );
        // Later windows carry context (not only new tokens) when turns are short.
        if !giant {
            assert!(
                ws[1].trained.0 > enc.prompt_len
                    && ws[1].doc.len() > enc.prompt_len + (ws[1].trained.1 - ws[1].trained.0) + 1
            );
        }
    }

    #[test]
    fn windows_never_train_a_turn_twice() {
        for max in [48, 64, 100, 200] {
            check_windows(false, max);
            check_windows(true, max);
        }
    }

    #[test]
    fn drop_truncate_and_short() {
        let tok = Tokenizer::new(RoleVocab::from_agents(["Planner", "Coder"]).unwrap());
        let table = AgentWeights::default().table(&tok);
        let enc = encode_trajectory(&tok, &long_traj(10, false)).unwrap();
        assert_eq!(fit(&enc, &table, 20, LongMode::Drop), Err(TooLong::Dropped));
        let t = fit(&enc, &table, 20, LongMode::Truncate).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].doc.tokens, enc.tokens[..20].to_vec());
        let s = fit(&enc, &table, 10_000, LongMode::Drop).unwrap();
        assert_eq!(s[0].doc.tokens, enc.tokens);
        assert_eq!(
            fit(&enc, &table, enc.prompt_len + 2, LongMode::Window),
            Err(TooLong::PromptTooLong)
        );
    }
}
