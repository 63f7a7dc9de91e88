//! Checkpoint save/load round trip, vocabulary extension and corrupt files.

use afm_model::{ForwardArgs, GptConfig, Model, Precision, WEIGHTS_FILE};
use afm_tokenizer::{RoleVocab, Tokenizer};
use tch::{Device, Kind, Tensor};

fn tiny(agents: &[&str], seed: i64) -> Model {
    let tok = Tokenizer::new(RoleVocab::from_agents(agents.iter().copied()).unwrap());
    let cfg = GptConfig::preset("tiny", tok.n_vocab(), tok.roles().n_roles()).unwrap();
    Model::new(cfg, tok, Device::Cpu, seed).unwrap()
}

fn same_params(a: &Model, b: &Model) -> bool {
    let (pa, pb) = (a.named_parameters(), b.named_parameters());
    pa.len() == pb.len()
        && pa
            .iter()
            .zip(&pb)
            .all(|((na, ta), (nb, tb))| na == nb && ta.equal(tb))
}

#[test]
fn save_load_round_trip_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck");
    let m = tiny(&["Planner", "Coder"], 11);
    m.save(&ck).unwrap();
    let back = Model::load(&ck, Device::Cpu).unwrap();
    assert_eq!(back.config, m.config);
    assert_eq!(
        back.tokenizer.roles().agents(),
        m.tokenizer.roles().agents()
    );
    assert!(same_params(&m, &back));
    // Saving again over an existing checkpoint replaces it atomically.
    let other = tiny(&["Planner", "Coder"], 12);
    other.save(&ck).unwrap();
    let back = Model::load(&ck, Device::Cpu).unwrap();
    assert!(same_params(&other, &back));
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "no temp dirs left behind");
}

#[test]
fn different_seeds_differ_same_seed_equal() {
    assert!(same_params(&tiny(&[], 1), &tiny(&[], 1)));
    assert!(!same_params(&tiny(&[], 1), &tiny(&[], 2)));
}

#[test]
fn extend_vocab_adds_mean_rows_and_zero_roles() {
    let mut m = tiny(&["Planner"], 13);
    let old_v = m.config.vocab_size as i64;
    let t = Tensor::from_slice(&[1i64, 2, 3]).view([1, 3]);
    let before = m.gpt.forward(&ForwardArgs::new(&t), Precision::F32, false);
    let mean = m.gpt.wte().mean_dim(0, false, Kind::Float);
    let bigger = Tokenizer::new(RoleVocab::from_agents(["Planner", "Coder", "Reviewer"]).unwrap());
    m.extend_vocab(bigger.clone()).unwrap();
    assert_eq!(m.config.vocab_size, bigger.n_vocab());
    assert_eq!(m.gpt.config().vocab_size, bigger.n_vocab());
    assert_eq!(m.config.n_roles, 5);
    let wte = m.gpt.wte();
    assert_eq!(wte.size(), vec![old_v + 2, 64]);
    assert!((wte.get(old_v + 1) - &mean).abs().max().double_value(&[]) < 1e-6);
    let roles = m.gpt.role_emb().unwrap();
    assert_eq!(roles.size(), vec![5, 64]);
    assert_eq!(roles.abs().sum(Kind::Float).double_value(&[]), 0.0);
    // The VarStore sees the grown tensors too (save/load round trip).
    let names = m.named_parameters();
    let vs_wte = &names.iter().find(|(n, _)| n == "wte.weight").unwrap().1;
    assert_eq!(vs_wte.size(), vec![old_v + 2, 64]);
    let after = m.gpt.forward(&ForwardArgs::new(&t), Precision::F32, false);
    assert_eq!(after.size(), vec![1, 3, old_v + 2]);
    let d = (after.narrow(2, 0, old_v) - before)
        .abs()
        .max()
        .double_value(&[]);
    assert!(d < 1e-5, "old logits unchanged: {d}");
    let dir = tempfile::tempdir().unwrap();
    m.save(&dir.path().join("ck")).unwrap();
    let back = Model::load(&dir.path().join("ck"), Device::Cpu).unwrap();
    assert!(same_params(&m, &back));
    // Removing or reordering agents is refused.
    let wrong = Tokenizer::new(RoleVocab::from_agents(["Coder", "Planner", "Reviewer"]).unwrap());
    assert!(m.extend_vocab(wrong).is_err());
}

