//! The TRL export (`afm_data::export::trl`): every exported row equals its
//! shard row exactly (fields checked one by one against the shards, and
//! rebuilt whole with `to_row`), the sidecar matches the dataset, hostile
//! shards are refused with the row and position named, and the Python side
//! (`python/tests/test_trl_export.py`: `datasets`, TRL's padding-free
//! collator, transformers' loss) agrees.

mod common;

use afm_data::export::trl::{self, Sidecar, TrlRow, IGNORE_INDEX, SIDECAR};
use afm_data::export::{self, ExportFormat};
use afm_data::{prepare, AgentWeights, LongMode, PrepareConfig};
use afm_format::shards::Shards;
use afm_tokenizer::{Tokenizer, EOT, FIRST_ROLE_TOKEN};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A small prepared dataset: 4 agents' roles, several documents per row,
/// windowed long documents (context without loss), a Reviewer weight of
/// 0.5 (non-binary loss weights) and a validation split.
fn prepared(dir: &Path) -> PathBuf {
    let input = dir.join("gen.jsonl");
    common::write_native(&input, 120, 11);
    let out = dir.join("prepared");
    let mut weights = AgentWeights::default();
    weights.weights.insert("Reviewer".into(), 0.5);
    let cfg = PrepareConfig {
        inputs: vec![input],
        out: out.clone(),
        seq_len: 160,
        max_tokens: Some(72),
        long: LongMode::Window,
        val_fraction: 0.2,
        weights,
        ..Default::default()
    };
    let m = prepare(&cfg).unwrap();
    assert_eq!(m.kept, 120);
    assert!(m.windowed > 0, "the fixture must window some documents");
    out
}

fn read_rows(path: &Path) -> Vec<TrlRow> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn sidecar(out: &Path) -> Sidecar {
    serde_json::from_str(&std::fs::read_to_string(out.join(SIDECAR)).unwrap()).unwrap()
}

#[test]
fn trl_rows_equal_the_shard_rows() {
    let d = tempfile::tempdir().unwrap();
    let prep = prepared(d.path());
    let out = d.path().join("trl");
    let w = export::trl::write(&prep, &out).unwrap();
    let names: Vec<String> = w
        .files
        .iter()
        .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["train.jsonl", "val.jsonl"]);
    assert_eq!(w.sidecar, Some(out.join(SIDECAR)));
    let meta = sidecar(&out);
    let tok =
        Tokenizer::from_json(&std::fs::read_to_string(prep.join("vocab.json")).unwrap()).unwrap();
    assert_eq!(meta.agents, ["Planner", "Coder", "Reviewer"]);
    assert_eq!(
        meta.roles,
        ["(none)", "(observation)", "Planner", "Coder", "Reviewer"]
    );
    assert_eq!(meta.vocab_size, FIRST_ROLE_TOKEN as usize + 3);
    assert_eq!(meta.vocab, tok.vocab_file());
    assert_eq!((meta.tokenizer.as_str(), meta.row_len), ("r50k_base", 160));
    let (mut multi_doc_rows, mut half_weights, mut context) = (0, 0, 0);
    for (split, (path, n)) in ["train", "val"].iter().zip(&w.files) {
        let shards = Shards::open(&prep, split).unwrap();
        let rows = read_rows(path);
        assert_eq!((rows.len(), *n), (shards.rows(), shards.rows()));
        let info = &meta.splits[*split];
        assert_eq!(info.file.as_deref(), Some(&*format!("{split}.jsonl")));
        assert_eq!(info.documents, shards.index.documents);
        assert_eq!(info.tokens, shards.index.real_tokens);
        assert_eq!(info.loss_tokens, shards.index.loss_tokens);
        assert_eq!(
            info.padding_dropped,
            shards.index.rows * shards.index.row_len - shards.index.real_tokens
        );
        for (r, t) in rows.iter().enumerate() {
            let row = shards.row(r);
            // Whole row, padding included, rebuilt from the export.
            assert_eq!(
                trl::to_row(t, shards.index.row_len).unwrap(),
                row,
                "{split} row {r}"
            );
            // Field by field against the shards (not through to_row).
            let real = t.input_ids.len();
            assert_eq!(t.input_ids[..], row.tokens[..real]);
            assert!(row.tokens[real..].iter().all(|&x| x == EOT));
            assert_eq!(t.agent_ids[..], row.roles[..real]);
            let pos: Vec<u32> = row.positions[..real].iter().map(|&p| p.into()).collect();
            assert_eq!(t.position_ids, pos);
            let mut s = 0;
            for &l in &t.seq_lengths {
                let e = s + l as usize;
                assert!(row.docs[s..e].iter().all(|&x| x == row.docs[s]));
                assert_eq!(t.labels[s], IGNORE_INDEX, "document start");
                assert_eq!(t.position_ids[s], 0);
                for j in s + 1..e {
                    // TRL's convention: labels[j] is what position j-1 predicts.
                    let trained = row.weights[j - 1] > 0.0;
                    let want = if trained {
                        i64::from(row.targets[j - 1])
                    } else {
                        IGNORE_INDEX
                    };
                    assert_eq!(t.labels[j], want, "{split} row {r} position {j}");
                    assert_eq!(t.loss_weights[j].to_bits(), row.weights[j - 1].to_bits());
                    assert_eq!(t.owner_ids[j], row.owners[j - 1]);
                    half_weights += usize::from(t.loss_weights[j] == 0.5);
                    context += usize::from(!trained && t.agent_ids[j] >= 2);
                }
                s = e;
            }
            assert_eq!(s, real);
            multi_doc_rows += usize::from(t.seq_lengths.len() > 1);
        }
    }
    assert!(multi_doc_rows > 0 && half_weights > 0 && context > 0);
    // Exporting again replaces the files with the same bytes.
    let before = std::fs::read(out.join("train.jsonl")).unwrap();
    export::trl::write(&prep, &out).unwrap();
    assert_eq!(std::fs::read(out.join("train.jsonl")).unwrap(), before);
}

