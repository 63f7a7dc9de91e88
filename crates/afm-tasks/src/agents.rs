//! Scripted reference agents (Planner -> Coder -> Interpreter -> Reviewer,
//! with a retry loop), writing `afm_format`'s native trajectories with
//! [`TrajMeta`], and the re-solver of the `resolve` augmentation
//! ([`source_task`], [`resolve_record`]).
//!
//! Turn texts are short and formulaic:
//!
//! - Planner: one sentence naming the operation (`Add up the numbers.`).
//! - Coder: exactly one program of the tool language (`sum([3, 1, 4])`).
//! - Interpreter (the tool): the observation ([`run_to_observation`]).
//! - Reviewer: `Checked. ANSWER: <value>` to finish, or
//!   `REVISE: <correct plan>` to send the Coder back.
//!
//! The final-answer syntax is the last line containing `ANSWER:`; see
//! [`extract_answer`]. Mistakes are injected at configurable rates and every
//! outcome is checked with [`verify`], never assumed.

use crate::lang::{run_to_observation, token_spans, Limits, TokenKind};
use crate::tasks::{gen_task_of, solution, verify, Split, Task};
use afm_format::SplitMix64;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

/// The planner agent's name.
pub const PLANNER: &str = "Planner";
/// The coder agent's name.
pub const CODER: &str = "Coder";
/// The tool's name (its turns carry an `observation`, not an `output`).
pub const INTERPRETER: &str = "Interpreter";
/// The reviewer agent's name.
pub const REVIEWER: &str = "Reviewer";
/// Order of one round; after a `REVISE:` review the Coder goes again.
pub const AGENT_ORDER: [&str; 4] = [PLANNER, CODER, INTERPRETER, REVIEWER];
/// The model-played agents (the interpreter is a tool).
pub const LM_AGENTS: [&str; 3] = [PLANNER, CODER, REVIEWER];

/// The marker of the final answer.
pub const ANSWER_MARKER: &str = "ANSWER:";
/// The marker of a rejection that sends the Coder back.
pub const REVISE_MARKER: &str = "REVISE:";

/// Short role instruction of each agent (and of the tool).
pub fn role_instruction(agent: &str) -> Option<&'static str> {
    Some(match agent {
        PLANNER => "Read the task and say in one sentence which operation solves it.",
        CODER => "Write one expression of the tool language that computes the answer. Output only the program.",
        INTERPRETER => "The tool runs the Coder's program and returns its value or `error: ...`.",
        REVIEWER => "Check the observation against the task. If it is right write `Checked. ANSWER: <value>`; otherwise write `REVISE: <what to do>` and the Coder tries again.",
        _ => return None,
    })
}

/// The final answer of a text: the rest of the last line that contains
/// `ANSWER:`, trimmed; `None` when absent or empty.
pub fn extract_answer(text: &str) -> Option<String> {
    let line = text.lines().rev().find(|l| l.contains(ANSWER_MARKER))?;
    let at = line.rfind(ANSWER_MARKER)?;
    let a = line[at + ANSWER_MARKER.len()..].trim();
    (!a.is_empty()).then(|| a.to_string())
}

/// One turn of a trajectory (`afm_format::native`): agents have an
/// `output`, the tool an `observation`.
pub use afm_format::Turn;

/// One injected mistake.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mistake {
    /// 1-based Coder attempt the mistake affected.
    pub attempt: usize,
    pub agent: String,
    /// `wrong_plan`, `off_by_one`, `dropped_item`, `wrong_builtin`,
    /// `wrong_operator`, `dropped_char`, `syntax_slip` or `wrong_answer`.
    pub kind: String,
}

/// Metadata of a native trajectory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrajMeta {
    pub family: String,
    pub op: String,
    pub level: u8,
    pub inputs: Json,
    /// The agent whose uncorrected mistake made the final answer wrong
    /// (the first one, when several); `None` when the answer is right.
    pub erred_agent: Option<String>,
    pub split: Split,
    pub task_id: String,
    /// The task's canonical answer.
    pub expected: String,
    /// Number of Coder attempts.
    pub attempts: usize,
    /// Every injected mistake, caught or not.
    pub mistakes: Vec<Mistake>,
}

