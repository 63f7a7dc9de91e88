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
//! - [`Transform::Resolve`]: for records a task world can re-solve, a new
//!   task of the same kind with fresh inputs, solved again and verified.
//!   `afm-data` has no task world: the caller injects one as a
//!   [`Resolver`] (the `afm` CLI passes `afm-tasks`' scripted agents, which
//!   re-solve generated tasks from their `meta` and produce only
//!   train-split tasks). The re-solved record goes through the same checks
//!   as a native input record.
//!
//! Which records get which transform is chosen in the polars table of
//! [`crate::prepare`] (train split only, so a held-out task never leaks);
//! each augmented record's id is `SOURCE+TRANSFORM` and its `meta.augment`
//! records `{source, transform}`.

use afm_format::fnv1a;
use afm_format::{StepKind, Trajectory};
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

/// A task world that re-solves records with new inputs: what
/// [`Transform::Resolve`] needs. Injected by the caller of
/// [`crate::prepare::prepare_with`], so `afm-data` depends on no task world.
pub trait Resolver: Sync {
    /// True when `t` can be re-solved (its metadata says how); decides which
    /// records get a `resolve` row in the augmentation plan.
    fn can_resolve(&self, t: &Trajectory) -> bool;

    /// A new task like `t`'s with inputs drawn from `seed`, solved and
    /// verified, as a record; `None` when no such task was found.
    fn resolve(&self, t: &Trajectory, seed: u64) -> Option<Trajectory>;
}

/// Apply `tr` to a copy of `t`; `None` when it would change nothing (or,
/// for [`Transform::Resolve`], when there is no `resolver`, or it finds no
/// verified variant, or the variant fails the native record checks).
pub fn apply(t: &Trajectory, tr: Transform, resolver: Option<&dyn Resolver>) -> Option<Trajectory> {
    let mut a = t.clone();
    match tr {
        Transform::Resolve(seed) => {
            let solved = resolver?.resolve(t, seed ^ fnv1a(t.id.as_bytes(), 0))?;
            a = crate::ingest::check(
                solved,
                &crate::ingest::IngestLimits::default(),
                crate::ingest::Format::Native,
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
                let h = fnv1a(n.as_bytes(), seed) % 1000;
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
    use afm_format::Step;

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
        let a = apply(&src, Transform::Rename(7), None).unwrap();
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

    /// A resolver that rewrites the task when the record has a `meta`.
    struct Stub;
    impl Resolver for Stub {
        fn can_resolve(&self, t: &Trajectory) -> bool {
            t.meta.is_some()
        }
        fn resolve(&self, t: &Trajectory, seed: u64) -> Option<Trajectory> {
            let mut n = t.clone();
            n.task = format!("{} (variant {seed:x})", t.task);
            n.id = "solved".into();
            n.meta = Some(serde_json::json!({"split": "train"}));
            Some(n)
        }
    }

    /// The seed the resolver gets mixes in the record id; the result keeps
    /// its own content, gets the `SOURCE+resolve` id and the augment meta,
    /// and is checked like an input record. No resolver: no variant.
    #[test]
    fn resolve_uses_the_injected_resolver() {
        let mut src = t();
        src.meta = Some(serde_json::json!({"family": "f"}));
        let a = apply(&src, Transform::Resolve(1), Some(&Stub)).unwrap();
        let mixed = 1 ^ fnv1a(b"r1", 0);
        assert_eq!(a.task, format!("Sum the list xs (variant {mixed:x})"));
        assert_eq!(a.id, "r1+resolve");
        assert_eq!(a.steps, src.steps);
        let meta = a.meta.as_ref().unwrap();
        assert_eq!(meta["augment"]["transform"], "resolve");
        assert_eq!(meta["augment"]["source"], "r1");
        assert_eq!(meta["split"], "train");
        assert!(apply(&src, Transform::Resolve(1), None).is_none());
        // A variant that fails the input checks (a NUL byte) is dropped.
        struct Nul;
        impl Resolver for Nul {
            fn can_resolve(&self, _: &Trajectory) -> bool {
                true
            }
            fn resolve(&self, t: &Trajectory, _: u64) -> Option<Trajectory> {
                let mut n = t.clone();
                n.task = "bad\0task".into();
                Some(n)
            }
        }
        assert!(apply(&src, Transform::Resolve(1), Some(&Nul)).is_none());
    }

    #[test]
    fn template_rewords_only_the_task() {
        let src = t();
        let a = apply(&src, Transform::Template(0), None).unwrap();
        assert_eq!(a.task, "Task: Sum the list xs");
        assert_eq!(a.steps, src.steps);
        assert_eq!(a.id, "r1+template0");
    }
}