/// The venv python `cargo xtask test` passes as `AFM_TEST_PYTHON`; without
/// it, the venv `cargo xtask setup` makes (xtask/src/setup.rs, `venv_python`).
fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("AFM_TEST_PYTHON") {
        return p.into();
    }
    let cache = if let Some(d) = std::env::var_os("AFM_TORCH_HOME") {
        PathBuf::from(d)
    } else if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        PathBuf::from(d).join("afm")
    } else {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".cache")
            .join("afm")
    };
    cache.join("torch-2.13.0").join("bin").join("python")
}

#[test]
fn python_datasets_and_trl_read_the_export() {
    let py = python();
    let d = tempfile::tempdir().unwrap();
    // Python puts its working directory on sys.path: run it where no
    // folder can pass for a package (the checkout has a `datasets/`).
    let ready = Command::new(&py)
        .current_dir(d.path())
        .args(["-c", "import numpy, datasets, trl, transformers, torch"])
        .output();
    match ready {
        Ok(o) if o.status.success() => {}
        other => panic!(
            "the TRL export test needs a python with numpy, datasets and trl: {} {}. \
             Run `cargo xtask setup` (it installs them into the torch venv) or set \
             AFM_TEST_PYTHON to such a python.",
            py.display(),
            match other {
                Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
                Err(e) => e.to_string(),
            }
        ),
    }
    let prep = prepared(d.path());
    let out = d.path().join("trl");
    export::trl::write(&prep, &out).unwrap();
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../python/tests/test_trl_export.py");
    let o = Command::new(&py)
        .current_dir(d.path())
        .arg(&script)
        .arg("--export")
        .arg(&out)
        .arg("--prepared")
        .arg(&prep)
        .env("HF_HOME", d.path().join("hf"))
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(
        o.status.success(),
        "{}\n{stdout}\n{stderr}",
        script.display()
    );
    assert!(stdout.contains("test_trl_export: ok"), "{stdout}\n{stderr}");
    eprintln!("{stdout}");
}

/// Write `value` at `index` of a little-endian u32/f32 shard array.
fn poke(path: &Path, index: usize, bytes: [u8; 4]) {
    let mut b = std::fs::read(path).unwrap();
    b[index * 4..index * 4 + 4].copy_from_slice(&bytes);
    std::fs::write(path, b).unwrap();
}