/// A trajectory in afm's native JSONL format (one per line), with the
/// scripted agents' metadata: the one native schema of `afm_format::native`.
pub type Trajectory = afm_format::NativeTrajectory<TrajMeta>;

/// Seed of the shipped default dataset (`datasets/`).
pub const DEFAULT_DATASET_SEED: u64 = 2026;

/// Agent settings of the shipped default dataset: modest error rates so
/// that filtering has real work (see `datasets/README.md`).
pub fn default_dataset_config() -> AgentConfig {
    AgentConfig {
        plan_error_rate: 0.05,
        code_error_rate: 0.10,
        review_miss_rate: 0.30,
        answer_error_rate: 0.02,
        max_attempts: 3,
        seed: DEFAULT_DATASET_SEED,
        limits: Limits::default(),
    }
}

/// Error rates and bounds of the scripted agents.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AgentConfig {
    /// Probability that the Planner states a plausible wrong plan.
    pub plan_error_rate: f64,
    /// Probability that each Coder attempt contains a plausible mistake.
    pub code_error_rate: f64,
    /// Probability that the Reviewer accepts a wrong (non-error) observation.
    pub review_miss_rate: f64,
    /// Probability that the Reviewer miscopies a right observation.
    pub answer_error_rate: f64,
    /// Coder attempts at most; after the last the Reviewer answers anyway.
    pub max_attempts: usize,
    /// Seed; each task draws from its own stream (seed, task id).
    pub seed: u64,
    pub limits: Limits,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            plan_error_rate: 0.0,
            code_error_rate: 0.0,
            review_miss_rate: 0.0,
            answer_error_rate: 0.0,
            max_attempts: 3,
            seed: 0,
            limits: Limits::default(),
        }
    }
}

impl AgentConfig {
    /// Check rates are probabilities and `max_attempts >= 1`.
    pub fn validate(&self) -> anyhow::Result<()> {
        for (n, r) in [
            ("plan_error_rate", self.plan_error_rate),
            ("code_error_rate", self.code_error_rate),
            ("review_miss_rate", self.review_miss_rate),
            ("answer_error_rate", self.answer_error_rate),
        ] {
            if !(0.0..=1.0).contains(&r) {
                anyhow::bail!("{n} must be in [0, 1], got {r}");
            }
        }
        if self.max_attempts == 0 {
            anyhow::bail!("max_attempts must be at least 1");
        }
        Ok(())
    }

    /// Success probability predicted from the rates, assuming every
    /// injected mistake changes the answer and only syntax slips (a share
    /// [`SYNTAX_SLIP_SHARE`] of Coder mistakes) give `error:` observations,
    /// which the Reviewer never accepts.
    pub fn expected_success(&self) -> f64 {
        let (p, c, m, a) = (
            self.plan_error_rate,
            self.code_error_rate,
            self.review_miss_rate,
            self.answer_error_rate,
        );
        // P(success | attempt k is the one being reviewed, with right-attempt prob r).
        let mut s = 0.0;
        let mut reach = 1.0; // probability of reaching this attempt
        for k in 1..=self.max_attempts {
            let right = if k == 1 {
                (1.0 - p) * (1.0 - c)
            } else {
                1.0 - c
            };
            s += reach * right * (1.0 - a);
            if k == self.max_attempts {
                break;
            }
            let error = c * SYNTAX_SLIP_SHARE;
            reach *= error + (1.0 - right - error) * (1.0 - m);
        }
        s
    }
}

/// Share of Coder mistakes that are syntax slips (the last token of the
/// program is left out, so the tool answers `error: parse error ...` and the
/// Reviewer always sends the Coder back).
pub const SYNTAX_SLIP_SHARE: f64 = 0.15;

