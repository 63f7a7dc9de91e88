//! Tokenizer throughput over a corpus file (one JSON string per line), as
//! `afm prepare` tokenizes: rayon over texts, `Tokenizer::encode` each.
//! Used by `benches/compare_tiktoken.py`; prints one JSON line.
//!
//! `cargo run --release -p afm-data --example tokenize_throughput -- CORPUS [REPEATS]`

use afm_tokenizer::Tokenizer;
use rayon::prelude::*;
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: tokenize_throughput CORPUS [REPEATS]"))?;
    let repeats: usize = args.next().unwrap_or_else(|| "3".into()).parse()?;
    let text = std::fs::read_to_string(&path)?;
    let texts: Vec<String> = text
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let tok = Tokenizer::gpt2();
    // Warm up (builds the BPE singleton and the rayon pool).
    let n_tokens: usize = texts.par_iter().map(|t| tok.encode(t).len()).sum();
    let mut best_par = f64::MAX;
    let mut best_seq = f64::MAX;
    for _ in 0..repeats {
        let t = Instant::now();
        let n: usize = texts.par_iter().map(|t| tok.encode(t).len()).sum();
        best_par = best_par.min(t.elapsed().as_secs_f64());
        assert_eq!(n, n_tokens);
        let t = Instant::now();
        let n: usize = texts.iter().map(|t| tok.encode(t).len()).sum();
        best_seq = best_seq.min(t.elapsed().as_secs_f64());
        assert_eq!(n, n_tokens);
    }
    println!(
        "{}",
        serde_json::json!({
            "texts": texts.len(),
            "tokens": n_tokens,
            "threads": rayon::current_num_threads(),
            "rayon_tokens_per_s": n_tokens as f64 / best_par,
            "single_thread_tokens_per_s": n_tokens as f64 / best_seq,
        })
    );
    Ok(())
}
