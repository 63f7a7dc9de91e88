//! Augmentations that keep every target correct.
//!
//! - [`Transform::Template`]: rewords the task with a fixed template
//!   (`"Task: {task}"`...). The trajectory and answer are untouched, so
//!   every agent turn is still a correct continuation.
//! - [`Transform::Rename`]: renames identifiers that agents assign in their
//!   code (`name = ...`) and that never reach the answer: a name is only
//!   renamed when it does not occur in the task, the answer, the metadata or
//!   any observation (so tool outputs, which the rename could change, and
//!   the final answer are byte-identical). Renaming is consistent across all
//!   agent turns.
//! - [`Transform::Resolve`]: for generated tasks whose `meta` says how to
//!   re-solve them (`family`, `op`, `level`, `inputs`, `task_id`, `expected`,
//!   as written by `afm-tasks`), perturb the inputs and solve again with
//!   `afm_tasks::perturb_and_solve`: error-free scripted agents, answer
//!   checked by the task's verifier; only train-split tasks are produced.
//!
//! Which records get which transform is chosen in the polars table of
//! [`crate::prepare`] (train split only, so a held-out task never leaks);
//! each augmented record's id is `SOURCE+TRANSFORM` and its `meta.augment`
//! records `{source, transform}`.

use crate::record::{StepKind, Trajectory};
use std::collections::{BTreeSet, HashMap};

/// Task-wording templates (`{task}` is replaced by the task).
pub const TEMPLATES: [&str; 5] = [
    "Task: {task}",
    "Please solve the following.\n{task}",
    "{task}\nWork it out step by step.",
    "Here is a problem for the team: {task}",
    "Question: {task}",
];

/// An augmentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transform {
    /// Reword the task with `TEMPLATES[k]`.
    Template(u8),
    /// Rename safe identifiers (seeded).
    Rename(u64),
    /// Perturb a generated task's inputs and re-solve it with the verifier (seeded).
    Resolve(u64),
}

impl Transform {
    /// Short name (`template2`, `rename`).
    pub fn name(&self) -> String {
        match self {
            Transform::Template(k) => format!("template{k}"),
            Transform::Rename(_) => "rename".into(),
            Transform::Resolve(_) => "resolve".into(),
        }
    }

    /// Kind name for counting (`template`, `rename`).
    pub fn kind(&self) -> &'static str {
        match self {
            Transform::Template(_) => "template",
            Transform::Rename(_) => "rename",
            Transform::Resolve(_) => "resolve",
        }
    }
}

const KEYWORDS: [&str; 40] = [
    "and", "as", "assert", "break", "class", "continue", "def", "del", "elif", "else", "except",
    "false", "finally", "for", "from", "global", "if", "import", "in", "is", "lambda", "none",
    "not", "or", "pass", "raise", "return", "true", "try", "while", "with", "yield", "let", "mut",
    "fn", "print", "len", "sum", "range", "self",
];

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Identifiers (length >= 2) assigned with `name =` (not `==`) in agent outputs.
fn assigned_identifiers(t: &Trajectory) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for s in t.steps.iter().filter(|s| s.kind == StepKind::Agent) {
        let b = s.text.as_bytes();
        let mut i = 0;
        while i < b.len() {
            let c = b[i] as char;
            if is_ident_start(c) && (i == 0 || !is_ident_char(b[i - 1] as char)) {
                let st = i;
                while i < b.len() && is_ident_char(b[i] as char) {
                    i += 1;
                }
                let name = &s.text[st..i];
                let mut j = i;
                while j < b.len() && b[j] == b' ' {
                    j += 1;
                }
                if j < b.len()
                    && b[j] == b'='
                    && b.get(j + 1) != Some(&b'=')
                    && (j == 0 || b[j - 1] != b'!')
                {
                    let lower = name.to_ascii_lowercase();
                    if name.len() >= 2 && !KEYWORDS.contains(&lower.as_str()) {
                        out.insert(name.to_string());
                    }
                }
            } else {
                i += 1;
            }
        }
    }
    out
}