/// The program without its last token (always a parse error for programs
/// of two or more tokens).
fn syntax_slip(program: &str) -> Option<String> {
    let spans = token_spans(program).ok()?;
    if spans.len() < 2 {
        return None;
    }
    let (a, _, _) = spans[spans.len() - 1];
    Some(program[..a].trim_end().to_string())
}

/// A plausible mistake in `program` whose observation differs from
/// `answer`: off-by-one number, dropped list item, swapped builtin or
/// operator, dropped string character. Non-error outputs are preferred.
fn code_mistake(
    program: &str,
    task: &Task,
    rng: &mut SplitMix64,
    lim: &Limits,
) -> Option<(String, String)> {
    let spans = token_spans(program).ok()?;
    let mut cands: Vec<(String, &'static str)> = Vec::new();
    let splice = |a: usize, b: usize, s: &str| format!("{}{s}{}", &program[..a], &program[b..]);
    for (k, (a, b, kind)) in spans.iter().enumerate() {
        let text = &program[*a..*b];
        match kind {
            TokenKind::Int => {
                if let Ok(n) = text.parse::<i64>() {
                    cands.push((splice(*a, *b, &(n + 1).to_string()), "off_by_one"));
                    if n > 0 {
                        cands.push((splice(*a, *b, &(n - 1).to_string()), "off_by_one"));
                    }
                }
                // `, N]` at the end of a list literal: drop the item.
                let prev = k.checked_sub(1).map(|j| &program[spans[j].0..spans[j].1]);
                let next = spans.get(k + 1).map(|s| &program[s.0..s.1]);
                if prev == Some(",") && next == Some("]") {
                    cands.push((splice(spans[k - 1].0, *b, ""), "dropped_item"));
                }
            }
            TokenKind::Name => {
                let swap = match text {
                    "sum" => "len",
                    "len" => "sum",
                    "max" => "min",
                    "min" => "max",
                    "sorted" => "reversed",
                    "reversed" => "sorted",
                    "even" => "odd",
                    "odd" => "even",
                    "upper" => "lower",
                    "gcd" => "lcm",
                    "lcm" => "gcd",
                    _ => "",
                };
                if !swap.is_empty() {
                    cands.push((splice(*a, *b, swap), "wrong_builtin"));
                }
            }
            TokenKind::Symbol => {
                let swap = match text {
                    "+" => "-",
                    "-" => "+",
                    "*" => "+",
                    "//" => "%",
                    "%" => "//",
                    "**" => "*",
                    ">" => "<",
                    _ => "",
                };
                if !swap.is_empty() {
                    cands.push((splice(*a, *b, swap), "wrong_operator"));
                }
            }
            TokenKind::Str => {
                // Drop the last character of a literal of 2+ characters.
                let inner = &text[1..text.len() - 1];
                if inner.chars().count() >= 2 {
                    let cut: String = {
                        let mut cs: Vec<char> = inner.chars().collect();
                        cs.pop();
                        cs.into_iter().collect()
                    };
                    cands.push((splice(*a, *b, &format!("\"{cut}\"")), "dropped_char"));
                }
            }
        }
    }
    // Deterministic shuffle, then the first candidate that changes the answer.
    for i in (1..cands.len()).rev() {
        let j = rng.below_mod(i + 1);
        cands.swap(i, j);
    }
    let mut fallback = None;
    for (prog, kind) in cands {
        let obs = run_to_observation(&prog, lim);
        if verify(task, &obs) {
            continue;
        }
        if obs.starts_with("error:") {
            fallback.get_or_insert((prog, kind.to_string()));
            continue;
        }
        return Some((prog, kind.to_string()));
    }
    fallback
}

/// A plausible miscopy of an answer (different from it).
fn miscopy(answer: &str) -> String {
    if let Ok(n) = answer.parse::<i64>() {
        return (n + 1).to_string();
    }
    if let Some(body) = answer.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
        return match body.rfind(", ") {
            Some(k) => format!("[{}]", &body[..k]),
            None => "[]".into(),
        };
    }
    let mut cs: Vec<char> = answer.chars().collect();
    if cs.len() > 1 {
        cs.pop();
        cs.into_iter().collect()
    } else {
        format!("{answer}{answer}")
    }
}

