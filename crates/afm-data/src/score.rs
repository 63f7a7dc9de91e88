//! Quality score, curriculum difficulty and dedup keys.
//!
//! ## Quality score (0..=100), the sum of six parts
//!
//! | part        | max | rule                                                                                  |
//! |-------------|-----|---------------------------------------------------------------------------------------|
//! | outcome     | 40  | `success`/`is_correct` (or a verifier's verdict in `meta.verified`) true 40, false 0, unknown 20 |
//! | score field | 20  | `score` in [0,1] -> 20*s, in (1,100] -> 20*s/100, outside -> 0, absent -> 10         |
//! | length      | 15  | agent text 20..=200000 bytes -> 15; shorter or longer -> 5; no agent text -> 0       |
//! | role order  | 10  | first step is an agent's and the last is not an observation -> 10, else 0            |
//! | no loops    | 10  | `10 * (1 - min(1, 2r))`, r = share of agent turns repeating an earlier turn (same agent, same normalised text) |
//! | tags        | 5   | every `<think>`/`<plan>`/`<reflection>`/`<code>`/`<answer>`/`<observation>`/`<tool_call>` opened is closed and code fences are even -> 5, else 0 |
//!
//! `--min-score N` filters records below N; the filter reason is the part
//! that lost the most points (`low_score:outcome`, `low_score:loops`...).
//!
//! ## Difficulty (curriculum)
//!
//! `difficulty = log2(1 + tokens) + 0.5 * agent_turns + 1.0 * tool_calls`.

use afm_format::fnv1a;
use afm_format::{StepKind, Trajectory};

/// Quality parts and their sum.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quality {
    pub outcome: f64,
    pub score_field: f64,
    pub length: f64,
    pub role_order: f64,
    pub loops: f64,
    pub tags: f64,
}

/// Names and maxima of the quality parts, in order.
pub const PARTS: [(&str, f64); 6] = [
    ("outcome", 40.0),
    ("score_field", 20.0),
    ("length", 15.0),
    ("role_order", 10.0),
    ("loops", 10.0),
    ("tags", 5.0),
];

impl Quality {
    /// Sum of the parts, in 0..=100.
    pub fn total(&self) -> f64 {
        self.parts().iter().sum()
    }

    /// Parts in `PARTS` order.
    pub fn parts(&self) -> [f64; 6] {
        [
            self.outcome,
            self.score_field,
            self.length,
            self.role_order,
            self.loops,
            self.tags,
        ]
    }

    /// Index (into `PARTS`) of the part that lost the most points.
    pub fn worst_part(&self) -> usize {
        let p = self.parts();
        let mut best = 0;
        let mut lost = f64::MIN;
        for (i, (_, max)) in PARTS.iter().enumerate() {
            if max - p[i] > lost {
                lost = max - p[i];
                best = i;
            }
        }
        best
    }
}

/// Outcome: `success`, else `meta.verified` when a verifier recorded one.
pub fn outcome(t: &Trajectory) -> Option<bool> {
    t.success.or_else(|| {
        t.meta
            .as_ref()
            .and_then(|m| m.get("verified"))
            .and_then(|v| v.as_bool())
    })
}

/// The quality score of a trajectory (see the module docs).
pub fn quality(t: &Trajectory) -> Quality {
    let outcome = match outcome(t) {
        Some(true) => 40.0,
        Some(false) => 0.0,
        None => 20.0,
    };
    let score_field = match t.score {
        None => 10.0,
        Some(s) if (0.0..=1.0).contains(&s) => 20.0 * s,
        Some(s) if s > 1.0 && s <= 100.0 => 20.0 * s / 100.0,
        Some(_) => 0.0,
    };
    let agent_bytes: usize = t
        .steps
        .iter()
        .filter(|s| s.kind == StepKind::Agent)
        .map(|s| s.text.len())
        .sum();
    let length = match agent_bytes {
        0 => 0.0,
        20..=200_000 => 15.0,
        _ => 5.0,
    };
    let first_ok = t.steps.first().is_some_and(|s| s.kind == StepKind::Agent);
    let last_ok = t.steps.last().is_some_and(|s| s.kind == StepKind::Agent);
    let role_order = if first_ok && last_ok { 10.0 } else { 0.0 };
    let mut seen = std::collections::HashSet::new();
    let (mut turns, mut repeats) = (0usize, 0usize);
    for s in t.steps.iter().filter(|s| s.kind == StepKind::Agent) {
        turns += 1;
        if !seen.insert((s.agent.as_str(), normalise(&s.text))) {
            repeats += 1;
        }
    }
    let r = if turns == 0 {
        0.0
    } else {
        repeats as f64 / turns as f64
    };
    let loops = 10.0 * (1.0 - (2.0 * r).min(1.0));
    let tags = if tags_balanced(t) { 5.0 } else { 0.0 };
    Quality {
        outcome,
        score_field,
        length,
        role_order,
        loops,
        tags,
    }
}

