//! The scripted reference system: the rule-based Planner, Coder and
//! Reviewer of `afm-tasks` (the system whose trajectories are the training
//! data), measured on the same held-out tasks as the two trained systems.
//!
//! The agents are `afm_tasks::solve` with the default dataset's settings
//! ([`afm_tasks::default_dataset_config`], the error rates listed in
//! `datasets/README.md`), only the seed replaced, exactly as
//! `afm agents run --scripted` runs them. Success is what `solve` reports:
//! `afm_tasks::verify` on the extracted final answer, never assumed.
//!
//! The scripted agents run no model, so tokens are counted as a multi-agent
//! system of LMs would pay for the same turns, with the MAS runtime's rules
//! (`afm_agents::mas`, [`afm_agents::RunStats`]) and the GPT-2 BPE tokenizer
//! plus afm's marker tokens, laid out by the one format rule
//! (`afm_format::layout`): each agent call reads the whole context so far
//! plus its role token, and writes its output plus the marker that ends it.

use crate::report::SystemMetrics;
use afm_format::layout;
use afm_tasks::{default_dataset_config, solve, AgentConfig, Task, Trajectory, LM_AGENTS};
use afm_tokenizer::{RoleVocab, Tokenizer};
use anyhow::Context;

/// Run the scripted agents on `tasks` with the default dataset's error rates
/// and `seed` (each task draws its mistakes from its own stream `(seed, task
/// id)`, so a task's run does not depend on the other tasks), and measure
/// them like the trained systems.
///
/// What the returned metrics hold:
///
/// - `tasks`, `success_rate`: tasks run, and the fraction whose final answer
///   the verifier accepts.
/// - `calls`: agent turns (Planner, Coder, Reviewer outputs), one model call
///   each in a multi-agent system.
/// - `tool_calls`: interpreter turns (one per Coder turn).
/// - `tokens_prefill`: per agent turn, the tokens of its input: the whole
///   context so far (`<|task|>` + task, then every earlier turn as a role
///   token or `<|obs|>` + its text) plus the agent's role token. Observations
///   are not counted when they arrive, only when the next call re-reads them
///   (as the MAS counts them).
/// - `tokens_decode`: per agent turn, the tokens of its output plus one for
///   the marker token that ends the turn.
/// - `latency_ms_p50`/`p95`: NaN, and `throughput_tasks_per_s` empty: the
///   rule-based agents take microseconds, not comparable with a model.
/// - `models`, `memory_bytes`, `cost`: 0 (no model runs; apply a
///   [`crate::price::PriceTable`] to the tokens and calls to price them as
///   if they did).
///
/// Text is encoded with GPT-2 BPE (`r50k_base`, [`Tokenizer`]); each marker
/// (`<|task|>`, `<|obs|>`, `<|agent:X|>`, `<|end|>`) is one token.
///
/// An error when a task has no reference solution (an unknown op or
/// malformed inputs), naming it.
pub fn scripted_reference(tasks: &[Task], seed: u64) -> anyhow::Result<SystemMetrics> {
    let cfg = AgentConfig {
        seed,
        ..default_dataset_config()
    };
    let tok = Tokenizer::new(RoleVocab::from_agents(LM_AGENTS)?);
    let mut m = SystemMetrics {
        tasks: tasks.len(),
        latency_ms_p50: f64::NAN,
        latency_ms_p95: f64::NAN,
        ..SystemMetrics::default()
    };
    let mut successes = 0usize;
    for task in tasks {
        let tr = solve(task, &cfg).with_context(|| {
            format!(
                "task {}: no reference solution for the scripted agents (family {:?}, op {:?})",
                task.id, task.family, task.op
            )
        })?;
        successes += usize::from(tr.success);
        let c = count_turns(&tok, &tr)?;
        m.tokens_prefill += c.tokens_prefill;
        m.tokens_decode += c.tokens_decode;
        m.calls += c.calls;
        m.tool_calls += c.tool_calls;
    }
    m.success_rate = if tasks.is_empty() {
        0.0
    } else {
        successes as f64 / tasks.len() as f64
    };
    Ok(m)
}

/// Token, call and tool-call counts of one trajectory.
#[derive(Debug, Default, PartialEq)]
struct Counts {
    tokens_prefill: u64,
    tokens_decode: u64,
    calls: u64,
    tool_calls: u64,
}