/// Run the scripted agents on a task. `None` when the task has no
/// reference solution (unknown op or malformed inputs).
pub fn solve(task: &Task, cfg: &AgentConfig) -> Option<Trajectory> {
    let sol = solution(task)?;
    let lim = &cfg.limits;
    let mut rng = SplitMix64::derive(cfg.seed, &task.id);
    let mut turns = Vec::new();
    let mut mistakes = Vec::new();

    // Planner.
    let mut wrong_program = None;
    if rng.chance(cfg.plan_error_rate) {
        let ok: Vec<&(String, String)> = sol
            .wrong_plans
            .iter()
            .filter(|(_, p)| !verify(task, &run_to_observation(p, lim)))
            .collect();
        if !ok.is_empty() {
            let (plan, prog) = ok[rng.below_mod(ok.len())];
            turns.push(Turn::output(PLANNER, plan.clone()));
            wrong_program = Some(prog.clone());
            mistakes.push(Mistake {
                attempt: 1,
                agent: PLANNER.into(),
                kind: "wrong_plan".into(),
            });
        }
    }
    if wrong_program.is_none() {
        turns.push(Turn::output(PLANNER, sol.plan.clone()));
    }

    let mut attempts = 0;
    let mut erred = None;
    let mut final_answer = String::new();
    for k in 1..=cfg.max_attempts {
        attempts = k;
        let mut culprit = None;
        let mut program = match (k, &wrong_program) {
            (1, Some(p)) => {
                culprit = Some(PLANNER);
                p.clone()
            }
            _ => sol.program.clone(),
        };
        if rng.chance(cfg.code_error_rate) {
            let slip = if rng.chance(SYNTAX_SLIP_SHARE) {
                syntax_slip(&program).map(|p| (p, "syntax_slip".to_string()))
            } else {
                code_mistake(&program, task, &mut rng, lim)
            };
            if let Some((p, kind)) = slip {
                program = p;
                culprit.get_or_insert(CODER);
                mistakes.push(Mistake {
                    attempt: k,
                    agent: CODER.into(),
                    kind,
                });
            }
        }
        let obs = run_to_observation(&program, lim);
        turns.push(Turn::output(CODER, program));
        turns.push(Turn::observation(INTERPRETER, obs.clone()));
        let right = verify(task, &obs);
        let is_error = obs.starts_with("error:");
        let last = k == cfg.max_attempts;
        if right {
            let mut ans = obs.clone();
            if rng.chance(cfg.answer_error_rate) {
                ans = miscopy(&obs);
                mistakes.push(Mistake {
                    attempt: k,
                    agent: REVIEWER.into(),
                    kind: "wrong_answer".into(),
                });
                erred = Some(REVIEWER);
            }
            turns.push(Turn::output(
                REVIEWER,
                format!("Checked. {ANSWER_MARKER} {ans}"),
            ));
            final_answer = ans;
            break;
        }
        // Wrong observation: a miss accepts it, the last attempt answers anyway.
        let missed = !is_error && rng.chance(cfg.review_miss_rate);
        if missed || last {
            let ans = if is_error {
                "none".to_string()
            } else {
                obs.clone()
            };
            turns.push(Turn::output(
                REVIEWER,
                format!("Checked. {ANSWER_MARKER} {ans}"),
            ));
            final_answer = ans;
            erred = culprit;
            break;
        }
        let why = if is_error { "The code failed. " } else { "" };
        turns.push(Turn::output(
            REVIEWER,
            format!("{REVISE_MARKER} {why}{}", sol.plan),
        ));
    }

    // The outcome is checked, never assumed.
    let answer = turns
        .last()
        .and_then(|t| extract_answer(t.text()))
        .unwrap_or_default();
    debug_assert_eq!(answer, final_answer);
    let success = verify(task, &answer);
    if success {
        erred = None;
    } else if erred.is_none() {
        // A wrong answer with no recorded culprit cannot happen with the
        // mistakes above; attribute it to the Reviewer who accepted it.
        erred = Some(REVIEWER);
    }
    Some(Trajectory {
        id: task.id.clone(),
        task: task.prompt.clone(),
        trajectory: turns,
        success,
        answer,
        score: None,
        meta: TrajMeta {
            family: task.family.clone(),
            op: task.op.clone(),
            level: task.level,
            inputs: task.inputs.clone(),
            erred_agent: erred.map(str::to_string),
            split: task.split(),
            task_id: task.id.clone(),
            expected: task.answer.clone(),
            attempts,
            mistakes,
        },
    })
}

