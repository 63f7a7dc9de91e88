//! The shipped default dataset (`datasets/`) regenerates byte-identically
//! from its documented seed and settings (checked on a prefix, which is
//! enough: tasks are generated as a stream and each trajectory draws from
//! its own (seed, task id) random stream).

use afm_tasks::{default_dataset_config, generate, solve, DEFAULT_DATASET_SEED};
use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn first_lines(path: &str, n: usize) -> Vec<String> {
    let p = root().join(path);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let lines: Vec<String> = text.lines().take(n).map(str::to_string).collect();
    assert_eq!(lines.len(), n, "{} has fewer than {n} lines", p.display());
    lines
}

/// Compare line by line, reporting only the first difference.
fn same_lines(got: &[String], want: &[String], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: line count");
    if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
        panic!(
            "{what}: line {} differs (regenerate with the commands in datasets/README.md)\n  regenerated: {}\n  committed:   {}",
            i + 1,
            got[i],
            want[i]
        );
    }
}

fn json_lines<T: serde::Serialize>(xs: &[T]) -> Vec<String> {
    xs.iter()
        .map(|x| serde_json::to_string(x).unwrap())
        .collect()
}

#[test]
fn committed_task_files_regenerate_identically() {
    let (train, _) = generate(DEFAULT_DATASET_SEED, 300, 0).unwrap();
    same_lines(
        &json_lines(&train),
        &first_lines("datasets/tasks/train.jsonl", 300),
        "datasets/tasks/train.jsonl",
    );
    let (_, test) = generate(DEFAULT_DATASET_SEED, 0, 60).unwrap();
    same_lines(
        &json_lines(&test),
        &first_lines("datasets/tasks/test.jsonl", 60),
        "datasets/tasks/test.jsonl",
    );
}

#[test]
fn committed_trajectories_regenerate_identically() {
    let (train, _) = generate(DEFAULT_DATASET_SEED, 300, 0).unwrap();
    let cfg = default_dataset_config();
    let trajs: Vec<_> = train.iter().map(|t| solve(t, &cfg).unwrap()).collect();
    same_lines(
        &json_lines(&trajs),
        &first_lines("datasets/scripted/train.jsonl", 300),
        "datasets/scripted/train.jsonl",
    );
    // And twice in a row in memory.
    let again: Vec<_> = train.iter().map(|t| solve(t, &cfg).unwrap()).collect();
    assert_eq!(trajs, again);
}

#[test]
fn committed_test_split_is_held_out() {
    let train = afm_tasks::load_tasks(&root().join("datasets/tasks/train.jsonl")).unwrap();
    let test = afm_tasks::load_tasks(&root().join("datasets/tasks/test.jsonl")).unwrap();
    let train_keys: std::collections::HashSet<String> = train.iter().map(|t| t.key()).collect();
    let train_prompts: std::collections::HashSet<&str> =
        train.iter().map(|t| t.prompt.as_str()).collect();
    for t in &test {
        assert_eq!(t.split(), afm_tasks::Split::Test);
        assert!(!train_keys.contains(&t.key()), "{} is also in train", t.id);
        assert!(
            !train_prompts.contains(t.prompt.as_str()),
            "{} prompt in train",
            t.id
        );
    }
    assert!(train.iter().all(|t| t.split() == afm_tasks::Split::Train));
}