const TAGS: [&str; 7] = [
    "think",
    "plan",
    "reflection",
    "code",
    "answer",
    "observation",
    "tool_call",
];

fn tags_balanced(t: &Trajectory) -> bool {
    let mut fences = 0usize;
    for s in &t.steps {
        fences += s.text.matches("```").count();
        for tag in TAGS {
            if s.text.matches(&format!("<{tag}>")).count()
                != s.text.matches(&format!("</{tag}>")).count()
            {
                return false;
            }
        }
    }
    fences.is_multiple_of(2)
}

/// Curriculum difficulty from a token count, agent turns and tool calls.
pub fn difficulty(tokens: usize, agent_turns: usize, tool_calls: usize) -> f64 {
    (1.0 + tokens as f64).log2() + 0.5 * agent_turns as f64 + tool_calls as f64
}

/// Whitespace collapsed, trimmed, lowercased: the text the dedup and split keys see.
pub fn normalise(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for w in s.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.extend(w.chars().flat_map(char::to_lowercase));
    }
    out
}

/// Key of the task: what the train/validation split and held-out checks use.
pub fn task_key(task: &str) -> u64 {
    fnv1a(normalise(task).as_bytes(), 0)
}

/// Key of the whole trajectory (normalised task + steps): the dedup key.
pub fn content_key(t: &Trajectory) -> u64 {
    let mut h = task_key(&t.task);
    for s in &t.steps {
        let k = match s.kind {
            StepKind::Agent => 1,
            StepKind::Observation => 2,
        };
        h = fnv1a(s.agent.as_bytes(), h ^ k);
        h = fnv1a(normalise(&s.text).as_bytes(), h);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use afm_format::Step;

    fn t(success: Option<bool>, texts: &[&str]) -> Trajectory {
        Trajectory {
            id: "a".into(),
            task: "Task".into(),
            steps: texts
                .iter()
                .map(|x| Step {
                    agent: "A".into(),
                    kind: StepKind::Agent,
                    text: x.to_string(),
                })
                .collect(),
            success,
            score: None,
            answer: None,
            meta: None,
        }
    }

    #[test]
    fn score_parts() {
        let good = quality(&t(
            Some(true),
            &[
                "a long enough answer text here",
                "and a second distinct turn",
            ],
        ));
        assert_eq!(good.total(), 40.0 + 10.0 + 15.0 + 10.0 + 10.0 + 5.0);
        let looping = quality(&t(
            Some(true),
            &[
                "same turn again and again",
                "same  turn again and AGAIN",
                "x",
            ],
        ));
        assert!(looping.loops < 10.0);
        let failed = quality(&t(Some(false), &["a long enough answer text here"]));
        assert_eq!(PARTS[failed.worst_part()].0, "outcome");
        let tags = quality(&t(None, &["<think> unclosed and long enough"]));
        assert_eq!(tags.tags, 0.0);
        let mut obs_last = t(None, &["a long enough answer text here"]);
        obs_last.steps.push(Step {
            agent: "tool".into(),
            kind: StepKind::Observation,
            text: "1".into(),
        });
        assert_eq!(quality(&obs_last).role_order, 0.0);
    }

    #[test]
    fn keys_normalise() {
        assert_eq!(task_key("Add  2\nand 3 "), task_key("add 2 and 3"));
        assert_ne!(task_key("add 2 and 3"), task_key("add 2 and 4"));
        let a = t(None, &["Hello   world"]);
        let b = t(None, &["hello world"]);
        assert_eq!(content_key(&a), content_key(&b));
        assert!(difficulty(100, 4, 2) > difficulty(10, 1, 0));
    }
}
