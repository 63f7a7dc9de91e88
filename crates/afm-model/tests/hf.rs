//! Hugging Face interop: logit parity with transformers (committed
//! fixture), export/import round trips, afm side files, bad inputs.

use afm_model::hf::{self, AFM_ROLE_EMB, AFM_VOCAB};
use afm_model::{ForwardArgs, GptConfig, Model, Precision};
use afm_tokenizer::{RoleVocab, Tokenizer};
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-gpt2")
}

#[derive(serde::Deserialize)]
struct Expected {
    inputs: Vec<Vec<i64>>,
    logits: Vec<Vec<Vec<f32>>>,
}

fn logits(gpt: &afm_model::Gpt, ids: &[i64]) -> Tensor {
    let t = Tensor::from_slice(ids).view([1, -1]);
    tch::no_grad(|| gpt.forward(&ForwardArgs::new(&t), Precision::F32, false)).squeeze_dim(0)
}

#[test]
fn hf_parity_with_transformers() {
    let m = hf::import_gpt(&fixture(), Device::Cpu).unwrap();
    assert_eq!(m.config.vocab_size, 1000);
    assert_eq!(m.config.n_layer, 2);
    let text = std::fs::read_to_string(fixture().join("logits.json")).unwrap();
    let e: Expected = serde_json::from_str(&text).unwrap();
    assert_eq!(e.inputs.len(), 3);
    for (ids, want) in e.inputs.iter().zip(&e.logits) {
        let got = logits(&m.gpt, ids);
        let flat: Vec<f32> = want.iter().flatten().copied().collect();
        let want = Tensor::from_slice(&flat).view([ids.len() as i64, -1]);
        let d = (got - want).abs().max().double_value(&[]);
        assert!(d <= 1e-4, "max |logit diff| {d} for input {ids:?}");
    }
}

fn same(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((na, ta), (nb, tb))| na == nb && ta.equal(tb))
}

fn params(vs: &tch::nn::VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<_> = vs.variables().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn export_import_round_trip_is_bit_exact() {
    let dir = tempfile::tempdir().unwrap();
    let a = hf::import_gpt(&fixture(), Device::Cpu).unwrap();
    let out1 = dir.path().join("e1");
    hf::export(&params(&a.vs), &a.config, None, hf::ExportKind::Gpt2, &out1).unwrap();
    let b = hf::import_gpt(&out1, Device::Cpu).unwrap();
    assert!(same(&params(&a.vs), &params(&b.vs)));
    assert_eq!(a.config, b.config);
    let out2 = dir.path().join("e2");
    hf::export(&params(&b.vs), &b.config, None, hf::ExportKind::Gpt2, &out2).unwrap();
    for f in ["model.safetensors", "config.json"] {
        assert_eq!(
            std::fs::read(out1.join(f)).unwrap(),
            std::fs::read(out2.join(f)).unwrap(),
            "{f}"
        );
    }
}

fn tiny_afm(agents: &[&str]) -> Model {
    let tok = Tokenizer::new(RoleVocab::from_agents(agents.iter().copied()).unwrap());
    let cfg = GptConfig::preset("tiny", tok.n_vocab(), tok.roles().n_roles()).unwrap();
    let m = Model::new(cfg, tok, Device::Cpu, 5).unwrap();
    let _g = tch::no_grad_guard();
    let _ = m.gpt.role_emb().unwrap().shallow_clone().normal_(0.0, 0.1);
    m
}

#[test]
fn afm_model_export_import_keeps_roles_and_vocab() {
    let dir = tempfile::tempdir().unwrap();
    let m = tiny_afm(&["Planner", "Coder"]);
    assert!(m.uses_role_embeddings());
    let out = dir.path().join("hf");
    m.export_hf(&out).unwrap();
    // Trained role embeddings: afm's own class, every weight in one file.
    assert!(out.join("modeling_afm.py").exists() && out.join(AFM_VOCAB).exists());
    assert!(!out.join(AFM_ROLE_EMB).exists());
    let back = Model::import_hf(&out, &[], Device::Cpu).unwrap();
    assert_eq!(back.config, m.config);
    assert_eq!(
        back.tokenizer.roles().agents(),
        m.tokenizer.roles().agents()
    );
    assert!(same(&back.named_parameters(), &m.named_parameters()));
    // Adding agents at import grows wte (mean rows) and the role table (zeros).
    let more = Model::import_hf(&out, &["Reviewer".to_string()], Device::Cpu).unwrap();
    assert_eq!(
        more.tokenizer.roles().agents(),
        ["Planner", "Coder", "Reviewer"]
    );
    assert_eq!(more.config.vocab_size, m.config.vocab_size + 1);
    assert_eq!(more.config.n_roles, m.config.n_roles + 1);
    let last_role = more.gpt.role_emb().unwrap().get(m.config.n_roles as i64);
    assert_eq!(last_role.abs().max().double_value(&[]), 0.0);
    if let Ok(d) = std::env::var("AFM_EXPORT_DIR") {
        // For `make_parity_fixture.py --verify-export`: an export without
        // role embeddings (HF has none) plus afm's logits.
        let plain = tiny_afm(&[]);
        let _g = tch::no_grad_guard();
        let _ = plain.gpt.role_emb().unwrap().shallow_clone().zero_();
        plain.export_hf(Path::new(&d)).unwrap();
        let inputs: Vec<Vec<i64>> = vec![vec![15496, 995], vec![1, 2, 3, 50256, 50259, 7]];
        let logits: Vec<Vec<Vec<f32>>> = inputs
            .iter()
            .map(|ids| {
                let l = logits(&plain.gpt, ids);
                (0..ids.len() as i64)
                    .map(|i| Vec::<f32>::try_from(l.get(i)).unwrap())
                    .collect()
            })
            .collect();
        let j = serde_json::json!({"inputs": inputs, "logits": logits});
        std::fs::write(Path::new(&d).join("expected_logits.json"), j.to_string()).unwrap();
    }
}

#[test]
fn plain_gpt2_import_behaves_identically_then_extends_vocab() {
    // An HF directory without afm side files and GPT-2's 50257 tokens.
    let dir = tempfile::tempdir().unwrap();
    let src = tiny_afm(&[]);
    let mut cfg = src.config.clone();
    cfg.vocab_size = 50257;
    let params: Vec<(String, Tensor)> = src
        .named_parameters()
        .into_iter()
        .filter(|(n, _)| n != "role_emb.weight")
        .map(|(n, t)| {
            if n == "wte.weight" {
                (n, t.narrow(0, 0, 50257))
            } else {
                (n, t)
            }
        })
        .collect();
    let out = dir.path().join("gpt2");
    hf::export(&params, &cfg, None, hf::ExportKind::Gpt2, &out).unwrap();
    let plain = hf::import_gpt(&out, Device::Cpu).unwrap();
    let m = Model::import_hf(&out, &["Coder".to_string()], Device::Cpu).unwrap();
    assert_eq!(m.config.vocab_size, m.tokenizer.n_vocab());
    assert_eq!(m.config.n_roles, 3);
    let ids = [464i64, 2068, 7586, 21831];
    let a = logits(&plain.gpt, &ids);
    let b = logits(&m.gpt, &ids).narrow(1, 0, 50257);
    assert!((a - b).abs().max().double_value(&[]) < 1e-5);
    let wte = m.gpt.wte();
    let mean = wte.narrow(0, 0, 50257).mean_dim(0, false, tch::Kind::Float);
    for row in 50257..m.config.vocab_size as i64 {
        assert!((wte.get(row) - &mean).abs().max().double_value(&[]) < 1e-6);
    }
}

#[test]
fn unsupported_or_broken_hf_dirs_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("bad");
    std::fs::create_dir(&d).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture().join(f), d.join(f)).unwrap();
    }
    let cfg = std::fs::read_to_string(d.join("config.json")).unwrap();
    std::fs::write(d.join("config.json"), cfg.replace("gelu_new", "relu")).unwrap();
    let e = format!("{:#}", hf::import_gpt(&d, Device::Cpu).err().unwrap());
    assert!(
        e.contains("activation_function") && e.contains("config.json"),
        "{e}"
    );
    std::fs::write(
        d.join("config.json"),
        cfg.replace("\"n_layer\": 2", "\"n_layer\": 3"),
    )
    .unwrap();
    let e = format!("{:#}", hf::import_gpt(&d, Device::Cpu).err().unwrap());
    assert!(e.contains("missing tensor"), "{e}");
    std::fs::write(d.join("config.json"), &cfg).unwrap();
    // The fixture's vocabulary is not GPT-2's: refused as an afm model.
    let e = format!(
        "{:#}",
        Model::import_hf(&d, &[], Device::Cpu).err().unwrap()
    );
    assert!(e.contains("vocab_size"), "{e}");
    std::fs::remove_file(d.join("model.safetensors")).unwrap();
    let e = format!("{:#}", hf::import_gpt(&d, Device::Cpu).err().unwrap());
    assert!(e.contains("model.safetensors"), "{e}");
}

