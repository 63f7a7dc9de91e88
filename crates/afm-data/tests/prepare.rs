//! The whole pipeline on generated native records: shard invariants
//! (roles, owners, weights, positions, documents), packing efficiency,
//! split by task, dedup, score filter, curriculum, augmentation, per-agent
//! weights, determinism.

mod common;

use afm_data::{prepare, AgentWeights, PrepareConfig};
use afm_format::layout::{is_marker, label};
use afm_format::shards::Shards;
use afm_tokenizer::{RoleTracker, Tokenizer, EOT, TASK};
use std::collections::HashSet;
use std::io::Write;
use std::path::Path;

/// Documents of a split: (tokens, weights, owners, roles, targets).
struct D {
    tokens: Vec<u32>,
    weights: Vec<f32>,
    owners: Vec<u32>,
    roles: Vec<u32>,
}

fn docs(dir: &Path, split: &str) -> (Shards, Vec<D>) {
    let s = Shards::open(dir, split).unwrap();
    let l = s.index.row_len;
    let mut out = Vec::new();
    for r in 0..s.rows() {
        let row = s.row(r);
        let mut i = 0;
        while i < l {
            let st = i;
            while i < l && row.docs[i] == row.docs[st] {
                assert_eq!(
                    row.positions[i] as usize,
                    i - st,
                    "positions restart per document"
                );
                i += 1;
            }
            if row.tokens[st] == EOT {
                assert!(
                    row.weights[st..i].iter().all(|&w| w == 0.0),
                    "padding has no loss"
                );
                assert_eq!(i, l, "padding is the row's tail");
                continue;
            }
            for j in st..i - 1 {
                assert_eq!(
                    row.targets[j],
                    row.tokens[j + 1],
                    "target is the next token"
                );
            }
            assert_eq!(
                row.weights[i - 1],
                0.0,
                "last position of a document has no loss"
            );
            out.push(D {
                tokens: row.tokens[st..i].to_vec(),
                weights: row.weights[st..i].to_vec(),
                owners: row.owners[st..i].iter().map(|&x| x as u32).collect(),
                roles: row.roles[st..i].iter().map(|&x| x as u32).collect(),
            });
        }
    }
    (s, out)
}

fn task_of(tok: &Tokenizer, d: &D) -> String {
    assert_eq!(d.tokens[0], TASK);
    let end = d.tokens.iter().position(|&t| is_marker(t)).unwrap();
    afm_format::layout::decode_segment(tok, &d.tokens[1..end]).unwrap()
}

fn cfg(input: &Path, out: &Path) -> PrepareConfig {
    PrepareConfig {
        inputs: vec![input.to_path_buf()],
        out: out.to_path_buf(),
        ..Default::default()
    }
}

#[test]
fn shards_follow_the_format_rule_and_pack_tightly() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("gen.jsonl");
    common::write_native(&input, 3000, 7);
    let out = d.path().join("out");
    let m = prepare(&cfg(&input, &out)).unwrap();
    assert_eq!((m.total, m.kept), (3000, 3000));
    assert!(
        m.packing_efficiency >= 0.98,
        "packing {}",
        m.packing_efficiency
    );
    assert_eq!(
        m.roles,
        vec!["Planner", "Coder", "Reviewer"],
        "agents in first-seen order"
    );
    let tok =
        Tokenizer::from_json(&std::fs::read_to_string(out.join("vocab.json")).unwrap()).unwrap();
    let table = AgentWeights::default().table(&tok);
    let mut n_docs = 0;
    for split in ["train", "val"] {
        let (s, ds) = docs(&out, split);
        assert_eq!(s.index.documents, ds.len());
        assert!(!s.index.curriculum);
        n_docs += ds.len();
        for doc in &ds {
            // Roles come from the tracker; owners and weights from the rule.
            assert_eq!(doc.roles, RoleTracker::roles_of(&doc.tokens));
            let l = label(&doc.tokens);
            assert_eq!(doc.owners, l.owners);
            let w = afm_format::layout::weights_of(&l.owners, &table);
            assert_eq!(&doc.weights[..doc.weights.len() - 1], &w[..w.len() - 1]);
            // Observation content (the python tool) is never trained.
            for i in 0..doc.tokens.len() - 1 {
                if doc.roles[i + 1] == afm_tokenizer::ROLE_OBS && !is_marker(doc.tokens[i + 1]) {
                    assert_eq!(doc.weights[i], 0.0);
                }
            }
        }
    }
    assert_eq!(n_docs, 3000);
}