/// Count one trajectory as [`scripted_reference`] documents.
fn count_turns(tok: &Tokenizer, tr: &Trajectory) -> anyhow::Result<Counts> {
    let mut c = Counts::default();
    let mut context = layout::encode_task(tok, &tr.task).len() as u64;
    for turn in &tr.trajectory {
        if let Some(output) = &turn.output {
            let encoded = layout::encode_agent_turn(tok, &turn.agent, output)?.len() as u64;
            c.calls += 1;
            c.tokens_prefill += context + 1; // the context + the role token
            c.tokens_decode += encoded; // the output (role token excluded) + the end marker
            context += encoded;
        } else {
            c.tool_calls += 1;
            context += layout::encode_observation(tok, turn.text()).len() as u64;
        }
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use afm_agents::mas::{run_tasks, MasLms};
    use afm_agents::RunOptions;
    use afm_agents::{Lm, Policy, ScriptedLm};
    use std::sync::Arc;

    fn test_tasks(n: usize) -> Vec<Task> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../datasets/tasks/test.jsonl"
        );
        let mut tasks = afm_tasks::load_tasks(path.as_ref()).unwrap();
        tasks.truncate(n);
        assert_eq!(tasks.len(), n, "{path} has fewer than {n} tasks");
        tasks
    }

    #[test]
    fn scripted_agents_mostly_succeed_and_are_deterministic() {
        let tasks = test_tasks(20);
        let a = scripted_reference(&tasks, afm_tasks::DEFAULT_DATASET_SEED).unwrap();
        let b = scripted_reference(&tasks, afm_tasks::DEFAULT_DATASET_SEED).unwrap();
        assert!(a.success_rate > 0.5, "{a:?}");
        assert_eq!(a.tasks, 20);
        // NaN latencies: compare everything else.
        let strip = |m: &SystemMetrics| SystemMetrics {
            latency_ms_p50: 0.0,
            latency_ms_p95: 0.0,
            ..m.clone()
        };
        assert_eq!(strip(&a), strip(&b));
        assert!(a.latency_ms_p50.is_nan() && a.latency_ms_p95.is_nan());
        // Planner, Coder, Reviewer at least once per task; one tool call per Coder turn.
        assert!(a.calls >= 60, "{a:?}");
        assert!(a.tool_calls >= 20 && a.tool_calls < a.calls, "{a:?}");
        assert!(a.tokens_prefill > a.tokens_decode && a.tokens_decode > a.calls);
        assert_eq!((a.models, a.memory_bytes, a.cost), (0, 0, 0.0));
    }

    #[test]
    fn seeds_draw_different_mistakes() {
        let tasks = test_tasks(200);
        let a = scripted_reference(&tasks, 1).unwrap();
        let b = scripted_reference(&tasks, 2).unwrap();
        assert_ne!((a.calls, a.tokens_decode), (b.calls, b.tokens_decode));
    }

    #[test]
    fn empty_task_list_measures_nothing() {
        let m = scripted_reference(&[], 0).unwrap();
        assert_eq!((m.tasks, m.success_rate, m.calls), (0, 0.0, 0));
    }

    #[test]
    fn unsolvable_task_is_an_error_naming_it() {
        let mut task = test_tasks(1).remove(0);
        task.op = "no-such-op".into();
        task.id = "odd-one".into();
        let e = scripted_reference(&[task], 0).unwrap_err();
        assert!(format!("{e:#}").contains("odd-one"), "{e:#}");
    }

    /// A scripted "model" for `agent` that replays `tr`: asked in a context
    /// holding `k` role tokens of `agent`, it emits the agent's `k`-th output
    /// of the trajectory and `<|end|>`.
    fn replay(tok: &Tokenizer, tr: &Trajectory, agent: &str) -> ScriptedLm {
        let role = tok.role_token(agent).unwrap();
        let outputs: Vec<Vec<u32>> = tr
            .trajectory
            .iter()
            .filter(|t| t.agent == agent)
            .filter_map(|t| t.output.as_deref())
            .map(|o| layout::encode_agent_turn(tok, agent, o).unwrap()[1..].to_vec())
            .collect();
        let policy: Policy = Arc::new(move |fed: &[u32]| {
            let k = fed.iter().filter(|&&t| t == role).count();
            let mut out = outputs[k - 1].clone();
            out.push(afm_tokenizer::END);
            out
        });
        ScriptedLm::new(tok.clone(), 1 << 16, policy)
    }

    /// The counts are the MAS runtime's own: the multi-agent runtime, driven
    /// by models that replay the scripted agents' turns, reports the same
    /// tokens, calls, tool calls and outcome.
    #[test]
    fn counts_match_the_mas_runtime_replaying_the_scripted_turns() {
        let tok = Tokenizer::new(RoleVocab::from_agents(LM_AGENTS).unwrap());
        let cfg = default_dataset_config();
        let mut retried = 0;
        for task in test_tasks(40) {
            let tr = solve(&task, &cfg).unwrap();
            retried += usize::from(tr.meta.attempts > 1);
            let lms: Vec<ScriptedLm> = LM_AGENTS.iter().map(|a| replay(&tok, &tr, a)).collect();
            let mas = MasLms::new(
                LM_AGENTS
                    .iter()
                    .zip(&lms)
                    .map(|(a, lm)| (a.to_string(), lm as &dyn Lm)),
            )
            .unwrap();
            let runs = run_tasks(
                &mas,
                std::slice::from_ref(&task),
                &RunOptions::default(),
                &mut |_| {},
            )
            .unwrap();
            let run = &runs[0];
            assert_eq!(run.trajectory, tr.trajectory, "{}", task.id);
            assert_eq!(run.success, tr.success, "{}", task.id);
            let s = &run.stats;
            let expected = Counts {
                tokens_prefill: s.tokens_prefill as u64,
                tokens_decode: s.tokens_decode as u64,
                calls: s.calls as u64,
                tool_calls: s.tool_calls as u64,
            };
            assert_eq!(count_turns(&tok, &tr).unwrap(), expected, "{}", task.id);
        }
        assert!(retried > 0, "no task with a Reviewer retry among the 40");
    }
}
