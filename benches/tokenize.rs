//! Tokenizer throughput: GPT-2 BPE over realistic agent text, afm's exact
//! fast encoder beside tiktoken-rs' `encode_ordinary` (the Rust core of
//! tiktoken-python) on the same text in the same run.
//! `cargo bench --bench tokenize`
//!
//! Ids: `tokenize/encode` (afm, one thread), `tokenize/tiktoken_rs_encode_ordinary`
//! (the baseline), `tokenize/decode`; `tokenize_batch/encode_batch_rayon` and
//! `tokenize_batch/tiktoken_rs_batch_sequential` over the turns' 600 lines;
//! `tokenize_unique_words/*`: 40,000 random 10-letter words (almost every
//! piece needs a BPE merge, and there are ten times more of them than cache
//! slots: the cache's worst case).
use afm_tokenizer::{RoleVocab, Tokenizer};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const TURN: &str = "Planner: split the list into even and odd numbers, then sum the odd ones.\n\
                    Coder: let xs = [3, 8, 15, 4, 23]; sum(filter(xs, |x| x % 2 == 1))\n\
                    Reviewer: the observation 41 matches the task; final answer 41.\n";

fn corpus() -> String {
    TURN.repeat(200)
}

fn unique_words() -> String {
    let mut state: u32 = 12345;
    let mut text = String::new();
    for _ in 0..40_000 {
        text.push(' ');
        for _ in 0..10 {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
            text.push((b'a' + ((state >> 16) % 26) as u8) as char);
        }
    }
    text
}

fn bench(c: &mut Criterion) {
    let tok = Tokenizer::new(RoleVocab::from_agents(["Planner", "Coder", "Reviewer"]).unwrap());
    let text = corpus();
    assert_eq!(tok.encode(&text), tok.encode_tiktoken(&text));
    let n_tokens = tok.encode(&text).len() as u64;
    let mut g = c.benchmark_group("tokenize");
    g.throughput(Throughput::Elements(n_tokens));
    g.bench_function("encode", |b| b.iter(|| tok.encode(&text)));
    g.bench_function("tiktoken_rs_encode_ordinary", |b| {
        b.iter(|| tok.encode_tiktoken(&text))
    });
    let ids = tok.encode(&text);
    g.bench_function("decode", |b| b.iter(|| tok.decode(&ids).unwrap()));
    g.finish();

    let turns: Vec<&str> = TURN.lines().cycle().take(600).collect();
    let n_batch: usize = tok.encode_batch(&turns).iter().map(Vec::len).sum();
    let mut g = c.benchmark_group("tokenize_batch");
    g.throughput(Throughput::Elements(n_batch as u64));
    g.bench_function("encode_batch_rayon", |b| {
        b.iter(|| tok.encode_batch(&turns))
    });
    g.bench_function("tiktoken_rs_batch_sequential", |b| {
        b.iter(|| {
            turns
                .iter()
                .map(|t| tok.encode_tiktoken(t))
                .collect::<Vec<_>>()
        })
    });
    g.finish();

    let words = unique_words();
    assert_eq!(tok.encode(&words), tok.encode_tiktoken(&words));
    let mut g = c.benchmark_group("tokenize_unique_words");
    g.throughput(Throughput::Elements(tok.encode(&words).len() as u64));
    g.bench_function("encode", |b| b.iter(|| tok.encode(&words)));
    g.bench_function("tiktoken_rs_encode_ordinary", |b| {
        b.iter(|| tok.encode_tiktoken(&words))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