fn contains_word(hay: &str, w: &str) -> bool {
    let mut from = 0;
    while let Some(k) = hay[from..].find(w) {
        let s = from + k;
        let e = s + w.len();
        let before = hay[..s].chars().next_back().is_some_and(is_ident_char);
        let after = hay[e..].chars().next().is_some_and(is_ident_char);
        if !before && !after {
            return true;
        }
        from = s + 1;
        while !hay.is_char_boundary(from) {
            from += 1;
        }
    }
    false
}

/// Identifiers that [`Transform::Rename`] may change in `t`.
pub fn renamable(t: &Trajectory) -> Vec<String> {
    let meta = t.meta.as_ref().map(|m| m.to_string()).unwrap_or_default();
    assigned_identifiers(t)
        .into_iter()
        .filter(|w| {
            !contains_word(&t.task, w)
                && !t.answer.as_deref().is_some_and(|a| contains_word(a, w))
                && !contains_word(&meta, w)
                && !t
                    .steps
                    .iter()
                    .any(|s| s.kind == StepKind::Observation && contains_word(&s.text, w))
        })
        .collect()
}

fn replace_words(text: &str, map: &HashMap<&str, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    for c in text.chars() {
        if is_ident_char(c) {
            word.push(c);
        } else {
            if !word.is_empty() {
                out.push_str(map.get(word.as_str()).map(String::as_str).unwrap_or(&word));
                word.clear();
            }
            out.push(c);
        }
    }
    if !word.is_empty() {
        out.push_str(map.get(word.as_str()).map(String::as_str).unwrap_or(&word));
    }
    out
}

/// The `afm-tasks` task a generated record was made from, when its `meta`
/// carries what re-solving needs.
pub fn source_task(t: &Trajectory) -> Option<afm_tasks::Task> {
    let m = t.meta.as_ref()?;
    Some(afm_tasks::Task {
        id: m.get("task_id")?.as_str()?.to_string(),
        family: m.get("family")?.as_str()?.to_string(),
        op: m.get("op")?.as_str()?.to_string(),
        level: u8::try_from(m.get("level")?.as_u64()?).ok()?,
        prompt: t.task.clone(),
        inputs: m.get("inputs")?.clone(),
        answer: m.get("expected")?.as_str()?.to_string(),
    })
}

