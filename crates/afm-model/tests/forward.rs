//! Forward-pass behaviour of the tiny model: shapes, packed documents,
//! `select`, role embeddings, bf16, argument checking.

use afm_model::{weight_decay_applies, ForwardArgs, GptConfig, Model, Precision};
use afm_tokenizer::{RoleVocab, Tokenizer};
use tch::{Device, Kind, Tensor};

fn tiny(seed: i64) -> Model {
    tiny_with(seed, false)
}

/// `smear`: smeared keys and token embeddings, their mixing logits and
/// gates drawn N(0, 1).
fn tiny_with(seed: i64, smear: bool) -> Model {
    let tok = Tokenizer::new(RoleVocab::from_agents(["Planner", "Coder"]).unwrap());
    let mut cfg = GptConfig::preset("tiny", tok.n_vocab(), tok.roles().n_roles()).unwrap();
    cfg.smear_keys = smear;
    cfg.smear_tokens = smear;
    let m = Model::new(cfg, tok, Device::Cpu, seed).unwrap();
    let _g = tch::no_grad_guard();
    tch::manual_seed(seed);
    for (name, p) in m.named_parameters() {
        if name.ends_with(".smear") || name == "smear_tok.gate" {
            let _ = p.shallow_clone().normal_(0.0, 1.0);
        }
    }
    m
}

