//! Tokenizer throughput over a corpus file (one JSON string per line): afm's
//! `Tokenizer::encode` on one thread and on rayon (`encode_batch`, as
//! `afm prepare` tokenizes: rayon over texts), and tiktoken-rs'
//! `CoreBPE::encode_ordinary` (the Rust core of tiktoken-python) on one
//! thread, interleaved. Used by `benches/compare_tiktoken.py`; prints one
//! JSON line.
//!
//! `cargo run --release -p afm-tokenizer --example encode_throughput -- CORPUS [REPEATS]`

use afm_tokenizer::Tokenizer;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: encode_throughput CORPUS [REPEATS]")?;
    let repeats: usize = args.next().unwrap_or_else(|| "3".into()).parse()?;
    let text = std::fs::read_to_string(&path)?;
    let texts: Vec<String> = text
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let tok = Tokenizer::gpt2();
    let core = tiktoken_rs::r50k_base_singleton();
    // Warm up (rank tables, the rayon pool) and check exactness on the way.
    let n_tokens: usize = tok.encode_batch(&texts).iter().map(Vec::len).sum();
    let mut n_ref = 0;
    for t in &texts {
        let want = core.encode_ordinary(t);
        if tok.encode(t) != want {
            return Err(format!("ids differ from tiktoken on {t:?}").into());
        }
        n_ref += want.len();
    }
    if n_ref != n_tokens {
        return Err("token counts differ".into());
    }
    let (mut best_par, mut best_seq, mut best_ref) = (f64::MAX, f64::MAX, f64::MAX);
    for _ in 0..repeats.max(1) {
        let t = Instant::now();
        let n: usize = tok.encode_batch(&texts).iter().map(Vec::len).sum();
        best_par = best_par.min(t.elapsed().as_secs_f64());
        assert_eq!(n, n_tokens);
        let t = Instant::now();
        let n: usize = texts.iter().map(|t| tok.encode(t).len()).sum();
        best_seq = best_seq.min(t.elapsed().as_secs_f64());
        assert_eq!(n, n_tokens);
        let t = Instant::now();
        let n: usize = texts.iter().map(|t| core.encode_ordinary(t).len()).sum();
        best_ref = best_ref.min(t.elapsed().as_secs_f64());
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
            "tiktoken_rs_single_thread_tokens_per_s": n_tokens as f64 / best_ref,
        })
    );
    Ok(())
}