/// Data augmentation hook: a new task of the same family, op and level with
/// fresh inputs (drawn from `seed`), solved by error-free scripted agents
/// and checked with the verifier. Returns `None` if no new *train-split*
/// task was found in a few tries (held-out tasks are never produced) or the
/// solution did not verify.
pub fn perturb_and_solve(task: &Task, seed: u64) -> Option<(Task, Trajectory)> {
    let mut rng = SplitMix64::derive(seed, &task.id);
    for _ in 0..32 {
        let t = gen_task_of(&task.family, &task.op, task.level, &mut rng)?;
        if t.id == task.id || t.split() != Split::Train {
            continue;
        }
        let cfg = AgentConfig {
            seed,
            ..AgentConfig::default()
        };
        let tr = solve(&t, &cfg)?;
        return tr.success.then_some((t, tr));
    }
    None
}

/// The task a record (`afm_format::Trajectory`, e.g. one `afm-data` read
/// from native JSONL) was generated from, when its `meta` carries what
/// re-solving needs ([`TrajMeta`]'s `task_id`, `family`, `op`, `level`,
/// `inputs`, `expected`).
pub fn source_task(t: &afm_format::Trajectory) -> Option<Task> {
    let m = t.meta.as_ref()?;
    Some(Task {
        id: m.get("task_id")?.as_str()?.to_string(),
        family: m.get("family")?.as_str()?.to_string(),
        op: m.get("op")?.as_str()?.to_string(),
        level: u8::try_from(m.get("level")?.as_u64()?).ok()?,
        prompt: t.task.clone(),
        inputs: m.get("inputs")?.clone(),
        answer: m.get("expected")?.as_str()?.to_string(),
    })
}

/// Re-solve a generated record with new inputs drawn from `seed`
/// ([`source_task`], then [`perturb_and_solve`]): the new verified
/// train-split trajectory as a record, or `None`. What `afm-data`'s
/// `resolve` augmentation is given by its caller.
pub fn resolve_record(t: &afm_format::Trajectory, seed: u64) -> Option<afm_format::Trajectory> {
    let (_, solved) = perturb_and_solve(&source_task(t)?, seed)?;
    solved.to_record().ok()
}

