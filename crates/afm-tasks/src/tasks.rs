//! Verifiable tasks: families, difficulty levels, a deterministic generator,
//! the fixed train/test split, the verifier, and JSONL task files.
//!
//! Every task has a canonical answer computed by an independent Rust
//! reference (not by the interpreter); the tests check that the reference
//! program of each task, run by the interpreter, gives the same answer.

use afm_format::fnv1a;
use afm_format::SplitMix64;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value as Json};
use std::path::Path;

/// A verifiable task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// `{family}-{op}-{hash}`; equal tasks have equal ids.
    pub id: String,
    /// `list`, `string` or `arith`.
    pub family: String,
    /// The operation within the family (`sum`, `reverse`, `expr`...).
    pub op: String,
    /// Difficulty 1..=3.
    pub level: u8,
    /// Natural-language task text.
    pub prompt: String,
    /// The task's data (`{"xs": [...]}`, `{"s": "..."}`, `{"expr": "..."}`...).
    pub inputs: Json,
    /// Canonical answer (the interpreter's canonical value text).
    pub answer: String,
}

/// Which split a task belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Test,
}

impl Split {
    /// `"train"` or `"test"`.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

/// Percentage of the task space held out for testing.
pub const TEST_PERCENT: u64 = 10;

/// The canonical key of a task: family, op and inputs (the level and wording
/// follow from them). Equal keys are equal tasks.
pub fn canonical_key(family: &str, op: &str, inputs: &Json) -> String {
    format!("{family}/{op}/{inputs}")
}

/// The split is a pure function of the canonical key, so a task can never
/// be in both splits, whatever seed or count generated it.
pub fn split_of_key(key: &str) -> Split {
    let h = fnv1a(format!("afm-split-v1:{key}").as_bytes(), 0);
    if h % 100 < TEST_PERCENT {
        Split::Test
    } else {
        Split::Train
    }
}

impl Task {
    /// Canonical key (see `canonical_key`).
    pub fn key(&self) -> String {
        canonical_key(&self.family, &self.op, &self.inputs)
    }

    /// The split this task belongs to.
    pub fn split(&self) -> Split {
        split_of_key(&self.key())
    }
}

// ---------------------------------------------------------------- verifier

/// Normalise an answer text for comparison: trim, drop one pair of
/// surrounding quotes (unless the reference is quoted), drop a trailing
/// period, then for lists remove all whitespace outside string literals
/// and otherwise collapse whitespace runs to one space.
pub fn normalize_answer(text: &str, reference: &str) -> String {
    let mut s = text.trim();
    if let Some(x) = s.strip_suffix('.') {
        if !reference.trim().ends_with('.') {
            s = x.trim_end();
        }
    }
    if s.len() >= 2 && s.starts_with('"') && s.ends_with('"') && !reference.trim().starts_with('"')
    {
        s = &s[1..s.len() - 1];
    }
    if reference.trim().starts_with('[') {
        let mut out = String::new();
        let mut in_str = false;
        let mut esc = false;
        for c in s.chars() {
            if in_str {
                out.push(c);
                if esc {
                    esc = false;
                } else if c == '\\' {
                    esc = true;
                } else if c == '"' {
                    in_str = false;
                }
            } else if c == '"' {
                in_str = true;
                out.push(c);
            } else if !c.is_whitespace() {
                out.push(c);
            }
        }
        out
    } else {
        s.split_whitespace().collect::<Vec<_>>().join(" ")
    }
}

/// True when `answer_text` is the task's answer (after `normalize_answer`;
/// integers compare by value, so `+7` and `007` match `7`).
pub fn verify(task: &Task, answer_text: &str) -> bool {
    let got = normalize_answer(answer_text, &task.answer);
    let want = normalize_answer(&task.answer, &task.answer);
    if got == want {
        return true;
    }
    match (got.parse::<i64>(), want.parse::<i64>()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

// ---------------------------------------------------------------- files

/// Write tasks as JSONL (one task per line).
pub fn save_tasks(path: &Path, tasks: &[Task]) -> anyhow::Result<()> {
    use anyhow::Context;
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating directory {}", dir.display()))?;
        }
    }
    let mut text = String::new();
    for t in tasks {
        text.push_str(&serde_json::to_string(t)?);
        text.push('\n');
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Read a JSONL task file; errors name the file, line and field.
pub fn load_tasks(path: &Path) -> anyhow::Result<Vec<Task>> {
    use anyhow::Context;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_tasks(&text, &path.display().to_string())
}

/// Parse JSONL task text (`origin` names the source in errors).
pub fn parse_tasks(text: &str, origin: &str) -> anyhow::Result<Vec<Task>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let t: Task = serde_json::from_str(line)
            .map_err(|e| anyhow::anyhow!("{origin}:{}: bad task: {e}", i + 1))?;
        if !(1..=3).contains(&t.level) {
            anyhow::bail!(
                "{origin}:{}: field `level` must be 1..=3, got {}",
                i + 1,
                t.level
            );
        }
        if t.prompt.trim().is_empty() {
            anyhow::bail!("{origin}:{}: field `prompt` is empty", i + 1);
        }
        out.push(t);
    }
    Ok(out)
}

// ---------------------------------------------------------------- catalogue

/// Task families with their operations per level.
pub const FAMILIES: [&str; 3] = ["list", "string", "arith"];

const LIST_BASIC: [&str; 10] = [
    "sum",
    "max",
    "min",
    "sort",
    "reverse",
    "len",
    "count",
    "evens",
    "odds",
    "sum_squares",
];
const LIST_COMPOSED: [&str; 5] = ["sum_evens", "count_odds", "sort_desc", "span", "double"];
const STR_BASIC: [&str; 5] = ["reverse", "upper", "length", "count_char", "concat"];
const STR_COMPOSED: [&str; 4] = ["upper_reverse", "concat_len", "repeat", "concat_reverse"];
const ARITH_1: [&str; 2] = ["expr", "gcd"];
const ARITH_2: [&str; 4] = ["expr", "gcd", "lcm", "pow"];
const ARITH_3: [&str; 3] = ["expr", "lcm", "pow"];

/// Operations of `family` at `level` (empty if unknown).
pub fn ops_of(family: &str, level: u8) -> &'static [&'static str] {
    match (family, level) {
        ("list", 1 | 2) => &LIST_BASIC,
        ("list", 3) => &LIST_COMPOSED,
        ("string", 1 | 2) => &STR_BASIC,
        ("string", 3) => &STR_COMPOSED,
        ("arith", 1) => &ARITH_1,
        ("arith", 2) => &ARITH_2,
        ("arith", 3) => &ARITH_3,
        _ => &[],
    }
}