#[test]
fn split_is_by_task_and_held_out_never_leaks() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("gen.jsonl");
    // 60 tasks, 10 different trajectories each (different numbers in the
    // trajectory, same task text), plus records marked held out.
    let mut rng = common::Lcg(3);
    let mut f = std::fs::File::create(&input).unwrap();
    for i in 0..600 {
        let mut r = common::native_record(i, i % 60, &mut rng);
        r["task"] = format!("Task {}: compute it", i % 60).into();
        writeln!(f, "{r}").unwrap();
    }
    for i in 0..5 {
        let mut r = common::native_record(1000 + i, 1000 + i, &mut rng);
        r["meta"] = serde_json::json!({"split": "test"});
        writeln!(f, "{r}").unwrap();
    }
    drop(f);
    let out = d.path().join("out");
    let c = PrepareConfig {
        val_fraction: 0.3,
        augment: true,
        ..cfg(&input, &out)
    };
    let m = prepare(&c).unwrap();
    let tok =
        Tokenizer::from_json(&std::fs::read_to_string(out.join("vocab.json")).unwrap()).unwrap();
    let strip = |t: String| {
        afm_data::TEMPLATES.iter().fold(t, |t, tpl| {
            let (pre, post) = tpl.split_once("{task}").unwrap();
            match t.strip_prefix(pre).and_then(|x| x.strip_suffix(post)) {
                Some(x) => x.to_string(),
                None => t,
            }
        })
    };
    let train: HashSet<String> = docs(&out, "train")
        .1
        .iter()
        .map(|d| strip(task_of(&tok, d)))
        .collect();
    let val: HashSet<String> = docs(&out, "val")
        .1
        .iter()
        .map(|d| task_of(&tok, d))
        .collect();
    assert!(
        train.is_disjoint(&val),
        "{:?}",
        train.intersection(&val).collect::<Vec<_>>()
    );
    assert!(
        val.len() >= 5 + 5,
        "about 30% of 60 tasks plus the 5 held out: {}",
        val.len()
    );
    for i in 0..5 {
        assert!(val
            .iter()
            .any(|t| t.starts_with(&format!("Task {}:", 1000 + i))));
    }
    // Every train record (and no validation record) got a template rewording.
    assert_eq!(
        m.augmented.get("template").copied(),
        Some(m.kept - m.val.records)
    );
    let aug = std::fs::read_to_string(out.join("augmented.jsonl")).unwrap();
    let n_aug: usize = m
        .augmented
        .iter()
        .filter(|(k, _)| !k.starts_with("skipped"))
        .map(|x| x.1)
        .sum();
    assert_eq!(aug.lines().count(), n_aug);
    assert!(
        m.augmented.get("rename").is_some_and(|&n| n > 0),
        "{:?}",
        m.augmented
    );
    assert!(aug
        .lines()
        .all(|l| l.contains("\"source\"") && l.contains("\"transform\"")));
}

#[test]
fn filters_dedup_and_accounting() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("gen.jsonl");
    let mut rng = common::Lcg(11);
    let mut f = std::fs::File::create(&input).unwrap();
    let mut lines = Vec::new();
    for i in 0..50 {
        let r = common::native_record(i, i, &mut rng);
        lines.push(r);
    }
    // 10 duplicates (whitespace/case changes only), 7 failed runs.
    for i in 0..10 {
        let mut r = lines[i].clone();
        r["id"] = format!("dup{i}").into();
        r["task"] = format!("  {}  ", r["task"].as_str().unwrap().to_uppercase()).into();
        lines.push(r);
    }
    for i in 0..7 {
        let mut r = common::native_record(100 + i, 100 + i, &mut rng);
        r["success"] = false.into();
        lines.push(r);
    }
    for r in &lines {
        writeln!(f, "{r}").unwrap();
    }
    drop(f);
    let out = d.path().join("out");
    let m = prepare(&PrepareConfig {
        min_score: 60.0,
        ..cfg(&input, &out)
    })
    .unwrap();
    assert_eq!(m.total, 67);
    assert_eq!(m.filtered.get("duplicate"), Some(&10));
    assert_eq!(m.filtered.get("low_score:outcome"), Some(&7));
    assert_eq!(m.kept, 50);
    let man: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(man["total"], 67);
    assert_eq!(man["kept"], 50);
}