/// Apply `tr` to a copy of `t`; `None` when it would change nothing (or,
/// for [`Transform::Resolve`], when no verified train-split variant exists).
pub fn apply(t: &Trajectory, tr: Transform) -> Option<Trajectory> {
    let mut a = t.clone();
    match tr {
        Transform::Resolve(seed) => {
            let task = source_task(t)?;
            let (_, solved) = afm_tasks::perturb_and_solve(
                &task,
                seed ^ crate::score::fnv1a(t.id.as_bytes(), 0),
            )?;
            let v = serde_json::to_value(&solved).ok()?;
            a = crate::ingest::convert(
                &v,
                crate::ingest::Format::Native,
                &crate::ingest::Limits::default(),
                &t.id,
            )
            .ok()?;
            if a.task == t.task {
                return None;
            }
        }
        Transform::Template(k) => {
            let tpl = TEMPLATES.get(k as usize)?;
            a.task = tpl.replace("{task}", &t.task);
        }
        Transform::Rename(seed) => {
            let names = renamable(t);
            if names.is_empty() {
                return None;
            }
            let all_words: BTreeSet<&str> = t
                .steps
                .iter()
                .flat_map(|s| s.text.split(|c: char| !is_ident_char(c)))
                .chain(t.task.split(|c: char| !is_ident_char(c)))
                .collect();
            let mut map = HashMap::new();
            for (i, n) in names.iter().enumerate() {
                let h = crate::score::fnv1a(n.as_bytes(), seed) % 1000;
                let mut new = format!("{}_{h}", if n.len() > 8 { &n[..1] } else { "v" });
                let mut k = 0;
                while all_words.contains(new.as_str()) || map.values().any(|v| v == &new) {
                    k += 1;
                    new = format!("v{i}_{h}_{k}");
                }
                map.insert(n.as_str(), new);
            }
            for s in a.steps.iter_mut().filter(|s| s.kind == StepKind::Agent) {
                s.text = replace_words(&s.text, &map);
            }
        }
    }
    a.id = format!("{}+{}", t.id, tr.name());
    let mut meta = match a.meta.take() {
        Some(serde_json::Value::Object(m)) => m,
        Some(other) => {
            let mut m = serde_json::Map::new();
            m.insert("original".into(), other);
            m
        }
        None => serde_json::Map::new(),
    };
    meta.insert(
        "augment".into(),
        serde_json::json!({"source": t.id, "transform": tr.name()}),
    );
    a.meta = Some(serde_json::Value::Object(meta));
    Some(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Step;

    fn t() -> Trajectory {
        let st = |a: &str, k, x: &str| Step {
            agent: a.into(),
            kind: k,
            text: x.into(),
        };
        Trajectory {
            id: "r1".into(),
            task: "Sum the list xs".into(),
            steps: vec![
                st(
                    "Coder",
                    StepKind::Agent,
                    "total = 0\nfor item in xs: total = total + item\nprint(total)\nresult = total",
                ),
                st("tool", StepKind::Observation, "6"),
                st("Reviewer", StepKind::Agent, "result is 6; total checked"),
            ],
            success: Some(true),
            score: None,
            answer: Some("6".into()),
            meta: None,
        }
    }

    #[test]
    fn rename_keeps_task_answer_and_observations() {
        let src = t();
        assert_eq!(
            renamable(&src),
            vec!["result".to_string(), "total".to_string()]
        );
        let a = apply(&src, Transform::Rename(7)).unwrap();
        assert_eq!(a.task, src.task);
        assert_eq!(a.answer, src.answer);
        assert_eq!(a.steps[1], src.steps[1]);
        assert!(!a.steps[0].text.contains("total") && a.steps[0].text.contains("xs"));
        assert_eq!(a.meta.unwrap()["augment"]["source"], "r1");
        // A name that shows up in an observation is never renamed.
        let mut s2 = src.clone();
        s2.steps[1].text = "total: 6".into();
        assert_eq!(renamable(&s2), vec!["result".to_string()]);
    }

    #[test]
    fn resolve_makes_a_new_verified_task() {
        let task = afm_tasks::generate(5, 1, 0).unwrap().0.remove(0);
        let tr = afm_tasks::solve(&task, &afm_tasks::AgentConfig::default()).unwrap();
        let v = serde_json::to_value(&tr).unwrap();
        let src =
            crate::ingest::convert(&v, crate::ingest::Format::Native, &Default::default(), "x")
                .unwrap();
        assert_eq!(source_task(&src).unwrap().id, task.id);
        let a = apply(&src, Transform::Resolve(1)).unwrap();
        assert_ne!(a.task, src.task);
        assert_eq!(a.success, Some(true));
        assert_eq!(a.meta.as_ref().unwrap()["augment"]["transform"], "resolve");
        assert_eq!(a.meta.as_ref().unwrap()["split"], "train");
        // Records without re-solve metadata are not eligible.
        assert!(apply(&t(), Transform::Resolve(1)).is_none());
    }

    #[test]
    fn template_rewords_only_the_task() {
        let src = t();
        let a = apply(&src, Transform::Template(0)).unwrap();
        assert_eq!(a.task, "Task: Sum the list xs");
        assert_eq!(a.steps, src.steps);
        assert_eq!(a.id, "r1+template0");
    }
}