fn corrupt(edit: impl FnOnce(&std::path::Path)) -> String {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck");
    tiny(&["A"], 21).save(&ck).unwrap();
    edit(&ck);
    format!("{:#}", Model::load(&ck, Device::Cpu).unwrap_err())
}

#[test]
fn truncated_weights_file() {
    let e = corrupt(|ck| {
        let p = ck.join(WEIGHTS_FILE);
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    });
    assert!(
        e.contains("model.safetensors") && e.contains("truncated"),
        "{e}"
    );
    let e = corrupt(|ck| std::fs::write(ck.join(WEIGHTS_FILE), [1u8, 2, 3]).unwrap());
    assert!(e.contains("truncated"), "{e}");
}

#[test]
fn header_length_larger_than_file() {
    let e = corrupt(|ck| {
        let p = ck.join(WEIGHTS_FILE);
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[..8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
        std::fs::write(&p, &bytes).unwrap();
    });
    assert!(
        e.contains("header length") && e.contains("larger than the file"),
        "{e}"
    );
}

#[test]
fn wrong_shapes_missing_and_extra_tensors() {
    // A config that disagrees with the weights (wider model).
    let e = corrupt(|ck| {
        let p = ck.join("config.json");
        let text = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, text.replace("\"n_ctx\": 128", "\"n_ctx\": 64")).unwrap();
    });
    assert!(e.contains("wpe.weight") && e.contains("shape"), "{e}");
    let e = corrupt(|ck| {
        let p = ck.join("config.json");
        let text = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, text.replace("\"n_layer\": 2", "\"n_layer\": 3")).unwrap();
    });
    assert!(e.contains("missing tensor") && e.contains("h.2."), "{e}");
    let e = corrupt(|ck| {
        let p = ck.join("config.json");
        let text = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, text.replace("\"n_layer\": 2", "\"n_layer\": 1")).unwrap();
    });
    assert!(e.contains("unexpected tensor"), "{e}");
    let e = corrupt(|ck| {
        let p = ck.join("config.json");
        let text = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, text.replace("\"n_head\": 2", "\"n_head\": 3")).unwrap();
    });
    assert!(e.contains("config.json") && e.contains("n_head"), "{e}");
}

#[test]
fn nan_weights_are_rejected() {
    let e = corrupt(|ck| {
        let mut m = Model::load(ck, Device::Cpu).unwrap();
        let _g = tch::no_grad_guard();
        let p = m
            .named_parameters()
            .into_iter()
            .find(|(n, _)| n == "h.1.mlp.c_fc.weight")
            .unwrap()
            .1;
        let _ = p.get(0).get(0).fill_(f64::NAN);
        m.config.dropout = 0.0;
        m.save(ck).unwrap();
    });
    assert!(
        e.contains("h.1.mlp.c_fc.weight") && e.contains("NaN"),
        "{e}"
    );
}

#[test]
fn missing_files_name_the_path() {
    let e = corrupt(|ck| std::fs::remove_file(ck.join("vocab.json")).unwrap());
    assert!(e.contains("vocab.json"), "{e}");
    let e = corrupt(|ck| std::fs::write(ck.join("config.json"), "{not json").unwrap());
    assert!(e.contains("config.json"), "{e}");
}

#[test]
fn huge_config_is_refused_before_allocating() {
    let e = corrupt(|ck| {
        let p = ck.join("config.json");
        let text = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, text.replace("\"n_ctx\": 128", "\"n_ctx\": 16000000")).unwrap();
    });
    assert!(e.contains("do not match"), "{e}");
}