#[test]
fn hostile_inputs_are_refused_with_file_row_and_position() {
    let d = tempfile::tempdir().unwrap();
    let prep = prepared(d.path());
    let out = d.path().join("trl");
    export::trl::write(&prep, &out).unwrap();
    let s = Shards::open(&prep, "train").unwrap();
    let l = s.index.row_len;
    let row = s.row(2);
    let first_len = row.docs.iter().take_while(|&&x| x == row.docs[0]).count();
    let at = 2 * l + 3; // row 2, position 3
    let keep = |name: &str| std::fs::read(prep.join(name)).unwrap();
    let restore = |name: &str, b: &[u8]| std::fs::write(prep.join(name), b).unwrap();
    let cases: Vec<(&str, usize, [u8; 4], &str)> = vec![
        // A target that is not the next token.
        (
            "train.targets.u32",
            at,
            7u32.to_le_bytes(),
            "is not the document's next token",
        ),
        // A trained last position of a document.
        (
            "train.weights.f32",
            2 * l + first_len - 1,
            1.0f32.to_le_bytes(),
            "last position has weight",
        ),
    ];
    for (file, index, bytes, what) in cases {
        let b = keep(file);
        poke(&prep.join(file), index, bytes);
        let e = format!("{:#}", export::trl::write(&prep, &out).unwrap_err());
        assert!(e.contains("train.*: row 2"), "{file}: {e}");
        assert!(e.contains(what), "{file}: {e}");
        // A failed export leaves no sidecar that could describe it.
        assert!(!out.join(SIDECAR).exists(), "{file}");
        restore(file, &b);
    }
    // A token outside the vocabulary (its target is kept consistent).
    let (bt, bg) = (keep("train.tokens.u32"), keep("train.targets.u32"));
    poke(&prep.join("train.tokens.u32"), at, 60_000u32.to_le_bytes());
    poke(
        &prep.join("train.targets.u32"),
        at - 1,
        60_000u32.to_le_bytes(),
    );
    let e = format!("{:#}", export::trl::write(&prep, &out).unwrap_err());
    assert!(e.contains("row 2") && e.contains("token id 60000"), "{e}");
    restore("train.tokens.u32", &bt);
    restore("train.targets.u32", &bg);
    // A role id outside vocab.json's roles.
    let b = keep("train.roles.u16");
    let mut r = b.clone();
    r[(2 * l + 3) * 2..(2 * l + 3) * 2 + 2].copy_from_slice(&9u16.to_le_bytes());
    restore("train.roles.u16", &r);
    let e = format!("{:#}", export::trl::write(&prep, &out).unwrap_err());
    assert!(e.contains("row 2") && e.contains("role id 9"), "{e}");
    restore("train.roles.u16", &b);
    // Padding with a weight.
    if let Some(p) = (0..s.rows()).find_map(|r| {
        let row = s.row(r);
        (row.tokens[l - 1] == EOT).then_some(r * l + l - 1)
    }) {
        let b = keep("train.weights.f32");
        poke(&prep.join("train.weights.f32"), p, 1.0f32.to_le_bytes());
        let e = format!("{:#}", export::trl::write(&prep, &out).unwrap_err());
        assert!(e.contains("padding"), "{e}");
        restore("train.weights.f32", &b);
    }
    // Not a prepared dataset; a prepared dataset without vocab.json.
    let e = format!("{:#}", export::trl::write(d.path(), &out).unwrap_err());
    assert!(
        e.contains("not a prepared dataset") && e.contains("afm prepare"),
        "{e}"
    );
    let v = keep("vocab.json");
    std::fs::remove_file(prep.join("vocab.json")).unwrap();
    let e = format!("{:#}", export::trl::write(&prep, &out).unwrap_err());
    assert!(e.contains("vocab.json"), "{e}");
    std::fs::write(prep.join("vocab.json"), b"{\"bpe\": 3}").unwrap();
    let e = format!("{:#}", export::trl::write(&prep, &out).unwrap_err());
    assert!(e.contains("vocab.json"), "{e}");
    restore("vocab.json", &v);
    // Restored, it exports again.
    export::trl::write(&prep, &out).unwrap();
    assert!(out.join(SIDECAR).exists());
}