#[test]
fn curriculum_only_agent_and_determinism() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("gen.jsonl");
    common::write_native(&input, 400, 5);
    let out = d.path().join("cur");
    let c = PrepareConfig {
        curriculum: true,
        val_fraction: 0.0,
        ..cfg(&input, &out)
    };
    prepare(&c).unwrap();
    let (s, ds) = docs(&out, "train");
    assert!(s.index.curriculum);
    // Easy -> hard: the first rows hold shorter documents than the last ones.
    let n = ds.len();
    let avg = |xs: &[D]| xs.iter().map(|d| d.tokens.len()).sum::<usize>() as f64 / xs.len() as f64;
    assert!(
        avg(&ds[..n / 4]) < avg(&ds[3 * n / 4..]),
        "{} vs {}",
        avg(&ds[..n / 4]),
        avg(&ds[3 * n / 4..])
    );

    // --only-agent Coder: loss only where the owner is Coder.
    let out2 = d.path().join("only");
    let c2 = PrepareConfig {
        weights: AgentWeights {
            only: Some("Coder".into()),
            ..Default::default()
        },
        ..cfg(&input, &out2)
    };
    prepare(&c2).unwrap();
    let coder = 2 + 1; // Planner, Coder, Reviewer
    for dd in docs(&out2, "train").1 {
        for (w, o) in dd.weights.iter().zip(&dd.owners) {
            assert!(*w == 0.0 || *o == coder);
        }
        assert!(dd
            .owners
            .iter()
            .zip(&dd.weights)
            .any(|(&o, &w)| o == coder && w == 1.0));
    }
    // An unknown agent name is a clear error.
    let c3 = PrepareConfig {
        weights: AgentWeights {
            only: Some("Nobody".into()),
            ..Default::default()
        },
        ..cfg(&input, &d.path().join("bad"))
    };
    assert!(prepare(&c3).unwrap_err().to_string().contains("Nobody"));

    // Same input and seed: byte-identical shards.
    let out3 = d.path().join("again");
    prepare(&PrepareConfig {
        out: out3.clone(),
        ..c2.clone()
    })
    .unwrap();
    for f in [
        "train.tokens.u32",
        "train.weights.f32",
        "val.owners.u16",
        "vocab.json",
    ] {
        assert_eq!(
            std::fs::read(out2.join(f)).unwrap(),
            std::fs::read(out3.join(f)).unwrap(),
            "{f}"
        );
    }
}

#[test]
fn long_trajectories_window_by_default() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("long.jsonl");
    let mut f = std::fs::File::create(&input).unwrap();
    let mut traj = Vec::new();
    for i in 0..40 {
        traj.push(serde_json::json!({"agent": "Coder", "output": format!("step {i}: {}", "word ".repeat(10))}));
        traj.push(serde_json::json!({"agent": "sh_tool", "observation": format!("out {i}")}));
    }
    traj.push(serde_json::json!({"agent": "Coder", "output": "done"}));
    writeln!(
        f,
        "{}",
        serde_json::json!({"task": "a long job", "trajectory": traj})
    )
    .unwrap();
    drop(f);
    let out = d.path().join("w");
    let m = prepare(&PrepareConfig {
        seq_len: 128,
        val_fraction: 0.0,
        ..cfg(&input, &out)
    })
    .unwrap();
    assert_eq!(m.windowed, 1);
    let (_, ds) = docs(&out, "train");
    assert!(ds.len() > 3);
    assert!(ds
        .iter()
        .all(|d| d.tokens.len() <= 128 && d.tokens[0] == TASK));
    let m = prepare(&PrepareConfig {
        seq_len: 128,
        long: afm_data::LongMode::Drop,
        // Keeps nothing: asked for, so not an error.
        allow_empty: true,
        ..cfg(&input, &d.path().join("drop"))
    })
    .unwrap();
    assert_eq!((m.kept, m.filtered.get("too_long")), (0, Some(&1)));
    let m = prepare(&PrepareConfig {
        seq_len: 128,
        long: afm_data::LongMode::Truncate,
        ..cfg(&input, &d.path().join("t"))
    })
    .unwrap();
    assert_eq!((m.kept, m.truncated), (1, 1));
}