/// The export's kind follows the model: plain GPT-2 (a zero role table
/// beside it) when transformers' GPT-2 computes it exactly, else afm's own
/// class (smeared keys, smeared tokens, trained roles, a corpus
/// vocabulary), whose directory re-imports bit for bit.
#[test]
fn export_kind_follows_the_model() {
    let kind = |m: &Model| {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("hf");
        m.export_hf(&out).unwrap();
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        let back = Model::import_hf(&out, &[], Device::Cpu).unwrap();
        assert_eq!(back.config, m.config);
        assert_eq!(back.tokenizer.to_json(), m.tokenizer.to_json());
        assert!(same(&back.named_parameters(), &m.named_parameters()));
        assert_eq!(
            out.join("modeling_afm.py").exists(),
            cfg["model_type"] == "afm_gpt"
        );
        cfg["model_type"].as_str().unwrap().to_string()
    };
    let tok = Tokenizer::new(RoleVocab::from_agents(["Planner"]).unwrap());
    let plain = GptConfig::preset("tiny", tok.n_vocab(), tok.roles().n_roles()).unwrap();
    let m = Model::new(plain.clone(), tok.clone(), Device::Cpu, 5).unwrap();
    assert!(m.is_plain_gpt2());
    assert_eq!(kind(&m), "gpt2");
    for (keys, tokens) in [(true, false), (false, true)] {
        let mut cfg = plain.clone();
        (cfg.smear_keys, cfg.smear_tokens) = (keys, tokens);
        let m = Model::new(cfg, tok.clone(), Device::Cpu, 5).unwrap();
        assert!(!m.is_plain_gpt2());
        assert_eq!(kind(&m), "afm_gpt");
    }
    assert_eq!(kind(&tiny_afm(&["Planner"])), "afm_gpt");
    let corpus = tok
        .clone()
        .with_corpus(afm_tokenizer::CorpusVocab::from_ids([995, 15496]));
    let cfg = GptConfig::preset("tiny", corpus.n_vocab(), corpus.roles().n_roles()).unwrap();
    let m = Model::new(cfg, corpus, Device::Cpu, 5).unwrap();
    assert_eq!(kind(&m), "afm_gpt");
}
