//! Mechanics of both runtimes with scripted models (no weights): tool calls
//! run the real interpreter, observations are injected, answers are
//! extracted and verified, and the accounting is exact.

mod common;
use afm_agents::ScriptedLm;
use afm_agents::{afm, RunOptions};
use common::*;

#[test]
fn afm_tool_call_injects_the_real_observation() {
    let t = tok();
    let tasks = tasks(3);
    let lm = ScriptedLm::new(
        t.clone(),
        1024,
        afm_policy(t.clone(), solutions(&t, &tasks), false),
    );
    let runs = afm::run_batch_lm(&lm, &tasks, &RunOptions::default()).unwrap();
    for (run, task) in runs.iter().zip(&tasks) {
        let sol = afm_tasks::solution(task).unwrap();
        let obs = afm_tasks::run_to_observation(&sol.program, &afm_tasks::Limits::default());
        let agents: Vec<&str> = run.trajectory.iter().map(|x| x.agent.as_str()).collect();
        assert_eq!(
            agents,
            ["Planner", "Coder", "Interpreter", "Reviewer"],
            "{run:?}"
        );
        assert_eq!(
            run.trajectory[1].output.as_deref(),
            Some(sol.program.as_str())
        );
        assert_eq!(run.trajectory[2].observation.as_deref(), Some(obs.as_str()));
        // The Reviewer's answer was read from the injected observation.
        assert_eq!(run.answer.as_deref(), Some(obs.as_str()));
        assert!(run.success, "{run:?}");
        assert!(afm_tasks::verify(task, run.answer.as_deref().unwrap()));
        assert_eq!(run.failure, None);
        assert_eq!((run.stats.tool_calls, run.stats.tool_successes), (1, 1));
        assert_eq!(run.validity["Coder"].valid, 1);
        assert_eq!(run.validity["Reviewer"].valid, 1);
        assert_eq!(run.validity["Interpreter"].valid, 1);
    }
}

/// Exact accounting of one scripted chain, AFM and MAS.
#[test]
fn accounting_is_exact_and_mas_prefills_more() {
    let t = tok();
    let tasks = tasks(2);
    let opts = RunOptions::default();
    let lm = ScriptedLm::new(
        t.clone(),
        1024,
        afm_policy(t.clone(), solutions(&t, &tasks), false),
    );
    let afm_runs = afm::run_batch_lm(&lm, &tasks, &opts).unwrap();
    let mas_runs = run_mas(&scripted_mas(&t, &tasks, 1024, false), &tasks, &opts);
    for ((a, m), task) in afm_runs.iter().zip(&mas_runs).zip(&tasks) {
        let sol = afm_tasks::solution(task).unwrap();
        let obs = afm_tasks::run_to_observation(&sol.program, &afm_tasks::Limits::default());
        let review = format!("Checked. ANSWER: {obs}");
        let p = 1 + seg(&t, &task.prompt).len();
        let (lp, lc, lo, lr) = (
            seg(&t, &sol.plan).len(),
            seg(&t, &sol.program).len(),
            seg(&t, &obs).len(),
            seg(&t, &review).len(),
        );
        // AFM: one call; prefill = prompt + observation text (its `<|obs|>`
        // was sampled); decode = 3 role tokens + texts + `<|obs|>` + `<|end|>`.
        assert_eq!(a.stats.calls, 1);
        assert_eq!(a.stats.tokens_prefill, p + lo);
        assert_eq!(a.stats.tokens_decode, 3 + lp + lc + lr + 2);
        // MAS: one call per turn, each re-reading the whole context.
        let c1 = p + 1;
        let c2 = p + 1 + lp + 1;
        let c3 = p + 1 + lp + 1 + lc + 1 + lo + 1;
        assert_eq!(m.stats.calls, 3);
        assert_eq!(m.stats.tokens_prefill, c1 + c2 + c3);
        assert_eq!(m.stats.tokens_decode, lp + 1 + lc + 1 + lr + 1);
        assert!(m.stats.tokens_prefill > a.stats.tokens_prefill);
        // Same chain, same answer, same trajectory.
        assert_eq!(a.trajectory, m.trajectory);
        assert_eq!(a.answer, m.answer);
        assert!(a.success && m.success);
        assert_eq!(m.runtime, "mas");
    }
}