#[test]
fn an_empty_split_gets_no_file() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("gen.jsonl");
    common::write_native(&input, 20, 5);
    let prep = d.path().join("prepared");
    let out = d.path().join("trl");
    // An old val.jsonl from an earlier export must not survive.
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("val.jsonl"), "{}\n").unwrap();
    let cfg = PrepareConfig {
        inputs: vec![input],
        out: prep.clone(),
        val_fraction: 0.0,
        ..Default::default()
    };
    prepare(&cfg).unwrap();
    assert_eq!(Shards::open(&prep, "val").unwrap().rows(), 0);
    let w = export::trl::write(&prep, &out).unwrap();
    assert_eq!(w.files.len(), 1, "{:?}", w.files);
    assert!(!out.join("val.jsonl").exists());
    let meta = sidecar(&out);
    assert_eq!(meta.splits["val"].file, None);
    assert_eq!(meta.splits["val"].rows, 0);
    assert_eq!(meta.splits["train"].documents, 20);
}

#[test]
fn format_names() {
    for (s, f) in [
        ("trl", ExportFormat::Trl),
        ("llama-factory", ExportFormat::LlamaFactory),
        ("sharegpt", ExportFormat::LlamaFactory),
        ("axolotl", ExportFormat::Axolotl),
        ("coa", ExportFormat::Coa),
    ] {
        assert_eq!(s.parse::<ExportFormat>().unwrap(), f);
    }
    assert_eq!(ExportFormat::LlamaFactory.to_string(), "llama-factory");
    let e = "parquet".parse::<ExportFormat>().unwrap_err();
    assert!(e.contains("trl, llama-factory, axolotl, coa"), "{e}");
}

/// `from_row` and `to_row` on hand-made rows: one document, two documents
/// and padding, a full row; `to_row` refuses rows `from_row` cannot write.
#[test]
fn hand_made_rows_round_trip() {
    use afm_format::shards::Row;
    // Doc A: [T, a, b, END] weights [0, 1, .5, 0]; doc B: [T, c] weights [1, 0]; 2 padding.
    let row = Row {
        tokens: vec![50257, 10, 11, 50258, 50257, 12, EOT, EOT],
        targets: vec![10, 11, 50258, EOT, 12, EOT, EOT, EOT],
        weights: vec![0.0, 1.0, 0.5, 0.0, 1.0, 0.0, 0.0, 0.0],
        roles: vec![0, 2, 2, 2, 0, 3, 0, 0],
        owners: vec![0, 2, 2, 0, 3, 0, 0, 0],
        positions: vec![0, 1, 2, 3, 0, 1, 0, 1],
        docs: vec![0, 0, 0, 0, 1, 1, 2, 2],
    };
    let t = trl::from_row(&row).unwrap();
    assert_eq!(t.input_ids, [50257, 10, 11, 50258, 50257, 12]);
    assert_eq!(t.labels, [-100, -100, 11, 50258, -100, 12]);
    assert_eq!(t.loss_weights, [0.0, 0.0, 1.0, 0.5, 0.0, 1.0]);
    assert_eq!(t.owner_ids, [0, 0, 2, 2, 0, 3]);
    assert_eq!(t.position_ids, [0, 1, 2, 3, 0, 1]);
    assert_eq!(t.seq_lengths, [4, 2]);
    assert_eq!(trl::to_row(&t, 8).unwrap(), row);
    // A full row (no padding) round-trips too.
    let full = trl::to_row(&t, 6).unwrap();
    assert_eq!(
        trl::to_row(&trl::from_row(&full).unwrap(), 6).unwrap(),
        full
    );
    // Bad export rows.
    let mut bad = t.clone();
    bad.seq_lengths = vec![4, 1];
    assert!(trl::to_row(&bad, 8).unwrap_err().contains("seq_lengths"));
    let mut bad = t.clone();
    bad.labels[1] = 10;
    assert!(trl::to_row(&bad, 8).unwrap_err().contains("position 1"));
    assert!(trl::to_row(&t, 5).unwrap_err().contains("do not fit"));
    let mut bad = t.clone();
    bad.owner_ids.pop();
    assert!(trl::to_row(&bad, 8).unwrap_err().contains("lengths"));
    // Only padding; positions that do not restart.
    let pad = trl::to_row(
        &TrlRow {
            input_ids: vec![],
            labels: vec![],
            position_ids: vec![],
            seq_lengths: vec![],
            agent_ids: vec![],
            owner_ids: vec![],
            loss_weights: vec![],
        },
        4,
    )
    .unwrap();
    assert!(trl::from_row(&pad).unwrap_err().contains("no document"));
    let mut bad = row.clone();
    bad.positions[5] = 7;
    assert!(trl::from_row(&bad).unwrap_err().contains("position 5"));
}
