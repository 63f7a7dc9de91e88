//! Tokenizer throughput: GPT-2 BPE over realistic agent text.
//! `cargo bench --bench tokenize`
use afm_tokenizer::{RoleVocab, Tokenizer};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn corpus() -> String {
    let turn = "Planner: split the list into even and odd numbers, then sum the odd ones.\n\
                Coder: let xs = [3, 8, 15, 4, 23]; sum(filter(xs, |x| x % 2 == 1))\n\
                Reviewer: the observation 41 matches the task; final answer 41.\n";
    turn.repeat(200)
}

fn bench(c: &mut Criterion) {
    let tok = Tokenizer::new(RoleVocab::from_agents(["Planner", "Coder", "Reviewer"]).unwrap());
    let text = corpus();
    let n_tokens = tok.encode(&text).len() as u64;
    let mut g = c.benchmark_group("tokenize");
    g.throughput(Throughput::Elements(n_tokens));
    g.bench_function("encode", |b| b.iter(|| tok.encode(&text)));
    let ids = tok.encode(&text);
    g.bench_function("decode", |b| b.iter(|| tok.decode(&ids).unwrap()));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