/// Write trajectories as native JSONL.
pub fn save_trajectories(path: &std::path::Path, trajs: &[Trajectory]) -> anyhow::Result<()> {
    use anyhow::Context;
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating directory {}", dir.display()))?;
        }
    }
    let mut text = String::new();
    for t in trajs {
        text.push_str(&serde_json::to_string(t)?);
        text.push('\n');
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Read native JSONL written by [`save_trajectories`]; errors name the line.
pub fn load_trajectories(path: &std::path::Path) -> anyhow::Result<Vec<Trajectory>> {
    use anyhow::Context;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        out.push(
            serde_json::from_str(line).map_err(|e| {
                anyhow::anyhow!("{}:{}: bad trajectory: {e}", path.display(), i + 1)
            })?,
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::generate;

    fn tasks(n: usize) -> Vec<Task> {
        generate(11, n, 0).unwrap().0
    }

    /// A scripted record names its source task; re-solving it gives a new
    /// verified train-split task of the same kind, the same for the same
    /// seed. A record without that metadata is not re-solvable.
    #[test]
    fn records_name_their_task_and_re_solve() {
        for task in tasks(40) {
            let rec = solve(&task, &AgentConfig::default())
                .unwrap()
                .to_record()
                .unwrap();
            assert_eq!(source_task(&rec).as_ref(), Some(&task));
            let Some(a) = resolve_record(&rec, 9) else {
                continue;
            };
            assert_eq!(resolve_record(&rec, 9).as_ref(), Some(&a));
            assert_ne!(a.task, rec.task);
            assert_eq!(a.success, Some(true));
            let m = a.meta.as_ref().unwrap();
            assert_eq!(
                (&m["family"], &m["op"]),
                (
                    &rec.meta.as_ref().unwrap()["family"],
                    &rec.meta.as_ref().unwrap()["op"]
                )
            );
            assert_eq!(m["split"], "train");
        }
        let mut bare = solve(&tasks(1)[0], &AgentConfig::default())
            .unwrap()
            .to_record()
            .unwrap();
        bare.meta = None;
        assert!(source_task(&bare).is_none() && resolve_record(&bare, 1).is_none());
    }

    #[test]
    fn extract_answer_syntax() {
        assert_eq!(extract_answer("Checked. ANSWER: 42"), Some("42".into()));
        assert_eq!(
            extract_answer("ANSWER: 1\nok\nANSWER:  [1, 2] "),
            Some("[1, 2]".into())
        );
        assert_eq!(extract_answer("REVISE: Add up the numbers."), None);
        assert_eq!(extract_answer("ANSWER:   "), None);
    }

    #[test]
    fn perfect_agents_always_succeed_in_one_round() {
        let cfg = AgentConfig::default();
        for t in tasks(1500) {
            let tr = solve(&t, &cfg).unwrap();
            assert!(tr.success, "{tr:?}");
            assert_eq!(tr.answer, t.answer);
            assert_eq!(tr.meta.erred_agent, None);
            assert!(tr.meta.mistakes.is_empty());
            let agents: Vec<&str> = tr.trajectory.iter().map(|t| t.agent.as_str()).collect();
            assert_eq!(agents, AGENT_ORDER);
            // The Coder's output is exactly the program: re-running it gives the observation.
            assert_eq!(
                run_to_observation(tr.trajectory[1].text(), &Limits::default()),
                tr.trajectory[2].text()
            );
        }
    }

    #[test]
    fn measured_success_matches_configured_rates() {
        let ts = tasks(3000);
        for (p, c, m, a) in [
            (0.2, 0.0, 0.0, 0.0),
            (0.0, 0.3, 0.5, 0.0),
            (0.1, 0.2, 0.3, 0.05),
            (0.5, 0.5, 1.0, 0.0),
        ] {
            let cfg = AgentConfig {
                plan_error_rate: p,
                code_error_rate: c,
                review_miss_rate: m,
                answer_error_rate: a,
                seed: 4,
                ..AgentConfig::default()
            };
            let trs: Vec<Trajectory> = ts.iter().map(|t| solve(t, &cfg).unwrap()).collect();
            let n = trs.len() as f64;
            let got = trs.iter().filter(|t| t.success).count() as f64 / n;
            let want = cfg.expected_success();
            // 4 standard errors plus a small allowance for the rare task
            // where no mistake changes the answer.
            let tol = 4.0 * (want * (1.0 - want) / n).sqrt() + 0.01;
            assert!(
                (got - want).abs() <= tol,
                "rates {p} {c} {m} {a}: success {got:.4}, expected {want:.4} +- {tol:.4}"
            );
            for tr in &trs {
                // Outcome consistent with the verifier and the attribution.
                let task = ts.iter().find(|t| t.id == tr.id).unwrap();
                assert_eq!(tr.success, verify(task, &tr.answer));
                assert_eq!(tr.success, tr.meta.erred_agent.is_none());
                if let Some(e) = &tr.meta.erred_agent {
                    assert!(tr.meta.mistakes.iter().any(|m| &m.agent == e), "{tr:?}");
                }
                assert!(tr.meta.attempts <= cfg.max_attempts);
            }
            // The realised plan-mistake rate tracks the configured one.
            let plan_err = trs
                .iter()
                .filter(|t| t.meta.mistakes.iter().any(|m| m.kind == "wrong_plan"))
                .count() as f64
                / n;
            assert!((plan_err - p).abs() <= 4.0 * (p * (1.0 - p) / n).sqrt() + 0.01);
        }
    }

    #[test]
    fn reviewer_catches_and_retry_fixes() {
        let cfg = AgentConfig {
            plan_error_rate: 1.0,
            seed: 1,
            ..AgentConfig::default()
        };
        let t = &tasks(1)[0];
        let tr = solve(t, &cfg).unwrap();
        assert!(tr.success);
        let agents: Vec<&str> = tr.trajectory.iter().map(|t| t.agent.as_str()).collect();
        assert_eq!(
            agents,
            [
                PLANNER,
                CODER,
                INTERPRETER,
                REVIEWER,
                CODER,
                INTERPRETER,
                REVIEWER
            ]
        );
        assert!(tr.trajectory[3].text().starts_with(REVISE_MARKER));
        assert_eq!(tr.meta.attempts, 2);
    }

    #[test]
    fn syntax_slips_are_caught_and_fixed() {
        let cfg = AgentConfig {
            code_error_rate: 1.0,
            max_attempts: 3,
            seed: 8,
            ..AgentConfig::default()
        };
        let mut seen = 0;
        for t in tasks(300) {
            let tr = solve(&t, &cfg).unwrap();
            for (i, turn) in tr.trajectory.iter().enumerate() {
                if turn.text().starts_with("error: parse error") {
                    seen += 1;
                    let review = tr.trajectory[i + 1].text();
                    assert!(
                        review.starts_with("REVISE: The code failed.")
                            || review == "Checked. ANSWER: none",
                        "{review}"
                    );
                }
            }
        }
        assert!(seen > 20, "{seen}");
    }

    #[test]
    fn perturbation_gives_new_verified_train_tasks() {
        let mut made = 0;
        for t in tasks(200) {
            if let Some((nt, tr)) = perturb_and_solve(&t, 99) {
                assert_ne!(nt.id, t.id);
                assert_eq!(
                    (nt.family.as_str(), nt.op.as_str(), nt.level),
                    (t.family.as_str(), t.op.as_str(), t.level)
                );
                assert_eq!(nt.split(), Split::Train);
                assert!(tr.success && verify(&nt, &tr.answer));
                assert_eq!(perturb_and_solve(&t, 99), Some((nt, tr)));
                made += 1;
            }
        }
        assert!(made > 190, "{made}");
    }

    #[test]
    fn trajectories_round_trip() {
        let cfg = AgentConfig {
            code_error_rate: 0.5,
            ..AgentConfig::default()
        };
        let trs: Vec<Trajectory> = tasks(30).iter().map(|t| solve(t, &cfg).unwrap()).collect();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.jsonl");
        save_trajectories(&p, &trs).unwrap();
        assert_eq!(load_trajectories(&p).unwrap(), trs);
        let line = std::fs::read_to_string(&p).unwrap();
        let v: Json = serde_json::from_str(line.lines().next().unwrap()).unwrap();
        assert!(v["trajectory"][2]["observation"].is_string());
        assert!(v["trajectory"][2].get("output").is_none());
        assert!(v["meta"]["split"] == "train");
    }
}
