//! KV-cache decoding against the full forward, batching, sampling, stops
//! and context limits.

use afm_model::{generate, Decoder, ForwardArgs, GptConfig, Model, Precision, SamplingConfig};
use afm_tokenizer::{RoleTracker, RoleVocab, Tokenizer, END, OBS, TASK};
use tch::{Device, Kind, Tensor};

/// A tiny model with large random weights (peaky distributions, so greedy
/// choices are not ties) and a non-zero role table.
fn model(seed: i64) -> Model {
    model_with(seed, false)
}

/// `smear`: smeared keys and token embeddings, their mixing logits and
/// gates drawn N(0, 1).
fn model_with(seed: i64, smear: bool) -> Model {
    let tok = Tokenizer::new(RoleVocab::from_agents(["Planner", "Coder"]).unwrap());
    let mut cfg = GptConfig::preset("tiny", tok.n_vocab(), tok.roles().n_roles()).unwrap();
    cfg.smear_keys = smear;
    cfg.smear_tokens = smear;
    let m = Model::new(cfg, tok, Device::Cpu, seed).unwrap();
    let _g = tch::no_grad_guard();
    tch::manual_seed(seed);
    for (name, p) in m.named_parameters() {
        if name.ends_with("weight") && !name.contains("ln_") {
            let _ = p.shallow_clone().normal_(0.0, 0.2);
        } else if name.ends_with(".smear") || name == "smear_tok.gate" {
            let _ = p.shallow_clone().normal_(0.0, 1.0);
        }
    }
    m
}