const SHORT_WORDS: [&str; 60] = [
    "cat", "dog", "sun", "red", "sky", "tree", "fish", "bird", "moon", "star", "rain", "snow",
    "book", "lamp", "door", "road", "milk", "cake", "rice", "salt", "ship", "boat", "wolf", "bear",
    "frog", "duck", "lion", "king", "song", "wind", "fire", "gold", "iron", "leaf", "rose",
    "apple", "bread", "chair", "cloud", "grass", "horse", "house", "light", "mouse", "night",
    "ocean", "paper", "plant", "river", "stone", "sugar", "table", "tiger", "water", "green",
    "happy", "lemon", "music", "robot", "pizza",
];

const LONG_WORDS: [&str; 50] = [
    "banana", "orange", "garden", "window", "yellow", "silver", "castle", "forest", "planet",
    "rocket", "pencil", "button", "candle", "dragon", "flower", "guitar", "island", "jacket",
    "kitten", "ladder", "market", "needle", "pepper", "rabbit", "saddle", "tomato", "turtle",
    "violin", "winter", "summer", "animal", "bottle", "circle", "doctor", "engine", "family",
    "blanket", "cabinet", "chicken", "diamond", "elephant", "football", "mountain", "notebook",
    "painting", "sandwich", "treasure", "umbrella", "keyboard", "sunshine",
];

fn list_text(xs: &[i64]) -> String {
    let parts: Vec<String> = xs.iter().map(|x| x.to_string()).collect();
    format!("[{}]", parts.join(", "))
}

fn q(s: &str) -> String {
    format!("\"{s}\"")
}

/// Arithmetic expression tree of the generator (independent of the interpreter).
#[derive(Debug, Clone)]
enum Ax {
    Num(i64),
    Bin(&'static str, Box<Ax>, Box<Ax>),
}

fn prec(op: &str) -> u8 {
    match op {
        "+" | "-" => 1,
        _ => 2,
    }
}

impl Ax {
    fn eval(&self) -> Option<i64> {
        match self {
            Ax::Num(n) => Some(*n),
            Ax::Bin(op, a, b) => {
                let (a, b) = (a.eval()?, b.eval()?);
                match *op {
                    "+" => a.checked_add(b),
                    "-" => a.checked_sub(b),
                    "*" => a.checked_mul(b),
                    "//" => (b != 0).then(|| (a as f64 / b as f64).floor() as i64),
                    "%" => (b != 0).then(|| a - b * (a as f64 / b as f64).floor() as i64),
                    _ => None,
                }
            }
        }
    }