/// `vocab_min_count`: tokens rarer than the cut in the training records get
/// no row and are written as bytes; frequent ones keep theirs; the text is
/// unchanged; every agent's dataset gets the same vocabulary.
#[test]
fn rare_tokens_are_written_as_bytes_and_every_dataset_shares_the_vocabulary() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("gen.jsonl");
    common::write_native(&input, 600, 11);
    let prep = |name: &str, min_count: usize, only: Option<&str>| {
        let out = d.path().join(name);
        let c = PrepareConfig {
            corpus_vocab: true,
            vocab_min_count: min_count,
            weights: AgentWeights {
                only: only.map(str::to_string),
                ..AgentWeights::default()
            },
            ..cfg(&input, &out)
        };
        prepare(&c).unwrap();
        let text = std::fs::read_to_string(out.join("vocab.json")).unwrap();
        let tok = Tokenizer::from_json(&text).unwrap();
        (out, tok)
    };
    let (all_dir, all) = prep("all", 1, None);
    let (cut_dir, cut) = prep("cut", 40, None);
    let (_, coder) = prep("coder", 40, Some("Coder"));
    let (kept_all, kept_cut) = (all.corpus().unwrap(), cut.corpus().unwrap());
    assert_eq!(
        coder.corpus().unwrap().kept(),
        kept_cut.kept(),
        "an agent's dataset has the AFM's vocabulary"
    );
    assert!(
        kept_cut.n_bpe() < kept_all.n_bpe(),
        "the cut drops rare tokens: {} of {}",
        kept_cut.n_bpe(),
        kept_all.n_bpe()
    );

    let (_, docs_all) = docs(&all_dir, "train");
    let (_, docs_cut) = docs(&cut_dir, "train");
    let mut count = vec![0usize; EOT as usize];
    for doc in &docs_all {
        for &t in doc.tokens.iter().filter(|&&t| t < EOT) {
            count[t as usize] += 1;
        }
    }
    let mut frequent = 0;
    for (id, &n) in count.iter().enumerate() {
        if n >= 40 {
            frequent += 1;
            assert!(
                kept_cut.contains(id as u32),
                "token {id} occurs {n} times: kept"
            );
        }
    }
    assert!(
        frequent > 10,
        "the fixture has frequent tokens ({frequent})"
    );
    for doc in &docs_cut {
        for &t in doc.tokens.iter().filter(|&&t| t < EOT) {
            assert!(kept_cut.contains(t), "token {t} in a document has a row");
        }
    }
    // Same text, spelled with the kept tokens and bytes.
    let mut tasks_all: Vec<String> = docs_all.iter().map(|x| task_of(&all, x)).collect();
    let mut tasks_cut: Vec<String> = docs_cut.iter().map(|x| task_of(&cut, x)).collect();
    tasks_all.sort();
    tasks_cut.sort();
    assert_eq!(tasks_all, tasks_cut);
    let len = |ds: &[D]| ds.iter().map(|x| x.tokens.len()).sum::<usize>();
    assert!(
        len(&docs_cut) > len(&docs_all),
        "bytes make the rare tokens' documents longer"
    );
    // At inference the saved vocabulary applies the same cut.
    let rare = (0..EOT)
        .find(|&i| kept_all.contains(i) && !kept_cut.contains(i))
        .unwrap();
    let text = all.decode(&[rare]).unwrap();
    let ids = cut.encode(&text);
    assert!(ids.len() > 1 && ids.iter().all(|&t| kept_cut.contains(t)));
    assert_eq!(cut.decode(&ids).unwrap(), text);
}
