//! Time greedy decoding pieces for `mini`: full decode step vs the LM head alone.
use afm_model::{Decoder, GptConfig, Model, Precision, SamplingConfig};
use afm_tokenizer::Tokenizer;
use std::time::Instant;
use tch::{Kind, Tensor};

fn main() -> anyhow::Result<()> {
    let precision = Precision::from_bf16(std::env::args().nth(1).is_some_and(|s| s == "bf16"));
    let tok = Tokenizer::gpt2();
    let cfg = GptConfig::preset("mini", tok.n_vocab(), tok.roles().n_roles())?;
    let m = Model::new(cfg, tok, tch::Device::Cpu, 0)?;
    let mut dec = Decoder::new(&m, 1, precision);
    let prompt: Vec<u32> = (0..32).map(|i| i * 7 + 11).collect();
    let t = Instant::now();
    let mut logits = dec.feed(&[(0, prompt)])?;
    println!("prefill {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
    let (mut feed_s, mut samp_s) = (0.0, 0.0);
    for _ in 0..96 {
        let t = Instant::now();
        let p = dec.sample(&logits, &SamplingConfig::greedy())?;
        samp_s += t.elapsed().as_secs_f64();
        let t = Instant::now();
        logits = dec.feed(&[(0, vec![p[0].0])])?;
        feed_s += t.elapsed().as_secs_f64();
    }
    println!(
        "per token: feed {:.2} ms, sample {:.2} ms",
        feed_s / 96.0 * 1e3,
        samp_s / 96.0 * 1e3
    );
    for _ in 0..2 {
        let t = Instant::now();
        let prompt: Vec<u32> = (0..32).map(|i| i * 7 + 11).collect();
        let g = afm_model::generate(
            &m,
            &[prompt],
            128,
            &[],
            &SamplingConfig::greedy(),
            precision,
        )?;
        println!(
            "generate(): {:.1} tok/s",
            g[0].tokens.len() as f64 / t.elapsed().as_secs_f64()
        );
    }
    let _g = tch::no_grad_guard();
    let head = m.gpt.wte().to_kind(precision.kind());
    let h = Tensor::randn([1, 256], (Kind::Float, tch::Device::Cpu)).to_kind(precision.kind());
    let t = Instant::now();
    for _ in 0..50 {
        let _ = h.matmul(&head.tr()).to_kind(Kind::Float);
    }
    println!(
        "LM head matvec alone: {:.2} ms",
        t.elapsed().as_secs_f64() / 50.0 * 1e3
    );
    let t = Instant::now();
    for _ in 0..50 {
        let _ = head.matmul(&h.tr());
    }
    println!(
        "LM head as W @ h^T: {:.2} ms",
        t.elapsed().as_secs_f64() / 50.0 * 1e3
    );
    let t = Instant::now();
    for _ in 0..50 {
        let _ = head.mv(&h.view([-1]));
    }
    println!(
        "LM head mv: {:.2} ms",
        t.elapsed().as_secs_f64() / 50.0 * 1e3
    );
    Ok(())
}