#[test]
fn reviewer_revision_sends_the_coder_back() {
    let t = tok();
    let tasks = tasks(2);
    let opts = RunOptions::default();
    let lm = ScriptedLm::new(
        t.clone(),
        1024,
        afm_policy(t.clone(), solutions(&t, &tasks), true),
    );
    let afm_runs = afm::run_batch_lm(&lm, &tasks, &opts).unwrap();
    let mas_runs = run_mas(&scripted_mas(&t, &tasks, 1024, true), &tasks, &opts);
    for run in afm_runs.iter().chain(&mas_runs) {
        let agents: Vec<&str> = run.trajectory.iter().map(|x| x.agent.as_str()).collect();
        assert_eq!(
            agents,
            [
                "Planner",
                "Coder",
                "Interpreter",
                "Reviewer",
                "Coder",
                "Interpreter",
                "Reviewer"
            ],
            "{run:?}"
        );
        assert!(run.trajectory[2]
            .observation
            .as_deref()
            .unwrap()
            .starts_with("error:"));
        assert_eq!((run.stats.tool_calls, run.stats.tool_successes), (2, 1));
        assert_eq!(run.validity["Coder"].turns, 2);
        assert_eq!(run.validity["Coder"].valid, 1);
        assert!(run.success, "{run:?}");
    }
    assert!(afm_runs.iter().all(|r| r.stats.calls == 1));
    assert!(mas_runs.iter().all(|r| r.stats.calls == 5));
    // With no retry allowed the MAS stops without an answer.
    let strict = RunOptions {
        max_retries: 0,
        ..RunOptions::default()
    };
    for run in run_mas(&scripted_mas(&t, &tasks, 1024, true), &tasks, &strict) {
        assert_eq!(run.failure.as_deref(), Some("no final answer"));
        assert!(!run.success);
        assert_eq!(run.stats.calls, 3);
    }
}

#[test]
fn limits_fail_the_task_not_the_run() {
    let t = tok();
    let tasks = tasks(3);
    let sols = solutions(&t, &tasks);
    let longest = tasks
        .iter()
        .map(|x| 1 + seg(&t, &x.prompt).len())
        .max()
        .unwrap();
    // Room for the prompt and a few tokens only.
    let lm = ScriptedLm::new(
        t.clone(),
        longest + 3,
        afm_policy(t.clone(), sols.clone(), false),
    );
    for run in afm::run_batch_lm(
        &lm,
        &tasks,
        &RunOptions {
            batch: 2,
            ..Default::default()
        },
    )
    .unwrap()
    {
        assert_eq!(run.failure.as_deref(), Some("context full"), "{run:?}");
        assert!(!run.success);
    }
    // A prompt longer than the context.
    let lm = ScriptedLm::new(t.clone(), 2, afm_policy(t.clone(), sols.clone(), false));
    let runs = afm::run_batch_lm(&lm, &tasks, &RunOptions::default()).unwrap();
    assert!(runs
        .iter()
        .all(|r| r.failure.as_deref() == Some("context full") && r.stats.calls == 0));
    let runs = run_mas(
        &scripted_mas(&t, &tasks, longest + 3, false),
        &tasks,
        &RunOptions::default(),
    );
    assert!(
        runs.iter()
            .all(|r| r.failure.as_deref() == Some("context full")),
        "{runs:?}"
    );
    // Decode budget.
    let lm = ScriptedLm::new(t.clone(), 1024, afm_policy(t.clone(), sols, false));
    let opts = RunOptions {
        max_new_tokens: 4,
        ..Default::default()
    };
    for run in afm::run_batch_lm(&lm, &tasks, &opts).unwrap() {
        assert_eq!(run.failure.as_deref(), Some("token budget"));
        assert_eq!(run.stats.tokens_decode, 4);
    }
}