    /// Minimal-parentheses rendering with the usual precedence.
    fn render(&self) -> String {
        match self {
            Ax::Num(n) => n.to_string(),
            Ax::Bin(op, a, b) => {
                let l = match &**a {
                    Ax::Bin(o, ..) if prec(o) < prec(op) => format!("({})", a.render()),
                    _ => a.render(),
                };
                let r = match &**b {
                    Ax::Bin(o, ..) if prec(o) <= prec(op) => format!("({})", b.render()),
                    _ => b.render(),
                };
                format!("{l} {op} {r}")
            }
        }
    }
}

fn gen_ax(rng: &mut SplitMix64, n_ops: usize, max_leaf: i64) -> Ax {
    if n_ops == 0 {
        return Ax::Num(rng.range(1, max_leaf));
    }
    let left = rng.below_mod(n_ops);
    let op = *rng.pick(&["+", "-", "*", "//", "%"]);
    Ax::Bin(
        op,
        Box::new(gen_ax(rng, left, max_leaf)),
        Box::new(gen_ax(rng, n_ops - 1 - left, max_leaf)),
    )
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 {
        a.abs()
    } else {
        gcd(b, a % b)
    }
}

/// Generate one task of `family`/`op` at `level` (the op must be valid there).
pub fn gen_task_of(family: &str, op: &str, level: u8, rng: &mut SplitMix64) -> Option<Task> {
    let (inputs, prompt, answer): (Json, String, String) = match family {
        "list" => gen_list(op, level, rng)?,
        "string" => gen_string(op, level, rng)?,
        "arith" => gen_arith(op, level, rng)?,
        _ => return None,
    };
    let key = canonical_key(family, op, &inputs);
    let id = format!("{family}-{op}-{:016x}", fnv1a(key.as_bytes(), 0));
    Some(Task {
        id,
        family: family.to_string(),
        op: op.to_string(),
        level,
        prompt,
        inputs,
        answer,
    })
}
/// Inputs, prompt and answer of a new `arith` task.
fn gen_arith(op: &str, level: u8, rng: &mut SplitMix64) -> Option<(Json, String, String)> {
    Some(match op {
        "expr" => {
            let (n_ops, max_leaf) = match level {
                1 => (1, 50),
                2 => (2, 30),
                _ => (3, 20),
            };
            let mut tries = 0;
            loop {
                tries += 1;
                let ax = gen_ax(rng, n_ops, max_leaf);
                // Integer results of moderate size only.
                if let Some(v) = ax.eval() {
                    if v.abs() <= 10_000 {
                        let e = ax.render();
                        break (json!({ "expr": e }), format!("Compute {e}."), v.to_string());
                    }
                }
                if tries > 100 {
                    return None;
                }
            }
        }
        "gcd" | "lcm" => {
            let hi = match (op, level) {
                ("gcd", 1) => 50,
                ("gcd", _) => 120,
                (_, 2) => 15,
                _ => 30,
            };
            let a = rng.range(2, hi);
            let b = rng.range(2, hi);
            let g = gcd(a, b);
            if op == "gcd" {
                (
                    json!({ "a": a, "b": b }),
                    format!("What is the greatest common divisor of {a} and {b}?"),
                    g.to_string(),
                )
            } else {
                (
                    json!({ "a": a, "b": b }),
                    format!("What is the least common multiple of {a} and {b}?"),
                    (a / g * b).to_string(),
                )
            }
        }
        "pow" => {
            let (a, b) = if level == 2 {
                (rng.range(2, 9), rng.range(2, 3))
            } else {
                (rng.range(2, 12), rng.range(2, 5))
            };
            (
                json!({ "a": a, "b": b }),
                format!("What is {a} to the power of {b}?"),
                a.pow(b as u32).to_string(),
            )
        }
        _ => return None,
    })
}

/// Inputs, prompt and answer of a new `string` task.
fn gen_string(op: &str, level: u8, rng: &mut SplitMix64) -> Option<(Json, String, String)> {
    Some({
        let word = |rng: &mut SplitMix64| -> String {
            if level == 2 {
                rng.pick(&LONG_WORDS).to_string()
            } else {
                rng.pick(&SHORT_WORDS).to_string()
            }
        };
        match op {
            "reverse" | "upper" | "length" | "upper_reverse" => {
                let s = word(rng);
                let rev: String = s.chars().rev().collect();
                let (p, a) = match op {
                    "reverse" => (format!("Reverse the string {}.", q(&s)), rev),
                    "upper" => (format!("Write {} in upper case.", q(&s)), s.to_uppercase()),
                    "length" => (
                        format!("How many letters are in {}?", q(&s)),
                        s.chars().count().to_string(),
                    ),
                    _ => (
                        format!("Reverse {} and write it in upper case.", q(&s)),
                        rev.to_uppercase(),
                    ),
                };
                (json!({ "s": s }), p, a)
            }
            "count_char" => {
                let s = word(rng);
                let cs: Vec<char> = s.chars().collect();
                let c = if rng.chance(0.85) {
                    cs[rng.below_mod(cs.len())]
                } else {
                    (b'a' + rng.below_mod(26) as u8) as char
                };
                let n = cs.iter().filter(|x| **x == c).count();
                (
                    json!({ "s": s, "c": c.to_string() }),
                    format!(
                        "How many times does {} appear in {}?",
                        q(&c.to_string()),
                        q(&s)
                    ),
                    n.to_string(),
                )
            }
            "concat" | "concat_len" | "concat_reverse" => {
                let a = word(rng);
                let mut b = word(rng);
                while b == a {
                    b = word(rng);
                }
                let ab = format!("{a}{b}");
                let (p, ans) = match op {
                    "concat" => (format!("Join {} and {}.", q(&a), q(&b)), ab.clone()),
                    "concat_len" => (
                        format!("How many letters are in {} and {} together?", q(&a), q(&b)),
                        ab.chars().count().to_string(),
                    ),
                    _ => (
                        format!("Join {} and {}, then reverse it.", q(&a), q(&b)),
                        ab.chars().rev().collect(),
                    ),
                };
                (json!({ "a": a, "b": b }), p, ans)
            }
            "repeat" => {
                let s = rng.pick(&SHORT_WORDS[..30]).to_string();
                let n = rng.range(3, 4);
                (
                    json!({ "s": s, "n": n }),
                    format!("Repeat {} {n} times.", q(&s)),
                    s.repeat(n as usize),
                )
            }
            _ => return None,
        }
    })
}

/// Inputs, prompt and answer of a new `list` task.
fn gen_list(op: &str, level: u8, rng: &mut SplitMix64) -> Option<(Json, String, String)> {
    Some({
        let n = match level {
            1 => rng.range(3, 4),
            2 => rng.range(5, 7),
            _ => rng.range(4, 6),
        } as usize;
        let hi = if op == "count" {
            9
        } else if level == 1 {
            20
        } else {
            99
        };
        let xs: Vec<i64> = (0..n).map(|_| rng.range(0, hi)).collect();
        let l = list_text(&xs);
        let mut sorted = xs.clone();
        sorted.sort();
        let evens: Vec<i64> = xs.iter().copied().filter(|x| x % 2 == 0).collect();
        let odds: Vec<i64> = xs.iter().copied().filter(|x| x % 2 != 0).collect();
        let mut inputs = json!({ "xs": xs });
        let (prompt, answer) = match op {
            "sum" => (
                format!("What is the sum of {l}?"),
                xs.iter().sum::<i64>().to_string(),
            ),
            "max" => (
                format!("What is the largest number in {l}?"),
                sorted[n - 1].to_string(),
            ),
            "min" => (
                format!("What is the smallest number in {l}?"),
                sorted[0].to_string(),
            ),
            "sort" => (format!("Sort {l} in ascending order."), list_text(&sorted)),
            "reverse" => {
                let r: Vec<i64> = xs.iter().rev().copied().collect();
                (format!("Reverse the list {l}."), list_text(&r))
            }
            "len" => (format!("How many numbers are in {l}?"), n.to_string()),
            "count" => {
                let k = if rng.chance(0.8) {
                    xs[rng.below_mod(n)]
                } else {
                    rng.range(0, 9)
                };
                inputs = json!({ "xs": xs, "k": k });
                (
                    format!("How many times does {k} appear in {l}?"),
                    xs.iter().filter(|x| **x == k).count().to_string(),
                )
            }
            "evens" => (
                format!("Keep only the even numbers of {l}."),
                list_text(&evens),
            ),
            "odds" => (
                format!("Keep only the odd numbers of {l}."),
                list_text(&odds),
            ),
            "sum_squares" => (
                format!("What is the sum of the squares of {l}?"),
                xs.iter().map(|x| x * x).sum::<i64>().to_string(),
            ),
            "sum_evens" => (
                format!("What is the sum of the even numbers in {l}?"),
                evens.iter().sum::<i64>().to_string(),
            ),
            "count_odds" => (
                format!("How many odd numbers are in {l}?"),
                odds.len().to_string(),
            ),
            "sort_desc" => {
                let r: Vec<i64> = sorted.iter().rev().copied().collect();
                (format!("Sort {l} in descending order."), list_text(&r))
            }
            "span" => (
                format!("What is the largest minus the smallest number in {l}?"),
                (sorted[n - 1] - sorted[0]).to_string(),
            ),
            "double" => {
                let d: Vec<i64> = xs.iter().map(|x| 2 * x).collect();
                (format!("Double every number in {l}."), list_text(&d))
            }
            _ => return None,
        };
        (inputs, prompt, answer)
    })
}

/// Generate one random task: uniform level, family, then op.
pub fn gen_task(rng: &mut SplitMix64) -> Option<Task> {
    let level = rng.range(1, 3) as u8;
    let family = *rng.pick(&FAMILIES);
    let op = *rng.pick(ops_of(family, level));
    gen_task_of(family, op, level, rng)
}

/// Generate `n_train` train and `n_test` test tasks, deterministically from
/// `seed`. Tasks are unique within the output; the split of each task is
/// [`Task::split`], so no task appears in both.
pub fn generate(
    seed: u64,
    n_train: usize,
    n_test: usize,
) -> anyhow::Result<(Vec<Task>, Vec<Task>)> {
    let mut rng = SplitMix64::derive(seed, "afm-tasks-generate");
    let mut seen = std::collections::HashSet::new();
    let (mut train, mut test) = (Vec::new(), Vec::new());
    let budget = 200 * (n_train + n_test) + 10_000;
    for _ in 0..budget {
        if train.len() >= n_train && test.len() >= n_test {
            break;
        }
        let Some(t) = gen_task(&mut rng) else {
            continue;
        };
        if !seen.insert(t.id.clone()) {
            continue;
        }
        match t.split() {
            Split::Train if train.len() < n_train => train.push(t),
            Split::Test if test.len() < n_test => test.push(t),
            _ => {}
        }
    }
    if train.len() < n_train || test.len() < n_test {
        anyhow::bail!(
            "could only generate {} train and {} test distinct tasks (asked {n_train} and {n_test})",
            train.len(),
            test.len()
        );
    }
    Ok((train, test))
}

/// `n` train-split tasks drawn independently from the task distribution
/// (`gen_task`), deterministically from `seed`, each task at most
/// `max_repeats` times (0: no limit, the natural mixture).
///
/// Unlike [`generate`], a task can come more than once. [`generate`]'s
/// distinct tasks under-weight the ops whose input space is small: 32,000
/// distinct train tasks hold 39 `arith-pow` tasks (0.1%) where the task
/// distribution has 6.4% (and the held-out set 2.5%). Drawing with
/// repetition gives those ops back their share; the cap bounds how often
/// one task is seen, so the large ops keep most of the data. Held-out
/// tasks are never produced.
pub fn sample_train(seed: u64, n: usize, max_repeats: usize) -> anyhow::Result<Vec<Task>> {
    let mut rng = SplitMix64::derive(seed, "afm-tasks-sample-train");
    let mut seen: std::collections::HashMap<String, usize> = Default::default();
    let mut train = Vec::with_capacity(n);
    let budget = 200 * n + 10_000;
    for _ in 0..budget {
        if train.len() >= n {
            break;
        }
        let Some(t) = gen_task(&mut rng).filter(|t| t.split() == Split::Train) else {
            continue;
        };
        let k = seen.entry(t.id.clone()).or_default();
        if max_repeats == 0 || *k < max_repeats {
            *k += 1;
            train.push(t);
        }
    }
    if train.len() < n {
        anyhow::bail!(
            "could only sample {} train tasks of at most {max_repeats} repeats each (asked {n})",
            train.len()
        );
    }
    Ok(train)
}

// ---------------------------------------------------------------- solutions

/// The correct plan and program for a task, and plausible wrong plans
/// (each with the program a faithful Coder would write for it).
#[derive(Debug, Clone)]
pub struct Solution {
    pub plan: String,
    pub program: String,
    pub wrong_plans: Vec<(String, String)>,
}

fn get_str(inputs: &Json, k: &str) -> Option<String> {
    inputs.get(k)?.as_str().map(str::to_string)
}

fn get_int(inputs: &Json, k: &str) -> Option<i64> {
    inputs.get(k)?.as_i64()
}

/// Reference solution of a task (from its op and inputs), or `None` for an
/// unknown op or malformed inputs.
pub fn solution(task: &Task) -> Option<Solution> {
    let (plan, program, wrong): SolutionParts = match task.family.as_str() {
        "list" => list_solution(task)?,
        "string" => string_solution(task)?,
        "arith" => arith_solution(task)?,
        _ => return None,
    };
    Some(Solution {
        plan: plan.to_string(),
        program,
        wrong_plans: wrong,
    })
}
/// What a family's solver gives: the plan, the program and wrong plans
/// `(plan, program)` of the scripted Planner's mistakes.
type SolutionParts = (&'static str, String, Vec<(String, String)>);

/// The plan, the Coder's program and the wrong plans of a `arith` task.
fn arith_solution(task: &Task) -> Option<SolutionParts> {
    let i = &task.inputs;
    let pp = |plan: &str, prog: String| (plan.to_string(), prog);
    Some(match task.op.as_str() {
        "expr" => {
            let e = get_str(i, "expr")?;
            let prog = crate::lang::token_spans(&e).ok()?;
            // Wrong readings: all '+', all '*', or strictly left to right.
            let mut nums = Vec::new();
            let mut ops = Vec::new();
            for (a, b, k) in &prog {
                match k {
                    crate::lang::TokenKind::Int => nums.push(&e[*a..*b]),
                    crate::lang::TokenKind::Symbol if !["(", ")"].contains(&&e[*a..*b]) => {
                        ops.push(&e[*a..*b])
                    }
                    _ => {}
                }
            }
            let mut ltr = nums.first().map(|s| s.to_string()).unwrap_or_default();
            for (k, op) in ops.iter().enumerate() {
                let n = nums.get(k + 1).copied().unwrap_or("0");
                ltr = if k + 1 < ops.len() {
                    format!("({ltr} {op} {n})")
                } else {
                    format!("{ltr} {op} {n}")
                };
            }
            (
                "Evaluate the expression.",
                e.clone(),
                vec![
                    pp("Evaluate it from left to right.", ltr),
                    pp("Add up all the numbers.", nums.join(" + ")),
                    pp("Multiply all the numbers.", nums.join(" * ")),
                ],
            )
        }
        "gcd" | "lcm" | "pow" => {
            let a = get_int(i, "a")?;
            let b = get_int(i, "b")?;
            match task.op.as_str() {
                "gcd" => (
                    "Find the greatest common divisor.",
                    format!("gcd({a}, {b})"),
                    vec![
                        pp("Find the least common multiple.", format!("lcm({a}, {b})")),
                        pp("Take the smaller number.", format!("min({a}, {b})")),
                    ],
                ),
                "lcm" => (
                    "Find the least common multiple.",
                    format!("lcm({a}, {b})"),
                    vec![
                        pp(
                            "Find the greatest common divisor.",
                            format!("gcd({a}, {b})"),
                        ),
                        pp("Multiply the two numbers.", format!("{a} * {b}")),
                    ],
                ),
                _ => (
                    "Raise the first to the power of the second.",
                    format!("{a} ** {b}"),
                    vec![
                        pp("Multiply the two numbers.", format!("{a} * {b}")),
                        pp(
                            "Raise the second to the power of the first.",
                            format!("{b} ** {a}"),
                        ),
                    ],
                ),
            }
        }
        _ => return None,
    })
}

/// The plan, the Coder's program and the wrong plans of a `string` task.
fn string_solution(task: &Task) -> Option<SolutionParts> {
    let i = &task.inputs;
    let pp = |plan: &str, prog: String| (plan.to_string(), prog);
    Some(match task.op.as_str() {
        "reverse" | "upper" | "length" | "upper_reverse" => {
            let s = q(&get_str(i, "s")?);
            match task.op.as_str() {
                "reverse" => (
                    "Reverse the string.",
                    format!("reversed({s})"),
                    vec![
                        pp("Write it in upper case.", format!("upper({s})")),
                        pp("Sort its letters.", format!("join(sorted({s}), \"\")")),
                    ],
                ),
                "upper" => (
                    "Write it in upper case.",
                    format!("upper({s})"),
                    vec![
                        pp("Reverse the string.", format!("reversed({s})")),
                        pp(
                            "Reverse it, then upper case.",
                            format!("upper(reversed({s}))"),
                        ),
                    ],
                ),
                "length" => (
                    "Count the letters.",
                    format!("len({s})"),
                    vec![
                        pp("Count the letters of it twice.", format!("len({s} + {s})")),
                        pp("Count the letter \"a\".", format!("count({s}, \"a\")")),
                    ],
                ),
                _ => (
                    "Reverse it, then upper case.",
                    format!("upper(reversed({s}))"),
                    vec![
                        pp("Write it in upper case.", format!("upper({s})")),
                        pp("Reverse the string.", format!("reversed({s})")),
                    ],
                ),
            }
        }
        "count_char" => {
            let s = q(&get_str(i, "s")?);
            let c = q(&get_str(i, "c")?);
            (
                "Count that letter.",
                format!("count({s}, {c})"),
                vec![
                    pp("Count the letters.", format!("len({s})")),
                    pp(
                        "Count the letters that differ.",
                        format!("len({s}) - count({s}, {c})"),
                    ),
                ],
            )
        }
        "concat" | "concat_len" | "concat_reverse" => {
            let a = q(&get_str(i, "a")?);
            let b = q(&get_str(i, "b")?);
            match task.op.as_str() {
                "concat" => (
                    "Join the two strings.",
                    format!("{a} + {b}"),
                    vec![pp("Join them in reverse order.", format!("{b} + {a}"))],
                ),
                "concat_len" => (
                    "Join them, then count the letters.",
                    format!("len({a} + {b})"),
                    vec![
                        pp("Count the letters of the first.", format!("len({a})")),
                        pp("Count the letters of the second.", format!("len({b})")),
                    ],
                ),
                _ => (
                    "Join them, then reverse.",
                    format!("reversed({a} + {b})"),
                    vec![
                        pp(
                            "Reverse each, then join them.",
                            format!("reversed({a}) + reversed({b})"),
                        ),
                        pp("Join the two strings.", format!("{a} + {b}")),
                    ],
                ),
            }
        }
        "repeat" => {
            let s = q(&get_str(i, "s")?);
            let n = get_int(i, "n")?;
            (
                "Repeat the string.",
                format!("{s} * {n}"),
                vec![
                    pp("Join the string with itself.", format!("{s} + {s}")),
                    pp("Write it in upper case.", format!("upper({s})")),
                ],
            )
        }
        _ => return None,
    })
}

/// The plan, the Coder's program and the wrong plans of a `list` task.
fn list_solution(task: &Task) -> Option<SolutionParts> {
    let i = &task.inputs;
    let pp = |plan: &str, prog: String| (plan.to_string(), prog);
    Some({
        let xs: Vec<i64> = i
            .get("xs")?
            .as_array()?
            .iter()
            .map(|v| v.as_i64())
            .collect::<Option<_>>()?;
        let l = list_text(&xs);
        match task.op.as_str() {
            "sum" => (
                "Add up the numbers.",
                format!("sum({l})"),
                vec![
                    pp("Count the numbers.", format!("len({l})")),
                    pp("Take the largest number.", format!("max({l})")),
                ],
            ),
            "max" => (
                "Take the largest number.",
                format!("max({l})"),
                vec![pp("Take the smallest number.", format!("min({l})"))],
            ),
            "min" => (
                "Take the smallest number.",
                format!("min({l})"),
                vec![pp("Take the largest number.", format!("max({l})"))],
            ),
            "sort" => (
                "Sort the list ascending.",
                format!("sorted({l})"),
                vec![
                    pp("Reverse the list.", format!("reversed({l})")),
                    pp(
                        "Sort the list descending.",
                        format!("reversed(sorted({l}))"),
                    ),
                ],
            ),
            "reverse" => (
                "Reverse the list.",
                format!("reversed({l})"),
                vec![
                    pp("Sort the list ascending.", format!("sorted({l})")),
                    pp(
                        "Sort the list descending.",
                        format!("reversed(sorted({l}))"),
                    ),
                ],
            ),
            "len" => (
                "Count the numbers.",
                format!("len({l})"),
                vec![pp("Add up the numbers.", format!("sum({l})"))],
            ),
            "count" => {
                let k = get_int(i, "k")?;
                (
                    "Count how often the number appears.",
                    format!("count({l}, {k})"),
                    vec![
                        pp("Count the numbers.", format!("len({l})")),
                        pp(
                            "Count the numbers above it.",
                            format!("len(filter(x => x > {k}, {l}))"),
                        ),
                    ],
                )
            }
            "evens" => (
                "Keep the even numbers.",
                format!("filter(even, {l})"),
                vec![pp("Keep the odd numbers.", format!("filter(odd, {l})"))],
            ),
            "odds" => (
                "Keep the odd numbers.",
                format!("filter(odd, {l})"),
                vec![pp("Keep the even numbers.", format!("filter(even, {l})"))],
            ),
            "sum_squares" => (
                "Square each number, then add them up.",
                format!("sum(map(x => x * x, {l}))"),
                vec![
                    pp("Add up the numbers.", format!("sum({l})")),
                    pp(
                        "Double each number, then add them up.",
                        format!("sum(map(x => x * 2, {l}))"),
                    ),
                ],
            ),
            "sum_evens" => (
                "Keep the even numbers, then add them up.",
                format!("sum(filter(even, {l}))"),
                vec![
                    pp(
                        "Keep the odd numbers, then add them up.",
                        format!("sum(filter(odd, {l}))"),
                    ),
                    pp("Add up the numbers.", format!("sum({l})")),
                ],
            ),
            "count_odds" => (
                "Keep the odd numbers, then count them.",
                format!("len(filter(odd, {l}))"),
                vec![
                    pp(
                        "Keep the even numbers, then count them.",
                        format!("len(filter(even, {l}))"),
                    ),
                    pp("Count the numbers.", format!("len({l})")),
                ],
            ),
            "sort_desc" => (
                "Sort the list descending.",
                format!("reversed(sorted({l}))"),
                vec![
                    pp("Sort the list ascending.", format!("sorted({l})")),
                    pp("Reverse the list.", format!("reversed({l})")),
                ],
            ),
            "span" => (
                "Subtract the smallest from the largest.",
                format!("max({l}) - min({l})"),
                vec![
                    pp("Take the largest number.", format!("max({l})")),
                    pp(
                        "Add the largest and the smallest.",
                        format!("max({l}) + min({l})"),
                    ),
                ],
            ),
            "double" => (
                "Double each number.",
                format!("map(x => x * 2, {l})"),
                vec![
                    pp("Square each number.", format!("map(x => x * x, {l})")),
                    pp("Add 2 to each number.", format!("map(x => x + 2, {l})")),
                ],
            ),
            _ => return None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lang::{run_to_observation, Limits};

    #[test]
    fn every_reference_program_matches_the_independent_answer() {
        let (train, test) = generate(7, 3000, 300).unwrap();
        let lim = Limits::default();
        let mut ops = std::collections::BTreeSet::new();
        for t in train.iter().chain(&test) {
            let s = solution(t).unwrap_or_else(|| panic!("no solution for {t:?}"));
            let obs = run_to_observation(&s.program, &lim);
            assert_eq!(obs, t.answer, "{t:?}\nprogram {}", s.program);
            assert!(verify(t, &obs));
            for (_, p) in &s.wrong_plans {
                assert!(!run_to_observation(p, &lim).starts_with("error"), "{p}");
            }
            ops.insert((t.family.clone(), t.op.clone(), t.level));
        }
        // Every (family, op, level) of the catalogue occurs.
        let mut all = 0;
        for f in FAMILIES {
            for l in 1..=3 {
                all += ops_of(f, l).len();
            }
        }
        assert_eq!(ops.len(), all);
    }

    #[test]
    fn split_is_a_function_of_the_task_and_disjoint() {
        let (train_a, test_a) = generate(1, 2000, 200).unwrap();
        let (train_b, test_b) = generate(2, 2000, 200).unwrap();
        let test_ids: std::collections::HashSet<_> =
            test_a.iter().chain(&test_b).map(|t| t.key()).collect();
        for t in train_a.iter().chain(&train_b) {
            assert_eq!(t.split(), Split::Train);
            assert!(!test_ids.contains(&t.key()), "{t:?} in both splits");
        }
        for t in test_a.iter().chain(&test_b) {
            assert_eq!(t.split(), Split::Test);
        }
        // Tasks equal in content (ids equal) regardless of the seed that made them.
        let ids_a: std::collections::HashSet<_> = train_a.iter().map(|t| &t.id).collect();
        assert_eq!(ids_a.len(), train_a.len(), "train tasks are unique");
        // A duplicate made by a different seed has the same id, key and split.
        let common = train_b.iter().filter(|t| ids_a.contains(&t.id)).count();
        assert!(common > 0, "small task spaces should overlap across seeds");
    }

    #[test]
    fn generation_is_deterministic() {
        assert_eq!(generate(5, 300, 30).unwrap(), generate(5, 300, 30).unwrap());
        assert_ne!(
            generate(5, 300, 30).unwrap().0,
            generate(6, 300, 30).unwrap().0
        );
    }

    /// Share of each op in a task list.
    fn op_shares(tasks: &[Task]) -> std::collections::BTreeMap<String, f64> {
        let mut m = std::collections::BTreeMap::new();
        for t in tasks {
            *m.entry(format!("{}-{}", t.family, t.op)).or_insert(0.0) += 1.0;
        }
        m.values_mut().for_each(|v| *v /= tasks.len() as f64);
        m
    }

    #[test]
    fn sampled_train_tasks_keep_the_natural_mixture() {
        let n = 20_000;
        let sampled = sample_train(3, n, 0).unwrap();
        assert_eq!(sampled.len(), n);
        assert_eq!(sampled, sample_train(3, n, 0).unwrap(), "deterministic");
        assert_ne!(sampled, sample_train(4, n, 0).unwrap());
        assert!(sampled.iter().all(|t| t.split() == Split::Train));
        // The reference mixture: every draw of the distribution, both splits.
        let mut rng = SplitMix64::new(99);
        let natural: Vec<Task> = (0..n).filter_map(|_| gen_task(&mut rng)).collect();
        let (want, got) = (op_shares(&natural), op_shares(&sampled));
        let (distinct, _) = generate(3, n, 0).unwrap();
        let flat = op_shares(&distinct);
        for (op, w) in &want {
            let g = got.get(op).copied().unwrap_or(0.0);
            assert!(
                (g - w).abs() < 0.25 * w + 0.002,
                "{op}: sampled {g:.4}, natural {w:.4}"
            );
        }
        // The small-space op the distinct generator starves.
        let pow = "arith-pow".to_string();
        assert!(
            flat[&pow] * 5.0 < want[&pow],
            "{} vs {}",
            flat[&pow],
            want[&pow]
        );
        let ids: std::collections::HashSet<_> = sampled.iter().map(|t| &t.id).collect();
        assert!(ids.len() < n, "small spaces repeat");
        // A cap of 8 repeats: no task more than 8 times; the small op gets
        // back part of its share, between the two.
        let capped = sample_train(3, n, 8).unwrap();
        let mut count = std::collections::HashMap::<&str, usize>::new();
        capped
            .iter()
            .for_each(|t| *count.entry(&t.id).or_default() += 1);
        assert_eq!(count.values().max(), Some(&8));
        let c = op_shares(&capped)[&pow];
        assert!(flat[&pow] * 2.0 < c && c * 2.0 < want[&pow], "{c}");
        eprintln!(
            "distinct ids {} of {n}; pow natural {:.4} distinct {:.4} sampled {:.4}",
            ids.len(),
            want[&pow],
            flat[&pow],
            got[&pow]
        );
        for (op, w) in &want {
            eprintln!(
                "{op} natural {w:.4} distinct {:.4}",
                flat.get(op).copied().unwrap_or(0.0)
            );
        }
    }

    #[test]
    fn verify_normalises() {
        let mut t = gen_task_of("list", "sort", 1, &mut SplitMix64::new(3)).unwrap();
        t.answer = "[1, 2, 3]".into();
        assert!(verify(&t, "[1,2,3]"));
        assert!(verify(&t, "  [ 1, 2,  3 ]. "));
        assert!(!verify(&t, "[1, 2]"));
        t.answer = "42".into();
        assert!(verify(&t, " 42\n"));
        assert!(verify(&t, "+42"));
        assert!(!verify(&t, "41"));
        assert!(!verify(&t, ""));
        t.answer = "ELPPA".into();
        assert!(verify(&t, "\"ELPPA\""));
        assert!(!verify(&t, "elppa"));
    }

    #[test]
    fn task_files_round_trip_and_errors_name_the_line() {
        let (train, _) = generate(9, 50, 5).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t/train.jsonl");
        save_tasks(&p, &train).unwrap();
        assert_eq!(load_tasks(&p).unwrap(), train);
        let bad = format!(
            "{}\n{{\"id\": 3}}\n",
            serde_json::to_string(&train[0]).unwrap()
        );
        let e = parse_tasks(&bad, "x.jsonl").unwrap_err().to_string();
        assert!(e.starts_with("x.jsonl:2: bad task"), "{e}");
        let mut t = train[0].clone();
        t.level = 9;
        let e = parse_tasks(&serde_json::to_string(&t).unwrap(), "y.jsonl")
            .unwrap_err()
            .to_string();
        assert!(e.contains("y.jsonl:1: field `level`"), "{e}");
    }
}