fn ids(v: &[i64]) -> Tensor {
    Tensor::from_slice(v).view([1, -1])
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn logits_shape_and_finite() {
    let m = tiny(1);
    let t = Tensor::from_slice(&[1i64, 2, 3, 4, 5, 6]).view([2, 3]);
    let y = m.gpt.forward(&ForwardArgs::new(&t), Precision::F32, false);
    assert_eq!(y.size(), vec![2, 3, m.config.vocab_size as i64]);
    assert_eq!(y.kind(), Kind::Float);
    assert!(bool::try_from(y.isfinite().all()).unwrap());
}

#[test]
fn packed_row_equals_documents_alone() {
    for smear in [false, true] {
        packed_row_equals_documents_alone_with(smear);
    }
}

fn packed_row_equals_documents_alone_with(smear: bool) {
    let m = tiny_with(2, smear);
    let a = [10i64, 20, 30, 40, 50];
    let b = [7i64, 8, 9];
    let packed: Vec<i64> = a.iter().chain(&b).copied().collect();
    let docs = ids(&[0, 0, 0, 0, 0, 1, 1, 1]);
    let tokens = ids(&packed);
    let args = ForwardArgs {
        docs: Some(&docs),
        ..ForwardArgs::new(&tokens)
    };
    let y = m.gpt.forward(&args, Precision::F32, false);
    let ya = m
        .gpt
        .forward(&ForwardArgs::new(&ids(&a)), Precision::F32, false);
    let yb = m
        .gpt
        .forward(&ForwardArgs::new(&ids(&b)), Precision::F32, false);
    assert!(max_diff(&y.narrow(1, 0, 5), &ya) < 1e-4, "smear {smear}");
    assert!(max_diff(&y.narrow(1, 5, 3), &yb) < 1e-4, "smear {smear}");
    // Without the document mask the second document sees the first.
    let plain = m
        .gpt
        .forward(&ForwardArgs::new(&tokens), Precision::F32, false);
    assert!(max_diff(&plain.narrow(1, 5, 3), &yb) > 1e-3);
}

#[test]
fn select_matches_full_logits() {
    let m = tiny(3);
    let t = Tensor::from_slice(&[1i64, 2, 3, 4, 5, 6, 7, 8]).view([2, 4]);
    let sel = Tensor::from_slice(&[0i64, 3, 6]);
    let full = m.gpt.forward(&ForwardArgs::new(&t), Precision::F32, false);
    let args = ForwardArgs {
        select: Some(&sel),
        ..ForwardArgs::new(&t)
    };
    let y = m.gpt.forward(&args, Precision::F32, false);
    assert_eq!(y.size(), vec![3, m.config.vocab_size as i64]);
    let want = full.view([8, -1]).index_select(0, &sel);
    assert!(max_diff(&y, &want) < 1e-5);
}

#[test]
fn role_embeddings_start_at_zero_and_matter_when_trained() {
    let m = tiny(4);
    let t = ids(&[1, 2, 3, 4]);
    let roles = ids(&[0, 2, 3, 1]);
    let with_roles = ForwardArgs {
        roles: Some(&roles),
        ..ForwardArgs::new(&t)
    };
    let base = m.gpt.forward(&ForwardArgs::new(&t), Precision::F32, false);
    let y = m.gpt.forward(&with_roles, Precision::F32, false);
    assert_eq!(
        max_diff(&base, &y),
        0.0,
        "zero-initialised role table changes nothing"
    );
    let _g = tch::no_grad_guard();
    let _ = m.gpt.role_emb().unwrap().shallow_clone().normal_(0.0, 0.5);
    let y = m.gpt.forward(&with_roles, Precision::F32, false);
    assert!(max_diff(&base, &y) > 1e-3);
}

#[test]
fn bf16_close_to_f32_and_differentiable() {
    let m = tiny(5);
    let t = ids(&[5, 6, 7, 8, 9, 10]);
    let a = m.gpt.forward(&ForwardArgs::new(&t), Precision::F32, true);
    let b = m.gpt.forward(&ForwardArgs::new(&t), Precision::Bf16, true);
    assert_eq!(b.kind(), Kind::Float);
    let d = max_diff(&a, &b);
    assert!(d > 0.0 && d < 0.1, "bf16 vs f32 diff {d}");
    b.sum(Kind::Float).backward();
    for (name, p) in m.named_parameters() {
        assert_eq!(p.kind(), Kind::Float, "{name} master weight stays f32");
        if name.ends_with("c_attn.weight") {
            assert!(
                p.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0,
                "{name} has a gradient"
            );
        }
    }
}

#[test]
fn bad_arguments_are_errors() {
    let m = tiny(6);
    let long = Tensor::zeros([1, m.config.n_ctx as i64 + 1], (Kind::Int64, Device::Cpu));
    let e = m
        .gpt
        .try_forward(&ForwardArgs::new(&long), Precision::F32, false)
        .unwrap_err();
    assert!(e.to_string().contains("n_ctx"), "{e}");
    let bad = ids(&[m.config.vocab_size as i64]);
    let e = m
        .gpt
        .try_forward(&ForwardArgs::new(&bad), Precision::F32, false)
        .unwrap_err();
    assert!(e.to_string().contains("tokens"), "{e}");
    let t = ids(&[1, 2]);
    let roles = ids(&[0, 99]);
    let a = ForwardArgs {
        roles: Some(&roles),
        ..ForwardArgs::new(&t)
    };
    assert!(m.gpt.try_forward(&a, Precision::F32, false).is_err());
}

#[test]
fn parameter_names_and_weight_decay() {
    let m = tiny(7);
    let names: Vec<String> = m.named_parameters().into_iter().map(|(n, _)| n).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    for n in [
        "wte.weight",
        "wpe.weight",
        "role_emb.weight",
        "ln_f.weight",
        "h.0.ln_1.weight",
        "h.1.attn.c_attn.weight",
        "h.1.attn.c_proj.bias",
        "h.0.mlp.c_fc.weight",
        "h.0.mlp.c_proj.weight",
    ] {
        assert!(names.iter().any(|x| x == n), "missing {n} in {names:?}");
    }
    assert_eq!(names.len(), 5 + 12 * 2);
    assert!(weight_decay_applies("h.0.mlp.c_fc.weight"));
    assert!(weight_decay_applies("h.3.attn.c_attn.weight"));
    for n in [
        "h.0.mlp.c_fc.bias",
        "h.0.ln_1.weight",
        "ln_f.weight",
        "wte.weight",
        "wpe.weight",
        "role_emb.weight",
    ] {
        assert!(!weight_decay_applies(n), "{n}");
    }
    let n: i64 = m
        .named_parameters()
        .iter()
        .map(|(_, t)| t.numel() as i64)
        .sum();
    assert_eq!(n as usize, m.config.n_params());
    // Smeared keys add one mixing logit per head and layer, never decayed.
    let s = tiny_with(7, true);
    let smear: Vec<(String, i64)> = s
        .named_parameters()
        .into_iter()
        .filter(|(n, _)| n.contains("smear"))
        .map(|(n, t)| (n, t.numel() as i64))
        .collect();
    // ... and smeared token embeddings one gate per channel.
    assert_eq!(
        smear,
        vec![
            ("h.0.attn.smear".to_string(), 2),
            ("h.1.attn.smear".to_string(), 2),
            ("smear_tok.gate".to_string(), 64)
        ]
    );
    assert!(!weight_decay_applies("h.0.attn.smear"));
    assert!(!weight_decay_applies("smear_tok.gate"));
    let n: i64 = s
        .named_parameters()
        .iter()
        .map(|(_, t)| t.numel() as i64)
        .sum();
    assert_eq!(n as usize, s.config.n_params());
    // And they change the model (unlike GPT-2 attention).
    let t = ids(&[5, 6, 7, 8, 5, 6]);
    let y = |m: &Model| m.gpt.forward(&ForwardArgs::new(&t), Precision::F32, false);
    let plain = tiny(7);
    assert!(max_diff(&y(&s), &y(&plain)) > 1e-3);
}

#[test]
fn positions_restart_per_document() {
    let docs = ids(&[0, 0, 0, 1, 1, 2]);
    let p = afm_model::positions_from_docs(&docs);
    assert_eq!(
        Vec::<i64>::try_from(p.view([-1])).unwrap(),
        vec![0, 1, 2, 0, 1, 0]
    );
}

#[test]
fn fused_loss_matches_unfused_value_and_gradients() {
    for precision in [Precision::F32, Precision::Bf16] {
        let m = tiny(8);
        let t = Tensor::from_slice(&[3i64, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8]).view([2, 6]);
        let targets = Tensor::from_slice(&[1i64, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9]);
        let w = Tensor::from_slice(&[1f32, 1., 0., 1., 2., 1., 1., 1., 1., 0.5, 1., 1.]);
        // Reference: full logits + cross-entropy.
        let logits = m
            .gpt
            .forward(&ForwardArgs::new(&t), precision, true)
            .view([12, -1]);
        let nll = -logits
            .log_softmax(1, Kind::Float)
            .gather(1, &targets.unsqueeze(1), false)
            .squeeze_dim(1);
        let reference = (&nll * &w).sum(Kind::Float) / 3.0;
        reference.backward();
        let grads: Vec<Tensor> = m
            .named_parameters()
            .iter()
            .map(|(_, p)| {
                if p.grad().defined() {
                    p.grad().copy()
                } else {
                    p.zeros_like()
                }
            })
            .collect();
        for (_, p) in m.named_parameters() {
            if p.grad().defined() {
                let _ = p.grad().zero_();
            }
        }
        let h = m
            .gpt
            .hidden(&ForwardArgs::new(&t), precision, true)
            .view([12, -1]);
        let fused = m
            .gpt
            .lm_loss(&h, &targets, Some(&w), precision, None)
            .unwrap();
        let nll_ref = Vec::<f32>::try_from(&nll).unwrap();
        for (a, b) in fused.nll.iter().zip(&nll_ref) {
            let tol = if precision == Precision::F32 {
                1e-5
            } else {
                2e-2
            };
            assert!(
                (a - b).abs() < tol * b.abs().max(1.0),
                "{precision:?}: nll {a} vs {b}"
            );
        }
        let fused = fused.loss / 3.0;
        let (a, b) = (fused.double_value(&[]), reference.double_value(&[]));
        let tol = if precision == Precision::F32 {
            1e-5
        } else {
            2e-2
        };
        assert!(
            (a - b).abs() < tol * b.abs().max(1.0),
            "{precision:?}: loss {a} vs {b}"
        );
        fused.backward();
        for ((name, p), want) in m.named_parameters().iter().zip(&grads) {
            let got = if p.grad().defined() {
                p.grad()
            } else {
                p.zeros_like()
            };
            let scale = want.abs().max().double_value(&[]).max(1e-3);
            let d = (&got - want).abs().max().double_value(&[]) / scale;
            let gtol = if precision == Precision::F32 {
                1e-4
            } else {
                5e-2
            };
            assert!(
                d < gtol,
                "{precision:?}: gradient of {name} differs by {d} (relative)"
            );
        }
    }
}