#[test]
fn scripted_batched_equals_sequential() {
    let t = tok();
    let tasks = tasks(5);
    let lm = ScriptedLm::new(
        t.clone(),
        1024,
        afm_policy(t.clone(), solutions(&t, &tasks), true),
    );
    let one = afm::run_batch_lm(&lm, &tasks, &RunOptions::default()).unwrap();
    let three = afm::run_batch_lm(
        &lm,
        &tasks,
        &RunOptions {
            batch: 3,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(three[0].stats.batch_size, 3);
    assert_eq!(strip_timing(one), strip_timing(three));
    let lms = scripted_mas(&t, &tasks, 1024, true);
    let one = run_mas(&lms, &tasks, &RunOptions::default());
    let four = run_mas(
        &lms,
        &tasks,
        &RunOptions {
            batch: 4,
            ..Default::default()
        },
    );
    assert_eq!(strip_timing(one), strip_timing(four));
}

#[test]
fn mas_trajectories_are_native_records() {
    let t = tok();
    let tasks = tasks(2);
    let runs = run_mas(
        &scripted_mas(&t, &tasks, 1024, false),
        &tasks,
        &RunOptions::default(),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mas.jsonl");
    let native: Vec<_> = runs
        .iter()
        .zip(&tasks)
        .map(|(r, x)| r.to_native(x))
        .collect();
    afm_tasks::save_trajectories(&path, &native).unwrap();
    let back = afm_tasks::load_trajectories(&path).unwrap();
    assert_eq!(back, native);
    assert!(back.iter().all(|x| x.success && x.meta.attempts == 1));
    // Our own JSONL (with accounting) reads back as TaskRuns and as a reference.
    let ours = dir.path().join("runs.jsonl");
    afm_agents::write_jsonl(&runs, &ours).unwrap();
    let reference = afm_agents::load_reference(&ours).unwrap();
    let report = afm_agents::evaluate(&runs, Some(&reference));
    assert_eq!(report.answer_agreement, Some(1.0));
    assert_eq!(report.success_rate, 1.0);
    assert_eq!(report.calls, 6);
}

/// The structural cost of the two layouts on the held-out task file: the
/// reference chains replayed by scripted models (numbers in the README; see
/// them with `-- --nocapture`). Every task: MAS prefill > AFM prefill; the
/// AFM samples every role token, `<|obs|>` and `<|end|>` itself while each
/// MAS turn samples one closing marker, so AFM decode = MAS decode + tool
/// calls + 1.
#[test]
fn structural_cost_on_held_out_tasks() {
    let t = tok();
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../datasets/tasks/test.jsonl"
    );
    let tasks: Vec<_> = afm_tasks::load_tasks(path.as_ref())
        .unwrap()
        .into_iter()
        .filter(|x| afm_tasks::solution(x).is_some())
        .collect();
    assert!(tasks.len() >= 100);
    for wrong_first in [false, true] {
        let sols = solutions(&t, &tasks);
        let lm = ScriptedLm::new(t.clone(), 4096, afm_policy(t.clone(), sols, wrong_first));
        let a = afm::run_batch_lm(&lm, &tasks, &RunOptions::default()).unwrap();
        let m = run_mas(
            &scripted_mas(&t, &tasks, 4096, wrong_first),
            &tasks,
            &RunOptions::default(),
        );
        for (x, y) in a.iter().zip(&m) {
            assert!(x.success && y.success);
            assert!(y.stats.tokens_prefill > x.stats.tokens_prefill);
            assert_eq!(
                x.stats.tokens_decode,
                y.stats.tokens_decode + 1 + x.stats.tool_calls,
                "{x:#?} {y:#?}"
            );
        }
        let (ra, rm) = (
            afm_agents::evaluate(&a, None),
            afm_agents::evaluate(&m, None),
        );
        eprintln!(
            "revise round: {wrong_first}; {} tasks; AFM prefill/task {:.1} decode/task {:.1} calls/task {:.2}; \
             MAS prefill/task {:.1} ({:.1}x) decode/task {:.1} calls/task {:.2}",
            ra.tasks,
            ra.tokens_prefill_per_task,
            ra.tokens_decode_per_task,
            ra.calls_per_task,
            rm.tokens_prefill_per_task,
            rm.tokens_prefill_per_task / ra.tokens_prefill_per_task,
            rm.tokens_decode_per_task,
            rm.calls_per_task
        );
    }
}

/// The program the injected tool panics on (one task's solution).
static PANIC_ON: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn panicking_tool(
    program: &str,
    limits: &afm_tasks::Limits,
) -> Result<afm_tasks::Value, afm_tasks::ToolError> {
    if Some(program.trim()) == PANIC_ON.get().map(|s| s.trim()) {
        panic!("injected fault");
    }
    afm_tasks::run_program(program, limits)
}

#[test]
fn a_panicking_tool_fails_its_task_and_nothing_else() {
    let t = tok();
    let tasks = tasks(4);
    let sols = solutions(&t, &tasks);
    let victim = afm_tasks::solution(&tasks[1]).unwrap().program;
    PANIC_ON.set(victim).unwrap();
    let opts = RunOptions {
        batch: 4,
        tool: afm_agents::Tool(panicking_tool),
        ..RunOptions::default()
    };
    let lm = ScriptedLm::new(t.clone(), 1024, afm_policy(t.clone(), sols, false));
    let afm_runs = afm::run_batch_lm(&lm, &tasks, &opts).unwrap();
    let mas_runs = run_mas(&scripted_mas(&t, &tasks, 1024, false), &tasks, &opts);
    for (system, runs) in [("afm", afm_runs), ("mas", mas_runs)] {
        assert_eq!(runs.len(), 4, "{system}");
        for (i, run) in runs.iter().enumerate() {
            if i == 1 {
                assert!(!run.success, "{system}: {run:?}");
                assert_eq!(
                    run.failure.as_deref(),
                    Some("tool failed internally: injected fault"),
                    "{system}"
                );
                let obs = run
                    .trajectory
                    .iter()
                    .find_map(|s| s.observation.as_deref())
                    .unwrap();
                assert_eq!(obs, "error: internal: injected fault", "{system}");
            } else {
                assert!(run.success, "{system} task {i}: {run:?}");
            }
        }
    }
}

/// With the task world's route the AFM runtime writes the two hand-offs the
/// MAS orchestrator fixes (the Planner opens, the Reviewer reads the
/// observation) as prefill: same chain and answer, two tokens fewer decoded
/// and two more prefilled per task.
#[test]
fn a_fixed_route_is_prefilled_not_sampled() {
    let t = tok();
    let tasks = tasks(3);
    let free = afm::run_batch_lm(
        &ScriptedLm::new(
            t.clone(),
            1024,
            afm_policy(t.clone(), solutions(&t, &tasks), false),
        ),
        &tasks,
        &RunOptions::default(),
    )
    .unwrap();
    // The same policy, minus the role token the runtime already wrote.
    let inner = afm_policy(t.clone(), solutions(&t, &tasks), false);
    let routed_policy: afm_agents::Policy = std::sync::Arc::new(move |ctx: &[u32]| {
        let mut v = inner(ctx);
        if ctx.last() == v.first()
            && ctx
                .last()
                .is_some_and(|&x| x >= afm_tokenizer::FIRST_ROLE_TOKEN)
        {
            v.remove(0);
        }
        v
    });
    let opts = RunOptions {
        route: afm_agents::Route::task_world(),
        ..RunOptions::default()
    };
    let routed = afm::run_batch_lm(
        &ScriptedLm::new(t.clone(), 1024, routed_policy),
        &tasks,
        &opts,
    )
    .unwrap();
    for (f, r) in free.iter().zip(&routed) {
        assert!(f.success && r.success, "{f:?}\n{r:?}");
        assert_eq!(f.trajectory, r.trajectory);
        assert_eq!(f.answer, r.answer);
        assert_eq!(r.stats.tokens_decode + 2, f.stats.tokens_decode);
        assert_eq!(r.stats.tokens_prefill, f.stats.tokens_prefill + 2);
        assert_eq!(r.validity, f.validity);
    }
}