fn full_logits(m: &Model, toks: &[u32], precision: Precision) -> Tensor {
    let t: Vec<i64> = toks.iter().map(|&x| x as i64).collect();
    let r: Vec<i64> = RoleTracker::roles_of(toks)
        .iter()
        .map(|&x| x as i64)
        .collect();
    let t = Tensor::from_slice(&t).view([1, -1]);
    let r = Tensor::from_slice(&r).view([1, -1]);
    let a = ForwardArgs {
        roles: Some(&r),
        ..ForwardArgs::new(&t)
    };
    tch::no_grad(|| m.gpt.forward(&a, precision, false)).squeeze_dim(0)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

fn sequence(m: &Model) -> Vec<u32> {
    let planner = m.tokenizer.role_token("Planner").unwrap();
    let coder = m.tokenizer.role_token("Coder").unwrap();
    vec![
        TASK, 40, 41, 42, planner, 43, 44, coder, 45, OBS, 46, 47, END, 48, 49, 50,
    ]
}

#[test]
fn incremental_equals_full_forward() {
    for (smear, (precision, tol)) in [false, true]
        .into_iter()
        .flat_map(|s| [(s, (Precision::F32, 1e-4)), (s, (Precision::Bf16, 0.15))])
    {
        let m = model_with(1, smear);
        let seq = sequence(&m);
        let full = full_logits(&m, &seq, precision);
        let mut dec = Decoder::new(&m, 1, precision);
        let mut at = 0;
        for chunk in [3usize, 1, 5, 1, 1, 5] {
            let logits = dec.feed(&[(0, seq[at..at + chunk].to_vec())]).unwrap();
            at += chunk;
            assert_eq!(dec.row_len(0), at);
            let d = max_diff(&logits.get(0), &full.get(at as i64 - 1));
            assert!(
                d < tol,
                "{precision:?} smear {smear} after {at} tokens: diff {d}"
            );
        }
    }
}

#[test]
fn batched_rows_match_single_rows() {
    for smear in [false, true] {
        batched_rows_match_single_rows_with(smear);
    }
}

fn batched_rows_match_single_rows_with(smear: bool) {
    let m = model_with(2, smear);
    let seq = sequence(&m);
    let a = seq[..7].to_vec();
    let b = seq[3..].to_vec();
    let c = seq[1..4].to_vec();
    let mut dec = Decoder::new(&m, 3, Precision::F32);
    // Different lengths in one feed; row 1 skipped.
    let l1 = dec.feed(&[(0, a.clone()), (2, c.clone())]).unwrap();
    assert_eq!(
        l1.get(1).abs().sum(Kind::Float).double_value(&[]),
        0.0,
        "unfed row keeps its (zero) logits"
    );
    let l2 = dec.feed(&[(1, b.clone()), (0, vec![60, 61])]).unwrap();
    assert!(
        max_diff(&l2.get(2), &l1.get(2)) == 0.0,
        "row 2 not fed keeps its logits"
    );
    let l3 = dec.feed(&[(2, vec![62])]).unwrap();
    let mut a2 = a.clone();
    a2.extend([60, 61]);
    let mut c2 = c.clone();
    c2.push(62);
    for (row, toks) in [(0, &a2), (1, &b), (2, &c2)] {
        let want = full_logits(&m, toks, Precision::F32).get(toks.len() as i64 - 1);
        let d = max_diff(&l3.get(row), &want);
        assert!(d < 1e-4, "smear {smear} row {row}: diff {d}");
        assert_eq!(dec.row_len(row as usize), toks.len());
    }
    // Resetting a row starts it afresh.
    dec.reset_row(0).unwrap();
    let l = dec.feed(&[(0, c.clone())]).unwrap();
    let want = full_logits(&m, &c, Precision::F32).get(c.len() as i64 - 1);
    assert!(max_diff(&l.get(0), &want) < 1e-4);
}

#[test]
fn generate_batched_equals_one_by_one() {
    let m = model(3);
    let seq = sequence(&m);
    let prompts = vec![seq[..2].to_vec(), seq[..9].to_vec(), seq[4..].to_vec()];
    let g = SamplingConfig::greedy();
    let batched = generate(&m, &prompts, 12, &[], &g, Precision::F32).unwrap();
    for (p, b) in prompts.iter().zip(&batched) {
        let one = generate(&m, std::slice::from_ref(p), 12, &[], &g, Precision::F32).unwrap();
        assert_eq!(one[0].tokens, b.tokens);
        assert_eq!(b.tokens.len(), 12);
        for (x, y) in one[0].logprobs.iter().zip(&b.logprobs) {
            assert!((x - y).abs() < 1e-4);
        }
    }
    // Greedy picks the argmax of the full forward, and logprobs are log_softmax.
    let mut toks = prompts[1].clone();
    for (&t, &lp) in batched[1].tokens.iter().zip(&batched[1].logprobs) {
        let logits = full_logits(&m, &toks, Precision::F32);
        let last = logits.get(toks.len() as i64 - 1);
        assert_eq!(last.argmax(0, false).int64_value(&[]), t as i64);
        let want = last.log_softmax(0, Kind::Float).double_value(&[t as i64]);
        assert!((want - lp as f64).abs() < 1e-4);
        toks.push(t);
    }
}

#[test]
fn stop_tokens_end_rows() {
    let m = model(4);
    let prompt = sequence(&m)[..5].to_vec();
    let g = SamplingConfig::greedy();
    let free = generate(
        &m,
        std::slice::from_ref(&prompt),
        6,
        &[],
        &g,
        Precision::F32,
    )
    .unwrap();
    assert_eq!(free[0].stop, None);
    let stop_at = free[0].tokens[2];
    let first = free[0].tokens.iter().position(|&t| t == stop_at).unwrap();
    let stopped = generate(&m, &[prompt], 6, &[stop_at], &g, Precision::F32).unwrap();
    assert_eq!(stopped[0].stop, Some(stop_at));
    assert_eq!(stopped[0].tokens, free[0].tokens[..=first].to_vec());
}

#[test]
fn sampling_is_seeded_and_filters_work() {
    let m = model(5);
    let prompt = sequence(&m)[..4].to_vec();
    let prompts = vec![prompt.clone(), prompt.clone()];
    let cfg = |seed| SamplingConfig {
        temperature: 1.5,
        top_k: Some(50),
        top_p: Some(0.95),
        seed,
    };
    let a = generate(&m, &prompts, 20, &[], &cfg(7), Precision::F32).unwrap();
    let b = generate(&m, &prompts, 20, &[], &cfg(7), Precision::F32).unwrap();
    let c = generate(&m, &prompts, 20, &[], &cfg(8), Precision::F32).unwrap();
    assert_eq!(a, b, "same seed, same samples");
    assert_ne!(
        a[0].tokens, c[0].tokens,
        "different seed, different samples"
    );
    assert_ne!(a[0].tokens, a[1].tokens, "rows draw from their own streams");
    // top_k = 1 is greedy whatever the temperature.
    let k1 = SamplingConfig {
        temperature: 2.0,
        top_k: Some(1),
        top_p: None,
        seed: 3,
    };
    let greedy = generate(
        &m,
        &prompts[..1],
        10,
        &[],
        &SamplingConfig::greedy(),
        Precision::F32,
    )
    .unwrap();
    let g1 = generate(&m, &prompts[..1], 10, &[], &k1, Precision::F32).unwrap();
    assert_eq!(greedy[0].tokens, g1[0].tokens);
    // Tiny top_p keeps only the most likely token too.
    let p0 = SamplingConfig {
        temperature: 1.0,
        top_k: None,
        top_p: Some(1e-9),
        seed: 3,
    };
    let gp = generate(&m, &prompts[..1], 10, &[], &p0, Precision::F32).unwrap();
    assert_eq!(greedy[0].tokens, gp[0].tokens);
    // With top_k = 3 every sample is among the 3 most likely tokens.
    let mut dec = Decoder::new(&m, 1, Precision::F32);
    let logits = dec.feed(&[(0, prompt.clone())]).unwrap();
    let top3: Vec<i64> = Vec::try_from(logits.get(0).topk(3, 0, true, true).1).unwrap();
    let k3 = SamplingConfig {
        temperature: 5.0,
        top_k: Some(3),
        top_p: None,
        seed: 9,
    };
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..60 {
        let (t, lp) = dec.sample(&logits, &k3).unwrap()[0];
        assert!(top3.contains(&(t as i64)), "{t} not in {top3:?}");
        let want = logits
            .get(0)
            .log_softmax(0, Kind::Float)
            .double_value(&[t as i64]);
        assert!((want - lp as f64).abs() < 1e-4);
        seen.insert(t);
    }
    assert!(seen.len() > 1, "temperature 5 explores");
    for bad in [
        SamplingConfig {
            temperature: -1.0,
            ..SamplingConfig::greedy()
        },
        SamplingConfig {
            top_k: Some(0),
            temperature: 1.0,
            ..SamplingConfig::greedy()
        },
        SamplingConfig {
            top_p: Some(1.5),
            temperature: 1.0,
            ..SamplingConfig::greedy()
        },
    ] {
        assert!(dec.sample(&logits, &bad).is_err());
    }
}

#[test]
fn context_limits_are_errors_or_documented_stops() {
    let m = model(6);
    let n_ctx = m.config.n_ctx;
    let long = vec![5u32; n_ctx + 1];
    let e = generate(
        &m,
        &[long],
        4,
        &[],
        &SamplingConfig::greedy(),
        Precision::F32,
    )
    .unwrap_err();
    assert!(e.to_string().contains("n_ctx"), "{e}");
    let e = generate(
        &m,
        &[vec![]],
        4,
        &[],
        &SamplingConfig::greedy(),
        Precision::F32,
    )
    .unwrap_err();
    assert!(e.to_string().contains("empty"), "{e}");
    // A generation that reaches n_ctx stops there (stop == None).
    let near = vec![5u32; n_ctx - 3];
    let g = generate(
        &m,
        &[near],
        100,
        &[],
        &SamplingConfig::greedy(),
        Precision::F32,
    )
    .unwrap();
    assert_eq!(g[0].tokens.len(), 3);
    assert_eq!(g[0].stop, None);
    let mut dec = Decoder::new(&m, 2, Precision::F32);
    let _ = dec.feed(&[(0, vec![5; n_ctx])]).unwrap();
    let e = dec.feed(&[(0, vec![5])]).unwrap_err();
    assert!(e.to_string().contains("n_ctx"), "{e}");
    assert!(dec.feed(&[(2, vec![5])]).is_err(), "row out of range");
    assert!(
        dec.feed(&[(1, vec![5]), (1, vec![6])]).is_err(),
        "repeated row"
    );
    assert!(
        dec.feed(&[(1, vec![m.config.vocab_size as u32])]).is_err(),
        "bad id"
    );
    assert_eq!(dec.row_len(1), 0, "failed feeds change nothing");
}

/// The Rust one-token step (`forward_cached` on the CPU) against libtorch
/// ops (`forward_cached_libtorch`) on the same cache contents: several rows
/// at different lengths, a subset of rows fed, f32 and bf16, one and two
/// threads. Logits and the appended cache entries agree to rounding, and the
/// Rust step gives the same bits whatever the thread count.
#[test]
fn rust_decoding_step_matches_libtorch_ops() {
    for smear in [false, true] {
        rust_decoding_step_matches_libtorch_ops_with(smear);
    }
}

fn rust_decoding_step_matches_libtorch_ops_with(smear: bool) {
    use afm_model::{decode_kernels, CachedStep, DecodeKernels};
    assert_eq!(decode_kernels(), DecodeKernels::Rust);
    let m = model_with(4, smear);
    let seq = sequence(&m);
    let batch = 4;
    for (precision, tol) in [(Precision::F32, 1e-4), (Precision::Bf16, 0.15)] {
        let w = m.gpt.weights(precision);
        let mut rust = m.gpt.new_cache(batch, &w);
        let mut rust1 = m.gpt.new_cache(batch, &w);
        let mut torch = m.gpt.new_cache(batch, &w);
        let threads = tch::get_num_threads();
        let mut lens = vec![0usize; batch];
        // Prefill rows 0, 1, 3 with different lengths (multi-token feeds
        // take the libtorch path in both caches).
        for (b, n) in [(0usize, 5usize), (1, 9), (3, 2)] {
            let t: Vec<i64> = seq[..n].iter().map(|&x| x as i64).collect();
            let r: Vec<i64> = RoleTracker::roles_of(&seq[..n])
                .iter()
                .map(|&x| x as i64)
                .collect();
            let p: Vec<i64> = (0..n as i64).collect();
            let (t, r, p) = (
                Tensor::from_slice(&t).view([1, -1]),
                Tensor::from_slice(&r).view([1, -1]),
                Tensor::from_slice(&p).view([1, -1]),
            );
            let step = CachedStep {
                tokens: &t,
                roles: &r,
                positions: &p,
                rows: &[b],
                lens: &[0],
                n_new: &[n],
                batch,
            };
            let a = m.gpt.forward_cached(&step, &w, &mut rust);
            let a1 = m.gpt.forward_cached(&step, &w, &mut rust1);
            let b2 = m.gpt.forward_cached_libtorch(&step, &w, &mut torch);
            assert_eq!(max_diff(&a, &b2), 0.0);
            assert_eq!(max_diff(&a1, &b2), 0.0);
            lens[b] = n;
        }
        // One-token steps for rows {0, 1, 3}, then {1}, then {0, 3}.
        for (k, rows) in [vec![0usize, 1, 3], vec![1], vec![0, 3], vec![0, 1, 3]]
            .into_iter()
            .enumerate()
        {
            let t: Vec<i64> = rows.iter().map(|&b| 40 + (b + k) as i64).collect();
            let roles: Vec<i64> = rows.iter().map(|&b| (b % 3) as i64).collect();
            let p: Vec<i64> = rows.iter().map(|&b| lens[b] as i64).collect();
            let (t, roles, p) = (
                Tensor::from_slice(&t).view([-1, 1]),
                Tensor::from_slice(&roles).view([-1, 1]),
                Tensor::from_slice(&p).view([-1, 1]),
            );
            let row_lens: Vec<usize> = rows.iter().map(|&b| lens[b]).collect();
            let n_new = vec![1; rows.len()];
            let step = CachedStep {
                tokens: &t,
                roles: &roles,
                positions: &p,
                rows: &rows,
                lens: &row_lens,
                n_new: &n_new,
                batch,
            };
            let want = m.gpt.forward_cached_libtorch(&step, &w, &mut torch);
            tch::set_num_threads(2);
            let got = m.gpt.forward_cached(&step, &w, &mut rust);
            tch::set_num_threads(1);
            let got1 = m.gpt.forward_cached(&step, &w, &mut rust1);
            tch::set_num_threads(threads);
            assert_eq!(got.size(), want.size());
            let d = max_diff(&got, &want);
            assert!(
                d < tol,
                "{precision:?} smear {smear} step {k} rows {rows:?}: logits diff {d}"
            );
            assert_eq!(
                max_diff(&got, &got1),
                0.0,
                "thread count changed the result"
            );
            for b in &rows {
                lens[*b] += 1;
            }
        }
    }
}
