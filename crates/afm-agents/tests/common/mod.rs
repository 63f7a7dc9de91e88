//! Shared helpers of the integration tests: real tasks, and scripted
//! policies that play a correct (or first-wrong) Planner/Coder/Reviewer chain.
#![allow(dead_code)]

use afm_agents::mas::{self, MasLms};
use afm_agents::Task;
use afm_agents::{Lm, Policy, ScriptedLm};
use afm_agents::{RunOptions, TaskRun};
use afm_tokenizer::{RoleVocab, Tokenizer, END, OBS, TASK};
use std::collections::HashMap;
use std::sync::Arc;

pub fn tok() -> Tokenizer {
    Tokenizer::new(RoleVocab::from_agents(["Planner", "Coder", "Reviewer"]).unwrap())
}

pub fn tasks(n: usize) -> Vec<Task> {
    let (train, _) = afm_tasks::generate(11, n, 0).unwrap();
    assert_eq!(train.len(), n);
    train
}

pub fn role(t: &Tokenizer, a: &str) -> u32 {
    t.role_token(a).unwrap()
}

/// The task prompt tokens (`<|task|>` + segment) at the start of a context.
pub fn prompt_of(ctx: &[u32]) -> Vec<u32> {
    assert_eq!(ctx[0], TASK);
    let end = ctx
        .iter()
        .position(|&x| x >= afm_tokenizer::FIRST_ROLE_TOKEN || x == OBS)
        .unwrap_or(ctx.len());
    ctx[..end].to_vec()
}

/// Text of the last observation in a context (after the last `<|obs|>`, up
/// to the next special token or the end).
pub fn last_obs(t: &Tokenizer, ctx: &[u32]) -> String {
    let at = ctx.iter().rposition(|&x| x == OBS).unwrap() + 1;
    let end = ctx[at..]
        .iter()
        .position(|&x| t.is_special(x))
        .map_or(ctx.len(), |p| at + p);
    afm_format::layout::decode_segment(t, &ctx[at..end]).unwrap()
}

/// Plan and (correct) program of each task, keyed by its prompt tokens.
pub fn solutions(t: &Tokenizer, tasks: &[Task]) -> Arc<HashMap<Vec<u32>, (String, String)>> {
    Arc::new(
        tasks
            .iter()
            .map(|task| {
                let s = afm_tasks::solution(task).unwrap();
                (
                    afm_format::layout::encode_task(t, &task.prompt),
                    (s.plan, s.program),
                )
            })
            .collect(),
    )
}

/// `segment(text)`: a turn's text as the format rule encodes it.
pub fn seg(t: &Tokenizer, text: &str) -> Vec<u32> {
    let mut v = Vec::new();
    afm_format::layout::encode_segment_into(t, text, &mut v);
    v
}

pub fn enc(t: &Tokenizer, first: Option<u32>, text: &str, last: u32) -> Vec<u32> {
    let mut v: Vec<u32> = first.into_iter().collect();
    v.extend(seg(t, text));
    v.push(last);
    v
}

/// A scripted AFM: plan, program, `<|obs|>`; then after the observation a
/// Reviewer turn that copies the observation it was fed as the answer.
/// With `wrong_first`, the first program is broken and the Reviewer asks
/// for a revision after an error observation.
pub fn afm_policy(
    t: Tokenizer,
    sols: Arc<HashMap<Vec<u32>, (String, String)>>,
    wrong_first: bool,
) -> Policy {
    Arc::new(move |ctx: &[u32]| {
        let (plan, prog) = &sols[&prompt_of(ctx)];
        let n_obs = ctx.iter().filter(|&&x| x == OBS).count();
        if n_obs == 0 {
            let first_prog = if wrong_first { "1 +" } else { prog.as_str() };
            let mut v = enc(&t, Some(role(&t, "Planner")), plan, role(&t, "Coder"));
            v.extend(enc(&t, None, first_prog, OBS));
            return v;
        }
        let obs = last_obs(&t, ctx);
        if obs.starts_with("error:") {
            let mut v = enc(
                &t,
                Some(role(&t, "Reviewer")),
                "REVISE: fix the program",
                role(&t, "Coder"),
            );
            v.extend(enc(&t, None, prog, OBS));
            return v;
        }
        enc(
            &t,
            Some(role(&t, "Reviewer")),
            &format!("Checked. ANSWER: {obs}"),
            END,
        )
    })
}

/// The same chain played by three scripted per-agent models.
pub fn mas_policies(
    t: &Tokenizer,
    sols: Arc<HashMap<Vec<u32>, (String, String)>>,
    wrong_first: bool,
) -> [(String, Policy); 3] {
    let (t1, t2, t3) = (t.clone(), t.clone(), t.clone());
    let (s1, s2) = (sols.clone(), sols);
    [
        (
            "Planner".into(),
            Arc::new(move |ctx: &[u32]| enc(&t1, None, &s1[&prompt_of(ctx)].0, role(&t1, "Coder")))
                as Policy,
        ),
        (
            "Coder".into(),
            Arc::new(move |ctx: &[u32]| {
                let first = !ctx.contains(&OBS);
                let prog = if wrong_first && first {
                    "1 +"
                } else {
                    s2[&prompt_of(ctx)].1.as_str()
                };
                enc(&t2, None, prog, OBS)
            }),
        ),
        (
            "Reviewer".into(),
            Arc::new(move |ctx: &[u32]| {
                let obs = last_obs(&t3, ctx);
                if obs.starts_with("error:") {
                    enc(&t3, None, "REVISE: fix the program", role(&t3, "Coder"))
                } else {
                    enc(&t3, None, &format!("Checked. ANSWER: {obs}"), END)
                }
            }),
        ),
    ]
}

pub fn run_mas(lms: &[(String, ScriptedLm)], tasks: &[Task], opts: &RunOptions) -> Vec<TaskRun> {
    let mas = MasLms::new(lms.iter().map(|(a, lm)| (a.clone(), lm as &dyn Lm))).unwrap();
    mas::run_tasks(&mas, tasks, opts, &mut |_| {}).unwrap()
}

pub fn scripted_mas(
    t: &Tokenizer,
    tasks: &[Task],
    n_ctx: usize,
    wrong_first: bool,
) -> Vec<(String, ScriptedLm)> {
    mas_policies(t, solutions(t, tasks), wrong_first)
        .into_iter()
        .map(|(a, p)| (a, ScriptedLm::new(t.clone(), n_ctx, p)))
        .collect()
}

pub fn strip_timing(mut runs: Vec<TaskRun>) -> Vec<TaskRun> {
    for r in &mut runs {
        r.stats.latency_ms = 0.0;
        r.stats.batch_latency_ms = 0.0;
        r.stats.finish_ms = 0.0;
        r.stats.batch_size = 0;
    }
    runs
}
